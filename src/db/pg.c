/* pg.c — libpq helpers: connecting, error text, transient-error classification. */
#include "db/pg.h"

#include <stdio.h>
#include <string.h>

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
