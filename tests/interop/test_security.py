"""Security (issue 8, part 5): credentials never leak, TLS to PostgreSQL,
--uid/--gid, SQL values only as parameters.

  - Credentials: a Redis with requirepass and an ACL user, a RabbitMQ user
    (INTEROP_BROKER=amqp*) and a PostgreSQL user, all with SENTINEL in their
    password.  The worker runs with those URLs; then errors are provoked (wrong
    password, unreachable host, malformed URL, bad DSN, failing enrich jobs)
    and `inspect conf/stats/report/...` are called from Python and the CLI.
    SENTINEL must appear in none of: worker log, stdout/stderr, inspect
    replies, events, `--help` and config error output, `celeriac db` errors,
    task results, the job row.
  - PostgreSQL TLS: a CA and server certificate made here (openssl), the
    server with ssl=on and pg_hba `hostssl` only; `celeriac db migrate` and
    an enrich_list job with sslmode=verify-full against the right CA succeed,
    against another CA fail with a clear error.
  - --uid/--gid: started as root, the worker and its pool processes run as
    nobody/nogroup and tasks still run (skipped unless root).
  - SQL: a hostile list name and entry names (quotes, `'; DROP TABLE`, tab,
    backslash, newline) go through enrich_list harmlessly.
  - Redis TLS: hiredis 0.14 has none, so the documented way is a local
    stunnel client; tested against redis-server --tls-port (needs stunnel4).

Docs: docs/reliability.md, section "Security".
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (CELERIAC_BIN, CELERIAC_EXAMPLES_SO, GET_TIMEOUT, ON_AMQP, PYTHON,
                      free_port, require_celeriac, scaled, wait_until)
from postgres import PostgresServer, postgres_missing
from test_events import Capture

# Letters and digits only: the same text raw and percent-encoded in a URL.
SENTINEL = "Sntnl7q3ZpW"
WRONG = "Wrong" + SENTINEL  # a wrong password that still contains the sentinel


def assert_clean(what, text):
    if not isinstance(text, str):
        text = json.dumps(text, default=repr)
    assert SENTINEL not in text, "%s shows the password:\n%s" % (what, text[-4000:])


def worker_log(w):
    """The worker's own log lines (not the harness's "### argv" header lines)."""
    return "\n".join(line for line in w.log_text().splitlines() if not line.startswith("### "))


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERY_", "CELERIAC_")) and k != "DATABASE_URL"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_celeriac(args, env=None, timeout=30, cwd=None, stop_after=None):
    """celeriac ARGS in a clean environment; returns (returncode, stdout+stderr).
    With stop_after, a process still running then gets SIGTERM (returncode None)."""
    proc = subprocess.Popen([str(CELERIAC_BIN)] + list(args), env=clean_env(**(env or {})),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            cwd=cwd or tempfile.gettempdir())
    try:
        out, _ = proc.communicate(timeout=stop_after or scaled(timeout))
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        if not stop_after:
            proc.kill()
            raise
        proc.terminate()
        out, _ = proc.communicate(timeout=scaled(timeout))
        return None, out


def worker_args(broker, backend=None):
    argv = ["worker", "-A", str(CELERIAC_EXAMPLES_SO), "-b", broker, "-c", "1"]
    if backend:
        argv += ["--result-backend", backend]
    return argv


# --------------------------------------------------------------------------- a Redis with passwords

class AuthRedis:
    """redis-server with requirepass (the default user) and an ACL user."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.port = free_port()

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "redis.conf"
        conf.write_text("port %d\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir %s\n"
                        "requirepass %s\nuser celeriac on >%s ~* &* +@all\n"
                        % (self.port, self.workdir, SENTINEL, SENTINEL))
        self.log = open(self.workdir / "redis.log", "wb")
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)

        def up():
            assert self.proc.poll() is None, (self.workdir / "redis.log").read_text()
            out = subprocess.run(["redis-cli", "-p", str(self.port), "--no-auth-warning", "-a",
                                  SENTINEL, "ping"], capture_output=True, text=True)
            return "PONG" in out.stdout
        wait_until(up, 15, what="redis-server with a password")
        return self

    def broker_url(self, password=SENTINEL, db=0):
        return "redis://:%s@127.0.0.1:%d/%d" % (password, self.port, db)

    def backend_url(self, password=SENTINEL, db=1):
        return "redis://celeriac:%s@127.0.0.1:%d/%d" % (password, self.port, db)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def auth_redis(log_dir):
    server = AuthRedis(tempfile.mkdtemp(prefix="redis-auth-", dir=str(log_dir))).start()
    yield server
    server.stop()


def producer(broker, backend):
    from celery import Celery
    app = Celery("security_producer", broker=broker, backend=backend)
    app.conf.broker_connection_retry = False
    return app


def inspect_everything(app, what):
    """inspect conf/stats/report/registered/active_queues/active via Python; returns the replies."""
    insp = app.control.inspect(timeout=scaled(3))
    replies = {}
    for method in ("conf", "stats", "report", "registered", "active_queues", "active",
                   "reserved", "scheduled"):
        replies[method] = getattr(insp, method)()
    assert replies["conf"] and replies["stats"] and replies["report"], (what, replies)
    for node, conf in replies["conf"].items():
        assert "broker_url" in conf, conf
    return replies


def inspect_cli(broker, backend):
    """`celery inspect conf/stats/report --json` as an operator would run them."""
    out = []
    for method in ("conf", "stats", "report"):
        proc = subprocess.run([PYTHON, "-m", "celery", "-b", broker, "--result-backend", backend,
                               "inspect", method, "--json", "--timeout", str(scaled(3))],
                              env=clean_env(), capture_output=True, text=True,
                              timeout=scaled(60), cwd=tempfile.gettempdir())
        assert proc.returncode == 0 and proc.stdout.strip(), (method, proc.stdout, proc.stderr)
        out.append(proc.stdout + proc.stderr)
    return "\n".join(out)


def provoke_worker_errors(good_broker, good_backend, bad_broker, bad_backends):
    """Start celeriac the wrong ways (retries off); every output must be clean."""
    outputs = []
    retry_off = {"CELERY_BROKER_CONNECTION_RETRY": "0"}
    for broker in bad_broker:
        rc, out = run_celeriac(worker_args(broker) + ["-l", "debug"], env=retry_off)
        assert rc != 0, out
        outputs.append(("worker -b <bad>", out))
    for backend in bad_backends:
        # The backend may be connected lazily (and retried): run a while, then stop.
        rc, out = run_celeriac(worker_args(good_broker, backend) + ["-l", "debug"],
                               env=retry_off, stop_after=scaled(3))
        outputs.append(("worker --result-backend <bad>", out))
    # The URL in the environment, in a .env file, as a stray argument; --help.
    rc, out = run_celeriac(["worker", "--help"], env={"CELERY_BROKER_URL": good_broker,
                                                      "CELERY_RESULT_BACKEND": good_backend})
    assert rc == 0, out
    outputs.append(("worker --help", out))
    d = Path(tempfile.mkdtemp(prefix="sec-env-"))
    (d / ".env").write_text("CELERY_BROKER_URL=bogus://:%s@host/0\n" % SENTINEL)
    rc, out = run_celeriac(["worker", "-A", str(CELERIAC_EXAMPLES_SO)], cwd=str(d))
    assert rc == 64, out
    outputs.append(("bad URL in .env", out))
    rc, out = run_celeriac(["worker", "-b", "redis://:%s@127.0.0.1:notaport/0" % SENTINEL])
    assert rc == 64, out
    outputs.append(("malformed port", out))
    rc, out = run_celeriac(["worker", good_broker])  # -b forgotten
    assert rc == 64 and "unexpected argument" in out, out
    outputs.append(("stray URL argument", out))
    rc, out = run_celeriac(["worker", "--broker_use_ssl", SENTINEL])
    assert rc == 64, out
    outputs.append(("unknown option", out))
    shutil.rmtree(d, ignore_errors=True)
    return outputs


# --------------------------------------------------------------------------- credentials

@pytest.mark.redis_broker
def test_redis_credentials_never_shown(start_worker, auth_redis, monkeypatch):
    """requirepass on the broker URL, an ACL user on the result backend URL."""
    require_celeriac()
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    broker, backend = auth_redis.broker_url(), auth_redis.backend_url()
    w = start_worker("celeriac", args=["-b", broker, "--result-backend", backend, "-E"])
    app = producer(broker, backend)
    cap = Capture(app)
    try:
        assert cap.ready.wait(scaled(15)), "event receiver did not start"
        assert app.send_task("examples.add", args=[40, 2]).get(timeout=GET_TIMEOUT) == 42
        failing = app.send_task("examples.fail", args=["boom"])
        with pytest.raises(Exception) as exc:
            failing.get(timeout=GET_TIMEOUT)
        assert_clean("a task failure", "%s %s" % (exc.value, failing.traceback))
        replies = inspect_everything(app, "redis")
        assert_clean("inspect replies", replies)
        conf = next(iter(replies["conf"].values()))
        assert conf["broker_url"] == "redis://:**@127.0.0.1:%d/0" % auth_redis.port, conf
        assert_clean("celery inspect (CLI)", inspect_cli(broker, backend))
        wait_until(lambda: any(e.get("type") == "worker-heartbeat" for e in list(cap.events))
                   and any(e.get("type") == "task-failed" for e in list(cap.events)),
                   scaled(10), what="a heartbeat and a task-failed event")
        assert_clean("events", list(cap.events))
    finally:
        cap.stop()
        app.close()
    outputs = provoke_worker_errors(
        broker, backend,
        bad_broker=[auth_redis.broker_url(WRONG), "redis://:%s@127.0.0.1:1/0" % SENTINEL],
        bad_backends=[auth_redis.backend_url(WRONG),
                      "redis://celeriac:%s@127.0.0.1:1/1" % SENTINEL])
    for what, out in outputs:
        assert_clean(what, out)
    wrong = dict(outputs)["worker -b <bad>"]
    assert "Cannot connect to broker" in wrong or "auth" in wrong.lower(), wrong
    time.sleep(0.3)
    assert_clean("worker log", worker_log(w))


@pytest.mark.amqp_broker
def test_amqp_credentials_never_shown(start_worker, urls, monkeypatch):
    """A RabbitMQ user with the sentinel password."""
    require_celeriac()
    rabbit = urls.rabbit
    try:
        rabbit.ctl("add_user", "secuser", SENTINEL)
    except Exception:
        rabbit.ctl("change_password", "secuser", SENTINEL)
    rabbit.ctl("set_permissions", "-p", "/", "secuser", ".*", ".*", ".*")
    broker = "amqp://secuser:%s@127.0.0.1:%d//" % (SENTINEL, rabbit.port)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    backend = urls.backend
    w = start_worker("celeriac", args=["-b", broker, "--result-backend", backend, "-E"])
    app = producer(broker, backend)
    cap = Capture(app)
    try:
        assert cap.ready.wait(scaled(15)), "event receiver did not start"
        assert app.send_task("examples.add", args=[1, 2]).get(timeout=GET_TIMEOUT) == 3
        replies = inspect_everything(app, "amqp")
        assert_clean("inspect replies", replies)
        conf = next(iter(replies["conf"].values()))
        assert conf["broker_url"] == "amqp://secuser:**@127.0.0.1:%d//" % rabbit.port, conf
        stats = next(iter(replies["stats"].values()))
        assert stats["broker"]["userid"] == "secuser", stats["broker"]
        assert_clean("celery inspect (CLI)", inspect_cli(broker, backend))
        wait_until(lambda: any(e.get("type") == "task-succeeded" for e in list(cap.events)),
                   scaled(10), what="a task-succeeded event")
        assert_clean("events", list(cap.events))
    finally:
        cap.stop()
        app.close()
    outputs = provoke_worker_errors(
        broker, backend,
        bad_broker=["amqp://secuser:%s@127.0.0.1:%d//" % (WRONG, rabbit.port),
                    "amqp://secuser:%s@127.0.0.1:1//" % SENTINEL],
        bad_backends=[])
    for what, out in outputs:
        assert_clean(what, out)
    time.sleep(0.3)
    assert_clean("worker log", worker_log(w))


# --------------------------------------------------------------------------- PostgreSQL

def _make_ca(d, name):
    """A CA and a server certificate for 127.0.0.1/localhost, by openssl(1)."""
    def run(*argv):
        subprocess.run(["openssl"] + list(argv), cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=%s test CA" % name, "-keyout", name + "-ca.key", "-out", name + "-ca.pem")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout",
        name + "-server.key", "-out", name + "-server.csr")
    (d / (name + "-san.ext")).write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", name + "-server.csr", "-CA", name + "-ca.pem", "-CAkey",
        name + "-ca.key", "-CAcreateserial", "-days", "2", "-extfile", name + "-san.ext",
        "-out", name + "-server.pem")
    return {"ca": str(d / (name + "-ca.pem")), "certfile": str(d / (name + "-server.pem")),
            "keyfile": str(d / (name + "-server.key"))}


@pytest.fixture(scope="module")
def secure_pg(tmp_path_factory):
    """PostgreSQL with a sentinel password and TLS only (hostssl), migrated over TLS."""
    reason = postgres_missing()
    if reason:
        pytest.skip(reason)
    if not shutil.which("openssl"):
        pytest.skip("openssl(1) not installed")
    require_celeriac()
    d = tmp_path_factory.mktemp("pgtls")
    good, other = _make_ca(d, "good"), _make_ca(d, "other")
    server = PostgresServer(password=SENTINEL, tls=good)  # its own folder in /tmp
    server.start()
    server.good, server.other = good, other
    try:
        yield server
    finally:
        server.cleanup()


def verify_full(pg, ca, password=None):
    return pg.url_with(password=password, sslmode="verify-full", sslrootcert=ca)


@pytest.mark.redis_broker
def test_db_migrate_over_tls_and_its_errors(secure_pg):
    pg = secure_pg
    rc, out = run_celeriac(["db", "migrate", "--database-url", verify_full(pg, pg.good["ca"])])
    assert rc == 0 and "schema up to date" in out, out
    assert_clean("celeriac db migrate", out)
    rc, out = run_celeriac(["db", "status"], env={"DATABASE_URL": verify_full(pg, pg.good["ca"])})
    assert rc == 0 and "pending" not in out, out
    # Verification against another CA fails, and says why.
    rc, out = run_celeriac(["db", "migrate", "--database-url", verify_full(pg, pg.other["ca"])])
    assert rc != 0 and "certificate verify failed" in out, out
    assert_clean("db migrate, wrong CA", out)
    # Without TLS the server has no pg_hba entry for us.
    rc, out = run_celeriac(["db", "status", "--database-url", pg.url_with(sslmode="disable")])
    assert rc != 0 and "no encryption" in out, out
    assert_clean("db status, no TLS", out)
    bad = [
        pg.url_with(password=WRONG),                                        # wrong password
        "postgresql://postgres:%s@127.0.0.1:1/postgres" % SENTINEL,         # unreachable
        "postgresql://postgres:%s%%zz@127.0.0.1:%d/postgres" % (SENTINEL, pg.port),  # bad %-escape
        "postgresql://postgres:%s@127.0.0.1:badport/postgres" % SENTINEL,   # bad port
        "host=127.0.0.1 port=%d password=%s%%zz bogus" % (pg.port, SENTINEL),  # bad conninfo
        "host=127.0.0.1 port=%d user=postgres password='%s' sslmode=%s" % (pg.port, SENTINEL,
                                                                            SENTINEL),
    ]
    for url in bad:
        rc, out = run_celeriac(["db", "status", "--database-url", url])
        assert rc != 0 and "celeriac db: error" in out, out
        assert_clean("celeriac db with a bad DSN", out)
    rc, out = run_celeriac(["db", "status", "--database-url", pg.url_with(password=WRONG)])
    assert "password authentication failed" in out, out


def _seed(conn, list_id, list_name, rows):
    with conn.cursor() as cur:
        cur.execute("INSERT INTO lists (id, name) VALUES (%s, %s)", (list_id, list_name))
        cur.executemany("INSERT INTO list_entries (id, list_id, full_name, contact_name, phone)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        [(list_id * 1000 + i, list_id) + tuple(r) for i, r in enumerate(rows)])


HOSTILE = "x'); DROP TABLE list_entries; --"


@pytest.mark.redis_broker
@pytest.mark.redis_backend
def test_enrich_over_tls_hostile_names_and_no_leaks(secure_pg, start_worker, celery_app):
    """enrich_list with sslmode=verify-full: SUCCESS with the right CA; a wrong CA,
    a wrong password and an unknown list fail with errors that show no password.
    Entry names with quotes, tab, backslash and newline round-trip."""
    import psycopg2
    from test_enrich import ENRICH_SO
    if not ENRICH_SO.exists():
        pytest.skip("enrich task module not built: %s" % ENRICH_SO)
    pg = secure_pg
    rc, out = run_celeriac(["db", "migrate", "--database-url", verify_full(pg, pg.good["ca"])])
    assert rc == 0, out
    conn = psycopg2.connect(verify_full(pg, pg.good["ca"]))
    conn.autocommit = True
    hostile_rows = [(HOSTILE, "Robert'); DROP TABLE rpc_scores;--", None),
                    ("O'Brien\tPatrick", "Patrick O\\'Brien", "(212) 555-0100"),
                    ("Smith\\nJohn\n", "'; SELECT pg_sleep(10); --", "555'; --")]
    _seed(conn, 9101, HOSTILE, hostile_rows)

    def start(url):
        return start_worker("celeriac", args=["-A", str(ENRICH_SO)],
                            env={"DATABASE_URL": url, "ENRICH_MAX_RETRIES": "0"})

    w = start(verify_full(pg, pg.good["ca"]))
    res = celery_app.app.send_task("enrich_list", args=[9201, 9101])
    summary = res.get(timeout=GET_TIMEOUT)
    assert summary["total"] == 3, summary
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM rpc_scores WHERE job_id = 9201")
        assert cur.fetchone()[0] == 3
        cur.execute("SELECT full_name FROM list_entries WHERE list_id = 9101 ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == [r[0] for r in hostile_rows]
        cur.execute("SELECT name FROM lists WHERE id = 9101")
        assert cur.fetchone()[0] == HOSTILE
        cur.execute("SELECT status FROM enrichment_queue_jobs WHERE id = 9201")
        assert cur.fetchone()[0] == "succeeded"
    # An unknown list: a failing job; its error and traceback are clean.
    bad = celery_app.app.send_task("enrich_list", args=[9202, 987654])
    with pytest.raises(Exception) as exc:
        bad.get(timeout=GET_TIMEOUT)
    assert_clean("enrich failure", "%s %s" % (exc.value, bad.traceback))
    log = worker_log(w)
    assert_clean("worker log (TLS, right CA)", log)
    # Wrong CA, then wrong password: the job fails, saying why, without the password.
    for url, why in ((verify_full(pg, pg.other["ca"]), "certificate verify failed"),
                     (verify_full(pg, pg.good["ca"], password=WRONG),
                      "password authentication failed"),
                     ("postgresql://postgres:%s%%zz@127.0.0.1:%d/postgres" % (SENTINEL, pg.port),
                      "percent-encoded")):
        w = start(url)
        r = celery_app.app.send_task("enrich_list", args=[9203, 9101])
        with pytest.raises(Exception) as exc:
            r.get(timeout=GET_TIMEOUT)
        text = "%s %s" % (exc.value, r.traceback)
        assert why in text, text
        assert_clean("enrich failure (%s)" % why, text)
        time.sleep(0.3)
        assert_clean("worker log (%s)" % why, worker_log(w))
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('list_entries') IS NOT NULL,"
                    " to_regclass('rpc_scores') IS NOT NULL")
        assert cur.fetchone() == (True, True)
        cur.execute("SELECT coalesce(string_agg(error, ' '), '') FROM enrichment_queue_jobs")
        assert_clean("enrichment_queue_jobs.error", cur.fetchone()[0])
    conn.close()


# --------------------------------------------------------------------------- --uid/--gid

def _ids(pid):
    status = Path("/proc/%d/status" % pid).read_text()
    f = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return ([int(x) for x in f["Uid"].split()], [int(x) for x in f["Gid"].split()],
            [int(x) for x in f["Groups"].split()])


def _children(pid):
    kids = Path("/proc/%d/task/%d/children" % (pid, pid)).read_text().split()
    return [int(k) for k in kids]


def _world_reachable(path):
    """True when any user may read `path` and search every folder above it."""
    p = Path(path).resolve()
    if not p.stat().st_mode & 0o004:
        return False
    return all(d.stat().st_mode & 0o001 for d in p.parents)


def test_uid_gid_drop_privileges(start_worker, celery_app, tmp_path):
    """As root, --uid nobody --gid nogroup: the worker and its pool processes run
    as nobody:nogroup with no supplementary root group, and tasks still run; the
    log file (opened before the drop) may stay root's."""
    require_celeriac()
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    # Task modules are loaded after the drop (no module code runs as root) and
    # SIGHUP re-executes the binary as nobody: both must be reachable by it.
    for f in (CELERIAC_BIN, CELERIAC_EXAMPLES_SO):
        if not _world_reachable(f):
            pytest.skip("%s is not reachable by nobody (a checkout inside a 0700 folder)" % f)
    import grp
    import pwd
    nobody = pwd.getpwnam("nobody").pw_uid
    try:
        nogroup = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        nogroup = pwd.getpwnam("nobody").pw_gid
    # A working directory nobody can read (`.env` is read there again as nobody
    # on a SIGHUP restart; the harness's own folders are root's, mode 0700).
    cwd = tempfile.mkdtemp(prefix="celeriac-uid-")
    os.chmod(cwd, 0o755)
    w = start_worker("celeriac", concurrency=2, cwd=cwd,
                     args=["--uid", "nobody", "--gid", str(nogroup)])
    assert celery_app.app.send_task("examples.add", args=[20, 22]).get(timeout=GET_TIMEOUT) == 42
    uids, gids, groups = _ids(w.pid)
    assert uids == [nobody] * 4 and gids == [nogroup] * 4, (uids, gids)
    assert 0 not in groups, groups
    kids = _children(w.pid)
    assert len(kids) >= 2, kids
    for k in kids:
        assert _ids(k)[0] == [nobody] * 4 and _ids(k)[1] == [nogroup] * 4
    assert "Running as uid %d gid %d" % (nobody, nogroup) in w.log_text()
    # SIGHUP re-executes the worker, now unprivileged, with the same --uid/--gid:
    # asking for the ids it already has is not an error.
    offset = w.log_size()
    os.kill(w.pid, signal.SIGHUP)
    wait_until(lambda: "ready." in w.log_text(offset), scaled(20), what="restart after SIGHUP")
    assert "Running as uid %d gid %d" % (nobody, nogroup) in w.log_text(offset)
    assert _ids(w.pid)[0] == [nobody] * 4
    assert celery_app.app.send_task("examples.add", args=[1, 1]).get(timeout=GET_TIMEOUT) == 2
    # The log file is opened before the drop: root's file, still written to
    # after it (here the connection error of an unreachable broker).
    logfile = tmp_path / "root-owned.log"
    rc, out = run_celeriac(["worker", "-A", str(CELERIAC_EXAMPLES_SO), "--uid", "nobody",
                            "-f", str(logfile), "-l", "info", "-b", "redis://127.0.0.1:1/0"],
                           env={"CELERY_BROKER_CONNECTION_RETRY": "0"})
    assert rc == 64, out
    text = logfile.read_text()
    assert os.stat(logfile).st_uid == 0
    assert "Running as uid %d" % nobody in text and "Cannot connect to broker" in text, text
    # Only the user: the group is the user's primary group.
    w.stop()
    w = start_worker("celeriac", concurrency=1, args=["--uid", str(nobody)])
    assert _ids(w.pid)[1][0] == pwd.getpwuid(nobody).pw_gid


def test_uid_gid_errors():
    require_celeriac()
    rc, out = run_celeriac(["worker", "-A", str(CELERIAC_EXAMPLES_SO), "--uid", "no-such-user-x",
                            "-b", "redis://127.0.0.1:1/0"])
    assert rc == 64 and "user does not exist: no-such-user-x" in out, out
    rc, out = run_celeriac(["worker", "-A", str(CELERIAC_EXAMPLES_SO), "--gid", "no-such-group-x",
                            "-b", "redis://127.0.0.1:1/0"])
    assert rc == 64 and "group does not exist: no-such-group-x" in out, out
    rc, out = run_celeriac(["worker", "--help"])
    assert "--uid USER" in out and "--gid GROUP" in out, out


# --------------------------------------------------------------------------- Redis over TLS

@pytest.mark.redis_broker
@pytest.mark.redis_backend
def test_redis_tls_through_a_local_stunnel(start_worker, tmp_path, monkeypatch):
    """hiredis 0.14 (Debian 12) has no TLS, so celeriac reaches a TLS Redis
    through a local stunnel client: redis-server --tls-port (built with TLS
    in Debian 12), stunnel verifying its certificate against the test's CA,
    celeriac on redis://127.0.0.1:<stunnel port>. The producer uses rediss://
    directly.  A tunnel that trusts another CA delivers nothing."""
    require_celeriac()
    stunnel = shutil.which("stunnel4") or shutil.which("stunnel")
    if not stunnel or not shutil.which("openssl"):
        pytest.skip("stunnel4 / openssl not installed (apt-get install stunnel4)")
    certs, other = _make_ca(tmp_path, "redis"), _make_ca(tmp_path, "wrong")
    tls_port, plain_port, bad_port = free_port(), free_port(), free_port()
    redis_log = open(tmp_path / "redis.log", "wb")
    redis = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(tls_port), "--bind", "127.0.0.1",
         "--tls-cert-file", certs["certfile"], "--tls-key-file", certs["keyfile"],
         "--tls-ca-cert-file", certs["ca"], "--tls-auth-clients", "no",
         "--requirepass", SENTINEL, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=redis_log, stderr=subprocess.STDOUT, start_new_session=True)
    tunnels = []
    for port, ca in ((plain_port, certs["ca"]), (bad_port, other["ca"])):
        conf = tmp_path / ("stunnel-%d.conf" % port)
        conf.write_text("foreground = yes\npid =\nsyslog = no\ndebug = notice\n"
                        "output = %s\n[redis]\nclient = yes\naccept = 127.0.0.1:%d\n"
                        "connect = 127.0.0.1:%d\nverifyChain = yes\nCAfile = %s\n"
                        "checkHost = localhost\n"
                        % (tmp_path / ("stunnel-%d.log" % port), port, tls_port, ca))
        tunnels.append(subprocess.Popen([stunnel, str(conf)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True))
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("CELERY_RESULT_BACKEND", raising=False)
    try:
        def tunnel_up():
            out = subprocess.run(["redis-cli", "-p", str(plain_port), "--no-auth-warning", "-a",
                                  SENTINEL, "ping"], capture_output=True, text=True)
            return "PONG" in out.stdout
        wait_until(tunnel_up, scaled(15), what="redis through stunnel")
        broker = "redis://:%s@127.0.0.1:%d/0" % (SENTINEL, plain_port)
        backend = "redis://:%s@127.0.0.1:%d/1" % (SENTINEL, plain_port)
        w = start_worker("celeriac", args=["-b", broker, "--result-backend", backend])
        direct = "rediss://:%s@localhost:%d/%%d?ssl_cert_reqs=required&ssl_ca_certs=%s" % (
            SENTINEL, tls_port, certs["ca"])
        app = producer(direct % 0, direct % 1)
        try:
            assert app.send_task("examples.add", args=[4, 5]).get(timeout=GET_TIMEOUT) == 9
        finally:
            app.close()
        assert_clean("worker log (Redis over stunnel)", worker_log(w))
        # The tunnel that trusts another CA: the handshake fails, nothing connects.
        rc, out = run_celeriac(worker_args("redis://:%s@127.0.0.1:%d/0" % (SENTINEL, bad_port))
                               + ["-l", "debug"],
                               env={"CELERY_BROKER_CONNECTION_RETRY": "0"}, stop_after=scaled(5))
        assert rc != 0 and "ready." not in out, out
        assert_clean("celeriac through an untrusted tunnel", out)
        assert "certificate verify failed" in (tmp_path / ("stunnel-%d.log" % bad_port)).read_text()
    finally:
        for p in tunnels + [redis]:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        redis_log.close()
