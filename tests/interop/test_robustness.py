"""Crashes, malformed messages, shutdown and kill -9 recovery, on both worker kinds."""

import base64
import json
import pickle
import signal
import time
import uuid

import pytest

from conftest import GET_TIMEOUT, KINDS, require_celeriac, scaled, wait_exit, wait_until
from helpers import (envelope, json_body, push_raw, send, stored_meta, task_headers,
                     wait_queue_drained)


# --------------------------------------------------------------------------- crash

@pytest.mark.redis_backend
def test_crash_is_worker_lost(worker, kind, celery_app, redis_server, differential):
    """examples.crash kills the pool child: FAILURE WorkerLostError, and the worker goes on."""
    result = send(celery_app, "send_task", "examples.crash")
    with pytest.raises(Exception) as info:
        result.get(timeout=GET_TIMEOUT)
    assert type(info.value).__name__ == "WorkerLostError", repr(info.value)
    assert result.state == "FAILURE"
    meta = stored_meta(redis_server, result.id)
    assert meta["result"]["exc_type"] == "WorkerLostError"
    assert meta["result"]["exc_module"] == "billiard.exceptions"
    # The pool recovers: several tasks succeed afterwards (both child slots).
    followers = [send(celery_app, "delay", "examples.add", [i, i]) for i in range(4)]
    assert [r.get(timeout=GET_TIMEOUT) for r in followers] == [0, 2, 4, 6]
    assert worker.alive()
    differential.check(kind, "crash-meta", {k: meta["result"][k] for k in ("exc_type", "exc_module")})


def test_crash_twice_in_parallel(worker, kind, celery_app):
    results = [send(celery_app, "send_task", "examples.crash") for _ in range(2)]
    for r in results:
        with pytest.raises(Exception) as info:
            r.get(timeout=GET_TIMEOUT)
        assert type(info.value).__name__ == "WorkerLostError", repr(info.value)
    assert send(celery_app, "apply_async", "examples.add", [20, 22]).get(timeout=GET_TIMEOUT) == 42


# --------------------------------------------------------------------------- raw pushes

def _good_raw(task, args, kwargs, ensure_ascii=True):
    tid = str(uuid.uuid4())
    return tid, envelope(task_headers(task, tid), json_body(args, kwargs, ensure_ascii))


def _malformed(case):
    tid = str(uuid.uuid4())
    hdr = task_headers("examples.add", tid, "(1, 2)")
    good_body = json_body([1, 2], {})
    if case == "invalid-json":
        return '{"body": "W1tdLCB7fSwge31d", "headers": {not json'
    if case == "not-an-object":
        return '["a", "json", "array"]'
    if case == "bad-base64":
        return envelope(hdr, "!!!not*base64@@@", body_is_base64=True)
    if case == "base64-not-json":
        return envelope(hdr, b"this is not json")
    if case == "body-not-array":
        return envelope(hdr, b'{"args": [1, 2]}')
    if case == "missing-headers":
        return envelope(None, good_body)
    if case == "headers-without-task":
        h = dict(hdr)
        del h["task"]
        return envelope(h, good_body)
    if case == "pickle-content-type":
        # A benign pickle; a worker must refuse the content type, never unpickle.
        return envelope(hdr, pickle.dumps(((1, 2), {}, {})),
                        content_type="application/x-python-serialize",
                        content_encoding="binary")
    if case == "empty-string":
        return ""
    raise ValueError(case)


# Cases that the reference celery 5.2.6 / kombu 5.2.4 worker does not survive:
# kombu raises inside Channel._brpop_read and the worker exits with
# "Unrecoverable error" (verified by hand).  celeriac must survive them.
PYTHON_DIES_ON = {"invalid-json", "not-an-object", "bad-base64", "empty-string"}

MALFORMED = ["invalid-json", "not-an-object", "empty-string", "bad-base64", "base64-not-json",
             "body-not-array", "missing-headers", "headers-without-task", "pickle-content-type"]


@pytest.mark.parametrize("case", MALFORMED)
@pytest.mark.redis_broker
def test_malformed_message_is_dropped(worker, kind, celery_app, redis_server, case):
    if kind == "python" and case in PYTHON_DIES_ON:
        pytest.skip("celeriac-only: the Python worker (kombu 5.2.4) exits on this message")
    r0 = redis_server.client(0)
    push_raw(r0, _malformed(case))
    assert send(celery_app, "apply_async", "examples.add", [1, 2]).get(timeout=GET_TIMEOUT) == 3
    assert worker.alive(), "worker died on a %s message" % case
    # Dropped or rejected: nothing left in the queue or in unacked.
    assert wait_queue_drained(r0, scaled(5)) == {}
    assert send(celery_app, "delay", "examples.echo", [case]).get(timeout=GET_TIMEOUT) == \
        {"args": [case], "kwargs": {}}


@pytest.mark.redis_broker
def test_raw_utf8_body(worker, kind, celery_app, redis_server, differential):
    """Non-Python producers send raw UTF-8 (not \\u escapes) inside the body."""
    text = "h\u00e9llo \u2603 \U0001F600"
    tid, payload = _good_raw("examples.echo", [text], {"k\u00e9": text}, ensure_ascii=False)
    push_raw(redis_server.client(0), payload)
    result = celery_app.app.AsyncResult(tid)
    value = result.get(timeout=GET_TIMEOUT)
    assert value == {"args": [text], "kwargs": {"k\u00e9": text}}
    differential.check(kind, "raw-utf8", value)


@pytest.mark.parametrize("priority", [0, 3, 6, 9])
@pytest.mark.redis_broker
def test_raw_priority_lists(worker, kind, celery_app, redis_server, priority):
    """A message LPUSHed straight onto celery\\x06\\x16<step> is consumed."""
    tid, payload = _good_raw("examples.add", [priority, 100], {})
    push_raw(redis_server.client(0), payload, priority=priority)
    assert celery_app.app.AsyncResult(tid).get(timeout=GET_TIMEOUT) == priority + 100


@pytest.mark.redis_broker
@pytest.mark.redis_backend
def test_priority_order_on_redis(start_worker, kind, celery_app, redis_server):
    """With the queue preloaded, lower priority numbers are served first (contract 2.3)."""
    r0 = redis_server.client(0)
    order = [9, 6, 3, 0]
    ids = []
    for p in order:
        tid, payload = _good_raw("examples.sleep", [0.2], {})
        push_raw(r0, payload, priority=p)
        ids.append(tid)
    start_worker(kind, env={"CELERY_WORKER_PREFETCH_MULTIPLIER": "1"},
                 args=["--prefetch-multiplier", "1"] if kind == "celeriac" else [],
                 concurrency=1)
    for tid in ids:
        celery_app.app.AsyncResult(tid).get(timeout=GET_TIMEOUT)
    done = {p: stored_meta(redis_server, tid)["date_done"] for p, tid in zip(order, ids)}
    assert sorted(done, key=done.get) == [0, 3, 6, 9], done


# --------------------------------------------------------------------------- shutdown

@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.redis_backend  # waits for STARTED by polling .state, which rpc:// can't serve
def test_warm_shutdown(start_worker, kind, celery_app, sig):
    """SIGTERM (or one SIGINT) while examples.sleep(2) runs: the task finishes SUCCESS
    and the worker exits 0."""
    w = start_worker(kind, env={"CELERY_TASK_TRACK_STARTED": "1"})
    result = send(celery_app, "apply_async", "examples.sleep", [2])
    wait_until(lambda: result.state == "STARTED", GET_TIMEOUT, what="task STARTED")
    w.send_signal(getattr(signal, sig))
    rc = wait_exit(w, scaled(30))
    assert rc == 0, "exit status %s after %s" % (rc, sig)
    assert result.get(timeout=5) == 2
    assert result.state == "SUCCESS"
    assert not w.leftover_processes(), "pool processes outlived the worker"


@pytest.mark.redis_backend  # as test_warm_shutdown
def test_sighup_restarts(start_worker, kind, celery_app):
    """SIGHUP while examples.sleep(2) runs: Celery's warm restart -- the running task
    finishes SUCCESS, the worker re-executes itself (same pid) and takes new tasks."""
    if kind == "python":
        pytest.skip("celery 5.2.6 restarts by exec'ing celery/__main__.py as a script, which "
                    "dies with 'ImportError: attempted relative import' when the worker was "
                    "started as `python3 -m celery` (seen in this test)")
    w = start_worker(kind, env={"CELERY_TASK_TRACK_STARTED": "1"})
    result = send(celery_app, "apply_async", "examples.sleep", [2])
    wait_until(lambda: result.state == "STARTED", GET_TIMEOUT, what="task STARTED")
    w.send_signal(signal.SIGHUP)
    assert result.get(timeout=GET_TIMEOUT) == 2
    assert send(celery_app, "delay", "examples.add", [2, 3]).get(timeout=GET_TIMEOUT) == 5
    assert w.alive(), "the worker exited instead of restarting"


@pytest.mark.parametrize("sig", ["SIGQUIT", "SIGINT-twice"])
@pytest.mark.redis_backend  # as test_warm_shutdown
def test_cold_shutdown(start_worker, kind, celery_app, sig):
    """SIGQUIT (or SIGINT twice) while examples.sleep(30) runs: the worker exits promptly
    and takes its pool processes with it."""
    w = start_worker(kind, env={"CELERY_TASK_TRACK_STARTED": "1"})
    result = send(celery_app, "apply_async", "examples.sleep", [30])
    wait_until(lambda: result.state == "STARTED", GET_TIMEOUT, what="task STARTED")
    if sig == "SIGQUIT":
        w.send_signal(signal.SIGQUIT)
    else:
        w.send_signal(signal.SIGINT)
        time.sleep(0.5)
        w.send_signal(signal.SIGINT)
    start = time.monotonic()
    wait_exit(w, scaled(10))
    assert time.monotonic() - start < scaled(10)
    assert not w.leftover_processes(), "pool processes outlived the worker"
    assert result.state != "SUCCESS"


# --------------------------------------------------------------------------- kill -9

ACKS_LATE_ENV = {
    "CELERY_TASK_ACKS_LATE": "1",
    "CELERY_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": 3}),
}
VISIBILITY = 3.0


@pytest.mark.parametrize("restart_kind", KINDS, ids=["then-python", "then-celeriac"])
@pytest.mark.redis_broker
def test_kill9_acks_late_recovers(start_worker, kind, restart_kind, celery_app, redis_server):
    """kill -9 (whole process group) with acks_late tasks in flight; a restarted worker
    (same or other kind, same short visibility timeout) restores and completes them all."""
    if restart_kind == "celeriac":
        require_celeriac()
    r0 = redis_server.client(0)
    victim = start_worker(kind, env=ACKS_LATE_ENV)
    results = [send(celery_app, "apply_async", "examples.sleep", [2]) for _ in range(4)]
    # Delivered to the worker and held in unacked (acks_late): kill it mid-task, well
    # before the 2 s tasks can finish.  (With the default prefetch all 4 are held.)
    wait_until(lambda: r0.hlen("unacked") >= 2, GET_TIMEOUT, what="messages held in unacked")
    try:
        wait_until(lambda: r0.hlen("unacked") >= 4, 0.5)
    except AssertionError:
        pass
    time.sleep(0.3)
    victim.kill()
    held = r0.hlen("unacked")
    assert held >= 1, "no unacked entries survived the kill"
    not_done = [r for r in results if r.state != "SUCCESS"]
    assert not_done, "all tasks finished before the kill; the test proves nothing"
    # The entries are restorable once older than the visibility timeout.
    scores = [s for _, s in r0.zrange("unacked_index", 0, -1, withscores=True)]
    assert len(scores) == held, "unacked_index (%d) and unacked (%d) disagree" % (len(scores), held)
    wait_until(lambda: time.time() > max(scores) + VISIBILITY + 0.2, VISIBILITY + 5,
               what="visibility timeout to pass")
    start_worker(restart_kind, env=ACKS_LATE_ENV)
    values = [r.get(timeout=scaled(40)) for r in results]
    assert values == [2, 2, 2, 2]
    assert all(r.state == "SUCCESS" for r in results)
    assert wait_queue_drained(r0, scaled(10)) == {}


# --------------------------------------------------------------------------- ack emulation

@pytest.mark.parametrize("route", ["default-exchange", "celery-exchange"])
@pytest.mark.redis_broker
def test_unacked_entry_is_what_kombu_writes(start_worker, kind, celery_app, redis_server,
                                            route):
    """A held acks_late message is recorded in `unacked` exactly as kombu's QoS.append
    writes it: json.dumps([envelope, exchange, routing_key]), and indexed in
    `unacked_index` by delivery tag (contract 2.4)."""
    r0 = redis_server.client(0)
    options = {"exchange": "celery", "routing_key": "celery"} if route == "celery-exchange" else {}
    # Routing through the named exchange needs the binding a consumer declares; the
    # producer's own declaration is cached and not repeated after a flush.
    r0.sadd("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
    result = send(celery_app, "apply_async", "examples.sleep", [3], **options)
    raw = r0.lindex("celery", 0)
    assert raw is not None, "the producer's message is not on the queue"
    env = json.loads(raw)
    tag = env["properties"]["delivery_tag"]
    di = env["properties"]["delivery_info"]
    start_worker(kind, env=ACKS_LATE_ENV)
    wait_until(lambda: r0.hexists("unacked", tag), GET_TIMEOUT, what="message held in unacked")
    stored = r0.hget("unacked", tag).decode()
    assert stored == json.dumps([env, di["exchange"], di["routing_key"]])
    assert r0.zscore("unacked_index", tag) is not None
    assert result.get(timeout=GET_TIMEOUT) == 3
    wait_until(lambda: not r0.hexists("unacked", tag), GET_TIMEOUT, what="ack")


@pytest.mark.redis_backend  # polls .state
def test_reject_on_worker_lost_requeues(start_worker, kind, celery_app, differential):
    """acks_late + reject_on_worker_lost: a task whose process dies is put back on the
    queue and run again (here it crashes every time), and no FAILURE is stored."""
    w = start_worker(kind, env={"CELERY_TASK_ACKS_LATE": "1",
                                "CELERY_TASK_REJECT_ON_WORKER_LOST": "1"})
    offset = w.log_size()
    result = send(celery_app, "send_task", "examples.crash")
    # Each run kills a pool process; the worker logs each loss.
    wait_until(lambda: w.log_text(offset).count("WorkerLostError") >= 2 or
               w.log_text(offset).count("requeued (reject_on_worker_lost)") >= 2,
               scaled(30), interval=0.2, what="the crashing task to run twice")
    assert result.state == "PENDING", result.state
    assert w.alive()
    differential.check(kind, "reject-on-worker-lost", result.state)
