#!/usr/bin/env bash
# wan-reshard end to end: convert / inspect / verify on checkpoints written by the trainer's
# writer path (tests/tools/reshard_make), bad input (layouts the model cannot take, corrupt,
# truncated and missing pieces: a clear error, exit 1 or 2, no target), killed saves and
# conversions (the previous checkpoint stays loadable), and import / export against Wan 2.1
# and diffusers releases written and checked by an independent Python reader.
source "$(dirname "$0")/../lib.sh"
t_tmpdir
cd "$ROOT" || exit 1
R="$BIN/wan-reshard"
MK="$ROOT/build/tests/tools/reshard_make"
T=$T_TMP
M4="--set model.num_heads=4"

# expect_fail NAME CODE PATTERN CMD...: exits with CODE and stderr matches PATTERN
expect_fail() {
    local name=$1 code=$2 pat=$3
    shift 3
    "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    if [ "$rc" = "$code" ] && grep -qE "$pat" "$T/err"; then t_ok "$name"; else
        t_fail "$name (exit $rc, wanted $code and /$pat/)"
        tail -5 "$T/err"
    fi
}
# no_target NAME DIR: neither DIR nor a temporary of it exists
no_target() { if ls -d "$2"* >/dev/null 2>&1; then t_fail "$1: $(ls -d "$2"*)"; else t_ok "$1"; fi; }

# ---- command line
"$R" --help | grep -q "Usage: wan-reshard COMMAND" && t_ok "--help" || t_fail "--help"
"$R" --version | grep -q "^wan-reshard [0-9]" && t_ok "--version" || t_fail "--version"
for c in convert inspect verify import export; do
    "$R" $c --help | grep -q "Usage: wan-reshard $c" && t_ok "$c --help" || t_fail "$c --help"
done
expect_fail "unknown command" 2 "unknown command 'frobnicate'" "$R" frobnicate
expect_fail "convert without --to" 2 "needs --from CKPT and --to DIR" "$R" convert --from x
expect_fail "convert with --layout and --config" 2 "exactly one of" "$R" convert --from x --to y --layout tp=2 --config configs/tiny.cfg
expect_fail "bad layout text" 2 "unknown key 'tq'" "$R" convert --from x --to y --layout tq=2
expect_fail "bad budget" 2 "memory-budget" "$R" convert --from x --to y --layout tp=2 --memory-budget lots

# ---- convert, inspect, verify
"$MK" --out "$T/a" --layout tp=2,dp=2 $M4 --step 5 || t_fail "make tp2 dp2"
"$R" inspect "$T/a" >"$T/insp" 2>/dev/null
grep -q "layout tp2 cp1 dp2 pp1 (4 ranks)" "$T/insp" && grep -q "step 5, optimizer step 5" "$T/insp" &&
    grep -qE "^ +adam_v +[0-9.]+ KiB" "$T/insp" && grep -qE "blocks.1.ffn.0.weight +\[128, 64\] +F32" "$T/insp" &&
    t_ok "inspect" || { t_fail "inspect"; head -20 "$T/insp"; }
"$R" verify "$T/a" >"$T/ver" 2>&1 && grep -q "^ok .*276 tensors (weights and optimizer state)" "$T/ver" &&
    t_ok "verify" || { t_fail "verify"; cat "$T/ver"; }
"$R" convert --from "$T/a" --to "$T/b/step_00000005" --layout tp=4,pp=2 --threads 2 --memory-budget 16M \
    --link-latest 2>"$T/err" && t_ok "convert tp2 dp2 -> tp4 pp2" || { t_fail "convert"; tail "$T/err"; }
grep -qE "resharding: .*MB/s" "$T/err" && grep -q "converted" "$T/err" && t_ok "progress and summary" ||
    t_fail "progress and summary"
[ "$(readlink "$T/b/latest")" = step_00000005 ] && t_ok "--link-latest" || t_fail "--link-latest"
"$R" verify "$T/b" -q >/dev/null && t_ok "verify converted" || t_fail "verify converted"
"$R" inspect --digest "$T/a" -q >"$T/da" && "$R" inspect --digest "$T/b" -q >"$T/db" && [ "$(wc -l <"$T/da")" = 276 ] &&
    cmp -s "$T/da" "$T/db" && t_ok "same full tensors after resharding" || t_fail "same full tensors after resharding"
"$R" convert --from "$T/b" --to "$T/a2" --layout tp=2,dp=2 -q &&
    (cd "$T/a/step_00000005" && for f in *; do cmp -s "$f" "$T/a2/$f" || exit 1; done) &&
    t_ok "A -> B -> A byte for byte" || t_fail "A -> B -> A byte for byte"
# the target run's configuration instead of a layout
"$R" convert --from "$T/a" --to "$T/c" --config configs/tiny.cfg --set model.num_heads=4 --set parallel.tp=2 \
    --set parallel.pp=2 --world 8 -q && "$R" inspect "$T/c" 2>/dev/null | grep -q "layout tp2 cp1 dp2 pp2 (8 ranks)" &&
    grep -q 'run_dir = \\"runs/tiny\\"' "$T/c/meta.json" && t_ok "convert --config" || t_fail "convert --config"
expect_fail "--config of another model" 2 "model.dim \(64 vs 128\)" \
    "$R" convert --from "$T/a" --to "$T/other" --config configs/tiny.cfg --set model.num_heads=4 --set model.dim=128 --world 1
no_target "no target for another model" "$T/other"

# ---- layouts the model cannot take: refused before anything is written
expect_fail "tp that does not divide the heads" 2 "num_heads = 4 is not divisible by tp = 3" \
    "$R" convert --from "$T/a" --to "$T/x" --layout tp=3
no_target "no target for tp=3" "$T/x"
expect_fail "pp that does not divide the layers" 2 "num_layers = 2 is not divisible by pp = 4" \
    "$R" convert --from "$T/a" --to "$T/x" --layout pp=4
no_target "no target for pp=4" "$T/x"
expect_fail "existing target" 2 "already exists" "$R" convert --from "$T/a" --to "$T/c" --layout tp=1
"$R" convert --from "$T/a" --to "$T/c" --layout tp=1 --force -q && "$R" inspect "$T/c" 2>/dev/null | grep -q "layout tp1" &&
    t_ok "--force replaces" || t_fail "--force replaces"

# ---- corrupt, truncated, missing
cp -r "$T/a/step_00000005" "$T/flip"
printf '\x55' | dd of="$T/flip/rank00003.bin" bs=1 seek=3001 conv=notrunc status=none
expect_fail "verify: flipped byte" 1 "rank00003.bin: checksum mismatch in the piece of .* at offset" "$R" verify "$T/flip"
expect_fail "convert: flipped byte" 1 "checksum mismatch" "$R" convert --from "$T/flip" --to "$T/x" --layout tp=1
no_target "no target from a corrupt source" "$T/x"
cp -r "$T/a/step_00000005" "$T/trunc"
truncate -s 100 "$T/trunc/rank00002.bin"
expect_fail "truncated rank file" 1 "rank00002.bin: truncated" "$R" verify "$T/trunc"
expect_fail "convert: truncated" 1 "truncated" "$R" convert --from "$T/trunc" --to "$T/x" --layout tp=1
no_target "no target from a truncated source" "$T/x"
cp -r "$T/a/step_00000005" "$T/miss"
rm "$T/miss/rank00001.bin"
expect_fail "missing rank file" 1 "rank00001.bin" "$R" verify "$T/miss"
cp -r "$T/a/step_00000005" "$T/meta"
python3 -c "
import json,sys; p=sys.argv[1]; m=json.load(open(p))
t=[t for t in m['tensors'] if t['name']=='blocks.0.ffn.2.weight' and t['kind']=='adam_m'][0]; t['pieces'].pop()
json.dump(m,open(p,'w'))" "$T/meta/meta.json"
expect_fail "a piece missing from the metadata" 1 "blocks.0.ffn.2.weight \(adam_m\): pieces cover" "$R" verify "$T/meta"
echo '{"format": "wan-checkpoint", "vers' >"$T/meta/meta.json"
expect_fail "truncated meta.json" 1 "meta.json:.*truncated or corrupt" "$R" inspect "$T/meta"

# ---- a killed conversion leaves no target
WAN_TEST_CKPT_PAUSE_MS=3000 WAN_TEST_CKPT_PAUSE_AT=meta "$R" convert --from "$T/a" --to "$T/k" --layout tp=1 -q \
    2>"$T/kerr" &
pid=$!
for _ in $(seq 100); do grep -q "wan-test-ckpt-pause: meta" "$T/kerr" && break; sleep 0.05; done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
[ ! -e "$T/k" ] && ls -d "$T"/k.tmp.* >/dev/null 2>&1 && t_ok "killed conversion: only a temporary is left" ||
    t_fail "killed conversion: only a temporary is left"
expect_fail "the temporary is not a checkpoint" 1 "no such directory" "$R" verify "$T/k"

# ---- killed saves: the previous checkpoint stays loadable at every step of the commit
for point in piece:1 piece:40 piece:200 pieces-done meta renamed latest; do
    step=${point%%:*}
    nth=${point#*:}
    [ "$nth" = "$point" ] && nth=1
    root="$T/save_$step$nth"
    "$MK" --out "$root" --layout tp=2 $M4 --step 1 --seed 1 >/dev/null 2>&1
    ms=2000
    [ "$step" = piece ] && ms=20
    WAN_TEST_CKPT_PAUSE_MS=$ms WAN_TEST_CKPT_PAUSE_AT=$step "$MK" --out "$root" --layout tp=2 $M4 --step 2 \
        --seed 2 2>"$T/serr" &
    pid=$!
    for _ in $(seq 400); do [ "$(grep -c "wan-test-ckpt-pause: $step" "$T/serr")" -ge "$nth" ] && break; sleep 0.01; done
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    got=$("$R" verify "$root" -q 2>&1)
    case "$step" in
    renamed | latest) want="step [12]," ;; # the new checkpoint is complete once renamed
    *) want="step 1," ;;
    esac
    if echo "$got" | grep -qE "^ok .*$want" && grep -q "wan-test-ckpt-pause: $step" "$T/serr"; then
        t_ok "save killed at $step ($nth): a complete checkpoint loads ($(echo "$got" | grep -oE 'step [0-9]+'))"
    else
        t_fail "save killed at $step ($nth): $got"
    fi
done

# ---- import / export against releases written by an independent reader (numpy only)
cat >"$T/wanrel.py" <<'EOF'
import json, os, struct, sys
import numpy as np

DIM, FFN, HEADS, LAYERS, TEXT, FREQ, IN, OUT, PATCH = 64, 128, 2, 2, 32, 256, 16, 16, (1, 2, 2)

def wan_keys():
    k = {"patch_embedding.weight": (DIM, IN) + PATCH, "patch_embedding.bias": (DIM,)}
    for name, shape in [("text_embedding.0", (DIM, TEXT)), ("text_embedding.2", (DIM, DIM)),
                        ("time_embedding.0", (DIM, FREQ)), ("time_embedding.2", (DIM, DIM)),
                        ("time_projection.1", (6 * DIM, DIM))]:
        k[name + ".weight"], k[name + ".bias"] = shape, shape[:1]
    for i in range(LAYERS):
        b = "blocks.%d." % i
        k[b + "modulation"] = (1, 6, DIM)
        for a in ("self_attn", "cross_attn"):
            for p in "qkvo":
                k[b + a + "." + p + ".weight"], k[b + a + "." + p + ".bias"] = (DIM, DIM), (DIM,)
            k[b + a + ".norm_q.weight"] = k[b + a + ".norm_k.weight"] = (DIM,)
        k[b + "norm3.weight"] = k[b + "norm3.bias"] = (DIM,)
        k[b + "ffn.0.weight"], k[b + "ffn.0.bias"] = (FFN, DIM), (FFN,)
        k[b + "ffn.2.weight"], k[b + "ffn.2.bias"] = (DIM, FFN), (DIM,)
    k["head.head.weight"], k["head.head.bias"] = (OUT * 4, DIM), (OUT * 4,)
    k["head.modulation"] = (1, 2, DIM)
    return k

# diffusers' own conversion: plain substring replacements, in this order
RENAME = [("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
          ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
          ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
          ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
          ("time_projection.1", "condition_embedder.time_proj"), ("head.modulation", "scale_shift_table"),
          ("head.head", "proj_out"), ("modulation", "scale_shift_table"), ("ffn.0", "ffn.net.0.proj"),
          ("ffn.2", "ffn.net.2"), ("norm2", "norm__placeholder"), ("norm3", "norm2"), ("norm__placeholder", "norm3"),
          ("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
          ("self_attn.o", "attn1.to_out.0"), ("self_attn.norm_q", "attn1.norm_q"), ("self_attn.norm_k", "attn1.norm_k"),
          ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
          ("cross_attn.o", "attn2.to_out.0"), ("cross_attn.norm_q", "attn2.norm_q"), ("cross_attn.norm_k", "attn2.norm_k")]

def to_diffusers(k):
    for a, b in RENAME:
        k = k.replace(a, b)
    return k

def bf16_bits(x):  # round to nearest even
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)

def write_st(path, tensors):  # tensors: name -> (dtype, shape, bytes)
    hdr, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, (dt, shape, data) in tensors.items():
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))

def read_dir(d):  # name -> float32 array, dtype
    idx = os.path.join(d, "diffusion_pytorch_model.safetensors.index.json")
    files = sorted(set(json.load(open(idx))["weight_map"].values())) if os.path.exists(idx) else \
        ["diffusion_pytorch_model.safetensors"]
    out = {}
    for fn in files:
        raw = open(os.path.join(d, fn), "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        hdr = json.loads(raw[8:8 + n])
        for name, e in hdr.items():
            if name == "__metadata__":
                continue
            b = raw[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]]
            if e["dtype"] == "F32":
                a = np.frombuffer(b, np.float32)
            else:
                a = (np.frombuffer(b, np.uint16).astype(np.uint32) << 16).view(np.float32)
            out[name] = (a.reshape(e["shape"]), e["dtype"], b)
    return out

def write_release(d, fmt, dtype, shards, extra=None):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(7)
    tensors = {}
    for name, shape in wan_keys().items():
        x = rng.standard_normal(shape).astype(np.float32)
        x[x == 0] = 0.5
        key = to_diffusers(name) if fmt == "diffusers" else name
        data = bf16_bits(x).tobytes() if dtype == "BF16" else x.tobytes()
        tensors[key] = (dtype, shape, data)
    if extra:
        tensors[extra] = ("F32", (4,), np.ones(4, np.float32).tobytes())
    names = list(tensors)
    if shards == 1:
        write_st(os.path.join(d, "diffusion_pytorch_model.safetensors"), tensors)
    else:
        wm, per = {}, (len(names) + shards - 1) // shards
        for s in range(shards):
            fn = "diffusion_pytorch_model-%05d-of-%05d.safetensors" % (s + 1, shards)
            part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
            write_st(os.path.join(d, fn), part)
            wm.update({n: fn for n in part})
        json.dump({"metadata": {"total_size": sum(len(t[2]) for t in tensors.values())}, "weight_map": wm},
                  open(os.path.join(d, "diffusion_pytorch_model.safetensors.index.json"), "w"))
    if fmt == "diffusers":
        cfg = {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0", "added_kv_proj_dim": None,
               "attention_head_dim": DIM // HEADS, "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": FFN,
               "freq_dim": FREQ, "image_dim": None, "in_channels": IN, "num_attention_heads": HEADS,
               "num_layers": LAYERS, "out_channels": OUT, "patch_size": list(PATCH),
               "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": TEXT}
    else:  # as the official release writes it: no patch_size or text_dim (not Wan's defaults here)
        cfg = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": DIM, "eps": 1e-06, "ffn_dim": FFN,
               "freq_dim": FREQ, "in_dim": IN, "model_type": "t2v", "num_heads": HEADS, "num_layers": LAYERS,
               "out_dim": OUT, "text_len": 16, "text_dim": TEXT}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))

def compare(a, b, exact_bytes):
    """a: a release; b: another, possibly in the other naming; values equal exactly."""
    A, B = read_dir(a), read_dir(b)
    a_diff = any(k.startswith("condition_embedder") for k in A)
    b_diff = any(k.startswith("condition_embedder") for k in B)
    canon_a = {(k if a_diff else to_diffusers(k)): v for k, v in A.items()}
    canon_b = {(k if b_diff else to_diffusers(k)): v for k, v in B.items()}
    if set(canon_a) != set(canon_b):
        sys.exit("key sets differ: %s" % sorted(set(canon_a) ^ set(canon_b))[:5])
    for k in canon_a:
        x, y = canon_a[k], canon_b[k]
        if x[0].shape != y[0].shape or not np.array_equal(x[0], y[0]):
            sys.exit("%s differs" % k)
        if exact_bytes and x[2] != y[2]:
            sys.exit("%s: bytes differ" % k)
    print("ok %d tensors" % len(canon_a))

if __name__ == "__main__":
    if sys.argv[1] == "write":
        write_release(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6] if len(sys.argv) > 6 else None)
    else:
        compare(sys.argv[2], sys.argv[3], sys.argv[4] == "bytes")
EOF
PY=/usr/bin/python3
$PY "$T/wanrel.py" write "$T/rel_wan" wan BF16 3 || t_fail "python writes a release"
"$R" import "$T/rel_wan" --to "$T/imp_wan" --threads 2 -q 2>"$T/err" && "$R" verify "$T/imp_wan" -q | grep -q "model weights only" &&
    t_ok "import official, 3 shards + index, bf16" || { t_fail "import official"; tail -3 "$T/err"; }
"$R" inspect "$T/imp_wan" 2>/dev/null | grep -q "text 16 x 32" && t_ok "imported config (text_len, text_dim from config.json)" ||
    t_fail "imported config"
"$R" export "$T/imp_wan" --to "$T/exp_wan16" -q && $PY "$T/wanrel.py" compare "$T/rel_wan" "$T/exp_wan16" bytes >/dev/null &&
    t_ok "official bf16 -> checkpoint -> official bf16, byte for byte" || t_fail "official bf16 round trip"
"$R" export "$T/imp_wan" --to "$T/exp_diff32" --format diffusers --dtype f32 --max-shard-size 100K -q &&
    [ -e "$T/exp_diff32/diffusion_pytorch_model.safetensors.index.json" ] &&
    $PY "$T/wanrel.py" compare "$T/rel_wan" "$T/exp_diff32" values >/dev/null &&
    grep -q '"_class_name": "WanTransformer3DModel"' "$T/exp_diff32/config.json" &&
    t_ok "export diffusers f32 sharded: keys as diffusers converts them, values exact" || t_fail "export diffusers"
"$R" import "$T/exp_diff32" --to "$T/imp_diff" --layout tp=2,pp=2 --set model.text_len=16 -q &&
    "$R" inspect --digest "$T/imp_diff" -q >"$T/d1" &&
    "$R" convert --from "$T/imp_wan" --to "$T/imp_wan_tp2pp2" --layout tp=2,pp=2 -q && "$R" inspect --digest "$T/imp_wan_tp2pp2" -q >"$T/d2" &&
    "$R" export "$T/imp_diff" --to "$T/exp_back" --dtype bf16 -q && $PY "$T/wanrel.py" compare "$T/rel_wan" "$T/exp_back" bytes >/dev/null &&
    t_ok "diffusers import into tp2 pp2, export back to official bf16: byte for byte" || t_fail "diffusers import"
$PY "$T/wanrel.py" write "$T/rel_diff" diffusers F32 1 &&
    "$R" import "$T/rel_diff" --to "$T/imp_rd" --set model.text_len=16 -q && "$R" export "$T/imp_rd" --to "$T/exp_rd" --format diffusers -q &&
    $PY "$T/wanrel.py" compare "$T/rel_diff" "$T/exp_rd" bytes >/dev/null &&
    t_ok "diffusers f32 release round trip, byte for byte" || t_fail "diffusers f32 release round trip"
# trainer-made checkpoint -> export -> import equals its model weights
"$R" export "$T/a" --to "$T/exp_a" --format diffusers -q && "$R" import "$T/exp_a" --to "$T/imp_a" --set model.text_len=16 -q &&
    grep " model " "$T/da" >"$T/dam" && "$R" inspect --digest "$T/imp_a" -q | cmp -s - "$T/dam" &&
    t_ok "checkpoint -> diffusers -> checkpoint: model weights bit-exact" || t_fail "checkpoint -> diffusers -> checkpoint"
"$R" export "$T/a" --to "$T/exp_master" --weights master -q && t_ok "export --weights master" || t_fail "export --weights master"

# bad releases
$PY "$T/wanrel.py" write "$T/rel_extra" wan F32 1 blocks.0.self_attn.q.lora_A.weight
expect_fail "unknown key" 1 "not parameters .*blocks.0.self_attn.q.lora_A.weight" "$R" import "$T/rel_extra" --to "$T/x"
no_target "no checkpoint from an unknown key" "$T/x"
cp -r "$T/rel_wan" "$T/rel_trunc"
truncate -s 3000 "$T/rel_trunc/diffusion_pytorch_model-00002-of-00003.safetensors"
expect_fail "truncated shard" 1 "diffusion_pytorch_model-00002-of-00003.safetensors" "$R" import "$T/rel_trunc" --to "$T/x"
no_target "no checkpoint from a truncated shard" "$T/x"
cp -r "$T/rel_wan" "$T/rel_hdr"
printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a": [1, 2, 3' | dd of="$T/rel_hdr/diffusion_pytorch_model-00001-of-00003.safetensors" conv=notrunc status=none
expect_fail "corrupt header" 1 "diffusion_pytorch_model-00001-of-00003.safetensors" "$R" import "$T/rel_hdr" --to "$T/x"
cp -r "$T/rel_wan" "$T/rel_i2v"
sed -i 's/"t2v"/"i2v"/' "$T/rel_i2v/config.json"
expect_fail "image-to-video refused" 1 "model_type.*i2v" "$R" import "$T/rel_i2v" --to "$T/x"
expect_fail "export to an existing directory" 2 "already exists" "$R" export "$T/a" --to "$T/exp_a"
cp -r "$T/a/step_00000005" "$T/flip0"
printf '\x55' | dd of="$T/flip0/rank00000.bin" bs=1 seek=100 conv=notrunc status=none
expect_fail "export: flipped byte in a weight" 1 "rank00000.bin: checksum mismatch in the piece of patch_embedding.weight \(model\)" \
    "$R" export "$T/flip0" --to "$T/x"
no_target "no export from a corrupt checkpoint" "$T/x"
t_summary
