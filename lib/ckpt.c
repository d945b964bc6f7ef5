#include "ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "error.h"
#include "fsutil.h"

const char *const wan_ckpt_kind_names[WAN_CKPT_KINDS] = {"model", "master", "adam_m", "adam_v"};

static int kind_index(const char *s) {
    for (int i = 0; i < WAN_CKPT_KINDS; i++)
        if (!strcmp(s, wan_ckpt_kind_names[i])) return i;
    return -1;
}

static int64_t box_volume(int ndim, const wan_box *b) { return wan_numel(ndim, b->shape); }

/* Tests of the commit protocol (see ckpt.h): WAN_TEST_CKPT_PAUSE_MS=N sleeps N ms at each step
 * of a save (or only at the step named by WAN_TEST_CKPT_PAUSE_AT), announcing it on stderr. */
static void test_pause(const char *step) {
    static int ms = -1;
    static const char *only;
    if (ms < 0) {
        const char *e = getenv("WAN_TEST_CKPT_PAUSE_MS");
        ms = e ? atoi(e) : 0;
        if (ms < 0) ms = 0;
        only = getenv("WAN_TEST_CKPT_PAUSE_AT");
    }
    if (!ms || (only && *only && strcmp(only, step))) return;
    fprintf(stderr, "wan-test-ckpt-pause: %s\n", step);
    fflush(stderr);
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

bool wan_box_intersect(int ndim, const wan_box *a, const wan_box *b, wan_box *out) {
    memset(out, 0, sizeof *out);
    for (int d = 0; d < ndim; d++) {
        int64_t lo = a->start[d] > b->start[d] ? a->start[d] : b->start[d];
        int64_t ea = a->start[d] + a->shape[d], eb = b->start[d] + b->shape[d];
        int64_t hi = ea < eb ? ea : eb;
        if (hi <= lo) return false;
        out->start[d] = lo;
        out->shape[d] = hi - lo;
    }
    return true;
}

int wan_flat_range_boxes(int ndim, const int64_t *shape, int64_t a, int64_t b, wan_box *out) {
    if (a >= b) return 0;
    if (ndim == 1) {
        out[0].start[0] = a;
        out[0].shape[0] = b - a;
        return 1;
    }
    int64_t inner = wan_numel(ndim - 1, shape + 1);
    int64_t ra = a / inner, rb = b / inner;
    int n = 0;
    /* boxes of the inner dims, lifted to this dim at row r */
#define LIFT(r, k0, cnt)                                                                                               \
    for (int i_ = 0; i_ < (cnt); i_++) {                                                                               \
        wan_box *bx = &out[(k0) + i_];                                                                                 \
        memmove(bx->start + 1, bx->start, (size_t)(ndim - 1) * sizeof(int64_t));                                      \
        memmove(bx->shape + 1, bx->shape, (size_t)(ndim - 1) * sizeof(int64_t));                                      \
        bx->start[0] = (r);                                                                                            \
        bx->shape[0] = 1;                                                                                              \
    }
    if (ra == rb) {
        int c = wan_flat_range_boxes(ndim - 1, shape + 1, a % inner, b % inner, out);
        LIFT(ra, 0, c);
        return c;
    }
    if (a % inner) {
        int c = wan_flat_range_boxes(ndim - 1, shape + 1, a % inner, inner, out);
        LIFT(ra, 0, c);
        n += c;
        ra++;
    }
    if (rb > ra) {
        wan_box *bx = &out[n++];
        memset(bx, 0, sizeof *bx);
        bx->start[0] = ra;
        bx->shape[0] = rb - ra;
        for (int d = 1; d < ndim; d++) bx->shape[d] = shape[d];
    }
    if (b % inner) {
        int c = wan_flat_range_boxes(ndim - 1, shape + 1, 0, b % inner, out + n);
        LIFT(rb, n, c);
        n += c;
    }
#undef LIFT
    return n;
}

/* Copy the part `isect` of box `src_box` (data src, type st) into box `dst_box` (dst, dt). */
static void copy_box(int ndim, const wan_box *isect, const wan_box *src_box, const void *src, wan_dtype st,
                     const wan_box *dst_box, void *dst, wan_dtype dt) {
    int64_t idx[WAN_MAX_DIMS] = {0};
    int64_t run = isect->shape[ndim - 1];
    int64_t rows = box_volume(ndim, isect) / run;
    size_t ss = wan_dtype_size(st), ds = wan_dtype_size(dt);
    for (int64_t r = 0; r < rows; r++) {
        int64_t so = 0, doff = 0;
        for (int d = 0; d < ndim; d++) {
            int64_t g = isect->start[d] + idx[d];
            so = so * src_box->shape[d] + (g - src_box->start[d]);
            doff = doff * dst_box->shape[d] + (g - dst_box->start[d]);
        }
        wan_convert((char *)dst + (size_t)doff * ds, dt, (const char *)src + (size_t)so * ss, st, (size_t)run);
        for (int d = ndim - 2; d >= 0; d--) {
            if (++idx[d] < isect->shape[d]) break;
            idx[d] = 0;
        }
    }
}

/* ---------------------------------------------------------------- writer */

typedef struct {
    char name[96];
    int kind;
    wan_dtype dt;
    int ndim;
    int64_t shape[WAN_MAX_DIMS];
    wan_box box;
    uint64_t offset, nbytes, xxh;
    bool hashed; /* the checksum is known (reserved pieces get it later) */
} piece_rec;

struct wan_ckpt_writer {
    char dir[WAN_PATH_MAX];
    char file[64];
    int fd, rank;
    uint64_t off;
    piece_rec *p;
    int n, cap;
};

int wan_ckpt_writer_begin(wan_ckpt_writer **out, const char *tmpdir, int rank) {
    wan_ckpt_writer *w = calloc(1, sizeof *w);
    snprintf(w->dir, sizeof w->dir, "%s", tmpdir);
    snprintf(w->file, sizeof w->file, "rank%05d.bin", rank);
    w->rank = rank;
    char path[WAN_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", tmpdir, w->file);
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        free(w);
        return wan_fail_errno(WAN_ERR_RUNTIME, "create checkpoint file %s", path);
    }
    *out = w;
    return 0;
}

static piece_rec *new_piece(wan_ckpt_writer *w, const char *name, int kind, wan_dtype dt, int ndim,
                           const int64_t *shape, const wan_box *box) {
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 256;
        w->p = realloc(w->p, (size_t)w->cap * sizeof *w->p);
    }
    piece_rec *r = &w->p[w->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->kind = kind;
    r->dt = dt;
    r->ndim = ndim;
    memcpy(r->shape, shape, (size_t)ndim * sizeof *shape);
    r->box = *box;
    r->offset = w->off;
    r->nbytes = (uint64_t)box_volume(ndim, box) * wan_dtype_size(dt);
    w->off += r->nbytes;
    return r;
}

int wan_ckpt_writer_add(wan_ckpt_writer *w, const char *name, int kind, wan_dtype dt, int ndim, const int64_t *shape,
                        const wan_box *box, const void *data) {
    uint64_t nbytes = (uint64_t)box_volume(ndim, box) * wan_dtype_size(dt);
    char path[WAN_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", w->dir, w->file);
    WAN_TRY(wan_pwrite_full(w->fd, data, nbytes, w->off, path));
    piece_rec *r = new_piece(w, name, kind, dt, ndim, shape, box);
    r->xxh = XXH3_64bits(data, nbytes);
    r->hashed = true;
    test_pause("piece");
    return 0;
}

int wan_ckpt_writer_reserve(wan_ckpt_writer *w, const char *name, int kind, wan_dtype dt, int ndim,
                            const int64_t *shape, const wan_box *box, uint64_t *offset, int *index) {
    piece_rec *r = new_piece(w, name, kind, dt, ndim, shape, box);
    *offset = r->offset;
    *index = w->n - 1;
    return 0;
}

int wan_ckpt_writer_pwrite(wan_ckpt_writer *w, uint64_t offset, const void *data, size_t n) {
    char path[WAN_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", w->dir, w->file);
    return wan_pwrite_full(w->fd, data, n, offset, path);
}

void wan_ckpt_writer_set_xxh64(wan_ckpt_writer *w, int index, uint64_t xxh) {
    WAN_ASSERT(index >= 0 && index < w->n);
    w->p[index].xxh = xxh;
    w->p[index].hashed = true;
}

static json_t *int_array(int n, const int64_t *v) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
    return a;
}

int wan_ckpt_writer_end(wan_ckpt_writer *w) {
    char path[WAN_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", w->dir, w->file);
    int rc = 0;
    for (int i = 0; i < w->n && !rc; i++)
        if (!w->p[i].hashed)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: the piece of %s (%s) was reserved but never completed", path, w->p[i].name,
                          wan_ckpt_kind_names[w->p[i].kind]);
    /* reserved pieces are written in any order: the file ends where the last piece ends */
    if (!rc && ftruncate(w->fd, (off_t)w->off) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "resize %s", path);
    if (!rc && fsync(w->fd) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "fsync %s", path);
    close(w->fd);
    w->fd = -1;
    if (!rc) {
        json_t *arr = json_array();
        for (int i = 0; i < w->n; i++) {
            piece_rec *r = &w->p[i];
            char hex[17];
            snprintf(hex, sizeof hex, "%016" PRIx64, r->xxh);
            json_array_append_new(
                arr, json_pack("{s:s,s:s,s:s,s:o,s:s,s:I,s:I,s:o,s:o,s:s}", "name", r->name, "kind",
                               wan_ckpt_kind_names[r->kind], "dtype", wan_dtype_name(r->dt), "tensor_shape",
                               int_array(r->ndim, r->shape), "file", w->file, "offset", (json_int_t)r->offset, "nbytes",
                               (json_int_t)r->nbytes, "start", int_array(r->ndim, r->box.start), "shape",
                               int_array(r->ndim, r->box.shape), "xxh64", hex));
        }
        char *text = json_dumps(arr, JSON_COMPACT);
        json_decref(arr);
        snprintf(path, sizeof path, "%s/rank%05d.json", w->dir, w->rank);
        rc = wan_write_file_atomic(path, text, strlen(text));
        free(text);
    }
    free(w->p);
    free(w);
    return rc;
}

void wan_ckpt_writer_abort(wan_ckpt_writer *w) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    free(w->p);
    free(w);
}

/* ---------------------------------------------------------------- parsing pieces */

/* json_load_file reads a character at a time; metadata of many ranks is parsed faster whole. */
static json_t *load_json(const char *path, json_error_t *je) {
    char *text = NULL;
    size_t len = 0;
    if (wan_read_file(path, &text, &len)) {
        memset(je, 0, sizeof *je);
        snprintf(je->text, sizeof je->text, "%s", wan_errmsg());
        wan_error_clear();
        return NULL;
    }
    json_t *j = json_loadb(text, len, 0, je);
    free(text);
    return j;
}

static int parse_ints(json_t *a, int max, int64_t *out, int *n, const char *what, const char *where) {
    if (!json_is_array(a) || (int)json_array_size(a) > max)
        return wan_fail(WAN_ERR_RUNTIME, "%s: %s: expected a list of at most %d integers", where, what, max);
    *n = (int)json_array_size(a);
    for (int i = 0; i < *n; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return wan_fail(WAN_ERR_RUNTIME, "%s: %s[%d]: expected a non-negative integer", where, what, i);
        out[i] = json_integer_value(v);
    }
    return 0;
}

static int file_index(wan_ckpt *c, const char *name) {
    for (int i = 0; i < c->nfiles; i++)
        if (!strcmp(c->files[i], name)) return i;
    c->files = realloc(c->files, (size_t)(c->nfiles + 1) * sizeof *c->files);
    c->fds = realloc(c->fds, (size_t)(c->nfiles + 1) * sizeof *c->fds);
    snprintf(c->files[c->nfiles], sizeof c->files[0], "%s", name);
    c->fds[c->nfiles] = -1;
    return c->nfiles++;
}

static wan_ckpt_tensor *tensor_get(wan_ckpt *c, const char *name, int kind, wan_dtype dt, int ndim,
                                   const int64_t *shape, const char *where) {
    for (int i = 0; i < c->nt; i++) {
        wan_ckpt_tensor *t = &c->t[i];
        if (t->kind != kind || strcmp(t->name, name)) continue;
        if (t->dtype != dt || t->ndim != ndim || memcmp(t->shape, shape, (size_t)ndim * sizeof *shape)) {
            wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s (%s): pieces disagree on dtype or shape", where, name,
                     wan_ckpt_kind_names[kind]);
            return NULL;
        }
        return t;
    }
    c->t = realloc(c->t, (size_t)(c->nt + 1) * sizeof *c->t);
    wan_ckpt_tensor *t = &c->t[c->nt++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->kind = kind;
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    return t;
}

/* One piece record {name, kind, dtype, tensor_shape, file, offset, nbytes, start, shape, xxh64}. */
static int add_piece_json(wan_ckpt *c, json_t *pj, const char *tname, const char *kname, const char *dtname,
                          json_t *tshape, const char *where) {
    const char *file = json_string_value(json_object_get(pj, "file"));
    const char *hex = json_string_value(json_object_get(pj, "xxh64"));
    json_t *off = json_object_get(pj, "offset"), *nb = json_object_get(pj, "nbytes");
    if (!tname || !kname || !dtname || !file || !hex || !json_is_integer(off) || !json_is_integer(nb))
        return wan_fail(WAN_ERR_RUNTIME, "%s: a piece of %s lacks name, kind, dtype, file, offset, nbytes or xxh64",
                        where, tname ? tname : "?");
    int kind = kind_index(kname);
    wan_dtype dt;
    if (kind < 0) return wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s: unknown kind '%s'", where, tname, kname);
    if (wan_dtype_parse(dtname, &dt))
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s: unknown dtype '%s'", where, tname, dtname);
    int64_t shape[WAN_MAX_DIMS];
    int nd, nd2, nd3;
    wan_box box;
    memset(&box, 0, sizeof box);
    WAN_TRY(parse_ints(tshape, WAN_MAX_DIMS, shape, &nd, "shape", where));
    WAN_TRY(parse_ints(json_object_get(pj, "start"), WAN_MAX_DIMS, box.start, &nd2, "start", where));
    WAN_TRY(parse_ints(json_object_get(pj, "shape"), WAN_MAX_DIMS, box.shape, &nd3, "piece shape", where));
    if (nd < 1 || nd2 != nd || nd3 != nd)
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s: piece rank differs from the tensor's", where, tname);
    for (int d = 0; d < nd; d++)
        if (box.start[d] + box.shape[d] > shape[d] || box.shape[d] == 0)
            return wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s: a piece lies outside the tensor (dim %d)", where, tname, d);
    if ((uint64_t)json_integer_value(nb) != (uint64_t)box_volume(nd, &box) * wan_dtype_size(dt))
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s: a piece's nbytes does not match its shape", where, tname);
    wan_ckpt_tensor *t = tensor_get(c, tname, kind, dt, nd, shape, where);
    if (!t) return WAN_ERR_RUNTIME;
    t->pieces = realloc(t->pieces, (size_t)(t->npieces + 1) * sizeof *t->pieces);
    wan_ckpt_piece *p = &t->pieces[t->npieces++];
    p->file = file_index(c, file);
    p->offset = (uint64_t)json_integer_value(off);
    p->nbytes = (uint64_t)json_integer_value(nb);
    p->box = box;
    p->xxh64 = strtoull(hex, NULL, 16);
    return 0;
}

/* Every tensor covered exactly once: no two pieces overlap and their volumes add up. */
static int check_coverage(const wan_ckpt *c, const char *where) {
    for (int i = 0; i < c->nt; i++) {
        const wan_ckpt_tensor *t = &c->t[i];
        int64_t vol = 0;
        for (int a = 0; a < t->npieces; a++) {
            vol += box_volume(t->ndim, &t->pieces[a].box);
            for (int b = a + 1; b < t->npieces; b++) {
                wan_box x;
                if (wan_box_intersect(t->ndim, &t->pieces[a].box, &t->pieces[b].box, &x))
                    return wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s (%s): pieces in %s and %s overlap", where, t->name,
                                    wan_ckpt_kind_names[t->kind], c->files[t->pieces[a].file],
                                    c->files[t->pieces[b].file]);
            }
        }
        int64_t want = wan_numel(t->ndim, t->shape);
        if (vol != want)
            return wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s (%s): pieces cover %lld of %lld elements (a piece is missing)",
                            where, t->name, wan_ckpt_kind_names[t->kind], (long long)vol, (long long)want);
    }
    return 0;
}

/* ---------------------------------------------------------------- commit */

int wan_ckpt_commit(const char *tmpdir, const char *finaldir, const wan_ckpt_meta *meta, bool update_latest) {
    WAN_TRY(wan_ckpt_write_meta(tmpdir, meta));
    return wan_ckpt_publish(tmpdir, finaldir, update_latest);
}

int wan_ckpt_write_meta(const char *tmpdir, const wan_ckpt_meta *meta) {
    test_pause("pieces-done");
    wan_ckpt c;
    memset(&c, 0, sizeof c);
    int rc = 0;
    json_t *tensors = json_array();
    for (int r = 0; r < meta->nranks && !rc; r++) {
        char path[WAN_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/rank%05d.json", tmpdir, r);
        json_error_t je;
        json_t *arr = load_json(path, &je);
        if (!arr || !json_is_array(arr)) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: missing or unreadable piece list of rank %d (%s)", path, r, je.text);
            json_decref(arr);
            break;
        }
        size_t i;
        json_t *pj;
        json_array_foreach(arr, i, pj) {
            rc = add_piece_json(&c, pj, json_string_value(json_object_get(pj, "name")),
                                json_string_value(json_object_get(pj, "kind")),
                                json_string_value(json_object_get(pj, "dtype")), json_object_get(pj, "tensor_shape"),
                                path);
            if (rc) break;
        }
        json_decref(arr);
    }
    if (!rc) rc = check_coverage(&c, tmpdir);
    if (!rc) {
        for (int i = 0; i < c.nt; i++) {
            wan_ckpt_tensor *t = &c.t[i];
            json_t *pieces = json_array();
            for (int k = 0; k < t->npieces; k++) {
                wan_ckpt_piece *p = &t->pieces[k];
                char hex[17];
                snprintf(hex, sizeof hex, "%016" PRIx64, p->xxh64);
                json_array_append_new(pieces, json_pack("{s:s,s:I,s:I,s:o,s:o,s:s}", "file", c.files[p->file], "offset",
                                                        (json_int_t)p->offset, "nbytes", (json_int_t)p->nbytes, "start",
                                                        int_array(t->ndim, p->box.start), "shape",
                                                        int_array(t->ndim, p->box.shape), "xxh64", hex));
            }
            json_array_append_new(tensors, json_pack("{s:s,s:s,s:s,s:o,s:o}", "name", t->name, "kind",
                                                     wan_ckpt_kind_names[t->kind], "dtype", wan_dtype_name(t->dtype),
                                                     "shape", int_array(t->ndim, t->shape), "pieces", pieces));
        }
        const wan_ckpt_layout *L = &meta->layout;
        json_t *root = json_pack(
            "{s:s,s:i,s:i,s:i,s:s,s:{s:i,s:b,s:i,s:i,s:i,s:i},s:{s:I,s:I,s:I},s:o}", "format", "wan-checkpoint",
            "version", 1, "step", meta->step, "optimizer_step", meta->optimizer_step, "config",
            meta->config_text ? meta->config_text : "", "layout", "tp", L->tp, "sp", L->sp, "cp", L->cp, "dp", L->dp,
            "pp", L->pp, "world", L->world, "data", "seed", (json_int_t)meta->data.seed, "epoch",
            (json_int_t)meta->data.epoch, "position", (json_int_t)meta->data.position, "tensors", tensors);
        tensors = NULL;
        char *text = json_dumps(root, JSON_INDENT(1));
        json_decref(root);
        char path[WAN_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/meta.json", tmpdir);
        rc = wan_write_file_atomic(path, text, strlen(text));
        free(text);
    }
    json_decref(tensors);
    for (int i = 0; i < c.nt; i++) free(c.t[i].pieces);
    free(c.t);
    free(c.files);
    free(c.fds);
    if (rc) return rc;
    WAN_TRY(wan_fsync_path(tmpdir));
    test_pause("meta");
    return 0;
}

int wan_ckpt_publish(const char *tmpdir, const char *finaldir, bool update_latest) {
    if (wan_path_exists(finaldir)) {
        /* the same step saved again (e.g. after a resume): the new one replaces it */
        char old[WAN_PATH_MAX + 32];
        snprintf(old, sizeof old, "%s.old.%d", finaldir, (int)getpid());
        WAN_TRY(wan_rename_durable(finaldir, old));
        WAN_TRY(wan_rename_durable(tmpdir, finaldir));
        WAN_TRY(wan_rm_rf(old));
    } else WAN_TRY(wan_rename_durable(tmpdir, finaldir));
    test_pause("renamed");
    if (update_latest) {
        char root[WAN_PATH_MAX], link[WAN_PATH_MAX + 16];
        wan_dirname(finaldir, root, sizeof root);
        const char *base = strrchr(finaldir, '/');
        base = base ? base + 1 : finaldir;
        snprintf(link, sizeof link, "%s/latest", root);
        WAN_TRY(wan_symlink_atomic(base, link));
        test_pause("latest");
    }
    return 0;
}

/* ---------------------------------------------------------------- reader */

int wan_ckpt_latest(const char *root, char *out, size_t n) {
    char link[WAN_PATH_MAX + 16], target[WAN_PATH_MAX];
    snprintf(link, sizeof link, "%s/latest", root);
    ssize_t len = readlink(link, target, sizeof target - 1);
    if (len > 0) {
        target[len] = 0;
        char meta[2 * WAN_PATH_MAX + 32];
        snprintf(meta, sizeof meta, "%s/%s/meta.json", root, target);
        if (wan_path_exists(meta)) {
            snprintf(out, n, "%s/%s", root, target);
            return 0;
        }
    }
    /* no usable pointer: the newest complete step directory */
    DIR *d = opendir(root);
    if (!d) return wan_fail_errno(WAN_ERR_RUNTIME, "checkpoint directory %s", root);
    long best = -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        long s;
        char rest[8];
        if (sscanf(e->d_name, "step_%ld%7s", &s, rest) != 1) continue; /* skips step_N.tmp */
        char meta[2 * WAN_PATH_MAX + 32];
        snprintf(meta, sizeof meta, "%s/%s/meta.json", root, e->d_name);
        if (s > best && wan_path_exists(meta)) best = s;
    }
    closedir(d);
    if (best < 0) return wan_fail(WAN_ERR_RUNTIME, "%s: no complete checkpoint (no step_N directory with meta.json)", root);
    snprintf(out, n, "%s/step_%08ld", root, best);
    return 0;
}

int wan_ckpt_open(wan_ckpt *c, const char *path) {
    memset(c, 0, sizeof *c);
    c->cache_tensor = -1;
    char dir[WAN_PATH_MAX], meta[WAN_PATH_MAX + 16];
    snprintf(meta, sizeof meta, "%s/meta.json", path);
    if (!wan_path_exists(meta)) {
        if (!wan_is_dir(path)) return wan_fail(WAN_ERR_RUNTIME, "checkpoint %s: no such directory", path);
        char lat[WAN_PATH_MAX + 16];
        snprintf(lat, sizeof lat, "%s/latest", path);
        if (!wan_path_exists(lat) && strstr(path, ".tmp"))
            return wan_fail(WAN_ERR_RUNTIME, "%s is an unfinished checkpoint (no meta.json): it was never committed", path);
        WAN_TRY(wan_ckpt_latest(path, dir, sizeof dir));
    } else snprintf(dir, sizeof dir, "%s", path);
    snprintf(c->dir, sizeof c->dir, "%s", dir);
    snprintf(meta, sizeof meta, "%s/meta.json", dir);
    json_error_t je;
    json_t *root = load_json(meta, &je);
    if (!root) return wan_fail(WAN_ERR_RUNTIME, "%s:%d: not valid JSON (%s): truncated or corrupt", meta, je.line, je.text);
    int rc = 0;
    const char *fmt = json_string_value(json_object_get(root, "format"));
    const char *cfgtext = json_string_value(json_object_get(root, "config"));
    json_t *tensors = json_object_get(root, "tensors"), *layout = json_object_get(root, "layout"),
           *data = json_object_get(root, "data");
    if (!fmt || strcmp(fmt, "wan-checkpoint") || json_integer_value(json_object_get(root, "version")) != 1)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: not a wan checkpoint of format version 1", meta);
    else if (!cfgtext || !json_is_array(tensors) || !json_is_object(layout) || !json_is_object(data))
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: missing config, tensors, layout or data", meta);
    if (!rc) {
        c->step = (int)json_integer_value(json_object_get(root, "step"));
        c->optimizer_step = (int)json_integer_value(json_object_get(root, "optimizer_step"));
        c->config_text = strdup(cfgtext);
        c->layout = (wan_ckpt_layout){
            (int)json_integer_value(json_object_get(layout, "tp")), (int)json_integer_value(json_object_get(layout, "cp")),
            (int)json_integer_value(json_object_get(layout, "dp")), (int)json_integer_value(json_object_get(layout, "pp")),
            (int)json_integer_value(json_object_get(layout, "world")), json_is_true(json_object_get(layout, "sp"))};
        c->data.seed = (uint64_t)json_integer_value(json_object_get(data, "seed"));
        c->data.epoch = (uint64_t)json_integer_value(json_object_get(data, "epoch"));
        c->data.position = (uint64_t)json_integer_value(json_object_get(data, "position"));
        wan_config_defaults(&c->cfg);
        char what[WAN_PATH_MAX + 32];
        snprintf(what, sizeof what, "%s (config)", meta);
        rc = wan_config_load_string(&c->cfg, cfgtext, what);
    }
    size_t i;
    json_t *tj;
    if (!rc) json_array_foreach(tensors, i, tj) {
            const char *name = json_string_value(json_object_get(tj, "name"));
            const char *kind = json_string_value(json_object_get(tj, "kind"));
            const char *dt = json_string_value(json_object_get(tj, "dtype"));
            json_t *pieces = json_object_get(tj, "pieces");
            if (!json_is_array(pieces)) {
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s has no piece list", meta, name ? name : "?");
                break;
            }
            size_t k;
            json_t *pj;
            json_array_foreach(pieces, k, pj) {
                rc = add_piece_json(c, pj, name, kind, dt, json_object_get(tj, "shape"), meta);
                if (rc) break;
            }
            if (rc) break;
        }
    json_decref(root);
    if (!rc) rc = check_coverage(c, meta);
    /* every piece must lie inside its file */
    for (int f = 0; f < c->nfiles && !rc; f++) {
        char fp[2 * WAN_PATH_MAX];
        snprintf(fp, sizeof fp, "%s/%s", c->dir, c->files[f]);
        struct stat st;
        if (stat(fp, &st) < 0) {
            rc = wan_fail_errno(WAN_ERR_RUNTIME, "checkpoint data file %s", fp);
            break;
        }
        for (int t = 0; t < c->nt && !rc; t++)
            for (int k = 0; k < c->t[t].npieces; k++) {
                const wan_ckpt_piece *p = &c->t[t].pieces[k];
                if (p->file == f && p->offset + p->nbytes > (uint64_t)st.st_size) {
                    rc = wan_fail(WAN_ERR_RUNTIME, "%s: truncated: %lld bytes, but the piece of %s (%s) ends at %llu", fp,
                                  (long long)st.st_size, c->t[t].name, wan_ckpt_kind_names[c->t[t].kind],
                                  (unsigned long long)(p->offset + p->nbytes));
                    break;
                }
            }
    }
    if (rc) wan_ckpt_close(c);
    return rc;
}

void wan_ckpt_close(wan_ckpt *c) {
    for (int i = 0; i < c->nfiles; i++)
        if (c->fds[i] >= 0) close(c->fds[i]);
    for (int i = 0; i < c->nt; i++) free(c->t[i].pieces);
    free(c->t);
    free(c->files);
    free(c->fds);
    free(c->config_text);
    free(c->cache);
    memset(c, 0, sizeof *c);
}

const wan_ckpt_tensor *wan_ckpt_find(const wan_ckpt *c, const char *name, int kind) {
    for (int i = 0; i < c->nt; i++)
        if (c->t[i].kind == kind && !strcmp(c->t[i].name, name)) return &c->t[i];
    return NULL;
}

/* Load a whole piece (verified) into the cache. */
static int load_piece(wan_ckpt *c, const wan_ckpt_tensor *t, int k, const void **data) {
    int ti = (int)(t - c->t);
    if (c->cache_tensor == ti && c->cache_piece == k) {
        *data = c->cache;
        return 0;
    }
    const wan_ckpt_piece *p = &t->pieces[k];
    char fp[2 * WAN_PATH_MAX];
    snprintf(fp, sizeof fp, "%s/%s", c->dir, c->files[p->file]);
    if (c->fds[p->file] < 0) {
        c->fds[p->file] = open(fp, O_RDONLY | O_CLOEXEC);
        if (c->fds[p->file] < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "open checkpoint data %s", fp);
    }
    if (c->cache_cap < p->nbytes) {
        free(c->cache);
        c->cache = malloc(p->nbytes);
        c->cache_cap = c->cache ? p->nbytes : 0;
        if (!c->cache) return wan_fail(WAN_ERR_RUNTIME, "out of memory reading %s", fp);
    }
    c->cache_tensor = -1;
    WAN_TRY(wan_pread_full(c->fds[p->file], c->cache, p->nbytes, p->offset, fp));
    uint64_t h = XXH3_64bits(c->cache, p->nbytes);
    if (h != p->xxh64)
        return wan_fail(WAN_ERR_RUNTIME, "%s: checksum mismatch in the piece of %s (%s) at offset %llu: corrupt checkpoint",
                        fp, t->name, wan_ckpt_kind_names[t->kind], (unsigned long long)p->offset);
    c->cache_tensor = ti;
    c->cache_piece = k;
    *data = c->cache;
    return 0;
}

int wan_ckpt_read_box(wan_ckpt *c, const wan_ckpt_tensor *t, const wan_box *box, void *dst, wan_dtype dt) {
    int64_t covered = 0;
    for (int k = 0; k < t->npieces; k++) {
        wan_box x;
        if (!wan_box_intersect(t->ndim, &t->pieces[k].box, box, &x)) continue;
        const void *data;
        WAN_TRY(load_piece(c, t, k, &data));
        copy_box(t->ndim, &x, &t->pieces[k].box, data, t->dtype, box, dst, dt);
        covered += box_volume(t->ndim, &x);
    }
    if (covered != box_volume(t->ndim, box))
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor %s (%s): the requested region is not fully stored", c->dir, t->name,
                        wan_ckpt_kind_names[t->kind]);
    return 0;
}

int wan_ckpt_fail_checksum(const wan_ckpt *c, const wan_ckpt_tensor *t, int k) {
    const wan_ckpt_piece *p = &t->pieces[k];
    return wan_fail(WAN_ERR_RUNTIME, "%s/%s: checksum mismatch in the piece of %s (%s) at offset %llu: corrupt checkpoint",
                    c->dir, c->files[p->file], t->name, wan_ckpt_kind_names[t->kind], (unsigned long long)p->offset);
}

int wan_ckpt_open_files(wan_ckpt *c) {
    for (int f = 0; f < c->nfiles; f++) {
        if (c->fds[f] >= 0) continue;
        char fp[2 * WAN_PATH_MAX];
        snprintf(fp, sizeof fp, "%s/%s", c->dir, c->files[f]);
        c->fds[f] = open(fp, O_RDONLY | O_CLOEXEC);
        if (c->fds[f] < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "open checkpoint data %s", fp);
    }
    return 0;
}

int wan_ckpt_piece_pread(const wan_ckpt *c, const wan_ckpt_tensor *t, int k, uint64_t off, void *dst, size_t n) {
    const wan_ckpt_piece *p = &t->pieces[k];
    char fp[2 * WAN_PATH_MAX];
    snprintf(fp, sizeof fp, "%s/%s", c->dir, c->files[p->file]);
    if (c->fds[p->file] < 0) return wan_fail(WAN_ERR_RUNTIME, "%s: not opened (wan_ckpt_open_files)", fp);
    if (off > p->nbytes || n > p->nbytes - off)
        return wan_fail(WAN_ERR_RUNTIME, "%s: bytes [%llu, +%zu) outside the piece of %s (%s)", fp,
                        (unsigned long long)off, n, t->name, wan_ckpt_kind_names[t->kind]);
    return wan_pread_full(c->fds[p->file], dst, n, p->offset + off, fp);
}

int wan_ckpt_piece_xxh64(const wan_ckpt *c, const wan_ckpt_tensor *t, int k, void *buf, size_t cap, uint64_t *h) {
    const wan_ckpt_piece *p = &t->pieces[k];
    XXH3_state_t *st = XXH3_createState();
    if (!st) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    XXH3_64bits_reset(st);
    int rc = 0;
    for (uint64_t off = 0; off < p->nbytes && !rc; off += cap) {
        size_t n = p->nbytes - off < cap ? (size_t)(p->nbytes - off) : cap;
        rc = wan_ckpt_piece_pread(c, t, k, off, buf, n);
        if (!rc) XXH3_64bits_update(st, buf, n);
    }
    *h = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return rc;
}

int wan_ckpt_verify(wan_ckpt *c) {
    WAN_TRY(wan_ckpt_open_files(c));
    size_t cap = 8u << 20;
    void *buf = malloc(cap);
    if (!buf) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    int rc = 0;
    for (int i = 0; i < c->nt && !rc; i++)
        for (int k = 0; k < c->t[i].npieces && !rc; k++) {
            uint64_t h;
            rc = wan_ckpt_piece_xxh64(c, &c->t[i], k, buf, cap, &h);
            if (!rc && h != c->t[i].pieces[k].xxh64) rc = wan_ckpt_fail_checksum(c, &c->t[i], k);
        }
    free(buf);
    return rc;
}
