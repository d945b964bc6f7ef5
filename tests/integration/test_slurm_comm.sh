#!/usr/bin/env bash
# The CPU transport across ranks started by srun --mpi=pmi2 on the private Slurm cluster: every
# collective on groups of several shapes (tests/tools/comm_check), bit-identical and equal to
# the member-order reference; a killed rank makes the others fail promptly, naming the group
# and the operation (with --kill-on-bad-exit=0, so that the transport, not Slurm, finds it).
source "$(dirname "$0")/../lib.sh"
t_tmpdir
source "$ROOT/tests/slurm/cluster.sh"
CHECKER=$ROOT/build/tests/tools/comm_check
[ -x "$CHECKER" ] || { t_fail "comm_check not built (make tests)"; t_summary; exit 1; }
if ! slurm_start; then t_fail "the private Slurm cluster starts"; t_summary; exit 1; fi

ranks_passed() { # log nranks
    [ "$(grep -cE '^rank [0-9]+: [1-9][0-9]* passed, 0 failed$' "$1")" = "$2" ]
}
for n in 3 4; do
    WAN_SHM_CHUNK_KB=4 timeout 120 srun -n"$n" --mpi=pmi2 "$CHECKER" >"$T_TMP/n$n.log" 2>&1
    rc=$?
    t_check "srun -n$n --mpi=pmi2 comm_check exits 0 (got $rc)" test "$rc" = 0
    t_check "  every one of $n ranks checked and agreed" ranks_passed "$T_TMP/n$n.log" "$n"
    t_check "  the ranks came from PMI2" test "$(grep -c 'comm_check: rank [0-9] of '"$n"' (PMI2, local [0-9] of '"$n"')' "$T_TMP/n$n.log")" = "$n"
    [ "$rc" = 0 ] || tail -n 20 "$T_TMP/n$n.log"
done

# A rank dies in the middle: the survivors find it (kill(pid, 0)) well before the timeout.
t0=$SECONDS
timeout 60 srun -n3 --mpi=pmi2 --kill-on-bad-exit=0 "$CHECKER" --timeout 30 --kill-rank 1 --at 40 \
    >"$T_TMP/kill.log" 2>&1
rc=$?
t_check "killed rank under srun: non-zero exit (got $rc)" test "$rc" != 0
t_check "  the survivors name the group, the operation and the dead peer" \
    grep -qE "[a-z_]+ on [a-z]+\[[0-9]+\]: (member [0-9]+ \(rank 1, pid [0-9]+\) died|rank [0-9] aborted: .*died)" "$T_TMP/kill.log"
t_check "  within 10 s (timeout 30 s; took $((SECONDS - t0)) s)" test $((SECONDS - t0)) -le 10

# A rank hangs: the others time out naming it; with KillOnBadExit=1 Slurm ends the step.
t0=$SECONDS
timeout 60 srun -n3 --mpi=pmi2 "$CHECKER" --timeout 2 --hang-rank 2 --at 25 >"$T_TMP/hang.log" 2>&1
rc=$?
t_check "hung rank under srun: non-zero exit (got $rc)" test "$rc" != 0 -a "$rc" != 124
t_check "  the timeout names the group, the operation and the missing peer" \
    grep -qE "[a-z_]+ on [a-z]+\[[0-9]+\]: timed out after 2 s waiting for member [0-9]+ \(rank 2, pid" "$T_TMP/hang.log"
t_check "  over within 15 s (took $((SECONDS - t0)) s)" test $((SECONDS - t0)) -le 15
t_check "no shared memory segment of these jobs left behind" bash -c '! ls /dev/shm/wan-[0-9]* >/dev/null 2>&1'
slurm_stop
t_summary
