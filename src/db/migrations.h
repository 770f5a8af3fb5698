/* migrations.h — the SQL migrations embedded from sql/migrations/ at build time. */
#ifndef CELERIAC_DB_MIGRATIONS_H
#define CELERIAC_DB_MIGRATIONS_H

#include <stddef.h>

typedef struct cel_db_migration {
    int version;      /* NNNN of NNNN_name.sql */
    const char *name; /* "0001_init" */
    const char *sql;  /* the file's text, run in one transaction */
} cel_db_migration;

extern const cel_db_migration cel_db_migrations[]; /* ordered by version */
extern const size_t cel_db_migrations_count;

#endif
