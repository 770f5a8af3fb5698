/* examples.c — the `examples` task module (libceleriac-examples.so): the
 * tasks the README, the interop suite and the benchmarks use.  Each mirrors a
 * Python task of the same name in examples/python/app.py, so a differential
 * test can compare the two workers result for result.
 */
#include <celeriac/task.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Binds args/kwargs to the named parameters as Python binds a call to
 * `def fn(p0, p1, ...)`: the same TypeErrors for too many positional
 * arguments, unexpected or repeated keywords and missing arguments.  Returns
 * 0 with out[i] set (borrowed), or the task's failure status. */
static int bind(cel_task *t, const char *fn, const char *const *params, size_t n,
                const json_t *args, const json_t *kwargs, const json_t **out)
{
    size_t nargs = json_array_size(args);
    if (nargs > n)
        return cel_task_raise(t, "builtins", "TypeError",
                              "%s() takes %zu positional argument%s but %zu %s given", fn, n,
                              n == 1 ? "" : "s", nargs, nargs == 1 ? "was" : "were");
    for (size_t i = 0; i < n; i++)
        out[i] = i < nargs ? json_array_get(args, i) : NULL;
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)kwargs, key, val) {
        size_t i = 0;
        while (i < n && strcmp(params[i], key) != 0)
            i++;
        if (i == n)
            return cel_task_raise(t, "builtins", "TypeError",
                                  "%s() got an unexpected keyword argument '%s'", fn, key);
        if (out[i])
            return cel_task_raise(t, "builtins", "TypeError",
                                  "%s() got multiple values for argument '%s'", fn, key);
        out[i] = val;
    }
    size_t missing = 0;
    char names[256] = "";
    for (size_t i = 0; i < n; i++) {
        if (out[i])
            continue;
        missing++;
        /* Python: 'x', 'x' and 'y', 'x', 'y' and 'z' */
        size_t left = 0;
        for (size_t j = i + 1; j < n; j++)
            left += !out[j];
        char part[64];
        snprintf(part, sizeof part, "'%s'%s", params[i], left > 1 ? ", " : left == 1 ? " and " : "");
        strncat(names, part, sizeof names - strlen(names) - 1);
    }
    if (missing)
        return cel_task_raise(t, "builtins", "TypeError",
                              "%s() missing %zu required positional argument%s: %s", fn, missing,
                              missing == 1 ? "" : "s", names);
    return 0;
}

static const char *py_type(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "dict";
    case JSON_ARRAY: return "list";
    case JSON_STRING: return "str";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    default: return "NoneType";
    }
}

/* examples.add(x, y): Python's x + y for numbers (bools count as ints, as
 * in Python), strings and lists. */
static int add(cel_task *t, const json_t *args, const json_t *kwargs)
{
    static const char *const params[] = {"x", "y"};
    const json_t *v[2];
    int rc = bind(t, "add", params, 2, args, kwargs, v);
    if (rc)
        return rc;
    const json_t *x = v[0], *y = v[1];
    bool xi = json_is_integer(x) || json_is_boolean(x), yi = json_is_integer(y) || json_is_boolean(y);
    if (xi && yi) {
        json_int_t a = json_is_integer(x) ? json_integer_value(x) : json_is_true(x);
        json_int_t b = json_is_integer(y) ? json_integer_value(y) : json_is_true(y);
        json_int_t r;
        if (__builtin_add_overflow(a, b, &r))
            return cel_task_raise(t, "builtins", "OverflowError",
                                  "integer result does not fit in 64 bits");
        return cel_task_return(t, json_integer(r));
    }
    if ((xi || json_is_real(x)) && (yi || json_is_real(y))) {
        double a = json_is_real(x) ? json_real_value(x)
                   : json_is_integer(x) ? (double)json_integer_value(x) : json_is_true(x);
        double b = json_is_real(y) ? json_real_value(y)
                   : json_is_integer(y) ? (double)json_integer_value(y) : json_is_true(y);
        return cel_task_return(t, json_real(a + b));
    }
    if (json_is_string(x) && json_is_string(y)) {
        size_t la = json_string_length(x), lb = json_string_length(y);
        char *buf = malloc(la + lb + 1);
        if (!buf)
            return cel_task_raise(t, "builtins", "MemoryError", "out of memory");
        memcpy(buf, json_string_value(x), la);
        memcpy(buf + la, json_string_value(y), lb);
        json_t *s = json_stringn_nocheck(buf, la + lb);
        free(buf);
        return cel_task_return(t, s);
    }
    if (json_is_array(x) && json_is_array(y)) {
        json_t *r = json_deep_copy(x);
        json_t *ys = json_deep_copy(y);
        json_array_extend(r, ys);
        json_decref(ys);
        return cel_task_return(t, r);
    }
    const char *tx = py_type(x), *ty = py_type(y);
    if (json_is_string(x) && !json_is_string(y))
        return cel_task_raise(t, "builtins", "TypeError",
                              "can only concatenate str (not \"%s\") to str", ty);
    if (json_is_array(x) && !json_is_array(y))
        return cel_task_raise(t, "builtins", "TypeError",
                              "can only concatenate list (not \"%s\") to list", ty);
    return cel_task_raise(t, "builtins", "TypeError",
                          "unsupported operand type(s) for +: '%s' and '%s'", tx, ty);
}

/* examples.echo(*args, **kwargs) -> {"args": args, "kwargs": kwargs} */
static int echo(cel_task *t, const json_t *args, const json_t *kwargs)
{
    return cel_task_return(t, json_pack("{s:O, s:O}", "args", args, "kwargs", kwargs));
}

/* examples.limited(*args, **kwargs): echo, at most 10 starts a second
 * (rate_limit "10/s"). */
static int limited(cel_task *t, const json_t *args, const json_t *kwargs)
{
    return echo(t, args, kwargs);
}

/* examples.sleep(seconds) -> seconds.  Sleeps in short steps so a soft time
 * limit interrupts it, as it interrupts Python's time.sleep. */
static int sleep_task(cel_task *t, const json_t *args, const json_t *kwargs)
{
    static const char *const params[] = {"seconds"};
    const json_t *s;
    int rc = bind(t, "sleep", params, 1, args, kwargs, &s);
    if (rc)
        return rc;
    if (!json_is_number(s))
        return cel_task_raise(t, "builtins", "TypeError",
                              "'%s' object cannot be interpreted as a number",
                              s ? py_type(s) : "NoneType");
    double secs = json_number_value(s);
    if (secs < 0)
        return cel_task_raise(t, "builtins", "ValueError", "sleep length must be non-negative");
    double left = secs;
    while (left > 0) {
        if (cel_task_soft_limit_exceeded(t))
            return cel_task_raise_args(t, "billiard.exceptions", "SoftTimeLimitExceeded",
                                       json_array());
        double step = left < 0.05 ? left : 0.05;
        struct timespec ts = {(time_t)step, (long)((step - floor(step)) * 1e9)};
        nanosleep(&ts, NULL);
        left -= step;
    }
    return cel_task_return(t, json_deep_copy(s));
}

/* examples.flaky(fail_times, countdown=0.5): asks for a retry until it has
 * been retried fail_times times, then returns its retry count (Celery's
 * default max_retries of 3 applies). */
static int flaky(cel_task *t, const json_t *args, const json_t *kwargs)
{
    static const char *const params[] = {"fail_times", "countdown"};
    const json_t *v[2] = {NULL, NULL};
    /* countdown is optional: bind it only when given. */
    size_t n = json_array_size(args) >= 2 || json_object_get(kwargs, "countdown") ? 2 : 1;
    int rc = bind(t, "flaky", params, n, args, kwargs, v);
    if (rc)
        return rc;
    if (!json_is_integer(v[0]))
        return cel_task_raise(t, "builtins", "TypeError", "fail_times must be an int");
    double countdown = v[1] && json_is_number(v[1]) ? json_number_value(v[1]) : 0.5;
    if (cel_task_retries(t) < json_integer_value(v[0]))
        return cel_task_retry(t, countdown);
    return cel_task_return(t, json_integer(cel_task_retries(t)));
}

/* examples.autoretry(fail_times): raises ValueError("attempt N") until it
 * has been retried fail_times times; autoretry_for ValueError, 0.2 s apart. */
static int autoretry_task(cel_task *t, const json_t *args, const json_t *kwargs)
{
    static const char *const params[] = {"fail_times"};
    const json_t *n;
    int rc = bind(t, "autoretry", params, 1, args, kwargs, &n);
    if (rc)
        return rc;
    if (!json_is_integer(n))
        return cel_task_raise(t, "builtins", "TypeError", "fail_times must be an int");
    if (cel_task_retries(t) < json_integer_value(n))
        return cel_task_raise(t, "builtins", "ValueError", "attempt %d", cel_task_retries(t));
    return cel_task_return(t, json_integer(cel_task_retries(t)));
}

/* Appends "<task id>\n" to the file `path` (a test's marker of each run);
 * NULL or not a string: nothing. */
static void mark_run(cel_task *t, const json_t *path)
{
    if (!json_is_string(path))
        return;
    FILE *f = fopen(json_string_value(path), "a");
    if (!f)
        return;
    fprintf(f, "%s\n", cel_task_id(t));
    fclose(f);
}

/* examples.touch(marker) appends its task id to the file `marker` and
 * returns it: a run leaves a trace (the revoke tests look for none). */
static int touch(cel_task *t, const json_t *args, const json_t *kwargs)
{
    static const char *const params[] = {"marker"};
    const json_t *path;
    int rc = bind(t, "touch", params, 1, args, kwargs, &path);
    if (rc)
        return rc;
    mark_run(t, path);
    return cel_task_return(t, json_string(cel_task_id(t)));
}

/* examples.retry_with(fail_times, options): Celery's self.retry() with its
 * arguments, until retried fail_times times; returns the retry count.
 * options: "marker" (a file each run appends to), "countdown", "eta" (Unix
 * time), "max_retries" (this call's limit; 0 = none left), "exc" (false:
 * no exception; else ValueError("attempt N")). */
static int retry_with(cel_task *t, const json_t *args, const json_t *kwargs)
{
    static const char *const params[] = {"fail_times", "options"};
    const json_t *v[2];
    int rc = bind(t, "retry_with", params, 2, args, kwargs, v);
    if (rc)
        return rc;
    if (!json_is_integer(v[0]) || !json_is_object(v[1]))
        return cel_task_raise(t, "builtins", "TypeError", "retry_with(int, dict)");
    const json_t *o = v[1];
    mark_run(t, json_object_get(o, "marker"));
    int retries = cel_task_retries(t);
    if (retries >= json_integer_value(v[0]))
        return cel_task_return(t, json_integer(retries));
    const json_t *countdown = json_object_get(o, "countdown"), *eta = json_object_get(o, "eta");
    const json_t *max = json_object_get(o, "max_retries"), *exc = json_object_get(o, "exc");
    char msg[32];
    snprintf(msg, sizeof msg, "attempt %d", retries);
    cel_retry_options r = {
        .countdown = json_is_number(countdown) ? json_number_value(countdown)
                                               : CEL_RETRY_DEFAULT_DELAY,
        .eta = json_is_number(eta) ? json_number_value(eta) : 0,
        /* Python's max_retries=0 is "no retry left"; our 0 is "the task's". */
        .max_retries = !json_is_integer(max)            ? 0
                       : json_integer_value(max) == 0 ? CEL_RETRIES_NONE
                                                      : (int)json_integer_value(max),
        .exc_type = json_is_false(exc) ? NULL : "ValueError",
        .exc_message = msg,
    };
    return cel_task_retry_ex(t, &r);
}

/* examples.fail(message) raises ValueError(message). */
static int fail(cel_task *t, const json_t *args, const json_t *kwargs)
{
    static const char *const params[] = {"message"};
    const json_t *m;
    int rc = bind(t, "fail", params, 1, args, kwargs, &m);
    if (rc)
        return rc;
    json_t *exc_args = json_array();
    json_array_append(exc_args, (json_t *)m);
    return cel_task_raise_args(t, "builtins", "ValueError", exc_args);
}

/* examples.crash() dereferences NULL: the pool process dies with SIGSEGV and
 * the worker reports WorkerLostError. */
__attribute__((no_sanitize("undefined"))) static int crash(cel_task *t, const json_t *args,
                                                           const json_t *kwargs)
{
    int rc = bind(t, "crash", NULL, 0, args, kwargs, NULL);
    if (rc)
        return rc;
    volatile int *p = NULL;
    *p = 42;
    raise(SIGSEGV); /* not reached */
    return cel_task_return(t, NULL);
}

int celeriac_module_init(cel_registry *reg)
{
    int rc = 0;
    rc |= cel_register(reg, "examples.add", add, NULL);
    rc |= cel_register(reg, "examples.echo", echo, NULL);
    rc |= cel_register(reg, "examples.limited", limited,
                       &(cel_task_options){.rate_limit = "10/s"});
    rc |= cel_register(reg, "examples.sleep", sleep_task, NULL);
    rc |= cel_register(reg, "examples.fail", fail, NULL);
    rc |= cel_register(reg, "examples.flaky", flaky, NULL);
    static const char *const value_error[] = {"ValueError", NULL};
    rc |= cel_register(reg, "examples.autoretry", autoretry_task,
                       &(cel_task_options){.autoretry_for = value_error,
                                           .default_retry_delay = 0.2});
    rc |= cel_register(reg, "examples.crash", crash, NULL);
    rc |= cel_register(reg, "examples.touch", touch, NULL);
    rc |= cel_register(reg, "examples.retry_with", retry_with, NULL);
    return rc;
}
