/* canvas.c — link callbacks, chains and errbacks, as Celery's tracer does
 * them (celery/app/trace.py, and _call_task_errbacks in
 * celery/backends/base.py).
 *
 * A signature in the body's embed is {"task", "args", "kwargs", "options",
 * "immutable", ...}.  Applying it with the parent's return value prepends
 * the value to its args (unless immutable), takes its options (task_id,
 * queue, reply_to, link, link_error, countdown/eta, expires, time limits,
 * priority, ignore_result) and sets parent_id/root_id from the running task,
 * which is what Signature.apply_async → Task.apply_async → as_task_v2 put
 * in the message a Python worker sends.
 *
 * Why in the executing process: it has the decoded body and the return
 * value.  It builds the envelopes and hands them to the parent (a frame
 * before the outcome), so they are published before the result is stored,
 * as Celery requires ("so that result.children is populated").
 */
#include "worker/canvas.h"
#include "core/log.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *opt_str(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* A time option: a number (seconds from now) or an ISO 8601 string. */
static double opt_when(const json_t *o, const char *k, bool relative_number)
{
    const json_t *v = json_object_get(o, k);
    double t;
    if (json_is_number(v))
        return relative_number ? cel_now() + json_number_value(v) : json_number_value(v);
    if (json_is_string(v) && cel_iso8601_parse(json_string_value(v), &t) == 0)
        return t;
    return 0;
}

/* `link` may be one signature or a list of them. */
static json_t *as_list(const json_t *v)
{
    if (json_is_array(v))
        return json_array_size(v) ? json_incref((json_t *)v) : json_null();
    if (json_is_object(v)) {
        json_t *a = json_array();
        json_array_append(a, (json_t *)v);
        return a;
    }
    return json_null();
}

/* Builds and sends the message for signature `sig`; returns the new task's
 * id (malloc'd) or NULL when `sig` is not a usable signature. */
static char *apply_signature(const cel_message *m, const json_t *sig, const json_t *prepend,
                             const json_t *chain_rest, const char *group_id, int group_index,
                             cel_canvas_send_fn send, void *ud)
{
    const char *task = opt_str(sig, "task");
    if (!json_is_object(sig) || !task || !*task) {
        cel_error("Task %s[%s]: a callback is not a task signature; not sent", m->task, m->id);
        return NULL;
    }
    const json_t *o = json_object_get(sig, "options");
    if (!json_is_object(o))
        o = NULL;
    const json_t *sargs = json_object_get(sig, "args");
    json_t *args = json_array();
    if (prepend && !json_is_true(json_object_get(sig, "immutable")))
        json_array_extend(args, (json_t *)prepend);
    if (json_is_array(sargs))
        json_array_extend(args, (json_t *)sargs);
    const json_t *kwargs = json_object_get(sig, "kwargs");
    json_t *embed = json_pack("{s:o, s:o, s:O, s:O}", "callbacks",
                              as_list(json_object_get(o, "link")), "errbacks",
                              as_list(json_object_get(o, "link_error")), "chain",
                              chain_rest && json_array_size(chain_rest) ? chain_rest : json_null(),
                              "chord", json_object_get(o, "chord") ? json_object_get(o, "chord")
                                                                   : json_null());
    json_t *gidx = group_id ? json_integer(group_index) : NULL;
    const char *queue = opt_str(o, "queue");
    if (!queue)
        queue = opt_str(o, "routing_key");
    const json_t *prio = json_object_get(o, "priority");
    double eta = opt_when(o, "countdown", true);
    if (eta <= 0)
        eta = opt_when(o, "eta", false);
    cel_message_spec spec = {
        .task = task,
        .id = opt_str(o, "task_id"),
        .root_id = m->root_id ? m->root_id : m->id,
        .parent_id = m->id,
        .group = group_id ? group_id : opt_str(o, "group_id"),
        .group_index = gidx ? gidx : json_object_get(o, "group_index"),
        .reply_to = opt_str(o, "reply_to"),
        .queue = queue ? queue : "celery",
        .exchange = opt_str(o, "exchange"),
        .args = args,
        .kwargs = json_is_object(kwargs) ? kwargs : NULL,
        .embed = embed,
        .priority = json_is_integer(prio) ? (int)json_integer_value(prio) : 0,
        .eta = eta,
        .expires = opt_when(o, "expires", true),
        .time_limit = json_number_value(json_object_get(o, "time_limit")),
        .soft_time_limit = json_number_value(json_object_get(o, "soft_time_limit")),
        .ignore_result = json_is_true(json_object_get(o, "ignore_result")),
    };
    char *id = NULL;
    char *env = cel_message_build_redis(&spec, &id);
    if (env) {
        send(ud, spec.queue, spec.priority, env, strlen(env));
        cel_info("Task %s[%s] sent %s[%s]", m->task, m->id, task, id);
    } else {
        cel_error("Task %s[%s]: could not build the message for %s", m->task, m->id, task);
    }
    free(env);
    json_decref(gidx);
    json_decref(embed);
    json_decref(args);
    return env ? id : (free(id), NULL);
}

/* AsyncResult.as_tuple(): [[id, null], null]. */
static json_t *result_tuple(const char *id)
{
    return json_pack("[[s, n], n]", id);
}

/* group(sigs).apply_async(prepend): one new group id, indexes in order;
 * appends GroupResult.as_tuple() to `children`. */
static void apply_group(const cel_message *m, const json_t *sigs, const json_t *prepend,
                        json_t *children, cel_canvas_send_fn send, void *ud)
{
    char gid[37];
    cel_uuid4(gid);
    json_t *members = json_array();
    size_t i;
    const json_t *sig;
    json_array_foreach(sigs, i, sig) {
        char *id = apply_signature(m, sig, prepend, NULL, gid, (int)i, send, ud);
        if (id)
            json_array_append_new(members, result_tuple(id));
        free(id);
    }
    if (children)
        json_array_append_new(children, json_pack("[[s, n], o]", gid, members));
    else
        json_decref(members);
}

json_t *cel_canvas_on_success(const cel_message *m, const json_t *retval,
                              cel_canvas_send_fn send, void *ud)
{
    json_t *children = json_array();
    const json_t *e = m->embed;
    if (!json_is_object(e))
        return children;
    json_t *prepend = json_array();
    json_array_append_new(prepend, retval ? json_deep_copy(retval) : json_null());
    const json_t *cbs = json_object_get(e, "callbacks");
    if (json_is_array(cbs) && json_array_size(cbs) == 1) {
        char *id = apply_signature(m, json_array_get(cbs, 0), prepend, NULL, NULL, 0, send, ud);
        if (id)
            json_array_append_new(children, result_tuple(id));
        free(id);
    } else if (json_is_array(cbs) && json_array_size(cbs) > 1) {
        apply_group(m, cbs, prepend, children, send, ud);
    }
    /* The chain is stored last-task-first: pop the end, pass the rest on. */
    const json_t *chain = json_object_get(e, "chain");
    size_t n = json_is_array(chain) ? json_array_size(chain) : 0;
    if (n) {
        json_t *rest = json_array();
        for (size_t i = 0; i + 1 < n; i++)
            json_array_append(rest, json_array_get(chain, i));
        char *id = apply_signature(m, json_array_get(chain, n - 1), prepend, rest, NULL, 0,
                                   send, ud);
        if (id)
            json_array_append_new(children, result_tuple(id));
        free(id);
        json_decref(rest);
    }
    json_decref(prepend);
    return children;
}

void cel_canvas_on_failure(const cel_message *m, cel_canvas_send_fn send, void *ud)
{
    const json_t *e = m->embed;
    const json_t *ebs = json_is_object(e) ? json_object_get(e, "errbacks") : NULL;
    if (!json_is_array(ebs) || !json_array_size(ebs))
        return;
    json_t *prepend = json_pack("[s]", m->id);
    apply_group(m, ebs, prepend, NULL, send, ud);
    json_decref(prepend);
}

char *cel_canvas_apply(const cel_message *m, const json_t *sig, const json_t *prepend,
                       cel_canvas_send_fn send, void *ud)
{
    /* A chain (`chord(...) | task`): its first task with the rest of it as
     * the message's chain, stored last-task-first (_chain.run). */
    const json_t *tasks = json_object_get(json_object_get(sig, "kwargs"), "tasks");
    if (json_is_array(tasks) && json_array_size(tasks) &&
        (!strcmp(opt_str(sig, "subtask_type") ? opt_str(sig, "subtask_type") : "", "chain") ||
         !strcmp(opt_str(sig, "task") ? opt_str(sig, "task") : "", "celery.chain"))) {
        json_t *rest = json_array();
        for (size_t i = json_array_size(tasks); i-- > 1;)
            json_array_append(rest, json_array_get(tasks, i));
        char *id = apply_signature(m, json_array_get(tasks, 0), prepend, rest, NULL, 0, send, ud);
        json_decref(rest);
        return id;
    }
    /* A group (a chord's body): group.apply_async sends each member with
     * the results prepended, under the id the chord froze for the group,
     * which the client's GroupResult already names.  Returns that id. */
    const char *gid = opt_str(json_object_get(sig, "options"), "task_id");
    if (json_is_array(tasks) && json_array_size(tasks) && gid &&
        (!strcmp(opt_str(sig, "subtask_type") ? opt_str(sig, "subtask_type") : "", "group") ||
         !strcmp(opt_str(sig, "task") ? opt_str(sig, "task") : "", "celery.group"))) {
        size_t i;
        const json_t *member;
        json_array_foreach(tasks, i, member) {
            const json_t *mo = json_object_get(member, "options");
            const json_t *gi = json_object_get(mo, "group_index");
            const char *mg = opt_str(mo, "group_id");
            free(apply_signature(m, member, prepend, NULL, mg ? mg : gid,
                                 json_is_integer(gi) ? (int)json_integer_value(gi) : (int)i,
                                 send, ud));
        }
        return strdup(gid);
    }
    return apply_signature(m, sig, prepend, NULL, NULL, 0, send, ud);
}
