#!/usr/bin/env bash
# wan-eval val: the same checkpoint gives the same validation loss at every layout (within
# 1e-5 on CPU), on synthetic data and on a dataset; wan-train's periodic evaluation lands in the
# step log; wan-eval forward refuses bad inputs clearly.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
"$BIN/wan-train" --set train.steps=3 --set train.run_dir="$T_TMP/run" --set eval.interval=2 --set eval.max_samples=4 \
    --set train.threads=1 >"$T_TMP/train.log" 2>&1 || t_fail "training the checkpoint"
CK=$T_TMP/run/checkpoints/latest
grep -q '"type":"eval","step":2' "$T_TMP/run/steps.jsonl" && grep -q "step 2: validation loss" "$T_TMP/train.log" &&
    t_ok "eval.interval = 2: validation loss logged at step 2" || t_fail "periodic evaluation missing"

"$BIN/wan-preprocess" synth -o "$T_TMP/raw" --count 6 --shape 3x8x8 --text-len 16 --text-dim 32 --seed 7 >/dev/null 2>&1 &&
"$BIN/wan-preprocess" "$T_TMP/raw/manifest.jsonl" -o "$T_TMP/val" --text-dim 32 --text-len 16 >/dev/null 2>&1 ||
    t_fail "making the validation dataset"

val() { # name nproc data? args...
    local name=$1 n=$2 data=$3; shift 3
    "$BIN/wan-eval" val --checkpoint "$CK" ${data:+--data "$data"} --json "$T_TMP/$name.json" --nproc "$n" \
        --set train.threads=1 "$@" >"$T_TMP/$name.log" 2>&1 || { t_fail "$name: wan-eval val failed"; tail -3 "$T_TMP/$name.log"; }
}
same() { # a b
    /usr/bin/python3 - "$T_TMP/$1.json" "$T_TMP/$2.json" <<'EOF2'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
worst = max(abs(x - y) / abs(y) for x, y in zip(a["loss_by_sigma"] + [a["loss"]], b["loss_by_sigma"] + [b["loss"]]))
print("  worst relative difference %.2e over %d sigmas, %d samples" % (worst, len(a["sigmas"]), a["samples"]))
sys.exit(0 if worst <= 1e-5 and a["samples"] == b["samples"] and len(a["sigmas"]) == 5 else 1)
EOF2
}
for data in "" "$T_TMP/val"; do
    tag=${data:+ds}; tag=${tag:-synth}
    val "$tag-1" 1 "$data"
    val "$tag-dp2" 2 "$data"
    val "$tag-tp2" 2 "$data" --set parallel.tp=2
    val "$tag-cp2" 2 "$data" --set parallel.cp=2
    val "$tag-cp2tp2sp" 4 "$data" --set parallel.cp=2 --set parallel.tp=2 --set parallel.sp=true
    val "$tag-pp2" 2 "$data" --set parallel.pp=2
    for l in dp2 tp2 cp2 cp2tp2sp pp2; do t_check "$tag: validation at $l equals one rank's" same "$tag-$l" "$tag-1"; done
done
grep -q "mean" "$T_TMP/ds-1.log" && /usr/bin/python3 -c '
import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if r["samples"] == 6 and r["loss"] > 0 else 1)' "$T_TMP/ds-1.json" &&
    t_ok "val on the dataset: all 6 samples, per-sigma table printed" || t_fail "val on the dataset"

# forward: bad inputs are named
/usr/bin/python3 - "$T_TMP/bad.safetensors" <<'EOF2'
import json, struct, sys
h = json.dumps({"latent": {"dtype": "F32", "shape": [1, 16, 3, 8, 8], "data_offsets": [0, 12288]}}).encode()
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * 12288)
EOF2
"$BIN/wan-eval" forward --weights "$CK" --inputs "$T_TMP/bad.safetensors" --out "$T_TMP/o.safetensors" >"$T_TMP/f.log" 2>&1
rc=$?
[ $rc = 2 ] && grep -q "bad.safetensors: missing tensor 'context'" "$T_TMP/f.log" && [ ! -e "$T_TMP/o.safetensors" ] &&
    t_ok "forward without context refused (exit 2), no output" || { t_fail "forward bad input: exit $rc"; cat "$T_TMP/f.log"; }
"$BIN/wan-eval" val --checkpoint "$T_TMP/nope" >"$T_TMP/n.log" 2>&1
rc=$?
[ $rc != 0 ] && grep -q "nope" "$T_TMP/n.log" && t_ok "val of a missing checkpoint refused, path named" || t_fail "missing checkpoint: exit $rc"
t_summary
