# Shell test helpers: source this, call t_ok/t_fail (or t_check CMD...), end with t_summary.
# The last line "N passed, M failed" is what tests/run.sh counts.
T_PASSED=0
T_FAILED=0
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/bin
export WAN_NO_BAR=1
t_ok() { T_PASSED=$((T_PASSED + 1)); echo "ok   $*"; }
t_fail() { T_FAILED=$((T_FAILED + 1)); echo "FAIL $*"; }
# t_check NAME CMD...: passes when CMD exits 0
t_check() { local name=$1; shift; if "$@"; then t_ok "$name"; else t_fail "$name"; fi; }
# t_check_all NAME 'COND': COND is a whole shell condition (with && or ||), evaluated as one;
# `t_check NAME [ a ] && [ b ]` would check only the first part.
t_check_all() { if eval "$2"; then t_ok "$1"; else t_fail "$1"; fi; }
t_summary() { echo "$T_PASSED passed, $T_FAILED failed"; [ "$T_FAILED" = 0 ]; }
# A private scratch directory removed at exit.
t_tmpdir() { T_TMP=$(mktemp -d "${TMPDIR:-/tmp}/wan-test.XXXXXX"); trap 'rm -rf "$T_TMP"' EXIT; }

# ---- layout equivalence (test_parallel_layouts.sh, test_layouts_srun.sh) ----
# t_same_losses A B: runs A and B logged the same steps, every loss within 1e-5 relative.
t_same_losses() {
    /usr/bin/python3 - "$1" "$2" <<'PYEOF'
import json, sys
def read(d):
    return {r["step"]: r["loss"] for r in map(json.loads, open(d + "/steps.jsonl")) if r["type"] == "step"}
a, b = read(sys.argv[1]), read(sys.argv[2])
ok = sorted(a) == sorted(b) and len(a) > 0
worst = max((abs(a[s] - b[s]) / abs(a[s]) for s in a if s in b), default=1.0)
print("  losses of %d steps, worst relative difference %.2e" % (len(a), worst))
sys.exit(0 if ok and worst <= 1e-5 else 1)
PYEOF
}
# t_same_state NAME BASE_RUN RUN: the latest checkpoints of two runs hold the same state:
# weights and fp32 masters within 1e-5. The moments are (squared) gradients of norms and
# biases summed over tokens with cancellation, split differently by each layout: their fp32
# rounding differs by a few 1e-6 relative, doubled for the second moment: 3e-5 and 6e-5.
t_same_state() {
    local cmp=$ROOT/build/tests/tools/ckpt_compare a=$2/checkpoints/latest b=$3/checkpoints/latest
    if "$cmp" "$a" "$b" --kinds model,master --tol 1e-5 && "$cmp" "$a" "$b" --kinds adam_m --tol 3e-5 &&
        "$cmp" "$a" "$b" --kinds adam_v --tol 6e-5; then
        t_ok "$1: weights, masters and moments match"
    else t_fail "$1: weights, masters and moments differ"; fi
}

# ---- CUDA emulation tests (test_cuda_emu.sh, test_nccl_emu.sh) ----
# t_emu_skip: true (after saying why) when this checkout's tests do not include the emulation
# build: no CUDA toolkit headers, or a CPU-only build (make CUDA=0). A CUDA build makes it.
t_emu_skip() {
    if ! [ -f "${CUDA_HOME:-/usr/local/cuda}/include/cuda_runtime.h" ]; then
        echo "skipped: no CUDA toolkit headers (the emulation build needs them, not a GPU)"
        return 0
    fi
    if [ -e "$ROOT/build/.variant-cuda0" ] && ! [ -d "$ROOT/build/emu" ]; then
        echo "skipped: CPU-only build (make CUDA=0); the emulation build comes with CUDA builds"
        return 0
    fi
    return 1
}
