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
