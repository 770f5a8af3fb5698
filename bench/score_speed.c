/* score_speed.c — the C side of bench/score-speed: pairs/s of the name
 * scorer on one core.
 *
 *   score-speed-c PAIRS.tsv [SECONDS]
 *   {"one_to_many_pairs_per_s": X, "independent_pairs_per_s": Y, "pairs": N}
 *
 * PAIRS.tsv holds name_a<TAB>name_b lines (further columns ignored; a first
 * line starting "name_a" or "set" is read as a header naming the columns).
 *
 * one_to_many: the subject (name_a of the first line) and every candidate
 * (name_b of each line) are prepared once, outside the timing; then the
 * subject is compared against all candidates, round after round, for about
 * SECONDS (1 s). This is the enrichment case: one debtor against the names
 * tied to many contact points.
 * independent: every line's two raw strings are normalised, parsed and
 * compared each time (cel_score_compare_raw), for about SECONDS.
 *
 * Why the sink: the scores are summed into a volatile so the compiler
 * cannot drop the work. Single thread; the clock is CLOCK_MONOTONIC.
 */
#include "celeriac/score.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct pair {
    const char *a, *b;
    size_t alen, blen;
} pair;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile long sink;

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("usage: score-speed-c PAIRS.tsv [SECONDS]\n", stderr);
        return 64;
    }
    double secs = argc > 2 ? atof(argv[2]) : 1.0;
    if (secs <= 0)
        secs = 1.0;
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 66;
    }
    size_t n = 0, cap = 0;
    pair *p = NULL;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    int ca = 0, cb = 1, first = 1;
    while ((len = getline(&line, &lcap, f)) >= 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        char *col[64];
        int nc = 0;
        for (char *s = line; nc < 64;) {
            col[nc++] = s;
            char *t = strchr(s, '\t');
            if (!t)
                break;
            *t = 0;
            s = t + 1;
        }
        if (first && (!strcmp(col[0], "name_a") || !strcmp(col[0], "set"))) {
            for (int i = 0; i < nc; i++) {
                if (!strcmp(col[i], "name_a"))
                    ca = i;
                else if (!strcmp(col[i], "name_b"))
                    cb = i;
            }
            first = 0;
            continue;
        }
        first = 0;
        if (nc <= ca || nc <= cb)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            p = realloc(p, cap * sizeof *p);
            if (!p)
                return 71;
        }
        p[n].a = strdup(col[ca]);
        p[n].b = strdup(col[cb]);
        if (!p[n].a || !p[n].b)
            return 71;
        p[n].alen = strlen(p[n].a);
        p[n].blen = strlen(p[n].b);
        n++;
    }
    free(line);
    fclose(f);
    if (n == 0) {
        fputs("score-speed-c: no pairs\n", stderr);
        return 65;
    }

    /* one subject against many prepared candidates */
    cel_score_name subject;
    cel_score_prepare(p[0].a, p[0].alen, &subject);
    cel_score_name *cand = malloc(n * sizeof *cand);
    if (!cand)
        return 71;
    for (size_t i = 0; i < n; i++)
        cel_score_prepare(p[i].b, p[i].blen, &cand[i]);
    long acc = 0;
    size_t done = 0;
    double t0 = now(), t;
    do {
        for (size_t i = 0; i < n; i++)
            acc += cel_score_compare(&subject, &cand[i]).score;
        done += n;
        t = now() - t0;
    } while (t < secs);
    double one_to_many = (double)done / t;

    /* independent raw pairs */
    done = 0;
    t0 = now();
    do {
        for (size_t i = 0; i < n; i++)
            acc += cel_score_compare_raw(p[i].a, p[i].alen, p[i].b, p[i].blen).score;
        done += n;
        t = now() - t0;
    } while (t < secs);
    double independent = (double)done / t;
    sink = acc;

    printf("{\"one_to_many_pairs_per_s\": %.0f, \"independent_pairs_per_s\": %.0f, "
           "\"pairs\": %zu}\n",
           one_to_many, independent, n);
    for (size_t i = 0; i < n; i++) {
        free((void *)p[i].a);
        free((void *)p[i].b);
    }
    free(p);
    free(cand);
    return 0;
}
