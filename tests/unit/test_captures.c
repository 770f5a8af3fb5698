/* test_captures.c — replays every message the real Python producer wrote
 * (protocol/captures/, made by protocol/capture.py) through the codec and
 * checks what it decodes against what the producer meant: the task name, id
 * and options in the headers, and the body it encoded. */
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

static int check_one(const char *path)
{
    json_error_t jerr;
    json_t *rec = json_load_file(path, JSON_ALLOW_NUL, &jerr);
    if (!rec)
        fail_msg("%s: %s", path, jerr.text);
    json_t *envtext = json_object_get(rec, "envelope");
    json_t *body = json_object_get(rec, "body");
    assert_true(json_is_string(envtext));
    json_t *env = json_loads(json_string_value(envtext), JSON_ALLOW_NUL, &jerr);
    assert_non_null(env);
    json_t *h = json_object_get(env, "headers"), *p = json_object_get(env, "properties");

    cel_message m;
    char err[256];
    cel_msg_status st = cel_message_parse_redis(json_string_value(envtext),
                                                json_string_length(envtext), &m, err, sizeof err);
    if (st != CEL_MSG_OK)
        fail_msg("%s: %s (%s)", path, cel_msg_status_str(st), err);
    assert_string_equal(m.task, json_string_value(json_object_get(h, "task")));
    assert_string_equal(m.id, json_string_value(json_object_get(h, "id")));
    assert_string_equal(m.delivery_tag, json_string_value(json_object_get(p, "delivery_tag")));
    assert_int_equal(m.retries, json_integer_value(json_object_get(h, "retries")));
    assert_true(json_equal(m.args, json_array_get(body, 0)));
    assert_true(json_equal(m.kwargs, json_array_get(body, 1)));
    json_t *embed = json_array_get(body, 2);
    assert_true(m.embed ? json_equal(m.embed, embed) : json_is_null(embed));
    assert_int_equal(m.priority, json_integer_value(json_object_get(p, "priority")));
    assert_int_equal(m.has_eta, json_is_string(json_object_get(h, "eta")));
    assert_int_equal(m.has_expires, json_is_string(json_object_get(h, "expires")));
    assert_int_equal(m.ignore_result, json_is_true(json_object_get(h, "ignore_result")));
    json_t *tl = json_object_get(h, "timelimit");
    if (json_is_number(json_array_get(tl, 0)))
        assert_true(m.time_limit == json_number_value(json_array_get(tl, 0)));
    else
        assert_true(m.time_limit < 0);
    assert_string_equal(m.routing_key, json_string_value(json_object_get(rec, "queue")));
    cel_message_clear(&m);
    json_decref(env);
    json_decref(rec);
    return 1;
}

static void test_every_capture_decodes(void **state)
{
    (void)state;
    const char *dir = getenv("CELERIAC_CAPTURES");
    assert_non_null(dir);
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        n += check_one(path);
    }
    closedir(d);
    /* protocol/capture.py writes 17; a missing directory must not pass. */
    assert_true(n >= 17);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_capture_decodes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
