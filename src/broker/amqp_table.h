/* amqp_table.h — AMQP 0-9-1 field tables <-> JSON, as py-amqp writes and
 * reads them.
 *
 * Celery's protocol v2 headers travel as an AMQP field table.  py-amqp's tag
 * table differs from RabbitMQ's (shared/docs/celery-wire-contract.md §4.2):
 * it writes 64-bit ints as 'L' (which librabbitmq-c calls U64) and means them
 * signed.  The decoder accepts every tag librabbitmq-c decodes; the encoder
 * writes only S I L d t A F V, the subset Python emits and reads back
 * identically.
 */
#ifndef CELERIAC_AMQP_TABLE_H
#define CELERIAC_AMQP_TABLE_H

#include <amqp.h>
#include <jansson.h>

/* A field value as JSON (new reference; NULL only when out of memory):
 *   t -> true/false (any non-zero byte is true); s u I i l -> integer;
 *   b -> integer read UNSIGNED and B -> integer read SIGNED (py-amqp swaps
 *   librabbitmq's int8/uint8); L -> integer, the 64 bits read as signed
 *   (py-amqp's meaning); l -> signed too (py-amqp reads it unsigned, which
 *   an int64 cannot hold above 2^63); f d -> real (NaN/inf -> null);
 *   D -> real, the 32-bit value read signed (as py-amqp) / 10^decimals;
 *   S x -> string (invalid UTF-8: each maximal ill-formed subpart becomes
 *   U+FFFD, as Python's 'replace'; NULs kept); T -> "YYYY-MM-DDTHH:MM:SS"
 *   UTC, as Python's isoformat() of the naive UTC datetime py-amqp makes
 *   (null beyond year 9999, where Python raises); A -> array; F -> object;
 *   V -> null; an unknown kind -> null. */
json_t *cel_amqp_value_to_json(const amqp_field_value_t *v);

/* A table as a JSON object (new reference; NULL when out of memory).  A key
 * repeated in the table: the last value wins, in the key's first position,
 * as in a Python dict.  Keys get the same U+FFFD treatment as strings
 * (py-amqp raises on an invalid UTF-8 key). */
json_t *cel_amqp_table_to_json(const amqp_table_t *t);

/* Encodes a JSON object as a table into *out, allocating from `pool` (the
 * caller owns the pool; every key and string is copied into it, so *out
 * lives as long as the pool, independently of `obj`).  The tags are those
 * py-amqp writes for the same Python value, so the bytes match its dumps():
 * string -> S, integer -> I when -2^31 < v < 2^31 (py-amqp writes -2^31
 * itself as L) else L, real -> d, true/false -> t, null -> V, array -> A,
 * object -> F.  Returns 0, or -1 when `obj` is not an object, a key is
 * longer than 255 bytes, or the pool is out of memory; after -1, *out holds
 * only what was converted so far. */
int cel_json_to_amqp_table(const json_t *obj, amqp_pool_t *pool, amqp_table_t *out);

/* The same for one value (used for arrays and nested objects). */
int cel_json_to_amqp_value(const json_t *v, amqp_pool_t *pool, amqp_field_value_t *out);

#endif
