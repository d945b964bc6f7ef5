#include "dist.h"

#include <string.h>

#include "error.h"

int wan_dist_rank_of(const wan_dist *d, int t, int c, int q, int p) {
    return t + d->tp * (c + d->cp * (q + d->dp * p));
}

/* Members of a group: vary the coordinates selected by `vary` (in order tp, cp, dp, pp; the
 * first listed varies fastest), keep the others at this rank's values. */
static int make(wan_dist *d, wan_group *g, const char *name, bool vt, bool vc, bool vd, bool vp) {
    int ranks[1024], n = 0, index = 0, stride = 1;
    int nt = vt ? d->tp : 1, nc = vc ? d->cp : 1, nd = vd ? d->dp : 1, np = vp ? d->pp : 1;
    if (nt * nc * nd * np > 1024) return wan_fail(WAN_ERR_USAGE, "group %s larger than 1024 ranks", name);
    for (int p = 0; p < np; p++)
        for (int q = 0; q < nd; q++)
            for (int c = 0; c < nc; c++)
                for (int t = 0; t < nt; t++)
                    ranks[n++] = wan_dist_rank_of(d, vt ? t : d->tp_rank, vc ? c : d->cp_rank, vd ? q : d->dp_rank,
                                                  vp ? p : d->pp_rank);
    /* index among groups of this kind: the fixed coordinates, mixed-radix */
    int coords[4] = {d->tp_rank, d->cp_rank, d->dp_rank, d->pp_rank}, sizes[4] = {d->tp, d->cp, d->dp, d->pp};
    bool vary[4] = {vt, vc, vd, vp};
    for (int i = 0; i < 4; i++)
        if (!vary[i]) {
            index += coords[i] * stride;
            stride *= sizes[i];
        }
    return d->comm->ops->make_group(d->comm, g, name, index, ranks, n);
}

int wan_dist_init(wan_dist *d, wan_comm *comm, const wan_parallel_cfg *par) {
    memset(d, 0, sizeof *d);
    d->comm = comm;
    d->world = comm->size;
    d->rank = comm->rank;
    d->tp = par->tp, d->cp = par->cp, d->pp = par->pp;
    int mp = d->tp * d->cp * d->pp;
    if (d->world % mp)
        return wan_fail(WAN_ERR_USAGE, "the world of %d ranks is not divisible by tp * cp * pp = %d", d->world, mp);
    d->dp = d->world / mp;
    d->sp = par->sp && d->tp > 1;
    int r = d->rank;
    d->tp_rank = r % d->tp;
    r /= d->tp;
    d->cp_rank = r % d->cp;
    r /= d->cp;
    d->dp_rank = r % d->dp;
    d->pp_rank = r / d->dp;
    /* every rank creates every group kind in the same order (collective) */
    WAN_TRY(make(d, &d->tp_g, "tp", true, false, false, false));
    WAN_TRY(make(d, &d->cp_g, "cp", false, true, false, false));
    WAN_TRY(make(d, &d->dp_g, "dp", false, false, true, false));
    WAN_TRY(make(d, &d->pp_g, "pp", false, false, false, true));
    WAN_TRY(make(d, &d->dpcp_g, "dpcp", false, true, true, false));
    WAN_TRY(make(d, &d->mp_g, "mp", true, false, false, true));
    return 0;
}
