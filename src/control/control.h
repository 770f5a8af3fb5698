/* control.h — remote control (Celery's pidbox): the requests `celery
 * control`, `celery inspect`, `AsyncResult.revoke()` and Flower broadcast
 * to workers, and the replies (see control.c). */
#ifndef CELERIAC_CONTROL_H
#define CELERIAC_CONTROL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* What a command needs from the worker: callbacks into worker.c, so this
 * module knows no broker and no pool. */
typedef struct cel_control_host {
    void *ud;
    const char *hostname;
    /* revoke: marks ids revoked; with `terminate`, kills the processes
     * running any of them with `signum`.  Returns how many were running
     * (and were terminated). */
    int (*revoke)(void *ud, const char *const *ids, size_t n, bool terminate, int signum);
    /* Sends a reply `body` (JSON text) to exchange/routing key with
     * headers ticket and clock. */
    int (*reply)(void *ud, const char *exchange, const char *routing_key, const char *ticket,
                 long long clock, const char *body, size_t len);
    /* enable_events / disable_events: turns task events on or off; returns
     * whether they were on.  May be NULL. */
    bool (*set_task_events)(void *ud, bool on);
    /* heartbeat: send a worker-heartbeat now.  May be NULL. */
    void (*heartbeat)(void *ud);
    /* Every other command: the reply payload (new reference), or NULL when
     * the worker does not know `method` (then KeyError).  `reply` false: no
     * reply is sent (shutdown).  May be NULL. */
    json_t *(*command)(void *ud, const char *method, const json_t *args, bool *reply);
} cel_control_host;

typedef struct cel_control cel_control;

cel_control *cel_control_new(const cel_control_host *host);
void cel_control_free(cel_control *c);

/* Handles one request: `envelope` is the kombu envelope text (Redis
 * pub/sub payload, or an AMQP delivery in the same shape).  Malformed
 * requests are logged and dropped; the worker goes on. */
void cel_control_handle(cel_control *c, const char *envelope, size_t len);

/* Whether a task id has been revoked (Celery's LimitedSet: 50000 ids,
 * 3 h each). */
bool cel_control_is_revoked(cel_control *c, const char *task_id);

/* --statedb: the revoked ids (with their remaining lifetime) and the clock,
 * in celeriac's own JSON file (Celery's is a Python shelve).  load: 0, or
 * -1 with a logged reason (a missing file is 0).  save: written to
 * PATH.tmp, then renamed. */
int cel_control_load(cel_control *c, const char *path);
int cel_control_save(cel_control *c, const char *path);

/* The Lamport clock, advanced on every request received and reply sent. */
long long cel_control_clock(const cel_control *c);
/* Advances the clock for something the worker sends (an event); returns it. */
long long cel_control_next_clock(cel_control *c);

#endif
