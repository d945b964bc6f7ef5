/* wan-preprocess convert: inputs -> shards + index (format in dataset_format.h).
 *
 * Worker threads load, check, convert and compress samples; the calling thread appends them to
 * shards strictly in input order, so the output is byte-identical for any thread count. Shard
 * boundaries depend only on the compressed sizes, so a re-run after an interruption rebuilds
 * the same shards: it adopts the complete, verified shards of the earlier run (their tables
 * carry everything the index needs), redoes the rest, and writes the index last. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "config.h"
#include "dataset_build.h"
#include "dataset_format.h"
#include "dataset_input.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"

#ifndef WAN_VERSION
#define WAN_VERSION "0.0.0"
#endif

void wan_build_defaults(wan_build_opts *o) {
    memset(o, 0, sizeof *o);
    o->latent_name = "latent";
    o->text_name = "text";
    o->channels = 16;
    o->text_dim = 4096;
    o->text_len_max = 512;
    o->level = 3;
    o->shard_bytes = (uint64_t)1 << 30;
}

/* ---- one sample: load, convert, split, compress ---- */

typedef struct {
    bool done, bad;
    int rc;
    char err[1536];
    unsigned char *frame;
    size_t frame_len;
    uint64_t raw_len, xxh3, input_bytes;
    char *meta; /* the sample's index fields (JSON object text) */
} slot_t;

static void slot_clear(slot_t *s) {
    free(s->frame);
    free(s->meta);
    memset(s, 0, sizeof *s);
}

/* fp32 -> bf16 (round to nearest even; inputs are finite) split into planes, in fixed-size
 * blocks so that the compiler vectorises the loop. */
enum { BLOCK = 4096 };
static void f32_to_bf16_planes_block(unsigned char *restrict lo, unsigned char *restrict hi,
                                     const uint32_t *restrict u) {
    for (size_t i = 0; i < BLOCK; i++) {
        uint32_t x = u[i] + 0x7fffu + ((u[i] >> 16) & 1u);
        lo[i] = (unsigned char)(x >> 16);
        hi[i] = (unsigned char)(x >> 24);
    }
}

/* n elements of input type it, stored as type st, split into byte planes at dst. The default
 * (fp32 -> bf16) is one fused pass. */
static int encode_tensor(unsigned char *dst, const void *src, wan_dtype it, wan_dtype st, size_t n) {
    if (it == WAN_F32 && st == WAN_BF16) {
        const uint32_t *u = src;
        unsigned char *lo = dst, *hi = dst + n;
        size_t i = 0;
        for (; i + BLOCK <= n; i += BLOCK) f32_to_bf16_planes_block(lo + i, hi + i, u + i);
        for (; i < n; i++) {
            uint32_t x = u[i] + 0x7fffu + ((u[i] >> 16) & 1u);
            lo[i] = (unsigned char)(x >> 16);
            hi[i] = (unsigned char)(x >> 24);
        }
        return 0;
    }
    if (it == st) {
        wan_planes_split(dst, src, n, wan_dtype_size(st));
        return 0;
    }
    void *tmp = malloc(n * wan_dtype_size(st) + 1);
    if (!tmp) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    wan_convert(tmp, st, src, it, n);
    wan_planes_split(dst, tmp, n, wan_dtype_size(st));
    free(tmp);
    return 0;
}

static int encode_sample(const wan_build_opts *o, const wan_input_sample *in, const wan_input_limits *lim,
                         ZSTD_CCtx *cctx, slot_t *r) {
    wan_input_tensors t;
    WAN_TRY(wan_input_load(in, lim, &t));
    wan_dtype ld = o->keep_dtype ? t.latent_dtype : WAN_BF16, td = o->keep_dtype ? t.text_dtype : WAN_BF16;
    size_t nl = (size_t)(t.C * t.F * t.H * t.W);
    /* Drop the all-zero rows at the end of the text (bitwise zero: restoring them is exact). */
    int64_t rows = t.rows;
    size_t row_bytes = (size_t)t.dim * wan_dtype_size(t.text_dtype);
    while (rows > 0) {
        const unsigned char *row = (const unsigned char *)t.text + (size_t)(rows - 1) * row_bytes;
        if (row[0] || memcmp(row, row + 1, row_bytes - 1)) break; /* all bytes equal to the first, zero */
        rows--;
    }
    size_t ntr = (size_t)rows * (size_t)t.dim;
    int rc = 0;
    r->raw_len = wan_raw_bytes(nl, ld, ntr, td);
    unsigned char *raw = malloc(r->raw_len + 1);
    size_t bound = ZSTD_compressBound(r->raw_len);
    r->frame = malloc(bound);
    if (!raw || !r->frame) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    if (!rc) rc = encode_tensor(raw, t.latent, t.latent_dtype, ld, nl);
    if (!rc) rc = encode_tensor(raw + nl * wan_dtype_size(ld), t.text, t.text_dtype, td, ntr);
    if (!rc) {
        size_t z = ZSTD_compressCCtx(cctx, r->frame, bound, raw, r->raw_len, o->level);
        if (ZSTD_isError(z)) rc = wan_fail(WAN_ERR_RUNTIME, "sample '%s': zstd: %s", in->id, ZSTD_getErrorName(z));
        else r->frame_len = z;
    }
    if (!rc) {
        r->xxh3 = XXH3_64bits(r->frame, r->frame_len);
        r->input_bytes = t.input_bytes;
        json_t *m = json_object();
        json_object_set_new(m, "id", json_string(in->id));
        json_object_set_new(m, "latent", json_pack("[IIII]", (json_int_t)t.C, (json_int_t)t.F, (json_int_t)t.H,
                                                   (json_int_t)t.W));
        json_object_set_new(m, "latent_dtype", json_string(wan_dtype_name(ld)));
        json_object_set_new(m, "text_len", json_integer(rows));
        json_object_set_new(m, "text_dim", json_integer(t.dim));
        json_object_set_new(m, "text_dtype", json_string(wan_dtype_name(td)));
        json_object_set_new(m, "input_bytes", json_integer((json_int_t)t.input_bytes));
        json_object_update(m, in->extra);
        r->meta = json_dumps(m, JSON_COMPACT);
        json_decref(m);
        if (!r->meta) rc = wan_fail(WAN_ERR_RUNTIME, "sample '%s': cannot encode its metadata as JSON", in->id);
    }
    free(raw);
    wan_input_tensors_free(&t);
    return rc;
}

/* ---- the worker pool: samples in, slots out, in a window ahead of the writer ---- */

typedef struct {
    const wan_build_opts *o;
    const wan_input_sample *in; /* this part's samples */
    int64_t n;
    wan_input_limits lim;
    slot_t *slots;
    int nslots;
    int64_t next, written;
    bool stop;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
} pipe_t;

static void *worker(void *arg) {
    pipe_t *p = arg;
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->next < p->n && p->next >= p->written + p->nslots) pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop || p->next >= p->n) break;
        int64_t ord = p->next++;
        pthread_mutex_unlock(&p->mu);
        slot_t r = {0};
        r.rc = cctx ? encode_sample(p->o, &p->in[ord], &p->lim, cctx, &r) : wan_fail(WAN_ERR_RUNTIME, "out of memory");
        if (r.rc) {
            snprintf(r.err, sizeof r.err, "%s", wan_errmsg());
            r.bad = p->o->skip_bad;
            free(r.frame);
            free(r.meta);
            r.frame = NULL;
            r.meta = NULL;
        }
        r.done = true;
        pthread_mutex_lock(&p->mu);
        p->slots[ord % p->nslots] = r;
        pthread_cond_broadcast(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    ZSTD_freeCCtx(cctx);
    return NULL;
}

/* ---- shards ---- */

typedef struct {
    int fd;
    char path[WAN_PATH_MAX], tmp[WAN_PATH_MAX + 32];
    uint64_t off, first;
    XXH3_state_t *h;
    wan_shard_rec *recs;
    int64_t n, cap;
    json_t *samples, *skipped;
} shard_w;

/* What the index needs of every shard and sample, accumulated in order. */
typedef struct {
    const wan_build_opts *o;
    char dir[WAN_PATH_MAX];
    uint64_t run_key;
    int64_t nshards, nsamples, nskipped;
    uint64_t input_bytes, stored_bytes;
    char **shard_lines;
    int64_t shard_cap;
    FILE *body; /* sample lines */
    char body_path[WAN_PATH_MAX + 64];
    json_t *report; /* skipped inputs, in order */
} build_t;

static void shard_name(char *buf, size_t n, int64_t k) { snprintf(buf, n, "shard-%06lld.wls", (long long)k); }

/* The index line of a sample: placement fields, then its metadata fields in their order. */
static char *index_line(json_t *meta, int64_t shard, const wan_shard_rec *r) {
    json_t *l = json_object();
    char hex[17];
    wan_hex64(r->xxh3, hex);
    json_object_set(l, "id", json_object_get(meta, "id"));
    json_object_set_new(l, "shard", json_integer(shard));
    json_object_set_new(l, "offset", json_integer((json_int_t)r->offset));
    json_object_set_new(l, "stored", json_integer((json_int_t)r->stored));
    json_object_set_new(l, "raw", json_integer((json_int_t)r->raw));
    json_object_set_new(l, "xxh3", json_string(hex));
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) if (strcmp(k, "id")) json_object_set(l, k, v);
    char *s = json_dumps(l, JSON_COMPACT);
    json_decref(l);
    return s;
}

/* Record a finished shard (fresh or adopted) in the index being built. */
static int add_shard(build_t *b, const char *name, uint64_t bytes, uint64_t xxh3, const wan_shard_rec *recs,
                     int64_t n, json_t *samples, json_t *skipped) {
    if (b->nshards == b->shard_cap) {
        b->shard_cap = b->shard_cap ? 2 * b->shard_cap : 64;
        char **p = realloc(b->shard_lines, (size_t)b->shard_cap * sizeof *p);
        if (!p) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
        b->shard_lines = p;
    }
    char hex[17];
    wan_hex64(xxh3, hex);
    json_t *sl = json_pack("{sIsssIsIss}", "shard", (json_int_t)b->nshards, "path", name, "bytes", (json_int_t)bytes,
                           "samples", (json_int_t)n, "xxh3", hex);
    b->shard_lines[b->nshards] = json_dumps(sl, JSON_COMPACT);
    json_decref(sl);
    for (int64_t i = 0; i < n; i++) {
        json_t *m = json_array_get(samples, (size_t)i);
        char *line = index_line(m, b->nshards, &recs[i]);
        if (!line || fprintf(b->body, "%s\n", line) < 0) {
            free(line);
            return wan_fail_errno(WAN_ERR_RUNTIME, "write %s", b->body_path);
        }
        free(line);
        json_t *ib = json_object_get(m, "input_bytes");
        b->input_bytes += json_is_integer(ib) ? (uint64_t)json_integer_value(ib) : 0;
        b->stored_bytes += recs[i].stored;
    }
    size_t i;
    json_t *v;
    json_array_foreach(skipped, i, v) json_array_append(b->report, v);
    b->nskipped += (int64_t)json_array_size(skipped);
    b->nsamples += n;
    b->nshards++;
    return 0;
}

static int shard_open(shard_w *w, build_t *b, uint64_t first) {
    memset(w, 0, sizeof *w);
    char name[64];
    shard_name(name, sizeof name, b->nshards);
    WAN_TRY(wan_path_join(w->path, sizeof w->path, b->dir, name));
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%d", w->path, (int)getpid());
    w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "create %s", w->tmp);
    w->h = XXH3_createState();
    XXH3_64bits_reset(w->h);
    w->first = first;
    w->samples = json_array();
    w->skipped = json_array();
    unsigned char hdr[WAN_SHARD_HEADER_BYTES] = {0};
    memcpy(hdr, WAN_SHARD_MAGIC, 8);
    hdr[8] = WAN_DS_VERSION;
    WAN_TRY(wan_write_full(w->fd, hdr, sizeof hdr, w->tmp));
    XXH3_64bits_update(w->h, hdr, sizeof hdr);
    w->off = sizeof hdr;
    return 0;
}

static void shard_discard(shard_w *w) {
    if (w->fd > 0) {
        close(w->fd);
        unlink(w->tmp);
    }
    XXH3_freeState(w->h);
    free(w->recs);
    json_decref(w->samples);
    json_decref(w->skipped);
    memset(w, 0, sizeof *w);
}

static int shard_append(shard_w *w, const slot_t *r) {
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 256;
        wan_shard_rec *p = realloc(w->recs, (size_t)w->cap * sizeof *p);
        if (!p) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
        w->recs = p;
    }
    WAN_TRY(wan_write_full(w->fd, r->frame, r->frame_len, w->tmp));
    /* Start writing back now, so that the fsync at the end of the shard has little left to do. */
    sync_file_range(w->fd, (off_t)w->off, (off_t)r->frame_len, SYNC_FILE_RANGE_WRITE);
    XXH3_64bits_update(w->h, r->frame, r->frame_len);
    w->recs[w->n++] = (wan_shard_rec){w->off, r->frame_len, r->raw_len, r->xxh3};
    w->off += r->frame_len;
    json_error_t jerr;
    json_t *m = json_loads(r->meta, 0, &jerr);
    if (!m) return wan_fail(WAN_ERR_RUNTIME, "internal: sample metadata does not parse: %s", jerr.text);
    json_array_append_new(w->samples, m);
    return 0;
}

/* Table, metadata and footer; fsync; rename to the final name; record it for the index. */
static int shard_close(shard_w *w, build_t *b, uint64_t end) {
    json_t *meta = json_pack("{sOsO}", "samples", w->samples, "skipped", w->skipped);
    char *mt = json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    size_t tb = (size_t)w->n * WAN_SHARD_REC_BYTES, ml = mt ? strlen(mt) : 0;
    unsigned char *tail = malloc(tb + ml + WAN_SHARD_FOOTER_BYTES);
    int rc = (!mt || !tail) ? wan_fail(WAN_ERR_RUNTIME, "out of memory") : 0;
    if (!rc) {
        for (int64_t i = 0; i < w->n; i++) {
            unsigned char *p = tail + i * WAN_SHARD_REC_BYTES;
            wan_put_u64(p, w->recs[i].offset);
            wan_put_u64(p + 8, w->recs[i].stored);
            wan_put_u64(p + 16, w->recs[i].raw);
            wan_put_u64(p + 24, w->recs[i].xxh3);
        }
        memcpy(tail + tb, mt, ml);
        wan_shard_footer f = {w->off, (uint64_t)w->n, ml, w->first, end, b->run_key, XXH3_64bits(tail, tb + ml)};
        wan_shard_footer_encode(&f, tail + tb + ml);
        size_t total = tb + ml + WAN_SHARD_FOOTER_BYTES;
        rc = wan_write_full(w->fd, tail, total, w->tmp);
        XXH3_64bits_update(w->h, tail, total);
        w->off += total;
    }
    if (!rc && fsync(w->fd) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "fsync %s", w->tmp);
    if (close(w->fd) < 0 && !rc) rc = wan_fail_errno(WAN_ERR_RUNTIME, "close %s", w->tmp);
    w->fd = -1;
    if (!rc) rc = wan_rename_durable(w->tmp, w->path);
    if (rc) unlink(w->tmp);
    if (!rc) {
        char name[64];
        shard_name(name, sizeof name, b->nshards);
        rc = add_shard(b, name, w->off, XXH3_64bits_digest(w->h), w->recs, w->n, w->samples, w->skipped);
    }
    free(mt);
    free(tail);
    shard_discard(w);
    return rc;
}

/* ---- resume: adopt the complete shards of an earlier run ---- */

/* Check shard k of an earlier run completely; on success add it to the index being built and
 * set *end to the input position after it. A failure says why (the caller redoes the shard). */
static int adopt_shard(build_t *b, const char *path, uint64_t first, uint64_t n, uint64_t *end) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "open %s", path);
    struct stat st;
    wan_shard_footer f;
    wan_shard_rec *t = NULL;
    char *meta = NULL;
    json_t *mj = NULL;
    unsigned char *buf = NULL;
    XXH3_state_t *h = XXH3_createState();
    XXH3_64bits_reset(h);
    int rc = fstat(fd, &st) < 0 ? wan_fail_errno(WAN_ERR_RUNTIME, "stat %s", path) : 0;
    if (!rc) rc = wan_shard_read_table(fd, path, (uint64_t)st.st_size, &f, &t, &meta);
    if (!rc && f.run_key != b->run_key)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: written from other inputs or options", path);
    if (!rc && (f.first_ordinal != first || f.end_ordinal <= first || f.end_ordinal > n))
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: covers inputs [%llu, %llu), expected to start at %llu", path,
                      (unsigned long long)f.first_ordinal, (unsigned long long)f.end_ordinal, (unsigned long long)first);
    if (!rc) {
        json_error_t jerr;
        mj = json_loads(meta, 0, &jerr);
        if (!json_is_array(json_object_get(mj, "samples")) || !json_is_array(json_object_get(mj, "skipped")) ||
            json_array_size(json_object_get(mj, "samples")) != f.samples)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: shard metadata does not list its %llu samples", path,
                          (unsigned long long)f.samples);
    }
    /* Every byte once: header, records (each against its checksum), then the tail. */
    uint64_t pos = WAN_SHARD_HEADER_BYTES;
    unsigned char hdr[WAN_SHARD_HEADER_BYTES];
    if (!rc) rc = wan_pread_full(fd, hdr, sizeof hdr, 0, path);
    if (!rc) XXH3_64bits_update(h, hdr, sizeof hdr);
    size_t cap = 0;
    for (uint64_t i = 0; !rc && i < f.samples; i++) {
        if (t[i].offset != pos)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: record %llu is not where the previous one ends", path,
                          (unsigned long long)i);
        else if (t[i].stored > cap) {
            free(buf);
            cap = (size_t)t[i].stored;
            buf = malloc(cap);
            if (!buf) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        }
        if (!rc) rc = wan_pread_full(fd, buf, t[i].stored, pos, path);
        if (!rc && XXH3_64bits(buf, t[i].stored) != t[i].xxh3)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: record %llu: checksum mismatch", path, (unsigned long long)i);
        if (!rc) XXH3_64bits_update(h, buf, t[i].stored);
        pos += t[i].stored;
    }
    if (!rc && pos != f.table_offset) rc = wan_fail(WAN_ERR_RUNTIME, "%s: records do not end at the table", path);
    if (!rc) {
        size_t tl = (size_t)((uint64_t)st.st_size - pos);
        free(buf);
        buf = malloc(tl);
        if (!buf) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        if (!rc) rc = wan_pread_full(fd, buf, tl, pos, path);
        if (!rc) XXH3_64bits_update(h, buf, tl);
    }
    close(fd);
    if (!rc) {
        char name[64];
        shard_name(name, sizeof name, b->nshards);
        rc = add_shard(b, name, (uint64_t)st.st_size, XXH3_64bits_digest(h), t, (int64_t)f.samples,
                       json_object_get(mj, "samples"), json_object_get(mj, "skipped"));
        *end = f.end_ordinal;
    }
    XXH3_freeState(h);
    json_decref(mj);
    free(buf);
    free(t);
    free(meta);
    return rc;
}

/* Remove shards numbered from `from` on and temporary files: leftovers of an interrupted run. */
static int remove_leftovers(const char *dir, int64_t from, const char *keep) {
    DIR *d = opendir(dir);
    if (!d) return wan_fail_errno(WAN_ERR_RUNTIME, "open %s", dir);
    struct dirent *e;
    int rc = 0;
    while (!rc && (e = readdir(d))) {
        long long k;
        char tail[8];
        bool is_shard = sscanf(e->d_name, "shard-%6lld.wl%1s", &k, tail) == 2 && !strcmp(tail, "s") &&
                        strlen(e->d_name) == 16;
        bool is_tmp = strstr(e->d_name, ".tmp.") != NULL && !(keep && !strcmp(e->d_name, keep));
        if (!(is_shard && k >= from) && !is_tmp) continue;
        char p[WAN_PATH_MAX];
        rc = wan_path_join(p, sizeof p, dir, e->d_name);
        if (!rc && unlink(p) < 0 && errno != ENOENT) rc = wan_fail_errno(WAN_ERR_RUNTIME, "remove %s", p);
    }
    closedir(d);
    return rc;
}

/* ---- keys ---- */

/* The key of the whole conversion (all inputs and every option that changes the bytes), and of
 * this part of it: shards of an earlier run are adopted only under the same key. */
static uint64_t manifest_key(const wan_build_opts *o, const wan_input_list *l) {
    XXH3_state_t *h = XXH3_createState();
    XXH3_64bits_reset(h);
    char opts[512];
    int n = snprintf(opts, sizeof opts,
                     "%s/%d channels=%d text_dim=%d text_len=%d keep_dtype=%d level=%d shard_bytes=%llu skip_bad=%d",
                     WAN_DS_FORMAT, WAN_DS_VERSION, o->channels, o->text_dim, o->text_len_max, o->keep_dtype,
                     o->level, (unsigned long long)o->shard_bytes, o->skip_bad);
    XXH3_64bits_update(h, opts, (size_t)n + 1);
    for (int64_t i = 0; i < l->n; i++) {
        const wan_input_sample *s = &l->s[i];
        const char *parts[] = {s->id, s->latent_path, s->text_path, s->latent_name, s->text_name};
        for (int k = 0; k < 5; k++) XXH3_64bits_update(h, parts[k], strlen(parts[k]) + 1);
        char *ex = json_dumps(s->extra, JSON_COMPACT);
        if (ex) XXH3_64bits_update(h, ex, strlen(ex) + 1);
        free(ex);
    }
    uint64_t k = XXH3_64bits_digest(h);
    XXH3_freeState(h);
    return k;
}

static json_t *options_json(const wan_build_opts *o) {
    return json_pack("{sisisisbsisIssss}", "channels", o->channels, "text_dim", o->text_dim, "text_len",
                     o->text_len_max, "keep_dtype", o->keep_dtype, "level", o->level, "shard_bytes",
                     (json_int_t)o->shard_bytes, "latent_name", o->latent_name, "text_name", o->text_name);
}

static int write_report(const char *path, json_t *report) {
    size_t len = 0, cap = 4096, i;
    char *buf = malloc(cap);
    json_t *v;
    int rc = buf ? 0 : wan_fail(WAN_ERR_RUNTIME, "out of memory");
    json_array_foreach(report, i, v) {
        if (rc) break;
        char *s = json_dumps(v, JSON_COMPACT);
        size_t l = s ? strlen(s) : 0;
        if (len + l + 2 > cap) {
            while (len + l + 2 > cap) cap *= 2;
            char *p = realloc(buf, cap);
            if (!p) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
            else buf = p;
        }
        if (!rc && s) {
            memcpy(buf + len, s, l);
            buf[len + l] = '\n';
            len += l + 1;
        }
        free(s);
    }
    if (!rc) rc = wan_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}

/* ---- convert ---- */

int wan_build_convert(const wan_build_opts *o) {
    double t0 = wan_now();
    int nparts = o->nparts > 1 ? o->nparts : 1, part = nparts > 1 ? o->part : 0;
    if (part < 0 || part >= nparts) return wan_fail(WAN_ERR_USAGE, "--part %d/%d: expected 0 <= i < n", part, nparts);
    if (o->shard_bytes < 1024) return wan_fail(WAN_ERR_USAGE, "--shard-size %llu: at least 1 KiB", (unsigned long long)o->shard_bytes);
    if (o->level < 1 || o->level > ZSTD_maxCLevel())
        return wan_fail(WAN_ERR_USAGE, "--level %d: expected 1..%d", o->level, ZSTD_maxCLevel());
    wan_input_list l;
    WAN_TRY(wan_input_list_load(o->input, o->latent_name, o->text_name, &l));
    int64_t lo = l.n * part / nparts, hi = l.n * (part + 1) / nparts, n = hi - lo;
    build_t b = {.o = o, .report = json_array()};
    uint64_t mkey = manifest_key(o, &l);
    unsigned char kb[24];
    wan_put_u64(kb, mkey);
    wan_put_u64(kb + 8, (uint64_t)part);
    wan_put_u64(kb + 16, (uint64_t)nparts);
    b.run_key = XXH3_64bits(kb, sizeof kb);
    int rc = 0;
    if (nparts > 1) {
        char sub[64];
        snprintf(sub, sizeof sub, "part-%04d-of-%04d", part, nparts);
        rc = wan_path_join(b.dir, sizeof b.dir, o->out_dir, sub);
    } else {
        snprintf(b.dir, sizeof b.dir, "%s", o->out_dir);
    }
    if (!rc) rc = wan_mkdir_p(b.dir);
    char index_path[WAN_PATH_MAX], report_path[WAN_PATH_MAX];
    if (!rc) rc = wan_path_join(index_path, sizeof index_path, b.dir, WAN_DS_INDEX);
    if (!rc) {
        if (o->report) snprintf(report_path, sizeof report_path, "%s", o->report);
        else rc = wan_path_join(report_path, sizeof report_path, b.dir, "skipped.jsonl");
    }
    char rk[17];
    wan_hex64(b.run_key, rk);
    /* A finished dataset from the same inputs and options is left alone; another one is not
     * overwritten without --force. */
    if (!rc && wan_path_exists(index_path)) {
        wan_ds_index ix;
        const char *have = NULL;
        json_t *h = NULL;
        if (!wan_ds_index_load(b.dir, &ix)) {
            h = json_loads(ix.header, 0, NULL);
            have = json_string_value(json_object_get(h, "run_key"));
            wan_ds_index_free(&ix);
        }
        bool same = have && !strcmp(have, rk);
        json_decref(h);
        if (same) {
            wan_info("%s: already complete (same inputs and options); nothing to do", b.dir);
            wan_input_list_free(&l);
            json_decref(b.report);
            return 0;
        }
        if (!o->force) rc = wan_fail(WAN_ERR_USAGE, "%s already holds a dataset from other inputs or options "
                                     "(or a damaged one); use --force to replace it, or another directory", b.dir);
        else if (unlink(index_path) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "remove %s", index_path);
        else rc = remove_leftovers(b.dir, 0, NULL);
    }
    snprintf(b.body_path, sizeof b.body_path, "%s/.index-body.tmp.%d", b.dir, (int)getpid());
    if (!rc && !(b.body = fopen(b.body_path, "w"))) rc = wan_fail_errno(WAN_ERR_RUNTIME, "create %s", b.body_path);

    /* Resume: adopt complete shards in order; redo from the first that is missing or bad. */
    uint64_t start = 0;
    for (;;) {
        if (rc || (int64_t)start >= n) break;
        char name[64], p[WAN_PATH_MAX];
        shard_name(name, sizeof name, b.nshards);
        if ((rc = wan_path_join(p, sizeof p, b.dir, name)) || !wan_path_exists(p)) break;
        uint64_t end = 0;
        if (adopt_shard(&b, p, start, (uint64_t)n, &end)) {
            wan_warn("not reusing %s (%s): redoing it", name, wan_errmsg());
            break;
        }
        start = end;
    }
    if (!rc && b.nshards)
        wan_info("%s: resuming: %lld complete shards hold inputs 0..%llu of %lld", b.dir, (long long)b.nshards,
                 (unsigned long long)start - 1, (long long)n);
    if (!rc) rc = remove_leftovers(b.dir, b.nshards, strrchr(b.body_path, '/') + 1);

    /* Workers encode ahead of the writer, which appends in input order. */
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads < 1) threads = 1;
    pipe_t p = {.o = o, .in = l.s + lo, .n = n, .next = (int64_t)start, .written = (int64_t)start,
                .lim = {o->channels, o->text_dim, o->text_len_max}};
    p.nslots = 2 * threads + 2;
    p.slots = calloc((size_t)p.nslots, sizeof *p.slots);
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.cv_work, NULL);
    pthread_cond_init(&p.cv_done, NULL);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    int started = 0;
    if (!rc && (!p.slots || !tids)) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (; !rc && started < threads && (int64_t)start < n; started++)
        if (pthread_create(&tids[started], NULL, worker, &p)) rc = wan_fail(WAN_ERR_RUNTIME, "cannot start a thread");

    const char *crash = getenv("WAN_PREPROCESS_CRASH_AFTER"); /* test hook: die mid-run like a killed job */
    int64_t crash_after = crash ? atoll(crash) : -1, committed = 0;
    shard_w w = {0};
    bool open_ = false;
    json_t *pending = json_array(); /* skipped inputs not yet in a shard */
    uint64_t prev_end = start, in_bytes = 0;
    wan_progress pr;
    wan_progress_begin(&pr, "convert", (uint64_t)(n - (int64_t)start), false);
    for (int64_t ord = (int64_t)start; !rc && ord < n; ord++) {
        slot_t *s = &p.slots[ord % p.nslots];
        pthread_mutex_lock(&p.mu);
        while (!s->done) pthread_cond_wait(&p.cv_done, &p.mu);
        pthread_mutex_unlock(&p.mu);
        const wan_input_sample *in = &p.in[ord];
        if (s->rc && !s->bad) {
            rc = wan_fail(s->rc, "%s", s->err);
        } else if (s->bad) {
            json_t *e = json_pack("{sIsssIss}", "ordinal", (json_int_t)(lo + ord), "id", in->id, "line",
                                  (json_int_t)in->line, "error", s->err);
            json_array_append_new(open_ ? w.skipped : pending, e);
            wan_warn("skipping %s", s->err);
        } else {
            in_bytes += s->input_bytes;
            if (open_ && w.n > 0 && w.off - WAN_SHARD_HEADER_BYTES + s->frame_len > o->shard_bytes) {
                rc = shard_close(&w, &b, (uint64_t)ord);
                open_ = false;
                prev_end = (uint64_t)ord;
                committed++;
            }
            if (!rc && !open_) {
                rc = shard_open(&w, &b, prev_end);
                open_ = !rc;
                if (open_) {
                    json_array_extend(w.skipped, pending);
                    json_array_clear(pending);
                }
            }
            if (!rc) rc = shard_append(&w, s);
            if (!rc && committed == crash_after) {
                wan_warn("WAN_PREPROCESS_CRASH_AFTER=%lld: exiting abruptly", (long long)crash_after);
                _exit(75);
            }
        }
        slot_clear(s);
        pthread_mutex_lock(&p.mu);
        p.written = ord + 1;
        pthread_cond_broadcast(&p.cv_work);
        pthread_mutex_unlock(&p.mu);
        wan_progress_add(&pr, 1);
    }
    pthread_mutex_lock(&p.mu);
    p.stop = true;
    pthread_cond_broadcast(&p.cv_work);
    pthread_mutex_unlock(&p.mu);
    for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
    for (int i = 0; p.slots && i < p.nslots; i++) slot_clear(&p.slots[i]);
    free(p.slots);
    free(tids);
    pthread_mutex_destroy(&p.mu);
    pthread_cond_destroy(&p.cv_work);
    pthread_cond_destroy(&p.cv_done);
    if (!rc && open_) rc = shard_close(&w, &b, (uint64_t)n);
    else if (open_) shard_discard(&w);
    if (!rc) wan_progress_end(&pr);
    json_array_extend(b.report, pending);
    b.nskipped += (int64_t)json_array_size(pending);
    json_decref(pending);
    if (b.body && fclose(b.body) && !rc) rc = wan_fail_errno(WAN_ERR_RUNTIME, "write %s", b.body_path);
    b.body = NULL;

    /* The report, then the index: the commit point. */
    if (!rc && (o->skip_bad || b.nskipped)) rc = write_report(report_path, b.report);
    else if (!rc && !o->report && wan_path_exists(report_path)) unlink(report_path);
    /* A part may be empty (more array tasks than inputs); a whole conversion may not. */
    if (!rc && b.nsamples == 0 && (nparts == 1 || n > 0))
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: no usable samples (%lld skipped, see %s)", l.source, (long long)b.nskipped,
                      report_path);
    if (!rc) {
        json_t *h = json_pack("{sssisIsIsIsIsIsIssss}", "format", WAN_DS_FORMAT, "version", WAN_DS_VERSION, "samples",
                              (json_int_t)b.nsamples, "shards", (json_int_t)b.nshards, "skipped",
                              (json_int_t)b.nskipped, "inputs", (json_int_t)n, "input_bytes",
                              (json_int_t)b.input_bytes, "stored_bytes", (json_int_t)b.stored_bytes, "run_key", rk,
                              "writer", "wan-preprocess " WAN_VERSION);
        char mk[17];
        wan_hex64(mkey, mk);
        json_object_set_new(h, "manifest_key", json_string(mk));
        if (nparts > 1) json_object_set_new(h, "part", json_pack("[ii]", part, nparts));
        json_object_set_new(h, "options", options_json(o));
        char *hs = json_dumps(h, JSON_COMPACT);
        json_decref(h);
        rc = hs ? wan_ds_index_write(index_path, hs, b.shard_lines, b.nshards, b.body_path)
                : wan_fail(WAN_ERR_RUNTIME, "out of memory");
        free(hs);
    }
    unlink(b.body_path);
    if (!rc) {
        double el = wan_now() - t0;
        wan_info("%s: %lld samples (%lld skipped) in %lld shards; this run read %.1f MB of inputs in %.1f s "
                 "(%.1f MB/s); input %.1f MB -> stored %.1f MB (ratio %.2f)",
                 b.dir, (long long)b.nsamples, (long long)b.nskipped, (long long)b.nshards, in_bytes / 1e6, el,
                 el > 0 ? in_bytes / 1e6 / el : 0, b.input_bytes / 1e6, b.stored_bytes / 1e6,
                 b.stored_bytes ? (double)b.input_bytes / (double)b.stored_bytes : 0);
    }
    for (int64_t i = 0; i < b.nshards; i++) free(b.shard_lines[i]);
    free(b.shard_lines);
    json_decref(b.report);
    wan_input_list_free(&l);
    return rc;
}
