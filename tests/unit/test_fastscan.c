/* test_fastscan.c — the fast envelope scan against the jansson parser.
 *
 * The worker parses Redis envelopes with a hand-written scanner that gives up
 * (and lets jansson decide) on anything unusual.  Its one obligation is to
 * agree with jansson wherever it does not give up.  This test runs both
 * parsers on every captured message, on hand-made edge cases, and on
 * thousands of mutations of real envelopes (every truncation, and a set of
 * single-byte replacements at every position), and demands identical status,
 * error text and fields for each. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/message.h"

static int fast_ok; /* inputs both parsers accepted */

static void same_str(const char *a, const char *b, const char *what, const char *input)
{
    if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
        fail_msg("%s differs: fast '%s' vs jansson '%s' on: %s", what, a ? a : "(null)",
                 b ? b : "(null)", input);
}

static bool null_or_jnull(const json_t *v) { return !v || json_is_null(v); }

static void same_json(const json_t *a, const json_t *b, const char *what, const char *input)
{
    if (null_or_jnull(a) && null_or_jnull(b))
        return;
    if (!a || !b || !json_equal((json_t *)a, (json_t *)b))
        fail_msg("%s differs on: %s", what, input);
}

/* Parses `text` with both parsers, in both modes, and compares. */
static void compare(const char *text, size_t len)
{
    char *input = strndup(text, len);
    assert_non_null(input);
    for (int full = 0; full < 2; full++) {
        cel_message a, b;
        char ea[256], eb[256];
        cel_message_set_fast_scan(true);
        cel_msg_status sa = full ? cel_message_parse_redis(text, len, &a, ea, sizeof ea)
                                 : cel_message_parse_redis_head(text, len, &a, ea, sizeof ea);
        cel_message_set_fast_scan(false);
        cel_msg_status sb = full ? cel_message_parse_redis(text, len, &b, eb, sizeof eb)
                                 : cel_message_parse_redis_head(text, len, &b, eb, sizeof eb);
        cel_message_set_fast_scan(true);
        if (sa != sb)
            fail_msg("status differs: fast %s vs jansson %s (%s) on: %s",
                     cel_msg_status_str(sa), cel_msg_status_str(sb), eb, input);
        if (strcmp(ea, eb) != 0)
            fail_msg("error differs: '%s' vs '%s' on: %s", ea, eb, input);
        if (sa == CEL_MSG_OK) {
            fast_ok += a.raw != NULL;
            same_str(a.task, b.task, "task", input);
            same_str(a.id, b.id, "id", input);
            same_str(a.root_id, b.root_id, "root_id", input);
            same_str(a.parent_id, b.parent_id, "parent_id", input);
            same_str(a.group, b.group, "group", input);
            same_str(a.shadow, b.shadow, "shadow", input);
            same_str(a.origin, b.origin, "origin", input);
            same_str(a.argsrepr, b.argsrepr, "argsrepr", input);
            same_str(a.kwargsrepr, b.kwargsrepr, "kwargsrepr", input);
            same_str(a.content_type, b.content_type, "content_type", input);
            same_str(a.content_encoding, b.content_encoding, "content_encoding", input);
            same_str(a.correlation_id, b.correlation_id, "correlation_id", input);
            same_str(a.reply_to, b.reply_to, "reply_to", input);
            same_str(a.delivery_tag, b.delivery_tag, "delivery_tag", input);
            same_str(a.exchange, b.exchange, "exchange", input);
            same_str(a.routing_key, b.routing_key, "routing_key", input);
            same_json(a.group_index, b.group_index, "group_index", input);
            same_json(a.args, b.args, "args", input);
            same_json(a.kwargs, b.kwargs, "kwargs", input);
            same_json(a.embed, b.embed, "embed", input);
            if (a.priority != b.priority || a.redelivered != b.redelivered ||
                a.retries != b.retries || a.has_eta != b.has_eta ||
                a.has_expires != b.has_expires || a.ignore_result != b.ignore_result ||
                (a.has_eta && a.eta != b.eta) || (a.has_expires && a.expires != b.expires) ||
                a.time_limit != b.time_limit || a.soft_time_limit != b.soft_time_limit)
                fail_msg("a scalar field differs on: %s", input);
            json_t *ha = cel_message_headers(&a), *hb = cel_message_headers(&b);
            same_json(ha, hb, "headers", input);
            json_decref(ha);
            json_decref(hb);
        }
        cel_message_clear(&a);
        cel_message_clear(&b);
    }
    free(input);
}

static void compare_str(const char *s) { compare(s, strlen(s)); }

/* Every truncation and, at every position, a set of replacement bytes. */
static void mutate(const char *env, size_t len)
{
    static const char repl[] = {'"', '\\', '{', '}', '[', ']', ',', ':', ' ', '0', '9',
                                '-', '.', 'e', 'n', 't', 'a', '\x01', '\x7f', '\xc3'};
    char *buf = malloc(len);
    assert_non_null(buf);
    for (size_t cut = 0; cut < len; cut++)
        compare(env, cut);
    for (size_t i = 0; i < len; i++) {
        memcpy(buf, env, len);
        for (size_t r = 0; r < sizeof repl; r++) {
            buf[i] = repl[r];
            compare(buf, len);
        }
    }
    free(buf);
}

/* Captures whose mutations are tried: plain, unicode, time limits and a
 * group member cover every kept field kind; all 17 would take minutes under
 * the sanitizers for little more. */
static const char *const MUTATED[] = {"apply-async.json", "unicode.json", "time-limits.json",
                                      "group.json", "eta-expires.json", NULL};

static bool mutated(const char *name)
{
    for (int i = 0; MUTATED[i]; i++)
        if (strcmp(name, MUTATED[i]) == 0)
            return true;
    return false;
}

static int for_each_envelope(const char *dir, bool captures, void (*fn)(const char *, size_t))
{
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".json") != 0 ||
            (!captures && strncmp(e->d_name, "redis-", 6) != 0) ||
            (fn == mutate && !mutated(e->d_name)))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        json_error_t jerr;
        json_t *rec = json_load_file(path, JSON_ALLOW_NUL, &jerr);
        if (!rec)
            fail_msg("%s: %s", path, jerr.text);
        if (captures) {
            json_t *t = json_object_get(rec, "envelope");
            fn(json_string_value(t), json_string_length(t));
        } else {
            /* A fixture is the envelope itself: compare its exact bytes. */
            FILE *f = fopen(path, "rb");
            assert_non_null(f);
            char *text = malloc(1 << 20);
            assert_non_null(text);
            size_t got = fread(text, 1, 1 << 20, f);
            fclose(f);
            while (got && (text[got - 1] == '\n' || text[got - 1] == ' '))
                got--;
            fn(text, got);
            free(text);
        }
        json_decref(rec);
        n++;
    }
    closedir(d);
    return n;
}

static void test_captures_and_fixtures_agree(void **state)
{
    (void)state;
    fast_ok = 0;
    int n = for_each_envelope(getenv("CELERIAC_CAPTURES"), true, compare);
    n += for_each_envelope(getenv("CELERIAC_FIXTURES"), false, compare);
    assert_true(n >= 27);
    /* The fast scan must actually take the common case. */
    assert_true(fast_ok >= 2 * 20);
}

static void test_mutations_agree(void **state)
{
    (void)state;
    fast_ok = 0;
    int n = for_each_envelope(getenv("CELERIAC_CAPTURES"), true, mutate);
    assert_int_equal(n, 5);
    assert_true(fast_ok > 1000);
}

#define HEAD "{\"body\": \"W1tdLCB7fSwgbnVsbF0=\", \"content-type\": \"application/json\", "
#define PROPS                                                                                  \
    "\"properties\": {\"delivery_tag\": \"t1\", \"body_encoding\": \"base64\", "             \
    "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}}"
#define HDRS(x) "\"headers\": {\"task\": \"a.b\", \"id\": \"i1\"" x "}, "

static void test_edge_cases_agree(void **state)
{
    (void)state;
    static const char *const cases[] = {
        HEAD HDRS("") PROPS "}",
        HEAD HDRS(", \"argsrepr\": \"('\\u00e9\\ud83d\\ude00\\n\\t\\\"\\/',)\"") PROPS "}",
        HEAD HDRS(", \"argsrepr\": \"\\ud83d\"") PROPS "}",
        HEAD HDRS(", \"argsrepr\": \"\\ude00\"") PROPS "}",
        HEAD HDRS(", \"argsrepr\": \"a\\u0000b\"") PROPS "}",
        HEAD HDRS(", \"task\": \"dup\"") PROPS "}",
        HEAD HDRS(", \"t\\u0061sk\": \"escaped-key\"") PROPS "}",
        HEAD HDRS(", \"retries\": 3") PROPS "}",
        HEAD HDRS(", \"retries\": 3.0") PROPS "}",
        HEAD HDRS(", \"retries\": null") PROPS "}",
        HEAD HDRS(", \"retries\": \"3\"") PROPS "}",
        HEAD HDRS(", \"retries\": 99999999999999999999") PROPS "}",
        HEAD HDRS(", \"retries\": 9999999999") PROPS "}",
        HEAD HDRS(", \"retries\": -1e400") PROPS "}",
        HEAD HDRS(", \"group_index\": 4, \"group\": \"g\"") PROPS "}",
        HEAD HDRS(", \"group_index\": \"4\"") PROPS "}",
        HEAD HDRS(", \"timelimit\": [10, 5.5]") PROPS "}",
        HEAD HDRS(", \"timelimit\": [0, null]") PROPS "}",
        HEAD HDRS(", \"timelimit\": [1, 2, 3]") PROPS "}",
        HEAD HDRS(", \"timelimit\": null") PROPS "}",
        HEAD HDRS(", \"timelimit\": [\"1\", 2]") PROPS "}",
        HEAD HDRS(", \"timelimit\": {}") PROPS "}",
        HEAD HDRS(", \"eta\": \"2026-11-28T12:00:00.123456+00:00\"") PROPS "}",
        HEAD HDRS(", \"expires\": \"not a date\"") PROPS "}",
        HEAD HDRS(", \"eta\": 5") PROPS "}",
        HEAD HDRS(", \"compression\": null") PROPS "}",
        HEAD HDRS(", \"compression\": \"application/x-gzip\"") PROPS "}",
        HEAD HDRS(", \"ignore_result\": true, \"redelivered\": true") PROPS "}",
        HEAD HDRS(", \"ignore_result\": 1") PROPS "}",
        HEAD HDRS(", \"nested\": {\"a\": [1, {\"b\": [true, false, null, -0.5e-3]}]}") PROPS "}",
        HEAD HDRS(", \"root_id\": 5, \"origin\": [\"x\"], \"shadow\": null") PROPS "}",
        "{\"body\": \"W1tdLCB7fSwgbnVsbF0=\", \"content-type\": \"application/x-python-serialize\", " HDRS("") PROPS "}",
        "{\"body\": \"W1tdLCB7fSwgbnVsbF0=\", \"content-type\": null, " HDRS("") PROPS "}",
        "{\"body\": \"W1tdLCB7fSwgbnVsbF0=\", \"content-type\": 7, " HDRS("") PROPS "}",
        "{\"body\": \"[[1], {\\\"k\\\": \\\"v\\\"}]\", " HDRS("") "\"properties\": {}}",
        "{\"body\": \"[[1], {}]\", " HDRS("") "\"properties\": {\"body_encoding\": null, \"priority\": 9, \"delivery_info\": 5}}",
        "{\"body\": \"[[1], {}]\", " HDRS("") "\"properties\": {\"body_encoding\": \"hex\"}}",
        "{\"body\": \"[[1], {}]\", " HDRS("") "\"properties\": {\"priority\": 9.5, \"delivery_info\": {\"redelivered\": true}}}",
        "{\"body\": \"!!!\", " HDRS("") PROPS "}",
        "{\"body\": \"e30=\", " HDRS("") PROPS "}",
        "{\"body\": 5, " HDRS("") PROPS "}",
        "{" HDRS("") PROPS "}",
        "{\"headers\": [], " PROPS "}",
        "{\"headers\": {\"id\": \"x\"}, " PROPS "}",
        "{\"headers\": {\"task\": \"a\"}, " PROPS "}",
        "{\"headers\": {}, \"properties\": null}",
        " \n\t{\"body\" : \"W1tdLCB7fSwgbnVsbF0=\" ,\"headers\":{\"task\":\"a\",\"id\":\"b\"},\"properties\":{\"body_encoding\":\"base64\"}} \n",
        HEAD HDRS("") PROPS "} x",
        HEAD HDRS("") PROPS "}}",
        "[1, 2]",
        "\"just a string\"",
        "",
        "{}",
        "{\"a\": 01}",
        "{\"a\": -}",
        "{\"a\": 1.}",
        "{\"a\": tru}",
        "{\"a\": \"\\x\"}",
        "{\"a\": \"\\u12G4\"}",
        "{\"a\" 1}",
        "{\"a\": 1,}",
        "{,}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        compare_str(cases[i]);
    /* Deep nesting in a field nobody reads: beyond the scanner's depth it
     * gives up, and jansson decides. */
    char deep[4200];
    size_t k = 0;
    k += (size_t)snprintf(deep + k, sizeof deep - k, "%s",
                          HEAD "\"headers\": {\"task\": \"a\", \"id\": \"b\", \"x\": ");
    for (int i = 0; i < 1000; i++)
        deep[k++] = '[';
    for (int i = 0; i < 1000; i++)
        deep[k++] = ']';
    k += (size_t)snprintf(deep + k, sizeof deep - k, "%s", "}, " PROPS "}");
    compare(deep, k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_captures_and_fixtures_agree),
        cmocka_unit_test(test_edge_cases_agree),
        cmocka_unit_test(test_mutations_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
