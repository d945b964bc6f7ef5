/* wan-reshard import / export: Wan 2.1 releases (official or diffusers safetensors) to and from
 * checkpoints, through the streaming engine of reshard.h (bounded memory, parallel I/O). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "ckpt_layout.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "params.h"
#include "safetensors.h"
#include "wan_weights.h"

/* Element counts for allocations: at least 1, so an empty table is still a valid pointer. */
static size_t nz(int n) { return n > 0 ? (size_t)n : 1; }

/* "a, b, c and 7 more" from a list of names. */
static void list_names(char names[][96], int n, char *buf, size_t cap) {
    buf[0] = 0;
    for (int i = 0; i < n && i < 5; i++)
        snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s", i ? ", " : "", names[i]);
    if (n > 5) snprintf(buf + strlen(buf), cap - strlen(buf), " and %d more", n - 5);
}

static const char *field_names[] = {"dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim",
                                    "text_len", "in_dim", "out_dim", "patch_size", "eps"};

/* Apply "model.KEY=V" settings to what config.json lacks; a setting that contradicts
 * config.json is an error. */
static int apply_model_sets(wan_model_cfg *m, unsigned given, const char *const *sets, int n, const char *cfgpath) {
    if (!n) return 0;
    wan_config c;
    wan_config_defaults(&c);
    c.model = *m;
    for (int i = 0; i < n; i++) WAN_TRY(wan_config_set(&c, sets[i]));
    const wan_model_cfg *a = m, *b = &c.model;
    bool differs[11] = {a->dim != b->dim, a->ffn_dim != b->ffn_dim, a->num_heads != b->num_heads,
                        a->num_layers != b->num_layers, a->freq_dim != b->freq_dim, a->text_dim != b->text_dim,
                        a->text_len != b->text_len, a->in_dim != b->in_dim, a->out_dim != b->out_dim,
                        memcmp(a->patch_size, b->patch_size, sizeof a->patch_size) != 0, a->eps != b->eps};
    for (int f = 0; f < 11; f++)
        if (differs[f] && (given & (1u << f)))
            return wan_fail(WAN_ERR_USAGE, "--set model.%s disagrees with %s, which gives it (the release's config "
                                           "decides the model)", field_names[f], cfgpath);
    *m = c.model;
    return 0;
}

/* ---------------------------------------------------------------- import */

typedef struct {
    wan_param_set *full;
    int dtype;
    const wan_rs_tensor *t;
} import_ctx;

static int find_param(void *ctx, const char *name, int kind) {
    import_ctx *ic = ctx;
    if (kind != 0) return -1;
    for (int i = 0; i < ic->full->n; i++)
        if (!strcmp(ic->full->p[i].name, name)) return i;
    return -1;
}

static wan_dtype import_dtype(void *ctx, int tensor) {
    import_ctx *ic = ctx;
    return ic->dtype >= 0 ? (wan_dtype)ic->dtype : ic->t[tensor].src[0].dtype;
}

int wan_weights_import(const char *src, const char *dst, const wan_import_opts *o, wan_rs_stats *stats) {
    if (!wan_is_dir(src))
        return wan_fail(WAN_ERR_USAGE, "%s: expected a release directory (config.json and "
                                       "diffusion_pytorch_model*.safetensors)", src);
    char cfgpath[WAN_PATH_MAX + 16];
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", src);
    char *text = NULL;
    size_t len;
    if (wan_read_file(cfgpath, &text, &len))
        return wan_error_context(WAN_ERR_RUNTIME, "the model's hyperparameters come from %s", cfgpath);
    wan_weights_format fmt = o->format;
    wan_model_cfg m;
    unsigned given = 0;
    int rc = wan_weights_parse_config(text, cfgpath, &fmt, &m, &given);
    free(text);
    if (!rc) rc = apply_model_sets(&m, given, o->model_sets, o->nmodel_sets, cfgpath);
    wan_config cfg;
    if (!rc) {
        /* the model must be trainable at all (checked with default run settings) ... */
        wan_config d;
        wan_config_defaults(&d);
        d.model = m;
        /* only the model's own constraints here: any latent the patch divides */
        for (int i = 0; i < 3; i++) d.train.latent_shape[i] = m.patch_size[i];
        if (wan_config_validate(&d, 0)) rc = wan_error_context(WAN_ERR_RUNTIME, "%s: this model cannot be trained", cfgpath);
    }
    if (!rc) rc = wan_layout_check(&m, &o->layout);
    if (!rc) {
        /* ... while run settings that do not fit it can still be changed at train time */
        cfg = *o->base;
        cfg.model = m;
        cfg.parallel.tp = o->layout.tp, cfg.parallel.cp = o->layout.cp, cfg.parallel.pp = o->layout.pp;
        cfg.parallel.sp = o->layout.sp;
        if (wan_config_validate(&cfg, o->layout.world))
            wan_warn("a run of the imported model will need other settings than the run configuration has: %s",
                     wan_errmsg());
        wan_error_clear();
    }
    wan_st_set set;
    memset(&set, 0, sizeof set);
    if (!rc) rc = wan_st_open(&set, src, "diffusion_pytorch_model");
    wan_param_set full;
    memset(&full, 0, sizeof full);
    if (!rc) rc = wan_params_build(&m, 1, 0, 1, 0, 1, &full);
    /* detect the layout from the names too; they must agree with the config */
    if (!rc) {
        bool diff_names = false, wan_names = false;
        for (int i = 0; i < set.n; i++) {
            if (!strncmp(set.t[i].name, "condition_embedder.", 19) || strstr(set.t[i].name, ".attn1.")) diff_names = true;
            if (!strncmp(set.t[i].name, "time_embedding.", 15) || strstr(set.t[i].name, ".self_attn.")) wan_names = true;
        }
        if ((fmt == WAN_FORMAT_WAN && diff_names && !wan_names) || (fmt == WAN_FORMAT_DIFFUSERS && wan_names && !diff_names))
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: the config is of the %s layout but the tensors have %s names", src,
                          wan_weights_format_name(fmt), fmt == WAN_FORMAT_WAN ? "diffusers" : "official Wan");
    }
    /* every key known, every parameter present with its shape */
    wan_rs_tensor *t = rc ? NULL : calloc(nz(full.n), sizeof *t);
    wan_rs_source *s = rc ? NULL : calloc(nz(full.n), sizeof *s);
    char(*unknown)[96] = rc ? NULL : calloc(nz(set.n), sizeof *unknown);
    if (!rc && (!t || !s || !unknown)) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    int nunknown = 0;
    for (int i = 0; i < set.n && !rc; i++) {
        const wan_st_tensor *st = &set.t[i];
        char name[128];
        int pi = -1;
        if (fmt == WAN_FORMAT_DIFFUSERS ? !wan_weights_from_diffusers(st->name, name, sizeof name)
                                        : snprintf(name, sizeof name, "%s", st->name) < (int)sizeof name)
            for (int k = 0; k < full.n && pi < 0; k++)
                if (!strcmp(full.p[k].name, name)) pi = k;
        if (pi < 0) {
            snprintf(unknown[nunknown++], 96, "%.95s", st->name);
            continue;
        }
        const wan_param *p = &full.p[pi];
        if (t[pi].nsrc) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: %s and another key both map to %s", src, st->name, p->name);
            break;
        }
        if (st->ndim != p->ndim || memcmp(st->shape, p->shape, (size_t)p->ndim * sizeof *p->shape)) {
            char a[96] = "", b[96] = "";
            for (int d = 0; d < st->ndim; d++) snprintf(a + strlen(a), sizeof a - strlen(a), "%s%lld", d ? ", " : "", (long long)st->shape[d]);
            for (int d = 0; d < p->ndim; d++) snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", d ? ", " : "", (long long)p->shape[d]);
            bool defaulted = (given & (WAN_WF_TEXT_DIM | WAN_WF_PATCH)) != (WAN_WF_TEXT_DIM | WAN_WF_PATCH);
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s has shape [%s], but the model of %s needs [%s]%s",
                          set.paths[st->file], st->name, a, cfgpath, b,
                          defaulted ? " (it lacks text_dim or patch_size, which then take Wan 2.1's 4096 and [1, 2, 2]: "
                                      "give them with --set model.text_dim=N or model.patch_size=[...])"
                                    : "");
            break;
        }
        s[pi] = (wan_rs_source){set.fds[st->file], set.paths[st->file], st->offset, {{0}, {0}}, st->dtype, false, 0};
        memcpy(s[pi].box.shape, p->shape, sizeof s[pi].box.shape);
        t[pi] = (wan_rs_tensor){p->name, "model", p->ndim, {0}, &s[pi], 1};
        memcpy(t[pi].shape, p->shape, sizeof t[pi].shape);
    }
    if (!rc && nunknown) {
        char buf[1024];
        list_names(unknown, nunknown, buf, sizeof buf);
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: %d key(s) that are not parameters of the %s Wan 2.1 model of its config: %s",
                      src, nunknown, wan_weights_format_name(fmt), buf);
    }
    if (!rc) {
        char(*missing)[96] = calloc(nz(full.n), sizeof *missing);
        int nmissing = 0;
        for (int i = 0; i < full.n && missing; i++)
            if (!t[i].nsrc) {
                if (fmt == WAN_FORMAT_DIFFUSERS) wan_weights_to_diffusers(full.p[i].name, missing[nmissing++], 96);
                else snprintf(missing[nmissing++], 96, "%s", full.p[i].name);
            }
        if (nmissing) {
            char buf[1024];
            list_names(missing, nmissing, buf, sizeof buf);
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: %d parameter(s) of the model missing: %s", src, nmissing, buf);
        }
        free(missing);
    }
    if (!rc) {
        char *cfgtext = wan_config_to_string(&cfg);
        import_ctx ic = {&full, o->dtype, t};
        wan_rs_write_job job = {
            .model = &m,
            .layout = o->layout,
            .kinds = WAN_KINDS_MODEL,
            .t = t,
            .nt = full.n,
            .find = find_param,
            .find_ctx = &ic,
            .dtype_of = import_dtype,
            .meta = {0, 0, cfgtext, o->layout, {(uint64_t)cfg.train.seed, 0, 0}, o->layout.world},
            .force = o->force,
            .io = o->io,
        };
        if (!o->io.quiet)
            wan_info("importing %s (%s layout, %d tensors in %d file(s)): dim %d, %d layers, %d heads", src,
                     wan_weights_format_name(fmt), set.n, set.nfiles, m.dim, m.num_layers, m.num_heads);
        rc = wan_rs_write_checkpoint(dst, &job, stats);
        free(cfgtext);
    }
    free(t);
    free(s);
    free(unknown);
    wan_params_free(&full);
    wan_st_close(&set);
    return rc;
}

/* ---------------------------------------------------------------- export */

typedef struct {
    wan_st_writer *w;
    int index;
} st_target;

static int st_write(void *ctx, uint64_t off, const void *data, size_t n) {
    st_target *s = ctx;
    return wan_st_writer_write(s->w, s->index, off, data, n);
}

/* Hash every tensor of the written files and compare with what was written. */
static int verify_export(const char *dir, const wan_st_tensor *tab, const uint64_t *want, int n, size_t cap) {
    wan_st_set set;
    WAN_TRY(wan_st_open(&set, dir, "diffusion_pytorch_model"));
    char *buf = malloc(cap);
    int rc = buf ? 0 : wan_fail(WAN_ERR_RUNTIME, "out of memory");
    if (!rc && set.n != n) rc = wan_fail(WAN_ERR_RUNTIME, "%s: reading back: %d tensors, expected %d", dir, set.n, n);
    for (int i = 0; i < n && !rc; i++) {
        const wan_st_tensor *t = wan_st_find(&set, tab[i].name);
        if (!t || t->dtype != tab[i].dtype || t->ndim != tab[i].ndim ||
            memcmp(t->shape, tab[i].shape, (size_t)t->ndim * sizeof *t->shape)) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: reading back: tensor %s is missing or changed", dir, tab[i].name);
            break;
        }
        XXH3_state_t *st = XXH3_createState();
        XXH3_64bits_reset(st);
        for (uint64_t off = 0; off < t->nbytes && !rc; off += cap) {
            size_t m = t->nbytes - off < cap ? (size_t)(t->nbytes - off) : cap;
            rc = wan_st_read_range(&set, t, off, m, buf);
            if (!rc) XXH3_64bits_update(st, buf, m);
        }
        if (!rc && XXH3_64bits_digest(st) != want[i])
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: reading back: tensor %s differs from what was written", dir, tab[i].name);
        XXH3_freeState(st);
    }
    free(buf);
    wan_st_close(&set);
    return rc;
}

int wan_weights_export(const char *ckpt, const char *dst, const wan_export_opts *o, wan_rs_stats *stats) {
    double t0 = wan_now();
    wan_ckpt c;
    WAN_TRY(wan_ckpt_open(&c, ckpt));
    unsigned kinds = 0;
    int rc = wan_rs_check_tensors(&c, &c.cfg.model, &kinds);
    if (!rc && !(kinds & WAN_KIND_BIT(o->kind)))
        rc = wan_fail(WAN_ERR_USAGE, "%s has no %s weights (it holds model weights only)", c.dir,
                      wan_ckpt_kind_names[o->kind]);
    if (!rc && wan_path_exists(dst) && !o->force)
        rc = wan_fail(WAN_ERR_USAGE, "%s already exists (choose another directory or pass --force to replace it)", dst);
    wan_weights_format fmt = o->format == WAN_FORMAT_DIFFUSERS ? WAN_FORMAT_DIFFUSERS : WAN_FORMAT_WAN;
    wan_rs_sources s = {0};
    if (!rc) rc = wan_rs_sources_of(&c, &s);
    wan_param_set full;
    memset(&full, 0, sizeof full);
    if (!rc) rc = wan_params_build(&c.cfg.model, 1, 0, 1, 0, 1, &full);
    int n = full.n;
    wan_st_tensor *tab = rc ? NULL : calloc(nz(n), sizeof *tab);
    int *file_of = rc ? NULL : calloc(nz(n), sizeof *file_of);
    wan_rs_target *dt = rc ? NULL : calloc(nz(n), sizeof *dt);
    st_target *stt = rc ? NULL : calloc(nz(n), sizeof *stt);
    uint64_t *want = rc ? NULL : calloc(nz(n), sizeof *want);
    if (!rc && (!tab || !file_of || !dt || !stt || !want)) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    /* tensors in the official order, split into shards of at most max_shard bytes */
    int nfiles = 1;
    uint64_t in_file = 0, total = 0;
    for (int i = 0; i < n && !rc; i++) {
        const wan_param *p = &full.p[i];
        const wan_ckpt_tensor *ct = wan_ckpt_find(&c, p->name, o->kind);
        wan_dtype dtype = o->dtype >= 0 ? (wan_dtype)o->dtype : ct->dtype;
        if (fmt == WAN_FORMAT_DIFFUSERS) {
            if (wan_weights_to_diffusers(p->name, tab[i].name, sizeof tab[i].name))
                rc = wan_fail(WAN_ERR_RUNTIME, "tensor %s has no diffusers name", p->name);
        } else snprintf(tab[i].name, sizeof tab[i].name, "%s", p->name);
        tab[i].dtype = dtype;
        tab[i].ndim = p->ndim;
        memcpy(tab[i].shape, p->shape, (size_t)p->ndim * sizeof *p->shape);
        uint64_t bytes = (uint64_t)wan_numel(p->ndim, p->shape) * wan_dtype_size(dtype);
        if (in_file > 0 && in_file + bytes > o->max_shard) nfiles++, in_file = 0;
        file_of[i] = nfiles - 1;
        in_file += bytes;
        total += bytes;
        dt[i] = (wan_rs_target){(int)(ct - c.t), {{0}, {0}}, dtype, st_write, &stt[i], 0, 0};
        memcpy(dt[i].box.shape, p->shape, sizeof dt[i].box.shape);
    }
    char tmp[WAN_PATH_MAX + 32], parent[WAN_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", dst, (int)getpid());
    wan_dirname(dst, parent, sizeof parent);
    if (!rc) rc = wan_mkdir_p(parent);
    if (!rc) {
        wan_rm_rf(tmp);
        rc = wan_mkdir_p(tmp);
    }
    /* one writer per shard, each declared with its tensors */
    wan_st_writer **w = rc ? NULL : calloc((size_t)nfiles, sizeof *w);
    char(*fname)[96] = rc ? NULL : calloc((size_t)nfiles, sizeof *fname);
    if (!rc && (!w || !fname)) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int f = 0; f < nfiles && !rc; f++) {
        if (nfiles == 1) snprintf(fname[f], sizeof fname[f], "diffusion_pytorch_model.safetensors");
        else snprintf(fname[f], sizeof fname[f], "diffusion_pytorch_model-%05d-of-%05d.safetensors", f + 1, nfiles);
        int first = 0, cnt = 0;
        while (first < n && file_of[first] != f) first++;
        while (first + cnt < n && file_of[first + cnt] == f) cnt++;
        char path[WAN_PATH_MAX + 160];
        snprintf(path, sizeof path, "%s/%s", tmp, fname[f]);
        rc = wan_st_writer_open(&w[f], path, tab + first, cnt, "{\"format\": \"pt\"}");
        for (int i = 0; i < cnt; i++) stt[first + i] = (st_target){w[f], i};
    }
    if (!rc) {
        if (!o->io.quiet) {
            char sz[32];
            wan_rs_format_size(total, sz, sizeof sz);
            wan_info("exporting %s (step %d) as %s weights to %s: %d tensors, %s in %d file(s)", c.dir, c.step,
                     wan_weights_format_name(fmt), dst, n, sz, nfiles);
        }
        wan_rs_params io = o->io;
        io.what = "exporting";
        rc = wan_rs_copy(s.t, s.nt, dt, n, &io, stats);
    }
    for (int i = 0; i < n && !rc; i++) want[i] = dt[i].xxh64;
    for (int f = 0; f < nfiles && w; f++) {
        if (!w[f]) continue;
        if (rc) wan_st_writer_abort(w[f]);
        else rc = wan_st_writer_close(w[f]);
        w[f] = NULL;
    }
    for (int f = 0; f < nfiles && w; f++)
        if (w[f]) wan_st_writer_abort(w[f]);
    if (!rc && nfiles > 1) {
        /* the index JSON of a sharded release */
        size_t cap = 256 + (size_t)n * 256, len = 0;
        char *idx = malloc(cap);
        if (!idx) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        else {
            len += (size_t)snprintf(idx + len, cap - len, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n"
                                                         "  \"weight_map\": {\n", (unsigned long long)total);
            for (int i = 0; i < n; i++)
                len += (size_t)snprintf(idx + len, cap - len, "    \"%s\": \"%s\"%s\n", tab[i].name, fname[file_of[i]],
                                        i + 1 < n ? "," : "");
            len += (size_t)snprintf(idx + len, cap - len, "  }\n}\n");
            char path[WAN_PATH_MAX + 96];
            snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors.index.json", tmp);
            rc = wan_write_file_atomic(path, idx, len);
            free(idx);
        }
    }
    if (!rc) {
        char *json = wan_weights_config_json(&c.cfg.model, fmt);
        char path[WAN_PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/config.json", tmp);
        rc = json ? wan_write_file_atomic(path, json, strlen(json)) : wan_fail(WAN_ERR_RUNTIME, "out of memory");
        free(json);
    }
    if (!rc) {
        double tv = wan_now();
        rc = verify_export(tmp, tab, want, n, 8u << 20);
        if (rc) wan_error_context(rc, "the exported weights failed their verification");
        if (stats) {
            stats->bytes_verified += total;
            stats->seconds_verify += wan_now() - tv;
        }
    }
    if (!rc) rc = wan_fsync_path(tmp);
    if (!rc) {
        if (wan_path_exists(dst)) {
            char old[WAN_PATH_MAX + 32];
            snprintf(old, sizeof old, "%s.old.%d", dst, (int)getpid());
            rc = wan_rename_durable(dst, old);
            if (!rc) rc = wan_rename_durable(tmp, dst);
            if (!rc) rc = wan_rm_rf(old);
        } else rc = wan_rename_durable(tmp, dst);
    }
    if (rc) wan_rm_rf(tmp);
    free(w);
    free(fname);
    free(tab);
    free(file_of);
    free(dt);
    free(stt);
    free(want);
    wan_params_free(&full);
    wan_rs_sources_free(&s);
    wan_ckpt_close(&c);
    if (stats) stats->seconds_total += wan_now() - t0;
    return rc;
}
