#include "blas_kernels.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

char *openblas_get_corename(void);

const char *wan_blas_kernels(void) { return openblas_get_corename(); }

static const char *best_coretype(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    if (__builtin_cpu_supports("avx")) return "SandyBridge";
    return NULL;
}

void wan_blas_ensure_kernels(char **argv) {
    if (getenv("OPENBLAS_CORETYPE")) return;
    const char *now = openblas_get_corename();
    if (!now || strcmp(now, "Prescott")) return; /* OpenBLAS recognised the CPU */
    const char *best = best_coretype();
    if (!best) return;
    setenv("OPENBLAS_CORETYPE", best, 1);
    execv("/proc/self/exe", argv);
    wan_warn("OpenBLAS uses its generic Prescott kernels on this CPU; restarting with OPENBLAS_CORETYPE=%s failed, "
             "so matrix products run slowly (set it yourself)", best);
}
