/* worker.c — the consumer loop.
 *
 * One thread, one poll() loop in the parent process.  Each turn:
 *   1. take signals (self-pipe): TERM/INT = warm shutdown, QUIT or a second
 *      INT = cold, CHLD = reap pool processes;
 *   2. fetch up to the free prefetch budget without blocking; when the queues
 *      are empty, arm the transport's blocking wait (BRPOP) and poll its fd;
 *   3. hand due requests to idle pool processes (acking on start unless
 *      acks_late, as Celery does);
 *   4. flush the result backend, then the transport's acks — a result is
 *      stored before its acks_late message is acked;
 *   5. poll the signal pipe, the wait fd and the pool's sockets, with a
 *      timeout bounded by the next ETA and the visibility-restore timer.
 *
 * Every message the worker holds is a `request`: parsed once, kept until its
 * outcome is stored and its ack sent, or restored to the broker at shutdown.
 * The prefetch budget (concurrency × multiplier) counts every request held,
 * reserved or running.
 *
 * Remote control can change both ends at run time, as Celery's consumer:
 * pool_grow / pool_shrink resize the pool and move the prefetch window by
 * multiplier × n (Consumer._update_prefetch_count); add_consumer /
 * cancel_consumer change the consumed queues through the transport, and
 * `queues` below is what inspect active_queues reports.
 *
 * --autoscale MAX,MIN is Celery's Autoscaler without its thread: the pool
 * starts with MIN processes and the window is MAX × multiplier; on every
 * task received and every AUTOSCALE_KEEPALIVE seconds (30) the pool grows
 * to the requests held (not ETA-waiting), up to MAX, and — once
 * keepalive seconds have passed since the last growth — shrinks back
 * towards them, down to MIN (idle processes only, as pool_shrink).
 */
#include "worker/worker.h"
#include "backend/backend.h"
#include "broker/transport.h"
#include "control/control.h"
#include "events/events.h"
#include "metrics/metrics.h"
#include "core/log.h"
#include "core/message.h"
#include "core/util.h"
#include "worker/exec.h"
#include "worker/chord.h"
#include "worker/pool.h"
#include "worker/registry.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define FETCH_BATCH 64
#define MAX_POLLFDS 1024
#define UNLIMITED_PREFETCH 1000

/* RESERVED: held by the worker; SUBMITTED: in the pool's queue; RUNNING: a
 * process took it. */
typedef enum req_state { REQ_RESERVED, REQ_SUBMITTED, REQ_RUNNING } req_state;

typedef struct request {
    uint64_t job;
    req_state state;
    cel_message msg;
    cel_delivery d;       /* raw envelope, for restore */
    const cel_task_def *def;
    bool acks_late, track_started, ignore_result, reject_on_worker_lost;
    bool store_errors; /* failures stored: !ignore_result or store_errors_even_if_ignored */
    bool acked;
    double time_start;    /* monotonic */
    double time_start_epoch;
    double time_received; /* monotonic: queue wait for the metrics */
    pid_t pid;            /* the pool process running it */
    double soft_limit, hard_limit; /* seconds from the start; 0 = none */
    bool hard_is_int;     /* the limit came from the message as an integer */
    bool soft_sent;
    char *chord_part;     /* a chord header task's part, joined in finish() */
    size_t chord_len;
} request;

/* A task name's rate limit: kombu's TokenBucket with capacity 1, as
 * Celery's consumer keeps one per task type. */
typedef struct bucket {
    const cel_task_def *def;
    double tokens, last; /* last: monotonic time of the last refill */
} bucket;

/* A queue as add_consumer declared it (Celery's app.amqp.queues entry):
 * the -Q queues get Celery's defaults (exchange and key = the name, direct).
 * A cancelled queue keeps its entry, inactive, so a later add_consumer
 * reuses the declaration, as Celery finds it in app.amqp.queues. */
typedef struct wqueue {
    char *name, *exchange, *type, *routing_key; /* owned */
    bool active;
} wqueue;

typedef struct worker {
    cel_config *cfg;
    cel_control *ctl;     /* remote control: revoked ids, the Lamport clock */
    cel_events *ev;       /* monitoring events (worker-* always, task-* with -E) */
    cel_metrics *metrics; /* --metrics-port, or NULL */
    bool task_events;     /* -E, or enable_events/disable_events */
    double next_heartbeat; /* monotonic */
    unsigned long started; /* tasks a process took: the heartbeat's `processed` */
    struct task_total {
        const char *name; /* the registry's */
        unsigned long n;
    } *totals;            /* inspect stats' `total`: tasks started, per name */
    size_t ntotals, captotals;
    cel_url broker_url;   /* for inspect stats / conf */
    double started_at;    /* monotonic, for uptime */
    bucket *buckets;
    size_t nbuckets, capbuckets;
    wqueue *queues;       /* active ones in consuming order (active_queues) */
    size_t nqueues, capqueues;
    cel_registry *reg;
    cel_transport *tr;
    cel_backend *be;
    cel_pool *pool;
    cel_exec_env env;     /* what pool processes need to run and record tasks */
    request **reqs;       /* held requests, in arrival order */
    size_t nreqs, capreqs;
    uint64_t next_job;
    int prefetch;
    int conc;             /* pool processes (1 for solo), after pool_grow/shrink */
    int conc0;            /* as started: stats' max-concurrency (Celery's pool.limit) */
    struct autoscaler {
        bool on;
        int max, min;
        double keepalive;     /* seconds (AUTOSCALE_KEEPALIVE) */
        double last_up;       /* monotonic time of the last growth; 0 = never */
        double next_check;    /* monotonic */
    } as;
    int sigpipe[2];
    enum { RUNNING, WARM, COLD } stop;
    int sigint_count;
    double next_restore;
    unsigned long processed;
    int acks_pending;     /* acks queued since the last broker round trip */
    int stores_pending;   /* results queued since the last backend flush */
    int late_acks_pending; /* acks that must follow their stored result */
    int eta_held;          /* reserved requests waiting for their ETA */
    int qos_eta;           /* eta_held as last told to the broker's QoS */
} worker;

static int g_sigpipe_w = -1;

static bool g_restart; /* SIGHUP asked for a restart (cel_worker_restart_requested) */

bool cel_worker_restart_requested(void) { return g_restart; }

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (g_sigpipe_w >= 0 && write(g_sigpipe_w, &b, 1) < 0) {
        /* pipe full: a signal of that kind is already pending */
    }
    errno = saved;
}

/* ---- requests --------------------------------------------------------- */

static request *find_req(worker *w, uint64_t job, size_t *idx)
{
    for (size_t i = 0; i < w->nreqs; i++)
        if (w->reqs[i]->job == job) {
            if (idx)
                *idx = i;
            return w->reqs[i];
        }
    return NULL;
}

/* ---- task events ------------------------------------------------------ */

/* A task event for request r: uuid plus `fields` (stolen). */
static void task_event(worker *w, const char *type, const cel_message *m, json_t *fields)
{
    if (!w->task_events || !w->ev || !m->id) {
        json_decref(fields);
        return;
    }
    if (!fields)
        fields = json_object();
    json_object_set_new(fields, "uuid", json_string(m->id));
    cel_events_send(w->ev, type, fields);
}

static json_t *iso_or_null(bool has, double t)
{
    if (!has)
        return json_null();
    char buf[48];
    cel_iso8601_format(t, true, buf, sizeof buf);
    return json_string(buf);
}

/* "ValueError('kaboom')" from an exception dict, as Python's repr. */
static char *exc_dict_repr(const json_t *exc)
{
    const char *type = json_string_value(json_object_get(exc, "exc_type"));
    const json_t *args = json_object_get(exc, "exc_message");
    if (!type)
        return NULL;
    bool one = json_is_array(args) && json_array_size(args) == 1;
    char *a = one ? cel_pyrepr(json_array_get(args, 0))
                  : json_is_array(args) ? cel_pyrepr_args(args) : NULL;
    char *s = NULL;
    if (asprintf(&s, "%s%s%s%s", type, one ? "(" : "", a ? a : "()", one ? ")" : "") < 0)
        s = NULL;
    free(a);
    return s;
}

/* task-succeeded / -failed / -retried from the outcome's record. */
static void outcome_event(worker *w, request *r, const cel_outcome *o)
{
    if (!w->task_events || !w->ev)
        return;
    json_error_t jerr;
    json_t *meta = o->meta ? json_loadb(o->meta, o->meta_len, 0, &jerr) : NULL;
    const json_t *res = json_object_get(meta, "result");
    if (o->status == CEL_OUT_SUCCESS) {
        char *rep = cel_pyrepr(res ? res : json_null());
        task_event(w, "task-succeeded", &r->msg,
                   json_pack("{s:s, s:f}", "result", rep ? rep : "None", "runtime", o->runtime));
        free(rep);
    } else if (o->status == CEL_OUT_FAILURE || o->status == CEL_OUT_RETRY) {
        char *rep = exc_dict_repr(res);
        const char *tb = json_string_value(json_object_get(meta, "traceback"));
        json_t *f = json_pack("{s:s}", "exception", rep ? rep : "Exception()");
        if (tb)
            json_object_set_new(f, "traceback", json_string(tb));
        task_event(w, o->status == CEL_OUT_RETRY ? "task-retried" : "task-failed", &r->msg, f);
        free(rep);
    }
    json_decref(meta);
}

static int running_count_w(const worker *w)
{
    int n = 0;
    for (size_t i = 0; i < w->nreqs; i++)
        n += w->reqs[i]->state == REQ_RUNNING;
    return n;
}

static request *find_req_by_id(worker *w, const char *id)
{
    for (size_t i = 0; i < w->nreqs; i++)
        if (w->reqs[i]->msg.id && !strcmp(w->reqs[i]->msg.id, id))
            return w->reqs[i];
    return NULL;
}

static void drop_req(worker *w, request *r)
{
    for (size_t i = 0; i < w->nreqs; i++)
        if (w->reqs[i] == r) {
            memmove(&w->reqs[i], &w->reqs[i + 1], (w->nreqs - i - 1) * sizeof *w->reqs);
            w->nreqs--;
            break;
        }
    cel_message_clear(&r->msg);
    cel_delivery_free(&r->d);
    free(r->chord_part);
    free(r);
}

static int add_req(worker *w, request *r)
{
    if (w->nreqs == w->capreqs) {
        size_t cap = w->capreqs ? w->capreqs * 2 : 64;
        request **a = realloc(w->reqs, cap * sizeof *a);
        if (!a)
            return -1;
        w->reqs = a;
        w->capreqs = cap;
    }
    w->reqs[w->nreqs++] = r;
    return 0;
}

static void ack(worker *w, request *r)
{
    if (r->acked || !r->msg.delivery_tag)
        return;
    w->tr->ops->ack(w->tr, r->msg.delivery_tag);
    w->acks_pending++;
    if (r->state == REQ_RUNNING && r->acks_late)
        w->late_acks_pending++;
    r->acked = true;
}

/* ---- results ---------------------------------------------------------- */

/* Stores a record the parent itself decided (STARTED, NotRegistered,
 * WorkerLostError, expired); task outcomes arrive as text from the pool. */
static void store(worker *w, const cel_message *m, const char *status, json_t *result,
                  const char *traceback)
{
    if (!w->be)
        return;
    size_t len = 0;
    char *text = cel_exec_record(&w->env, m, status, result, traceback, &len);
    if (text)
        cel_backend_store_raw(w->be, m->id, m->reply_to, text, len);
    free(text);
    w->stores_pending++;
}


/* The retry goes out at `eta` (Unix time) when the task gave one, else
 * `countdown` seconds from now. */
static void publish_retry(worker *w, request *r, double countdown, double eta)
{
    /* The parent kept only the headers; the retry needs the body too. */
    cel_message full;
    char err[256];
    if (cel_message_parse_redis(r->d.raw, r->d.len, &full, err, sizeof err) != CEL_MSG_OK) {
        cel_error("Task %s[%s] could not be re-published for retry: %s", r->msg.task,
                  r->msg.id, err);
        cel_message_clear(&full);
        return;
    }
    const cel_message *m = &full;
    cel_message_spec s = {
        .task = m->task,
        .id = m->id,
        .root_id = m->root_id ? m->root_id : m->id,
        .parent_id = m->id,
        .group = m->group,
        .group_index = m->group_index,
        .origin = w->cfg->hostname,
        .reply_to = m->reply_to,
        .queue = m->routing_key && *m->routing_key ? m->routing_key : w->cfg->queues[0],
        .args = m->args,
        .kwargs = m->kwargs,
        .embed = m->embed,
        .retries = m->retries + 1,
        .priority = m->priority,
        .eta = eta > 0 ? eta : cel_now() + (countdown > 0 ? countdown : 0),
        .expires = m->has_expires ? m->expires : 0,
        .time_limit = m->time_limit > 0 ? m->time_limit : 0,
        .soft_time_limit = m->soft_time_limit > 0 ? m->soft_time_limit : 0,
        .ignore_result = m->ignore_result,
    };
    char *env = cel_message_build_redis(&s, NULL);
    if (!env || w->tr->ops->publish(w->tr, s.queue, s.priority, env, strlen(env)) < 0)
        cel_error("Task %s[%s] could not be re-published for retry", m->task, m->id);
    free(env);
    cel_message_clear(&full);
}

/* A job is over: store what it produced, ack, forget the request. */
static void finish(worker *w, request *r, cel_outcome *o)
{
    w->processed++;
    outcome_event(w, r, o);
    if (w->metrics && r->def) {
        cel_metrics_count(w->metrics, r->def->name,
                          o->status == CEL_OUT_SUCCESS ? CEL_M_SUCCEEDED
                          : o->status == CEL_OUT_RETRY ? CEL_M_RETRIED
                                                       : CEL_M_FAILED);
        cel_metrics_runtime(w->metrics, r->def->name, o->runtime);
    }
    if (o->status == CEL_OUT_RETRY)
        publish_retry(w, r, o->countdown, o->eta);
    if (o->meta && w->be) {
        cel_backend_store_raw(w->be, r->msg.id, r->msg.reply_to, o->meta, o->meta_len);
        w->stores_pending++;
    }
    /* After the task's own record, as Celery. */
    for (size_t at = 0; r->chord_part && w->be && at < r->chord_len;) {
        const char *nl = memchr(r->chord_part + at, '\n', r->chord_len - at);
        size_t end = nl ? (size_t)(nl - r->chord_part) : r->chord_len;
        cel_chord_part_return(w->be, w->tr, r->chord_part + at, end - at);
        at = end + 1;
    }
    if (o->status == CEL_OUT_FAILURE && r->acks_late && !r->acked && r->msg.delivery_tag &&
        !w->cfg->task_acks_on_failure_or_timeout) {
        /* Celery: acks_late without acks_on_failure_or_timeout rejects a
         * failed task without requeue (on AMQP: dead-lettered, if set up). */
        w->tr->ops->reject(w->tr, r->msg.delivery_tag, false);
        w->acks_pending++;
        r->acked = true;
    }
    ack(w, r); /* acks_late: after the outcome; otherwise already acked */
    drop_req(w, r);
}

/* ---- pool callbacks --------------------------------------------------- */

/* A callback, chain step or errback from a running task: published now, so
 * it is out before the task's outcome is stored. */
static void pool_on_publish(void *ud, uint64_t job, const char *text, size_t len)
{
    worker *w = ud;
    const char *nl1 = memchr(text, '\n', len);
    const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', len - (size_t)(nl1 + 1 - text)) : NULL;
    request *r = find_req(w, job, NULL);
    if (!nl2 || nl1 == text) {
        cel_error("Pool process sent a malformed message to publish (task %s)",
                  r ? r->msg.id : "?");
        return;
    }
    char queue[256];
    size_t ql = (size_t)(nl1 - text) < sizeof queue - 1 ? (size_t)(nl1 - text) : sizeof queue - 1;
    memcpy(queue, text, ql);
    queue[ql] = 0;
    int prio = atoi(nl1 + 1);
    const char *env = nl2 + 1;
    size_t envlen = len - (size_t)(env - text);
    if (w->tr->ops->publish(w->tr, queue, prio, env, envlen) < 0)
        cel_error("Task %s[%s]: a callback could not be published to %s", r ? r->msg.task : "?",
                  r ? r->msg.id : "?", queue);
}

/* The rest of a failed chain is marked failed too (Celery's
 * mark_as_failure): records for other task ids. */
static void pool_on_store(void *ud, uint64_t job, const char *text, size_t len)
{
    worker *w = ud;
    const char *nl1 = memchr(text, '\n', len);
    const char *nl2 = nl1 ? memchr(nl1 + 1, '\n', len - (size_t)(nl1 + 1 - text)) : NULL;
    if (!nl2 || nl1 == text || !w->be)
        return;
    char id[256], reply_to[256];
    size_t il = (size_t)(nl1 - text), rl = (size_t)(nl2 - nl1 - 1);
    if (il >= sizeof id || rl >= sizeof reply_to)
        return;
    memcpy(id, text, il);
    id[il] = 0;
    memcpy(reply_to, nl1 + 1, rl);
    reply_to[rl] = 0;
    const char *meta = nl2 + 1;
    cel_backend_store_raw(w->be, id, rl ? reply_to : NULL, meta, len - (size_t)(meta - text));
    w->stores_pending++;
}

/* A chord header task's part: kept until its outcome is stored. */
static void pool_on_chord(void *ud, uint64_t job, const char *text, size_t len)
{
    worker *w = ud;
    request *r = find_req(w, job, NULL);
    /* One line per part: a failed chain step can add its chain's end. */
    char *all = r ? realloc(r->chord_part, r->chord_len + len + 1) : NULL;
    if (!all)
        return;
    if (r->chord_len)
        all[r->chord_len++] = '\n';
    memcpy(all + r->chord_len, text, len);
    r->chord_part = all;
    r->chord_len += len;
}

/* A header task the parent itself failed or revoked (lost process, hard
 * time limit, expiry) is a chord part too (mark_as_failure/_revoked). */
static void chord_parent(worker *w, request *r, const char *state, const json_t *exc)
{
    free(r->chord_part);
    r->chord_part = NULL;
    if (!w->be || !r->msg.group)
        return;
    size_t len = 0;
    char *part = cel_chord_part_raw(r->d.raw, r->d.len, state, exc, &len);
    if (part)
        cel_chord_part_return(w->be, w->tr, part, len);
    free(part);
}

static void pool_on_unsent(void *ud, uint64_t job)
{
    worker *w = ud;
    request *r = find_req(w, job, NULL);
    if (r && r->state == REQ_SUBMITTED)
        r->state = REQ_RESERVED; /* dispatched again next turn */
}

static void pool_on_started(void *ud, uint64_t job, pid_t pid)
{
    worker *w = ud;
    request *r = find_req(w, job, NULL);
    if (!r)
        return;
    r->state = REQ_RUNNING;
    r->pid = pid;
    r->time_start_epoch = cel_now();
    if (r->def)
        cel_metrics_wait(w->metrics, r->def->name, r->time_start - r->time_received);
    w->started++;
    if (r->def) {
        size_t i = 0;
        while (i < w->ntotals && w->totals[i].name != r->def->name)
            i++;
        if (i < w->ntotals)
            w->totals[i].n++;
        else if (cel_grow(&w->totals, &w->captotals, w->ntotals, sizeof *w->totals, 16) == 0)
            w->totals[w->ntotals++] = (struct task_total){r->def->name, 1};
    }
    task_event(w, "task-started", &r->msg, NULL);
    r->time_start = cel_monotonic();
    if (!r->acks_late)
        ack(w, r);
    if (r->track_started) {
        json_t *meta = json_pack("{s:i, s:s}", "pid", (int)pid, "hostname", w->cfg->hostname);
        store(w, &r->msg, "STARTED", meta, NULL);
        json_decref(meta);
    }
}

static void discard_revoked(worker *w, request *r, bool expired);

static void pool_on_outcome(void *ud, uint64_t job, cel_outcome *o)
{
    worker *w = ud;
    request *r = find_req(w, job, NULL);
    if (r && o->status == CEL_OUT_REVOKED)
        discard_revoked(w, r, false); /* revoked while queued in the pool: never ran */
    else if (r)
        finish(w, r, o);
}

static void pool_on_state(void *ud, uint64_t job, const char *meta, size_t len)
{
    worker *w = ud;
    request *r = find_req(w, job, NULL);
    if (r && w->be && !r->ignore_result) {
        cel_backend_store_raw(w->be, r->msg.id, r->msg.reply_to, meta, len);
        w->stores_pending++;
    }
}

static void pool_on_lost(void *ud, uint64_t job, int status)
{
    worker *w = ud;
    request *r = find_req(w, job, NULL);
    if (!r)
        return;
    char human[96];
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        const char *name = sigabbrev_np(sig); /* "SEGV": billiard prints SIGSEGV */
        if (name)
            snprintf(human, sizeof human, "signal %d (SIG%s)", sig, name);
        else
            snprintf(human, sizeof human, "signal %d", sig);
    } else {
        snprintf(human, sizeof human, "exitcode %d", WEXITSTATUS(status));
    }
    char msg[192];
    snprintf(msg, sizeof msg, "Worker exited prematurely: %s Job: %llu.", human,
             (unsigned long long)job);
    cel_error("Process for task %s[%s] died: %s", r->msg.task, r->msg.id, msg);
    if (r->acks_late && r->reject_on_worker_lost && !r->acked && r->msg.delivery_tag) {
        /* Celery: reject(requeue=True), no FAILURE stored, for the next
         * worker to run it again. */
        cel_warn("Task %s[%s] requeued (reject_on_worker_lost)", r->msg.task, r->msg.id);
        if (r->def)
            cel_metrics_count(w->metrics, r->def->name, CEL_M_REJECTED);
        task_event(w, "task-rejected", &r->msg, json_pack("{s:b}", "requeue", 1));
        w->tr->ops->reject(w->tr, r->msg.delivery_tag, true);
        w->acks_pending++;
        r->acked = true;
        w->processed++;
        drop_req(w, r);
        return;
    }
    char *tb = NULL;
    if (asprintf(&tb, "Traceback (most recent call last):\n  File \"billiard/pool.py\", in "
                      "mark_as_worker_lost\nbilliard.exceptions.WorkerLostError: %s\n",
                 msg) < 0)
        tb = NULL;
    json_t *exc = cel_exc_dict("billiard.exceptions", "WorkerLostError", json_pack("[s]", msg));
    cel_error("Task %s[%s] raised unexpected: WorkerLostError('%s')", r->msg.task, r->msg.id,
              msg);
    if (r->store_errors)
        store(w, &r->msg, "FAILURE", exc, tb);
    {
        char *rep = exc_dict_repr(exc);
        task_event(w, "task-failed", &r->msg,
                   json_pack("{s:s, s:s}", "exception", rep ? rep : "WorkerLostError()",
                             "traceback", tb ? tb : ""));
        free(rep);
    }
    chord_parent(w, r, "FAILURE", exc);
    json_decref(exc);
    free(tb);
    cel_outcome none = {.status = CEL_OUT_FAILURE};
    finish(w, r, &none);
}

/* ---- receiving -------------------------------------------------------- */

static void receive(worker *w, cel_delivery *d);
static void autoscale(worker *w);
static int autoscale_qty(worker *w);

/* A message over --max-message-size: never decoded.  Celery has no such
 * limit; what a producer waiting on the result should see is a FAILURE
 * naming the reason, so when the headers give a task id the refusal is
 * stored as kombu.exceptions.LimitExceeded (a task-failed event too) and
 * the message is rejected without requeue, like any task Celery refuses. */
static void refuse_oversized(worker *w, cel_delivery *d, size_t size)
{
    cel_message m;
    char err[256];
    /* Far over the limit, even reading the headers would cost several
     * copies of the message: only its tag is looked for, to ack it. */
    cel_msg_status st = CEL_MSG_BAD_ENVELOPE;
    if (d->len / 4 > w->cfg->max_message_size)
        cel_message_scan_tag(d->raw, d->len, &m);
    else
        st = cel_message_parse_redis_head(d->raw, d->len, &m, err, sizeof err);
    char why[160];
    snprintf(why, sizeof why, "message of %zu bytes exceeds --max-message-size (%zu)", size,
             w->cfg->max_message_size);
    if (st == CEL_MSG_OK || st == CEL_MSG_DISALLOWED) {
        cel_error("Task %s[%s] refused: %s; the message has been rejected", m.task, m.id, why);
        json_t *exc = cel_exc_dict("kombu.exceptions", "LimitExceeded", json_pack("[s]", why));
        store(w, &m, "FAILURE", exc, NULL);
        json_decref(exc);
        char rep[300];
        snprintf(rep, sizeof rep, "LimitExceeded('%s')", why);
        task_event(w, "task-failed", &m, json_pack("{s:s}", "exception", rep));
    } else {
        cel_error("Dropped a message from queue %s: %s", d->queue ? d->queue : "?", why);
    }
    if (m.delivery_tag) {
        w->tr->ops->reject(w->tr, m.delivery_tag, false);
        w->acks_pending++;
    }
    cel_message_clear(&m);
    cel_delivery_free(d);
}

static void receive(worker *w, cel_delivery *d)
{
    /* Redis: the envelope as BRPOP returned it, checked before any parsing.
     * AMQP: the transport left an oversized body out and said how big it
     * was (below, after the headers are read). */
    if (d->len > w->cfg->max_message_size) {
        refuse_oversized(w, d, d->len);
        return;
    }
    request *r = calloc(1, sizeof *r);
    if (!r) {
        cel_delivery_free(d);
        return;
    }
    r->d = *d;
    memset(d, 0, sizeof *d);
    char err[256] = "";
    /* Prefork: a pool process decodes the body (as Celery defers it to the
     * pool); the parent reads the headers only. */
    cel_msg_status st = w->cfg->pool == CEL_POOL_SOLO
                            ? cel_message_parse_redis(r->d.raw, r->d.len, &r->msg, err, sizeof err)
                            : cel_message_parse_redis_head(r->d.raw, r->d.len, &r->msg, err,
                                                           sizeof err);
    cel_message *m = &r->msg;
    if (m->declared_size > w->cfg->max_message_size) {
        size_t size = m->declared_size;
        cel_message_clear(&r->msg);
        cel_delivery d2 = r->d;
        free(r);
        refuse_oversized(w, &d2, size);
        return;
    }
    switch (st) {
    case CEL_MSG_OK:
        break;
    case CEL_MSG_BAD_ENVELOPE:
        cel_error("Dropped a malformed message from queue %s (not a kombu envelope): %s",
                  r->d.queue, err);
        goto drop_ack;
    case CEL_MSG_NO_TASK:
        cel_warn("Received and deleted unknown message. Wrong destination?!? (%s)", err);
        goto drop_reject;
    case CEL_MSG_INVALID:
        cel_error("Received invalid task message: %s. The message has been rejected.", err);
        goto drop_reject;
    case CEL_MSG_DISALLOWED:
        cel_error("Refusing to deserialize untrusted content of type %s (task %s[%s]); "
                  "the message has been rejected",
                  m->content_type, m->task ? m->task : "?", m->id ? m->id : "?");
        goto drop_reject;
    case CEL_MSG_DECODE_ERROR:
        cel_crit("Can't decode message body: %s (type:%s encoding:%s) task %s[%s]; "
                 "the message has been discarded",
                 err, m->content_type, m->content_encoding ? m->content_encoding : "?",
                 m->task ? m->task : "?", m->id ? m->id : "?");
        goto drop_ack;
    }
    r->def = cel_registry_find(w->reg, m->task);
    if (!r->def) {
        cel_error("Received unregistered task of type '%s' (id %s).\nThe message has been "
                  "ignored and discarded.\n\nDid you remember to load the task module (-A)?",
                  m->task, m->id);
        json_t *exc = cel_exc_dict("celery.exceptions", "NotRegistered", json_pack("[s]", m->task));
        /* Celery stores no group/parent for this path (its request is a
         * Bunch of name, root_id, reply_to, correlation_id). */
        const char *group = m->group, *parent = m->parent_id;
        m->group = m->parent_id = NULL;
        store(w, m, "FAILURE", exc, NULL);
        m->group = group;
        m->parent_id = parent;
        json_decref(exc);
        char nr[600];
        snprintf(nr, sizeof nr, "NotRegistered('%.500s')", m->task);
        task_event(w, "task-failed", m, json_pack("{s:s}", "exception", nr));
        goto drop_reject;
    }
    const cel_task_options *o = &r->def->opts;
    /* Celery: the message's limits, else the task's, else the worker's. */
    r->hard_limit = m->time_limit > 0      ? m->time_limit
                    : o->time_limit > 0    ? o->time_limit
                                           : w->cfg->task_time_limit;
    r->soft_limit = m->soft_time_limit > 0   ? m->soft_time_limit
                    : o->soft_time_limit > 0 ? o->soft_time_limit
                                             : w->cfg->task_soft_time_limit;
    if (m->time_limit > 0) {
        /* TimeLimitExceeded(limit) carries the number as the producer sent
         * it (2 or 2.0); the worker's own settings are floats in Celery. */
        json_t *h = cel_message_headers(m);
        r->hard_is_int = json_is_integer(json_array_get(json_object_get(h, "timelimit"), 0));
        json_decref(h);
    }
    r->acks_late = cel_option_on(o->acks_late, w->cfg->task_acks_late);
    r->track_started = cel_option_on(o->track_started, w->cfg->task_track_started);
    r->reject_on_worker_lost = cel_option_on(o->reject_on_worker_lost,
                                             w->cfg->task_reject_on_worker_lost);
    r->ignore_result = m->ignore_result ||
                       cel_option_on(o->ignore_result, w->cfg->task_ignore_result);
    /* Celery's Request.store_errors: the task's ignore_result only. */
    r->store_errors = !cel_option_on(o->ignore_result, w->cfg->task_ignore_result) ||
                      cel_option_on(o->store_errors_even_if_ignored,
                                    w->cfg->task_store_errors_even_if_ignored);
    r->job = ++w->next_job;
    r->state = REQ_RESERVED;
    /* An already expired task is revoked by dispatch(), in this same turn. */
    cel_info("Task %s[%s] received", m->task, m->id);
    r->time_received = cel_monotonic();
    cel_metrics_count(w->metrics, r->def->name, CEL_M_RECEIVED);
    task_event(w, "task-received", m,
               json_pack("{s:s, s:s, s:s, s:o, s:o, s:i, s:o, s:o}", "name", m->task, "args",
                         m->argsrepr ? m->argsrepr : "()", "kwargs",
                         m->kwargsrepr ? m->kwargsrepr : "{}", "root_id",
                         m->root_id ? json_string(m->root_id) : json_null(), "parent_id",
                         m->parent_id ? json_string(m->parent_id) : json_null(), "retries",
                         m->retries, "eta", iso_or_null(m->has_eta, m->eta), "expires",
                         iso_or_null(m->has_expires, m->expires)));
    if (add_req(w, r) == 0) {
        if (!m->has_eta || m->eta <= cel_now())
            autoscale(w); /* Celery: on_task_message, after task_reserved */
        return;
    }
    cel_error("out of memory holding task %s[%s]; it will be redelivered", m->task, m->id);
    goto drop;
drop_reject:
    /* Celery rejects (requeue=False) what it cannot run and acks what it
     * cannot decode; on Redis both delete the message. */
    if (m->delivery_tag) {
        w->tr->ops->reject(w->tr, m->delivery_tag, false);
        w->acks_pending++;
    }
    goto drop;
drop_ack:
    if (m->delivery_tag) {
        w->tr->ops->ack(w->tr, m->delivery_tag);
        w->acks_pending++;
    }
drop:
    cel_message_clear(&r->msg);
    cel_delivery_free(&r->d);
    free(r);
}

/* ---- time limits ------------------------------------------------------ */

/* The limit as the Python worker holds it: an int only when the message
 * carried an int. */
static json_t *limit_value(double v, bool is_int)
{
    return is_int && v == (double)(long long)v ? json_integer((json_int_t)v) : json_real(v);
}

/* Soft and hard limits of running tasks, as billiard's timeout handler does
 * them (prefork only; the solo pool has none, as in Celery).  Returns the
 * seconds until the next limit falls due (or a large number). */
static double enforce_time_limits(worker *w)
{
    double now = cel_monotonic(), next = 3600;
    if (w->cfg->pool == CEL_POOL_SOLO)
        return next;
    for (size_t i = 0; i < w->nreqs;) {
        request *r = w->reqs[i];
        if (r->state != REQ_RUNNING || (r->hard_limit <= 0 && r->soft_limit <= 0)) {
            i++;
            continue;
        }
        double ran = now - r->time_start;
        if (r->hard_limit > 0 && ran >= r->hard_limit) {
            json_t *lim = limit_value(r->hard_limit, r->hard_is_int);
            char *ls = cel_pyrepr(lim);
            cel_error("Hard time limit (%ss) exceeded for %s[%s]", ls ? ls : "?", r->msg.task,
                      r->msg.id);
            free(ls);
            json_t *args = json_array();
            json_array_append_new(args, lim);
            json_t *exc = cel_exc_dict("billiard.exceptions", "TimeLimitExceeded", args);
            if (r->store_errors)
                store(w, &r->msg, "FAILURE", exc, NULL);
            char *rep = exc_dict_repr(exc);
            task_event(w, "task-failed", &r->msg,
                       json_pack("{s:s}", "exception", rep ? rep : "TimeLimitExceeded()"));
            free(rep);
            chord_parent(w, r, "FAILURE", exc);
            json_decref(exc);
            cel_pool_kill_job(w->pool, r->job);
            /* acks_late: Celery acks a timed-out task when
             * acks_on_failure_or_timeout (the default), else rejects it
             * without requeue; an early-ack task was acked at start. */
            if (r->acks_late && !r->acked && r->msg.delivery_tag) {
                if (w->cfg->task_acks_on_failure_or_timeout) {
                    ack(w, r);
                } else {
                    w->tr->ops->reject(w->tr, r->msg.delivery_tag, false);
                    w->acks_pending++;
                    r->acked = true;
                }
            }
            w->processed++;
            drop_req(w, r);
            continue;
        }
        if (r->soft_limit > 0 && !r->soft_sent && ran >= r->soft_limit) {
            json_t *lim = limit_value(r->soft_limit, false);
            char *ls = cel_pyrepr(lim);
            cel_warn("Soft time limit (%ss) exceeded for %s[%s]", ls ? ls : "?", r->msg.task,
                     r->msg.id);
            free(ls);
            json_decref(lim);
            cel_pool_soft_timeout(w->pool, r->job);
            r->soft_sent = true;
        }
        if (r->hard_limit > 0 && r->time_start + r->hard_limit - now < next)
            next = r->time_start + r->hard_limit - now;
        if (r->soft_limit > 0 && !r->soft_sent && r->time_start + r->soft_limit - now < next)
            next = r->time_start + r->soft_limit - now;
        i++;
    }
    return next;
}

/* Takes a token from def's bucket: 0 when one was there, else the seconds
 * until one will be (the request waits, reserved, as Celery's timer holds
 * it). */
static double rate_take(worker *w, const cel_task_def *def)
{
    bucket *b = NULL;
    for (size_t i = 0; i < w->nbuckets; i++)
        if (w->buckets[i].def == def)
            b = &w->buckets[i];
    double now = cel_monotonic();
    if (!b) {
        if (cel_grow(&w->buckets, &w->capbuckets, w->nbuckets, sizeof *w->buckets, 8) < 0)
            return 0; /* no memory for a bucket: run unlimited rather than stall */
        b = &w->buckets[w->nbuckets++];
        *b = (bucket){.def = def, .tokens = 1, .last = now};
    }
    b->tokens += def->rate * (now - b->last);
    if (b->tokens > 1)
        b->tokens = 1;
    b->last = now;
    if (b->tokens >= 1) {
        b->tokens -= 1;
        return 0;
    }
    return (1 - b->tokens) / def->rate;
}

/* ---- remote control ---------------------------------------------------- */

/* revoke(terminate=True): the processes running these tasks get `signum`;
 * the task is REVOKED ('terminated'), as Celery's Request.terminate. */
static int control_revoke(void *ud, const char *const *ids, size_t n, bool terminate, int signum)
{
    worker *w = ud;
    int hit = 0;
    /* Handed to the pool but not started: the pool skips it and it is
     * discarded as revoked (pool_on_outcome), as Celery never sends a
     * revoked task to a process.  Not counted: `hit` is what was terminated. */
    for (size_t k = 0; k < n; k++) {
        request *r = find_req_by_id(w, ids[k]);
        if (r && r->state == REQ_SUBMITTED)
            cel_pool_revoke(w->pool, r->job);
    }
    for (size_t k = 0; k < n && terminate; k++) {
        request *r = find_req_by_id(w, ids[k]);
        if (!r || r->state != REQ_RUNNING)
            continue;
        const char *sig = sigabbrev_np(signum);
        cel_info("Terminating %s (SIG%s)", r->msg.id, sig ? sig : "?");
        if (cel_pool_signal_job(w->pool, r->job, signum) < 0)
            continue;
        hit++;
        json_t *exc = cel_exc_dict("celery.exceptions", "TaskRevokedError",
                                   json_pack("[s]", "terminated"));
        if (r->store_errors)
            store(w, &r->msg, "REVOKED", exc, NULL);
        task_event(w, "task-revoked", &r->msg,
                   json_pack("{s:b, s:i, s:b}", "terminated", 1, "signum", signum, "expired", 0));
        chord_parent(w, r, "REVOKED", exc);
        json_decref(exc);
        ack(w, r);
        w->processed++;
        drop_req(w, r);
    }
    /* --statedb: a revocation must survive a restart from now on. */
    if (w->cfg->state_db)
        cel_control_save(w->ctl, w->cfg->state_db);
    return hit;
}

static bool control_set_task_events(void *ud, bool on)
{
    worker *w = ud;
    bool was = w->task_events;
    w->task_events = on;
    return was;
}

/* The `heartbeat` command: Celery answers with a worker-heartbeat carrying
 * freq 5 and the software fields only. */
static void control_heartbeat(void *ud)
{
    worker *w = ud;
    cel_events_send(w->ev, "worker-heartbeat",
                    json_pack("{s:i, s:s, s:s, s:s}", "freq", 5, "sw_ident", "celeriac", "sw_ver",
                              CELERIAC_VERSION, "sw_sys", "Linux"));
}

/* ---- inspect ----------------------------------------------------------- */

/* Celery's request-info (worker/request.py info()). */
static json_t *request_info(worker *w, request *r)
{
    cel_message full = {0};
    char err[64];
    json_t *args = NULL, *kwargs = NULL;
    if (cel_message_parse_redis(r->d.raw, r->d.len, &full, err, sizeof err) == CEL_MSG_OK) {
        args = json_incref(full.args);
        kwargs = json_incref(full.kwargs);
    }
    cel_message_clear(&full);
    bool running = r->state == REQ_RUNNING;
    /* redelivered: a bool on AMQP, null (or true) on Redis, as kombu has it. */
    bool amqp = w->broker_url.scheme == CEL_URL_AMQP || w->broker_url.scheme == CEL_URL_AMQPS;
    json_t *i = json_pack(
        "{s:s, s:s, s:o, s:o, s:s, s:s, s:o, s:b, s:{s:s, s:s, s:i, s:o}, s:o}", "id",
        r->msg.id, "name", r->msg.task, "args", args ? args : json_array(), "kwargs",
        kwargs ? kwargs : json_object(), "type", r->msg.task, "hostname", w->cfg->hostname,
        "time_start", running ? json_real(r->time_start_epoch) : json_null(), "acknowledged",
        r->acked, "delivery_info", "exchange", r->msg.exchange ? r->msg.exchange : "",
        "routing_key", r->msg.routing_key ? r->msg.routing_key : "", "priority", r->msg.priority,
        "redelivered", amqp ? json_boolean(r->msg.redelivered)
                            : r->msg.redelivered ? json_true() : json_null(), "worker_pid",
        running ? json_integer(r->pid) : json_null());
    return i;
}

static json_t *requests_in(worker *w, int which) /* 0 active, 1 reserved, 2 scheduled */
{
    json_t *a = json_array();
    double now = cel_now();
    for (size_t k = 0; k < w->nreqs; k++) {
        request *r = w->reqs[k];
        bool eta = r->state == REQ_RESERVED && r->msg.has_eta && r->msg.eta > now;
        if (which == 0 && r->state == REQ_RUNNING)
            json_array_append_new(a, request_info(w, r));
        else if (which == 1 && r->state != REQ_RUNNING && !eta)
            json_array_append_new(a, request_info(w, r));
        else if (which == 2 && eta) {
            char buf[48];
            cel_iso8601_format(r->msg.eta, true, buf, sizeof buf);
            json_array_append_new(a, json_pack("{s:s, s:i, s:o}", "eta", buf, "priority", 6,
                                               "request", request_info(w, r)));
        }
    }
    return a;
}

static json_t *queue_info(const wqueue *q)
{
    return json_pack("{s:s, s:{s:s, s:s, s:n, s:b, s:b, s:b, s:n, s:b}, s:s, s:n, s:n, s:n, "
                     "s:b, s:b, s:b, s:b, s:n, s:[], s:n, s:n, s:n, s:n, s:n, s:n}",
                     "name", q->name, "exchange", "name", q->exchange, "type", q->type,
                     "arguments", "durable", 1, "passive", 0, "auto_delete", 0, "delivery_mode",
                     "no_declare", 0, "routing_key", q->routing_key, "queue_arguments",
                     "binding_arguments", "consumer_arguments", "durable", 1, "exclusive", 0, "auto_delete", 0,
                     "no_ack", 0, "alias", "bindings", "no_declare", "expires", "message_ttl",
                     "max_length", "max_length_bytes", "max_priority");
}

static json_t *worker_stats(worker *w)
{
    pid_t pids[256];
    int np = w->pool ? cel_pool_pids(w->pool, pids, 256) : 0;
    json_t *procs = json_array();
    for (int i = 0; i < np; i++)
        json_array_append_new(procs, json_integer(pids[i]));
    json_t *total = json_object();
    for (size_t i = 0; i < w->ntotals; i++)
        json_object_set_new(total, w->totals[i].name, json_integer((json_int_t)w->totals[i].n));
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    char clock[32];
    snprintf(clock, sizeof clock, "%lld", cel_control_clock(w->ctl));
    const cel_url *u = &w->broker_url;
    bool amqp = u->scheme == CEL_URL_AMQP || u->scheme == CEL_URL_AMQPS;
    json_t *stats = json_pack(
        "{s:{s:[], s:i, s:s, s:f, s:s, s:b, s:o, s:i, s:b, s:s, s:{}, s:n, s:o, s:s}, s:s, "
        "s:i, s:{s:i, s:s, s:o, s:b, s:[f, f], s:{}}, s:i, s:{s:i, s:i, s:i, s:i, s:i, s:i, "
        "s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f}, s:o, s:i}",
        "broker", "alternates", "connect_timeout", 4, "failover_strategy", "round-robin",
        "heartbeat", 120.0, "hostname", u->host ? u->host : "localhost", "insist", 0,
        "login_method", amqp ? json_string("PLAIN") : json_null(), "port", u->port, "ssl",
        u->scheme == CEL_URL_AMQPS, "transport", amqp ? "amqp" : "redis", "transport_options",
        "uri_prefix", "userid", amqp ? json_string(u->user ? u->user : "guest") : json_null(),
        "virtual_host", u->path ? u->path : "",
        "clock", clock, "pid", (int)getpid(),
        "pool", "max-concurrency", w->conc0, "max-tasks-per-child", "N/A", "processes", procs,
        "put-guarded-by-semaphore", 0, "timeouts", w->cfg->task_soft_time_limit,
        w->cfg->task_time_limit, "writes",
        "prefetch_count", w->prefetch,
        "rusage", "idrss", (int)ru.ru_idrss, "inblock", (int)ru.ru_inblock, "isrss",
        (int)ru.ru_isrss, "ixrss", (int)ru.ru_ixrss, "majflt", (int)ru.ru_majflt, "maxrss",
        (int)ru.ru_maxrss, "minflt", (int)ru.ru_minflt, "msgrcv", (int)ru.ru_msgrcv, "msgsnd",
        (int)ru.ru_msgsnd, "nivcsw", (int)ru.ru_nivcsw, "nsignals", (int)ru.ru_nsignals,
        "nswap", (int)ru.ru_nswap, "nvcsw", (int)ru.ru_nvcsw, "oublock", (int)ru.ru_oublock,
        "stime", ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, "utime",
        ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
        "total", total, "uptime", (int)(cel_monotonic() - w->started_at));
    if (stats && w->as.on) /* Celery's Autoscaler step info */
        json_object_set_new(stats, "autoscaler",
                            json_pack("{s:i, s:i, s:i, s:i}", "max", w->as.max, "min", w->as.min,
                                      "current", cel_pool_processes(w->pool), "qty",
                                      autoscale_qty(w)));
    return stats;
}

/* ---- autoscale, pool_grow / pool_shrink, add_consumer / cancel_consumer */

/* Celery's Autoscaler.qty: requests received and not finished, ETA-held
 * ones not counted (Celery reserves them only when due). */
static int autoscale_qty(worker *w)
{
    double now = cel_now();
    int n = 0;
    for (size_t i = 0; i < w->nreqs; i++) {
        const request *r = w->reqs[i];
        n += !(r->state == REQ_RESERVED && r->msg.has_eta && r->msg.eta > now);
    }
    return n;
}

static void autoscale_grow(worker *w, int n)
{
    cel_info("Scaling up %d processes.", n);
    cel_pool_grow(w->pool, n);
    w->conc = cel_pool_processes(w->pool);
}

/* Busy processes are left alone, silently, as Celery's _shrink does. */
static void autoscale_shrink(worker *w, int n)
{
    cel_info("Scaling down %d processes.", n);
    if (cel_pool_shrink(w->pool, n) < n)
        cel_debug("Autoscaler won't scale down: all processes busy.");
    w->conc = cel_pool_processes(w->pool);
}

/* Autoscaler._maybe_scale. */
static void autoscale(worker *w)
{
    if (!w->as.on || w->stop != RUNNING)
        return;
    int procs = cel_pool_processes(w->pool), qty = autoscale_qty(w);
    int cur = qty < w->as.max ? qty : w->as.max;
    if (cur > procs) {
        w->as.last_up = cel_monotonic();
        autoscale_grow(w, cur - procs);
        return;
    }
    cur = qty > w->as.min ? qty : w->as.min;
    if (cur < procs && w->as.last_up > 0 && cel_monotonic() - w->as.last_up > w->as.keepalive)
        autoscale_shrink(w, procs - cur);
}

static json_t *reply_ok(const char *text) { return json_pack("{s:s}", "ok", text); }

static json_t *reply_error(const char *text) { return json_pack("{s:s}", "error", text); }

/* A command argument Celery converts with int(): a number or its text. */
static int int_arg(const json_t *args, const char *key, int dflt)
{
    const json_t *v = json_object_get(args, key);
    if (json_is_integer(v))
        return (int)json_integer_value(v);
    if (json_is_string(v))
        return atoi(json_string_value(v));
    return dflt;
}

/* Celery's Consumer._update_prefetch_count: the window moves by
 * multiplier × the change (never below 1), unless prefetch is unlimited or
 * the pool is down to no process; the broker hears of it at once. */
static void follow_concurrency(worker *w, int change)
{
    w->conc = cel_pool_processes(w->pool);
    if (w->cfg->prefetch_multiplier <= 0 || w->conc == 0)
        return;
    w->prefetch += change * w->cfg->prefetch_multiplier;
    if (w->prefetch < 1)
        w->prefetch = 1;
    if (w->tr->ops->qos && w->tr->ops->qos(w->tr, w->prefetch + w->eta_held) == 0)
        w->qos_eta = w->eta_held;
}

/* Replies as Celery 5.2.6's pool_grow / pool_shrink: the solo pool has
 * neither method (AttributeError); a shrink finding fewer idle processes
 * than asked retires those and fails without moving the prefetch window
 * (billiard's ValueError comes before _update_prefetch_count). */
static json_t *pool_resize(worker *w, const char *method, const json_t *args)
{
    bool grow = !strcmp(method, "pool_grow");
    int n = int_arg(args, "n", 1);
    if (w->as.on)
        return reply_error(grow ? "pool_grow is not supported with autoscale. Adjust autoscale "
                                  "range instead."
                                : "pool_shrink is not supported with autoscale. Adjust autoscale "
                                  "range instead.");
    if (w->cfg->pool == CEL_POOL_SOLO)
        return reply_error(grow ? "AttributeError(\"'TaskPool' object has no attribute 'grow'\")"
                                : "AttributeError(\"'TaskPool' object has no attribute "
                                  "'shrink'\")");
    if (grow) {
        int got = n > 0 ? cel_pool_grow(w->pool, n) : 0;
        cel_info("remote control: pool grown by %d process(es) to %d", got,
                 cel_pool_processes(w->pool));
        follow_concurrency(w, n);
        return reply_ok("pool will grow");
    }
    int want = n > 0 ? n : 1; /* billiard's loop retires one even for n = 0 */
    int got = cel_pool_shrink(w->pool, want);
    cel_info("remote control: pool shrinking by %d process(es) to %d", got,
             cel_pool_processes(w->pool));
    if (got < want) {
        w->conc = cel_pool_processes(w->pool);
        return reply_error("ValueError(\"Can't shrink pool. All processes busy!\")");
    }
    follow_concurrency(w, -n);
    return reply_ok("pool will shrink");
}

/* The `autoscale` command: Autoscaler.update.  A lower max retires idle
 * processes above it and moves the window by the change (Celery's
 * _update_consumer_prefetch_count); a higher min forks up to it. */
static json_t *autoscale_update(worker *w, const json_t *args)
{
    if (!w->as.on)
        return reply_error("ValueError('Autoscale not enabled')");
    const json_t *jmax = json_object_get(args, "max"), *jmin = json_object_get(args, "min");
    if (jmax && !json_is_null(jmax)) {
        int max = int_arg(args, "max", w->as.max);
        int procs = cel_pool_processes(w->pool);
        if (max < procs)
            autoscale_shrink(w, procs - max);
        if (max != w->as.max)
            follow_concurrency(w, max - w->as.max);
        w->as.max = max;
    }
    if (jmin && !json_is_null(jmin)) {
        int min = int_arg(args, "min", w->as.min);
        int procs = cel_pool_processes(w->pool);
        if (min > procs)
            autoscale_grow(w, min - procs);
        w->as.min = min;
    }
    char text[96];
    snprintf(text, sizeof text, "autoscale now max=%d min=%d", w->as.max, w->as.min);
    return reply_ok(text);
}

static wqueue *find_queue(worker *w, const char *name)
{
    for (size_t i = 0; i < w->nqueues; i++)
        if (!strcmp(w->queues[i].name, name))
            return &w->queues[i];
    return NULL;
}

/* Appends an (active) entry; NULL when out of memory. */
static wqueue *new_queue(worker *w, const char *name, const char *exchange, const char *type,
                         const char *routing_key)
{
    if (cel_grow(&w->queues, &w->capqueues, w->nqueues, sizeof *w->queues, 4) < 0)
        return NULL;
    wqueue q = {strdup(name), strdup(exchange), strdup(type), strdup(routing_key), true};
    if (!q.name || !q.exchange || !q.type || !q.routing_key) {
        free(q.name);
        free(q.exchange);
        free(q.type);
        free(q.routing_key);
        return NULL;
    }
    w->queues[w->nqueues] = q;
    return &w->queues[w->nqueues++];
}

/* A string argument, NULL when absent, null or empty. */
static const char *str_arg(const json_t *args, const char *key)
{
    const char *s = json_string_value(json_object_get(args, key));
    return s && *s ? s : NULL;
}

/* Celery's add_task_queue, done before the reply instead of call_soon
 * after it: the reply is the same whatever happens (errors are logged),
 * including for a queue already consumed. */
static json_t *add_consumer(worker *w, const json_t *args)
{
    const char *name = str_arg(args, "queue");
    if (!name)
        return reply_error(
            "TypeError(\"add_consumer() missing 1 required positional argument: 'queue'\")");
    char text[300];
    snprintf(text, sizeof text, "add consumer %s", name);
    wqueue *q = find_queue(w, name);
    if (q && q->active)
        return reply_ok(text);
    if (!w->tr->ops->add_queue) {
        cel_error("Cannot consume from %s: this transport cannot add queues", name);
        return reply_ok(text);
    }
    if (q) {
        /* Known from before (cancelled): its declaration, last in the list. */
        wqueue keep = *q;
        memmove(q, q + 1, (size_t)(&w->queues[w->nqueues] - (q + 1)) * sizeof *q);
        w->queues[w->nqueues - 1] = keep;
        q = &w->queues[w->nqueues - 1];
    } else {
        const char *ex = str_arg(args, "exchange"), *type = str_arg(args, "exchange_type"),
                   *rk = str_arg(args, "routing_key");
        q = new_queue(w, name, ex ? ex : name, type ? type : "direct", rk ? rk : name);
        if (!q) {
            cel_error("Cannot consume from %s: out of memory", name);
            return reply_ok(text);
        }
        q->active = false;
    }
    char err[256];
    if (w->tr->ops->add_queue(w->tr, q->name, q->exchange, q->type, q->routing_key, err,
                              sizeof err) < 0) {
        cel_error("Cannot consume from %s: %s", name, err);
        return reply_ok(text);
    }
    q->active = true;
    cel_info("Started consuming from %s", name);
    return reply_ok(text);
}

static json_t *cancel_consumer(worker *w, const json_t *args)
{
    const char *name = str_arg(args, "queue");
    if (!name)
        return reply_error(
            "TypeError(\"cancel_consumer() missing 1 required positional argument: 'queue'\")");
    cel_info("Canceling queue %s", name);
    wqueue *q = find_queue(w, name);
    if (q && q->active && w->tr->ops->cancel_queue) {
        w->tr->ops->cancel_queue(w->tr, name);
        q->active = false;
    }
    char text[300];
    snprintf(text, sizeof text, "no longer consuming from %s", name);
    return reply_ok(text);
}

static json_t *registered(worker *w)
{
    json_t *a = json_array();
    const cel_registry *reg = w->reg;
    for (size_t i = 0; i < cel_registry_count(reg); i++) {
        const cel_task_def *d = cel_registry_at(reg, i);
        if (!strncmp(d->name, "celery.", 7))
            continue;
        char line[600];
        if (d->opts.rate_limit)
            snprintf(line, sizeof line, "%s [rate_limit=%s]", d->name, d->opts.rate_limit);
        else
            snprintf(line, sizeof line, "%s", d->name);
        json_array_append_new(a, json_string(line));
    }
    return a;
}

static json_t *control_command(void *ud, const char *method, const json_t *args, bool *reply)
{
    worker *w = ud;
    if (!strcmp(method, "stats"))
        return worker_stats(w);
    if (!strcmp(method, "active"))
        return requests_in(w, 0);
    if (!strcmp(method, "reserved"))
        return requests_in(w, 1);
    if (!strcmp(method, "scheduled"))
        return requests_in(w, 2);
    if (!strcmp(method, "registered"))
        return registered(w);
    if (!strcmp(method, "active_queues")) {
        json_t *a = json_array();
        for (size_t i = 0; i < w->nqueues; i++)
            if (w->queues[i].active)
                json_array_append_new(a, queue_info(&w->queues[i]));
        return a;
    }
    if (!strcmp(method, "query_task")) {
        json_t *out = json_object();
        const json_t *ids = json_object_get(args, "ids");
        size_t i;
        const json_t *id;
        json_array_foreach(ids, i, id) {
            request *r = json_is_string(id) ? find_req_by_id(w, json_string_value(id)) : NULL;
            if (r)
                json_object_set_new(out, r->msg.id,
                                    json_pack("[s, o]",
                                              r->state == REQ_RUNNING ? "active" : "reserved",
                                              request_info(w, r)));
        }
        return out;
    }
    if (!strcmp(method, "conf")) {
        char b[512];
        json_t *c = json_object();
        cel_url_redacted(&w->broker_url, b, sizeof b);
        json_object_set_new(c, "broker_url", json_string(b));
        if (w->cfg->result_backend)
            json_object_set_new(c, "result_backend", json_string("********"));
        json_object_set_new(c, "worker_concurrency", json_integer(w->conc0));
        json_object_set_new(c, "worker_prefetch_multiplier",
                            json_integer(w->cfg->prefetch_multiplier));
        if (w->cfg->task_acks_late)
            json_object_set_new(c, "task_acks_late", json_true());
        return c;
    }
    if (!strcmp(method, "report")) {
        char text[512];
        snprintf(text, sizeof text,
                 "software -> celeriac:%s (Celery protocol v2) kombu:- py:-\n"
                 "            billiard:- %s:-\n"
                 "platform -> system:Linux arch:64bit\n"
                 "            kernel version:- imp:C\n",
                 CELERIAC_VERSION,
                 w->broker_url.scheme == CEL_URL_AMQP || w->broker_url.scheme == CEL_URL_AMQPS
                     ? "py-amqp"
                     : "redis");
        return json_pack("{s:s}", "ok", text);
    }
    if (!strcmp(method, "shutdown")) {
        cel_warn("remote control: shutdown requested (warm)");
        if (w->stop == RUNNING)
            w->stop = WARM;
        *reply = false;
        return json_null();
    }
    if (!strcmp(method, "rate_limit")) {
        const char *name = json_string_value(json_object_get(args, "task_name"));
        const json_t *rv = json_object_get(args, "rate_limit");
        cel_task_def *d = name ? (cel_task_def *)cel_registry_find(w->reg, name) : NULL;
        if (!d)
            return json_pack("{s:s}", "error", "unknown task");
        double rate = 0;
        char rs[64] = "";
        if (json_is_string(rv))
            snprintf(rs, sizeof rs, "%s", json_string_value(rv));
        else if (json_is_number(rv))
            snprintf(rs, sizeof rs, "%g", json_number_value(rv));
        if (*rs && cel_parse_rate(rs, &rate) < 0) {
            char e[128];
            snprintf(e, sizeof e, "Invalid rate limit string: %s", rs);
            return json_pack("{s:s}", "error", e);
        }
        free((char *)d->opts.rate_limit);
        d->opts.rate_limit = *rs && rate > 0 ? strdup(rs) : NULL;
        d->rate = rate;
        cel_info("New rate limit for tasks of type %s: %s.", name, *rs ? rs : "None");
        return json_pack("{s:s}", "ok", d->opts.rate_limit ? "new rate limit set successfully"
                                                           : "rate limit disabled successfully");
    }
    if (!strcmp(method, "time_limit")) {
        const char *name = json_string_value(json_object_get(args, "task_name"));
        cel_task_def *d = name ? (cel_task_def *)cel_registry_find(w->reg, name) : NULL;
        if (!d)
            return json_pack("{s:s}", "error", "unknown task");
        d->opts.soft_time_limit = json_number_value(json_object_get(args, "soft"));
        d->opts.time_limit = json_number_value(json_object_get(args, "hard"));
        cel_info("New time limits for tasks of type %s: soft=%g hard=%g", name,
                 d->opts.soft_time_limit, d->opts.time_limit);
        return json_pack("{s:s}", "ok", "time limits set successfully");
    }
    if (!strcmp(method, "pool_grow") || !strcmp(method, "pool_shrink"))
        return pool_resize(w, method, args);
    if (!strcmp(method, "add_consumer"))
        return add_consumer(w, args);
    if (!strcmp(method, "cancel_consumer"))
        return cancel_consumer(w, args);
    if (!strcmp(method, "autoscale"))
        return autoscale_update(w, args);
    if (!strcmp(method, "pool_restart"))
        return json_pack("{s:s}", "error", "ValueError('Pool restarts not enabled')");
    return NULL;
}

static int control_reply(void *ud, const char *exchange, const char *routing_key,
                         const char *ticket, long long clock, const char *body, size_t len)
{
    worker *w = ud;
    return w->tr->ops->control_reply
               ? w->tr->ops->control_reply(w->tr, exchange, routing_key, ticket, clock, body, len)
               : -1;
}

static void control_poll(worker *w, bool readable)
{
    cel_delivery ds[16];
    int n = w->tr->ops->control_read(w->tr, ds, 16, readable);
    for (int i = 0; i < n; i++) {
        cel_control_handle(w->ctl, ds[i].raw, ds[i].len);
        cel_delivery_free(&ds[i]);
    }
}

/* ---- dispatch --------------------------------------------------------- */

/* Celery's Request.revoked(): REVOKED stored (TaskRevokedError('revoked')
 * or ('expired')), task-revoked, the message acked, the request forgotten. */
static void discard_revoked(worker *w, request *r, bool expired)
{
    json_t *exc = cel_exc_dict("celery.exceptions", "TaskRevokedError",
                               json_pack("[s]", expired ? "expired" : "revoked"));
    cel_info("Discarding revoked task: %s[%s]%s", r->msg.task, r->msg.id,
             expired ? " (expired)" : "");
    if (r->def && !expired)
        cel_metrics_count(w->metrics, r->def->name, CEL_M_REVOKED);
    task_event(w, "task-revoked", &r->msg,
               json_pack("{s:b, s:n, s:b}", "terminated", 0, "signum", "expired", expired));
    if (r->store_errors)
        store(w, &r->msg, "REVOKED", exc, NULL);
    chord_parent(w, r, "REVOKED", exc);
    json_decref(exc);
    ack(w, r);
    drop_req(w, r);
}

/* Hands due requests to idle processes, oldest first; returns seconds until
 * the next ETA (or a large number) and counts the ETA-held requests. */
static double dispatch(worker *w)
{
    double now = cel_now(), next = 3600;
    int eta_held = 0;
    for (size_t i = 0; i < w->nreqs;) {
        request *r = w->reqs[i];
        if (r->state != REQ_RESERVED) {
            i++;
            continue;
        }
        if (cel_control_is_revoked(w->ctl, r->msg.id)) {
            discard_revoked(w, r, false);
            continue;
        }
        if (r->msg.has_expires && r->msg.expires <= now) {
            discard_revoked(w, r, true);
            continue;
        }
        if (r->msg.has_eta && r->msg.eta > now) {
            if (r->msg.eta - now < next)
                next = r->msg.eta - now;
            eta_held++;
            i++;
            continue;
        }
        if (cel_pool_idle(w->pool) <= 0 || w->stop != RUNNING) {
            i++; /* shutting down: reserved requests are restored, not started */
            continue;
        }
        if (r->def && r->def->rate > 0 && !w->cfg->worker_disable_rate_limits) {
            double wait = rate_take(w, r->def);
            if (wait > 0) {
                if (wait < next)
                    next = wait;
                i++;
                continue;
            }
        }
        size_t before = w->nreqs;
        r->state = REQ_SUBMITTED;
        int rc = cel_pool_submit(w->pool, r->job, r->d.raw, r->d.len, &r->msg);
        if (rc < 0) {
            r->state = REQ_RESERVED;
            i++;
            continue;
        }
        /* Solo pool: the request finished and is gone already. */
        if (w->nreqs < before)
            continue;
        i++;
    }
    cel_pool_flush(w->pool);
    w->eta_held = eta_held;
    /* Celery raises the broker's prefetch by one per ETA message it holds
     * (and lowers it again), so held ETA tasks don't starve the window. */
    if (w->tr->ops->qos && w->prefetch < UNLIMITED_PREFETCH && eta_held != w->qos_eta &&
        w->tr->ops->qos(w->tr, w->prefetch + eta_held) == 0)
        w->qos_eta = eta_held;
    return next;
}

/* ---- lifecycle -------------------------------------------------------- */

static void handle_signals(worker *w)
{
    unsigned char buf[64];
    ssize_t n;
    while ((n = read(w->sigpipe[0], buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            switch (buf[i]) {
            case SIGCHLD:
                cel_pool_reap(w->pool);
                break;
            case SIGTERM:
                if (w->stop == RUNNING) {
                    cel_warn("worker: Warm shutdown (MainProcess)");
                    w->stop = WARM;
                }
                break;
            case SIGINT:
                if (++w->sigint_count >= 2 || w->stop != RUNNING) {
                    cel_warn("worker: Cold shutdown (MainProcess)");
                    w->stop = COLD;
                } else {
                    cel_warn("worker: Hitting Ctrl+C again will terminate all running tasks!");
                    cel_warn("worker: Warm shutdown (MainProcess)");
                    w->stop = WARM;
                }
                break;
            case SIGQUIT:
                cel_warn("worker: Cold shutdown (MainProcess)");
                w->stop = COLD;
                break;
            case SIGHUP:
                /* Celery's SIGHUP: a warm shutdown, then the same command
                 * again (main() re-executes), e.g. to pick up a new .env. */
                if (w->stop == RUNNING) {
                    cel_warn("worker: Restarting celeriac (SIGHUP)");
                    w->stop = WARM;
                    g_restart = true;
                }
                break;
            }
        }
    }
}

static void restore_reserved(worker *w, bool include_running)
{
    int n = 0;
    for (size_t i = 0; i < w->nreqs;) {
        request *r = w->reqs[i];
        if (r->acked || (r->state != REQ_RESERVED && !include_running) || !r->msg.delivery_tag) {
            i++;
            continue;
        }
        if (w->tr->ops->restore(w->tr, r->msg.delivery_tag, r->d.raw, r->d.len) == 0)
            n++;
        drop_req(w, r);
    }
    if (n)
        cel_info("Restoring %d unacknowledged message(s)", n);
}

static void flush_all(worker *w)
{
    if (w->be)
        cel_backend_flush(w->be);
    w->tr->ops->flush(w->tr);
}

static int connect_broker(worker *w)
{
    char err[512];
    int max = w->cfg->broker_connection_max_retries;
    /* A URL naming a transport this build lacks is a configuration error,
     * not an outage: no retries. */
    cel_url u;
    if (cel_url_parse(w->cfg->broker_url, &u, err, sizeof err) < 0) {
        cel_crit("Cannot connect to broker: %s", err);
        return -1;
    }
    bool supported = u.scheme == CEL_URL_REDIS || u.scheme == CEL_URL_UNIX ||
                     u.scheme == CEL_URL_AMQP || u.scheme == CEL_URL_AMQPS;
    cel_url_free(&u);
    if (!supported) {
        cel_crit("Cannot use broker: this build of celeriac speaks redis:// and amqp://");
        return -1;
    }
    for (int attempt = 0;; attempt++) {
        w->tr = cel_transport_open(w->cfg, true, err, sizeof err);
        if (w->tr)
            return 0;
        if (!w->cfg->broker_connection_retry || (max > 0 && attempt >= max)) {
            cel_crit("Cannot connect to broker: %s", err);
            return -1;
        }
        /* kombu's ensure_connection: 2 s, then 2 s more per attempt, at
         * most 30 s. */
        double delay = 2.0 + 2.0 * attempt;
        if (delay > 30)
            delay = 30;
        cel_error("consumer: Cannot connect to broker: %s.\nTrying again in %.2f seconds... "
                  "(%d/%d)",
                  err, delay, attempt + 1, max);
        /* Sleep, but let TERM/INT/QUIT end the wait. */
        struct pollfd p = {.fd = w->sigpipe[0], .events = POLLIN};
        if (poll(&p, 1, (int)(delay * 1000)) > 0) {
            handle_signals(w);
            if (w->stop != RUNNING)
                return -1;
        }
    }
}

int cel_worker_main(cel_config *cfg)
{
    worker W = {.cfg = cfg};
    cel_message_set_max_size(cfg->max_message_size);
    worker *w = &W;
    char err[512];
    int rc = 1;

    if (pipe2(w->sigpipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        cel_crit("pipe: %s", strerror(errno));
        return 1;
    }
    g_sigpipe_w = w->sigpipe[1];
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    w->reg = cel_registry_new();
    for (size_t i = 0; cfg->apps && cfg->apps[i]; i++) {
        if (cel_registry_load(w->reg, cfg->apps[i], err, sizeof err) < 0) {
            cel_crit("%s", err);
            rc = CEL_EX_USAGE;
            goto out;
        }
    }
    if (cel_registry_count(w->reg) == 0)
        cel_warn("No task module loaded (-A): every task will be NotRegistered");

    if (connect_broker(w) < 0) {
        rc = w->stop != RUNNING ? 0 : CEL_EX_USAGE;
        goto out;
    }
    for (size_t i = 0; cfg->queues[i]; i++)
        if (!find_queue(w, cfg->queues[i]) &&
            !new_queue(w, cfg->queues[i], cfg->queues[i], "direct", cfg->queues[i])) {
            cel_crit("out of memory");
            goto out;
        }
    if (cfg->result_backend && *cfg->result_backend) {
        w->be = cel_backend_open(cfg->result_backend, cfg, err, sizeof err);
        if (!w->be) {
            cel_crit("Cannot open result backend: %s", err);
            rc = CEL_EX_USAGE;
            goto out;
        }
    }
    w->env = (cel_exec_env){.reg = w->reg, .hostname = cfg->hostname,
                            .store_results = w->be != NULL, .extended = cfg->result_extended,
                            .for_rpc = w->be && w->be->for_rpc,
                            .ignore_result = cfg->task_ignore_result,
                            .store_errors_even_if_ignored =
                                cfg->task_store_errors_even_if_ignored};
    cel_pool_events ev = {.on_outcome = pool_on_outcome, .on_state = pool_on_state,
                          .on_publish = pool_on_publish, .on_store = pool_on_store,
                          .on_chord = pool_on_chord,
                          .on_lost = pool_on_lost,
                          .on_started = pool_on_started, .on_unsent = pool_on_unsent};
    int procs = cfg->pool == CEL_POOL_SOLO ? 0 : cfg->concurrency;
    cel_control_host host = {.ud = w, .hostname = cfg->hostname, .revoke = control_revoke,
                             .reply = control_reply,
                             .set_task_events = control_set_task_events,
                             .heartbeat = control_heartbeat,
                             .command = control_command};
    w->ctl = cel_control_new(&host);
    if (w->ctl && cfg->state_db)
        cel_control_load(w->ctl, cfg->state_db);
    /* Worker events always (Flower's online/offline); task events with -E. */
    w->ev = cel_events_new(w->tr, w->ctl, cfg->hostname, CELERIAC_VERSION);
    w->started_at = cel_monotonic();
    if (cfg->metrics_port > 0) {
        w->metrics = cel_metrics_open(cfg->metrics_bind, cfg->metrics_port, err, sizeof err);
        if (!w->metrics) {
            cel_crit("%s", err);
            rc = CEL_EX_USAGE;
            goto out;
        }
        cel_info("Prometheus metrics on http://%s:%d/metrics",
                 cfg->metrics_bind ? cfg->metrics_bind : "127.0.0.1", cfg->metrics_port);
    }
    {
        char uerr[256];
        if (cel_url_parse(cfg->broker_url, &w->broker_url, uerr, sizeof uerr) < 0)
            memset(&w->broker_url, 0, sizeof w->broker_url);
    }
    w->task_events = cfg->task_events;
    /* --autoscale: MIN processes to start with, a window for MAX (Celery's
     * Pool and Consumer steps). */
    w->as.on = procs && cfg->autoscale_max > 0;
    int window_procs = procs;
    if (w->as.on) {
        w->as.max = cfg->autoscale_max;
        w->as.min = cfg->autoscale_min;
        const char *ka = getenv("AUTOSCALE_KEEPALIVE");
        w->as.keepalive = ka && atof(ka) > 0 ? atof(ka) : 30.0;
        w->as.next_check = cel_monotonic() + w->as.keepalive;
        procs = w->as.min;
        window_procs = w->as.max;
    }
    w->pool = cel_pool_start(cfg->pool == CEL_POOL_SOLO, procs, &w->env, &ev, w, err,
                             sizeof err);
    if (!w->pool) {
        cel_crit("%s", err);
        goto out;
    }
    int conc = cfg->pool == CEL_POOL_SOLO ? 1 : procs;
    w->conc = w->conc0 = conc;
    if (window_procs < 1)
        window_procs = 1;
    w->prefetch = cfg->prefetch_multiplier > 0 ? window_procs * cfg->prefetch_multiplier
                                               : UNLIMITED_PREFETCH;
    if (w->as.on && w->tr->ops->qos && w->prefetch < UNLIMITED_PREFETCH)
        w->tr->ops->qos(w->tr, w->prefetch);

    /* kombu restores stale unacked messages before the first fetch. */
    w->tr->ops->restore_visible(w->tr);
    w->next_restore = cel_monotonic() + cfg->worker_restore_interval;

    {
        char qs[256] = "";
        for (size_t i = 0; cfg->queues[i]; i++) {
            if (i)
                strncat(qs, ",", sizeof qs - strlen(qs) - 1);
            strncat(qs, cfg->queues[i], sizeof qs - strlen(qs) - 1);
        }
        cel_info("Connected to broker; consuming from %s with %d %s process(es), prefetch %d",
                 qs, conc, cfg->pool == CEL_POOL_SOLO ? "solo" : "prefork", w->prefetch);
        if (w->as.on)
            cel_info("Autoscaling between %d and %d processes", w->as.min, w->as.max);
        cel_info("%s ready.", cfg->hostname);
        /* --without-heartbeat: Celery's Heart bootstep is off, and with it
         * worker-online, -heartbeat and -offline (task events still go). */
        if (!cfg->without_heartbeat)
            cel_events_worker(w->ev, "worker-online", 0, 0);
        w->next_heartbeat = cel_monotonic() + 2.0;
    }

    struct pollfd fds[MAX_POLLFDS];
    while (w->stop != COLD) {
        handle_signals(w);
        if (w->stop == COLD)
            break;
        /* An acks_late ack rides with the fetch below: its result must be
         * stored first.  Otherwise the fetch goes first, so the pool is fed
         * as early as possible (a Redis serving both runs them in order), and
         * the results follow while the pool works. */
        if (w->be && w->late_acks_pending)
            cel_backend_flush(w->be);
        bool more = false, fetched = false;
        int acks_sent = 0, late_sent = 0; /* the acks the fetch carries */
        if (w->tr->ops->tick)
            w->tr->ops->tick(w->tr);
        if (w->stop == RUNNING && !w->tr->ops->waiting(w->tr)) {
            /* kombu's QoS: the budget counts unacked messages — an early-ack
             * task stops counting once it starts — and Celery raises the
             * prefetch count for every ETA task it holds. */
            int unacked = 0;
            for (size_t i = 0; i < w->nreqs; i++)
                unacked += !w->reqs[i]->acked;
            int room = w->prefetch + w->eta_held - unacked;
            /* A round trip costs the server about as much as five messages:
             * while every pool process has a next job waiting, let the room
             * grow to half the window before asking for more (measured:
             * +8% tasks/s at the defaults, batches of 7 instead of 5). */
            int waiting_jobs = unacked - w->eta_held;
            if (room > 0 && (waiting_jobs < w->conc || 2 * room >= w->prefetch)) {
                fetched = true;
                acks_sent = w->acks_pending;
                late_sent = w->late_acks_pending;
                cel_delivery ds[FETCH_BATCH];
                int want = room < FETCH_BATCH ? room : FETCH_BATCH;
                int n = w->tr->ops->fetch(w->tr, want, ds);
                for (int i = 0; i < n; i++)
                    receive(w, &ds[i]);
                if (n == want)
                    more = true; /* the queue may hold more: don't sleep */
                else if (n == 0)
                    w->tr->ops->wait_start(w->tr, 1.0);
            }
        }
        double next_eta = dispatch(w);
        double next_limit = enforce_time_limits(w);
        if (next_limit < next_eta)
            next_eta = next_limit;
        /* Results go out without waiting: the reply is read when it comes,
         * and the next fetch queues behind the store at the server. */
        if (w->be)
            cel_backend_send(w->be);
        w->stores_pending = 0;
        /* Acks ride on the fetch; those queued after it (a malformed
         * message acked in receive(), an expired one in dispatch()) stay
         * marked for the next round trip: forgetting them left them unsent
         * until some later fetch, and on an idle queue past the visibility
         * timeout. */
        if (fetched) {
            w->acks_pending -= acks_sent;
            w->late_acks_pending -= late_sent;
        } else if (w->acks_pending) {
            w->tr->ops->flush(w->tr);
            w->acks_pending = w->late_acks_pending = 0;
        }

        if (w->stop == WARM) {
            w->tr->ops->wait_cancel(w->tr); /* don't sit out BRPOP's second */
            /* Jobs no process has taken yet are reserved, not running: take
             * them back from the pool and restore them, as Celery restores
             * its reserved requests. */
            uint64_t back[256];
            int nb;
            while ((nb = cel_pool_reclaim(w->pool, back, 256)) > 0)
                for (int i = 0; i < nb; i++) {
                    request *r = find_req(w, back[i], NULL);
                    if (r && r->state == REQ_SUBMITTED)
                        r->state = REQ_RESERVED;
                }
            restore_reserved(w, false);
            if (!w->tr->ops->waiting(w->tr) && cel_pool_busy(w->pool) == 0 && w->nreqs == 0)
                break;
        }

        /* Events of this turn go out in one write before the loop sleeps. */
        if (w->tr->ops->flush_events)
            w->tr->ops->flush_events(w->tr);

        int nf = 0;
        fds[nf++] = (struct pollfd){.fd = w->sigpipe[0], .events = POLLIN};
        int waitfd = -1;
        if (w->tr->ops->waiting(w->tr)) {
            waitfd = nf;
            fds[nf++] = (struct pollfd){.fd = w->tr->ops->wait_fd(w->tr), .events = POLLIN};
        }
        int ctlfd = -1;
        if (w->tr->ops->control_fd && w->stop == RUNNING) {
            int fd = w->tr->ops->control_fd(w->tr);
            if (fd >= 0) {
                ctlfd = nf;
                fds[nf++] = (struct pollfd){.fd = fd, .events = POLLIN};
            }
        }
        int metricsfd = -1;
        if (w->metrics) {
            metricsfd = nf;
            fds[nf++] = (struct pollfd){.fd = cel_metrics_fd(w->metrics), .events = POLLIN};
        }
        int befd = -1;
        if (w->be && cel_backend_reply_fd(w->be) >= 0) {
            befd = nf;
            fds[nf++] = (struct pollfd){.fd = cel_backend_reply_fd(w->be), .events = POLLIN};
        }
        int poolfd0 = nf;
        nf += cel_pool_pollfds(w->pool, fds + nf, MAX_POLLFDS - nf);

        double now = cel_monotonic();
        /* Acks and STARTED states from this turn's dispatch ride on the next
         * turn's round trips; wait at most 2 ms for company. */
        if (w->ev && !w->cfg->without_heartbeat && now >= w->next_heartbeat) {
            cel_events_worker(w->ev, "worker-heartbeat", running_count_w(w), w->started);
            w->next_heartbeat = now + 2.0;
        }
        double timeout = more ? 0 : (w->acks_pending || w->stores_pending) ? 0.002 : 1.0;
        if (w->ev && !w->cfg->without_heartbeat && w->next_heartbeat - now < timeout)
            timeout = w->next_heartbeat - now;
        if (next_eta < timeout)
            timeout = next_eta;
        if (w->next_restore - now < timeout)
            timeout = w->next_restore - now;
        if (w->as.on && w->as.next_check - now < timeout)
            timeout = w->as.next_check - now;
        if (timeout < 0)
            timeout = 0;
        int pr = poll(fds, (nfds_t)nf, (int)(timeout * 1000 + 0.999));
        if (pr < 0 && errno != EINTR) {
            cel_crit("poll: %s", strerror(errno));
            break;
        }
        if (pr > 0) {
            if (fds[0].revents)
                handle_signals(w);
            if (befd >= 0 && fds[befd].revents)
                cel_backend_recv(w->be);
            if (metricsfd >= 0 && fds[metricsfd].revents) {
                cel_metrics_gauges g = {.pool_processes = w->conc,
                                        .pool_busy = running_count_w(w),
                                        .prefetched = (int)w->nreqs,
                                        .broker_reconnects = cel_broker_reconnects,
                                        .uptime = cel_monotonic() - w->started_at};
                cel_metrics_serve(w->metrics, &g);
            }
            if (waitfd >= 0 && fds[waitfd].revents) {
                cel_delivery d = {0};
                if (w->tr->ops->wait_ready(w->tr, &d) == 1)
                    receive(w, &d);
            }
            cel_pool_handle(w->pool, fds + poolfd0, nf - poolfd0);
            /* Keep the pool busy: hand out the next jobs before any broker
             * or backend round trip. */
            dispatch(w);
        }
        /* Remote control: a revoke must be seen before the next dispatch.
         * Every turn: AMQP's requests arrive with the task frames. */
        if (w->tr->ops->control_read && w->stop == RUNNING)
            control_poll(w, pr > 0 && ctlfd >= 0 && fds[ctlfd].revents);
        if (w->as.on && cel_monotonic() >= w->as.next_check) {
            autoscale(w); /* Celery: hub.call_repeatedly(keepalive, maybe_scale) */
            w->as.next_check = cel_monotonic() + w->as.keepalive;
        }
        if (cel_monotonic() >= w->next_restore) {
            if (w->stop == RUNNING)
                w->tr->ops->restore_visible(w->tr);
            w->next_restore = cel_monotonic() + cfg->worker_restore_interval;
        }
    }

    if (w->stop == COLD) {
        /* Cold: running tasks are killed; what was not acked goes back. */
        cel_pool_stop(w->pool, true);
        w->pool = NULL;
        flush_all(w);
        restore_reserved(w, true);
    } else {
        cel_pool_stop(w->pool, false);
        w->pool = NULL;
        flush_all(w);
    }
    /* A BRPOP still in flight may deliver one more message: put it back. */
    w->tr->ops->wait_cancel(w->tr);
    while (w->tr->ops->waiting(w->tr)) {
        cel_delivery d = {0};
        struct pollfd p = {.fd = w->tr->ops->wait_fd(w->tr), .events = POLLIN};
        if (poll(&p, 1, 3000) <= 0)
            break;
        if (w->tr->ops->wait_ready(w->tr, &d) == 1) {
            cel_message m = {0};
            char e2[64];
            cel_message_parse_redis(d.raw, d.len, &m, e2, sizeof e2);
            if (m.delivery_tag)
                w->tr->ops->restore(w->tr, m.delivery_tag, d.raw, d.len);
            cel_message_clear(&m);
            cel_delivery_free(&d);
        }
    }
    rc = 0;
    if (!cfg->without_heartbeat)
        cel_events_worker(w->ev, "worker-offline", 0, w->started);
    cel_info("Worker %s stopped (%lu task(s) processed)", cfg->hostname, w->processed);
out:
    if (w->pool)
        cel_pool_stop(w->pool, true);
    while (w->nreqs)
        drop_req(w, w->reqs[0]);
    free(w->reqs);
    free(w->buckets);
    for (size_t i = 0; i < w->nqueues; i++) {
        free(w->queues[i].name);
        free(w->queues[i].exchange);
        free(w->queues[i].type);
        free(w->queues[i].routing_key);
    }
    free(w->queues);
    free(w->totals);
    cel_metrics_close(w->metrics);
    cel_url_free(&w->broker_url);
    cel_events_free(w->ev);
    if (w->ctl && cfg->state_db)
        cel_control_save(w->ctl, cfg->state_db);
    cel_control_free(w->ctl);
    cel_backend_close(w->be);
    if (w->tr)
        w->tr->ops->close(w->tr);
    cel_registry_free(w->reg);
    g_sigpipe_w = -1;
    close(w->sigpipe[0]);
    close(w->sigpipe[1]);
    return rc;
}
