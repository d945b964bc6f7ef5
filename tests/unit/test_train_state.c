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

/* The tiny model's configuration on a CPU backend, as ZeRO shard `rank` of `shards` (no
 * communication happens at creation, so the dist needs no communicator). */
typedef struct {
    wan_config cfg;
    wan_backend *be;
    wan_dist d;
} fixture;

static bool fixture_init(fixture *f, int shards, int rank) {
    memset(f, 0, sizeof *f);
    wan_config_defaults(&f->cfg);
    f->d.world = f->d.dp = shards;
    f->d.rank = f->d.dp_rank = rank;
    f->d.tp = f->d.cp = f->d.pp = 1;
    f->d.tp_g.size = f->d.cp_g.size = f->d.pp_g.size = f->d.mp_g.size = 1;
    f->d.dp_g.size = f->d.dpcp_g.size = shards;
    f->d.dp_g.rank = f->d.dpcp_g.rank = rank;
    f->be = wan_backend_cpu(1);
    CHECK(f->be != NULL);
    return f->be != NULL;
}

/* A model of the fixture; false (and the check failed) when it cannot be made. */
static bool model_init(fixture *f, wan_model *m, wan_recompute mode, bool with_optimizer) {
    int rc = wan_model_create(m, &f->cfg.model, f->be, &f->d, mode, -1, with_optimizer);
    CHECKF(rc == 0, "%s", wan_errmsg());
    return rc == 0;
}

static void state_fills_buffer(int shards, int rank) {
    fixture f;
    wan_model m;
    wan_optim o;
    if (!fixture_init(&f, shards, rank)) return;
    if (model_init(&f, &m, WAN_RECOMPUTE_NONE, true)) {
        size_t before = m.state_used;
        int rc = wan_optim_create(&o, &m, &f.cfg.train);
        CHECKF(rc == 0, "%s", wan_errmsg());
        if (!rc) {
            size_t np = (size_t)m.ps.total, n = (size_t)(o.hi - o.lo);
            CHECK(n > 0 && n < np + 1);
            CHECKF(m.state_used == m.state_bytes, "%zu of %zu state bytes used", m.state_used, m.state_bytes);
            CHECK(m.state_used - before == wan_optim_state_bytes(&m));
            slice s[6] = {{"weights", (uintptr_t)m.w, (uintptr_t)m.w + np * wan_dtype_size(f.be->param)},
                          {"gradients", (uintptr_t)m.g, (uintptr_t)(m.g + np)},
                          {"master", (uintptr_t)o.master, (uintptr_t)(o.master + n)},
                          {"mom1", (uintptr_t)o.mom1, (uintptr_t)(o.mom1 + n)},
                          {"mom2", (uintptr_t)o.mom2, (uintptr_t)(o.mom2 + n)},
                          {"scratch", (uintptr_t)o.scratch, (uintptr_t)(o.scratch + 4 * f.d.world)}};
            /* the reductions land in this shard's own slice of the gradients: no copy of it */
            CHECK(o.gshard == m.g + o.lo);
            check_slices(&m, s, 6);
            /* the masters start from this shard's weights */
            CHECK(o.master[0] == ((float *)m.w)[o.lo] && o.master[n - 1] == ((float *)m.w)[o.hi - 1]);
            wan_optim_destroy(&o);
        }
        wan_model_destroy(&m);
    }
    f.be->destroy(f.be);
}

static void test_one_rank(void) { state_fills_buffer(1, 0); }
static void test_zero_shard_last_of_three(void) { state_fills_buffer(3, 2); }

static void test_no_room_no_optimizer(void) {
    fixture f;
    wan_model m;
    wan_optim o;
    if (!fixture_init(&f, 1, 0)) return;
    if (model_init(&f, &m, WAN_RECOMPUTE_NONE, false)) {
        CHECK(m.state_used == m.state_bytes);
        CHECK(wan_optim_create(&o, &m, &f.cfg.train) != 0);
        CHECKF(strstr(wan_errmsg(), "without room for the optimizer") != NULL, "message: %s", wan_errmsg());
        wan_optim_destroy(&o);
        wan_model_destroy(&m);
    }
    f.be->destroy(f.be);
}

/* Micro-batches in flight (pipeline) each keep their own activations but share the scratch and,
 * with recompute, the rebuilt block activations: a second set costs its own part only. */
static void test_activation_sets_share_scratch(void) {
    fixture f;
    wan_model m;
    if (!fixture_init(&f, 1, 0)) return;
    const int *ls = f.cfg.train.latent_shape, C = f.cfg.model.in_dim;
    size_t own_plain = 0;
    for (int r = 0; r < 2; r++) {
        if (!model_init(&f, &m, r ? WAN_RECOMPUTE_KEEP_ATTENTION : WAN_RECOMPUTE_NONE, false)) continue;
        int rc = wan_model_use_slot(&m, 0, 2) || wan_model_set_shape(&m, 1, C, ls[0], ls[1], ls[2]);
        size_t own = m.arena_bytes, shared = m.shared_bytes;
        rc = rc || wan_model_use_slot(&m, 1, 2) || wan_model_set_shape(&m, 1, C, ls[0], ls[1], ls[2]);
        CHECKF(rc == 0, "%s", wan_errmsg());
        CHECK(own > 0 && shared > 0 && m.arena_bytes == own && m.shared_bytes == shared);
        CHECKF(wan_model_activation_bytes(&m) == 2 * own + shared, "%zu bytes for two sets of %zu + %zu shared",
               wan_model_activation_bytes(&m), own, shared);
        /* recompute moves the block activations from each set to the shared part */
        if (!r) own_plain = own;
        else CHECKF(own < own_plain, "own part %zu with recompute, %zu without", own, own_plain);
        wan_model_destroy(&m);
    }
    f.be->destroy(f.be);
}

int main(void) {
    RUN(test_one_rank);
    RUN(test_zero_shard_last_of_three);
    RUN(test_no_room_no_optimizer);
    RUN(test_activation_sets_share_scratch);
    return test_summary();
}
