#!/usr/bin/env bash
# make test-gpu: the checks that need an NVIDIA GPU, in one command (the Makefile builds the
# programs, tools and benchmarks first). Exit 0 only when every step passed.
#   1. gpu_check: every CUDA op, forward and backward, against the CPU backend (fresh random data,
#      outputs poisoned), as a table
#   2. the whole model's loss and gradients against the CPU backend, and ten training steps whose
#      losses follow the CPU run (build/tests/tools/gpu_model_check)
#   3. gpu_check on small shapes under compute-sanitizer memcheck: must report 0 errors
#   4. cuDNN attention graphs up to execution plans (test_cudnn_graph, with the GPU)
#   5. the NCCL transport: one rank per GPU, every collective; with two GPUs or more also a hung
#      rank that the others must report within the timeout
#   6. the tiny model's forward, backward and optimizer steps under memcheck
# Most telling first: a lease of a GPU is short. WAN_TEST_GPU_DEADLINE (seconds, default 540)
# bounds the whole run: each step gets at most what is left, and a step that cannot start in
# time is reported as MISSING (deadline), not run. Logs go to build/test-gpu/.
# WAN_TEST_GPU_STRICT=1 makes a missing check (no compute-sanitizer, the deadline) a failure.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
# WAN_GPU_TOOLS / WAN_GPU_TESTS: other builds of the tools (the emulation build's, in its test)
TOOLS=${WAN_GPU_TOOLS:-build/tests/tools}
UNIT=${WAN_GPU_TESTS:-build/tests}
LOGS=${WAN_GPU_LOGS:-build/test-gpu}
mkdir -p "$LOGS"
export WAN_NO_BAR=1
results=()
failed=0
missing=0
T0=$SECONDS
DEADLINE=${WAN_TEST_GPU_DEADLINE:-540}

record() { # name, status (ok | FAIL | MISSING), detail
    results+=("$(printf '%-40s %-8s %s' "$1" "$2" "$3")")
    case $2 in FAIL) failed=$((failed + 1)) ;; MISSING) missing=$((missing + 1)) ;; esac
}
# limit CAP: seconds a step may take, at most what the deadline leaves (0: do not start it)
limit() {
    local left=$((DEADLINE - (SECONDS - T0) - 5)) cap=$1
    [ $left -ge 20 ] || { echo 0; return; }
    echo $((cap < left ? cap : left))
}
# a step's exit status 124 is its time limit
why() { [ "$1" = 124 ] && echo "timed out after $2 s" || echo "exit $1"; }

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

# step NAME CAP LOG COMMAND...: run a check within CAP seconds (less if the deadline is nearer),
# its output shown and kept in LOG, and record it by its exit status
step() {
    local name=$1 lim rc
    lim=$(limit "$2")
    local log=$3
    shift 3
    if [ "$lim" = 0 ]; then record "$name" MISSING "deadline"; return; fi
    timeout "$lim" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then
        record "$name" ok "$(tail -n1 "$log" | cut -c1-100)"
    else
        record "$name" FAIL "$(why "$rc" "$lim"), see $log"
    fi
}

# ---- 1. every op against its CPU twin
echo "== gpu_check (every op against the CPU backend)"
step "ops vs CPU (gpu_check)" 300 "$LOGS/gpu_check.log" "$TOOLS/gpu_check"

# ---- 2. the whole model (tests/tools/gpu_model_check.c): the tiny model (configs/tiny.cfg dims)
# and one with head_dim 128, same weights and inputs on both backends: loss, prediction and every
# parameter gradient (a table of the worst tensors), a second micro-batch accumulated, then ten
# training steps (model + AdamW) whose losses and gradient norms must follow the CPU run.
echo "== gpu_model_check (whole model vs CPU; ten training steps)"
step "whole model vs CPU (gpu_model_check)" 300 "$LOGS/model_check.log" "$TOOLS/gpu_model_check"

# ---- 3. compute-sanitizer memcheck on the small shapes
sanitizer=$(command -v compute-sanitizer || true)
for d in /usr/local/cuda/bin /opt/nvidia/compute-sanitizer /usr/local/cuda/compute-sanitizer; do
    [ -z "$sanitizer" ] && [ -x "$d/compute-sanitizer" ] && sanitizer=$d/compute-sanitizer
done
memcheck() { # name, log, command...
    local name=$1 log=$2 lim rc
    shift 2
    lim=$(limit 300)
    if [ -z "$sanitizer" ]; then record "$name" MISSING "compute-sanitizer not found"; return; fi
    if [ "$lim" = 0 ]; then record "$name" MISSING "deadline"; return; fi
    echo "== compute-sanitizer memcheck: $*"
    timeout "$lim" "$sanitizer" --tool memcheck --error-exitcode 99 --print-limit 20 "$@" >"$log" 2>&1
    rc=$?
    tail -n 3 "$log"
    if [ $rc = 0 ] && grep -q 'ERROR SUMMARY: 0 errors' "$log"; then
        record "$name" ok "0 errors"
    elif grep -q 'Device not supported' "$log"; then
        # seen under gVisor sandboxes: the sanitizer cannot attach to the GPU at all
        record "$name" MISSING "compute-sanitizer cannot use this GPU ('Device not supported')"
    else
        record "$name" FAIL "$(why $rc "$lim"), see $log"
    fi
}
memcheck "memcheck (compute-sanitizer)" "$LOGS/memcheck.log" "$TOOLS/gpu_check" --quick

# ---- 4. cuDNN attention graphs with the GPU (execution plans)
if [ -x "$UNIT/test_cudnn_graph" ]; then
    echo "== test_cudnn_graph"
    step "cuDNN graphs (test_cudnn_graph)" 120 "$LOGS/cudnn_graph.log" "$UNIT/test_cudnn_graph"
fi

# ---- 5. NCCL: one rank per GPU
echo "== NCCL transport ($ngpu rank(s))"
lim=$(limit 120)
if [ "$lim" = 0 ]; then
    record "NCCL collectives ($ngpu ranks)" MISSING "deadline"
elif timeout "$lim" "$TOOLS/gpu_check" --nccl --nproc "$ngpu" >"$LOGS/nccl.log" 2>&1 &&
    [ "$(grep -c ': [0-9]* passed, 0 failed' "$LOGS/nccl.log")" = "$ngpu" ]; then
    record "NCCL collectives ($ngpu ranks)" ok "$(grep -m1 'passed' "$LOGS/nccl.log")"
else
    record "NCCL collectives ($ngpu ranks)" FAIL "see $LOGS/nccl.log"
fi
if [ "$ngpu" -ge 2 ]; then
    lim=$(limit 120)
    if [ "$lim" = 0 ]; then
        record "NCCL hung peer reported" MISSING "deadline"
    else
        timeout "$lim" "$TOOLS/gpu_check" --nccl --nproc "$ngpu" --timeout 10 --hang-rank 1 >"$LOGS/nccl_hang.log" 2>&1
        if [ "$(grep -c '^rank [0-9]*: [0-9]* passed, 0 failed' "$LOGS/nccl_hang.log")" = $((ngpu - 1)) ]; then
            record "NCCL hung peer reported" ok "$(grep -m1 'hung peer' "$LOGS/nccl_hang.log" | cut -c1-120)"
        else
            record "NCCL hung peer reported" FAIL "see $LOGS/nccl_hang.log"
        fi
    fi
fi

# ---- 6. the tiny model's forward, backward and optimizer steps under memcheck
memcheck "whole model under memcheck" "$LOGS/model_memcheck.log" "$TOOLS/gpu_model_check" --case tiny --steps 2

echo
echo "== test-gpu summary ($("$TOOLS/gpu_check" --probe 2>/dev/null | sed 's/.*: //'); $((SECONDS - T0)) s)"
for r in "${results[@]}"; do echo "$r"; done
echo "test-gpu: $((${#results[@]} - failed - missing)) passed, $failed failed, $missing missing"
if [ "${WAN_TEST_GPU_STRICT:-0}" = 1 ] && [ $missing -gt 0 ]; then
    echo "test-gpu: WAN_TEST_GPU_STRICT=1: a missing check is a failure" >&2
    exit 1
fi
[ $failed = 0 ]
