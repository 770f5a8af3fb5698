"""enrich_list(job_id, list_id) end to end (issue 5): a real PostgreSQL, the real
celeriac worker with the enrich task module, a real Python Celery producer.

The cluster is a throwaway one (tests/interop/postgres.py), migrated with
`celeriac db migrate`. Each test uses its own list and job ids. The module is
found next to the worker binary (<build>/src/enrich/libceleriac-enrich.so)
unless CELERIAC_ENRICH_SO says otherwise.

Only the Redis broker setting runs these (the kill -9 case relies on kombu's
Redis visibility timeout, and progress is read from the Redis result backend).
"""

import itertools
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CELERIAC_BIN, GET_TIMEOUT, REPO, REQUIRE_CELERIAC, scaled, wait_until
from postgres import PostgresServer, postgres_missing

pytestmark = [pytest.mark.redis_broker, pytest.mark.redis_backend]

ENRICH_SO = Path(os.environ.get("CELERIAC_ENRICH_SO") or
                 CELERIAC_BIN.parent / "enrich" / "libceleriac-enrich.so")
if not ENRICH_SO.is_absolute():
    ENRICH_SO = REPO / ENRICH_SO

_ids = itertools.count(1)


def next_id():
    return next(_ids)


# --------------------------------------------------------------------------- fixtures

def _require():
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    if not ENRICH_SO.exists():
        msg = "enrich task module not built: %s" % ENRICH_SO
        if REQUIRE_CELERIAC:
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


def migrate(url):
    proc = subprocess.run([str(CELERIAC_BIN), "db", "migrate", "--database-url", url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="session")
def pg():
    """A throwaway cluster for the session, migrated."""
    _require()
    server = PostgresServer()
    server.start()
    try:
        migrate(server.url)
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def db(pg):
    conn = pg.connect()
    yield conn
    conn.close()


def seed(conn, rows, list_id=None, name="test list"):
    """A list with rows [(full_name, contact_name, phone)]; returns (list_id, entry ids)."""
    list_id = list_id or next_id()
    base = list_id * 10_000_000
    with conn.cursor() as cur:
        cur.execute("INSERT INTO lists (id, name) VALUES (%s, %s)", (list_id, name))
        ids = [base + i + 1 for i in range(len(rows))]
        cur.executemany(
            "INSERT INTO list_entries (id, list_id, full_name, contact_name, phone)"
            " VALUES (%s, %s, %s, %s, %s)",
            [(i, list_id) + tuple(r) for i, r in zip(ids, rows)])
    return list_id, ids


NAMES = ["John Smith", "Mary Jones", "Robert Brown", "Patricia Garcia", "Michael Miller"]
CONTACTS = ["SMITH, JOHN", "Bob Brown", "Mary Smith", "", "Pat Garcia", "UNKNOWN CALLER"]


def seed_big(conn, n):
    """A list of n generated entries (server side, fast)."""
    list_id = next_id()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO lists (id, name) VALUES (%s, 'big')", (list_id,))
        cur.execute(
            "INSERT INTO list_entries (id, list_id, full_name, contact_name, phone)"
            " SELECT %s + g, %s, (%s::text[])[1 + g %% 5], (%s::text[])[1 + g %% 6],"
            " '(212) 555-' || lpad((g %% 10000)::text, 4, '0')"
            " FROM generate_series(1, %s) g",
            (list_id * 10_000_000, list_id, NAMES, CONTACTS, n))
    return list_id


def one(conn, sql, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def rows(conn, sql, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def job_row(conn, job_id):
    with conn.cursor() as cur:
        cur.execute("SELECT status, attempts, total, processed, error, worker, task_id,"
                    " duration_ms FROM enrichment_queue_jobs WHERE id = %s", (job_id,))
        r = cur.fetchone()
    if r is None:
        return None
    return dict(zip(["status", "attempts", "total", "processed", "error", "worker", "task_id",
                     "duration_ms"], r))


def check_effects(conn, job_id, list_id, n):
    """Exactly one rpc_scores row per entry, one export_jobs row, list_entries consistent."""
    count, distinct = one(conn, "SELECT count(*), count(DISTINCT list_entry_id) FROM rpc_scores"
                                " WHERE job_id = %s", job_id)
    assert count == n and distinct == n
    assert one(conn, "SELECT count(*) FROM export_jobs WHERE enrichment_job_id = %s",
               job_id)[0] == 1
    bad = one(conn, "SELECT count(*) FROM list_entries e LEFT JOIN rpc_scores s"
                    " ON s.job_id = %s AND s.list_entry_id = e.id"
                    " WHERE e.list_id = %s AND (s.list_entry_id IS NULL"
                    " OR e.last_job_id IS DISTINCT FROM %s OR e.rpc_class IS DISTINCT FROM s.class"
                    " OR e.rpc_score IS DISTINCT FROM s.score)", job_id, list_id, job_id)[0]
    assert bad == 0, "%d list_entries disagree with rpc_scores" % bad


@pytest.fixture
def enrich_worker(pg, start_worker):
    """start(env={...}) -> a celeriac worker with the examples and enrich modules."""
    def start(env=None, concurrency=2):
        e = {"DATABASE_URL": pg.url}
        e.update(env or {})
        return start_worker("celeriac", env=e, args=["-A", str(ENRICH_SO)],
                            concurrency=concurrency)
    return start


def send_enrich(celery_app, job_id, list_id, **options):
    return celery_app.app.send_task("enrich_list", args=[job_id, list_id], **options)


# --------------------------------------------------------------------------- tests

def test_db_migrate_idempotent_and_concurrent(pg, db):
    """Four `celeriac db migrate` at once on an empty database, then once more: one
    schema, each migration recorded once."""
    name = "migrate_%d" % next_id()
    with db.cursor() as cur:
        cur.execute("CREATE DATABASE %s" % name)
    url = pg.url.rsplit("/", 1)[0] + "/" + name
    procs = [subprocess.Popen([str(CELERIAC_BIN), "db", "migrate"],
                              env=dict(os.environ, DATABASE_URL=url),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    applied = sum(o.count("applied 0001_init") for o, _ in outs)
    assert applied == 1, outs
    again = migrate(url)
    assert "0 applied now" in again.stdout
    import psycopg2
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
            assert cur.fetchall()[0] == (1, "0001_init")
    finally:
        conn.close()
    proc = subprocess.run([str(CELERIAC_BIN), "db", "migrate"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"})
    assert proc.returncode == 64 and "DATABASE_URL" in proc.stderr


# Expected classes written from docs/scoring.md's rules, not from the scorer's output.
SMALL = [
    # (full_name, contact_name, phone, expected class, reason that must be present)
    ("Robert J. Smith Jr", "SMITH, BOB", "(212) 555-0100", "RPC", "NICKNAME"),  # issue 4
    ("John Smith", "Mary Smith", "+1 212 555 0101", "WPC", "GIVEN_CONFLICT"),    # issue 4
    ("Ann Lee", "Ann Lee", "2125550102", "RPC", "EXACT"),
    ("Margaret Jones", "Peggy Jones", None, "RPC", "NICKNAME"),                  # Peggy/Margaret
    ("SMITH JOHN", "John Smith", "555-0100", "RPC", "SWAPPED"),                  # read surname-first
    ("José Müller", "JOSE MULLER", "", "RPC", None),                             # accents stripped
    ("Mary Johnson", "Robert Garcia", "+44 20 7946 0958", "WPC", "GIVEN_CONFLICT"),
    (None, "John Smith", "12", "NO_DATA", "NO_DATA"),                            # missing name
    ("", "", None, "NO_DATA", "NO_DATA"),
    ("Mr.", "John Smith", None, "NO_DATA", "NO_DATA"),                           # titles only
    ("12345", "John Smith", None, "NO_DATA", "NO_DATA"),                         # digits only
    ("John Smith", "UNKNOWN", None, "NO_DATA", "NO_DATA"),                       # caller-ID junk
    ("!!!\t@@\\", "\x01\x02", None, "NO_DATA", "NO_DATA"),                       # garbage
    ("Smith", "John Smith", None, "REVIEW", "SURNAME_ONLY"),                     # capped below RPC
]
# (digits, valid) by the phone rule in docs/enrich.md
PHONES = {
    "(212) 555-0100": ("2125550100", True),
    "+1 212 555 0101": ("2125550101", True),
    "2125550102": ("2125550102", True),
    "555-0100": ("5550100", False),
    "": (None, False),
    "+44 20 7946 0958": ("442079460958", True),
    "12": ("12", False),
    None: (None, None),
}


def test_small_list_expected_classes(enrich_worker, celery_app, db):
    enrich_worker()
    list_id, ids = seed(db, [r[:3] for r in SMALL])
    job_id = next_id()
    res = send_enrich(celery_app, job_id, list_id)
    summary = res.get(timeout=GET_TIMEOUT)
    want = {c: sum(1 for r in SMALL if r[3] == c) for c in ("RPC", "WPC", "REVIEW", "NO_DATA")}
    export_id = one(db, "SELECT id FROM export_jobs WHERE enrichment_job_id = %s", job_id)[0]
    assert summary["duration_ms"] >= 0
    assert summary == {"job_id": job_id, "list_id": list_id, "total": len(SMALL),
                       "rpc": want["RPC"], "wpc": want["WPC"], "review": want["REVIEW"],
                       "no_data": want["NO_DATA"], "duration_ms": summary["duration_ms"],
                       "export_job_id": export_id}
    got = rows(db, "SELECT e.id, e.rpc_class, e.rpc_reasons, e.rpc_score, e.phone_digits,"
                   " e.phone_valid, e.name_given, e.name_surname, e.name_suffix, s.class,"
                   " s.model_version FROM list_entries e JOIN rpc_scores s"
                   " ON s.list_entry_id = e.id AND s.job_id = %s WHERE e.list_id = %s"
                   " ORDER BY e.id", job_id, list_id)
    assert len(got) == len(SMALL)
    for (full, contact, phone, cls, reason), g in zip(SMALL, got):
        eid, rclass, reasons, score, digits, valid, given, surname, suffix, sclass, mv = g
        assert (rclass, sclass) == (cls, cls), (full, contact, g)
        if reason:
            assert reason in reasons.split(","), (full, contact, reasons)
        assert (score is None) == (cls == "NO_DATA")
        if cls == "RPC":
            assert score >= 50
        if cls == "WPC":
            assert score < 50
        assert (digits, valid) == PHONES[phone], (phone, digits, valid)
        assert mv
    first = got[0]
    assert (first[6], first[7], first[8]) == ("robert", "smith", "jr")
    exp = one(db, "SELECT row_count, rpc_count, wpc_count, review_count, no_data_count, list_id"
                  " FROM export_jobs WHERE enrichment_job_id = %s", job_id)
    assert exp == (len(SMALL), want["RPC"], want["WPC"], want["REVIEW"], want["NO_DATA"], list_id)
    jr = job_row(db, job_id)
    assert jr["status"] == "succeeded" and jr["attempts"] == 1
    assert jr["total"] == jr["processed"] == len(SMALL)
    assert jr["task_id"] == res.id and jr["worker"]
    check_effects(db, job_id, list_id, len(SMALL))


def test_progress_visible_through_asyncresult(enrich_worker, celery_app, db):
    n = 20_000
    enrich_worker(env={"ENRICH_BATCH_SIZE": 1000, "ENRICH_TEST_BATCH_SLEEP_MS": 60})
    list_id = seed_big(db, n)
    job_id = next_id()
    # The dispatcher may insert the job row itself, as queued.
    with db.cursor() as cur:
        cur.execute("INSERT INTO enrichment_queue_jobs (id, list_id) VALUES (%s, %s)",
                    (job_id, list_id))
    assert job_row(db, job_id)["status"] == "queued"
    res = send_enrich(celery_app, job_id, list_id)
    seen = []
    processed_seen = []
    deadline = time.monotonic() + scaled(60)
    while time.monotonic() < deadline:
        state = res.state
        if state == "PROGRESS":
            seen.append(dict(res.info))
            jr = job_row(db, job_id)
            if jr["status"] == "running":
                processed_seen.append(jr["processed"])
        if state in ("SUCCESS", "FAILURE"):
            break
        time.sleep(0.05)
    summary = res.get(timeout=GET_TIMEOUT)
    assert summary["total"] == n
    mid = [s for s in seen if 0 < s["current"] < n]
    assert mid, "no PROGRESS state seen mid-job: %r" % seen[:5]
    assert all(s["total"] == n for s in seen)
    currents = [s["current"] for s in seen]
    assert currents == sorted(currents)
    assert any(0 < p < n for p in processed_seen), processed_seen[:10]
    check_effects(db, job_id, list_id, n)


def test_kill9_mid_job_completes_after_redelivery(enrich_worker, celery_app, db, redis_server):
    """kill -9 of the whole worker mid-job: nothing committed; the restarted worker
    restores the unacked message (acks_late), runs the job again, once."""
    n = 20_000
    env = {"ENRICH_BATCH_SIZE": 1000, "ENRICH_TEST_BATCH_SLEEP_MS": 100,
           "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": 3})}
    victim = enrich_worker(env=env)
    list_id = seed_big(db, n)
    job_id = next_id()
    res = send_enrich(celery_app, job_id, list_id)
    wait_until(lambda: (job_row(db, job_id) or {}).get("processed", 0) >= 3000, scaled(30),
               what="the job to be well under way")
    victim.kill()
    killed_at = time.time()
    jr = job_row(db, job_id)
    assert jr["status"] == "running" and jr["attempts"] == 1 and jr["processed"] < n
    # Nothing of the interrupted attempt is visible.
    assert one(db, "SELECT count(*) FROM rpc_scores WHERE job_id = %s", job_id)[0] == 0
    assert one(db, "SELECT count(*) FROM export_jobs WHERE enrichment_job_id = %s", job_id)[0] == 0
    assert redis_server.client(0).hlen("unacked") >= 1
    wait_until(lambda: time.time() > killed_at + 3.5, 10, what="visibility timeout to pass")
    enrich_worker(env=dict(env, ENRICH_TEST_BATCH_SLEEP_MS=0))
    summary = res.get(timeout=scaled(60))
    assert summary["total"] == n and summary["job_id"] == job_id
    jr = job_row(db, job_id)
    assert jr["status"] == "succeeded" and jr["attempts"] == 2
    check_effects(db, job_id, list_id, n)


def test_postgres_restart_mid_job_retries(start_worker, celery_app, tmp_path):
    """PostgreSQL stopped mid-job, restarted: the task retries (RETRY, job row retrying)
    and succeeds; attempts > 1; exactly one set of effects."""
    _require()
    own = PostgresServer(Path(__import__("tempfile").mkdtemp(prefix="celeriac-pg-restart-")))
    own.start()
    try:
        migrate(own.url)
        conn = own.connect()
        list_id = seed_big(conn, 10_000)
        conn.close()
        start_worker("celeriac", args=["-A", str(ENRICH_SO)], env={
            "DATABASE_URL": own.url, "ENRICH_BATCH_SIZE": 500, "ENRICH_TEST_BATCH_SLEEP_MS": 100,
            "ENRICH_RETRY_BASE": 1})
        job_id = next_id()
        res = send_enrich(celery_app, job_id, list_id)

        def processed():
            try:
                c = own.connect()
                try:
                    return (job_row(c, job_id) or {}).get("processed", 0) >= 1500
                finally:
                    c.close()
            except Exception:
                return False

        wait_until(processed, scaled(30), what="the job to be under way")
        own.stop("fast")
        states = set()
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            states.add(res.state)
            time.sleep(0.05)
        own.start()
        summary = res.get(timeout=scaled(90))
        assert summary["total"] == 10_000
        assert "RETRY" in states, states
        conn = own.connect()
        try:
            jr = job_row(conn, job_id)
            assert jr["status"] == "succeeded" and jr["attempts"] >= 2, jr
            check_effects(conn, job_id, list_id, 10_000)
        finally:
            conn.close()
    finally:
        own.cleanup()


def test_unknown_list_fails_without_retry(enrich_worker, celery_app, db):
    w = enrich_worker()
    job_id = next_id()
    offset = w.log_size()
    res = send_enrich(celery_app, job_id, 987654321)
    with pytest.raises(ValueError, match="unknown list 987654321"):
        res.get(timeout=GET_TIMEOUT)
    assert res.state == "FAILURE"
    time.sleep(0.5)
    assert res.state == "FAILURE"
    assert "retry" not in w.log_text(offset).lower()
    jr = job_row(db, job_id)
    assert jr["status"] == "failed" and "unknown list" in jr["error"] and jr["attempts"] == 0


def test_bad_arguments_fail_at_once(enrich_worker, celery_app, db):
    enrich_worker()
    list_id, _ = seed(db, [("Ann Lee", "Ann Lee", None)])
    res = celery_app.app.send_task("enrich_list", args=["1", list_id])
    with pytest.raises(TypeError, match="job_id must be an int"):
        res.get(timeout=GET_TIMEOUT)
    res = celery_app.app.send_task("enrich_list", args=[next_id()])
    with pytest.raises(TypeError, match="list_id"):
        res.get(timeout=GET_TIMEOUT)
    # job_id of another list: a mismatch, no retry, the existing job untouched.
    job_id = next_id()
    assert send_enrich(celery_app, job_id, list_id).get(timeout=GET_TIMEOUT)["total"] == 1
    other, _ = seed(db, [("Bob Lee", "Bob Lee", None)])
    res = send_enrich(celery_app, job_id, other)
    with pytest.raises(ValueError, match="belongs to list"):
        res.get(timeout=GET_TIMEOUT)
    assert job_row(db, job_id)["status"] == "succeeded"
    # A queued job row of list A dispatched for list B is marked failed.
    job2 = next_id()
    with db.cursor() as cur:
        cur.execute("INSERT INTO enrichment_queue_jobs (id, list_id) VALUES (%s, %s)",
                    (job2, list_id))
    with pytest.raises(ValueError, match="belongs to list"):
        send_enrich(celery_app, job2, other).get(timeout=GET_TIMEOUT)
    assert job_row(db, job2)["status"] == "failed"


def snapshot(conn, job_id, list_id):
    return (rows(conn, "SELECT * FROM rpc_scores WHERE job_id = %s ORDER BY list_entry_id", job_id),
            rows(conn, "SELECT * FROM list_entries WHERE list_id = %s ORDER BY id", list_id),
            rows(conn, "SELECT * FROM export_jobs WHERE enrichment_job_id = %s", job_id),
            rows(conn, "SELECT * FROM enrichment_queue_jobs WHERE id = %s", job_id))


def test_duplicate_dispatch_of_finished_job_changes_nothing(enrich_worker, celery_app, db):
    w = enrich_worker()
    list_id, _ = seed(db, [r[:3] for r in SMALL])
    job_id = next_id()
    first = send_enrich(celery_app, job_id, list_id).get(timeout=GET_TIMEOUT)
    before = snapshot(db, job_id, list_id)
    offset = w.log_size()
    res = send_enrich(celery_app, job_id, list_id)
    again = res.get(timeout=GET_TIMEOUT)
    assert again == first
    assert list(again) == list(first), "the stored summary keeps its key order"
    assert snapshot(db, job_id, list_id) == before
    # The module logs through cel_task_log: Celery's task-log shape, in the worker's log.
    pattern = (r"\[[0-9-]+ [0-9:,]+: INFO/ForkPoolWorker-\d+\] enrich_list\[%s\]: "
               r"enrich_list\(%d, %d\): already succeeded" % (res.id, job_id, list_id))
    wait_until(lambda: re.search(pattern, w.log_text(offset)), timeout=5,
               what="%r in the worker log" % pattern)


def test_concurrent_duplicates_run_once(enrich_worker, celery_app, db):
    """Two deliveries of the same job at the same time (-c 2): the advisory lock makes
    the second wait, then return the first's summary."""
    enrich_worker(env={"ENRICH_BATCH_SIZE": 1000, "ENRICH_TEST_BATCH_SLEEP_MS": 30})
    list_id = seed_big(db, 10_000)
    job_id = next_id()
    a = send_enrich(celery_app, job_id, list_id)
    b = send_enrich(celery_app, job_id, list_id)
    ra, rb = a.get(timeout=scaled(60)), b.get(timeout=scaled(60))
    assert ra == rb
    jr = job_row(db, job_id)
    assert jr["status"] == "succeeded" and jr["attempts"] == 1
    check_effects(db, job_id, list_id, 10_000)


def test_soft_time_limit_fails_cleanly(enrich_worker, celery_app, db):
    enrich_worker(env={"ENRICH_BATCH_SIZE": 500, "ENRICH_TEST_BATCH_SLEEP_MS": 200})
    list_id = seed_big(db, 10_000)
    job_id = next_id()
    res = send_enrich(celery_app, job_id, list_id, soft_time_limit=1)
    with pytest.raises(Exception) as info:
        res.get(timeout=scaled(60))
    assert type(info.value).__name__ == "SoftTimeLimitExceeded"
    jr = job_row(db, job_id)
    assert jr["status"] == "failed"
    assert one(db, "SELECT count(*) FROM rpc_scores WHERE job_id = %s", job_id)[0] == 0
    assert one(db, "SELECT count(*) FROM export_jobs WHERE enrichment_job_id = %s", job_id)[0] == 0


def test_rows_of_an_unfinished_attempt_are_replaced(enrich_worker, celery_app, db, pg):
    """What a crash between the two commits leaves (docs/enrich.md, "Exactly-once effects"):
    rpc_scores rows committed for a job that is not succeeded, here written by a session that
    still holds the job's rpc lock and commits only after the new attempt has started. The
    new attempt waits for that session, replaces its rows, and ends with exactly one row per
    entry (none for ids outside the list)."""
    enrich_worker()
    n = 2_000
    list_id = seed_big(db, n)
    job_id = next_id()
    first = list_id * 10_000_000 + 1
    with db.cursor() as cur:
        cur.execute("INSERT INTO enrichment_queue_jobs (id, list_id, status, attempts)"
                    " VALUES (%s, %s, 'running', 1)", (job_id, list_id))
    stale = pg.connect(autocommit=False)
    try:
        with stale.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(1701733997, hashint8(%s::bigint))",
                        (job_id,))
            cur.execute("INSERT INTO rpc_scores (job_id, list_entry_id, score, class)"
                        " SELECT %s, g, 0, 'WPC' FROM generate_series(%s, %s) g",
                        (job_id, first, first + 99))
            cur.execute("INSERT INTO rpc_scores (job_id, list_entry_id, score, class)"
                        " VALUES (%s, 1, 0, 'WPC')", (job_id,))
        res = send_enrich(celery_app, job_id, list_id)
        wait_until(lambda: (job_row(db, job_id) or {}).get("attempts") == 2, scaled(30),
                   what="the new attempt to start")
        time.sleep(0.5)
        assert res.state != "SUCCESS"  # it waits for the stale session's lock
        stale.commit()
    finally:
        stale.close()
    summary = res.get(timeout=GET_TIMEOUT)
    assert summary["total"] == n
    assert job_row(db, job_id)["status"] == "succeeded"
    check_effects(db, job_id, list_id, n)
    assert one(db, "SELECT count(*) FROM rpc_scores WHERE job_id = %s AND list_entry_id = 1",
               job_id)[0] == 0
