"""The ``examples`` Celery app, in Python.

The same task names as the C task module (build/examples/libceleriac-examples.so),
so that one producer can be pointed at either a ``celery worker`` or a
``celeriac worker`` and get the same answers:

    examples.add(x, y)           x + y (ints, floats, mixed, strings, lists; else TypeError)
    examples.echo(*args, **kw)   {"args": args, "kwargs": kw}
    examples.limited(*args, **kw)  echo, rate_limit "10/s"
    examples.flaky(n, countdown=0.5)  retries n times (default max_retries 3), returns retries
    examples.autoretry(n)        raises ValueError n times, autoretry_for=(ValueError,), 0.2 s apart
    examples.retry_with(n, options)  self.retry(exc=, countdown=, eta=, max_retries=) n times
    examples.touch(marker)       appends its task id to the file `marker`, returns the id
    examples.sleep(seconds)      sleeps, returns seconds
    examples.fail(message)       raises ValueError(message)
    examples.crash()             kills its own pool process with SIGSEGV

It is both the producer app (examples/python/producer.py, tests/interop) and the
reference Python worker:

    cd examples/python && /usr/bin/python3 -m celery -A app worker -P prefork -c 2 -l info

Configuration comes from the environment, like celeriac's:
CELERY_BROKER_URL (default redis://127.0.0.1:6379/0), CELERY_RESULT_BACKEND
(default redis://127.0.0.1:6379/1) and any Celery setting spelled
CELERY_<UPPER_SETTING_NAME>, e.g. CELERY_TASK_ACKS_LATE=1,
CELERY_TASK_TRACK_STARTED=1,
CELERY_BROKER_TRANSPORT_OPTIONS='{"visibility_timeout": 5}'.
"""

import datetime
import json
import os
import signal
import time

from celery import Celery
from celery.app.defaults import NAMESPACES, flatten

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6379/1"

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def _parse_setting(option, raw):
    """Convert an environment string to the type Celery expects for `option`."""
    kind = getattr(option, "type", "string")
    text = raw.strip()
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError("not a boolean: %r" % raw)
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind in ("dict", "tuple", "list", "any"):
        try:
            return json.loads(text)
        except ValueError:
            if kind == "dict":
                raise
            return raw
    return raw


def settings_from_env(environ=None):
    """Every Celery setting given as CELERY_<NAME> in the environment."""
    environ = os.environ if environ is None else environ
    conf = {}
    for name, option in flatten(NAMESPACES):
        key = "CELERY_" + name.upper()
        if key in environ:
            try:
                conf[name] = _parse_setting(option, environ[key])
            except ValueError as exc:
                raise SystemExit("app.py: bad value for %s: %s" % (key, exc))
    conf["broker_url"] = environ.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
    conf["result_backend"] = environ.get("CELERY_RESULT_BACKEND") or DEFAULT_RESULT_BACKEND
    if conf["result_backend"].lower() in ("none", "disabled"):
        conf["result_backend"] = None  # no results, as celeriac reads these values
    return conf


app = Celery("examples")
app.conf.update(settings_from_env())


@app.task(name="examples.add")
def add(x, y):
    return x + y


@app.task(name="examples.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="examples.limited", rate_limit="10/s")
def limited(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="examples.flaky", bind=True)
def flaky(self, fail_times, countdown=0.5):
    if self.request.retries < fail_times:
        raise self.retry(countdown=countdown)
    return self.request.retries


@app.task(name="examples.autoretry", bind=True, autoretry_for=(ValueError,),
          default_retry_delay=0.2)
def autoretry(self, fail_times):
    if self.request.retries < fail_times:
        raise ValueError("attempt %d" % self.request.retries)
    return self.request.retries


def _mark_run(task_id, path):
    """Appends the task id to the file `path`: a test's marker of each run."""
    if isinstance(path, str):
        with open(path, "a") as f:
            f.write(task_id + "\n")


@app.task(name="examples.retry_with", bind=True)
def retry_with(self, fail_times, options):
    _mark_run(self.request.id, options.get("marker"))
    retries = self.request.retries
    if retries >= fail_times:
        return retries
    kw = {}
    if "countdown" in options:
        kw["countdown"] = options["countdown"]
    if "eta" in options:
        kw["eta"] = datetime.datetime.fromtimestamp(options["eta"], tz=datetime.timezone.utc)
    if "max_retries" in options:
        kw["max_retries"] = options["max_retries"]
    if options.get("exc", True) is not False:
        kw["exc"] = ValueError("attempt %d" % retries)
    raise self.retry(**kw)


@app.task(name="examples.touch", bind=True)
def touch(self, marker):
    _mark_run(self.request.id, marker)
    return self.request.id


@app.task(name="examples.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="examples.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="examples.crash")
def crash():
    # The pool process dies like a C task dereferencing NULL would.
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)  # not reached


# The chaos suite's execution recorder, the twin of examples/tasks/chaos.c (a
# module of its own there, libceleriac-chaos.so): registered only when the suite
# asks for it with CHAOS_RECORD_FILE, so the registered tasks stay those of the
# examples module everywhere else (tests/interop compares them).
if os.environ.get("CHAOS_RECORD_FILE"):
    @app.task(name="chaos.record", bind=True)
    def chaos_record(self, seq, sleep_ms=0):
        """One line "<task id> <worker pid> <pool pid> <unix time>" appended to
        $CHAOS_RECORD_FILE after sleeping sleep_ms; returns seq."""
        if sleep_ms:
            time.sleep(sleep_ms / 1000.0)
        line = "%s %d %d %.6f\n" % (self.request.id, os.getppid(), os.getpid(), time.time())
        fd = os.open(os.environ["CHAOS_RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return seq


if __name__ == "__main__":
    app.start()
