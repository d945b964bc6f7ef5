/* The training run: bootstrap, model, data, optimizer, checkpoints, step log. */
#ifndef WAN_TRAINER_H
#define WAN_TRAINER_H

#include <stdbool.h>

#include "cli.h"

/* Exit status after a checkpoint taken on SIGUSR1/SIGTERM: the job script requeues the run.
 * (75 = EX_TEMPFAIL: "try again later".) */
#define WAN_EXIT_REQUEUE 75

typedef struct {
    const wan_cli_config *config;
    int nproc;             /* local ranks to fork (without Slurm) */
    bool resume;           /* continue from <ckpt_dir>/latest */
    const char *init_from; /* or from this checkpoint */
} wan_train_opts;

/* Runs the whole job on every rank; returns 0, WAN_EXIT_REQUEUE or an error code. */
int wan_train_main(const wan_train_opts *opts);

#endif
