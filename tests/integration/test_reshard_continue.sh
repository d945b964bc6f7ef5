#!/usr/bin/env bash
# Continuing training after resharding: train the tiny model at layout A, save, reshard the
# checkpoint to layout B, continue at B; the losses of the continued steps match those of the
# run that went on at A (within 1e-5 relative on CPU), data-reader position included.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
cd "$ROOT" || exit 1
R="$BIN/wan-reshard"
W="$BIN/wan-train"
T=$T_TMP
STEPS=6
SAVE=3
common=(--config configs/tiny.cfg --set train.steps=$STEPS --set train.threads=1 --set train.keep_last=5)

# step losses of a run as "step loss" lines
losses() { python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("type") == "step": print(r["step"], repr(r["loss"]))' "$1/steps.jsonl"; }

# compare A B: every step of B (after the save) has A's loss within 1e-5 relative
compare() { python3 -c '
import sys
a = dict(l.split() for l in open(sys.argv[1]))
b = dict(l.split() for l in open(sys.argv[2]))
steps = [s for s in b if int(s) > int(sys.argv[3])]
if len(steps) != int(sys.argv[4]) - int(sys.argv[3]): sys.exit("continued steps: %s" % sorted(steps))
worst = 0.0
for s in steps:
    x, y = float(a[s]), float(b[s])
    worst = max(worst, abs(x - y) / max(abs(x), 1e-30))
print("worst relative difference %.3g over steps %s" % (worst, ",".join(sorted(steps, key=int))))
sys.exit(0 if worst <= 1e-5 else 1)' "$1" "$2" "$SAVE" "$STEPS"; }

# A: dp 2 (two local ranks), saving at step 3 and at the end
if "$W" --nproc 2 "${common[@]}" --set train.ckpt_interval=$SAVE --set train.run_dir="$T/runA" >"$T/a.log" 2>&1; then
    t_ok "train at A (dp2) for $STEPS steps"
else
    t_fail "train at A"
    tail -20 "$T/a.log"
fi
losses "$T/runA" >"$T/lossA"
ck="$T/runA/checkpoints/step_0000000$SAVE"
[ -f "$ck/meta.json" ] && t_ok "checkpoint at step $SAVE" || t_fail "checkpoint at step $SAVE"

# continue at A from the saved step too (the reference the resharded runs are held to)
"$W" --nproc 2 "${common[@]}" --set train.run_dir="$T/runA2" --init-from "$ck" >"$T/a2.log" 2>&1
losses "$T/runA2" >"$T/lossA2"
compare "$T/lossA" "$T/lossA2" >"$T/cmp" && t_ok "resume at A reproduces A: $(cat "$T/cmp")" ||
    { t_fail "resume at A: $(cat "$T/cmp")"; tail -5 "$T/a2.log"; }

# B layouts: tensor parallel 2 (dp 1), tensor + sequence parallel, one rank, dp 4, two
# pipeline stages with dp 2
for spec in "tp2:2:tp=2:--set parallel.tp=2" "tp2sp:2:tp=2,sp=1:--set parallel.tp=2 --set parallel.sp=true" \
    "tp1dp1:1:tp=1:" "dp4:4:dp=4:" "pp2dp2:4:pp=2,dp=2:--set parallel.pp=2"; do
    IFS=: read -r name nproc layout sets <<<"$spec"
    dst="$T/ck_$name"
    if "$R" convert --from "$ck" --to "$dst" --layout "$layout" -q 2>"$T/conv.log"; then
        t_ok "reshard step $SAVE: dp2 -> $layout"
    else
        t_fail "reshard to $layout"
        tail -5 "$T/conv.log"
        continue
    fi
    # shellcheck disable=SC2086
    if "$W" --nproc "$nproc" "${common[@]}" $sets --set train.run_dir="$T/run_$name" --init-from "$dst" \
        >"$T/$name.log" 2>&1; then
        losses "$T/run_$name" >"$T/loss_$name"
        compare "$T/lossA" "$T/loss_$name" >"$T/cmp" && t_ok "continue at $layout matches A: $(cat "$T/cmp")" ||
            t_fail "continue at $layout: $(cat "$T/cmp")"
    else
        t_fail "continue at $layout"
        tail -10 "$T/$name.log"
    fi
done

# the trainer saw the layout the resharder wrote
grep -q "written at tp 2 cp 1 dp 1 pp 1" "$T/tp2.log" && t_ok "wan-train loads the resharded layout" ||
    t_fail "wan-train loads the resharded layout"

# weights out and back in: training starts from imported weights with a fresh optimizer, and
# the official and diffusers round trips give the same weights (the same losses, bit for bit)
"$R" export "$ck" --to "$T/rel_wan" -q && "$R" import "$T/rel_wan" --to "$T/imp_wan" -q &&
    "$R" export "$ck" --to "$T/rel_diff" --format diffusers -q &&
    "$R" import "$T/rel_diff" --to "$T/imp_diff" --layout tp=2 --set model.text_len=16 -q &&
    t_ok "export and import step $SAVE (wan and diffusers)" || t_fail "export and import"
"$W" --nproc 2 "${common[@]}" --set train.steps=2 --set train.run_dir="$T/run_iw" --init-from "$T/imp_wan" \
    >"$T/iw.log" 2>&1 &&
    "$W" --nproc 2 "${common[@]}" --set parallel.tp=2 --set train.steps=2 --set train.run_dir="$T/run_id" \
        --init-from "$T/imp_diff" >"$T/id.log" 2>&1 &&
    grep -q "weights only: optimizer state starts fresh" "$T/iw.log" && t_ok "train from imported weights" ||
    { t_fail "train from imported weights"; tail -n 5 "$T/iw.log" "$T/id.log"; }
losses "$T/run_iw" >"$T/liw"
losses "$T/run_id" >"$T/lid"
python3 -c '
import sys
a = [float(l.split()[1]) for l in open(sys.argv[1])]
b = [float(l.split()[1]) for l in open(sys.argv[2])]
ok = len(a) == 2 and len(b) == 2 and all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b))
print(a, b)
sys.exit(0 if ok else 1)' "$T/liw" "$T/lid" >"$T/cmp" &&
    t_ok "imported official (dp2) and diffusers (tp2) weights train alike: $(cat "$T/cmp")" ||
    t_fail "imported weights differ: $(cat "$T/cmp")"
t_summary
