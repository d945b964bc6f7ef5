/* A CPU stand-in for the part of cuBLASLt that lib/cuda/cuda_matmul.c uses, linked into the
 * emulation build (make EMU=1) instead of libcublasLt. "Device" pointers are host pointers, the
 * work runs synchronously on the calling thread (OpenMP inside), streams are ignored.
 *
 * Semantics, after NVIDIA's cuBLASLt documentation: column-major matrices,
 *   D = alpha * op(A) * op(B) + beta * C,   then the epilogue (BIAS: bias[i] added to row i of
 *   every column of D, "added before applying final postprocessing"; GELU_AUX(_BIAS): the value x
 *   (bias included) stored to the auxiliary matrix and gelu(x) to D, the tanh approximation as
 *   cuBLASLt's; DGELU: D = x * gelu'(aux), the auxiliary matrix an input). The auxiliary matrix
 *   has D's type (AUX_DATA_TYPE unset) and D's rows, its leading dimension AUX_LD a multiple of 8.
 * Numerics: products of 16/32-bit float inputs are exact in double; each dot product is summed in
 * double, alpha, beta * C and the bias are applied in double, the result is rounded once to float
 * and then to D's type with round to nearest even. That is what the GPU's fp32 accumulator plus
 * output conversion computes, up to summation order. With beta == 0, C is never read.
 *
 * The point of the emulator is to catch our misuse, so it is as strict as the documentation (and,
 * where the GPU would silently misbehave instead of failing, a bit stricter: aliasing of D with an
 * input, algorithms reused for another problem). Every rejection prints one line to stderr. */
#include <cublasLt.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu.h"

#define MAGIC_HANDLE 0x4c54454du /* "MELT" */
#define MAGIC_DESC 0x44455343u
#define MAGIC_LAYOUT 0x4c41594fu
#define MAGIC_PREF 0x50524546u
#define MAGIC_DEAD 0xdeadbeefu
#define ALGO_MAGIC 0x474c41544c554d45ull /* "EMULTALG": marks algos from our heuristic */
#define DEFAULT_ALIGN 256u               /* CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES default */

struct cublasLtContext {
    uint32_t magic;
};

typedef struct {
    uint32_t magic;
    int32_t compute, scale, pointer_mode, transa, transb, transc, fill, bias_type;
    uint32_t epilogue;
    const void *bias;
    const void *aux;
    int64_t aux_ld;
    int32_t aux_type;
} emu_desc;

typedef struct {
    uint32_t magic;
    int32_t type, order, batch;
    uint64_t rows, cols;
    int64_t ld;
} emu_layout;

typedef struct {
    uint32_t magic;
    uint32_t search, align[4]; /* A, B, C, D */
    uint64_t max_ws;
} emu_pref;

/* One line to stderr saying why, then the status (NOT_SUPPORTED: we or cuBLASLt lack it;
 * INVALID_VALUE: the caller broke a documented rule). */
static cublasStatus_t fail(cublasStatus_t s, const char *fn, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cublaslt_emu: %s: %s: ", fn, cublasLtGetStatusString(s));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return s;
}
#define FAIL(s, ...) fail(CUBLAS_STATUS_##s, __func__, __VA_ARGS__)

static const char *type_name(int32_t t) {
    switch (t) {
    case CUDA_R_32F: return "CUDA_R_32F";
    case CUDA_R_16F: return "CUDA_R_16F";
    case CUDA_R_16BF: return "CUDA_R_16BF";
    }
    return "an unsupported type";
}
static size_t type_size(int32_t t) { return t == CUDA_R_32F ? 4 : 2; }
static bool known_type(int64_t t) { return t == CUDA_R_32F || t == CUDA_R_16F || t == CUDA_R_16BF; }

/* ---- element conversions (round to nearest even; the default FP rounding mode is assumed) ---- */

static float load(int32_t t, const void *base, int64_t i) {
    if (t == CUDA_R_32F) return ((const float *)base)[i];
    uint16_t h = ((const uint16_t *)base)[i];
    if (t == CUDA_R_16BF) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    int e = (h >> 10) & 31, m = h & 1023;
    float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
    return (h & 0x8000) ? -v : v;
}

static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if (isnan(f)) return (uint16_t)((u >> 16) | 0x40); /* stays a (quiet) NaN */
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); /* ties go to the even half */
}

static uint16_t to_f16(float f) {
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    float a = fabsf(f);
    if (isnan(f)) return sign | 0x7e00;
    if (isinf(f)) return sign | 0x7c00;
    int e;
    frexpf(a, &e);        /* a in [2^(e-1), 2^e) */
    if (e < -13) e = -13; /* subnormals (and 0) share the spacing 2^-24 */
    float q = ldexpf(1.0f, e - 11);
    float r = nearbyintf(a / q) * q; /* exact scalings by powers of two around one RNE step */
    if (r >= 65536.0f) return sign | 0x7c00;
    if (r < 0x1p-14f) return sign | (uint16_t)(r * 0x1p24f);
    float fr = frexpf(r, &e);
    return sign | (uint16_t)((e + 14) << 10) | (uint16_t)(fr * 2048.0f - 1024.0f);
}

static void store(int32_t t, void *base, int64_t i, float v) {
    if (t == CUDA_R_32F) ((float *)base)[i] = v;
    else ((uint16_t *)base)[i] = t == CUDA_R_16BF ? to_bf16(v) : to_f16(v);
}

/* ---- handle, status strings ---- */

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    if (!h) return FAIL(INVALID_VALUE, "handle pointer is NULL");
    *h = malloc(sizeof **h);
    if (!*h) return CUBLAS_STATUS_ALLOC_FAILED;
    (*h)->magic = MAGIC_HANDLE;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    if (!h || h->magic != MAGIC_HANDLE) return FAIL(NOT_INITIALIZED, "not a live cuBLASLt handle");
    h->magic = MAGIC_DEAD;
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}

const char *cublasLtGetStatusName(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "<unknown cublasStatus_t>";
}

const char *cublasLtGetStatusString(cublasStatus_t s) { return cublasLtGetStatusName(s); }

/* ---- descriptors: only the attributes and values we emulate are accepted ---- */

/* The documented storage size of each attribute must match (else INVALID_VALUE, per the docs). */
#define TAKE(type, dst)                                                                                  \
    do {                                                                                                 \
        if (n != sizeof(type)) return FAIL(INVALID_VALUE, "attribute %d: %zu bytes, expected %zu", (int)attr, n, sizeof(type)); \
        type v_;                                                                                         \
        memcpy(&v_, buf, sizeof v_);                                                                     \
        dst = v_;                                                                                        \
    } while (0)

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *out, cublasComputeType_t compute, cudaDataType_t scale) {
    if (!out) return FAIL(INVALID_VALUE, "descriptor pointer is NULL");
    if (compute != CUBLAS_COMPUTE_32F)
        return FAIL(NOT_SUPPORTED, "compute type %d is not emulated (only CUBLAS_COMPUTE_32F)", (int)compute);
    if (scale != CUDA_R_32F) return FAIL(NOT_SUPPORTED, "CUBLAS_COMPUTE_32F needs scale type CUDA_R_32F, not %d", (int)scale);
    emu_desc *d = calloc(1, sizeof *d);
    if (!d) return CUBLAS_STATUS_ALLOC_FAILED;
    *d = (emu_desc){.magic = MAGIC_DESC, .compute = compute, .scale = scale, .pointer_mode = CUBLASLT_POINTER_MODE_HOST,
                    .transa = CUBLAS_OP_N, .transb = CUBLAS_OP_N, .transc = CUBLAS_OP_N, .fill = CUBLAS_FILL_MODE_FULL,
                    .bias_type = -1, .epilogue = CUBLASLT_EPILOGUE_DEFAULT, .aux_type = -1};
    *out = (cublasLtMatmulDesc_t)(void *)d;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t op) {
    emu_desc *d = (emu_desc *)(void *)op;
    if (!d) return CUBLAS_STATUS_SUCCESS;
    if (d->magic != MAGIC_DESC) return FAIL(INVALID_VALUE, "not a live matmul descriptor");
    d->magic = MAGIC_DEAD;
    free(d);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t n) {
    emu_desc *d = (emu_desc *)(void *)op;
    if (!d || d->magic != MAGIC_DESC) return FAIL(INVALID_VALUE, "not a live matmul descriptor");
    if (!buf) return FAIL(INVALID_VALUE, "attribute %d: buf is NULL", (int)attr);
    int64_t v = 0;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_COMPUTE_TYPE:
        TAKE(int32_t, v);
        if (v != CUBLAS_COMPUTE_32F) return FAIL(NOT_SUPPORTED, "compute type %d is not emulated", (int)v);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_SCALE_TYPE:
        TAKE(int32_t, v);
        if (v != CUDA_R_32F) return FAIL(NOT_SUPPORTED, "scale type %d with CUBLAS_COMPUTE_32F", (int)v);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_POINTER_MODE:
        TAKE(int32_t, v);
        if (v != CUBLASLT_POINTER_MODE_HOST) return FAIL(NOT_SUPPORTED, "pointer mode %d (only host alpha/beta)", (int)v);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
        TAKE(int32_t, v);
        if (v != CUBLAS_OP_N && v != CUBLAS_OP_T) return FAIL(NOT_SUPPORTED, "operation %d (only N and T)", (int)v);
        *(attr == CUBLASLT_MATMUL_DESC_TRANSA ? &d->transa : &d->transb) = (int32_t)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_TRANSC: /* documented: only CUBLAS_OP_N */
        TAKE(int32_t, v);
        if (v != CUBLAS_OP_N) return FAIL(NOT_SUPPORTED, "TRANSC %d (only CUBLAS_OP_N is supported)", (int)v);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_FILL_MODE:
        TAKE(int32_t, v);
        if (v != CUBLAS_FILL_MODE_FULL) return FAIL(NOT_SUPPORTED, "fill mode %d (only FULL)", (int)v);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        TAKE(uint32_t, v);
        if (v != CUBLASLT_EPILOGUE_DEFAULT && v != CUBLASLT_EPILOGUE_BIAS && v != CUBLASLT_EPILOGUE_GELU_AUX &&
            v != CUBLASLT_EPILOGUE_GELU_AUX_BIAS && v != CUBLASLT_EPILOGUE_DGELU)
            return FAIL(NOT_SUPPORTED, "epilogue %d is not emulated (only DEFAULT, BIAS, GELU_AUX, GELU_AUX_BIAS, DGELU)",
                        (int)v);
        d->epilogue = (uint32_t)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        if (n != sizeof(void *)) return FAIL(INVALID_VALUE, "BIAS_POINTER: %zu bytes, expected %zu", n, sizeof(void *));
        memcpy(&d->bias, buf, sizeof d->bias);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
        if (n != sizeof(void *)) return FAIL(INVALID_VALUE, "EPILOGUE_AUX_POINTER: %zu bytes, expected %zu", n, sizeof(void *));
        memcpy(&d->aux, buf, sizeof d->aux);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
        TAKE(int64_t, d->aux_ld);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE:
        TAKE(int32_t, v);
        if (v != -1 && !known_type(v)) return FAIL(NOT_SUPPORTED, "aux data type %d", (int)v);
        d->aux_type = (int32_t)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
        TAKE(int32_t, v);
        if (v != -1 && !known_type(v)) return FAIL(NOT_SUPPORTED, "bias data type %d", (int)v);
        d->bias_type = (int32_t)v;
        return CUBLAS_STATUS_SUCCESS;
    default: return FAIL(NOT_SUPPORTED, "matmul descriptor attribute %d is not emulated", (int)attr);
    }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *out, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    if (!out) return FAIL(INVALID_VALUE, "layout pointer is NULL");
    if (!known_type(type)) return FAIL(NOT_SUPPORTED, "matrix type %d (only 32F, 16F, 16BF)", (int)type);
    emu_layout *l = malloc(sizeof *l);
    if (!l) return CUBLAS_STATUS_ALLOC_FAILED;
    *l = (emu_layout){.magic = MAGIC_LAYOUT, .type = type, .order = CUBLASLT_ORDER_COL, .batch = 1, .rows = rows,
                      .cols = cols, .ld = ld};
    *out = (cublasLtMatrixLayout_t)(void *)l;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t ml) {
    emu_layout *l = (emu_layout *)(void *)ml;
    if (!l) return CUBLAS_STATUS_SUCCESS;
    if (l->magic != MAGIC_LAYOUT) return FAIL(INVALID_VALUE, "not a live matrix layout");
    l->magic = MAGIC_DEAD;
    free(l);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t ml, cublasLtMatrixLayoutAttribute_t attr,
                                                const void *buf, size_t n) {
    emu_layout *l = (emu_layout *)(void *)ml;
    if (!l || l->magic != MAGIC_LAYOUT) return FAIL(INVALID_VALUE, "not a live matrix layout");
    if (!buf) return FAIL(INVALID_VALUE, "attribute %d: buf is NULL", (int)attr);
    int64_t v = 0;
    switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_TYPE:
        TAKE(uint32_t, v);
        if (!known_type(v)) return FAIL(NOT_SUPPORTED, "matrix type %d", (int)v);
        l->type = (int32_t)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATRIX_LAYOUT_ORDER:
        TAKE(int32_t, v);
        if (v != CUBLASLT_ORDER_COL) return FAIL(NOT_SUPPORTED, "memory order %d (only CUBLASLT_ORDER_COL)", (int)v);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATRIX_LAYOUT_ROWS: TAKE(uint64_t, l->rows); return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATRIX_LAYOUT_COLS: TAKE(uint64_t, l->cols); return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATRIX_LAYOUT_LD: TAKE(int64_t, l->ld); return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT:
        TAKE(int32_t, v);
        if (v != 1) return FAIL(NOT_SUPPORTED, "batch count %d (only 1)", (int)v);
        return CUBLAS_STATUS_SUCCESS;
    default: return FAIL(NOT_SUPPORTED, "matrix layout attribute %d is not emulated", (int)attr);
    }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *out) {
    if (!out) return FAIL(INVALID_VALUE, "preference pointer is NULL");
    emu_pref *p = malloc(sizeof *p);
    if (!p) return CUBLAS_STATUS_ALLOC_FAILED;
    /* documented defaults: no workspace, 256-byte alignment of every matrix */
    *p = (emu_pref){.magic = MAGIC_PREF, .search = CUBLASLT_SEARCH_BEST_FIT, .max_ws = 0,
                    .align = {DEFAULT_ALIGN, DEFAULT_ALIGN, DEFAULT_ALIGN, DEFAULT_ALIGN}};
    *out = (cublasLtMatmulPreference_t)(void *)p;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    emu_pref *p = (emu_pref *)(void *)pref;
    if (!p) return CUBLAS_STATUS_SUCCESS;
    if (p->magic != MAGIC_PREF) return FAIL(INVALID_VALUE, "not a live matmul preference");
    p->magic = MAGIC_DEAD;
    free(p);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t n) {
    emu_pref *p = (emu_pref *)(void *)pref;
    if (!p || p->magic != MAGIC_PREF) return FAIL(INVALID_VALUE, "not a live matmul preference");
    if (!buf) return FAIL(INVALID_VALUE, "attribute %d: buf is NULL", (int)attr);
    uint64_t v = 0;
    switch (attr) {
    case CUBLASLT_MATMUL_PREF_SEARCH_MODE:
        TAKE(uint32_t, v);
        if (v != CUBLASLT_SEARCH_BEST_FIT) return FAIL(NOT_SUPPORTED, "search mode %d (only BEST_FIT)", (int)v);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: TAKE(uint64_t, p->max_ws); return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
        TAKE(uint32_t, v);
        /* an alignment is a power of two; anything else is surely a bug on our side */
        if (v == 0 || (v & (v - 1))) return FAIL(INVALID_VALUE, "minimum alignment %llu is not a power of two", (unsigned long long)v);
        p->align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = (uint32_t)v;
        return CUBLAS_STATUS_SUCCESS;
    default: return FAIL(NOT_SUPPORTED, "preference attribute %d is not emulated", (int)attr);
    }
}

/* ---- problem checks shared by the heuristic and the matmul ---- */

typedef struct {
    const emu_desc *op;
    const emu_layout *l[4]; /* A, B, C, D */
    int64_t m, n, k;
    int32_t bias_type; /* resolved; -1 without the bias epilogue */
    int gelu;          /* 0: none, 1: GELU_AUX(_BIAS) (aux written), 2: DGELU (aux read) */
    int64_t aux_ld;
} problem;

static const char MAT[] = "ABCD";

static cublasStatus_t check_problem(const char *fn, cublasLtHandle_t h, cublasLtMatmulDesc_t opd,
                                    cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                                    cublasLtMatrixLayout_t ldd, problem *p) {
    if (!h || h->magic != MAGIC_HANDLE) return fail(CUBLAS_STATUS_NOT_INITIALIZED, fn, "not a live cuBLASLt handle");
    p->op = (const emu_desc *)(const void *)opd;
    if (!p->op || p->op->magic != MAGIC_DESC) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "not a live matmul descriptor");
    const cublasLtMatrixLayout_t in[4] = {la, lb, lc, ldd};
    for (int i = 0; i < 4; i++) {
        const emu_layout *l = p->l[i] = (const emu_layout *)(const void *)in[i];
        if (!l || l->magic != MAGIC_LAYOUT) return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "%c: not a live matrix layout", MAT[i]);
        /* documented: ld must keep columns from overlapping, i.e. ld >= rows (and BLAS asks >= 1) */
        if (l->ld < 1 || (uint64_t)l->ld < l->rows)
            return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "%c: leading dimension %lld < rows %llu", MAT[i], (long long)l->ld,
                        (unsigned long long)l->rows);
        if (l->rows > INT32_MAX || l->cols > INT32_MAX || l->ld > INT32_MAX)
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "%c: %llu x %llu (ld %lld) exceeds int32", MAT[i],
                        (unsigned long long)l->rows, (unsigned long long)l->cols, (long long)l->ld);
    }
    const emu_layout *A = p->l[0], *B = p->l[1], *C = p->l[2], *D = p->l[3];
    /* CUBLAS_COMPUTE_32F / scale 32F rows of the documented type table (non-fp8, non-complex):
     * A/B 16F, 16BF or 32F with C/D of the same type, or A/B 16F/16BF with C/D 32F. */
    if (A->type != B->type || C->type != D->type || (A->type == CUDA_R_32F && D->type != CUDA_R_32F) ||
        (D->type != CUDA_R_32F && D->type != A->type))
        return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "types A %s, B %s, C %s, D %s with CUBLAS_COMPUTE_32F",
                    type_name(A->type), type_name(B->type), type_name(C->type), type_name(D->type));
    bool ta = p->op->transa == CUBLAS_OP_T, tb = p->op->transb == CUBLAS_OP_T;
    int64_t am = (int64_t)(ta ? A->cols : A->rows), ak = (int64_t)(ta ? A->rows : A->cols);
    int64_t bk = (int64_t)(tb ? B->cols : B->rows), bn = (int64_t)(tb ? B->rows : B->cols);
    p->m = (int64_t)D->rows, p->n = (int64_t)D->cols, p->k = ak;
    if (am != p->m || bn != p->n || ak != bk || C->rows != D->rows || C->cols != D->cols)
        return fail(CUBLAS_STATUS_INVALID_VALUE, fn,
                    "shapes: op(A) %lld x %lld, op(B) %lld x %lld, C %llu x %llu, D %llu x %llu (trans %c%c)", (long long)am,
                    (long long)ak, (long long)bk, (long long)bn, (unsigned long long)C->rows, (unsigned long long)C->cols,
                    (unsigned long long)D->rows, (unsigned long long)D->cols, ta ? 'T' : 'N', tb ? 'T' : 'N');
    p->bias_type = -1;
    uint32_t epi = p->op->epilogue;
    p->gelu = epi == CUBLASLT_EPILOGUE_DGELU ? 2 : (epi == CUBLASLT_EPILOGUE_GELU_AUX || epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS);
    p->aux_ld = p->gelu ? p->op->aux_ld : 0;
    if (p->gelu) {
        /* AUX_LD doc: "divisible by 8 and no less than the number of rows in the output matrix";
         * AUX_DATA_TYPE doc: GELU's auxiliary matrix has the output's type */
        if (p->aux_ld % 8 || p->aux_ld < p->m)
            return fail(CUBLAS_STATUS_INVALID_VALUE, fn, "EPILOGUE_AUX_LD %lld: must be a multiple of 8 and >= %lld rows",
                        (long long)p->aux_ld, (long long)p->m);
        if (p->op->aux_type != -1 && p->op->aux_type != D->type)
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "GELU aux of type %s with D of type %s",
                        type_name(p->op->aux_type), type_name(D->type));
    }
    if (epi == CUBLASLT_EPILOGUE_BIAS || epi == CUBLASLT_EPILOGUE_GELU_AUX_BIAS) {
        /* BIAS_DATA_TYPE doc: the bias has D's type (exceptions only for IMMA and fp8 kernels) */
        p->bias_type = p->op->bias_type == -1 ? D->type : p->op->bias_type;
        if (p->bias_type != D->type)
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "bias of type %s with D of type %s (must match)",
                        type_name(p->bias_type), type_name(D->type));
    }
    return CUBLAS_STATUS_SUCCESS;
}

static uint64_t fnv(uint64_t h, int64_t v) {
    for (int i = 0; i < 8; i++) h = (h ^ (uint64_t)((v >> (8 * i)) & 0xff)) * 0x100000001b3ull;
    return h;
}

/* Identifies the problem an algorithm was chosen for: everything except the pointers. */
static uint64_t fingerprint(const problem *p) {
    const emu_desc *o = p->op;
    uint64_t h = 0xcbf29ce484222325ull;
    int64_t f[] = {o->compute, o->scale, o->pointer_mode, o->transa, o->transb, o->epilogue, p->bias_type, p->aux_ld};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) h = fnv(h, f[i]);
    for (int i = 0; i < 4; i++) {
        h = fnv(h, p->l[i]->type);
        h = fnv(h, (int64_t)p->l[i]->rows);
        h = fnv(h, (int64_t)p->l[i]->cols);
        h = fnv(h, p->l[i]->ld);
    }
    return h;
}

/* Largest power of two (up to 256, what the alignment preferences speak of) dividing the address. */
static uint64_t addr_align(const void *ptr) {
    uintptr_t u = (uintptr_t)ptr;
    uint64_t a = 1;
    while (a < DEFAULT_ALIGN && !(u & a)) a <<= 1;
    return a;
}

/* The one algorithm: data[0] marks it as ours, data[1] the problem, data[2..5] the alignments of
 * A, B, C, D that it was promised, data[6] those of the bias (low half) and the auxiliary matrix
 * (high half), data[7] its workspace (none). */
static cublasStatus_t heuristic(const char *fn, const problem *p, const uint32_t align[4], uint64_t max_ws,
                                cublasLtMatmulAlgo_t *algo) {
    /* WAN_EMU_CUBLASLT_REFUSE=N: no algorithm when m, n or k is at most N, as the real heuristic
     * may answer for degenerate shapes (tests the caller's fallback) */
    const char *refuse = getenv("WAN_EMU_CUBLASLT_REFUSE");
    if (refuse && *refuse) {
        int64_t lim = strtoll(refuse, NULL, 10), mn = p->m < p->n ? p->m : p->n;
        if (p->k < mn) mn = p->k;
        if (mn <= lim)
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "no algorithm for m=%lld n=%lld k=%lld (WAN_EMU_CUBLASLT_REFUSE=%s)",
                        (long long)p->m, (long long)p->n, (long long)p->k, refuse);
    }
    for (int i = 0; i < 4; i++)
        if (align[i] < type_size(p->l[i]->type))
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "no algorithm for %c aligned to %u bytes (elements of %zu bytes)",
                        MAT[i], align[i], type_size(p->l[i]->type));
    uint64_t bias_align = DEFAULT_ALIGN;
    if (p->bias_type >= 0) { /* the bias pointer's value tells the heuristic its alignment (documented) */
        bias_align = addr_align(p->op->bias);
        if (bias_align < type_size(p->bias_type))
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "no algorithm for a bias pointer %p aligned to %llu bytes",
                        p->op->bias, (unsigned long long)bias_align);
    }
    uint64_t aux_align = DEFAULT_ALIGN;
    if (p->gelu) { /* likewise the auxiliary pointer's value */
        aux_align = addr_align(p->op->aux);
        if (aux_align < type_size(p->l[3]->type))
            return fail(CUBLAS_STATUS_NOT_SUPPORTED, fn, "no algorithm for an aux pointer %p aligned to %llu bytes",
                        p->op->aux, (unsigned long long)aux_align);
    }
    (void)max_ws; /* we need no workspace, so every MAX_WORKSPACE_BYTES is respected */
    memset(algo, 0, sizeof *algo);
    algo->data[0] = ALGO_MAGIC;
    algo->data[1] = fingerprint(p);
    for (int i = 0; i < 4; i++) algo->data[2 + i] = align[i];
    algo->data[6] = bias_align | aux_align << 32;
    algo->data[7] = 0;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la,
                                              cublasLtMatrixLayout_t lb, cublasLtMatrixLayout_t lc,
                                              cublasLtMatrixLayout_t ld, cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int *count) {
    if (count) *count = 0;
    if (requested <= 0) return FAIL(INVALID_VALUE, "requestedAlgoCount %d <= 0", requested);
    if (!results || !count) return FAIL(INVALID_VALUE, "NULL result array or count");
    const emu_pref *pr = (const emu_pref *)(const void *)pref;
    if (!pr || pr->magic != MAGIC_PREF) return FAIL(INVALID_VALUE, "not a live matmul preference");
    problem p;
    cublasStatus_t s = check_problem(__func__, h, op, la, lb, lc, ld, &p);
    if (s == CUBLAS_STATUS_SUCCESS) s = heuristic(__func__, &p, pr->align, pr->max_ws, &results[0].algo);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    results[0].workspaceSize = 0;
    results[0].state = CUBLAS_STATUS_SUCCESS;
    results[0].wavesCount = 1.0f;
    memset(results[0].reserved, 0, sizeof results[0].reserved);
    *count = 1;
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- the product ---- */

/* GELU, tanh approximation, and its derivative, in double. */
static double gelu_tanh(double x) {
    double t = tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
    return 0.5 * x * (1 + t);
}
static double gelu_tanh_grad(double x) {
    double t = tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608028654 * (1 + 3 * 0.044715 * x * x);
}

/* Bytes spanned by a column-major matrix (for the aliasing checks). */
static uint64_t span(const emu_layout *l) {
    if (!l->rows || !l->cols) return 0;
    return ((l->cols - 1) * (uint64_t)l->ld + l->rows) * type_size(l->type);
}
static bool overlap(const void *x, uint64_t nx, const void *y, uint64_t ny) {
    uintptr_t a = (uintptr_t)x, b = (uintptr_t)y;
    return nx && ny && a < b + ny && b < a + nx;
}

/* op(X) gathered as float rows of length k: out[r * k + p] = op(X)(r, p) for "row-like" r.
 * For A (trans = T: stored k x m) r is a row of op(A); for B pass the opposite trans so that r is a
 * column of op(B) (stored k x n when N). */
static void gather(float *out, const void *x, const emu_layout *l, bool rows_are_cols, int64_t nr, int64_t k) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t r = 0; r < nr; r++)
        for (int64_t q = 0; q < k; q++)
            out[r * k + q] = load(l->type, x, rows_are_cols ? r * l->ld + q : q * l->ld + r);
}

/* Reads only our own packed copies, so the sanitizers of the emulation build (which check every
 * access to the caller's memory in gather and store) are left out of this hot loop. */
__attribute__((no_sanitize("address", "undefined"))) static double dot(const float *x, const float *y, int64_t k) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0; /* independent sums: pipelining; double keeps them exact-ish */
    int64_t q = 0;
    for (; q + 4 <= k; q += 4) {
        s0 += (double)x[q] * y[q];
        s1 += (double)x[q + 1] * y[q + 1];
        s2 += (double)x[q + 2] * y[q + 2];
        s3 += (double)x[q + 3] * y[q + 3];
    }
    for (; q < k; q++) s0 += (double)x[q] * y[q];
    return (s0 + s1) + (s2 + s3);
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t op, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t la, const void *B, cublasLtMatrixLayout_t lb, const void *beta,
                              const void *C, cublasLtMatrixLayout_t lc, void *D, cublasLtMatrixLayout_t ld,
                              const cublasLtMatmulAlgo_t *algo, void *workspace, size_t ws_bytes, cudaStream_t stream) {
    (void)workspace, (void)stream; /* no workspace needed; everything is synchronous */
    wan_emu_compute_op();
    problem p;
    cublasStatus_t s = check_problem(__func__, h, op, la, lb, lc, ld, &p);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    cublasLtMatmulAlgo_t implicit;
    if (!algo) { /* documented: a NULL algo runs the heuristic with default preferences */
        const uint32_t dflt[4] = {DEFAULT_ALIGN, DEFAULT_ALIGN, DEFAULT_ALIGN, DEFAULT_ALIGN};
        if ((s = heuristic(__func__, &p, dflt, 0, &implicit)) != CUBLAS_STATUS_SUCCESS) return s;
        algo = &implicit;
    }
    if (algo->data[0] != ALGO_MAGIC) return FAIL(INVALID_VALUE, "algo did not come from cublasLtMatmulAlgoGetHeuristic");
    if (algo->data[1] != fingerprint(&p))
        return FAIL(INVALID_VALUE, "algo was chosen for another problem (descriptor or layouts changed since)");
    if (ws_bytes < algo->data[7]) return FAIL(INVALID_VALUE, "workspace of %zu bytes is too small", ws_bytes);
    if (!alpha || !beta) return FAIL(INVALID_VALUE, "alpha or beta is NULL");
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const emu_layout *LA = p.l[0], *LB = p.l[1], *LC = p.l[2], *LD = p.l[3];
    const void *bias = p.bias_type >= 0 ? p.op->bias : NULL;
    void *aux = p.gelu ? (void *)p.op->aux : NULL;
    const void *ptr[6] = {A, B, C, D, bias, aux};
    bool needed[6] = {p.k > 0, p.k > 0, be != 0.0f, true, p.bias_type >= 0, p.gelu != 0};
    if (p.m == 0 || p.n == 0) return CUBLAS_STATUS_SUCCESS;
    static const char *const what_of[6] = {"A", "B", "C", "D", "bias", "aux"};
    for (int i = 0; i < 6; i++) {
        const char *what = i == 2 && C == D ? "C (== D)" : what_of[i];
        if (!ptr[i]) {
            if (needed[i]) return FAIL(INVALID_VALUE, "%s is NULL", what);
            continue;
        }
        /* the algorithm may assume the alignment its preference (or, for the bias and aux, the
         * pointer seen by the heuristic) promised */
        uint64_t want = i < 4 ? algo->data[2 + i] : i == 4 ? algo->data[6] & 0xffffffffu : algo->data[6] >> 32;
        uint64_t have = addr_align(ptr[i]);
        if (have < want)
            return FAIL(INVALID_VALUE, "%s = %p is aligned to %llu bytes but the algorithm was chosen for %llu", what,
                        ptr[i], (unsigned long long)have, (unsigned long long)want);
    }
    /* documented: in place (C == D) needs the same layout for C and D */
    if (C == D && (LC->type != LD->type || LC->rows != LD->rows || LC->cols != LD->cols || LC->ld != LD->ld))
        return FAIL(INVALID_VALUE, "C == D (in place) with different layouts (ld %lld vs %lld)", (long long)LC->ld,
                    (long long)LD->ld);
    /* the GPU would race on these; refuse them rather than compute something order-dependent */
    uint64_t dspan = span(LD);
    if (C != D && C && overlap(C, span(LC), D, dspan)) return FAIL(INVALID_VALUE, "C and D overlap without being equal");
    if (overlap(A, span(LA), D, dspan) || overlap(B, span(LB), D, dspan))
        return FAIL(INVALID_VALUE, "D overlaps %s", overlap(A, span(LA), D, dspan) ? "A" : "B");
    if (bias && overlap(bias, (uint64_t)p.m * type_size(p.bias_type), D, dspan)) return FAIL(INVALID_VALUE, "D overlaps the bias");
    const emu_layout aux_l = {.type = LD->type, .rows = LD->rows, .cols = LD->cols, .ld = p.aux_ld};
    if (aux && (overlap(aux, span(&aux_l), D, dspan) || overlap(aux, span(&aux_l), A, span(LA)) ||
                overlap(aux, span(&aux_l), B, span(LB))))
        return FAIL(INVALID_VALUE, "the GELU aux matrix overlaps D, A or B");

    const int64_t m = p.m, n = p.n, k = p.k;
    float *ra = malloc(sizeof(float) * (size_t)(m * k + 1)), *cb = malloc(sizeof(float) * (size_t)(n * k + 1));
    if (!ra || !cb) {
        free(ra), free(cb);
        return FAIL(ALLOC_FAILED, "no host memory for a %lld x %lld x %lld product", (long long)m, (long long)n, (long long)k);
    }
    gather(ra, A, LA, p.op->transa == CUBLAS_OP_T, m, k); /* rows of op(A) */
    gather(cb, B, LB, p.op->transb == CUBLAS_OP_N, n, k); /* columns of op(B) */
    const int64_t JB = 8;                                 /* columns per block: a row of op(A) is reused 8 times */
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
    for (int64_t j0 = 0; j0 < n; j0 += JB) {
        int64_t j1 = j0 + JB < n ? j0 + JB : n;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = j0; j < j1; j++) {
                double v = (double)al * dot(ra + i * k, cb + j * k, k);
                if (be != 0.0f) v += (double)be * load(LC->type, C, i + j * LC->ld); /* beta == 0: C is not read */
                if (bias) v += load(p.bias_type, bias, i);
                if (p.gelu == 1) { /* the fp32 value goes through the GELU; its rounding is kept */
                    float x = (float)v;
                    store(LD->type, aux, i + j * p.aux_ld, x);
                    v = gelu_tanh(x);
                } else if (p.gelu == 2) {
                    v = (double)(float)v * gelu_tanh_grad(load(LD->type, aux, i + j * p.aux_ld));
                }
                store(LD->type, D, i + j * LD->ld, (float)v);
            }
    }
    free(ra);
    free(cb);
    return CUBLAS_STATUS_SUCCESS;
}
