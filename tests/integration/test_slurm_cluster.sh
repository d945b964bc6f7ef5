#!/usr/bin/env bash
# Smoke test of the private Slurm cluster (tests/slurm/cluster.sh): srun -n4 --mpi=pmi2 with a
# 128-byte blob from rank 0 to all ranks through the PMI2 key-value space; two sbatch jobs
# chained with --dependency=afterok; a dependent of a failed job is cancelled; an impossible
# request fails at once; srun --mpi=none with several tasks is refused by our bootstrap.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
chmod 755 "$T_TMP" # job steps may run as another user in other set-ups
source "$ROOT/tests/slurm/cluster.sh"
SMOKE=$ROOT/build/tests/tools/pmi2_smoke
CHECKER=$ROOT/build/tests/tools/comm_check
[ -x "$SMOKE" ] && [ -x "$CHECKER" ] || { t_fail "test tools not built (make tests)"; t_summary; exit 1; }
t0=$SECONDS
stamp() { echo "   [$((SECONDS - t0)) s] $*"; }
# A crashed earlier run: its owner shell is gone, its daemons still run.
old_dir=$(bash -c 'source "$1/tests/slurm/cluster.sh"; slurm_start $$ 2>/dev/null && echo "$WAN_SLURM_DIR"' _ "$ROOT")
old_pids=$(cat "$old_dir/slurmctld.pid" "$old_dir/slurmd.pid" "$old_dir/munge/munged.pid" 2>/dev/null)
t_check "a leftover cluster is running (owner gone)" test -n "$old_dir" -a "$(echo $old_pids | wc -w)" = 3
if ! slurm_start; then t_fail "the private Slurm cluster starts"; t_summary; exit 1; fi
alive=""
for p in $old_pids; do _slurm_alive "$p" && alive="$alive $p"; done
t_check "slurm_start stopped the leftover's daemons (alive:${alive:- none})" test -z "$alive"
t_check "slurm_start removed the leftover's directory" test ! -e "$old_dir"
t_ok "the private Slurm cluster starts ($((SECONDS - t0)) s)"

# 1. PMI2 key-value exchange across 4 tasks
timeout 60 srun -n4 --mpi=pmi2 "$SMOKE" >"$T_TMP/smoke.out" 2>"$T_TMP/smoke.err"
rc=$?
t_check "srun -n4 --mpi=pmi2 pmi2_smoke exits 0" test "$rc" = 0
t_check "all 4 ranks received rank 0's 128-byte blob intact" \
    test "$(grep -c 'of 4 (local [0-3] of 4, job [0-9]*\.[0-9]*): blob ok$' "$T_TMP/smoke.out")" = 4
[ "$rc" = 0 ] || cat "$T_TMP/smoke.err"

stamp "smoke done"
# 2. two batch jobs chained with afterok: the second runs after the first and sees its output
a=$(sbatch --parsable -n1 -o "$T_TMP/a.log" --wrap "sleep 1; echo produced-by-\$SLURM_JOB_ID > $T_TMP/a.txt")
b=$(sbatch --parsable -n1 -o "$T_TMP/b.log" --dependency=afterok:"$a" \
    --wrap "cat $T_TMP/a.txt > $T_TMP/b.txt && echo consumed-by-\$SLURM_JOB_ID >> $T_TMP/b.txt")
t_check "sbatch accepted both jobs" test -n "$a" -a -n "$b"
sa=$(slurm_job_state "$a" 60)
sb=$(slurm_job_state "$b" 60)
t_check "first job COMPLETED (got $sa)" test "$sa" = COMPLETED
t_check "dependent job COMPLETED (got $sb)" test "$sb" = COMPLETED
t_check "dependent job saw the first job's output" \
    grep -qx "produced-by-$a" "$T_TMP/b.txt"
t_check "dependent job wrote its own line" grep -qx "consumed-by-$b" "$T_TMP/b.txt"
end_a=$(scontrol show job "$a" | sed -n 's/.*EndTime=\([^ ]*\).*/\1/p')
start_b=$(scontrol show job "$b" | sed -n 's/.*StartTime=\([^ ]*\).*/\1/p')
t_check "dependent job started after the first ended ($start_b >= $end_a)" \
    test "$(date -d "$start_b" +%s)" -ge "$(date -d "$end_a" +%s)"

stamp "chain done"
# 3. a dependent of a failed job is cancelled, not left pending
f=$(sbatch --parsable -n1 -o /dev/null --wrap "exit 3")
d=$(sbatch --parsable -n1 -o /dev/null --dependency=afterok:"$f" --wrap "true")
sf=$(slurm_job_state "$f" 60)
sd=$(slurm_job_state "$d" 60)
t_check "failing job FAILED (got $sf)" test "$sf" = FAILED
t_check "its dependent is CANCELLED (got $sd)" test "$sd" = CANCELLED
t_check "  because the dependency can never be satisfied" \
    bash -c "scontrol show job $d | grep -q 'Reason=DependencyNeverSatisfied'"

stamp "failed chain done"
# 4. an impossible request is refused at once (EnforcePartLimits=ALL)
if timeout 20 sbatch -n 64 -o /dev/null --wrap true >"$T_TMP/big.out" 2>&1; then
    t_fail "sbatch -n 64 on an 8-CPU cluster is refused"
else
    t_ok "sbatch -n 64 on an 8-CPU cluster is refused"
fi

# 5. srun --mpi=none with several tasks: our bootstrap stops and says what to do
timeout 60 srun -n2 --mpi=none "$CHECKER" >"$T_TMP/none.out" 2>&1
rc=$?
t_check "srun --mpi=none -n2 exits non-zero (got $rc)" test "$rc" != 0
t_check "  with a message telling to use --mpi=pmi2" grep -q "launch with \`srun --mpi=pmi2\`" "$T_TMP/none.out"

dir=$WAN_SLURM_DIR
pids=$(cat "$dir/slurmctld.pid" "$dir/slurmd.pid" "$dir/munge/munged.pid" 2>/dev/null)
t_check "the daemons wrote their pid files" test "$(echo $pids | wc -w)" = 3
slurm_stop
alive=""
for p in $pids; do _slurm_alive "$p" && alive="$alive $p"; done # zombies wait for init
t_check "slurm_stop stopped the daemons by pid (alive:${alive:- none})" test -z "$alive"
t_check "slurm_stop removed the cluster directory" test ! -e "$dir"
t_summary
