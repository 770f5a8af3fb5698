/* message.c — Celery protocol v2 task messages: staged parse, kombu-shaped
 * build, redelivery re-encode, and the two Python-compatible text encoders
 * they need.
 *
 * Why the staging (see message.h): Celery answers each kind of broken message
 * differently (drop / reject / reject-without-result / ack), so the parser
 * stops at the first failing stage and reports which one.  Every field comes
 * off the network, so each is type-checked; a wrong type in a field the
 * worker acts on (id, eta, expires, retries, timelimit) is CEL_MSG_INVALID,
 * a wrong type in a purely informational field is treated as absent.
 *
 * Why a private JSON writer instead of json_dumps(): Python's json.dumps
 * (what kombu uses) differs from jansson's in ways visible on the wire —
 * jansson writes \u escapes in upper case and leaves U+007F raw, and prints
 * reals with 17 significant digits ("0.10000000000000001") where Python
 * prints the shortest round-trip form ("0.1", "1e+16").  cel_json_dumps_py()
 * reproduces json.dumps(obj) (ensure_ascii, ", "/": " separators) byte for
 * byte, so what we publish looks exactly like what a Python producer would.
 *
 * Performance: the body is decoded once (base64 -> optional inflate ->
 * json_loadb) with at most one temporary copy per step, freed immediately; a
 * raw (non-base64) body is parsed in place from the envelope string.
 * jansson's JSON_ALLOW_NUL + length-aware accessors keep "\u0000" intact.
 */
#include "core/message.h"

#include "core/util.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CT_JSON "application/json"
#define COMPRESSION_ZLIB "application/x-gzip"
/* Limits on values the worker acts on: anything beyond them is hostile or
 * broken, never a real task (a 31-year time limit, a retry count that the
 * next retry would overflow). */
#define MAX_TIME_LIMIT 1e9
#define MAX_RETRIES (INT_MAX - 1)

static size_t max_inflated = (size_t)64 << 20; /* cel_message_set_max_size() */
#define MAX_DUMP_DEPTH 2048
#define PYREPR_MAXLEN 1024 /* Celery's argsrepr_maxsize / kwargsrepr_maxsize */

/* ======================================================================
 * Python-compatible text encoders
 * ====================================================================== */

/* Decodes one UTF-8 sequence at s[0..len); returns its length (>= 1) and the
 * code point in *cp, or U+FFFD and length 1 for a malformed byte (jansson
 * only holds valid UTF-8, so this is defence in depth). */
static size_t utf8_next(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xe0) == 0xc0) {
        n = 2;
        v = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3;
        v = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4;
        v = c & 0x07;
    } else {
        *cp = 0xfffd;
        return 1;
    }
    if (n > len) {
        *cp = 0xfffd;
        return 1;
    }
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *cp = 0xfffd;
            return 1;
        }
        v = v << 6 | (s[i] & 0x3f);
    }
    *cp = v;
    return n;
}

/* Python's float.__repr__ (shortest round-trip digits, exponent form when
 * the decimal exponent is < -4 or >= 16).  `json_spelling` selects the spelling
 * for non-finite values: json ("NaN"/"Infinity") or repr ("nan"/"inf"). */
static void py_float_repr(double d, bool json_spelling, char *out, size_t outlen)
{
    if (isnan(d)) {
        snprintf(out, outlen, "%s", json_spelling ? "NaN" : "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(out, outlen, "%s%s", d < 0 ? "-" : "", json_spelling ? "Infinity" : "inf");
        return;
    }
    /* Shortest round trip, in at most three tries: when 15 significant
     * digits round-trip, they are the shortest digits padded with zeros (a
     * double's half-ulp, < 1.2e-16 relative, is far inside half a step of
     * the 15th digit, so the shorter correctly rounded string is also the
     * closest 15-digit one).  Counting up from one digit cost ~16
     * snprintf+strtod pairs per timestamp, a tenth of the event path.
     * Subnormals have fewer bits, so the argument fails there: count up. */
    char tmp[40];
    for (int prec = fabs(d) < DBL_MIN ? 0 : 14; prec < 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    /* tmp = [-]D[.DDDD]e[+-]XX */
    const char *p = tmp;
    bool neg = *p == '-';
    if (neg)
        p++;
    char digits[20];
    size_t nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.' && nd < sizeof digits - 1)
            digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    int exp = *p == 'e' ? atoi(p + 1) : 0;

    char *o = out, *end = out + outlen - 1;
#define PUT(ch) do { if (o < end) *o++ = (ch); } while (0)
    if (neg)
        PUT('-');
    if (exp < -4 || exp >= 16) {
        PUT(digits[0]);
        if (nd > 1) {
            PUT('.');
            for (size_t i = 1; i < nd; i++)
                PUT(digits[i]);
        }
        char e[16];
        snprintf(e, sizeof e, "e%c%02d", exp < 0 ? '-' : '+', abs(exp));
        for (char *q = e; *q; q++)
            PUT(*q);
    } else if (exp >= 0) {
        for (int i = 0; i <= exp; i++)
            PUT((size_t)i < nd ? digits[i] : '0');
        PUT('.');
        if ((size_t)exp + 1 < nd)
            for (size_t i = (size_t)exp + 1; i < nd; i++)
                PUT(digits[i]);
        else
            PUT('0');
    } else {
        PUT('0');
        PUT('.');
        for (int i = 0; i < -exp - 1; i++)
            PUT('0');
        for (size_t i = 0; i < nd; i++)
            PUT(digits[i]);
    }
#undef PUT
    *o = '\0';
}

static int buf_puts(cel_buf *b, const char *s)
{
    return cel_buf_append(b, s, strlen(s));
}

/* A JSON string literal the way json.dumps(ensure_ascii=True) writes it. */
static int dump_json_string(cel_buf *b, const char *s, size_t len)
{
    if (cel_buf_reserve(b, len + 2) < 0)
        return -1;
    b->data[b->len++] = '"';
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* Fast path: a run of bytes that need no escaping. */
        size_t run = i;
        while (run < len && u[run] >= 0x20 && u[run] < 0x7f && u[run] != '"' && u[run] != '\\')
            run++;
        if (run > i) {
            if (cel_buf_append(b, s + i, run - i) < 0)
                return -1;
            i = run;
            continue;
        }
        uint32_t cp;
        i += utf8_next(u + i, len - i, &cp);
        char esc[16];
        switch (cp) {
        case '"': strcpy(esc, "\\\""); break;
        case '\\': strcpy(esc, "\\\\"); break;
        case '\n': strcpy(esc, "\\n"); break;
        case '\r': strcpy(esc, "\\r"); break;
        case '\t': strcpy(esc, "\\t"); break;
        case '\b': strcpy(esc, "\\b"); break;
        case '\f': strcpy(esc, "\\f"); break;
        default:
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                snprintf(esc, sizeof esc, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            } else {
                snprintf(esc, sizeof esc, "\\u%04x", cp);
            }
        }
        if (buf_puts(b, esc) < 0)
            return -1;
    }
    return cel_buf_append(b, "\"", 1);
}

static int dump_py(cel_buf *b, const json_t *v, int depth)
{
    char num[64];
    if (depth > MAX_DUMP_DEPTH)
        return -1;
    switch (json_typeof(v)) {
    case JSON_NULL:
        return buf_puts(b, "null");
    case JSON_TRUE:
        return buf_puts(b, "true");
    case JSON_FALSE:
        return buf_puts(b, "false");
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf_puts(b, num);
    case JSON_REAL:
        py_float_repr(json_real_value(v), true, num, sizeof num);
        return buf_puts(b, num);
    case JSON_STRING:
        return dump_json_string(b, json_string_value(v), json_string_length(v));
    case JSON_ARRAY: {
        if (buf_puts(b, "[") < 0)
            return -1;
        for (size_t i = 0; i < json_array_size(v); i++) {
            if ((i && buf_puts(b, ", ") < 0) || dump_py(b, json_array_get(v, i), depth + 1) < 0)
                return -1;
        }
        return buf_puts(b, "]");
    }
    case JSON_OBJECT: {
        if (buf_puts(b, "{") < 0)
            return -1;
        const char *key;
        size_t klen;
        json_t *val;
        bool first = true;
        json_object_keylen_foreach((json_t *)v, key, klen, val) {
            if ((!first && buf_puts(b, ", ") < 0) || dump_json_string(b, key, klen) < 0 ||
                buf_puts(b, ": ") < 0 || dump_py(b, val, depth + 1) < 0)
                return -1;
            first = false;
        }
        return buf_puts(b, "}");
    }
    }
    return -1;
}

char *cel_json_dumps_py(const json_t *v, size_t *out_len)
{
    cel_buf b = {0};
    if (!v || dump_py(&b, v, 0) < 0 || cel_buf_reserve(&b, 0) < 0) {
        cel_buf_free(&b);
        return NULL;
    }
    b.data[b.len] = '\0';
    if (out_len)
        *out_len = b.len;
    return b.data;
}

/* Python's str.isprintable(), approximated for the ranges that matter in
 * practice: C0/C1 controls, DEL, NBSP, soft hyphen, the Unicode space /
 * format / separator blocks, BOM, surrogates and private use. */
static bool py_printable(uint32_t cp)
{
    if (cp < 0x20 || (cp >= 0x7f && cp <= 0xa0) || cp == 0xad)
        return false;
    if ((cp >= 0x2000 && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f) ||
        (cp >= 0x205f && cp <= 0x206f) || cp == 0x3000 || cp == 0xfeff ||
        (cp >= 0xd800 && cp <= 0xf8ff) || (cp >= 0xfff9 && cp <= 0xfffb) ||
        cp >= 0xf0000)
        return false;
    return true;
}

static int repr_str(cel_buf *b, const char *s, size_t len)
{
    bool has_sq = memchr(s, '\'', len) != NULL, has_dq = memchr(s, '"', len) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    if (cel_buf_append(b, &q, 1) < 0)
        return -1;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n = utf8_next(u + i, len - i, &cp);
        char esc[16];
        if (cp == (uint32_t)q || cp == '\\')
            snprintf(esc, sizeof esc, "\\%c", (char)cp);
        else if (cp == '\n')
            strcpy(esc, "\\n");
        else if (cp == '\r')
            strcpy(esc, "\\r");
        else if (cp == '\t')
            strcpy(esc, "\\t");
        else if (py_printable(cp))
            esc[0] = '\0';
        else if (cp < 0x100)
            snprintf(esc, sizeof esc, "\\x%02x", cp);
        else if (cp < 0x10000)
            snprintf(esc, sizeof esc, "\\u%04x", cp);
        else
            snprintf(esc, sizeof esc, "\\U%08x", cp);
        if (esc[0] ? buf_puts(b, esc) < 0 : cel_buf_append(b, s + i, n) < 0)
            return -1;
        i += n;
    }
    return cel_buf_append(b, &q, 1);
}

static int repr_value(cel_buf *b, const json_t *v, int depth);

static int repr_items(cel_buf *b, const json_t *arr, int depth)
{
    for (size_t i = 0; i < json_array_size(arr); i++) {
        if ((i && buf_puts(b, ", ") < 0) || repr_value(b, json_array_get(arr, i), depth + 1) < 0)
            return -1;
        if (b->len > PYREPR_MAXLEN)
            return 0; /* caller truncates */
    }
    return 0;
}

static int repr_value(cel_buf *b, const json_t *v, int depth)
{
    char num[64];
    if (depth > MAX_DUMP_DEPTH)
        return -1;
    switch (json_typeof(v)) {
    case JSON_NULL:
        return buf_puts(b, "None");
    case JSON_TRUE:
        return buf_puts(b, "True");
    case JSON_FALSE:
        return buf_puts(b, "False");
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf_puts(b, num);
    case JSON_REAL:
        py_float_repr(json_real_value(v), false, num, sizeof num);
        return buf_puts(b, num);
    case JSON_STRING:
        return repr_str(b, json_string_value(v), json_string_length(v));
    case JSON_ARRAY:
        if (buf_puts(b, "[") < 0 || repr_items(b, v, depth) < 0)
            return -1;
        return buf_puts(b, "]");
    case JSON_OBJECT: {
        if (buf_puts(b, "{") < 0)
            return -1;
        const char *key;
        size_t klen;
        json_t *val;
        bool first = true;
        json_object_keylen_foreach((json_t *)v, key, klen, val) {
            if ((!first && buf_puts(b, ", ") < 0) || repr_str(b, key, klen) < 0 ||
                buf_puts(b, ": ") < 0 || repr_value(b, val, depth + 1) < 0)
                return -1;
            first = false;
            if (b->len > PYREPR_MAXLEN)
                break;
        }
        return buf_puts(b, "}");
    }
    }
    return -1;
}

/* Cuts an over-long repr to PYREPR_MAXLEN bytes (on a UTF-8 boundary) and
 * marks it with "...", then hands the text over. */
static char *repr_finish(cel_buf *b)
{
    if (b->len > PYREPR_MAXLEN) {
        size_t cut = PYREPR_MAXLEN - 3;
        while (cut > 0 && ((unsigned char)b->data[cut] & 0xc0) == 0x80)
            cut--;
        b->len = cut;
        if (cel_buf_append(b, "...", 3) < 0) {
            cel_buf_free(b);
            return NULL;
        }
    }
    if (cel_buf_reserve(b, 0) < 0) {
        cel_buf_free(b);
        return NULL;
    }
    b->data[b->len] = '\0';
    return b->data;
}

char *cel_pyrepr(const json_t *v)
{
    cel_buf b = {0};
    if (!v || repr_value(&b, v, 0) < 0) {
        cel_buf_free(&b);
        return NULL;
    }
    return repr_finish(&b);
}

char *cel_pyrepr_args(const json_t *args)
{
    cel_buf b = {0};
    if (!json_is_array(args))
        return cel_pyrepr(args);
    if (buf_puts(&b, "(") < 0 || repr_items(&b, args, 0) < 0 ||
        (json_array_size(args) == 1 && buf_puts(&b, ",") < 0) || buf_puts(&b, ")") < 0) {
        cel_buf_free(&b);
        return NULL;
    }
    return repr_finish(&b);
}

/* ======================================================================
 * Parsing
 * ====================================================================== */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* String member or NULL (absent, null, or another type). */
static const char *opt_str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static bool str_is(const json_t *s, const char *lit)
{
    size_t n = strlen(lit);
    return json_is_string(s) && json_string_length(s) == n && memcmp(json_string_value(s), lit, n) == 0;
}

static int clamp_int(json_int_t v)
{
    return v > INT_MAX ? INT_MAX : v < INT_MIN ? INT_MIN : (int)v;
}

/* A timelimit entry: number > 0 -> seconds, null/0 -> none (-1).  Returns
 * false for any other type. */
static bool time_limit_value(const json_t *v, double *out)
{
    if (!v || json_is_null(v)) {
        *out = -1;
        return true;
    }
    if (!json_is_number(v))
        return false;
    double d = json_number_value(v);
    if (!(d >= 0 && d <= MAX_TIME_LIMIT))
        return false; /* negative, NaN or absurd: refused, not guessed at */
    *out = d > 0 ? d : -1; /* Celery treats 0 as "no limit" */
    return true;
}

typedef enum { BODY_RAW, BODY_BASE64, BODY_UNKNOWN } body_encoding;

static cel_msg_status parse_headers(cel_message *m, char *err, size_t errlen)
{
    json_t *h = m->headers;
    json_t *v;
    if (!json_is_object(h)) {
        set_err(err, errlen, "headers is not an object");
        return CEL_MSG_BAD_ENVELOPE;
    }
    m->task = opt_str(h, "task");
    if (!m->task) {
        set_err(err, errlen, "no string 'task' header");
        return CEL_MSG_NO_TASK;
    }
    m->id = opt_str(h, "id");
    if (!m->id) {
        set_err(err, errlen, "task %s: no string 'id' header", m->task);
        return CEL_MSG_INVALID;
    }
    /* "examples.echo\u0000x" must not run examples.echo: names and ids are
     * C strings from here on, so an embedded NUL would cut them short. */
    v = json_object_get(h, "task");
    if (strlen(m->task) != json_string_length(v)) {
        set_err(err, errlen, "task %s[%s]: the 'task' header contains a NUL byte", m->task,
                m->id);
        return CEL_MSG_INVALID;
    }
    v = json_object_get(h, "id");
    if (strlen(m->id) != json_string_length(v)) {
        set_err(err, errlen, "task %s[%s]: the 'id' header contains a NUL byte", m->task, m->id);
        return CEL_MSG_INVALID;
    }
    m->root_id = opt_str(h, "root_id");
    m->parent_id = opt_str(h, "parent_id");
    m->group = opt_str(h, "group");
    m->shadow = opt_str(h, "shadow");
    m->origin = opt_str(h, "origin");
    m->argsrepr = opt_str(h, "argsrepr");
    m->kwargsrepr = opt_str(h, "kwargsrepr");
    m->group_index = json_object_get(h, "group_index");
    m->ignore_result = json_is_true(json_object_get(h, "ignore_result"));
    if (json_is_true(json_object_get(h, "redelivered")))
        m->redelivered = true;

    v = json_object_get(h, "retries");
    if (json_is_integer(v)) {
        json_int_t r = json_integer_value(v);
        if (r < 0 || r > MAX_RETRIES) {
            set_err(err, errlen, "task %s[%s]: 'retries' %" JSON_INTEGER_FORMAT " out of range",
                    m->task, m->id, r);
            return CEL_MSG_INVALID;
        }
        m->retries = (int)r;
    } else if (v && !json_is_null(v)) {
        set_err(err, errlen, "task %s[%s]: 'retries' is not an integer", m->task, m->id);
        return CEL_MSG_INVALID;
    }

    static const char *const time_keys[2] = {"eta", "expires"};
    for (int i = 0; i < 2; i++) {
        v = json_object_get(h, time_keys[i]);
        if (!v || json_is_null(v))
            continue;
        double t;
        /* A string with an embedded NUL is not a date. */
        if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v) ||
            cel_iso8601_parse(json_string_value(v), &t) < 0) {
            set_err(err, errlen, "task %s[%s]: bad '%s' header", m->task, m->id, time_keys[i]);
            return CEL_MSG_INVALID;
        }
        if (i == 0) {
            m->has_eta = true;
            m->eta = t;
        } else {
            m->has_expires = true;
            m->expires = t;
        }
    }

    m->time_limit = m->soft_time_limit = -1;
    v = json_object_get(h, "timelimit");
    if (v && !json_is_null(v)) {
        if (!json_is_array(v) || json_array_size(v) != 2 ||
            !time_limit_value(json_array_get(v, 0), &m->time_limit) ||
            !time_limit_value(json_array_get(v, 1), &m->soft_time_limit)) {
            set_err(err, errlen, "task %s[%s]: 'timelimit' is not [hard, soft]", m->task, m->id);
            return CEL_MSG_INVALID;
        }
    }
    return CEL_MSG_OK;
}

/* Stages 2-4 shared by both transports.  `body` NULL = no body at all. */
static cel_msg_status parse_rest(cel_message *m, const char *body, size_t body_len,
                                 body_encoding enc, bool decode_body, char *err, size_t errlen)
{
    cel_msg_status st = parse_headers(m, err, errlen);
    if (st != CEL_MSG_OK)
        return st;

    /* Stage 3: only JSON is accepted; never look at anything else. */
    if (!m->content_type)
        m->content_type = CT_JSON;
    if (strcmp(m->content_type, CT_JSON) != 0) {
        set_err(err, errlen, "task %s[%s]: content type '%s' not allowed", m->task, m->id,
                m->content_type);
        return CEL_MSG_DISALLOWED;
    }

    if (!decode_body)
        return CEL_MSG_OK;

    /* Stage 4: body bytes -> [args, kwargs, embed]. */
    if (!body) {
        set_err(err, errlen, "task %s[%s]: no body", m->task, m->id);
        return CEL_MSG_DECODE_ERROR;
    }
    if (enc == BODY_UNKNOWN) {
        set_err(err, errlen, "task %s[%s]: unknown body_encoding", m->task, m->id);
        return CEL_MSG_DECODE_ERROR;
    }
    char *decoded = NULL, *inflated = NULL;
    const char *p = body;
    size_t n = body_len;
    if (enc == BODY_BASE64) {
        decoded = cel_b64_decode(body, body_len, &n);
        if (!decoded) {
            set_err(err, errlen, "task %s[%s]: body is not valid base64", m->task, m->id);
            return CEL_MSG_DECODE_ERROR;
        }
        p = decoded;
    }
    json_t *comp = json_object_get(m->headers, "compression");
    if (comp && !json_is_null(comp)) {
        if (!str_is(comp, COMPRESSION_ZLIB)) {
            set_err(err, errlen, "task %s[%s]: unsupported compression", m->task, m->id);
            free(decoded);
            return CEL_MSG_DECODE_ERROR;
        }
        inflated = cel_zlib_inflate(p, n, max_inflated, &n);
        free(decoded);
        decoded = NULL;
        if (!inflated) {
            set_err(err, errlen,
                    "task %s[%s]: body does not inflate (corrupt, or larger than "
                    "--max-message-size)",
                    m->task, m->id);
            return CEL_MSG_DECODE_ERROR;
        }
        p = inflated;
    }
    json_error_t jerr;
    m->body = json_loadb(p, n, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    free(decoded);
    free(inflated);
    if (!m->body) {
        set_err(err, errlen, "task %s[%s]: body is not JSON: %s", m->task, m->id, jerr.text);
        return CEL_MSG_DECODE_ERROR;
    }
    json_t *b = m->body;
    size_t parts = json_is_array(b) ? json_array_size(b) : 0;
    json_t *embed = parts == 3 ? json_array_get(b, 2) : NULL;
    if ((parts != 2 && parts != 3) || !json_is_array(json_array_get(b, 0)) ||
        !json_is_object(json_array_get(b, 1)) ||
        (embed && !json_is_null(embed) && !json_is_object(embed))) {
        set_err(err, errlen, "task %s[%s]: body is not [args, kwargs, embed]", m->task, m->id);
        return CEL_MSG_DECODE_ERROR;
    }
    m->args = json_array_get(b, 0);
    m->kwargs = json_array_get(b, 1);
    m->embed = json_is_object(embed) ? embed : NULL;
    return CEL_MSG_OK;
}

/* ======================================================================
 * Fast path: the envelope as kombu writes it, scanned without a tree
 *
 * Why: building a jansson tree of the ~1 KB envelope cost ~13 µs per message
 * (in the parent and again in the pool process), the largest single item of
 * a task's CPU.  This scanner validates the whole envelope as JSON but keeps
 * only the fields the worker reads, copied (unescaped, NUL-terminated) into
 * one arena; ~1 µs.  It accepts only what it can decide exactly: pure-ASCII
 * text (kombu writes ensure_ascii JSON), no "\u0000", no escaped or repeated
 * keys, and a message that parses without error.  Anything else — including
 * every malformed message — bails out to the jansson path, so verdicts and
 * error texts are exactly the jansson path's, and a unit test runs both on
 * every fixture to prove the fields agree.
 * ====================================================================== */

enum { J_NULL, J_FALSE, J_TRUE, J_INT, J_REAL, J_STR, J_OBJECT, J_ARRAY };

typedef struct jval {
    bool seen;
    int kind;
    const char *s; /* J_STR: in the arena */
    size_t n;
    json_int_t i;
    double d;
    double pair[2];  /* timelimit: [hard, soft], -1 = none */
} jval;

typedef struct scan {
    const char *p, *end;
    char *arena;
} scan;

enum { F_BODY, F_CTYPE, F_CENC, F_XSIZE,                                     /* top */
       F_TASK, F_ID, F_ROOT, F_PARENT, F_GROUP, F_SHADOW, F_ORIGIN, F_ARGSREPR, /* headers */
       F_KWARGSREPR, F_GROUP_INDEX, F_IGNORE, F_HREDELIVERED, F_RETRIES, F_ETA, F_EXPIRES,
       F_TIMELIMIT, F_COMPRESSION,
       F_CORR, F_REPLY, F_TAG, F_PRIO, F_BODYENC,                               /* properties */
       F_EXCHANGE, F_RKEY, F_DREDELIVERED,                                      /* delivery_info */
       F_HEADERS, F_PROPS, F_DINFO,                                             /* containers */
       F_COUNT };

typedef enum { LV_TOP, LV_HEADERS, LV_PROPS, LV_DINFO } level;

typedef struct field_name {
    level lv;
    unsigned char len;
    const char *name;
    int field;
} field_name;

#define FIELD(lv, name, f) {lv, sizeof name - 1, name, f}
static const field_name FIELDS[] = {
    FIELD(LV_TOP, "body", F_BODY), FIELD(LV_TOP, "content-type", F_CTYPE),
    FIELD(LV_TOP, "content-encoding", F_CENC), FIELD(LV_TOP, "headers", F_HEADERS),
    FIELD(LV_TOP, "x-celeriac-size", F_XSIZE),
    FIELD(LV_TOP, "properties", F_PROPS),
    FIELD(LV_HEADERS, "task", F_TASK), FIELD(LV_HEADERS, "id", F_ID),
    FIELD(LV_HEADERS, "root_id", F_ROOT), FIELD(LV_HEADERS, "parent_id", F_PARENT),
    FIELD(LV_HEADERS, "group", F_GROUP), FIELD(LV_HEADERS, "shadow", F_SHADOW),
    FIELD(LV_HEADERS, "origin", F_ORIGIN), FIELD(LV_HEADERS, "argsrepr", F_ARGSREPR),
    FIELD(LV_HEADERS, "kwargsrepr", F_KWARGSREPR),
    FIELD(LV_HEADERS, "group_index", F_GROUP_INDEX),
    FIELD(LV_HEADERS, "ignore_result", F_IGNORE),
    FIELD(LV_HEADERS, "redelivered", F_HREDELIVERED), FIELD(LV_HEADERS, "retries", F_RETRIES),
    FIELD(LV_HEADERS, "eta", F_ETA), FIELD(LV_HEADERS, "expires", F_EXPIRES),
    FIELD(LV_HEADERS, "timelimit", F_TIMELIMIT),
    FIELD(LV_HEADERS, "compression", F_COMPRESSION),
    FIELD(LV_PROPS, "correlation_id", F_CORR), FIELD(LV_PROPS, "reply_to", F_REPLY),
    FIELD(LV_PROPS, "delivery_tag", F_TAG), FIELD(LV_PROPS, "priority", F_PRIO),
    FIELD(LV_PROPS, "body_encoding", F_BODYENC), FIELD(LV_PROPS, "delivery_info", F_DINFO),
    FIELD(LV_DINFO, "exchange", F_EXCHANGE), FIELD(LV_DINFO, "routing_key", F_RKEY),
    FIELD(LV_DINFO, "redelivered", F_DREDELIVERED),
};
#undef FIELD

static int field_of(level lv, const char *k, size_t n)
{
    for (size_t i = 0; i < sizeof FIELDS / sizeof FIELDS[0]; i++)
        if (FIELDS[i].len == n && FIELDS[i].lv == lv && k[0] == FIELDS[i].name[0] &&
            memcmp(FIELDS[i].name, k, n) == 0)
            return FIELDS[i].field;
    return -1;
}

static void scan_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* At a '"'.  With `v`, the unescaped text goes to the arena. */
static bool scan_string(scan *s, jval *v)
{
    const char *p = s->p + 1;
    char *o = v ? s->arena : NULL;
    char *start = o;
    for (;;) {
        if (p >= s->end)
            return false;
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            break;
        if (c < 0x20 || c >= 0x80)
            return false;
        if (c != '\\') {
            if (o)
                *o++ = (char)c;
            p++;
            continue;
        }
        if (s->end - p < 2)
            return false;
        char e = p[1];
        p += 2;
        switch (e) {
        case '"': case '\\': case '/': c = (unsigned char)e; break;
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        case 'u': {
            if (s->end - p < 4)
                return false;
            long cp = hex4(p);
            p += 4;
            if (cp <= 0 || (cp >= 0xdc00 && cp <= 0xdfff))
                return false; /* \u0000 or a lone low surrogate: jansson decides */
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (s->end - p < 6 || p[0] != '\\' || p[1] != 'u')
                    return false;
                long lo = hex4(p + 2);
                if (lo < 0xdc00 || lo > 0xdfff)
                    return false;
                p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (o) {
                if (cp < 0x80) {
                    *o++ = (char)cp;
                } else if (cp < 0x800) {
                    *o++ = (char)(0xc0 | (cp >> 6));
                    *o++ = (char)(0x80 | (cp & 0x3f));
                } else if (cp < 0x10000) {
                    *o++ = (char)(0xe0 | (cp >> 12));
                    *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
                    *o++ = (char)(0x80 | (cp & 0x3f));
                } else {
                    *o++ = (char)(0xf0 | (cp >> 18));
                    *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
                    *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
                    *o++ = (char)(0x80 | (cp & 0x3f));
                }
            }
            continue;
        }
        default:
            return false;
        }
        if (o)
            *o++ = (char)c;
    }
    s->p = p + 1;
    if (v) {
        *o = '\0';
        v->kind = J_STR;
        v->s = start;
        v->n = (size_t)(o - start);
        s->arena = o + 1;
    }
    return true;
}

static bool digits(scan *s)
{
    const char *p0 = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > p0;
}

/* JSON's number grammar; the value is converted when `v` wants it. */
static bool scan_number(scan *s, jval *v)
{
    const char *p0 = s->p;
    bool is_int = true;
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (!digits(s))
        return false;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        is_int = false;
        if (!digits(s))
            return false;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        is_int = false;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!digits(s))
            return false;
    }
    if (!v)
        return true;
    char tmp[64];
    size_t n = (size_t)(s->p - p0);
    if (n >= sizeof tmp)
        return false;
    memcpy(tmp, p0, n);
    tmp[n] = '\0';
    errno = 0;
    char *endp;
    if (is_int) {
        v->kind = J_INT;
        v->i = strtoll(tmp, &endp, 10);
    } else {
        v->kind = J_REAL;
        v->d = strtod(tmp, &endp);
    }
    return errno == 0 && *endp == '\0'; /* out of range: jansson's error */
}

static bool scan_literal(scan *s, const char *w, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
        return false;
    s->p += n;
    return true;
}

static bool scan_value(scan *s, jval *v, int depth);

/* After a member or element: 1 at ',' (another follows), 0 at `close` (the
 * container ends), -1 for anything else.  Consumes what it found. */
static int scan_next(scan *s, char close)
{
    scan_ws(s);
    if (s->p >= s->end || (*s->p != ',' && *s->p != close))
        return -1;
    return *s->p++ == ',';
}

static bool scan_container(scan *s, jval *v, int depth)
{
    char close = *s->p == '{' ? '}' : ']';
    bool obj = close == '}';
    if (depth > 64)
        return false;
    if (v)
        v->kind = obj ? J_OBJECT : J_ARRAY;
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return true;
    }
    for (;;) {
        scan_ws(s);
        if (obj) {
            if (s->p >= s->end || *s->p != '"' || !scan_string(s, NULL))
                return false;
            scan_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return false;
            s->p++;
            scan_ws(s);
        }
        if (!scan_value(s, NULL, depth + 1))
            return false;
        int next = scan_next(s, close);
        if (next <= 0)
            return next == 0;
    }
}

/* One value at s->p; with `v` its kind (and string/number) is kept. */
static bool scan_value(scan *s, jval *v, int depth)
{
    if (s->p >= s->end)
        return false;
    switch (*s->p) {
    case '"': return scan_string(s, v);
    case '{': case '[': return scan_container(s, v, depth);
    case 't': if (v) v->kind = J_TRUE; return scan_literal(s, "true", 4);
    case 'f': if (v) v->kind = J_FALSE; return scan_literal(s, "false", 5);
    case 'n': if (v) v->kind = J_NULL; return scan_literal(s, "null", 4);
    default: return scan_number(s, v);
    }
}

/* timelimit: [hard, soft], each a number or null. */
static bool scan_timelimit(scan *s, jval *v)
{
    if (*s->p != '[')
        return scan_value(s, v, 1) && v->kind == J_NULL;
    s->p++;
    for (int i = 0; i < 2; i++) {
        jval e = {0};
        scan_ws(s);
        if (!scan_value(s, &e, 2))
            return false;
        if (e.kind == J_NULL)
            v->pair[i] = -1;
        else if (e.kind == J_INT || e.kind == J_REAL) {
            double d = e.kind == J_INT ? (double)e.i : e.d;
            if (!(d >= 0 && d <= MAX_TIME_LIMIT))
                return false; /* jansson path: refused */
            v->pair[i] = d > 0 ? d : -1; /* Celery treats 0 as "no limit" */
        } else
            return false;
        scan_ws(s);
        if (s->p >= s->end || *s->p != (i == 0 ? ',' : ']'))
            return false;
        s->p++;
    }
    v->kind = J_ARRAY;
    return true;
}

/* The members of an object at s->p ('{'), keeping the fields of `lv`. */
static bool scan_members(scan *s, level lv, jval *f)
{
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return true;
    }
    for (;;) {
        scan_ws(s);
        if (s->p >= s->end || *s->p != '"')
            return false;
        const char *k = s->p + 1, *q = k;
        while (q < s->end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20 &&
               (unsigned char)*q < 0x80)
            q++;
        if (q >= s->end || *q != '"')
            return false; /* escaped key: jansson decides */
        size_t kn = (size_t)(q - k);
        s->p = q + 1;
        scan_ws(s);
        if (s->p >= s->end || *s->p != ':')
            return false;
        s->p++;
        scan_ws(s);
        if (s->p >= s->end)
            return false;
        int fi = field_of(lv, k, kn);
        if (fi < 0) {
            if (!scan_value(s, NULL, 1))
                return false;
        } else {
            jval *v = &f[fi];
            if (v->seen)
                return false; /* a repeated key: jansson decides */
            v->seen = true;
            bool sub = fi == F_HEADERS || fi == F_PROPS || fi == F_DINFO;
            if (sub && *s->p == '{') {
                v->kind = J_OBJECT;
                if (!scan_members(s, fi == F_HEADERS ? LV_HEADERS
                                     : fi == F_PROPS ? LV_PROPS
                                                     : LV_DINFO,
                                  f))
                    return false;
            } else if (fi == F_TIMELIMIT) {
                if (!scan_timelimit(s, v))
                    return false;
            } else if (!scan_value(s, v, 1)) {
                return false;
            }
        }
        int next = scan_next(s, '}');
        if (next <= 0)
            return next == 0;
    }
}

static const char *fstr(const jval *v)
{
    return v->seen && v->kind == J_STR ? v->s : NULL;
}

static bool fast_time(const jval *v, bool *has, double *out)
{
    if (!v->seen || v->kind == J_NULL)
        return true;
    if (v->kind != J_STR || cel_iso8601_parse(v->s, out) < 0)
        return false;
    *has = true;
    return true;
}

static bool fast_body(cel_message *m, const char *body, size_t body_len, bool base64);

/* Fills `m` from a well-formed envelope and returns true, or returns false
 * with `m` untouched (the caller takes the jansson path). */
static bool fast_parse_redis(const char *data, size_t len, cel_message *m, bool decode_body)
{
    jval f[F_COUNT];
    memset(f, 0, sizeof f);
    char *raw = malloc(2 * len + 2);
    if (!raw)
        return false;
    memcpy(raw, data, len);
    raw[len] = '\0';
    scan s = {.p = raw, .end = raw + len, .arena = raw + len + 1};
    scan_ws(&s);
    if (s.p >= s.end || *s.p != '{' || !scan_members(&s, LV_TOP, f))
        goto bail;
    scan_ws(&s);
    if (s.p != s.end || f[F_HEADERS].kind != J_OBJECT || f[F_PROPS].kind != J_OBJECT)
        goto bail;

    cel_message t = {.raw = raw, .raw_len = len};
    if (f[F_XSIZE].seen)
        goto bail; /* an oversized AMQP body: rare, the jansson path reads it */
    const jval *ct = &f[F_CTYPE];
    t.content_type = !ct->seen || ct->kind == J_NULL ? CT_JSON
                     : ct->kind == J_STR             ? ct->s
                                                     : "(invalid)";
    if (strcmp(t.content_type, CT_JSON) != 0)
        goto bail;
    t.content_encoding = fstr(&f[F_CENC]);
    t.correlation_id = fstr(&f[F_CORR]);
    t.reply_to = fstr(&f[F_REPLY]);
    t.delivery_tag = fstr(&f[F_TAG]);
    t.priority = f[F_PRIO].kind == J_INT ? clamp_int(f[F_PRIO].i) : 0;
    t.exchange = fstr(&f[F_EXCHANGE]);
    t.routing_key = fstr(&f[F_RKEY]);
    if (!t.exchange)
        t.exchange = "";
    if (!t.routing_key)
        t.routing_key = "";
    t.redelivered = f[F_DREDELIVERED].kind == J_TRUE || f[F_HREDELIVERED].kind == J_TRUE;
    const jval *be = &f[F_BODYENC];
    bool base64 = be->seen && be->kind != J_NULL;
    if (base64 && !(be->kind == J_STR && strcmp(be->s, "base64") == 0))
        goto bail;

    t.task = fstr(&f[F_TASK]);
    t.id = fstr(&f[F_ID]);
    if (!t.task || !t.id)
        goto bail;
    t.root_id = fstr(&f[F_ROOT]);
    t.parent_id = fstr(&f[F_PARENT]);
    t.group = fstr(&f[F_GROUP]);
    t.shadow = fstr(&f[F_SHADOW]);
    t.origin = fstr(&f[F_ORIGIN]);
    t.argsrepr = fstr(&f[F_ARGSREPR]);
    t.kwargsrepr = fstr(&f[F_KWARGSREPR]);
    t.ignore_result = f[F_IGNORE].kind == J_TRUE;
    const jval *r = &f[F_RETRIES];
    if (r->seen && r->kind == J_INT && r->i >= 0 && r->i <= MAX_RETRIES)
        t.retries = (int)r->i;
    else if (r->seen && r->kind != J_NULL)
        goto bail;
    if (!fast_time(&f[F_ETA], &t.has_eta, &t.eta) ||
        !fast_time(&f[F_EXPIRES], &t.has_expires, &t.expires))
        goto bail;
    t.time_limit = t.soft_time_limit = -1;
    if (f[F_TIMELIMIT].kind == J_ARRAY) {
        t.time_limit = f[F_TIMELIMIT].pair[0];
        t.soft_time_limit = f[F_TIMELIMIT].pair[1];
    }
    if (f[F_COMPRESSION].seen && f[F_COMPRESSION].kind != J_NULL)
        goto bail;
    const jval *gi = &f[F_GROUP_INDEX];
    if (gi->seen && gi->kind != J_NULL && gi->kind != J_INT)
        goto bail;
    if (decode_body) {
        const jval *b = &f[F_BODY];
        if (b->kind != J_STR || !fast_body(&t, b->s, b->n, base64))
            goto bail;
    }
    if (gi->seen && gi->kind == J_INT)
        t.group_index = json_integer(gi->i); /* owned: see cel_message_clear */
    *m = t;
    return true;
bail:
    free(raw);
    return false;
}

/* Stage 4 for the fast path; false (nothing kept) on any problem. */
static bool fast_body(cel_message *m, const char *body, size_t body_len, bool base64)
{
    char *decoded = NULL;
    const char *p = body;
    size_t n = body_len;
    if (base64) {
        decoded = cel_b64_decode(body, body_len, &n);
        if (!decoded)
            return false;
        p = decoded;
    }
    json_t *b = json_loadb(p, n, JSON_ALLOW_NUL | JSON_DECODE_ANY, NULL);
    free(decoded);
    size_t parts = json_is_array(b) ? json_array_size(b) : 0;
    json_t *embed = parts == 3 ? json_array_get(b, 2) : NULL;
    if ((parts != 2 && parts != 3) || !json_is_array(json_array_get(b, 0)) ||
        !json_is_object(json_array_get(b, 1)) ||
        (embed && !json_is_null(embed) && !json_is_object(embed))) {
        json_decref(b);
        return false;
    }
    m->body = b;
    m->args = json_array_get(b, 0);
    m->kwargs = json_array_get(b, 1);
    m->embed = json_is_object(embed) ? embed : NULL;
    return true;
}

static bool fast_scan = true;

void cel_message_set_max_size(size_t bytes) { max_inflated = bytes; }

void cel_message_set_fast_scan(bool on) { fast_scan = on; }

static void recover_tag(const char *data, size_t len, cel_message *m);

/* The delivery tag of an envelope jansson refused (raw NUL, invalid UTF-8,
 * nesting past its depth limit, an integer past 64 bits).  The transport's
 * fetch script found the tag by a plain text search and recorded the
 * message in `unacked`; without the same search here the message could not
 * be acked and would be restored, and refused, after every visibility
 * timeout.  The last `"delivery_tag": "..."` wins (kombu writes it last); a
 * wrong guess only acks a tag nobody holds. */
void cel_message_scan_tag(const char *data, size_t len, cel_message *m)
{
    memset(m, 0, sizeof *m);
    recover_tag(data, len, m);
}

static void recover_tag(const char *data, size_t len, cel_message *m)
{
    static const char key[] = "\"delivery_tag\"";
    const char *found = NULL;
    for (const char *p = data; (size_t)(data + len - p) >= sizeof key - 1;) {
        const char *q = memmem(p, (size_t)(data + len - p), key, sizeof key - 1);
        if (!q)
            break;
        found = q;
        p = q + 1;
    }
    if (!found)
        return;
    const char *p = found + sizeof key - 1, *end = data + len;
    while (p < end && (*p == ' ' || *p == ':'))
        p++;
    if (p >= end || *p != '"')
        return;
    const char *t = ++p;
    while (p < end && p - t <= 64 && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20 &&
           (unsigned char)*p < 0x7f)
        p++;
    if (p >= end || *p != '"' || p == t || p - t > 64)
        return;
    m->raw = strndup(t, (size_t)(p - t));
    m->delivery_tag = m->raw;
}

static cel_msg_status parse_redis(const char *data, size_t len, cel_message *m,
                                  bool decode_body, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    set_err(err, errlen, "ok");
    if (fast_scan && fast_parse_redis(data, len, m, decode_body))
        return CEL_MSG_OK;
    json_error_t jerr;
    json_t *env = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    m->envelope = env;
    if (!env) {
        set_err(err, errlen, "envelope is not JSON: %s", jerr.text);
        recover_tag(data, len, m);
        return CEL_MSG_BAD_ENVELOPE;
    }
    json_t *h = json_object_get(env, "headers");
    json_t *p = json_object_get(env, "properties");
    if (!json_is_object(env) || !json_is_object(h) || !json_is_object(p)) {
        /* Keep the tag when there is one, so the caller can ack what the
         * fetch recorded in `unacked` instead of leaving it to be restored
         * (and refused) forever. */
        m->delivery_tag = opt_str(p, "delivery_tag");
        set_err(err, errlen, "envelope lacks object headers/properties");
        return CEL_MSG_BAD_ENVELOPE;
    }
    m->headers = h;
    m->properties = p;
    json_t *xs = json_object_get(env, "x-celeriac-size");
    if (json_is_integer(xs) && json_integer_value(xs) > 0)
        m->declared_size = (size_t)json_integer_value(xs);

    json_t *ct = json_object_get(env, "content-type");
    if (!ct || json_is_null(ct))
        m->content_type = CT_JSON;
    else if (json_is_string(ct) && strlen(json_string_value(ct)) == json_string_length(ct))
        m->content_type = json_string_value(ct);
    else
        m->content_type = "(invalid)";
    m->content_encoding = opt_str(env, "content-encoding");

    m->correlation_id = opt_str(p, "correlation_id");
    m->reply_to = opt_str(p, "reply_to");
    m->delivery_tag = opt_str(p, "delivery_tag");
    json_t *prio = json_object_get(p, "priority");
    m->priority = json_is_integer(prio) ? clamp_int(json_integer_value(prio)) : 0;
    json_t *di = json_object_get(p, "delivery_info");
    m->exchange = opt_str(di, "exchange");
    m->routing_key = opt_str(di, "routing_key");
    if (!m->exchange)
        m->exchange = "";
    if (!m->routing_key)
        m->routing_key = "";
    m->redelivered = json_is_true(json_object_get(di, "redelivered"));

    json_t *be = json_object_get(p, "body_encoding");
    body_encoding enc = !be || json_is_null(be) ? BODY_RAW
                      : str_is(be, "base64")    ? BODY_BASE64
                                                : BODY_UNKNOWN;
    json_t *body = json_object_get(env, "body");
    return parse_rest(m, json_string_value(body), json_string_length(body), enc, decode_body,
                      err, errlen);
}

cel_msg_status cel_message_parse_redis(const char *data, size_t len, cel_message *m,
                                       char *err, size_t errlen)
{
    return parse_redis(data, len, m, true, err, errlen);
}

cel_msg_status cel_message_parse_redis_head(const char *data, size_t len, cel_message *m,
                                            char *err, size_t errlen)
{
    return parse_redis(data, len, m, false, err, errlen);
}

json_t *cel_message_headers(const cel_message *m)
{
    if (m->headers || !m->raw)
        return json_incref(m->headers);
    json_t *env = json_loadb(m->raw, m->raw_len, JSON_ALLOW_NUL, NULL);
    json_t *h = json_incref(json_object_get(env, "headers"));
    json_decref(env);
    return h;
}

cel_msg_status cel_message_parse_parts(cel_message *m, const char *body, size_t body_len,
                                       bool body_is_base64, char *err, size_t errlen)
{
    set_err(err, errlen, "ok");
    if (!m->exchange)
        m->exchange = "";
    if (!m->routing_key)
        m->routing_key = "";
    return parse_rest(m, body ? body : "", body_len, body_is_base64 ? BODY_BASE64 : BODY_RAW,
                      true, err, errlen);
}

void cel_message_clear(cel_message *m)
{
    if (!m)
        return;
    json_decref(m->body);
    if (m->raw) {
        free(m->raw);
        json_decref(m->group_index); /* the fast scan made it */
    } else if (m->envelope)
        json_decref(m->envelope);
    else
        json_decref(m->headers); /* AMQP: headers were handed to us */
    memset(m, 0, sizeof *m);
}

const char *cel_msg_status_str(cel_msg_status st)
{
    switch (st) {
    case CEL_MSG_OK: return "ok";
    case CEL_MSG_BAD_ENVELOPE: return "bad envelope";
    case CEL_MSG_NO_TASK: return "no task header";
    case CEL_MSG_INVALID: return "invalid task message";
    case CEL_MSG_DISALLOWED: return "content type not allowed";
    case CEL_MSG_DECODE_ERROR: return "body decode error";
    }
    return "unknown";
}

/* ======================================================================
 * Building
 * ====================================================================== */

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* Seconds as Python would have them: int when integral, else float; <= 0 is
 * "no limit" (null). */
static json_t *seconds_or_null(double s)
{
    if (!(s > 0))
        return json_null();
    if (s < 9007199254740992.0 && s == (double)(int64_t)s)
        return json_integer((json_int_t)s);
    return json_real(s);
}

static const char default_embed[] =
    "{\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}";

/* "[args, kwargs, embed]" in Python's json.dumps form. */
static char *build_body(const cel_message_spec *spec, size_t *len)
{
    cel_buf b = {0};
    json_t *empty_args = NULL, *empty_kwargs = NULL;
    const json_t *args = spec->args, *kwargs = spec->kwargs;
    if (!args)
        args = empty_args = json_array();
    if (!kwargs)
        kwargs = empty_kwargs = json_object();
    int rc = (!args || !kwargs || buf_puts(&b, "[") < 0 || dump_py(&b, args, 1) < 0 ||
              buf_puts(&b, ", ") < 0 || dump_py(&b, kwargs, 1) < 0 || buf_puts(&b, ", ") < 0 ||
              (spec->embed ? dump_py(&b, spec->embed, 1) : buf_puts(&b, default_embed)) < 0 ||
              buf_puts(&b, "]") < 0)
                 ? -1
                 : 0;
    json_decref(empty_args);
    json_decref(empty_kwargs);
    if (rc < 0) {
        cel_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.data;
}

char *cel_message_build_redis(const cel_message_spec *spec, char **id_out)
{
    if (id_out)
        *id_out = NULL;
    if (!spec || !spec->task || (spec->args && !json_is_array(spec->args)) ||
        (spec->kwargs && !json_is_object(spec->kwargs)) ||
        (spec->embed && !json_is_object(spec->embed)))
        return NULL;

    char id_buf[37], tag_buf[37], origin_buf[300], eta_buf[40], exp_buf[40], ms_buf[32];
    const char *id = spec->id;
    if (!id) {
        cel_uuid4(id_buf);
        id = id_buf;
    }
    const char *tag = spec->delivery_tag;
    if (!tag) {
        cel_uuid4(tag_buf);
        tag = tag_buf;
    }
    const char *origin = spec->origin;
    if (!origin) {
        char host[256];
        if (gethostname(host, sizeof host) != 0)
            strcpy(host, "localhost");
        host[sizeof host - 1] = '\0';
        snprintf(origin_buf, sizeof origin_buf, "gen%ld@%s", (long)getpid(), host);
        origin = origin_buf;
    }
    bool has_eta = spec->eta > 0, has_exp = spec->expires > 0;
    if (has_eta)
        cel_iso8601_format(spec->eta, true, eta_buf, sizeof eta_buf);
    if (has_exp) {
        cel_iso8601_format(spec->expires, true, exp_buf, sizeof exp_buf);
        double ms = (spec->expires - cel_now()) * 1000.0;
        snprintf(ms_buf, sizeof ms_buf, "%lld", ms > 0 ? (long long)ms : 0LL);
    }

    json_t *empty_args = spec->args ? NULL : json_array();
    json_t *empty_kwargs = spec->kwargs ? NULL : json_object();
    char *argsrepr = cel_pyrepr_args(spec->args ? spec->args : empty_args);
    char *kwargsrepr = cel_pyrepr(spec->kwargs ? spec->kwargs : empty_kwargs);
    json_decref(empty_args);
    json_decref(empty_kwargs);

    size_t body_len = 0, b64_len = 0;
    char *body = build_body(spec, &body_len);
    char *b64 = body ? cel_b64_encode(body, body_len, &b64_len) : NULL;
    free(body);

    json_t *env = NULL;
    char *out = NULL;
    if (!argsrepr || !kwargsrepr || !b64)
        goto done;

    json_t *h = json_object();
    json_object_set_new(h, "lang", json_string("py"));
    json_object_set_new(h, "task", json_string(spec->task));
    json_object_set_new(h, "id", json_string(id));
    json_object_set_new(h, "shadow", json_null());
    json_object_set_new(h, "eta", has_eta ? json_string(eta_buf) : json_null());
    json_object_set_new(h, "expires", has_exp ? json_string(exp_buf) : json_null());
    json_object_set_new(h, "group", str_or_null(spec->group));
    json_object_set_new(h, "group_index",
                        spec->group_index ? json_deep_copy(spec->group_index) : json_null());
    json_object_set_new(h, "retries", json_integer(spec->retries));
    json_object_set_new(h, "timelimit", json_pack("[oo]", seconds_or_null(spec->time_limit),
                                                  seconds_or_null(spec->soft_time_limit)));
    json_object_set_new(h, "root_id", json_string(spec->root_id ? spec->root_id : id));
    json_object_set_new(h, "parent_id", str_or_null(spec->parent_id));
    json_object_set_new(h, "argsrepr", json_string(argsrepr));
    json_object_set_new(h, "kwargsrepr", json_string(kwargsrepr));
    json_object_set_new(h, "origin", json_string(origin));
    json_object_set_new(h, "ignore_result", json_boolean(spec->ignore_result));

    json_t *p = json_object();
    json_object_set_new(p, "correlation_id", json_string(id));
    json_object_set_new(p, "reply_to", json_string(spec->reply_to ? spec->reply_to : ""));
    json_object_set_new(p, "delivery_mode", json_integer(2));
    if (has_exp)
        json_object_set_new(p, "expiration", json_string(ms_buf));
    json_object_set_new(p, "delivery_info",
                        json_pack("{s:s, s:s}", "exchange", spec->exchange ? spec->exchange : "",
                                  "routing_key", spec->queue ? spec->queue : "celery"));
    json_object_set_new(p, "priority", json_integer(spec->priority));
    json_object_set_new(p, "body_encoding", json_string("base64"));
    json_object_set_new(p, "delivery_tag", json_string(tag));

    env = json_object();
    json_object_set_new(env, "body", json_stringn(b64, b64_len));
    json_object_set_new(env, "content-encoding", json_string("utf-8"));
    json_object_set_new(env, "content-type", json_string(CT_JSON));
    json_object_set_new(env, "headers", h);
    json_object_set_new(env, "properties", p);
    /* A failed json_string() (bad UTF-8 in a caller string, ENOMEM) leaves a
     * key missing; refuse rather than publish a partial message. */
    if (json_object_size(h) != 16 || json_object_size(p) != (has_exp ? 8u : 7u) ||
        json_object_size(env) != 5 || !json_is_array(json_object_get(h, "timelimit")) ||
        !json_is_object(json_object_get(p, "delivery_info")))
        goto done;
    out = cel_json_dumps_py(env, NULL);
    if (out && id_out) {
        *id_out = strdup(id);
        if (!*id_out) {
            free(out);
            out = NULL;
        }
    }
done:
    json_decref(env);
    free(argsrepr);
    free(kwargsrepr);
    free(b64);
    return out;
}

char *cel_message_redelivered_envelope(const char *data, size_t len)
{
    json_error_t jerr;
    json_t *env = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    char *out = NULL;
    json_t *h = json_object_get(env, "headers");
    json_t *p = json_object_get(env, "properties");
    if (!json_is_object(env) || !json_is_object(h) || !json_is_object(p))
        goto done;
    json_t *di = json_object_get(p, "delivery_info");
    if (!json_is_object(di)) {
        di = json_object();
        if (json_object_set_new(p, "delivery_info", di) < 0)
            goto done;
    }
    if (json_object_set_new(h, "redelivered", json_true()) < 0 ||
        json_object_set_new(di, "redelivered", json_true()) < 0)
        goto done;
    out = cel_json_dumps_py(env, NULL);
done:
    json_decref(env);
    return out;
}

/* A transient kombu envelope for a fanout/direct exchange (remote-control
 * replies, events): JSON body in base64, `headers` (stolen), delivery_mode 1. */
static char *build_transient(const char *exchange, const char *routing_key, json_t *headers,
                             const char *body, size_t len)
{
    size_t blen = 0;
    char *b64 = cel_b64_encode(body, len, &blen);
    char tag[37];
    cel_uuid4(tag);
    json_t *env = b64 && headers
                      ? json_pack("{s:s, s:s, s:s, s:O, s:{s:i, s:{s:s, s:s}, s:i, s:s, s:s}}",
                                  "body", b64, "content-encoding", "utf-8", "content-type",
                                  "application/json", "headers", headers, "properties",
                                  "delivery_mode", 1, "delivery_info", "exchange", exchange,
                                  "routing_key", routing_key, "priority", 0, "body_encoding",
                                  "base64", "delivery_tag", tag)
                      : NULL;
    char *text = env ? cel_json_dumps_py(env, NULL) : NULL;
    json_decref(env);
    json_decref(headers);
    free(b64);
    return text;
}

char *cel_message_build_reply(const char *exchange, const char *routing_key, const char *ticket,
                              long long clock, const char *body, size_t len)
{
    return build_transient(exchange, routing_key,
                           json_pack("{s:s, s:I}", "ticket", ticket, "clock", (json_int_t)clock),
                           body, len);
}

char *cel_message_build_event(const char *routing_key, const char *hostname, const char *body,
                              size_t len)
{
    return build_transient("celeryev", routing_key, json_pack("{s:s}", "hostname", hostname),
                           body, len);
}
