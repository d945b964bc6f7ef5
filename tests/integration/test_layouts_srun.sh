#!/usr/bin/env bash
# Every parallel layout under srun --mpi=pmi2 on the private Slurm cluster (ranks from Slurm's
# PMI2, not --nproc) trains the tiny model exactly like the single process: losses per step and
# the state after the last step (weights, fp32 masters, AdamW moments) within the tolerances of
# test_parallel_layouts.sh, which runs the same layouts with --nproc. srun --mpi=none with
# several tasks is refused with the message that says to use --mpi=pmi2.
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"
t_tmpdir
chmod 755 "$T_TMP"
# shellcheck source=tests/slurm/cluster.sh
source "$ROOT/tests/slurm/cluster.sh"
CMP=$ROOT/build/tests/tools/ckpt_compare
if [ ! -x "$CMP" ] || [ ! -x "$BIN/wan-train" ]; then t_fail "wan-train or ckpt_compare not built (make tests)"; t_summary; exit 1; fi
STEPS=5
COMMON=(--set "train.steps=$STEPS" --set train.gbs=6 --set train.mbs=1 --set train.optimizer.lr=3e-3
        --set train.optimizer.weight_decay=0.01 --set train.threads=1 --set train.comm_timeout=60)



# the single-process reference, without Slurm
"$BIN/wan-train" "${COMMON[@]}" --set train.run_dir="$T_TMP/base" >"$T_TMP/base.log" 2>&1 ||
    { t_fail "single process trains"; tail -5 "$T_TMP/base.log"; t_summary; exit 1; }
t_ok "single process trains (reference)"

if ! slurm_start; then t_fail "the private Slurm cluster starts"; t_summary; exit 1; fi

layout() { # name ntasks overrides...
    local name=$1 n=$2 rc pieces
    shift 2
    timeout 120 srun -n "$n" --mpi=pmi2 --kill-on-bad-exit=1 "$BIN/wan-train" "${COMMON[@]}" \
        --set train.run_dir="$T_TMP/$name" "$@" >"$T_TMP/$name.log" 2>&1
    rc=$?
    if [ $rc != 0 ]; then t_fail "$name: srun -n $n --mpi=pmi2 wan-train exited $rc"; tail -5 "$T_TMP/$name.log"; return; fi
    # ranks from PMI2: a world of N, none forked locally, every rank wrote its checkpoint pieces
    if grep -q "world $n = " "$T_TMP/$name.log" && ! grep -q "local ranks" "$T_TMP/$name.log" &&
        grep -q "\"gpus\":$n," "$T_TMP/$name/steps.jsonl" &&
        pieces=("$T_TMP/$name"/checkpoints/latest/rank*.bin) && [ ${#pieces[@]} = "$n" ]; then
        t_ok "$name: $n ranks from srun's PMI2"
    else t_fail "$name: not $n PMI2 ranks"; tail -3 "$T_TMP/$name.log"; fi
    t_check "$name: losses match the single process" t_same_losses "$T_TMP/base" "$T_TMP/$name"
    t_same_state "$name" "$T_TMP/base" "$T_TMP/$name"
}

layout dp2 2
layout tp2 2 --set parallel.tp=2
layout tp2-sp 2 --set parallel.tp=2 --set parallel.sp=true
layout cp2 2 --set parallel.cp=2
layout cp2-tp2 4 --set parallel.cp=2 --set parallel.tp=2
layout dp2-cp2 4 --set parallel.cp=2
layout dp3 3
layout pp2 2 --set parallel.pp=2
layout pp2-tp2-sp 4 --set parallel.pp=2 --set parallel.tp=2 --set parallel.sp=true

# srun without PMI2: every task would think it is alone; wan-train stops and says what to do
timeout 60 srun -n2 --mpi=none "$BIN/wan-train" "${COMMON[@]}" --set train.run_dir="$T_TMP/none" >"$T_TMP/none.log" 2>&1
rc=$?
t_check "srun --mpi=none -n2 wan-train is refused (exit $rc)" test "$rc" != 0 -a "$rc" != 124
t_check "  with the message to launch with srun --mpi=pmi2" grep -q "launch with \`srun --mpi=pmi2\`" "$T_TMP/none.log"
t_check "  before training anything" test ! -e "$T_TMP/none/steps.jsonl"
slurm_stop
t_summary
