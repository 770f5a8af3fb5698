#!/usr/bin/env python3
"""The configuration reference is complete: every option and variable the code
reads is in docs/configuration.md, .env.example and the man page, and those
name nothing the code does not read.

Usage: config_docs.py CELERIAC_BINARY SOURCE_ROOT

What the code reads is taken from the code, not from a list kept here, so a
new option or variable fails this test until it is documented:
  - options: `celeriac worker --help` (printed from config.c's option table),
    `celeriac call --help` and `celeriac db --help`;
  - variables: config.c's two settings tables (Celery names, as
    CELERY_<NAME>, and CELERIAC_* names), and every upper-case literal passed
    to a function with "env" in its name anywhere in src/ (getenv, and
    wrappers such as enrich's env_long), which catches the variables read
    outside config.c.
"""
import os
import re
import subprocess
import sys


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def help_text(binary, *args):
    p = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL, env={"PATH": os.environ.get("PATH", "")})
    if p.returncode != 0:
        sys.exit("%s %s --help exited %d: %s" % (binary, " ".join(args), p.returncode, p.stderr))
    return p.stdout


def worker_options(text):
    """Long and short options from the option lines of `celeriac worker --help`."""
    longs, shorts = set(), set()
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-(\w), )?--([a-z][a-z-]*)", line)
        if m:
            longs.add("--" + m.group(2))
            if m.group(1):
                shorts.add("-" + m.group(1))
    return longs, shorts


def other_options(text):
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", text)) - {"--help"}


def code_variables(root):
    config = read(os.path.join(root, "src", "core", "config.c"))

    def table(name):
        m = re.search(r"\b%s\[\]\s*=\s*\{(.*?)\n\};" % name, config, re.S)
        if not m:
            sys.exit("config.c: table %s not found (renamed? update tests/config_docs.py)" % name)
        return re.findall(r'\{\s*"([A-Za-z_]+)"\s*,', m.group(1))

    celery = ["CELERY_" + n.upper() for n in table("celery_settings")]
    celeriac = table("celeriac_settings")
    read_elsewhere = set()
    for d, _, files in os.walk(os.path.join(root, "src")):
        for f in files:
            if f.endswith((".c", ".h")):
                read_elsewhere.update(re.findall(r'\b\w*env\w*\(\s*"([A-Z][A-Z0-9_]{2,})"',
                                                 read(os.path.join(d, f))))
    if len(celery) < 10 or len(celeriac) < 5 or "CELERIAC_ENV" not in read_elsewhere:
        sys.exit("config.c tables or getenv calls not recognised: %r %r %r"
                 % (celery, celeriac, sorted(read_elsewhere)))
    return set(celery) | set(celeriac) | read_elsewhere


def mentioned_variables(text):
    return set(re.findall(r"\b((?:CELERY|CELERIAC|ENRICH)_[A-Z0-9_]*[A-Z0-9])\b", text))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    binary, root = sys.argv[1], sys.argv[2]
    longs, shorts = worker_options(help_text(binary, "worker"))
    if "--broker" not in longs or "-b" not in shorts:
        sys.exit("could not parse `celeriac worker --help`")
    extra = other_options(help_text(binary, "call")) | other_options(help_text(binary, "db"))
    variables = code_variables(root)

    docs = read(os.path.join(root, "docs", "configuration.md"))
    example = read(os.path.join(root, ".env.example"))
    man = read(os.path.join(root, "docs", "man", "celeriac.1")).replace("\\-", "-")
    man = re.sub(r"\\f[BIRP]", "", man)

    problems = []

    def need(where, text, names, quoted):
        for n in sorted(names):
            pattern = ("`" if quoted else "") + re.escape(n) + r"(?![\w-])"
            if not re.search(pattern, text):
                problems.append("%s does not mention %s" % (where, n))

    # In the reference an option must appear as code (`-b`, `--broker URL`).
    need("docs/configuration.md", docs, longs | shorts | extra, quoted=True)
    need("docs/configuration.md", docs, variables, quoted=False)
    need("docs/man/celeriac.1", man, longs | shorts | variables, quoted=False)
    # .env.example: every variable as a KEY= line (commented out or not).
    for n in sorted(variables):
        if not re.search(r"^#?\s*%s=" % re.escape(n), example, re.M):
            problems.append(".env.example has no %s= line" % n)

    # And the other way: a name the code does not read is a stale or mistyped entry.
    for where, text in (("docs/configuration.md", docs), (".env.example", example),
                        ("docs/man/celeriac.1", man)):
        for n in sorted(mentioned_variables(text) - variables):
            problems.append("%s names %s, which the code does not read" % (where, n))

    if problems:
        print("configuration reference is out of step with the code:")
        print("\n".join("  " + p for p in problems))
        return 1
    print("ok: %d worker options, %d other options, %d variables documented"
          % (len(longs) + len(shorts), len(extra), len(variables)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
