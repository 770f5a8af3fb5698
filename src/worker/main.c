/* main.c — the `celeriac` command: `celeriac worker ...` (as `celery
 * worker`), `celeriac call ...` (as `celery call`), `celeriac score ...`
 * (the name scorer) and `celeriac db ...` (runs celeriac-db). */
#include "core/config.h"
#include "core/log.h"
#include "core/privs.h"
#include "worker/worker.h"
#include "score/cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fputs("usage: celeriac worker [options]   run a worker (see `celeriac worker --help`)\n"
          "       celeriac call TASK [--args JSON] [--kwargs JSON] [-Q QUEUE] [--countdown N]\n"
          "                     [-b URL]       send a task and print its id\n"
          "       celeriac score NAME_A NAME_B  RPC/WPC name score (see `celeriac score --help`)\n"
          "       celeriac db migrate [--database-url URL]  apply the PostgreSQL schema\n"
          "       celeriac --version\n",
          f);
}

/* `celeriac db ...` runs celeriac-db from beside this binary (or PATH):
 * libpq stays out of the worker (src/db/main.c says why). */
static int exec_db(char **argv)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 16);
    if (n > 0) {
        self[n] = 0;
        char *slash = strrchr(self, '/');
        if (slash) {
            strcpy(slash + 1, "celeriac-db");
            execv(self, argv);
        }
    }
    execvp("celeriac-db", argv);
    fprintf(stderr, "celeriac: error: cannot run celeriac-db: %s\n", strerror(errno));
    return CEL_EX_USAGE;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CEL_EX_USAGE;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        puts("celeriac " CELERIAC_VERSION " (Celery protocol v2)");
        return 0;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "call"))
        return cel_call_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "score"))
        return cel_score_main(argc - 1, argv + 1);
    if (!strcmp(argv[1], "db"))
        return exec_db(argv + 1);
    if (strcmp(argv[1], "worker") != 0) {
        fprintf(stderr, "celeriac: error: unknown command: %s\n", argv[1]);
        usage(stderr);
        return CEL_EX_USAGE;
    }
    cel_config cfg;
    char err[512] = "";
    int rc = cel_config_from_worker_args(&cfg, argc - 1, argv + 1, err, sizeof err);
    if (rc == 1) {
        cel_config_free(&cfg);
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "celeriac: error: %s\n", err);
        cel_config_free(&cfg);
        return CEL_EX_USAGE;
    }
    cel_log_set_level((cel_log_level)cfg.loglevel);
    cel_log_set_process("MainProcess");
    if (cfg.logfile && cel_log_set_file(cfg.logfile) < 0) {
        fprintf(stderr, "celeriac: error: cannot open log file %s\n", cfg.logfile);
        cel_config_free(&cfg);
        return CEL_EX_USAGE;
    }
    /* After the log file, before anything else (core/privs.c says why). */
    if (cel_drop_privileges(cfg.uid, cfg.gid, err, sizeof err) < 0) {
        cel_crit("%s", err);
        cel_config_free(&cfg);
        return CEL_EX_USAGE;
    }
    if (cfg.uid || cfg.gid)
        cel_info("Running as uid %u gid %u", (unsigned)getuid(), (unsigned)getgid());
    rc = cel_worker_main(&cfg);
    cel_config_free(&cfg);
    if (rc == 0 && cel_worker_restart_requested()) {
        /* SIGHUP: the same command line again, as Celery's restart handler
         * does with os.execv; descriptors are O_CLOEXEC.  Settings are read
         * anew, so an edited .env takes effect. */
        execv("/proc/self/exe", argv);
        fprintf(stderr, "celeriac: error: restart failed: %s\n", strerror(errno));
        return 1;
    }
    return rc;
}
