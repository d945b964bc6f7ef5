#include "optim.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "model_internal.h"

static void add_segments(wan_optim *o) {
    const wan_param_set *ps = &o->m->ps;
    o->seg = calloc((size_t)ps->n, sizeof *o->seg);
    for (int i = 0; i < ps->n; i++) {
        const wan_param *p = &ps->p[i];
        if (!p->present) continue;
        int64_t a = p->offset > o->lo ? p->offset : o->lo, b = p->offset + p->numel < o->hi ? p->offset + p->numel : o->hi;
        if (a >= b) continue;
        o->seg[o->nseg++] = (wan_optim_segment){a, b, p->decay,
                                                 p->shard != WAN_SHARD_NONE || o->m->dist->tp_rank == 0, i};
    }
}

/* Bytes of each optimizer buffer, in the order they are taken from the model's state:
 * master, mom1, mom2 [slice], scratch [4 x world]. (The reduced gradients need none: the
 * reductions land in the gradients' own slice.) */
static void state_sizes(const wan_model *m, int64_t *lo, int64_t *hi, size_t sz[4]) {
    const wan_dist *d = m->dist;
    wan_zero_range(m->ps.total, d->dpcp_g.size, d->dpcp_g.rank, lo, hi);
    size_t n = (size_t)(*hi - *lo) * sizeof(float);
    sz[0] = sz[1] = sz[2] = n;
    sz[3] = 4 * (size_t)d->world * sizeof(float);
}

/* Each block's run of the flat buffer; none anywhere when they are not one run each, in
 * block order (then everything is reduced at the step). */
static int block_ranges(wan_optim *o) {
    wan_model *m = o->m;
    o->l0 = m->l0, o->l1 = m->l1;
    int nb = o->l1 - o->l0 > 0 ? o->l1 - o->l0 : 0;
    o->blk_lo = calloc((size_t)nb + 1, sizeof *o->blk_lo);
    o->blk_hi = calloc((size_t)nb + 1, sizeof *o->blk_hi);
    o->blk_started = calloc((size_t)nb + 1, sizeof *o->blk_started);
    if (!o->blk_lo || !o->blk_hi || !o->blk_started) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    bool ok = true;
    for (int b = 0; b < nb; b++) {
        int64_t lo = INT64_MAX, hi = -1;
        for (int i = 0; i < m->ps.n; i++) {
            const wan_param *p = &m->ps.p[i];
            if (!p->present || p->layer != o->l0 + b) continue;
            lo = p->offset < lo ? p->offset : lo;
            hi = p->offset + p->numel > hi ? p->offset + p->numel : hi;
        }
        o->blk_lo[b] = lo, o->blk_hi[b] = hi;
        if (hi < 0 || (b > 0 && lo < o->blk_hi[b - 1])) ok = false;
    }
    /* a run holds nothing but its block's parameters (and alignment padding) */
    for (int i = 0; i < m->ps.n && ok; i++) {
        const wan_param *p = &m->ps.p[i];
        if (!p->present) continue;
        for (int b = 0; b < nb; b++)
            if (p->layer != o->l0 + b && p->offset < o->blk_hi[b] && p->offset + p->numel > o->blk_lo[b]) ok = false;
    }
    if (!ok)
        for (int b = 0; b < nb; b++) o->blk_lo[b] = o->blk_hi[b] = 0;
    /* the weights come back block by block when, besides the blocks' runs, only the head lies
     * after the first block (the forward reads everything else before the blocks) */
    o->wpieces = ok && nb > 0;
    for (int i = 0; i < m->ps.n && o->wpieces; i++) {
        const wan_param *p = &m->ps.p[i];
        if (p->present && p->layer < 0 && p->offset + p->numel > o->blk_lo[0] && strncmp(p->name, "head.", 5))
            o->wpieces = false;
    }
    return 0;
}

/* Start a collective over dp x cp on each piece of [a, b) that one member's slice holds, that
 * member as the root: the gradients' reduction into it (gather false), or the broadcast of its
 * new weights (gather true). */
static int pieces_start(wan_optim *o, wan_optim_pieces *q, int64_t a, int64_t b, bool gather) {
    wan_model *m = o->m;
    wan_group *g = &m->dist->dpcp_g;
    if (g->size == 1) return 0;
    for (int k = 0; k < g->size && a < b; k++) {
        int64_t lo, hi;
        wan_zero_range(m->ps.total, g->size, k, &lo, &hi);
        int64_t x = a > lo ? a : lo, y = b < hi ? b : hi;
        if (x >= y) continue;
        if (q->n == q->cap) {
            int cap = q->cap ? 2 * q->cap : 64;
            wan_comm_req *r = realloc(q->req, (size_t)cap * sizeof *r);
            if (r) q->req = r;
            int64_t *l = realloc(q->lo, (size_t)cap * sizeof *l);
            if (l) q->lo = l;
            if (!r || !l) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
            q->cap = cap;
        }
        q->lo[q->n] = x;
        wan_comm_req *req = &q->req[q->n++];
        size_t psz = wan_dtype_size(m->be->param);
        if (gather)
            WAN_TRY(wan_broadcast_start(g, (char *)m->w + (size_t)x * psz, (size_t)(y - x), m->be->param, k, req));
        else
            WAN_TRY(wan_reduce_start(g, m->g + x, (size_t)(y - x), WAN_F32, k, req));
    }
    return 0;
}

/* The compute waits for the pieces (in the order started) up to the first that starts at or
 * beyond `bound`; the list empties once all were waited for. */
static int pieces_wait(wan_optim *o, wan_optim_pieces *q, int64_t bound) {
    wan_group *g = &o->m->dist->dpcp_g;
    while (q->done < q->n && q->lo[q->done] < bound) WAN_TRY(wan_comm_wait(g, &q->req[q->done++]));
    if (q->done == q->n) q->n = q->done = 0;
    return 0;
}

/* The dp x cp reduction of a range reads the tensor-parallel sums of the same range; they are
 * ordered because wan_model_reduce_tp_grads's allreduces make the compute stream wait for them
 * and every collective starts after the compute so far (comm.h), on whichever NCCL stream. */
int wan_optim_block_grads_done(void *ctx, int layer) {
    wan_optim *o = ctx;
    int b = layer - o->l0;
    WAN_ASSERT(b >= 0 && b < o->l1 - o->l0 && !o->blk_started[b]);
    WAN_TRY(wan_model_reduce_tp_grads(o->m, layer));
    o->blk_started[b] = true;
    return o->blk_lo[b] < o->blk_hi[b] ? pieces_start(o, &o->reduced, o->blk_lo[b], o->blk_hi[b], false) : 0;
}

/* ---------------------------------------------------------------- the weight gather */

int wan_optim_params_needed(void *ctx, int layer) {
    wan_optim *o = ctx;
    int64_t bound = o->m->ps.total;
    if (layer == WAN_PARAMS_BEFORE_BLOCKS && o->l1 > o->l0) bound = o->blk_lo[0];
    if (layer >= o->l0 && layer < o->l1) bound = o->blk_hi[layer - o->l0];
    return pieces_wait(o, &o->gathered, bound);
}

/* Every member's slice of the new weights to every member: one all-gather, or broadcasts from
 * each slice's owner cut at the blocks' bounds too, in buffer order (the forward's order).
 * Same bytes either way. */
static int weights_gather(wan_optim *o) {
    wan_model *m = o->m;
    wan_group *g = &m->dist->dpcp_g;
    size_t psz = wan_dtype_size(m->be->param);
    if (g->size == 1) return 0;
    if (!o->wpieces)
        return wan_allgather(g, m->w, (char *)m->w + (size_t)o->lo * psz, (size_t)(o->hi - o->lo), m->be->param);
    int64_t at = 0;
    for (int b = 0; b < o->l1 - o->l0; b++) {
        WAN_TRY(pieces_start(o, &o->gathered, at, o->blk_lo[b], true));
        WAN_TRY(pieces_start(o, &o->gathered, o->blk_lo[b], o->blk_hi[b], true));
        at = o->blk_hi[b];
    }
    WAN_TRY(pieces_start(o, &o->gathered, at, m->ps.total, true));
    if (o->step == 1)
        wan_info("weight gather over dp x cp (%d ranks): %d pieces, each waited for by the forward that reads it",
                 g->size, o->gathered.n);
    return 0;
}

/* ---------------------------------------------------------------- the gradient reduction */

/* Forget this step's early reductions (after the wait, or after a failure ended the step). */
static void reduce_reset(wan_optim *o) {
    o->reduced.n = o->reduced.done = 0;
    for (int b = 0; b < o->l1 - o->l0; b++) o->blk_started[b] = false;
}

/* What the blocks did not start: their tensor-parallel sums, then every gap between started
 * runs over dp x cp; then wait for all of it. */
static int reduce_rest(wan_optim *o) {
    wan_model *m = o->m;
    for (int l = o->l0; l < o->l1; l++)
        if (!o->blk_started[l - o->l0]) WAN_TRY(wan_model_reduce_tp_grads(m, l));
    WAN_TRY(wan_model_reduce_tp_grads(m, -1));
    int early = 0;
    for (int b = 0; b < o->l1 - o->l0; b++) early += o->blk_started[b] && o->blk_lo[b] < o->blk_hi[b];
    if (o->step == 0 && m->dist->dpcp_g.size > 1)
        wan_info("gradient reduction over dp x cp (%d ranks): %d of %d blocks started under the backward",
                 m->dist->dpcp_g.size, early, o->l1 - o->l0);
    int64_t at = 0;
    for (int b = 0; b < o->l1 - o->l0; b++) {
        if (!o->blk_started[b] || o->blk_lo[b] >= o->blk_hi[b]) continue;
        WAN_TRY(pieces_start(o, &o->reduced, at, o->blk_lo[b], false));
        at = o->blk_hi[b];
    }
    WAN_TRY(pieces_start(o, &o->reduced, at, m->ps.total, false));
    WAN_TRY(pieces_wait(o, &o->reduced, m->ps.total));
    reduce_reset(o);
    return 0;
}

size_t wan_optim_state_bytes(const wan_model *m) {
    int64_t lo, hi;
    size_t sz[4], total = 0;
    state_sizes(m, &lo, &hi, sz);
    for (int i = 0; i < 4; i++) total += wan_align256(sz[i]); /* as wan_model_state_take rounds */
    return total;
}

int wan_optim_create(wan_optim *o, wan_model *m, const wan_train_cfg *t) {
    memset(o, 0, sizeof *o);
    o->m = m;
    o->cfg = t->optimizer;
    o->sched = t->schedule;
    o->total_steps = t->steps;
    size_t sz[4];
    state_sizes(m, &o->lo, &o->hi, sz);
    o->master = wan_model_state_take(m, sz[0]);
    o->mom1 = wan_model_state_take(m, sz[1]);
    o->mom2 = wan_model_state_take(m, sz[2]);
    o->gshard = m->g + o->lo;
    o->scratch = wan_model_state_take(m, sz[3]);
    if (!o->master || !o->mom1 || !o->mom2 || !o->scratch)
        return wan_fail(WAN_ERR_RUNTIME, "wan_optim_create: the model was created without room for the optimizer "
                        "state (with_optimizer = false)");
    add_segments(o);
    WAN_TRY(block_ranges(o));
    wan_optim_reset_masters(o);
    return 0;
}

void wan_optim_reset_masters(wan_optim *o) {
    wan_backend *be = o->m->be;
    be->convert(be, o->master, WAN_F32, (char *)o->m->w + (size_t)o->lo * wan_dtype_size(be->param), be->param,
                (size_t)(o->hi - o->lo));
}

/* The buffers belong to the model's state allocation, freed with the model. */
void wan_optim_destroy(wan_optim *o) {
    /* reductions a failed step left in flight write into the gradients: let them finish */
    if (o->m && (o->reduced.n || o->gathered.n)) (void)wan_comm_flush(o->m->dist->comm);
    free(o->seg);
    free(o->blk_lo), free(o->blk_hi), free(o->blk_started);
    free(o->reduced.req), free(o->reduced.lo), free(o->gathered.req), free(o->gathered.lo);
    memset(o, 0, sizeof *o);
}

double wan_optim_lr(const wan_optim *o, int step) {
    double peak = o->cfg.lr;
    int warm = o->sched.warmup_steps;
    if (warm > 0 && step <= warm) return peak * step / warm;
    if (!strcmp(o->sched.kind, "cosine")) {
        int span = o->sched.decay_steps ? o->sched.decay_steps : o->total_steps - warm;
        double prog = span > 0 ? (double)(step - warm) / span : 1.0;
        if (prog > 1) prog = 1;
        return o->sched.min_lr + (peak - o->sched.min_lr) * 0.5 * (1.0 + cos(M_PI * prog));
    }
    return peak;
}

/* Sum a double over a group exactly and in a fixed order: every member's value travels as a
 * (hi, lo) float pair and is added up in member order on every rank. */
static int sum_double(wan_optim *o, wan_group *g, double *v) {
    if (g->size == 1) return 0;
    wan_backend *be = o->m->be;
    float pair[2] = {(float)*v, 0};
    pair[1] = (float)(*v - (double)pair[0]);
    float *send = o->scratch, *recv = o->scratch + 2;
    be->upload(be, send, pair, sizeof pair);
    WAN_TRY(wan_allgather(g, recv, send, 2, WAN_F32));
    float *all = malloc((size_t)g->size * 2 * sizeof(float));
    be->download(be, all, recv, (size_t)g->size * 2 * sizeof(float));
    double s = 0;
    for (int i = 0; i < g->size; i++) s += (double)all[2 * i] + (double)all[2 * i + 1];
    free(all);
    *v = s;
    return 0;
}

int wan_optim_step(wan_optim *o, double *grad_norm, double *lr_out) {
    wan_model *m = o->m;
    wan_backend *be = m->be;
    wan_dist *d = m->dist;
    /* the last step's weights are all in place after a forward; this is for a step without */
    WAN_TRY(pieces_wait(o, &o->gathered, m->ps.total));
    int rrc = reduce_rest(o);
    if (rrc) {
        reduce_reset(o);
        return rrc;
    }

    /* global norm: every element once (tp-replicated tensors counted on tp rank 0), one sum per
     * run of adjacent counted segments (one for the whole shard on tp rank 0): each sum is a
     * device round trip */
    double ss = 0;
    for (int i = 0; i < o->nseg;) {
        if (!o->seg[i].in_norm) {
            i++;
            continue;
        }
        int j = i + 1;
        while (j < o->nseg && o->seg[j].in_norm && o->seg[j].lo == o->seg[j - 1].hi) j++;
        ss += be->ops->sumsq(be, o->gshard + (o->seg[i].lo - o->lo), (size_t)(o->seg[j - 1].hi - o->seg[i].lo));
        i = j;
    }
    WAN_TRY(sum_double(o, &d->dpcp_g, &ss));
    WAN_TRY(sum_double(o, &d->mp_g, &ss));
    double norm = sqrt(ss);
    *grad_norm = norm;
    float clip = 1.0f;
    if (o->cfg.grad_clip > 0 && norm > o->cfg.grad_clip) clip = (float)(o->cfg.grad_clip / (norm + 1e-6));
    if (!isfinite(norm))
        return wan_fail(WAN_ERR_RUNTIME, "step %d: the gradient norm is %g (loss diverged or bad data)", o->step + 1, norm);

    o->step++;
    double lr = wan_optim_lr(o, o->step);
    *lr_out = lr;
    size_t psz = wan_dtype_size(be->param);
    for (int i = 0; i < o->nseg; i++) {
        const wan_optim_segment *s = &o->seg[i];
        size_t off = (size_t)(s->lo - o->lo), len = (size_t)(s->hi - s->lo);
        be->ops->adamw(be, o->master + off, o->mom1 + off, o->mom2 + off, o->gshard + off,
                       (char *)m->w + (size_t)s->lo * psz, len, (float)lr, (float)o->cfg.beta1, (float)o->cfg.beta2,
                       (float)o->cfg.eps, s->decay ? (float)o->cfg.weight_decay : 0.0f, clip, o->step);
    }
    WAN_TRY(weights_gather(o));
    be->memset0(be, m->g, (size_t)m->ps.total * sizeof(float));
    return 0;
}
