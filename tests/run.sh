#!/usr/bin/env bash
# Runs every test program (C unit tests, shell integration tests, Python reference tests) and
# prints the total as the last line: "N passed, M failed". Arguments filter by name.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export WAN_NO_BAR=1
filter=("$@")
passed=0
failed=0
broken=()
matches() {
    [ ${#filter[@]} -eq 0 ] && return 0
    local f
    for f in "${filter[@]}"; do case "$1" in *"$f"*) return 0 ;; esac; done
    return 1
}
run_one() { # name, timeout, command...
    local name=$1 limit=$2; shift 2
    matches "$name" || return 0
    local out start rc last
    out=$(mktemp)
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$out" 2>&1
    rc=$?
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n1)
    if [ -n "$last" ]; then
        local p f
        p=${last%% passed*}
        f=${last#*, }; f=${f%% failed}
        passed=$((passed + p))
        failed=$((failed + f))
        if [ "$rc" != 0 ] && [ "$f" = 0 ]; then failed=$((failed + 1)); broken+=("$name (exit $rc)"); fi
    else
        failed=$((failed + 1))
        broken+=("$name (exit $rc, no summary line)")
    fi
    if [ "$rc" != 0 ]; then
        echo "== $name: FAILED (exit $rc) in $(( $(date +%s) - start ))s"
        grep -v '^ok ' "$out" | tail -n 60
    else
        echo "== $name: ${last:-?} in $(( $(date +%s) - start ))s"
    fi
    rm -f "$out"
}
for t in build/tests/test_*; do
    [ -x "$t" ] || continue
    run_one "$(basename "$t")" 900 "$t"
done
for t in tests/integration/*.sh; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t")" 900 bash "$t"
done
for t in tests/python/test_*.py; do
    [ -f "$t" ] || continue
    run_one "$(basename "$t")" 900 /usr/bin/python3 "$t"
done
for b in "${broken[@]+"${broken[@]}"}"; do echo "broken: $b"; done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
