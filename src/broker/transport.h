/* transport.h — the broker interface the worker sees.  The worker never names
 * a broker: Redis (kombu's list + ack-emulation protocol) now, AMQP 0-9-1
 * next, both behind this vtable.
 *
 * Flow: fetch() takes up to N messages without blocking; when it finds none,
 * wait_start() arms a blocking wait whose descriptor the worker polls, and
 * wait_ready() collects what arrived.  Every delivery stays unacked (and
 * restorable by any consumer after the visibility timeout) until ack() or
 * reject(); acks are queued and sent by flush() in one round trip.
 */
#ifndef CELERIAC_TRANSPORT_H
#define CELERIAC_TRANSPORT_H

#include "core/config.h"
#include <stdbool.h>
#include <stddef.h>

typedef struct cel_delivery {
    char *raw;      /* owned: envelope text as received (NUL-terminated) */
    size_t len;
    char *queue;    /* owned: queue name it came from */
} cel_delivery;

void cel_delivery_free(cel_delivery *d);

typedef struct cel_transport cel_transport;

typedef struct cel_transport_ops {
    /* Takes up to `max` messages now; appends them to `out` (caller-owned
     * array with room for max).  Returns how many, or -1 on a broker error. */
    int (*fetch)(cel_transport *t, int max, cel_delivery *out);
    /* Arms a blocking wait for the next message; returns the fd to poll for
     * input, or -1. */
    int (*wait_start)(cel_transport *t, double timeout_s);
    /* Call when the wait fd is readable: 1 and fills *out when a message
     * arrived, 0 when the wait ended empty (or is still incomplete: check
     * waiting()), -1 on error. */
    int (*wait_ready)(cel_transport *t, cel_delivery *out);
    bool (*waiting)(const cel_transport *t);
    /* Ends an armed wait early (shutdown); its reply — empty, or a message
     * already taken — still arrives through wait_ready. */
    void (*wait_cancel)(cel_transport *t);
    /* The descriptor of the armed wait (valid while waiting()). */
    int (*wait_fd)(const cel_transport *t);
    /* Queues an ack of the delivery with tag `tag` (copied). */
    int (*ack)(cel_transport *t, const char *tag);
    /* Rejects: requeue = back to the queue's far end (LPUSH), else drop. */
    int (*reject)(cel_transport *t, const char *tag, bool requeue);
    /* Puts a held, unstarted message back for the next consumer
     * (RPUSH, redelivered) — warm shutdown.  `raw` is the envelope. */
    int (*restore)(cel_transport *t, const char *tag, const char *raw, size_t len);
    /* Sends queued acks.  Returns 0 or -1. */
    int (*flush)(cel_transport *t);
    /* Restores messages other consumers left unacked past the visibility
     * timeout.  Returns how many, or -1. */
    int (*restore_visible)(cel_transport *t);
    /* Publishes an envelope to a queue with a priority (retries, callbacks,
     * `celeriac call`). */
    int (*publish)(cel_transport *t, const char *queue, int priority, const char *raw,
                   size_t len);
    /* Called once per loop turn: keeps the connection alive (AMQP
     * heartbeats, frames read ahead, reconnects).  May be NULL. */
    int (*tick)(cel_transport *t);
    /* Sets the broker-side prefetch window (AMQP basic.qos).  May be NULL
     * (Redis: the worker's own budget is the window). */
    int (*qos)(cel_transport *t, int prefetch);
    /* Remote control add_consumer: starts consuming `queue` now, after
     * declaring it as kombu's Queue.declare does — exchange `exchange` of
     * `type` ("direct", "topic"), the queue, and the binding with
     * `routing_key` (AMQP: exchange.declare, queue.declare, queue.bind,
     * basic.consume; Redis: the `_kombu.binding.<exchange>` member and the
     * queue's lists in the fetch/BRPOP keys).  The transport keeps the
     * declaration and redeclares it after a reconnect.  `queue` must not be
     * consumed already (the worker keeps that list).  0, or -1 with `err`
     * set.  May be NULL (then the queue is not added; the reply is still
     * Celery's, the reason logged). */
    int (*add_queue)(cel_transport *t, const char *queue, const char *exchange,
                     const char *type, const char *routing_key, char *err, size_t errlen);
    /* cancel_consumer: stops consuming `queue` (AMQP basic.cancel; Redis:
     * out of the fetch keys, an armed BRPOP naming it is ended).  Nothing
     * is deleted or unbound, and deliveries already taken stay the caller's,
     * as with kombu's cancel_by_queue.  0, or -1 (not consumed).  May be
     * NULL. */
    int (*cancel_queue)(cel_transport *t, const char *queue);
    /* Remote control (pidbox); all three may be NULL.  control_fd: where
     * broadcast requests arrive (-1: not now; called every turn, so it
     * reconnects).  control_read: the requests that arrived, as kombu
     * envelopes (owned), up to max: how many, or -1; it reads the socket
     * only when `readable` (poll said so), else returns what is buffered —
     * call it every turn (AMQP's arrive on the consumer's socket, read by
     * tick/fetch).  control_reply: sends
     * `body` (JSON) to exchange/routing_key with headers ticket and clock. */
    int (*control_fd)(cel_transport *t);
    int (*control_read)(cel_transport *t, cel_delivery *out, int max, bool readable);
    int (*control_reply)(cel_transport *t, const char *exchange, const char *routing_key,
                         const char *ticket, long long clock, const char *body, size_t len);
    /* Monitoring events: publishes `body` (one event, JSON) to the
     * `celeryev` exchange with `routing_key`, header hostname; fire and
     * forget.  May be NULL. */
    int (*publish_event)(cel_transport *t, const char *routing_key, const char *body, size_t len,
                         const char *hostname);
    /* Sends the events publish_event queued; called once per loop turn
     * before the worker sleeps, and by close().  May be NULL (publish_event
     * sends at once).  Returns 0 or -1. */
    int (*flush_events)(cel_transport *t);
    void (*close)(cel_transport *t);
} cel_transport_ops;

struct cel_transport {
    const cel_transport_ops *ops;
};

/* Opens the transport for cfg->broker_url and prepares to consume
 * cfg->queues (bindings declared).  `consume` false: publish only.
 * Returns NULL with `err` set. */
cel_transport *cel_transport_open(const cel_config *cfg, bool consume, char *err,
                                  size_t errlen);

cel_transport *cel_redis_transport_open(const cel_url *u, const cel_config *cfg,
                                        bool consume, char *err, size_t errlen);
/* Loads celeriac-amqp.so on first use (amqp_plugin.c) and calls the next one. */
cel_transport *cel_amqp_transport_open(const cel_url *u, const cel_config *cfg, bool consume,
                                       char *err, size_t errlen);
/* amqp.c, inside celeriac-amqp.so. */
cel_transport *cel_amqp_plugin_transport_open(const cel_url *u, const cel_config *cfg,
                                              bool consume, char *err, size_t errlen);

#endif
