/* test_util.c — base64, zlib, ISO 8601, clocks, uuid4 and cel_buf.
 *
 * Vectors come from RFC 4648 (base64), the captured Celery messages
 * (ISO strings and their epoch values as Python computes them) and the
 * captured zlib-compressed body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "core/util.h"

static void test_b64_encode_rfc4648(void **state)
{
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        size_t n = 99;
        char *s = cel_b64_encode(in[i], strlen(in[i]), &n);
        assert_non_null(s);
        assert_string_equal(s, out[i]);
        assert_int_equal(n, strlen(out[i]));
        free(s);
    }
}

static void test_b64_decode_padded_and_unpadded(void **state)
{
    static const char *const enc[] = {"", "Zg==", "Zg", "Zm8=", "Zm8", "Zm9v", "Zm9vYg==", "Zm9vYg",
                                      "Zm9vYmFy"};
    static const char *const dec[] = {"", "f", "f", "fo", "fo", "foo", "foob", "foob", "foobar"};
    for (size_t i = 0; i < sizeof enc / sizeof *enc; i++) {
        size_t n = 99;
        char *s = cel_b64_decode(enc[i], strlen(enc[i]), &n);
        assert_non_null(s);
        assert_int_equal(n, strlen(dec[i]));
        assert_memory_equal(s, dec[i], n);
        assert_int_equal(s[n], '\0');
        free(s);
    }
}

static void test_b64_decode_rejects_invalid(void **state)
{
    static const char *const bad[] = {"Z",     "Zg=",    "Zg===",  "Zm9v!",   "Zm 9v", "Zm9v\n",
                                      "Zm-v",  "Zm_v",   "=Zm9",   "Zg==Zg==", "Zm9vY", "Z==="};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t n;
        char *s = cel_b64_decode(bad[i], strlen(bad[i]), &n);
        if (s)
            fail_msg("accepted invalid base64 '%s'", bad[i]);
    }
}

static void test_b64_binary_round_trip(void **state)
{
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    for (size_t len = 0; len <= 256; len += 37) {
        size_t elen, dlen;
        char *e = cel_b64_encode(all, len, &elen);
        assert_non_null(e);
        char *d = cel_b64_decode(e, elen, &dlen);
        assert_non_null(d);
        assert_int_equal(dlen, len);
        assert_memory_equal(d, all, len);
        free(e);
        free(d);
    }
}

/* The compression='zlib' body from redis-task-options.json. */
static const char captured_zlib_b64[] =
    "eJyLjjbUUTCK1VGorgVipeTEnJykxOTsYiUrhbzSnBwdBaXUoiI0keSMxMw8ZG5+UQqUWxsLAAnRGfA=";
static const char captured_zlib_plain[] =
    "[[1, 2], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]";

static void test_zlib_inflate_capture(void **state)
{
    size_t zlen, n;
    char *z = cel_b64_decode(captured_zlib_b64, strlen(captured_zlib_b64), &zlen);
    assert_non_null(z);
    char *out = cel_zlib_inflate(z, zlen, 1 << 20, &n);
    assert_non_null(out);
    assert_int_equal(n, strlen(captured_zlib_plain));
    assert_string_equal(out, captured_zlib_plain);
    free(out);
    /* Exactly the size fits; one byte less does not. */
    out = cel_zlib_inflate(z, zlen, strlen(captured_zlib_plain), &n);
    assert_non_null(out);
    free(out);
    assert_null(cel_zlib_inflate(z, zlen, strlen(captured_zlib_plain) - 1, &n));
    /* Truncated stream and corrupted stream. */
    assert_null(cel_zlib_inflate(z, zlen - 5, 1 << 20, &n));
    z[zlen / 2] ^= 0x55;
    out = cel_zlib_inflate(z, zlen, 1 << 20, &n);
    if (out) /* a flipped bit may still inflate; the checksum must then fail */
        fail_msg("corrupted stream inflated");
    free(z);
    assert_null(cel_zlib_inflate("not zlib at all", 15, 1 << 20, &n));
    assert_null(cel_zlib_inflate("", 0, 1 << 20, &n));
}

static void test_zlib_inflate_large_and_bomb(void **state)
{
    size_t big = 3 << 20; /* grows the output buffer several times */
    char *src = malloc(big);
    assert_non_null(src);
    for (size_t i = 0; i < big; i++)
        src[i] = (char)('a' + (i * 7 % 26));
    uLongf zcap = compressBound(big);
    unsigned char *z = malloc(zcap);
    assert_non_null(z);
    assert_int_equal(compress(z, &zcap, (const Bytef *)src, big), Z_OK);
    size_t n;
    char *out = cel_zlib_inflate(z, zcap, big, &n);
    assert_non_null(out);
    assert_int_equal(n, big);
    assert_memory_equal(out, src, big);
    free(out);
    /* A tiny stream expanding past the cap is refused. */
    assert_null(cel_zlib_inflate(z, zcap, 1 << 20, &n));
    free(z);
    free(src);
}

static void assert_parses(const char *s, double want)
{
    double t = -1;
    if (cel_iso8601_parse(s, &t) != 0)
        fail_msg("did not parse '%s'", s);
    if (fabs(t - want) > 5e-7)
        fail_msg("'%s' -> %.6f, want %.6f", s, t, want);
}

static void test_iso8601_parse_captured(void **state)
{
    /* Values from Python: datetime.fromisoformat(s).timestamp() */
    assert_parses("2026-11-28T10:43:39.447028+00:00", 1795862619.447028);
    assert_parses("2030-01-02T03:04:05+00:00", 1893553445.0);
    assert_parses("2026-11-28T10:44:09.855070+00:00", 1795862649.85507);
    assert_parses("2026-11-28T10:46:07.492638+00:00", 1795862767.492638);
    /* naive = UTC; Z; offsets */
    assert_parses("2030-01-02T03:04:05", 1893553445.0);
    assert_parses("2030-01-02T03:04:05Z", 1893553445.0);
    assert_parses("2030-01-02T05:04:05+02:00", 1893553445.0);
    assert_parses("2030-01-01T21:34:05-05:30", 1893553445.0);
    assert_parses("2030-01-02 03:04:05.5", 1893553445.5);
    assert_parses("2030-01-02T03:04:05.123", 1893553445.123);
    assert_parses("1970-01-01T00:00:00", 0);
    assert_parses("1969-12-31T23:59:59.500000", -0.5);
    assert_parses("2024-02-29T00:00:00+00:00", 1709164800.0);
    assert_parses("2030-01-02T03:04", 1893553440.0);
}

static void test_iso8601_parse_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "2026",
        "2026-13-01T00:00:00",
        "2026-00-01T00:00:00",
        "2026-02-30T00:00:00",
        "2023-02-29T00:00:00",
        "2026-11-28T24:00:00",
        "2026-11-28T10:60:00",
        "2026-11-28T10:43:60",
        "2026-11-28T10:43:39+00:00x",
        "2026-11-28T10:43:39.+00:00",
        "2026-11-28T10:43:39+0",
        "2026-11-28T10:43:39+00:",
        "2026-11-28X10:43:39",
        "26-11-28T10:43:39",
        "2026-11-28T1:43:39",
        "tomorrow",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        double t;
        if (cel_iso8601_parse(bad[i], &t) == 0)
            fail_msg("accepted '%s'", bad[i]);
    }
    double t;
    assert_int_equal(cel_iso8601_parse(NULL, &t), -1);
}

static void test_iso8601_format_like_python(void **state)
{
    char buf[33];
    cel_iso8601_format(1795862619.447028, true, buf, sizeof buf);
    assert_string_equal(buf, "2026-11-28T10:43:39.447028+00:00");
    cel_iso8601_format(1893553445.0, true, buf, sizeof buf);
    assert_string_equal(buf, "2030-01-02T03:04:05+00:00");
    /* date_done style (naive); value from redis-results.json SUCCESS */
    cel_iso8601_format(1795862765.47594, false, buf, sizeof buf);
    assert_string_equal(buf, "2026-11-28T10:46:05.475940");
    cel_iso8601_format(-0.5, false, buf, sizeof buf);
    assert_string_equal(buf, "1969-12-31T23:59:59.500000");
    cel_iso8601_format(951782400.000001, false, buf, sizeof buf);
    assert_string_equal(buf, "2000-02-29T00:00:00.000001");
    /* longest form fits the documented 33 bytes */
    cel_iso8601_format(253402300799.5, true, buf, sizeof buf);
    assert_string_equal(buf, "9999-12-31T23:59:59.500000+00:00");
    /* out-of-range and non-finite values clamp to Python's datetime range */
    cel_iso8601_format(1e300, true, buf, sizeof buf);
    assert_string_equal(buf, "9999-12-31T23:59:59.999999+00:00");
    cel_iso8601_format(-1e300, false, buf, sizeof buf);
    assert_string_equal(buf, "0001-01-01T00:00:00");
    cel_iso8601_format(NAN, false, buf, sizeof buf);
    assert_string_equal(buf, "0001-01-01T00:00:00");
    /* small buffers are truncated, not overrun */
    char tiny[8];
    cel_iso8601_format(0, true, tiny, sizeof tiny);
    assert_int_equal(strlen(tiny), 7);
}

static void test_iso8601_round_trip(void **state)
{
    char buf[33];
    for (int64_t us = -86400000000LL * 400; us < 86400000000LL * 40000; us += 123456789012LL) {
        double t = (double)us / 1e6, back;
        cel_iso8601_format(t, us % 2 == 0, buf, sizeof buf);
        assert_int_equal(cel_iso8601_parse(buf, &back), 0);
        if (fabs(back - t) > 1e-6)
            fail_msg("%s: %.6f != %.6f", buf, back, t);
    }
}

static void test_clocks(void **state)
{
    double now = cel_now();
    assert_true(now > 1.6e9 && now < 1e10);
    double a = cel_monotonic(), b = cel_monotonic();
    assert_true(b >= a);
}

static void test_uuid4_format(void **state)
{
    char a[37], b[37];
    cel_uuid4(a);
    cel_uuid4(b);
    assert_int_equal(strlen(a), 36);
    assert_string_not_equal(a, b);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            assert_int_equal(a[i], '-');
        else
            assert_true(isxdigit((unsigned char)a[i]) && !isupper((unsigned char)a[i]));
    }
    assert_int_equal(a[14], '4');
    assert_non_null(strchr("89ab", a[19]));
}

/* cel_uuid4 draws from a pool of random bytes: a forked child must not hand
 * out the ids its parent will (pool processes build messages too). */
static void test_uuid4_after_fork(void **state)
{
    (void)state;
    char first[37], parent[37], child[37] = "";
    cel_uuid4(first); /* fills the pool before the fork */
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        cel_uuid4(child);
        _exit(write(p[1], child, 37) == 37 ? 0 : 1);
    }
    close(p[1]);
    assert_int_equal(read(p[0], child, 37), 37);
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cel_uuid4(parent);
    assert_string_not_equal(parent, child);
    assert_string_not_equal(first, child);
}

static void test_buf(void **state)
{
    cel_buf b = {0};
    assert_int_equal(cel_buf_append(&b, "hello ", 6), 0);
    assert_int_equal(cel_buf_append(&b, "world", 5), 0);
    assert_int_equal(b.len, 11);
    assert_string_equal(b.data, "hello world");
    cel_buf_consume(&b, 6);
    assert_int_equal(b.len, 5);
    assert_string_equal(b.data, "world");
    for (int i = 0; i < 10000; i++)
        assert_int_equal(cel_buf_append(&b, "0123456789", 10), 0);
    assert_int_equal(b.len, 100005);
    assert_true(b.cap > b.len);
    assert_memory_equal(b.data + 100000, "56789", 5);
    assert_int_equal(cel_buf_reserve(&b, 1000), 0);
    assert_true(b.cap >= b.len + 1000);
    assert_int_equal(cel_buf_reserve(&b, SIZE_MAX - 2), -1);
    cel_buf_consume(&b, b.len + 10);
    assert_int_equal(b.len, 0);
    cel_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    cel_buf_consume(&b, 3); /* on an empty buffer: no-op */
    cel_buf_free(&b);
}

static void test_grow(void **state)
{
    (void)state;
    long *a = NULL;
    size_t n = 0, cap = 0;
    for (long i = 0; i < 100; i++) {
        assert_int_equal(cel_grow(&a, &cap, n, sizeof *a, 4), 0);
        assert_true(cap > n);
        a[n++] = i;
    }
    assert_int_equal(cap, 128); /* 4, 8, ..., 128: doubling from `first` */
    for (long i = 0; i < 100; i++)
        assert_int_equal(a[i], i);
    /* Not full: nothing moves. */
    long *before = a;
    assert_int_equal(cel_grow(&a, &cap, 100, sizeof *a, 4), 0);
    assert_ptr_equal(a, before);
    free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_encode_rfc4648),
        cmocka_unit_test(test_b64_decode_padded_and_unpadded),
        cmocka_unit_test(test_b64_decode_rejects_invalid),
        cmocka_unit_test(test_b64_binary_round_trip),
        cmocka_unit_test(test_zlib_inflate_capture),
        cmocka_unit_test(test_zlib_inflate_large_and_bomb),
        cmocka_unit_test(test_iso8601_parse_captured),
        cmocka_unit_test(test_iso8601_parse_rejects),
        cmocka_unit_test(test_iso8601_format_like_python),
        cmocka_unit_test(test_iso8601_round_trip),
        cmocka_unit_test(test_clocks),
        cmocka_unit_test(test_uuid4_format),
        cmocka_unit_test(test_uuid4_after_fork),
        cmocka_unit_test(test_buf),
        cmocka_unit_test(test_grow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
