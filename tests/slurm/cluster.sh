#!/usr/bin/env bash
# A private single-node Slurm cluster for the tests: its own munged (own key and socket), its own
# slurm.conf, state and logs under one temporary directory; nothing is written to /etc, and the
# daemons are stopped by their PID.
#
# From a test script:
#     source tests/slurm/cluster.sh
#     slurm_start || exit 1     # exports SLURM_CONF (and WAN_SLURM_DIR); ~10 s
#     timeout 60 srun -n4 --mpi=pmi2 prog ...
#     slurm_stop                # also installed as an EXIT trap by slurm_start
# From a shell:
#     eval "$(tests/slurm/cluster.sh start)"   # prints the exports
#     tests/slurm/cluster.sh env                # the exports of the running cluster (or DIR)
#     tests/slurm/cluster.sh stop [DIR]         # default: $WAN_SLURM_DIR
#
# Leftovers of a crashed run (a directory whose owner process is gone) are stopped and removed
# at the next start. The node advertises WAN_SLURM_CPUS CPUs (default 8) whatever the machine
# has (SlurmdParameters=config_overrides), so 8-rank steps run on a 2-core machine.
# Works as root (CI) and as an ordinary user (the daemons then run as that user).

WAN_SLURM_ROOT=${WAN_SLURM_ROOT:-${TMPDIR:-/tmp}}
WAN_SLURM_CPUS=${WAN_SLURM_CPUS:-8}

_slurm_log() { echo "slurm-cluster: $*" >&2; }

_slurm_port_busy() {
    if command -v ss >/dev/null 2>&1; then
        ss -Htln "sport = :$1" 2>/dev/null | grep -q .
    else # no iproute2: try to connect
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# A TCP port nobody listens on, other than $1 (random start: concurrent clusters rarely collide).
_slurm_free_port() {
    local p tries
    p=$((20000 + RANDOM % 20000))
    for tries in $(seq 200); do
        if [ "$p" != "${1:-}" ] && ! _slurm_port_busy "$p"; then echo "$p"; return 0; fi
        p=$((p + 1))
    done
    return 1
}

# Is pid alive (a zombie waiting for a busy init to reap it counts as gone)?
_slurm_alive() {
    local st
    st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# Stop daemons by their pid files, only where that pid still runs a command naming our
# directory: SIGTERM to all, up to 5 s, then SIGKILL.
_slurm_kill_pidfiles() { # dir pidfile...
    local dir=$1 f pid pids="" i
    shift
    for f in "$@"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null)
        rm -f "$f"
        case "$pid" in '' | *[!0-9]*) continue ;; esac
        if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$dir"; then
            kill -TERM "$pid" 2>/dev/null && pids="$pids $pid"
        fi
    done
    for i in $(seq 50); do
        local left=""
        for pid in $pids; do _slurm_alive "$pid" && left="$left $pid"; done
        pids=$left
        [ -z "$pids" ] && return 0
        sleep 0.1
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null; done
}

# Job steps still running under our slurmd (their environment names our slurm.conf), but
# never this shell or its ancestors (they may have SLURM_CONF exported too).
_slurm_kill_steps() { # dir
    local dir=$1 p pid keep=" " a=$BASHPID
    while [ -n "$a" ] && [ "$a" != 0 ]; do
        keep="$keep$a "
        a=$(sed -n 's/^PPid:[[:space:]]*//p' "/proc/$a/status" 2>/dev/null)
    done
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        case "$keep" in *" $pid "*) continue ;; esac
        [ -r "$p/environ" ] || continue
        if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$dir/slurm.conf"; then
            kill -KILL "$pid" 2>/dev/null
        fi
    done
}

_slurm_teardown() { # dir
    local dir=$1
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    if [ -f "$dir/slurm.conf" ] && [ -f "$dir/slurmctld.pid" ]; then
        SLURM_CONF=$dir/slurm.conf timeout 5 scancel --quiet --user="$(id -un)" >/dev/null 2>&1
    fi
    _slurm_kill_pidfiles "$dir" "$dir/slurmd.pid" "$dir/slurmctld.pid"
    _slurm_kill_steps "$dir"
    _slurm_kill_pidfiles "$dir" "$dir/munge/munged.pid"
    [ "${WAN_SLURM_KEEP:-0}" = 1 ] && { _slurm_log "kept $dir"; return 0; }
    rm -rf "$dir"
}

# Remove clusters whose owner process died (a crashed or killed test run).
_slurm_reap_leftovers() {
    local d owner
    for d in "$WAN_SLURM_ROOT"/wan-slurm.*; do
        [ -d "$d" ] && [ -O "$d" ] || continue
        owner=$(cat "$d/owner" 2>/dev/null)
        if [ -z "$owner" ] || ! kill -0 "$owner" 2>/dev/null; then
            _slurm_log "removing leftover cluster $d (owner ${owner:-unknown} is gone)"
            _slurm_teardown "$d"
        fi
    done
}

_slurm_fail() { # dir message
    local dir=$1 f
    _slurm_log "FAILED: $2"
    for f in "$dir"/log/*.log; do
        [ -f "$f" ] || continue
        echo "---- $f (last 15 lines)" >&2
        tail -n 15 "$f" >&2
    done
    _slurm_teardown "$dir"
    unset SLURM_CONF WAN_SLURM_DIR
    return 1
}

# Start the cluster; exports SLURM_CONF and WAN_SLURM_DIR. owner: the process whose death makes
# this cluster a leftover (default: this shell).
slurm_start() {
    local owner=${1:-$$} t0=$SECONDS dir user i state pc pd b v
    for b in munged slurmctld slurmd srun sbatch scontrol; do
        command -v "$b" >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin
        command -v "$b" >/dev/null 2>&1 || { _slurm_log "$b not found: run 'make deps' (Debian: slurmctld slurmd slurm-client munge)"; return 1; }
    done
    _slurm_reap_leftovers
    # A run inside a real allocation must not talk to that cluster.
    for v in $(env | sed -n 's/^\(SLURM_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$v"; done
    unset PMI_FD PMI_RANK PMI_SIZE
    dir=$(mktemp -d "$WAN_SLURM_ROOT/wan-slurm.XXXXXX") || return 1
    chmod 755 "$dir"
    echo "$owner" >"$dir/owner"
    mkdir -p "$dir/munge" "$dir/log" "$dir/state" "$dir/spool"
    chmod 755 "$dir/munge" # munged refuses a socket directory writable by others
    user=$(id -un)
    pc=$(_slurm_free_port) && pd=$(_slurm_free_port "$pc") || { _slurm_fail "$dir" "no free TCP port"; return 1; }

    mungekey --create --keyfile="$dir/munge/munge.key" >/dev/null 2>&1 ||
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 600 "$dir/munge/munge.key"
    munged --force --socket="$dir/munge/munge.socket.2" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge/munged.seed" >"$dir/log/munged.out" 2>&1 ||
        { _slurm_fail "$dir" "munged did not start: $(cat "$dir/log/munged.out")"; return 1; }

    cat >"$dir/slurm.conf" <<EOF
# Private test cluster (tests/slurm/cluster.sh)
ClusterName=wantest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$pc
SlurmdPort=$pd
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in containers and CI
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SchedulerType=sched/backfill
# schedule at once: tests chain short jobs
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# impossible requests fail at once; a dependent of a failed job is cancelled, not pending
EnforcePartLimits=ALL
DependencyParameters=kill_invalid_depend
# one failed rank ends the step (the others would hang in PMI2_KVS_Fence)
KillOnBadExit=1
# sacct needs a database: use scontrol show job and this file
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# advertise more CPUs than the machine has
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MessageTimeout=20
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$WAN_SLURM_CPUS RealMemory=4000 State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=60 State=UP OverSubscribe=NO
EOF
    export SLURM_CONF=$dir/slurm.conf WAN_SLURM_DIR=$dir
    slurmctld -f "$SLURM_CONF" -i >"$dir/log/slurmctld.out" 2>&1 ||
        { _slurm_fail "$dir" "slurmctld did not start: $(cat "$dir/log/slurmctld.out")"; return 1; }
    slurmd -f "$SLURM_CONF" -N localhost >"$dir/log/slurmd.out" 2>&1 ||
        { _slurm_fail "$dir" "slurmd did not start: $(cat "$dir/log/slurmd.out")"; return 1; }
    for i in $(seq 300); do
        state=$(scontrol show node localhost 2>/dev/null | sed -n 's/.*State=\([A-Z+_]*\).*/\1/p' | head -n1)
        case "$state" in
        IDLE | IDLE+* ) [ "$state" = IDLE ] && break ;;
        *DRAIN* | DOWN*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 ;;
        esac
        sleep 0.1
    done
    [ "$state" = IDLE ] || { _slurm_fail "$dir" "node localhost is '${state:-unknown}', not IDLE, after 30 s"; return 1; }
    _slurm_log "up in $((SECONDS - t0)) s: SLURM_CONF=$SLURM_CONF (ports $pc/$pd, $WAN_SLURM_CPUS CPUs)"
    [ $# -eq 0 ] && _slurm_chain_exit_trap
    return 0
}

# Add slurm_stop to the EXIT trap, keeping what was there (t_tmpdir's cleanup, say).
_slurm_chain_exit_trap() {
    local prev=""
    if [ -n "$(trap -p EXIT)" ]; then eval "set -- $(trap -p EXIT)"; prev=$3; fi
    trap -- "slurm_stop; $prev" EXIT
}

slurm_stop() {
    local dir=${1:-${WAN_SLURM_DIR:-}}
    [ -n "$dir" ] || return 0
    _slurm_teardown "$dir"
    if [ "$dir" = "${WAN_SLURM_DIR:-}" ]; then unset SLURM_CONF WAN_SLURM_DIR; fi
    return 0
}

slurm_env() {
    local dir=${1:-${WAN_SLURM_DIR:-}}
    [ -n "$dir" ] && [ -f "$dir/slurm.conf" ] || { _slurm_log "no running cluster (give its directory)"; return 1; }
    echo "export SLURM_CONF=$dir/slurm.conf WAN_SLURM_DIR=$dir"
}

# Wait until a job leaves the queue; prints its final JobState (from scontrol, no database).
slurm_job_state() { # jobid [timeout_s]
    local id=$1 limit=${2:-60} i st
    for i in $(seq $((limit * 5))); do
        st=$(scontrol show job "$id" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
        case "$st" in PENDING | RUNNING | CONFIGURING | COMPLETING | SUSPENDED | "") ;; *) echo "$st"; return 0 ;; esac
        sleep 0.2
    done
    echo "${st:-UNKNOWN}"
    return 1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    case "${1:-}" in
    start)
        # Owned by the calling shell: the cluster is a leftover once that shell is gone.
        slurm_start "${WAN_SLURM_OWNER:-$PPID}" >&2 || exit 1
        slurm_env ;;
    stop) slurm_stop "${2:-}" ;;
    env) slurm_env "${2:-}" ;;
    *) echo "usage: $0 start|stop [DIR]|env [DIR]" >&2; exit 2 ;;
    esac
fi
