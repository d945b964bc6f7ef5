#!/usr/bin/env bash
# CPU training step of a small Wan model (dim 512, 4 layers, 4 heads of 128, ffn 2048, 1536
# video tokens, 512 x 4096 text) in wan-train against the PyTorch implementation of the same
# model (tests/python/wan_reference.py in float32, torch.optim.AdamW), same threads, in one run.
# PyTorch's BLAS is the system libblas.so.3: this script checks it is OpenBLAS, not the
# reference BLAS, so the baseline runs at its best.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
THREADS=${THREADS:-$(nproc)}
STEPS=${STEPS:-6}
DIM=512 FFN=2048 HEADS=4 LAYERS=4 F=6 H=32 W=32
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)
case "$blas" in *openblas*) ;; *) echo "PyTorch would use the reference BLAS ($blas): install libopenblas0-openmp" >&2; exit 1 ;; esac

OMP_NUM_THREADS=$THREADS "$ROOT/bin/wan-train" --set model.dim=$DIM --set model.ffn_dim=$FFN --set model.num_heads=$HEADS \
    --set model.num_layers=$LAYERS --set model.text_dim=4096 --set model.text_len=512 \
    --set "train.latent_shape=[$F, $H, $W]" --set train.gbs=1 --set train.steps=$STEPS --set train.threads=$THREADS \
    --set train.run_dir="$tmp/run" --set train.ckpt_interval=1000000 --set train.keep_last=1 >"$tmp/log" 2>&1
ours=$(/usr/bin/python3 -c '
import json, statistics, sys
t = [r["step_time"] for r in map(json.loads, open(sys.argv[1])) if r["type"] == "step" and not r["ckpt"]]
print("%.6f" % statistics.median(t[1:]))' "$tmp/run/steps.jsonl")
torch=$(OMP_NUM_THREADS=$THREADS /usr/bin/python3 "$ROOT/bench/torch_train_step.py" $DIM $FFN $HEADS $LAYERS $F $H $W $THREADS $STEPS)
tokens=$(( F * H / 2 * W / 2 ))
printf '\nCPU training step, dim %d, %d layers, %d heads, ffn %d, %d video tokens, %d threads (%s)\n' \
    $DIM $LAYERS $HEADS $FFN $tokens $THREADS "$(basename "$(dirname "$blas")")"
printf '| %-28s | %12s | %12s |\n' implementation "step (s)" "tokens/s"
printf '|%s|%s|%s|\n' "------------------------------" "--------------" "--------------"
printf '| %-28s | %12.3f | %12.0f |\n' "wan-train (fp32, OpenBLAS)" "$ours" "$(python3 -c "print($tokens / $ours)")"
printf '| %-28s | %12.3f | %12.0f |\n' "PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') (fp32)" "$torch" "$(python3 -c "print($tokens / $torch)")"
printf 'speed-up: %.2fx\n' "$(python3 -c "print($torch / $ours)")"
