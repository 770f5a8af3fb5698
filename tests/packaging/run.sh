#!/usr/bin/env bash
# Packaging check: `meson install --destdir` into a temporary root must give
# everything a deployment needs (worker, DB tool, task modules, public headers,
# celeriac.pc, man page, systemd unit, .env.example); a task module written
# outside the tree (tests/packaging/hello.c) must build with nothing but
# `pkg-config --cflags celeriac` from that install; and the installed worker
# must load it by bare name (-A hello via CELERIAC_MODULE_PATH) and run its
# task for a real Python Celery client.
#
#   bash tests/packaging/run.sh [BUILD_DIR]     default build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
BUILD=${1:-build}
TMP=$(mktemp -d /tmp/celeriac-pkg.XXXXXX)
DEST=$TMP/root
cleanup() {
    [ -n "${WPID:-}" ] && kill -KILL "$WPID" 2>/dev/null || true
    [ -n "${PORT:-}" ] && redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT

meson install -C "$BUILD" --destdir "$DEST" --quiet
PREFIX=$(meson introspect "$BUILD" --buildoptions |
         /usr/bin/python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"))')
LIBDIR=$(meson introspect "$BUILD" --buildoptions |
         /usr/bin/python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="libdir"))')
R=$DEST$PREFIX
missing=0
for f in bin/celeriac bin/celeriac-db \
         "$LIBDIR/celeriac/libceleriac-examples.so" "$LIBDIR/celeriac/libceleriac-enrich.so" \
         "$LIBDIR/celeriac/celeriac-amqp.so" \
         include/celeriac/task.h include/celeriac/score.h "$LIBDIR/pkgconfig/celeriac.pc" \
         share/man/man1/celeriac.1 share/doc/celeriac/examples/celeriac.service \
         share/doc/celeriac/examples/.env.example; do
    if [ -e "$R/$f" ]; then echo "packaging: installed $PREFIX/$f"; else echo "packaging: MISSING $PREFIX/$f"; missing=1; fi
done
[ "$missing" -eq 0 ] || { echo "packaging: FAILED (files missing)"; exit 1; }
# Nothing of the build tree or the test modules leaks into the install.
if find "$R" -name 'libceleriac-chaos*' | grep -q .; then echo "packaging: FAILED (a test module was installed)"; exit 1; fi

# The man page is well-formed troff (groff is not always installed: check if it is).
if command -v groff >/dev/null 2>&1; then
    groff -man -Tutf8 -ww -z "$R/share/man/man1/celeriac.1"
fi

# A task module built against the installed headers and .pc only.
export PKG_CONFIG_PATH=$R/$LIBDIR/pkgconfig PKG_CONFIG_SYSROOT_DIR=$DEST
CFLAGS=$(pkg-config --cflags celeriac)
MODDIR=$(pkg-config --variable=moduledir celeriac)
echo "packaging: pkg-config --cflags celeriac = $CFLAGS; moduledir = $MODDIR"
case $CFLAGS in *"$ROOT"*) echo "packaging: FAILED (.pc points into the source tree)"; exit 1 ;; esac
mkdir -p "$TMP/mods"
cc -std=c11 -Wall -Wextra -Werror -shared -fPIC $CFLAGS tests/packaging/hello.c \
    -o "$TMP/mods/libceleriac-hello.so" $(pkg-config --libs celeriac)

# The installed worker runs it for a Python client.
PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
    --daemonize yes --logfile "$TMP/redis.log" >/dev/null
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
export CELERY_BROKER_URL=redis://127.0.0.1:$PORT/0 CELERY_RESULT_BACKEND=redis://127.0.0.1:$PORT/1
CELERIAC_MODULE_PATH=$TMP/mods:$MODDIR "$R/bin/celeriac" worker -A hello,examples -c 1 \
    -f "$TMP/worker.log" -l info &
WPID=$!
/usr/bin/python3 - <<'PY'
import os
from celery import Celery
app = Celery("pkgtest", broker=os.environ["CELERY_BROKER_URL"],
             backend=os.environ["CELERY_RESULT_BACKEND"])
got = app.send_task("pkgtest.hello", args=["world"]).get(timeout=30)
assert got == "hello, world", got
assert app.send_task("examples.add", args=[2, 3]).get(timeout=30) == 5
print("packaging: the installed worker ran pkgtest.hello ->", repr(got), "and examples.add")
PY
kill -TERM "$WPID"; wait "$WPID"; WPID=
echo "packaging: ok"
