/* Fused scaled-dot-product attention through cuDNN's backend API, in C.
 *
 * Forward: the single SDPA_FWD operation (cuDNN >= 9.13.1), or, on an older cuDNN or when no
 * engine takes it, the composite graph the frontend's CompositeSDPANode lowers to (matmul,
 * scale, softmax as max/sub/exp/sum/log/div, matmul). Backward: the composite graph of
 * cudnn-frontend's CompositeSDPABackwardNode (MHA, no dropout, no bias), which cuDNN's fused
 * flash-attention engines recognise:
 *
 *   softmax_sum = sum_d(dO * O) * 1                 fp32 [B,H,Sq,1], in our workspace
 *   S   = Q @ K^T * scale  (-inf where masked)
 *   P   = exp(S - stats)                            stats = lse of the forward
 *   dV  = P^T @ dO
 *   dS  = (dO @ V^T - softmax_sum) * P * scale
 *   dK  = dS^T @ Q
 *   dQ  = identity(dQ_accum = dS @ K)               dQ_accum fp32, in our workspace
 *
 * The statistics are natural-log log-sum-exp of the scaled logits, lse = m + ln(sum exp(s - m)):
 * the composite forward computes exactly that (reduce max, exp, reduce add, log, add) and the
 * backward recomputes P as exp(s - lse), so SDPA_FWD's stats, which feed the same backward, are
 * in the same base. No conversion is needed.
 *
 * Tensors are described in BSHD strides without copies: element (b, h, s, d) of a tensor with
 * row stride ld is at b*S*ld + h*hd + s*ld + d, i.e. dims {B, H, S, hd}, strides {S*ld, hd, ld, 1}.
 * K^T and V^T are the same memory with the last two dims and strides swapped. */
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "sdpa_cudnn.h"

/* ---------------------------------------------------------------------------------------------
 * Errors: every failing cuDNN call records "cuDNN: <what>: <status>: <cuDNN's last message>". */

__attribute__((format(printf, 3, 4))) static int cudnn_fail_at(int line, cudnnStatus_t status,
                                                                const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    char detail[768] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    size_t n = strlen(detail);
    while (n > 0 && (detail[n - 1] == '\n' || detail[n - 1] == ' ')) detail[--n] = 0;
    return wan_fail_at(__FILE__, line, WAN_ERR_RUNTIME, "cuDNN: %s: %s%s%s", what,
                       cudnnGetErrorString(status), n ? ": " : "", detail);
}

#define CUDNN_TRY(call, ...)                                                                       \
    do {                                                                                           \
        cudnnStatus_t st_ = (call);                                                                \
        if (st_ != CUDNN_STATUS_SUCCESS) return cudnn_fail_at(__LINE__, st_, __VA_ARGS__);        \
    } while (0)

#define CUDA_TRY(call, what)                                                                       \
    do {                                                                                           \
        cudaError_t ce_ = (call);                                                                  \
        if (ce_ != cudaSuccess)                                                                    \
            return wan_fail(WAN_ERR_RUNTIME, "CUDA: %s: %s", (what), cudaGetErrorString(ce_));     \
    } while (0)

/* ---------------------------------------------------------------------------------------------
 * Graph building: every descriptor a graph needs is owned by one graph_build and destroyed with
 * it (the operation graph and plan refer to the tensors and ops, so all live as long as the plan). */

enum { MAX_DESCS = 192, MAX_OPS = 40, MAX_IO = 20 };

typedef struct {
    cudnnBackendDescriptor_t owned[MAX_DESCS];
    int n_owned;
    cudnnBackendDescriptor_t ops[MAX_OPS];
    int n_ops;
    int64_t io_uids[MAX_IO]; /* non-virtual tensors: the variant pack's entries */
    int n_io;
    int64_t next_virtual_uid;
    int n_tensors_final; /* progress, for the self-test report */
    int n_ops_final;
    cudnnBackendDescriptor_t graph; /* the finalised operation graph, or NULL */
    cudnnBackendDescriptor_t plan;  /* the finalised execution plan, or NULL */
    int64_t workspace;              /* cuDNN's workspace for the plan, bytes */
    int64_t engine;                 /* global index of the engine the plan runs */
    int n_configs;                  /* engine configs the heuristics proposed */
} graph_build;

static void graph_build_free(graph_build *g) {
    for (int i = g->n_owned - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(g->owned[i]);
    memset(g, 0, sizeof *g);
}

static int new_desc(graph_build *g, cudnnBackendDescriptorType_t type, const char *what,
                    cudnnBackendDescriptor_t *out) {
    WAN_ASSERT(g->n_owned < MAX_DESCS);
    *out = NULL;
    CUDNN_TRY(cudnnBackendCreateDescriptor(type, out), "create %s descriptor", what);
    g->owned[g->n_owned++] = *out;
    return 0;
}

#define SET_ATTR(desc, name, type, count, value, what)                                             \
    CUDNN_TRY(cudnnBackendSetAttribute((desc), (name), (type), (count), (value)), "%s: set %s",    \
              (what), #name)

/* Tensor attributes in the frontend's form: 16-byte alignment, 64-bit dims and strides. */
static int make_tensor(graph_build *g, const char *name, int64_t uid, cudnnDataType_t dtype, int ndims,
                       const int64_t *dims, const int64_t *strides, bool is_virtual, bool by_value,
                       cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t t;
    WAN_TRY(new_desc(g, CUDNN_BACKEND_TENSOR_DESCRIPTOR, name, &t));
    int64_t alignment = 16;
    SET_ATTR(t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dtype, name);
    SET_ATTR(t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, ndims, dims, name);
    SET_ATTR(t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, ndims, strides, name);
    SET_ATTR(t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, name);
    SET_ATTR(t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &alignment, name);
    if (is_virtual) SET_ATTR(t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual, name);
    if (by_value) SET_ATTR(t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, name);
    CUDNN_TRY(cudnnBackendFinalize(t), "finalise tensor %s (uid %lld)", name, (long long)uid);
    g->n_tensors_final++;
    if (!is_virtual) {
        WAN_ASSERT(g->n_io < MAX_IO);
        g->io_uids[g->n_io++] = uid;
    }
    *out = t;
    return 0;
}

/* A 4-d intermediate that never touches memory. */
static int virtual_tensor(graph_build *g, const char *name, cudnnDataType_t dtype, const int64_t dims[4],
                          const int64_t strides[4], cudnnBackendDescriptor_t *out) {
    return make_tensor(g, name, g->next_virtual_uid++, dtype, 4, dims, strides, true, false, out);
}

/* A host fp32 scalar passed by value in the variant pack: dims and strides {1,1,1,1} (the
 * frontend expands its fused scalars to the rank of the other operands; cuDNN's pointwise ops
 * need equal ranks). */
static int scalar_tensor(graph_build *g, const char *name, int64_t uid, cudnnBackendDescriptor_t *out) {
    const int64_t ones[4] = {1, 1, 1, 1};
    return make_tensor(g, name, uid, CUDNN_DATA_FLOAT, 4, ones, ones, false, true, out);
}

static int add_op(graph_build *g, cudnnBackendDescriptor_t op, const char *name) {
    CUDNN_TRY(cudnnBackendFinalize(op), "finalise operation %s", name);
    WAN_ASSERT(g->n_ops < MAX_OPS);
    g->ops[g->n_ops++] = op;
    g->n_ops_final++;
    return 0;
}

/* y = mode(x [, b [, t]]). axis only for GEN_INDEX. */
static int op_pointwise(graph_build *g, const char *name, cudnnPointwiseMode_t mode, cudnnDataType_t math,
                        cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b, cudnnBackendDescriptor_t t,
                        cudnnBackendDescriptor_t y, int64_t axis) {
    cudnnBackendDescriptor_t pw, op;
    WAN_TRY(new_desc(g, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, name, &pw));
    SET_ATTR(pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode, name);
    SET_ATTR(pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &math, name);
    if (mode == CUDNN_POINTWISE_GEN_INDEX) SET_ATTR(pw, CUDNN_ATTR_POINTWISE_AXIS, CUDNN_TYPE_INT64, 1, &axis, name);
    CUDNN_TRY(cudnnBackendFinalize(pw), "finalise pointwise descriptor %s", name);

    WAN_TRY(new_desc(g, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, name, &op));
    float alpha = 1.0f;
    SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &pw, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, name);
    if (b) SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, name);
    if (t) SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &t, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1, CUDNN_TYPE_FLOAT, 1, &alpha, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2, CUDNN_TYPE_FLOAT, 1, &alpha, name);
    return add_op(g, op, name);
}

/* c = a @ b (batched over the leading dims), fp32 accumulation; the overrides (int32 [B,1,1,1]
 * sequence lengths) shorten M, N or K per batch for the padding mask; padding (optional) is the
 * value of c outside the overridden extent (the frontend sets 0 on the forward's first matmul
 * when the mask is on, and the fused engines are matched against the frontend's graphs). */
static int op_matmul(graph_build *g, const char *name, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
                     cudnnBackendDescriptor_t c, cudnnBackendDescriptor_t m_override,
                     cudnnBackendDescriptor_t n_override, cudnnBackendDescriptor_t k_override,
                     const double *padding) {
    cudnnBackendDescriptor_t mm, op;
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    WAN_TRY(new_desc(g, CUDNN_BACKEND_MATMUL_DESCRIPTOR, name, &mm));
    SET_ATTR(mm, CUDNN_ATTR_MATMUL_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, name);
    if (padding) SET_ATTR(mm, CUDNN_ATTR_MATMUL_PADDING_VALUE, CUDNN_TYPE_DOUBLE, 1, padding, name);
    CUDNN_TRY(cudnnBackendFinalize(mm), "finalise matmul descriptor %s", name);

    WAN_TRY(new_desc(g, CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR, name, &op));
    SET_ATTR(op, CUDNN_ATTR_OPERATION_MATMUL_ADESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &a, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_MATMUL_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_MATMUL_CDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &c, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_MATMUL_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &mm, name);
    if (m_override)
        SET_ATTR(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                 &m_override, name);
    if (n_override)
        SET_ATTR(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                 &n_override, name);
    if (k_override)
        SET_ATTR(op, CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                 &k_override, name);
    return add_op(g, op, name);
}

/* y = reduce(x) over the dims where y has extent 1, fp32. */
static int op_reduction(graph_build *g, const char *name, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                        cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t red, op;
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    WAN_TRY(new_desc(g, CUDNN_BACKEND_REDUCTION_DESCRIPTOR, name, &red));
    SET_ATTR(red, CUDNN_ATTR_REDUCTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp, name);
    SET_ATTR(red, CUDNN_ATTR_REDUCTION_OPERATOR, CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode, name);
    CUDNN_TRY(cudnnBackendFinalize(red), "finalise reduction descriptor %s", name);

    WAN_TRY(new_desc(g, CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR, name, &op));
    SET_ATTR(op, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_REDUCTION_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &red, name);
    return add_op(g, op, name);
}

/* y = x seen with other dims/strides (a transpose of the last two dims here). */
static int op_reshape(graph_build *g, const char *name, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    cudnnBackendDescriptor_t op;
    WAN_TRY(new_desc(g, CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR, name, &op));
    SET_ATTR(op, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y, name);
    return add_op(g, op, name);
}

/* ---------------------------------------------------------------------------------------------
 * The attention graphs. */

typedef enum { SDPA_KEY_FWD, SDPA_KEY_BWD } sdpa_key_kind;
typedef enum { SDPA_FWD_UNIFIED, SDPA_FWD_COMPOSITE, SDPA_BWD_COMPOSITE } sdpa_graph_kind;

static const char *graph_kind_name(sdpa_graph_kind kind) {
    switch (kind) {
    case SDPA_FWD_UNIFIED: return "forward (SDPA_FWD operation)";
    case SDPA_FWD_COMPOSITE: return "forward (composite graph)";
    case SDPA_BWD_COMPOSITE: return "backward (composite graph)";
    }
    return "?";
}

/* Everything a plan depends on. All fields are 4 bytes: zero-filled keys compare with memcmp. */
typedef struct {
    int kind; /* sdpa_key_kind */
    int B, H, Sq, Skv, hd, kv_valid;
    int ldq, ldk, ldv, ldo;
    int lddo, lddq, lddk, lddv; /* backward only (0 in forward keys) */
    float scale;
    int masked; /* the graph has the padding mask: kv_valid < Skv, or the workaround below */
} sdpa_key;

/* UIDs of the tensors in the variant pack; virtual tensors count up from UID_FIRST_VIRTUAL. */
enum {
    UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV,
    UID_SCALE, UID_ONE, UID_NEG_INF, UID_SEQ_Q, UID_SEQ_KV, UID_SOFTMAX_SUM, UID_DQ_ACCUM,
    UID_FIRST_VIRTUAL = 100,
};

static bool key_padded(const sdpa_key *k) { return k->masked != 0; }

/* cuDNN <= 9.15's fused backward is wrong without a padding mask when Skv is not a multiple of
 * 128; cudnn-frontend then adds a mask with seq_len_kv = Skv (CompositeSDPABackwardNode,
 * "workaround padding mask"). So do we: the mask then removes nothing. */
static bool bwd_needs_mask_workaround(int Skv) { return cudnnGetVersion() <= 91500 && Skv % 128 != 0; }

/* dims {B, H, S, hd}, strides {S*ld, hd, ld, 1}: the BSHD rows of a [B*S, ld] matrix. */
static void bshd(int64_t dims[4], int64_t strides[4], int B, int H, int S, int hd, int ld) {
    dims[0] = B, dims[1] = H, dims[2] = S, dims[3] = hd;
    strides[0] = (int64_t)S * ld, strides[1] = hd, strides[2] = ld, strides[3] = 1;
}

/* The same memory as bshd() with the last two dims swapped: {B, H, hd, S} (K^T, V^T). */
static void bshd_t(int64_t dims[4], int64_t strides[4], int B, int H, int S, int hd, int ld) {
    dims[0] = B, dims[1] = H, dims[2] = hd, dims[3] = S;
    strides[0] = (int64_t)S * ld, strides[1] = hd, strides[2] = 1, strides[3] = ld;
}

/* Packed [B, H, rows, cols]. */
static void packed(int64_t dims[4], int64_t strides[4], int B, int H, int64_t rows, int64_t cols) {
    dims[0] = B, dims[1] = H, dims[2] = rows, dims[3] = cols;
    strides[0] = (int64_t)H * rows * cols, strides[1] = rows * cols, strides[2] = cols, strides[3] = 1;
}

/* Per-sample int32 sequence lengths [B,1,1,1] for the padding mask. */
static int seq_len_tensor(graph_build *g, const char *name, int64_t uid, int B, cudnnBackendDescriptor_t *out) {
    const int64_t dims[4] = {B, 1, 1, 1}, strides[4] = {1, 1, 1, 1};
    return make_tensor(g, name, uid, CUDNN_DATA_INT32, 4, dims, strides, false, false, out);
}

/* The frontend's padding-mask score modifier: score where row < seq_q and col < seq_kv, else
 * -inf (rows are all valid here; the mask removes keys at positions >= kv_valid). */
static int add_padding_mask(graph_build *g, const sdpa_key *k, cudnnBackendDescriptor_t score,
                            cudnnBackendDescriptor_t seq_q, cudnnBackendDescriptor_t seq_kv,
                            cudnnBackendDescriptor_t neg_inf, cudnnBackendDescriptor_t *out) {
    int64_t d[4], s[4];
    packed(d, s, k->B, k->H, k->Sq, k->Skv);
    cudnnBackendDescriptor_t row, col, row_ok, col_ok, keep, masked;
    WAN_TRY(virtual_tensor(g, "row_index", CUDNN_DATA_INT32, d, s, &row));
    WAN_TRY(op_pointwise(g, "gen_row_index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, score, NULL, NULL, row, 2));
    WAN_TRY(virtual_tensor(g, "col_index", CUDNN_DATA_INT32, d, s, &col));
    WAN_TRY(op_pointwise(g, "gen_col_index", CUDNN_POINTWISE_GEN_INDEX, CUDNN_DATA_INT32, score, NULL, NULL, col, 3));
    WAN_TRY(virtual_tensor(g, "row_valid", CUDNN_DATA_BOOLEAN, d, s, &row_ok));
    WAN_TRY(op_pointwise(g, "row_lt_seq_q", CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, row, seq_q, NULL, row_ok, -1));
    WAN_TRY(virtual_tensor(g, "col_valid", CUDNN_DATA_BOOLEAN, d, s, &col_ok));
    WAN_TRY(op_pointwise(g, "col_lt_seq_kv", CUDNN_POINTWISE_CMP_LT, CUDNN_DATA_BOOLEAN, col, seq_kv, NULL, col_ok, -1));
    WAN_TRY(virtual_tensor(g, "keep", CUDNN_DATA_BOOLEAN, d, s, &keep));
    WAN_TRY(op_pointwise(g, "row_and_col", CUDNN_POINTWISE_LOGICAL_AND, CUDNN_DATA_BOOLEAN, row_ok, col_ok, NULL, keep, -1));
    WAN_TRY(virtual_tensor(g, "masked_score", CUDNN_DATA_FLOAT, d, s, &masked));
    WAN_TRY(op_pointwise(g, "select_padding", CUDNN_POINTWISE_BINARY_SELECT, CUDNN_DATA_FLOAT, score, neg_inf, keep,
                         masked, -1));
    *out = masked;
    return 0;
}

/* The statistics output: fp32 [B, H, Sq, 1], packed (our lse [B, H, Sq]). */
static int stats_tensor(graph_build *g, const sdpa_key *k, cudnnBackendDescriptor_t *out) {
    int64_t d[4], s[4];
    packed(d, s, k->B, k->H, k->Sq, 1);
    return make_tensor(g, "stats", UID_STATS, CUDNN_DATA_FLOAT, 4, d, s, false, false, out);
}

/* Why the single SDPA_FWD operation cannot take key k here (NULL: it can). cudnn-frontend's
 * support surface: the operation from 9.13.1, its sequence lengths (padding) from 9.15.0; a GPU
 * machine's own cuDNN may also be older than the headers of the operation. The composite graph
 * serves the forward then. */
static const char *unified_missing(const sdpa_key *k) {
    static _Thread_local char why[160];
#if CUDNN_VERSION < 91300
    (void)k;
    snprintf(why, sizeof why, "built against cuDNN %d.%d.%d headers, which have no SDPA_FWD operation (9.13)",
             CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL);
    return why;
#else
    size_t version = cudnnGetVersion();
    if (key_padded(k) && CUDNN_VERSION < 91500) {
        snprintf(why, sizeof why, "built against cuDNN %d.%d.%d headers, which lack the SDPA_FWD sequence lengths (9.15)",
                 CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL);
        return why;
    }
    if (version >= 91301 && (!key_padded(k) || version >= 91500)) return NULL;
    snprintf(why, sizeof why, "cuDNN %zu: the SDPA_FWD operation needs 9.13.1%s", version,
             key_padded(k) ? " and its sequence lengths 9.15.0" : "");
    return why;
#endif
}

static int build_fwd_unified(graph_build *g, const sdpa_key *k) {
    const char *missing = unified_missing(k);
    if (missing) return wan_fail(WAN_ERR_RUNTIME, "%s", missing);
#if CUDNN_VERSION >= 91300
    int64_t d[4], s[4];
    cudnnBackendDescriptor_t q, kk, v, o, stats, scale, seq_q = NULL, seq_kv = NULL, op;
    bshd(d, s, k->B, k->H, k->Sq, k->hd, k->ldq);
    WAN_TRY(make_tensor(g, "q", UID_Q, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &q));
    bshd(d, s, k->B, k->H, k->Skv, k->hd, k->ldk);
    WAN_TRY(make_tensor(g, "k", UID_K, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &kk));
    bshd(d, s, k->B, k->H, k->Skv, k->hd, k->ldv);
    WAN_TRY(make_tensor(g, "v", UID_V, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &v));
    bshd(d, s, k->B, k->H, k->Sq, k->hd, k->ldo);
    WAN_TRY(make_tensor(g, "o", UID_O, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &o));
    WAN_TRY(stats_tensor(g, k, &stats));
    WAN_TRY(scalar_tensor(g, "scale", UID_SCALE, &scale));
    if (key_padded(k)) {
        WAN_TRY(seq_len_tensor(g, "seq_len_q", UID_SEQ_Q, k->B, &seq_q));
        WAN_TRY(seq_len_tensor(g, "seq_len_kv", UID_SEQ_KV, k->B, &seq_kv));
    }
    const char *name = "sdpa_fwd";
    WAN_TRY(new_desc(g, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, name, &op));
    SET_ATTR(op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &q, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &kk, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &o, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_SDPA_FWD_STATSDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &stats, name);
    SET_ATTR(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &scale, name);
#if CUDNN_VERSION >= 91500 /* older headers: unified_missing refused padded keys */
    if (seq_q) {
        /* both lengths given: the engine applies its implicit padding mask */
        SET_ATTR(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_QDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &seq_q, name);
        SET_ATTR(op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_KVDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &seq_kv, name);
    }
#endif
    return add_op(g, op, name);
#else
    (void)g;
    return 0; /* not reached: unified_missing says why */
#endif
}

static int build_fwd_composite(graph_build *g, const sdpa_key *k) {
    int64_t d[4], s[4];
    cudnnBackendDescriptor_t q, kt, v, o, stats, scale, seq_q = NULL, seq_kv = NULL, neg_inf = NULL;
    bshd(d, s, k->B, k->H, k->Sq, k->hd, k->ldq);
    WAN_TRY(make_tensor(g, "q", UID_Q, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &q));
    bshd_t(d, s, k->B, k->H, k->Skv, k->hd, k->ldk);
    WAN_TRY(make_tensor(g, "k^T", UID_K, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &kt));
    bshd(d, s, k->B, k->H, k->Skv, k->hd, k->ldv);
    WAN_TRY(make_tensor(g, "v", UID_V, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &v));
    bshd(d, s, k->B, k->H, k->Sq, k->hd, k->ldo);
    WAN_TRY(make_tensor(g, "o", UID_O, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &o));
    WAN_TRY(stats_tensor(g, k, &stats));
    WAN_TRY(scalar_tensor(g, "scale", UID_SCALE, &scale));
    if (key_padded(k)) {
        WAN_TRY(seq_len_tensor(g, "seq_len_q", UID_SEQ_Q, k->B, &seq_q));
        WAN_TRY(seq_len_tensor(g, "seq_len_kv", UID_SEQ_KV, k->B, &seq_kv));
        WAN_TRY(scalar_tensor(g, "neg_inf", UID_NEG_INF, &neg_inf));
    }

    int64_t sd[4], ss[4], rd[4], rs[4]; /* scores [B,H,Sq,Skv] and row statistics [B,H,Sq,1] */
    packed(sd, ss, k->B, k->H, k->Sq, k->Skv);
    packed(rd, rs, k->B, k->H, k->Sq, 1);
    cudnnBackendDescriptor_t score, scaled, row_max, shifted, e, row_sum, log_sum, p;
    WAN_TRY(virtual_tensor(g, "s", CUDNN_DATA_FLOAT, sd, ss, &score));
    static const double zero = 0.0;
    WAN_TRY(op_matmul(g, "bmm1", q, kt, score, seq_q, seq_kv, NULL, seq_q ? &zero : NULL));
    WAN_TRY(virtual_tensor(g, "s_scaled", CUDNN_DATA_FLOAT, sd, ss, &scaled));
    WAN_TRY(op_pointwise(g, "attn_scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, score, scale, NULL, scaled, -1));
    if (seq_q) WAN_TRY(add_padding_mask(g, k, scaled, seq_q, seq_kv, neg_inf, &scaled));
    /* softmax with statistics: lse = max + log(sum exp(s - max)) */
    WAN_TRY(virtual_tensor(g, "row_max", CUDNN_DATA_FLOAT, rd, rs, &row_max));
    WAN_TRY(op_reduction(g, "max", CUDNN_REDUCE_TENSOR_MAX, scaled, row_max));
    WAN_TRY(virtual_tensor(g, "s_minus_max", CUDNN_DATA_FLOAT, sd, ss, &shifted));
    WAN_TRY(op_pointwise(g, "sub_max", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, scaled, row_max, NULL, shifted, -1));
    WAN_TRY(virtual_tensor(g, "exp_s", CUDNN_DATA_FLOAT, sd, ss, &e));
    WAN_TRY(op_pointwise(g, "exp", CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, shifted, NULL, NULL, e, -1));
    WAN_TRY(virtual_tensor(g, "row_sum", CUDNN_DATA_FLOAT, rd, rs, &row_sum));
    WAN_TRY(op_reduction(g, "sum", CUDNN_REDUCE_TENSOR_ADD, e, row_sum));
    WAN_TRY(virtual_tensor(g, "log_sum", CUDNN_DATA_FLOAT, rd, rs, &log_sum));
    WAN_TRY(op_pointwise(g, "log", CUDNN_POINTWISE_LOG, CUDNN_DATA_FLOAT, row_sum, NULL, NULL, log_sum, -1));
    WAN_TRY(op_pointwise(g, "lse", CUDNN_POINTWISE_ADD, CUDNN_DATA_FLOAT, row_max, log_sum, NULL, stats, -1));
    /* P in the input type: bmm2's A operand */
    WAN_TRY(virtual_tensor(g, "p", CUDNN_DATA_BFLOAT16, sd, ss, &p));
    WAN_TRY(op_pointwise(g, "div", CUDNN_POINTWISE_DIV, CUDNN_DATA_FLOAT, e, row_sum, NULL, p, -1));
    return op_matmul(g, "bmm2", p, v, o, seq_q, NULL, seq_kv, NULL);
}

static int build_bwd(graph_build *g, const sdpa_key *k) {
    int64_t d[4], s[4];
    cudnnBackendDescriptor_t q, kt, vt, o, dout, stats, dq, dk, dv, scale, one, seq_q = NULL, seq_kv = NULL,
                                                                             neg_inf = NULL;
    bshd(d, s, k->B, k->H, k->Sq, k->hd, k->ldq);
    WAN_TRY(make_tensor(g, "q", UID_Q, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &q));
    bshd_t(d, s, k->B, k->H, k->Skv, k->hd, k->ldk);
    WAN_TRY(make_tensor(g, "k^T", UID_K, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &kt));
    bshd_t(d, s, k->B, k->H, k->Skv, k->hd, k->ldv);
    WAN_TRY(make_tensor(g, "v^T", UID_V, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &vt));
    bshd(d, s, k->B, k->H, k->Sq, k->hd, k->ldo);
    WAN_TRY(make_tensor(g, "o", UID_O, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &o));
    bshd(d, s, k->B, k->H, k->Sq, k->hd, k->lddo);
    WAN_TRY(make_tensor(g, "dout", UID_DO, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &dout));
    WAN_TRY(stats_tensor(g, k, &stats));
    bshd(d, s, k->B, k->H, k->Sq, k->hd, k->lddq);
    WAN_TRY(make_tensor(g, "dq", UID_DQ, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &dq));
    bshd(d, s, k->B, k->H, k->Skv, k->hd, k->lddk);
    WAN_TRY(make_tensor(g, "dk", UID_DK, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &dk));
    bshd(d, s, k->B, k->H, k->Skv, k->hd, k->lddv);
    WAN_TRY(make_tensor(g, "dv", UID_DV, CUDNN_DATA_BFLOAT16, 4, d, s, false, false, &dv));
    WAN_TRY(scalar_tensor(g, "scale", UID_SCALE, &scale));
    WAN_TRY(scalar_tensor(g, "one", UID_ONE, &one));
    if (key_padded(k)) {
        WAN_TRY(seq_len_tensor(g, "seq_len_q", UID_SEQ_Q, k->B, &seq_q));
        WAN_TRY(seq_len_tensor(g, "seq_len_kv", UID_SEQ_KV, k->B, &seq_kv));
        WAN_TRY(scalar_tensor(g, "neg_inf", UID_NEG_INF, &neg_inf));
    }

    int64_t sd[4], ss[4], rd[4], rs[4];
    packed(sd, ss, k->B, k->H, k->Sq, k->Skv);
    packed(rd, rs, k->B, k->H, k->Sq, 1);

    /* softmax_sum = rowsum(dO * O) * 1: a non-virtual fp32 tensor in our workspace. The
     * product's virtual strides are the frontend's (immaterial for a virtual tensor). */
    cudnnBackendDescriptor_t do_o, rowdot, softmax_sum;
    int64_t pd[4] = {k->B, k->H, k->Sq, k->hd};
    int64_t ps[4] = {(int64_t)k->H * k->Sq * k->hd, (int64_t)k->Sq * k->hd, (int64_t)k->H * k->hd, 1};
    WAN_TRY(virtual_tensor(g, "dout_o", CUDNN_DATA_FLOAT, pd, ps, &do_o));
    WAN_TRY(op_pointwise(g, "mul_dout_o", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dout, o, NULL, do_o, -1));
    WAN_TRY(virtual_tensor(g, "rowdot", CUDNN_DATA_FLOAT, rd, rs, &rowdot));
    WAN_TRY(op_reduction(g, "reduce_dout_o", CUDNN_REDUCE_TENSOR_ADD, do_o, rowdot));
    WAN_TRY(make_tensor(g, "softmax_sum", UID_SOFTMAX_SUM, CUDNN_DATA_FLOAT, 4, rd, rs, false, false, &softmax_sum));
    WAN_TRY(op_pointwise(g, "scale_dropout_inv", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, rowdot, one, NULL,
                         softmax_sum, -1));

    /* P = exp(Q K^T * scale - stats), then dV = P^T dO */
    cudnnBackendDescriptor_t score, scaled, shifted, p, pt;
    WAN_TRY(virtual_tensor(g, "s", CUDNN_DATA_FLOAT, sd, ss, &score));
    WAN_TRY(op_matmul(g, "matmul_q_kt", q, kt, score, seq_q, seq_kv, NULL, NULL));
    WAN_TRY(virtual_tensor(g, "s_scaled", CUDNN_DATA_FLOAT, sd, ss, &scaled));
    WAN_TRY(op_pointwise(g, "mul_s_scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, score, scale, NULL, scaled, -1));
    if (seq_q) WAN_TRY(add_padding_mask(g, k, scaled, seq_q, seq_kv, neg_inf, &scaled));
    WAN_TRY(virtual_tensor(g, "s_minus_stats", CUDNN_DATA_FLOAT, sd, ss, &shifted));
    WAN_TRY(op_pointwise(g, "sub_s_stats", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, scaled, stats, NULL, shifted, -1));
    WAN_TRY(virtual_tensor(g, "p", CUDNN_DATA_FLOAT, sd, ss, &p));
    WAN_TRY(op_pointwise(g, "exp_s", CUDNN_POINTWISE_EXP, CUDNN_DATA_FLOAT, shifted, NULL, NULL, p, -1));
    int64_t td[4] = {k->B, k->H, k->Skv, k->Sq};
    int64_t ts[4] = {(int64_t)k->H * k->Sq * k->Skv, (int64_t)k->Sq * k->Skv, 1, k->Skv};
    WAN_TRY(virtual_tensor(g, "p^T", CUDNN_DATA_BFLOAT16, td, ts, &pt));
    WAN_TRY(op_reshape(g, "reshape_p", p, pt));
    WAN_TRY(op_matmul(g, "matmul_pt_dout", pt, dout, dv, seq_kv, NULL, seq_q, NULL));

    /* dS = (dO V^T - softmax_sum) * P * scale, then dK = dS^T Q */
    cudnnBackendDescriptor_t dp, dp_sub, ds_unscaled, ds, dst;
    WAN_TRY(virtual_tensor(g, "dp", CUDNN_DATA_FLOAT, sd, ss, &dp));
    WAN_TRY(op_matmul(g, "matmul_dout_vt", dout, vt, dp, seq_q, seq_kv, NULL, NULL));
    WAN_TRY(virtual_tensor(g, "dp_minus_sum", CUDNN_DATA_FLOAT, sd, ss, &dp_sub));
    WAN_TRY(op_pointwise(g, "sub_dp_softmax_sum", CUDNN_POINTWISE_SUB, CUDNN_DATA_FLOAT, dp, softmax_sum, NULL,
                         dp_sub, -1));
    WAN_TRY(virtual_tensor(g, "ds_unscaled", CUDNN_DATA_FLOAT, sd, ss, &ds_unscaled));
    WAN_TRY(op_pointwise(g, "mul_dp_p", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, dp_sub, p, NULL, ds_unscaled, -1));
    WAN_TRY(virtual_tensor(g, "ds", CUDNN_DATA_FLOAT, sd, ss, &ds));
    WAN_TRY(op_pointwise(g, "mul_ds_scale", CUDNN_POINTWISE_MUL, CUDNN_DATA_FLOAT, ds_unscaled, scale, NULL, ds, -1));
    WAN_TRY(virtual_tensor(g, "ds^T", CUDNN_DATA_BFLOAT16, td, ts, &dst));
    WAN_TRY(op_reshape(g, "reshape_ds", ds, dst));
    WAN_TRY(op_matmul(g, "matmul_dst_q", dst, q, dk, seq_kv, NULL, seq_q, NULL));

    /* dQ = dS K through an fp32 accumulator in our workspace (K is K^T reshaped back; its
     * virtual type is the intermediate fp32, as in the frontend). */
    cudnnBackendDescriptor_t kk, dq_accum;
    bshd(d, s, k->B, k->H, k->Skv, k->hd, k->ldk);
    WAN_TRY(virtual_tensor(g, "k", CUDNN_DATA_FLOAT, d, s, &kk));
    WAN_TRY(op_reshape(g, "reshape_k", kt, kk));
    packed(d, s, k->B, k->H, k->Sq, k->hd);
    WAN_TRY(make_tensor(g, "dq_accum", UID_DQ_ACCUM, CUDNN_DATA_FLOAT, 4, d, s, false, false, &dq_accum));
    WAN_TRY(op_matmul(g, "matmul_ds_k", ds, kk, dq_accum, seq_q, NULL, seq_kv, NULL));
    return op_pointwise(g, "identity_dq", CUDNN_POINTWISE_IDENTITY, CUDNN_DATA_FLOAT, dq_accum, NULL, NULL, dq, -1);
}

/* Extra fp32 buffers the backward graph keeps in our workspace. */
static size_t softmax_sum_bytes(const sdpa_key *k) { return (size_t)k->B * k->H * k->Sq * sizeof(float); }
static size_t dq_accum_bytes(const sdpa_key *k) { return (size_t)k->B * k->H * k->Sq * k->hd * sizeof(float); }

static int build_graph_ops(graph_build *g, sdpa_graph_kind kind, const sdpa_key *k) {
    g->next_virtual_uid = UID_FIRST_VIRTUAL;
    switch (kind) {
    case SDPA_FWD_UNIFIED: return build_fwd_unified(g, k);
    case SDPA_FWD_COMPOSITE: return build_fwd_composite(g, k);
    case SDPA_BWD_COMPOSITE: return build_bwd(g, k);
    }
    return wan_fail(WAN_ERR_RUNTIME, "unknown attention graph kind %d", (int)kind);
}

/* The operation graph over all ops. handle may be NULL (device-less build). */
static int finalize_graph(graph_build *g, cudnnHandle_t handle) {
    cudnnBackendDescriptor_t graph;
    const char *name = "operation graph";
    WAN_TRY(new_desc(g, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, name, &graph));
    SET_ATTR(graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, g->n_ops, g->ops, name);
    if (handle) SET_ATTR(graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, name);
    CUDNN_TRY(cudnnBackendFinalize(graph), "finalise the operation graph (%d ops)", g->n_ops);
    g->graph = graph;
    return 0;
}

/* Heuristics (mode A, then the fallback list), then the first engine config whose execution plan
 * finalises. Needs a GPU: without one the heuristics list no viable config. */
static int choose_plan(graph_build *g) {
    enum { MAX_CONFIGS = 16 };
    const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    char first_error[512] = "";
    for (int mi = 0; mi < 2; mi++) {
        cudnnBackendDescriptor_t heur;
        const char *name = mi == 0 ? "heuristics (mode A)" : "heuristics (fallback)";
        WAN_TRY(new_desc(g, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, name, &heur));
        SET_ATTR(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &g->graph, name);
        SET_ATTR(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[mi], name);
        CUDNN_TRY(cudnnBackendFinalize(heur), "finalise %s", name);
        int64_t count = 0;
        CUDNN_TRY(cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0,
                                           &count, NULL),
                  "%s: count the results", name);
        if (count > MAX_CONFIGS) count = MAX_CONFIGS;
        cudnnBackendDescriptor_t configs[MAX_CONFIGS];
        int64_t made = 0, returned = 0;
        cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
        for (; made < count && st == CUDNN_STATUS_SUCCESS; made++)
            st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &configs[made]);
        if (st != CUDNN_STATUS_SUCCESS) made--; /* the failed one was not created */
        if (st == CUDNN_STATUS_SUCCESS && count > 0)
            st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, count,
                                          &returned, configs);
        if (st != CUDNN_STATUS_SUCCESS) {
            for (int64_t i = 0; i < made; i++) cudnnBackendDestroyDescriptor(configs[i]);
            return cudnn_fail_at(__LINE__, st, "%s: get the results", name);
        }
        g->n_configs += (int)returned;
        int chosen = -1;
        cudnnBackendDescriptor_t plan = NULL;
        for (int64_t i = 0; i < returned && chosen < 0; i++) {
            cudnnStatus_t ps = cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &plan);
            if (ps == CUDNN_STATUS_SUCCESS)
                ps = cudnnBackendSetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                              CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &configs[i]);
            if (ps == CUDNN_STATUS_SUCCESS) ps = cudnnBackendFinalize(plan);
            if (ps == CUDNN_STATUS_SUCCESS) {
                chosen = (int)i;
                break;
            }
            if (!first_error[0]) {
                char detail[400] = "";
                cudnnGetLastErrorString(detail, sizeof detail);
                snprintf(first_error, sizeof first_error, "%s%s%s", cudnnGetErrorString(ps), detail[0] ? ": " : "",
                         detail);
            }
            if (plan) cudnnBackendDestroyDescriptor(plan);
            plan = NULL;
        }
        for (int64_t i = 0; i < count; i++)
            if (i != chosen) cudnnBackendDestroyDescriptor(configs[i]);
        if (chosen < 0) continue;

        /* the config and its plan are owned by g from here on */
        WAN_ASSERT(g->n_owned + 3 <= MAX_DESCS);
        cudnnBackendDescriptor_t config = configs[chosen];
        g->owned[g->n_owned++] = config;
        g->owned[g->n_owned++] = plan;
        g->plan = plan;
        CUDNN_TRY(cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, NULL,
                                           &g->workspace),
                  "execution plan: get the workspace size");
        /* which engine runs it, for the logs */
        cudnnBackendDescriptor_t engine;
        int64_t n = 0;
        g->engine = -1;
        WAN_TRY(new_desc(g, CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine", &engine));
        if (cudnnBackendGetAttribute(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                     &engine) == CUDNN_STATUS_SUCCESS)
            cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &g->engine);
        return 0;
    }
    if (g->n_configs == 0)
        return wan_fail(WAN_ERR_RUNTIME, "cuDNN: heuristics found no engine for this graph");
    return wan_fail(WAN_ERR_RUNTIME, "cuDNN: none of the %d engine configs gave an execution plan (first: %s)",
                    g->n_configs, first_error);
}

/* ---------------------------------------------------------------------------------------------
 * Plans and their cache. */

enum { MAX_PLANS = 32 };

typedef struct {
    bool used;
    sdpa_key key;
    sdpa_graph_kind kind; /* the graph that runs (unified or composite forward, backward) */
    graph_build g;        /* owns every descriptor, the execution plan included */
    size_t softmax_sum_off, dq_accum_off, workspace_bytes; /* layout of the workspace */
    int32_t *seq_q, *seq_kv;                               /* device [B], padded plans only */
    int32_t *seq_q_host, *seq_kv_host;                     /* their source (kept for the async copy) */
    float scale, one, neg_inf;                             /* values of the by-value scalars */
    uint64_t last_use;
} sdpa_plan;

typedef enum { FWD_AUTO, FWD_UNIFIED_ONLY, FWD_COMPOSITE_ONLY } fwd_choice;

struct wan_sdpa {
    cudnnHandle_t handle;
    cudaStream_t stream;
    void *(*alloc)(void *ctx, size_t bytes);
    void (*free)(void *ctx, void *p);
    void *alloc_ctx;
    fwd_choice fwd;
    sdpa_plan plans[MAX_PLANS];
    uint64_t clock;
    /* One workspace for every plan: they run one after another on one stream. */
    void *workspace;
    size_t workspace_bytes;
};

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static void plan_release(wan_sdpa *s, sdpa_plan *p) {
    graph_build_free(&p->g);
    if (p->seq_q) s->free(s->alloc_ctx, p->seq_q);
    if (p->seq_kv) s->free(s->alloc_ctx, p->seq_kv);
    free(p->seq_q_host);
    free(p->seq_kv_host);
    memset(p, 0, sizeof *p);
}

/* The oldest cuDNN these graphs are built for: cudnn-frontend refuses bf16 attention on 9.10.0
 * and 9.10.1 (known bugs), and before 9.10 its engines want what this file does not do (a zeroed
 * dQ accumulator before 9.6, the lowest float instead of -inf in masks). */
#define SDPA_MIN_CUDNN 91002

static int check_cudnn_version(void) {
    size_t v = cudnnGetVersion();
    if (v >= SDPA_MIN_CUDNN) return 0;
    return wan_fail(WAN_ERR_RUNTIME,
                    "cuDNN %zu.%zu.%zu: the fused attention needs cuDNN 9.10.2 or newer (older releases have "
                    "known bf16 attention bugs); point CUDNN_HOME at a newer one and rebuild",
                    v / 10000, v / 100 % 100, v % 100);
}

int wan_sdpa_create(void *handle, void *stream, void *(*alloc)(void *ctx, size_t bytes),
                    void (*free_fn)(void *ctx, void *p), void *alloc_ctx, wan_sdpa **out) {
    *out = NULL;
    if (!handle) return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: no cuDNN handle");
    if (!alloc || !free_fn) return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: no device allocator");
    WAN_TRY(check_cudnn_version());
    wan_sdpa *s = calloc(1, sizeof *s);
    if (!s) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    s->handle = (cudnnHandle_t)handle;
    s->stream = (cudaStream_t)stream;
    s->alloc = alloc;
    s->free = free_fn;
    s->alloc_ctx = alloc_ctx;
    /* WAN_SDPA_FWD=unified|composite pins the forward graph (benchmarks, debugging). */
    const char *env = getenv("WAN_SDPA_FWD");
    s->fwd = FWD_AUTO;
    if (env && !strcmp(env, "unified")) s->fwd = FWD_UNIFIED_ONLY;
    else if (env && !strcmp(env, "composite")) s->fwd = FWD_COMPOSITE_ONLY;
    else if (env && *env && strcmp(env, "auto")) {
        free(s);
        return wan_fail(WAN_ERR_USAGE, "WAN_SDPA_FWD=%s: expected unified, composite or auto", env);
    }
    cudnnStatus_t st = cudnnSetStream(s->handle, s->stream);
    if (st != CUDNN_STATUS_SUCCESS) {
        free(s);
        return cudnn_fail_at(__LINE__, st, "set the handle's stream");
    }
    *out = s;
    return 0;
}

void wan_sdpa_destroy(wan_sdpa *s) {
    if (!s) return;
    for (int i = 0; i < MAX_PLANS; i++)
        if (s->plans[i].used) plan_release(s, &s->plans[i]);
    if (s->workspace) s->free(s->alloc_ctx, s->workspace);
    free(s);
}

/* Shapes cuDNN's fused attention accepts (checked before any descriptor is built). */
static int check_shape(int B, int H, int Sq, int Skv, int hd, int kv_valid, bool backward) {
    if (B < 1 || H < 1 || Sq < 1 || Skv < 1)
        return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: bad shape B=%d H=%d Sq=%d Skv=%d", B, H, Sq, Skv);
    if (hd < 8 || hd > 256 || hd % 8)
        return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: head_dim %d unsupported (a multiple of 8, at most 256)",
                        hd);
    if (kv_valid < 1 || kv_valid > Skv)
        return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: kv_valid %d outside [1, Skv=%d]", kv_valid, Skv);
    if (backward && Sq == 1 && Skv == 1)
        return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: the backward does not support Sq = Skv = 1");
    return 0;
}

/* Row strides in elements: at least the H*hd columns, a multiple of 8 (16 bytes of bf16). */
static int check_ld(const char *name, int ld, int H, int hd) {
    if (ld < H * hd || ld % 8)
        return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: %s row stride %d (needs >= %d and a multiple of 8)", name,
                        ld, H * hd);
    return 0;
}

static int check_ptr(const char *name, const void *p) {
    if (!p || (uintptr_t)p % 16)
        return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: %s pointer %p is not 16-byte aligned", name, p);
    return 0;
}

static sdpa_plan *find_plan(wan_sdpa *s, const sdpa_key *k) {
    for (int i = 0; i < MAX_PLANS; i++)
        if (s->plans[i].used && !memcmp(&s->plans[i].key, k, sizeof *k)) return &s->plans[i];
    return NULL;
}

static sdpa_plan *free_slot(wan_sdpa *s) {
    sdpa_plan *oldest = &s->plans[0];
    for (int i = 0; i < MAX_PLANS; i++) {
        if (!s->plans[i].used) return &s->plans[i];
        if (s->plans[i].last_use < oldest->last_use) oldest = &s->plans[i];
    }
    /* least recently used; its kernels (and its sequence-length buffers) may still be queued */
    (void)cudaStreamSynchronize(s->stream);
    plan_release(s, oldest);
    return oldest;
}

static int upload_seq_lens(wan_sdpa *s, sdpa_plan *p) {
    const sdpa_key *k = &p->key;
    size_t bytes = (size_t)k->B * sizeof(int32_t);
    p->seq_q_host = malloc(bytes);
    p->seq_kv_host = malloc(bytes);
    if (!p->seq_q_host || !p->seq_kv_host) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int b = 0; b < k->B; b++) p->seq_q_host[b] = k->Sq, p->seq_kv_host[b] = k->kv_valid;
    p->seq_q = s->alloc(s->alloc_ctx, bytes);
    p->seq_kv = s->alloc(s->alloc_ctx, bytes);
    if (!p->seq_q || !p->seq_kv) return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: out of device memory");
    CUDA_TRY(cudaMemcpyAsync(p->seq_q, p->seq_q_host, bytes, cudaMemcpyHostToDevice, s->stream), "upload seq_len_q");
    CUDA_TRY(cudaMemcpyAsync(p->seq_kv, p->seq_kv_host, bytes, cudaMemcpyHostToDevice, s->stream),
             "upload seq_len_kv");
    return 0;
}

/* Build one graph all the way to an execution plan. */
static int build_plan_graph(wan_sdpa *s, sdpa_plan *p, sdpa_graph_kind kind) {
    graph_build_free(&p->g);
    p->kind = kind;
    int rc = build_graph_ops(&p->g, kind, &p->key);
    if (!rc) rc = finalize_graph(&p->g, s->handle);
    if (!rc) rc = choose_plan(&p->g);
    if (rc) wan_error_context(rc, "%s B=%d H=%d Sq=%d Skv=%d hd=%d kv_valid=%d", graph_kind_name(kind), p->key.B,
                              p->key.H, p->key.Sq, p->key.Skv, p->key.hd, p->key.kv_valid);
    return rc;
}

static int get_plan(wan_sdpa *s, const sdpa_key *k, sdpa_plan **out) {
    sdpa_plan *p = find_plan(s, k);
    if (!p) {
        p = free_slot(s);
        p->key = *k;
        int rc;
        if (k->kind == SDPA_KEY_BWD) {
            rc = build_plan_graph(s, p, SDPA_BWD_COMPOSITE);
        } else if (s->fwd == FWD_COMPOSITE_ONLY) {
            rc = build_plan_graph(s, p, SDPA_FWD_COMPOSITE);
        } else {
            rc = build_plan_graph(s, p, SDPA_FWD_UNIFIED);
            if (rc && s->fwd == FWD_AUTO) {
                /* e.g. no engine for the single operation on this GPU: the composite graph */
                wan_warn("cuDNN attention: %s; using the composite forward graph", wan_errmsg());
                wan_error_clear();
                rc = build_plan_graph(s, p, SDPA_FWD_COMPOSITE);
            }
        }
        if (!rc && key_padded(k)) rc = upload_seq_lens(s, p);
        if (rc) {
            plan_release(s, p);
            return rc;
        }
        p->scale = k->scale, p->one = 1.0f, p->neg_inf = -INFINITY;
        p->softmax_sum_off = align_up((size_t)p->g.workspace, 256);
        p->dq_accum_off = p->softmax_sum_off;
        p->workspace_bytes = p->softmax_sum_off;
        if (p->kind == SDPA_BWD_COMPOSITE) {
            p->dq_accum_off = p->softmax_sum_off + align_up(softmax_sum_bytes(k), 256);
            p->workspace_bytes = p->dq_accum_off + align_up(dq_accum_bytes(k), 256);
        }
        p->used = true;
        wan_debug("cuDNN attention: %s plan B=%d H=%d Sq=%d Skv=%d hd=%d kv_valid=%d: engine %lld, workspace %.1f MiB",
                  graph_kind_name(p->kind), k->B, k->H, k->Sq, k->Skv, k->hd, k->kv_valid, (long long)p->g.engine,
                  p->workspace_bytes / 1048576.0);
    }
    p->last_use = ++s->clock;
    if (p->workspace_bytes > s->workspace_bytes) {
        if (s->workspace) s->free(s->alloc_ctx, s->workspace);
        size_t bytes = align_up(p->workspace_bytes, (size_t)1 << 20);
        s->workspace = s->alloc(s->alloc_ctx, bytes);
        s->workspace_bytes = s->workspace ? bytes : 0;
        if (!s->workspace)
            return wan_fail(WAN_ERR_RUNTIME, "cuDNN attention: cannot allocate a %.1f MiB workspace",
                            bytes / 1048576.0);
    }
    *out = p;
    return 0;
}

/* The device pointers of one call, by UID. */
typedef struct {
    const void *q, *k, *v, *o, *dout, *stats;
    void *dq, *dk, *dv;
} sdpa_io;

static int execute(wan_sdpa *s, sdpa_plan *p, const sdpa_io *io) {
    int64_t uids[MAX_IO];
    void *ptrs[MAX_IO];
    char *ws = s->workspace;
    for (int i = 0; i < p->g.n_io; i++) {
        int64_t uid = p->g.io_uids[i];
        void *ptr = NULL;
        switch (uid) {
        case UID_Q: ptr = (void *)io->q; break;
        case UID_K: ptr = (void *)io->k; break;
        case UID_V: ptr = (void *)io->v; break;
        case UID_O: ptr = (void *)io->o; break;
        case UID_STATS: ptr = (void *)io->stats; break;
        case UID_DO: ptr = (void *)io->dout; break;
        case UID_DQ: ptr = io->dq; break;
        case UID_DK: ptr = io->dk; break;
        case UID_DV: ptr = io->dv; break;
        case UID_SCALE: ptr = &p->scale; break;
        case UID_ONE: ptr = &p->one; break;
        case UID_NEG_INF: ptr = &p->neg_inf; break;
        case UID_SEQ_Q: ptr = p->seq_q; break;
        case UID_SEQ_KV: ptr = p->seq_kv; break;
        case UID_SOFTMAX_SUM: ptr = ws + p->softmax_sum_off; break;
        case UID_DQ_ACCUM: ptr = ws + p->dq_accum_off; break;
        }
        WAN_ASSERT(ptr != NULL);
        uids[i] = uid;
        ptrs[i] = ptr;
    }
    cudnnBackendDescriptor_t pack = NULL;
    CUDNN_TRY(cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, &pack), "create variant pack");
    void *workspace = s->workspace;
    cudnnStatus_t st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                                p->g.n_io, uids);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, p->g.n_io,
                                      ptrs);
    if (st == CUDNN_STATUS_SUCCESS)
        st = cudnnBackendSetAttribute(pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &workspace);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendFinalize(pack);
    if (st == CUDNN_STATUS_SUCCESS) st = cudnnBackendExecute(s->handle, p->g.plan, pack);
    cudnnBackendDestroyDescriptor(pack);
    if (st != CUDNN_STATUS_SUCCESS)
        return cudnn_fail_at(__LINE__, st, "run the %s B=%d H=%d Sq=%d Skv=%d hd=%d", graph_kind_name(p->kind),
                             p->key.B, p->key.H, p->key.Sq, p->key.Skv, p->key.hd);
    return 0;
}

int wan_sdpa_fwd(wan_sdpa *s, void *out, int ldo, float *lse, const void *q, int ldq, const void *k, int ldk,
                 const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid, float scale) {
    WAN_TRY(check_shape(B, H, Sq, Skv, hd, kv_valid, false));
    WAN_TRY(check_ld("q", ldq, H, hd));
    WAN_TRY(check_ld("k", ldk, H, hd));
    WAN_TRY(check_ld("v", ldv, H, hd));
    WAN_TRY(check_ld("out", ldo, H, hd));
    WAN_TRY(check_ptr("q", q));
    WAN_TRY(check_ptr("k", k));
    WAN_TRY(check_ptr("v", v));
    WAN_TRY(check_ptr("out", out));
    WAN_TRY(check_ptr("lse", lse));
    sdpa_key key;
    memset(&key, 0, sizeof key);
    key.kind = SDPA_KEY_FWD;
    key.B = B, key.H = H, key.Sq = Sq, key.Skv = Skv, key.hd = hd, key.kv_valid = kv_valid;
    key.ldq = ldq, key.ldk = ldk, key.ldv = ldv, key.ldo = ldo;
    key.scale = scale;
    key.masked = kv_valid < Skv;
    sdpa_plan *p;
    WAN_TRY(get_plan(s, &key, &p));
    sdpa_io io = {.q = q, .k = k, .v = v, .o = out, .stats = lse};
    return execute(s, p, &io);
}

int wan_sdpa_bwd(wan_sdpa *s, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv, const void *dout,
                 int lddo, const void *out, int ldo, const float *lse, const void *q, int ldq, const void *k,
                 int ldk, const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                 float scale) {
    WAN_TRY(check_shape(B, H, Sq, Skv, hd, kv_valid, true));
    const struct { const char *name; int ld; const void *p; } args[] = {
        {"q", ldq, q}, {"k", ldk, k}, {"v", ldv, v}, {"out", ldo, out}, {"dout", lddo, dout},
        {"dq", lddq, dq}, {"dk", lddk, dk}, {"dv", lddv, dv},
    };
    for (size_t i = 0; i < sizeof args / sizeof args[0]; i++) {
        WAN_TRY(check_ld(args[i].name, args[i].ld, H, hd));
        WAN_TRY(check_ptr(args[i].name, args[i].p));
    }
    WAN_TRY(check_ptr("lse", lse));
    sdpa_key key;
    memset(&key, 0, sizeof key);
    key.kind = SDPA_KEY_BWD;
    key.B = B, key.H = H, key.Sq = Sq, key.Skv = Skv, key.hd = hd, key.kv_valid = kv_valid;
    key.ldq = ldq, key.ldk = ldk, key.ldv = ldv, key.ldo = ldo;
    key.lddo = lddo, key.lddq = lddq, key.lddk = lddk, key.lddv = lddv;
    key.scale = scale;
    key.masked = kv_valid < Skv || bwd_needs_mask_workaround(Skv);
    sdpa_plan *p;
    WAN_TRY(get_plan(s, &key, &p));
    sdpa_io io = {.q = q, .k = k, .v = v, .o = out, .dout = dout, .stats = lse, .dq = dq, .dk = dk, .dv = dv};
    WAN_TRY(execute(s, p, &io));
    if (kv_valid < Skv) {
        /* Masked keys get exactly zero gradient; the engine skips rows >= seq_len_kv. */
        size_t width = (size_t)H * hd * 2, rows = (size_t)(Skv - kv_valid);
        for (int b = 0; b < B; b++) {
            size_t row0 = (size_t)b * Skv + kv_valid;
            CUDA_TRY(cudaMemset2DAsync((char *)dk + row0 * lddk * 2, (size_t)lddk * 2, 0, width, rows, s->stream),
                     "zero dk of masked keys");
            CUDA_TRY(cudaMemset2DAsync((char *)dv + row0 * lddv * 2, (size_t)lddv * 2, 0, width, rows, s->stream),
                     "zero dv of masked keys");
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Self-test: build every graph of a shape (forward unified and composite, backward; without and
 * with the padding mask) as far as this machine allows.
 *
 * Without a GPU, cuDNN finalises tensors, operations and the operation graph, but no execution
 * plan: engine configs fail with NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING (its engines compile
 * their kernels at run time and need libcuda). What can still be checked is which engines accept
 * the graph's topology on the target GPU: cuDNN takes a device description (a DEVICEPROP
 * descriptor from JSON, since 9.8) in place of a device, and an engine config finalises up to the
 * missing driver only for engines that match the graph. The description below is an H100 SXM
 * (sm_90, 132 SMs) in the keys cuDNN 9.19's deserialiser asks for; the values are the H100's
 * published properties. Types, strides and alignment are checked only when a plan is built. */

static const char h100_description[] =
    "{\"deviceName\":\"NVIDIA H100 80GB HBM3\",\"deviceVer\":900,\"driverVer\":13000,\"cudaDeviceId\":0,"
    "\"multiProcessorCount\":132,\"maxCtasPerSM\":32,\"maxThreadsPerSM\":2048,\"maxThreadsPerBlock\":1024,"
    "\"maxGridSize\":[2147483647,65535,65535],\"maxBlockSize\":[1024,1024,64],\"warpSize\":32,"
    "\"regsPerBlock\":65536,\"maxRegistersPerSM\":65536,\"maxSharedMemoryPerBlock\":49152,"
    "\"maxSharedMemoryPerBlockOptin\":232448,\"reservedSharedMemoryPerBlock\":1024,"
    "\"l2CacheSize\":52428800,\"totalGlobalMem\":85045460992,\"smClockRateKHz\":1980000,"
    "\"memClockRateKHz\":2619000,\"pciDeviceId\":0,\"isTccDriver\":0,\"supportCoopLaunch\":1}";

static int device_description(graph_build *g, const char *json, cudnnBackendDescriptor_t *out) {
    cudnnBackendDescriptor_t d;
    WAN_TRY(new_desc(g, CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, "device properties", &d));
    SET_ATTR(d, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR, (int64_t)strlen(json), json,
             "device properties");
    CUDNN_TRY(cudnnBackendFinalize(d), "finalise the device description");
    *out = d;
    return 0;
}

/* The JSON cuDNN writes for the GPU behind handle. */
static int device_description_of(graph_build *g, cudnnHandle_t handle, char *json, size_t len, int64_t *n) {
    cudnnBackendDescriptor_t d;
    WAN_TRY(new_desc(g, CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR, "device properties", &d));
    SET_ATTR(d, CUDNN_ATTR_DEVICEPROP_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "device properties");
    CUDNN_TRY(cudnnBackendFinalize(d), "finalise the device properties of the GPU");
    CUDNN_TRY(cudnnBackendGetAttribute(d, CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, CUDNN_TYPE_CHAR,
                                       (int64_t)len - 1, n, json),
              "get the device properties as JSON");
    json[*n < (int64_t)len ? *n : (int64_t)len - 1] = 0;
    return 0;
}

/* Engine statuses that mean "the graph was accepted; what is missing is the driver or GPU". */
static bool accepted_without_gpu(cudnnStatus_t st) {
    return st == CUDNN_STATUS_SUCCESS || st == CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING ||
           st == CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER ||
           st == CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART;
}

/* Does engine `index` accept the finalised graph on `device`? An engine config with the
 * engine's first kernel config (the default, -1, is refused by some engines outright). */
static bool engine_accepts(cudnnBackendDescriptor_t graph, cudnnBackendDescriptor_t device, int64_t index) {
    enum { MAX_KNOBS = CUDNN_KNOB_TYPE_COUNTS };
    cudnnBackendDescriptor_t engine = NULL, config = NULL, choice = NULL, knobs[MAX_KNOBS];
    int n_knobs_made = 0;
    bool accepted = false;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &engine)) return false;
    if (cudnnBackendSetAttribute(engine, CUDNN_ATTR_ENGINE_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph) ||
        cudnnBackendSetAttribute(engine, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &index) ||
        cudnnBackendSetAttribute(engine, CUDNN_ATTR_ENGINE_DEVICEPROP, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &device) ||
        cudnnBackendFinalize(engine))
        goto done;
    for (; n_knobs_made < MAX_KNOBS; n_knobs_made++)
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR, &knobs[n_knobs_made])) break;
    int64_t n_knobs = 0, kernel_cfg = -1;
    if (cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_KNOB_INFO, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_knobs_made,
                                 &n_knobs, knobs))
        n_knobs = 0;
    for (int64_t i = 0; i < n_knobs; i++) {
        cudnnBackendKnobType_t type;
        int64_t n, lowest;
        if (!cudnnBackendGetAttribute(knobs[i], CUDNN_ATTR_KNOB_INFO_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &n, &type) &&
            type == CUDNN_KNOB_TYPE_KERNEL_CFG &&
            !cudnnBackendGetAttribute(knobs[i], CUDNN_ATTR_KNOB_INFO_MINIMUM_VALUE, CUDNN_TYPE_INT64, 1, &n, &lowest))
            kernel_cfg = lowest;
    }
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &config) ||
        cudnnBackendSetAttribute(config, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &engine))
        goto done;
    if (kernel_cfg >= 0) {
        cudnnBackendKnobType_t type = CUDNN_KNOB_TYPE_KERNEL_CFG;
        if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, &choice) ||
            cudnnBackendSetAttribute(choice, CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, CUDNN_TYPE_KNOB_TYPE, 1, &type) ||
            cudnnBackendSetAttribute(choice, CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, CUDNN_TYPE_INT64, 1, &kernel_cfg) ||
            cudnnBackendFinalize(choice) ||
            cudnnBackendSetAttribute(config, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                     &choice))
            goto done;
    }
    accepted = accepted_without_gpu(cudnnBackendFinalize(config));
done:
    if (choice) cudnnBackendDestroyDescriptor(choice);
    if (config) cudnnBackendDestroyDescriptor(config);
    for (int i = 0; i < n_knobs_made; i++) cudnnBackendDestroyDescriptor(knobs[i]);
    cudnnBackendDestroyDescriptor(engine);
    return accepted;
}

__attribute__((format(printf, 3, 4))) static void report_add(char *report, size_t len, const char *fmt, ...) {
    size_t used = strlen(report);
    if (used + 1 >= len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(report + used, len - used, fmt, ap);
    va_end(ap);
}

static void trim_newlines(char *s) {
    for (char *c = s; *c; c++)
        if (*c == '\n') *c = ' ';
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == ' ') s[--n] = 0;
}

int wan_sdpa_selftest_build(int B, int H, int Sq, int Skv, int hd, char *report, size_t report_len) {
    char scratch[1];
    if (!report || report_len == 0) report = scratch, report_len = sizeof scratch;
    report[0] = 0;
    size_t version = cudnnGetVersion();
    report_add(report, report_len, "cuDNN %zu.%zu.%zu (headers %d.%d.%d); B=%d H=%d Sq=%d Skv=%d hd=%d\n",
               version / 10000, version / 100 % 100, version % 100, CUDNN_MAJOR, CUDNN_MINOR, CUDNN_PATCHLEVEL, B, H,
               Sq, Skv, hd);
    WAN_TRY(check_cudnn_version());
    WAN_TRY(check_shape(B, H, Sq, Skv, hd, Skv, true));

    /* With a GPU: a handle, heuristics and plans. Without: the device description. */
    cudnnHandle_t handle = NULL;
    cudnnStatus_t hs = cudnnCreate(&handle);
    graph_build *device_owner = calloc(1, sizeof *device_owner);
    if (!device_owner) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    cudnnBackendDescriptor_t device = NULL;
    char first_failure[700] = "";
    if (hs != CUDNN_STATUS_SUCCESS) {
        char detail[400] = "";
        cudnnGetLastErrorString(detail, sizeof detail);
        trim_newlines(detail);
        report_add(report, report_len, "cudnnCreate: %s%s%s (no GPU: no handle, heuristics or plans here)\n",
                   cudnnGetErrorString(hs), detail[0] ? ": " : "", detail);
        handle = NULL;
        if (device_description(device_owner, h100_description, &device)) {
            snprintf(first_failure, sizeof first_failure, "%s", wan_errmsg());
            report_add(report, report_len, "device description (H100, sm_90): FAILED: %s\n", wan_errmsg());
            wan_error_clear();
        } else {
            report_add(report, report_len, "device description (H100, sm_90) finalised\n");
        }
    }

    if (handle) {
        /* this GPU's description, to compare with h100_description */
        char json[2048] = "";
        int64_t n = 0;
        if (device_description_of(device_owner, handle, json, sizeof json, &n) == 0)
            report_add(report, report_len, "device description of this GPU: %s\n", json);
        else
            report_add(report, report_len, "device description of this GPU: %s\n", wan_errmsg());
        wan_error_clear();
    }

    bool needs_gpu = false;
    const sdpa_graph_kind kinds[3] = {SDPA_FWD_UNIFIED, SDPA_FWD_COMPOSITE, SDPA_BWD_COMPOSITE};
    for (int padded = 0; padded < 2; padded++) {
        if (padded && Skv == 1) continue; /* nothing to mask */
        bool fwd_ok = false;
        for (int ki = 0; ki < 3; ki++) {
            const char *what = graph_kind_name(kinds[ki]), *mask = padded ? "padding mask" : "no mask";
            sdpa_key key;
            memset(&key, 0, sizeof key);
            key.kind = kinds[ki] == SDPA_BWD_COMPOSITE ? SDPA_KEY_BWD : SDPA_KEY_FWD;
            key.B = B, key.H = H, key.Sq = Sq, key.Skv = Skv, key.hd = hd;
            key.kv_valid = padded ? Skv - 1 : Skv;
            key.masked = padded;
            /* the model's layouts: q|k|v column blocks of one fused [tokens, 3*H*hd] GEMM output,
             * out and dout dense, dq|dk|dv into one fused gradient */
            key.ldq = key.ldk = key.ldv = 3 * H * hd;
            key.ldo = H * hd;
            if (key.kind == SDPA_KEY_BWD) key.lddo = H * hd, key.lddq = key.lddk = key.lddv = 3 * H * hd;
            key.scale = 1.0f / sqrtf((float)hd);

            const char *missing = kinds[ki] == SDPA_FWD_UNIFIED ? unified_missing(&key) : NULL;
            if (missing) {
                /* not a failure: the composite forward is what runs on this cuDNN */
                report_add(report, report_len, "%s, %s: skipped: %s\n", what, mask, missing);
                continue;
            }
            graph_build *g = calloc(1, sizeof *g);
            if (!g) {
                snprintf(first_failure, sizeof first_failure, "out of memory");
                break;
            }
            report_add(report, report_len, "%s, %s: ", what, mask);
            int rc = build_graph_ops(g, kinds[ki], &key);
            report_add(report, report_len, "%d tensors, %d ops finalised", g->n_tensors_final, g->n_ops_final);
            if (!rc) rc = finalize_graph(g, handle);
            bool ok = false;
            if (rc) {
                report_add(report, report_len, "; FAILED: %s\n", wan_errmsg());
            } else if (handle) {
                report_add(report, report_len, ", operation graph finalised");
                rc = choose_plan(g);
                if (rc)
                    report_add(report, report_len, "; no execution plan: %s\n", wan_errmsg());
                else
                    report_add(report, report_len, "; plan on engine %lld (%d configs), workspace %lld bytes\n",
                               (long long)g->engine, g->n_configs, (long long)g->workspace);
                ok = !rc;
            } else if (device) {
                report_add(report, report_len, ", operation graph finalised; sm_90 engines accepting the graph:");
                int64_t n_engines = 0;
                cudnnBackendGetAttribute(g->graph, CUDNN_ATTR_OPERATIONGRAPH_ENGINE_GLOBAL_COUNT, CUDNN_TYPE_INT64,
                                         1, NULL, &n_engines);
                for (int64_t e = 0; e < n_engines; e++)
                    if (engine_accepts(g->graph, device, e)) {
                        report_add(report, report_len, " %lld", (long long)e);
                        ok = true;
                    }
                report_add(report, report_len, "%s\n", ok ? "" : " none");
                if (!ok) rc = wan_fail(WAN_ERR_RUNTIME, "no sm_90 engine accepts the graph");
                needs_gpu = true;
            }
            /* The backward must work; the forward through at least one of its two graphs. */
            if (rc && !first_failure[0] && (key.kind == SDPA_KEY_BWD || !handle))
                snprintf(first_failure, sizeof first_failure, "%s, %s: %s", what, mask, wan_errmsg());
            if (ok && key.kind == SDPA_KEY_FWD) fwd_ok = true;
            wan_error_clear();
            graph_build_free(g);
            free(g);
        }
        if (!fwd_ok && !first_failure[0])
            snprintf(first_failure, sizeof first_failure, "no forward graph works (%s)",
                     padded ? "padding mask" : "no mask");
    }
    if (needs_gpu)
        report_add(report, report_len,
                   "needs a GPU: cudnnCreate, the full support check, kernel builds, execution plans, runs\n");
    graph_build_free(device_owner);
    free(device_owner);
    if (handle) cudnnDestroy(handle);
    if (first_failure[0]) return wan_fail(WAN_ERR_RUNTIME, "%s", first_failure);
    return 0;
}
