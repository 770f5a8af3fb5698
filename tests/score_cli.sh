#!/usr/bin/env bash
# `celeriac score` end to end: the two acceptance pairs of issue 4, --batch
# keeping one output line per input line (also for lines without a tab), and
# --features giving a header plus one row per pair.   Usage: score_cli.sh CELERIAC
set -euo pipefail
bin=$1
fail() { echo "FAIL: $*" >&2; exit 1; }

out=$("$bin" score "Robert J. Smith Jr" "SMITH, BOB")
[[ $out == *"class=RPC"* && $out == *NICKNAME* ]] || fail "Robert J. Smith Jr / SMITH, BOB: $out"
out=$("$bin" score "John Smith" "Mary Smith")
[[ $out == *"class=WPC"* ]] || fail "John Smith / Mary Smith: $out"

input=$'john smith\tSMITH, JOHN\nno tab here\n\tjohn smith\r\njosé müller\tJOSE MULLER\textra column\n'
out=$(printf '%s' "$input" | "$bin" score --batch)
[ "$(printf '%s\n' "$out" | wc -l)" -eq 4 ] || fail "batch line count: $out"
[ "$(printf '%s\n' "$out" | sed -n 2p)" = $'0\tNO_DATA' ] || fail "line without a tab: $out"
[ "$(printf '%s\n' "$out" | sed -n 3p)" = $'0\tNO_DATA' ] || fail "empty name_a: $out"
printf '%s\n' "$out" | sed -n 1p | grep -q $'\tRPC$' || fail "comma form: $out"
printf '%s\n' "$out" | sed -n 4p | grep -q $'\tRPC$' || fail "accents: $out"

out=$(printf '%s' "$input" | "$bin" score --batch --features)
[ "$(printf '%s\n' "$out" | wc -l)" -eq 5 ] || fail "features line count"
printf '%s\n' "$out" | head -1 | grep -q $'^score\tclass\tbias\t' || fail "features header"

out=$(printf '%s' "$input" | "$bin" score --batch --reasons)
printf '%s\n' "$out" | sed -n 1p | grep -q $'\tRPC\t' || fail "reasons column: $out"

"$bin" score --parse "Dr. Robert J. Smith Jr" | grep -qx 'surname=smith' || fail "--parse"
"$bin" score only-one-name >/dev/null 2>&1 && fail "one positional argument accepted"
echo "score cli: ok"
