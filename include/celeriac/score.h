/* celeriac/score.h — the RPC/WPC person-name scorer.
 *
 * Decides whether two person names (the name on a record and the name tied
 * to a contact point, e.g. a phone's caller-ID owner) are the same person:
 * RPC (right party contact), WPC (wrong party contact), REVIEW (between the
 * two default thresholds) or NO_DATA (one side has no usable name).
 *
 * Use:
 *
 *     cel_score_name a, b;                       // caller-owned storage
 *     cel_score_prepare("Robert J. Smith Jr", SIZE_MAX, &a);
 *     cel_score_prepare("SMITH, BOB", SIZE_MAX, &b);
 *     cel_score_result r = cel_score_compare(&a, &b);
 *     // r.score 0-100, r.cls CEL_SCORE_RPC, r.reasons CEL_SCORE_R_NICKNAME|...
 *
 * Prepare each name once (normalising, parsing, per-token bit masks and
 * phonetic codes) and compare it against many prepared names; comparing
 * allocates nothing and touches only the two names. Nothing allocates at
 * all: a prepared name lives in the caller's fixed-size cel_score_name.
 * All functions are thread-safe (no global mutable state).
 *
 * The design and the data behind it: docs/scoring.md.
 */
#ifndef CELERIAC_SCORE_H
#define CELERIAC_SCORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Storage for one prepared name. Opaque: only the library reads it. Plain
 * memory, no pointers inside: it may be copied with memcpy, kept in arrays,
 * and dropped without any cleanup. */
#define CEL_SCORE_NAME_SIZE 640
typedef union cel_score_name {
    unsigned char opaque_[CEL_SCORE_NAME_SIZE];
    uint64_t align_;
} cel_score_name;

typedef enum cel_score_class {
    CEL_SCORE_NO_DATA = 0, /* one side has no usable name */
    CEL_SCORE_WPC = 1,     /* wrong party */
    CEL_SCORE_REVIEW = 2,  /* between the thresholds: a person should look */
    CEL_SCORE_RPC = 3,     /* right party */
} cel_score_class;

/* Reason codes (bits of cel_score_result.reasons): the evidence that drove
 * the score. Several may be set. */
enum cel_score_reason {
    CEL_SCORE_R_EXACT = 1u << 0,            /* given and surname agree exactly */
    CEL_SCORE_R_NICKNAME = 1u << 1,         /* given names are nickname-equivalent (Bob/Robert) */
    CEL_SCORE_R_SWAPPED = 1u << 2,          /* one side is in surname-first order without a comma */
    CEL_SCORE_R_INITIAL = 1u << 3,          /* a given name matched only as an initial */
    CEL_SCORE_R_PHONETIC = 1u << 4,         /* a part matched by sound (NYSIIS) only */
    CEL_SCORE_R_TYPO = 1u << 5,             /* a part matched within a small edit distance */
    CEL_SCORE_R_SUFFIX_CONFLICT = 1u << 6,  /* Jr vs Sr, II vs III */
    CEL_SCORE_R_SURNAME_ONLY = 1u << 7,     /* one side has only a surname */
    CEL_SCORE_R_GIVEN_CONFLICT = 1u << 8,   /* the given names are different names */
    CEL_SCORE_R_SURNAME_CONFLICT = 1u << 9, /* the surnames are different names */
    CEL_SCORE_R_TRUNCATED = 1u << 10,       /* a part is a prefix of the other (caller-ID cut) */
    CEL_SCORE_R_PARTIAL_SURNAME = 1u << 11, /* one part of a double/hyphenated surname matched */
    CEL_SCORE_R_MIDDLE_CONFLICT = 1u << 12, /* both have middle names and they differ */
    CEL_SCORE_R_GIVEN_ONLY = 1u << 13,      /* one side has only a given name */
    CEL_SCORE_R_SIMILAR = 1u << 14,         /* a part is only loosely similar (Jaro-Winkler) */
    CEL_SCORE_R_NO_DATA = 1u << 15,         /* one side has no usable name */
    CEL_SCORE_R_MIDDLE_NAME = 1u << 16,     /* a given name matched the other's middle name
                                               ("J. Robert Smith" / "Robert Smith") */
};
#define CEL_SCORE_R_HYPHENATED CEL_SCORE_R_PARTIAL_SURNAME

typedef struct cel_score_result {
    int score;           /* 0-100, calibrated: about the probability of a match in % */
    cel_score_class cls; /* at the shipped default thresholds */
    unsigned reasons;    /* enum cel_score_reason bits */
} cel_score_result;

/* Normalise and parse utf8[0..len) into *out and return out. len may be
 * SIZE_MAX for a NUL-terminated string. Never fails: invalid UTF-8, empty or
 * unusable input gives a name that compares as NO_DATA; overlong input is
 * cut (at 255 bytes of input, 16 tokens). utf8 may be NULL when len is 0.
 * The caller owns *out; it holds no reference to utf8 afterwards. */
cel_score_name *cel_score_prepare(const char *utf8, size_t len, cel_score_name *out);

/* Compare two prepared names. Reads only *a and *b; allocates nothing. */
cel_score_result cel_score_compare(const cel_score_name *a, const cel_score_name *b);

/* Prepare both raw strings (on the stack) and compare them. */
cel_score_result cel_score_compare_raw(const char *a, size_t alen, const char *b, size_t blen);

/* Thresholds: the class of a score at the shipped defaults. */
cel_score_class cel_score_classify(int score);
int cel_score_rpc_threshold(void);    /* score >= this is RPC */
int cel_score_review_threshold(void); /* score >= this (and < RPC) is REVIEW */

/* "RPC", "REVIEW", "WPC", "NO_DATA"; static strings. */
const char *cel_score_class_name(cel_score_class cls);

/* Write the reason names, comma-separated ("NICKNAME,SWAPPED"), NUL-terminated
 * into buf[0..cap); an empty string for 0. Returns the length the full text
 * needs (like snprintf), so a return >= cap means it was cut. */
size_t cel_score_reasons_format(unsigned reasons, char *buf, size_t cap);

/* The model's version string (static), e.g. "lr-2026-11-28a". */
const char *cel_score_model_version(void);

/* The parsed parts of a prepared name, for storage (normalised, lower case,
 * accents stripped; parts of a multi-word field joined by one space). */
typedef enum cel_score_field {
    CEL_SCORE_FIELD_FULL = 0, /* the whole normalised name, in input order */
    CEL_SCORE_FIELD_GIVEN,
    CEL_SCORE_FIELD_MIDDLE,
    CEL_SCORE_FIELD_SURNAME,
    CEL_SCORE_FIELD_SUFFIX,   /* "jr", "sr", "ii", ... as written (normalised) */
    CEL_SCORE_FIELD_TITLE,    /* the first title word dropped, if any */
} cel_score_field;

/* Copy one field into buf[0..cap) NUL-terminated; returns the length the
 * full text needs (like snprintf). An absent field gives "". */
size_t cel_score_name_field(const cel_score_name *n, cel_score_field f, char *buf, size_t cap);

/* 1 if the name has a usable name part, 0 if it would compare as NO_DATA. */
int cel_score_name_usable(const cel_score_name *n);

/* Features of the best alignment of a and b, as the model sees them, for the
 * offline fit (src/score/fit_model.py). Writes min(count, cap) values into
 * out and returns the count (CEL_SCORE_NFEATURES); 0 for NO_DATA pairs. */
#define CEL_SCORE_NFEATURES 33
size_t cel_score_features(const cel_score_name *a, const cel_score_name *b, double *out,
                          size_t cap);
/* The name of feature i (static string), NULL past the end. */
const char *cel_score_feature_name(size_t i);

/* The string metrics, exposed for tests and baselines. They work on bytes;
 * the scorer applies them to normalised tokens. */
double cel_score_jaro_winkler(const char *a, size_t alen, const char *b, size_t blen);
int cel_score_osa_distance(const char *a, size_t alen, const char *b, size_t blen);
/* NYSIIS code of the lower-case ASCII letters of s (others skipped), at most
 * 8 letters, upper case, NUL-terminated in out[0..cap). Returns its length. */
size_t cel_score_nysiis(const char *s, size_t len, char *out, size_t cap);
/* Normalise utf8 as the scorer does (tokens separated by one space, ',' and
 * '-' kept as token marks) into out[0..cap), NUL-terminated; returns the length. */
size_t cel_score_normalize(const char *utf8, size_t len, char *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
