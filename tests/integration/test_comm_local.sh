#!/usr/bin/env bash
# The CPU transport across ranks forked by the local bootstrap (--nproc): every collective on
# groups of several shapes and sizes, bit-identical and equal to the member-order reference
# (tests/tools/comm_check), then failures: a killed rank, a hung rank, an aborting rank.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
CHECKER=$ROOT/build/tests/tools/comm_check
[ -x "$CHECKER" ] || { t_fail "comm_check not built (make tests)"; t_summary; exit 1; }

# run NAME EXPECTED_RC ARGS...: runs the checker, keeps its output in $T_TMP/NAME.log
run() {
    local name=$1 want=$2; shift 2
    local t0=$SECONDS
    timeout --kill-after=5 60 "$CHECKER" "$@" >"$T_TMP/$name.log" 2>&1
    RC=$?
    ELAPSED=$((SECONDS - t0))
    if [ "$want" = 0 ] && [ "$RC" != 0 ]; then tail -n 20 "$T_TMP/$name.log"; fi
}
# No segment of that run is left in /dev/shm (its name carries the supervisor's pid).
no_leftover() {
    local sup
    sup=$(sed -n 's/.*this process (pid \([0-9]*\)) supervises.*/\1/p' "$T_TMP/$1.log" | head -n1)
    [ -n "$sup" ] && ! ls /dev/shm/wan-local_"$sup"-* >/dev/null 2>&1
}
ranks_passed() { # log nranks: every rank printed "0 failed" and a positive pass count
    [ "$(grep -cE '^rank [0-9]+: [1-9][0-9]* passed, 0 failed$' "$T_TMP/$1.log")" = "$2" ]
}

# Many rounds through small scratch buffers (1 KiB -> the minimum for the world), then 4 KiB,
# then the default size.
for n in 2 3 4 5; do
    WAN_SHM_CHUNK_KB=4 run "c4k_n$n" 0 --nproc "$n"
    t_check "all collectives, 4 KiB chunks, $n ranks" test "$RC" = 0
    t_check "every one of $n ranks checked and agreed" ranks_passed "c4k_n$n" "$n"
    t_check "no shared memory left behind ($n ranks)" no_leftover "c4k_n$n"
done
WAN_SHM_CHUNK_KB=1 run c1k 0 --nproc 3
t_check "all collectives, minimal chunks, 3 ranks" ranks_passed c1k 3
run cdef 0 --nproc 2
t_check "all collectives, default chunks, 2 ranks" ranks_passed cdef 2

# A killed rank: the local supervisor names it and stops the rest at once.
run kill 1 --nproc 4 --timeout 20 --kill-rank 1 --at 40
t_check "killed rank: non-zero exit" test "$RC" != 0
t_check "killed rank: supervisor names it" grep -q "rank 1 (pid [0-9]*) failed: killed by signal 9" "$T_TMP/kill.log"
t_check "killed rank: everything stops within 5 s" test "$ELAPSED" -le 5
t_check "killed rank: no shared memory left behind" no_leftover kill

# The survivors find the dead peer themselves (they ignore the supervisor's SIGTERM), well
# before their 20 s timeout, and name the group and the operation.
WAN_KILL_GRACE_S=15 run kill2 1 --nproc 3 --timeout 20 --ignore-term --kill-rank 2 --at 40
t_check "dead peer detected: non-zero exit" test "$RC" != 0
t_check "dead peer detected: message names group, op and peer" \
    grep -qE "(allreduce|reduce_scatter|allgather|broadcast|sendrecv|send|recv|barrier) on [a-z]+\[[0-9]+\]: member [0-9]+ \(rank 2, pid [0-9]+\) died" "$T_TMP/kill2.log"
t_check "dead peer detected: within 5 s (timeout 20 s)" test "$ELAPSED" -le 5

# A hung rank: the others time out, naming the group, the operation and the missing peer.
run hang 1 --nproc 3 --timeout 2 --hang-rank 1 --at 25
t_check "hung rank: non-zero exit" test "$RC" != 0
t_check "hung rank: timeout names group, op and peer" \
    grep -qE "[a-z_]+ on [a-z]+\[[0-9]+\]: timed out after 2 s waiting for member [0-9]+ \(rank 1, pid" "$T_TMP/hang.log"
t_check "hung rank: over within 10 s" test "$ELAPSED" -le 10

# A rank that gives up: the others' calls fail promptly with its reason.
WAN_KILL_GRACE_S=15 run abort 1 --nproc 3 --timeout 20 --ignore-term --abort-rank 0 --at 12
t_check "abort: non-zero exit" test "$RC" != 0
t_check "abort: the others hear the reason" grep -q "rank 0 aborted: injected fault: giving up" "$T_TMP/abort.log"
t_check "abort: within 5 s" test "$ELAPSED" -le 5
t_summary
