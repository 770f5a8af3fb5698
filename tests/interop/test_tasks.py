"""Task results through every Python send method, compared between worker kinds.

Each case asserts the expected value (type-strict: 2 != 2.0 here) on both
kinds, and additionally that celeriac's value equals the Python worker's
(the `differential` fixture records python's values; tests run python first).
"""

import re

import pytest

from conftest import GET_TIMEOUT, strict_equal
from helpers import SEND_METHODS, send, stored_meta

UNICODE = "h\u00e9llo \u2603 \u65e5\u672c\u8a9e \u0627\u0644\u0639\u0631\u0628\u064a\u0629"
ASTRAL = "\U0001F600\U0001F389 \U0001D11E \U00010348 \U0001F9EA"  # emoji, musical G clef, Gothic
NESTED = {
    "list": [1, "two", 3.5, None, True, False, [], {}, [[1, [2, [3]]]]],
    "obj": {"a": {"b": {"c": [{"d": None}, {"e": -1}]}}, "": "empty key"},
    "numbers": [0, -1, 9007199254740993, -(2 ** 63), 2 ** 63 - 1, 1.5, -0.25, 1e300,
                1e-300, 0.1],
    "escapes": "quote\" backslash\\ slash/ nl\n cr\r tab\t bell\x07 ctrl\x1f del\x7f",
}


def _deep(levels):
    value = "bottom"
    for i in range(levels):
        value = [value] if i % 2 else {"level%d" % i: value}
    return value


DEEP = _deep(64)
ONE_MB = "0123456789abcdef" * 65536                # 1 MiB of text
ONE_MB_UNICODE = ("\u00e9\u2603\U0001F600" * 37450)[:100000]  # plus some non-ASCII

# id, task, args, kwargs, expected
CASES = [
    ("add-ints", "examples.add", [2, 3], {}, 5),
    ("add-kwargs", "examples.add", [], {"x": 2, "y": 3}, 5),
    ("add-pos-and-kw", "examples.add", [40], {"y": 2}, 42),
    ("add-strings", "examples.add", ["foo", "bar"], {}, "foobar"),
    ("echo-empty", "examples.echo", [], {}, {"args": [], "kwargs": {}}),
    ("echo-positional", "examples.echo", [1, "two", 3.5, None, True, False], {},
     {"args": [1, "two", 3.5, None, True, False], "kwargs": {}}),
    ("echo-kwargs", "examples.echo", [], {"a": 1, "b": [2, 3], "c": {"d": "e"}},
     {"args": [], "kwargs": {"a": 1, "b": [2, 3], "c": {"d": "e"}}}),
    ("echo-unicode", "examples.echo", [UNICODE, ASTRAL],
     {"cl\u00e9": "v\u00e4lue", "\u043a\u043b\u044e\u0447": ASTRAL, "emoji\U0001F511": UNICODE},
     {"args": [UNICODE, ASTRAL],
      "kwargs": {"cl\u00e9": "v\u00e4lue", "\u043a\u043b\u044e\u0447": ASTRAL,
                 "emoji\U0001F511": UNICODE}}),
    ("echo-nested", "examples.echo", [NESTED], {"nested": NESTED},
     {"args": [NESTED], "kwargs": {"nested": NESTED}}),
    ("echo-deep", "examples.echo", [DEEP], {}, {"args": [DEEP], "kwargs": {}}),
    ("echo-1mb", "examples.echo", [ONE_MB], {"u": ONE_MB_UNICODE},
     {"args": [ONE_MB], "kwargs": {"u": ONE_MB_UNICODE}}),
    ("sleep", "examples.sleep", [0.1], {}, 0.1),
    ("sleep-kwarg-int", "examples.sleep", [], {"seconds": 0}, 0),
]


def _short(value, limit=200):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...(%d chars)" % len(text)


@pytest.mark.parametrize("method", SEND_METHODS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_task_result(worker, kind, celery_app, differential, method, case):
    case_id, name, args, kwargs, expected = case
    result = send(celery_app, method, name, args, kwargs)
    value = result.get(timeout=GET_TIMEOUT)
    assert strict_equal(value, expected), "%s via %s: got %s, expected %s" % (
        name, method, _short(value), _short(expected))
    assert result.state == "SUCCESS"
    differential.check(kind, "result:%s:%s" % (method, case_id), value)


def test_nul_character_roundtrip(worker, kind, celery_app, differential):
    """JSON "\\u0000" inside a string (legal JSON; Python producers emit it)."""
    value = send(celery_app, "apply_async", "examples.echo", ["a\x00b"], {}).get(
        timeout=GET_TIMEOUT)
    assert value == {"args": ["a\x00b"], "kwargs": {}}
    differential.check(kind, "nul", value)


@pytest.mark.parametrize("method", ["apply_async", "send_task"])
@pytest.mark.parametrize("priority", [0, 5, 9])
def test_priority(worker, kind, celery_app, differential, method, priority):
    """priority 0/5/9 land on celery, celery\\x06\\x163, celery\\x06\\x169; all are consumed."""
    results = [
        send(celery_app, method, "examples.add", [priority, 1], {}, priority=priority),
        send(celery_app, method, "examples.echo", [], {"p": priority}, priority=priority),
    ]
    values = [r.get(timeout=GET_TIMEOUT) for r in results]
    assert values == [priority + 1, {"args": [], "kwargs": {"p": priority}}]
    differential.check(kind, "priority:%s:%s" % (method, priority), values)


# --------------------------------------------------------------------------- add's types

ADD_OK = [
    ("int+int", 2, 3, 5),
    ("neg-int", -7, 7, 0),
    ("big-int", 9007199254740993, 1, 9007199254740994),
    ("float+float", 1.5, 2.25, 3.75),
    ("float-rounding", 0.1, 0.2, 0.30000000000000004),
    ("int+float", 2, 0.5, 2.5),
    ("float+int", 0.5, 2, 2.5),
    ("int+float-integral", 1, 1.0, 2.0),
    ("str+str", "foo", "bar", "foobar"),
    ("unicode-str", "h\u00e9llo ", "w\u00f6rld \U0001F600", "h\u00e9llo w\u00f6rld \U0001F600"),
    ("empty-str", "", "", ""),
    ("list+list", [1, "a"], [None, {"k": [1]}], [1, "a", None, {"k": [1]}]),
    ("empty-lists", [], [], []),
]

ADD_TYPEERROR = [
    ("int+str", 1, "a"),
    ("str+int", "a", 1),
    ("float+str", 1.5, "x"),
    ("list+int", [1], 1),
    ("list+str", [1], "a"),
    ("dict+dict", {"a": 1}, {"b": 2}),
    ("null+int", None, 1),
]


@pytest.mark.parametrize("case", ADD_OK, ids=[c[0] for c in ADD_OK])
def test_add_types(worker, kind, celery_app, differential, case):
    case_id, x, y, expected = case
    value = send(celery_app, "apply_async", "examples.add", [x, y]).get(timeout=GET_TIMEOUT)
    assert strict_equal(value, expected), "add(%r, %r) = %r, expected %r" % (x, y, value, expected)
    differential.check(kind, "add:" + case_id, value)


@pytest.mark.parametrize("case", ADD_TYPEERROR, ids=[c[0] for c in ADD_TYPEERROR])
def test_add_type_error(worker, kind, celery_app, differential, case):
    case_id, x, y = case
    result = send(celery_app, "apply_async", "examples.add", [x, y])
    with pytest.raises(TypeError) as info:
        result.get(timeout=GET_TIMEOUT)
    assert str(info.value), "TypeError without a message"
    assert result.state == "FAILURE"
    assert isinstance(result.traceback, str) and result.traceback.strip()
    # The message text is CPython's own wording; only the type must match.
    differential.check(kind, "add-typeerror:" + case_id, type(info.value).__name__)


# --------------------------------------------------------------------------- failures

FAIL_MESSAGES = [
    ("ascii", "boom"),
    ("unicode", "\u00e9chec \u2603 \U0001F4A5"),
    ("empty", ""),
]


@pytest.mark.parametrize("method", SEND_METHODS)
@pytest.mark.parametrize("msg", FAIL_MESSAGES, ids=[m[0] for m in FAIL_MESSAGES])
def test_failure_raises_valueerror(worker, kind, celery_app, differential, method, msg):
    msg_id, message = msg
    result = send(celery_app, method, "examples.fail", [message])
    with pytest.raises(ValueError) as info:
        result.get(timeout=GET_TIMEOUT)
    assert type(info.value) is ValueError
    assert str(info.value) == message
    assert result.state == "FAILURE"
    tb = result.traceback
    assert isinstance(tb, str) and tb.strip(), "traceback not set: %r" % (tb,)
    exc = result.get(timeout=GET_TIMEOUT, propagate=False)
    assert isinstance(exc, ValueError) and exc.args == (message,)
    differential.check(kind, "fail:%s:%s" % (method, msg_id),
                       [type(info.value).__name__, list(info.value.args)])


def test_failure_with_kwarg(worker, kind, celery_app):
    result = send(celery_app, "apply_async", "examples.fail", [], {"message": "by keyword"})
    with pytest.raises(ValueError, match="^by keyword$"):
        result.get(timeout=GET_TIMEOUT)


@pytest.mark.parametrize("args,kwargs", [([1], {}), ([1, 2, 3], {}), ([1, 2], {"z": 3})],
                         ids=["too-few", "too-many", "unexpected-kwarg"])
def test_wrong_arguments_fail_cleanly(worker, kind, celery_app, args, kwargs):
    """Wrong arity ends in FAILURE (TypeError) and the worker goes on.

    Only send_task can send this: apply_async/delay check the signature client-side.
    """
    result = send(celery_app, "send_task", "examples.add", args, kwargs)
    with pytest.raises(TypeError):
        result.get(timeout=GET_TIMEOUT)
    assert send(celery_app, "send_task", "examples.add", [1, 1]).get(timeout=GET_TIMEOUT) == 2


# --------------------------------------------------------------------------- stored meta

META_KEYS = {"status", "result", "traceback", "children", "date_done", "task_id"}
DATE_DONE_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?$")  # naive UTC

META_CASES = [
    # id, task, args, expected status, expected result (None = do not compare value)
    ("success-int", "examples.add", [2, 3], "SUCCESS", 5),
    ("success-str", "examples.add", ["a", "b"], "SUCCESS", "ab"),
    ("success-echo", "examples.echo", [1, "\u00e9"], "SUCCESS",
     {"args": [1, "\u00e9"], "kwargs": {}}),
    ("failure-valueerror", "examples.fail", ["boom"], "FAILURE",
     {"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"}),
    ("failure-typeerror", "examples.add", [1, "a"], "FAILURE", None),
    ("not-registered", "examples.no_such_task", [], "FAILURE",
     {"exc_type": "NotRegistered", "exc_message": ["examples.no_such_task"],
      "exc_module": "celery.exceptions"}),
]


def _normalise_meta(meta):
    meta = dict(meta)
    meta.pop("date_done", None)
    meta.pop("task_id", None)
    if meta.get("traceback") is not None:
        meta["traceback"] = "<traceback>"
    if meta.get("status") == "FAILURE" and isinstance(meta.get("result"), dict):
        res = dict(meta["result"])
        if res.get("exc_type") == "TypeError":
            res["exc_message"] = "<cpython wording>"
        meta["result"] = res
    return meta


@pytest.mark.parametrize("case", META_CASES, ids=[c[0] for c in META_CASES])
@pytest.mark.redis_backend
def test_stored_meta(worker, kind, celery_app, redis_server, differential, case):
    """GET celery-task-meta-<id> from db 1: same keys/status/result as the Python worker."""
    case_id, name, args, status, expected = case
    result = celery_app.app.send_task(name, args=args)
    result.get(timeout=GET_TIMEOUT, propagate=False)
    meta = stored_meta(redis_server, result.id)
    assert meta is not None, "no celery-task-meta-%s in the result db" % result.id
    assert set(meta) == META_KEYS, "meta keys %s" % sorted(meta)
    assert meta["status"] == status
    assert meta["task_id"] == result.id
    assert meta["children"] == []
    assert isinstance(meta["date_done"], str) and DATE_DONE_RE.match(meta["date_done"]), \
        "date_done must be naive UTC isoformat, got %r" % meta["date_done"]
    if expected is not None:
        assert strict_equal(meta["result"], expected), meta["result"]
    if status == "SUCCESS":
        assert meta["traceback"] is None
    elif case_id == "not-registered":
        assert meta["traceback"] is None       # as stored by the Python worker
    else:
        assert isinstance(meta["traceback"], str) and meta["traceback"].strip()
        assert set(meta["result"]) == {"exc_type", "exc_message", "exc_module"}
        assert isinstance(meta["result"]["exc_message"], list)
    # A ready state must never be overwritten/expire early: Celery writes SETEX 86400.
    ttl = redis_server.client(1).ttl("celery-task-meta-" + result.id)
    assert 0 < ttl <= 86400, "result TTL %s (result_expires default is 1 day)" % ttl
    differential.check(kind, "meta:" + case_id, _normalise_meta(meta))


@pytest.mark.redis_broker
def test_not_registered(worker, kind, celery_app, redis_server):
    from celery.exceptions import NotRegistered
    from helpers import wait_queue_drained

    result = celery_app.app.send_task("examples.does_not_exist", args=[1], kwargs={"a": 2})
    with pytest.raises(NotRegistered) as info:
        result.get(timeout=GET_TIMEOUT)
    assert "examples.does_not_exist" in str(info.value)
    assert result.state == "FAILURE"
    # The message was rejected, not left in the queue or in unacked.
    assert wait_queue_drained(redis_server.client(0), 5) == {}
    # ...and the worker goes on.
    assert send(celery_app, "delay", "examples.add", [1, 2]).get(timeout=GET_TIMEOUT) == 3


PUBLISH_CASES = [
    ("success", "examples.add", [2, 3], "SUCCESS"),
    ("failure", "examples.fail", ["boom"], "FAILURE"),
    ("not-registered", "examples.no_such_task", [], "FAILURE"),
    ("worker-lost", "examples.crash", [], "FAILURE"),
]


@pytest.mark.parametrize("case", PUBLISH_CASES, ids=[c[0] for c in PUBLISH_CASES])
@pytest.mark.redis_backend
def test_result_is_published(worker, kind, celery_app, redis_server, case):
    """Every ready state is also PUBLISHed on the channel named like the key (contract 3.1),
    or AsyncResult.get() only notices it by polling."""
    import json
    import time
    import uuid

    case_id, name, args, status = case
    task_id = str(uuid.uuid4())
    channel = "celery-task-meta-" + task_id
    pubsub = redis_server.client(1).pubsub()
    try:
        pubsub.subscribe(channel)
        pubsub.get_message(timeout=5)  # subscribe confirmation
        celery_app.app.send_task(name, args=args, task_id=task_id)
        deadline = time.monotonic() + GET_TIMEOUT
        states = []
        while time.monotonic() < deadline:
            msg = pubsub.get_message(timeout=0.5)
            if msg and msg["type"] == "message":
                published = json.loads(msg["data"])
                states.append(published["status"])
                if published["status"] in ("SUCCESS", "FAILURE"):
                    break
        assert states and states[-1] == status, "published states %s" % states
        assert published == stored_meta(redis_server, task_id), "PUBLISH body != stored value"
    finally:
        pubsub.close()
