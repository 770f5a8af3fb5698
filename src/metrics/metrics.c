/* metrics.c — a /metrics endpoint in the Prometheus text format.
 *
 * Celery has no metrics of its own (operators scrape Flower or run an
 * exporter beside it); celeriac counts in-process what those exporters
 * guess from events: tasks received/succeeded/failed/retried/revoked/
 * rejected by task name, runtime and queue-wait histograms, pool busy/idle,
 * prefetched messages, broker reconnects.
 *
 * Why so small an HTTP server: one GET from a scraper every few seconds.
 * The listening socket sits in the worker's poll set; a scrape is accepted,
 * read once, answered and closed, all non-blocking, so a slow or hostile
 * client can cost the loop one short write at most, never a stall.
 */
#include "metrics/metrics.h"
#include "core/log.h"
#include "core/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const double BUCKETS[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                 1,     2.5,   5,    10,    30,   60,  300};
#define NB (sizeof BUCKETS / sizeof BUCKETS[0])

typedef struct histo {
    unsigned long b[NB + 1]; /* last: +Inf */
    double sum;
    unsigned long count;
} histo;

typedef struct task_m {
    const char *name;
    unsigned long c[CEL_M__COUNT];
    histo runtime, wait;
} task_m;

struct cel_metrics {
    int fd;
    task_m *tasks;
    size_t ntasks, captasks;
};

cel_metrics *cel_metrics_open(const char *host, int port, char *err, size_t errlen)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host ? host : "127.0.0.1", &a.sin_addr) != 1) {
        snprintf(err, errlen, "metrics: bad listen address %s", host);
        return NULL;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 16) < 0) {
        snprintf(err, errlen, "metrics: cannot listen on %s:%d: %s", host ? host : "127.0.0.1",
                 port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    cel_metrics *m = calloc(1, sizeof *m);
    if (!m) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->fd = fd;
    return m;
}

void cel_metrics_close(cel_metrics *m)
{
    if (!m)
        return;
    close(m->fd);
    free(m->tasks);
    free(m);
}

int cel_metrics_fd(const cel_metrics *m) { return m ? m->fd : -1; }

static task_m *task_of(cel_metrics *m, const char *name)
{
    if (!m || !name)
        return NULL;
    for (size_t i = 0; i < m->ntasks; i++)
        if (m->tasks[i].name == name || !strcmp(m->tasks[i].name, name))
            return &m->tasks[i];
    if (cel_grow(&m->tasks, &m->captasks, m->ntasks, sizeof *m->tasks, 8) < 0)
        return NULL;
    task_m *t = &m->tasks[m->ntasks++];
    memset(t, 0, sizeof *t);
    t->name = name;
    return t;
}

void cel_metrics_count(cel_metrics *m, const char *task, cel_metric_event ev)
{
    task_m *t = task_of(m, task);
    if (t && ev < CEL_M__COUNT)
        t->c[ev]++;
}

static void observe(histo *h, double v)
{
    size_t i = 0;
    while (i < NB && v > BUCKETS[i])
        i++;
    h->b[i]++;
    h->sum += v;
    h->count++;
}

void cel_metrics_wait(cel_metrics *m, const char *task, double seconds)
{
    task_m *t = task_of(m, task);
    if (t)
        observe(&t->wait, seconds < 0 ? 0 : seconds);
}

void cel_metrics_runtime(cel_metrics *m, const char *task, double seconds)
{
    task_m *t = task_of(m, task);
    if (t)
        observe(&t->runtime, seconds < 0 ? 0 : seconds);
}

typedef struct out {
    char *p;
    size_t n, cap;
    bool oom;
} out;

static void put(out *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(o->p ? o->p + o->n : NULL, o->p ? o->cap - o->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            o->oom = true;
            return;
        }
        if (o->p && o->n + (size_t)k < o->cap) {
            o->n += (size_t)k;
            return;
        }
        size_t cap = o->cap ? o->cap * 2 : 8192;
        while (cap < o->n + (size_t)k + 1)
            cap *= 2;
        char *q = realloc(o->p, cap);
        if (!q) {
            o->oom = true;
            return;
        }
        o->p = q;
        o->cap = cap;
    }
}

/* Label values: backslash, quote and newline escaped (the text format). */
static void label(out *o, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            put(o, "\\%c", *s);
        else if (*s == '\n')
            put(o, "\\n");
        else
            put(o, "%c", *s);
    }
}

static void histogram(out *o, const char *name, const char *help, cel_metrics *m, bool wait)
{
    put(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (size_t i = 0; i < m->ntasks; i++) {
        const histo *h = wait ? &m->tasks[i].wait : &m->tasks[i].runtime;
        unsigned long cum = 0;
        for (size_t b = 0; b <= NB; b++) {
            cum += h->b[b];
            put(o, "%s_bucket{task=\"", name);
            label(o, m->tasks[i].name);
            if (b < NB)
                put(o, "\",le=\"%g\"} %lu\n", BUCKETS[b], cum);
            else
                put(o, "\",le=\"+Inf\"} %lu\n", cum);
        }
        put(o, "%s_sum{task=\"", name);
        label(o, m->tasks[i].name);
        put(o, "\"} %.6f\n%s_count{task=\"", h->sum, name);
        label(o, m->tasks[i].name);
        put(o, "\"} %lu\n", h->count);
    }
}

static char *render(cel_metrics *m, const cel_metrics_gauges *g, size_t *len)
{
    static const char *const names[CEL_M__COUNT] = {"received", "succeeded", "failed",
                                                    "retried",  "revoked",   "rejected"};
    out o = {0};
    for (int e = 0; e < CEL_M__COUNT; e++) {
        put(&o, "# HELP celeriac_tasks_%s_total Tasks %s, by task name.\n", names[e], names[e]);
        put(&o, "# TYPE celeriac_tasks_%s_total counter\n", names[e]);
        for (size_t i = 0; i < m->ntasks; i++) {
            put(&o, "celeriac_tasks_%s_total{task=\"", names[e]);
            label(&o, m->tasks[i].name);
            put(&o, "\"} %lu\n", m->tasks[i].c[e]);
        }
    }
    histogram(&o, "celeriac_task_runtime_seconds", "Time in the task function.", m, false);
    histogram(&o, "celeriac_task_queue_wait_seconds",
              "From receipt by the worker to the start in a pool process.", m, true);
    put(&o, "# HELP celeriac_pool_processes Pool processes.\n"
            "# TYPE celeriac_pool_processes gauge\nceleriac_pool_processes %d\n",
        g->pool_processes);
    put(&o, "# HELP celeriac_pool_busy Pool processes running a task.\n"
            "# TYPE celeriac_pool_busy gauge\nceleriac_pool_busy %d\n",
        g->pool_busy);
    put(&o, "# HELP celeriac_pool_idle Pool processes without a task.\n"
            "# TYPE celeriac_pool_idle gauge\nceleriac_pool_idle %d\n",
        g->pool_processes - g->pool_busy);
    put(&o, "# HELP celeriac_prefetched_messages Messages held: reserved, waiting for their "
            "ETA, or running.\n# TYPE celeriac_prefetched_messages gauge\n"
            "celeriac_prefetched_messages %d\n",
        g->prefetched);
    put(&o, "# HELP celeriac_broker_reconnects_total Connections to the broker re-established.\n"
            "# TYPE celeriac_broker_reconnects_total counter\n"
            "celeriac_broker_reconnects_total %lu\n",
        g->broker_reconnects);
    put(&o, "# HELP celeriac_uptime_seconds Seconds since the worker started.\n"
            "# TYPE celeriac_uptime_seconds gauge\nceleriac_uptime_seconds %.3f\n",
        g->uptime);
    if (o.oom) {
        free(o.p);
        return NULL;
    }
    *len = o.n;
    return o.p;
}

void cel_metrics_serve(cel_metrics *m, const cel_metrics_gauges *g)
{
    for (;;) {
        int c = accept4(m->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0)
            return; /* EAGAIN: nothing more pending */
        char req[2048];
        /* The request follows the connection: wait for it briefly (a
         * scraper sends at once). */
        struct pollfd pf = {.fd = c, .events = POLLIN};
        ssize_t r = poll(&pf, 1, 200) == 1 ? read(c, req, sizeof req - 1) : -1;
        const char *status = "200 OK";
        char *body = NULL;
        size_t blen = 0;
        if (r > 0) {
            req[r] = 0;
            if (!strncmp(req, "GET /metrics", 12) || !strncmp(req, "GET / ", 6))
                body = render(m, g, &blen);
            else
                status = "404 Not Found";
        } else {
            status = "400 Bad Request"; /* nothing sent yet: don't wait for it */
        }
        char head[256];
        int hl = snprintf(head, sizeof head,
                          "HTTP/1.0 %s\r\nContent-Type: text/plain; version=0.0.4; "
                          "charset=utf-8\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                          status, blen);
        /* One non-blocking write each: a scrape fits the socket buffer; a
         * client that does not read loses the rest. */
        if (write(c, head, (size_t)hl) == hl && body)
            (void)!write(c, body, blen);
        free(body);
        close(c);
    }
}
