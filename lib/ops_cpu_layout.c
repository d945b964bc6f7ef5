/* Embeddings and data layout: the sinusoidal timestep embedding and the patch gather/scatter
 * between latents [B, C, F, H, W] and token rows. */
#include <math.h>

#include "ops_cpu_internal.h"

/* As the official sinusoidal_embedding_1d: in double, cos half first, then sin. */
void cpu_timestep_embed(wan_backend *be, float *out, const float *t, int B, int freq_dim) {
    (void)be;
    WAN_ASSERT(freq_dim % 2 == 0);
    int half = freq_dim / 2;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < half; i++) {
            double arg = (double)t[b] * pow(10000.0, -(double)i / half);
            out[(size_t)b * freq_dim + i] = (float)cos(arg);
            out[(size_t)b * freq_dim + half + i] = (float)sin(arg);
        }
}

/* Token p of the patch grid (F/pt, H/ph, W/pw), w fastest, and the offset of its first value
 * (c = 0, dt = dh = dw = 0) in sample b's latent. */
typedef struct {
    int C, F, H, W, pt, ph, pw;
} patch_geom;

static inline size_t patch_origin(const patch_geom *g, int b, int p) {
    int gh = g->H / g->ph, gw = g->W / g->pw;
    int f = p / (gh * gw), h = p / gw % gh, w = p % gw;
    return (((size_t)b * g->C * g->F + (size_t)f * g->pt) * g->H + (size_t)h * g->ph) * g->W +
           (size_t)w * g->pw;
}

/* Index of value (c, dt, dh, dw) within a row: the Conv3d weight order (c, pt, ph, pw) or the
 * head's (pt, ph, pw, c). */
static inline int patch_col(const patch_geom *g, bool c_fastest, int c, int dt, int dh, int dw) {
    int spatial = (dt * g->ph + dh) * g->pw + dw;
    return c_fastest ? spatial * g->C + c : c * g->pt * g->ph * g->pw + spatial;
}

static void check_geom(const patch_geom *g, int n_valid) {
    WAN_ASSERT(g->F % g->pt == 0 && g->H % g->ph == 0 && g->W % g->pw == 0);
    WAN_ASSERT(n_valid <= (g->F / g->pt) * (g->H / g->ph) * (g->W / g->pw));
}

void cpu_patchify(wan_backend *be, void *out, wan_dtype out_dt, const float *latent, int B, int C, int F,
                  int H, int W, int pt, int ph, int pw, bool c_fastest, wan_tokens tk, int n_valid) {
    CPU_F32(out_dt);
    patch_geom g = {C, F, H, W, pt, ph, pw};
    check_geom(&g, n_valid);
    int P = C * pt * ph * pw;
    size_t plane = (size_t)F * H * W; /* one channel of a sample */
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int i = 0; i < tk.T; i++) {
        float *row = (float *)out + (size_t)i * P;
        int b = cpu_tok_sample(tk, i), p = cpu_tok_pos(tk, i);
        if (p >= n_valid) {
            memset(row, 0, (size_t)P * sizeof(float));
            continue;
        }
        WAN_ASSERT(b < B);
        size_t o = patch_origin(&g, b, p);
        for (int c = 0; c < C; c++)
            for (int dt = 0; dt < pt; dt++)
                for (int dh = 0; dh < ph; dh++)
                    for (int dw = 0; dw < pw; dw++)
                        row[patch_col(&g, c_fastest, c, dt, dh, dw)] =
                            latent[o + c * plane + ((size_t)dt * H + dh) * W + dw];
    }
}

void cpu_unpatchify(wan_backend *be, float *latent, const float *rows, int B, int C, int F, int H, int W,
                    int pt, int ph, int pw, wan_tokens tk, int n_valid) {
    patch_geom g = {C, F, H, W, pt, ph, pw};
    check_geom(&g, n_valid);
    int P = C * pt * ph * pw;
    size_t plane = (size_t)F * H * W;
#pragma omp parallel for num_threads(cpu_threads(be)) schedule(static)
    for (int i = 0; i < tk.T; i++) {
        int b = cpu_tok_sample(tk, i), p = cpu_tok_pos(tk, i);
        if (p >= n_valid) continue; /* padding */
        WAN_ASSERT(b < B);
        const float *row = rows + (size_t)i * P;
        size_t o = patch_origin(&g, b, p);
        for (int c = 0; c < C; c++)
            for (int dt = 0; dt < pt; dt++)
                for (int dh = 0; dh < ph; dh++)
                    for (int dw = 0; dw < pw; dw++)
                        latent[o + c * plane + ((size_t)dt * H + dh) * W + dw] =
                            row[patch_col(&g, true, c, dt, dh, dw)];
    }
}
