/* wan-preprocess merge, verify and stats: operations on finished datasets. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
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
#include "error.h"
#include "fsutil.h"
#include "log.h"

#ifndef WAN_VERSION
#define WAN_VERSION "0.0.0"
#endif

/* ---- merge ---- */

typedef struct {
    int i, n;
    char name[64];
} part_t;

static int cmp_part(const void *a, const void *b) { return ((const part_t *)a)->i - ((const part_t *)b)->i; }

static int find_parts(const char *dir, part_t **out, int *nout) {
    DIR *d = opendir(dir);
    if (!d) return wan_fail_errno(WAN_ERR_USAGE, "open %s", dir);
    part_t *v = NULL;
    int n = 0, cap = 0, rc = 0;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        int i, k, len = 0;
        if (sscanf(e->d_name, "part-%4d-of-%4d%n", &i, &k, &len) != 2 || len != 17 || e->d_name[len]) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            part_t *p = realloc(v, (size_t)cap * sizeof *p);
            if (!p) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
            else v = p;
        }
        if (!rc) {
            v[n] = (part_t){i, k, ""};
            snprintf(v[n].name, sizeof v[n].name, "%.17s", e->d_name);
            n++;
        }
    }
    closedir(d);
    if (!rc && n == 0)
        rc = wan_fail(WAN_ERR_USAGE, "%s: no part-IIII-of-NNNN directories (written by wan-preprocess --part i/n)", dir);
    if (!rc) {
        qsort(v, (size_t)n, sizeof *v, cmp_part);
        int total = v[0].n;
        for (int j = 0; j < n && !rc; j++)
            if (v[j].n != total)
                rc = wan_fail(WAN_ERR_USAGE, "%s: %s and %s come from different splits", dir, v[0].name, v[j].name);
        for (int j = 0; j < total && !rc; j++)
            if (j >= n || v[j].i != j)
                rc = wan_fail(WAN_ERR_USAGE,
                              "%s: part %d of %d is missing: run wan-preprocess --part %d/%d first (found %d of %d parts)",
                              dir, j, total, j, total, n, total);
        if (!rc && n != total) rc = wan_fail(WAN_ERR_USAGE, "%s: more parts than the split has", dir);
    }
    if (rc) free(v);
    else *out = v, *nout = n;
    return rc;
}

/* Each line of a loaded (checksum-verified) index file, with its number. */
static int index_lines(const char *dir, char **text, size_t *len) {
    char path[WAN_PATH_MAX];
    WAN_TRY(wan_path_join(path, sizeof path, dir, WAN_DS_INDEX));
    return wan_read_file(path, text, len);
}

static char *next_line(char **p) {
    char *s = *p, *e = strchr(s, '\n');
    if (!e) return NULL;
    *e = 0;
    *p = e + 1;
    return s;
}

int wan_build_merge(const char *dir, bool force) {
    part_t *parts = NULL;
    int np = 0;
    WAN_TRY(find_parts(dir, &parts, &np));
    char index_path[WAN_PATH_MAX], body[WAN_PATH_MAX + 64], report[WAN_PATH_MAX];
    int rc = wan_path_join(index_path, sizeof index_path, dir, WAN_DS_INDEX);
    if (!rc) rc = wan_path_join(report, sizeof report, dir, "skipped.jsonl");
    snprintf(body, sizeof body, "%s/.index-body.tmp.%d", dir, (int)getpid());
    FILE *bf = rc ? NULL : fopen(body, "w");
    if (!rc && !bf) rc = wan_fail_errno(WAN_ERR_RUNTIME, "create %s", body);
    char **shard_lines = NULL;
    int64_t nshards = 0, nsamples = 0, nskipped = 0, ninputs = 0;
    uint64_t in_bytes = 0, st_bytes = 0;
    const char *mkey = NULL;
    json_t *first_header = NULL, *options = NULL;
    char *rep = NULL;
    size_t rep_len = 0;
    for (int p = 0; !rc && p < np; p++) {
        char pdir[WAN_PATH_MAX];
        wan_ds_index ix;
        if ((rc = wan_path_join(pdir, sizeof pdir, dir, parts[p].name))) break;
        if ((rc = wan_ds_index_load(pdir, &ix))) {
            wan_error_context(rc, "part %d of %d", p, np);
            break;
        }
        json_t *h = json_loads(ix.header, 0, NULL);
        json_t *pj = json_object_get(h, "part");
        const char *mk = json_string_value(json_object_get(h, "manifest_key"));
        if (!mk || json_integer_value(json_array_get(pj, 0)) != p || json_integer_value(json_array_get(pj, 1)) != np)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: its index is not that of part %d of %d", pdir, p, np);
        else if (mkey && strcmp(mk, mkey))
            rc = wan_fail(WAN_ERR_USAGE, "%s: converted from other inputs or options than %s", pdir, parts[0].name);
        if (!rc && !first_header) {
            first_header = h;
            mkey = mk;
            options = json_object_get(h, "options");
            h = NULL;
        }
        json_decref(h);
        char *text = NULL, *cur;
        size_t len;
        if (!rc) rc = index_lines(pdir, &text, &len);
        cur = text;
        if (!rc) next_line(&cur); /* header */
        char **grown = rc ? NULL : realloc(shard_lines, (size_t)(nshards + ix.nshards + 1) * sizeof *grown);
        if (!rc && !grown) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        if (grown) shard_lines = grown;
        for (int64_t s = 0; !rc && s < ix.nshards; s++) {
            json_t *o = json_loads(next_line(&cur), 0, NULL);
            char path[WAN_PATH_MAX + 80];
            snprintf(path, sizeof path, "%s/%s", parts[p].name, ix.shards[s].path);
            json_object_set_new(o, "shard", json_integer(nshards + s));
            json_object_set_new(o, "path", json_string(path));
            shard_lines[nshards + s] = json_dumps(o, JSON_COMPACT);
            json_decref(o);
        }
        for (int64_t i = 0; !rc && i < ix.n; i++) {
            json_t *o = json_loads(next_line(&cur), JSON_REJECT_DUPLICATES, NULL);
            json_object_set_new(o, "shard", json_integer(nshards + ix.e[i].shard));
            char *s = json_dumps(o, JSON_COMPACT);
            if (!s || fprintf(bf, "%s\n", s) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "write %s", body);
            free(s);
            json_decref(o);
            in_bytes += ix.e[i].input_bytes;
            st_bytes += ix.e[i].stored;
        }
        free(text);
        if (!rc) {
            nshards += ix.nshards;
            nsamples += ix.n;
            nskipped += ix.skipped;
            json_t *hh = json_loads(ix.header, 0, NULL);
            ninputs += json_integer_value(json_object_get(hh, "inputs"));
            json_decref(hh);
        }
        wan_ds_index_free(&ix);
        /* The parts' reports of skipped inputs, in order. */
        char rp[WAN_PATH_MAX];
        if (!rc && !wan_path_join(rp, sizeof rp, pdir, "skipped.jsonl") && wan_path_exists(rp)) {
            char *t;
            size_t tl;
            if (!(rc = wan_read_file(rp, &t, &tl))) {
                char *g = realloc(rep, rep_len + tl + 1);
                if (!g) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
                else {
                    rep = g;
                    memcpy(rep + rep_len, t, tl);
                    rep_len += tl;
                }
                free(t);
            }
        }
    }
    if (bf && fclose(bf) && !rc) rc = wan_fail_errno(WAN_ERR_RUNTIME, "write %s", body);
    /* An index already there is replaced only if it is this merge's (or with --force). */
    if (!rc && wan_path_exists(index_path) && !force) {
        wan_ds_index old;
        bool same = false;
        if (!wan_ds_index_load(dir, &old)) {
            json_t *h = json_loads(old.header, 0, NULL);
            const char *m = json_string_value(json_object_get(h, "manifest_key"));
            same = m && mkey && !strcmp(m, mkey) && json_integer_value(json_object_get(h, "parts")) == np;
            json_decref(h);
            wan_ds_index_free(&old);
        }
        if (!same)
            rc = wan_fail(WAN_ERR_USAGE, "%s already holds another dataset; use --force to replace its index", dir);
    }
    if (!rc) rc = rep_len || nskipped ? wan_write_file_atomic(report, rep ? rep : "", rep_len) : 0;
    if (!rc) {
        uint64_t mk = 0;
        wan_parse_hex64(mkey, &mk);
        unsigned char kb[16];
        wan_put_u64(kb, mk);
        wan_put_u64(kb + 8, 0xffff0000u | (uint64_t)np);
        char rk[17];
        wan_hex64(XXH3_64bits(kb, sizeof kb), rk);
        json_t *h = json_pack("{sssisIsIsIsIsIsIsssssssiso}", "format", WAN_DS_FORMAT, "version", WAN_DS_VERSION,
                              "samples", (json_int_t)nsamples, "shards", (json_int_t)nshards, "skipped",
                              (json_int_t)nskipped, "inputs", (json_int_t)ninputs, "input_bytes", (json_int_t)in_bytes,
                              "stored_bytes", (json_int_t)st_bytes, "run_key", rk, "writer",
                              "wan-preprocess " WAN_VERSION, "manifest_key", mkey, "parts", np, "options",
                              json_incref(options));
        char *hs = json_dumps(h, JSON_COMPACT);
        json_decref(h);
        rc = wan_ds_index_write(index_path, hs, shard_lines, nshards, body);
        free(hs);
    }
    unlink(body);
    if (!rc)
        wan_info("%s: merged %d parts: %lld samples in %lld shards (%lld inputs skipped); no shard data copied", dir,
                 np, (long long)nsamples, (long long)nshards, (long long)nskipped);
    for (int64_t i = 0; shard_lines && i < nshards; i++) free(shard_lines[i]);
    free(shard_lines);
    free(rep);
    json_decref(first_header);
    free(parts);
    return rc;
}

/* ---- verify ---- */

static atomic_int problems;

static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void problem(const char *fmt, ...) {
    int n = atomic_fetch_add(&problems, 1);
    if (n >= 50) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    wan_log(WAN_LOG_ERROR, "verify: %s%s", msg, n == 49 ? " (further problems counted, not shown)" : "");
}

/* Whole-file checksum and size of a shard against the index; false if the size is wrong. */
static bool verify_shard_file(const char *dir, const wan_ds_shard *sh) {
    char path[WAN_PATH_MAX];
    if (wan_path_join(path, sizeof path, dir, sh->path)) {
        problem("%s", wan_errmsg());
        return false;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        problem("%s: cannot open: %s", path, strerror(errno));
        return false;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != sh->bytes) {
        problem("%s: %llu bytes, the index says %llu (%s)", path, (unsigned long long)st.st_size,
                (unsigned long long)sh->bytes, (uint64_t)st.st_size < sh->bytes ? "truncated" : "wrong size");
        close(fd);
        return false;
    }
    XXH3_state_t *h = XXH3_createState();
    XXH3_64bits_reset(h);
    size_t cap = 8 << 20;
    char *buf = malloc(cap);
    uint64_t off = 0;
    while (buf && off < sh->bytes) {
        size_t want = sh->bytes - off < cap ? (size_t)(sh->bytes - off) : cap;
        if (wan_pread_full(fd, buf, want, off, path)) {
            problem("%s", wan_errmsg());
            break;
        }
        XXH3_64bits_update(h, buf, want);
        off += want;
    }
    if (off == sh->bytes && XXH3_64bits_digest(h) != sh->xxh3)
        problem("%s: shard checksum mismatch: some byte of the shard is corrupt", path);
    XXH3_freeState(h);
    free(buf);
    close(fd);
    return true;
}

int wan_build_verify(const char *dir, int threads) {
    double t0 = wan_now();
    wan_dataset *ds;
    WAN_TRY(wan_dataset_open(dir, &ds));
    const wan_ds_index *ix = wan_dataset_index(ds);
    atomic_store(&problems, 0);
    int maxlen = 1;
    uint64_t bytes = 0;
    size_t maxlat = 1, maxtext = 1;
    for (int64_t i = 0; i < ix->n; i++) {
        const wan_ds_entry *e = &ix->e[i];
        if (e->text_len > maxlen) maxlen = e->text_len;
        size_t nl = (size_t)e->C * e->F * e->H * e->W, nt = (size_t)e->text_len * e->text_dim;
        if (nl > maxlat) maxlat = nl;
        if (nt > maxtext) maxtext = nt;
    }
    if (threads < 1) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    wan_progress pr;
    wan_progress_begin(&pr, "verify", (uint64_t)ix->n, false);
    for (int64_t s = 0; s < ix->nshards; s++) {
        const wan_ds_shard *sh = &ix->shards[s];
        bool usable = verify_shard_file(dir, sh);
        if (usable && wan_dataset_check_shard(ds, (int)s)) {
            problem("%s", wan_errmsg());
            usable = false;
        }
        bytes += sh->bytes;
        if (!usable) {
            wan_progress_add(&pr, (uint64_t)sh->samples);
            continue; /* a bad size or table: each sample would only repeat that */
        }
        /* Each sample: its checksum, that it decompresses to the size the index says, decodes. */
#pragma omp parallel num_threads(threads)
        {
            float *lat = malloc(maxlat * sizeof(float)), *txt = malloc((maxtext ? maxtext : 1) * sizeof(float));
#pragma omp for schedule(dynamic, 4)
            for (int64_t i = sh->first; i < sh->first + sh->samples; i++) {
                bool corrupt;
                if (!lat || !txt) problem("out of memory");
                else if (wan_dataset_read_ex(ds, i, lat, txt, maxlen, true, &corrupt)) problem("%s", wan_errmsg());
            }
            free(lat);
            free(txt);
        }
        wan_progress_add(&pr, (uint64_t)sh->samples);
    }
    wan_progress_end(&pr);
    int np = atomic_load(&problems);
    int64_t nsamples = ix->n, nshards = ix->nshards;
    wan_dataset_close(ds);
    if (np) return wan_fail(WAN_ERR_RUNTIME, "%s: %d problem%s found (listed above)", dir, np, np == 1 ? "" : "s");
    wan_info("%s: OK: %lld samples in %lld shards (%.1f MB), every checksum and the index verified in %.1f s", dir,
             (long long)nsamples, (long long)nshards, bytes / 1e6, wan_now() - t0);
    return 0;
}

/* ---- stats ---- */

typedef struct {
    int shape[4];
    int64_t count;
} bucket_t;

int wan_build_stats(const char *dir, FILE *out) {
    wan_ds_index ix;
    WAN_TRY(wan_ds_index_load(dir, &ix));
    bucket_t *b = NULL;
    int nb = 0, cap = 0;
    int64_t tmin = INT64_MAX, tmax = 0, tsum = 0, dcount[2][3] = {{0}};
    uint64_t raw = 0, stored = 0, input = 0, shard_bytes = 0;
    for (int64_t i = 0; i < ix.n; i++) {
        const wan_ds_entry *e = &ix.e[i];
        int k = 0;
        while (k < nb && (b[k].shape[0] != e->C || b[k].shape[1] != e->F || b[k].shape[2] != e->H || b[k].shape[3] != e->W))
            k++;
        if (k == nb) {
            if (nb == cap) {
                cap = cap ? 2 * cap : 16;
                bucket_t *g = realloc(b, (size_t)cap * sizeof *g);
                if (!g) {
                    free(b);
                    wan_ds_index_free(&ix);
                    return wan_fail(WAN_ERR_RUNTIME, "out of memory");
                }
                b = g;
            }
            b[nb++] = (bucket_t){{e->C, e->F, e->H, e->W}, 0};
        }
        b[k].count++;
        if (e->text_len < tmin) tmin = e->text_len;
        if (e->text_len > tmax) tmax = e->text_len;
        tsum += e->text_len;
        dcount[0][e->latent_dtype]++;
        dcount[1][e->text_dtype]++;
        raw += e->raw;
        stored += e->stored;
        input += e->input_bytes;
    }
    for (int64_t s = 0; s < ix.nshards; s++) shard_bytes += ix.shards[s].bytes;
    fprintf(out, "dataset        %s\n", dir);
    fprintf(out, "samples        %lld (%lld inputs skipped at conversion)\n", (long long)ix.n, (long long)ix.skipped);
    fprintf(out, "shards         %lld, %.1f MB on disk\n", (long long)ix.nshards, shard_bytes / 1e6);
    fprintf(out, "input bytes    %.1f MB\n", input / 1e6);
    fprintf(out, "after filters  %.1f MB (dtype, zero text rows dropped; ratio %.2f)\n", raw / 1e6,
            raw ? (double)input / (double)raw : 0);
    fprintf(out, "stored         %.1f MB (zstd ratio %.2f)\n", stored / 1e6, stored ? (double)raw / (double)stored : 0);
    fprintf(out, "compression    %.2f (input bytes / stored bytes)\n", stored ? (double)input / (double)stored : 0);
    fprintf(out, "stored dtypes  latent:");
    for (int t = 0; t < 3; t++)
        if (dcount[0][t]) fprintf(out, " %s x %lld", wan_dtype_name((wan_dtype)t), (long long)dcount[0][t]);
    fprintf(out, "; text:");
    for (int t = 0; t < 3; t++)
        if (dcount[1][t]) fprintf(out, " %s x %lld", wan_dtype_name((wan_dtype)t), (long long)dcount[1][t]);
    fprintf(out, "\n");
    if (ix.n)
        fprintf(out, "text tokens    min %lld, mean %.1f, max %lld (width %d)\n", (long long)tmin,
                (double)tsum / (double)ix.n, (long long)tmax, ix.e[0].text_dim);
    fprintf(out, "buckets        %d latent shapes:\n", nb);
    fprintf(out, "  %-22s %10s %14s\n", "C x F x H x W", "samples", "video tokens");
    for (int k = 0; k < nb; k++) {
        char sh[64];
        snprintf(sh, sizeof sh, "%d x %d x %d x %d", b[k].shape[0], b[k].shape[1], b[k].shape[2], b[k].shape[3]);
        /* Tokens after Wan's (1, 2, 2) patch embedding. */
        fprintf(out, "  %-22s %10lld %14lld\n", sh, (long long)b[k].count,
                (long long)b[k].shape[1] * (b[k].shape[2] / 2) * (b[k].shape[3] / 2));
    }
    free(b);
    wan_ds_index_free(&ix);
    return 0;
}
