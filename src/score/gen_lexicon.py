#!/usr/bin/python3
"""gen_lexicon.py — build-time generator of the name scorer's lexicon.

Reads the copies of the public name tables in src/score/data/ (see the
PROVENANCE.md next to each) and writes one C file holding a static,
read-only hash table of words the scorer knows about:

  * nickname groups: carltonnorthern/nicknames (Apache-2.0) and FamilySearch
    nama givenname_nicknames.csv (MIT).  Each canonical (formal) name is a
    group; a word's groups are the canonical names it belongs to, so "bob"
    and "rob" meet in "robert" but "aaron" and "veronica" do not meet
    through "ron".
  * frequency priors: US SSA baby names 1940-2000 (given names) and the 2010
    census top surnames (both public domain), as rarity = -10*log10(share),
    so that a rare surname agreeing weighs more than SMITH.
  * word classes: titles (FEBRL name_title.tbl plus a hand list, minus any
    word that is also a common given name or surname), generation suffixes,
    degrees, surname particles and caller-ID junk words.

Why generated C and not a runtime file: the worker is one binary; a table in
.rodata needs no I/O, no parsing and no allocation at start-up.

Usage: gen_lexicon.py DATA_DIR OUT.c
"""
import math
import os
import sys


def fnv1a(s):
    h = 0x811C9DC5
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def lines(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip("\r\n").strip()
            if line:
                yield line


def clean(w):
    w = w.strip().lower()
    return "".join(c for c in w if "a" <= c <= "z")


F_TITLE, F_PARTICLE, F_DEGREE, F_JUNK = 1, 2, 4, 8

# Generation suffixes: value is the generation (jr/ii = 2, sr = 1, iii = 3 ...).
SUFFIXES = {"jr": 2, "jnr": 2, "junior": 2, "ii": 2, "2nd": 2, "sr": 1, "snr": 1,
            "senior": 1, "iii": 3, "3rd": 3, "iv": 4, "4th": 4, "vi": 6}
DEGREES = ["esq", "esquire", "phd", "md", "dds", "dmd", "cpa", "jd", "rn", "mba",
           "dvm", "llb", "llm", "ret", "usn", "usmc", "usaf"]
# Titles beyond FEBRL's (English, and the ones in rigour's Putin spellings).
TITLES = ["mr", "mrs", "ms", "mx", "miss", "mister", "missus", "dr", "doctor", "prof",
          "professor", "rev", "revd", "reverend", "fr", "sir", "dame", "lord", "hon",
          "honorable", "honourable", "capt", "captain", "col", "colonel", "lt", "lieut",
          "sgt", "cpl", "gen", "maj", "cmdr", "adm", "sen", "rep", "gov", "pres",
          "mme", "mlle", "herr", "frau", "sra", "srta", "dra", "sig", "sigra",
          "president", "presidente", "prasident", "predsjednik", "presedintele",
          "presiden", "elnok", "prezident", "prezydent", "presidentti", "presidenten"]
# Particles joined to the following surname word (never to a name's first word).
PARTICLES = ["van", "von", "vander", "der", "den", "de", "del", "della", "delle", "dela",
             "da", "das", "dos", "di", "du", "la", "le", "lo", "al", "el", "bin", "ibn",
             "ben", "bint", "abu", "st", "ste", "ter", "ten", "te", "zu", "mac", "y"]
JUNK = ["unknown", "unk", "unkn", "na", "none", "null", "nil", "private", "unavailable",
        "anonymous", "wireless", "caller", "cell", "phone", "cellular", "toll", "free",
        "name", "blocked", "restricted", "test", "customer", "occupant", "resident",
        "current", "owner", "deceased", "estate", "of", "the", "and", "or", "aka",
        "nfn", "nmn", "fnu", "lnu", "xxx", "xx", "tbd", "valued", "withheld", "out",
        "area", "number", "mobile", "landline", "voip", "business", "inc", "llc", "corp"]


def main():
    data, out = sys.argv[1], sys.argv[2]
    # ---- nickname groups
    groups = {}          # canonical -> group id
    member = {}          # word -> set(group ids)

    def link(canon, nick):
        canon, nick = clean(canon), clean(nick)
        if not canon or not nick:
            return
        g = groups.setdefault(canon, len(groups))
        member.setdefault(canon, set()).add(g)
        member.setdefault(nick, set()).add(g)

    for line in lines(os.path.join(data, "nicknames_carltonnorthern", "names.csv")):
        p = line.split(",")
        if len(p) == 3 and p[1] == "has_nickname":
            link(p[0], p[2])
    for line in lines(os.path.join(data, "nama_familysearch", "givenname_nicknames.csv")):
        p = line.split(",")
        for nick in p[1:]:
            link(p[0], nick)

    # ---- given-name frequency (SSA 1940-2000, both sexes)
    gcount, gmale = {}, {}
    ssa = os.path.join(data, "ssa_babynames_decennial")
    for fn in sorted(os.listdir(ssa)):
        if fn.startswith("yob") and fn.endswith(".txt"):
            for line in lines(os.path.join(ssa, fn)):
                name, _sex, cnt = line.split(",")
                n = clean(name)
                gcount[n] = gcount.get(n, 0) + int(cnt)
                if _sex == "M":
                    gmale[n] = gmale.get(n, 0) + int(cnt)
    gtotal = sum(gcount.values())
    # ---- surname frequency (census 2010, top ~1000; last row is cut off)
    sprop = {}
    rows = list(lines(os.path.join(data, "census2010_surnames_top", "Names_2010Census.csv")))[1:-1]
    for line in rows:
        p = line.split(",")
        try:
            sprop[clean(p[0])] = float(p[3]) / 1e5
        except (ValueError, IndexError):
            pass

    def rarity(share):
        return max(1, min(255, int(round(-10 * math.log10(share)))))

    entries = {}

    def ent(w):
        return entries.setdefault(w, {"flags": 0, "gen": 0, "grar": 0, "srar": 0, "sex": 0,
                                      "groups": []})

    for w, gs in member.items():
        ent(w)["groups"] = sorted(gs)
    for w, c in gcount.items():
        if c >= 20 and w:
            ent(w)["grar"] = rarity(c / gtotal)
            if c >= 100:
                male = gmale.get(w, 0) / c
                ent(w)["sex"] = 1 if male >= 0.9 else 2 if male <= 0.1 else 0
    for w, p in sprop.items():
        if w:
            ent(w)["srar"] = rarity(p)

    common = {w for w, c in gcount.items() if c >= 200} | set(sprop)
    titles = set(TITLES)
    for line in lines(os.path.join(data, "febrl_lookup_tables", "name_title.tbl")):
        if line.startswith("#") or line.startswith("tag=") or ":" not in line:
            continue
        k, v = line.split(":", 1)
        for w in [k] + v.split(","):
            w = clean(w)
            if w and w not in common and w not in DEGREES:
                titles.add(w)
    for w in sorted(titles):
        ent(w)["flags"] |= F_TITLE
    for w in PARTICLES:
        ent(w)["flags"] |= F_PARTICLE
    for w in DEGREES:
        ent(w)["flags"] |= F_DEGREE
    for w in JUNK:
        ent(w)["flags"] |= F_JUNK
    for w, g in SUFFIXES.items():
        ent(w)["gen"] = g

    words = sorted(entries)
    nslots = 1
    while nslots < 2 * len(words):
        nslots *= 2
    slots = [0] * nslots
    for i, w in enumerate(words):
        h = fnv1a(w) & (nslots - 1)
        while slots[h]:
            h = (h + 1) & (nslots - 1)
        slots[h] = i + 1

    pool, offs = [], []
    pos = 0
    for w in words:
        offs.append(pos)
        pool.append(w)
        pos += len(w) + 1
    grp, gfirst = [], []
    for w in words:
        gfirst.append(len(grp))
        grp.extend(entries[w]["groups"])
    maxg = max(len(entries[w]["groups"]) for w in words)

    with open(out, "w", encoding="utf-8") as f:
        f.write("/* Generated by src/score/gen_lexicon.py from src/score/data/ — do not edit.\n"
                " * Sources and licences: see docs/scoring.md and the PROVENANCE.md files in data. */\n")
        f.write('#include "score/lexicon.h"\n\n')
        f.write("#define LEX_NWORDS %d\n#define LEX_NSLOTS %d\n" % (len(words), nslots))
        f.write("const unsigned cel_lex_nslots = LEX_NSLOTS;\n")
        f.write("const unsigned cel_lex_max_groups = %d;\n" % maxg)
        f.write("const unsigned cel_lex_ngroups = %d;\n" % len(groups))
        f.write("const char cel_lex_pool[] =\n")
        line = ""
        for w in pool:
            line += '"%s\\0" ' % w
            if len(line) > 90:
                f.write("    %s\n" % line.rstrip())
                line = ""
        f.write("    %s;\n" % line.rstrip())
        f.write("const cel_lex_entry cel_lex_entries[LEX_NWORDS] = {\n")
        for i, w in enumerate(words):
            e = entries[w]
            f.write("    {%d, %d, %d, %d, %d, %d, %d, %d, %d},\n" % (
                offs[i], len(w), gfirst[i], len(e["groups"]), e["flags"], e["gen"],
                e["grar"], e["srar"], e["sex"]))
        f.write("};\n")
        f.write("const uint16_t cel_lex_groups[] = {\n")
        for i in range(0, len(grp), 16):
            f.write("    " + ", ".join(str(g) for g in grp[i:i + 16]) + ",\n")
        f.write("    0};\n")
        f.write("const uint16_t cel_lex_slots[LEX_NSLOTS] = {\n")
        for i in range(0, nslots, 16):
            f.write("    " + ", ".join(str(s) for s in slots[i:i + 16]) + ",\n")
        f.write("};\n")


if __name__ == "__main__":
    main()
