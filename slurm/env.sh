# shellcheck shell=bash
# slurm/env.sh: the ONE place for what a cluster needs that the run's configuration does not say.
#
# Sourced by slurm/pipeline.sh (submission settings) and by every slurm/*.sbatch script at the
# start of the job (run-time environment: modules, NCCL, threads). Every setting here is a
# default: a variable already exported wins, so either edit this file for your site or export
# the variables before running pipeline.sh (sbatch passes the submitting environment on). To
# keep site settings out of the repository, put them in a file of your own and export
# WAN_SITE_ENV=/path/to/site.sh: it is sourced at the end of this file, before every job too.
#
# Precedence for the job shape: the config's slurm group < these WAN_* variables <
# pipeline.sh's --set slurm.KEY=VALUE.

# ---------------------------------------------------------------- submission (pipeline.sh)
# Override the config's slurm group (empty: use the config's value).
: "${WAN_PARTITION:=}"        # slurm.partition (empty everywhere: the cluster's default partition)
: "${WAN_ACCOUNT:=}"          # slurm.account
: "${WAN_TIME:=}"             # slurm.time, the time limit of each train job (e.g. 04:00:00)
: "${WAN_NODES:=}"            # slurm.nodes
: "${WAN_GPUS_PER_NODE:=}"    # slurm.gpus_per_node: tasks (ranks) per node, one GPU each
: "${WAN_QOS:=}"              # --qos for every job (empty: none)
# Extra sbatch options for every job, split on spaces, e.g. "--constraint=h100 --exclusive".
: "${WAN_SBATCH_ARGS:=}"
# How train jobs ask for GPUs when train.device = "cuda" (split on spaces; the literal {G}
# becomes slurm.gpus_per_node). Sites with GRES only: "--gres=gpu:{G}". Empty: ask for none.
[ -n "${WAN_GPU_REQUEST+set}" ] || WAN_GPU_REQUEST='--gpus-per-node={G}'
# Seconds before the time limit at which a train job gets SIGUSR1 to checkpoint and requeue.
# Leave time for one training step plus a checkpoint save (a 14B checkpoint: minutes).
: "${WAN_SIGNAL_LEAD:=300}"
# Time limits of the other jobs (preprocess tasks, merge, reshard, report + validation).
: "${WAN_PREPROCESS_TIME:=01:00:00}"   # per array task: choose --parts to fit
: "${WAN_RESHARD_TIME:=00:30:00}"
: "${WAN_REPORT_TIME:=00:30:00}"
# CPUs per preprocess array task and per reshard job (threads of wan-preprocess/wan-reshard).
: "${WAN_PREPROCESS_CPUS:=1}"
: "${WAN_RESHARD_CPUS:=1}"
# Array tasks of the preprocess job when pipeline.sh gets --inputs without --parts.
: "${WAN_PREPROCESS_PARTS:=4}"
# Requeues of one train job after a checkpoint on SIGUSR1/SIGTERM (0: no limit).
: "${WAN_MAX_REQUEUES:=0}"

# ---------------------------------------------------------------- job steps (sbatch scripts)
# GPU binding of train and validation ranks (one task per GPU):
#   local-rank  each task sees the node's GPUs and uses the one of its local rank
#               (SLURM_LOCALID), as CUDA_VISIBLE_DEVICES=$SLURM_LOCALID would
#   per-task    srun --gpus-per-task=1: Slurm binds one GPU to each task (it then sees one)
: "${WAN_GPU_BIND:=local-rank}"
# Extra srun options for the training and validation steps (split on spaces), e.g.
# "--cpu-bind=cores" or "--cpus-per-task=16".
: "${WAN_SRUN_ARGS:=}"

# NCCL (CUDA backend only). NCCL picks network interfaces and InfiniBand adapters by itself;
# set these only where your cluster needs them (ask its admins; never copy another site's):
#   export NCCL_SOCKET_IFNAME=...   # interface (or "^lo,docker" exclusion list) for bootstrap/TCP
#   export NCCL_IB_HCA=...          # which HCAs to use
#   export NCCL_NET_GDR_LEVEL=...   # GPUDirect RDMA policy
#   export NCCL_CROSS_NIC=...       # rails of multi-rail fabrics
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}   # INFO to see which transports and interfaces it chose
# The data-parallel gradient reductions (under the backward) and weight gather (under the next
# forward) run on a second NCCL stream, beside the tp/cp/pp transfers: two communicators' kernels at once, which NCCL supports when no
# implicit device synchronisation comes between them; CUDA's lazy module loading can cause one.
export CUDA_MODULE_LOADING=${CUDA_MODULE_LOADING:-EAGER}
# WAN_NCCL_ONE_STREAM=1 puts the data-parallel groups on the main NCCL stream (the gradient
# reduction and the weight gather then no longer overlap the backward and the forward's tp/cp
# transfers; a fallback should a cluster hang with two).
: "${WAN_NCCL_ONE_STREAM:=}"
# WAN_GEMM_GELU_EPILOGUE=0 runs the FFN's GELU as a kernel after its GEMM instead of in cuBLASLt's
# epilogue (bench/gpu_ops prints which is faster on a GPU: "GELU epilogues: forward ...").
: "${WAN_GEMM_GELU_EPILOGUE:=}"

# Modules or containers the jobs need, e.g.:
#   module load cuda/13.0 nccl
# CPU threads per rank come from the config (train.threads; 0 = the node's cores / local ranks).

# Site settings kept outside the repository.
if [ -n "${WAN_SITE_ENV:-}" ]; then
    # shellcheck source=/dev/null
    . "$WAN_SITE_ENV"
fi
