/* pg.c — libpq helpers: connecting, error text, transient-error classification.
 *
 * Connection errors are scrubbed of the password: libpq quotes pieces of a
 * connection string it cannot parse (`invalid percent-encoded token:
 * "s3cr%zz"`), and those errors reach logs, task results and the job row. */
#include "db/pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Replaces every occurrence of secret[0..n) in err with "**". */
static void scrub_one(char *err, const char *secret, size_t n)
{
    if (n < 3) /* too short to tell from ordinary text; nothing to hide */
        return;
    char *p;
    while ((p = memmem(err, strlen(err), secret, n)) != NULL) {
        memcpy(p, "**", 2);
        memmove(p + 2, p + n, strlen(p + n) + 1);
    }
}

/* Scrubs the password of `url` from err, whether libpq could parse the URL
 * or not: the parsed (decoded) value, and the raw text of a URL's userinfo
 * or of a `password=` keyword. */
static void scrub_password(char *err, const char *url)
{
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (!strcmp(o->keyword, "password") && o->val)
            scrub_one(err, o->val, strlen(o->val));
    PQconninfoFree(opts);
    const char *rest = strstr(url, "://");
    if (rest) { /* postgresql://user:PASSWORD@host... (the last '@' before '?') */
        rest += 3;
        const char *end = strchr(rest, '?');
        if (!end)
            end = rest + strlen(rest);
        const char *at = NULL;
        for (const char *p = rest; p < end; p++)
            if (*p == '@')
                at = p;
        const char *colon = at ? memchr(rest, ':', (size_t)(at - rest)) : NULL;
        if (colon)
            scrub_one(err, colon + 1, (size_t)(at - colon - 1));
        return;
    }
    for (const char *p = url; (p = strstr(p, "password")) != NULL; p += 8) {
        const char *v = p + 8;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v != '=')
            continue;
        v++;
        while (*v == ' ' || *v == '\t')
            v++;
        if (*v == '\'') {
            const char *e = ++v;
            while (*e && *e != '\'')
                e += e[0] == '\\' && e[1] ? 2 : 1;
            scrub_one(err, v, (size_t)(e - v));
        } else {
            scrub_one(err, v, strcspn(v, " \t\n"));
        }
    }
}

PGconn *cel_pg_connect(const char *url, const char *app, char *err, size_t cap)
{
    /* Later keywords override earlier ones, so the URL (expanded from
     * "dbname") wins over these defaults. */
    const char *keys[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *vals[] = {"10", app ? app : "celeriac", url, NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        cel_pg_error(c, NULL, err, cap);
        scrub_password(err, url);
        PQfinish(c);
        return NULL;
    }
    return c;
}

const char *cel_pg_sqlstate(const PGresult *r)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

bool cel_pg_transient(PGconn *c, const PGresult *r)
{
    if (!c || PQstatus(c) != CONNECTION_OK)
        return true;
    const char *s = cel_pg_sqlstate(r);
    if (!*s)
        return r == NULL || PQresultStatus(r) == PGRES_FATAL_ERROR;
    if (!strncmp(s, "08", 2))
        return true;
    static const char *const codes[] = {"40001", "40P01", "57P01", "57P02", "57P03",
                                        "55P03", "53300", NULL};
    for (size_t i = 0; codes[i]; i++)
        if (!strcmp(s, codes[i]))
            return true;
    return false;
}

void cel_pg_error(PGconn *c, const PGresult *r, char *err, size_t cap)
{
    const char *msg = r ? PQresultErrorMessage(r) : NULL;
    if (!msg || !*msg)
        msg = c ? PQerrorMessage(c) : "no connection";
    if (!msg || !*msg)
        msg = "unknown PostgreSQL error";
    snprintf(err, cap, "%s", msg);
    size_t n = strlen(err);
    while (n && (err[n - 1] == '\n' || err[n - 1] == ' '))
        err[--n] = '\0';
    /* libpq writes multi-line messages ("...\nDETAIL: ..."): keep one line. */
    for (char *p = err; *p; p++)
        if (*p == '\n')
            *p = ' ';
}

int cel_pg_exec(PGconn *c, const char *sql, char *err, size_t cap, bool *transient)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        PQclear(r);
        return 0;
    }
    cel_pg_error(c, r, err, cap);
    if (transient)
        *transient = cel_pg_transient(c, r);
    PQclear(r);
    return -1;
}
