/* exec.c — the task API's implementation (include/celeriac/task.h) and the
 * step that runs a task function.
 *
 * Why a synthesized traceback: Python clients read `.traceback` and logs show
 * it; a C task has no Python frames, so we write one frame naming the task
 * and the exception line Python would print, which is what a user needs to
 * find the failing task.
 */
#include "worker/exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cel_task {
    json_t *req; /* borrowed request */
    const char *id, *name, *root_id, *parent_id, *group_id, *hostname;
    int retries;
    volatile sig_atomic_t *soft_flag;
    cel_state_cb state_cb;
    void *state_ud;
    /* outcome */
    json_t *outcome;
};

static const char *opt_str(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void set_str(json_t *obj, const char *key, const char *val)
{
    json_object_set_new(obj, key, val ? json_string(val) : json_null());
}

json_t *cel_exec_request_new(const cel_message *m, const char *hostname)
{
    json_t *r = json_object();
    set_str(r, "id", m->id);
    set_str(r, "task", m->task);
    json_object_set(r, "args", m->args);
    json_object_set(r, "kwargs", m->kwargs);
    set_str(r, "root_id", m->root_id);
    set_str(r, "parent_id", m->parent_id);
    set_str(r, "group", m->group);
    json_object_set_new(r, "retries", json_integer(m->retries));
    set_str(r, "hostname", hostname);
    if (m->headers)
        json_object_set(r, "headers", m->headers);
    json_t *di = json_object();
    set_str(di, "exchange", m->exchange ? m->exchange : "");
    set_str(di, "routing_key", m->routing_key ? m->routing_key : "");
    json_object_set_new(di, "priority", json_integer(m->priority));
    json_object_set_new(di, "redelivered", m->redelivered ? json_true() : json_null());
    json_object_set_new(r, "delivery_info", di);
    return r;
}

static char *make_traceback(const char *task, const char *module, const char *type,
                            json_t *args)
{
    char *msg = NULL;
    size_t n = json_array_size(args);
    if (n == 1 && json_is_string(json_array_get(args, 0))) {
        msg = strdup(json_string_value(json_array_get(args, 0)));
    } else if (n > 0) {
        msg = json_dumps(args, JSON_ENCODE_ANY);
    }
    char *tb = NULL;
    const char *qual = strcmp(module, "builtins") == 0 ? "" : module;
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

json_t *cel_exec_failure(const char *module, const char *type, json_t *args,
                         const char *traceback)
{
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("FAILURE"));
    json_object_set_new(o, "exc_type", json_string(type));
    json_object_set_new(o, "exc_module", json_string(module));
    json_object_set_new(o, "exc_message", args ? args : json_array());
    json_object_set_new(o, "traceback", traceback ? json_string(traceback) : json_null());
    return o;
}

static void set_outcome(cel_task *t, json_t *o)
{
    json_decref(t->outcome);
    t->outcome = o;
}

int cel_task_return(cel_task *t, json_t *value)
{
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("SUCCESS"));
    json_object_set_new(o, "result", value ? value : json_null());
    set_outcome(t, o);
    return CEL_TASK_SUCCESS;
}

int cel_task_raise_args(cel_task *t, const char *module, const char *type, json_t *args)
{
    if (!json_is_array(args)) {
        json_decref(args);
        args = json_array();
    }
    char *tb = make_traceback(t->name, module, type, args);
    set_outcome(t, cel_exec_failure(module, type, args, tb));
    free(tb);
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
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string("RETRY"));
    json_object_set_new(o, "countdown", json_real(countdown));
    set_outcome(t, o);
    return CEL_TASK_RETRY;
}

int cel_task_update_state(cel_task *t, const char *state, json_t *meta)
{
    if (!t->state_cb || !state) {
        json_decref(meta);
        return -1;
    }
    return t->state_cb(t->state_ud, t->id, state, meta ? meta : json_null());
}

const char *cel_task_id(const cel_task *t) { return t->id; }
const char *cel_task_name(const cel_task *t) { return t->name; }
const char *cel_task_root_id(const cel_task *t) { return t->root_id; }
const char *cel_task_parent_id(const cel_task *t) { return t->parent_id; }
const char *cel_task_group_id(const cel_task *t) { return t->group_id; }
const char *cel_task_hostname(const cel_task *t) { return t->hostname; }
int cel_task_retries(const cel_task *t) { return t->retries; }
const json_t *cel_task_headers(const cel_task *t) { return json_object_get(t->req, "headers"); }
const json_t *cel_task_delivery_info(const cel_task *t)
{
    return json_object_get(t->req, "delivery_info");
}
bool cel_task_soft_limit_exceeded(const cel_task *t) { return t->soft_flag && *t->soft_flag; }

json_t *cel_exec_run(const cel_registry *reg, json_t *request,
                     volatile sig_atomic_t *soft_flag, cel_state_cb state_cb, void *ud)
{
    cel_task t = {
        .req = request,
        .id = opt_str(request, "id"),
        .name = opt_str(request, "task"),
        .root_id = opt_str(request, "root_id"),
        .parent_id = opt_str(request, "parent_id"),
        .group_id = opt_str(request, "group"),
        .hostname = opt_str(request, "hostname"),
        .retries = (int)json_integer_value(json_object_get(request, "retries")),
        .soft_flag = soft_flag,
        .state_cb = state_cb,
        .state_ud = ud,
    };
    const cel_task_def *def = t.name ? cel_registry_find(reg, t.name) : NULL;
    if (!def) {
        json_t *a = json_array();
        json_array_append_new(a, json_string(t.name ? t.name : ""));
        return cel_exec_failure("celery.exceptions", "NotRegistered", a, NULL);
    }
    json_t *args = json_object_get(request, "args");
    json_t *kwargs = json_object_get(request, "kwargs");
    int rc = def->fn(&t, args, kwargs);
    if (!t.outcome) {
        /* The task returned without using a result call. */
        if (rc == CEL_TASK_SUCCESS)
            cel_task_return(&t, NULL);
        else
            cel_task_raise(&t, "builtins", "RuntimeError",
                           "task %s returned %d without a result", t.name, rc);
    }
    if (t.soft_flag && *t.soft_flag && rc == CEL_TASK_SUCCESS) {
        /* As Python: the soft limit interrupts the task unless it handled it
         * (a task that noticed the flag and returned a value handled it). */
    }
    return t.outcome;
}
