#!/usr/bin/env bash
# Configuration: every preset loads; every rejection has a bad config in tests/configs that
# proves it (exit 2, the file and line of the offending key, the key and what was expected);
# --set is validated like the file; the resolved configuration loads back unchanged; every
# program follows the command-line conventions.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
CFG=$ROOT/tests/configs

for f in "$ROOT"/configs/*.cfg; do
    if "$BIN/wan-train" --config "$f" --check >"$T_TMP/out" 2>&1; then t_ok "preset $(basename "$f") is valid"
    else t_fail "preset $(basename "$f")"; cat "$T_TMP/out"; fi
done

# --check plans each pipeline stage's memory per GPU (the 14B H100 preset: state 43.1 GiB of
# bf16 weights, fp32 gradients and the ZeRO slice of fp32 masters and moments over dp x cp = 32;
# activations: with every block recomputing 8782.6 MiB, 1261 MiB more for each block that keeps
# its own, as many as its 66 GiB budget holds: 11)
"$BIN/wan-train" --config "$ROOT/configs/wan2.1-14b-h100.cfg" --check >"$T_TMP/plan" 2>&1
t_check "14B H100 preset: --check plans 44149.0 MiB of training state and 22651.5 MiB of activations per GPU" \
    grep -q 'memory of a stage 0 rank (cuda): training state 44149.0 MiB .*activations 22651.5 MiB' "$T_TMP/plan"
t_check "14B H100 preset: 29 of 40 blocks recompute, 11 keep their activations (train.memory_budget_gib = 66)" \
    grep -q 'stage 0: 29 of its 40 blocks recompute their activations in the backward, 11 keep them' "$T_TMP/plan"
"$BIN/wan-train" --config "$ROOT/configs/wan2.1-14b-h100.cfg" --set train.memory_budget_gib=0 --check >"$T_TMP/plan0" 2>&1
t_check_all "without the budget every block recomputes: 8782.6 MiB of activations; keeping all would plan 99.66 GiB" \
    'grep -q "stage 0 rank (cuda): training state 44149.0 MiB .*activations 8782.6 MiB" "$T_TMP/plan0" &&
     grep -q "stage 0: with every block keeping its activations the plan would be 99.66 GiB" "$T_TMP/plan0"'
"$BIN/wan-train" --config "$ROOT/configs/wan2.1-14b-h100.cfg" --set train.recompute_layers=28 --check >"$T_TMP/plan28" 2>&1
t_check_all "train.recompute_layers = 28 (explicit, over the budget): 12 blocks keep theirs, 1261 MiB more, and a warning" \
    'grep -q "activations 23912.3 MiB" "$T_TMP/plan28" && grep -q "warn: stage 0: the plan.s 66.47 GiB exceed train.memory_budget_gib = 66" "$T_TMP/plan28"'
"$BIN/wan-train" --config "$ROOT/configs/wan2.1-14b-h200.cfg" --check >"$T_TMP/plan200" 2>&1
t_check "14B H200 preset: the H100 layout with every block keeping its activations (99.66 GiB within 126)" \
    grep -q 'stage 0: 0 of its 40 blocks recompute their activations in the backward, 40 keep them' "$T_TMP/plan200"
"$BIN/wan-train" --check --set train.memory_budget_gib=1e-3 >"$T_TMP/tinyb" 2>&1
t_check "a budget the plan exceeds without recompute: the warning says what would save memory" \
    grep -q 'warn: stage 0: the plan.s .* exceed train.memory_budget_gib = 0.001; train.recompute = true keeps' "$T_TMP/tinyb"
"$BIN/wan-train" --check --set parallel.pp=2 --world 2 >"$T_TMP/plan" 2>&1
t_check "--check plans every pipeline stage (pp=2: two lines)" test "$(grep -c 'memory of a stage [01] rank' "$T_TMP/plan")" = 2
"$BIN/wan-train" --check --set 'train.latent_shape=[0, 0, 0]' --set 'data.path="/data/latents"' >"$T_TMP/plan" 2>&1
rc=$?
t_check_all "--check with the latent shape taken from the data: valid (exit $rc), no plan, says why" \
    '[ $rc = 0 ] && grep -q "no memory plan: train.latent_shape is taken from the data" "$T_TMP/plan"'
# a valid but slow choice is named: tensor parallel without sequence parallel
"$BIN/wan-train" --check --set parallel.tp=2 --world 2 >"$T_TMP/adv" 2>&1
t_check "tp=2 without sp: --check warns that the row-parallel outputs are all-reduced in one piece" \
    grep -q 'warn.*parallel.tp = 2 without parallel.sp' "$T_TMP/adv"
"$BIN/wan-train" --check --set parallel.tp=2 --set parallel.sp=true --world 2 >"$T_TMP/adv" 2>&1
t_check "tp=2 with sp: no such warning" bash -c "! grep -q 'without parallel.sp' '$T_TMP/adv'"

for f in "$CFG"/bad_*.cfg; do
    name=$(basename "$f")
    expect=$(sed -n 's/^# expect: //p' "$f")
    world=$(sed -n 's/^# world: //p' "$f")
    # the line marked BAD, in the file itself or in the file it includes
    where=""
    for g in "$f" "$CFG"/*.inc; do
        n=$(grep -n '# BAD' "$g" | head -n1 | cut -d: -f1)
        if [ -n "$n" ] && { [ "$g" = "$f" ] || grep -q "$(basename "$g")" "$f"; }; then where="$(basename "$g"):$n"; break; fi
    done
    "$BIN/wan-train" --config "$f" --check ${world:+--world $world} >"$T_TMP/out" 2>&1
    rc=$?
    if [ $rc = 2 ] && grep -Eq "$expect" "$T_TMP/out" && grep -q "$where" "$T_TMP/out"; then
        t_ok "$name rejected: $(grep -Eo "$where.{0,60}" "$T_TMP/out" | head -n1)"
    else
        t_fail "$name: exit $rc, expected 2 with /$expect/ at $where"; cat "$T_TMP/out"
    fi
done

check_set() { # expected-pattern --set args...
    local pat=$1; shift
    "$BIN/wan-train" --check "$@" >"$T_TMP/out" 2>&1
    local rc=$?
    if [ $rc = 2 ] && grep -Eq -- "$pat" "$T_TMP/out"; then t_ok "rejected: $*"; else t_fail "$*: exit $rc"; cat "$T_TMP/out"; fi
}
check_set "--set train.stpes=3: unknown key 'train.stpes'; did you mean 'train.steps'" --set train.stpes=3
check_set "--set train.steps=ten: train.steps = ten: expected an integer" --set train.steps=ten
check_set "--set parallel.cp: the sequence of 27 tokens .* not divisible by parallel.cp = 2" --set parallel.cp=2 --set train.latent_shape=[3,6,6]
check_set "expected group.key=value" --set nonsense
check_set "config /nonexistent.cfg: No such file" --config /nonexistent.cfg

if "$BIN/wan-train" --check --set train.steps=7 --set 'train.run_dir="x y"' >"$T_TMP/out" 2>&1; then t_ok "--set overrides accepted"
else t_fail "--set overrides"; cat "$T_TMP/out"; fi

# resolved configuration: printed, loads back to the same text
"$BIN/wan-train" --config "$ROOT/configs/wan2.1-14b-h100.cfg" --set train.steps=9 --print-config >"$T_TMP/a.cfg" 2>/dev/null
"$BIN/wan-train" --config "$T_TMP/a.cfg" --print-config >"$T_TMP/b.cfg" 2>/dev/null
if cmp -s "$T_TMP/a.cfg" "$T_TMP/b.cfg" && grep -q "steps = 9;" "$T_TMP/b.cfg" && grep -q "dim = 5120;" "$T_TMP/b.cfg"; then
    t_ok "resolved configuration round-trips"
else t_fail "resolved configuration round trip"; diff "$T_TMP/a.cfg" "$T_TMP/b.cfg" | head; fi

# the presets reproduce the reference table's layouts
lay() { "$BIN/wan-train" --config "$ROOT/configs/$1" --print-config 2>/dev/null | tr -d ' ' | grep -E "^(tp|sp|cp|gbs|mbs|latent_shape)=" | tr '\n' ' '; }
[ "$(lay wan2.1-14b-h100.cfg)" = "tp=2; sp=true; cp=4; gbs=64; mbs=1; latent_shape=[24,60,104]; " ] &&
[ "$(lay wan2.1-14b-h200.cfg)" = "tp=2; sp=true; cp=4; gbs=64; mbs=1; latent_shape=[24,60,104]; " ] &&
[ "$(lay wan2.1-14b-gb200.cfg)" = "tp=1; sp=false; cp=4; gbs=64; mbs=1; latent_shape=[24,60,104]; " ] &&
[ "$(lay wan2.1-14b-gb300.cfg)" = "tp=1; sp=false; cp=2; gbs=64; mbs=1; latent_shape=[24,60,104]; " ] &&
    t_ok "presets: H100 and H200 TP2+SP CP4, GB200 CP4, GB300 CP2, GBS 64, MBS 1, 24x30x52 tokens" ||
    { t_fail "preset layouts"; lay wan2.1-14b-h100.cfg; echo; }

# conventions of every program
for p in wan-preprocess wan-train wan-reshard wan-report wan-eval; do
    "$BIN/$p" --help >"$T_TMP/h" 2>&1; h=$?
    "$BIN/$p" --version >"$T_TMP/v" 2>&1; v=$?
    "$BIN/$p" --no-such-option >"$T_TMP/u" 2>&1; u=$?
    if [ $h = 0 ] && grep -qi usage "$T_TMP/h" && [ $v = 0 ] && grep -q "^$p [0-9]" "$T_TMP/v" && [ $u = 2 ]; then
        t_ok "$p: --help, --version, exit 2 on a bad option"
    else t_fail "$p: --help $h, --version $v, bad option $u"; cat "$T_TMP/v"; fi
done
t_summary
