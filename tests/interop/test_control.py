"""Remote control (pidbox), differential where both workers answer: ping,
revoke of a waiting (ETA) task, revoke before arrival, revoke with
terminate of a running task, and an unknown command."""

import time
import uuid

import pytest

from conftest import GET_TIMEOUT, scaled, wait_until
from helpers import send

# Tests that poll a task's state need Redis results (rpc:// delivers each
# state once, to whoever waits): redis and amqp+redis settings.
redis_backend = pytest.mark.redis_backend


def _node(celery_app, worker):
    """The worker's nodename, as ping answers it."""
    replies = wait_until(lambda: celery_app.app.control.ping(timeout=1.0), scaled(15),
                         what="a ping reply")
    names = [n for r in replies for n in r]
    mine = [n for n in names if n.split("@", 1)[0] == worker.name]
    assert mine, "no reply from %s among %s" % (worker.name, names)
    return mine[0]


def test_ping(worker, kind, celery_app, differential):
    node = _node(celery_app, worker)
    replies = celery_app.app.control.ping(destination=[node], timeout=2.0)
    assert replies == [{node: {"ok": "pong"}}]
    differential.check(kind, "control-ping", [list(r.values()) for r in replies])


def test_unknown_command(worker, kind, celery_app, differential):
    node = _node(celery_app, worker)
    replies = celery_app.app.control.broadcast("no_such_command", destination=[node],
                                               reply=True, timeout=2.0)
    assert replies == [{node: {"error": "KeyError('no_such_command')"}}]
    differential.check(kind, "control-unknown", [list(r.values()) for r in replies])


@redis_backend
def test_revoke_eta_task(worker, kind, celery_app, differential):
    """A task held for its ETA, then revoked: when due it is discarded, REVOKED."""
    node = _node(celery_app, worker)
    r = send(celery_app, "apply_async", "examples.add", [1, 2], countdown=2)
    time.sleep(0.5)  # received and held
    replies = celery_app.app.control.revoke(r.id, destination=[node], reply=True, timeout=2.0)
    assert replies == [{node: {"ok": "tasks %s flagged as revoked" % r.id}}]
    wait_until(lambda: r.state == "REVOKED", scaled(15), what="REVOKED")
    with pytest.raises(Exception) as info:
        r.get(timeout=GET_TIMEOUT)
    shape = [r.state, type(info.value).__name__, list(info.value.args)]
    assert shape[1] == "TaskRevokedError", shape
    differential.check(kind, "revoke-eta", shape)


@redis_backend
def test_revoke_before_arrival(worker, kind, celery_app, differential):
    """AsyncResult.revoke() (no reply wanted) before the task is sent: never run."""
    _node(celery_app, worker)
    task_id = str(uuid.uuid4())
    celery_app.app.AsyncResult(task_id).revoke()
    time.sleep(0.5)
    r = send(celery_app, "apply_async", "examples.add", [2, 2], task_id=task_id)
    wait_until(lambda: r.state == "REVOKED", scaled(15), what="REVOKED")
    after = send(celery_app, "apply_async", "examples.add", [3, 3])
    assert after.get(timeout=GET_TIMEOUT) == 6
    differential.check(kind, "revoke-before", r.state)


@redis_backend
def test_revoke_terminate_running(worker, kind, celery_app, differential):
    """revoke(terminate=True) of a running task: its process is killed (and
    replaced), the task is REVOKED, the next task runs."""
    node = _node(celery_app, worker)
    r = send(celery_app, "apply_async", "examples.sleep", [30])
    wait_until(lambda: r.state in ("STARTED", "PENDING") and _running(celery_app, node, r.id)
               if kind == "python" else _celeriac_running(worker, r.id),
               scaled(15), what="the task running")
    replies = celery_app.app.control.revoke(r.id, destination=[node], terminate=True,
                                            reply=True, timeout=2.0)
    assert replies == [{node: {"ok": "terminate: %s" % r.id}}]
    wait_until(lambda: r.state == "REVOKED", scaled(15), what="REVOKED")
    after = send(celery_app, "apply_async", "examples.add", [4, 4])
    assert after.get(timeout=GET_TIMEOUT) == 8
    differential.check(kind, "revoke-terminate", r.state)


def test_revoke_queued_never_runs(worker, kind, celery_app, differential, tmp_path):
    """Both processes busy with long tasks, three more tasks waiting, the middle
    one revoked (no terminate): it never runs (no trace in the marker file) and
    is REVOKED; the other two run.  Celery keeps waiting tasks from its
    processes; celeriac hands them to the pool's queue ahead of time, so this
    is its shared revoked table at work."""
    node = _node(celery_app, worker)
    marker = str(tmp_path / "runs")
    blockers = [send(celery_app, "apply_async", "examples.sleep", [4]) for _ in range(2)]
    time.sleep(1.0)  # both started
    waiting = [send(celery_app, "apply_async", "examples.touch", [marker]) for _ in range(3)]
    time.sleep(0.5)  # received (celeriac: in the pool's queue)
    replies = celery_app.app.control.revoke(waiting[1].id, destination=[node], reply=True,
                                            timeout=2.0)
    assert replies == [{node: {"ok": "tasks %s flagged as revoked" % waiting[1].id}}]
    assert [b.get(timeout=GET_TIMEOUT) for b in blockers] == [4, 4]
    outcomes = []
    for r in waiting:
        try:
            outcomes.append(["SUCCESS", r.get(timeout=GET_TIMEOUT) == r.id])
        except Exception as exc:  # the revoked one: TaskRevokedError
            outcomes.append([type(exc).__name__, list(exc.args)])
    with open(marker) as f:
        lines = f.read().split()
    ran = [i for i, r in enumerate(waiting) if r.id in lines]
    assert ran == [0, 2], "runs: %s" % ran
    assert outcomes[1][0] == "TaskRevokedError", outcomes
    assert waiting[1].state == "REVOKED"
    differential.check(kind, "revoke-queued", [outcomes, ran, waiting[1].state])


def _running(celery_app, node, task_id):
    active = celery_app.app.control.inspect(destination=[node], timeout=1.0).active() or {}
    return any(t["id"] == task_id for t in active.get(node, []))


def _celeriac_running(worker, task_id):
    # celeriac answers `inspect active` with the monitoring work; until then
    # its log shows the start (the task takes 30 s, so a received line and a
    # second's wait are enough).
    return ("%s] received" % task_id) in worker.log_text(0) and (time.sleep(1.0) or True)


@redis_backend
def test_statedb_keeps_revoked_ids(start_worker, kind, celery_app, tmp_path):
    """--statedb: an id revoked before a restart is still revoked after it."""
    if kind == "python":
        pytest.skip("Celery's statedb is a Python shelve; this checks celeriac's own file")
    state = str(tmp_path / "state.json")
    w = start_worker(kind, args=["--statedb", state])
    _node(celery_app, w)
    task_id = str(uuid.uuid4())
    celery_app.app.control.revoke(task_id)
    wait_until(lambda: task_id in open(state).read() if __import__("os").path.exists(state)
               else False, scaled(10), what="the revoked id in the state file")
    w.stop()
    w2 = start_worker(kind, args=["--statedb", state])
    _node(celery_app, w2)
    r = send(celery_app, "apply_async", "examples.add", [2, 2], task_id=task_id)
    wait_until(lambda: r.state == "REVOKED", scaled(15), what="REVOKED after the restart")


# --------------------------------------------------------------------------
# inspect / control commands Flower and `celery inspect` use, shapes compared


def _keys(obj):
    """Nested key structure of a reply (dict keys, and the keys of list items)."""
    if isinstance(obj, dict):
        return {k: _keys(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return [_keys(obj[0])] if obj and isinstance(obj[0], (dict, list)) else "list"
    return type(obj).__name__


def _inspect(celery_app, node, method, *args, **kw):
    insp = celery_app.app.control.inspect(destination=[node], timeout=2.0)
    reply = getattr(insp, method)(*args, **kw)
    assert reply and node in reply, "no %s reply from %s: %r" % (method, node, reply)
    return reply[node]


def test_inspect_stats_queues_registered(worker, kind, celery_app, differential):
    node = _node(celery_app, worker)
    stats = _inspect(celery_app, node, "stats")
    for k in ("total", "pid", "clock", "uptime", "pool", "broker", "prefetch_count", "rusage"):
        assert k in stats, k
    assert stats["pool"]["max-concurrency"] == 2 and len(stats["pool"]["processes"]) == 2
    assert isinstance(stats["clock"], str)
    queues = _inspect(celery_app, node, "active_queues")
    assert [q["name"] for q in queues] == ["celery"]
    reg = _inspect(celery_app, node, "registered")
    assert "examples.add" in reg and "examples.limited [rate_limit=10/s]" in reg
    shape = {"stats": sorted(stats), "pool": sorted(stats["pool"]),
             "broker": sorted(stats["broker"]), "rusage": sorted(stats["rusage"]),
             "active_queues": _keys(queues),
             # chaos.record is in the Python app for tests/chaos only; celeriac loads
             # its C twin (libceleriac-chaos.so) only there.
             "registered": sorted(n for n in reg if not n.startswith("chaos."))}
    differential.check(kind, "inspect-stats-queues-registered", shape)


@redis_backend
def test_inspect_active_scheduled_query(worker, kind, celery_app, differential):
    node = _node(celery_app, worker)
    run = send(celery_app, "apply_async", "examples.sleep", [3])
    later = send(celery_app, "apply_async", "examples.add", [1, 2], countdown=30)
    # (other tests' leftovers may be listed too: pick ours)
    active = wait_until(lambda: [t for t in _inspect(celery_app, node, "active")
                                 if t["id"] == run.id], scaled(15), what="an active task")
    scheduled = wait_until(lambda: [t for t in _inspect(celery_app, node, "scheduled")
                                    if t["request"]["id"] == later.id], scaled(15),
                           what="a scheduled task")
    assert active[0]["args"] == [3]
    q = _inspect(celery_app, node, "query_task", run.id)
    assert q[run.id][0] == "active"
    celery_app.app.control.revoke(later.id)
    assert run.get(timeout=GET_TIMEOUT) == 3
    shape = {"active": _keys(active), "scheduled": _keys(scheduled),
             "query_task": [q[run.id][0], _keys(q[run.id][1])]}
    differential.check(kind, "inspect-active-scheduled", shape)


def test_control_rate_limit_and_time_limit(worker, kind, celery_app, differential):
    node = _node(celery_app, worker)
    ctl = celery_app.app.control
    out = [ctl.rate_limit("examples.add", "100/s", destination=[node], reply=True, timeout=2.0),
           ctl.rate_limit("examples.nope", "1/s", destination=[node], reply=True, timeout=2.0),
           ctl.time_limit("examples.add", soft=10, hard=20, destination=[node], reply=True,
                          timeout=2.0),
           ctl.rate_limit("examples.add", None, destination=[node], reply=True, timeout=2.0)]
    assert out[0] == [{node: {"ok": "new rate limit set successfully"}}]
    assert out[1] == [{node: {"error": "unknown task"}}]
    assert out[2] == [{node: {"ok": "time limits set successfully"}}]
    r = send(celery_app, "apply_async", "examples.add", [1, 1])
    assert r.get(timeout=GET_TIMEOUT) == 2
    differential.check(kind, "control-limits", [list(o[0].values()) for o in out])


def test_celery_cli_inspect_and_control(worker, kind, celery_app, urls):
    """What an operator types: `celery inspect ping/stats/registered/active_queues`
    and `celery control rate_limit`, exit status 0 and the worker in the output."""
    import os
    import subprocess
    node = _node(celery_app, worker)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    base = ["/usr/bin/python3", "-m", "celery", "-b", urls.broker, "--result-backend",
            urls.backend]
    for cmd in (["inspect", "ping"], ["inspect", "stats"], ["inspect", "registered"],
                ["inspect", "active_queues"],
                ["control", "rate_limit", "examples.add", "50/s"]):
        p = subprocess.run(base + cmd + ["-d", node, "-t", "3"], capture_output=True,
                           text=True, timeout=60, env=env)
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)
        assert node in p.stdout, (cmd, p.stdout)


def test_hello_shares_revoked_ids(worker, kind, celery_app, differential):
    """mingle's hello from another node: its revoked ids are merged and ours
    come back, with the clock."""
    node = _node(celery_app, worker)
    theirs = str(uuid.uuid4())
    replies = celery_app.app.control.broadcast(
        "hello", arguments={"from_node": "other@elsewhere",
                            "revoked": {theirs: [time.monotonic(), theirs]}},
        destination=[node], reply=True, timeout=2.0)
    assert len(replies) == 1 and set(replies[0][node]) == {"revoked", "clock"}
    assert theirs in replies[0][node]["revoked"]
    revoked = celery_app.app.control.inspect(destination=[node], timeout=2.0).revoked()
    assert theirs in revoked[node]
    differential.check(kind, "hello", sorted(replies[0][node]))


@pytest.mark.redis_broker
def test_garbage_on_the_pidbox_channel(worker, kind, celery_app, redis_server):
    """Malformed remote-control messages are logged and dropped; the worker
    still answers the next ping."""
    if kind == "python":
        pytest.skip("the Python worker stops answering after these (seen here)")
    node = _node(celery_app, worker)
    client = redis_server.client(0)
    for junk in (b"not json", b'{"body": "!!!not base64"}', b'{"body": "e30="}',
                 b'{"body": "W10=", "headers": {"clock": "x"}}'):
        client.publish("/0.celery.pidbox", junk)
    time.sleep(0.3)
    assert worker.alive()
    assert celery_app.app.control.ping(destination=[node], timeout=2.0) == [
        {node: {"ok": "pong"}}]


def test_mixed_cluster_answers_one_broadcast(workers, clean_redis, celery_app):
    """Two celeriac workers and one Python worker on one broker: a single ping
    broadcast and a single `inspect registered` get an answer from each, and
    all three share the queue's work."""
    workers.stop_all()
    started = []
    try:
        for kind in ("celeriac", "celeriac", "python"):
            w = workers.make(kind, tag="mix")
            workers.workers.append(w)
            started.append(w.start())
        names = {w.name for w in started}
        replies = wait_until(
            lambda: (lambda r: r if {n.split("@", 1)[0] for x in r for n in x} >= names
                     else None)(celery_app.app.control.ping(timeout=2.0)),
            scaled(20), what="pings from all three")
        mine = {n: v for x in replies for n, v in x.items() if n.split("@", 1)[0] in names}
        assert len(mine) == 3 and all(v == {"ok": "pong"} for v in mine.values()), replies
        reg = celery_app.app.control.inspect(timeout=2.0).registered()
        ours = {n: v for n, v in reg.items() if n.split("@", 1)[0] in names}
        assert len(ours) == 3 and all("examples.add" in v for v in ours.values()), reg
        rs = [send(celery_app, "apply_async", "examples.add", [i, 1]) for i in range(60)]
        assert [r.get(timeout=GET_TIMEOUT) for r in rs] == [i + 1 for i in range(60)]
    finally:
        for w in started:
            if w.alive():
                workers.stop_checked(w)
