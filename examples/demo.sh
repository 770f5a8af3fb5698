#!/usr/bin/env bash
# Demo: an unchanged Python Celery producer talking to celeriac.
#
#   bash examples/demo.sh
#
# Installs missing Debian packages, builds build/, starts a throwaway
# redis-server on loopback (unless CELERY_BROKER_URL is set: then that broker and
# CELERY_RESULT_BACKEND are used), starts `celeriac worker` with the examples task
# module, runs examples/python/producer.py against it and prints the results.
# Then the main job (issue 5): unless DATABASE_URL is set, it starts a throwaway
# PostgreSQL (as the postgres user, loopback, a temporary folder), runs
# `celeriac db migrate`, and examples/python/enrich_producer.py seeds a
# 10,000-entry list from bench/data/pairs.tsv, dispatches enrich_list with
# send_task, shows its progress and prints the summary and a few scored rows.
# Everything it started is stopped on exit; the exit status is the producers'.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=tests/lib.sh
. "$ROOT/tests/lib.sh"

ensure_packages
build_tree build

WORK=$(mktemp -d "${TMPDIR:-/tmp}/celeriac-demo.XXXXXX")
WORKER_PID=
REDIS_PID=

cleanup() {
    local i
    if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -TERM "$WORKER_PID" 2>/dev/null || true
        for i in $(seq 1 150); do
            kill -0 "$WORKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$WORKER_PID" 2>/dev/null || true
        wait "$WORKER_PID" 2>/dev/null || true
    fi
    stop_redis
    stop_postgres
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${CELERY_BROKER_URL:-}" ]; then
    start_redis "$WORK/redis"
    export CELERY_BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0"
    export CELERY_RESULT_BACKEND="redis://127.0.0.1:$REDIS_PORT/1"
    echo "demo: throwaway redis-server on 127.0.0.1:$REDIS_PORT (broker db 0, results db 1)"
fi

if [ -z "${DATABASE_URL:-}" ]; then
    chmod 755 "$WORK" # the postgres user must reach the data folder
    start_postgres "$WORK/pg"
    export DATABASE_URL=$DATABASE_URL_LOCAL
    echo "demo: throwaway PostgreSQL on 127.0.0.1:$PG_PORT ($DATABASE_URL)"
fi
"$ROOT/build/src/celeriac" db migrate

# Broker/backend/database reach the worker through the environment (no password on argv).
# ENRICH_BATCH_SIZE=1000: a PROGRESS update every 1,000 entries, so the demo shows some.
ENRICH_BATCH_SIZE=1000 "$ROOT/build/src/celeriac" worker -A "$ROOT/build/examples/libceleriac-examples.so" \
    -A "$ROOT/build/src/enrich/libceleriac-enrich.so" \
    -Q celery -c 2 -n demo@%h -l info >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!

ready=
for _ in $(seq 1 300); do
    if grep -q "ready\." "$WORK/worker.log"; then ready=1; break; fi
    kill -0 "$WORKER_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "demo: celeriac worker did not become ready; its log:" >&2
    cat "$WORK/worker.log" >&2
    exit 1
fi
echo "demo: $(grep -m1 "ready\." "$WORK/worker.log")"

status=0
"$CELERIAC_PYTHON" "$ROOT/examples/python/producer.py" || status=$?

echo
echo "demo: the enrichment job: enrich_list on a 10,000-entry list in PostgreSQL"
"$CELERIAC_PYTHON" "$ROOT/examples/python/enrich_producer.py" --entries 10000 || status=$?

echo
echo "demo: celeriac worker log:"
sed 's/^/  /' "$WORK/worker.log" | tail -n 40
exit "$status"
