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

/* x | e | e0 | ctx of a shape, in the layout of `base` (the inbox), or of the current set. */
static size_t inbox_layout(const wan_model *m, const wan_shape *sh, char *base, piece out[4]) {
    size_t B = (size_t)sh->B, T = (size_t)sh->T, D = (size_t)m->D, BL = B * (size_t)m->L, off = 0;
    size_t n[4] = {T * D, B * D, B * 6 * D, BL * D};
    wan_dtype dt[4] = {WAN_F32, WAN_F32, WAN_F32, m->be->act};
    for (int i = 0; i < 4; i++) {
        out[i] = (piece){base ? base + off : NULL, n[i], dt[i]};
        off += (n[i] * wan_dtype_size(dt[i]) + 255) & ~(size_t)255;
    }
    return off;
}

static int current(wan_model *m, bool grads, piece out[4]) {
    struct wan_model_acts *a = m->a;
    if (!a) return wan_fail(WAN_ERR_RUNTIME, "pipeline transfer before the micro-batch's shape was set");
    size_t B = (size_t)m->sh.B, T = (size_t)m->sh.T, D = (size_t)m->D, BL = B * (size_t)m->L;
    out[0] = (piece){grads ? (void *)a->dx : (void *)a->x, T * D, WAN_F32};
    out[1] = (piece){grads ? (void *)a->de : (void *)a->e, B * D, WAN_F32};
    out[2] = (piece){grads ? (void *)a->de0 : (void *)a->e0, B * 6 * D, WAN_F32};
    out[3] = grads ? (piece){a->dctx, BL * D, WAN_F32} : (piece){a->ctx, BL * D, m->be->act};
    return 0;
}

static int move(wan_model *m, const piece p[4], bool send, int peer) {
    wan_group *g = &m->dist->pp_g;
    for (int i = 0; i < 4; i++)
        WAN_TRY(send ? wan_send(g, p[i].buf, p[i].n, p[i].dt, peer) : wan_recv(g, p[i].buf, p[i].n, p[i].dt, peer));
    return 0;
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
