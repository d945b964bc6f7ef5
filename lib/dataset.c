/* The dataset reader: the index in memory, shards opened on first use, one positioned read
 * per sample, checksum verification, zstd decompression, byte planes back to fp32. Safe to
 * call from several threads at once (the loader's prefetch workers do). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include "config.h"
#include "dataset_format.h"
#include "error.h"
#include "fsutil.h"

struct wan_dataset {
    char dir[WAN_PATH_MAX];
    wan_ds_index ix;
    int *fds;      /* per shard, -1 until first use */
    bool *checked; /* table checked against the index */
    pthread_mutex_t mu;
};

/* Per-thread scratch: a decompression context and buffers that grow to the largest sample. */
typedef struct {
    ZSTD_DCtx *dctx;
    unsigned char *stored, *raw;
    size_t stored_cap, raw_cap;
} read_scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p) {
    read_scratch *s = p;
    if (!s) return;
    ZSTD_freeDCtx(s->dctx);
    free(s->stored);
    free(s->raw);
    free(s);
}
static void scratch_init(void) { pthread_key_create(&scratch_key, scratch_free); }

static read_scratch *scratch_get(size_t stored, size_t raw) {
    pthread_once(&scratch_once, scratch_init);
    read_scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return NULL;
        s->dctx = ZSTD_createDCtx();
        pthread_setspecific(scratch_key, s);
    }
    if (stored > s->stored_cap) {
        free(s->stored);
        s->stored = malloc(stored);
        s->stored_cap = s->stored ? stored : 0;
    }
    if (raw > s->raw_cap) {
        free(s->raw);
        s->raw = malloc(raw);
        s->raw_cap = s->raw ? raw : 0;
    }
    if (!s->dctx || s->stored_cap < stored || s->raw_cap < raw) return NULL;
    return s;
}

int wan_dataset_open(const char *dir, wan_dataset **out) {
    *out = NULL;
    wan_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    snprintf(ds->dir, sizeof ds->dir, "%s", dir);
    int rc = wan_ds_index_load(dir, &ds->ix);
    if (rc) {
        free(ds);
        return rc;
    }
    int64_t ns = ds->ix.nshards ? ds->ix.nshards : 1;
    ds->fds = malloc((size_t)ns * sizeof *ds->fds);
    ds->checked = calloc((size_t)ns, sizeof *ds->checked);
    if (!ds->fds || !ds->checked) {
        wan_dataset_close(ds);
        return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    }
    for (int64_t i = 0; i < ns; i++) ds->fds[i] = -1;
    pthread_mutex_init(&ds->mu, NULL);
    *out = ds;
    return 0;
}

void wan_dataset_close(wan_dataset *ds) {
    if (!ds) return;
    if (ds->fds) {
        for (int64_t i = 0; i < ds->ix.nshards; i++)
            if (ds->fds[i] >= 0) close(ds->fds[i]);
        pthread_mutex_destroy(&ds->mu);
    }
    free(ds->fds);
    free(ds->checked);
    wan_ds_index_free(&ds->ix);
    free(ds);
}

int64_t wan_dataset_count(const wan_dataset *ds) { return ds->ix.n; }
const wan_ds_index *wan_dataset_index(const wan_dataset *ds) { return &ds->ix; }
const char *wan_dataset_dir(const wan_dataset *ds) { return ds->dir; }

int wan_dataset_info(const wan_dataset *ds, int64_t index, wan_sample_info *info) {
    if (index < 0 || index >= ds->ix.n)
        return wan_fail(WAN_ERR_USAGE, "%s: sample %lld out of range (the dataset has %lld)", ds->dir,
                        (long long)index, (long long)ds->ix.n);
    const wan_ds_entry *e = &ds->ix.e[index];
    memset(info, 0, sizeof *info);
    info->index = index;
    snprintf(info->id, sizeof info->id, "%s", ds->ix.ids + e->id);
    info->C = e->C, info->F = e->F, info->H = e->H, info->W = e->W;
    info->text_len = e->text_len;
    info->text_dim = e->text_dim;
    return 0;
}

/* Check shard s's footer and table against the index. Caller holds ds->mu. */
static int check_shard_locked(wan_dataset *ds, int s, const char *path) {
    const wan_ds_shard *sh = &ds->ix.shards[s];
    wan_shard_footer f;
    wan_shard_rec *t;
    char *meta;
    WAN_TRY(wan_shard_read_table(ds->fds[s], path, sh->bytes, &f, &t, &meta));
    free(meta);
    int rc = 0;
    if ((int64_t)f.samples != sh->samples)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: the shard holds %llu samples, the index says %lld", path,
                      (unsigned long long)f.samples, (long long)sh->samples);
    for (int64_t k = 0; !rc && k < sh->samples; k++) {
        const wan_ds_entry *e = &ds->ix.e[sh->first + k];
        if (t[k].offset != e->offset || t[k].stored != e->stored || t[k].raw != e->raw || t[k].xxh3 != e->xxh3)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: offset table entry %lld disagrees with the index for sample %lld ('%s')",
                          path, (long long)k, (long long)(sh->first + k), ds->ix.ids + e->id);
    }
    free(t);
    return rc;
}

/* The shard's descriptor, opened (and with verify, checked) on first use. */
static int shard_fd(wan_dataset *ds, int s, bool verify, bool *corrupt, int *fd) {
    const wan_ds_shard *sh = &ds->ix.shards[s];
    char path[WAN_PATH_MAX];
    WAN_TRY(wan_path_join(path, sizeof path, ds->dir, sh->path));
    pthread_mutex_lock(&ds->mu);
    int rc = 0;
    if (ds->fds[s] < 0) {
        int f = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (f < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "%s: open shard", path);
        else if (fstat(f, &st) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "stat %s", path);
        else if ((uint64_t)st.st_size != sh->bytes) {
            *corrupt = true;
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: %llu bytes, the index says %llu: %s shard", path,
                          (unsigned long long)st.st_size, (unsigned long long)sh->bytes,
                          (uint64_t)st.st_size < sh->bytes ? "truncated" : "wrong");
        }
        if (rc && f >= 0) close(f);
        if (!rc) ds->fds[s] = f;
    }
    if (!rc && verify && !ds->checked[s]) {
        rc = check_shard_locked(ds, s, path);
        if (rc) *corrupt = true;
        else ds->checked[s] = true;
    }
    *fd = ds->fds[s];
    pthread_mutex_unlock(&ds->mu);
    return rc;
}

int wan_dataset_check_shard(wan_dataset *ds, int shard) {
    bool corrupt = false;
    int fd;
    return shard_fd(ds, shard, true, &corrupt, &fd);
}

int wan_dataset_read_ex(wan_dataset *ds, int64_t index, float *latent, float *text, int text_len_model, bool verify,
                        bool *corrupt) {
    *corrupt = false;
    if (index < 0 || index >= ds->ix.n)
        return wan_fail(WAN_ERR_USAGE, "%s: sample %lld out of range (the dataset has %lld)", ds->dir,
                        (long long)index, (long long)ds->ix.n);
    const wan_ds_entry *e = &ds->ix.e[index];
    const char *id = ds->ix.ids + e->id, *shard = ds->ix.shards[e->shard].path;
    if (e->text_len > text_len_model)
        return wan_fail(WAN_ERR_USAGE, "%s: sample %lld ('%s') has %d text rows, more than the model's text_len %d",
                        ds->dir, (long long)index, id, e->text_len, text_len_model);
    int fd;
    WAN_TRY(shard_fd(ds, e->shard, verify, corrupt, &fd));
    read_scratch *s = scratch_get(e->stored, e->raw);
    if (!s) return wan_fail(WAN_ERR_RUNTIME, "out of memory reading sample %lld", (long long)index);
    char path[WAN_PATH_MAX];
    WAN_TRY(wan_path_join(path, sizeof path, ds->dir, shard));
    int rc = wan_pread_full(fd, s->stored, e->stored, e->offset, path);
    if (rc) return wan_error_context(rc, "sample %lld ('%s')", (long long)index, id);
    if (verify && XXH3_64bits(s->stored, e->stored) != e->xxh3) {
        *corrupt = true;
        return wan_fail(WAN_ERR_RUNTIME,
                        "%s: sample %lld ('%s'): checksum mismatch in %llu bytes at offset %llu: the shard payload is "
                        "corrupt",
                        path, (long long)index, id, (unsigned long long)e->stored, (unsigned long long)e->offset);
    }
    size_t got = ZSTD_decompressDCtx(s->dctx, s->raw, e->raw, s->stored, e->stored);
    if (ZSTD_isError(got) || got != e->raw) {
        *corrupt = true;
        return wan_fail(WAN_ERR_RUNTIME, "%s: sample %lld ('%s'): %s%s", path, (long long)index, id,
                        ZSTD_isError(got) ? "cannot decompress: " : "decompressed size differs from the index",
                        ZSTD_isError(got) ? ZSTD_getErrorName(got) : "");
    }
    size_t nlat = (size_t)e->C * e->F * e->H * e->W, ntext = (size_t)e->text_len * e->text_dim;
    wan_planes_to_f32(latent, s->raw, nlat, (wan_dtype)e->latent_dtype);
    wan_planes_to_f32(text, s->raw + nlat * wan_dtype_size((wan_dtype)e->latent_dtype), ntext,
                      (wan_dtype)e->text_dtype);
    memset(text + ntext, 0, sizeof(float) * (size_t)(text_len_model - e->text_len) * (size_t)e->text_dim);
    return 0;
}

int wan_dataset_read(wan_dataset *ds, int64_t index, float *latent, float *text, int text_len_model, bool verify) {
    bool corrupt;
    return wan_dataset_read_ex(ds, index, latent, text, text_len_model, verify, &corrupt);
}
