/* test_config.c — settings: URLs, defaults, every setting name, .env files,
 * precedence (command line > environment > .env.NAME > .env > defaults),
 * hostname expansion and the worker command line.  Also the log line shape.
 *
 * Every test runs in a fresh temporary directory (the .env files live there)
 * with all CELERY_* / CELERIAC_* variables removed from the environment, so
 * the tests neither see nor leave behind each other's settings.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/config.h"
#include "worker/registry.h"
#include "worker/exec.h"
#include "core/log.h"

extern char **environ;

/* ------------------------------------------------------------ fixtures */

static char saved_cwd[4096];
static char tmpdir[64];

static void clear_settings_environ(void)
{
    for (;;) {
        char name[256] = "";
        for (char **e = environ; *e; e++) {
            if (strncmp(*e, "CELERY_", 7) == 0 || strncmp(*e, "CELERIAC_", 9) == 0) {
                size_t n = strcspn(*e, "=");
                if (n >= sizeof name)
                    n = sizeof name - 1;
                memcpy(name, *e, n);
                name[n] = '\0';
                break;
            }
        }
        if (!name[0])
            return;
        unsetenv(name);
    }
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    clear_settings_environ();
    if (!getcwd(saved_cwd, sizeof saved_cwd))
        return -1;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/celeriac-test-config-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    return chdir(tmpdir);
}

static int teardown(void **state)
{
    clear_settings_environ();
    int rc = chdir(saved_cwd);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return rc;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void local_host(char *buf, size_t len)
{
    assert_int_equal(gethostname(buf, len), 0);
    buf[len - 1] = '\0';
}

/* Runs cel_config_from_worker_args on a NULL-terminated list of words
 * (the "worker" argv[0] is added here). */
static int run_args(cel_config *c, char *err, size_t errlen, ...)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = "worker";
    va_list ap;
    va_start(ap, errlen);
    char *a;
    while ((a = va_arg(ap, char *)) != NULL && argc < 63)
        argv[argc++] = a;
    va_end(ap);
    argv[argc] = NULL;
    err[0] = '\0';
    return cel_config_from_worker_args(c, argc, argv, err, errlen);
}

#define RUN(c, err, ...) run_args(c, err, sizeof err, __VA_ARGS__, (char *)NULL)

/* ------------------------------------------------------------ URLs */

static void test_url_redis_defaults(void **state)
{
    cel_url u;
    char err[256];
    assert_int_equal(cel_url_parse("redis://", &u, err, sizeof err), 0);
    assert_int_equal(u.scheme, CEL_URL_REDIS);
    assert_string_equal(u.host, "localhost");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_string_equal(u.path, "0");
    assert_null(u.user);
    assert_null(u.password);
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("redis://redis.example/", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "redis.example");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("REDIS://localhost:6379/0", &u, err, sizeof err), 0);
    assert_int_equal(u.scheme, CEL_URL_REDIS);
    cel_url_free(&u);
}

static void test_url_redis_full(void **state)
{
    cel_url u;
    char err[256];
    assert_int_equal(cel_url_parse("redis://alice:p%40ss%3Aw%2Frd@cache.example.com:6380/15", &u,
                                   err, sizeof err),
                     0);
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.password, "p@ss:w/rd");
    assert_string_equal(u.host, "cache.example.com");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 15);
    assert_string_equal(u.path, "15");
    cel_url_free(&u);

    /* Password only, the usual Redis form. */
    assert_int_equal(cel_url_parse("redis://:secret@10.0.0.5:7000/2", &u, err, sizeof err), 0);
    assert_null(u.user);
    assert_string_equal(u.password, "secret");
    assert_string_equal(u.host, "10.0.0.5");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 2);
    cel_url_free(&u);

    /* IPv6 literal. */
    assert_int_equal(cel_url_parse("redis://[::1]:6390/1", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6390);
    assert_int_equal(u.db, 1);
    cel_url_free(&u);

    /* An unescaped '@' in the password: the last '@' ends the credentials. */
    assert_int_equal(cel_url_parse("redis://:p@ss@host/0", &u, err, sizeof err), 0);
    assert_string_equal(u.password, "p@ss");
    assert_string_equal(u.host, "host");
    cel_url_free(&u);
}

static void test_url_redis_bad_db(void **state)
{
    const char *bad[] = {"redis://h/16", "redis://h/abc", "redis://h/-1", "redis://h/1/2",
                         "redis://h/100", "redis://h/0x1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cel_url u;
        char err[256] = "";
        assert_int_equal(cel_url_parse(bad[i], &u, err, sizeof err), -1);
        assert_non_null(strstr(err, "database"));
        assert_null(u.host); /* freed and zeroed on error */
    }
}

static void test_url_bad_ports(void **state)
{
    const char *bad[] = {"redis://h:0/0",    "redis://h:65536/0", "redis://h:abc/0",
                         "redis://h:/0",     "redis://h:99999999/0", "amqp://h:-5//",
                         "redis://h:12a/0",  "amqp://u:p@h:0/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cel_url u;
        char err[256] = "";
        assert_int_equal(cel_url_parse(bad[i], &u, err, sizeof err), -1);
        assert_non_null(strstr(err, "port"));
    }
    cel_url u;
    char err[256];
    assert_int_equal(cel_url_parse("redis://h:1/0", &u, err, sizeof err), 0);
    assert_int_equal(u.port, 1);
    cel_url_free(&u);
    assert_int_equal(cel_url_parse("redis://h:65535/0", &u, err, sizeof err), 0);
    assert_int_equal(u.port, 65535);
    cel_url_free(&u);
}

static void test_url_garbage_and_schemes(void **state)
{
    const char *bad[] = {"",           "not a url",        "redis//host", "://host",
                         "redis://ho st/0", "redis://h\"x/0", "localhost:6379"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cel_url u;
        char err[256] = "";
        assert_int_equal(cel_url_parse(bad[i], &u, err, sizeof err), -1);
        assert_true(err[0] != '\0');
        assert_null(strchr(err, '\n'));
    }
    cel_url u;
    char err[256];
    assert_int_equal(cel_url_parse(NULL, &u, err, sizeof err), -1);

    assert_int_equal(cel_url_parse("ftp://host/", &u, err, sizeof err), -1);
    assert_non_null(strstr(err, "unsupported URL scheme 'ftp'"));

    assert_int_equal(cel_url_parse("rediss://:pw@host:6380/0", &u, err, sizeof err), -1);
    assert_non_null(strstr(err, "TLS"));
    assert_non_null(strstr(err, "tunnel"));
    assert_null(strstr(err, "pw"));

    assert_int_equal(cel_url_parse("rpc://", &u, err, sizeof err), 0);
    assert_int_equal(u.scheme, CEL_URL_RPC);
    cel_url_free(&u);
}

static void test_url_unix(void **state)
{
    cel_url u;
    char err[256];
    assert_int_equal(cel_url_parse("redis+socket:///tmp/redis.sock", &u, err, sizeof err), 0);
    assert_int_equal(u.scheme, CEL_URL_UNIX);
    assert_string_equal(u.path, "/tmp/redis.sock");
    assert_int_equal(u.db, 0);
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("unix:///run/redis/redis.sock?virtual_host=3", &u, err,
                                   sizeof err),
                     0);
    assert_int_equal(u.scheme, CEL_URL_UNIX);
    assert_string_equal(u.path, "/run/redis/redis.sock");
    assert_int_equal(u.db, 3);
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("unix:///r.sock?db=4", &u, err, sizeof err), 0);
    assert_int_equal(u.db, 4);
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("redis+socket://:s%21cret@/tmp/r.sock", &u, err, sizeof err),
                     0);
    assert_string_equal(u.password, "s!cret");
    assert_string_equal(u.path, "/tmp/r.sock");
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("unix://relative.sock", &u, err, sizeof err), -1);
    assert_non_null(strstr(err, "absolute path"));
    assert_int_equal(cel_url_parse("unix://", &u, err, sizeof err), -1);
    assert_int_equal(cel_url_parse("unix://:pw@otherhost/tmp/r.sock", &u, err, sizeof err), -1);
    assert_null(strstr(err, "pw"));
    assert_int_equal(cel_url_parse("unix:///r.sock?virtual_host=99", &u, err, sizeof err), -1);
}

static void test_url_amqp(void **state)
{
    cel_url u;
    char err[256];
    assert_int_equal(cel_url_parse("amqp://guest:guest@localhost:5672//", &u, err, sizeof err),
                     0);
    assert_int_equal(u.scheme, CEL_URL_AMQP);
    assert_string_equal(u.user, "guest");
    assert_string_equal(u.password, "guest");
    assert_string_equal(u.host, "localhost");
    assert_int_equal(u.port, 5672);
    assert_string_equal(u.path, "/");
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("amqp://rabbit", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "rabbit");
    assert_int_equal(u.port, 5672);
    assert_string_equal(u.path, "/");
    assert_null(u.user);
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("amqp://rabbit/", &u, err, sizeof err), 0);
    assert_string_equal(u.path, "/");
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("amqp://u:p@rabbit:5673/myvhost", &u, err, sizeof err), 0);
    assert_string_equal(u.path, "myvhost");
    assert_int_equal(u.port, 5673);
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("amqp://rabbit/%2Fprod", &u, err, sizeof err), 0);
    assert_string_equal(u.path, "/prod");
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("amqps://u:p%20w@secure.example/", &u, err, sizeof err), 0);
    assert_int_equal(u.scheme, CEL_URL_AMQPS);
    assert_int_equal(u.port, 5671);
    assert_string_equal(u.password, "p w");
    cel_url_free(&u);

    assert_int_equal(cel_url_parse("amqp://rabbit/%zz", &u, err, sizeof err), -1);
}

static void test_url_errors_never_show_password(void **state)
{
    const char *bad[] = {
        "redis://:s3cret@host:99999/0",   "redis://u:s3cret@host/99",
        "redis://:s3cret/x@host/0",       "redis://:s3cr%zzet@host/0",
        "redis://:s3cret@ho st/0",        "rediss://:s3cret@host/0",
        "amqp://u:s3cret@host:0//",       "redis://:s3cret%00@host/0",
        "redis://:s3cret?x@host:1/0x",    "redis://s3cret@ho%st/0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cel_url u;
        char err[256] = "";
        assert_int_equal(cel_url_parse(bad[i], &u, err, sizeof err), -1);
        assert_true(err[0] != '\0');
        if (strstr(err, "s3cret"))
            fail_msg("password leaked for %zu: %s", i, err);
    }
}

static void test_url_redacted(void **state)
{
    struct {
        const char *in, *out;
    } cases[] = {
        {"redis://user:p%40ss@example.com:6380/3", "redis://user:**@example.com:6380/3"},
        {"redis://:secret@h/1", "redis://:**@h:6379/1"},
        {"redis://", "redis://localhost:6379/0"},
        {"redis://[::1]:7000/2", "redis://[::1]:7000/2"},
        {"amqp://guest:guest@localhost:5672//", "amqp://guest:**@localhost:5672//"},
        {"amqps://u@h/vh", "amqps://u@h:5671/vh"},
        {"redis+socket:///tmp/r.sock", "redis+socket:///tmp/r.sock"},
        {"unix://:pw@/tmp/r.sock?virtual_host=2", "redis+socket://:**@/tmp/r.sock?virtual_host=2"},
        {"rpc://", "rpc://"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cel_url u;
        char err[256], buf[256];
        assert_int_equal(cel_url_parse(cases[i].in, &u, err, sizeof err), 0);
        cel_url_redacted(&u, buf, sizeof buf);
        assert_string_equal(buf, cases[i].out);
        cel_url_free(&u);
    }
    /* A short buffer is truncated, still terminated. */
    cel_url u;
    char err[256], small[8];
    assert_int_equal(cel_url_parse("redis://:secret@longhostname/0", &u, err, sizeof err), 0);
    cel_url_redacted(&u, small, sizeof small);
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_null(strstr(small, "secret"));
    cel_url_free(&u);
}

/* ------------------------------------------------------------ defaults */

static void test_defaults(void **state)
{
    cel_config c;
    cel_config_defaults(&c);
    char host[256], expect[300];
    local_host(host, sizeof host);
    snprintf(expect, sizeof expect, "celeriac@%s", host);

    assert_non_null(c.apps);
    assert_null(c.apps[0]);
    assert_string_equal(c.broker_url, "redis://localhost:6379/0");
    assert_null(c.result_backend);
    assert_string_equal(c.queues[0], "celery");
    assert_null(c.queues[1]);
    assert_int_equal(c.concurrency, (int)sysconf(_SC_NPROCESSORS_ONLN));
    assert_string_equal(c.hostname, expect);
    assert_int_equal(c.loglevel, CEL_LOG_WARNING);
    assert_null(c.logfile);
    assert_int_equal(c.pool, CEL_POOL_PREFORK);
    assert_int_equal(c.prefetch_multiplier, 4);
    assert_false(c.task_events);
    assert_false(c.without_heartbeat);
    assert_false(c.without_gossip);
    assert_false(c.without_mingle);
    assert_false(c.task_acks_late);
    assert_false(c.task_track_started);
    assert_false(c.task_ignore_result);
    assert_false(c.result_extended);
    assert_true(c.result_expires == 86400);
    assert_true(c.visibility_timeout == 3600);
    assert_null(c.broker_transport_options);
    assert_true(c.broker_connection_retry);
    assert_int_equal(c.broker_connection_max_retries, 100);
    assert_string_equal(c.task_default_queue, "celery");
    assert_true(c.worker_restore_interval == 10);
    cel_config_free(&c);
    cel_config_free(&c); /* zeroed: a second free is harmless */
}

/* ------------------------------------------------------------ settings */

static void test_broker_use_ssl(void **state)
{
    (void)state;
    cel_config c;
    char err[256];
    cel_config_defaults(&c);
    assert_false(c.broker_use_ssl.on);
    assert_int_equal(c.broker_use_ssl.cert_reqs, 2);
    assert_int_equal(cel_config_set(&c, "CELERY_BROKER_USE_SSL", "true", err, sizeof err), 0);
    assert_true(c.broker_use_ssl.on);
    assert_null(c.broker_use_ssl.ca_certs);
    assert_int_equal(cel_config_set(&c, "broker_use_ssl",
                                    "{\"ca_certs\": \"/ca.pem\", \"certfile\": \"/c.pem\", "
                                    "\"keyfile\": \"/k.pem\", \"cert_reqs\": 0}",
                                    err, sizeof err),
                     0);
    assert_true(c.broker_use_ssl.on);
    assert_string_equal(c.broker_use_ssl.ca_certs, "/ca.pem");
    assert_string_equal(c.broker_use_ssl.certfile, "/c.pem");
    assert_string_equal(c.broker_use_ssl.keyfile, "/k.pem");
    assert_int_equal(c.broker_use_ssl.cert_reqs, 0);
    /* A bad value is an error and leaves the previous setting alone. */
    assert_int_equal(cel_config_set(&c, "broker_use_ssl", "{\"cert_reqs\": 7}", err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "cert_reqs"));
    assert_int_equal(cel_config_set(&c, "broker_use_ssl", "{\"ciphers\": \"x\"}", err,
                                    sizeof err),
                     -1);
    assert_int_equal(cel_config_set(&c, "broker_use_ssl", "[1]", err, sizeof err), -1);
    assert_string_equal(c.broker_use_ssl.ca_certs, "/ca.pem");
    assert_int_equal(cel_config_set(&c, "broker_use_ssl", "off", err, sizeof err), 0);
    assert_false(c.broker_use_ssl.on);
    assert_null(c.broker_use_ssl.ca_certs);
    cel_config_free(&c);
}

static void test_set_bools_every_name_and_spelling(void **state)
{
    struct {
        const char *name;
        size_t offset;
    } names[] = {
        {"task_acks_late", offsetof(cel_config, task_acks_late)},
        {"task_track_started", offsetof(cel_config, task_track_started)},
        {"task_ignore_result", offsetof(cel_config, task_ignore_result)},
        {"result_extended", offsetof(cel_config, result_extended)},
        {"broker_connection_retry", offsetof(cel_config, broker_connection_retry)},
        {"worker_send_task_events", offsetof(cel_config, task_events)},
    };
    const char *truthy[] = {"1", "true", "True", "TRUE", "yes", "on", " On "};
    const char *falsy[] = {"0", "false", "False", "no", "off", "OFF"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char env[80] = "CELERY_";
        for (size_t k = 0; names[i].name[k]; k++)
            env[7 + k] = (char)(names[i].name[k] - ('a' <= names[i].name[k] &&
                                                     names[i].name[k] <= 'z' ? 32 : 0));
        env[7 + strlen(names[i].name)] = '\0';
        const char *spellings[] = {names[i].name, env};
        for (size_t s = 0; s < 2; s++) {
            cel_config c;
            char err[256];
            cel_config_defaults(&c);
            bool *field = (bool *)((char *)&c + names[i].offset);
            for (size_t t = 0; t < sizeof truthy / sizeof truthy[0]; t++) {
                *field = false;
                assert_int_equal(cel_config_set(&c, spellings[s], truthy[t], err, sizeof err), 0);
                assert_true(*field);
            }
            for (size_t t = 0; t < sizeof falsy / sizeof falsy[0]; t++) {
                *field = true;
                assert_int_equal(cel_config_set(&c, spellings[s], falsy[t], err, sizeof err), 0);
                assert_false(*field);
            }
            assert_int_equal(cel_config_set(&c, spellings[s], "maybe", err, sizeof err), -1);
            assert_non_null(strstr(err, spellings[s]));
            assert_non_null(strstr(err, "maybe"));
            assert_int_equal(cel_config_set(&c, spellings[s], "", err, sizeof err), -1);
            cel_config_free(&c);
        }
    }
}

static void test_set_urls(void **state)
{
    cel_config c;
    char err[256];
    cel_config_defaults(&c);
    assert_int_equal(cel_config_set(&c, "broker_url", "redis://h:6380/1", err, sizeof err), 0);
    assert_string_equal(c.broker_url, "redis://h:6380/1");
    assert_int_equal(cel_config_set(&c, "CELERY_BROKER_URL", "amqp://guest:guest@r//", err,
                                    sizeof err),
                     0);
    assert_string_equal(c.broker_url, "amqp://guest:guest@r//");
    /* Empty: back to the default, as an unset template line in a .env. */
    assert_int_equal(cel_config_set(&c, "CELERY_BROKER_URL", "", err, sizeof err), 0);
    assert_string_equal(c.broker_url, "redis://localhost:6379/0");
    /* Invalid: error names the variable, never shows the password; the old
     * value stays. */
    assert_int_equal(cel_config_set(&c, "CELERY_BROKER_URL", "redis://:hunter2@h:0/0", err,
                                    sizeof err),
                     -1);
    assert_non_null(strstr(err, "CELERY_BROKER_URL: "));
    assert_null(strstr(err, "hunter2"));
    assert_string_equal(c.broker_url, "redis://localhost:6379/0");

    assert_int_equal(cel_config_set(&c, "result_backend", "redis://h/2", err, sizeof err), 0);
    assert_string_equal(c.result_backend, "redis://h/2");
    assert_int_equal(cel_config_set(&c, "CELERY_RESULT_BACKEND", "rpc://", err, sizeof err), 0);
    assert_string_equal(c.result_backend, "rpc://");
    assert_int_equal(cel_config_set(&c, "CELERY_RESULT_BACKEND", "", err, sizeof err), 0);
    assert_null(c.result_backend);
    assert_int_equal(cel_config_set(&c, "result_backend", "rediss://:hunter2@h/0", err,
                                    sizeof err),
                     -1);
    assert_null(strstr(err, "hunter2"));
    assert_non_null(strstr(err, "TLS"));
    cel_config_free(&c);
}

static void test_set_numbers(void **state)
{
    cel_config c;
    char err[256];
    cel_config_defaults(&c);

    assert_int_equal(cel_config_set(&c, "worker_prefetch_multiplier", "8", err, sizeof err), 0);
    assert_int_equal(c.prefetch_multiplier, 8);
    assert_int_equal(cel_config_set(&c, "CELERY_WORKER_PREFETCH_MULTIPLIER", "0", err,
                                    sizeof err),
                     0);
    assert_int_equal(c.prefetch_multiplier, 0);
    assert_int_equal(cel_config_set(&c, "worker_prefetch_multiplier", "-1", err, sizeof err), -1);
    assert_int_equal(cel_config_set(&c, "worker_prefetch_multiplier", "4x", err, sizeof err), -1);
    assert_non_null(strstr(err, "'4x'"));
    assert_int_equal(c.prefetch_multiplier, 0);

    assert_int_equal(cel_config_set(&c, "worker_concurrency", "3", err, sizeof err), 0);
    assert_int_equal(c.concurrency, 3);
    assert_int_equal(cel_config_set(&c, "CELERY_WORKER_CONCURRENCY", " 12 ", err, sizeof err), 0);
    assert_int_equal(c.concurrency, 12);
    const char *bad_conc[] = {"0", "-2", "4x", "", "x", "1.5", "99999999999999999999", "+"};
    for (size_t i = 0; i < sizeof bad_conc / sizeof bad_conc[0]; i++) {
        assert_int_equal(cel_config_set(&c, "CELERY_WORKER_CONCURRENCY", bad_conc[i], err,
                                        sizeof err),
                         -1);
        assert_non_null(strstr(err, "CELERY_WORKER_CONCURRENCY: expected an integer >= 1"));
    }
    assert_int_equal(c.concurrency, 12);

    /* Time limits: seconds, None/0 for none; defaults none. */
    assert_true(c.task_time_limit == 0 && c.task_soft_time_limit == 0);
    assert_true(c.task_acks_on_failure_or_timeout);
    assert_int_equal(cel_config_set(&c, "CELERY_TASK_TIME_LIMIT", "30", err, sizeof err), 0);
    assert_int_equal(cel_config_set(&c, "task_soft_time_limit", "2.5", err, sizeof err), 0);
    assert_true(c.task_time_limit == 30 && c.task_soft_time_limit == 2.5);
    assert_int_equal(cel_config_set(&c, "task_time_limit", "None", err, sizeof err), 0);
    assert_true(c.task_time_limit == 0);
    assert_int_equal(cel_config_set(&c, "task_soft_time_limit", "soon", err, sizeof err), -1);
    assert_non_null(strstr(err, "task_soft_time_limit: expected a number of seconds"));
    assert_int_equal(cel_config_set(&c, "CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT", "false", err,
                                    sizeof err),
                     0);
    assert_false(c.task_acks_on_failure_or_timeout);

    /* Celery's rate strings (celery.utils.time.rate). */
    double rate = -1;
    assert_int_equal(cel_parse_rate("100/s", &rate), 0);
    assert_true(rate == 100);
    assert_int_equal(cel_parse_rate("30/m", &rate), 0);
    assert_true(rate == 0.5);
    assert_int_equal(cel_parse_rate("36/h", &rate), 0);
    assert_true(rate == 0.01);
    assert_int_equal(cel_parse_rate("5", &rate), 0);
    assert_true(rate == 5);
    const char *bad_rates[] = {"", "/s", "10/d", "10/", "ten/s", "-1/s", "10/ss"};
    for (size_t i = 0; i < sizeof bad_rates / sizeof bad_rates[0]; i++)
        assert_int_equal(cel_parse_rate(bad_rates[i], &rate), -1);

    /* get_exponential_backoff_interval(factor, retries, maximum, full_jitter) */
    assert_int_equal(cel_backoff_interval(1, 0, 600, false), 1);
    assert_int_equal(cel_backoff_interval(1, 3, 600, false), 8);
    assert_int_equal(cel_backoff_interval(3, 4, 600, false), 48);
    assert_int_equal(cel_backoff_interval(1, 10, 600, false), 600);
    assert_int_equal(cel_backoff_interval(1, 200, 600, false), 600);
    for (int i = 0; i < 200; i++) {
        int j = cel_backoff_interval(2, 3, 600, true);
        assert_true(j >= 0 && j <= 16);
    }

    assert_int_equal(cel_config_set(&c, "result_expires", "60.5", err, sizeof err), 0);
    assert_true(c.result_expires == 60.5);
    assert_int_equal(cel_config_set(&c, "CELERY_RESULT_EXPIRES", "None", err, sizeof err), 0);
    assert_true(c.result_expires == 0);
    assert_int_equal(cel_config_set(&c, "result_expires", "3600", err, sizeof err), 0);
    assert_true(c.result_expires == 3600);
    assert_int_equal(cel_config_set(&c, "result_expires", "1h", err, sizeof err), -1);
    assert_int_equal(cel_config_set(&c, "result_expires", "-5", err, sizeof err), -1);
    assert_int_equal(cel_config_set(&c, "result_expires", "inf", err, sizeof err), -1);
    assert_true(c.result_expires == 3600);

    assert_int_equal(cel_config_set(&c, "broker_connection_max_retries", "7", err, sizeof err),
                     0);
    assert_int_equal(c.broker_connection_max_retries, 7);
    const char *forever[] = {"none", "None", "", "null"};
    for (size_t i = 0; i < sizeof forever / sizeof forever[0]; i++) {
        c.broker_connection_max_retries = 7;
        assert_int_equal(cel_config_set(&c, "CELERY_BROKER_CONNECTION_MAX_RETRIES", forever[i],
                                        err, sizeof err),
                         0);
        assert_int_equal(c.broker_connection_max_retries, 0);
    }
    assert_int_equal(cel_config_set(&c, "broker_connection_max_retries", "-1", err, sizeof err),
                     -1);
    assert_int_equal(cel_config_set(&c, "broker_connection_max_retries", "ten", err, sizeof err),
                     -1);
    cel_config_free(&c);
}

static void test_set_transport_options(void **state)
{
    cel_config c;
    char err[256];
    cel_config_defaults(&c);
    const char *json = "{\"visibility_timeout\": 30, \"fanout_prefix\": true}";
    assert_int_equal(cel_config_set(&c, "CELERY_BROKER_TRANSPORT_OPTIONS", json, err, sizeof err),
                     0);
    assert_true(c.visibility_timeout == 30);
    assert_string_equal(c.broker_transport_options, json);

    assert_int_equal(cel_config_set(&c, "broker_transport_options",
                                    "{\"visibility_timeout\": 12.5}", err, sizeof err),
                     0);
    assert_true(c.visibility_timeout == 12.5);

    /* A new dict replaces the old: no visibility_timeout = the default. */
    assert_int_equal(cel_config_set(&c, "broker_transport_options", "{\"max_connections\": 5}",
                                    err, sizeof err),
                     0);
    assert_true(c.visibility_timeout == 3600);
    assert_string_equal(c.broker_transport_options, "{\"max_connections\": 5}");

    /* Malformed: error, nothing changes, no JSON text quoted. */
    const char *bad[] = {"{\"visibility_timeout\": 30", "visibility_timeout=30",
                         "{'visibility_timeout': 30}", "[1, 2]", "42",
                         "{\"visibility_timeout\": \"30\"}", "{\"visibility_timeout\": -1}",
                         "{\"visibility_timeout\": 0}", "{\"password\": \"hunter2\" oops}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(cel_config_set(&c, "CELERY_BROKER_TRANSPORT_OPTIONS", bad[i], err,
                                        sizeof err),
                         -1);
        assert_non_null(strstr(err, "CELERY_BROKER_TRANSPORT_OPTIONS: "));
        assert_null(strstr(err, "hunter2"));
        assert_true(c.visibility_timeout == 3600);
        assert_string_equal(c.broker_transport_options, "{\"max_connections\": 5}");
    }

    /* kombu's wire options: its default is accepted, anything else refused
     * (a producer with another key prefix or separator is out of reach). */
    const char *wire_ok[] = {"{\"sep\": \"\\u0006\\u0016\"}", "{\"global_keyprefix\": \"\"}",
                             "{\"priority_steps\": [0, 3, 6, 9], \"fanout_patterns\": true}",
                             "{\"queue_order_strategy\": \"priority\"}",
                             "{\"socket_timeout\": 5, \"no_such_option\": 1}"};
    for (size_t i = 0; i < sizeof wire_ok / sizeof wire_ok[0]; i++)
        assert_int_equal(cel_config_set(&c, "broker_transport_options", wire_ok[i], err,
                                        sizeof err),
                         0);
    const char *wire_bad[] = {"{\"global_keyprefix\": \"app:\"}", "{\"sep\": \":\"}",
                              "{\"priority_steps\": [0, 5]}", "{\"fanout_prefix\": false}",
                              "{\"unacked_key\": \"mine\"}", "{\"ack_emulation\": false}"};
    for (size_t i = 0; i < sizeof wire_bad / sizeof wire_bad[0]; i++) {
        assert_int_equal(cel_config_set(&c, "broker_transport_options", wire_bad[i], err,
                                        sizeof err),
                         -1);
        assert_non_null(strstr(err, "kombu's default"));
        assert_string_equal(c.broker_transport_options, wire_ok[4]);
    }

    assert_int_equal(cel_config_set(&c, "broker_transport_options", "", err, sizeof err), 0);
    assert_null(c.broker_transport_options);
    cel_config_free(&c);
}

static void test_set_strings_and_cli_names(void **state)
{
    cel_config c;
    char err[256], host[256], expect[300];
    local_host(host, sizeof host);
    cel_config_defaults(&c);

    /* task_default_queue also moves the default queue list. */
    assert_int_equal(cel_config_set(&c, "CELERY_TASK_DEFAULT_QUEUE", "jobs", err, sizeof err), 0);
    assert_string_equal(c.task_default_queue, "jobs");
    assert_string_equal(c.queues[0], "jobs");
    assert_null(c.queues[1]);
    assert_int_equal(cel_config_set(&c, "task_default_queue", "", err, sizeof err), -1);
    assert_int_equal(cel_config_set(&c, "task_default_queue", "a b", err, sizeof err), -1);

    /* ...but not a list somebody chose. */
    assert_int_equal(cel_config_set(&c, "CELERIAC_QUEUES", "a, b ,,c", err, sizeof err), 0);
    assert_string_equal(c.queues[0], "a");
    assert_string_equal(c.queues[1], "b");
    assert_string_equal(c.queues[2], "c");
    assert_null(c.queues[3]);
    assert_int_equal(cel_config_set(&c, "task_default_queue", "other", err, sizeof err), 0);
    assert_string_equal(c.queues[0], "a");
    assert_int_equal(cel_config_set(&c, "CELERIAC_QUEUES", " , ", err, sizeof err), -1);

    assert_int_equal(cel_config_set(&c, "worker_hostname", "w1@%h", err, sizeof err), 0);
    snprintf(expect, sizeof expect, "w1@%s", host);
    assert_string_equal(c.hostname, expect);
    assert_int_equal(cel_config_set(&c, "CELERIAC_HOSTNAME", "box", err, sizeof err), 0);
    assert_string_equal(c.hostname, "celeriac@box");
    assert_int_equal(cel_config_set(&c, "CELERY_WORKER_HOSTNAME", "", err, sizeof err), -1);

    assert_int_equal(cel_config_set(&c, "CELERIAC_APP", "tasks.so, more_tasks", err, sizeof err),
                     0);
    assert_string_equal(c.apps[0], "tasks.so");
    assert_string_equal(c.apps[1], "more_tasks");
    assert_null(c.apps[2]);

    assert_int_equal(cel_config_set(&c, "CELERIAC_CONCURRENCY", "6", err, sizeof err), 0);
    assert_int_equal(c.concurrency, 6);
    assert_int_equal(cel_config_set(&c, "CELERIAC_CONCURRENCY", "6x", err, sizeof err), -1);

    assert_int_equal(cel_config_set(&c, "CELERIAC_LOGLEVEL", "info", err, sizeof err), 0);
    assert_int_equal(c.loglevel, CEL_LOG_INFO);
    assert_int_equal(cel_config_set(&c, "CELERIAC_LOGLEVEL", "verbose", err, sizeof err), -1);
    assert_non_null(strstr(err, "CELERIAC_LOGLEVEL: unknown log level 'verbose'"));

    assert_int_equal(cel_config_set(&c, "CELERIAC_POOL", "solo", err, sizeof err), 0);
    assert_int_equal(c.pool, CEL_POOL_SOLO);
    assert_int_equal(cel_config_set(&c, "CELERIAC_POOL", "processes", err, sizeof err), 0);
    assert_int_equal(c.pool, CEL_POOL_PREFORK);
    assert_int_equal(cel_config_set(&c, "CELERIAC_POOL", "gevent", err, sizeof err), -1);
    assert_non_null(strstr(err, "gevent"));

    assert_int_equal(cel_config_set(&c, "CELERIAC_LOGFILE", "/tmp/w.log", err, sizeof err), 0);
    assert_string_equal(c.logfile, "/tmp/w.log");
    assert_int_equal(cel_config_set(&c, "CELERIAC_LOGFILE", "-", err, sizeof err), 0);
    assert_null(c.logfile);
    cel_config_free(&c);
}

static void test_set_unknown_names(void **state)
{
    cel_config c;
    char err[256] = "";
    cel_config_defaults(&c);
    const char *unknown[] = {"CELERY_CONFIG_MODULE", "PATH", "TASK_ACKS_LATE", "CELERIAC_ENV",
                             "CELERIAC_FROBNICATE", "task_queues", "worker_log_level",
                             "CELERY_", "", "Task_acks_late"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        assert_int_equal(cel_config_set(&c, unknown[i], "1", err, sizeof err), 1);
    assert_false(c.task_acks_late);
    cel_config_free(&c);
}

/* ------------------------------------------------------------ .env files */

static void test_envfile_syntax(void **state)
{
    write_file(".env",
               "# a comment\n"
               "\n"
               "   \t\n"
               "CELERY_BROKER_URL=redis://envhost:6390/2   # trailing comment\n"
               "export CELERY_TASK_ACKS_LATE=true\n"
               "CELERIAC_HOSTNAME = 'lit#eral\\n'\n"
               "CELERIAC_APP=\"a.so,\\\"b\\\\c\\\"\"  # comment after quotes\n"
               "CELERY_TASK_DEFAULT_QUEUE=q#1\n"
               "OTHER_APP_SECRET=ignored entirely\n"
               "lower_case=also ignored\n"
               "CELERY_UNKNOWN_THING=fine\n"
               "CELERIAC_LOGFILE=\n"
               "CELERY_RESULT_EXPIRES=  120  \r\n");
    cel_config c;
    char err[256] = "";
    cel_config_defaults(&c);
    assert_int_equal(cel_config_load_envfile(&c, ".env", false, err, sizeof err), 0);
    assert_string_equal(c.broker_url, "redis://envhost:6390/2");
    assert_true(c.task_acks_late);
    assert_string_equal(c.hostname, "celeriac@lit#eral\\n");
    assert_string_equal(c.apps[0], "a.so");
    assert_string_equal(c.apps[1], "\"b\\c\"");
    assert_null(c.apps[2]);
    assert_string_equal(c.task_default_queue, "q#1");
    assert_null(c.logfile);
    assert_true(c.result_expires == 120);
    cel_config_free(&c);

    /* Double quotes turn \n into a newline (a JSON value keeps its braces). */
    write_file("opts.env", "CELERY_BROKER_TRANSPORT_OPTIONS=\"{\\\"visibility_timeout\\\":\\n5}\"\n"
                           "CELERIAC_QUEUES='a,b' # both\n");
    cel_config_defaults(&c);
    assert_int_equal(cel_config_load_envfile(&c, "opts.env", false, err, sizeof err), 0);
    assert_string_equal(c.broker_transport_options, "{\"visibility_timeout\":\n5}");
    assert_true(c.visibility_timeout == 5);
    assert_string_equal(c.queues[1], "b");
    cel_config_free(&c);
}

static void test_envfile_errors(void **state)
{
    struct {
        const char *text, *expect;
    } cases[] = {
        {"CELERY_TASK_ACKS_LATE=1\n# ok\nJUST_A_WORD\n", "bad.env:3: expected KEY=VALUE"},
        {"=value\n", "bad.env:1: expected KEY=VALUE"},
        {"\n1ABC=x\n", "bad.env:2: expected KEY=VALUE"},
        {"BAD-KEY=x\n", "bad.env:1: expected KEY=VALUE"},
        {"export\n", "bad.env:1: expected KEY=VALUE"},
        {"A=1\nCELERY_WORKER_CONCURRENCY=4x\n",
         "bad.env:2: CELERY_WORKER_CONCURRENCY: expected an integer >= 1, got '4x'"},
        {"X='unterminated\n", "bad.env:1: unterminated single-quoted value"},
        {"X=\"unterminated\n", "bad.env:1: unterminated double-quoted value"},
        {"X='a' b\n", "bad.env:1: unexpected text after the closing quote"},
        {"CELERY_BROKER_TRANSPORT_OPTIONS={nope\n", "bad.env:1: CELERY_BROKER_TRANSPORT_OPTIONS:"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file("bad.env", cases[i].text);
        cel_config c;
        char err[256] = "";
        cel_config_defaults(&c);
        assert_int_equal(cel_config_load_envfile(&c, "bad.env", false, err, sizeof err), -1);
        if (strncmp(err, cases[i].expect, strlen(cases[i].expect)) != 0)
            fail_msg("case %zu: got '%s', want '%s'", i, err, cases[i].expect);
        cel_config_free(&c);
    }

    /* Missing: fine when optional, an error otherwise. */
    cel_config c;
    char err[256] = "";
    cel_config_defaults(&c);
    assert_int_equal(cel_config_load_envfile(&c, "nope.env", true, err, sizeof err), 0);
    assert_int_equal(cel_config_load_envfile(&c, "nope.env", false, err, sizeof err), -1);
    assert_non_null(strstr(err, "nope.env: No such file"));
    cel_config_free(&c);
}

static void test_load_environ(void **state)
{
    setenv("CELERY_WORKER_CONCURRENCY", "3", 1);
    setenv("CELERIAC_POOL", "solo", 1);
    setenv("CELERY_SOMETHING_ELSE", "whatever", 1);
    setenv("NOT_OURS_TASK_ACKS_LATE", "1", 1);
    cel_config c;
    char err[256] = "";
    cel_config_defaults(&c);
    assert_int_equal(cel_config_load_environ(&c, err, sizeof err), 0);
    assert_int_equal(c.concurrency, 3);
    assert_int_equal(c.pool, CEL_POOL_SOLO);
    assert_false(c.task_acks_late);

    /* Both spellings of one field: the CELERIAC_ one wins. */
    setenv("CELERIAC_CONCURRENCY", "9", 1);
    assert_int_equal(cel_config_load_environ(&c, err, sizeof err), 0);
    assert_int_equal(c.concurrency, 9);

    setenv("CELERY_TASK_TRACK_STARTED", "perhaps", 1);
    assert_int_equal(cel_config_load_environ(&c, err, sizeof err), -1);
    assert_non_null(strstr(err, "CELERY_TASK_TRACK_STARTED: expected a boolean"));
    unsetenv("NOT_OURS_TASK_ACKS_LATE");
    cel_config_free(&c);
}

/* ------------------------------------------------------------ precedence */

static void test_precedence(void **state)
{
    write_file(".env", "CELERY_WORKER_CONCURRENCY=2\n"
                       "CELERIAC_QUEUES=from_dotenv\n"
                       "CELERY_TASK_ACKS_LATE=yes\n"
                       "CELERIAC_LOGLEVEL=debug\n");
    write_file(".env.prod", "CELERY_WORKER_CONCURRENCY=3\n"
                            "CELERIAC_LOGLEVEL=error\n");
    cel_config c;
    char err[256];

    /* defaults only */
    unlink(".env");
    assert_int_equal(RUN(&c, err, "-P", "solo"), 0);
    assert_int_equal(c.concurrency, (int)sysconf(_SC_NPROCESSORS_ONLN));
    assert_int_equal(c.loglevel, CEL_LOG_WARNING);
    cel_config_free(&c);
    write_file(".env", "CELERY_WORKER_CONCURRENCY=2\n"
                       "CELERIAC_QUEUES=from_dotenv\n"
                       "CELERY_TASK_ACKS_LATE=yes\n"
                       "CELERIAC_LOGLEVEL=debug\n");

    /* .env over defaults */
    assert_int_equal(RUN(&c, err, "-P", "solo"), 0);
    assert_int_equal(c.concurrency, 2);
    assert_string_equal(c.queues[0], "from_dotenv");
    assert_true(c.task_acks_late);
    assert_int_equal(c.loglevel, CEL_LOG_DEBUG);
    cel_config_free(&c);

    /* .env.NAME over .env */
    assert_int_equal(RUN(&c, err, "--env", "prod"), 0);
    assert_int_equal(c.concurrency, 3);
    assert_int_equal(c.loglevel, CEL_LOG_ERROR);
    assert_string_equal(c.queues[0], "from_dotenv"); /* still from .env */
    cel_config_free(&c);

    /* environment over .env.NAME */
    setenv("CELERY_WORKER_CONCURRENCY", "5", 1);
    assert_int_equal(RUN(&c, err, "--env=prod"), 0);
    assert_int_equal(c.concurrency, 5);
    assert_int_equal(c.loglevel, CEL_LOG_ERROR);
    cel_config_free(&c);

    /* command line over the environment */
    assert_int_equal(RUN(&c, err, "--env", "prod", "-c", "7", "-Q", "cli", "-l", "info"), 0);
    assert_int_equal(c.concurrency, 7);
    assert_string_equal(c.queues[0], "cli");
    assert_null(c.queues[1]);
    assert_int_equal(c.loglevel, CEL_LOG_INFO);
    cel_config_free(&c);

    /* CELERIAC_ENV picks the file too; --env wins over it. */
    unsetenv("CELERY_WORKER_CONCURRENCY");
    setenv("CELERIAC_ENV", "prod", 1);
    assert_int_equal(RUN(&c, err, "-P", "solo"), 0);
    assert_int_equal(c.concurrency, 3);
    cel_config_free(&c);
    write_file(".env.stage", "CELERY_WORKER_CONCURRENCY=11\n");
    assert_int_equal(RUN(&c, err, "--env", "stage"), 0);
    assert_int_equal(c.concurrency, 11);
    cel_config_free(&c);

    /* CELERIAC_ENV naming a missing file is fine; --env naming one is not. */
    setenv("CELERIAC_ENV", "absent", 1);
    assert_int_equal(RUN(&c, err, "-P", "solo"), 0);
    assert_int_equal(c.concurrency, 2);
    cel_config_free(&c);
    unsetenv("CELERIAC_ENV");
    assert_int_equal(RUN(&c, err, "--env", "absent"), -1);
    assert_non_null(strstr(err, ".env.absent: No such file"));
    cel_config_free(&c);
    assert_int_equal(RUN(&c, err, "--env", "a/b"), -1);
    cel_config_free(&c);
}

static void test_env_file_option(void **state)
{
    write_file(".env", "CELERY_WORKER_CONCURRENCY=2\n");
    write_file("custom.env", "CELERY_WORKER_CONCURRENCY=13\n");
    write_file("custom.env.dev", "CELERY_WORKER_PREFETCH_MULTIPLIER=1\n");
    cel_config c;
    char err[256];
    assert_int_equal(RUN(&c, err, "--env-file", "custom.env"), 0);
    assert_int_equal(c.concurrency, 13); /* .env not read */
    assert_int_equal(c.prefetch_multiplier, 4);
    cel_config_free(&c);

    assert_int_equal(RUN(&c, err, "--env-file=custom.env", "--env", "dev"), 0);
    assert_int_equal(c.concurrency, 13);
    assert_int_equal(c.prefetch_multiplier, 1);
    cel_config_free(&c);

    assert_int_equal(RUN(&c, err, "--env-file", "missing.env"), -1);
    assert_non_null(strstr(err, "missing.env: No such file"));
    cel_config_free(&c);

    /* A malformed .env stops start-up with file and line. */
    write_file(".env", "CELERY_WORKER_CONCURRENCY=2\nbroken line\n");
    assert_int_equal(RUN(&c, err, "-P", "solo"), -1);
    assert_string_equal(err, ".env:2: expected KEY=VALUE");
    cel_config_free(&c);
}

/* ------------------------------------------------------------ hostname */

static void test_expand_hostname(void **state)
{
    char host[256];
    local_host(host, sizeof host);
    const char *dot = strchr(host, '.');
    char name[256], expect[1100];
    snprintf(name, sizeof name, "%.*s", dot ? (int)(dot - host) : (int)strlen(host), host);
    const char *domain = dot ? dot + 1 : "";

    char *s = cel_expand_hostname("w1@%h");
    snprintf(expect, sizeof expect, "w1@%s", host);
    assert_string_equal(s, expect);
    free(s);

    s = cel_expand_hostname("%n-%d|%%h|%x|100%");
    snprintf(expect, sizeof expect, "%s-%s|%%h|%%x|100%%", name, domain);
    assert_string_equal(s, expect);
    free(s);

    s = cel_expand_hostname("%h%h%h%h");
    snprintf(expect, sizeof expect, "%s%s%s%s", host, host, host, host);
    assert_string_equal(s, expect);
    free(s);

    s = cel_expand_hostname("");
    assert_string_equal(s, "");
    free(s);
}

/* ------------------------------------------------------------ command line */

static void test_cli_value_forms(void **state)
{
    cel_config c;
    char err[256];
    const char *forms[][3] = {
        {"-c4", NULL}, {"-c", "4"}, {"--concurrency=4", NULL}, {"--concurrency", "4"},
    };
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        int rc = forms[i][1] ? RUN(&c, err, (char *)forms[i][0], (char *)forms[i][1])
                             : RUN(&c, err, (char *)forms[i][0]);
        assert_int_equal(rc, 0);
        assert_int_equal(c.concurrency, 4);
        cel_config_free(&c);
    }
    /* Clustered flags with an attached value. */
    assert_int_equal(RUN(&c, err, "-Ec2"), 0);
    assert_true(c.task_events);
    assert_int_equal(c.concurrency, 2);
    cel_config_free(&c);
    /* The value of --opt=value may itself contain '='. */
    assert_int_equal(RUN(&c, err, "--broker=redis://:a=b@h/1"), 0);
    assert_string_equal(c.broker_url, "redis://:a=b@h/1");
    cel_config_free(&c);
    /* An option-looking value after an option that takes one is a value. */
    assert_int_equal(RUN(&c, err, "-Q", "--env"), 0);
    assert_string_equal(c.queues[0], "--env");
    cel_config_free(&c);
}

static void test_cli_all_options(void **state)
{
    char host[256], expect[300];
    local_host(host, sizeof host);
    cel_config c;
    char err[256];
    assert_int_equal(RUN(&c, err, "-A", "tasks.so", "--app", "b,c", "--app=d", "-b",
                         "redis://broker:6380/1", "--result-backend", "redis://backend/2",
                         "-Q", "q1,q2", "-n", "w1@%h", "-l", "INFO", "-f", "/tmp/x.log", "-P",
                         "solo", "--prefetch-multiplier", "0", "-E", "--without-heartbeat",
                         "--without-gossip", "--without-mingle", "--acks-late"),
                     0);
    assert_string_equal(c.apps[0], "tasks.so");
    assert_string_equal(c.apps[1], "b");
    assert_string_equal(c.apps[2], "c");
    assert_string_equal(c.apps[3], "d");
    assert_null(c.apps[4]);
    assert_string_equal(c.broker_url, "redis://broker:6380/1");
    assert_string_equal(c.result_backend, "redis://backend/2");
    assert_string_equal(c.queues[0], "q1");
    assert_string_equal(c.queues[1], "q2");
    assert_null(c.queues[2]);
    snprintf(expect, sizeof expect, "w1@%s", host);
    assert_string_equal(c.hostname, expect);
    assert_int_equal(c.loglevel, CEL_LOG_INFO);
    assert_string_equal(c.logfile, "/tmp/x.log");
    assert_int_equal(c.pool, CEL_POOL_SOLO);
    assert_int_equal(c.prefetch_multiplier, 0);
    assert_true(c.task_events);
    assert_true(c.without_heartbeat);
    assert_true(c.without_gossip);
    assert_true(c.without_mingle);
    assert_true(c.task_acks_late);
    cel_config_free(&c);

    /* Long spellings of the short ones. */
    assert_int_equal(RUN(&c, err, "--broker", "amqp://guest:guest@r//", "--queues=x",
                         "--hostname", "plain", "--loglevel=warn", "--logfile", "-", "--pool",
                         "processes", "--task-events"),
                     0);
    assert_string_equal(c.broker_url, "amqp://guest:guest@r//");
    assert_string_equal(c.queues[0], "x");
    assert_string_equal(c.hostname, "celeriac@plain");
    assert_int_equal(c.loglevel, CEL_LOG_WARNING);
    assert_null(c.logfile);
    assert_int_equal(c.pool, CEL_POOL_PREFORK);
    assert_true(c.task_events);
    cel_config_free(&c);

    /* The first -A replaces apps from the environment; later ones add. */
    setenv("CELERIAC_APP", "from_env", 1);
    assert_int_equal(RUN(&c, err, "-P", "solo"), 0);
    assert_string_equal(c.apps[0], "from_env");
    cel_config_free(&c);
    assert_int_equal(RUN(&c, err, "-A", "x", "-A", "y"), 0);
    assert_string_equal(c.apps[0], "x");
    assert_string_equal(c.apps[1], "y");
    assert_null(c.apps[2]);
    cel_config_free(&c);

    /* --autoscale MAX[,MIN], as Celery's (MIN defaults to 0). */
    assert_int_equal(RUN(&c, err, "--autoscale", "10,3"), 0);
    assert_int_equal(c.autoscale_max, 10);
    assert_int_equal(c.autoscale_min, 3);
    cel_config_free(&c);
    assert_int_equal(RUN(&c, err, "--autoscale=5"), 0);
    assert_int_equal(c.autoscale_max, 5);
    assert_int_equal(c.autoscale_min, 0);
    cel_config_free(&c);
}

static void test_cli_errors(void **state)
{
    struct {
        const char *args[4];
        const char *expect;
    } cases[] = {
        {{"--foo"}, "unknown option: --foo"},
        {{"--foo=bar"}, "unknown option: --foo"},
        {{"-x"}, "unknown option: -x"},
        {{"-Ex"}, "unknown option: -x"},
        {{"--autoscale", "2,4"}, "--autoscale: expected MAX[,MIN] with MAX >= 1"},
        {{"--autoscale", "0"}, "--autoscale: expected MAX[,MIN] with MAX >= 1"},
        {{"--autoscale", "4,x"}, "--autoscale: expected MAX[,MIN] with MAX >= 1"},
        {{"--max-tasks-per-child", "4"}, "unknown option: --max-tasks-per-child"},
        {{"-c"}, "option -c requires a value"},
        {{"--concurrency"}, "option --concurrency requires a value"},
        {{"--acks-late=1"}, "option --acks-late does not take a value"},
        {{"extra"}, "unexpected argument: extra"},
        {{"--", "extra"}, "unexpected argument: extra"},
        {{"-c", "4x"}, "--concurrency: expected an integer >= 1, got '4x'"},
        {{"-c0"}, "--concurrency: expected an integer >= 1, got '0'"},
        {{"--prefetch-multiplier", "-1"}, "--prefetch-multiplier: expected an integer >= 0"},
        {{"--prefetch-multiplier=2.5"}, "--prefetch-multiplier: expected an integer >= 0"},
        {{"-l", "loud"}, "--loglevel: unknown log level 'loud'"},
        {{"-P", "eventlet"}, "--pool: pool 'eventlet' is not supported"},
        {{"-P", "threads"}, "--pool: pool 'threads' is not supported"},
        {{"-Q", ","}, "--queues: expected one or more queue names"},
        {{"-b", "redis://:topsecret@h:70000/0"}, "--broker: invalid port"},
        {{"-b", "rediss://:topsecret@h/0"}, "--broker: TLS to Redis is not supported"},
        {{"--result-backend", "mongodb://u:topsecret@h/"}, "--result-backend: unsupported URL"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *argv[6] = {"worker"};
        int argc = 1;
        for (size_t k = 0; k < 4 && cases[i].args[k]; k++)
            argv[argc++] = (char *)cases[i].args[k];
        argv[argc] = NULL;
        cel_config c;
        char err[256] = "";
        assert_int_equal(cel_config_from_worker_args(&c, argc, argv, err, sizeof err), -1);
        if (strncmp(err, cases[i].expect, strlen(cases[i].expect)) != 0)
            fail_msg("case %zu: got '%s', want '%s'", i, err, cases[i].expect);
        assert_null(strstr(err, "topsecret"));
        assert_null(strchr(err, '\n'));
        cel_config_free(&c);
    }

    /* Environment values are checked too, named by their variable. */
    setenv("CELERY_WORKER_PREFETCH_MULTIPLIER", "lots", 1);
    cel_config c;
    char err[256];
    assert_int_equal(RUN(&c, err, "-P", "solo"), -1);
    assert_non_null(strstr(err, "CELERY_WORKER_PREFETCH_MULTIPLIER: expected an integer >= 0"));
    cel_config_free(&c);
    /* ...unless the command line gives a valid value?  No: a bad layer is
     * reported even when a higher one would override it. */
    assert_int_equal(RUN(&c, err, "--prefetch-multiplier", "2"), -1);
    cel_config_free(&c);
}

static void test_cli_help(void **state)
{
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    int fd = open("help.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, STDOUT_FILENO);
    close(fd);

    /* --help wins even over a broken .env and other options. */
    write_file(".env", "this is not valid\n");
    cel_config c;
    char err[256];
    int rc1 = RUN(&c, err, "-c", "4", "--help");
    cel_config_free(&c);
    int rc2 = RUN(&c, err, "-h");
    cel_config_free(&c);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    assert_int_equal(rc1, 1);
    assert_int_equal(rc2, 1);

    FILE *f = fopen("help.txt", "r");
    assert_non_null(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    const char *expect[] = {"Usage: celeriac worker", "-A, --app", "-b, --broker",
                            "--result-backend", "-Q, --queues", "-c, --concurrency",
                            "-n, --hostname", "-l, --loglevel", "-f, --logfile", "-P, --pool",
                            "--prefetch-multiplier", "-E, --task-events", "--without-heartbeat",
                            "--without-gossip", "--without-mingle", "--acks-late", "--env NAME",
                            "--env-file PATH", "-h, --help"};
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
        if (!strstr(text, expect[i]))
            fail_msg("help lacks '%s'", expect[i]);
}

static void test_split_list(void **state)
{
    char **v = cel_split_list(" a ,b,, c d ,");
    assert_string_equal(v[0], "a");
    assert_string_equal(v[1], "b");
    assert_string_equal(v[2], "c d");
    assert_null(v[3]);
    cel_strv_free(v);
    v = cel_split_list("");
    assert_non_null(v);
    assert_null(v[0]);
    cel_strv_free(v);
    v = cel_split_list("a,b,c,d,e,f,g,h,i,j");
    assert_string_equal(v[9], "j");
    assert_null(v[10]);
    cel_strv_free(v);
    cel_strv_free(NULL);
}

/* ------------------------------------------------------------ log */

static void test_log_levels(void **state)
{
    cel_log_level l;
    assert_int_equal(cel_log_parse_level("debug", &l), 0);
    assert_int_equal(l, CEL_LOG_DEBUG);
    assert_int_equal(cel_log_parse_level("INFO", &l), 0);
    assert_int_equal(l, CEL_LOG_INFO);
    assert_int_equal(cel_log_parse_level("Warn", &l), 0);
    assert_int_equal(l, CEL_LOG_WARNING);
    assert_int_equal(cel_log_parse_level("warning", &l), 0);
    assert_int_equal(l, CEL_LOG_WARNING);
    assert_int_equal(cel_log_parse_level("error", &l), 0);
    assert_int_equal(l, CEL_LOG_ERROR);
    assert_int_equal(cel_log_parse_level("critical", &l), 0);
    assert_int_equal(l, CEL_LOG_CRITICAL);
    assert_int_equal(cel_log_parse_level("FATAL", &l), 0);
    assert_int_equal(l, CEL_LOG_CRITICAL);
    assert_int_equal(cel_log_parse_level("trace", &l), -1);
    assert_int_equal(cel_log_parse_level("", &l), -1);
    assert_int_equal(cel_log_parse_level(NULL, &l), -1);
    assert_int_equal(cel_log_get_level(), CEL_LOG_WARNING);
}

static void test_log_lines(void **state)
{
    assert_int_equal(cel_log_set_file("w.log"), 0);
    cel_log_set_level(CEL_LOG_INFO);
    cel_log_set_process("ForkPoolWorker-3");
    cel_debug("hidden %d", 1);
    cel_info("Task %s succeeded", "add");
    cel_log_set_process(NULL);
    char big[20000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    cel_error("%s", big);
    assert_int_equal(cel_log_set_file(NULL), 0);
    cel_log_set_level(CEL_LOG_WARNING);
    assert_int_equal(cel_log_set_file("/nonexistent-dir/x.log"), -1);

    FILE *f = fopen("w.log", "r");
    assert_non_null(f);
    char line[32768];
    assert_non_null(fgets(line, sizeof line, f));
    /* [2026-11-28 10:43:39,447: INFO/ForkPoolWorker-3] Task add succeeded */
    int y, mo, d, h, mi, s, ms, used = 0;
    assert_int_equal(sscanf(line, "[%4d-%2d-%2d %2d:%2d:%2d,%3d: %n", &y, &mo, &d, &h, &mi, &s,
                            &ms, &used),
                     7);
    assert_int_equal(used, 26);
    assert_true(line[5] == '-' && line[11] == ' ' && line[20] == ',');
    assert_string_equal(line + used, "INFO/ForkPoolWorker-3] Task add succeeded\n");

    assert_non_null(fgets(line, sizeof line, f));
    assert_non_null(strstr(line, ": ERROR/MainProcess] xxx"));
    size_t len = strlen(line);
    assert_int_equal(len, 8192);
    assert_string_equal(line + len - 4, "...\n");
    assert_null(fgets(line, sizeof line, f));
    fclose(f);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_url_redis_defaults),
        T(test_url_redis_full),
        T(test_url_redis_bad_db),
        T(test_url_bad_ports),
        T(test_url_garbage_and_schemes),
        T(test_url_unix),
        T(test_url_amqp),
        T(test_url_errors_never_show_password),
        T(test_url_redacted),
        T(test_defaults),
        T(test_set_bools_every_name_and_spelling),
        T(test_broker_use_ssl),
        T(test_set_urls),
        T(test_set_numbers),
        T(test_set_transport_options),
        T(test_set_strings_and_cli_names),
        T(test_set_unknown_names),
        T(test_envfile_syntax),
        T(test_envfile_errors),
        T(test_load_environ),
        T(test_precedence),
        T(test_env_file_option),
        T(test_expand_hostname),
        T(test_cli_value_forms),
        T(test_cli_all_options),
        T(test_cli_errors),
        T(test_cli_help),
        T(test_split_list),
        T(test_log_levels),
        T(test_log_lines),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
