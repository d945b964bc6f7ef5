/* Private to the CUDA backend's files (host C compiled by gcc, kernels compiled by nvcc):
 * the backend state, checked CUDA calls, scratch buffers, and the op implementations that
 * backend_cuda.c puts in the wan_ops table.
 *
 * Errors: initialisation returns wan_fail() errors (backend_cuda.c, comm_nccl.c); a failed
 * call after that (a kernel launch, a cuBLASLt matmul, a copy) is fatal: it is a bug or a
 * broken device, so it is printed with file, line, the call and the error string, and the
 * process aborts. Set WAN_CUDA_DEBUG_SYNC=1 to synchronise after every launch, so that an
 * asynchronous fault is reported at the kernel that caused it. */
#ifndef WAN_CUDA_INTERNAL_H
#define WAN_CUDA_INTERNAL_H

/* System headers first: under C++ they must not land inside the extern "C" block below. */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cuda_runtime.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Log "CUDA backend: call failed: msg [file:line]" and abort. */
__attribute__((noreturn)) void wan_cuda_die(const char *file, int line, const char *call, const char *msg);
/* Same with a formatted message (bad arguments, unsupported dtype combinations). */
__attribute__((noreturn, format(printf, 3, 4))) void wan_cuda_dief(const char *file, int line, const char *fmt, ...);

/* Block the host until stream st has done its work. First the hook (the NCCL transport's flush:
 * the collectives the stream waits for, under their deadline), whose failure is logged and ends
 * the process with exit 1; then the stream itself. */
void wan_cuda_host_wait(cudaStream_t st);
/* Set (fn) or clear (NULL) the hook: fn returns 0, or non-zero after wan_fail. */
void wan_cuda_set_host_wait(int (*fn)(void *ctx), void *ctx);

/* WAN_CUDA_DEBUG_SYNC=1: synchronise and check after every kernel launch. */
extern int wan_cuda_debug_sync;

#define WAN_CU(call)                                                                               \
    do {                                                                                           \
        cudaError_t wan_e_ = (call);                                                               \
        if (wan_e_ != cudaSuccess) wan_cuda_die(__FILE__, __LINE__, #call, cudaGetErrorString(wan_e_)); \
    } while (0)

/* After every kernel launch: launch errors now, execution errors too in debug-sync mode. */
#define WAN_CU_LAUNCH(stream)                                                                      \
    do {                                                                                           \
        WAN_CU(cudaGetLastError());                                                                \
        if (wan_cuda_debug_sync) WAN_CU(cudaStreamSynchronize(stream));                            \
    } while (0)

/* An argument the CUDA ops cannot handle: a clear message instead of wrong numbers. */
#define WAN_CUDA_REQUIRE(cond, ...)                                                                \
    do {                                                                                           \
        if (!(cond)) wan_cuda_dief(__FILE__, __LINE__, __VA_ARGS__);                               \
    } while (0)

/* Scratch buffers owned by the backend, one per use so that an op can hold several at once.
 * They grow on demand and are reused; contents do not survive between ops. */
enum {
    WAN_SCR_GEMM_A,  /* weight rows converted to fp32 (fp32 matmul path) */
    WAN_SCR_GEMM_B,  /* an activation cast to another dtype */
    WAN_SCR_BIAS,    /* bias converted to the GEMM output type */
    WAN_SCR_PARTIAL, /* per-slot partial column sums (deterministic reductions) */
    WAN_SCR_ROWS,    /* per-row values (flow loss) */
    WAN_SCR_ATT_DQ,  /* attention backward results before accumulation */
    WAN_SCR_ATT_DK,
    WAN_SCR_ATT_DV,
    WAN_SCR_REDUCE,  /* sumsq partials */
    WAN_SCR_COUNT
};

struct wan_mm_cache;
struct wan_sdpa;

typedef struct wan_cuda {
    int device, sm_count;
    cudaStream_t stream;      /* every op of this backend runs on it, in order */
    cudaMemPool_t pool;       /* stream-ordered allocator: freed blocks are reused, not returned */
    void *lt;                 /* cublasLtHandle_t */
    void *cudnn;              /* cudnnHandle_t */
    void *lt_ws;              /* cuBLASLt workspace */
    size_t lt_ws_bytes;
    struct wan_mm_cache *mm;  /* matmul plans per shape */
    bool gelu_epilogue;       /* the FFN's GELU in cuBLASLt's epilogues (WAN_GEMM_GELU_EPILOGUE=0: a kernel) */
    struct wan_sdpa *sdpa;    /* cuDNN attention plans per shape */
    void *scratch[WAN_SCR_COUNT];
    size_t scratch_bytes[WAN_SCR_COUNT];
    double *host_result;      /* pinned: sumsq result */
    void *live;               /* tsearch tree of live allocations (for mem_now) */
} wan_cuda;

static inline wan_cuda *wan_cuda_of(wan_backend *be) { return (wan_cuda *)be->impl; }
static inline cudaStream_t wan_cuda_stream_of(wan_backend *be) { return wan_cuda_of(be)->stream; }

/* The compute stream of the CUDA backend made last in this process (NULL when none): what the
 * NCCL transport orders its collectives against when it is given no stream. */
void *wan_cuda_process_stream(void);

/* Device memory from the backend's pool (256-byte aligned), zero-filled when zero is set. */
void *wan_cuda_pool_alloc(wan_backend *be, size_t bytes, bool zero);
void wan_cuda_pool_free(wan_backend *be, void *p);
/* A scratch buffer of at least `bytes` (slot: WAN_SCR_*). */
void *wan_cuda_scratch(wan_backend *be, int slot, size_t bytes);

/* cuda_matmul.c */
int wan_mm_cache_create(struct wan_mm_cache **out);
void wan_mm_cache_destroy(struct wan_mm_cache *mc);

/* ---- the ops (wan_ops semantics, see ops.h) ---- */
void wan_cuda_matmul_fwd(wan_backend *be, void *out, wan_dtype out_dt, const void *in, wan_dtype in_dt, const void *w,
                         const void *bias, int M, int N, int K);
void wan_cuda_matmul_bwd(wan_backend *be, void *din, wan_dtype din_dt, bool din_accumulate, float *dw, float *db,
                         const void *dout, wan_dtype dout_dt, const void *in, wan_dtype in_dt, const void *w, int M,
                         int N, int K);
void wan_cuda_matmul_gelu_fwd(wan_backend *be, void *g, void *h, const void *in, const void *w, const void *bias, int M,
                              int N, int K);
void wan_cuda_matmul_dgelu_bwd(wan_backend *be, void *dh, const void *dout, const void *w, const void *h, int M, int N,
                               int K);
void wan_cuda_layernorm_fwd(wan_backend *be, void *out, wan_dtype out_dt, float *mean, float *rstd, const float *x,
                            const void *w, const void *b, const float *shift, const float *scale, int mod_stride,
                            wan_tokens tk, int D, float eps);
void wan_cuda_layernorm_bwd(wan_backend *be, float *dx, float *dw, float *db, float *dshift, float *dscale,
                            const void *dout, wan_dtype dout_dt, const float *x, const float *mean, const float *rstd,
                            const void *w, const float *scale, int mod_stride, wan_tokens tk, int D);
void wan_cuda_rms_sumsq(wan_backend *be, float *ss, const void *x, int ldx, int T, int D);
void wan_cuda_rms_rope_fwd(wan_backend *be, void *y, int ldy, float *rrms, const void *x, int ldx, const float *ss,
                           const void *w, const wan_rope *rope, wan_tokens tk, int D, int D_full, float eps);
void wan_cuda_rms_rope_bwd_dot(wan_backend *be, float *dot, float *dw, void *dy, int ldy, const void *x, int ldx,
                               const float *rrms, const void *w, const wan_rope *rope, wan_tokens tk, int D);
void wan_cuda_rms_bwd_dx(wan_backend *be, void *dx, int lddx, const void *dy, int ldy, const void *x, int ldx,
                         const float *rrms, const float *dot, const void *w, int T, int D, int D_full);
void wan_cuda_attention_fwd(wan_backend *be, void *out, int ldo, float *lse, const void *q, int ldq, const void *k,
                            int ldk, const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                            float scale);
void wan_cuda_attention_bwd(wan_backend *be, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv,
                            unsigned accumulate, const void *dout, int lddo, const void *out, int ldo, const float *lse,
                            const void *q, int ldq, const void *k, int ldk, const void *v, int ldv, int B, int H,
                            int Sq, int Skv, int hd, int kv_valid, float scale);
void wan_cuda_attention_merge(wan_backend *be, float *acc, float *lse_acc, const void *o, int ldo, const float *lse,
                              int B, int H, int Sq, int hd, bool first);
void wan_cuda_gelu_fwd(wan_backend *be, void *out, const void *in, size_t n);
void wan_cuda_gelu_bwd(wan_backend *be, void *din, const void *dout, const void *in, size_t n);
void wan_cuda_silu_fwd(wan_backend *be, float *out, const float *in, size_t n);
void wan_cuda_silu_bwd(wan_backend *be, float *din, const float *dout, const float *in, size_t n);
void wan_cuda_residual_fwd(wan_backend *be, float *x, const float *y, const void *bias, const float *gate,
                           int gate_stride, wan_tokens tk, int D);
void wan_cuda_residual_bwd(wan_backend *be, void *dy, wan_dtype dy_dt, float *dbias, float *dgate, const float *dx,
                           const float *y, const void *bias, const float *gate, int gate_stride, wan_tokens tk, int D);
void wan_cuda_add(wan_backend *be, void *y, const void *x, wan_dtype dt, size_t n);
void wan_cuda_add_bcast(wan_backend *be, float *y, const float *a, const void *b, size_t n, size_t nb);
void wan_cuda_sum_rows(wan_backend *be, float *db, const float *da, size_t n, size_t nb);
void wan_cuda_timestep_embed(wan_backend *be, float *out, const float *t, int B, int freq_dim);
void wan_cuda_patchify(wan_backend *be, void *out, wan_dtype out_dt, const float *latent, int B, int C, int F, int H,
                       int W, int pt, int ph, int pw, bool c_fastest, wan_tokens tk, int n_valid);
void wan_cuda_unpatchify(wan_backend *be, float *latent, const float *rows, int B, int C, int F, int H, int W, int pt,
                         int ph, int pw, wan_tokens tk, int n_valid);
void wan_cuda_flow_loss(wan_backend *be, float *dpred, float *sqsum, const float *pred, const float *target,
                        const float *coef, wan_tokens tk, int P, int n_valid);
void wan_cuda_adamw(wan_backend *be, float *master, float *m, float *v, const float *grad, void *param, size_t n,
                    float lr, float beta1, float beta2, float eps, float wd, float grad_scale, int step);
double wan_cuda_sumsq(wan_backend *be, const float *x, size_t n);

/* ---- kernel launchers used by the host C files ---- */
/* dst[i] = src[i] converted, n elements (F32, BF16, F16). */
void wan_cuda_convert_n(cudaStream_t st, void *dst, wan_dtype dt, const void *src, wan_dtype sdt, size_t n);
/* out[r * ld + c] += bias[c] for r < rows, c < cols (the bias the GEMM epilogue could not add). */
void wan_cuda_bias_add(cudaStream_t st, void *out, wan_dtype dt, int ld, const void *bias, wan_dtype bias_dt, int rows,
                       int cols);
/* D[m x n] = op(A) op(B) + beta * D, column-major as cuBLASLt (for shapes it has no algorithm
 * for): fp32 accumulation, any element types. */
void wan_cuda_gemm_fallback(cudaStream_t st, bool transa, bool transb, int64_t m, int64_t n, int64_t k, const void *A,
                            wan_dtype ta, int64_t lda, const void *B, wan_dtype tb, int64_t ldb, void *D, wan_dtype td,
                            int64_t ldd, float beta);
/* db[c] += sum over r of x[r * cols + c], deterministic. */
void wan_cuda_colsum(wan_backend *be, float *db, const void *x, wan_dtype dt, int rows, int cols);
/* dst[r * ldd + c] += src[r * lds + c] (dtype dt, summed in fp32). */
void wan_cuda_add_2d(cudaStream_t st, void *dst, int ldd, const void *src, int lds, wan_dtype dt, int rows, int cols);
/* The context-parallel log-sum-exp merge (attention_merge). */
void wan_cuda_merge_launch(cudaStream_t st, float *acc, float *lse_acc, const void *o, int ldo, wan_dtype odt,
                           const float *lse, int B, int H, int Sq, int hd, bool first);

#ifdef __cplusplus
}
#endif

#endif
