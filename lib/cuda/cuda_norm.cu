/* Norms of the CUDA backend: LayerNorm (fp32 statistics) fused with the affine transform or the
 * per-sample modulation, and the q/k RMSNorm over the full (tensor-parallel) dim fused with 3D
 * RoPE. Row kernels use one block per token row; parameter gradients summed over tokens go
 * through the deterministic slot reduction (cuda_kernels.cuh). */
#include "cuda_kernels.cuh"

/* ---------------------------------------------------------------- LayerNorm */

/* One block per row: mean, then the variance around it (two passes over the row, which stays in
 * L1/L2), then the normalised, affine or modulated output. */
__global__ void k_ln_fwd(void *out, int odt, float *mean, float *rstd, const float *x, const void *w, const void *bb,
                         int pdt, const float *shift, const float *scale, int ms, long long tok0, long long S, int D,
                         float eps) {
    int i = blockIdx.x;
    const float *xr = x + (size_t)i * D;
    float s = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) s += xr[j];
    float mu = block_sum(s) / (float)D;
    float q = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float d = xr[j] - mu;
        q += d * d;
    }
    float rs = 1.0f / sqrtf(block_sum(q) / (float)D + eps);
    if (threadIdx.x == 0) {
        if (mean) mean[i] = mu;
        if (rstd) rstd[i] = rs;
    }
    long long b = (tok0 + i) / S;
    const float *shr = shift ? shift + b * ms : NULL, *scr = scale ? scale + b * ms : NULL;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float v = (xr[j] - mu) * rs;
        if (w) v *= ld_f(w, pdt, j);
        if (bb) v += ld_f(bb, pdt, j);
        if (scr) v *= 1.0f + scr[j];
        if (shr) v += shr[j];
        st_f(out, odt, (size_t)i * D + j, v);
    }
}

extern "C" void wan_cuda_layernorm_fwd(wan_backend *be, void *out, wan_dtype out_dt, float *mean, float *rstd,
                                       const float *x, const void *w, const void *b, const float *shift,
                                       const float *scale, int mod_stride, wan_tokens tk, int D, float eps) {
    if (tk.T <= 0 || D <= 0) return;
    WAN_CUDA_REQUIRE(!(shift || scale) || tk.S_local > 0, "layernorm_fwd: S_local = %d with modulation", tk.S_local);
    /* the CPU twin's contract: affine or modulated, never both (the backward's sums assume it) */
    WAN_CUDA_REQUIRE(!((w || b) && (shift || scale)), "layernorm_fwd: affine weights and modulation together");
    cudaStream_t st = wan_cuda_stream_of(be);
    k_ln_fwd<<<(unsigned)tk.T, WAN_THREADS, 0, st>>>(out, out_dt, mean, rstd, x, w, b, be->param, shift, scale,
                                                     mod_stride, tk.tok0, tk.S_local > 0 ? tk.S_local : tk.T, D, eps);
    WAN_CU_LAUNCH(st);
}

/* dx += rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dout * (1 + scale) * w */
__global__ void k_ln_bwd_dx(float *dx, const void *dout, int dt, const float *x, const float *mean, const float *rstd,
                            const void *w, int pdt, const float *scale, int ms, long long tok0, long long S, int D) {
    int i = blockIdx.x;
    size_t row = (size_t)i * D;
    float mu = mean[i], rs = rstd[i];
    const float *scr = scale ? scale + ((tok0 + i) / S) * ms : NULL;
    float s1 = 0.0f, s2 = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float xh = (x[row + j] - mu) * rs;
        float g = ld_f(dout, dt, row + j) * (scr ? 1.0f + scr[j] : 1.0f) * (w ? ld_f(w, pdt, j) : 1.0f);
        s1 += g;
        s2 += g * xh;
    }
    float2 t = block_sum2(s1, s2);
    float m1 = t.x / (float)D, m2 = t.y / (float)D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float xh = (x[row + j] - mu) * rs;
        float g = ld_f(dout, dt, row + j) * (scr ? 1.0f + scr[j] : 1.0f) * (w ? ld_f(w, pdt, j) : 1.0f);
        dx[row + j] += rs * (g - m1 - xh * m2);
    }
}

/* Slot partials of the parameter gradients, four [nslots, D] planes:
 * 0 dshift = sum dz, 1 dscale = sum dz * y (y = xhat * w: the interface never combines an affine
 * bias with modulation), 2 db = sum dz * (1 + scale), 3 dw = sum dz * (1 + scale) * xhat. */
__global__ void k_ln_bwd_part(float *part, wan_slots s, int D, const void *dout, int dt, const float *x,
                              const float *mean, const float *rstd, const void *w, int pdt, const float *scale, int ms,
                              unsigned want) {
    int p = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= D) return;
    int i0, i1;
    long long b;
    wan_slot_rows(s, p, &i0, &i1, &b);
    float wj = w ? ld_f(w, pdt, j) : 1.0f, k = scale ? 1.0f + scale[b * ms + j] : 1.0f;
    float a_sh = 0.0f, a_sc = 0.0f, a_b = 0.0f, a_w = 0.0f;
    for (int i = i0; i < i1; i++) {
        size_t at = (size_t)i * D + j;
        float xh = (x[at] - mean[i]) * rstd[i];
        float dz = ld_f(dout, dt, at);
        a_sh += dz;
        a_sc += dz * xh * wj;
        a_b += dz * k;
        a_w += dz * k * xh;
    }
    size_t plane = (size_t)s.nslots * D, at = (size_t)p * D + j;
    if (want & 1) part[at] = a_sh;
    if (want & 2) part[plane + at] = a_sc;
    if (want & 4) part[2 * plane + at] = a_b;
    if (want & 8) part[3 * plane + at] = a_w;
}

extern "C" void wan_cuda_layernorm_bwd(wan_backend *be, float *dx, float *dw, float *db, float *dshift, float *dscale,
                                       const void *dout, wan_dtype dout_dt, const float *x, const float *mean,
                                       const float *rstd, const void *w, const float *scale, int mod_stride,
                                       wan_tokens tk, int D) {
    if (tk.T <= 0 || D <= 0) return;
    WAN_CUDA_REQUIRE(!(scale || dshift || dscale) || tk.S_local > 0, "layernorm_bwd: S_local = %d with modulation",
                     tk.S_local);
    WAN_CUDA_REQUIRE(!((w || dw || db) && (scale || dshift || dscale)),
                     "layernorm_bwd: affine weights and modulation together");
    cudaStream_t st = wan_cuda_stream_of(be);
    long long S = tk.S_local > 0 ? tk.S_local : tk.T;
    if (dx) {
        k_ln_bwd_dx<<<(unsigned)tk.T, WAN_THREADS, 0, st>>>(dx, dout, dout_dt, x, mean, rstd, w, be->param, scale,
                                                            mod_stride, tk.tok0, S, D);
        WAN_CU_LAUNCH(st);
    }
    unsigned want = (dshift ? 1u : 0u) | (dscale ? 2u : 0u) | (db ? 4u : 0u) | (dw ? 8u : 0u);
    if (!want) return;
    wan_slots s = wan_slots_make(tk.T, tk.tok0, S);
    size_t plane = (size_t)s.nslots * D;
    float *part = (float *)wan_cuda_scratch(be, WAN_SCR_PARTIAL, 4 * plane * sizeof(float));
    dim3 grid((unsigned)s.nslots, wan_blocks(D, WAN_THREADS));
    k_ln_bwd_part<<<grid, WAN_THREADS, 0, st>>>(part, s, D, dout, dout_dt, x, mean, rstd, w, be->param, scale,
                                                mod_stride, want);
    WAN_CU_LAUNCH(st);
    if (dshift) wan_cuda_slots_finish(st, part, s, D, dshift, mod_stride, true);
    if (dscale) wan_cuda_slots_finish(st, part + plane, s, D, dscale, mod_stride, true);
    if (db) wan_cuda_slots_finish(st, part + 2 * plane, s, D, db, 0, false);
    if (dw) wan_cuda_slots_finish(st, part + 3 * plane, s, D, dw, 0, false);
}

/* ---------------------------------------------------------------- RMSNorm + RoPE */

__global__ void k_rms_sumsq(float *ss, const void *x, int dt, int ldx, int D) {
    int i = blockIdx.x;
    size_t row = (size_t)i * ldx;
    float s = 0.0f;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float v = ld_f(x, dt, row + j);
        s += v * v;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) ss[i] = s;
}

extern "C" void wan_cuda_rms_sumsq(wan_backend *be, float *ss, const void *x, int ldx, int T, int D) {
    if (T <= 0) return;
    cudaStream_t st = wan_cuda_stream_of(be);
    k_rms_sumsq<<<(unsigned)T, WAN_THREADS, 0, st>>>(ss, x, be->act, ldx, D);
    WAN_CU_LAUNCH(st);
}

/* Position of row i in the full sequence (indexes the RoPE tables). */
static __device__ __forceinline__ long long rope_pos(int i, long long tok0, long long S, long long pos0) {
    return pos0 + (tok0 + i) % S;
}

/* One thread per adjacent pair (2q, 2q + 1) of row blockIdx.x: normalise, scale by w, rotate.
 * Column 2q is in head (2q / hd) at pair ((2q % hd) / 2). In place (y == x) is safe: each thread
 * reads its pair before writing it. */
__global__ void k_rms_rope_fwd(void *y, int ldy, float *rrms, const void *x, int ldx, int dt, const float *ss,
                               const void *w, int pdt, const float *cosv, const float *sinv, int hd, long long tok0,
                               long long S, long long pos0, int D, float inv_dfull, float eps) {
    int i = blockIdx.x, q = blockIdx.y * blockDim.x + threadIdx.x;
    float r = 1.0f / sqrtf(ss[i] * inv_dfull + eps);
    if (q == 0 && rrms) rrms[i] = r;
    if (2 * q >= D) return;
    size_t xa = (size_t)i * ldx + 2 * q, ya = (size_t)i * ldy + 2 * q;
    float a = ld_f(x, dt, xa) * r * ld_f(w, pdt, 2 * q);
    float b = ld_f(x, dt, xa + 1) * r * ld_f(w, pdt, 2 * q + 1);
    if (cosv) {
        int half = hd / 2;
        size_t t = (size_t)rope_pos(i, tok0, S, pos0) * half + (2 * q % hd) / 2;
        float c = cosv[t], s = sinv[t];
        float ra = a * c - b * s, rb = a * s + b * c;
        a = ra;
        b = rb;
    }
    st_f(y, dt, ya, a);
    st_f(y, dt, ya + 1, b);
}

extern "C" void wan_cuda_rms_rope_fwd(wan_backend *be, void *y, int ldy, float *rrms, const void *x, int ldx,
                                      const float *ss, const void *w, const wan_rope *rope, wan_tokens tk, int D,
                                      int D_full, float eps) {
    if (tk.T <= 0) return;
    WAN_CUDA_REQUIRE(D % 2 == 0 && D_full > 0, "rms_rope_fwd: D = %d must be even, D_full = %d > 0", D, D_full);
    WAN_CUDA_REQUIRE(!rope || (rope->head_dim > 0 && rope->head_dim % 2 == 0 && D % rope->head_dim == 0 &&
                               tk.S_local > 0),
                     "rms_rope_fwd: head_dim %d must be even and divide D = %d (S_local %d)",
                     rope ? rope->head_dim : 0, D, tk.S_local);
    cudaStream_t st = wan_cuda_stream_of(be);
    long long S = tk.S_local > 0 ? tk.S_local : tk.T;
    dim3 grid((unsigned)tk.T, wan_blocks(D / 2 > 0 ? D / 2 : 1, WAN_THREADS));
    k_rms_rope_fwd<<<grid, WAN_THREADS, 0, st>>>(y, ldy, rrms, x, ldx, be->act, ss, w, be->param,
                                                 rope ? rope->cos : NULL, rope ? rope->sin : NULL,
                                                 rope ? rope->head_dim : 2, tk.tok0, S, tk.pos0, D,
                                                 1.0f / (float)D_full, eps);
    WAN_CU_LAUNCH(st);
}

/* One block per row: un-rotate dy in place (rotation by -theta), dot[i] = sum_j u_j w_j x_j. */
__global__ void k_rms_rope_bwd_dot(float *dot, void *dy, int ldy, const void *x, int ldx, int dt, const void *w,
                                   int pdt, const float *cosv, const float *sinv, int hd, long long tok0, long long S,
                                   long long pos0, int D) {
    int i = blockIdx.x, half = hd / 2;
    size_t xr = (size_t)i * ldx, yr = (size_t)i * ldy;
    long long pos = rope_pos(i, tok0, S, pos0);
    float acc = 0.0f;
    for (int q = threadIdx.x; 2 * q < D; q += blockDim.x) {
        float u0 = ld_f(dy, dt, yr + 2 * q), u1 = ld_f(dy, dt, yr + 2 * q + 1);
        if (cosv) {
            size_t t = (size_t)pos * half + (2 * q % hd) / 2;
            float c = cosv[t], s = sinv[t];
            float a = u0 * c + u1 * s, b = -u0 * s + u1 * c;
            u0 = a;
            u1 = b;
            st_f(dy, dt, yr + 2 * q, u0);
            st_f(dy, dt, yr + 2 * q + 1, u1);
        }
        acc += u0 * ld_f(w, pdt, 2 * q) * ld_f(x, dt, xr + 2 * q) +
               u1 * ld_f(w, pdt, 2 * q + 1) * ld_f(x, dt, xr + 2 * q + 1);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0 && dot) dot[i] = acc;
}

/* Slot partials of dw = sum_i u_ij x_ij rrms_i (u: the un-rotated dy, read back). */
__global__ void k_rms_dw_part(float *part, wan_slots s, int D, const void *dy, int ldy, const void *x, int ldx, int dt,
                              const float *rrms) {
    int p = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= D) return;
    int i0, i1;
    long long b;
    wan_slot_rows(s, p, &i0, &i1, &b);
    float acc = 0.0f;
    for (int i = i0; i < i1; i++) acc += ld_f(dy, dt, (size_t)i * ldy + j) * ld_f(x, dt, (size_t)i * ldx + j) * rrms[i];
    part[(size_t)p * D + j] = acc;
}

extern "C" void wan_cuda_rms_rope_bwd_dot(wan_backend *be, float *dot, float *dw, void *dy, int ldy, const void *x,
                                          int ldx, const float *rrms, const void *w, const wan_rope *rope,
                                          wan_tokens tk, int D) {
    if (tk.T <= 0) return;
    WAN_CUDA_REQUIRE(D % 2 == 0, "rms_rope_bwd_dot: D = %d must be even", D);
    WAN_CUDA_REQUIRE(!rope || (rope->head_dim > 0 && rope->head_dim % 2 == 0 && D % rope->head_dim == 0 &&
                               tk.S_local > 0),
                     "rms_rope_bwd_dot: head_dim %d must be even and divide D = %d (S_local %d)",
                     rope ? rope->head_dim : 0, D, tk.S_local);
    cudaStream_t st = wan_cuda_stream_of(be);
    long long S = tk.S_local > 0 ? tk.S_local : tk.T;
    k_rms_rope_bwd_dot<<<(unsigned)tk.T, WAN_THREADS, 0, st>>>(dot, dy, ldy, x, ldx, be->act, w, be->param,
                                                               rope ? rope->cos : NULL, rope ? rope->sin : NULL,
                                                               rope ? rope->head_dim : 2, tk.tok0, S, tk.pos0, D);
    WAN_CU_LAUNCH(st);
    if (!dw) return;
    wan_slots s = wan_slots_make(tk.T, 0, tk.T);
    float *part = (float *)wan_cuda_scratch(be, WAN_SCR_PARTIAL, (size_t)s.nslots * D * sizeof(float));
    dim3 grid((unsigned)s.nslots, wan_blocks(D, WAN_THREADS));
    k_rms_dw_part<<<grid, WAN_THREADS, 0, st>>>(part, s, D, dy, ldy, x, ldx, be->act, rrms);
    WAN_CU_LAUNCH(st);
    wan_cuda_slots_finish(st, part, s, D, dw, 0, false);
}

/* dx = rrms * w * dy - x * rrms^3 * dot / D_full (written; dx may alias dy) */
__global__ void k_rms_bwd_dx(void *dx, int lddx, const void *dy, int ldy, const void *x, int ldx, int dt,
                             const float *rrms, const float *dot, const void *w, int pdt, int D, float inv_dfull) {
    int i = blockIdx.x, j = blockIdx.y * blockDim.x + threadIdx.x;
    if (j >= D) return;
    float r = rrms[i];
    float g = ld_f(dy, dt, (size_t)i * ldy + j), xv = ld_f(x, dt, (size_t)i * ldx + j);
    st_f(dx, dt, (size_t)i * lddx + j, r * ld_f(w, pdt, j) * g - xv * r * r * r * dot[i] * inv_dfull);
}

extern "C" void wan_cuda_rms_bwd_dx(wan_backend *be, void *dx, int lddx, const void *dy, int ldy, const void *x,
                                    int ldx, const float *rrms, const float *dot, const void *w, int T, int D,
                                    int D_full) {
    if (T <= 0 || D <= 0) return;
    WAN_CUDA_REQUIRE(D_full > 0, "rms_bwd_dx: D_full = %d", D_full);
    cudaStream_t st = wan_cuda_stream_of(be);
    dim3 grid((unsigned)T, wan_blocks(D, WAN_THREADS));
    k_rms_bwd_dx<<<grid, WAN_THREADS, 0, st>>>(dx, lddx, dy, ldy, x, ldx, be->act, rrms, dot, w, be->param, D,
                                               1.0f / (float)D_full);
    WAN_CU_LAUNCH(st);
}
