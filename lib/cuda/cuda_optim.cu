/* The optimizer of the CUDA backend: AdamW fused over the flat fp32 buffers (master, moments,
 * gradient) writing the working copy of the weights, and the deterministic sum of squares that
 * the global gradient norm is built from. */
#include "cuda_kernels.cuh"

/* AdamW in the arithmetic order of torch.optim.AdamW (and of the CPU backend):
 *   master *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   master -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps);  param = master (rounded) */
__global__ void k_adamw(float *master, float *m, float *v, const float *grad, void *param, int pdt, size_t n,
                        float beta1, float beta2, float eps, float grad_scale, float decay, float step_size,
                        float bc2_sqrt) {
    float one_m_b1 = 1.0f - beta1, one_m_b2 = 1.0f - beta2;
    WAN_GRID_STRIDE(i, n) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + one_m_b1 * g;
        float vi = beta2 * v[i] + one_m_b2 * g * g;
        float w = master[i] * decay;
        w += (-step_size * mi) / (sqrtf(vi) / bc2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
        master[i] = w;
        if (param) st_f(param, pdt, i, w);
    }
}

extern "C" void wan_cuda_adamw(wan_backend *be, float *master, float *m, float *v, const float *grad, void *param,
                               size_t n, float lr, float beta1, float beta2, float eps, float wd, float grad_scale,
                               int step) {
    if (n == 0) return;
    WAN_CUDA_REQUIRE(step >= 1, "adamw: step = %d (counts from 1)", step);
    cudaStream_t st = wan_cuda_stream_of(be);
    /* the step's constants in double on the host: 1 - beta^step loses digits in float */
    float decay = (float)(1.0 - (double)lr * wd);
    float step_size = (float)((double)lr / (1.0 - pow((double)beta1, step)));
    float bc2_sqrt = (float)sqrt(1.0 - pow((double)beta2, step));
    k_adamw<<<wan_grid_1d(n), WAN_THREADS, 0, st>>>(master, m, v, grad, param, be->param, n, beta1, beta2, eps,
                                                    grad_scale, decay, step_size, bc2_sqrt);
    WAN_CU_LAUNCH(st);
}

/* Sum of squares: a grid that depends on n only (never on the device) of per-thread double sums
 * over a fixed stride, block sums in a fixed order, then one block adds the block sums in order.
 * Small tensors get as many blocks as they fill, not the cap. */
#define WAN_SUMSQ_BLOCKS 512

__global__ void k_sumsq_part(double *part, const float *x, size_t n) {
    double acc = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = x[i];
        acc += v * v;
    }
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) part[blockIdx.x] = acc;
}

__global__ void k_sumsq_final(double *out, const double *part, int nparts) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) acc += part[i];
    acc = block_sum_d(acc);
    if (threadIdx.x == 0) *out = acc;
}

extern "C" double wan_cuda_sumsq(wan_backend *be, const float *x, size_t n) {
    if (n == 0) return 0.0;
    wan_cuda *c = wan_cuda_of(be);
    cudaStream_t st = c->stream;
    double *part = (double *)wan_cuda_scratch(be, WAN_SCR_REDUCE, (WAN_SUMSQ_BLOCKS + 1) * sizeof(double));
    unsigned blocks = wan_grid_1d(n) < WAN_SUMSQ_BLOCKS ? wan_grid_1d(n) : WAN_SUMSQ_BLOCKS;
    k_sumsq_part<<<blocks, WAN_THREADS, 0, st>>>(part, x, n);
    WAN_CU_LAUNCH(st);
    k_sumsq_final<<<1, WAN_THREADS, 0, st>>>(part + WAN_SUMSQ_BLOCKS, part, (int)blocks);
    WAN_CU_LAUNCH(st);
    WAN_CU(cudaMemcpyAsync(c->host_result, part + WAN_SUMSQ_BLOCKS, sizeof(double), cudaMemcpyDeviceToHost, st));
    wan_cuda_host_wait(st);
    return *c->host_result;
}
