/* util.h — small helpers every module shares: base64, zlib, ISO 8601 time,
 * uuid4, growable byte buffers.  No I/O, no globals.
 *
 * Ownership: functions returning `char *` hand over a malloc'd,
 * NUL-terminated string the caller frees.
 */
#ifndef CELERIAC_UTIL_H
#define CELERIAC_UTIL_H

#include <stdbool.h>
#include <stddef.h>

/* Standard alphabet, padded. Returns malloc'd text; *out_len (optional) gets
 * its length. */
char *cel_b64_encode(const void *data, size_t len, size_t *out_len);
/* Decodes standard base64 (padding optional, whitespace rejected).  Returns a
 * malloc'd buffer (NUL-terminated for convenience) and its length in
 * *out_len, or NULL if the input is not valid base64. */
char *cel_b64_decode(const char *text, size_t len, size_t *out_len);

/* Inflates a zlib stream (Celery's "application/x-gzip" compression).
 * Returns malloc'd bytes (NUL-terminated) or NULL; refuses output larger than
 * `max_out` bytes. */
char *cel_zlib_inflate(const void *data, size_t len, size_t max_out, size_t *out_len);

/* Parses ISO 8601 as Python's isoformat() writes it: "YYYY-MM-DDTHH:MM:SS",
 * optional ".ffffff" (1–6 digits), optional "Z" or "+HH:MM"/"-HH:MM".  A
 * naive time is taken as UTC.  Returns 0 and epoch seconds in *out, or -1. */
int cel_iso8601_parse(const char *s, double *out);
/* Formats epoch seconds as Python's datetime.isoformat(): microseconds
 * omitted when zero; with_offset adds "+00:00" (eta/expires), without it the
 * string is naive UTC (date_done).  `buf` needs 33 bytes. */
void cel_iso8601_format(double epoch, bool with_offset, char *buf, size_t buflen);

/* Wall-clock epoch seconds and a monotonic clock, both as doubles. */
double cel_now(void);
double cel_monotonic(void);

/* Writes a random (version 4) uuid in canonical lower-case form; `buf` needs
 * 37 bytes. */
void cel_uuid4(char buf[37]);

/* Broker connections re-established since start (for metrics; the
 * transports count them). */
extern unsigned long cel_broker_reconnects;

/* A growable byte buffer.  Zero-initialise; cel_buf_free releases. */
typedef struct cel_buf {
    char *data;
    size_t len, cap;
} cel_buf;

int cel_buf_reserve(cel_buf *b, size_t extra); /* 0 or -1 (ENOMEM) */

/* Room for one more element in a growable array `*arrp` (any element type,
 * `elem` bytes each) holding `n` of `*cap`: doubles the capacity, starting at
 * `first`, when full.  Returns 0, or -1 with the array unchanged when out of
 * memory. */
int cel_grow(void *arrp, size_t *cap, size_t n, size_t elem, size_t first);
int cel_buf_append(cel_buf *b, const void *data, size_t len);
void cel_buf_consume(cel_buf *b, size_t n); /* drop n bytes from the front */
void cel_buf_free(cel_buf *b);

#endif
