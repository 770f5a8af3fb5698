/* message.h — Celery protocol v2 task messages: parse and build.
 *
 * A message has properties, headers and a body `[args, kwargs, embed]`
 * (shared/docs/celery-wire-contract.md §1).  On Redis the four parts travel in
 * one JSON envelope with a base64 body; on AMQP they are frame fields.  This
 * codec is transport-neutral: the Redis transport hands it the envelope text,
 * the AMQP transport (later) fills the same struct from frames.
 *
 * Parsing is staged the way Celery's consumer is, so each failure gets the
 * handling Celery gives it:
 *   1. envelope  — not a JSON object with object `headers`/`properties`:
 *                  CEL_MSG_BAD_ENVELOPE (kombu 5.2's worker dies here; we log
 *                  and drop).
 *   2. headers   — no string `task` header: CEL_MSG_NO_TASK (Celery:
 *                  on_unknown_message, reject).  Missing/wrong-typed `id`:
 *                  CEL_MSG_INVALID (reject).
 *   3. content   — content type other than application/json:
 *                  CEL_MSG_DISALLOWED (Celery: ContentDisallowed ->
 *                  on_invalid_task, reject, no result stored).  The body is
 *                  never decoded.
 *   4. body      — bad base64, bad compression, bad JSON, or not
 *                  `[list, object, object|null]`: CEL_MSG_DECODE_ERROR
 *                  (Celery: on_decode_error, ack, no result).
 *
 * Two parsers fill the same struct: a fast scan for well-formed envelopes
 * (no tree; see message.c) and jansson for everything else, including every
 * error, so verdicts and error texts come from one place.
 *
 * Ownership: a parsed cel_message owns `envelope` (or `raw`) and `body`; every `const
 * char *` and borrowed json_t field points into those and lives until
 * cel_message_clear().
 */
#ifndef CELERIAC_MESSAGE_H
#define CELERIAC_MESSAGE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum cel_msg_status {
    CEL_MSG_OK = 0,
    CEL_MSG_BAD_ENVELOPE,
    CEL_MSG_NO_TASK,
    CEL_MSG_INVALID,
    CEL_MSG_DISALLOWED,
    CEL_MSG_DECODE_ERROR,
} cel_msg_status;

typedef struct cel_message {
    json_t *envelope; /* owned; the parsed Redis envelope (NULL on AMQP and
                         after the fast scan) */
    json_t *headers;  /* borrowed from envelope (or owned on AMQP); NULL after
                         the fast scan: use cel_message_headers() */
    json_t *properties; /* borrowed from envelope; NULL after the fast scan */
    char *raw;        /* owned; after the fast scan: the envelope text, then
                         the arena the string fields point into */
    size_t raw_len;
    json_t *body;     /* owned; decoded [args, kwargs, embed], NULL until stage 4 */

    /* properties */
    const char *content_type;     /* never NULL after parse (default application/json) */
    const char *content_encoding; /* may be NULL */
    const char *correlation_id;   /* may be NULL */
    const char *reply_to;         /* may be NULL or "" */
    const char *delivery_tag;     /* Redis: uuid string; may be NULL */
    const char *exchange;         /* delivery_info.exchange, "" if absent */
    const char *routing_key;      /* delivery_info.routing_key, "" if absent */
    int priority;                 /* 0 if absent */
    bool redelivered;
    size_t declared_size;         /* envelope's "x-celeriac-size": the body's size when
                                     the AMQP transport left an oversized body out; 0 */

    /* headers */
    const char *task;        /* never NULL after CEL_MSG_OK */
    const char *id;          /* never NULL after CEL_MSG_OK */
    const char *root_id;     /* may be NULL */
    const char *parent_id;   /* may be NULL */
    const char *group;       /* may be NULL */
    const char *shadow;      /* may be NULL */
    const char *origin;      /* may be NULL */
    const char *argsrepr;    /* may be NULL */
    const char *kwargsrepr;  /* may be NULL */
    json_t *group_index;     /* borrowed; NULL or json null when absent */
    int retries;
    bool has_eta, has_expires;
    double eta;              /* epoch seconds (UTC) when has_eta */
    double expires;          /* epoch seconds (UTC) when has_expires */
    double time_limit;       /* hard, seconds; < 0 = none */
    double soft_time_limit;  /* soft, seconds; < 0 = none */
    bool ignore_result;

    /* body (valid after CEL_MSG_OK) */
    json_t *args;   /* borrowed from body: array */
    json_t *kwargs; /* borrowed from body: object */
    json_t *embed;  /* borrowed from body: object, or NULL when absent/null */
} cel_message;

/* Parses a Redis envelope (`len` bytes, need not be NUL-terminated).  Fills
 * `m` (which the caller zeroes or clears first) as far as parsing got; on any
 * status the caller must call cel_message_clear(m).  `err` receives a
 * one-line reason on failure. */
cel_msg_status cel_message_parse_redis(const char *data, size_t len,
                                       cel_message *m, char *err, size_t errlen);

/* Stages 1–3 only: the body is left undecoded (m->body, args, kwargs and
 * embed stay NULL) for a pool process to decode — Celery's protocol v2 defers
 * the body to the pool too.  CEL_MSG_OK means "headers fine". */
cel_msg_status cel_message_parse_redis_head(const char *data, size_t len, cel_message *m,
                                            char *err, size_t errlen);

/* Only the delivery tag of a Redis envelope, found by a text search the way
 * the fetch script found it, without parsing (for a message too big to be
 * worth parsing).  Zeroes `m`; m->delivery_tag may stay NULL.  The caller
 * calls cel_message_clear(m). */
void cel_message_scan_tag(const char *data, size_t len, cel_message *m);

/* Stage 2–4 on an already-filled `headers`, `properties`-derived fields and a
 * raw body (used by the AMQP transport; the body is raw bytes there).  The
 * caller sets m->headers (ownership passes to m) and the property fields. */
cel_msg_status cel_message_parse_parts(cel_message *m, const char *body, size_t body_len,
                                       bool body_is_base64, char *err, size_t errlen);

/* The message's headers as a JSON object: a new reference the caller
 * releases, or NULL.  Parses the kept envelope text when the fast scan
 * filled `m` (only task code asking for headers pays for the tree). */
json_t *cel_message_headers(const cel_message *m);

/* The most a zlib-compressed body may inflate to (--max-message-size;
 * default 64 MiB).  Process-wide: set once at start-up, before the pool
 * forks. */
void cel_message_set_max_size(size_t bytes);

/* Tests only: turns the fast envelope scan off (on by default) so both
 * parsers can be run on the same input and compared. */
void cel_message_set_fast_scan(bool on);

/* Releases what `m` owns and zeroes it. */
void cel_message_clear(cel_message *m);

/* Human-readable name of a status, for logs. */
const char *cel_msg_status_str(cel_msg_status st);

/* --- Building messages (celeriac call, retries, callbacks) --------------- */

typedef struct cel_message_spec {
    const char *task;       /* required */
    const char *id;         /* NULL: a fresh uuid4 */
    const char *root_id;    /* NULL: = id */
    const char *parent_id;  /* may be NULL */
    const char *group;      /* may be NULL */
    const json_t *group_index; /* may be NULL */
    const char *origin;     /* NULL: "gen<pid>@<host>" */
    const char *reply_to;   /* may be NULL ("" on the wire) */
    const char *queue;      /* routing key; NULL: "celery" */
    const char *exchange;   /* NULL: "" */
    const json_t *args;     /* NULL: [] */
    const json_t *kwargs;   /* NULL: {} */
    const json_t *embed;    /* NULL: all-null callbacks/errbacks/chain/chord */
    int retries;
    int priority;
    double eta;             /* epoch seconds, <= 0: none */
    double expires;         /* epoch seconds, <= 0: none */
    double time_limit, soft_time_limit; /* <= 0: none */
    bool ignore_result;
    const char *delivery_tag; /* NULL: a fresh uuid4 */
} cel_message_spec;

/* Builds the Redis envelope text Python's kombu would LPUSH for `spec`
 * (ASCII-only JSON, base64 body, `", "`/`": "` separators).  Returns a
 * malloc'd NUL-terminated string the caller frees, or NULL on error.  If
 * `id_out` is non-NULL it receives a malloc'd copy of the task id. */
char *cel_message_build_redis(const cel_message_spec *spec, char **id_out);

/* The kombu envelope of a remote-control reply (Redis list form): body
 * base64, headers {ticket, clock}, delivery_mode 1.  Returns malloc'd text. */
char *cel_message_build_reply(const char *exchange, const char *routing_key, const char *ticket,
                              long long clock, const char *body, size_t len);

/* The kombu envelope of an event on Redis pub/sub: exchange celeryev,
 * header hostname, delivery_mode 1.  Returns malloc'd text. */
char *cel_message_build_event(const char *routing_key, const char *hostname, const char *body,
                              size_t len);

/* Re-encodes a parsed message for a restore: same envelope with
 * headers.redelivered and properties.delivery_info.redelivered set to true.
 * Returns malloc'd text or NULL. */
char *cel_message_redelivered_envelope(const char *data, size_t len);

/* --- Python-compatible text (added with message.c) ---------------------- */

/* Python repr() of a JSON value as Celery's argsrepr/kwargsrepr shows it:
 * None/True/False, 'single-quoted' strings, [lists], {'k': v}; cut to about
 * 1024 bytes with "..." like Celery's saferepr limit.  Returns malloc'd text
 * or NULL. */
char *cel_pyrepr(const json_t *v);
/* The same for a positional-args array, written as a tuple the way
 * apply_async((2, 3)) shows it: "(2, 3)", "(1,)", "()". */
char *cel_pyrepr_args(const json_t *args);

/* Serializes `v` byte-for-byte like Python's json.dumps(v) (ensure_ascii,
 * lower-case hex escapes incl. surrogate pairs, ", " and ": " separators,
 * shortest round-trip floats).  Returns malloc'd NUL-terminated text and its
 * length in *out_len (optional), or NULL. */
char *cel_json_dumps_py(const json_t *v, size_t *out_len);

#endif
