/* The CUDA runtime calls the backend makes, on the CPU, for the emulation build (make EMU=1).
 *
 * "Device" memory is host memory; every call is synchronous on the calling thread. The one
 * exception is work the NCCL stand-in (nccl_emu.c) queues on a stream: it runs on that
 * communicator's worker thread, and the stream counts it (wan_emu_stream_enqueue / _complete),
 * so that an event recorded behind it is "not ready" until it has run, and cudaStreamWaitEvent,
 * cudaStreamSynchronize and cudaEventSynchronize block the calling thread until then (for the
 * synchronous streams that is what the GPU's wait means). Such a block also marks the work
 * wanted, which a lazy task (WAN_EMU_NCCL_LAZY_MS) waits for. Fresh allocations are filled
 * with 0xff bytes (NaN as fp32, bf16 and fp16) so that a kernel reading memory nobody wrote
 * produces NaN instead of a lucky zero.
 * Bad arguments are reported the way the runtime reports them (an error code, also kept as the
 * "last error"), with one line on stderr saying what, so that a test sees the call that failed.
 * The emulated device describes itself as an sm_90 GPU with 80 GB. */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "emu.h"

static _Thread_local cudaError_t last_error = cudaSuccess; /* per host thread, as the runtime's */
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

static _Atomic uint64_t compute_seq; /* device work issued so far (wan_emu_compute_op) */

void wan_emu_compute_op(void) { atomic_fetch_add(&compute_seq, 1); }

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind) {
    (void)kind;
    wan_emu_compute_op();
    if (bytes && (!dst || !src)) return fail(cudaErrorInvalidValue, "cudaMemcpy", "NULL pointer");
    if (bytes) memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind, cudaStream_t st) {
    (void)st;
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    wan_emu_compute_op();
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
    wan_emu_compute_op();
    if (width > pitch) return fail(cudaErrorInvalidValue, "cudaMemset2DAsync", "width larger than the pitch");
    for (size_t r = 0; r < height; r++) memset((char *)p + r * pitch, value, width);
    return cudaSuccess;
}

/* ---------------------------------------------------------------- streams and events */

/* enq: tickets handed out for queued work; done: the highest ticket completed (in order);
 * wanted: the highest ticket a caller has blocked on (a lazy task starts when wanted) */
struct CUstream_st {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t enq, done, wanted;
    _Atomic uint64_t ordered_upto; /* the device work it waited for (compute_seq) */
};
struct CUevent_st {
    int recorded;
    int queried; /* queries since the last record */
    cudaStream_t stream; /* recorded on, and the ticket it waits for (0: nothing queued) */
    uint64_t ticket;
    uint64_t compute_seq; /* device work issued before the record */
};

uint64_t wan_emu_stream_unordered(void *stream) {
    cudaStream_t st = stream;
    uint64_t now = atomic_load(&compute_seq), upto = st ? atomic_load(&st->ordered_upto) : now;
    return now > upto ? now - upto : 0;
}

uint64_t wan_emu_stream_enqueue(void *stream) {
    cudaStream_t st = stream;
    if (!st) return 0;
    pthread_mutex_lock(&st->mu);
    uint64_t t = ++st->enq;
    pthread_mutex_unlock(&st->mu);
    return t;
}

void wan_emu_stream_complete(void *stream, uint64_t ticket) {
    cudaStream_t st = stream;
    if (!st || !ticket) return;
    pthread_mutex_lock(&st->mu);
    if (ticket > st->done) st->done = ticket;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

static void deadline_in(struct timespec *ts, double s) {
    clock_gettime(CLOCK_REALTIME, ts);
    long ns = ts->tv_nsec + (long)(s * 1e9);
    ts->tv_sec += ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

/* A caller blocks until st has completed `upto`: that work is now wanted. */
static void wait_done(cudaStream_t st, uint64_t upto) {
    if (!st) return;
    pthread_mutex_lock(&st->mu);
    if (upto > st->wanted) {
        st->wanted = upto;
        pthread_cond_broadcast(&st->cv);
    }
    while (st->done < upto) pthread_cond_wait(&st->cv, &st->mu);
    pthread_mutex_unlock(&st->mu);
}

void wan_emu_stream_wait_turn(void *stream, uint64_t ticket, double lazy_s, int (*stop)(void *), void *arg) {
    cudaStream_t st = stream;
    if (!st) return;
    struct timespec ts;
    pthread_mutex_lock(&st->mu);
    /* the work queued before it, without making it wanted (polled: stop may change) */
    while (st->done + 1 < ticket && !stop(arg)) {
        deadline_in(&ts, 0.01);
        pthread_cond_timedwait(&st->cv, &st->mu, &ts);
    }
    /* lazy: as late as allowed, until someone blocks on it or lazy_s has passed (the waits
     * are sliced so that stop is polled) */
    struct timespec until;
    deadline_in(&until, lazy_s);
    while (lazy_s > 0 && st->wanted < ticket && !stop(arg)) {
        deadline_in(&ts, 0.01);
        bool last = ts.tv_sec > until.tv_sec || (ts.tv_sec == until.tv_sec && ts.tv_nsec >= until.tv_nsec);
        if (pthread_cond_timedwait(&st->cv, &st->mu, last ? &until : &ts) == ETIMEDOUT && last) break;
    }
    pthread_mutex_unlock(&st->mu);
}

static bool event_complete(cudaEvent_t ev) {
    if (!ev->stream || !ev->ticket) return true;
    pthread_mutex_lock(&ev->stream->mu);
    bool done = ev->stream->done >= ev->ticket;
    pthread_mutex_unlock(&ev->stream->mu);
    return done;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *st, unsigned flags) {
    (void)flags;
    *st = calloc(1, sizeof **st);
    if (!*st) return fail(cudaErrorMemoryAllocation, "cudaStreamCreateWithFlags", "out of host memory");
    pthread_mutex_init(&(*st)->mu, NULL);
    pthread_cond_init(&(*st)->cv, NULL);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *st) { return cudaStreamCreateWithFlags(st, 0); }

cudaError_t cudaStreamDestroy(cudaStream_t st) {
    if (st) {
        wait_done(st, st->enq); /* the runtime lets queued work finish first */
        pthread_mutex_destroy(&st->mu);
        pthread_cond_destroy(&st->cv);
    }
    free(st);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t st) {
    if (st) {
        pthread_mutex_lock(&st->mu);
        uint64_t upto = st->enq;
        pthread_mutex_unlock(&st->mu);
        wait_done(st, upto);
    }
    return last_error; /* an asynchronous fault would surface here */
}

cudaError_t cudaStreamWaitEvent(cudaStream_t st, cudaEvent_t ev, unsigned flags) {
    (void)flags;
    if (!ev) return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent", "NULL event");
    if (ev->stream) wait_done(ev->stream, ev->ticket);
    if (st) {
        uint64_t cur = atomic_load(&st->ordered_upto);
        while (ev->compute_seq > cur && !atomic_compare_exchange_weak(&st->ordered_upto, &cur, ev->compute_seq)) {
        }
    }
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
    if (!ev) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord", "NULL event");
    ev->recorded = 1;
    ev->queried = 0;
    ev->stream = st;
    ev->ticket = 0;
    ev->compute_seq = atomic_load(&compute_seq);
    if (st) {
        pthread_mutex_lock(&st->mu);
        ev->ticket = st->enq;
        pthread_mutex_unlock(&st->mu);
    }
    return cudaSuccess;
}

/* Work done at once is still answered "not ready" by the first query after a record (a GPU is
 * rarely that fast), and, as the real runtime does, that is left as the calling thread's last
 * error (a caller must clear it, or its next launch check fails). */
cudaError_t cudaEventQuery(cudaEvent_t ev) {
    if (!ev) return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery", "NULL event");
    if (ev->recorded && (ev->queried++ == 0 || !event_complete(ev))) {
        last_error = cudaErrorNotReady;
        return cudaErrorNotReady;
    }
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t ev) {
    if (!ev) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize", "NULL event");
    if (ev->stream) wait_done(ev->stream, ev->ticket);
    return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b) return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime", "NULL event");
    *ms = 0.0f;
    return cudaSuccess;
}
