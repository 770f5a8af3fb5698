/* rconn.c — see rconn.h. */
#include "core/rconn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

redisContext *cel_redis_connect(const cel_url *u, double timeout_s, char *err, size_t errlen)
{
    struct timeval tv = {.tv_sec = (time_t)timeout_s,
                         .tv_usec = (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
    redisContext *c = u->scheme == CEL_URL_UNIX
                          ? redisConnectUnixWithTimeout(u->path, tv)
                          : redisConnectWithTimeout(u->host, u->port, tv);
    if (!c || c->err) {
        if (u->scheme == CEL_URL_UNIX)
            snprintf(err, errlen, "cannot connect to redis+socket://%s: %s", u->path,
                     c ? c->errstr : "out of memory");
        else
            snprintf(err, errlen, "cannot connect to redis://%s:%d: %s", u->host, u->port,
                     c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    /* Commands after connect block without a timeout; blocking BRPOPs are
     * issued asynchronously and bounded by their own timeout. */
    struct timeval none = {0, 0};
    redisSetTimeout(c, none);
    redisEnableKeepAlive(c);
    redisReply *r = NULL;
    if (u->password) {
        if (u->user && *u->user)
            r = redisCommand(c, "AUTH %s %s", u->user, u->password);
        else
            r = redisCommand(c, "AUTH %s", u->password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis authentication failed: %s",
                     r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (u->db) {
        r = redisCommand(c, "SELECT %d", u->db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(err, errlen, "redis SELECT %d failed: %s", u->db, r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    return c;
fail:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return NULL;
}

int cel_rscript_load(redisContext *c, cel_rscript *s)
{
    redisReply *r = redisCommand(c, "SCRIPT LOAD %s", s->source);
    if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
        if (r)
            freeReplyObject(r);
        return -1;
    }
    memcpy(s->sha, r->str, 40);
    s->sha[40] = 0;
    freeReplyObject(r);
    return 0;
}

static int build_argv(const cel_rscript *s, int numkeys, int argc, const char **argv,
                      const size_t *argvlen, const char ***av, size_t **al, char *nk)
{
    *av = malloc(sizeof(char *) * (size_t)(argc + 3));
    *al = malloc(sizeof(size_t) * (size_t)(argc + 3));
    if (!*av || !*al) {
        free(*av);
        free(*al);
        return -1;
    }
    snprintf(nk, 16, "%d", numkeys);
    (*av)[0] = "EVALSHA";
    (*al)[0] = 7;
    (*av)[1] = s->sha;
    (*al)[1] = 40;
    (*av)[2] = nk;
    (*al)[2] = strlen(nk);
    for (int i = 0; i < argc; i++) {
        (*av)[i + 3] = argv[i];
        (*al)[i + 3] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    return 0;
}

int cel_rscript_append(redisContext *c, const cel_rscript *s, int numkeys, int argc,
                       const char **argv, const size_t *argvlen)
{
    const char **av;
    size_t *al;
    char nk[16];
    if (build_argv(s, numkeys, argc, argv, argvlen, &av, &al, nk) < 0)
        return -1;
    int rc = redisAppendCommandArgv(c, argc + 3, av, al) == REDIS_OK ? 0 : -1;
    free(av);
    free(al);
    return rc;
}

redisReply *cel_rscript_call(redisContext *c, cel_rscript *s, int numkeys, int argc,
                             const char **argv, const size_t *argvlen)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!s->sha[0] && cel_rscript_load(c, s) < 0)
            return NULL;
        if (cel_rscript_append(c, s, numkeys, argc, argv, argvlen) < 0)
            return NULL;
        redisReply *r = NULL;
        if (redisGetReply(c, (void **)&r) != REDIS_OK)
            return NULL;
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
            freeReplyObject(r);
            s->sha[0] = 0;
            continue;
        }
        return r;
    }
    return NULL;
}
