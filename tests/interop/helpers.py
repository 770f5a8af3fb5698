"""Shared helpers for the interop tests: ways to send a task, raw kombu envelopes."""

import base64
import json
import time
import uuid

SEP = "\x06\x16"          # kombu's Redis separator
PRIORITY_STEPS = [0, 3, 6, 9]

SEND_METHODS = ["apply_async", "delay", "send_task"]


def send(celery_app, method, name, args=(), kwargs=None, **options):
    """Send task `name` the way a Python producer would, by `method`."""
    app = celery_app.app
    kwargs = dict(kwargs or {})
    if method == "send_task":
        return app.send_task(name, args=list(args), kwargs=kwargs, **options)
    task = app.tasks[name]
    if method == "apply_async":
        return task.apply_async(args=list(args), kwargs=kwargs, **options)
    if method == "delay":
        assert not options, "delay() takes no options"
        return task.delay(*args, **kwargs)
    raise ValueError(method)


def queue_key(queue, priority=0):
    """The Redis list kombu pushes to for `priority` (wire contract 2.2)."""
    priority = max(0, min(9, int(priority)))
    step = max(s for s in PRIORITY_STEPS if s <= priority)
    return queue if step == 0 else "%s%s%d" % (queue, SEP, step)


def all_queue_keys(queue="celery"):
    return [queue_key(queue, p) for p in PRIORITY_STEPS]


def task_headers(task, task_id, argsrepr="()", kwargsrepr="{}"):
    return {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": argsrepr, "kwargsrepr": kwargsrepr, "origin": "gen0@interop-test",
            "ignore_result": False}


EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def json_body(args, kwargs, ensure_ascii=True):
    return json.dumps([list(args), kwargs, EMBED], ensure_ascii=ensure_ascii).encode("utf-8")


def envelope(headers, body, content_type="application/json", content_encoding="utf-8",
             priority=0, queue="celery", body_is_base64=False):
    """A kombu Redis envelope (wire contract 1.2) as a JSON string.

    `body` is raw bytes (base64-encoded here) unless body_is_base64, in which
    case it is used verbatim as the envelope's "body" string.
    `headers=None` leaves the "headers" field out altogether.
    """
    task_id = (headers or {}).get("id") or ""
    env = {
        "body": body if body_is_base64 else base64.b64encode(body).decode("ascii"),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    if headers is not None:
        env["headers"] = headers
    return json.dumps(env)


def push_raw(redis_client, payload, queue="celery", priority=0):
    """LPUSH a raw payload the way kombu publishes (wire contract 2.2)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    redis_client.lpush(queue_key(queue, priority), payload)


def wait_queue_drained(redis_client, timeout, queue="celery"):
    """Wait until the queue lists and the unacked hash are empty; return leftovers on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = {k: redis_client.llen(k) for k in all_queue_keys(queue)}
        left = {k: n for k, n in left.items() if n}
        unacked = redis_client.hlen("unacked")
        if unacked:
            left["unacked"] = unacked
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def stored_meta(redis_server, task_id):
    """The raw result meta (celery-task-meta-<id>) from the result db, parsed."""
    raw = redis_server.client(1).get("celery-task-meta-" + task_id)
    return None if raw is None else json.loads(raw)
