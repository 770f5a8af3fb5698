#!/usr/bin/python3
"""The enrichment job from the Python side (issue 5): seed a list, dispatch
enrich_list with Celery's send_task, show its progress, print the summary and a
few scored rows.

    DATABASE_URL=postgresql://... CELERY_BROKER_URL=redis://... CELERY_RESULT_BACKEND=redis://... \\
        examples/python/enrich_producer.py [--entries 10000] [--list-id N] [--job-id N]

The list is built from bench/data/pairs.tsv (labelled name pairs): each entry's
full_name is a pair's record side and contact_name its contact side, drawn from
true variants (the same person written differently), nicknames, relatives
(spouses, household members, father/son) and strangers, plus a few entries with
no usable contact name. Deterministic (fixed seed). `seed_list` is also what
bench/enrich uses.
"""

import argparse
import io
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAIRS = REPO / "bench" / "data" / "pairs.tsv"

# (share, label shown, set/kind pairs from pairs.tsv)
MIX = [
    (0.35, "true variant", lambda s, k, l: l == "1" and k.startswith(("variant_", "true"))
     and k not in ("true_replaced", "true_partial")),
    (0.15, "nickname", lambda s, k, l: k == "nickname"),
    (0.20, "relative", lambda s, k, l: k in ("spouse", "household", "suffix_conflict",
                                            "hard_same_surname")),
    (0.27, "stranger", lambda s, k, l: k == "random"),
]
NO_DATA_CONTACTS = ["", "UNKNOWN CALLER", "WIRELESS CALLER", "N/A", "12125550100", None]


def load_pools(path=PAIRS):
    pools = [[] for _ in MIX]
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            s, _entity, _split, a, b, label, kind = line.rstrip("\n").split("\t")
            for i, (_, _, want) in enumerate(MIX):
                if want(s, kind, label):
                    pools[i].append((a, b))
                    break
    return pools


def phone_for(rng):
    r = rng.random()
    if r < 0.70:
        return "(%d%02d) %d%02d-%04d" % (rng.randint(2, 9), rng.randint(0, 99), rng.randint(2, 9),
                                         rng.randint(0, 99), rng.randint(0, 9999))
    if r < 0.85:
        return "+1 %d%02d %d%02d %04d" % (rng.randint(2, 9), rng.randint(0, 99),
                                          rng.randint(2, 9), rng.randint(0, 99),
                                          rng.randint(0, 9999))
    if r < 0.92:
        return "555-%04d" % rng.randint(0, 9999)   # no area code: invalid
    if r < 0.96:
        return ""
    return None


def build_rows(n, seed="celeriac-enrich-demo", pools=None):
    """n entries: (full_name, contact_name, phone, kind)."""
    rng = random.Random(seed)
    pools = pools or load_pools()
    weights = [m[0] for m in MIX] + [1.0 - sum(m[0] for m in MIX)]
    for _ in range(n):
        i = rng.choices(range(len(weights)), weights)[0]
        if i == len(MIX):
            a = rng.choice(pools[0])[0]
            yield (a, rng.choice(NO_DATA_CONTACTS), phone_for(rng), "no contact name")
        else:
            a, b = rng.choice(pools[i])
            yield (a, b, phone_for(rng), MIX[i][1])


def _copy_text(v):
    if v is None:
        return "\\N"
    return v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def seed_list(conn, list_id, n, name="demo list", first_entry_id=None, chunk=100_000):
    """Insert lists(list_id) and n list_entries with COPY; returns the kinds by entry id
    for the first 1,000 entries (for display)."""
    first = first_entry_id if first_entry_id is not None else list_id * 10_000_000 + 1
    kinds = {}
    with conn.cursor() as cur:
        cur.execute("INSERT INTO lists (id, name) VALUES (%s, %s)", (list_id, name))
        buf = io.StringIO()
        count = 0
        for i, (a, b, phone, kind) in enumerate(build_rows(n)):
            eid = first + i
            if i < 1000:
                kinds[eid] = kind
            buf.write("%d\t%d\t%s\t%s\t%s\n" % (eid, list_id, _copy_text(a), _copy_text(b),
                                                _copy_text(phone)))
            count += 1
            if count == chunk:
                buf.seek(0)
                cur.copy_expert("COPY list_entries (id, list_id, full_name, contact_name, phone)"
                                " FROM STDIN", buf)
                buf = io.StringIO()
                count = 0
        if count:
            buf.seek(0)
            cur.copy_expert("COPY list_entries (id, list_id, full_name, contact_name, phone)"
                            " FROM STDIN", buf)
    conn.commit()
    return kinds


def celery_app():
    from celery import Celery
    return Celery("enrich-demo", broker=os.environ.get("CELERY_BROKER_URL"),
                  backend=os.environ.get("CELERY_RESULT_BACKEND"))


def main():
    ap = argparse.ArgumentParser(description="seed a list and run enrich_list on it")
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--list-id", type=int, default=None)
    ap.add_argument("--job-id", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    if not a.database_url:
        sys.exit("enrich_producer.py: set DATABASE_URL or --database-url")
    import psycopg2
    conn = psycopg2.connect(a.database_url)
    with conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) + 1 FROM lists")
        list_id = a.list_id or cur.fetchone()[0]
        cur.execute("SELECT coalesce(max(id), 0) + 1 FROM enrichment_queue_jobs")
        job_id = a.job_id or cur.fetchone()[0]
    conn.commit()
    t0 = time.monotonic()
    kinds = seed_list(conn, list_id, a.entries, name="demo list (%d entries)" % a.entries)
    print("enrich: seeded list %d with %d entries in %.1fs (true variants, nicknames, relatives,"
          " strangers, no contact name)" % (list_id, a.entries, time.monotonic() - t0))
    # The dispatcher records the job as queued, then sends the task.
    with conn.cursor() as cur:
        cur.execute("INSERT INTO enrichment_queue_jobs (id, list_id) VALUES (%s, %s)",
                    (job_id, list_id))
    conn.commit()

    app = celery_app()
    res = app.send_task("enrich_list", args=[job_id, list_id])
    print("enrich: send_task('enrich_list', args=[%d, %d]) -> %s" % (job_id, list_id, res.id))
    last = None
    deadline = time.monotonic() + a.timeout
    while not res.ready():
        if time.monotonic() > deadline:
            sys.exit("enrich: no result within %.0fs (state %s)" % (a.timeout, res.state))
        if res.state == "PROGRESS" and res.info != last:
            last = res.info
            print("enrich: PROGRESS %(current)d/%(total)d" % last)
        time.sleep(0.05)
    summary = res.get(timeout=10)
    print("enrich: SUCCESS %s" % summary)

    with conn.cursor() as cur:
        cur.execute("SELECT status, attempts, total, processed, duration_ms, worker"
                    " FROM enrichment_queue_jobs WHERE id = %s", (job_id,))
        print("enrich: job row: status=%s attempts=%s total=%s processed=%s duration_ms=%s"
              " worker=%s" % cur.fetchone())
        cur.execute("SELECT id, row_count, rpc_count, wpc_count, review_count, no_data_count"
                    " FROM export_jobs WHERE enrichment_job_id = %s", (job_id,))
        print("enrich: export_jobs row: id=%s rows=%s rpc=%s wpc=%s review=%s no_data=%s"
              % cur.fetchone())
        cur.execute("SELECT id, full_name, contact_name, rpc_score, rpc_class, rpc_reasons,"
                    " name_given, name_surname, phone, phone_digits, phone_valid"
                    " FROM list_entries WHERE list_id = %s ORDER BY id LIMIT 1000", (list_id,))
        shown = {}
        for r in cur.fetchall():
            key = (kinds.get(r[0]), r[4])
            if key not in shown and len(shown) < 10:
                shown[key] = r
        print("enrich: a few scored rows (entry kind | full_name | contact_name -> score class"
              " reasons | given/surname | phone -> digits valid):")
        for (kind, _), r in sorted(shown.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            print("  %-15s | %-28s | %-24s -> %4s %-7s %-30s | %s/%s | %s -> %s %s" % (
                kind, (r[1] or "")[:28], repr(r[2])[:24] if r[2] is not None else "NULL",
                "-" if r[3] is None else r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10]))
    conn.close()


if __name__ == "__main__":
    main()
