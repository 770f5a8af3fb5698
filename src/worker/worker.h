/* worker.h — `celeriac worker`: the consumer loop that ties transport,
 * codec, pool and result backend together. */
#ifndef CELERIAC_WORKER_H
#define CELERIAC_WORKER_H

#include "core/config.h"

#include <stdbool.h>

/* Runs the worker until shutdown.  Returns the process exit code: 0 after a
 * warm or cold shutdown, 64 (EX_USAGE) for configuration errors or an
 * unreachable broker after the configured retries, 1 on other failures. */
int cel_worker_main(cel_config *cfg);

/* True when the worker stopped because of SIGHUP: main() then re-executes
 * itself with the same arguments (Celery's warm restart). */
bool cel_worker_restart_requested(void);

/* `celeriac call TASK ...`: publishes one task and prints its id. */
int cel_call_main(int argc, char **argv);

#endif
