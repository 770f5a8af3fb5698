/* events.h — Celery's monitoring events (worker-*, task-*), as Flower and
 * `celery events` read them (see events.c). */
#ifndef CELERIAC_EVENTS_H
#define CELERIAC_EVENTS_H

#include "broker/transport.h"
#include "control/control.h"
#include <jansson.h>
#include <stdbool.h>

typedef struct cel_events cel_events;

/* `tr` publishes (its publish_event op; NULL op = events off); `ctl` keeps
 * the worker's Lamport clock.  Both borrowed, must outlive the handle. */
cel_events *cel_events_new(cel_transport *tr, cel_control *ctl, const char *hostname,
                           const char *sw_ver);
void cel_events_free(cel_events *ev);

/* Sends event `type` ("task-succeeded") with `fields` (stolen; NULL = none)
 * plus the common ones: hostname, utcoffset, pid, clock, timestamp, type. */
void cel_events_send(cel_events *ev, const char *type, json_t *fields);

/* worker-online / worker-heartbeat / worker-offline with freq 2.0, active,
 * processed, loadavg and the software fields. */
void cel_events_worker(cel_events *ev, const char *type, int active, unsigned long processed);

#endif
