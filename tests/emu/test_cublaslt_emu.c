/* Checks tests/emu/cublaslt_emu.c (the CPU cuBLASLt of the emulation build) against a naive
 * double-precision reference written here, and checks that it rejects what the real library
 * rejects. Prints "ok NAME" / "FAIL NAME: why" lines and ends with "N passed, M failed".
 * The rejection cases make the emulator print its one-line reasons to stderr; that is expected. */
#include <cublasLt.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int passed, failed;
static cublasLtHandle_t lt;

static void result(bool ok, const char *name, const char *fmt, ...) {
    if (ok) {
        printf("ok %s\n", name);
        passed++;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s: ", name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    failed++;
}

/* ---- matrices: column-major, raw bit patterns, decoded independently of the emulator ---- */

typedef struct {
    cudaDataType_t t;
    int64_t rows, cols, ld;
    unsigned char *raw; /* 256-aligned allocation */
    void *p;            /* raw + offset */
    size_t bytes;       /* whole allocation */
} mat;

static size_t esize(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

static mat mat_new(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, size_t offset) {
    mat x = {t, rows, cols, ld, NULL, NULL, 0};
    x.bytes = ((size_t)(ld * (cols > 0 ? cols : 1)) * esize(t) + offset + 255) / 256 * 256 + 256;
    x.raw = aligned_alloc(256, x.bytes);
    if (!x.raw) abort();
    memset(x.raw, 0xa5, x.bytes); /* sentinel: padding must come back untouched */
    x.p = x.raw + offset;
    return x;
}
static void mat_free(mat *x) { free(x->raw); }

static double dec(cudaDataType_t t, const void *base, int64_t idx) {
    if (t == CUDA_R_32F) return ((const float *)base)[idx];
    uint16_t h = ((const uint16_t *)base)[idx];
    double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (t == CUDA_R_16BF) { /* 8-bit exponent (bias 127), 7-bit mantissa */
        int e = (h >> 7) & 0xff, f = h & 0x7f;
        if (e == 0xff) return f ? NAN : sign * INFINITY;
        return sign * (e ? ldexp(128 + f, e - 127 - 7) : ldexp(f, -126 - 7));
    }
    int e = (h >> 10) & 0x1f, f = h & 0x3ff; /* fp16: 5-bit exponent (bias 15), 10-bit mantissa */
    if (e == 0x1f) return f ? NAN : sign * INFINITY;
    return sign * (e ? ldexp(1024 + f, e - 15 - 10) : ldexp(f, -14 - 10));
}
static double get(const mat *x, int64_t i, int64_t j) { return dec(x->t, x->p, i + j * x->ld); }

/* Store v, which the caller guarantees is exactly representable in x's type. */
static void put(mat *x, int64_t i, int64_t j, double v) {
    int64_t idx = i + j * x->ld;
    if (x->t == CUDA_R_32F) {
        ((float *)x->p)[idx] = (float)v;
        return;
    }
    uint16_t bits = 0;
    if (isnan(v)) bits = x->t == CUDA_R_16BF ? 0x7fc0 : 0x7e00;
    else if (v != 0) {
        int e;
        double fr = frexp(fabs(v), &e); /* |v| = fr * 2^e, fr in [0.5, 1) */
        if (x->t == CUDA_R_16BF) bits = (uint16_t)(((e - 1 + 127) << 7) | (int)(fr * 256 - 128));
        else bits = (uint16_t)(((e - 1 + 15) << 10) | (int)(fr * 2048 - 1024));
        if (v < 0) bits |= 0x8000;
    }
    ((uint16_t *)x->p)[idx] = bits;
    if (dec(x->t, x->p, idx) != v && !isnan(v)) abort(); /* the caller broke the promise */
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}
/* Random values exact in the type: k/64 (|k| < 128) fit bf16 and fp16; fp32 gets 24 bits. */
static double rval(cudaDataType_t t) {
    if (t == CUDA_R_32F) return ((double)(rnd() & 0xffffff) - 0x800000) / 0x800000 * 2.0;
    return ((int)(rnd() % 255) - 127) / 64.0;
}
static void fill(mat *x) {
    for (int64_t j = 0; j < x->cols; j++)
        for (int64_t i = 0; i < x->rows; i++) put(x, i, j, rval(x->t));
}
static void fill_nan(mat *x) {
    for (int64_t j = 0; j < x->cols; j++)
        for (int64_t i = 0; i < x->rows; i++) put(x, i, j, NAN);
}

/* ---- one GEMM case against the reference ---- */

typedef struct {
    const char *name;
    cudaDataType_t tab, tcd;
    int tbias; /* -2: no bias epilogue, -1: bias type left at its default, else the type */
    cublasOperation_t ta, tb;
    int64_t m, n, k, pad; /* every ld = rows + pad */
    float alpha, beta;
    bool in_place, nan_cd;
} gemm_case;

#define CHECK(call)                                                                                        \
    do {                                                                                                   \
        cublasStatus_t s_ = (call);                                                                        \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                                 \
            result(false, c->name, "%s -> %s", #call, cublasLtGetStatusString(s_));                      \
            goto out;                                                                                      \
        }                                                                                                  \
    } while (0)

static void run_case(const gemm_case *c) {
    bool na = c->ta == CUBLAS_OP_N, nb = c->tb == CUBLAS_OP_N;
    int64_t ar = na ? c->m : c->k, ac = na ? c->k : c->m, br = nb ? c->k : c->n, bc = nb ? c->n : c->k;
    /* ld = rows + pad, at least 1 (BLAS rule, also for an empty k) */
    mat A = mat_new(c->tab, ar, ac, ar + c->pad > 0 ? ar + c->pad : 1, 0);
    mat B = mat_new(c->tab, br, bc, br + c->pad > 0 ? br + c->pad : 1, 0);
    mat D = mat_new(c->tcd, c->m, c->n, c->m + c->pad, 0);
    mat C = c->in_place ? D : mat_new(c->tcd, c->m, c->n, c->m + c->pad, 0);
    cudaDataType_t bt = c->tbias == -1 ? c->tcd : (cudaDataType_t)c->tbias;
    mat bias = mat_new(c->tbias == -2 ? CUDA_R_32F : bt, c->m, 1, c->m, 0);
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    fill(&A), fill(&B), fill(&bias);
    if (c->nan_cd) fill_nan(&D), fill_nan(&C);
    else fill(&C);
    double *c0 = malloc(sizeof(double) * (size_t)(c->m * c->n)); /* C before D overwrites it */
    for (int64_t j = 0; j < c->n; j++)
        for (int64_t i = 0; i < c->m; i++) c0[i + j * c->m] = get(&C, i, j);
    unsigned char *d0 = malloc(D.bytes);
    memcpy(d0, D.raw, D.bytes);

    CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &c->ta, sizeof c->ta));
    CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &c->tb, sizeof c->tb));
    if (c->tbias != -2) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        if (c->tbias != -1) {
            int32_t t = c->tbias;
            CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &t, sizeof t));
        }
        CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias.p, sizeof bias.p));
    }
    CHECK(cublasLtMatrixLayoutCreate(&la, c->tab, (uint64_t)A.rows, (uint64_t)A.cols, A.ld));
    CHECK(cublasLtMatrixLayoutCreate(&lb, c->tab, (uint64_t)B.rows, (uint64_t)B.cols, B.ld));
    CHECK(cublasLtMatrixLayoutCreate(&ld, c->tcd, (uint64_t)c->m, (uint64_t)c->n, D.ld));
    if (!c->in_place) CHECK(cublasLtMatrixLayoutCreate(&lc, c->tcd, (uint64_t)c->m, (uint64_t)c->n, C.ld));
    CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = 1 << 20;
    CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, c->in_place ? ld : lc, ld, pref, 1, &res, &found));
    if (found != 1 || res.state != CUBLAS_STATUS_SUCCESS || res.workspaceSize > ws) {
        result(false, c->name, "heuristic: %d results, state %d, workspace %zu", found, (int)res.state, res.workspaceSize);
        goto out;
    }
    static unsigned char workspace[1 << 20];
    CHECK(cublasLtMatmul(lt, op, &c->alpha, A.p, la, B.p, lb, &c->beta, C.p, c->in_place ? ld : lc, D.p, ld, &res.algo,
                         workspace, sizeof workspace, NULL));

    /* every element against the reference; padding rows of D (and bytes around it) untouched */
    double worst = 0;
    int64_t bad = 0, bi = 0, bj = 0;
    for (int64_t j = 0; j < c->n; j++)
        for (int64_t i = 0; i < c->m; i++) {
            double ref = 0, mag = 0;
            for (int64_t q = 0; q < c->k; q++) {
                double a = na ? get(&A, i, q) : get(&A, q, i), b = nb ? get(&B, q, j) : get(&B, j, q);
                ref += a * b, mag += fabs(a * b);
            }
            ref *= c->alpha, mag *= fabs(c->alpha);
            if (c->beta != 0) ref += c->beta * c0[i + j * c->m], mag += fabs(c->beta * c0[i + j * c->m]);
            if (c->tbias != -2) ref += get(&bias, i, 0), mag += fabs(get(&bias, i, 0));
            double rel = c->tcd == CUDA_R_32F ? 0x1p-24 : c->tcd == CUDA_R_16BF ? 0x1p-8 : 0x1p-11;
            double tol = rel * fabs(ref) * 1.001 + 1e-13 * mag + (c->tcd == CUDA_R_16F ? 0x1p-25 : 0);
            double d = get(&D, i, j), err = isnan(d) ? INFINITY : fabs(d - ref);
            if (err > tol) bad++;
            if (err / (tol > 0 ? tol : 1) > worst) worst = err / (tol > 0 ? tol : 1), bi = i, bj = j;
        }
    int64_t touched = 0;
    size_t off = (size_t)((unsigned char *)D.p - D.raw), es = esize(D.t);
    for (size_t b = 0; b < D.bytes; b++) {
        bool inside = b >= off && (b - off) / es / (size_t)D.ld < (size_t)c->n &&
                      (b - off) / es % (size_t)D.ld < (size_t)c->m;
        if (!inside && D.raw[b] != d0[b]) touched++;
    }
    if (bad || touched)
        result(false, c->name, "%lld elements out of tolerance (worst at %lld,%lld: %g vs tolerance ratio %g), %lld padding bytes written",
               (long long)bad, (long long)bi, (long long)bj, get(&D, bi, bj), worst, (long long)touched);
    else result(true, c->name, "");
out:
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(la), cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatrixLayoutDestroy(ld);
    cublasLtMatmulDescDestroy(op);
    free(c0), free(d0);
    mat_free(&A), mat_free(&B), mat_free(&D), mat_free(&bias);
    if (!c->in_place) mat_free(&C);
}
#undef CHECK

/* ---- a small fixed problem for the rejection checks: D[m x n] = A[m x k] B[k x n], all N ---- */

typedef struct {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulPreference_t pref;
    mat A, B, D, bias;
    cublasLtMatmulHeuristicResult_t res;
    int found;
    cublasStatus_t heur; /* the heuristic's answer */
} fixture;

static void fx_make(fixture *f, cudaDataType_t tab, cudaDataType_t tcd, int64_t m, int64_t n, int64_t k) {
    memset(f, 0, sizeof *f);
    f->A = mat_new(tab, m, k, m, 0), f->B = mat_new(tab, k, n, k, 0), f->D = mat_new(tcd, m, n, m, 0);
    f->bias = mat_new(tcd, m, 1, m, 0);
    fill(&f->A), fill(&f->B), fill(&f->D), fill(&f->bias);
    if (cublasLtMatmulDescCreate(&f->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) ||
        cublasLtMatrixLayoutCreate(&f->la, tab, (uint64_t)m, (uint64_t)k, m) ||
        cublasLtMatrixLayoutCreate(&f->lb, tab, (uint64_t)k, (uint64_t)n, k) ||
        cublasLtMatrixLayoutCreate(&f->ld, tcd, (uint64_t)m, (uint64_t)n, m) || cublasLtMatmulPreferenceCreate(&f->pref))
        abort();
}
static cublasStatus_t fx_heur(fixture *f) {
    return f->heur = cublasLtMatmulAlgoGetHeuristic(lt, f->op, f->la, f->lb, f->ld, f->ld, f->pref, 1, &f->res, &f->found);
}
static cublasStatus_t fx_mm(fixture *f, const void *A, const void *B, void *D, const cublasLtMatmulAlgo_t *algo) {
    float one = 1, zero = 0;
    return cublasLtMatmul(lt, f->op, &one, A, f->la, B, f->lb, &zero, D, f->ld, D, f->ld, algo, NULL, 0, NULL);
}
static void fx_free(fixture *f) {
    cublasLtMatmulPreferenceDestroy(f->pref);
    cublasLtMatrixLayoutDestroy(f->la), cublasLtMatrixLayoutDestroy(f->lb), cublasLtMatrixLayoutDestroy(f->ld);
    cublasLtMatmulDescDestroy(f->op);
    mat_free(&f->A), mat_free(&f->B), mat_free(&f->D), mat_free(&f->bias);
}

static void expect(const char *name, cublasStatus_t got, cublasStatus_t want) {
    result(got == want, name, "got %s, expected %s", cublasLtGetStatusString(got), cublasLtGetStatusString(want));
}

static void rejections(void) {
    fixture f;
    cublasLtEpilogue_t epi;

    fx_make(&f, CUDA_R_16BF, CUDA_R_16BF, 16, 16, 16);
    expect("heuristic ok (256-byte default alignment)", fx_heur(&f), CUBLAS_STATUS_SUCCESS);
    result(f.found == 1 && f.res.workspaceSize == 0, "heuristic: one algorithm, no workspace (max 0)", "found %d, ws %zu",
           f.found, f.res.workspaceSize);
    expect("aligned pointers accepted", fx_mm(&f, f.A.p, f.B.p, f.D.p, &f.res.algo), CUBLAS_STATUS_SUCCESS);
    expect("misaligned A rejected", fx_mm(&f, (char *)f.A.p + 2, f.B.p, f.D.p, &f.res.algo), CUBLAS_STATUS_INVALID_VALUE);
    expect("misaligned B rejected", fx_mm(&f, f.A.p, (char *)f.B.p + 16, f.D.p, &f.res.algo), CUBLAS_STATUS_INVALID_VALUE);
    expect("misaligned D rejected", fx_mm(&f, f.A.p, f.B.p, (char *)f.D.p + 2, &f.res.algo), CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulAlgo_t junk;
    memset(&junk, 0, sizeof junk);
    expect("algo not from the heuristic rejected", fx_mm(&f, f.A.p, f.B.p, f.D.p, &junk), CUBLAS_STATUS_INVALID_VALUE);
    expect("NULL algo (implicit heuristic) accepted", fx_mm(&f, f.A.p, f.B.p, f.D.p, NULL), CUBLAS_STATUS_SUCCESS);
    expect("D overlapping A rejected", fx_mm(&f, f.A.p, f.B.p, f.A.p, &f.res.algo), CUBLAS_STATUS_INVALID_VALUE);
    {
        uint32_t two = 2, one = 1, odd = 6;
        cublasLtMatmulAlgo_t strict = f.res.algo;
        cublasLtMatmulPreferenceSetAttribute(f.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &two, 4);
        fx_heur(&f);
        expect("A aligned to 2 bytes accepted when the preference says 2",
               fx_mm(&f, (char *)f.A.p + 2, f.B.p, f.D.p, &f.res.algo), CUBLAS_STATUS_SUCCESS);
        expect("algo from an earlier heuristic call on the same problem accepted",
               fx_mm(&f, f.A.p, f.B.p, f.D.p, &strict), CUBLAS_STATUS_SUCCESS);
        expect("alignment preference 6 rejected",
               cublasLtMatmulPreferenceSetAttribute(f.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &odd, 4),
               CUBLAS_STATUS_INVALID_VALUE);
        cublasLtMatmulPreferenceSetAttribute(f.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &one, 4);
        expect("bf16 A aligned to 1 byte: no algorithm", fx_heur(&f), CUBLAS_STATUS_NOT_SUPPORTED);
        result(f.found == 0, "no algorithm means returnAlgoCount 0", "found %d", f.found);
    }
    expect("attribute of the wrong size rejected",
           cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_TRANSA, &(int64_t){0}, 8), CUBLAS_STATUS_INVALID_VALUE);
    expect("requestedAlgoCount 0 rejected",
           cublasLtMatmulAlgoGetHeuristic(lt, f.op, f.la, f.lb, f.ld, f.ld, f.pref, 0, &f.res, &f.found),
           CUBLAS_STATUS_INVALID_VALUE);
    epi = CUBLASLT_EPILOGUE_RELU;
    expect("RELU epilogue rejected", cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
           CUBLAS_STATUS_NOT_SUPPORTED);
    epi = CUBLASLT_EPILOGUE_GELU_BIAS;
    expect("GELU_BIAS epilogue rejected", cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
           CUBLAS_STATUS_NOT_SUPPORTED);
    cublasLtMatmulDesc_t d2;
    expect("CUBLAS_COMPUTE_32F_FAST_TF32 not emulated", cublasLtMatmulDescCreate(&d2, CUBLAS_COMPUTE_32F_FAST_TF32, CUDA_R_32F),
           CUBLAS_STATUS_NOT_SUPPORTED);
    fx_free(&f);

    /* bias: type must be D's; the pointer's alignment at heuristic time is a promise */
    fx_make(&f, CUDA_R_16BF, CUDA_R_16BF, 16, 16, 16);
    epi = CUBLASLT_EPILOGUE_BIAS;
    int32_t f32 = CUDA_R_32F;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &f.bias.p, sizeof f.bias.p);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &f32, sizeof f32);
    expect("fp32 bias with bf16 D: no algorithm", fx_heur(&f), CUBLAS_STATUS_NOT_SUPPORTED);
    int32_t deflt = -1;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &deflt, sizeof deflt);
    expect("bf16 bias with bf16 D", fx_heur(&f), CUBLAS_STATUS_SUCCESS);
    const void *moved = (const char *)f.bias.p + 2;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &moved, sizeof moved);
    expect("bias less aligned than at heuristic time rejected", fx_mm(&f, f.A.p, f.B.p, f.D.p, &f.res.algo),
           CUBLAS_STATUS_INVALID_VALUE);
    fx_heur(&f);
    expect("misaligned bias fine when the heuristic saw it", fx_mm(&f, f.A.p, f.B.p, f.D.p, &f.res.algo),
           CUBLAS_STATUS_SUCCESS);
    cublasLtMatmulAlgo_t with_bias = f.res.algo;
    epi = CUBLASLT_EPILOGUE_DEFAULT;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    expect("algo chosen with another epilogue rejected", fx_mm(&f, f.A.p, f.B.p, f.D.p, &with_bias),
           CUBLAS_STATUS_INVALID_VALUE);
    fx_free(&f);

    /* type table, shapes, leading dimensions, in place */
    struct {
        const char *name;
        cudaDataType_t ta, tb, tc, td;
    } types[] = {{"A bf16 with B fp16 rejected", CUDA_R_16BF, CUDA_R_16F, CUDA_R_16BF, CUDA_R_16BF},
                 {"fp32 A/B with bf16 D rejected", CUDA_R_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF},
                 {"bf16 A/B with fp16 D rejected", CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16F, CUDA_R_16F},
                 {"C fp32 with D bf16 rejected", CUDA_R_16BF, CUDA_R_16BF, CUDA_R_32F, CUDA_R_16BF}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        fx_make(&f, types[i].ta, types[i].td, 8, 8, 8);
        cublasLtMatrixLayout_t lb, lc;
        cublasLtMatrixLayoutCreate(&lb, types[i].tb, 8, 8, 8);
        cublasLtMatrixLayoutCreate(&lc, types[i].tc, 8, 8, 8);
        expect(types[i].name,
               cublasLtMatmulAlgoGetHeuristic(lt, f.op, f.la, lb, lc, f.ld, f.pref, 1, &f.res, &f.found),
               CUBLAS_STATUS_NOT_SUPPORTED);
        cublasLtMatrixLayoutDestroy(lb), cublasLtMatrixLayoutDestroy(lc);
        fx_free(&f);
    }
    fx_make(&f, CUDA_R_16BF, CUDA_R_32F, 8, 8, 8);
    cublasLtMatrixLayout_t l9, la9, lsmall, lwide;
    cublasLtMatrixLayoutCreate(&l9, CUDA_R_16BF, 9, 8, 9);     /* k = 9 against A's k = 8 */
    cublasLtMatrixLayoutCreate(&la9, CUDA_R_16BF, 8, 9, 8);    /* with l9: a consistent k = 9 problem */
    cublasLtMatrixLayoutCreate(&lsmall, CUDA_R_16BF, 8, 8, 7); /* ld 7 < 8 rows */
    cublasLtMatrixLayoutCreate(&lwide, CUDA_R_32F, 8, 8, 9);   /* C layout differing from D's */
    expect("inner dimensions differ: rejected",
           cublasLtMatmulAlgoGetHeuristic(lt, f.op, f.la, l9, f.ld, f.ld, f.pref, 1, &f.res, &f.found),
           CUBLAS_STATUS_INVALID_VALUE);
    expect("ld < rows rejected",
           cublasLtMatmulAlgoGetHeuristic(lt, f.op, f.la, lsmall, f.ld, f.ld, f.pref, 1, &f.res, &f.found),
           CUBLAS_STATUS_INVALID_VALUE);
    fx_heur(&f);
    expect("algo of another problem (k 8 -> 9) rejected",
           cublasLtMatmul(lt, f.op, &(float){1}, f.A.p, la9, f.B.p, l9, &(float){0}, f.D.p, f.ld, f.D.p, f.ld,
                          &f.res.algo, NULL, 0, NULL),
           CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulAlgoGetHeuristic(lt, f.op, f.la, f.lb, lwide, f.ld, f.pref, 1, &f.res, &f.found);
    expect("in place (C == D) with different C and D layouts rejected",
           cublasLtMatmul(lt, f.op, &(float){1}, f.A.p, f.la, f.B.p, f.lb, &(float){1}, f.D.p, lwide, f.D.p, f.ld,
                          &f.res.algo, NULL, 0, NULL),
           CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatrixLayoutDestroy(l9), cublasLtMatrixLayoutDestroy(la9), cublasLtMatrixLayoutDestroy(lsmall), cublasLtMatrixLayoutDestroy(lwide);
    fx_free(&f);
}

/* ---- the GELU epilogues: GELU_AUX(_BIAS) writes x (bias included) to the auxiliary matrix and
 * gelu(x) to D; DGELU multiplies the product by gelu'(aux). GELU is the tanh approximation. ---- */

static double gelu_d(double x) { return 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }
static double gelu_grad_d(double x, double h) { return (gelu_d(x + h) - gelu_d(x - h)) / (2 * h); }

/* m x n output of A^T B (A stored k x m, "TN" as the forward GEMM), aux with ld m + pad */
static void gelu_case(const char *name, cublasLtEpilogue_t epi, int64_t m, int64_t n, int64_t k, int64_t pad) {
    fixture f;
    fx_make(&f, CUDA_R_16BF, CUDA_R_16BF, m, n, k);
    mat At = mat_new(CUDA_R_16BF, k, m, k, 0), aux = mat_new(CUDA_R_16BF, m, n, m + pad, 0);
    cublasLtMatrixLayout_t lat;
    cublasOperation_t T = CUBLAS_OP_T;
    fill(&At);
    bool bwd = epi == CUBLASLT_EPILOGUE_DGELU, bias = epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    if (bwd) fill(&aux);
    unsigned char *aux0 = malloc(aux.bytes);
    memcpy(aux0, aux.raw, aux.bytes);
    int64_t ld = m + pad;
    cublasLtMatrixLayoutCreate(&lat, CUDA_R_16BF, (uint64_t)k, (uint64_t)m, k);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_TRANSA, &T, sizeof T);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux.p, sizeof aux.p);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld);
    if (bias) cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &f.bias.p, sizeof f.bias.p);
    float one = 1, zero = 0;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt, f.op, lat, f.lb, f.ld, f.ld, f.pref, 1, &f.res, &f.found);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmul(lt, f.op, &one, At.p, lat, f.B.p, f.lb, &zero, f.D.p, f.ld, f.D.p, f.ld, &f.res.algo, NULL, 0,
                           NULL);
    int64_t bad = 0, touched = 0;
    double worst = 0;
    for (int64_t j = 0; s == CUBLAS_STATUS_SUCCESS && j < n; j++)
        for (int64_t i = 0; i < m; i++) {
            double x = bias ? get(&f.bias, i, 0) : 0;
            for (int64_t q = 0; q < k; q++) x += get(&At, q, i) * get(&f.B, q, j);
            double want_d, got_aux = get(&aux, i, j);
            if (bwd) {
                want_d = x * gelu_grad_d(got_aux, 1e-6);
            } else {
                want_d = gelu_d(x);
                double e = fabs(got_aux - x) / (0x1p-8 * fabs(x) * 1.001 + 1e-12);
                if (e > 1) bad++;
                if (e > worst) worst = e;
            }
            /* one bf16 rounding of a value computed from the fp32 x (x's own rounding: 2^-24) */
            double e = fabs(get(&f.D, i, j) - want_d) / (0x1p-8 * fabs(want_d) * 1.001 + 1e-6 * (1 + fabs(x)));
            if (e > 1) bad++;
            if (e > worst) worst = e;
        }
    /* aux's padding rows (and bytes around it) untouched; DGELU does not write aux at all */
    size_t es = 2;
    for (size_t b = 0; b < aux.bytes; b++) {
        bool inside = (b / es) % (size_t)ld < (size_t)m && b / es / (size_t)ld < (size_t)n;
        if ((bwd || !inside) && aux.raw[b] != aux0[b]) touched++;
    }
    result(s == CUBLAS_STATUS_SUCCESS && !bad && !touched, name, "%s, %lld elements out of tolerance (worst ratio %g), %lld aux bytes written where they must not be",
           cublasLtGetStatusString(s), (long long)bad, worst, (long long)touched);
    cublasLtMatrixLayoutDestroy(lat);
    free(aux0);
    mat_free(&At), mat_free(&aux);
    fx_free(&f);
}

static void gelu_rejections(void) {
    fixture f;
    fx_make(&f, CUDA_R_16BF, CUDA_R_16BF, 16, 16, 16);
    mat aux = mat_new(CUDA_R_16BF, 16, 16, 16, 0);
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_GELU_AUX;
    int64_t ld = 12;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux.p, sizeof aux.p);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld);
    expect("GELU aux ld 12 (not a multiple of 8) rejected", fx_heur(&f), CUBLAS_STATUS_INVALID_VALUE);
    ld = 8;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld);
    expect("GELU aux ld 8 < 16 rows rejected", fx_heur(&f), CUBLAS_STATUS_INVALID_VALUE);
    ld = 16;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld, sizeof ld);
    int32_t f32 = CUDA_R_32F;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &f32, sizeof f32);
    expect("fp32 GELU aux with bf16 D: no algorithm", fx_heur(&f), CUBLAS_STATUS_NOT_SUPPORTED);
    int32_t deflt = -1;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE, &deflt, sizeof deflt);
    expect("GELU aux ld 16, D's type: an algorithm", fx_heur(&f), CUBLAS_STATUS_SUCCESS);
    expect("GELU epilogue runs", fx_mm(&f, f.A.p, f.B.p, f.D.p, &f.res.algo), CUBLAS_STATUS_SUCCESS);
    void *moved = (char *)aux.p + 2;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &moved, sizeof moved);
    expect("aux less aligned than at heuristic time rejected", fx_mm(&f, f.A.p, f.B.p, f.D.p, &f.res.algo),
           CUBLAS_STATUS_INVALID_VALUE);
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &f.D.p, sizeof f.D.p);
    expect("aux == D rejected", fx_mm(&f, f.A.p, f.B.p, f.D.p, &f.res.algo), CUBLAS_STATUS_INVALID_VALUE);
    void *null = NULL;
    cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &null, sizeof null);
    expect("GELU epilogue without an aux pointer rejected", fx_mm(&f, f.A.p, f.B.p, f.D.p, NULL),
           CUBLAS_STATUS_INVALID_VALUE);
    epi = CUBLASLT_EPILOGUE_DGELU_BGRAD;
    expect("DGELU_BGRAD not emulated", cublasLtMatmulDescSetAttribute(f.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
           CUBLAS_STATUS_NOT_SUPPORTED);
    mat_free(&aux);
    fx_free(&f);
}

/* Round to nearest even, on exact ties: sums of two or three exact inputs, k = 2 or 3. */
static void ties(const char *name, cudaDataType_t t, const double *terms, int k, double want) {
    fixture f;
    fx_make(&f, t, t, 1, 1, k);
    for (int q = 0; q < k; q++) put(&f.A, 0, q, terms[q]), put(&f.B, q, 0, 1.0);
    fx_heur(&f);
    cublasStatus_t s = fx_mm(&f, f.A.p, f.B.p, f.D.p, &f.res.algo);
    double got = get(&f.D, 0, 0);
    result(s == CUBLAS_STATUS_SUCCESS && got == want, name, "%s, got %.10g, expected %.10g", cublasLtGetStatusString(s), got,
           want);
    fx_free(&f);
}

static void timing(void) {
    const int64_t N = 1024;
    fixture f;
    fx_make(&f, CUDA_R_16BF, CUDA_R_16BF, N, N, N);
    fx_heur(&f);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    cublasStatus_t s = fx_mm(&f, f.A.p, f.B.p, f.D.p, &f.res.algo);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    int bad = 0;
    for (int t = 0; t < 500; t++) { /* spot checks */
        int64_t i = rnd() % N, j = rnd() % N;
        double ref = 0;
        for (int64_t q = 0; q < N; q++) ref += get(&f.A, i, q) * get(&f.B, q, j);
        if (fabs(get(&f.D, i, j) - ref) > 0x1p-8 * fabs(ref) * 1.001 + 1e-9) bad++;
    }
    printf("# 1024 x 1024 x 1024 bf16 GEMM: %.3f s\n", sec);
    /* the budget is 2 s; allow slack for a loaded machine, the number is printed above */
    result(s == CUBLAS_STATUS_SUCCESS && !bad && sec < 10, "1024^3 bf16 GEMM correct and fast", "%s, %d bad, %.2f s",
           cublasLtGetStatusString(s), bad, sec);
    fx_free(&f);
}

int main(void) {
    if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS) return 2;
    const cublasOperation_t N = CUBLAS_OP_N, T = CUBLAS_OP_T;
    const int NB = -2;
    gemm_case cases[] = {
        /* name                         tab          tcd          bias ta tb  m   n   k pad alpha beta  inpl nan */
        {"bf16->bf16 NN", CUDA_R_16BF, CUDA_R_16BF, NB, N, N, 37, 29, 53, 0, 1, 0, false, false},
        {"bf16->bf16 NT", CUDA_R_16BF, CUDA_R_16BF, NB, N, T, 37, 29, 53, 0, 1, 0, false, false},
        {"bf16->bf16 TN", CUDA_R_16BF, CUDA_R_16BF, NB, T, N, 37, 29, 53, 0, 1, 0, false, false},
        {"bf16->bf16 TT", CUDA_R_16BF, CUDA_R_16BF, NB, T, T, 37, 29, 53, 0, 1, 0, false, false},
        {"fp32 NN alpha beta", CUDA_R_32F, CUDA_R_32F, NB, N, N, 33, 17, 65, 0, 0.5f, 0.25f, false, false},
        {"fp32 NT alpha beta", CUDA_R_32F, CUDA_R_32F, NB, N, T, 33, 17, 65, 0, -2, 1, false, false},
        {"fp32 TN alpha beta", CUDA_R_32F, CUDA_R_32F, NB, T, N, 33, 17, 65, 0, 1, -0.5f, false, false},
        {"fp32 TT alpha beta", CUDA_R_32F, CUDA_R_32F, NB, T, T, 33, 17, 65, 0, 3, 2, false, false},
        {"bf16->fp32 beta 1 in place NT", CUDA_R_16BF, CUDA_R_32F, NB, N, T, 40, 24, 31, 0, 1, 1, true, false},
        {"bf16->fp32 beta 1 out of place", CUDA_R_16BF, CUDA_R_32F, NB, T, N, 24, 40, 31, 0, 1, 1, false, false},
        {"fp16->fp16 TN", CUDA_R_16F, CUDA_R_16F, NB, T, N, 21, 19, 40, 0, 1, 0, false, false},
        {"fp16->fp32 NN beta", CUDA_R_16F, CUDA_R_32F, NB, N, N, 21, 19, 40, 0, 1, 0.5f, false, false},
        {"bias bf16 (default type) TN", CUDA_R_16BF, CUDA_R_16BF, -1, T, N, 48, 20, 64, 0, 1, 0, false, false},
        {"bias bf16 (explicit type) NN", CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF, N, N, 48, 20, 64, 0, 1, 0, false, false},
        {"bias fp32 TN", CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, T, N, 48, 20, 64, 0, 1, 0, false, false},
        {"bias fp32 with bf16 inputs, beta", CUDA_R_16BF, CUDA_R_32F, -1, T, N, 48, 20, 64, 0, 0.5f, 1, false, false},
        {"beta 0: NaN in C and D ignored", CUDA_R_16BF, CUDA_R_16BF, NB, T, N, 30, 30, 30, 0, 1, 0, false, true},
        {"beta 0: NaN in D in place ignored", CUDA_R_32F, CUDA_R_32F, NB, N, T, 30, 30, 30, 0, 1, 0, true, true},
        {"beta 0 with bias: NaN ignored", CUDA_R_16BF, CUDA_R_32F, -1, T, N, 30, 30, 30, 0, 1, 0, true, true},
        {"ld > rows (all), padding kept", CUDA_R_16BF, CUDA_R_16BF, NB, T, N, 19, 23, 29, 7, 1, 0, false, false},
        {"ld > rows fp32 NT beta", CUDA_R_32F, CUDA_R_32F, -1, N, T, 19, 23, 29, 5, 1, 1, false, false},
        {"k = 0: D = beta C + bias", CUDA_R_32F, CUDA_R_32F, -1, N, N, 9, 7, 0, 0, 1, 0.5f, false, false},
        {"1 x 1 x 1", CUDA_R_16BF, CUDA_R_16BF, NB, N, N, 1, 1, 1, 0, 1, 0, false, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);

    ties("bf16 tie 1 + 2^-8 -> 1 (even)", CUDA_R_16BF, (const double[]){1, 0x1p-8}, 2, 1.0);
    ties("bf16 tie 1 + 3*2^-8 -> 1 + 2^-6 (even)", CUDA_R_16BF, (const double[]){1 + 0x1p-7, 0x1p-8}, 2, 1 + 0x1p-6);
    ties("bf16 above tie rounds up", CUDA_R_16BF, (const double[]){1, 0x1p-8, 0x1p-16}, 3, 1 + 0x1p-7);
    ties("fp16 tie 1 + 2^-11 -> 1 (even)", CUDA_R_16F, (const double[]){1, 0x1p-11}, 2, 1.0);
    ties("fp16 tie 1 + 3*2^-11 -> 1 + 2^-9 (even)", CUDA_R_16F, (const double[]){1 + 0x1p-10, 0x1p-11}, 2, 1 + 0x1p-9);
    ties("fp16 overflow -> inf", CUDA_R_16F, (const double[]){32768, 32768}, 2, INFINITY);

    gelu_case("GELU_AUX_BIAS TN: aux = x, D = gelu(x)", CUBLASLT_EPILOGUE_GELU_AUX_BIAS, 48, 20, 64, 0);
    gelu_case("GELU_AUX TN, aux ld > rows: padding kept", CUBLASLT_EPILOGUE_GELU_AUX, 40, 13, 33, 8);
    gelu_case("DGELU TN: D = x * gelu'(aux), aux not written", CUBLASLT_EPILOGUE_DGELU, 48, 20, 64, 8);
    rejections();
    gelu_rejections();
    timing();
    cublasLtDestroy(lt);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
