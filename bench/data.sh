#!/usr/bin/env bash
# Data pipeline benchmark (not a timed test). On one set of synthetic Wan-sized inputs
# (latent 16 x 21 x 60 x 104 and text 512 x 4096, fp32: 81 frames at 832 x 480):
#   - wan-preprocess throughput in MB/s of input against `zstd -T0 -3` on the same files
#   - compression ratio of both (input bytes / output bytes)
#   - reader samples/s with checksum verification: one thread, and with prefetch
# Environment: COUNT (samples, default 32), SHAPE (FxHxW, default 21x60x104), THREADS
# (default all cores), WORK (scratch directory, default a new one under /tmp, removed).
# Page caches are warm (the inputs were just written): the numbers measure CPU work, not disks.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P=$ROOT/bin/wan-preprocess
READ=$ROOT/build/bench/data_read
COUNT=${COUNT:-32}
SHAPE=${SHAPE:-21x60x104}
THREADS=${THREADS:-$(nproc)}
if [ ! -x "$P" ] || [ ! -x "$READ" ]; then
    echo "build first: make CUDA=0 bin/wan-preprocess build/bench/data_read" >&2
    exit 2
fi
if [ -n "${WORK:-}" ]; then mkdir -p "$WORK"; else WORK=$(mktemp -d "${TMPDIR:-/tmp}/wan-bench-data.XXXXXX"); trap 'rm -rf "$WORK"' EXIT; fi
export WAN_NO_BAR=1 WAN_LOG_LEVEL=warn

now() { date +%s.%N; }
echo "inputs: $COUNT synthetic samples, latent 16x${SHAPE//x/x} fp32, text 512x4096 fp32 (zero rows after each caption's tokens)" >&2
"$P" synth -o "$WORK/in" --count "$COUNT" --shape "$SHAPE" -j "$THREADS"
in_bytes=$(cat "$WORK"/in/*.safetensors | wc -c)

# zstd on the same bytes, same level, all cores.
t0=$(now)
zstd -q -T0 -3 -c "$WORK"/in/*.safetensors >"$WORK/plain.zst"
t1=$(now)
z_bytes=$(stat -c %s "$WORK/plain.zst")
z_time=$(echo "$t1 - $t0" | bc -l)
rm -f "$WORK/plain.zst"

t0=$(now)
"$P" "$WORK/in/manifest.jsonl" -o "$WORK/ds" -j "$THREADS"
t1=$(now)
w_time=$(echo "$t1 - $t0" | bc -l)
w_bytes=$(head -1 "$WORK/ds/index.jsonl" | sed 's/.*"stored_bytes":\([0-9]*\).*/\1/')
disk_bytes=$(cat "$WORK"/ds/shard-*.wls "$WORK/ds/index.jsonl" | wc -c)

# The reader: 2 passes over the dataset per setting (the loader's order, shuffled).
n=$((2 * COUNT))
r1=$("$READ" "$WORK/ds" 0 0 "$n" 512 4096)
pf=$((THREADS > 1 ? THREADS : 2))
r2=$("$READ" "$WORK/ds" "$((2 * pf))" "$pf" "$n" 512 4096)
sps() { echo "$1" | sed 's/.*samples_per_s \([0-9.]*\).*/\1/'; }

mbs() { echo "scale=1; $1 / 1000000 / $2" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
w_mbs=$(mbs "$in_bytes" "$w_time")
z_mbs=$(mbs "$in_bytes" "$z_time")
printf '\n%-34s %12s %12s %14s\n' "input: $COUNT samples" "MB/s (input)" "ratio" "output MB"
printf '%-34s %12s %12s %14s\n' "wan-preprocess (-j $THREADS, bf16)" "$w_mbs" "$(ratio "$in_bytes" "$w_bytes")" "$(echo "scale=1; $disk_bytes / 1000000" | bc -l)"
printf '%-34s %12s %12s %14s\n' "zstd -T0 -3 (same files)" "$z_mbs" "$(ratio "$in_bytes" "$z_bytes")" "$(echo "scale=1; $z_bytes / 1000000" | bc -l)"
printf 'preprocess / zstd throughput: %sx (target >= 0.8x); input %.1f MB\n' "$(ratio "$w_mbs" "$z_mbs")" "$(echo "$in_bytes / 1000000" | bc -l)"
printf '\n%-44s %12s\n' "reader (checksums verified)" "samples/s"
printf '%-44s %12s\n' "1 thread, no prefetch" "$(sps "$r1")"
printf '%-44s %12s\n' "prefetch $((2 * pf)), $pf threads" "$(sps "$r2")"
printf 'training need: ~5 samples/s (GB300, 32 GPUs, gbs 64); target >= 50 samples/s; 1 thread gives %sx\n' \
    "$(ratio "$(sps "$r1")" 5)"
