/* fuzz_pidbox.c — libFuzzer target for the remote-control command decoder
 * (cel_control_handle, src/control/control.c).
 *
 * Why a stub host: control.c reaches the worker only through the
 * cel_control_host callbacks, so with callbacks that record instead of act
 * the decoder runs alone, exactly as the worker calls it with a pub/sub or
 * AMQP delivery.  The input is the kombu envelope text (seeds: the captured
 * `celery inspect/control` and Python API broadcasts).
 *
 * Checks beyond ASan/UBSan: every reply body is JSON that jansson reads back
 * as an object keyed by our hostname, with a non-empty ticket, exchange and
 * routing key; the Lamport clock never goes backwards; revoke gets only
 * non-NULL ids.  A fresh cel_control per input keeps runs independent (and
 * the leak checker sees the revoked set freed).
 * Build and run: tests/fuzz/run.sh.
 */
#include "control/control.h"
#include "core/log.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define HOST "celeriac@fuzz"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    cel_log_set_level(CEL_LOG_CRITICAL); /* malformed requests are logged */
    return 0;
}

static int stub_revoke(void *ud, const char *const *ids, size_t n, bool terminate, int signum)
{
    for (size_t i = 0; i < n; i++)
        if (!ids[i])
            abort();
    return 0;
}

static int stub_reply(void *ud, const char *exchange, const char *routing_key, const char *ticket,
                      long long clock, const char *body, size_t len)
{
    if (!exchange || !routing_key || !ticket || !body)
        abort();
    json_t *j = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(j) || json_object_size(j) != 1 || !json_object_get(j, HOST))
        abort();
    json_decref(j);
    ++*(int *)ud;
    return 0;
}

static bool stub_events(void *ud, bool on) { return !on; }

static void stub_heartbeat(void *ud) {}

/* A few commands the worker itself answers; the rest is "unknown". */
static json_t *stub_command(void *ud, const char *method, const json_t *args, bool *reply)
{
    if (!strcmp(method, "shutdown")) {
        *reply = false;
        return json_null();
    }
    if (!strcmp(method, "stats") || !strcmp(method, "active_queues"))
        return json_pack("{s:O*}", "args", args);
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size ? size : 1); /* exact length for ASan */
    if (!s)
        abort();
    memcpy(s, data, size);
    int replies = 0;
    cel_control_host host = {
        .ud = &replies,
        .hostname = HOST,
        .revoke = stub_revoke,
        .reply = stub_reply,
        .set_task_events = stub_events,
        .heartbeat = stub_heartbeat,
        .command = stub_command,
    };
    cel_control *c = cel_control_new(&host);
    if (!c)
        abort();
    long long before = cel_control_clock(c);
    cel_control_handle(c, s, size);
    long long after = cel_control_clock(c);
    if (after < before)
        abort();
    /* the same request again: revoked ids stay revoked, clock goes on */
    cel_control_handle(c, s, size);
    if (cel_control_clock(c) < after)
        abort();
    cel_control_is_revoked(c, "x");
    cel_control_free(c);
    free(s);
    return 0;
}
