#!/usr/bin/env bash
# `make demo`: the whole chain on the embedded tiny default, on this machine's CPU, no Slurm:
#   synthetic latents -> wan-preprocess -> wan-train (2 local ranks, data parallel)
#   -> wan-reshard to tensor parallel -> a few more steps from the resharded checkpoint
#   -> wan-report (the reference table's format, and plots).
# `make demo-slurm` (--slurm) runs the same chain through slurm/pipeline.sh on a local cluster.
# Outputs go to $DEMO_OUT (default ./demo-out), replaced on every run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
OUT=${DEMO_OUT:-$ROOT/demo-out}
if [ "${1:-}" = --slurm ]; then exec "$ROOT/slurm/demo-slurm.sh"; fi
rm -rf "$OUT"
mkdir -p "$OUT"
start=$(date +%s)
step() { echo; echo "== $*"; }

step "1/6 synthetic latents and text embeddings (tiny: 16 x 3 x 8 x 8 latents, 16 x 32 text)"
"$BIN/wan-preprocess" synth -o "$OUT/raw" --count 32 --shape 3x8x8 --text-len 16 --text-dim 32

step "2/6 wan-preprocess: sharded, zstd-compressed, checksummed dataset"
"$BIN/wan-preprocess" "$OUT/raw/manifest.jsonl" -o "$OUT/dataset" --text-dim 32 --text-len 16
"$BIN/wan-preprocess" stats "$OUT/dataset"

TRAIN=(--config "$ROOT/configs/tiny.cfg" --set data.path="$OUT/dataset" --set train.ckpt_interval=50)
step "3/6 wan-train: tiny model, 2 local ranks (data parallel, ZeRO-1), 200 steps"
"$BIN/wan-train" "${TRAIN[@]}" --set train.run_dir="$OUT/run-dp2" --set train.steps=200 --nproc 2

step "4/6 wan-reshard: dp=2 checkpoint -> tp=2 layout (weights, fp32 masters, AdamW moments)"
"$BIN/wan-reshard" convert --from "$OUT/run-dp2/checkpoints/latest" --to "$OUT/ckpt-tp2" --layout tp=2,dp=1
"$BIN/wan-reshard" inspect "$OUT/ckpt-tp2" >"$OUT/ckpt-tp2.txt"
sed -n 1,11p "$OUT/ckpt-tp2.txt"

step "5/6 wan-train: 50 more steps at tp=2 from the resharded checkpoint"
"$BIN/wan-train" "${TRAIN[@]}" --set train.run_dir="$OUT/run-tp2" --set parallel.tp=2 --set train.steps=250 \
    --init-from "$OUT/ckpt-tp2" --nproc 2

step "6/6 wan-report: throughput in the reference table's format, and plots"
"$BIN/wan-report" --warmup 2 --plot "$OUT/plots" "$OUT/run-dp2" "$OUT/run-tp2" | tee "$OUT/report.md"

echo
echo "demo finished in $(( $(date +%s) - start ))s. Outputs:"
echo "  dataset           $OUT/dataset"
echo "  runs (step logs)  $OUT/run-dp2/steps.jsonl, $OUT/run-tp2/steps.jsonl"
echo "  checkpoints       $OUT/run-dp2/checkpoints, $OUT/ckpt-tp2 (resharded), $OUT/run-tp2/checkpoints"
echo "  report            $OUT/report.md"
echo "  plots             $(printf '%s ' "$OUT"/plots/*)"
