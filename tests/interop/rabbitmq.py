#!/usr/bin/python3
"""A throwaway RabbitMQ node for the interop tests.

    from rabbitmq import RabbitServer
    rabbit = RabbitServer(tmp_path / "rabbit").start()
    ... rabbit.url ...  ->  amqp://guest:guest@127.0.0.1:PORT//
    rabbit.purge_all()        # before each test: delete every queue/exchange
    rabbit.restart()          # same node name, ports and data: durable data survives
    rabbit.stop()             # nothing (beam.smp, epmd, erl_child_setup) left behind

Each node gets its own node name, AMQP/distribution/epmd ports (free ports
found by binding port 0), cookie, mnesia and log folders under the workdir.
Everything the node starts (the rabbitmq-server shell wrapper, beam.smp,
erl_child_setup, inet_gethost and the epmd daemon, which outlives the node)
inherits CELERIAC_RABBIT_NODE=<node> in its environment, so stop() can find and
kill whatever survived the polite shutdown.

Queries: the per-test helpers (purge_all, queue_depth, connection_count) ask
the node directly with erl_call (a few milliseconds); list_queues /
list_exchanges / list_bindings use ``rabbitmqctl ... --formatter json``
(about a second each: the CLI boots an Erlang VM every time).

Run as a script (with /usr/bin/python3, which has py-amqp/kombu/celery):
    tests/interop/rabbitmq.py [--workdir D]   start a node, print its URL, stop on Ctrl-C/SIGTERM
    tests/interop/rabbitmq.py --selftest      start/restart/purge/stop + a real Celery round trip
"""

import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RABBIT_BIN = Path(os.environ.get("RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin"))
RABBITMQ_SERVER = RABBIT_BIN / "rabbitmq-server"
RABBITMQCTL = RABBIT_BIN / "rabbitmqctl"
MARKER = "CELERIAC_RABBIT_NODE"
PYTHON = "/usr/bin/python3"


def _erts_bin(name):
    """Path of an Erlang runtime binary (epmd, erl_call), or None."""
    for pattern in ("/usr/lib/erlang/erts-*/bin/" + name,
                    "/usr/lib/erlang/lib/erl_interface-*/bin/" + name):
        found = sorted(glob.glob(pattern))
        if found:
            return found[-1]
    return shutil.which(name)


def free_ports(count):
    """count distinct free TCP ports on 127.0.0.1 (all bound at once, so no duplicates)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll predicate() until truthy; return its value or raise AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def _processes_with_env(key, value):
    """PIDs of live (non-zombie) processes whose environment holds key=value."""
    needle = ("%s=%s" % (key, value)).encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                env = f.read().split(b"\0")
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        if needle in env and stat[stat.rfind(")") + 2:][:1] != "Z":
            pids.append(int(entry))
    return pids


# Erlang snippets run inside the node by erl_call (RabbitMQ 3.10 internals).
_ERL_PURGE = r"""
Skip = fun(<<"amq.", _/binary>>) -> true; (<<>>) -> true; (_) -> false end,
Qs = [Q || Q <- rabbit_amqqueue:list(),
           not Skip(element(4, amqqueue:get_name(Q)))],
[rabbit_amqqueue:delete(Q, false, false, <<"tests">>) || Q <- Qs],
Xs = [element(2, X) || X <- rabbit_exchange:list(),
                       not Skip(element(4, element(2, X)))],
[rabbit_exchange:delete(XName, false, <<"tests">>) || XName <- Xs],
{length(Qs), length(Xs)}.
"""

_ERL_PURGE_MESSAGES = r"""
Qs = [Q || Q <- rabbit_amqqueue:list(), amqqueue:is_durable(Q)],
[rabbit_amqqueue:purge(Q) || Q <- Qs],
{purged, length(Qs)}.
"""

_ERL_DEPTH = r"""
case rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, list_to_binary([%s]))) of
    {ok, Q} ->
        [{_, R}, {_, U}] = rabbit_amqqueue:info(Q, [messages_ready, messages_unacknowledged]),
        {depth, R + U};
    _ -> {depth, not_found}
end.
"""

_ERL_CONNECTIONS = "{count, length(rabbit_networking:connections())}.\n"


class RabbitError(RuntimeError):
    pass


class RabbitServer:
    """One RabbitMQ node: start(), url, purge_all(), restart(), kill(), stop()."""

    def __init__(self, workdir, node=None, tls=None):
        """tls: {"cacertfile", "certfile", "keyfile"} adds a TLS listener on tls_port."""
        self.workdir = Path(workdir).resolve()
        self.port, self.dist_port, self.epmd_port, self.tls_port = free_ports(4)
        self.tls = tls
        short = node or "celeriac-%d-%s" % (os.getpid(), secrets.token_hex(4))
        self.node = short if "@" in short else short + "@localhost"
        self.cookie = secrets.token_hex(16).upper()
        self.base = self.workdir / "rabbit"
        self.log_path = self.workdir / "rabbitmq.log"
        self.proc = None
        self._log = None
        self.start_seconds = None  # how long the last start() took

    def __repr__(self):
        return "<RabbitServer %s port=%d pid=%s>" % (
            self.node, self.port, self.proc and self.proc.pid)

    @property
    def url(self):
        return "amqp://guest:guest@127.0.0.1:%d//" % self.port

    @property
    def tls_url(self):
        return "amqps://guest:guest@127.0.0.1:%d//" % self.tls_port

    # ------------------------------------------------------------------ lifecycle

    def _write_config(self):
        b = self.base
        for d in (b, b / "mnesia", b / "log"):
            d.mkdir(parents=True, exist_ok=True)
        (b / "enabled_plugins").write_text("[].\n")
        (b / "rabbitmq-env.conf").write_text("")  # instead of /etc/rabbitmq/rabbitmq-env.conf
        (b / "rabbitmq.conf").write_text(
            "listeners.tcp.default = 127.0.0.1:%d\n"
            "loopback_users = none\n"
            "log.console = true\n"
            "log.console.level = info\n"
            "log.console.use_colors = off\n"
            "log.file = false\n"
            "disk_free_limit.absolute = 1MB\n" % self.port
            + ("listeners.ssl.default = 127.0.0.1:%d\n"
               "ssl_options.cacertfile = %s\n"
               "ssl_options.certfile = %s\n"
               "ssl_options.keyfile = %s\n"
               "ssl_options.verify = verify_none\n"
               "ssl_options.fail_if_no_peer_cert = false\n"
               % (self.tls_port, self.tls["cacertfile"], self.tls["certfile"],
                  self.tls["keyfile"]) if self.tls else ""))
        cookie = b / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        self.cookie = cookie.read_text().strip()

    def env(self):
        """Environment for rabbitmq-server / rabbitmqctl / epmd of this node."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        b = self.base
        env.update({
            MARKER: self.node,
            "HOME": str(b),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_PID_FILE": str(b / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "ERL_CRASH_DUMP": str(b / "erl_crash.dump"),
            "LC_ALL": "C.UTF-8",
        })
        return env

    def log_text(self, tail=8000):
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=60):
        if self.alive():
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        t0 = time.monotonic()
        self._log = open(self.log_path, "ab")
        self._log.write(("### %s start %s\n" % (time.strftime("%H:%M:%S"), self.node)).encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            [str(RABBITMQ_SERVER)], env=self.env(), cwd=str(self.base),
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise RabbitError("rabbitmq-server %s exited with %s before it was ready; "
                                  "log %s:\n%s" % (self.node, self.proc.returncode,
                                                   self.log_path, self.log_text()))
            return self.ping()

        try:
            wait_until(ready, timeout, interval=0.2,
                       what="RabbitMQ %s on port %d" % (self.node, self.port))
        except AssertionError as exc:
            self.stop()
            raise RabbitError("%s; log %s:\n%s" % (exc, self.log_path, self.log_text())) from None
        except BaseException:
            self.stop()  # the failed boot still leaves an epmd behind
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def ping(self, timeout=2):
        """True if an AMQP connection (guest/guest) to the node opens."""
        import amqp
        conn = amqp.Connection("127.0.0.1:%d" % self.port, userid="guest", password="guest",
                               connect_timeout=timeout, read_timeout=timeout,
                               write_timeout=timeout)
        try:
            conn.connect()
            return True
        except Exception:
            return False
        finally:
            try:
                conn.collect()
            except Exception:
                pass

    def stop(self, timeout=30):
        """Polite ``rabbitmqctl stop``, else SIGTERM/SIGKILL; then epmd -kill and a
        sweep of every process carrying this node's marker.  Idempotent."""
        if self.alive():
            try:
                self.ctl("stop", timeout=timeout)
            except RabbitError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    self.proc.wait(10)
        if self.proc is not None:
            # beam.smp and erl_child_setup share the wrapper's process group.
            self._signal_group(signal.SIGKILL)
        self._kill_epmd()
        self._sweep()
        if self._log:
            self._log.close()
            self._log = None

    def restart(self, timeout=60):
        """Stop and start again: same node name, ports, cookie and data folder, so
        durable queues and persistent messages survive."""
        self.stop()
        return self.start(timeout)

    def kill(self):
        """SIGKILL the node abruptly (crash test).  epmd stays up; start() reuses it
        and stop() removes it."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def _signal_group(self, sig):
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_epmd(self):
        epmd = _erts_bin("epmd")
        if not epmd:
            return
        env = self.env()
        try:
            subprocess.run([epmd, "-kill"], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def _sweep(self, timeout=10):
        """SIGKILL whatever still carries this node's marker and wait for it to go."""
        deadline = time.monotonic() + timeout
        while True:
            left = _processes_with_env(MARKER, self.node)
            if not left:
                return
            if time.monotonic() > deadline:
                raise RabbitError("processes of %s survived stop(): %s" % (self.node, left))
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def leftover_processes(self):
        """Live processes started for this node (should be [] after stop())."""
        return _processes_with_env(MARKER, self.node)

    # ------------------------------------------------------------------ queries

    def ctl(self, *args, timeout=60):
        """Run ``rabbitmqctl -n NODE ARGS``; return stdout (raises RabbitError)."""
        argv = [str(RABBITMQCTL), "-n", self.node] + [str(a) for a in args]
        try:
            res = subprocess.run(argv, env=self.env(), stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RabbitError("%s timed out after %ss" % (" ".join(argv), timeout)) from None
        if res.returncode != 0:
            raise RabbitError("%s failed (%d): %s%s" % (
                " ".join(argv), res.returncode, res.stdout.decode(errors="replace"),
                res.stderr.decode(errors="replace")))
        return res.stdout.decode(errors="replace")

    def _ctl_json(self, *args):
        """rabbitmqctl list_* as a list of dicts; "arguments" (JSON: [[key, type,
        value], ...]) becomes a plain {key: value} dict."""
        out = self.ctl(*args, "--formatter", "json", "--quiet").strip()
        rows = json.loads(out) if out else []
        for row in rows:
            if isinstance(row.get("arguments"), list):
                row["arguments"] = {a[0]: a[-1] for a in row["arguments"]}
        return rows

    def erl(self, expr, timeout=30):
        """Evaluate Erlang expressions in the node (erl_call, milliseconds); returns
        the printed result term as text, whitespace removed ("{ok,...}")."""
        erl_call = _erts_bin("erl_call")
        if not erl_call:
            raise RabbitError("erl_call not found")
        argv = [erl_call, "-sname", self.node, "-c", self.cookie, "-e",
                "-timeout", str(int(timeout))]
        try:
            res = subprocess.run(argv, input=expr.encode(), env=self.env(),
                                 capture_output=True, timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            raise RabbitError("erl_call on %s timed out" % self.node) from None
        out = re.sub(r"\s+", "", res.stdout.decode(errors="replace"))
        if res.returncode != 0 or not out.startswith("{ok,"):
            raise RabbitError("erl_call on %s failed (%d): %s%s" % (
                self.node, res.returncode, out, res.stderr.decode(errors="replace")))
        return out

    def purge_all(self):
        """Delete every queue (except amq.*) and every non-default exchange of vhost /
        (and their bindings).  Returns (queues deleted, exchanges deleted)."""
        out = self.erl(_ERL_PURGE)
        m = re.search(r"\{(\d+),(\d+)\}", out)
        if not m:
            raise RabbitError("purge_all: unexpected reply %r" % out)
        return int(m.group(1)), int(m.group(2))

    def purge_messages(self):
        """Empty every durable queue of vhost /, deleting nothing: consumers (a
        running worker, a client's rpc reply queue) keep their queues."""
        out = self.erl(_ERL_PURGE_MESSAGES)
        m = re.search(r"\{purged,(\d+)\}", out)
        if not m:
            raise RabbitError("purge_messages: unexpected reply %r" % out)
        return int(m.group(1))

    def queue_depth(self, name):
        """Messages ready + unacknowledged in queue name; None if it does not exist."""
        out = self.erl(_ERL_DEPTH % ",".join(str(b) for b in name.encode()))
        m = re.search(r"\{depth,(\d+|not_found)\}", out)
        if not m:
            raise RabbitError("queue_depth: unexpected reply %r" % out)
        return None if m.group(1) == "not_found" else int(m.group(1))

    def connection_count(self):
        out = self.erl(_ERL_CONNECTIONS)
        m = re.search(r"\{count,(\d+)\}", out)
        if not m:
            raise RabbitError("connection_count: unexpected reply %r" % out)
        return int(m.group(1))

    def list_queues(self):
        """[{name, durable, auto_delete, arguments, messages_ready,
        messages_unacknowledged, consumers}] for vhost /."""
        return self._ctl_json("list_queues", "name", "durable", "auto_delete", "arguments",
                              "messages_ready", "messages_unacknowledged", "consumers")

    def list_exchanges(self):
        """[{name, type, durable, auto_delete, internal, arguments}] for vhost /."""
        return self._ctl_json("list_exchanges", "name", "type", "durable", "auto_delete",
                              "internal", "arguments")

    def list_bindings(self):
        """[{source_name, source_kind, destination_name, destination_kind,
        routing_key, arguments}] for vhost /."""
        return self._ctl_json("list_bindings", "source_name", "source_kind",
                              "destination_name", "destination_kind", "routing_key",
                              "arguments")


# --------------------------------------------------------------------------- self-test

_SELFTEST_APP = '''
import os
from celery import Celery

app = Celery("rabbit_selftest_app", broker=os.environ["SELFTEST_BROKER"], backend="rpc://")


@app.task
def add(x, y):
    return x + y
'''


def _timed(label, fn, *args, **kw):
    t0 = time.monotonic()
    value = fn(*args, **kw)
    print("  %-34s %6.2fs" % (label, time.monotonic() - t0), flush=True)
    return value


def _celery_round_trip(rabbit, tmp):
    """A real Celery worker (-P solo) and client against the node, rpc:// results."""
    appdir = Path(tmp) / "celery-app"
    appdir.mkdir()
    (appdir / "rabbit_selftest_app.py").write_text(_SELFTEST_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env.update(SELFTEST_BROKER=rabbit.url, PYTHONPATH=str(appdir),
               PYTHONDONTWRITEBYTECODE="1", LC_ALL="C.UTF-8")
    log_path = Path(tmp) / "celery-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "rabbit_selftest_app", "worker", "-P", "solo",
             "-c", "1", "-l", "info", "--without-mingle", "--without-gossip"],
            cwd=str(appdir), env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready():
            if worker.poll() is not None:
                raise RabbitError("celery worker exited with %s:\n%s"
                                  % (worker.returncode, log_path.read_text()[-4000:]))
            return re.search(rb"@\S+ ready\.", log_path.read_bytes())
        wait_until(ready, 60, interval=0.1, what="celery worker 'ready.'")
        sys.path.insert(0, str(appdir))
        os.environ["SELFTEST_BROKER"] = rabbit.url
        try:
            import rabbit_selftest_app as mod
            result = mod.add.apply_async((2, 3))
            value = result.get(timeout=30)
            mod.app.close()
        finally:
            sys.path.remove(str(appdir))
        assert value == 5, value
        return value
    finally:
        if worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.wait(10)


def _selftest(workdir=None):
    import kombu

    tmp = tempfile.mkdtemp(prefix="rabbit-selftest-", dir=workdir)
    rabbit = RabbitServer(Path(tmp) / "node")
    print("self-test in %s (node %s)" % (tmp, rabbit.node), flush=True)
    ok = False
    try:
        _timed("start", rabbit.start)
        print("  url %s" % rabbit.url)
        exchange = kombu.Exchange("selftest.x", type="direct", durable=True)
        durable = kombu.Queue("selftest.durable", exchange, routing_key="k", durable=True)
        transient = kombu.Queue("selftest.transient", exchange, routing_key="t",
                                durable=False, auto_delete=False,
                                queue_arguments={"x-max-priority": 5})
        with kombu.Connection(rabbit.url) as conn:
            conn.ensure_connection(max_retries=3)
            producer = conn.Producer()
            producer.publish({"hello": "durable"}, exchange=exchange, routing_key="k",
                             declare=[durable, transient], delivery_mode=2)
            producer.publish({"hello": "transient"}, exchange=exchange, routing_key="t",
                             delivery_mode=1)
            assert rabbit.connection_count() == 1, rabbit.connection_count()
        assert _timed("queue_depth", rabbit.queue_depth, "selftest.durable") == 1
        assert rabbit.queue_depth("missing \"q\" \u00e9") is None
        queues = {q["name"]: q for q in _timed("list_queues (rabbitmqctl)", rabbit.list_queues)}
        assert queues["selftest.durable"]["durable"] is True, queues
        assert queues["selftest.durable"]["messages_ready"] == 1, queues
        assert queues["selftest.transient"]["arguments"] == {"x-max-priority": 5}, queues
        assert set(queues["selftest.durable"]) >= {
            "name", "durable", "auto_delete", "arguments", "messages_ready",
            "messages_unacknowledged", "consumers"}, queues
        exchanges = {x["name"]: x for x in rabbit.list_exchanges()}
        assert exchanges["selftest.x"]["type"] == "direct", exchanges
        bindings = rabbit.list_bindings()
        assert any(b["source_name"] == "selftest.x" and b["destination_name"] ==
                   "selftest.durable" and b["routing_key"] == "k" for b in bindings), bindings

        _timed("restart", rabbit.restart)
        assert rabbit.queue_depth("selftest.durable") == 1, "persistent message lost"
        assert rabbit.queue_depth("selftest.transient") is None, "transient queue survived"
        with kombu.Connection(rabbit.url) as conn:
            conn.ensure_connection(max_retries=3)
            msg = conn.SimpleQueue(durable).get(timeout=5)
            assert msg.payload == {"hello": "durable"}, msg.payload
            msg.ack()

        counts = _timed("purge_all", rabbit.purge_all)
        assert counts == (1, 1), counts  # selftest.durable, selftest.x
        assert not [q for q in rabbit.list_queues()], rabbit.list_queues()
        assert all(x["name"] == "" or x["name"].startswith("amq.")
                   for x in rabbit.list_exchanges()), rabbit.list_exchanges()
        samples = []
        for _ in range(5):
            t0 = time.monotonic()
            rabbit.purge_all()
            samples.append(time.monotonic() - t0)
        print("  %-34s %6.3fs max" % ("purge_all (empty, x5)", max(samples)))

        rabbit.kill()
        assert not rabbit.alive()
        _timed("start after kill()", rabbit.start)

        assert _timed("celery round trip", _celery_round_trip, rabbit, tmp) == 5
        names = {q["name"]: q for q in rabbit.list_queues()}
        assert names["celery"]["durable"] and names["celery"]["arguments"] == {}, names
        assert rabbit.purge_all()[0] >= 1  # celery's queues/exchanges were there
        ok = True
    finally:
        _timed("stop", rabbit.stop)
        left = rabbit.leftover_processes()
        stray = subprocess.run(["pgrep", "-af", "beam|epmd|erl_child_setup"],
                               capture_output=True, text=True).stdout
        print("  leftover processes of this node: %s" % (left or "none"))
        print("  pgrep beam|epmd|erl_child_setup (any owner):\n    %s"
              % (stray.strip().replace("\n", "\n    ") or "none"))
        assert not left, left
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("logs kept in %s" % tmp)
    print("self-test OK")


# --------------------------------------------------------------------------- main

def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="node folder (default: a temp dir, removed at exit)")
    parser.add_argument("--selftest", action="store_true",
                        help="start/restart/purge/stop a node and run a Celery round trip")
    parser.add_argument("--timeout", type=float, default=60, help="start timeout (s)")
    args = parser.parse_args(argv)
    if args.selftest:
        _selftest(args.workdir)
        return 0

    workdir = args.workdir or tempfile.mkdtemp(prefix="rabbit-")
    rabbit = RabbitServer(workdir)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        rabbit.start(args.timeout)
        print(rabbit.url)
        print("node %s, log %s, started in %.1fs; Ctrl-C to stop"
              % (rabbit.node, rabbit.log_path, rabbit.start_seconds), file=sys.stderr,
              flush=True)
        sys.stdout.flush()
        while rabbit.alive():
            time.sleep(0.5)
        print("rabbitmq-server exited with %s" % rabbit.proc.returncode, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        rabbit.stop()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
