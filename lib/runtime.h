/* What every multi-rank program sets up the same way: bootstrap (srun PMI2, --nproc fork or a
 * single process), the backend of train.device for this rank, the transport (shared memory on
 * CPU, NCCL on GPUs) and the process grid of the configuration's layout. */
#ifndef WAN_RUNTIME_H
#define WAN_RUNTIME_H

#include "bootstrap.h"
#include "config.h"
#include "dist.h"
#include "ops.h"

typedef struct {
    wan_bootstrap boot;
    wan_backend *be;
    wan_comm *comm;
    wan_dist dist;
} wan_runtime;

/* cfg must be loaded; it is validated against the world size found here. */
int wan_runtime_init(wan_runtime *rt, wan_config *cfg, int nproc);
void wan_runtime_fini(wan_runtime *rt);

#endif
