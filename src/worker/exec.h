/* exec.h — running one task and turning what it did into an outcome, the
 * same in a pool child and in the solo pool.
 *
 * The process that runs the task also builds the result record, in the
 * backend's exact text, and logs the task's result line (as Celery's tracer
 * does in ForkPoolWorker-N): the parent then only forwards text to the
 * backend, and the JSON work of a task is spread over the pool's processes
 * instead of piling up in the one parent.
 */
#ifndef CELERIAC_EXEC_H
#define CELERIAC_EXEC_H

#include "core/message.h"
#include "worker/registry.h"
#include <signal.h>
#include <stdbool.h>

/* What the executing process needs to know besides the message. */
typedef struct cel_exec_env {
    const cel_registry *reg;
    const char *hostname;
    bool store_results;  /* a result backend is configured */
    bool extended;       /* result_extended */
    bool for_rpc;        /* rpc:// record shape */
    bool ignore_result;  /* task_ignore_result */
    bool store_errors_even_if_ignored; /* task_store_errors_even_if_ignored */
} cel_exec_env;

typedef enum cel_outcome_status {
    CEL_OUT_SUCCESS = 0,
    CEL_OUT_FAILURE = 1,
    CEL_OUT_RETRY = 2,
    CEL_OUT_DISCARD = 3, /* the message could not be decoded: ack, store nothing */
    CEL_OUT_REVOKED = 4, /* revoked while queued in the pool: never run (pool.h) */
} cel_outcome_status;

/* The outcome of one execution.  `meta` is malloc'd backend-ready text, or
 * NULL when nothing is to be stored. */
typedef struct cel_outcome {
    cel_outcome_status status;
    char *meta;
    size_t meta_len;
    double countdown; /* RETRY: seconds until the retry's ETA */
    double eta;       /* RETRY: its ETA as Unix time when the task gave one; 0 = countdown */
    double runtime;   /* seconds spent in the task function */
} cel_outcome;

void cel_outcome_clear(cel_outcome *o);

/* What a running task hands the process that owns the broker and backend. */
enum { CEL_NOTE_STATE = 0, CEL_NOTE_PUBLISH = 1, CEL_NOTE_STORE = 2, CEL_NOTE_CHORD = 3 };
/* STATE: the task stored a custom state; `text` is the record.  PUBLISH: a
 * message to send before the outcome is stored (callbacks, chains,
 * errbacks); `text` is "<queue>\n<priority>\n<envelope>".  STORE: a record
 * for another task (the rest of a failed chain): "<task_id>\n<reply_to>\n<record>".
 * CHORD: a chord header task is over; `text` is the part (worker/chord.h),
 * joined after the outcome is stored. */
typedef void (*cel_state_cb)(void *ud, int kind, const char *text, size_t len);

/* Runs the task of parsed message `m` (stages up to the body done).  Fills
 * `out`.  `soft_flag` (may be NULL) is set asynchronously when the soft time
 * limit passes. */
void cel_exec_run(const cel_exec_env *env, const cel_message *m,
                  volatile sig_atomic_t *soft_flag, cel_state_cb state_cb, void *ud,
                  cel_outcome *out);

/* Builds a result record for the parent's own outcomes (WorkerLostError,
 * NotRegistered, expired, STARTED): `result` and `traceback` as in Celery's
 * meta.  Returns malloc'd text (length in *len) or NULL. */
char *cel_exec_record(const cel_exec_env *env, const cel_message *m, const char *status,
                      json_t *result, const char *traceback, size_t *len);

/* celery.utils.time.get_exponential_backoff_interval: min(maximum,
 * factor * 2^retries), then uniform in [0, that] with full_jitter. */
int cel_backoff_interval(int factor, int retries, int maximum, bool full_jitter);

/* Celery's exception dict {"exc_type", "exc_message", "exc_module"}; steals
 * `args` (a JSON array). */
json_t *cel_exc_dict(const char *module, const char *type, json_t *args);

#endif
