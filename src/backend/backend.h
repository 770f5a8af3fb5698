/* backend.h — result backends: where task states go so that Python's
 * AsyncResult sees them.
 *
 * A backend is a small vtable: Redis (redis.c) and rpc:// (rpc.c).
 * Writes are queued with cel_backend_store_raw.  The worker's loop sends
 * them with cel_backend_send once per turn without waiting, and reads the
 * reply when the backend's fd turns readable (cel_backend_recv), so a store
 * round trip never stalls the loop.  cel_backend_flush stores everything and
 * waits: the worker calls it before it acks an acks_late message (a result
 * is stored before its message is acked, as in Celery) and at shutdown.
 */
#ifndef CELERIAC_BACKEND_H
#define CELERIAC_BACKEND_H

#include "core/config.h"
#include <jansson.h>
#include <stdbool.h>

/* One state record.  Everything is borrowed for the duration of the call. */
typedef struct cel_result_rec {
    const char *task_id;
    const char *status;      /* SUCCESS, FAILURE, STARTED, RETRY, REVOKED, custom */
    json_t *result;          /* value, exception dict or meta; NULL = null */
    const char *traceback;   /* NULL = null */
    const char *group_id;    /* NULL: key omitted */
    const char *parent_id;   /* NULL: key omitted */
    const char *reply_to;    /* rpc:// routing (unused by Redis) */
    json_t *children;        /* AsyncResult tuples of what the task sent; NULL = [] */
    /* result_extended fields */
    const char *name;
    json_t *args, *kwargs;
    const char *worker;
    int retries;
    const char *queue;
} cel_result_rec;

typedef struct cel_backend cel_backend;

typedef struct cel_backend_ops {
    /* Stores a record already in the backend's text (see exec.h); `meta` is
     * copied.  `reply_to` routes rpc:// records. */
    int (*store_raw)(cel_backend *b, const char *task_id, const char *reply_to,
                     const char *meta, size_t len);
    /* Stores every queued record and waits for the outcome.  0 = stored;
     * -1 = kept for a later try (backend away). */
    int (*flush)(cel_backend *b);
    /* Writes the queued records without waiting; a no-op while a batch is
     * still in flight.  NULL: send = flush. */
    int (*send)(cel_backend *b);
    /* The fd to poll for the reply to a batch in flight, or -1 (none). */
    int (*reply_fd)(cel_backend *b);
    /* Reads the reply to the batch in flight (call when reply_fd is
     * readable). */
    int (*recv)(cel_backend *b);
    void (*close)(cel_backend *b);
    /* Chords (Redis only; NULL elsewhere), Celery's RedisBackend
     * on_chord_part_return: stores the queued records first, then adds
     * `entry` (the encoded [1, task_id, state, result]) to the sorted set
     * celery-taskset-meta-<group_id>.j with score `score` (group_index or
     * "+inf"), reads .t and .s and refreshes their expiry, atomically.  When
     * the set holds .s + .t entries, *entries is set to them in order (a new
     * array of strings) and *saved to whether the header's GroupResult was
     * saved (a complex header); otherwise *entries is NULL.  0, or -1 when
     * the backend could not be reached. */
    int (*chord_join)(cel_backend *b, const char *group_id, const char *entry,
                      const char *score, json_t **entries, bool *saved);
    /* Deletes the chord's .j, .t and .s keys. */
    int (*chord_clear)(cel_backend *b, const char *group_id);
} cel_backend_ops;

struct cel_backend {
    const cel_backend_ops *ops;
    bool extended;        /* result_extended */
    bool for_rpc;         /* records in the rpc:// shape (no date_done) */
    double expires;       /* result_expires seconds; 0 = never */
};

/* Opens the backend named by `url` (redis://...).  Returns NULL with `err`
 * set on failure (the password never appears in it). */
cel_backend *cel_backend_open(const char *url, const cel_config *cfg, char *err, size_t errlen);

/* The meta object Celery stores (status, result, traceback, children,
 * date_done, [group_id], [parent_id], [extended fields], task_id); with
 * `for_rpc` the rpc:// shape (task_id first, no date_done).  New reference. */
json_t *cel_result_meta(const cel_result_rec *r, bool extended, bool for_rpc);

/* True for SUCCESS, FAILURE, REVOKED (Celery's READY_STATES). */
bool cel_state_is_ready(const char *status);

static inline int cel_backend_store_raw(cel_backend *b, const char *task_id,
                                        const char *reply_to, const char *meta, size_t len)
{
    return b->ops->store_raw(b, task_id, reply_to, meta, len);
}
static inline int cel_backend_flush(cel_backend *b) { return b->ops->flush(b); }
static inline int cel_backend_send(cel_backend *b)
{
    return b->ops->send ? b->ops->send(b) : b->ops->flush(b);
}
static inline int cel_backend_reply_fd(cel_backend *b)
{
    return b->ops->reply_fd ? b->ops->reply_fd(b) : -1;
}
static inline int cel_backend_recv(cel_backend *b)
{
    return b->ops->recv ? b->ops->recv(b) : 0;
}
static inline void cel_backend_close(cel_backend *b)
{
    if (b)
        b->ops->close(b);
}

/* rpc:// over the amqp:// broker of `cfg` (rpc.c). */
cel_backend *cel_backend_rpc_open(const cel_config *cfg, char *err, size_t errlen);
/* rpc.c, inside celeriac-amqp.so; cel_backend_rpc_open (amqp_plugin.c) loads it. */
cel_backend *cel_amqp_plugin_rpc_open(const cel_config *cfg, char *err, size_t errlen);

/* Redis implementation (redis.c). */
cel_backend *cel_backend_redis_open(const cel_url *u, const cel_config *cfg, char *err,
                                    size_t errlen);

#endif
