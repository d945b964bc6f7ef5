/* The CPU backend: host memory with accounting, the thread setting, and the table of fp32 ops
 * (implemented in ops_cpu_*.c). This is the reference every other backend is checked against. */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "ops_cpu_internal.h"

#define CPU_ALIGN 64

void cpu_use_threads(const wan_backend *be) {
    int n = cpu_threads(be);
    /* OpenBLAS's OpenMP build follows the caller's OpenMP setting: this sets both to 1 ... */
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
    /* ... and our own regions get the backend's threads back. */
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
}

void *cpu_scratch(size_t bytes) {
    size_t rounded = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    void *p = aligned_alloc(CPU_ALIGN, rounded ? rounded : CPU_ALIGN);
    if (!p) {
        wan_log(WAN_LOG_ERROR, "out of memory allocating %zu bytes of CPU scratch", bytes);
        abort();
    }
    return p;
}

/* Every allocation carries a header of one cache line holding its size, so free can account
 * for it and the user's pointer keeps 64-byte alignment. */
static void *cpu_alloc(wan_backend *be, size_t bytes) {
    size_t rounded = (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    if (rounded < bytes || rounded > SIZE_MAX - CPU_ALIGN) {
        wan_fail(WAN_ERR_RUNTIME, "CPU backend: allocation of %zu bytes is too large", bytes);
        return NULL;
    }
    unsigned char *base = aligned_alloc(CPU_ALIGN, CPU_ALIGN + rounded);
    if (!base) {
        wan_fail(WAN_ERR_RUNTIME, "CPU backend: out of memory allocating %zu bytes (%zu in use)", bytes,
                 be->mem_now);
        return NULL;
    }
    memcpy(base, &bytes, sizeof bytes);
    memset(base + CPU_ALIGN, 0, rounded);
    size_t now = __atomic_add_fetch(&be->mem_now, bytes, __ATOMIC_RELAXED);
    size_t peak = __atomic_load_n(&be->mem_peak, __ATOMIC_RELAXED);
    while (now > peak && !__atomic_compare_exchange_n(&be->mem_peak, &peak, now, true, __ATOMIC_RELAXED,
                                                      __ATOMIC_RELAXED)) {
    }
    return base + CPU_ALIGN;
}

static void cpu_free(wan_backend *be, void *p) {
    if (!p) return;
    unsigned char *base = (unsigned char *)p - CPU_ALIGN;
    size_t bytes;
    memcpy(&bytes, base, sizeof bytes);
    __atomic_sub_fetch(&be->mem_now, bytes, __ATOMIC_RELAXED);
    free(base);
}

static void cpu_copy(wan_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
}

static void cpu_memset0(wan_backend *be, void *p, size_t bytes) {
    (void)be;
    if (bytes) memset(p, 0, bytes);
}

static void cpu_convert(wan_backend *be, void *dst, wan_dtype dt, const void *src, wan_dtype st, size_t n) {
    (void)be;
    wan_convert(dst, dt, src, st, n);
}

static void cpu_sync(wan_backend *be) { (void)be; }

static void cpu_destroy(wan_backend *be) {
    free(be->impl);
    free(be);
}

/* OpenBLAS 0.3.21 (Debian 12) does not recognise recent CPUs (e.g. Emerald Rapids) and falls
 * back to its Prescott (SSE3) kernels, about 5x slower than the AVX-512 ones. It picks its
 * kernels when it loads, so all we can do is say how to choose them. */
static void check_openblas_kernels(void) {
#if defined(__x86_64__)
    static bool checked;
    if (checked || getenv("OPENBLAS_CORETYPE")) return;
    checked = true;
    static const char *const old_cores[] = {"Prescott", "Core2", "Penryn",     "Dunnington",
                                            "Nehalem",  "Atom",  "Sandybridge"};
    const char *core = openblas_get_corename();
    bool old = false;
    for (size_t i = 0; i < sizeof old_cores / sizeof old_cores[0]; i++)
        old |= core && strcasecmp(core, old_cores[i]) == 0;
    __builtin_cpu_init();
    const char *better = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                         : __builtin_cpu_supports("avx2")  ? "Haswell"
                                                           : NULL;
    if (old && better)
        wan_warn("OpenBLAS did not recognise this CPU and uses its %s kernels: matrix products run "
                 "several times slower than they could; set OPENBLAS_CORETYPE=%s in the environment",
                 core, better);
#endif
}

static const wan_ops cpu_ops = {
    .matmul_fwd = cpu_matmul_fwd,
    .matmul_bwd = cpu_matmul_bwd,
    .matmul_gelu_fwd = cpu_matmul_gelu_fwd,
    .matmul_dgelu_bwd = cpu_matmul_dgelu_bwd,
    .layernorm_fwd = cpu_layernorm_fwd,
    .layernorm_bwd = cpu_layernorm_bwd,
    .rms_sumsq = cpu_rms_sumsq,
    .rms_rope_fwd = cpu_rms_rope_fwd,
    .rms_rope_bwd_dot = cpu_rms_rope_bwd_dot,
    .rms_bwd_dx = cpu_rms_bwd_dx,
    .attention_fwd = cpu_attention_fwd,
    .attention_bwd = cpu_attention_bwd,
    .attention_merge = cpu_attention_merge,
    .gelu_fwd = cpu_gelu_fwd,
    .gelu_bwd = cpu_gelu_bwd,
    .silu_fwd = cpu_silu_fwd,
    .silu_bwd = cpu_silu_bwd,
    .residual_fwd = cpu_residual_fwd,
    .residual_bwd = cpu_residual_bwd,
    .add = cpu_add,
    .add_bcast = cpu_add_bcast,
    .sum_rows = cpu_sum_rows,
    .timestep_embed = cpu_timestep_embed,
    .patchify = cpu_patchify,
    .unpatchify = cpu_unpatchify,
    .flow_loss = cpu_flow_loss,
    .adamw = cpu_adamw,
    .sumsq = cpu_sumsq,
};

wan_backend *wan_backend_cpu(int threads) {
    if (threads < 0) {
        wan_fail(WAN_ERR_USAGE, "CPU backend: threads must be >= 0 (0 = all cores), got %d", threads);
        return NULL;
    }
    if (threads == 0) threads = omp_get_num_procs(); /* the cores this process may run on */
    wan_backend *be = calloc(1, sizeof *be);
    cpu_state *st = calloc(1, sizeof *st);
    if (!be || !st) {
        free(be);
        free(st);
        wan_fail(WAN_ERR_RUNTIME, "CPU backend: out of memory");
        return NULL;
    }
    st->threads = threads;
    be->name = "cpu";
    be->act = WAN_F32;
    be->param = WAN_F32;
    be->ops = &cpu_ops;
    be->alloc = cpu_alloc;
    be->free = cpu_free;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->memset0 = cpu_memset0;
    be->copy = cpu_copy;
    be->convert = cpu_convert;
    be->sync = cpu_sync;
    snprintf(be->device_name, sizeof be->device_name, "CPU (%d thread%s)", threads, threads == 1 ? "" : "s");
    be->device_index = -1;
    be->destroy = cpu_destroy;
    be->impl = st;
    cpu_use_threads(be);
    check_openblas_kernels();
    return be;
}
