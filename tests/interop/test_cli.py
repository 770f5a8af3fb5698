"""celeriac's command line (celeriac-only: `celery` has no equivalent for most of this).

`celeriac call` is checked against both worker kinds (C producer -> Python worker too).
"""

import json
import os
import re
import subprocess

import pytest

from conftest import CELERIAC_BIN, CELERIAC_EXAMPLES_SO, GET_TIMEOUT, require_celeriac, scaled

EX_USAGE = 64
SECRET = "hunter2SECRET"
CLI_TIMEOUT = scaled(15)


def run_celeriac(args, env_extra=None, cwd=None, timeout=CLI_TIMEOUT):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")}
    env.update(env_extra or {})
    return subprocess.run([str(CELERIAC_BIN)] + list(args), env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout)


@pytest.fixture
def celeriac_only():
    require_celeriac()


def _worker_args(broker, backend="redis://127.0.0.1:6379/1"):
    return ["worker", "-A", str(CELERIAC_EXAMPLES_SO), "-b", broker,
            "--result-backend", backend, "-Q", "celery", "-c", "1", "-n", "cli@%h", "-l", "info"]


BAD_URLS = [
    ("bad-port", "redis://user:%s@127.0.0.1:notaport/0" % SECRET),
    ("bad-db", "redis://:%s@127.0.0.1:6379/notadb" % SECRET),
    ("bad-scheme", "bogus://user:%s@127.0.0.1:6379/0" % SECRET),
    ("garbage", "::not a url:%s::" % SECRET),
]


def _assert_usage_error(proc):
    out = proc.stdout.decode("utf-8", "replace")
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == EX_USAGE, "exit %s, stderr:\n%s" % (proc.returncode, err)
    assert "celeriac: error:" in err, err
    assert SECRET not in err and SECRET not in out, "password leaked:\n%s%s" % (out, err)


@pytest.mark.parametrize("url", BAD_URLS, ids=[u[0] for u in BAD_URLS])
def test_bad_broker_url_option(celeriac_only, tmp_path, url):
    _assert_usage_error(run_celeriac(_worker_args(url[1]), cwd=tmp_path))


@pytest.mark.parametrize("url", BAD_URLS, ids=[u[0] for u in BAD_URLS])
def test_bad_result_backend_url(celeriac_only, tmp_path, url):
    _assert_usage_error(run_celeriac(_worker_args("redis://127.0.0.1:6379/0", url[1]),
                                     cwd=tmp_path))


def test_bad_broker_url_from_env(celeriac_only, tmp_path):
    args = ["worker", "-A", str(CELERIAC_EXAMPLES_SO), "-c", "1", "-l", "info"]
    proc = run_celeriac(args, {"CELERY_BROKER_URL": BAD_URLS[0][1],
                               "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/1"}, cwd=tmp_path)
    _assert_usage_error(proc)


BAD_OPTIONS = [
    ("unknown-option", ["--no-such-option"]),
    ("concurrency-not-a-number", ["-c", "abc"]),
    ("unknown-pool", ["-P", "no-such-pool"]),
    ("prefetch-not-a-number", ["--prefetch-multiplier", "lots"]),
]


@pytest.mark.parametrize("opt", BAD_OPTIONS, ids=[o[0] for o in BAD_OPTIONS])
def test_bad_option(celeriac_only, tmp_path, opt):
    args = _worker_args("redis://:%s@127.0.0.1:6379/0" % SECRET) + opt[1]
    _assert_usage_error(run_celeriac(args, cwd=tmp_path))


def test_dotenv_lines_without_effect_are_warned(celeriac_only, tmp_path):
    """A .env line that cannot take effect gets a warning naming file, line and key:
    names read from the process environment only, and a misspelt CELERIAC_ name.
    Unknown CELERY_ names (Celery settings celeriac does not use) stay quiet, and
    no value is echoed.  The bad value on the last line ends the run with exit 64."""
    (tmp_path / ".env").write_text(
        "DATABASE_URL=postgresql://u:%s@db/x\n"
        "CELERIAC_CONCURENCY=3\n"
        "CELERY_TASK_SERIALIZER=json\n"
        "CELERY_WORKER_CONCURRENCY=abc\n" % SECRET)
    proc = run_celeriac(["worker", "-A", str(CELERIAC_EXAMPLES_SO)], cwd=tmp_path)
    _assert_usage_error(proc)
    err = proc.stderr.decode("utf-8", "replace")
    assert ".env:1: DATABASE_URL is read from the process environment only" in err, err
    assert ".env:2: CELERIAC_CONCURENCY is not a celeriac setting; ignored" in err, err
    assert "CELERY_TASK_SERIALIZER" not in err, err
    assert ".env:4:" in err, err


def test_unknown_subcommand(celeriac_only, tmp_path):
    _assert_usage_error(run_celeriac(["no-such-command"], cwd=tmp_path))


def test_call_bad_json_args(celeriac_only, tmp_path):
    proc = run_celeriac(["call", "examples.add", "--args", "[2,",
                         "-b", "redis://:%s@127.0.0.1:6379/0" % SECRET], cwd=tmp_path)
    _assert_usage_error(proc)


UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _call(urls, tmp_path, *args):
    proc = run_celeriac(["call"] + list(args) + ["-b", urls.broker], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    out = proc.stdout.decode().strip()
    assert out, "celeriac call printed nothing"
    task_id = out.splitlines()[-1].strip()
    assert UUID_RE.fullmatch(task_id), "not a task id: %r" % out
    return task_id


@pytest.mark.redis_backend
def test_call_prints_id_and_result_arrives(celeriac_only, worker, kind, celery_app,
                                           urls, tmp_path):
    """`celeriac call examples.add --args '[2,3]'` (C producer) -> 5, on either worker kind."""
    task_id = _call(urls, tmp_path, "examples.add", "--args", "[2,3]")
    assert celery_app.app.AsyncResult(task_id).get(timeout=GET_TIMEOUT) == 5


@pytest.mark.redis_backend
def test_call_kwargs_unicode(celeriac_only, worker, kind, celery_app, urls, tmp_path):
    kwargs = {"k\u00e9": "\u2603 \U0001F600", "n": [1, 2.5, None]}
    task_id = _call(urls, tmp_path, "examples.echo", "--args", '["a"]',
                    "--kwargs", json.dumps(kwargs, ensure_ascii=False))
    assert celery_app.app.AsyncResult(task_id).get(timeout=GET_TIMEOUT) == \
        {"args": ["a"], "kwargs": kwargs}


@pytest.mark.redis_backend
def test_call_countdown(celeriac_only, worker, kind, celery_app, urls, tmp_path):
    task_id = _call(urls, tmp_path, "examples.add", "--args", '["a","b"]',
                    "--countdown", "1")
    assert celery_app.app.AsyncResult(task_id).get(timeout=GET_TIMEOUT) == "ab"


@pytest.mark.redis_backend
def test_call_failure(celeriac_only, worker, kind, celery_app, urls, tmp_path):
    task_id = _call(urls, tmp_path, "examples.fail", "--args", '["from the C producer"]')
    with pytest.raises(ValueError, match="^from the C producer$"):
        celery_app.app.AsyncResult(task_id).get(timeout=GET_TIMEOUT)


@pytest.mark.parametrize("env_name", [None, "staging"], ids=["dotenv", "dotenv-named"])
def test_worker_reads_dotenv(celeriac_only, start_worker, celery_app, urls, tmp_path,
                             env_name):
    """Broker/backend from `.env` (or `--env NAME` -> `.env.NAME`) in the cwd, no -b given."""
    content = "# test\nCELERY_BROKER_URL=%s\nCELERY_RESULT_BACKEND=%s\n" % (
        urls.broker, urls.backend)
    if env_name:
        (tmp_path / (".env." + env_name)).write_text(content)
        (tmp_path / ".env").write_text("CELERY_BROKER_URL=redis://127.0.0.1:1/0\n")
        args = ["--env", env_name]
    else:
        (tmp_path / ".env").write_text(content)
        args = []
    start_worker("celeriac", cwd=str(tmp_path), broker_args=False, args=args)
    assert celery_app.app.send_task("examples.add", args=[20, 22]).get(timeout=GET_TIMEOUT) == 42


@pytest.mark.redis_backend
@pytest.mark.parametrize("how", ["--env", "CELERIAC_ENV", "--env-file"])
def test_call_reads_the_workers_dotenv_layers(celeriac_only, worker, kind, celery_app, urls,
                                              tmp_path, how):
    """`celeriac call` reads the worker's layers: the broker only in `.env.staging` (or in
    the file --env-file names), while `.env` points at a port nobody listens on."""
    (tmp_path / ".env").write_text("CELERY_BROKER_URL=redis://127.0.0.1:1/0\n")
    good = "CELERY_BROKER_URL=%s\n" % urls.broker
    env_extra, args = {}, []
    if how == "--env-file":
        (tmp_path / "deploy.env").write_text(good)
        args = ["--env-file", str(tmp_path / "deploy.env")]
    else:
        (tmp_path / ".env.staging").write_text(good)
        if how == "--env":
            args = ["--env", "staging"]
        else:
            env_extra = {"CELERIAC_ENV": "staging"}
    proc = run_celeriac(["call", "examples.add", "--args", "[40,2]"] + args,
                        env_extra=env_extra, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    task_id = proc.stdout.decode().strip().splitlines()[-1]
    assert celery_app.app.AsyncResult(task_id).get(timeout=GET_TIMEOUT) == 42
    # --env NAME without its file is an error, as for the worker.
    missing = run_celeriac(["call", "examples.add", "--env", "nosuch"], cwd=tmp_path)
    assert missing.returncode == EX_USAGE, missing.stderr
