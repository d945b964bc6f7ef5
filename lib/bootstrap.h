/* Who am I and how do ranks meet: Slurm PMI2 under srun, or N local processes forked by
 * `--nproc N`, or a single process. A small key-value exchange carries the transport's
 * rendezvous blob (the shared-memory segment name on CPU, the NCCL unique id on GPUs). */
#ifndef WAN_BOOTSTRAP_H
#define WAN_BOOTSTRAP_H

#include <stdbool.h>
#include <stddef.h>

#include "comm.h"

typedef enum { WAN_BOOT_SINGLE, WAN_BOOT_LOCAL, WAN_BOOT_PMI2 } wan_boot_kind;

typedef struct wan_bootstrap {
    wan_boot_kind kind;
    int rank, size;             /* world */
    int local_rank, local_size; /* on this node (SLURM_LOCALID under srun) */
    char job_id[64];            /* SLURM_JOB_ID.SLURM_STEPID, or "local-<pid>" */
    void *impl;
} wan_bootstrap;

/* Decide how this process was started and initialise:
 * - under srun (PMI_FD set): PMI2; `srun --mpi=none` with several tasks (SLURM_NTASKS > 1 but
 *   PMI size 1) is an error that says to use --mpi=pmi2;
 * - nproc > 1 and not under srun: fork nproc ranks of this program. Only the children return
 *   (with their rank); the parent supervises them and never returns: it forwards SIGTERM,
 *   SIGINT, SIGUSR1, SIGUSR2 and SIGHUP to the ranks; when one fails (a non-zero status other
 *   than 75 "requeue", or a signal) it names it, stops the others (SIGTERM, then SIGKILL after
 *   WAN_KILL_GRACE_S seconds, default 10) and exits with that status (128 + signal for a
 *   signal); when all end well it exits with their common status (0, or 75 when all ask for a
 *   requeue; 1 when they disagree). The ranks' key-value store is shared memory;
 * - otherwise a single rank. */
int wan_bootstrap_init(wan_bootstrap *b, int nproc);
/* Rank 0 publishes value under key; after the fence every rank can get it. Values are
 * binary (hex-encoded on the wire); at most 1024 bytes; get must ask for the exact length put.
 * Keys: 1..39 printable characters without '=' or space; each key is put by one rank. */
int wan_bootstrap_put(wan_bootstrap *b, const char *key, const void *value, size_t len);
int wan_bootstrap_fence(wan_bootstrap *b);
int wan_bootstrap_get(wan_bootstrap *b, const char *key, void *value, size_t len);
void wan_bootstrap_finalize(wan_bootstrap *b);

/* The CPU transport over POSIX shared memory for the ranks of one node (all ranks must be on
 * one node). timeout_s <= 0: 300 s. WAN_SHM_CHUNK_KB sets the scratch buffer size per rank
 * (default 1024 KiB, two buffers each). */
int wan_comm_shm_create(wan_bootstrap *b, int timeout_s, wan_comm **out);
/* The NCCL transport (CUDA builds; fails with a clear message otherwise). */
int wan_comm_nccl_create(wan_bootstrap *b, int device, int timeout_s, void *cuda_stream, wan_comm **out);

#endif
