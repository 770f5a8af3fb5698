/* chord.c — chords on the Redis result backend, as Celery 5.2.6 does them.
 *
 * The producer (chord.run → group._apply_tasks) sends every header task with
 * the body signature as `chord` in its embed, the chord's group id as its
 * `group` and its position as `group_index`, and SETs
 * celery-taskset-meta-<group>.s to the header's size before the last header
 * task goes out.  The worker that finishes a header task, after storing its
 * result (mark_as_done / mark_as_failure / mark_as_revoked), calls
 * RedisBackend.on_chord_part_return:
 *
 *   ZADD <group>.j {[1, id, state, result]: group_index}   (result_chord_ordered)
 *   ZCOUNT <group>.j -inf +inf;  GET <group>.t;  GET <group>.s;  EXPIRE x3
 *
 * and when the count equals .s + .t (.t: tasks added with add_to_chord) it
 * reads the set in order (ZRANGE 0 -1), sends body.delay(results) and
 * deletes .j, .t and .s.  A header result in FAILURE or REVOKED makes the
 * join raise ChordError("Dependency <id> raised <repr(exc)>"): the body is
 * not sent, its errbacks are, its result is stored FAILURE with that
 * ChordError (chord_error_from_stack), and the keys are left to expire.
 *
 * The counting step is one Lua script (backend/redis.c), atomic like
 * Celery's MULTI/EXEC pipeline, so celeriac and Python workers can finish
 * header tasks of one chord side by side: exactly one of them sees the
 * complete count.
 */
#include "worker/chord.h"
#include "core/log.h"
#include "core/util.h"
#include "worker/canvas.h"
#include "worker/exec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *jstr(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

char *cel_chord_part(const cel_message *m, const char *state, const json_t *result,
                     const cel_message *running, size_t *len)
{
    const json_t *body = json_is_object(m->embed) ? json_object_get(m->embed, "chord") : NULL;
    if (!json_is_object(body) || !m->group || !m->id)
        return NULL;
    json_t *p = json_pack("{s:s, s:s, s:s, s:O, s:O, s:s, s:O}", "task", m->task, "id", m->id,
                          "group", m->group, "group_index",
                          m->group_index ? m->group_index : json_null(), "chord", body,
                          "state", state, "result", result ? result : json_null());
    if (p && running) {
        json_object_set_new(p, "parent_id", json_string(running->id));
        json_object_set_new(p, "root_id",
                            json_string(running->root_id ? running->root_id : running->id));
    }
    char *text = p ? cel_json_dumps_py(p, len) : NULL;
    json_decref(p);
    return text;
}

char *cel_chord_part_sig(const json_t *sig, const char *state, const json_t *result,
                         const cel_message *running, size_t *len)
{
    const json_t *o = json_object_get(sig, "options");
    cel_message m;
    memset(&m, 0, sizeof m);
    m.task = jstr(sig, "task") ? jstr(sig, "task") : "?";
    m.id = jstr(o, "task_id");
    m.group = jstr(o, "group_id");
    m.group_index = json_object_get(o, "group_index");
    json_t *embed = json_pack("{s:O}", "chord",
                              json_object_get(o, "chord") ? json_object_get(o, "chord")
                                                          : json_null());
    m.embed = embed;
    char *text = cel_chord_part(&m, state, result, running, len);
    json_decref(embed);
    return text;
}

char *cel_chord_part_raw(const char *raw, size_t len, const char *state, const json_t *result,
                         size_t *out_len)
{
    cel_message m;
    memset(&m, 0, sizeof m);
    char err[256];
    char *text = NULL;
    if (cel_message_parse_redis(raw, len, &m, err, sizeof err) == CEL_MSG_OK)
        text = cel_chord_part(&m, state, result, NULL, out_len);
    cel_message_clear(&m);
    return text;
}

static void publish(void *ud, const char *queue, int priority, const char *env, size_t len)
{
    cel_transport *tr = ud;
    if (tr->ops->publish(tr, queue, priority, env, len) < 0)
        cel_error("A chord message could not be published to %s", queue);
}

/* repr() of the exception Celery rebuilds from a stored exception dict
 * (exception_to_python): "ValueError('kaboom')". */
static char *exc_repr(const json_t *exc)
{
    const char *type = jstr(exc, "exc_type");
    if (!type)
        return cel_pyrepr(exc);
    const char *dot = strrchr(type, '.');
    if (dot)
        type = dot + 1;
    const json_t *msg = json_object_get(exc, "exc_message");
    json_t *args = json_is_array(msg) ? json_incref((json_t *)msg) : json_array();
    if (!json_is_array(msg))
        json_array_append_new(args, msg ? json_incref((json_t *)msg) : json_string(""));
    bool one = json_array_size(args) == 1;
    char *a = one ? cel_pyrepr(json_array_get(args, 0)) : cel_pyrepr_args(args);
    char *s = NULL;
    if (asprintf(&s, "%s%s%s%s", type, one ? "(" : "", a ? a : "()", one ? ")" : "") < 0)
        s = NULL;
    free(a);
    json_decref(args);
    return s;
}

/* chord_error_from_stack(body, ChordError(message)): the body's errbacks are
 * sent with [body_id], then its result is stored FAILURE. */
static void chord_error(cel_backend *be, cel_transport *tr, const char *group,
                        const json_t *body, const char *message)
{
    json_t *ms = json_string(message);
    char *mr = cel_pyrepr(ms);
    json_decref(ms);
    cel_error("Chord '%s' raised: ChordError(%s)", group, mr ? mr : "");
    free(mr);
    const json_t *o = json_object_get(body, "options");
    const char *body_id = jstr(o, "task_id");
    const json_t *eb = json_object_get(o, "link_error");
    if (json_is_object(eb) || (json_is_array(eb) && json_array_size(eb))) {
        cel_message fake;
        memset(&fake, 0, sizeof fake);
        fake.task = jstr(body, "task") ? jstr(body, "task") : "?";
        fake.id = body_id ? body_id : "";
        json_t *ebs = json_is_array(eb) ? json_incref((json_t *)eb) : json_pack("[O]", eb);
        fake.embed = json_pack("{s:o}", "errbacks", ebs);
        cel_canvas_on_failure(&fake, publish, tr);
        json_decref(fake.embed);
    }
    if (!body_id)
        return;
    json_t *exc = cel_exc_dict("celery.exceptions", "ChordError", json_pack("[s]", message));
    char *tb = NULL;
    if (asprintf(&tb,
                 "Traceback (most recent call last):\n"
                 "  File \"celery/backends/redis.py\", in on_chord_part_return\n"
                 "celery.exceptions.ChordError: %s\n",
                 message) < 0)
        tb = NULL;
    /* fail_from_current_stack(callback.id): no request, so no group_id,
     * parent_id or extended fields. */
    cel_result_rec rec = {.task_id = body_id, .status = "FAILURE", .result = exc,
                          .traceback = tb};
    json_t *meta = cel_result_meta(&rec, false, be->for_rpc);
    size_t len = 0;
    char *text = meta ? cel_json_dumps_py(meta, &len) : NULL;
    if (text)
        cel_backend_store_raw(be, body_id, NULL, text, len);
    free(text);
    json_decref(meta);
    json_decref(exc);
    free(tb);
}

void cel_chord_part_return(cel_backend *be, cel_transport *tr, const char *part, size_t len)
{
    json_t *p = json_loadb(part, len, 0, NULL);
    const char *id = jstr(p, "id"), *group = jstr(p, "group"), *state = jstr(p, "state");
    const json_t *body = json_object_get(p, "chord");
    if (!be || !id || !group || !state || !json_is_object(body)) {
        json_decref(p);
        return;
    }
    if (!be->ops->chord_join) {
        cel_error("Task %s: chords need the Redis result backend; the body of chord %s is "
                  "not run", id, group);
        json_decref(p);
        return;
    }
    char score[32];
    const json_t *gi = json_object_get(p, "group_index");
    if (json_is_integer(gi))
        snprintf(score, sizeof score, "%lld", (long long)json_integer_value(gi));
    else
        snprintf(score, sizeof score, "+inf");
    json_t *e = json_pack("[i, s, s, O]", 1, id, state, json_object_get(p, "result"));
    char *entry = e ? cel_json_dumps_py(e, NULL) : NULL;
    json_decref(e);
    json_t *entries = NULL;
    bool saved = false;
    int rc = entry ? be->ops->chord_join(be, group, entry, score, &entries, &saved) : -1;
    free(entry);
    if (rc < 0) {
        cel_error("Chord %s: the part of task %s could not be joined (result backend)", group,
                  id);
        json_decref(p);
        return;
    }
    if (!entries) { /* not the last part */
        json_decref(p);
        return;
    }
    if (saved)
        cel_warn("Chord %s: the header holds groups; their results are passed flat", group);
    /* Celery's _unpack_chord_result over the set, in order: the first
     * FAILURE or REVOKED raises ChordError. */
    json_t *resl = json_array();
    char *error = NULL;
    size_t i;
    json_t *v;
    json_array_foreach(entries, i, v) {
        json_t *t = json_loads(json_string_value(v), 0, NULL);
        const char *tid = json_string_value(json_array_get(t, 1));
        const char *st = json_string_value(json_array_get(t, 2));
        json_t *rv = json_array_get(t, 3);
        if (!json_is_array(t) || !tid || !st) {
            if (asprintf(&error, "Join error: ValueError('undecodable chord part')") < 0)
                error = NULL;
        } else if (!strcmp(st, "FAILURE") || !strcmp(st, "REVOKED")) {
            char *r = exc_repr(rv);
            if (asprintf(&error, "Dependency %s raised %s", tid, r ? r : "") < 0)
                error = NULL;
            free(r);
        } else {
            json_array_append(resl, rv ? rv : json_null());
        }
        json_decref(t);
        if (error)
            break;
    }
    json_decref(entries);
    if (error) {
        chord_error(be, tr, group, body, error);
        free(error);
    } else {
        /* callback.delay(resl), from the task whose part completed the
         * chord (send_task takes parent_id/root_id from it). */
        cel_message running;
        memset(&running, 0, sizeof running);
        running.task = jstr(p, "task") ? jstr(p, "task") : "?";
        running.id = jstr(p, "parent_id") ? jstr(p, "parent_id") : id;
        running.root_id = jstr(p, "root_id");
        json_t *prepend = json_pack("[O]", resl);
        char *bid = cel_canvas_apply(&running, body, prepend, publish, tr);
        json_decref(prepend);
        if (!bid)
            chord_error(be, tr, group, body,
                        "Callback error: ValueError('the chord body is not a task "
                        "signature')");
        free(bid);
        be->ops->chord_clear(be, group);
    }
    json_decref(resl);
    json_decref(p);
}
