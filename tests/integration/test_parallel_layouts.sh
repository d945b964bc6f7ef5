#!/usr/bin/env bash
# Every parallel layout trains the tiny model exactly like the single process: losses per step
# and the state after the last step (weights, fp32 masters, both AdamW moments) within 1e-5
# relative. Ranks are local processes (--nproc); test_layouts_srun.sh runs them under srun.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
STEPS=5
COMMON=(--set train.steps=$STEPS --set train.gbs=6 --set train.mbs=1 --set train.optimizer.lr=3e-3
        --set train.optimizer.weight_decay=0.01 --set train.threads=1 --set train.comm_timeout=60)

train() { # name nproc [--set ...]
    local name=$1 n=$2; shift 2
    "$BIN/wan-train" "${COMMON[@]}" --set train.run_dir="$T_TMP/$name" --nproc "$n" "$@" >"$T_TMP/$name.log" 2>&1
}

t_check "single process trains" train base 1
[ -d "$T_TMP/base/checkpoints/latest" ] || t_fail "single process wrote no checkpoint"

layout() { # name nproc overrides...
    local name=$1 n=$2; shift 2
    if ! train "$name" "$n" "$@"; then
        t_fail "$name: training failed"; tail -5 "$T_TMP/$name.log"; return
    fi
    t_check "$name: losses match the single process" t_same_losses "$T_TMP/base" "$T_TMP/$name"
    t_same_state "$name" "$T_TMP/base" "$T_TMP/$name"
}

layout dp2 2
layout tp2 2 --set parallel.tp=2
layout tp2-sp 2 --set parallel.tp=2 --set parallel.sp=true
layout cp2 2 --set parallel.cp=2
layout cp2-tp2 4 --set parallel.cp=2 --set parallel.tp=2
layout dp2-cp2 4 --set parallel.cp=2
layout dp3-uneven 3
# recompute: the backward rebuilds each block from its input, keeping the self-attention output
# (the default) or not; the ring of the kept attention is not run again
layout cp2-tp2-recompute 4 --set parallel.cp=2 --set parallel.tp=2 --set train.recompute=true
layout cp2-recompute-full 2 --set parallel.cp=2 --set train.recompute=true --set train.recompute_attention=true
# pipeline parallel: 1F1B over the stages (6 micro-batches a step), alone and with each other
# dimension; with 4 layers, stages that neither embed nor have the head
layout pp2 2 --set parallel.pp=2
layout pp2-dp2 4 --set parallel.pp=2
layout pp2-tp2-sp 4 --set parallel.pp=2 --set parallel.tp=2 --set parallel.sp=true
layout pp2-cp2-recompute 4 --set parallel.pp=2 --set parallel.cp=2 --set train.recompute=true
# layout_vs BASE NAME NPROC overrides...: like layout, against the single process run BASE
# trained with the same overrides but the parallel ones
layout_vs() {
    local base=$1 name=$2 n=$3; shift 3
    if ! train "$name" "$n" "$@"; then t_fail "$name: training failed"; tail -5 "$T_TMP/$name.log"; return; fi
    t_check "$name: losses match the single process" t_same_losses "$T_TMP/$base" "$T_TMP/$name"
    t_same_state "$name" "$T_TMP/$base" "$T_TMP/$name"
}
L4=(--set model.num_layers=4)
train base-l4 1 "${L4[@]}" || t_fail "single process with 4 layers"
layout_vs base-l4 pp4 4 "${L4[@]}" --set parallel.pp=4
layout_vs base-l4 pp2-l4-recompute-full 2 "${L4[@]}" --set parallel.pp=2 --set train.recompute=true \
    --set train.recompute_attention=true
# tensor parallel over four ranks with sequence parallelism: rings of three steps (4 heads)
H4=(--set model.num_heads=4)
train base-h4 1 "${H4[@]}" || t_fail "single process with 4 heads"
layout_vs base-h4 tp4-sp 4 "${H4[@]}" --set parallel.tp=4 --set parallel.sp=true
# fewer micro-batches than stages: the schedule runs every forward first
train base-l4-gbs2 1 "${L4[@]}" --set train.gbs=2 || t_fail "single process with 4 layers, gbs 2"
layout_vs base-l4-gbs2 pp4-gbs2 4 "${L4[@]}" --set train.gbs=2 --set parallel.pp=4
# every op is deterministic: recomputed activations are the kept ones, so the state is identical
# (partial: the first of the two blocks recomputes, the second keeps its activations)
for mode in keep:false:-1 full:true:-1 partial:false:1; do
    IFS=: read -r what att layers <<<"$mode"
    train "recompute-$what" 1 --set train.recompute=true --set train.recompute_attention="$att" \
        --set train.recompute_layers="$layers" || t_fail "single process with recompute ($what) failed"
    t_check "single process, recompute $what: checkpoint bit-identical to no recompute" \
        cmp -s "$T_TMP/base/checkpoints/latest/rank00000.bin" "$T_TMP/recompute-$what/checkpoints/latest/rank00000.bin"
done
t_check "single process, recompute partial: the log says 1 of 2 blocks recompute" \
    grep -q 'pipeline stage 0: 1 of its 2 blocks recompute their activations in the backward, 1 keep them' \
    "$T_TMP/recompute-partial.log"
# and did: the first step's 6 micro-batches rebuilt 6 block forwards (12 with both blocks, 0 without)
for run in base:0 recompute-keep:12 recompute-partial:6; do
    t_check "${run%%:*}: the first step's backwards recomputed ${run#*:} block forwards" \
        grep -q "the step's backwards recomputed ${run#*:} block forwards" "$T_TMP/${run%%:*}.log"
done
# train.memory_budget_gib: each stage recomputes the fewest blocks whose plan fits. With the budget
# at stage 0's plan for one recomputing block (it holds two micro-batches in flight, so keeping
# both blocks costs more), stage 0 recomputes 1 of its 2 and stage 1 (one in flight) none
"$BIN/wan-train" "${COMMON[@]}" "${L4[@]}" --set parallel.pp=2 --set train.recompute=true --set train.recompute_layers=1 \
    --check --world 2 >"$T_TMP/budget.plan" 2>&1
bytes=$(sed -n 's/.*memory of a stage 0 rank.*(\([0-9]*\) bytes).*/\1/p' "$T_TMP/budget.plan")
BUDGET=(--set train.recompute=true --set train.memory_budget_gib="$(awk -v b="${bytes:-0}" 'BEGIN {printf "%.12f", b / 2^30}')")
layout_vs base-l4 pp2-l4-budget 2 "${L4[@]}" --set parallel.pp=2 "${BUDGET[@]}"
t_check_all "pp2 with a memory budget: stage 0 recomputes 1 of its 2 blocks, stage 1 none" \
    'grep -q "pipeline stage 0: 1 of its 2 blocks recompute" "$T_TMP/pp2-l4-budget.log" &&
     grep -q "pipeline stage 1: 0 of its 2 blocks recompute" "$T_TMP/pp2-l4-budget.log"'

# a sequence that does not split evenly (27 tokens over cp 2, or cp 2 x tp 2 with sp) is
# padded and the padding masked: same losses and state as the single process
"$BIN/wan-preprocess" synth -o "$T_TMP/raw27" --count 12 --shape 3x6x6 --text-len 16 --text-dim 32 >/dev/null 2>&1 &&
"$BIN/wan-preprocess" "$T_TMP/raw27/manifest.jsonl" -o "$T_TMP/ds27" --text-dim 32 --text-len 16 >/dev/null 2>&1 ||
    t_fail "making the 27-token dataset"
DATA27=(--set data.path="$T_TMP/ds27" --set 'train.latent_shape=[0, 0, 0]')
train base27 1 "${DATA27[@]}" || t_fail "single process on the 27-token dataset"
layout27() { # like layout, against base27
    local name=$1 n=$2; shift 2
    if ! train "$name" "$n" "${DATA27[@]}" "$@"; then t_fail "$name: training failed"; tail -5 "$T_TMP/$name.log"; return; fi
    t_check "$name: losses match the single process" t_same_losses "$T_TMP/base27" "$T_TMP/$name"
    t_same_state "$name" "$T_TMP/base27" "$T_TMP/$name"
}
layout27 cp2-padded 2 --set parallel.cp=2
layout27 cp2-tp2-sp-padded 4 --set parallel.cp=2 --set parallel.tp=2 --set parallel.sp=true
# shapes from the data, two samples per micro-batch (the reader's batches depend on mbs: its own
# single-process reference), cp padding on each pipeline stage
train base27-mbs2 1 "${DATA27[@]}" --set train.mbs=2 || t_fail "single process on the 27-token dataset, mbs 2"
layout_vs base27-mbs2 pp2-cp2-padded-mbs2 4 "${DATA27[@]}" --set train.mbs=2 --set parallel.pp=2 --set parallel.cp=2

# what `wan-train --check` plans for a rank of each pipeline stage is what the stage's first
# rank allocated in its first step (its log line's peak: training state, activation sets,
# shared scratch, pipeline inbox; plus two scalars, the loss pair and the stop flag)
plan_matches() { # name nproc overrides... (as the run had them)
    local name=$1 n=$2 plan peak stages s
    shift 2
    "$BIN/wan-train" "${COMMON[@]}" "$@" --check --world "$n" >"$T_TMP/$name.plan" 2>&1
    stages=$(grep -c 'memory of a stage' "$T_TMP/$name.plan")
    for s in $(seq 0 $((stages - 1))); do
        plan=$(sed -n "s/.*memory of a stage $s rank.*(\([0-9]*\) bytes).*/\1/p" "$T_TMP/$name.plan")
        peak=$(sed -n "s/.*memory on rank [0-9]* (pipeline stage $s):.*peak .*(\([0-9]*\) bytes).*/\1/p" "$T_TMP/$name.log")
        t_check_all "$name stage $s: --check plans ${plan:-no} bytes, the stage's first rank allocated ${peak:-?}" \
            '[ -n "$plan" ] && [ -n "$peak" ] && [ "$peak" -ge "$plan" ] && [ "$peak" -le $((plan + 64)) ]'
    done
    [ "$stages" -gt 0 ] || t_fail "$name: --check printed no memory plan"
}
plan_matches base 1
plan_matches tp2-sp 2 --set parallel.tp=2 --set parallel.sp=true
plan_matches dp3-uneven 3
plan_matches cp2-tp2-recompute 4 --set parallel.cp=2 --set parallel.tp=2 --set train.recompute=true
plan_matches cp2-recompute-full 2 --set parallel.cp=2 --set train.recompute=true --set train.recompute_attention=true
plan_matches pp2-dp2 4 --set parallel.pp=2
plan_matches pp4 4 "${L4[@]}" --set parallel.pp=4
plan_matches pp4-gbs2 4 "${L4[@]}" --set train.gbs=2 --set parallel.pp=4
plan_matches pp2-l4-budget 2 "${L4[@]}" --set parallel.pp=2 "${BUDGET[@]}"

# every rank sent exactly the bytes the parallel design predicts (bench/comm_volume.py)
if /usr/bin/python3 "$ROOT/bench/comm_volume.py" --check "$T_TMP"/{dp2,tp2,tp2-sp,cp2,cp2-tp2,dp2-cp2,dp3-uneven,cp2-tp2-recompute,cp2-recompute-full,cp2-padded,cp2-tp2-sp-padded,pp2,pp2-dp2,pp2-tp2-sp,pp2-cp2-recompute,pp4,pp2-l4-recompute-full,pp4-gbs2,tp4-sp} >"$T_TMP/volume" 2>&1; then
    t_ok "bytes sent per step equal the design's prediction in every layout"
else t_fail "communication volume differs from the design"; cat "$T_TMP/volume"; fi

# the checkpoint of a multi-rank layout was written in pieces by several ranks
pieces=$(grep -c '"file"' "$T_TMP/cp2-tp2/checkpoints/latest/meta.json")
[ "$pieces" -gt 0 ] && ls "$T_TMP/cp2-tp2/checkpoints/latest/" | grep -q rank00003.bin &&
    t_ok "cp2-tp2 checkpoint written by all 4 ranks" || t_fail "cp2-tp2 checkpoint pieces"

# a layout that does not fit the world is refused before any work, naming the numbers
"$BIN/wan-train" "${COMMON[@]}" --set train.run_dir="$T_TMP/bad" --set parallel.tp=2 --nproc 3 >"$T_TMP/bad.log" 2>&1
rc=$?
[ $rc = 2 ] && grep -q "3 ranks is not divisible by tp \* cp \* pp" "$T_TMP/bad.log" && [ ! -e "$T_TMP/bad/steps.jsonl" ] &&
    t_ok "world 3 with tp 2 refused (exit 2) before training" || { t_fail "world 3 with tp 2: exit $rc"; cat "$T_TMP/bad.log"; }
"$BIN/wan-train" "${COMMON[@]}" --set train.run_dir="$T_TMP/badvp" --set model.num_layers=4 --set parallel.pp=2 \
    --set parallel.vp=2 --nproc 2 >"$T_TMP/badvp.log" 2>&1
rc=$?
[ $rc = 2 ] && grep -q "parallel.vp = 2: virtual pipeline stages (the interleaved schedule) are not implemented" \
    "$T_TMP/badvp.log" && [ ! -e "$T_TMP/badvp/steps.jsonl" ] &&
    t_ok "pp 2 with virtual stages refused (exit 2)" || { t_fail "vp 2: exit $rc"; cat "$T_TMP/badvp.log"; }
"$BIN/wan-train" "${COMMON[@]}" --set train.run_dir="$T_TMP/bad2" --set train.gbs=5 --nproc 2 >"$T_TMP/bad2.log" 2>&1
rc=$?
[ $rc = 2 ] && grep -q "train.gbs = 5: not divisible by train.mbs \* dp = 1 \* 2" "$T_TMP/bad2.log" &&
    t_ok "gbs 5 at dp 2 refused (exit 2)" || { t_fail "gbs 5 at dp 2: exit $rc"; cat "$T_TMP/bad2.log"; }

# a killed rank makes every rank stop, non-zero, promptly
"$BIN/wan-train" --set train.steps=100000 --set train.run_dir="$T_TMP/kill" --set train.threads=1 \
    --set train.comm_timeout=30 --nproc 2 >"$T_TMP/kill.log" 2>&1 &
sup=$!
for _ in $(seq 50); do grep -q "step 2/" "$T_TMP/kill.log" && break; sleep 0.2; done
victim=$(pgrep -P $sup | tail -n1)
start=$(date +%s)
kill -9 "$victim"
wait $sup
rc=$?
took=$(( $(date +%s) - start ))
left=$(pgrep -P $sup | wc -l)
[ $rc != 0 ] && [ "$took" -le 30 ] && [ "$left" = 0 ] &&
    t_ok "killed rank: job exits $rc in ${took}s, no rank left" ||
    { t_fail "killed rank: exit $rc after ${took}s, $left ranks left"; tail -5 "$T_TMP/kill.log"; }

t_summary
