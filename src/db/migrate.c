/* migrate.c — `celeriac db migrate`: applies sql/migrations/ (embedded at build
 * time) to the database in DATABASE_URL or --database-url.
 *
 * Idempotent and safe from several workers at once: the whole run holds a
 * session advisory lock, and each migration runs in one transaction that also
 * records its version in schema_migrations, so a migration is either applied
 * and recorded or neither. */
#include "db/db.h"
#include "db/migrations.h"
#include "db/pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* pg_advisory_lock key of the migration run ("celeriac" in ASCII, truncated). */
#define MIGRATE_LOCK_KEY "6360288058358293860"

enum { EX_OK = 0, EX_FAIL = 1, EX_USAGE = 64 };

static void usage(FILE *f)
{
    fputs("usage: celeriac db migrate [--database-url URL]   apply the schema migrations\n"
          "       celeriac db status  [--database-url URL]   list applied and pending ones\n"
          "\n"
          "The URL defaults to $DATABASE_URL (postgresql://user:pass@host:port/db or a\n"
          "libpq conninfo string). Migrations are built into the binary from sql/migrations/.\n",
          f);
}

/* 1 if `version` is recorded, 0 if not, -1 on error. */
static int applied(PGconn *c, int version, char *err, size_t cap)
{
    char v[16];
    snprintf(v, sizeof v, "%d", version);
    const char *params[] = {v};
    PGresult *r = PQexecParams(c, "SELECT 1 FROM schema_migrations WHERE version = $1", 1,
                               NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        cel_pg_error(c, r, err, cap);
        PQclear(r);
        return -1;
    }
    int n = PQntuples(r);
    PQclear(r);
    return n > 0;
}

static int apply_one(PGconn *c, const cel_db_migration *m, char *err, size_t cap)
{
    if (cel_pg_exec(c, "BEGIN", err, cap, NULL) < 0)
        return -1;
    int a = applied(c, m->version, err, cap);
    if (a != 0) {
        char ignored[8];
        cel_pg_exec(c, "ROLLBACK", ignored, sizeof ignored, NULL);
        return a < 0 ? -1 : 0;
    }
    if (cel_pg_exec(c, m->sql, err, cap, NULL) < 0)
        goto fail;
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[] = {v, m->name};
    PGresult *r = PQexecParams(c, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                               2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        cel_pg_error(c, r, err, cap);
        PQclear(r);
        goto fail;
    }
    PQclear(r);
    if (cel_pg_exec(c, "COMMIT", err, cap, NULL) < 0)
        return -1;
    return 1;
fail:;
    char ignored[8];
    cel_pg_exec(c, "ROLLBACK", ignored, sizeof ignored, NULL);
    return -1;
}

static int run(const char *url, int migrate)
{
    char err[1024] = "";
    PGconn *c = cel_pg_connect(url, "celeriac db", err, sizeof err);
    if (!c) {
        fprintf(stderr, "celeriac db: error: cannot connect: %s\n", err);
        return EX_FAIL;
    }
    int rc = EX_FAIL;
    if (cel_pg_exec(c, "SET client_min_messages = warning", err, sizeof err, NULL) < 0 ||
        cel_pg_exec(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", err, sizeof err, NULL) < 0 ||
        cel_pg_exec(c,
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY,"
                    " name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())",
                    err, sizeof err, NULL) < 0) {
        fprintf(stderr, "celeriac db: error: %s\n", err);
        goto out;
    }
    int done = 0, pending = 0;
    for (size_t i = 0; i < cel_db_migrations_count; i++) {
        const cel_db_migration *m = &cel_db_migrations[i];
        if (!migrate) {
            int a = applied(c, m->version, err, sizeof err);
            if (a < 0) {
                fprintf(stderr, "celeriac db: error: %s\n", err);
                goto out;
            }
            printf("%s %s\n", a ? "applied" : "pending", m->name);
            pending += !a;
            continue;
        }
        int a = apply_one(c, m, err, sizeof err);
        if (a < 0) {
            fprintf(stderr, "celeriac db: error: migration %s failed (nothing of it applied): %s\n",
                    m->name, err);
            goto out;
        }
        if (a > 0) {
            printf("celeriac db: applied %s\n", m->name);
            done++;
        }
    }
    if (migrate)
        printf("celeriac db: schema up to date (%zu migration%s, %d applied now)\n",
               cel_db_migrations_count, cel_db_migrations_count == 1 ? "" : "s", done);
    rc = migrate || !pending ? EX_OK : EX_FAIL;
out:
    cel_pg_exec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")", err, sizeof err, NULL);
    PQfinish(c);
    return rc;
}

int cel_db_main(int argc, char **argv)
{
    const char *url = NULL;
    const char *cmd = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return EX_OK;
        } else if (!strcmp(a, "--database-url")) {
            if (++i >= argc) {
                fprintf(stderr, "celeriac db: error: --database-url needs a value\n");
                return EX_USAGE;
            }
            url = argv[i];
        } else if (!strncmp(a, "--database-url=", 15)) {
            url = a + 15;
        } else if (!cmd && a[0] != '-') {
            cmd = a;
        } else {
            fprintf(stderr, "celeriac db: error: unexpected argument: %s\n", a);
            usage(stderr);
            return EX_USAGE;
        }
    }
    if (!cmd || (strcmp(cmd, "migrate") != 0 && strcmp(cmd, "status") != 0)) {
        fprintf(stderr, "celeriac db: error: %s\n",
                cmd ? "unknown db command (migrate, status)" : "missing command");
        usage(stderr);
        return EX_USAGE;
    }
    if (!url || !*url)
        url = getenv("DATABASE_URL");
    if (!url || !*url) {
        fprintf(stderr, "celeriac db: error: no database: set DATABASE_URL or --database-url\n");
        return EX_USAGE;
    }
    return run(url, !strcmp(cmd, "migrate"));
}
