/* pool.c — prefork and solo execution pools (see pool.h for the design).
 *
 * Why socketpairs and our own frames rather than pipes + shared memory: a
 * SOCK_STREAM pair is bidirectional, survives large (1 MB+) payloads with
 * ordinary buffering, and EOF tells a child its parent is gone.  Why
 * PR_SET_PDEATHSIG: after a kill -9 of the parent, orphaned children must not
 * finish tasks whose messages the broker will redeliver to another worker.
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
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CEL_FRAME_MAX (256u * 1024 * 1024)

typedef struct child {
    pid_t pid;       /* 0 = slot empty */
    int fd;          /* parent's end */
    int index;       /* 1-based, for ForkPoolWorker-N */
    bool busy;
    uint64_t job;
    cel_buf in, out;
} child;

struct cel_pool {
    const cel_registry *reg;
    cel_pool_events ev;
    void *ud;
    int n;       /* processes; 0 = solo */
    child *kids;
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

static int read_all(int fd, void *data, size_t len)
{
    char *p = data;
    while (len) {
        ssize_t r = read(fd, p, len);
        if (r == 0)
            return -1;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += r;
        len -= (size_t)r;
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

static void child_main(const cel_registry *reg, int fd, int index)
{
    char name[32];
    snprintf(name, sizeof name, "ForkPoolWorker-%d", index);
    cel_log_set_process(name);
    signal(SIGINT, SIG_IGN);  /* the parent decides about shutdowns */
    signal(SIGTERM, SIG_IGN);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(0);
    for (;;) {
        uint32_t n;
        if (read_all(fd, &n, sizeof n) < 0)
            _exit(0);
        if (n > CEL_FRAME_MAX)
            _exit(3);
        char *buf = malloc(n);
        if (!buf || read_all(fd, buf, n) < 0)
            _exit(3);
        json_error_t jerr;
        json_t *frame = json_loadb(buf, n, JSON_ALLOW_NUL, &jerr);
        free(buf);
        if (!frame)
            _exit(3);
        child_ctx ctx = {.fd = fd,
                         .job = (uint64_t)json_integer_value(json_object_get(frame, "job"))};
        json_t *outcome = cel_exec_run(reg, json_object_get(frame, "request"), NULL,
                                       child_state_cb, &ctx);
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
        /* Other children's parent ends are inherited too; close them so a
         * child's EOF is only ever its own parent going away. */
        for (int i = 0; i < p->n; i++)
            if (p->kids[i].pid && p->kids[i].fd >= 0)
                close(p->kids[i].fd);
        child_main(p->reg, sv[1], k->index);
        _exit(0);
    }
    close(sv[1]);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    k->pid = pid;
    k->fd = sv[0];
    k->busy = false;
    k->in.len = k->out.len = 0;
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
    if (processes > 0) {
        p->kids = calloc((size_t)processes, sizeof *p->kids);
        if (!p->kids) {
            free(p);
            return NULL;
        }
        for (int i = 0; i < processes; i++) {
            p->kids[i].index = i + 1;
            p->kids[i].fd = -1;
            if (spawn(p, &p->kids[i]) < 0) {
                snprintf(err, errlen, "cannot start pool process: %s", strerror(errno));
                cel_pool_stop(p, true);
                return NULL;
            }
        }
    }
    return p;
}

int cel_pool_idle(const cel_pool *p)
{
    if (p->n == 0)
        return 1;
    int idle = 0;
    for (int i = 0; i < p->n; i++)
        idle += p->kids[i].pid && !p->kids[i].busy;
    return idle;
}

int cel_pool_busy(const cel_pool *p)
{
    int busy = 0;
    for (int i = 0; i < p->n; i++)
        busy += p->kids[i].busy;
    return busy;
}

static void flush_out(child *k)
{
    while (k->out.len) {
        ssize_t w = write(k->fd, k->out.data, k->out.len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* EAGAIN: poll for POLLOUT; EPIPE: reaped soon */
        }
        cel_buf_consume(&k->out, (size_t)w);
    }
}

static int solo_state_cb(void *ud, const char *task_id, const char *state, json_t *meta)
{
    cel_pool *p = ud;
    p->ev.on_state(p->ud, p->solo_job, state, meta);
    json_decref(meta);
    return 0;
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
    child *k = NULL;
    for (int i = 0; i < p->n && !k; i++)
        if (p->kids[i].pid && !p->kids[i].busy)
            k = &p->kids[i];
    if (!k)
        return -1;
    json_t *f = json_pack("{s:I, s:O}", "job", (json_int_t)job, "request", request);
    char *text = f ? json_dumps(f, JSON_COMPACT) : NULL;
    json_decref(f);
    if (!text)
        return -1;
    uint32_t n = (uint32_t)strlen(text);
    int rc = cel_buf_append(&k->out, &n, sizeof n) || cel_buf_append(&k->out, text, n);
    free(text);
    if (rc)
        return -1;
    k->busy = true;
    k->job = job;
    if (p->ev.on_started)
        p->ev.on_started(p->ud, job, k->pid);
    flush_out(k);
    return 0;
}

int cel_pool_pollfds(cel_pool *p, struct pollfd *fds, int max)
{
    int n = 0;
    for (int i = 0; i < p->n && n < max; i++) {
        child *k = &p->kids[i];
        if (!k->pid || k->fd < 0)
            continue;
        fds[n].fd = k->fd;
        fds[n].events = POLLIN | (k->out.len ? POLLOUT : 0);
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
    if (kind && strcmp(kind, "done") == 0 && k->busy && job == k->job) {
        k->busy = false;
        p->ev.on_outcome(p->ud, job, json_object_get(f, "outcome"));
    } else if (kind && strcmp(kind, "state") == 0) {
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
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        break; /* EAGAIN, EOF (reaped via SIGCHLD) or error */
    }
    while (k->in.len >= 4) {
        uint32_t n;
        memcpy(&n, k->in.data, 4);
        if (k->in.len < 4 + (size_t)n)
            break;
        handle_frame(p, k, k->in.data + 4, n);
        cel_buf_consume(&k->in, 4 + (size_t)n);
    }
}

void cel_pool_handle(cel_pool *p, const struct pollfd *fds, int n)
{
    for (int j = 0; j < n; j++) {
        if (!fds[j].revents)
            continue;
        for (int i = 0; i < p->n; i++) {
            child *k = &p->kids[i];
            if (k->pid && k->fd == fds[j].fd) {
                if (fds[j].revents & POLLOUT)
                    flush_out(k);
                if (fds[j].revents & (POLLIN | POLLHUP | POLLERR))
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
            /* A frame may have arrived just before the exit. */
            read_child(p, k);
            close(k->fd);
            k->fd = -1;
            k->pid = 0;
            cel_buf_free(&k->in);
            cel_buf_free(&k->out);
            bool was_busy = k->busy;
            k->busy = false;
            if (was_busy) {
                p->ev.on_lost(p->ud, k->job, status);
            } else if (!p->stopping) {
                cel_warn("Pool process %d exited unexpectedly (status %d)", (int)pid, status);
            }
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
    for (int i = 0; i < p->n; i++) {
        child *k = &p->kids[i];
        if (!k->pid)
            continue;
        if (kill_now)
            kill(k->pid, SIGKILL);
        if (k->fd >= 0)
            close(k->fd); /* EOF: an idle child exits */
        k->fd = -1;
    }
    for (int i = 0; i < p->n; i++) {
        child *k = &p->kids[i];
        if (k->pid) {
            int st;
            while (waitpid(k->pid, &st, 0) < 0 && errno == EINTR)
                ;
        }
        cel_buf_free(&k->in);
        cel_buf_free(&k->out);
    }
    free(p->kids);
    free(p);
}
