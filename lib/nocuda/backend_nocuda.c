/* Built with CUDA=0: the CUDA backend and NCCL transport say so instead of failing obscurely. */
#include "bootstrap.h"
#include "error.h"
#include "ops.h"

int wan_backend_cuda(int device, wan_backend **out) {
    (void)device;
    *out = 0;
    return wan_fail(WAN_ERR_USAGE,
                    "train.device = \"cuda\", but this build has no CUDA backend (built with CUDA=0; "
                    "rebuild with the CUDA toolkit installed, or use train.device = \"cpu\")");
}

int wan_comm_nccl_create(wan_bootstrap *b, int device, int timeout_s, void *stream, wan_comm **out) {
    (void)b, (void)device, (void)timeout_s, (void)stream;
    *out = 0;
    return wan_fail(WAN_ERR_USAGE, "NCCL transport unavailable: built with CUDA=0");
}
