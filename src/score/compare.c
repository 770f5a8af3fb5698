/* compare.c — score two prepared names: align their parts, grade each
 * aligned pair of parts, and turn the grades into one calibrated score.
 *
 * Why grades and not one similarity: a single string metric cannot tell a
 * nickname (Bob/Robert, JW 0.47) from a different name (Jon/Jan, JW 0.8), nor
 * a spouse (same surname, other given name) from a typo. So each aligned
 * pair of parts gets the strongest applicable grade — exact, nickname
 * (shared canonical name in the compiled table), truncated (caller-ID cut),
 * typo (OSA distance 1, or 2 on long parts), phonetic (equal NYSIIS), initial,
 * similar (Jaro-Winkler >= 0.85), conflict — and the grades, with name
 * frequency, middle names, suffixes and order, are the features of a
 * logistic regression fitted offline (model.h). The score is its
 * probability in %, so thresholds mean the same thing across inputs.
 *
 * Why several alignments: a name without a comma may be surname-first
 * ("SMITH JOHN"), and a one-word name may be a surname or a given name. Each
 * reading is scored with the same model and the most likely one wins; a
 * win by a surname-first reading is reported as SWAPPED. Part-pair grades
 * are cached per comparison (at most 8x8), so extra readings cost little.
 */
#include "score/score_internal.h"
#include "score/model.h"

#include <math.h>
#include <string.h>

_Static_assert(sizeof cs_model_w / sizeof cs_model_w[0] == CEL_SCORE_NFEATURES, "model size");

/* Grades, weakest first. TYPO2: the same letters in another order
 * ("ilivoa"/"olivia", "jsneo"/"jones"), beyond what OSA calls a typo.
 * EDIT2: OSA distance 2 between parts of 4-6 letters ("wcignt"/"wright"):
 * weak for given names (many different names are that close), useful for
 * surnames; the model weighs the two roles separately. */
enum {
    L_NONE = 0, L_CONFLICT, L_SIMILAR, L_EDIT2, L_TYPO2, L_INITIAL, L_PHON, L_TYPO, L_TRUNC, L_NICK,
    L_EXACT
};

typedef struct cs_sim {
    uint8_t level, partial;
    float jw;
} cs_sim;

enum { /* feature indices */
    F_BIAS = 0,
    F_G_EXACT, F_G_NICK, F_G_TRUNC, F_G_TYPO, F_G_PHON, F_G_INITIAL, F_G_SIMILAR, F_G_CONFLICT,
    F_G_JW,
    F_S_EXACT, F_S_PARTIAL, F_S_TRUNC, F_S_TYPO, F_S_PHON, F_S_INITIAL, F_S_SIMILAR, F_S_CONFLICT,
    F_S_JW,
    F_S_RARITY, F_G_RARITY,
    F_M_AGREE, F_M_CONFLICT,
    F_SUFFIX_CONFLICT, F_SWAPPED, F_SURNAME_ONLY, F_GIVEN_ONLY, F_SEX_CONFLICT,
    F_G_WEAK_M_AGREE, F_G_TYPO2, F_S_TYPO2, F_G_EDIT2, F_S_EDIT2,
    F_COUNT
};
_Static_assert(F_COUNT == CEL_SCORE_NFEATURES, "feature count");

static const char *const feature_names[F_COUNT] = {
    "bias",
    "g_exact", "g_nick", "g_trunc", "g_typo", "g_phon", "g_initial", "g_similar", "g_conflict",
    "g_jw",
    "s_exact", "s_partial", "s_trunc", "s_typo", "s_phon", "s_initial", "s_similar", "s_conflict",
    "s_jw",
    "s_rarity", "g_rarity",
    "m_agree", "m_conflict",
    "suffix_conflict", "swapped", "surname_only", "given_only", "sex_conflict",
    "g_weak_m_agree", "g_typo2", "s_typo2", "g_edit2", "s_edit2",
};

const char *cel_score_feature_name(size_t i)
{
    return i < F_COUNT ? feature_names[i] : NULL;
}

/* ---- part and unit grades -------------------------------------------------- */

static int popcount32(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0f0f0f0fu;
    return (int)((x * 0x01010101u) >> 24);
}

static int share_group(const cs_part *x, const cs_part *y)
{
    const uint16_t *p = cel_lex_groups + x->gfirst, *pe = p + x->ngroups;
    const uint16_t *q = cel_lex_groups + y->gfirst, *qe = q + y->ngroups;
    while (p < pe && q < qe) {
        if (*p == *q)
            return 1;
        if (*p < *q)
            p++;
        else
            q++;
    }
    return 0;
}

/* One comparison's scratch: the unit-pair grades, and the letter masks of
 * a's parts. The masks live here, not in the prepared name, so candidates
 * stay small (a one-to-many scan is bound by memory, not arithmetic) and
 * the subject's masks are built once per comparison and part, when needed.
 * So the bit-parallel metrics take b's letters as the text and a's masks as
 * the pattern: Jaro-Winkler is the textbook JW(s1 = b, s2 = a). */
typedef struct ctx {
    const cs_name *a, *b;
    uint64_t done;
    uint16_t pm_done;
    cs_sim sim[CS_MAX_UNITS][CS_MAX_UNITS];
    uint16_t pm[CS_MAX_PARTS][26];
} ctx;

static const uint16_t *masks_of(ctx *c, int i)
{
    if (!(c->pm_done & (1u << i))) {
        const cs_part *p = &c->a->parts[i];
        cs_masks(c->a->text + p->off, p->len, c->pm[i]);
        c->pm_done = (uint16_t)(c->pm_done | (1u << i));
    }
    return c->pm[i];
}

static cs_sim part_sim(ctx *c, int i, int j)
{
    const cs_name *A = c->a, *B = c->b;
    const cs_part *pa = &A->parts[i], *pb = &B->parts[j];
    cs_sim r = {L_CONFLICT, 0, 0.0f};
    const char *s = A->text + pa->off, *t = B->text + pb->off;
    size_t ls = pa->len, lt = pb->len;
    if (ls == lt && s[0] == t[0] && !memcmp(s, t, ls)) {
        r.level = L_EXACT;
        r.jw = 1.0f;
        return r;
    }
    if ((pa->flags | pb->flags) & CS_P_INITIAL) {
        r.level = s[0] == t[0] ? L_INITIAL : L_CONFLICT;
        return r;
    }
    int ascii = (pa->flags & pb->flags & CS_P_ASCII) != 0;
    if (pa->ngroups && pb->ngroups && share_group(pa, pb)) {
        r.level = L_NICK;
        return r;
    }
    size_t mn = ls < lt ? ls : lt;
    size_t diff = ls > lt ? ls - lt : lt - ls;
    /* a cut word (caller-ID's 15 characters: "CHRISTOP") is no name of its
     * own; "daniel" in "danielle" is a different name, not a truncation.
     * One missing last letter ("HILLEGAS" / "HILLEGASS") is a one-letter
     * deletion as much as a cut: it takes the typo grade below */
    if (mn >= 3 && diff >= 2 && s[0] == t[0] && !memcmp(s, t, mn)) {
        const cs_part *sh = ls < lt ? pa : pb;
        if (!sh->grar && !sh->srar) {
            r.level = L_TRUNC;
            return r;
        }
    }
    /* OSA distance >= the length difference: skip it when no typo grade is possible */
    /* an edit changes the letter set by at most two letters (a substitution
     * drops one and adds one), so OSA >= ceil(|set difference| / 2): with
     * more than 4 letters not shared, no typo or edit-2 grade is possible */
    int d = 99;
    if (mn >= 3 && diff <= (mn >= 4 ? 2u : 1u) &&
        !(ascii && popcount32(pa->lset ^ pb->lset) > 4)) {
        d = ascii ? cs_osa_bits(t, lt, ls, masks_of(c, i)) : cs_osa_scalar(t, lt, s, ls);
        if ((d == 1) || (d == 2 && mn >= 7)) {
            r.level = L_TYPO;
            return r;
        }
    }
    if (pa->nys_len && pa->nys_len == pb->nys_len && !memcmp(pa->nys, pb->nys, pa->nys_len)) {
        r.level = L_PHON;
        return r;
    }
    if (mn >= 3 && pa->bag == pb->bag && pa->bag) {
        r.level = L_TYPO2;
        r.jw = (float)(ascii ? cs_jw_bits(t, lt, s, ls, masks_of(c, i)) : cs_jw_scalar(t, lt, s, ls));
        return r;
    }
    if (d == 2) {
        r.level = L_EDIT2;
        r.jw = (float)(ascii ? cs_jw_bits(t, lt, s, ls, masks_of(c, i)) : cs_jw_scalar(t, lt, s, ls));
        return r;
    }
    /* only the weak grades use the Jaro-Winkler value */
    r.jw = (float)(ascii ? cs_jw_bits(t, lt, s, ls, masks_of(c, i)) : cs_jw_scalar(t, lt, s, ls));
    if (r.jw >= 0.85f)
        r.level = L_SIMILAR;
    return r;
}

static int better(cs_sim x, cs_sim y)
{
    return x.level > y.level || (x.level == y.level && x.jw > y.jw);
}


static int content_parts(const cs_name *nm, const cs_unit *u)
{
    int c = 0;
    for (int i = u->first; i < u->first + u->n; i++)
        c += !(nm->parts[i].flags & CS_P_PARTICLE);
    return c;
}

static cs_sim unit_sim(ctx *c, uint8_t ua, uint8_t ub)
{
    const cs_name *A = c->a, *B = c->b;
    const cs_unit *u = &A->units[ua], *v = &B->units[ub];
    cs_sim best = part_sim(c, u->joined, v->joined);
    if (best.level == L_EXACT || (u->n == 1 && v->n == 1))
        return best;
    int partial = content_parts(A, u) > 1 || content_parts(B, v) > 1;
    for (int i = u->first; i < u->first + u->n; i++) {
        if (A->parts[i].flags & CS_P_PARTICLE)
            continue;
        for (int j = v->first; j < v->first + v->n; j++) {
            if (B->parts[j].flags & CS_P_PARTICLE)
                continue;
            cs_sim s = part_sim(c, i, j);
            if (s.level >= L_PHON && better(s, best)) {
                best = s;
                best.partial = (uint8_t)partial;
            }
        }
    }
    return best;
}


static cs_sim usim(ctx *c, uint8_t ua, uint8_t ub)
{
    uint64_t bit = 1ull << (ua * CS_MAX_UNITS + ub);
    if (!(c->done & bit)) {
        c->sim[ua][ub] = unit_sim(c, ua, ub);
        c->done |= bit;
    }
    return c->sim[ua][ub];
}

/* ---- features ------------------------------------------------------------ */

/* One candidate alignment: which units face each other, and the result. */
typedef struct align {
    double logit;
    cs_sim g, s;
    uint8_t ga, sa, gb, sb;
    const cs_interp *ia, *ib;
    uint8_t has_g, has_s, swapped, only;
    uint8_t midgiven; /* a's or b's middle name stands in for its initial given name */
    uint8_t gfix;     /* g is given (gsim), not looked up: a compound given name */
    cs_sim gsim;
    uint64_t active; /* bit i: feature i is non-zero (for the reasons) */
    unsigned reasons;
} align;

static const cs_part *unit_main(const cs_name *nm, uint8_t u)
{
    return &nm->parts[nm->units[u].main];
}

/* Score one alignment: the logit, and the feature values into f (when not
 * NULL, for --features and the fit). */
#define SETF(i, v)                                                                                 \
    do {                                                                                           \
        double v_ = (v);                                                                           \
        z += cs_model_w[i] * v_;                                                                   \
        al->active |= 1ull << (i);                                                                 \
        if (f)                                                                                     \
            f[i] = v_;                                                                             \
    } while (0)

static void evaluate(ctx *c, align *al, double *f)
{
    const cs_name *A = c->a, *B = c->b;
    uint8_t ga = al->ga, sa = al->sa, gb = al->gb, sb = al->sb;
    const cs_interp *ia = al->ia, *ib = al->ib;
    double z = 0.0;
    al->active = 0;
    al->has_g = al->has_s = 0;
    if (f)
        memset(f, 0, F_COUNT * sizeof *f);
    SETF(F_BIAS, 1.0);
    if (ga != CS_NONE && gb != CS_NONE) {
        cs_sim g = al->gfix ? al->gsim : usim(c, ga, gb);
        al->g = g;
        al->has_g = 1;
        static const int gi[] = {0, F_G_CONFLICT, F_G_SIMILAR, F_G_EDIT2, F_G_TYPO2,
                                 F_G_INITIAL, F_G_PHON, F_G_TYPO, F_G_TRUNC, F_G_NICK, F_G_EXACT};
        SETF(gi[g.level], 1.0);
        if (g.level <= L_TYPO2)
            SETF(F_G_JW, g.jw); /* grades the weak levels; the others are one-hot */
        const cs_part *x = unit_main(A, ga), *y = unit_main(B, gb);
        if (g.level >= L_PHON) {
            double r = x->grar ? x->grar / 10.0 : 4.5;
            SETF(F_G_RARITY, r - 3.0);
        }
        if (g.level < L_NICK && x->sex && y->sex && x->sex != y->sex)
            SETF(F_SEX_CONFLICT, 1.0);
    }
    if (sa != CS_NONE && sb != CS_NONE) {
        cs_sim s = usim(c, sa, sb);
        /* a double surname read as middle + surname ("Maria Garcia Lopez"
         * vs "Maria Garcia"): the other side's surname may match a middle */
        if (s.level < L_TYPO && ia && ib && !al->swapped) {
            for (int k = 0; k < ia->mid_n; k++) {
                const cs_unit *u = &A->units[ia->mid[k]];
                if (u->n == 1 && (A->parts[u->first].flags & CS_P_INITIAL))
                    continue;
                cs_sim m = usim(c, ia->mid[k], sb);
                if (m.level >= L_TYPO && m.level != L_NICK && better(m, s)) {
                    s = m;
                    s.partial = 1;
                }
            }
            for (int k = 0; k < ib->mid_n; k++) {
                const cs_unit *u = &B->units[ib->mid[k]];
                if (u->n == 1 && (B->parts[u->first].flags & CS_P_INITIAL))
                    continue;
                cs_sim m = usim(c, sa, ib->mid[k]);
                if (m.level >= L_TYPO && m.level != L_NICK && better(m, s)) {
                    s = m;
                    s.partial = 1;
                }
            }
        }
        al->s = s;
        al->has_s = 1;
        int idx;
        switch (s.level) {
        case L_EXACT: idx = F_S_EXACT; break;
        case L_TRUNC: idx = F_S_TRUNC; break;
        case L_TYPO: idx = F_S_TYPO; break;
        case L_TYPO2: idx = F_S_TYPO2; break;
        case L_EDIT2: idx = F_S_EDIT2; break;
        case L_PHON: idx = F_S_PHON; break;
        case L_INITIAL: idx = F_S_INITIAL; break;
        case L_NICK: case L_SIMILAR: idx = F_S_SIMILAR; break;
        default: idx = F_S_CONFLICT; break;
        }
        if (s.partial && s.level >= L_PHON)
            idx = F_S_PARTIAL;
        SETF(idx, 1.0);
        if (s.level <= L_TYPO2)
            SETF(F_S_JW, s.jw);
        if (s.level >= L_PHON) {
            const cs_part *x = unit_main(A, sa);
            double r = x->srar ? x->srar / 10.0 : 5.0;
            SETF(F_S_RARITY, r - 3.0);
        }
    }
    if (ia && ib && ia->mid_n && ib->mid_n) {
        cs_sim m = usim(c, ia->mid[0], ib->mid[0]);
        if (m.level >= L_INITIAL) {
            SETF(F_M_AGREE, 1.0);
            /* a garbled given name with an agreeing middle name (census keying) */
            if (al->has_g && al->g.level <= L_TYPO2 && al->g.jw > 0.7f)
                SETF(F_G_WEAK_M_AGREE, (al->g.jw - 0.7) / 0.3);
        } else {
            SETF(F_M_CONFLICT, 1.0);
        }
    }
    if (A->gen && B->gen && A->gen != B->gen)
        SETF(F_SUFFIX_CONFLICT, 1.0);
    if (al->swapped)
        SETF(F_SWAPPED, 1.0);
    if (al->only == 1)
        SETF(F_SURNAME_ONLY, 1.0);
    else if (al->only == 2)
        SETF(F_GIVEN_ONLY, 1.0);
    al->logit = z;
}

static void consider(ctx *c, align *best, uint8_t ga, uint8_t sa, uint8_t gb, uint8_t sb,
                     const cs_interp *ia, const cs_interp *ib, int swapped, int only)
{
    align t;
    t.ga = ga;
    t.sa = sa;
    t.gb = gb;
    t.sb = sb;
    t.ia = ia;
    t.ib = ib;
    t.swapped = (uint8_t)swapped;
    t.only = (uint8_t)only;
    t.midgiven = 0;
    t.gfix = 0;
    evaluate(c, &t, NULL);
    if (t.logit > best->logit)
        *best = t;
}

#define ACTIVE(i) ((al->active >> (i)) & 1u)
_Static_assert(F_COUNT <= 64, "active is a 64-bit mask");

/* "J. Robert Smith" goes by Robert: an initial given name followed by a full
 * middle name may stand for the middle name. No middle comparison then. */
static int initial_unit(const cs_name *nm, uint8_t u)
{
    return u != CS_NONE && nm->units[u].n == 1 &&
           (nm->parts[nm->units[u].first].flags & CS_P_INITIAL);
}

static void consider_middle(ctx *c, align *best, uint8_t ga, uint8_t sa, uint8_t gb, uint8_t sb)
{
    align t;
    t.ga = ga;
    t.sa = sa;
    t.gb = gb;
    t.sb = sb;
    t.ia = t.ib = NULL;
    t.swapped = t.only = 0;
    t.midgiven = 1;
    t.gfix = 0;
    evaluate(c, &t, NULL);
    if (t.logit > best->logit)
        *best = t;
}

/* A compound given name keyed with or without its space: "MARY ANN" /
 * "MARYANN", "LE ANNE" / "LEANNE", "RUTH ANN M" / "RUTHANN M". When x's
 * given name and its first middle name are both full words, their
 * concatenation is compared with y's given name: equal, or one typo (two
 * for 7+ letters), which is the space plus the usual keying noise. The
 * alignment then takes the concatenation as the given name and x's next
 * middle name as its middle. Returns 0 when it does not apply. */
static int compound_given(const cs_name *X, const cs_interp *ix, const cs_name *Y, uint8_t gy,
                          cs_interp *out, cs_sim *g)
{
    if (ix->given == CS_NONE || gy == CS_NONE || !ix->mid_n)
        return 0;
    const cs_unit *u = &X->units[ix->given], *m = &X->units[ix->mid[0]], *v = &Y->units[gy];
    if (u->n != 1 || m->n != 1 || v->n != 1 || m->first != u->first + 1)
        return 0;
    const cs_part *p = &X->parts[u->first], *q = &X->parts[m->first], *r = &Y->parts[v->first];
    if ((p->flags | q->flags | r->flags) & CS_P_INITIAL)
        return 0;
    size_t lc = (size_t)p->len + q->len, lr = r->len;
    if (lc > CS_MAX_METRIC_LEN || lr > CS_MAX_METRIC_LEN || lc > lr + 2 || lr > lc + 2)
        return 0;
    const char *t = Y->text + r->off;
    if (t[0] != X->text[p->off])
        return 0;
    char buf[2 * CS_MAX_METRIC_LEN];
    memcpy(buf, X->text + p->off, p->len);
    memcpy(buf + p->len, X->text + q->off, q->len);
    cs_sim s = {L_CONFLICT, 0, 0.0f};
    if (lc == lr && !memcmp(buf, t, lc)) {
        s.level = L_EXACT;
        s.jw = 1.0f;
    } else {
        int d = cs_osa_scalar(buf, lc, t, lr);
        size_t mn = lc < lr ? lc : lr;
        if (d == 1 || (d == 2 && mn >= 7))
            s.level = L_TYPO;
        else
            return 0;
    }
    *out = *ix;
    out->mid_n = (uint8_t)(ix->mid_n - 1);
    memmove(out->mid, ix->mid + 1, out->mid_n);
    *g = s;
    return 1;
}

static void consider_compound(ctx *c, align *best, const cs_interp *ia, const cs_interp *ib,
                              cs_sim g)
{
    align t;
    t.ga = ia->given;
    t.sa = ia->surname;
    t.gb = ib->given;
    t.sb = ib->surname;
    t.ia = ia;
    t.ib = ib;
    t.swapped = t.only = 0;
    t.midgiven = 0;
    t.gfix = 1;
    t.gsim = g;
    evaluate(c, &t, NULL);
    if (t.logit > best->logit)
        *best = t;
}

static unsigned reasons_of(const align *al)
{
    unsigned r = 0;
    if (al->has_g && al->has_s && al->g.level == L_EXACT && al->s.level == L_EXACT &&
        !al->s.partial && !al->midgiven && !al->gfix)
        r |= CEL_SCORE_R_EXACT;
    if (al->gfix) /* a compound given name written with/without its space */
        r |= CEL_SCORE_R_TYPO;
    if (al->has_g) {
        switch (al->g.level) {
        case L_NICK: r |= CEL_SCORE_R_NICKNAME; break;
        case L_INITIAL: r |= CEL_SCORE_R_INITIAL; break;
        case L_TRUNC: r |= CEL_SCORE_R_TRUNCATED; break;
        case L_TYPO: case L_TYPO2: case L_EDIT2: r |= CEL_SCORE_R_TYPO; break;
        case L_PHON: r |= CEL_SCORE_R_PHONETIC; break;
        case L_SIMILAR: r |= CEL_SCORE_R_SIMILAR; break;
        case L_CONFLICT: r |= CEL_SCORE_R_GIVEN_CONFLICT; break;
        default: break;
        }
    }
    if (ACTIVE(F_SEX_CONFLICT))
        r |= CEL_SCORE_R_GIVEN_CONFLICT;
    if (al->has_s) {
        switch (al->s.level) {
        case L_TRUNC: r |= CEL_SCORE_R_TRUNCATED; break;
        case L_TYPO: case L_TYPO2: case L_EDIT2: r |= CEL_SCORE_R_TYPO; break;
        case L_PHON: r |= CEL_SCORE_R_PHONETIC; break;
        case L_INITIAL: case L_NICK: case L_SIMILAR: r |= CEL_SCORE_R_SIMILAR; break;
        case L_CONFLICT: r |= CEL_SCORE_R_SURNAME_CONFLICT; break;
        default: break;
        }
        if (ACTIVE(F_S_PARTIAL))
            r |= CEL_SCORE_R_PARTIAL_SURNAME;
    }
    if (ACTIVE(F_M_CONFLICT))
        r |= CEL_SCORE_R_MIDDLE_CONFLICT;
    if (ACTIVE(F_SUFFIX_CONFLICT))
        r |= CEL_SCORE_R_SUFFIX_CONFLICT;
    if (ACTIVE(F_SWAPPED))
        r |= CEL_SCORE_R_SWAPPED;
    if (al->midgiven)
        r |= CEL_SCORE_R_MIDDLE_NAME;
    if (ACTIVE(F_SURNAME_ONLY))
        r |= CEL_SCORE_R_SURNAME_ONLY;
    if (ACTIVE(F_GIVEN_ONLY))
        r |= CEL_SCORE_R_GIVEN_ONLY;
    return r;
}

static int single(const cs_name *nm)
{
    return (nm->flags & CS_N_SINGLE) != 0;
}

/* The best alignment of a and b; 0 if either has no usable name. With f,
 * also its feature values. */
static int best_alignment(const cs_name *A, const cs_name *B, align *best, double *f)
{
    if (A->magic != CS_MAGIC || B->magic != CS_MAGIC || (A->flags & CS_N_NODATA) ||
        (B->flags & CS_N_NODATA))
        return 0;
    ctx c;
    cs_interp cmp; /* a compound given name's reading (outlives best) */
    cs_sim cg;
    c.a = A;
    c.b = B;
    c.done = 0;
    c.pm_done = 0;
    best->logit = -INFINITY;
    if (single(A) || single(B)) {
        uint8_t x = A->interp[0].surname, y = B->interp[0].surname;
        if (single(A) && single(B)) {
            consider(&c, best, CS_NONE, x, CS_NONE, y, NULL, NULL, 0, 1);
            consider(&c, best, x, CS_NONE, y, CS_NONE, NULL, NULL, 0, 2);
        } else if (single(A)) {
            for (int k = 0; k < B->ninterp; k++) {
                const cs_interp *ib = &B->interp[k];
                consider(&c, best, CS_NONE, x, CS_NONE, ib->surname, NULL, NULL, k, 1);
                consider(&c, best, x, CS_NONE, ib->given, CS_NONE, NULL, NULL, k, 2);
            }
        } else {
            for (int k = 0; k < A->ninterp; k++) {
                const cs_interp *ia = &A->interp[k];
                consider(&c, best, CS_NONE, ia->surname, CS_NONE, y, NULL, NULL, k, 1);
                consider(&c, best, ia->given, CS_NONE, y, CS_NONE, NULL, NULL, k, 2);
            }
        }
    } else {
        for (int i = 0; i < A->ninterp; i++) {
            for (int k = 0; k < B->ninterp; k++) {
                if (i && k)
                    continue;
                const cs_interp *ia = &A->interp[i], *ib = &B->interp[k];
                consider(&c, best, ia->given, ia->surname, ib->given, ib->surname, ia, ib,
                         i != k, 0);
            }
        }
        const cs_interp *pa = &A->interp[0], *pb = &B->interp[0];
        if (initial_unit(A, pa->given) && pa->mid_n && !initial_unit(A, pa->mid[0]))
            consider_middle(&c, best, pa->mid[0], pa->surname, pb->given, pb->surname);
        if (initial_unit(B, pb->given) && pb->mid_n && !initial_unit(B, pb->mid[0]))
            consider_middle(&c, best, pa->given, pa->surname, pb->mid[0], pb->surname);
        if (compound_given(A, pa, B, pb->given, &cmp, &cg))
            consider_compound(&c, best, &cmp, pb, cg);
        else if (compound_given(B, pb, A, pa->given, &cmp, &cg))
            consider_compound(&c, best, pa, &cmp, cg);
    }
    if (f)
        evaluate(&c, best, f);
    best->reasons = reasons_of(best);
    return 1;
}

cel_score_class cel_score_classify(int score)
{
    if (score >= CS_MODEL_RPC_MIN)
        return CEL_SCORE_RPC;
    if (score >= CS_MODEL_REVIEW_MIN)
        return CEL_SCORE_REVIEW;
    return CEL_SCORE_WPC;
}

int cel_score_rpc_threshold(void)
{
    return CS_MODEL_RPC_MIN;
}

int cel_score_review_threshold(void)
{
    return CS_MODEL_REVIEW_MIN;
}

cel_score_result cel_score_compare(const cel_score_name *a, const cel_score_name *b)
{
    cel_score_result r = {0, CEL_SCORE_NO_DATA, CEL_SCORE_R_NO_DATA};
    align al;
    if (!best_alignment(cs_cname(a), cs_cname(b), &al, NULL))
        return r;
    double p = 1.0 / (1.0 + exp(-al.logit));
    r.score = (int)(p * 100.0 + 0.5);
    /* Policy, not data: a name with one part ("SMITH") cannot confirm a
     * person, however rare the surname; such pairs go to REVIEW at best. */
    if ((al.reasons & (CEL_SCORE_R_SURNAME_ONLY | CEL_SCORE_R_GIVEN_ONLY)) &&
        r.score >= CS_MODEL_RPC_MIN)
        r.score = CS_MODEL_RPC_MIN - 1;
    r.cls = cel_score_classify(r.score);
    r.reasons = al.reasons;
    return r;
}

cel_score_result cel_score_compare_raw(const char *a, size_t alen, const char *b, size_t blen)
{
    cel_score_name x, y;
    cel_score_prepare(a, alen, &x);
    cel_score_prepare(b, blen, &y);
    return cel_score_compare(&x, &y);
}

size_t cel_score_features(const cel_score_name *a, const cel_score_name *b, double *out,
                          size_t cap)
{
    align al;
    double f[F_COUNT];
    if (!best_alignment(cs_cname(a), cs_cname(b), &al, f))
        return 0;
    for (size_t i = 0; i < F_COUNT && i < cap; i++)
        out[i] = f[i];
    return F_COUNT;
}

const char *cel_score_class_name(cel_score_class cls)
{
    switch (cls) {
    case CEL_SCORE_RPC: return "RPC";
    case CEL_SCORE_REVIEW: return "REVIEW";
    case CEL_SCORE_WPC: return "WPC";
    case CEL_SCORE_NO_DATA: return "NO_DATA";
    }
    return "NO_DATA";
}

static const char *const reason_names[] = {
    "EXACT", "NICKNAME", "SWAPPED", "INITIAL", "PHONETIC", "TYPO", "SUFFIX_CONFLICT",
    "SURNAME_ONLY", "GIVEN_CONFLICT", "SURNAME_CONFLICT", "TRUNCATED", "PARTIAL_SURNAME",
    "MIDDLE_CONFLICT", "GIVEN_ONLY", "SIMILAR", "NO_DATA", "MIDDLE_NAME",
};

size_t cel_score_reasons_format(unsigned reasons, char *buf, size_t cap)
{
    size_t at = 0;
    for (unsigned i = 0; i < sizeof reason_names / sizeof reason_names[0]; i++) {
        if (!(reasons & (1u << i)))
            continue;
        const char *s = reason_names[i];
        if (at) {
            if (at + 1 < cap)
                buf[at] = ',';
            at++;
        }
        for (; *s; s++, at++)
            if (at + 1 < cap)
                buf[at] = *s;
    }
    if (cap)
        buf[at < cap ? at : cap - 1] = 0;
    return at;
}

const char *cel_score_model_version(void)
{
    return CS_MODEL_VERSION;
}
