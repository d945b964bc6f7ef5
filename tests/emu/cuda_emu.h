/* Compiles the backend's .cu files as host C++ for the emulation build (make EMU=1): included
 * before anything else (g++ -include), after the Makefile has rewritten every launch
 * `k<<<grid, block, smem, stream>>>(args)` into `wan_emu::launch("k", wan_emu::cfg(grid, block,
 * smem, stream), k, args)`.
 *
 * A launch runs its blocks one after another; the threads of a block are fibers on the calling
 * thread, switched at __syncthreads, __syncwarp and warp shuffles, which block until every
 * thread they wait for has arrived (tests/emu/emu_launch.cc). So:
 *   - __shared__ variables are function statics: one block runs at a time, and all of its
 *     threads see the same variable;
 *   - threadIdx / blockIdx are those of the fiber that is running;
 *   - a barrier some threads never reach (they returned, or wait at another barrier), a shuffle
 *     whose mask names a lane that is not there, and a launch configuration the GPU refuses are
 *     reported as errors instead of hanging or passing by luck. */
#ifndef WAN_CUDA_EMU_H
#define WAN_CUDA_EMU_H

/* host_defines.h keeps these when they are already defined */
#define __shared__ static

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace wan_emu {

/* The running fiber's coordinates (valid inside a kernel only). */
const uint3 &thread_idx();
const uint3 &block_idx();
const dim3 &block_dim();
const dim3 &grid_dim();

enum warp_op { WARP_SYNC, WARP_XOR, WARP_DOWN, WARP_UP, WARP_IDX };

void syncthreads();
/* Waits until every lane of `mask` arrived with the same op, then returns the value of the lane
 * the op selects (bits: the value's bytes, size <= 8). */
uint64_t warp_exchange(warp_op op, unsigned mask, uint64_t bits, int arg, int width);

template <typename T> static inline T shfl(warp_op op, unsigned mask, T v, int arg, int width) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a value over 8 bytes");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    b = warp_exchange(op, mask, b, arg, width);
    T r;
    memcpy(&r, &b, sizeof r);
    return r;
}

struct launch_cfg {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
};

static inline launch_cfg cfg(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = 0) {
    return launch_cfg{grid, block, smem, stream};
}

/* Runs body once per thread of every block (or records a launch error, as the GPU would). */
void run(const char *name, const launch_cfg &c, const std::function<void()> &body);

/* Arguments are converted to the kernel's parameter types once, at the launch, and every thread
 * gets its own copy (as the GPU passes them by value). */
template <typename... P, typename... A>
static inline void launch(const char *name, const launch_cfg &c, void (*kernel)(P...), A &&...args) {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    std::tuple<typename std::decay<P>::type...> params(static_cast<P>(std::forward<A>(args))...);
    run(name, c, [&]() { std::apply(kernel, params); });
}

} // namespace wan_emu

#define threadIdx (::wan_emu::thread_idx())
#define blockIdx (::wan_emu::block_idx())
#define blockDim (::wan_emu::block_dim())
#define gridDim (::wan_emu::grid_dim())
#define warpSize 32

static inline void __syncthreads() { ::wan_emu::syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    ::wan_emu::warp_exchange(::wan_emu::WARP_SYNC, mask, 0, 0, 32);
}
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return ::wan_emu::shfl(::wan_emu::WARP_XOR, mask, v, lane_mask, width);
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::wan_emu::shfl(::wan_emu::WARP_DOWN, mask, v, (int)delta, width);
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return ::wan_emu::shfl(::wan_emu::WARP_UP, mask, v, (int)delta, width);
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return ::wan_emu::shfl(::wan_emu::WARP_IDX, mask, v, src, width);
}

/* Device math the kernels use, from the host's libm (glibc has __expf and __logf itself). The
 * GPU's fast variants are approximations; the checks' tolerances allow for them. */
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
template <typename T> static inline T __ldg(const T *p) { return *p; }


static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }

#endif
