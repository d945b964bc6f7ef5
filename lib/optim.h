/* AdamW with a distributed optimizer (ZeRO-1): gradients are summed over dp x cp into the
 * rank whose slice of the flat buffer holds them (reductions to each slice's owner: what a
 * reduce-scatter does, in pieces that can start early), each rank keeps the fp32 master weights
 * and both moments of its slice only, updates them, and the new weights are all-gathered.
 * A block's gradients start their reduction as soon as the step's last backward has passed the
 * block (wan_optim_block_grads_done), under the backward of the blocks below; the rest at the
 * step. The weights travel back the same way: the gather is a broadcast from each slice's owner
 * per piece of a block, which the next forward waits for block by block
 * (wan_optim_params_needed), so it runs under the forward of the blocks before. Decay on
 * matrices only; global-norm clipping; warm-up then constant or cosine learning rate. */
#ifndef WAN_OPTIM_H
#define WAN_OPTIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "comm.h"
#include "config.h"
#include "model.h"

typedef struct {
    int64_t lo, hi; /* element range in the flat buffer (inside one tensor) */
    bool decay;
    bool in_norm; /* counted in the gradient norm on this rank (replicated tensors on tp rank 0 only) */
    int param;    /* index into the model's parameter set */
} wan_optim_segment;

/* Collectives started on pieces of the flat buffer, each within one member's ZeRO slice: piece
 * i starts at lo[i]; the first `done` were waited for. */
typedef struct {
    wan_comm_req *req;
    int64_t *lo;
    int n, done, cap;
} wan_optim_pieces;

typedef struct {
    wan_model *m;
    wan_optim_cfg cfg;
    wan_schedule_cfg sched;
    int total_steps;
    int64_t lo, hi;      /* this rank's ZeRO slice of the flat buffer */
    float *master, *mom1, *mom2; /* [hi - lo], backend memory */
    float *gshard;       /* reduced gradients of the slice: m->g + lo, where the reductions land */
    float *scratch;      /* small backend buffer for the norm exchange */
    wan_optim_segment *seg;
    int nseg;
    int step;            /* optimizer steps taken */
    /* Early reduction: the pipeline stage's blocks [l0, l1), each one's range of the flat
     * buffer (empty when its parameters are not one run), whether it was started this step,
     * and the reductions started, to be waited for at the step. */
    int l0, l1;
    int64_t *blk_lo, *blk_hi;
    bool *blk_started;
    wan_optim_pieces reduced;
    /* Weight gather in flight, its pieces in buffer order; wpieces false: one all-gather at the
     * step instead (the blocks are not one run each, or a parameter the forward reads before
     * the blocks lies after them). */
    bool wpieces;
    wan_optim_pieces gathered;
} wan_optim;

/* Bytes the optimizer takes from the model's state allocation (wan_model_create reserves them
 * when asked with_optimizer). */
size_t wan_optim_state_bytes(const wan_model *m);
/* Masters start from the model's current weights; the buffers come from the model's state
 * allocation, so m must have been created with_optimizer. */
int wan_optim_create(wan_optim *o, wan_model *m, const wan_train_cfg *t);
void wan_optim_destroy(wan_optim *o);
double wan_optim_lr(const wan_optim *o, int step); /* learning rate of step (1-based) */
/* The model's block_grads_done hook (ctx: the optimizer): block `layer`'s gradients are
 * complete; start their reduction (tensor-parallel partial sums, then over dp x cp). */
int wan_optim_block_grads_done(void *ctx, int layer);
/* The model's params_needed hook (ctx: the optimizer): the forward is about to read block
 * `layer`'s weights (WAN_PARAMS_BEFORE_BLOCKS: those before the blocks; WAN_PARAMS_ALL: all):
 * the compute waits for their pieces of the gather. */
int wan_optim_params_needed(void *ctx, int layer);
/* Reduce the gradients not reduced yet, clip, update, start gathering the weights (waited for
 * by the next forward, or wan_model_params_wait), zero gradients. Returns the global gradient
 * norm before clipping. */
int wan_optim_step(wan_optim *o, double *grad_norm, double *lr_out);
/* Re-read the masters from the model's weights (after loading weights without optimizer state). */
void wan_optim_reset_masters(wan_optim *o);

#endif
