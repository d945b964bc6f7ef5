/* The Wan 2.1 DiT: parameters, activation memory, embeddings, head and loss; the blocks are
 * in model_block.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "model_internal.h"
#include "optim.h"

/* Offset of a parameter in this rank's buffer; -1 for one on another pipeline stage. */
static int64_t off_of(const wan_model *m, const char *name, int *missing) {
    const wan_param *p = wan_params_lookup(&m->ps, name);
    if (!p) {
        (*missing)++;
        return 0;
    }
    return p->present ? p->offset : -1;
}

static int64_t off_block(const wan_model *m, int l, const char *suffix, int *missing) {
    char name[96];
    snprintf(name, sizeof name, "blocks.%d.%s", l, suffix);
    return off_of(m, name, missing);
}

void *wan_model_state_take(wan_model *m, size_t bytes) {
    size_t n = wan_align256(bytes);
    if (!m->state || m->state_used + n > m->state_bytes) return NULL;
    void *p = (char *)m->state + m->state_used;
    m->state_used += n;
    return p;
}

int wan_model_describe(wan_model *m, const wan_model_cfg *cfg, wan_backend *be, wan_dist *dist, wan_recompute recompute,
                       int recompute_layers, bool with_optimizer) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->be = be;
    m->dist = dist;
    m->recompute = recompute;
    m->recompute_layers = recompute_layers;
    WAN_TRY(wan_params_build(cfg, dist->tp, dist->tp_rank, dist->pp, dist->pp_rank, dist->dp * dist->cp, &m->ps));
    int per_stage = cfg->num_layers / dist->pp; /* wan_params_build checked that it divides */
    m->l0 = dist->pp_rank * per_stage;
    m->l1 = m->l0 + per_stage;
    m->first = dist->pp_rank == 0;
    m->last = dist->pp_rank == dist->pp - 1;
    m->D = cfg->dim;
    m->Dl = cfg->dim / dist->tp;
    m->Fl = cfg->ffn_dim / dist->tp;
    m->Hl = cfg->num_heads / dist->tp;
    m->hd = cfg->dim / cfg->num_heads;
    m->attn_scale = 1.0f / sqrtf((float)m->hd);
    m->L = cfg->text_len;
    m->Ct = cfg->text_dim;
    int pvol = cfg->patch_size[0] * cfg->patch_size[1] * cfg->patch_size[2];
    m->P_in = cfg->in_dim * pvol;
    m->P_out = cfg->out_dim * pvol;

    int missing = 0;
    m->o_patch_w = off_of(m, "patch_embedding.weight", &missing);
    m->o_patch_b = off_of(m, "patch_embedding.bias", &missing);
    m->o_txt0_w = off_of(m, "text_embedding.0.weight", &missing);
    m->o_txt0_b = off_of(m, "text_embedding.0.bias", &missing);
    m->o_txt2_w = off_of(m, "text_embedding.2.weight", &missing);
    m->o_txt2_b = off_of(m, "text_embedding.2.bias", &missing);
    m->o_te0_w = off_of(m, "time_embedding.0.weight", &missing);
    m->o_te0_b = off_of(m, "time_embedding.0.bias", &missing);
    m->o_te2_w = off_of(m, "time_embedding.2.weight", &missing);
    m->o_te2_b = off_of(m, "time_embedding.2.bias", &missing);
    m->o_tp_w = off_of(m, "time_projection.1.weight", &missing);
    m->o_tp_b = off_of(m, "time_projection.1.bias", &missing);
    m->o_head_w = off_of(m, "head.head.weight", &missing);
    m->o_head_b = off_of(m, "head.head.bias", &missing);
    m->o_head_mod = off_of(m, "head.modulation", &missing);
    m->blk = calloc((size_t)cfg->num_layers, sizeof *m->blk);
    for (int l = 0; l < cfg->num_layers; l++) {
        wan_block_offsets *o = &m->blk[l];
        o->mod = off_block(m, l, "modulation", &missing);
        o->qkv_w = off_block(m, l, "self_attn.q.weight", &missing);
        o->qkv_b = off_block(m, l, "self_attn.q.bias", &missing);
        o->o_w = off_block(m, l, "self_attn.o.weight", &missing);
        o->o_b = off_block(m, l, "self_attn.o.bias", &missing);
        o->nq = off_block(m, l, "self_attn.norm_q.weight", &missing);
        o->nk = off_block(m, l, "self_attn.norm_k.weight", &missing);
        o->n3_w = off_block(m, l, "norm3.weight", &missing);
        o->n3_b = off_block(m, l, "norm3.bias", &missing);
        o->cq_w = off_block(m, l, "cross_attn.q.weight", &missing);
        o->cq_b = off_block(m, l, "cross_attn.q.bias", &missing);
        o->ckv_w = off_block(m, l, "cross_attn.k.weight", &missing);
        o->ckv_b = off_block(m, l, "cross_attn.k.bias", &missing);
        o->co_w = off_block(m, l, "cross_attn.o.weight", &missing);
        o->co_b = off_block(m, l, "cross_attn.o.bias", &missing);
        o->cnq = off_block(m, l, "cross_attn.norm_q.weight", &missing);
        o->cnk = off_block(m, l, "cross_attn.norm_k.weight", &missing);
        o->f1_w = off_block(m, l, "ffn.0.weight", &missing);
        o->f1_b = off_block(m, l, "ffn.0.bias", &missing);
        o->f2_w = off_block(m, l, "ffn.2.weight", &missing);
        o->f2_b = off_block(m, l, "ffn.2.bias", &missing);
        /* the fused GEMMs rely on q|k|v and k|v being adjacent in the buffer (this stage's blocks) */
        if (l < m->l0 || l >= m->l1) continue;
        int mm = 0;
        int64_t kw = off_block(m, l, "self_attn.k.weight", &mm), vw = off_block(m, l, "self_attn.v.weight", &mm);
        int64_t kb = off_block(m, l, "self_attn.k.bias", &mm), vb = off_block(m, l, "self_attn.v.bias", &mm);
        int64_t cvw = off_block(m, l, "cross_attn.v.weight", &mm), cvb = off_block(m, l, "cross_attn.v.bias", &mm);
        int64_t wsz = (int64_t)m->Dl * m->D;
        WAN_ASSERT(!mm && kw == o->qkv_w + wsz && vw == kw + wsz && kb == o->qkv_b + m->Dl && vb == kb + m->Dl &&
                   cvw == o->ckv_w + wsz && cvb == o->ckv_b + m->Dl);
    }
    WAN_ASSERT(missing == 0);

    size_t np = (size_t)m->ps.total, wb = np * wan_dtype_size(be->param), gb = np * sizeof(float);
    size_t ob = with_optimizer ? wan_optim_state_bytes(m) : 0;
    m->state_bytes = wan_align256(wb) + wan_align256(gb) + ob;
    return 0;
}

int wan_model_create(wan_model *m, const wan_model_cfg *cfg, wan_backend *be, wan_dist *dist, wan_recompute recompute,
                     int recompute_layers, bool with_optimizer) {
    WAN_TRY(wan_model_describe(m, cfg, be, dist, recompute, recompute_layers, with_optimizer));
    size_t np = (size_t)m->ps.total, wb = np * wan_dtype_size(be->param), gb = np * sizeof(float);
    m->state = be->alloc(be, m->state_bytes); /* zeroed */
    if (!m->state)
        return wan_fail(WAN_ERR_RUNTIME, "out of %s memory: %zu parameters need %.2f GB of training state (weights, "
                        "gradients%s)", be->name, np, (double)m->state_bytes / 1e9, with_optimizer ? ", optimizer" : "");
    m->w = wan_model_state_take(m, wb);
    m->g = wan_model_state_take(m, gb);
    return 0;
}

struct wan_model_slot {
    wan_shape sh;
    void *arena;
    size_t arena_bytes;
    struct wan_model_acts *a;
};

static void free_acts(wan_model *m, void *arena, struct wan_model_acts *a) {
    if (arena) m->be->free(m->be, arena);
    if (a) {
        free(a->blocks);
        free(a->sqsum_host);
        free(a);
    }
}

static void relayout(wan_model *m);

int wan_model_use_slot(wan_model *m, int k, int n) {
    if (n < 1 || k < 0 || k >= n) return wan_fail(WAN_ERR_RUNTIME, "activation set %d of %d", k, n);
    if (n > m->nslots) {
        struct wan_model_slot *s = realloc(m->slots, (size_t)n * sizeof *s);
        if (!s) return wan_fail(WAN_ERR_RUNTIME, "out of host memory");
        memset(s + m->nslots, 0, (size_t)(n - m->nslots) * sizeof *s);
        m->slots = s;
        m->nslots = n;
    }
    if (k == m->slot) return 0;
    m->slots[m->slot] = (struct wan_model_slot){m->sh, m->arena, m->arena_bytes, m->a};
    struct wan_model_slot *s = &m->slots[k];
    m->sh = s->sh, m->arena = s->arena, m->arena_bytes = s->arena_bytes, m->a = s->a;
    *s = (struct wan_model_slot){0};
    m->slot = k;
    if (m->arena) relayout(m); /* the shared arena may have moved since this set last ran */
    return 0;
}

size_t wan_model_activation_bytes(const wan_model *m) {
    size_t n = m->arena_bytes + m->shared_bytes + m->pipe_in_bytes;
    for (int i = 0; i < m->nslots; i++) n += m->slots[i].arena_bytes;
    return n;
}

void wan_model_destroy(wan_model *m) {
    free_acts(m, m->arena, m->a);
    for (int i = 0; i < m->nslots; i++) free_acts(m, m->slots[i].arena, m->slots[i].a);
    free(m->slots);
    if (m->pipe_in) m->be->free(m->be, m->pipe_in);
    if (m->shared) m->be->free(m->be, m->shared);
    if (m->state) m->be->free(m->be, m->state);
    free(m->blk);
    wan_params_free(&m->ps);
    memset(m, 0, sizeof *m);
}

static int params_needed(wan_model *m, int layer) {
    return m->params_needed ? m->params_needed(m->params_ctx, layer) : 0;
}

int wan_model_params_wait(wan_model *m) { return params_needed(m, WAN_PARAMS_ALL); }

void wan_model_get_params(wan_model *m, float *host) {
    (void)wan_model_params_wait(m);
    size_t n = (size_t)m->ps.total;
    if (m->be->param == WAN_F32) {
        m->be->download(m->be, host, m->w, n * sizeof(float));
        return;
    }
    uint16_t *tmp = malloc(n * 2);
    m->be->download(m->be, tmp, m->w, n * 2);
    wan_convert(host, WAN_F32, tmp, m->be->param, n);
    free(tmp);
}

void wan_model_set_params(wan_model *m, const float *host) {
    (void)wan_model_params_wait(m);
    size_t n = (size_t)m->ps.total;
    if (m->be->param == WAN_F32) {
        m->be->upload(m->be, m->w, host, n * sizeof(float));
        return;
    }
    uint16_t *tmp = malloc(n * 2);
    wan_convert(tmp, m->be->param, host, WAN_F32, n);
    m->be->upload(m->be, m->w, tmp, n * 2);
    free(tmp);
}

/* ---------------------------------------------------------------- RoPE table */

void wan_rope_table(int Fp, int Hp, int Wp, int hd, int S_rows, float *cos_out, float *sin_out) {
    /* The official split of the head's hd/2 rotation pairs over (frame, height, width):
     * c = hd/2 pairs -> [c - 2 (c/3), c/3, c/3]; each part uses theta^(-2j/d_part) with
     * d_part = 2 * its pair count, i.e. rope_params(1024, d - 4 (d/6)) and 2 x rope_params(1024,
     * 2 (d/6)) concatenated. */
    int c = hd / 2, nh = c / 3, nf = c - 2 * nh;
    int S = Fp * Hp * Wp;
    for (int p = 0; p < S_rows; p++) {
        int f = 0, h = 0, w = 0;
        bool pad = p >= S;
        if (!pad) {
            f = p / (Hp * Wp);
            h = (p / Wp) % Hp;
            w = p % Wp;
        }
        for (int j = 0; j < c; j++) {
            double pos, jj, dpart;
            if (j < nf) pos = f, jj = j, dpart = 2.0 * nf;
            else if (j < nf + nh) pos = h, jj = j - nf, dpart = 2.0 * nh;
            else pos = w, jj = j - nf - nh, dpart = 2.0 * nh;
            double ang = pad ? 0.0 : pos * pow(10000.0, -2.0 * jj / dpart);
            cos_out[(size_t)p * c + j] = (float)cos(ang);
            sin_out[(size_t)p * c + j] = (float)sin(ang);
        }
    }
}

/* ---------------------------------------------------------------- activation memory */

typedef struct {
    char *base;
    size_t off;
} bump;

static void *take(bump *b, size_t bytes) {
    b->off = wan_align256(b->off);
    void *p = b->base ? b->base + b->off : NULL;
    b->off += bytes;
    return p;
}

/* Lay out every buffer; with base == NULL only measures. `b` takes what a micro-batch keeps
 * from its forward to its backward, `sh` what is rebuilt or used within one block's forward or
 * backward (scratch, and with recompute the block activations): micro-batches in flight in a
 * pipeline schedule each have their own `b` and share one `sh`. */
static void layout(wan_model *m, bump *b, bump *sh) {
    struct wan_model_acts *a = m->a;
    const wan_shape *s = &m->sh;
    size_t as = wan_dtype_size(m->be->act), fs = sizeof(float);
    size_t B = (size_t)s->B, T = (size_t)s->T, Tf = (size_t)s->Tf, D = (size_t)m->D, Dl = (size_t)m->Dl;
    size_t Fl = (size_t)m->Fl, BL = B * (size_t)m->L, lat = B * (size_t)s->C * s->F * s->H * s->W;
    size_t lse = B * (size_t)m->Hl * s->S_cp;
    a->xt_lat = take(b, lat * fs);
    a->tgt_lat = take(b, lat * fs);
    a->patches = take(b, T * m->P_in * as);
    a->target = take(b, T * m->P_out * fs);
    a->x = take(b, T * D * fs);
    a->dx = take(b, T * D * fs);
    a->t = take(b, B * fs);
    a->tsin = take(b, B * m->cfg.freq_dim * fs);
    a->te1 = take(b, B * D * fs);
    a->te1s = take(b, B * D * fs);
    a->e = take(b, B * D * fs);
    a->es = take(b, B * D * fs);
    a->e0 = take(b, B * 6 * D * fs);
    a->de0 = take(b, B * 6 * D * fs);
    a->de = take(b, B * D * fs);
    a->des = take(b, B * D * fs);
    a->dtmp = take(b, B * D * fs);
    a->dte1s = take(b, B * D * fs);
    a->dte1 = take(b, B * D * fs);
    a->hm = take(b, B * 2 * D * fs);
    a->dhm = take(b, B * 2 * D * fs);
    a->ctx_f32 = take(b, BL * m->Ct * fs);
    a->ctx_in = take(b, BL * m->Ct * as);
    a->t1 = take(b, BL * D * as);
    a->t1g = take(b, BL * D * as);
    a->ctx = take(b, BL * D * as);
    a->dctx = take(b, BL * D * fs);
    a->dctx_act = take(b, BL * D * as);
    a->dt1g = take(b, BL * D * as);
    a->dt1 = take(b, BL * D * as);
    a->lnh = take(b, T * D * fs);
    a->meanh = take(b, T * fs);
    a->rstdh = take(b, T * fs);
    a->pred = take(b, T * m->P_out * fs);
    a->dpred = take(b, T * m->P_out * fs);
    a->dlnh = take(b, T * D * fs);
    a->coef = take(b, B * fs);
    a->sqsum = take(b, B * fs);
    size_t half = (size_t)m->hd / 2;
    a->rope_cos = take(b, (size_t)s->S_pad * half * fs);
    a->rope_sin = take(b, (size_t)s->S_pad * half * fs);

    /* this pipeline stage's blocks only; the recomputing ones are its first */
    bool keep_att = m->recompute == WAN_RECOMPUTE_KEEP_ATTENTION;
    for (int l = m->l0; l < m->l1; l++) {
        wan_block_acts *k = &a->blocks[l];
        bool rec = wan_block_recomputes(m, l);
        k->x_in = take(b, T * D * fs);
        if (rec && l > m->l0) {
            /* recompute: the rest is shared with the first block's set, but for what each block keeps */
            wan_block_acts *z = &a->blocks[m->l0];
            wan_block_acts own = *k;
            *k = *z;
            k->x_in = own.x_in;
            if (keep_att) {
                k->att = take(b, Tf * Dl * as);
                k->lse = take(b, lse * fs);
            }
            continue;
        }
        /* with recompute the one set the recomputing blocks use is rebuilt in the backward: shared */
        bump *own_b = b;
        if (rec) b = sh;
        k->x1 = take(b, T * D * fs);
        k->x2 = take(b, T * D * fs);
        k->mod = take(b, B * 6 * D * fs);
        k->ln1 = take(b, Tf * D * as);
        k->ln3 = take(b, Tf * D * as);
        k->ln2 = take(b, Tf * D * as);
        k->mean1 = take(b, T * fs);
        k->rstd1 = take(b, T * fs);
        k->mean3 = take(b, T * fs);
        k->rstd3 = take(b, T * fs);
        k->mean2 = take(b, T * fs);
        k->rstd2 = take(b, T * fs);
        k->qk = take(b, Tf * 2 * Dl * as);
        k->kv = take(b, 2 * Tf * Dl * as);
        k->qn = take(b, Tf * Dl * as);
        k->rr_q = take(b, Tf * fs);
        k->rr_k = take(b, Tf * fs);
        k->att = take(b, Tf * Dl * as);
        k->lse = take(b, lse * fs);
        k->sa_y = take(b, T * D * fs);
        k->cq = take(b, Tf * Dl * as);
        k->cqn = take(b, Tf * Dl * as);
        k->rr_cq = take(b, Tf * fs);
        k->ckv = take(b, BL * 2 * Dl * as);
        k->ckn = take(b, BL * Dl * as);
        k->rr_ck = take(b, BL * fs);
        k->catt = take(b, Tf * Dl * as);
        k->clse = take(b, lse * fs);
        k->h = take(b, Tf * Fl * as);
        k->g = take(b, Tf * Fl * as);
        k->ff_y = take(b, T * D * fs);
        if (rec && keep_att) { /* the attention output the recomputing backward keeps */
            k->att = take(own_b, Tf * Dl * as);
            k->lse = take(own_b, lse * fs);
        }
        b = own_b;
    }
    a->y_part = take(sh, Tf * D * fs);
    a->dy = take(sh, Tf * D * as);
    a->dln = take(sh, Tf * D * fs);
    a->dh = take(sh, Tf * Fl * as);
    a->datt = take(sh, Tf * Dl * as);
    a->dq = take(sh, Tf * Dl * as);
    a->dkv = take(sh, 2 * Tf * Dl * as);
    a->dqk_raw = take(sh, Tf * 2 * Dl * as);
    a->dcatt = take(sh, Tf * Dl * as);
    a->dcqn = take(sh, Tf * Dl * as);
    a->dcq = take(sh, Tf * Dl * as);
    a->dckn = take(sh, BL * Dl * as);
    a->dckv = take(sh, BL * 2 * Dl * as);
    size_t nss = 2 * (Tf > BL ? Tf : BL);
    a->ss = take(sh, nss * fs);
    a->dot = take(sh, nss * fs);
    a->dmod = take(sh, B * 6 * D * fs);
    if (m->dist->cp > 1) {
        for (int i = 0; i < 2; i++) {
            a->ring_kv[i] = take(sh, 2 * Tf * Dl * as);
            a->ring_dkv[i] = take(sh, 2 * Tf * Dl * as);
        }
        a->o_blk = take(sh, Tf * Dl * as);
        a->lse_blk = take(sh, lse * fs);
        a->acc = take(sh, Tf * Dl * fs);
        a->lse_acc = take(sh, lse * fs);
    }
}

static int alloc_acts(wan_model *m);

int wan_model_set_shape(wan_model *m, int B, int C, int F, int H, int W) {
    wan_shape *s = &m->sh;
    if (m->arena && s->B == B && s->C == C && s->F == F && s->H == H && s->W == W) return 0;
    WAN_TRY(wan_shape_compute(m, B, C, F, H, W, s));
    return alloc_acts(m);
}

int wan_shape_compute(const wan_model *m, int B, int C, int F, int H, int W, wan_shape *s) {
    const int *ps = m->cfg.patch_size;
    if (C != m->cfg.in_dim)
        return wan_fail(WAN_ERR_RUNTIME, "latent has %d channels, the model expects model.in_dim = %d", C, m->cfg.in_dim);
    if (F % ps[0] || H % ps[1] || W % ps[2])
        return wan_fail(WAN_ERR_RUNTIME, "latent %dx%dx%d is not divisible by the patch %dx%dx%d", F, H, W, ps[0], ps[1],
                        ps[2]);
    const wan_dist *d = m->dist;
    memset(s, 0, sizeof *s);
    s->B = B, s->C = C, s->F = F, s->H = H, s->W = W;
    s->Fp = F / ps[0], s->Hp = H / ps[1], s->Wp = W / ps[2];
    s->S = s->Fp * s->Hp * s->Wp;
    int split = d->cp * (d->sp ? d->tp : 1);
    s->S_pad = (s->S + split - 1) / split * split;
    s->S_cp = s->S_pad / d->cp;
    s->Tf = B * s->S_cp;
    s->T = d->sp ? s->Tf / d->tp : s->Tf;
    s->tok0 = d->sp ? d->tp_rank * s->T : 0;
    s->pos0 = d->cp_rank * s->S_cp;
    return 0;
}

void wan_model_measure_acts(wan_model *m, size_t *arena, size_t *shared) {
    struct wan_model_acts tmp = {0}, *keep = m->a;
    tmp.blocks = calloc((size_t)m->cfg.num_layers, sizeof *tmp.blocks);
    m->a = &tmp;
    bump b = {0}, sh = {0};
    layout(m, &b, &sh);
    m->a = keep;
    free(tmp.blocks);
    *arena = b.off, *shared = sh.off;
}

/* Point the current activation set's buffers into its arena and the shared one. */
static void relayout(wan_model *m) {
    bump b = {m->arena, 0}, sh = {m->shared, 0};
    layout(m, &b, &sh);
}

/* Activation memory for the shape in m->sh. */
static int alloc_acts(wan_model *m) {
    const wan_shape *s = &m->sh;
    int B = s->B, C = s->C, F = s->F, H = s->H, W = s->W;
    if (m->arena) m->be->free(m->be, m->arena);
    m->arena = NULL;
    if (!m->a) m->a = calloc(1, sizeof *m->a);
    free(m->a->blocks);
    free(m->a->sqsum_host);
    struct wan_model_acts *a = m->a;
    memset(a, 0, sizeof *a);
    a->blocks = calloc((size_t)m->cfg.num_layers, sizeof *a->blocks);
    a->sqsum_host = calloc((size_t)B, sizeof(float));
    bump b = {0}, sh = {0};
    layout(m, &b, &sh);
    if (sh.off > m->shared_bytes) { /* grows only: other activation sets point into it (relayout) */
        if (m->shared) m->be->free(m->be, m->shared);
        m->shared = m->be->alloc(m->be, sh.off);
        m->shared_bytes = m->shared ? sh.off : 0;
    }
    m->arena = m->be->alloc(m->be, b.off);
    m->arena_bytes = b.off;
    if (!m->arena || !m->shared)
        return wan_fail(WAN_ERR_RUNTIME, "out of %s memory: activations of a %dx%dx%dx%dx%d micro-batch need %.2f GB "
                        "(%.2f GB of it shared by the micro-batches in flight)",
                        m->be->name, B, C, F, H, W, (double)(b.off + sh.off) / 1e9, (double)sh.off / 1e9);
    relayout(m);

    size_t half = (size_t)m->hd / 2, n = (size_t)s->S_pad * half;
    float *c = malloc(n * sizeof *c), *si = malloc(n * sizeof *si);
    wan_rope_table(s->Fp, s->Hp, s->Wp, m->hd, s->S_pad, c, si);
    m->be->upload(m->be, a->rope_cos, c, n * sizeof *c);
    m->be->upload(m->be, a->rope_sin, si, n * sizeof *si);
    free(c);
    free(si);
    a->rope = (wan_rope){a->rope_cos, a->rope_sin, m->hd};
    return 0;
}

/* ---------------------------------------------------------------- time and text embeddings */

static void time_forward(wan_model *m) {
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    int B = m->sh.B, D = m->D, fd = m->cfg.freq_dim;
    /* e = time_embedding(sinusoid(t)); e0 = time_projection(e): all fp32 as in the official model */
    op->timestep_embed(be, a->tsin, a->t, B, fd);
    op->matmul_fwd(be, a->te1, WAN_F32, a->tsin, WAN_F32, PARAM(m, m->o_te0_w), PARAM(m, m->o_te0_b), B, D, fd);
    op->silu_fwd(be, a->te1s, a->te1, (size_t)B * D);
    op->matmul_fwd(be, a->e, WAN_F32, a->te1s, WAN_F32, PARAM(m, m->o_te2_w), PARAM(m, m->o_te2_b), B, D, D);
    op->silu_fwd(be, a->es, a->e, (size_t)B * D);
    op->matmul_fwd(be, a->e0, WAN_F32, a->es, WAN_F32, PARAM(m, m->o_tp_w), PARAM(m, m->o_tp_b), B, 6 * D, D);
}

static void time_backward(wan_model *m) {
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    int B = m->sh.B, D = m->D, fd = m->cfg.freq_dim;
    op->matmul_bwd(be, a->des, WAN_F32, false, GRAD(m, m->o_tp_w), GRAD(m, m->o_tp_b), a->de0, WAN_F32, a->es, WAN_F32,
                   PARAM(m, m->o_tp_w), B, 6 * D, D);
    op->silu_bwd(be, a->dtmp, a->des, a->e, (size_t)B * D);
    op->add(be, a->de, a->dtmp, WAN_F32, (size_t)B * D);
    op->matmul_bwd(be, a->dte1s, WAN_F32, false, GRAD(m, m->o_te2_w), GRAD(m, m->o_te2_b), a->de, WAN_F32, a->te1s,
                   WAN_F32, PARAM(m, m->o_te2_w), B, D, D);
    op->silu_bwd(be, a->dte1, a->dte1s, a->te1, (size_t)B * D);
    op->matmul_bwd(be, NULL, WAN_F32, false, GRAD(m, m->o_te0_w), GRAD(m, m->o_te0_b), a->dte1, WAN_F32, a->tsin,
                   WAN_F32, PARAM(m, m->o_te0_w), B, D, fd);
}

static void text_forward(wan_model *m) {
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    int BL = m->sh.B * m->L, D = m->D;
    wan_dtype act = be->act;
    be->convert(be, a->ctx_in, act, a->ctx_f32, WAN_F32, (size_t)BL * m->Ct);
    op->matmul_fwd(be, a->t1, act, a->ctx_in, act, PARAM(m, m->o_txt0_w), PARAM(m, m->o_txt0_b), BL, D, m->Ct);
    op->gelu_fwd(be, a->t1g, a->t1, (size_t)BL * D);
    op->matmul_fwd(be, a->ctx, act, a->t1g, act, PARAM(m, m->o_txt2_w), PARAM(m, m->o_txt2_b), BL, D, D);
}

static int text_backward(wan_model *m) {
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    int BL = m->sh.B * m->L, D = m->D;
    wan_dtype act = be->act;
    /* Each tp rank's cross-attention saw only its heads: the text gradient is a partial sum. */
    WAN_TRY(wan_allreduce(&m->dist->tp_g, a->dctx, (size_t)BL * D, WAN_F32, WAN_RED_SUM));
    be->convert(be, a->dctx_act, act, a->dctx, WAN_F32, (size_t)BL * D);
    op->matmul_bwd(be, a->dt1g, act, false, GRAD(m, m->o_txt2_w), GRAD(m, m->o_txt2_b), a->dctx_act, act, a->t1g, act,
                   PARAM(m, m->o_txt2_w), BL, D, D);
    op->gelu_bwd(be, a->dt1, a->dt1g, a->t1, (size_t)BL * D);
    op->matmul_bwd(be, NULL, act, false, GRAD(m, m->o_txt0_w), GRAD(m, m->o_txt0_b), a->dt1, act, a->ctx_in, act,
                   PARAM(m, m->o_txt0_w), BL, D, m->Ct);
    return 0;
}

/* ---------------------------------------------------------------- forward and backward */

int wan_model_forward(wan_model *m, const wan_model_input *in, double *sqsum, float *pred_out) {
    WAN_TRY(wan_model_set_shape(m, in->B, in->C, in->F, in->H, in->W));
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    const wan_shape *s = &m->sh;
    int B = s->B, D = m->D;
    const int *ps = m->cfg.patch_size;
    wan_tokens tk = wan_tk_local(m);
    size_t lat = (size_t)s->C * s->F * s->H * s->W;
    /* stages after the first start from x, e, e0 and the context wan_pipe_recv_forward received */
    if (!m->first) WAN_TRY(wan_pipe_take_forward(m));

    /* Flow matching input x_t = (1 - sigma) x0 + sigma noise and target noise - x0, formed in
     * the latent layout on the host, then patchified for this rank's rows on the backend (the
     * first pipeline stage embeds x_t, the last needs the target; the stages between neither). */
    float *host = malloc(2 * lat * B * sizeof(float)), *tvec = malloc((size_t)B * sizeof(float));
    if (!host || !tvec) {
        free(host), free(tvec);
        return wan_fail(WAN_ERR_RUNTIME, "out of host memory");
    }
    bool flow = in->noise && in->sigma;
    for (int b = 0; b < B && (m->first || m->last); b++) {
        float sg = flow ? in->sigma[b] : 0.0f;
        const float *x0 = in->latent + b * lat, *nz = flow ? in->noise + b * lat : NULL;
        float *xt = host + b * lat, *tg = host + (B + b) * lat;
        for (size_t i = 0; i < lat; i++) {
            float n = nz ? nz[i] : 0.0f;
            xt[i] = (1.0f - sg) * x0[i] + sg * n;
            tg[i] = n - x0[i];
        }
        tvec[b] = in->timestep ? in->timestep[b] : 1000.0f * sg;
    }
    if (m->first) {
        be->upload(be, a->xt_lat, host, lat * B * sizeof(float));
        be->upload(be, a->t, tvec, (size_t)B * sizeof(float));
        be->upload(be, a->ctx_f32, in->text, (size_t)B * m->L * m->Ct * sizeof(float));
        op->patchify(be, a->patches, be->act, a->xt_lat, B, s->C, s->F, s->H, s->W, ps[0], ps[1], ps[2], false, tk,
                     s->S);
    }
    if (m->last) {
        be->upload(be, a->tgt_lat, host + lat * B, lat * B * sizeof(float));
        op->patchify(be, a->target, WAN_F32, a->tgt_lat, B, s->C, s->F, s->H, s->W, ps[0], ps[1], ps[2], true, tk, s->S);
    }
    free(host);

    /* embeddings (the weights of the last step may still be on their way: each part of the
     * forward waits for its own) */
    WAN_TRY(params_needed(m, WAN_PARAMS_BEFORE_BLOCKS));
    if (m->first) {
        op->matmul_fwd(be, a->x, WAN_F32, a->patches, be->act, PARAM(m, m->o_patch_w), PARAM(m, m->o_patch_b), s->T,
                       D, m->P_in);
        time_forward(m);
        text_forward(m);
    }

    /* blocks */
    for (int l = m->l0; l < m->l1; l++) {
        wan_block_acts *k = &a->blocks[l];
        be->copy(be, k->x_in, a->x, (size_t)s->T * D * sizeof(float));
        WAN_TRY(params_needed(m, l));
        WAN_TRY(wan_block_forward(m, l, k));
    }
    WAN_TRY(params_needed(m, WAN_PARAMS_ALL)); /* the head's; none left in flight after a forward */
    if (!m->last) { /* the next stage goes on from x (wan_pipe_send_forward) */
        if (sqsum)
            for (int b = 0; b < B; b++) sqsum[b] = 0;
        free(tvec);
        return 0;
    }

    /* head: (shift, scale) = head.modulation + e; out = head(LN(x) * (1 + scale) + shift), fp32 */
    for (int b = 0; b < B; b++) {
        be->copy(be, a->hm + (size_t)b * 2 * D, a->e + (size_t)b * D, (size_t)D * sizeof(float));
        be->copy(be, a->hm + (size_t)b * 2 * D + D, a->e + (size_t)b * D, (size_t)D * sizeof(float));
    }
    op->add_bcast(be, a->hm, a->hm, PARAM(m, m->o_head_mod), (size_t)B * 2 * D, (size_t)2 * D);
    op->layernorm_fwd(be, a->lnh, WAN_F32, a->meanh, a->rstdh, a->x, NULL, NULL, a->hm, a->hm + D, 2 * D, tk, D,
                      (float)m->cfg.eps);
    op->matmul_fwd(be, a->pred, WAN_F32, a->lnh, WAN_F32, PARAM(m, m->o_head_w), PARAM(m, m->o_head_b), s->T, m->P_out,
                   D);

    /* loss: per-sample sums of squared errors over this rank's valid rows, and dpred */
    if (in->loss_coef) {
        for (int b = 0; b < B; b++) tvec[b] = 2.0f * in->loss_coef[b];
        be->upload(be, a->coef, tvec, (size_t)B * sizeof(float));
        be->memset0(be, a->sqsum, (size_t)B * sizeof(float));
        op->flow_loss(be, a->dpred, a->sqsum, a->pred, a->target, a->coef, tk, m->P_out, s->S);
        be->download(be, a->sqsum_host, a->sqsum, (size_t)B * sizeof(float));
        for (int b = 0; b < B; b++) sqsum[b] = a->sqsum_host[b];
    }
    free(tvec);
    if (pred_out) be->download(be, pred_out, a->pred, (size_t)s->T * m->P_out * sizeof(float));
    return 0;
}

/* Head of the last stage: dx and de from dpred. */
static int head_backward(wan_model *m) {
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    const wan_shape *s = &m->sh;
    int B = s->B, D = m->D;
    wan_tokens tk = wan_tk_local(m);
    op->matmul_bwd(be, a->dlnh, WAN_F32, false, GRAD(m, m->o_head_w), GRAD(m, m->o_head_b), a->dpred, WAN_F32, a->lnh,
                   WAN_F32, PARAM(m, m->o_head_w), s->T, m->P_out, D);
    op->layernorm_bwd(be, a->dx, NULL, NULL, a->dhm, a->dhm + D, a->dlnh, WAN_F32, a->x, a->meanh, a->rstdh, NULL,
                      a->hm + D, 2 * D, tk, D);
    op->sum_rows(be, GRAD(m, m->o_head_mod), a->dhm, (size_t)B * 2 * D, (size_t)2 * D);
    for (int b = 0; b < B; b++) {
        op->add(be, a->de + (size_t)b * D, a->dhm + (size_t)b * 2 * D, WAN_F32, (size_t)D);
        op->add(be, a->de + (size_t)b * D, a->dhm + (size_t)b * 2 * D + D, WAN_F32, (size_t)D);
    }
    return 0;
}

int wan_model_backward(wan_model *m) {
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    const wan_shape *s = &m->sh;
    int B = s->B, D = m->D;

    /* on stages before the last, dx, de0, de and dctx hold what the next stage sent back
     * (wan_pipe_recv_backward); the blocks add to them */
    if (m->last) {
        be->memset0(be, a->dx, (size_t)s->T * D * sizeof(float));
        be->memset0(be, a->dhm, (size_t)B * 2 * D * sizeof(float));
        be->memset0(be, a->de0, (size_t)B * 6 * D * sizeof(float));
        be->memset0(be, a->de, (size_t)B * D * sizeof(float));
        be->memset0(be, a->dctx, (size_t)B * m->L * D * sizeof(float));
        WAN_TRY(head_backward(m));
    }

    /* blocks, last first; with recompute each block's activations are rebuilt from its input */
    for (int l = m->l1 - 1; l >= m->l0; l--) {
        wan_block_acts *k = &a->blocks[l];
        if (wan_block_recomputes(m, l)) {
            be->copy(be, a->x, k->x_in, (size_t)s->T * D * sizeof(float));
            m->recomputing = true;
            int rc = wan_block_forward(m, l, k);
            m->recomputing = false;
            m->blocks_recomputed++;
            WAN_TRY(rc);
        }
        WAN_TRY(wan_block_backward(m, l, k));
        if (m->grads_final && m->block_grads_done) WAN_TRY(m->block_grads_done(m->block_grads_ctx, l));
    }
    if (!m->first) return 0; /* the previous stage goes on from dx (wan_pipe_send_backward) */

    /* patch embedding (the latent input needs no gradient) */
    be->convert(be, a->dy, be->act, a->dx, WAN_F32, (size_t)s->T * D);
    op->matmul_bwd(be, NULL, be->act, false, GRAD(m, m->o_patch_w), GRAD(m, m->o_patch_b), a->dy, be->act, a->patches,
                   be->act, PARAM(m, m->o_patch_w), s->T, D, m->P_in);
    WAN_TRY(text_backward(m));
    time_backward(m);
    return 0;
}

int wan_model_reduce_tp_grads(wan_model *m, int layer) {
    /* With sequence parallelism each tp rank saw only its rows, so the gradients of parameters
     * that tp replicates are partial sums. (Without sp they are already identical; the text
     * embedding's was reduced through its input gradient.) */
    if (!m->dist->sp) return 0;
    for (int i = 0; i < m->ps.n; i++) {
        const wan_param *p = &m->ps.p[i];
        if (!p->present || p->layer != layer || p->shard != WAN_SHARD_NONE || !strncmp(p->name, "text_embedding.", 15))
            continue;
        WAN_TRY(wan_allreduce(&m->dist->tp_g, GRAD(m, p->offset), (size_t)p->numel, WAN_F32, WAN_RED_SUM));
    }
    return 0;
}
