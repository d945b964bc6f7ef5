/* Attention kernels of the CUDA backend that cuDNN does not provide: the context-parallel merge
 * of per-block outputs by their log-sum-exp (online softmax), and the strided add that turns
 * cuDNN's written gradients into accumulated ones. The fused attention itself is cuDNN's
 * (sdpa_cudnn.c, called from cuda_attention.c). */
#include "cuda_kernels.cuh"

/* One warp per (b, s, h) row of head_dim values. With lse_new = log(e^lse_acc + e^lse):
 * acc = acc * e^(lse_acc - lse_new) + o * e^(lse - lse_new). A block with lse = -inf (all keys
 * masked) contributes nothing; the lane-0 write of lse_acc comes after every lane read it. */
__global__ void k_attn_merge(float *acc, float *lse_acc, const void *o, int ldo, int odt, const float *lse, int B,
                             int H, int Sq, int hd, bool first) {
    long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (row >= (long long)B * Sq * H) return;
    int h = (int)(row % H);
    long long bs = row / H; /* b * Sq + s */
    int s = (int)(bs % Sq), b = (int)(bs / Sq);
    size_t li = ((size_t)b * H + h) * Sq + s;
    float *a = acc + (size_t)bs * H * hd + (size_t)h * hd;
    size_t oa = (size_t)bs * ldo + (size_t)h * hd;
    float lb = lse[li];
    float la = first ? -INFINITY : lse_acc[li];
    __syncwarp();
    /* the first block, or the first with any key: a copy (as the CPU twin; never 0 * acc, which
     * would turn an unwritten accumulator's NaN into the result) */
    if (first || (la == -INFINITY && lb != -INFINITY)) {
        for (int d = lane; d < hd; d += 32) a[d] = ld_f(o, odt, oa + d);
        __syncwarp();
        if (lane == 0) lse_acc[li] = lb;
        return;
    }
    if (lb == -INFINITY) return;
    float m = fmaxf(la, lb);
    float wa = expf(la - m), wb = expf(lb - m);
    float inv = 1.0f / (wa + wb);
    for (int d = lane; d < hd; d += 32) a[d] = (a[d] * wa + ld_f(o, odt, oa + d) * wb) * inv;
    if (lane == 0) lse_acc[li] = m + logf(wa + wb);
}

extern "C" void wan_cuda_merge_launch(cudaStream_t st, float *acc, float *lse_acc, const void *o, int ldo,
                                      wan_dtype odt, const float *lse, int B, int H, int Sq, int hd, bool first) {
    long long rows = (long long)B * Sq * H;
    if (rows <= 0 || hd <= 0) return;
    unsigned blocks = (unsigned)((rows * 32 + WAN_THREADS - 1) / WAN_THREADS);
    k_attn_merge<<<blocks, WAN_THREADS, 0, st>>>(acc, lse_acc, o, ldo, odt, lse, B, H, Sq, hd, first);
    WAN_CU_LAUNCH(st);
}

/* dst[r * ldd + c] += src[r * lds + c] */
__global__ void k_add_2d(void *dst, int ldd, const void *src, int lds, int dt, int cols) {
    int r = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    size_t da = (size_t)r * ldd + c;
    st_f(dst, dt, da, ld_f(dst, dt, da) + ld_f(src, dt, (size_t)r * lds + c));
}

extern "C" void wan_cuda_add_2d(cudaStream_t st, void *dst, int ldd, const void *src, int lds, wan_dtype dt, int rows,
                                int cols) {
    if (rows <= 0 || cols <= 0) return;
    dim3 grid((unsigned)rows, wan_blocks(cols, WAN_THREADS));
    k_add_2d<<<grid, WAN_THREADS, 0, st>>>(dst, ldd, src, lds, dt, cols);
    WAN_CU_LAUNCH(st);
}
