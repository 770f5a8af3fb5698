"""Monitoring events, differential: the event stream Flower and `celery events`
read (celery.events.EventReceiver, the receiver class Flower uses), captured
for the same scenario from a Python worker and from celeriac, compared by
event type: which events come, and each one's field names and value types."""

import threading
import time

import pytest

from conftest import GET_TIMEOUT, scaled, wait_until
from helpers import send

TASK_TYPES = ("task-received", "task-started", "task-succeeded", "task-failed",
              "task-retried", "task-revoked", "task-rejected")


class Capture:
    """EventReceiver on its own connection and thread, collecting every event."""

    def __init__(self, app):
        self.app = app
        self.events = []
        self.conn = app.connection_for_read()
        self.recv = app.events.Receiver(self.conn, handlers={"*": self.events.append})
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        # ConsumerMixin calls on_consume_ready once the queue is bound; the
        # generator itself yields only after an event arrived.
        self.recv.on_consume_ready = lambda *a, **kw: self.ready.set()
        it = self.recv.itercapture(limit=None, timeout=None, wakeup=False)
        try:
            for _ in it:
                if self.recv.should_stop:
                    break
        except Exception:
            pass

    def stop(self):
        self.recv.should_stop = True
        self.thread.join(5)
        try:
            self.conn.release()
        except Exception:
            pass

    def of(self, hostname):
        return [e for e in list(self.events) if e.get("hostname") == hostname]


def _shape(event):
    return sorted((k, type(v).__name__) for k, v in event.items()
                  if k != "local_received")


@pytest.mark.parametrize("scenario", ["success-and-failure"])
def test_event_stream(start_worker, kind, celery_app, differential, scenario):
    cap = Capture(celery_app.app)
    try:
        assert cap.ready.wait(15), "event receiver did not start"
        w = start_worker(kind, args=["-E"])
        host = wait_until(lambda: next((e["hostname"] for e in list(cap.events)
                                        if e.get("type") == "worker-online"
                                        and e["hostname"].startswith(w.name + "@")), None),
                          scaled(20), what="worker-online")
        ok = send(celery_app, "apply_async", "examples.add", [2, 3])
        bad = send(celery_app, "apply_async", "examples.fail", ["boom"])
        assert ok.get(timeout=GET_TIMEOUT) == 5
        with pytest.raises(ValueError):
            bad.get(timeout=GET_TIMEOUT)
        wait_until(lambda: any(e.get("type") == "worker-heartbeat" for e in cap.of(host)),
                   scaled(10), what="a worker-heartbeat")
        wait_until(lambda: sum(e.get("type") in ("task-succeeded", "task-failed")
                               for e in cap.of(host)) >= 2, scaled(10), what="task events")
        w.stop()
        wait_until(lambda: any(e.get("type") == "worker-offline" for e in cap.of(host)),
                   scaled(15), what="worker-offline")
    finally:
        cap.stop()
    events = cap.of(host)
    per_task = {}
    for e in events:
        if e["type"] in TASK_TYPES:
            per_task.setdefault(e["uuid"], []).append(e["type"])
    assert per_task[ok.id] == ["task-received", "task-started", "task-succeeded"]
    assert per_task[bad.id] == ["task-received", "task-started", "task-failed"]
    # Only this test's tasks: a message left by an earlier test (an ETA task
    # redelivered on AMQP, say) may reach the worker too, with other values.
    ours = {ok.id, bad.id}
    by_type = {}
    for e in events:
        if e["type"] in TASK_TYPES and e.get("uuid") not in ours:
            continue
        by_type.setdefault(e["type"], _shape(e))
    succeeded = next(e for e in events if e["type"] == "task-succeeded" and e["uuid"] == ok.id)
    assert succeeded["result"] == "5" and isinstance(succeeded["runtime"], float)
    failed = next(e for e in events if e["type"] == "task-failed" and e["uuid"] == bad.id)
    assert failed["exception"] == "ValueError('boom')"
    received = next(e for e in events if e["type"] == "task-received" and e["uuid"] == ok.id)
    assert received["name"] == "examples.add" and isinstance(received["args"], str)
    # Lamport clock: strictly increasing per worker.
    clocks = [e["clock"] for e in events]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks), clocks
    keys = ["worker-online", "worker-heartbeat", "worker-offline", "task-received",
            "task-started", "task-succeeded", "task-failed"]
    shape = {k: by_type.get(k) for k in keys}
    assert all(shape.values()), [k for k, v in shape.items() if not v]
    differential.check(kind, "events-" + scenario, shape)


def test_enable_disable_events_and_heartbeat(worker, kind, celery_app, differential):
    """The control commands that switch task events, and `heartbeat`."""
    replies = wait_until(lambda: celery_app.app.control.ping(timeout=1.0), scaled(15),
                         what="a ping reply")
    node = next(n for r in replies for n in r if n.split("@", 1)[0] == worker.name)
    out = []
    for cmd in ("enable_events", "enable_events", "disable_events", "disable_events"):
        out.append(celery_app.app.control.broadcast(cmd, destination=[node], reply=True,
                                                    timeout=2.0))
    assert out[0] == [{node: {"ok": "task events enabled"}}]
    assert out[1] == [{node: {"ok": "task events already enabled"}}]
    assert out[2] == [{node: {"ok": "task events disabled"}}]
    assert out[3] == [{node: {"ok": "task events already disabled"}}]
    differential.check(kind, "enable-disable-events", [list(r[0].values()) for r in out])


def test_without_heartbeat(start_worker, kind, celery_app, differential):
    """--without-heartbeat turns off Celery's Heart: no worker-online, -heartbeat or
    -offline; the worker still answers remote control and sends task events."""
    cap = Capture(celery_app.app)
    try:
        assert cap.ready.wait(15), "event receiver did not start"
        w = start_worker(kind, args=["-E", "--without-heartbeat"])
        replies = wait_until(lambda: celery_app.app.control.ping(timeout=1.0), scaled(20),
                             what="a ping reply")
        node = next(n for r in replies for n in r if n.split("@", 1)[0] == w.name)
        r = send(celery_app, "apply_async", "examples.add", [2, 3])
        assert r.get(timeout=GET_TIMEOUT) == 5
        wait_until(lambda: any(e.get("type") == "task-succeeded" for e in cap.of(node)),
                   scaled(10), what="task-succeeded")
        time.sleep(3)  # past one heartbeat interval (2 s)
        w.stop()
        time.sleep(1)
    finally:
        cap.stop()
    types = sorted({e["type"] for e in cap.of(node)})
    assert not [t for t in types if t.startswith("worker-")], types
    differential.check(kind, "without-heartbeat", types)
