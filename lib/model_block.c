/* One Wan 2.1 attention block, forward and backward, with its tensor-, sequence- and
 * context-parallel communication:
 *   x += SelfAttn(LN(x) * (1 + scale1) + shift1) * gate1
 *   x += CrossAttn(LN3(x), context)
 *   x += FFN(LN(x) * (1 + scale2) + shift2) * gate2
 * Column-parallel layers (q, k, v, FFN-in) see all rows of the micro-batch: with sequence
 * parallelism the norm outputs are all-gathered over tp (as the GEMM runs: see the rings
 * below). Row-parallel layers (o, FFN-out) produce partial sums: all-reduced over tp, or
 * reduce-scattered back to the rank's rows with sequence parallelism. The q/k RMSNorm spans the full dim, so its sums of squares
 * (and in the backward its dot products) are all-reduced over tp. Self-attention over the
 * context-parallel split is a ring: K/V blocks travel around cp, outputs merge by log-sum-exp,
 * and in the backward dK/dV accumulators travel with them back to their owners. */
#include <math.h>
#include <string.h>

#include "error.h"
#include "model_internal.h"

/* ---------------------------------------------------------------- tensor-parallel rings
 * With sequence parallelism a column-parallel GEMM needs every tp rank's rows (an all-gather
 * before it) and a row-parallel GEMM's partial sums go back to the owner of their rows (a
 * reduce-scatter after it). Both run as rings of tp - 1 point-to-point steps over chunks of
 * one rank's T rows, the GEMM issued chunk by chunk, so that each transfer overlaps the GEMM
 * of another chunk (the "collective matmul"); the bytes sent are the all-gather's and the
 * reduce-scatter's. Without sequence parallelism there is one chunk (all Tf rows) and, for
 * the partial sums, an all-reduce. The caller's loop:
 *     WAN_TRY(gather_begin(&r, m, buf, cols, &c));
 *     while (c >= 0) { GEMM on rows [c * r.rows, (c + 1) * r.rows); WAN_TRY(gather_next(&r, &c)); }
 * and the same with reduce_begin / reduce_next, then reduce_finish (work issued before it, on
 * other buffers, overlaps the last transfer). */
typedef struct {
    wan_model *m;
    void *buf;    /* gather: the [Tf, cols] act buffer; reduce: the [Tf, cols] fp32 partials */
    float *out;   /* reduce: this rank's [T, cols] sums, also the ring's receive buffer */
    int cols, rows, chunks, step;
    wan_comm_req req;
} tp_ring;

static void ring_init(tp_ring *r, wan_model *m, void *buf, float *out, int cols) {
    const wan_dist *d = m->dist;
    *r = (tp_ring){.m = m, .buf = buf, .out = out, .cols = cols};
    r->chunks = d->sp ? d->tp : 1;
    r->rows = d->sp ? m->sh.T : m->sh.Tf;
}

/* Element offset of chunk c's first row. */
static size_t ring_at(const tp_ring *r, int c) { return (size_t)c * r->rows * r->cols; }

/* Ring step i sends the chunk in hand to tp rank + 1 and receives the next from rank - 1. */
static int ring_shift(tp_ring *r, const void *send, void *recv, wan_dtype dt) {
    wan_dist *d = r->m->dist;
    int next = (d->tp_rank + 1) % d->tp, prev = (d->tp_rank + d->tp - 1) % d->tp;
    return wan_sendrecv_start(&d->tp_g, send, next, recv, prev, (size_t)r->rows * r->cols, dt, &r->req);
}

/* Chunk (tp rank + delta) around the ring. */
static int ring_chunk(const tp_ring *r, int delta) {
    int c = (r->m->dist->tp_rank + delta) % r->chunks;
    return c < 0 ? c + r->chunks : c;
}

/* Gather: step i works on chunk (rank - i), which arrived at step i - 1, while passing it on
 * (and receiving chunk rank - i - 1). */
static int gather_step(tp_ring *r, int *chunk) {
    wan_model *m = r->m;
    *chunk = ring_chunk(r, -r->step);
    if (r->step + 1 == r->chunks) return 0;
    return ring_shift(r, ACT_AT(m, r->buf, ring_at(r, *chunk)), ACT_AT(m, r->buf, ring_at(r, ring_chunk(r, -r->step - 1))),
                      m->be->act);
}

/* buf holds this rank's rows (at tok0); *chunk: the first chunk to work on. */
static int gather_begin(tp_ring *r, wan_model *m, void *buf, int cols, int *chunk) {
    ring_init(r, m, buf, NULL, cols);
    return gather_step(r, chunk);
}

/* The next chunk, -1 after the last. */
static int gather_next(tp_ring *r, int *chunk) {
    WAN_TRY(wan_comm_wait(&r->m->dist->tp_g, &r->req));
    if (++r->step == r->chunks) {
        *chunk = -1;
        return 0;
    }
    return gather_step(r, chunk);
}

/* Reduce: step i computes this rank's partial of chunk (rank - 1 - i); from step 1 on the sum
 * of the ranks before it arrives meanwhile in out, is added to it and passed on, so that chunk
 * c's sum starts at rank c + 1 and ends, complete, at rank c. */
static int reduce_chunk(const tp_ring *r) { return ring_chunk(r, -1 - r->step); }

static int reduce_begin(tp_ring *r, wan_model *m, float *part, float *out, int cols, int *chunk) {
    ring_init(r, m, part, out, cols);
    *chunk = reduce_chunk(r);
    return 0;
}

/* After the caller wrote the partial of the current chunk: the next chunk, -1 after the last. */
static int reduce_next(tp_ring *r, int *chunk) {
    wan_model *m = r->m;
    if (r->step + 1 >= r->chunks) {
        *chunk = -1;
        return 0;
    }
    float *part = (float *)r->buf + ring_at(r, reduce_chunk(r));
    if (r->step > 0) {
        WAN_TRY(wan_comm_wait(&m->dist->tp_g, &r->req));
        m->be->ops->add(m->be, part, r->out, WAN_F32, (size_t)r->rows * r->cols);
    }
    WAN_TRY(ring_shift(r, part, r->out, WAN_F32));
    r->step++;
    *chunk = reduce_chunk(r);
    return 0;
}

/* This rank's sums into out. */
static int reduce_finish(tp_ring *r) {
    wan_model *m = r->m;
    wan_backend *be = m->be;
    size_t n = (size_t)r->rows * r->cols;
    float *own = (float *)r->buf + ring_at(r, ring_chunk(r, 0));
    if (r->chunks > 1) {
        WAN_TRY(wan_comm_wait(&m->dist->tp_g, &r->req));
        be->ops->add(be, r->out, own, WAN_F32, n);
        return 0;
    }
    if (!m->dist->sp) WAN_TRY(wan_allreduce(&m->dist->tp_g, own, n, WAN_F32, WAN_RED_SUM));
    if (r->out != own) be->copy(be, r->out, own, n * sizeof(float));
    return 0;
}

/* out (this rank's rows, fp32) = the row-parallel layer w [D, K] applied to in [Tf, K] (act),
 * its partial sums over tp reduced chunk by chunk (the bias comes with the residual). */
static int row_parallel_forward(wan_model *m, float *out, const void *in, int K, int64_t w) {
    const wan_ops *op = m->be->ops;
    float *part = m->a->y_part;
    tp_ring r;
    int c;
    WAN_TRY(reduce_begin(&r, m, part, out, m->D, &c));
    while (c >= 0) {
        size_t r0 = (size_t)c * r.rows;
        op->matmul_fwd(m->be, part + r0 * m->D, WAN_F32, ACT_AT(m, in, r0 * K), m->be->act, PARAM(m, w), NULL, r.rows,
                       m->D, K);
        WAN_TRY(reduce_next(&r, &c));
    }
    return reduce_finish(&r);
}

/* din [Tf, K] = a->dy @ w, the row-parallel layer's input gradient, chunk by chunk as the rows
 * of a->dy arrive (this rank's are in place); with h (the FFN), din is the gradient before the
 * GELU whose input h was: gelu'(h) * (a->dy @ w), one fused op. */
static int row_parallel_backward_input(wan_model *m, void *din, int K, int64_t w, const void *h) {
    const wan_ops *op = m->be->ops;
    wan_dtype act = m->be->act;
    tp_ring r;
    int c;
    WAN_TRY(gather_begin(&r, m, m->a->dy, m->D, &c));
    while (c >= 0) {
        size_t r0 = (size_t)c * r.rows;
        void *d = ACT_AT(m, din, r0 * K);
        const void *dy = ACT_AT(m, m->a->dy, r0 * m->D);
        if (h)
            op->matmul_dgelu_bwd(m->be, d, dy, PARAM(m, w), ACT_AT(m, h, r0 * K), r.rows, m->D, K);
        else
            op->matmul_bwd(m->be, d, act, false, NULL, NULL, dy, act, NULL, act, PARAM(m, w), r.rows, m->D, K);
        WAN_TRY(gather_next(&r, &c));
    }
    return 0;
}

/* a->dln [Tf, D] = dout [Tf, N] @ w (+ dout2 [Tf, N2] @ w2: q|k and v share their input), the
 * input gradient of a column-parallel layer, partial over tp: chunk by chunk into the reduce
 * ring r, whose last transfer the caller covers with other work before reduce_finish (this
 * rank's rows into a->y_part). */
static int column_parallel_backward_input(wan_model *m, tp_ring *r, const void *dout, int N, const void *w,
                                          const void *dout2, int N2, const void *w2) {
    const wan_ops *op = m->be->ops;
    wan_dtype act = m->be->act;
    int c;
    WAN_TRY(reduce_begin(r, m, m->a->dln, m->a->y_part, m->D, &c));
    while (c >= 0) {
        size_t r0 = (size_t)c * r->rows;
        float *din = m->a->dln + r0 * m->D;
        op->matmul_bwd(m->be, din, WAN_F32, false, NULL, NULL, ACT_AT(m, dout, r0 * N), act, NULL, act, w, r->rows, N,
                       m->D);
        if (dout2)
            op->matmul_bwd(m->be, din, WAN_F32, true, NULL, NULL, ACT_AT(m, dout2, r0 * N2), act, NULL, act, w2, r->rows,
                           N2, m->D);
        WAN_TRY(reduce_next(r, &c));
    }
    return 0;
}

/* Valid keys of context-parallel block j (positions beyond the real sequence are padding). */
static int valid_in_block(const wan_model *m, int j) {
    int v = m->sh.S - j * m->sh.S_cp;
    return v < 0 ? 0 : v > m->sh.S_cp ? m->sh.S_cp : v;
}

/* ---------------------------------------------------------------- self-attention core */

static int self_attention_forward(wan_model *m, wan_block_acts *k) {
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    const wan_shape *s = &m->sh;
    wan_dist *d = m->dist;
    int Dl = m->Dl, B = s->B, Sc = s->S_cp;
    float scale = m->attn_scale;
    void *kn = k->kv, *v = ACT_AT(m, k->kv, (size_t)s->Tf * Dl);
    if (d->cp == 1) {
        op->attention_fwd(be, k->att, Dl, k->lse, k->qn, Dl, kn, Dl, v, Dl, B, m->Hl, Sc, Sc, m->hd, valid_in_block(m, 0),
                          scale);
        return 0;
    }
    /* Ring: step i holds the K/V block of cp rank (r - i) and passes it on to r + 1 while it
     * computes with it (the transfer overlaps the attention; nxt was last read at step i - 1,
     * which the transfer is ordered after). */
    size_t nkv = 2 * (size_t)s->Tf * Dl;
    int next = (d->cp_rank + 1) % d->cp, prev = (d->cp_rank + d->cp - 1) % d->cp;
    const void *cur = k->kv;
    bool first = true;
    for (int i = 0; i < d->cp; i++) {
        int j = (d->cp_rank - i + d->cp) % d->cp;
        void *nxt = a->ring_kv[i % 2];
        wan_comm_req kv_req = {0};
        if (i + 1 < d->cp) WAN_TRY(wan_sendrecv_start(&d->cp_g, cur, next, nxt, prev, nkv, be->act, &kv_req));
        int valid = valid_in_block(m, j);
        if (valid > 0) {
            const void *ck = cur, *cv = ACT_AT(m, cur, (size_t)s->Tf * Dl);
            op->attention_fwd(be, a->o_blk, Dl, a->lse_blk, k->qn, Dl, ck, Dl, cv, Dl, B, m->Hl, Sc, Sc, m->hd, valid,
                              scale);
            op->attention_merge(be, a->acc, a->lse_acc, a->o_blk, Dl, a->lse_blk, B, m->Hl, Sc, m->hd, first);
            first = false;
        }
        WAN_TRY(wan_comm_wait(&d->cp_g, &kv_req));
        cur = nxt;
    }
    be->convert(be, k->att, be->act, a->acc, WAN_F32, (size_t)s->Tf * Dl);
    be->copy(be, k->lse, a->lse_acc, (size_t)B * m->Hl * Sc * sizeof(float));
    return 0;
}

/* Gradients: dq -> a->dq [Tf, Dl]; dk, dv -> a->dkv [2, Tf, Dl]. */
static int self_attention_backward(wan_model *m, wan_block_acts *k) {
    struct wan_model_acts *a = m->a;
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    const wan_shape *s = &m->sh;
    wan_dist *d = m->dist;
    int Dl = m->Dl, B = s->B, Sc = s->S_cp;
    size_t TD = (size_t)s->Tf * Dl;
    float scale = m->attn_scale;
    if (d->cp == 1) {
        op->attention_bwd(be, a->dq, Dl, a->dkv, Dl, ACT_AT(m, a->dkv, TD), Dl, 0, a->datt, Dl, k->att, Dl, k->lse,
                          k->qn, Dl, k->kv, Dl, ACT_AT(m, k->kv, TD), Dl, B, m->Hl, Sc, Sc, m->hd, valid_in_block(m, 0),
                          scale);
        return 0;
    }
    /* Block j's dK/dV accumulator follows its K/V block around the ring, one step behind:
     * step i computes this rank's contribution to the block in hand into a->dkv (free until the
     * end) while the accumulator of that block is on its way from the previous rank and the
     * next K/V block too; then the accumulator is waited for, the contribution added, and it
     * is passed on during the next step. After cp hops the sum over every rank, in ring order,
     * arrives back at rank j. Step 0 works in the accumulator itself (nothing to receive). */
    int next = (d->cp_rank + 1) % d->cp, prev = (d->cp_rank + d->cp - 1) % d->cp;
    size_t bytes = 2 * TD * wan_dtype_size(be->act);
    bool dq_written = false; /* dq: written by the first block with keys, added to after */
    void *acc = a->ring_dkv[1], *incoming = a->ring_dkv[0]; /* sent / being received */
    wan_comm_req acc_req = {0};
    const void *cur = k->kv;
    for (int i = 0; i < d->cp; i++) {
        int j = (d->cp_rank - i + d->cp) % d->cp;
        int valid = valid_in_block(m, j);
        void *nxt = a->ring_kv[i % 2];
        wan_comm_req kv_req = {0};
        if (i + 1 < d->cp) WAN_TRY(wan_sendrecv_start(&d->cp_g, cur, next, nxt, prev, 2 * TD, be->act, &kv_req));
        void *part = i == 0 ? acc : a->dkv;
        if (valid > 0) { /* this block's dK/dV written into part (no clearing, no extra pass) */
            op->attention_bwd(be, a->dq, Dl, part, Dl, ACT_AT(m, part, TD), Dl, dq_written ? WAN_ACC_DQ : 0,
                              a->datt, Dl, k->att, Dl, k->lse, k->qn, Dl, cur, Dl, ACT_AT(m, cur, TD), Dl, B, m->Hl,
                              Sc, Sc, m->hd, valid, scale);
            dq_written = true;
        } else {
            be->memset0(be, part, bytes); /* a block of padding only: nothing from this rank */
        }
        if (i > 0) { /* the block's accumulator has arrived in `incoming`: add, pass it on */
            WAN_TRY(wan_comm_wait(&d->cp_g, &acc_req));
            op->add(be, incoming, part, be->act, 2 * TD);
            void *t = acc;
            acc = incoming, incoming = t;
        }
        WAN_TRY(wan_sendrecv_start(&d->cp_g, acc, next, incoming, prev, 2 * TD, be->act, &acc_req));
        WAN_TRY(wan_comm_wait(&d->cp_g, &kv_req));
        cur = nxt;
    }
    WAN_TRY(wan_comm_wait(&d->cp_g, &acc_req));
    be->copy(be, a->dkv, incoming, bytes);
    if (!dq_written) be->memset0(be, a->dq, TD * wan_dtype_size(be->act));
    return 0;
}

/* ---------------------------------------------------------------- q/k norms */

/* RMSNorm(+RoPE) of two column blocks at once, with one all-reduce of their sums of squares. */
static int qk_norm_forward(wan_model *m, void *y1, int ldy1, float *rr1, const void *x1, int ldx1, int T1, int64_t w1,
                           const wan_rope *rope1, wan_tokens tk1, void *y2, int ldy2, float *rr2, const void *x2,
                           int ldx2, int T2, int64_t w2, const wan_rope *rope2, wan_tokens tk2) {
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    float *ss1 = m->a->ss, *ss2 = m->a->ss + T1;
    op->rms_sumsq(be, ss1, x1, ldx1, T1, m->Dl);
    op->rms_sumsq(be, ss2, x2, ldx2, T2, m->Dl);
    WAN_TRY(wan_allreduce(&m->dist->tp_g, m->a->ss, (size_t)T1 + T2, WAN_F32, WAN_RED_SUM));
    float eps = (float)m->cfg.eps;
    op->rms_rope_fwd(be, y1, ldy1, rr1, x1, ldx1, ss1, PARAM(m, w1), rope1, tk1, m->Dl, m->D, eps);
    op->rms_rope_fwd(be, y2, ldy2, rr2, x2, ldx2, ss2, PARAM(m, w2), rope2, tk2, m->Dl, m->D, eps);
    return 0;
}

/* dy (in place: un-rotated) -> dx for two column blocks, one all-reduce of their dot products. */
static int qk_norm_backward(wan_model *m, void *dx1, int lddx1, void *dy1, int ldy1, const void *x1, int ldx1,
                            const float *rr1, int T1, int64_t w1, const wan_rope *rope1, wan_tokens tk1, void *dx2,
                            int lddx2, void *dy2, int ldy2, const void *x2, int ldx2, const float *rr2, int T2,
                            int64_t w2, const wan_rope *rope2, wan_tokens tk2) {
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    float *dot1 = m->a->dot, *dot2 = m->a->dot + T1;
    op->rms_rope_bwd_dot(be, dot1, GRAD(m, w1), dy1, ldy1, x1, ldx1, rr1, PARAM(m, w1), rope1, tk1, m->Dl);
    op->rms_rope_bwd_dot(be, dot2, GRAD(m, w2), dy2, ldy2, x2, ldx2, rr2, PARAM(m, w2), rope2, tk2, m->Dl);
    WAN_TRY(wan_allreduce(&m->dist->tp_g, m->a->dot, (size_t)T1 + T2, WAN_F32, WAN_RED_SUM));
    op->rms_bwd_dx(be, dx1, lddx1, dy1, ldy1, x1, ldx1, rr1, dot1, PARAM(m, w1), T1, m->Dl, m->D);
    op->rms_bwd_dx(be, dx2, lddx2, dy2, ldy2, x2, ldx2, rr2, dot2, PARAM(m, w2), T2, m->Dl, m->D);
    return 0;
}

/* ---------------------------------------------------------------- block forward */

int wan_block_forward(wan_model *m, int l, wan_block_acts *k) {
    struct wan_model_acts *a = m->a;
    const wan_block_offsets *o = &m->blk[l];
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    const wan_shape *s = &m->sh;
    wan_dtype act = be->act;
    int B = s->B, D = m->D, Dl = m->Dl, Fl = m->Fl, T = s->T, Tf = s->Tf, BL = B * m->L;
    float eps = (float)m->cfg.eps, scale = m->attn_scale;
    wan_tokens tk = wan_tk_local(m), tkf = wan_tk_full(m), tkt = {BL, 0, m->L, 0};
    size_t TD = (size_t)T * D * sizeof(float), psz = wan_dtype_size(be->param);
    float *x = a->x;
    tp_ring r;
    int c;

    /* (shift1, scale1, gate1, shift2, scale2, gate2) = modulation + e0, per sample */
    op->add_bcast(be, k->mod, a->e0, PARAM(m, o->mod), (size_t)B * 6 * D, (size_t)6 * D);
    float *shift1 = k->mod, *scale1 = k->mod + D, *gate1 = k->mod + 2 * D;
    float *shift2 = k->mod + 3 * D, *scale2 = k->mod + 4 * D, *gate2 = k->mod + 5 * D;

    /* ---- self-attention ---- */
    op->layernorm_fwd(be, ACT_AT(m, k->ln1, (size_t)s->tok0 * D), act, k->mean1, k->rstd1, x, NULL, NULL, shift1, scale1,
                      6 * D, tk, D, eps);
    /* q|k in one GEMM and v in another: v then sits next to the normed k as one ring message */
    void *qkv_w = PARAM(m, o->qkv_w), *qkv_b = PARAM(m, o->qkv_b);
    void *v_w = (char *)qkv_w + (size_t)2 * Dl * D * psz, *v_b = (char *)qkv_b + (size_t)2 * Dl * psz;
    void *v = ACT_AT(m, k->kv, (size_t)Tf * Dl);
    WAN_TRY(gather_begin(&r, m, k->ln1, D, &c));
    while (c >= 0) {
        size_t r0 = (size_t)c * r.rows;
        const void *in = ACT_AT(m, k->ln1, r0 * D);
        op->matmul_fwd(be, ACT_AT(m, k->qk, r0 * 2 * Dl), act, in, act, qkv_w, qkv_b, r.rows, 2 * Dl, D);
        op->matmul_fwd(be, ACT_AT(m, v, r0 * Dl), act, in, act, v_w, v_b, r.rows, Dl, D);
        WAN_TRY(gather_next(&r, &c));
    }
    WAN_TRY(qk_norm_forward(m, k->qn, Dl, k->rr_q, k->qk, 2 * Dl, Tf, o->nq, &a->rope, tkf, k->kv, Dl, k->rr_k,
                            ACT_AT(m, k->qk, Dl), 2 * Dl, Tf, o->nk, &a->rope, tkf));
    /* a kept attention output is what this call would compute again (every op is deterministic) */
    if (!(m->recomputing && m->recompute == WAN_RECOMPUTE_KEEP_ATTENTION)) WAN_TRY(self_attention_forward(m, k));
    WAN_TRY(row_parallel_forward(m, k->sa_y, k->att, Dl, o->o_w));
    op->residual_fwd(be, x, k->sa_y, PARAM(m, o->o_b), gate1, 6 * D, tk, D);
    be->copy(be, k->x1, x, TD);

    /* ---- cross-attention to the text (no modulation, no gate) ---- */
    op->layernorm_fwd(be, ACT_AT(m, k->ln3, (size_t)s->tok0 * D), act, k->mean3, k->rstd3, x, PARAM(m, o->n3_w),
                      PARAM(m, o->n3_b), NULL, NULL, 0, tk, D, eps);
    WAN_TRY(gather_begin(&r, m, k->ln3, D, &c));
    /* the text's k|v under the gather's first transfer (started before it, it would delay it) */
    op->matmul_fwd(be, k->ckv, act, a->ctx, act, PARAM(m, o->ckv_w), PARAM(m, o->ckv_b), BL, 2 * Dl, D);
    while (c >= 0) {
        size_t r0 = (size_t)c * r.rows;
        op->matmul_fwd(be, ACT_AT(m, k->cq, r0 * Dl), act, ACT_AT(m, k->ln3, r0 * D), act, PARAM(m, o->cq_w),
                       PARAM(m, o->cq_b), r.rows, Dl, D);
        WAN_TRY(gather_next(&r, &c));
    }
    WAN_TRY(qk_norm_forward(m, k->cqn, Dl, k->rr_cq, k->cq, Dl, Tf, o->cnq, NULL, tkf, k->ckn, Dl, k->rr_ck, k->ckv,
                            2 * Dl, BL, o->cnk, NULL, tkt));
    op->attention_fwd(be, k->catt, Dl, k->clse, k->cqn, Dl, k->ckn, Dl, ACT_AT(m, k->ckv, Dl), 2 * Dl, B, m->Hl, s->S_cp,
                      m->L, m->hd, m->L, scale);
    WAN_TRY(row_parallel_forward(m, a->dln, k->catt, Dl, o->co_w)); /* dln is free until the backward */
    op->residual_fwd(be, x, a->dln, PARAM(m, o->co_b), NULL, 0, tk, D);
    be->copy(be, k->x2, x, TD);

    /* ---- FFN ---- */
    op->layernorm_fwd(be, ACT_AT(m, k->ln2, (size_t)s->tok0 * D), act, k->mean2, k->rstd2, x, NULL, NULL, shift2, scale2,
                      6 * D, tk, D, eps);
    /* the GEMM and its GELU in one op, chunk by chunk as the gathered rows arrive */
    WAN_TRY(gather_begin(&r, m, k->ln2, D, &c));
    while (c >= 0) {
        size_t r0 = (size_t)c * r.rows;
        op->matmul_gelu_fwd(be, ACT_AT(m, k->g, r0 * Fl), ACT_AT(m, k->h, r0 * Fl), ACT_AT(m, k->ln2, r0 * D),
                            PARAM(m, o->f1_w), PARAM(m, o->f1_b), r.rows, Fl, D);
        WAN_TRY(gather_next(&r, &c));
    }
    WAN_TRY(row_parallel_forward(m, k->ff_y, k->g, Fl, o->f2_w));
    op->residual_fwd(be, x, k->ff_y, PARAM(m, o->f2_b), gate2, 6 * D, tk, D);
    return 0;
}

/* ---------------------------------------------------------------- block backward */

/* a->dx (this rank's rows) -> this rank's rows of a->dy [Tf, D] act, times the gate (NULL =
 * none); the caller gathers the rest while it uses them. */
static void residual_backward(wan_model *m, const float *y, int64_t bias, const float *gate, float *dgate) {
    struct wan_model_acts *a = m->a;
    m->be->ops->residual_bwd(m->be, ACT_AT(m, a->dy, (size_t)m->sh.tok0 * m->D), m->be->act, GRAD(m, bias), dgate, a->dx,
                             y, PARAM(m, bias), gate, 6 * m->D, wan_tk_local(m), m->D);
}

/* The order below keeps the tensor-parallel transfers under GEMMs: a row-parallel layer's
 * input gradient is computed chunk by chunk as the gathered output gradient arrives; a
 * column-parallel layer's input gradient (partial over tp) is computed chunk by chunk into
 * the reduce-scatter ring; and the weight gradients, which need no communication, come
 * between that ring's last transfer and its wait. */
int wan_block_backward(wan_model *m, int l, wan_block_acts *k) {
    struct wan_model_acts *a = m->a;
    const wan_block_offsets *o = &m->blk[l];
    const wan_ops *op = m->be->ops;
    wan_backend *be = m->be;
    const wan_shape *s = &m->sh;
    wan_dtype act = be->act;
    int B = s->B, D = m->D, Dl = m->Dl, Fl = m->Fl, Tf = s->Tf, BL = B * m->L;
    float scale = m->attn_scale;
    wan_tokens tk = wan_tk_local(m), tkf = wan_tk_full(m), tkt = {BL, 0, m->L, 0};
    size_t psz = wan_dtype_size(be->param);
    float *scale1 = k->mod + D, *gate1 = k->mod + 2 * D, *scale2 = k->mod + 4 * D, *gate2 = k->mod + 5 * D;
    float *dmod = a->dmod;
    tp_ring r;
    be->memset0(be, dmod, (size_t)B * 6 * D * sizeof(float));

    /* ---- FFN ---- */
    residual_backward(m, k->ff_y, o->f2_b, gate2, dmod + 5 * D);
    WAN_TRY(row_parallel_backward_input(m, a->dh, Fl, o->f2_w, k->h));
    WAN_TRY(column_parallel_backward_input(m, &r, a->dh, Fl, PARAM(m, o->f1_w), NULL, 0, NULL));
    op->matmul_bwd(be, NULL, act, false, GRAD(m, o->f2_w), NULL, a->dy, act, k->g, act, NULL, Tf, D, Fl);
    op->matmul_bwd(be, NULL, act, false, GRAD(m, o->f1_w), GRAD(m, o->f1_b), a->dh, act, k->ln2, act, NULL, Tf, Fl, D);
    WAN_TRY(reduce_finish(&r));
    op->layernorm_bwd(be, a->dx, NULL, NULL, dmod + 3 * D, dmod + 4 * D, a->y_part, WAN_F32, k->x2, k->mean2, k->rstd2, NULL,
                      scale2, 6 * D, tk, D);

    /* ---- cross-attention ---- */
    residual_backward(m, NULL, o->co_b, NULL, NULL);
    WAN_TRY(row_parallel_backward_input(m, a->dcatt, Dl, o->co_w, NULL));
    /* dk -> dckn, dv -> the v columns of dckv */
    op->attention_bwd(be, a->dcqn, Dl, a->dckn, Dl, ACT_AT(m, a->dckv, Dl), 2 * Dl, 0, a->dcatt, Dl, k->catt, Dl,
                      k->clse, k->cqn, Dl, k->ckn, Dl, ACT_AT(m, k->ckv, Dl), 2 * Dl, B, m->Hl, s->S_cp, m->L, m->hd, m->L,
                      scale);
    WAN_TRY(qk_norm_backward(m, a->dcq, Dl, a->dcqn, Dl, k->cq, Dl, k->rr_cq, Tf, o->cnq, NULL, tkf, a->dckv, 2 * Dl,
                             a->dckn, Dl, k->ckv, 2 * Dl, k->rr_ck, BL, o->cnk, NULL, tkt));
    WAN_TRY(column_parallel_backward_input(m, &r, a->dcq, Dl, PARAM(m, o->cq_w), NULL, 0, NULL));
    op->matmul_bwd(be, a->dctx, WAN_F32, true, GRAD(m, o->ckv_w), GRAD(m, o->ckv_b), a->dckv, act, a->ctx, act,
                   PARAM(m, o->ckv_w), BL, 2 * Dl, D);
    op->matmul_bwd(be, NULL, act, false, GRAD(m, o->co_w), NULL, a->dy, act, k->catt, act, NULL, Tf, D, Dl);
    op->matmul_bwd(be, NULL, act, false, GRAD(m, o->cq_w), GRAD(m, o->cq_b), a->dcq, act, k->ln3, act, NULL, Tf, Dl, D);
    WAN_TRY(reduce_finish(&r));
    op->layernorm_bwd(be, a->dx, GRAD(m, o->n3_w), GRAD(m, o->n3_b), NULL, NULL, a->y_part, WAN_F32, k->x1, k->mean3,
                      k->rstd3, PARAM(m, o->n3_w), NULL, 0, tk, D);

    /* ---- self-attention ---- */
    residual_backward(m, k->sa_y, o->o_b, gate1, dmod + 2 * D);
    WAN_TRY(row_parallel_backward_input(m, a->datt, Dl, o->o_w, NULL));
    WAN_TRY(self_attention_backward(m, k));
    size_t TDl = (size_t)Tf * Dl;
    WAN_TRY(qk_norm_backward(m, a->dqk_raw, 2 * Dl, a->dq, Dl, k->qk, 2 * Dl, k->rr_q, Tf, o->nq, &a->rope, tkf,
                             ACT_AT(m, a->dqk_raw, Dl), 2 * Dl, a->dkv, Dl, ACT_AT(m, k->qk, Dl), 2 * Dl, k->rr_k, Tf,
                             o->nk, &a->rope, tkf));
    char *qkv_w = PARAM(m, o->qkv_w), *v_w = qkv_w + (size_t)2 * Dl * D * psz;
    void *dv = ACT_AT(m, a->dkv, TDl);
    WAN_TRY(column_parallel_backward_input(m, &r, a->dqk_raw, 2 * Dl, qkv_w, dv, Dl, v_w));
    op->matmul_bwd(be, NULL, act, false, GRAD(m, o->o_w), NULL, a->dy, act, k->att, act, NULL, Tf, D, Dl);
    op->matmul_bwd(be, NULL, act, false, GRAD(m, o->qkv_w), GRAD(m, o->qkv_b), a->dqk_raw, act, k->ln1, act, NULL, Tf,
                   2 * Dl, D);
    op->matmul_bwd(be, NULL, act, false, GRAD(m, o->qkv_w) + (size_t)2 * Dl * D, GRAD(m, o->qkv_b) + 2 * Dl, dv, act,
                   k->ln1, act, NULL, Tf, Dl, D);
    WAN_TRY(reduce_finish(&r));
    op->layernorm_bwd(be, a->dx, NULL, NULL, dmod, dmod + D, a->y_part, WAN_F32, k->x_in, k->mean1, k->rstd1, NULL, scale1,
                      6 * D, tk, D);

    /* modulation: the parameter and e0 receive the same gradient */
    op->sum_rows(be, GRAD(m, o->mod), dmod, (size_t)B * 6 * D, (size_t)6 * D);
    op->add(be, a->de0, dmod, WAN_F32, (size_t)B * 6 * D);
    return 0;
}
