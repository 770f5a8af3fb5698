/* registry.h — the worker's table of task functions, and task modules.
 *
 * A task module is a shared object exporting `celeriac_module_init`; loading
 * it (dlopen, RTLD_NOW) calls that function, which calls cel_register() for
 * each task.  Modules are loaded in the parent before the pool forks, so the
 * children share the code copy-on-write, as Celery's prefork pool shares the
 * imported app.
 */
#ifndef CELERIAC_REGISTRY_H
#define CELERIAC_REGISTRY_H

#include <celeriac/task.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct cel_task_def {
    char *name;           /* owned */
    cel_task_fn fn;
    cel_task_options opts; /* opts.rate_limit owned (a copy) */
    double rate;           /* opts.rate_limit in tasks per second; 0 = none */
} cel_task_def;

/* Celery's rate string ("100/s", "10/m", "1/h", "5") in tasks per second;
 * returns -1 when malformed. */
int cel_parse_rate(const char *s, double *per_s);

/* A task's option resolved against the worker's setting. */
static inline bool cel_option_on(cel_option opt, bool worker_default)
{
    return opt == CEL_OPTION_DEFAULT ? worker_default : opt == CEL_OPTION_YES;
}

cel_registry *cel_registry_new(void);
void cel_registry_free(cel_registry *reg); /* also dlcloses modules */

/* Loads one task module.  Returns 0, or -1 with a reason in `err`. */
int cel_registry_load(cel_registry *reg, const char *path, char *err, size_t errlen);

/* Looks a task up by Celery name; NULL when not registered. Borrowed. */
const cel_task_def *cel_registry_find(const cel_registry *reg, const char *name);

/* Number of tasks and the i-th (sorted by name), for `inspect registered`. */
size_t cel_registry_count(const cel_registry *reg);
const cel_task_def *cel_registry_at(const cel_registry *reg, size_t i);

#endif
