/* Pipeline-parallel stage boundaries: what one stage hands the next (forward) and the next
 * hands back (backward), between the same (tp, cp, dp) coordinates of neighbouring stages. The
 * time embedding and the text context are computed once, on the first stage, and travel with
 * the residual stream: every block needs them, and their gradients come back to the stage
 * that owns their parameters. */
#include "error.h"
#include "model_internal.h"

typedef struct {
    void *buf;
    size_t n;
    wan_dtype dt;
} piece;

/* Elements and types of x | e | e0 | ctx (their gradients: all fp32) for a shape. */
static void sizes(const wan_model *m, const wan_shape *sh, bool grads, piece out[4]) {
    size_t B = (size_t)sh->B, T = (size_t)sh->T, D = (size_t)m->D, BL = B * (size_t)m->L;
    out[0] = (piece){NULL, T * D, WAN_F32};
    out[1] = (piece){NULL, B * D, WAN_F32};
    out[2] = (piece){NULL, B * 6 * D, WAN_F32};
    out[3] = (piece){NULL, BL * D, grads ? WAN_F32 : m->be->act};
}

/* The forward pieces of a shape laid out from `base` (the inbox; NULL: only measure). */
static size_t inbox_layout(const wan_model *m, const wan_shape *sh, char *base, piece out[4]) {
    sizes(m, sh, false, out);
    size_t off = 0;
    for (int i = 0; i < 4; i++) {
        out[i].buf = base ? base + off : NULL;
        off += wan_align256(out[i].n * wan_dtype_size(out[i].dt));
    }
    return off;
}

/* The pieces of the current activation set. */
static int current(wan_model *m, bool grads, piece out[4]) {
    struct wan_model_acts *a = m->a;
    if (!a) return wan_fail(WAN_ERR_RUNTIME, "pipeline transfer before the micro-batch's shape was set");
    sizes(m, &m->sh, grads, out);
    void *fwd[4] = {a->x, a->e, a->e0, a->ctx}, *bwd[4] = {a->dx, a->de, a->de0, a->dctx};
    for (int i = 0; i < 4; i++) out[i].buf = grads ? bwd[i] : fwd[i];
    return 0;
}

static int move(wan_model *m, const piece p[4], bool send, int peer) {
    wan_group *g = &m->dist->pp_g;
    for (int i = 0; i < 4; i++)
        WAN_TRY(send ? wan_send(g, p[i].buf, p[i].n, p[i].dt, peer) : wan_recv(g, p[i].buf, p[i].n, p[i].dt, peer));
    return 0;
}

size_t wan_pipe_inbox_bytes(const wan_model *m, const wan_shape *sh) {
    piece p[4];
    return m->first ? 0 : inbox_layout(m, sh, NULL, p);
}

int wan_pipe_send_forward(wan_model *m) {
    if (m->last) return 0;
    piece p[4];
    WAN_TRY(current(m, false, p));
    return move(m, p, true, m->dist->pp_g.rank + 1);
}

int wan_pipe_send_backward(wan_model *m) {
    if (m->first) return 0;
    piece p[4];
    WAN_TRY(current(m, true, p));
    return move(m, p, true, m->dist->pp_g.rank - 1);
}

int wan_pipe_recv_backward(wan_model *m) {
    if (m->last) return 0;
    piece p[4];
    WAN_TRY(current(m, true, p));
    return move(m, p, false, m->dist->pp_g.rank + 1);
}

int wan_pipe_recv_forward(wan_model *m, int B, int C, int F, int H, int W) {
    if (m->first) return 0;
    if (m->pipe_in_full) return wan_fail(WAN_ERR_RUNTIME, "pipeline: a second forward input before the first was used");
    wan_shape sh;
    WAN_TRY(wan_shape_compute(m, B, C, F, H, W, &sh));
    piece p[4];
    size_t bytes = inbox_layout(m, &sh, NULL, p);
    if (bytes > m->pipe_in_bytes) {
        if (m->pipe_in) m->be->free(m->be, m->pipe_in);
        m->pipe_in = m->be->alloc(m->be, bytes);
        m->pipe_in_bytes = m->pipe_in ? bytes : 0;
        if (!m->pipe_in) return wan_fail(WAN_ERR_RUNTIME, "out of %s memory for the pipeline inbox", m->be->name);
    }
    inbox_layout(m, &sh, m->pipe_in, p);
    WAN_TRY(move(m, p, false, m->dist->pp_g.rank - 1));
    m->pipe_in_sh = sh;
    m->pipe_in_full = true;
    return 0;
}

int wan_pipe_take_forward(wan_model *m) {
    const wan_shape *s = &m->sh, *r = &m->pipe_in_sh;
    if (!m->pipe_in_full || r->B != s->B || r->C != s->C || r->F != s->F || r->H != s->H || r->W != s->W)
        return wan_fail(WAN_ERR_RUNTIME, "pipeline stage %d: no input received from stage %d for this %dx%dx%dx%dx%d "
                        "micro-batch", m->dist->pp_rank, m->dist->pp_rank - 1, s->B, s->C, s->F, s->H, s->W);
    piece in[4], to[4];
    inbox_layout(m, r, m->pipe_in, in);
    WAN_TRY(current(m, false, to));
    for (int i = 0; i < 4; i++) m->be->copy(m->be, to[i].buf, in[i].buf, in[i].n * wan_dtype_size(in[i].dt));
    m->pipe_in_full = false;
    return 0;
}

int wan_model_forward_pipelined(wan_model *m, const wan_model_input *in, double *sqsum) {
    WAN_TRY(wan_pipe_recv_forward(m, in->B, in->C, in->F, in->H, in->W));
    WAN_TRY(wan_model_forward(m, in, sqsum, NULL));
    return wan_pipe_send_forward(m);
}
