#!/usr/bin/python3
"""Build bench/data/pairs.tsv: labelled person-name pairs for the RPC/WPC scorer.

Reads only bench/data/sources/ (copies of ../shared/data/, see README.md there),
uses only the standard library, and is deterministic: every random choice comes
from a random.Random seeded with a fixed string, and the train/test split is a
hash of the entity id.  Re-running it must reproduce pairs.tsv byte for byte.

    bench/data/build_pairs.py [--out PATH] [--check]

--check rebuilds into memory and fails if pairs.tsv differs.

Columns (tab-separated, header line first):
    set  entity  split  name_a  name_b  label  kind

See README.md next to this script for what each set and kind means.
"""

import argparse
import csv
import hashlib
import io
import os
import random
import sys
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "sources")
TRAIN_PERCENT = 70
RANDOM_NEG_PER_TRUE = 10


# --------------------------------------------------------------------------- #
# helpers


def split_of(entity):
    """70/30 train/test by a hash of the global entity id (stable across runs)."""
    h = int(hashlib.sha1(entity.encode("utf-8")).hexdigest()[:8], 16)
    return "train" if h % 100 < TRAIN_PERCENT else "test"


def rng_for(*parts):
    return random.Random("celeriac-pairs:" + ":".join(str(p) for p in parts))


def stable_index(key, n):
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % n


def read_lines(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [line.rstrip("\r\n") for line in f]


def soundex(s):
    """American Soundex (the classic 4-character code), for the blocking key."""
    s = "".join(c for c in s.upper() if "A" <= c <= "Z")
    if not s:
        return ""
    codes = {}
    for letters, d in (("BFPV", "1"), ("CGJKQSXZ", "2"), ("DT", "3"),
                       ("L", "4"), ("MN", "5"), ("R", "6")):
        for c in letters:
            codes[c] = d
    out = s[0]
    prev = codes.get(s[0], "")
    for c in s[1:]:
        d = codes.get(c, "")
        if d and d != prev:
            out += d
        if c not in "HW":
            prev = d
    return (out + "000")[:4]


def tokens(name):
    return tuple(sorted(name.lower().replace(",", " ").replace(".", " ").split()))


class Nicknames:
    """Many-to-many given-name equivalence from both nickname sources."""

    def __init__(self):
        self.pairs = []  # (formal, nick, source) in file order, deduplicated
        self.groups = defaultdict(set)  # name -> set of canonical names
        seen = set()
        rows = read_lines(os.path.join(SRC, "nicknames_carltonnorthern", "names.csv"))
        for line in rows[1:]:
            if not line:
                continue
            a, rel, b = line.split(",")
            a, b = a.strip().lower(), b.strip().lower()
            if rel != "has_nickname" or not a or not b or a == b:
                continue
            self._add(a, b, "carltonnorthern", seen)
        for line in read_lines(os.path.join(SRC, "nama_familysearch", "givenname_nicknames.csv")):
            parts = [p.strip().lower() for p in line.split(",") if p.strip()]
            if len(parts) < 2:
                continue
            for nick in parts[1:]:
                if nick != parts[0]:
                    self._add(parts[0], nick, "nama", seen)

    def _add(self, formal, nick, source, seen):
        self.groups[formal].add(formal)
        self.groups[nick].add(formal)
        if (formal, nick) not in seen:
            seen.add((formal, nick))
            self.pairs.append((formal, nick, source))

    def equivalent(self, a, b):
        a, b = a.lower(), b.lower()
        if a == b:
            return True
        ga, gb = self.groups.get(a), self.groups.get(b)
        return bool(ga and gb and ga & gb)


def census_surnames():
    rows = read_lines(os.path.join(SRC, "census2010_surnames_top", "Names_2010Census.csv"))
    # header, ranks 1..1022, then a cut-off row 1023 (see PROVENANCE.md): drop it
    names = [r.split(",")[0] for r in rows[1:] if r]
    names = names[:-1]
    assert len(names) == 1022 and names[0] == "SMITH", len(names)
    return names


def osa(a, b):
    """Optimal string alignment (restricted Damerau-Levenshtein) distance."""
    prev2, prev = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


class FebrlTables:
    """Febrl's own name variant tables: which values its generator may swap in."""

    def __init__(self):
        self.pairs = set()
        d = os.path.join(SRC, "febrl_lookup_tables")
        for f in ("givenname_f.tbl", "givenname_m.tbl", "givenname-misspell.tbl",
                  "surname-misspell.tbl", "surname.tbl"):
            for line in read_lines(os.path.join(d, f)):
                line = line.split("#")[0]
                if ":" not in line or line.strip().startswith("tag="):
                    continue
                left, right = line.split(":", 1)
                names = [left.strip().lower()] + [x.strip().lower() for x in right.split(",")]
                names = [n for n in names if n]
                for x in names:
                    for y in names:
                        if x != y:
                            self.pairs.add((x, y))


def related(x, y, nick, tables):
    """Could FEBRL's generator have turned name part x into y (or y into x)?

    True for typos and OCR/phonetic slips (OSA distance <= 2, or <= 3 when the
    longer name has 7+ letters), truncation and initials (prefix), Soundex agreement, and pairs from
    the nickname or Febrl variant/misspelling tables.  False means the part was
    replaced by a different name altogether.
    """
    if x == y:
        return True
    if not x or not y:
        return False
    if x.startswith(y) or y.startswith(x):
        return True
    d = osa(x, y)
    if d <= 2 or (d <= 3 and max(len(x), len(y)) >= 7):
        return True
    if soundex(x) == soundex(y):
        return True
    if (x, y) in tables.pairs or nick.equivalent(x, y):
        return True
    # words run together or split ("van dyk" / "vandyk")
    return x.replace(" ", "") == y.replace(" ", "")


class Out:
    def __init__(self):
        self.rows = []

    def add(self, set_, entity, split, a, b, label, kind):
        for v in (a, b):
            assert "\t" not in v and "\n" not in v and "\r" not in v, v
        assert a.strip() or b.strip(), (set_, entity)
        self.rows.append((set_, entity, split, a, b, str(label), kind))


# --------------------------------------------------------------------------- #
# FEBRL 1-3


def read_febrl(k):
    path = os.path.join(SRC, "febrl", "dataset%d.csv" % k)
    with open(path, encoding="utf-8", newline="") as f:
        rd = csv.reader(f, skipinitialspace=True)
        header = next(rd)
        assert header[0] == "rec_id"
        recs = []
        for row in rd:
            rid, given, surname = row[0].strip(), row[1].strip(), row[2].strip()
            parts = rid.split("-")
            recs.append({"id": rid, "ent": parts[1], "org": parts[2] == "org",
                         "given": given, "surname": surname})
    return recs


def febrl_name(r):
    return " ".join(p for p in (r["given"], r["surname"]) if p)


def complete(r):
    return bool(r["given"] and r["surname"])


HARD_NEG_PER_KIND = 3


def name_related(r1, r2, nick, tables):
    """Both name parts related, straight or with given and surname swapped."""
    g1, s1, g2, s2 = r1["given"], r1["surname"], r2["given"], r2["surname"]
    return ((related(g1, g2, nick, tables) and related(s1, s2, nick, tables)) or
            (related(g1, s2, nick, tables) and related(s1, g2, nick, tables)))


def build_febrl(out, nick, stats):
    tables = FebrlTables()
    variant_anchors = []  # (set, global entity, split, given, surname) for the variants set
    for k in (1, 2, 3):
        set_ = "febrl%d" % k
        recs = read_febrl(k)
        by_ent = defaultdict(list)
        for r in recs:
            by_ent[r["ent"]].append(r)
        gid = lambda e: "%s:%s" % (set_, e)
        split = {e: split_of(gid(e)) for e in by_ent}
        # pools of complete records per split, for negatives
        pool = {"train": [], "test": []}
        by_surname = {"train": defaultdict(list), "test": defaultdict(list)}
        by_given = {"train": defaultdict(list), "test": defaultdict(list)}
        by_block = {"train": defaultdict(list), "test": defaultdict(list)}
        for r in recs:
            if not complete(r):
                continue
            s = split[r["ent"]]
            pool[s].append(r)
            by_surname[s][r["surname"]].append(r)
            by_given[s][r["given"]].append(r)
            by_block[s][(soundex(r["surname"]), r["given"][0])].append(r)

        def neg_kind(a, b, kind):
            # different people whose names are the same up to order or nickname:
            # no name-only scorer can separate them, so they are kept apart
            if tokens(febrl_name(a)) == tokens(febrl_name(b)):
                return "homonym"
            if a["surname"] == b["surname"] and nick.equivalent(a["given"], b["given"]):
                return "homonym"
            return kind

        rng = rng_for(set_)
        for e in sorted(by_ent, key=lambda x: int(x)):
            group = by_ent[e]
            orgs = [r for r in group if r["org"]]
            if not orgs:
                continue
            org = orgs[0]
            s = split[e]
            dups = sorted((r for r in group if not r["org"]), key=lambda r: r["id"])
            if complete(org):
                variant_anchors.append((set_, gid(e), s, org["given"], org["surname"]))
            n_true = 0
            for d in dups:
                a, b = febrl_name(org), febrl_name(d)
                if not a and not b:
                    continue
                if complete(org) and complete(d):
                    if not name_related(org, d, nick, tables):
                        # the generator replaced a name part by another name:
                        # a duplicate record, but not the same name
                        out.add(set_, gid(e), s, a, b, 1, "true_replaced")
                        continue
                    out.add(set_, gid(e), s, a, b, 1, "true")
                else:
                    out.add(set_, gid(e), s, a, b, 1, "true_partial")
                    continue
                # 1:10 random negatives, anchored on the original, partner from
                # another entity of the same split
                n = 0
                while n < RANDOM_NEG_PER_TRUE:
                    c = pool[s][rng.randrange(len(pool[s]))]
                    if c["ent"] == e:
                        continue
                    out.add(set_, gid(e), s, a, febrl_name(c), 0, neg_kind(org, c, "random"))
                    n += 1
                n_true += 1
            # duplicate vs duplicate: the same person too (all within-group pairs
            # are matches), each side corrupted on its own; no negatives are
            # drawn for these, they join the FEBRL hard-negative groups only
            for i in range(len(dups)):
                for j in range(i + 1, len(dups)):
                    d1, d2 = dups[i], dups[j]
                    a, b = febrl_name(d1), febrl_name(d2)
                    if not a and not b:
                        continue
                    if not (complete(d1) and complete(d2)):
                        kind = "true_partial"
                    elif name_related(d1, d2, nick, tables):
                        kind = "true_dupdup"
                    else:
                        kind = "true_replaced"
                    out.add(set_, gid(e), s, a, b, 1, kind)
            if not n_true:
                continue
            # blocked hard negatives, once per original: up to HARD_NEG_PER_KIND
            # per blocking rule and true pair of this entity, each from a
            # different other entity (so no pair repeats when an original has
            # several duplicates)
            a = febrl_name(org)
            for kind, cands in (
                    ("hard_same_surname", by_surname[s][org["surname"]]),
                    ("hard_same_given", by_given[s][org["given"]]),
                    ("hard_block", by_block[s][(soundex(org["surname"]), org["given"][0])])):
                cands = [c for c in cands if c["ent"] != e]
                if kind == "hard_block":
                    # the soundex/initial block minus the exact-agreement blocks
                    cands = [c for c in cands if c["surname"] != org["surname"]
                             and c["given"] != org["given"]]
                if not cands:
                    stats[(set_, kind + " (none available, originals)")] += 1
                    continue
                one = {}
                for c in cands:  # one record per other entity, first in file order
                    one.setdefault(c["ent"], c)
                picks = sorted(one, key=int)
                want = HARD_NEG_PER_KIND * n_true
                if len(picks) > want:
                    picks = rng.sample(picks, want)
                for pe in picks:
                    c = one[pe]
                    out.add(set_, gid(e), s, a, febrl_name(c), 0, neg_kind(org, c, kind))
    return variant_anchors


# --------------------------------------------------------------------------- #
# contact-point variants and spouse / relative negatives (from FEBRL originals)

SUFFIXES = ["JR", "SR", "II", "III"]


def build_variants(out, nick, anchors):
    rng = rng_for("variants")
    givens = sorted({g for (_, _, _, g, _) in anchors})
    kinds = ["variant_swap", "variant_comma", "variant_initial", "variant_suffix",
             "variant_callerid", "variant_middle"]
    for i, (set_, ent, s, g, sn) in enumerate(anchors):
        a = "%s %s" % (g, sn)
        G, S = g.upper(), sn.upper()
        kind = kinds[i % len(kinds)]
        mid = chr(ord("A") + rng.randrange(26))
        if kind == "variant_swap":
            b = "%s %s" % (S, G)
        elif kind == "variant_comma":
            b = "%s, %s" % (S, G)
        elif kind == "variant_initial":
            b = "%s%s %s" % (G[0], rng.choice(["", "."]), S)
        elif kind == "variant_suffix":
            b = "%s %s %s" % (G, S, rng.choice(SUFFIXES[:2] + ["JR."]))
        elif kind == "variant_callerid":
            # CNAM caller-ID: surname first, 15 characters at most
            b = ("%s %s %s" % (S, G, mid))[:15].rstrip()
        else:  # variant_middle: record has a middle initial, contact point not
            a = "%s %s %s" % (g, mid.lower(), sn)
            b = "%s %s" % (G, S)
        out.add("variants", ent, s, a, b, 1, kind)
        # spouse / relative: same surname, a different (non-nickname) given name
        while True:
            g2 = givens[rng.randrange(len(givens))]
            if not nick.equivalent(g, g2) and g2 != g:
                break
        form = rng.randrange(3)
        b = ["%s %s" % (g2.upper(), S), "%s, %s" % (S, g2.upper()), "%s %s" % (g2, sn)][form]
        out.add("variants", ent, s, a if kind != "variant_middle" else "%s %s" % (g, sn),
                b, 0, "spouse")
        # father / son: same name, generational suffixes of different generations
        if i % 5 == 0:
            s1, s2 = rng.sample(SUFFIXES, 2)
            if {s1, s2} == {"JR", "II"}:
                s2 = "SR"  # JR and II both mark the second generation: no conflict
            out.add("variants", ent, s, "%s %s %s" % (g, sn, s1.lower()),
                    "%s %s %s" % (G, S, s2), 0, "suffix_conflict")


# --------------------------------------------------------------------------- #
# SecondString census: true A x B pairs and same-household different persons


def build_census(out, stats):
    recs = []
    for f in ("censusTextSegmentedA.tab", "censusTextSegmentedB.tab"):
        for line in read_lines(os.path.join(SRC, "secondstring_census", f)):
            if not line:
                continue
            src, rid, sn, g, mi, _num, _street = [x.strip() for x in line.split("\t")]
            recs.append({"src": src, "id": rid, "surname": sn, "given": g, "mi": mi})
    A = [r for r in recs if r["src"] == "A"]
    B = [r for r in recs if r["src"] == "B"]

    def hh(rid):
        # 21-character ids: ID + household digits + 2-digit person number
        return rid[:-2] if len(rid) == 21 else rid

    def name(r):
        return " ".join(p for p in (r["given"], r["mi"], r["surname"]) if p)

    for a in A:
        for b in B:
            if hh(a["id"]) != hh(b["id"]):
                continue
            ent = "census:" + hh(a["id"])
            s = split_of(ent)
            same = a["id"] == b["id"]
            partial = not (a["given"] and b["given"])
            if same:
                kind = "true_partial" if partial else "true"
            else:
                kind = "household_partial" if partial else "household"
                if not partial and tokens(a["given"] + " " + a["surname"]) == \
                        tokens(b["given"] + " " + b["surname"]):
                    kind = "homonym"
            out.add("census", ent, s, name(a), name(b), 1 if same else 0, kind)


# --------------------------------------------------------------------------- #
# Splink fake_1000 clerical labels


def build_splink(out, stats):
    d = os.path.join(SRC, "splink_fake_1000")
    with open(os.path.join(d, "fake_1000.csv"), encoding="utf-8", newline="") as f:
        recs = {r["unique_id"]: r for r in csv.DictReader(f)}
    with open(os.path.join(d, "fake_1000_labels.csv"), encoding="utf-8", newline="") as f:
        labels = list(csv.DictReader(f))
    # split by cluster.  The clerical negatives all sit among clusters 0-15
    # (linked densely), so a split by connected component would put every
    # negative in one split; instead each cluster gets its own split and a
    # negative is kept only when both of its clusters fall in the same split,
    # so that no cluster (and no record) appears in both splits.
    def name(r):
        return " ".join(p for p in (r["first_name"].strip(), r["surname"].strip()) if p)

    for l in labels:
        ra, rb = recs[l["unique_id_l"]], recs[l["unique_id_r"]]
        a, b = name(ra), name(rb)
        if not a or not b:
            continue  # one side has no name at all: nothing to score
        label = 1 if float(l["clerical_match_score"]) >= 0.5 else 0
        assert label == (ra["cluster"] == rb["cluster"])
        ent = "splink:c" + ra["cluster"]
        if split_of(ent) != split_of("splink:c" + rb["cluster"]):
            stats[("splink", "negatives dropped: clusters in different splits")] += 1
            continue
        partial = not (ra["first_name"].strip() and ra["surname"].strip()
                       and rb["first_name"].strip() and rb["surname"].strip())
        if label:
            kind = "true_partial" if partial else "true"
        else:
            kind = "negative_partial" if partial else "clerical_negative"
            if not partial and tokens(a) == tokens(b):
                kind = "homonym"
        out.add("splink", ent, split_of(ent), a, b, label, kind)


# --------------------------------------------------------------------------- #
# FamilySearch reviewed different given names


def build_familysearch(out, nick, surnames, stats):
    rows = read_lines(os.path.join(SRC, "nama_familysearch", "given_variants_clorinda_reviewed.tsv"))
    seen = set()
    for line in rows:
        if not line:
            continue
        g1, g2 = [x.strip().lower() for x in line.split("\t")]
        if not g1 or not g2 or g1 == g2 or (g1, g2) in seen:
            stats[("familysearch", "skipped (blank, identical or repeated)")] += 1
            continue
        seen.add((g1, g2))
        if nick.equivalent(g1, g2):
            # reviewed "different", but a nickname table says equivalent:
            # the two sources disagree, so the pair is kept out of the set
            stats[("familysearch", "dropped: nickname-equivalent in the tables")] += 1
            continue
        sn = surnames[stable_index("fs:" + g1 + ":" + g2, len(surnames))].title()
        ent = "fs:" + g1
        out.add("familysearch", ent, split_of(ent), "%s %s" % (g1.title(), sn),
                "%s %s" % (g2.title(), sn), 0, "fs_different")


# --------------------------------------------------------------------------- #
# nickname pairs


def build_nicknames(out, nick, surnames):
    for formal, nk, source in nick.pairs:
        key = "nick:" + formal + ":" + nk
        sn = surnames[stable_index(key, len(surnames))]
        form = stable_index(key + ":form", 4)
        F, N = formal.title(), nk.title()
        if form == 0:
            a, b = "%s %s" % (F, sn.title()), "%s %s" % (N, sn.title())
        elif form == 1:
            a, b = "%s %s" % (F.upper(), sn), "%s, %s" % (sn, N.upper())
        elif form == 2:
            a, b = "%s, %s" % (sn.title(), F), "%s %s" % (N.upper(), sn)
        else:
            a, b = "%s %s" % (N, sn.title()), "%s %s" % (F.upper(), sn)
        ent = "nick:" + formal
        out.add("nickname", ent, split_of(ent), a, b, 1, "nickname")


# --------------------------------------------------------------------------- #


def build():
    out = Out()
    stats = Counter()
    nick = Nicknames()
    surnames = census_surnames()
    anchors = build_febrl(out, nick, stats)
    build_variants(out, nick, anchors)
    build_census(out, stats)
    build_splink(out, stats)
    build_familysearch(out, nick, surnames, stats)
    build_nicknames(out, nick, surnames)
    buf = io.StringIO()
    buf.write("set\tentity\tsplit\tname_a\tname_b\tlabel\tkind\n")
    for r in out.rows:
        buf.write("\t".join(r) + "\n")
    return buf.getvalue(), out.rows, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "pairs.tsv"))
    ap.add_argument("--check", action="store_true",
                    help="fail if the file on disk differs from a fresh build")
    ap.add_argument("--counts", action="store_true", help="print counts per set/kind/split")
    args = ap.parse_args()
    text, rows, stats = build()
    if args.check:
        with open(args.out, encoding="utf-8") as f:
            if f.read() != text:
                sys.exit("%s is out of date: rerun bench/data/build_pairs.py" % args.out)
        print("%s is up to date (%d pairs)" % (args.out, len(rows)))
    else:
        with open(args.out, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        print("wrote %s: %d pairs" % (args.out, len(rows)))
    if args.counts or not args.check:
        c = Counter((r[0], r[6], r[5], r[2]) for r in rows)
        keys = sorted({(s, k, l) for (s, k, l, _) in c})
        print("%-13s %-20s %5s %7s %7s" % ("set", "kind", "label", "train", "test"))
        for s, k, l in keys:
            print("%-13s %-20s %5s %7d %7d" % (s, k, l, c[(s, k, l, "train")], c[(s, k, l, "test")]))
        for k, v in sorted(stats.items()):
            print("note: %s %s: %d" % (k[0], k[1], v))


if __name__ == "__main__":
    main()
