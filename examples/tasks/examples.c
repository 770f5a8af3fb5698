/* examples.c — the `examples` task module (libceleriac-examples.so): the
 * tasks the README, the interop suite and the benchmarks use.  Each mirrors a
 * Python task of the same name in examples/python/app.py, so a differential
 * test can compare the two workers result for result.
 */
#include <celeriac/task.h>

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Positional argument i, else keyword `name`; NULL if neither. */
static const json_t *arg(const json_t *args, const json_t *kwargs, size_t i, const char *name)
{
    if (i < json_array_size(args))
        return json_array_get(args, i);
    return json_object_get(kwargs, name);
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

static int arity_error(cel_task *t, const char *fn, size_t want, size_t got)
{
    return cel_task_raise(t, "builtins", "TypeError",
                          "%s() takes %zu positional argument%s but %zu %s given", fn, want,
                          want == 1 ? "" : "s", got, got == 1 ? "was" : "were");
}

/* examples.add(x, y): Python's x + y for numbers (bools count as ints, as
 * in Python), strings and lists. */
static int add(cel_task *t, const json_t *args, const json_t *kwargs)
{
    size_t nargs = json_array_size(args);
    if (nargs > 2)
        return arity_error(t, "add", 2, nargs);
    const json_t *x = arg(args, kwargs, 0, "x"), *y = arg(args, kwargs, 1, "y");
    if (!x || !y)
        return cel_task_raise(t, "builtins", "TypeError",
                              "add() missing 1 required positional argument: '%s'",
                              x ? "y" : "x");
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

/* examples.sleep(seconds) -> seconds.  Sleeps in short steps so a soft time
 * limit interrupts it, as it interrupts Python's time.sleep. */
static int sleep_task(cel_task *t, const json_t *args, const json_t *kwargs)
{
    const json_t *s = arg(args, kwargs, 0, "seconds");
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

/* examples.fail(message) raises ValueError(message). */
static int fail(cel_task *t, const json_t *args, const json_t *kwargs)
{
    const json_t *m = arg(args, kwargs, 0, "message");
    json_t *exc_args = json_array();
    json_array_append(exc_args, m ? (json_t *)m : json_null());
    return cel_task_raise_args(t, "builtins", "ValueError", exc_args);
}

/* examples.crash() dereferences NULL: the pool process dies with SIGSEGV and
 * the worker reports WorkerLostError. */
__attribute__((no_sanitize("undefined"))) static int crash(cel_task *t, const json_t *args,
                                                           const json_t *kwargs)
{
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
    rc |= cel_register(reg, "examples.sleep", sleep_task, NULL);
    rc |= cel_register(reg, "examples.fail", fail, NULL);
    rc |= cel_register(reg, "examples.crash", crash, NULL);
    return rc;
}
