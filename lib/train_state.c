#include "train_state.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_layout.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"

/* Which pieces this rank writes and loads comes from ckpt_layout.c, the function wan-reshard
 * uses too, so a resharded checkpoint is what a run at that layout writes. */
static int grid_position(const wan_model *m, const wan_optim *o, wan_grid_pos *g) {
    const wan_dist *d = m->dist;
    wan_ckpt_layout L = {d->tp, d->cp, d->dp, d->pp, d->world, d->sp};
    wan_layout_position(&L, d->rank, g);
    int64_t lo, hi;
    wan_layout_zero_range(&m->ps, g, &lo, &hi);
    if (g->tp_rank != d->tp_rank || g->cp_rank != d->cp_rank || g->dp_rank != d->dp_rank || g->pp_rank != d->pp_rank ||
        g->zero_size != d->dpcp_g.size || g->zero_rank != d->dpcp_g.rank || (o && (lo != o->lo || hi != o->hi)))
        return wan_fail(WAN_ERR_RUNTIME, "rank %d: the process grid and the checkpoint layout disagree (a bug)", d->rank);
    return 0;
}

int wan_ckpt_retain(const char *root, int keep_last, int keep_every) {
    DIR *d = opendir(root);
    if (!d) return wan_fail_errno(WAN_ERR_RUNTIME, "checkpoint directory %s", root);
    long steps[4096];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 4096) {
        long s;
        char rest[8];
        if (sscanf(e->d_name, "step_%ld%7s", &s, rest) == 1) steps[n++] = s;
    }
    closedir(d);
    /* newest first */
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (steps[j] > steps[i]) {
                long t = steps[i];
                steps[i] = steps[j];
                steps[j] = t;
            }
    for (int i = keep_last; i < n; i++) {
        if (keep_every > 0 && steps[i] % keep_every == 0) continue;
        char path[WAN_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/step_%08ld", root, steps[i]);
        WAN_TRY(wan_rm_rf(path));
    }
    return 0;
}

int wan_state_save(wan_model *m, wan_optim *o, const wan_config *cfg, int step, wan_loader_state data,
                   const char *ckpt_root) {
    wan_dist *d = m->dist;
    wan_backend *be = m->be;
    wan_group *world = &d->comm->world;
    char tmp[WAN_PATH_MAX + 32], fin[WAN_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s/step_%08d.tmp", ckpt_root, step);
    snprintf(fin, sizeof fin, "%s/step_%08d", ckpt_root, step);
    int rc = 0;
    if (d->rank == 0) {
        rc = wan_mkdir_p(ckpt_root);
        if (!rc) rc = wan_rm_rf(tmp);
        if (!rc) rc = wan_mkdir_p(tmp);
    }
    /* everyone learns whether rank 0 could prepare the directory */
    float flag = (float)rc;
    float *fb = be->alloc(be, sizeof(float));
    be->upload(be, fb, &flag, sizeof flag);
    int crc = wan_allreduce(world, fb, 1, WAN_F32, WAN_RED_MAX);
    be->download(be, &flag, fb, sizeof flag);
    if (crc) {
        be->free(be, fb);
        return crc;
    }
    if (flag != 0) {
        be->free(be, fb);
        return rc ? rc : wan_fail(WAN_ERR_RUNTIME, "rank 0 could not prepare %s", tmp);
    }

    /* this rank's pieces */
    size_t psz = wan_dtype_size(be->param), n = (size_t)m->ps.total, ns = (size_t)(o->hi - o->lo);
    char *w = malloc(n * psz);
    float *opt = malloc(3 * ns * sizeof(float));
    wan_ckpt_writer *wr = NULL;
    if (!w || !opt) rc = wan_fail(WAN_ERR_RUNTIME, "out of host memory saving a checkpoint");
    wan_grid_pos g;
    if (!rc) rc = grid_position(m, o, &g);
    if (!rc) rc = wan_model_params_wait(m); /* the last step's weight gather */
    if (!rc) {
        be->download(be, w, m->w, n * psz);
        be->download(be, opt, o->master, ns * sizeof(float));
        be->download(be, opt + ns, o->mom1, ns * sizeof(float));
        be->download(be, opt + 2 * ns, o->mom2, ns * sizeof(float));
        rc = wan_ckpt_writer_begin(&wr, tmp, d->rank);
    }
    if (!rc) {
        const float *const slices[3] = {opt, opt + ns, opt + 2 * ns};
        rc = wan_layout_write_rank(wr, &m->ps, &g, WAN_KINDS_ALL, be->param, w, slices);
    }
    if (wr) {
        if (rc) wan_ckpt_writer_abort(wr);
        else rc = wan_ckpt_writer_end(wr);
    }
    free(w);
    free(opt);
    /* all pieces durable before anyone commits; a failure anywhere aborts the save */
    flag = (float)(rc != 0);
    be->upload(be, fb, &flag, sizeof flag);
    crc = wan_allreduce(world, fb, 1, WAN_F32, WAN_RED_MAX);
    be->download(be, &flag, fb, sizeof flag);
    if (!rc && crc) rc = crc;
    if (!rc && flag != 0) rc = wan_fail(WAN_ERR_RUNTIME, "another rank failed to write its checkpoint pieces");
    if (!rc && d->rank == 0) {
        char *text = wan_config_to_string(cfg);
        wan_ckpt_meta meta = {step, o->step, text, {d->tp, d->cp, d->dp, d->pp, d->world, d->sp}, data, d->world};
        rc = wan_ckpt_commit(tmp, fin, &meta, true);
        free(text);
        if (!rc) rc = wan_ckpt_retain(ckpt_root, cfg->train.keep_last, cfg->train.keep_every);
    }
    /* nobody goes on before the commit is done (or failed) */
    flag = (float)(rc != 0);
    be->upload(be, fb, &flag, sizeof flag);
    crc = wan_allreduce(world, fb, 1, WAN_F32, WAN_RED_MAX);
    be->download(be, &flag, fb, sizeof flag);
    be->free(be, fb);
    if (!rc && crc) rc = crc;
    if (!rc && flag != 0) rc = wan_fail(WAN_ERR_RUNTIME, "rank 0 failed to commit the checkpoint %s", fin);
    return rc;
}

int wan_state_load(wan_model *m, wan_optim *o, const char *path, int *step, wan_loader_state *data) {
    wan_ckpt c;
    WAN_TRY(wan_ckpt_open(&c, path));
    int rc = 0;
    char diff[1024];
    if (wan_model_cfg_diff(&c.cfg.model, &m->cfg, diff, sizeof diff))
        rc = wan_fail(WAN_ERR_USAGE, "checkpoint %s is of a different model: %s (checkpoint vs this run)", c.dir, diff);
    wan_backend *be = m->be;
    size_t psz = wan_dtype_size(be->param), n = (size_t)m->ps.total;
    wan_grid_pos g;
    if (!rc) rc = grid_position(m, o, &g);
    /* every piece this rank holds (not only those it writes) */
    wan_layout_piece *pc = NULL;
    int npc = 0;
    if (!rc) rc = wan_layout_pieces(&m->ps, &g, o ? WAN_KINDS_ALL : WAN_KINDS_MODEL, true, &pc, &npc);
    char *w = rc ? NULL : calloc(n, psz);
    for (int i = 0; i < npc && !rc; i++) {
        if (pc[i].kind != 0) continue;
        const wan_param *p = &m->ps.p[pc[i].param];
        const wan_ckpt_tensor *t = wan_ckpt_find(&c, p->name, 0);
        if (!t) {
            rc = wan_fail(WAN_ERR_RUNTIME, "checkpoint %s has no tensor %s", c.dir, p->name);
            break;
        }
        if (t->ndim != p->ndim || memcmp(t->shape, p->shape, (size_t)p->ndim * sizeof *p->shape)) {
            rc = wan_fail(WAN_ERR_RUNTIME, "checkpoint %s: tensor %s has a different shape", c.dir, p->name);
            break;
        }
        rc = wan_ckpt_read_box(&c, t, &pc[i].box, w + (size_t)pc[i].flat * psz, be->param);
    }
    if (!rc) rc = wan_model_params_wait(m);
    if (!rc) be->upload(be, m->w, w, n * psz);
    free(w);
    bool has_opt = wan_ckpt_find(&c, m->ps.p[0].name, 1) != NULL;
    if (!rc && o) {
        size_t ns = (size_t)(o->hi - o->lo);
        if (!has_opt) {
            /* weights only (e.g. imported): fresh optimizer from these weights */
            wan_optim_reset_masters(o);
            be->memset0(be, o->mom1, ns * sizeof(float));
            be->memset0(be, o->mom2, ns * sizeof(float));
            o->step = 0;
        } else {
            float *opt = calloc(3 * ns, sizeof(float));
            for (int i = 0; i < npc && !rc; i++) {
                if (pc[i].kind == 0) continue;
                const wan_param *p = &m->ps.p[pc[i].param];
                const wan_ckpt_tensor *t = wan_ckpt_find(&c, p->name, pc[i].kind);
                if (!t) {
                    rc = wan_fail(WAN_ERR_RUNTIME, "checkpoint %s has no %s state for %s", c.dir,
                                  wan_ckpt_kind_names[pc[i].kind], p->name);
                    break;
                }
                float *dst = opt + (size_t)(pc[i].kind - 1) * ns + (size_t)(pc[i].flat - o->lo);
                rc = wan_ckpt_read_box(&c, t, &pc[i].box, dst, WAN_F32);
            }
            if (!rc) {
                be->upload(be, o->master, opt, ns * sizeof(float));
                be->upload(be, o->mom1, opt + ns, ns * sizeof(float));
                be->upload(be, o->mom2, opt + 2 * ns, ns * sizeof(float));
                o->step = c.optimizer_step;
            }
            free(opt);
        }
    }
    if (!rc) {
        if (step) *step = c.step;
        if (data) *data = c.data;
        wan_info("loaded checkpoint %s (step %d, written at tp %d cp %d dp %d pp %d%s)", c.dir, c.step, c.layout.tp,
                 c.layout.cp, c.layout.dp, c.layout.pp, has_opt ? "" : "; weights only: optimizer state starts fresh");
    }
    free(pc);
    wan_ckpt_close(&c);
    return rc;
}
