/* amqp.c — the AMQP 0-9-1 transport (RabbitMQ), on librabbitmq-c.
 *
 * Topology is Celery 5.2's (shared/docs/celery-wire-contract.md §4.1): for
 * each consumed queue Q a durable direct exchange Q, a durable queue Q with
 * no arguments, bound with routing key Q — exactly what
 * task_create_missing_queues declares, so Python producers and workers can
 * use a queue celeriac declared first.  basic.qos(prefetch, global) bounds
 * the unacked messages at the broker; the worker's own budget mirrors it.
 *
 * The worker loop speaks Redis envelopes (one parser, one pool protocol), so
 * each delivery is turned into the envelope kombu's Redis transport would
 * carry: headers from the AMQP table, properties, delivery_info, the body in
 * base64, and a delivery tag "<connection generation>:<AMQP tag>".
 *
 * Why the generation: an AMQP delivery tag is only meaningful on the channel
 * that delivered it.  After a reconnect the broker redelivers everything
 * that was unacked, with new tags; an ack for an old tag on the new channel
 * would ack the wrong message or kill the channel.  Acks and rejects for an
 * older generation are dropped (the redelivery will run the task again —
 * only tasks whose ack had not reached the broker run twice).
 *
 * Frames are read without blocking whenever the loop calls in (fetch, the
 * wait fd turning readable, tick); deliveries beyond what the loop asked for
 * wait in `pending`, bounded by the broker's QoS.  Publishing (retries,
 * `celeriac call`) uses a second connection in confirm mode, opened on first
 * use, as Python's worker publishes on producer connections of its own.
 */
#include "broker/amqp_table.h"
#include "broker/transport.h"
#include "core/aconn.h"
#include "core/log.h"
#include "core/util.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BROKER_HEARTBEAT 120 /* Celery's broker_heartbeat */
#define CONNECT_TIMEOUT 5.0
#define PUBLISH_TIMEOUT 30.0

typedef struct tagged {
    uint64_t tag;
    bool reject, requeue;
} tagged;

typedef struct amqp_transport {
    cel_transport base;
    cel_url url;
    const cel_tls *tls; /* cfg->broker_use_ssl; the config outlives us */
    bool consume;
    int prefetch;
    size_t max_body; /* cfg->max_message_size: a larger body is not copied on */
    char **queues;
    int nqueues;
    char **ctags; /* consumer tag per queue */
    /* Per queue: exchange, its type and the binding key add_consumer gave
     * (NULL: Celery's default, exchange and key = the queue, direct). */
    char **qx, **qtype, **qrk;
    char **declared; /* queues declared on the publishing connection */
    size_t ndeclared;
    cel_aconn *a;   /* consuming connection */
    cel_aconn *pub; /* publishing connection (confirm mode), lazily */
    cel_aconn *ev;  /* events: no confirms, as Celery's event dispatcher */
    unsigned gen;   /* connection generation, in every delivery tag */
    cel_delivery *pending;
    size_t npending, cappending;
    tagged *out; /* acks and rejects waiting for flush */
    size_t nout, capout;
    /* Ack coalescing: every tag <= `settled` has been acked or rejected on
     * this channel; `above` holds the settled tags beyond it (sorted). */
    uint64_t settled;
    uint64_t *above;
    size_t nabove, capabove;
    /* Remote control: queue <nodename>.celery.pidbox, consumed no_ack. */
    char *pidbox_q, *pidbox_ctag;
    cel_delivery *ctl;
    size_t nctl, capctl;
    bool waiting;
    double down_since, next_retry;
    int retries;
} amqp_transport;

static void went_down(amqp_transport *t, const char *why)
{
    if (t->down_since == 0) {
        t->down_since = cel_monotonic();
        cel_error("consumer: Connection to broker lost: %s. Trying to re-establish the "
                  "connection...",
                  why);
    }
    /* Unacked deliveries go back to the queue with the connection; ours are
     * dropped, and acks for them are meaningless now. */
    for (size_t i = 0; i < t->npending; i++)
        cel_delivery_free(&t->pending[i]);
    t->npending = 0;
    t->nout = 0;
    t->settled = 0; /* a new channel numbers its deliveries from 1 */
    t->nabove = 0;
    cel_aconn_abort(t->a);
    t->a = NULL;
    t->gen++;
    t->waiting = false;
}

static int check_reply(cel_aconn *a, const char *what, char *err, size_t errlen)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(a->c);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    char why[256];
    snprintf(err, errlen, "%s: %s", what, cel_aconn_error(r, why, sizeof why));
    return -1;
}

/* Declares exchange `x` (durable, of `type`), queue `q` (durable) and the
 * binding with key `rk` on connection `a`, as kombu's Queue.declare does
 * for a queue Celery creates. */
static int declare_queue_as(cel_aconn *a, const char *q, const char *x, const char *type,
                            const char *rk, char *err, size_t errlen)
{
    amqp_exchange_declare(a->c, CEL_ACH, cel_abytes(x), cel_abytes(type), 0, 1, 0, 0,
                          amqp_empty_table);
    if (check_reply(a, "exchange.declare", err, errlen) < 0)
        return -1;
    amqp_queue_declare(a->c, CEL_ACH, cel_abytes(q), 0, 1, 0, 0, amqp_empty_table);
    if (check_reply(a, "queue.declare", err, errlen) < 0)
        return -1;
    amqp_queue_bind(a->c, CEL_ACH, cel_abytes(q), cel_abytes(x), cel_abytes(rk), amqp_empty_table);
    return check_reply(a, "queue.bind", err, errlen);
}

/* Celery's default for a queue: a direct exchange and a key named after it. */
static int declare_queue(cel_aconn *a, const char *q, char *err, size_t errlen)
{
    return declare_queue_as(a, q, q, "direct", q, err, errlen);
}

/* Queue i of the consumer, with add_consumer's declaration if it had one. */
static int declare_consumed(amqp_transport *t, int i, char *err, size_t errlen)
{
    if (!t->qx[i])
        return declare_queue(t->a, t->queues[i], err, errlen);
    return declare_queue_as(t->a, t->queues[i], t->qx[i], t->qtype[i], t->qrk[i], err, errlen);
}

/* basic.consume of queue i; its consumer tag is kept to route deliveries. */
static int consume_queue(amqp_transport *t, int i, char *err, size_t errlen)
{
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(t->a->c, CEL_ACH, cel_abytes(t->queues[i]),
                                                     amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    if (check_reply(t->a, "basic.consume", err, errlen) < 0 || !ok)
        return -1;
    free(t->ctags[i]);
    t->ctags[i] = strndup(ok->consumer_tag.bytes, ok->consumer_tag.len);
    return 0;
}

/* Celery's pidbox topology (§4.1), exactly, since a mismatch closes the
 * channel: fanout exchange `celery.pidbox` (not durable), queue
 * `<nodename>.celery.pidbox` (not durable, auto-delete, x-expires 10 s,
 * x-message-ttl 300 s), consumed without acks as kombu's Mailbox does. */
static int declare_pidbox(amqp_transport *t, char *err, size_t errlen)
{
    amqp_exchange_declare(t->a->c, CEL_ACH, cel_abytes("celery.pidbox"), cel_abytes("fanout"), 0,
                          0, 0, 0, amqp_empty_table);
    if (check_reply(t->a, "exchange.declare celery.pidbox", err, errlen) < 0)
        return -1;
    amqp_table_entry_t args[2];
    args[0].key = amqp_cstring_bytes("x-expires");
    args[0].value.kind = AMQP_FIELD_KIND_I32;
    args[0].value.value.i32 = 10000;
    args[1].key = amqp_cstring_bytes("x-message-ttl");
    args[1].value.kind = AMQP_FIELD_KIND_I32;
    args[1].value.value.i32 = 300000;
    amqp_table_t table = {.num_entries = 2, .entries = args};
    amqp_queue_declare(t->a->c, CEL_ACH, cel_abytes(t->pidbox_q), 0, 0, 0, 1, table);
    if (check_reply(t->a, "queue.declare pidbox", err, errlen) < 0)
        return -1;
    amqp_queue_bind(t->a->c, CEL_ACH, cel_abytes(t->pidbox_q), cel_abytes("celery.pidbox"),
                    amqp_empty_bytes, amqp_empty_table);
    if (check_reply(t->a, "queue.bind pidbox", err, errlen) < 0)
        return -1;
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(t->a->c, CEL_ACH, cel_abytes(t->pidbox_q),
                                                     amqp_empty_bytes, 0, 1, 0, amqp_empty_table);
    if (check_reply(t->a, "basic.consume pidbox", err, errlen) < 0 || !ok)
        return -1;
    free(t->pidbox_ctag);
    t->pidbox_ctag = strndup(ok->consumer_tag.bytes, ok->consumer_tag.len);
    return 0;
}

/* Opens the consuming connection: declare, qos, consume. */
static int connect_consumer(amqp_transport *t, char *err, size_t errlen)
{
    t->a = cel_aconn_open(&t->url, t->tls, BROKER_HEARTBEAT, false, CONNECT_TIMEOUT, err, errlen);
    if (!t->a)
        return -1;
    for (int i = 0; i < t->nqueues; i++)
        if (declare_consumed(t, i, err, errlen) < 0)
            goto fail;
    if (!t->consume)
        return 0;
    /* Celery: prefetch_count = concurrency × multiplier, global (§4.3).  0
     * (unlimited) is AMQP's "no limit" too. */
    amqp_basic_qos(t->a->c, CEL_ACH, 0, (uint16_t)(t->prefetch > 65535 ? 0 : t->prefetch), 1);
    if (check_reply(t->a, "basic.qos", err, errlen) < 0)
        goto fail;
    for (int i = 0; i < t->nqueues; i++)
        if (consume_queue(t, i, err, errlen) < 0)
            goto fail;
    if (t->pidbox_q && declare_pidbox(t, err, errlen) < 0)
        goto fail;
    cel_aconn_sent(t->a);
    return 0;
fail:
    cel_aconn_abort(t->a);
    t->a = NULL;
    return -1;
}

/* Reconnects when down and the backoff allows.  0 = connected. */
static int ensure_up(amqp_transport *t)
{
    if (t->a)
        return 0;
    double now = cel_monotonic();
    if (now < t->next_retry)
        return -1;
    char err[512];
    if (connect_consumer(t, err, sizeof err) < 0) {
        t->retries++;
        double delay = t->retries < 15 ? 2.0 * t->retries : 30.0;
        t->next_retry = now + delay;
        cel_debug("broker: reconnect failed (%s); next try in %.0f s", err, delay);
        return -1;
    }
    cel_warn("consumer: Connected to broker again after %.1f s", now - t->down_since);
    cel_broker_reconnects++;
    t->down_since = 0;
    t->retries = 0;
    return 0;
}

static const char *queue_of(const amqp_transport *t, amqp_bytes_t ctag)
{
    for (int i = 0; i < t->nqueues; i++)
        if (t->ctags[i] && strlen(t->ctags[i]) == ctag.len &&
            memcmp(t->ctags[i], ctag.bytes, ctag.len) == 0)
            return t->queues[i];
    return t->nqueues ? t->queues[0] : "";
}

static json_t *bytes_str(amqp_bytes_t b)
{
    json_t *s = json_stringn(b.bytes, b.len);
    return s ? s : json_null(); /* not UTF-8: treated as absent */
}

/* The kombu-Redis-shaped envelope for one delivery. */
static char *envelope_of(amqp_transport *t, const amqp_envelope_t *e, size_t *len)
{
    const amqp_basic_properties_t *p = &e->message.properties;
    json_t *env = json_object(), *props = json_object(), *di = json_object();
    json_t *headers = p->_flags & AMQP_BASIC_HEADERS_FLAG ? cel_amqp_table_to_json(&p->headers)
                                                          : json_object();
    if (!headers && (p->_flags & AMQP_BASIC_HEADERS_FLAG))
        /* Nested too deep to convert: not an object, so the worker drops the
         * message as malformed (and acks it) instead of it staying unacked. */
        headers = json_string("unreadable header table");
    /* An oversized body is left out (the worker refuses the message from
     * its headers and size) instead of being copied three more times. */
    bool big = t->max_body && e->message.body.len > t->max_body;
    char *b64 = cel_b64_encode(e->message.body.bytes, big ? 0 : e->message.body.len, NULL);
    char tag[48];
    snprintf(tag, sizeof tag, "%u:%" PRIu64, t->gen, e->delivery_tag);
    char *text = NULL;
    if (!env || !props || !di || !headers || !b64)
        goto done;
    json_object_set_new(env, "body", json_string(b64));
    if (big) /* read by the worker's size check (core/message.h) */
        json_object_set_new(env, "x-celeriac-size",
                            json_integer((json_int_t)e->message.body.len));
    if (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)
        json_object_set_new(env, "content-type", bytes_str(p->content_type));
    if (p->_flags & AMQP_BASIC_CONTENT_ENCODING_FLAG)
        json_object_set_new(env, "content-encoding", bytes_str(p->content_encoding));
    json_object_set(env, "headers", headers);
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG)
        json_object_set_new(props, "correlation_id", bytes_str(p->correlation_id));
    if (p->_flags & AMQP_BASIC_REPLY_TO_FLAG)
        json_object_set_new(props, "reply_to", bytes_str(p->reply_to));
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
        json_object_set_new(props, "delivery_mode", json_integer(p->delivery_mode));
    json_object_set_new(di, "exchange", json_stringn(e->exchange.bytes, e->exchange.len));
    json_object_set_new(di, "routing_key",
                        json_stringn(e->routing_key.bytes, e->routing_key.len));
    if (e->redelivered)
        json_object_set_new(di, "redelivered", json_true());
    json_object_set(props, "delivery_info", di);
    json_object_set_new(props, "priority",
                        json_integer(p->_flags & AMQP_BASIC_PRIORITY_FLAG ? p->priority : 0));
    json_object_set_new(props, "body_encoding", json_string("base64"));
    json_object_set_new(props, "delivery_tag", json_string(tag));
    json_object_set(env, "properties", props);
    text = json_dumps(env, JSON_ENSURE_ASCII);
    if (text)
        *len = strlen(text);
done:
    free(b64);
    json_decref(headers);
    json_decref(di);
    json_decref(props);
    json_decref(env);
    return text;
}

static int keep(amqp_transport *t, const amqp_envelope_t *e)
{
    if (t->pidbox_ctag && strlen(t->pidbox_ctag) == e->consumer_tag.len &&
        memcmp(t->pidbox_ctag, e->consumer_tag.bytes, e->consumer_tag.len) == 0) {
        /* A remote-control request (no_ack): kept for control_read. */
        if (cel_grow(&t->ctl, &t->capctl, t->nctl, sizeof *t->ctl, 4) < 0)
            return -1;
        cel_delivery d = {0};
        d.raw = envelope_of(t, e, &d.len);
        if (!d.raw)
            return -1;
        t->ctl[t->nctl++] = d;
        return 0;
    }
    if (cel_grow(&t->pending, &t->cappending, t->npending, sizeof *t->pending, 16) < 0)
        return -1;
    cel_delivery d = {0};
    d.raw = envelope_of(t, e, &d.len);
    d.queue = strdup(queue_of(t, e->consumer_tag));
    if (!d.raw || !d.queue) {
        cel_delivery_free(&d);
        return -1;
    }
    t->pending[t->npending++] = d;
    return 0;
}

/* A frame other than a delivery: heartbeats are the library's; a closed
 * channel or connection, or a cancelled consumer, ends the connection. */
static int other_frame(amqp_transport *t)
{
    amqp_frame_t f;
    struct timeval tv = {0, 0};
    int st = amqp_simple_wait_frame_noblock(t->a->c, &f, &tv);
    if (st == AMQP_STATUS_TIMEOUT)
        return 0;
    if (st != AMQP_STATUS_OK) {
        went_down(t, amqp_error_string2(st));
        return -1;
    }
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    switch (f.payload.method.id) {
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                              .reply = f.payload.method};
        char why[256];
        went_down(t, cel_aconn_error(r, why, sizeof why));
        return -1;
    }
    case AMQP_BASIC_CANCEL_METHOD:
        /* The queue was deleted under us: declare it again on a new
         * connection, as kombu's consumer does after a cancel notify. */
        went_down(t, "the broker cancelled the consumer (queue deleted?)");
        return -1;
    default:
        return 0;
    }
}

/* Reads every frame available now; deliveries go to `pending`. */
static int service(amqp_transport *t)
{
    if (ensure_up(t) < 0)
        return -1;
    if (cel_aconn_heartbeat(t->a) < 0) {
        went_down(t, "heartbeat send failed");
        return -1;
    }
    for (;;) {
        amqp_maybe_release_buffers(t->a->c);
        amqp_envelope_t e;
        struct timeval tv = {0, 0};
        amqp_rpc_reply_t r = amqp_consume_message(t->a->c, &e, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            int rc = keep(t, &e);
            amqp_destroy_envelope(&e);
            if (rc < 0)
                cel_error("broker: out of memory holding a delivery; it will be redelivered");
            continue;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            return 0;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (other_frame(t) < 0)
                return -1;
            continue;
        }
        char why[256];
        went_down(t, cel_aconn_error(r, why, sizeof why));
        return -1;
    }
}

static int take(amqp_transport *t, int max, cel_delivery *out)
{
    int n = 0;
    while (n < max && (size_t)n < t->npending) {
        out[n] = t->pending[n];
        n++;
    }
    if (n > 0) /* pending may still be NULL: memmove must not see it */
        memmove(t->pending, t->pending + n, (t->npending - (size_t)n) * sizeof *t->pending);
    t->npending -= (size_t)n;
    return n;
}

/* Inserts `tag` into the sorted set `above` (no duplicates). */
static int above_add(amqp_transport *t, uint64_t tag)
{
    size_t i = t->nabove;
    while (i > 0 && t->above[i - 1] > tag)
        i--;
    if (i > 0 && t->above[i - 1] == tag)
        return 0;
    if (cel_grow(&t->above, &t->capabove, t->nabove, sizeof *t->above, 64) < 0)
        return -1;
    memmove(t->above + i + 1, t->above + i, (t->nabove - i) * sizeof *t->above);
    t->above[i] = tag;
    t->nabove++;
    return 0;
}

/* Sends the queued acks and rejects.
 *
 * Why coalesce: one basic.ack frame per message costs RabbitMQ more than the
 * delivery itself.  Measured here with a bare C consumer at prefetch 8:
 * 12-14k msg/s acking each message, 33-35k acking every fourth with
 * multiple=true.  Tasks start (and are acked) almost in delivery order, so
 * the acks of a turn usually close a contiguous range of tags: one
 * ack(multiple=true) for the highest tag acked in the turn covers it.  Only tags that are
 * all settled are covered — a message still held (reserved, ETA, running
 * with acks_late) is never acked by a range; acks beyond a gap go out one
 * by one, as before.  Rejects always go singly, before the range ack. */
static int send_out(amqp_transport *t)
{
    if (!t->a) {
        t->nout = 0;
        return -1;
    }
    if (!t->nout)
        return 0;
    for (size_t i = 0; i < t->nout; i++) {
        if (!t->out[i].reject)
            continue;
        int st = amqp_basic_reject(t->a->c, CEL_ACH, t->out[i].tag, t->out[i].requeue);
        if (st != AMQP_STATUS_OK) {
            went_down(t, amqp_error_string2(st));
            return -1;
        }
    }
    bool tracked = true;
    for (size_t i = 0; i < t->nout && tracked; i++)
        if (t->out[i].tag > t->settled && above_add(t, t->out[i].tag) < 0)
            tracked = false;
    uint64_t from = t->settled;
    size_t k = 0;
    while (k < t->nabove && t->above[k] == t->settled + 1)
        t->settled = t->above[k++];
    if (k) {
        memmove(t->above, t->above + k, (t->nabove - k) * sizeof *t->above);
        t->nabove -= k;
    }
    /* The range ack names the highest tag acked in this turn: RabbitMQ
     * refuses (406 unknown delivery tag, closing the channel) a multiple
     * ack whose own tag is no longer outstanding — one acked singly in an
     * earlier turn, or rejected — while the tags below it that are already
     * settled are simply skipped. */
    uint64_t hi = 0;
    for (size_t i = 0; i < t->nout && tracked; i++)
        if (!t->out[i].reject && t->out[i].tag > from && t->out[i].tag <= t->settled &&
            t->out[i].tag > hi)
            hi = t->out[i].tag;
    bool range = hi > 0;
    for (size_t i = 0; i < t->nout; i++) {
        if (t->out[i].reject || (tracked && t->out[i].tag <= t->settled))
            continue;
        int st = amqp_basic_ack(t->a->c, CEL_ACH, t->out[i].tag, 0);
        if (st != AMQP_STATUS_OK) {
            went_down(t, amqp_error_string2(st));
            return -1;
        }
    }
    if (range) {
        int st = amqp_basic_ack(t->a->c, CEL_ACH, hi, 1);
        if (st != AMQP_STATUS_OK) {
            went_down(t, amqp_error_string2(st));
            return -1;
        }
    }
    cel_aconn_sent(t->a);
    t->nout = 0;
    return 0;
}

static int at_fetch(cel_transport *base, int max, cel_delivery *out)
{
    amqp_transport *t = (amqp_transport *)base;
    send_out(t);
    if ((size_t)max > t->npending)
        service(t);
    return take(t, max, out);
}

static int at_wait_start(cel_transport *base, double timeout_s)
{
    amqp_transport *t = (amqp_transport *)base;
    (void)timeout_s;
    if (!t->a)
        return -1;
    t->waiting = true;
    return cel_aconn_fd(t->a);
}

static int at_wait_ready(cel_transport *base, cel_delivery *out)
{
    amqp_transport *t = (amqp_transport *)base;
    service(t);
    if (!t->npending)
        return t->a ? 0 : -1;
    t->waiting = false;
    return take(t, 1, out);
}

/* Deliveries already read (by tick, or with an earlier frame) end the wait:
 * poll would not show them, the socket being drained. */
static bool at_waiting(const cel_transport *base)
{
    const amqp_transport *t = (const amqp_transport *)base;
    return t->waiting && t->a && t->npending == 0;
}

static void at_wait_cancel(cel_transport *base) { ((amqp_transport *)base)->waiting = false; }

static int at_wait_fd(const cel_transport *base)
{
    const amqp_transport *t = (const amqp_transport *)base;
    return t->a ? cel_aconn_fd(t->a) : -1;
}

/* "gen:tag" -> tag, or false for another connection's (or a bad) tag. */
static bool parse_tag(const amqp_transport *t, const char *s, uint64_t *tag)
{
    unsigned gen;
    char tail;
    if (sscanf(s, "%u:%" SCNu64 "%c", &gen, tag, &tail) != 2)
        return false;
    return gen == t->gen && t->a;
}

static int queue_out(amqp_transport *t, const char *tag, bool reject, bool requeue)
{
    uint64_t n;
    if (!parse_tag(t, tag, &n)) {
        cel_debug("broker: %s of %s dropped: its connection is gone (the broker redelivers it)",
                  reject ? "reject" : "ack", tag);
        return 0;
    }
    if (cel_grow(&t->out, &t->capout, t->nout, sizeof *t->out, 64) < 0)
        return -1;
    t->out[t->nout++] = (tagged){n, reject, requeue};
    return 0;
}

static int at_ack(cel_transport *base, const char *tag)
{
    return queue_out((amqp_transport *)base, tag, false, false);
}

static int at_reject(cel_transport *base, const char *tag, bool requeue)
{
    return queue_out((amqp_transport *)base, tag, true, requeue);
}

/* Warm shutdown: a held message goes back to its queue, redelivered. */
static int at_restore(cel_transport *base, const char *tag, const char *raw, size_t len)
{
    (void)raw;
    (void)len;
    amqp_transport *t = (amqp_transport *)base;
    if (queue_out(t, tag, true, true) < 0)
        return -1;
    return send_out(t);
}

static int at_flush(cel_transport *base)
{
    amqp_transport *t = (amqp_transport *)base;
    return send_out(t);
}

static int at_tick(cel_transport *base)
{
    amqp_transport *t = (amqp_transport *)base;
    return service(t);
}

static int at_qos(cel_transport *base, int prefetch)
{
    amqp_transport *t = (amqp_transport *)base;
    t->prefetch = prefetch; /* a reconnect declares the current window */
    if (!t->a || !t->consume)
        return -1;
    amqp_basic_qos(t->a->c, CEL_ACH, 0, (uint16_t)(prefetch > 65535 ? 0 : prefetch), 1);
    char err[256];
    if (check_reply(t->a, "basic.qos", err, sizeof err) < 0) {
        went_down(t, err);
        return -1;
    }
    cel_aconn_sent(t->a);
    /* Deliveries that came in while waiting for qos-ok are queued in the
     * library, where poll can't see them: take them now. */
    return service(t);
}

/* Grows the per-queue arrays by one (NULL) slot; -1 when out of memory. */
static int queue_slot(amqp_transport *t)
{
    char ***arrs[5] = {&t->queues, &t->ctags, &t->qx, &t->qtype, &t->qrk};
    for (int k = 0; k < 5; k++) {
        char **a = realloc(*arrs[k], (size_t)(t->nqueues + 2) * sizeof *a);
        if (!a)
            return -1;
        a[t->nqueues] = a[t->nqueues + 1] = NULL;
        *arrs[k] = a;
    }
    return 0;
}

static int at_cancel_queue(cel_transport *base, const char *queue);

static int at_add_queue(cel_transport *base, const char *queue, const char *exchange,
                        const char *type, const char *routing_key, char *err, size_t errlen)
{
    amqp_transport *t = (amqp_transport *)base;
    if (queue_slot(t) < 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int i = t->nqueues;
    t->queues[i] = strdup(queue);
    t->qx[i] = strdup(exchange);
    t->qtype[i] = strdup(type);
    t->qrk[i] = strdup(routing_key);
    if (!t->queues[i] || !t->qx[i] || !t->qtype[i] || !t->qrk[i]) {
        free(t->queues[i]);
        free(t->qx[i]);
        free(t->qtype[i]);
        free(t->qrk[i]);
        t->queues[i] = t->qx[i] = t->qtype[i] = t->qrk[i] = NULL;
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    t->nqueues++;
    if (!t->a)
        return 0; /* down: the reconnect declares and consumes it */
    /* A refused declaration (an exchange of another type, say) closes the
     * channel.  The queue is forgotten first: redeclared at every
     * reconnect, it would keep the worker from consuming anything. */
    if (declare_consumed(t, i, err, errlen) < 0 || consume_queue(t, i, err, errlen) < 0) {
        went_down(t, err);
        at_cancel_queue(base, queue); /* no connection now: nothing is sent */
        return -1;
    }
    cel_aconn_sent(t->a);
    /* Deliveries that came in during the RPCs wait in the library. */
    service(t);
    return 0;
}

static int at_cancel_queue(cel_transport *base, const char *queue)
{
    amqp_transport *t = (amqp_transport *)base;
    int i = 0;
    while (i < t->nqueues && strcmp(t->queues[i], queue))
        i++;
    if (i == t->nqueues)
        return -1;
    if (t->a && t->ctags[i]) {
        amqp_basic_cancel(t->a->c, CEL_ACH, cel_abytes(t->ctags[i]));
        char err[256];
        if (check_reply(t->a, "basic.cancel", err, sizeof err) < 0)
            went_down(t, err);
        else
            cel_aconn_sent(t->a);
    }
    free(t->queues[i]);
    free(t->ctags[i]);
    free(t->qx[i]);
    free(t->qtype[i]);
    free(t->qrk[i]);
    char **arrs[5] = {t->queues, t->ctags, t->qx, t->qtype, t->qrk};
    for (int k = 0; k < 5; k++)
        memmove(&arrs[k][i], &arrs[k][i + 1], (size_t)(t->nqueues - i) * sizeof *arrs[k]);
    t->nqueues--;
    if (t->a)
        service(t);
    return 0;
}

static int at_restore_visible(cel_transport *base)
{
    (void)base;
    return 0; /* the broker redelivers on its own */
}

static void forget_declared(amqp_transport *t);

/* Declares `queue` on the publishing connection the first time it is used
 * there (kombu's producer declares the task's queue too). */
static int declare_once(amqp_transport *t, const char *queue, char *err, size_t errlen)
{
    for (size_t i = 0; i < t->ndeclared; i++)
        if (strcmp(t->declared[i], queue) == 0)
            return 0;
    if (declare_queue(t->pub, queue, err, errlen) < 0)
        return -1;
    char **d = realloc(t->declared, (t->ndeclared + 1) * sizeof *d);
    if (!d || !(d[t->ndeclared] = strdup(queue))) {
        if (d)
            t->declared = d;
        return 0; /* only the memo is lost */
    }
    t->declared = d;
    t->ndeclared++;
    return 0;
}

/* Properties of a transient JSON message (events, remote-control replies),
 * as kombu sends them: content type/encoding, headers `h`, delivery_mode 1. */
static amqp_basic_properties_t transient_json(amqp_table_entry_t *h, int n)
{
    amqp_basic_properties_t props = {0};
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                   AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                   AMQP_BASIC_PRIORITY_FLAG;
    props.content_type = cel_abytes("application/json");
    props.content_encoding = cel_abytes("utf-8");
    props.delivery_mode = 1;
    props.priority = 0;
    props.headers = (amqp_table_t){.num_entries = n, .entries = h};
    return props;
}

/* Events go to the `celeryev` topic exchange (durable, as Celery declares
 * it) on a connection of their own without confirms: fire and forget, as
 * Celery's dispatcher, so a burst of events never waits on the broker. */
static int at_publish_event(cel_transport *base, const char *routing_key, const char *body,
                            size_t len, const char *hostname)
{
    amqp_transport *t = (amqp_transport *)base;
    char err[512];
    if (!t->ev) {
        t->ev = cel_aconn_open(&t->url, t->tls, 0, false, CONNECT_TIMEOUT, err, sizeof err);
        if (!t->ev)
            return -1;
        amqp_exchange_declare(t->ev->c, CEL_ACH, cel_abytes("celeryev"), cel_abytes("topic"), 0,
                              1, 0, 0, amqp_empty_table);
        if (check_reply(t->ev, "exchange.declare celeryev", err, sizeof err) < 0) {
            cel_error("events: %s", err);
            cel_aconn_abort(t->ev);
            t->ev = NULL;
            return -1;
        }
    }
    amqp_table_entry_t h[1];
    h[0].key = amqp_cstring_bytes("hostname");
    h[0].value.kind = AMQP_FIELD_KIND_UTF8;
    h[0].value.value.bytes = cel_abytes(hostname);
    amqp_basic_properties_t props = transient_json(h, 1);
    amqp_bytes_t b = {.len = len, .bytes = (void *)body};
    int st = amqp_basic_publish(t->ev->c, CEL_ACH, cel_abytes("celeryev"),
                                cel_abytes(routing_key), 0, 0, &props, b);
    if (st != AMQP_STATUS_OK) {
        cel_aconn_abort(t->ev);
        t->ev = NULL;
        return -1;
    }
    return 0;
}

static int at_control_fd(cel_transport *base)
{
    (void)base;
    return -1; /* requests arrive on the consumer's socket, read by tick/fetch */
}

static int at_control_read(cel_transport *base, cel_delivery *out, int max, bool readable)
{
    amqp_transport *t = (amqp_transport *)base;
    (void)readable;
    int n = 0;
    while (n < max && (size_t)n < t->nctl) {
        out[n] = t->ctl[n];
        n++;
    }
    if (n > 0)
        memmove(t->ctl, t->ctl + n, (t->nctl - (size_t)n) * sizeof *t->ctl);
    t->nctl -= (size_t)n;
    return n;
}

/* A reply to the client's exchange (`reply.celery.pidbox`, direct) with
 * routing key = its oid; transient; unroutable replies (the client gave
 * up) are dropped, as kombu's are. */
static int at_control_reply(cel_transport *base, const char *exchange, const char *routing_key,
                            const char *ticket, long long clock, const char *body, size_t len)
{
    amqp_transport *t = (amqp_transport *)base;
    char err[512];
    if (!t->pub) {
        t->pub = cel_aconn_open(&t->url, t->tls, 0, true, CONNECT_TIMEOUT, err, sizeof err);
        if (!t->pub) {
            cel_error("remote control: cannot reply: %s", err);
            return -1;
        }
    }
    amqp_table_entry_t h[2];
    h[0].key = amqp_cstring_bytes("ticket");
    h[0].value.kind = AMQP_FIELD_KIND_UTF8;
    h[0].value.value.bytes = cel_abytes(ticket);
    h[1].key = amqp_cstring_bytes("clock");
    h[1].value.kind = AMQP_FIELD_KIND_I64;
    h[1].value.value.i64 = clock;
    amqp_basic_properties_t props = transient_json(h, 2);
    cel_apub st = cel_aconn_publish(t->pub, exchange, routing_key, &props, body, len, false,
                                    PUBLISH_TIMEOUT, err, sizeof err);
    if (st == CEL_APUB_ERROR) {
        cel_error("remote control: reply failed: %s", err);
        cel_aconn_abort(t->pub);
        t->pub = NULL;
        forget_declared(t);
        return -1;
    }
    return 0;
}

/* Publishes a Redis-shaped envelope as an AMQP message to `queue` through
 * the default exchange. */
static int at_publish(cel_transport *base, const char *queue, int priority, const char *raw,
                      size_t len)
{
    amqp_transport *t = (amqp_transport *)base;
    json_error_t jerr;
    json_t *env = json_loadb(raw, len, JSON_ALLOW_NUL, &jerr);
    json_t *h = json_object_get(env, "headers"), *p = json_object_get(env, "properties");
    const char *b64 = json_string_value(json_object_get(env, "body"));
    if (!json_is_object(h) || !json_is_object(p) || !b64) {
        cel_error("broker: cannot publish a malformed envelope");
        json_decref(env);
        return -1;
    }
    size_t blen = 0;
    char *body = cel_b64_decode(b64, strlen(b64), &blen);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_basic_properties_t props = {0};
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                   AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                   AMQP_BASIC_PRIORITY_FLAG;
    const char *ct = json_string_value(json_object_get(env, "content-type"));
    const char *ce = json_string_value(json_object_get(env, "content-encoding"));
    props.content_type = cel_abytes(ct ? ct : "application/json");
    props.content_encoding = cel_abytes(ce ? ce : "utf-8");
    props.delivery_mode = 2;
    props.priority = (uint8_t)(priority < 0 ? 0 : priority > 255 ? 255 : priority);
    const char *corr = json_string_value(json_object_get(p, "correlation_id"));
    const char *reply = json_string_value(json_object_get(p, "reply_to"));
    if (corr) {
        props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        props.correlation_id = cel_abytes(corr);
    }
    if (reply && *reply) {
        props._flags |= AMQP_BASIC_REPLY_TO_FLAG;
        props.reply_to = cel_abytes(reply);
    }
    int rc = -1;
    if (!body || cel_json_to_amqp_table(h, &pool, &props.headers) < 0) {
        cel_error("broker: cannot encode a message to publish");
        goto done;
    }
    for (int attempt = 0; attempt < 3 && rc < 0; attempt++) {
        char err[512];
        if (!t->pub) {
            t->pub = cel_aconn_open(&t->url, t->tls, 0, true, CONNECT_TIMEOUT, err, sizeof err);
            if (!t->pub) {
                cel_error("broker: cannot publish to %s: %s", queue, err);
                continue;
            }
        }
        if (declare_once(t, queue, err, sizeof err) < 0) {
            cel_error("broker: cannot declare queue %s: %s", queue, err);
            cel_aconn_abort(t->pub);
            t->pub = NULL;
            continue;
        }
        cel_apub st = cel_aconn_publish(t->pub, "", queue, &props, body, blen, true,
                                        PUBLISH_TIMEOUT, err, sizeof err);
        if (st == CEL_APUB_OK) {
            rc = 0;
        } else {
            cel_error("broker: publishing to %s failed (%s); %s", queue, err,
                      attempt < 2 ? "retrying" : "giving up");
            if (st == CEL_APUB_ERROR) {
                cel_aconn_abort(t->pub);
                t->pub = NULL;
                forget_declared(t);
            }
        }
    }
done:
    empty_amqp_pool(&pool);
    free(body);
    json_decref(env);
    return rc;
}

static void forget_declared(amqp_transport *t)
{
    for (size_t i = 0; i < t->ndeclared; i++)
        free(t->declared[i]);
    t->ndeclared = 0;
}

static void at_close(cel_transport *base)
{
    amqp_transport *t = (amqp_transport *)base;
    send_out(t);
    for (size_t i = 0; i < t->npending; i++) {
        /* Fetched but never handed to the loop: back to the queue. */
        cel_delivery_free(&t->pending[i]);
    }
    free(t->pending);
    cel_aconn_close(t->a);
    cel_aconn_close(t->pub);
    cel_aconn_close(t->ev);
    for (int i = 0; i < t->nqueues; i++) {
        free(t->queues[i]);
        free(t->ctags[i]);
        free(t->qx[i]);
        free(t->qtype[i]);
        free(t->qrk[i]);
    }
    free(t->queues);
    free(t->ctags);
    free(t->qx);
    free(t->qtype);
    free(t->qrk);
    forget_declared(t);
    free(t->declared);
    free(t->out);
    free(t->above);
    for (size_t i = 0; i < t->nctl; i++)
        cel_delivery_free(&t->ctl[i]);
    free(t->ctl);
    free(t->pidbox_q);
    free(t->pidbox_ctag);
    cel_url_free(&t->url);
    free(t);
}

static const cel_transport_ops amqp_ops = {
    .fetch = at_fetch,
    .wait_start = at_wait_start,
    .wait_ready = at_wait_ready,
    .waiting = at_waiting,
    .wait_cancel = at_wait_cancel,
    .wait_fd = at_wait_fd,
    .ack = at_ack,
    .reject = at_reject,
    .restore = at_restore,
    .flush = at_flush,
    .restore_visible = at_restore_visible,
    .publish = at_publish,
    .tick = at_tick,
    .qos = at_qos,
    .add_queue = at_add_queue,
    .cancel_queue = at_cancel_queue,
    .control_fd = at_control_fd,
    .control_read = at_control_read,
    .control_reply = at_control_reply,
    .publish_event = at_publish_event,
    .close = at_close,
};

cel_transport *cel_amqp_plugin_transport_open(const cel_url *u, const cel_config *cfg, bool consume,
                                              char *err, size_t errlen)
{
    amqp_transport *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->base.ops = &amqp_ops;
    t->consume = consume;
    t->tls = &cfg->broker_use_ssl;
    t->max_body = cfg->max_message_size;
    t->url = *u;
    t->url.host = u->host ? strdup(u->host) : NULL;
    t->url.user = u->user ? strdup(u->user) : NULL;
    t->url.password = u->password ? strdup(u->password) : NULL;
    t->url.path = u->path ? strdup(u->path) : NULL;
    int conc = cfg->pool == CEL_POOL_SOLO ? 1 : cfg->concurrency;
    t->prefetch = cfg->prefetch_multiplier > 0 ? conc * cfg->prefetch_multiplier : 0;
    for (char **q = cfg->queues; q && *q; q++)
        t->nqueues++;
    t->queues = calloc((size_t)t->nqueues + 1, sizeof *t->queues);
    t->ctags = calloc((size_t)t->nqueues + 1, sizeof *t->ctags);
    t->qx = calloc((size_t)t->nqueues + 1, sizeof *t->qx);
    t->qtype = calloc((size_t)t->nqueues + 1, sizeof *t->qtype);
    t->qrk = calloc((size_t)t->nqueues + 1, sizeof *t->qrk);
    for (int i = 0; t->queues && i < t->nqueues; i++)
        t->queues[i] = strdup(cfg->queues[i]);
    if (!t->queues || !t->ctags || !t->qx || !t->qtype || !t->qrk) {
        snprintf(err, errlen, "out of memory");
        at_close(&t->base);
        return NULL;
    }
    if (consume && cfg->hostname && asprintf(&t->pidbox_q, "%s.celery.pidbox", cfg->hostname) < 0)
        t->pidbox_q = NULL;
    /* `celeriac call` publishes only: no consumer connection at all. */
    if (consume && connect_consumer(t, err, errlen) < 0) {
        at_close(&t->base);
        return NULL;
    }
    return &t->base;
}
