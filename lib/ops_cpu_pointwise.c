/* Elementwise ops: GELU (tanh), SiLU, the gated residual, adds; and the column sums that are
 * their backward. */
#include "ops_cpu_internal.h"

/* GELU, tanh approximation: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * 0.5 (1 + tanh(u)) = sigmoid(2u), which has no cancellation for large negative u. */
#define GELU_K0 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_K1 0.044715f

void cpu_gelu_fwd(wan_backend *be, void *out, const void *in, size_t n) {
    float *y = out;
    const float *x = in;
#pragma omp parallel for simd num_threads(cpu_threads(be)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float xi = x[i], sig, one_minus;
        cpu_sigmoid2(2.0f * GELU_K0 * (xi + GELU_K1 * xi * xi * xi), &sig, &one_minus);
        y[i] = xi * sig;
    }
}

/* d/dx [x sigmoid(2u)] = s + x * s (1 - s) * 2 u',  u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
void cpu_gelu_bwd(wan_backend *be, void *din, const void *dout, const void *in, size_t n) {
    float *dx = din;
    const float *dy = dout, *x = in;
#pragma omp parallel for simd num_threads(cpu_threads(be)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float xi = x[i], s, one_minus;
        cpu_sigmoid2(2.0f * GELU_K0 * (xi + GELU_K1 * xi * xi * xi), &s, &one_minus);
        float du = 2.0f * GELU_K0 * (1.0f + 3.0f * GELU_K1 * xi * xi);
        dx[i] = dy[i] * (s + xi * s * one_minus * du);
    }
}

void cpu_silu_fwd(wan_backend *be, float *out, const float *in, size_t n) {
#pragma omp parallel for simd num_threads(cpu_threads(be)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float s, one_minus;
        cpu_sigmoid2(in[i], &s, &one_minus);
        out[i] = in[i] * s;
    }
}

/* d/dx [x s(x)] = s (1 + x (1 - s)) */
void cpu_silu_bwd(wan_backend *be, float *din, const float *dout, const float *in, size_t n) {
#pragma omp parallel for simd num_threads(cpu_threads(be)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float s, one_minus;
        cpu_sigmoid2(in[i], &s, &one_minus);
        din[i] = dout[i] * (s * (1.0f + in[i] * one_minus));
    }
}

/* x += (y + bias) * gate[b] */
void cpu_residual_fwd(wan_backend *be, float *x, const float *y, const void *bias, const float *gate,
                      int gate_stride, wan_tokens tk, int D) {
    CPU_F32(be->param);
    const float *bv = bias;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int i = 0; i < tk.T; i++) {
        float *xr = x + (size_t)i * D;
        const float *yr = y + (size_t)i * D;
        const float *g = gate ? gate + (size_t)cpu_tok_sample(tk, i) * gate_stride : NULL;
        if (bv && g)
#pragma omp simd
            for (int j = 0; j < D; j++) xr[j] += (yr[j] + bv[j]) * g[j];
        else if (bv)
#pragma omp simd
            for (int j = 0; j < D; j++) xr[j] += yr[j] + bv[j];
        else if (g)
#pragma omp simd
            for (int j = 0; j < D; j++) xr[j] += yr[j] * g[j];
        else
#pragma omp simd
            for (int j = 0; j < D; j++) xr[j] += yr[j];
    }
}

/* dy = dx * gate[b]; dbias += sum over rows of dy; dgate[b] += sum over the sample's rows of
 * dx * (y + bias). One pass per column tile, rows in order: dy may alias dx. */
void cpu_residual_bwd(wan_backend *be, void *dy, wan_dtype dy_dt, float *dbias, float *dgate, const float *dx,
                      const float *y, const void *bias, const float *gate, int gate_stride, wan_tokens tk,
                      int D) {
    CPU_F32(dy_dt);
    CPU_F32(be->param);
    const float *bv = bias;
    float *dyv = dy;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int j0 = 0; j0 < D; j0 += CPU_COL_TILE) {
        int nj = D - j0 < CPU_COL_TILE ? D - j0 : CPU_COL_TILE;
        double acc_b[CPU_COL_TILE] = {0}, acc_g[CPU_COL_TILE] = {0};
        for (int i0 = 0; i0 < tk.T;) {
            int i1 = cpu_tok_sample_end(tk, i0);
            const float *g = gate ? gate + (size_t)cpu_tok_sample(tk, i0) * gate_stride + j0 : NULL;
            for (int i = i0; i < i1; i++) {
                size_t r = (size_t)i * D + j0;
                const float *dxr = dx + r, *yr = y + r;
                if (dgate && bv) {
#pragma omp simd
                    for (int j = 0; j < nj; j++) acc_g[j] += (double)dxr[j] * (yr[j] + bv[j0 + j]);
                } else if (dgate) {
#pragma omp simd
                    for (int j = 0; j < nj; j++) acc_g[j] += (double)dxr[j] * yr[j];
                }
                /* after the gate sums: dy may be dx */
                float *dyr = dy ? dyv + r : NULL;
                if (g && dyr) {
#pragma omp simd
                    for (int j = 0; j < nj; j++) {
                        float e = dxr[j] * g[j];
                        dyr[j] = e;
                        acc_b[j] += e;
                    }
                } else if (g) {
#pragma omp simd
                    for (int j = 0; j < nj; j++) acc_b[j] += dxr[j] * g[j];
                } else {
#pragma omp simd
                    for (int j = 0; j < nj; j++) {
                        float e = dxr[j];
                        if (dyr) dyr[j] = e;
                        acc_b[j] += e;
                    }
                }
            }
            if (dgate) {
                float *dg = dgate + (size_t)cpu_tok_sample(tk, i0) * gate_stride + j0;
                for (int j = 0; j < nj; j++) {
                    dg[j] += (float)acc_g[j];
                    acc_g[j] = 0;
                }
            }
            i0 = i1;
        }
        if (dbias)
            for (int j = 0; j < nj; j++) dbias[j0 + j] += (float)acc_b[j];
    }
}

void cpu_add(wan_backend *be, void *y, const void *x, wan_dtype dt, size_t n) {
    CPU_F32(dt);
    float *yv = y;
    const float *xv = x;
#pragma omp parallel for simd num_threads(cpu_threads(be)) schedule(static)
    for (size_t i = 0; i < n; i++) yv[i] += xv[i];
}

void cpu_add_bcast(wan_backend *be, float *y, const float *a, const void *b, size_t n, size_t nb) {
    CPU_F32(be->param);
    WAN_ASSERT(nb > 0 && n % nb == 0);
    const float *bv = b;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (size_t r = 0; r < n / nb; r++)
#pragma omp simd
        for (size_t j = 0; j < nb; j++) y[r * nb + j] = a[r * nb + j] + bv[j];
}

void cpu_sum_rows(wan_backend *be, float *db, const float *da, size_t n, size_t nb) {
    WAN_ASSERT(nb > 0 && n % nb == 0);
    size_t rows = n / nb;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (size_t j0 = 0; j0 < nb; j0 += CPU_COL_TILE) {
        size_t nj = nb - j0 < CPU_COL_TILE ? nb - j0 : CPU_COL_TILE;
        double acc[CPU_COL_TILE] = {0};
        for (size_t r = 0; r < rows; r++)
#pragma omp simd
            for (size_t j = 0; j < nj; j++) acc[j] += da[r * nb + j0 + j];
        for (size_t j = 0; j < nj; j++) db[j0 + j] += (float)acc[j];
    }
}
