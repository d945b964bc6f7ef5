/* Synthetic samples with the structure of real ones (see wan_synth_sample in dataset.h), so
 * that compression ratios, loader behaviour and losses measured on them mean something.
 *
 * A latent channel is mean_c + scale_c * (smooth + noise): the smooth part is a sum of a few
 * low-frequency separable waves over (frame, row, column), like the slowly varying content a
 * VAE encodes; the noise is the fine texture. mean_c and scale_c are fixed per channel (as a
 * VAE's normalisation constants are), in the ranges real video VAEs show. Text rows are
 * normal with a fixed per-dimension scale, for a sample-dependent number of real tokens; the
 * rows after those are zero, as an encoder's padded output is. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "error.h"
#include "rng.h"

#define SYNTH_WAVES 4
/* Counter 'sample' fields that keep the uses apart (latent noise uses the channel number). */
#define SYNTH_TEXT 0x10000u
#define SYNTH_WAVE 0x20000u
#define SYNTH_LEN 0x30000u
/* A fixed key for the per-channel and per-dimension constants: the same for every seed. */
#define SYNTH_CONST_SEED 0x5eed5eedull

static double u01(uint64_t seed, uint32_t step, uint32_t sample, uint64_t i) {
    return wan_rand_uniform(seed, WAN_RNG_SYNTH, step, sample, i);
}

/* One separable wave along an axis of n points: cos(2 pi (cycles * x / n + phase)). */
static void wave(float *out, int n, double cycles, double phase) {
    for (int x = 0; x < n; x++) out[x] = (float)cos(6.283185307179586 * (cycles * x / (n > 1 ? n : 1) + phase));
}

void wan_synth_sample(uint64_t seed, int64_t index, int C, int F, int H, int W, int text_len_max, int text_dim,
                      float *latent, float *text, int *text_len) {
    uint32_t step = (uint32_t)index ^ (uint32_t)((uint64_t)index >> 32) * 0x9e3779b9u;
    size_t plane = (size_t)F * H * W;
    float *tf = malloc(sizeof(float) * (size_t)SYNTH_WAVES * (size_t)(F + H + W));
    WAN_ASSERT(tf != NULL);
    float *th = tf + SYNTH_WAVES * F, *tw = th + SYNTH_WAVES * H;
    for (int c = 0; c < C; c++) {
        double mean = -1.0 + 2.5 * u01(SYNTH_CONST_SEED, 0, (uint32_t)c, 0);
        double scale = 1.0 + 2.3 * u01(SYNTH_CONST_SEED, 0, (uint32_t)c, 1);
        float amp[SYNTH_WAVES];
        double power = 0;
        for (int k = 0; k < SYNTH_WAVES; k++) {
            uint64_t b = (uint64_t)k * 8;
            uint32_t s = SYNTH_WAVE + (uint32_t)c;
            amp[k] = (float)(0.3 + u01(seed, step, s, b));
            power += amp[k] * amp[k] / 8.0; /* a product of three random-phase cosines has variance 1/8 */
            /* Slow in time (at most one cycle over the clip), a little faster in space. */
            wave(tf + k * F, F, 1.0 * u01(seed, step, s, b + 1), u01(seed, step, s, b + 2));
            wave(th + k * H, H, 0.2 + 1.8 * u01(seed, step, s, b + 3), u01(seed, step, s, b + 4));
            wave(tw + k * W, W, 0.2 + 1.8 * u01(seed, step, s, b + 5), u01(seed, step, s, b + 6));
        }
        float norm = (float)(0.9 / sqrt(power)), noise_scale = 0.45f;
        float *x = latent + (size_t)c * plane;
        wan_rand_normal_fill(x, plane, seed, WAN_RNG_SYNTH, step, (uint32_t)c, 0);
        for (int f = 0; f < F; f++)
            for (int h = 0; h < H; h++) {
                float *row = x + ((size_t)f * H + h) * W;
                float fh[SYNTH_WAVES];
                for (int k = 0; k < SYNTH_WAVES; k++) fh[k] = amp[k] * norm * tf[k * F + f] * th[k * H + h];
                for (int w = 0; w < W; w++) {
                    float smooth = 0;
                    for (int k = 0; k < SYNTH_WAVES; k++) smooth += fh[k] * tw[k * W + w];
                    row[w] = (float)(mean + scale * (smooth + noise_scale * row[w]));
                }
            }
    }
    free(tf);

    /* Real tokens: between 1/16 and 1/2 of the maximum (captions rarely fill the context). */
    int lo = text_len_max / 16 > 1 ? text_len_max / 16 : 1, hi = text_len_max / 2 > lo ? text_len_max / 2 : lo;
    if (hi > text_len_max) hi = text_len_max;
    int len = lo + (int)(u01(seed, step, SYNTH_LEN, 0) * (hi - lo + 1));
    if (len > hi) len = hi;
    *text_len = len;
    wan_rand_normal_fill(text, (uint64_t)len * (uint64_t)text_dim, seed, WAN_RNG_SYNTH, step, SYNTH_TEXT, 0);
    float *dscale = malloc(sizeof(float) * (size_t)text_dim);
    WAN_ASSERT(dscale != NULL);
    for (int d = 0; d < text_dim; d++) dscale[d] = (float)(0.05 + 0.3 * u01(SYNTH_CONST_SEED, 1, 0, (uint64_t)d));
    for (int r = 0; r < len; r++)
        for (int d = 0; d < text_dim; d++) text[(size_t)r * text_dim + d] *= dscale[d];
    free(dscale);
    memset(text + (size_t)len * text_dim, 0, sizeof(float) * (size_t)(text_len_max - len) * (size_t)text_dim);
}
