"""Canvas, differential: link callbacks, chains and link_error errbacks sent by
the worker that ran the parent task (Celery's tracer), and chords joined on the
Redis result backend, compared between the Python worker and celeriac on every
broker setting."""

import re
import time
import uuid

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError

from conftest import GET_TIMEOUT, REDIS_BACKEND, _track, wait_until
from helpers import stored_meta

# Walking parents and children reads other tasks' results, which rpc:// (one
# reply queue, each state delivered once) cannot do: these run with Redis
# results (redis and amqp+redis settings); test_chain_value also on rpc://.
redis_backend = pytest.mark.redis_backend


def _tasks(celery_app):
    t = celery_app.app.tasks
    return t["examples.add"], t["examples.echo"], t["examples.fail"]


def _children_shape(res):
    """A result's children as the client sees them: kind and value per child."""
    shape = []
    for c in res.children or []:
        if hasattr(c, "results"):  # GroupResult
            shape.append(["group", sorted(c.get(timeout=GET_TIMEOUT))])
        else:
            shape.append(["task", c.get(timeout=GET_TIMEOUT)])
    return shape


def test_chain_value(worker, kind, celery_app, differential):
    """The value a producer waits for, on every backend including rpc://."""
    add, _, _ = _tasks(celery_app)
    res = chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    value = res.get(timeout=GET_TIMEOUT)
    assert value == 10
    differential.check(kind, "chain-value", value)


@redis_backend
def test_chain(worker, kind, celery_app, differential):
    """chain(add(2, 2), add(4), add(8)): each result becomes the next task's
    first argument; the last result is 16, and every step names the next as
    its child."""
    add, _, _ = _tasks(celery_app)
    res = chain(add.s(2, 2), add.s(4), add.s(8)).apply_async()
    assert res.get(timeout=GET_TIMEOUT) == 16
    steps = []
    node = res
    while node is not None:
        steps.append(node.get(timeout=GET_TIMEOUT))
        node = node.parent
    assert steps == [16, 8, 4]
    first = res.parent.parent
    assert [c.id for c in first.children] == [res.parent.id]
    shape = [steps, _children_shape(first), _children_shape(res)]
    differential.check(kind, "chain", shape)


def test_chain_immutable_and_options(worker, kind, celery_app, differential):
    """An immutable step ignores the previous result; a step's own options
    (here a countdown) are honoured."""
    add, _, _ = _tasks(celery_app)
    res = chain(add.s(2, 2), add.si(10, 1), add.s(5).set(countdown=0.5)).apply_async()
    assert res.get(timeout=GET_TIMEOUT) == 16
    differential.check(kind, "chain-immutable", res.get(timeout=GET_TIMEOUT))


@redis_backend
def test_chain_middle_task_fails(worker, kind, celery_app, differential):
    """The failing step stops the chain: get() re-raises its error, the
    next step never runs but is marked failed."""
    add, _, fail = _tasks(celery_app)
    res = chain(add.s(1, 1), fail.si("middle"), add.s(1)).apply_async()
    with pytest.raises(ValueError) as info:
        res.get(timeout=GET_TIMEOUT)
    assert info.value.args == ("middle",)
    assert res.parent.state == "FAILURE" and res.parent.parent.get(timeout=GET_TIMEOUT) == 2
    # Celery marks the rest of the chain failed with the same error, so the
    # last step is FAILURE without having run.  get() raised as soon as the
    # middle step failed (it follows parents): the Python worker stores the
    # rest just after its own record, hence the wait.
    wait_until(lambda: res.state == "FAILURE", GET_TIMEOUT, what="the last step FAILURE")
    differential.check(kind, "chain-fails", [res.parent.state, res.state,
                                             list(info.value.args)])


@redis_backend
def test_link_callback(worker, kind, celery_app, differential):
    """apply_async(link=add.s(10)): the callback gets the result first."""
    add, _, _ = _tasks(celery_app)
    res = add.apply_async((2, 2), link=add.s(10))
    assert res.get(timeout=GET_TIMEOUT) == 4
    shape = _children_shape(res)
    assert shape == [["task", 14]]
    differential.check(kind, "link", shape)


@redis_backend
def test_several_links_go_as_a_group(worker, kind, celery_app, differential):
    """Two callbacks: Celery sends them as one group, and the parent's
    children hold the GroupResult."""
    add, _, _ = _tasks(celery_app)
    res = add.apply_async((1, 2), link=[add.s(10), add.s(20)])
    assert res.get(timeout=GET_TIMEOUT) == 3
    shape = _children_shape(res)
    assert shape == [["group", [13, 23]]]
    differential.check(kind, "links-group", shape)


@redis_backend
def test_link_error_errback(worker, kind, celery_app, differential):
    """link_error: the errback is sent as a task with the failed task's id as
    its argument, in a one-member group.  Celery does that for errbacks that
    take one argument (here examples.fail, which then raises ValueError(id));
    it calls errbacks taking (request, exc, traceback) in-process, which a C
    worker cannot do (docs/compatibility.md)."""
    _, _, fail = _tasks(celery_app)
    eb_id = str(uuid.uuid4())
    res = fail.apply_async(("boom",), link_error=fail.s().set(task_id=eb_id))
    with pytest.raises(ValueError):
        res.get(timeout=GET_TIMEOUT)
    eb = celery_app.app.AsyncResult(eb_id)
    with pytest.raises(ValueError) as info:
        eb.get(timeout=GET_TIMEOUT)
    assert info.value.args == (res.id,)
    differential.check(kind, "link-error", [res.state, eb.state, eb.parent is None])


# ---------------------------------------------------------------- chords
#
# Celery's RedisBackend.on_chord_part_return: each header task adds
# [1, id, state, result] to the sorted set celery-taskset-meta-<group>.j; the
# worker that brings its count to .s (+ .t) sends the body with the results
# in group_index order and deletes the keys.


def _chord_keys(redis_server, group_id):
    r = redis_server.client(1)
    return sorted(k.decode().rsplit(".", 1)[1]
                  for k in r.keys("celery-taskset-meta-%s.*" % group_id))


def _body_runs(worker, offset, body_id):
    """How often the body's task ran, from the worker's log."""
    return len(re.findall(r"Task examples\.echo\[%s\] (?:succeeded|raised)" % body_id,
                          worker.log_text(offset)))


@redis_backend
def test_chord_value(worker, kind, celery_app, differential, clean_redis):
    """chord([add(i, i) for i in range(5)])(echo): the body gets the header's
    results in header order, runs once, and the chord's keys are deleted."""
    add, echo, _ = _tasks(celery_app)
    offset = worker.log_size()
    res = chord([add.s(i, i) for i in range(5)])(echo.s("tail"))
    value = res.get(timeout=GET_TIMEOUT)
    assert value == {"args": [[0, 2, 4, 6, 8], "tail"], "kwargs": {}}
    group_id = res.parent.id
    assert res.parent.join(timeout=GET_TIMEOUT) == [0, 2, 4, 6, 8]
    meta = stored_meta(clean_redis, res.id)
    time.sleep(0.3)
    runs = _body_runs(worker, offset, res.id)
    assert runs == 1
    keys = _chord_keys(clean_redis, group_id)
    assert keys == [], keys
    # The body's record: the header's last task is its parent.
    assert meta["status"] == "SUCCESS" and meta["parent_id"] in [r.id for r in res.parent.results]
    differential.check(kind, "chord-value", [value, runs, keys, sorted(meta)])


@redis_backend
def test_chord_order_follows_the_header(worker, kind, celery_app, differential):
    """Header tasks that finish out of order: the body still gets the
    results in header order (group_index is the sorted set's score)."""
    _, echo, _ = _tasks(celery_app)
    sleep = celery_app.app.tasks["examples.sleep"]
    res = chord([sleep.s(0.6), sleep.s(0.0), sleep.s(0.3), sleep.s(0.1)])(echo.s())
    value = res.get(timeout=GET_TIMEOUT)
    assert value == {"args": [[0.6, 0.0, 0.3, 0.1]], "kwargs": {}}
    differential.check(kind, "chord-order", value)


@redis_backend
def test_chord_header_task_fails(worker, kind, celery_app, differential, clean_redis):
    """A failing header task: the body does not run, its result is FAILURE
    with ChordError("Dependency <id> raised ValueError('bad')"), its
    link_error errback is sent with the body's id; the keys are left to
    expire, as Celery leaves them."""
    add, echo, fail = _tasks(celery_app)
    offset = worker.log_size()
    eb_id = str(uuid.uuid4())
    body = echo.s()
    body.link_error(fail.s().set(task_id=eb_id))
    res = chord([add.s(1, 1), fail.s("bad"), add.s(2, 2)])(body)
    # get() would re-raise the header's ValueError first (it follows parents).
    exc = res.get(timeout=GET_TIMEOUT, propagate=False)
    assert isinstance(exc, ChordError), exc
    failed = res.parent.results[1]
    assert str(exc) == "Dependency %s raised ValueError('bad')" % failed.id
    assert res.state == "FAILURE"
    meta = stored_meta(clean_redis, res.id)
    assert meta["result"] == {"exc_type": "ChordError",
                              "exc_message": [str(exc)],
                              "exc_module": "celery.exceptions"}
    # The errback's record, read directly: the client's AsyncResult.get()
    # sometimes misses a result stored while it subscribes (seen with the
    # Python worker, whose errback is slower to arrive).
    wait_until(lambda: stored_meta(clean_redis, eb_id) is not None, GET_TIMEOUT,
               what="the errback's result")
    eb_meta = stored_meta(clean_redis, eb_id)
    assert eb_meta["status"] == "FAILURE"
    assert eb_meta["result"]["exc_message"] == [res.id]
    time.sleep(0.3)
    runs = _body_runs(worker, offset, res.id)
    assert runs == 0
    keys = _chord_keys(clean_redis, res.parent.id)
    shape = [res.state, type(exc).__name__, str(exc).replace(failed.id, "<id>"),
             sorted(meta), runs, keys,
             [r.state for r in res.parent.results]]
    differential.check(kind, "chord-fails", shape)


@redis_backend
def test_chord_shared_by_python_and_celeriac(start_worker, workers, request, celery_app):
    """A mixed fleet: a Python worker and celeriac consume the same queue and
    finish header tasks of the same chords; the join is the same Redis-side
    counter, so every chord's body runs once with every result."""
    add, echo, _ = _tasks(celery_app)
    py = start_worker("python")
    c = workers.make("celeriac", tag="mixed")
    workers.workers.append(c)
    c.start()
    _track(request, c)
    try:
        results = []
        for n in range(6):
            results.append(chord([add.s(i, n) for i in range(12)])(echo.s()))
        for n, res in enumerate(results):
            assert res.get(timeout=GET_TIMEOUT) == {
                "args": [[i + n for i in range(12)]], "kwargs": {}}
        time.sleep(0.3)
        logs = [py.log_text(), c.log_text()]
        # Both kinds ran header tasks, and each body ran exactly once overall.
        assert all("examples.add[" in text for text in logs), "one worker took every task"
        for res in results:
            runs = sum(len(re.findall(r"Task examples\.echo\[%s\] succeeded" % res.id, t))
                       for t in logs)
            assert runs == 1, (res.id, runs)
    finally:
        if c.alive():
            problems = workers.stop_checked(c)
            assert not problems, problems


@redis_backend
def test_chord_header_chain(worker, kind, celery_app, differential):
    """A chain in the header counts once (its last step is the chord part);
    a chain whose first step fails marks its last step FAILURE and returns
    it as the chord's part, so the chord ends in ChordError instead of
    hanging (Celery's mark_as_failure)."""
    add, echo, fail = _tasks(celery_app)
    res = chord([chain(add.s(1, 1), add.s(10)), add.s(2, 2)])(echo.s())
    value = res.get(timeout=GET_TIMEOUT)
    assert value == {"args": [[12, 4]], "kwargs": {}}
    bad = chord([chain(fail.si("x"), add.s(1)), add.s(2, 2)])(echo.s())
    exc = bad.get(timeout=GET_TIMEOUT, propagate=False)
    assert isinstance(exc, ChordError), exc
    last = bad.parent.results[0]
    assert str(exc) == "Dependency %s raised ValueError('x')" % last.id
    differential.check(kind, "chord-header-chain",
                       [value, bad.state, str(exc).replace(last.id, "<id>")])


@redis_backend
def test_chord_then_task(worker, kind, celery_app, differential):
    """chord(header, body) | task: the body is a chain; its first task gets
    the header's results, the next one the body's."""
    add, echo, _ = _tasks(celery_app)
    res = (chord([add.s(1, 1), add.s(2, 2)], add.s([7])) | add.s([9]))()
    value = res.get(timeout=GET_TIMEOUT)
    assert value == [2, 4, 7, 9]
    differential.check(kind, "chord-then-task", value)


@redis_backend
def test_chord_header_group(worker, kind, celery_app, differential):
    """A group inside the header is unrolled into it (group._freeze_unroll):
    its tasks are chord parts of their own and the body gets every result
    flat.  The unrolling pushes the inner group with deque.extendleft, which
    reverses it: Celery 5.2.6 passes [4, 2, 6], not [2, 4, 6].  A chain
    beside it counts once."""
    add, echo, _ = _tasks(celery_app)
    res = chord([group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)])(echo.s())
    value = res.get(timeout=GET_TIMEOUT)
    assert value == {"args": [[4, 2, 6]], "kwargs": {}}
    mixed = chord([chain(add.s(1, 1), add.s(10)), group(add.s(2, 2), add.s(3, 3))])(echo.s())
    mixed_value = mixed.get(timeout=GET_TIMEOUT)
    assert mixed_value == {"args": [[12, 6, 4]], "kwargs": {}}
    differential.check(kind, "chord-header-group", [value, mixed_value])


@redis_backend
def test_chord_in_chord_header(worker, kind, celery_app, differential):
    """A chord inside a header: the inner chord's body is the outer chord's
    part, so the outer body gets the inner body's value in its place."""
    add, echo, _ = _tasks(celery_app)
    res = chord([chord([add.s(1, 1), add.s(2, 2)], add.s([7])), add.s(3, 3)])(echo.s())
    value = res.get(timeout=GET_TIMEOUT)
    assert value == {"args": [[[2, 4, 7], 6]], "kwargs": {}}
    differential.check(kind, "chord-in-chord-header", value)


@redis_backend
def test_chord_group_body(worker, kind, celery_app, differential):
    """A group as the body: each of its tasks gets the header's results
    prepended; the chord's result is the group's."""
    add, echo, _ = _tasks(celery_app)
    res = chord([add.s(1, 1), add.s(2, 2)])(group(echo.s("a"), echo.s("b")))
    value = res.get(timeout=GET_TIMEOUT)
    assert value == [{"args": [[2, 4], "a"], "kwargs": {}},
                     {"args": [[2, 4], "b"], "kwargs": {}}]
    differential.check(kind, "chord-group-body", [type(res).__name__, value])


@redis_backend
def test_chord_group_body_fails(worker, kind, celery_app, differential, clean_redis):
    """A failing header with a group body: chord_error_from_stack stores the
    ChordError under the body's id, which for a group is the group id; its
    members are never sent and stay PENDING (GroupResult.get would wait),
    as in Celery 5.2.6."""
    add, echo, fail = _tasks(celery_app)
    res = chord([add.s(1, 1), fail.s("bad")])(group(echo.s("a"), echo.s("b")))
    meta = wait_until(lambda: stored_meta(clean_redis, res.id), GET_TIMEOUT,
                      what="the group's FAILURE")
    assert meta["status"] == "FAILURE", meta
    assert meta["result"]["exc_type"] == "ChordError", meta
    time.sleep(0.5)
    members = [stored_meta(clean_redis, r.id) for r in res.results]
    assert members == [None, None]
    message = meta["result"]["exc_message"][0]  # "Dependency <id> raised ValueError('bad')"
    differential.check(kind, "chord-group-body-fails",
                       [meta["status"], meta["result"]["exc_type"],
                        re.sub(r"[0-9a-f-]{36}", "<id>", message), members])


@pytest.mark.skipif(REDIS_BACKEND, reason="rpc:// results only")
def test_chord_rpc_backend(worker, kind, celery_app, differential):
    """rpc:// has no chords in Celery 5.2.6: the producer refuses one
    (NotImplementedError from RPCBackend.ensure_chords_allowed).  A header
    task sent with a `chord` anyway (apply_async(chord=...)) runs and its
    result comes back, and the body is never sent: the RPC backend's
    on_chord_part_return does nothing (celeriac logs an error line)."""
    add, echo, _ = _tasks(celery_app)
    with pytest.raises(NotImplementedError):
        chord([add.s(1, 1), add.s(2, 2)])(echo.s())
    body = echo.s("body")
    body_id = str(uuid.uuid4())
    body.set(task_id=body_id)
    offset = worker.log_size()
    r = add.apply_async((5, 5), chord=body, group_id=str(uuid.uuid4()), group_index=0)
    assert r.get(timeout=GET_TIMEOUT) == 10
    after = add.apply_async((1, 2))
    assert after.get(timeout=GET_TIMEOUT) == 3
    time.sleep(0.5)
    assert body_id not in worker.log_text(offset), "the chord body ran on rpc://"
    differential.check(kind, "chord-rpc", [10, 3])
