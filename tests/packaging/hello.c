/* A task module as a task author outside this tree writes it: it includes
 * <celeriac/task.h> and is built only with `pkg-config --cflags celeriac`
 * (tests/packaging/run.sh checks exactly that against a `meson install`). */
#include <celeriac/task.h>

static int hello(cel_task *t, const json_t *args, const json_t *kwargs)
{
    (void)kwargs;
    const char *who = json_string_value(json_array_get(args, 0));
    if (!who)
        return cel_task_raise(t, "builtins", "TypeError", "hello() wants one string argument");
    return cel_task_return(t, json_sprintf("hello, %s", who));
}

int celeriac_module_init(cel_registry *reg) { return cel_register(reg, "pkgtest.hello", hello, NULL); }
