#!/usr/bin/env bash
# All-reduce bandwidth of the CPU transport (fp32 sum over POSIX shared memory) against memcpy
# bandwidth on the same machine, for 2 ranks and for 4 (oversubscribed when the machine has
# fewer cores). Prints one table per rank count: size, time, algbw, busbw, memcpy, ratio.
#   bench/comm.sh [--seconds S] [--max-mib M]     (options go to build/bench/comm_bench)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
make --no-print-directory -s build/bench/comm_bench >&2
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
echo "scratch chunk: ${WAN_SHM_CHUNK_KB:-1024} KiB per rank per buffer (WAN_SHM_CHUNK_KB)"
for n in 2 4; do
    echo
    [ "$n" -gt "$(nproc)" ] && echo "($n ranks on $(nproc) cores: oversubscribed)"
    WAN_LOG_LEVEL=warn build/bench/comm_bench --nproc "$n" "$@"
done
