/* Saving and loading the whole training state (weights, fp32 masters, AdamW moments, step,
 * data-reader position) as a checkpoint, from and into any parallel layout. */
#ifndef WAN_TRAIN_STATE_H
#define WAN_TRAIN_STATE_H

#include "ckpt.h"
#include "config.h"
#include "dataset.h"
#include "model.h"
#include "optim.h"

/* Collective over the world: every rank writes its pieces, rank 0 commits and applies the
 * retention policy (keep the last train.keep_last plus every train.keep_every-th step). */
int wan_state_save(wan_model *m, wan_optim *o, const wan_config *cfg, int step, wan_loader_state data,
                   const char *ckpt_root);
/* Load weights (and the optimizer state when o != NULL and the checkpoint has it) into this
 * rank's pieces. A checkpoint of a different model is refused naming the fields. */
int wan_state_load(wan_model *m, wan_optim *o, const char *path, int *step, wan_loader_state *data);
/* Retention: remove step directories beyond keep_last that are not multiples of keep_every. */
int wan_ckpt_retain(const char *root, int keep_last, int keep_every);

#endif
