/* safetensors reader and writer (see safetensors.h). The header is parsed with jansson and
 * checked against the file before anything is read, so a truncated or malformed file is an
 * error naming the file and the tensor, never a silently wrong tensor. */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "fsutil.h"

/* A header larger than this is not a tensor file (the format's own reference limit is 100 MB). */
#define ST_MAX_HEADER (100u << 20)

/* Element sizes of every safetensors dtype, so that tensors of types we do not load are still
 * checked (offsets, sizes, overlaps) before being left out of the table. */
static int st_elem_size(const char *dt) {
    static const struct { const char *name; int size; } types[] = {
        {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
        {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"F64", 8},     {"I64", 8}, {"U64", 8}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dt, types[i].name)) return types[i].size;
    return 0;
}

typedef struct {
    wan_st_tensor t;
    uint64_t begin, end; /* relative to the data buffer */
    bool keep;           /* a dtype we load */
} st_entry;

static int cmp_begin(const void *a, const void *b) {
    const st_entry *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : strcmp(x->t.name, y->t.name);
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const wan_st_tensor *)a)->name, ((const wan_st_tensor *)b)->name);
}

/* Parse one tensor entry of a header. */
static int parse_entry(const char *path, const char *name, json_t *v, uint64_t data_len, st_entry *e) {
    if (strlen(name) >= sizeof e->t.name)
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor name '%.60s...' longer than %zu bytes", path, name,
                        sizeof e->t.name - 1);
    snprintf(e->t.name, sizeof e->t.name, "%s", name);
    if (!json_is_object(v)) return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': expected an object", path, name);
    json_t *dt = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape"),
           *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt)) return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': missing string 'dtype'", path, name);
    int esize = st_elem_size(json_string_value(dt));
    if (!esize)
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': unknown dtype '%s'", path, name, json_string_value(dt));
    e->keep = wan_dtype_parse(json_string_value(dt), &e->t.dtype) == 0;
    if (!json_is_array(shape) || json_array_size(shape) > WAN_ST_MAX_DIMS)
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': 'shape' must be an array of at most %d integers", path,
                        name, WAN_ST_MAX_DIMS);
    e->t.ndim = (int)json_array_size(shape);
    uint64_t numel = 1;
    for (int i = 0; i < e->t.ndim; i++) {
        json_t *d = json_array_get(shape, (size_t)i);
        if (!json_is_integer(d) || json_integer_value(d) < 0 || json_integer_value(d) > (json_int_t)1 << 40)
            return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': shape[%d] is not a valid dimension", path, name, i);
        e->t.shape[i] = (int64_t)json_integer_value(d);
        if (e->t.shape[i] && numel > (UINT64_MAX >> 4) / (uint64_t)e->t.shape[i])
            return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': shape too large", path, name);
        numel *= (uint64_t)e->t.shape[i];
    }
    if (!json_is_array(offs) || json_array_size(offs) != 2 || !json_is_integer(json_array_get(offs, 0)) ||
        !json_is_integer(json_array_get(offs, 1)))
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': 'data_offsets' must be [begin, end]", path, name);
    json_int_t b = json_integer_value(json_array_get(offs, 0)), en = json_integer_value(json_array_get(offs, 1));
    if (b < 0 || en < b || (uint64_t)en > data_len)
        return wan_fail(WAN_ERR_RUNTIME,
                        "%s: tensor '%s': data_offsets [%lld, %lld] outside the data (%llu bytes): truncated or "
                        "corrupt file",
                        path, name, (long long)b, (long long)en, (unsigned long long)data_len);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    if (e->end - e->begin != numel * (uint64_t)esize)
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': %llu data bytes, but %s x shape needs %llu", path, name,
                        (unsigned long long)(e->end - e->begin), json_string_value(dt),
                        (unsigned long long)(numel * (uint64_t)esize));
    e->t.nbytes = e->end - e->begin;
    return 0;
}

/* Parse and check the header of one open file; appends its loadable tensors to *tab. */
static int parse_file(int fd, const char *path, int file_index, st_entry **tab, int *n, char **metadata) {
    struct stat st;
    if (fstat(fd, &st) < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "stat %s", path);
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) return wan_fail(WAN_ERR_RUNTIME, "%s: %llu bytes: too short for a safetensors file", path,
                                  (unsigned long long)size);
    unsigned char lenb[8];
    WAN_TRY(wan_pread_full(fd, lenb, 8, 0, path));
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | lenb[i];
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > size - 8)
        return wan_fail(WAN_ERR_RUNTIME,
                        "%s: header length %llu is impossible for a %llu-byte file: not a safetensors file, or "
                        "truncated",
                        path, (unsigned long long)hlen, (unsigned long long)size);
    char *h = malloc(hlen);
    if (!h) return wan_fail(WAN_ERR_RUNTIME, "%s: out of memory for the header", path);
    int rc = wan_pread_full(fd, h, hlen, 8, path);
    if (rc) {
        free(h);
        return rc;
    }
    json_error_t jerr;
    json_t *root = json_loadb(h, hlen, JSON_REJECT_DUPLICATES, &jerr);
    free(h);
    if (!root) return wan_fail(WAN_ERR_RUNTIME, "%s: header is not valid JSON: %s (at byte %d)", path, jerr.text,
                               jerr.position + 8);
    if (!json_is_object(root)) {
        json_decref(root);
        return wan_fail(WAN_ERR_RUNTIME, "%s: header is not a JSON object", path);
    }
    uint64_t data_len = size - 8 - hlen;
    size_t cnt = json_object_size(root);
    st_entry *es = calloc(cnt ? cnt : 1, sizeof *es);
    if (!es) {
        json_decref(root);
        return wan_fail(WAN_ERR_RUNTIME, "%s: out of memory", path);
    }
    size_t ne = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v)) {
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: __metadata__ is not an object", path);
                break;
            }
            if (metadata && !*metadata) *metadata = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
            continue;
        }
        rc = parse_entry(path, key, v, data_len, &es[ne]);
        if (rc) break;
        es[ne].t.file = file_index;
        es[ne].t.offset = 8 + hlen + es[ne].begin;
        ne++;
    }
    json_decref(root);
    if (!rc) {
        qsort(es, ne, sizeof *es, cmp_begin);
        for (size_t i = 1; i < ne; i++)
            if (es[i].begin < es[i - 1].end && es[i].begin != es[i].end && es[i - 1].begin != es[i - 1].end) {
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensors '%s' and '%s' overlap in the data", path,
                              es[i - 1].t.name, es[i].t.name);
                break;
            }
    }
    if (!rc) {
        int keep = 0;
        for (size_t i = 0; i < ne; i++) keep += es[i].keep;
        st_entry *grown = realloc(*tab, ((size_t)*n + (size_t)keep + 1) * sizeof **tab);
        if (!grown) rc = wan_fail(WAN_ERR_RUNTIME, "%s: out of memory", path);
        else {
            *tab = grown;
            for (size_t i = 0; i < ne; i++)
                if (es[i].keep) (*tab)[(*n)++] = es[i];
        }
    }
    free(es);
    return rc;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static int add_file(wan_st_set *s, const char *path) {
    for (int i = 0; i < s->nfiles; i++)
        if (!strcmp(s->paths[i], path)) return i;
    char **p = realloc(s->paths, (size_t)(s->nfiles + 1) * sizeof *p);
    if (!p) return -1;
    s->paths = p;
    int *f = realloc(s->fds, (size_t)(s->nfiles + 1) * sizeof *f);
    if (!f) return -1;
    s->fds = f;
    s->paths[s->nfiles] = strdup(path);
    s->fds[s->nfiles] = -1;
    if (!s->paths[s->nfiles]) return -1;
    return s->nfiles++;
}

/* Pick the file to open inside a directory: the one index JSON, else the one .safetensors. */
static int resolve_dir(const char *dir, const char *prefix, char *out, size_t n) {
    DIR *d = opendir(dir);
    if (!d) return wan_fail_errno(WAN_ERR_RUNTIME, "open directory %s", dir);
    char idx[WAN_PATH_MAX] = "", single[WAN_PATH_MAX] = "";
    int nidx = 0, nsingle = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (prefix && strncmp(e->d_name, prefix, strlen(prefix))) continue;
        if (ends_with(e->d_name, ".safetensors.index.json")) {
            if (!nidx++ || strcmp(e->d_name, idx) < 0) snprintf(idx, sizeof idx, "%s", e->d_name);
        } else if (ends_with(e->d_name, ".safetensors")) {
            if (!nsingle++ || strcmp(e->d_name, single) < 0) snprintf(single, sizeof single, "%s", e->d_name);
        }
    }
    closedir(d);
    const char *pf = prefix ? prefix : "";
    if (nidx > 1)
        return wan_fail(WAN_ERR_RUNTIME, "%s: %d index files %s*.safetensors.index.json (expected one)", dir, nidx, pf);
    if (nidx == 1) return wan_path_join(out, n, dir, idx);
    if (nsingle == 1) return wan_path_join(out, n, dir, single);
    if (nsingle == 0)
        return wan_fail(WAN_ERR_RUNTIME, "%s: no %s*.safetensors file or index JSON", dir, pf);
    return wan_fail(WAN_ERR_RUNTIME, "%s: %d %s*.safetensors files and no index JSON saying how they fit together",
                    dir, nsingle, pf);
}

static int open_index(wan_st_set *s, const char *path, st_entry **tab, int *n) {
    char *text;
    size_t len;
    WAN_TRY(wan_read_file(path, &text, &len));
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) return wan_fail(WAN_ERR_RUNTIME, "%s: not valid JSON: %s (line %d)", path, jerr.text, jerr.line);
    json_t *wm = json_object_get(root, "weight_map");
    int rc = 0;
    if (!json_is_object(wm) || !json_object_size(wm)) {
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: expected a non-empty object \"weight_map\": {tensor: file}", path);
        goto out;
    }
    char dir[WAN_PATH_MAX];
    wan_dirname(path, dir, sizeof dir);
    const char *key;
    json_t *v;
    json_object_foreach(wm, key, v) {
        if (!json_is_string(v) || strchr(json_string_value(v), '/') || !json_string_value(v)[0]) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: weight_map['%s']: expected a file name in the same directory", path, key);
            goto out;
        }
        char fp[WAN_PATH_MAX];
        if ((rc = wan_path_join(fp, sizeof fp, dir, json_string_value(v)))) goto out;
        if (add_file(s, fp) < 0) {
            rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
            goto out;
        }
    }
    for (int i = 0; i < s->nfiles && !rc; i++) {
        s->fds[i] = open(s->paths[i], O_RDONLY | O_CLOEXEC);
        if (s->fds[i] < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "%s: open shard %s", path, s->paths[i]);
        else rc = parse_file(s->fds[i], s->paths[i], i, tab, n, s->metadata ? NULL : &s->metadata);
    }
    if (rc) goto out;
    /* Keep exactly the tensors the map names, each from the file it names. */
    int kept = 0;
    for (int i = 0; i < *n; i++) {
        json_t *f = json_object_get(wm, (*tab)[i].t.name);
        if (!f) continue;
        char fp[WAN_PATH_MAX];
        wan_path_join(fp, sizeof fp, dir, json_string_value(f));
        if (strcmp(fp, s->paths[(*tab)[i].t.file])) continue;
        (*tab)[kept++] = (*tab)[i];
    }
    *n = kept;
    json_object_foreach(wm, key, v) {
        bool found = false;
        for (int i = 0; i < kept && !found; i++) found = !strcmp((*tab)[i].t.name, key);
        if (!found) {
            /* Either absent from the shard or of a dtype we do not load. */
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s' is not in %s (or has a dtype other than F32/BF16/F16)",
                          path, key, json_string_value(v));
            goto out;
        }
    }
out:
    json_decref(root);
    return rc;
}

int wan_st_open(wan_st_set *s, const char *path, const char *prefix) {
    memset(s, 0, sizeof *s);
    char resolved[WAN_PATH_MAX];
    if (wan_is_dir(path)) WAN_TRY(resolve_dir(path, prefix, resolved, sizeof resolved));
    else if (snprintf(resolved, sizeof resolved, "%s", path) >= (int)sizeof resolved)
        return wan_fail(WAN_ERR_USAGE, "path too long: %s", path);
    st_entry *tab = NULL;
    int n = 0, rc = 0;
    if (ends_with(resolved, ".json")) {
        rc = open_index(s, resolved, &tab, &n);
    } else {
        if (add_file(s, resolved) < 0) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        else {
            s->fds[0] = open(resolved, O_RDONLY | O_CLOEXEC);
            if (s->fds[0] < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "open %s", resolved);
            else rc = parse_file(s->fds[0], resolved, 0, &tab, &n, &s->metadata);
        }
    }
    if (!rc) {
        s->n = n;
        s->t = malloc((size_t)(n ? n : 1) * sizeof *s->t);
        if (!s->t) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        for (int i = 0; !rc && i < n; i++) s->t[i] = tab[i].t;
        if (!rc) qsort(s->t, (size_t)n, sizeof *s->t, cmp_name);
        for (int i = 1; !rc && i < n; i++)
            if (!strcmp(s->t[i].name, s->t[i - 1].name))
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s' appears in both %s and %s", resolved, s->t[i].name,
                              s->paths[s->t[i - 1].file], s->paths[s->t[i].file]);
    }
    free(tab);
    if (rc) wan_st_close(s);
    return rc;
}

void wan_st_close(wan_st_set *s) {
    for (int i = 0; i < s->nfiles; i++) {
        if (s->fds && s->fds[i] >= 0) close(s->fds[i]);
        free(s->paths[i]);
    }
    free(s->paths);
    free(s->fds);
    free(s->t);
    free(s->metadata);
    memset(s, 0, sizeof *s);
}

const wan_st_tensor *wan_st_find(const wan_st_set *s, const char *name) {
    wan_st_tensor key;
    if (strlen(name) >= sizeof key.name) return NULL;
    snprintf(key.name, sizeof key.name, "%s", name);
    return bsearch(&key, s->t, (size_t)s->n, sizeof *s->t, cmp_name);
}

int wan_st_read_range(const wan_st_set *s, const wan_st_tensor *t, uint64_t byte_off, uint64_t nbytes, void *dst) {
    if (byte_off > t->nbytes || nbytes > t->nbytes - byte_off)
        return wan_fail(WAN_ERR_RUNTIME, "%s: tensor '%s': range [%llu, +%llu) outside its %llu bytes",
                        s->paths[t->file], t->name, (unsigned long long)byte_off, (unsigned long long)nbytes,
                        (unsigned long long)t->nbytes);
    int rc = wan_pread_full(s->fds[t->file], dst, nbytes, t->offset + byte_off, s->paths[t->file]);
    if (rc) return wan_error_context(rc, "tensor '%s'", t->name);
    return 0;
}

int wan_st_read(const wan_st_set *s, const wan_st_tensor *t, void *dst) {
    return wan_st_read_range(s, t, 0, t->nbytes, dst);
}

int wan_st_read_f32(const wan_st_set *s, const wan_st_tensor *t, float *dst) {
    size_t es = wan_dtype_size(t->dtype), numel = t->nbytes / es;
    if (t->dtype == WAN_F32) return wan_st_read(s, t, dst);
    /* 16-bit data: read into the upper half of dst, then widen front to back in place. */
    unsigned char *tmp = (unsigned char *)dst + numel * 2;
    WAN_TRY(wan_st_read(s, t, tmp));
    const uint16_t *src = (const uint16_t *)tmp;
    for (size_t i = 0; i < numel; i++) {
        uint16_t h;
        memcpy(&h, src + i, 2);
        dst[i] = t->dtype == WAN_BF16 ? wan_bf16_to_f32(h) : wan_f16_to_f32(h);
    }
    return 0;
}

/* ---- writer ---- */

struct wan_st_writer {
    char path[WAN_PATH_MAX], tmp[WAN_PATH_MAX + 32];
    int fd, n;
    uint64_t data_start;
    wan_st_tensor *t;
    uint64_t *written; /* bytes written per tensor (pieces must not overlap) */
};

int wan_st_writer_open(wan_st_writer **out, const char *path, const wan_st_tensor *tensors, int n,
                       const char *metadata_json) {
    *out = NULL;
    json_t *root = json_object();
    int rc = 0;
    if (metadata_json) {
        json_error_t jerr;
        json_t *meta = json_loads(metadata_json, 0, &jerr);
        if (!json_is_object(meta)) {
            json_decref(meta);
            json_decref(root);
            return wan_fail(WAN_ERR_USAGE, "%s: metadata must be a JSON object of strings", path);
        }
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) if (!json_is_string(v)) rc = wan_fail(
            WAN_ERR_USAGE, "%s: metadata key '%s': safetensors metadata values must be strings", path, k);
        json_object_set_new(root, "__metadata__", meta);
    }
    wan_st_writer *w = calloc(1, sizeof *w);
    if (!rc && !w) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    if (!rc) {
        w->fd = -1;
        w->n = n;
        w->t = calloc((size_t)(n ? n : 1), sizeof *w->t);
        w->written = calloc((size_t)(n ? n : 1), sizeof *w->written);
        if (!w->t || !w->written) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    }
    uint64_t off = 0;
    for (int i = 0; !rc && i < n; i++) {
        const wan_st_tensor *t = &tensors[i];
        if (!t->name[0] || !strcmp(t->name, "__metadata__") || json_object_get(root, t->name)) {
            rc = wan_fail(WAN_ERR_USAGE, "%s: tensor name '%s' is empty, reserved or repeated", path, t->name);
            break;
        }
        if (t->ndim < 0 || t->ndim > WAN_ST_MAX_DIMS) {
            rc = wan_fail(WAN_ERR_USAGE, "%s: tensor '%s': %d dimensions (at most %d)", path, t->name, t->ndim,
                          WAN_ST_MAX_DIMS);
            break;
        }
        uint64_t numel = 1;
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0) rc = wan_fail(WAN_ERR_USAGE, "%s: tensor '%s': negative dimension", path, t->name);
            numel *= (uint64_t)t->shape[d];
            json_array_append_new(shape, json_integer(t->shape[d]));
        }
        w->t[i] = *t;
        w->t[i].nbytes = numel * wan_dtype_size(t->dtype);
        w->t[i].offset = off;
        w->t[i].file = 0;
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(wan_dtype_name(t->dtype)));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets",
                            json_pack("[II]", (json_int_t)off, (json_int_t)(off + w->t[i].nbytes)));
        json_object_set_new(root, t->name, e);
        off += w->t[i].nbytes;
    }
    char *hdr = rc ? NULL : json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!rc && !hdr) rc = wan_fail(WAN_ERR_RUNTIME, "%s: cannot encode the header", path);
    if (!rc) {
        /* Pad the header with spaces so the data starts 8-byte aligned, as the format recommends. */
        size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
        char *buf = malloc(8 + padded);
        if (!buf) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        else {
            for (int i = 0; i < 8; i++) buf[i] = (char)((uint64_t)padded >> (8 * i));
            memcpy(buf + 8, hdr, hl);
            memset(buf + 8 + hl, ' ', padded - hl);
            w->data_start = 8 + padded;
            snprintf(w->path, sizeof w->path, "%s", path);
            snprintf(w->tmp, sizeof w->tmp, "%s.tmp.%d", path, (int)getpid());
            w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (w->fd < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "create %s", w->tmp);
            if (!rc) rc = wan_write_full(w->fd, buf, 8 + padded, w->tmp);
            if (!rc && ftruncate(w->fd, (off_t)(w->data_start + off)) < 0)
                rc = wan_fail_errno(WAN_ERR_RUNTIME, "resize %s", w->tmp);
            free(buf);
        }
    }
    free(hdr);
    if (rc) {
        if (w) wan_st_writer_abort(w);
        return rc;
    }
    *out = w;
    return 0;
}

int wan_st_writer_write(wan_st_writer *w, int index, uint64_t byte_off, const void *data, uint64_t nbytes) {
    if (index < 0 || index >= w->n)
        return wan_fail(WAN_ERR_USAGE, "%s: tensor index %d out of range (0..%d)", w->path, index, w->n - 1);
    const wan_st_tensor *t = &w->t[index];
    if (byte_off > t->nbytes || nbytes > t->nbytes - byte_off)
        return wan_fail(WAN_ERR_USAGE, "%s: tensor '%s': write [%llu, +%llu) outside its %llu bytes", w->path,
                        t->name, (unsigned long long)byte_off, (unsigned long long)nbytes,
                        (unsigned long long)t->nbytes);
    WAN_TRY(wan_pwrite_full(w->fd, data, nbytes, w->data_start + t->offset + byte_off, w->tmp));
    w->written[index] += nbytes;
    return 0;
}

int wan_st_writer_close(wan_st_writer *w) {
    int rc = 0;
    for (int i = 0; i < w->n && !rc; i++)
        if (w->written[i] != w->t[i].nbytes)
            rc = wan_fail(WAN_ERR_USAGE, "%s: tensor '%s': %llu of %llu bytes written", w->path, w->t[i].name,
                          (unsigned long long)w->written[i], (unsigned long long)w->t[i].nbytes);
    if (!rc && fsync(w->fd) < 0) rc = wan_fail_errno(WAN_ERR_RUNTIME, "fsync %s", w->tmp);
    if (close(w->fd) < 0 && !rc) rc = wan_fail_errno(WAN_ERR_RUNTIME, "close %s", w->tmp);
    w->fd = -1;
    if (!rc) rc = wan_rename_durable(w->tmp, w->path);
    if (rc) unlink(w->tmp);
    free(w->t);
    free(w->written);
    free(w);
    return rc;
}

void wan_st_writer_abort(wan_st_writer *w) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp[0]) unlink(w->tmp);
    free(w->t);
    free(w->written);
    free(w);
}
