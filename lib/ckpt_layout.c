#include "ckpt_layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

int wan_layout_parse(const char *text, wan_ckpt_layout *L) {
    memset(L, 0, sizeof *L);
    L->tp = L->cp = L->dp = L->pp = 1;
    char buf[256];
    if (snprintf(buf, sizeof buf, "%s", text) >= (int)sizeof buf)
        return wan_fail(WAN_ERR_USAGE, "layout '%.40s...': too long", text);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
        char *eq = strchr(tok, '=');
        char *end = NULL;
        long v = eq ? strtol(eq + 1, &end, 10) : -1;
        if (!eq || eq == tok || !end || *end || end == eq + 1 || v < 0 || v > 1 << 20)
            return wan_fail(WAN_ERR_USAGE, "layout '%s': '%s': expected key=number (keys tp, cp, dp, pp, sp)", text, tok);
        *eq = 0;
        if (!strcmp(tok, "tp")) L->tp = (int)v;
        else if (!strcmp(tok, "cp")) L->cp = (int)v;
        else if (!strcmp(tok, "dp")) L->dp = (int)v;
        else if (!strcmp(tok, "pp")) L->pp = (int)v;
        else if (!strcmp(tok, "sp")) L->sp = v != 0;
        else if (!strcmp(tok, "fsdp"))
            return wan_fail(WAN_ERR_USAGE, "layout '%s': fsdp: the trainer shards optimizer state with ZeRO-1 over "
                                           "dp x cp; use dp= (there is no separate fsdp layout)", text);
        else return wan_fail(WAN_ERR_USAGE, "layout '%s': unknown key '%s' (expected tp, cp, dp, pp, sp)", text, tok);
    }
    if (L->tp < 1 || L->cp < 1 || L->dp < 1 || L->pp < 1)
        return wan_fail(WAN_ERR_USAGE, "layout '%s': every size must be at least 1", text);
    L->world = L->tp * L->cp * L->dp * L->pp;
    L->sp = L->sp && L->tp > 1;
    return 0;
}

void wan_layout_format(const wan_ckpt_layout *L, char *buf, size_t n) {
    snprintf(buf, n, "tp%d cp%d dp%d pp%d%s", L->tp, L->cp, L->dp, L->pp, L->sp ? " sp" : "");
}

int wan_layout_check(const wan_model_cfg *m, const wan_ckpt_layout *L) {
    char what[64];
    wan_layout_format(L, what, sizeof what);
    if (L->tp < 1 || L->cp < 1 || L->dp < 1 || L->pp < 1 || L->world != L->tp * L->cp * L->dp * L->pp)
        return wan_fail(WAN_ERR_USAGE, "layout %s (world %d): sizes must be >= 1 and multiply to the world", what,
                        L->world);
    if (m->num_heads % L->tp)
        return wan_fail(WAN_ERR_USAGE, "layout %s: model.num_heads = %d is not divisible by tp = %d", what,
                        m->num_heads, L->tp);
    if (m->ffn_dim % L->tp)
        return wan_fail(WAN_ERR_USAGE, "layout %s: model.ffn_dim = %d is not divisible by tp = %d", what, m->ffn_dim,
                        L->tp);
    if (m->num_layers % L->pp)
        return wan_fail(WAN_ERR_USAGE, "layout %s: model.num_layers = %d is not divisible by pp = %d", what,
                        m->num_layers, L->pp);
    return 0;
}

void wan_layout_position(const wan_ckpt_layout *L, int rank, wan_grid_pos *g) {
    memset(g, 0, sizeof *g);
    g->tp = L->tp, g->cp = L->cp, g->dp = L->dp, g->pp = L->pp;
    int r = rank;
    g->tp_rank = r % L->tp;
    r /= L->tp;
    g->cp_rank = r % L->cp;
    r /= L->cp;
    g->dp_rank = r % L->dp;
    g->pp_rank = r / L->dp;
    g->zero_size = L->dp * L->cp;
    g->zero_rank = g->cp_rank + L->cp * g->dp_rank;
}

int wan_layout_params(const wan_model_cfg *m, const wan_grid_pos *g, wan_param_set *ps) {
    return wan_params_build(m, g->tp, g->tp_rank, g->pp, g->pp_rank, g->zero_size, ps);
}

void wan_layout_zero_range(const wan_param_set *ps, const wan_grid_pos *g, int64_t *lo, int64_t *hi) {
    wan_zero_range(ps->total, g->zero_size, g->zero_rank, lo, hi);
}

typedef struct {
    wan_layout_piece *p;
    int n, cap;
} piece_list;

static int push(piece_list *l, int param, int kind, const wan_box *box, int64_t flat, int64_t numel) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        wan_layout_piece *p = realloc(l->p, (size_t)cap * sizeof *p);
        if (!p) return wan_fail(WAN_ERR_RUNTIME, "out of memory listing checkpoint pieces");
        l->p = p;
        l->cap = cap;
    }
    l->p[l->n++] = (wan_layout_piece){param, kind, *box, flat, numel};
    return 0;
}

int wan_layout_pieces(const wan_param_set *ps, const wan_grid_pos *g, unsigned kinds, bool held,
                      wan_layout_piece **out, int *n) {
    piece_list l = {0};
    int rc = 0;
    bool first_replica = g->dp_rank == 0 && g->cp_rank == 0;
    if (kinds & WAN_KINDS_MODEL)
        for (int i = 0; i < ps->n && !rc; i++) {
            const wan_param *p = &ps->p[i];
            if (!p->present) continue;
            if (!held && !(first_replica && (p->shard != WAN_SHARD_NONE || g->tp_rank == 0))) continue;
            wan_box b;
            memset(&b, 0, sizeof b);
            memcpy(b.start, p->local_start, sizeof b.start);
            memcpy(b.shape, p->local_shape, sizeof b.shape);
            rc = push(&l, i, 0, &b, p->offset, p->numel);
        }
    int64_t lo, hi;
    wan_layout_zero_range(ps, g, &lo, &hi);
    if (kinds & ~WAN_KINDS_MODEL)
        for (int i = 0; i < ps->n && !rc; i++) {
            const wan_param *p = &ps->p[i];
            if (!p->present) continue;
            int64_t a = p->offset > lo ? p->offset : lo, b = p->offset + p->numel < hi ? p->offset + p->numel : hi;
            if (a >= b) continue;
            if (!held && p->shard == WAN_SHARD_NONE && g->tp_rank != 0) continue;
            /* the slice [a, b) of this tensor's local piece, as boxes in global coordinates */
            wan_box boxes[2 * WAN_MAX_DIMS];
            int nb = wan_flat_range_boxes(p->ndim, p->local_shape, a - p->offset, b - p->offset, boxes);
            for (int k = 0; k < nb; k++)
                for (int d = 0; d < p->ndim; d++) boxes[k].start[d] += p->local_start[d];
            for (int kind = 1; kind < WAN_CKPT_KINDS && !rc; kind++) {
                if (!(kinds & WAN_KIND_BIT(kind))) continue;
                int64_t flat = a;
                for (int k = 0; k < nb && !rc; k++) {
                    int64_t numel = wan_numel(p->ndim, boxes[k].shape);
                    rc = push(&l, i, kind, &boxes[k], flat, numel);
                    flat += numel;
                }
            }
        }
    if (rc) {
        free(l.p);
        return rc;
    }
    *out = l.p;
    *n = l.n;
    return 0;
}

int wan_layout_write_rank(wan_ckpt_writer *w, const wan_param_set *ps, const wan_grid_pos *g, unsigned kinds,
                          wan_dtype wdt, const void *weights, const float *const opt[3]) {
    wan_layout_piece *pc;
    int n;
    WAN_TRY(wan_layout_pieces(ps, g, kinds, false, &pc, &n));
    int64_t lo, hi;
    wan_layout_zero_range(ps, g, &lo, &hi);
    size_t wsz = wan_dtype_size(wdt);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        const wan_layout_piece *q = &pc[i];
        const wan_param *p = &ps->p[q->param];
        const void *src = q->kind == 0 ? (const void *)((const char *)weights + (size_t)q->flat * wsz)
                                       : (const void *)(opt[q->kind - 1] + (q->flat - lo));
        rc = wan_ckpt_writer_add(w, p->name, q->kind, q->kind == 0 ? wdt : WAN_F32, p->ndim, p->shape, &q->box, src);
    }
    free(pc);
    return rc;
}
