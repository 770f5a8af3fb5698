"""Canvas, differential: link callbacks, chains and link_error errbacks sent by
the worker that ran the parent task (Celery's tracer), compared between the
Python worker and celeriac on every broker setting."""

import uuid

import pytest
from celery import chain

from conftest import GET_TIMEOUT

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
    # last step is FAILURE without having run.
    assert res.state == "FAILURE"
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
