/* LayerNorm (affine or modulated) and the q/k RMSNorm over the full dim fused with 3D RoPE.
 * Row statistics are accumulated in double; parameter gradients are column sums over rows in
 * double, one column tile per thread (the order of every sum is fixed). */
#include <stdlib.h>

#include "ops_cpu_internal.h"

/* ---------------- LayerNorm ---------------- */

/* The Wan model uses either the affine (norm3) or the modulated form (norm1, norm2, head),
 * never both: the backward has no affine bias b, which d(scale) would need. */
void cpu_layernorm_fwd(wan_backend *be, void *out, wan_dtype out_dt, float *mean, float *rstd, const float *x,
                       const void *w, const void *b, const float *shift, const float *scale, int mod_stride,
                       wan_tokens tk, int D, float eps) {
    CPU_F32(out_dt);
    CPU_F32(be->param);
    WAN_ASSERT(!((w || b) && (shift || scale)));
    const float *wv = w, *bv = b;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int i = 0; i < tk.T; i++) {
        const float *xr = x + (size_t)i * D;
        float *yr = (float *)out + (size_t)i * D;
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < D; j++) sum += xr[j];
        double mu = sum / D, var = 0;
#pragma omp simd reduction(+ : var)
        for (int j = 0; j < D; j++) var += (xr[j] - mu) * (xr[j] - mu);
        float m = (float)mu, r = (float)(1.0 / sqrt(var / D + eps));
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = r;
        size_t mod = (size_t)cpu_tok_sample(tk, i) * mod_stride;
        const float *sh = shift ? shift + mod : NULL, *sc = scale ? scale + mod : NULL;
        /* one pass per factor: each loop vectorizes, the row stays in L1 */
#pragma omp simd
        for (int j = 0; j < D; j++) yr[j] = (xr[j] - m) * r;
        if (wv)
#pragma omp simd
            for (int j = 0; j < D; j++) yr[j] *= wv[j];
        if (bv)
#pragma omp simd
            for (int j = 0; j < D; j++) yr[j] += bv[j];
        if (sc)
#pragma omp simd
            for (int j = 0; j < D; j++) yr[j] *= 1.0f + sc[j];
        if (sh)
#pragma omp simd
            for (int j = 0; j < D; j++) yr[j] += sh[j];
    }
}

/* With xhat = (x - mean) * rstd and g = dout * (1 + scale) * w (whichever apply):
 * dx += rstd * (g - mean(g) - xhat * mean(g * xhat)); dw += dout * xhat; db += dout;
 * dshift += dout; dscale += dout * xhat (per sample). */
void cpu_layernorm_bwd(wan_backend *be, float *dx, float *dw, float *db, float *dshift, float *dscale,
                       const void *dout, wan_dtype dout_dt, const float *x, const float *mean,
                       const float *rstd, const void *w, const float *scale, int mod_stride, wan_tokens tk,
                       int D) {
    CPU_F32(dout_dt);
    CPU_F32(be->param);
    WAN_ASSERT(!((w || dw || db) && (scale || dshift || dscale)));
    const float *gy = dout, *wv = w;
    int nt = cpu_threads(be);
    if (dx) {
#pragma omp parallel num_threads(nt)
        {
            float *g = cpu_scratch((size_t)D * sizeof(float)); /* dout scaled by the row's factors */
#pragma omp for schedule(static)
            for (int i = 0; i < tk.T; i++) {
                const float *xr = x + (size_t)i * D, *gr = gy + (size_t)i * D;
                const float *sc = scale ? scale + (size_t)cpu_tok_sample(tk, i) * mod_stride : NULL;
                float m = mean[i], r = rstd[i];
                memcpy(g, gr, (size_t)D * sizeof(float));
                if (sc)
#pragma omp simd
                    for (int j = 0; j < D; j++) g[j] *= 1.0f + sc[j];
                if (wv)
#pragma omp simd
                    for (int j = 0; j < D; j++) g[j] *= wv[j];
                double sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
                for (int j = 0; j < D; j++) {
                    sum_g += g[j];
                    sum_gx += (double)g[j] * ((xr[j] - m) * r);
                }
                float mg = (float)(sum_g / D), mgx = (float)(sum_gx / D);
                float *dr = dx + (size_t)i * D;
#pragma omp simd
                for (int j = 0; j < D; j++) dr[j] += r * (g[j] - mg - (xr[j] - m) * r * mgx);
            }
            free(g);
        }
    }
    if (!dw && !db && !dshift && !dscale) return;
        /* Parameter gradients: per column tile, rows in order, flushed at sample boundaries for the
         * per-sample modulation gradients. */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int j0 = 0; j0 < D; j0 += CPU_COL_TILE) {
        int nj = D - j0 < CPU_COL_TILE ? D - j0 : CPU_COL_TILE;
        double acc_gx[CPU_COL_TILE] = {0}, acc_g[CPU_COL_TILE] = {0};
        for (int i0 = 0; i0 < tk.T;) {
            int i1 = cpu_tok_sample_end(tk, i0);
            for (int i = i0; i < i1; i++) {
                const float *xr = x + (size_t)i * D + j0, *gr = gy + (size_t)i * D + j0;
                float m = mean[i], r = rstd[i];
#pragma omp simd
                for (int j = 0; j < nj; j++) {
                    acc_gx[j] += (double)gr[j] * ((xr[j] - m) * r);
                    acc_g[j] += gr[j];
                }
            }
            if (dshift || dscale) { /* per sample: flush at its last row */
                size_t mod = (size_t)cpu_tok_sample(tk, i0) * mod_stride + j0;
                for (int j = 0; j < nj; j++) {
                    if (dscale) dscale[mod + j] += (float)acc_gx[j];
                    if (dshift) dshift[mod + j] += (float)acc_g[j];
                    acc_gx[j] = acc_g[j] = 0;
                }
            }
            i0 = i1;
        }
        for (int j = 0; j < nj; j++) {
            if (dw) dw[j0 + j] += (float)acc_gx[j];
            if (db) db[j0 + j] += (float)acc_g[j];
        }
    }
}

/* ---------------- RMSNorm over the full dim + RoPE ---------------- */

void cpu_rms_sumsq(wan_backend *be, float *ss, const void *x, int ldx, int T, int D) {
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int i = 0; i < T; i++) {
        const float *xr = (const float *)x + (size_t)i * ldx;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < D; j++) s += (double)xr[j] * xr[j];
        ss[i] = (float)s;
    }
}

/* The rotation of pair j of a head at position p: (a, b) -> (a c - b s, a s + b c), in double as
 * the official model rotates in float64. */
static inline const float *rope_row(const wan_rope *rope, int pos, const float **sin_row) {
    size_t off = (size_t)pos * (rope->head_dim / 2);
    *sin_row = rope->sin + off;
    return rope->cos + off;
}

void cpu_rms_rope_fwd(wan_backend *be, void *y, int ldy, float *rrms, const void *x, int ldx, const float *ss,
                      const void *w, const wan_rope *rope, wan_tokens tk, int D, int D_full, float eps) {
    CPU_F32(be->param);
    if (rope) WAN_ASSERT(rope->head_dim > 0 && rope->head_dim % 2 == 0 && D % rope->head_dim == 0);
    const float *wv = w;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int i = 0; i < tk.T; i++) {
        const float *xr = (const float *)x + (size_t)i * ldx;
        float *yr = (float *)y + (size_t)i * ldy;
        float r = (float)(1.0 / sqrt((double)ss[i] / D_full + eps));
        rrms[i] = r;
        if (!rope) {
#pragma omp simd
            for (int j = 0; j < D; j++) yr[j] = xr[j] * r * wv[j];
            continue;
        }
        const float *sn, *cs = rope_row(rope, cpu_tok_pos(tk, i), &sn);
        for (int j = 0; j < D; j += 2) { /* pair by pair: y may alias x */
            int k = (j % rope->head_dim) / 2;
            double a = xr[j] * r * wv[j], b = xr[j + 1] * r * wv[j + 1];
            yr[j] = (float)(a * cs[k] - b * sn[k]);
            yr[j + 1] = (float)(a * sn[k] + b * cs[k]);
        }
    }
}

/* dz = R^T dy (written back into dy), dot = sum dz * w * x, dw += dz * x * rrms. */
void cpu_rms_rope_bwd_dot(wan_backend *be, float *dot, float *dw, void *dy, int ldy, const void *x, int ldx,
                          const float *rrms, const void *w, const wan_rope *rope, wan_tokens tk, int D) {
    CPU_F32(be->param);
    if (rope) WAN_ASSERT(rope->head_dim > 0 && rope->head_dim % 2 == 0 && D % rope->head_dim == 0);
    const float *wv = w, *xv = x;
    float *g = dy;
    int nt = cpu_threads(be);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < tk.T; i++) {
        const float *xr = xv + (size_t)i * ldx;
        float *gr = g + (size_t)i * ldy;
        if (rope) {
            const float *sn, *cs = rope_row(rope, cpu_tok_pos(tk, i), &sn);
            for (int j = 0; j < D; j += 2) {
                int k = (j % rope->head_dim) / 2;
                double a = gr[j], b = gr[j + 1];
                gr[j] = (float)(a * cs[k] + b * sn[k]);
                gr[j + 1] = (float)(b * cs[k] - a * sn[k]);
            }
        }
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < D; j++) s += (double)gr[j] * wv[j] * xr[j];
        dot[i] = (float)s;
    }
    if (!dw) return;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int j0 = 0; j0 < D; j0 += CPU_COL_TILE) {
        int nj = D - j0 < CPU_COL_TILE ? D - j0 : CPU_COL_TILE;
        double acc[CPU_COL_TILE] = {0};
        for (int i = 0; i < tk.T; i++) {
            const float *xr = xv + (size_t)i * ldx + j0, *gr = g + (size_t)i * ldy + j0;
            float r = rrms[i];
#pragma omp simd
            for (int j = 0; j < nj; j++) acc[j] += (double)gr[j] * (xr[j] * r);
        }
        for (int j = 0; j < nj; j++) dw[j0 + j] += (float)acc[j];
    }
}

/* dx = rrms * w * dz - x * rrms^3 * dot / D_full (element by element: dx may alias dy or x). */
void cpu_rms_bwd_dx(wan_backend *be, void *dx, int lddx, const void *dy, int ldy, const void *x, int ldx,
                    const float *rrms, const float *dot, const void *w, int T, int D, int D_full) {
    CPU_F32(be->param);
    const float *wv = w;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int i = 0; i < T; i++) {
        const float *xr = (const float *)x + (size_t)i * ldx, *gr = (const float *)dy + (size_t)i * ldy;
        float *dr = (float *)dx + (size_t)i * lddx;
        float r = rrms[i];
        float c = (float)((double)r * r * r * dot[i] / D_full);
#pragma omp simd
        for (int j = 0; j < D; j++) dr[j] = r * wv[j] * gr[j] - xr[j] * c;
    }
}
