/* What the CUDA backend offers beyond ops.h (CUDA builds only: code compiled in every build
 * guards its use with #ifdef WAN_CUDA). */
#ifndef WAN_CUDA_BACKEND_H
#define WAN_CUDA_BACKEND_H

#include "ops.h"

/* The cudaStream_t every op of this backend runs on (for wan_comm_nccl_create, CUDA events in
 * benchmarks); NULL when be is not the CUDA backend. */
void *wan_cuda_stream(wan_backend *be);

#endif
