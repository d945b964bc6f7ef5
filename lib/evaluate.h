/* Validation loss for flow matching at a fixed set of sigmas with fixed noise per sample, so
 * numbers compare across checkpoints and parallel layouts: for each sigma, the mean over
 * samples of the unweighted mean squared error of the predicted velocity. */
#ifndef WAN_EVALUATE_H
#define WAN_EVALUATE_H

#include "dataset.h"
#include "model.h"

#define WAN_VAL_MAX_SIGMAS 16

typedef struct {
    int nsig;
    double sigmas[WAN_VAL_MAX_SIGMAS];
    double loss[WAN_VAL_MAX_SIGMAS];
    double mean;
    int samples;
} wan_val_result;

typedef struct {
    wan_dataset *ds;        /* or NULL: synthetic samples */
    int synth_shape[4];     /* C, F, H, W when synthetic */
    int max_samples;        /* 0 = all (synthetic: required) */
    uint64_t seed;          /* noise and synthetic samples */
    int nsig;
    double sigmas[WAN_VAL_MAX_SIGMAS];
} wan_val_opts;

/* The default sigmas: 0.1, 0.3, 0.5, 0.7, 0.9. */
void wan_val_default_sigmas(wan_val_opts *o);
/* Collective over the world: samples are spread over dp, every rank returns the same result. */
int wan_validate(wan_model *m, const wan_val_opts *o, wan_val_result *r);

#endif
