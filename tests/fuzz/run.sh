#!/usr/bin/env bash
# Build the name scorer's libFuzzer target with clang (ASan + UBSan) and run it
# briefly.  Exits non-zero if the fuzzer finds a crash, a leak or a failed check.
#
#   bash tests/fuzz/run.sh [SECONDS]      default 45 s of fuzzing
#
# Needs clang and libclang-rt-14-dev (tests/lib.sh's CELERIAC_PACKAGES), libutf8proc-dev
# and /usr/bin/python3 (the lexicon generator).  Work files: build-fuzz/ (ignored by git).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
SECS=${1:-45}
OUT=$ROOT/build-fuzz
mkdir -p "$OUT/corpus"
CC=${CLANG:-clang}

/usr/bin/python3 src/score/gen_lexicon.py src/score/data "$OUT/score_lexicon.c"
"$CC" -std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Iinclude -Isrc \
    tests/fuzz/fuzz_score.c src/score/prepare.c src/score/metrics.c src/score/compare.c \
    "$OUT/score_lexicon.c" \
    $(pkg-config --cflags --libs libutf8proc) -lm \
    -o "$OUT/fuzz_score"

# a small seed corpus: the hard cases and some Unicode
i=0
while IFS= read -r line; do
    printf '%s' "$line" > "$OUT/corpus/seed$i"
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

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$OUT/fuzz_score" -max_total_time="$SECS" -max_len=512 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$OUT/" "$OUT/corpus" 2>&1 | tail -n 25
echo "fuzz_score: no findings in ${SECS}s"
