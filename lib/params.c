#include "params.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "error.h"
#include "rng.h"

/* Alignment of every tensor (and of fused groups) in the flat buffer, in elements: 64
 * elements keep bf16 and fp32 tensors 128/256-byte aligned for vectorised kernels and GEMMs. */
#define ALIGN_ELEMS 64

typedef struct {
    wan_param *p;
    int n, cap;
} builder;

/* fuse_next: the next tensor follows this one without alignment padding, so the pair (or the
 * q, k, v triple) is one matrix for a fused GEMM. */
static wan_param *add(builder *b, bool fuse_next, wan_role role, wan_tp_shard shard, wan_init init, int layer,
                      int ndim, const int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 9, 10)));
static wan_param *add(builder *b, bool fuse_next, wan_role role, wan_tp_shard shard, wan_init init, int layer,
                      int ndim, const int64_t *shape, const char *fmt, ...) {
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 256;
        b->p = realloc(b->p, (size_t)b->cap * sizeof *b->p);
    }
    wan_param *p = &b->p[b->n++];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = ndim;
    memcpy(p->shape, shape, (size_t)ndim * sizeof *shape);
    p->role = role;
    p->decay = role == WAN_ROLE_MATRIX;
    p->shard = shard;
    p->init = init;
    p->layer = layer;
    /* stash fuse_next in `present` until layout time */
    p->present = fuse_next;
    return p;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

int64_t wan_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

static void linear(builder *b, bool fuse_w, const char *prefix, int layer, int64_t out, int64_t in,
                   wan_tp_shard wshard, wan_tp_shard bshard, wan_init winit) {
    add(b, fuse_w, WAN_ROLE_MATRIX, wshard, winit, layer, 2, SHAPE(out, in), "%s.weight", prefix);
    add(b, false, WAN_ROLE_BIAS, bshard, WAN_INIT_ZERO, layer, 1, SHAPE(out), "%s.bias", prefix);
}

int wan_params_build(const wan_model_cfg *m, int tp, int tp_rank, int pp, int pp_stage, int zero_ranks,
                     wan_param_set *out) {
    memset(out, 0, sizeof *out);
    if (tp < 1 || tp_rank < 0 || tp_rank >= tp || pp < 1 || pp_stage < 0 || pp_stage >= pp || zero_ranks < 1)
        return wan_fail(WAN_ERR_USAGE, "invalid layout: tp %d (rank %d), pp %d (stage %d), zero ranks %d", tp, tp_rank,
                        pp, pp_stage, zero_ranks);
    if (m->num_heads % tp || m->ffn_dim % tp)
        return wan_fail(WAN_ERR_USAGE, "model.num_heads = %d and model.ffn_dim = %d must be divisible by tp = %d",
                        m->num_heads, m->ffn_dim, tp);
    if (m->num_layers % pp)
        return wan_fail(WAN_ERR_USAGE, "model.num_layers = %d is not divisible by pp = %d", m->num_layers, pp);
    const int64_t D = m->dim, F = m->ffn_dim, pvol = (int64_t)m->patch_size[0] * m->patch_size[1] * m->patch_size[2];
    builder b = {0};
    const wan_tp_shard N = WAN_SHARD_NONE, D0 = WAN_SHARD_DIM0, D1 = WAN_SHARD_DIM1;

    /* Embeddings (pipeline stage 0). Inits follow the official init_weights: every Linear
     * xavier with zero bias, then the text and time embeddings' weights normal(0.02). */
    add(&b, false, WAN_ROLE_MATRIX, N, WAN_INIT_XAVIER, -1, 5,
        SHAPE(D, m->in_dim, m->patch_size[0], m->patch_size[1], m->patch_size[2]), "patch_embedding.weight");
    add(&b, false, WAN_ROLE_BIAS, N, WAN_INIT_ZERO, -1, 1, SHAPE(D), "patch_embedding.bias");
    linear(&b, false, "text_embedding.0", -1, D, m->text_dim, N, N, WAN_INIT_NORMAL02);
    linear(&b, false, "text_embedding.2", -1, D, D, N, N, WAN_INIT_NORMAL02);
    linear(&b, false, "time_embedding.0", -1, D, m->freq_dim, N, N, WAN_INIT_NORMAL02);
    linear(&b, false, "time_embedding.2", -1, D, D, N, N, WAN_INIT_NORMAL02);
    linear(&b, false, "time_projection.1", -1, 6 * D, D, N, N, WAN_INIT_XAVIER);

    for (int l = 0; l < m->num_layers; l++) {
        char pre[64];
        add(&b, false, WAN_ROLE_MODULATION, N, WAN_INIT_RANDN_SQRT_DIM, l, 3, SHAPE(1, 6, D), "blocks.%d.modulation", l);
        /* q, k, v weights then biases, each group contiguous (split by heads over tp) */
        for (int i = 0; i < 3; i++)
            add(&b, i < 2, WAN_ROLE_MATRIX, D0, WAN_INIT_XAVIER, l, 2, SHAPE(D, D), "blocks.%d.self_attn.%c.weight", l,
                "qkv"[i]);
        for (int i = 0; i < 3; i++)
            add(&b, i < 2, WAN_ROLE_BIAS, D0, WAN_INIT_ZERO, l, 1, SHAPE(D), "blocks.%d.self_attn.%c.bias", l, "qkv"[i]);
        snprintf(pre, sizeof pre, "blocks.%d.self_attn.o", l);
        linear(&b, false, pre, l, D, D, D1, N, WAN_INIT_XAVIER);
        add(&b, false, WAN_ROLE_NORM, D0, WAN_INIT_ONE, l, 1, SHAPE(D), "blocks.%d.self_attn.norm_q.weight", l);
        add(&b, false, WAN_ROLE_NORM, D0, WAN_INIT_ONE, l, 1, SHAPE(D), "blocks.%d.self_attn.norm_k.weight", l);
        add(&b, false, WAN_ROLE_NORM, N, WAN_INIT_ONE, l, 1, SHAPE(D), "blocks.%d.norm3.weight", l);
        add(&b, false, WAN_ROLE_NORM, N, WAN_INIT_ZERO, l, 1, SHAPE(D), "blocks.%d.norm3.bias", l);
        snprintf(pre, sizeof pre, "blocks.%d.cross_attn.q", l);
        linear(&b, false, pre, l, D, D, D0, D0, WAN_INIT_XAVIER);
        /* cross-attention k, v weights then biases contiguous: one GEMM over the text */
        for (int i = 0; i < 2; i++)
            add(&b, i < 1, WAN_ROLE_MATRIX, D0, WAN_INIT_XAVIER, l, 2, SHAPE(D, D), "blocks.%d.cross_attn.%c.weight", l,
                "kv"[i]);
        for (int i = 0; i < 2; i++)
            add(&b, i < 1, WAN_ROLE_BIAS, D0, WAN_INIT_ZERO, l, 1, SHAPE(D), "blocks.%d.cross_attn.%c.bias", l, "kv"[i]);
        snprintf(pre, sizeof pre, "blocks.%d.cross_attn.o", l);
        linear(&b, false, pre, l, D, D, D1, N, WAN_INIT_XAVIER);
        add(&b, false, WAN_ROLE_NORM, D0, WAN_INIT_ONE, l, 1, SHAPE(D), "blocks.%d.cross_attn.norm_q.weight", l);
        add(&b, false, WAN_ROLE_NORM, D0, WAN_INIT_ONE, l, 1, SHAPE(D), "blocks.%d.cross_attn.norm_k.weight", l);
        snprintf(pre, sizeof pre, "blocks.%d.ffn.0", l);
        linear(&b, false, pre, l, F, D, D0, D0, WAN_INIT_XAVIER);
        snprintf(pre, sizeof pre, "blocks.%d.ffn.2", l);
        linear(&b, false, pre, l, D, F, D1, N, WAN_INIT_XAVIER);
    }
    /* Head (last pipeline stage): zero weight as in the official init. */
    add(&b, false, WAN_ROLE_MATRIX, N, WAN_INIT_ZERO, -1, 2, SHAPE(m->out_dim * pvol, D), "head.head.weight");
    add(&b, false, WAN_ROLE_BIAS, N, WAN_INIT_ZERO, -1, 1, SHAPE(m->out_dim * pvol), "head.head.bias");
    add(&b, false, WAN_ROLE_MODULATION, N, WAN_INIT_RANDN_SQRT_DIM, -1, 3, SHAPE(1, 2, D), "head.modulation");

    /* Pipeline stages: embeddings on stage 0, the head on the last, blocks in equal chunks
     * (with virtual stages the chunks interleave; vp is applied by the pipeline schedule). */
    int per_stage = m->num_layers / pp;
    int64_t off = 0;
    bool prev_fused = false;
    for (int i = 0; i < b.n; i++) {
        wan_param *p = &b.p[i];
        bool fuse_next = p->present;
        if (p->layer >= 0) p->stage = p->layer / per_stage;
        else p->stage = strncmp(p->name, "head.", 5) ? 0 : pp - 1;
        p->present = p->stage == pp_stage;
        memcpy(p->local_shape, p->shape, sizeof p->shape);
        int sd = p->shard == WAN_SHARD_DIM0 ? 0 : p->shard == WAN_SHARD_DIM1 ? 1 : -1;
        if (sd >= 0) {
            p->local_shape[sd] = p->shape[sd] / tp;
            p->local_start[sd] = p->local_shape[sd] * tp_rank;
        }
        p->numel = wan_numel(p->ndim, p->local_shape);
        if (!p->present) {
            p->offset = -1;
            prev_fused = false;
            continue;
        }
        if (!prev_fused) off = (off + ALIGN_ELEMS - 1) / ALIGN_ELEMS * ALIGN_ELEMS;
        p->offset = off;
        off += p->numel;
        prev_fused = fuse_next;
    }
    int64_t unit = (int64_t)ALIGN_ELEMS * zero_ranks;
    out->total = (off + unit - 1) / unit * unit;
    out->p = b.p;
    out->n = b.n;
    out->tp = tp, out->tp_rank = tp_rank, out->pp = pp, out->pp_stage = pp_stage;
    return 0;
}

void wan_params_free(wan_param_set *s) {
    free(s->p);
    memset(s, 0, sizeof *s);
}

const wan_param *wan_params_lookup(const wan_param_set *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->p[i].name, name)) return &s->p[i];
    return NULL;
}

const wan_param *wan_params_find(const wan_param_set *s, const char *name) {
    const wan_param *p = wan_params_lookup(s, name);
    return p && p->present ? p : NULL;
}

int64_t wan_params_count_global(const wan_param_set *s) {
    int64_t n = 0;
    for (int i = 0; i < s->n; i++) n += wan_numel(s->p[i].ndim, s->p[i].shape);
    return n;
}

float wan_param_init_value(const wan_param *p, uint64_t seed, int64_t index) {
    uint32_t tag = XXH32(p->name, strlen(p->name), 0);
    switch (p->init) {
    case WAN_INIT_ZERO: return 0.0f;
    case WAN_INIT_ONE: return 1.0f;
    case WAN_INIT_NORMAL02: return 0.02f * wan_rand_normal(seed, WAN_RNG_INIT, 0, tag, (uint64_t)index);
    case WAN_INIT_RANDN_SQRT_DIM:
        return wan_rand_normal(seed, WAN_RNG_INIT, 0, tag, (uint64_t)index) / sqrtf((float)p->shape[p->ndim - 1]);
    case WAN_INIT_XAVIER: {
        double fan_out = (double)p->shape[0], fan_in = (double)wan_numel(p->ndim - 1, p->shape + 1);
        double a = sqrt(6.0 / (fan_in + fan_out));
        return (float)((2.0 * wan_rand_uniform(seed, WAN_RNG_INIT, 0, tag, (uint64_t)index) - 1.0) * a);
    }
    }
    return 0.0f;
}

/* Row-major index of a local element in the global tensor. */
static int64_t global_index(const wan_param *p, int64_t local) {
    int64_t idx[WAN_MAX_DIMS];
    for (int d = p->ndim - 1; d >= 0; d--) {
        idx[d] = local % p->local_shape[d] + p->local_start[d];
        local /= p->local_shape[d];
    }
    int64_t g = 0;
    for (int d = 0; d < p->ndim; d++) g = g * p->shape[d] + idx[d];
    return g;
}

void wan_params_init_host(const wan_param_set *s, uint64_t seed, float *buf) {
    memset(buf, 0, (size_t)s->total * sizeof *buf);
    for (int i = 0; i < s->n; i++) {
        const wan_param *p = &s->p[i];
        if (!p->present) continue;
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < p->numel; j++) buf[p->offset + j] = wan_param_init_value(p, seed, global_index(p, j));
    }
}

void wan_zero_range(int64_t total, int k, int r, int64_t *lo, int64_t *hi) {
    int64_t chunk = total / k; /* total is padded to a multiple of k */
    *lo = chunk * r;
    *hi = *lo + chunk;
}
