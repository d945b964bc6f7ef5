/* Counter-based randomness (Philox4x32-10): every random number is a pure function of
 * (seed, stream, step, sample, index), so noise and timesteps do not depend on the parallel
 * layout, the thread count or the order in which ranks ask for them. */
#ifndef WAN_RNG_H
#define WAN_RNG_H

#include <stdint.h>

/* Streams keep independent uses apart. */
enum {
    WAN_RNG_NOISE = 1,    /* flow-matching noise, per latent element */
    WAN_RNG_TIMESTEP = 2, /* u for the timestep, per sample */
    WAN_RNG_INIT = 3,     /* parameter initialisation, per tensor element */
    WAN_RNG_DATA = 4,     /* dataset shuffles and replacements */
    WAN_RNG_SYNTH = 5,    /* synthetic samples */
    WAN_RNG_EVAL = 6,     /* validation noise */
};

/* Four 32-bit outputs for the 128-bit counter (a, b, c, d) under key (k0, k1). */
void wan_philox(uint32_t out[4], uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t k0, uint32_t k1);

/* Uniform in (0, 1) (never 0 or 1) and standard normal for element `index` of the sequence
 * identified by (seed, stream, step, sample). */
double wan_rand_uniform(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint64_t index);
float wan_rand_normal(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint64_t index);
/* n normals for indices [index0, index0 + n): faster than calling wan_rand_normal n times. */
void wan_rand_normal_fill(float *out, uint64_t n, uint64_t seed, uint32_t stream, uint32_t step,
                          uint32_t sample, uint64_t index0);

#endif
