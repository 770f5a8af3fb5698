/* call.c — `celeriac call`: a C producer like `celery call`, for tests,
 * benchmarks and sending jobs from a shell.  It writes the message Python's
 * apply_async writes (codec: cel_message_build_redis) and declares the
 * queue's binding as kombu does before publishing. */
#include "broker/transport.h"
#include "core/config.h"
#include "core/message.h"
#include "core/util.h"
#include "worker/worker.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *msg, const char *arg)
{
    fprintf(stderr, "celeriac: error: %s%s\n", msg, arg ? arg : "");
    return CEL_EX_USAGE;
}

/* A finite number, the whole string. */
static int parse_num(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int cel_call_main(int argc, char **argv)
{
    const char *task = NULL, *args_s = "[]", *kwargs_s = "{}", *queue = NULL, *broker = NULL;
    const char *id = NULL, *env_file = NULL, *env_name = NULL;
    double countdown = -1, expires = -1;
    int priority = 0, count = 1;
    const char *countdown_s = NULL, *expires_s = NULL, *priority_s = NULL, *count_s = NULL;
    /* Options that take a value, and where it goes. */
    const struct {
        const char *long_name, *short_name;
        const char **dest;
    } opts[] = {
        {"--args", "-a", &args_s},           {"--kwargs", "-k", &kwargs_s},
        {"--queue", "-Q", &queue},           {"--countdown", NULL, &countdown_s},
        {"--expires", NULL, &expires_s},     {"--priority", NULL, &priority_s},
        {"--id", NULL, &id},                 {"--count", NULL, &count_s},
        {"--broker", "-b", &broker},         {"--env-file", NULL, &env_file},
        {"--env", NULL, &env_name},
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            puts("usage: celeriac call TASK [--args JSON] [--kwargs JSON] [-Q QUEUE]\n"
                 "                      [--countdown N] [--expires N] [--priority N]\n"
                 "                      [--id ID] [--count N] [-b URL]\n"
                 "                      [--env NAME] [--env-file PATH]\n"
                 "Publishes TASK and prints its id (one per line with --count).\n"
                 "The broker comes from -b, CELERY_BROKER_URL, .env.NAME or .env\n"
                 "(the worker's layers: --env-file PATH replaces .env, --env NAME\n"
                 "or CELERIAC_ENV adds PATH.NAME).");
            return 0;
        }
        if (a[0] != '-') {
            if (task)
                return fail("unexpected argument: ", a);
            task = a;
            continue;
        }
        size_t k = 0, nopts = sizeof opts / sizeof opts[0];
        while (k < nopts && strcmp(a, opts[k].long_name) != 0 &&
               !(opts[k].short_name && strcmp(a, opts[k].short_name) == 0))
            k++;
        if (k == nopts)
            return fail("unknown option: ", a);
        if (i + 1 >= argc)
            return fail("missing value for ", a);
        *opts[k].dest = argv[++i];
    }
    if ((countdown_s && parse_num(countdown_s, &countdown) < 0) ||
        (expires_s && parse_num(expires_s, &expires) < 0))
        return fail("--countdown and --expires take seconds, e.g. 30 or 2.5", NULL);
    double num;
    if (priority_s) {
        if (parse_num(priority_s, &num) < 0 || num < 0 || num > 255 || num != (int)num)
            return fail("--priority takes an integer 0..255, got ", priority_s);
        priority = (int)num;
    }
    if (count_s) {
        if (parse_num(count_s, &num) < 0 || num < 1 || num > 10000000 || num != (int)num)
            return fail("--count takes a positive integer, got ", count_s);
        count = (int)num;
    }
    if (!task)
        return fail("missing task name", NULL);
    json_error_t jerr;
    json_t *args = json_loads(args_s, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    json_t *kwargs = json_loads(kwargs_s, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!json_is_array(args) || !json_is_object(kwargs)) {
        json_decref(args);
        json_decref(kwargs);
        return fail("--args must be a JSON array and --kwargs a JSON object", NULL);
    }
    cel_config cfg;
    cel_config_defaults(&cfg);
    char err[512];
    int rc = CEL_EX_USAGE;
    if (cel_config_load_layers(&cfg, env_file, env_name, err, sizeof err) < 0 ||
        (broker && cel_config_set(&cfg, "broker_url", broker, err, sizeof err) < 0)) {
        fprintf(stderr, "celeriac: error: %s\n", err);
        goto out;
    }
    if (!queue)
        queue = cfg.task_default_queue;
    cel_transport *t = cel_transport_open(&cfg, false, err, sizeof err);
    if (!t) {
        fprintf(stderr, "celeriac: error: %s\n", err);
        goto out;
    }
    rc = 0;
    for (int n = 0; n < (count > 0 ? count : 1); n++) {
        double now = cel_now();
        cel_message_spec s = {
            .task = task,
            .id = count == 1 ? id : NULL,
            .queue = queue,
            .args = args,
            .kwargs = kwargs,
            .priority = priority,
            .eta = countdown >= 0 ? now + countdown : 0,
            .expires = expires >= 0 ? now + expires : 0,
        };
        char *tid = NULL;
        char *env = cel_message_build_redis(&s, &tid);
        if (!env || t->ops->publish(t, queue, priority, env, strlen(env)) < 0) {
            fprintf(stderr, "celeriac: error: could not publish %s\n", task);
            rc = 1;
        } else {
            puts(tid);
        }
        free(env);
        free(tid);
        if (rc)
            break;
    }
    t->ops->close(t);
out:
    json_decref(args);
    json_decref(kwargs);
    cel_config_free(&cfg);
    return rc;
}
