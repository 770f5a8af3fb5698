/* test_exec.c — cel_task_retry_ex through cel_exec_run, without a broker.
 *
 * Each case registers one C task that calls cel_task_retry_ex with fixed
 * options, runs it on a message with a given `retries` count, and reads the
 * outcome and the record the pool process would hand the parent: the
 * values Celery's Task.retry and tracer produce (exception recorded on
 * RETRY, re-raised past the limit, "Retry at <datetime>" for an eta). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/message.h"
#include "worker/exec.h"
#include "worker/registry.h"

static cel_retry_options g_opts; /* what the task passes to cel_task_retry_ex */

static int retrying(cel_task *t, const json_t *args, const json_t *kwargs)
{
    return cel_task_retry_ex(t, &g_opts);
}

/* Runs task "t.retry" on a message at `retries`; returns the parsed record
 * (NULL when none) and fills `out`. */
static json_t *run(int retries, cel_outcome *out)
{
    cel_registry *reg = cel_registry_new();
    assert_non_null(reg);
    assert_int_equal(cel_register(reg, "t.retry", retrying, NULL), 0);
    json_t *args = json_array();
    cel_message_spec spec = {.task = "t.retry", .id = "00000000-0000-4000-8000-000000000001",
                             .args = args, .retries = retries};
    char *raw = cel_message_build_redis(&spec, NULL);
    assert_non_null(raw);
    cel_message m;
    char err[256];
    assert_int_equal(cel_message_parse_redis(raw, strlen(raw), &m, err, sizeof err), CEL_MSG_OK);
    cel_exec_env env = {.reg = reg, .hostname = "celeriac@test", .store_results = true};
    cel_exec_run(&env, &m, NULL, NULL, NULL, out);
    json_t *meta = out->meta ? json_loadb(out->meta, out->meta_len, 0, NULL) : NULL;
    cel_message_clear(&m);
    free(raw);
    json_decref(args);
    cel_registry_free(reg);
    return meta;
}

static const char *last_line(const json_t *meta, char *buf, size_t size)
{
    const char *tb = json_string_value(json_object_get(meta, "traceback"));
    assert_non_null(tb);
    size_t n = strlen(tb);
    while (n && tb[n - 1] == '\n')
        n--;
    size_t start = n;
    while (start && tb[start - 1] != '\n')
        start--;
    snprintf(buf, size, "%.*s", (int)(n - start), tb + start);
    return buf;
}

static void test_retry_records_the_exception(void **state)
{
    g_opts = (cel_retry_options){.countdown = 2, .exc_type = "ValueError",
                                 .exc_message = "busy"};
    cel_outcome o;
    json_t *meta = run(0, &o);
    assert_int_equal(o.status, CEL_OUT_RETRY);
    assert_true(o.countdown == 2 && o.eta == 0);
    assert_string_equal(json_string_value(json_object_get(meta, "status")), "RETRY");
    const json_t *r = json_object_get(meta, "result");
    assert_string_equal(json_string_value(json_object_get(r, "exc_type")), "ValueError");
    assert_string_equal(json_string_value(json_object_get(r, "exc_module")), "builtins");
    assert_string_equal(json_string_value(json_array_get(json_object_get(r, "exc_message"), 0)),
                        "busy");
    char line[256];
    assert_string_equal(last_line(meta, line, sizeof line),
                        "celery.exceptions.Retry: Retry in 2s: ValueError('busy')");
    json_decref(meta);
    cel_outcome_clear(&o);
}

static void test_past_the_limit_raises_the_exception(void **state)
{
    json_t *args = json_pack("[si]", "gone", 7);
    g_opts = (cel_retry_options){.countdown = 1, .max_retries = 2, .exc_module = "proj.errors",
                                 .exc_type = "Gone", .exc_args = args};
    cel_outcome o;
    json_t *meta = run(1, &o); /* retries 1 < 2: still a retry */
    assert_int_equal(o.status, CEL_OUT_RETRY);
    json_decref(meta);
    cel_outcome_clear(&o);
    meta = run(2, &o);
    assert_int_equal(o.status, CEL_OUT_FAILURE);
    const json_t *r = json_object_get(meta, "result");
    assert_string_equal(json_string_value(json_object_get(r, "exc_type")), "Gone");
    assert_string_equal(json_string_value(json_object_get(r, "exc_module")), "proj.errors");
    assert_true(json_equal(json_object_get(r, "exc_message"), args));
    json_decref(meta);
    cel_outcome_clear(&o);
    json_decref(args);
}

/* Runs the task at `retries` and checks that it failed with `exc_type`. */
static void expect_failure(int retries, const char *exc_type)
{
    cel_outcome o;
    json_t *meta = run(retries, &o);
    assert_int_equal(o.status, CEL_OUT_FAILURE);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(meta, "result"), "exc_type")),
        exc_type);
    json_decref(meta);
    cel_outcome_clear(&o);
}

static void test_no_exception_is_max_retries_exceeded(void **state)
{
    g_opts = (cel_retry_options){.countdown = 1};
    expect_failure(3, "MaxRetriesExceededError"); /* the task's default limit, 3 */
}

static void test_retries_none_fails_at_once(void **state)
{
    g_opts = (cel_retry_options){.max_retries = CEL_RETRIES_NONE, .exc_type = "KeyError",
                                 .exc_message = "k"};
    expect_failure(0, "KeyError");
}

static void test_eta_is_absolute_and_printed_as_python(void **state)
{
    /* 2026-01-02 03:00:00.5 UTC, and a whole second. */
    static const double etas[] = {1767322800.5, 1767322800.0};
    static const char *const lines[] = {
        "celery.exceptions.Retry: Retry at 2026-01-02 03:00:00.500000+00:00",
        "celery.exceptions.Retry: Retry at 2026-01-02 03:00:00+00:00"};
    for (size_t i = 0; i < 2; i++) {
        g_opts = (cel_retry_options){.eta = etas[i], .countdown = 99};
        cel_outcome o;
        json_t *meta = run(0, &o);
        assert_int_equal(o.status, CEL_OUT_RETRY);
        assert_true(o.eta == etas[i]);
        assert_true(json_is_null(json_object_get(meta, "result")));
        char line[256];
        assert_string_equal(last_line(meta, line, sizeof line), lines[i]);
        json_decref(meta);
        cel_outcome_clear(&o);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_records_the_exception),
        cmocka_unit_test(test_past_the_limit_raises_the_exception),
        cmocka_unit_test(test_no_exception_is_max_retries_exceeded),
        cmocka_unit_test(test_retries_none_fails_at_once),
        cmocka_unit_test(test_eta_is_absolute_and_printed_as_python),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
