/* The process grid: world = tp x cp x dp x pp, rank order tp fastest, then cp, then dp, then
 * pp (Megatron's order), and the groups each rank belongs to. The parallel code in the model
 * and the optimizer talks only to these groups. */
#ifndef WAN_DIST_H
#define WAN_DIST_H

#include <stdbool.h>

#include "comm.h"
#include "config.h"

typedef struct {
    int world, rank;
    int tp, cp, dp, pp;
    int tp_rank, cp_rank, dp_rank, pp_rank;
    bool sp;           /* sequence parallel (with tp > 1) */
    wan_comm *comm;
    wan_group tp_g;    /* same (cp, dp, pp) */
    wan_group cp_g;    /* same (tp, dp, pp) */
    wan_group dp_g;    /* same (tp, cp, pp) */
    wan_group pp_g;    /* same (tp, cp, dp) */
    wan_group dpcp_g;  /* same (tp, pp): gradient reduction and ZeRO shards (cp fastest) */
    wan_group mp_g;    /* same (dp, cp): tp x pp, for the gradient norm */
} wan_dist;

/* Build the grid on an initialised communicator; the layout must fit (validated before). */
int wan_dist_init(wan_dist *d, wan_comm *comm, const wan_parallel_cfg *par);
/* World rank of grid coordinates. */
int wan_dist_rank_of(const wan_dist *d, int tp_rank, int cp_rank, int dp_rank, int pp_rank);

#endif
