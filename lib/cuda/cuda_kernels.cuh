/* Device helpers shared by the backend's .cu files: typed loads and stores, deterministic block
 * reductions, launch geometry, and "slots" for deterministic column sums over token rows.
 *
 * Launch geometry. Row-wise ops put the row in blockIdx.x (up to 2^31 - 1 rows) and column
 * blocks in blockIdx.y (up to 65535 * 256 columns); flat ops use grid-stride loops over size_t
 * indices, so 37440 x 13824 (517M) elements and larger are fine. Element offsets are always
 * computed in size_t from (size_t)row * ld + col.
 *
 * Determinism. Every sum has a fixed order that depends only on the shape: warp butterflies,
 * then warp totals in warp order; column sums over rows go through slots (below) and a second
 * pass that adds the slots in order. No atomics. */
#ifndef WAN_CUDA_KERNELS_CUH
#define WAN_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_internal.h"

#define WAN_THREADS 256
/* Rows summed sequentially by one thread before the slot partials are added up. */
#define WAN_SLOT_ROWS 64

static __device__ __forceinline__ float ld_f(const void *p, int dt, size_t i) {
    if (dt == WAN_F32) return ((const float *)p)[i];
    if (dt == WAN_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}

static __device__ __forceinline__ void st_f(void *p, int dt, size_t i, float v) {
    if (dt == WAN_F32) ((float *)p)[i] = v;
    else if (dt == WAN_BF16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v); /* round to nearest even */
    else ((__half *)p)[i] = __float2half(v);
}

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32); every thread gets the same total: each warp
 * adds the warp totals in warp order. The leading barrier lets a kernel call it repeatedly. */
static __device__ inline float block_sum(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    return warp_sum(lane < nw ? sh[lane] : 0.0f);
}

static __device__ inline float2 block_sum2(float a, float b) {
    __shared__ float2 sh2[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    a = warp_sum(a);
    b = warp_sum(b);
    __syncthreads();
    if (lane == 0) sh2[wid] = make_float2(a, b);
    __syncthreads();
    float2 t = lane < nw ? sh2[lane] : make_float2(0.0f, 0.0f);
    return make_float2(warp_sum(t.x), warp_sum(t.y));
}

static __device__ inline double block_sum_d(double v) {
    __shared__ double shd[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) shd[wid] = v;
    __syncthreads();
    return warp_sum_d(lane < nw ? shd[lane] : 0.0);
}

/* Blocks for a grid-stride loop over n elements (capped: the loop covers the rest). */
static inline unsigned wan_grid_1d(size_t n) {
    size_t b = (n + WAN_THREADS - 1) / WAN_THREADS;
    const size_t cap = (size_t)1 << 20;
    return (unsigned)(b == 0 ? 1 : b < cap ? b : cap);
}

static inline unsigned wan_blocks(long long n, int per) { return (unsigned)((n + per - 1) / per); }

#define WAN_GRID_STRIDE(i, n)                                                                      \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                        \
         i += (size_t)gridDim.x * blockDim.x)

/* Slots: the T rows of a call (tokens tok0 .. tok0 + T - 1 of a [B, S] layout) cut into runs of
 * at most WAN_SLOT_ROWS rows that never cross a sample boundary. Pass 1 sums each slot's rows
 * per column into partials [nslots, D]; pass 2 (wan_cuda_slots_finish) adds the slots in order,
 * per sample or over all rows. Slot P (global) covers sample P / CS, rows (P % CS) * R ... of it. */
typedef struct {
    int T;          /* rows in the call */
    int nslots;
    long long tok0; /* flattened token index of row 0 */
    long long S;    /* tokens per sample */
    long long CS;   /* slots per sample */
    long long p0;   /* global slot of row 0 */
} wan_slots;

static inline wan_slots wan_slots_make(int T, long long tok0, long long S) {
    wan_slots s;
    s.T = T;
    s.tok0 = tok0;
    s.S = S > 0 ? S : (T > 0 ? T : 1);
    s.CS = (s.S + WAN_SLOT_ROWS - 1) / WAN_SLOT_ROWS;
    long long g1 = tok0 + (T > 0 ? T - 1 : 0);
    s.p0 = (tok0 / s.S) * s.CS + (tok0 % s.S) / WAN_SLOT_ROWS;
    long long p1 = (g1 / s.S) * s.CS + (g1 % s.S) / WAN_SLOT_ROWS;
    s.nslots = T > 0 ? (int)(p1 - s.p0 + 1) : 0;
    return s;
}

/* Rows [*i0, *i1) of the call that slot p (0 <= p < nslots) covers, and their sample. */
static __device__ __forceinline__ void wan_slot_rows(const wan_slots &s, int p, int *i0, int *i1, long long *sample) {
    long long P = s.p0 + p, b = P / s.CS, c = P % s.CS;
    long long g0 = b * s.S + c * WAN_SLOT_ROWS;
    long long g1 = b * s.S + min(s.S, (c + 1) * WAN_SLOT_ROWS);
    g0 = max(g0, s.tok0);
    g1 = min(g1, s.tok0 + s.T);
    *i0 = (int)(g0 - s.tok0);
    *i1 = (int)(g1 - s.tok0);
    *sample = b;
}

/* Pass 2: out[j] += sum over slots of part[p * D + j] (per_sample: out[b * stride + j] gets the
 * slots of sample b only). */
void wan_cuda_slots_finish(cudaStream_t st, const float *part, const wan_slots &s, int D, float *out, long long stride,
                           bool per_sample);

#endif
