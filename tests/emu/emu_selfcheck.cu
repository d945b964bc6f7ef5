/* The emulator's own check: kernels with the bugs it exists to catch, each of which must be
 * caught, and a correct kernel that must pass. Compiled only by the emulation build.
 *
 *   emu_selfcheck MODE
 *
 * good         block sum with barriers and shuffles over several blocks: exit 0, right value
 * race         a block sum whose second barrier is missing: wrong value (exit 1) in one of the
 *              two thread orders (run it with WAN_EMU_ORDER=forward and =reverse)
 * early-exit   __syncthreads after some threads returned: the emulator aborts
 * shfl-exited  a shuffle whose mask names a lane that returned: the emulator aborts
 * divergent    lanes of one warp at __syncthreads and at a shuffle: the emulator aborts
 * oob          a write one element past an allocation: AddressSanitizer aborts
 * config       a block of 2048 threads: the launch fails with cudaErrorInvalidConfiguration */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>

__device__ float warp_total(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* out[block] = sum of in over the block's 256 elements */
__global__ void k_block_sum(float *out, const float *in, bool skip_barrier) {
    __shared__ float part[8];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float v = warp_total(in[blockIdx.x * blockDim.x + threadIdx.x]);
    if (lane == 0) part[warp] = v;
    if (!skip_barrier) __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += part[w];
        out[blockIdx.x] = t;
    }
}

__global__ void k_early_exit(float *out) {
    if (threadIdx.x >= 100) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

__global__ void k_shfl_exited(float *out) {
    if (threadIdx.x == 7) return;
    out[threadIdx.x] = warp_total(1.0f);
}

__global__ void k_divergent(float *out) {
    if (threadIdx.x < 16) __syncthreads();
    else out[threadIdx.x] = warp_total(1.0f);
}

__global__ void k_oob(float *out, int n) { out[threadIdx.x] = (float)n; }

__global__ void k_noop(float *out) {
    if (out && threadIdx.x == 0) out[0] = 0.0f;
}

static int block_sums(bool skip_barrier) {
    const int blocks = 3, threads = 256, n = blocks * threads;
    float *in, *out;
    cudaMalloc((void **)&in, n * sizeof(float));
    cudaMalloc((void **)&out, blocks * sizeof(float));
    float host[n];
    for (int i = 0; i < n; i++) host[i] = (float)(i % 7) + 0.5f;
    cudaMemcpy(in, host, sizeof host, cudaMemcpyHostToDevice);
    k_block_sum<<<blocks, threads>>>(out, in, skip_barrier);
    if (cudaGetLastError() != cudaSuccess) return 2;
    float got[blocks];
    cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int b = 0; b < blocks; b++) {
        float want = 0.0f;
        for (int i = 0; i < threads; i++) want += host[b * threads + i];
        if (got[b] != want) {
            printf("block %d: sum %g, expected %g\n", b, got[b], want);
            bad = 1;
        }
    }
    cudaFree(in);
    cudaFree(out);
    if (!bad) printf("block sums right\n");
    return bad;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: emu_selfcheck good|race|early-exit|shfl-exited|divergent|oob|config\n");
        return 2;
    }
    const char *m = argv[1];
    float *buf;
    cudaMalloc((void **)&buf, 256 * sizeof(float));
    if (!strcmp(m, "good")) return block_sums(false);
    if (!strcmp(m, "race")) return block_sums(true);
    if (!strcmp(m, "early-exit")) k_early_exit<<<1, 128>>>(buf);
    else if (!strcmp(m, "shfl-exited")) k_shfl_exited<<<1, 32>>>(buf);
    else if (!strcmp(m, "divergent")) k_divergent<<<1, 32>>>(buf);
    else if (!strcmp(m, "oob")) k_oob<<<1, 257>>>(buf, 1);
    else if (!strcmp(m, "config")) {
        k_noop<<<1, 2048>>>(buf);
        cudaError_t e = cudaGetLastError();
        printf("launch of 2048 threads: %s\n", cudaGetErrorString(e));
        return e == cudaErrorInvalidConfiguration ? 0 : 1;
    } else {
        fprintf(stderr, "emu_selfcheck: unknown mode %s\n", m);
        return 2;
    }
    printf("%s: the emulator did not stop the kernel\n", m);
    return 1;
}
