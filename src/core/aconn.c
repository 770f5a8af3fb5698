/* aconn.c — see aconn.h. */
#include "core/aconn.h"
#include "core/log.h"
#include "core/util.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define FRAME_MAX 131072
/* Debian's bundle: py-amqp's load_default_certs() finds the same CAs. */
#define SYSTEM_CAS "/etc/ssl/certs/ca-certificates.crt"

const char *cel_aconn_error(amqp_rpc_reply_t r, char *buf, size_t buflen)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, buflen, "ok");
        break;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, buflen, "missing RPC reply");
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, buflen, "%s", amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *m = r.reply.decoded;
            snprintf(buf, buflen, "connection closed by the broker: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *m = r.reply.decoded;
            snprintf(buf, buflen, "channel closed by the broker: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else {
            snprintf(buf, buflen, "unexpected broker method %s", amqp_method_name(r.reply.id));
        }
        break;
    }
    return buf;
}

static struct timeval tv_of(double s)
{
    struct timeval tv = {(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    return tv;
}

/* A TLS socket set up as py-amqp sets up its SSLContext. */
static amqp_socket_t *tls_socket(amqp_connection_state_t c, const cel_tls *tls, char *err,
                                 size_t errlen)
{
    amqp_socket_t *s = amqp_ssl_socket_new(c);
    if (!s) {
        snprintf(err, errlen, "cannot create a TLS socket");
        return NULL;
    }
    const char *cas = tls && tls->ca_certs ? tls->ca_certs : SYSTEM_CAS;
    bool verify = !tls || tls->cert_reqs != 0;
    if (verify && amqp_ssl_socket_set_cacert(s, cas) != AMQP_STATUS_OK) {
        snprintf(err, errlen, "TLS: cannot load CA certificates from %s", cas);
        return NULL;
    }
    if (tls && tls->certfile &&
        amqp_ssl_socket_set_key(s, tls->certfile, tls->keyfile ? tls->keyfile : tls->certfile) !=
            AMQP_STATUS_OK) {
        snprintf(err, errlen, "TLS: cannot load the client certificate %s", tls->certfile);
        return NULL;
    }
    amqp_ssl_socket_set_verify_peer(s, verify);
    amqp_ssl_socket_set_verify_hostname(s, verify && tls && tls->server_hostname);
    return s;
}

cel_aconn *cel_aconn_open(const cel_url *u, const cel_tls *tls, int heartbeat, bool confirm,
                          double timeout_s, char *err, size_t errlen)
{
    cel_aconn *a = calloc(1, sizeof *a);
    if (!a || !(a->c = amqp_new_connection())) {
        free(a);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    char host[300];
    snprintf(host, sizeof host, "%s:%d", u->host ? u->host : "localhost", u->port);
    bool use_tls = u->scheme == CEL_URL_AMQPS || (tls && tls->on);
    amqp_socket_t *sock = use_tls ? tls_socket(a->c, tls, err, errlen) : amqp_tcp_socket_new(a->c);
    if (!sock) {
        if (!use_tls)
            snprintf(err, errlen, "out of memory");
        amqp_destroy_connection(a->c);
        free(a);
        return NULL;
    }
    struct timeval tv = tv_of(timeout_s);
    /* With server_hostname, the certificate must name that host: connect by
     * that name (librabbitmq-c checks the name it connected to). */
    const char *name = use_tls && tls && tls->server_hostname ? tls->server_hostname
                       : u->host                              ? u->host
                                                              : "localhost";
    int st = amqp_socket_open_noblock(sock, name, u->port, &tv);
    if (st != AMQP_STATUS_OK) {
        snprintf(err, errlen, "cannot connect to %s://%s: %s", use_tls ? "amqps" : "amqp", host,
                 amqp_error_string2(st));
        amqp_destroy_connection(a->c);
        free(a);
        return NULL;
    }
    amqp_set_handshake_timeout(a->c, &tv);
    amqp_set_rpc_timeout(a->c, &tv);
    char why[256];
    amqp_rpc_reply_t r = amqp_login(a->c, u->path ? u->path : "/", 0, FRAME_MAX, heartbeat,
                                    AMQP_SASL_METHOD_PLAIN, u->user ? u->user : "guest",
                                    u->password ? u->password : "guest");
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(err, errlen, "amqp://%s: login failed: %s", host,
                 cel_aconn_error(r, why, sizeof why));
        cel_aconn_abort(a);
        return NULL;
    }
    a->heartbeat = amqp_get_heartbeat(a->c);
    amqp_channel_open(a->c, CEL_ACH);
    r = amqp_get_rpc_reply(a->c);
    if (r.reply_type == AMQP_RESPONSE_NORMAL && confirm) {
        amqp_confirm_select(a->c, CEL_ACH);
        r = amqp_get_rpc_reply(a->c);
    }
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(err, errlen, "amqp://%s: cannot open a channel: %s", host,
                 cel_aconn_error(r, why, sizeof why));
        cel_aconn_abort(a);
        return NULL;
    }
    a->last_send = cel_monotonic();
    return a;
}

void cel_aconn_abort(cel_aconn *a)
{
    if (!a)
        return;
    amqp_destroy_connection(a->c);
    free(a);
}

void cel_aconn_close(cel_aconn *a)
{
    if (!a)
        return;
    /* Short waits: a dead broker must not hold up a shutdown. */
    struct timeval tv = {1, 0};
    amqp_set_rpc_timeout(a->c, &tv);
    amqp_channel_close(a->c, CEL_ACH, AMQP_REPLY_SUCCESS);
    amqp_connection_close(a->c, AMQP_REPLY_SUCCESS);
    cel_aconn_abort(a);
}

int cel_aconn_fd(const cel_aconn *a)
{
    return amqp_socket_get_sockfd(amqp_get_socket(a->c));
}

bool cel_aconn_buffered(const cel_aconn *a)
{
    return amqp_data_in_buffer(a->c) || amqp_frames_enqueued(a->c);
}

void cel_aconn_sent(cel_aconn *a) { a->last_send = cel_monotonic(); }

int cel_aconn_heartbeat(cel_aconn *a)
{
    if (a->heartbeat <= 0)
        return 0;
    double now = cel_monotonic();
    if (now - a->last_send < a->heartbeat / 2.0)
        return 0;
    amqp_frame_t f = {.frame_type = AMQP_FRAME_HEARTBEAT, .channel = 0};
    if (amqp_send_frame(a->c, &f) != AMQP_STATUS_OK)
        return -1;
    a->last_send = now;
    return 0;
}

cel_apub cel_aconn_publish(cel_aconn *a, const char *exchange, const char *routing_key,
                           const amqp_basic_properties_t *props, const void *body, size_t len,
                           bool mandatory, double timeout_s, char *err, size_t errlen)
{
    amqp_bytes_t b = {len, (void *)body};
    int st = amqp_basic_publish(a->c, CEL_ACH, cel_abytes(exchange), cel_abytes(routing_key),
                                mandatory, 0, props, b);
    if (st != AMQP_STATUS_OK) {
        snprintf(err, errlen, "publish failed: %s", amqp_error_string2(st));
        return CEL_APUB_ERROR;
    }
    cel_aconn_sent(a);
    bool returned = false;
    double deadline = cel_monotonic() + timeout_s;
    for (;;) {
        double left = deadline - cel_monotonic();
        if (left <= 0) {
            snprintf(err, errlen, "no publisher confirm within %.0f s", timeout_s);
            return CEL_APUB_ERROR;
        }
        struct timeval tv = tv_of(left);
        amqp_frame_t f;
        amqp_maybe_release_buffers(a->c);
        st = amqp_simple_wait_frame_noblock(a->c, &f, &tv);
        if (st != AMQP_STATUS_OK) {
            snprintf(err, errlen, "waiting for the publisher confirm: %s",
                     amqp_error_string2(st));
            return CEL_APUB_ERROR;
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD:
            return returned ? CEL_APUB_RETURNED : CEL_APUB_OK;
        case AMQP_BASIC_NACK_METHOD:
            snprintf(err, errlen, "the broker refused the message (basic.nack)");
            return CEL_APUB_NACKED;
        case AMQP_BASIC_RETURN_METHOD: {
            const amqp_basic_return_t *m = f.payload.method.decoded;
            snprintf(err, errlen, "unroutable: %u %.*s", m->reply_code, (int)m->reply_text.len,
                     (const char *)m->reply_text.bytes);
            amqp_message_t msg;
            amqp_rpc_reply_t r = amqp_read_message(a->c, f.channel, &msg, 0);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                return CEL_APUB_ERROR;
            amqp_destroy_message(&msg);
            returned = true; /* the basic.ack follows */
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD: {
            amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                                  .reply = f.payload.method};
            char why[256];
            snprintf(err, errlen, "%s", cel_aconn_error(r, why, sizeof why));
            return CEL_APUB_ERROR;
        }
        default:
            break;
        }
    }
}
