/* amqp_ceiling.c — how fast can anything drain a RabbitMQ queue here?
 *
 * bench/amqp-ceiling runs this against the messages bench/throughput uses:
 * a consumer that does no work at all — basic.consume with a prefetch
 * window, then an ack per message (or one ack with multiple=true every k
 * messages) — so its rate is the broker's own ceiling for a worker on this
 * machine, whatever the worker does.  Why it exists: it tells whether a
 * target rate on RabbitMQ is reachable at all before anyone tunes a worker
 * for it.
 *
 *   amqp-ceiling-c PORT COUNT PREFETCH ACK_EVERY
 *
 * prints one JSON line {"messages": N, "seconds": S, "per_s": R, ...},
 * timed from the first delivery to the last ack written. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int fail(const char *what)
{
    fprintf(stderr, "amqp-ceiling-c: %s\n", what);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return fail("usage: amqp-ceiling-c PORT COUNT PREFETCH ACK_EVERY");
    int port = atoi(argv[1]), count = atoi(argv[2]), prefetch = atoi(argv[3]);
    int every = atoi(argv[4]);
    if (port <= 0 || count <= 0 || prefetch <= 0 || prefetch > 65535 || every <= 0)
        return fail("bad arguments");
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (!s || amqp_socket_open(s, "127.0.0.1", port) != AMQP_STATUS_OK)
        return fail("cannot connect");
    if (amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest").reply_type !=
        AMQP_RESPONSE_NORMAL)
        return fail("login failed");
    amqp_channel_open(c, 1);
    amqp_basic_qos(c, 1, 0, (uint16_t)prefetch, 1); /* global, as Celery asks */
    amqp_basic_consume(c, 1, amqp_cstring_bytes("celery"), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    if (amqp_get_rpc_reply(c).reply_type != AMQP_RESPONSE_NORMAL)
        return fail("basic.consume failed");
    double t0 = 0;
    int got = 0;
    uint64_t last = 0;
    while (got < count) {
        amqp_envelope_t e;
        amqp_maybe_release_buffers(c);
        if (amqp_consume_message(c, &e, NULL, 0).reply_type != AMQP_RESPONSE_NORMAL)
            return fail("consume failed");
        if (!got)
            t0 = now();
        got++;
        last = e.delivery_tag;
        if (every == 1)
            amqp_basic_ack(c, 1, e.delivery_tag, 0);
        else if (got % every == 0)
            amqp_basic_ack(c, 1, e.delivery_tag, 1);
        amqp_destroy_envelope(&e);
    }
    if (every > 1)
        amqp_basic_ack(c, 1, last, 1);
    double dt = now() - t0;
    printf("{\"messages\": %d, \"seconds\": %.4f, \"per_s\": %.0f, \"prefetch\": %d, "
           "\"ack_every\": %d}\n",
           got, dt, got / dt, prefetch, every);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}
