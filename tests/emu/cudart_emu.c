/* The CUDA runtime calls the backend makes, on the CPU, for the emulation build (make EMU=1).
 *
 * "Device" memory is host memory; every call is synchronous on the calling thread, so streams
 * and events only need to exist. Fresh allocations are filled with 0xff bytes (NaN as fp32, bf16
 * and fp16) so that a kernel reading memory nobody wrote produces NaN instead of a lucky zero.
 * Bad arguments are reported the way the runtime reports them (an error code, also kept as the
 * "last error"), with one line on stderr saying what, so that a test sees the call that failed.
 * The emulated device describes itself as an sm_90 GPU with 80 GB. */
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu.h"

static cudaError_t last_error = cudaSuccess;
static int current_device;

static cudaError_t fail(cudaError_t e, const char *call, const char *why) {
    fprintf(stderr, "cuda emulator: %s: %s\n", call, why);
    last_error = e;
    return e;
}

void wan_emu_set_error(int e) {
    if (last_error == cudaSuccess) last_error = (cudaError_t)e;
}

/* ---------------------------------------------------------------- errors and versions */

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "emulated CUDA error";
    }
}

const char *cudaGetErrorName(cudaError_t e) { return cudaGetErrorString(e); }

cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_error; }

cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}

/* ---------------------------------------------------------------- the device */

cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d) {
    if (d != 0) return fail(cudaErrorInvalidDevice, "cudaSetDevice", "the emulator has device 0 only");
    current_device = d;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *d) {
    *d = current_device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
    if (d != 0) return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties", "the emulator has device 0 only");
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CUDA emulator (CPU, sm_90)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    p->totalGlobalMem = (size_t)80 << 30;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->sharedMemPerBlock = 48 << 10;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    *free_b = (size_t)80 << 30;
    *total_b = (size_t)80 << 30;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

/* ---------------------------------------------------------------- memory */

static void *emu_alloc(size_t bytes) {
    size_t n = bytes ? (bytes + 255) & ~(size_t)255 : 256;
    void *p = aligned_alloc(256, n);
    if (p) memset(p, 0xff, n);
    return p;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = emu_alloc(bytes);
    return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaMalloc", "out of host memory");
}

cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }

/* Pools: a handle that only has to exist; allocations from it are plain allocations. */
struct CUmemPoolHandle_st {
    int unused;
};

cudaError_t cudaMemPoolCreate(cudaMemPool_t *pool, const struct cudaMemPoolProps *props) {
    if (!props || props->location.type != cudaMemLocationTypeDevice || props->location.id != 0)
        return fail(cudaErrorInvalidValue, "cudaMemPoolCreate", "the pool must live on device 0");
    *pool = calloc(1, sizeof **pool);
    return *pool ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaMemPoolCreate", "out of host memory");
}

cudaError_t cudaMemPoolDestroy(cudaMemPool_t pool) {
    free(pool);
    return cudaSuccess;
}

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, enum cudaMemPoolAttr attr, void *value) {
    (void)attr;
    if (!pool || !value) return fail(cudaErrorInvalidValue, "cudaMemPoolSetAttribute", "NULL pool or value");
    return cudaSuccess;
}

cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep) {
    (void)pool, (void)keep;
    return cudaSuccess;
}

cudaError_t cudaMallocFromPoolAsync(void **p, size_t bytes, cudaMemPool_t pool, cudaStream_t st) {
    (void)st;
    if (!pool) return fail(cudaErrorInvalidValue, "cudaMallocFromPoolAsync", "NULL pool");
    return cudaMalloc(p, bytes);
}

cudaError_t cudaMallocAsync(void **p, size_t bytes, cudaStream_t st) {
    (void)st;
    return cudaMalloc(p, bytes);
}

cudaError_t cudaFreeAsync(void *p, cudaStream_t st) {
    (void)st;
    return cudaFree(p);
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    (void)kind;
    if (bytes && (!dst || !src)) return fail(cudaErrorInvalidValue, "cudaMemcpy", "NULL pointer");
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t st) {
    (void)st;
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    if (bytes && !p) return fail(cudaErrorInvalidValue, "cudaMemset", "NULL pointer");
    if (bytes) memset(p, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t st) {
    (void)st;
    return cudaMemset(p, value, bytes);
}

cudaError_t cudaMemset2DAsync(void *p, size_t pitch, int value, size_t width, size_t height, cudaStream_t st) {
    (void)st;
    if (width > pitch) return fail(cudaErrorInvalidValue, "cudaMemset2DAsync", "width larger than the pitch");
    for (size_t r = 0; r < height; r++) memset((char *)p + r * pitch, value, width);
    return cudaSuccess;
}

/* ---------------------------------------------------------------- streams and events */

struct CUstream_st {
    int unused;
};
struct CUevent_st {
    int recorded;
    int queried; /* queries since the last record */
};

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags) {
    (void)flags;
    *st = calloc(1, sizeof **st);
    return *st ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaStreamCreateWithFlags", "out of host memory");
}

cudaError_t cudaStreamCreate(cudaStream_t *st) { return cudaStreamCreateWithFlags(st, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t st) {
    free(st);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t st) {
    (void)st;
    return last_error; /* an asynchronous fault would surface here */
}

cudaError_t cudaStreamWaitEvent(cudaStream_t st, cudaEvent_t ev, unsigned flags) {
    (void)st, (void)flags;
    if (!ev) return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent", "NULL event");
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned flags) {
    (void)flags;
    *ev = calloc(1, sizeof **ev);
    return *ev ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaEventCreateWithFlags", "out of host memory");
}

cudaError_t cudaEventCreate(cudaEvent_t *ev) { return cudaEventCreateWithFlags(ev, 0); }

cudaError_t cudaEventDestroy(cudaEvent_t ev) {
    free(ev);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t st) {
    (void)st;
    if (!ev) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord", "NULL event");
    ev->recorded = 1;
    ev->queried = 0;
    return cudaSuccess;
}

/* Work is done at once here, but a GPU is rarely that fast: the first query after a record
 * answers "not ready", and, as the real runtime does, leaves that as the last error (a caller
 * must clear it, or its next launch check fails). */
cudaError_t cudaEventQuery(cudaEvent_t ev) {
    if (!ev) return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery", "NULL event");
    if (ev->recorded && ev->queried++ == 0) {
        last_error = cudaErrorNotReady;
        return cudaErrorNotReady;
    }
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
    if (!ev) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize", "NULL event");
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b) return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime", "NULL event");
    *ms = 0.0f;
    return cudaSuccess;
}
