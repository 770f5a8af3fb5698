/* config.h — worker settings from the command line, the environment and
 * .env files, with Celery's names.
 *
 * Precedence (highest first): command line, process environment, the
 * per-environment file `.env.<name>` (with --env NAME / CELERIAC_ENV), then
 * `.env`, then Celery's defaults.  Files are read from the current directory
 * (or --env-file PATH).
 *
 * Every Celery setting the worker honours can be given by its Celery name
 * upper-cased with the CELERY_ prefix, e.g. CELERY_TASK_ACKS_LATE=1,
 * CELERY_WORKER_PREFETCH_MULTIPLIER=8,
 * CELERY_BROKER_TRANSPORT_OPTIONS='{"visibility_timeout": 30}'.
 * CELERY_BROKER_URL and CELERY_RESULT_BACKEND are the two Celery users set
 * most; both are accepted (as is BROKER_URL-less Celery 3 naming: no).
 *
 * Errors (malformed option, URL, number, JSON) are reported through `err` and
 * make the CLI exit with 64 (EX_USAGE).  Passwords are never copied into
 * error text: use cel_url_redacted() to print a URL.
 */
#ifndef CELERIAC_CONFIG_H
#define CELERIAC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define CEL_EX_USAGE 64

typedef enum cel_url_scheme {
    CEL_URL_REDIS = 1, /* redis:// */
    CEL_URL_AMQP,      /* amqp:// (later issue) */
    CEL_URL_AMQPS,
    CEL_URL_RPC,       /* rpc:// result backend */
    CEL_URL_UNIX,      /* redis+socket:// or unix:// */
} cel_url_scheme;

/* A parsed broker/backend URL.  Strings are malloc'd and owned. */
typedef struct cel_url {
    cel_url_scheme scheme;
    char *host;     /* default "localhost" */
    int port;       /* default 6379 redis, 5672 amqp, 5671 amqps */
    char *user;     /* may be NULL (amqp: then guest/guest, as kombu) */
    char *password; /* may be NULL; never logged */
    char *path;     /* redis: db number text ("0"); amqp: vhost ("/"); unix: socket path */
    int db;         /* redis db, default 0 */
} cel_url;

/* Parses `text` into `u` (zeroed first).  Returns 0, or -1 with a one-line
 * reason in `err` (which never contains the password). */
int cel_url_parse(const char *text, cel_url *u, char *err, size_t errlen);
void cel_url_free(cel_url *u);
/* Writes the URL with the password replaced by "**" into buf. */
void cel_url_redacted(const cel_url *u, char *buf, size_t buflen);

/* TLS for the AMQP broker, from Celery's broker_use_ssl (py-amqp's keys):
 * true, or {"ca_certs", "certfile", "keyfile", "cert_reqs", "server_hostname"}.
 * As py-amqp: the server's certificate is verified (cert_reqs 2, against
 * ca_certs or the system's CAs) unless cert_reqs is 0; the host name only
 * when server_hostname is given. */
typedef struct cel_tls {
    bool on;
    char *ca_certs, *certfile, *keyfile, *server_hostname; /* may be NULL */
    int cert_reqs; /* 0 = CERT_NONE, 1 = OPTIONAL, 2 = REQUIRED (default) */
} cel_tls;

typedef enum cel_pool_kind { CEL_POOL_PREFORK = 0, CEL_POOL_SOLO } cel_pool_kind;

typedef struct cel_config {
    /* worker */
    char **apps;            /* -A/--app task module paths (NULL-terminated) */
    char *broker_url;       /* -b / CELERY_BROKER_URL; default redis://localhost:6379/0 */
    char *result_backend;   /* --result-backend / CELERY_RESULT_BACKEND; NULL = none */
    char **queues;          /* -Q a,b (NULL-terminated); default {"celery"} */
    int concurrency;        /* -c; default = online CPUs */
    int autoscale_max, autoscale_min; /* --autoscale MAX[,MIN] / CELERIAC_AUTOSCALE;
                                         max 0 = off (prefork only) */
    char *hostname;         /* -n, after %h/%n/%d expansion; default celeriac@<host> */
    int loglevel;           /* -l; cel_log_level; default WARNING as celery */
    char *logfile;          /* -f/--logfile; NULL = stderr */
    int metrics_port;       /* --metrics-port / CELERIAC_METRICS_PORT; 0 = off */
    char *metrics_bind;     /* --metrics-bind / CELERIAC_METRICS_BIND; NULL = 127.0.0.1 */
    size_t max_message_size; /* --max-message-size / CELERIAC_MAX_MESSAGE_SIZE: bytes a
                                message may take as delivered (and its body inflated);
                                default 64 MiB */
    char *uid, *gid;        /* --uid/--gid (name or number); NULL = keep (core/privs.c) */
    char *state_db;         /* --statedb / worker_state_db: revoked ids kept here; NULL = none */
    cel_pool_kind pool;     /* -P prefork|solo */
    int prefetch_multiplier;/* --prefetch-multiplier / worker_prefetch_multiplier; default 4 */
    bool task_events;       /* -E */
    bool without_heartbeat, without_gossip, without_mingle;

    /* Celery settings */
    bool task_acks_late;            /* default false; --acks-late too */
    bool task_track_started;        /* default false */
    bool task_reject_on_worker_lost; /* default false; only with acks_late */
    bool task_ignore_result;        /* default false */
    bool result_extended;           /* default false */
    double result_expires;          /* seconds; default 86400; 0 = never */
    double task_time_limit;         /* --time-limit / task_time_limit; seconds, 0 = none */
    double task_soft_time_limit;    /* --soft-time-limit / task_soft_time_limit; 0 = none */
    bool task_acks_on_failure_or_timeout; /* default true; with acks_late */
    bool worker_disable_rate_limits;      /* default false */
    bool task_store_errors_even_if_ignored; /* default false */
    double visibility_timeout;      /* broker_transport_options.visibility_timeout; default 3600 */
    char *broker_transport_options; /* raw JSON text, may be NULL */
    cel_tls broker_use_ssl;         /* broker_use_ssl; amqps:// turns it on too */
    bool broker_connection_retry;   /* default true */
    int broker_connection_max_retries; /* default 100; 0 = forever (as Celery's None) */
    char *task_default_queue;       /* default "celery" */
    double worker_restore_interval; /* seconds between visibility restore passes; default 10 */
} cel_config;

/* Fills `c` with Celery's defaults (allocating default strings). */
void cel_config_defaults(cel_config *c);
void cel_config_free(cel_config *c);

/* Applies one setting by its Celery name (lower-case, e.g.
 * "task_acks_late") or by its env spelling ("CELERY_TASK_ACKS_LATE").  Unknown
 * names are ignored and return 1; bad values return -1 with `err` set; 0 on
 * success.  Booleans accept 1/0/true/false/yes/no/on/off. */
int cel_config_set(cel_config *c, const char *name, const char *value,
                   char *err, size_t errlen);

/* Reads a .env file: KEY=VALUE lines, `#` comments, optional `export `,
 * single/double-quoted values.  Calls cel_config_set for CELERY_* keys
 * (and CELERIAC_* keys of the CLI).  A missing file is not an error when
 * `optional`.  Returns 0, or -1 with `err` ("file:line: reason"). */
int cel_config_load_envfile(cel_config *c, const char *path, bool optional,
                            char *err, size_t errlen);

/* Applies CELERY_* variables from the process environment. */
int cel_config_load_environ(cel_config *c, char *err, size_t errlen);

/* The file and environment layers, in the precedence order above: .env
 * (or env_file when not NULL: then it must exist), then <that>.NAME for NAME
 * = cli_env_name or else $CELERIAC_ENV (with cli_env_name the file must
 * exist), then the process environment.  Returns 0, or -1 with `err`.
 * Shared by `celeriac worker` and `celeriac call`. */
int cel_config_load_layers(cel_config *c, const char *env_file, const char *cli_env_name,
                           char *err, size_t errlen);

/* Parses `celeriac worker` arguments (argv[0] = "worker") over the file and
 * environment layers, in the precedence order above.  Returns 0, 1 when
 * --help was printed (exit 0), or -1 with `err` set (exit 64).
 * It starts from cel_config_defaults(c) itself (don't call that first);
 * whatever it returns, release `c` with cel_config_free().
 * --env-file PATH replaces .env, and --env NAME then reads PATH.NAME; a
 * missing .env.NAME is an error with --env, not with CELERIAC_ENV. */
int cel_config_from_worker_args(cel_config *c, int argc, char **argv,
                                char *err, size_t errlen);

/* Expands Celery's hostname placeholders: %h = full host name, %n = name part
 * (before the first dot), %d = domain part (after it), %% = %.  Returns
 * malloc'd text. */
char *cel_expand_hostname(const char *pattern);

/* Splits "a,b , c" into a NULL-terminated malloc'd array of malloc'd,
 * trimmed strings; empty items are dropped. */
char **cel_split_list(const char *s);
void cel_strv_free(char **v);

#endif
