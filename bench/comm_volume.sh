#!/usr/bin/env bash
# Bytes each rank sends per training step in every layout of the tiny model (2 steps each,
# local ranks), measured by wan-train against the count the parallel design predicts
# (bench/comm_volume.py). The CPU transport's bandwidth against memcpy is bench/comm.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() { # name nproc args...
    local name=$1 n=$2; shift 2
    "$ROOT/bin/wan-train" --set train.steps=2 --set train.gbs=12 --set train.run_dir="$tmp/$name" --nproc "$n" "$@" \
        >"$tmp/$name.log" 2>&1 || { echo "$name failed:" >&2; tail -3 "$tmp/$name.log" >&2; exit 1; }
}
run dp2 2
run dp3 3
run tp2 2 --set parallel.tp=2
run tp2-sp 2 --set parallel.tp=2 --set parallel.sp=true
run tp2-recompute 2 --set parallel.tp=2 --set train.recompute=true
run cp2 2 --set parallel.cp=2
run cp2-recompute 2 --set parallel.cp=2 --set train.recompute=true
run cp2-recompute-full 2 --set parallel.cp=2 --set train.recompute=true --set train.recompute_attention=true
run cp2-tp2 4 --set parallel.cp=2 --set parallel.tp=2
run cp2-tp2-sp 4 --set parallel.cp=2 --set parallel.tp=2 --set parallel.sp=true
run dp2-cp2 4 --set parallel.cp=2
run pp2 2 --set parallel.pp=2
run pp2-dp2 4 --set parallel.pp=2
run pp2-tp2-sp 4 --set parallel.pp=2 --set parallel.tp=2 --set parallel.sp=true
run pp2-cp2 4 --set parallel.pp=2 --set parallel.cp=2
run pp4 4 --set parallel.pp=4 --set model.num_layers=4
echo "Bytes sent per rank per step (tiny model, fp32 CPU transport; ring-algorithm volumes):"
/usr/bin/python3 "$ROOT/bench/comm_volume.py" --check "$tmp"/dp2 "$tmp"/dp3 "$tmp"/tp2 "$tmp"/tp2-sp "$tmp"/tp2-recompute \
    "$tmp"/cp2 "$tmp"/cp2-recompute "$tmp"/cp2-recompute-full "$tmp"/cp2-tp2 "$tmp"/cp2-tp2-sp "$tmp"/dp2-cp2 \
    "$tmp"/pp2 "$tmp"/pp2-dp2 "$tmp"/pp2-tp2-sp "$tmp"/pp2-cp2 "$tmp"/pp4
