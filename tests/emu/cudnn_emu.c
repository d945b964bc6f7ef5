/* cuDNN's backend (graph) API on the CPU, for the emulation build (make EMU=1), linked in place of
 * libcudnn. Compiled against the real cudnn.h so every signature matches.
 *
 * What it does: descriptors record their attributes; finalising one checks it the way a strict
 * reading of NVIDIA's backend descriptor reference asks (required attributes, types, shapes that
 * broadcast, strides that do not overlap, ...); an operation graph is sorted into dependency
 * order; the heuristics offer one engine (global index 0, no knobs), and cudnnBackendExecute runs
 * the graph's operations one after another on the host, reading and writing the variant pack's
 * pointers (in this build device pointers are host pointers; everything is synchronous).
 *
 * Operations: POINTWISE (ADD SUB MUL DIV MAX MIN EXP LOG NEG ABS SQRT RSQRT RECIPROCAL IDENTITY,
 * CMP_EQ/NEQ/GT/GE/LT/LE, LOGICAL_AND/OR/NOT, GEN_INDEX, BINARY_SELECT), REDUCTION (ADD MUL MIN MAX
 * AMAX), MATMUL (batched, batch dims of size 1 broadcast, M/N/K overrides from per-batch lengths,
 * padding value), RESHAPE (the same memory seen through other dims and strides, e.g. a transpose)
 * and SDPA_FWD (softmax(scale Q K^T) V with natural-log softmax statistics, GQA, and the implicit
 * padding mask of SEQ_LEN_Q/SEQ_LEN_KV). Anything else is refused with NOT_SUPPORTED and a message
 * that names it: the emulator never guesses.
 *
 * Numerics: virtual tensors live in host buffers of doubles holding values already rounded to
 * their declared type (FLOAT intermediates are fp32 values, a BFLOAT16 virtual is rounded to bf16
 * as the engine's would be). Pointwise results are rounded to the math precision, matmul and
 * reduction results to fp32 (their compute type); stores round to nearest even.
 *
 * Strictness at execution: every non-virtual tensor of the graph must be in the variant pack (and
 * nothing else), pointers non-NULL and aligned as BYTE_ALIGNMENT says (by-value scalars excepted:
 * they are host values), outputs may not overlap any other tensor's bytes, the workspace (1000
 * bytes) is filled with 0xff before the run so a caller keeping its own data in it sees garbage.
 * Output elements a matmul's M/N overrides leave out get the padding value when the matmul
 * descriptor has one, else NaN (never a silent zero).
 *
 * cudnnGetLastErrorString gives "cuDNN emulator: <what>" for the last failure and clears it (as
 * cuDNN 9.19 does). WAN_CUDNN_EMU_TRACE=1 also prints every failure on stderr.
 * WAN_CUDNN_EMU_VERSION=N makes cudnnGetVersion return N (to exercise version-dependent paths).
 * DEVICEPROP descriptors can be created and given attributes but never finalised. */
#include <cudnn.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu.h"

enum {
    MAX_DIMS = CUDNN_DIM_MAX,
    MAX_ATTRS = 32,
    MAX_OP_IN = 8,
    MAX_OP_OUT = 2,
    EMU_WORKSPACE_BYTES = 1000, /* not a multiple of 256: callers must align what they put after it */
};

#define DESC_MAGIC 0x43444e4e44455343ull   /* "CDNNDESC" */
#define HANDLE_MAGIC 0x43444e4e48414e44ull /* "CDNNHAND" */
#define MAX_ELEMENTS ((int64_t)1 << 40)
#define MAX_EXEC_BYTES ((int64_t)8 << 30) /* host memory one execution may take for intermediates */

/* ------------------------------------------------------------------------------------------------
 * Errors. */

static _Thread_local char emu_msg[2048];

const char *cudnnGetErrorString(cudnnStatus_t status) {
    switch (status) {
#define S(x)                                                                                       \
    case x: return #x;
        S(CUDNN_STATUS_SUCCESS)
        S(CUDNN_STATUS_NOT_INITIALIZED)
        S(CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH)
        S(CUDNN_STATUS_SERIALIZATION_VERSION_MISMATCH)
        S(CUDNN_STATUS_DEPRECATED)
        S(CUDNN_STATUS_LICENSE_ERROR)
        S(CUDNN_STATUS_RUNTIME_IN_PROGRESS)
        S(CUDNN_STATUS_RUNTIME_FP_OVERFLOW)
        S(CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED)
        S(CUDNN_STATUS_BAD_PARAM)
        S(CUDNN_STATUS_BAD_PARAM_NULL_POINTER)
        S(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER)
        S(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED)
        S(CUDNN_STATUS_BAD_PARAM_OUT_OF_BOUND)
        S(CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT)
        S(CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH)
        S(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH)
        S(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES)
        S(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE)
        S(CUDNN_STATUS_BAD_PARAM_CUDA_GRAPH_MISMATCH)
        S(CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE)
        S(CUDNN_STATUS_NOT_SUPPORTED)
        S(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN)
        S(CUDNN_STATUS_NOT_SUPPORTED_SHAPE)
        S(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE)
        S(CUDNN_STATUS_NOT_SUPPORTED_LAYOUT)
        S(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDA_DRIVER)
        S(CUDNN_STATUS_NOT_SUPPORTED_INCOMPATIBLE_CUDART)
        S(CUDNN_STATUS_NOT_SUPPORTED_ARCH_MISMATCH)
        S(CUDNN_STATUS_NOT_SUPPORTED_RUNTIME_PREREQUISITE_MISSING)
        S(CUDNN_STATUS_NOT_SUPPORTED_SUBLIBRARY_UNAVAILABLE)
        S(CUDNN_STATUS_NOT_SUPPORTED_SHARED_MEMORY_INSUFFICIENT)
        S(CUDNN_STATUS_NOT_SUPPORTED_PADDING)
        S(CUDNN_STATUS_NOT_SUPPORTED_BAD_LAUNCH_PARAM)
        S(CUDNN_STATUS_NOT_SUPPORTED_CUDA_GRAPH_NATIVE_API)
        S(CUDNN_STATUS_NOT_SUPPORTED_INVALID_DYNAMIC_SHAPE)
        S(CUDNN_STATUS_INTERNAL_ERROR)
        S(CUDNN_STATUS_INTERNAL_ERROR_COMPILATION_FAILED)
        S(CUDNN_STATUS_INTERNAL_ERROR_UNEXPECTED_VALUE)
        S(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED)
        S(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
        S(CUDNN_STATUS_INTERNAL_ERROR_BAD_LAUNCH_PARAM)
        S(CUDNN_STATUS_INTERNAL_ERROR_TEXTURE_CREATION_FAILED)
        S(CUDNN_STATUS_EXECUTION_FAILED)
        S(CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER)
        S(CUDNN_STATUS_EXECUTION_FAILED_CUBLAS)
        S(CUDNN_STATUS_EXECUTION_FAILED_CUDART)
        S(CUDNN_STATUS_EXECUTION_FAILED_CURAND)
#undef S
    case 2001: return "CUDNN_STATUS_INVALID_VALUE";
    }
    return "CUDNN_UNKNOWN_STATUS_FOUND";
}

void cudnnGetLastErrorString(char *message, size_t max_size) {
    if (!message || max_size == 0) return;
    snprintf(message, max_size, "%s", emu_msg);
    emu_msg[0] = 0;
}

__attribute__((format(printf, 2, 3))) static cudnnStatus_t fail(cudnnStatus_t st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = snprintf(emu_msg, sizeof emu_msg, "cuDNN emulator: ");
    vsnprintf(emu_msg + n, sizeof emu_msg - (size_t)n, fmt, ap);
    va_end(ap);
    const char *trace = getenv("WAN_CUDNN_EMU_TRACE");
    if (trace && *trace && strcmp(trace, "0")) fprintf(stderr, "%s [%s]\n", emu_msg, cudnnGetErrorString(st));
    return st;
}

#define TRY(expr)                                                                                  \
    do {                                                                                           \
        cudnnStatus_t st_ = (expr);                                                                \
        if (st_ != CUDNN_STATUS_SUCCESS) return st_;                                               \
    } while (0)

/* ------------------------------------------------------------------------------------------------
 * Names for messages. */

static const char *desc_type_name(cudnnBackendDescriptorType_t t) {
    switch (t) {
    case CUDNN_BACKEND_POINTWISE_DESCRIPTOR: return "POINTWISE";
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR: return "ENGINE";
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: return "ENGINECFG";
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: return "ENGINEHEUR";
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: return "EXECUTION_PLAN";
    case CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR: return "KNOB_CHOICE";
    case CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR: return "KNOB_INFO";
    case CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR: return "OPERATION_POINTWISE";
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: return "OPERATIONGRAPH";
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: return "VARIANT_PACK";
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: return "TENSOR";
    case CUDNN_BACKEND_MATMUL_DESCRIPTOR: return "MATMUL";
    case CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR: return "OPERATION_MATMUL";
    case CUDNN_BACKEND_REDUCTION_DESCRIPTOR: return "REDUCTION";
    case CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR: return "OPERATION_REDUCTION";
    case CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR: return "OPERATION_RESHAPE";
    case CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR: return "DEVICEPROP";
    case CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR: return "OPERATION_SDPA_FWD";
    case CUDNN_BACKEND_OPERATION_SDPA_BWD_DESCRIPTOR: return "OPERATION_SDPA_BWD";
    default: return "(a descriptor type the emulator does not know)";
    }
}

static const char *dtype_name(cudnnDataType_t t) {
    switch (t) {
    case CUDNN_DATA_FLOAT: return "FLOAT";
    case CUDNN_DATA_DOUBLE: return "DOUBLE";
    case CUDNN_DATA_HALF: return "HALF";
    case CUDNN_DATA_INT8: return "INT8";
    case CUDNN_DATA_INT32: return "INT32";
    case CUDNN_DATA_UINT8: return "UINT8";
    case CUDNN_DATA_BFLOAT16: return "BFLOAT16";
    case CUDNN_DATA_INT64: return "INT64";
    case CUDNN_DATA_BOOLEAN: return "BOOLEAN";
    default: return "(unemulated data type)";
    }
}

static const char *pw_mode_name(cudnnPointwiseMode_t m) {
    switch (m) {
#define M(x)                                                                                       \
    case CUDNN_POINTWISE_##x: return #x;
        M(ADD) M(ADD_SQUARE) M(DIV) M(MAX) M(MIN) M(MOD) M(MUL) M(POW) M(SUB) M(ABS) M(CEIL) M(COS) M(EXP)
        M(FLOOR) M(LOG) M(NEG) M(RSQRT) M(SIN) M(SQRT) M(TAN) M(ERF) M(IDENTITY) M(RECIPROCAL) M(ATAN2)
        M(RELU_FWD) M(TANH_FWD) M(SIGMOID_FWD) M(ELU_FWD) M(GELU_FWD) M(SOFTPLUS_FWD) M(SWISH_FWD)
        M(GELU_APPROX_TANH_FWD) M(RELU_BWD) M(TANH_BWD) M(SIGMOID_BWD) M(ELU_BWD) M(GELU_BWD) M(SOFTPLUS_BWD)
        M(SWISH_BWD) M(GELU_APPROX_TANH_BWD) M(CMP_EQ) M(CMP_NEQ) M(CMP_GT) M(CMP_GE) M(CMP_LT) M(CMP_LE)
        M(LOGICAL_AND) M(LOGICAL_OR) M(LOGICAL_NOT) M(GEN_INDEX) M(BINARY_SELECT)
#undef M
    }
    return "(unknown pointwise mode)";
}

static const char *red_op_name(cudnnReduceTensorOp_t op) {
    switch (op) {
    case CUDNN_REDUCE_TENSOR_ADD: return "ADD";
    case CUDNN_REDUCE_TENSOR_MUL: return "MUL";
    case CUDNN_REDUCE_TENSOR_MIN: return "MIN";
    case CUDNN_REDUCE_TENSOR_MAX: return "MAX";
    case CUDNN_REDUCE_TENSOR_AMAX: return "AMAX";
    case CUDNN_REDUCE_TENSOR_AVG: return "AVG";
    case CUDNN_REDUCE_TENSOR_NORM1: return "NORM1";
    case CUDNN_REDUCE_TENSOR_NORM2: return "NORM2";
    case CUDNN_REDUCE_TENSOR_MUL_NO_ZEROS: return "MUL_NO_ZEROS";
    }
    return "(unknown reduction)";
}

/* ------------------------------------------------------------------------------------------------
 * Attributes the emulator accepts, per descriptor type. Setting any other is NOT_SUPPORTED. */

#define ANY_DESC ((cudnnBackendDescriptorType_t)-1)
#define NO_TYPE ((cudnnBackendAttributeType_t)-1)

typedef struct {
    cudnnBackendDescriptorType_t desc;
    cudnnBackendAttributeName_t name;
    cudnnBackendAttributeType_t type, alt_type; /* alt_type: a second accepted type, or NO_TYPE */
    int64_t min_count, max_count;
    cudnnBackendDescriptorType_t target; /* for BACKEND_DESCRIPTOR values: their type, or ANY_DESC */
    const char *str;
} attr_spec;

#define SPEC(d, n, t, alt, lo, hi, tgt)                                                            \
    {CUDNN_BACKEND_##d##_DESCRIPTOR, CUDNN_ATTR_##n, CUDNN_TYPE_##t, alt, lo, hi, tgt, "CUDNN_ATTR_" #n}
#define SPEC_D(d, n, tgt) SPEC(d, n, BACKEND_DESCRIPTOR, NO_TYPE, 1, 1, CUDNN_BACKEND_##tgt##_DESCRIPTOR)

static const attr_spec attr_specs[] = {
    SPEC(TENSOR, TENSOR_DATA_TYPE, DATA_TYPE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(TENSOR, TENSOR_DIMENSIONS, INT64, NO_TYPE, 1, MAX_DIMS, ANY_DESC),
    SPEC(TENSOR, TENSOR_STRIDES, INT64, NO_TYPE, 1, MAX_DIMS, ANY_DESC),
    SPEC(TENSOR, TENSOR_UNIQUE_ID, INT64, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(TENSOR, TENSOR_BYTE_ALIGNMENT, INT64, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(TENSOR, TENSOR_IS_VIRTUAL, BOOLEAN, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(TENSOR, TENSOR_IS_BY_VALUE, BOOLEAN, NO_TYPE, 1, 1, ANY_DESC),

    SPEC(POINTWISE, POINTWISE_MODE, POINTWISE_MODE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(POINTWISE, POINTWISE_MATH_PREC, DATA_TYPE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(POINTWISE, POINTWISE_AXIS, INT64, NO_TYPE, 1, 1, ANY_DESC),
    SPEC_D(OPERATION_POINTWISE, OPERATION_POINTWISE_PW_DESCRIPTOR, POINTWISE),
    SPEC_D(OPERATION_POINTWISE, OPERATION_POINTWISE_XDESC, TENSOR),
    SPEC_D(OPERATION_POINTWISE, OPERATION_POINTWISE_BDESC, TENSOR),
    SPEC_D(OPERATION_POINTWISE, OPERATION_POINTWISE_TDESC, TENSOR),
    SPEC_D(OPERATION_POINTWISE, OPERATION_POINTWISE_YDESC, TENSOR),
    SPEC(OPERATION_POINTWISE, OPERATION_POINTWISE_ALPHA1, FLOAT, CUDNN_TYPE_DOUBLE, 1, 1, ANY_DESC),
    SPEC(OPERATION_POINTWISE, OPERATION_POINTWISE_ALPHA2, FLOAT, CUDNN_TYPE_DOUBLE, 1, 1, ANY_DESC),

    SPEC(REDUCTION, REDUCTION_OPERATOR, REDUCTION_OPERATOR_TYPE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(REDUCTION, REDUCTION_COMP_TYPE, DATA_TYPE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(REDUCTION, REDUCTION_IS_DETERMINISTIC, BOOLEAN, NO_TYPE, 1, 1, ANY_DESC),
    SPEC_D(OPERATION_REDUCTION, OPERATION_REDUCTION_XDESC, TENSOR),
    SPEC_D(OPERATION_REDUCTION, OPERATION_REDUCTION_YDESC, TENSOR),
    SPEC_D(OPERATION_REDUCTION, OPERATION_REDUCTION_DESC, REDUCTION),

    SPEC(MATMUL, MATMUL_COMP_TYPE, DATA_TYPE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(MATMUL, MATMUL_PADDING_VALUE, DOUBLE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC_D(OPERATION_MATMUL, OPERATION_MATMUL_ADESC, TENSOR),
    SPEC_D(OPERATION_MATMUL, OPERATION_MATMUL_BDESC, TENSOR),
    SPEC_D(OPERATION_MATMUL, OPERATION_MATMUL_CDESC, TENSOR),
    SPEC_D(OPERATION_MATMUL, OPERATION_MATMUL_DESC, MATMUL),
    SPEC_D(OPERATION_MATMUL, OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, TENSOR),
    SPEC_D(OPERATION_MATMUL, OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, TENSOR),
    SPEC_D(OPERATION_MATMUL, OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, TENSOR),

    SPEC_D(OPERATION_RESHAPE, OPERATION_RESHAPE_XDESC, TENSOR),
    SPEC_D(OPERATION_RESHAPE, OPERATION_RESHAPE_YDESC, TENSOR),

    SPEC_D(OPERATION_SDPA_FWD, OPERATION_SDPA_FWD_QDESC, TENSOR),
    SPEC_D(OPERATION_SDPA_FWD, OPERATION_SDPA_FWD_KDESC, TENSOR),
    SPEC_D(OPERATION_SDPA_FWD, OPERATION_SDPA_FWD_VDESC, TENSOR),
    SPEC_D(OPERATION_SDPA_FWD, OPERATION_SDPA_FWD_ODESC, TENSOR),
    SPEC_D(OPERATION_SDPA_FWD, OPERATION_SDPA_FWD_STATSDESC, TENSOR),
    SPEC_D(OPERATION_SDPA_FWD, OPERATION_SDPA_FWD_SCALEDESC, TENSOR),
    SPEC_D(OPERATION_SDPA_FWD, OPERATION_SDPA_FWD_SEQ_LEN_QDESC, TENSOR),
    SPEC_D(OPERATION_SDPA_FWD, OPERATION_SDPA_FWD_SEQ_LEN_KVDESC, TENSOR),

    SPEC(OPERATIONGRAPH, OPERATIONGRAPH_OPS, BACKEND_DESCRIPTOR, NO_TYPE, 1, 4096, ANY_DESC),
    SPEC(OPERATIONGRAPH, OPERATIONGRAPH_HANDLE, HANDLE, NO_TYPE, 1, 1, ANY_DESC),

    SPEC_D(ENGINEHEUR, ENGINEHEUR_OPERATION_GRAPH, OPERATIONGRAPH),
    SPEC(ENGINEHEUR, ENGINEHEUR_MODE, HEUR_MODE, NO_TYPE, 1, 1, ANY_DESC),

    SPEC_D(ENGINE, ENGINE_OPERATION_GRAPH, OPERATIONGRAPH),
    SPEC(ENGINE, ENGINE_GLOBAL_INDEX, INT64, NO_TYPE, 1, 1, ANY_DESC),

    SPEC_D(ENGINECFG, ENGINECFG_ENGINE, ENGINE),
    SPEC(ENGINECFG, ENGINECFG_KNOB_CHOICES, BACKEND_DESCRIPTOR, NO_TYPE, 0, CUDNN_KNOB_TYPE_COUNTS,
         CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR),

    SPEC(KNOB_CHOICE, KNOB_CHOICE_KNOB_TYPE, KNOB_TYPE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(KNOB_CHOICE, KNOB_CHOICE_KNOB_VALUE, INT64, NO_TYPE, 1, 1, ANY_DESC),

    SPEC_D(EXECUTION_PLAN, EXECUTION_PLAN_ENGINE_CONFIG, ENGINECFG),
    SPEC(EXECUTION_PLAN, EXECUTION_PLAN_HANDLE, HANDLE, NO_TYPE, 1, 1, ANY_DESC),

    SPEC(VARIANT_PACK, VARIANT_PACK_UNIQUE_IDS, INT64, NO_TYPE, 0, INT64_MAX, ANY_DESC),
    SPEC(VARIANT_PACK, VARIANT_PACK_DATA_POINTERS, VOID_PTR, NO_TYPE, 0, INT64_MAX, ANY_DESC),
    SPEC(VARIANT_PACK, VARIANT_PACK_WORKSPACE, VOID_PTR, NO_TYPE, 1, 1, ANY_DESC),

    SPEC(DEVICEPROP, DEVICEPROP_DEVICE_ID, INT64, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(DEVICEPROP, DEVICEPROP_HANDLE, HANDLE, NO_TYPE, 1, 1, ANY_DESC),
    SPEC(DEVICEPROP, DEVICEPROP_JSON_REPRESENTATION, CHAR, NO_TYPE, 0, 1 << 20, ANY_DESC),
};

static const char *attr_name(cudnnBackendAttributeName_t name) {
    for (size_t i = 0; i < sizeof attr_specs / sizeof attr_specs[0]; i++)
        if (attr_specs[i].name == name) return attr_specs[i].str;
    switch (name) {
    case CUDNN_ATTR_ENGINEHEUR_RESULTS: return "CUDNN_ATTR_ENGINEHEUR_RESULTS";
    case CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE: return "CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE";
    case CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE: return "CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE";
    case CUDNN_ATTR_OPERATIONGRAPH_ENGINE_GLOBAL_COUNT: return "CUDNN_ATTR_OPERATIONGRAPH_ENGINE_GLOBAL_COUNT";
    case CUDNN_ATTR_ENGINE_KNOB_INFO: return "CUDNN_ATTR_ENGINE_KNOB_INFO";
    default: return NULL;
    }
}

/* "CUDNN_ATTR_X" or "attribute 1234", in a static rotating buffer (two per message at most). */
static const char *attr_str(cudnnBackendAttributeName_t name) {
    static _Thread_local char buf[4][32];
    static _Thread_local int next;
    const char *s = attr_name(name);
    if (s) return s;
    char *b = buf[next++ & 3];
    snprintf(b, sizeof buf[0], "attribute %d", (int)name);
    return b;
}

static size_t attr_type_size(cudnnBackendAttributeType_t t) {
    switch (t) {
    case CUDNN_TYPE_HANDLE: return sizeof(cudnnHandle_t);
    case CUDNN_TYPE_DATA_TYPE: return sizeof(cudnnDataType_t);
    case CUDNN_TYPE_BOOLEAN: return sizeof(bool);
    case CUDNN_TYPE_INT64: return sizeof(int64_t);
    case CUDNN_TYPE_FLOAT: return sizeof(float);
    case CUDNN_TYPE_DOUBLE: return sizeof(double);
    case CUDNN_TYPE_VOID_PTR: return sizeof(void *);
    case CUDNN_TYPE_HEUR_MODE: return sizeof(cudnnBackendHeurMode_t);
    case CUDNN_TYPE_KNOB_TYPE: return sizeof(cudnnBackendKnobType_t);
    case CUDNN_TYPE_POINTWISE_MODE: return sizeof(cudnnPointwiseMode_t);
    case CUDNN_TYPE_BACKEND_DESCRIPTOR: return sizeof(cudnnBackendDescriptor_t);
    case CUDNN_TYPE_REDUCTION_OPERATOR_TYPE: return sizeof(cudnnReduceTensorOp_t);
    case CUDNN_TYPE_INT32: return sizeof(int32_t);
    case CUDNN_TYPE_CHAR: return 1;
    default: return 0;
    }
}

/* ------------------------------------------------------------------------------------------------
 * Data types. */

static size_t dtype_size(cudnnDataType_t t) {
    switch (t) {
    case CUDNN_DATA_FLOAT: case CUDNN_DATA_INT32: return 4;
    case CUDNN_DATA_DOUBLE: case CUDNN_DATA_INT64: return 8;
    case CUDNN_DATA_HALF: case CUDNN_DATA_BFLOAT16: return 2;
    case CUDNN_DATA_INT8: case CUDNN_DATA_UINT8: case CUDNN_DATA_BOOLEAN: return 1;
    default: return 0;
    }
}

static bool dtype_is_int(cudnnDataType_t t) {
    return t == CUDNN_DATA_INT32 || t == CUDNN_DATA_INT64 || t == CUDNN_DATA_INT8 || t == CUDNN_DATA_UINT8;
}

static float bf16_to_f32(uint16_t h) {
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static uint16_t f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* NaN stays NaN */
    x += 0x7fffu + ((x >> 16) & 1u);                                          /* round to nearest even */
    return (uint16_t)(x >> 16);
}

/* v as the type stores it, read back; false when an integer type cannot hold v exactly. */
static bool round_to(cudnnDataType_t t, double v, double *out) {
    switch (t) {
    case CUDNN_DATA_FLOAT: *out = (double)(float)v; return true;
    case CUDNN_DATA_DOUBLE: *out = v; return true;
    case CUDNN_DATA_HALF: *out = (double)(float)(_Float16)(float)v; return true;
    case CUDNN_DATA_BFLOAT16: *out = (double)bf16_to_f32(f32_to_bf16((float)v)); return true;
    case CUDNN_DATA_BOOLEAN: *out = v != 0 ? 1.0 : 0.0; return !isnan(v);
    case CUDNN_DATA_INT32:
        *out = v;
        return v == floor(v) && v >= -2147483648.0 && v <= 2147483647.0;
    case CUDNN_DATA_INT64: *out = v; return v == floor(v) && fabs(v) <= 9007199254740992.0;
    case CUDNN_DATA_INT8: *out = v; return v == floor(v) && v >= -128 && v <= 127;
    case CUDNN_DATA_UINT8: *out = v; return v == floor(v) && v >= 0 && v <= 255;
    default: return false;
    }
}

static double load_elem(const char *p, cudnnDataType_t t) {
    switch (t) {
    case CUDNN_DATA_FLOAT: { float v; memcpy(&v, p, 4); return v; }
    case CUDNN_DATA_DOUBLE: { double v; memcpy(&v, p, 8); return v; }
    case CUDNN_DATA_HALF: { _Float16 v; memcpy(&v, p, 2); return (double)(float)v; }
    case CUDNN_DATA_BFLOAT16: { uint16_t v; memcpy(&v, p, 2); return bf16_to_f32(v); }
    case CUDNN_DATA_INT32: { int32_t v; memcpy(&v, p, 4); return v; }
    case CUDNN_DATA_INT64: { int64_t v; memcpy(&v, p, 8); return (double)v; }
    case CUDNN_DATA_INT8: { int8_t v; memcpy(&v, p, 1); return v; }
    case CUDNN_DATA_UINT8: { uint8_t v; memcpy(&v, p, 1); return v; }
    default: return NAN;
    }
}

/* v must already be representable (round_to said so). */
static void store_elem(char *p, cudnnDataType_t t, double v) {
    switch (t) {
    case CUDNN_DATA_FLOAT: { float x = (float)v; memcpy(p, &x, 4); break; }
    case CUDNN_DATA_DOUBLE: memcpy(p, &v, 8); break;
    case CUDNN_DATA_HALF: { _Float16 x = (_Float16)(float)v; memcpy(p, &x, 2); break; }
    case CUDNN_DATA_BFLOAT16: { uint16_t x = f32_to_bf16((float)v); memcpy(p, &x, 2); break; }
    case CUDNN_DATA_INT32: { int32_t x = (int32_t)v; memcpy(p, &x, 4); break; }
    case CUDNN_DATA_INT64: { int64_t x = (int64_t)v; memcpy(p, &x, 8); break; }
    case CUDNN_DATA_INT8: { int8_t x = (int8_t)v; memcpy(p, &x, 1); break; }
    case CUDNN_DATA_UINT8: { uint8_t x = (uint8_t)v; memcpy(p, &x, 1); break; }
    default: break;
    }
}

/* ------------------------------------------------------------------------------------------------
 * Tensors. */

typedef struct {
    cudnnDataType_t dtype;
    int nd;
    int64_t dims[MAX_DIMS], strides[MAX_DIMS];
    int64_t uid, alignment;
    bool is_virtual, by_value;
} tensor_t;

static int64_t numel(const tensor_t *t) {
    int64_t n = 1;
    for (int i = 0; i < t->nd; i++) n *= t->dims[i];
    return n;
}

/* Row-major strides of the logical (dense) order. */
static void dense_strides(const tensor_t *t, int64_t s[MAX_DIMS]) {
    int64_t acc = 1;
    for (int i = t->nd - 1; i >= 0; i--) s[i] = acc, acc *= t->dims[i];
}

static bool tensor_equal(const tensor_t *a, const tensor_t *b) {
    if (a->dtype != b->dtype || a->nd != b->nd || a->uid != b->uid || a->alignment != b->alignment ||
        a->is_virtual != b->is_virtual || a->by_value != b->by_value)
        return false;
    for (int i = 0; i < a->nd; i++)
        if (a->dims[i] != b->dims[i] || a->strides[i] != b->strides[i]) return false;
    return true;
}

static void tensor_str(const tensor_t *t, char *buf, size_t len) {
    int n = snprintf(buf, len, "uid %lld %s%s%s dims [", (long long)t->uid, t->is_virtual ? "virtual " : "",
                     t->by_value ? "by-value " : "", dtype_name(t->dtype));
    for (int i = 0; i < t->nd && n > 0 && (size_t)n < len; i++)
        n += snprintf(buf + n, len - (size_t)n, "%s%lld", i ? "," : "", (long long)t->dims[i]);
    if (n > 0 && (size_t)n < len) n += snprintf(buf + n, len - (size_t)n, "] strides [");
    for (int i = 0; i < t->nd && n > 0 && (size_t)n < len; i++)
        n += snprintf(buf + n, len - (size_t)n, "%s%lld", i ? "," : "", (long long)t->strides[i]);
    if (n > 0 && (size_t)n < len) snprintf(buf + n, len - (size_t)n, "]");
}

/* The dims of extent > 1 as (stride, extent), sorted by stride; returns how many. */
typedef struct {
    int64_t stride, extent;
} stride_dim;

static int sorted_layout(const tensor_t *t, stride_dim out[MAX_DIMS]) {
    int n = 0;
    for (int i = 0; i < t->nd; i++)
        if (t->dims[i] > 1) out[n].stride = t->strides[i], out[n].extent = t->dims[i], n++;
    for (int i = 1; i < n; i++) /* insertion sort, stable */
        for (int j = i; j > 0 && out[j].stride < out[j - 1].stride; j--) {
            stride_dim tmp = out[j];
            out[j] = out[j - 1], out[j - 1] = tmp;
        }
    return n;
}

/* Every stride larger than the largest offset the smaller-stride dims reach: then no two elements
 * share an offset, and an offset splits back into coordinates greedily. */
static bool layout_nested(const tensor_t *t) {
    stride_dim l[MAX_DIMS];
    int n = sorted_layout(t, l);
    int64_t reach = 0;
    for (int i = 0; i < n; i++) {
        if (l[i].stride <= reach) return false;
        reach += l[i].stride * (l[i].extent - 1);
    }
    return true;
}

/* Do two elements share an offset? Exact: nested layouts cannot; others are checked element by
 * element when small enough (-1: too large to tell). */
static int layout_overlaps(const tensor_t *t) {
    if (layout_nested(t)) return 0;
    int64_t n = numel(t), span = 1;
    for (int i = 0; i < t->nd; i++) span += t->strides[i] * (t->dims[i] - 1);
    if (n > ((int64_t)1 << 24) || span > ((int64_t)1 << 28)) return -1;
    uint8_t *seen = calloc((size_t)(span + 7) / 8, 1);
    if (!seen) return -1;
    int64_t c[MAX_DIMS] = {0};
    int overlap = 0;
    for (int64_t i = 0; i < n && !overlap; i++) {
        int64_t off = 0;
        for (int d = 0; d < t->nd; d++) off += c[d] * t->strides[d];
        if (seen[off >> 3] & (1u << (off & 7))) overlap = 1;
        seen[off >> 3] |= (uint8_t)(1u << (off & 7));
        for (int d = t->nd - 1; d >= 0; d--) {
            if (++c[d] < t->dims[d]) break;
            c[d] = 0;
        }
    }
    free(seen);
    return overlap;
}

/* The nested layout with contiguous neighbours merged: equal for two tensors exactly when they
 * cover the same offsets. */
static int canonical_layout(const tensor_t *t, stride_dim out[MAX_DIMS]) {
    stride_dim l[MAX_DIMS];
    int n = sorted_layout(t, l), m = 0;
    for (int i = 0; i < n; i++) {
        if (m > 0 && l[i].stride == out[m - 1].stride * out[m - 1].extent) out[m - 1].extent *= l[i].extent;
        else out[m++] = l[i];
    }
    return m;
}

/* ------------------------------------------------------------------------------------------------
 * Operations and graphs. */

typedef enum { OP_POINTWISE, OP_REDUCTION, OP_MATMUL, OP_RESHAPE, OP_SDPA_FWD } op_kind;

typedef struct {
    op_kind kind;
    int n_in, n_out;
    tensor_t in[MAX_OP_IN], out[MAX_OP_OUT];
    int in_g[MAX_OP_IN], out_g[MAX_OP_OUT]; /* indices into the graph's tensors */
    /* pointwise: in[0] X, in[1] B, in[2] T; out[0] Y */
    cudnnPointwiseMode_t pw_mode;
    cudnnDataType_t math;
    int64_t axis;
    /* reduction: in[0] X; out[0] Y */
    cudnnReduceTensorOp_t red_op;
    /* matmul: in[0] A, in[1] B, overrides after; out[0] C */
    int ov_m, ov_n, ov_k; /* index in in[], or -1 */
    bool has_padding;
    double padding;
    /* sdpa: in[0] Q, in[1] K, in[2] V, then the optional ones; out[0] O, out[1] stats */
    int i_scale, i_seq_q, i_seq_kv, o_stats;
} op_t;

typedef struct {
    tensor_t t;
    int producer; /* op index (topological order), -1 for graph inputs */
    int consumers;
} graph_tensor;

typedef struct {
    int refs;
    int n_ops, n_tensors;
    op_t *ops; /* in execution order */
    graph_tensor *tensors;
} graph_t;

static void graph_release(graph_t *g) {
    if (!g || --g->refs > 0) return;
    free(g->ops);
    free(g->tensors);
    free(g);
}

static const char *op_kind_name(const op_t *op) {
    switch (op->kind) {
    case OP_POINTWISE: return pw_mode_name(op->pw_mode);
    case OP_REDUCTION: return red_op_name(op->red_op);
    case OP_MATMUL: return "MATMUL";
    case OP_RESHAPE: return "RESHAPE";
    case OP_SDPA_FWD: return "SDPA_FWD";
    }
    return "?";
}

static const char *op_family(const op_t *op) {
    switch (op->kind) {
    case OP_POINTWISE: return "pointwise";
    case OP_REDUCTION: return "reduction";
    case OP_MATMUL: return "matmul";
    case OP_RESHAPE: return "reshape";
    case OP_SDPA_FWD: return "sdpa";
    }
    return "?";
}

/* ------------------------------------------------------------------------------------------------
 * Descriptors and handles. */

typedef struct {
    cudnnBackendAttributeName_t name;
    cudnnBackendAttributeType_t type;
    int64_t count;
    void *data;
} attr_t;

typedef struct emu_desc {
    uint64_t magic;
    cudnnBackendDescriptorType_t type;
    bool finalized;
    int n_attrs;
    attr_t attrs[MAX_ATTRS];
    /* what finalising produced */
    tensor_t tensor;
    struct {
        cudnnPointwiseMode_t mode;
        cudnnDataType_t math;
        bool has_axis;
        int64_t axis;
    } pw;
    struct {
        cudnnReduceTensorOp_t op;
    } red;
    struct {
        bool has_padding;
        double padding;
    } mm;
    op_t op;
    graph_t *graph;       /* OPERATIONGRAPH, ENGINEHEUR, ENGINE, ENGINECFG, EXECUTION_PLAN */
    int64_t engine_index; /* ENGINE, ENGINECFG, EXECUTION_PLAN */
    int64_t n_pack;       /* VARIANT_PACK */
    const int64_t *pack_uids;
    void *const *pack_ptrs;
    void *pack_workspace;
} emu_desc;

struct cudnnContext {
    uint64_t magic;
    cudaStream_t stream;
};

static bool is_desc(const void *p) { return p && ((const emu_desc *)p)->magic == DESC_MAGIC; }

static cudnnStatus_t check_handle(cudnnHandle_t h, const char *what) {
    if (!h || h->magic != HANDLE_MAGIC)
        return fail(CUDNN_STATUS_BAD_PARAM, "%s: %p is not a handle from cudnnCreate (or was destroyed)", what,
                    (void *)h);
    return CUDNN_STATUS_SUCCESS;
}

size_t cudnnGetVersion(void) {
    const char *v = getenv("WAN_CUDNN_EMU_VERSION");
    if (v && *v) return (size_t)strtoull(v, NULL, 10);
    return CUDNN_VERSION;
}

cudnnStatus_t cudnnCreate(cudnnHandle_t *handle) {
    if (!handle) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnCreate: NULL handle pointer");
    struct cudnnContext *h = calloc(1, sizeof *h);
    if (!h) return fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "cudnnCreate: out of memory");
    h->magic = HANDLE_MAGIC;
    *handle = h;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
    TRY(check_handle(handle, "cudnnDestroy"));
    handle->magic = 0;
    free(handle);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t stream) {
    TRY(check_handle(handle, "cudnnSetStream"));
    handle->stream = stream; /* everything runs synchronously on the host */
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetStream(cudnnHandle_t handle, cudaStream_t *stream) {
    TRY(check_handle(handle, "cudnnGetStream"));
    if (!stream) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnGetStream: NULL stream pointer");
    *stream = handle->stream;
    return CUDNN_STATUS_SUCCESS;
}

static bool type_emulated(cudnnBackendDescriptorType_t t) {
    switch (t) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR:
    case CUDNN_BACKEND_POINTWISE_DESCRIPTOR:
    case CUDNN_BACKEND_REDUCTION_DESCRIPTOR:
    case CUDNN_BACKEND_MATMUL_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR:
    case CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR:
    case CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR:
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR:
    case CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR: return true;
    default: return false;
    }
}

static bool is_operation_type(cudnnBackendDescriptorType_t t) {
    return t == CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR || t == CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR ||
           t == CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR || t == CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR ||
           t == CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR;
}

cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t *descriptor) {
    if (!descriptor)
        return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "cudnnBackendCreateDescriptor: NULL descriptor pointer");
    *descriptor = NULL;
    if (!type_emulated(type))
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "cudnnBackendCreateDescriptor: descriptor type %d (%s) is not emulated",
                    (int)type, desc_type_name(type));
    emu_desc *d = calloc(1, sizeof *d);
    if (!d) return fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
    d->magic = DESC_MAGIC;
    d->type = type;
    *descriptor = d;
    return CUDNN_STATUS_SUCCESS;
}

static void desc_clear_content(emu_desc *d) {
    graph_release(d->graph);
    d->graph = NULL;
}

cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t descriptor) {
    if (!is_desc(descriptor))
        return fail(CUDNN_STATUS_BAD_PARAM, "cudnnBackendDestroyDescriptor: %p is not a live descriptor", descriptor);
    emu_desc *d = descriptor;
    for (int i = 0; i < d->n_attrs; i++) free(d->attrs[i].data);
    desc_clear_content(d);
    d->magic = 0;
    free(d);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t count, const void *elements) {
    if (!is_desc(descriptor))
        return fail(CUDNN_STATUS_BAD_PARAM, "cudnnBackendSetAttribute(%s): %p is not a live descriptor",
                    attr_str(name), descriptor);
    emu_desc *d = descriptor;
    const char *dn = desc_type_name(d->type);
    if (d->finalized)
        return fail(CUDNN_STATUS_BAD_PARAM, "set %s on a %s descriptor that is already finalised", attr_str(name), dn);
    const attr_spec *spec = NULL;
    for (size_t i = 0; i < sizeof attr_specs / sizeof attr_specs[0]; i++)
        if (attr_specs[i].desc == d->type && attr_specs[i].name == name) spec = &attr_specs[i];
    if (!spec)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "%s: setting %s is not emulated", dn, attr_str(name));
    if (type != spec->type && type != spec->alt_type)
        return fail(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE, "%s: %s set with attribute type %d (expected %d)", dn,
                    spec->str, (int)type, (int)spec->type);
    if (count < spec->min_count || count > spec->max_count)
        return fail(CUDNN_STATUS_BAD_PARAM, "%s: %s set with %lld elements (allowed: %lld to %lld)", dn, spec->str,
                    (long long)count, (long long)spec->min_count, (long long)spec->max_count);
    if (count > 0 && !elements)
        return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "%s: %s set with a NULL array", dn, spec->str);
    if (type == CUDNN_TYPE_BACKEND_DESCRIPTOR) {
        const cudnnBackendDescriptor_t *ds = elements;
        for (int64_t i = 0; i < count; i++) {
            if (!is_desc(ds[i]))
                return fail(CUDNN_STATUS_BAD_PARAM, "%s: %s element %lld is not a live descriptor", dn, spec->str,
                            (long long)i);
            const emu_desc *v = ds[i];
            if (spec->target != ANY_DESC && v->type != spec->target)
                return fail(CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE, "%s: %s wants a %s descriptor, got a %s", dn,
                            spec->str, desc_type_name(spec->target), desc_type_name(v->type));
            if (!v->finalized)
                return fail(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED, "%s: %s element %lld (a %s) is not finalised", dn,
                            spec->str, (long long)i, desc_type_name(v->type));
        }
    }
    if (type == CUDNN_TYPE_HANDLE) {
        const cudnnHandle_t *hs = elements;
        TRY(check_handle(hs[0], spec->str));
    }
    size_t bytes = (size_t)count * attr_type_size(type);
    void *copy = malloc(bytes ? bytes : 1);
    if (!copy) return fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
    if (bytes) memcpy(copy, elements, bytes);
    for (int i = 0; i < d->n_attrs; i++)
        if (d->attrs[i].name == name) { /* set again: the last value counts */
            free(d->attrs[i].data);
            d->attrs[i] = (attr_t){name, type, count, copy};
            return CUDNN_STATUS_SUCCESS;
        }
    if (d->n_attrs == MAX_ATTRS) {
        free(copy);
        return fail(CUDNN_STATUS_INTERNAL_ERROR, "%s: too many attributes", dn);
    }
    d->attrs[d->n_attrs++] = (attr_t){name, type, count, copy};
    return CUDNN_STATUS_SUCCESS;
}

static const attr_t *find_attr(const emu_desc *d, cudnnBackendAttributeName_t name) {
    for (int i = 0; i < d->n_attrs; i++)
        if (d->attrs[i].name == name) return &d->attrs[i];
    return NULL;
}

static cudnnStatus_t need(const emu_desc *d, cudnnBackendAttributeName_t name, const attr_t **out) {
    *out = find_attr(d, name);
    if (!*out)
        return fail(CUDNN_STATUS_BAD_PARAM, "finalise %s: required attribute %s is not set", desc_type_name(d->type),
                    attr_str(name));
    return CUDNN_STATUS_SUCCESS;
}

static const emu_desc *attr_desc(const attr_t *a, int64_t i) { return ((emu_desc *const *)a->data)[i]; }

static int64_t attr_i64(const attr_t *a) {
    int64_t v;
    memcpy(&v, a->data, sizeof v);
    return v;
}

static double attr_real(const attr_t *a) {
    if (a->type == CUDNN_TYPE_DOUBLE) {
        double v;
        memcpy(&v, a->data, sizeof v);
        return v;
    }
    float v;
    memcpy(&v, a->data, sizeof v);
    return v;
}

/* The tensor behind a descriptor-valued attribute (checked live, TENSOR and finalised at set time;
 * checked again here in case it was destroyed since). */
static cudnnStatus_t attr_tensor(const emu_desc *d, cudnnBackendAttributeName_t name, bool required, tensor_t *out,
                                 bool *present) {
    const attr_t *a = find_attr(d, name);
    if (present) *present = a != NULL;
    if (!a) {
        if (required) return need(d, name, &a);
        return CUDNN_STATUS_SUCCESS;
    }
    const emu_desc *t = attr_desc(a, 0);
    if (!is_desc(t) || t->type != CUDNN_BACKEND_TENSOR_DESCRIPTOR || !t->finalized)
        return fail(CUDNN_STATUS_BAD_PARAM, "finalise %s: %s no longer refers to a finalised tensor",
                    desc_type_name(d->type), attr_str(name));
    *out = t->tensor;
    return CUDNN_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------
 * Finalising: tensors and the small descriptors. */

static cudnnStatus_t finalize_tensor(emu_desc *d) {
    const attr_t *a_type, *a_dims, *a_strides, *a_uid, *a_align;
    TRY(need(d, CUDNN_ATTR_TENSOR_DATA_TYPE, &a_type));
    TRY(need(d, CUDNN_ATTR_TENSOR_DIMENSIONS, &a_dims));
    TRY(need(d, CUDNN_ATTR_TENSOR_STRIDES, &a_strides));
    TRY(need(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, &a_uid));
    TRY(need(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &a_align));
    tensor_t t;
    memset(&t, 0, sizeof t);
    memcpy(&t.dtype, a_type->data, sizeof t.dtype);
    t.uid = attr_i64(a_uid);
    t.alignment = attr_i64(a_align);
    const attr_t *v = find_attr(d, CUDNN_ATTR_TENSOR_IS_VIRTUAL), *bv = find_attr(d, CUDNN_ATTR_TENSOR_IS_BY_VALUE);
    if (v) memcpy(&t.is_virtual, v->data, sizeof(bool));
    if (bv) memcpy(&t.by_value, bv->data, sizeof(bool));
    if (a_dims->count != a_strides->count)
        return fail(CUDNN_STATUS_BAD_PARAM, "tensor uid %lld: %lld dimensions but %lld strides", (long long)t.uid,
                    (long long)a_dims->count, (long long)a_strides->count);
    t.nd = (int)a_dims->count;
    memcpy(t.dims, a_dims->data, (size_t)t.nd * sizeof(int64_t));
    memcpy(t.strides, a_strides->data, (size_t)t.nd * sizeof(int64_t));
    char desc[256];
    tensor_str(&t, desc, sizeof desc);
    if (dtype_size(t.dtype) == 0)
        return fail(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE, "tensor uid %lld: data type %d is not emulated",
                    (long long)t.uid, (int)t.dtype);
    int64_t n = 1;
    for (int i = 0; i < t.nd; i++) {
        if (t.dims[i] < 1) return fail(CUDNN_STATUS_BAD_PARAM, "tensor %s: dimension %d is < 1", desc, i);
        if (t.strides[i] < 0) return fail(CUDNN_STATUS_BAD_PARAM, "tensor %s: stride %d is negative", desc, i);
        if (n > MAX_ELEMENTS / t.dims[i]) return fail(CUDNN_STATUS_BAD_PARAM, "tensor %s: too many elements", desc);
        n *= t.dims[i];
    }
    if (t.alignment <= 0 || t.alignment % (int64_t)dtype_size(t.dtype) != 0)
        return fail(CUDNN_STATUS_BAD_PARAM, "tensor %s: byte alignment %lld is not a positive multiple of the element size",
                    desc, (long long)t.alignment);
    if (t.is_virtual && t.by_value)
        return fail(CUDNN_STATUS_BAD_PARAM, "tensor %s: virtual and by-value at once", desc);
    if (t.by_value && n != 1)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "tensor %s: by-value tensors other than scalars are not emulated", desc);
    if (!t.is_virtual) {
        int ov = layout_overlaps(&t);
        if (ov > 0) return fail(CUDNN_STATUS_BAD_PARAM, "tensor %s: strides make two elements share memory", desc);
        if (ov < 0)
            return fail(CUDNN_STATUS_NOT_SUPPORTED, "tensor %s: interleaved strides too large to check for overlap", desc);
        if (t.dtype == CUDNN_DATA_BOOLEAN)
            return fail(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE,
                        "tensor %s: BOOLEAN tensors in memory are not emulated (only virtual ones)", desc);
    }
    d->tensor = t;
    return CUDNN_STATUS_SUCCESS;
}

static bool pw_unary(cudnnPointwiseMode_t m) {
    switch (m) {
    case CUDNN_POINTWISE_EXP: case CUDNN_POINTWISE_LOG: case CUDNN_POINTWISE_NEG: case CUDNN_POINTWISE_ABS:
    case CUDNN_POINTWISE_SQRT: case CUDNN_POINTWISE_RSQRT: case CUDNN_POINTWISE_RECIPROCAL:
    case CUDNN_POINTWISE_IDENTITY: case CUDNN_POINTWISE_LOGICAL_NOT: case CUDNN_POINTWISE_GEN_INDEX: return true;
    default: return false;
    }
}

static bool pw_binary(cudnnPointwiseMode_t m) {
    switch (m) {
    case CUDNN_POINTWISE_ADD: case CUDNN_POINTWISE_SUB: case CUDNN_POINTWISE_MUL: case CUDNN_POINTWISE_DIV:
    case CUDNN_POINTWISE_MAX: case CUDNN_POINTWISE_MIN: case CUDNN_POINTWISE_CMP_EQ: case CUDNN_POINTWISE_CMP_NEQ:
    case CUDNN_POINTWISE_CMP_GT: case CUDNN_POINTWISE_CMP_GE: case CUDNN_POINTWISE_CMP_LT: case CUDNN_POINTWISE_CMP_LE:
    case CUDNN_POINTWISE_LOGICAL_AND: case CUDNN_POINTWISE_LOGICAL_OR: return true;
    default: return false;
    }
}

static bool pw_compare(cudnnPointwiseMode_t m) { return m >= CUDNN_POINTWISE_CMP_EQ && m <= CUDNN_POINTWISE_CMP_LE; }
static bool pw_logical(cudnnPointwiseMode_t m) {
    return m == CUDNN_POINTWISE_LOGICAL_AND || m == CUDNN_POINTWISE_LOGICAL_OR || m == CUDNN_POINTWISE_LOGICAL_NOT;
}

static cudnnStatus_t finalize_pointwise(emu_desc *d) {
    const attr_t *a_mode, *a_prec;
    TRY(need(d, CUDNN_ATTR_POINTWISE_MODE, &a_mode));
    TRY(need(d, CUDNN_ATTR_POINTWISE_MATH_PREC, &a_prec));
    memcpy(&d->pw.mode, a_mode->data, sizeof d->pw.mode);
    memcpy(&d->pw.math, a_prec->data, sizeof d->pw.math);
    cudnnPointwiseMode_t m = d->pw.mode;
    const char *mn = pw_mode_name(m);
    if (!pw_unary(m) && !pw_binary(m) && m != CUDNN_POINTWISE_BINARY_SELECT)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "pointwise mode %s (%d) is not emulated", mn, (int)m);
    const attr_t *a_axis = find_attr(d, CUDNN_ATTR_POINTWISE_AXIS);
    if (m == CUDNN_POINTWISE_GEN_INDEX && !a_axis)
        return fail(CUDNN_STATUS_BAD_PARAM, "pointwise GEN_INDEX: CUDNN_ATTR_POINTWISE_AXIS is not set");
    if (m != CUDNN_POINTWISE_GEN_INDEX && a_axis)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "pointwise %s: CUDNN_ATTR_POINTWISE_AXIS only means something for GEN_INDEX", mn);
    d->pw.has_axis = a_axis != NULL;
    d->pw.axis = a_axis ? attr_i64(a_axis) : -1;
    /* math precisions: comparisons and logic FLOAT/INT32/BOOLEAN, GEN_INDEX INT32/INT64/FLOAT,
     * BINARY_SELECT FLOAT/INT32, IDENTITY anything, arithmetic FLOAT */
    cudnnDataType_t p = d->pw.math;
    bool ok;
    if (pw_compare(m) || pw_logical(m)) ok = p == CUDNN_DATA_FLOAT || p == CUDNN_DATA_INT32 || p == CUDNN_DATA_BOOLEAN;
    else if (m == CUDNN_POINTWISE_GEN_INDEX) ok = p == CUDNN_DATA_INT32 || p == CUDNN_DATA_INT64 || p == CUDNN_DATA_FLOAT;
    else if (m == CUDNN_POINTWISE_BINARY_SELECT) ok = p == CUDNN_DATA_FLOAT || p == CUDNN_DATA_INT32;
    else if (m == CUDNN_POINTWISE_IDENTITY) ok = dtype_size(p) != 0;
    else ok = p == CUDNN_DATA_FLOAT;
    if (!ok)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "pointwise %s with math precision %s is not emulated", mn, dtype_name(p));
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_reduction(emu_desc *d) {
    const attr_t *a_op, *a_comp;
    TRY(need(d, CUDNN_ATTR_REDUCTION_OPERATOR, &a_op));
    TRY(need(d, CUDNN_ATTR_REDUCTION_COMP_TYPE, &a_comp));
    cudnnDataType_t comp;
    memcpy(&d->red.op, a_op->data, sizeof d->red.op);
    memcpy(&comp, a_comp->data, sizeof comp);
    switch (d->red.op) {
    case CUDNN_REDUCE_TENSOR_ADD: case CUDNN_REDUCE_TENSOR_MUL: case CUDNN_REDUCE_TENSOR_MIN:
    case CUDNN_REDUCE_TENSOR_MAX: case CUDNN_REDUCE_TENSOR_AMAX: break;
    default:
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "reduction %s (%d) is not emulated", red_op_name(d->red.op),
                    (int)d->red.op);
    }
    if (comp != CUDNN_DATA_FLOAT)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "reduction compute type %s is not emulated (FLOAT only)", dtype_name(comp));
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_matmul_desc(emu_desc *d) {
    const attr_t *a_comp;
    TRY(need(d, CUDNN_ATTR_MATMUL_COMP_TYPE, &a_comp));
    cudnnDataType_t comp;
    memcpy(&comp, a_comp->data, sizeof comp);
    if (comp != CUDNN_DATA_FLOAT)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "matmul compute type %s is not emulated (FLOAT only)", dtype_name(comp));
    const attr_t *pad = find_attr(d, CUDNN_ATTR_MATMUL_PADDING_VALUE);
    d->mm.has_padding = pad != NULL;
    d->mm.padding = pad ? attr_real(pad) : 0;
    return CUDNN_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------
 * Finalising operations. */

/* in dims broadcast to out dims: equal rank, each extent equal or 1. */
static cudnnStatus_t check_broadcast(const char *op, const char *role, const tensor_t *in, const tensor_t *out) {
    char a[256], b[256];
    tensor_str(in, a, sizeof a);
    tensor_str(out, b, sizeof b);
    if (in->nd != out->nd)
        return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "%s: %s (%s) and output (%s) have different ranks", op, role,
                    a, b);
    for (int i = 0; i < in->nd; i++)
        if (in->dims[i] != out->dims[i] && in->dims[i] != 1)
            return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "%s: %s (%s) does not broadcast to the output (%s)", op,
                        role, a, b);
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t check_output(const char *op, const tensor_t *t) {
    if (t->by_value)
        return fail(CUDNN_STATUS_BAD_PARAM, "%s: output uid %lld is a by-value tensor", op, (long long)t->uid);
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_op_pointwise(emu_desc *d) {
    op_t *op = &d->op;
    memset(op, 0, sizeof *op);
    op->kind = OP_POINTWISE;
    const attr_t *a_pw;
    TRY(need(d, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, &a_pw));
    const emu_desc *pw = attr_desc(a_pw, 0);
    if (!is_desc(pw) || !pw->finalized)
        return fail(CUDNN_STATUS_BAD_PARAM, "OPERATION_POINTWISE: its POINTWISE descriptor is gone");
    op->pw_mode = pw->pw.mode;
    op->math = pw->pw.math;
    op->axis = pw->pw.axis;
    char name[64];
    snprintf(name, sizeof name, "pointwise %s", pw_mode_name(op->pw_mode));
    bool has_b, has_t;
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, true, &op->in[0], NULL));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, false, &op->in[1], &has_b));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_POINTWISE_TDESC, false, &op->in[2], &has_t));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, true, &op->out[0], NULL));
    op->n_out = 1;
    cudnnPointwiseMode_t m = op->pw_mode;
    int arity = pw_unary(m) ? 1 : pw_binary(m) ? 2 : 3;
    if ((arity >= 2) != has_b)
        return fail(CUDNN_STATUS_BAD_PARAM, "%s: BDESC %s", name, has_b ? "given to a unary mode" : "missing");
    if ((arity == 3) != has_t)
        return fail(CUDNN_STATUS_BAD_PARAM, "%s: TDESC %s", name, has_t ? "given to a mode that takes no mask" : "missing");
    op->n_in = arity;
    const attr_t *a1 = find_attr(d, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA1);
    const attr_t *a2 = find_attr(d, CUDNN_ATTR_OPERATION_POINTWISE_ALPHA2);
    if ((a1 && attr_real(a1) != 1.0) || (a2 && attr_real(a2) != 1.0))
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "%s: alpha1/alpha2 other than 1 are not emulated", name);
    const tensor_t *y = &op->out[0];
    TRY(check_output(name, y));
    static const char *roles[3] = {"X", "B", "T"};
    for (int i = 0; i < arity; i++) TRY(check_broadcast(name, roles[i], &op->in[i], y));
    if (m == CUDNN_POINTWISE_GEN_INDEX) {
        for (int i = 0; i < y->nd; i++)
            if (op->in[0].dims[i] != y->dims[i])
                return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "%s: X and Y dims differ", name);
        if (op->axis < 0 || op->axis >= y->nd)
            return fail(CUDNN_STATUS_BAD_PARAM, "%s: axis %lld outside the %d dims", name, (long long)op->axis, y->nd);
    }
    if (m == CUDNN_POINTWISE_IDENTITY && op->math != CUDNN_DATA_FLOAT && op->math != CUDNN_DATA_INT32 &&
        (op->in[0].dtype != op->math || y->dtype != op->math))
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "%s: math precision %s needs X and Y of that type", name,
                    dtype_name(op->math));
    if (m == CUDNN_POINTWISE_BINARY_SELECT && op->in[2].dtype != CUDNN_DATA_BOOLEAN && !dtype_is_int(op->in[2].dtype))
        return fail(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE, "%s: mask (TDESC) of type %s", name,
                    dtype_name(op->in[2].dtype));
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_op_reduction(emu_desc *d) {
    op_t *op = &d->op;
    memset(op, 0, sizeof *op);
    op->kind = OP_REDUCTION;
    const attr_t *a_red;
    TRY(need(d, CUDNN_ATTR_OPERATION_REDUCTION_DESC, &a_red));
    const emu_desc *red = attr_desc(a_red, 0);
    if (!is_desc(red) || !red->finalized)
        return fail(CUDNN_STATUS_BAD_PARAM, "OPERATION_REDUCTION: its REDUCTION descriptor is gone");
    op->red_op = red->red.op;
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_REDUCTION_XDESC, true, &op->in[0], NULL));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_REDUCTION_YDESC, true, &op->out[0], NULL));
    op->n_in = op->n_out = 1;
    char name[64];
    snprintf(name, sizeof name, "reduction %s", red_op_name(op->red_op));
    const tensor_t *x = &op->in[0], *y = &op->out[0];
    TRY(check_output(name, y));
    TRY(check_broadcast(name, "Y (as the reduced shape of X)", y, x)); /* every y extent equals x's or is 1 */
    if (y->dtype != CUDNN_DATA_FLOAT)
        return fail(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE, "%s: output of type %s (FLOAT only)", name,
                    dtype_name(y->dtype));
    return CUDNN_STATUS_SUCCESS;
}

/* A per-batch length tensor for a matmul override or the SDPA padding mask: INT32, not virtual,
 * of C's rank (or 4 for SDPA) with every extent 1 except leading batch dims matching (or 1). */
static cudnnStatus_t check_lengths(const char *op, const char *role, const tensor_t *t, const tensor_t *like,
                                   int batch_dims) {
    char a[256];
    tensor_str(t, a, sizeof a);
    if (t->dtype != CUDNN_DATA_INT32)
        return fail(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE, "%s: %s (%s) must be INT32", op, role, a);
    if (t->is_virtual || t->by_value)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "%s: %s (%s) must be a tensor in device memory", op, role, a);
    if (t->nd != like->nd) return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "%s: %s (%s) has the wrong rank", op, role, a);
    for (int i = 0; i < t->nd; i++) {
        bool ok = t->dims[i] == 1 || (i < batch_dims && t->dims[i] == like->dims[i]);
        if (!ok)
            return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH,
                        "%s: %s (%s) must be 1 in every dim but the batch dims (where it matches or is 1)", op, role, a);
    }
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_op_matmul(emu_desc *d) {
    op_t *op = &d->op;
    memset(op, 0, sizeof *op);
    op->kind = OP_MATMUL;
    const char *name = "matmul";
    const attr_t *a_mm;
    TRY(need(d, CUDNN_ATTR_OPERATION_MATMUL_DESC, &a_mm));
    const emu_desc *mm = attr_desc(a_mm, 0);
    if (!is_desc(mm) || !mm->finalized)
        return fail(CUDNN_STATUS_BAD_PARAM, "OPERATION_MATMUL: its MATMUL descriptor is gone");
    op->has_padding = mm->mm.has_padding;
    op->padding = mm->mm.padding;
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_MATMUL_ADESC, true, &op->in[0], NULL));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_MATMUL_BDESC, true, &op->in[1], NULL));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_MATMUL_CDESC, true, &op->out[0], NULL));
    op->n_in = 2, op->n_out = 1;
    const tensor_t *a = &op->in[0], *b = &op->in[1], *c = &op->out[0];
    char sa[256], sb[256], sc[256];
    tensor_str(a, sa, sizeof sa), tensor_str(b, sb, sizeof sb), tensor_str(c, sc, sizeof sc);
    TRY(check_output(name, c));
    int nd = c->nd;
    if (nd < 2 || a->nd != nd || b->nd != nd)
        return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "matmul: A (%s), B (%s), C (%s) need one rank >= 2", sa, sb, sc);
    if (a->dims[nd - 2] != c->dims[nd - 2] || b->dims[nd - 1] != c->dims[nd - 1] || a->dims[nd - 1] != b->dims[nd - 2])
        return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "matmul: A (%s) times B (%s) is not C (%s)", sa, sb, sc);
    for (int i = 0; i < nd - 2; i++)
        if ((a->dims[i] != c->dims[i] && a->dims[i] != 1) || (b->dims[i] != c->dims[i] && b->dims[i] != 1))
            return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "matmul: batch dims of A (%s) / B (%s) do not broadcast to C (%s)",
                        sa, sb, sc);
    const struct {
        cudnnBackendAttributeName_t attr;
        int *slot;
        const char *role;
    } ovs[3] = {{CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC, &op->ov_m, "M override"},
                {CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC, &op->ov_n, "N override"},
                {CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC, &op->ov_k, "K override"}};
    for (int i = 0; i < 3; i++) {
        bool present;
        *ovs[i].slot = -1;
        TRY(attr_tensor(d, ovs[i].attr, false, &op->in[op->n_in], &present));
        if (!present) continue;
        TRY(check_lengths(name, ovs[i].role, &op->in[op->n_in], c, nd - 2));
        *ovs[i].slot = op->n_in++;
    }
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_op_reshape(emu_desc *d) {
    op_t *op = &d->op;
    memset(op, 0, sizeof *op);
    op->kind = OP_RESHAPE;
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_RESHAPE_XDESC, true, &op->in[0], NULL));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_RESHAPE_YDESC, true, &op->out[0], NULL));
    op->n_in = op->n_out = 1;
    const tensor_t *x = &op->in[0], *y = &op->out[0];
    char sx[256], sy[256];
    tensor_str(x, sx, sizeof sx), tensor_str(y, sy, sizeof sy);
    TRY(check_output("reshape", y));
    if (numel(x) != numel(y))
        return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "reshape: X (%s) and Y (%s) have different element counts", sx, sy);
    /* Y is X's memory seen through Y's dims and strides: both must cover the same offsets, each
     * once. Layouts whose strides interleave are not emulated. */
    if (!layout_nested(x) || !layout_nested(y))
        return fail(CUDNN_STATUS_NOT_SUPPORTED,
                    "reshape: X (%s) or Y (%s) has overlapping or interleaved strides (not emulated)", sx, sy);
    stride_dim lx[MAX_DIMS], ly[MAX_DIMS];
    int nx = canonical_layout(x, lx), ny = canonical_layout(y, ly);
    bool same = nx == ny;
    for (int i = 0; same && i < nx; i++) same = lx[i].stride == ly[i].stride && lx[i].extent == ly[i].extent;
    if (!same)
        return fail(CUDNN_STATUS_BAD_PARAM, "reshape: X (%s) and Y (%s) do not describe the same memory", sx, sy);
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_op_sdpa_fwd(emu_desc *d) {
    op_t *op = &d->op;
    memset(op, 0, sizeof *op);
    op->kind = OP_SDPA_FWD;
    const char *name = "SDPA_FWD";
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, true, &op->in[0], NULL));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, true, &op->in[1], NULL));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, true, &op->in[2], NULL));
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, true, &op->out[0], NULL));
    op->n_in = 3, op->n_out = 1;
    op->i_scale = op->i_seq_q = op->i_seq_kv = op->o_stats = -1;
    bool present;
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_SDPA_FWD_STATSDESC, false, &op->out[1], &present));
    if (present) op->o_stats = op->n_out++;
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, false, &op->in[op->n_in], &present));
    if (present) op->i_scale = op->n_in++;
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_QDESC, false, &op->in[op->n_in], &present));
    if (present) op->i_seq_q = op->n_in++;
    TRY(attr_tensor(d, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_KVDESC, false, &op->in[op->n_in], &present));
    if (present) op->i_seq_kv = op->n_in++;
    if ((op->i_seq_q >= 0) != (op->i_seq_kv >= 0))
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "%s: only one of SEQ_LEN_Q and SEQ_LEN_KV is set (the padding mask needs both)",
                    name);
    const tensor_t *q = &op->in[0], *k = &op->in[1], *v = &op->in[2], *o = &op->out[0];
    char sq[256], sk[256], sv[256], so[256];
    tensor_str(q, sq, sizeof sq), tensor_str(k, sk, sizeof sk), tensor_str(v, sv, sizeof sv), tensor_str(o, so, sizeof so);
    for (int i = 0; i < 3; i++) {
        const tensor_t *t = &op->in[i];
        if (t->is_virtual || t->by_value)
            return fail(CUDNN_STATUS_NOT_SUPPORTED, "%s: Q, K, V must be tensors in device memory", name);
        if (t->dtype != CUDNN_DATA_BFLOAT16 && t->dtype != CUDNN_DATA_HALF)
            return fail(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE, "%s: Q/K/V of type %s (BFLOAT16 or HALF)", name,
                        dtype_name(t->dtype));
    }
    if (o->is_virtual || o->by_value || o->dtype != q->dtype)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "%s: O (%s) must be in device memory with Q's type", name, so);
    if (k->dtype != q->dtype || v->dtype != q->dtype)
        return fail(CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE, "%s: Q, K, V of different types", name);
    if (q->nd != 4 || k->nd != 4 || v->nd != 4 || o->nd != 4)
        return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "%s: Q, K, V, O must be 4-d [B, H, S, D]", name);
    int64_t B = q->dims[0], H = q->dims[1], Sq = q->dims[2], D = q->dims[3];
    int64_t Hk = k->dims[1], Skv = k->dims[2], Hv = v->dims[1], Dv = v->dims[3];
    if (k->dims[0] != B || v->dims[0] != B || k->dims[3] != D || v->dims[2] != Skv || o->dims[0] != B ||
        o->dims[1] != H || o->dims[2] != Sq || o->dims[3] != Dv || H % Hk || H % Hv)
        return fail(CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH, "%s: Q (%s), K (%s), V (%s), O (%s) do not fit together", name, sq,
                    sk, sv, so);
    if (op->o_stats >= 0) {
        const tensor_t *st = &op->out[op->o_stats];
        if (st->is_virtual || st->dtype != CUDNN_DATA_FLOAT || st->nd != 4 || st->dims[0] != B || st->dims[1] != H ||
            st->dims[2] != Sq || st->dims[3] != 1)
            return fail(CUDNN_STATUS_BAD_PARAM, "%s: stats must be FLOAT [B, H, Sq, 1] in device memory", name);
    }
    if (op->i_scale >= 0) {
        const tensor_t *sc = &op->in[op->i_scale];
        if (numel(sc) != 1 || sc->dtype != CUDNN_DATA_FLOAT || sc->is_virtual)
            return fail(CUDNN_STATUS_NOT_SUPPORTED, "%s: the scale must be one FLOAT value", name);
    }
    if (op->i_seq_q >= 0) {
        TRY(check_lengths(name, "SEQ_LEN_Q", &op->in[op->i_seq_q], q, 1));
        TRY(check_lengths(name, "SEQ_LEN_KV", &op->in[op->i_seq_kv], q, 1));
    }
    return CUDNN_STATUS_SUCCESS;
}

/* ------------------------------------------------------------------------------------------------
 * Finalising the operation graph: tensors by uid, producers, dependency order. */

static cudnnStatus_t finalize_graph(emu_desc *d) {
    const attr_t *a_ops;
    TRY(need(d, CUDNN_ATTR_OPERATIONGRAPH_OPS, &a_ops));
    int n = (int)a_ops->count;
    graph_t *g = calloc(1, sizeof *g);
    op_t *ops = calloc((size_t)n, sizeof *ops);
    int cap = n * (MAX_OP_IN + MAX_OP_OUT);
    graph_tensor *ts = calloc((size_t)cap, sizeof *ts);
    int *order = calloc((size_t)n, sizeof *order), *pending = calloc((size_t)n, sizeof *pending);
    bool *done = calloc((size_t)n, sizeof *done);
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (!g || !ops || !ts || !order || !pending || !done) {
        st = fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        goto out;
    }
    int nt = 0;
    bool has_sdpa = false;
    for (int i = 0; i < n && !st; i++) {
        const emu_desc *od = attr_desc(a_ops, i);
        if (!is_desc(od) || !is_operation_type(od->type) || !od->finalized) {
            st = fail(CUDNN_STATUS_BAD_PARAM, "operation graph: element %d of CUDNN_ATTR_OPERATIONGRAPH_OPS is not a "
                                              "finalised operation descriptor", i);
            break;
        }
        ops[i] = od->op;
        has_sdpa |= ops[i].kind == OP_SDPA_FWD;
        for (int io = 0; io < 2 && !st; io++) {
            int cnt = io ? ops[i].n_out : ops[i].n_in;
            for (int j = 0; j < cnt && !st; j++) {
                const tensor_t *t = io ? &ops[i].out[j] : &ops[i].in[j];
                int k = 0;
                while (k < nt && ts[k].t.uid != t->uid) k++;
                if (k == nt) {
                    ts[nt].t = *t, ts[nt].producer = -1, ts[nt].consumers = 0;
                    nt++;
                } else if (!tensor_equal(&ts[k].t, t)) {
                    char a[256], b[256];
                    tensor_str(&ts[k].t, a, sizeof a), tensor_str(t, b, sizeof b);
                    st = fail(CUDNN_STATUS_BAD_PARAM, "operation graph: two different tensors share uid %lld (%s; %s)",
                              (long long)t->uid, a, b);
                    break;
                }
                if (io) {
                    if (ts[k].producer >= 0) {
                        st = fail(CUDNN_STATUS_BAD_PARAM, "operation graph: tensor uid %lld is written by two "
                                                          "operations (#%d %s %s and #%d %s %s)",
                                  (long long)t->uid, ts[k].producer, op_family(&ops[ts[k].producer]),
                                  op_kind_name(&ops[ts[k].producer]), i, op_family(&ops[i]), op_kind_name(&ops[i]));
                        break;
                    }
                    ts[k].producer = i;
                    ops[i].out_g[j] = k;
                } else {
                    ts[k].consumers++;
                    ops[i].in_g[j] = k;
                }
            }
        }
    }
    if (st) goto out;
    if (has_sdpa && n > 1) {
        st = fail(CUDNN_STATUS_NOT_SUPPORTED_GRAPH_PATTERN,
                  "operation graph: an SDPA_FWD operation must be the graph's only operation (%d ops here)", n);
        goto out;
    }
    for (int k = 0; k < nt; k++) {
        char a[256];
        tensor_str(&ts[k].t, a, sizeof a);
        if (ts[k].t.is_virtual && ts[k].producer < 0) {
            st = fail(CUDNN_STATUS_BAD_PARAM, "operation graph: virtual tensor %s is read but no operation writes it", a);
            goto out;
        }
        if (ts[k].t.is_virtual && ts[k].consumers == 0) {
            st = fail(CUDNN_STATUS_BAD_PARAM, "operation graph: virtual tensor %s is written but never read "
                                              "(an output meant to be in memory?)", a);
            goto out;
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j < ops[i].n_in; j++)
                if (ops[i].in_g[j] == k && ts[k].producer == i) {
                    st = fail(CUDNN_STATUS_BAD_PARAM, "operation graph: operation #%d reads its own output %s", i, a);
                    goto out;
                }
    }
    /* dependency order (Kahn; among ready ops, the order they were given in) */
    for (int i = 0; i < n; i++) {
        pending[i] = 0;
        for (int j = 0; j < ops[i].n_in; j++) pending[i] += ts[ops[i].in_g[j]].producer >= 0;
    }
    for (int placed = 0; placed < n; placed++) {
        int pick = -1;
        for (int i = 0; i < n && pick < 0; i++)
            if (!done[i] && pending[i] == 0) pick = i;
        if (pick < 0) {
            st = fail(CUDNN_STATUS_BAD_PARAM, "operation graph: the operations form a cycle");
            goto out;
        }
        done[pick] = true;
        order[placed] = pick;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < ops[i].n_in; j++)
                for (int o = 0; o < ops[pick].n_out; o++)
                    if (ops[i].in_g[j] == ops[pick].out_g[o]) pending[i]--;
    }
    g->refs = 1;
    g->n_ops = n;
    g->n_tensors = nt;
    g->ops = calloc((size_t)n, sizeof *g->ops);
    g->tensors = ts;
    ts = NULL;
    if (!g->ops) {
        st = fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        goto out;
    }
    int *pos = pending; /* reuse: original index -> position */
    for (int p = 0; p < n; p++) g->ops[p] = ops[order[p]], pos[order[p]] = p;
    for (int k = 0; k < nt; k++)
        if (g->tensors[k].producer >= 0) g->tensors[k].producer = pos[g->tensors[k].producer];
    d->graph = g;
    g = NULL;
out:
    if (g) {
        free(g->ops);
        free(g->tensors);
        free(g);
    }
    free(ops), free(ts), free(order), free(pending), free(done);
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * Engines: one, global index 0, no knobs, EMU_WORKSPACE_BYTES of workspace. */

static cudnnStatus_t graph_of(const emu_desc *d, cudnnBackendAttributeName_t name, graph_t **out) {
    const attr_t *a;
    TRY(need(d, name, &a));
    const emu_desc *gd = attr_desc(a, 0);
    if (!is_desc(gd) || gd->type != CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR || !gd->finalized || !gd->graph)
        return fail(CUDNN_STATUS_BAD_PARAM, "finalise %s: %s is not a finalised operation graph", desc_type_name(d->type),
                    attr_str(name));
    *out = gd->graph;
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_engine(emu_desc *d) {
    graph_t *g;
    TRY(graph_of(d, CUDNN_ATTR_ENGINE_OPERATION_GRAPH, &g));
    const attr_t *a_idx;
    TRY(need(d, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, &a_idx));
    int64_t idx = attr_i64(a_idx);
    if (idx != 0)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "engine %lld does not exist (the emulator has one engine, index 0)",
                    (long long)idx);
    d->graph = g;
    g->refs++;
    d->engine_index = idx;
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_engine_cfg(emu_desc *d) {
    const attr_t *a_eng;
    TRY(need(d, CUDNN_ATTR_ENGINECFG_ENGINE, &a_eng));
    const emu_desc *e = attr_desc(a_eng, 0);
    if (!is_desc(e) || !e->finalized || !e->graph)
        return fail(CUDNN_STATUS_BAD_PARAM, "finalise ENGINECFG: its engine is gone");
    const attr_t *knobs = find_attr(d, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES);
    if (knobs && knobs->count > 0)
        return fail(CUDNN_STATUS_NOT_SUPPORTED, "finalise ENGINECFG: the emulated engine has no knobs (%lld chosen)",
                    (long long)knobs->count);
    d->graph = e->graph;
    d->graph->refs++;
    d->engine_index = e->engine_index;
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_plan(emu_desc *d) {
    const attr_t *a_cfg;
    TRY(need(d, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &a_cfg));
    const emu_desc *c = attr_desc(a_cfg, 0);
    if (!is_desc(c) || !c->finalized || !c->graph)
        return fail(CUDNN_STATUS_BAD_PARAM, "finalise EXECUTION_PLAN: its engine config is gone");
    d->graph = c->graph;
    d->graph->refs++;
    d->engine_index = c->engine_index;
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_heur(emu_desc *d) {
    graph_t *g;
    TRY(graph_of(d, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &g));
    const attr_t *a_mode;
    TRY(need(d, CUDNN_ATTR_ENGINEHEUR_MODE, &a_mode));
    cudnnBackendHeurMode_t mode;
    memcpy(&mode, a_mode->data, sizeof mode);
    if (mode != CUDNN_HEUR_MODE_INSTANT && mode != CUDNN_HEUR_MODE_B && mode != CUDNN_HEUR_MODE_FALLBACK &&
        mode != CUDNN_HEUR_MODE_A)
        return fail(CUDNN_STATUS_BAD_PARAM, "finalise ENGINEHEUR: unknown heuristics mode %d", (int)mode);
    d->graph = g;
    g->refs++;
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t finalize_variant_pack(emu_desc *d) {
    const attr_t *a_uids, *a_ptrs;
    TRY(need(d, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, &a_uids));
    TRY(need(d, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, &a_ptrs));
    if (a_uids->count != a_ptrs->count)
        return fail(CUDNN_STATUS_BAD_PARAM, "variant pack: %lld unique ids but %lld data pointers",
                    (long long)a_uids->count, (long long)a_ptrs->count);
    const int64_t *uids = a_uids->data;
    for (int64_t i = 0; i < a_uids->count; i++)
        for (int64_t j = 0; j < i; j++)
            if (uids[i] == uids[j])
                return fail(CUDNN_STATUS_BAD_PARAM_DUPLICATED_ENTRIES, "variant pack: uid %lld appears twice",
                            (long long)uids[i]);
    d->n_pack = a_uids->count;
    d->pack_uids = uids;
    d->pack_ptrs = a_ptrs->data;
    const attr_t *ws = find_attr(d, CUDNN_ATTR_VARIANT_PACK_WORKSPACE);
    d->pack_workspace = ws ? *(void **)ws->data : NULL;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t descriptor) {
    if (!is_desc(descriptor))
        return fail(CUDNN_STATUS_BAD_PARAM, "cudnnBackendFinalize: %p is not a live descriptor", descriptor);
    emu_desc *d = descriptor;
    if (d->finalized) return fail(CUDNN_STATUS_BAD_PARAM, "%s descriptor finalised twice", desc_type_name(d->type));
    cudnnStatus_t st;
    switch (d->type) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: st = finalize_tensor(d); break;
    case CUDNN_BACKEND_POINTWISE_DESCRIPTOR: st = finalize_pointwise(d); break;
    case CUDNN_BACKEND_REDUCTION_DESCRIPTOR: st = finalize_reduction(d); break;
    case CUDNN_BACKEND_MATMUL_DESCRIPTOR: st = finalize_matmul_desc(d); break;
    case CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR: st = finalize_op_pointwise(d); break;
    case CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR: st = finalize_op_reduction(d); break;
    case CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR: st = finalize_op_matmul(d); break;
    case CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR: st = finalize_op_reshape(d); break;
    case CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR: st = finalize_op_sdpa_fwd(d); break;
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: st = finalize_graph(d); break;
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: st = finalize_heur(d); break;
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR: st = finalize_engine(d); break;
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: st = finalize_engine_cfg(d); break;
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: st = finalize_plan(d); break;
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: st = finalize_variant_pack(d); break;
    case CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR: {
        const attr_t *a;
        st = need(d, CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE, &a);
        if (!st) st = need(d, CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE, &a);
        break;
    }
    case CUDNN_BACKEND_KNOB_INFO_DESCRIPTOR:
        st = fail(CUDNN_STATUS_BAD_PARAM, "KNOB_INFO descriptors are filled by cudnnBackendGetAttribute, not finalised");
        break;
    case CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR:
        st = fail(CUDNN_STATUS_NOT_SUPPORTED, "DEVICEPROP: the CPU emulator has no device properties to describe");
        break;
    default: st = fail(CUDNN_STATUS_NOT_SUPPORTED, "finalise: descriptor type %d is not emulated", (int)d->type);
    }
    if (st == CUDNN_STATUS_SUCCESS) d->finalized = true;
    else desc_clear_content(d);
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * Getting attributes. */

static cudnnStatus_t get_i64(int64_t value, cudnnBackendAttributeType_t type, int64_t requested, int64_t *count,
                             void *elements, const char *what) {
    if (type != CUDNN_TYPE_INT64)
        return fail(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE, "get %s: it is an INT64", what);
    if (count) *count = 1;
    if (requested >= 1) {
        if (!elements) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "get %s: NULL array", what);
        memcpy(elements, &value, sizeof value);
    }
    return CUDNN_STATUS_SUCCESS;
}

/* Fill caller-created descriptors (of type want) with a finalised copy of an engine or config. */
static cudnnStatus_t fill_engine_like(cudnnBackendDescriptorType_t want, graph_t *g, int64_t index,
                                      cudnnBackendAttributeType_t type, int64_t requested, int64_t *count,
                                      void *elements, const char *what) {
    if (type != CUDNN_TYPE_BACKEND_DESCRIPTOR)
        return fail(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE, "get %s: it is a BACKEND_DESCRIPTOR", what);
    if (requested < 0) return fail(CUDNN_STATUS_BAD_PARAM, "get %s: negative count", what);
    int64_t n = requested < 1 ? requested : 1;
    for (int64_t i = 0; i < n; i++) {
        if (!elements) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "get %s: NULL array", what);
        emu_desc *e = ((cudnnBackendDescriptor_t *)elements)[i];
        if (!is_desc(e) || e->type != want)
            return fail(CUDNN_STATUS_BAD_PARAM_DESCRIPTOR_TYPE, "get %s: element %lld must be a created %s descriptor",
                        what, (long long)i, desc_type_name(want));
        if (e->finalized) return fail(CUDNN_STATUS_BAD_PARAM, "get %s: element %lld is already finalised", what, (long long)i);
        e->graph = g;
        g->refs++;
        e->engine_index = index;
        e->finalized = true;
    }
    if (count) *count = requested == 0 ? 1 : n;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendGetAttribute(cudnnBackendDescriptor_t const descriptor, cudnnBackendAttributeName_t name,
                                       cudnnBackendAttributeType_t type, int64_t requested, int64_t *count,
                                       void *elements) {
    if (!is_desc(descriptor))
        return fail(CUDNN_STATUS_BAD_PARAM, "cudnnBackendGetAttribute(%s): %p is not a live descriptor", attr_str(name),
                    descriptor);
    emu_desc *d = descriptor;
    const char *what = attr_str(name);
    if (!d->finalized)
        return fail(CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED, "get %s from a %s descriptor that is not finalised", what,
                    desc_type_name(d->type));
    switch (d->type) {
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR:
        if (name == CUDNN_ATTR_ENGINEHEUR_RESULTS)
            return fill_engine_like(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, d->graph, 0, type, requested, count, elements,
                                    what);
        break;
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR:
        if (name == CUDNN_ATTR_ENGINECFG_ENGINE)
            return fill_engine_like(CUDNN_BACKEND_ENGINE_DESCRIPTOR, d->graph, d->engine_index, type, requested, count,
                                    elements, what);
        if (name == CUDNN_ATTR_ENGINECFG_WORKSPACE_SIZE)
            return get_i64(EMU_WORKSPACE_BYTES, type, requested, count, elements, what);
        break;
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR:
        if (name == CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE)
            return get_i64(EMU_WORKSPACE_BYTES, type, requested, count, elements, what);
        break;
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR:
        if (name == CUDNN_ATTR_ENGINE_GLOBAL_INDEX) return get_i64(d->engine_index, type, requested, count, elements, what);
        if (name == CUDNN_ATTR_ENGINE_KNOB_INFO || name == CUDNN_ATTR_ENGINE_NUMERICAL_NOTE ||
            name == CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE) {
            if (count) *count = 0; /* no knobs, no notes */
            return CUDNN_STATUS_SUCCESS;
        }
        break;
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR:
        if (name == CUDNN_ATTR_OPERATIONGRAPH_ENGINE_GLOBAL_COUNT) return get_i64(1, type, requested, count, elements, what);
        break;
    default: break;
    }
    /* otherwise: an attribute that was set, returned as set (descriptor-valued ones are not) */
    const attr_t *a = find_attr(d, name);
    if (a && a->type != CUDNN_TYPE_BACKEND_DESCRIPTOR) {
        if (type != a->type)
            return fail(CUDNN_STATUS_BAD_PARAM_ATTRIBUTE_TYPE, "get %s: it was set with type %d, asked as %d", what,
                        (int)a->type, (int)type);
        if (requested < 0) return fail(CUDNN_STATUS_BAD_PARAM, "get %s: negative count", what);
        int64_t n = requested < a->count ? requested : a->count;
        if (n > 0 && !elements) return fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "get %s: NULL array", what);
        if (n > 0) memcpy(elements, a->data, (size_t)n * attr_type_size(a->type));
        if (count) *count = requested == 0 ? a->count : n;
        return CUDNN_STATUS_SUCCESS;
    }
    return fail(CUDNN_STATUS_NOT_SUPPORTED, "getting %s from a %s descriptor is not emulated", what,
                desc_type_name(d->type));
}

/* ------------------------------------------------------------------------------------------------
 * Execution. Every tensor is handled as a dense row-major array of doubles: virtual tensors live
 * that way; tensors in memory are read into one and written from one. */

typedef struct {
    const tensor_t *t;
    char *ptr;   /* memory (non-virtual) */
    double *buf; /* virtual: values in logical order, rounded to the tensor's type */
} binding;

typedef struct {
    const graph_t *g;
    binding *b; /* per graph tensor */
    int op_index;
} exec_ctx;

static cudnnStatus_t op_fail(const exec_ctx *x, cudnnStatus_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static cudnnStatus_t op_fail(const exec_ctx *x, cudnnStatus_t st, const char *fmt, ...) {
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const op_t *op = &x->g->ops[x->op_index];
    return fail(st, "execute: operation #%d (%s %s, output uid %lld): %s", x->op_index, op_family(op),
                op_kind_name(op), (long long)op->out[0].uid, what);
}

static void *xmalloc_doubles(int64_t n) { return malloc((size_t)(n > 0 ? n : 1) * sizeof(double)); }

/* The tensor's values in logical order. */
static void read_dense(const binding *b, double *dst) {
    const tensor_t *t = b->t;
    int64_t n = numel(t);
    if (t->is_virtual) {
        memcpy(dst, b->buf, (size_t)n * sizeof(double));
        return;
    }
    size_t es = dtype_size(t->dtype);
    int64_t c[MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        int64_t off = 0;
        for (int d = 0; d < t->nd; d++) off += c[d] * t->strides[d];
        dst[i] = load_elem(b->ptr + off * (int64_t)es, t->dtype);
        for (int d = t->nd - 1; d >= 0; d--) {
            if (++c[d] < t->dims[d]) break;
            c[d] = 0;
        }
    }
}

/* Store values given in logical order, rounded to the tensor's type. */
static cudnnStatus_t write_dense(const exec_ctx *x, const binding *b, const double *src) {
    const tensor_t *t = b->t;
    int64_t n = numel(t);
    size_t es = dtype_size(t->dtype);
    int64_t c[MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        double v;
        if (!round_to(t->dtype, src[i], &v))
            return op_fail(x, CUDNN_STATUS_NOT_SUPPORTED,
                           "value %.17g cannot be stored exactly in %s tensor uid %lld (not emulated)", src[i],
                           dtype_name(t->dtype), (long long)t->uid);
        if (t->is_virtual) {
            b->buf[i] = v;
        } else {
            int64_t off = 0;
            for (int d = 0; d < t->nd; d++) off += c[d] * t->strides[d];
            store_elem(b->ptr + off * (int64_t)es, t->dtype, v);
            for (int d = t->nd - 1; d >= 0; d--) {
                if (++c[d] < t->dims[d]) break;
                c[d] = 0;
            }
        }
    }
    return CUDNN_STATUS_SUCCESS;
}

/* Strides into a dense array of `in` for walking the dims of `out` (0 where in broadcasts). */
static void broadcast_strides(const tensor_t *in, const tensor_t *out, int64_t s[MAX_DIMS]) {
    int64_t dense[MAX_DIMS];
    dense_strides(in, dense);
    for (int d = 0; d < out->nd; d++) s[d] = in->dims[d] == 1 && out->dims[d] != 1 ? 0 : dense[d];
}

static double to_math(cudnnDataType_t math, double v) {
    switch (math) {
    case CUDNN_DATA_FLOAT: return (double)(float)v;
    case CUDNN_DATA_HALF: return (double)(float)(_Float16)(float)v;
    case CUDNN_DATA_BFLOAT16: return (double)bf16_to_f32(f32_to_bf16((float)v));
    default: return v;
    }
}

static cudnnStatus_t run_pointwise(exec_ctx *x, const op_t *op) {
    const tensor_t *y = &op->out[0];
    int64_t n = numel(y);
    double *in[3] = {NULL, NULL, NULL}, *out = xmalloc_doubles(n);
    int64_t bs[3][MAX_DIMS] = {{0}}; /* zero for operands the mode does not have */
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    for (int i = 0; i < op->n_in; i++) {
        in[i] = xmalloc_doubles(numel(&op->in[i]));
        if (in[i]) read_dense(&x->b[op->in_g[i]], in[i]);
        broadcast_strides(&op->in[i], y, bs[i]);
    }
    if (!out || (op->n_in > 0 && !in[0]) || (op->n_in > 1 && !in[1]) || (op->n_in > 2 && !in[2])) {
        st = op_fail(x, CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        goto out;
    }
    bool integral_math = op->math == CUDNN_DATA_INT32 || op->math == CUDNN_DATA_INT64;
    int64_t c[MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        double a = 0, b = 0, t = 0, r;
        int64_t o0 = 0, o1 = 0, o2 = 0;
        for (int d = 0; d < y->nd; d++) o0 += c[d] * bs[0][d], o1 += c[d] * bs[1][d], o2 += c[d] * bs[2][d];
        if (op->n_in > 0) a = to_math(op->math, in[0][o0]);
        if (op->n_in > 1) b = to_math(op->math, in[1][o1]);
        if (op->n_in > 2) t = in[2][o2];
        if (integral_math && op->pw_mode != CUDNN_POINTWISE_GEN_INDEX &&
            ((op->n_in > 0 && a != floor(a)) || (op->n_in > 1 && b != floor(b)))) {
            st = op_fail(x, CUDNN_STATUS_NOT_SUPPORTED, "non-integral input with %s math precision", dtype_name(op->math));
            goto out;
        }
        switch (op->pw_mode) {
        case CUDNN_POINTWISE_ADD: r = a + b; break;
        case CUDNN_POINTWISE_SUB: r = a - b; break;
        case CUDNN_POINTWISE_MUL: r = a * b; break;
        case CUDNN_POINTWISE_DIV: r = a / b; break;
        case CUDNN_POINTWISE_MAX: r = isnan(a) || isnan(b) ? NAN : (a > b ? a : b); break;
        case CUDNN_POINTWISE_MIN: r = isnan(a) || isnan(b) ? NAN : (a < b ? a : b); break;
        case CUDNN_POINTWISE_EXP: r = exp(a); break;
        case CUDNN_POINTWISE_LOG: r = log(a); break;
        case CUDNN_POINTWISE_NEG: r = -a; break;
        case CUDNN_POINTWISE_ABS: r = fabs(a); break;
        case CUDNN_POINTWISE_SQRT: r = sqrt(a); break;
        case CUDNN_POINTWISE_RSQRT: r = 1 / sqrt(a); break;
        case CUDNN_POINTWISE_RECIPROCAL: r = 1 / a; break;
        case CUDNN_POINTWISE_IDENTITY: r = a; break;
        case CUDNN_POINTWISE_CMP_EQ: r = a == b; break;
        case CUDNN_POINTWISE_CMP_NEQ: r = a != b; break;
        case CUDNN_POINTWISE_CMP_GT: r = a > b; break;
        case CUDNN_POINTWISE_CMP_GE: r = a >= b; break;
        case CUDNN_POINTWISE_CMP_LT: r = a < b; break;
        case CUDNN_POINTWISE_CMP_LE: r = a <= b; break;
        case CUDNN_POINTWISE_LOGICAL_AND: r = a != 0 && b != 0; break;
        case CUDNN_POINTWISE_LOGICAL_OR: r = a != 0 || b != 0; break;
        case CUDNN_POINTWISE_LOGICAL_NOT: r = a == 0; break;
        case CUDNN_POINTWISE_GEN_INDEX: r = (double)c[op->axis]; break;
        case CUDNN_POINTWISE_BINARY_SELECT: r = t != 0 ? a : b; break; /* mask true: X, else B */
        default: st = op_fail(x, CUDNN_STATUS_INTERNAL_ERROR, "mode not emulated"); goto out;
        }
        out[i] = pw_compare(op->pw_mode) || pw_logical(op->pw_mode) ? r : to_math(op->math, r);
        for (int d = y->nd - 1; d >= 0; d--) {
            if (++c[d] < y->dims[d]) break;
            c[d] = 0;
        }
    }
    st = write_dense(x, &x->b[op->out_g[0]], out);
out:
    for (int i = 0; i < 3; i++) free(in[i]);
    free(out);
    return st;
}

static cudnnStatus_t run_reduction(exec_ctx *x, const op_t *op) {
    const tensor_t *xt = &op->in[0], *y = &op->out[0];
    int64_t n = numel(xt), ny = numel(y);
    double *in = xmalloc_doubles(n), *out = xmalloc_doubles(ny);
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (!in || !out) {
        st = op_fail(x, CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        goto out;
    }
    read_dense(&x->b[op->in_g[0]], in);
    double init = op->red_op == CUDNN_REDUCE_TENSOR_MUL   ? 1
                  : op->red_op == CUDNN_REDUCE_TENSOR_MIN ? INFINITY
                  : op->red_op == CUDNN_REDUCE_TENSOR_MAX ? -INFINITY
                                                          : 0;
    for (int64_t i = 0; i < ny; i++) out[i] = init;
    int64_t ys[MAX_DIMS];
    broadcast_strides(y, xt, ys); /* walking x's dims, 0 along reduced ones */
    int64_t c[MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        int64_t o = 0;
        for (int d = 0; d < xt->nd; d++) o += c[d] * ys[d];
        double v = in[i], *acc = &out[o];
        switch (op->red_op) {
        case CUDNN_REDUCE_TENSOR_ADD: *acc += v; break;
        case CUDNN_REDUCE_TENSOR_MUL: *acc *= v; break;
        case CUDNN_REDUCE_TENSOR_MIN: *acc = isnan(v) || isnan(*acc) ? NAN : (v < *acc ? v : *acc); break;
        case CUDNN_REDUCE_TENSOR_MAX: *acc = isnan(v) || isnan(*acc) ? NAN : (v > *acc ? v : *acc); break;
        case CUDNN_REDUCE_TENSOR_AMAX: *acc = isnan(v) || isnan(*acc) ? NAN : (fabs(v) > *acc ? fabs(v) : *acc); break;
        default: st = op_fail(x, CUDNN_STATUS_INTERNAL_ERROR, "reduction not emulated"); goto out;
        }
        for (int d = xt->nd - 1; d >= 0; d--) {
            if (++c[d] < xt->dims[d]) break;
            c[d] = 0;
        }
    }
    for (int64_t i = 0; i < ny; i++) out[i] = (double)(float)out[i]; /* FLOAT compute type */
    st = write_dense(x, &x->b[op->out_g[0]], out);
out:
    free(in), free(out);
    return st;
}

/* A per-batch length (override or sequence length) for batch coordinate c of a tensor `like`. */
static int64_t length_at(const tensor_t *len, const double *vals, const int64_t *c, int batch_dims) {
    int64_t dense[MAX_DIMS], o = 0;
    dense_strides(len, dense);
    for (int d = 0; d < batch_dims; d++)
        if (len->dims[d] != 1) o += c[d] * dense[d];
    return (int64_t)vals[o];
}

static cudnnStatus_t read_lengths(exec_ctx *x, const op_t *op, int slot, int64_t limit, const char *role,
                                  double **out) {
    *out = NULL;
    if (slot < 0) return CUDNN_STATUS_SUCCESS;
    const tensor_t *t = &op->in[slot];
    int64_t n = numel(t);
    double *v = xmalloc_doubles(n);
    if (!v) return op_fail(x, CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
    read_dense(&x->b[op->in_g[slot]], v);
    for (int64_t i = 0; i < n; i++)
        if (v[i] < 0 || v[i] > (double)limit) {
            double bad = v[i];
            free(v);
            return op_fail(x, CUDNN_STATUS_BAD_PARAM, "%s element %lld is %.0f, outside [0, %lld]", role, (long long)i,
                           bad, (long long)limit);
        }
    *out = v;
    return CUDNN_STATUS_SUCCESS;
}

static cudnnStatus_t run_matmul(exec_ctx *x, const op_t *op) {
    const tensor_t *a = &op->in[0], *b = &op->in[1], *c = &op->out[0];
    int nd = c->nd, nb = nd - 2;
    int64_t M = c->dims[nd - 2], N = c->dims[nd - 1], K = a->dims[nd - 1];
    double *A = xmalloc_doubles(numel(a)), *Bm = xmalloc_doubles(numel(b)), *C = xmalloc_doubles(numel(c));
    double *ovm = NULL, *ovn = NULL, *ovk = NULL;
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (!A || !Bm || !C) {
        st = op_fail(x, CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        goto out;
    }
    read_dense(&x->b[op->in_g[0]], A);
    read_dense(&x->b[op->in_g[1]], Bm);
    if ((st = read_lengths(x, op, op->ov_m, M, "M override", &ovm)) || (st = read_lengths(x, op, op->ov_n, N, "N override", &ovn)) ||
        (st = read_lengths(x, op, op->ov_k, K, "K override", &ovk)))
        goto out;
    int64_t as[MAX_DIMS], bstr[MAX_DIMS], cs[MAX_DIMS];
    broadcast_strides(a, c, as);
    broadcast_strides(b, c, bstr);
    dense_strides(c, cs);
    int64_t batches = 1;
    for (int d = 0; d < nb; d++) batches *= c->dims[d];
    double outside = op->has_padding ? op->padding : NAN; /* left out by the overrides */
    for (int64_t bi = 0; bi < batches; bi++) {
        int64_t coord[MAX_DIMS] = {0}, rem = bi, ao = 0, bo = 0, co = 0;
        for (int d = nb - 1; d >= 0; d--) coord[d] = rem % c->dims[d], rem /= c->dims[d];
        for (int d = 0; d < nb; d++) ao += coord[d] * as[d], bo += coord[d] * bstr[d], co += coord[d] * cs[d];
        int64_t m_eff = ovm ? length_at(&op->in[op->ov_m], ovm, coord, nb) : M;
        int64_t n_eff = ovn ? length_at(&op->in[op->ov_n], ovn, coord, nb) : N;
        int64_t k_eff = ovk ? length_at(&op->in[op->ov_k], ovk, coord, nb) : K;
        const double *Ab = A + ao, *Bb = Bm + bo;
        double *Cb = C + co;
        /* per batch, A is a dense [M, K] and B a dense [K, N] (their last two dims never broadcast) */
        const int64_t a_rs = K, b_rs = N;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (M * N * K > 65536)
#endif
        for (int64_t m = 0; m < M; m++) {
            double *row = Cb + m * N;
            if (m >= m_eff) {
                for (int64_t n2 = 0; n2 < N; n2++) row[n2] = outside;
                continue;
            }
            for (int64_t n2 = 0; n2 < N; n2++) row[n2] = 0;
            for (int64_t k = 0; k < k_eff; k++) {
                double av = Ab[m * a_rs + k];
                const double *brow = Bb + k * b_rs;
                for (int64_t n2 = 0; n2 < n_eff; n2++) row[n2] += av * brow[n2];
            }
            for (int64_t n2 = 0; n2 < N; n2++) row[n2] = n2 < n_eff ? (double)(float)row[n2] : outside;
        }
    }
    st = write_dense(x, &x->b[op->out_g[0]], C);
out:
    free(A), free(Bm), free(C), free(ovm), free(ovn), free(ovk);
    return st;
}

static cudnnStatus_t run_reshape(exec_ctx *x, const op_t *op) {
    const tensor_t *xt = &op->in[0], *y = &op->out[0];
    int64_t n = numel(y);
    double *in = xmalloc_doubles(n), *out = xmalloc_doubles(n);
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (!in || !out) {
        st = op_fail(x, CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        goto out;
    }
    read_dense(&x->b[op->in_g[0]], in);
    /* X's dims by decreasing stride, to split an offset back into X's coordinates */
    int order[MAX_DIMS], no = 0;
    for (int d = 0; d < xt->nd; d++)
        if (xt->dims[d] > 1) order[no++] = d;
    for (int i = 1; i < no; i++)
        for (int j = i; j > 0 && xt->strides[order[j]] > xt->strides[order[j - 1]]; j--) {
            int tmp = order[j];
            order[j] = order[j - 1], order[j - 1] = tmp;
        }
    int64_t xdense[MAX_DIMS];
    dense_strides(xt, xdense);
    int64_t c[MAX_DIMS] = {0};
    for (int64_t i = 0; i < n; i++) {
        int64_t off = 0, xi = 0;
        for (int d = 0; d < y->nd; d++) off += c[d] * y->strides[d];
        for (int j = 0; j < no; j++) {
            int d = order[j];
            int64_t cd = off / xt->strides[d];
            if (cd >= xt->dims[d]) break;
            off -= cd * xt->strides[d];
            xi += cd * xdense[d];
        }
        if (off != 0) {
            st = op_fail(x, CUDNN_STATUS_INTERNAL_ERROR, "offset of Y element %lld is not an element of X", (long long)i);
            goto out;
        }
        out[i] = in[xi];
        for (int d = y->nd - 1; d >= 0; d--) {
            if (++c[d] < y->dims[d]) break;
            c[d] = 0;
        }
    }
    st = write_dense(x, &x->b[op->out_g[0]], out);
out:
    free(in), free(out);
    return st;
}

/* O = softmax(scale Q K^T, keys >= seq_len_kv masked) V; stats = max + ln(sum exp(s - max)).
 * Like the fused engines, the unnormalised probabilities exp(s - max) are rounded to the input
 * type before they multiply V, and the row sum is taken in fp32 from the unrounded values. */
static cudnnStatus_t run_sdpa_fwd(exec_ctx *x, const op_t *op) {
    const tensor_t *q = &op->in[0], *k = &op->in[1], *v = &op->in[2], *o = &op->out[0];
    int64_t B = q->dims[0], H = q->dims[1], Sq = q->dims[2], D = q->dims[3];
    int64_t Hk = k->dims[1], Skv = k->dims[2], Hv = v->dims[1], Dv = v->dims[3];
    double *Q = xmalloc_doubles(numel(q)), *Kd = xmalloc_doubles(numel(k)), *V = xmalloc_doubles(numel(v));
    double *O = xmalloc_doubles(numel(o)), *S = xmalloc_doubles(Skv), *L = xmalloc_doubles(B * H * Sq);
    double *seq_q = NULL, *seq_kv = NULL, scale = 1;
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (!Q || !Kd || !V || !O || !S || !L) {
        st = op_fail(x, CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        goto out;
    }
    read_dense(&x->b[op->in_g[0]], Q);
    read_dense(&x->b[op->in_g[1]], Kd);
    read_dense(&x->b[op->in_g[2]], V);
    if (op->i_scale >= 0) read_dense(&x->b[op->in_g[op->i_scale]], &scale);
    if ((st = read_lengths(x, op, op->i_seq_q, Sq, "SEQ_LEN_Q", &seq_q)) ||
        (st = read_lengths(x, op, op->i_seq_kv, Skv, "SEQ_LEN_KV", &seq_kv)))
        goto out;
    for (int64_t b = 0; b < B; b++) {
        int64_t coord[1] = {b};
        int64_t lq = seq_q ? length_at(&op->in[op->i_seq_q], seq_q, coord, 1) : Sq;
        int64_t lkv = seq_kv ? length_at(&op->in[op->i_seq_kv], seq_kv, coord, 1) : Skv;
        if (lq != Sq) {
            st = op_fail(x, CUDNN_STATUS_NOT_SUPPORTED,
                         "SEQ_LEN_Q[%lld] = %lld < Sq = %lld: padded query rows are not emulated", (long long)b,
                         (long long)lq, (long long)Sq);
            goto out;
        }
        if (lkv < 1) {
            st = op_fail(x, CUDNN_STATUS_NOT_SUPPORTED, "SEQ_LEN_KV[%lld] = 0: fully masked rows are not emulated",
                         (long long)b);
            goto out;
        }
        for (int64_t h = 0; h < H; h++) {
            int64_t hk = h / (H / Hk), hv = h / (H / Hv);
            const double *Qb = Q + ((b * H + h) * Sq) * D, *Kb = Kd + ((b * Hk + hk) * Skv) * D;
            const double *Vb = V + ((b * Hv + hv) * Skv) * Dv;
            double *Ob = O + ((b * H + h) * Sq) * Dv;
            for (int64_t i = 0; i < Sq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int64_t j = 0; j < lkv; j++) {
                    double dot = 0;
                    for (int64_t d = 0; d < D; d++) dot += Qb[i * D + d] * Kb[j * D + d];
                    S[j] = (double)(float)((double)(float)dot * scale);
                    if (S[j] > mx) mx = S[j];
                }
                for (int64_t d = 0; d < Dv; d++) Ob[i * Dv + d] = 0;
                for (int64_t j = 0; j < lkv; j++) {
                    double p = exp(S[j] - mx), pr;
                    sum += p;
                    round_to(q->dtype, p, &pr);
                    for (int64_t d = 0; d < Dv; d++) Ob[i * Dv + d] += pr * Vb[j * Dv + d];
                }
                sum = (double)(float)sum;
                for (int64_t d = 0; d < Dv; d++) Ob[i * Dv + d] = (double)(float)(Ob[i * Dv + d] / sum);
                L[(b * H + h) * Sq + i] = (double)(float)(mx + log(sum));
            }
        }
    }
    st = write_dense(x, &x->b[op->out_g[0]], O);
    if (!st && op->o_stats >= 0) st = write_dense(x, &x->b[op->out_g[op->o_stats]], L);
out:
    free(Q), free(Kd), free(V), free(O), free(S), free(L), free(seq_q), free(seq_kv);
    return st;
}

/* Byte ranges of a tensor in memory: runs of its innermost contiguous dims. */
typedef struct {
    uintptr_t start, end;
    int tensor;
} byte_run;

static int cmp_run(const void *a, const void *b) {
    const byte_run *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static int64_t runs_of(const binding *b, int index, byte_run *out) {
    const tensor_t *t = b->t;
    stride_dim l[MAX_DIMS];
    int n = canonical_layout(t, l);
    size_t es = dtype_size(t->dtype);
    int64_t run_elems = 1, first = 0;
    if (n > 0 && l[0].stride == 1) run_elems = l[0].extent, first = 1;
    int64_t count = 1;
    for (int i = (int)first; i < n; i++) count *= l[i].extent;
    if (!out) return count;
    int64_t c[MAX_DIMS] = {0};
    for (int64_t r = 0; r < count; r++) {
        int64_t off = 0;
        for (int i = (int)first; i < n; i++) off += c[i] * l[i].stride;
        out[r].start = (uintptr_t)b->ptr + (uintptr_t)(off * (int64_t)es);
        out[r].end = out[r].start + (uintptr_t)(run_elems * (int64_t)es);
        out[r].tensor = index;
        for (int i = (int)first; i < n; i++) {
            if (++c[i] < l[i].extent) break;
            c[i] = 0;
        }
    }
    return count;
}

/* No output may share a byte with another tensor in memory, and no tensor may lie in the
 * workspace the plan was given (the engine's scratch memory). */
static cudnnStatus_t check_aliasing(const graph_t *g, const binding *bs, const void *workspace) {
    int64_t n_out = 0, n_in = 0;
    for (int k = 0; k < g->n_tensors; k++) {
        const tensor_t *t = &g->tensors[k].t;
        if (t->is_virtual || t->by_value) continue;
        int64_t r = runs_of(&bs[k], k, NULL);
        if (g->tensors[k].producer >= 0) n_out += r;
        else n_in += r;
    }
    byte_run *outs = malloc((size_t)(n_out ? n_out : 1) * sizeof *outs);
    byte_run *ins = malloc((size_t)(n_in ? n_in : 1) * sizeof *ins);
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    if (!outs || !ins) {
        st = fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        goto out;
    }
    int64_t no = 0, ni = 0;
    for (int k = 0; k < g->n_tensors; k++) {
        const tensor_t *t = &g->tensors[k].t;
        if (t->is_virtual || t->by_value) continue;
        if (g->tensors[k].producer >= 0) no += runs_of(&bs[k], k, outs + no);
        else ni += runs_of(&bs[k], k, ins + ni);
    }
    qsort(outs, (size_t)no, sizeof *outs, cmp_run);
    uintptr_t max_end = 0;
    int owner = -1;
    for (int64_t i = 0; i < no && !st; i++) {
        if (owner >= 0 && outs[i].start < max_end && owner != outs[i].tensor)
            st = fail(CUDNN_STATUS_BAD_PARAM, "execute: outputs uid %lld and uid %lld share memory",
                      (long long)g->tensors[owner].t.uid, (long long)g->tensors[outs[i].tensor].t.uid);
        if (outs[i].end > max_end) max_end = outs[i].end, owner = outs[i].tensor;
    }
    uintptr_t ws0 = (uintptr_t)workspace, ws1 = ws0 + EMU_WORKSPACE_BYTES;
    for (int64_t i = 0; i < no + ni && !st; i++) {
        const byte_run *r = i < no ? &outs[i] : &ins[i - no];
        if (r->start < ws1 && r->end > ws0)
            st = fail(CUDNN_STATUS_BAD_PARAM, "execute: tensor uid %lld lies in the %d-byte workspace given to the plan",
                      (long long)g->tensors[r->tensor].t.uid, EMU_WORKSPACE_BYTES);
    }
    for (int64_t i = 0; i < ni && !st; i++) {
        int64_t lo = 0, hi = no; /* the last output run starting before this input run ends */
        while (lo < hi) {
            int64_t mid = (lo + hi) / 2;
            if (outs[mid].start < ins[i].end) lo = mid + 1;
            else hi = mid;
        }
        if (lo > 0 && outs[lo - 1].end > ins[i].start)
            st = fail(CUDNN_STATUS_BAD_PARAM, "execute: output uid %lld overlaps input uid %lld in memory",
                      (long long)g->tensors[outs[lo - 1].tensor].t.uid, (long long)g->tensors[ins[i].tensor].t.uid);
    }
out:
    free(outs), free(ins);
    return st;
}

cudnnStatus_t cudnnBackendExecute(cudnnHandle_t handle, cudnnBackendDescriptor_t plan, cudnnBackendDescriptor_t pack) {
    wan_emu_compute_op();
    TRY(check_handle(handle, "cudnnBackendExecute"));
    if (!is_desc(plan) || ((emu_desc *)plan)->type != CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR ||
        !((emu_desc *)plan)->finalized)
        return fail(CUDNN_STATUS_BAD_PARAM, "cudnnBackendExecute: the plan is not a finalised EXECUTION_PLAN");
    if (!is_desc(pack) || ((emu_desc *)pack)->type != CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR ||
        !((emu_desc *)pack)->finalized)
        return fail(CUDNN_STATUS_BAD_PARAM, "cudnnBackendExecute: the variant pack is not a finalised VARIANT_PACK");
    const emu_desc *p = plan, *vp = pack;
    const graph_t *g = p->graph;
    binding *bs = calloc((size_t)g->n_tensors, sizeof *bs);
    if (!bs) return fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    /* the variant pack: exactly the graph's tensors in memory */
    int64_t virt_bytes = 0;
    for (int k = 0; k < g->n_tensors && !st; k++) {
        const tensor_t *t = &g->tensors[k].t;
        bs[k].t = t;
        char ts[256];
        tensor_str(t, ts, sizeof ts);
        if (t->is_virtual) {
            virt_bytes += numel(t) * (int64_t)sizeof(double);
            continue;
        }
        int64_t i = 0;
        while (i < vp->n_pack && vp->pack_uids[i] != t->uid) i++;
        if (i == vp->n_pack) {
            st = fail(CUDNN_STATUS_BAD_PARAM, "execute: tensor %s is not in the variant pack", ts);
            break;
        }
        bs[k].ptr = vp->pack_ptrs[i];
        if (!bs[k].ptr) st = fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "execute: tensor %s has a NULL pointer", ts);
        else if (!t->by_value && (uintptr_t)bs[k].ptr % (uintptr_t)t->alignment)
            st = fail(CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER,
                      "execute: tensor %s: pointer %p is not aligned to its BYTE_ALIGNMENT %lld", ts, (void *)bs[k].ptr,
                      (long long)t->alignment);
    }
    for (int64_t i = 0; i < vp->n_pack && !st; i++) {
        int k = 0;
        while (k < g->n_tensors && (g->tensors[k].t.uid != vp->pack_uids[i] || g->tensors[k].t.is_virtual)) k++;
        if (k == g->n_tensors)
            st = fail(CUDNN_STATUS_BAD_PARAM, "execute: variant pack uid %lld is not a tensor in memory of this graph",
                      (long long)vp->pack_uids[i]);
    }
    if (!st && !vp->pack_workspace)
        st = fail(CUDNN_STATUS_BAD_PARAM_NULL_POINTER, "execute: the plan needs %d bytes of workspace; none given",
                  EMU_WORKSPACE_BYTES);
    if (!st) st = check_aliasing(g, bs, vp->pack_workspace);
    if (!st && virt_bytes > MAX_EXEC_BYTES)
        st = fail(CUDNN_STATUS_NOT_SUPPORTED, "execute: %.1f GiB of intermediates is too much for the emulator",
                  virt_bytes / 1073741824.0);
    if (!st) memset(vp->pack_workspace, 0xff, EMU_WORKSPACE_BYTES); /* whatever was there is gone */
    for (int k = 0; k < g->n_tensors && !st; k++) {
        if (!g->tensors[k].t.is_virtual) continue;
        int64_t n = numel(&g->tensors[k].t);
        bs[k].buf = xmalloc_doubles(n);
        if (!bs[k].buf) st = fail(CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED, "out of host memory");
        else
            for (int64_t i = 0; i < n; i++) bs[k].buf[i] = NAN;
    }
    exec_ctx x = {g, bs, 0};
    for (int i = 0; i < g->n_ops && !st; i++) {
        x.op_index = i;
        const op_t *op = &g->ops[i];
        switch (op->kind) {
        case OP_POINTWISE: st = run_pointwise(&x, op); break;
        case OP_REDUCTION: st = run_reduction(&x, op); break;
        case OP_MATMUL: st = run_matmul(&x, op); break;
        case OP_RESHAPE: st = run_reshape(&x, op); break;
        case OP_SDPA_FWD: st = run_sdpa_fwd(&x, op); break;
        }
    }
    for (int k = 0; k < g->n_tensors; k++) free(bs[k].buf);
    free(bs);
    return st;
}
