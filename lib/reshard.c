/* Checkpoint to checkpoint: the pieces every rank of the target layout writes (ckpt_layout.c,
 * the function the trainer uses), produced by the streaming engine, committed like a save. */
#include "reshard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "ckpt_layout.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "params.h"

/* Element counts for allocations: at least 1, so an empty table is still a valid pointer. */
static size_t nz(int n) { return n > 0 ? (size_t)n : 1; }

int wan_rs_sources_of(wan_ckpt *c, wan_rs_sources *s) {
    memset(s, 0, sizeof *s);
    WAN_TRY(wan_ckpt_open_files(c));
    int n = 0;
    for (int i = 0; i < c->nt; i++) n += c->t[i].npieces;
    s->t = calloc(nz((c->nt)), sizeof *s->t);
    s->src = calloc(nz((n)), sizeof *s->src);
    s->paths = calloc(nz((c->nfiles)), sizeof *s->paths);
    if (!s->t || !s->src || !s->paths) {
        wan_rs_sources_free(s);
        return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    }
    for (int f = 0; f < c->nfiles; f++) snprintf(s->paths[f], sizeof s->paths[f], "%s/%s", c->dir, c->files[f]);
    wan_rs_source *src = s->src;
    for (int i = 0; i < c->nt; i++) {
        const wan_ckpt_tensor *ct = &c->t[i];
        wan_rs_tensor *t = &s->t[i];
        t->name = ct->name;
        t->kind = wan_ckpt_kind_names[ct->kind];
        t->ndim = ct->ndim;
        memcpy(t->shape, ct->shape, sizeof t->shape);
        t->src = src;
        t->nsrc = ct->npieces;
        for (int k = 0; k < ct->npieces; k++, src++) {
            const wan_ckpt_piece *p = &ct->pieces[k];
            *src = (wan_rs_source){c->fds[p->file], s->paths[p->file], p->offset, p->box, ct->dtype, true, p->xxh64};
        }
    }
    s->nt = c->nt;
    return 0;
}

void wan_rs_sources_free(wan_rs_sources *s) {
    free(s->t);
    free(s->src);
    free(s->paths);
    memset(s, 0, sizeof *s);
}

int wan_rs_check_tensors(const wan_ckpt *c, const wan_model_cfg *m, unsigned *kinds) {
    wan_param_set ps;
    WAN_TRY(wan_params_build(m, 1, 0, 1, 0, 1, &ps));
    int rc = 0;
    unsigned have = 0;
    int counted = 0;
    for (int kind = 0; kind < WAN_CKPT_KINDS && !rc; kind++) {
        int found = 0;
        const char *missing = NULL;
        for (int i = 0; i < ps.n && !rc; i++) {
            const wan_param *p = &ps.p[i];
            const wan_ckpt_tensor *t = wan_ckpt_find(c, p->name, kind);
            if (!t) {
                if (!missing) missing = p->name;
                continue;
            }
            found++;
            if (t->ndim != p->ndim || memcmp(t->shape, p->shape, (size_t)p->ndim * sizeof *p->shape)) {
                char a[96] = "", b[96] = "";
                for (int d = 0; d < t->ndim; d++) snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
                for (int d = 0; d < p->ndim; d++) snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", d ? ", " : "", (long long)p->shape[d]);
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s (%s) has shape [%s], but the model of its config needs [%s]",
                              c->dir, p->name, wan_ckpt_kind_names[kind], a, b);
            } else if (kind > 0 && t->dtype != WAN_F32)
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s (%s) is %s; optimizer state must be F32", c->dir, p->name,
                              wan_ckpt_kind_names[kind], wan_dtype_name(t->dtype));
        }
        if (rc) break;
        if (found && found != ps.n)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s has no %s state (%d of %d tensors have it): incomplete checkpoint",
                          c->dir, missing, wan_ckpt_kind_names[kind], found, ps.n);
        else if (!found && kind == 0)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: no model weights (e.g. %s is missing)", c->dir, missing ? missing : "?");
        if (found) have |= WAN_KIND_BIT(kind);
        counted += found;
    }
    if (!rc && (have & ~WAN_KINDS_MODEL) && (have & ~WAN_KINDS_MODEL) != (WAN_KINDS_ALL & ~WAN_KINDS_MODEL))
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: optimizer state is incomplete: it needs master, adam_m and adam_v", c->dir);
    if (!rc && counted != c->nt)
        for (int i = 0; i < c->nt; i++) {
            bool known = false;
            for (int k = 0; k < ps.n && !known; k++) known = !strcmp(ps.p[k].name, c->t[i].name);
            if (!known) {
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s (%s) is not a parameter of the model in its config", c->dir,
                              c->t[i].name, wan_ckpt_kind_names[c->t[i].kind]);
                break;
            }
        }
    wan_params_free(&ps);
    if (!rc) *kinds = have;
    return rc;
}

/* ---------------------------------------------------------------- writing a checkpoint */

static int ckpt_write(void *ctx, uint64_t off, const void *data, size_t n) {
    return wan_ckpt_writer_pwrite(ctx, off, data, n);
}

static int check_space(const char *dir, uint64_t need) {
    struct statvfs vs;
    if (statvfs(dir, &vs) < 0) return 0; /* unknown: the writes will tell */
    uint64_t avail = (uint64_t)vs.f_bavail * vs.f_frsize;
    if (avail < need) {
        char a[32], b[32];
        wan_rs_format_size(need, a, sizeof a);
        wan_rs_format_size(avail, b, sizeof b);
        return wan_fail(WAN_ERR_RUNTIME, "%s: the new checkpoint needs %s but only %s are free", dir, a, b);
    }
    return 0;
}

typedef struct {
    int rank, piece; /* writer and its piece index */
} target_ref;

int wan_rs_write_checkpoint(const char *dst, const wan_rs_write_job *job, wan_rs_stats *stats) {
    double t0 = wan_now();
    const wan_ckpt_layout *L = &job->layout;
    WAN_TRY(wan_layout_check(job->model, L));
    if (wan_path_exists(dst) && !job->force)
        return wan_fail(WAN_ERR_USAGE, "%s already exists (choose another target or pass --force to replace it)", dst);
    char tmp[WAN_PATH_MAX + 32], parent[WAN_PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", dst, (int)getpid()) >= (int)sizeof tmp)
        return wan_fail(WAN_ERR_USAGE, "path too long: %s", dst);
    wan_dirname(dst, parent, sizeof parent);
    WAN_TRY(wan_mkdir_p(parent));

    /* tensor table index of every (parameter, kind), from the full model */
    wan_param_set full;
    WAN_TRY(wan_params_build(job->model, 1, 0, 1, 0, 1, &full));
    int *tab = malloc((size_t)full.n * WAN_CKPT_KINDS * sizeof *tab);
    int rc = tab ? 0 : wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int i = 0; i < full.n && !rc; i++)
        for (int k = 0; k < WAN_CKPT_KINDS; k++) {
            tab[i * WAN_CKPT_KINDS + k] = -1;
            if (!(job->kinds & WAN_KIND_BIT(k))) continue;
            int ti = job->find(job->find_ctx, full.p[i].name, k);
            if (ti < 0) {
                rc = wan_fail(WAN_ERR_RUNTIME, "no source for tensor %s (%s)", full.p[i].name, wan_ckpt_kind_names[k]);
                break;
            }
            tab[i * WAN_CKPT_KINDS + k] = ti;
        }

    /* every rank's pieces, reserved in its file in the order the trainer writes them */
    wan_ckpt_writer **wr = calloc((size_t)L->world, sizeof *wr);
    wan_rs_target *dt = NULL;
    target_ref *ref = NULL;
    int nd = 0, cap = 0;
    uint64_t bytes = 0;
    if (!rc && !wr) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    if (!rc) {
        wan_rm_rf(tmp);
        rc = wan_mkdir_p(tmp);
    }
    for (int r = 0; r < L->world && !rc; r++) {
        wan_grid_pos g;
        wan_layout_position(L, r, &g);
        wan_param_set ps;
        rc = wan_layout_params(job->model, &g, &ps);
        wan_layout_piece *pc = NULL;
        int np = 0;
        if (!rc) rc = wan_layout_pieces(&ps, &g, job->kinds, false, &pc, &np);
        if (!rc) rc = wan_ckpt_writer_begin(&wr[r], tmp, r);
        for (int i = 0; i < np && !rc; i++) {
            const wan_param *p = &ps.p[pc[i].param];
            int ti = tab[pc[i].param * WAN_CKPT_KINDS + pc[i].kind];
            wan_dtype dtype = pc[i].kind == 0 ? job->dtype_of(job->find_ctx, ti) : WAN_F32;
            if (nd == cap) {
                cap = cap ? 2 * cap : 1024;
                wan_rs_target *nt = realloc(dt, (size_t)cap * sizeof *dt);
                target_ref *nr = realloc(ref, (size_t)cap * sizeof *ref);
                if (nt) dt = nt;
                if (nr) ref = nr;
                if (!nt || !nr) {
                    rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
                    break;
                }
            }
            uint64_t off;
            int index;
            rc = wan_ckpt_writer_reserve(wr[r], p->name, pc[i].kind, dtype, p->ndim, p->shape, &pc[i].box, &off, &index);
            dt[nd] = (wan_rs_target){ti, pc[i].box, dtype, ckpt_write, wr[r], off, 0};
            ref[nd] = (target_ref){r, index};
            nd++;
            bytes += (uint64_t)pc[i].numel * wan_dtype_size(dtype);
        }
        free(pc);
        wan_params_free(&ps);
    }
    if (!rc) rc = check_space(parent, bytes);
    if (!rc) {
        char lay[64], sz[32];
        wan_layout_format(L, lay, sizeof lay);
        wan_rs_format_size(bytes, sz, sizeof sz);
        if (!job->io.quiet)
            wan_info("writing %s: layout %s (%d ranks), %d pieces, %s", dst, lay, L->world, nd, sz);
        rc = wan_rs_copy(job->t, job->nt, dt, nd, &job->io, stats);
    }
    for (int i = 0; i < nd && !rc; i++) wan_ckpt_writer_set_xxh64(wr[ref[i].rank], ref[i].piece, dt[i].xxh64);
    for (int r = 0; r < L->world && wr; r++) {
        if (!wr[r]) continue;
        if (rc) wan_ckpt_writer_abort(wr[r]);
        else rc = wan_ckpt_writer_end(wr[r]);
        wr[r] = NULL;
    }
    for (int r = 0; r < L->world && wr; r++)
        if (wr[r]) wan_ckpt_writer_abort(wr[r]);
    free(wr);
    free(dt);
    free(ref);

    if (!rc) {
        wan_ckpt_meta meta = job->meta;
        meta.layout = *L;
        meta.nranks = L->world;
        rc = wan_ckpt_write_meta(tmp, &meta);
    }
    /* read the new checkpoint back: the metadata, every tensor where it belongs, every checksum */
    if (!rc) {
        wan_ckpt c;
        rc = wan_ckpt_open(&c, tmp);
        if (!rc) {
            int expect = 0;
            for (int i = 0; i < full.n && !rc; i++)
                for (int k = 0; k < WAN_CKPT_KINDS && !rc; k++) {
                    int ti = tab[i * WAN_CKPT_KINDS + k];
                    if (ti < 0) continue;
                    expect++;
                    const wan_ckpt_tensor *t = wan_ckpt_find(&c, full.p[i].name, k);
                    wan_dtype want = k == 0 ? job->dtype_of(job->find_ctx, ti) : WAN_F32;
                    if (!t || t->dtype != want || t->ndim != full.p[i].ndim ||
                        memcmp(t->shape, full.p[i].shape, (size_t)t->ndim * sizeof *t->shape))
                        rc = wan_fail(WAN_ERR_RUNTIME, "%s: reading back: tensor %s (%s) is missing or changed", tmp,
                                      full.p[i].name, wan_ckpt_kind_names[k]);
                }
            if (!rc && expect != c.nt)
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: reading back: %d tensors, expected %d", tmp, c.nt, expect);
            if (!rc && (c.layout.tp != L->tp || c.layout.cp != L->cp || c.layout.dp != L->dp || c.layout.pp != L->pp))
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: reading back: the layout in meta.json is not the target's", tmp);
            wan_rs_params vp = job->io;
            vp.what = "verifying";
            if (!rc) rc = wan_rs_verify_ckpt(&c, &vp, stats);
            wan_ckpt_close(&c);
        }
        if (rc) wan_error_context(rc, "the new checkpoint failed its verification");
    }
    if (!rc) rc = wan_ckpt_publish(tmp, dst, job->link_latest);
    if (rc) wan_rm_rf(tmp);
    free(tab);
    wan_params_free(&full);
    if (stats) stats->seconds_total += wan_now() - t0;
    return rc;
}

/* ---------------------------------------------------------------- convert */

typedef struct {
    wan_ckpt *c;
} ckpt_find_ctx;

static int find_in_ckpt(void *ctx, const char *name, int kind) {
    wan_ckpt *c = ((ckpt_find_ctx *)ctx)->c;
    const wan_ckpt_tensor *t = wan_ckpt_find(c, name, kind);
    return t ? (int)(t - c->t) : -1;
}

static wan_dtype dtype_in_ckpt(void *ctx, int tensor) { return ((ckpt_find_ctx *)ctx)->c->t[tensor].dtype; }

int wan_reshard_convert(const char *src, const char *dst, const wan_reshard_opts *o, wan_rs_stats *stats) {
    wan_ckpt c;
    WAN_TRY(wan_ckpt_open(&c, src));
    unsigned kinds = 0;
    int rc = wan_rs_check_tensors(&c, &c.cfg.model, &kinds);
    char *text = NULL;
    wan_config cfg = c.cfg;
    if (!rc && o->config_text) {
        wan_config_defaults(&cfg);
        rc = wan_config_load_string(&cfg, o->config_text, "the target configuration");
        char diff[1024];
        if (!rc && wan_model_cfg_diff(&c.cfg.model, &cfg.model, diff, sizeof diff))
            rc = wan_fail(WAN_ERR_USAGE, "the target configuration is of a different model than %s: %s (checkpoint vs "
                                         "target)", c.dir, diff);
    }
    if (!rc) rc = wan_layout_check(&c.cfg.model, &o->layout);
    if (!rc) {
        cfg.parallel.tp = o->layout.tp;
        cfg.parallel.cp = o->layout.cp;
        cfg.parallel.pp = o->layout.pp;
        cfg.parallel.sp = o->layout.sp;
        text = wan_config_to_string(&cfg);
        /* training settings that do not fit the new layout (e.g. gbs vs dp) can be changed at
         * train time with --set; the checkpoint itself is fine */
        if (wan_config_validate(&cfg, o->layout.tp * o->layout.cp * o->layout.dp * o->layout.pp))
            wan_warn("a run at the target layout will need configuration changes: %s", wan_errmsg());
        wan_error_clear();
    }
    wan_rs_sources s = {0};
    if (!rc) rc = wan_rs_sources_of(&c, &s);
    if (!rc) {
        char a[64], b[64];
        wan_layout_format(&c.layout, a, sizeof a);
        wan_layout_format(&o->layout, b, sizeof b);
        if (!o->io.quiet)
            wan_info("%s: step %d, layout %s, %d tensors (%s) -> layout %s", c.dir, c.step, a, c.nt,
                     kinds == WAN_KINDS_MODEL ? "model weights only" : "weights and optimizer state", b);
        ckpt_find_ctx fc = {&c};
        wan_rs_write_job job = {
            .model = &c.cfg.model,
            .layout = o->layout,
            .kinds = kinds,
            .t = s.t,
            .nt = s.nt,
            .find = find_in_ckpt,
            .find_ctx = &fc,
            .dtype_of = dtype_in_ckpt,
            .meta = {c.step, c.optimizer_step, text, o->layout, c.data, o->layout.world},
            .link_latest = o->link_latest,
            .force = o->force,
            .io = o->io,
        };
        job.layout.world = o->layout.tp * o->layout.cp * o->layout.dp * o->layout.pp;
        rc = wan_rs_write_checkpoint(dst, &job, stats);
    }
    wan_rs_sources_free(&s);
    free(text);
    wan_ckpt_close(&c);
    return rc;
}

/* ---------------------------------------------------------------- digests */

int wan_rs_digests(wan_ckpt *c, const wan_rs_params *p, uint64_t *out) {
    wan_rs_sources s;
    WAN_TRY(wan_rs_sources_of(c, &s));
    wan_rs_target *d = calloc(nz((c->nt)), sizeof *d);
    int rc = d ? 0 : wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int i = 0; i < c->nt && !rc; i++) {
        d[i].tensor = i;
        memcpy(d[i].box.shape, c->t[i].shape, sizeof d[i].box.shape);
        d[i].dtype = c->t[i].dtype;
    }
    if (!rc) rc = wan_rs_copy(s.t, s.nt, d, c->nt, p, NULL);
    for (int i = 0; i < c->nt && !rc; i++) out[i] = d[i].xxh64;
    free(d);
    wan_rs_sources_free(&s);
    return rc;
}
