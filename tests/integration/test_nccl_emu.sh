#!/usr/bin/env bash
# The NCCL stand-in of the emulation build (tests/emu/nccl_emu.c) under the NCCL transport
# (lib/cuda/comm_nccl.c): gpu_check --nccl (every collective on the world and on split groups,
# values checked exactly) with 1 to 4 local ranks, again with tiny shared-memory slots so that
# every collective and every send/recv runs in many rounds, again with every NCCL task started
# late (the transport's ordering of compute after its asynchronous transfers), a hung rank
# reported within the transport's timeout (as tests/gpu/run.sh step 4 expects), the stand-in's
# own timeout naming the missing rank, and nothing left in /dev/shm.
# Then wan-train with train.device = "cuda" on two ranks (tp=2, pp=2, cp=2, dp=2; three steps) against
# the CPU run and the one-GPU emulated run (WAN_EMU_NCCL_TRAIN=0 skips it). GPU_CHECK /
# WAN_TRAIN override the binaries. Last, a rank stopped mid-run (SIGSTOP) must end the job
# within train.comm_timeout through the NCCL watchdog.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. tests/lib.sh
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 WAN_NO_BAR=1
GPU_CHECK=${GPU_CHECK:-build/emu/tests/tools/gpu_check}
WAN_TRAIN=${WAN_TRAIN:-build/emu/bin/wan-train}
CKPT_COMPARE=${CKPT_COMPARE:-build/tests/tools/ckpt_compare}
if t_emu_skip; then
    t_summary
    exit 0
fi
if ! [ -x "$GPU_CHECK" ]; then
    t_fail "$GPU_CHECK is not built (make EMU=1 emu-tools)"
    t_summary
    exit 1
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
shm_before=$(ls /dev/shm 2>/dev/null | grep -c '^wan-emu-nccl-' || true)

# passing_ranks LOG: how many "rank R: N passed, 0 failed" lines
passing_ranks() { grep -c '^rank [0-9]*: [0-9]* passed, 0 failed' "$1" || true; }

for n in 1 2 3 4; do
    timeout 300 "$GPU_CHECK" --nccl --nproc $n >"$T/n$n.log" 2>&1
    rc=$?
    t_check_all "gpu_check --nccl --nproc $n (exit $rc): $(passing_ranks "$T/n$n.log") of $n ranks pass" \
        '[ $rc = 0 ] && [ "$(passing_ranks "$T/n$n.log")" = $n ]'
    [ $rc = 0 ] || tail -n 20 "$T/n$n.log"
done

for n in 2 3; do
    WAN_EMU_NCCL_SLOT_BYTES=200 WAN_EMU_NCCL_CHAN_BYTES=100 timeout 300 "$GPU_CHECK" --nccl --nproc $n \
        >"$T/small$n.log" 2>&1
    rc=$?
    t_check_all "gpu_check --nccl --nproc $n with 256-byte slots and 128-byte channels (exit $rc)" \
        '[ $rc = 0 ] && [ "$(passing_ranks "$T/small$n.log")" = $n ]'
    [ $rc = 0 ] || tail -n 20 "$T/small$n.log"
done

# every transfer as late as allowed: a result read before the transport ordered it is stale
WAN_EMU_NCCL_LAZY_MS=100 timeout 300 "$GPU_CHECK" --nccl --nproc 2 >"$T/delay.log" 2>&1
rc=$?
t_check_all "gpu_check --nccl --nproc 2 with every NCCL task as late as allowed (exit $rc)" \
    '[ $rc = 0 ] && [ "$(passing_ranks "$T/delay.log")" = 2 ]'
[ $rc = 0 ] || tail -n 20 "$T/delay.log"

# a hung rank: the others fail within the transport's timeout, naming the collective and group
start=$(date +%s)
timeout 300 "$GPU_CHECK" --nccl --nproc 2 --timeout 5 --hang-rank 1 >"$T/hang.log" 2>&1
took=$(($(date +%s) - start))
t_check_all "hung rank 1 reported by rank 0 within the 5 s timeout ($took s in all)" \
    '[ "$(passing_ranks "$T/hang.log")" = 1 ] &&
     grep -q "hung peer was reported after [0-9.]* s: NCCL allreduce on group world" "$T/hang.log"'
grep -q 'hung peer' "$T/hang.log" || tail -n 20 "$T/hang.log"

# the stand-in's own deadline, shorter than the transport's: ncclGetLastError names the rank
WAN_EMU_NCCL_TIMEOUT=2 timeout 300 "$GPU_CHECK" --nccl --nproc 3 --timeout 8 --hang-rank 1 >"$T/emu_timeout.log" 2>&1
t_check_all "WAN_EMU_NCCL_TIMEOUT=2: ranks 0 and 2 report that rank 1 did not arrive" \
    '[ "$(passing_ranks "$T/emu_timeout.log")" = 2 ] &&
     grep -q "WAN_EMU_NCCL_TIMEOUT.*waiting for rank 1 " "$T/emu_timeout.log"'
grep -q 'WAN_EMU_NCCL_TIMEOUT' "$T/emu_timeout.log" || tail -n 20 "$T/emu_timeout.log"

shm_after=$(ls /dev/shm 2>/dev/null | grep -c '^wan-emu-nccl-' || true)
t_check "no shared-memory segment left in /dev/shm ($shm_before before, $shm_after after)" [ "$shm_after" = "$shm_before" ]

if [ "${WAN_EMU_NCCL_TRAIN:-1}" = 1 ]; then
    common=(--config configs/tiny.cfg --set train.steps=3 --set train.gbs=2 --set train.log_interval=1
            --set train.ckpt_interval=0 --set eval.interval=0)
    bin/wan-train "${common[@]}" --set train.run_dir=\"$T/cpu\" >"$T/train_cpu.log" 2>&1
    t_check "wan-train on the CPU, the reference steps" [ $? = 0 ]
    timeout 900 "$WAN_TRAIN" "${common[@]}" --set train.device=\"cuda\" --set train.run_dir=\"$T/gpu-1\" \
        >"$T/train_gpu_1.log" 2>&1
    t_check "wan-train on one emulated GPU, the reference for the same arithmetic over two" [ $? = 0 ]
    # wan-train --check plans the CUDA backend's training state and activations (bf16) as the run
    # allocated them (its peak adds the backend's scratch and workspaces, which the plan leaves out)
    plan=$(bin/wan-train "${common[@]}" --set train.device=\"cuda\" --check 2>&1 |
        sed -n 's/.*memory of a stage 0 rank (cuda): \(training state [0-9.]* MiB\).*\(activations [0-9.]* MiB\).*/\1 \2/p')
    ran=$(sed -n 's/.*cuda memory on rank 0 (pipeline stage 0): \(training state [0-9.]* MiB\).*\(activations [0-9.]* MiB\).*/\1 \2/p' \
        "$T/train_gpu_1.log")
    t_check_all "--check plans the CUDA run's memory: '${plan:-nothing}' (the run: '${ran:-nothing}')" \
        '[ -n "$plan" ] && [ "$plan" = "$ran" ]'
    # compare RUN REF TOL [MIN]: losses and gradient norms of the three steps within relative TOL
    # (and at least MIN apart somewhere: bf16 against fp32 cannot agree exactly)
    compare() {
        python3 - "$1" "$2" "$3" "${4:-0}" <<'EOF2'
import json, sys
def steps(p):
    return [(r["loss"], r["grad_norm"]) for r in map(json.loads, open(p)) if r["type"] == "step"]
# step 1's loss does not depend on the weights (the head starts at zero): its gradient norm and
# step 2's loss do; step 1 changes only the head, so step 3 is the first to see new block weights
g, c, tol, least = steps(sys.argv[1]), steps(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
assert len(g) == len(c) == 3, (len(g), len(c))
worst = max(abs(a - b) / abs(b) for x, y in zip(g, c) for a, b in zip(x, y))
print(f"worst relative difference {worst:.2e} (limit {tol:g})")
sys.exit(0 if least <= worst < tol else 1)
EOF2
    }
    # tensor parallel (collectives inside every block), two pipeline stages (send/recv of the
    # residual stream, time embedding and text context; bf16 context) and the context-parallel
    # ring (K/V and dK/dV transfers overlapping the attention). Every NCCL task starts only when
    # the compute waits for it (or 100 ms later), so that compute not ordered after a transfer
    # reads stale data: against one emulated GPU (the same bf16 arithmetic) that shows as a
    # difference of ~1e-3 (a dropped wait for the ring's K/V: 1.1e-3), where a correct run
    # differs by ~1e-5 (the split reductions' order).
    # dp=2: each block's gradient reduction starts in the backward, on the second NCCL stream.
    # tp2-sp-dp2 (four ranks): the tensor-parallel sums on one NCCL stream, then the same ranges'
    # data-parallel reduction on the other.
    # equals_one_gpu NAME RUN REF [TOL]: losses and gradient norms within 1e-4 of the one-GPU run;
    # the steps' losses barely see the blocks' gradients (the head starts at zero): the Adam
    # moments do, each tensor within relative TOL (default 0.1). A dropped wait for the ring's
    # dK/dV accumulator gives 1.03 (self-attention k bias) and 0.70 (v weight), one for the
    # blocks' weight pieces in dp=2 1.0. Context parallelism changes the attention's arithmetic
    # (each K/V block its own bf16 softmax, merged in fp32), so the tensors whose gradients are
    # cancellations (cross-attention weights, k biases: moments of norm 1e-7) move by what bf16
    # moves them: 0.17 against one GPU, and 0.18 for one GPU against the fp32 CPU run (measured
    # 2026-12-03); cp is compared within 0.35.
    equals_one_gpu() {
        local out rc
        out=$(compare "$2/steps.jsonl" "$3/steps.jsonl" 1e-4 2>&1)
        t_check "$1 emulated run equals one emulated GPU's: $out" [ $? = 0 ]
        "$CKPT_COMPARE" "$2/checkpoints/latest" "$3/checkpoints/latest" --kinds adam_m,adam_v --tol "${4:-0.1}" \
            >"$2.moments.log" 2>&1
        rc=$?
        t_check "$1 emulated Adam moments equal one emulated GPU's: $(tail -n1 "$2.moments.log")" [ $rc = 0 ]
    }
    # links_connected NAME LOG: NCCL connects a point-to-point link (peer, direction) at its first
    # send/recv; every link a run used was connected by a one-element transfer when its group
    # was made, not in the middle of a step beside the other communicators' kernels
    links_connected() {
        local sums
        sums=$(sed -n 's/.* \([0-9]*\) point-to-point links, \([0-9]*\) first used by more.*/\1 \2/p' "$2" |
            awk '{l += $1; late += $2} END {print l + 0, late + 0}')
        t_check_all "$1: all ${sums% *} point-to-point links connected when their group was made (${sums#* } later)" \
            '[ "${sums% *}" -gt 0 ] && [ "${sums#* }" = 0 ]'
    }
    for par in tp pp cp dp tp2-sp-dp2; do
        case $par in
        dp) layout=(--nproc 2) name="dp=2" gpus=two ;; # two ranks and nothing else: dp = 2
        tp2-sp-dp2) layout=(--nproc 4 --set parallel.tp=2 --set parallel.sp=true) name=$par gpus=four ;;
        *) layout=(--nproc 2 --set parallel.$par=2) name="$par=2" gpus=two ;;
        esac
        WAN_EMU_NCCL_STATS=1 WAN_EMU_NCCL_LAZY_MS=100 timeout 1800 "$WAN_TRAIN" "${common[@]}" "${layout[@]}" \
            --set train.device=\"cuda\" --set train.run_dir=\"$T/gpu-$par\" >"$T/train_gpu_$par.log" 2>&1
        rc=$?
        t_check "wan-train $name on $gpus emulated GPUs over the NCCL stand-in (exit $rc)" [ $rc = 0 ]
        [ $rc = 0 ] || tail -n 30 "$T/train_gpu_$par.log"
        out=$(compare "$T/gpu-$par/steps.jsonl" "$T/cpu/steps.jsonl" 5e-2 1e-7 2>&1)
        t_check "$name emulated losses and gradient norms follow the CPU run (bf16 vs fp32): $out" [ $? = 0 ]
        equals_one_gpu "$name" "$T/gpu-$par" "$T/gpu-1" "$([ $par = cp ] && echo 0.35 || echo 0.1)"
        [ $par != dp ] && links_connected "$name" "$T/train_gpu_$par.log"
        if [ $par = dp ] || [ $par = tp2-sp-dp2 ]; then
            t_check "$par: every block's gradient reduction started under the backward" \
                grep -q 'gradient reduction over dp x cp (2 ranks): 2 of 2 blocks started under the backward' \
                "$T/train_gpu_$par.log"
            # and the new weights come back in pieces the next forward waits for one by one
            # (without those waits the third step reads stale block weights: its gradient norm
            # differs by 8e-3, the moments by 1.0)
            t_check "$par: the weight gather runs in pieces under the next forward" \
                grep -q 'weight gather over dp x cp (2 ranks): [0-9]* pieces, each waited for by the forward' \
                "$T/train_gpu_$par.log"
        fi
    done
    # layouts with their own one-GPU reference: tp4-sp (rings of three steps; 4 heads) and pp3
    # (a middle stage: links up and down to different peers; 3 layers)
    for par in tp4-sp pp3; do
        case $par in
        tp4-sp) model=(--set model.num_heads=4) layout=(--nproc 4 --set parallel.tp=4 --set parallel.sp=true) ;;
        pp3) model=(--set model.num_layers=3) layout=(--nproc 3 --set parallel.pp=3) ;;
        esac
        timeout 900 "$WAN_TRAIN" "${common[@]}" "${model[@]}" --set train.device=\"cuda\" \
            --set train.run_dir=\"$T/gpu-1-$par\" >"$T/train_gpu_1_$par.log" 2>&1
        t_check "wan-train on one emulated GPU, the reference for $par" [ $? = 0 ]
        WAN_EMU_NCCL_STATS=1 WAN_EMU_NCCL_LAZY_MS=100 timeout 1800 "$WAN_TRAIN" "${common[@]}" "${model[@]}" \
            "${layout[@]}" --set train.device=\"cuda\" --set train.run_dir=\"$T/gpu-$par\" >"$T/train_gpu_$par.log" 2>&1
        rc=$?
        t_check "wan-train $par on emulated GPUs over the NCCL stand-in (exit $rc)" [ $rc = 0 ]
        [ $rc = 0 ] || tail -n 30 "$T/train_gpu_$par.log"
        equals_one_gpu "$par" "$T/gpu-$par" "$T/gpu-1-$par"
        links_connected "$par" "$T/train_gpu_$par.log"
    done
    # a rank that stops mid-run (SIGSTOP: alive, silent): the other one is blocked where the host
    # waits for the GPU; its watchdog must end it within train.comm_timeout, naming the
    # collective, and the supervisor then ends the job
    WAN_EMU_NCCL_TIMEOUT=0 "$WAN_TRAIN" "${common[@]}" --nproc 2 --set parallel.tp=2 --set train.device=\"cuda\" \
        --set train.steps=1000 --set train.comm_timeout=5 --set train.run_dir=\"$T/gpu-stop\" >"$T/stop.log" 2>&1 &
    job=$!
    for _ in $(seq 600); do grep -q 'step 1/1000' "$T/stop.log" && break; sleep 0.2; done
    pid1=$(sed -n 's/.*started 2 local ranks (pids [0-9]*\.\.\([0-9]*\)).*/\1/p' "$T/stop.log" | head -n1)
    start=$(date +%s)
    [ -n "$pid1" ] && kill -STOP "$pid1"
    for _ in $(seq 600); do kill -0 $job 2>/dev/null || break; sleep 0.2; done
    took=$(($(date +%s) - start))
    kill -9 $job "$pid1" 2>/dev/null
    wait $job
    rc=$?
    t_check_all "tp=2 rank 1 stopped after step 1: the job ends in $took s (exit $rc), rank 0 names the stalled collective" \
        '[ -n "$pid1" ] && [ $rc != 0 ] && [ $took -lt 60 ] &&
         grep -q "NCCL .* on group .*no progress for 5 s (comm_timeout)" "$T/stop.log"'
    grep -q 'no progress for 5 s' "$T/stop.log" || tail -n 20 "$T/stop.log"
fi
t_summary
