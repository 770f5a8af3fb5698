/* test_amqptable.c — AMQP field tables <-> JSON against py-amqp itself.
 *
 * protocol/fixtures/amqp-tables.json holds tables py-amqp 5.1.1 encoded
 * (Celery's real headers, integer and float edges, unicode, NULs, nesting,
 * datetimes, Decimals, bytes) plus hand-built ones for the tags py-amqp never
 * writes (b B s u i l f D x), each with the JSON celeriac must read and
 * whether py-amqp would encode that JSON back to the same bytes
 * (protocol/amqp_tables.py says how it was made).  Every table is decoded
 * with librabbitmq + cel_amqp_table_to_json and compared; then encoded back
 * with cel_json_to_amqp_table + amqp_encode_table, compared byte for byte
 * with py-amqp's where it applies, and decoded again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/amqp_table.h"

#define ENC_MAX (1 << 20)

static json_t *load_fixtures(void)
{
    const char *dir = getenv("CELERIAC_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/amqp-tables.json", dir ? dir : "protocol/fixtures");
    json_error_t jerr;
    json_t *all = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!all)
        fail_msg("%s: %s (set CELERIAC_FIXTURES)", path, jerr.text);
    assert_true(json_is_array(all));
    return all;
}

static unsigned char *unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    assert_int_equal(n % 2, 0);
    unsigned char *out = malloc(n / 2 + 1);
    assert_non_null(out);
    for (size_t i = 0; i < n / 2; i++) {
        unsigned int b;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &b), 1);
        out[i] = (unsigned char)b;
    }
    *len = n / 2;
    return out;
}

/* Decodes a whole encoded table into JSON (with librabbitmq, then ours). */
static json_t *decode(const void *bytes, size_t len, const char *name)
{
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    size_t off = 0;
    amqp_bytes_t enc = {len, (void *)bytes};
    int rc = amqp_decode_table(enc, &pool, &t, &off);
    if (rc != AMQP_STATUS_OK || off != len)
        fail_msg("%s: amqp_decode_table: %d, %zu of %zu bytes", name, rc, off, len);
    json_t *j = cel_amqp_table_to_json(&t);
    assert_non_null(j);
    empty_amqp_pool(&pool);
    return j;
}

/* Encodes a JSON object (ours, then librabbitmq) into a malloc'd buffer. */
static unsigned char *encode(const json_t *obj, size_t *len, const char *name)
{
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    if (cel_json_to_amqp_table(obj, &pool, &t) != 0)
        fail_msg("%s: cel_json_to_amqp_table failed", name);
    unsigned char *buf = malloc(ENC_MAX);
    assert_non_null(buf);
    size_t off = 0;
    int rc = amqp_encode_table((amqp_bytes_t){ENC_MAX, buf}, &t, &off);
    if (rc != AMQP_STATUS_OK)
        fail_msg("%s: amqp_encode_table: %d", name, rc);
    empty_amqp_pool(&pool);
    *len = off;
    return buf;
}

/* Equal values and the same key order (Python dicts keep insertion order). */
static void same_json(json_t *got, json_t *want, const char *name, const char *what)
{
    char *g = json_dumps(got, JSON_COMPACT | JSON_ENCODE_ANY);
    char *w = json_dumps(want, JSON_COMPACT | JSON_ENCODE_ANY);
    assert_non_null(g);
    assert_non_null(w);
    if (!json_equal(got, want) || strcmp(g, w) != 0)
        fail_msg("%s (%s):\n got  %s\n want %s", name, what, g, w);
    free(g);
    free(w);
}

static void hex_dump(const char *label, const unsigned char *b, size_t n)
{
    fprintf(stderr, "%s ", label);
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "%02x", b[i]);
    fprintf(stderr, "\n");
}

static void test_decode_fixtures(void **state)
{
    (void)state;
    json_t *all = load_fixtures();
    size_t i;
    json_t *fx;
    json_array_foreach(all, i, fx)
    {
        const char *name = json_string_value(json_object_get(fx, "name"));
        size_t len;
        unsigned char *raw = unhex(json_string_value(json_object_get(fx, "hex")), &len);
        json_t *got = decode(raw, len, name);
        same_json(got, json_object_get(fx, "json"), name, "decode");
        json_decref(got);
        free(raw);
    }
    assert_true(json_array_size(all) >= 29);
    json_decref(all);
}

static void test_encode_fixtures(void **state)
{
    (void)state;
    json_t *all = load_fixtures();
    size_t i, exact = 0;
    json_t *fx;
    json_array_foreach(all, i, fx)
    {
        const char *name = json_string_value(json_object_get(fx, "name"));
        json_t *want = json_object_get(fx, "json");
        size_t len, elen;
        unsigned char *raw = unhex(json_string_value(json_object_get(fx, "hex")), &len);
        unsigned char *enc = encode(want, &elen, name);
        if (json_is_true(json_object_get(fx, "roundtrip"))) {
            if (elen != len || memcmp(enc, raw, len) != 0) {
                hex_dump("py-amqp ", raw, len);
                hex_dump("celeriac", enc, elen);
                fail_msg("%s: encoded bytes differ from py-amqp's", name);
            }
            exact++;
        }
        json_t *again = decode(enc, elen, name);
        same_json(again, want, name, "round trip");
        json_decref(again);
        free(enc);
        free(raw);
    }
    /* Celery headers x2, ints, floats, unicode, NULs, nesting, None/bools,
     * the empty table. */
    assert_true(exact >= 9);
    json_decref(all);
}

/* The Celery headers are the case that matters: check the fields by name. */
static void test_celery_headers(void **state)
{
    (void)state;
    json_t *all = load_fixtures();
    json_t *hdr = NULL;
    size_t i;
    json_t *fx;
    json_array_foreach(all, i, fx)
    {
        if (strcmp(json_string_value(json_object_get(fx, "name")), "celery-headers-options") == 0) {
            size_t len;
            unsigned char *raw = unhex(json_string_value(json_object_get(fx, "hex")), &len);
            hdr = decode(raw, len, "celery-headers-options");
            free(raw);
        }
    }
    assert_non_null(hdr);
    assert_string_equal(json_string_value(json_object_get(hdr, "task")), "tasks.add");
    assert_string_equal(json_string_value(json_object_get(hdr, "eta")), "2024-05-01T12:00:00+00:00");
    assert_int_equal(json_integer_value(json_object_get(hdr, "group_index")), 3);
    assert_int_equal(json_integer_value(json_object_get(hdr, "retries")), 2);
    json_t *tl = json_object_get(hdr, "timelimit");
    assert_int_equal(json_array_size(tl), 2);
    assert_true(json_is_integer(json_array_get(tl, 0)));
    assert_int_equal(json_integer_value(json_array_get(tl, 0)), 10);
    assert_true(json_is_real(json_array_get(tl, 1)));
    assert_true(json_real_value(json_array_get(tl, 1)) == 5.5);
    assert_true(json_is_true(json_object_get(hdr, "ignore_result")));
    assert_string_equal(json_string_value(json_object_get(hdr, "kwargsrepr")), "{'x': 'caf\xc3\xa9'}");
    json_decref(hdr);
    json_decref(all);
}

static void test_not_an_object(void **state)
{
    (void)state;
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    json_t *bad[] = {json_array(), json_string("x"), json_integer(1), json_null(), json_true()};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_int_equal(cel_json_to_amqp_table(bad[i], &pool, &t), -1);
        json_decref(bad[i]);
    }
    assert_int_equal(cel_json_to_amqp_table(NULL, &pool, &t), -1);
    amqp_field_value_t v;
    assert_int_equal(cel_json_to_amqp_value(NULL, &pool, &v), -1);
    empty_amqp_pool(&pool);
}

static void test_key_length_limit(void **state)
{
    (void)state;
    char key[257];
    memset(key, 'k', sizeof key);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    json_t *obj = json_object();
    assert_int_equal(json_object_setn_new(obj, key, 255, json_true()), 0);
    assert_int_equal(cel_json_to_amqp_table(obj, &pool, &t), 0);
    assert_int_equal(t.num_entries, 1);
    assert_int_equal(t.entries[0].key.len, 255);
    assert_int_equal(json_object_setn_new(obj, key, 256, json_true()), 0);
    assert_int_equal(cel_json_to_amqp_table(obj, &pool, &t), -1); /* py-amqp: struct.error */
    json_decref(obj);
    empty_amqp_pool(&pool);
}

/* Alternating arrays and objects, 1000 levels, through both directions. */
static void test_deep_nesting(void **state)
{
    (void)state;
    json_t *inner = json_string("bottom");
    for (int d = 0; d < 1000; d++) {
        json_t *wrap;
        if (d % 2) {
            wrap = json_object();
            json_object_set_new(wrap, "n", inner);
            json_object_set_new(wrap, "depth", json_integer(d));
        } else {
            wrap = json_array();
            json_array_append_new(wrap, inner);
            json_array_append_new(wrap, json_null());
        }
        inner = wrap;
    }
    json_t *root = json_object();
    json_object_set_new(root, "deep", inner);
    size_t len;
    unsigned char *enc = encode(root, &len, "deep");
    json_t *back = decode(enc, len, "deep");
    same_json(back, root, "deep", "round trip");
    json_decref(back);
    json_decref(root);
    free(enc);
}

/* The encoded table owns its bytes: the JSON can go first. */
static void test_table_outlives_json(void **state)
{
    (void)state;
    amqp_pool_t pool;
    init_amqp_pool(&pool, 64);
    amqp_table_t t;
    json_t *obj = json_pack("{s:s%, s:[s,{s:s}], s:s}", "nul", "a\0b", (size_t)3, "list", "x", "k",
                            "v", "", "");
    assert_non_null(obj);
    assert_int_equal(cel_json_to_amqp_table(obj, &pool, &t), 0);
    json_t *want = json_deep_copy(obj);
    json_decref(obj);
    unsigned char buf[256];
    size_t off = 0;
    assert_int_equal(amqp_encode_table((amqp_bytes_t){sizeof buf, buf}, &t, &off), AMQP_STATUS_OK);
    empty_amqp_pool(&pool);
    static const unsigned char nul[] = {3, 'n', 'u', 'l', 'S', 0, 0, 0, 3, 'a', 0, 'b'};
    assert_memory_equal(buf + 4, nul, sizeof nul); /* after the table's length */
    json_t *back = decode(buf, off, "outlives");
    same_json(back, want, "outlives", "round trip");
    json_decref(back);
    json_decref(want);
}

/* Values built by hand: every kind's edges, and what librabbitmq never
 * produces (an unknown kind). */
static void test_value_kinds(void **state)
{
    (void)state;
    static const struct {
        amqp_field_value_t v;
        const char *want; /* JSON text */
    } cases[] = {
        {{.kind = AMQP_FIELD_KIND_I8, .value.i8 = -1}, "255"},
        {{.kind = AMQP_FIELD_KIND_U8, .value.u8 = 255}, "-1"},
        {{.kind = AMQP_FIELD_KIND_U8, .value.u8 = 128}, "-128"},
        {{.kind = AMQP_FIELD_KIND_I16, .value.i16 = INT16_MIN}, "-32768"},
        {{.kind = AMQP_FIELD_KIND_U16, .value.u16 = UINT16_MAX}, "65535"},
        {{.kind = AMQP_FIELD_KIND_I32, .value.i32 = INT32_MIN}, "-2147483648"},
        {{.kind = AMQP_FIELD_KIND_U32, .value.u32 = UINT32_MAX}, "4294967295"},
        {{.kind = AMQP_FIELD_KIND_I64, .value.i64 = INT64_MIN}, "-9223372036854775808"},
        {{.kind = AMQP_FIELD_KIND_U64, .value.u64 = UINT64_MAX}, "-1"},
        {{.kind = AMQP_FIELD_KIND_U64, .value.u64 = (uint64_t)1 << 63}, "-9223372036854775808"},
        {{.kind = AMQP_FIELD_KIND_U64, .value.u64 = INT64_MAX}, "9223372036854775807"},
        {{.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {0, UINT32_MAX}}, "-1.0"},
        {{.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {255, 7}}, "7e-255"},
        {{.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {25, 1}}, "1e-25"},
        {{.kind = AMQP_FIELD_KIND_F64, .value.f64 = -0.0}, "-0.0"},
        {{.kind = AMQP_FIELD_KIND_TIMESTAMP, .value.u64 = 0}, "\"1970-01-01T00:00:00\""},
        {{.kind = AMQP_FIELD_KIND_TIMESTAMP, .value.u64 = UINT64_MAX}, "null"},
        {{.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 7}, "true"},
        {{.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = {0, NULL}}, "\"\""},
        {{.kind = AMQP_FIELD_KIND_BYTES, .value.bytes = {0, NULL}}, "\"\""},
        {{.kind = AMQP_FIELD_KIND_ARRAY, .value.array = {0, NULL}}, "[]"},
        {{.kind = AMQP_FIELD_KIND_TABLE, .value.table = {0, NULL}}, "{}"},
        {{.kind = 'U', .value.u16 = 1}, "null"},
        {{.kind = 0, .value.u64 = 0}, "null"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *j = cel_amqp_value_to_json(&cases[i].v);
        assert_non_null(j);
        json_t *want = json_loads(cases[i].want, JSON_DECODE_ANY, NULL);
        assert_non_null(want);
        if (json_typeof(j) != json_typeof(want) || !json_equal(j, want)) {
            char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
            fail_msg("case %zu (kind '%c'): got %s, want %s", i, cases[i].v.kind, s, cases[i].want);
        }
        json_decref(want);
        json_decref(j);
    }
}

/* A table with a repeated key, built by hand: the last value wins, in the
 * first key's position; keys with NULs and invalid UTF-8 survive. */
static void test_repeated_and_odd_keys(void **state)
{
    (void)state;
    amqp_table_entry_t e[4] = {
        {{1, "k"}, {.kind = AMQP_FIELD_KIND_I32, .value.i32 = 1}},
        {{3, "a\0b"}, {.kind = AMQP_FIELD_KIND_VOID}},
        {{2, "\xff\xfe"}, {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 0}},
        {{1, "k"}, {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = {4, "last"}}},
    };
    amqp_table_t t = {4, e};
    json_t *got = cel_amqp_table_to_json(&t);
    assert_non_null(got);
    assert_int_equal(json_object_size(got), 3);
    char *s = json_dumps(got, JSON_COMPACT | JSON_ENSURE_ASCII);
    assert_string_equal(s, "{\"k\":\"last\",\"a\\u0000b\":null,\"\\uFFFD\\uFFFD\":false}");
    free(s);
    json_decref(got);
}

/* Strings: lengths, not NULs, end them; and invalid UTF-8 is replaced the way
 * Python's decode('utf-8', 'replace') does (also covered by the fixture). */
static void test_strings(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *want;
        size_t wlen;
    } cases[] = {
        {"a\0b", 3, "a\0b", 3},
        {"\xe2\x82\xac", 3, "\xe2\x82\xac", 3},
        {"\xe2\x82", 2, "\xef\xbf\xbd", 3},
        {"\xed\xbf\xbf", 3, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd", 9},
        {"\xf0\x9f\x98\x80!", 5, "\xf0\x9f\x98\x80!", 5},
        {"\xf0\x9f\x98!", 4, "\xef\xbf\xbd!", 4},
        {"\xc1\xbf", 2, "\xef\xbf\xbd\xef\xbf\xbd", 6},
        {"\xff", 1, "\xef\xbf\xbd", 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        amqp_field_value_t v = {.kind = AMQP_FIELD_KIND_UTF8,
                                .value.bytes = {cases[i].len, (void *)cases[i].in}};
        json_t *j = cel_amqp_value_to_json(&v);
        assert_non_null(j);
        assert_int_equal(json_string_length(j), cases[i].wlen);
        assert_memory_equal(json_string_value(j), cases[i].want, cases[i].wlen);
        json_decref(j);
    }
    /* Encoding keeps the NUL. */
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_field_value_t v;
    json_t *s = json_stringn("x\0y", 3);
    assert_int_equal(cel_json_to_amqp_value(s, &pool, &v), 0);
    assert_int_equal(v.kind, AMQP_FIELD_KIND_UTF8);
    assert_int_equal(v.value.bytes.len, 3);
    assert_memory_equal(v.value.bytes.bytes, "x\0y", 3);
    json_decref(s);
    empty_amqp_pool(&pool);
}

/* py-amqp's I/L boundary is asymmetric: -2^31 is written as L. */
static void test_integer_boundary(void **state)
{
    (void)state;
    static const struct {
        json_int_t v;
        uint8_t kind;
    } cases[] = {
        {0, 'I'},
        {INT32_MAX, 'I'},
        {-INT32_MAX, 'I'},
        {(json_int_t)INT32_MAX + 1, 'L'},
        {INT32_MIN, 'L'},
        {INT64_MIN, 'L'},
        {INT64_MAX, 'L'},
    };
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *j = json_integer(cases[i].v);
        amqp_field_value_t v;
        assert_int_equal(cel_json_to_amqp_value(j, &pool, &v), 0);
        assert_int_equal(v.kind, cases[i].kind);
        json_t *back = cel_amqp_value_to_json(&v);
        assert_int_equal(json_integer_value(back), cases[i].v);
        json_decref(back);
        json_decref(j);
    }
    empty_amqp_pool(&pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_fixtures),
        cmocka_unit_test(test_encode_fixtures),
        cmocka_unit_test(test_celery_headers),
        cmocka_unit_test(test_not_an_object),
        cmocka_unit_test(test_key_length_limit),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_table_outlives_json),
        cmocka_unit_test(test_value_kinds),
        cmocka_unit_test(test_repeated_and_odd_keys),
        cmocka_unit_test(test_strings),
        cmocka_unit_test(test_integer_boundary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
