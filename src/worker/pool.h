/* pool.h — where tasks run: prefork children (default) or the solo pool.
 *
 * Prefork: N children forked after the task modules are loaded.  Jobs go
 * into ONE shared SOCK_SEQPACKET socket that every child reads when, and only
 * when, it is idle: the kernel hands each datagram to exactly one reader, so
 * a job always goes to a free process (Celery's -Ofair) and a child that
 * finishes a job finds the next one waiting without a round trip through the
 * parent.  The parent keeps at most four jobs per process in that socket;
 * the rest stay in the worker's memory (revocable, restorable).
 *
 * Each child reports on its own SOCK_STREAM socket: a `started` frame when it
 * takes a job (the moment Celery acks an early-ack task) and a `done` frame
 * with the outcome (length-prefixed JSON).  A request too large for one
 * datagram travels in a memfd passed with SCM_RIGHTS.
 *
 * The parent never blocks on a child: its sockets are non-blocking, and it
 * learns of deaths through SIGCHLD + waitpid.  A child that dies while
 * running a job is reported through on_lost and replaced.
 *
 * The number of processes can change at run time (remote control
 * pool_grow / pool_shrink); a shrink lets the retired processes finish
 * their task first.
 *
 * Solo: cel_pool_submit runs the task in the calling process and reports the
 * outcome before returning.
 */
#ifndef CELERIAC_POOL_H
#define CELERIAC_POOL_H

#include "worker/exec.h"
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct cel_pool cel_pool;

typedef struct cel_pool_events {
    /* The job finished; `o` is borrowed (see exec.h). */
    void (*on_outcome)(void *ud, uint64_t job, cel_outcome *o);
    /* The task stored a custom state; `meta` is the record text. */
    void (*on_state)(void *ud, uint64_t job, const char *meta, size_t len);
    /* The task has a message to send before its outcome is stored:
     * "<queue>\n<priority>\n<envelope>" (callbacks, chains, errbacks). */
    void (*on_publish)(void *ud, uint64_t job, const char *text, size_t len);
    /* A record to store for another task id: "<task_id>\n<reply_to>\n<record>". */
    void (*on_store)(void *ud, uint64_t job, const char *text, size_t len);
    /* A chord header task is over: its part (worker/chord.h), to join once
     * the job's outcome is stored. */
    void (*on_chord)(void *ud, uint64_t job, const char *text, size_t len);
    /* The child running `job` died with wait status `status`. */
    void (*on_lost)(void *ud, uint64_t job, int status);
    /* A process (pid) took the job and is starting it. */
    void (*on_started)(void *ud, uint64_t job, pid_t pid);
    /* A submitted job could not be queued after all (the queue was full at
     * cel_pool_flush): it is the caller's again, as if submit had failed. */
    void (*on_unsent)(void *ud, uint64_t job);
} cel_pool_events;

/* Starts the pool: `solo`, or prefork with `processes` (0 is allowed: an
 * autoscaled pool grows from none).  Returns NULL with `err` set on
 * failure.  `env` (and what it points to) must outlive the pool. */
cel_pool *cel_pool_start(bool solo, int processes, const cel_exec_env *env,
                         const cel_pool_events *ev, void *ud, char *err, size_t errlen);

/* How many more jobs the pool takes now (idle processes plus the queue
 * allowance). */
int cel_pool_idle(const cel_pool *p);
/* Jobs handed to the pool and not finished (queued or running). */
int cel_pool_busy(const cel_pool *p);

/* Hands a message to the pool as `job`.  Prefork stages the raw envelope
 * (`raw`, `len`: borrowed until cel_pool_flush) for a child to decode; solo
 * runs `m` (parsed with its body) at once.  Returns 0, or -1 when the pool
 * is full. */
int cel_pool_submit(cel_pool *p, uint64_t job, const char *raw, size_t len,
                    const cel_message *m);
/* Sends the staged jobs (one system call for a turn's worth); those the
 * queue cannot take come back through on_unsent. */
void cel_pool_flush(cel_pool *p);

/* Time limits (prefork only; -1 when `job` is not running in a process).
 * Soft: the task's cel_task_soft_limit_exceeded() turns true and blocking
 * calls in it are interrupted.  Hard: the process is killed; the death comes
 * back through on_lost like any other, after the caller has already dealt
 * with the job. */
int cel_pool_soft_timeout(cel_pool *p, uint64_t job);
int cel_pool_kill_job(cel_pool *p, uint64_t job);
/* revoke(terminate=True): `signum` to the process running `job`. */
int cel_pool_signal_job(cel_pool *p, uint64_t job, int signum);

/* revoke() without terminate for a job handed to the pool and not started:
 * the process that takes it skips it, and it comes back through on_outcome
 * as CEL_OUT_REVOKED instead of on_started.  A job a process took already
 * runs (Celery runs a started task to its end).  Returns 0, or -1 (solo, or
 * no room: the job will run). */
int cel_pool_revoke(cel_pool *p, uint64_t job);

/* Takes back jobs still waiting in the queue (no process took them yet),
 * e.g. at a warm shutdown, so their messages can be restored.  Writes up to
 * `max` job ids to `jobs`; returns how many. */
int cel_pool_reclaim(cel_pool *p, uint64_t *jobs, int max);

/* Adds the pool's descriptors to `fds` (at most `max`); returns how many. */
int cel_pool_pollfds(cel_pool *p, struct pollfd *fds, int max);
/* Processes readiness on descriptors filled by cel_pool_pollfds. */
void cel_pool_handle(cel_pool *p, const struct pollfd *fds, int n);
/* Reaps exited children (call after SIGCHLD); replaces them unless stopping. */
void cel_pool_reap(cel_pool *p);

/* Processes the pool runs tasks with (0 for solo): those retiring after a
 * shrink no longer count. */
int cel_pool_processes(const cel_pool *p);

/* pool_grow: forks `n` more processes.  Returns how many were started, or
 * -1 for the solo pool (which cannot grow, as in Celery). */
int cel_pool_grow(cel_pool *p, int n);
/* pool_shrink: retires up to `n` idle processes — never one running a
 * task: each exits when it reads the retire datagram queued behind the
 * jobs already waiting, and cel_pool_reap drops its slot.  Returns how many
 * were told to go (fewer than `n` when fewer are idle, as billiard), or -1
 * for the solo pool. */
int cel_pool_shrink(cel_pool *p, int n);

/* The child pids (for stats); returns how many were written. */
int cel_pool_pids(const cel_pool *p, pid_t *out, int max);

/* Stops the pool: with `kill_now`, SIGKILLs the children (cold); otherwise
 * closes their sockets and waits for them to exit (call once idle).  Frees
 * everything. */
void cel_pool_stop(cel_pool *p, bool kill_now);

#endif
