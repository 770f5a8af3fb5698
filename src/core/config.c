/* config.c — worker settings from defaults, .env files, the environment and
 * the `celeriac worker` command line (see config.h for the contract).
 *
 * Why it looks like this:
 *  - Every source of settings funnels into one function, cel_config_set(),
 *    keyed by Celery's own setting names.  Files, the environment and
 *    options are applied in increasing precedence (defaults, .env,
 *    .env.NAME, environment, command line), each layer simply overwriting
 *    what the previous one set.  So precedence is just call order, and a
 *    value is validated the same way whichever layer it came from.
 *  - Values are validated when they are set (URLs are parsed, numbers fully
 *    parsed), so the error can name the variable or option that carried the
 *    bad value: "CELERY_WORKER_CONCURRENCY: expected an integer >= 1, got '0'".
 *  - URL errors never quote the URL or any piece of it: a password with an
 *    unescaped '/' or '@' shifts the pieces around, and any piece may then be
 *    the password.  Printing a URL goes through cel_url_redacted().
 *  - Out of memory aborts: the configuration is built once at start-up and
 *    there is nothing sensible to fall back to.
 *
 * Ownership: every char * in cel_config and cel_url is malloc'd and owned by
 * the struct; cel_config_free()/cel_url_free() release them all.
 */
#include "core/config.h"

#include "core/log.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

extern char **environ;

#define DEFAULT_BROKER_URL "redis://localhost:6379/0"
#define DEFAULT_QUEUE "celery"
#define DEFAULT_VISIBILITY_TIMEOUT 3600.0
#define NODENAME_DEFAULT "celeriac"

/* ---------------------------------------------------------------- helpers */

static void oom(void)
{
    static const char msg[] = "celeriac: out of memory\n";
    ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)r;
    abort();
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

static char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

static char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

/* Replaces *dst with a copy of v (NULL allowed), freeing the old value. */
static void replace_str(char **dst, const char *v)
{
    char *copy = v ? xstrdup(v) : NULL;
    free(*dst);
    *dst = copy;
}

static void replace_strv(char ***dst, char **v)
{
    cel_strv_free(*dst);
    *dst = v;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copies s without leading/trailing whitespace. */
static char *trimmed_copy(const char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    return xstrndup(s, n);
}

char **cel_split_list(const char *s)
{
    size_t cap = 4, n = 0;
    char **v = xmalloc(cap * sizeof *v);
    while (s && *s) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        char *raw = xstrndup(s, len);
        char *item = trimmed_copy(raw);
        free(raw);
        if (*item) {
            if (n + 1 >= cap) {
                cap *= 2;
                char **nv = realloc(v, cap * sizeof *v);
                if (!nv)
                    oom();
                v = nv;
            }
            v[n++] = item;
        } else {
            free(item);
        }
        s = comma ? comma + 1 : NULL;
    }
    v[n] = NULL;
    return v;
}

void cel_strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

static size_t strv_len(char **v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

/* Appends the items of `more` to *dst (taking ownership of `more`). */
static void strv_extend(char ***dst, char **more)
{
    size_t a = strv_len(*dst), b = strv_len(more);
    char **v = realloc(*dst, (a + b + 1) * sizeof *v);
    if (!v)
        oom();
    memcpy(v + a, more, (b + 1) * sizeof *v);
    free(more); /* only the array: the items moved to v */
    *dst = v;
}

/* Strict integer: optional surrounding whitespace, optional sign, digits,
 * nothing else.  Returns 0 or -1. */
static int parse_long(const char *s, long *out)
{
    char *t = trimmed_copy(s);
    int rc = -1;
    if (*t) {
        char *end;
        errno = 0;
        long v = strtol(t, &end, 10);
        if (errno == 0 && *end == '\0' && isdigit((unsigned char)t[strlen(t) - 1])) {
            *out = v;
            rc = 0;
        }
    }
    free(t);
    return rc;
}

static int parse_int_min(const char *s, int min, int *out)
{
    long v;
    if (parse_long(s, &v) < 0 || v < min || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

/* Strict finite non-negative number. */
static int parse_seconds(const char *s, double *out)
{
    char *t = trimmed_copy(s);
    int rc = -1;
    if (*t) {
        char *end;
        errno = 0;
        double v = strtod(t, &end);
        if (errno == 0 && *end == '\0' && isfinite(v) && v >= 0) {
            *out = v;
            rc = 0;
        }
    }
    free(t);
    return rc;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on", "y", "t"};
    static const char *const no[] = {"0", "false", "no", "off", "n", "f"};
    char *t = trimmed_copy(s);
    int rc = -1;
    for (size_t i = 0; rc < 0 && i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(t, yes[i]) == 0) {
            *out = true;
            rc = 0;
        } else if (strcasecmp(t, no[i]) == 0) {
            *out = false;
            rc = 0;
        }
    }
    free(t);
    return rc;
}

static bool is_none(const char *s)
{
    char *t = trimmed_copy(s);
    bool none = *t == '\0' || strcasecmp(t, "none") == 0 || strcasecmp(t, "null") == 0;
    free(t);
    return none;
}

/* -------------------------------------------------------------------- URLs */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string, or NULL on a malformed escape
 * or an encoded NUL. */
static char *percent_decode(const char *s, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                free(out);
                return NULL;
            }
            int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0 || (h == 0 && l == 0)) {
                free(out);
                return NULL;
            }
            out[o++] = (char)(h * 16 + l);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

void cel_url_free(cel_url *u)
{
    if (!u)
        return;
    free(u->host);
    free(u->user);
    free(u->password);
    free(u->path);
    memset(u, 0, sizeof *u);
}

/* Splits "user:password" (percent-encoded) into u->user / u->password;
 * empty parts stay NULL. */
static int parse_userinfo(const char *s, size_t n, cel_url *u, char *err, size_t errlen)
{
    const char *colon = memchr(s, ':', n);
    size_t ulen = colon ? (size_t)(colon - s) : n;
    if (ulen > 0 && !(u->user = percent_decode(s, ulen)))
        goto bad;
    if (colon) {
        size_t plen = n - ulen - 1;
        if (plen > 0 && !(u->password = percent_decode(colon + 1, plen)))
            goto bad;
    }
    return 0;
bad:
    set_err(err, errlen, "malformed %%-escape in the URL's user name or password");
    return -1;
}

static bool host_char_ok(int ch)
{
    return isalnum(ch) || ch == '-' || ch == '.' || ch == '_';
}

/* Parses "host[:port]" or "[v6addr][:port]" (s[0..n)) into u->host/u->port. */
static int parse_hostport(const char *s, size_t n, int default_port, cel_url *u, char *err,
                          size_t errlen)
{
    const char *host = s, *port = NULL;
    size_t hlen, plen = 0;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            goto bad_host;
        host = s + 1;
        hlen = (size_t)(close - host);
        for (size_t i = 0; i < hlen; i++)
            if (!isxdigit((unsigned char)host[i]) && host[i] != ':' && host[i] != '.')
                goto bad_host;
        if (hlen == 0)
            goto bad_host;
        size_t used = (size_t)(close - s) + 1;
        if (used < n) {
            if (s[used] != ':')
                goto bad_host;
            port = s + used + 1;
            plen = n - used - 1;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        hlen = colon ? (size_t)(colon - s) : n;
        if (colon) {
            port = colon + 1;
            plen = n - hlen - 1;
        }
        for (size_t i = 0; i < hlen; i++)
            if (!host_char_ok((unsigned char)host[i]))
                goto bad_host;
    }
    u->host = hlen ? xstrndup(host, hlen) : xstrdup("localhost");
    u->port = default_port;
    if (port) {
        long v = 0;
        if (plen == 0 || plen > 5)
            goto bad_port;
        for (size_t i = 0; i < plen; i++) {
            if (!isdigit((unsigned char)port[i]))
                goto bad_port;
            v = v * 10 + (port[i] - '0');
        }
        if (v < 1 || v > 65535)
            goto bad_port;
        u->port = (int)v;
    }
    return 0;
bad_host:
    set_err(err, errlen, "invalid host name in URL");
    return -1;
bad_port:
    set_err(err, errlen, "invalid port in URL (expected a number from 1 to 65535)");
    return -1;
}

static int parse_db(const char *s, size_t n, cel_url *u, char *err, size_t errlen)
{
    int db = 0;
    if (n == 0 || n > 2)
        goto bad;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)s[i]))
            goto bad;
        db = db * 10 + (s[i] - '0');
    }
    if (db > 15)
        goto bad;
    u->db = db;
    return 0;
bad:
    set_err(err, errlen, "invalid Redis database number in URL (expected 0 to 15)");
    return -1;
}

/* Sets u->db from a "db=N" or "virtual_host=N" query parameter (kombu's
 * spelling for socket URLs); other parameters are ignored. */
static int parse_query_db(const char *query, cel_url *u, char *err, size_t errlen)
{
    char *copy = xstrndup(query, strcspn(query, "#")); /* drop a fragment */
    const char *q = copy;
    int rc = 0;
    while (rc == 0 && q && *q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        if (eq) {
            size_t klen = (size_t)(eq - q);
            if ((klen == 2 && strncmp(q, "db", 2) == 0) ||
                (klen == 12 && strncmp(q, "virtual_host", 12) == 0)) {
                const char *v = eq + 1;
                size_t vlen = len - klen - 1;
                if (vlen > 0 && v[0] == '/') {
                    v++;
                    vlen--;
                }
                rc = parse_db(v, vlen, u, err, errlen);
            }
        }
        q = amp ? amp + 1 : NULL;
    }
    free(copy);
    return rc;
}

/* Splits the part after "scheme://" into authority, path (with its leading
 * '/', may be empty) and query (after '?', may be NULL).  A fragment is
 * dropped. */
static void split_rest(const char *rest, const char **auth, size_t *alen, const char **path,
                       size_t *plen, const char **query)
{
    size_t q = strcspn(rest, "?#");
    size_t a = strcspn(rest, "/?#");
    *auth = rest;
    *alen = a;
    *path = rest + a;
    *plen = q - a;
    *query = rest[q] == '?' ? rest + q + 1 : NULL;
}

/* Parses "[userinfo@]host[:port]" into u. */
static int parse_authority(const char *s, size_t n, int default_port, cel_url *u, char *err,
                           size_t errlen)
{
    const char *at = NULL;
    for (size_t i = 0; i < n; i++) /* the last '@', like Python's urlparse */
        if (s[i] == '@')
            at = s + i;
    if (at) {
        if (parse_userinfo(s, (size_t)(at - s), u, err, errlen) < 0)
            return -1;
        n -= (size_t)(at - s) + 1;
        s = at + 1;
    }
    return parse_hostport(s, n, default_port, u, err, errlen);
}

static int parse_redis(const char *rest, cel_url *u, char *err, size_t errlen)
{
    const char *auth, *path, *query;
    size_t alen, plen;
    split_rest(rest, &auth, &alen, &path, &plen, &query);
    u->scheme = CEL_URL_REDIS;
    if (parse_authority(auth, alen, 6379, u, err, errlen) < 0)
        return -1;
    if (plen > 1 && parse_db(path + 1, plen - 1, u, err, errlen) < 0)
        return -1;
    if (plen <= 1 && query && parse_query_db(query, u, err, errlen) < 0)
        return -1;
    char db[8];
    snprintf(db, sizeof db, "%d", u->db);
    u->path = xstrdup(db);
    return 0;
}

static int parse_amqp(const char *rest, cel_url_scheme scheme, cel_url *u, char *err,
                      size_t errlen)
{
    const char *auth, *path, *query;
    size_t alen, plen;
    split_rest(rest, &auth, &alen, &path, &plen, &query);
    u->scheme = scheme;
    if (parse_authority(auth, alen, scheme == CEL_URL_AMQPS ? 5671 : 5672, u, err, errlen) < 0)
        return -1;
    /* "/vhost": the vhost is everything after the first '/', so "//" is
     * "/" and "/%2F" is "/" too; empty means the default "/". */
    if (plen > 1) {
        u->path = percent_decode(path + 1, plen - 1);
        if (!u->path) {
            set_err(err, errlen, "malformed %%-escape in the URL's virtual host");
            return -1;
        }
    } else {
        u->path = xstrdup("/");
    }
    return 0;
}

static int parse_unix(const char *rest, cel_url *u, char *err, size_t errlen)
{
    u->scheme = CEL_URL_UNIX;
    /* Optional credentials before the path: "redis+socket://:pw@/tmp/r.sock". */
    if (rest[0] != '/') {
        size_t alen = strcspn(rest, "/?#");
        const char *at = NULL;
        for (size_t i = 0; i < alen; i++)
            if (rest[i] == '@')
                at = rest + i;
        if (!at) {
            set_err(err, errlen, "socket URL needs an absolute path, e.g. unix:///run/redis.sock");
            return -1;
        }
        if (at + 1 != rest + alen && !(alen - (size_t)(at + 1 - rest) == 9 &&
                                       strncmp(at + 1, "localhost", 9) == 0)) {
            set_err(err, errlen, "socket URL must not name a host, e.g. unix:///run/redis.sock");
            return -1;
        }
        if (parse_userinfo(rest, (size_t)(at - rest), u, err, errlen) < 0)
            return -1;
        rest += alen;
    }
    size_t plen = strcspn(rest, "?#");
    if (plen < 2 || rest[0] != '/') {
        set_err(err, errlen, "socket URL needs an absolute path, e.g. unix:///run/redis.sock");
        return -1;
    }
    u->path = xstrndup(rest, plen);
    if (rest[plen] == '?' && parse_query_db(rest + plen + 1, u, err, errlen) < 0)
        return -1;
    return 0;
}

int cel_url_parse(const char *text, cel_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    if (!text || !*text) {
        set_err(err, errlen, "empty URL");
        return -1;
    }
    const char *sep = strstr(text, "://");
    size_t slen = sep ? (size_t)(sep - text) : 0;
    bool scheme_ok = sep && slen > 0 && slen < 32;
    for (size_t i = 0; scheme_ok && i < slen; i++)
        scheme_ok = isalnum((unsigned char)text[i]) || strchr("+.-", text[i]);
    if (!scheme_ok) {
        set_err(err, errlen, "URL has no scheme (expected e.g. redis://localhost:6379/0)");
        return -1;
    }
    char scheme[32];
    for (size_t i = 0; i < slen; i++)
        scheme[i] = (char)tolower((unsigned char)text[i]);
    scheme[slen] = '\0';
    const char *rest = sep + 3;

    int rc;
    if (strcmp(scheme, "redis") == 0) {
        rc = parse_redis(rest, u, err, errlen);
    } else if (strcmp(scheme, "rediss") == 0) {
        set_err(err, errlen,
                "TLS to Redis is not supported by Debian 12's hiredis; use a TLS tunnel "
                "(e.g. stunnel) and a redis:// URL");
        rc = -1;
    } else if (strcmp(scheme, "redis+socket") == 0 || strcmp(scheme, "unix") == 0) {
        rc = parse_unix(rest, u, err, errlen);
    } else if (strcmp(scheme, "amqp") == 0 || strcmp(scheme, "pyamqp") == 0) {
        rc = parse_amqp(rest, CEL_URL_AMQP, u, err, errlen);
    } else if (strcmp(scheme, "amqps") == 0) {
        rc = parse_amqp(rest, CEL_URL_AMQPS, u, err, errlen);
    } else if (strcmp(scheme, "rpc") == 0) {
        u->scheme = CEL_URL_RPC;
        rc = 0;
    } else {
        set_err(err, errlen,
                "unsupported URL scheme '%s' (expected redis, redis+socket, unix, amqp, "
                "amqps or rpc)",
                scheme);
        rc = -1;
    }
    if (rc < 0)
        cel_url_free(u);
    return rc;
}

void cel_url_redacted(const cel_url *u, char *buf, size_t buflen)
{
    if (!buf || buflen == 0)
        return;
    char cred[512] = "";
    if (u->user || u->password)
        snprintf(cred, sizeof cred, "%s%s@", u->user ? u->user : "", u->password ? ":**" : "");
    const char *host = u->host ? u->host : "localhost";
    bool v6 = strchr(host, ':') != NULL;
    switch (u->scheme) {
    case CEL_URL_REDIS:
        snprintf(buf, buflen, "redis://%s%s%s%s:%d/%d", cred, v6 ? "[" : "", host, v6 ? "]" : "",
                 u->port, u->db);
        break;
    case CEL_URL_AMQP:
    case CEL_URL_AMQPS:
        snprintf(buf, buflen, "%s://%s%s%s%s:%d/%s", u->scheme == CEL_URL_AMQP ? "amqp" : "amqps",
                 cred, v6 ? "[" : "", host, v6 ? "]" : "", u->port, u->path ? u->path : "/");
        break;
    case CEL_URL_UNIX:
        if (u->db)
            snprintf(buf, buflen, "redis+socket://%s%s?virtual_host=%d", cred,
                     u->path ? u->path : "", u->db);
        else
            snprintf(buf, buflen, "redis+socket://%s%s", cred, u->path ? u->path : "");
        break;
    case CEL_URL_RPC:
        snprintf(buf, buflen, "rpc://");
        break;
    default:
        snprintf(buf, buflen, "(invalid URL)");
        break;
    }
}

/* ---------------------------------------------------------------- hostname */

static void local_hostname(char *buf, size_t len)
{
    if (gethostname(buf, len) != 0 || !buf[0])
        snprintf(buf, len, "localhost");
    buf[len - 1] = '\0';
}

char *cel_expand_hostname(const char *pattern)
{
    char host[256];
    local_hostname(host, sizeof host);
    const char *dot = strchr(host, '.');
    size_t name_len = dot ? (size_t)(dot - host) : strlen(host);
    const char *domain = dot ? dot + 1 : "";

    size_t cap = strlen(pattern) + 1, n = 0;
    for (const char *p = pattern; *p; p++) /* upper bound: each %x -> host */
        if (*p == '%')
            cap += strlen(host);
    char *out = xmalloc(cap);
    for (const char *p = pattern; *p; p++) {
        if (p[0] == '%' && p[1]) {
            const char *sub = NULL;
            size_t sublen = 0;
            switch (p[1]) {
            case 'h': sub = host; sublen = strlen(host); break;
            case 'n': sub = host; sublen = name_len; break;
            case 'd': sub = domain; sublen = strlen(domain); break;
            case '%': sub = "%"; sublen = 1; break;
            default: break; /* e.g. %i/%I (pool index): left for later */
            }
            if (sub) {
                memcpy(out + n, sub, sublen);
                n += sublen;
                p++;
                continue;
            }
        }
        out[n++] = *p;
    }
    out[n] = '\0';
    return out;
}

/* Celery's default_nodename(): expand placeholders and, when no "name@"
 * is given, prefix the default node name ("foo" -> "celeriac@foo"). */
static char *node_name(const char *pattern)
{
    char *expanded = cel_expand_hostname(pattern);
    if (strchr(expanded, '@'))
        return expanded;
    size_t n = strlen(NODENAME_DEFAULT) + 1 + strlen(expanded) + 1;
    char *full = xmalloc(n);
    snprintf(full, n, "%s@%s", NODENAME_DEFAULT, expanded);
    free(expanded);
    return full;
}

/* ---------------------------------------------------------------- defaults */

void cel_config_defaults(cel_config *c)
{
    memset(c, 0, sizeof *c);
    c->apps = cel_split_list("");
    c->broker_url = xstrdup(DEFAULT_BROKER_URL);
    c->result_backend = NULL;
    c->queues = cel_split_list(DEFAULT_QUEUE);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    c->concurrency = cpus > 0 && cpus < INT_MAX ? (int)cpus : 1;
    char host[256];
    local_hostname(host, sizeof host);
    size_t n = strlen(NODENAME_DEFAULT) + 1 + strlen(host) + 1;
    c->hostname = xmalloc(n);
    snprintf(c->hostname, n, "%s@%s", NODENAME_DEFAULT, host);
    c->loglevel = CEL_LOG_WARNING;
    c->logfile = NULL;
    c->pool = CEL_POOL_PREFORK;
    c->prefetch_multiplier = 4;
    c->max_message_size = (size_t)64 << 20;
    c->task_events = false;
    c->without_heartbeat = c->without_gossip = c->without_mingle = false;
    c->task_acks_late = false;
    c->task_track_started = false;
    c->task_reject_on_worker_lost = false;
    c->task_acks_on_failure_or_timeout = true;
    c->task_ignore_result = false;
    c->result_extended = false;
    c->result_expires = 86400;
    c->visibility_timeout = DEFAULT_VISIBILITY_TIMEOUT;
    c->broker_transport_options = NULL;
    c->broker_use_ssl = (cel_tls){.cert_reqs = 2};
    c->broker_connection_retry = true;
    c->broker_connection_max_retries = 100;
    c->task_default_queue = xstrdup(DEFAULT_QUEUE);
    c->worker_restore_interval = 10;
}

static void tls_free(cel_tls *t)
{
    free(t->ca_certs);
    free(t->certfile);
    free(t->keyfile);
    free(t->server_hostname);
    *t = (cel_tls){.cert_reqs = 2};
}

void cel_config_free(cel_config *c)
{
    if (!c)
        return;
    cel_strv_free(c->apps);
    free(c->broker_url);
    free(c->result_backend);
    cel_strv_free(c->queues);
    free(c->hostname);
    free(c->logfile);
    free(c->state_db);
    free(c->metrics_bind);
    free(c->uid);
    free(c->gid);
    free(c->broker_transport_options);
    tls_free(&c->broker_use_ssl);
    free(c->task_default_queue);
    memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------- setters */

/* Each setter validates `value` and stores it; on error it writes
 * "<name>: <reason>" (`name` as the caller spelled it). */
typedef int (*setter_fn)(cel_config *c, const char *name, const char *value, char *err,
                         size_t errlen);

static int check_url(const char *name, const char *value, char *err, size_t errlen)
{
    cel_url u;
    char why[256];
    if (cel_url_parse(value, &u, why, sizeof why) < 0) {
        set_err(err, errlen, "%s: %s", name, why);
        return -1;
    }
    cel_url_free(&u);
    return 0;
}

static int set_broker_url(cel_config *c, const char *name, const char *value, char *err,
                          size_t errlen)
{
    char *url = trimmed_copy(value);
    if (!*url) { /* "VAR=" in a .env template: back to the default */
        free(url);
        url = xstrdup(DEFAULT_BROKER_URL);
    }
    if (check_url(name, url, err, errlen) < 0) {
        free(url);
        return -1;
    }
    free(c->broker_url);
    c->broker_url = url;
    return 0;
}

static int set_result_backend(cel_config *c, const char *name, const char *value, char *err,
                              size_t errlen)
{
    char *url = trimmed_copy(value);
    if (!*url || strcasecmp(url, "none") == 0 || strcasecmp(url, "disabled") == 0) {
        free(url);
        url = NULL; /* no result backend */
    } else if (check_url(name, url, err, errlen) < 0) {
        free(url);
        return -1;
    }
    free(c->result_backend);
    c->result_backend = url;
    return 0;
}

static int set_bool_field(bool *field, const char *name, const char *value, char *err,
                          size_t errlen)
{
    if (parse_bool(value, field) < 0) {
        set_err(err, errlen, "%s: expected a boolean (1/0, true/false, yes/no, on/off), got '%s'",
                name, value);
        return -1;
    }
    return 0;
}

#define BOOL_SETTER(fn, field)                                                              \
    static int fn(cel_config *c, const char *name, const char *value, char *err,            \
                  size_t errlen)                                                            \
    {                                                                                       \
        return set_bool_field(&c->field, name, value, err, errlen);                         \
    }
BOOL_SETTER(set_task_acks_late, task_acks_late)
BOOL_SETTER(set_task_track_started, task_track_started)
BOOL_SETTER(set_task_reject_on_worker_lost, task_reject_on_worker_lost)
BOOL_SETTER(set_task_acks_on_failure_or_timeout, task_acks_on_failure_or_timeout)
BOOL_SETTER(set_worker_disable_rate_limits, worker_disable_rate_limits)
BOOL_SETTER(set_task_store_errors_even_if_ignored, task_store_errors_even_if_ignored)
BOOL_SETTER(set_task_ignore_result, task_ignore_result)
BOOL_SETTER(set_result_extended, result_extended)
BOOL_SETTER(set_broker_connection_retry, broker_connection_retry)
BOOL_SETTER(set_task_events, task_events)
#undef BOOL_SETTER

static int set_result_expires(cel_config *c, const char *name, const char *value, char *err,
                              size_t errlen)
{
    if (is_none(value)) {
        c->result_expires = 0; /* Celery's None: never expire */
        return 0;
    }
    if (parse_seconds(value, &c->result_expires) < 0) {
        set_err(err, errlen, "%s: expected a number of seconds >= 0, got '%s'", name, value);
        return -1;
    }
    return 0;
}

/* A time limit: seconds > 0, or None/0 for none. */
static int set_limit(double *field, const char *name, const char *value, char *err,
                     size_t errlen)
{
    if (is_none(value)) {
        *field = 0;
        return 0;
    }
    if (parse_seconds(value, field) < 0) {
        set_err(err, errlen, "%s: expected a number of seconds >= 0, got '%s'", name, value);
        return -1;
    }
    return 0;
}

static int set_task_time_limit(cel_config *c, const char *name, const char *value, char *err,
                               size_t errlen)
{
    return set_limit(&c->task_time_limit, name, value, err, errlen);
}

static int set_task_soft_time_limit(cel_config *c, const char *name, const char *value,
                                    char *err, size_t errlen)
{
    return set_limit(&c->task_soft_time_limit, name, value, err, errlen);
}

static int set_prefetch_multiplier(cel_config *c, const char *name, const char *value,
                                   char *err, size_t errlen)
{
    if (parse_int_min(value, 0, &c->prefetch_multiplier) < 0) {
        set_err(err, errlen, "%s: expected an integer >= 0, got '%s'", name, value);
        return -1;
    }
    return 0;
}

static int set_concurrency(cel_config *c, const char *name, const char *value, char *err,
                           size_t errlen)
{
    if (parse_int_min(value, 1, &c->concurrency) < 0) {
        set_err(err, errlen, "%s: expected an integer >= 1, got '%s'", name, value);
        return -1;
    }
    return 0;
}

/* Celery's --autoscale "MAX,MIN" (MIN optional, default 0; "" = off). */
static int set_autoscale(cel_config *c, const char *name, const char *value, char *err,
                         size_t errlen)
{
    char *t = trimmed_copy(value);
    char *comma = strchr(t, ',');
    if (comma)
        *comma = '\0';
    int max = 0, min = 0, rc = 0;
    if (!*t && !comma) {
        c->autoscale_max = c->autoscale_min = 0;
    } else if (parse_int_min(t, 1, &max) < 0 ||
               (comma && comma[1] && parse_int_min(comma + 1, 0, &min) < 0) || min > max) {
        set_err(err, errlen, "%s: expected MAX[,MIN] with MAX >= 1 and 0 <= MIN <= MAX, got '%s'",
                name, value);
        rc = -1;
    } else {
        c->autoscale_max = max;
        c->autoscale_min = min;
    }
    free(t);
    return rc;
}

/* kombu 5.2.4's Redis channel options that decide where messages, unacked
 * records and broadcasts live (kombu/transport/redis.py): a producer set up
 * with another value writes where this worker never looks, so any value but
 * kombu's default is refused rather than ignored.  Values are JSON. */
static const struct {
    const char *key, *kombu_default;
} wire_transport_options[] = {
    {"sep", "\"\\u0006\\u0016\""},
    {"ack_emulation", "true"},
    {"unacked_key", "\"unacked\""},
    {"unacked_index_key", "\"unacked_index\""},
    {"unacked_mutex_key", "\"unacked_mutex\""},
    {"fanout_prefix", "true"},
    {"fanout_patterns", "true"},
    {"global_keyprefix", "\"\""},
    {"priority_steps", "[0, 3, 6, 9]"},
};

/* Options of kombu's transports and of Celery's publisher that tune
 * connections, pools or retries: accepted for a shared configuration's
 * sake, with no effect here (celeriac has its own connection handling). */
static const char *const inert_transport_options[] = {
    "body_encoding", "deadletter_queue", "unacked_mutex_expire", "unacked_restore_limit",
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "max_connections", "health_check_interval", "retry_on_timeout", "polling_interval",
    "max_retries", "interval_start", "interval_step", "interval_max", "confirm_publish",
    "client_properties", "retry_policy", "connect_timeout", "read_timeout", "write_timeout",
    "login_method", "master_name", "sentinel_kwargs", NULL,
};

/* Checks each key of a broker_transport_options object: -1 with err for a
 * wire option set to anything but kombu's default; a warning for options
 * with no effect here and for unknown keys (a typo must not pass silently). */
static int check_transport_options(json_t *obj, const char *name, char *err, size_t errlen)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        if (!strcmp(key, "visibility_timeout"))
            continue;
        int known = 0;
        for (size_t i = 0; i < sizeof wire_transport_options / sizeof wire_transport_options[0];
             i++) {
            if (strcmp(key, wire_transport_options[i].key) != 0)
                continue;
            known = 1;
            json_t *def = json_loads(wire_transport_options[i].kombu_default, JSON_DECODE_ANY,
                                     NULL);
            int same = def && json_equal(def, v);
            json_decref(def);
            if (!same) {
                set_err(err, errlen,
                        "%s: %s other than kombu's default (%s) is not supported: producers "
                        "using it write keys this worker does not read",
                        name, key, wire_transport_options[i].kombu_default);
                return -1;
            }
        }
        if (known)
            continue;
        if (!strcmp(key, "queue_order_strategy")) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "round_robin") != 0)
                cel_warn("%s: queue_order_strategy: only kombu's default, round_robin, is "
                         "implemented; queues are consumed round robin",
                         name);
            continue;
        }
        for (size_t i = 0; inert_transport_options[i]; i++)
            if (!strcmp(key, inert_transport_options[i]))
                known = 1;
        if (known)
            cel_warn("%s: %s has no effect in celeriac; ignored", name, key);
        else
            cel_warn("%s: %s is not a transport option celeriac or kombu knows; ignored", name,
                     key);
    }
    return 0;
}

static int set_transport_options(cel_config *c, const char *name, const char *value, char *err,
                                 size_t errlen)
{
    char *text = trimmed_copy(value);
    if (!*text) { /* empty: no options */
        free(text);
        replace_str(&c->broker_transport_options, NULL);
        c->visibility_timeout = DEFAULT_VISIBILITY_TIMEOUT;
        return 0;
    }
    json_error_t jerr;
    json_t *obj = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj) {
        /* Only the position: the text may hold a sentinel password. */
        set_err(err, errlen, "%s: not valid JSON (line %d, column %d)", name, jerr.line,
                jerr.column);
        free(text);
        return -1;
    }
    int rc = 0;
    double vt = DEFAULT_VISIBILITY_TIMEOUT; /* a new dict replaces the old */
    json_t *jvt = json_is_object(obj) ? json_object_get(obj, "visibility_timeout") : NULL;
    if (!json_is_object(obj)) {
        set_err(err, errlen, "%s: must be a JSON object, e.g. {\"visibility_timeout\": 3600}",
                name);
        rc = -1;
    } else if (jvt && !json_is_null(jvt) &&
               (!json_is_number(jvt) || json_number_value(jvt) <= 0)) {
        set_err(err, errlen, "%s: visibility_timeout must be a number of seconds > 0", name);
        rc = -1;
    } else {
        if (jvt && !json_is_null(jvt))
            vt = json_number_value(jvt);
        rc = check_transport_options(obj, name, err, errlen);
    }
    json_decref(obj);
    if (rc == 0) {
        free(c->broker_transport_options);
        c->broker_transport_options = text;
        c->visibility_timeout = vt;
    } else {
        free(text);
    }
    return rc;
}

static int set_max_retries(cel_config *c, const char *name, const char *value, char *err,
                           size_t errlen)
{
    if (is_none(value)) {
        c->broker_connection_max_retries = 0; /* forever */
        return 0;
    }
    if (parse_int_min(value, 0, &c->broker_connection_max_retries) < 0) {
        set_err(err, errlen, "%s: expected an integer >= 0 or None, got '%s'", name, value);
        return -1;
    }
    return 0;
}

/* Queue names: a non-empty name without whitespace or commas. */
static int set_default_queue(cel_config *c, const char *name, const char *value, char *err,
                             size_t errlen)
{
    char *q = trimmed_copy(value);
    if (!*q || strchr(q, ',') || strpbrk(q, " \t\r\n")) {
        set_err(err, errlen, "%s: expected a queue name, got '%s'", name, value);
        free(q);
        return -1;
    }
    /* Celery consumes from task_default_queue when no queues are named; a
     * queue list that is exactly the old default follows the new one. */
    if (strv_len(c->queues) == 1 && strcmp(c->queues[0], c->task_default_queue) == 0)
        replace_strv(&c->queues, cel_split_list(q));
    free(c->task_default_queue);
    c->task_default_queue = q;
    return 0;
}

static int set_hostname(cel_config *c, const char *name, const char *value, char *err,
                        size_t errlen)
{
    char *t = trimmed_copy(value);
    if (!*t) {
        free(t);
        set_err(err, errlen, "%s: expected a node name, e.g. worker1@%%h", name);
        return -1;
    }
    free(c->hostname);
    c->hostname = node_name(t);
    free(t);
    return 0;
}

static int set_apps(cel_config *c, const char *name, const char *value, char *err,
                    size_t errlen)
{
    replace_strv(&c->apps, cel_split_list(value));
    return 0;
}

static int set_queues(cel_config *c, const char *name, const char *value, char *err,
                      size_t errlen)
{
    char **v = cel_split_list(value);
    if (!v[0]) {
        cel_strv_free(v);
        set_err(err, errlen, "%s: expected one or more queue names, e.g. celery,images", name);
        return -1;
    }
    replace_strv(&c->queues, v);
    return 0;
}

static int set_loglevel(cel_config *c, const char *name, const char *value, char *err,
                        size_t errlen)
{
    char *t = trimmed_copy(value);
    cel_log_level lvl;
    int rc = cel_log_parse_level(t, &lvl);
    free(t);
    if (rc < 0) {
        set_err(err, errlen,
                "%s: unknown log level '%s' (expected DEBUG, INFO, WARNING, ERROR, CRITICAL or "
                "FATAL)",
                name, value);
        return -1;
    }
    c->loglevel = (int)lvl;
    return 0;
}

static int set_pool(cel_config *c, const char *name, const char *value, char *err,
                    size_t errlen)
{
    char *t = trimmed_copy(value);
    int rc = 0;
    if (strcasecmp(t, "prefork") == 0 || strcasecmp(t, "processes") == 0) {
        c->pool = CEL_POOL_PREFORK;
    } else if (strcasecmp(t, "solo") == 0) {
        c->pool = CEL_POOL_SOLO;
    } else {
        set_err(err, errlen, "%s: pool '%s' is not supported (expected prefork or solo)", name,
                value);
        rc = -1;
    }
    free(t);
    return rc;
}

static int set_metrics_port(cel_config *c, const char *name, const char *value, char *err,
                            size_t errlen)
{
    if (parse_int_min(value, 0, &c->metrics_port) < 0 || c->metrics_port > 65535) {
        set_err(err, errlen, "%s: expected a TCP port (0 = off), got '%s'", name, value);
        return -1;
    }
    return 0;
}

static int set_metrics_bind(cel_config *c, const char *name, const char *value, char *err,
                            size_t errlen)
{
    char *t = trimmed_copy(value);
    free(c->metrics_bind);
    c->metrics_bind = t && *t ? t : (free(t), NULL);
    return 0;
}

/* --uid/--gid: kept as text (a name or a number); src/core/privs.c resolves
 * them when it drops privileges, so a typo is reported there. */
static int set_uid_text(char **slot, const char *name, const char *value, char *err,
                        size_t errlen)
{
    char *t = trimmed_copy(value);
    if (!t || !*t) {
        free(t);
        set_err(err, errlen, "%s: expected a user or group name or number", name);
        return -1;
    }
    free(*slot);
    *slot = t;
    return 0;
}

static int set_uid(cel_config *c, const char *name, const char *value, char *err, size_t errlen)
{
    return set_uid_text(&c->uid, name, value, err, errlen);
}

static int set_gid(cel_config *c, const char *name, const char *value, char *err, size_t errlen)
{
    return set_uid_text(&c->gid, name, value, err, errlen);
}

static int set_state_db(cel_config *c, const char *name, const char *value, char *err,
                        size_t errlen)
{
    char *t = trimmed_copy(value);
    if (t && (!*t || is_none(t))) {
        free(t);
        t = NULL;
    }
    free(c->state_db);
    c->state_db = t;
    return 0;
}

static int set_logfile(cel_config *c, const char *name, const char *value, char *err,
                       size_t errlen)
{
    char *t = trimmed_copy(value);
    if (!*t || strcmp(t, "-") == 0) {
        free(t);
        t = NULL; /* stderr */
    }
    free(c->logfile);
    c->logfile = t;
    return 0;
}

/* broker_use_ssl: a boolean, or a JSON object of py-amqp's ssl options. */
static int set_use_ssl(cel_config *c, const char *name, const char *value, char *err,
                       size_t errlen)
{
    bool b;
    if (parse_bool(value, &b) == 0) {
        tls_free(&c->broker_use_ssl);
        c->broker_use_ssl.on = b;
        return 0;
    }
    json_error_t jerr;
    json_t *obj = json_loads(value, JSON_REJECT_DUPLICATES, &jerr);
    cel_tls t = {.on = true, .cert_reqs = 2};
    static const char *const keys[] = {"ca_certs", "certfile", "keyfile", "server_hostname"};
    char **dst[] = {&t.ca_certs, &t.certfile, &t.keyfile, &t.server_hostname};
    int rc = json_is_object(obj) ? 0 : -1;
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        size_t i = 0;
        while (i < 4 && strcmp(k, keys[i]) != 0)
            i++;
        if (i < 4 && json_is_string(v)) {
            free(*dst[i]);
            *dst[i] = xstrdup(json_string_value(v));
        } else if (strcmp(k, "cert_reqs") == 0 && json_is_integer(v) &&
                   json_integer_value(v) >= 0 && json_integer_value(v) <= 2) {
            t.cert_reqs = (int)json_integer_value(v);
        } else if (!json_is_null(v)) {
            set_err(err, errlen, "%s: unsupported key or value '%s' (keys: ca_certs, certfile, "
                    "keyfile, cert_reqs 0-2, server_hostname)", name, k);
            rc = -2;
            break;
        }
    }
    json_decref(obj);
    if (rc == -1)
        set_err(err, errlen, "%s: expected true/false or a JSON object of ssl options", name);
    if (rc < 0) {
        tls_free(&t);
        return -1;
    }
    tls_free(&c->broker_use_ssl);
    c->broker_use_ssl = t;
    return 0;
}

/* --max-message-size: bytes, with an optional K/KB/KiB, M/MB/MiB or G/GB/GiB
 * suffix (all binary: 64MB = 64 MiB, as the default is written); at least
 * 1 KiB so a worker cannot be configured to refuse every task. */
static int set_max_message_size(cel_config *c, const char *name, const char *value, char *err,
                                size_t errlen)
{
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(value, &end, 10);
    bool ok = end != value && errno == 0 && value[0] != '-';
    while (ok && *end == ' ')
        end++;
    unsigned shift = 0;
    if (ok && *end) {
        char u = (char)toupper((unsigned char)*end);
        shift = u == 'K' ? 10 : u == 'M' ? 20 : u == 'G' ? 30 : 0;
        const char *rest = end + 1;
        ok = shift && (!*rest || !strcasecmp(rest, "B") || !strcasecmp(rest, "iB"));
    }
    if (ok && n > (SIZE_MAX >> 1) >> shift)
        ok = false;
    if (ok)
        n <<= shift;
    if (!ok || n < 1024) {
        set_err(err, errlen, "%s: expected a size in bytes >= 1024 (suffixes K, M, G), got '%s'",
                name, value);
        return -1;
    }
    c->max_message_size = (size_t)n;
    return 0;
}

/* accept_content: celeriac decodes JSON only, so the list is checked, not
 * kept: it must name JSON (as "json" or "application/json") and nothing
 * else.  Naming pickle, yaml or msgpack is a configuration error rather than
 * a silent narrowing: an operator who enabled pickle for Python workers
 * should learn at start-up that this worker will refuse those messages.
 * Accepts Celery's JSON list form ('["json"]') or a comma-separated list. */
static int set_accept_content(cel_config *c, const char *name, const char *value, char *err,
                              size_t errlen)
{
    (void)c;
    json_t *list = json_loads(value, 0, NULL);
    char **items = NULL;
    if (json_is_array(list)) {
        items = xmalloc((json_array_size(list) + 1) * sizeof *items);
        items[json_array_size(list)] = NULL;
        for (size_t i = 0; i < json_array_size(list); i++) {
            const char *s = json_string_value(json_array_get(list, i));
            items[i] = xstrdup(s ? s : "");
        }
    } else if (!list) {
        items = cel_split_list(value);
    }
    json_decref(list);
    int rc = 0;
    bool json_named = false;
    for (size_t i = 0; items && items[i]; i++) {
        if (!strcmp(items[i], "json") || !strcmp(items[i], "application/json")) {
            json_named = true;
            continue;
        }
        set_err(err, errlen,
                "%s: '%s' cannot be accepted: celeriac decodes JSON only "
                "(use json or application/json)",
                name, items[i]);
        rc = -1;
        break;
    }
    if (rc == 0 && !json_named) {
        set_err(err, errlen, "%s: expected a list naming json, got '%s'", name, value);
        rc = -1;
    }
    cel_strv_free(items);
    return rc;
}

/* Celery setting names (lower case); CELERY_<NAME> in the environment. */
static const struct {
    const char *name;
    setter_fn set;
} celery_settings[] = {
    {"broker_url", set_broker_url},
    {"result_backend", set_result_backend},
    {"task_acks_late", set_task_acks_late},
    {"task_track_started", set_task_track_started},
    {"task_reject_on_worker_lost", set_task_reject_on_worker_lost},
    {"task_acks_on_failure_or_timeout", set_task_acks_on_failure_or_timeout},
    {"worker_disable_rate_limits", set_worker_disable_rate_limits},
    {"worker_state_db", set_state_db},
    {"task_store_errors_even_if_ignored", set_task_store_errors_even_if_ignored},
    {"task_time_limit", set_task_time_limit},
    {"task_soft_time_limit", set_task_soft_time_limit},
    {"task_ignore_result", set_task_ignore_result},
    {"result_extended", set_result_extended},
    {"result_expires", set_result_expires},
    {"worker_prefetch_multiplier", set_prefetch_multiplier},
    {"worker_concurrency", set_concurrency},
    {"broker_transport_options", set_transport_options},
    {"broker_use_ssl", set_use_ssl},
    {"broker_connection_retry", set_broker_connection_retry},
    {"broker_connection_max_retries", set_max_retries},
    {"task_default_queue", set_default_queue},
    {"worker_hostname", set_hostname},
    {"worker_pool", set_pool},
    {"worker_send_task_events", set_task_events},
    {"accept_content", set_accept_content},
};

/* Settings of the celeriac CLI that Celery only has as options. */
static const struct {
    const char *name;
    setter_fn set;
} celeriac_settings[] = {
    {"CELERIAC_APP", set_apps},           {"CELERIAC_QUEUES", set_queues},
    {"CELERIAC_CONCURRENCY", set_concurrency}, {"CELERIAC_HOSTNAME", set_hostname},
    {"CELERIAC_LOGLEVEL", set_loglevel},  {"CELERIAC_POOL", set_pool},
    {"CELERIAC_LOGFILE", set_logfile},
    {"CELERIAC_METRICS_PORT", set_metrics_port},
    {"CELERIAC_METRICS_BIND", set_metrics_bind},
    {"CELERIAC_UID", set_uid},            {"CELERIAC_GID", set_gid},
    {"CELERIAC_MAX_MESSAGE_SIZE", set_max_message_size},
    {"CELERIAC_AUTOSCALE", set_autoscale},
};

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

int cel_config_set(cel_config *c, const char *name, const char *value, char *err,
                   size_t errlen)
{
    if (!name || !value)
        return 1;
    if (has_prefix(name, "CELERIAC_")) {
        for (size_t i = 0; i < sizeof celeriac_settings / sizeof celeriac_settings[0]; i++)
            if (strcmp(name, celeriac_settings[i].name) == 0)
                return celeriac_settings[i].set(c, name, value, err, errlen);
        return 1;
    }
    /* "CELERY_TASK_ACKS_LATE" -> "task_acks_late"; a lower-case name is
     * taken as it is. */
    char key[64];
    const char *src = name;
    bool env_spelling = has_prefix(name, "CELERY_");
    if (env_spelling)
        src = name + strlen("CELERY_");
    size_t n = strlen(src);
    if (n == 0 || n >= sizeof key)
        return 1;
    for (size_t i = 0; i <= n; i++) {
        unsigned char ch = (unsigned char)src[i];
        if (!env_spelling && isupper(ch))
            return 1; /* "TASK_ACKS_LATE" is neither spelling */
        key[i] = (char)tolower(ch);
    }
    for (size_t i = 0; i < sizeof celery_settings / sizeof celery_settings[0]; i++)
        if (strcmp(key, celery_settings[i].name) == 0)
            return celery_settings[i].set(c, name, value, err, errlen);
    return 1;
}

/* ---------------------------------------------------------------- .env */

static bool is_key_start(int ch) { return isalpha(ch) || ch == '_'; }
static bool is_key_char(int ch) { return isalnum(ch) || ch == '_'; }

/* Rest of a line after a closing quote: only whitespace or a comment. */
static bool only_comment(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == '\0' || *p == '#';
}

/* Parses one .env line (newline already stripped).  Returns 0 with *key
 * and *value malloc'd (both NULL for a blank/comment line), or -1 with a
 * reason in why. */
static int parse_env_line(const char *line, char **key, char **value, const char **why)
{
    *key = *value = NULL;
    const char *p = line;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p == '\0' || *p == '#')
        return 0;
    if (strncmp(p, "export", 6) == 0 && (p[6] == ' ' || p[6] == '\t')) {
        p += 6;
        while (*p == ' ' || *p == '\t')
            p++;
    }
    const char *k = p;
    if (!is_key_start((unsigned char)*p))
        goto malformed;
    while (is_key_char((unsigned char)*p))
        p++;
    size_t klen = (size_t)(p - k);
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p != '=')
        goto malformed;
    p++;
    const char *value_start = p;
    while (*p == ' ' || *p == '\t')
        p++;

    char *v = xmalloc(strlen(p) + 1);
    size_t n = 0;
    if (*p == '\'') { /* literal up to the next quote */
        const char *close = strchr(p + 1, '\'');
        if (!close) {
            free(v);
            *why = "unterminated single-quoted value";
            return -1;
        }
        n = (size_t)(close - (p + 1));
        memcpy(v, p + 1, n);
        p = close + 1;
    } else if (*p == '"') {
        p++;
        for (;; p++) {
            if (*p == '\0') {
                free(v);
                *why = "unterminated double-quoted value";
                return -1;
            }
            if (*p == '"')
                break;
            if (*p == '\\' && p[1]) {
                p++;
                switch (*p) {
                case 'n': v[n++] = '\n'; break;
                case 't': v[n++] = '\t'; break;
                case 'r': v[n++] = '\r'; break;
                case '"': case '\\': case '\'': v[n++] = *p; break;
                default: v[n++] = '\\'; v[n++] = *p; break;
                }
                continue;
            }
            v[n++] = *p;
        }
        p++;
    } else { /* unquoted: up to a " #" comment, trimmed */
        const char *q = p;
        for (; *q; q++) {
            if (*q == '#' && q > value_start && (q[-1] == ' ' || q[-1] == '\t'))
                break;
        }
        while (q > p && (q[-1] == ' ' || q[-1] == '\t'))
            q--;
        n = (size_t)(q - p);
        memcpy(v, p, n);
        p = "";
    }
    v[n] = '\0';
    if (!only_comment(p)) {
        free(v);
        *why = "unexpected text after the closing quote";
        return -1;
    }
    *key = xstrndup(k, klen);
    *value = v;
    return 0;
malformed:
    *why = "expected KEY=VALUE";
    return -1;
}

/* Names read with getenv() elsewhere (module search, the AMQP plugin, the
 * enrich module): a .env line cannot set them, and saying so beats a
 * setting that silently does nothing. */
static bool env_only(const char *key)
{
    static const char *const names[] = {"CELERIAC_ENV", "CELERIAC_MODULE_PATH",
                                        "CELERIAC_AMQP_PLUGIN", "DATABASE_URL",
                                        "AUTOSCALE_KEEPALIVE"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (strcmp(key, names[i]) == 0)
            return true;
    return has_prefix(key, "ENRICH_");
}

int cel_config_load_envfile(cel_config *c, const char *path, bool optional, char *err,
                            size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        if (optional && errno == ENOENT)
            return 0;
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = 0;
    while (rc == 0 && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        char *key, *value;
        const char *why = NULL;
        if (parse_env_line(line, &key, &value, &why) < 0) {
            set_err(err, errlen, "%s:%d: %s", path, lineno, why);
            rc = -1;
            break;
        }
        if (key && env_only(key)) {
            cel_warn("%s:%d: %s is read from the process environment only; this line has no "
                     "effect (docs/configuration.md)", path, lineno, key);
        } else if (key && (has_prefix(key, "CELERY_") || has_prefix(key, "CELERIAC_"))) {
            char why2[512];
            int set = cel_config_set(c, key, value, why2, sizeof why2);
            if (set < 0) {
                set_err(err, errlen, "%s:%d: %s", path, lineno, why2);
                rc = -1;
            } else if (set > 0 && has_prefix(key, "CELERIAC_")) {
                /* Not a typo of ours to pass over in silence; unknown
                 * CELERY_* names are Celery settings celeriac does not
                 * use, normal in a .env shared with Python producers. */
                cel_warn("%s:%d: %s is not a celeriac setting; ignored", path, lineno, key);
            }
        }
        free(key);
        free(value);
    }
    if (rc == 0 && ferror(f)) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}

int cel_config_load_environ(cel_config *c, char *err, size_t errlen)
{
    /* CELERY_* first, then CELERIAC_*, so the CLI spelling wins where both
     * name one field (worker_concurrency vs CELERIAC_CONCURRENCY). */
    static const char *const prefixes[] = {"CELERY_", "CELERIAC_"};
    for (size_t pass = 0; pass < 2; pass++) {
        for (char **e = environ; e && *e; e++) {
            if (!has_prefix(*e, prefixes[pass]))
                continue;
            const char *eq = strchr(*e, '=');
            if (!eq)
                continue;
            char *name = xstrndup(*e, (size_t)(eq - *e));
            int rc = cel_config_set(c, name, eq + 1, err, errlen);
            free(name);
            if (rc < 0)
                return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- CLI */

enum opt_id {
    OPT_APP, OPT_BROKER, OPT_RESULT_BACKEND, OPT_QUEUES, OPT_CONCURRENCY, OPT_HOSTNAME,
    OPT_LOGLEVEL, OPT_LOGFILE, OPT_POOL, OPT_PREFETCH, OPT_EVENTS, OPT_NO_HEARTBEAT,
    OPT_NO_GOSSIP, OPT_NO_MINGLE, OPT_ACKS_LATE, OPT_ENV, OPT_ENV_FILE, OPT_HELP,
    OPT_TIME_LIMIT, OPT_SOFT_TIME_LIMIT, OPT_STATEDB, OPT_METRICS_PORT, OPT_METRICS_BIND,
    OPT_UID, OPT_GID, OPT_MAX_MESSAGE_SIZE, OPT_ACCEPT_CONTENT, OPT_AUTOSCALE,
};

static const struct worker_option {
    enum opt_id id;
    const char *long_name;
    char short_name; /* 0 = none */
    const char *metavar; /* NULL = a flag */
    const char *help;
} worker_options[] = {
    {OPT_APP, "app", 'A', "MODULE", "task module(s) to load; repeatable, or comma-separated"},
    {OPT_BROKER, "broker", 'b', "URL", "broker URL (default redis://localhost:6379/0)"},
    {OPT_RESULT_BACKEND, "result-backend", 0, "URL", "result backend URL (default: none)"},
    {OPT_QUEUES, "queues", 'Q', "QUEUES", "comma-separated queues to consume (default celery)"},
    {OPT_CONCURRENCY, "concurrency", 'c', "N", "number of pool processes (default: CPUs)"},
    {OPT_HOSTNAME, "hostname", 'n', "NAME", "node name; %h, %n, %d expand (default celeriac@%h)"},
    {OPT_LOGLEVEL, "loglevel", 'l', "LEVEL", "DEBUG, INFO, WARNING, ERROR, CRITICAL or FATAL"},
    {OPT_LOGFILE, "logfile", 'f', "PATH", "log to PATH instead of stderr"},
    {OPT_POOL, "pool", 'P', "POOL", "prefork (default) or solo"},
    {OPT_AUTOSCALE, "autoscale", 0, "MAX,MIN",
     "grow the pool up to MAX processes with the work, shrink it to MIN when idle"},
    {OPT_PREFETCH, "prefetch-multiplier", 0, "N", "messages to prefetch per process (default 4)"},
    {OPT_TIME_LIMIT, "time-limit", 0, "SECONDS", "hard time limit: the process is killed"},
    {OPT_STATEDB, "statedb", 'S', "PATH", "keep revoked task ids in PATH across restarts"},
    {OPT_METRICS_PORT, "metrics-port", 0, "PORT", "serve Prometheus /metrics on PORT"},
    {OPT_METRICS_BIND, "metrics-bind", 0, "ADDR", "address for --metrics-port (127.0.0.1)"},
    {OPT_UID, "uid", 0, "USER", "run as USER (name or uid) after opening the log file"},
    {OPT_GID, "gid", 0, "GROUP", "run as GROUP (name or gid); default: USER's group"},
    {OPT_MAX_MESSAGE_SIZE, "max-message-size", 0, "BYTES",
     "refuse messages larger than BYTES (K, M, G suffixes; default 64MB)"},
    {OPT_ACCEPT_CONTENT, "accept-content", 0, "LIST",
     "content types to accept (default json; only JSON can be decoded)"},
    {OPT_SOFT_TIME_LIMIT, "soft-time-limit", 0, "SECONDS",
     "soft time limit: the task is told and may clean up"},
    {OPT_EVENTS, "task-events", 'E', NULL, "send task events"},
    {OPT_EVENTS, "events", 0, NULL, "same as --task-events"},
    {OPT_NO_HEARTBEAT, "without-heartbeat", 0, NULL, "send no worker-online/heartbeat/offline events"},
    {OPT_NO_GOSSIP, "without-gossip", 0, NULL, "accepted; no effect: celeriac does not gossip"},
    {OPT_NO_MINGLE, "without-mingle", 0, NULL, "accepted; no effect: celeriac does not mingle"},
    {OPT_ACKS_LATE, "acks-late", 0, NULL, "acknowledge after the task ran (task_acks_late)"},
    {OPT_ENV, "env", 0, "NAME", "also read .env.NAME (or set CELERIAC_ENV)"},
    {OPT_ENV_FILE, "env-file", 0, "PATH", "read PATH instead of .env"},
    {OPT_HELP, "help", 'h', NULL, "show this message and exit"},
};
#define N_WORKER_OPTIONS (sizeof worker_options / sizeof worker_options[0])

static void print_usage(FILE *out)
{
    fprintf(out, "Usage: celeriac worker [OPTIONS]\n\n"
                 "Start a worker that runs C tasks from a Celery queue.\n\n"
                 "Options:\n");
    for (size_t i = 0; i < N_WORKER_OPTIONS; i++) {
        const struct worker_option *o = &worker_options[i];
        char spec[64];
        if (o->short_name)
            snprintf(spec, sizeof spec, "-%c, --%s%s%s", o->short_name, o->long_name,
                     o->metavar ? " " : "", o->metavar ? o->metavar : "");
        else
            snprintf(spec, sizeof spec, "    --%s%s%s", o->long_name, o->metavar ? " " : "",
                     o->metavar ? o->metavar : "");
        fprintf(out, "  %-34s %s\n", spec, o->help);
    }
    fprintf(out, "\nSettings also come from CELERY_* and CELERIAC_* variables (e.g.\n"
                 "CELERY_BROKER_URL, CELERIAC_CONCURRENCY) in the environment, .env.NAME\n"
                 "and .env, in that order of precedence below the command line;\n"
                 "docs/configuration.md lists them all.\n");
}

/* What the argument walk does with each option it finds. */
struct cli_state {
    bool scan_only;        /* first pass: only note --env/--env-file/--help */
    const char *env_name;  /* --env */
    const char *env_file;  /* --env-file */
    bool help;
    bool apps_from_cli;    /* the first -A replaces inherited apps */
    bool queues_from_cli;  /* the first -Q replaces inherited queues */
};

static int apply_option(cel_config *c, struct cli_state *st, const struct worker_option *o,
                        const char *value, char *err, size_t errlen)
{
    char name[40];
    snprintf(name, sizeof name, "--%s", o->long_name);
    if (st->scan_only) {
        if (o->id == OPT_ENV)
            st->env_name = value;
        else if (o->id == OPT_ENV_FILE)
            st->env_file = value;
        else if (o->id == OPT_HELP)
            st->help = true;
        return 0;
    }
    switch (o->id) {
    case OPT_APP:
    case OPT_QUEUES: {
        bool *from_cli = o->id == OPT_APP ? &st->apps_from_cli : &st->queues_from_cli;
        char ***list = o->id == OPT_APP ? &c->apps : &c->queues;
        char **items = cel_split_list(value);
        if (o->id == OPT_QUEUES && !items[0]) {
            cel_strv_free(items);
            set_err(err, errlen, "%s: expected one or more queue names, e.g. celery,images",
                    name);
            return -1;
        }
        if (!*from_cli) {
            replace_strv(list, items);
            *from_cli = true;
        } else {
            strv_extend(list, items);
        }
        return 0;
    }
    case OPT_BROKER: return set_broker_url(c, name, value, err, errlen);
    case OPT_RESULT_BACKEND: return set_result_backend(c, name, value, err, errlen);
    case OPT_CONCURRENCY: return set_concurrency(c, name, value, err, errlen);
    case OPT_HOSTNAME: return set_hostname(c, name, value, err, errlen);
    case OPT_LOGLEVEL: return set_loglevel(c, name, value, err, errlen);
    case OPT_LOGFILE: return set_logfile(c, name, value, err, errlen);
    case OPT_POOL: return set_pool(c, name, value, err, errlen);
    case OPT_AUTOSCALE: return set_autoscale(c, name, value, err, errlen);
    case OPT_PREFETCH: return set_prefetch_multiplier(c, name, value, err, errlen);
    case OPT_TIME_LIMIT: return set_task_time_limit(c, name, value, err, errlen);
    case OPT_SOFT_TIME_LIMIT: return set_task_soft_time_limit(c, name, value, err, errlen);
    case OPT_STATEDB: return set_state_db(c, name, value, err, errlen);
    case OPT_METRICS_PORT: return set_metrics_port(c, name, value, err, errlen);
    case OPT_METRICS_BIND: return set_metrics_bind(c, name, value, err, errlen);
    case OPT_UID: return set_uid(c, name, value, err, errlen);
    case OPT_GID: return set_gid(c, name, value, err, errlen);
    case OPT_MAX_MESSAGE_SIZE: return set_max_message_size(c, name, value, err, errlen);
    case OPT_ACCEPT_CONTENT: return set_accept_content(c, name, value, err, errlen);
    case OPT_EVENTS: c->task_events = true; return 0;
    case OPT_NO_HEARTBEAT: c->without_heartbeat = true; return 0;
    case OPT_NO_GOSSIP: c->without_gossip = true; return 0;
    case OPT_NO_MINGLE: c->without_mingle = true; return 0;
    case OPT_ACKS_LATE: c->task_acks_late = true; return 0;
    case OPT_ENV:
    case OPT_ENV_FILE:
    case OPT_HELP: return 0; /* handled by the first pass */
    }
    return 0;
}

/* A stray argument is quoted back unless it looks like a URL: `celeriac
 * worker redis://:pw@host` (a forgotten -b) must not print the password. */
static void unexpected_argument(const char *a, char *err, size_t errlen)
{
    if (strstr(a, "://") || strchr(a, '@'))
        set_err(err, errlen, "unexpected argument (a URL? not shown; broker URLs go after -b)");
    else
        set_err(err, errlen, "unexpected argument: %s", a);
}

/* Walks argv[1..], calling apply_option() for each option in order. */
static int walk_args(cel_config *c, struct cli_state *st, int argc, char **argv, char *err,
                     size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            if (i + 1 < argc) {
                unexpected_argument(argv[i + 1], err, errlen);
                return -1;
            }
            return 0;
        }
        if (a[0] == '-' && a[1] == '-') {
            const char *nm = a + 2;
            const char *eq = strchr(nm, '=');
            size_t nlen = eq ? (size_t)(eq - nm) : strlen(nm);
            const struct worker_option *o = NULL;
            for (size_t k = 0; k < N_WORKER_OPTIONS; k++)
                if (strlen(worker_options[k].long_name) == nlen &&
                    strncmp(worker_options[k].long_name, nm, nlen) == 0)
                    o = &worker_options[k];
            if (!o) {
                set_err(err, errlen, "unknown option: --%.*s", (int)nlen, nm);
                return -1;
            }
            const char *value = NULL;
            if (o->metavar) {
                if (eq)
                    value = eq + 1;
                else if (i + 1 < argc)
                    value = argv[++i];
                else {
                    set_err(err, errlen, "option --%s requires a value", o->long_name);
                    return -1;
                }
            } else if (eq) {
                set_err(err, errlen, "option --%s does not take a value", o->long_name);
                return -1;
            }
            if (apply_option(c, st, o, value, err, errlen) < 0)
                return -1;
        } else if (a[0] == '-' && a[1]) {
            /* Short options; flags may be clustered ("-Ec4"), and a value
             * may be attached ("-c4") or the next argument ("-c 4"). */
            for (size_t j = 1; a[j]; j++) {
                const struct worker_option *o = NULL;
                for (size_t k = 0; k < N_WORKER_OPTIONS; k++)
                    if (worker_options[k].short_name == a[j])
                        o = &worker_options[k];
                if (!o) {
                    set_err(err, errlen, "unknown option: -%c", a[j]);
                    return -1;
                }
                const char *value = NULL;
                if (o->metavar) {
                    if (a[j + 1])
                        value = a + j + 1;
                    else if (i + 1 < argc)
                        value = argv[++i];
                    else {
                        set_err(err, errlen, "option -%c requires a value", o->short_name);
                        return -1;
                    }
                }
                if (apply_option(c, st, o, value, err, errlen) < 0)
                    return -1;
                if (value)
                    break; /* the rest of this argument was the value */
            }
        } else {
            unexpected_argument(a, err, errlen);
            return -1;
        }
    }
    return 0;
}

int cel_config_from_worker_args(cel_config *c, int argc, char **argv, char *err, size_t errlen)
{
    cel_config_defaults(c);
    struct cli_state st = {.scan_only = true};
    if (walk_args(c, &st, argc, argv, err, errlen) < 0)
        return -1;
    if (st.help) {
        print_usage(stdout);
        return 1;
    }

    if (cel_config_load_layers(c, st.env_file, st.env_name, err, errlen) < 0)
        return -1;

    st.scan_only = false;
    if (walk_args(c, &st, argc, argv, err, errlen) < 0)
        return -1;
    return 0;
}

int cel_config_load_layers(cel_config *c, const char *env_file, const char *cli_env_name,
                           char *err, size_t errlen)
{
    /* Files: .env (or --env-file PATH), then <that>.NAME. */
    bool env_name_from_cli = cli_env_name != NULL;
    const char *env_name = cli_env_name ? cli_env_name : getenv("CELERIAC_ENV");
    if (env_name && !*env_name) {
        if (env_name_from_cli) {
            set_err(err, errlen, "--env: expected an environment name, e.g. production");
            return -1;
        }
        env_name = NULL;
    }
    if (env_name && strchr(env_name, '/')) {
        set_err(err, errlen, "%s: environment name must not contain '/'",
                env_name_from_cli ? "--env" : "CELERIAC_ENV");
        return -1;
    }
    const char *base = env_file ? env_file : ".env";
    if (cel_config_load_envfile(c, base, env_file == NULL, err, errlen) < 0)
        return -1;
    if (env_name) {
        size_t n = strlen(base) + 1 + strlen(env_name) + 1;
        char *path = xmalloc(n);
        snprintf(path, n, "%s.%s", base, env_name);
        /* Asked for on the command line, the file must exist; via
         * CELERIAC_ENV (often set machine-wide) it may be absent. */
        int rc = cel_config_load_envfile(c, path, !env_name_from_cli, err, errlen);
        free(path);
        if (rc < 0)
            return -1;
    }

    return cel_config_load_environ(c, err, errlen);
}
