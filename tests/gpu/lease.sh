#!/usr/bin/env bash
# One call on a lent GPU machine, prepared (the device tool runs one command; its time is short
# and counted): what the machine has, the build for its GPU, `make test-gpu`, then
# `make bench-gpu` in the time left. Everything written goes to $OUT (build/lease when unset) as
# it is written, so that a call stopped at its limit still brings back what ran.
#   tests/gpu/lease.sh [all|test|bench] [SECONDS]      default: all, 540
# all: test-gpu gets what is left after the build less BENCH_RESERVE seconds (default 240) for
# the benchmark; test or bench: that one alone. The benchmark takes BENCH_CASES (default here:
# 14b, the issue's headline, with its PyTorch twin) and the other BENCH_* of bench/gpu.sh.
# Carry .gpu-debs (tests/gpu/carry-debs.sh) to a machine that may lack the build packages.
# Exit: 0 when every part that ran passed, 1 otherwise (no GPU: 1 after the machine report).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
mode=${1:-all}
total=${2:-540}
case $mode in all | test | bench) ;; *)
    echo "usage: $0 [all|test|bench] [SECONDS]" >&2
    exit 2
    ;;
esac
case $total in '' | *[!0-9]*)
    echo "$0: SECONDS must be a whole number, not '$total'" >&2
    exit 2
    ;;
esac
OUT=${OUT:-build/lease}
mkdir -p "$OUT"
T0=$SECONDS
left() { echo $((total - (SECONDS - T0))); }
exec > >(tee -a "$OUT/lease.log") 2>&1
status=0
save() { # copy what the checks and benchmarks wrote so far
    [ -d build/test-gpu ] && cp -r build/test-gpu "$OUT/" 2>/dev/null
    [ -d build/bench-gpu ] && cp -r build/bench-gpu "$OUT/" 2>/dev/null
    true
}
trap save EXIT

echo "# lease $mode, ${total}s, $(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{
    echo "== nvidia-smi"
    nvidia-smi 2>&1 | head -n 20
    echo "== nvcc"
    nvcc --version 2>&1 | tail -n 2
    echo "== libraries the build finds (mk/find-cuda-lib.sh)"
    for l in cudnn nccl cublas; do echo "$l $(mk/find-cuda-lib.sh "$l" --version 2>&1) $(mk/find-cuda-lib.sh "$l" --libs 2>&1)"; done
    echo "== python3"
    python3 -c 'import sys, torch; print(sys.executable, "torch", torch.__version__, "cuda", torch.version.cuda,
                "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.is_available())' 2>&1 | tail -n 1
    echo "== tools"
    for t in compute-sanitizer ncu gcc make; do printf '%s: %s\n' "$t" "$(command -v "$t" || echo missing)"; done
    echo "== cpus $(nproc), memory $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ')
if ! [[ $cap =~ ^[0-9]+\.[0-9]+$ ]]; then
    echo "lease: no NVIDIA GPU here (nvidia-smi gives no compute capability): nothing built or run"
    exit 1
fi
# Hopper and later: the arch-specific target (sm_90a ...), whose instructions cuBLASLt-class
# kernels use; before Hopper the plain one
arch=sm_${cap/./}
[ "${cap%%.*}" -ge 9 ] && arch=${arch}a
echo "# GPU compute capability $cap: building for $arch"

echo "== build ($(left)s left)"
tests/gpu/unpack-debs.sh || status=1
if ! timeout "$(left)" make -j"$(nproc)" --no-print-directory gpu-bins GPU_ARCH="$arch" >"$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -n 30
    tail -n 20 "$OUT/build.log"
    echo "lease: the build failed (log: $OUT/build.log)"
    exit 1
fi
echo "built in $((SECONDS - T0))s"

if [ "$mode" != bench ]; then
    reserve=0
    [ "$mode" = all ] && reserve=${BENCH_RESERVE:-240}
    deadline=$(($(left) - reserve))
    if [ "$deadline" -lt 60 ]; then
        echo "lease: only $(left)s left after the build: test-gpu not run"
        status=1
    else
        echo "== make test-gpu (deadline ${deadline}s)"
        WAN_TEST_GPU_DEADLINE=$deadline make --no-print-directory test-gpu GPU_ARCH="$arch" || status=1
        save
    fi
fi

if [ "$mode" != test ]; then
    lim=$(($(left) - 10))
    if [ "$lim" -lt 60 ]; then
        echo "lease: only $(left)s left: bench-gpu not run"
        status=1
    else
        echo "== make bench-gpu (${lim}s)"
        BENCH_CASES=${BENCH_CASES:-14b} timeout "$lim" make --no-print-directory bench-gpu GPU_ARCH="$arch" || status=1
    fi
fi
echo "# lease done in $((SECONDS - T0))s, status $status"
exit $status
