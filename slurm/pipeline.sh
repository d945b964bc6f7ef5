#!/usr/bin/env bash
# slurm/pipeline.sh CONFIG [options]: the whole job as one command on a Slurm cluster.
#
# Checks everything first and submits nothing when something is wrong; then submits, chained
# with --dependency=afterok (a failed job cancels the rest: --kill-on-invalid-dep=yes):
#   preprocess  a job array converting raw inputs (--inputs) into data.path, then a merge job
#   train       slurm/train.sbatch on slurm.nodes x slurm.gpus_per_node ranks (requeued from its
#               checkpoint on the time-limit warning or preemption)
#   reshard     (--reshard LAYOUT) the final checkpoint to another layout; with --continue-steps
#               a second train job continues from it at that layout
#   report      validation loss (wan-eval val) of the final checkpoint and the throughput table
# and prints the job ids and where outputs and logs go. Run `pipeline.sh --help` for options.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export WAN_HOME=$ROOT
SLURM_DIR=$ROOT/slurm
BIN=${WAN_BIN:-$ROOT/bin}

usage() {
    cat <<'EOF'
Usage: slurm/pipeline.sh CONFIG [options]

Submits preprocess -> train -> [reshard -> train] -> report + validation as Slurm jobs chained
with --dependency=afterok, after checking that the configuration is valid for the job's
ranks (slurm.nodes x slurm.gpus_per_node), that the data exists and that the cluster accepts
every request (sbatch --test-only). Nothing is submitted when a check fails (exit 2).

Options:
  -s, --set K=V          override a configuration key (repeatable), as for wan-train
      --inputs PATH      raw inputs (a manifest.jsonl or a directory, see wan-preprocess) to
                         convert into data.path first (a job array, then a merge job); without
                         it data.path must already hold a dataset ("" = synthetic data)
      --parts N          array tasks of the preprocess job (default $WAN_PREPROCESS_PARTS: 4)
      --preprocess-arg A extra wan-preprocess option (repeatable), e.g. --skip-bad
      --reshard LAYOUT   reshard the final checkpoint to LAYOUT (tp=N,cp=N,dp=N,pp=N[,sp=1])
                         into <out>/reshard-<layout>/
      --continue-steps N then train N more steps at LAYOUT from the resharded checkpoint
                         (same nodes and GPUs)
      --continue-dir DIR the continued run's train.run_dir (default <train.run_dir>-<layout>)
      --val-data DIR     held-out dataset for wan-eval val (default: eval.path, else synthetic)
      --no-val           no validation in the report job
      --warmup N         steps wan-report skips after each (re)start (default: wan-report's)
  -o, --out DIR          pipeline directory: resolved configs, logs/, report.md, plots/,
                         val.json, jobs.txt (default <train.run_dir>/pipeline)
  -n, --dry-run          check and print the sbatch commands; submit nothing
  -h, --help             this help

Cluster settings come from the config's slurm group (nodes, gpus_per_node, partition,
account, time), overridden by WAN_NODES, WAN_GPUS_PER_NODE, WAN_PARTITION, WAN_ACCOUNT,
WAN_TIME in the environment, overridden by --set slurm.KEY=VALUE; everything else a cluster
needs (NCCL, modules, GPU binding, extra sbatch options) is in slurm/env.sh.
Exit codes: 0 submitted, 1 a submission failed (those already made are cancelled),
2 refused: invalid config, missing data, a layout that does not fit, a request Slurm refuses.
EOF
}

die() { echo "pipeline: $*" >&2; exit 2; }
[ "${1:-}" = -h ] || [ "${1:-}" = --help ] && { usage; exit 0; }
[ $# -ge 1 ] || { usage >&2; exit 2; }
CONFIG=$1
shift
USER_SETS=() PRE_ARGS=()
INPUTS="" PARTS="" RESHARD="" CONT_STEPS="" CONT_DIR="" VAL_DATA="" NO_VAL=0 WARMUP="" OUT="" DRY=0
need() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
    case "$1" in
    -s | --set) need "$@"; USER_SETS+=(--set "$2"); shift 2 ;;
    --set=*) USER_SETS+=(--set "${1#--set=}"); shift ;;
    --inputs) need "$@"; INPUTS=$2; shift 2 ;;
    --parts) need "$@"; PARTS=$2; shift 2 ;;
    --preprocess-arg) need "$@"; PRE_ARGS+=("$2"); shift 2 ;;
    --reshard) need "$@"; RESHARD=$2; shift 2 ;;
    --continue-steps) need "$@"; CONT_STEPS=$2; shift 2 ;;
    --continue-dir) need "$@"; CONT_DIR=$2; shift 2 ;;
    --val-data) need "$@"; VAL_DATA=$2; shift 2 ;;
    --no-val) NO_VAL=1; shift ;;
    --warmup) need "$@"; WARMUP=$2; shift 2 ;;
    -o | --out) need "$@"; OUT=$2; shift 2 ;;
    -n | --dry-run) DRY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
done

# shellcheck source=/dev/null # env.sh: checked on its own
. "${WAN_ENV_FILE:-$SLURM_DIR/env.sh}"
[ -x "$BIN/wan-train" ] || die "no $BIN/wan-train: build the toolkit first (make)"
if [ "$DRY" = 0 ]; then
    command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a Slurm submit host (or --dry-run)"
fi
[ -f "$CONFIG" ] || die "$CONFIG: no such configuration file"
is_count() { case "$1" in '' | *[!0-9]* | 0*) return 1 ;; esac; }
[ -z "$PARTS" ] || is_count "$PARTS" || die "--parts $PARTS: not a positive integer"
[ -z "$CONT_STEPS" ] || is_count "$CONT_STEPS" || die "--continue-steps $CONT_STEPS: not a positive integer"
[ -z "$WARMUP" ] || [ "$WARMUP" = 0 ] || is_count "$WARMUP" || die "--warmup $WARMUP: not a number of steps"
[ -z "$CONT_STEPS" ] || [ -n "$RESHARD" ] || die "--continue-steps needs --reshard LAYOUT (the layout to continue at)"
[ -z "$CONT_DIR" ] || [ -n "$CONT_STEPS" ] || die "--continue-dir needs --continue-steps N"
is_count "$WAN_SIGNAL_LEAD" || die "WAN_SIGNAL_LEAD=$WAN_SIGNAL_LEAD: not a number of seconds"
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }

# Environment overrides of the slurm group, then the command line's --set.
SETS=()
[ -n "$WAN_NODES" ] && SETS+=(--set "slurm.nodes=$WAN_NODES")
[ -n "$WAN_GPUS_PER_NODE" ] && SETS+=(--set "slurm.gpus_per_node=$WAN_GPUS_PER_NODE")
[ -n "$WAN_PARTITION" ] && SETS+=(--set "slurm.partition=\"$WAN_PARTITION\"")
[ -n "$WAN_ACCOUNT" ] && SETS+=(--set "slurm.account=\"$WAN_ACCOUNT\"")
[ -n "$WAN_TIME" ] && SETS+=(--set "slurm.time=\"$WAN_TIME\"")
SETS+=("${USER_SETS[@]+"${USER_SETS[@]}"}")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/wan-pipeline.XXXXXX") || exit 1
trap 'rm -rf "$TMP"' EXIT

# The resolved configuration, flattened to group.key=value lines.
flatten() {
    awk '/^ *[A-Za-z_][A-Za-z0-9_]* = \{/ { sub(/^ */, ""); stack[++n] = $1; next }
        /^ *\};/ { n--; next }
        /^ *[A-Za-z_][A-Za-z0-9_]* = / {
            line = $0; sub(/^ */, "", line); key = line; sub(/ = .*/, "", key)
            val = line; sub(/^[^=]*= /, "", val); sub(/;$/, "", val); gsub(/^"|"$/, "", val)
            p = ""; for (i = 1; i <= n; i++) p = p stack[i] "."
            print p key "=" val
        }' "$1"
}
declare -A C
load() { # config-file sets... -> C[group.key], the printed config in $TMP/resolved.cfg
    local f=$1
    shift
    if ! "$BIN/wan-train" --config "$f" "$@" --print-config >"$TMP/resolved.cfg" 2>"$TMP/err"; then
        cat "$TMP/err" >&2
        die "refused: $CONFIG is not a valid configuration (nothing submitted)"
    fi
    C=()
    local line
    while IFS= read -r line; do C[${line%%=*}]=${line#*=}; done < <(flatten "$TMP/resolved.cfg")
}
check() { # what world config sets...: wan-train --check for that many ranks
    local what=$1 world=$2 f=$3
    shift 3
    if ! "$BIN/wan-train" --config "$f" "$@" --check --world "$world" >"$TMP/check.log" 2>&1; then
        sed 's/^/    /' "$TMP/check.log" >&2
        die "refused: $what is not valid for $world ranks (nothing submitted)"
    fi
}

load "$CONFIG" "${SETS[@]+"${SETS[@]}"}"
NODES=${C[slurm.nodes]} GPN=${C[slurm.gpus_per_node]}
WORLD=$((NODES * GPN))
check "the configuration ($CONFIG)" "$WORLD" "$CONFIG" "${SETS[@]+"${SETS[@]}"}"
TP=${C[parallel.tp]}
if [ "$TP" -gt "$GPN" ]; then
    echo "pipeline: warning: parallel.tp = $TP spans nodes (slurm.gpus_per_node = $GPN): tensor-parallel traffic crosses the network" >&2
fi
DEVICE=${C[train.device]}
RUN_DIR=$(abs "${C[train.run_dir]}")
RUN_NAME=$(basename "$RUN_DIR")
CKPT_ROOT=${C[train.ckpt_dir]}
if [ -n "$CKPT_ROOT" ]; then CKPT_ROOT=$(abs "$CKPT_ROOT"); else CKPT_ROOT=$RUN_DIR/checkpoints; fi
ABS_SETS=(--set "train.run_dir=\"$RUN_DIR\"")
[ -n "${C[train.ckpt_dir]}" ] && ABS_SETS+=(--set "train.ckpt_dir=\"$CKPT_ROOT\"")

# Data: raw inputs to preprocess into data.path, or a dataset already there, or synthetic.
DATA=${C[data.path]}
[ -n "$DATA" ] && DATA=$(abs "$DATA") && ABS_SETS+=(--set "data.path=\"$DATA\"")
if [ -n "$INPUTS" ]; then
    [ -e "$INPUTS" ] || die "refused: --inputs $INPUTS: no such file or directory (nothing submitted)"
    INPUTS=$(abs "$INPUTS")
    [ -n "$DATA" ] || die "refused: --inputs needs data.path, the directory the dataset is written to (nothing submitted)"
    [ -d "$(dirname "$DATA")" ] || die "refused: data.path $DATA: its parent directory does not exist (nothing submitted)"
    PARTS=${PARTS:-$WAN_PREPROCESS_PARTS}
elif [ -n "$DATA" ]; then
    [ -f "$DATA/index.jsonl" ] ||
        die "refused: data.path $DATA holds no dataset (no index.jsonl): preprocess it (--inputs RAW) or fix the path (nothing submitted)"
fi
if [ "$NO_VAL" = 0 ]; then
    [ -n "$VAL_DATA" ] || VAL_DATA=${C[eval.path]}
    if [ -n "$VAL_DATA" ]; then
        VAL_DATA=$(abs "$VAL_DATA")
        if [ "$VAL_DATA" != "$DATA" ] || [ -z "$INPUTS" ]; then
            [ -f "$VAL_DATA/index.jsonl" ] || die "refused: validation data $VAL_DATA holds no dataset (no index.jsonl) (nothing submitted)"
        fi
    fi
fi
[ -n "${C[eval.path]}" ] && ABS_SETS+=(--set "eval.path=\"$(abs "${C[eval.path]}")\"")

# The target layout of --reshard (and of the continued run).
CONT_SETS=() RESHARD_NAME="" RUN2="" CKPT2=""
if [ -n "$RESHARD" ]; then
    declare -A L=([tp]=1 [cp]=1 [dp]=0 [pp]=1 [sp]=0)
    IFS=, read -r -a parts <<<"$RESHARD"
    for kv in "${parts[@]}"; do
        k=${kv%%=*} v=${kv#*=}
        case "$k" in tp | cp | dp | pp | sp) ;; *) die "refused: --reshard $RESHARD: unknown size '$k' (tp, cp, dp, pp, sp)" ;; esac
        if [ "$kv" = "$k" ] || ! { is_count "$v" || { [ "$k" = sp ] && [ "$v" = 0 ]; }; }; then
            die "refused: --reshard $RESHARD: '$kv' is not NAME=N"
        fi
        L[$k]=$v
    done
    model_ranks=$((L[tp] * L[cp] * L[pp]))
    if [ -n "$CONT_STEPS" ]; then
        # the continued run uses the same nodes and GPUs: its dp is what is left of them
        if [ "${L[dp]}" = 0 ]; then
            [ $((WORLD % model_ranks)) = 0 ] ||
                die "refused: --reshard $RESHARD: tp * cp * pp = $model_ranks does not divide the $WORLD ranks of $NODES node(s) x $GPN GPU(s) (nothing submitted)"
            L[dp]=$((WORLD / model_ranks))
        fi
        [ $((model_ranks * L[dp])) = "$WORLD" ] ||
            die "refused: --reshard $RESHARD needs $((model_ranks * L[dp])) ranks; the continued run has $NODES node(s) x $GPN GPU(s) = $WORLD (nothing submitted)"
    fi
    [ "${L[dp]}" = 0 ] && L[dp]=1
    sp=false
    [ "${L[sp]}" = 1 ] && sp=true
    LSETS=(--set "parallel.tp=${L[tp]}" --set "parallel.cp=${L[cp]}" --set "parallel.pp=${L[pp]}" --set "parallel.sp=$sp")
    check "the layout --reshard $RESHARD" $((model_ranks * L[dp])) "$CONFIG" "${SETS[@]+"${SETS[@]}"}" "${LSETS[@]}"
    RESHARD="tp=${L[tp]},cp=${L[cp]},dp=${L[dp]},pp=${L[pp]}"
    [ "$sp" = true ] && RESHARD="$RESHARD,sp=1"
    RESHARD_NAME="tp${L[tp]}-cp${L[cp]}-dp${L[dp]}-pp${L[pp]}$([ "$sp" = true ] && echo -sp)"
    if [ -n "$CONT_STEPS" ]; then
        RUN2=$RUN_DIR-$RESHARD_NAME
        [ -n "$CONT_DIR" ] && RUN2=$(abs "$CONT_DIR")
        [ "$RUN2" != "$RUN_DIR" ] || die "refused: --continue-dir is the first run's directory (nothing submitted)"
        CKPT2=$RUN2/checkpoints
        CONT_SETS=("${LSETS[@]}" --set "train.run_dir=\"$RUN2\"" --set "train.ckpt_dir=\"\""
            --set "train.steps=$((${C[train.steps]} + CONT_STEPS))")
    fi
fi

# The pipeline directory and the resolved configurations the jobs run (later edits of CONFIG
# do not change a queued pipeline).
OUT=$(abs "${OUT:-$RUN_DIR/pipeline}")
LOGS=$OUT/logs
"$BIN/wan-train" --config "$CONFIG" "${SETS[@]+"${SETS[@]}"}" "${ABS_SETS[@]}" --print-config >"$TMP/train.cfg" 2>"$TMP/err" ||
    { cat "$TMP/err" >&2; die "refused: resolving the configuration failed"; }
check "the resolved configuration" "$WORLD" "$TMP/train.cfg"
if [ -n "$RUN2" ]; then
    "$BIN/wan-train" --config "$TMP/train.cfg" "${CONT_SETS[@]}" --print-config >"$TMP/continue.cfg" 2>"$TMP/err" ||
        { cat "$TMP/err" >&2; die "refused: resolving the continued run's configuration failed"; }
    check "the continued run's configuration" "$WORLD" "$TMP/continue.cfg"
fi

# Job shapes and the options every job gets.
COMMON=(--chdir="$PWD")
[ -n "${C[slurm.partition]}" ] && COMMON+=(--partition="${C[slurm.partition]}")
[ -n "${C[slurm.account]}" ] && COMMON+=(--account="${C[slurm.account]}")
[ -n "$WAN_QOS" ] && COMMON+=(--qos="$WAN_QOS")
# shellcheck disable=SC2206 # split on spaces by design (see env.sh)
COMMON+=($WAN_SBATCH_ARGS)
RANKS=(--nodes="$NODES" --ntasks-per-node="$GPN")
if [ "$DEVICE" = cuda ] && [ -n "$WAN_GPU_REQUEST" ]; then
    # shellcheck disable=SC2206 # split on spaces by design (see env.sh)
    RANKS+=(${WAN_GPU_REQUEST//\{G\}/$GPN})
fi
TRAIN_SHAPE=("${RANKS[@]}" --time="${C[slurm.time]}")
ONE=(--nodes=1 --ntasks=1)
VAL_SHAPE=("${ONE[@]}")
[ "$NO_VAL" = 0 ] && VAL_SHAPE=("${RANKS[@]}") # validation runs the model at the training layout
VAL_SHAPE+=(--time="$WAN_REPORT_TIME")

# Would the cluster accept each request? (partition, account, time limit, nodes, tasks, GPUs)
if [ "$DRY" = 0 ]; then
    probe() { # what sbatch-options...
        local what=$1
        shift
        if ! sbatch --test-only "${COMMON[@]}" "$@" --wrap=true >"$TMP/probe" 2>&1; then
            sed 's/^/    /' "$TMP/probe" >&2
            die "refused: the cluster does not accept the $what job's request ($*) (nothing submitted)"
        fi
    }
    probe train "${TRAIN_SHAPE[@]}"
    [ -n "$INPUTS" ] && probe preprocess --ntasks=1 --cpus-per-task="$WAN_PREPROCESS_CPUS" --time="$WAN_PREPROCESS_TIME"
    [ -n "$RESHARD" ] && probe reshard "${ONE[@]}" --cpus-per-task="$WAN_RESHARD_CPUS" --time="$WAN_RESHARD_TIME"
    probe report "${VAL_SHAPE[@]}"
fi

# ---------------------------------------------------------------- submission
mkdir -p "$LOGS" || die "cannot create $LOGS"
cp "$TMP/train.cfg" "$OUT/config.cfg" || exit 1
[ -n "$RUN2" ] && { cp "$TMP/continue.cfg" "$OUT/config-continue.cfg" || exit 1; }
SUBMITTED=()
JOBS=()
fake=1000
submit() { # stage sbatch-args... -> JOB
    local stage=$1 out
    shift
    if [ "$DRY" = 1 ]; then
        printf '%q ' sbatch "$@" >>"$OUT/dry-run.txt"
        echo >>"$OUT/dry-run.txt"
        fake=$((fake + 1))
        JOB=$fake
    elif ! out=$(sbatch --parsable "$@" 2>&1); then
        echo "pipeline: submitting the $stage job failed: $out" >&2
        if [ ${#SUBMITTED[@]} -gt 0 ]; then
            echo "pipeline: cancelling the jobs already submitted: ${SUBMITTED[*]}" >&2
            scancel "${SUBMITTED[@]}"
        fi
        exit 1
    else
        JOB=${out%%;*}
        SUBMITTED+=("$JOB")
    fi
    JOBS+=("$stage $JOB")
}
after() { [ -n "${1:-}" ] && echo "--dependency=afterok:$1 --kill-on-invalid-dep=yes"; }
[ "$DRY" = 1 ] && : >"$OUT/dry-run.txt"
prev=""
if [ -n "$INPUTS" ]; then
    submit preprocess "${COMMON[@]}" --job-name="wan-preprocess-$RUN_NAME" --array="0-$((PARTS - 1))" --ntasks=1 \
        --cpus-per-task="$WAN_PREPROCESS_CPUS" --time="$WAN_PREPROCESS_TIME" --output="$LOGS/preprocess-%A_%a.log" \
        "$SLURM_DIR/preprocess.sbatch" convert "$INPUTS" "$DATA" --channels "${C[model.in_dim]}" \
        --text-dim "${C[model.text_dim]}" --text-len "${C[model.text_len]}" "${PRE_ARGS[@]+"${PRE_ARGS[@]}"}"
    # shellcheck disable=SC2046
    submit merge "${COMMON[@]}" --job-name="wan-merge-$RUN_NAME" "${ONE[@]}" --time="$WAN_PREPROCESS_TIME" \
        --output="$LOGS/merge-%j.log" $(after "$JOB") "$SLURM_DIR/preprocess.sbatch" merge "$DATA"
    prev=$JOB
fi
# shellcheck disable=SC2046
submit train "${COMMON[@]}" --job-name="wan-train-$RUN_NAME" "${TRAIN_SHAPE[@]}" --signal="B:USR1@$WAN_SIGNAL_LEAD" \
    --output="$LOGS/train-%j.log" $(after "$prev") "$SLURM_DIR/train.sbatch" "$OUT/config.cfg"
prev=$JOB
FINAL_CKPT=$CKPT_ROOT FINAL_CFG=$OUT/config.cfg
RESHARD_DEST=""
if [ -n "$RESHARD" ]; then
    if [ -n "$RUN2" ]; then RESHARD_DEST=$CKPT2; else RESHARD_DEST=$OUT/reshard-$RESHARD_NAME; fi
    link=()
    [ -n "$RUN2" ] && link=(--link-latest)
    # shellcheck disable=SC2046
    submit reshard "${COMMON[@]}" --job-name="wan-reshard-$RUN_NAME" "${ONE[@]}" --cpus-per-task="$WAN_RESHARD_CPUS" \
        --time="$WAN_RESHARD_TIME" --output="$LOGS/reshard-%j.log" $(after "$prev") \
        "$SLURM_DIR/reshard.sbatch" "$CKPT_ROOT" "$RESHARD" "$RESHARD_DEST" "${link[@]+"${link[@]}"}"
    prev=$JOB
    if [ -n "$RUN2" ]; then
        # shellcheck disable=SC2046
        submit train-continue "${COMMON[@]}" --job-name="wan-train-$(basename "$RUN2")" "${TRAIN_SHAPE[@]}" \
            --signal="B:USR1@$WAN_SIGNAL_LEAD" --output="$LOGS/train-continue-%j.log" $(after "$prev") \
            "$SLURM_DIR/train.sbatch" "$OUT/config-continue.cfg"
        prev=$JOB
        FINAL_CKPT=$CKPT2 FINAL_CFG=$OUT/config-continue.cfg
    fi
fi
REPORT_ARGS=(--out "$OUT")
[ -n "$WARMUP" ] && REPORT_ARGS+=(--warmup "$WARMUP")
if [ "$NO_VAL" = 0 ]; then
    REPORT_ARGS+=(--val "$FINAL_CKPT" --val-config "$FINAL_CFG")
    [ -n "$VAL_DATA" ] && REPORT_ARGS+=(--val-data "$VAL_DATA")
fi
RUNS=("$RUN_DIR")
[ -n "$RUN2" ] && RUNS+=("$RUN2")
# shellcheck disable=SC2046
submit report "${COMMON[@]}" --job-name="wan-report-$RUN_NAME" "${VAL_SHAPE[@]}" --output="$LOGS/report-%j.log" \
    $(after "$prev") "$SLURM_DIR/report.sbatch" "${REPORT_ARGS[@]}" "${RUNS[@]}"

# ---------------------------------------------------------------- what went where
{
    for j in "${JOBS[@]}"; do echo "$j"; done
} >"$OUT/jobs.txt"
ids=$(for j in "${JOBS[@]}"; do echo "${j#* }"; done | paste -sd, -)
if [ "$DRY" = 1 ]; then
    echo "pipeline: dry run, nothing submitted; the sbatch commands are in $OUT/dry-run.txt:"
    cat "$OUT/dry-run.txt"
    exit 0
fi
echo "pipeline: submitted ${#JOBS[@]} jobs for $RUN_NAME ($WORLD ranks: $NODES node(s) x $GPN, device $DEVICE)"
for j in "${JOBS[@]}"; do
    stage=${j%% *} id=${j#* }
    case "$stage" in
    preprocess) log="$LOGS/preprocess-${id}_<task>.log (array 0-$((PARTS - 1)))" ;;
    *) log="$LOGS/$stage-$id.log" ;;
    esac
    printf '  %-15s job %-8s log %s\n' "$stage" "$id" "$log"
done
echo "outputs:"
[ -n "$DATA" ] && printf '  %-15s %s\n' dataset "$DATA$([ -n "$INPUTS" ] && echo " (from $INPUTS)")"
[ -z "$DATA" ] && printf '  %-15s %s\n' dataset "synthetic (data.path is empty)"
printf '  %-15s %s\n' "train run" "$RUN_DIR (steps.jsonl, config.cfg), checkpoints $CKPT_ROOT"
[ -n "$RESHARD_DEST" ] && printf '  %-15s %s\n' resharded "$RESHARD_DEST/step_N (layout $RESHARD)"
[ -n "$RUN2" ] && printf '  %-15s %s\n' "continued run" "$RUN2 ($CONT_STEPS more steps at $RESHARD)"
[ "$NO_VAL" = 0 ] && printf '  %-15s %s\n' validation "$OUT/val.json"
printf '  %-15s %s\n' report "$OUT/report.md, plots in $OUT/plots" configs "$OUT/config.cfg$([ -n "$RUN2" ] && echo ", $OUT/config-continue.cfg")" \
    "job ids" "$OUT/jobs.txt"
echo "watch: squeue -j $ids    cancel: scancel ${ids//,/ }"
