/* Private to the CPU backend (lib/ops_cpu*.c): the backend's state, the op entry points that
 * ops_cpu.c puts in its table, and small helpers shared by the op files.
 *
 * Determinism: every result is bit-identical for any thread count. Rows are independent; a
 * reduction over rows (parameter gradients) is done per column, sequentially over the rows in
 * double, so the thread that owns a column never changes the order of its sum; other
 * reductions (sumsq, flow_loss) use fixed-size chunks summed in chunk order. Matrix products
 * are split into output tiles chosen from the shape alone, each computed by a single-threaded
 * OpenBLAS call (OpenBLAS's own threading changes results with the thread count). */
#ifndef WAN_OPS_CPU_INTERNAL_H
#define WAN_OPS_CPU_INTERNAL_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dtype.h"
#include "error.h"
#include "ops.h"

typedef struct {
    int threads; /* OpenMP and OpenBLAS threads of every op */
} cpu_state;

static inline int cpu_threads(const wan_backend *be) { return ((const cpu_state *)be->impl)->threads; }

/* OpenMP regions of the ops run with the backend's thread count and OpenBLAS with one (the
 * ops split matrix products themselves). Called by the ops that call OpenBLAS. */
void cpu_use_threads(const wan_backend *be);

/* C[M,N] = alpha op(A) op(B) + beta C (row-major; op = transpose when ta/tb), over `threads`
 * threads (1 inside a parallel region): bit-identical results for any thread count. The output
 * is split into about target_tiles tiles (fewer where the matrix is small): more tiles share
 * the work among more threads, fewer run OpenBLAS more efficiently. */
void cpu_gemm(int threads, int target_tiles, bool ta, bool tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
#define CPU_TILES_LINEAR    16 /* Linear layers: the whole op, split for up to 16 threads */
#define CPU_TILES_ATTENTION 8  /* attention: mostly one head per thread already */

/* Every tensor on the CPU backend is fp32. */
#define CPU_F32(dt) WAN_ASSERT((dt) == WAN_F32)

/* Scratch memory for one op: 64-byte aligned; out of memory is fatal (ops return nothing). */
void *cpu_scratch(size_t bytes);

/* Sample and global position of row i of tk (see wan_tokens). */
static inline int cpu_tok_sample(wan_tokens tk, int i) { return (tk.tok0 + i) / tk.S_local; }
static inline int cpu_tok_pos(wan_tokens tk, int i) { return tk.pos0 + (tk.tok0 + i) % tk.S_local; }
/* One past the last row of the sample that row i belongs to (clipped to tk.T). */
static inline int cpu_tok_sample_end(wan_tokens tk, int i) {
    int end = (cpu_tok_sample(tk, i) + 1) * tk.S_local - tk.tok0;
    return end < tk.T ? end : tk.T;
}

/* Column tiles for reductions over rows: one tile's double accumulators live on the stack. */
#define CPU_COL_TILE 64

/* exp(x) for x <= 88 in float arithmetic that the compiler can vectorize (glibc's expf cannot
 * be vectorized without -ffast-math): 2^n * e^r with |r| <= ln2/2 and a degree-7 Taylor
 * polynomial, within 2 ulp of exp over the normal range. Below -88 it returns 0 (the exact
 * value is subnormal), above 88 +inf, NaN stays NaN. Branch-free (bit masks) so that loops
 * marked `omp simd` vectorize. */
static inline float cpu_expf(float x) {
    uint32_t xb = wan_f32_bits(x);
    int32_t ax = (int32_t)(xb & 0x7fffffffu);
    uint32_t out_of_range = 0u - (uint32_t)(ax > 0x42b00000);             /* |x| > 88 or NaN */
    float xr = wan_bits_f32(xb & ~out_of_range);                          /* 0 there: keeps n in range */
    float n = (xr * 1.44269504088896341f + 12582912.0f) - 12582912.0f;    /* round(x / ln2) */
    float r = xr - n * 0.693145751953125f - n * 1.428606820309417232e-6f; /* ln2 in two parts */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t two_n = (uint32_t)((int32_t)n + 127) << 23;
    uint32_t y = wan_f32_bits(p * wan_bits_f32(two_n));
    uint32_t is_nan = 0u - (uint32_t)(ax > 0x7f800000);
    uint32_t positive = (xb >> 31) - 1u;
    uint32_t limit = (xb & is_nan) | (0x7f800000u & positive & ~is_nan); /* NaN, +inf or 0 */
    return wan_bits_f32((y & ~out_of_range) | (limit & out_of_range));
}

/* a where mask bits are set, else b (branch-free, for vectorized loops) */
static inline float cpu_select(uint32_t mask, float a, float b) {
    return wan_bits_f32((wan_f32_bits(a) & mask) | (wan_f32_bits(b) & ~mask));
}

/* Logistic sigmoid and 1 - sigmoid without cancellation or overflow: t = exp(-|x|) <= 1,
 * 1/(1+t) and t/(1+t) are the two, swapped by the sign of x. */
static inline void cpu_sigmoid2(float x, float *sig, float *one_minus_sig) {
    float t = cpu_expf(-fabsf(x));
    float big = 1.0f / (1.0f + t), small = t * big;
    uint32_t nonneg = (wan_f32_bits(x) >> 31) - 1u;
    *sig = cpu_select(nonneg, big, small);
    *one_minus_sig = cpu_select(nonneg, small, big);
}

/* ---- the ops (each documented in ops.h) ---- */
void cpu_matmul_fwd(wan_backend *be, void *out, wan_dtype out_dt, const void *in, wan_dtype in_dt,
                    const void *w, const void *bias, int M, int N, int K);
void cpu_matmul_bwd(wan_backend *be, void *din, wan_dtype din_dt, bool din_accumulate, float *dw, float *db,
                    const void *dout, wan_dtype dout_dt, const void *in, wan_dtype in_dt, const void *w,
                    int M, int N, int K);
void cpu_matmul_gelu_fwd(wan_backend *be, void *g, void *h, const void *in, const void *w, const void *bias, int M,
                         int N, int K);
void cpu_matmul_dgelu_bwd(wan_backend *be, void *dh, const void *dout, const void *w, const void *h, int M, int N,
                          int K);

void cpu_layernorm_fwd(wan_backend *be, void *out, wan_dtype out_dt, float *mean, float *rstd, const float *x,
                       const void *w, const void *b, const float *shift, const float *scale, int mod_stride,
                       wan_tokens tk, int D, float eps);
void cpu_layernorm_bwd(wan_backend *be, float *dx, float *dw, float *db, float *dshift, float *dscale,
                       const void *dout, wan_dtype dout_dt, const float *x, const float *mean,
                       const float *rstd, const void *w, const float *scale, int mod_stride, wan_tokens tk,
                       int D);
void cpu_rms_sumsq(wan_backend *be, float *ss, const void *x, int ldx, int T, int D);
void cpu_rms_rope_fwd(wan_backend *be, void *y, int ldy, float *rrms, const void *x, int ldx, const float *ss,
                      const void *w, const wan_rope *rope, wan_tokens tk, int D, int D_full, float eps);
void cpu_rms_rope_bwd_dot(wan_backend *be, float *dot, float *dw, void *dy, int ldy, const void *x, int ldx,
                          const float *rrms, const void *w, const wan_rope *rope, wan_tokens tk, int D);
void cpu_rms_bwd_dx(wan_backend *be, void *dx, int lddx, const void *dy, int ldy, const void *x, int ldx,
                    const float *rrms, const float *dot, const void *w, int T, int D, int D_full);

void cpu_attention_fwd(wan_backend *be, void *out, int ldo, float *lse, const void *q, int ldq, const void *k,
                       int ldk, const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                       float scale);
void cpu_attention_bwd(wan_backend *be, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv,
                       unsigned accumulate, const void *dout, int lddo, const void *out, int ldo,
                       const float *lse, const void *q, int ldq, const void *k, int ldk, const void *v,
                       int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid, float scale);
void cpu_attention_merge(wan_backend *be, float *acc, float *lse_acc, const void *o, int ldo,
                         const float *lse, int B, int H, int Sq, int hd, bool first);

void cpu_gelu_fwd(wan_backend *be, void *out, const void *in, size_t n);
void cpu_gelu_bwd(wan_backend *be, void *din, const void *dout, const void *in, size_t n);
void cpu_silu_fwd(wan_backend *be, float *out, const float *in, size_t n);
void cpu_silu_bwd(wan_backend *be, float *din, const float *dout, const float *in, size_t n);
void cpu_residual_fwd(wan_backend *be, float *x, const float *y, const void *bias, const float *gate,
                      int gate_stride, wan_tokens tk, int D);
void cpu_residual_bwd(wan_backend *be, void *dy, wan_dtype dy_dt, float *dbias, float *dgate, const float *dx,
                      const float *y, const void *bias, const float *gate, int gate_stride, wan_tokens tk,
                      int D);
void cpu_add(wan_backend *be, void *y, const void *x, wan_dtype dt, size_t n);
void cpu_add_bcast(wan_backend *be, float *y, const float *a, const void *b, size_t n, size_t nb);
void cpu_sum_rows(wan_backend *be, float *db, const float *da, size_t n, size_t nb);

void cpu_timestep_embed(wan_backend *be, float *out, const float *t, int B, int freq_dim);
void cpu_patchify(wan_backend *be, void *out, wan_dtype out_dt, const float *latent, int B, int C, int F,
                  int H, int W, int pt, int ph, int pw, bool c_fastest, wan_tokens tk, int n_valid);
void cpu_unpatchify(wan_backend *be, float *latent, const float *rows, int B, int C, int F, int H, int W,
                    int pt, int ph, int pw, wan_tokens tk, int n_valid);

void cpu_flow_loss(wan_backend *be, float *dpred, float *sqsum, const float *pred, const float *target,
                   const float *coef, wan_tokens tk, int P, int n_valid);
void cpu_adamw(wan_backend *be, float *master, float *m, float *v, const float *grad, void *param, size_t n,
               float lr, float beta1, float beta2, float eps, float wd, float grad_scale, int step);
double cpu_sumsq(wan_backend *be, const float *x, size_t n);

#endif
