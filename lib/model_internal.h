/* Private to the model's files: the activation buffers and pointer helpers. */
#ifndef WAN_MODEL_INTERNAL_H
#define WAN_MODEL_INTERNAL_H

#include "model.h"

/* Buffers carved from one allocation start 256 bytes apart (GPU allocations are 256-byte
 * aligned): what cuBLASLt, cuDNN and vector loads want. The state, activation and pipeline
 * inbox layouts all round with this. */
static inline size_t wan_align256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

struct wan_model_acts {
    /* inputs */
    float *xt_lat, *tgt_lat; /* [B, C, F, H, W]: x_t and the velocity target noise - x0 */
    void *patches;           /* [T, P_in] act, Conv3d order */
    float *target;           /* [T, P_out] head order */
    float *x, *dx;           /* residual stream and its gradient [T, D] */
    /* time embedding (fp32) */
    float *t, *tsin, *te1, *te1s, *e, *es, *e0; /* [B], [B, freq], [B, D] x 4, [B, 6D] */
    float *de0, *de, *des, *dtmp, *dte1s, *dte1;
    float *hm, *dhm;         /* head modulation [B, 2, D] */
    /* text embedding */
    float *ctx_f32;          /* [B*L, Ct] upload staging */
    void *ctx_in, *t1, *t1g, *ctx; /* [B*L, Ct] act, [B*L, D] act x 3 */
    float *dctx;             /* [B*L, D] fp32, accumulated over blocks */
    void *dctx_act, *dt1g, *dt1;
    /* head and loss */
    float *lnh, *meanh, *rstdh, *pred, *dpred, *dlnh; /* [T, D], [T], [T], [T, P], [T, P], [T, D] */
    float *coef, *sqsum;     /* [B] */
    float *sqsum_host;
    /* 3D RoPE */
    float *rope_cos, *rope_sin;
    wan_rope rope;
    /* per-block saved activations */
    wan_block_acts *blocks;
    /* scratch shared by all blocks */
    float *y_part;           /* [Tf, D] row-parallel partial output */
    void *dy;                /* [Tf, D] act, gathered gradient of a row-parallel output */
    float *dln;              /* [Tf, D] fp32 gradient of a norm output (reduced over tp) */
    void *dh;                /* [Tf, Fl] */
    void *datt, *dq, *dkv, *dqk_raw; /* [Tf, Dl], [Tf, Dl], [2, Tf, Dl], [Tf, 2Dl] */
    void *dcatt, *dcqn, *dcq;        /* [Tf, Dl] */
    void *dckn, *dckv;       /* [B*L, Dl], [B*L, 2Dl] */
    float *ss, *dot;         /* [2 * max(Tf, B*L)] */
    float *dmod;             /* [B, 6D] */
    /* context-parallel ring */
    void *ring_kv[2];        /* [2, Tf, Dl] */
    void *ring_dkv[2];
    void *o_blk;             /* [Tf, Dl] */
    float *lse_blk, *acc, *lse_acc;
};

#define ACT_AT(m, p, i) ((void *)((char *)(p) + (size_t)(i) * wan_dtype_size((m)->be->act)))
#define PARAM(m, off) ((void *)((char *)(m)->w + (size_t)(off) * wan_dtype_size((m)->be->param)))
#define GRAD(m, off) ((m)->g + (off))

/* Rows of this rank's residual stream, and all rows after the tp gather. */
static inline wan_tokens wan_tk_local(const wan_model *m) {
    return (wan_tokens){m->sh.T, m->sh.tok0, m->sh.S_cp, m->sh.pos0};
}
static inline wan_tokens wan_tk_full(const wan_model *m) {
    return (wan_tokens){m->sh.Tf, 0, m->sh.S_cp, m->sh.pos0};
}

/* The token layout of a micro-batch shape on this rank (checks the shape against the model). */
int wan_shape_compute(const wan_model *m, int B, int C, int F, int H, int W, wan_shape *s);
/* Bytes of one activation set and of the arena the sets share, for the shape in m->sh, with
 * the layout the allocation uses (nothing allocated). */
void wan_model_measure_acts(wan_model *m, size_t *arena, size_t *shared);
/* Bytes of the pipeline inbox for a shape (0 on the first stage, which has none). */
size_t wan_pipe_inbox_bytes(const wan_model *m, const wan_shape *sh);
/* Pipeline: move what wan_pipe_recv_forward received into the current activation set. */
int wan_pipe_take_forward(wan_model *m);

int wan_block_forward(wan_model *m, int l, wan_block_acts *a);
int wan_block_backward(wan_model *m, int l, wan_block_acts *a);

#endif
