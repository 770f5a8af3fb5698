/* rpc.c — Celery's rpc:// result backend: each state is a message to the
 * client's reply queue.
 *
 * Wire shape (shared/docs/celery-wire-contract.md §3.5): basic.publish to
 * the default exchange with routing key = the task's `reply_to`, properties
 * content_type application/json, content_encoding utf-8, an empty headers
 * table, delivery_mode 1, priority 0, correlation_id = task id; the body is
 * {"task_id", "status", "result", "traceback", "children"} (no date_done).
 * The records arrive already in that text (exec.c builds them for_rpc).
 *
 * Why publisher confirms and `mandatory`: a result must not vanish because
 * the broker hiccuped, so anything but a confirm is retried on a new
 * connection — except a result whose reply queue is gone (the client left),
 * which the broker returns: Celery drops those silently, we drop them with
 * one log line.  The backend publishes on a connection of its own (the
 * broker URL's), as Celery's rpc backend publishes through a producer.
 */
#include "backend/backend.h"
#include "core/aconn.h"
#include "core/log.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_QUEUED 100000
#define PUBLISH_TIMEOUT 30.0

typedef struct rpc_pending {
    char *task_id, *reply_to, *meta;
    size_t len;
} rpc_pending;

typedef struct rpc_backend {
    cel_backend base;
    cel_url url; /* the broker's */
    const cel_tls *tls;
    cel_aconn *a;
    rpc_pending *q;
    size_t n, cap;
    double down_since;
} rpc_backend;

static void drop_front(rpc_backend *b, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(b->q[i].task_id);
        free(b->q[i].reply_to);
        free(b->q[i].meta);
    }
    if (count > 0) /* q may still be NULL: memmove must not see it */
        memmove(b->q, b->q + count, (b->n - count) * sizeof *b->q);
    b->n -= count;
}

static int rpc_store_raw(cel_backend *base, const char *task_id, const char *reply_to,
                         const char *meta, size_t len)
{
    rpc_backend *b = (rpc_backend *)base;
    if (!reply_to || !*reply_to) {
        /* Nobody can receive it: Celery publishes to nowhere too. */
        cel_debug("rpc backend: task %s has no reply_to; its state is not sent", task_id);
        return 0;
    }
    if (cel_grow(&b->q, &b->cap, b->n, sizeof *b->q, 64) < 0)
        return -1;
    rpc_pending p = {strdup(task_id), strdup(reply_to), malloc(len ? len : 1), len};
    if (!p.task_id || !p.reply_to || !p.meta) {
        free(p.task_id);
        free(p.reply_to);
        free(p.meta);
        return -1;
    }
    memcpy(p.meta, meta, len);
    b->q[b->n++] = p;
    return 0;
}

static int rpc_flush(cel_backend *base)
{
    rpc_backend *b = (rpc_backend *)base;
    size_t done = 0;
    int rc = 0;
    while (done < b->n) {
        char err[512];
        if (!b->a) {
            b->a = cel_aconn_open(&b->url, b->tls, 0, true, 5.0, err, sizeof err);
            if (!b->a) {
                if (b->down_since == 0) {
                    b->down_since = cel_monotonic();
                    cel_error("rpc backend: %s; results are kept and retried", err);
                }
                rc = -1;
                break;
            }
            if (b->down_since != 0) {
                cel_warn("rpc backend: reconnected after %.1f s",
                         cel_monotonic() - b->down_since);
                b->down_since = 0;
            }
        }
        rpc_pending *p = &b->q[done];
        amqp_basic_properties_t props = {
            ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                      AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                      AMQP_BASIC_PRIORITY_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG,
            .content_type = cel_abytes("application/json"),
            .content_encoding = cel_abytes("utf-8"),
            .headers = amqp_empty_table,
            .delivery_mode = 1,
            .priority = 0,
            .correlation_id = cel_abytes(p->task_id),
        };
        cel_apub st = cel_aconn_publish(b->a, "", p->reply_to, &props, p->meta, p->len, true,
                                        PUBLISH_TIMEOUT, err, sizeof err);
        if (st == CEL_APUB_OK) {
            done++;
        } else if (st == CEL_APUB_RETURNED) {
            cel_info("rpc backend: reply queue %s of task %s is gone; state dropped (%s)",
                     p->reply_to, p->task_id, err);
            done++;
        } else {
            cel_error("rpc backend: publishing the state of task %s failed: %s", p->task_id,
                      err);
            cel_aconn_abort(b->a);
            b->a = NULL;
            rc = -1;
            if (st == CEL_APUB_NACKED)
                continue; /* a fresh connection, the same record */
            break;
        }
    }
    drop_front(b, done);
    if (rc < 0 && b->n >= MAX_QUEUED) {
        cel_error("rpc backend: unreachable with %zu results queued; dropping them", b->n);
        drop_front(b, b->n);
    }
    return rc;
}

static void rpc_close(cel_backend *base)
{
    rpc_backend *b = (rpc_backend *)base;
    rpc_flush(base);
    if (b->n) {
        cel_error("rpc backend: still unreachable at shutdown; %zu result(s) not sent", b->n);
        drop_front(b, b->n);
    }
    cel_aconn_close(b->a);
    free(b->q);
    cel_url_free(&b->url);
    free(b);
}

static const cel_backend_ops rpc_ops = {
    .store_raw = rpc_store_raw,
    .flush = rpc_flush,
    .close = rpc_close,
};

cel_backend *cel_amqp_plugin_rpc_open(const cel_config *cfg, char *err, size_t errlen)
{
    cel_url u;
    if (cel_url_parse(cfg->broker_url, &u, err, errlen) < 0)
        return NULL;
    if (u.scheme != CEL_URL_AMQP && u.scheme != CEL_URL_AMQPS) {
        snprintf(err, errlen, "the rpc:// result backend needs an amqp:// broker");
        cel_url_free(&u);
        return NULL;
    }
    rpc_backend *b = calloc(1, sizeof *b);
    if (!b) {
        cel_url_free(&u);
        return NULL;
    }
    b->base.ops = &rpc_ops;
    b->base.for_rpc = true;
    b->url = u;
    b->tls = &cfg->broker_use_ssl;
    /* Connect now so a wrong URL or refused login shows at start-up; an
     * unreachable broker is an outage, retried at the first flush. */
    char e2[512];
    b->a = cel_aconn_open(&b->url, b->tls, 0, true, 5.0, e2, sizeof e2);
    if (!b->a) {
        b->down_since = cel_monotonic();
        cel_error("rpc backend: %s; results are kept and retried", e2);
    }
    return &b->base;
}
