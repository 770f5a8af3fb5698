/* metrics.c — the string metrics the scorer combines: Jaro-Winkler,
 * optimal string alignment (restricted Damerau) distance and NYSIIS.
 *
 * Why bit-parallel: a name part is short (nearly always <= 32 letters), so
 * one 32-bit word holds the positions of a letter in it. The prepared name
 * keeps, per part, a mask per letter a-z ("pm", built once at prepare
 * time); Jaro's match search then becomes a few AND/ANDNOT per character
 * (no inner window loop) and OSA is Hyyrö's bit-vector recurrence (2003),
 * one step per character. Parts that are not pure a-z or are longer than 32
 * use the plain O(n*m) versions below, which are also the reference the
 * tests and the fuzz target check the bit-parallel versions against.
 *
 * Why NYSIIS and not Double Metaphone: NYSIIS was designed on (US) person
 * names, is deterministic with one code per name, and is short enough to
 * precompute and compare as 8 bytes.
 */
#include "score/score_internal.h"

#include <string.h>

/* ---- Jaro-Winkler ------------------------------------------------------ */

static double winkler(double jaro, const char *a, size_t alen, const char *b, size_t blen)
{
    if (jaro <= 0.7)
        return jaro;
    size_t l = 0, lim = alen < blen ? alen : blen;
    if (lim > 4)
        lim = 4;
    while (l < lim && a[l] == b[l])
        l++;
    return jaro + (double)l * 0.1 * (1.0 - jaro);
}

/* The textbook algorithm: for each character of a, the first unmatched equal
 * character of b within the window. */
double cs_jw_scalar(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen == 0 || blen == 0)
        return (alen == blen) ? 1.0 : 0.0;
    if (alen > CS_MAX_METRIC_LEN)
        alen = CS_MAX_METRIC_LEN;
    if (blen > CS_MAX_METRIC_LEN)
        blen = CS_MAX_METRIC_LEN;
    size_t maxl = alen > blen ? alen : blen;
    size_t w = maxl / 2 >= 1 ? maxl / 2 - 1 : 0;
    unsigned char am[CS_MAX_METRIC_LEN] = {0}, bm[CS_MAX_METRIC_LEN] = {0};
    size_t m = 0;
    for (size_t i = 0; i < alen; i++) {
        size_t lo = i > w ? i - w : 0, hi = i + w + 1 < blen ? i + w + 1 : blen;
        for (size_t j = lo; j < hi; j++) {
            if (!bm[j] && a[i] == b[j]) {
                am[i] = bm[j] = 1;
                m++;
                break;
            }
        }
    }
    if (m == 0)
        return 0.0;
    size_t t = 0, j = 0;
    for (size_t i = 0; i < alen; i++) {
        if (!am[i])
            continue;
        while (!bm[j])
            j++;
        if (a[i] != b[j])
            t++;
        j++;
    }
    double md = (double)m;
    double jaro = (md / (double)alen + md / (double)blen + (md - (double)t / 2.0) / md) / 3.0;
    return winkler(jaro, a, alen, b, blen);
}

/* Bit-parallel: pmb holds b's letter masks (b pure a-z, blen <= 16, alen
 * <= 16; the arithmetic is 32-bit, the masks 16-bit to keep names small). "bound" is the match window of position i as a bit mask, slid one
 * step per character; pmb has no bits at or past blen. */
double cs_jw_bits(const char *a, size_t alen, const char *b, size_t blen, const uint16_t *pmb)
{
    if (alen == 0 || blen == 0)
        return (alen == blen) ? 1.0 : 0.0;
    size_t maxl = alen > blen ? alen : blen;
    size_t w = maxl / 2 >= 1 ? maxl / 2 - 1 : 0;
    uint32_t bflag = 0, aflag = 0;
    uint32_t bound = w + 1 >= 32 ? 0xffffffffu : ((1u << (w + 1)) - 1u);
    unsigned m = 0;
    size_t end = blen + w < alen ? blen + w : alen; /* past it the window is beyond b */
    for (size_t i = 0; i < end; i++) {
        unsigned c = (unsigned char)a[i] - 'a';
        uint32_t x = (c < 26 ? pmb[c] : 0) & bound & ~bflag;
        if (x) {
            bflag |= x & (0u - x);
            aflag |= 1u << i;
            m++;
        }
        bound = i < w ? (bound << 1) | 1u : bound << 1;
    }
    if (!m)
        return 0.0;
    unsigned t = 0;
    uint32_t bf = bflag;
    while (aflag) {
        int i = __builtin_ctz(aflag);
        int j = __builtin_ctz(bf);
        t += a[i] != b[j];
        aflag &= aflag - 1;
        bf &= bf - 1;
    }
    double md = (double)m;
    double jaro = (md / (double)alen + md / (double)blen + (md - (double)t / 2.0) / md) / 3.0;
    return winkler(jaro, a, alen, b, blen);
}

/* ---- OSA (restricted Damerau-Levenshtein) ------------------------------- */

int cs_osa_scalar(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen > CS_MAX_METRIC_LEN)
        alen = CS_MAX_METRIC_LEN;
    if (blen > CS_MAX_METRIC_LEN)
        blen = CS_MAX_METRIC_LEN;
    int d[CS_MAX_METRIC_LEN + 1][CS_MAX_METRIC_LEN + 1];
    for (size_t i = 0; i <= alen; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= blen; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= alen; i++) {
        for (size_t j = 1; j <= blen; j++) {
            int cost = a[i - 1] != b[j - 1];
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    }
    return d[alen][blen];
}

/* Hyyrö's bit-vector OSA: pattern b (masks pmb, 1 <= blen <= 16), text a.
 * Bits above blen hold garbage that never flows down into bit blen-1. */
int cs_osa_bits(const char *a, size_t alen, size_t blen, const uint16_t *pmb)
{
    if (blen == 0)
        return (int)alen;
    uint32_t vp = blen >= 32 ? 0xffffffffu : ((1u << blen) - 1u);
    uint32_t vn = 0, d0 = 0, pm_old = 0;
    uint32_t last = 1u << (blen - 1);
    int dist = (int)blen;
    for (size_t i = 0; i < alen; i++) {
        unsigned c = (unsigned char)a[i] - 'a';
        uint32_t pm = c < 26 ? pmb[c] : 0;
        uint32_t tr = (((~d0) & pm) << 1) & pm_old;
        d0 = (((pm & vp) + vp) ^ vp) | pm | vn;
        d0 |= tr;
        uint32_t hp = vn | ~(d0 | vp);
        uint32_t hn = d0 & vp;
        if (hp & last)
            dist++;
        if (hn & last)
            dist--;
        hp = (hp << 1) | 1u;
        hn = hn << 1;
        vp = hn | ~(d0 | hp);
        vn = hp & d0;
        pm_old = pm;
    }
    return dist;
}

void cs_masks(const char *s, size_t len, uint16_t *pm)
{
    memset(pm, 0, 26 * sizeof *pm);
    for (size_t i = 0; i < len && i < CS_MASK_MAX; i++) {
        unsigned c = (unsigned char)s[i] - 'a';
        if (c < 26)
            pm[c] = (uint16_t)(pm[c] | (1u << i));
    }
}

double cel_score_jaro_winkler(const char *a, size_t alen, const char *b, size_t blen)
{
    return cs_jw_scalar(a, alen, b, blen);
}

int cel_score_osa_distance(const char *a, size_t alen, const char *b, size_t blen)
{
    return cs_osa_scalar(a, alen, b, blen);
}

/* ---- NYSIIS --------------------------------------------------------------- */

static int vowel(char c)
{
    return c == 'A' || c == 'E' || c == 'I' || c == 'O' || c == 'U';
}

/* NYSIIS as in the original (Taft 1970) with the common modern rules
 * (jellyfish's), code cut at 8 letters. */
size_t cel_score_nysiis(const char *in, size_t len, char *out, size_t cap)
{
    char s[CS_MAX_METRIC_LEN + 4];
    size_t n = 0;
    for (size_t i = 0; i < len && n < CS_MAX_METRIC_LEN; i++) {
        char c = in[i];
        if (c >= 'a' && c <= 'z')
            s[n++] = (char)(c - 'a' + 'A');
        else if (c >= 'A' && c <= 'Z')
            s[n++] = c;
    }
    if (cap == 0)
        return 0;
    out[0] = 0;
    if (n == 0)
        return 0;
    s[n] = 0;
    /* prefixes */
    if (n >= 3 && !memcmp(s, "MAC", 3)) {
        s[1] = 'C';
    } else if (n >= 2 && s[0] == 'K' && s[1] == 'N') {
        memmove(s, s + 1, n--);
    } else if (s[0] == 'K') {
        s[0] = 'C';
    } else if (n >= 2 && s[0] == 'P' && (s[1] == 'H' || s[1] == 'F')) {
        s[0] = s[1] = 'F';
    } else if (n >= 3 && !memcmp(s, "SCH", 3)) {
        s[1] = s[2] = 'S';
    }
    /* suffixes */
    if (n >= 2) {
        char x = s[n - 2], y = s[n - 1];
        if ((x == 'I' || x == 'E') && y == 'E') {
            s[n - 2] = 'Y';
            n--;
        } else if ((x == 'D' && y == 'T') || (x == 'R' && y == 'T') || (x == 'R' && y == 'D') ||
                   (x == 'N' && y == 'T') || (x == 'N' && y == 'D')) {
            s[n - 2] = 'D';
            n--;
        }
    }
    s[n] = 0;
    char key[2 * CS_MAX_METRIC_LEN + 8];
    size_t k = 0;
    key[k++] = s[0];
    for (size_t i = 1; i < n; i++) {
        char ch[3] = {s[i], 0, 0};
        size_t chn = 1;
        if (s[i] == 'E' && i + 1 < n && s[i + 1] == 'V') {
            ch[0] = 'A';
            ch[1] = 'F';
            chn = 2;
            i++;
        } else if (vowel(s[i])) {
            ch[0] = 'A';
        } else if (s[i] == 'Q') {
            ch[0] = 'G';
        } else if (s[i] == 'Z') {
            ch[0] = 'S';
        } else if (s[i] == 'M') {
            ch[0] = 'N';
        } else if (s[i] == 'K') {
            ch[0] = (i + 1 < n && s[i + 1] == 'N') ? 'N' : 'C';
        } else if (s[i] == 'S' && i + 2 < n && s[i + 1] == 'C' && s[i + 2] == 'H') {
            ch[0] = ch[1] = 'S';
            chn = 2;
            i += 2;
        } else if (s[i] == 'P' && i + 1 < n && s[i + 1] == 'H') {
            ch[0] = 'F';
            i++;
        } else if (s[i] == 'H' &&
                   (!vowel(s[i - 1]) || i + 1 >= n || !vowel(s[i + 1]))) {
            ch[0] = vowel(s[i - 1]) ? 'A' : s[i - 1];
        } else if (s[i] == 'W' && vowel(s[i - 1])) {
            ch[0] = s[i - 1];
        }
        if (ch[chn - 1] != key[k - 1]) {
            for (size_t q = 0; q < chn; q++)
                key[k++] = ch[q];
        }
    }
    if (k > 1 && key[k - 1] == 'S')
        k--;
    if (k > 1 && key[k - 2] == 'A' && key[k - 1] == 'Y') {
        key[k - 2] = 'Y';
        k--;
    }
    if (k > 1 && key[k - 1] == 'A')
        k--;
    if (k > 8)
        k = 8;
    size_t w = k < cap - 1 ? k : cap - 1;
    memcpy(out, key, w);
    out[w] = 0;
    return k;
}
