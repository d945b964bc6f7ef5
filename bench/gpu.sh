#!/usr/bin/env bash
# make bench-gpu: GPU throughput of the CUDA backend on one GPU, in one run (the Makefile builds
# the benchmark programs first). Prints tables on stdout; the full output is kept in
# build/bench-gpu/. Copy the results into bench/RESULTS.md ("GPU" section) with the date,
# the device and this command.
#   1. op level (build/bench/gpu_ops): the GEMMs of one Wan 2.1 14B block at 37440 tokens in
#      TFLOP/s, self- and cross-attention forward and backward, the memory-bound ops in GB/s
#   2. whole blocks and models, and the PyTorch comparison (issue 6's benchmark; section 2 below)
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
# Issue 6's benchmark, in this run on this GPU:
#   a. build/bench/gpu_model --case 14b: a stack of Wan blocks at the 14B width (dim 5120, 40 heads,
#      ffn 13824, text 512 x 4096) at sequence 37440 without recompute (each layer keeps its ~10 GiB
#      of activations, so nothing is computed twice: model FLOPs leave recompute's extra forward
#      out, and it would cost the stack about 15%), as many layers as fit (probed: memory per layer
#      from 1- and 2-layer runs); step time (forward + backward + AdamW), tokens/s, model TFLOP/s
#      by the Wan formula restricted to the stack's layers; per-op time breakdown
#   b. build/bench/gpu_model --case 1.3b: the 1.3B model (configs/wan2.1-1.3b.cfg, sequence 32760,
#      its recompute: keep-attention, which its 30 layers need on an 80 GB GPU)
#   c. bench/torch_block_gpu.py: the same model in PyTorch (bf16 autocast, SDPA, torch.compile,
#      the same recompute, fused AdamW) at the same shapes and layer count, timed the same way
# The merged table, with the date, the device and the versions filled in, is printed last and
# written to build/bench-gpu/RESULTS-gpu-model.md for bench/RESULTS.md.
# Environment: BENCH_CASES ("14b 1.3b"), BENCH_STEPS (5 timed steps), BENCH_WARMUP (2),
# BENCH_RECOMPUTE (keep-attention, full or none for every case, both implementations; by default
# none for 14b and keep-attention for 1.3b),
# BENCH_TORCH=0 skips PyTorch. One case with PyTorch takes a few minutes (torch.compile included).
cases=${BENCH_CASES:-14b 1.3b}
msteps=${BENCH_STEPS:-5}
mwarm=${BENCH_WARMUP:-2}
if [ ! -x build/bench/gpu_model ]; then
    echo "bench-gpu: build/bench/gpu_model is not built" >&2
    status=1
else
    for case in $cases; do
        recompute=${BENCH_RECOMPUTE:-$([ "$case" = 14b ] && echo none || echo keep-attention)}
        rm -f "$OUT/wan_$case.json" "$OUT/torch_$case.json"
        echo "== whole model, ours: gpu_model --case $case"
        build/bench/gpu_model --case "$case" --steps "$msteps" --warmup "$mwarm" --recompute "$recompute" --json "$OUT/wan_$case.json" \
            2>"$OUT/gpu_model_$case.err" | tee "$OUT/gpu_model_$case.txt" ||
            { status=1; tail -n 5 "$OUT/gpu_model_$case.err" >&2; }
        [ "${BENCH_TORCH:-1}" = 0 ] && continue
        layers=()
        if [ "$case" = 14b ]; then # the same number of layers as ours (4 if ours failed)
            L=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))[0]; print(r["layers"] if r["ok"] else 4)' \
                "$OUT/wan_$case.json" 2>/dev/null || echo 4)
            layers=(--layers "$L")
        fi
        echo "== whole model, PyTorch: bench/torch_block_gpu.py --case $case ${layers[*]}"
        # PyTorch loads the CUDA libraries of its own wheels: not the ones `make bench-gpu` put
        # first on LD_LIBRARY_PATH for our programs (a different cuDNN or cuBLAS would be taken)
        LD_LIBRARY_PATH=${WAN_OUTER_LD_LIBRARY_PATH-${LD_LIBRARY_PATH-}} \
        python3 bench/torch_block_gpu.py --case "$case" "${layers[@]}" --steps "$msteps" --warmup "$mwarm" \
            --recompute "$recompute" --json "$OUT/torch_$case.json" 2>"$OUT/torch_$case.err" | tee "$OUT/torch_$case.txt" ||
            { status=1; tail -n 5 "$OUT/torch_$case.err" >&2; }
    done
    # shellcheck disable=SC2086
    python3 - "$OUT" "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1)" $cases \
        <<'PYEOF' | tee "$OUT/RESULTS-gpu-model.md"
import json, os, sys
out, date, rev, smi, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
name, _, driver = smi.partition(',')


def load(impl, case):
    try:
        return json.load(open(os.path.join(out, '%s_%s.json' % (impl, case))))[0]
    except (OSError, ValueError, IndexError):
        return None


def breakdown(case, rows=12):
    """The first rows of gpu_model's per-op table and its 'By kind' line."""
    try:
        lines = open(os.path.join(out, 'gpu_model_%s.txt' % case)).read().splitlines()
    except OSError:
        return []
    keep, on, n = [], False, 0
    for line in lines:
        if line.startswith('Per-op time of one step'):
            on = True
            keep += [line, '']
        elif on and (line.startswith('| op |') or line.startswith('|---')):
            keep.append(line)
        elif on and line.startswith('| ') and n < rows:
            keep.append(line)
            n += 1
        elif on and line.startswith('By kind'):
            keep += ['', line]
            break
    return keep


recs = {c: (load('wan', c), load('torch', c)) for c in cases}
versions = [r['versions'] for c in cases for r in recs[c] if r and r.get('versions')]
print('\n### Run: %s, %s (driver %s), git %s' % (date, name.strip() or '?', driver.strip() or '?', rev))
print('Command: `make bench-gpu` (equivalently `bench/gpu.sh`); %s' % '; '.join(dict.fromkeys(versions)))
print()
print('| what | implementation | layers | memory per layer (GiB) | peak / total memory (GiB) | step (ms) | tokens/s '
      '| model TFLOP/s | ours / PyTorch |')
print('|---|---|---|---|---|---|---|---|---|')
verdict = []
for c in cases:
    w, t = recs[c]
    ratio = None
    if w and t and w.get('ok') and t.get('ok') and t['model_tflops'] > 0:
        ratio = w['model_tflops'] / t['model_tflops']
    for r in (w, t):
        if r is None:
            continue
        if r['impl'] == 'wan':
            impl = 'wan (CUDA backend)'
        else:
            impl = 'PyTorch (bf16 autocast, SDPA, %s)' % ('torch.compile' if r.get('compiled') else 'eager')
        impl += ', recompute %s' % r.get('recompute', '?')
        what = '%s, seq %s' % (r['what'], r.get('tokens', '?'))
        if not r.get('ok'):
            print('| %s | %s | %s | | | FAILED | | | |' % (what, impl, r.get('layers', '?')))
            continue
        fit = ' (fit: %d)' % r['layers_fit'] if r.get('layers_fit') else ''
        mpl = '%.2f' % r['mem_per_layer_gib'] if r.get('mem_per_layer_gib') else '-'
        rr = '-' if not ratio else '%.2f' % ratio if r['impl'] == 'wan' else '1.00'
        print('| %s | %s | %d%s | %s | %.1f / %.1f | %.1f | %.0f | **%.1f** | %s |' % (
            what, impl, r['layers'], fit, mpl, r['mem_peak_gib'], r['mem_total_gib'], r['step_s'] * 1e3,
            r['tokens_per_s'], r['model_tflops'], rr))
    if c == '14b' and w and w.get('ok'):
        verdict.append('14B width: %.1f model TFLOP/s on this GPU (target >= 400: %s)' % (
            w['model_tflops'], 'met' if w['model_tflops'] >= 400 else 'NOT met'))
        if ratio:
            verdict.append('%.2f x PyTorch (target >= 1.2: %s)' % (ratio, 'met' if ratio >= 1.2 else 'NOT met'))
        if w.get('marginal_layer_tflops'):
            verdict.append('one more layer costs %.1f ms: %.1f model TFLOP/s' % (w['marginal_layer_s'] * 1e3,
                                                                              w['marginal_layer_tflops']))
print('| target: 14B width on one H100 | | | | | | | >= 400 | >= 1.2 |')
print('| reference: NeMo DFM, Wan 2.1 14B, 64 x H100 | | | | | | | 309.66 | |')
print('| reference: NeMo DFM PyTorch-native path, 8 x H100 | | | | | | | 175.88 | |')
print()
print('Model TFLOP/s by the Wan formula (lib/flops.h; 3 x forward; recompute not counted). 14B-width stack: its L '
      'layers only, 3 L (self + cross + mlp) per sample of 37440 tokens, although its step also runs the embeddings, '
      'the head and AdamW over all parameters; 1.3B: the whole formula. Median of the timed steps, each ended by a '
      'device synchronisation; random weights and data; ours / PyTorch compares model TFLOP/s.')
if verdict:
    print('\n' + '; '.join(verdict) + '.')
for c in cases:
    b = breakdown(c)
    if b:
        print()
        print('\n'.join(b))
PYEOF
fi
# ------------------------------------------------------------------------------------------------

exit $status
