/* main.c — the `celeriac-db` executable behind `celeriac db ...`.
 *
 * Why a separate binary: libpq pulls ~20 shared libraries (Kerberos, LDAP,
 * GnuTLS, ...) into every process that links it; in the worker that doubled
 * the parent's RSS (4 -> 8 MB) and cost every pool process too, for a
 * command the worker never runs.  `celeriac db` execs this instead; the
 * enrich task module links libpq itself, so only workers that load it pay. */
#include "db/db.h"

int main(int argc, char **argv)
{
    return cel_db_main(argc, argv); /* argv[0] is "db" when run by celeriac */
}
