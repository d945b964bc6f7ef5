/* Matrix products: the tiled sgemm every op uses, and the Linear layers (weights [N, K] as in
 * PyTorch). */
#include <cblas.h>
#include <omp.h>

#include "ops_cpu_internal.h"

/* Output tiles from the shape and the wanted tile count alone (never the thread count): start
 * at 512 x 512 and halve the larger side, not below 256, until there are `target` tiles. Each
 * tile is a separate OpenBLAS call that packs its own operands, so tiles are kept large. */
static void gemm_tiles(int M, int N, int target, int *mb, int *nb) {
    int m = 512, n = 512;
    for (;;) {
        long tiles = (long)((M + m - 1) / m) * ((N + n - 1) / n);
        if (tiles >= target || (m <= 256 && n <= 256)) break;
        if ((m >= n && m > 256) || n <= 256)
            m /= 2;
        else
            n /= 2;
    }
    *mb = m, *nb = n;
}

void cpu_gemm(int threads, int target_tiles, bool ta, bool tb, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    int mb, nb;
    gemm_tiles(M, N, target_tiles, &mb, &nb);
    int tm = (M + mb - 1) / mb, tn = (N + nb - 1) / nb;
#pragma omp parallel for num_threads(threads) schedule(dynamic) if (threads > 1 && tm * tn > 1)
    for (int t = 0; t < tm * tn; t++) {
        omp_set_num_threads(1); /* this task only: OpenBLAS stays on this thread */
        int i0 = t / tn * mb, j0 = t % tn * nb;
        int m = M - i0 < mb ? M - i0 : mb, n = N - j0 < nb ? N - j0 : nb;
        /* rows i0.. of op(A) and columns j0.. of op(B) */
        const float *a = ta ? A + i0 : A + (size_t)i0 * lda;
        const float *b = tb ? B + (size_t)j0 * ldb : B + j0;
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, K,
                    alpha, a, lda, b, ldb, beta, C + (size_t)i0 * ldc + j0, ldc);
    }
}

/* out[M,N] = in[M,K] @ w[N,K]^T (+ bias[N]). The bias is written first and the product added
 * to it (beta = 1), the order PyTorch's addmm uses. */
void cpu_matmul_fwd(wan_backend *be, void *out, wan_dtype out_dt, const void *in, wan_dtype in_dt,
                    const void *w, const void *bias, int M, int N, int K) {
    CPU_F32(out_dt);
    CPU_F32(in_dt);
    CPU_F32(be->param);
    if (M <= 0 || N <= 0) return;
    cpu_use_threads(be);
    float *y = out;
    if (bias) {
        const float *bv = bias;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
        for (int i = 0; i < M; i++) memcpy(y + (size_t)i * N, bv, (size_t)N * sizeof(float));
    }
    cpu_gemm(cpu_threads(be), CPU_TILES_LINEAR, false, true, M, N, K, 1.0f, in, K, w, K, bias ? 1.0f : 0.0f,
             y, N);
}

/* din = dout @ w (or +=), dw += dout^T @ in, db += column sums of dout (in double, per column in
 * row order: independent of the thread count). */
void cpu_matmul_bwd(wan_backend *be, void *din, wan_dtype din_dt, bool din_accumulate, float *dw, float *db,
                    const void *dout, wan_dtype dout_dt, const void *in, wan_dtype in_dt, const void *w,
                    int M, int N, int K) {
    CPU_F32(din_dt);
    CPU_F32(dout_dt);
    CPU_F32(in_dt);
    CPU_F32(be->param);
    if (M <= 0 || N <= 0) return;
    cpu_use_threads(be);
    const float *g = dout;
    int nt = cpu_threads(be);
    if (din)
        cpu_gemm(nt, CPU_TILES_LINEAR, false, false, M, K, N, 1.0f, g, N, w, K, din_accumulate ? 1.0f : 0.0f,
                 din, K);
    if (dw) cpu_gemm(nt, CPU_TILES_LINEAR, true, false, N, K, M, 1.0f, g, N, in, K, 1.0f, dw, K);
    if (db) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int j0 = 0; j0 < N; j0 += CPU_COL_TILE) {
            int nj = N - j0 < CPU_COL_TILE ? N - j0 : CPU_COL_TILE;
            double acc[CPU_COL_TILE] = {0};
            for (int i = 0; i < M; i++) {
                const float *row = g + (size_t)i * N + j0;
#pragma omp simd
                for (int j = 0; j < nj; j++) acc[j] += row[j];
            }
            for (int j = 0; j < nj; j++) db[j0 + j] += (float)acc[j];
        }
    }
}

/* The FFN's GEMM + GELU pairs: on the CPU the two ops one after the other (in fp32 nothing is
 * rounded in between, so this is what the fused CUDA epilogue computes). */
void cpu_matmul_gelu_fwd(wan_backend *be, void *g, void *h, const void *in, const void *w, const void *bias, int M,
                         int N, int K) {
    cpu_matmul_fwd(be, h, be->act, in, be->act, w, bias, M, N, K);
    cpu_gelu_fwd(be, g, h, (size_t)M * N);
}

void cpu_matmul_dgelu_bwd(wan_backend *be, void *dh, const void *dout, const void *w, const void *h, int M, int N,
                          int K) {
    cpu_matmul_bwd(be, dh, be->act, false, NULL, NULL, dout, be->act, NULL, be->act, w, M, N, K);
    cpu_gelu_bwd(be, dh, dh, h, (size_t)M * K); /* elementwise: in place is safe */
}
