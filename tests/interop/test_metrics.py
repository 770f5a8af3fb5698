"""--metrics-port: the Prometheus endpoint celeriac adds (Celery has none),
scraped over HTTP and parsed as the Prometheus text format."""

import re
import urllib.request

import pytest

from conftest import GET_TIMEOUT, free_port, scaled, wait_until
from helpers import send

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+-]+|\+Inf|NaN)$')


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line or re.match(r"^# (HELP|TYPE) ", line), line
            continue
        m = LINE.match(line)
        assert m, "not a Prometheus sample line: %r" % line
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def test_metrics_endpoint(start_worker, kind, celery_app):
    if kind == "python":
        pytest.skip("celeriac's own endpoint")
    port = free_port()
    start_worker(kind, args=["--metrics-port", str(port)])
    ok = [send(celery_app, "apply_async", "examples.add", [i, i]) for i in range(5)]
    bad = send(celery_app, "apply_async", "examples.fail", ["x"])
    assert [r.get(timeout=GET_TIMEOUT) for r in ok] == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError):
        bad.get(timeout=GET_TIMEOUT)
    s = wait_until(lambda: (lambda s: s if s.get(
        'celeriac_tasks_failed_total{task="examples.fail"}') == 1 else None)(scrape(port)),
        scaled(10), what="the failure counted")
    assert s['celeriac_tasks_received_total{task="examples.add"}'] == 5
    assert s['celeriac_tasks_succeeded_total{task="examples.add"}'] == 5
    assert s['celeriac_task_runtime_seconds_count{task="examples.add"}'] == 5
    assert s['celeriac_task_runtime_seconds_bucket{task="examples.add",le="+Inf"}'] == 5
    buckets = [v for k, v in s.items()
               if k.startswith('celeriac_task_queue_wait_seconds_bucket{task="examples.add"')]
    assert buckets == sorted(buckets) and buckets[-1] == 5
    assert s["celeriac_pool_processes"] == 2
    assert s["celeriac_pool_busy"] + s["celeriac_pool_idle"] == 2
    assert "celeriac_prefetched_messages" in s and "celeriac_broker_reconnects_total" in s
    # Anything else than /metrics: 404, and the worker goes on.
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen("http://127.0.0.1:%d/nope" % port, timeout=5)
    assert info.value.code == 404
    assert send(celery_app, "apply_async", "examples.add", [1, 1]).get(timeout=GET_TIMEOUT) == 2
