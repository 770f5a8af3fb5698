"""A reference person-name scorer in plain Python, for bench/score-speed.

It does the same kinds of work as celeriac's C scorer (src/score/), written the
way one would in Python with python3-jellyfish and python3-levenshtein, so
that the speed comparison is like for like:

  normalise   unicodedata NFKC, casefold, strip accents (NFKD minus combining
              marks), punctuation to spaces (the comma is kept as a marker for
              the "SURNAME, GIVEN" form, apostrophes vanish: O'Brien -> obrien)
  parse       title / given / middle(s) / surname(s) / suffix; comma form;
              particles (van, de, al ...) stay with the surname; hyphenated and
              double surnames become several surname tokens
  compare     per token pair, the best of: exact, nickname-equivalent (the same
              nickname CSVs the C scorer compiles in), initial-compatible,
              Jaro-Winkler, Damerau-Levenshtein similarity, NYSIIS code equal;
              given/surname aligned in both orders (straight and swapped)
  combine     a simple weighted sum of the given, surname and middle evidence,
              minus penalties for a generation-suffix conflict, 0-100, with the
              class RPC / REVIEW / WPC / NO_DATA

`prepare(name)` does the per-name work once (normalise, parse, per-token
phonetic code and nickname groups); `compare(p, q)` scores two prepared names;
`score(a, b)` does both for raw strings.  It is a benchmark reference, not a
tuned matcher: its weights are set by hand.
"""

import os
import re
import unicodedata

import jellyfish
import Levenshtein

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = os.path.join(HERE, "data", "sources")

TITLES = {"mr", "mrs", "ms", "mx", "miss", "mister", "dr", "doctor", "prof", "professor",
          "rev", "reverend", "fr", "sir", "dame", "lord", "lady", "hon", "capt", "col",
          "gen", "lt", "sgt", "maj"}
SUFFIXES = {"jr": 2, "jnr": 2, "junior": 2, "ii": 2, "2nd": 2, "sr": 1, "snr": 1,
            "senior": 1, "iii": 3, "3rd": 3, "iv": 4, "4th": 4}
DEGREES = {"esq", "phd", "md", "dds", "cpa", "jd", "rn", "mba"}
PARTICLES = {"van", "von", "de", "del", "della", "der", "den", "di", "da", "du", "dos",
             "das", "le", "la", "al", "el", "bin", "ibn", "st", "ter", "ten", "mac"}

_PUNCT = re.compile(r"[^\w,\s-]+")
_SPACES = re.compile(r"\s+")


def _load_nicknames():
    groups = {}

    def add(formal, nick):
        groups.setdefault(formal, set()).add(formal)
        groups.setdefault(nick, set()).add(formal)

    path = os.path.join(SOURCES, "nicknames_carltonnorthern", "names.csv")
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            p = line.strip().split(",")
            if len(p) == 3 and p[0] and p[2]:
                add(p[0].lower(), p[2].lower())
    path = os.path.join(SOURCES, "nama_familysearch", "givenname_nicknames.csv")
    with open(path, encoding="utf-8") as f:
        for line in f:
            p = [x.strip().lower() for x in line.strip().split(",") if x.strip()]
            for n in p[1:]:
                add(p[0], n)
    return {k: frozenset(v) for k, v in groups.items()}


NICK = _load_nicknames()
_EMPTY = frozenset()


def normalise(s):
    s = unicodedata.normalize("NFKC", s).casefold()
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = s.replace("'", "").replace("\u2019", "")
    s = _PUNCT.sub(" ", s)
    s = s.replace(",", " , ").replace("_", " ")
    s = re.sub(r"\s*-\s*", "-", s).strip("- ")
    return _SPACES.sub(" ", s).strip()


class Token:
    __slots__ = ("text", "code", "groups", "initial")

    def __init__(self, text):
        self.text = text
        self.code = jellyfish.nysiis(text)
        self.groups = NICK.get(text, _EMPTY)
        self.initial = len(text) == 1


class Name:
    __slots__ = ("given", "middle", "surname", "suffix", "title", "empty")

    def __init__(self, given, middle, surname, suffix, title):
        self.given, self.middle, self.surname = given, middle, surname
        self.suffix, self.title = suffix, title
        self.empty = given is None and not surname


def parse(norm):
    words = norm.split(" ") if norm else []
    comma = "," in words
    if comma:
        i = words.index(",")
        before = [w for w in words[:i] if w != ","]
        after = [w for w in words[i + 1:] if w != ","]
    else:
        before, after = [], words
    title, suffix = None, None

    def strip(ws):
        nonlocal title, suffix
        out = []
        for w in ws:
            if w in TITLES and not out and title is None:
                title = w
            elif w in SUFFIXES:
                suffix = SUFFIXES[w]
            elif w in DEGREES:
                pass
            else:
                out.append(w)
        return out

    before, after = strip(before), strip(after)
    if comma and before:
        # SURNAME, GIVEN MIDDLE
        surname = before
        given = after[0] if after else None
        middle = after[1:]
    else:
        ws = after
        if not ws:
            return Name(None, [], [], suffix, title)
        if len(ws) == 1:
            # one word: treat as a surname (caller-ID "SMITH", FEBRL blanks)
            return Name(None, [], [Token(x) for x in ws[0].split("-") if x], suffix, title)
        # surname = last word plus any particles just before it
        j = len(ws) - 1
        while j > 1 and ws[j - 1] in PARTICLES:
            j -= 1
        given, middle, surname = ws[0], ws[1:j], ws[j:]
    # a hyphenated surname is several surname tokens; elsewhere a hyphen joins
    parts = [x for w in surname if w not in PARTICLES for x in w.split("-") if x]
    surname = [Token(x) for x in parts] or [Token(w.replace("-", "")) for w in surname]
    given = given.replace("-", "") if given else None
    return Name(Token(given) if given else None, [Token(w.replace("-", "")) for w in middle if w.strip("-")],
                surname, suffix, title)


def prepare(raw):
    return parse(normalise(raw))


def token_sim(a, b):
    """Best evidence that tokens a and b name the same thing, 0..1."""
    if a.text == b.text:
        return 1.0
    if a.initial or b.initial:
        return 0.8 if a.text[0] == b.text[0] else 0.0
    best = 0.0
    if a.groups and b.groups and not a.groups.isdisjoint(b.groups):
        best = 0.95
    if a.code == b.code:
        best = max(best, 0.9)
    jw = jellyfish.jaro_winkler_similarity(a.text, b.text)
    dl = 1.0 - jellyfish.damerau_levenshtein_distance(a.text, b.text) / max(len(a.text), len(b.text))
    return max(best, jw if jw >= 0.85 else jw * 0.6, dl)


def _surname_sim(sa, sb):
    best = 0.0
    for x in sa:
        for y in sb:
            s = token_sim(x, y)
            if s > best:
                best = s
    return best


def _orientation(p, q):
    """Score with p's and q's parts aligned as parsed."""
    if p.given is None or q.given is None:
        # only a surname on one side: cannot confirm the person
        return 45.0 * _surname_sim(p.surname, q.surname)
    g = token_sim(p.given, q.given)
    s = _surname_sim(p.surname, q.surname)
    m = 0.5
    if p.middle and q.middle:
        m = 1.0 if p.middle[0].text[0] == q.middle[0].text[0] else 0.0
    score = 100.0 * (0.46 * g + 0.46 * s + 0.08 * m)
    if g < 0.7 or s < 0.7:
        score = min(score, 60.0)
    return score


def compare(p, q):
    """Score 0-100 and class for two prepared names."""
    if p.empty or q.empty:
        return 0.0, "NO_DATA"
    best = _orientation(p, q)
    # swapped order: given <-> surname (a record stored "SMITH JOHN" without a comma)
    if best < 85.0 and p.given is not None and q.given is not None and len(q.surname) == 1:
        swapped = Name(q.surname[0], q.middle, [q.given], q.suffix, q.title)
        best = max(best, _orientation(p, swapped) - 2.0)
    if p.suffix is not None and q.suffix is not None and p.suffix != q.suffix:
        best -= 40.0
    best = max(0.0, min(100.0, best))
    cls = "RPC" if best >= 85.0 else "REVIEW" if best >= 70.0 else "WPC"
    return best, cls


def score(a, b):
    return compare(prepare(a), prepare(b))
