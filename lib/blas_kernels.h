/* OpenBLAS chooses its compute kernels when it is loaded. On CPUs newer than its tables (VMs
 * that hide the model, new server parts) it falls back to the generic Prescott kernels, 5 to
 * 10 times slower than the AVX2/AVX-512 ones the CPU has. Programs that do heavy CPU math call
 * this first thing in main: it restarts the program once with OPENBLAS_CORETYPE naming the
 * best kernel family the CPU supports. An explicit OPENBLAS_CORETYPE is always respected. */
#ifndef WAN_BLAS_KERNELS_H
#define WAN_BLAS_KERNELS_H

void wan_blas_ensure_kernels(char **argv);
/* The kernel family in use, e.g. "SkylakeX". */
const char *wan_blas_kernels(void);

#endif
