/* The flow-matching loss, AdamW and the gradient norm's sum of squares. */
#include <math.h>
#include <stdlib.h>

#include "ops_cpu_internal.h"

/* Fixed chunks for sums over long vectors: partial sums in double, added in chunk order, so
 * the result does not depend on the thread count. */
#define SUM_CHUNK 16384

void cpu_flow_loss(wan_backend *be, float *dpred, float *sqsum, const float *pred, const float *target,
                   const float *coef, wan_tokens tk, int P, int n_valid) {
    double *row_sq = cpu_scratch((size_t)(tk.T ? tk.T : 1) * sizeof(double));
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int i = 0; i < tk.T; i++) {
        float *dr = dpred + (size_t)i * P;
        if (cpu_tok_pos(tk, i) >= n_valid) { /* padding */
            memset(dr, 0, (size_t)P * sizeof(float));
            row_sq[i] = 0;
            continue;
        }
        const float *pr = pred + (size_t)i * P, *tr = target + (size_t)i * P;
        float c = coef[cpu_tok_sample(tk, i)];
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < P; j++) {
            float d = pr[j] - tr[j];
            dr[j] = c * d;
            s += (double)d * d;
        }
        row_sq[i] = s;
    }
    for (int i0 = 0; i0 < tk.T;) { /* per sample, rows in order */
        int i1 = cpu_tok_sample_end(tk, i0);
        double s = 0;
        for (int i = i0; i < i1; i++) s += row_sq[i];
        sqsum[cpu_tok_sample(tk, i0)] += (float)s;
        i0 = i1;
    }
    free(row_sq);
}

/* AdamW with bias correction and decoupled weight decay, in the arithmetic order of PyTorch's
 * torch.optim.AdamW (the reference we are compared with):
 *   master *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   master -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps);  param = master. */
void cpu_adamw(wan_backend *be, float *master, float *m, float *v, const float *grad, void *param, size_t n,
               float lr, float beta1, float beta2, float eps, float wd, float grad_scale, int step) {
    CPU_F32(be->param);
    WAN_ASSERT(step >= 1);
    float decay = (float)(1.0 - (double)lr * wd);
    float step_size = (float)((double)lr / (1.0 - pow(beta1, step)));
    float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, step));
    float one_m_b1 = 1.0f - beta1, one_m_b2 = 1.0f - beta2;
    float *p = param;
#pragma omp parallel for simd num_threads(cpu_threads(be)) schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        float mi = beta1 * m[i] + one_m_b1 * g;
        float vi = beta2 * v[i] + one_m_b2 * g * g;
        float w = master[i] * decay;
        w += (-step_size * mi) / (sqrtf(vi) / bc2_sqrt + eps);
        m[i] = mi;
        v[i] = vi;
        master[i] = w;
        p[i] = w;
    }
}

double cpu_sumsq(wan_backend *be, const float *x, size_t n) {
    size_t chunks = (n + SUM_CHUNK - 1) / SUM_CHUNK;
    if (chunks == 0) return 0;
    double *part = cpu_scratch(chunks * sizeof(double));
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        size_t i0 = c * SUM_CHUNK, i1 = i0 + SUM_CHUNK < n ? i0 + SUM_CHUNK : n;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (size_t i = i0; i < i1; i++) s += (double)x[i] * x[i];
        part[c] = s;
    }
    double total = 0;
    for (size_t c = 0; c < chunks; c++) total += part[c];
    free(part);
    return total;
}
