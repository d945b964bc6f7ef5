/* Device memory one rank of a training layout needs, before any job starts: the model is
 * described for a rank of each pipeline stage (no allocation) and its activation sets measured
 * with the layout the allocator uses, so the figures are the allocations wan-train makes. */
#include "memory_plan.h"

#include <string.h>

#include "error.h"
#include "model_internal.h"

/* The plan with `recompute_layers` blocks of the stage recomputing (-1: all). */
static int plan_with(const wan_config *cfg, int world, bool cuda, int stage, int recompute_layers,
                     wan_memory_plan_t *out) {
    const wan_parallel_cfg *par = &cfg->parallel;
    const wan_train_cfg *t = &cfg->train;
    memset(out, 0, sizeof *out);
    int mp = par->tp * par->cp * par->pp;
    if (mp <= 0 || world % mp || stage < 0 || stage >= par->pp)
        return wan_fail(WAN_ERR_USAGE, "memory plan: %d ranks do not fit tp %d x cp %d x pp %d (stage %d)", world, par->tp,
                        par->cp, par->pp, stage);
    if (!t->latent_shape[0] || !t->latent_shape[1] || !t->latent_shape[2])
        return wan_fail(WAN_ERR_USAGE, "memory plan: train.latent_shape is [0, 0, 0] (taken from the data): set it to "
                        "the latents' [frames, height, width]");
    /* a rank at tp, cp, dp position 0 of the stage: every member of a stage holds the same sizes
     * (ZeRO slices are equal; the head and embeddings are replicated over tp) */
    wan_dist d = {.world = world, .tp = par->tp, .cp = par->cp, .pp = par->pp, .dp = world / mp, .pp_rank = stage,
                  .sp = par->sp && par->tp > 1};
    d.dpcp_g.size = d.dp * d.cp;
    wan_backend be = {.name = cuda ? "cuda" : "cpu", .act = cuda ? WAN_BF16 : WAN_F32, .param = cuda ? WAN_BF16 : WAN_F32};
    wan_model m;
    WAN_TRY(wan_model_describe(&m, &cfg->model, &be, &d, wan_recompute_of(t), recompute_layers, true));
    int rc = wan_shape_compute(&m, t->mbs, cfg->model.in_dim, t->latent_shape[0], t->latent_shape[1], t->latent_shape[2],
                               &m.sh);
    if (!rc) {
        size_t np = (size_t)m.ps.total;
        out->stage = stage;
        out->blocks = m.l1 - m.l0;
        out->recomputing = wan_model_blocks_recomputing(&m);
        out->params = (int64_t)np;
        out->weights = wan_align256(np * wan_dtype_size(be.param));
        out->grads = wan_align256(np * sizeof(float));
        out->optimizer = m.state_bytes - out->weights - out->grads;
        out->state = m.state_bytes;
        wan_model_measure_acts(&m, &out->per_microbatch, &out->shared);
        out->inbox = wan_pipe_inbox_bytes(&m, &m.sh);
        out->in_flight = wan_1f1b_in_flight(par->pp, stage, t->gbs / (t->mbs * d.dp));
        out->activations = (size_t)out->in_flight * out->per_microbatch + out->shared + out->inbox;
        out->total = out->state + out->activations;
    }
    wan_model_destroy(&m);
    return rc;
}

/* The train.recompute_layers the stage runs with: the configured one, or with
 * train.memory_budget_gib (recompute on, recompute_layers = -1) the fewest recomputing blocks
 * whose plan fits the budget (all of them when none does). */
static int recompute_layers_for(const wan_config *cfg, int world, bool cuda, int stage, int *layers) {
    const wan_train_cfg *t = &cfg->train;
    *layers = t->recompute_layers;
    if (!t->recompute || t->recompute_layers >= 0 || t->memory_budget_gib <= 0) return 0;
    /* the fewest that fit, counted up: the first recomputing block costs its input and the shared set
     * (about one block's activations), so the plan is not monotone at the start */
    size_t budget = (size_t)(t->memory_budget_gib * 1073741824.0);
    int n = cfg->model.num_layers / (cfg->parallel.pp > 0 ? cfg->parallel.pp : 1), lo = 0;
    wan_memory_plan_t p;
    for (; lo < n; lo++) {
        WAN_TRY(plan_with(cfg, world, cuda, stage, lo, &p));
        if (p.total <= budget) break;
    }
    *layers = lo; /* n: all of them, fitting or not (--check warns) */
    return 0;
}

int wan_memory_plan(const wan_config *cfg, int world, bool cuda, int stage, wan_memory_plan_t *out) {
    int layers;
    WAN_TRY(recompute_layers_for(cfg, world, cuda, stage, &layers));
    return plan_with(cfg, world, cuda, stage, layers, out);
}
