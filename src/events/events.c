/* events.c — monitoring events, as a Celery 5.2 worker sends them.
 *
 * An event is a JSON object published to the `celeryev` exchange (topic on
 * RabbitMQ, pub/sub on Redis) with routing key = its type, '-' -> '.'
 * (shared/docs/celery-wire-contract.md §5).  Every event carries hostname,
 * utcoffset (hours west of UTC, floor-divided, as Python's
 * time.timezone // 3600), pid, clock (the worker's Lamport clock, shared
 * with remote control), timestamp (epoch float) and type.
 *
 * Why unbatched: Python's worker batches task events into `task.multi`
 * arrays; receivers (Flower, `celery events`) accept single objects too,
 * and one object per publish keeps a lost publish to one event.
 */
#include "events/events.h"
#include "core/log.h"
#include "core/message.h"
#include "core/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct cel_events {
    cel_transport *tr;
    cel_control *ctl;
    char *hostname;
    char *sw_ver;
    bool warned;
};

cel_events *cel_events_new(cel_transport *tr, cel_control *ctl, const char *hostname,
                           const char *sw_ver)
{
    cel_events *ev = calloc(1, sizeof *ev);
    if (!ev)
        return NULL;
    ev->tr = tr;
    ev->ctl = ctl;
    ev->hostname = strdup(hostname ? hostname : "");
    ev->sw_ver = strdup(sw_ver ? sw_ver : "");
    if (!ev->hostname || !ev->sw_ver) {
        cel_events_free(ev);
        return NULL;
    }
    return ev;
}

void cel_events_free(cel_events *ev)
{
    if (!ev)
        return;
    free(ev->hostname);
    free(ev->sw_ver);
    free(ev);
}

/* Python's celery.utils.time.utcoffset(): hours west, floor division. */
static int utcoffset(void)
{
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    return (int)floor(-(double)tm.tm_gmtoff / 3600.0);
}

void cel_events_send(cel_events *ev, const char *type, json_t *fields)
{
    if (!ev || !ev->tr->ops->publish_event) {
        json_decref(fields);
        return;
    }
    json_t *e = json_object();
    json_object_set_new(e, "hostname", json_string(ev->hostname));
    json_object_set_new(e, "utcoffset", json_integer(utcoffset()));
    json_object_set_new(e, "pid", json_integer(getpid()));
    json_object_set_new(e, "clock", json_integer(cel_control_next_clock(ev->ctl)));
    if (fields)
        json_object_update(e, fields);
    json_decref(fields);
    json_object_set_new(e, "timestamp", json_real(cel_now()));
    json_object_set_new(e, "type", json_string(type));
    size_t len = 0;
    char *body = cel_json_dumps_py(e, &len);
    json_decref(e);
    char rk[64];
    snprintf(rk, sizeof rk, "%s", type);
    for (char *p = rk; *p; p++)
        if (*p == '-')
            *p = '.';
    if (!body || ev->tr->ops->publish_event(ev->tr, rk, body, len, ev->hostname) < 0) {
        if (!ev->warned)
            cel_warn("events: could not publish %s (further failures are not logged)", type);
        ev->warned = true;
    }
    free(body);
}

void cel_events_worker(cel_events *ev, const char *type, int active, unsigned long processed)
{
    if (!ev)
        return;
    double la[3] = {0, 0, 0};
    if (getloadavg(la, 3) < 0)
        la[0] = la[1] = la[2] = 0;
    json_t *f = json_pack("{s:f, s:i, s:i, s:[f, f, f], s:s, s:s, s:s}", "freq", 2.0, "active",
                          active, "processed", (json_int_t)processed, "loadavg",
                          round(la[0] * 100) / 100, round(la[1] * 100) / 100,
                          round(la[2] * 100) / 100, "sw_ident", "celeriac", "sw_ver",
                          ev->sw_ver, "sw_sys", "Linux");
    cel_events_send(ev, type, f);
}
