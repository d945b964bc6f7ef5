/* Flow matching as in NeMo DFM: per sample a timestep u, sigma = shift / (shift + 1/u - 1),
 * x_t = (1 - sigma) x0 + sigma noise, target = noise - x0, loss weight 1 + shift * sigma.
 * Every draw comes from the counter-based generator keyed by (seed, step, global sample index)
 * so it is the same for every parallel layout and thread count. */
#ifndef WAN_FLOW_H
#define WAN_FLOW_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    double shift;
    bool logit_normal;   /* u ~ sigmoid(N(mean, std)), else U(0, 1) */
    double mean, std;
    double uniform_prob; /* per step: use U(0, 1) instead of the logit-normal */
} wan_flow_preset;

/* "pretrain": logit-normal (0, 1.5), U(0,1) with probability 0.2 per step, shift 2.5;
 * "finetune": U(0, 1), shift 3.0. Returns -1 for an unknown name. */
int wan_flow_preset_get(const char *objective, wan_flow_preset *p);
/* sigma of the sample at position `sample` of the global batch of optimizer step `step`. */
double wan_flow_sigma(const wan_flow_preset *p, uint64_t seed, uint32_t step, uint32_t sample);
static inline double wan_flow_weight(const wan_flow_preset *p, double sigma) { return 1.0 + p->shift * sigma; }
/* Noise for latent elements [0, n) of that sample, in the latent's [C, F, H, W] order. */
void wan_flow_noise(uint64_t seed, uint32_t step, uint32_t sample, float *out, uint64_t n);

#endif
