/* fuzz_score.c — libFuzzer target for the name scorer.
 *
 * The input is two names separated by the first TAB (or split in half when
 * there is none). Both are prepared, compared both ways, their features and
 * fields read; the checks abort on a score outside 0-100, an asymmetric
 * NO_DATA, a field that is not NUL-terminated within its buffer, or a
 * bit-parallel metric that disagrees with its textbook version. ASan/UBSan
 * catch the rest. Build and run: tests/fuzz/run.sh.
 */
#include "celeriac/score.h"
#include "score/score_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_metrics(const char *a, size_t la, const char *b, size_t lb)
{
    if (la > CS_MASK_MAX || lb > CS_MASK_MAX)
        return;
    for (size_t i = 0; i < la; i++)
        if (a[i] < 'a' || a[i] > 'z')
            return;
    for (size_t i = 0; i < lb; i++)
        if (b[i] < 'a' || b[i] > 'z')
            return;
    uint16_t pm[26];
    cs_masks(b, lb, pm);
    double x = cs_jw_scalar(a, la, b, lb), y = cs_jw_bits(a, la, b, lb, pm);
    if (x != y && (x - y > 1e-12 || y - x > 1e-12))
        abort();
    if (lb && cs_osa_scalar(a, la, b, lb) != cs_osa_bits(a, la, lb, pm))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    const char *tab = memchr(s, '\t', size);
    size_t la = tab ? (size_t)(tab - s) : size / 2;
    const char *b = tab ? tab + 1 : s + la;
    size_t lb = size - (size_t)(b - s);
    /* copies of exactly the input length, so ASan sees any over-read */
    char *ca = malloc(la ? la : 1), *cb = malloc(lb ? lb : 1);
    if (!ca || !cb)
        abort();
    memcpy(ca, s, la);
    memcpy(cb, b, lb);
    cel_score_name x, y;
    cel_score_prepare(ca, la, &x);
    cel_score_prepare(cb, lb, &y);
    cel_score_result r = cel_score_compare(&x, &y), q = cel_score_compare(&y, &x);
    if (r.score < 0 || r.score > 100 || q.score < 0 || q.score > 100)
        abort();
    if ((r.cls == CEL_SCORE_NO_DATA) != (q.cls == CEL_SCORE_NO_DATA))
        abort();
    double f[CEL_SCORE_NFEATURES];
    size_t nf = cel_score_features(&x, &y, f, CEL_SCORE_NFEATURES);
    if (nf != 0 && nf != CEL_SCORE_NFEATURES)
        abort();
    char buf[64];
    for (int k = CEL_SCORE_FIELD_FULL; k <= CEL_SCORE_FIELD_TITLE; k++) {
        cel_score_name_field(&x, (cel_score_field)k, buf, sizeof buf);
        if (!memchr(buf, 0, sizeof buf))
            abort();
    }
    cel_score_reasons_format(r.reasons, buf, sizeof buf);
    cel_score_normalize(ca, la, buf, sizeof buf);
    check_metrics(ca, la, cb, lb);
    free(ca);
    free(cb);
    return 0;
}
