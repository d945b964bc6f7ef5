#!/usr/bin/env bash
# Resharding throughput and memory: a checkpoint of a few GB (a 1.3B-class model: dim 1536,
# ffn 8960, 12 heads, text_dim 4096, with fp32 master weights and both AdamW moments; fewer
# layers than 30 to keep the disk and the run small) converted between two layouts, against
# copying the same bytes with cp in the same run, and the peak memory against the budget.
#
#   bench/reshard.sh [--layers N] [--from L] [--to L] [--budget SZ] [--threads N] [--repeat N] [--dir D]
#
# Prints one line per measurement and a summary; deletes everything it wrote.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
LAYERS=4
FROM="tp=2,dp=4"
TO="tp=1,dp=2"
BUDGET=256M
THREADS=2
REPEAT=2
DIR=${TMPDIR:-/tmp}
while [ $# -gt 0 ]; do
    case "$1" in
    --layers) LAYERS=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    --to) TO=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "bench/reshard.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
make --no-print-directory CUDA=0 -j2 bin/wan-reshard build/tests/tools/reshard_make >/dev/null || exit 1
R=$ROOT/bin/wan-reshard
MK=$ROOT/build/tests/tools/reshard_make
W=$(mktemp -d "$DIR/wan-bench-reshard.XXXXXX") || exit 1
trap 'rm -rf "$W"' EXIT
MODEL=(--set model.dim=1536 --set model.ffn_dim=8960 --set model.num_heads=12 --set model.num_layers="$LAYERS"
    --set model.text_dim=4096 --set model.text_len=512)

# parameters x 16 bytes (fp32 weights, master, adam_m, adam_v); source, target and the cp copy
params=$((LAYERS * (8 * 1536 * 1536 + 2 * 1536 * 8960 + 12 * 1536 + 8960) + 1536 * 4096 + 1536 * 1536 * 8 + 1536 * 256 + 98304))
need=$((params * 16 * 3 + (1 << 30)))
avail=$(($(df -Pk "$W" | awk 'NR==2 {print $4}') * 1024))
if [ "$avail" -lt "$need" ]; then
    echo "bench/reshard.sh: $W has $((avail >> 30)) GiB free, needs $((need >> 30)) GiB (try --layers 2 or --dir)" >&2
    exit 1
fi

echo "== making the source: $LAYERS layers, layout $FROM (about $((params * 16 >> 20)) MiB)"
t0=$(date +%s.%N)
"$MK" --out "$W/src" --layout "$FROM" "${MODEL[@]}" --step 100 || exit 1
sync
echo "   made in $(echo "$(date +%s.%N) - $t0" | bc) s"
SRC=$W/src/step_00000100
bytes=$(du -sb "$SRC" | cut -f1)
echo "== $((bytes >> 20)) MiB in $(ls "$SRC" | grep -c '\.bin$') rank files"

# cp of the same bytes (then fsync'd: wan-reshard's output is too) and the conversion,
# alternately, REPEAT times each; the best of each counts (the disk is shared and noisy)
best() { awk -v a="$1" -v b="$2" 'BEGIN {print (a == "" || b < a) ? b : a}'; }
t_cp="" t_rs="" rss_kb=0
for i in $(seq "$REPEAT"); do
    sync
    t0=$(date +%s.%N)
    cp -r "$SRC" "$W/copy" && sync "$W/copy"/* "$W/copy" # fsync of the copied files only, as wan-reshard
    t=$(echo "$(date +%s.%N) - $t0" | bc)
    echo "   run $i: cp -r + fsync $t s"
    t_cp=$(best "$t_cp" "$t")
    rm -rf "$W/copy" "$W/dst"
    sync
    /usr/bin/time -v "$R" convert --from "$SRC" --to "$W/dst" --layout "$TO" --threads "$THREADS" \
        --memory-budget "$BUDGET" 2>"$W/time.log"
    rc=$?
    if [ $rc != 0 ]; then
        tail -20 "$W/time.log"
        exit 1
    fi
    t=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2, p, ":"); s=0; for (i=1; i<=n; i++) s=s*60+p[i]; print s}' "$W/time.log")
    r=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$W/time.log")
    [ "$r" -gt "$rss_kb" ] && rss_kb=$r
    grep -E "converted" "$W/time.log" | sed 's/^.*info: /   run '"$i"': /'
    t_rs=$(best "$t_rs" "$t")
done
"$R" inspect --digest "$SRC" -q -j "$THREADS" >"$W/d1" && "$R" inspect --digest "$W/dst" -q -j "$THREADS" >"$W/d2" &&
    cmp -s "$W/d1" "$W/d2" && same="identical full tensors" || same="FULL TENSORS DIFFER"

budget_b=$(numfmt --from=iec "$BUDGET")
python3 - "$bytes" "$t_cp" "$t_rs" "$rss_kb" "$budget_b" "$FROM" "$TO" "$same" "$THREADS" <<'EOF'
import sys
b, tcp, trs, rss, budget = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]) * 1024, int(sys.argv[5])
print("== %s -> %s, %.2f GB, %s threads" % (sys.argv[6], sys.argv[7], b / 1e9, sys.argv[9]))
print("   cp -r + fsync:     %6.2f s  %5.2f GB/s (best of the runs)" % (tcp, b / tcp / 1e9))
print("   wan-reshard:       %6.2f s  %5.2f GB/s (best; read, convert, write, fsync, read back, verify)" % (trs, b / trs / 1e9))
print("   ratio to cp:       %6.2f (target >= 0.7)" % (tcp / trs))
print("   peak RSS:          %6.0f MiB, budget %.0f MiB (%s)" % (rss / 2**20, budget / 2**20,
      "within" if rss <= budget else "ABOVE"))
print("   content:           %s" % sys.argv[8])
EOF
