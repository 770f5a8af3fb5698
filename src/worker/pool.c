/* pool.c — prefork and solo execution pools (see pool.h for the design).
 *
 * Why one shared SEQPACKET queue: with a socket per child, every job costs a
 * parent wake-up between two tasks of the same child, and on a small machine
 * those context switches, not the tasks, bound the rate.  A shared queue
 * that only idle children read keeps the children busy while the parent
 * talks to Redis, and stays fair: no job ever waits behind a long task.
 *
 * Why PR_SET_PDEATHSIG: after a kill -9 of the parent, orphaned children must
 * not finish tasks whose messages the broker will redeliver to another
 * worker.
 *
 * Why shrinking goes through the job queue: pool_shrink must never stop a
 * process in the middle of a task (billiard retires only idle processes).
 * A "retire" datagram (job id 0, nothing else) is queued behind the jobs
 * already there; whichever process reads it is by definition between two
 * tasks, and exits.  No per-process signal, no race with a process that
 * is just taking a job, and no extra system call on the hot path.
 *
 * Why a shared revoked table: a datagram in the queue cannot be taken back
 * selectively, yet Celery never runs a task revoked before a process started
 * it.  The parent writes a revoked job's id into a MAP_SHARED table mapped
 * before the fork; a child looks there as it takes a job and, on a hit,
 * skips it and reports it revoked instead of started.
 */
#include "worker/pool.h"
#include "core/log.h"
#include "core/util.h"
#include "worker/exec.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CEL_FRAME_MAX (512u * 1024 * 1024)
/* Requests up to this size travel inline in the datagram; larger ones in a
 * memfd.  Well under the default socket buffer, so a send never fails for
 * size. */
#define INLINE_MAX (32u * 1024)
/* The retire datagram's job id: real jobs count from 1 (worker.c). */
#define RETIRE_JOB 0

/* Report frames, child -> parent: a 4-byte length (host order), then this
 * header, then `len - sizeof(frame_hdr)` bytes of record text. */
enum {
    FRAME_STARTED = 1,
    FRAME_DONE = 2,
    FRAME_STATE = 3,
    FRAME_PUBLISH = 4,
    FRAME_STORE = 5,
    FRAME_CHORD = 6
};

typedef struct frame_hdr {
    uint8_t kind;
    uint8_t status;    /* cel_outcome_status, FRAME_DONE */
    uint8_t pad[6];
    uint64_t job;
    double runtime;
    double countdown;
    double eta;
} frame_hdr;

/* Revoked jobs still in the queue.  `used` lets a child skip the scan in
 * the usual case of none; a slot is 0 when free.  The queue holds at most 4
 * jobs per process, so up to 256 processes the table cannot fill; past
 * that a revoke finding no slot lets the job run.  A slot is freed by the
 * child that skips the job, or by the parent when the job started anyway
 * (revoked too late) or was reclaimed. */
#define REVOKED_SLOTS 1024
typedef struct revoked_table {
    _Atomic uint32_t used;
    _Atomic uint64_t job[REVOKED_SLOTS];
} revoked_table;

typedef struct child {
    pid_t pid;       /* 0 = slot empty */
    int fd;          /* parent's end of the report socket */
    int index;       /* 1-based, for ForkPoolWorker-N */
    bool running;
    uint64_t job;
    cel_buf in;
} child;

struct cel_pool {
    const cel_exec_env *env;
    cel_pool_events ev;
    void *ud;
    bool solo;
    int n;          /* slots in kids: live processes, retiring ones included */
    int retiring;   /* of those, told to exit (pool_shrink) and not reaped yet */
    int next_index; /* the next ForkPoolWorker-N number (pool_grow) */
    child *kids;
    int jobq[2];    /* [0] parent writes, [1] children read */
    int queued;     /* jobs in the queue not yet taken (staged ones too) */
    /* Jobs staged by cel_pool_submit, sent together by cel_pool_flush. */
    struct staged {
        uint64_t job;
        const char *raw;
        size_t len;
    } *stage;
    size_t nstage, capstage;
    bool stopping;
    uint64_t solo_job;
    revoked_table *revoked; /* MAP_SHARED with the children; NULL for solo */
};

/* ---- child side ------------------------------------------------------- */

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Writes one report frame, and optionally a second, header-only one (the
 * next job's `started`), in one writev. */
static int send_reports(int fd, const frame_hdr *h, const char *text, size_t len,
                        const frame_hdr *h2)
{
    uint32_t n = (uint32_t)(sizeof *h + len), n2 = (uint32_t)sizeof *h2;
    struct iovec iov[5] = {{&n, sizeof n}, {(void *)h, sizeof *h}, {(void *)text, len},
                           {&n2, sizeof n2}, {(void *)h2, sizeof *h2}};
    int cnt = 3;
    size_t total = sizeof n + n;
    if (h2) {
        cnt = 5;
        total += sizeof n2 + n2;
    }
    ssize_t w = writev(fd, iov, cnt);
    if (w == (ssize_t)total)
        return 0;
    if (w < 0 && errno != EINTR)
        return -1;
    /* Short write (a large record): send the rest in order. */
    char *buf = malloc(total), *q = buf;
    if (!buf)
        return -1;
    for (int i = 0; i < cnt; i++) {
        if (iov[i].iov_len)
            memcpy(q, iov[i].iov_base, iov[i].iov_len);
        q += iov[i].iov_len;
    }
    size_t done = w > 0 ? (size_t)w : 0;
    int rc = write_all(fd, buf + done, total - done);
    free(buf);
    return rc;
}

static int send_report(int fd, const frame_hdr *h, const char *text, size_t len)
{
    return send_reports(fd, h, text, len, NULL);
}

/* The soft time limit, child side.  The parent queues SIGUSR1 with the job
 * id (sigqueue), so a signal meant for a job that has just finished cannot
 * flag the next one.  No SA_RESTART: a task sleeping or reading is woken
 * (EINTR) to look at the flag, as Python's time.sleep is interrupted. */
static volatile sig_atomic_t g_soft;
static _Atomic uintptr_t g_job;

static void on_soft_limit(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_code == SI_QUEUE && (uintptr_t)si->si_value.sival_ptr == atomic_load(&g_job))
        g_soft = 1;
}

typedef struct child_ctx {
    int fd;
    uint64_t job;
} child_ctx;

static void child_state_cb(void *ud, int kind, const char *meta, size_t len)
{
    child_ctx *c = ud;
    frame_hdr h = {.kind = kind == CEL_NOTE_PUBLISH ? FRAME_PUBLISH
                           : kind == CEL_NOTE_STORE ? FRAME_STORE
                           : kind == CEL_NOTE_CHORD ? FRAME_CHORD
                                                    : FRAME_STATE,
                   .job = c->job};
    send_report(c->fd, &h, meta, len);
}

/* Receives one job: 8 bytes of job id, then the envelope.  Returns a
 * malloc'd buffer (length in *len), or NULL: at EOF (*len = 1) or, when not
 * blocking, when the queue is empty (*len = 0). */
static char *recv_job(int qfd, size_t *len, bool block)
{
    *len = 1;
    static char buf[INLINE_MAX + 64];
    char cbuf[CMSG_SPACE(sizeof(int))];
    for (;;) {
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                            .msg_controllen = sizeof cbuf};
        ssize_t r = recvmsg(qfd, &mh, MSG_CMSG_CLOEXEC | (block ? 0 : MSG_DONTWAIT));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && !block && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            *len = 0;
            return NULL;
        }
        if (r <= 0)
            return NULL;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int mfd;
            memcpy(&mfd, CMSG_DATA(cm), sizeof mfd);
            struct stat st;
            char *out = NULL;
            if (fstat(mfd, &st) == 0 && st.st_size > 8 && (size_t)st.st_size <= CEL_FRAME_MAX &&
                (out = malloc((size_t)st.st_size)) != NULL &&
                pread(mfd, out, (size_t)st.st_size, 0) != st.st_size) {
                free(out);
                out = NULL;
            }
            close(mfd);
            if (!out)
                continue; /* unreadable job: the parent's restore covers it */
            *len = (size_t)st.st_size;
            return out;
        }
        if (r < 8)
            continue;
        char *out = malloc((size_t)r);
        if (!out)
            return NULL;
        memcpy(out, buf, (size_t)r);
        *len = (size_t)r;
        return out;
    }
}

/* Clears `job` from the table if it is there; true when it was. */
static bool revoked_take(revoked_table *rt, uint64_t job)
{
    /* Free slots hold 0, the retire datagram's id: never match it. */
    if (!rt || job == RETIRE_JOB || !atomic_load(&rt->used))
        return false;
    for (size_t i = 0; i < REVOKED_SLOTS; i++) {
        uint64_t want = job;
        if (atomic_load(&rt->job[i]) == job &&
            atomic_compare_exchange_strong(&rt->job[i], &want, 0)) {
            atomic_fetch_sub(&rt->used, 1);
            return true;
        }
    }
    return false;
}

/* recv_job, skipping jobs revoked while they waited in the queue: each is
 * reported done with CEL_OUT_REVOKED, never started. */
static char *take_job(revoked_table *rt, int qfd, int fd, size_t *len, bool block)
{
    for (;;) {
        char *job = recv_job(qfd, len, block);
        uint64_t id;
        if (!job)
            return NULL;
        memcpy(&id, job, 8);
        if (!revoked_take(rt, id))
            return job;
        free(job);
        frame_hdr h = {.kind = FRAME_DONE, .status = CEL_OUT_REVOKED, .job = id};
        if (send_report(fd, &h, NULL, 0) < 0)
            _exit(3);
    }
}

static void child_main(const cel_exec_env *env, revoked_table *rt, int qfd, int fd, int index)
{
    char name[32];
    snprintf(name, sizeof name, "ForkPoolWorker-%d", index);
    cel_log_set_process(name);
    signal(SIGINT, SIG_IGN); /* the parent decides about shutdowns */
    signal(SIGTERM, SIG_IGN);
    signal(SIGHUP, SIG_IGN);  /* a terminal hangup or a restart is the parent's too */
    signal(SIGQUIT, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(0);
    struct sigaction sa = {.sa_sigaction = on_soft_limit, .sa_flags = SA_SIGINFO};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    size_t len;
    char *job = take_job(rt, qfd, fd, &len, true);
    bool started_sent = false;
    while (job) {
        child_ctx ctx = {.fd = fd};
        memcpy(&ctx.job, job, 8);
        if (ctx.job == RETIRE_JOB) {
            /* pool_shrink: idle now, so nothing is lost by leaving. */
            free(job);
            _exit(0);
        }
        /* Report the start first: the parent acks early-ack tasks now.  In a
         * busy stretch this went out with the previous job's report. */
        frame_hdr h = {.kind = FRAME_STARTED, .job = ctx.job};
        if (!started_sent && send_report(fd, &h, NULL, 0) < 0)
            _exit(3);
        cel_message m;
        char err[256];
        cel_outcome o = {0};
        cel_msg_status st = cel_message_parse_redis(job + 8, len - 8, &m, err, sizeof err);
        if (st == CEL_MSG_OK) {
            g_soft = 0;
            atomic_store(&g_job, (uintptr_t)ctx.job);
            cel_exec_run(env, &m, &g_soft, child_state_cb, &ctx, &o);
            atomic_store(&g_job, (uintptr_t)0);
        } else {
            cel_crit("Can't decode message body: %s (type:%s encoding:%s); the message has "
                     "been discarded",
                     err, m.content_type ? m.content_type : "?",
                     m.content_encoding ? m.content_encoding : "?");
            o.status = CEL_OUT_DISCARD;
        }
        cel_message_clear(&m);
        free(job);
        h = (frame_hdr){.kind = FRAME_DONE, .status = (uint8_t)o.status, .job = ctx.job,
                        .runtime = o.runtime, .countdown = o.countdown, .eta = o.eta};
        /* Take the next job now if one is waiting: its `started` then rides
         * in the same write as this report (one syscall and one parent
         * wake-up fewer per task). */
        char *next = take_job(rt, qfd, fd, &len, false);
        uint64_t next_id = RETIRE_JOB;
        if (next)
            memcpy(&next_id, next, 8);
        int rc;
        if (next && next_id != RETIRE_JOB) {
            frame_hdr h2 = {.kind = FRAME_STARTED};
            memcpy(&h2.job, next, 8);
            rc = send_reports(fd, &h, o.meta, o.meta_len, &h2);
            started_sent = true;
        } else {
            rc = send_report(fd, &h, o.meta, o.meta_len);
            started_sent = false;
        }
        cel_outcome_clear(&o);
        if (rc < 0)
            _exit(3);
        if (!next && len == 0)
            next = take_job(rt, qfd, fd, &len, true);
        job = next;
    }
    _exit(0);
}

/* ---- parent side ------------------------------------------------------ */

static int spawn(cel_pool *p, child *k)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (pid == 0) {
        close(sv[0]);
        close(p->jobq[0]);
        /* Other children's report sockets are inherited too; a child keeps
         * only its own. */
        for (int i = 0; i < p->n; i++)
            if (p->kids[i].pid && p->kids[i].fd >= 0)
                close(p->kids[i].fd);
        child_main(p->env, p->revoked, p->jobq[1], sv[1], k->index);
        _exit(0);
    }
    close(sv[1]);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    k->pid = pid;
    k->fd = sv[0];
    k->running = false;
    k->in.len = 0;
    return 0;
}

cel_pool *cel_pool_start(bool solo, int processes, const cel_exec_env *env,
                         const cel_pool_events *ev, void *ud, char *err, size_t errlen)
{
    cel_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->env = env;
    p->ev = *ev;
    p->ud = ud;
    p->solo = solo;
    p->n = solo ? 0 : processes;
    p->next_index = p->n + 1;
    p->jobq[0] = p->jobq[1] = -1;
    if (!solo) {
        p->kids = calloc((size_t)processes + 1, sizeof *p->kids);
        if (!p->kids ||
            socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, p->jobq) < 0) {
            snprintf(err, errlen, "cannot create the pool's job queue: %s", strerror(errno));
            free(p->kids);
            free(p);
            return NULL;
        }
        fcntl(p->jobq[0], F_SETFL, fcntl(p->jobq[0], F_GETFL) | O_NONBLOCK);
        void *rt = mmap(NULL, sizeof *p->revoked, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        p->revoked = rt == MAP_FAILED ? NULL : rt; /* without it revoked queued jobs run */
        for (int i = 0; i < processes; i++)
            p->kids[i].fd = -1;
        for (int i = 0; i < processes; i++) {
            p->kids[i].index = i + 1;
            if (spawn(p, &p->kids[i]) < 0) {
                snprintf(err, errlen, "cannot start pool process: %s", strerror(errno));
                cel_pool_stop(p, true);
                return NULL;
            }
        }
    }
    return p;
}

static int running_count(const cel_pool *p)
{
    int r = 0;
    for (int i = 0; i < p->n; i++)
        r += p->kids[i].running;
    return r;
}

int cel_pool_processes(const cel_pool *p) { return p->solo ? 0 : p->n - p->retiring; }

int cel_pool_idle(const cel_pool *p)
{
    if (p->solo)
        return 1;
    /* Four jobs per process (Celery's default prefetch multiplier): while
     * the parent waits on a Redis round trip the children still find work
     * in the queue.  Only idle children read it, so no job waits behind a
     * long task. */
    int room = 4 * cel_pool_processes(p) - running_count(p) - p->queued;
    return room > 0 ? room : 0;
}

int cel_pool_busy(const cel_pool *p) { return p->solo ? 0 : running_count(p) + p->queued; }

static void solo_state_cb(void *ud, int kind, const char *meta, size_t len)
{
    cel_pool *p = ud;
    if (kind == CEL_NOTE_PUBLISH) {
        if (p->ev.on_publish)
            p->ev.on_publish(p->ud, p->solo_job, meta, len);
    } else if (kind == CEL_NOTE_STORE) {
        if (p->ev.on_store)
            p->ev.on_store(p->ud, p->solo_job, meta, len);
    } else if (kind == CEL_NOTE_CHORD) {
        if (p->ev.on_chord)
            p->ev.on_chord(p->ud, p->solo_job, meta, len);
    } else {
        p->ev.on_state(p->ud, p->solo_job, meta, len);
    }
}

/* Sends a job too large for a datagram as a memfd. */
static int send_memfd(int qfd, uint64_t job, const char *raw, size_t len)
{
    int mfd = memfd_create("celeriac-job", MFD_CLOEXEC);
    if (mfd < 0)
        return -1;
    int rc = -1;
    if (write_all(mfd, &job, 8) == 0 && write_all(mfd, raw, len) == 0) {
        char one = 'm';
        struct iovec iov = {.iov_base = &one, .iov_len = 1};
        char cbuf[CMSG_SPACE(sizeof(int))];
        memset(cbuf, 0, sizeof cbuf);
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                            .msg_controllen = sizeof cbuf};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &mfd, sizeof mfd);
        rc = sendmsg(qfd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) == 1 ? 0 : -1;
    }
    close(mfd);
    return rc;
}

int cel_pool_submit(cel_pool *p, uint64_t job, const char *raw, size_t len,
                    const cel_message *m)
{
    if (p->solo) {
        p->solo_job = job;
        if (p->ev.on_started)
            p->ev.on_started(p->ud, job, getpid());
        cel_outcome o;
        cel_exec_run(p->env, m, NULL, solo_state_cb, p, &o);
        p->ev.on_outcome(p->ud, job, &o);
        cel_outcome_clear(&o);
        return 0;
    }
    if (cel_pool_idle(p) <= 0)
        return -1;
    if (len > INLINE_MAX) {
        /* The queue keeps its order: what is staged goes first. */
        cel_pool_flush(p);
        if (cel_pool_idle(p) <= 0 || send_memfd(p->jobq[0], job, raw, len) < 0)
            return -1;
        p->queued++;
        return 0;
    }
    if (cel_grow(&p->stage, &p->capstage, p->nstage, sizeof *p->stage, 16) < 0)
        return -1;
    p->stage[p->nstage++] = (struct staged){job, raw, len};
    p->queued++;
    return 0;
}

/* Why batch: one sendmsg per job was the parent's most frequent system call
 * (20000 for 20000 tasks, against 2500 polls); sendmmsg sends a turn's jobs
 * in one call, still one datagram each, so children take them one by one. */
void cel_pool_flush(cel_pool *p)
{
    enum { BATCH = 64 };
    size_t sent = 0;
    while (sent < p->nstage) {
        struct mmsghdr mm[BATCH];
        struct iovec iov[BATCH][2];
        unsigned n = 0;
        for (size_t i = sent; i < p->nstage && n < BATCH; i++, n++) {
            struct staged *j = &p->stage[i];
            iov[n][0] = (struct iovec){&j->job, 8};
            iov[n][1] = (struct iovec){(void *)j->raw, j->len};
            mm[n] = (struct mmsghdr){.msg_hdr = {.msg_iov = iov[n], .msg_iovlen = 2}};
        }
        int r;
        do
            r = sendmmsg(p->jobq[0], mm, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (r < 0 && errno == EINTR);
        if (r <= 0)
            break; /* EAGAIN: queue full; the rest stay with the caller */
        sent += (size_t)r;
        if ((unsigned)r < n)
            break;
    }
    size_t n = p->nstage;
    p->nstage = 0;
    for (size_t i = sent; i < n; i++) {
        p->queued--;
        if (p->ev.on_unsent)
            p->ev.on_unsent(p->ud, p->stage[i].job);
    }
}

static child *running_child(cel_pool *p, uint64_t job)
{
    for (int i = 0; i < p->n; i++)
        if (p->kids[i].pid > 0 && p->kids[i].running && p->kids[i].job == job)
            return &p->kids[i];
    return NULL;
}

int cel_pool_soft_timeout(cel_pool *p, uint64_t job)
{
    child *k = running_child(p, job);
    if (!k)
        return -1;
    union sigval v = {.sival_ptr = (void *)(uintptr_t)job};
    return sigqueue(k->pid, SIGUSR1, v);
}

int cel_pool_signal_job(cel_pool *p, uint64_t job, int signum)
{
    child *k = running_child(p, job);
    /* Pool processes ignore TERM and INT (a warm shutdown's TERM to the
     * process group must not kill running tasks): revoke's default
     * SIGTERM becomes SIGKILL for the one process. */
    if (signum == SIGTERM || signum == SIGINT)
        signum = SIGKILL;
    return k ? kill(k->pid, signum) : -1;
}

int cel_pool_kill_job(cel_pool *p, uint64_t job)
{
    child *k = running_child(p, job);
    if (!k)
        return -1;
    /* billiard sends TERM, then KILL; a C task has nothing to run on TERM
     * that the kill would spoil, and the slot is refilled at the reap. */
    return kill(k->pid, SIGKILL);
}

int cel_pool_reclaim(cel_pool *p, uint64_t *jobs, int max)
{
    int n = 0;
    if (p->solo || p->jobq[1] < 0)
        return 0;
    /* The parent holds the queue's read end too: a job it receives is one no
     * child will run.  Children racing for the same datagrams are fine —
     * each goes to exactly one reader. */
    while (n < max) {
        char buf[16];
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                            .msg_controllen = sizeof cbuf};
        ssize_t r = recvmsg(p->jobq[1], &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        uint64_t job = 0;
        bool retire = false;
        if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int mfd;
            memcpy(&mfd, CMSG_DATA(cm), sizeof mfd);
            if (pread(mfd, &job, 8, 0) != 8)
                job = 0;
            close(mfd);
        } else if (r >= 8) {
            memcpy(&job, buf, 8); /* MSG_TRUNC: the rest of the datagram is dropped */
            retire = r == 8 && job == RETIRE_JOB; /* a job carries its envelope */
        }
        if (retire) {
            /* A retire datagram taken back: that process stays. */
            if (p->retiring > 0)
                p->retiring--;
            continue;
        }
        if (p->queued > 0)
            p->queued--;
        revoked_take(p->revoked, job);
        if (job)
            jobs[n++] = job;
    }
    return n;
}

int cel_pool_pollfds(cel_pool *p, struct pollfd *fds, int max)
{
    int n = 0;
    for (int i = 0; i < p->n && n < max; i++) {
        child *k = &p->kids[i];
        if (!k->pid || k->fd < 0)
            continue;
        fds[n].fd = k->fd;
        fds[n].events = POLLIN;
        fds[n].revents = 0;
        n++;
    }
    return n;
}

static void handle_frame(cel_pool *p, child *k, const char *data, size_t len)
{
    frame_hdr h;
    if (len < sizeof h) {
        cel_error("Pool process %d sent a short frame", (int)k->pid);
        return;
    }
    memcpy(&h, data, sizeof h);
    const char *text = data + sizeof h;
    size_t tlen = len - sizeof h;
    switch (h.kind) {
    case FRAME_STARTED:
        if (p->queued > 0)
            p->queued--;
        /* Revoked too late: the child had taken it already. */
        revoked_take(p->revoked, h.job);
        k->running = true;
        k->job = h.job;
        if (p->ev.on_started)
            p->ev.on_started(p->ud, h.job, k->pid);
        break;
    case FRAME_DONE:
        if (h.status == CEL_OUT_REVOKED) {
            /* Taken from the queue and skipped: never started. */
            if (p->queued > 0)
                p->queued--;
            cel_outcome o = {.status = CEL_OUT_REVOKED};
            p->ev.on_outcome(p->ud, h.job, &o);
        } else if (k->running && h.job == k->job) {
            k->running = false;
            /* The outcome borrows the frame's text: on_outcome must not keep it. */
            cel_outcome o = {.status = (cel_outcome_status)h.status,
                             .meta = tlen ? (char *)text : NULL, .meta_len = tlen,
                             .runtime = h.runtime, .countdown = h.countdown,
                             .eta = h.eta};
            p->ev.on_outcome(p->ud, h.job, &o);
        }
        break;
    case FRAME_STATE:
        p->ev.on_state(p->ud, h.job, text, tlen);
        break;
    case FRAME_PUBLISH:
        if (p->ev.on_publish)
            p->ev.on_publish(p->ud, h.job, text, tlen);
        break;
    case FRAME_STORE:
        if (p->ev.on_store)
            p->ev.on_store(p->ud, h.job, text, tlen);
        break;
    case FRAME_CHORD:
        if (p->ev.on_chord)
            p->ev.on_chord(p->ud, h.job, text, tlen);
        break;
    default:
        cel_error("Pool process %d sent an unknown frame", (int)k->pid);
    }
}

static void read_child(cel_pool *p, child *k)
{
    char tmp[65536];
    for (;;) {
        ssize_t r = read(k->fd, tmp, sizeof tmp);
        if (r > 0) {
            if (cel_buf_append(&k->in, tmp, (size_t)r) < 0)
                return;
            if ((size_t)r < sizeof tmp)
                break;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        break; /* EAGAIN, EOF (reaped via SIGCHLD) or error */
    }
    size_t off = 0;
    while (k->in.len - off >= 4) {
        uint32_t n;
        memcpy(&n, k->in.data + off, 4);
        if (k->in.len - off < 4 + (size_t)n)
            break;
        handle_frame(p, k, k->in.data + off + 4, n);
        off += 4 + (size_t)n;
    }
    cel_buf_consume(&k->in, off);
}

void cel_pool_handle(cel_pool *p, const struct pollfd *fds, int n)
{
    for (int j = 0; j < n; j++) {
        if (!fds[j].revents)
            continue;
        for (int i = 0; i < p->n; i++) {
            child *k = &p->kids[i];
            if (k->pid && k->fd == fds[j].fd) {
                read_child(p, k);
                break;
            }
        }
    }
}

void cel_pool_reap(cel_pool *p)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < p->n; i++) {
            child *k = &p->kids[i];
            if (k->pid != pid)
                continue;
            /* Frames written just before the exit are still in the socket. */
            read_child(p, k);
            close(k->fd);
            k->fd = -1;
            k->pid = 0;
            cel_buf_free(&k->in);
            bool was_running = k->running;
            k->running = false;
            if (!was_running && p->retiring > 0 && WIFEXITED(status) &&
                WEXITSTATUS(status) == 0) {
                /* It read a retire datagram (pool_shrink): its slot goes. */
                p->retiring--;
                memmove(&p->kids[i], &p->kids[i + 1], (size_t)(p->n - i - 1) * sizeof *p->kids);
                p->n--;
                break;
            }
            if (was_running)
                p->ev.on_lost(p->ud, k->job, status);
            else if (!p->stopping)
                cel_warn("Pool process %d exited unexpectedly (status %d)", (int)pid, status);
            if (!p->stopping && spawn(p, k) < 0)
                cel_error("cannot replace pool process: %s", strerror(errno));
            break;
        }
    }
}

int cel_pool_grow(cel_pool *p, int n)
{
    if (p->solo || n < 0)
        return -1;
    child *kids = realloc(p->kids, (size_t)(p->n + n) * sizeof *kids);
    if (!kids && p->n + n > 0)
        return -1;
    p->kids = kids;
    int added = 0;
    for (; added < n; added++) {
        child *k = &p->kids[p->n];
        *k = (child){.fd = -1, .index = p->next_index};
        if (spawn(p, k) < 0) {
            cel_error("cannot start pool process: %s", strerror(errno));
            break;
        }
        p->next_index++;
        p->n++;
    }
    return added;
}

int cel_pool_shrink(cel_pool *p, int n)
{
    if (p->solo)
        return -1;
    /* billiard retires only processes running no job, and so many of
     * them at most.  The retire datagram queues behind the jobs already
     * waiting: whichever process reads it has finished its task. */
    int idle = cel_pool_processes(p) - running_count(p);
    int done = 0;
    char none[8] = {0};
    for (; done < n && done < idle; done++) {
        ssize_t r;
        do
            r = send(p->jobq[0], none, sizeof none, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (r < 0 && errno == EINTR);
        if (r != (ssize_t)sizeof none)
            break;
        p->retiring++;
    }
    return done;
}

int cel_pool_pids(const cel_pool *p, pid_t *out, int max)
{
    int n = 0;
    for (int i = 0; i < p->n && n < max; i++)
        if (p->kids[i].pid)
            out[n++] = p->kids[i].pid;
    return n;
}

void cel_pool_stop(cel_pool *p, bool kill_now)
{
    if (!p)
        return;
    p->stopping = true;
    /* Closing the queue's write end: idle children read EOF and exit. */
    if (p->jobq[0] >= 0)
        close(p->jobq[0]);
    if (p->jobq[1] >= 0)
        close(p->jobq[1]);
    for (int i = 0; i < p->n; i++) {
        child *k = &p->kids[i];
        if (k->pid && kill_now)
            kill(k->pid, SIGKILL);
    }
    for (int i = 0; i < p->n; i++) {
        child *k = &p->kids[i];
        if (k->pid) {
            int st;
            while (waitpid(k->pid, &st, 0) < 0 && errno == EINTR)
                ;
        }
        if (k->fd >= 0)
            close(k->fd);
        cel_buf_free(&k->in);
    }
    if (p->revoked)
        munmap(p->revoked, sizeof *p->revoked);
    free(p->kids);
    free(p->stage);
    free(p);
}

int cel_pool_revoke(cel_pool *p, uint64_t job)
{
    if (!p->revoked)
        return -1;
    /* `used` first: a child that sees the id also sees used > 0. */
    atomic_fetch_add(&p->revoked->used, 1);
    for (size_t i = 0; i < REVOKED_SLOTS; i++) {
        uint64_t free_slot = 0;
        if (atomic_compare_exchange_strong(&p->revoked->job[i], &free_slot, job))
            return 0;
    }
    atomic_fetch_sub(&p->revoked->used, 1);
    return -1;
}
