/* Elementwise ops and column sums of the CUDA backend: conversions, GELU, SiLU, the gated
 * residual add and its backward, broadcasts, bias handling, and the second pass of the
 * deterministic slot reductions used by every parameter gradient summed over tokens. */
#include "cuda_kernels.cuh"

/* ---------------------------------------------------------------- conversions */

__global__ void k_convert(void *dst, int dt, const void *src, int sdt, size_t n) {
    WAN_GRID_STRIDE(i, n) st_f(dst, dt, i, ld_f(src, sdt, i));
}

extern "C" void wan_cuda_convert_n(cudaStream_t st, void *dst, wan_dtype dt, const void *src, wan_dtype sdt, size_t n) {
    if (n == 0) return;
    if (dt == sdt) {
        WAN_CU(cudaMemcpyAsync(dst, src, n * wan_dtype_size(dt), cudaMemcpyDeviceToDevice, st));
        return;
    }
    k_convert<<<wan_grid_1d(n), WAN_THREADS, 0, st>>>(dst, dt, src, sdt, n);
    WAN_CU_LAUNCH(st);
}

/* ---------------------------------------------------------------- activations */

#define WAN_GELU_K0 0.7978845608028654f /* sqrt(2 / pi) */
#define WAN_GELU_K1 0.044715f

__global__ void k_gelu_fwd(void *out, const void *in, int dt, size_t n) {
    WAN_GRID_STRIDE(i, n) {
        float x = ld_f(in, dt, i);
        float t = tanhf(WAN_GELU_K0 * (x + WAN_GELU_K1 * x * x * x));
        st_f(out, dt, i, 0.5f * x * (1.0f + t));
    }
}

__global__ void k_gelu_bwd(void *din, const void *dout, const void *in, int dt, size_t n) {
    WAN_GRID_STRIDE(i, n) {
        float x = ld_f(in, dt, i);
        float t = tanhf(WAN_GELU_K0 * (x + WAN_GELU_K1 * x * x * x));
        float du = WAN_GELU_K0 * (1.0f + 3.0f * WAN_GELU_K1 * x * x);
        float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
        st_f(din, dt, i, ld_f(dout, dt, i) * d);
    }
}

__global__ void k_silu_fwd(float *out, const float *in, size_t n) {
    WAN_GRID_STRIDE(i, n) {
        float x = in[i];
        out[i] = x / (1.0f + expf(-x));
    }
}

__global__ void k_silu_bwd(float *din, const float *dout, const float *in, size_t n) {
    WAN_GRID_STRIDE(i, n) {
        float x = in[i], s = 1.0f / (1.0f + expf(-x));
        din[i] = dout[i] * s * (1.0f + x * (1.0f - s));
    }
}

extern "C" void wan_cuda_gelu_fwd(wan_backend *be, void *out, const void *in, size_t n) {
    if (n == 0) return;
    cudaStream_t st = wan_cuda_stream_of(be);
    k_gelu_fwd<<<wan_grid_1d(n), WAN_THREADS, 0, st>>>(out, in, be->act, n);
    WAN_CU_LAUNCH(st);
}

extern "C" void wan_cuda_gelu_bwd(wan_backend *be, void *din, const void *dout, const void *in, size_t n) {
    if (n == 0) return;
    cudaStream_t st = wan_cuda_stream_of(be);
    k_gelu_bwd<<<wan_grid_1d(n), WAN_THREADS, 0, st>>>(din, dout, in, be->act, n);
    WAN_CU_LAUNCH(st);
}

extern "C" void wan_cuda_silu_fwd(wan_backend *be, float *out, const float *in, size_t n) {
    if (n == 0) return;
    cudaStream_t st = wan_cuda_stream_of(be);
    k_silu_fwd<<<wan_grid_1d(n), WAN_THREADS, 0, st>>>(out, in, n);
    WAN_CU_LAUNCH(st);
}

extern "C" void wan_cuda_silu_bwd(wan_backend *be, float *din, const float *dout, const float *in, size_t n) {
    if (n == 0) return;
    cudaStream_t st = wan_cuda_stream_of(be);
    k_silu_bwd<<<wan_grid_1d(n), WAN_THREADS, 0, st>>>(din, dout, in, n);
    WAN_CU_LAUNCH(st);
}

/* ---------------------------------------------------------------- gated residual */

/* x[i, j] += (y[i, j] + bias[j]) * gate[sample(i), j] */
__global__ void k_residual_fwd(float *x, const float *y, const void *bias, int pdt, const float *gate, int gs,
                               long long tok0, long long S, int D) {
    int i = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= D) return;
    size_t at = (size_t)i * D + j;
    float v = y[at] + (bias ? ld_f(bias, pdt, j) : 0.0f);
    if (gate) v *= gate[((tok0 + i) / S) * gs + j];
    x[at] += v;
}

extern "C" void wan_cuda_residual_fwd(wan_backend *be, float *x, const float *y, const void *bias, const float *gate,
                                      int gate_stride, wan_tokens tk, int D) {
    if (tk.T <= 0 || D <= 0) return;
    WAN_CUDA_REQUIRE(!gate || tk.S_local > 0, "residual_fwd: S_local = %d with a gate", tk.S_local);
    cudaStream_t st = wan_cuda_stream_of(be);
    dim3 grid((unsigned)tk.T, wan_blocks(D, WAN_THREADS));
    k_residual_fwd<<<grid, WAN_THREADS, 0, st>>>(x, y, bias, be->param, gate, gate_stride, tk.tok0,
                                                 tk.S_local > 0 ? tk.S_local : tk.T, D);
    WAN_CU_LAUNCH(st);
}

/* dy = dx * gate (act dtype) */
__global__ void k_residual_dy(void *dy, int dt, const float *dx, const float *gate, int gs, long long tok0, long long S,
                              int D) {
    int i = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= D) return;
    size_t at = (size_t)i * D + j;
    float g = gate ? gate[((tok0 + i) / S) * gs + j] : 1.0f;
    st_f(dy, dt, at, dx[at] * g);
}

/* Slot partials: part[0] dbias (sum of dx * gate), part[1] dgate (sum of dx * (y + bias)). */
__global__ void k_residual_part(float *part, wan_slots s, int D, const float *dx, const float *y, const void *bias,
                                int pdt, const float *gate, int gs, bool want_db, bool want_dg) {
    int p = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= D) return;
    int i0, i1;
    long long b;
    wan_slot_rows(s, p, &i0, &i1, &b);
    float g = gate ? gate[b * gs + j] : 1.0f, bj = bias ? ld_f(bias, pdt, j) : 0.0f;
    float sdb = 0.0f, sdg = 0.0f;
    for (int i = i0; i < i1; i++) {
        size_t at = (size_t)i * D + j;
        float d = dx[at];
        sdb += d * g;
        sdg += d * ((y ? y[at] : 0.0f) + bj);
    }
    size_t n = (size_t)s.nslots * D;
    if (want_db) part[(size_t)p * D + j] = sdb;
    if (want_dg) part[n + (size_t)p * D + j] = sdg;
}

extern "C" void wan_cuda_residual_bwd(wan_backend *be, void *dy, wan_dtype dy_dt, float *dbias, float *dgate,
                                      const float *dx, const float *y, const void *bias, const float *gate,
                                      int gate_stride, wan_tokens tk, int D) {
    if (tk.T <= 0 || D <= 0) return;
    WAN_CUDA_REQUIRE(!(gate || dgate) || tk.S_local > 0, "residual_bwd: S_local = %d with a gate", tk.S_local);
    cudaStream_t st = wan_cuda_stream_of(be);
    long long S = tk.S_local > 0 ? tk.S_local : tk.T;
    /* the sums read dx before dy is written, so dy may alias dx when both are fp32 (as on the CPU
     * backend); a bf16 dy over the fp32 dx would have threads write inside floats others read */
    WAN_CUDA_REQUIRE((const void *)dy != (const void *)dx || dy_dt == WAN_F32,
                     "residual_bwd: a 16-bit dy may not alias the fp32 dx");
    if (dbias || dgate) {
        wan_slots s = wan_slots_make(tk.T, tk.tok0, S);
        float *part = (float *)wan_cuda_scratch(be, WAN_SCR_PARTIAL, 2 * (size_t)s.nslots * D * sizeof(float));
        dim3 pg((unsigned)s.nslots, wan_blocks(D, WAN_THREADS));
        k_residual_part<<<pg, WAN_THREADS, 0, st>>>(part, s, D, dx, y, bias, be->param, gate, gate_stride,
                                                    dbias != NULL, dgate != NULL);
        WAN_CU_LAUNCH(st);
        if (dbias) wan_cuda_slots_finish(st, part, s, D, dbias, 0, false);
        if (dgate) wan_cuda_slots_finish(st, part + (size_t)s.nslots * D, s, D, dgate, gate_stride, true);
    }
    if (dy) {
        dim3 grid((unsigned)tk.T, wan_blocks(D, WAN_THREADS));
        k_residual_dy<<<grid, WAN_THREADS, 0, st>>>(dy, dy_dt, dx, gate, gate_stride, tk.tok0, S, D);
        WAN_CU_LAUNCH(st);
    }
}

/* ---------------------------------------------------------------- adds and broadcasts */

__global__ void k_add(void *y, const void *x, int dt, size_t n) {
    WAN_GRID_STRIDE(i, n) st_f(y, dt, i, ld_f(y, dt, i) + ld_f(x, dt, i));
}

extern "C" void wan_cuda_add(wan_backend *be, void *y, const void *x, wan_dtype dt, size_t n) {
    if (n == 0) return;
    cudaStream_t st = wan_cuda_stream_of(be);
    k_add<<<wan_grid_1d(n), WAN_THREADS, 0, st>>>(y, x, dt, n);
    WAN_CU_LAUNCH(st);
}

__global__ void k_add_bcast(float *y, const float *a, const void *b, int pdt, size_t n, size_t nb) {
    WAN_GRID_STRIDE(i, n) y[i] = a[i] + ld_f(b, pdt, i % nb);
}

extern "C" void wan_cuda_add_bcast(wan_backend *be, float *y, const float *a, const void *b, size_t n, size_t nb) {
    if (n == 0) return;
    WAN_CUDA_REQUIRE(nb > 0, "add_bcast: nb = 0");
    cudaStream_t st = wan_cuda_stream_of(be);
    k_add_bcast<<<wan_grid_1d(n), WAN_THREADS, 0, st>>>(y, a, b, be->param, n, nb);
    WAN_CU_LAUNCH(st);
}

/* db[j] += sum over r of da[r * nb + j]: rows in order (few rows: one per sample). */
__global__ void k_sum_rows(float *db, const float *da, size_t rows, size_t nb) {
    WAN_GRID_STRIDE(j, nb) {
        float acc = 0.0f;
        for (size_t r = 0; r < rows; r++) acc += da[r * nb + j];
        db[j] += acc;
    }
}

extern "C" void wan_cuda_sum_rows(wan_backend *be, float *db, const float *da, size_t n, size_t nb) {
    if (n == 0 || nb == 0) return;
    WAN_CUDA_REQUIRE(n % nb == 0, "sum_rows: n = %zu is not a multiple of nb = %zu", n, nb);
    cudaStream_t st = wan_cuda_stream_of(be);
    k_sum_rows<<<wan_grid_1d(nb), WAN_THREADS, 0, st>>>(db, da, n / nb, nb);
    WAN_CU_LAUNCH(st);
}

/* out[r * ld + c] += bias[c] */
__global__ void k_bias_add(void *out, int dt, int ld, const void *bias, int bdt, int cols) {
    int r = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    size_t at = (size_t)r * ld + c;
    st_f(out, dt, at, ld_f(out, dt, at) + ld_f(bias, bdt, c));
}

extern "C" void wan_cuda_bias_add(cudaStream_t st, void *out, wan_dtype dt, int ld, const void *bias, wan_dtype bias_dt,
                                  int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    dim3 grid((unsigned)rows, wan_blocks(cols, WAN_THREADS));
    k_bias_add<<<grid, WAN_THREADS, 0, st>>>(out, dt, ld, bias, bias_dt, cols);
    WAN_CU_LAUNCH(st);
}

/* ---------------------------------------------------------------- column sums */

__global__ void k_colsum_part(float *part, wan_slots s, int D, const void *x, int dt) {
    int p = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= D) return;
    int i0, i1;
    long long b;
    wan_slot_rows(s, p, &i0, &i1, &b);
    float acc = 0.0f;
    for (int i = i0; i < i1; i++) acc += ld_f(x, dt, (size_t)i * D + j);
    part[(size_t)p * D + j] = acc;
}

extern "C" void wan_cuda_colsum(wan_backend *be, float *db, const void *x, wan_dtype dt, int rows, int cols) {
    if (rows <= 0 || cols <= 0) return;
    cudaStream_t st = wan_cuda_stream_of(be);
    wan_slots s = wan_slots_make(rows, 0, rows);
    float *part = (float *)wan_cuda_scratch(be, WAN_SCR_PARTIAL, (size_t)s.nslots * cols * sizeof(float));
    dim3 grid((unsigned)s.nslots, wan_blocks(cols, WAN_THREADS));
    k_colsum_part<<<grid, WAN_THREADS, 0, st>>>(part, s, cols, x, dt);
    WAN_CU_LAUNCH(st);
    wan_cuda_slots_finish(st, part, s, cols, db, 0, false);
}

/* Pass 2 of the slot reductions; blockIdx.y is the sample (offset from the first) when
 * per_sample, else 0 and all slots are summed. */
__global__ void k_slots_finish(const float *part, wan_slots s, int D, float *out, long long stride, bool per_sample) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    int pa = 0, pb = s.nslots;
    long long b = 0;
    if (per_sample) {
        b = s.p0 / s.CS + blockIdx.y;
        long long first = b * s.CS - s.p0, last = (b + 1) * s.CS - s.p0;
        pa = (int)max(first, 0LL);
        pb = (int)min(last, (long long)s.nslots);
    }
    float acc = 0.0f;
    for (int p = pa; p < pb; p++) acc += part[(size_t)p * D + j];
    out[b * stride + j] += acc;
}

void wan_cuda_slots_finish(cudaStream_t st, const float *part, const wan_slots &s, int D, float *out, long long stride,
                           bool per_sample) {
    if (s.nslots <= 0 || D <= 0) return;
    unsigned samples = 1;
    if (per_sample) samples = (unsigned)((s.p0 + s.nslots - 1) / s.CS - s.p0 / s.CS + 1);
    WAN_CUDA_REQUIRE(samples <= 65535, "slot reduction over %u samples (at most 65535)", samples);
    dim3 grid(wan_blocks(D, WAN_THREADS), samples);
    k_slots_finish<<<grid, WAN_THREADS, 0, st>>>(part, s, D, out, stride, per_sample);
    WAN_CU_LAUNCH(st);
}
