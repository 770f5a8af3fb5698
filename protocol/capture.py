#!/usr/bin/python3
"""Capture what the real Python producer writes, for replay tests.

Runs Celery 5.2.6 / kombu 5.2.4 producer calls (apply_async, delay, send_task,
options, canvas) against a throwaway redis-server it starts on loopback, with
kombu's final LPUSH intercepted (no worker involved), and writes one file per
scenario into protocol/captures/:

    {"scenario": ..., "call": ..., "queue": ..., "priority": ...,
     "envelope": "<exact bytes kombu LPUSHes>", "body": <decoded body>}

The C unit tests (tests/unit/test_message.c) parse every file here and check
the decoded fields against "body" and the envelope's headers.  Re-run after
a Celery/kombu upgrade:  /usr/bin/python3 protocol/capture.py
"""

import base64
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from celery import Celery, chain, group
from kombu.transport import redis as kredis

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captures")

app = Celery("capture")


@app.task(name="examples.add")
def add(x, y):
    return x + y


@app.task(name="examples.echo")
def echo(*args, **kwargs):
    return {"args": args, "kwargs": kwargs}


captured = []


def fake_put(self, queue, message, **kwargs):
    pri = self._get_message_priority(message, reverse=False)
    captured.append({"queue": queue, "priority": pri,
                     "envelope": json.dumps(message)})


def run(scenario, call, fn):
    before = len(captured)
    fn()
    for i, c in enumerate(captured[before:]):
        env = json.loads(c["envelope"])
        body = base64.b64decode(env["body"])
        if env["headers"].get("compression") == "application/x-gzip":
            import zlib
            body = zlib.decompress(body)
        rec = {"scenario": scenario, "call": call, **c, "body": json.loads(body)}
        name = scenario if i == 0 else "%s-%d" % (scenario, i)
        with open(os.path.join(OUT, name + ".json"), "w") as f:
            json.dump(rec, f, indent=1, sort_keys=True)
            f.write("\n")


def start_redis(tmp):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", tmp],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_redis(tmp)
        try:
            app.conf.broker_url = "redis://127.0.0.1:%d/0" % port
            kredis.Channel._put = fake_put
            scenarios()
        finally:
            proc.terminate()
            proc.wait()
    print("wrote %d captures to %s" % (len(captured), OUT))


def scenarios():
    utc = datetime.timezone.utc
    run("apply-async", "add.apply_async((2, 3))", lambda: add.apply_async((2, 3)))
    run("delay-kwargs", "add.delay(x=1, y=2)", lambda: add.delay(x=1, y=2))
    run("send-task", "app.send_task('examples.add', [4, 5])",
        lambda: app.send_task("examples.add", [4, 5]))
    run("unicode", "echo.delay('h\\u00e9llo \\u2603 \\U0001f600', k='\\u00fc')",
        lambda: echo.delay("h\u00e9llo \u2603 \U0001f600", k="\u00fc"))
    run("nul-in-string", "echo.delay('a\\x00b')", lambda: echo.delay("a\x00b"))
    run("nested", "echo.delay([1, {'a': [None, True, 1.5]}], d={'x': {'y': []}})",
        lambda: echo.delay([1, {"a": [None, True, 1.5]}], d={"x": {"y": []}}))
    run("priority-9", "add.apply_async((1, 1), priority=9)",
        lambda: add.apply_async((1, 1), priority=9))
    run("countdown", "add.apply_async((1, 1), countdown=30)",
        lambda: add.apply_async((1, 1), countdown=30))
    run("eta-expires", "add.apply_async((1, 1), eta=2030-01-02T03:04:05Z, expires=2030-01-03Z)",
        lambda: add.apply_async((1, 1), eta=datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=utc),
                                expires=datetime.datetime(2030, 1, 3, tzinfo=utc)))
    run("time-limits", "add.apply_async((1, 1), time_limit=30, soft_time_limit=20)",
        lambda: add.apply_async((1, 1), time_limit=30, soft_time_limit=20))
    run("zlib", "echo.apply_async(('x' * 200,), compression='zlib')",
        lambda: echo.apply_async(("x" * 200,), compression="zlib"))
    run("other-queue", "add.apply_async((1, 1), queue='other')",
        lambda: add.apply_async((1, 1), queue="other"))
    run("ignore-result", "add.apply_async((1, 1), ignore_result=True)",
        lambda: add.apply_async((1, 1), ignore_result=True))
    run("link", "add.apply_async((1, 1), link=add.s(10), link_error=echo.s())",
        lambda: add.apply_async((1, 1), link=add.s(10), link_error=echo.s()))
    run("chain", "chain(add.s(1, 2), add.s(3), add.s(4))()",
        lambda: chain(add.s(1, 2), add.s(3), add.s(4))())
    run("group", "group(add.s(i, i) for i in range(2))()",
        lambda: group(add.s(i, i) for i in range(2))())


if __name__ == "__main__":
    sys.exit(main())
