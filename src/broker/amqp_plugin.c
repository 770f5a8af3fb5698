/* amqp_plugin.c — the AMQP half of celeriac is loaded only when a URL needs it.
 *
 * Why: librabbitmq links OpenSSL for amqps://, and libssl + libcrypto are
 * about 1.7 MB resident in every process that maps them, the pool processes
 * included (RSS counts shared pages once per process).  A worker on Redis
 * never speaks AMQP, so the RabbitMQ transport, the rpc:// result backend
 * and their AMQP connection and table code (amqp.c, aconn.c, rpc.c,
 * amqp_table.c) are built into celeriac-amqp.so and dlopen'ed on the first
 * amqp:// / amqps:// broker or rpc:// backend.  The plugin resolves the
 * cel_* core it uses against the worker binary (-rdynamic), as task modules
 * do.  It is looked up, in order, at $CELERIAC_AMQP_PLUGIN, next to the
 * running binary (a build tree) and in the installed module directory.
 */
#include "backend/backend.h"
#include "broker/transport.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CELERIAC_MODULE_DIR
#define CELERIAC_MODULE_DIR "/usr/local/lib/celeriac"
#endif
#define PLUGIN_NAME "celeriac-amqp.so"

typedef cel_transport *(*transport_open_fn)(const cel_url *, const cel_config *, bool, char *,
                                            size_t);
typedef cel_backend *(*rpc_open_fn)(const cel_config *, char *, size_t);

static void *g_plugin; /* loaded once, never closed: its code runs until exit */

static void *try_open(const char *path, char *tried, size_t triedlen)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        size_t used = strlen(tried);
        /* Only for the error message: a long list is cut short. */
        if (snprintf(tried + used, triedlen - used, "%s%s (%s)", used ? "; " : "", path,
                     dlerror()) < 0)
            tried[used] = '\0';
    }
    return h;
}

static void *plugin(char *err, size_t errlen)
{
    if (g_plugin)
        return g_plugin;
    char tried[1024] = "";
    const char *env = getenv("CELERIAC_AMQP_PLUGIN");
    if (env && *env) {
        g_plugin = try_open(env, tried, sizeof tried);
    } else {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = '\0';
            char *slash = strrchr(self, '/');
            char path[PATH_MAX];
            if (slash && snprintf(path, sizeof path, "%.*s/%s", (int)(slash - self), self,
                                  PLUGIN_NAME) < (int)sizeof path &&
                access(path, F_OK) == 0)
                g_plugin = try_open(path, tried, sizeof tried);
        }
        if (!g_plugin)
            g_plugin = try_open(CELERIAC_MODULE_DIR "/" PLUGIN_NAME, tried, sizeof tried);
    }
    if (!g_plugin)
        snprintf(err, errlen, "AMQP support is not available: cannot load %s: %s", PLUGIN_NAME,
                 tried);
    return g_plugin;
}

static void *symbol(const char *name, char *err, size_t errlen)
{
    void *h = plugin(err, errlen);
    if (!h)
        return NULL;
    void *f = dlsym(h, name);
    if (!f)
        snprintf(err, errlen, "%s: no symbol %s (a plugin from another build?)", PLUGIN_NAME,
                 name);
    return f;
}

cel_transport *cel_amqp_transport_open(const cel_url *u, const cel_config *cfg, bool consume,
                                       char *err, size_t errlen)
{
    transport_open_fn f;
    *(void **)&f = symbol("cel_amqp_plugin_transport_open", err, errlen);
    return f ? f(u, cfg, consume, err, errlen) : NULL;
}

cel_backend *cel_backend_rpc_open(const cel_config *cfg, char *err, size_t errlen)
{
    rpc_open_fn f;
    *(void **)&f = symbol("cel_amqp_plugin_rpc_open", err, errlen);
    return f ? f(cfg, err, errlen) : NULL;
}
