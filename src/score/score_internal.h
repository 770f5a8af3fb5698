/* score_internal.h — the layout of a prepared name and the pieces shared by
 * the scorer's translation units. Not installed; the public view is
 * include/celeriac/score.h. */
#ifndef CELERIAC_SCORE_INTERNAL_H
#define CELERIAC_SCORE_INTERNAL_H

#include "celeriac/score.h"
#include "score/lexicon.h"

#include <stddef.h>
#include <stdint.h>

#define CS_MAX_INPUT 255     /* input bytes read */
#define CS_MAX_TOK 10        /* tokens kept */
#define CS_MAX_PARTS 12      /* tokens + joined forms of multi-word units */
#define CS_MAX_UNITS 8
#define CS_TEXT 224          /* normalised text + joined forms */
#define CS_FULL_MAX 160      /* room for the normalised full name */
#define CS_MASK_MAX 16       /* parts up to this long get bit masks */
#define CS_MAX_METRIC_LEN 48 /* longer parts are compared on their first 48 bytes */

enum { /* part flags */
    CS_P_ASCII = 1,    /* only a-z and len <= CS_MASK_MAX: bit-parallel metrics apply */
    CS_P_INITIAL = 2,  /* one letter */
    CS_P_PARTICLE = 4, /* van, de, al ... */
    CS_P_JOINED = 8,   /* the concatenation of a unit's words */
};

/* 28 bytes: the lexicon facts are copied in, so a comparison never touches
 * the lexicon table except to intersect two nickname group lists; the
 * letter masks are built per comparison for a's parts (compare.c). */
typedef struct cs_part {
    uint16_t off;      /* into text */
    uint8_t len;
    uint8_t flags;     /* CS_P_* */
    uint16_t gfirst;   /* nickname groups: cel_lex_groups[gfirst .. +ngroups) */
    uint8_t ngroups;
    uint8_t sex;       /* lexicon: 1 male, 2 female given name, 0 either/unknown */
    uint8_t grar, srar; /* lexicon: given/surname rarity, 0 unknown */
    uint8_t nys_len;
    char nys[8];       /* NYSIIS code, not NUL-terminated */
    uint32_t bag;      /* the letters as a multiset (a sum of per-letter constants), 0 if not a-z */
    uint32_t lset;     /* the letters as a set (bit c-'a'), 0 if not a-z */
} cs_part;

typedef struct cs_unit {
    uint8_t first, n;  /* word parts first .. first+n-1 */
    uint8_t joined;    /* the part compared as a whole (== first when n == 1) */
    uint8_t main;      /* the last non-particle word part */
} cs_unit;

#define CS_NONE 0xff

/* One reading of the name: which unit is the given name, which the surname,
 * which units are middle names. */
#define CS_MAX_MID 5
typedef struct cs_interp {
    uint8_t given, surname; /* unit index or CS_NONE */
    uint8_t mid_n;
    uint8_t mid[CS_MAX_MID]; /* middle-name units, in order */
} cs_interp;

enum { /* name flags */
    CS_N_NODATA = 1,
    CS_N_COMMA = 2,  /* "SURNAME, GIVEN" form */
    CS_N_SINGLE = 4, /* one unit only: role unknown */
};

typedef struct cs_name {
    uint32_t magic;
    uint8_t flags;
    uint8_t gen;     /* generation suffix, 0 none */
    uint8_t nparts, nunits, ninterp;
    uint8_t full_len;
    uint8_t title_off, title_len, suffix_off, suffix_len; /* into text */
    uint16_t text_len;
    cs_interp interp[2]; /* [0] as written (given first / comma form), [1] surname first */
    cs_unit units[CS_MAX_UNITS];
    char text[CS_TEXT];
    cs_part parts[CS_MAX_PARTS]; /* last: only the first nparts are touched */
} cs_name;

#define CS_MAGIC 0x53434f52u

_Static_assert(sizeof(cs_name) <= sizeof(cel_score_name), "cel_score_name too small");

static inline const cs_name *cs_cname(const cel_score_name *n)
{
    return (const cs_name *)(const void *)n;
}

/* metrics.c */
double cs_jw_scalar(const char *a, size_t alen, const char *b, size_t blen);
double cs_jw_bits(const char *a, size_t alen, const char *b, size_t blen, const uint16_t *pmb);
int cs_osa_scalar(const char *a, size_t alen, const char *b, size_t blen);
int cs_osa_bits(const char *a, size_t alen, size_t blen, const uint16_t *pmb);
void cs_masks(const char *s, size_t len, uint16_t *pm);

#endif
