/* db.h — `celeriac db ...`: the PostgreSQL schema's migrations. */
#ifndef CELERIAC_DB_DB_H
#define CELERIAC_DB_DB_H

/* `celeriac db migrate [--database-url URL]` and `celeriac db status`;
 * argv[0] is "db". Returns the exit code. */
int cel_db_main(int argc, char **argv);

#endif
