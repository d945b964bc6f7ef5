/* Device memory of a training layout, computed without starting it (wan-train --check). */
#ifndef WAN_MEMORY_PLAN_H
#define WAN_MEMORY_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct {
    int stage;              /* pipeline stage the figures are for */
    int blocks;             /* the stage's blocks */
    int recomputing;        /* how many of them rebuild their activations in the backward (the
                             * first ones): with train.memory_budget_gib, the fewest that fit */
    int64_t params;         /* elements of a rank's flat parameter buffer */
    size_t weights, grads, optimizer; /* the training state: weights (bf16 on GPUs), fp32 gradients,
                                       * fp32 masters and both AdamW moments of the ZeRO slice */
    size_t state;           /* their sum: one allocation */
    size_t per_microbatch;  /* activations one micro-batch keeps from its forward to its backward */
    int in_flight;          /* micro-batches whose activations the 1F1B schedule holds at once */
    size_t shared;          /* scratch shared by them (with recompute: the rebuilt block) */
    size_t inbox;           /* pipeline input from the stage before (0 on the first) */
    size_t activations;     /* in_flight x per_microbatch + shared + inbox */
    size_t total;           /* state + activations; not counted: cuBLASLt and cuDNN workspaces,
                             * the backend's scratch, NCCL's buffers, the CUDA context */
} wan_memory_plan_t;

/* The allocations wan-train makes on a rank of pipeline stage `stage` for cfg on `world` ranks,
 * on the CUDA backend (bf16 weights and activations) or the CPU one (fp32). Needs
 * train.latent_shape; fails with a message naming what does not fit. */
int wan_memory_plan(const wan_config *cfg, int world, bool cuda, int stage, wan_memory_plan_t *out);

#endif
