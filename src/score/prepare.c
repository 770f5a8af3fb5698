/* prepare.c — normalise and parse one person name into a cel_score_name.
 *
 * Why prepare once: the expensive part of comparing names is understanding
 * each name (Unicode, titles, order, particles), and a subject is compared
 * against many candidates. So everything that depends on one name only —
 * the normalised words, their roles, nickname groups, frequencies, NYSIIS
 * codes and the per-letter bit masks the metrics use — is computed here,
 * once, into caller-provided fixed-size storage. Nothing here allocates.
 *
 * Normalising: pure ASCII bytes go through a 128-entry class table (the fast
 * path: no utf8proc call, no copy). Other code points go through utf8proc
 * one at a time (compatibility decomposition, case folding, marks stripped:
 * "José Müller" -> "jose muller", "ﬁ" -> "fi", "ß" -> "ss"), then Cyrillic
 * and a few Latin letters without decompositions (ø, ł, æ ...) are
 * transliterated; other scripts stay as case-folded UTF-8, so the same
 * name in the same script normalises the same way. Apostrophes join
 * (O'Brien -> obrien), hyphens and commas are kept as marks on the word
 * before them, every other non-letter separates words.
 *
 * Parsing (see docs/scoring.md): drop digits and junk words, titles at the
 * ends of a comma segment, generation suffixes and degrees; "A, B C" is
 * surname A, given B; otherwise given first, surname last, with particles
 * (van, de, al ...) and hyphenated words joined to the surname. A name
 * without a comma is also read surname-first (interp[1]), because
 * caller-ID and many files write "SMITH JOHN"; the comparison picks the
 * reading that explains the pair best and reports SWAPPED.
 */
#include "score/score_internal.h"

#include <string.h>
#include <utf8proc.h>

/* ---- lexicon lookup ----------------------------------------------------- */

static uint32_t fnv1a(const char *s, size_t len)
{
    uint32_t h = 0x811C9DC5u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x01000193u;
    }
    return h;
}

const cel_lex_entry *cel_lex_find(const char *s, size_t len)
{
    if (len == 0 || len > 255)
        return NULL;
    unsigned mask = cel_lex_nslots - 1;
    unsigned h = fnv1a(s, len) & mask;
    for (;;) {
        unsigned v = cel_lex_slots[h];
        if (!v)
            return NULL;
        const cel_lex_entry *e = &cel_lex_entries[v - 1];
        if (e->len == len && !memcmp(cel_lex_pool + e->off, s, len))
            return e;
        h = (h + 1) & mask;
    }
}

/* ---- normalisation ------------------------------------------------------ */

enum { C_SPACE, C_LETTER, C_DIGIT, C_DROP, C_HYPHEN, C_COMMA, C_PERIOD };

enum { /* raw token flags */
    T_DIGIT = 1,
    T_NONASCII = 2,
    T_COMMA = 4,  /* a comma follows */
    T_HYPHEN = 8, /* a hyphen follows */
    T_PERIOD = 16,
};

typedef struct rawtok {
    uint16_t off;
    uint8_t len, flags;
} rawtok;

typedef struct nstate {
    char *text;
    size_t cap, n;
    int in_tok, full;
    int ntok;
    rawtok tok[CS_MAX_TOK];
} nstate;

static const uint8_t ascii_class[128] = {
    ['a'] = C_LETTER, ['b'] = C_LETTER, ['c'] = C_LETTER, ['d'] = C_LETTER, ['e'] = C_LETTER,
    ['f'] = C_LETTER, ['g'] = C_LETTER, ['h'] = C_LETTER, ['i'] = C_LETTER, ['j'] = C_LETTER,
    ['k'] = C_LETTER, ['l'] = C_LETTER, ['m'] = C_LETTER, ['n'] = C_LETTER, ['o'] = C_LETTER,
    ['p'] = C_LETTER, ['q'] = C_LETTER, ['r'] = C_LETTER, ['s'] = C_LETTER, ['t'] = C_LETTER,
    ['u'] = C_LETTER, ['v'] = C_LETTER, ['w'] = C_LETTER, ['x'] = C_LETTER, ['y'] = C_LETTER,
    ['z'] = C_LETTER, ['A'] = C_LETTER, ['B'] = C_LETTER, ['C'] = C_LETTER, ['D'] = C_LETTER,
    ['E'] = C_LETTER, ['F'] = C_LETTER, ['G'] = C_LETTER, ['H'] = C_LETTER, ['I'] = C_LETTER,
    ['J'] = C_LETTER, ['K'] = C_LETTER, ['L'] = C_LETTER, ['M'] = C_LETTER, ['N'] = C_LETTER,
    ['O'] = C_LETTER, ['P'] = C_LETTER, ['Q'] = C_LETTER, ['R'] = C_LETTER, ['S'] = C_LETTER,
    ['T'] = C_LETTER, ['U'] = C_LETTER, ['V'] = C_LETTER, ['W'] = C_LETTER, ['X'] = C_LETTER,
    ['Y'] = C_LETTER, ['Z'] = C_LETTER, ['0'] = C_DIGIT, ['1'] = C_DIGIT, ['2'] = C_DIGIT,
    ['3'] = C_DIGIT, ['4'] = C_DIGIT, ['5'] = C_DIGIT, ['6'] = C_DIGIT, ['7'] = C_DIGIT,
    ['8'] = C_DIGIT, ['9'] = C_DIGIT, ['\''] = C_DROP, ['`'] = C_DROP, ['-'] = C_HYPHEN,
    [','] = C_COMMA, [';'] = C_COMMA, ['.'] = C_PERIOD,
};

static void ns_sep(nstate *st, int cls)
{
    st->in_tok = 0;
    if (st->ntok == 0)
        return;
    rawtok *t = &st->tok[st->ntok - 1];
    if (cls == C_COMMA)
        t->flags |= T_COMMA;
    else if (cls == C_HYPHEN)
        t->flags |= T_HYPHEN;
    else if (cls == C_PERIOD)
        t->flags |= T_PERIOD;
}

/* Append the bytes of one letter (or digit) to the current word. */
static void ns_put(nstate *st, const char *b, size_t nb, uint8_t flags)
{
    if (st->full)
        return;
    if (!st->in_tok) {
        size_t sep = st->n ? 1 : 0;
        if (st->ntok == CS_MAX_TOK || st->n + sep + nb > st->cap) {
            st->full = 1;
            return;
        }
        if (sep)
            st->text[st->n++] = (st->tok[st->ntok - 1].flags & T_HYPHEN) ? '-' : ' ';
        rawtok *t = &st->tok[st->ntok++];
        t->off = (uint16_t)st->n;
        t->len = 0;
        t->flags = 0;
        st->in_tok = 1;
    }
    rawtok *t = &st->tok[st->ntok - 1];
    if (st->n + nb > st->cap || t->len + nb > 64) {
        st->full = 1;
        return;
    }
    memcpy(st->text + st->n, b, nb);
    st->n += nb;
    t->len = (uint8_t)(t->len + nb);
    t->flags |= flags;
}

/* Cyrillic (after case folding) to Latin, a simple BGN/PCGN-like table. */
static const char *const cyr[32] = {
    "a", "b", "v", "g", "d", "e", "zh", "z", "i", "i", "k", "l", "m", "n", "o", "p",
    "r", "s", "t", "u", "f", "kh", "ts", "ch", "sh", "shch", "", "y", "", "e", "yu", "ya",
};

static const char *translit(int32_t cp)
{
    if (cp >= 0x430 && cp <= 0x44f)
        return cyr[cp - 0x430];
    switch (cp) {
    case 0x451: return "e";  /* ё */
    case 0x454: return "ye"; /* є */
    case 0x456: case 0x457: return "i";
    case 0x491: return "g";
    case 0x45e: return "u";
    case 0xf8: return "o";   /* ø */
    case 0x142: return "l";  /* ł */
    case 0x111: case 0xf0: return "d";
    case 0xfe: return "th";
    case 0xe6: return "ae";
    case 0x153: return "oe";
    case 0x131: return "i";  /* dotless i */
    case 0x127: return "h";
    case 0x140: return "l";
    case 0x138: return "k";
    default: return NULL;
    }
}

static void ns_ascii(nstate *st, unsigned char c)
{
    switch (ascii_class[c & 0x7f]) {
    case C_LETTER: {
        char l = (char)(c | 0x20);
        ns_put(st, &l, 1, 0);
        break;
    }
    case C_DIGIT: {
        char d = (char)c;
        ns_put(st, &d, 1, T_DIGIT);
        break;
    }
    case C_DROP:
        break;
    default:
        ns_sep(st, ascii_class[c & 0x7f]);
    }
}

static void ns_codepoint(nstate *st, int32_t cp)
{
    switch (cp) {
    case 0x2018: case 0x2019: case 0x02bc: case 0x02b9: case 0x00b4: case 0x2032:
    case 0x02bb: case 0xff07: case 0x00ad: case 0x200b: case 0x200c: case 0x200d:
    case 0xfeff: case 0x2060:
        return; /* apostrophes, soft hyphen, zero-width characters join */
    case 0x2010: case 0x2011: case 0x2012: case 0x2013: case 0x2014: case 0x2015:
    case 0x2212: case 0xfe63: case 0xff0d: case 0x2043:
        ns_sep(st, C_HYPHEN);
        return;
    case 0xff0c: case 0x3001: case 0x060c: case 0xfe50:
        ns_sep(st, C_COMMA);
        return;
    default:
        break;
    }
    utf8proc_int32_t d[24];
    int last_bc = 0;
    utf8proc_ssize_t nd = utf8proc_decompose_char(
        cp, d, 24,
        (utf8proc_option_t)(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT | UTF8PROC_CASEFOLD |
                            UTF8PROC_STRIPMARK | UTF8PROC_IGNORE),
        &last_bc);
    if (nd < 0 || nd > 24) {
        ns_sep(st, C_SPACE);
        return;
    }
    for (utf8proc_ssize_t i = 0; i < nd; i++) {
        int32_t c = d[i];
        if (c < 0x80) {
            ns_ascii(st, (unsigned char)c);
            continue;
        }
        const char *t = translit(c);
        if (t) {
            if (*t)
                ns_put(st, t, strlen(t), 0);
            continue;
        }
        switch (utf8proc_category(c)) {
        case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
        case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: {
            utf8proc_uint8_t buf[4];
            utf8proc_ssize_t nb = utf8proc_encode_char(c, buf);
            if (nb > 0)
                ns_put(st, (const char *)buf, (size_t)nb, T_NONASCII);
            break;
        }
        case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO: {
            char z = '0';
            ns_put(st, &z, 1, T_DIGIT);
            break;
        }
        case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
        case UTF8PROC_CATEGORY_CF:
            break;
        default:
            ns_sep(st, C_SPACE);
        }
    }
}

/* Digits inside a word are noise (OCR and keying: "1RUMOR", "ANN0"): they go,
 * and the word stays. Digits alone stay a digit word (dropped by the parser),
 * and so do ordinals ("2nd", a suffix). Rare, so the text is rebuilt. */
static int ordinal(const char *w, size_t n)
{
    size_t d = 0;
    while (d < n && w[d] >= '0' && w[d] <= '9')
        d++;
    return d > 0 && n - d == 2 &&
           (!memcmp(w + d, "st", 2) || !memcmp(w + d, "nd", 2) || !memcmp(w + d, "rd", 2) ||
            !memcmp(w + d, "th", 2));
}

static void strip_digits(nstate *st)
{
    int mixed = 0;
    for (int i = 0; i < st->ntok && !mixed; i++) {
        const rawtok *t = &st->tok[i];
        if (!(t->flags & T_DIGIT) || ordinal(st->text + t->off, t->len))
            continue;
        for (size_t k = 0; k < t->len; k++) {
            char ch = st->text[t->off + k];
            if (ch < '0' || ch > '9') {
                mixed = 1;
                break;
            }
        }
    }
    if (!mixed)
        return;
    char tmp[CS_FULL_MAX];
    size_t n = 0;
    for (int i = 0; i < st->ntok; i++) {
        rawtok *t = &st->tok[i];
        const char *w = st->text + t->off;
        int strip = 0;
        if ((t->flags & T_DIGIT) && !ordinal(w, t->len))
            for (size_t k = 0; k < t->len; k++)
                if (w[k] < '0' || w[k] > '9')
                    strip = 1;
        if (n)
            tmp[n++] = (st->tok[i - 1].flags & T_HYPHEN) ? '-' : ' ';
        uint16_t off = (uint16_t)n;
        for (size_t k = 0; k < t->len; k++)
            if (!strip || w[k] < '0' || w[k] > '9')
                tmp[n++] = w[k];
        t->off = off;
        t->len = (uint8_t)(n - off);
        if (strip)
            t->flags &= (uint8_t)~T_DIGIT;
    }
    memcpy(st->text, tmp, n);
    st->n = n;
}

static void normalize(nstate *st, const char *s, size_t len)
{
    if (!s)
        len = 0;
    else if (len == SIZE_MAX)
        len = strnlen(s, CS_MAX_INPUT);
    if (len > CS_MAX_INPUT)
        len = CS_MAX_INPUT;
    size_t i = 0;
    while (i < len && !st->full) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            /* the fast path: a run of ASCII letters is copied in one go */
            if (ascii_class[c] == C_LETTER && st->in_tok && st->tok[st->ntok - 1].len < 64) {
                rawtok *t = &st->tok[st->ntok - 1];
                while (i < len && st->n < st->cap && t->len < 64) {
                    c = (unsigned char)s[i];
                    if (c >= 0x80 || ascii_class[c] != C_LETTER)
                        break;
                    st->text[st->n++] = (char)(c | 0x20);
                    t->len++;
                    i++;
                }
                if (i < len && st->n >= st->cap)
                    st->full = 1;
                continue;
            }
            ns_ascii(st, c);
            i++;
            continue;
        }
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i,
                                              (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0) {
            ns_sep(st, C_SPACE); /* invalid byte: a separator */
            i++;
            continue;
        }
        ns_codepoint(st, cp);
        i += (size_t)k;
    }
    ns_sep(st, C_SPACE);
    strip_digits(st);
}

size_t cel_score_normalize(const char *utf8, size_t len, char *out, size_t cap)
{
    char text[CS_FULL_MAX];
    nstate st = {.text = text, .cap = sizeof text};
    normalize(&st, utf8, len);
    size_t need = 0;
    for (int i = 0; i < st.ntok; i++) {
        const rawtok *t = &st.tok[i];
        for (size_t k = 0; k < t->len; k++) {
            if (need + 1 < cap)
                out[need] = text[t->off + k];
            need++;
        }
        char sep = 0;
        if (t->flags & T_COMMA)
            sep = ',';
        else if (t->flags & T_HYPHEN)
            sep = '-';
        if (sep) {
            if (need + 1 < cap)
                out[need] = sep;
            need++;
        }
        if (i + 1 < st.ntok && !(t->flags & T_HYPHEN)) {
            if (need + 1 < cap)
                out[need] = ' ';
            need++;
        }
    }
    if (cap)
        out[need < cap ? need : cap - 1] = 0;
    return need;
}

/* ---- parsing -------------------------------------------------------------- */

typedef struct ptok {
    rawtok t;
    const cel_lex_entry *lex;
    uint8_t keep;
} ptok;

/* e: the word's lexicon entry when the caller has looked it up already
 * (lookup != 0), else looked up here. */
static void part_init(cs_name *nm, cs_part *p, uint16_t off, uint8_t len, uint8_t flags,
                      const cel_lex_entry *e, int lookup)
{
    memset(p, 0, sizeof *p);
    p->off = off;
    p->len = len;
    p->flags = flags;
    const char *s = nm->text + off;
    int ascii = len <= CS_MASK_MAX;
    for (size_t i = 0; i < len && ascii; i++)
        ascii = s[i] >= 'a' && s[i] <= 'z';
    if (ascii)
        p->flags |= CS_P_ASCII;
    /* odd constants from a 32-bit LCG: equal sums <=> equal letter multisets
     * (for words this short, collisions are vanishingly rare) */
    static const uint32_t letter_k[26] = {
        0x9e3779b1u, 0x85ebca77u, 0xc2b2ae3du, 0x27d4eb2fu, 0x165667b1u, 0xd3a2646du,
        0xfd7046c5u, 0xb55a4f09u, 0x7feb352du, 0x846ca68bu, 0x2c1b3c6du, 0x297a2d39u,
        0x68e31da5u, 0x1b873593u, 0xcc9e2d51u, 0xe6546b65u, 0x5bd1e995u, 0x3c6ef373u,
        0xa54ff53bu, 0x510e527fu, 0x9b05688du, 0x1f83d9abu, 0x5be0cd19u, 0xcbbb9d5du,
        0x629a292bu, 0x9159015bu,
    };
    uint32_t bag = 0, lset = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned ch = (unsigned char)s[i] - 'a';
        if (ch >= 26) {
            bag = lset = 0;
            break;
        }
        bag += letter_k[ch];
        lset |= 1u << ch;
    }
    p->bag = bag;
    p->lset = lset;
    if (len == 1)
        p->flags |= CS_P_INITIAL;
    if (!lookup)
        e = cel_lex_find(s, len);
    if (e) {
        p->gfirst = e->gfirst;
        p->ngroups = e->ngroups;
        p->sex = e->sex;
        p->grar = e->grar;
        p->srar = e->srar;
        if ((e->flags & CEL_LEX_PARTICLE) && !(flags & CS_P_JOINED))
            p->flags |= CS_P_PARTICLE;
    }
    if (ascii && len >= 2) {
        char code[16];
        size_t n = cel_score_nysiis(s, len, code, sizeof code);
        if (n > 8)
            n = 8;
        memcpy(p->nys, code, n);
        p->nys_len = (uint8_t)n;
    }
}

/* Make a unit of word parts [first, first+n): a multi-word unit also gets a
 * joined part (the words concatenated: "de la cruz" -> "delacruz"). */
static uint8_t make_unit(cs_name *nm, uint8_t first, uint8_t n)
{
    /* the readings share units: a pair of units is graded once per comparison */
    for (uint8_t i = 0; i < nm->nunits; i++)
        if (nm->units[i].first == first && nm->units[i].n == n)
            return i;
    if (nm->nunits >= CS_MAX_UNITS)
        return CS_NONE;
    cs_unit *u = &nm->units[nm->nunits];
    u->first = first;
    u->n = n;
    u->joined = first;
    u->main = (uint8_t)(first + n - 1);
    for (int i = first + n - 1; i >= first; i--) {
        if (!(nm->parts[i].flags & CS_P_PARTICLE)) {
            u->main = (uint8_t)i;
            break;
        }
    }
    if (n > 1 && nm->nparts < CS_MAX_PARTS) {
        size_t len = 0;
        for (int i = first; i < first + n; i++)
            len += nm->parts[i].len;
        if (len <= 64 && nm->text_len + len + 1 <= CS_TEXT) {
            uint16_t off = nm->text_len;
            for (int i = first; i < first + n; i++) {
                memcpy(nm->text + nm->text_len, nm->text + nm->parts[i].off, nm->parts[i].len);
                nm->text_len = (uint16_t)(nm->text_len + nm->parts[i].len);
            }
            nm->text[nm->text_len++] = 0;
            u->joined = nm->nparts;
            part_init(nm, &nm->parts[nm->nparts++], off, (uint8_t)len, CS_P_JOINED, NULL, 0);
        }
    }
    return nm->nunits++;
}

static void add_mid(cs_name *nm, cs_interp *in, uint8_t start, uint8_t end)
{
    if (in->mid_n >= CS_MAX_MID)
        return;
    uint8_t u = make_unit(nm, start, (uint8_t)(end - start));
    if (u != CS_NONE)
        in->mid[in->mid_n++] = u;
}

static int is_particle(const cs_name *nm, int part)
{
    return (nm->parts[part].flags & CS_P_PARTICLE) != 0;
}

cel_score_name *cel_score_prepare(const char *utf8, size_t len, cel_score_name *out)
{
    cs_name *nm = (cs_name *)(void *)out;
    memset(nm, 0, offsetof(cs_name, text));
    nm->magic = CS_MAGIC;
    nm->interp[0].given = nm->interp[0].surname = CS_NONE;
    nm->interp[1].given = nm->interp[1].surname = CS_NONE;

    nstate st = {.text = nm->text, .cap = CS_FULL_MAX};
    normalize(&st, utf8, len);
    nm->full_len = (uint8_t)st.n;
    nm->text[st.n] = 0;
    nm->text_len = (uint16_t)(st.n + 1);

    ptok pt[CS_MAX_TOK];
    int n = st.ntok;
    for (int i = 0; i < n; i++) {
        pt[i].t = st.tok[i];
        pt[i].lex = cel_lex_find(nm->text + st.tok[i].off, st.tok[i].len);
        pt[i].keep = 1;
    }
    /* digits and junk words go; "2nd"/"3rd" stay as suffixes */
    int words = 0;
    for (int i = 0; i < n; i++) {
        const cel_lex_entry *e = pt[i].lex;
        if ((pt[i].t.flags & T_DIGIT) && !(e && e->gen))
            pt[i].keep = 0;
        else if (e && (e->flags & CEL_LEX_JUNK))
            pt[i].keep = 0;
        else
            words++;
    }
    /* titles at the start of each comma segment and at the end of the name,
     * as long as one other word stays */
    int seg_start = 1;
    for (int i = 0; i < n; i++) {
        if (!pt[i].keep) {
            if (pt[i].t.flags & T_COMMA)
                seg_start = 1;
            continue;
        }
        const cel_lex_entry *e = pt[i].lex;
        if (seg_start && e && (e->flags & CEL_LEX_TITLE) && pt[i].t.len > 1 && words > 1) {
            pt[i].keep = 0;
            words--;
            if (!nm->title_len) {
                nm->title_off = (uint8_t)pt[i].t.off;
                nm->title_len = pt[i].t.len;
            }
            if (pt[i].t.flags & T_COMMA)
                seg_start = 1;
            continue;
        }
        seg_start = (pt[i].t.flags & T_COMMA) != 0;
    }
    for (int i = n - 1; i >= 0 && words > 1; i--) {
        if (!pt[i].keep)
            continue;
        const cel_lex_entry *e = pt[i].lex;
        if (!(e && (e->flags & CEL_LEX_TITLE) && pt[i].t.len > 1))
            break;
        pt[i].keep = 0;
        words--;
    }
    /* suffixes and degrees: not the first word; at the end of a segment or
     * followed only by more suffixes */
    int first_kept = -1;
    for (int i = 0; i < n; i++)
        if (pt[i].keep) {
            first_kept = i;
            break;
        }
    for (int i = n - 1; i > first_kept && words > 1; i--) {
        if (!pt[i].keep)
            continue;
        const cel_lex_entry *e = pt[i].lex;
        if (!(e && (e->gen || (e->flags & CEL_LEX_DEGREE))))
            continue;
        int end = 1;
        for (int j = i + 1; j < n; j++) {
            if (pt[j - 1].t.flags & T_COMMA)
                break;
            if (pt[j].keep) {
                const cel_lex_entry *f = pt[j].lex;
                if (!(f && (f->gen || (f->flags & CEL_LEX_DEGREE)))) {
                    end = 0;
                    break;
                }
            }
        }
        if (!end)
            continue;
        pt[i].keep = 0;
        words--;
        if (e->gen) {
            nm->gen = e->gen; /* the first one, scanning backwards: the last wins */
            nm->suffix_off = (uint8_t)pt[i].t.off;
            nm->suffix_len = pt[i].t.len;
        }
        /* a comma before the suffix ("SMITH, JOHN, JR") belongs to no one */
    }
    /* only titles, suffixes, degrees and initials left ("Mr", "Jr", "N/A"): no name */
    int name_words = 0;
    for (int i = 0; i < n; i++) {
        const cel_lex_entry *e = pt[i].lex;
        if (pt[i].keep && pt[i].t.len > 1 && !(pt[i].t.flags & T_DIGIT) &&
            !(e && ((e->flags & (CEL_LEX_TITLE | CEL_LEX_DEGREE)) || e->gen)))
            name_words++;
    }
    if (name_words == 0) {
        nm->flags |= CS_N_NODATA;
        return out;
    }
    /* word parts, in order; a word's comma/hyphen marks carry over the
     * dropped words to the previous kept word */
    uint8_t pflags[CS_MAX_TOK];
    nm->nparts = 0;
    for (int i = 0; i < n; i++) {
        if (!pt[i].keep) {
            if (nm->nparts && (pt[i].t.flags & T_COMMA))
                pflags[nm->nparts - 1] |= T_COMMA;
            continue;
        }
        if (pt[i].t.flags & T_DIGIT)
            continue;
        part_init(nm, &nm->parts[nm->nparts], pt[i].t.off, pt[i].t.len, 0, pt[i].lex, 1);
        pflags[nm->nparts] = pt[i].t.flags;
        nm->nparts++;
    }
    int np = nm->nparts;
    if (np == 0) {
        nm->flags |= CS_N_NODATA;
        return out;
    }
    /* comma form: the words before the first comma are the surname */
    int comma = -1;
    for (int i = 0; i < np - 1; i++)
        if (pflags[i] & T_COMMA) {
            comma = i;
            break;
        }
    /* hyphen groups: [gs[g], ge[g]) */
    uint8_t gs[CS_MAX_TOK], ge[CS_MAX_TOK];
    int ng = 0;
    for (int i = 0; i < np;) {
        int j = i + 1;
        while (j < np && (pflags[j - 1] & T_HYPHEN) && !(pflags[j - 1] & T_COMMA))
            j++;
        gs[ng] = (uint8_t)i;
        ge[ng] = (uint8_t)j;
        ng++;
        i = j;
    }
    if (comma >= 0) {
        nm->flags |= CS_N_COMMA;
        cs_interp *in = &nm->interp[0];
        in->surname = make_unit(nm, 0, (uint8_t)(comma + 1));
        int g = 0;
        while (g < ng && gs[g] <= comma)
            g++;
        if (g < ng) {
            in->given = make_unit(nm, gs[g], (uint8_t)(ge[g] - gs[g]));
            for (g++; g < ng; g++)
                add_mid(nm, in, gs[g], ge[g]);
        }
        nm->ninterp = 1;
        return out;
    }
    /* "de paoli", "von trapp": particles and one word are a surname alone,
     * unless the first particle is also a common given name (Van, Al, Ben:
     * SSA rarity <= 44, about 1,000 births in the seven years) or a listed
     * nickname (Di, Del) */
    int lead = 1;
    for (int g = 0; g < ng - 1 && lead; g++) {
        const cs_part *p = &nm->parts[gs[g]];
        lead = ge[g] - gs[g] == 1 && (p->flags & CS_P_PARTICLE) &&
               (g > 0 || ((p->grar == 0 || p->grar > 44) && !p->ngroups));
    }
    if (ng == 1 || lead) {
        nm->flags |= CS_N_SINGLE;
        nm->interp[0].surname = make_unit(nm, 0, (uint8_t)np);
        nm->ninterp = 1;
        return out;
    }
    /* given first: surname = last group plus particles before it */
    {
        cs_interp *in = &nm->interp[0];
        int sg = ng - 1;
        while (sg > 1 && ge[sg - 1] - gs[sg - 1] == 1 && is_particle(nm, gs[sg - 1]))
            sg--;
        in->given = make_unit(nm, gs[0], (uint8_t)(ge[0] - gs[0]));
        for (int g = 1; g < sg; g++)
            add_mid(nm, in, gs[g], ge[g]);
        in->surname = make_unit(nm, gs[sg], (uint8_t)(np - gs[sg]));
    }
    /* surname first: first group plus the word after leading particles */
    {
        cs_interp *in = &nm->interp[1];
        int eg = 0;
        while (eg < ng - 2 && ge[eg] - gs[eg] == 1 && is_particle(nm, gs[eg]))
            eg++;
        in->surname = make_unit(nm, 0, ge[eg]);
        in->given = make_unit(nm, gs[eg + 1], (uint8_t)(ge[eg + 1] - gs[eg + 1]));
        for (int g = eg + 2; g < ng; g++)
            add_mid(nm, in, gs[g], ge[g]);
        nm->ninterp = 2;
    }
    return out;
}

int cel_score_name_usable(const cel_score_name *n)
{
    const cs_name *nm = cs_cname(n);
    return nm->magic == CS_MAGIC && !(nm->flags & CS_N_NODATA);
}

static size_t put(char *buf, size_t cap, size_t at, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++, at++)
        if (at + 1 < cap)
            buf[at] = s[i];
    return at;
}

static size_t put_unit(const cs_name *nm, uint8_t u, char *buf, size_t cap, size_t at)
{
    if (u == CS_NONE)
        return at;
    const cs_unit *un = &nm->units[u];
    for (int i = un->first; i < un->first + un->n; i++) {
        if (i > un->first)
            at = put(buf, cap, at, " ", 1);
        at = put(buf, cap, at, nm->text + nm->parts[i].off, nm->parts[i].len);
    }
    return at;
}

size_t cel_score_name_field(const cel_score_name *n, cel_score_field f, char *buf, size_t cap)
{
    const cs_name *nm = cs_cname(n);
    size_t at = 0;
    if (nm->magic == CS_MAGIC) {
        const cs_interp *in = &nm->interp[0];
        switch (f) {
        case CEL_SCORE_FIELD_FULL:
            at = put(buf, cap, 0, nm->text, nm->full_len);
            break;
        case CEL_SCORE_FIELD_GIVEN:
            if (!(nm->flags & CS_N_NODATA))
                at = put_unit(nm, in->given, buf, cap, 0);
            break;
        case CEL_SCORE_FIELD_MIDDLE:
            if (!(nm->flags & CS_N_NODATA))
                for (int i = 0; i < in->mid_n; i++) {
                    if (i)
                        at = put(buf, cap, at, " ", 1);
                    at = put_unit(nm, in->mid[i], buf, cap, at);
                }
            break;
        case CEL_SCORE_FIELD_SURNAME:
            if (!(nm->flags & CS_N_NODATA))
                at = put_unit(nm, in->surname, buf, cap, 0);
            break;
        case CEL_SCORE_FIELD_SUFFIX:
            at = put(buf, cap, 0, nm->text + nm->suffix_off, nm->suffix_len);
            break;
        case CEL_SCORE_FIELD_TITLE:
            at = put(buf, cap, 0, nm->text + nm->title_off, nm->title_len);
            break;
        }
    }
    if (cap)
        buf[at < cap ? at : cap - 1] = 0;
    return at;
}
