#!/usr/bin/env bash
# wan-report end to end: golden tables from the synthetic logs in tests/golden (made by
# tests/golden/report_make_runs.py), the reference page's header, options, plots, and bad
# input that must give a clear message, a non-zero exit and no table.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
cd "$ROOT" || exit 1
G=tests/golden
RUNS=("$G/report_run_h100" "$G/report_run_gb200" "$G/report_run_cpu")
R="$BIN/wan-report"

# golden NAME ARGS...: stdout equals $G/NAME byte for byte
golden() {
    local name=$1
    shift
    if "$R" "$@" >"$T_TMP/out" 2>"$T_TMP/err" && diff -u "$G/$name" "$T_TMP/out" >"$T_TMP/diff"; then
        t_ok "golden $name"
    else
        t_fail "golden $name"
        head -40 "$T_TMP/diff" "$T_TMP/err"
    fi
}
golden report_golden.md "${RUNS[@]}"
golden report_golden_compare.md --compare "${RUNS[@]}"
golden report_golden.csv --format csv --compare "${RUNS[@]}"
golden report_golden.json --format json --compare "${RUNS[@]}"

# the table header, character for character as on the reference page
ref=$ROOT/../shared/reference/dfm-performance-summary.md
"$R" "${RUNS[@]}" 2>/dev/null >"$T_TMP/md"
if [ -f "$ref" ]; then
    grep -A1 '^| Model |' "$ref" | grep -v '^--$' | sort -u >"$T_TMP/ref_header"
    grep -A1 '^| Model |' "$T_TMP/md" | grep -v '^--$' | sort -u >"$T_TMP/our_header"
    t_check "header matches the reference page" cmp -s "$T_TMP/ref_header" "$T_TMP/our_header"
    t_check "header has 2 lines" test "$(wc -l <"$T_TMP/our_header")" = 2
else
    echo "note: $ref not found; header compared by the unit test only"
fi
t_check "one heading per system" test "$(grep -c '^#### System: ' "$T_TMP/md")" = 3
t_check "formula named, seed figure beside it" grep -q 'Megatron-Bridge Wan formula.*1.65907e11' "$T_TMP/md"

# warm-up is excluded: with --warmup 0 the H100 row changes
"$R" --warmup 0 "$G/report_run_h100" 2>/dev/null >"$T_TMP/w0"
t_check "warm-up excluded by default" grep -q '|1872.00|309.20|' "$T_TMP/md"
t_check "--warmup 0 counts the slow steps" bash -c "! grep -q '|1872.00|' '$T_TMP/w0' && grep -q '|Wan 2.1 14B|8|' '$T_TMP/w0'"

# --peak, --system, --output
"$R" --peak 1000 --system EOS "${RUNS[@]:0:2}" 2>/dev/null >"$T_TMP/peak"
t_check "--peak sets the MFU peak" grep -q '30.92% of 1000.0' "$T_TMP/peak"
t_check "--system groups every run" test "$(grep -c '^#### System: ' "$T_TMP/peak")" = 1
t_check "--system names the group" grep -q '^#### System: EOS$' "$T_TMP/peak"
"$R" -o "$T_TMP/report.md" "${RUNS[@]}" 2>/dev/null >"$T_TMP/stdout"
t_check "--output writes the file" cmp -s "$T_TMP/report.md" "$G/report_golden.md"
t_check "--output leaves stdout empty" test ! -s "$T_TMP/stdout"
t_check "--output leaves no temporary file" test "$(ls "$T_TMP" | grep -c '\.tmp')" = 0

# plots
"$R" --plot "$T_TMP/plots" "${RUNS[@]}" >/dev/null 2>"$T_TMP/plot_err"
t_check "plots written" test -s "$T_TMP/plots/loss.svg" -a -s "$T_TMP/plots/throughput.svg"
t_check "plots are well-formed SVG with a legend" /usr/bin/python3 -c '
import sys, xml.etree.ElementTree as ET
for name in ("loss", "throughput"):
    root = ET.parse(sys.argv[1] + "/" + name + ".svg").getroot()
    assert root.tag.endswith("svg"), root.tag
    texts = [t.text for t in root.iter() if t.tag.endswith("text")]
    assert "tests/golden/report_run_h100" in texts and "step" in texts, texts
    assert any(t.tag.endswith("polyline") for t in root.iter())
assert "tests/golden/report_run_h100 (validation)" in [t.text for t in ET.parse(sys.argv[1] + "/loss.svg").getroot().iter()]
' "$T_TMP/plots"
if command -v rsvg-convert >/dev/null; then
    t_check "PNG beside the SVG" bash -c "head -c 8 '$T_TMP/plots/loss.png' | od -c | grep -q 'P   N   G'"
else
    t_check "no converter: SVG only, said so" grep -q 'rsvg-convert is not installed' "$T_TMP/plot_err"
fi

# bad input: exit 1, a message naming the file and the problem, nothing on stdout
bad() { # name expected-message args...
    local name=$1 want=$2
    shift 2
    "$R" "$@" >"$T_TMP/bad_out" 2>"$T_TMP/bad_err"
    local rc=$?
    if [ "$rc" = 1 ] && [ ! -s "$T_TMP/bad_out" ] && grep -q -- "$want" "$T_TMP/bad_err"; then
        t_ok "rejects $name"
    else
        t_fail "rejects $name (exit $rc)"
        cat "$T_TMP/bad_err" "$T_TMP/bad_out" | head -5
    fi
}
bad "a missing run" "$T_TMP/nope: no such run directory" "$G/report_run_h100" "$T_TMP/nope"
mkdir -p "$T_TMP/trunc"
head -c -25 "$G/report_run_h100/steps.jsonl" >"$T_TMP/trunc/steps.jsonl"
bad "a truncated log" "trunc/steps.jsonl: line 23: truncated" "$T_TMP/trunc"
mkdir -p "$T_TMP/mixed"
cat "$G/report_run_cpu/steps.jsonl" "$G/report_run_h100/steps.jsonl" >"$T_TMP/mixed/steps.jsonl"
bad "mixed configurations" "mixes runs with different configurations" "$T_TMP/mixed"
bad "no steps after warm-up" "no steps left to measure" --warmup 9 "$G/report_run_gb200"
mkdir -p "$T_TMP/empty"
: >"$T_TMP/empty/steps.jsonl"
bad "an empty log" "empty/steps.jsonl: empty" "$T_TMP/empty"

# usage errors: exit 2
usage() { # name args...
    local name=$1
    shift
    "$R" "$@" >/dev/null 2>&1
    local rc=$?
    if [ "$rc" = 2 ]; then t_ok "usage error: $name"; else t_fail "usage error: $name (exit $rc)"; fi
}
usage "no run" 
usage "bad format" --format xml "${RUNS[0]}"
usage "negative warm-up" --warmup -1 "${RUNS[0]}"
usage "zero peak" --peak 0 "${RUNS[0]}"
usage "unknown option" --frobnicate "${RUNS[0]}"
t_check "--help" bash -c "'$R' --help | grep -q '^Usage: wan-report'"
t_check "--version" bash -c "'$R' --version | grep -q '^wan-report '"

t_summary
