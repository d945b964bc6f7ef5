#!/usr/bin/env bash
# wan-preprocess end to end: output independent of the thread count, interrupted runs resume
# to a byte-identical dataset, parts merge to what a single run gives, bad inputs are named
# (or skipped and reported), corruption is found by verify, and values match PyTorch's own
# bf16 rounding on files written by Python.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
P=$BIN/wan-preprocess
PY=/usr/bin/python3
cd "$T_TMP" || exit 1
SMALL=(--text-dim 64 --text-len 32)
log=$T_TMP/log

# Run the preprocessor; keep its stderr in $log; return its exit code.
pp() { "$P" "$@" 2>"$log"; }
logs() { grep -q -- "$1" "$log"; }

pp synth -o in --count 24 --shape 3x8x8 --shape 2x8x8 --text-len 32 --text-dim 64 --seed 9 -j 2
t_check "synth writes 24 samples and a manifest" test "$(wc -l <in/manifest.jsonl)" = 24 -a -f in/synth-000023.safetensors

# --- same bytes for any thread count -------------------------------------------------------
pp in/manifest.jsonl -o a "${SMALL[@]}" --shard-size 16K -j 1 && pp in/manifest.jsonl -o b "${SMALL[@]}" --shard-size 16K -j 2
t_check "output is byte-identical for 1 and 2 threads" diff -r a b
nshards=$(ls a/shard-*.wls | wc -l)
t_check "small --shard-size gives several shards ($nshards)" test "$nshards" -ge 4
pp verify a
t_check "verify passes on a fresh dataset" logs "OK: 24 samples"
pp in/manifest.jsonl -o a "${SMALL[@]}" --shard-size 16K
t_check "a re-run on a complete dataset does nothing" logs "already complete"
pp in/manifest.jsonl -o a "${SMALL[@]}" --shard-size 32K
rc=$?
t_check "other options on a finished dataset: usage error without --force" test $rc = 2 -a -n "$(grep -- --force "$log")"

# --- interrupted runs resume to the same bytes ---------------------------------------------
WAN_PREPROCESS_CRASH_AFTER=3 pp in/manifest.jsonl -o c "${SMALL[@]}" --shard-size 16K -j 2
rc=$?
t_check "the crash hook kills the run mid-way (exit 75)" test $rc = 75
t_check "an interrupted run leaves no index" test ! -e c/index.jsonl -a -e c/shard-000002.wls
pp verify c
t_check "a directory without its index is not a dataset" logs "not a dataset"
pp in/manifest.jsonl -o c "${SMALL[@]}" --shard-size 16K -j 1
t_check "the resumed run adopts the 3 complete shards" logs "resuming: 3 complete shards"
t_check "the resumed dataset is byte-identical to an uninterrupted one" diff -r a c
# Damage what the crash left: a flipped byte in one complete shard, another truncated.
WAN_PREPROCESS_CRASH_AFTER=4 pp in/manifest.jsonl -o d "${SMALL[@]}" --shard-size 16K -j 2
printf '\x42' | dd of=d/shard-000001.wls bs=1 seek=100 conv=notrunc status=none
truncate -s -10 d/shard-000002.wls
pp in/manifest.jsonl -o d "${SMALL[@]}" --shard-size 16K -j 2
t_check "a damaged shard is redone, not taken for complete" logs "not reusing shard-000001.wls"
t_check "the repaired dataset is byte-identical too" diff -r a d

# --- parts and merge -------------------------------------------------------------------------
pp in/manifest.jsonl -o p "${SMALL[@]}" --shard-size 16K --part 0/3 && pp in/manifest.jsonl -o p "${SMALL[@]}" --shard-size 16K --part 2/3
pp merge p
rc=$?
t_check "merge with a part missing: usage error naming it" test $rc = 2 -a -n "$(grep 'part 1 of 3 is missing' "$log")"
SLURM_ARRAY_TASK_ID=11 SLURM_ARRAY_TASK_MIN=10 SLURM_ARRAY_TASK_COUNT=3 pp in/manifest.jsonl -o p "${SMALL[@]}" --shard-size 16K --part slurm
t_check "--part slurm takes the slice from the job array" test -f p/part-0001-of-0003/index.jsonl
pp merge p && pp verify p
t_check "merged dataset verifies" logs "OK: 24 samples"
t_check "merge copies no shard data" test -z "$(ls p/*.wls 2>/dev/null)"
# The merged index lists the same samples, in the same order, with the same stored bytes.
cat >cmp_index.py <<'EOF'
import json, sys
def samples(path):
    lines = open(path).read().splitlines()
    h = json.loads(lines[0])
    out = []
    for l in lines[1 + h["shards"]:1 + h["shards"] + h["samples"]]:
        d = json.loads(l)
        for k in ("shard", "offset"):
            d.pop(k)
        out.append(d)
    return h, out
ha, a = samples(sys.argv[1])
hb, b = samples(sys.argv[2])
ok = a == b and len(a) > 0 and ha["stored_bytes"] == hb["stored_bytes"] and ha["input_bytes"] == hb["input_bytes"]
print("same" if ok else "different")
EOF
t_check "merge of parts equals a single run (samples, order, checksums, bytes)" test "$($PY cmp_index.py a/index.jsonl p/index.jsonl)" = same
pp stats p >stats.txt
t_check "stats shows both buckets" grep -q "16 x 3 x 8 x 8 .* 12 .* 48" stats.txt
t_check "stats shows the compression ratio" grep -q "^compression" stats.txt

# --- verify finds corruption in each region and names it ----------------------------------
corrupt() { # name, python expression for the byte offset in the file, file
    rm -rf x && cp -r a x
    local off
    off=$($PY -c "import os,struct; p='x/$3'; s=os.path.getsize(p); f=open(p,'rb').read(); print($2)")
    printf '\x5a' | dd of="x/$3" bs=1 seek="$off" conv=notrunc status=none
    pp verify x
    local rc=$?
    if [ $rc = 1 ] && logs "$4"; then t_ok "verify: $1"; else t_fail "verify: $1 (exit $rc)"; cat "$log"; fi
}
corrupt "flipped byte in a shard payload" "100" shard-000001.wls "shard-000001.wls: sample [0-9]* ('synth-"
corrupt "flipped byte in an offset table" "struct.unpack('<Q', f[-64:-56])[0] + 3" shard-000001.wls "shard-000001.wls: offset table checksum mismatch"
corrupt "flipped byte in the index" "s // 2" index.jsonl "index.jsonl: index checksum mismatch"
rm -rf x && cp -r a x && truncate -s -1 x/shard-000003.wls
pp verify x
t_check "verify: truncated shard" logs "shard-000003.wls: .* bytes, the index says .* (truncated)"

# --- bad inputs ------------------------------------------------------------------------------
cat >mk_inputs.py <<'EOF'
import json, struct, sys, os
import numpy as np
import torch
def write_st(path, tensors):
    hdr, off, blobs = {}, 0, []
    for name, (dt, shape, data) in tensors.items():
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
def f32(a): return ("F32", a.shape, a.astype(np.float32).tobytes())
def bf16(t): return ("BF16", tuple(t.shape), t.to(torch.bfloat16).view(torch.int16).numpy().tobytes())
g = torch.Generator().manual_seed(5)
lat = (torch.randn(16, 2, 4, 4, generator=g) * 3 + 1).numpy()
txt = np.zeros((32, 64), np.float32)
txt[:10] = torch.randn(10, 64, generator=g).numpy() * 0.2
os.makedirs("bad", exist_ok=True)
write_st("bad/good.safetensors", {"latent": f32(lat), "text": f32(txt)})
write_st("bad/chan.safetensors", {"latent": f32(lat[:8]), "text": f32(txt)})
write_st("bad/dim.safetensors", {"latent": f32(lat), "text": f32(txt[:, :48])})
nan = lat.copy(); nan[3, 1, 2, 2] = np.nan
write_st("bad/nan.safetensors", {"latent": f32(nan), "text": f32(txt)})
inf = txt.copy(); inf[4, 7] = np.inf
write_st("bad/inf.safetensors", {"latent": f32(lat), "text": f32(inf)})
data = open("bad/good.safetensors", "rb").read()
open("bad/trunc.safetensors", "wb").write(data[:len(data) - 100])
np.save("bad/lat.npy", lat)
np.save("bad/txt.npy", txt)
d = open("bad/txt.npy", "rb").read()
open("bad/txt_trunc.npy", "wb").write(d[:len(d) - 64])
np.save("bad/lat64.npy", lat.astype(np.float64))
# PyTorch's rounding as the reference: fp32 inputs and bf16 inputs written by torch.
write_st("bad/bf16.safetensors", {"latent": bf16(torch.from_numpy(lat)), "text": bf16(torch.from_numpy(txt))})
np.save("bad/ref_f32_as_bf16.npy", torch.from_numpy(lat).to(torch.bfloat16).float().numpy())
np.save("bad/ref_bf16.npy", torch.from_numpy(lat).to(torch.bfloat16).float().numpy())
np.save("bad/ref_text.npy", torch.from_numpy(txt[:10]).to(torch.bfloat16).float().numpy())
rows = [("good", {"path": "good.safetensors"}), ("chan", {"path": "chan.safetensors"}),
        ("dim", {"path": "dim.safetensors"}), ("nan", {"path": "nan.safetensors"}),
        ("inf", {"path": "inf.safetensors"}), ("trunc", {"path": "trunc.safetensors"}),
        ("missing", {"path": "missing.safetensors"}), ("npy", {"latent": "lat.npy", "text": "txt.npy"}),
        ("npytrunc", {"latent": "lat.npy", "text": "txt_trunc.npy"}), ("f64", {"latent": "lat64.npy", "text": "txt.npy"}),
        ("bf16", {"path": "bf16.safetensors"})]
for name, r in rows:
    with open(f"bad/{name}.jsonl", "w") as f:
        f.write(json.dumps(dict(id="s-" + name, caption="a " + name, **r)) + "\n")
with open("bad/all.jsonl", "w") as f:
    for name, r in rows:
        f.write(json.dumps(dict(id="s-" + name, caption="a " + name, **r)) + "\n")
EOF
$PY mk_inputs.py
bad_input() { # case, expected message fragment
    pp "bad/$1.jsonl" -o "out-$1" "${SMALL[@]}"
    local rc=$?
    if [ $rc = 1 ] && logs "sample 's-$1'" && logs "$2" && [ ! -e "out-$1/index.jsonl" ]; then t_ok "bad input: $1"
    else t_fail "bad input: $1 (exit $rc)"; cat "$log"; fi
}
bad_input chan "chan.safetensors: latent 'latent' has 8 channels"
bad_input dim "dim.safetensors: text 'text' has dimension 48 (shape \[32, 48\]): expected --text-dim 64"
bad_input nan "nan.safetensors: latent 'latent' has a NaN or Inf at element"
bad_input inf "inf.safetensors: text 'text' has a NaN or Inf at row 4, column 7"
bad_input trunc "trunc.safetensors: tensor 'text': data_offsets .* truncated"
bad_input missing "missing.safetensors: No such file"
bad_input npytrunc "txt_trunc.npy: truncated"
bad_input f64 "lat64.npy: .npy dtype '<f8'"
pp bad/all.jsonl -o skip "${SMALL[@]}" --skip-bad --keep-dtype
rc=$?
t_check "--skip-bad: the good samples make a dataset" test $rc = 0 -a "$(head -1 skip/index.jsonl | $PY -c 'import json,sys; print(json.load(sys.stdin)["samples"])')" = 3
t_check "--skip-bad: the report lists the 8 bad inputs with their errors" \
    test "$(wc -l <skip/skipped.jsonl)" = 8 -a -n "$(grep '"id":"s-nan".*NaN' skip/skipped.jsonl)"
printf '{"id": "x", "latent": 3}\n' >bad/syntax.jsonl
pp bad/syntax.jsonl -o out-syntax
rc=$?
t_check "a manifest line without paths is a usage error naming the line" test $rc = 2 -a -n "$(grep 'syntax.jsonl line 1' "$log")"

# --- values against PyTorch ------------------------------------------------------------------
pp bad/good.jsonl -o tg "${SMALL[@]}" && pp export tg --sample 0 -o tg.safetensors
pp bad/bf16.jsonl -o tb "${SMALL[@]}" && pp export tb --sample 0 -o tb.safetensors
pp bad/npy.jsonl -o tn "${SMALL[@]}" --keep-dtype && pp export tn --sample 0 -o tn.safetensors
cat >cmp_export.py <<'EOF'
import json, struct, sys
import numpy as np
def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], np.float32).reshape(v["shape"])
    return out
t = read_st(sys.argv[1])
ref = np.load(sys.argv[2])
ok = t["latent"].shape == ref.shape and np.array_equal(t["latent"].view(np.uint32), ref.astype(np.float32).view(np.uint32))
if len(sys.argv) > 3:
    rt = np.load(sys.argv[3])
    ok = ok and t["text"].shape == rt.shape and np.array_equal(t["text"], rt)
print("same" if ok else "different")
EOF
t_check "fp32 input: stored bf16 equals torch's rounding bit for bit (text trimmed to 10 rows)" \
    test "$($PY cmp_export.py tg.safetensors bad/ref_f32_as_bf16.npy bad/ref_text.npy)" = same
t_check "bf16 input written by torch: bit-exact round trip" test "$($PY cmp_export.py tb.safetensors bad/ref_bf16.npy)" = same
t_check "npy fp32 input with --keep-dtype: exact round trip" test "$($PY cmp_export.py tn.safetensors bad/lat.npy)" = same

# --- a scanned directory of .npy pairs -----------------------------------------------------
mkdir -p scan && cp bad/lat.npy scan/clip1.latent.npy && cp bad/txt.npy scan/clip1.text.npy && cp bad/good.safetensors scan/clip0.safetensors
echo "a river at dawn" >scan/clip1.txt
pp scan -o ts "${SMALL[@]}"
t_check "directory scan finds safetensors and npy pairs, with captions" \
    test -n "$(grep '"id":"clip1".*"caption":"a river at dawn"' ts/index.jsonl)" -a -n "$(grep '"id":"clip0"' ts/index.jsonl)"

# --- command line --------------------------------------------------------------------------
"$P" --help >/dev/null
t_check "--help exits 0" test $? = 0
t_check "--version names the program" test -n "$("$P" --version | grep '^wan-preprocess ')"
pp in/manifest.jsonl -o z --bogus
t_check "an unknown option exits 2" test $? = 2
pp in/manifest.jsonl
t_check "convert without -o exits 2" test $? = 2
pp in/manifest.jsonl -o z --part 3/3
t_check "--part outside the split exits 2" test $? = 2
pp stats --level 3 a
t_check "an option of another command exits 2" test $? = 2
t_summary
