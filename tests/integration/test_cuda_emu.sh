#!/usr/bin/env bash
# The CUDA backend without a GPU: the emulation build (make EMU=1, build/emu) compiles the
# backend's kernels as host C++ and runs them on the fiber emulator of tests/emu, with cuBLASLt
# and cuDNN replaced by CPU stand-ins that execute what the backend asks of them (the cuDNN one
# interprets the attention graphs), under AddressSanitizer. What it checks:
#   1. the emulator itself catches the kernel bugs it exists for (emu_selfcheck)
#   2. the stand-ins against independent references (test_cublaslt_emu, test_sdpa_emu)
#   3. gpu_check: every CUDA op against its CPU twin, threads run in both orders; the matmuls
#      again with cuBLASLt refusing every shape (the fallback GEMM kernel)
#   4. gpu_model_check: the whole model's loss and gradients, and ten training steps, against the
#      CPU backend; a planted weight error must make it fail
#   5. wan-train with train.device = "cuda" on the emulator, a few steps, losses near the CPU run
#   6. make test-gpu's driver: its deadline stops a step and reports the rest as not run
# It does not show that the code is right on a GPU: the libraries' stand-ins follow their
# documentation as we read it, and the GPU's timing, memory model and fast math are not there.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. tests/lib.sh
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 WAN_NO_BAR=1
EMU=build/emu

if t_emu_skip; then
    t_summary
    exit 0
fi
for b in tests/emu/emu_selfcheck tests/tools/gpu_check tests/tools/gpu_model_check bin/wan-train; do
    if ! [ -x "$EMU/$b" ]; then
        t_fail "$EMU/$b is not built (make EMU=1 emu-tools; make tests builds it when CUDA is on)"
        t_summary
        exit 1
    fi
done
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# ---- 1. the emulator catches what it must
for o in forward reverse; do
    WAN_EMU_ORDER=$o "$EMU/tests/emu/emu_selfcheck" good >"$T/log" 2>&1
    t_check "emulator: correct block sum ($o order)" [ $? = 0 ]
done
race=0
for o in forward reverse; do
    WAN_EMU_ORDER=$o "$EMU/tests/emu/emu_selfcheck" race >"$T/log.$o" 2>&1 && continue
    grep -q 'expected' "$T/log.$o" && race=1
done
t_check "emulator: a missing __syncthreads gives a wrong sum in one thread order" [ $race = 1 ]
expect_abort() { # mode, text the emulator must print
    "$EMU/tests/emu/emu_selfcheck" "$1" >"$T/log" 2>&1
    local rc=$? ok=0
    [ $rc != 0 ] && grep -q "$2" "$T/log" && ok=1
    t_check "emulator: $1 stops the kernel (exit $rc): $2" [ $ok = 1 ]
}
expect_abort early-exit '__syncthreads reached by 100 threads after 28'
expect_abort shfl-exited 'lane 7 is finished while lane 0 waits at a warp operation'
expect_abort divergent 'lane 0 is at __syncthreads while lane 16 waits'
expect_abort oob 'heap-buffer-overflow'
"$EMU/tests/emu/emu_selfcheck" config >"$T/log" 2>&1
t_check "emulator: a block of 2048 threads fails with cudaErrorInvalidConfiguration" [ $? = 0 ]

# ---- 2. the library stand-ins against their own references
for t in test_cublaslt_emu test_sdpa_emu; do
    if [ -x "$EMU/tests/emu/$t" ]; then
        "$EMU/tests/emu/$t" >"$T/$t.log" 2>&1
        rc=$?
        t_check "$t: $(tail -n1 "$T/$t.log")" [ $rc = 0 ]
        [ $rc = 0 ] || tail -n 20 "$T/$t.log"
    else
        t_fail "$EMU/tests/emu/$t is not built"
    fi
done

# ---- 3. every op against its CPU twin, both thread orders
for o in forward reverse; do
    WAN_EMU_ORDER=$o timeout 600 "$EMU/tests/tools/gpu_check" --quick --seed 7 >"$T/ops.$o.log" 2>&1
    rc=$?
    t_check "gpu_check --quick on the emulator ($o order): $(tail -n1 "$T/ops.$o.log")" [ $rc = 0 ]
    [ $rc = 0 ] || grep -v ' ok$' "$T/ops.$o.log" | tail -n 30
done

# cuBLASLt without an algorithm (its heuristic may refuse degenerate shapes): every GEMM through
# the fallback kernel, still equal to the CPU backend, and said once per shape
WAN_EMU_CUBLASLT_REFUSE=1000000000 timeout 600 "$EMU/tests/tools/gpu_check" --quick --seed 7 --only matmul \
    >"$T/fallback.log" 2>"$T/fallback.err"
rc=$? ok=0
[ $rc = 0 ] && [ "$(grep -c 'using the fallback kernel' "$T/fallback.err")" -gt 5 ] && ok=1
t_check "GEMM fallback kernel for every matmul check: $(tail -n1 "$T/fallback.log")" [ $ok = 1 ]
[ $rc = 0 ] || grep -v ' ok$' "$T/fallback.log" | tail -n 20

# the FFN's GELU: in cuBLASLt's epilogues where an algorithm has them (the odd shape's leading
# dimensions are no multiples of 8: a kernel after the GEMM, said once per shape), or with
# WAN_GEMM_GELU_EPILOGUE=0 always as a kernel (the epilogue never asked for); other values refused
t_check "the odd shape's GELU as a kernel after the GEMM, saying why (aux leading dimension, before any heuristic)" \
    grep -q "is not a multiple of 8 the GELU epilogue's auxiliary matrix needs" "$T/ops.forward.log"
# whether the epilogue is asked for: with every algorithm refused, the default asks for it (and
# says it got none), WAN_GEMM_GELU_EPILOGUE=0 never does; the checks pass either way
WAN_EMU_CUBLASLT_REFUSE=1000000000 timeout 600 "$EMU/tests/tools/gpu_check" --quick --seed 7 --only matmul_gelu \
    >"$T/gelu_refused.log" 2>&1
rc=$?
t_check_all "GELU epilogue asked for by default: $(tail -n1 "$T/gelu_refused.log")" \
    '[ $rc = 0 ] && grep -q "no algorithm with the GELU epilogue" "$T/gelu_refused.log" &&
     grep -q "no algorithm with the DGELU epilogue" "$T/gelu_refused.log"'
WAN_GEMM_GELU_EPILOGUE=0 WAN_EMU_CUBLASLT_REFUSE=1000000000 timeout 600 "$EMU/tests/tools/gpu_check" --quick --seed 7 \
    --only matmul_gelu >"$T/nogelu.log" 2>&1
rc=$?
t_check_all "WAN_GEMM_GELU_EPILOGUE=0: the GELU as a kernel, the same checks pass: $(tail -n1 "$T/nogelu.log")" \
    '[ $rc = 0 ] && ! grep -q "EPILOGUE" "$T/nogelu.log" && ! grep -q "epilogue" "$T/nogelu.log"'
WAN_GEMM_GELU_EPILOGUE=yes "$EMU/tests/tools/gpu_check" --quick --only matmul_gelu >"$T/badgelu.log" 2>&1
rc=$?
t_check_all "WAN_GEMM_GELU_EPILOGUE=yes refused (exit $rc)" \
    '[ $rc = 2 ] && grep -q "WAN_GEMM_GELU_EPILOGUE=yes: expected 0 or 1" "$T/badgelu.log"'

# ---- 4. the whole model against the CPU backend
timeout 900 "$EMU/tests/tools/gpu_model_check" --seed 3 >"$T/model.log" 2>&1
rc=$?
t_check "gpu_model_check on the emulator: $(tail -n1 "$T/model.log" | cut -c1-120)" [ $rc = 0 ]
[ $rc = 0 ] || tail -n 40 "$T/model.log"
timeout 900 "$EMU/tests/tools/gpu_model_check" --seed 3 --case tiny --steps 2 --plant blocks.0.ffn.0.weight \
    >"$T/plant.log" 2>&1
t_check "gpu_model_check fails when one GPU weight is off by 1" [ $? = 1 ]

# ---- 5. wan-train on the emulated GPU
steps=4
common=(--config configs/tiny.cfg --set train.steps=$steps --set train.log_interval=1 --set train.ckpt_interval=0
        --set eval.interval=0)
"$EMU/bin/wan-train" "${common[@]}" --set train.device=\"cuda\" --set train.run_dir=\"$T/gpu\" >"$T/train_gpu.log" 2>&1
rc=$?
t_check "wan-train train.device=cuda on the emulator, $steps steps (exit $rc)" [ $rc = 0 ]
[ $rc = 0 ] || tail -n 30 "$T/train_gpu.log"
bin/wan-train "${common[@]}" --set train.run_dir=\"$T/cpu\" >"$T/train_cpu.log" 2>&1
t_check "wan-train on the CPU, the same $steps steps" [ $? = 0 ]
t_check "the emulated run names its device" grep -q 'CUDA emulator' "$T/train_gpu.log"
python3 - "$T/gpu/steps.jsonl" "$T/cpu/steps.jsonl" <<'EOF' >"$T/cmp.log" 2>&1
import json, sys
def steps(p):
    return [(r["loss"], r["grad_norm"]) for r in map(json.loads, open(p)) if r["type"] == "step"]
g, c = steps(sys.argv[1]), steps(sys.argv[2])
assert len(g) == len(c) > 1, (len(g), len(c))
worst = max(abs(a - b) / abs(b) for x, y in zip(g, c) for a, b in zip(x, y))
# bf16 rounding must show (an identical run would mean the GPU path never ran), within 5%
print(f"losses and gradient norms of {len(g)} steps, worst relative difference {worst:.2e} (bf16 GPU vs fp32 CPU)")
sys.exit(0 if 0 < worst < 5e-2 else 1)
EOF
rc=$?
t_check "emulated GPU losses follow the CPU run: $(tail -n1 "$T/cmp.log")" [ $rc = 0 ]
# recompute on the CUDA path (the first block rebuilt from its input in the backward, the second
# keeping its activations): the kernels are deterministic, so the state is bit-identical
"$EMU/bin/wan-train" "${common[@]}" --set train.device=\"cuda\" --set train.recompute=true --set train.recompute_layers=1 \
    --set train.memory_budget_gib=100 --set train.run_dir=\"$T/gpu-rc\" >"$T/train_gpu_rc.log" 2>&1
rc=$?
t_check_all "emulated GPU with 1 of 2 blocks recomputing (exit $rc): checkpoint bit-identical to no recompute" \
    '[ $rc = 0 ] && grep -q "recomputed [1-9][0-9]* block forwards" "$T/train_gpu_rc.log" &&
     cmp -s "$T/gpu/checkpoints/latest/rank00000.bin" "$T/gpu-rc/checkpoints/latest/rank00000.bin"'
t_check "a memory budget above the GPU's memory is a warning" \
    grep -q 'warn: train.memory_budget_gib = 100 exceeds this GPU.s 80.0 GiB' "$T/train_gpu_rc.log"
# a layout whose plan cannot fit the GPU stops before anything large is allocated, saying what
# to change (the 14B model on one 80 GiB GPU: 300.65 GiB)
"$EMU/bin/wan-train" --config configs/wan2.1-14b-h100.cfg --set parallel.tp=1 --set parallel.sp=false \
    --set parallel.cp=1 --set 'data.path=""' --set train.run_dir=\"$T/gpu-14b\" >"$T/train_gpu_14b.log" 2>&1
rc=$?
t_check_all "14B on one emulated GPU refused before allocating (exit $rc), the plan and the GPU named" \
    '[ $rc = 2 ] && grep -q "pipeline stage 0 plans 300.65 GiB per GPU .* has 80.0 GiB: more model parallelism" \
        "$T/train_gpu_14b.log" && ! grep -q "out of GPU memory" "$T/train_gpu_14b.log"'

# ---- 6. make test-gpu's driver (tests/gpu/run.sh) on the emulated GPU: a lease is short, so a
# step that runs past what the deadline leaves must be stopped and named, and the steps after it
# reported as not run; WAN_TEST_GPU_STRICT=1 turns what was not run into a failing exit.
gpu_run() { # deadline, log
    WAN_GPU_TOOLS=$EMU/tests/tools WAN_GPU_TESTS=$T/none WAN_GPU_LOGS=$T/gpu-logs \
        WAN_TEST_GPU_DEADLINE=$1 WAN_TEST_GPU_STRICT=1 timeout 120 tests/gpu/run.sh >"$2" 2>&1
}
gpu_run 30 "$T/run_short.log"
rc=$? ok=0
[ $rc = 1 ] && grep -Eq 'ops vs CPU \(gpu_check\) *FAIL *timed out after [0-9]+ s' "$T/run_short.log" && ok=1
t_check "test-gpu driver: gpu_check stopped at the deadline, exit $rc" [ $ok = 1 ]
t_check "test-gpu driver: the model check is reported as not run (deadline)" \
    grep -q 'whole model vs CPU (gpu_model_check) *MISSING *deadline' "$T/run_short.log"
t_check "test-gpu driver: summary line counts the failure and the missing checks" \
    grep -Eq '^test-gpu: 0 passed, 1 failed, [1-9] missing$' "$T/run_short.log"
[ $rc = 1 ] || tail -n 20 "$T/run_short.log"
gpu_run 10 "$T/run_none.log"
rc=$? ok=0
[ $rc = 1 ] && grep -q 'a missing check is a failure' "$T/run_none.log" && ! grep -q ' ok ' "$T/run_none.log" && ok=1
t_check "test-gpu driver: nothing fits a 10 s deadline, strict exit $rc" [ $ok = 1 ]
t_summary
