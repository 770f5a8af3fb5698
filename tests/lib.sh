# Shared shell helpers for tests/run.sh and examples/demo.sh (source it; bash only).
#
#   ensure_packages        install the Debian packages celeriac needs, if any is missing
#   build_tree DIR [opts]  meson setup DIR (once, with opts) + meson compile -C DIR
#   free_port              print a free TCP port on 127.0.0.1
#   start_redis DIR        throwaway redis-server on loopback; sets REDIS_PORT, REDIS_PID
#   stop_redis             stop the redis-server start_redis started
#   start_postgres DIR     throwaway PostgreSQL cluster on loopback (as the postgres user
#                          when root); sets PG_PORT, PG_DIR, DATABASE_URL_LOCAL
#   stop_postgres          stop the cluster start_postgres started

CELERIAC_PACKAGES=(
    meson ninja-build pkg-config gcc
    libhiredis-dev libjansson-dev uuid-dev zlib1g-dev libcmocka-dev librabbitmq-dev
    libutf8proc-dev clang libclang-rt-14-dev
    redis-server rabbitmq-server python3-celery python3-redis python3-pytest
    postgresql libpq-dev python3-psycopg2 valgrind stunnel4
)

# The Python that has celery/redis/pytest (Debian's), whatever comes first on PATH.
CELERIAC_PYTHON=${CELERIAC_PYTHON:-/usr/bin/python3}

_pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

ensure_packages() {
    local missing=() p
    for p in "${CELERIAC_PACKAGES[@]}"; do
        _pkg_installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "packages: all ${#CELERIAC_PACKAGES[@]} present"
        return 0
    fi
    echo "packages: installing ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "error: missing packages (${missing[*]}) and not root; install them first" >&2
            return 1
        fi
    fi
    "${sudo[@]}" apt-get update &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
}

# build_tree DIR [meson options...]: configure once (re-applying options when the
# tree exists), then compile.  Idempotent.
build_tree() {
    local dir=$1
    shift
    if [ -f "$dir/build.ninja" ]; then
        if [ $# -gt 0 ]; then
            meson configure "$dir" "$@" || return
        fi
    elif [ -d "$dir/meson-private" ]; then
        meson setup --wipe "$dir" "$@" || return
    else
        meson setup "$dir" "$@" || return
    fi
    meson compile -C "$dir"
}

free_port() {
    "$CELERIAC_PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_redis() {
    local dir=$1 i
    mkdir -p "$dir"
    REDIS_PORT=$(free_port) || return
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" \
        --logfile "$dir/redis.log" || return
    for i in $(seq 1 100); do
        if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
            REDIS_PID=$(cat "$dir/redis.pid")
            return 0
        fi
        sleep 0.1
    done
    echo "error: redis-server did not answer on port $REDIS_PORT:" >&2
    cat "$dir/redis.log" >&2 2>/dev/null
    return 1
}

stop_redis() {
    local i
    [ -n "${REDIS_PID:-}" ] || return 0
    kill "$REDIS_PID" 2>/dev/null || { REDIS_PID=; return 0; }
    for i in $(seq 1 50); do
        kill -0 "$REDIS_PID" 2>/dev/null || { REDIS_PID=; return 0; }
        sleep 0.1
    done
    kill -KILL "$REDIS_PID" 2>/dev/null
    REDIS_PID=
}

# The folder holding initdb/pg_ctl (Debian: /usr/lib/postgresql/<version>/bin).
pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$d" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
    d=$(command -v pg_ctl 2>/dev/null) || return 1
    dirname "$(readlink -f "$d")"
}

# Runs a PostgreSQL server tool: as the postgres user when we are root (the
# server refuses to run as root).
_pg_run() {
    if [ "$(id -u)" -eq 0 ]; then
        su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
    else
        "$@"
    fi
}

start_postgres() {
    local dir=$1 bindir
    bindir=$(pg_bindir) || { echo "error: PostgreSQL server binaries not found" >&2; return 1; }
    mkdir -p "$dir" || return
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres:postgres "$dir" || return
        if ! su postgres -s /bin/sh -c "test -w $(printf '%q' "$dir")"; then
            echo "error: $dir is not reachable by the postgres user (every folder above it" \
                 "needs mode 755)" >&2
            return 1
        fi
    fi
    PG_DIR=$dir/data
    PG_PORT=$(free_port) || return
    _pg_run "$bindir/initdb" -D "$PG_DIR" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    _pg_run "$bindir/pg_ctl" -D "$PG_DIR" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1" start >/dev/null ||
        { cat "$dir/postgres.log" >&2; return 1; }
    DATABASE_URL_LOCAL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
}

stop_postgres() {
    local bindir
    [ -n "${PG_DIR:-}" ] && [ -f "$PG_DIR/postmaster.pid" ] || { PG_DIR=; return 0; }
    bindir=$(pg_bindir) || return 0
    _pg_run "$bindir/pg_ctl" -D "$PG_DIR" -m fast -w stop >/dev/null 2>&1 || true
    PG_DIR=
}
