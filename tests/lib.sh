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
t_summary() { echo "$T_PASSED passed, $T_FAILED failed"; [ "$T_FAILED" = 0 ]; }
# A private scratch directory removed at exit.
t_tmpdir() { T_TMP=$(mktemp -d "${TMPDIR:-/tmp}/wan-test.XXXXXX"); trap 'rm -rf "$T_TMP"' EXIT; }
