#!/usr/bin/env bash
# wan-train on CPU: a tiny model overfits a handful of samples; a resumed run reproduces the
# uninterrupted run's losses bit for bit (one process and two); SIGUSR1 checkpoints and exits
# for requeue; retention keeps the last K plus every M-th; corrupt and truncated checkpoints
# are refused naming the file; the step log and run directory hold what the report needs.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
T=(--set train.threads=1 --set train.comm_timeout=60)

losses() { # run dir [from step] -> "step loss" with full precision, as logged
    /usr/bin/python3 - "$@" <<'EOF'
import json, sys
lo = int(sys.argv[2]) if len(sys.argv) > 2 else 0
rows = {}
for r in map(json.loads, open(sys.argv[1] + "/steps.jsonl")):
    if r["type"] == "step" and r["step"] >= lo:
        rows[r["step"]] = r["loss"]
for s in sorted(rows):
    print(s, repr(rows[s]))
EOF
}

# ---- overfitting: 2000 steps of a small model on 2 samples; loss falls by 10x
"$BIN/wan-train" "${T[@]}" --set train.run_dir="$T_TMP/fit" --set train.steps=1500 --set data.synthetic_samples=2 \
    --set train.gbs=2 --set train.latent_shape='[2, 4, 4]' --set model.dim=128 --set model.ffn_dim=512 \
    --set model.num_heads=4 --set train.optimizer.lr=1e-3 --set train.optimizer.weight_decay=0 \
    --set train.optimizer.grad_clip=0 --set train.schedule.warmup_steps=50 --set train.threads=2 >"$T_TMP/fit.log" 2>&1
ratio=$(/usr/bin/python3 -c '
import json, sys
L = [r["loss"] for r in map(json.loads, open(sys.argv[1])) if r["type"] == "step"]
print("%.2f" % ((sum(L[:20]) / 20) / (sum(L[-100:]) / 100)))' "$T_TMP/fit/steps.jsonl" 2>/dev/null)
if [ -n "$ratio" ] && /usr/bin/python3 -c "import sys; sys.exit(0 if float('$ratio') >= 10 else 1)"; then
    t_ok "overfits 2 samples: loss fell ${ratio}x (first 20 steps vs last 100)"
else t_fail "overfit: loss fell only ${ratio:-?}x"; tail -3 "$T_TMP/fit.log"; fi

# ---- resume: bit-exact continuation, single process and 2 ranks
for n in 1 2; do
    base=(--set train.steps=8 --set train.ckpt_interval=4 --set train.optimizer.lr=3e-3 --nproc $n)
    "$BIN/wan-train" "${T[@]}" "${base[@]}" --set train.run_dir="$T_TMP/full$n" >"$T_TMP/full$n.log" 2>&1 || t_fail "uninterrupted run ($n)"
    "$BIN/wan-train" "${T[@]}" "${base[@]}" --set train.run_dir="$T_TMP/part$n" --set train.steps=4 >"$T_TMP/part$n.log" 2>&1
    "$BIN/wan-train" "${T[@]}" "${base[@]}" --set train.run_dir="$T_TMP/part$n" --resume >"$T_TMP/resume$n.log" 2>&1
    if [ "$(losses "$T_TMP/full$n" 5)" = "$(losses "$T_TMP/part$n" 5)" ] && [ "$(losses "$T_TMP/part$n" 5 | wc -l)" = 4 ] &&
        grep -q "loaded checkpoint .*step_00000004" "$T_TMP/resume$n.log"; then
        t_ok "resume from step 4 reproduces steps 5-8 bit for bit ($n rank(s))"
    else t_fail "resume ($n ranks)"; diff <(losses "$T_TMP/full$n" 5) <(losses "$T_TMP/part$n" 5); fi
done
cmp -s "$T_TMP/full1/checkpoints/step_00000008/rank00000.bin" "$T_TMP/part1/checkpoints/step_00000008/rank00000.bin" &&
    t_ok "resumed run's final checkpoint is byte-identical" || t_fail "final checkpoints differ after resume"

# ---- SIGUSR1: finish the step, checkpoint, exit 75; the requeued run continues identically
"$BIN/wan-train" "${T[@]}" --set train.steps=100000 --set train.run_dir="$T_TMP/sig" --set train.optimizer.lr=3e-3 \
    >"$T_TMP/sig.log" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q "step 3/" "$T_TMP/sig.log" && break; sleep 0.1; done
kill -USR1 $pid
kill -USR1 $pid # a second signal during the save changes nothing
wait $pid
rc=$?
stopped=$(sed -n 's/.*stopped by signal after step \([0-9]*\).*/\1/p' "$T_TMP/sig.log")
if [ $rc = 75 ] && [ -n "$stopped" ] && [ -e "$T_TMP/sig/checkpoints/step_$(printf %08d "$stopped")/meta.json" ]; then
    t_ok "SIGUSR1: checkpoint at step $stopped, exit 75"
else t_fail "SIGUSR1: exit $rc, stopped at '${stopped}'"; tail -3 "$T_TMP/sig.log"; fi
end=$((stopped + 3))
"$BIN/wan-train" "${T[@]}" --set train.steps=$end --set train.run_dir="$T_TMP/sig" --set train.optimizer.lr=3e-3 \
    --resume >"$T_TMP/sig2.log" 2>&1
"$BIN/wan-train" "${T[@]}" --set train.steps=$end --set train.run_dir="$T_TMP/nosig" --set train.optimizer.lr=3e-3 \
    >"$T_TMP/nosig.log" 2>&1
[ "$(losses "$T_TMP/sig")" = "$(losses "$T_TMP/nosig")" ] && [ "$(losses "$T_TMP/sig" | wc -l)" = $end ] &&
    t_ok "requeued run's losses equal an uninterrupted run's" ||
    { t_fail "requeue losses differ"; diff <(losses "$T_TMP/sig") <(losses "$T_TMP/nosig") | head; }

# ---- retention: keep_last 2 plus every 4th
"$BIN/wan-train" "${T[@]}" --set train.steps=10 --set train.ckpt_interval=1 --set train.keep_last=2 \
    --set train.keep_every=4 --set train.run_dir="$T_TMP/keep" >"$T_TMP/keep.log" 2>&1
kept=$(cd "$T_TMP/keep/checkpoints" && ls -d step_* | tr '\n' ' ')
[ "$kept" = "step_00000004 step_00000008 step_00000009 step_00000010 " ] && [ "$(readlink "$T_TMP/keep/checkpoints/latest")" = step_00000010 ] &&
    t_ok "retention keeps 4, 8 (every 4th) and 9, 10 (last 2); latest -> 10" || t_fail "retention kept: $kept"

# ---- damaged checkpoints are refused with the file named; the run does not start
ck=$T_TMP/keep/checkpoints/step_00000010
cp -r "$ck" "$T_TMP/trunc"
truncate -s -100 "$T_TMP/trunc/rank00000.bin"
"$BIN/wan-train" "${T[@]}" --set train.run_dir="$T_TMP/x1" --init-from "$T_TMP/trunc" >"$T_TMP/x1.log" 2>&1
rc=$?
[ $rc = 1 ] && grep -q "trunc/rank00000.bin: truncated" "$T_TMP/x1.log" && t_ok "truncated checkpoint refused, file named" ||
    { t_fail "truncated checkpoint: exit $rc"; tail -2 "$T_TMP/x1.log"; }
cp -r "$ck" "$T_TMP/flip"
printf '\xff' | dd of="$T_TMP/flip/rank00000.bin" bs=1 seek=1000 conv=notrunc 2>/dev/null
"$BIN/wan-train" "${T[@]}" --set train.run_dir="$T_TMP/x2" --init-from "$T_TMP/flip" >"$T_TMP/x2.log" 2>&1
rc=$?
[ $rc = 1 ] && grep -q "flip/rank00000.bin: checksum mismatch in the piece of" "$T_TMP/x2.log" &&
    t_ok "corrupt checkpoint refused: checksum mismatch, file and tensor named" || { t_fail "corrupt checkpoint: exit $rc"; tail -2 "$T_TMP/x2.log"; }
cp -r "$ck" "$T_TMP/nometa"
head -c 200 "$ck/meta.json" >"$T_TMP/nometa/meta.json"
"$BIN/wan-train" "${T[@]}" --set train.run_dir="$T_TMP/x3" --init-from "$T_TMP/nometa" >"$T_TMP/x3.log" 2>&1
rc=$?
[ $rc = 1 ] && grep -q "nometa/meta.json.*truncated or corrupt" "$T_TMP/x3.log" && t_ok "truncated meta.json refused" ||
    { t_fail "truncated meta.json: exit $rc"; tail -2 "$T_TMP/x3.log"; }
"$BIN/wan-train" "${T[@]}" --set train.run_dir="$T_TMP/x4" --set model.dim=96 --set model.num_heads=3 \
    --init-from "$ck" >"$T_TMP/x4.log" 2>&1
rc=$?
[ $rc = 2 ] && grep -q "different model: model.dim (64 vs 96), model.num_heads (2 vs 3)" "$T_TMP/x4.log" &&
    t_ok "checkpoint of another model refused, fields named" || { t_fail "model mismatch: exit $rc"; tail -2 "$T_TMP/x4.log"; }
mkdir -p "$T_TMP/crash/checkpoints/step_00000011.tmp"
cp -r "$ck"/* "$T_TMP/crash/checkpoints/step_00000011.tmp/" && rm "$T_TMP/crash/checkpoints/step_00000011.tmp/meta.json"
cp -r "$ck" "$T_TMP/crash/checkpoints/step_00000010"
"$BIN/wan-train" "${T[@]}" --set train.run_dir="$T_TMP/crash" --set train.steps=11 --resume >"$T_TMP/x5.log" 2>&1
grep -q "loaded checkpoint .*step_00000010 (step 10" "$T_TMP/x5.log" &&
    t_ok "an unfinished step_N.tmp is never taken for a checkpoint" || { t_fail "resume after a crashed save"; tail -3 "$T_TMP/x5.log"; }

# ---- run directory contents
rd=$T_TMP/full2
[ -s "$rd/config.cfg" ] && "$BIN/wan-train" --config "$rd/config.cfg" --check >/dev/null 2>&1 &&
    head -n1 "$rd/steps.jsonl" | grep -q '"type":"header"' &&
    grep '"type":"step"' "$rd/steps.jsonl" | head -n1 | grep -q '"gpus":2' &&
    t_ok "run dir: resolved config.cfg (valid), step log with header and layout" || t_fail "run directory contents"
t_summary
