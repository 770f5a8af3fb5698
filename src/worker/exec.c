/* exec.c — the task API's implementation (include/celeriac/task.h) and the
 * step that runs a task function (see exec.h).
 *
 * Why a synthesized traceback: Python clients read `.traceback` and logs show
 * it; a C task has no Python frames, so we write one frame naming the task
 * and the exception line Python would print, which is what a user needs to
 * find the failing task.
 */
#include "worker/exec.h"
#include "worker/canvas.h"
#include "worker/chord.h"
#include "backend/backend.h"
#include "core/log.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct cel_task {
    const cel_message *m;
    const cel_exec_env *env;
    volatile sig_atomic_t *soft_flag;
    bool soft_seen; /* the task looked and saw the soft limit passed */
    cel_state_cb state_cb;
    void *state_ud;
    json_t *delivery_info; /* built on first use */
    json_t *headers;       /* parsed on first use */
    /* outcome */
    bool done;
    int status;
    json_t *result;     /* SUCCESS value */
    const char *exc_module, *exc_type;
    json_t *exc_args;   /* FAILURE args */
    double countdown;   /* RETRY */
    double eta;         /* RETRY at this Unix time (retry(eta=...)); 0 = countdown */
    int max_retries;    /* RETRY: this call's limit (retry(max_retries=...)); 0 = the task's */
    json_t *retry_exc;  /* RETRY: the exception dict recorded (retry(exc=...), autoretry) */
    json_t *held;       /* keeps the strings of a raised retry exc alive */
};

void cel_outcome_clear(cel_outcome *o)
{
    free(o->meta);
    memset(o, 0, sizeof *o);
}

json_t *cel_exc_dict(const char *module, const char *type, json_t *args)
{
    return json_pack("{s:s, s:o, s:s}", "exc_type", type, "exc_message",
                     args ? args : json_array(), "exc_module", module);
}

static char *exec_record(const cel_exec_env *env, const cel_message *m, const char *status,
                         json_t *result, const char *traceback, json_t *children, size_t *len)
{
    cel_result_rec rec = {
        .children = children,
        .task_id = m->id,
        .status = status,
        .result = result,
        .traceback = traceback,
        .group_id = m->group,
        .parent_id = m->parent_id,
        .reply_to = m->reply_to,
        .name = m->task,
        .args = m->args,
        .kwargs = m->kwargs,
        .worker = env->hostname,
        .retries = m->retries,
        .queue = m->routing_key,
    };
    json_t *meta = cel_result_meta(&rec, env->extended, env->for_rpc);
    char *text = meta ? cel_json_dumps_py(meta, len) : NULL;
    json_decref(meta);
    return text;
}

char *cel_exec_record(const cel_exec_env *env, const cel_message *m, const char *status,
                      json_t *result, const char *traceback, size_t *len)
{
    return exec_record(env, m, status, result, traceback, NULL, len);
}

/* Celery's mark_as_failure marks every task left in the chain failed with
 * the same exception, so the chain's last result (what the client waits
 * on) is not left PENDING forever. */
static void fail_chain(const cel_exec_env *env, const cel_message *m, json_t *exc,
                       const char *tb, cel_task *t)
{
    const json_t *chain = json_is_object(m->embed) ? json_object_get(m->embed, "chain") : NULL;
    size_t i;
    const json_t *sig;
    json_array_foreach(chain, i, sig) {
        const json_t *o = json_object_get(sig, "options");
        const char *id = json_string_value(json_object_get(o, "task_id"));
        if (!id || !t->state_cb)
            continue;
        const char *reply_to = json_string_value(json_object_get(o, "reply_to"));
        cel_result_rec rec = {.task_id = id, .status = "FAILURE", .result = exc,
                              .traceback = tb,
                              .group_id = json_string_value(json_object_get(o, "group_id")),
                              .reply_to = reply_to};
        json_t *meta = cel_result_meta(&rec, false, env->for_rpc);
        size_t ml = 0;
        char *text = meta ? cel_json_dumps_py(meta, &ml) : NULL;
        json_decref(meta);
        char *note = NULL;
        int nl = text ? asprintf(&note, "%s\n%s\n%s", id, reply_to ? reply_to : "", text) : -1;
        if (nl > 0)
            t->state_cb(t->state_ud, CEL_NOTE_STORE, note, (size_t)nl);
        free(note);
        free(text);
        /* A chain in a chord header: its last step is a chord part. */
        size_t pl = 0;
        char *part = cel_chord_part_sig(sig, "FAILURE", exc, m, &pl);
        if (part)
            t->state_cb(t->state_ud, CEL_NOTE_CHORD, part, pl);
        free(part);
    }
}

/* Canvas messages go to the owner of the broker as PUBLISH notes. */
static void canvas_send(void *ud, const char *queue, int priority, const char *env, size_t len)
{
    cel_task *t = ud;
    char head[320];
    int hl = snprintf(head, sizeof head, "%s\n%d\n", queue, priority);
    char *buf = hl > 0 && (size_t)hl < sizeof head ? malloc((size_t)hl + len) : NULL;
    if (!buf || !t->state_cb) {
        cel_error("Task %s[%s]: a callback message could not be handed on", t->m->task,
                  t->m->id);
        free(buf);
        return;
    }
    memcpy(buf, head, (size_t)hl);
    memcpy(buf + hl, env, len);
    t->state_cb(t->state_ud, CEL_NOTE_PUBLISH, buf, (size_t)hl + len);
    free(buf);
}

/* A chord header task is over: the parent joins the chord after storing
 * the outcome (worker/chord.c). */
static void chord_note(const cel_message *m, const char *state, const json_t *result,
                       cel_state_cb cb, void *ud)
{
    size_t len = 0;
    char *part = cb ? cel_chord_part(m, state, result, m, &len) : NULL;
    if (part)
        cb(ud, CEL_NOTE_CHORD, part, len);
    free(part);
}

/* str() of an aware UTC datetime at Unix time `ts`, as Retry.humanize
 * prints an eta: "2026-01-02 03:04:05.678000+00:00" (no fraction when it
 * is zero; microseconds rounded as datetime.fromtimestamp, ties aside). */
static void py_utc_datetime(double ts, char *buf, size_t size)
{
    /* Without libm (the unit tests link the core alone); ts > 0. */
    time_t tt = (time_t)ts;
    long usec = (long)((ts - (double)tt) * 1e6 + 0.5);
    if (usec >= 1000000) {
        tt += 1;
        usec -= 1000000;
    }
    struct tm tm;
    gmtime_r(&tt, &tm);
    char date[40], frac[24] = "";
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
    if (usec)
        snprintf(frac, sizeof frac, ".%06ld", usec);
    snprintf(buf, size, "%s%s+00:00", date, frac);
}

/* "ValueError('kaboom')", as Python's repr of the exception. */
static char *exc_repr(const char *type, json_t *args)
{
    bool one = json_array_size(args) == 1;
    char *a = one ? cel_pyrepr(json_array_get(args, 0)) : cel_pyrepr_args(args);
    char *s = NULL;
    if (asprintf(&s, "%s%s%s%s", type, one ? "(" : "", a ? a : "()", one ? ")" : "") < 0)
        s = NULL;
    free(a);
    return s;
}

static char *make_traceback(const char *task, const char *module, const char *type,
                            json_t *args)
{
    char *msg = NULL;
    size_t n = json_array_size(args);
    if (n == 1 && json_is_string(json_array_get(args, 0)))
        msg = strdup(json_string_value(json_array_get(args, 0)));
    else if (n > 0)
        msg = cel_pyrepr_args(args);
    const char *qual = strcmp(module, "builtins") == 0 ? "" : module;
    char *tb = NULL;
    if (asprintf(&tb,
                 "Traceback (most recent call last):\n"
                 "  File \"<celeriac task module>\", in %s\n"
                 "%s%s%s%s%s\n",
                 task ? task : "?", qual, *qual ? "." : "", type, msg ? ": " : "",
                 msg ? msg : "") < 0)
        tb = NULL;
    free(msg);
    return tb;
}

static void reset_outcome(cel_task *t)
{
    json_decref(t->result);
    json_decref(t->exc_args);
    json_decref(t->retry_exc);
    t->result = t->exc_args = t->retry_exc = NULL;
    t->eta = 0;
    t->max_retries = 0;
    t->done = true;
}

int cel_task_return(cel_task *t, json_t *value)
{
    reset_outcome(t);
    t->status = CEL_TASK_SUCCESS;
    t->result = value ? value : json_null();
    return CEL_TASK_SUCCESS;
}

int cel_task_raise_args(cel_task *t, const char *module, const char *type, json_t *args)
{
    reset_outcome(t);
    if (!json_is_array(args)) {
        json_decref(args);
        args = json_array();
    }
    t->status = CEL_TASK_FAILURE;
    t->exc_module = module;
    t->exc_type = type;
    t->exc_args = args;
    return CEL_TASK_FAILURE;
}

int cel_task_raise(cel_task *t, const char *module, const char *type, const char *fmt, ...)
{
    char *msg = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    json_t *args = json_array();
    if (msg)
        json_array_append_new(args, json_string(msg));
    free(msg);
    return cel_task_raise_args(t, module, type, args);
}

int cel_task_retry(cel_task *t, double countdown)
{
    reset_outcome(t);
    t->status = CEL_TASK_RETRY;
    t->countdown = countdown;
    return CEL_TASK_RETRY;
}

int cel_task_retry_ex(cel_task *t, const cel_retry_options *o)
{
    if (!o)
        return cel_task_retry(t, CEL_RETRY_DEFAULT_DELAY);
    json_t *exc = NULL;
    if (o->exc_type) {
        json_t *args = json_is_array(o->exc_args) ? json_deep_copy(o->exc_args)
                       : o->exc_message               ? json_pack("[s]", o->exc_message)
                                                      : json_array();
        exc = cel_exc_dict(o->exc_module ? o->exc_module : "builtins", o->exc_type, args);
    }
    cel_task_retry(t, o->countdown);
    /* Checked once the task has returned (check_max_retries), where the
     * task's own limit is known. */
    t->eta = o->eta > 0 ? o->eta : 0;
    t->max_retries = o->max_retries;
    t->retry_exc = exc;
    return CEL_TASK_RETRY;
}

int cel_task_update_state(cel_task *t, const char *state, json_t *meta)
{
    if (!state || !t->state_cb || !t->env->store_results) {
        json_decref(meta);
        return t->state_cb ? 0 : -1;
    }
    size_t len = 0;
    char *text = cel_exec_record(t->env, t->m, state, meta ? meta : json_null(), NULL, &len);
    json_decref(meta);
    if (!text)
        return -1;
    t->state_cb(t->state_ud, CEL_NOTE_STATE, text, len);
    free(text);
    return 0;
}

const char *cel_task_id(const cel_task *t) { return t->m->id; }
const char *cel_task_name(const cel_task *t) { return t->m->task; }
const char *cel_task_root_id(const cel_task *t) { return t->m->root_id; }
const char *cel_task_parent_id(const cel_task *t) { return t->m->parent_id; }
const char *cel_task_group_id(const cel_task *t) { return t->m->group; }
const char *cel_task_hostname(const cel_task *t) { return t->env->hostname; }
int cel_task_retries(const cel_task *t) { return t->m->retries; }
const json_t *cel_task_headers(const cel_task *t)
{
    cel_task *mt = (cel_task *)t; /* a cache, not a change of state */
    if (!mt->headers)
        mt->headers = cel_message_headers(t->m);
    return mt->headers;
}
bool cel_task_soft_limit_exceeded(const cel_task *t)
{
    if (!t->soft_flag || !*t->soft_flag)
        return false;
    ((cel_task *)t)->soft_seen = true; /* bookkeeping, not a change of outcome */
    return true;
}

const json_t *cel_task_delivery_info(const cel_task *t)
{
    cel_task *mt = (cel_task *)t; /* a cache, not a change of state */
    if (!mt->delivery_info) {
        const cel_message *m = t->m;
        mt->delivery_info = json_pack("{s:s, s:s, s:i, s:o}", "exchange",
                                      m->exchange ? m->exchange : "", "routing_key",
                                      m->routing_key ? m->routing_key : "", "priority",
                                      m->priority, "redelivered",
                                      m->redelivered ? json_true() : json_null());
    }
    return mt->delivery_info;
}

int cel_backoff_interval(int factor, int retries, int maximum, bool full_jitter)
{
    /* celery.utils.time.get_exponential_backoff_interval */
    double c = (double)factor * (retries < 62 ? (double)(1ULL << retries) : 4e18);
    int countdown = c < maximum ? (int)c : maximum;
    if (full_jitter && countdown > 0) {
        static unsigned seed;
        if (!seed)
            seed = (unsigned)(cel_monotonic() * 1e6) ^ (unsigned)getpid();
        countdown = (int)(rand_r(&seed) % ((unsigned)countdown + 1));
    }
    return countdown > 0 ? countdown : 0;
}

static bool autoretry_matches(const cel_task_def *def, const char *module, const char *type)
{
    for (const char *const *p = def->opts.autoretry_for; p && *p; p++) {
        const char *dot = strrchr(*p, '.');
        if (!strcmp(*p, "Exception") || !strcmp(*p, type) ||
            (dot && !strcmp(dot + 1, type) && module && strlen(module) == (size_t)(dot - *p) &&
             !strncmp(*p, module, (size_t)(dot - *p))))
            return true;
    }
    return false;
}

/* Celery's autoretry: task.retry(exc=exc) — a retry while retries are
 * left, else the failure stands (retry re-raises exc). */
static void autoretry(cel_task *t, const cel_task_def *def)
{
    int max = def->opts.max_retries == 0                ? 3
              : def->opts.max_retries == CEL_RETRIES_NONE ? 0
                                                          : def->opts.max_retries;
    if (max != CEL_RETRIES_UNLIMITED && t->m->retries >= max)
        return;
    double countdown;
    if (def->opts.retry_backoff > 0) {
        int factor = def->opts.retry_backoff < 1 ? 1 : (int)def->opts.retry_backoff;
        int maximum = def->opts.retry_backoff_max > 0 ? (int)def->opts.retry_backoff_max : 600;
        countdown = cel_backoff_interval(factor, t->m->retries, maximum,
                                         cel_option_on(def->opts.retry_jitter, true));
    } else {
        countdown = def->opts.default_retry_delay > 0 ? def->opts.default_retry_delay : 180;
    }
    json_t *exc = cel_exc_dict(t->exc_module, t->exc_type, json_incref(t->exc_args));
    reset_outcome(t);
    t->status = CEL_TASK_RETRY;
    t->countdown = countdown;
    t->retry_exc = exc;
}

/* Turns a RETRY past max_retries (the call's, else the task's) into the
 * exception given to retry(), or Celery's MaxRetriesExceededError. */
static void check_max_retries(cel_task *t, const cel_task_def *def)
{
    int limit = t->max_retries ? t->max_retries : def->opts.max_retries;
    int max = limit == 0 ? 3 : limit == CEL_RETRIES_NONE ? 0 : limit;
    const cel_message *m = t->m;
    if (max == CEL_RETRIES_UNLIMITED || m->retries < max) {
        if (t->eta > 0) /* the parent publishes the retry at eta; countdown is for the log */
            t->countdown = t->eta - cel_now();
        else if (t->countdown < 0)
            t->countdown = def->opts.default_retry_delay > 0 ? def->opts.default_retry_delay : 180;
        return;
    }
    if (t->retry_exc) {
        /* Task.retry: `raise_with_context(exc)` — the task fails with it. */
        json_t *exc = t->retry_exc;
        t->retry_exc = NULL;
        cel_task_raise_args(t, json_string_value(json_object_get(exc, "exc_module")),
                            json_string_value(json_object_get(exc, "exc_type")),
                            json_incref(json_object_get(exc, "exc_message")));
        t->held = exc;
        return;
    }
    char *msg = NULL;
    if (asprintf(&msg, "Can't retry %s[%s] args:%s kwargs:%s", m->task, m->id,
                 m->argsrepr ? m->argsrepr : "()", m->kwargsrepr ? m->kwargsrepr : "{}") < 0)
        msg = NULL;
    cel_task_raise(t, "celery.exceptions", "MaxRetriesExceededError", "%s", msg ? msg : "");
    free(msg);
}

void cel_exec_run(const cel_exec_env *env, const cel_message *m,
                  volatile sig_atomic_t *soft_flag, cel_state_cb state_cb, void *ud,
                  cel_outcome *out)
{
    memset(out, 0, sizeof *out);
    cel_task t = {.m = m, .env = env, .soft_flag = soft_flag, .state_cb = state_cb,
                  .state_ud = ud};
    const cel_task_def *def = cel_registry_find(env->reg, m->task);
    double t0 = cel_monotonic();
    if (!def) {
        cel_task_raise(&t, "celery.exceptions", "NotRegistered", "%s", m->task);
    } else {
        int rc = def->fn(&t, m->args, m->kwargs);
        if (!t.done) {
            if (rc == CEL_TASK_SUCCESS)
                cel_task_return(&t, NULL);
            else
                cel_task_raise(&t, "builtins", "RuntimeError",
                               "task %s returned %d without a result", m->task, rc);
        }
        if (soft_flag && *soft_flag && !t.soft_seen) {
            /* In Python the exception would have been raised inside the task
             * at the limit: whatever the task did after it does not count. */
            cel_task_raise_args(&t, "billiard.exceptions", "SoftTimeLimitExceeded", json_array());
        }
        if (t.status == CEL_TASK_FAILURE && def->opts.autoretry_for &&
            autoretry_matches(def, t.exc_module, t.exc_type))
            autoretry(&t, def);
        else if (t.status == CEL_TASK_RETRY)
            check_max_retries(&t, def);
    }
    out->runtime = cel_monotonic() - t0;

    /* Celery: a success is stored unless the task or the message says
     * ignore_result; failures and retries unless the *task* does (the
     * message's ignore_result does not stop them), or even then with
     * store_errors_even_if_ignored. */
    bool task_ignore = cel_option_on(def ? def->opts.ignore_result : 0, env->ignore_result);
    bool store = env->store_results && !task_ignore && !m->ignore_result;
    bool store_err = env->store_results &&
                     (!task_ignore ||
                      cel_option_on(def ? def->opts.store_errors_even_if_ignored : 0,
                                    env->store_errors_even_if_ignored));
    if (t.status == CEL_TASK_SUCCESS) {
        out->status = CEL_OUT_SUCCESS;
        if (cel_log_get_level() <= CEL_LOG_INFO) {
            char *r = cel_pyrepr(t.result);
            json_t *rt = json_real(out->runtime);
            char *rts = cel_pyrepr(rt); /* Python's float repr, as Celery prints it */
            cel_info("Task %s[%s] succeeded in %ss: %s", m->task, m->id, rts ? rts : "?",
                     r ? r : "");
            json_decref(rt);
            free(rts);
            free(r);
        }
        /* Callbacks and the chain go out before SUCCESS is stored, and the
         * record lists them as children (Celery's tracer). */
        json_t *children = cel_canvas_on_success(m, t.result, canvas_send, &t);
        if (store)
            out->meta = exec_record(env, m, "SUCCESS", t.result, NULL, children, &out->meta_len);
        json_decref(children);
        chord_note(m, "SUCCESS", t.result, state_cb, ud);
    } else if (t.status == CEL_TASK_RETRY) {
        out->status = CEL_OUT_RETRY;
        out->countdown = t.countdown;
        out->eta = t.eta;
        char msg[1100], when[64];
        if (t.eta > 0)
            py_utc_datetime(t.eta, when, sizeof when);
        else
            snprintf(when, sizeof when, "%g", t.countdown);
        char *er = t.retry_exc ? exc_repr(json_string_value(json_object_get(t.retry_exc,
                                                                            "exc_type")),
                                          json_object_get(t.retry_exc, "exc_message"))
                               : NULL;
        /* Celery's Retry.__str__: "Retry in 2s" or "Retry in 2s: ValueError('x')";
         * with an eta "Retry at 2026-01-02 03:04:05.678000+00:00". */
        snprintf(msg, sizeof msg, "Retry %s %s%s%s%.1000s", t.eta > 0 ? "at" : "in", when,
                 t.eta > 0 ? "" : "s", er ? ": " : "", er ? er : "");
        free(er);
        cel_info("Task %s[%s] retry: %s", m->task, m->id, msg);
        /* What Celery's tracer stores for retry() without exc: result None
         * (the exc given to retry), the traceback of the Retry raised, and
         * the re-sent message (same task id) as the child. */
        json_t *rargs = json_pack("[s]", msg);
        char *tb = make_traceback(m->task, "celery.exceptions", "Retry", rargs);
        json_decref(rargs);
        json_t *children = json_pack("[[[s, n], n]]", m->id);
        if (store_err)
            out->meta = exec_record(env, m, "RETRY", t.retry_exc, tb, children, &out->meta_len);
        json_decref(children);
        free(tb);
    } else {
        out->status = CEL_OUT_FAILURE;
        char *tb = make_traceback(m->task, t.exc_module, t.exc_type, t.exc_args);
        char *rep = exc_repr(t.exc_type, t.exc_args);
        cel_error("Task %s[%s] raised unexpected: %s\n%s", m->task, m->id, rep ? rep : "",
                  tb ? tb : "");
        free(rep);
        json_t *exc = cel_exc_dict(t.exc_module, t.exc_type, json_incref(t.exc_args));
        if (store_err)
            fail_chain(env, m, exc, tb, &t);
        cel_canvas_on_failure(m, canvas_send, &t);
        if (store_err)
            out->meta = cel_exec_record(env, m, "FAILURE", exc, tb, &out->meta_len);
        chord_note(m, "FAILURE", exc, state_cb, ud);
        json_decref(exc);
        free(tb);
    }
    json_decref(t.result);
    json_decref(t.exc_args);
    json_decref(t.retry_exc);
    json_decref(t.held);
    json_decref(t.delivery_info);
    json_decref(t.headers);
}
