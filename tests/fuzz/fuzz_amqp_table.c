/* fuzz_amqp_table.c — libFuzzer target for the AMQP field-table <-> JSON
 * bridge (src/broker/amqp_table.c).
 *
 * Why through amqp_decode_properties: that is how a delivery's headers reach
 * us — librabbitmq decodes the content-header frame's property list (flags,
 * then the fields, the headers table among them) and the AMQP transport
 * hands p->headers to cel_amqp_table_to_json.  The input is exactly such a
 * property list (seeds: the captured Celery messages re-encoded by
 * tests/fuzz/make_seeds.py), so mutations reach every tag and nesting.
 *
 * Round trip: JSON j1 of the decoded table -> cel_json_to_amqp_table ->
 * amqp_encode_table -> amqp_decode_table -> JSON j2 must equal j1.  Every
 * lossy step (invalid UTF-8 -> U+FFFD, timestamps -> text, NaN -> null, the
 * int tags -> I/L) happens on the way to j1, so the second pass must be
 * exact.  The only allowed failure going back is a key longer than 255
 * bytes (U+FFFD replacement can lengthen one).
 * Build and run: tests/fuzz/run.sh.
 */
#include "broker/amqp_table.h"
#include "fuzz_json.h"

#include <amqp.h>
#include <amqp_framing.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Whether some key of `v` (recursively) is longer than AMQP's shortstr. */
static int has_long_key(const json_t *v)
{
    const char *k;
    json_t *x;
    size_t i;
    if (json_is_object(v)) {
        size_t klen;
        json_object_keylen_foreach((json_t *)v, k, klen, x) {
            if (klen > 255 || has_long_key(x))
                return 1;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, x) {
            if (has_long_key(x))
                return 1;
        }
    }
    return 0;
}

static void round_trip(const json_t *j1)
{
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    memset(&t, 0, sizeof t);
    int rc = cel_json_to_amqp_table(j1, &pool, &t);
    if (rc < 0) {
        if (!has_long_key(j1))
            abort();
        empty_amqp_pool(&pool);
        return;
    }
    /* grow the buffer until it fits; librabbitmq 0.11 reports a buffer that
     * is too small for a string as BAD_AMQP_DATA rather than TABLE_TOO_BIG,
     * so both mean "try bigger" until 64 MiB */
    size_t cap = 1024;
    for (;;) {
        void *buf = malloc(cap);
        if (!buf)
            abort();
        size_t off = 0;
        amqp_bytes_t enc = {cap, buf};
        int erc = amqp_encode_table(enc, &t, &off);
        if ((erc == AMQP_STATUS_TABLE_TOO_BIG || erc == AMQP_STATUS_BAD_AMQP_DATA) &&
            cap < (1u << 26)) {
            free(buf);
            cap *= 4;
            continue;
        }
        if (erc != AMQP_STATUS_OK) {
            fprintf(stderr, "amqp_encode_table: %s\n", amqp_error_string2(erc));
            abort();
        }
        amqp_table_t t2;
        size_t doff = 0;
        amqp_bytes_t got = {off, buf};
        if (amqp_decode_table(got, &pool, &t2, &doff) != AMQP_STATUS_OK || doff != off)
            abort();
        json_t *j2 = cel_amqp_table_to_json(&t2);
        if (!j2 || !fuzz_json_same(j1, j2)) {
            char *a = json_dumps(j1, JSON_SORT_KEYS), *b = j2 ? json_dumps(j2, JSON_SORT_KEYS) : NULL;
            fprintf(stderr, "round trip differs:\n  %s\n  %s\n", a ? a : "?", b ? b : "?");
            abort();
        }
        json_decref(j2);
        free(buf);
        break;
    }
    empty_amqp_pool(&pool);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void *copy = malloc(size ? size : 1); /* exact length for ASan */
    if (!copy)
        abort();
    memcpy(copy, data, size);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_basic_properties_t *p = NULL;
    amqp_bytes_t in = {size, copy};
    if (amqp_decode_properties(AMQP_BASIC_CLASS, &pool, in, (void **)&p) == AMQP_STATUS_OK && p &&
        (p->_flags & AMQP_BASIC_HEADERS_FLAG)) {
        json_t *j1 = cel_amqp_table_to_json(&p->headers);
        if (!json_is_object(j1))
            abort();
        round_trip(j1);
        /* each value alone, as arrays and nested tables go through it */
        for (int i = 0; i < p->headers.num_entries; i++) {
            json_t *v = cel_amqp_value_to_json(&p->headers.entries[i].value);
            if (!v)
                abort();
            json_decref(v);
        }
        json_decref(j1);
    }
    empty_amqp_pool(&pool);
    free(copy);
    return 0;
}
