/* test_message.c — the task-message codec against real captured messages.
 *
 * Fixtures (protocol/fixtures, see README.md there): *.verbatim.json are the
 * exact bytes a Python producer LPUSHed; *.rebuilt.json are envelopes
 * reassembled from captured headers/properties/bodies.  Hand-made envelopes
 * below cover what no capture has (malformed input, \u0000, raw UTF-8).
 * Expected Python outputs (repr, json.dumps) were produced with the
 * system python3 (celery 5.2.6 / kombu 5.2.4). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/message.h"
#include "core/util.h"

/* ---- helpers ------------------------------------------------------------ */

static char *read_fixture(const char *name, size_t *len)
{
    const char *dir = getenv("CELERIAC_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : "protocol/fixtures", name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open fixture %s (set CELERIAC_FIXTURES)", path);
    cel_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        assert_int_equal(cel_buf_append(&b, chunk, n), 0);
    fclose(f);
    assert_int_equal(cel_buf_reserve(&b, 0), 0);
    b.data[b.len] = '\0';
    *len = b.len;
    return b.data;
}

static cel_msg_status parse_fixture(const char *name, cel_message *m)
{
    size_t len;
    char *text = read_fixture(name, &len);
    char err[256];
    cel_msg_status st = cel_message_parse_redis(text, len, m, err, sizeof err);
    free(text);
    return st;
}

static cel_msg_status parse_str(const char *text, cel_message *m)
{
    char err[256];
    return cel_message_parse_redis(text, strlen(text), m, err, sizeof err);
}

/* Envelope around a raw (not base64) body with the given headers. */
static char *envelope_raw(const char *headers, const char *body_json_string)
{
    char *s = NULL;
    int n = asprintf(&s,
                     "{\"body\": %s, \"content-type\": \"application/json\", "
                     "\"content-encoding\": \"utf-8\", \"headers\": %s, "
                     "\"properties\": {\"delivery_info\": {\"exchange\": \"\", "
                     "\"routing_key\": \"celery\"}, \"delivery_tag\": \"t1\"}}",
                     body_json_string, headers);
    assert_true(n > 0);
    return s;
}

static const char plain_headers[] = "{\"task\": \"capapp.add\", \"id\": \"id-1\"}";

static char *dumps(const json_t *v)
{
    char *s = cel_json_dumps_py(v, NULL);
    assert_non_null(s);
    return s;
}

/* ---- captured messages -------------------------------------------------- */

static void test_plain_capture_fields(void **state)
{
    cel_message m;
    assert_int_equal(parse_fixture("redis-task-plain.verbatim.json", &m), CEL_MSG_OK);
    assert_string_equal(m.task, "capapp.add");
    assert_string_equal(m.id, "705c9427-f262-4066-8989-570e9cde154c");
    assert_string_equal(m.root_id, "705c9427-f262-4066-8989-570e9cde154c");
    assert_null(m.parent_id);
    assert_null(m.group);
    assert_null(m.shadow);
    assert_true(m.group_index == NULL || json_is_null(m.group_index));
    assert_string_equal(m.origin, "gen13958@vm");
    assert_string_equal(m.argsrepr, "(2, 3)");
    assert_string_equal(m.kwargsrepr, "{}");
    assert_int_equal(m.retries, 0);
    assert_false(m.has_eta);
    assert_false(m.has_expires);
    assert_true(m.time_limit < 0 && m.soft_time_limit < 0);
    assert_false(m.ignore_result);
    assert_string_equal(m.content_type, "application/json");
    assert_string_equal(m.content_encoding, "utf-8");
    assert_string_equal(m.correlation_id, m.id);
    assert_string_equal(m.reply_to, "d3ec725d-ed4f-3375-8dcf-287b4296d6f1");
    assert_string_equal(m.delivery_tag, "b7e257ac-3456-408f-96a8-e4e438a2b2ce");
    assert_string_equal(m.exchange, "");
    assert_string_equal(m.routing_key, "celery");
    assert_int_equal(m.priority, 0);
    assert_false(m.redelivered);

    assert_int_equal(json_array_size(m.args), 2);
    assert_int_equal(json_integer_value(json_array_get(m.args, 0)), 2);
    assert_int_equal(json_integer_value(json_array_get(m.args, 1)), 3);
    assert_int_equal(json_object_size(m.kwargs), 0);
    assert_non_null(m.embed);
    assert_true(json_is_null(json_object_get(m.embed, "callbacks")));
    assert_true(json_is_null(json_object_get(m.embed, "chain")));
    cel_message_clear(&m);
    assert_null(m.envelope);
    assert_null(m.body);
}

static void test_unicode_capture(void **state)
{
    cel_message m;
    assert_int_equal(parse_fixture("redis-task-unicode.verbatim.json", &m), CEL_MSG_OK);
    json_t *x = json_object_get(m.kwargs, "x");
    assert_string_equal(json_string_value(x), "h\xc3\xa9llo \xe2\x98\x83");
    assert_string_equal(m.kwargsrepr, "{'x': 'h\xc3\xa9llo \xe2\x98\x83', 'y': '!'}");
    assert_string_equal(m.argsrepr, "()");
    assert_int_equal(json_array_size(m.args), 0);
    cel_message_clear(&m);
}

static void test_surrogate_pairs_and_raw_utf8(void **state)
{
    cel_message m;
    /* Escaped in a header and in a raw body; raw UTF-8 in both too. */
    char *env = envelope_raw(
        "{\"task\": \"capapp.add\", \"id\": \"id-1\", \"argsrepr\": \"\\ud83d\\ude00\", "
        "\"kwargsrepr\": \"\xf0\x9f\x98\x80 \xc3\xa9\"}",
        "\"[[\\\"\\\\ud83d\\\\ude00\\\", \\\"\xe2\x98\x83\\\"], {\\\"k\\\": \\\"\\\\u00e9\\\"}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_OK);
    assert_string_equal(m.argsrepr, "\xf0\x9f\x98\x80");
    assert_string_equal(m.kwargsrepr, "\xf0\x9f\x98\x80 \xc3\xa9");
    assert_string_equal(json_string_value(json_array_get(m.args, 0)), "\xf0\x9f\x98\x80");
    assert_string_equal(json_string_value(json_array_get(m.args, 1)), "\xe2\x98\x83");
    assert_string_equal(json_string_value(json_object_get(m.kwargs, "k")), "\xc3\xa9");
    assert_null(m.embed);
    /* And back out as Python would write it. */
    char *s = dumps(m.args);
    assert_string_equal(s, "[\"\\ud83d\\ude00\", \"\\u2603\"]");
    free(s);
    cel_message_clear(&m);
    free(env);

    /* A lone surrogate or invalid UTF-8 is not a valid message. */
    env = envelope_raw(plain_headers, "\"[[\\\"\\\\ud83d\\\"], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_DECODE_ERROR);
    cel_message_clear(&m);
    free(env);
    env = envelope_raw("{\"task\": \"a\xff\", \"id\": \"1\"}", "\"[[], {}]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_BAD_ENVELOPE);
    cel_message_clear(&m);
    free(env);
}

static void test_nul_round_trip(void **state)
{
    cel_message m;
    char *env = envelope_raw(plain_headers,
                             "\"[[\\\"a\\\\u0000b\\\"], {\\\"k\\\\u0000\\\": 1}, null]\"");
    cel_msg_status st = parse_str(env, &m);
    free(env);
    /* jansson refuses NUL inside object keys even with JSON_ALLOW_NUL; values
     * are what matter and must survive. */
    if (st != CEL_MSG_OK) {
        cel_message_clear(&m);
        env = envelope_raw(plain_headers, "\"[[\\\"a\\\\u0000b\\\"], {}, null]\"");
        st = parse_str(env, &m);
        free(env);
    }
    assert_int_equal(st, CEL_MSG_OK);
    json_t *s = json_array_get(m.args, 0);
    assert_int_equal(json_string_length(s), 3);
    assert_memory_equal(json_string_value(s), "a\0b", 3);

    /* build -> parse keeps the NUL */
    cel_message_spec spec = {.task = "t", .args = m.args};
    char *built = cel_message_build_redis(&spec, NULL);
    assert_non_null(built);
    assert_null(strchr(built, '\xff'));
    cel_message m2;
    assert_int_equal(parse_str(built, &m2), CEL_MSG_OK);
    json_t *s2 = json_array_get(m2.args, 0);
    assert_int_equal(json_string_length(s2), 3);
    assert_memory_equal(json_string_value(s2), "a\0b", 3);
    assert_string_equal(m2.argsrepr, "('a\\x00b',)");
    char *d = dumps(m2.args);
    assert_string_equal(d, "[\"a\\u0000b\"]");
    free(d);
    free(built);
    cel_message_clear(&m2);
    cel_message_clear(&m);
}

static void test_eta_expires_captures(void **state)
{
    cel_message m;
    assert_int_equal(parse_fixture("redis-task-countdown.rebuilt.json", &m), CEL_MSG_OK);
    assert_true(m.has_eta);
    assert_false(m.has_expires);
    assert_float_equal(m.eta, 1795862619.447028, 1e-6);
    cel_message_clear(&m);

    assert_int_equal(parse_fixture("redis-task-eta.rebuilt.json", &m), CEL_MSG_OK);
    assert_true(m.has_eta);
    assert_float_equal(m.eta, 1893553445.0, 1e-6);
    cel_message_clear(&m);

    assert_int_equal(parse_fixture("redis-task-expires.rebuilt.json", &m), CEL_MSG_OK);
    assert_false(m.has_eta);
    assert_true(m.has_expires);
    assert_float_equal(m.expires, 1795862649.85507, 1e-6);
    assert_string_equal(json_string_value(json_object_get(m.properties, "expiration")), "60000");
    cel_message_clear(&m);

    /* An unparseable eta is an invalid message, not a decode error. */
    char *env = envelope_raw("{\"task\": \"t\", \"id\": \"i\", \"eta\": \"next tuesday\"}",
                             "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_INVALID);
    cel_message_clear(&m);
    free(env);
    env = envelope_raw("{\"task\": \"t\", \"id\": \"i\", \"expires\": 12}", "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_INVALID);
    cel_message_clear(&m);
    free(env);
}

static void test_timelimit(void **state)
{
    cel_message m;
    assert_int_equal(parse_fixture("redis-task-timelimit.rebuilt.json", &m), CEL_MSG_OK);
    assert_float_equal(m.time_limit, 30, 0);
    assert_float_equal(m.soft_time_limit, 20, 0);
    cel_message_clear(&m);

    char *env = envelope_raw("{\"task\": \"t\", \"id\": \"i\", \"timelimit\": [null, 2.5]}",
                             "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_OK);
    assert_true(m.time_limit < 0);
    assert_float_equal(m.soft_time_limit, 2.5, 0);
    cel_message_clear(&m);
    free(env);

    static const char *const bad[] = {"\"30\"", "[30]", "[30, 20, 10]", "[\"30\", null]", "{}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char h[128];
        snprintf(h, sizeof h, "{\"task\": \"t\", \"id\": \"i\", \"timelimit\": %s}", bad[i]);
        env = envelope_raw(h, "\"[[], {}, null]\"");
        assert_int_equal(parse_str(env, &m), CEL_MSG_INVALID);
        cel_message_clear(&m);
        free(env);
    }
}

static void test_other_option_captures(void **state)
{
    cel_message m;
    assert_int_equal(parse_fixture("redis-task-shadow.rebuilt.json", &m), CEL_MSG_OK);
    assert_string_equal(m.shadow, "capapp.add[shadowed]");
    cel_message_clear(&m);
    assert_int_equal(parse_fixture("redis-task-ignore-result.rebuilt.json", &m), CEL_MSG_OK);
    assert_true(m.ignore_result);
    cel_message_clear(&m);
    assert_int_equal(parse_fixture("redis-task-send-task.rebuilt.json", &m), CEL_MSG_OK);
    assert_string_equal(m.argsrepr, "[2, 3]");
    cel_message_clear(&m);

    assert_int_equal(parse_fixture("redis-task-retry.rebuilt.json", &m), CEL_MSG_OK);
    assert_string_equal(m.task, "capapp.flaky");
    assert_int_equal(m.retries, 1);
    assert_string_equal(m.parent_id, m.id);
    assert_true(m.has_eta);
    assert_float_equal(m.eta, 1795862767.492638, 1e-6);
    assert_string_equal(m.argsrepr, "(1,)");
    cel_message_clear(&m);
}

static void test_zlib_capture(void **state)
{
    cel_message m;
    assert_int_equal(parse_fixture("redis-task-zlib.rebuilt.json", &m), CEL_MSG_OK);
    assert_int_equal(json_array_size(m.args), 2);
    assert_int_equal(json_integer_value(json_array_get(m.args, 0)), 1);
    assert_int_equal(json_integer_value(json_array_get(m.args, 1)), 2);
    assert_non_null(m.embed);
    cel_message_clear(&m);

    /* Same header on a body that is not zlib: decode error.  Unknown
     * compression: decode error. */
    char *env = envelope_raw(
        "{\"task\": \"t\", \"id\": \"i\", \"compression\": \"application/x-gzip\"}",
        "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_DECODE_ERROR);
    cel_message_clear(&m);
    free(env);
    env = envelope_raw(
        "{\"task\": \"t\", \"id\": \"i\", \"compression\": \"application/x-bz2\"}",
        "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_DECODE_ERROR);
    cel_message_clear(&m);
    free(env);
}

static void test_priority_capture(void **state)
{
    cel_message m;
    assert_int_equal(parse_fixture("redis-task-priority5.rebuilt.json", &m), CEL_MSG_OK);
    assert_int_equal(m.priority, 5);
    assert_string_equal(m.id, "a4dfa92f-a34d-4832-a886-dbe7c1ba6027");
    cel_message_clear(&m);
}

/* ---- malformed input, stage by stage ------------------------------------ */

static void test_bad_envelopes(void **state)
{
    static const char *const bad[] = {
        "",
        "not json",
        "{\"body\": \"x\", ",
        "[1, 2, 3]",
        "\"a string\"",
        "{}",
        "{\"headers\": {\"task\": \"t\", \"id\": \"i\"}}",
        "{\"headers\": {\"task\": \"t\", \"id\": \"i\"}, \"properties\": []}",
        "{\"headers\": [\"task\"], \"properties\": {}}",
        "{\"headers\": \"task=t\", \"properties\": {}}",
        "{\"headers\": null, \"properties\": {}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cel_message m;
        char err[128] = "";
        cel_msg_status st = cel_message_parse_redis(bad[i], strlen(bad[i]), &m, err, sizeof err);
        if (st != CEL_MSG_BAD_ENVELOPE)
            fail_msg("'%s' -> %s", bad[i], cel_msg_status_str(st));
        assert_true(err[0] != '\0');
        cel_message_clear(&m);
    }
    /* Not NUL-terminated input: only `len` bytes are read. */
    const char *plain = "{\"headers\": {}, \"properties\": {}}GARBAGE";
    cel_message m;
    assert_int_equal(cel_message_parse_redis(plain, strlen(plain) - 7, &m, NULL, 0), CEL_MSG_NO_TASK);
    cel_message_clear(&m);
}

static void test_missing_task_and_id(void **state)
{
    cel_message m;
    char *env = envelope_raw("{\"id\": \"i\"}", "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_NO_TASK);
    cel_message_clear(&m);
    free(env);
    env = envelope_raw("{\"task\": 7, \"id\": \"i\"}", "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_NO_TASK);
    cel_message_clear(&m);
    free(env);
    env = envelope_raw("{\"task\": \"t\"}", "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_INVALID);
    assert_string_equal(m.task, "t");
    cel_message_clear(&m);
    free(env);
    env = envelope_raw("{\"task\": \"t\", \"id\": 5}", "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_INVALID);
    cel_message_clear(&m);
    free(env);
    env = envelope_raw("{\"task\": \"t\", \"id\": \"i\", \"retries\": \"1\"}", "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_INVALID);
    cel_message_clear(&m);
    free(env);
    /* Wrong-typed informational headers are ignored. */
    env = envelope_raw("{\"task\": \"t\", \"id\": \"i\", \"parent_id\": 3, \"origin\": [], "
                       "\"x-custom\": {\"a\": 1}}",
                       "\"[[], {}, null]\"");
    assert_int_equal(parse_str(env, &m), CEL_MSG_OK);
    assert_null(m.parent_id);
    assert_null(m.origin);
    cel_message_clear(&m);
    free(env);
}

static void test_pickle_never_decoded(void **state)
{
    cel_message m;
    /* A pickle body (here: invalid base64 and not JSON) must not be touched. */
    const char *env =
        "{\"body\": \"gASVKAAAAAAAAAB9lCiMBHRhc2uUjAJ+!!!\", \"content-type\": "
        "\"application/x-python-serialize\", \"content-encoding\": \"binary\", "
        "\"headers\": {\"task\": \"capapp.add\", \"id\": \"p1\"}, "
        "\"properties\": {\"body_encoding\": \"base64\"}}";
    assert_int_equal(parse_str(env, &m), CEL_MSG_DISALLOWED);
    assert_string_equal(m.content_type, "application/x-python-serialize");
    assert_string_equal(m.id, "p1");
    assert_null(m.body);
    assert_null(m.args);
    cel_message_clear(&m);

    /* Exact match only; missing content-type means JSON. */
    const char *env2 =
        "{\"body\": \"[[], {}, null]\", \"content-type\": \"application/json; charset=utf-8\", "
        "\"headers\": {\"task\": \"t\", \"id\": \"i\"}, \"properties\": {}}";
    assert_int_equal(parse_str(env2, &m), CEL_MSG_DISALLOWED);
    cel_message_clear(&m);
    const char *env3 =
        "{\"body\": \"[[], {}, null]\", \"headers\": {\"task\": \"t\", \"id\": \"i\"}, "
        "\"properties\": {}}";
    assert_int_equal(parse_str(env3, &m), CEL_MSG_OK);
    assert_string_equal(m.content_type, "application/json");
    assert_string_equal(m.exchange, "");
    assert_string_equal(m.routing_key, "");
    cel_message_clear(&m);
}

static void test_bad_base64_body(void **state)
{
    cel_message m;
    const char *env =
        "{\"body\": \"W1tdLCB7fV0=!\", \"content-type\": \"application/json\", "
        "\"headers\": {\"task\": \"t\", \"id\": \"i\"}, \"properties\": "
        "{\"body_encoding\": \"base64\"}}";
    char err[256];
    assert_int_equal(cel_message_parse_redis(env, strlen(env), &m, err, sizeof err),
                     CEL_MSG_DECODE_ERROR);
    assert_non_null(strstr(err, "base64"));
    cel_message_clear(&m);
    /* Valid base64 of "[[], {}]" is fine (2-element body). */
    const char *ok =
        "{\"body\": \"W1tdLCB7fV0=\", \"headers\": {\"task\": \"t\", \"id\": \"i\"}, "
        "\"properties\": {\"body_encoding\": \"base64\"}}";
    assert_int_equal(parse_str(ok, &m), CEL_MSG_OK);
    assert_null(m.embed);
    cel_message_clear(&m);
    /* Unknown body_encoding. */
    const char *rot =
        "{\"body\": \"[[], {}]\", \"headers\": {\"task\": \"t\", \"id\": \"i\"}, "
        "\"properties\": {\"body_encoding\": \"rot13\"}}";
    assert_int_equal(parse_str(rot, &m), CEL_MSG_DECODE_ERROR);
    cel_message_clear(&m);
}

static void test_body_shapes(void **state)
{
    static const struct {
        const char *body;
        cel_msg_status want;
    } cases[] = {
        {"\"[[1], {\\\"a\\\": 1}, {\\\"chain\\\": null}]\"", CEL_MSG_OK},
        {"\"[[1], {}]\"", CEL_MSG_OK},
        {"\"[[1], {}, null]\"", CEL_MSG_OK},
        {"\"{\\\"args\\\": [1]}\"", CEL_MSG_DECODE_ERROR},
        {"\"[1, 2, 3]\"", CEL_MSG_DECODE_ERROR},
        {"\"[[1], [2], null]\"", CEL_MSG_DECODE_ERROR},
        {"\"[[1], {}, 5]\"", CEL_MSG_DECODE_ERROR},
        {"\"[[1], {}, null, null]\"", CEL_MSG_DECODE_ERROR},
        {"\"[[1]]\"", CEL_MSG_DECODE_ERROR},
        {"\"[]\"", CEL_MSG_DECODE_ERROR},
        {"\"42\"", CEL_MSG_DECODE_ERROR},
        {"\"[[1], {}, null\"", CEL_MSG_DECODE_ERROR},
        {"\"\"", CEL_MSG_DECODE_ERROR},
        {"[[1], {}, null]", CEL_MSG_DECODE_ERROR}, /* body must be a string */
        {"null", CEL_MSG_DECODE_ERROR},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cel_message m;
        char *env = envelope_raw(plain_headers, cases[i].body);
        cel_msg_status st = parse_str(env, &m);
        if (st != cases[i].want)
            fail_msg("body %s -> %s", cases[i].body, cel_msg_status_str(st));
        if (st == CEL_MSG_OK) {
            assert_true(json_is_array(m.args));
            assert_true(json_is_object(m.kwargs));
        }
        cel_message_clear(&m);
        free(env);
    }
    /* No body member at all. */
    cel_message m;
    assert_int_equal(parse_str("{\"headers\": {\"task\": \"t\", \"id\": \"i\"}, \"properties\": {}}", &m),
                     CEL_MSG_DECODE_ERROR);
    cel_message_clear(&m);
}

static void test_parse_parts_amqp(void **state)
{
    /* Mirrors amqp-task-messages.jsonl: headers are a table, body raw JSON. */
    cel_message m;
    memset(&m, 0, sizeof m);
    m.headers = json_pack("{s:s, s:s, s:[nn], s:i}", "task", "capapp.add", "id", "a1", "timelimit",
                          "retries", 2);
    m.content_type = "application/json";
    m.routing_key = "celery";
    const char body[] = "[[2, 3], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, "
                        "\"chord\": null}]";
    assert_int_equal(cel_message_parse_parts(&m, body, strlen(body), false, NULL, 0), CEL_MSG_OK);
    assert_int_equal(m.retries, 2);
    assert_int_equal(json_array_size(m.args), 2);
    assert_string_equal(m.exchange, "");
    cel_message_clear(&m);

    memset(&m, 0, sizeof m);
    m.headers = json_pack("{s:s, s:s}", "task", "t", "id", "b1");
    assert_int_equal(cel_message_parse_parts(&m, "W1tdLCB7fV0=", 12, true, NULL, 0), CEL_MSG_OK);
    cel_message_clear(&m);

    memset(&m, 0, sizeof m);
    m.headers = json_pack("{s:s, s:s}", "task", "t", "id", "b1");
    m.content_type = "application/x-yaml";
    assert_int_equal(cel_message_parse_parts(&m, "- 1", 3, false, NULL, 0), CEL_MSG_DISALLOWED);
    cel_message_clear(&m);
}

/* ---- building ----------------------------------------------------------- */

static void test_build_matches_plain_capture(void **state)
{
    size_t len;
    char *want = read_fixture("redis-task-plain.verbatim.json", &len);
    json_t *args = json_pack("[ii]", 2, 3);
    cel_message_spec spec = {
        .task = "capapp.add",
        .id = "705c9427-f262-4066-8989-570e9cde154c",
        .origin = "gen13958@vm",
        .reply_to = "d3ec725d-ed4f-3375-8dcf-287b4296d6f1",
        .args = args,
        .delivery_tag = "b7e257ac-3456-408f-96a8-e4e438a2b2ce",
    };
    char *id = NULL;
    char *got = cel_message_build_redis(&spec, &id);
    assert_non_null(got);
    assert_string_equal(got, want); /* byte for byte what kombu LPUSHed */
    assert_string_equal(id, spec.id);
    free(got);
    free(id);
    free(want);
    json_decref(args);
}

static void test_build_matches_unicode_capture(void **state)
{
    size_t len;
    char *want = read_fixture("redis-task-unicode.verbatim.json", &len);
    json_t *kwargs = json_pack("{s:s, s:s}", "x", "h\xc3\xa9llo \xe2\x98\x83", "y", "!");
    cel_message_spec spec = {
        .task = "capapp.add",
        .id = "ce21e169-9b27-4100-beed-39ab465b4c57",
        .origin = "gen13958@vm",
        .reply_to = "d3ec725d-ed4f-3375-8dcf-287b4296d6f1",
        .kwargs = kwargs,
        .delivery_tag = "82b0a1ba-395a-400d-bcfc-f01af252871e",
    };
    char *got = cel_message_build_redis(&spec, NULL);
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
    free(want);
    json_decref(kwargs);
}

/* Key order of an object as a comma-joined string. */
static void keys_of(const json_t *o, char *out, size_t n)
{
    const char *k;
    json_t *v;
    out[0] = '\0';
    json_object_foreach((json_t *)o, k, v) {
        strncat(out, k, n - strlen(out) - 1);
        strncat(out, ",", n - strlen(out) - 1);
    }
}

static void test_build_defaults_and_options(void **state)
{
    double now = cel_now();
    json_t *args = json_pack("[s]", "x");
    json_t *gi = json_integer(1);
    cel_message_spec spec = {
        .task = "capapp.mul",
        .parent_id = "p-1",
        .group = "g-1",
        .group_index = gi,
        .queue = "other",
        .exchange = "celery",
        .args = args,
        .retries = 3,
        .priority = 7,
        .eta = 1893553445.25,
        .expires = now + 60,
        .time_limit = 30,
        .soft_time_limit = 2.5,
        .ignore_result = true,
    };
    char *id = NULL;
    char *text = cel_message_build_redis(&spec, &id);
    assert_non_null(text);
    assert_non_null(id);
    assert_int_equal(strlen(id), 36);
    for (const char *p = text; *p; p++) /* ASCII-only like Python */
        assert_true((unsigned char)*p < 0x80);

    cel_message m;
    assert_int_equal(parse_str(text, &m), CEL_MSG_OK);
    assert_string_equal(m.task, "capapp.mul");
    assert_string_equal(m.id, id);
    assert_string_equal(m.root_id, id);
    assert_string_equal(m.correlation_id, id);
    assert_string_equal(m.parent_id, "p-1");
    assert_string_equal(m.group, "g-1");
    assert_int_equal(json_integer_value(m.group_index), 1);
    assert_int_equal(m.retries, 3);
    assert_int_equal(m.priority, 7);
    assert_true(m.has_eta);
    assert_float_equal(m.eta, 1893553445.25, 1e-6);
    assert_true(m.has_expires);
    assert_float_equal(m.expires, now + 60, 1e-5);
    assert_float_equal(m.time_limit, 30, 0);
    assert_float_equal(m.soft_time_limit, 2.5, 0);
    assert_true(m.ignore_result);
    assert_string_equal(m.exchange, "celery");
    assert_string_equal(m.routing_key, "other");
    assert_string_equal(m.reply_to, "");
    assert_non_null(m.delivery_tag);
    assert_int_equal(strlen(m.delivery_tag), 36);
    assert_string_not_equal(m.delivery_tag, id);
    assert_non_null(m.origin);
    assert_true(strncmp(m.origin, "gen", 3) == 0 && strchr(m.origin, '@'));
    assert_string_equal(m.argsrepr, "('x',)");
    assert_string_equal(m.kwargsrepr, "{}");
    assert_string_equal(json_string_value(json_object_get(m.headers, "eta")),
                        "2030-01-02T03:04:05.250000+00:00");
    assert_string_equal(json_string_value(json_object_get(m.headers, "lang")), "py");
    assert_true(json_is_null(json_object_get(m.headers, "shadow")));
    const char *exp = json_string_value(json_object_get(m.properties, "expiration"));
    assert_non_null(exp);
    long ms = atol(exp);
    assert_true(ms > 59000 && ms <= 60000);
    char *tl = dumps(json_object_get(m.headers, "timelimit"));
    assert_string_equal(tl, "[30, 2.5]");
    free(tl);
    assert_int_equal(json_integer_value(json_object_get(m.properties, "delivery_mode")), 2);
    assert_string_equal(json_string_value(json_object_get(m.properties, "body_encoding")), "base64");
    assert_non_null(m.embed);
    assert_int_equal(json_object_size(m.embed), 4);

    /* Same key order as the captured expires=60 message (kombu order). */
    char keys[512];
    keys_of(m.headers, keys, sizeof keys);
    assert_string_equal(keys, "lang,task,id,shadow,eta,expires,group,group_index,retries,timelimit,"
                              "root_id,parent_id,argsrepr,kwargsrepr,origin,ignore_result,");
    keys_of(m.properties, keys, sizeof keys);
    assert_string_equal(keys, "correlation_id,reply_to,delivery_mode,expiration,delivery_info,"
                              "priority,body_encoding,delivery_tag,");
    keys_of(m.envelope, keys, sizeof keys);
    assert_string_equal(keys, "body,content-encoding,content-type,headers,properties,");
    cel_message_clear(&m);
    free(text);
    free(id);
    json_decref(args);
    json_decref(gi);

    /* Minimal spec: empty args/kwargs, default queue, fresh ids each time. */
    cel_message_spec min = {.task = "t"};
    char *a = cel_message_build_redis(&min, NULL), *b = cel_message_build_redis(&min, NULL);
    assert_non_null(a);
    assert_non_null(b);
    assert_string_not_equal(a, b);
    assert_int_equal(parse_str(a, &m), CEL_MSG_OK);
    assert_string_equal(m.routing_key, "celery");
    assert_string_equal(m.argsrepr, "()");
    assert_null(json_object_get(m.properties, "expiration"));
    char *tl2 = dumps(json_object_get(m.headers, "timelimit"));
    assert_string_equal(tl2, "[null, null]");
    free(tl2);
    cel_message_clear(&m);
    free(a);
    free(b);

    /* Invalid specs. */
    json_t *notarr = json_object();
    cel_message_spec bad1 = {.task = NULL};
    cel_message_spec bad2 = {.task = "t", .args = notarr};
    cel_message_spec bad3 = {.task = "bad\xff utf8"};
    assert_null(cel_message_build_redis(&bad1, NULL));
    assert_null(cel_message_build_redis(&bad2, NULL));
    char *idx = (char *)"sentinel";
    assert_null(cel_message_build_redis(&bad3, &idx));
    assert_null(idx);
    json_decref(notarr);
}

static void test_build_retry_like_capture(void **state)
{
    /* The worker's retry re-publish: same id, retries+1, parent_id = id. */
    cel_message orig;
    assert_int_equal(parse_fixture("redis-task-retry.rebuilt.json", &orig), CEL_MSG_OK);
    cel_message_spec spec = {
        .task = orig.task,
        .id = orig.id,
        .root_id = orig.root_id,
        .parent_id = orig.id,
        .reply_to = orig.reply_to,
        .queue = orig.routing_key,
        .args = orig.args,
        .kwargs = orig.kwargs,
        .embed = orig.embed,
        .retries = orig.retries,
        .eta = orig.eta,
        .origin = orig.origin,
    };
    char *text = cel_message_build_redis(&spec, NULL);
    assert_non_null(text);
    cel_message m;
    assert_int_equal(parse_str(text, &m), CEL_MSG_OK);
    const char *same[] = {"lang", "task", "id", "shadow", "eta", "expires", "group", "group_index",
                          "retries", "timelimit", "root_id", "parent_id", "argsrepr",
                          "kwargsrepr", "origin", "ignore_result"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        if (!json_equal(json_object_get(m.headers, same[i]), json_object_get(orig.headers, same[i])))
            fail_msg("header %s differs from the capture", same[i]);
    }
    assert_true(json_equal(m.body, orig.body));
    cel_message_clear(&m);
    cel_message_clear(&orig);
    free(text);
}

static void test_redelivered_envelope(void **state)
{
    size_t len;
    char *orig = read_fixture("redis-task-plain.verbatim.json", &len);
    char *re = cel_message_redelivered_envelope(orig, len);
    assert_non_null(re);

    /* Exactly kombu's restore: two keys appended, everything else intact. */
    cel_buf want = {0};
    const char *h_end = "\"ignore_result\": false}";
    const char *d_end = "\"routing_key\": \"celery\"}";
    const char *p = strstr(orig, h_end), *q = strstr(orig, d_end);
    assert_non_null(p);
    assert_non_null(q);
    size_t hcut = (size_t)(p - orig) + strlen(h_end) - 1, dcut = (size_t)(q - orig) + strlen(d_end) - 1;
    assert_true(hcut < dcut);
    cel_buf_append(&want, orig, hcut);
    cel_buf_append(&want, ", \"redelivered\": true", 21);
    cel_buf_append(&want, orig + hcut, dcut - hcut);
    cel_buf_append(&want, ", \"redelivered\": true", 21);
    cel_buf_append(&want, orig + dcut, len - dcut);
    assert_string_equal(re, want.data);
    cel_buf_free(&want);

    cel_message m;
    assert_int_equal(parse_str(re, &m), CEL_MSG_OK);
    assert_true(m.redelivered);
    assert_true(json_is_true(json_object_get(m.headers, "redelivered")));
    cel_message_clear(&m);

    /* Idempotent, and refuses garbage. */
    char *re2 = cel_message_redelivered_envelope(re, strlen(re));
    assert_string_equal(re2, re);
    free(re2);
    assert_null(cel_message_redelivered_envelope("nope", 4));
    const char *bad_h = "{\"headers\": 1, \"properties\": {}}";
    assert_null(cel_message_redelivered_envelope(bad_h, strlen(bad_h)));
    const char *bare = "{\"headers\": {}, \"properties\": {}}";
    char *mk = cel_message_redelivered_envelope(bare, strlen(bare));
    assert_string_equal(mk, "{\"headers\": {\"redelivered\": true}, \"properties\": "
                            "{\"delivery_info\": {\"redelivered\": true}}}");
    free(mk);
    free(re);
    free(orig);
}

/* ---- Python-compatible text --------------------------------------------- */

static void test_json_dumps_py(void **state)
{
    /* Expected strings: json.dumps(...) in python3. */
    static const struct {
        double v;
        const char *want;
    } reals[] = {
        {0.1, "0.1"},          {1.0, "1.0"},         {1e16, "1e+16"},
        {1.5e-5, "1.5e-05"},   {123456789.125, "123456789.125"},
        {-0.0, "-0.0"},        {1e22, "1e+22"},      {0.0001, "0.0001"},
        {1.0 / 3, "0.3333333333333333"},             {2.5e-300, "2.5e-300"},
        {9999999999999998.0, "9999999999999998.0"},  {1e15 + 0.5, "1000000000000000.5"},
        /* 15, 16 and 17 significant digits, subnormals and the largest
         * double: the three tries of py_float_repr each win somewhere. */
        {0.1 + 0.2, "0.30000000000000004"},          {5e-324, "5e-324"},
        {1.5e-323, "1.5e-323"},                      {123456789012345.6, "123456789012345.6"},
        {1764370000.1234567, "1764370000.1234567"},  {1.7976931348623157e308, "1.7976931348623157e+308"},
    };
    for (size_t i = 0; i < sizeof reals / sizeof *reals; i++) {
        json_t *r = json_real(reals[i].v);
        char *s = dumps(r);
        if (strcmp(s, reals[i].want) != 0)
            fail_msg("%.17g -> %s, want %s", reals[i].v, s, reals[i].want);
        free(s);
        json_decref(r);
    }
    json_t *v = json_pack("[s, s%, s, s, I, b, n, {}, []]", "h\xc3\xa9llo \xe2\x98\x83", "\x7f\0\x1f",
                          (size_t)3, "\xf0\x9f\x98\x80", "a/b\"\\\b\f\n\r\t", (json_int_t)-9007199254740993LL,
                          1);
    assert_non_null(v);
    char *s = dumps(v);
    assert_string_equal(s, "[\"h\\u00e9llo \\u2603\", \"\\u007f\\u0000\\u001f\", \"\\ud83d\\ude00\", "
                           "\"a/b\\\"\\\\\\b\\f\\n\\r\\t\", -9007199254740993, true, null, {}, []]");
    free(s);
    json_decref(v);
    v = json_pack("{s:{s:[i]}, s:s}", "a", "b", 1, "c\xc3\xa9", "d");
    s = dumps(v);
    assert_string_equal(s, "{\"a\": {\"b\": [1]}, \"c\\u00e9\": \"d\"}");
    free(s);
    json_decref(v);
    assert_null(cel_json_dumps_py(NULL, NULL));
}

static void test_pyrepr(void **state)
{
    /* repr(["it's", 'say "hi"', 'both \' "', "\x00\n\t\x7f\xa0é☃😀", None, True, 1.5, {"k": [1]}]) */
    json_t *v = json_pack("[s, s, s, s%, n, b, f, {s:[i]}]", "it's", "say \"hi\"", "both ' \"",
                          "\0\n\t\x7f\xc2\xa0\xc3\xa9\xe2\x98\x83\xf0\x9f\x98\x80", (size_t)15, 1,
                          1.5, "k", 1);
    assert_non_null(v);
    char *s = cel_pyrepr(v);
    assert_string_equal(s, "[\"it's\", 'say \"hi\"', 'both \\' \"', "
                           "'\\x00\\n\\t\\x7f\\xa0\xc3\xa9\xe2\x98\x83\xf0\x9f\x98\x80', None, True, "
                           "1.5, {'k': [1]}]");
    free(s);
    s = cel_pyrepr_args(v);
    assert_true(s[0] == '(' && s[strlen(s) - 1] == ')');
    free(s);
    json_decref(v);

    json_t *one = json_pack("[i]", 1), *none = json_array(), *two = json_pack("[i, f]", 2, 3.0);
    s = cel_pyrepr_args(one);
    assert_string_equal(s, "(1,)");
    free(s);
    s = cel_pyrepr_args(none);
    assert_string_equal(s, "()");
    free(s);
    s = cel_pyrepr_args(two);
    assert_string_equal(s, "(2, 3.0)");
    free(s);
    s = cel_pyrepr(two);
    assert_string_equal(s, "[2, 3.0]");
    free(s);
    json_decref(one);
    json_decref(none);
    json_decref(two);

    /* Long values are cut near Celery's 1024-character limit. */
    json_t *big = json_array();
    for (int i = 0; i < 2000; i++)
        json_array_append_new(big, json_integer(i));
    s = cel_pyrepr_args(big);
    assert_true(strlen(s) <= 1024);
    assert_string_equal(s + strlen(s) - 3, "...");
    free(s);
    json_decref(big);
}

static void test_status_names(void **state)
{
    for (int st = CEL_MSG_OK; st <= CEL_MSG_DECODE_ERROR; st++)
        assert_non_null(cel_msg_status_str((cel_msg_status)st));
    assert_string_equal(cel_msg_status_str(CEL_MSG_OK), "ok");
}

/* Tests that look at the envelope's tree (properties, every header) need the
 * jansson parse; the fast scan keeps only the fields the worker reads, and
 * test_fastscan.c proves the two agree on those. */
static int jansson_only(void **state)
{
    (void)state;
    cel_message_set_fast_scan(false);
    return 0;
}

static int fast_again(void **state)
{
    (void)state;
    cel_message_set_fast_scan(true);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_capture_fields),
        cmocka_unit_test(test_unicode_capture),
        cmocka_unit_test(test_surrogate_pairs_and_raw_utf8),
        cmocka_unit_test(test_nul_round_trip),
        cmocka_unit_test_setup_teardown(test_eta_expires_captures, jansson_only, fast_again),
        cmocka_unit_test(test_timelimit),
        cmocka_unit_test(test_other_option_captures),
        cmocka_unit_test(test_zlib_capture),
        cmocka_unit_test(test_priority_capture),
        cmocka_unit_test(test_bad_envelopes),
        cmocka_unit_test(test_missing_task_and_id),
        cmocka_unit_test(test_pickle_never_decoded),
        cmocka_unit_test(test_bad_base64_body),
        cmocka_unit_test(test_body_shapes),
        cmocka_unit_test(test_parse_parts_amqp),
        cmocka_unit_test(test_build_matches_plain_capture),
        cmocka_unit_test(test_build_matches_unicode_capture),
        cmocka_unit_test_setup_teardown(test_build_defaults_and_options, jansson_only, fast_again),
        cmocka_unit_test_setup_teardown(test_build_retry_like_capture, jansson_only, fast_again),
        cmocka_unit_test_setup_teardown(test_redelivered_envelope, jansson_only, fast_again),
        cmocka_unit_test(test_json_dumps_py),
        cmocka_unit_test(test_pyrepr),
        cmocka_unit_test(test_status_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
