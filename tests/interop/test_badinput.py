"""The bad-input corpus (issue 8, part 2): malformed and hostile messages injected
straight into the broker, past any Python producer.

Why one table: every kind must get the same five checks, on both brokers —
  (a) exactly one WARNING/ERROR/CRITICAL log line naming the problem (and the
      task id when the message has a readable one),
  (b) the state Celery would store (FAILURE NotRegistered for an unknown task,
      REVOKED for an expired one, nothing for a message that cannot be read),
  (c) nothing executed for hostile content (examples.echo never reports the
      task id as succeeded),
  (d) the worker alive, (e) the next good task succeeding,
  (f) nothing left in the queue or unacknowledged.

Redis: the raw kombu envelope is LPUSHed (so envelope-level garbage is
possible).  AMQP: the body bytes, headers and properties go out through
kombu's Producer.publish with no serializer, so the worker sees exactly them.
A case with `only` runs on that broker alone (envelope-level damage has no
AMQP equivalent; AMQP header tables have types JSON lacks).

One celeriac worker serves the whole module (started with a 1 MB
--max-message-size so the huge-message case stays cheap).  The few cases
where Celery 5.2.6 stores a state are also run against the Python worker in
test_differential_states.
"""

import base64
import json
import re
import time
import uuid
import zlib

import pytest

from conftest import (GET_TIMEOUT, ON_AMQP, REDIS_BACKEND, REPORTS, require_celeriac, scaled,
                      strict_equal, wait_until)
from helpers import EMBED, envelope, push_raw, stored_meta, task_headers, wait_queue_drained

MAX_SIZE = 1 << 20      # the module worker's --max-message-size
DEL = object()          # a header to leave out
PROBLEM_RE = re.compile(r"^\[[^\]]*: (WARNING|ERROR|CRITICAL)/[^\]]*\] (.*)$", re.M)


def _hdr(tid, task="examples.echo", **over):
    h = task_headers("examples.echo" if task is DEL else task, tid, "('x',)")
    if task is DEL:
        over["task"] = DEL
    for k, v in over.items():
        if v is DEL:
            h.pop(k, None)
        else:
            h[k] = v
    return h


def _body(args=("x",), kwargs=None, embed=EMBED):
    return json.dumps([list(args), kwargs or {}, embed]).encode()


class Case:
    """One kind of bad input.

    headers(tid) and body build the message; ctype/cenc are its content type
    and encoding.  redis_raw(tid) -> bytes replaces the whole Redis envelope.
    log: regex the single problem line must match (None: no line at all, for
    messages that are legitimately not for this worker).  with_id: the line
    names the task id.  state: None (nothing stored), "FAILURE:<exc_type>",
    "REVOKED", or "SUCCESS" (then `result` is the expected value).
    """

    def __init__(self, name, log, headers=None, body=None, ctype="application/json",
                 cenc="utf-8", redis_raw=None, only=None, with_id=True, state=None,
                 result=None, pidbox=None, info=None):
        self.name, self.log, self.only, self.with_id = name, log, only, with_id
        self.headers = headers or (lambda tid: _hdr(tid))
        self.body = _body() if body is None else body
        self.ctype, self.cenc = ctype, cenc
        self.redis_raw = redis_raw
        self.state, self.result = state, result
        self.pidbox = pidbox    # a remote-control request dict (or bytes) instead of a task
        self.info = info        # an INFO line expected instead of a problem line

    def __repr__(self):
        return self.name


def _raw_env(tid, mutate):
    """A good Redis envelope (as a dict) changed by mutate(env) -> str|bytes|dict."""
    env = json.loads(envelope(_hdr(tid), _body()))
    out = mutate(env)
    out = env if out is None else out
    return out if isinstance(out, (str, bytes)) else json.dumps(out)


HEADER_DEPTH = 18000  # a header frame must fit in frame_max (128 KiB)


def _nested_table(depth):
    v = {}
    for _ in range(depth):
        v = {"a": v}
    return v


DECODE = r"Can't decode message body"
INVALID = r"Received invalid task message"
UNKNOWN_MSG = r"Received and deleted unknown message"
MALFORMED = r"Dropped a malformed message"
DISALLOWED = r"Refusing to deserialize untrusted content of type"
TOO_BIG = r"exceeds --max-message-size"
NESTED = b"[" * 100000 + b"]" * 100000

CASES = [
    # ---- the envelope itself (Redis only: AMQP has frames, not an envelope)
    Case("empty-envelope", MALFORMED, redis_raw=lambda t: b"", only="redis", with_id=False),
    Case("envelope-invalid-json", MALFORMED, redis_raw=lambda t: b'{"body": "W1tdLCB7fV0=", '
         b'"headers": {not json', only="redis", with_id=False),
    Case("envelope-not-an-object", MALFORMED, redis_raw=lambda t: b'["a", "json", "array"]',
         only="redis", with_id=False),
    Case("envelope-headers-missing", MALFORMED,
         redis_raw=lambda t: _raw_env(t, lambda e: e.pop("headers") and None), only="redis",
         with_id=False),
    Case("envelope-headers-not-object", MALFORMED,
         redis_raw=lambda t: _raw_env(t, lambda e: e.__setitem__("headers", "x")),
         only="redis", with_id=False),
    Case("envelope-invalid-utf8", MALFORMED,
         redis_raw=lambda t: _raw_env(t, lambda e: None).replace('"lang": "py"',
                                                                  '"lang": "p\udcff"')
         .encode("utf-8", "surrogateescape"), only="redis", with_id=False),
    Case("envelope-raw-nul", MALFORMED,
         redis_raw=lambda t: _raw_env(t, lambda e: None).replace('"lang": "py"',
                                                                  '"lang": "p\x00y"').encode(),
         only="redis", with_id=False),
    Case("envelope-deeply-nested", MALFORMED,
         redis_raw=lambda t: _raw_env(t, lambda e: None).replace(
             '"lang": "py"', '"lang": ' + NESTED.decode()).encode(), only="redis",
         with_id=False),
    Case("envelope-huge-integer", MALFORMED,
         redis_raw=lambda t: _raw_env(t, lambda e: None).replace(
             '"retries": 0', '"retries": ' + "9" * 40).encode(), only="redis", with_id=False),
    Case("unknown-body-encoding", DECODE,
         redis_raw=lambda t: _raw_env(t, lambda e: e["properties"].__setitem__(
             "body_encoding", "rot13")), only="redis"),
    Case("truncated-base64", DECODE,
         redis_raw=lambda t: _raw_env(t, lambda e: e.__setitem__("body", e["body"][:-3])),
         only="redis"),
    Case("base64-garbage", DECODE,
         redis_raw=lambda t: _raw_env(t, lambda e: e.__setitem__("body", "!!!not*base64@@@")),
         only="redis"),
    Case("body-field-missing", DECODE,
         redis_raw=lambda t: _raw_env(t, lambda e: e.pop("body") and None), only="redis"),
    # ---- size
    Case("huge-message", TOO_BIG, body=_body(["x" * (MAX_SIZE + 1000)]),
         state="FAILURE:LimitExceeded"),
    # Far over the limit the headers are not even read: only the tag, to ack it.
    Case("huge-message-far-over", TOO_BIG, body=_body(["x" * (5 * MAX_SIZE)]), only="redis",
         with_id=False),
    Case("zlib-bomb", DECODE, headers=lambda t: _hdr(t, compression="application/x-gzip"),
         body=zlib.compress(_body(["x" * (4 * MAX_SIZE)]), 9)),
    # ---- headers
    Case("no-headers-at-all", UNKNOWN_MSG, headers=lambda t: {}, with_id=False),
    Case("no-task-header", UNKNOWN_MSG, headers=lambda t: _hdr(t, task=DEL), with_id=False),
    Case("task-header-not-string", UNKNOWN_MSG, headers=lambda t: _hdr(t, task=42),
         with_id=False),
    Case("header-deeply-nested", MALFORMED, only="amqp", with_id=False,
         headers=lambda t: _hdr(t, lang=_nested_table(HEADER_DEPTH))),
    Case("task-header-with-nul", INVALID, headers=lambda t: _hdr(t, task="examples.echo\x00x")),
    Case("no-id-header", INVALID, headers=lambda t: _hdr(t, id=DEL), with_id=False),
    Case("id-not-string", INVALID, headers=lambda t: _hdr(t, id=["a", "b"]), with_id=False),
    Case("retries-not-integer", INVALID, headers=lambda t: _hdr(t, retries="many")),
    Case("retries-negative", INVALID, headers=lambda t: _hdr(t, retries=-5)),
    Case("retries-absurd", INVALID, headers=lambda t: _hdr(t, retries=2 ** 62)),
    Case("eta-not-a-date", INVALID, headers=lambda t: _hdr(t, eta="tomorrow")),
    Case("eta-absurd", INVALID, headers=lambda t: _hdr(t, eta="99999-01-01T00:00:00")),
    Case("eta-a-number", INVALID, headers=lambda t: _hdr(t, eta=1e300)),
    Case("expires-not-a-date", INVALID, headers=lambda t: _hdr(t, expires=["x"])),
    # Expired is not malformed: Celery revokes it with an INFO line, and so do we.
    Case("expires-long-past", None, headers=lambda t: _hdr(t, expires="1970-01-01T00:00:00"),
         state="REVOKED", info=r"Discarding revoked task: examples\.echo\[{tid}\] \(expired\)"),
    Case("timelimit-not-a-pair", INVALID, headers=lambda t: _hdr(t, timelimit="10")),
    Case("timelimit-negative", INVALID, headers=lambda t: _hdr(t, timelimit=[-1, -5])),
    Case("timelimit-absurd", INVALID, headers=lambda t: _hdr(t, timelimit=[1e300, None])),
    Case("unknown-task", r"Received unregistered task of type 'examples\.nope'",
         headers=lambda t: _hdr(t, task="examples.nope"), state="FAILURE:NotRegistered"),
    # ---- content type: only JSON is ever decoded
    Case("pickle", DISALLOWED, ctype="application/x-python-serialize", cenc="binary",
         body=b"\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system"
              b"\x94\x93\x94\x8c\x02id\x94\x85\x94R\x94."),
    Case("yaml", DISALLOWED, ctype="application/x-yaml",
         body=b"!!python/object/apply:os.system ['id']"),
    Case("msgpack", DISALLOWED, ctype="application/x-msgpack", cenc="binary",
         body=b"\x93\x91\xa1x\x80\x80"),
    Case("text-plain", DISALLOWED, ctype="text/plain", body=b"hello"),
    # ---- body
    Case("body-empty", DECODE, body=b""),
    Case("body-not-json", DECODE, body=b"this is not json"),
    Case("body-truncated-json", DECODE, body=_body()[:-7]),
    Case("body-invalid-utf8", DECODE, body=b'[["\xff\xfe"], {}, {}]'),
    Case("body-raw-nul", DECODE, body=b'[["a\x00b"], {}, {}]'),
    Case("body-deeply-nested", DECODE, body=b"[" + NESTED + b", {}, {}]"),
    Case("body-not-a-list", DECODE, body=b'{"args": [1, 2]}'),
    Case("body-wrong-length", DECODE, body=b"[[1]]"),
    Case("args-not-a-list", DECODE, body=b'[{"a": 1}, {}, {}]'),
    Case("kwargs-not-an-object", DECODE, body=b'[["x"], ["y"], {}]'),
    Case("embed-not-an-object", DECODE, body=b'[["x"], {}, "callbacks"]'),
    Case("compression-unknown", DECODE, headers=lambda t: _hdr(t, compression="application/x-bz2")),
    Case("compression-not-zlib", DECODE, headers=lambda t: _hdr(t, compression="application/x-gzip")),
    # ---- good input that looks odd: must run, and round-trip exactly
    Case("escaped-nul-round-trips", None, body=_body(["a\x00b", "\x00"], {"k": "\x00"}),
         state="SUCCESS", result={"args": ["a\x00b", "\x00"], "kwargs": {"k": "\x00"}}),
    # ---- remote control (pidbox)
    Case("pidbox-garbage", r"remote control: malformed request dropped", with_id=False,
         pidbox=b"!!!not base64"),
    Case("pidbox-arguments-not-object", r"remote control: revoke: 'arguments' is not an object",
         with_id=False, pidbox={"method": "revoke", "arguments": ["a", "b"],
                                "destination": None}),
    Case("pidbox-shutdown-for-another-node", None, with_id=False,
         pidbox={"method": "shutdown", "arguments": {}, "destination": ["nobody@nowhere"]}),
]
assert len({c.name for c in CASES}) == len(CASES)


def _cases():
    broker = "amqp" if ON_AMQP else "redis"
    return [c for c in CASES if c.only in (None, broker)]


# --------------------------------------------------------------------------- injection

def _inject(celery_app, urls, case, tid):
    if case.pidbox is not None:
        return _inject_pidbox(celery_app, urls, case.pidbox)
    if not ON_AMQP:
        if case.redis_raw:
            raw = case.redis_raw(tid)
        else:
            raw = envelope(case.headers(tid), case.body, content_type=case.ctype,
                           content_encoding=case.cenc)
        push_raw(urls.redis.client(0), raw)
        return
    headers = case.headers(tid)
    if case.name == "header-deeply-nested":
        return _in_deep_thread(lambda: _publish(celery_app, case, tid, headers))
    _publish(celery_app, case, tid, headers)


def _in_deep_thread(fn):
    """py-amqp encodes nested tables recursively: give it the stack to do so."""
    import sys
    import threading
    old_limit, old_stack = sys.getrecursionlimit(), threading.stack_size()
    sys.setrecursionlimit(10 * HEADER_DEPTH)
    threading.stack_size(512 << 20)
    try:
        errors = []
        t = threading.Thread(target=lambda: errors.append(fn()) if False else fn())
        t.start()
        t.join()
    finally:
        threading.stack_size(old_stack)
        sys.setrecursionlimit(old_limit)


def _publish(celery_app, case, tid, headers):
    with celery_app.app.connection_for_write() as conn:
        conn.Producer().publish(
            case.body, exchange="", routing_key="celery", headers=headers,
            content_type=case.ctype, content_encoding=case.cenc, delivery_mode=2,
            correlation_id=tid, retry=True,
            # rpc:// delivers a state only to the reply queue the message names.
            **({} if REDIS_BACKEND else {"reply_to": celery_app.app.backend.oid}))


def _inject_pidbox(celery_app, urls, req):
    if isinstance(req, dict):
        req = dict(req, ticket=str(uuid.uuid4()), reply_to=None)
        body = json.dumps(req).encode()
        b64 = base64.b64encode(body).decode()
    else:
        body, b64 = req, req.decode("latin-1")
    if not ON_AMQP:
        env = {"body": b64, "content-encoding": "utf-8", "content-type": "application/json",
               "headers": {"clock": 1, "expires": time.time() + 10},
               "properties": {"delivery_mode": 1, "delivery_info": {
                   "exchange": "celery.pidbox", "routing_key": ""}, "priority": 0,
                   "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}}
        urls.redis.client(0).publish("/0.celery.pidbox", json.dumps(env))
        return
    with celery_app.app.connection_for_write() as conn:
        conn.Producer().publish(body, exchange="celery.pidbox", routing_key="",
                                content_type="application/json", content_encoding="utf-8",
                                headers={"clock": 1}, retry=True)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def bad_worker(workers, urls):
    """One celeriac worker for the whole corpus."""
    require_celeriac()
    workers.stop_all()
    urls.clean()
    w = workers.start("celeriac", tag="badinput",
                      args=["--max-message-size", str(MAX_SIZE), "-E"])
    yield w
    if w.alive():
        problems = workers.stop_checked(w)
        assert not problems, problems


@pytest.fixture(scope="module")
def events(celery_app, bad_worker):
    """Every monitoring event of the module, as Flower would read them."""
    from test_events import Capture
    cap = Capture(celery_app.app)
    cap.ready.wait(scaled(10))
    yield cap
    cap.stop()


# The event Celery sends for each stored state (none for a refusal).
STATE_EVENT = {"FAILURE": "task-failed", "REVOKED": "task-revoked", "SUCCESS": "task-succeeded"}


def _problems(text):
    return [m.group(0) for m in PROBLEM_RE.finditer(text)]


def _queue_left(urls):
    if ON_AMQP:
        return urls.rabbit.queue_depth("celery")
    return wait_queue_drained(urls.redis.client(0), scaled(5)) or 0


_follow = iter(range(10 ** 9))


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_bad_input(bad_worker, events, celery_app, urls, case):
    w = bad_worker
    tid = str(uuid.uuid4())
    offset = w.log_size()
    _inject(celery_app, urls, case, tid)
    if case.pidbox is not None:
        # A ping to this node is handled after the request: the same channel.
        node = w.name + "@"
        pong = wait_until(lambda: [r for r in celery_app.app.control.ping(timeout=1.0)
                                   if any(k.startswith(node) for k in r)],
                          scaled(10), what="a ping answer")
        assert pong, "no ping answer after %s" % case.name
    # (e) the next good task succeeds
    n = next(_follow)
    good = celery_app.app.send_task("examples.add", args=[n, 1])
    assert good.get(timeout=GET_TIMEOUT) == n + 1
    # (a) exactly one clear problem line
    if case.log is not None:
        lines = wait_until(lambda: _problems(w.log_text(offset)), scaled(5),
                           what="a WARNING/ERROR line for %s" % case.name)
        time.sleep(0.05)
        lines = _problems(w.log_text(offset))
        assert len(lines) == 1, "expected one problem line, got:\n" + "\n".join(lines)
        assert re.search(case.log, lines[0]), lines[0]
        if case.with_id:
            assert tid in lines[0], "the line does not name the task id: " + lines[0]
    else:
        lines = _problems(w.log_text(offset))
        assert not lines, "unexpected problem lines:\n" + "\n".join(lines)
    if case.info:
        wait_until(lambda: re.search(case.info.format(tid=re.escape(tid)), w.log_text(offset)),
                   scaled(5), what="the INFO line for %s" % case.name)
    # (c) nothing hostile executed
    text = w.log_text(offset)
    if case.state != "SUCCESS":
        assert not re.search(r"\[%s\] succeeded" % tid, text), "hostile content ran"
    # (b) the state
    if REDIS_BACKEND and case.pidbox is None:
        meta = stored_meta(urls.redis, tid)
        if case.state is None:
            assert meta is None, meta
        elif case.state == "SUCCESS":
            meta = wait_until(lambda: stored_meta(urls.redis, tid), scaled(5), what="result")
            assert meta["status"] == "SUCCESS"
            assert strict_equal(meta["result"], case.result), meta["result"]
        else:
            meta = wait_until(lambda: stored_meta(urls.redis, tid), scaled(5), what="state")
            status, _, exc = case.state.partition(":")
            assert meta["status"] == status, meta
            if exc:
                assert meta["result"]["exc_type"] == exc, meta
    elif case.state == "SUCCESS":
        assert celery_app.app.AsyncResult(tid).get(timeout=GET_TIMEOUT) == case.result
    # (b') the event that goes with the state, and no outcome event otherwise
    mine = lambda: [e["type"] for e in list(events.events) if e.get("uuid") == tid]
    if case.state:
        want = STATE_EVENT[case.state.partition(":")[0]]
        wait_until(lambda: want in mine(), scaled(5), what="a %s event" % want)
    else:
        assert not set(mine()) & set(STATE_EVENT.values()), mine()
    # (d) alive, (f) nothing left behind
    assert w.alive(), "the worker died on %s" % case.name
    assert not _queue_left(urls), "left in the queue after %s" % case.name


# --------------------------------------------------------------------------- differential

# Where Celery 5.2.6 and celeriac agree (the state stored, or none): asserted.
DIFF_CASES = ["unknown-task", "expires-long-past", "body-not-json", "pickle", "no-task-header",
              "eta-not-a-date"]
# Where they differ on purpose (docs/reliability.md, "Bad input"): celeriac's
# value is asserted by test_bad_input, Python's is only reported.
KNOWN_DIFFERENT = ["args-not-a-list", "kwargs-not-an-object", "embed-not-an-object",
                   "retries-negative", "timelimit-negative", "task-header-with-nul",
                   "huge-message", "body-wrong-length", "id-not-string"]


def _observe(workers, urls, celery_app, kind, names):
    """{case: (status, exc_type) | None | "stuck"} for one worker kind."""
    by_name = {c.name: c for c in CASES}
    out = {}
    w = None
    for name in names:
        if w is None or not w.alive():
            workers.stop_all()
            urls.clean()
            w = workers.start(kind, tag="baddiff",
                              args=["--max-message-size", str(MAX_SIZE)]
                              if kind == "celeriac" else [])
        tid = str(uuid.uuid4())
        _inject(celery_app, urls, by_name[name], tid)
        n = next(_follow)
        good = celery_app.app.send_task("examples.add", args=[n, 1])
        deadline = time.monotonic() + scaled(8)
        while not good.ready() and w.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not good.ready():  # the reference worker dies or wedges on some of these
            out[name] = "stuck" if w.alive() else "died"
            workers.stop_all()
            w = None
            continue
        time.sleep(0.3)
        meta = stored_meta(urls.redis, tid)
        res = meta and meta["result"]
        out[name] = meta and [meta["status"], res.get("exc_type") if isinstance(res, dict)
                              else None]
    if w is not None:
        workers.stop_all()
    return out


def test_differential_states(workers, urls, celery_app):
    """Where the Python worker survives the message, celeriac stores the same state."""
    if not REDIS_BACKEND:
        pytest.skip("states are read from the Redis result backend")
    py = _observe(workers, urls, celery_app, "python", DIFF_CASES + KNOWN_DIFFERENT)
    ours = _observe(workers, urls, celery_app, "celeriac", DIFF_CASES + KNOWN_DIFFERENT)
    for name in KNOWN_DIFFERENT:
        REPORTS.append("bad input %s: python %s, celeriac %s" % (name, py[name], ours[name]))
    assert {k: ours[k] for k in DIFF_CASES} == {k: py[k] for k in DIFF_CASES}, (ours, py)


# --------------------------------------------------------------------------- settings

@pytest.mark.parametrize("value,ok", [
    ("json", True), ('["json", "application/json"]', True), ("application/json", True),
    ("pickle", False), ("json,yaml", False), ('["msgpack"]', False), ("", False)])
def test_accept_content_setting(workers, value, ok):
    """Only JSON can be decoded: naming another serializer is a start-up error (64)."""
    require_celeriac()
    # A second, always-bad option: the first error named tells which was refused.
    w = workers.make("celeriac", tag="accept",
                     args=["--accept-content", value, "--max-message-size", "1"])
    import subprocess
    res = subprocess.run(w.argv, env=w.env, capture_output=True, timeout=scaled(10))
    err = res.stderr.decode() + res.stdout.decode()
    assert res.returncode == 64, err
    assert ("accept" in err.lower()) != ok, err


def test_max_message_size_setting(workers):
    require_celeriac()
    import subprocess
    for value, ok in (("64MB", True), ("1048576", True), ("2GiB", True), ("10", False),
                      ("-5", False), ("12XB", False), ("99999999999999999999", False)):
        w = workers.make("celeriac", tag="maxsize",
                         args=["--max-message-size", value, "--concurrency", "0"])
        res = subprocess.run(w.argv, env=w.env, capture_output=True, timeout=scaled(10))
        err = res.stderr.decode() + res.stdout.decode()
        assert res.returncode == 64, err
        assert ("max-message-size" in err) != ok, (value, err)
