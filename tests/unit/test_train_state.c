/* The model's memory. The training state's one allocation: weights, gradients and the
 * optimizer's buffers are slices of the model's state buffer that exactly fill it, aligned and
 * disjoint, for one rank and for a ZeRO shard; a model made without optimizer room refuses an
 * optimizer. Activation sets of micro-batches in flight share their scratch. */
#include <stdint.h>

#include "config.h"
#include "dist.h"
#include "error.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "test.h"

typedef struct {
    const char *name;
    uintptr_t lo, hi;
} slice;

/* Every slice inside [base, base + bytes), at a multiple of 256 bytes from the start (the
 * backend's alloc gives the start 64 bytes on the CPU, 256 on a GPU), none overlapping another. */
static void check_slices(const wan_model *m, const slice *s, int n) {
    uintptr_t base = (uintptr_t)m->state, end = base + m->state_bytes;
    for (int i = 0; i < n; i++) {
        CHECKF(s[i].lo >= base && s[i].hi <= end && s[i].lo < s[i].hi, "%s outside the state buffer", s[i].name);
        CHECKF((s[i].lo - base) % 256 == 0 && s[i].lo % 64 == 0, "%s at offset %zu: not on 256 bytes", s[i].name,
               (size_t)(s[i].lo - base));
        for (int j = 0; j < i; j++)
            CHECKF(s[i].hi <= s[j].lo || s[j].hi <= s[i].lo, "%s overlaps %s", s[i].name, s[j].name);
    }
}

/* A dist of `shards` ZeRO shards seen from shard `rank` (no communication happens at creation). */
static wan_dist fake_dist(int shards, int rank) {
    wan_dist d;
    memset(&d, 0, sizeof d);
    d.world = d.dp = shards;
    d.rank = d.dp_rank = rank;
    d.tp = d.cp = d.pp = 1;
    d.tp_g.size = d.cp_g.size = d.pp_g.size = d.mp_g.size = 1;
    d.dp_g.size = d.dpcp_g.size = shards;
    d.dp_g.rank = d.dpcp_g.rank = rank;
    return d;
}

static void state_fills_buffer(int shards, int rank) {
    wan_config cfg;
    wan_config_defaults(&cfg);
    wan_backend *be = wan_backend_cpu(1);
    wan_dist d = fake_dist(shards, rank);
    wan_model m;
    wan_optim o;
    CHECK(be != NULL);
    if (!be) return;
    int rc = wan_model_create(&m, &cfg.model, be, &d, WAN_RECOMPUTE_NONE, true);
    CHECKF(rc == 0, "%s", wan_errmsg());
    if (rc) return;
    size_t before = m.state_used;
    rc = wan_optim_create(&o, &m, &cfg.train);
    CHECKF(rc == 0, "%s", wan_errmsg());
    if (!rc) {
        size_t np = (size_t)m.ps.total, n = (size_t)(o.hi - o.lo);
        CHECK(n > 0 && n < np + 1);
        CHECKF(m.state_used == m.state_bytes, "%zu of %zu state bytes used", m.state_used, m.state_bytes);
        CHECK(m.state_used - before == wan_optim_state_bytes(&m));
        slice s[7] = {{"weights", (uintptr_t)m.w, (uintptr_t)m.w + np * wan_dtype_size(be->param)},
                      {"gradients", (uintptr_t)m.g, (uintptr_t)(m.g + np)},
                      {"master", (uintptr_t)o.master, (uintptr_t)(o.master + n)},
                      {"mom1", (uintptr_t)o.mom1, (uintptr_t)(o.mom1 + n)},
                      {"mom2", (uintptr_t)o.mom2, (uintptr_t)(o.mom2 + n)},
                      {"scratch", (uintptr_t)o.scratch, (uintptr_t)(o.scratch + 4 * d.world)},
                      {"gshard", (uintptr_t)o.gshard, (uintptr_t)(o.gshard + n)}};
        /* one shard: the reduced gradients are the gradients themselves */
        if (shards == 1) CHECK(o.gshard == m.g);
        check_slices(&m, s, shards == 1 ? 6 : 7);
        /* the masters start from this shard's weights */
        CHECK(o.master[0] == ((float *)m.w)[o.lo] && o.master[n - 1] == ((float *)m.w)[o.hi - 1]);
        wan_optim_destroy(&o);
    }
    wan_model_destroy(&m);
    be->destroy(be);
}

static void test_one_rank(void) { state_fills_buffer(1, 0); }
static void test_zero_shard_last_of_three(void) { state_fills_buffer(3, 2); }

static void test_no_room_no_optimizer(void) {
    wan_config cfg;
    wan_config_defaults(&cfg);
    wan_backend *be = wan_backend_cpu(1);
    wan_dist d = fake_dist(1, 0);
    wan_model m;
    wan_optim o;
    int rc = wan_model_create(&m, &cfg.model, be, &d, WAN_RECOMPUTE_NONE, false);
    CHECK(rc == 0);
    if (rc) return;
    CHECK(m.state_used == m.state_bytes);
    CHECK(wan_optim_create(&o, &m, &cfg.train) != 0);
    CHECKF(strstr(wan_errmsg(), "without room for the optimizer") != NULL, "message: %s", wan_errmsg());
    wan_optim_destroy(&o);
    wan_model_destroy(&m);
    be->destroy(be);
}

/* Micro-batches in flight (pipeline) each keep their own activations but share the scratch and,
 * with recompute, the rebuilt block activations: a second set costs its own part only. */
static void test_activation_sets_share_scratch(void) {
    wan_config cfg;
    wan_config_defaults(&cfg);
    wan_backend *be = wan_backend_cpu(1);
    wan_dist d = fake_dist(1, 0);
    wan_model m;
    const int *ls = cfg.train.latent_shape;
    for (int r = 0; r < 2; r++) {
        wan_recompute mode = r ? WAN_RECOMPUTE_KEEP_ATTENTION : WAN_RECOMPUTE_NONE;
        if (wan_model_create(&m, &cfg.model, be, &d, mode, false)) {
            CHECKF(0, "%s", wan_errmsg());
            continue;
        }
        int rc = wan_model_use_slot(&m, 0, 2) || wan_model_set_shape(&m, 1, cfg.model.in_dim, ls[0], ls[1], ls[2]);
        size_t own = m.arena_bytes, shared = m.shared_bytes;
        rc = rc || wan_model_use_slot(&m, 1, 2) || wan_model_set_shape(&m, 1, cfg.model.in_dim, ls[0], ls[1], ls[2]);
        CHECKF(rc == 0, "%s", wan_errmsg());
        CHECK(own > 0 && shared > 0 && m.arena_bytes == own && m.shared_bytes == shared);
        CHECKF(wan_model_activation_bytes(&m) == 2 * own + shared, "%zu bytes for two sets of %zu + %zu shared",
               wan_model_activation_bytes(&m), own, shared);
        /* recompute moves the block activations from each set to the shared part */
        static size_t own_plain;
        if (!r) own_plain = own;
        else CHECKF(own < own_plain, "own part %zu with recompute, %zu without", own, own_plain);
        wan_model_destroy(&m);
    }
    be->destroy(be);
}

int main(void) {
    RUN(test_one_rank);
    RUN(test_zero_shard_last_of_three);
    RUN(test_no_room_no_optimizer);
    RUN(test_activation_sets_share_scratch);
    return test_summary();
}
