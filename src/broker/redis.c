/* redis.c — the Redis transport, kombu 5.2.4-compatible.
 *
 * Keys are kombu's: list `<queue>` (+ `<queue>\x06\x16<3|6|9>` priority
 * lists), `_kombu.binding.<exchange>` sets, and the ack emulation `unacked`
 * hash (tag -> [envelope, exchange, routing_key]), `unacked_index` zset (tag
 * -> delivery time) and `unacked_mutex`.  A Python worker and celeriac can
 * therefore share a queue, and each restores what the other left unacked.
 *
 * Why Lua for fetching: kombu's BRPOP-then-HSET leaves a window in which a
 * crash loses the popped message.  FETCH_LUA pops up to N messages and
 * records them in `unacked`/`unacked_index` atomically, with the same values
 * kombu writes.  BRPOP (on a second connection, so acks and results never
 * wait behind it) is used only to sleep on empty queues; the message it pops
 * is handed to FETCH_LUA at once to be recorded — the same window kombu has,
 * and only on an idle queue.
 *
 * Why restore in C and not Lua: the restored envelope must be the original
 * with two `redelivered` flags set; jansson keeps every value exactly (Lua's
 * cjson would turn `[]` into `{}`), and a compare-and-move script keeps the
 * move atomic as kombu's WATCH/MULTI does.
 */
#include "broker/transport.h"
#include "core/log.h"
#include "core/message.h"
#include "core/rconn.h"
#include "core/util.h"

#include <jansson.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEP "\x06\x16"

/* KEYS: unacked, unacked_index, then the queue lists in priority order.
 * ARGV: max, now, n_acks, ack tags..., [popped message, its key].
 *
 * Acks first (kombu's ZREM unacked_index + HDEL unacked), then up to `max`
 * messages are popped and recorded.  Kombu writes `properties` last and
 * `delivery_tag` last in it, so tag, exchange and routing key are found with
 * plain searches near the envelope's end (the hot path); anything not in that
 * shape is decoded with cjson.  On Redis 7 and later (which name their
 * version to scripts) one RPOP with a count and one ZADD and HSET for the
 * whole batch replace three calls per message: a third of the script's cost
 * at a batch of 8. */
static const char FETCH_LUA[] =
    "local max = tonumber(ARGV[1])\n"
    "local now = ARGV[2]\n"
    "local nacks = tonumber(ARGV[3])\n"
    "if nacks > 0 then\n"
    "  local tags = {unpack(ARGV, 4, 3 + nacks)}\n"
    "  redis.call('ZREM', KEYS[2], unpack(tags))\n"
    "  redis.call('HDEL', KEYS[1], unpack(tags))\n"
    "end\n"
    "local out = {}\n"
    "local find, sub = string.find, string.sub\n"
    "local function plain(s) return not find(s, '[\"\\\\%c]') end\n"
    "local function fields(m)\n"
    "  local n = #m\n"
    "  if sub(m, n - 2) == '\"}}' then\n"
    "    local i = find(m, '\"delivery_tag\": \"', math.max(1, n - 80), true)\n"
    "    local j = find(m, '\"delivery_info\": {\"exchange\": \"', math.max(1, n - 1024), true)\n"
    "    if i and j then\n"
    "      local tag = sub(m, i + 17, n - 3)\n"
    "      local k = find(m, '\", \"routing_key\": \"', j + 31, true)\n"
    "      local l = k and find(m, '\"}', k + 19, true)\n"
    "      if l and plain(tag) then\n"
    "        local ex, rk = sub(m, j + 31, k - 1), sub(m, k + 19, l - 1)\n"
    "        if plain(ex) and plain(rk) then return tag, '\"' .. ex .. '\"', '\"' .. rk .. '\"' end\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "  local ok, env = pcall(cjson.decode, m)\n"
    "  if not (ok and type(env) == 'table' and type(env['properties']) == 'table') then return nil end\n"
    "  local p = env['properties']\n"
    "  if type(p['delivery_tag']) ~= 'string' then return nil end\n"
    "  local ex, rk = '', ''\n"
    "  local di = p['delivery_info']\n"
    "  if type(di) == 'table' then\n"
    "    if type(di['exchange']) == 'string' then ex = di['exchange'] end\n"
    "    if type(di['routing_key']) == 'string' then rk = di['routing_key'] end\n"
    "  end\n"
    "  return p['delivery_tag'], cjson.encode(ex), cjson.encode(rk)\n"
    "end\n"
    "local batch = redis.REDIS_VERSION_NUM ~= nil\n"
    "local zargs, hargs = {}, {}\n"
    "local function track(key, m)\n"
    "  local tag, ex, rk = fields(m)\n"
    "  if tag then\n"
    "    local v = '[' .. m .. ', ' .. ex .. ', ' .. rk .. ']'\n"
    "    if batch then\n"
    "      zargs[#zargs + 1] = now\n"
    "      zargs[#zargs + 1] = tag\n"
    "      hargs[#hargs + 1] = tag\n"
    "      hargs[#hargs + 1] = v\n"
    "    else\n"
    "      redis.call('ZADD', KEYS[2], now, tag)\n"
    "      redis.call('HSET', KEYS[1], tag, v)\n"
    "    end\n"
    "  end\n"
    "  out[#out + 1] = key\n"
    "  out[#out + 1] = m\n"
    "end\n"
    "local extra = 4 + nacks\n"
    "if ARGV[extra] then track(ARGV[extra + 1], ARGV[extra]) end\n"
    "for i = 3, #KEYS do\n"
    "  local want = max - #out / 2\n"
    "  if want <= 0 then break end\n"
    "  if batch then\n"
    "    local ms = redis.call('RPOP', KEYS[i], want)\n"
    "    if ms then for j = 1, #ms do track(KEYS[i], ms[j]) end end\n"
    "  else\n"
    "    for j = 1, want do\n"
    "      local m = redis.call('RPOP', KEYS[i])\n"
    "      if not m then break end\n"
    "      track(KEYS[i], m)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "if #zargs > 0 then\n"
    "  redis.call('ZADD', KEYS[2], unpack(zargs))\n"
    "  redis.call('HSET', KEYS[1], unpack(hargs))\n"
    "end\n"
    "return out\n";

/* KEYS: unacked, unacked_index, queue; ARGV: tag, new envelope, expected
 * old hash value (or "" to skip the check), push side ("R"/"L"). */
static const char RESTORE_LUA[] =
    "if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then return 0 end\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "if ARGV[4] == 'L' then redis.call('LPUSH', KEYS[3], ARGV[2])\n"
    "else redis.call('RPUSH', KEYS[3], ARGV[2]) end\n"
    "return 1\n";

static const char UNLOCK_LUA[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";

typedef struct redis_transport {
    cel_transport base;
    cel_url url;
    const cel_config *cfg;
    redisContext *cmd;  /* acks, fetch script, publish, restore */
    redisContext *blk;  /* BRPOP only */
    long long blk_id;   /* its CLIENT ID, to unblock it at shutdown */
    double down_since;  /* monotonic start of a broker outage, 0 = up */
    bool acks_logged;   /* "ack(s) not sent yet" said once until a flush works */
    double next_retry;  /* monotonic time of the next reconnect attempt */
    int retries;        /* failed reconnects in this outage, for the backoff */
    bool waiting;
    char **queues;      /* consumed queues, rotated for fairness */
    int nqueues;
    char **xbind;       /* add_consumer bindings: exchange, member, exchange, ... */
    size_t nxbind;
    char **keys;        /* their list keys, priority-major (4 * nqueues) */
    cel_rscript fetch, restore, unlock;
    char **acks;        /* queued ack tags */
    size_t nacks, capacks;
    redisContext *sub;  /* PSUBSCRIBE /{db}.celery.pidbox (remote control) */
    double sub_retry;   /* monotonic time of the next reconnect attempt */
    redisContext *ev;   /* PUBLISH of monitoring events, pipelined */
    int ev_unread;      /* its PUBLISH replies not read yet */
    double ev_retry;    /* monotonic time of the next reconnect attempt */
} redis_transport;

void cel_delivery_free(cel_delivery *d)
{
    free(d->raw);
    free(d->queue);
    d->raw = d->queue = NULL;
}

static const char *const PRIO_SUFFIX[4] = {"", SEP "3", SEP "6", SEP "9"};

static int priority_step(int priority)
{
    if (priority >= 9)
        return 3;
    if (priority >= 6)
        return 2;
    if (priority >= 3)
        return 1;
    return 0;
}

static char *queue_key(const char *queue, int step)
{
    char *k = NULL;
    if (asprintf(&k, "%s%s", queue, PRIO_SUFFIX[step]) < 0)
        return NULL;
    return k;
}

/* The queue a key belongs to (strip the priority suffix). */
static char *key_queue(const char *key, size_t len)
{
    const char *sep = memmem(key, len, SEP, 2);
    size_t n = sep ? (size_t)(sep - key) : len;
    return strndup(key, n);
}

/* (Re)builds the cached list keys after the queue order changed. */
static void build_keys(redis_transport *t)
{
    cel_strv_free(t->keys); /* NULL-terminated; sized for the old count */
    t->keys = calloc((size_t)(4 * t->nqueues) + 1, sizeof *t->keys);
    if (!t->keys)
        abort(); /* start-up sized; nothing sensible to do without it */
    for (int step = 0; step < 4; step++)
        for (int q = 0; q < t->nqueues; q++) {
            t->keys[step * t->nqueues + q] = queue_key(t->queues[q], step);
            if (!t->keys[step * t->nqueues + q])
                abort();
        }
}

static int declare_bindings(redis_transport *t, char *err, size_t errlen);

/* One line when the broker goes away and one when it is back, however long
 * the outage: a dead broker must not flood the log. */
static void outage(redis_transport *t, const char *what)
{
    if (t->down_since == 0) {
        t->down_since = cel_monotonic();
        cel_error("broker: %s; reconnecting with backoff (up to 2 s)", what);
    }
}

static int reconnect_cmd(redis_transport *t)
{
    if (t->cmd && !t->cmd->err)
        return 0;
    if (t->cmd) {
        outage(t, t->cmd->errstr);
        redisFree(t->cmd);
        t->cmd = NULL;
    }
    /* Backoff: every caller of a loop turn (fetch, flush, restore, publish)
     * would otherwise dial a dead server; attempts 0.25, 0.5, 1, 2 s apart,
     * then every 2 s, so a short restart is caught at once and a long outage
     * costs little (and the server is back in use at most 2 s after it is). */
    double now = cel_monotonic();
    if (t->down_since != 0 && now < t->next_retry)
        return -1;
    char err[256];
    t->cmd = cel_redis_connect(&t->url, 5.0, err, sizeof err);
    if (!t->cmd) {
        outage(t, err);
        t->retries++;
        t->next_retry = now + (t->retries < 4 ? 0.125 * (1 << t->retries) : 2.0);
        return -1;
    }
    t->fetch.sha[0] = t->restore.sha[0] = t->unlock.sha[0] = 0;
    /* A restarted Redis may have lost the bindings: declare them again. */
    if (t->nqueues && declare_bindings(t, err, sizeof err) < 0) {
        outage(t, err);
        redisFree(t->cmd);
        t->cmd = NULL;
        return -1;
    }
    if (t->down_since != 0) {
        cel_warn("broker: reconnected after %.1f s", cel_monotonic() - t->down_since);
        cel_broker_reconnects++;
        t->down_since = 0;
        t->acks_logged = false;
        t->retries = 0;
    }
    return 0;
}

static int parse_fetch_reply(redisReply *r, cel_delivery *out, int max)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return -1;
    int n = 0;
    for (size_t i = 0; i + 1 < r->elements && n < max; i += 2) {
        redisReply *k = r->element[i], *m = r->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || m->type != REDIS_REPLY_STRING)
            continue;
        out[n].queue = key_queue(k->str, k->len);
        if (!out[n].queue)
            continue;
        /* Take hiredis' buffer (malloc'd, NUL-terminated) instead of copying
         * it; freeReplyObject skips a NULL str. */
        out[n].raw = m->str;
        out[n].len = m->len;
        m->str = NULL;
        n++;
    }
    return n;
}

/* Runs FETCH_LUA: sends the queued acks and takes up to `max` messages;
 * `popped`/`popped_key` is a message BRPOP already took.  Acks are forgotten
 * only once the script ran, so a broken connection resends them. */
static int run_fetch(redis_transport *t, int max, cel_delivery *out, const char *popped,
                     size_t popped_len, const char *popped_key, size_t popped_key_len)
{
    int nkeys = 2 + 4 * t->nqueues;
    size_t cap = (size_t)nkeys + 5 + t->nacks;
    const char **argv = calloc(cap, sizeof *argv);
    size_t *lens = calloc(cap, sizeof *lens);
    int rc = -1;
    if (!argv || !lens)
        goto done;
    argv[0] = "unacked";
    argv[1] = "unacked_index";
    int k = 2;
    /* Priority-major order, as kombu's BRPOP lists the keys. */
    for (int step = 0; step < 4; step++)
        for (int q = 0; q < t->nqueues; q++)
            argv[k++] = t->keys[step * t->nqueues + q];
    for (int i = 0; i < k; i++)
        lens[i] = strlen(argv[i]);
    char maxs[16], now[32], nacks[16];
    snprintf(maxs, sizeof maxs, "%d", max);
    snprintf(now, sizeof now, "%.6f", cel_now());
    snprintf(nacks, sizeof nacks, "%zu", t->nacks);
    int argc = k;
    argv[argc++] = maxs;
    argv[argc++] = now;
    argv[argc++] = nacks;
    for (size_t i = 0; i < t->nacks; i++)
        argv[argc++] = t->acks[i];
    for (int i = k; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (popped) {
        argv[argc] = popped;
        lens[argc++] = popped_len;
        argv[argc] = popped_key;
        lens[argc++] = popped_key_len;
    }
    if (reconnect_cmd(t) < 0)
        goto done;
    redisReply *r = cel_rscript_call(t->cmd, &t->fetch, k, argc, argv, lens);
    if (!r) {
        outage(t, t->cmd->err ? t->cmd->errstr : "out of memory");
        redisFree(t->cmd);
        t->cmd = NULL;
        goto done;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        cel_error("broker: fetch failed: %s", r->str);
        freeReplyObject(r);
        goto done;
    }
    for (size_t i = 0; i < t->nacks; i++)
        free(t->acks[i]);
    t->nacks = 0;
    rc = out ? parse_fetch_reply(r, out, max + (popped ? 1 : 0)) : 0;
    freeReplyObject(r);
    /* Round robin: the queue that delivered goes to the end. */
    if (rc > 0 && t->nqueues > 1) {
        for (int q = 0; q < t->nqueues; q++) {
            if (strcmp(t->queues[q], out[rc - 1].queue) == 0) {
                char *first = t->queues[q];
                memmove(&t->queues[q], &t->queues[q + 1],
                        (size_t)(t->nqueues - q - 1) * sizeof(char *));
                t->queues[t->nqueues - 1] = first;
                build_keys(t);
                break;
            }
        }
    }
done:
    free(argv);
    free(lens);
    return rc;
}

static int rt_fetch(cel_transport *base, int max, cel_delivery *out)
{
    redis_transport *t = (redis_transport *)base;
    if (max <= 0)
        return 0;
    return run_fetch(t, max, out, NULL, 0, NULL, 0);
}

static int rt_wait_start(cel_transport *base, double timeout_s)
{
    redis_transport *t = (redis_transport *)base;
    if (t->waiting)
        return t->blk->fd;
    if (!t->blk || t->blk->err) {
        if (t->blk)
            redisFree(t->blk);
        char err[256];
        t->blk = cel_redis_connect(&t->url, 5.0, err, sizeof err);
        if (!t->blk) {
            outage(t, err);
            return -1;
        }
        redisReply *id = redisCommand(t->blk, "CLIENT ID");
        t->blk_id = id && id->type == REDIS_REPLY_INTEGER ? id->integer : -1;
        if (id)
            freeReplyObject(id);
    }
    int nkeys = 4 * t->nqueues;
    if (nkeys == 0)
        return -1; /* every queue cancelled: nothing to wait on */
    const char **argv = calloc((size_t)nkeys + 2, sizeof *argv);
    int fd = -1;
    if (!argv)
        goto done;
    argv[0] = "BRPOP";
    int k = nkeys;
    for (int i = 0; i < nkeys; i++)
        argv[1 + i] = t->keys[i];
    char to[16];
    snprintf(to, sizeof to, "%d", timeout_s < 1 ? 1 : (int)timeout_s);
    argv[1 + k] = to;
    if (redisAppendCommandArgv(t->blk, k + 2, argv, NULL) != REDIS_OK)
        goto done;
    int wdone = 0;
    while (!wdone)
        if (redisBufferWrite(t->blk, &wdone) != REDIS_OK)
            goto done;
    t->waiting = true;
    fd = t->blk->fd;
done:
    free(argv);
    return fd;
}

static bool rt_waiting(const cel_transport *base)
{
    return ((const redis_transport *)base)->waiting;
}

static void rt_wait_cancel(cel_transport *base)
{
    redis_transport *t = (redis_transport *)base;
    if (!t->waiting || t->blk_id < 0 || reconnect_cmd(t) < 0)
        return;
    redisReply *r = redisCommand(t->cmd, "CLIENT UNBLOCK %lld", t->blk_id);
    if (r)
        freeReplyObject(r);
}

static int rt_wait_fd(const cel_transport *base)
{
    const redis_transport *t = (const redis_transport *)base;
    return t->blk ? t->blk->fd : -1;
}

static int rt_wait_ready(cel_transport *base, cel_delivery *out)
{
    redis_transport *t = (redis_transport *)base;
    if (!t->waiting)
        return 0;
    if (redisBufferRead(t->blk) != REDIS_OK) {
        t->waiting = false;
        outage(t, t->blk->errstr);
        return -1;
    }
    redisReply *r = NULL;
    if (redisGetReplyFromReader(t->blk, (void **)&r) != REDIS_OK) {
        t->waiting = false;
        return -1;
    }
    if (!r)
        return 0; /* partial reply: still waiting */
    t->waiting = false;
    int rc = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING) {
        /* Record it in unacked at once (and take nothing more: the caller
         * asked for one). */
        cel_delivery tmp[1];
        int n = run_fetch(t, 0, tmp, r->element[1]->str, r->element[1]->len,
                          r->element[0]->str, r->element[0]->len);
        if (n == 1) {
            *out = tmp[0];
            rc = 1;
        } else {
            cel_error("broker: could not record a delivery; pushing it back");
            redisReply *p = redisCommand(t->cmd, "RPUSH %b %b", r->element[0]->str,
                                         r->element[0]->len, r->element[1]->str,
                                         r->element[1]->len);
            if (p)
                freeReplyObject(p);
            rc = -1;
        }
    } else if (r->type == REDIS_REPLY_ERROR) {
        cel_error("broker: BRPOP failed: %s", r->str);
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

static int rt_ack(cel_transport *base, const char *tag)
{
    redis_transport *t = (redis_transport *)base;
    if (t->nacks == t->capacks) {
        size_t cap = t->capacks ? t->capacks * 2 : 64;
        char **a = realloc(t->acks, cap * sizeof *a);
        if (!a)
            return -1;
        t->acks = a;
        t->capacks = cap;
    }
    t->acks[t->nacks] = strdup(tag);
    if (!t->acks[t->nacks])
        return -1;
    t->nacks++;
    return 0;
}

static int rt_flush(cel_transport *base)
{
    redis_transport *t = (redis_transport *)base;
    if (!t->nacks)
        return 0;
    if (run_fetch(t, 0, NULL, NULL, 0, NULL, 0) < 0) {
        /* Once per outage: every finished task adds a flush attempt, and a line
         * each would flood the log while Redis is away. */
        if (!t->acks_logged)
            cel_error("broker: %zu ack(s) not sent yet; retrying with the next round trip",
                      t->nacks);
        t->acks_logged = true;
        return -1;
    }
    t->acks_logged = false;
    return 0;
}

/* Queues that a message published to (exchange, routing_key) reaches, as
 * kombu's _lookup: "" = the routing key is the queue; else the binding set. */
static char **lookup_queues(redis_transport *t, const char *exchange, const char *rk)
{
    char **out = calloc(2, sizeof *out);
    if (!out)
        return NULL;
    if (!exchange || !*exchange) {
        out[0] = strdup(rk);
        return out;
    }
    redisReply *r = redisCommand(t->cmd, "SMEMBERS _kombu.binding.%s", exchange);
    size_t n = 0;
    if (r && r->type == REDIS_REPLY_ARRAY) {
        char **grown = realloc(out, (r->elements + 2) * sizeof *out);
        if (grown) {
            out = grown;
            for (size_t i = 0; i < r->elements; i++) {
                redisReply *e = r->element[i];
                if (e->type != REDIS_REPLY_STRING)
                    continue;
                const char *s1 = memmem(e->str, e->len, SEP, 2);
                if (!s1)
                    continue;
                const char *s2 = memmem(s1 + 2, e->len - (size_t)(s1 + 2 - e->str), SEP, 2);
                if (!s2)
                    continue;
                size_t rklen = (size_t)(s1 - e->str);
                if (rklen == strlen(rk) && memcmp(e->str, rk, rklen) == 0)
                    out[n++] = strndup(s2 + 2, e->len - (size_t)(s2 + 2 - e->str));
            }
        }
    }
    if (r)
        freeReplyObject(r);
    if (n == 0) /* no binding: kombu would drop; keep the message instead */
        out[n++] = strdup(rk);
    out[n] = NULL;
    return out;
}

static int restore_one(redis_transport *t, const char *tag, const char *env, size_t len,
                       const char *expected, bool leftmost)
{
    char *re = cel_message_redelivered_envelope(env, len);
    if (!re) {
        cel_error("broker: cannot restore message %s: malformed envelope", tag);
        return -1;
    }
    json_error_t jerr;
    json_t *e = json_loadb(env, len, JSON_ALLOW_NUL, &jerr);
    json_t *di = json_object_get(json_object_get(e, "properties"), "delivery_info");
    const char *ex = json_string_value(json_object_get(di, "exchange"));
    const char *rk = json_string_value(json_object_get(di, "routing_key"));
    char **queues = lookup_queues(t, ex ? ex : "", rk ? rk : "celery");
    json_decref(e);
    int rc = 0;
    for (size_t i = 0; queues && queues[i]; i++) {
        const char *argv[7] = {"unacked", "unacked_index", queues[i], tag, re,
                               expected ? expected : "", leftmost ? "L" : "R"};
        redisReply *r = cel_rscript_call(t->cmd, &t->restore, 3, 7, argv, NULL);
        if (!r || r->type == REDIS_REPLY_ERROR)
            rc = -1;
        else if (r->type == REDIS_REPLY_INTEGER && r->integer == 0 && i == 0)
            rc = 0; /* someone else restored or acked it meanwhile */
        if (r)
            freeReplyObject(r);
        expected = NULL; /* further queues: copies */
    }
    cel_strv_free(queues);
    free(re);
    return rc;
}

static int rt_restore(cel_transport *base, const char *tag, const char *raw, size_t len)
{
    redis_transport *t = (redis_transport *)base;
    if (reconnect_cmd(t) < 0)
        return -1;
    return restore_one(t, tag, raw, len, NULL, false);
}

static int rt_reject(cel_transport *base, const char *tag, bool requeue)
{
    redis_transport *t = (redis_transport *)base;
    if (requeue) {
        if (reconnect_cmd(t) < 0)
            return -1;
        redisReply *r = redisCommand(t->cmd, "HGET unacked %s", tag);
        if (r && r->type == REDIS_REPLY_STRING) {
            json_error_t jerr;
            json_t *v = json_loadb(r->str, r->len, JSON_ALLOW_NUL, &jerr);
            char *env = cel_json_dumps_py(json_array_get(v, 0), NULL);
            if (env)
                restore_one(t, tag, env, strlen(env), NULL, true);
            free(env);
            json_decref(v);
        }
        if (r)
            freeReplyObject(r);
    }
    return rt_ack(base, tag);
}

static int rt_restore_visible(cel_transport *base)
{
    redis_transport *t = (redis_transport *)base;
    if (reconnect_cmd(t) < 0)
        return -1;
    char token[37];
    cel_uuid4(token);
    redisReply *r = redisCommand(t->cmd, "SET unacked_mutex %s PX 300000 NX", token);
    if (!r || r->type != REDIS_REPLY_STATUS) { /* nil: another consumer restores now */
        if (r)
            freeReplyObject(r);
        return 0;
    }
    freeReplyObject(r);
    int restored = 0;
    char ceil[32];
    snprintf(ceil, sizeof ceil, "%.6f", cel_now() - t->cfg->visibility_timeout);
    r = redisCommand(t->cmd, "ZREVRANGEBYSCORE unacked_index %s 0 LIMIT 0 1000", ceil);
    if (r && r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *tag = r->element[i];
            if (tag->type != REDIS_REPLY_STRING)
                continue;
            redisReply *v = redisCommand(t->cmd, "HGET unacked %b", tag->str, tag->len);
            if (v && v->type == REDIS_REPLY_STRING) {
                json_error_t jerr;
                json_t *arr = json_loadb(v->str, v->len, JSON_ALLOW_NUL, &jerr);
                char *env = json_is_array(arr) ? cel_json_dumps_py(json_array_get(arr, 0), NULL)
                                               : NULL;
                if (env && restore_one(t, tag->str, env, strlen(env), v->str, false) == 0)
                    restored++;
                free(env);
                json_decref(arr);
            } else {
                /* index entry without a message: drop it, as kombu does */
                redisReply *z = redisCommand(t->cmd, "ZREM unacked_index %b", tag->str, tag->len);
                if (z)
                    freeReplyObject(z);
            }
            if (v)
                freeReplyObject(v);
        }
    }
    if (r)
        freeReplyObject(r);
    const char *ua[3] = {"unacked_mutex", token, NULL};
    r = cel_rscript_call(t->cmd, &t->unlock, 1, 2, ua, NULL);
    if (r)
        freeReplyObject(r);
    if (restored)
        cel_warn("Restored %d message(s) unacknowledged past the visibility timeout", restored);
    return restored;
}

static int rt_publish(cel_transport *base, const char *queue, int priority, const char *raw,
                      size_t len)
{
    redis_transport *t = (redis_transport *)base;
    if (reconnect_cmd(t) < 0)
        return -1;
    char *key = queue_key(queue, priority_step(priority < 0 ? 0 : priority));
    if (!key)
        return -1;
    /* Declare the queue's binding first, as kombu's producer does, so
     * consumers routing through the `celery` exchange find it. */
    redisAppendCommand(t->cmd, "SADD _kombu.binding.%s %s" SEP SEP "%s", queue, queue, queue);
    redisAppendCommand(t->cmd, "LPUSH %s %b", key, raw, len);
    free(key);
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        redisReply *r = NULL;
        if (redisGetReply(t->cmd, (void **)&r) != REDIS_OK)
            return -1;
        if (r->type != REDIS_REPLY_INTEGER)
            rc = -1;
        freeReplyObject(r);
    }
    return rc;
}

/* Remote control over Redis: the broadcast exchange `celery.pidbox` is a
 * pub/sub channel (kombu's fanout, prefix "/{db}."); replies go to the
 * client's list through the `reply.celery.pidbox` binding, as kombu's
 * direct exchange emulation does. */
static int rt_control_fd(cel_transport *base)
{
    redis_transport *t = (redis_transport *)base;
    if (t->sub && !t->sub->err)
        return t->sub->fd;
    if (t->sub) {
        cel_warn("remote control: lost the pidbox subscription (%s); resubscribing",
                 t->sub->errstr);
        redisFree(t->sub);
        t->sub = NULL;
    }
    if (cel_monotonic() < t->sub_retry)
        return -1;
    t->sub_retry = cel_monotonic() + 1.0;
    char err[256];
    t->sub = cel_redis_connect(&t->url, 5.0, err, sizeof err);
    if (!t->sub)
        return -1;
    redisReply *r = redisCommand(t->sub, "PSUBSCRIBE /%d.celery.pidbox", t->url.db);
    if (!r) {
        redisFree(t->sub);
        t->sub = NULL;
        return -1;
    }
    freeReplyObject(r); /* the subscription's confirmation */
    return t->sub->fd;
}

static int rt_control_read(cel_transport *base, cel_delivery *out, int max, bool readable)
{
    redis_transport *t = (redis_transport *)base;
    if (!t->sub)
        return -1;
    if (readable && redisBufferRead(t->sub) != REDIS_OK)
        return -1;
    int n = 0;
    while (n < max) {
        redisReply *r = NULL;
        if (redisGetReplyFromReader(t->sub, (void **)&r) != REDIS_OK)
            return n ? n : -1;
        if (!r)
            break;
        /* ["pmessage", pattern, channel, payload] */
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 4 &&
            r->element[3]->type == REDIS_REPLY_STRING) {
            out[n].raw = r->element[3]->str;
            out[n].len = r->element[3]->len;
            out[n].queue = NULL;
            r->element[3]->str = NULL;
            n++;
        }
        freeReplyObject(r);
    }
    return n;
}

static int rt_control_reply(cel_transport *base, const char *exchange, const char *routing_key,
                            const char *ticket, long long clock, const char *body, size_t len)
{
    redis_transport *t = (redis_transport *)base;
    if (reconnect_cmd(t) < 0)
        return -1;
    char *env = cel_message_build_reply(exchange, routing_key, ticket, clock, body, len);
    if (!env)
        return -1;
    /* The client's queue, from the exchange's bindings (kombu's routing). */
    redisReply *m = redisCommand(t->cmd, "SMEMBERS _kombu.binding.%s", exchange);
    int rc = -1;
    for (size_t i = 0; m && m->type == REDIS_REPLY_ARRAY && i < m->elements; i++) {
        redisReply *e = m->element[i];
        if (e->type != REDIS_REPLY_STRING)
            continue;
        const char *s1 = memmem(e->str, e->len, SEP, 2);
        const char *s2 = s1 ? memmem(s1 + 2, e->len - (size_t)(s1 + 2 - e->str), SEP, 2) : NULL;
        if (!s2 || (size_t)(s1 - e->str) != strlen(routing_key) ||
            memcmp(e->str, routing_key, (size_t)(s1 - e->str)) != 0)
            continue;
        const char *q = s2 + 2;
        size_t ql = e->len - (size_t)(q - e->str);
        redisReply *p = redisCommand(t->cmd, "LPUSH %b %s", q, ql, env);
        if (p && p->type == REDIS_REPLY_INTEGER)
            rc = 0;
        if (p)
            freeReplyObject(p);
    }
    if (m)
        freeReplyObject(m);
    free(env);
    return rc;
}

/* Events: PUBLISH on kombu's fanout channel "/{db}.celeryev/<rk>".  On
 * the command connection, which also settles a pending reply first. */
/* Events are queued on a connection of their own and written once per loop
 * turn (rt_flush_events), so the three events of a task cost one write, not
 * three round trips: a synchronous PUBLISH each held the loop ~30 us per
 * event and cut the drain rate with -E from ~20k to ~3k tasks/s.  Replies
 * (the receiver counts) mean nothing to us; they are read when they are
 * there and discarded.  Fire and forget, as Celery's dispatcher. */
#define EV_MAX_UNREAD 4096

static void drop_events_conn(redis_transport *t)
{
    if (t->ev)
        redisFree(t->ev);
    t->ev = NULL;
    t->ev_unread = 0;
    t->ev_retry = cel_monotonic() + 2.0;
}

/* Reads the replies already on the socket, without waiting. */
static int read_event_replies(redis_transport *t)
{
    struct pollfd p = {.fd = t->ev->fd, .events = POLLIN};
    while (t->ev_unread > 0 && poll(&p, 1, 0) > 0) {
        if (redisBufferRead(t->ev) != REDIS_OK)
            return -1;
        void *r = NULL;
        while (t->ev_unread > 0 && redisGetReplyFromReader(t->ev, &r) == REDIS_OK && r) {
            freeReplyObject(r);
            r = NULL;
            t->ev_unread--;
        }
        if (t->ev->err)
            return -1;
    }
    return 0;
}

static int rt_flush_events(cel_transport *base)
{
    redis_transport *t = (redis_transport *)base;
    if (!t->ev)
        return 0;
    int done = 0;
    while (!done)
        if (redisBufferWrite(t->ev, &done) != REDIS_OK) {
            drop_events_conn(t);
            return -1;
        }
    /* A server that stopped answering: don't grow its backlog forever. */
    if (read_event_replies(t) < 0 || t->ev_unread > EV_MAX_UNREAD) {
        drop_events_conn(t);
        return -1;
    }
    return 0;
}

static int rt_publish_event(cel_transport *base, const char *routing_key, const char *body,
                            size_t len, const char *hostname)
{
    redis_transport *t = (redis_transport *)base;
    if (!t->ev) {
        if (cel_monotonic() < t->ev_retry)
            return -1;
        char err[256];
        t->ev = cel_redis_connect(&t->url, 5.0, err, sizeof err);
        if (!t->ev) {
            t->ev_retry = cel_monotonic() + 2.0;
            return -1;
        }
    }
    char *env = cel_message_build_event(routing_key, hostname, body, len);
    if (!env)
        return -1;
    int rc = redisAppendCommand(t->ev, "PUBLISH /%d.celeryev/%s %s", t->url.db, routing_key, env);
    free(env);
    if (rc != REDIS_OK) {
        drop_events_conn(t);
        return -1;
    }
    t->ev_unread++;
    return 0;
}

static void rt_close(cel_transport *base)
{
    redis_transport *t = (redis_transport *)base;
    if (t->sub)
        redisFree(t->sub);
    /* The last events (worker-offline) must reach the server: wait for
     * their replies before closing. */
    if (rt_flush_events(base) == 0 && t->ev) {
        void *r = NULL;
        while (t->ev_unread > 0 && redisGetReply(t->ev, &r) == REDIS_OK) {
            freeReplyObject(r);
            t->ev_unread--;
        }
    }
    if (t->ev)
        redisFree(t->ev);
    rt_flush(base);
    if (t->cmd)
        redisFree(t->cmd);
    if (t->blk)
        redisFree(t->blk);
    cel_strv_free(t->queues);
    cel_strv_free(t->keys);
    cel_strv_free(t->xbind);
    for (size_t i = 0; i < t->nacks; i++)
        free(t->acks[i]);
    free(t->acks);
    cel_url_free(&t->url);
    free(t);
}

/* kombu's TopicExchange.key_to_pattern: the regex stored in a topic
 * binding's middle field ("*" one word, "#" any, words joined by "\."). */
static char *topic_pattern(const char *rk)
{
    cel_buf b = {0};
    cel_buf_append(&b, "^", 1);
    for (const char *w = rk;;) {
        const char *dot = strchr(w, '.');
        size_t n = dot ? (size_t)(dot - w) : strlen(w);
        if (n == 1 && *w == '*')
            cel_buf_append(&b, ".*?[^\\.]", 8);
        else if (n == 1 && *w == '#')
            cel_buf_append(&b, ".*?", 3);
        else
            cel_buf_append(&b, w, n);
        if (!dot)
            break;
        cel_buf_append(&b, "\\.", 2);
        w = dot + 1;
    }
    cel_buf_append(&b, "$", 2); /* with the NUL */
    return b.data;
}

/* One binding of an added queue: SADD _kombu.binding.<exchange> member. */
static int sadd_binding(redis_transport *t, const char *exchange, const char *member, char *err,
                        size_t errlen)
{
    redisReply *r = redisCommand(t->cmd, "SADD _kombu.binding.%s %s", exchange, member);
    int rc = r && r->type != REDIS_REPLY_ERROR ? 0 : -1;
    if (rc < 0)
        snprintf(err, errlen, "cannot bind to exchange %s: %s", exchange,
                 r ? r->str : t->cmd->errstr);
    if (r)
        freeReplyObject(r);
    return rc;
}

static int rt_add_queue(cel_transport *base, const char *queue, const char *exchange,
                        const char *type, const char *routing_key, char *err, size_t errlen)
{
    redis_transport *t = (redis_transport *)base;
    if (reconnect_cmd(t) < 0) {
        snprintf(err, errlen, "broker unreachable");
        return -1;
    }
    /* kombu's member: "<routing key>\x06\x16<pattern>\x06\x16<queue>", the
     * pattern empty but for topic exchanges. */
    char *pattern = !strcmp(type, "topic") ? topic_pattern(routing_key) : NULL;
    char *member = NULL;
    if (asprintf(&member, "%s" SEP "%s" SEP "%s", routing_key, pattern ? pattern : "",
                 queue) < 0)
        member = NULL;
    free(pattern);
    char **q = realloc(t->queues, (size_t)(t->nqueues + 2) * sizeof *q);
    if (q)
        t->queues = q;
    char **x = realloc(t->xbind, (t->nxbind + 3) * sizeof *x);
    if (x)
        t->xbind = x;
    if (!member || !q || !x || sadd_binding(t, exchange, member, err, errlen) < 0) {
        if (!member || !q || !x)
            snprintf(err, errlen, "out of memory");
        free(member);
        return -1;
    }
    t->xbind[t->nxbind++] = strdup(exchange);
    t->xbind[t->nxbind++] = member;
    t->xbind[t->nxbind] = NULL;
    t->queues[t->nqueues++] = strdup(queue);
    t->queues[t->nqueues] = NULL;
    build_keys(t);
    /* An armed BRPOP names the old keys: end it, the next one has them all. */
    rt_wait_cancel(base);
    return 0;
}

static int rt_cancel_queue(cel_transport *base, const char *queue)
{
    redis_transport *t = (redis_transport *)base;
    for (int i = 0; i < t->nqueues; i++) {
        if (strcmp(t->queues[i], queue))
            continue;
        free(t->queues[i]);
        memmove(&t->queues[i], &t->queues[i + 1], (size_t)(t->nqueues - i) * sizeof *t->queues);
        t->nqueues--;
        build_keys(t);
        /* An armed BRPOP still names the queue: ended now, it cannot take
         * a message published after the reply. */
        rt_wait_cancel(base);
        return 0;
    }
    return -1;
}

static const cel_transport_ops redis_ops = {
    .fetch = rt_fetch,
    .wait_start = rt_wait_start,
    .wait_ready = rt_wait_ready,
    .waiting = rt_waiting,
    .wait_cancel = rt_wait_cancel,
    .wait_fd = rt_wait_fd,
    .ack = rt_ack,
    .reject = rt_reject,
    .restore = rt_restore,
    .flush = rt_flush,
    .restore_visible = rt_restore_visible,
    .publish = rt_publish,
    .add_queue = rt_add_queue,
    .cancel_queue = rt_cancel_queue,
    .control_fd = rt_control_fd,
    .control_read = rt_control_read,
    .control_reply = rt_control_reply,
    .publish_event = rt_publish_event,
    .flush_events = rt_flush_events,
    .close = rt_close,
};

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* Declares each consumed queue's binding, as kombu does before consuming:
 * Python producers that name the exchange route through it. */
static int declare_bindings(redis_transport *t, char *err, size_t errlen)
{
    for (int i = 0; i < t->nqueues; i++) {
        const char *q = t->queues[i];
        redisReply *r = redisCommand(t->cmd, "SADD _kombu.binding.%s %s" SEP SEP "%s", q, q, q);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "cannot declare queue %s: %s", q,
                     r ? r->str : t->cmd->errstr);
            if (r)
                freeReplyObject(r);
            return -1;
        }
        freeReplyObject(r);
    }
    /* add_consumer's, again after a reconnect. */
    for (size_t i = 0; i + 1 < t->nxbind; i += 2)
        if (sadd_binding(t, t->xbind[i], t->xbind[i + 1], err, errlen) < 0)
            return -1;
    return 0;
}

cel_transport *cel_redis_transport_open(const cel_url *u, const cel_config *cfg,
                                        bool consume, char *err, size_t errlen)
{
    redis_transport *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->base.ops = &redis_ops;
    t->cfg = cfg;
    t->url = *u;
    t->url.host = dup_or_null(u->host);
    t->url.user = dup_or_null(u->user);
    t->url.password = dup_or_null(u->password);
    t->url.path = dup_or_null(u->path);
    t->fetch.source = FETCH_LUA;
    t->restore.source = RESTORE_LUA;
    t->unlock.source = UNLOCK_LUA;
    t->cmd = cel_redis_connect(&t->url, 5.0, err, errlen);
    if (!t->cmd)
        goto fail;
    if (consume) {
        size_t nq = 0;
        while (cfg->queues && cfg->queues[nq])
            nq++;
        t->queues = calloc(nq + 1, sizeof *t->queues);
        if (!t->queues)
            goto fail;
        for (size_t i = 0; i < nq; i++)
            t->queues[i] = strdup(cfg->queues[i]);
        t->nqueues = (int)nq;
        if (declare_bindings(t, err, errlen) < 0)
            goto fail;
        build_keys(t);
    }
    return &t->base;
fail:
    rt_close(&t->base);
    return NULL;
}

cel_transport *cel_transport_open(const cel_config *cfg, bool consume, char *err, size_t errlen)
{
    cel_url u;
    if (cel_url_parse(cfg->broker_url, &u, err, errlen) < 0)
        return NULL;
    cel_transport *t = NULL;
    if (u.scheme == CEL_URL_REDIS || u.scheme == CEL_URL_UNIX)
        t = cel_redis_transport_open(&u, cfg, consume, err, errlen);
    else if (u.scheme == CEL_URL_AMQP || u.scheme == CEL_URL_AMQPS)
        t = cel_amqp_transport_open(&u, cfg, consume, err, errlen);
    else
        snprintf(err, errlen, "not a broker URL (use redis:// or amqp://)");
    cel_url_free(&u);
    return t;
}
