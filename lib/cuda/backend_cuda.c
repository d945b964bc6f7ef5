/* The CUDA backend: device selection, the compute stream, cuBLASLt and cuDNN handles, device
 * memory from a stream-ordered pool (256-byte aligned, zero-filled; bytes in use and their peak
 * counted per allocation), and the
 * wan_ops table whose entries live in the other files of lib/cuda/. */
#include <inttypes.h>
#include <search.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <cublasLt.h>
#include <cudnn.h>

#include "cuda_backend.h"
#include "cuda_internal.h"
#include "error.h"
#include "log.h"
#include "sdpa_cudnn.h"

#define WAN_LT_WORKSPACE ((size_t)32 << 20) /* what cuBLASLt's Hopper kernels like */

int wan_cuda_debug_sync;

void wan_cuda_die(const char *file, int line, const char *call, const char *msg) {
    wan_log(WAN_LOG_ERROR, "CUDA backend: %s failed: %s [%s:%d]", call, msg, file, line);
    abort();
}

void wan_cuda_dief(const char *file, int line, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    wan_log(WAN_LOG_ERROR, "CUDA backend: %s [%s:%d]", msg, file, line);
    abort();
}

/* ---------------------------------------------------------------- waiting on the host */

static int (*host_wait_fn)(void *);
static void *host_wait_ctx;

void wan_cuda_set_host_wait(int (*fn)(void *ctx), void *ctx) {
    host_wait_fn = fn;
    host_wait_ctx = ctx;
}

void wan_cuda_host_wait(cudaStream_t st) {
    /* collectives the stream waits for first: under their deadline, not in an endless sync */
    if (host_wait_fn && host_wait_fn(host_wait_ctx)) {
        wan_log(WAN_LOG_ERROR, "%s", wan_errmsg());
        exit(WAN_ERR_RUNTIME);
    }
    WAN_CU(cudaStreamSynchronize(st));
}

/* ---------------------------------------------------------------- memory */

/* Live allocations (pointer -> bytes) in a POSIX binary tree, so that free can subtract. */
typedef struct {
    void *p;
    size_t n;
} mem_rec;

static int mem_cmp(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const mem_rec *)a)->p, y = (uintptr_t)((const mem_rec *)b)->p;
    return x < y ? -1 : x > y;
}

static void mem_add(wan_backend *be, void *p, size_t n) {
    wan_cuda *c = wan_cuda_of(be);
    mem_rec *r = malloc(sizeof *r);
    WAN_CUDA_REQUIRE(r != NULL, "out of host memory");
    r->p = p;
    r->n = n;
    WAN_CUDA_REQUIRE(tsearch(r, &c->live, mem_cmp) != NULL, "out of host memory");
    be->mem_now += n;
    if (be->mem_now > be->mem_peak) be->mem_peak = be->mem_now;
}

static void mem_sub(wan_backend *be, void *p) {
    wan_cuda *c = wan_cuda_of(be);
    mem_rec key = {p, 0};
    void *found = tfind(&key, &c->live, mem_cmp);
    WAN_CUDA_REQUIRE(found != NULL, "free of %p, which this backend did not allocate (or freed already)", p);
    mem_rec *r = *(mem_rec **)found;
    tdelete(&key, &c->live, mem_cmp);
    be->mem_now -= r->n;
    free(r);
}

void *wan_cuda_pool_alloc(wan_backend *be, size_t bytes, bool zero) {
    wan_cuda *c = wan_cuda_of(be);
    size_t n = bytes ? (bytes + 255) & ~(size_t)255 : 256;
    void *p = NULL;
    cudaError_t e = cudaMallocFromPoolAsync(&p, n, c->pool, c->stream);
    if (e == cudaErrorMemoryAllocation) { /* give cached blocks back to the driver, then once more */
        (void)cudaGetLastError();
        wan_cuda_host_wait(c->stream);
        WAN_CU(cudaMemPoolTrimTo(c->pool, 0));
        e = cudaMallocFromPoolAsync(&p, n, c->pool, c->stream);
    }
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        (void)cudaGetLastError();
        (void)cudaMemGetInfo(&free_b, &total_b);
        wan_cuda_dief(__FILE__, __LINE__,
                      "out of GPU memory on device %d (%s): asked for %.1f MiB with %.1f MiB allocated (peak %.1f "
                      "MiB), %.2f of %.2f GiB free on the device: %s (wan-train --check plans a run's memory; "
                      "a lower train.memory_budget_gib or a higher train.recompute_layers makes more blocks recompute)",
                      c->device, be->device_name, n / 1048576.0, be->mem_now / 1048576.0, be->mem_peak / 1048576.0,
                      free_b / 1073741824.0, total_b / 1073741824.0, cudaGetErrorString(e));
    }
    WAN_CUDA_REQUIRE(((uintptr_t)p & 255) == 0, "the memory pool returned %p, not 256-byte aligned", p);
    if (zero) WAN_CU(cudaMemsetAsync(p, 0, n, c->stream));
    mem_add(be, p, n);
    return p;
}

void wan_cuda_pool_free(wan_backend *be, void *p) {
    if (!p) return;
    mem_sub(be, p);
    WAN_CU(cudaFreeAsync(p, wan_cuda_of(be)->stream)); /* stream-ordered: safe for pending work */
}

void *wan_cuda_scratch(wan_backend *be, int slot, size_t bytes) {
    wan_cuda *c = wan_cuda_of(be);
    if (bytes > c->scratch_bytes[slot]) {
        wan_cuda_pool_free(be, c->scratch[slot]);
        size_t n = bytes + bytes / 8; /* headroom: shapes grow a little between calls */
        c->scratch[slot] = wan_cuda_pool_alloc(be, n, false);
        c->scratch_bytes[slot] = n;
    }
    return c->scratch[slot];
}

static void *be_alloc(wan_backend *be, size_t bytes) { return wan_cuda_pool_alloc(be, bytes, true); }
static void be_free(wan_backend *be, void *p) { wan_cuda_pool_free(be, p); }

static void be_upload(wan_backend *be, void *dst, const void *host, size_t bytes) {
    /* from pageable memory the runtime stages the data before returning: host may be reused */
    if (bytes) WAN_CU(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, wan_cuda_stream_of(be)));
}

static void be_download(wan_backend *be, void *host, const void *src, size_t bytes) {
    cudaStream_t st = wan_cuda_stream_of(be);
    if (bytes) WAN_CU(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, st));
    wan_cuda_host_wait(st);
}

static void be_memset0(wan_backend *be, void *p, size_t bytes) {
    if (bytes) WAN_CU(cudaMemsetAsync(p, 0, bytes, wan_cuda_stream_of(be)));
}

static void be_copy(wan_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src)
        WAN_CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, wan_cuda_stream_of(be)));
}

static void be_convert(wan_backend *be, void *dst, wan_dtype dt, const void *src, wan_dtype st, size_t n) {
    wan_cuda_convert_n(wan_cuda_stream_of(be), dst, dt, src, st, n);
}

static void be_sync(wan_backend *be) { wan_cuda_host_wait(wan_cuda_stream_of(be)); }

/* cuDNN workspaces come from the same pool (counted in the peak). */
static void *sdpa_alloc(void *ctx, size_t bytes) { return wan_cuda_pool_alloc(ctx, bytes, false); }
static void sdpa_free(void *ctx, void *p) { wan_cuda_pool_free(ctx, p); }

void *wan_cuda_stream(wan_backend *be) {
    return be && be->name && !strcmp(be->name, "cuda") ? (void *)wan_cuda_stream_of(be) : NULL;
}

/* The stream of the CUDA backend this process made last (one GPU per rank: the only one). */
static cudaStream_t last_stream;

void *wan_cuda_process_stream(void) { return (void *)last_stream; }

/* ---------------------------------------------------------------- the backend */

static const wan_ops cuda_ops = {
    .matmul_fwd = wan_cuda_matmul_fwd,
    .matmul_bwd = wan_cuda_matmul_bwd,
    .matmul_gelu_fwd = wan_cuda_matmul_gelu_fwd,
    .matmul_dgelu_bwd = wan_cuda_matmul_dgelu_bwd,
    .layernorm_fwd = wan_cuda_layernorm_fwd,
    .layernorm_bwd = wan_cuda_layernorm_bwd,
    .rms_sumsq = wan_cuda_rms_sumsq,
    .rms_rope_fwd = wan_cuda_rms_rope_fwd,
    .rms_rope_bwd_dot = wan_cuda_rms_rope_bwd_dot,
    .rms_bwd_dx = wan_cuda_rms_bwd_dx,
    .attention_fwd = wan_cuda_attention_fwd,
    .attention_bwd = wan_cuda_attention_bwd,
    .attention_merge = wan_cuda_attention_merge,
    .gelu_fwd = wan_cuda_gelu_fwd,
    .gelu_bwd = wan_cuda_gelu_bwd,
    .silu_fwd = wan_cuda_silu_fwd,
    .silu_bwd = wan_cuda_silu_bwd,
    .residual_fwd = wan_cuda_residual_fwd,
    .residual_bwd = wan_cuda_residual_bwd,
    .add = wan_cuda_add,
    .add_bcast = wan_cuda_add_bcast,
    .sum_rows = wan_cuda_sum_rows,
    .timestep_embed = wan_cuda_timestep_embed,
    .patchify = wan_cuda_patchify,
    .unpatchify = wan_cuda_unpatchify,
    .flow_loss = wan_cuda_flow_loss,
    .adamw = wan_cuda_adamw,
    .sumsq = wan_cuda_sumsq,
};

static void be_destroy(wan_backend *be) {
    if (!be) return;
    wan_cuda *c = wan_cuda_of(be);
    if (c) {
        (void)cudaSetDevice(c->device);
        if (c->stream) (void)cudaStreamSynchronize(c->stream);
        if (c->sdpa) wan_sdpa_destroy(c->sdpa);
        wan_mm_cache_destroy(c->mm);
        if (c->pool) {
            for (int i = 0; i < WAN_SCR_COUNT; i++)
                if (c->scratch[i]) (void)cudaFreeAsync(c->scratch[i], c->stream);
            if (c->lt_ws) (void)cudaFreeAsync(c->lt_ws, c->stream);
        }
        if (c->lt) cublasLtDestroy((cublasLtHandle_t)c->lt);
        if (c->cudnn) cudnnDestroy((cudnnHandle_t)c->cudnn);
        if (c->stream) (void)cudaStreamSynchronize(c->stream);
        /* allocations the caller did not free go with the pool */
        if (c->pool) (void)cudaMemPoolDestroy(c->pool);
        if (c->stream) (void)cudaStreamDestroy(c->stream);
        if (last_stream == c->stream) last_stream = NULL;
        if (c->host_result) (void)cudaFreeHost(c->host_result);
        tdestroy(c->live, free);
        free(c);
    }
    free(be);
}

/* Initialisation errors are returned, with the call that failed and why. */
#define INIT_CU(call)                                                                              \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            rc = wan_fail(WAN_ERR_RUNTIME, "CUDA device %d: %s: %s", device, #call, cudaGetErrorString(e_)); \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

int wan_backend_cuda(int device, wan_backend **out) {
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        int drv = 0, rt = 0;
        (void)cudaGetLastError();
        (void)cudaDriverGetVersion(&drv);
        (void)cudaRuntimeGetVersion(&rt);
        char why[256];
        if (e == cudaSuccess) snprintf(why, sizeof why, "the NVIDIA driver reports no devices");
        else if (drv == 0) snprintf(why, sizeof why, "no NVIDIA driver is installed: %s", cudaGetErrorString(e));
        else if (e == cudaErrorInsufficientDriver)
            snprintf(why, sizeof why, "the NVIDIA driver supports CUDA %d.%d, this build needs %d.%d", drv / 1000,
                     drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
        else snprintf(why, sizeof why, "%s", cudaGetErrorString(e));
        (void)cudaGetLastError();
        return wan_fail(WAN_ERR_RUNTIME,
                        "no CUDA GPU found (%s): train.device = \"cuda\" needs an NVIDIA GPU and its driver on "
                        "this machine; use train.device = \"cpu\" without one",
                        why);
    }
    if (device >= count && count == 1) { /* Slurm bound one GPU to this task: it is ours */
        wan_info("CUDA backend: local rank %d sees one GPU (CUDA_VISIBLE_DEVICES=%s): using it", device,
                 getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "unset");
        device = 0;
    }
    if (device < 0 || device >= count) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        return wan_fail(WAN_ERR_RUNTIME,
                        "CUDA device %d does not exist: %d GPU%s visible (CUDA_VISIBLE_DEVICES=%s); the device is "
                        "the local rank, so start at most %d ranks per node",
                        device, count, count == 1 ? "" : "s", vis ? vis : "unset", count);
    }
    struct cudaDeviceProp prop;
    e = cudaGetDeviceProperties(&prop, device);
    if (e != cudaSuccess)
        return wan_fail(WAN_ERR_RUNTIME, "CUDA device %d: cudaGetDeviceProperties: %s", device, cudaGetErrorString(e));
    if (prop.major < 9)
        return wan_fail(WAN_ERR_RUNTIME,
                        "CUDA device %d (%s) has compute capability %d.%d; the CUDA backend needs 9.0 or newer "
                        "(Hopper, Blackwell): it is built for sm_90a, sm_100a and compute_90",
                        device, prop.name, prop.major, prop.minor);
    const char *dbg = getenv("WAN_CUDA_DEBUG_SYNC");
    wan_cuda_debug_sync = dbg && atoi(dbg) != 0;
    /* WAN_GEMM_GELU_EPILOGUE=0: the FFN's GELU as a kernel after the GEMM (bench/gpu_ops times both) */
    const char *gelu_epi = getenv("WAN_GEMM_GELU_EPILOGUE");
    if (gelu_epi && *gelu_epi && strcmp(gelu_epi, "0") && strcmp(gelu_epi, "1"))
        return wan_fail(WAN_ERR_USAGE, "WAN_GEMM_GELU_EPILOGUE=%s: expected 0 or 1", gelu_epi);

    int rc = 0;
    wan_backend *be = calloc(1, sizeof *be);
    wan_cuda *c = calloc(1, sizeof *c);
    if (!be || !c) {
        free(be), free(c);
        return wan_fail(WAN_ERR_RUNTIME, "out of host memory");
    }
    be->impl = c;
    c->gelu_epilogue = !(gelu_epi && !strcmp(gelu_epi, "0"));
    be->name = "cuda";
    be->act = WAN_BF16;
    be->param = WAN_BF16;
    be->ops = &cuda_ops;
    be->alloc = be_alloc;
    be->free = be_free;
    be->upload = be_upload;
    be->download = be_download;
    be->memset0 = be_memset0;
    be->copy = be_copy;
    be->convert = be_convert;
    be->sync = be_sync;
    be->destroy = be_destroy;
    be->device_index = device;
    be->mem_device = prop.totalGlobalMem;
    snprintf(be->device_name, sizeof be->device_name, "%.*s", (int)sizeof be->device_name - 1, prop.name);
    c->device = device;
    c->sm_count = prop.multiProcessorCount;

    INIT_CU(cudaSetDevice(device));
    INIT_CU(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    struct cudaMemPoolProps pp;
    memset(&pp, 0, sizeof pp);
    pp.allocType = cudaMemAllocationTypePinned;
    pp.location.type = cudaMemLocationTypeDevice;
    pp.location.id = device;
    INIT_CU(cudaMemPoolCreate(&c->pool, &pp));
    uint64_t keep = UINT64_MAX; /* keep freed memory in the pool: no cudaFree in the step */
    INIT_CU(cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrReleaseThreshold, &keep));
    INIT_CU(cudaMallocHost((void **)&c->host_result, 64));

    cublasLtHandle_t lt;
    cublasStatus_t bs = cublasLtCreate(&lt);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        rc = wan_fail(WAN_ERR_RUNTIME, "CUDA device %d: cublasLtCreate: %s", device, cublasLtGetStatusString(bs));
        goto fail;
    }
    c->lt = lt;
    cudnnHandle_t dnn;
    cudnnStatus_t ds = cudnnCreate(&dnn);
    if (ds != CUDNN_STATUS_SUCCESS) {
        rc = wan_fail(WAN_ERR_RUNTIME, "CUDA device %d: cudnnCreate: %s", device, cudnnGetErrorString(ds));
        goto fail;
    }
    c->cudnn = dnn;
    ds = cudnnSetStream(dnn, c->stream);
    if (ds != CUDNN_STATUS_SUCCESS) {
        rc = wan_fail(WAN_ERR_RUNTIME, "CUDA device %d: cudnnSetStream: %s", device, cudnnGetErrorString(ds));
        goto fail;
    }
    if (wan_mm_cache_create(&c->mm)) {
        rc = wan_fail(WAN_ERR_RUNTIME, "out of host memory");
        goto fail;
    }
    c->lt_ws_bytes = WAN_LT_WORKSPACE;
    c->lt_ws = wan_cuda_pool_alloc(be, c->lt_ws_bytes, false);
    rc = wan_sdpa_create(c->cudnn, c->stream, sdpa_alloc, sdpa_free, be, &c->sdpa);
    if (rc) {
        wan_error_context(rc, "CUDA device %d: cuDNN attention", device);
        goto fail;
    }
    INIT_CU(cudaStreamSynchronize(c->stream));
    last_stream = c->stream;
    wan_info("CUDA backend: device %d, %s, %d SMs, %.1f GiB, compute capability %d.%d%s", device, prop.name,
             prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, prop.major, prop.minor,
             wan_cuda_debug_sync ? " (WAN_CUDA_DEBUG_SYNC: synchronising after every kernel)" : "");
    *out = be;
    return 0;
fail:
    (void)cudaGetLastError();
    be_destroy(be);
    return rc;
}
