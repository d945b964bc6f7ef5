#!/usr/bin/env bash
# gpu_model_check (the whole model on the CUDA backend against the CPU backend, run by
# `make test-gpu`) tested without a GPU: with a second CPU backend in the GPU's place every check
# must pass (fp32 twin: errors exactly 0; bf16-storage twin: within the GPU's bf16 tolerances),
# and a difference planted in one weight on the twin's side must make it fail, naming the
# gradients. Without a GPU the real mode must refuse to run and say why.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
TOOL=$ROOT/build/tests/tools/gpu_model_check
if [ ! -x "$TOOL" ]; then
    t_fail "gpu_model_check: not built"
    t_summary
    exit 1
fi
run() { # log, args...: exit status in $rc
    local log=$1
    shift
    timeout 300 "$TOOL" --threads 1 --seed 7 "$@" >"$T_TMP/$log" 2>&1
    rc=$?
}
passes() { # log: exit 0, the summary line says 0 failed, and enough checks ran
    local n
    n=$(sed -n 's/^gpu_model_check: \([0-9]*\) checks, 0 failed.*/\1/p' "$T_TMP/$1")
    [ "$rc" = 0 ] && [ -n "$n" ] && [ "$n" -ge 20 ] && ! grep -q '^FAIL' "$T_TMP/$1"
}

# ---- fp32 twin: the same backend twice, bit-identical
run f32.log --cpu-twin
if passes f32.log && grep -q 'worst rel err 0.00e+00' "$T_TMP/f32.log"; then
    t_ok "--cpu-twin (fp32): $(tail -n1 "$T_TMP/f32.log" | cut -c1-60)"
else
    t_fail "--cpu-twin (fp32): exit $rc"
    grep -E '^FAIL|error' "$T_TMP/f32.log" | head -20
fi

# ---- bf16-storage twin: the GPU's tolerances hold for bf16 rounding
run bf16.log --cpu-twin=bf16
if passes bf16.log; then
    t_ok "--cpu-twin=bf16: $(tail -n1 "$T_TMP/bf16.log" | cut -c1-60)"
else
    t_fail "--cpu-twin=bf16: exit $rc"
    grep -E 'FAIL|error' "$T_TMP/bf16.log" | head -20
fi
# both models and all parts ran: gradients table, accumulation, ten training steps
for what in "^== tiny:" "^== hd128:" "^ok     gradients, one micro-batch: 69 tensors" \
    "^ok     gradients, two micro-batches accumulated: 69 tensors" "^ok     training: losses follow the CPU run" \
    "^ok     training: the CPU loss fell"; do
    case $what in "^=="*) want=1 ;; *) want=2 ;; esac
    n=$(grep -c -- "$what" "$T_TMP/bf16.log")
    if [ "$n" = $want ]; then t_ok "--cpu-twin=bf16: '${what#^}' x $n"; else t_fail "--cpu-twin=bf16: '${what#^}' x $n, expected $want"; fi
done
steps=$(grep -cE '^  (10|[1-9]) ' "$T_TMP/bf16.log")
t_check "ten training steps per model ($steps rows)" [ "$steps" = 20 ]

# ---- a planted difference must fail: one weight off by 1 on the twin's side (bf16 tolerances),
# and a tiny one under the fp32 twin's exact comparison
run plant.log --cpu-twin=bf16 --case tiny --plant blocks.1.ffn.2.weight
if [ "$rc" = 1 ] && grep -q '^planted: blocks.1.ffn.2.weight' "$T_TMP/plant.log" &&
    grep -q '^FAIL   gradients, one micro-batch' "$T_TMP/plant.log" &&
    grep -qE 'checks, [1-9][0-9]* failed' "$T_TMP/plant.log"; then
    t_ok "a weight planted off by 1 fails the bf16 check: $(grep -m1 '^FAIL   gradients' "$T_TMP/plant.log" | cut -c8-100)"
else
    t_fail "planted difference (bf16 twin) not caught: exit $rc"
    tail -n 5 "$T_TMP/plant.log"
fi
run plant32.log --cpu-twin --case hd128 --plant blocks.0.cross_attn.k.weight:0.001 --steps 3
if [ "$rc" = 1 ] && grep -q '^FAIL   prediction' "$T_TMP/plant32.log" && grep -q '^FAIL   gradients' "$T_TMP/plant32.log"; then
    t_ok "a weight planted off by 0.001 fails the fp32 twin's exact check"
else
    t_fail "planted difference (fp32 twin) not caught: exit $rc"
    tail -n 5 "$T_TMP/plant32.log"
fi

# ---- usage errors and the real mode without a GPU
timeout 60 "$TOOL" --cpu-twin=fp64 >/dev/null 2>&1
t_check "--cpu-twin=fp64 is a usage error (exit 2)" [ $? = 2 ]
run plant_bad.log --cpu-twin --plant no.such.weight
t_check "--plant of an unknown parameter is a usage error (exit 2)" [ "$rc" = 2 ]
have_gpu=
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then have_gpu=1; fi
if [ -z "$have_gpu" ]; then
    err=$(timeout 60 "$TOOL" 2>&1)
    rc=$?
    if [ $rc = 1 ] && [[ $err == *"no CUDA GPU found"* ]]; then
        t_ok "without a GPU (CUDA build): exit 1, 'no CUDA GPU found'"
    elif [ $rc = 2 ] && [[ $err == *"this build has no CUDA backend"* ]]; then
        t_ok "without CUDA (CUDA=0 build): exit 2, 'this build has no CUDA backend'"
    else
        t_fail "without a GPU: exit $rc: $err"
    fi
fi
# ---- the benchmark's CPU stand-ins (bench/gpu.sh's whole-model part): gpu_model's probe, fit,
# out-of-memory retry, per-op shim and tables on the CPU backend (built by `make bench-bins`), and
# the PyTorch baseline: the same model as tests/python/wan_reference.py, and its timing loop
GM=$ROOT/build/bench/gpu_model
if [ -x "$GM" ]; then
    timeout 300 "$GM" --cpu-twin --threads 1 --steps 2 --warmup 1 --fit-extra 1 --json "$T_TMP/gm.json" \
        >"$T_TMP/gm.log" 2>&1
    rc=$?
    fit=$(sed -n 's/.*-> \([0-9]*\) layers (at most.*/\1/p' "$T_TMP/gm.log")
    if [ $rc = 0 ] && [ -n "$fit" ] && grep -q "the run with $fit layers was killed by signal 6" "$T_TMP/gm.log" &&
        grep -q "^| 14B-width block stack | $((fit - 1)) (fit: $fit) |" "$T_TMP/gm.log" &&
        grep -q '^| Wan 2.1 1.3B model | 3 |' "$T_TMP/gm.log" && grep -q '^| matmul_fwd ' "$T_TMP/gm.log" &&
        grep -q '^By kind: matmul' "$T_TMP/gm.log"; then
        t_ok "gpu_model --cpu-twin: probe, fit ($((fit - 1)) layers after $fit ran out of memory), tables"
    else
        t_fail "gpu_model --cpu-twin: exit $rc"
        tail -n 20 "$T_TMP/gm.log"
    fi
    if /usr/bin/python3 - "$T_TMP/gm.json" <<'EOF'; then
import json, sys
r = json.load(open(sys.argv[1]))
assert [x['case'] for x in r] == ['14b', '1.3b'] and all(x['ok'] for x in r), r
s, m = r
assert s['layers'] == s['layers_fit'] - 1 and s['mem_per_layer_gib'] > 0 and 'marginal_layer_s' in s
# the FLOPs counted: the stack's layers only, the 1.3B model's whole formula
assert abs(s['model_tflops'] - s['tflops_layers']) < 1e-9 < s['tflops_whole_formula'] - s['tflops_layers']
assert abs(m['model_tflops'] - m['tflops_whole_formula']) < 1e-9 and m['tokens_per_s'] > 0
EOF
        t_ok "gpu_model --json: both cases, FLOPs counted as documented"
    else
        t_fail "gpu_model --json"
    fi
else
    echo "# build/bench/gpu_model not built (make bench-bins): its CPU check is left out"
fi
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    out=$(cd "$ROOT" && timeout 300 /usr/bin/python3 bench/torch_block_gpu.py --self-check 2>&1)
    rc=$?
    if [ $rc = 0 ] && [[ $out == *"self-check: gradients"*": ok"* ]] && [[ $out != *FAIL* ]]; then
        t_ok "torch_block_gpu.py computes wan_reference.py's model (fp32, each recompute mode): ${out##*$'\n'}"
    else
        t_fail "torch_block_gpu.py --self-check: $out"
    fi
    out=$(cd "$ROOT" && timeout 300 /usr/bin/python3 bench/torch_block_gpu.py --device cpu --tiny --case 14b --layers 2 \
        --warmup 0 --steps 2 --threads 1 --json "$T_TMP/tb.json" 2>&1)
    if [[ $out == *"| PyTorch: 14B-width block stack | 2 |"* ]] && /usr/bin/python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))[0]
assert r["ok"] and r["layers"] == 2 and r["steps"] == 2 and r["losses"][-1] < r["losses"][0], r' "$T_TMP/tb.json"; then
        t_ok "torch_block_gpu.py --device cpu --tiny: two steps, the loss falls"
    else
        t_fail "torch_block_gpu.py --device cpu --tiny: $out"
    fi
else
    echo "# no PyTorch for /usr/bin/python3: torch_block_gpu.py's CPU checks are left out"
fi
t_summary
