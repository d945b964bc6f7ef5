/* gpu_ops: op-level timings of the CUDA backend at the shapes of one Wan 2.1 14B block at the
 * reference sequence length (dim 5120, ffn 13824, 40 heads of 128, 37440 video tokens, 512 text
 * rows, one sample, no model parallelism): every GEMM the block runs (forward, input gradient,
 * weight gradient) in TFLOP/s, self- and cross-attention forward and backward in TFLOP/s, and
 * the memory-bound ops in GB/s (the fewest bytes each must move). Then the sum over the block's
 * forward and backward, with the model TFLOP/s that sum would give by the Wan formula
 * (lib/flops.h): an op sum, not a measured block step.
 *
 *   gpu_ops [--seq S] [--dim D] [--ffn F] [--heads H] [--text L] [--reps N] [--device N] [--only S]
 *
 * Each op: 3 warm-up runs, then --reps timed runs (synchronised before and after each; median).
 * Inputs are random (never zeros). Exit 1 when the CUDA backend cannot start. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "error.h"
#include "log.h"
#include "ops.h"
#include "rng.h"

static wan_backend *be;
static int reps = 10, warmup = 3;
static const char *only;
static double block_ms, block_flops; /* sums over the ops one block runs, forward + backward */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *t, int n) {
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* Median seconds of `code` over reps runs after the warm-up. */
#define TIME_MEDIAN(out, code)                                                                     \
    do {                                                                                           \
        for (int w_ = 0; w_ < warmup; w_++) {                                                      \
            code;                                                                                  \
        }                                                                                          \
        be->sync(be);                                                                              \
        double ts_[64];                                                                            \
        for (int r_ = 0; r_ < reps; r_++) {                                                        \
            double t0_ = wan_now();                                                                \
            code;                                                                                  \
            be->sync(be);                                                                          \
            ts_[r_] = wan_now() - t0_;                                                             \
        }                                                                                          \
        (out) = median(ts_, reps);                                                                 \
    } while (0)

/* A device buffer of n random values (normal * sd; |normal| * -sd when sd < 0, for second
 * moments) of dtype dt, uploaded tile by tile. */
static void *rand_buf(size_t n, wan_dtype dt, float sd) {
    static float *tile, *scaled;
    static void *conv;
    const size_t tn = (size_t)1 << 20;
    if (!tile) {
        tile = malloc(tn * sizeof(float));
        scaled = malloc(tn * sizeof(float));
        conv = malloc(tn * sizeof(float));
        wan_rand_normal_fill(tile, tn, 1234, WAN_RNG_EVAL, 0, 0, 0);
    }
    size_t esz = wan_dtype_size(dt);
    void *d = be->alloc(be, n * esz);
    for (size_t i = 0; i < tn; i++) scaled[i] = sd < 0 ? fabsf(tile[i]) * -sd : tile[i] * sd;
    wan_convert(conv, dt, scaled, WAN_F32, tn);
    for (size_t off = 0; off < n; off += tn) {
        size_t k = n - off < tn ? n - off : tn;
        be->upload(be, (char *)d + off * esz, conv, k * esz);
    }
    return d;
}

static bool selected(const char *name) { return !only || strstr(name, only); }

static void row(const char *name, const char *shape, double sec, double flops, double bytes, bool in_block) {
    printf("%-34s %-22s %9.3f", name, shape, sec * 1e3);
    if (flops > 0) printf(" %9.1f", flops / sec / 1e12);
    else printf(" %9s", "-");
    if (bytes > 0) printf(" %9.0f", bytes / sec / 1e9);
    else printf(" %9s", "-");
    printf("\n");
    fflush(stdout);
    if (in_block) {
        block_ms += sec * 1e3;
        block_flops += flops;
    }
}

/* Which of a Linear's products the block runs through the plain matmul ops (the FFN's forward in
 * and input gradient out are fused with the GELU: bench_ffn_gelu). */
enum { LIN_FWD = 1, LIN_DIN = 2, LIN_DW = 4, LIN_ALL = 7 };

/* One Linear of the block as the model calls it: forward, input gradient, weight (+ bias)
 * gradient; M rows, N outputs, K inputs. */
static void bench_linear(const char *name, int M, int N, int K, wan_dtype out_dt, bool bias, wan_dtype din_dt,
                         bool din_acc, int which) {
    if (!selected(name)) return;
    wan_dtype act = be->act;
    void *in = rand_buf((size_t)M * K, act, 1.0f), *w = rand_buf((size_t)N * K, be->param, 0.02f);
    void *b = bias ? rand_buf(N, be->param, 0.1f) : NULL;
    void *out = rand_buf((size_t)M * N, out_dt, 1.0f), *dout = rand_buf((size_t)M * N, act, 1.0f);
    void *din = rand_buf((size_t)M * K, din_dt, 1.0f);
    float *dw = rand_buf((size_t)N * K, WAN_F32, 1.0f), *db = bias ? rand_buf(N, WAN_F32, 1.0f) : NULL;
    double flops = 2.0 * M * N * K, t;
    char shape[64], label[96];
    snprintf(shape, sizeof shape, "%dx%dx%d", M, N, K);
    if (which & LIN_FWD) {
        snprintf(label, sizeof label, "%s fwd", name);
        TIME_MEDIAN(t, be->ops->matmul_fwd(be, out, out_dt, in, act, w, b, M, N, K));
        row(label, shape, t, flops, 0, true);
    }
    if (which & LIN_DIN) {
        snprintf(label, sizeof label, "%s bwd din", name);
        TIME_MEDIAN(t, be->ops->matmul_bwd(be, din, din_dt, din_acc, NULL, NULL, dout, act, in, act, w, M, N, K));
        row(label, shape, t, flops, 0, true);
    }
    snprintf(label, sizeof label, "%s bwd dw%s", name, bias ? "+db" : "");
    TIME_MEDIAN(t, be->ops->matmul_bwd(be, NULL, din_dt, false, dw, db, dout, act, in, act, w, M, N, K));
    row(label, shape, t, flops, 0, true);
    be->free(be, in), be->free(be, w), be->free(be, b), be->free(be, out), be->free(be, dout);
    be->free(be, din), be->free(be, dw), be->free(be, db);
}

/* The FFN's GELU in the GEMM epilogues (what the block runs) against the GEMM and the separate
 * GELU kernel (what it ran before): "where they pay" is this ratio. */
static void bench_ffn_gelu(int S, int D, int F) {
    if (!selected("ffn") && !selected("gelu")) return;
    wan_dtype act = be->act;
    size_t TF = (size_t)S * F;
    void *ln = rand_buf((size_t)S * D, act, 1.0f), *w1 = rand_buf((size_t)F * D, be->param, 0.02f);
    void *b1 = rand_buf(F, be->param, 0.1f), *w2 = rand_buf((size_t)D * F, be->param, 0.02f);
    void *h = rand_buf(TF, act, 1.0f), *g = rand_buf(TF, act, 1.0f), *dh = rand_buf(TF, act, 1.0f);
    void *dy = rand_buf((size_t)S * D, act, 1.0f);
    double flops = 2.0 * S * F * D, fused, split;
    char shape[64];
    snprintf(shape, sizeof shape, "%dx%dx%d", S, F, D);
    TIME_MEDIAN(fused, be->ops->matmul_gelu_fwd(be, g, h, ln, w1, b1, S, F, D));
    row("ffn in fwd + gelu (epilogue)", shape, fused, flops, 0, true);
    TIME_MEDIAN(split, {
        be->ops->matmul_fwd(be, h, act, ln, act, w1, b1, S, F, D);
        be->ops->gelu_fwd(be, g, h, TF);
    });
    row("  the same, gelu kernel after", shape, split, flops, 0, false);
    double ratio_fwd = split / fused;
    snprintf(shape, sizeof shape, "%dx%dx%d", S, D, F);
    TIME_MEDIAN(fused, be->ops->matmul_dgelu_bwd(be, dh, dy, w2, h, S, D, F));
    row("ffn out bwd din + dgelu (epilogue)", shape, fused, flops, 0, true);
    TIME_MEDIAN(split, {
        be->ops->matmul_bwd(be, dh, act, false, NULL, NULL, dy, act, NULL, act, w2, S, D, F);
        be->ops->gelu_bwd(be, dh, dh, h, TF);
    });
    row("  the same, gelu_bwd kernel after", shape, split, flops, 0, false);
    printf("  GELU epilogues: forward %.2fx, backward %.2fx the speed of GEMM + separate kernel\n", ratio_fwd,
           split / fused);
    be->free(be, ln), be->free(be, w1), be->free(be, b1), be->free(be, w2), be->free(be, h), be->free(be, g);
    be->free(be, dh), be->free(be, dy);
}

static void bench_attention(const char *name, int H, int Sq, int Skv) {
    if (!selected(name)) return;
    int hd = 128, D = H * hd;
    wan_dtype act = be->act;
    void *q = rand_buf((size_t)Sq * D, act, 1.0f), *k = rand_buf((size_t)Skv * D, act, 1.0f);
    void *v = rand_buf((size_t)Skv * D, act, 1.0f), *o = rand_buf((size_t)Sq * D, act, 1.0f);
    void *dout = rand_buf((size_t)Sq * D, act, 1.0f), *dq = rand_buf((size_t)Sq * D, act, 1.0f);
    void *dk = rand_buf((size_t)Skv * D, act, 1.0f), *dv = rand_buf((size_t)Skv * D, act, 1.0f);
    float *lse = rand_buf((size_t)H * Sq, WAN_F32, 1.0f);
    float scale = 1.0f / sqrtf((float)hd);
    double fwd = 4.0 * Sq * (double)Skv * D, t; /* q k^T and p v */
    char shape[64], label[96];
    snprintf(shape, sizeof shape, "H%d %dx%d d%d", H, Sq, Skv, hd);
    snprintf(label, sizeof label, "%s fwd", name);
    TIME_MEDIAN(t, be->ops->attention_fwd(be, o, D, lse, q, D, k, D, v, D, 1, H, Sq, Skv, hd, Skv, scale));
    row(label, shape, t, fwd, 0, true);
    snprintf(label, sizeof label, "%s bwd", name);
    TIME_MEDIAN(t, be->ops->attention_bwd(be, dq, D, dk, D, dv, D, false, dout, D, o, D, lse, q, D, k, D, v, D, 1, H,
                                          Sq, Skv, hd, Skv, scale));
    row(label, shape, t, 2.5 * fwd, 0, true); /* 5 products of the forward's size */
    be->free(be, q), be->free(be, k), be->free(be, v), be->free(be, o), be->free(be, dout);
    be->free(be, dq), be->free(be, dk), be->free(be, dv), be->free(be, lse);
}

/* The memory-bound ops of the block, with the bytes each must move at least. */
static void bench_pointwise(int S, int D, int F) {
    wan_dtype act = be->act;
    size_t a = wan_dtype_size(act), p = wan_dtype_size(be->param), TD = (size_t)S * D, TF = (size_t)S * F;
    wan_tokens tk = {S, 0, S, 0};
    char shape[64];
    double t;
    snprintf(shape, sizeof shape, "%dx%d", S, D);
    float *x = rand_buf(TD, WAN_F32, 1.0f), *mod = rand_buf((size_t)6 * D, WAN_F32, 0.1f);
    float *mean = rand_buf(S, WAN_F32, 0.1f), *rstd = rand_buf(S, WAN_F32, 1.0f);
    float *dx = rand_buf(TD, WAN_F32, 1.0f), *dln = rand_buf(TD, WAN_F32, 1.0f), *dmod = rand_buf(6 * D, WAN_F32, 1.0f);
    void *ln = rand_buf(TD, act, 1.0f);
    if (selected("layernorm")) {
        TIME_MEDIAN(t, be->ops->layernorm_fwd(be, ln, act, mean, rstd, x, NULL, NULL, mod, mod + D, 6 * D, tk, D, 1e-6f));
        row("layernorm_fwd (modulated) x3", shape, t, 0, TD * (4 + a), false);
        block_ms += 3 * t * 1e3;
        TIME_MEDIAN(t, be->ops->layernorm_bwd(be, dx, NULL, NULL, dmod, dmod + D, dln, WAN_F32, x, mean, rstd, NULL,
                                              mod + D, 6 * D, tk, D));
        row("layernorm_bwd (modulated) x3", shape, t, 0, TD * 4 * 4.0, false);
        block_ms += 3 * t * 1e3;
    }
    if (selected("residual")) {
        float *y = rand_buf(TD, WAN_F32, 1.0f);
        void *bias = rand_buf(D, be->param, 0.1f), *dy = rand_buf(TD, act, 1.0f);
        float *dbias = rand_buf(D, WAN_F32, 1.0f);
        TIME_MEDIAN(t, be->ops->residual_fwd(be, x, y, bias, mod + 2 * D, 6 * D, tk, D));
        row("residual_fwd (gated) x3", shape, t, 0, TD * 12.0, false);
        block_ms += 3 * t * 1e3;
        TIME_MEDIAN(t, be->ops->residual_bwd(be, dy, act, dbias, dmod + 2 * D, dx, y, bias, mod + 2 * D, 6 * D, tk, D));
        row("residual_bwd (gated) x3", shape, t, 0, TD * (8 + a), false);
        block_ms += 3 * t * 1e3;
        be->free(be, y), be->free(be, bias), be->free(be, dy), be->free(be, dbias);
    }
    if (selected("rms")) {
        int Dl = D;
        void *qk = rand_buf(2 * TD, act, 1.0f), *qn = rand_buf(TD, act, 1.0f), *w = rand_buf(D, be->param, 1.0f);
        float *ss = rand_buf(S, WAN_F32, 1.0f), *rr = rand_buf(S, WAN_F32, 1.0f), *dot = rand_buf(S, WAN_F32, 1.0f);
        float *dw = rand_buf(D, WAN_F32, 1.0f);
        int hd = 128;
        float *cs = rand_buf((size_t)S * hd / 2, WAN_F32, 0.5f), *sn = rand_buf((size_t)S * hd / 2, WAN_F32, 0.5f);
        wan_rope rope = {cs, sn, hd};
        TIME_MEDIAN(t, {
            be->ops->rms_sumsq(be, ss, qk, 2 * Dl, S, Dl);
            be->ops->rms_rope_fwd(be, qn, Dl, rr, qk, 2 * Dl, ss, w, &rope, tk, Dl, D, 1e-6f);
        });
        row("rms_sumsq + rms_rope_fwd x3", shape, t, 0, TD * 3.0 * a, false);
        block_ms += 3 * t * 1e3;
        TIME_MEDIAN(t, {
            be->ops->rms_rope_bwd_dot(be, dot, dw, qn, Dl, qk, 2 * Dl, rr, w, &rope, tk, Dl);
            be->ops->rms_bwd_dx(be, qn, Dl, qn, Dl, qk, 2 * Dl, rr, dot, w, S, Dl, D);
        });
        row("rms_rope_bwd_dot + bwd_dx x3", shape, t, 0, TD * 8.0 * a, false);
        block_ms += 3 * t * 1e3;
        be->free(be, qk), be->free(be, qn), be->free(be, w), be->free(be, ss), be->free(be, rr);
        be->free(be, dot), be->free(be, dw), be->free(be, cs), be->free(be, sn);
    }
    if (selected("gelu")) {
        void *h = rand_buf(TF, act, 1.0f), *g = rand_buf(TF, act, 1.0f);
        snprintf(shape, sizeof shape, "%dx%d", S, F);
        /* not in the block's sum: it runs the GELU in the GEMM epilogues (bench_ffn_gelu) */
        TIME_MEDIAN(t, be->ops->gelu_fwd(be, g, h, TF));
        row("gelu_fwd (kernel alone)", shape, t, 0, TF * 2.0 * a, false);
        TIME_MEDIAN(t, be->ops->gelu_bwd(be, g, g, h, TF));
        row("gelu_bwd (kernel alone)", shape, t, 0, TF * 3.0 * a, false);
        be->free(be, h), be->free(be, g);
    }
    if (selected("adamw")) { /* one block's parameters */
        size_t n = (size_t)8 * D * D + (size_t)2 * D * F;
        float *master = rand_buf(n, WAN_F32, 1.0f), *m = rand_buf(n, WAN_F32, 0.1f), *v = rand_buf(n, WAN_F32, -0.01f);
        float *g = rand_buf(n, WAN_F32, 1.0f);
        void *param = rand_buf(n, be->param, 1.0f);
        snprintf(shape, sizeof shape, "%zu params", n);
        TIME_MEDIAN(t, be->ops->adamw(be, master, m, v, g, param, n, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1));
        row("adamw (one block's parameters)", shape, t, 0, n * (16.0 + 12 + p), false);
        TIME_MEDIAN(t, (void)be->ops->sumsq(be, g, n));
        row("sumsq (one block's gradients)", shape, t, 0, n * 4.0, false);
        be->free(be, master), be->free(be, m), be->free(be, v), be->free(be, g), be->free(be, param);
    }
    be->free(be, x), be->free(be, mod), be->free(be, mean), be->free(be, rstd), be->free(be, dx);
    be->free(be, dln), be->free(be, dmod), be->free(be, ln);
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"seq", required_argument, 0, 's'},   {"dim", required_argument, 0, 'd'},
                                         {"ffn", required_argument, 0, 'f'},   {"heads", required_argument, 0, 'H'},
                                         {"text", required_argument, 0, 'l'},  {"reps", required_argument, 0, 'r'},
                                         {"device", required_argument, 0, 'g'}, {"only", required_argument, 0, 'o'},
                                         {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    int S = 37440, D = 5120, F = 13824, H = 40, L = 512, device = 0, c;
    while ((c = getopt_long(argc, argv, "s:d:f:H:l:r:g:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 's': S = atoi(optarg); break;
        case 'd': D = atoi(optarg); break;
        case 'f': F = atoi(optarg); break;
        case 'H': H = atoi(optarg); break;
        case 'l': L = atoi(optarg); break;
        case 'r': reps = atoi(optarg); break;
        case 'g': device = atoi(optarg); break;
        case 'o': only = optarg; break;
        case 'h':
            printf("Usage: gpu_ops [--seq S] [--dim D] [--ffn F] [--heads H] [--text L] [--reps N] [--device N] "
                   "[--only S]\n");
            return 0;
        default: return 2;
        }
    }
    if (reps < 1 || reps > 64 || S < 1 || D < 128 || D % 128 || F < 1 || H * 128 != D || L < 1) {
        fprintf(stderr, "gpu_ops: bad sizes (reps 1..64; dim = heads * 128)\n");
        return 2;
    }
    if (wan_backend_cuda(device, &be)) {
        wan_error_print("gpu_ops");
        return 1;
    }
    printf("gpu_ops: %s; block of dim %d, ffn %d, %d heads, %d video tokens, %d text rows; median of %d\n",
           be->device_name, D, F, H, S, L, reps);
    printf("%-34s %-22s %9s %9s %9s\n", "op", "shape (MxNxK)", "ms", "TFLOP/s", "GB/s");
    wan_dtype act = be->act;
    /* the GEMMs of model_block.c, with its output and gradient types */
    bench_linear("self q|k", S, 2 * D, D, act, true, WAN_F32, false, LIN_ALL);
    bench_linear("self v", S, D, D, act, true, WAN_F32, true, LIN_ALL);
    bench_linear("self o", S, D, D, WAN_F32, false, act, false, LIN_ALL);
    bench_linear("cross q", S, D, D, act, true, WAN_F32, false, LIN_ALL);
    bench_linear("cross k|v (text)", L, 2 * D, D, act, true, WAN_F32, true, LIN_ALL);
    bench_linear("cross o", S, D, D, WAN_F32, false, act, false, LIN_ALL);
    bench_linear("ffn in", S, F, D, act, true, WAN_F32, false, LIN_DIN | LIN_DW);
    bench_linear("ffn out", S, D, F, WAN_F32, false, act, false, LIN_FWD | LIN_DW);
    bench_ffn_gelu(S, D, F);
    bench_attention("self-attention", H, S, S);
    bench_attention("cross-attention", H, S, L);
    bench_pointwise(S, D, F);
    if (!only) {
        /* Model FLOPs of one layer (lib/flops.h, per sample): self + cross + mlp, times 3 */
        double s = S, h = D, cc = L;
        double layer = 3 * ((2 * s * h * 3 * h + 4 * s * s * h + 2 * s * h * h) +
                            (2 * s * h * h + 4 * cc * h * h + 4 * s * cc * h + 2 * s * h * h) + 4 * s * h * F);
        printf("sum over one block (fwd + bwd)    %-22s %9.3f %9.1f %9s   <- op sum, not a measured step\n", "",
               block_ms, layer / (block_ms * 1e-3) / 1e12, "");
        printf("  (GEMM + attention FLOPs timed: %.3e; Wan formula per layer: %.3e)\n", block_flops, layer);
    }
    printf("peak GPU memory %.2f GiB\n", be->mem_peak / 1073741824.0);
    wan_backend_destroy(be);
    return 0;
}
