/* CPU attention against a naive double-precision reference: forward (out, lse), backward
 * against central finite differences, on strided BSHD layouts (fused q|k|v and k|v buffers),
 * Sq != Skv, kv_valid < Skv, query counts across the 256-row blocks, both accumulate modes;
 * the context-parallel merge of key blocks equals attention over all keys, the backward per
 * key block with the final (out, lse) adds up to the full backward, and 1 and 2 threads give
 * bit-identical results. */
#include "error.h"
#include "ops.h"
#define OPS_CHECK_SEED 0x2545f4914f6cdd1dull
#include "ops_check.h"
#include "test.h"

/* ---------------- helpers ---------------- */

/* Dense rows [T, D] <-> columns [col0, col0 + D) of rows of stride ld. */
static void put_cols(float *buf, int ld, int col0, const float *dense, int T, int D) {
    for (int i = 0; i < T; i++) memcpy(buf + (size_t)i * ld + col0, dense + (size_t)i * D, D * sizeof(float));
}
static void get_cols(float *dense, const float *buf, int ld, int col0, int T, int D) {
    for (int i = 0; i < T; i++) memcpy(dense + (size_t)i * D, buf + (size_t)i * ld + col0, D * sizeof(float));
}

static wan_backend *be;

/* ---------------- the reference ---------------- */

/* Dense [B, S, H, hd] tensors in double. */
typedef struct {
    int B, H, Sq, Skv, hd, kv_valid;
    double scale;
    double *q, *k, *v, *dout, *out, *lse;
} att_ref;

static void att_ref_fwd(att_ref *r) {
    int D = r->H * r->hd;
    double *logit = malloc((r->Skv ? r->Skv : 1) * sizeof(double));
    for (int b = 0; b < r->B; b++)
        for (int h = 0; h < r->H; h++)
            for (int s = 0; s < r->Sq; s++) {
                const double *q = r->q + ((size_t)b * r->Sq + s) * D + h * r->hd;
                double *o = r->out + ((size_t)b * r->Sq + s) * D + h * r->hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < r->kv_valid; j++) {
                    const double *k = r->k + ((size_t)b * r->Skv + j) * D + h * r->hd;
                    double l = 0;
                    for (int d = 0; d < r->hd; d++) l += q[d] * k[d];
                    logit[j] = l * r->scale;
                    mx = fmax(mx, logit[j]);
                }
                for (int j = 0; j < r->kv_valid; j++) sum += exp(logit[j] - mx);
                for (int d = 0; d < r->hd; d++) o[d] = 0;
                for (int j = 0; j < r->kv_valid; j++) {
                    const double *v = r->v + ((size_t)b * r->Skv + j) * D + h * r->hd;
                    double p = exp(logit[j] - mx) / sum;
                    for (int d = 0; d < r->hd; d++) o[d] += p * v[d];
                }
                r->lse[((size_t)b * r->H + h) * r->Sq + s] = r->kv_valid ? mx + log(sum) : -INFINITY;
            }
    free(logit);
}
static double att_loss(void *ctx) {
    att_ref *r = ctx;
    att_ref_fwd(r);
    double s = 0;
    for (size_t i = 0; i < (size_t)r->B * r->Sq * r->H * r->hd; i++) s += r->dout[i] * r->out[i];
    return s;
}

/* ---------------- forward and backward against the reference ---------------- */

typedef struct {
    int B, H, Sq, Skv, hd, kv_valid;
    bool fused_qkv; /* self-attention: q|k|v in one buffer (Sq == Skv); else q alone, k|v fused */
} att_case;

static void attention_case(att_case c) {
    int D = c.H * c.hd, Tq = c.B * c.Sq, Tk = c.B * c.Skv;
    size_t nq = (size_t)Tq * D, nk = (size_t)Tk * D;
    float scale = 1.3f / sqrtf((float)c.hd);
    float *q = frand(nq, -1.5, 1.5), *k = frand(nk, -1.5, 1.5), *v = frand(nk, -1, 1),
          *dout = frand(nq, -1, 1);
    att_ref r = {c.B,
                 c.H,
                 c.Sq,
                 c.Skv,
                 c.hd,
                 c.kv_valid,
                 scale,
                 dcopy(q, nq),
                 dcopy(k, nk),
                 dcopy(v, nk),
                 dcopy(dout, nq),
                 dzeros(nq),
                 dzeros((size_t)c.B * c.H * c.Sq)};
    att_ref_fwd(&r);

    /* layouts: q, k, v column blocks of one or two buffers, with a spare column at the end */
    int ldq, ldk, ldv, qc, kc, vc;
    if (c.fused_qkv)
        ldq = ldk = ldv = 3 * D + 2, qc = 0, kc = D, vc = 2 * D;
    else
        ldq = D + 1, ldk = ldv = 2 * D + 1, qc = 0, kc = 0, vc = D;
    int ldo = D + 3, lddo = D + 1;
    float *qbuf = frand((size_t)Tq * ldq, -9, 9);
    float *kbuf = c.fused_qkv ? qbuf : frand((size_t)Tk * ldk, -9, 9);
    put_cols(qbuf, ldq, qc, q, Tq, D);
    put_cols(kbuf, ldk, kc, k, Tk, D);
    put_cols(kbuf, ldv, vc, v, Tk, D);
    float *obuf = frand((size_t)Tq * ldo, -9, 9), *lse = frand((size_t)c.B * c.H * c.Sq, -9, 9);
    be->ops->attention_fwd(be, obuf, ldo, lse, qbuf + qc, ldq, kbuf + kc, ldk, kbuf + vc, ldv, c.B, c.H, c.Sq,
                           c.Skv, c.hd, c.kv_valid, scale);
    float *out = malloc(nq * sizeof(float));
    get_cols(out, obuf, ldo, 0, Tq, D);
    CHECK_CLOSE("attention_fwd out", out, r.out, nq, 1e-5);
    size_t nl = (size_t)c.B * c.H * c.Sq;
    double worst = 0;
    for (size_t i = 0; i < nl; i++) worst = fmax(worst, fabs(lse[i] - r.lse[i]));
    CHECKF(worst < 1e-5, "attention_fwd lse: worst error %.3g", worst);

    double *gq = dzeros(nq), *gk = dzeros(nk), *gv = dzeros(nk);
    fd_grad(att_loss, &r, r.q, nq, gq);
    fd_grad(att_loss, &r, r.k, nk, gk);
    fd_grad(att_loss, &r, r.v, nk, gv);
    float *gbuf = frand((size_t)Tq * lddo, -9, 9);
    put_cols(gbuf, lddo, 0, dout, Tq, D);

    /* all written; all added to; dq added to with dk, dv written (the context-parallel ring) */
    const unsigned modes[3] = {0, WAN_ACC_ALL, WAN_ACC_DQ};
    for (int mi = 0; mi < 3; mi++) {
        unsigned acc = modes[mi];
        /* gradients in the same layouts as the inputs, over random values */
        float *dqbuf = frand((size_t)Tq * ldq, -1, 1);
        float *dkbuf = c.fused_qkv ? dqbuf : frand((size_t)Tk * ldk, -1, 1);
        float *before = malloc((size_t)(Tq * ldq + Tk * ldk) * sizeof(float));
        memcpy(before, dqbuf, (size_t)Tq * ldq * sizeof(float));
        memcpy(before + (size_t)Tq * ldq, dkbuf, (size_t)Tk * ldk * sizeof(float));
        be->ops->attention_bwd(be, dqbuf + qc, ldq, dkbuf + kc, ldk, dkbuf + vc, ldv, acc, gbuf, lddo,
                               obuf, ldo, lse, qbuf + qc, ldq, kbuf + kc, ldk, kbuf + vc, ldv, c.B, c.H, c.Sq,
                               c.Skv, c.hd, c.kv_valid, scale);
        float *dq = malloc(nq * sizeof(float)), *dk = malloc(nk * sizeof(float)),
              *dv = malloc(nk * sizeof(float));
        float *q0 = malloc(nq * sizeof(float)), *k0 = malloc(nk * sizeof(float)),
              *v0 = malloc(nk * sizeof(float));
        get_cols(dq, dqbuf, ldq, qc, Tq, D);
        get_cols(dk, dkbuf, ldk, kc, Tk, D);
        get_cols(dv, dkbuf, ldv, vc, Tk, D);
        get_cols(q0, before, ldq, qc, Tq, D);
        get_cols(k0, before + (c.fused_qkv ? 0 : (size_t)Tq * ldq), ldk, kc, Tk, D);
        get_cols(v0, before + (c.fused_qkv ? 0 : (size_t)Tq * ldq), ldv, vc, Tk, D);
        double *wq = dzeros(nq), *wk = dzeros(nk), *wv = dzeros(nk);
        bool aq = acc & WAN_ACC_DQ, ak = acc & WAN_ACC_DK, av = acc & WAN_ACC_DV;
        for (size_t i = 0; i < nq; i++) wq[i] = gq[i] + (aq ? q0[i] : 0);
        for (size_t i = 0; i < nk; i++) wk[i] = gk[i] + (ak ? k0[i] : 0), wv[i] = gv[i] + (av ? v0[i] : 0);
        CHECK_CLOSE(aq ? "attention_bwd dq (+=)" : "attention_bwd dq", dq, wq, nq, 1e-4);
        CHECK_CLOSE(ak ? "attention_bwd dk (+=)" : "attention_bwd dk", dk, wk, nk, 1e-4);
        CHECK_CLOSE(av ? "attention_bwd dv (+=)" : "attention_bwd dv", dv, wv, nk, 1e-4);
        /* the spare columns of the gradient buffers are untouched */
        bool kept = true;
        for (int i = 0; i < Tq; i++)
            for (int j = c.fused_qkv ? 3 * D : D; j < ldq; j++)
                kept &= dqbuf[(size_t)i * ldq + j] == before[(size_t)i * ldq + j];
        if (!c.fused_qkv)
            for (int i = 0; i < Tk; i++)
                kept &= dkbuf[(size_t)i * ldk + 2 * D] == before[(size_t)Tq * ldq + (size_t)i * ldk + 2 * D];
        CHECK(kept);
        free(dqbuf), free(before), free(dq), free(dk), free(dv), free(q0), free(k0), free(v0), free(wq),
            free(wk), free(wv);
        if (!c.fused_qkv) free(dkbuf);
    }
    free(q), free(k), free(v), free(dout), free(r.q), free(r.k), free(r.v), free(r.dout), free(r.out),
        free(r.lse);
    free(qbuf), free(obuf), free(lse), free(out), free(gq), free(gk), free(gv), free(gbuf);
    if (!c.fused_qkv) free(kbuf);
}

static void test_attention_self_fused(void) {
    /* 6 heads (one per thread), padding keys masked */
    attention_case((att_case){.B = 2, .H = 3, .Sq = 9, .Skv = 9, .hd = 4, .kv_valid = 7, .fused_qkv = true});
}
static void test_attention_cross(void) {
    attention_case(
        (att_case){.B = 2, .H = 2, .Sq = 5, .Skv = 11, .hd = 6, .kv_valid = 11, .fused_qkv = false});
}
static void test_attention_long(void) {
    /* queries across two 256-row blocks; one head, so the threads split inside it */
    attention_case(
        (att_case){.B = 1, .H = 1, .Sq = 300, .Skv = 40, .hd = 2, .kv_valid = 33, .fused_qkv = false});
}

/* ---------------- context parallelism: key blocks ---------------- */

/* Keys [k0, k0 + n) of a dense [B, Skv, D] tensor as their own [B, n, ld] tensor. */
static float *key_block(const float *full, int B, int Skv, int D, int k0, int n, int ld) {
    float *blk = frand((size_t)B * (n ? n : 1) * ld, -9, 9);
    for (int b = 0; b < B; b++)
        for (int s = 0; s < n; s++)
            memcpy(blk + ((size_t)b * n + s) * ld, full + ((size_t)b * Skv + k0 + s) * D, D * sizeof(float));
    return blk;
}

static void test_attention_blocks(void) {
    int B = 2, H = 2, Sq = 6, hd = 5, D = H * hd, Skv = 11, kv_valid = 9, ld = D + 1;
    float scale = 1.0f / sqrtf((float)hd);
    size_t nq = (size_t)B * Sq * D, nk = (size_t)B * Skv * D, nl = (size_t)B * H * Sq;
    float *q = frand(nq, -2, 2), *k = frand(nk, -2, 2), *v = frand(nk, -1, 1), *dout = frand(nq, -1, 1);
    /* all keys at once */
    float *out = malloc(nq * sizeof(float)), *lse = malloc(nl * sizeof(float));
    be->ops->attention_fwd(be, out, D, lse, q, D, k, D, v, D, B, H, Sq, Skv, hd, kv_valid, scale);
    /* three blocks as context-parallel ranks hold them: 5 keys, 6 keys of which 4 are valid, and
     * 3 padding keys only (an empty softmax) */
    int bk0[3] = {0, 5, 11 - 3}, bn[3] = {5, 6, 3}, bvalid[3] = {5, 4, 0};
    float *kb[3], *vb[3], *ob[3], *lb[3];
    for (int i = 0; i < 3; i++) {
        kb[i] = key_block(k, B, Skv, D, bk0[i], bn[i], ld);
        vb[i] = key_block(v, B, Skv, D, bk0[i], bn[i], ld);
        ob[i] = malloc(nq * sizeof(float)), lb[i] = malloc(nl * sizeof(float));
        be->ops->attention_fwd(be, ob[i], D, lb[i], q, D, kb[i], ld, vb[i], ld, B, H, Sq, bn[i], hd,
                               bvalid[i], scale);
    }
    bool empty_ok = true;
    for (size_t i = 0; i < nl; i++) empty_ok &= lb[2][i] == -INFINITY;
    for (size_t i = 0; i < nq; i++) empty_ok &= ob[2][i] == 0;
    CHECK(empty_ok);

    double *want_o = dcopy(out, nq), *want_l = dcopy(lse, nl);
    const int orders[2][3] = {{2, 0, 1}, {1, 2, 0}}; /* the empty block first, or in the middle */
    for (int o = 0; o < 2; o++) {
        float *acc = frand(nq, -9, 9), *lacc = frand(nl, -9, 9);
        for (int j = 0; j < 3; j++) {
            int i = orders[o][j];
            be->ops->attention_merge(be, acc, lacc, ob[i], D, lb[i], B, H, Sq, hd, j == 0);
        }
        CHECK_CLOSE("attention_merge out", acc, want_o, nq, 1e-5);
        CHECK_CLOSE("attention_merge lse", lacc, want_l, nl, 1e-6);
        free(acc), free(lacc);
    }

    /* backward: the full one, and per block with the final (out, lse): dq accumulated over the
     * blocks, each block's dk/dv written over what its buffers held (the context-parallel ring) */
    float *dq = malloc(nq * sizeof(float)), *dk = malloc(nk * sizeof(float)),
          *dv = malloc(nk * sizeof(float));
    be->ops->attention_bwd(be, dq, D, dk, D, dv, D, 0, dout, D, out, D, lse, q, D, k, D, v, D, B, H, Sq,
                           Skv, hd, kv_valid, scale);
    float *dq2 = frand(nq, -9, 9), *dkb[3], *dvb[3];
    for (int i = 0; i < 3; i++) {
        dkb[i] = frand((size_t)B * bn[i] * ld, -9, 9), dvb[i] = frand((size_t)B * bn[i] * ld, -9, 9);
        be->ops->attention_bwd(be, dq2, D, dkb[i], ld, dvb[i], ld, i > 0 ? WAN_ACC_DQ : 0, dout, D, out, D, lse, q,
                               D, kb[i], ld, vb[i], ld, B, H, Sq, bn[i], hd, bvalid[i], scale);
    }
    double *wq = dcopy(dq, nq);
    CHECK_CLOSE("blockwise attention_bwd dq", dq2, wq, nq, 1e-5);
    float *gk = malloc(nk * sizeof(float)), *gv = malloc(nk * sizeof(float));
    for (int i = 0; i < 2; i++) /* blocks 0 and 1 cover keys 0..10 */
        for (int b = 0; b < B; b++)
            for (int s = 0; s < bn[i]; s++) {
                memcpy(gk + ((size_t)b * Skv + bk0[i] + s) * D, dkb[i] + ((size_t)b * bn[i] + s) * ld,
                       D * sizeof(float));
                memcpy(gv + ((size_t)b * Skv + bk0[i] + s) * D, dvb[i] + ((size_t)b * bn[i] + s) * ld,
                       D * sizeof(float));
            }
    double *wk = dcopy(dk, nk), *wv = dcopy(dv, nk);
    CHECK_CLOSE("blockwise attention_bwd dk", gk, wk, nk, 1e-5);
    CHECK_CLOSE("blockwise attention_bwd dv", gv, wv, nk, 1e-5);
    bool zero = true; /* masked keys have zero gradient (written over the random start) */
    for (size_t r = 0; r < (size_t)B * bn[2]; r++)
        for (int d = 0; d < D; d++) zero &= dkb[2][r * ld + d] == 0 && dvb[2][r * ld + d] == 0;
    for (int b = 0; b < B; b++)
        for (int s = kv_valid; s < Skv; s++)
            for (int d = 0; d < D; d++) zero &= dk[((size_t)b * Skv + s) * D + d] == 0;
    CHECK(zero);

    for (int i = 0; i < 3; i++)
        free(kb[i]), free(vb[i]), free(ob[i]), free(lb[i]), free(dkb[i]), free(dvb[i]);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(want_o), free(want_l), free(dq),
        free(dk);
    free(dv), free(dq2), free(wq), free(gk), free(gv), free(wk), free(wv);
}

/* ---------------- 1 thread vs 2 threads ---------------- */

static void threads_case(int B, int H, int S, int hd, int kv_valid) {
    wan_backend *bes[2] = {wan_backend_cpu(1), wan_backend_cpu(2)};
    WAN_ASSERT(bes[0] && bes[1]);
    int D = H * hd;
    size_t n = (size_t)B * S * D, nl = (size_t)B * H * S;
    float *q = frand(n, -2, 2), *k = frand(n, -2, 2), *v = frand(n, -1, 1), *g = frand(n, -1, 1);
    float *out[2], *lse[2], *dq[2], *dk[2], *dv[2];
    for (int t = 0; t < 2; t++) {
        wan_backend *e = bes[t];
        out[t] = malloc(n * 4), lse[t] = malloc(nl * 4), dq[t] = malloc(n * 4), dk[t] = malloc(n * 4),
        dv[t] = malloc(n * 4);
        e->ops->attention_fwd(e, out[t], D, lse[t], q, D, k, D, v, D, B, H, S, S, hd, kv_valid, 0.125f);
        e->ops->attention_bwd(e, dq[t], D, dk[t], D, dv[t], D, false, g, D, out[t], D, lse[t], q, D, k, D, v,
                              D, B, H, S, S, hd, kv_valid, 0.125f);
    }
    CHECKF(memcmp(out[0], out[1], n * 4) == 0 && memcmp(lse[0], lse[1], nl * 4) == 0, "forward B=%d H=%d", B,
           H);
    CHECKF(memcmp(dq[0], dq[1], n * 4) == 0 && memcmp(dk[0], dk[1], n * 4) == 0 &&
               memcmp(dv[0], dv[1], n * 4) == 0,
           "backward B=%d H=%d", B, H);
    for (int t = 0; t < 2; t++)
        free(out[t]), free(lse[t]), free(dq[t]), free(dk[t]), free(dv[t]), wan_backend_destroy(bes[t]);
    free(q), free(k), free(v), free(g);
}

static void test_attention_threads_bit_identical(void) {
    threads_case(1, 1, 300, 64, 290); /* one head: threads inside it */
    threads_case(2, 3, 130, 16, 130); /* a head per thread */
}

int main(void) {
    be = wan_backend_cpu(2);
    WAN_ASSERT(be);
    RUN(test_attention_self_fused);
    RUN(test_attention_cross);
    RUN(test_attention_long);
    RUN(test_attention_blocks);
    RUN(test_attention_threads_bit_identical);
    wan_backend_destroy(be);
    return test_summary();
}
