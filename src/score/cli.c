/* cli.c — `celeriac score`: score two names, or a stream of pairs.
 *
 *   celeriac score NAME_A NAME_B
 *       score=98 class=RPC reasons=NICKNAME
 *   celeriac score --batch [--reasons | --features] < pairs.tsv
 *       one line in, one line out, same order: name_a<TAB>name_b ->
 *       score<TAB>class[<TAB>reasons | <TAB>feature...]
 *   celeriac score --parse NAME
 *       the parsed fields, one per line
 *
 * Why this shape: --batch is the bulk path (the enrichment job and the
 * benchmarks pipe millions of pairs through it), so it reads with one
 * reused line buffer, prepares into two fixed cel_score_name buffers and
 * writes through a large stdio buffer: no allocation per line, no flush per
 * line. A line without a tab scores as NO_DATA, so output lines always
 * match input lines one for one.
 */
#include "score/cli.h"

#include "celeriac/score.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fputs("usage: celeriac score NAME_A NAME_B      score=N class=C reasons=R1,R2\n"
          "       celeriac score --batch [--reasons|--features]\n"
          "                  stdin name_a<TAB>name_b lines -> score<TAB>class[<TAB>...]\n"
          "       celeriac score --parse NAME       the parsed name fields\n"
          "       celeriac score --version          the model version\n",
          f);
}

enum { OUT_PLAIN, OUT_REASONS, OUT_FEATURES };

static int batch(int mode)
{
    static char obuf[1 << 16];
    setvbuf(stdout, obuf, _IOFBF, sizeof obuf);
    static cel_score_name a, b;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    char rbuf[256];
    if (mode == OUT_FEATURES) {
        fputs("score\tclass", stdout);
        for (size_t i = 0; i < CEL_SCORE_NFEATURES; i++)
            printf("\t%s", cel_score_feature_name(i));
        putchar('\n');
    }
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        size_t len = (size_t)n;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        char *tab = memchr(line, '\t', len);
        cel_score_result r;
        if (tab) {
            cel_score_prepare(line, (size_t)(tab - line), &a);
            char *b0 = tab + 1;
            char *tab2 = memchr(b0, '\t', len - (size_t)(b0 - line));
            size_t blen = tab2 ? (size_t)(tab2 - b0) : len - (size_t)(b0 - line);
            cel_score_prepare(b0, blen, &b);
            r = cel_score_compare(&a, &b);
        } else {
            cel_score_prepare(NULL, 0, &a);
            cel_score_prepare(NULL, 0, &b);
            r = cel_score_compare(&a, &b);
        }
        printf("%d\t%s", r.score, cel_score_class_name(r.cls));
        if (mode == OUT_REASONS) {
            cel_score_reasons_format(r.reasons, rbuf, sizeof rbuf);
            printf("\t%s", rbuf);
        } else if (mode == OUT_FEATURES) {
            double f[CEL_SCORE_NFEATURES];
            size_t k = cel_score_features(&a, &b, f, CEL_SCORE_NFEATURES);
            for (size_t i = 0; i < CEL_SCORE_NFEATURES; i++)
                printf("\t%.4g", i < k ? f[i] : 0.0);
        }
        putchar('\n');
    }
    free(line);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        perror("celeriac score: write");
        return 1;
    }
    return 0;
}

static int parse_cmd(const char *s)
{
    static const char *const names[] = {"full", "given", "middle", "surname", "suffix", "title"};
    cel_score_name n;
    cel_score_prepare(s, strlen(s), &n);
    char buf[256];
    for (int f = CEL_SCORE_FIELD_FULL; f <= CEL_SCORE_FIELD_TITLE; f++) {
        cel_score_name_field(&n, (cel_score_field)f, buf, sizeof buf);
        printf("%s=%s\n", names[f], buf);
    }
    printf("usable=%d\n", cel_score_name_usable(&n));
    return 0;
}

int cel_score_main(int argc, char **argv)
{
    int mode = OUT_PLAIN, is_batch = 0;
    const char *pos[2];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--batch"))
            is_batch = 1;
        else if (!strcmp(a, "--reasons"))
            mode = OUT_REASONS;
        else if (!strcmp(a, "--features"))
            mode = OUT_FEATURES;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("model %s rpc>=%d review>=%d\n", cel_score_model_version(),
                   cel_score_rpc_threshold(), cel_score_review_threshold());
            return 0;
        } else if (!strcmp(a, "--parse") && i + 1 < argc) {
            return parse_cmd(argv[i + 1]);
        } else if (!strcmp(a, "--")) {
            for (i++; i < argc && npos < 2; i++)
                pos[npos++] = argv[i];
            if (i < argc)
                npos = 3;
            break;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "celeriac score: unknown option %s\n", a);
            usage(stderr);
            return 64;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            npos = 3;
        }
    }
    if (is_batch) {
        if (npos) {
            usage(stderr);
            return 64;
        }
        return batch(mode);
    }
    if (npos != 2) {
        usage(stderr);
        return 64;
    }
    cel_score_name a, b;
    cel_score_prepare(pos[0], strlen(pos[0]), &a);
    cel_score_prepare(pos[1], strlen(pos[1]), &b);
    cel_score_result r = cel_score_compare(&a, &b);
    char rbuf[256];
    cel_score_reasons_format(r.reasons, rbuf, sizeof rbuf);
    printf("score=%d class=%s reasons=%s\n", r.score, cel_score_class_name(r.cls),
           rbuf[0] ? rbuf : "-");
    return 0;
}
