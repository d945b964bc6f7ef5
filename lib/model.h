/* The Wan 2.1 text-to-video DiT, written once over the op interface (ops.h) and the process
 * grid (dist.h): the same code runs on CPU and CUDA, on one rank or with tensor (+ sequence)
 * and context parallelism. One forward and one backward function per layer.
 *
 * Tokens: a micro-batch of B latents [B, C, F, H, W] has S = F/pt * H/ph * W/pw tokens per
 * sample in (f, h, w) order. S is padded to S_pad, a multiple of cp * (sp ? tp : 1); context
 * parallelism gives each cp rank S_cp = S_pad / cp consecutive positions of every sample, and
 * sequence parallelism splits the rank's B * S_cp rows further over tp. Padding positions are
 * masked out of attention and of the loss. */
#ifndef WAN_MODEL_H
#define WAN_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "dist.h"
#include "ops.h"
#include "params.h"

/* Offsets (elements in the flat parameter buffer) of one block's tensors, resolved by name. */
typedef struct {
    int64_t mod, qkv_w, qkv_b, o_w, o_b, nq, nk, n3_w, n3_b;
    int64_t cq_w, cq_b, ckv_w, ckv_b, co_w, co_b, cnq, cnk, f1_w, f1_b, f2_w, f2_b;
} wan_block_offsets;

/* Saved activations of one block (backend memory). With recompute only x_in is kept per
 * block (and att, lse with WAN_RECOMPUTE_KEEP_ATTENTION) and the rest lives in one shared set,
 * recomputed before each block's backward. */
typedef struct {
    float *x_in, *x1, *x2;                /* residual at the three norms' inputs [T, D] */
    float *mod;                           /* modulation + e0 [B, 6D] */
    void *ln1, *ln3, *ln2;                /* norm outputs, gathered over tp with sp [Tf, D] */
    float *mean1, *rstd1, *mean3, *rstd3, *mean2, *rstd2; /* [T] */
    void *qk;                             /* raw q | k [Tf, 2Dl] */
    void *kv;                             /* normed k then v: [2, Tf, Dl] (one ring message) */
    void *qn;                             /* normed q [Tf, Dl] */
    float *rr_q, *rr_k;                   /* [Tf] */
    void *att;                            /* [Tf, Dl] */
    float *lse;                           /* [B, Hl, S_cp] */
    float *sa_y;                          /* self-attention output, reduced, no bias [T, D] */
    void *cq, *cqn;                       /* cross q raw and normed [Tf, Dl] */
    float *rr_cq;                         /* [Tf] */
    void *ckv;                            /* raw text k | v [B*L, 2Dl] */
    void *ckn;                            /* normed text k [B*L, Dl] */
    float *rr_ck;                         /* [B*L] */
    void *catt;                           /* [Tf, Dl] */
    float *clse;                          /* [B, Hl, S_cp] */
    void *h, *g;                          /* FFN pre- and post-GELU [Tf, Fl] */
    float *ff_y;                          /* FFN output, reduced, no bias [T, D] */
} wan_block_acts;

/* What the backward rebuilds instead of keeping. KEEP_ATTENTION recomputes everything but the
 * self-attention core: at long sequences that core is most of a block's forward FLOPs (4 S^2 D
 * against about 24 S D^2) while its output is one [S, D/tp] act tensor per block. */
typedef enum {
    WAN_RECOMPUTE_NONE,
    WAN_RECOMPUTE_FULL,
    WAN_RECOMPUTE_KEEP_ATTENTION,
} wan_recompute;

/* The mode a training configuration asks for (train.recompute, train.recompute_attention). */
static inline wan_recompute wan_recompute_of(const wan_train_cfg *t) {
    if (!t->recompute) return WAN_RECOMPUTE_NONE;
    return t->recompute_attention ? WAN_RECOMPUTE_FULL : WAN_RECOMPUTE_KEEP_ATTENTION;
}

typedef struct {
    int B, C, F, H, W;     /* latent shape of the micro-batch */
    int Fp, Hp, Wp;        /* token grid */
    int S;                 /* real tokens per sample */
    int S_pad, S_cp;       /* padded, and per context-parallel rank */
    int T, Tf;             /* residual rows on this rank, rows after the tp gather (B * S_cp) */
    int tok0;              /* first residual row within the Tf rows */
    int pos0;              /* first position of this cp rank */
} wan_shape;

typedef struct wan_model {
    wan_model_cfg cfg;
    wan_backend *be;
    wan_dist *dist;
    wan_param_set ps;
    void *w;    /* parameters, be->param dtype [ps.total] */
    float *g;   /* gradients, fp32 [ps.total] */
    /* One backend allocation holds the training state: w, g and, when the model is created for
     * training, the optimizer's buffers (taken with wan_model_state_take), so that the state
     * costs one known size and cannot fragment the device memory the activations use. */
    void *state;
    size_t state_bytes, state_used;
    wan_block_offsets *blk;
    int64_t o_patch_w, o_patch_b, o_txt0_w, o_txt0_b, o_txt2_w, o_txt2_b, o_te0_w, o_te0_b, o_te2_w, o_te2_b,
        o_tp_w, o_tp_b, o_head_w, o_head_b, o_head_mod;
    int D, Dl, Fl, Hl, hd, L, Ct, P_in, P_out;
    float attn_scale; /* 1 / sqrt(head_dim) */
    wan_recompute recompute;
    int recompute_layers; /* with recompute: the stage's first this many blocks recompute; -1 = all */
    bool recomputing; /* inside the backward's rebuild of a block (skips a kept attention core) */
    int64_t blocks_recomputed; /* block forwards the backwards have rebuilt, since creation */
    /* pipeline stage: blocks [l0, l1); the first stage embeds, the last has the head and loss */
    int l0, l1;
    bool first, last;
    wan_shape sh;
    void *arena; /* activations of the current shape (model.c owns the layout) */
    size_t arena_bytes;
    void *shared; /* what the activation sets share: scratch, recomputed block activations */
    size_t shared_bytes;
    struct wan_model_acts *a;
    /* Activation sets of micro-batches in flight (pipeline schedule): sh, arena, arena_bytes
     * and a above are those of set `slot`; the others wait here. */
    struct wan_model_slot *slots;
    int nslots, slot;
    /* Pipeline inbox: the next micro-batch's input from the previous stage, received while the
     * activation set it will use may still hold another micro-batch's gradients to send. */
    void *pipe_in;
    size_t pipe_in_bytes;
    wan_shape pipe_in_sh;
    bool pipe_in_full;
    /* Set for the step's last backward on this stage: after block l's backward its gradients
     * are complete and block_grads_done(ctx, l) is called (the optimizer starts reducing them
     * while the blocks below compute). */
    bool grads_final;
    int (*block_grads_done)(void *ctx, int layer);
    void *block_grads_ctx;
    /* Called before weights are read: those of block `layer`, WAN_PARAMS_BEFORE_BLOCKS (the
     * embeddings) or WAN_PARAMS_ALL; the optimizer's weight gather may still be in flight. */
    int (*params_needed)(void *ctx, int layer);
    void *params_ctx;
} wan_model;

/* Whether block l of this stage rebuilds its activations in the backward (instead of keeping
 * them from the forward). */
static inline bool wan_block_recomputes(const wan_model *m, int l) {
    return m->recompute != WAN_RECOMPUTE_NONE && (m->recompute_layers < 0 || l - m->l0 < m->recompute_layers);
}

/* How many of this stage's blocks do. */
static inline int wan_model_blocks_recomputing(const wan_model *m) {
    int n = 0;
    for (int l = m->l0; l < m->l1; l++) n += wan_block_recomputes(m, l);
    return n;
}

#define WAN_PARAMS_BEFORE_BLOCKS (-1)
#define WAN_PARAMS_ALL (-2)

/* Activation sets the one-forward-one-backward schedule holds at once on pipeline stage
 * `stage` of pp with M micro-batches a step (the trainer runs it; the memory plan counts it):
 * the forwards before the stage's first backward, plus one, at most M. */
static inline int wan_1f1b_in_flight(int pp, int stage, int M) { return pp - stage < M ? pp - stage : M; }

/* Inputs of one micro-batch (host memory). With noise and sigma the model sees
 * x_t = (1 - sigma) latent + sigma noise at timestep 1000 sigma and the loss target is
 * noise - latent; without them it sees latent itself at `timestep`. */
typedef struct {
    int B, C, F, H, W;
    const float *latent;    /* [B, C, F, H, W] clean latents x0 (or the model input) */
    const float *noise;     /* [B, C, F, H, W] or NULL */
    const float *sigma;     /* [B] or NULL */
    const float *text;      /* [B, text_len, text_dim], zero-padded */
    const float *loss_coef; /* [B] weight of each sample's squared errors in the loss, or NULL */
    const float *timestep;  /* [B] overrides 1000 sigma, or NULL */
} wan_model_input;

/* What wan_model_create does but the allocation: the parameter set, offsets and state_bytes
 * (be supplies only the dtypes; nothing is allocated; free with wan_model_destroy). */
int wan_model_describe(wan_model *m, const wan_model_cfg *cfg, wan_backend *be, wan_dist *dist, wan_recompute recompute,
                       int recompute_layers, bool with_optimizer);
/* recompute_layers: with recompute, how many of the stage's blocks (its first) recompute; the
 * others keep their activations; -1 = all. with_optimizer: reserve room in the state allocation
 * for wan_optim_create (training). */
int wan_model_create(wan_model *m, const wan_model_cfg *cfg, wan_backend *be, wan_dist *dist, wan_recompute recompute,
                     int recompute_layers, bool with_optimizer);
void wan_model_destroy(wan_model *m);
/* The next `bytes` (zeroed; at a multiple of 256 bytes from the start of the allocation, which
 * has the backend's alignment) of the state allocation; NULL when the room reserved at creation
 * is used up. */
void *wan_model_state_take(wan_model *m, size_t bytes);
/* Allocate activations for a micro-batch shape (no-op if unchanged). */
int wan_model_set_shape(wan_model *m, int B, int C, int F, int H, int W);
/* Make activation set k (0 <= k < n) current, keeping n sets: a pipeline stage holds the
 * activations of every micro-batch between its forward and its backward. */
int wan_model_use_slot(wan_model *m, int k, int n);
/* Bytes of activation memory over all sets (and the pipeline inbox). */
size_t wan_model_activation_bytes(const wan_model *m);

/* Pipeline parallel (pp > 1): what crosses a stage boundary, for the micro-batch of the
 * current activation set (the inbox for the forward's receive). Forward: the residual stream, the time
 * embedding and its projection, and the text context; backward: their gradients. Stages
 * other than the first expect their input received before wan_model_forward; stages other
 * than the last, the gradient received before wan_model_backward. Blocking: the schedule
 * (trainer.c) orders them so that neighbours agree. No-ops on a stage without that peer. */
int wan_pipe_send_forward(wan_model *m);
/* Receives into the model's inbox (the micro-batch's latent shape names its size); the next
 * wan_model_forward on this stage takes it. */
int wan_pipe_recv_forward(wan_model *m, int B, int C, int F, int H, int W);
int wan_pipe_send_backward(wan_model *m);
int wan_pipe_recv_backward(wan_model *m);
/* Forward of one micro-batch through the whole pipeline, one micro-batch at a time
 * (validation): receive, forward, send. sqsum is set on the last stage only (zeros elsewhere). */
int wan_model_forward_pipelined(wan_model *m, const wan_model_input *in, double *sqsum);

/* Forward of one micro-batch. With loss inputs, computes dpred and this rank's per-sample sums
 * of squared errors (sqsum[B], host, over this rank's valid tokens). pred_out (host, optional):
 * this rank's prediction rows [T, P_out] in head channel order. */
int wan_model_forward(wan_model *m, const wan_model_input *in, double *sqsum, float *pred_out);
/* Backward of the micro-batch last run forward: accumulates into m->g. */
int wan_model_backward(wan_model *m);
/* After the last micro-batch's backward: reduce gradients that tensor parallelism leaves
 * partial (replicated parameters with sp), of block `layer`'s parameters, or of those outside
 * the blocks (layer -1). */
int wan_model_reduce_tp_grads(wan_model *m, int layer);

/* Wait until every weight is in place (what params_needed would wait for with WAN_PARAMS_ALL):
 * before reading or writing m->w outside the forward. */
int wan_model_params_wait(wan_model *m);

/* Copy parameters between the backend buffer and host fp32 (this rank's flat buffer), after
 * wan_model_params_wait (a failure there is reported by the next collective). */
void wan_model_get_params(wan_model *m, float *host);
void wan_model_set_params(wan_model *m, const float *host);

/* The 3D RoPE table for a token grid and head size (host, [S_rows, hd/2] each; positions
 * beyond the grid rotate by 0). */
void wan_rope_table(int Fp, int Hp, int Wp, int hd, int S_rows, float *cos_out, float *sin_out);

#endif
