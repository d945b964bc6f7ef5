#!/usr/bin/env bash
# `make demo-slurm`: the chain of `make demo`, as Slurm jobs submitted by slurm/pipeline.sh to a
# private single-node Slurm cluster on this machine (tests/slurm/cluster.sh: its own munged,
# slurmctld and slurmd under a temporary directory, started here and stopped at the end):
#   synthetic latents -> wan-preprocess (a 2-task job array + merge) -> wan-train (2 ranks from
#   srun --mpi=pmi2, data parallel) -> wan-reshard to tensor parallel -> 10 more steps at tp 2
#   -> validation (wan-eval val) and wan-report (table and plots).
# Outputs go to $DEMO_OUT (default ./demo-out), replaced on every run. With a private cluster
# already running in this shell (WAN_SLURM_DIR, from tests/slurm/cluster.sh), it uses that one.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/bin
OUT=${DEMO_OUT:-$ROOT/demo-out}
export WAN_NO_BAR=1
start=$(date +%s)
step() { echo; echo "== [$(($(date +%s) - start)) s] $*"; }

rm -rf "$OUT"
mkdir -p "$OUT"
chmod 755 "$OUT" # job steps may run as the cluster's user

step "1/4 a private Slurm cluster on this machine"
if [ -n "${WAN_SLURM_DIR:-}" ] && [ -f "$WAN_SLURM_DIR/slurm.conf" ] && [ "${SLURM_CONF:-}" = "$WAN_SLURM_DIR/slurm.conf" ]; then
    echo "using the running private cluster $WAN_SLURM_DIR"
else
    # shellcheck source=tests/slurm/cluster.sh
    source "$ROOT/tests/slurm/cluster.sh"
    slurm_start || { echo "demo-slurm: the local Slurm cluster did not start (make deps installs Slurm and munge)" >&2; exit 1; }
fi
sinfo

step "2/4 synthetic latents and text embeddings (tiny: 16 x 3 x 8 x 8 latents, 16 x 32 text)"
"$BIN/wan-preprocess" synth -o "$OUT/raw" --count 32 --shape 3x8x8 --text-len 16 --text-dim 32

step "3/4 slurm/pipeline.sh: preprocess -> train (2 ranks) -> reshard to tp 2 -> train 10 more -> report"
"$ROOT/slurm/pipeline.sh" "$ROOT/configs/tiny.cfg" \
    --set data.path="$OUT/dataset" --set train.run_dir="$OUT/run-dp2" --set train.steps=30 \
    --set train.ckpt_interval=10 --set slurm.gpus_per_node=2 --set slurm.time=00:10:00 \
    --inputs "$OUT/raw/manifest.jsonl" --parts 2 --reshard tp=2,dp=1 --continue-steps 10 \
    --continue-dir "$OUT/run-tp2" --warmup 2 --out "$OUT/pipeline"

step "4/4 waiting for the jobs"
failed=""
while read -r stage id; do
    for _ in $(seq 600); do # at most 2 minutes a job
        state=$(scontrol show job "$id" 2>/dev/null | grep -oE 'JobState=[A-Z_]+' | sort -u | tr '\n' ' ')
        case "$state" in *PENDING* | *RUNNING* | *CONFIGURING* | *COMPLETING* | "") sleep 0.2 ;; *) break ;; esac
    done
    state=${state//JobState=/}
    state=${state% }
    printf '  [%3d s] %-15s job %-6s %s\n' $(($(date +%s) - start)) "$stage" "$id" "$state"
    if [ "$state" != COMPLETED ]; then failed="$failed $stage"; fi
done <"$OUT/pipeline/jobs.txt"
if [ -n "$failed" ]; then
    echo "demo-slurm: jobs did not complete:$failed; their logs:" >&2
    for f in "$OUT"/pipeline/logs/*.log; do echo "---- $f" >&2; tail -n 8 "$f" >&2; done
    exit 1
fi

echo
cat "$OUT/pipeline/report.md"
echo
echo "demo-slurm finished in $(($(date +%s) - start))s. Outputs:"
echo "  dataset           $OUT/dataset"
echo "  runs (step logs)  $OUT/run-dp2/steps.jsonl, $OUT/run-tp2/steps.jsonl"
echo "  checkpoints       $OUT/run-dp2/checkpoints, $OUT/run-tp2/checkpoints (resharded, then continued)"
echo "  validation        $OUT/pipeline/val.json"
echo "  report            $OUT/pipeline/report.md"
echo "  plots             $(cd "$OUT/pipeline/plots" && printf '%s ' "$PWD"/*)"
echo "  job logs          $OUT/pipeline/logs/"
