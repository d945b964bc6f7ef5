/* Helpers shared by the CPU op tests (test_ops_cpu*.c): deterministic random data, double
 * copies, a relative-error check at the scale of the vector, and central finite differences.
 * A test file sets OPS_CHECK_SEED before including this to draw its own numbers. */
#ifndef WAN_OPS_CHECK_H
#define WAN_OPS_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#ifndef OPS_CHECK_SEED
#define OPS_CHECK_SEED 0x9e3779b97f4a7c15ull
#endif

static uint64_t rng_state = OPS_CHECK_SEED;
static inline double urand(void) { /* uniform in [0, 1) (xorshift64*) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}
static inline float *frand(size_t n, double lo, double hi) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * urand());
    return x;
}
static inline double *dcopy(const float *x, size_t n) {
    double *d = malloc((n ? n : 1) * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static inline float *fdup(const float *x, size_t n) {
    float *y = malloc((n ? n : 1) * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}
static inline double *dzeros(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

/* Worst error of got against want, relative to max(|want_i|, 1% of max |want|): tiny entries
 * of a vector are judged at the scale of the vector. */
static inline double rel_err(const float *got, const double *want, size_t n, size_t *worst) {
    double mx = 0, err = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(want[i]));
    *worst = 0;
    for (size_t i = 0; i < n; i++) {
        double den = fmax(fabs(want[i]), 0.01 * mx);
        double e = fabs(got[i] - want[i]) / (den > 0 ? den : 1);
        if (!(e <= err)) { /* NaN counts as the worst */
            err = isnan(e) ? INFINITY : e;
            *worst = i;
        }
    }
    return err;
}
#define CHECK_CLOSE(what, got, want, n, tol)                                                                 \
    do {                                                                                                     \
        size_t w_;                                                                                           \
        double e_ = rel_err((got), (want), (n), &w_);                                                        \
        CHECKF(e_ <= (tol), "%s: relative error %.3g at [%zu] (got %.9g, want %.9g), tol %g", (what), e_,    \
               w_, (double)(got)[w_], (want)[w_], (double)(tol));                                            \
    } while (0)

/* Central finite differences of a double loss over every element of x. */
typedef double (*loss_fn)(void *ctx);
static inline void fd_grad(loss_fn loss, void *ctx, double *x, size_t n, double *g) {
    for (size_t i = 0; i < n; i++) {
        double s = x[i], h = 1e-5 * fmax(1.0, fabs(s));
        x[i] = s + h;
        double lp = loss(ctx);
        x[i] = s - h;
        double lm = loss(ctx);
        x[i] = s;
        g[i] = (lp - lm) / (2 * h);
    }
}

#endif
