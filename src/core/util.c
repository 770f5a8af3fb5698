/* util.c — shared helpers: base64, zlib inflate, ISO 8601, clocks, uuid4,
 * growable buffers.
 *
 * Why hand-written rather than pulled from a library: each helper is small,
 * has to match Python's exact output (base64 alphabet/padding,
 * datetime.isoformat()) and must treat its input as hostile (it comes off the
 * broker).  Everything here is pure computation on caller memory except the
 * clocks and the uuid generator; there are no globals.
 *
 * Time conversions use the proleptic-Gregorian day-count algorithm (Howard
 * Hinnant's days_from_civil / civil_from_days) instead of timegm()/gmtime_r()
 * so they are exact over Python's whole year range 1..9999 and independent of
 * the process TZ.
 */
#include "core/util.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <uuid/uuid.h>
#include <zlib.h>

/* ---- base64 ---------------------------------------------------------- */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *cel_b64_encode(const void *data, size_t len, size_t *out_len)
{
    const unsigned char *in = data;
    if (len > (SIZE_MAX - 1) / 4 * 3 - 3)
        return NULL;
    size_t n = (len + 2) / 3 * 4;
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)in[i + 1] << 8;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    if (out_len)
        *out_len = n;
    return out;
}

/* 0..63 for alphabet bytes, -1 otherwise. */
static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

char *cel_b64_decode(const char *text, size_t len, size_t *out_len)
{
    if (!text && len)
        return NULL;
    /* Strip padding: at most two '=', and only if it completes a quantum. */
    size_t data_len = len;
    size_t pad = 0;
    while (data_len > 0 && text[data_len - 1] == '=' && pad < 2) {
        data_len--;
        pad++;
    }
    if (pad && len % 4 != 0)
        return NULL;
    if (data_len % 4 == 1)
        return NULL; /* a lone sextet cannot encode a byte */

    size_t n = data_len / 4 * 3 + (data_len % 4 ? data_len % 4 - 1 : 0);
    char *out = malloc(n + 1);
    if (!out)
        return NULL;
    unsigned char *o = (unsigned char *)out;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < data_len; i++) {
        int v = b64_value((unsigned char)text[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    *o = '\0';
    if (out_len)
        *out_len = n;
    return out;
}

/* ---- zlib --------------------------------------------------------------- */

char *cel_zlib_inflate(const void *data, size_t len, size_t max_out, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit(&zs) != Z_OK)
        return NULL;

    size_t cap = len < 1024 ? 4096 : len > max_out / 4 ? max_out : len * 4;
    if (cap > max_out)
        cap = max_out;
    char *out = malloc(cap + 1);
    size_t have = 0;
    const unsigned char *in = data;
    size_t in_left = len;
    int rc = Z_OK;

    while (out) {
        if (zs.avail_in == 0 && in_left) {
            uInt chunk = in_left > UINT_MAX ? UINT_MAX : (uInt)in_left;
            zs.next_in = (Bytef *)(uintptr_t)in;
            zs.avail_in = chunk;
            in += chunk;
            in_left -= chunk;
        }
        if (have == cap) {
            if (cap >= max_out)
                break; /* would exceed the limit */
            size_t ncap = cap > max_out / 2 ? max_out : cap * 2;
            char *p = realloc(out, ncap + 1);
            if (!p)
                break;
            out = p;
            cap = ncap;
        }
        size_t room = cap - have;
        zs.next_out = (Bytef *)out + have;
        zs.avail_out = room > UINT_MAX ? UINT_MAX : (uInt)room;
        uInt before = zs.avail_out;
        rc = inflate(&zs, Z_NO_FLUSH);
        have += before - zs.avail_out;
        if (rc == Z_STREAM_END)
            break;
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            break;
        /* No progress possible: input exhausted with output room left. */
        if (rc == Z_BUF_ERROR && zs.avail_in == 0 && in_left == 0)
            break;
    }
    inflateEnd(&zs);
    if (!out || rc != Z_STREAM_END) {
        free(out);
        return NULL;
    }
    out[have] = '\0';
    if (out_len)
        *out_len = have;
    return out;
}

/* ---- ISO 8601 ----------------------------------------------------------- */

static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Reads exactly `n` digits at *p; advances. */
static bool read_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return false;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return true;
}

/* Accepts what Celery's own parser (celery.utils.iso8601) accepts from
 * Python producers: date, optional 'T'/' ' + HH:MM[:SS[.fraction]], optional
 * 'Z' / ±HH:MM (±HHMM tolerated).  Fractions beyond microseconds are
 * truncated like Python's.  Trailing garbage is an error. */
int cel_iso8601_parse(const char *s, double *out)
{
    if (!s || !out)
        return -1;
    const char *p = s;
    int Y, M, D, h = 0, mi = 0, sec = 0;
    long usec = 0;
    if (!read_digits(&p, 4, &Y) || *p++ != '-' || !read_digits(&p, 2, &M) ||
        *p++ != '-' || !read_digits(&p, 2, &D))
        return -1;
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (Y < 1 || M < 1 || M > 12 || D < 1 ||
        D > mdays[M - 1] + (M == 2 && is_leap(Y)))
        return -1;

    int offset_min = 0;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (!read_digits(&p, 2, &h) || *p++ != ':' || !read_digits(&p, 2, &mi))
            return -1;
        if (*p == ':') {
            p++;
            if (!read_digits(&p, 2, &sec))
                return -1;
            if (*p == '.' || *p == ',') {
                p++;
                if (*p < '0' || *p > '9')
                    return -1;
                long scale = 100000;
                for (; *p >= '0' && *p <= '9'; p++) {
                    usec += (*p - '0') * scale;
                    scale /= 10;
                }
            }
        }
        if (h > 23 || mi > 59 || sec > 59)
            return -1;
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
            if (!read_digits(&p, 2, &oh))
                return -1;
            if (*p == ':') {
                p++;
                if (!read_digits(&p, 2, &om))
                    return -1;
            } else if (*p && !read_digits(&p, 2, &om)) {
                return -1;
            }
            if (oh > 23 || om > 59)
                return -1;
            offset_min = sign * (oh * 60 + om);
        }
    }
    if (*p != '\0')
        return -1;
    int64_t days = days_from_civil(Y, (unsigned)M, (unsigned)D);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - (int64_t)offset_min * 60;
    *out = (double)secs + (double)usec / 1e6;
    return 0;
}

void cel_iso8601_format(double epoch, bool with_offset, char *buf, size_t buflen)
{
    if (!buf || buflen == 0)
        return;
    /* Clamp into Python's datetime range (years 1..9999). */
    const int64_t lo_us = -62135596800LL * 1000000, hi_us = 253402300800LL * 1000000 - 1;
    if (!(epoch >= -62135596800.0)) /* also catches NaN */
        epoch = -62135596800.0;
    if (epoch > 253402300800.0)
        epoch = 253402300800.0;
    double scaled = epoch * 1e6; /* round half away from zero, no libm */
    int64_t total_us = (int64_t)(scaled + (scaled < 0 ? -0.5 : 0.5));
    if (total_us < lo_us)
        total_us = lo_us;
    if (total_us > hi_us)
        total_us = hi_us;
    int64_t secs = total_us / 1000000, us = total_us % 1000000;
    if (us < 0) {
        us += 1000000;
        secs -= 1;
    }
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days -= 1;
    }
    int64_t y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    int n = snprintf(buf, buflen, "%04lld-%02u-%02uT%02d:%02d:%02d", (long long)y, m, d,
                     (int)(sod / 3600), (int)(sod / 60 % 60), (int)(sod % 60));
    if (n < 0 || (size_t)n >= buflen)
        return;
    if (us)
        n += snprintf(buf + n, buflen - (size_t)n, ".%06d", (int)us);
    if (with_offset && n >= 0 && (size_t)n < buflen)
        snprintf(buf + n, buflen - (size_t)n, "+00:00");
}

/* ---- clocks, uuid ------------------------------------------------------- */

double cel_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double cel_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

unsigned long cel_broker_reconnects;

/* libuuid's uuid_generate_random() costs a getrandom() call, an srandom()
 * reseed and a getpid() per id — ~4% of the parent's time with task events
 * on (one id per event).  The same kernel randomness is drawn 64 ids at a
 * time instead.  A forked child must never reuse its parent's unused bytes
 * (two processes would hand out the same ids), so fork empties the pool. */
static unsigned char uuid_pool[64 * 16];
static size_t uuid_pool_left;

static void uuid_pool_forget(void) { uuid_pool_left = 0; }

static void cel_uuid4_atfork(void) { pthread_atfork(NULL, NULL, uuid_pool_forget); }

void cel_uuid4(char buf[37])
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, cel_uuid4_atfork);
    uuid_t u;
    if (uuid_pool_left == 0) {
        ssize_t n = getrandom(uuid_pool, sizeof uuid_pool, 0);
        uuid_pool_left = n == (ssize_t)sizeof uuid_pool ? sizeof uuid_pool / 16 : 0;
    }
    if (uuid_pool_left == 0) { /* getrandom failed: libuuid has fallbacks */
        uuid_generate_random(u);
    } else {
        memcpy(u, uuid_pool + 16 * --uuid_pool_left, 16);
        u[6] = (unsigned char)((u[6] & 0x0f) | 0x40); /* version 4 */
        u[8] = (unsigned char)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    }
    uuid_unparse_lower(u, buf);
}

/* ---- cel_buf ------------------------------------------------------------ */

int cel_buf_reserve(cel_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1) {
        errno = ENOMEM;
        return -1;
    }
    size_t need = b->len + extra + 1; /* +1 keeps room for a NUL terminator */
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

int cel_buf_append(cel_buf *b, const void *data, size_t len)
{
    if (cel_buf_reserve(b, len) < 0)
        return -1;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

void cel_buf_consume(cel_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data)
        b->data[b->len] = '\0';
}

void cel_buf_free(cel_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int cel_grow(void *arrp, size_t *cap, size_t n, size_t elem, size_t first)
{
    if (n < *cap)
        return 0;
    size_t ncap = *cap ? 2 * *cap : first;
    void *old;
    memcpy(&old, arrp, sizeof old); /* any T **, without aliasing games */
    void *p = realloc(old, ncap * elem);
    if (!p)
        return -1;
    memcpy(arrp, &p, sizeof p);
    *cap = ncap;
    return 0;
}
