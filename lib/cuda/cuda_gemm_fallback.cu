/* The GEMM for shapes cuBLASLt has no algorithm for (its heuristic can refuse degenerate
 * problems, e.g. one row or a reduction of length 1): a plain tiled kernel with cuBLASLt's
 * column-major contract, fp32 accumulation, any of our element types. Slow for large shapes;
 * cuda_matmul.c warns when it takes this path. */
#include "cuda_kernels.cuh"

#define GT 16 /* tile edge: 16 x 16 threads, each one element of D */

/* D[m x n] = op(A) op(B) + beta * D, column-major: op(A)[i, l] is A[i + l * lda] (N) or
 * A[l + i * lda] (T); op(B)[l, j] is B[l + j * ldb] (N) or B[j + l * ldb] (T). */
__global__ void k_gemm_fallback(int ta, int tb, long long m, long long n, long long k, const void *A, int adt,
                                long long lda, const void *B, int bdt, long long ldb, void *D, int ddt, long long ldd,
                                float beta) {
    __shared__ float sa[GT][GT + 1], sb[GT][GT + 1];
    long long i = (long long)blockIdx.x * GT + threadIdx.x, j = (long long)blockIdx.y * GT + threadIdx.y;
    float acc = 0.0f;
    for (long long l0 = 0; l0 < k; l0 += GT) {
        /* sa[x][y] = op(A)[row0 + x, l0 + y], sb[x][y] = op(B)[l0 + x, col0 + y] */
        long long ar = (long long)blockIdx.x * GT + threadIdx.x, al = l0 + threadIdx.y;
        long long bl = l0 + threadIdx.x, bc = (long long)blockIdx.y * GT + threadIdx.y;
        sa[threadIdx.x][threadIdx.y] =
            ar < m && al < k ? ld_f(A, adt, ta ? (size_t)(al + ar * lda) : (size_t)(ar + al * lda)) : 0.0f;
        sb[threadIdx.x][threadIdx.y] =
            bl < k && bc < n ? ld_f(B, bdt, tb ? (size_t)(bc + bl * ldb) : (size_t)(bl + bc * ldb)) : 0.0f;
        __syncthreads();
        for (int l = 0; l < GT; l++) acc += sa[threadIdx.x][l] * sb[l][threadIdx.y];
        __syncthreads();
    }
    if (i < m && j < n) {
        size_t o = (size_t)(i + j * ldd);
        st_f(D, ddt, o, beta != 0.0f ? acc + beta * ld_f(D, ddt, o) : acc);
    }
}

extern "C" void wan_cuda_gemm_fallback(cudaStream_t st, bool transa, bool transb, int64_t m, int64_t n, int64_t k,
                                       const void *A, wan_dtype ta, int64_t lda, const void *B, wan_dtype tb,
                                       int64_t ldb, void *D, wan_dtype td, int64_t ldd, float beta) {
    if (m <= 0 || n <= 0) return;
    dim3 block(GT, GT), grid((unsigned)((m + GT - 1) / GT), (unsigned)((n + GT - 1) / GT));
    WAN_CUDA_REQUIRE(grid.y <= 65535, "gemm fallback: n = %lld columns", (long long)n);
    k_gemm_fallback<<<grid, block, 0, st>>>(transa, transb, m, n, k, A, ta, lda, B, tb, ldb, D, td, ldd, beta);
    WAN_CU_LAUNCH(st);
}
