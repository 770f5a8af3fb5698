/* amqp_table.c — AMQP 0-9-1 field tables <-> JSON, with py-amqp's meaning.
 *
 * Why a file of its own: Celery's headers reach an AMQP transport as a field
 * table, but the rest of celeriac (message parsing, the Redis envelope, task
 * calls) speaks jansson.  Converting at the edge keeps one representation of
 * a message everywhere else.  librabbitmq-c does the byte-level work
 * (amqp_decode_table / amqp_encode_table); this file only maps its
 * amqp_field_value_t to and from json_t, which is where the compatibility
 * questions are.
 *
 * Why py-amqp's meaning and not librabbitmq's: the producer and the Python
 * worker celeriac stands in for both use py-amqp 5.1.1, so a header must read
 * here exactly as it reads there (tests/unit/test_amqptable.c replays tables
 * py-amqp itself encoded, protocol/amqp_tables.py).  Where the two libraries
 * disagree on a tag:
 *   'L'  librabbitmq: uint64.  py-amqp writes and reads it signed.  Signed.
 *   'b'  librabbitmq: int8.    py-amqp reads it unsigned.  Unsigned.
 *   'B'  librabbitmq: uint8.   py-amqp reads it signed.    Signed.
 *   'D'  librabbitmq: uint32 value.  py-amqp reads it signed.  Signed.
 *   'l'  librabbitmq: int64.  py-amqp reads it unsigned, which a JSON int64
 *        cannot hold above 2^63: librabbitmq's signed value is kept.
 *   's'  librabbitmq (and RabbitMQ): int16.  py-amqp: a short string, so it
 *        misreads such a table anyway; the decoding librabbitmq did stands.
 * The encoder writes only what py-amqp writes for the same Python value
 * (S I L d t A F V, with py-amqp's I/L boundary), so a Python consumer gets
 * back what a Python producer would have sent.
 *
 * JSON has no NaN, infinity, bytes or datetime: NaN/inf become null, 'x' and
 * invalid UTF-8 in 'S' become strings with U+FFFD (py-amqp would hand out
 * bytes), 'T' becomes the isoformat() string of the naive UTC datetime
 * py-amqp builds.  Strings are handled with explicit lengths throughout, so
 * an embedded NUL survives both directions.
 *
 * Ownership: the decoder only reads the table (whose bytes usually point into
 * the frame buffer) and returns new JSON references.  The encoder copies
 * every key and string into the caller's pool, so the table stays valid after
 * the JSON is freed, for as long as the pool lives.
 */
#include "broker/amqp_table.h"

#include "core/util.h"

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- UTF-8 ----------------------------------------------------------- */

/* The length of the well-formed UTF-8 sequence at s[0..n), or 0 when it is
 * ill-formed; then *bad is the length of its maximal subpart (Unicode §3.9,
 * D93b), the bytes one U+FFFD replaces — exactly what Python's
 * decode('utf-8', 'replace') does.  Overlongs, surrogates and code points
 * above U+10FFFF are ill-formed. */
static size_t utf8_seq(const unsigned char *s, size_t n, size_t *bad)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF;
    size_t need;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        *bad = 1;
        return 0;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *bad = i;
            return 0;
        }
        lo = 0x80, hi = 0xBF;
    }
    return need + 1;
}

/* Makes bytes[0..len) valid UTF-8.  Returns the bytes themselves when they
 * already are (the common case: no copy), else a malloc'd copy with each
 * maximal ill-formed subpart replaced by U+FFFD, stored in *owned for the
 * caller to free.  The length is in *out_len; NULL only when out of memory.
 * Never returns NULL for an empty input (jansson wants a pointer). */
static const char *utf8_clean(const void *bytes, size_t len, char **owned, size_t *out_len)
{
    const unsigned char *s = bytes;
    size_t i = 0, k, bad = 0;
    *owned = NULL;
    *out_len = len;
    if (len == 0)
        return "";
    while (i < len && (k = utf8_seq(s + i, len - i, &bad)) != 0)
        i += k;
    if (i == len)
        return bytes;
    /* An ill-formed byte (1 in) becomes at most 3 out. */
    if (len > SIZE_MAX / 3)
        return NULL;
    char *out = malloc(len * 3);
    if (!out)
        return NULL;
    memcpy(out, s, i);
    size_t o = i;
    while (i < len) {
        k = utf8_seq(s + i, len - i, &bad);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += bad;
        }
    }
    *owned = out;
    *out_len = o;
    return out;
}

static json_t *string_to_json(const void *bytes, size_t len)
{
    char *owned;
    size_t n;
    const char *s = utf8_clean(bytes, len, &owned, &n);
    if (!s)
        return NULL;
    json_t *j = json_stringn_nocheck(s, n);
    free(owned);
    return j;
}

/* ---- decoding: field value -> JSON ----------------------------------- */

/* Two's-complement reinterpretations without implementation-defined casts. */
static json_int_t u64_as_signed(uint64_t u)
{
    return u > (uint64_t)INT64_MAX ? -(json_int_t)(UINT64_MAX - u) - 1 : (json_int_t)u;
}

static int32_t u32_as_signed(uint32_t u)
{
    return u > (uint32_t)INT32_MAX ? -(int32_t)(UINT32_MAX - u) - 1 : (int32_t)u;
}

static json_t *real_to_json(double d) { return isfinite(d) ? json_real(d) : json_null(); }

/* 'D': value / 10^decimals.  strtod of "<value>e-<decimals>" rounds once,
 * correctly, as float(Decimal) does in Python; dividing by a power of ten
 * would round twice from 10^23 on. */
static json_t *decimal_to_json(amqp_decimal_t dec)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId32 "e-%u", u32_as_signed(dec.value),
             (unsigned)dec.decimals);
    return real_to_json(strtod(buf, NULL));
}

/* 'T': seconds since the epoch, as py-amqp's datetime.utcfromtimestamp()
 * then isoformat().  Beyond 9999-12-31T23:59:59 Python raises; null here. */
static json_t *timestamp_to_json(uint64_t secs)
{
    if (secs > 253402300799ULL)
        return json_null();
    char buf[40];
    cel_iso8601_format((double)secs, false, buf, sizeof buf);
    return json_string(buf);
}

/* Nesting beyond this fails the whole table: an unbounded recursion here
 * (and in every later walk of the tree: json_dumps, the message parser) is a
 * stack overflow a hostile producer can trigger (tests/interop/
 * test_badinput.py: 18,000 levels fit in one header frame; ASan's larger
 * frames overflowed).  2000 stays under jansson's parser limit (2048), so
 * nothing that could not be parsed later is converted now. */
#define MAX_TABLE_DEPTH 2000

static json_t *value_to_json(const amqp_field_value_t *v, int depth);
static json_t *table_to_json(const amqp_table_t *t, int depth);

static json_t *array_to_json(const amqp_array_t *a, int depth)
{
    json_t *arr = json_array();
    if (!arr)
        return NULL;
    for (int i = 0; i < a->num_entries; i++) {
        if (json_array_append_new(arr, value_to_json(&a->entries[i], depth + 1)) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

json_t *cel_amqp_value_to_json(const amqp_field_value_t *v) { return value_to_json(v, 0); }

static json_t *value_to_json(const amqp_field_value_t *v, int depth)
{
    if (depth > MAX_TABLE_DEPTH)
        return NULL;
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
        return json_boolean(v->value.boolean);
    case AMQP_FIELD_KIND_I8: /* py-amqp reads 'b' unsigned */
        return json_integer((uint8_t)v->value.i8);
    case AMQP_FIELD_KIND_U8: /* ... and 'B' signed */
        return json_integer(v->value.u8 > 127 ? (int)v->value.u8 - 256 : v->value.u8);
    case AMQP_FIELD_KIND_I16:
        return json_integer(v->value.i16);
    case AMQP_FIELD_KIND_U16:
        return json_integer(v->value.u16);
    case AMQP_FIELD_KIND_I32:
        return json_integer(v->value.i32);
    case AMQP_FIELD_KIND_U32:
        return json_integer(v->value.u32);
    case AMQP_FIELD_KIND_I64:
        return json_integer(v->value.i64);
    case AMQP_FIELD_KIND_U64: /* 'L': py-amqp's signed long long */
        return json_integer(u64_as_signed(v->value.u64));
    case AMQP_FIELD_KIND_F32:
        return real_to_json(v->value.f32);
    case AMQP_FIELD_KIND_F64:
        return real_to_json(v->value.f64);
    case AMQP_FIELD_KIND_DECIMAL:
        return decimal_to_json(v->value.decimal);
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        return string_to_json(v->value.bytes.bytes, v->value.bytes.len);
    case AMQP_FIELD_KIND_TIMESTAMP:
        return timestamp_to_json(v->value.u64);
    case AMQP_FIELD_KIND_ARRAY:
        return array_to_json(&v->value.array, depth);
    case AMQP_FIELD_KIND_TABLE:
        return table_to_json(&v->value.table, depth);
    case AMQP_FIELD_KIND_VOID:
    default:
        return json_null();
    }
}

json_t *cel_amqp_table_to_json(const amqp_table_t *t) { return table_to_json(t, 0); }

static json_t *table_to_json(const amqp_table_t *t, int depth)
{
    if (depth > MAX_TABLE_DEPTH)
        return NULL;
    json_t *obj = json_object();
    if (!obj)
        return NULL;
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        char *owned;
        size_t klen;
        const char *key = utf8_clean(e->key.bytes, e->key.len, &owned, &klen);
        json_t *val = key ? value_to_json(&e->value, depth + 1) : NULL;
        /* Setting a key again replaces the value in its first position: a
         * Python dict's last-wins.  setn_new steals `val` even on failure. */
        int rc = val ? json_object_setn_new_nocheck(obj, key, klen, val) : -1;
        free(owned);
        if (rc != 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

/* ---- encoding: JSON -> field value ----------------------------------- */

/* A copy of s[0..len) in the pool; an empty string needs no memory. */
static int pool_bytes(amqp_pool_t *pool, const char *s, size_t len, amqp_bytes_t *out)
{
    out->len = len;
    out->bytes = NULL;
    if (len == 0)
        return 0;
    out->bytes = amqp_pool_alloc(pool, len);
    if (!out->bytes)
        return -1;
    memcpy(out->bytes, s, len);
    return 0;
}

/* n entries of `size` bytes from the pool; none needs no memory. */
static void *pool_entries(amqp_pool_t *pool, size_t n, size_t size, int *ok)
{
    *ok = 0;
    if (n > INT_MAX || n > SIZE_MAX / size)
        return NULL;
    *ok = 1;
    if (n == 0)
        return NULL;
    void *p = amqp_pool_alloc(pool, n * size);
    *ok = p != NULL;
    return p;
}

static int array_from_json(const json_t *arr, amqp_pool_t *pool, amqp_array_t *out)
{
    size_t n = json_array_size(arr);
    int ok;
    out->num_entries = 0;
    out->entries = pool_entries(pool, n, sizeof *out->entries, &ok);
    if (!ok)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (cel_json_to_amqp_value(json_array_get(arr, i), pool, &out->entries[i]) != 0)
            return -1;
        out->num_entries++;
    }
    return 0;
}

int cel_json_to_amqp_value(const json_t *v, amqp_pool_t *pool, amqp_field_value_t *out)
{
    if (!v)
        return -1;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        out->kind = AMQP_FIELD_KIND_TABLE;
        return cel_json_to_amqp_table(v, pool, &out->value.table);
    case JSON_ARRAY:
        out->kind = AMQP_FIELD_KIND_ARRAY;
        return array_from_json(v, pool, &out->value.array);
    case JSON_STRING:
        out->kind = AMQP_FIELD_KIND_UTF8;
        return pool_bytes(pool, json_string_value(v), json_string_length(v), &out->value.bytes);
    case JSON_INTEGER: {
        /* py-amqp's boundary: I for |v| <= 2^31-1, so -2^31 goes out as L. */
        json_int_t i = json_integer_value(v);
        if (i >= -INT32_MAX && i <= INT32_MAX) {
            out->kind = AMQP_FIELD_KIND_I32;
            out->value.i32 = (int32_t)i;
        } else {
            out->kind = AMQP_FIELD_KIND_U64; /* 'L', signed to py-amqp */
            out->value.u64 = (uint64_t)i;
        }
        return 0;
    }
    case JSON_REAL:
        out->kind = AMQP_FIELD_KIND_F64;
        out->value.f64 = json_real_value(v);
        return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        out->kind = AMQP_FIELD_KIND_BOOLEAN;
        out->value.boolean = json_is_true(v);
        return 0;
    case JSON_NULL:
        out->kind = AMQP_FIELD_KIND_VOID;
        return 0;
    }
    return -1;
}

int cel_json_to_amqp_table(const json_t *obj, amqp_pool_t *pool, amqp_table_t *out)
{
    out->num_entries = 0;
    out->entries = NULL;
    if (!json_is_object(obj))
        return -1;
    int ok;
    out->entries = pool_entries(pool, json_object_size(obj), sizeof *out->entries, &ok);
    if (!ok)
        return -1;
    const char *key;
    size_t klen;
    json_t *val;
    /* jansson's iterators take no const; nothing is modified. */
    json_object_keylen_foreach((json_t *)obj, key, klen, val)
    {
        amqp_table_entry_t *e = &out->entries[out->num_entries];
        if (klen > UINT8_MAX || pool_bytes(pool, key, klen, &e->key) != 0 ||
            cel_json_to_amqp_value(val, pool, &e->value) != 0)
            return -1;
        out->num_entries++;
    }
    return 0;
}
