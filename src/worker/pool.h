/* pool.h — where tasks run: prefork children (default) or the solo pool.
 *
 * Prefork: N children forked after the task modules are loaded.  Each child
 * owns one end of a socketpair; the parent writes a request frame, the child
 * runs the task and writes back state frames and one outcome frame.  A
 * frame is a 4-byte length (host order) followed by JSON text.  The parent
 * never blocks on a child: its sockets are non-blocking with per-child
 * buffers, and it learns of deaths through SIGCHLD + waitpid.  A child that
 * dies while running a job is reported through on_lost with its wait status,
 * and is replaced.
 *
 * Solo: cel_pool_submit runs the task in the calling process and reports the
 * outcome before returning.
 */
#ifndef CELERIAC_POOL_H
#define CELERIAC_POOL_H

#include "worker/registry.h"
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct cel_pool cel_pool;

typedef struct cel_pool_events {
    /* The job finished; `outcome` is borrowed (see exec.h). */
    void (*on_outcome)(void *ud, uint64_t job, json_t *outcome);
    /* The task called cel_task_update_state; `meta` borrowed. */
    void (*on_state)(void *ud, uint64_t job, const char *state, json_t *meta);
    /* The child running `job` died with wait status `status`. */
    void (*on_lost)(void *ud, uint64_t job, int status);
    /* The job was handed to a process (pid) and is starting. */
    void (*on_started)(void *ud, uint64_t job, pid_t pid);
} cel_pool_events;

/* Starts the pool.  `processes` = 0 means solo.  Returns NULL with `err` set
 * on failure. `reg` must outlive the pool. */
cel_pool *cel_pool_start(int processes, const cel_registry *reg,
                         const cel_pool_events *ev, void *ud, char *err, size_t errlen);

/* Number of processes able to take a job now. */
int cel_pool_idle(const cel_pool *p);
/* Number of jobs running. */
int cel_pool_busy(const cel_pool *p);

/* Hands `request` (borrowed) to an idle process as `job`.  Returns 0, or -1
 * when none is idle or the frame could not be built. */
int cel_pool_submit(cel_pool *p, uint64_t job, json_t *request);

/* Adds the pool's descriptors to `fds` (at most `max`); returns how many. */
int cel_pool_pollfds(cel_pool *p, struct pollfd *fds, int max);
/* Processes readiness on descriptors filled by cel_pool_pollfds. */
void cel_pool_handle(cel_pool *p, const struct pollfd *fds, int n);
/* Reaps exited children (call after SIGCHLD); replaces them unless stopping. */
void cel_pool_reap(cel_pool *p);

/* The child pids (for stats); returns how many were written. */
int cel_pool_pids(const cel_pool *p, pid_t *out, int max);

/* Stops the pool: with `kill_now`, SIGKILLs the children (cold); otherwise
 * closes their sockets and waits for them to exit (call once idle).  Frees
 * everything. */
void cel_pool_stop(cel_pool *p, bool kill_now);

#endif
