#!/usr/bin/env bash
# make test-gpu: the checks that need an NVIDIA GPU, in one command (the Makefile builds `tests`
# first). Exit 0 only when every step passed.
#   1. gpu_check: every CUDA op, forward and backward, against the CPU backend (fresh random data,
#      outputs poisoned), as a table
#   2. the same on small shapes under compute-sanitizer memcheck: must report 0 errors
#   3. cuDNN attention graphs up to execution plans (test_cudnn_graph, with the GPU)
#   4. the NCCL transport: one rank per GPU, every collective; with two GPUs or more also a hung
#      rank that the others must report within the timeout
#   5. the whole model's loss and gradients against the CPU backend, and ten training steps whose
#      losses follow the CPU run (build/tests/tools/gpu_model_check); the model under memcheck
# Logs go to build/test-gpu/. WAN_TEST_GPU_STRICT=1 makes a missing check (step 5 before the
# model check exists, step 2 without compute-sanitizer) a failure.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TOOLS=build/tests/tools
LOGS=build/test-gpu
mkdir -p "$LOGS"
export WAN_NO_BAR=1
results=()
failed=0
missing=0

record() { # name, status (ok | FAIL | MISSING), detail
    results+=("$(printf '%-40s %-8s %s' "$1" "$2" "$3")")
    case $2 in FAIL) failed=$((failed + 1)) ;; MISSING) missing=$((missing + 1)) ;; esac
}

# ---- 0. is there a GPU this build can use?
if ! [ -x "$TOOLS/gpu_check" ]; then
    echo "test-gpu: $TOOLS/gpu_check is not built (run make tests)" >&2
    exit 1
fi
if ! "$TOOLS/gpu_check" --probe; then
    echo "test-gpu: the CUDA backend cannot start here (see the message above): nothing was checked" >&2
    exit 1
fi
ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
[ "${ngpu:-0}" -ge 1 ] || ngpu=1

# ---- 1. every op against its CPU twin
echo "== gpu_check (every op against the CPU backend)"
set -o pipefail
if timeout 900 "$TOOLS/gpu_check" 2>&1 | tee "$LOGS/gpu_check.log"; then
    record "ops vs CPU (gpu_check)" ok "$(tail -n1 "$LOGS/gpu_check.log")"
else
    record "ops vs CPU (gpu_check)" FAIL "see $LOGS/gpu_check.log"
fi

# ---- 2. compute-sanitizer memcheck on the small shapes
sanitizer=$(command -v compute-sanitizer || true)
for d in /usr/local/cuda/bin /opt/nvidia/compute-sanitizer /usr/local/cuda/compute-sanitizer; do
    [ -z "$sanitizer" ] && [ -x "$d/compute-sanitizer" ] && sanitizer=$d/compute-sanitizer
done
echo "== compute-sanitizer memcheck (gpu_check --quick)"
if [ -z "$sanitizer" ]; then
    record "memcheck (compute-sanitizer)" MISSING "compute-sanitizer not found"
else
    timeout 1800 "$sanitizer" --tool memcheck --error-exitcode 99 --print-limit 20 \
        "$TOOLS/gpu_check" --quick >"$LOGS/memcheck.log" 2>&1
    rc=$?
    tail -n 5 "$LOGS/memcheck.log"
    if [ $rc = 0 ] && grep -q 'ERROR SUMMARY: 0 errors' "$LOGS/memcheck.log"; then
        record "memcheck (compute-sanitizer)" ok "0 errors"
    else
        record "memcheck (compute-sanitizer)" FAIL "exit $rc, see $LOGS/memcheck.log"
    fi
fi

# ---- 3. cuDNN attention graphs with the GPU (execution plans)
if [ -x build/tests/test_cudnn_graph ]; then
    echo "== test_cudnn_graph"
    if timeout 900 build/tests/test_cudnn_graph >"$LOGS/cudnn_graph.log" 2>&1; then
        record "cuDNN graphs (test_cudnn_graph)" ok "$(tail -n1 "$LOGS/cudnn_graph.log")"
    else
        record "cuDNN graphs (test_cudnn_graph)" FAIL "see $LOGS/cudnn_graph.log"
    fi
fi

# ---- 4. NCCL: one rank per GPU
echo "== NCCL transport ($ngpu rank(s))"
if timeout 600 "$TOOLS/gpu_check" --nccl --nproc "$ngpu" >"$LOGS/nccl.log" 2>&1 &&
    [ "$(grep -c ': [0-9]* passed, 0 failed' "$LOGS/nccl.log")" = "$ngpu" ]; then
    record "NCCL collectives ($ngpu ranks)" ok "$(grep -m1 'passed' "$LOGS/nccl.log")"
else
    record "NCCL collectives ($ngpu ranks)" FAIL "see $LOGS/nccl.log"
fi
if [ "$ngpu" -ge 2 ]; then
    timeout 300 "$TOOLS/gpu_check" --nccl --nproc "$ngpu" --timeout 10 --hang-rank 1 >"$LOGS/nccl_hang.log" 2>&1
    if [ "$(grep -c '^rank [0-9]*: [0-9]* passed, 0 failed' "$LOGS/nccl_hang.log")" = $((ngpu - 1)) ]; then
        record "NCCL hung peer reported" ok "$(grep -m1 'hung peer' "$LOGS/nccl_hang.log" | cut -c1-120)"
    else
        record "NCCL hung peer reported" FAIL "see $LOGS/nccl_hang.log"
    fi
fi

# ---- 5. the whole model (tests/tools/gpu_model_check.c): the tiny model (configs/tiny.cfg dims)
# and one with head_dim 128, same weights and inputs on both backends: loss, prediction and every
# parameter gradient (a table of the worst tensors), a second micro-batch accumulated, then ten
# training steps (model + AdamW) whose losses and gradient norms must follow the CPU run; then the
# tiny model's forward, backward and optimizer steps under compute-sanitizer memcheck.
if [ -x "$TOOLS/gpu_model_check" ]; then
    echo "== gpu_model_check (whole model vs CPU; ten training steps)"
    if timeout 1800 "$TOOLS/gpu_model_check" 2>&1 | tee "$LOGS/model_check.log"; then
        record "whole model vs CPU (gpu_model_check)" ok "$(tail -n1 "$LOGS/model_check.log" | cut -c1-100)"
    else
        record "whole model vs CPU (gpu_model_check)" FAIL "see $LOGS/model_check.log"
    fi
    if [ -n "$sanitizer" ]; then
        echo "== compute-sanitizer memcheck (gpu_model_check --case tiny --steps 2)"
        timeout 1800 "$sanitizer" --tool memcheck --error-exitcode 99 --print-limit 20 \
            "$TOOLS/gpu_model_check" --case tiny --steps 2 >"$LOGS/model_memcheck.log" 2>&1
        rc=$?
        tail -n 3 "$LOGS/model_memcheck.log"
        if [ $rc = 0 ] && grep -q 'ERROR SUMMARY: 0 errors' "$LOGS/model_memcheck.log"; then
            record "whole model under memcheck" ok "0 errors"
        else
            record "whole model under memcheck" FAIL "exit $rc, see $LOGS/model_memcheck.log"
        fi
    else
        record "whole model under memcheck" MISSING "compute-sanitizer not found"
    fi
else
    record "whole model vs CPU (gpu_model_check)" MISSING "$TOOLS/gpu_model_check is not built"
fi

echo
echo "== test-gpu summary ($("$TOOLS/gpu_check" --probe 2>/dev/null | sed 's/.*: //'))"
for r in "${results[@]}"; do echo "$r"; done
if [ "${WAN_TEST_GPU_STRICT:-0}" = 1 ] && [ $missing -gt 0 ]; then failed=$((failed + missing)); fi
echo "test-gpu: $((${#results[@]} - failed - missing)) passed, $failed failed, $missing missing"
[ $failed = 0 ]
