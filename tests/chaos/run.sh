#!/usr/bin/env bash
# CI entry of the chaos suite (issue 8): every scenario of tests/chaos/chaos.py
# at CI scale (2,000 tasks / 6 kills, a 20,000-entry enrich_list job / 3 kills,
# one restart of Redis, RabbitMQ and PostgreSQL each, a mixed fleet of four,
# warm shutdown), on the Redis and the AMQP broker.  About 3 minutes on 2 cores.
#
#   bash tests/chaos/run.sh                    CI scale
#   bash tests/chaos/run.sh --scale 1          the issue's full numbers (~15 min)
#   bash tests/chaos/run.sh --scenario kill9 --broker amqp
#
# Needs the build (ninja -C build): build/src/celeriac, the examples, chaos and
# enrich task modules; redis-server, rabbitmq-server and PostgreSQL as
# tests/run.sh installs them.  CELERIAC_BIN / CELERIAC_EXAMPLES_SO point it at
# another build tree (e.g. build-asan).  Logs: build-logs/chaos/ (CHAOS_LOG_DIR).
# Exits non-zero if any scenario lost a task or ran one twice after its ack.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
LOGDIR=${CHAOS_LOG_DIR:-$ROOT/build-logs/chaos}
rm -rf "$LOGDIR"
mkdir -p "$LOGDIR"
export CELERIAC_BIN=${CELERIAC_BIN:-$ROOT/build/src/celeriac}
export CELERIAC_EXAMPLES_SO=${CELERIAC_EXAMPLES_SO:-$ROOT/build/examples/libceleriac-examples.so}
# Bounded: a hung scenario cannot eat CI's budget.
exec timeout --kill-after=30 "${CHAOS_TIMEOUT:-1500}" /usr/bin/python3 "$ROOT/tests/chaos/chaos.py" \
    --workdir "$LOGDIR" --json "$LOGDIR/summary.json" "$@"
