/* index.jsonl: reading (with every field checked) and writing (atomically, with its own
 * checksum in the trailer line). Format in dataset_format.h. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "config.h"
#include "dataset_format.h"
#include "error.h"
#include "fsutil.h"

typedef struct {
    const char *path;
    int line;
    json_t *obj;
} line_ctx;

static int bad(const line_ctx *c, const char *field, const char *expected) {
    return wan_fail(WAN_ERR_RUNTIME, "%s line %d: field '%s': expected %s", c->path, c->line, field, expected);
}

static int get_u64(const line_ctx *c, const char *field, uint64_t *v) {
    json_t *j = json_object_get(c->obj, field);
    if (!json_is_integer(j) || json_integer_value(j) < 0) return bad(c, field, "a non-negative integer");
    *v = (uint64_t)json_integer_value(j);
    return 0;
}

static int get_int(const line_ctx *c, const char *field, int64_t lo, int64_t hi, int64_t *v) {
    json_t *j = json_object_get(c->obj, field);
    if (!json_is_integer(j) || json_integer_value(j) < lo || json_integer_value(j) > hi) {
        char what[96];
        snprintf(what, sizeof what, "an integer in [%lld, %lld]", (long long)lo, (long long)hi);
        return bad(c, field, what);
    }
    *v = json_integer_value(j);
    return 0;
}

static int get_hex(const line_ctx *c, const char *field, uint64_t *v) {
    json_t *j = json_object_get(c->obj, field);
    if (!json_is_string(j) || wan_parse_hex64(json_string_value(j), v)) return bad(c, field, "16 hex digits");
    return 0;
}

static int get_dtype(const line_ctx *c, const char *field, uint8_t *v) {
    json_t *j = json_object_get(c->obj, field);
    wan_dtype t;
    if (!json_is_string(j) || wan_dtype_parse(json_string_value(j), &t)) return bad(c, field, "\"F32\", \"BF16\" or \"F16\"");
    *v = (uint8_t)t;
    return 0;
}

static int parse_shard(const line_ctx *c, int64_t k, wan_ds_shard *s) {
    int64_t v;
    WAN_TRY(get_int(c, "shard", k, k, &v));
    json_t *p = json_object_get(c->obj, "path");
    const char *ps = json_string_value(p);
    if (!ps || !ps[0] || ps[0] == '/' || strstr(ps, "..") || strlen(ps) >= sizeof s->path)
        return bad(c, "path", "a relative path inside the dataset directory");
    snprintf(s->path, sizeof s->path, "%s", ps);
    WAN_TRY(get_u64(c, "bytes", &s->bytes));
    uint64_t n;
    WAN_TRY(get_u64(c, "samples", &n));
    s->samples = (int64_t)n;
    return get_hex(c, "xxh3", &s->xxh3);
}

static int parse_sample(const line_ctx *c, wan_ds_index *ix, size_t *pool_len, size_t *pool_cap, wan_ds_entry *e) {
    json_t *id = json_object_get(c->obj, "id");
    const char *ids = json_string_value(id);
    if (!ids || strlen(ids) >= sizeof ((wan_sample_info *)0)->id) return bad(c, "id", "a string of at most 127 bytes");
    size_t l = strlen(ids) + 1;
    if (*pool_len + l > *pool_cap) {
        size_t cap = *pool_cap ? *pool_cap * 2 : 1 << 16;
        while (cap < *pool_len + l) cap *= 2;
        char *p = realloc(ix->ids, cap);
        if (!p) return wan_fail(WAN_ERR_RUNTIME, "%s: out of memory", c->path);
        ix->ids = p;
        *pool_cap = cap;
    }
    if (*pool_len > UINT32_MAX - l) return wan_fail(WAN_ERR_RUNTIME, "%s: ids exceed 4 GiB", c->path);
    memcpy(ix->ids + *pool_len, ids, l);
    e->id = (uint32_t)*pool_len;
    *pool_len += l;
    int64_t v;
    WAN_TRY(get_int(c, "shard", 0, ix->nshards - 1, &v));
    e->shard = (int32_t)v;
    WAN_TRY(get_u64(c, "offset", &e->offset));
    WAN_TRY(get_u64(c, "stored", &e->stored));
    WAN_TRY(get_u64(c, "raw", &e->raw));
    WAN_TRY(get_hex(c, "xxh3", &e->xxh3));
    json_t *lat = json_object_get(c->obj, "latent");
    if (!json_is_array(lat) || json_array_size(lat) != 4) return bad(c, "latent", "[C, F, H, W]");
    int32_t *dims[4] = {&e->C, &e->F, &e->H, &e->W};
    for (int i = 0; i < 4; i++) {
        json_t *d = json_array_get(lat, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 1 || json_integer_value(d) > 1 << 20)
            return bad(c, "latent", "[C, F, H, W] of positive integers");
        *dims[i] = (int32_t)json_integer_value(d);
    }
    WAN_TRY(get_dtype(c, "latent_dtype", &e->latent_dtype));
    WAN_TRY(get_int(c, "text_len", 0, 1 << 20, &v));
    e->text_len = (int32_t)v;
    WAN_TRY(get_int(c, "text_dim", 1, 1 << 20, &v));
    e->text_dim = (int32_t)v;
    WAN_TRY(get_dtype(c, "text_dtype", &e->text_dtype));
    e->input_bytes = 0;
    if (json_object_get(c->obj, "input_bytes")) WAN_TRY(get_u64(c, "input_bytes", &e->input_bytes));
    uint64_t want = wan_raw_bytes((uint64_t)e->C * e->F * e->H * e->W, e->latent_dtype,
                                  (uint64_t)e->text_len * e->text_dim, e->text_dtype);
    if (e->raw != want) return bad(c, "raw", "the byte size of the latent and text it describes");
    const wan_ds_shard *s = &ix->shards[e->shard];
    if (e->offset < WAN_SHARD_HEADER_BYTES || s->bytes < WAN_SHARD_FOOTER_BYTES ||
        e->offset > s->bytes - WAN_SHARD_FOOTER_BYTES || e->stored > s->bytes - WAN_SHARD_FOOTER_BYTES - e->offset)
        return bad(c, "offset", "a record inside its shard");
    return 0;
}

int wan_ds_index_load(const char *dir, wan_ds_index *ix) {
    memset(ix, 0, sizeof *ix);
    char path[WAN_PATH_MAX];
    WAN_TRY(wan_path_join(path, sizeof path, dir, WAN_DS_INDEX));
    if (!wan_path_exists(path)) {
        if (!wan_is_dir(dir)) return wan_fail(WAN_ERR_RUNTIME, "%s: no such dataset directory", dir);
        return wan_fail(WAN_ERR_RUNTIME,
                        "%s: not a dataset: no %s (wan-preprocess writes it last; an interrupted run leaves none, "
                        "re-run it to resume)",
                        dir, WAN_DS_INDEX);
    }
    char *text;
    size_t len;
    WAN_TRY(wan_read_file(path, &text, &len));
    int rc = 0;
    /* The trailer is the last line; its checksum covers everything before it. */
    if (len < 2 || text[len - 1] != '\n') {
        free(text);
        return wan_fail(WAN_ERR_RUNTIME, "%s: incomplete (does not end with a trailer line): corrupt index", path);
    }
    size_t tstart = len - 1;
    while (tstart > 0 && text[tstart - 1] != '\n') tstart--;
    json_error_t jerr;
    json_t *tr = json_loadb(text + tstart, len - 1 - tstart, 0, &jerr);
    uint64_t want;
    if (!tr || strcmp(json_string_value(json_object_get(tr, "end")) ? json_string_value(json_object_get(tr, "end")) : "",
                      WAN_DS_FORMAT) ||
        !json_is_string(json_object_get(tr, "xxh3")) ||
        wan_parse_hex64(json_string_value(json_object_get(tr, "xxh3")), &want))
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: the last line is not the index trailer {\"end\":\"%s\",\"xxh3\":...}: "
                      "corrupt or truncated index", path, WAN_DS_FORMAT);
    json_decref(tr);
    if (!rc && XXH3_64bits(text, tstart) != want)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: index checksum mismatch (%zu bytes before the trailer): the index is corrupt",
                      path, tstart);
    size_t pos = 0, pool_len = 0, pool_cap = 0;
    int64_t lineno = 0, ns = 0, nsamp = 0;
    while (!rc && pos < tstart) {
        size_t end = pos;
        while (end < tstart && text[end] != '\n') end++;
        lineno++;
        line_ctx c = {path, (int)lineno, json_loadb(text + pos, end - pos, JSON_REJECT_DUPLICATES, &jerr)};
        if (!json_is_object(c.obj)) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s line %lld: not a JSON object: %s", path, (long long)lineno,
                          c.obj ? "other JSON" : jerr.text);
        } else if (lineno == 1) {
            const char *fmt = json_string_value(json_object_get(c.obj, "format"));
            int64_t v;
            uint64_t u;
            if (!fmt || strcmp(fmt, WAN_DS_FORMAT)) rc = bad(&c, "format", "\"" WAN_DS_FORMAT "\"");
            else if (!(rc = get_int(&c, "version", WAN_DS_VERSION, WAN_DS_VERSION, &v)) &&
                     !(rc = get_u64(&c, "samples", &u))) {
                ix->n = (int64_t)u;
                if (!(rc = get_u64(&c, "shards", &u))) ix->nshards = (int64_t)u;
                if (!rc && json_object_get(c.obj, "skipped") && !(rc = get_u64(&c, "skipped", &u)))
                    ix->skipped = (int64_t)u;
                if (!rc && (ix->n > ((int64_t)1 << 40) || ix->nshards > (ix->n ? ix->n : 0)))
                    rc = bad(&c, "shards", "at most one shard per sample");
            }
            if (!rc) {
                ix->header = strndup(text + pos, end - pos);
                ix->e = calloc((size_t)(ix->n ? ix->n : 1), sizeof *ix->e);
                ix->shards = calloc((size_t)(ix->nshards ? ix->nshards : 1), sizeof *ix->shards);
                if (!ix->header || !ix->e || !ix->shards) rc = wan_fail(WAN_ERR_RUNTIME, "%s: out of memory", path);
            }
        } else if (ns < ix->nshards) {
            rc = parse_shard(&c, ns, &ix->shards[ns]);
            ns++;
        } else if (nsamp < ix->n) {
            rc = parse_sample(&c, ix, &pool_len, &pool_cap, &ix->e[nsamp]);
            nsamp++;
        } else {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s line %lld: more lines than the header's %lld shards and %lld samples",
                          path, (long long)lineno, (long long)ix->nshards, (long long)ix->n);
        }
        json_decref(c.obj);
        pos = end + 1;
    }
    if (!rc && (lineno == 0 || ns != ix->nshards || nsamp != ix->n))
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: %lld shard and %lld sample lines, the header says %lld and %lld", path,
                      (long long)ns, (long long)nsamp, (long long)ix->nshards, (long long)ix->n);
    /* Shards hold consecutive runs of samples, in shard order, with the counts the shard lines say. */
    int64_t next = 0;
    for (int64_t s = 0; !rc && s < ix->nshards; s++) {
        ix->shards[s].first = next;
        for (int64_t k = 0; !rc && k < ix->shards[s].samples; k++, next++)
            if (next >= ix->n || ix->e[next].shard != s)
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: shard %lld ('%s') should hold samples %lld..%lld, but sample %lld "
                              "is elsewhere", path, (long long)s, ix->shards[s].path, (long long)ix->shards[s].first,
                              (long long)(ix->shards[s].first + ix->shards[s].samples - 1), (long long)next);
    }
    if (!rc && next != ix->n)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: the shard lines account for %lld samples, the index has %lld", path,
                      (long long)next, (long long)ix->n);
    if (!rc && !ix->ids) ix->ids = calloc(1, 1);
    free(text);
    if (rc) wan_ds_index_free(ix);
    return rc;
}

void wan_ds_index_free(wan_ds_index *ix) {
    free(ix->e);
    free(ix->shards);
    free(ix->ids);
    free(ix->header);
    memset(ix, 0, sizeof *ix);
}

typedef struct {
    int fd;
    const char *path;
    XXH3_state_t *h;
} index_out;

static int out_line(index_out *o, const char *s, size_t n) {
    WAN_TRY(wan_write_full(o->fd, s, n, o->path));
    XXH3_64bits_update(o->h, s, n);
    return 0;
}

int wan_ds_index_write(const char *path, const char *header, char *const *shard_lines, int64_t nshards,
                       const char *sample_lines_file) {
    char tmp[WAN_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    index_out o = {open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), tmp, XXH3_createState()};
    if (o.fd < 0) {
        XXH3_freeState(o.h);
        return wan_fail_errno(WAN_ERR_RUNTIME, "create %s", tmp);
    }
    XXH3_64bits_reset(o.h);
    int rc = out_line(&o, header, strlen(header));
    if (!rc) rc = out_line(&o, "\n", 1);
    for (int64_t i = 0; !rc && i < nshards; i++) {
        rc = out_line(&o, shard_lines[i], strlen(shard_lines[i]));
        if (!rc) rc = out_line(&o, "\n", 1);
    }
    if (!rc && sample_lines_file) {
        int in = open(sample_lines_file, O_RDONLY | O_CLOEXEC);
        if (in < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "open %s", sample_lines_file);
        char *buf = malloc(1 << 20);
        while (!rc && in >= 0) {
            ssize_t r = read(in, buf, 1 << 20);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "read %s", sample_lines_file);
            if (r <= 0) break;
            rc = out_line(&o, buf, (size_t)r);
        }
        free(buf);
        if (in >= 0) close(in);
    }
    if (!rc) {
        char hex[17], tr[96];
        wan_hex64(XXH3_64bits_digest(o.h), hex);
        int n = snprintf(tr, sizeof tr, "{\"end\":\"%s\",\"xxh3\":\"%s\"}\n", WAN_DS_FORMAT, hex);
        rc = wan_write_full(o.fd, tr, (size_t)n, tmp);
    }
    if (!rc && fsync(o.fd) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "fsync %s", tmp);
    if (close(o.fd) < 0 && !rc) rc = wan_fail_errno(WAN_ERR_RUNTIME, "close %s", tmp);
    XXH3_freeState(o.h);
    if (!rc) rc = wan_rename_durable(tmp, path);
    if (rc) unlink(tmp);
    return rc;
}
