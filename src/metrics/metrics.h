/* metrics.h — Prometheus metrics over HTTP (`--metrics-port`), beyond what
 * Celery offers (see metrics.c). */
#ifndef CELERIAC_METRICS_H
#define CELERIAC_METRICS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct cel_metrics cel_metrics;

/* Listens on host:port (loopback by default).  NULL with `err` set when the
 * port cannot be bound. */
cel_metrics *cel_metrics_open(const char *host, int port, char *err, size_t errlen);
void cel_metrics_close(cel_metrics *m);
/* The listening socket, to poll for input. */
int cel_metrics_fd(const cel_metrics *m);

/* What the worker counts.  `task` is borrowed and must stay valid (the
 * registry's names). */
typedef enum cel_metric_event {
    CEL_M_RECEIVED, CEL_M_SUCCEEDED, CEL_M_FAILED, CEL_M_RETRIED, CEL_M_REVOKED, CEL_M_REJECTED,
    CEL_M__COUNT
} cel_metric_event;
void cel_metrics_count(cel_metrics *m, const char *task, cel_metric_event ev);
/* Seconds between receipt and start (queue wait) and the task's runtime. */
void cel_metrics_wait(cel_metrics *m, const char *task, double seconds);
void cel_metrics_runtime(cel_metrics *m, const char *task, double seconds);

/* Gauges sampled when a scrape arrives. */
typedef struct cel_metrics_gauges {
    int pool_processes, pool_busy;
    int prefetched; /* messages held: reserved, ETA-held or running */
    unsigned long broker_reconnects;
    double uptime;
} cel_metrics_gauges;

/* Serves the pending connection(s) on the listening socket (call when it
 * is readable): one response each, then close. */
void cel_metrics_serve(cel_metrics *m, const cel_metrics_gauges *g);

#endif
