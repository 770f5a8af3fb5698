/* pg.h — small libpq helpers shared by `celeriac db` and the enrich task module. */
#ifndef CELERIAC_DB_PG_H
#define CELERIAC_DB_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/* Connects to `url` (a postgresql:// URL or a conninfo string) with a 10 s
 * connect timeout and application_name `app` unless the URL sets them.
 * Returns the connection, or NULL with the reason in err (never a password). */
PGconn *cel_pg_connect(const char *url, const char *app, char *err, size_t cap);

/* The SQLSTATE of a result ("" if none, e.g. the connection was lost). */
const char *cel_pg_sqlstate(const PGresult *r);

/* True if an error is worth retrying: the connection is bad or was lost, or
 * SQLSTATE class 08 (connection), 40001 (serialization), 40P01 (deadlock),
 * 57P01/57P02/57P03 (shutdown, crash, not yet accepting), 55P03 (lock timeout),
 * 53300 (too many connections). `r` may be NULL (e.g. PQconnectdb failed). */
bool cel_pg_transient(PGconn *c, const PGresult *r);

/* Runs a command that returns no rows. Returns 0, or -1 with the error in
 * err; *transient (if not NULL) tells whether it is worth retrying. */
int cel_pg_exec(PGconn *c, const char *sql, char *err, size_t cap, bool *transient);

/* The error text of r (or of the connection), trimmed of its trailing newline. */
void cel_pg_error(PGconn *c, const PGresult *r, char *err, size_t cap);

#endif
