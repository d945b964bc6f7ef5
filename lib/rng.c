#include "rng.h"

#include <math.h>

void wan_philox(uint32_t out[4], uint32_t a, uint32_t b, uint32_t c, uint32_t d, uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * a, p1 = (uint64_t)0xCD9E8D57u * c;
        uint32_t na = (uint32_t)(p1 >> 32) ^ b ^ k0, nc = (uint32_t)(p0 >> 32) ^ d ^ k1;
        a = na;
        b = (uint32_t)p1;
        c = nc;
        d = (uint32_t)p0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = a, out[1] = b, out[2] = c, out[3] = d;
}

/* Counter layout: (index_lo, index_hi ^ stream << 24, step, sample), key = seed. */
static void block(uint32_t out[4], uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint64_t blk) {
    wan_philox(out, (uint32_t)blk, (uint32_t)(blk >> 32) ^ (stream << 24), step, sample, (uint32_t)seed,
               (uint32_t)(seed >> 32));
}

/* 32 random bits -> (0, 1), never 0 or 1 */
static inline double u01(uint32_t x) { return ((double)x + 0.5) * (1.0 / 4294967296.0); }

double wan_rand_uniform(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint64_t index) {
    uint32_t o[4];
    block(o, seed, stream, step, sample, index / 4);
    return u01(o[index % 4]);
}

/* Box-Muller on pairs: outputs (0,1) -> normals n0, n1 and (2,3) -> n2, n3. */
static void normals4(float n[4], uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint64_t blk) {
    uint32_t o[4];
    block(o, seed, stream, step, sample, blk);
    for (int i = 0; i < 4; i += 2) {
        double r = sqrt(-2.0 * log(u01(o[i]))), th = 6.283185307179586 * u01(o[i + 1]);
        n[i] = (float)(r * cos(th));
        n[i + 1] = (float)(r * sin(th));
    }
}

float wan_rand_normal(uint64_t seed, uint32_t stream, uint32_t step, uint32_t sample, uint64_t index) {
    float n[4];
    normals4(n, seed, stream, step, sample, index / 4);
    return n[index % 4];
}

void wan_rand_normal_fill(float *out, uint64_t n, uint64_t seed, uint32_t stream, uint32_t step,
                          uint32_t sample, uint64_t index0) {
    uint64_t i = 0;
    while (i < n) {
        uint64_t idx = index0 + i, blk = idx / 4;
        float v[4];
        normals4(v, seed, stream, step, sample, blk);
        for (uint64_t j = idx % 4; j < 4 && i < n; j++) out[i++] = v[j];
    }
}
