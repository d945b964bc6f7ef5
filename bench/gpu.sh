#!/usr/bin/env bash
# make bench-gpu: GPU throughput of the CUDA backend on one GPU, in one run (the Makefile builds
# the benchmark programs first). Prints tables on stdout; the full output is kept in
# build/bench-gpu/. Copy the results into bench/RESULTS.md ("GPU" section) with the date,
# the device and this command.
#   1. op level (build/bench/gpu_ops): the GEMMs of one Wan 2.1 14B block at 37440 tokens in
#      TFLOP/s, self- and cross-attention forward and backward, the memory-bound ops in GB/s
#   2. [marked place] whole blocks and models, and the PyTorch comparison (issue 6's benchmark)
# Arguments are passed to gpu_ops (e.g. --reps 20, --only gemm-name).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=build/bench-gpu
mkdir -p "$OUT"
export WAN_NO_BAR=1
status=0

echo "# bench-gpu $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null |
    sed 's/^/# GPU: /'

# ---- 1. op level
echo "== op level: one 14B block's ops at 37440 tokens (build/bench/gpu_ops)"
set -o pipefail
if ! build/bench/gpu_ops "$@" 2>"$OUT/gpu_ops.err" | tee "$OUT/gpu_ops.txt"; then
    cat "$OUT/gpu_ops.err" >&2
    echo "bench-gpu: gpu_ops failed" >&2
    status=1
fi

# ---- 2. MARKED PLACE: whole blocks, models and the PyTorch comparison --------------------------
# Needs the model code on the CUDA backend (lib/model.c, model_block.c). To add here, in one run
# on the same GPU (issue 6, "Benchmark"):
#   a. a stack of blocks at the 14B width (dim 5120, 40 heads, ffn 13824) at seq 37440: as many
#      layers as fit, with the memory each takes; step time, tokens/s, model TFLOP/s by the Wan
#      formula (lib/flops.h) and a per-op time breakdown   -> build/bench/gpu_model --width 14b
#   b. the 1.3B model (30 layers, dim 1536), same figures   -> build/bench/gpu_model --model 1.3b
#   c. PyTorch: the same block in bf16 autocast with its fused attention (SDPA) and
#      torch.compile, timed the same way in this run       -> bench/gpu_torch_block.py
#   Targets: >= 400 model TFLOP/s per H100 at the 14B width, >= 1.2 x the PyTorch block;
#   references: NeMo DFM 309.66 (64 x H100), 175.88 in its PyTorch-native path (8 x H100).
if [ -x build/bench/gpu_model ]; then
    echo "== whole blocks and models (build/bench/gpu_model)"
    build/bench/gpu_model 2>"$OUT/gpu_model.err" | tee "$OUT/gpu_model.txt" || status=1
else
    echo "== whole blocks and models: NOT RUN (bench/gpu_model.c not written yet: needs the model on CUDA)"
fi
if [ -f bench/gpu_torch_block.py ]; then
    echo "== PyTorch block (bf16 autocast, SDPA, torch.compile)"
    python3 bench/gpu_torch_block.py 2>"$OUT/torch.err" | tee "$OUT/torch.txt" || status=1
else
    echo "== PyTorch comparison: NOT RUN (bench/gpu_torch_block.py not written yet)"
fi
# ------------------------------------------------------------------------------------------------

exit $status
