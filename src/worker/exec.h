/* exec.h — running one task function and turning what it did into an
 * outcome, the same in a pool child and in the solo pool.
 *
 * The request is a JSON object built by the parent from the parsed message
 * (see cel_exec_request_new); the outcome is a JSON object:
 *   {"status": "SUCCESS", "result": <value>}
 *   {"status": "FAILURE", "exc_type": T, "exc_module": M, "exc_message": [..],
 *    "traceback": "..."}
 *   {"status": "RETRY", "countdown": <seconds>}
 * Progress updates (cel_task_update_state) go out through a callback while
 * the task runs.
 */
#ifndef CELERIAC_EXEC_H
#define CELERIAC_EXEC_H

#include "core/message.h"
#include "worker/registry.h"
#include <signal.h>

typedef int (*cel_state_cb)(void *ud, const char *task_id, const char *state, json_t *meta);

/* Builds the request object sent to the executor: id, task, args, kwargs,
 * root_id, parent_id, group, retries, hostname, headers, delivery_info.
 * Returns a new reference. */
json_t *cel_exec_request_new(const cel_message *m, const char *hostname);

/* Runs the request against the registry.  `soft_flag` (may be NULL) is set
 * asynchronously when the soft time limit passes.  Returns a new outcome
 * reference (never NULL unless out of memory). */
json_t *cel_exec_run(const cel_registry *reg, json_t *request,
                     volatile sig_atomic_t *soft_flag, cel_state_cb state_cb, void *ud);

/* Builds a FAILURE outcome for an exception raised outside the task
 * (WorkerLostError, NotRegistered, ...).  `args` is stolen. */
json_t *cel_exec_failure(const char *module, const char *type, json_t *args,
                         const char *traceback);

#endif
