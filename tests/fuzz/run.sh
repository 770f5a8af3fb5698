#!/usr/bin/env bash
# Build celeriac's libFuzzer targets with clang (ASan + UBSan) and run each for
# a bounded time.  Exits non-zero if any target finds a crash, a leak, a UBSan
# report or a failed check (the input is kept as build-fuzz/crash-<target>-*).
#
#   bash tests/fuzz/run.sh [TOTAL_SECONDS [TARGET]]
#       TOTAL_SECONDS  fuzzing budget (default 45), split evenly across the
#                      targets run; at least 5 s each
#       TARGET         one of: score message amqp_table config pidbox
#                      (default: all of them)
#   FUZZ_ARGS="-jobs=1 ..."  extra libFuzzer flags (e.g. for the longer runs
#                      recorded in docs/reliability.md)
#
# Targets (tests/fuzz/fuzz_<target>.c): the name scorer, the task message
# codec, the AMQP header-table bridge, the settings parsers (URL, .env,
# settings, lists, hostnames) and the remote-control (pidbox) decoder.  The
# src/ files they test are compiled directly with clang, once, into
# build-fuzz/obj/.
#
# Seeds: build-fuzz/corpus-<target>/ gets the protocol captures turned into
# wire bytes by make_seeds.py ($ROOT/../shared/protocol-captures, as CI lays
# it out; CAPTURES=DIR overrides), plus the checked-in tests/fuzz/seeds/<target>/
# (a few cases and every input that once found a bug), so CI works without the
# captures too.  The corpus grows across runs; delete build-fuzz/ to start over.
#
# Needs clang and libclang-rt-14-dev (tests/lib.sh's CELERIAC_PACKAGES), the
# -dev packages of jansson, librabbitmq, libuuid, zlib, libutf8proc, and
# /usr/bin/python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
TOTAL=${1:-45}
ONLY=${2:-}
OUT=$ROOT/build-fuzz
CC=${CLANG:-clang}
ALL_TARGETS=(score message amqp_table config pidbox)

if [ -n "$ONLY" ]; then
    case " ${ALL_TARGETS[*]} " in
    *" $ONLY "*) TARGETS=("$ONLY") ;;
    *) echo "unknown fuzz target '$ONLY' (one of: ${ALL_TARGETS[*]})" >&2; exit 2 ;;
    esac
else
    TARGETS=("${ALL_TARGETS[@]}")
fi
PER=$((TOTAL / ${#TARGETS[@]}))
[ "$PER" -ge 5 ] || PER=5

mkdir -p "$OUT/obj"
FLAGS=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer
       -fsanitize=address,undefined -fno-sanitize-recover=undefined
       -Wall -Wextra -Werror -Wno-unused-parameter -Iinclude -Isrc)
PKGS="jansson librabbitmq uuid zlib"
# shellcheck disable=SC2086
PKG_CFLAGS=$(pkg-config --cflags $PKGS)
# shellcheck disable=SC2086
PKG_LIBS=$(pkg-config --libs $PKGS)

# The src/ files under test, instrumented for coverage (fuzzer-no-link).
CORE_SRCS=(src/core/util.c src/core/log.c src/core/message.c src/core/config.c
           src/control/control.c src/broker/amqp_table.c)
core_objs=()
for src in "${CORE_SRCS[@]}"; do
    obj=$OUT/obj/$(echo "${src#src/}" | tr / _).o
    if [ ! -e "$obj" ] || [ "$src" -nt "$obj" ] || [ tests/fuzz/run.sh -nt "$obj" ] ||
       [ -n "$(find src/core src/control src/broker include -name '*.h' -newer "$obj" 2>/dev/null | head -1)" ]; then
        # shellcheck disable=SC2086
        "$CC" "${FLAGS[@]}" -fsanitize=fuzzer-no-link -DCELERIAC_VERSION='"fuzz"' $PKG_CFLAGS \
            -c "$src" -o "$obj"
    fi
    core_objs+=("$obj")
done

build_target() {
    local t=$1
    if [ "$t" = score ]; then
        /usr/bin/python3 src/score/gen_lexicon.py src/score/data "$OUT/score_lexicon.c"
        # shellcheck disable=SC2046
        "$CC" "${FLAGS[@]}" -fsanitize=fuzzer \
            tests/fuzz/fuzz_score.c src/score/prepare.c src/score/metrics.c src/score/compare.c \
            "$OUT/score_lexicon.c" $(pkg-config --cflags --libs libutf8proc) -lm \
            -o "$OUT/fuzz_score"
    else
        # shellcheck disable=SC2086
        "$CC" "${FLAGS[@]}" -fsanitize=fuzzer $PKG_CFLAGS "tests/fuzz/fuzz_$t.c" \
            "${core_objs[@]}" $PKG_LIBS -lm -o "$OUT/fuzz_$t"
    fi
}

# Seeds.  The scorer's are name pairs, written here as before.
score_seeds() {
    local i=0 line
    while IFS= read -r line; do
        printf '%s' "$line" > "$OUT/corpus-score/seed$i"
        i=$((i + 1))
    done <<'SEEDS'
Robert J. Smith Jr	SMITH, BOB
John Smith	Mary Smith
Dr. José Müller-O'Brien, III	JOSE MULLER
Ludwig van Beethoven	BEETHOVEN, L
Владимир Путин	PUTIN, Vladimir Vladimirovich
ウラジーミル・プーチン	블라디미르 푸틴
Maria Garcia Lopez	GARCIA, MARIA
WALKER CHRISTOP	Christopher Walker
Mr.	12345
SEEDS
}

CAPTURES=${CAPTURES:-$ROOT/../shared/protocol-captures}
rm -rf "$OUT/seeds"
if [ -d "$CAPTURES" ]; then
    echo "fuzz: seeds from $CAPTURES"
    /usr/bin/python3 tests/fuzz/make_seeds.py "$CAPTURES" "$OUT/seeds"
else
    echo "fuzz: no captures at $CAPTURES; checked-in seeds only"
fi

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

failed=0
total_execs=0
for t in "${TARGETS[@]}"; do
    build_target "$t"
    corpus=$OUT/corpus-$t
    mkdir -p "$corpus"
    if [ "$t" = score ]; then
        score_seeds
    fi
    [ -d "$OUT/seeds/$t" ] && cp -n "$OUT/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    [ -d "tests/fuzz/seeds/$t" ] && cp -n "tests/fuzz/seeds/$t"/* "$corpus"/ 2>/dev/null || true
    case $t in
    score) maxlen=512 ;;
    config) maxlen=2048 ;;
    *) maxlen=16384 ;;
    esac
    log=$OUT/fuzz_$t.log
    rc=0
    # shellcheck disable=SC2086
    "$OUT/fuzz_$t" -max_total_time="$PER" -max_len="$maxlen" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$OUT/crash-$t-" ${FUZZ_ARGS:-} \
        "$corpus" > "$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    units=$(find "$corpus" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz_$t: FINDING (exit $rc) after ${execs:-?} executions; log $log; input $OUT/crash-$t-*"
        failed=1
    else
        echo "fuzz_$t: ${execs:-?} executions in ${PER}s, corpus ${units} inputs: no findings"
    fi
    total_execs=$((total_execs + ${execs:-0}))
done
if [ "$failed" -eq 0 ]; then
    echo "fuzz: ${#TARGETS[@]} targets, $total_execs executions, no findings"
else
    echo "fuzz: FINDINGS (see above); reproduce with build-fuzz/fuzz_<target> build-fuzz/crash-<target>-*"
fi
exit "$failed"
