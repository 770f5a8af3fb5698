/* registry.c — task table and task-module loading (see registry.h).
 *
 * The table is a sorted array searched by bsearch: registration happens once
 * at start-up, lookups once per message, and the sorted order is what
 * `inspect registered` reports anyway.
 */
#include "worker/registry.h"
#include "core/log.h"

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cel_registry {
    cel_task_def *defs;
    size_t n, cap;
    void **modules;
    size_t nmodules;
};

cel_registry *cel_registry_new(void) { return calloc(1, sizeof(cel_registry)); }

void cel_registry_free(cel_registry *reg)
{
    if (!reg)
        return;
    for (size_t i = 0; i < reg->n; i++) {
        free(reg->defs[i].name);
        free((char *)reg->defs[i].opts.rate_limit);
    }
    free(reg->defs);
    /* Modules stay mapped: a child may still be unwinding through their
     * code at exit, and dlclose buys nothing at process end. */
    free(reg->modules);
    free(reg);
}

static int cmp_def(const void *a, const void *b)
{
    return strcmp(((const cel_task_def *)a)->name, ((const cel_task_def *)b)->name);
}

int cel_parse_rate(const char *s, double *per_s)
{
    /* celery.utils.time.rate: "<n>[/<s|m|h>]". */
    char *end;
    double n = strtod(s, &end);
    if (end == s || n < 0 || n != n)
        return -1;
    double div = 1;
    if (*end == '/') {
        end++;
        if (*end == 's')
            div = 1;
        else if (*end == 'm')
            div = 60;
        else if (*end == 'h')
            div = 3600;
        else
            return -1;
        end++;
    }
    if (*end)
        return -1;
    *per_s = n / div;
    return 0;
}

int cel_register(cel_registry *reg, const char *name, cel_task_fn fn,
                 const cel_task_options *opts)
{
    if (!reg || !name || !*name || !fn || strlen(name) > 255)
        return -1;
    if (cel_registry_find(reg, name))
        return -1;
    if (reg->n == reg->cap) {
        size_t cap = reg->cap ? reg->cap * 2 : 16;
        cel_task_def *d = realloc(reg->defs, cap * sizeof *d);
        if (!d)
            return -1;
        reg->defs = d;
        reg->cap = cap;
    }
    double rate = 0;
    if (opts && opts->rate_limit && cel_parse_rate(opts->rate_limit, &rate) < 0) {
        cel_error("Task %s: rate_limit '%s' is not a rate (\"100/s\", \"10/m\", \"1/h\")", name,
                  opts->rate_limit);
        return -1;
    }
    cel_task_def *def = &reg->defs[reg->n];
    def->name = strdup(name);
    if (!def->name)
        return -1;
    def->fn = fn;
    def->opts = opts ? *opts : (cel_task_options){0};
    def->rate = rate;
    if (def->opts.rate_limit && !(def->opts.rate_limit = strdup(def->opts.rate_limit))) {
        free(def->name);
        return -1;
    }
    reg->n++;
    qsort(reg->defs, reg->n, sizeof *reg->defs, cmp_def);
    return 0;
}

const cel_task_def *cel_registry_find(const cel_registry *reg, const char *name)
{
    if (!reg->n)
        return NULL;
    cel_task_def key = {.name = (char *)name};
    return bsearch(&key, reg->defs, reg->n, sizeof *reg->defs, cmp_def);
}

size_t cel_registry_count(const cel_registry *reg) { return reg->n; }

const cel_task_def *cel_registry_at(const cel_registry *reg, size_t i)
{
    return i < reg->n ? &reg->defs[i] : NULL;
}

/* `-A enrich` means the installed module libceleriac-enrich.so, as
 * `celery -A proj` names an importable app rather than a file: a name with no
 * '/' and no ".so" is looked up in $CELERIAC_MODULE_PATH (colon-separated)
 * and then in the directory `meson install` puts modules in.  Anything else is
 * a path handed to dlopen() as given. */
#ifndef CELERIAC_MODULE_DIR
#define CELERIAC_MODULE_DIR "/usr/local/lib/celeriac"
#endif

static bool is_bare_name(const char *s)
{
    size_t n = strlen(s);
    return n && !strchr(s, '/') && !(n > 3 && strcmp(s + n - 3, ".so") == 0) && !strstr(s, ".so.");
}

static void *open_named_module(const char *name, char *tried, size_t triedlen)
{
    const char *env = getenv("CELERIAC_MODULE_PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s%s%s", env && *env ? env : "", env && *env ? ":" : "",
             CELERIAC_MODULE_DIR);
    tried[0] = '\0';
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/libceleriac-%s.so", d, name) >= (int)sizeof path)
            continue;
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (h)
            return h;
        size_t used = strlen(tried);
        /* A long list is cut short: it is only for the error message. */
        if (snprintf(tried + used, triedlen - used, "%s%s", used ? ", " : "", path) < 0)
            break;
    }
    return NULL;
}

int cel_registry_load(cel_registry *reg, const char *path, char *err, size_t errlen)
{
    void *h;
    if (is_bare_name(path)) {
        char tried[1024];
        h = open_named_module(path, tried, sizeof tried);
        if (!h) {
            snprintf(err, errlen, "cannot find task module '%s' (tried %s)", path, tried);
            return -1;
        }
    } else {
        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            snprintf(err, errlen, "cannot load task module %s: %s", path, dlerror());
            return -1;
        }
    }
    int (*init)(cel_registry *);
    *(void **)&init = dlsym(h, "celeriac_module_init");
    if (!init) {
        snprintf(err, errlen, "%s: no celeriac_module_init symbol", path);
        dlclose(h);
        return -1;
    }
    size_t before = reg->n;
    if (init(reg) != 0) {
        snprintf(err, errlen, "%s: celeriac_module_init failed", path);
        return -1;
    }
    if (reg->n == before) {
        snprintf(err, errlen, "%s: module registered no tasks", path);
        return -1;
    }
    void **m = realloc(reg->modules, (reg->nmodules + 1) * sizeof *m);
    if (!m)
        return -1;
    reg->modules = m;
    reg->modules[reg->nmodules++] = h;
    return 0;
}
