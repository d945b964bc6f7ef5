/* The CPU backend against independent naive double-precision references: every op's forward
 * (fp32 vs double) and every backward against central finite differences of the double
 * reference, on random data with awkward sizes (several samples with tok0 > 0, row strides
 * wider than the data, tensor-parallel splits, accumulate flags); attention has its own file
 * (test_ops_cpu_attention.c). Also: bit-identical results for 1 and 2 threads, and the
 * backend's memory functions. */
#include <omp.h>
#include <stdint.h>

#include "ops.h"
#include "ops_cpu_internal.h"
#include "ops_check.h"
#include "test.h"

/* ---------------- helpers ---------------- */

/* want = base + g, for accumulated gradients */
static double *plus(const float *base, const double *g, size_t n) {
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = base[i] + g[i];
    return d;
}

static double dot(const double *a, const double *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static wan_backend *be; /* the backend under test (2 threads) */

/* ---------------- matmul ---------------- */

typedef struct {
    int M, N, K;
    double *in, *w, *bias, *dout, *out;
} mm_ref;

static void mm_ref_fwd(mm_ref *r) {
    for (int i = 0; i < r->M; i++)
        for (int n = 0; n < r->N; n++) {
            double s = r->bias ? r->bias[n] : 0;
            for (int k = 0; k < r->K; k++) s += r->in[i * r->K + k] * r->w[n * r->K + k];
            r->out[i * r->N + n] = s;
        }
}
static double mm_loss(void *ctx) {
    mm_ref *r = ctx;
    mm_ref_fwd(r);
    return dot(r->dout, r->out, (size_t)r->M * r->N);
}

static void matmul_case(int M, int N, int K, bool with_bias) {
    size_t nin = (size_t)M * K, nw = (size_t)N * K, nout = (size_t)M * N;
    float *in = frand(nin, -1, 1), *w = frand(nw, -1, 1), *bias = frand(N, -1, 1);
    float *dout = frand(nout, -1, 1), *out = frand(nout, -9, 9);
    mm_ref r = {
        M,           N, K, dcopy(in, nin), dcopy(w, nw), with_bias ? dcopy(bias, N) : NULL, dcopy(dout, nout),
        dzeros(nout)};
    mm_ref_fwd(&r);
    be->ops->matmul_fwd(be, out, WAN_F32, in, WAN_F32, w, with_bias ? bias : NULL, M, N, K);
    CHECK_CLOSE("matmul_fwd out", out, r.out, nout, 1e-5);

    double *gin = dzeros(nin), *gw = dzeros(nw), *gb = dzeros(N);
    fd_grad(mm_loss, &r, r.in, nin, gin);
    fd_grad(mm_loss, &r, r.w, nw, gw);
    if (with_bias)
        fd_grad(mm_loss, &r, r.bias, N, gb);
    else
        for (int n = 0; n < N; n++) /* db is the column sum either way */
            for (int i = 0; i < M; i++) gb[n] += dout[i * N + n];

    /* din written (over garbage), dw and db accumulated onto random values */
    float *din = frand(nin, -5, 5), *dw0 = frand(nw, -1, 1), *db0 = frand(N, -1, 1);
    float *dw = fdup(dw0, nw), *db = fdup(db0, N);
    be->ops->matmul_bwd(be, din, WAN_F32, false, dw, db, dout, WAN_F32, in, WAN_F32, w, M, N, K);
    double *want_dw = plus(dw0, gw, nw), *want_db = plus(db0, gb, N);
    CHECK_CLOSE("matmul_bwd din", din, gin, nin, 1e-4);
    CHECK_CLOSE("matmul_bwd dw (+=)", dw, want_dw, nw, 1e-4);
    CHECK_CLOSE("matmul_bwd db (+=)", db, want_db, N, 1e-4);

    /* din accumulated; dw, db not wanted (NULL) */
    float *din0 = frand(nin, -1, 1), *din2 = fdup(din0, nin);
    be->ops->matmul_bwd(be, din2, WAN_F32, true, NULL, NULL, dout, WAN_F32, in, WAN_F32, w, M, N, K);
    double *want_din = plus(din0, gin, nin);
    CHECK_CLOSE("matmul_bwd din (+=)", din2, want_din, nin, 1e-4);

    free(in), free(w), free(bias), free(dout), free(out), free(r.in), free(r.w), free(r.bias);
    free(r.dout), free(r.out), free(gin), free(gw), free(gb), free(din), free(dw0), free(db0);
    free(dw), free(db), free(want_dw), free(want_db), free(din0), free(din2), free(want_din);
}

static void test_matmul(void) {
    matmul_case(7, 5, 9, true);
    matmul_case(7, 5, 9, false);
    matmul_case(37, 70, 23, true); /* more columns than one reduction tile */
}

/* ---------------- the FFN's GEMM + GELU pairs ---------------- */

static double gelu_ref(double x);

/* The second FFN layer as a function of the GELU's input: y = gelu(h) @ w^T, loss = dout . y */
typedef struct {
    int M, N, K; /* h [M, K], w [N, K], dout [M, N] */
    double *h, *w, *dout;
} ffn_ref;
static double ffn_loss(void *ctx) {
    ffn_ref *r = ctx;
    double loss = 0;
    for (int i = 0; i < r->M; i++)
        for (int n = 0; n < r->N; n++) {
            double y = 0;
            for (int k = 0; k < r->K; k++) y += gelu_ref(r->h[i * r->K + k]) * r->w[n * r->K + k];
            loss += r->dout[i * r->N + n] * y;
        }
    return loss;
}

static void matmul_gelu_case(int M, int F, int D) {
    /* forward: h [M, F] = x [M, D] @ w1^T + b1, g = gelu(h), against the double reference */
    size_t nx = (size_t)M * D, nw = (size_t)F * D, nh = (size_t)M * F;
    float *x = frand(nx, -1, 1), *w1 = frand(nw, -0.6f, 0.6f), *b1 = frand(F, -1, 1);
    float *h = frand(nh, -9, 9), *g = frand(nh, -9, 9);
    mm_ref r = {M, F, D, dcopy(x, nx), dcopy(w1, nw), dcopy(b1, F), NULL, dzeros(nh)};
    mm_ref_fwd(&r);
    double *gwant = dzeros(nh);
    for (size_t i = 0; i < nh; i++) gwant[i] = gelu_ref(r.out[i]);
    be->ops->matmul_gelu_fwd(be, g, h, x, w1, b1, M, F, D);
    CHECK_CLOSE("matmul_gelu_fwd h", h, r.out, nh, 1e-5);
    CHECK_CLOSE("matmul_gelu_fwd g", g, gwant, nh, 1e-5);

    /* backward of the next layer through the GELU: dh [M, F] = gelu'(h) * (dout [M, D] @ w2),
     * w2 [D, F], against central differences of the loss in h */
    float *w2 = frand(nw, -1, 1), *dout = frand((size_t)M * D, -1, 1), *dh = frand(nh, -9, 9);
    ffn_ref f = {M, D, F, dcopy(h, nh), dcopy(w2, nw), dcopy(dout, (size_t)M * D)};
    double *dhwant = dzeros(nh);
    fd_grad(ffn_loss, &f, f.h, nh, dhwant);
    be->ops->matmul_dgelu_bwd(be, dh, dout, w2, h, M, D, F);
    CHECK_CLOSE("matmul_dgelu_bwd dh", dh, dhwant, nh, 1e-4);

    free(x), free(w1), free(b1), free(h), free(g), free(r.in), free(r.w), free(r.bias), free(r.out), free(gwant);
    free(w2), free(dout), free(dh), free(f.h), free(f.w), free(f.dout), free(dhwant);
}

static void test_matmul_gelu(void) {
    matmul_gelu_case(7, 6, 5);
    matmul_gelu_case(19, 37, 11);
}

/* ---------------- LayerNorm ---------------- */

typedef struct {
    int T, D, stride, nsamp;
    wan_tokens tk;
    double eps;
    double *x, *w, *b, *mod, *dout, *out, *mean, *rstd;
    bool affine, modulated;
} ln_ref;

static void ln_ref_fwd(ln_ref *r) {
    for (int i = 0; i < r->T; i++) {
        const double *x = r->x + (size_t)i * r->D;
        double mu = 0, var = 0;
        for (int j = 0; j < r->D; j++) mu += x[j];
        mu /= r->D;
        for (int j = 0; j < r->D; j++) var += (x[j] - mu) * (x[j] - mu);
        var /= r->D;
        double rs = 1 / sqrt(var + r->eps);
        r->mean[i] = mu, r->rstd[i] = rs;
        int smp = (r->tk.tok0 + i) / r->tk.S_local;
        const double *shift = r->mod + (size_t)smp * r->stride, *scale = shift + r->D;
        for (int j = 0; j < r->D; j++) {
            double y = (x[j] - mu) * rs;
            if (r->affine) y = y * r->w[j] + r->b[j];
            if (r->modulated) y = y * (1 + scale[j]) + shift[j];
            r->out[(size_t)i * r->D + j] = y;
        }
    }
}
static double ln_loss(void *ctx) {
    ln_ref *r = ctx;
    ln_ref_fwd(r);
    return dot(r->dout, r->out, (size_t)r->T * r->D);
}

static void layernorm_case(bool affine, bool modulated) {
    /* rows 0..6 are tokens 3..9 of samples with 4 tokens each: samples 0, 1, 2 */
    int T = 7, D = 70, nsamp = 3, stride = 6 * D;
    wan_tokens tk = {.T = T, .tok0 = 3, .S_local = 4, .pos0 = 0};
    size_t n = (size_t)T * D, nmod = (size_t)nsamp * stride;
    float eps = 1e-5f;
    float *x = frand(n, -2, 3), *w = frand(D, 0.5, 1.5), *b = frand(D, -1, 1);
    float *mod = frand(nmod, -0.5, 0.5), *dout = frand(n, -1, 1);
    float *out = frand(n, -1, 1), *mean = frand(T, -1, 1), *rstd = frand(T, -1, 1);
    ln_ref r = {T,           D,           stride,           nsamp,          tk,        eps,       dcopy(x, n),
                dcopy(w, D), dcopy(b, D), dcopy(mod, nmod), dcopy(dout, n), dzeros(n), dzeros(T), dzeros(T),
                affine,      modulated};
    ln_ref_fwd(&r);
    be->ops->layernorm_fwd(be, out, WAN_F32, mean, rstd, x, affine ? w : NULL, affine ? b : NULL,
                           modulated ? mod : NULL, modulated ? mod + D : NULL, stride, tk, D, eps);
    CHECK_CLOSE("layernorm_fwd out", out, r.out, n, 1e-5);
    CHECK_CLOSE("layernorm_fwd mean", mean, r.mean, T, 1e-5);
    CHECK_CLOSE("layernorm_fwd rstd", rstd, r.rstd, T, 1e-5);

    double *gx = dzeros(n), *gw = dzeros(D), *gb = dzeros(D), *gmod = dzeros(nmod);
    fd_grad(ln_loss, &r, r.x, n, gx);
    if (affine) fd_grad(ln_loss, &r, r.w, D, gw), fd_grad(ln_loss, &r, r.b, D, gb);
    if (modulated) fd_grad(ln_loss, &r, r.mod, nmod, gmod);

    float *dx0 = frand(n, -1, 1), *dw0 = frand(D, -1, 1), *db0 = frand(D, -1, 1);
    float *dmod0 = frand(nmod, -1, 1);
    float *dx = fdup(dx0, n), *dw = fdup(dw0, D), *db = fdup(db0, D), *dmod = fdup(dmod0, nmod);
    be->ops->layernorm_bwd(be, dx, affine ? dw : NULL, affine ? db : NULL, modulated ? dmod : NULL,
                           modulated ? dmod + D : NULL, dout, WAN_F32, x, mean, rstd, affine ? w : NULL,
                           modulated ? mod + D : NULL, stride, tk, D);
    double *want_dx = plus(dx0, gx, n), *want_dw = plus(dw0, gw, D), *want_db = plus(db0, gb, D);
    double *want_dmod = plus(dmod0, gmod, nmod); /* unused modulation entries stay as they were */
    CHECK_CLOSE("layernorm_bwd dx (+=)", dx, want_dx, n, 1e-4);
    CHECK_CLOSE("layernorm_bwd dw (+=)", dw, want_dw, D, 1e-4);
    CHECK_CLOSE("layernorm_bwd db (+=)", db, want_db, D, 1e-4);
    CHECK_CLOSE("layernorm_bwd dshift/dscale (+=)", dmod, want_dmod, nmod, 1e-4);

    free(x), free(w), free(b), free(mod), free(dout), free(out), free(mean), free(rstd);
    free(r.x), free(r.w), free(r.b), free(r.mod), free(r.dout), free(r.out), free(r.mean), free(r.rstd);
    free(gx), free(gw), free(gb), free(gmod), free(dx0), free(dw0), free(db0), free(dmod0);
    free(dx), free(dw), free(db), free(dmod), free(want_dx), free(want_dw), free(want_db), free(want_dmod);
}

static void test_layernorm(void) {
    layernorm_case(true, false);  /* norm3: affine */
    layernorm_case(false, true);  /* norm1/norm2/head: modulation */
    layernorm_case(false, false); /* plain */
}

/* ---------------- RMSNorm over the full dim + RoPE ---------------- */

typedef struct {
    int T, D, hd;
    wan_tokens tk;
    double eps;
    bool rope;
    const float *cos, *sin;
    double *x, *w, *dy, *y, *rrms;
} rms_ref;

static void rms_ref_fwd(rms_ref *r) {
    for (int i = 0; i < r->T; i++) {
        const double *x = r->x + (size_t)i * r->D;
        double *y = r->y + (size_t)i * r->D;
        double ss = 0;
        for (int j = 0; j < r->D; j++) ss += x[j] * x[j];
        double rr = 1 / sqrt(ss / r->D + r->eps);
        r->rrms[i] = rr;
        for (int j = 0; j < r->D; j++) y[j] = x[j] * rr * r->w[j];
        if (!r->rope) continue;
        int pos = r->tk.pos0 + (r->tk.tok0 + i) % r->tk.S_local;
        for (int h = 0; h < r->D / r->hd; h++)
            for (int p = 0; p < r->hd / 2; p++) {
                double c = r->cos[pos * (r->hd / 2) + p], s = r->sin[pos * (r->hd / 2) + p];
                double *e = y + h * r->hd + 2 * p, a = e[0], b = e[1];
                e[0] = a * c - b * s;
                e[1] = a * s + b * c;
            }
    }
}
static double rms_loss(void *ctx) {
    rms_ref *r = ctx;
    rms_ref_fwd(r);
    return dot(r->dy, r->y, (size_t)r->T * r->D);
}

/* Strided copies between a dense [T, D] array and columns [col0, col0 + D) of rows of ld. */
static void put_cols(float *buf, int ld, int col0, const float *dense, int T, int D) {
    for (int i = 0; i < T; i++) memcpy(buf + (size_t)i * ld + col0, dense + (size_t)i * D, D * sizeof(float));
}
static void get_cols(float *dense, const float *buf, int ld, int col0, int T, int D) {
    for (int i = 0; i < T; i++) memcpy(dense + (size_t)i * D, buf + (size_t)i * ld + col0, D * sizeof(float));
}

/* parts = number of tensor-parallel pieces the full dim is split into (whole heads each). */
static void rms_case(bool rope, int parts) {
    int T = 6, heads = 2, hd = 6, D = heads * hd, S_full = 16;
    wan_tokens tk = {.T = T, .tok0 = 5, .S_local = 4, .pos0 = 8}; /* context-parallel rank 2 */
    int ldx = 3 * D + 2, ldy = D + 3, col0 = D + 1;               /* x: the k block of a fused qkv */
    size_t n = (size_t)T * D;
    float eps = 1e-6f;
    float *x = frand(n, -2, 2), *w = frand(D, 0.5, 1.5), *dyd = frand(n, -1, 1);
    float *cs = malloc(S_full * hd / 2 * sizeof(float)), *sn = malloc(S_full * hd / 2 * sizeof(float));
    for (int i = 0; i < S_full * hd / 2; i++) {
        double a = 6.283185307179586 * urand();
        cs[i] = (float)cos(a), sn[i] = (float)sin(a);
    }
    wan_rope table = {cs, sn, hd};
    rms_ref r = {T,         D,        hd, tk, eps, rope, cs, sn, dcopy(x, n), dcopy(w, D), dcopy(dyd, n),
                 dzeros(n), dzeros(T)};
    rms_ref_fwd(&r);

    float *xbuf = frand((size_t)T * ldx, -9, 9), *ybuf = frand((size_t)T * ldy, -9, 9);
    put_cols(xbuf, ldx, col0, x, T, D);
    float *ybuf0 = fdup(ybuf, (size_t)T * ldy);
    int Dl = D / parts;
    float *ss = calloc(T, sizeof(float)), *part = malloc(T * sizeof(float)),
          *rrms = malloc(T * sizeof(float));
    for (int k = 0; k < parts; k++) { /* each rank's columns, then the all-reduce */
        be->ops->rms_sumsq(be, part, xbuf + col0 + k * Dl, ldx, T, Dl);
        for (int i = 0; i < T; i++) ss[i] += part[i];
    }
    for (int k = 0; k < parts; k++)
        be->ops->rms_rope_fwd(be, ybuf + k * Dl, ldy, rrms, xbuf + col0 + k * Dl, ldx, ss, w + k * Dl,
                              rope ? &table : NULL, tk, Dl, D, eps);
    float *y = malloc(n * sizeof(float));
    get_cols(y, ybuf, ldy, 0, T, D);
    CHECK_CLOSE("rms_rope_fwd y", y, r.y, n, 1e-5);
    CHECK_CLOSE("rms_rope_fwd rrms", rrms, r.rrms, T, 1e-5);
    bool pad_kept = true; /* the columns past D of each y row are not touched */
    for (int i = 0; i < T; i++)
        for (int j = D; j < ldy; j++) pad_kept &= ybuf[(size_t)i * ldy + j] == ybuf0[(size_t)i * ldy + j];
    CHECK(pad_kept);

    double *gx = dzeros(n), *gw = dzeros(D);
    fd_grad(rms_loss, &r, r.x, n, gx);
    fd_grad(rms_loss, &r, r.w, D, gw);
    float *dybuf = frand((size_t)T * ldy, -9, 9), *dxbuf = frand((size_t)T * ldx, -9, 9);
    put_cols(dybuf, ldy, 0, dyd, T, D);
    float *dw0 = frand(D, -1, 1), *dw = fdup(dw0, D), *dotv = calloc(T, sizeof(float));
    for (int k = 0; k < parts; k++) {
        be->ops->rms_rope_bwd_dot(be, part, dw + k * Dl, dybuf + k * Dl, ldy, xbuf + col0 + k * Dl, ldx, rrms,
                                  w + k * Dl, rope ? &table : NULL, tk, Dl);
        for (int i = 0; i < T; i++) dotv[i] += part[i];
    }
    for (int k = 0; k < parts; k++)
        be->ops->rms_bwd_dx(be, dxbuf + col0 + k * Dl, ldx, dybuf + k * Dl, ldy, xbuf + col0 + k * Dl, ldx,
                            rrms, dotv, w + k * Dl, T, Dl, D);
    float *dx = malloc(n * sizeof(float));
    get_cols(dx, dxbuf, ldx, col0, T, D);
    double *want_dw = plus(dw0, gw, D);
    CHECK_CLOSE("rms_bwd_dx dx", dx, gx, n, 1e-4);
    CHECK_CLOSE("rms_rope_bwd_dot dw (+=)", dw, want_dw, D, 1e-4);

    /* in place: dx written over dy (same buffer and stride) gives the same dx */
    if (parts == 1) {
        float *g = fdup(dybuf, (size_t)T * ldy);
        put_cols(g, ldy, 0, dyd, T, D);
        be->ops->rms_rope_bwd_dot(be, dotv, NULL, g, ldy, xbuf + col0, ldx, rrms, w, rope ? &table : NULL, tk,
                                  D);
        be->ops->rms_bwd_dx(be, g, ldy, g, ldy, xbuf + col0, ldx, rrms, dotv, w, T, D, D);
        get_cols(dx, g, ldy, 0, T, D);
        CHECK_CLOSE("rms_bwd_dx in place", dx, gx, n, 1e-4);
        free(g);
    }

    free(x), free(w), free(dyd), free(cs), free(sn), free(r.x), free(r.w), free(r.dy), free(r.y);
    free(r.rrms), free(xbuf), free(ybuf), free(ybuf0), free(ss), free(part), free(rrms), free(y);
    free(gx), free(gw), free(dybuf), free(dxbuf), free(dw0), free(dw), free(dotv), free(dx), free(want_dw);
}

static void test_rms_rope(void) {
    rms_case(true, 1);
    rms_case(true, 2); /* tensor parallel: sums all-reduced between the phases */
    rms_case(false, 1);
    rms_case(false, 2);
}

/* ---------------- GELU, SiLU ---------------- */

static double gelu_ref(double x) { return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }
static double silu_ref(double x) { return x / (1 + exp(-x)); }

static void activation_case(const char *name, double (*f)(double), bool gelu) {
    enum { N = 301 };
    float *x = frand(N, -9, 9), *dout = frand(N, -1, 1), *y = frand(N, -1, 1), *din = frand(N, -1, 1);
    const float special[] = {0.0f, -0.0f, 1e-20f, -1e-20f, 30.0f, -30.0f, 100.0f, -100.0f, 1e-4f, -3e-3f};
    memcpy(x, special, sizeof special);
    double want[N], gwant[N];
    for (int i = 0; i < N; i++) {
        double h = 1e-5 * fmax(1.0, fabs(x[i]));
        want[i] = f(x[i]);
        gwant[i] = dout[i] * (f(x[i] + h) - f(x[i] - h)) / (2 * h);
    }
    if (gelu) {
        be->ops->gelu_fwd(be, y, x, N);
        be->ops->gelu_bwd(be, din, dout, x, N);
    } else {
        be->ops->silu_fwd(be, y, x, N);
        be->ops->silu_bwd(be, din, dout, x, N);
    }
    for (int i = 0; i < N; i++) {
        /* element by element, at the scale of x: in the far negative tail the float rounding of
         * the exponent's argument (relative 6e-8 of |x|^3) dominates the tiny output */
        CHECKF(fabs(y[i] - want[i]) <= 1e-6 * fmax(fabs(want[i]), 0.01 * fabs(x[i])),
               "%s(%g) = %.9g, want %.9g", name, x[i], y[i], want[i]);
        CHECKF(fabs(din[i] - gwant[i]) <= 1e-5 * fmax(fabs(gwant[i]), 1e-4), "%s'(%g) * %g = %.9g, want %.9g",
               name, x[i], dout[i], din[i], gwant[i]);
    }
    free(x), free(dout), free(y), free(din);
}

static void test_activations(void) {
    activation_case("gelu", gelu_ref, true);
    activation_case("silu", silu_ref, false);
}

static void test_expf(void) {
    double worst = 0;
    for (int i = 0; i <= 200000; i++) {
        float x = (float)(-87.0 + 175.0 * i / 200000.0);
        double want = exp((double)x);
        worst = fmax(worst, fabs(cpu_expf(x) - want) / want);
    }
    CHECKF(worst < 2.5 * 5.96e-8, "cpu_expf: worst relative error %.3g", worst);
    CHECK(cpu_expf(0.0f) == 1.0f);
    CHECK(cpu_expf(-100.0f) == 0.0f && cpu_expf(-INFINITY) == 0.0f);
    CHECK(isinf(cpu_expf(100.0f)) && isnan(cpu_expf(NAN)));
}

/* ---------------- gated residual ---------------- */

typedef struct {
    int T, D, stride;
    wan_tokens tk;
    double *y, *bias, *gate, *dx, *out; /* gate: NULL = no gate; out = (y + bias) * gate */
} res_ref;

static double res_loss(void *ctx) {
    res_ref *r = ctx;
    for (int i = 0; i < r->T; i++) {
        int smp = (r->tk.tok0 + i) / r->tk.S_local;
        for (int j = 0; j < r->D; j++) {
            double v = r->y[i * r->D + j] + (r->bias ? r->bias[j] : 0);
            r->out[i * r->D + j] = r->gate ? v * r->gate[smp * r->stride + j] : v;
        }
    }
    return dot(r->dx, r->out, (size_t)r->T * r->D);
}

static void residual_case(bool with_bias, bool with_gate) {
    int T = 9, D = 70, nsamp = 4, stride = 6 * D, goff = 2 * D;
    wan_tokens tk = {.T = T, .tok0 = 2, .S_local = 3, .pos0 = 0}; /* samples 0..3 */
    size_t n = (size_t)T * D, ng = (size_t)nsamp * stride;
    float *x = frand(n, -1, 1), *y = frand(n, -1, 1), *bias = frand(D, -1, 1), *e = frand(ng, -1, 1);
    float *dx = frand(n, -1, 1);
    res_ref r = {T,
                 D,
                 stride,
                 tk,
                 dcopy(y, n),
                 with_bias ? dcopy(bias, D) : NULL,
                 with_gate ? dcopy(e + goff, ng - goff) : NULL,
                 dcopy(dx, n),
                 dzeros(n)};
    res_loss(&r);
    double *want = plus(x, r.out, n);
    be->ops->residual_fwd(be, x, y, with_bias ? bias : NULL, with_gate ? e + goff : NULL, stride, tk, D);
    CHECK_CLOSE("residual_fwd x", x, want, n, 1e-5);

    double *gy = dzeros(n), *gb = dzeros(D), *gg = dzeros(ng - goff);
    fd_grad(res_loss, &r, r.y, n, gy);
    if (with_bias)
        fd_grad(res_loss, &r, r.bias, D, gb);
    else
        for (int i = 0; i < T; i++) /* dbias = sum of dy also without a bias */
            for (int j = 0; j < D; j++) gb[j] += gy[i * D + j];
    if (with_gate) fd_grad(res_loss, &r, r.gate, ng - goff, gg);
    float *dy = frand(n, -9, 9), *db0 = frand(D, -1, 1), *dg0 = frand(ng, -1, 1);
    float *db = fdup(db0, D), *dg = fdup(dg0, ng);
    be->ops->residual_bwd(be, dy, WAN_F32, db, with_gate ? dg + goff : NULL, dx, y, with_bias ? bias : NULL,
                          with_gate ? e + goff : NULL, stride, tk, D);
    double *want_db = plus(db0, gb, D), *want_dg = plus(dg0 + goff, gg, ng - goff);
    CHECK_CLOSE("residual_bwd dy", dy, gy, n, 1e-5);
    CHECK_CLOSE("residual_bwd dbias (+=)", db, want_db, D, 1e-5);
    CHECK_CLOSE("residual_bwd dgate (+=)", dg + goff, want_dg, ng - goff, 1e-5);
    /* in place: dy over dx */
    float *g = fdup(dx, n);
    be->ops->residual_bwd(be, g, WAN_F32, NULL, NULL, g, y, with_bias ? bias : NULL,
                          with_gate ? e + goff : NULL, stride, tk, D);
    CHECK(memcmp(g, dy, n * sizeof(float)) == 0);

    free(x), free(y), free(bias), free(e), free(dx), free(r.y), free(r.bias), free(r.gate), free(r.dx);
    free(r.out), free(want), free(gy), free(gb), free(gg), free(dy), free(db0), free(dg0), free(db);
    free(dg), free(want_db), free(want_dg), free(g);
}

static void test_residual(void) {
    residual_case(true, true);
    residual_case(false, true);
    residual_case(true, false);
    residual_case(false, false);
}

/* ---------------- add, add_bcast, sum_rows ---------------- */

typedef struct {
    size_t n, nb;
    double *a, *b, *dy, *y;
} bcast_ref;
static double bcast_loss(void *ctx) {
    bcast_ref *r = ctx;
    for (size_t i = 0; i < r->n; i++) r->y[i] = r->a[i] + r->b[i % r->nb];
    return dot(r->dy, r->y, r->n);
}

static void test_add(void) {
    size_t n = 1003, nb = 70, nr = 5 * nb;
    float *y = frand(n, -1, 1), *x = frand(n, -1, 1);
    double *xd = dcopy(x, n), *want = plus(y, xd, n);
    be->ops->add(be, y, x, WAN_F32, n);
    CHECK_CLOSE("add", y, want, n, 1e-5);
    free(xd);

    float *a = frand(nr, -1, 1), *b = frand(nb, -1, 1), *out = frand(nr, -9, 9), *dy = frand(nr, -1, 1);
    bcast_ref r = {nr, nb, dcopy(a, nr), dcopy(b, nb), dcopy(dy, nr), dzeros(nr)};
    bcast_loss(&r);
    be->ops->add_bcast(be, out, a, b, nr, nb);
    CHECK_CLOSE("add_bcast", out, r.y, nr, 1e-5);
    double *gb = dzeros(nb);
    fd_grad(bcast_loss, &r, r.b, nb, gb);
    float *db0 = frand(nb, -1, 1), *db = fdup(db0, nb);
    be->ops->sum_rows(be, db, dy, nr, nb);
    double *want_db = plus(db0, gb, nb);
    CHECK_CLOSE("sum_rows (+=)", db, want_db, nb, 1e-5);
    free(y), free(x), free(want), free(a), free(b), free(out), free(dy), free(r.a), free(r.b), free(r.dy);
    free(r.y), free(gb), free(db0), free(db), free(want_db);
}

/* ---------------- timestep embedding ---------------- */

static void test_timestep_embed(void) {
    const float t[] = {0.0f, 1.5f, 999.9f, 437.25f};
    int B = 4;
    for (int freq_dim = 10; freq_dim <= 256; freq_dim += 246) {
        int half = freq_dim / 2;
        float *out = frand((size_t)B * freq_dim, -9, 9);
        be->ops->timestep_embed(be, out, t, B, freq_dim);
        double worst = 0;
        for (int b = 0; b < B; b++)
            for (int i = 0; i < half; i++) {
                double f = exp(-log(10000.0) * i / half), arg = t[b] * f;
                worst = fmax(worst, fabs(out[b * freq_dim + i] - cos(arg)));
                worst = fmax(worst, fabs(out[b * freq_dim + half + i] - sin(arg)));
            }
        CHECKF(worst < 1e-7, "timestep_embed(freq_dim %d): worst error %.3g", freq_dim, worst);
        free(out);
    }
}

/* ---------------- patchify / unpatchify ---------------- */

static void test_patchify(void) {
    int B = 2, C = 3, F = 4, H = 6, W = 4, pt = 2, ph = 3, pw = 2;
    int gf = F / pt, gh = H / ph, gw = W / pw, n_valid = gf * gh * gw, P = C * pt * ph * pw;
    int S_local = 5; /* 2 context-parallel ranks over 10 positions: 2 of padding */
    size_t nlat = (size_t)B * C * F * H * W;
    float *lat = frand(nlat, -1, 1);
    /* expected rows for every (sample, position), both orders, scattered from the latent */
    float *rows_conv = calloc((size_t)B * 2 * S_local * P, sizeof(float));
    float *rows_head = calloc((size_t)B * 2 * S_local * P, sizeof(float));
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int f = 0; f < F; f++)
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++) {
                        int p = ((f / pt) * gh + y / ph) * gw + x / pw;
                        int dt = f % pt, dh = y % ph, dw = x % pw;
                        float v = lat[(((size_t)(b * C + c) * F + f) * H + y) * W + x];
                        size_t row = (size_t)b * 2 * S_local + p;
                        rows_conv[row * P + ((c * pt + dt) * ph + dh) * pw + dw] = v;
                        rows_head[row * P + ((dt * ph + dh) * pw + dw) * C + c] = v;
                    }
    float *back = frand(nlat, -9, 9);
    for (int rank = 0; rank < 2; rank++) { /* each rank's rows: all its tokens in two calls */
        for (int half = 0; half < 2; half++) {
            int T = half ? B * S_local - 3 : 3;
            wan_tokens tk = {.T = T, .tok0 = half ? 3 : 0, .S_local = S_local, .pos0 = rank * S_local};
            for (int order = 0; order < 2; order++) {
                float *out = frand((size_t)T * P, -9, 9);
                be->ops->patchify(be, out, WAN_F32, lat, B, C, F, H, W, pt, ph, pw, order == 1, tk, n_valid);
                bool ok = true;
                for (int i = 0; i < T; i++) {
                    int b = (tk.tok0 + i) / S_local, p = tk.pos0 + (tk.tok0 + i) % S_local;
                    const float *want = (order ? rows_head : rows_conv) + ((size_t)b * 2 * S_local + p) * P;
                    ok &= memcmp(out + (size_t)i * P, want, P * sizeof(float)) == 0; /* padding: zeros */
                }
                CHECKF(ok, "patchify rank %d part %d order %d", rank, half, order);
                if (order == 1) /* and back: every valid token of every rank restores the latent */
                    be->ops->unpatchify(be, back, out, B, C, F, H, W, pt, ph, pw, tk, n_valid);
                free(out);
            }
        }
    }
    CHECK(memcmp(back, lat, nlat * sizeof(float)) == 0);
    /* padding rows are ignored: rows of rank 1 only, with garbage in the padding rows */
    float *rows = frand((size_t)B * S_local * P, -9, 9), *lat2 = frand(nlat, -9, 9), *lat3 = fdup(lat2, nlat);
    wan_tokens tk = {.T = B * S_local, .tok0 = 0, .S_local = S_local, .pos0 = S_local};
    be->ops->unpatchify(be, lat2, rows, B, C, F, H, W, pt, ph, pw, tk, n_valid);
    bool ok = true;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int f = 0; f < F; f++)
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++) {
                        int p = ((f / pt) * gh + y / ph) * gw + x / pw;
                        size_t li = (((size_t)(b * C + c) * F + f) * H + y) * W + x;
                        float want = lat3[li];
                        if (p >= S_local && p < n_valid)
                            want = rows[((size_t)b * S_local + p - S_local) * P +
                                        (((f % pt) * ph + y % ph) * pw + x % pw) * C + c];
                        ok &= lat2[li] == want;
                    }
    CHECK(ok);
    free(lat), free(rows_conv), free(rows_head), free(back), free(rows), free(lat2), free(lat3);
}

/* ---------------- flow loss ---------------- */

static void test_flow_loss(void) {
    int T = 7, P = 70, nsamp = 3, n_valid = 3;
    wan_tokens tk = {.T = T, .tok0 = 3, .S_local = 4, .pos0 = 0}; /* position 3 is padding */
    size_t n = (size_t)T * P;
    float *pred = frand(n, -1, 1), *target = frand(n, -1, 1), *coef = frand(nsamp, 0.5, 2);
    float *dpred = frand(n, -9, 9), *sq0 = frand(nsamp, 0, 1), *sq = fdup(sq0, nsamp);
    double *want_d = dzeros(n), *want_sq = dcopy(sq0, nsamp);
    for (int i = 0; i < T; i++) {
        int b = (tk.tok0 + i) / tk.S_local, p = (tk.tok0 + i) % tk.S_local;
        if (p >= n_valid) continue;
        for (int j = 0; j < P; j++) {
            double d = (double)pred[i * P + j] - target[i * P + j];
            want_d[i * P + j] = coef[b] * d;
            want_sq[b] += d * d;
        }
    }
    be->ops->flow_loss(be, dpred, sq, pred, target, coef, tk, P, n_valid);
    CHECK_CLOSE("flow_loss dpred", dpred, want_d, n, 1e-6);
    CHECK_CLOSE("flow_loss sqsum (+=)", sq, want_sq, nsamp, 1e-6);
    free(pred), free(target), free(coef), free(dpred), free(sq0), free(sq), free(want_d), free(want_sq);
}

/* ---------------- AdamW, sumsq ---------------- */

static void test_adamw(void) {
    size_t n = 1001;
    float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    float *master = frand(n, -1, 1), *m = calloc(n, sizeof(float)), *v = calloc(n, sizeof(float));
    float *param = frand(n, -9, 9);
    double *rm = dcopy(master, n), *rmo = dzeros(n), *rv = dzeros(n);
    for (int step = 1; step <= 3; step++) {
        float *grad = frand(n, -2, 2);
        be->ops->adamw(be, master, m, v, grad, param, n, lr, b1, b2, eps, wd, gs, step);
        for (size_t i = 0; i < n; i++) {
            double g = (double)grad[i] * gs;
            rmo[i] = b1 * rmo[i] + (1 - (double)b1) * g;
            rv[i] = b2 * rv[i] + (1 - (double)b2) * g * g;
            double mhat = rmo[i] / (1 - pow(b1, step)), vhat = rv[i] / (1 - pow(b2, step));
            rm[i] = rm[i] * (1 - (double)lr * wd) - lr * mhat / (sqrt(vhat) + eps);
        }
        free(grad);
    }
    CHECK_CLOSE("adamw master", master, rm, n, 1e-5);
    CHECK_CLOSE("adamw m", m, rmo, n, 1e-5);
    CHECK_CLOSE("adamw v", v, rv, n, 1e-5);
    CHECK(memcmp(param, master, n * sizeof(float)) == 0);
    free(master), free(m), free(v), free(param), free(rm), free(rmo), free(rv);
}

static void test_sumsq(void) {
    size_t n = 100003;
    float *x = frand(n, -3, 3);
    long double want = 0;
    for (size_t i = 0; i < n; i++) want += (long double)x[i] * x[i];
    double got = be->ops->sumsq(be, x, n);
    CHECKF(fabs(got - (double)want) <= 1e-12 * (double)want, "sumsq %.17g, want %.17Lg", got, want);
    CHECK(be->ops->sumsq(be, x, 0) == 0.0);
    free(x);
}

/* ---------------- determinism: 1 thread vs 2 threads ---------------- */

static bool same(const void *a, const void *b, size_t n_floats) { return memcmp(a, b, n_floats * 4) == 0; }

static void test_threads_bit_identical(void) {
    wan_backend *b1 = wan_backend_cpu(1), *b2 = wan_backend_cpu(2);
    WAN_ASSERT(b1 && b2);
    wan_backend *bes[2] = {b1, b2};
    int M = 300, N = 260, K = 200, D = 200;
    float *in = frand((size_t)M * K, -1, 1), *w = frand((size_t)N * K, -1, 1), *bias = frand(N, -1, 1);
    float *dout = frand((size_t)M * N, -1, 1), *x = frand((size_t)M * D, -1, 1),
          *mod = frand(4 * 6 * D, -1, 1);
    float *gd = frand((size_t)M * D, -1, 1), *coef = frand(4, 0.5, 2);
    wan_tokens tk = {.T = M, .tok0 = 50, .S_local = 100, .pos0 = 0}; /* samples 0..3 */
    float *out[2], *din[2], *dw[2], *db[2], *ln[2], *mean[2], *rstd[2], *dx[2], *dmod[2], *dy[2];
    float *dgate[2], *dpred[2], *sq[2], *ge[2];
    double ss[2];
    for (int t = 0; t < 2; t++) {
        wan_backend *e = bes[t];
        out[t] = calloc((size_t)M * N, 4), din[t] = calloc((size_t)M * K, 4),
        dw[t] = calloc((size_t)N * K, 4);
        db[t] = calloc(N, 4), ln[t] = calloc((size_t)M * D, 4), mean[t] = calloc(M, 4),
        rstd[t] = calloc(M, 4);
        dx[t] = calloc((size_t)M * D, 4), dmod[t] = calloc(4 * 6 * D, 4), dy[t] = calloc((size_t)M * D, 4);
        dgate[t] = calloc(4 * 6 * D, 4), dpred[t] = calloc((size_t)M * D, 4), sq[t] = calloc(4, 4);
        ge[t] = calloc((size_t)M * D, 4);
        e->ops->matmul_fwd(e, out[t], WAN_F32, in, WAN_F32, w, bias, M, N, K);
        e->ops->matmul_bwd(e, din[t], WAN_F32, false, dw[t], db[t], dout, WAN_F32, in, WAN_F32, w, M, N, K);
        e->ops->layernorm_fwd(e, ln[t], WAN_F32, mean[t], rstd[t], x, NULL, NULL, mod, mod + D, 6 * D, tk, D,
                              1e-6f);
        e->ops->layernorm_bwd(e, dx[t], NULL, NULL, dmod[t], dmod[t] + D, gd, WAN_F32, x, mean[t], rstd[t],
                              NULL, mod + D, 6 * D, tk, D);
        e->ops->residual_bwd(e, dy[t], WAN_F32, db[t], dgate[t] + 2 * D, gd, x, bias, mod + 2 * D, 6 * D, tk,
                             D);
        e->ops->flow_loss(e, dpred[t], sq[t], x, gd, coef, tk, D, 90);
        e->ops->gelu_bwd(e, ge[t], gd, x, (size_t)M * D);
        ss[t] = e->ops->sumsq(e, dw[t], (size_t)N * K);
    }
    CHECK(same(out[0], out[1], (size_t)M * N));
    CHECK(same(din[0], din[1], (size_t)M * K) && same(dw[0], dw[1], (size_t)N * K) && same(db[0], db[1], N));
    CHECK(same(ln[0], ln[1], (size_t)M * D) && same(mean[0], mean[1], M) && same(rstd[0], rstd[1], M));
    CHECK(same(dx[0], dx[1], (size_t)M * D) && same(dmod[0], dmod[1], 4 * 6 * D));
    CHECK(same(dy[0], dy[1], (size_t)M * D) && same(dgate[0], dgate[1], 4 * 6 * D));
    CHECK(same(dpred[0], dpred[1], (size_t)M * D) && same(sq[0], sq[1], 4));
    CHECK(same(ge[0], ge[1], (size_t)M * D));
    CHECK(memcmp(&ss[0], &ss[1], sizeof(double)) == 0);
    for (int t = 0; t < 2; t++) {
        free(out[t]), free(din[t]), free(dw[t]), free(db[t]), free(ln[t]), free(mean[t]), free(rstd[t]);
        free(dx[t]), free(dmod[t]), free(dy[t]), free(dgate[t]), free(dpred[t]), free(sq[t]), free(ge[t]);
    }
    free(in), free(w), free(bias), free(dout), free(x), free(mod), free(gd), free(coef);
    wan_backend_destroy(b1);
    wan_backend_destroy(b2);
}

/* ---------------- the backend object ---------------- */

static void test_backend(void) {
    CHECK(strcmp(be->name, "cpu") == 0 && be->act == WAN_F32 && be->param == WAN_F32);
    CHECK(strcmp(be->device_name, "CPU (2 threads)") == 0 && be->device_index == -1);
    size_t now0 = be->mem_now, peak0 = be->mem_peak;
    unsigned char *a = be->alloc(be, 1000), *b = be->alloc(be, 3);
    CHECK(a && b && (uintptr_t)a % 64 == 0 && (uintptr_t)b % 64 == 0);
    CHECK(be->mem_now == now0 + 1003 && be->mem_peak >= now0 + 1003 && be->mem_peak >= peak0);
    bool zero = true;
    for (int i = 0; i < 1000; i++) zero &= a[i] == 0;
    CHECK(zero && b[0] == 0 && b[2] == 0);
    memset(a, 0xab, 1000);
    be->free(be, a);
    CHECK(be->mem_now == now0 + 3);
    size_t peak = be->mem_peak;
    unsigned char *c = be->alloc(be, 1000); /* possibly the same memory again: zero-filled anyway */
    zero = true;
    for (int i = 0; i < 1000; i++) zero &= c[i] == 0;
    CHECK(zero && be->mem_peak == peak);
    float src[3] = {1.5f, -2.0f, 3.25f};
    uint16_t half[3];
    float back[3] = {0};
    be->upload(be, c, src, sizeof src);
    be->convert(be, half, WAN_BF16, c, WAN_F32, 3);
    be->convert(be, back, WAN_F32, half, WAN_BF16, 3);
    CHECK(memcmp(back, src, sizeof src) == 0); /* exact in bf16 */
    be->memset0(be, c, sizeof src);
    be->download(be, back, c, sizeof src);
    CHECK(back[0] == 0 && back[2] == 0);
    be->copy(be, c, src, sizeof src);
    be->sync(be);
    CHECK(memcmp(c, src, sizeof src) == 0);
    be->free(be, b);
    be->free(be, c);
    be->free(be, NULL);
    CHECK(be->mem_now == now0);

    wan_backend *all = wan_backend_cpu(0);
    char want[64];
    snprintf(want, sizeof want, "CPU (%d thread%s)", omp_get_num_procs(),
             omp_get_num_procs() == 1 ? "" : "s");
    CHECK(all && strcmp(all->device_name, want) == 0);
    wan_backend_destroy(all);
    wan_error_clear();
    CHECK(wan_backend_cpu(-1) == NULL && strstr(wan_errmsg(), "threads") != NULL);
}

int main(void) {
    be = wan_backend_cpu(2);
    WAN_ASSERT(be);
    RUN(test_backend);
    RUN(test_matmul);
    RUN(test_matmul_gelu);
    RUN(test_layernorm);
    RUN(test_rms_rope);
    RUN(test_expf);
    RUN(test_activations);
    RUN(test_residual);
    RUN(test_add);
    RUN(test_timestep_embed);
    RUN(test_patchify);
    RUN(test_flow_loss);
    RUN(test_adamw);
    RUN(test_sumsq);
    RUN(test_threads_bit_identical);
    wan_backend_destroy(be);
    return test_summary();
}
