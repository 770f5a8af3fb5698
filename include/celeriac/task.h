/* celeriac/task.h — the whole API a task author sees.
 *
 * A task module is a shared object (`libceleriac-<name>.so`) that exports one
 * function, `celeriac_module_init`, which registers C functions under their
 * Celery task names.  The worker loads it with `celeriac worker -A path.so`,
 * exactly as `celery worker -A app` imports a Python app.
 *
 *     static int add(cel_task *t, const json_t *args, const json_t *kwargs) {
 *         ...
 *         return cel_task_return(t, json_integer(x + y));
 *     }
 *     int celeriac_module_init(cel_registry *reg) {
 *         return cel_register(reg, "examples.add", add, NULL);
 *     }
 *
 * Arguments arrive as jansson values (the body's `args` array and `kwargs`
 * object); they are borrowed and valid for the duration of the call.  A task
 * ends by returning one of the values of the `cel_task_*` result calls below;
 * those calls record the outcome on the task handle.
 *
 * Handles are opaque; every function name starts with `cel_`.
 */
#ifndef CELERIAC_TASK_H
#define CELERIAC_TASK_H

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CELERIAC_API_VERSION 1

typedef struct cel_task cel_task;         /* one execution of one task */
typedef struct cel_registry cel_registry; /* the worker's task table */

/* What a task function returns.  Use the result calls rather than the bare
 * numbers: they also record the value or the exception. */
enum {
    CEL_TASK_SUCCESS = 0,
    CEL_TASK_FAILURE = 1,
    CEL_TASK_RETRY = 2,
};

typedef int (*cel_task_fn)(cel_task *t, const json_t *args, const json_t *kwargs);

/* A per-task switch: the worker's setting, or forced on or off. */
typedef enum cel_option {
    CEL_OPTION_DEFAULT = 0, /* follow the worker's setting (task_acks_late, ...) */
    CEL_OPTION_YES = 1,
    CEL_OPTION_NO = 2,
} cel_option;

#define CEL_RETRIES_NONE (-1)      /* max_retries: never retry */
#define CEL_RETRIES_UNLIMITED (-2) /* max_retries: Celery's max_retries=None */

/* Per-task options, as on a Python `@app.task(...)`.  Every field's zero
 * means the default, so a zeroed struct (or NULL at registration) gives
 * Celery's behaviour; set only what differs:
 *     cel_task_options o = {.acks_late = CEL_OPTION_YES, .max_retries = 10}; */
typedef struct cel_task_options {
    cel_option acks_late;
    cel_option track_started;
    cel_option ignore_result;
    int max_retries;            /* 0 = Celery's default (3), or a count, or CEL_RETRIES_* */
    double default_retry_delay; /* seconds; 0 = Celery's default (180) */
    /* With acks_late: a task whose pool process dies is put back on its queue
     * instead of failing with WorkerLostError (Celery's
     * reject_on_worker_lost; a task that always crashes then loops). */
    cel_option reject_on_worker_lost;
    /* With ignore_result: still store failures (and revocations, time
     * limits, lost processes), as Celery's store_errors_even_if_ignored. */
    cel_option store_errors_even_if_ignored;
    /* Seconds; 0 = the worker's --time-limit / --soft-time-limit.  A limit in
     * the message (apply_async(time_limit=..., soft_time_limit=...)) wins,
     * as in Celery.  Hard: the pool process is killed and the task fails
     * with TimeLimitExceeded.  Soft: cel_task_soft_limit_exceeded() turns
     * true; see there. */
    double time_limit;
    double soft_time_limit;
    /* Celery's rate_limit: "100/s", "10/m", "1/h" or "5" (per second);
     * NULL = none.  Copied at registration; a malformed rate fails it.  As
     * in Celery, a token bucket of capacity 1 per task name spaces the
     * starts 1/rate apart; held messages stay reserved (unacked). */
    const char *rate_limit;
    /* Celery's autoretry_for: exception type names ("ValueError", or
     * "module.Type"; "Exception" matches every failure), NULL-terminated;
     * a task that fails with one of them is retried with that exception
     * recorded (RETRY), and fails with it once max_retries is spent.
     * Borrowed: it must outlive the registry (a static array). */
    const char *const *autoretry_for;
    /* Celery's retry_backoff (seconds factor; 0 = off: default_retry_delay),
     * retry_backoff_max (0 = 600) and retry_jitter (default on): the
     * countdown is min(max, factor * 2^retries), then a random integer in
     * [0, countdown] with jitter — get_exponential_backoff_interval. */
    double retry_backoff;
    double retry_backoff_max;
    cel_option retry_jitter;
} cel_task_options;

/* Registers `fn` under the Celery name `name` (copied).  `opts` may be NULL.
 * Returns 0, or -1 if the name is already taken or invalid. */
int cel_register(cel_registry *reg, const char *name, cel_task_fn fn,
                 const cel_task_options *opts);

/* The symbol every task module exports. Returns 0 on success. */
int celeriac_module_init(cel_registry *reg);

/* --- Results ------------------------------------------------------------ */

/* Records `value` as the task's return value and returns CEL_TASK_SUCCESS.
 * Steals the reference; NULL means JSON null. */
int cel_task_return(cel_task *t, json_t *value);

/* Records a failure as the Python exception `module.type(message)` and returns
 * CEL_TASK_FAILURE.  Use Python's names so the client re-raises the right class:
 * ("builtins", "ValueError"), ("builtins", "TypeError"), ... */
int cel_task_raise(cel_task *t, const char *module, const char *type,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Like cel_task_raise, with the exception's args given as a JSON array
 * (stolen); `exc_message` on the wire is exactly this array. */
int cel_task_raise_args(cel_task *t, const char *module, const char *type,
                        json_t *args);

/* Asks for the task to be retried in `countdown` seconds (<0: the task's
 * default retry delay) and returns CEL_TASK_RETRY.  When max_retries is
 * exhausted the task fails instead (MaxRetriesExceededError), as in Celery. */
int cel_task_retry(cel_task *t, double countdown);

#define CEL_RETRY_DEFAULT_DELAY (-1.0) /* countdown: the task's default_retry_delay */

/* What Celery's `self.retry(exc=..., countdown=..., eta=..., max_retries=...)`
 * takes.  Unlike cel_task_options, countdown 0 means "at once" (Celery's
 * countdown=0); set CEL_RETRY_DEFAULT_DELAY for the task's delay:
 *     cel_retry_options o = {.countdown = 5, .exc_module = "builtins",
 *                            .exc_type = "ValueError", .exc_message = "busy"};
 *     return cel_task_retry_ex(t, &o); */
typedef struct cel_retry_options {
    double countdown; /* seconds from now; <0: default_retry_delay */
    /* Absolute time of the retry, seconds since the Unix epoch (UTC); 0 =
     * none.  When set it wins over countdown, as Celery's retry(eta=...)
     * (the log says "Retry at <eta>"). */
    double eta;
    /* This call's limit instead of the task's max_retries: 0 = the task's
     * (Celery's max_retries=None), a count, CEL_RETRIES_NONE (no retry:
     * fail at once) or CEL_RETRIES_UNLIMITED. */
    int max_retries;
    /* The exception (Celery's exc=): recorded as the RETRY state's result,
     * and raised instead of MaxRetriesExceededError once the retries are
     * spent.  exc_type NULL = none.  Its args are exc_args (a JSON array),
     * or [exc_message] when exc_args is NULL and exc_message is not. */
    const char *exc_module; /* NULL = "builtins" */
    const char *exc_type;
    const char *exc_message;
    const json_t *exc_args;
} cel_retry_options;

/* cel_task_retry with Celery's retry() arguments; `o` NULL is
 * cel_task_retry(t, CEL_RETRY_DEFAULT_DELAY).  Returns CEL_TASK_RETRY; once
 * max_retries is exceeded the task fails instead, with the exception given
 * (FAILURE, that type and args), else with MaxRetriesExceededError.  Nothing
 * in `o` is stolen or kept: the strings and exc_args are borrowed for the
 * call. */
int cel_task_retry_ex(cel_task *t, const cel_retry_options *o);

/* Stores a custom state (e.g. "PROGRESS") with `meta` (stolen) in the result
 * backend while the task runs.  Returns 0, or -1 if it could not be sent. */
int cel_task_update_state(cel_task *t, const char *state, json_t *meta);

/* --- Context -------------------------------------------------------------- */

const char *cel_task_id(const cel_task *t);
const char *cel_task_name(const cel_task *t);
const char *cel_task_root_id(const cel_task *t);      /* may be NULL */
const char *cel_task_parent_id(const cel_task *t);    /* may be NULL */
const char *cel_task_group_id(const cel_task *t);     /* may be NULL */
const char *cel_task_hostname(const cel_task *t);     /* worker nodename */
int cel_task_retries(const cel_task *t);
/* The raw headers and delivery info of the message, borrowed. */
const json_t *cel_task_headers(const cel_task *t);
const json_t *cel_task_delivery_info(const cel_task *t);

/* True once the soft time limit has passed.  Long tasks should poll it, clean
 * up, and end — typically with
 *     return cel_task_raise_args(t, "billiard.exceptions", "SoftTimeLimitExceeded",
 *                                json_array());
 * which is what Celery stores when Python's SoftTimeLimitExceeded is not
 * caught.  A task that saw it true may also return a value (Python's `except
 * SoftTimeLimitExceeded: return ...`).  A task that never looked and ends
 * after the limit fails with SoftTimeLimitExceeded whatever it returned: in
 * Python the exception would have been raised inside it.  Blocking calls
 * (sleep, read) return early with EINTR when the limit passes. */
bool cel_task_soft_limit_exceeded(const cel_task *t);

/* --- Logging -------------------------------------------------------------- */

/* Levels, with the numbers of Python's logging module. */
enum {
    CEL_TASK_DEBUG = 10,
    CEL_TASK_INFO = 20,
    CEL_TASK_WARNING = 30,
    CEL_TASK_ERROR = 40,
    CEL_TASK_CRITICAL = 50,
};

/* Writes one line to the worker's log (stderr or --logfile), in the shape of
 * Celery's task logger:
 *     [2026-11-28 10:43:39,447: INFO/ForkPoolWorker-1] examples.add[<id>]: message
 * `t` may be NULL (e.g. in celeriac_module_init): the line has no task part.
 * Lines below the worker's --loglevel are dropped; a message is cut at
 * about 4 KB.  printf-style `fmt`; nothing is retained. */
void cel_task_log(const cel_task *t, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif
#endif
