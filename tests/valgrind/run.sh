#!/usr/bin/env bash
# Leak check: the worker (parent and pool processes) under valgrind memcheck
# while a real Python Celery client sends a few thousand mixed tasks (successes,
# failures, retries, a chain, a group, revokes, inspect/control calls, events on).
# ASan already runs the whole interop suite; valgrind is the second opinion on an
# uninstrumented build -- the binary users run -- and sees leaks ASan's
# LeakSanitizer can miss in forked children that exit with _exit().
#
#   bash tests/valgrind/run.sh [TASKS]        default 2000 tasks
#
# Exits non-zero if valgrind reports any error or any definite/indirect leak in
# any process, or if a result is wrong.  Needs valgrind, redis-server,
# /usr/bin/python3 with celery, and a built tree (BUILD_DIR, default build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
TASKS=${1:-2000}
BUILD=${BUILD_DIR:-build}
BIN=$ROOT/$BUILD/src/celeriac
SO=$ROOT/$BUILD/examples/libceleriac-examples.so
TMP=$(mktemp -d /tmp/celeriac-valgrind.XXXXXX)
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
    [ -n "${WPID:-}" ] && kill -KILL "$WPID" 2>/dev/null || true
    redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$TMP" --daemonize yes --logfile "$TMP/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

export CELERY_BROKER_URL=redis://127.0.0.1:$PORT/0
export CELERY_RESULT_BACKEND=redis://127.0.0.1:$PORT/1
# --trace-children is not needed: pool processes are fork()ed, not exec()ed,
# and valgrind follows fork by itself; %p gives each process its own report.
valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --track-origins=yes \
    --child-silent-after-fork=no --log-file="$TMP/vg.%p.log" \
    "$BIN" worker -A "$SO" -c 2 -E -n valgrind@%h -l info -f "$TMP/worker.log" &
WPID=$!

/usr/bin/python3 - "$TASKS" <<'PY'
import os, sys, time
sys.path.insert(0, os.path.join(os.getcwd(), "examples", "python"))
from celery import chain, group
from app import app, add, echo, fail, flaky
n = int(sys.argv[1])
insp = app.control.inspect(timeout=5.0)
deadline = time.time() + 120
while not app.control.ping(timeout=1.0):
    if time.time() > deadline:
        sys.exit("valgrind: the worker never answered ping")
adds = [add.delay(i, i) for i in range(n)]
echoes = [echo.delay("h\u00e9llo", i, k={"x": [1, None, 2.5]}) for i in range(n // 10)]
fails = [fail.delay("boom %d" % i) for i in range(n // 50)]
retries = [flaky.delay(1, 0.1) for _ in range(10)]
ch = chain(add.s(1, 2), add.s(3), add.s(4)).delay()
gr = group(add.s(i, 1) for i in range(20)).delay()
revoked = add.apply_async((0, 0), countdown=30)
revoked.revoke()
for call in (insp.stats, insp.active, insp.reserved, insp.scheduled, insp.registered,
             insp.conf, insp.revoked, insp.active_queues):
    if not call():
        sys.exit("valgrind: no reply to inspect %s" % call.__name__)
app.control.rate_limit("examples.echo", "1000/s")
bad = 0
for i, r in enumerate(adds):
    bad += r.get(timeout=600) != 2 * i
for r in echoes:
    bad += r.get(timeout=600)["kwargs"] != {"k": {"x": [1, None, 2.5]}}
for r in fails:
    try:
        r.get(timeout=600)
        bad += 1
    except Exception:
        pass
bad += sum(r.get(timeout=600) is None for r in retries)
bad += ch.get(timeout=600) != 10
bad += gr.get(timeout=600) != [i + 1 for i in range(20)]
print("valgrind: %d tasks done, %d wrong" % (n + len(echoes) + len(fails) + 10 + 23, bad))
sys.exit(1 if bad else 0)
PY
kill -TERM "$WPID"
wait "$WPID" || true
WPID=

status=0
reports=0
for f in "$TMP"/vg.*.log; do
    reports=$((reports + 1))
    errs=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$f" | tail -n 1)
    if [ -z "$errs" ]; then
        echo "valgrind: $f has no summary (process killed?)"; cat "$f"; status=1; continue
    fi
    if [ "$errs" != 0 ] || grep -qE '(definitely|indirectly) lost: [1-9]' "$f"; then
        echo "valgrind: errors or leaks in $f:"; cat "$f"; status=1
    fi
done
echo "valgrind: $reports process reports, $(grep -c 'succeeded in\|Task .* succeeded' "$TMP/worker.log" || true) successes logged"
grep -h 'ERROR SUMMARY\|definitely lost\|indirectly lost' "$TMP"/vg.*.log | sort | uniq -c
if [ "$status" -eq 0 ]; then
    echo "valgrind: no errors, no leaks"
    rm -rf "$TMP"
else
    echo "valgrind: FAILED (reports in $TMP)"
fi
exit "$status"
