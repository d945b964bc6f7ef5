#!/usr/bin/env bash
# slurm/pipeline.sh and the sbatch scripts on the private Slurm cluster (tests/slurm/cluster.sh):
#  1. bad requests are refused before anything is submitted: an invalid config, a missing
#     dataset, a layout that does not fit the nodes and GPUs, a target layout that does not fit,
#     a job shape the cluster refuses; no job appears and nothing is written
#  2. the demo chain (slurm/demo-slurm.sh: preprocess array + merge -> train -> reshard ->
#     continued train -> report + validation) completes, every stage after the one before
#  3. a train job whose batch shell gets SIGUSR1 (what --signal=B:USR1@N sends before the time
#     limit; twice here) checkpoints, requeues itself and finishes with the losses of an
#     uninterrupted run
#  4. a rank that dies ends the job at once, with the rank and the reason in the log, and the
#     pipeline's later jobs are cancelled
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"
t_tmpdir
chmod 755 "$T_TMP" # job steps may run as the cluster's user in other set-ups
# shellcheck source=tests/slurm/cluster.sh
source "$ROOT/tests/slurm/cluster.sh"
PIPE=$ROOT/slurm/pipeline.sh
TINY=$ROOT/configs/tiny.cfg
[ -x "$BIN/wan-train" ] || { t_fail "wan-train not built (make)"; t_summary; exit 1; }
t0=$SECONDS
stamp() { echo "   [$((SECONDS - t0)) s] $*"; }

state() { scontrol show job "$1" 2>/dev/null | grep -oE 'JobState=[A-Z_]+' | sort -u | sed 's/JobState=//' | paste -sd' '; }
wait_state() { # job limit_s: until the job (every task of an array) has finished; prints the state
    local s
    for _ in $(seq $(($2 * 5))); do
        s=$(state "$1")
        case "$s" in *PENDING* | *RUNNING* | *CONFIGURING* | *COMPLETING* | *SUSPENDED* | "") sleep 0.2 ;; *) break ;; esac
    done
    echo "$s"
}
jtime() { # job StartTime|EndTime -> seconds since the epoch (the latest over an array's tasks)
    scontrol show job "$1" | grep -oE "$2=[0-9T:-]+" | cut -d= -f2 | while read -r t; do date -d "$t" +%s; done | sort -n | tail -n1
}
job_of() { awk -v s="$2" '$1 == s { print $2 }' "$1/jobs.txt"; }
no_jobs() { [ -z "$(squeue -h 2>/dev/null)" ] && scontrol show job 2>&1 | grep -q "No jobs in the system"; }
steps_done() { local n; n=$(grep -c '"type":"step"' "$1/steps.jsonl" 2>/dev/null); echo "${n:-0}"; }
losses() { # run dir -> "step loss" lines, full precision, the last record of each step
    /usr/bin/python3 -c '
import json, sys
rows = {r["step"]: r["loss"] for r in map(json.loads, open(sys.argv[1] + "/steps.jsonl")) if r["type"] == "step"}
for s in sorted(rows): print(s, repr(rows[s]))' "$1"
}

if ! slurm_start; then t_fail "the private Slurm cluster starts"; t_summary; exit 1; fi
"$BIN/wan-preprocess" synth -o "$T_TMP/raw" --count 16 --shape 3x8x8 --text-len 16 --text-dim 32 >/dev/null 2>&1 ||
    t_fail "synthetic inputs"
SMALL=(--set slurm.gpus_per_node=2 --set slurm.time=00:10:00 --set train.threads=1)

# ---- 1. refused before submission
refused() { # name expected-message pipeline-args...: exit 2, the message, no job, nothing written
    local name=$1 msg=$2 rc
    shift 2
    timeout 60 "$PIPE" "$@" --out "$T_TMP/refused" >"$T_TMP/refused.log" 2>&1
    rc=$?
    if [ $rc = 2 ] && grep -qF -- "$msg" "$T_TMP/refused.log" && grep -q "nothing submitted" "$T_TMP/refused.log" &&
        no_jobs && [ ! -e "$T_TMP/refused" ]; then
        t_ok "refused before submission: $name"
    else
        t_fail "$name: exit $rc (want 2 and '$msg'), jobs: $(squeue -h | wc -l)"
        cat "$T_TMP/refused.log"
    fi
}
refused "invalid config (heads not divisible by tp), the key named" "parallel.tp" \
    "$TINY" "${SMALL[@]}" --set parallel.tp=3 --set slurm.gpus_per_node=3
printf 'train = { gbs = 4; mbs = 1; stepz = 10; };\n' >"$T_TMP/bad.cfg"
refused "invalid config file, its line named" "bad.cfg:1" "$T_TMP/bad.cfg" "${SMALL[@]}"
refused "missing dataset" "holds no dataset" "$TINY" "${SMALL[@]}" --set data.path="$T_TMP/no-such-dataset"
refused "missing raw inputs" "no such file or directory" "$TINY" "${SMALL[@]}" --set data.path="$T_TMP/ds" \
    --inputs "$T_TMP/no-such-manifest.jsonl"
refused "layout that does not fit the GPUs (tp 2 on 1 x 3)" "3 ranks is not divisible by tp * cp * pp" \
    "$TINY" "${SMALL[@]}" --set slurm.gpus_per_node=3 --set parallel.tp=2
refused "target layout that does not fit (tp 2 x dp 2 on 2 GPUs)" "needs 4 ranks" \
    "$TINY" "${SMALL[@]}" --reshard tp=2,dp=2 --continue-steps 2
refused "a job shape the cluster refuses (2 nodes on a 1-node cluster)" "does not accept the train job" \
    "$TINY" "${SMALL[@]}" --set slurm.nodes=2
refused "a time limit over the partition's" "does not accept the train job" "$TINY" "${SMALL[@]}" --set slurm.time=04:00:00
stamp "refusals done"

# ---- 2. the demo chain through pipeline.sh, in order
DEMO=$T_TMP/demo
if DEMO_OUT=$DEMO timeout 300 "$ROOT/slurm/demo-slurm.sh" >"$T_TMP/demo.log" 2>&1; then
    t_ok "slurm/demo-slurm.sh completes on the running cluster"
else t_fail "slurm/demo-slurm.sh"; tail -n 30 "$T_TMP/demo.log"; fi
P=$DEMO/pipeline
stages=$(awk '{ print $1 }' "$P/jobs.txt" 2>/dev/null | paste -sd' ')
t_check "pipeline submitted preprocess, merge, train, reshard, train-continue, report (got '$stages')" \
    test "$stages" = "preprocess merge train reshard train-continue report"
all_done=1 in_order=1 prev_end=0 prev=""
while read -r stage id; do
    s=$(wait_state "$id" 60)
    [ "$s" = COMPLETED ] || { all_done=0; echo "   $stage job $id: $s"; }
    st=$(jtime "$id" StartTime) en=$(jtime "$id" EndTime)
    [ "$st" -ge "$prev_end" ] || { in_order=0; echo "   $stage started at $st, before $prev ended at $prev_end"; }
    prev_end=$en prev=$stage
done <"$P/jobs.txt"
t_check "every stage COMPLETED" test $all_done = 1
t_check "each stage started after the one before it ended" test $in_order = 1
t_check "the preprocess array ran 2 tasks" test "$(find "$P/logs" -name 'preprocess-*_*.log' | wc -l)" = 2
t_check "dataset merged from 2 parts" grep -q "merged 2 parts: 32 samples" "$P"/logs/merge-*.log
t_check "the train job's log shows the memory plan per GPU before training" \
    grep -q "^    info: memory of a stage 0 rank (cpu): training state" "$P"/logs/train-[0-9]*.log
t_check "train: 2 ranks from PMI2 over the dataset, 30 steps" \
    test "$(steps_done "$DEMO/run-dp2")" = 30 -a "$(grep -c '"gpus":2,' "$DEMO/run-dp2/steps.jsonl")" = 30
t_check "reshard wrote step 30 at tp 2" grep -q '"tp": *2' "$DEMO/run-tp2/checkpoints/step_00000030/meta.json"
t_check "continued run resumed from the resharded checkpoint and trained steps 31-40" \
    bash -c "grep -q 'loaded checkpoint .*run-tp2/checkpoints/step_00000030 (step 30, written at tp 2' $P/logs/train-continue-*.log &&
             [ \"\$(grep '\"type\":\"step\"' $DEMO/run-tp2/steps.jsonl | head -n1 | grep -o '\"step\":[0-9]*')\" = '\"step\":31' ] &&
             [ \$(grep -c '\"type\":\"step\"' $DEMO/run-tp2/steps.jsonl) = 10 ]"
t_check "validation loss in val.json" grep -q '"loss": *[0-9]' "$P/val.json"
t_check "report table has both runs and the plots exist" \
    bash -c "[ \$(grep -c '^|Wan DiT' $P/report.md) -ge 2 ] && [ -s $P/plots/loss.svg ] && [ -s $P/plots/throughput.svg ]"
stamp "chain done"

# ---- 3. SIGUSR1 to the batch shell: checkpoint, requeue, same losses as without
R=$T_TMP/usr1
SIG=(--set train.run_dir="$R" --set train.steps=150 --set 'train.latent_shape=[3, 16, 16]')
timeout 60 "$PIPE" "$TINY" "${SMALL[@]}" "${SIG[@]}" --no-val --warmup 1 --out "$R-pipe" >"$T_TMP/usr1-submit.log" 2>&1 ||
    { t_fail "submitting the SIGUSR1 pipeline"; cat "$T_TMP/usr1-submit.log"; }
tj=$(job_of "$R-pipe" train) rj=$(job_of "$R-pipe" report)
for _ in $(seq 300); do [ "$(steps_done "$R")" -ge 3 ] && break; sleep 0.1; done
scancel --batch --signal=USR1 "$tj"
sleep 0.05
scancel --batch --signal=USR1 "$tj" 2>/dev/null # a second one, during the save: changes nothing
# the reference: the same resolved config, uninterrupted, 2 local ranks (meanwhile)
"$BIN/wan-train" --config "$R-pipe/config.cfg" --set train.run_dir="$T_TMP/usr1-ref" --nproc 2 >"$T_TMP/usr1-ref.log" 2>&1 ||
    t_fail "uninterrupted reference run"
requeued=0
for _ in $(seq 300); do
    if scontrol show job "$tj" | grep -q "Restarts=1" && [ "$(state "$tj")" = PENDING ]; then requeued=1; break; fi
    sleep 0.2
done
t_check "USR1: the train job was requeued" test $requeued = 1
# Slurm holds a requeued job back ~2 minutes (BeginTime); let it start now
scontrol update JobId="$tj" StartTime=now >/dev/null 2>&1
s=$(wait_state "$tj" 90)
sr=$(wait_state "$rj" 60)
log=$R-pipe/logs/train-$tj.log
stopped=$(sed -n 's/.*stopped by signal after step \([0-9]*\).*/\1/p' "$log" | head -n1)
t_check "USR1: job finished COMPLETED after its requeue (got $s), its dependent too (got $sr)" test "$s $sr" = "COMPLETED COMPLETED"
t_check "USR1: forwarded to the step, checkpoint at step ${stopped:-?} of 150, requeued" \
    bash -c "grep -q 'got SIGUSR1: forwarding' $log && [ -n '$stopped' ] && [ '${stopped:-150}' -lt 150 ] &&
             grep -q 'checkpoint step_$(printf %08d "${stopped:-0}") saved after SIGUSR1: requeueing job $tj' $log"
t_check "USR1: the second start resumed from that checkpoint" \
    grep -q "loaded checkpoint .*step_$(printf %08d "${stopped:-0}") (step ${stopped:-0}," "$log"
got=$(losses "$R") want=$(losses "$T_TMP/usr1-ref")
t_check "USR1: losses of all 150 steps equal the uninterrupted run's exactly" \
    test "$got" = "$want" -a "$(echo "$got" | wc -l)" = 150
[ "$got" = "$want" ] || diff <(echo "$got") <(echo "$want") | head -n 6
t_check "USR1: the report ran after the requeued job ended" test "$(jtime "$rj" StartTime)" -ge "$(jtime "$tj" EndTime)"
stamp "requeue done"

# ---- 4. a rank dies: the job fails at once, says which and why; later jobs are cancelled
F=$T_TMP/fail
timeout 60 "$PIPE" "$TINY" "${SMALL[@]}" --set train.run_dir="$F" --set train.steps=100000 --reshard tp=2 \
    --out "$F-pipe" >"$T_TMP/fail-submit.log" 2>&1 || { t_fail "submitting the failing pipeline"; cat "$T_TMP/fail-submit.log"; }
tj=$(job_of "$F-pipe" train)
for _ in $(seq 300); do [ "$(steps_done "$F")" -ge 2 ] && break; sleep 0.1; done
victim=""
for d in /proc/[0-9]*; do # rank 1 of that job: wan-train with SLURM_PROCID=1 in its environment
    env=$({ tr '\0' '\n' <"$d/environ"; } 2>/dev/null) || continue
    grep -qx "SLURM_JOB_ID=$tj" <<<"$env" && grep -qx "SLURM_PROCID=1" <<<"$env" &&
        { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -q "bin/wan-train" && victim=${d#/proc/}
done
t_check "found rank 1 of the train job (pid ${victim:-none})" test -n "$victim"
k0=$SECONDS
[ -n "$victim" ] && kill -9 "$victim"
s=$(wait_state "$tj" 60)
took=$((SECONDS - k0))
log=$F-pipe/logs/train-$tj.log
t_check "killed rank: the job FAILED (got $s) within 15 s (took $took s)" test "$s" = FAILED -a $took -le 15
t_check "  the log names the rank and the reason (srun: task 1 Killed; rank 0: rank 1 died)" \
    bash -c "grep -q 'srun: error: .*task 1: Killed' $log && grep -qE 'member 1 \(rank 1, pid $victim\) died' $log"
t_check "  and ends with the failure summary" grep -q "train.sbatch: FAILED: the training step exited with status" "$log"
for stage in reshard report; do
    id=$(job_of "$F-pipe" $stage)
    s=$(wait_state "$id" 30)
    t_check "  dependent $stage job $id CANCELLED (got $s)" \
        bash -c "[ '$s' = CANCELLED ] && scontrol show job $id | grep -q 'Reason=DependencyNeverSatisfied'"
done
stamp "failure done"
slurm_stop
left=$(pgrep -f "bin/wan-train .*$T_TMP" | wc -l)
t_check "no training process left running (found $left)" test "$left" = 0
t_summary
