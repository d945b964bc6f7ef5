/* Embeddings, data layout and the loss of the CUDA backend: the sinusoidal timestep embedding
 * (in double, as the official model), patchify / unpatchify between latents [B, C, F, H, W] and
 * token rows, and the flow-matching loss with a deterministic per-sample sum. */
#include "cuda_kernels.cuh"

/* out[b, i] = cos(t_b * f_i), out[b, half + i] = sin(t_b * f_i), f_i = 10000^(-i / half) */
__global__ void k_timestep_embed(float *out, const float *t, int B, int half) {
    int b = blockIdx.y, i = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= B || i >= half) return;
    double arg = (double)t[b] * pow(10000.0, -(double)i / (double)half);
    out[(size_t)b * 2 * half + i] = (float)cos(arg);
    out[(size_t)b * 2 * half + half + i] = (float)sin(arg);
}

extern "C" void wan_cuda_timestep_embed(wan_backend *be, float *out, const float *t, int B, int freq_dim) {
    if (B <= 0) return;
    WAN_CUDA_REQUIRE(freq_dim > 0 && freq_dim % 2 == 0, "timestep_embed: freq_dim = %d must be even", freq_dim);
    WAN_CUDA_REQUIRE(B <= 65535, "timestep_embed: B = %d (at most 65535)", B);
    cudaStream_t st = wan_cuda_stream_of(be);
    int half = freq_dim / 2;
    dim3 grid(wan_blocks(half, WAN_THREADS), (unsigned)B);
    k_timestep_embed<<<grid, WAN_THREADS, 0, st>>>(out, t, B, half);
    WAN_CU_LAUNCH(st);
}

/* Geometry of the patch grid shared by patchify and unpatchify. */
typedef struct {
    int C, F, H, W, pt, ph, pw;
    int Hp, Wp; /* patches per column and row */
    int P;      /* values per patch */
} wan_patch_geo;

/* Index into the latent of element e of the patch at token position p of sample b; e is in
 * (pt, ph, pw, c) order when c_fastest, else (c, pt, ph, pw). Tokens are (f, h, w), w fastest. */
static __device__ __forceinline__ size_t patch_src(const wan_patch_geo &g, long long b, long long p, int e,
                                                   bool c_fastest) {
    int fi = (int)(p / ((long long)g.Hp * g.Wp));
    int rem = (int)(p % ((long long)g.Hp * g.Wp));
    int hi = rem / g.Wp, wi = rem % g.Wp;
    int c, a, bb, cc;
    if (c_fastest) {
        c = e % g.C;
        int t = e / g.C;
        cc = t % g.pw;
        t /= g.pw;
        bb = t % g.ph;
        a = t / g.ph;
    } else {
        cc = e % g.pw;
        int t = e / g.pw;
        bb = t % g.ph;
        t /= g.ph;
        a = t % g.pt;
        c = t / g.pt;
    }
    return ((((size_t)b * g.C + c) * g.F + (size_t)fi * g.pt + a) * g.H + (size_t)hi * g.ph + bb) * g.W +
           (size_t)wi * g.pw + cc;
}

__global__ void k_patchify(void *out, int odt, const float *latent, wan_patch_geo g, bool c_fastest, long long tok0,
                           long long S, long long pos0, long long n_valid) {
    int i = blockIdx.x, e = blockIdx.y * blockDim.x + threadIdx.x;
    if (e >= g.P) return;
    long long tok = tok0 + i, b = tok / S, p = pos0 + tok % S;
    float v = p < n_valid ? latent[patch_src(g, b, p, e, c_fastest)] : 0.0f;
    st_f(out, odt, (size_t)i * g.P + e, v);
}

__global__ void k_unpatchify(float *latent, const float *rows, wan_patch_geo g, long long tok0, long long S,
                             long long pos0, long long n_valid) {
    int i = blockIdx.x, e = blockIdx.y * blockDim.x + threadIdx.x;
    if (e >= g.P) return;
    long long tok = tok0 + i, b = tok / S, p = pos0 + tok % S;
    if (p >= n_valid) return;
    latent[patch_src(g, b, p, e, true)] = rows[(size_t)i * g.P + e];
}

static wan_patch_geo patch_geo(int C, int F, int H, int W, int pt, int ph, int pw) {
    WAN_CUDA_REQUIRE(C > 0 && pt > 0 && ph > 0 && pw > 0 && F % pt == 0 && H % ph == 0 && W % pw == 0,
                     "patchify: latent %dx%dx%dx%d does not divide into %dx%dx%d patches", C, F, H, W, pt, ph, pw);
    wan_patch_geo g = {C, F, H, W, pt, ph, pw, H / ph, W / pw, C * pt * ph * pw};
    return g;
}

extern "C" void wan_cuda_patchify(wan_backend *be, void *out, wan_dtype out_dt, const float *latent, int B, int C,
                                  int F, int H, int W, int pt, int ph, int pw, bool c_fastest, wan_tokens tk,
                                  int n_valid) {
    if (tk.T <= 0) return;
    WAN_CUDA_REQUIRE(tk.S_local > 0, "patchify: S_local = %d", tk.S_local);
    WAN_CUDA_REQUIRE((tk.tok0 + tk.T - 1) / tk.S_local < B, "patchify: tokens %lld..%lld lie beyond the %d samples",
                     (long long)tk.tok0, (long long)(tk.tok0 + tk.T - 1), B);
    wan_patch_geo g = patch_geo(C, F, H, W, pt, ph, pw);
    long long valid = n_valid < (F / pt) * (H / ph) * (W / pw) ? n_valid : (long long)(F / pt) * (H / ph) * (W / pw);
    cudaStream_t st = wan_cuda_stream_of(be);
    dim3 grid((unsigned)tk.T, wan_blocks(g.P, WAN_THREADS));
    k_patchify<<<grid, WAN_THREADS, 0, st>>>(out, out_dt, latent, g, c_fastest, tk.tok0, tk.S_local, tk.pos0, valid);
    WAN_CU_LAUNCH(st);
}

extern "C" void wan_cuda_unpatchify(wan_backend *be, float *latent, const float *rows, int B, int C, int F, int H,
                                    int W, int pt, int ph, int pw, wan_tokens tk, int n_valid) {
    if (tk.T <= 0) return;
    WAN_CUDA_REQUIRE(tk.S_local > 0, "unpatchify: S_local = %d", tk.S_local);
    WAN_CUDA_REQUIRE((tk.tok0 + tk.T - 1) / tk.S_local < B, "unpatchify: tokens %lld..%lld lie beyond the %d samples",
                     (long long)tk.tok0, (long long)(tk.tok0 + tk.T - 1), B);
    wan_patch_geo g = patch_geo(C, F, H, W, pt, ph, pw);
    long long valid = n_valid < (F / pt) * (H / ph) * (W / pw) ? n_valid : (long long)(F / pt) * (H / ph) * (W / pw);
    cudaStream_t st = wan_cuda_stream_of(be);
    dim3 grid((unsigned)tk.T, wan_blocks(g.P, WAN_THREADS));
    k_unpatchify<<<grid, WAN_THREADS, 0, st>>>(latent, rows, g, tk.tok0, tk.S_local, tk.pos0, valid);
    WAN_CU_LAUNCH(st);
}

/* One block per row: dpred = coef[b] * (pred - target) (0 on padding), rowsq[i] = sum d^2. */
__global__ void k_flow_loss(float *dpred, float *rowsq, const float *pred, const float *target, const float *coef,
                            long long tok0, long long S, long long pos0, long long n_valid, int P) {
    int i = blockIdx.x;
    long long tok = tok0 + i, b = tok / S;
    bool valid = pos0 + tok % S < n_valid;
    float cb = coef[b], acc = 0.0f;
    for (int e = threadIdx.x; e < P; e += blockDim.x) {
        size_t at = (size_t)i * P + e;
        float d = pred[at] - target[at];
        dpred[at] = valid ? cb * d : 0.0f;
        acc += valid ? d * d : 0.0f;
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) rowsq[i] = acc;
}

/* Slot partials of the per-row sums (a one-column slot reduction). */
__global__ void k_rowsq_part(float *part, wan_slots s, const float *rowsq) {
    int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= s.nslots) return;
    int i0, i1;
    long long b;
    wan_slot_rows(s, p, &i0, &i1, &b);
    float acc = 0.0f;
    for (int i = i0; i < i1; i++) acc += rowsq[i];
    part[p] = acc;
}

extern "C" void wan_cuda_flow_loss(wan_backend *be, float *dpred, float *sqsum, const float *pred, const float *target,
                                   const float *coef, wan_tokens tk, int P, int n_valid) {
    if (tk.T <= 0 || P <= 0) return;
    WAN_CUDA_REQUIRE(tk.S_local > 0, "flow_loss: S_local = %d", tk.S_local);
    cudaStream_t st = wan_cuda_stream_of(be);
    wan_slots s = wan_slots_make(tk.T, tk.tok0, tk.S_local);
    float *rowsq = (float *)wan_cuda_scratch(be, WAN_SCR_ROWS, (size_t)tk.T * sizeof(float));
    float *part = (float *)wan_cuda_scratch(be, WAN_SCR_PARTIAL, (size_t)s.nslots * sizeof(float));
    k_flow_loss<<<(unsigned)tk.T, 128, 0, st>>>(dpred, rowsq, pred, target, coef, tk.tok0, tk.S_local, tk.pos0,
                                                n_valid, P);
    WAN_CU_LAUNCH(st);
    k_rowsq_part<<<wan_blocks(s.nslots, WAN_THREADS), WAN_THREADS, 0, st>>>(part, s, rowsq);
    WAN_CU_LAUNCH(st);
    wan_cuda_slots_finish(st, part, s, 1, sqsum, 1, true);
}
