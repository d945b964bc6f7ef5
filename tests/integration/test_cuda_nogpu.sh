#!/usr/bin/env bash
# The CUDA backend on a machine without a GPU (CI, most development machines): every program
# starts, none needs the driver library to load, and asking for the CUDA backend fails at once
# with a clear message and a non-zero exit: "no CUDA GPU found" in a CUDA build, "this build
# has no CUDA backend" in a CUDA=0 build. On a machine with a GPU the same checks expect the
# backend to start (gpu_check --probe), so the test holds everywhere.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
TOOLS=$ROOT/build/tests/tools

# ---- every program starts and says whether it has the CUDA backend
cuda_build=
for p in wan-preprocess wan-train wan-reshard wan-report wan-eval; do
    if [ ! -x "$BIN/$p" ]; then t_fail "$p: not built"; continue; fi
    out=$("$BIN/$p" --version 2>&1)
    rc=$?
    if [ $rc = 0 ] && [[ $out == *"CUDA backend: "* ]]; then t_ok "$p --version"; else t_fail "$p --version (exit $rc: $out)"; fi
    [[ $out == *"CUDA backend: yes"* ]] && cuda_build=1
    if "$BIN/$p" --help >/dev/null 2>&1; then t_ok "$p --help"; else t_fail "$p --help"; fi
    # the driver (libcuda) is loaded by the CUDA runtime when asked, never linked
    if readelf -d "$BIN/$p" | grep -q 'NEEDED.*libcuda\.so'; then t_fail "$p links libcuda.so"; else t_ok "$p does not link libcuda.so"; fi
done

have_gpu=
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then have_gpu=1; fi
if [ -n "$cuda_build" ]; then expect="no CUDA GPU found"; expect_rc=1; else expect="this build has no CUDA backend"; expect_rc=2; fi
echo "# CUDA build: ${cuda_build:-no}; GPU present: ${have_gpu:-no}"

# ---- the backend itself (gpu_check --probe only starts it)
if [ ! -x "$TOOLS/gpu_check" ]; then
    t_fail "gpu_check: not built"
else
    err=$(timeout 60 "$TOOLS/gpu_check" --probe 2>&1)
    rc=$?
    if [ -n "$have_gpu" ] && [ -n "$cuda_build" ]; then
        t_check "gpu_check --probe starts the backend on the GPU" [ $rc = 0 ]
    else
        if [ $rc = "$expect_rc" ] && [[ $err == *"$expect"* ]]; then
            t_ok "gpu_check --probe: exit $rc, '$expect'"
        else
            t_fail "gpu_check --probe: exit $rc, expected $expect_rc and '$expect': $err"
        fi
    fi
    # a full check needs the GPU too: without one it must not pretend to pass
    if [ -z "$have_gpu" ] || [ -z "$cuda_build" ]; then
        timeout 60 "$TOOLS/gpu_check" --quick >/dev/null 2>&1
        rc=$?
        if [ $rc != 0 ] && [ $rc != 124 ]; then t_ok "gpu_check without a GPU exits $rc"; else t_fail "gpu_check without a GPU: exit $rc"; fi
    fi
fi

# ---- the checker itself, with a second CPU backend in the GPU's place: every op runs through
# the same wiring, strides and poison as on a GPU, and every row must pass
if [ -x "$TOOLS/gpu_check" ]; then
    out=$(timeout 300 "$TOOLS/gpu_check" --cpu-twin --quick 2>&1)
    rc=$?
    rows=$(grep -c ' ok$' <<<"$out")
    if [ $rc = 0 ] && [[ $out == *"checks, 0 failed"* ]] && [ "$rows" -ge 80 ]; then
        t_ok "gpu_check --cpu-twin: $rows rows pass"
    else
        t_fail "gpu_check --cpu-twin: exit $rc, $rows rows ok"
        grep -v ' ok$' <<<"$out" | tail -n 20
    fi
fi

# ---- wan-train with train.device = "cuda": fails before doing anything, writes nothing
if [ -z "$have_gpu" ] || [ -z "$cuda_build" ]; then
    err=$(timeout 60 "$BIN/wan-train" --set train.device=cuda --set train.steps=1 \
        --set "train.run_dir=$T_TMP/run" 2>&1)
    rc=$?
    if [ $rc = "$expect_rc" ] && [[ $err == *"$expect"* ]]; then
        t_ok "wan-train train.device=cuda: exit $rc, '$expect'"
    else
        t_fail "wan-train train.device=cuda: exit $rc, expected $expect_rc and '$expect': $err"
    fi
    if [ -e "$T_TMP/run/steps.jsonl" ]; then t_fail "wan-train wrote a step log without a backend"; else t_ok "no step log written"; fi
fi

# ---- the prepared lease command (tests/gpu/lease.sh): without a GPU it reports the machine,
# says so and stops before building anything; bad arguments are refused
if [ -z "$have_gpu" ]; then
    out=$(OUT=$T_TMP/lease timeout 120 "$ROOT/tests/gpu/lease.sh" test 60 2>&1)
    rc=$?
    t_check_all "lease.sh without a GPU: exit 1, 'no NVIDIA GPU', the machine report written, nothing built" \
        '[ $rc = 1 ] && [[ $out == *"no NVIDIA GPU here"* ]] && grep -q "^cudnn " "$T_TMP/lease/machine.txt" &&
         [ -s "$T_TMP/lease/lease.log" ] && ! [ -e "$T_TMP/lease/build.log" ]'
fi
OUT=$T_TMP/lease2 "$ROOT/tests/gpu/lease.sh" everything >/dev/null 2>&1
rc1=$?
OUT=$T_TMP/lease2 "$ROOT/tests/gpu/lease.sh" test soon >/dev/null 2>&1
rc2=$?
t_check_all "lease.sh refuses an unknown part and a non-numeric time (exit 2): $rc1 $rc2" '[ $rc1 = 2 ] && [ $rc2 = 2 ]'

# ---- make bench-gpu puts the build's CUDA library folders first on LD_LIBRARY_PATH for our
# programs, and gives the PyTorch baseline the caller's own (PyTorch loads its wheels' cuDNN and
# cuBLAS, not ours). A stand-in python3 records what it got; without a GPU the rest fails fast.
if [ -n "$cuda_build" ] && [ -z "$have_gpu" ]; then
    mkdir -p "$T_TMP/fakepy"
    printf '#!/bin/sh\necho "LD_LIBRARY_PATH=${LD_LIBRARY_PATH-unset} $*" >>"%s"\nexit 0\n' "$T_TMP/py.log" \
        >"$T_TMP/fakepy/python3"
    chmod +x "$T_TMP/fakepy/python3"
    PATH=$T_TMP/fakepy:$PATH LD_LIBRARY_PATH=/outer/lib BENCH_CASES=1.3b timeout 300 make -s -C "$ROOT" bench-gpu \
        >"$T_TMP/bench.log" 2>&1
    t_check_all "make bench-gpu: the PyTorch baseline gets the caller's LD_LIBRARY_PATH ($(grep -m1 torch_block "$T_TMP/py.log" | cut -c1-60))" \
        'grep -q "^LD_LIBRARY_PATH=/outer/lib bench/torch_block_gpu.py" "$T_TMP/py.log"'
    dir=$("$ROOT/mk/find-cuda-lib.sh" cudnn --libdir)
    t_check "make bench-gpu and test-gpu: the cuDNN the build found ($dir) first on our programs' LD_LIBRARY_PATH" \
        test "$(make -n -s -C "$ROOT" bench-gpu test-gpu | grep -c "LD_LIBRARY_PATH=$dir[:$]")" = 2
fi

t_summary
