#!/usr/bin/python3
"""fit_model.py — fit the name scorer's logistic regression offline and write
src/score/model.h (checked in, so building needs no data).

    src/score/fit_model.py [--celeriac build-score/src/celeriac]
                           [--pairs bench/data/pairs.tsv] [--out src/score/model.h]
                           [--dry-run] [--rounds N] [--l2 X] [--cv]

Reads only the `split == train` rows of bench/data/pairs.tsv (see
bench/data/README.md), gets each pair's feature vector from
`celeriac score --batch --features` (the features of the best alignment under
the current model), and fits L2-regularised logistic regression by IRLS
(Newton) with numpy. The best alignment depends on the weights, so after
writing model.h rebuild and run this again: --rounds N does that N times
(ninja in the --celeriac binary's build directory) and ships the model whose
objective on its own alignments is lowest (the rounds can alternate between
two fits). --cv prints the cross-validated loss of a grid of L2 strengths.

Weighting: every (set, kind) group of pairs gets the same total weight, so
the 30k random FEBRL negatives do not drown the few hundred census
household pairs or the spouse negatives. The score is therefore calibrated
to that balanced mix, not to any one population's base rate.

Left out of the fit: `true_replaced` (duplicate records whose name was
replaced by another person's: label 1 but different names) and `homonym`
(different people with the same name): no name-only scorer should learn from them.

Thresholds: RPC is the lowest score at which, on the training pairs, at most
MAX_NEG_RPC of the non-pairs of every negative kind group (pooled) and at most
MAX_FS_RPC of the FamilySearch reviewed-different names are classed RPC; REVIEW
starts at the score where the pooled true pairs' recall reaches 0.97.
"""
import argparse
import datetime
import hashlib
import io
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SKIP_KINDS = {"true_replaced", "homonym"}
L2 = 1.0  # --cv prefers 0.003-0.01 (lower held-out loss), but those fits have extreme weights and accept more FamilySearch pairs (docs/scoring.md)
MAX_NEG_RPC = 0.02
MAX_FS_RPC = 0.008
MAX_KIND_RPC = 0.05  # and no negative kind above this


def load(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        head = f.readline().rstrip("\n").split("\t")
        ix = {c: i for i, c in enumerate(head)}
        for line in f:
            p = line.rstrip("\n").split("\t")
            if p[ix["split"]] != "train" or p[ix["kind"]] in SKIP_KINDS:
                continue
            rows.append((p[ix["set"]], p[ix["kind"]], p[ix["name_a"]], p[ix["name_b"]],
                         int(p[ix["label"]]), p[ix["entity"]]))
    return rows


def features(binary, rows):
    inp = "".join("%s\t%s\n" % (r[2], r[3]) for r in rows).encode()
    out = subprocess.run([binary, "score", "--batch", "--features"], input=inp,
                         stdout=subprocess.PIPE, check=True).stdout.decode().splitlines()
    names = out[0].split("\t")[2:]
    X = np.array([[float(v) for v in l.split("\t")[2:]] for l in out[1:]])
    cls = [l.split("\t")[1] for l in out[1:]]
    return names, X, cls


# Features whose weight must not be positive: evidence against a match, or
# (swapped) a reading that is less likely a priori. The training data has no
# swapped or middle-conflicting negatives of their own, so a free fit could
# learn "swapped means match"; these are clamped at 0 and the rest refitted.
NONPOS = {"g_conflict", "s_conflict", "m_conflict", "suffix_conflict", "sex_conflict",
          "swapped", "surname_only", "given_only"}
NONNEG = {"g_exact", "g_nick", "s_exact", "m_agree", "s_rarity", "g_rarity", "g_weak_m_agree"}


def irls(X, y, w, l2, fixed=None):
    n, d = X.shape
    beta = np.zeros(d)
    free = np.ones(d, dtype=bool)
    if fixed:
        for j in fixed:
            free[j] = False
    reg = np.full(d, l2)
    reg[0] = 1e-6
    for _ in range(50):
        z = X @ beta
        p = 1.0 / (1.0 + np.exp(-z))
        g = X.T @ (w * (p - y)) + reg * beta
        H = (X * (w * p * (1 - p))[:, None]).T @ X + np.diag(reg)
        step = np.zeros(d)
        step[free] = np.linalg.solve(H[np.ix_(free, free)], g[free])
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return beta


def built_weights(path, d):
    """The weights in model.h as written (and so as built), or None."""
    try:
        text = open(path).read()
    except OSError:
        return None
    body = text.split("cs_model_w[CEL_SCORE_NFEATURES] = {", 1)
    if len(body) != 2:
        return None
    vals = [float(l.split(",")[0]) for l in body[1].split("};")[0].splitlines() if l.strip()]
    return np.array(vals) if len(vals) == d else None


def objective(X, y, w, beta, l2):
    """The fit's penalised, weighted negative log-likelihood (what IRLS minimises)."""
    z = X @ beta
    nll = np.sum(w * (np.logaddexp(0.0, z) - y * z))
    return nll + 0.5 * l2 * np.sum(beta[1:] ** 2)


def fit_weights(names, X, y, w, l2):
    # columns that never vary would make the Hessian singular: the L2 term keeps it sound
    fixed = set()
    for _ in range(len(names)):
        beta = irls(X, y, w, l2, fixed)
        bad = [j for j, n_ in enumerate(names) if j not in fixed and
               ((n_ in NONPOS and beta[j] > 0) or (n_ in NONNEG and beta[j] < 0))]
        if not bad:
            break
        fixed |= set(bad)
    return beta


def cross_validate(names, X, y, w, keep, rows, k=5, repeats=3,
                   grid=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)):
    """Choose the L2 strength: k-fold cross-validation over the train split, folds by entity
    (a household, a FEBRL original, a first given name...), repeated with `repeats` fold
    assignments, scored by the held-out weighted negative log-likelihood (the fit's own
    loss, with its group weights), averaged over the repeats."""
    for l2 in grid:
        nll = []
        for rep in range(repeats):
            fold = np.array([int(hashlib.sha1(("cv%d:%s" % (rep, r[5])).encode()).hexdigest(), 16) % k
                             for r in rows])
            t = 0.0
            for i in range(k):
                tr, te = fold != i, (fold == i) & keep
                beta = fit_weights(names, X[tr], y[tr], w[tr], l2)
                z = X[te] @ beta
                t += np.sum(w[te] * (np.logaddexp(0.0, z) - y[te] * z))
            nll.append(t)
        print("L2 %-6g held-out weighted NLL %.1f (%s)" % (l2, np.mean(nll),
                                                          " ".join("%.1f" % v for v in nll)))


def fit_round(a):
    rows = load(a.pairs)
    names, X, cls = features(a.celeriac, rows)
    keep = np.array([c != "NO_DATA" for c in cls])
    y = np.array([r[4] for r in rows], dtype=float)
    groups = {}
    for i, r in enumerate(rows):
        groups.setdefault((r[0], r[1]), []).append(i)
    w = np.zeros(len(rows))
    for idx in groups.values():
        w[idx] = 1000.0 / len(idx)
    w[~keep] = 0.0
    # the model as built: its objective on its own alignments (the features
    # above were chosen by its weights), to pick among alternating rounds
    cur = built_weights(a.out, len(names))
    cur_obj = objective(X, y, w, cur, a.l2) if cur is not None else float("inf")
    print("model as built: objective %.2f" % cur_obj)
    if a.cv:
        cross_validate(names, X, y, w, keep, rows)
        return cur_obj, None
    beta = fit_weights(names, X, y, w, a.l2)
    score = np.floor(100.0 / (1.0 + np.exp(-(X @ beta))) + 0.5)
    score[~keep] = -1

    neg = (y == 0) & keep
    pos = (y == 1) & keep
    fs = np.array([r[0] == "familysearch" for r in rows])
    kinds = sorted({(r[0], r[1]) for r in rows})
    rpc = 100
    for t in range(100, 0, -1):
        acc = score >= t
        neg_rate = np.average(acc[neg], weights=w[neg])
        fs_rate = acc[fs & neg].mean()
        worst = max(acc[np.array([(r[0], r[1]) == k for r in rows]) & neg].mean()
                    if np.any(np.array([(r[0], r[1]) == k for r in rows]) & neg) else 0
                    for k in kinds if k[1] in ("spouse", "household", "suffix_conflict"))
        if neg_rate <= MAX_NEG_RPC and fs_rate <= MAX_FS_RPC and worst <= MAX_KIND_RPC:
            rpc = t
        else:
            break
    review = rpc
    for t in range(rpc, 0, -1):
        if np.average(score[pos] >= t, weights=w[pos]) >= 0.97:
            review = t
            break
    review = min(review, rpc - 1)

    print("weights:")
    for n_, b in zip(names, beta):
        print("  %-16s %8.3f" % (n_, b))
    print("thresholds: RPC >= %d, REVIEW >= %d" % (rpc, review))
    acc = score >= rpc
    print("train, share classed RPC per group:")
    for k in kinds:
        m = np.array([(r[0], r[1]) == k for r in rows]) & keep
        if m.any():
            lab = int(y[m][0])
            print("  %-14s %-20s label %d  n=%-6d RPC %.1f%%" % (k[0], k[1], lab, m.sum(),
                                                                100 * acc[m].mean()))
    if a.dry_run:
        return cur_obj, None
    digest = hashlib.sha1(open(a.pairs, "rb").read()).hexdigest()[:8]
    # the weights' own digest too: two fits of the same data (say, after a
    # feature change) must not share a version, since enrich stores it with each score
    wdigest = hashlib.sha1(("%d %d " % (rpc, review) + " ".join("%.6f" % b for b in beta))
                           .encode()).hexdigest()[:6]
    version = "lr-%s-%s-%s" % (datetime.date.today().isoformat(), digest, wdigest)
    with io.StringIO() as f:
        f.write("/* model.h — the scorer's logistic-regression weights and default thresholds.\n"
                " * Written by src/score/fit_model.py (train split of bench/data/pairs.tsv,\n"
                " * sha1 %s...); do not edit by hand. Feature order: cel_score_feature_name(). */\n"
                % digest)
        f.write("#ifndef CELERIAC_SCORE_MODEL_H\n#define CELERIAC_SCORE_MODEL_H\n\n")
        f.write('#define CS_MODEL_VERSION "%s"\n' % version)
        f.write("#define CS_MODEL_RPC_MIN %d\n#define CS_MODEL_REVIEW_MIN %d\n\n" % (rpc, review))
        f.write("static const double cs_model_w[CEL_SCORE_NFEATURES] = {\n")
        for n_, b in zip(names, beta):
            f.write("    %.6f, /* %s */\n" % (b, n_))
        f.write("};\n\n#endif\n")
        text = f.getvalue()
    with open(a.out, "w") as fo:
        fo.write(text)
    print("wrote %s (%s)" % (a.out, version))
    return cur_obj, text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--celeriac", default=os.path.join(ROOT, "build-score", "src", "celeriac"))
    ap.add_argument("--pairs", default=os.path.join(ROOT, "bench", "data", "pairs.tsv"))
    ap.add_argument("--out", default=os.path.join(HERE, "model.h"))
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--l2", type=float, default=L2, help="L2 strength (default %(default)s)")
    ap.add_argument("--cv", action="store_true",
                    help="print the 5-fold cross-validated loss of each L2 strength on a grid, fit nothing")
    ap.add_argument("--rounds", type=int, default=1,
                    help="fit, rebuild (ninja -C the --celeriac binary's build dir), repeat; "
                         "then ship the round whose model has the lowest objective on its own alignments")
    a = ap.parse_args()
    if a.rounds <= 1 or a.dry_run or a.cv:
        fit_round(a)
        return 0
    build = os.path.dirname(os.path.dirname(os.path.abspath(a.celeriac)))
    seen = []  # (objective of the model as built, its model.h text)

    def rebuild():
        subprocess.run(["ninja", "-C", build], check=True, stdout=subprocess.DEVNULL)

    for i in range(a.rounds):
        print("== round %d" % (i + 1))
        before = open(a.out).read() if os.path.exists(a.out) else None
        obj, _ = fit_round(a)
        if before is not None:
            seen.append((obj, before))
        rebuild()
    a2 = argparse.Namespace(**vars(a))
    a2.dry_run = True
    print("== last round's model")
    obj, _ = fit_round(a2)
    seen.append((obj, open(a.out).read()))
    best = min(range(len(seen)), key=lambda k: seen[k][0])
    print("objectives of the models as built: %s; shipping #%d" %
          (", ".join("%.2f" % o for o, _ in seen), best + 1))
    with open(a.out, "w") as f:
        f.write(seen[best][1])
    rebuild()
    return 0


if __name__ == "__main__":
    sys.exit(main())
