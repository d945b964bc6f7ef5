/* Attention softmax(q k^T * scale) v per (sample, head) over BSHD strided tensors, its backward
 * from the final (out, lse), and the online-softmax merge of context-parallel key blocks.
 *
 * Work is blocked over queries: a block of query rows against all valid keys is one product
 * for the logits and one for P v, with a [block, kv_valid] buffer per thread (never Sq x Skv).
 * The block size depends on kv_valid alone, so the order of every sum is the same for any
 * thread count. */
#include <math.h>
#include <stdlib.h>

#include "ops_cpu_internal.h"

/* Query rows per block: 256 (large products run OpenBLAS best) unless the logits of a block
 * would pass 2M floats (8 MB), then fewer, in multiples of 64. */
#define ATT_QBLK_MAX 256
static int query_block(int kv_valid) {
    int rows = kv_valid > 0 ? (1 << 21) / kv_valid / 64 * 64 : ATT_QBLK_MAX;
    return rows < 64 ? 64 : rows > ATT_QBLK_MAX ? ATT_QBLK_MAX : rows;
}

/* Element (b, s, h, 0) of a BSHD tensor with S rows per sample and row stride ld. */
static inline size_t bshd(int b, int S, int s, int ld, int h, int hd) {
    return ((size_t)b * S + s) * (size_t)ld + (size_t)h * hd;
}

/* Turn n scaled logits into exp(x - max) in place and return max + log(sum) (the lse); the
 * sum is accumulated in double. *inv_sum gets 1 / sum. */
static float softmax_row(float *row, int n, float scale, float *inv_sum) {
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < n; j++) {
        row[j] *= scale;
        mx = row[j] > mx ? row[j] : mx;
    }
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < n; j++) {
        row[j] = cpu_expf(row[j] - mx);
        sum += row[j];
    }
    *inv_sum = (float)(1.0 / sum);
    return mx + (float)log(sum);
}

void cpu_attention_fwd(wan_backend *be, void *out, int ldo, float *lse, const void *q, int ldq, const void *k,
                       int ldk, const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                       float scale) {
    WAN_ASSERT(kv_valid >= 0 && kv_valid <= Skv);
    cpu_use_threads(be);
    const float *qv = q, *kv = k, *vv = v;
    float *ov = out;
    int qblk = query_block(kv_valid), nqb = (Sq + qblk - 1) / qblk;
    long tasks = (long)B * H * nqb;
#pragma omp parallel num_threads(cpu_threads(be))
    {
        float *logits = cpu_scratch((size_t)qblk * (kv_valid ? kv_valid : 1) * sizeof(float));
#pragma omp for schedule(dynamic)
        for (long task = 0; task < tasks; task++) {
            int b = (int)(task / ((long)H * nqb)), h = (int)(task / nqb % H), qb = (int)(task % nqb);
            int q0 = qb * qblk, m = Sq - q0 < qblk ? Sq - q0 : qblk;
            float *o = ov + bshd(b, Sq, q0, ldo, h, hd);
            float *l = lse + ((size_t)b * H + h) * Sq + q0;
            if (kv_valid == 0) { /* no key: empty softmax */
                for (int i = 0; i < m; i++) {
                    memset(o + (size_t)i * ldo, 0, (size_t)hd * sizeof(float));
                    l[i] = -INFINITY;
                }
                continue;
            }
            cpu_gemm(1, CPU_TILES_ATTENTION, false, true, m, kv_valid, hd, 1.0f,
                     qv + bshd(b, Sq, q0, ldq, h, hd), ldq, kv + bshd(b, Skv, 0, ldk, h, hd), ldk, 0.0f,
                     logits, kv_valid);
            float inv_sum[ATT_QBLK_MAX];
            for (int i = 0; i < m; i++)
                l[i] = softmax_row(logits + (size_t)i * kv_valid, kv_valid, scale, &inv_sum[i]);
            cpu_gemm(1, CPU_TILES_ATTENTION, false, false, m, hd, kv_valid, 1.0f, logits, kv_valid,
                     vv + bshd(b, Skv, 0, ldv, h, hd), ldv, 0.0f, o, ldo);
            for (int i = 0; i < m; i++)
#pragma omp simd
                for (int d = 0; d < hd; d++) o[(size_t)i * ldo + d] *= inv_sum[i];
        }
        free(logits);
    }
}

/* The backward of one (b, h), query block by query block in order:
 *   P = exp(q k^T * scale - lse), Di = sum_d dout * out
 *   dv += P^T dout;  dS = P * (dout v^T - Di);  dq (=|+=) scale dS k;  dk += scale dS^T q.
 * threads > 1 only when called outside a parallel region: the products and the row loops then
 * split over threads (with the same results). p and dp hold [query_block, kv_valid]. */
typedef struct {
    float *dq, *dk, *dv;
    int lddq, lddk, lddv;
    unsigned accumulate; /* WAN_ACC_* */
    const float *dout, *out, *lse, *q, *k, *v;
    int lddo, ldo, ldq, ldk, ldv;
    int H, Sq, Skv, hd, kv_valid;
    float scale;
} att_bwd_args;

static void attention_bwd_head(const att_bwd_args *a, int b, int h, float *p, float *dp, int threads) {
    int hd = a->hd, kvn = a->kv_valid, qblk = query_block(kvn);
    float *dk = a->dk + bshd(b, a->Skv, 0, a->lddk, h, hd);
    float *dv = a->dv + bshd(b, a->Skv, 0, a->lddv, h, hd);
    const float *kp = a->k + bshd(b, a->Skv, 0, a->ldk, h, hd);
    const float *vp = a->v + bshd(b, a->Skv, 0, a->ldv, h, hd);
    /* written gradients: all rows cleared first, so masked keys get a zero gradient */
    for (int s = 0; s < a->Skv; s++) {
        if (!(a->accumulate & WAN_ACC_DK)) memset(dk + (size_t)s * a->lddk, 0, (size_t)hd * sizeof(float));
        if (!(a->accumulate & WAN_ACC_DV)) memset(dv + (size_t)s * a->lddv, 0, (size_t)hd * sizeof(float));
    }
    for (int q0 = 0; q0 < a->Sq; q0 += qblk) {
        int m = a->Sq - q0 < qblk ? a->Sq - q0 : qblk;
        float *dq = a->dq + bshd(b, a->Sq, q0, a->lddq, h, hd);
        const float *qp = a->q + bshd(b, a->Sq, q0, a->ldq, h, hd);
        const float *gp = a->dout + bshd(b, a->Sq, q0, a->lddo, h, hd);
        const float *op = a->out + bshd(b, a->Sq, q0, a->ldo, h, hd);
        const float *lse = a->lse + ((size_t)b * a->H + h) * a->Sq + q0;
        if (kvn == 0) {
            if (!(a->accumulate & WAN_ACC_DQ))
                for (int i = 0; i < m; i++) memset(dq + (size_t)i * a->lddq, 0, (size_t)hd * sizeof(float));
            continue;
        }
        cpu_gemm(threads, CPU_TILES_ATTENTION, false, true, m, kvn, hd, 1.0f, qp, a->ldq, kp, a->ldk, 0.0f, p,
                 kvn);
        cpu_gemm(threads, CPU_TILES_ATTENTION, false, true, m, kvn, hd, 1.0f, gp, a->lddo, vp, a->ldv, 0.0f,
                 dp, kvn);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
        for (int i = 0; i < m; i++) {
            const float *g = gp + (size_t)i * a->lddo, *o = op + (size_t)i * a->ldo;
            double di = 0;
#pragma omp simd reduction(+ : di)
            for (int d = 0; d < hd; d++) di += (double)g[d] * o[d];
            float Di = (float)di, l = lse[i], sc = a->scale;
            float *pr = p + (size_t)i * kvn, *dpr = dp + (size_t)i * kvn;
            if (l == -INFINITY) { /* no key anywhere: P = 0 */
                memset(pr, 0, (size_t)kvn * sizeof(float));
                memset(dpr, 0, (size_t)kvn * sizeof(float));
                continue;
            }
#pragma omp simd
            for (int j = 0; j < kvn; j++) {
                float pj = cpu_expf(pr[j] * sc - l);
                pr[j] = pj;
                dpr[j] = pj * (dpr[j] - Di);
            }
        }
        cpu_gemm(threads, CPU_TILES_ATTENTION, true, false, kvn, hd, m, 1.0f, p, kvn, gp, a->lddo, 1.0f, dv,
                 a->lddv);
        cpu_gemm(threads, CPU_TILES_ATTENTION, false, false, m, hd, kvn, a->scale, dp, kvn, kp, a->ldk,
                 a->accumulate & WAN_ACC_DQ ? 1.0f : 0.0f, dq, a->lddq);
        cpu_gemm(threads, CPU_TILES_ATTENTION, true, false, kvn, hd, m, a->scale, dp, kvn, qp, a->ldq, 1.0f,
                 dk, a->lddk);
    }
}

void cpu_attention_bwd(wan_backend *be, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv,
                       unsigned accumulate, const void *dout, int lddo, const void *out, int ldo,
                       const float *lse, const void *q, int ldq, const void *k, int ldk, const void *v,
                       int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid, float scale) {
    WAN_ASSERT(kv_valid >= 0 && kv_valid <= Skv);
    cpu_use_threads(be);
    att_bwd_args a;
    a.dq = dq, a.dk = dk, a.dv = dv, a.lddq = lddq, a.lddk = lddk, a.lddv = lddv;
    a.accumulate = accumulate, a.dout = dout, a.lddo = lddo, a.out = out, a.ldo = ldo, a.lse = lse;
    a.q = q, a.ldq = ldq, a.k = k, a.ldk = ldk, a.v = v, a.ldv = ldv;
    a.H = H, a.Sq = Sq, a.Skv = Skv, a.hd = hd, a.kv_valid = kv_valid, a.scale = scale;
    int nt = cpu_threads(be), heads = B * H;
    size_t buf = (size_t)query_block(kv_valid) * (kv_valid ? kv_valid : 1) * sizeof(float);
    if (heads >= nt) { /* a (b, h) per thread, each single-threaded */
#pragma omp parallel num_threads(nt)
        {
            float *p = cpu_scratch(buf), *dp = cpu_scratch(buf);
#pragma omp for schedule(dynamic)
            for (int bh = 0; bh < heads; bh++) attention_bwd_head(&a, bh / H, bh % H, p, dp, 1);
            free(p);
            free(dp);
        }
    } else { /* fewer heads than threads: heads in turn, threads inside (same results) */
        float *p = cpu_scratch(buf), *dp = cpu_scratch(buf);
        for (int bh = 0; bh < heads; bh++) attention_bwd_head(&a, bh / H, bh % H, p, dp, nt);
        free(p);
        free(dp);
    }
}

/* acc = acc * exp(lse_acc - lse_new) + o * exp(lse_blk - lse_new), with
 * lse_new = max + log1p(exp(-|lse_acc - lse_blk|)); an empty side (lse = -inf) weighs 0. */
void cpu_attention_merge(wan_backend *be, float *acc, float *lse_acc, const void *o, int ldo,
                         const float *lse, int B, int H, int Sq, int hd, bool first) {
    const float *ov = o;
    int D = H * hd;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (long row = 0; row < (long)B * Sq; row++) {
        int b = (int)(row / Sq), s = (int)(row % Sq);
        for (int h = 0; h < H; h++) {
            float *a = acc + (size_t)row * D + (size_t)h * hd;
            const float *ob = ov + (size_t)row * ldo + (size_t)h * hd;
            size_t li = ((size_t)b * H + h) * Sq + s;
            float la = lse_acc[li], lb = lse[li];
            if (first || (la == -INFINITY && lb != -INFINITY)) {
                memcpy(a, ob, (size_t)hd * sizeof(float));
                lse_acc[li] = lb;
                continue;
            }
            if (lb == -INFINITY) continue; /* nothing to add (also when both are empty) */
            double hi = la > lb ? la : lb, lo = la > lb ? lb : la;
            double lnew = hi + log1p(exp(lo - hi));
            float wa = (float)exp(la - lnew), wb = (float)exp(lb - lnew);
            for (int d = 0; d < hd; d++) a[d] = a[d] * wa + ob[d] * wb;
            lse_acc[li] = (float)lnew;
        }
    }
}
