/* fuzz_message.c — libFuzzer target for the task message codec
 * (src/core/message.c).
 *
 * Why one input drives every entry point: the seeds are real kombu Redis
 * envelopes (tests/fuzz/make_seeds.py), and the AMQP path receives the same
 * four parts as separate frame fields.  So each input is fed
 *   1. to cel_message_parse_redis with the fast envelope scan on, then off,
 *      and the two verdicts must agree (the fast scan is an optimisation: a
 *      different status, task or id for the same bytes would be a bug);
 *   2. to cel_message_parse_redis_head, whose verdict must match stage 1–3;
 *   3. when jansson reads it as an object, to cel_message_parse_parts the way
 *      the AMQP transport calls it: a copy of `headers`, content type and
 *      encoding from the envelope, the body raw or base64;
 *   4. to cel_message_redelivered_envelope, whose output must parse again
 *      with the same verdict and the redelivered flag set.
 * Round trips where cheap: an OK message has non-NULL task and id, and
 * cel_json_dumps_py of args/kwargs/embed re-parses with jansson to an equal
 * value; cel_pyrepr never fails on them.  ASan/UBSan catch the rest.
 * Build and run: tests/fuzz/run.sh.
 */
#include "core/log.h"
#include "core/message.h"
#include "fuzz_json.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cel_log_set_level(CEL_LOG_CRITICAL); /* dropped messages log; keep quiet */
    return 0;
}

static int streq(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Python-style text of `v` must read back as the same JSON value. */
static void check_dumps(const json_t *v)
{
    if (!v)
        return;
    size_t n = 0;
    char *text = cel_json_dumps_py(v, &n);
    if (!text)
        abort();
    if (strlen(text) != n)
        abort(); /* ensure_ascii output never holds a NUL byte */
    json_error_t jerr;
    json_t *back = json_loadb(text, n, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (!back || !fuzz_json_same(back, v))
        abort();
    json_decref(back);
    free(text);
    char *r = cel_pyrepr(v);
    if (!r)
        abort();
    free(r);
}

static void check_ok(const cel_message *m)
{
    if (!m->task || !m->id || !m->content_type || !m->exchange || !m->routing_key)
        abort();
    if (!json_is_array(m->args) || !json_is_object(m->kwargs))
        abort();
    if (m->embed && !json_is_object(m->embed))
        abort();
    check_dumps(m->args);
    check_dumps(m->kwargs);
    check_dumps(m->embed);
    char *r = cel_pyrepr_args(m->args);
    if (!r)
        abort();
    free(r);
    json_t *h = cel_message_headers(m);
    if (!json_is_object(h))
        abort();
    json_decref(h);
}

/* The parse of `data` with the given scan mode; returns the status and
 * leaves the message filled for the caller to compare and clear. */
static cel_msg_status parse(const char *data, size_t size, bool fast, cel_message *m)
{
    char err[256];
    memset(m, 0, sizeof *m);
    cel_message_set_fast_scan(fast);
    cel_msg_status st = cel_message_parse_redis(data, size, m, err, sizeof err);
    if (!memchr(err, 0, sizeof err))
        abort();
    if (st == CEL_MSG_OK)
        check_ok(m);
    return st;
}

static void parse_parts(const char *data, size_t size)
{
    json_t *env = json_loadb(data, size, JSON_ALLOW_NUL, NULL);
    json_t *h = json_object_get(env, "headers");
    if (!json_is_object(env) || !json_is_object(h)) {
        json_decref(env);
        return;
    }
    cel_message m;
    memset(&m, 0, sizeof m);
    m.headers = json_deep_copy(h);
    m.content_type = json_string_value(json_object_get(env, "content-type"));
    m.content_encoding = json_string_value(json_object_get(env, "content-encoding"));
    json_t *props = json_object_get(env, "properties");
    m.correlation_id = json_string_value(json_object_get(props, "correlation_id"));
    m.reply_to = json_string_value(json_object_get(props, "reply_to"));
    json_t *body = json_object_get(env, "body");
    const char *b = json_string_value(body);
    size_t blen = b ? json_string_length(body) : 0;
    /* base64 as on Redis, or raw as on AMQP: both from the same seed */
    bool b64 = size % 2 == 0;
    char err[256];
    cel_msg_status st = cel_message_parse_parts(&m, b, blen, b64, err, sizeof err);
    if (st == CEL_MSG_OK)
        check_ok(&m);
    cel_message_clear(&m);
    json_decref(env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-length copy, so ASan sees any read past the input */
    char *s = malloc(size ? size : 1);
    if (!s)
        abort();
    memcpy(s, data, size);

    cel_message a, b;
    cel_msg_status sa = parse(s, size, true, &a);
    cel_msg_status sb = parse(s, size, false, &b);
    if (sa != sb)
        abort();
    if (sa == CEL_MSG_OK &&
        (!streq(a.task, b.task) || !streq(a.id, b.id) || a.retries != b.retries ||
         a.priority != b.priority || a.has_eta != b.has_eta || a.has_expires != b.has_expires ||
         !fuzz_json_same(a.args, b.args) || !fuzz_json_same(a.kwargs, b.kwargs)))
        abort();
    cel_message_clear(&a);
    cel_message_clear(&b);

    cel_message_set_fast_scan(true);
    cel_message h;
    memset(&h, 0, sizeof h);
    cel_msg_status sh = cel_message_parse_redis_head(s, size, &h, NULL, 0);
    /* the head parse stops before the body: it agrees unless the body is bad */
    if (sh != sa && !(sh == CEL_MSG_OK && sa == CEL_MSG_DECODE_ERROR))
        abort();
    if (sh == CEL_MSG_OK && (!h.task || !h.id))
        abort();
    cel_message_clear(&h);

    parse_parts(s, size);

    char *re = cel_message_redelivered_envelope(s, size);
    if (re) {
        cel_message r;
        cel_msg_status sr = parse(re, strlen(re), true, &r);
        if (sr != sa || (sr == CEL_MSG_OK && !r.redelivered))
            abort();
        cel_message_clear(&r);
        free(re);
    }
    free(s);
    return 0;
}
