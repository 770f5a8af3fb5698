#!/usr/bin/python3
"""Demo producer: an ordinary Celery client sending to whichever worker runs.

    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/1 \
        /usr/bin/python3 examples/python/producer.py [--timeout SECONDS]

Sends a handful of tasks with apply_async, delay and send_task, prints each
result as it arrives, and exits non-zero if any result is wrong (or late).
Nothing in here knows whether the worker is `celery worker` or `celeriac worker`.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from celery.exceptions import NotRegistered  # noqa: E402

from app import add, app, echo, fail  # noqa: E402

UNICODE = "h\u00e9llo \u2603 \u65e5\u672c\u8a9e \U0001F600"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for each result (default 30)")
    opts = parser.parse_args()

    print("producer: broker %s, results %s" % (_safe(app.conf.broker_url),
                                               _safe(app.conf.result_backend)))
    # (label, AsyncResult, check(outcome) -> bool, how the call was made)
    sent = [
        ("add.apply_async((2, 3))", add.apply_async((2, 3)), _equals(5)),
        ("add.delay('Hello, ', 'world')", add.delay("Hello, ", "world"),
         _equals("Hello, world")),
        ("send_task('examples.add', [1.5, 2])",
         app.send_task("examples.add", args=[1.5, 2]), _equals(3.5)),
        ("add.apply_async(([1, 2], [3]), priority=9)",
         add.apply_async(([1, 2], [3]), priority=9), _equals([1, 2, 3])),
        ("echo.apply_async(args, kwargs) with unicode",
         echo.apply_async(args=[UNICODE, 42], kwargs={"lang": "\u65e5\u672c\u8a9e",
                                                      "nested": {"a": [1, None, True]}}),
         _equals({"args": [UNICODE, 42],
                  "kwargs": {"lang": "\u65e5\u672c\u8a9e", "nested": {"a": [1, None, True]}}})),
        ("send_task('examples.sleep', [0.5])",
         app.send_task("examples.sleep", args=[0.5]), _equals(0.5)),
        ("fail.delay('something went wrong')", fail.delay("something went wrong"),
         _raises(ValueError, "something went wrong")),
        ("send_task('examples.no_such_task')", app.send_task("examples.no_such_task"),
         _raises(NotRegistered, None)),
    ]

    good = 0
    for label, result, check in sent:
        start = time.monotonic()
        try:
            outcome = ("ok", result.get(timeout=opts.timeout))
        except Exception as exc:  # what .get() raised is the outcome to check
            outcome = ("raised", exc)
        ok = check(outcome)
        good += ok
        shown = (repr(outcome[1]) if outcome[0] == "ok"
                 else "raised %s: %s" % (type(outcome[1]).__name__, outcome[1]))
        if len(shown) > 300:
            shown = shown[:300] + "..."
        print("%-4s %-46s -> %s  (%.2fs)" % ("ok" if ok else "BAD", label, shown,
                                             time.monotonic() - start))
        sys.stdout.flush()

    print("producer: %d/%d results correct" % (good, len(sent)))
    return 0 if good == len(sent) else 1


def _equals(expected):
    def check(outcome):
        kind, value = outcome
        return kind == "ok" and value == expected and type(value) is type(expected)
    return check


def _raises(exc_type, message):
    def check(outcome):
        kind, exc = outcome
        return (kind == "raised" and isinstance(exc, exc_type)
                and (message is None or str(exc) == message))
    return check


def _safe(url):
    """The URL without its password."""
    url = str(url)
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return "%s://%s%s@%s" % (scheme, user, ":***" if ":" in creds else "", host)
    return url


if __name__ == "__main__":
    sys.exit(main())
