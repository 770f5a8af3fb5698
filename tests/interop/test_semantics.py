"""Worker semantics beyond a plain call, each run against both worker kinds:
several queues, ignore_result, result_extended, expiry, and what a warm
shutdown does with messages that were prefetched but not started."""

import datetime
import json
import re
import signal
import subprocess
import time

import pytest

from conftest import GET_TIMEOUT, require_celeriac, scaled, wait_exit, wait_until
from helpers import send, stored_meta


def _queues_args(kind, queues):
    # Both harness workers already consume `celery`; celeriac's later -Q adds to
    # the list, Celery's replaces it.
    return ["-Q", queues if kind == "python" else queues.replace("celery,", "")]


def test_several_queues(start_worker, kind, celery_app, differential):
    """-Q celery,other: tasks routed to either queue are consumed."""
    start_worker(kind, args=_queues_args(kind, "celery,other"))
    a = send(celery_app, "apply_async", "examples.add", [1, 2])
    b = send(celery_app, "apply_async", "examples.add", [3, 4], queue="other")
    values = [a.get(timeout=GET_TIMEOUT), b.get(timeout=GET_TIMEOUT)]
    assert values == [3, 7]
    differential.check(kind, "several-queues", values)


@pytest.mark.redis_backend
def test_ignore_result_stores_nothing(start_worker, kind, celery_app, redis_server):
    """ignore_result=True: the task runs, no celery-task-meta key is written."""
    start_worker(kind, concurrency=1,
                 env={"CELERY_WORKER_PREFETCH_MULTIPLIER": "1"},
                 args=["--prefetch-multiplier", "1"] if kind == "celeriac" else [])
    ignored = send(celery_app, "apply_async", "examples.add", [1, 1], ignore_result=True)
    barrier = send(celery_app, "apply_async", "examples.add", [2, 2])
    assert barrier.get(timeout=GET_TIMEOUT) == 4  # one process, FIFO: the first has run
    assert stored_meta(redis_server, ignored.id) is None


@pytest.mark.redis_backend
def test_result_extended(start_worker, kind, celery_app, redis_server, differential):
    """result_extended: name, args, kwargs, worker, retries and queue are stored."""
    w = start_worker(kind, env={"CELERY_RESULT_EXTENDED": "1"})
    r = send(celery_app, "apply_async", "examples.add", [2], {"y": 5})
    assert r.get(timeout=GET_TIMEOUT) == 7
    meta = stored_meta(redis_server, r.id)
    assert meta["name"] == "examples.add"
    assert meta["args"] == [2] and meta["kwargs"] == {"y": 5}
    assert meta["retries"] == 0 and meta["queue"] == "celery"
    assert meta["worker"] == w.name + "@" + meta["worker"].split("@", 1)[1]
    shape = {k: meta[k] for k in meta if k not in ("date_done", "task_id", "worker")}
    differential.check(kind, "result-extended", [sorted(meta), shape])


@pytest.mark.redis_backend
@pytest.mark.redis_broker  # on AMQP Celery sets the `expiration` property: RabbitMQ drops it
def test_expired_task_is_revoked(start_worker, kind, celery_app, redis_server, differential):
    """A task whose `expires` has passed when it arrives is not run: REVOKED,
    TaskRevokedError('expired')."""
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=30)
    r = send(celery_app, "apply_async", "examples.add", [1, 1], expires=past)
    start_worker(kind)
    meta = wait_until(lambda: stored_meta(redis_server, r.id), GET_TIMEOUT, what="a stored state")
    assert meta["status"] == "REVOKED"
    assert meta["result"]["exc_type"] == "TaskRevokedError"
    assert meta["result"]["exc_message"] == ["expired"]
    differential.check(kind, "expired", [meta["status"], meta["result"], meta["traceback"]])


@pytest.mark.redis_broker
def test_warm_shutdown_restores_prefetched(start_worker, kind, celery_app, redis_server):
    """SIGTERM while one task runs and three more were prefetched: the running
    task finishes, the three go back to the queue (RPUSH, redelivered), nothing
    is left in unacked, and a later worker runs them."""
    if kind == "python":
        # Celery 5.2.6 is no reference here: depending on timing it starts one of
        # the reserved tasks, leaves one in `unacked` for the visibility timeout,
        # or restores all three (all three seen in CI runs).
        pytest.skip("celeriac-only: Celery's own behaviour varies with timing")
    r0 = redis_server.client(0)
    w = start_worker(kind, concurrency=1, env={"CELERY_TASK_TRACK_STARTED": "1"})
    running = send(celery_app, "apply_async", "examples.sleep", [1.5])
    wait_until(lambda: running.state == "STARTED", GET_TIMEOUT, what="task STARTED")
    rest = [send(celery_app, "apply_async", "examples.add", [i, i]) for i in range(3)]
    wait_until(lambda: r0.llen("celery") == 0, GET_TIMEOUT, what="prefetch of the rest")
    w.send_signal(signal.SIGTERM)
    assert wait_exit(w, scaled(30)) == 0
    assert running.get(timeout=5) == 1.5
    states = [r.state for r in rest]
    held = r0.hlen("unacked")
    assert states == ["PENDING"] * 3, states
    assert r0.llen("celery") == 3 and held == 0
    for raw in r0.lrange("celery", 0, -1):
        env = json.loads(raw)
        assert env["headers"].get("redelivered") is True
        assert env["properties"]["delivery_info"].get("redelivered") is True
    start_worker(kind)
    assert [r.get(timeout=GET_TIMEOUT) for r in rest] == [0, 2, 4]


def test_unreachable_broker_exits_64():
    """celeriac: a broker still unreachable after broker_connection_max_retries is
    exit 64, with the password never printed."""
    require_celeriac()
    from conftest import CELERIAC_BIN, CELERIAC_EXAMPLES_SO
    env = {"CELERY_BROKER_CONNECTION_MAX_RETRIES": "1", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([str(CELERIAC_BIN), "worker", "-A", str(CELERIAC_EXAMPLES_SO),
                        "-b", "redis://:s3cr3t-pw@127.0.0.1:1/0", "-l", "info"],
                       env=env, capture_output=True, timeout=scaled(30), cwd="/")
    assert p.returncode == 64, p.stderr
    out = (p.stdout + p.stderr).decode()
    assert "Cannot connect to broker" in out
    assert "s3cr3t-pw" not in out


# --------------------------------------------------------------------------
# Time limits (billiard's soft/hard timeouts)


def _failure_shape(r):
    """What a client sees of a failed task: state, exception class and args."""
    with pytest.raises(Exception) as info:
        r.get(timeout=GET_TIMEOUT)
    exc = info.value
    return [r.state, type(exc).__name__, list(exc.args)]


@pytest.mark.parametrize("where", ["message", "worker"])
def test_soft_time_limit(start_worker, kind, celery_app, differential, where):
    """A soft limit interrupts examples.sleep (Python's time.sleep is interrupted
    by SoftTimeLimitExceeded): FAILURE with SoftTimeLimitExceeded(), and the
    process lives on to run the next task."""
    if where == "worker":
        start_worker(kind, concurrency=1, args=["--soft-time-limit", "0.5"])
        r = send(celery_app, "apply_async", "examples.sleep", [30])
    else:
        start_worker(kind, concurrency=1)
        r = send(celery_app, "apply_async", "examples.sleep", [30], soft_time_limit=0.5)
    t0 = time.monotonic()
    shape = _failure_shape(r)
    assert time.monotonic() - t0 < scaled(15), "the soft limit did not end the task"
    assert shape == ["FAILURE", "SoftTimeLimitExceeded", []], shape
    nxt = send(celery_app, "apply_async", "examples.add", [2, 3])
    assert nxt.get(timeout=GET_TIMEOUT) == 5
    differential.check(kind, "soft-time-limit-" + where, shape)


@pytest.mark.parametrize("where", ["message", "worker"])
def test_hard_time_limit(start_worker, kind, celery_app, differential, where):
    """A hard limit kills the pool process: FAILURE with TimeLimitExceeded(limit);
    the process is replaced and the next task succeeds."""
    if where == "worker":
        start_worker(kind, concurrency=1, args=["--time-limit", "1"])
        r = send(celery_app, "apply_async", "examples.sleep", [30])
    else:
        start_worker(kind, concurrency=1)
        r = send(celery_app, "apply_async", "examples.sleep", [30], time_limit=1)
    t0 = time.monotonic()
    shape = _failure_shape(r)
    assert time.monotonic() - t0 < scaled(20), "the hard limit did not end the task"
    assert shape == ["FAILURE", "TimeLimitExceeded", [1]], shape
    nxt = send(celery_app, "apply_async", "examples.add", [4, 5])
    assert nxt.get(timeout=GET_TIMEOUT) == 9
    differential.check(kind, "hard-time-limit-" + where, shape)


# --------------------------------------------------------------------------
# Rate limits


# With rpc:// results the client itself collects 30 results at about one a
# second (Python and celeriac alike, measured 29-36 s): the rate limit is
# checked with Redis results (redis and amqp+redis settings).
def _limited_burst(kind, celery_app, n, rate, limit, between=None):
    """Sends n examples.limited at once (then calls between()) and checks that
    every result comes back, in order of sending, no sooner than the token
    bucket allows ((n - 1) / rate s, less 5% for timer slack) and, for
    celeriac, within `limit` s.  The reference worker is not under test for
    speed: Celery's own timer took 15 s for the 30-task burst in one CI run
    (3 s in others) and 71 s for the 100-task one.  Returns the values."""
    t0 = time.monotonic()
    rs = [send(celery_app, "apply_async", "examples.limited", [i]) for i in range(n)]
    if between:
        between()
    values = [r.get(timeout=scaled(60)) for r in rs]
    took = time.monotonic() - t0
    assert [v["args"] for v in values] == [[i] for i in range(n)]
    assert took >= 0.95 * (n - 1) / rate, "%d tasks at %g/s finished in %.2fs" % (n, rate, took)
    if kind == "celeriac":
        assert took < scaled(limit), "rate limit held tasks too long: %.2fs" % took
    return values


@pytest.mark.redis_backend
def test_rate_limit_burst(start_worker, kind, celery_app, differential):
    """A burst of 30 examples.limited (rate_limit "10/s", Celery's token bucket
    of capacity 1): all succeed, starts spaced ~0.1 s apart, so the burst
    takes about 3 s on either worker; an unlimited task sent after them
    still runs."""
    start_worker(kind, concurrency=2)

    def free_task_runs():
        free = send(celery_app, "apply_async", "examples.add", [1, 1])
        assert free.get(timeout=GET_TIMEOUT) == 2

    values = _limited_burst(kind, celery_app, 30, 10, 15, between=free_task_runs)
    differential.check(kind, "rate-limit-burst", values)


@pytest.mark.redis_broker
def test_rate_limit_burst_of_100(start_worker, kind, celery_app, differential):
    """Issue 6's burst of 100: examples.limited raised to 50/s at run time with
    the `rate_limit` control command, then 100 sent at once, checked as the
    burst of 30 above.  The reply to the control command is compared too.

    Redis setting only, to spare CI time: Celery 5.2.6's own rate-limit timer
    took 71 s for this burst here (celeriac: 3 s); the 30-task burst runs on
    the redis and amqp+redis settings."""
    w = start_worker(kind, concurrency=2)
    replies = wait_until(lambda: celery_app.app.control.ping(timeout=1.0), scaled(15),
                         what="a ping reply")
    node = next(n for r in replies for n in r if n.split("@", 1)[0] == w.name)
    reply = celery_app.app.control.rate_limit("examples.limited", "50/s", destination=[node],
                                              reply=True, timeout=2.0)
    assert reply == [{node: {"ok": "new rate limit set successfully"}}], reply
    values = _limited_burst(kind, celery_app, 100, 50, 10)
    differential.check(kind, "rate-limit-burst-100",
                       {"reply": list(reply[0].values()), "values": values})


# --------------------------------------------------------------------------
# Retries (Task.retry with Celery's defaults: max_retries 3)


def _normalise_ids(value, *ids):
    """ids -> <idN>; a traceback -> its last line (file paths differ: Python's
    frames against celeriac's one synthesized frame)."""
    if isinstance(value, dict) and isinstance(value.get("traceback"), str):
        value = dict(value, traceback=value["traceback"].strip().splitlines()[-1])
    text = json.dumps(value)
    for i, task_id in enumerate(ids):
        text = text.replace(task_id, "<id%d>" % i)
    return json.loads(text)


def _wait_for_retry_record(redis_server, task_id):
    """The RETRY record, read once per poll: a second read could already see
    the record of the next run (a retry waits only 0.2-0.5 s here)."""
    def retry_record():
        meta = stored_meta(redis_server, task_id)
        return meta if meta and meta.get("status") == "RETRY" else None
    return wait_until(retry_record, scaled(10), what="a RETRY record")


@pytest.mark.redis_backend
def test_retry_then_success(start_worker, kind, celery_app, redis_server, differential):
    """retry(countdown=0.5) twice, then success: the RETRY record while it waits
    and the final value and record are the Python worker's."""
    start_worker(kind)
    r = send(celery_app, "apply_async", "examples.flaky", [2])
    retry_meta = _wait_for_retry_record(redis_server, r.id)
    assert r.get(timeout=GET_TIMEOUT) == 2
    final = stored_meta(redis_server, r.id)
    shape = [_normalise_ids({k: v for k, v in retry_meta.items() if k != "date_done"}, r.id),
             _normalise_ids({k: v for k, v in final.items() if k != "date_done"}, r.id)]
    differential.check(kind, "retry-then-success", shape)


@pytest.mark.redis_backend
def test_retry_max_retries_exceeded(start_worker, kind, celery_app, redis_server, differential):
    """Past max_retries (3) a retry() without exc fails with MaxRetriesExceededError
    naming the task, as Celery's Task.retry raises it."""
    start_worker(kind)
    r = send(celery_app, "apply_async", "examples.flaky", [10], {"countdown": 0.1})
    with pytest.raises(Exception) as info:
        r.get(timeout=GET_TIMEOUT)
    exc = info.value
    assert type(exc).__name__ == "MaxRetriesExceededError"
    final = stored_meta(redis_server, r.id)
    shape = [type(exc).__name__, _normalise_ids(list(exc.args), r.id),
             _normalise_ids(final["result"], r.id), final["status"]]
    differential.check(kind, "retry-max-exceeded", shape)


@pytest.mark.redis_backend
@pytest.mark.parametrize("fail_times", [2, 5])
def test_autoretry(start_worker, kind, celery_app, redis_server, differential, fail_times):
    """autoretry_for=(ValueError,): each ValueError becomes a retry with the
    exception recorded in the RETRY state; once max_retries (3) is spent the
    ValueError itself is the failure (Task.retry re-raises exc)."""
    start_worker(kind)
    r = send(celery_app, "apply_async", "examples.autoretry", [fail_times])
    retry_meta = _wait_for_retry_record(redis_server, r.id)
    if fail_times <= 3:
        assert r.get(timeout=GET_TIMEOUT) == fail_times
    else:
        with pytest.raises(ValueError) as info:
            r.get(timeout=GET_TIMEOUT)
        assert info.value.args == ("attempt 3",)
    final = stored_meta(redis_server, r.id)
    shape = [_normalise_ids({k: v for k, v in retry_meta.items() if k != "date_done"}, r.id),
             _normalise_ids({k: v for k, v in final.items() if k != "date_done"}, r.id)]
    differential.check(kind, "autoretry-%d" % fail_times, shape)


# self.retry(exc=..., countdown=..., eta=..., max_retries=...): examples.retry_with,
# cel_task_retry_ex in C.  (fail_times, options, expected value or exception)
RETRY_WITH_CASES = {
    "exc-then-success": (2, {"countdown": 0.5}, 2),
    "exc-exceeded": (10, {"countdown": 0.1, "max_retries": 2}, ("ValueError", ["attempt 2"])),
    "no-exc-exceeded": (10, {"countdown": 0.1, "max_retries": 1, "exc": False},
                        ("MaxRetriesExceededError", None)),
    "max-retries-0": (10, {"countdown": 0.1, "max_retries": 0}, ("ValueError", ["attempt 0"])),
    "eta": (1, {"eta": 1.0}, 1),  # eta: seconds from now, made absolute below
}


def _runs(marker, task_id):
    try:
        with open(marker) as f:
            return sum(line.strip() == task_id for line in f)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("case", sorted(RETRY_WITH_CASES))
def test_retry_with_options(start_worker, kind, celery_app, differential, tmp_path, case,
                            redis_server):
    """Task.retry's arguments: the RETRY record holds the exc given; past
    max_retries (the call's own limit when given) the task fails with that exc,
    or MaxRetriesExceededError without one; an eta delays the retry to that
    time.  Compared: the client's outcome, the number of runs and, with Redis
    results, the RETRY record (its "Retry at <eta>" line reduced to its form)."""
    from conftest import REDIS_BACKEND
    fail_times, options, expected = RETRY_WITH_CASES[case]
    options = dict(options, marker=str(tmp_path / "runs"))
    start_worker(kind)
    # The eta is made absolute only once the worker is up: a Python worker
    # takes about 1 s to become ready, as long as the eta is ahead, and in CI
    # it found the eta already past and replaced RETRY before a poll saw it.
    if "eta" in options:
        options["eta"] = time.time() + options["eta"]
    t0 = time.monotonic()
    r = send(celery_app, "apply_async", "examples.retry_with", [fail_times, options])
    retry_meta = None
    if REDIS_BACKEND and case in ("exc-then-success", "eta"):
        retry_meta = _wait_for_retry_record(redis_server, r.id)
        retry_meta = _normalise_ids({k: v for k, v in retry_meta.items() if k != "date_done"},
                                    r.id)
        retry_meta["traceback"] = re.sub(r"Retry at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?\+00:00",
                                         "Retry at <eta>", retry_meta["traceback"])
    if isinstance(expected, tuple):
        with pytest.raises(Exception) as info:
            r.get(timeout=GET_TIMEOUT)
        exc = info.value
        assert type(exc).__name__ == expected[0], exc
        if expected[1] is not None:
            assert list(exc.args) == expected[1]
        outcome = [r.state, type(exc).__name__,
                   _normalise_ids(list(exc.args), r.id, options["marker"])]
    else:
        assert r.get(timeout=GET_TIMEOUT) == expected
        outcome = [r.state, expected]
    if case == "eta":
        assert time.monotonic() - t0 >= 0.8, "the retry ran before its eta"
    runs = _runs(options["marker"], r.id)
    assert runs == {"exc-then-success": 3, "exc-exceeded": 3, "no-exc-exceeded": 2,
                    "max-retries-0": 1, "eta": 2}[case]
    if retry_meta is not None:
        assert retry_meta["result"]["exc_type"] == "ValueError", retry_meta
    differential.check(kind, "retry-with-" + case, [outcome, runs, retry_meta])


# --------------------------------------------------------------------------
# ETA edge cases


@pytest.mark.parametrize("case", ["countdown-0", "eta-in-the-past", "countdown-1"])
def test_eta_edges(start_worker, kind, celery_app, differential, case):
    """countdown=0 and an ETA in the past run at once; countdown=1 waits about
    a second, and the value is the same on both workers."""
    start_worker(kind)
    opts = {"countdown-0": {"countdown": 0},
            "eta-in-the-past": {"eta": datetime.datetime.now(datetime.timezone.utc)
                                - datetime.timedelta(seconds=30)},
            "countdown-1": {"countdown": 1}}[case]
    t0 = time.monotonic()
    r = send(celery_app, "apply_async", "examples.add", [20, 22], **opts)
    assert r.get(timeout=GET_TIMEOUT) == 42
    took = time.monotonic() - t0
    if case == "countdown-1":
        assert took >= 0.9, "ran %.2fs after sending, before its ETA" % took
    else:
        assert took < scaled(5)
    differential.check(kind, "eta-" + case, 42)


@pytest.mark.redis_backend
@pytest.mark.redis_broker  # on AMQP Celery sets the `expiration` property: RabbitMQ drops it
def test_expires_before_eta(start_worker, kind, celery_app, redis_server, differential):
    """expires earlier than the ETA: held until due, then discarded as expired
    (REVOKED, TaskRevokedError('expired')), never run."""
    start_worker(kind)
    r = send(celery_app, "apply_async", "examples.add", [1, 1], countdown=2, expires=1)
    wait_until(lambda: (stored_meta(redis_server, r.id) or {}).get("status") == "REVOKED",
               scaled(15), what="REVOKED")
    meta = stored_meta(redis_server, r.id)
    shape = [meta["status"], meta["result"]]
    assert shape[1]["exc_type"] == "TaskRevokedError"
    differential.check(kind, "expires-before-eta", shape)


@pytest.mark.redis_backend
@pytest.mark.parametrize("case", ["message-ignore", "task-ignore", "task-ignore-store-errors"])
def test_failures_and_ignore_result(start_worker, kind, celery_app, redis_server,
                                    differential, case):
    """Celery stores a failure unless the *task* ignores results (here the
    worker's task_ignore_result) — the message's ignore_result=True does not
    stop it — and even then with task_store_errors_even_if_ignored."""
    env = {"CELERY_TASK_IGNORE_RESULT": "0" if case == "message-ignore" else "1",
           "CELERY_TASK_STORE_ERRORS_EVEN_IF_IGNORED":
               "1" if case == "task-ignore-store-errors" else "0"}
    start_worker(kind, concurrency=1, env=env)
    failed = send(celery_app, "apply_async", "examples.fail", ["ignored"],
                  ignore_result=(case == "message-ignore"))
    if case == "task-ignore":
        time.sleep(scaled(2))  # nothing will be stored: give it time to run
        meta = stored_meta(redis_server, failed.id)
    else:
        meta = wait_until(lambda: stored_meta(redis_server, failed.id), scaled(15),
                          what="the FAILURE record")
    shape = None if meta is None else [meta["status"], meta["result"]["exc_type"]]
    assert shape == (None if case == "task-ignore" else ["FAILURE", "ValueError"]), shape
    differential.check(kind, "failure-ignore-" + case, shape)
