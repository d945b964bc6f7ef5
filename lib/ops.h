/* The op interface: every computation of the model, with a forward and a backward per op.
 * The layer code (model.c), the parallel code and the optimizer call only these, so a backend
 * (CPU: ops_cpu.c, fp32 + OpenBLAS + OpenMP; CUDA: lib/cuda/, bf16 + cuBLASLt + cuDNN) is the
 * only thing written twice.
 *
 * Conventions
 * - Pointers are backend memory (host memory on CPU, device memory on CUDA).
 * - Matrices are row-major. A weight of a Linear(in=K, out=N) is stored [N, K] as in PyTorch,
 *   so y[M, N] = x[M, K] @ w^T + b.
 * - `void *` tensors carry the dtype passed beside them (on CPU always WAN_F32); `float *` are
 *   fp32 on every backend (residual stream, norm statistics, modulation, gradients, optimizer).
 * - Parameter tensors are in be->param dtype, activations for matrix work in be->act dtype.
 * - Gradients of parameters are fp32 and ACCUMULATED (+=) so micro-batches add up.
 * - Per-token ops see a slice of a micro-batch: rows are tokens of the rank's [B, S_local]
 *   layout flattened, and wan_tokens says which sample each row belongs to.
 * - Attention tensors use BSHD strides: element (b, s, h, d) of a tensor with row stride ld
 *   is at (b * S + s) * ld + h * head_dim + d, so the q|k|v column blocks of a fused GEMM
 *   output are used in place.
 */
#ifndef WAN_OPS_H
#define WAN_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

/* Which rows of a micro-batch an op sees. Row i is token (tok0 + i) of the flattened
 * [B, S_local] layout: sample b = (tok0 + i) / S_local, local position
 * s = (tok0 + i) % S_local, global position within the sample pos0 + s. */
typedef struct {
    int T;       /* rows in this call */
    int tok0;    /* flattened index of row 0 */
    int S_local; /* tokens per sample held by this rank (after the context-parallel split) */
    int pos0;    /* global position of local token 0 of every sample (cp_rank * S_local) */
} wan_tokens;

/* 3D RoPE tables: for each global token position p < S_full and pair j < head_dim / 2,
 * cos and sin of the rotation angle (fp32, computed in double on the host). */
typedef struct {
    const float *cos, *sin; /* [S_full, head_dim / 2] */
    int head_dim;
} wan_rope;

typedef struct wan_backend wan_backend;

/* attention_bwd: which gradients are added to (the others are written) */
enum { WAN_ACC_DQ = 1, WAN_ACC_DK = 2, WAN_ACC_DV = 4, WAN_ACC_ALL = 7 };

typedef struct wan_ops {
    /* ---- matrix products ---- */
    /* out[M,N] = in[M,K] @ w[N,K]^T (+ bias[N]) */
    void (*matmul_fwd)(wan_backend *be, void *out, wan_dtype out_dt, const void *in, wan_dtype in_dt,
                       const void *w, const void *bias, int M, int N, int K);
    /* din[M,K] (=, or += when din_accumulate) dout @ w;  dw[N,K] += dout^T @ in;
     * db[N] += column sums of dout. din, dw, db may be NULL (not needed). */
    void (*matmul_bwd)(wan_backend *be, void *din, wan_dtype din_dt, bool din_accumulate, float *dw,
                       float *db, const void *dout, wan_dtype dout_dt, const void *in, wan_dtype in_dt,
                       const void *w, int M, int N, int K);
    /* The FFN's GELU fused into its GEMMs (on CUDA in the cuBLASLt epilogue, so the [M, N]
     * activation makes one trip through memory instead of three). All act dtype.
     * Forward:  h[M,N] = in[M,K] @ w[N,K]^T + bias[N] (kept for the backward), g = gelu(h), the
     *           tanh approximation.
     * Backward of the layer after it: dh[M,K] = gelu'(h[M,K]) * (dout[M,N] @ w[N,K]), written. */
    void (*matmul_gelu_fwd)(wan_backend *be, void *g, void *h, const void *in, const void *w, const void *bias,
                            int M, int N, int K);
    void (*matmul_dgelu_bwd)(wan_backend *be, void *dh, const void *dout, const void *w, const void *h, int M,
                             int N, int K);

    /* ---- LayerNorm (fp32 statistics) with optional affine (w, b) or modulation ----
     * out = LN(x) * w + b                       (w, b params; NULL = no affine)
     * out = LN(x) * (1 + scale[b]) + shift[b]   (shift/scale fp32 rows of stride mod_stride per
     *                                            sample; NULL = none)
     * mean, rstd [T] are saved for the backward. Affine and modulation are exclusive (Wan never
     * combines them). */
    void (*layernorm_fwd)(wan_backend *be, void *out, wan_dtype out_dt, float *mean, float *rstd,
                          const float *x, const void *w, const void *b, const float *shift,
                          const float *scale, int mod_stride, wan_tokens tk, int D, float eps);
    /* dx[T,D] += d/dx; dw, db += (params; NULL when no affine); dshift, dscale += per sample
     * (stride mod_stride; NULL when no modulation). */
    void (*layernorm_bwd)(wan_backend *be, float *dx, float *dw, float *db, float *dshift, float *dscale,
                          const void *dout, wan_dtype dout_dt, const float *x, const float *mean,
                          const float *rstd, const void *w, const float *scale, int mod_stride,
                          wan_tokens tk, int D);

    /* ---- RMSNorm over the full dim (q/k norms) fused with 3D RoPE ----
     * The full dim may be split over tensor-parallel ranks, so the sum of squares is a separate
     * step: ss[T] = sum over the D local columns of x^2; the caller all-reduces ss over tp. */
    void (*rms_sumsq)(wan_backend *be, float *ss, const void *x, int ldx, int T, int D);
    /* y = x * rrms * w, rrms = 1 / sqrt(ss / D_full + eps) (saved), then RoPE per head on
     * adjacent pairs (x[2j], x[2j+1]) when rope != NULL. */
    void (*rms_rope_fwd)(wan_backend *be, void *y, int ldy, float *rrms, const void *x, int ldx,
                         const float *ss, const void *w, const wan_rope *rope, wan_tokens tk, int D,
                         int D_full, float eps);
    /* Backward, first half: un-rotate dy in place (when rope), dot[T] = sum_j dy_j w_j x_j over
     * the local columns (the caller all-reduces it over tp), dw += dy * x * rrms. */
    void (*rms_rope_bwd_dot)(wan_backend *be, float *dot, float *dw, void *dy, int ldy, const void *x,
                             int ldx, const float *rrms, const void *w, const wan_rope *rope,
                             wan_tokens tk, int D);
    /* Second half: dx = rrms * w * dy - x * rrms^3 * dot / D_full  (dx written, act dtype). */
    void (*rms_bwd_dx)(wan_backend *be, void *dx, int lddx, const void *dy, int ldy, const void *x,
                       int ldx, const float *rrms, const float *dot, const void *w, int T, int D,
                       int D_full);

    /* ---- attention: softmax(q k^T * scale) v per head, no causal mask ----
     * Keys at positions >= kv_valid are masked out (padding; kv_valid = Skv when none).
     * lse[B, H, Sq] (natural log of the softmax denominator, scaled logits) is saved for the
     * backward and for merging context-parallel blocks. */
    void (*attention_fwd)(wan_backend *be, void *out, int ldo, float *lse, const void *q, int ldq,
                          const void *k, int ldk, const void *v, int ldv, int B, int H, int Sq,
                          int Skv, int hd, int kv_valid, float scale);
    /* Given the FINAL out and lse (also when k/v is one block of a longer sequence), write dq,
     * dk, dv, or accumulate into those whose WAN_ACC_* bit is set in `accumulate` (the
     * context-parallel ring adds dq over the blocks while each block's dk/dv is written). */
    void (*attention_bwd)(wan_backend *be, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv,
                          unsigned accumulate, const void *dout, int lddo, const void *out, int ldo,
                          const float *lse, const void *q, int ldq, const void *k, int ldk,
                          const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                          float scale);
    /* Context-parallel merge of one block's (o, lse) into fp32 accumulators (online softmax):
     * first = true initialises acc/lse_acc from the block. acc is [B, Sq, H*hd] dense. */
    void (*attention_merge)(wan_backend *be, float *acc, float *lse_acc, const void *o, int ldo,
                            const float *lse, int B, int H, int Sq, int hd, bool first);

    /* ---- elementwise ---- */
    void (*gelu_fwd)(wan_backend *be, void *out, const void *in, size_t n); /* tanh approx, act */
    void (*gelu_bwd)(wan_backend *be, void *din, const void *dout, const void *in, size_t n);
    void (*silu_fwd)(wan_backend *be, float *out, const float *in, size_t n);
    void (*silu_bwd)(wan_backend *be, float *din, const float *dout, const float *in, size_t n);
    /* x[T,D] += (y + bias) * gate[b]   (bias: param or NULL; gate: fp32 rows of stride
     * gate_stride per sample, or NULL for no gate) */
    void (*residual_fwd)(wan_backend *be, float *x, const float *y, const void *bias, const float *gate,
                         int gate_stride, wan_tokens tk, int D);
    /* dy = dx * gate[b] (act dtype dy_dt); dbias += sum_t dy; dgate += sum_t dx * (y + bias) */
    void (*residual_bwd)(wan_backend *be, void *dy, wan_dtype dy_dt, float *dbias, float *dgate,
                         const float *dx, const float *y, const void *bias, const float *gate,
                         int gate_stride, wan_tokens tk, int D);
    /* y += x, n elements of type dt */
    void (*add)(wan_backend *be, void *y, const void *x, wan_dtype dt, size_t n);
    /* y[i] = a[i] + b[i mod nb]: the per-block modulation (e0 + modulation) */
    void (*add_bcast)(wan_backend *be, float *y, const float *a, const void *b, size_t n, size_t nb);
    /* db[j] += sum over rows of da[i * nb + j] (backward of add_bcast for the param) */
    void (*sum_rows)(wan_backend *be, float *db, const float *da, size_t n, size_t nb);

    /* ---- embeddings and data layout ---- */
    /* out[B, freq_dim] = [cos(t * f_i), sin(t * f_i)], f_i = 10000^(-i / (freq_dim / 2)),
     * computed in double as the official model does */
    void (*timestep_embed)(wan_backend *be, float *out, const float *t, int B, int freq_dim);
    /* Gather patches of latent [B, C, F, H, W] (fp32) into rows of P = C*pt*ph*pw values for the
     * tokens of tk (positions >= n_valid are padding: zero rows). c_fastest selects the order of
     * the head's output (pt, ph, pw, c); otherwise the Conv3d weight's (c, pt, ph, pw). */
    void (*patchify)(wan_backend *be, void *out, wan_dtype out_dt, const float *latent, int B, int C,
                     int F, int H, int W, int pt, int ph, int pw, bool c_fastest, wan_tokens tk,
                     int n_valid);
    /* The inverse (c_fastest order) for the rows of tk: scatter into latent (fp32). */
    void (*unpatchify)(wan_backend *be, float *latent, const float *rows, int B, int C, int F, int H,
                       int W, int pt, int ph, int pw, wan_tokens tk, int n_valid);

    /* ---- flow-matching loss ----
     * For each row of tk at a valid position (< n_valid): d = pred - target;
     * dpred = coef[b] * d (fp32, written; padding rows get 0);  sqsum[b] += sum d^2. */
    void (*flow_loss)(wan_backend *be, float *dpred, float *sqsum, const float *pred, const float *target,
                      const float *coef, wan_tokens tk, int P, int n_valid);

    /* ---- optimizer (flat fp32 buffers) ----
     * AdamW on n elements: g = grad * grad_scale; m, v moments; master -= lr * (mhat / (sqrt(vhat)
     * + eps) + wd * master); param (be->param dtype) = master. step counts from 1. */
    void (*adamw)(wan_backend *be, float *master, float *m, float *v, const float *grad, void *param,
                  size_t n, float lr, float beta1, float beta2, float eps, float wd, float grad_scale,
                  int step);
    /* Sum of squares of x in double, deterministic (fixed order of partial sums). */
    double (*sumsq)(wan_backend *be, const float *x, size_t n);
} wan_ops;

struct wan_backend {
    const char *name; /* "cpu" or "cuda" */
    wan_dtype act;    /* activations for matrix work */
    wan_dtype param;  /* working copy of the weights */
    const wan_ops *ops;

    /* memory: 64-byte aligned, zero-filled on allocation */
    void *(*alloc)(wan_backend *be, size_t bytes);
    void (*free)(wan_backend *be, void *p);
    void (*upload)(wan_backend *be, void *dst, const void *host, size_t bytes);
    void (*download)(wan_backend *be, void *host, const void *src, size_t bytes);
    void (*memset0)(wan_backend *be, void *p, size_t bytes);
    void (*copy)(wan_backend *be, void *dst, const void *src, size_t bytes);
    void (*convert)(wan_backend *be, void *dst, wan_dtype dt, const void *src, wan_dtype st, size_t n);
    void (*sync)(wan_backend *be);
    /* bytes currently and at most allocated through alloc */
    size_t mem_now, mem_peak;
    size_t mem_device; /* the device's memory in bytes (a GPU's total); 0 when not known (CPU) */
    char device_name[128]; /* "CPU (2 threads)" or "NVIDIA H100 80GB HBM3" */
    int device_index;      /* GPU ordinal; -1 on CPU */
    void (*destroy)(wan_backend *be);
    void *impl;
};

/* CPU backend with `threads` OpenMP threads (0 = all cores). */
wan_backend *wan_backend_cpu(int threads);
/* CUDA backend on device `device` (the local rank). Fails with a clear message when built with
 * CUDA=0, when no driver or GPU is present, or when the device does not exist. */
int wan_backend_cuda(int device, wan_backend **out);
static inline void wan_backend_destroy(wan_backend *be) {
    if (be) be->destroy(be);
}

#endif
