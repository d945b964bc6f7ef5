/* Synthetic checkpoints for the resharding tests and benchmark: every rank of a layout fills
 * its flat buffers with values that depend only on (seed, tensor, kind, global index) and
 * writes them through wan_layout_write_rank, the trainer's own path; rank 0 commits. So the
 * tests need no training loop, and every layout holds the same global tensors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ckpt_layout.h"
#include "error.h"
#include "fsutil.h"
#include "reshard.h"

float wan_rs_synthetic_value(uint64_t seed, const char *name, int kind, int64_t index) {
    uint64_t key = seed ^ XXH3_64bits(name, strlen(name)) ^ ((uint64_t)kind * 0x9e3779b97f4a7c15ull);
    uint64_t h = XXH3_64bits_withSeed(&index, sizeof index, key);
    /* 24 random bits, centred on a half step: never exactly 0 */
    float u = ((float)(h >> 40) + 0.5f) / 16777216.0f; /* (0, 1) */
    return kind == 3 ? u : 2.0f * u - 1.0f;
}

/* Fill the local piece of p in buf (flat layout of the rank) for a kind. */
static void fill_piece(const wan_param *p, const wan_layout_piece *q, uint64_t seed, float *buf) {
    int nd = p->ndim;
    int64_t n = q->numel;
#pragma omp parallel for schedule(static) if (n > (1 << 16))
    for (int64_t e = 0; e < n; e++) {
        /* element e of the row-major box q->box -> global row-major index */
        int64_t rem = e, g = 0, idx[WAN_MAX_DIMS];
        for (int d = nd - 1; d >= 0; d--) {
            idx[d] = rem % q->box.shape[d] + q->box.start[d];
            rem /= q->box.shape[d];
        }
        for (int d = 0; d < nd; d++) g = g * p->shape[d] + idx[d];
        buf[e] = wan_rs_synthetic_value(seed, p->name, q->kind, g);
    }
}

int wan_rs_make_synthetic(const char *root, int step, const wan_config *cfg, const wan_ckpt_layout *L,
                          unsigned kinds, wan_dtype wdt, uint64_t seed) {
    WAN_TRY(wan_layout_check(&cfg->model, L));
    char tmp[WAN_PATH_MAX + 32], fin[WAN_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s/step_%08d.tmp", root, step);
    snprintf(fin, sizeof fin, "%s/step_%08d", root, step);
    WAN_TRY(wan_mkdir_p(root));
    WAN_TRY(wan_rm_rf(tmp));
    WAN_TRY(wan_mkdir_p(tmp));
    int rc = 0;
    for (int r = 0; r < L->world && !rc; r++) {
        wan_grid_pos g;
        wan_layout_position(L, r, &g);
        wan_param_set ps;
        WAN_TRY(wan_layout_params(&cfg->model, &g, &ps));
        int64_t lo, hi;
        wan_layout_zero_range(&ps, &g, &lo, &hi);
        size_t ns = (size_t)(hi - lo);
        /* only the pieces this rank writes are filled (untouched pages stay unallocated) */
        float *w32 = calloc((size_t)ps.total, sizeof(float));
        void *w = wdt == WAN_F32 ? (void *)w32 : calloc((size_t)ps.total, wan_dtype_size(wdt));
        float *opt = kinds & ~WAN_KINDS_MODEL ? calloc(3 * (ns ? ns : 1), sizeof(float)) : NULL;
        wan_layout_piece *pc = NULL;
        int np = 0;
        if (!w32 || !w || ((kinds & ~WAN_KINDS_MODEL) && !opt)) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        if (!rc) rc = wan_layout_pieces(&ps, &g, kinds, false, &pc, &np);
        for (int i = 0; i < np && !rc; i++) {
            const wan_layout_piece *q = &pc[i];
            const wan_param *p = &ps.p[q->param];
            if (q->kind == 0) {
                fill_piece(p, q, seed, w32 + q->flat);
                if (wdt != WAN_F32)
                    wan_convert((char *)w + (size_t)q->flat * wan_dtype_size(wdt), wdt, w32 + q->flat, WAN_F32,
                                (size_t)q->numel);
            } else fill_piece(p, q, seed, opt + (size_t)(q->kind - 1) * ns + (size_t)(q->flat - lo));
        }
        wan_ckpt_writer *wr = NULL;
        if (!rc) rc = wan_ckpt_writer_begin(&wr, tmp, r);
        if (!rc) {
            const float *const slices[3] = {opt, opt ? opt + ns : NULL, opt ? opt + 2 * ns : NULL};
            rc = wan_layout_write_rank(wr, &ps, &g, kinds, wdt, w, slices);
            if (rc) wan_ckpt_writer_abort(wr);
            else rc = wan_ckpt_writer_end(wr);
        }
        free(pc);
        if (w != (void *)w32) free(w);
        free(w32);
        free(opt);
        wan_params_free(&ps);
    }
    if (!rc) {
        wan_config c = *cfg;
        c.parallel.tp = L->tp;
        c.parallel.cp = L->cp;
        c.parallel.pp = L->pp;
        c.parallel.sp = L->sp;
        char *text = wan_config_to_string(&c);
        wan_ckpt_meta meta = {step, (kinds & ~WAN_KINDS_MODEL) ? step : 0, text, *L,
                              {(uint64_t)cfg->train.seed, 0, (uint64_t)step}, L->world};
        rc = wan_ckpt_commit(tmp, fin, &meta, true);
        free(text);
    }
    return rc;
}
