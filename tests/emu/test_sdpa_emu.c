/* lib/cuda/sdpa_cudnn.c on the cuDNN emulator (tests/emu/cudnn_emu.c): the forward (SDPA_FWD
 * operation and composite graph) and the composite backward graph our code builds, run on the CPU
 * and compared with a double-precision attention written here, on random bf16 data in the model's
 * BSHD layouts (q|k|v column blocks of one [tokens, 3*H*hd] buffer; k|v of cross-attention in a
 * [tokens, 2*H*hd] buffer), with and without the padding mask, Sq != Skv, head dims 128 and 64.
 * Outputs start as NaN (0xff bytes) and row padding columns must keep it. Then the emulator's own
 * semantics (BINARY_SELECT, GEN_INDEX, reshape, matmul overrides, dependency order) and its
 * strictness (it must refuse what cuDNN's rules forbid, saying what) are checked directly.
 * Prints "ok ..." / "FAIL ..." lines and ends with "N passed, M failed". */
#include <cudnn.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/sdpa_cudnn.h"
#include "error.h"

static int n_passed, n_failed;

__attribute__((format(printf, 2, 3))) static void result(bool ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (ok) n_passed++;
    else n_failed++;
}

/* ------------------------------------------------------------------------------------------------
 * bf16, random numbers, "device" memory (host memory here, NaN-filled like the runtime emulator's). */

static float bf16_f(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static uint16_t f_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double urand(void) { /* splitmix64, uniform in [0, 1) */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0;
}

static int n_live_allocs;

static void *dev_alloc(void *ctx, size_t bytes) {
    (void)ctx;
    size_t n = (bytes + 255) / 256 * 256;
    void *p = aligned_alloc(256, n ? n : 256);
    if (p) memset(p, 0xff, n ? n : 256), n_live_allocs++;
    return p;
}

static void dev_free(void *ctx, void *p) {
    (void)ctx;
    if (p) n_live_allocs--;
    free(p);
}

/* ------------------------------------------------------------------------------------------------
 * One attention problem: buffers in the model's layouts and the reference in double. */

typedef struct {
    const char *name;
    int B, H, Sq, Skv, hd, kv_valid;
    bool cross; /* q from its own buffer, k|v from a [B*Skv, 2*H*hd] one (else q|k|v of one buffer) */
    int pad;    /* extra columns at the end of every row (must stay untouched) */
} shape;

typedef struct {
    shape s;
    float scale;
    int ldq, ldk, ldv, ldo; /* row strides (elements) */
    uint16_t *qbuf, *kvbuf; /* kvbuf NULL for self-attention */
    size_t qbuf_n, kvbuf_n;
    uint16_t *q, *k, *v;
    double *Q, *K, *V; /* [B][H][S][hd] */
} problem;

static size_t ix(const problem *p, int b, int h, int s, int S) {
    return (((size_t)b * p->s.H + h) * S + s) * p->s.hd;
}

/* element (b, h, s, d) of a BSHD tensor with row stride ld */
static size_t bshd_at(int b, int h, int s, int d, int S, int ld, int hd) {
    return ((size_t)b * S + s) * ld + (size_t)h * hd + d;
}

static void fill_random(uint16_t *buf, size_t n, double amp) {
    for (size_t i = 0; i < n; i++) {
        double v = (2 * urand() - 1) * amp;
        if (fabs(v) < 1e-3) v = 1e-3; /* never zero */
        buf[i] = f_bf16((float)v);
    }
}

static void gather(const problem *p, const uint16_t *t, int S, int ld, double *out) {
    for (int b = 0; b < p->s.B; b++)
        for (int h = 0; h < p->s.H; h++)
            for (int s = 0; s < S; s++)
                for (int d = 0; d < p->s.hd; d++)
                    out[ix(p, b, h, s, S) + d] = bf16_f(t[bshd_at(b, h, s, d, S, ld, p->s.hd)]);
}

static bool problem_init(problem *p, const shape *s) {
    memset(p, 0, sizeof *p);
    p->s = *s;
    int B = s->B, H = s->H, hd = s->hd, D = H * hd;
    p->scale = 1.0f / sqrtf((float)hd);
    if (s->cross) {
        p->ldq = D + s->pad;
        p->ldk = p->ldv = 2 * D + s->pad;
        p->qbuf_n = (size_t)B * s->Sq * p->ldq;
        p->kvbuf_n = (size_t)B * s->Skv * p->ldk;
        p->qbuf = dev_alloc(NULL, p->qbuf_n * 2);
        p->kvbuf = dev_alloc(NULL, p->kvbuf_n * 2);
        if (!p->qbuf || !p->kvbuf) return false;
        p->q = p->qbuf, p->k = p->kvbuf, p->v = p->kvbuf + D;
        fill_random(p->qbuf, p->qbuf_n, 2.0);
        fill_random(p->kvbuf, p->kvbuf_n, 2.0);
    } else {
        p->ldq = p->ldk = p->ldv = 3 * D + s->pad;
        p->qbuf_n = (size_t)B * s->Sq * p->ldq;
        p->qbuf = dev_alloc(NULL, p->qbuf_n * 2);
        if (!p->qbuf) return false;
        p->q = p->qbuf, p->k = p->qbuf + D, p->v = p->qbuf + 2 * D;
        fill_random(p->qbuf, p->qbuf_n, 2.0);
    }
    p->ldo = D + s->pad;
    size_t nq = (size_t)B * H * s->Sq * hd, nk = (size_t)B * H * s->Skv * hd;
    p->Q = malloc(nq * sizeof(double)), p->K = malloc(nk * sizeof(double)), p->V = malloc(nk * sizeof(double));
    if (!p->Q || !p->K || !p->V) return false;
    gather(p, p->q, s->Sq, p->ldq, p->Q);
    gather(p, p->k, s->Skv, p->ldk, p->K);
    gather(p, p->v, s->Skv, p->ldv, p->V);
    return true;
}

static void problem_free(problem *p) {
    dev_free(NULL, p->qbuf);
    dev_free(NULL, p->kvbuf);
    free(p->Q), free(p->K), free(p->V);
}

/* P[b][h][i][j] (0 for masked keys), O, lse: softmax attention in double. */
static void ref_forward(const problem *p, double *P, double *O, double *lse) {
    const shape *s = &p->s;
    int hd = s->hd;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->Sq; i++) {
                double *row = P + (((size_t)b * s->H + h) * s->Sq + i) * s->Skv, mx = -INFINITY, sum = 0;
                const double *qi = p->Q + ix(p, b, h, i, s->Sq);
                for (int j = 0; j < s->Skv; j++) {
                    if (j >= s->kv_valid) {
                        row[j] = -INFINITY;
                        continue;
                    }
                    const double *kj = p->K + ix(p, b, h, j, s->Skv);
                    double dot = 0;
                    for (int d = 0; d < hd; d++) dot += qi[d] * kj[d];
                    row[j] = dot * p->scale;
                    if (row[j] > mx) mx = row[j];
                }
                for (int j = 0; j < s->Skv; j++) sum += j < s->kv_valid ? exp(row[j] - mx) : 0;
                lse[((size_t)b * s->H + h) * s->Sq + i] = mx + log(sum);
                for (int j = 0; j < s->Skv; j++) row[j] = j < s->kv_valid ? exp(row[j] - mx) / sum : 0;
                double *oi = O + ix(p, b, h, i, s->Sq);
                for (int d = 0; d < hd; d++) {
                    double acc = 0;
                    for (int j = 0; j < s->kv_valid; j++) acc += row[j] * p->V[ix(p, b, h, j, s->Skv) + d];
                    oi[d] = acc;
                }
            }
}

/* dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO * O)), dQ = scale dS K, dK = scale dS^T Q. */
static void ref_backward(const problem *p, const double *P, const double *dO, const double *O, double *dQ, double *dK,
                         double *dV) {
    const shape *s = &p->s;
    int hd = s->hd;
    size_t nk = (size_t)s->B * s->H * s->Skv * hd, nq = (size_t)s->B * s->H * s->Sq * hd;
    memset(dK, 0, nk * sizeof(double)), memset(dV, 0, nk * sizeof(double)), memset(dQ, 0, nq * sizeof(double));
    double *dS = malloc((size_t)s->Skv * sizeof(double));
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->Sq; i++) {
                const double *Pi = P + (((size_t)b * s->H + h) * s->Sq + i) * s->Skv;
                const double *doi = dO + ix(p, b, h, i, s->Sq), *oi = O + ix(p, b, h, i, s->Sq);
                double Di = 0;
                for (int d = 0; d < hd; d++) Di += doi[d] * oi[d];
                for (int j = 0; j < s->Skv; j++) {
                    const double *vj = p->V + ix(p, b, h, j, s->Skv);
                    double dp = 0;
                    for (int d = 0; d < hd; d++) dp += doi[d] * vj[d];
                    dS[j] = Pi[j] * (dp - Di);
                    double *dvj = dV + ix(p, b, h, j, s->Skv);
                    for (int d = 0; d < hd; d++) dvj[d] += Pi[j] * doi[d];
                }
                double *dqi = dQ + ix(p, b, h, i, s->Sq);
                const double *qi = p->Q + ix(p, b, h, i, s->Sq);
                for (int j = 0; j < s->Skv; j++) {
                    const double *kj = p->K + ix(p, b, h, j, s->Skv);
                    double *dkj = dK + ix(p, b, h, j, s->Skv);
                    for (int d = 0; d < hd; d++) {
                        dqi[d] += p->scale * dS[j] * kj[d];
                        dkj[d] += p->scale * dS[j] * qi[d];
                    }
                }
            }
    free(dS);
}

/* max |got - ref| / max |ref| over a BSHD bf16 tensor; NaN when an element is not finite. */
static double rel_err(const problem *p, const uint16_t *got, int S, int ld, const double *ref) {
    double num = 0, den = 0;
    for (int b = 0; b < p->s.B; b++)
        for (int h = 0; h < p->s.H; h++)
            for (int s = 0; s < S; s++)
                for (int d = 0; d < p->s.hd; d++) {
                    double g = bf16_f(got[bshd_at(b, h, s, d, S, ld, p->s.hd)]), r = ref[ix(p, b, h, s, S) + d];
                    if (!isfinite(g)) return NAN;
                    if (fabs(g - r) > num) num = fabs(g - r);
                    if (fabs(r) > den) den = fabs(r);
                }
    return den > 0 ? num / den : num;
}

/* Columns [from, ld) of every row of a [rows, ld] bf16 buffer still hold the 0xffff poison. */
static bool pad_intact(const uint16_t *buf, int rows, int ld, int from) {
    for (int r = 0; r < rows; r++)
        for (int c = from; c < ld; c++)
            if (buf[(size_t)r * ld + c] != 0xffff) return false;
    return true;
}

static const double TOL_BF16_OUT = 2e-2; /* relative to the largest reference value */
static const double TOL_LSE = 1e-4;      /* fp32 statistics from the same bf16 inputs */

/* The forward through one wan_sdpa (its WAN_SDPA_FWD was fixed at creation). */
static void check_forward(wan_sdpa *sd, const char *mode, const problem *p, const double *Oref, const double *lref,
                          float *lse_out) {
    const shape *s = &p->s;
    size_t on = (size_t)s->B * s->Sq * p->ldo, ln = (size_t)s->B * s->H * s->Sq;
    uint16_t *out = dev_alloc(NULL, on * 2);
    float *lse = dev_alloc(NULL, ln * 4);
    wan_error_clear();
    int rc = wan_sdpa_fwd(sd, out, p->ldo, lse, p->q, p->ldq, p->k, p->ldk, p->v, p->ldv, s->B, s->H, s->Sq, s->Skv,
                          s->hd, s->kv_valid, p->scale);
    if (rc) {
        result(false, "forward %s, %s: %s", mode, s->name, wan_errmsg());
    } else {
        double eo = rel_err(p, out, s->Sq, p->ldo, Oref), el = 0, lmax = 1;
        for (size_t i = 0; i < ln; i++) lmax = fmax(lmax, fabs(lref[i]));
        for (size_t i = 0; i < ln; i++) el = isfinite(lse[i]) ? fmax(el, fabs(lse[i] - lref[i]) / lmax) : NAN;
        bool pads = pad_intact(out, s->B * s->Sq, p->ldo, s->H * s->hd);
        result(eo <= TOL_BF16_OUT && el <= TOL_LSE && pads,
               "forward %s, %s: out err %.2e (tol %.0e), lse (natural log) err %.2e (tol %.0e)%s", mode, s->name, eo,
               TOL_BF16_OUT, el, TOL_LSE, pads ? "" : ", PADDING COLUMNS WRITTEN");
        if (lse_out) memcpy(lse_out, lse, ln * 4);
    }
    dev_free(NULL, out);
    dev_free(NULL, lse);
}

static void check_backward(wan_sdpa *sd, const char *what, const problem *p, const double *P, const double *Oref,
                           const double *lref) {
    const shape *s = &p->s;
    int B = s->B, H = s->H, hd = s->hd, D = H * hd;
    size_t nq = (size_t)B * H * s->Sq * hd, nk = (size_t)B * H * s->Skv * hd, ln = (size_t)B * H * s->Sq;
    /* inputs: dout random, out = the reference rounded to bf16, lse the reference in fp32 */
    int lddo = D + s->pad;
    uint16_t *dout = dev_alloc(NULL, (size_t)B * s->Sq * lddo * 2), *out = dev_alloc(NULL, (size_t)B * s->Sq * p->ldo * 2);
    float *lse = dev_alloc(NULL, ln * 4);
    fill_random(dout, (size_t)B * s->Sq * lddo, 1.0);
    double *dO = malloc(nq * sizeof(double)), *Of = malloc(nq * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < s->Sq; i++)
                for (int d = 0; d < hd; d++) {
                    uint16_t o = f_bf16((float)Oref[ix(p, b, h, i, s->Sq) + d]);
                    out[bshd_at(b, h, i, d, s->Sq, p->ldo, hd)] = o;
                    Of[ix(p, b, h, i, s->Sq) + d] = bf16_f(o);
                    dO[ix(p, b, h, i, s->Sq) + d] = bf16_f(dout[bshd_at(b, h, i, d, s->Sq, lddo, hd)]);
                }
    for (size_t i = 0; i < ln; i++) lse[i] = (float)lref[i];
    /* gradients: dq|dk|dv column blocks of one buffer (self), or dq and a dk|dv buffer (cross) */
    uint16_t *gq, *gkv = NULL, *dq, *dk, *dv;
    int lddq, lddk, ldgq, ldgkv = 0;
    size_t gq_rows = (size_t)B * s->Sq, gkv_rows = (size_t)B * s->Skv;
    if (s->cross) {
        ldgq = lddq = D + s->pad;
        ldgkv = lddk = 2 * D + s->pad;
        gq = dev_alloc(NULL, gq_rows * ldgq * 2);
        gkv = dev_alloc(NULL, gkv_rows * ldgkv * 2);
        dq = gq, dk = gkv, dv = gkv + D;
    } else {
        ldgq = lddq = lddk = 3 * D + s->pad;
        gq = dev_alloc(NULL, gq_rows * ldgq * 2);
        dq = gq, dk = gq + D, dv = gq + 2 * D;
    }
    double *dQ = malloc(nq * sizeof(double)), *dK = malloc(nk * sizeof(double)), *dV = malloc(nk * sizeof(double));
    ref_backward(p, P, dO, Of, dQ, dK, dV);
    wan_error_clear();
    int rc = wan_sdpa_bwd(sd, dq, lddq, dk, lddk, dv, lddk, dout, lddo, out, p->ldo, lse, p->q, p->ldq, p->k, p->ldk,
                          p->v, p->ldv, B, H, s->Sq, s->Skv, hd, s->kv_valid, p->scale);
    if (rc) {
        result(false, "backward%s, %s: %s", what, s->name, wan_errmsg());
    } else {
        double eq = rel_err(p, dq, s->Sq, lddq, dQ), ek = rel_err(p, dk, s->Skv, lddk, dK);
        double ev = rel_err(p, dv, s->Skv, lddk, dV);
        bool zeros = true; /* rows of masked keys: exactly zero */
        for (int b = 0; b < B; b++)
            for (int j = s->kv_valid; j < s->Skv; j++)
                for (int c = 0; c < D; c++)
                    if (dk[bshd_at(b, 0, j, c, s->Skv, lddk, hd)] || dv[bshd_at(b, 0, j, c, s->Skv, lddk, hd)])
                        zeros = false;
        bool pads = s->cross ? pad_intact(gq, (int)gq_rows, ldgq, D) && pad_intact(gkv, (int)gkv_rows, ldgkv, 2 * D)
                             : pad_intact(gq, (int)gq_rows, ldgq, 3 * D);
        bool ok = eq <= TOL_BF16_OUT && ek <= TOL_BF16_OUT && ev <= TOL_BF16_OUT && zeros && pads;
        result(ok, "backward%s, %s: dq err %.2e, dk err %.2e, dv err %.2e (tol %.0e)%s%s", what, s->name, eq, ek, ev,
               TOL_BF16_OUT, zeros ? "" : ", MASKED KEY ROWS NOT ZERO", pads ? "" : ", PADDING COLUMNS WRITTEN");
    }
    free(dO), free(Of), free(dQ), free(dK), free(dV);
    dev_free(NULL, dout), dev_free(NULL, out), dev_free(NULL, lse), dev_free(NULL, gq), dev_free(NULL, gkv);
}

static wan_sdpa *sd_auto, *sd_unified, *sd_composite;

static void run_shape(const shape *s) {
    problem p;
    if (!problem_init(&p, s)) {
        result(false, "%s: out of memory", s->name);
        problem_free(&p);
        return;
    }
    size_t np = (size_t)s->B * s->H * s->Sq * s->Skv, nq = (size_t)s->B * s->H * s->Sq * s->hd;
    size_t ln = (size_t)s->B * s->H * s->Sq;
    double *P = malloc(np * sizeof(double)), *O = malloc(nq * sizeof(double)), *L = malloc(ln * sizeof(double));
    float *l_uni = malloc(ln * 4), *l_comp = malloc(ln * 4);
    ref_forward(&p, P, O, L);
    for (size_t i = 0; i < ln; i++) l_uni[i] = l_comp[i] = NAN;
    check_forward(sd_auto, "default (SDPA_FWD op)", &p, O, L, l_uni);
    check_forward(sd_composite, "composite", &p, O, L, l_comp);
    double d = 0;
    for (size_t i = 0; i < ln; i++) d = isfinite(l_uni[i] - l_comp[i]) ? fmax(d, fabs(l_uni[i] - l_comp[i])) : NAN;
    result(d <= 1e-5, "forward SDPA_FWD op and composite graph give the same statistics, %s: max diff %.2e", s->name, d);
    check_backward(sd_auto, "", &p, P, O, L);
    free(P), free(O), free(L), free(l_uni), free(l_comp);
    problem_free(&p);
}

/* Plans are cached per shape: a second call with other data must use the new pointers. */
static void check_plan_reuse(void) {
    shape s = {"plan reuse B=1 H=2 S=40 hd=64", 1, 2, 40, 40, 64, 40, false, 0};
    for (int round = 0; round < 2; round++) {
        problem p;
        if (!problem_init(&p, &s)) {
            result(false, "%s: out of memory", s.name);
            problem_free(&p);
            return;
        }
        size_t nq = (size_t)s.B * s.H * s.Sq * s.hd, ln = (size_t)s.B * s.H * s.Sq;
        double *P = malloc((size_t)s.B * s.H * s.Sq * s.Skv * sizeof(double)), *O = malloc(nq * sizeof(double));
        double *L = malloc(ln * sizeof(double));
        ref_forward(&p, P, O, L);
        char mode[64];
        snprintf(mode, sizeof mode, "cached plan, call %d", round + 1);
        check_forward(sd_auto, mode, &p, O, L, NULL);
        free(P), free(O), free(L);
        problem_free(&p);
    }
}

/* ------------------------------------------------------------------------------------------------
 * The emulator itself, through the backend API. */

enum { MAX_OWNED = 64 };
static cudnnBackendDescriptor_t owned[MAX_OWNED];
static int n_owned;

static void release_all(void) {
    while (n_owned > 0) cudnnBackendDestroyDescriptor(owned[--n_owned]);
}

static cudnnBackendDescriptor_t make(cudnnBackendDescriptorType_t type) {
    cudnnBackendDescriptor_t d = NULL;
    if (cudnnBackendCreateDescriptor(type, &d) == CUDNN_STATUS_SUCCESS && n_owned < MAX_OWNED) owned[n_owned++] = d;
    return d;
}

static cudnnStatus_t tensor(int64_t uid, cudnnDataType_t dt, int nd, const int64_t *dims, const int64_t *strides,
                            bool virt, bool by_value, cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t t = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    int64_t align = 16;
    cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt);
    cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, nd, dims);
    cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, nd, strides);
    cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    if (virt) cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt);
    if (by_value) cudnnBackendSetAttribute(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value);
    *out = t;
    return cudnnBackendFinalize(t);
}

static cudnnStatus_t pointwise(cudnnPointwiseMode_t mode, cudnnDataType_t math, int64_t axis,
                               cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                               cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t pw = make(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
    cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math);
    if (axis >= 0) cudnnBackendSetAttribute(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis);
    cudnnStatus_t st = cudnnBackendFinalize(pw);
    if (st) return st;
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b) cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    if (t) cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    *out = op;
    return cudnnBackendFinalize(op);
}

static cudnnStatus_t reduction(cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y,
                               cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t r = make(CUDNN_BACKEND_REDUCTION_DESCRIPTOR);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    cudnnBackendSetAttribute(r, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    cudnnBackendSetAttribute(r, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    cudnnStatus_t st = cudnnBackendFinalize(r);
    if (st) return st;
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &r);
    *out = op;
    return cudnnBackendFinalize(op);
}

static cudnnStatus_t matmul(cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t c,
                            cudnnBackendDescriptor_t n_override, const double *padding, cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t mm = make(CUDNN_BACKEND_MATMUL_DESCRIPTOR);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    cudnnBackendSetAttribute(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f);
    if (padding) cudnnBackendSetAttribute(mm, CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, padding);
    cudnnStatus_t st = cudnnBackendFinalize(mm);
    if (st) return st;
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm);
    if (n_override)
        cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &n_override);
    *out = op;
    return cudnnBackendFinalize(op);
}

static cudnnStatus_t reshape(cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t op = make(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    cudnnBackendSetAttribute(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    *out = op;
    return cudnnBackendFinalize(op);
}

static void *workspace_override; /* run_graph's workspace, when set (else a fresh allocation) */

/* Graph, heuristics, plan; then run with the given uids and pointers. */
static cudnnStatus_t run_graph(cudnnHandle_t h, int n_ops, cudnnBackendDescriptor_t *ops, int n_io,
                               const int64_t *uids, void **ptrs) {
    cudnnBackendDescriptor_t g = make(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    cudnnStatus_t st = cudnnBackendSetAttribute(g, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_ops, ops);
    if (!st) st = cudnnBackendFinalize(g);
    if (st) return st;
    cudnnBackendDescriptor_t heur = make(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g);
    cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if ((st = cudnnBackendFinalize(heur))) return st;
    cudnnBackendDescriptor_t cfg = make(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    int64_t n = 0;
    if ((st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &cfg)))
        return st;
    cudnnBackendDescriptor_t plan = make(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
    cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg);
    if ((st = cudnnBackendFinalize(plan))) return st;
    int64_t ws_bytes = 0;
    cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, NULL, &ws_bytes);
    void *ws = workspace_override ? workspace_override : dev_alloc(NULL, (size_t)ws_bytes);
    cudnnBackendDescriptor_t pack = make(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
    cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, n_io, uids);
    cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, n_io, ptrs);
    cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws);
    st = cudnnBackendFinalize(pack);
    if (!st) st = cudnnBackendExecute(h, plan, pack);
    if (ws != workspace_override) dev_free(NULL, ws);
    return st;
}

static bool msg_has(const char *needle) {
    char m[2048];
    cudnnGetLastErrorString(m, sizeof m);
    bool ok = strstr(m, needle) != NULL;
    if (!ok) printf("     (last error string: \"%s\", expected it to mention \"%s\")\n", m, needle);
    return ok;
}

static void check_emulator(cudnnHandle_t h) {
    const int64_t d44[4] = {1, 1, 4, 4}, s44[4] = {16, 16, 4, 1}, d41[4] = {1, 1, 4, 1}, s41[4] = {4, 4, 1, 1};
    const int64_t ones[4] = {1, 1, 1, 1};
    cudnnBackendDescriptor_t x, y, b, t, v1, v2, op1, op2, op3;
    cudnnStatus_t st;
    float *X = dev_alloc(NULL, 64), *Y = dev_alloc(NULL, 64), *Bv = dev_alloc(NULL, 64);
    for (int i = 0; i < 16; i++) X[i] = (float)(i + 1), Bv[i] = (float)(100 - i);

    /* BINARY_SELECT takes X where the mask is true, else B; the mask from GEN_INDEX and CMP_LT
     * (column < 2), as our padding mask builds it; the graph given consumer-first */
    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(2, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &b);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    tensor(4, CUDNN_DATA_FLOAT, 4, ones, ones, false, true, &t);
    tensor(10, CUDNN_DATA_INT32, 4, d44, s44, true, false, &v1);
    tensor(11, CUDNN_DATA_BOOLEAN, 4, d44, s44, true, false, &v2);
    float two = 2;
    pointwise(CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, -1, x, b, v2, y, &op1);
    pointwise(CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, -1, v1, t, NULL, v2, &op2);
    pointwise(CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, 3, x, NULL, NULL, v1, &op3);
    cudnnBackendDescriptor_t ops[3] = {op1, op2, op3};
    int64_t uids[4] = {1, 2, 3, 4};
    void *ptrs[4] = {X, Bv, Y, &two};
    st = run_graph(h, 3, ops, 4, uids, ptrs);
    bool ok = st == CUDNN_STATUS_SUCCESS;
    for (int i = 0; i < 16 && ok; i++) ok = Y[i] == (i % 4 < 2 ? X[i] : Bv[i]);
    result(ok, "emulator: GEN_INDEX(axis 3) < 2 selects X in BINARY_SELECT(X, B, mask), else B; ops run in dependency "
               "order (%s)", cudnnGetErrorString(st));
    release_all();

    /* reduction MAX over the last dim, reshape as a transpose */
    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(3, CUDNN_DATA_FLOAT, 4, d41, s41, false, false, &y);
    reduction(CUDNN_REDUCE_TENSOR_MAX, x, y, &op1);
    uids[1] = 3, ptrs[1] = Y;
    for (int i = 0; i < 16; i++) X[i] = (float)((i * 7) % 11);
    st = run_graph(h, 1, &op1, 2, uids, ptrs);
    ok = st == CUDNN_STATUS_SUCCESS;
    for (int r = 0; r < 4 && ok; r++)
        ok = Y[r] == fmaxf(fmaxf(X[4 * r], X[4 * r + 1]), fmaxf(X[4 * r + 2], X[4 * r + 3]));
    result(ok, "emulator: reduction MAX over the dims where Y has extent 1 (%s)", cudnnGetErrorString(st));
    release_all();

    const int64_t st_t[4] = {16, 16, 1, 4}; /* the same memory, last two dims swapped */
    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(10, CUDNN_DATA_FLOAT, 4, d44, st_t, true, false, &v1);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    reshape(x, v1, &op1);
    pointwise(CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, -1, v1, NULL, NULL, y, &op2);
    cudnnBackendDescriptor_t ops2[2] = {op1, op2};
    st = run_graph(h, 2, ops2, 2, uids, ptrs);
    ok = st == CUDNN_STATUS_SUCCESS;
    for (int i = 0; i < 4 && ok; i++)
        for (int j = 0; j < 4 && ok; j++) ok = Y[4 * i + j] == X[4 * j + i];
    result(ok, "emulator: reshape to swapped dims and strides is a transpose (%s)", cudnnGetErrorString(st));
    release_all();

    /* matmul with an N override: columns past it are NaN, or the padding value when one is set */
    int32_t *len = dev_alloc(NULL, 16);
    len[0] = 3;
    for (int pass = 0; pass < 2; pass++) {
        tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
        tensor(2, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &b);
        tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
        tensor(5, CUDNN_DATA_INT32, 4, ones, ones, false, false, &t);
        double pad = -7;
        st = matmul(x, b, y, t, pass ? &pad : NULL, &op1);
        int64_t u3[4] = {1, 2, 3, 5};
        void *p3[4] = {X, Bv, Y, len};
        if (!st) st = run_graph(h, 1, &op1, 4, u3, p3);
        ok = st == CUDNN_STATUS_SUCCESS;
        for (int i = 0; i < 4 && ok; i++)
            for (int j = 0; j < 4 && ok; j++) {
                double ref = 0;
                for (int k = 0; k < 4; k++) ref += (double)X[4 * i + k] * Bv[4 * k + j];
                ok = j < 3 ? Y[4 * i + j] == (float)ref : pass ? Y[4 * i + j] == -7 : isnan(Y[4 * i + j]);
            }
        result(ok, "emulator: matmul with an N override leaves %s past it (%s)", pass ? "the padding value" : "NaN",
               cudnnGetErrorString(st));
        release_all();
    }
    dev_free(NULL, len);

    /* strictness: each must fail, with a message naming the problem */
    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    pointwise(CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, -1, x, NULL, NULL, y, &op1);
    void *mis[2] = {(char *)X + 4, Y};
    st = run_graph(h, 1, &op1, 2, uids, mis);
    result(st == CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER && msg_has("BYTE_ALIGNMENT"),
           "emulator refuses a pointer not aligned as BYTE_ALIGNMENT says (%s)", cudnnGetErrorString(st));
    release_all();

    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    pointwise(CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, -1, x, NULL, NULL, y, &op1);
    st = run_graph(h, 1, &op1, 1, uids, ptrs);
    result(st != CUDNN_STATUS_SUCCESS && msg_has("not in the variant pack"),
           "emulator refuses a variant pack without one of the graph's tensors (%s)", cudnnGetErrorString(st));
    release_all();

    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    pointwise(CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, -1, x, NULL, NULL, y, &op1);
    void *alias[2] = {X, X};
    st = run_graph(h, 1, &op1, 2, uids, alias);
    result(st != CUDNN_STATUS_SUCCESS && msg_has("overlaps input"), "emulator refuses an output aliasing an input (%s)",
           cudnnGetErrorString(st));
    release_all();

    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    pointwise(CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, -1, x, NULL, NULL, y, &op1);
    char *ws_block = dev_alloc(NULL, 4096);
    workspace_override = ws_block;
    void *in_ws[2] = {X, ws_block + 512};
    st = run_graph(h, 1, &op1, 2, uids, in_ws);
    workspace_override = NULL;
    dev_free(NULL, ws_block);
    result(st == CUDNN_STATUS_BAD_PARAM && msg_has("workspace"),
           "emulator refuses a tensor that lies in the workspace given to the plan (%s)", cudnnGetErrorString(st));
    release_all();

    const int64_t s_overlap[4] = {16, 16, 2, 1};
    st = tensor(1, CUDNN_DATA_FLOAT, 4, d44, s_overlap, false, false, &x);
    result(st == CUDNN_STATUS_BAD_PARAM && msg_has("share memory"),
           "emulator refuses a tensor whose strides overlap (%s)", cudnnGetErrorString(st));
    release_all();

    cudnnBackendDescriptor_t tt = make(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    cudnnDataType_t f32 = CUDNN_DATA_FLOAT;
    int64_t uid = 1;
    cudnnBackendSetAttribute(tt, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &f32);
    cudnnBackendSetAttribute(tt, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, d44);
    cudnnBackendSetAttribute(tt, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, s44);
    cudnnBackendSetAttribute(tt, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    st = cudnnBackendFinalize(tt);
    result(st == CUDNN_STATUS_BAD_PARAM && msg_has("CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT"),
           "emulator refuses a tensor without a required attribute (%s)", cudnnGetErrorString(st));
    int64_t reorder = 0;
    st = cudnnBackendSetAttribute(tt, CUDNN_ATTR_TENSOR_REORDERING_MODE, CUDNN_TYPE_TENSOR_REORDERING_MODE, 1, &reorder);
    result(st == CUDNN_STATUS_NOT_SUPPORTED && msg_has("not emulated"),
           "emulator refuses an attribute it does not emulate (%s)", cudnnGetErrorString(st));
    release_all();

    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    st = pointwise(CUDNN_POINTWISE_GELU_FWD, CUDNN_DATA_FLOAT, -1, x, NULL, NULL, y, &op1);
    result(st == CUDNN_STATUS_NOT_SUPPORTED && msg_has("GELU_FWD"), "emulator refuses a pointwise mode it does not "
                                                                    "implement (%s)", cudnnGetErrorString(st));
    release_all();

    const int64_t d43[4] = {1, 1, 4, 3}, s43[4] = {12, 12, 3, 1};
    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(2, CUDNN_DATA_FLOAT, 4, d43, s43, false, false, &b);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    st = pointwise(CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, -1, x, b, NULL, y, &op1);
    result(st == CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH && msg_has("does not broadcast"),
           "emulator refuses operands that do not broadcast (%s)", cudnnGetErrorString(st));
    release_all();

    tensor(1, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &x);
    tensor(10, CUDNN_DATA_FLOAT, 4, d44, s44, true, false, &v1);
    tensor(3, CUDNN_DATA_FLOAT, 4, d44, s44, false, false, &y);
    pointwise(CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, -1, x, NULL, NULL, v1, &op1);
    pointwise(CUDNN_POINTWISE_LOG, CUDNN_DATA_FLOAT, -1, x, NULL, NULL, y, &op2);
    cudnnBackendDescriptor_t ops3[2] = {op1, op2};
    st = run_graph(h, 2, ops3, 2, uids, ptrs);
    result(st == CUDNN_STATUS_BAD_PARAM && msg_has("never read"),
           "emulator refuses a graph whose virtual tensor nobody reads (%s)", cudnnGetErrorString(st));
    char m[64] = "x";
    cudnnGetLastErrorString(m, sizeof m);
    result(m[0] == 0, "cudnnGetLastErrorString clears the message once read");
    release_all();

    dev_free(NULL, X), dev_free(NULL, Y), dev_free(NULL, Bv);
}

/* ------------------------------------------------------------------------------------------------ */

static wan_sdpa *create_with(cudnnHandle_t h, const char *fwd) {
    if (fwd) setenv("WAN_SDPA_FWD", fwd, 1);
    else unsetenv("WAN_SDPA_FWD");
    wan_sdpa *s = NULL;
    if (wan_sdpa_create(h, NULL, dev_alloc, dev_free, NULL, &s)) {
        result(false, "wan_sdpa_create (WAN_SDPA_FWD=%s): %s", fwd ? fwd : "", wan_errmsg());
        s = NULL;
    }
    unsetenv("WAN_SDPA_FWD");
    return s;
}

/* A problem of shape s and the reference forward of it: probabilities, output, log-sum-exp. */
typedef struct {
    double *P, *O, *L;
} reference;

static bool reference_init(reference *r, problem *p, const shape *s) {
    memset(r, 0, sizeof *r);
    if (!problem_init(p, s)) return false;
    size_t nq = (size_t)s->B * s->H * s->Sq * s->hd, ln = (size_t)s->B * s->H * s->Sq;
    r->P = malloc((size_t)s->B * s->H * s->Sq * s->Skv * sizeof(double));
    r->O = malloc(nq * sizeof(double));
    r->L = malloc(ln * sizeof(double));
    ref_forward(p, r->P, r->O, r->L);
    return true;
}

static void reference_free(reference *r) {
    free(r->P), free(r->O), free(r->L);
    memset(r, 0, sizeof *r);
}

int main(void) {
    unsetenv("WAN_CUDNN_EMU_VERSION");
    cudnnHandle_t h = NULL;
    cudnnStatus_t st = cudnnCreate(&h);
    result(st == CUDNN_STATUS_SUCCESS, "cudnnCreate on the emulator, cuDNN version %zu", cudnnGetVersion());
    if (st) goto done;
    check_emulator(h);

    sd_auto = create_with(h, NULL);
    sd_unified = create_with(h, "unified");
    sd_composite = create_with(h, "composite");
    if (!sd_auto || !sd_unified || !sd_composite) goto done;

    const shape shapes[] = {
        {"self B=2 H=2 S=64 hd=128", 2, 2, 64, 64, 128, 64, false, 0},
        {"self padded kv_valid=50 of 64, hd=128, row padding", 2, 2, 64, 64, 128, 50, false, 8},
        {"cross Sq=48 Skv=80 hd=128", 2, 2, 48, 80, 128, 80, true, 0},
        {"cross padded Sq=40 Skv=72 kv_valid=33 hd=128, row padding", 2, 2, 40, 72, 128, 33, true, 8},
        {"self B=1 H=3 S=80 hd=64", 1, 3, 80, 80, 64, 80, false, 0},
        {"cross padded Sq=24 Skv=56 kv_valid=41 hd=64", 2, 1, 24, 56, 64, 41, true, 0},
        {"self odd B=3 H=1 S=17 kv_valid=9 hd=128", 3, 1, 17, 17, 128, 9, false, 8},
        {"cross one query Sq=1 Skv=20 hd=64", 2, 2, 1, 20, 64, 20, true, 0},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) run_shape(&shapes[i]);
    check_plan_reuse();

    /* WAN_SDPA_FWD=unified pins the single operation */
    {
        shape s = {"pinned unified, self B=1 H=2 S=32 kv_valid=30 hd=64", 1, 2, 32, 32, 64, 30, false, 0};
        problem p;
        reference r;
        if (reference_init(&r, &p, &s)) {
            double *O = r.O, *L = r.L;
            check_forward(sd_unified, "WAN_SDPA_FWD=unified", &p, O, L, NULL);
        }
        reference_free(&r);
        problem_free(&p);
    }

    /* cuDNN <= 9.15: the backward adds a padding mask that removes nothing when Skv % 128 != 0 */
    {
        setenv("WAN_CUDNN_EMU_VERSION", "91500", 1);
        shape s = {"as cuDNN 9.15 (workaround mask), self S=48 hd=128", 1, 2, 48, 48, 128, 48, false, 0};
        problem p;
        reference r;
        if (reference_init(&r, &p, &s)) {
            double *P = r.P, *O = r.O, *L = r.L;
            check_backward(sd_auto, " with seq_len_kv = Skv", &p, P, O, L);
        }
        reference_free(&r);
        problem_free(&p);
        unsetenv("WAN_CUDNN_EMU_VERSION");
    }

    /* cuDNN 9.14: the single operation exists, not its sequence lengths; a padded forward is the
     * composite graph in auto mode and refused when the single operation is pinned */
    {
        setenv("WAN_CUDNN_EMU_VERSION", "91400", 1);
        shape s = {"as cuDNN 9.14, padded self S=40 kv_valid=33 hd=64", 1, 2, 40, 40, 64, 33, false, 0};
        problem p;
        reference r;
        if (reference_init(&r, &p, &s)) {
            double *O = r.O, *L = r.L;
            check_forward(sd_auto, " (auto: composite graph)", &p, O, L, NULL);
            uint16_t *out = dev_alloc(NULL, (size_t)s.B * s.Sq * p.ldo * 2);
            float *lse = dev_alloc(NULL, (size_t)s.B * s.H * s.Sq * 4);
            wan_error_clear();
            int rc = wan_sdpa_fwd(sd_unified, out, p.ldo, lse, p.q, p.ldq, p.k, p.ldk, p.v, p.ldv, s.B, s.H, s.Sq, s.Skv,
                                  s.hd, s.kv_valid, p.scale);
            result(rc != 0 && strstr(wan_errmsg(), "needs 9.13.1 and its sequence lengths 9.15.0"),
                   "WAN_SDPA_FWD=unified at cuDNN 9.14 with padding refused: %s", wan_errmsg());
            dev_free(NULL, out), dev_free(NULL, lse);
        }
        reference_free(&r);
        problem_free(&p);
        unsetenv("WAN_CUDNN_EMU_VERSION");
    }

    /* cuDNN 9.12 (older than the single operation; a GPU image's own cuDNN may be): attention
     * still works, the forward through the composite graph, the backward as always; the graph
     * self-test says the single operation was skipped, and passes */
    {
        setenv("WAN_CUDNN_EMU_VERSION", "91200", 1);
        wan_sdpa *sd_912 = create_with(h, NULL);
        shape s = {"as cuDNN 9.12, self S=48 hd=128", 1, 2, 48, 48, 128, 48, false, 0};
        problem p;
        reference r;
        memset(&p, 0, sizeof p), memset(&r, 0, sizeof r);
        if (sd_912 && reference_init(&r, &p, &s)) {
            double *P = r.P, *O = r.O, *L = r.L;
            check_forward(sd_912, " (auto: composite graph)", &p, O, L, NULL);
            check_backward(sd_912, "", &p, P, O, L);
        }
        reference_free(&r);
        problem_free(&p);
        wan_sdpa_destroy(sd_912);
        static char report[8192];
        wan_error_clear();
        int rc = wan_sdpa_selftest_build(1, 2, 48, 48, 128, report, sizeof report);
        int skipped = 0;
        for (const char *q = report; (q = strstr(q, "skipped: cuDNN 91200: the SDPA_FWD operation needs 9.13.1")); q++)
            skipped++;
        result(rc == 0 && skipped == 2 && !strstr(report, "FAILED"),
               "graph self-test at cuDNN 9.12: the single operation skipped for both masks (%d), the rest built%s%s",
               skipped, rc ? ": " : "", rc ? wan_errmsg() : "");
        unsetenv("WAN_CUDNN_EMU_VERSION");
    }

    /* cuDNN 9.10.1: refused (cudnn-frontend's known-bug versions, and older ones), saying why */
    {
        setenv("WAN_CUDNN_EMU_VERSION", "91001", 1);
        wan_sdpa *sd_old = NULL;
        wan_error_clear();
        int rc = wan_sdpa_create(h, NULL, dev_alloc, dev_free, NULL, &sd_old);
        result(rc != 0 && !sd_old && strstr(wan_errmsg(), "cuDNN 9.10.1: the fused attention needs cuDNN 9.10.2"),
               "cuDNN 9.10.1 refused: %s", wan_errmsg());
        wan_sdpa_destroy(sd_old);
        unsetenv("WAN_CUDNN_EMU_VERSION");
    }

    /* our own checks run before cuDNN sees anything */
    {
        shape s = {"misaligned q", 1, 1, 16, 16, 64, 16, false, 0};
        problem p;
        if (problem_init(&p, &s)) {
            uint16_t *out = dev_alloc(NULL, (size_t)16 * p.ldo * 2);
            float *lse = dev_alloc(NULL, 16 * 4);
            wan_error_clear();
            int rc = wan_sdpa_fwd(sd_auto, out, p.ldo, lse, p.q + 1, p.ldq, p.k, p.ldk, p.v, p.ldv, 1, 1, 16, 16, 64, 16,
                                  p.scale);
            result(rc != 0 && strstr(wan_errmsg(), "16-byte"), "wan_sdpa_fwd refuses a misaligned q: %s", wan_errmsg());
            dev_free(NULL, out), dev_free(NULL, lse);
        }
        problem_free(&p);
    }

done:
    wan_sdpa_destroy(sd_auto);
    wan_sdpa_destroy(sd_unified);
    wan_sdpa_destroy(sd_composite);
    if (h) cudnnDestroy(h);
    result(n_live_allocs == 0, "every allocation freed (%d left)", n_live_allocs);
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
