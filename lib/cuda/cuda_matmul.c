/* Matrix products of the CUDA backend through cuBLASLt: 16-bit or fp32 inputs, fp32 accumulation
 * (CUBLAS_COMPUTE_32F), output in the asked type, the bias added by the GEMM epilogue, the FFN's
 * GELU too (forward GELU_AUX_BIAS, the input gradient through it DGELU: its [tokens, ffn]
 * activation written once instead of written, read and written again), weight gradients
 * accumulated into fp32 with beta = 1. Where the heuristic has no algorithm with an epilogue
 * (a leading dimension not a multiple of 8, say) a kernel does that part after the GEMM. The
 * matmul descriptor, the three layouts and the algorithm that cublasLtMatmulAlgoGetHeuristic
 * chose are cached per shape (dims, leading dims, types, transposes, epilogue and pointer
 * alignments) in a small hash map.
 *
 * Layouts. cuBLASLt is column-major; our matrices are row-major. A row-major X[r, c] with row
 * stride ld is, byte for byte, the column-major matrix X^T[c, r] with leading dimension ld. So:
 *
 *   forward   out[M,N] = in[M,K] @ w[N,K]^T      column-major: out^T[N,M] = w[N,K] . in^T[K,M]
 *             A = w stored col-major [K x N] (ld K), op T -> [N x K];  B = in stored [K x M]
 *             (ld K), op N;  D = out^T [N x M] (ld N).  m = N, n = M, k = K  ("TN").
 *             The bias epilogue adds a vector over the rows of D, i.e. over N: bias[N].
 *   input     din[M,K] = dout[M,N] @ w[N,K]      din^T[K,M] = w^T[K,N] . dout^T[N,M]
 *             A = w stored [K x N] (ld K), op N;  B = dout stored [N x M] (ld N), op N;
 *             D = din^T [K x M] (ld K).  m = K, n = M, k = N  ("NN").
 *   weight    dw[N,K] += dout[M,N]^T @ in[M,K]   dw^T[K,N] = in^T[K,M] . dout[M,N]
 *             A = in stored [K x M] (ld K), op N;  B = dout stored [N x M] (ld N), op T ->
 *             [M x N];  D = dw^T [K x N] (ld K), beta = 1.  m = K, n = N, k = M  ("NT").
 *
 * fp32 inputs (the time embedding and the head, which the official model keeps in fp32) run as
 * fp32 GEMMs: the bf16 weight is converted to fp32 in chunks of rows (the time projection's
 * weight is 6 * dim x dim), each chunk a GEMM over a slice of the output (forward) or of the
 * reduction (input gradient). The bias gradient is a deterministic column sum. */
#include <cublasLt.h>
#include <stdlib.h>
#include <xxhash.h>

#include "cuda_internal.h"
#include "log.h"

#define WAN_CUBLAS(call)                                                                           \
    do {                                                                                           \
        cublasStatus_t wan_s_ = (call);                                                            \
        if (wan_s_ != CUBLAS_STATUS_SUCCESS) wan_cuda_die(__FILE__, __LINE__, #call, cublasLtGetStatusString(wan_s_)); \
    } while (0)

/* Elements of weight converted to fp32 per chunk (64 MiB). */
#define WAN_MM_CHUNK_ELEMS ((size_t)16 << 20)
#define WAN_MM_CACHE_SIZE 512

/* The GELU of the FFN, beyond the bias: applied to the product (the input kept in an auxiliary
 * matrix), or its derivative at a kept input multiplied into the product. */
typedef enum { GELU_NONE, GELU_FWD, GELU_BWD } gelu_mode;

typedef struct {
    int32_t transa, transb;
    int32_t ta, tb, td, tbias; /* cudaDataType; tbias = -1 without a bias */
    int64_t m, n, k, lda, ldb, ldd;
    int32_t align_a, align_b, align_d, align_bias;
    int32_t gelu, align_aux; /* gelu_mode; the auxiliary matrix has D's type and layout */
} mm_key;

typedef struct {
    mm_key key;
    bool used;
    bool bias_in_epilogue; /* false: no algorithm had the bias epilogue; a kernel adds it */
    bool gelu_in_epilogue; /* false: no algorithm had the GELU epilogue; a kernel applies it */
    bool fallback;         /* no algorithm at all: wan_cuda_gemm_fallback computes it */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulAlgo_t algo;
} mm_plan;

struct wan_mm_cache {
    mm_plan plan[WAN_MM_CACHE_SIZE];
    int used;
};

int wan_mm_cache_create(struct wan_mm_cache **out) {
    *out = calloc(1, sizeof **out);
    return *out ? 0 : -1;
}

static void plan_release(mm_plan *p) {
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->ld) cublasLtMatrixLayoutDestroy(p->ld);
    memset(p, 0, sizeof *p);
}

void wan_mm_cache_destroy(struct wan_mm_cache *mc) {
    if (!mc) return;
    for (int i = 0; i < WAN_MM_CACHE_SIZE; i++)
        if (mc->plan[i].used) plan_release(&mc->plan[i]);
    free(mc);
}

static cudaDataType_t cuda_type(wan_dtype t) {
    switch (t) {
    case WAN_F32: return CUDA_R_32F;
    case WAN_BF16: return CUDA_R_16BF;
    case WAN_F16: return CUDA_R_16F;
    }
    return CUDA_R_32F;
}

/* Largest power of two up to 256 that divides the address (what cuBLASLt's kernels may assume). */
static int32_t ptr_align(const void *p) {
    uintptr_t u = (uintptr_t)p;
    int32_t a = 1;
    while (a < 256 && !(u & (uintptr_t)a)) a <<= 1;
    return a;
}

static void set_attr(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr, const void *v, size_t n) {
    WAN_CUBLAS(cublasLtMatmulDescSetAttribute(op, attr, v, n));
}

/* Ask the heuristic for the best algorithm: CUBLAS_STATUS_SUCCESS with p->algo set, or why not
 * (CUBLAS_STATUS_NOT_SUPPORTED when it has none for this description). */
static cublasStatus_t pick_algo(wan_cuda *c, mm_plan *p) {
    cublasLtMatmulPreference_t pref;
    WAN_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = c->lt_ws_bytes;
    WAN_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    uint32_t al[4] = {(uint32_t)p->key.align_a, (uint32_t)p->key.align_b, (uint32_t)p->key.align_d,
                      (uint32_t)p->key.align_d};
    WAN_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4));
    WAN_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4));
    WAN_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4));
    WAN_CUBLAS(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3], 4));
    cublasLtMatmulHeuristicResult_t res;
    memset(&res, 0, sizeof res);
    int found = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic((cublasLtHandle_t)c->lt, p->op, p->la, p->lb, p->ld, p->ld, pref,
                                                      1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    if (found == 0 || res.state != CUBLAS_STATUS_SUCCESS) return CUBLAS_STATUS_NOT_SUPPORTED;
    p->algo = res.algo;
    return CUBLAS_STATUS_SUCCESS;
}

/* Back to a plain product after an epilogue the heuristic had no algorithm for: no bias or
 * auxiliary pointer left behind on the descriptor. */
static void epilogue_off(mm_plan *p) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    const void *none = NULL;
    set_attr(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    set_attr(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &none, sizeof none);
    set_attr(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &none, sizeof none);
}

/* The GELU epilogues (cuBLASLt's GELU is the tanh approximation, Wan's): forward GELU_AUX(_BIAS)
 * writes gelu(x) to D and x to the auxiliary matrix; backward DGELU multiplies the product by
 * gelu'(aux). True when the heuristic has an algorithm for it. */
static bool try_gelu_epilogue(wan_cuda *c, mm_plan *p, const void *bias, const void *aux) {
    const mm_key *k = &p->key;
    cublasLtEpilogue_t epi = k->gelu == GELU_BWD ? CUBLASLT_EPILOGUE_DGELU
                             : bias             ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                                : CUBLASLT_EPILOGUE_GELU_AUX;
    int64_t ld = k->ldd;
    /* cublasLt.h: the auxiliary leading dimension a multiple of 8 (and at least D's rows, which
     * lt_gemm_gelu's ldd == m ensures). Checked here, not left to the heuristic, which need not
     * refuse it (cublasLtMatmul would) */
    if (ld % 8) {
        wan_warn("GEMM m=%lld n=%lld k=%lld: leading dimension %lld is not a multiple of 8 the GELU epilogue's "
                 "auxiliary matrix needs; a separate kernel applies the GELU",
                 (long long)k->m, (long long)k->n, (long long)k->k, (long long)ld);
        return false;
    }
    set_attr(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    set_attr(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld);
    /* as for the bias, the heuristic reads the pointers' alignment */
    set_attr(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
    if (bias && k->gelu == GELU_FWD) {
        int32_t bt = k->tbias;
        set_attr(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
        set_attr(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
    }
    if (pick_algo(c, p) == CUBLAS_STATUS_SUCCESS) {
        p->gelu_in_epilogue = true;
        p->bias_in_epilogue = bias != NULL;
        return true;
    }
    epilogue_off(p);
    wan_warn("cuBLASLt has no algorithm with the %s epilogue for the GEMM m=%lld n=%lld k=%lld (alignments D %d, aux "
             "%d bytes); a separate kernel applies the GELU",
             k->gelu == GELU_BWD ? "DGELU" : "GELU", (long long)k->m, (long long)k->n, (long long)k->k, k->align_d,
             k->align_aux);
    return false;
}

static void plan_build(wan_cuda *c, mm_plan *p, const mm_key *k, const void *bias, const void *aux) {
    memset(p, 0, sizeof *p);
    p->key = *k;
    p->used = true;
    WAN_CUBLAS(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = (cublasOperation_t)k->transa, tb = (cublasOperation_t)k->transb;
    set_attr(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    set_attr(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    /* layouts describe the stored matrices: op(A) is m x k, op(B) is k x n, D is m x n */
    bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
    WAN_CUBLAS(cublasLtMatrixLayoutCreate(&p->la, (cudaDataType_t)k->ta, (uint64_t)(na ? k->m : k->k),
                                          (uint64_t)(na ? k->k : k->m), k->lda));
    WAN_CUBLAS(cublasLtMatrixLayoutCreate(&p->lb, (cudaDataType_t)k->tb, (uint64_t)(nb ? k->k : k->n),
                                          (uint64_t)(nb ? k->n : k->k), k->ldb));
    WAN_CUBLAS(cublasLtMatrixLayoutCreate(&p->ld, (cudaDataType_t)k->td, (uint64_t)k->m, (uint64_t)k->n, k->ldd));
    if (k->gelu != GELU_NONE && c->gelu_epilogue && try_gelu_epilogue(c, p, bias, aux)) return;
    if (k->tbias >= 0) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        int32_t bt = k->tbias;
        set_attr(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
        set_attr(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt);
        /* the heuristic reads the bias pointer's alignment */
        set_attr(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        if (pick_algo(c, p) == CUBLAS_STATUS_SUCCESS) { /* else the bias kernel adds it */
            p->bias_in_epilogue = true;
            return;
        }
        epilogue_off(p);
    }
    cublasStatus_t s = pick_algo(c, p);
    if (s == CUBLAS_STATUS_SUCCESS) return;
    if (s != CUBLAS_STATUS_NOT_SUPPORTED && s != CUBLAS_STATUS_INVALID_VALUE)
        wan_cuda_dief(__FILE__, __LINE__, "cuBLASLt: %s: asking for an algorithm for the GEMM m=%lld n=%lld k=%lld",
                      cublasLtGetStatusString(s), (long long)k->m, (long long)k->n, (long long)k->k);
    /* The heuristic may refuse degenerate shapes (one row, k = 1): a plain kernel does them.
     * Once per shape: the plan is cached. */
    p->fallback = true;
    wan_warn("cuBLASLt has no algorithm for the GEMM m=%lld n=%lld k=%lld (trans %c%c, types A %d B %d D %d, ld "
             "%lld/%lld/%lld, alignments %d/%d/%d bytes: %s); using the fallback kernel, which is slow for large shapes",
             (long long)k->m, (long long)k->n, (long long)k->k, na ? 'N' : 'T', nb ? 'N' : 'T', k->ta, k->tb, k->td,
             (long long)k->lda, (long long)k->ldb, (long long)k->ldd, k->align_a, k->align_b, k->align_d,
             cublasLtGetStatusString(s));
}

static mm_plan *plan_get(wan_cuda *c, const mm_key *k, const void *bias, const void *aux) {
    struct wan_mm_cache *mc = c->mm;
    if (mc->used >= WAN_MM_CACHE_SIZE * 3 / 4) { /* a pathological number of shapes: start over */
        for (int i = 0; i < WAN_MM_CACHE_SIZE; i++)
            if (mc->plan[i].used) plan_release(&mc->plan[i]);
        mc->used = 0;
    }
    size_t h = (size_t)(XXH64(k, sizeof *k, 0) % WAN_MM_CACHE_SIZE);
    for (;;) {
        mm_plan *p = &mc->plan[h];
        if (!p->used) {
            plan_build(c, p, k, bias, aux);
            mc->used++;
            return p;
        }
        if (!memcmp(&p->key, k, sizeof *k)) return p;
        h = (h + 1) % WAN_MM_CACHE_SIZE;
    }
}

/* D[m x n] = op(A) op(B) (+ bias over the rows of D) + beta * D, column-major (see the top);
 * then with gelu, GELU_FWD: aux = D, D = gelu(aux); GELU_BWD: D *= gelu'(aux) (aux: D's type and
 * layout, D dense and of the act type). */
static void lt_gemm_gelu(wan_backend *be, cublasOperation_t transa, cublasOperation_t transb, int64_t m, int64_t n,
                         int64_t k, const void *A, wan_dtype ta, int64_t lda, const void *B, wan_dtype tb, int64_t ldb,
                         void *D, wan_dtype td, int64_t ldd, float beta, const void *bias, wan_dtype tbias,
                         gelu_mode gelu, void *aux) {
    if (m <= 0 || n <= 0) return;
    wan_cuda *c = wan_cuda_of(be);
    if (gelu != GELU_NONE) {
        WAN_CUDA_REQUIRE(aux && ldd == m && td == be->act && beta == 0.0f && k > 0,
                         "matmul with GELU: aux %p, ld %lld for %lld rows, beta %g, k %lld", aux, (long long)ldd,
                         (long long)m, (double)beta, (long long)k);
    }
    if (k <= 0) { /* nothing to multiply: D = beta * D (+ bias) */
        WAN_CUDA_REQUIRE(beta == 0.0f || beta == 1.0f, "matmul: k = 0 with beta %g", (double)beta);
        if (beta == 0.0f)
            for (int64_t j = 0; j < n; j++)
                WAN_CU(cudaMemsetAsync((char *)D + (size_t)j * ldd * wan_dtype_size(td), 0,
                                       (size_t)m * wan_dtype_size(td), c->stream));
        if (bias) wan_cuda_bias_add(c->stream, D, td, (int)ldd, bias, tbias, (int)n, (int)m);
        return;
    }
    mm_key key;
    memset(&key, 0, sizeof key); /* padding takes part in hashing and comparing */
    key.transa = transa;
    key.transb = transb;
    key.ta = cuda_type(ta);
    key.tb = cuda_type(tb);
    key.td = cuda_type(td);
    key.tbias = bias ? (int32_t)cuda_type(tbias) : -1;
    key.m = m, key.n = n, key.k = k;
    key.lda = lda, key.ldb = ldb, key.ldd = ldd;
    key.align_a = ptr_align(A);
    key.align_b = ptr_align(B);
    key.align_d = ptr_align(D);
    key.align_bias = bias ? ptr_align(bias) : 0;
    key.gelu = gelu;
    if (gelu != GELU_NONE) {
        /* without the epilogue the forward's product goes to aux: the plan must suit both */
        key.align_aux = ptr_align(aux);
        if (gelu == GELU_FWD && key.align_aux < key.align_d) key.align_d = key.align_aux;
    }
    mm_plan *p = plan_get(c, &key, bias, aux);
    bool gelu_kernel = gelu != GELU_NONE && !p->gelu_in_epilogue;
    void *out = gelu_kernel && gelu == GELU_FWD ? aux : D;
    if (p->fallback) {
        wan_cuda_gemm_fallback(c->stream, transa == CUBLAS_OP_T, transb == CUBLAS_OP_T, m, n, k, A, ta, lda, B, tb, ldb,
                               out, td, ldd, beta);
        if (bias) wan_cuda_bias_add(c->stream, out, td, (int)ldd, bias, tbias, (int)n, (int)m);
    } else {
        if (p->bias_in_epilogue) set_attr(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        if (p->gelu_in_epilogue) set_attr(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof aux);
        float alpha = 1.0f;
        WAN_CUBLAS(cublasLtMatmul((cublasLtHandle_t)c->lt, p->op, &alpha, A, p->la, B, p->lb, &beta, out, p->ld, out,
                                  p->ld, &p->algo, c->lt_ws, c->lt_ws_bytes, c->stream));
        /* D is row-major [n, m] seen from our side: the bias runs along m */
        if (bias && !p->bias_in_epilogue) wan_cuda_bias_add(c->stream, out, td, (int)ldd, bias, tbias, (int)n, (int)m);
    }
    if (gelu_kernel) {
        size_t count = (size_t)m * (size_t)n;
        if (gelu == GELU_FWD)
            wan_cuda_gelu_fwd(be, D, aux, count);
        else
            wan_cuda_gelu_bwd(be, D, D, aux, count); /* elementwise: in place is safe */
    }
}

static void lt_gemm(wan_backend *be, cublasOperation_t transa, cublasOperation_t transb, int64_t m, int64_t n,
                    int64_t k, const void *A, wan_dtype ta, int64_t lda, const void *B, wan_dtype tb, int64_t ldb,
                    void *D, wan_dtype td, int64_t ldd, float beta, const void *bias, wan_dtype tbias) {
    lt_gemm_gelu(be, transa, transb, m, n, k, A, ta, lda, B, tb, ldb, D, td, ldd, beta, bias, tbias, GELU_NONE, NULL);
}

/* The bias as the GEMM output type wants it (cuBLASLt: bias type = D type). */
static const void *bias_as(wan_backend *be, const void *bias, wan_dtype dt, int N) {
    if (!bias || dt == be->param) return bias;
    void *b = wan_cuda_scratch(be, WAN_SCR_BIAS, (size_t)N * wan_dtype_size(dt));
    wan_cuda_convert_n(wan_cuda_stream_of(be), b, dt, bias, be->param, (size_t)N);
    return b;
}

/* A cast copy of a [rows, cols] matrix in scratch slot `slot`. */
static void *cast_copy(wan_backend *be, int slot, const void *src, wan_dtype from, wan_dtype to, size_t n) {
    void *dst = wan_cuda_scratch(be, slot, n * wan_dtype_size(to));
    wan_cuda_convert_n(wan_cuda_stream_of(be), dst, to, src, from, n);
    return dst;
}

/* Rows per chunk when converting a matrix with `cols` columns to fp32: a multiple of 64 (keeps
 * chunk offsets 256-byte aligned), at most WAN_MM_CHUNK_ELEMS elements when possible. */
static int64_t chunk_rows(int64_t rows, int64_t cols) {
    int64_t r = (int64_t)(WAN_MM_CHUNK_ELEMS / (size_t)(cols > 0 ? cols : 1)) / 64 * 64;
    if (r < 64) r = 64;
    return r < rows ? r : rows;
}

static const char *dt_name(wan_dtype t) { return t == WAN_F32 ? "F32" : t == WAN_BF16 ? "BF16" : "F16"; }

void wan_cuda_matmul_fwd(wan_backend *be, void *out, wan_dtype out_dt, const void *in, wan_dtype in_dt, const void *w,
                         const void *bias, int M, int N, int K) {
    if (M <= 0 || N <= 0) return;
    wan_dtype wdt = be->param;
    size_t wsz = wan_dtype_size(wdt);
    if (in_dt == wdt) {
        lt_gemm(be, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, w, wdt, K, in, in_dt, K, out, out_dt, N, 0.0f,
                bias_as(be, bias, out_dt, N), out_dt);
        return;
    }
    if (in_dt == WAN_F32 && out_dt == WAN_F32) { /* fp32 path: weight rows converted chunk by chunk */
        const void *b = bias_as(be, bias, WAN_F32, N);
        int64_t rows = chunk_rows(N, K);
        float *wc = wan_cuda_scratch(be, WAN_SCR_GEMM_A, (size_t)rows * K * sizeof(float));
        for (int64_t n0 = 0; n0 < N; n0 += rows) {
            int64_t nc = N - n0 < rows ? N - n0 : rows;
            wan_cuda_convert_n(wan_cuda_stream_of(be), wc, WAN_F32, (const char *)w + (size_t)n0 * K * wsz, wdt,
                               (size_t)nc * K);
            lt_gemm(be, CUBLAS_OP_T, CUBLAS_OP_N, nc, M, K, wc, WAN_F32, K, in, WAN_F32, K, (float *)out + n0, WAN_F32,
                    N, 0.0f, b ? (const float *)b + n0 : NULL, WAN_F32);
        }
        return;
    }
    /* another input type with a 16-bit result: cast the input to the weight type, as autocast */
    const void *ic = cast_copy(be, WAN_SCR_GEMM_B, in, in_dt, wdt, (size_t)M * K);
    lt_gemm(be, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, w, wdt, K, ic, wdt, K, out, out_dt, N, 0.0f,
            bias_as(be, bias, out_dt, N), out_dt);
}

void wan_cuda_matmul_bwd(wan_backend *be, void *din, wan_dtype din_dt, bool din_accumulate, float *dw, float *db,
                         const void *dout, wan_dtype dout_dt, const void *in, wan_dtype in_dt, const void *w, int M,
                         int N, int K) {
    /* K = 0 still owes db its column sums (the products are empty: lt_gemm skips m = K = 0) */
    if (M <= 0 || N <= 0) return;
    wan_dtype wdt = be->param;
    size_t wsz = wan_dtype_size(wdt);
    cudaStream_t st = wan_cuda_stream_of(be);
    if (din) {
        float beta = din_accumulate ? 1.0f : 0.0f;
        if (dout_dt == wdt) {
            lt_gemm(be, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, w, wdt, K, dout, dout_dt, N, din, din_dt, K, beta, NULL,
                    WAN_F32);
        } else if (dout_dt == WAN_F32 && din_dt == WAN_F32) {
            /* fp32 path: the reduction over N runs chunk by chunk of converted weight rows */
            int64_t rows = chunk_rows(N, K);
            float *wc = wan_cuda_scratch(be, WAN_SCR_GEMM_A, (size_t)rows * K * sizeof(float));
            for (int64_t n0 = 0; n0 < N; n0 += rows) {
                int64_t nc = N - n0 < rows ? N - n0 : rows;
                wan_cuda_convert_n(st, wc, WAN_F32, (const char *)w + (size_t)n0 * K * wsz, wdt, (size_t)nc * K);
                lt_gemm(be, CUBLAS_OP_N, CUBLAS_OP_N, K, M, nc, wc, WAN_F32, K, (const float *)dout + n0, WAN_F32, N,
                        din, WAN_F32, K, n0 == 0 ? beta : 1.0f, NULL, WAN_F32);
            }
        } else {
            const void *dc = cast_copy(be, WAN_SCR_GEMM_B, dout, dout_dt, wdt, (size_t)M * N);
            lt_gemm(be, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, w, wdt, K, dc, wdt, N, din, din_dt, K, beta, NULL,
                    WAN_F32);
        }
    }
    if (dw) {
        if (dout_dt == in_dt) {
            lt_gemm(be, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, in, in_dt, K, dout, dout_dt, N, dw, WAN_F32, K, 1.0f, NULL,
                    WAN_F32);
        } else {
            /* mixed: the 16-bit operand goes to fp32 in chunks of rows of M (the reduction) */
            bool cast_in = in_dt != WAN_F32;
            WAN_CUDA_REQUIRE(cast_in ? dout_dt == WAN_F32 : in_dt == WAN_F32,
                             "matmul_bwd: dout %s with input %s unsupported", dt_name(dout_dt), dt_name(in_dt));
            int64_t cols = cast_in ? K : N;
            int64_t rows = chunk_rows(M, cols);
            float *cc = wan_cuda_scratch(be, WAN_SCR_GEMM_B, (size_t)rows * cols * sizeof(float));
            for (int64_t m0 = 0; m0 < M; m0 += rows) {
                int64_t mc = M - m0 < rows ? M - m0 : rows;
                const void *src = cast_in ? (const char *)in + (size_t)m0 * K * wan_dtype_size(in_dt)
                                          : (const char *)dout + (size_t)m0 * N * wan_dtype_size(dout_dt);
                wan_cuda_convert_n(st, cc, WAN_F32, src, cast_in ? in_dt : dout_dt, (size_t)mc * cols);
                const void *a = cast_in ? (const void *)cc : (const void *)((const float *)in + (size_t)m0 * K);
                const void *b = cast_in ? (const void *)((const float *)dout + (size_t)m0 * N) : (const void *)cc;
                lt_gemm(be, CUBLAS_OP_N, CUBLAS_OP_T, K, N, mc, a, WAN_F32, K, b, WAN_F32, N, dw, WAN_F32, K, 1.0f,
                        NULL, WAN_F32);
            }
        }
    }
    if (db) wan_cuda_colsum(be, db, dout, dout_dt, M, N);
}

/* The FFN's first GEMM with its GELU: "TN" as matmul_fwd, the epilogue writing g and h. */
void wan_cuda_matmul_gelu_fwd(wan_backend *be, void *g, void *h, const void *in, const void *w, const void *bias, int M,
                              int N, int K) {
    if (M <= 0 || N <= 0) return;
    wan_dtype act = be->act;
    WAN_CUDA_REQUIRE(act == be->param, "matmul_gelu_fwd: activations %s with weights %s", dt_name(act),
                     dt_name(be->param));
    lt_gemm_gelu(be, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, w, be->param, K, in, act, K, g, act, N, 0.0f,
                 bias_as(be, bias, act, N), act, GELU_FWD, h);
}

/* The input gradient of the FFN's second GEMM through the GELU: "NN" as matmul_bwd's din, the
 * epilogue multiplying by gelu'(h). */
void wan_cuda_matmul_dgelu_bwd(wan_backend *be, void *dh, const void *dout, const void *w, const void *h, int M, int N,
                               int K) {
    if (M <= 0 || K <= 0) return;
    wan_dtype act = be->act;
    WAN_CUDA_REQUIRE(act == be->param, "matmul_dgelu_bwd: activations %s with weights %s", dt_name(act),
                     dt_name(be->param));
    if (N <= 0) { /* an empty product: dh = 0 */
        WAN_CU(cudaMemsetAsync(dh, 0, (size_t)M * K * wan_dtype_size(act), wan_cuda_stream_of(be)));
        return;
    }
    lt_gemm_gelu(be, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, w, be->param, K, dout, act, N, dh, act, K, 0.0f, NULL, WAN_F32,
                 GELU_BWD, (void *)h);
}
