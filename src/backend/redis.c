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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char STORE_LUA[] =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  local ok, m = pcall(cjson.decode, cur)\n"
    "  if ok and type(m) == 'table' and m['status'] == 'SUCCESS' then return 0 end\n"
    "end\n"
    "local ttl = tonumber(ARGV[2])\n"
    "if ttl and ttl > 0 then redis.call('SETEX', KEYS[1], ttl, ARGV[1])\n"
    "else redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "redis.call('PUBLISH', KEYS[1], ARGV[1])\n"
    "return 1\n";

typedef struct pending {
    char *key, *meta;
} pending;

typedef struct redis_backend {
    cel_backend base;
    cel_url url;
    redisContext *c;
    cel_rscript store;
    pending *q;
    size_t n, cap;
    char ttl[32];
} redis_backend;

static int ensure_conn(redis_backend *b)
{
    if (b->c && !b->c->err)
        return 0;
    if (b->c)
        redisFree(b->c);
    char err[256];
    b->c = cel_redis_connect(&b->url, 5.0, err, sizeof err);
    if (!b->c) {
        cel_error("result backend: %s", err);
        return -1;
    }
    b->store.sha[0] = 0;
    return 0;
}

static int rb_store(cel_backend *base, const cel_result_rec *r)
{
    redis_backend *b = (redis_backend *)base;
    json_t *m = cel_result_meta(r, base->extended, false);
    char *text = cel_json_dumps_py(m, NULL);
    json_decref(m);
    char *key = NULL;
    if (!text || asprintf(&key, "celery-task-meta-%s", r->task_id) < 0) {
        free(text);
        return -1;
    }
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        pending *q = realloc(b->q, cap * sizeof *q);
        if (!q) {
            free(text);
            free(key);
            return -1;
        }
        b->q = q;
        b->cap = cap;
    }
    b->q[b->n++] = (pending){key, text};
    return 0;
}

static int send_all(redis_backend *b, size_t *failed)
{
    for (size_t i = 0; i < b->n; i++) {
        const char *argv[3] = {b->q[i].key, b->q[i].meta, b->ttl};
        if (cel_rscript_append(b->c, &b->store, 1, 3, argv, NULL) < 0)
            return -1;
    }
    int noscript = 0;
    for (size_t i = 0; i < b->n; i++) {
        redisReply *r = NULL;
        if (redisGetReply(b->c, (void **)&r) != REDIS_OK)
            return -1;
        if (r->type == REDIS_REPLY_ERROR) {
            if (strncmp(r->str, "NOSCRIPT", 8) == 0)
                noscript = 1;
            else {
                cel_error("result backend: storing %s failed: %s", b->q[i].key, r->str);
                (*failed)++;
            }
        }
        freeReplyObject(r);
    }
    return noscript ? 1 : 0;
}

static int rb_flush(cel_backend *base)
{
    redis_backend *b = (redis_backend *)base;
    if (!b->n)
        return 0;
    int rc = -1;
    for (int attempt = 0; attempt < 3 && rc != 0; attempt++) {
        if (ensure_conn(b) < 0)
            continue;
        if (!b->store.sha[0] && cel_rscript_load(b->c, &b->store) < 0) {
            redisFree(b->c);
            b->c = NULL;
            continue;
        }
        size_t failed = 0;
        rc = send_all(b, &failed);
        if (rc == 1) { /* server restarted and lost the script: reload, resend */
            b->store.sha[0] = 0;
            rc = -1;
        } else if (rc < 0) {
            cel_warn("result backend: connection lost, reconnecting");
            redisFree(b->c);
            b->c = NULL;
        }
    }
    if (rc != 0)
        cel_error("result backend: %zu result(s) could not be stored", b->n);
    for (size_t i = 0; i < b->n; i++) {
        free(b->q[i].key);
        free(b->q[i].meta);
    }
    b->n = 0;
    return rc == 0 ? 0 : -1;
}

static void rb_close(cel_backend *base)
{
    redis_backend *b = (redis_backend *)base;
    rb_flush(base);
    if (b->c)
        redisFree(b->c);
    free(b->q);
    cel_url_free(&b->url);
    free(b);
}

static const cel_backend_ops redis_ops = {rb_store, rb_flush, rb_close};

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
    /* Take over the parsed URL's strings. */
    b->url = *u;
    b->url.host = u->host ? strdup(u->host) : NULL;
    b->url.user = u->user ? strdup(u->user) : NULL;
    b->url.password = u->password ? strdup(u->password) : NULL;
    b->url.path = u->path ? strdup(u->path) : NULL;
    b->c = cel_redis_connect(&b->url, 5.0, err, errlen);
    if (!b->c || cel_rscript_load(b->c, &b->store) < 0) {
        if (b->c)
            snprintf(err, errlen, "result backend: cannot load script");
        rb_close(&b->base);
        return NULL;
    }
    return &b->base;
}
