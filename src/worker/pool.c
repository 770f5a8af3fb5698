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
 */
#include "worker/pool.h"
#include "core/log.h"
#include "core/util.h"
#include "worker/exec.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define CEL_FRAME_MAX (512u * 1024 * 1024)
/* Requests up to this size travel inline in the datagram; larger ones in a
 * memfd.  Well under the default socket buffer, so a send never fails for
 * size. */
#define INLINE_MAX (32u * 1024)

typedef struct child {
    pid_t pid;       /* 0 = slot empty */
    int fd;          /* parent's end of the report socket */
    int index;       /* 1-based, for ForkPoolWorker-N */
    bool running;
    uint64_t job;
    cel_buf in;
} child;

struct cel_pool {
    const cel_registry *reg;
    cel_pool_events ev;
    void *ud;
    int n;          /* processes; 0 = solo */
    child *kids;
    int jobq[2];    /* [0] parent writes, [1] children read */
    int queued;     /* jobs in the queue not yet taken */
    bool stopping;
    uint64_t solo_job;
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

static int send_frame(int fd, json_t *obj)
{
    char *text = json_dumps(obj, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
        return -1;
    uint32_t n = (uint32_t)strlen(text);
    int rc = write_all(fd, &n, sizeof n) || write_all(fd, text, n) ? -1 : 0;
    free(text);
    return rc;
}

typedef struct child_ctx {
    int fd;
    uint64_t job;
} child_ctx;

static int child_state_cb(void *ud, const char *task_id, const char *state, json_t *meta)
{
    child_ctx *c = ud;
    json_t *f = json_pack("{s:s, s:I, s:s, s:o}", "kind", "state", "job", (json_int_t)c->job,
                          "state", state, "meta", meta);
    int rc = f ? send_frame(c->fd, f) : -1;
    json_decref(f);
    return rc;
}

/* Receives one job datagram; returns the parsed frame or NULL at EOF. */
static json_t *recv_job(int qfd)
{
    static char buf[INLINE_MAX + 64];
    char cbuf[CMSG_SPACE(sizeof(int))];
    for (;;) {
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                            .msg_controllen = sizeof cbuf};
        ssize_t r = recvmsg(qfd, &mh, MSG_CMSG_CLOEXEC);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return NULL;
        json_error_t jerr;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            int mfd;
            memcpy(&mfd, CMSG_DATA(cm), sizeof mfd);
            struct stat st;
            json_t *f = NULL;
            if (fstat(mfd, &st) == 0 && st.st_size > 0 && (size_t)st.st_size <= CEL_FRAME_MAX) {
                void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, mfd, 0);
                if (map != MAP_FAILED) {
                    f = json_loadb(map, (size_t)st.st_size, JSON_ALLOW_NUL, &jerr);
                    munmap(map, (size_t)st.st_size);
                }
            }
            close(mfd);
            return f;
        }
        return json_loadb(buf, (size_t)r, JSON_ALLOW_NUL, &jerr);
    }
}

static void child_main(const cel_registry *reg, int qfd, int fd, int index)
{
    char name[32];
    snprintf(name, sizeof name, "ForkPoolWorker-%d", index);
    cel_log_set_process(name);
    signal(SIGINT, SIG_IGN); /* the parent decides about shutdowns */
    signal(SIGTERM, SIG_IGN);
    signal(SIGQUIT, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(0);
    for (;;) {
        json_t *frame = recv_job(qfd);
        if (!frame)
            _exit(0);
        child_ctx ctx = {.fd = fd,
                         .job = (uint64_t)json_integer_value(json_object_get(frame, "job"))};
        /* Report the start first: the parent acks early-ack tasks now. */
        char started[64];
        int sl = snprintf(started + 4, sizeof started - 4, "{\"kind\":\"started\",\"job\":%llu}",
                          (unsigned long long)ctx.job);
        uint32_t n = (uint32_t)sl;
        memcpy(started, &n, 4);
        if (write_all(fd, started, 4 + (size_t)sl) < 0)
            _exit(3);
        double t0 = cel_monotonic();
        json_t *outcome = cel_exec_run(reg, json_object_get(frame, "request"), NULL,
                                       child_state_cb, &ctx);
        json_object_set_new(outcome, "runtime", json_real(cel_monotonic() - t0));
        json_t *reply = json_pack("{s:s, s:I, s:o}", "kind", "done", "job",
                                  (json_int_t)ctx.job, "outcome", outcome);
        json_decref(frame);
        if (!reply || send_frame(fd, reply) < 0)
            _exit(3);
        json_decref(reply);
    }
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
        child_main(p->reg, p->jobq[1], sv[1], k->index);
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

cel_pool *cel_pool_start(int processes, const cel_registry *reg,
                         const cel_pool_events *ev, void *ud, char *err, size_t errlen)
{
    cel_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->reg = reg;
    p->ev = *ev;
    p->ud = ud;
    p->n = processes;
    p->jobq[0] = p->jobq[1] = -1;
    if (processes > 0) {
        p->kids = calloc((size_t)processes, sizeof *p->kids);
        if (!p->kids ||
            socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, p->jobq) < 0) {
            snprintf(err, errlen, "cannot create the pool's job queue: %s", strerror(errno));
            free(p->kids);
            free(p);
            return NULL;
        }
        fcntl(p->jobq[0], F_SETFL, fcntl(p->jobq[0], F_GETFL) | O_NONBLOCK);
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

int cel_pool_idle(const cel_pool *p)
{
    if (p->n == 0)
        return 1;
    /* Every process plus one queued job each, so a child that finishes
     * finds work at once. */
    int room = 2 * p->n - running_count(p) - p->queued;
    return room > 0 ? room : 0;
}

int cel_pool_busy(const cel_pool *p) { return p->n ? running_count(p) + p->queued : 0; }

static int solo_state_cb(void *ud, const char *task_id, const char *state, json_t *meta)
{
    cel_pool *p = ud;
    p->ev.on_state(p->ud, p->solo_job, state, meta);
    json_decref(meta);
    return 0;
}

/* Sends a request too large for a datagram as a memfd. */
static int send_memfd(int qfd, const char *text, size_t len)
{
    int mfd = memfd_create("celeriac-job", MFD_CLOEXEC);
    if (mfd < 0)
        return -1;
    int rc = -1;
    if (write_all(mfd, text, len) == 0) {
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
        rc = sendmsg(qfd, &mh, MSG_NOSIGNAL) == 1 ? 0 : -1;
    }
    close(mfd);
    return rc;
}

int cel_pool_submit(cel_pool *p, uint64_t job, json_t *request)
{
    if (p->n == 0) {
        p->solo_job = job;
        if (p->ev.on_started)
            p->ev.on_started(p->ud, job, getpid());
        json_t *o = cel_exec_run(p->reg, request, NULL, solo_state_cb, p);
        p->ev.on_outcome(p->ud, job, o);
        json_decref(o);
        return 0;
    }
    if (cel_pool_idle(p) <= 0)
        return -1;
    json_t *f = json_pack("{s:I, s:O}", "job", (json_int_t)job, "request", request);
    char *text = f ? json_dumps(f, JSON_COMPACT) : NULL;
    json_decref(f);
    if (!text)
        return -1;
    size_t len = strlen(text);
    int rc;
    if (len <= INLINE_MAX) {
        ssize_t w;
        do
            w = send(p->jobq[0], text, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (w < 0 && errno == EINTR);
        rc = w == (ssize_t)len ? 0 : -1; /* EAGAIN: queue full, keep it */
    } else {
        rc = send_memfd(p->jobq[0], text, len);
    }
    free(text);
    if (rc == 0)
        p->queued++;
    return rc;
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
    json_error_t jerr;
    json_t *f = json_loadb(data, len, JSON_ALLOW_NUL, &jerr);
    if (!f) {
        cel_error("Pool process %d sent a malformed frame: %s", (int)k->pid, jerr.text);
        return;
    }
    const char *kind = json_string_value(json_object_get(f, "kind"));
    uint64_t job = (uint64_t)json_integer_value(json_object_get(f, "job"));
    if (!kind) {
        /* ignore */
    } else if (strcmp(kind, "started") == 0) {
        if (p->queued > 0)
            p->queued--;
        k->running = true;
        k->job = job;
        if (p->ev.on_started)
            p->ev.on_started(p->ud, job, k->pid);
    } else if (strcmp(kind, "done") == 0 && k->running && job == k->job) {
        k->running = false;
        p->ev.on_outcome(p->ud, job, json_object_get(f, "outcome"));
    } else if (strcmp(kind, "state") == 0) {
        const char *st = json_string_value(json_object_get(f, "state"));
        if (st)
            p->ev.on_state(p->ud, job, st, json_object_get(f, "meta"));
    }
    json_decref(f);
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
    free(p->kids);
    free(p);
}
