/* aconn.h — one AMQP 0-9-1 connection (librabbitmq-c) opened from a parsed
 * URL, shared by the AMQP transport and the rpc:// result backend: login with
 * heartbeat negotiation, one channel (in confirm mode on publishing
 * connections), publishing that waits for the broker's verdict, and the
 * half-interval heartbeat the broker expects from an idle client.
 *
 * Why publishing gets its own connection: librabbitmq-c 0.11 has no public
 * way to wait for frames of one channel only, so waiting for a confirm on a
 * consuming connection would swallow deliveries.  Python's worker also
 * publishes on producer connections of its own.
 *
 * Why our own heartbeat: librabbitmq-c sends one only after a whole interval
 * of silence and only while blocked in its own calls; RabbitMQ drops a
 * client after two silent intervals, so one late loop turn could cost the
 * connection.  We send at half the interval, as the contract asks
 * (shared/docs/celery-wire-contract.md §4.4).
 */
#ifndef CELERIAC_ACONN_H
#define CELERIAC_ACONN_H

#include "core/config.h"
#include <amqp.h>
#include <amqp_framing.h>
#include <stdbool.h>
#include <stdint.h>

#define CEL_ACH 1 /* the one channel */

typedef struct cel_aconn {
    amqp_connection_state_t c;
    int heartbeat;    /* negotiated interval in seconds; 0 = none */
    double last_send; /* monotonic time of the last frame we know we sent */
} cel_aconn;

/* Connects (over TLS for amqps:// or when `tls->on`; `tls` may be NULL),
 * logs in (asking `heartbeat` seconds, 0 = none; the server's smaller offer
 * wins) and opens the channel, in confirm mode when `confirm`.  Returns NULL
 * with `err` set (never containing the password). */
cel_aconn *cel_aconn_open(const cel_url *u, const cel_tls *tls, int heartbeat, bool confirm,
                          double timeout_s, char *err, size_t errlen);

/* Closes politely (channel and connection close) and frees.  NULL is fine. */
void cel_aconn_close(cel_aconn *a);

/* Frees without a goodbye: for a connection already known dead. */
void cel_aconn_abort(cel_aconn *a);

/* The socket to poll for input. */
int cel_aconn_fd(const cel_aconn *a);

/* True when frames are already buffered in the library (poll would not
 * show them). */
bool cel_aconn_buffered(const cel_aconn *a);

/* Records that a frame went out (for the heartbeat clock). */
void cel_aconn_sent(cel_aconn *a);

/* Sends a heartbeat frame when half the interval passed since the last
 * frame we sent.  Returns 0, or -1 when the socket is dead. */
int cel_aconn_heartbeat(cel_aconn *a);

/* Describes an RPC reply failure in `buf`; returns buf. */
const char *cel_aconn_error(amqp_rpc_reply_t r, char *buf, size_t buflen);

typedef enum cel_apub {
    CEL_APUB_OK = 0,    /* confirmed (basic.ack) */
    CEL_APUB_RETURNED,  /* mandatory and unroutable (basic.return) */
    CEL_APUB_NACKED,    /* the broker refused it (basic.nack) */
    CEL_APUB_ERROR,     /* connection or channel failure: `err` says */
} cel_apub;

/* Publishes and waits for the confirm (the connection must be a publishing
 * one: every frame that arrives meanwhile is taken as part of the answer).
 * `props` may be NULL. */
cel_apub cel_aconn_publish(cel_aconn *a, const char *exchange, const char *routing_key,
                           const amqp_basic_properties_t *props, const void *body, size_t len,
                           bool mandatory, double timeout_s, char *err, size_t errlen);

/* amqp_bytes_t for a C string (no copy). */
static inline amqp_bytes_t cel_abytes(const char *s)
{
    return s ? amqp_cstring_bytes(s) : amqp_empty_bytes;
}

#endif
