/* enrich.c — the `enrich` task module (libceleriac-enrich.so): enrich_list(job_id, list_id).
 *
 * Scores every entry of a list (full_name vs contact_name) with the name scorer,
 * writes one rpc_scores row per entry, the transformations into list_entries,
 * one export_jobs row, and the job's lifecycle in enrichment_queue_jobs.
 * docs/enrich.md explains the design; in short:
 *
 *   - Three connections per pool process, opened lazily in the process that
 *     runs the task (DATABASE_URL from the worker's environment): `work`
 *     carries the job's main transaction (list_entries, export_jobs, the job
 *     row's `succeeded`), `rpc` the rpc_scores transaction (it also reads the
 *     list), `status` (autocommit) the job row's visible lifecycle (running,
 *     processed, retrying, failed).  Two server sessions let the rpc_scores
 *     COPY and the list_entries UPDATE run on two cores at once.
 *   - Exactly-once effects: `work` holds pg_advisory_xact_lock(job) from its
 *     start, so attempts run one after the other; a job already `succeeded`
 *     returns its stored summary and writes nothing.  `rpc` holds a second
 *     per-job lock, starts by deleting the job's rpc_scores rows and commits
 *     just before `work`; a crash or soft time limit before that rolls both
 *     back, a crash between the two commits leaves rows that the next
 *     attempt replaces.  docs/enrich.md has the whole argument.
 *   - Entries are read through a server-side cursor on `rpc`, FETCH by
 *     batch; per batch, COPY FROM STDIN into rpc_scores (on `rpc`) and into a
 *     temporary table then UPDATE ... FROM it into list_entries (on `work`),
 *     pipelined with the scoring of the next batch.  Memory is bounded by the
 *     batch size.
 */
#include <celeriac/score.h>
#include <celeriac/task.h>

#include "db/pg.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Settings, read once when the module loads (environment of the worker). */
static int g_max_retries = 5;        /* ENRICH_MAX_RETRIES */
static double g_retry_base = 2.0;    /* ENRICH_RETRY_BASE: seconds before the first retry */
static double g_retry_cap = 300.0;   /* ENRICH_RETRY_MAX: longest countdown */
static long g_batch = 10000;         /* ENRICH_BATCH_SIZE: rows per FETCH / COPY / PROGRESS */
static long g_batch_sleep_ms = 0;    /* ENRICH_TEST_BATCH_SLEEP_MS: tests only, slows a job down */
static long g_lock_timeout_ms = 60000; /* ENRICH_LOCK_TIMEOUT_MS: wait for a running duplicate */

/* Per-process connections; `owner` is the pid that opened them, so a child
 * never uses a connection inherited across fork. */
static PGconn *g_work, *g_status, *g_rpc;
static pid_t g_owner;

#define ERRCAP 1024
#define FIELDCAP 1024

/* --- small buffer ---------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static int buf_reserve(buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_add(buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

static int buf_addc(buf *b, char c) { return buf_add(b, &c, 1); }

/* One COPY text-format field (NULL or "" -> \N when null_if_empty), then sep. */
static int copy_field(buf *b, const char *s, int null_if_empty, char sep)
{
    if (!s || (null_if_empty && !*s)) {
        if (buf_add(b, "\\N", 2) < 0)
            return -1;
    } else {
        size_t n = strlen(s);
        if (buf_reserve(b, 2 * n + 1) < 0)
            return -1;
        if (s[strcspn(s, "\\\t\n\r")] == '\0') { /* nothing to escape: the usual case */
            memcpy(b->p + b->len, s, n);
            b->len += n;
            b->p[b->len++] = sep;
            return 0;
        }
        for (const char *p = s; *p; p++) {
            char c = *p;
            const char *esc = c == '\\' ? "\\\\" : c == '\t' ? "\\t" : c == '\n' ? "\\n"
                              : c == '\r' ? "\\r" : NULL;
            if (esc) {
                b->p[b->len++] = esc[0];
                b->p[b->len++] = esc[1];
            } else {
                b->p[b->len++] = c;
            }
        }
    }
    return buf_addc(b, sep);
}

/* --- settings ------------------------------------------------------------- */

static long env_long(const char *name, long def, long lo, long hi)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || x < lo || x > hi) {
        cel_task_log(NULL, CEL_TASK_WARNING,
                     "enrich: ignoring %s=%s (expected an integer in %ld..%ld)", name, v, lo, hi);
        return def;
    }
    return x;
}

static double env_double(const char *name, double def)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return def;
    char *end;
    double x = strtod(v, &end);
    if (*end || !(x >= 0) || x > 86400) {
        cel_task_log(NULL, CEL_TASK_WARNING, "enrich: ignoring %s=%s (expected seconds)", name,
                     v);
        return def;
    }
    return x;
}

/* --- phone ------------------------------------------------------------------ */

/* Digits of a phone number, and whether it is a plausible number: a NANP
 * number (10 digits, or 11 with a leading 1 that is dropped; area code and
 * exchange not starting with 0 or 1), or an international one written with a
 * leading '+' (8 to 15 digits, E.164).  An extension ("x12", "ext. 12") is
 * not part of the number.  Returns 0 if there are no digits at all. */
static int phone_normalize(const char *s, char *out, size_t cap, int *valid)
{
    size_t n = 0;
    int plus = 0, seen = 0;
    *valid = 0;
    out[0] = '\0';
    if (!s)
        return 0;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= '0' && c <= '9') {
            if (n + 1 < cap)
                out[n++] = (char)c;
            seen = 1;
        } else if (c == '+' && !seen) {
            plus = 1;
        } else if ((c == 'x' || c == 'X' || c == '#' || c == 'e' || c == 'E') && seen) {
            break; /* extension */
        }
    }
    out[n] = '\0';
    if (!n)
        return 0;
    if (plus && !(n == 11 && out[0] == '1')) {
        *valid = n >= 8 && n <= 15;
        return 1;
    }
    if (n == 11 && out[0] == '1') {
        memmove(out, out + 1, n);
        n--;
    }
    *valid = n == 10 && out[0] >= '2' && out[3] >= '2';
    return 1;
}

/* --- connections -------------------------------------------------------- */

/* The connection in *slot, (re)opened if needed. NULL with err on failure;
 * *config_error set when DATABASE_URL is missing (a permanent error). */
static PGconn *conn_get(PGconn **slot, char *err, int *config_error)
{
    if (g_owner != getpid()) {
        /* Inherited from the parent (or never opened): drop without closing,
         * the socket belongs to the parent's session. */
        g_work = g_status = g_rpc = NULL;
        g_owner = getpid();
    }
    if (*slot && PQstatus(*slot) == CONNECTION_OK)
        return *slot;
    if (*slot) {
        PQfinish(*slot);
        *slot = NULL;
    }
    const char *url = getenv("DATABASE_URL");
    if (!url || !*url) {
        snprintf(err, ERRCAP, "DATABASE_URL is not set in the worker's environment");
        if (config_error)
            *config_error = 1;
        return NULL;
    }
    *slot = cel_pg_connect(url, "celeriac enrich", err, ERRCAP);
    if (*slot) {
        PGresult *r = PQexec(*slot, "SET client_min_messages = warning");
        PQclear(r);
    }
    return *slot;
}

/* Runs sql with text params on c; returns the result if its status is ok
 * (TUPLES_OK or COMMAND_OK), else NULL with err and *transient. */
static PGresult *q(PGconn *c, const char *sql, int n, const char *const *params, char *err,
                   int *transient)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return r;
    cel_pg_error(c, r, err, ERRCAP);
    *transient = cel_pg_transient(c, r);
    PQclear(r);
    return NULL;
}

static int qx(PGconn *c, const char *sql, int n, const char *const *params, char *err,
              int *transient)
{
    PGresult *r = q(c, sql, n, params, err, transient);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

/* Best effort: the job row's lifecycle on the status connection (the
 * database may be down: then the row is simply not updated). 0 if done. */
static int status_update(const char *sql, int n, const char *const *params)
{
    char err[ERRCAP];
    int transient = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        PGconn *c = conn_get(&g_status, err, NULL);
        if (!c)
            return -1;
        if (qx(c, sql, n, params, err, &transient) == 0)
            return 0;
        if (PQstatus(c) == CONNECTION_OK)
            return -1; /* a real error on a live connection: do not loop */
    }
    return -1;
}

/* Best effort: the job row's `processed` (progress).  Committed without
 * waiting for its WAL flush (synchronous_commit off for this transaction
 * only): a PostgreSQL crash may lose the last progress values, which the next
 * attempt resets anyway, and the commit does not wait behind the megabytes of
 * WAL the job's own transactions are writing. */
static void progress_update(const char *job, long long processed)
{
    char err[ERRCAP], n[24];
    PGconn *c = conn_get(&g_status, err, NULL);
    if (!c)
        return;
    snprintf(n, sizeof n, "%lld", processed);
    const char *p[] = {job, n};
    /* One parameterised statement (no SQL built from values): set_config(...,
     * true) lasts until the end of the statement's own implicit transaction,
     * whose commit reads it; joining `s` makes the CTE run. */
    PGresult *r = PQexecParams(c,
                               "WITH s AS (SELECT set_config('synchronous_commit', 'off', true))"
                               " UPDATE enrichment_queue_jobs SET processed = $2 FROM s"
                               " WHERE id = $1",
                               2, NULL, p, NULL, NULL, 0);
    PQclear(r);
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE) {
        r = PQexec(c, "ROLLBACK");
        PQclear(r);
    }
}

static void job_mark_failed(const char *job, const char *error)
{
    const char *p[] = {job, error};
    status_update("UPDATE enrichment_queue_jobs SET status = 'failed', error = $2,"
                  " finished_at = now(),"
                  " duration_ms = CASE WHEN started_at IS NULL THEN NULL ELSE"
                  "   (extract(epoch FROM now() - started_at) * 1000)::bigint END"
                  " WHERE id = $1 AND status <> 'succeeded'",
                  2, p);
}

/* Rolls back whatever transaction c has open (after draining a query still
 * in flight: a pipelined statement whose result was not read yet). */
static void conn_rollback(PGconn *c)
{
    if (!c || PQstatus(c) != CONNECTION_OK)
        return;
    PGresult *r;
    if (PQtransactionStatus(c) == PQTRANS_ACTIVE) {
        while ((r = PQgetResult(c)) != NULL) {
            ExecStatusType st = PQresultStatus(r);
            PQclear(r);
            if (st == PGRES_COPY_IN) { /* a COPY we never finished: abort it */
                PQputCopyEnd(c, "enrich_list: attempt abandoned");
            }
        }
    }
    if (PQstatus(c) == CONNECTION_OK && PQtransactionStatus(c) != PQTRANS_IDLE) {
        r = PQexec(c, "ROLLBACK");
        PQclear(r);
    }
}

/* Both of the job's transactions: `work` (list_entries, export_jobs, job row)
 * and `rpc` (rpc_scores). */
static void work_rollback(void)
{
    conn_rollback(g_rpc);
    conn_rollback(g_work);
}

/* --- argument binding ---------------------------------------------------- */

static const char *py_type(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "dict";
    case JSON_ARRAY: return "list";
    case JSON_STRING: return "str";
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    default: return "NoneType";
    }
}

/* Binds enrich_list(job_id, list_id) as Python binds a call; returns 0 or the
 * task's failure status (TypeError). */
static int bind_args(cel_task *t, const json_t *args, const json_t *kwargs, json_int_t *job,
                     json_int_t *list)
{
    static const char *const names[] = {"job_id", "list_id"};
    const json_t *v[2] = {NULL, NULL};
    size_t nargs = json_array_size(args);
    if (nargs > 2)
        return cel_task_raise(t, "builtins", "TypeError",
                              "enrich_list() takes 2 positional arguments but %zu were given",
                              nargs);
    for (size_t i = 0; i < nargs; i++)
        v[i] = json_array_get(args, i);
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)kwargs, key, val) {
        int i = !strcmp(key, "job_id") ? 0 : !strcmp(key, "list_id") ? 1 : -1;
        if (i < 0)
            return cel_task_raise(t, "builtins", "TypeError",
                                  "enrich_list() got an unexpected keyword argument '%s'", key);
        if (v[i])
            return cel_task_raise(t, "builtins", "TypeError",
                                  "enrich_list() got multiple values for argument '%s'", key);
        v[i] = val;
    }
    if (!v[0] || !v[1])
        return cel_task_raise(t, "builtins", "TypeError",
                              "enrich_list() missing required positional argument%s: %s",
                              !v[0] && !v[1] ? "s" : "",
                              !v[0] && !v[1] ? "'job_id' and 'list_id'"
                              : !v[0]        ? "'job_id'"
                                             : "'list_id'");
    for (int i = 0; i < 2; i++) {
        if (!json_is_integer(v[i]))
            return cel_task_raise(t, "builtins", "TypeError",
                                  "enrich_list(): %s must be an int, not %s", names[i],
                                  py_type(v[i]));
        if (json_integer_value(v[i]) <= 0)
            return cel_task_raise(t, "builtins", "ValueError",
                                  "enrich_list(): %s must be a positive integer, not %" JSON_INTEGER_FORMAT,
                                  names[i], json_integer_value(v[i]));
    }
    *job = json_integer_value(v[0]);
    *list = json_integer_value(v[1]);
    return 0;
}

/* --- the job ---------------------------------------------------------------- */

typedef struct job {
    cel_task *t;
    char id[24], list[24];
    long long total, processed;
    long long rpc, wpc, review, no_data;
    double t0;
    double t_read, t_score, t_copy, t_update; /* seconds waited per phase (timing line) */
    int rpc_committed; /* the rpc transaction committed (or may have) */
    /* `work`'s pipeline: a batch's COPY into enrich_out (W_COPY), then its
     * UPDATE of list_entries (W_UPDATE), sent as soon as the COPY is done,
     * even mid-way through scoring the next batch, so `work` never idles. */
    PGconn *w;
    int wstate;             /* W_IDLE, W_COPY, W_UPDATE */
    char upd_lo[24], upd_hi[24]; /* the id range of the UPDATE to send (UPD_SQL) */
    int wfail, wtransient;  /* an error on `work` met while advancing */
    char *werr;             /* its text (g_werr) */
} job;

static char g_werr[ERRCAP];

/* SET takes no parameters; set_config() does ($1 = g_lock_timeout). */
static const char SET_LOCK_TIMEOUT[] = "SELECT set_config('lock_timeout', $1, false)";
static char g_lock_timeout[24]; /* g_lock_timeout_ms as text, in milliseconds */

/* A batch's list_entries UPDATE ($1 job, $2..$3 the batch's id range).
 * enrich_out is emptied by the next batch's COPY (copy_send sends
 * "TRUNCATE enrich_out; COPY ..."), so this stays one statement and can
 * carry its values as parameters. */
static const char UPD_SQL[] =
    "UPDATE list_entries e SET rpc_score = o.score, rpc_class = o.class,"
    " rpc_reasons = o.reasons, name_normalized = o.name_normalized,"
    " name_given = o.name_given, name_middle = o.name_middle,"
    " name_surname = o.name_surname, name_suffix = o.name_suffix,"
    " contact_normalized = o.contact_normalized, phone_digits = o.phone_digits,"
    " phone_valid = o.phone_valid, enriched_at = now(), last_job_id = $1"
    " FROM enrich_out o WHERE e.id = o.entry_id AND e.id BETWEEN $2 AND $3";

enum { W_IDLE, W_COPY, W_UPDATE };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Outcome of a failed step. */
enum { E_TRANSIENT = 1, E_PERMANENT = 2, E_SOFT_LIMIT = 3 };

static double retry_countdown(int retries)
{
    double d = g_retry_base;
    for (int i = 0; i < retries && d < g_retry_cap; i++)
        d *= 2;
    if (d > g_retry_cap)
        d = g_retry_cap;
    /* "Equal jitter": between half and all of the exponential delay, so
     * duplicates that failed together do not come back together. */
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    double u = (double)rand_r(&seed) / RAND_MAX;
    return d * (0.5 + 0.5 * u);
}

/* Ends a failed attempt: rolls back, records the job row, and returns the
 * task's status (RETRY or FAILURE). */
static void rpc_cleanup(job *j);

static int fail(job *j, int kind, const char *err)
{
    cel_task *t = j->t;
    work_rollback();
    if (kind == E_TRANSIENT) {
        int retries = cel_task_retries(t);
        if (retries < g_max_retries) {
            /* rpc_scores rows the attempt may have committed: the retry
             * replaces them (its rpc transaction starts with a DELETE). */
            double countdown = retry_countdown(retries);
            char msg[ERRCAP + 64];
            snprintf(msg, sizeof msg, "retry %d/%d in %.1fs: %s", retries + 1, g_max_retries,
                     countdown, err);
            const char *p[] = {j->id, msg};
            status_update("UPDATE enrichment_queue_jobs SET status = 'retrying', error = $2"
                          " WHERE id = $1 AND status <> 'succeeded'",
                          2, p);
            cel_task_log(t, CEL_TASK_WARNING, "enrich_list(%s, %s): transient database error, %s",
                         j->id, j->list, msg);
            return cel_task_retry(t, countdown);
        }
        char msg[ERRCAP + 64];
        snprintf(msg, sizeof msg, "database error after %d retries: %s", g_max_retries, err);
        rpc_cleanup(j);
        job_mark_failed(j->id, msg);
        return cel_task_raise(t, "psycopg2", "OperationalError", "enrich_list(%s, %s): %s", j->id,
                              j->list, msg);
    }
    if (kind == E_SOFT_LIMIT) {
        rpc_cleanup(j);
        job_mark_failed(j->id, "soft time limit exceeded; nothing was written");
        return cel_task_raise(t, "celery.exceptions", "SoftTimeLimitExceeded",
                              "enrich_list(%s, %s): soft time limit exceeded after %lld of %lld "
                              "entries; rolled back",
                              j->id, j->list, j->processed, j->total);
    }
    rpc_cleanup(j);
    job_mark_failed(j->id, err);
    return cel_task_raise(t, "psycopg2", "DatabaseError", "enrich_list(%s, %s): %s", j->id,
                          j->list, err);
}

/* A failed attempt that is not retried and whose rpc transaction committed
 * (only possible if the work COMMIT then failed): remove its rpc_scores rows
 * unless the job did succeed after all (a COMMIT whose answer was lost).  The
 * job's advisory lock waits until that COMMIT's fate is settled. */
static void rpc_cleanup(job *j)
{
    if (!j->rpc_committed)
        return;
    const char *p[] = {j->id};
    const char *lt[] = {g_lock_timeout};
    status_update(SET_LOCK_TIMEOUT, 1, lt);
    /* The lock first, the DELETE after it: the DELETE's snapshot then sees
     * how that COMMIT ended (READ COMMITTED, autocommit). */
    if (status_update("SELECT pg_advisory_lock(1701733996, hashint8($1::bigint))", 1, p) < 0)
        return; /* not settled: leave the rows to a later run of the job */
    status_update("DELETE FROM rpc_scores WHERE job_id = $1 AND NOT EXISTS"
                  " (SELECT FROM enrichment_queue_jobs WHERE id = $1 AND status = 'succeeded')",
                  1, p);
    status_update("SELECT pg_advisory_unlock(1701733996, hashint8($1::bigint))", 1, p);
}

#define TRY(expr)                                                                          \
    do {                                                                                   \
        if ((expr) < 0)                                                                    \
            return fail(j, transient ? E_TRANSIENT : E_PERMANENT, err);                    \
    } while (0)

static const char TMP_TABLE[] =
    "CREATE TEMP TABLE enrich_out ("
    " entry_id bigint NOT NULL, score smallint, class text NOT NULL, reasons text NOT NULL,"
    " name_normalized text, name_given text, name_middle text, name_surname text,"
    " name_suffix text, contact_normalized text, phone_digits text, phone_valid boolean"
    ") ON COMMIT DROP";

static int finish_results(PGconn *c, char *err, int *transient);

/* The rows of a query sent with PQsendQuery (a FETCH), or NULL with err. */
static PGresult *fetch_result(PGconn *c, char *err, int *transient)
{
    PGresult *res = NULL, *r;
    while ((r = PQgetResult(c)) != NULL) {
        if (!res && PQresultStatus(r) == PGRES_TUPLES_OK) {
            res = r;
            continue;
        }
        if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
            cel_pg_error(c, r, err, ERRCAP);
            *transient = cel_pg_transient(c, r);
            PQclear(res);
            res = NULL;
            PQclear(r);
            while ((r = PQgetResult(c)) != NULL)
                PQclear(r);
            return NULL;
        }
        PQclear(r);
    }
    if (!res) {
        cel_pg_error(c, NULL, err, ERRCAP);
        *transient = cel_pg_transient(c, NULL);
    }
    return res;
}

/* Advances `work`'s pipeline: if the COPY into enrich_out is done (or,
 * with block, once it is), reads its outcome and sends the batch's UPDATE. */
static void w_advance(job *j, int block)
{
    if (j->wstate != W_COPY || j->wfail)
        return;
    if (!block && (!PQconsumeInput(j->w) || PQisBusy(j->w))) {
        if (PQstatus(j->w) == CONNECTION_OK)
            return; /* still ingesting */
    }
    j->wstate = W_IDLE;
    if (finish_results(j->w, j->werr, &j->wtransient) < 0) {
        j->wfail = 1;
        return;
    }
    const char *p[] = {j->id, j->upd_lo, j->upd_hi};
    if (!PQsendQueryParams(j->w, UPD_SQL, 3, NULL, p, NULL, NULL, 0)) {
        cel_pg_error(j->w, NULL, j->werr, ERRCAP);
        j->wtransient = cel_pg_transient(j->w, NULL);
        j->wfail = 1;
        return;
    }
    j->wstate = W_UPDATE;
}

/* Scores one FETCHed batch into two COPY text buffers: `out` for the
 * enrich_out temporary table (list_entries' new values), `sc` for rpc_scores;
 * lo/hi get the batch's first and last id.  Keeps `work`'s pipeline moving. */
static int score_batch(job *j, PGresult *r, buf *out, buf *sc, char lo[24], char hi[24])
{
    static cel_score_name a, b;
    char field[FIELDCAP], reasons[256], phone[64];
    int rows = PQntuples(r);
    if (rows > 0) { /* ids in order (ORDER BY id): the batch's range */
        snprintf(lo, 24, "%s", PQgetvalue(r, 0, 0));
        snprintf(hi, 24, "%s", PQgetvalue(r, rows - 1, 0));
    }
    for (int i = 0; i < rows; i++) {
        if ((i & 255) == 255)
            w_advance(j, 0);
        const char *full = PQgetisnull(r, i, 1) ? NULL : PQgetvalue(r, i, 1);
        const char *contact = PQgetisnull(r, i, 2) ? NULL : PQgetvalue(r, i, 2);
        const char *ph = PQgetisnull(r, i, 3) ? NULL : PQgetvalue(r, i, 3);
        cel_score_prepare(full, full ? (size_t)PQgetlength(r, i, 1) : 0, &a);
        cel_score_prepare(contact, contact ? (size_t)PQgetlength(r, i, 2) : 0, &b);
        cel_score_result s = cel_score_compare(&a, &b);
        switch (s.cls) {
        case CEL_SCORE_RPC: j->rpc++; break;
        case CEL_SCORE_WPC: j->wpc++; break;
        case CEL_SCORE_REVIEW: j->review++; break;
        default: j->no_data++; break;
        }
        int rc = copy_field(out, PQgetvalue(r, i, 0), 0, '\t');
        char num[16];
        snprintf(num, sizeof num, "%d", s.score);
        const char *score = s.cls == CEL_SCORE_NO_DATA ? NULL : num;
        const char *cls = cel_score_class_name(s.cls);
        rc |= copy_field(out, score, 0, '\t');
        rc |= copy_field(out, cls, 0, '\t');
        cel_score_reasons_format(s.reasons, reasons, sizeof reasons);
        rc |= copy_field(out, reasons, 0, '\t');
        rc |= copy_field(sc, j->id, 0, '\t');
        rc |= copy_field(sc, PQgetvalue(r, i, 0), 0, '\t');
        rc |= copy_field(sc, score, 0, '\t');
        rc |= copy_field(sc, cls, 0, '\t');
        rc |= copy_field(sc, reasons, 0, '\t');
        rc |= copy_field(sc, cel_score_model_version(), 0, '\n');
        static const cel_score_field fields[] = {CEL_SCORE_FIELD_FULL, CEL_SCORE_FIELD_GIVEN,
                                                 CEL_SCORE_FIELD_MIDDLE, CEL_SCORE_FIELD_SURNAME,
                                                 CEL_SCORE_FIELD_SUFFIX};
        for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++) {
            cel_score_name_field(&a, fields[f], field, sizeof field);
            rc |= copy_field(out, field, 1, '\t');
        }
        cel_score_name_field(&b, CEL_SCORE_FIELD_FULL, field, sizeof field);
        rc |= copy_field(out, field, 1, '\t');
        int valid = 0;
        int has = phone_normalize(ph, phone, sizeof phone, &valid);
        rc |= copy_field(out, has ? phone : NULL, 0, '\t');
        rc |= copy_field(out, ph ? (valid ? "t" : "f") : NULL, 0, '\n');
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* Sends `COPY ... FROM STDIN` (after other statements, e.g. "TRUNCATE t;
 * COPY t FROM STDIN": PQexec stops at the COPY) with all of data, without waiting for the
 * server to finish ingesting it (finish_results reads the outcome). In blocking
 * mode PQputCopyEnd has flushed everything, so `data` may be reused at once. */
static int copy_send(PGconn *c, const char *sql, const buf *data, char *err, int *transient)
{
    PGresult *r = PQexec(c, sql);
    if (!r || PQresultStatus(r) != PGRES_COPY_IN) {
        cel_pg_error(c, r, err, ERRCAP);
        *transient = cel_pg_transient(c, r);
        PQclear(r);
        return -1;
    }
    PQclear(r);
    if (PQputCopyData(c, data->p, (int)data->len) != 1 || PQputCopyEnd(c, NULL) != 1) {
        cel_pg_error(c, NULL, err, ERRCAP);
        *transient = cel_pg_transient(c, NULL);
        while ((r = PQgetResult(c)) != NULL)
            PQclear(r);
        return -1;
    }
    return 0;
}

/* Reads the outcome of what was sent last (a COPY from copy_send, or the
 * statements of a PQsendQuery): 0 if every result is a success. */
static int finish_results(PGconn *c, char *err, int *transient)
{
    int rc = 0;
    PGresult *r;
    while ((r = PQgetResult(c)) != NULL) {
        if (rc == 0 && PQresultStatus(r) != PGRES_COMMAND_OK) {
            cel_pg_error(c, r, err, ERRCAP);
            *transient = cel_pg_transient(c, r);
            rc = -1;
        }
        PQclear(r);
    }
    return rc;
}

static int enrich_list(cel_task *t, const json_t *args, const json_t *kwargs)
{
    json_int_t job_id = 0, list_id = 0;
    int rc = bind_args(t, args, kwargs, &job_id, &list_id);
    if (rc)
        return rc;
    job jb = {.t = t, .t0 = now_s()};
    job *j = &jb;
    snprintf(j->id, sizeof j->id, "%" JSON_INTEGER_FORMAT, job_id);
    snprintf(j->list, sizeof j->list, "%" JSON_INTEGER_FORMAT, list_id);
    char err[ERRCAP] = "";
    int transient = 0, config_error = 0;

    PGconn *st = conn_get(&g_status, err, &config_error);
    PGconn *w = st ? conn_get(&g_work, err, &config_error) : NULL;
    if (!w) {
        if (config_error)
            return cel_task_raise(t, "builtins", "RuntimeError", "enrich_list: %s", err);
        return fail(j, E_TRANSIENT, err);
    }
    work_rollback(); /* a previous attempt's leftovers, should there be any */

    /* The job row exists from here on (the dispatcher may have created it). */
    const char *task_id = cel_task_id(t);
    {
        const char *p[] = {j->id, j->list, task_id};
        TRY(qx(st,
               "INSERT INTO enrichment_queue_jobs (id, list_id, task_id, status)"
               " VALUES ($1, $2, $3, 'queued') ON CONFLICT (id) DO NOTHING",
               3, p, err, &transient));
    }

    /* The job's one transaction; the advisory lock serialises duplicates. */
    char sql[512];
    const char *lt[] = {g_lock_timeout};
    TRY(qx(w, SET_LOCK_TIMEOUT, 1, lt, err, &transient));
    TRY(qx(w, "BEGIN", 0, NULL, err, &transient));
    /* Room for the per-batch UPDATE ... FROM's hash (kept from the one-UPDATE
     * design: measured no faster without it). */
    TRY(qx(w, "SET LOCAL work_mem = '64MB'", 0, NULL, err, &transient));
    {
        const char *p[] = {j->id};
        TRY(qx(w, "SELECT pg_advisory_xact_lock(1701733996, hashint8($1::bigint))", 1, p, err,
               &transient));
    }
    PGresult *r;
    {
        const char *p[] = {j->id};
        r = q(w, "SELECT list_id, status, summary FROM enrichment_queue_jobs WHERE id = $1", 1, p,
              err, &transient);
        if (!r)
            return fail(j, transient ? E_TRANSIENT : E_PERMANENT, err);
    }
    if (PQntuples(r) != 1) {
        PQclear(r);
        return fail(j, E_PERMANENT, "job row vanished");
    }
    char row_list[24], row_status[16];
    snprintf(row_list, sizeof row_list, "%s", PQgetvalue(r, 0, 0));
    snprintf(row_status, sizeof row_status, "%s", PQgetvalue(r, 0, 1));
    if (!strcmp(row_status, "succeeded") && strcmp(row_list, j->list) == 0) {
        /* Finished before (a duplicate dispatch or a redelivery after the
         * commit): its stored summary, and nothing rewritten. */
        json_t *summary = json_loads(PQgetvalue(r, 0, 2), 0, NULL);
        PQclear(r);
        work_rollback();
        if (!summary)
            return cel_task_raise(t, "builtins", "RuntimeError",
                                  "enrich_list(%s, %s): job succeeded but its summary is unreadable",
                                  j->id, j->list);
        cel_task_log(t, CEL_TASK_INFO, "enrich_list(%s, %s): already succeeded; returning its summary",
                     j->id, j->list);
        return cel_task_return(t, summary);
    }
    PQclear(r);
    if (strcmp(row_list, j->list) != 0) {
        work_rollback();
        char msg[256];
        snprintf(msg, sizeof msg, "job %s belongs to list %s, not list %s", j->id, row_list,
                 j->list);
        if (strcmp(row_status, "succeeded") != 0)
            job_mark_failed(j->id, msg);
        return cel_task_raise(t, "builtins", "ValueError", "enrich_list(%s, %s): %s", j->id,
                              j->list, msg);
    }
    if (!strcmp(row_status, "revoked")) {
        work_rollback();
        return cel_task_raise(t, "celery.exceptions", "TaskRevokedError",
                              "enrich_list(%s, %s): job was revoked", j->id, j->list);
    }
    {
        const char *p[] = {j->list};
        r = q(w, "SELECT (SELECT count(*) FROM lists WHERE id = $1),"
                 " (SELECT count(*) FROM list_entries WHERE list_id = $1)",
              1, p, err, &transient);
        if (!r)
            return fail(j, transient ? E_TRANSIENT : E_PERMANENT, err);
        int known = atoi(PQgetvalue(r, 0, 0));
        j->total = atoll(PQgetvalue(r, 0, 1));
        PQclear(r);
        if (!known) {
            work_rollback();
            char msg[256];
            snprintf(msg, sizeof msg, "unknown list %s", j->list);
            job_mark_failed(j->id, msg);
            return cel_task_raise(t, "builtins", "ValueError", "enrich_list(%s, %s): %s", j->id,
                                  j->list, msg);
        }
    }
    {
        char total[24];
        snprintf(total, sizeof total, "%lld", j->total);
        const char *p[] = {j->id, cel_task_hostname(t), task_id, total};
        TRY(qx(st,
               "UPDATE enrichment_queue_jobs SET status = 'running', attempts = attempts + 1,"
               " started_at = now(), finished_at = NULL, duration_ms = NULL, error = NULL,"
               " worker = $2, task_id = $3, total = $4, processed = 0 WHERE id = $1",
               4, p, err, &transient));
    }
    cel_task_update_state(t, "PROGRESS", json_pack("{s:I, s:I}", "current", (json_int_t)0,
                                                   "total", (json_int_t)j->total));

    TRY(qx(w, TMP_TABLE, 0, NULL, err, &transient));

    /* The rpc_scores transaction, on a connection of its own so that the
     * server ingests rpc_scores (here) and rewrites list_entries (on `work`)
     * at the same time, on two cores.  It holds the job's second advisory
     * lock (a session left over from an earlier attempt ends first), removes
     * the rows of an earlier, unfinished attempt, and reads the list; it
     * commits just before `work` does (docs/enrich.md, "Exactly-once"). */
    PGconn *rp = conn_get(&g_rpc, err, &config_error);
    if (!rp)
        return fail(j, E_TRANSIENT, err);
    TRY(qx(rp, SET_LOCK_TIMEOUT, 1, lt, err, &transient));
    TRY(qx(rp, "BEGIN", 0, NULL, err, &transient));
    {
        const char *p[] = {j->id};
        TRY(qx(rp, "SELECT pg_advisory_xact_lock(1701733997, hashint8($1::bigint))", 1, p, err,
               &transient));
        TRY(qx(rp, "DELETE FROM rpc_scores WHERE job_id = $1", 1, p, err, &transient));
    }
    {
        const char *p[] = {j->list};
        TRY(qx(rp,
               "DECLARE enrich_cur NO SCROLL CURSOR FOR SELECT id, full_name, contact_name, phone"
               " FROM list_entries WHERE list_id = $1 ORDER BY id",
               1, p, err, &transient));
    }
    /* The one statement with a number in its text: FETCH takes no
     * parameter for its count, and g_batch is a long read at load time. */
    snprintf(sql, sizeof sql, "FETCH FORWARD %ld FROM enrich_cur", g_batch);
    /* A pipeline of three stages over two cores: while the server ingests
     * batch k into rpc_scores (on `rpc`) and updates list_entries from it (on
     * `work`, COPY into enrich_out then UPDATE ... FROM enrich_out for the
     * batch's id range), this process scores batch k+1. */
    buf out = {0}, sc = {0};
    char lo[24] = "", hi[24] = ""; /* the id range of the batch in out/sc */
    int kind = 0;                  /* set on failure: E_* */
    j->w = w;
    j->wstate = W_IDLE;
    j->werr = g_werr;
    double ta = now_s();
    r = q(rp, sql, 0, NULL, err, &transient);
    j->t_read += now_s() - ta;
    if (!r)
        return fail(j, transient ? E_TRANSIENT : E_PERMANENT, err);
    int rows = PQntuples(r);
    if (rows > 0) {
        ta = now_s();
        if (score_batch(j, r, &out, &sc, lo, hi) < 0)
            kind = E_PERMANENT, snprintf(err, ERRCAP, "out of memory");
        j->t_score += now_s() - ta;
    }
    PQclear(r);
    int prefetched = 0; /* the FETCH of the next batch was sent already */
    while (rows > 0 && !kind) {
        /* batch k is scored, in out/sc (ids lo..hi) */
        ta = now_s();
        PGresult *next = prefetched ? fetch_result(rp, err, &transient)
                                    : q(rp, sql, 0, NULL, err, &transient);
        prefetched = 0;
        j->t_read += now_s() - ta;
        if (!next) {
            kind = transient ? E_TRANSIENT : E_PERMANENT;
            break;
        }
        ta = now_s();
        if (j->wstate == W_UPDATE) { /* batch k-1's UPDATE */
            j->wstate = W_IDLE;
            if (finish_results(w, j->werr, &j->wtransient) < 0)
                j->wfail = 1;
        }
        j->t_update += now_s() - ta;
        if (j->wfail) {
            PQclear(next);
            break;
        }
        ta = now_s();
        if (copy_send(w, "TRUNCATE enrich_out; COPY enrich_out FROM STDIN", &out, err,
                      &transient) < 0 ||
            copy_send(rp,
                      "COPY rpc_scores (job_id, list_entry_id, score, class, reasons,"
                      " model_version) FROM STDIN",
                      &sc, err, &transient) < 0) {
            PQclear(next);
            kind = transient ? E_TRANSIENT : E_PERMANENT;
            break;
        }
        j->t_copy += now_s() - ta;
        j->wstate = W_COPY;
        snprintf(j->upd_lo, sizeof j->upd_lo, "%s", lo);
        snprintf(j->upd_hi, sizeof j->upd_hi, "%s", hi);
        int next_rows = PQntuples(next);
        ta = now_s();
        out.len = sc.len = 0;
        int scored = next_rows > 0 ? score_batch(j, next, &out, &sc, lo, hi) : 0;
        j->t_score += now_s() - ta;
        PQclear(next);
        ta = now_s();
        w_advance(j, 1); /* batch k's UPDATE, if scoring did not send it */
        int crc = j->wfail ? 0 : finish_results(rp, err, &transient);
        j->t_copy += now_s() - ta;
        if (j->wfail)
            break;
        if (crc < 0) {
            kind = transient ? E_TRANSIENT : E_PERMANENT;
            break;
        }
        if (scored < 0) {
            kind = E_PERMANENT;
            snprintf(err, ERRCAP, "out of memory");
            break;
        }
        /* `rpc` reads batch k+2 while this process reports progress */
        if (next_rows > 0) {
            if (!PQsendQuery(rp, sql)) {
                cel_pg_error(rp, NULL, err, ERRCAP);
                transient = cel_pg_transient(rp, NULL);
                kind = transient ? E_TRANSIENT : E_PERMANENT;
                break;
            }
            prefetched = 1;
        }
        /* batch k is in rpc_scores; its list_entries UPDATE may still run */
        j->processed += rows;
        rows = next_rows;
        cel_task_update_state(t, "PROGRESS",
                              json_pack("{s:I, s:I}", "current", (json_int_t)j->processed,
                                        "total", (json_int_t)(j->total > j->processed
                                                                  ? j->total
                                                                  : j->processed)));
        progress_update(j->id, j->processed);
        if (g_batch_sleep_ms > 0)
            usleep((useconds_t)g_batch_sleep_ms * 1000);
        if (cel_task_soft_limit_exceeded(t)) {
            kind = E_SOFT_LIMIT;
            snprintf(err, ERRCAP, "soft time limit exceeded");
        }
    }
    free(out.p);
    free(sc.p);
    if (!kind && !j->wfail && j->wstate == W_UPDATE) {
        ta = now_s();
        if (finish_results(w, j->werr, &j->wtransient) < 0)
            j->wfail = 1;
        j->wstate = W_IDLE;
        j->t_update += now_s() - ta;
    }
    if (!kind && j->wfail) {
        kind = j->wtransient ? E_TRANSIENT : E_PERMANENT;
        snprintf(err, ERRCAP, "%s", j->werr);
    }
    if (kind)
        return fail(j, kind, err);
    j->total = j->processed; /* what was read, in the cursor's snapshot */

    double t_fin = now_s();
    char n_total[24], n_rpc[24], n_wpc[24], n_review[24], n_nodata[24];
    snprintf(n_total, sizeof n_total, "%lld", j->total);
    snprintf(n_rpc, sizeof n_rpc, "%lld", j->rpc);
    snprintf(n_wpc, sizeof n_wpc, "%lld", j->wpc);
    snprintf(n_review, sizeof n_review, "%lld", j->review);
    snprintf(n_nodata, sizeof n_nodata, "%lld", j->no_data);
    json_int_t export_id;
    {
        const char *p[] = {j->id, j->list, n_total, n_rpc, n_wpc, n_review, n_nodata};
        r = q(w,
              "INSERT INTO export_jobs (enrichment_job_id, list_id, status, row_count, rpc_count,"
              " wpc_count, review_count, no_data_count) VALUES ($1, $2, 'pending', $3, $4, $5,"
              " $6, $7) ON CONFLICT (enrichment_job_id) DO UPDATE SET list_id = EXCLUDED.list_id,"
              " status = EXCLUDED.status, row_count = EXCLUDED.row_count,"
              " rpc_count = EXCLUDED.rpc_count, wpc_count = EXCLUDED.wpc_count,"
              " review_count = EXCLUDED.review_count, no_data_count = EXCLUDED.no_data_count,"
              " created_at = now() RETURNING id",
              7, p, err, &transient);
        if (!r)
            return fail(j, transient ? E_TRANSIENT : E_PERMANENT, err);
        export_id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
    }
    if (cel_task_soft_limit_exceeded(t))
        return fail(j, E_SOFT_LIMIT, "soft time limit exceeded");
    json_int_t duration_ms = (json_int_t)((now_s() - j->t0) * 1000.0 + 0.5);
    json_t *summary = json_pack(
        "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "job_id", job_id, "list_id", list_id,
        "total", (json_int_t)j->total, "rpc", (json_int_t)j->rpc, "wpc", (json_int_t)j->wpc,
        "review", (json_int_t)j->review, "no_data", (json_int_t)j->no_data, "duration_ms",
        duration_ms, "export_job_id", export_id);
    char *text = summary ? json_dumps(summary, JSON_COMPACT) : NULL;
    if (!text) {
        json_decref(summary);
        return fail(j, E_PERMANENT, "out of memory");
    }
    {
        char dur[24];
        snprintf(dur, sizeof dur, "%" JSON_INTEGER_FORMAT, duration_ms);
        const char *p[] = {j->id, dur, n_total, text};
        rc = qx(w,
                "UPDATE enrichment_queue_jobs SET status = 'succeeded', finished_at = now(),"
                " duration_ms = $2, total = $3, processed = $3, error = NULL, summary = $4"
                " WHERE id = $1",
                4, p, err, &transient);
        free(text);
        if (rc < 0) {
            json_decref(summary);
            return fail(j, transient ? E_TRANSIENT : E_PERMANENT, err);
        }
    }
    /* rpc_scores first, then the job's `succeeded` with list_entries and
     * export_jobs.  Between the two commits the rows exist for a job that is
     * not yet succeeded; a crash there leaves them to the next attempt, which
     * replaces them (and fail() removes them when there is none). */
    j->rpc_committed = 1; /* or maybe: a COMMIT whose answer is lost */
    if (qx(rp, "COMMIT", 0, NULL, err, &transient) < 0) {
        json_decref(summary);
        return fail(j, transient ? E_TRANSIENT : E_PERMANENT, err);
    }
    if (qx(w, "COMMIT", 0, NULL, err, &transient) < 0) {
        /* A COMMIT whose answer was lost may or may not have committed: the
         * retry finds out (a succeeded job returns its stored summary). */
        json_decref(summary);
        return fail(j, transient ? E_TRANSIENT : E_PERMANENT, err);
    }
    double t_end = now_s();
    cel_task_log(t, CEL_TASK_INFO,
                 "enrich_list(%s, %s): %lld entries in %.3fs: fetch %.3fs, score %.3fs,"
                 " wait for COPY %.3fs, wait for list_entries UPDATE %.3fs, export+commit %.3fs",
                 j->id, j->list, j->total, t_end - j->t0, j->t_read, j->t_score, j->t_copy,
                 j->t_update, t_end - t_fin);
    return cel_task_return(t, summary);
}

int celeriac_module_init(cel_registry *reg)
{
    g_max_retries = (int)env_long("ENRICH_MAX_RETRIES", 5, 0, 1000);
    g_retry_base = env_double("ENRICH_RETRY_BASE", 2.0);
    g_retry_cap = env_double("ENRICH_RETRY_MAX", 300.0);
    g_batch = env_long("ENRICH_BATCH_SIZE", 10000, 1, 1000000);
    g_batch_sleep_ms = env_long("ENRICH_TEST_BATCH_SLEEP_MS", 0, 0, 600000);
    g_lock_timeout_ms = env_long("ENRICH_LOCK_TIMEOUT_MS", 60000, 0, 86400000);
    snprintf(g_lock_timeout, sizeof g_lock_timeout, "%ld", g_lock_timeout_ms);
    cel_task_options o = {
        .acks_late = CEL_OPTION_YES,
        /* A pool process lost mid-job (OOM kill, ...) puts the job back:
         * nothing it wrote was committed, so running it again is safe. */
        .reject_on_worker_lost = CEL_OPTION_YES,
        .max_retries = g_max_retries == 0 ? CEL_RETRIES_NONE : g_max_retries,
        .default_retry_delay = g_retry_base,
    };
    return cel_register(reg, "enrich_list", enrich_list, &o);
}
