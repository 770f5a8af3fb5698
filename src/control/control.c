/* control.c — remote control (pidbox), as a Celery 5.2 worker answers it.
 *
 * A request is a kombu message on the fanout exchange `celery.pidbox`:
 * body {"method", "arguments", "destination", "pattern", "matcher",
 * "ticket", "reply_to": {"exchange", "routing_key"}}, header `clock`.  A
 * worker acts when `destination` is null or names it (a `pattern` is matched
 * with fnmatch for `glob`), and replies only when a ticket and reply_to came,
 * with {nodename: payload} and headers ticket/clock (shared/docs/
 * celery-wire-contract.md §6).
 *
 * Commands so far: ping, revoke (with terminate and signal), terminate,
 * revoked, clock, enable_events, disable_events, heartbeat, hello (mingle);
 * the worker's own (inspect, shutdown, limits) through host.command; anything else gets Celery's {"error": "KeyError('<m>')"}.
 *
 * Why a module of its own: the transports only carry envelopes in and
 * replies out; what a command means lives here, and what it changes in the
 * worker goes through cel_control_host callbacks.
 */
#include "control/control.h"
#include "core/log.h"
#include "core/util.h"
#include "core/message.h"

#include <fnmatch.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REVOKES_MAX 50000
#define REVOKE_EXPIRES 10800.0 /* seconds, Celery's REVOKE_EXPIRES */

typedef struct revoked_id {
    char *id;
    double at; /* monotonic */
} revoked_id;

struct cel_control {
    cel_control_host host;
    long long clock;
    revoked_id *revoked; /* oldest first */
    size_t nrevoked, caprevoked;
};

cel_control *cel_control_new(const cel_control_host *host)
{
    cel_control *c = calloc(1, sizeof *c);
    if (c)
        c->host = *host;
    return c;
}

void cel_control_free(cel_control *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nrevoked; i++)
        free(c->revoked[i].id);
    free(c->revoked);
    free(c);
}

static void expire_revoked(cel_control *c);

long long cel_control_clock(const cel_control *c) { return c->clock; }

long long cel_control_next_clock(cel_control *c) { return c ? ++c->clock : 0; }

int cel_control_load(cel_control *c, const char *path)
{
    json_error_t jerr;
    FILE *f = fopen(path, "r");
    if (!f)
        return 0; /* first start */
    json_t *st = json_loadf(f, 0, &jerr);
    fclose(f);
    const json_t *rev = json_object_get(st, "revoked");
    if (!st || !json_is_array(rev)) {
        cel_error("statedb %s: not a celeriac state file (%s); starting without it", path,
                  st ? "no revoked list" : jerr.text);
        json_decref(st);
        return -1;
    }
    double now = cel_monotonic();
    size_t i;
    const json_t *e;
    json_array_foreach(rev, i, e) {
        const char *id = json_string_value(json_array_get(e, 0));
        double age = json_number_value(json_array_get(e, 1));
        if (!id || age < 0 || age >= REVOKE_EXPIRES)
            continue;
        if (cel_grow(&c->revoked, &c->caprevoked, c->nrevoked, sizeof *c->revoked, 64) < 0)
            break;
        char *dup = strdup(id);
        if (!dup)
            break;
        c->revoked[c->nrevoked++] = (revoked_id){dup, now - age};
    }
    const json_t *clock = json_object_get(st, "clock");
    if (json_is_integer(clock) && json_integer_value(clock) > c->clock)
        c->clock = json_integer_value(clock);
    json_decref(st);
    expire_revoked(c);
    if (c->nrevoked)
        cel_info("statedb %s: %zu revoked task id(s) restored", path, c->nrevoked);
    return 0;
}

int cel_control_save(cel_control *c, const char *path)
{
    expire_revoked(c);
    double now = cel_monotonic();
    json_t *rev = json_array();
    for (size_t i = 0; i < c->nrevoked; i++)
        json_array_append_new(rev, json_pack("[s, f]", c->revoked[i].id,
                                             now - c->revoked[i].at));
    json_t *st = json_pack("{s:o, s:I}", "revoked", rev, "clock", (json_int_t)c->clock);
    char *tmp = NULL;
    int rc = -1;
    if (st && asprintf(&tmp, "%s.tmp", path) >= 0 &&
        json_dump_file(st, tmp, JSON_COMPACT) == 0 && rename(tmp, path) == 0)
        rc = 0;
    else
        cel_error("statedb %s: could not be written", path);
    free(tmp);
    json_decref(st);
    return rc;
}

static void expire_revoked(cel_control *c)
{
    double now = cel_monotonic();
    size_t drop = 0;
    while (drop < c->nrevoked &&
           (c->nrevoked - drop > REVOKES_MAX || now - c->revoked[drop].at > REVOKE_EXPIRES))
        free(c->revoked[drop++].id);
    if (drop) {
        memmove(c->revoked, c->revoked + drop, (c->nrevoked - drop) * sizeof *c->revoked);
        c->nrevoked -= drop;
    }
}

bool cel_control_is_revoked(cel_control *c, const char *task_id)
{
    if (!c || !task_id || !c->nrevoked)
        return false;
    expire_revoked(c);
    for (size_t i = c->nrevoked; i-- > 0;)
        if (!strcmp(c->revoked[i].id, task_id))
            return true;
    return false;
}

static void add_revoked_at(cel_control *c, const char *id, double at)
{
    if (cel_monotonic() - at > REVOKE_EXPIRES)
        return; /* already expired (a stale hello entry) */
    for (size_t i = 0; i < c->nrevoked; i++)
        if (!strcmp(c->revoked[i].id, id)) {
            c->revoked[i].at = at;
            return;
        }
    if (cel_grow(&c->revoked, &c->caprevoked, c->nrevoked, sizeof *c->revoked, 64) < 0)
        return;
    char *dup = strdup(id);
    if (!dup)
        return;
    c->revoked[c->nrevoked++] = (revoked_id){dup, at};
    expire_revoked(c);
}

static void add_revoked(cel_control *c, const char *id) { add_revoked_at(c, id, cel_monotonic()); }

/* "SIGTERM", "TERM", 15 or null -> a signal number (default SIGTERM). */
static int signal_number(const json_t *v)
{
    if (json_is_integer(v))
        return (int)json_integer_value(v);
    const char *s = json_string_value(v);
    if (!s)
        return SIGTERM;
    if (!strncmp(s, "SIG", 3))
        s += 3;
    for (int n = 1; n < NSIG; n++) {
        const char *name = sigabbrev_np(n);
        if (name && !strcmp(name, s))
            return n;
    }
    return -1;
}

/* revoke / terminate: task_id is a string or a list of strings. */
static json_t *cmd_revoke(cel_control *c, const json_t *args, bool terminate)
{
    const json_t *ids = json_object_get(args, "task_id");
    size_t n = json_is_array(ids) ? json_array_size(ids) : json_is_string(ids) ? 1 : 0;
    const char **list = calloc(n ? n : 1, sizeof *list);
    if (!list)
        return json_pack("{s:s}", "error", "MemoryError()");
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = json_is_array(ids) ? json_string_value(json_array_get(ids, i))
                                           : json_string_value(ids);
        if (s && *s)
            list[k++] = s;
    }
    if (json_is_true(json_object_get(args, "terminate")))
        terminate = true;
    int signum = signal_number(json_object_get(args, "signal"));
    if (signum < 0) {
        free(list);
        return json_pack("{s:s}", "error", "ValueError('unknown signal')");
    }
    for (size_t i = 0; i < k; i++)
        add_revoked(c, list[i]);
    int hit = c->host.revoke(c->host.ud, list, k, terminate, signum);
    /* Celery's replies: "tasks a, b flagged as revoked"; with terminate
     * "terminate: a, b" (those running) or "terminate: tasks unknown". */
    size_t need = 64;
    for (size_t i = 0; i < k; i++)
        need += strlen(list[i]) + 2;
    char *msg = malloc(need);
    json_t *out = NULL;
    if (msg) {
        if (terminate && hit == 0) {
            snprintf(msg, need, "terminate: tasks unknown");
        } else {
            strcpy(msg, terminate ? "terminate: " : "tasks ");
            for (size_t i = 0; i < k; i++) {
                if (i)
                    strcat(msg, ", ");
                strcat(msg, list[i]);
            }
            if (!terminate)
                strcat(msg, " flagged as revoked");
        }
        cel_info("%s", terminate ? msg : msg);
        out = json_pack("{s:s}", "ok", msg);
    }
    free(msg);
    free(list);
    return out;
}

/* hello (mingle): another node starting up sends its revoked ids and asks
 * for ours; Celery merges them and answers {"revoked": {id: [time, id]},
 * "clock": n}.  Our own hello (we send none) is ignored. */
static json_t *cmd_hello(cel_control *c, const json_t *args, bool *reply)
{
    const char *from = json_string_value(json_object_get(args, "from_node"));
    if (!from || !strcmp(from, c->host.hostname)) {
        *reply = false;
        return NULL;
    }
    cel_info("sync with %s", from);
    /* {id: [inserted, id]}: LimitedSet's entries, stamped with the sender's
     * monotonic clock (the same clock on one host); stale ones expire at once,
     * as Celery's purge() drops them. */
    const json_t *theirs = json_object_get(args, "revoked");
    const char *id;
    const json_t *v;
    json_object_foreach((json_t *)theirs, id, v) {
        const json_t *ts = json_is_array(v) ? json_array_get(v, 0) : v;
        add_revoked_at(c, id, json_is_number(ts) ? json_number_value(ts) : cel_monotonic());
    }
    expire_revoked(c);
    json_t *mine = json_object();
    for (size_t i = 0; i < c->nrevoked; i++)
        json_object_set_new(mine, c->revoked[i].id,
                            json_pack("[f, s]", c->revoked[i].at, c->revoked[i].id));
    return json_pack("{s:o, s:I}", "revoked", mine, "clock", (json_int_t)++c->clock);
}

static json_t *cmd_revoked(cel_control *c)
{
    expire_revoked(c);
    json_t *a = json_array();
    for (size_t i = 0; i < c->nrevoked; i++)
        json_array_append_new(a, json_string(c->revoked[i].id));
    return a;
}

/* Does the request name this worker? */
static bool for_me(cel_control *c, const json_t *req)
{
    const json_t *dest = json_object_get(req, "destination");
    if (json_is_array(dest)) {
        size_t i;
        const json_t *d;
        json_array_foreach(dest, i, d) {
            if (json_is_string(d) && !strcmp(json_string_value(d), c->host.hostname))
                return true;
        }
        return false;
    }
    const char *pattern = json_string_value(json_object_get(req, "pattern"));
    if (pattern) {
        const char *matcher = json_string_value(json_object_get(req, "matcher"));
        if (matcher && strcmp(matcher, "glob") != 0) {
            cel_warn("remote control: matcher '%s' is not supported; request ignored", matcher);
            return false;
        }
        return fnmatch(pattern, c->host.hostname, 0) == 0;
    }
    return true;
}

void cel_control_handle(cel_control *c, const char *envelope, size_t len)
{
    json_error_t jerr;
    json_t *env = json_loadb(envelope, len, 0, &jerr);
    json_t *req = NULL;
    const char *b64 = json_string_value(json_object_get(env, "body"));
    if (b64) {
        size_t blen = 0;
        char *body = cel_b64_decode(b64, strlen(b64), &blen);
        if (body)
            req = json_loadb(body, blen, 0, &jerr);
        free(body);
    }
    const char *method = json_string_value(json_object_get(req, "method"));
    if (!method) {
        cel_error("remote control: malformed request dropped");
        goto out;
    }
    /* Lamport clock: max(local, remote) + 1 on every message received. */
    const json_t *rc = json_object_get(json_object_get(env, "headers"), "clock");
    long long remote = json_is_integer(rc) ? json_integer_value(rc) : 0;
    /* A forged clock near 2^63 would overflow the +1 here and on every reply
     * and event (found by tests/fuzz/fuzz_pidbox); half the range leaves
     * room for more increments than a worker will ever make. */
    if (remote > LLONG_MAX / 2)
        remote = LLONG_MAX / 2;
    c->clock = (remote > c->clock ? remote : c->clock) + 1;
    if (!for_me(c, req))
        goto out;
    const json_t *args = json_object_get(req, "arguments");
    if (args && !json_is_null(args) && !json_is_object(args)) {
        /* Every command reads its arguments by name; a forged list or
         * string is refused whole rather than run with none. */
        cel_error("remote control: %.100s: 'arguments' is not an object; request dropped",
                  method);
        goto out;
    }
    cel_debug("remote control: %s", method);
    json_t *payload;
    bool reply = true;
    if (!strcmp(method, "ping")) {
        payload = json_pack("{s:s}", "ok", "pong");
    } else if (!strcmp(method, "revoke")) {
        payload = cmd_revoke(c, args, false);
    } else if (!strcmp(method, "terminate")) {
        payload = cmd_revoke(c, args, true);
    } else if (!strcmp(method, "hello")) {
        payload = cmd_hello(c, args, &reply);
    } else if (!strcmp(method, "revoked")) {
        payload = cmd_revoked(c);
    } else if ((!strcmp(method, "enable_events") || !strcmp(method, "disable_events")) &&
               c->host.set_task_events) {
        bool on = method[0] == 'e';
        bool was = c->host.set_task_events(c->host.ud, on);
        char msg[64];
        snprintf(msg, sizeof msg, "task events %s%s", was == on ? "already " : "",
                 on ? "enabled" : "disabled");
        payload = json_pack("{s:s}", "ok", msg);
    } else if (!strcmp(method, "heartbeat") && c->host.heartbeat) {
        c->host.heartbeat(c->host.ud);
        payload = json_null();
    } else if (!strcmp(method, "clock")) {
        payload = json_pack("{s:I}", "clock", (json_int_t)c->clock);
    } else if (!strcmp(method, "election")) {
        payload = NULL; /* Python gossip; a forged one crashed the Python worker */
        reply = false;
    } else if (c->host.command &&
               (payload = c->host.command(c->host.ud, method, args, &reply)) != NULL) {
        /* the worker's own: inspect, shutdown, rate_limit, ... */
    } else {
        char err[300];
        snprintf(err, sizeof err, "KeyError('%.200s')", method);
        payload = json_pack("{s:s}", "error", err);
    }
    const char *ticket = json_string_value(json_object_get(req, "ticket"));
    const json_t *rt = json_object_get(req, "reply_to");
    const char *rex = json_string_value(json_object_get(rt, "exchange"));
    const char *rrk = json_string_value(json_object_get(rt, "routing_key"));
    if (reply && ticket && rex && rrk) {
        json_t *body = json_object();
        json_object_set(body, c->host.hostname, payload ? payload : json_null());
        size_t blen = 0;
        char *text = cel_json_dumps_py(body, &blen);
        c->clock++;
        if (!text || c->host.reply(c->host.ud, rex, rrk, ticket, c->clock, text, blen) < 0)
            cel_error("remote control: the reply to %s could not be sent", method);
        free(text);
        json_decref(body);
    }
    json_decref(payload);
out:
    json_decref(req);
    json_decref(env);
}
