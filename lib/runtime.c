#include "runtime.h"

#include <string.h>
#include <unistd.h>

#include "error.h"
#include "log.h"

int wan_runtime_init(wan_runtime *rt, wan_config *cfg, int nproc) {
    memset(rt, 0, sizeof *rt);
    WAN_TRY(wan_bootstrap_init(&rt->boot, nproc));
    wan_log_set_rank(rt->boot.size > 1 ? rt->boot.rank : -1);
    WAN_TRY(wan_config_validate(cfg, rt->boot.size));
    bool cuda = !strcmp(cfg->train.device, "cuda");
    if (cuda) WAN_TRY(wan_backend_cuda(rt->boot.local_rank, &rt->be));
    else {
        int threads = cfg->train.threads;
        if (threads <= 0) {
            long cores = sysconf(_SC_NPROCESSORS_ONLN);
            threads = (int)(cores / (rt->boot.local_size > 0 ? rt->boot.local_size : 1));
            if (threads < 1) threads = 1;
        }
        rt->be = wan_backend_cpu(threads);
    }
    if (cuda) WAN_TRY(wan_comm_nccl_create(&rt->boot, rt->boot.local_rank, cfg->train.comm_timeout, NULL, &rt->comm));
    else WAN_TRY(wan_comm_shm_create(&rt->boot, cfg->train.comm_timeout, &rt->comm));
    return wan_dist_init(&rt->dist, rt->comm, &cfg->parallel);
}

void wan_runtime_fini(wan_runtime *rt) {
    if (rt->comm) rt->comm->ops->destroy(rt->comm);
    if (rt->be) wan_backend_destroy(rt->be);
    wan_bootstrap_finalize(&rt->boot);
    memset(rt, 0, sizeof *rt);
}
