/* redis.c — Celery's Redis result backend, byte-compatible.
 *
 * Each state write is Celery's sequence — GET the key, keep a stored SUCCESS,
 * else SETEX key result_expires meta + PUBLISH key meta — done in one Lua
 * script so it is atomic and can be pipelined: a loop turn's results cost one
 * round trip however many there are.  The PUBLISH on the key's own name is
 * what AsyncResult.get() waits on.
 */
#include "backend/backend.h"
#include "core/log.h"
#include "core/message.h"
#include "core/rconn.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* KEYS: result keys; ARGV[1]: ttl (<= 0: no expiry), ARGV[1 + i]: meta for
 * KEYS[i].  One call stores a whole batch, in order. */
static const char STORE_LUA[] =
    "local ttl = tonumber(ARGV[1])\n"
    "for i, key in ipairs(KEYS) do\n"
    "  local meta = ARGV[i + 1]\n"
    "  local keep = false\n"
    "  local cur = redis.call('GET', key)\n"
    "  if cur then\n"
    "    local ok, m = pcall(cjson.decode, cur)\n"
    "    keep = ok and type(m) == 'table' and m['status'] == 'SUCCESS'\n"
    "  end\n"
    "  if not keep then\n"
    "    if ttl and ttl > 0 then redis.call('SETEX', key, ttl, meta)\n"
    "    else redis.call('SET', key, meta) end\n"
    "    redis.call('PUBLISH', key, meta)\n"
    "  end\n"
    "end\n"
    "return #KEYS\n";

/* Celery's on_chord_part_return, its first pipeline (ZADD, ZCOUNT, GET .t,
 * GET .s, EXPIRE x3) as one script, plus the ZRANGE it does when the count
 * is complete.  KEYS: .j, .t, .s, the group's GroupResult key; ARGV: entry,
 * score, ttl.  Returns {0} (not complete) or {1, saved, entries}. */
static const char CHORD_LUA[] =
    "redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])\n"
    "local n = redis.call('ZCOUNT', KEYS[1], '-inf', '+inf')\n"
    "local t = redis.call('GET', KEYS[2])\n"
    "local s = redis.call('GET', KEYS[3])\n"
    "local ttl = tonumber(ARGV[3])\n"
    "if ttl and ttl > 0 then\n"
    "  redis.call('EXPIRE', KEYS[1], ttl)\n"
    "  redis.call('EXPIRE', KEYS[2], ttl)\n"
    "  redis.call('EXPIRE', KEYS[3], ttl)\n"
    "end\n"
    "if not s then return {0} end\n"
    "if n ~= tonumber(s) + (tonumber(t) or 0) then return {0} end\n"
    "return {1, redis.call('EXISTS', KEYS[4]), redis.call('ZRANGE', KEYS[1], 0, -1)}\n";

/* Results kept in memory while the backend is unreachable, at most. */
#define MAX_QUEUED 100000

typedef struct pending {
    char *key, *meta;
} pending;

typedef struct redis_backend {
    cel_backend base;
    cel_url url;
    redisContext *c;
    cel_rscript store;
    cel_rscript chord;
    pending *q;
    size_t n, cap;
    size_t inflight;    /* q[0..inflight) sent, reply not read yet */
    double down_since;  /* monotonic start of an outage, 0 = up */
    char ttl[32];
} redis_backend;

/* One line when the backend goes away and one when it is back. */
static void outage(redis_backend *b, const char *what)
{
    if (b->down_since == 0) {
        b->down_since = cel_monotonic();
        cel_error("result backend: %s; results are kept and retried", what);
    }
}

static int ensure_conn(redis_backend *b)
{
    if (b->c && !b->c->err)
        return 0;
    if (b->c) {
        outage(b, b->c->errstr);
        redisFree(b->c);
    }
    char err[256];
    b->c = cel_redis_connect(&b->url, 5.0, err, sizeof err);
    if (!b->c) {
        outage(b, err);
        return -1;
    }
    b->store.sha[0] = 0;
    if (b->down_since != 0) {
        cel_warn("result backend: reconnected after %.1f s", cel_monotonic() - b->down_since);
        b->down_since = 0;
    }
    return 0;
}

static int rb_recv(cel_backend *base);

static int rb_store_raw(cel_backend *base, const char *task_id, const char *reply_to,
                        const char *meta, size_t len)
{
    redis_backend *b = (redis_backend *)base;
    char *key = NULL, *text = malloc(len + 1);
    if (!text || asprintf(&key, "celery-task-meta-%s", task_id) < 0) {
        free(text);
        return -1;
    }
    memcpy(text, meta, len);
    text[len] = 0;
    if (cel_grow(&b->q, &b->cap, b->n, sizeof *b->q, 64) < 0) {
        free(text);
        free(key);
        return -1;
    }
    b->q[b->n++] = (pending){key, text};
    return 0;
}

/* Appends one EVALSHA storing q[0..count) and writes it out. */
static int append_batch(redis_backend *b, size_t count)
{
    size_t argc = 2 * count + 1;
    const char **argv = malloc(argc * sizeof *argv);
    if (!argv)
        return -1;
    for (size_t i = 0; i < count; i++) {
        argv[i] = b->q[i].key;
        argv[count + 1 + i] = b->q[i].meta;
    }
    argv[count] = b->ttl;
    int rc = cel_rscript_append(b->c, &b->store, (int)count, (int)argc, argv, NULL);
    free(argv);
    int done = 0;
    while (rc == 0 && !done)
        if (redisBufferWrite(b->c, &done) != REDIS_OK)
            rc = -1;
    return rc;
}

/* Forgets q[0..count) (stored, or given up). */
static void drop_front(redis_backend *b, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        free(b->q[i].key);
        free(b->q[i].meta);
    }
    if (count > 0) /* q may still be NULL: memmove must not see it */
        memmove(b->q, b->q + count, (b->n - count) * sizeof *b->q);
    b->n -= count;
    b->inflight = 0;
}

/* Reads the batch's reply: 0 stored, 1 NOSCRIPT, -1 connection error. */
static int read_batch(redis_backend *b, size_t count)
{
    redisReply *r = NULL;
    if (redisGetReply(b->c, (void **)&r) != REDIS_OK)
        return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOSCRIPT", 8) == 0) {
            rc = 1;
        } else {
            cel_error("result backend: storing %zu result(s) failed: %s", count, r->str);
            rc = 0; /* a server-side refusal; retrying would not help */
        }
    }
    freeReplyObject(r);
    return rc;
}

static int rb_send(cel_backend *base)
{
    redis_backend *b = (redis_backend *)base;
    if (!b->n || b->inflight)
        return 0;
    if (ensure_conn(b) < 0 || (!b->store.sha[0] && cel_rscript_load(b->c, &b->store) < 0) ||
        append_batch(b, b->n) < 0)
        return -1; /* rb_recv retries synchronously */
    b->inflight = b->n;
    return 0;
}

/* Completes one batch: the one in flight, else the queue as it is now. */
static int rb_recv(cel_backend *base)
{
    redis_backend *b = (redis_backend *)base;
    if (!b->n)
        return 0;
    size_t count = b->inflight ? b->inflight : b->n;
    int rc = b->inflight ? read_batch(b, count) : -1;
    /* Slow path: (re)connect, reload the script, resend the batch. */
    for (int attempt = 0; attempt < 3 && rc != 0; attempt++) {
        if (rc == 1) {
            b->store.sha[0] = 0;
        } else if (b->c && attempt > 0) {
            outage(b, b->c->err ? b->c->errstr : "connection lost");
            redisFree(b->c);
            b->c = NULL;
        }
        if (ensure_conn(b) < 0 || (!b->store.sha[0] && cel_rscript_load(b->c, &b->store) < 0) ||
            append_batch(b, count) < 0) {
            rc = -1;
            continue;
        }
        rc = read_batch(b, count);
    }
    b->inflight = 0;
    if (rc != 0 && b->n < MAX_QUEUED) /* keep them for the next flush */
        return -1;
    if (rc != 0)
        cel_error("result backend: unreachable with %zu results queued; dropping them", b->n);
    drop_front(b, rc == 0 ? count : b->n);
    return rc == 0 ? 0 : -1;
}

static int rb_reply_fd(cel_backend *base)
{
    redis_backend *b = (redis_backend *)base;
    return b->inflight && b->c ? b->c->fd : -1;
}

static int rb_flush(cel_backend *base)
{
    redis_backend *b = (redis_backend *)base;
    while (b->n) {
        rb_send(base);
        if (rb_recv(base) < 0)
            return -1;
    }
    return 0;
}

static void rb_close(cel_backend *base)
{
    redis_backend *b = (redis_backend *)base;
    rb_flush(base);
    if (b->n) {
        cel_error("result backend: still unreachable at shutdown; %zu result(s) not stored", b->n);
        drop_front(b, b->n);
    }
    if (b->c)
        redisFree(b->c);
    free(b->q);
    cel_url_free(&b->url);
    free(b);
}

/* Synchronous: a chord part costs the loop one round trip after the flush
 * (header tasks only). */
static int rb_chord_join(cel_backend *base, const char *group_id, const char *entry,
                         const char *score, json_t **entries, bool *saved)
{
    redis_backend *b = (redis_backend *)base;
    *entries = NULL;
    *saved = false;
    /* Celery stores the task's own result before the chord part. */
    if (rb_flush(base) < 0 || ensure_conn(b) < 0)
        return -1;
    char *keys[4] = {NULL, NULL, NULL, NULL};
    static const char *const sfx[3] = {".j", ".t", ".s"};
    int ok = 1;
    for (int i = 0; i < 4; i++)
        if (asprintf(&keys[i], "celery-taskset-meta-%s%s", group_id, i < 3 ? sfx[i] : "") < 0) {
            keys[i] = NULL;
            ok = 0;
        }
    redisReply *r = NULL;
    if (ok) {
        const char *argv[7] = {keys[0], keys[1], keys[2], keys[3], entry, score, b->ttl};
        r = cel_rscript_call(b->c, &b->chord, 4, 7, argv, NULL);
    }
    for (int i = 0; i < 4; i++)
        free(keys[i]);
    if (!r) {
        outage(b, b->c && b->c->err ? b->c->errstr : "chord join failed");
        return -1;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        cel_error("result backend: chord join for %s failed: %s", group_id, r->str);
        rc = -1;
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
               r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == 1 &&
               r->element[2]->type == REDIS_REPLY_ARRAY) {
        *saved = r->element[1]->type == REDIS_REPLY_INTEGER && r->element[1]->integer != 0;
        json_t *a = json_array();
        for (size_t i = 0; i < r->element[2]->elements; i++) {
            const redisReply *e = r->element[2]->element[i];
            if (e->type == REDIS_REPLY_STRING)
                json_array_append_new(a, json_stringn(e->str, e->len));
        }
        *entries = a;
    }
    freeReplyObject(r);
    return rc;
}

static int rb_chord_clear(cel_backend *base, const char *group_id)
{
    redis_backend *b = (redis_backend *)base;
    if (ensure_conn(b) < 0)
        return -1;
    redisReply *r = redisCommand(b->c, "DEL celery-taskset-meta-%s.j celery-taskset-meta-%s.t "
                                       "celery-taskset-meta-%s.s",
                                 group_id, group_id, group_id);
    if (!r)
        return -1;
    freeReplyObject(r);
    return 0;
}

static const cel_backend_ops redis_ops = {rb_store_raw, rb_flush,      rb_send,
                                          rb_reply_fd,  rb_recv,       rb_close,
                                          rb_chord_join, rb_chord_clear};

cel_backend *cel_backend_redis_open(const cel_url *u, const cel_config *cfg, char *err,
                                    size_t errlen)
{
    redis_backend *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->base.ops = &redis_ops;
    b->base.extended = cfg->result_extended;
    b->base.expires = cfg->result_expires;
    snprintf(b->ttl, sizeof b->ttl, "%lld", (long long)cfg->result_expires);
    b->store.source = STORE_LUA;
    b->chord.source = CHORD_LUA;
    /* Take over the parsed URL's strings. */
    b->url = *u;
    b->url.host = u->host ? strdup(u->host) : NULL;
    b->url.user = u->user ? strdup(u->user) : NULL;
    b->url.password = u->password ? strdup(u->password) : NULL;
    b->url.path = u->path ? strdup(u->path) : NULL;
    b->c = cel_redis_connect(&b->url, 5.0, err, errlen);
    if (!b->c && strncmp(err, "cannot connect", 14) == 0) {
        /* Unreachable now is an outage, as Celery's lazily connecting
         * backend sees it: start anyway, keep results, retry. */
        outage(b, err);
        return &b->base;
    }
    if (!b->c || cel_rscript_load(b->c, &b->store) < 0) {
        if (b->c)
            snprintf(err, errlen, "result backend: cannot load script");
        rb_close(&b->base);
        return NULL;
    }
    return &b->base;
}
