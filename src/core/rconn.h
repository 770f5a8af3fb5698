/* rconn.h — opening a Redis connection from a parsed URL (AUTH, SELECT),
 * shared by the Redis transport and the Redis result backend, and running
 * pipelined Lua scripts by SHA with a transparent reload after a server
 * restart (NOSCRIPT). */
#ifndef CELERIAC_RCONN_H
#define CELERIAC_RCONN_H

#include "core/config.h"
#include <hiredis/hiredis.h>

/* Connects (TCP or unix socket), authenticates and selects the db.
 * Returns a context, or NULL with `err` set (never containing the password). */
redisContext *cel_redis_connect(const cel_url *u, double timeout_s, char *err, size_t errlen);

/* A Lua script known by SHA. */
typedef struct cel_rscript {
    const char *source;
    char sha[41];
} cel_rscript;

/* SCRIPT LOAD; returns 0 or -1. */
int cel_rscript_load(redisContext *c, cel_rscript *s);

/* Runs the script synchronously (EVALSHA, reloading on NOSCRIPT).  argv holds
 * numkeys keys then args.  Returns the reply (caller frees) or NULL on a
 * connection error. */
redisReply *cel_rscript_call(redisContext *c, cel_rscript *s, int numkeys, int argc,
                             const char **argv, const size_t *argvlen);

/* Appends an EVALSHA to the output buffer (pipelining). Returns 0 or -1. */
int cel_rscript_append(redisContext *c, const cel_rscript *s, int numkeys, int argc,
                       const char **argv, const size_t *argvlen);

#endif
