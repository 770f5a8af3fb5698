#!/usr/bin/python3
"""Chaos suite (issue 8, part 1): kill -9 the worker, restart the services under
it, run a mixed fleet with a casualty, stop it warm under load -- and count what
was lost, what ran twice and how long recovery took.

    tests/chaos/chaos.py                       every scenario at CI scale (tests/chaos/run.sh)
    tests/chaos/chaos.py --scale 1             the issue's full numbers: 10,000 tasks and 20
                                               kills, a 200,000-entry enrich_list job, ...
    tests/chaos/chaos.py --scenario kill9 --broker amqp --scale 0.5
    tests/chaos/chaos.py --list                the scenario names

Scenarios (--scenario, repeatable; --broker redis|amqp|both picks the broker of
the broker-dependent ones):

  kill9           N chaos.record tasks (acks_late), the whole worker (parent and
                  pool) SIGKILLed K times at random moments, restarted at once by a
                  supervisor loop (systemd's Restart=always).  redis and amqp.
  enrich_kill9    one enrich_list job over an E-entry list (Redis broker,
                  PostgreSQL), the worker SIGKILLed K times while the job runs.
  restart_redis   Redis (the broker and the result backend) restarted mid-run, with
                  --appendonly yes --appendfsync always so it keeps its queues.
  restart_rabbitmq  RabbitMQ (the broker; results in Redis) restarted mid-run.
  restart_postgres  PostgreSQL restarted under a running enrich_list job.
  mixed_fleet     three celeriac workers and one Python `celery worker` on one
                  queue; one celeriac worker SIGKILLed mid-run and not restarted.
                  redis and amqp.
  warm_shutdown   SIGTERM with tasks running and more prefetched: the running ones
                  finish, the prefetched ones go back to the queue, a fresh worker
                  finishes them.  redis and amqp.

What is counted.  Each execution of chaos.record appends "<task id> <worker pid>
<pool pid> <time>" to a file (examples/tasks/chaos.c, app.py), outside every
service under test.  At the end every task id must have a SUCCESS result and at
least one execution, else it is *lost*.  A second execution of a task id is
either a *re-execution* -- the earlier execution was by an incarnation SIGKILLed
within ACK_WINDOW seconds after it, or it happened within ACK_WINDOW before (or
during) a broker outage, so its ack may never have reached the broker: inherent
to acks_late, counted and reported -- or else a *duplicate* (an execution after
an ack that must have been delivered), which fails the run.  For enrich_list the
duplicates are database effects: rpc_scores rows beyond one per entry, export
rows beyond one.  Recovery time: from a kill (or a service's return) to the next
task completion.  Outage log lines: WARNING/ERROR/CRITICAL lines the worker
wrote per outage (at most OUTAGE_LOG_MAX, "logs each outage once").

Only loopback: every server is a throwaway one started here on free ports
(tests/interop's RedisServer, RabbitServer, PostgresServer), every loop is
bounded in time.  Exit status 0 only if every scenario passed; the last line is
"chaos: N passed, M failed".
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "interop"))
sys.path.insert(0, str(REPO / "examples" / "python"))
for _k in [k for k in os.environ if k.startswith("CELERY_")]:
    del os.environ[_k]  # they would override the producer's Celery(broker=...)

import conftest  # noqa: E402  (RedisServer, Worker, READY_RE, wait_until)
from conftest import RedisServer, Worker, wait_until  # noqa: E402

PYTHON = "/usr/bin/python3"
CELERIAC_BIN = conftest.CELERIAC_BIN
EXAMPLES_SO = conftest.CELERIAC_EXAMPLES_SO
CHAOS_SO = Path(os.environ.get("CELERIAC_CHAOS_SO") or EXAMPLES_SO.parent / "libceleriac-chaos.so")
ENRICH_SO = Path(os.environ.get("CELERIAC_ENRICH_SO") or
                 CELERIAC_BIN.parent / "enrich" / "libceleriac-enrich.so")

ACK_WINDOW = 5.0        # s: an execution this close before a kill/outage may have lost its ack
OUTAGE_LOG_MAX = 3      # WARNING+ lines per cut connection and outage: "logged once"
VISIBILITY = 3          # s: Redis visibility timeout where workers are killed
LOG_LEVEL_RE = re.compile(r"^\[[^\]]*: (WARNING|ERROR|CRITICAL)/")

SCENARIOS = ["kill9", "enrich_kill9", "restart_redis", "restart_rabbitmq", "restart_postgres",
             "mixed_fleet", "warm_shutdown"]
BROKER_SCENARIOS = {"kill9", "mixed_fleet", "warm_shutdown"}


def log(msg):
    print("[chaos %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


# --------------------------------------------------------------------------- sizes

class Sizes:
    """The numbers of a run.  --scale 1 is the issue's: 10,000 tasks / 20 kills,
    200,000 entries / 20 kills; 'ci' is what .ci/run can afford."""

    def __init__(self, scale):
        if scale == "ci":
            self.tasks, self.kills = 2000, 6
            self.entries, self.enrich_kills = 20_000, 3
            self.restarts = 1
            self.fleet_tasks = 2000
            self.warm_tasks = 120
            self.label = "ci"
        else:
            s = float(scale)
            if s <= 0:
                raise SystemExit("--scale must be > 0 or 'ci'")
            self.tasks, self.kills = max(100, int(10_000 * s)), max(1, round(20 * s))
            self.entries, self.enrich_kills = max(2000, int(200_000 * s)), max(1, round(20 * s))
            self.restarts = max(1, round(3 * s))
            self.fleet_tasks = max(200, int(10_000 * s))
            self.warm_tasks = max(40, int(600 * s))
            self.label = "%g" % s


# --------------------------------------------------------------------------- services

class PersistentRedis(RedisServer):
    """A Redis that keeps its data across a restart (same port and dir):
    --appendonly yes --appendfsync always."""

    def start(self):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
             "--protected-mode", "yes"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

        def pong():
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: %s" % self.log_path.read_text())
            try:
                return self.client(0).ping()
            except Exception:
                return False

        wait_until(pong, 30, what="redis-server on port %d" % self.port)
        return self


class Services:
    """Lazily started throwaway servers, shared by the scenarios of one run."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self._redis = self._rabbit = self._pg = None

    def redis(self):
        if self._redis is None:
            self._redis = RedisServer(self.workdir / "redis").start()
        return self._redis

    def rabbit(self):
        if self._rabbit is None:
            from rabbitmq import RabbitServer
            log("starting RabbitMQ")
            self._rabbit = RabbitServer(self.workdir / "rabbit").start()
            log("RabbitMQ up in %.1f s" % self._rabbit.start_seconds)
        return self._rabbit

    def pg(self):
        if self._pg is None:
            from postgres import PostgresServer, postgres_missing
            reason = postgres_missing()
            if reason:
                raise RuntimeError(reason)
            self._pg = PostgresServer(self.workdir / "pg").start()
            migrate(self._pg.url)
        return self._pg

    def clean(self):
        if self._redis:
            self._redis.flush()
        if self._rabbit and self._rabbit.alive():
            self._rabbit.purge_messages()

    def stop(self):
        for fn in (lambda: self._redis and self._redis.stop(),
                   lambda: self._rabbit and self._rabbit.stop(),
                   lambda: self._pg and self._pg.cleanup()):
            try:
                fn()
            except Exception as exc:  # teardown must go on
                log("teardown: %s" % exc)


def migrate(url):
    proc = subprocess.run([str(CELERIAC_BIN), "db", "migrate", "--database-url", url],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError("celeriac db migrate failed: %s" % proc.stderr)


# --------------------------------------------------------------------------- workers

class Fleet:
    """Workers of one scenario: each slot is one log file, restarted in place."""

    def __init__(self, logdir, broker_url, backend_url, record_file):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.broker_url = broker_url
        self.backend_url = backend_url
        self.record_file = record_file
        self.workers = []
        self.killed = {}     # worker pid -> kill time
        self.started = {}    # worker pid -> start time

    def env(self, extra=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
        env.update({"CELERY_BROKER_URL": self.broker_url,
                    "CELERY_RESULT_BACKEND": self.backend_url,
                    "CELERY_TASK_ACKS_LATE": "1",
                    "CHAOS_RECORD_FILE": str(self.record_file),
                    "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"})
        env.update({k: str(v) for k, v in (extra or {}).items()})
        return env

    def make(self, name, kind="celeriac", concurrency=2, env=None, modules=()):
        wenv = self.env(env)
        if kind == "python":
            wenv["PYTHONPATH"] = str(REPO / "examples" / "python")
            argv = [PYTHON, "-m", "celery", "-A", "app", "worker", "-P", "prefork",
                    "-c", str(concurrency), "-l", "info", "-Q", "celery",
                    "-n", name + "@%h", "--without-mingle", "--without-gossip"]
            cwd = str(REPO / "examples" / "python")
        else:
            argv = [str(CELERIAC_BIN), "worker", "-A", str(EXAMPLES_SO), "-A", str(CHAOS_SO)]
            for m in modules:
                argv += ["-A", str(m)]
            argv += ["-Q", "celery", "-c", str(concurrency), "-n", name + "@%h", "-l", "info"]
            cwd = tempfile.mkdtemp(prefix=name + "-", dir=str(self.logdir))
        w = Worker(kind, name, argv, wenv, cwd, self.logdir / ("%s.log" % name))
        self.workers.append(w)
        return w

    def start(self, w, timeout=60):
        w.start(ready_timeout=timeout)
        self.started[w.pid] = time.time()
        return w

    def kill(self, w):
        """kill -9 of the whole worker: the parent and its pool (its process group)."""
        pid = w.pid
        t = time.time()
        w.kill()
        self.killed[pid] = t
        return t

    def stop_all(self, timeout=60):
        problems = []
        for w in self.workers:
            if w.alive():
                try:
                    rc = w.stop(timeout=timeout)
                    if rc != 0 and w.kind == "celeriac":
                        problems.append("%s exited with %s on SIGTERM" % (w.name, rc))
                except AssertionError as exc:
                    if w.kind == "celeriac":
                        problems.append(str(exc))
            w.kill()
            if w.kind == "celeriac":
                problems += ["%s sanitizer: %s" % (w.name, line)
                             for line in w.sanitizer_reports()]
        return problems


# --------------------------------------------------------------------------- producer

class Producer:
    """Sends chaos.record tasks with a plain Celery client (no result backend, so
    10,000 sends do not mean 10,000 result subscriptions); results are read
    straight from the Redis result db."""

    def __init__(self, broker_url, results_redis):
        from celery import Celery
        self.app = Celery("chaos-producer", broker=broker_url)
        self.app.conf.broker_connection_retry = False
        self.results = results_redis  # a redis.Redis client on the result db

    def send(self, n, sleep_ms, start=0):
        ids = []
        with self.app.producer_or_acquire() as producer:
            for i in range(start, start + n):
                r = self.app.send_task("chaos.record", args=[i, sleep_ms], producer=producer)
                ids.append(r.id)
        return ids

    def send_enrich(self, job_id, list_id):
        with self.app.producer_or_acquire() as producer:
            return self.app.send_task("enrich_list", args=[job_id, list_id],
                                      producer=producer).id

    def states(self, ids):
        out = {}
        for i in range(0, len(ids), 1000):
            chunk = ids[i:i + 1000]
            vals = self.results.mget(["celery-task-meta-" + t for t in chunk])
            for t, v in zip(chunk, vals):
                out[t] = json.loads(v) if v else None
        return out

    def count_success(self, ids):
        return sum(1 for m in self.states(ids).values() if m and m.get("status") == "SUCCESS")

    def close(self):
        try:
            self.app.close()
        except Exception:
            pass


def read_records(path):
    """task id -> [(time, worker pid, pool pid)], in time order."""
    recs = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return recs
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        recs.setdefault(parts[0], []).append((float(parts[3]), int(parts[1]), int(parts[2])))
    for v in recs.values():
        v.sort()
    return recs


def classify(recs, ids, killed, outages=()):
    """(re-executions, duplicates, [examples of duplicates]) over ids.

    killed: worker pid -> kill time.  outages: [(t_down, t_up)].  A later
    execution is a re-execution when the one before it may have lost its ack:
    its incarnation was killed within ACK_WINDOW after it, or it ran within
    ACK_WINDOW before the start of an outage (or during one)."""
    reexec = dup = 0
    examples = []
    for tid in ids:
        ex = recs.get(tid, [])
        for prev, cur in zip(ex, ex[1:]):
            t, wpid, _ = prev
            k = killed.get(wpid)
            lost_ack = (k is not None and t <= k <= t + ACK_WINDOW) or any(
                d - ACK_WINDOW <= t <= u for d, u in outages)
            if lost_ack:
                reexec += 1
            else:
                dup += 1
                if len(examples) < 5:
                    examples.append((tid, ex))
    return reexec, dup, examples


def recovery_times(recs, events):
    """For each event time, seconds until the first task completion after it."""
    times = sorted(t for ex in recs.values() for t, _, _ in ex)
    import bisect
    out = []
    for e in events:
        i = bisect.bisect_right(times, e)
        out.append(times[i] - e if i < len(times) else float("inf"))
    return out


QUIET_RE = re.compile(r"^\[[^\]]*: (INFO|DEBUG)/|^### | entries in [0-9.]+s|Warm shutdown")
RETRY_RE = re.compile(r"transient database error, retry \d+/\d+")


def outage_log_lines(log_path, start, end):
    """What the worker wrote between two offsets of its log that is not INFO/DEBUG:
    WARNING+ lines, and the raw stderr lines of libpq and the enrich module.
    Returns {line with its numbers as N: count}."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read(max(0, end - start)).decode("utf-8", "replace")
    except OSError:
        return {}
    seen = {}
    for line in text.splitlines():
        if not line.strip() or QUIET_RE.search(line):
            continue
        key = re.sub(r"\d+(\.\d+)?", "N", line.split("] ", 1)[-1] if line.startswith("[") else line)
        seen[key] = seen.get(key, 0) + 1
    return seen


def check_outage_logs(res, log_path, starts, end, per_line=1, retries_max=0):
    """Each outage logged once: per outage (from its start to the next one's, or to
    the end of the run) no line said more than per_line times (once per
    connection), at most res.outage_bound lines besides the task's own retry
    lines, and at most retries_max of those (each retry is one line, by design,
    with exponential backoff)."""
    counts = []
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else end
        seen = outage_log_lines(log_path, start, stop)
        retries = sum(n for k, n in seen.items() if RETRY_RE.search(k.replace("N", "1")))
        other = {k: n for k, n in seen.items() if not RETRY_RE.search(k.replace("N", "1"))}
        counts.append(sum(seen.values()))
        repeated = [k for k, n in other.items() if n > per_line]
        if repeated:
            res.problems.append("log lines repeated during one outage: %s" % repeated)
        if sum(other.values()) > res.outage_bound:
            res.problems.append("the worker logged %d lines for one outage (max %d): %s"
                                % (sum(other.values()), res.outage_bound, list(other)))
        if retries > retries_max:
            res.problems.append("%d retry lines for one outage (max %d)" % (retries, retries_max))
    res.outage_lines = max(counts) if counts else 0


def wait_all_success(producer, ids, timeout, what="all results SUCCESS"):
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = producer.count_success(ids)
        if done == len(ids):
            return done
        time.sleep(0.25)
    log("timed out after %.0f s waiting for %s (%d of %d)" % (timeout, what, done, len(ids)))
    return done


# --------------------------------------------------------------------------- results

class Result:
    def __init__(self, scenario, broker):
        self.scenario = scenario
        self.broker = broker
        self.tasks = 0
        self.disruptions = ""
        self.lost = 0
        self.duplicates = 0
        self.reexec = 0
        self.recovery = None
        self.outage_lines = None
        self.outage_bound = OUTAGE_LOG_MAX
        self.problems = []
        self.notes = []
        self.seconds = 0.0

    @property
    def ok(self):
        return not self.problems and self.lost == 0 and self.duplicates == 0

    def row(self):
        rec = "-" if self.recovery is None else "%.2f" % self.recovery
        ol = "-" if self.outage_lines is None else str(self.outage_lines)
        return (self.scenario, self.broker, str(self.tasks), self.disruptions, str(self.lost),
                str(self.duplicates), str(self.reexec), rec, ol, "%.0f" % self.seconds,
                "PASS" if self.ok else "FAIL")


HEADER = ("scenario", "broker", "tasks", "kills/restarts", "lost", "duplicates",
          "re-executions", "max recovery s", "outage log lines", "wall s", "result")


def table(results):
    rows = [HEADER] + [r.row() for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    out = []
    for j, r in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if j == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


# --------------------------------------------------------------------------- scenarios

class Ctx:
    def __init__(self, args, services, sizes, rng, workdir):
        self.args = args
        self.services = services
        self.sizes = sizes
        self.rng = rng
        self.workdir = Path(workdir)

    def urls(self, broker):
        r = self.services.redis()
        if broker == "redis":
            return r.url(0), r.url(1), r.client(1)
        return self.services.rabbit().url, r.url(1), r.client(1)

    def scenario_dir(self, name):
        d = self.workdir / name
        shutil.rmtree(d, ignore_errors=True)  # a kept --workdir: no old records
        d.mkdir(parents=True, exist_ok=True)
        return d


def finish_tasks(res, producer, recs, ids, killed, outages=()):
    states = producer.states(ids)
    bad = [t for t in ids if not (states.get(t) and states[t].get("status") == "SUCCESS")
           or not recs.get(t)]
    res.lost = len(bad)
    if bad:
        res.problems.append("lost: %s" % ", ".join(
            "%s (%s, %d executions)" % (t, (states.get(t) or {}).get("status"), len(recs.get(t, [])))
            for t in bad[:5]))
    res.reexec, res.duplicates, examples = classify(recs, ids, killed, outages)
    for tid, ex in examples:
        res.problems.append("duplicate execution of %s: %s" % (tid, ex))


def sc_kill9(ctx, broker):
    """N tasks, K kill -9 of the whole worker, each followed by an immediate restart."""
    res = Result("kill9", broker)
    sz = ctx.sizes
    d = ctx.scenario_dir("kill9-" + broker)
    broker_url, backend_url, results = ctx.urls(broker)
    rec = d / "records"
    fleet = Fleet(d, broker_url, backend_url, rec)
    producer = Producer(broker_url, results)
    env = {"CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": VISIBILITY})}
    try:
        ids = producer.send(sz.tasks, sleep_ms=10)
        res.tasks = len(ids)
        w = fleet.start(fleet.make("c-kill9", concurrency=4, env=env))
        t_start = time.monotonic()
        kills = []
        gap = 0.5
        while len(kills) < sz.kills:
            time.sleep(gap)
            # Spread the kills over the whole run: the next one a random fraction of
            # the time the rest of the run should take, shared among the kills left.
            done = producer.count_success(ids)
            rate = done / max(0.1, time.monotonic() - t_start)
            left_s = (len(ids) - done) / rate if rate > 0 else 5.0
            gap = min(3.0, max(0.1, ctx.rng.uniform(0.3, 1.7) * left_s
                               / (sz.kills - len(kills) + 1)))
            if done >= len(ids):
                res.notes.append("the run ended after %d kills" % len(kills))
                break
            kills.append(fleet.kill(w))
            fleet.start(w)  # the same slot (log file), a new incarnation
        res.disruptions = "%d kills" % len(kills)
        # Messages a killed incarnation held come back after the visibility timeout
        # (Redis: at the next restore pass, every 10 s) or at once (AMQP).
        wait_all_success(producer, ids, timeout=80 + VISIBILITY + len(ids) / 100)
        recs = read_records(rec)
        finish_tasks(res, producer, recs, ids, fleet.killed)
        rt = recovery_times(recs, kills)
        res.recovery = max(rt) if rt else None
        times = sorted(t for ex in recs.values() for t, _, _ in ex)
        if kills and len(times) > 1:
            span = times[-1] - times[0]
            res.notes.append("kills at %s%% of the run (%.1f s)" % (
                ",".join("%.0f" % (100 * (k - times[0]) / span) for k in kills), span))
        if len(kills) < sz.kills:
            res.problems.append("only %d of %d kills happened before the run ended"
                                % (len(kills), sz.kills))
    finally:
        res.problems += fleet.stop_all()
        producer.close()
    return res


def seed_big(conn, list_id, n):
    names = ["John Smith", "Mary Jones", "Robert Brown", "Patricia Garcia", "Michael Miller"]
    contacts = ["SMITH, JOHN", "Bob Brown", "Mary Smith", "", "Pat Garcia", "UNKNOWN CALLER"]
    with conn.cursor() as cur:
        cur.execute("INSERT INTO lists (id, name) VALUES (%s, 'chaos')", (list_id,))
        cur.execute(
            "INSERT INTO list_entries (id, list_id, full_name, contact_name, phone)"
            " SELECT %s + g, %s, (%s::text[])[1 + g %% 5], (%s::text[])[1 + g %% 6],"
            " '(212) 555-' || lpad((g %% 10000)::text, 4, '0')"
            " FROM generate_series(1, %s) g",
            (list_id * 10_000_000, list_id, names, contacts, n))


def one(conn, sql, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def job_state(pg, job_id):
    try:
        conn = pg.connect()
    except Exception:
        return None
    try:
        r = one(conn, "SELECT status, attempts, processed, total FROM enrichment_queue_jobs"
                      " WHERE id = %s", job_id)
        return None if r is None else dict(zip(["status", "attempts", "processed", "total"], r))
    except Exception:
        return None
    finally:
        conn.close()


def wait_next_attempt(pg, job_id, attempt, timeout):
    """Time at which attempt attempt+1 of the job was seen under way (or the job
    done), None on timeout: the recovery from a kill or an outage."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job_state(pg, job_id)
        if st and (st["status"] == "succeeded" or
                   (st["status"] == "running" and st["attempts"] > attempt)):
            return time.time()
        time.sleep(0.05)
    return None


def enrich_effects(res, pg, job_id, list_id, n):
    """lost = entries without a score; duplicates = extra score rows + extra export rows."""
    conn = pg.connect()
    try:
        # Fresh statistics, and no nested loop: without them the planner once took
        # minutes over 200,000 freshly written rows after a restart.
        with conn.cursor() as cur:
            cur.execute("ANALYZE rpc_scores")
            cur.execute("ANALYZE list_entries")
            cur.execute("SET enable_nestloop = off")
        count, distinct = one(conn, "SELECT count(*), count(DISTINCT list_entry_id) FROM"
                                    " rpc_scores WHERE job_id = %s", job_id)
        exports = one(conn, "SELECT count(*) FROM export_jobs WHERE enrichment_job_id = %s",
                      job_id)[0]
        bad = one(conn, "SELECT count(*) FROM list_entries e LEFT JOIN rpc_scores s"
                        " ON s.job_id = %s AND s.list_entry_id = e.id"
                        " WHERE e.list_id = %s AND (s.list_entry_id IS NULL"
                        " OR e.last_job_id IS DISTINCT FROM %s"
                        " OR e.rpc_class IS DISTINCT FROM s.class)", job_id, list_id, job_id)[0]
        st = one(conn, "SELECT status, attempts FROM enrichment_queue_jobs WHERE id = %s", job_id)
    finally:
        conn.close()
    res.lost += n - distinct + (1 if exports == 0 else 0)
    res.duplicates += (count - distinct) + max(0, exports - 1)
    if bad:
        res.problems.append("%d list_entries disagree with rpc_scores" % bad)
    if not st or st[0] != "succeeded":
        res.problems.append("job %d ended %s" % (job_id, st))
    res.notes.append("job %d: %d score rows for %d entries, %d export row(s), attempts %s"
                     % (job_id, count, n, exports, st and st[1]))
    return st[1] if st else 0


ENRICH_ENV = {"ENRICH_BATCH_SIZE": 1000, "ENRICH_RETRY_BASE": 1,
              "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": VISIBILITY})}


def sc_enrich_kill9(ctx, broker):
    """One enrich_list job; the worker is SIGKILLed K times while the job runs."""
    res = Result("enrich_kill9", "redis+pg")
    sz = ctx.sizes
    d = ctx.scenario_dir("enrich_kill9")
    pg = ctx.services.pg()
    broker_url, backend_url, results = ctx.urls("redis")
    fleet = Fleet(d, broker_url, backend_url, d / "records")
    producer = Producer(broker_url, results)
    list_id = job_id = 101
    n = sz.entries
    # The batch sleep stretches an attempt to a few seconds, so kills land mid-job.
    env = dict(ENRICH_ENV, DATABASE_URL=pg.url,
               ENRICH_TEST_BATCH_SLEEP_MS=max(5, min(200, 4000 * 1000 // n)))
    try:
        conn = pg.connect()
        seed_big(conn, list_id, n)
        conn.close()
        res.tasks = n
        w = fleet.start(fleet.make("c-enrich", concurrency=2, env=env, modules=[ENRICH_SO]))
        tid = producer.send_enrich(job_id, list_id)
        kills, recov = [], []
        deadline = time.monotonic() + 60 + 30 * sz.enrich_kills
        target = ctx.rng.uniform(0.05, 0.8) * n
        while len(kills) < sz.enrich_kills and time.monotonic() < deadline:
            # Wait for attempt len(kills)+1 to be under way, then kill at a random point.
            st = job_state(pg, job_id)
            if st and st["status"] == "succeeded":
                break
            if st and st["status"] == "running" and st["attempts"] == len(kills) + 1 \
                    and st["processed"] >= target:
                kills.append(fleet.kill(w))
                log("enrich: kill %d at %d/%d entries" % (len(kills), st["processed"], n))
                target = ctx.rng.uniform(0.05, 0.8) * n
                fleet.start(w)
                t = wait_next_attempt(pg, job_id, st["attempts"], 60)
                recov.append(t - kills[-1] if t else float("inf"))
                continue
            time.sleep(0.05)
        res.disruptions = "%d kills" % len(kills)
        if len(kills) < sz.enrich_kills:
            res.problems.append("only %d of %d kills landed mid-job" % (len(kills), sz.enrich_kills))
        # The last attempt runs without kills; a redelivery can take the visibility
        # timeout plus a restore pass (10 s).
        done = wait_all_success(producer, [tid], timeout=120 + n / 2000)
        if not done:
            res.problems.append("enrich_list did not succeed")
        attempts = enrich_effects(res, pg, job_id, list_id, n)
        res.reexec = max(0, attempts - 1)
        if recov:
            # Kill -> the next attempt under way: the restart plus the redelivery,
            # which on Redis waits for the visibility timeout and a restore pass.
            res.recovery = max(recov)
            res.notes.append("recovery here = kill -> next attempt under way (mean %.1f s)"
                             % (sum(recov) / len(recov)))
    finally:
        res.problems += fleet.stop_all()
        producer.close()
    return res


def sc_restart_broker(ctx, which):
    """N tasks; the broker (Redis with AOF, or RabbitMQ) restarted R times mid-run."""
    res = Result("restart_" + which, which)
    sz = ctx.sizes
    d = ctx.scenario_dir("restart_" + which)
    if which == "redis":
        server = PersistentRedis(d / "redis-aof").start()
        broker_url, backend_url = server.url(0), server.url(1)
        results = server.client(1)
    else:
        server = ctx.services.rabbit()
        r = ctx.services.redis()
        broker_url, backend_url, results = server.url, r.url(1), r.client(1)
    fleet = Fleet(d, broker_url, backend_url, d / "records")
    producer = Producer(broker_url, results)
    outages, offsets = [], []
    try:
        ids = producer.send(sz.tasks, sleep_ms=10)
        res.tasks = len(ids)
        w = fleet.start(fleet.make("c-" + which, concurrency=4))
        for i in range(sz.restarts):
            time.sleep(ctx.rng.uniform(0.5, 1.5))
            left = len(ids) - safe_count(producer, ids)
            if left < 100:
                res.notes.append("few tasks left before restart %d" % (i + 1))
            offsets.append(w.log_size())
            t_down = time.time()
            if which == "redis":
                server.stop()
                time.sleep(ctx.rng.uniform(1.0, 3.0))
                server.start()
            else:
                server.restart()
            t_up = time.time()
            outages.append((t_down, t_up))
            log("%s restart %d: down %.1f s" % (which, i + 1, t_up - t_down))
            # Each in turn: the next outage only once this one is recovered from.
            wait_until(lambda: any(t > t_up for ex in read_records(fleet.record_file).values()
                                   for t, _, _ in ex) or safe_count(producer, ids) >= len(ids),
                       60, interval=0.1, what="a task completion after the restart")
        res.disruptions = "%d restarts" % len(outages)
        wait_all_success(producer, ids, timeout=120 + len(ids) / 100)
        recs = read_records(fleet.record_file)
        finish_tasks(res, producer, recs, ids, fleet.killed, outages)
        rt = recovery_times(recs, [u for _, u in outages])
        res.recovery = max(rt) if rt else None
        # Redis carries the broker, the result backend, the pidbox and the events
        # (4 connections); RabbitMQ the broker, pidbox and events on one connection.
        res.outage_bound = OUTAGE_LOG_MAX * (4 if which == "redis" else 1)
        check_outage_logs(res, w.log_path, offsets, w.log_size())
        if not w.alive():
            res.problems.append("the worker died during the outage")
    finally:
        res.problems += fleet.stop_all()
        producer.close()
        if which == "redis":
            server.stop()
    return res


def safe_count(producer, ids):
    try:
        return producer.count_success(ids)
    except Exception:
        return 0


def sc_restart_postgres(ctx, broker):
    """An enrich_list job; PostgreSQL stopped and started again R times while it runs."""
    res = Result("restart_postgres", "redis+pg")
    sz = ctx.sizes
    d = ctx.scenario_dir("restart_postgres")
    pg = ctx.services.pg()
    broker_url, backend_url, results = ctx.urls("redis")
    fleet = Fleet(d, broker_url, backend_url, d / "records")
    producer = Producer(broker_url, results)
    list_id = job_id = 202
    n = sz.entries
    env = dict(ENRICH_ENV, DATABASE_URL=pg.url,
               ENRICH_TEST_BATCH_SLEEP_MS=max(5, min(200, 4000 * 1000 // n)))
    env.pop("CELERY_BROKER_TRANSPORT_OPTIONS")
    outages, offsets = [], []
    target = ctx.rng.uniform(0.1, 0.6) * n
    attempt = 0
    recov = []
    try:
        conn = pg.connect()
        seed_big(conn, list_id, n)
        conn.close()
        res.tasks = n
        w = fleet.start(fleet.make("c-pg", concurrency=2, env=env, modules=[ENRICH_SO]))
        tid = producer.send_enrich(job_id, list_id)
        deadline = time.monotonic() + 60 + 30 * sz.restarts
        while len(outages) < sz.restarts and time.monotonic() < deadline:
            st = job_state(pg, job_id)
            if st and st["status"] == "succeeded":
                break
            if st and st["status"] == "running" and st["attempts"] > attempt \
                    and st["processed"] >= target:
                attempt = st["attempts"]
                offsets.append(w.log_size())
                target = ctx.rng.uniform(0.1, 0.6) * n
                t_down = time.time()
                pg.stop("fast")
                time.sleep(ctx.rng.uniform(1.0, 3.0))
                pg.start()
                t_up = time.time()
                outages.append((t_down, t_up))
                log("postgres restart %d: down %.1f s" % (len(outages), t_up - t_down))
                # Each in turn: the next outage hits the attempt after this one
                # (st["attempts"] > attempt above), once it is under way.
                t = wait_next_attempt(pg, job_id, attempt, 60)
                recov.append(t - t_up if t else float("inf"))
                continue
            time.sleep(0.05)
        res.disruptions = "%d restarts" % len(outages)
        if len(outages) < sz.restarts:
            res.problems.append("only %d of %d restarts landed mid-job" % (len(outages), sz.restarts))
        done = wait_all_success(producer, [tid], timeout=120 + n / 2000)
        if not done:
            res.problems.append("enrich_list did not succeed")
        attempts = enrich_effects(res, pg, job_id, list_id, n)
        res.reexec = max(0, attempts - 1)
        if recov:
            # PostgreSQL back -> the next attempt under way (the task's retry backoff).
            res.recovery = max(recov)
            res.notes.append("recovery here = PostgreSQL back -> next attempt under way")
        # The job holds two sessions (docs/enrich.md): libpq says FATAL on each.
        res.outage_bound = 2 * OUTAGE_LOG_MAX
        check_outage_logs(res, w.log_path, offsets, w.log_size(), per_line=2,
                          retries_max=5)
    finally:
        res.problems += fleet.stop_all()
        producer.close()
    return res


def sc_mixed_fleet(ctx, broker):
    """Three celeriac workers and one Python worker on one queue; one celeriac killed."""
    res = Result("mixed_fleet", broker)
    sz = ctx.sizes
    d = ctx.scenario_dir("mixed_fleet-" + broker)
    broker_url, backend_url, results = ctx.urls(broker)
    fleet = Fleet(d, broker_url, backend_url, d / "records")
    producer = Producer(broker_url, results)
    env = {"CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": VISIBILITY})}
    try:
        ids = producer.send(sz.fleet_tasks, sleep_ms=10)
        res.tasks = len(ids)
        py = fleet.make("py-fleet", kind="python", concurrency=2, env=env)
        cs = [fleet.make("c-fleet%d" % i, concurrency=2, env=env) for i in range(3)]
        for w in [py] + cs:
            fleet.start(w)
        wait_until(lambda: safe_count(producer, ids) >= len(ids) // 4, 120,
                   what="a quarter of the tasks done")
        victim = ctx.rng.choice(cs)
        t_kill = fleet.kill(victim)
        log("mixed fleet: killed %s" % victim.name)
        res.disruptions = "1 kill"
        wait_all_success(producer, ids, timeout=120 + len(ids) / 100)
        recs = read_records(fleet.record_file)
        finish_tasks(res, producer, recs, ids, fleet.killed)
        rt = recovery_times({k: [e for e in v if e[1] != victim.pid] for k, v in recs.items()},
                            [t_kill])
        res.recovery = max(rt) if rt else None
        per = {}
        names = {w.pid: w.name for w in fleet.workers if w.proc}
        for ex in recs.values():
            for _, wpid, _ in ex:
                per[names.get(wpid, str(wpid))] = per.get(names.get(wpid, str(wpid)), 0) + 1
        res.notes.append("executions per worker: %s" % per)
        idle = [w.name for w in [py] + cs if w.name not in per]
        if idle:
            res.problems.append("workers that ran nothing: %s" % idle)
    finally:
        res.problems += fleet.stop_all()
        producer.close()
    return res


def queue_depth(ctx, broker, results_client=None):
    """Messages in the celery queue (Redis: the lists plus the unacked hash)."""
    if broker == "redis":
        r = ctx.services.redis().client(0)
        from helpers import all_queue_keys
        return sum(r.llen(k) for k in all_queue_keys()) + r.hlen("unacked")
    return ctx.services.rabbit().queue_depth("celery")


def sc_warm_shutdown(ctx, broker):
    """SIGTERM with C tasks running and C*4 prefetched: the running ones finish, the
    rest go back to the queue, a fresh worker finishes them; each runs once."""
    res = Result("warm_shutdown", broker)
    sz = ctx.sizes
    d = ctx.scenario_dir("warm_shutdown-" + broker)
    broker_url, backend_url, results = ctx.urls(broker)
    fleet = Fleet(d, broker_url, backend_url, d / "records")
    producer = Producer(broker_url, results)
    try:
        ids = producer.send(sz.warm_tasks, sleep_ms=400)
        res.tasks = len(ids)
        w = fleet.start(fleet.make("c-warm", concurrency=4))
        wait_until(lambda: len(read_records(fleet.record_file)) >= 6, 60,
                   what="a few tasks done")
        time.sleep(ctx.rng.uniform(0.05, 0.35))  # mid-task
        t_term = time.time()
        w.send_signal(signal.SIGTERM)
        rc = w.wait(60)
        stop_s = time.time() - t_term
        if rc != 0:
            res.problems.append("warm shutdown exited with %s" % rc)
        recs = read_records(fleet.record_file)
        ran = [t for t in ids if t in recs]
        late = [t for t in ran if recs[t][0][0] > t_term + 1.0]
        ok = producer.count_success(ran)
        if ok != len(ran):
            res.problems.append("%d tasks ran before the shutdown but only %d results SUCCESS"
                                % (len(ran), ok))
        if late:
            res.problems.append("%d tasks started after SIGTERM" % len(late))
        depth = queue_depth(ctx, broker)
        if depth != len(ids) - len(ran):
            res.problems.append("queue holds %d messages after the shutdown, expected %d"
                                % (depth, len(ids) - len(ran)))
        res.notes.append("SIGTERM: %d ran, %d back in the queue, worker exited in %.2f s"
                         % (len(ran), depth, stop_s))
        res.disruptions = "1 SIGTERM"
        w2 = fleet.start(fleet.make("c-warm2", concurrency=4))
        t_up = time.time()
        wait_all_success(producer, ids, timeout=60 + len(ids) * 0.4 / 4)
        recs = read_records(fleet.record_file)
        finish_tasks(res, producer, recs, ids, fleet.killed)
        rt = recovery_times({k: [e for e in v if e[1] == w2.pid] for k, v in recs.items()},
                            [t_up])
        res.recovery = max(rt) if rt else None
    finally:
        res.problems += fleet.stop_all()
        producer.close()
    return res


RUNNERS = {
    "kill9": sc_kill9,
    "enrich_kill9": sc_enrich_kill9,
    "restart_redis": lambda ctx, b: sc_restart_broker(ctx, "redis"),
    "restart_rabbitmq": lambda ctx, b: sc_restart_broker(ctx, "rabbitmq"),
    "restart_postgres": sc_restart_postgres,
    "mixed_fleet": sc_mixed_fleet,
    "warm_shutdown": sc_warm_shutdown,
}


# --------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--scale", default="ci",
                    help="'ci' (default) or a factor of the issue's numbers (1 = full)")
    ap.add_argument("--scenario", action="append", choices=SCENARIOS,
                    help="run only these (repeatable); default all")
    ap.add_argument("--broker", choices=["redis", "amqp", "both"], default="both",
                    help="broker of kill9, mixed_fleet and warm_shutdown (default both)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    ap.add_argument("--workdir", help="logs and data here (default: a temp dir, kept on failure)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    for p in (CELERIAC_BIN, EXAMPLES_SO, CHAOS_SO, ENRICH_SO):
        if not Path(p).exists():
            raise SystemExit("chaos: %s is missing (ninja -C build)" % p)
    sizes = Sizes(args.scale)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="celeriac-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)  # the postgres user reaches its folder below
    log("scale %s, seed %d, logs in %s" % (sizes.label, seed, workdir))
    brokers = ["redis", "amqp"] if args.broker == "both" else [args.broker]
    plan = []
    for name in args.scenario or SCENARIOS:
        for b in (brokers if name in BROKER_SCENARIOS else [None]):
            plan.append((name, b))
    def on_term(signum, frame):
        raise SystemExit(128 + signum)  # so the finally below stops every server

    signal.signal(signal.SIGTERM, on_term)
    services = Services(workdir)
    ctx = Ctx(args, services, sizes, rng, workdir)
    results = []
    t_all = time.monotonic()
    try:
        for name, b in plan:
            log("=== %s%s" % (name, " (%s)" % b if b else ""))
            t0 = time.monotonic()
            try:
                services.clean()
                r = RUNNERS[name](ctx, b)
            except Exception as exc:
                r = Result(name, b or "-")
                r.problems.append("crashed: %s" % exc)
                traceback.print_exc()
            r.seconds = time.monotonic() - t0
            results.append(r)
            log("%s %s: %s%s" % (name, b or "", "PASS" if r.ok else "FAIL",
                                 "".join("\n    note: " + n for n in r.notes) +
                                 "".join("\n    problem: " + p for p in r.problems)))
    finally:
        services.stop()
    print()
    print("Chaos summary (scale %s, seed %d, %.0f s):" % (sizes.label, seed,
                                                          time.monotonic() - t_all))
    print(table(results))
    print("lost: tasks without SUCCESS or without an execution (enrich: entries without a"
          " score row); duplicates: executions after a delivered ack (enrich: extra rows);"
          " re-executions: ack lost to a kill or an outage (acks_late)")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(zip(HEADER, r.row()), notes=r.notes,
                                                    problems=r.problems) for r in results],
                                              indent=1))
    failed = sum(1 for r in results if not r.ok)
    if not failed and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    elif failed:
        log("logs kept in %s" % workdir)
    print("chaos: %d passed, %d failed" % (len(results) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
