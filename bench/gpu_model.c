/* gpu_model: whole-model training steps of the CUDA backend on one GPU (issue 6, "Benchmark"):
 *   14b   a stack of Wan 2.1 blocks at the 14B width (dim 5120, 40 heads of 128, ffn 13824, text
 *         512 x 4096) at the reference sequence 37440 (latents 24 x 60 x 104, one sample), with
 *         recompute (--recompute: keep-attention by default, as train.recompute = true with
 *         train.recompute_attention = false; full; none), as many layers as fit in the GPU's memory;
 *   1.3b  the Wan 2.1 1.3B model (configs/wan2.1-1.3b.cfg: 30 layers of dim 1536, sequence 32760,
 *         its recompute setting unless --recompute names one).
 * Each runs the real training step of wan-train: wan_model_forward (flow-matching loss) +
 * wan_model_backward + wan_optim_step (AdamW over every parameter, global-norm clipping), on
 * random weights and inputs (never zeros; the head is random, not the zero init, so gradients
 * flow into every block).
 *
 * Memory probe (14b, unless --layers): steps with 1 and with 2 layers (1 warm-up, 3 timed), each in
 * its own process; the difference of their peak device memory (the backend's allocator counts every
 * byte it hands out) is the memory per layer (bf16 weight, fp32 gradient, fp32 master and two
 * moments, and the block's saved input under recompute), the rest is the base (activations,
 * embeddings, head, workspaces). The stack gets L = (free memory - 3% - 1 GiB - base) / per-layer
 * layers (at most --max-layers); a run that still runs out (the CUDA backend aborts) is retried
 * with one layer fewer. Every run is a child process, so that an out-of-memory abort is survived.
 *
 * Timing: --warmup steps (default 2), then --steps timed steps (default 5), each ended by a device
 * synchronisation and timed with the host clock; the median is reported. Then one more step with
 * a timing shim around every op of the backend (wan_ops table and the backend's copy, convert,
 * memset0, upload, download): synchronised before and after each op, so that each op's time is
 * its own; this pass is separate from the timed steps and slower than them.
 *
 * Model FLOPs by the Wan formula (lib/flops.h, Megatron-Bridge's count, 3 x forward):
 *   14b   the formula restricted to the stack's L layers: 3 L (self + cross + mlp) per sample of
 *         37440 tokens, i.e. wan_train_flops_per_sample(L layers) - wan_train_flops_per_sample(0);
 *         the patch and text embeddings and the head are not counted although the step runs
 *         them (a slight understatement). Also reported: the marginal time of one more layer,
 *         (t(L) - t(1)) / (L - 1), and the model TFLOP/s of one layer at that time.
 *   1.3b  the whole formula (blocks, embeddings, head).
 * Recompute's extra forward is not counted (model FLOPs, as NeMo DFM counts them).
 *
 *   gpu_model [--case 14b|1.3b|all] [--layers N] [--max-layers N] [--warmup N] [--steps N]
 *             [--device N] [--json FILE] [--no-breakdown] [--cpu-twin] [--mem-budget MIB]
 *             [--threads N] [--recompute keep-attention|full|none]
 *
 * --cpu-twin runs the same logic on the CPU backend at a tiny size (dim 256, 2 heads of 128, 64
 * tokens; 1.3b: dim 128, 3 layers), with --mem-budget (default 48 MiB) in place of the GPU's free
 * memory: it tests the probe, the fit, the retry, the shim and the tables without a GPU.
 * Exit 0 when every case ran, 1 when one failed or the CUDA backend cannot start. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bootstrap.h"
#include "comm.h"
#include "config.h"
#include "dist.h"
#include "dtype.h"
#include "error.h"
#include "flops.h"
#include "log.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "params.h"
#include "rng.h"

#ifdef WAN_CUDA
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <nccl.h>
#endif

static int device, warmup = 2, steps = 5, threads = 0, max_layers = 40, fit_extra;
static bool twin, breakdown = true;
static double budget_mib; /* twin: the memory "device" */

/* ================================================================ a case */

typedef struct {
    const char *key;  /* "14b" | "1.3b" */
    const char *what; /* for the tables */
    wan_model_cfg mc; /* num_layers is set per run */
    int F, H, W;      /* latent frames, height, width (one sample) */
    wan_recompute recompute;
    bool stack;
} bcase;

static const char *recompute_name(wan_recompute r) {
    return r == WAN_RECOMPUTE_FULL ? "full" : r == WAN_RECOMPUTE_KEEP_ATTENTION ? "keep-attention" : "none";
}

typedef struct {
    int ok, layers, nsteps;
    double step_med, step_min, step_max; /* seconds */
    double mem_peak, mem_free0, mem_total; /* bytes */
    double flops_layers, flops_model;    /* per step */
    long long tokens;                    /* per step */
    char device[128];
    char versions[96];
} run_result;

static int tokens_of(const bcase *c) {
    const int *p = c->mc.patch_size;
    return (c->F / p[0]) * (c->H / p[1]) * (c->W / p[2]);
}

static double flops_of(const bcase *c, int layers) {
    wan_model_cfg m = c->mc;
    m.num_layers = layers;
    return wan_train_flops_per_sample(&m, tokens_of(c));
}

/* ================================================================ the per-op timing shim */

typedef struct {
    char label[80];
    int calls;
    double sec, flops;
} shim_row;

#define SHIM_ROWS 512
static shim_row rows[SHIM_ROWS];
static int nrows;
static const wan_ops *real;
static wan_backend real_be; /* the backend's functions before the shim */

static double t_begin(wan_backend *be) {
    real_be.sync(be);
    return wan_now();
}

static void t_end(wan_backend *be, double t0, double flops, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void t_end(wan_backend *be, double t0, double flops, const char *fmt, ...) {
    real_be.sync(be);
    double dt = wan_now() - t0;
    char label[80];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(label, sizeof label, fmt, ap);
    va_end(ap);
    int i = 0;
    while (i < nrows && strcmp(rows[i].label, label)) i++;
    if (i == nrows) {
        if (nrows == SHIM_ROWS) i = SHIM_ROWS - 1, snprintf(rows[i].label, sizeof rows[i].label, "(other)");
        else snprintf(rows[nrows++].label, sizeof rows[i].label, "%s", label);
    }
    rows[i].calls++;
    rows[i].sec += dt;
    rows[i].flops += flops;
}

static const char *dtn(wan_dtype t) { return t == WAN_F32 ? "f32" : t == WAN_BF16 ? "bf16" : "f16"; }

static void s_matmul_fwd(wan_backend *be, void *out, wan_dtype out_dt, const void *in, wan_dtype in_dt, const void *w,
                         const void *bias, int M, int N, int K) {
    double t = t_begin(be);
    real->matmul_fwd(be, out, out_dt, in, in_dt, w, bias, M, N, K);
    t_end(be, t, 2.0 * M * N * K, "matmul_fwd %dx%dx%d %s->%s%s", M, N, K, dtn(in_dt), dtn(out_dt), bias ? " +b" : "");
}
static void s_matmul_bwd(wan_backend *be, void *din, wan_dtype din_dt, bool din_acc, float *dw, float *db,
                         const void *dout, wan_dtype dout_dt, const void *in, wan_dtype in_dt, const void *w, int M,
                         int N, int K) {
    double t = t_begin(be);
    real->matmul_bwd(be, din, din_dt, din_acc, dw, db, dout, dout_dt, in, in_dt, w, M, N, K);
    t_end(be, t, 2.0 * M * N * K * ((din != NULL) + (dw != NULL)), "matmul_bwd %dx%dx%d %s%s%s", M, N, K,
          din ? (din_acc ? "din+=" : "din") : "", dw ? " dw" : "", db ? "+db" : "");
}
static void s_matmul_gelu_fwd(wan_backend *be, void *g, void *h, const void *in, const void *w, const void *bias, int M,
                              int N, int K) {
    double t = t_begin(be);
    real->matmul_gelu_fwd(be, g, h, in, w, bias, M, N, K);
    t_end(be, t, 2.0 * M * N * K, "matmul_gelu_fwd %dx%dx%d", M, N, K);
}
static void s_matmul_dgelu_bwd(wan_backend *be, void *dh, const void *dout, const void *w, const void *h, int M, int N,
                               int K) {
    double t = t_begin(be);
    real->matmul_dgelu_bwd(be, dh, dout, w, h, M, N, K);
    t_end(be, t, 2.0 * M * N * K, "matmul_dgelu_bwd %dx%dx%d", M, N, K);
}
static void s_layernorm_fwd(wan_backend *be, void *out, wan_dtype out_dt, float *mean, float *rstd, const float *x,
                            const void *w, const void *b, const float *shift, const float *scale, int mod_stride,
                            wan_tokens tk, int D, float eps) {
    double t = t_begin(be);
    real->layernorm_fwd(be, out, out_dt, mean, rstd, x, w, b, shift, scale, mod_stride, tk, D, eps);
    t_end(be, t, 0, "layernorm_fwd %s", w ? "affine" : shift ? "modulated" : "plain");
}
static void s_layernorm_bwd(wan_backend *be, float *dx, float *dw, float *db, float *dshift, float *dscale,
                            const void *dout, wan_dtype dout_dt, const float *x, const float *mean, const float *rstd,
                            const void *w, const float *scale, int mod_stride, wan_tokens tk, int D) {
    double t = t_begin(be);
    real->layernorm_bwd(be, dx, dw, db, dshift, dscale, dout, dout_dt, x, mean, rstd, w, scale, mod_stride, tk, D);
    t_end(be, t, 0, "layernorm_bwd %s", w ? "affine" : dshift ? "modulated" : "plain");
}
static void s_rms_sumsq(wan_backend *be, float *ss, const void *x, int ldx, int T, int D) {
    double t = t_begin(be);
    real->rms_sumsq(be, ss, x, ldx, T, D);
    t_end(be, t, 0, "rms_sumsq");
}
static void s_rms_rope_fwd(wan_backend *be, void *y, int ldy, float *rrms, const void *x, int ldx, const float *ss,
                           const void *w, const wan_rope *rope, wan_tokens tk, int D, int D_full, float eps) {
    double t = t_begin(be);
    real->rms_rope_fwd(be, y, ldy, rrms, x, ldx, ss, w, rope, tk, D, D_full, eps);
    t_end(be, t, 0, "rms_rope_fwd%s", rope ? "" : " (no rope)");
}
static void s_rms_rope_bwd_dot(wan_backend *be, float *dot, float *dw, void *dy, int ldy, const void *x, int ldx,
                               const float *rrms, const void *w, const wan_rope *rope, wan_tokens tk, int D) {
    double t = t_begin(be);
    real->rms_rope_bwd_dot(be, dot, dw, dy, ldy, x, ldx, rrms, w, rope, tk, D);
    t_end(be, t, 0, "rms_rope_bwd_dot%s", rope ? "" : " (no rope)");
}
static void s_rms_bwd_dx(wan_backend *be, void *dx, int lddx, const void *dy, int ldy, const void *x, int ldx,
                         const float *rrms, const float *dot, const void *w, int T, int D, int D_full) {
    double t = t_begin(be);
    real->rms_bwd_dx(be, dx, lddx, dy, ldy, x, ldx, rrms, dot, w, T, D, D_full);
    t_end(be, t, 0, "rms_bwd_dx");
}
static void s_attention_fwd(wan_backend *be, void *out, int ldo, float *lse, const void *q, int ldq, const void *k,
                            int ldk, const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                            float scale) {
    double t = t_begin(be);
    real->attention_fwd(be, out, ldo, lse, q, ldq, k, ldk, v, ldv, B, H, Sq, Skv, hd, kv_valid, scale);
    t_end(be, t, 4.0 * B * H * Sq * (double)kv_valid * hd, "attention_fwd H%d %dx%d d%d", H, Sq, Skv, hd);
}
static void s_attention_bwd(wan_backend *be, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv,
                            unsigned accumulate, const void *dout, int lddo, const void *out, int ldo, const float *lse,
                            const void *q, int ldq, const void *k, int ldk, const void *v, int ldv, int B, int H,
                            int Sq, int Skv, int hd, int kv_valid, float scale) {
    double t = t_begin(be);
    real->attention_bwd(be, dq, lddq, dk, lddk, dv, lddv, accumulate, dout, lddo, out, ldo, lse, q, ldq, k, ldk, v, ldv,
                        B, H, Sq, Skv, hd, kv_valid, scale);
    /* five products of the forward's size over two: 2.5 x the forward */
    t_end(be, t, 10.0 * B * H * Sq * (double)kv_valid * hd, "attention_bwd H%d %dx%d d%d", H, Sq, Skv, hd);
}
static void s_attention_merge(wan_backend *be, float *acc, float *lse_acc, const void *o, int ldo, const float *lse,
                              int B, int H, int Sq, int hd, bool first) {
    double t = t_begin(be);
    real->attention_merge(be, acc, lse_acc, o, ldo, lse, B, H, Sq, hd, first);
    t_end(be, t, 0, "attention_merge");
}
static void s_gelu_fwd(wan_backend *be, void *out, const void *in, size_t n) {
    double t = t_begin(be);
    real->gelu_fwd(be, out, in, n);
    t_end(be, t, 0, "gelu_fwd");
}
static void s_gelu_bwd(wan_backend *be, void *din, const void *dout, const void *in, size_t n) {
    double t = t_begin(be);
    real->gelu_bwd(be, din, dout, in, n);
    t_end(be, t, 0, "gelu_bwd");
}
static void s_silu_fwd(wan_backend *be, float *out, const float *in, size_t n) {
    double t = t_begin(be);
    real->silu_fwd(be, out, in, n);
    t_end(be, t, 0, "silu_fwd");
}
static void s_silu_bwd(wan_backend *be, float *din, const float *dout, const float *in, size_t n) {
    double t = t_begin(be);
    real->silu_bwd(be, din, dout, in, n);
    t_end(be, t, 0, "silu_bwd");
}
static void s_residual_fwd(wan_backend *be, float *x, const float *y, const void *bias, const float *gate, int gs,
                           wan_tokens tk, int D) {
    double t = t_begin(be);
    real->residual_fwd(be, x, y, bias, gate, gs, tk, D);
    t_end(be, t, 0, "residual_fwd%s", gate ? " (gated)" : "");
}
static void s_residual_bwd(wan_backend *be, void *dy, wan_dtype dy_dt, float *dbias, float *dgate, const float *dx,
                           const float *y, const void *bias, const float *gate, int gs, wan_tokens tk, int D) {
    double t = t_begin(be);
    real->residual_bwd(be, dy, dy_dt, dbias, dgate, dx, y, bias, gate, gs, tk, D);
    t_end(be, t, 0, "residual_bwd%s", gate ? " (gated)" : "");
}
static void s_add(wan_backend *be, void *y, const void *x, wan_dtype dt, size_t n) {
    double t = t_begin(be);
    real->add(be, y, x, dt, n);
    t_end(be, t, 0, "add");
}
static void s_add_bcast(wan_backend *be, float *y, const float *a, const void *b, size_t n, size_t nb) {
    double t = t_begin(be);
    real->add_bcast(be, y, a, b, n, nb);
    t_end(be, t, 0, "add_bcast");
}
static void s_sum_rows(wan_backend *be, float *db, const float *da, size_t n, size_t nb) {
    double t = t_begin(be);
    real->sum_rows(be, db, da, n, nb);
    t_end(be, t, 0, "sum_rows");
}
static void s_timestep_embed(wan_backend *be, float *out, const float *tt, int B, int fd) {
    double t = t_begin(be);
    real->timestep_embed(be, out, tt, B, fd);
    t_end(be, t, 0, "timestep_embed");
}
static void s_patchify(wan_backend *be, void *out, wan_dtype out_dt, const float *latent, int B, int C, int F, int H,
                       int W, int pt, int ph, int pw, bool cf, wan_tokens tk, int n_valid) {
    double t = t_begin(be);
    real->patchify(be, out, out_dt, latent, B, C, F, H, W, pt, ph, pw, cf, tk, n_valid);
    t_end(be, t, 0, "patchify");
}
static void s_unpatchify(wan_backend *be, float *latent, const float *r, int B, int C, int F, int H, int W, int pt,
                         int ph, int pw, wan_tokens tk, int n_valid) {
    double t = t_begin(be);
    real->unpatchify(be, latent, r, B, C, F, H, W, pt, ph, pw, tk, n_valid);
    t_end(be, t, 0, "unpatchify");
}
static void s_flow_loss(wan_backend *be, float *dpred, float *sqsum, const float *pred, const float *target,
                        const float *coef, wan_tokens tk, int P, int n_valid) {
    double t = t_begin(be);
    real->flow_loss(be, dpred, sqsum, pred, target, coef, tk, P, n_valid);
    t_end(be, t, 0, "flow_loss");
}
static void s_adamw(wan_backend *be, float *master, float *m, float *v, const float *grad, void *param, size_t n,
                    float lr, float b1, float b2, float eps, float wd, float gs, int step) {
    double t = t_begin(be);
    real->adamw(be, master, m, v, grad, param, n, lr, b1, b2, eps, wd, gs, step);
    t_end(be, t, 0, "adamw");
}
static double s_sumsq(wan_backend *be, const float *x, size_t n) {
    double t = t_begin(be);
    double r = real->sumsq(be, x, n);
    t_end(be, t, 0, "sumsq (gradient norm)");
    return r;
}
static void s_upload(wan_backend *be, void *dst, const void *host, size_t bytes) {
    double t = t_begin(be);
    real_be.upload(be, dst, host, bytes);
    t_end(be, t, 0, "upload (host->device)");
}
static void s_download(wan_backend *be, void *host, const void *src, size_t bytes) {
    double t = t_begin(be);
    real_be.download(be, host, src, bytes);
    t_end(be, t, 0, "download (device->host)");
}
static void s_memset0(wan_backend *be, void *p, size_t bytes) {
    double t = t_begin(be);
    real_be.memset0(be, p, bytes);
    t_end(be, t, 0, "memset0");
}
static void s_copy(wan_backend *be, void *dst, const void *src, size_t bytes) {
    double t = t_begin(be);
    real_be.copy(be, dst, src, bytes);
    t_end(be, t, 0, "copy");
}
static void s_convert(wan_backend *be, void *dst, wan_dtype dt, const void *src, wan_dtype st, size_t n) {
    double t = t_begin(be);
    real_be.convert(be, dst, dt, src, st, n);
    t_end(be, t, 0, "convert %s->%s", dtn(st), dtn(dt));
}

static const wan_ops shim_ops = {
    .matmul_fwd = s_matmul_fwd,       .matmul_bwd = s_matmul_bwd,       .layernorm_fwd = s_layernorm_fwd,
    .matmul_gelu_fwd = s_matmul_gelu_fwd, .matmul_dgelu_bwd = s_matmul_dgelu_bwd,
    .layernorm_bwd = s_layernorm_bwd, .rms_sumsq = s_rms_sumsq,         .rms_rope_fwd = s_rms_rope_fwd,
    .rms_rope_bwd_dot = s_rms_rope_bwd_dot, .rms_bwd_dx = s_rms_bwd_dx, .attention_fwd = s_attention_fwd,
    .attention_bwd = s_attention_bwd, .attention_merge = s_attention_merge, .gelu_fwd = s_gelu_fwd,
    .gelu_bwd = s_gelu_bwd,           .silu_fwd = s_silu_fwd,           .silu_bwd = s_silu_bwd,
    .residual_fwd = s_residual_fwd,   .residual_bwd = s_residual_bwd,   .add = s_add,
    .add_bcast = s_add_bcast,         .sum_rows = s_sum_rows,           .timestep_embed = s_timestep_embed,
    .patchify = s_patchify,           .unpatchify = s_unpatchify,       .flow_loss = s_flow_loss,
    .adamw = s_adamw,                 .sumsq = s_sumsq,
};

static void shim_install(wan_backend *be) {
    real = be->ops;
    real_be = *be;
    nrows = 0;
    be->ops = &shim_ops;
    be->upload = s_upload, be->download = s_download, be->memset0 = s_memset0, be->copy = s_copy;
    be->convert = s_convert;
}

static void shim_remove(wan_backend *be) {
    be->ops = real;
    be->upload = real_be.upload, be->download = real_be.download, be->memset0 = real_be.memset0;
    be->copy = real_be.copy, be->convert = real_be.convert;
}

static int cmp_row(const void *a, const void *b) {
    double x = ((const shim_row *)a)->sec, y = ((const shim_row *)b)->sec;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* ================================================================ one run (in a child process) */

/* Random weights on the backend, tensor by tensor, from a tile of normals scaled per tensor:
 * matrices xavier-normal, norm weights 1 + N(0, 0.02), biases N(0, 0.02), modulation
 * N(0, 1) / sqrt(dim). The tile repeats inside tensors larger than it (GEMM timings do not
 * care; every value is non-zero). */
static void fill_params(wan_model *m) {
    wan_backend *be = m->be;
    const size_t tn = (size_t)1 << 20;
    size_t esz = wan_dtype_size(be->param);
    float *tile = malloc(tn * sizeof(float)), *scaled = malloc(tn * sizeof(float));
    void *conv = malloc(tn * sizeof(float));
    wan_rand_normal_fill(tile, tn, 4321, WAN_RNG_EVAL, 7, 0, 0);
    double last_sd = -1, last_mean = 0;
    for (int i = 0; i < m->ps.n; i++) {
        const wan_param *p = &m->ps.p[i];
        if (!p->present) continue;
        double sd = 0.02, mean = 0;
        if (p->role == WAN_ROLE_MATRIX) {
            double fo = (double)p->shape[0], fi = (double)wan_numel(p->ndim, p->shape) / fo;
            sd = sqrt(2.0 / (fi + fo));
        } else if (p->role == WAN_ROLE_MODULATION) sd = 1.0 / sqrt((double)m->D);
        else if (p->init == WAN_INIT_ONE) mean = 1.0;
        if (sd != last_sd || mean != last_mean) {
            for (size_t j = 0; j < tn; j++) scaled[j] = (float)(mean + sd * tile[j]);
            wan_convert(conv, be->param, scaled, WAN_F32, tn);
            last_sd = sd, last_mean = mean;
        }
        char *dst = (char *)m->w + (size_t)p->offset * esz;
        for (size_t off = 0; off < (size_t)p->numel; off += tn) {
            size_t k = (size_t)p->numel - off < tn ? (size_t)p->numel - off : tn;
            be->upload(be, dst + off * esz, conv, k * esz);
        }
    }
    free(tile), free(scaled), free(conv);
}

typedef struct {
    float *latent, *noise, *text, sigma[1], coef[1];
} inputs;

static int train_step(wan_model *m, wan_optim *o, const bcase *c, inputs *in) {
    wan_model_input mi = {1,         c->mc.in_dim, c->F,     c->H,     c->W, in->latent,
                          in->noise, in->sigma,    in->text, in->coef, NULL};
    double sq[1], gn, lr;
    WAN_TRY(wan_model_forward(m, &mi, sq, NULL));
    WAN_TRY(wan_model_backward(m));
    WAN_TRY(wan_optim_step(o, &gn, &lr));
    m->be->sync(m->be);
    return 0;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void print_breakdown(const bcase *c, int L, double step_sec) {
    double total = 0;
    for (int i = 0; i < nrows; i++) total += rows[i].sec;
    qsort(rows, (size_t)nrows, sizeof *rows, cmp_row);
    printf("\nPer-op time of one step, %s, %d layer%s (a separate pass, synchronised around every op; "
           "timed step %.1f ms, this pass %.1f ms of op time):\n\n",
           c->what, L, L == 1 ? "" : "s", step_sec * 1e3, total * 1e3);
    printf("| op | calls | ms | %% of ops | TFLOP/s |\n|---|---|---|---|---|\n");
    for (int i = 0; i < nrows; i++) {
        printf("| %s | %d | %.2f | %.1f |", rows[i].label, rows[i].calls, rows[i].sec * 1e3, 100 * rows[i].sec / total);
        if (rows[i].flops > 0) printf(" %.1f |\n", rows[i].flops / rows[i].sec / 1e12);
        else printf(" - |\n");
    }
    /* the same by kind of op */
    const char *kinds[] = {"matmul", "attention", "layernorm", "rms", "residual", "gelu", "adamw", "sumsq", NULL};
    printf("\nBy kind: ");
    double rest = total;
    for (int k = 0; kinds[k]; k++) {
        double s = 0;
        for (int i = 0; i < nrows; i++)
            if (!strncmp(rows[i].label, kinds[k], strlen(kinds[k]))) s += rows[i].sec;
        rest -= s;
        printf("%s %.1f%%, ", kinds[k], 100 * s / total);
    }
    printf("other %.1f%%\n\n", 100 * rest / total);
    fflush(stdout);
}

static run_result run_one(const bcase *c, int L, int nwarm, int nsteps, bool shim) {
    run_result r;
    memset(&r, 0, sizeof r);
    r.layers = L;
    wan_backend *be = NULL;
    if (twin) be = wan_backend_cpu(threads);
    else if (wan_backend_cuda(device, &be)) {
        wan_error_print("gpu_model");
        return r;
    }
    snprintf(r.device, sizeof r.device, "%s", be->device_name);
    if (twin) r.mem_free0 = r.mem_total = budget_mib * 1048576.0;
#ifdef WAN_CUDA
    if (!twin) {
        size_t fr = 0, tot = 0;
        (void)cudaMemGetInfo(&fr, &tot);
        r.mem_free0 = (double)fr, r.mem_total = (double)tot;
        int rt = 0, nv = 0;
        (void)cudaRuntimeGetVersion(&rt);
        (void)ncclGetVersion(&nv);
        snprintf(r.versions, sizeof r.versions, "CUDA runtime %d.%d, cuDNN %zu, NCCL %d", rt / 1000, rt % 1000 / 10,
                 (size_t)cudnnGetVersion(), nv);
    }
#endif
    wan_bootstrap boot;
    wan_comm *comm = NULL;
    wan_dist dist;
    wan_parallel_cfg par = {.tp = 1, .cp = 1, .pp = 1, .vp = 0, .sp = false, .fsdp = false};
    if (wan_bootstrap_init(&boot, 1) || wan_comm_shm_create(&boot, 600, &comm) || wan_dist_init(&dist, comm, &par)) {
        wan_error_print("gpu_model");
        return r;
    }
    wan_model_cfg mc = c->mc;
    mc.num_layers = L;
    wan_config cfg;
    wan_config_defaults(&cfg);
    wan_train_cfg tc = cfg.train;
    tc.optimizer =
        (wan_optim_cfg){.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .grad_clip = 1.0};
    tc.steps = 1000;
    wan_model m;
    wan_optim o;
    if (wan_model_create(&m, &mc, be, &dist, c->recompute, -1, true)) {
        wan_error_print("gpu_model");
        return r;
    }
    fill_params(&m);
    if (wan_optim_create(&o, &m, &tc)) {
        wan_error_print("gpu_model");
        return r;
    }
    size_t lat = (size_t)mc.in_dim * c->F * c->H * c->W, txt = (size_t)mc.text_len * mc.text_dim;
    inputs in;
    in.latent = malloc(lat * sizeof(float));
    in.noise = malloc(lat * sizeof(float));
    in.text = malloc(txt * sizeof(float));
    wan_rand_normal_fill(in.latent, lat, 99, WAN_RNG_EVAL, 1, 0, 0);
    wan_rand_normal_fill(in.noise, lat, 99, WAN_RNG_EVAL, 1, 1, 0);
    wan_rand_normal_fill(in.text, txt, 99, WAN_RNG_EVAL, 1, 2, 0);
    in.sigma[0] = 0.6f;
    in.coef[0] = (float)((1.0 + 2.5 * 0.6) / (double)lat);

    double times[64];
    int rc = 0;
    for (int s = 0; s < nwarm + nsteps && !rc; s++) {
        double t0 = wan_now();
        rc = train_step(&m, &o, c, &in);
        if (s >= nwarm) times[s - nwarm] = wan_now() - t0;
    }
    if (rc) {
        wan_error_print("gpu_model");
        return r;
    }
    r.nsteps = nsteps;
    qsort(times, (size_t)nsteps, sizeof *times, cmp_d);
    r.step_min = times[0], r.step_max = times[nsteps - 1];
    r.step_med = nsteps % 2 ? times[nsteps / 2] : 0.5 * (times[nsteps / 2 - 1] + times[nsteps / 2]);
    r.mem_peak = (double)be->mem_peak;
    if (twin && r.mem_peak > r.mem_total) { /* what the CUDA backend does when memory runs out */
        fprintf(stderr, "gpu_model: twin: %.1f MiB used, over the %.0f MiB budget: abort as the CUDA backend would\n",
                r.mem_peak / 1048576.0, budget_mib);
        abort();
    }
    r.tokens = tokens_of(c);
    r.flops_layers = flops_of(c, L) - flops_of(c, 0);
    r.flops_model = flops_of(c, L);
    if (shim) {
        shim_install(be);
        rc = train_step(&m, &o, c, &in);
        shim_remove(be);
        if (rc) {
            wan_error_print("gpu_model");
            return r;
        }
        print_breakdown(c, L, r.step_med);
    }
    free(in.latent), free(in.noise), free(in.text);
    wan_optim_destroy(&o);
    wan_model_destroy(&m);
    comm->ops->destroy(comm);
    wan_bootstrap_finalize(&boot);
    wan_backend_destroy(be);
    r.ok = 1;
    return r;
}

/* Run one configuration in a child process (an out-of-memory abort ends only the child). */
static run_result spawn(const bcase *c, int L, int nwarm, int nsteps, bool shim) {
    run_result r;
    memset(&r, 0, sizeof r);
    r.layers = L;
    int fd[2];
    fflush(NULL);
    if (pipe(fd)) {
        perror("gpu_model: pipe");
        return r;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("gpu_model: fork");
        return r;
    }
    if (pid == 0) {
        close(fd[0]);
        run_result cr = run_one(c, L, nwarm, nsteps, shim);
        ssize_t w = write(fd[1], &cr, sizeof cr);
        fflush(NULL);
        _exit(cr.ok && w == (ssize_t)sizeof cr ? 0 : 1);
    }
    close(fd[1]);
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = read(fd[0], (char *)&r + got, sizeof r - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fd[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (got != sizeof r || !WIFEXITED(status) || WEXITSTATUS(status)) {
        if (WIFSIGNALED(status))
            printf("  (the run with %d layer%s was killed by signal %d%s)\n", L, L == 1 ? "" : "s", WTERMSIG(status),
                   WTERMSIG(status) == SIGABRT ? ": the CUDA backend aborts when it runs out of memory" : "");
        else printf("  (the run with %d layer%s failed: exit %d)\n", L, L == 1 ? "" : "s", WEXITSTATUS(status));
        fflush(stdout);
        memset(&r, 0, sizeof r);
        r.layers = L;
    }
    return r;
}

/* ================================================================ the cases */

typedef struct {
    const bcase *c;
    run_result r;
    double per_layer, base; /* bytes; 0 when not probed */
    int fit;                /* layers the probe says fit */
    double marg_sec;        /* marginal time of one more layer; 0 when unknown */
} outcome;

static const double GiB = 1073741824.0;
static double MEMU = 1073741824.0; /* the unit of memory in the tables: GiB (MiB for the twin) */
static const char *MEMN = "GiB";

static void summary_row(const outcome *o) {
    const run_result *r = &o->r;
    const bcase *c = o->c;
    if (!r->ok) {
        printf("| %s | %d | FAILED | | | | | |\n", c->what, r->layers);
        return;
    }
    double fl = c->stack ? r->flops_layers : r->flops_model;
    printf("| %s | %d | - | %.1f / %.1f | %.1f | %.0f | **%.1f** | %s |\n", c->what, r->layers, r->mem_peak / MEMU,
           r->mem_total / MEMU, r->step_med * 1e3,
           (double)r->tokens / r->step_med, fl / r->step_med / 1e12, c->stack ? "layers only" : "whole model");
}

static outcome run_case(const bcase *c, int layers) {
    outcome o;
    memset(&o, 0, sizeof o);
    o.c = c;
    printf("== %s: dim %d, %d heads, ffn %d, text %d x %d, latent %d x %d x %d -> %d tokens, recompute %s\n", c->what,
           c->mc.dim, c->mc.num_heads, c->mc.ffn_dim, c->mc.text_len, c->mc.text_dim, c->F, c->H, c->W, tokens_of(c),
           recompute_name(c->recompute));
    if (!c->stack || layers > 0) {
        int L = layers > 0 ? layers : c->mc.num_layers;
        o.r = spawn(c, L, warmup, steps, breakdown);
        return o;
    }
    /* probe: 1 and 2 layers */
    int pw = warmup < 1 ? warmup : 1, ps = steps < 3 ? steps : 3; /* the probes: fewer steps */
    run_result p1 = spawn(c, 1, pw, ps, false), p2 = spawn(c, 2, pw, ps, false);
    if (!p1.ok || !p2.ok) {
        printf("  the probe runs failed: nothing fits\n");
        o.r = p1.ok ? p2 : p1;
        return o;
    }
    o.per_layer = p2.mem_peak - p1.mem_peak;
    o.base = p1.mem_peak - o.per_layer;
    double usable = p1.mem_free0 - 0.03 * p1.mem_total - (twin ? 0 : GiB);
    int fit = o.per_layer > 0 ? (int)floor((usable - o.base) / o.per_layer) : 0;
    if (fit > max_layers) fit = max_layers;
    if (fit_extra) printf("  --fit-extra %d: trying %d layers first\n", fit_extra, fit += fit_extra);
    printf("  probe: peak %.2f %s with 1 layer, %.2f with 2: %.3f %s per layer, base %.2f; %.2f %s free of %.2f, "
           "%.2f usable (3%% and %s kept back) -> %d layers (at most %d)\n",
           p1.mem_peak / MEMU, MEMN, p2.mem_peak / MEMU, o.per_layer / MEMU, MEMN, o.base / MEMU, p1.mem_free0 / MEMU,
           MEMN, p1.mem_total / MEMU, usable / MEMU, twin ? "nothing" : "1 GiB", fit, max_layers);
    fflush(stdout);
    o.fit = fit;
    if (fit < 1) {
        o.r = p1;
        return o;
    }
    for (int L = fit, tries = 0; L >= 1 && tries < 3; L--, tries++) {
        o.r = L == 1 && !breakdown ? p1 : L == 2 && !breakdown ? p2 : spawn(c, L, warmup, steps, breakdown);
        if (o.r.ok) break;
    }
    if (o.r.ok && o.r.layers > 1) o.marg_sec = (o.r.step_med - p1.step_med) / (o.r.layers - 1);
    return o;
}

static void json_out(FILE *f, const outcome *o, bool last) {
    const run_result *r = &o->r;
    const bcase *c = o->c;
    double fl = c->stack ? r->flops_layers : r->flops_model;
    double per_layer_flops = flops_of(c, 1) - flops_of(c, 0);
    fprintf(f,
            "  {\"case\": \"%s\", \"impl\": \"wan\", \"what\": \"%s\", \"ok\": %s, \"device\": \"%s\", "
            "\"versions\": \"%s\", "
            "\"layers\": %d, \"dim\": %d, \"heads\": %d, \"ffn\": %d, \"text_len\": %d, \"text_dim\": %d, "
            "\"tokens\": %lld, \"recompute\": \"%s\", \"flops_counted\": \"%s\", \"step_s\": %.9g, \"step_min_s\": %.9g, "
            "\"step_max_s\": %.9g, \"steps\": %d, \"tokens_per_s\": %.9g, \"model_tflops\": %.9g, "
            "\"tflops_layers\": %.9g, \"tflops_whole_formula\": %.9g, \"mem_peak_gib\": %.9g, \"mem_total_gib\": %.9g, "
            "\"mem_per_layer_gib\": %.9g, \"mem_base_gib\": %.9g, \"layers_fit\": %d, \"marginal_layer_s\": %.9g, "
            "\"marginal_layer_tflops\": %.9g}%s\n",
            c->key, c->what, r->ok ? "true" : "false", r->device, r->versions, r->layers, c->mc.dim, c->mc.num_heads,
            c->mc.ffn_dim, c->mc.text_len, c->mc.text_dim, r->tokens, recompute_name(c->recompute),
            c->stack ? "3 x L x (self + cross + mlp), layers only" : "whole Wan formula", r->step_med, r->step_min,
            r->step_max, r->nsteps, r->ok ? (double)r->tokens / r->step_med : 0,
            r->ok ? fl / r->step_med / 1e12 : 0, r->ok ? r->flops_layers / r->step_med / 1e12 : 0,
            r->ok ? r->flops_model / r->step_med / 1e12 : 0, r->mem_peak / GiB, r->mem_total / GiB,
            o->per_layer / GiB, o->base / GiB, o->fit, o->marg_sec,
            o->marg_sec > 0 ? per_layer_flops / o->marg_sec / 1e12 : 0, last ? "" : ",");
}

static void usage(FILE *f) {
    fprintf(f, "Usage: gpu_model [--case 14b|1.3b|all] [--layers N] [--max-layers N] [--warmup N] [--steps N]\n"
               "                 [--device N] [--json FILE] [--no-breakdown] [--cpu-twin] [--mem-budget MIB]\n"
               "                 [--threads N] [--recompute keep-attention|full|none]\n"
               "Training steps of a 14B-width block stack (as many layers as fit) and of the 1.3B model on\n"
               "the CUDA backend: step time, tokens/s, model TFLOP/s (Wan formula), memory, per-op times.\n");
}

int main(int argc, char **argv) {
    static const struct option opts[] = {
        {"case", required_argument, 0, 'c'},     {"layers", required_argument, 0, 'L'},
        {"max-layers", required_argument, 0, 'M'}, {"warmup", required_argument, 0, 'w'},
        {"steps", required_argument, 0, 'n'},    {"device", required_argument, 0, 'd'},
        {"json", required_argument, 0, 'j'},     {"no-breakdown", no_argument, 0, 'B'},
        {"cpu-twin", no_argument, 0, 'C'},       {"mem-budget", required_argument, 0, 'm'},
        {"threads", required_argument, 0, 't'},  {"help", no_argument, 0, 'h'},
        {"fit-extra", required_argument, 0, 'X'}, {"recompute", required_argument, 0, 'R'},
        {0, 0, 0, 0}};
    const char *which = "all", *json = NULL, *recompute = NULL;
    int layers = 0, c;
    budget_mib = 48;
    while ((c = getopt_long(argc, argv, "c:L:M:w:n:d:j:Cm:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': which = optarg; break;
        case 'L': layers = atoi(optarg); break;
        case 'M': max_layers = atoi(optarg); break;
        case 'w': warmup = atoi(optarg); break;
        case 'n': steps = atoi(optarg); break;
        case 'd': device = atoi(optarg); break;
        case 'j': json = optarg; break;
        case 'B': breakdown = false; break;
        case 'C': twin = true; break;
        case 'm': budget_mib = atof(optarg); break;
        case 't': threads = atoi(optarg); break;
        case 'X': fit_extra = atoi(optarg); break;
        case 'R': recompute = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    bool all = !strcmp(which, "all");
    if (optind < argc || (!all && strcmp(which, "14b") && strcmp(which, "1.3b")) || steps < 1 || steps > 64 ||
        warmup < 0 || layers < 0 || max_layers < 1 || budget_mib <= 0 ||
        (recompute && strcmp(recompute, "keep-attention") && strcmp(recompute, "full") && strcmp(recompute, "none"))) {
        usage(stderr);
        return 2;
    }
    if (!twin) { /* fail early and clearly without a GPU (the children would each say it) */
        wan_backend *be = NULL;
        pid_t pid;
        fflush(NULL);
        if ((pid = fork()) == 0) {
            int rc = wan_backend_cuda(device, &be);
            if (rc) wan_error_print("gpu_model");
            else wan_backend_destroy(be);
            fflush(NULL);
            _exit(rc);
        }
        int status = 0;
        waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status)) return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }

    /* the cases */
    bcase cases[2];
    wan_model_cfg m14;
    wan_flops_wan21_14b(&m14);
    cases[0] = (bcase){"14b", "14B-width block stack", m14, 24, 60, 104, WAN_RECOMPUTE_KEEP_ATTENTION, true};
    wan_config c13;
    wan_config_defaults(&c13);
    const char *p13 = "configs/wan2.1-1.3b.cfg";
    if (wan_config_load(&c13, p13)) {
        wan_error_print("gpu_model");
        fprintf(stderr, "gpu_model: run from the repository root (%s is read for the 1.3B model)\n", p13);
        return 2;
    }
    cases[1] = (bcase){"1.3b", "Wan 2.1 1.3B model", c13.model, c13.train.latent_shape[0], c13.train.latent_shape[1],
                       c13.train.latent_shape[2], wan_recompute_of(&c13.train), false};
    if (recompute)
        for (int i = 0; i < 2; i++)
            cases[i].recompute = !strcmp(recompute, "full")   ? WAN_RECOMPUTE_FULL
                                 : !strcmp(recompute, "none") ? WAN_RECOMPUTE_NONE
                                                              : WAN_RECOMPUTE_KEEP_ATTENTION;
    if (twin) { /* the same logic at a size a CPU runs in seconds */
        wan_model_cfg *a = &cases[0].mc, *b = &cases[1].mc;
        a->dim = 256, a->num_heads = 2, a->ffn_dim = 512, a->text_len = 16, a->text_dim = 64;
        cases[0].F = 4, cases[0].H = 8, cases[0].W = 8;
        b->dim = 128, b->num_heads = 1, b->ffn_dim = 256, b->num_layers = 3, b->text_len = 16, b->text_dim = 64;
        cases[1].F = 3, cases[1].H = 8, cases[1].W = 8;
        if (max_layers > 8) max_layers = 8;
        MEMU = 1048576.0, MEMN = "MiB";
        printf("gpu_model --cpu-twin: the CPU backend at tiny sizes, %.0f MiB of memory budget in place of the GPU's\n",
               budget_mib);
    }
    outcome out[2];
    int n = 0, failed = 0;
    for (int i = 0; i < 2; i++)
        if (all || !strcmp(which, cases[i].key)) {
            out[n] = run_case(&cases[i], cases[i].stack ? layers : 0);
            if (!out[n].r.ok) failed++;
            n++;
        }

    /* summary */
    const run_result *any = NULL;
    for (int i = 0; i < n; i++)
        if (out[i].r.ok) any = &out[i].r;
    printf("\nWhole-model training steps on %s%s%s (median of %d steps after %d warm-up; forward + backward + "
           "AdamW):\n\n",
           any ? any->device : "?", any && any->versions[0] ? ", " : "", any ? any->versions : "", steps, warmup);
    printf("| what | layers | memory per layer (%s) | peak / total memory (%s) | step (ms) | tokens/s | model "
           "TFLOP/s | FLOPs counted |\n|---|---|---|---|---|---|---|---|\n",
           MEMN, MEMN);
    for (int i = 0; i < n; i++) {
        const outcome *o = &out[i];
        if (o->per_layer > 0 && o->r.ok) {
            double fl = o->c->stack ? o->r.flops_layers : o->r.flops_model;
            printf("| %s | %d (fit: %d) | %.2f (base %.1f) | %.1f / %.1f | %.1f | %.0f | **%.1f** | %s |\n", o->c->what,
                   o->r.layers, o->fit, o->per_layer / MEMU, o->base / MEMU, o->r.mem_peak / MEMU,
                   o->r.mem_total / MEMU,
                   o->r.step_med * 1e3, (double)o->r.tokens / o->r.step_med, fl / o->r.step_med / 1e12,
                   o->c->stack ? "layers only" : "whole model");
        } else summary_row(o);
    }
    for (int i = 0; i < n; i++) {
        const outcome *o = &out[i];
        if (o->marg_sec > 0)
            printf("\n%s: one more layer costs %.1f ms ((t(%d) - t(1)) / %d): %.1f model TFLOP/s per layer (%.3e FLOPs "
                   "per layer per step).\n",
                   o->c->what, o->marg_sec * 1e3, o->r.layers, o->r.layers - 1,
                   (flops_of(o->c, 1) - flops_of(o->c, 0)) / o->marg_sec / 1e12, flops_of(o->c, 1) - flops_of(o->c, 0));
    }
    printf("\nModel FLOPs: %s. 14B-width stack: the formula restricted to its L layers, 3 L (self + cross + mlp); "
           "its step also runs the embeddings, the head and AdamW over all parameters (not counted). 1.3B: the "
           "whole formula. Recompute's extra forward is not counted.\n",
           WAN_FLOPS_FORMULA_NAME);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "gpu_model: cannot write %s\n", json);
            return 1;
        }
        fprintf(f, "[\n");
        for (int i = 0; i < n; i++) json_out(f, &out[i], i == n - 1);
        fprintf(f, "]\n");
        fclose(f);
    }
    return failed ? 1 : 0;
}
