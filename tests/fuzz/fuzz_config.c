/* fuzz_config.c — libFuzzer target for the settings parsers
 * (src/core/config.c): broker/backend URLs, .env files, Celery settings by
 * name, comma lists and hostname placeholders.
 *
 * Why one input feeds them all: a .env file is where every one of these
 * texts comes from in practice (CELERY_BROKER_URL=..., CELERY_..._OPTIONS=
 * {json}, -Q lists), so the whole input is loaded as a .env file, and each
 * of its first lines is also given to every other parser as a value.  The
 * file lives in a memfd (read through /proc/self/fd/N) rather than on disk:
 * no temp files, nothing left behind, and no disk I/O per execution.
 *
 * Checks beyond ASan/UBSan: cel_url_redacted's text does not depend on the
 * password (so it cannot show it); a split list has no empty,
 * untrimmed or comma-holding item; a pattern without '%' expands to itself;
 * error texts are NUL-terminated within their buffer.
 * Build and run: tests/fuzz/run.sh.
 */
#include "core/config.h"
#include "core/log.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static int envfd = -1;
static char envpath[64];

static const char *const names[] = {
    "broker_url",
    "result_backend",
    "task_acks_late",
    "task_time_limit",
    "result_expires",
    "worker_prefetch_multiplier",
    "worker_concurrency",
    "broker_transport_options",
    "broker_use_ssl",
    "broker_connection_max_retries",
    "task_default_queue",
    "worker_hostname",
    "worker_state_db",
    "CELERY_TASK_SOFT_TIME_LIMIT",
    "CELERY_WORKER_SEND_TASK_EVENTS",
    "no_such_setting",
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cel_log_set_level(CEL_LOG_CRITICAL);
    envfd = memfd_create("fuzz-env", 0);
    if (envfd < 0)
        abort();
    snprintf(envpath, sizeof envpath, "/proc/self/fd/%d", envfd);
    return 0;
}

static void check_err(const char *err, size_t len)
{
    if (!memchr(err, 0, len))
        abort();
}

static void check_url(const char *text)
{
    cel_url u;
    char err[256];
    if (cel_url_parse(text, &u, err, sizeof err) < 0) {
        check_err(err, sizeof err);
        return;
    }
    if (u.port < 0 || u.port > 65535)
        abort();
    char red[1024];
    cel_url_redacted(&u, red, sizeof red);
    check_err(red, sizeof red);
    /* the redacted text must not depend on the password at all (a plain
     * "is it a substring" test trips over passwords that also occur in the
     * user or host by chance) */
    if (u.password) {
        char *pw = u.password;
        char other[1024];
        u.password = (char *)"another secret";
        cel_url_redacted(&u, other, sizeof other);
        u.password = pw;
        if (strcmp(red, other) != 0)
            abort();
    }
    cel_url_free(&u);
}

static void check_list(const char *text)
{
    char **v = cel_split_list(text);
    if (!v)
        abort();
    for (char **p = v; *p; p++) {
        size_t n = strlen(*p);
        if (n == 0 || strchr(*p, ','))
            abort();
        if ((*p)[0] == ' ' || (*p)[n - 1] == ' ')
            abort();
    }
    cel_strv_free(v);
}

static void check_hostname(const char *text)
{
    char *h = cel_expand_hostname(text);
    if (!h)
        abort();
    if (!strchr(text, '%') && strcmp(h, text) != 0)
        abort();
    free(h);
}

static void check_settings(const char *value)
{
    cel_config c;
    cel_config_defaults(&c);
    char err[512];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        int rc = cel_config_set(&c, names[i], value, err, sizeof err);
        if (rc < -1 || rc > 1)
            abort();
        if (rc < 0)
            check_err(err, sizeof err);
    }
    cel_config_free(&c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the .env file */
    if (ftruncate(envfd, 0) < 0 || pwrite(envfd, data, size, 0) != (ssize_t)size)
        abort();
    cel_config c;
    cel_config_defaults(&c);
    char err[512];
    if (cel_config_load_envfile(&c, envpath, false, err, sizeof err) < 0)
        check_err(err, sizeof err);
    cel_config_free(&c);

    /* each of the first lines as a value (a NUL ends a line too) */
    char *s = malloc(size + 1);
    if (!s)
        abort();
    memcpy(s, data, size);
    s[size] = '\0';
    char *line = s;
    for (int n = 0; n < 8 && line; n++) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        check_url(line);
        check_list(line);
        check_hostname(line);
        check_settings(line);
        line = nl ? nl + 1 : NULL;
    }
    free(s);
    return 0;
}
