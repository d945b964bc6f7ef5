/* wan-preprocess inputs: manifest parsing, directory scanning, and one sample's tensors
 * loaded and checked (see dataset_input.h). */
#include "dataset_input.h"

#include <dirent.h>
#include <limits.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "error.h"
#include "fsutil.h"
#include "npy.h"
#include "safetensors.h"

void wan_input_describe(const wan_input_sample *s, char *buf, int n) {
    if (s->line) snprintf(buf, (size_t)n, "sample '%s' (manifest line %lld)", s->id, (long long)s->line);
    else snprintf(buf, (size_t)n, "sample '%s'", s->id);
}

void wan_input_list_free(wan_input_list *l) {
    for (int64_t i = 0; i < l->n; i++) {
        wan_input_sample *s = &l->s[i];
        free(s->id);
        free(s->latent_path);
        free(s->text_path);
        free(s->latent_name);
        free(s->text_name);
        json_decref(s->extra);
    }
    free(l->s);
    memset(l, 0, sizeof *l);
}

static int push(wan_input_list *l, int64_t *cap) {
    if (l->n == *cap) {
        int64_t nc = *cap ? *cap * 2 : 256;
        wan_input_sample *p = realloc(l->s, (size_t)nc * sizeof *p);
        if (!p) return wan_fail(WAN_ERR_RUNTIME, "out of memory listing inputs");
        l->s = p;
        *cap = nc;
    }
    memset(&l->s[l->n++], 0, sizeof *l->s);
    return 0;
}

static char *resolve(const char *dir, const char *p) {
    if (p[0] == '/') return strdup(p);
    char buf[WAN_PATH_MAX];
    if (wan_path_join(buf, sizeof buf, dir, p)) return NULL;
    return strdup(buf);
}

/* The absolute form of a directory (as given when that fails or does not fit). */
static void absolute(const char *given, char *out, size_t n) {
    char buf[PATH_MAX];
    if (!realpath(given, buf) || strlen(buf) >= n) snprintf(buf, sizeof buf, "%s", given);
    snprintf(out, n, "%.*s", (int)n - 1, buf);
}

static int cmp_ids(const void *a, const void *b) {
    const wan_input_sample *x = *(wan_input_sample *const *)a, *y = *(wan_input_sample *const *)b;
    return strcmp(x->id, y->id);
}

/* Ids name samples in the index and in every error: they must be unique. */
static int check_unique(const wan_input_list *l) {
    if (l->n < 2) return 0;
    const wan_input_sample **v = malloc((size_t)l->n * sizeof *v);
    if (!v) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int64_t i = 0; i < l->n; i++) v[i] = &l->s[i];
    qsort(v, (size_t)l->n, sizeof *v, cmp_ids);
    int rc = 0;
    for (int64_t i = 1; i < l->n && !rc; i++)
        if (!strcmp(v[i]->id, v[i - 1]->id))
            rc = wan_fail(WAN_ERR_USAGE, "%s: sample id '%s' appears twice (lines %lld and %lld): ids must be unique",
                          l->source, v[i]->id, (long long)(v[i - 1]->line < v[i]->line ? v[i - 1]->line : v[i]->line),
                          (long long)(v[i - 1]->line < v[i]->line ? v[i]->line : v[i - 1]->line));
    free(v);
    return rc;
}

static int load_manifest(const char *path, const char *latent_name, const char *text_name, wan_input_list *l) {
    FILE *f = fopen(path, "r");
    if (!f) return wan_fail_errno(WAN_ERR_USAGE, "open manifest %s", path);
    /* Inputs are named by absolute paths, so the run key does not depend on the working directory. */
    char rel[WAN_PATH_MAX], dir[WAN_PATH_MAX];
    wan_dirname(path, rel, sizeof rel);
    absolute(rel, dir, sizeof dir);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t lineno = 0, scap = 0;
    int rc = 0;
    while (!rc && (len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' ')) line[--len] = 0;
        if (len == 0) continue;
        json_error_t jerr;
        json_t *o = json_loadb(line, (size_t)len, JSON_REJECT_DUPLICATES, &jerr);
        if (!json_is_object(o)) {
            json_decref(o);
            rc = wan_fail(WAN_ERR_USAGE, "%s line %lld: not a JSON object: %s", path, (long long)lineno,
                          o ? "other JSON value" : jerr.text);
            break;
        }
        const char *id = json_string_value(json_object_get(o, "id"));
        const char *both = json_string_value(json_object_get(o, "path"));
        const char *lat = json_string_value(json_object_get(o, "latent"));
        const char *txt = json_string_value(json_object_get(o, "text"));
        json_t *cap_j = json_object_get(o, "caption");
        if (!id || !id[0] || strlen(id) > 127 || strchr(id, '\n'))
            rc = wan_fail(WAN_ERR_USAGE, "%s line %lld: field 'id': expected a non-empty string of at most 127 bytes",
                          path, (long long)lineno);
        else if (!(lat || both) || !(txt || both))
            rc = wan_fail(WAN_ERR_USAGE,
                          "%s line %lld: sample '%s': expected paths in 'latent' and 'text' (or 'path' for one file "
                          "holding both)",
                          path, (long long)lineno, id);
        else if (cap_j && !json_is_string(cap_j))
            rc = wan_fail(WAN_ERR_USAGE, "%s line %lld: sample '%s': field 'caption': expected a string", path,
                          (long long)lineno, id);
        else
            for (const char *const *k = (const char *const[]){"latent_name", "text_name", NULL}; *k && !rc; k++)
                if (json_object_get(o, *k) && !json_is_string(json_object_get(o, *k)))
                    rc = wan_fail(WAN_ERR_USAGE, "%s line %lld: sample '%s': field '%s': expected a string", path,
                                  (long long)lineno, id, *k);
        if (!rc) rc = push(l, &scap);
        if (!rc) {
            wan_input_sample *s = &l->s[l->n - 1];
            const char *ln = json_string_value(json_object_get(o, "latent_name"));
            const char *tn = json_string_value(json_object_get(o, "text_name"));
            s->id = strdup(id);
            s->latent_path = resolve(dir, lat ? lat : both);
            s->text_path = resolve(dir, txt ? txt : both);
            s->latent_name = strdup(ln ? ln : latent_name);
            s->text_name = strdup(tn ? tn : text_name);
            s->line = lineno;
            /* The rest is carried into the index: caption first (always present), then metadata. */
            s->extra = json_object();
            json_object_set_new(s->extra, "caption", json_string(cap_j ? json_string_value(cap_j) : ""));
            const char *k;
            json_t *v;
            json_object_foreach(o, k, v) {
                static const char *known[] = {"id", "path", "latent", "text", "latent_name", "text_name", "caption"};
                bool skip = false;
                for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) skip |= !strcmp(k, known[i]);
                if (!skip) json_object_set(s->extra, k, v);
            }
            if (!s->id || !s->latent_path || !s->text_path || !s->latent_name || !s->text_name)
                rc = wan_fail(WAN_ERR_RUNTIME, "out of memory reading %s", path);
        }
        json_decref(o);
    }
    free(line);
    if (!rc && ferror(f)) rc = wan_fail_errno(WAN_ERR_RUNTIME, "read %s", path);
    fclose(f);
    return rc;
}

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool dir_has_index(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return false;
    struct dirent *e;
    bool found = false;
    while (!found && (e = readdir(d))) found = ends_with(e->d_name, ".safetensors.index.json");
    closedir(d);
    return found;
}

static int scan_dir(const char *given, const char *latent_name, const char *text_name, wan_input_list *l) {
    char dir[WAN_PATH_MAX];
    absolute(given, dir, sizeof dir);
    DIR *d = opendir(dir);
    if (!d) return wan_fail_errno(WAN_ERR_USAGE, "open input directory %s", dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            char **p = realloc(names, cap * sizeof *p);
            if (!p) {
                rc = wan_fail(WAN_ERR_RUNTIME, "out of memory scanning %s", dir);
                break;
            }
            names = p;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    if (!rc) qsort(names, n, sizeof *names, cmp_str);
    int64_t scap = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        char full[WAN_PATH_MAX], id[WAN_PATH_MAX], lat[WAN_PATH_MAX], txt[WAN_PATH_MAX], capf[WAN_PATH_MAX];
        if ((rc = wan_path_join(full, sizeof full, dir, names[i]))) break;
        const char *nm = names[i];
        size_t len = strlen(nm);
        bool sample = false;
        if (wan_is_dir(full) && dir_has_index(full)) {
            snprintf(id, sizeof id, "%s", nm);
            snprintf(lat, sizeof lat, "%s", full);
            snprintf(txt, sizeof txt, "%s", full);
            sample = true;
        } else if (ends_with(nm, ".safetensors")) {
            snprintf(id, sizeof id, "%.*s", (int)(len - 12), nm);
            snprintf(lat, sizeof lat, "%s", full);
            snprintf(txt, sizeof txt, "%s", full);
            sample = true;
        } else if (ends_with(nm, ".latent.npy")) {
            snprintf(id, sizeof id, "%.*s", (int)(len - 11), nm);
            snprintf(lat, sizeof lat, "%s", full);
            snprintf(txt, sizeof txt, "%.*s.text.npy", (int)(strlen(full) - 11), full);
            if (!wan_path_exists(txt)) {
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: sample '%s': %s has no matching %s.text.npy", dir, id, nm, id);
                break;
            }
            sample = true;
        } else if (ends_with(nm, ".text.npy")) {
            char latp[WAN_PATH_MAX];
            snprintf(latp, sizeof latp, "%.*s.latent.npy", (int)(strlen(full) - 9), full);
            if (!wan_path_exists(latp)) {
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: %s has no matching %.*s.latent.npy", dir, nm, (int)(len - 9), nm);
                break;
            }
        }
        if (!sample) continue;
        if (strlen(id) > 127) {
            rc = wan_fail(WAN_ERR_USAGE, "%s: sample name '%s' longer than 127 bytes", dir, id);
            break;
        }
        if ((rc = push(l, &scap))) break;
        wan_input_sample *s = &l->s[l->n - 1];
        s->id = strdup(id);
        s->latent_path = strdup(lat);
        s->text_path = strdup(txt);
        s->latent_name = strdup(latent_name);
        s->text_name = strdup(text_name);
        s->extra = json_object();
        /* NAME.txt next to the sample is its caption. */
        char *caption = NULL;
        size_t clen = 0;
        if (snprintf(capf, sizeof capf, "%s/%s.txt", dir, id) >= (int)sizeof capf) {
            rc = wan_fail(WAN_ERR_USAGE, "%s: path too long", dir);
            break;
        }
        if (wan_path_exists(capf) && (rc = wan_read_file(capf, &caption, &clen))) break;
        while (clen && (caption[clen - 1] == '\n' || caption[clen - 1] == '\r')) caption[--clen] = 0;
        json_t *cj = caption ? json_stringn(caption, clen) : json_string("");
        free(caption);
        if (!cj) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: caption is not UTF-8 text", capf);
            break;
        }
        json_object_set_new(s->extra, "caption", cj);
        if (!s->id || !s->latent_path || !s->text_path || !s->latent_name || !s->text_name)
            rc = wan_fail(WAN_ERR_RUNTIME, "out of memory scanning %s", dir);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    if (!rc && l->n == 0)
        rc = wan_fail(WAN_ERR_USAGE,
                      "%s: no samples found (expected NAME.safetensors, NAME.latent.npy + NAME.text.npy, or "
                      "subdirectories with a *.safetensors.index.json)",
                      dir);
    return rc;
}

int wan_input_list_load(const char *path, const char *latent_name, const char *text_name, wan_input_list *out) {
    memset(out, 0, sizeof *out);
    snprintf(out->source, sizeof out->source, "%s", path);
    if (!wan_path_exists(path)) return wan_fail(WAN_ERR_USAGE, "input %s: no such file or directory", path);
    int rc = wan_is_dir(path) ? scan_dir(path, latent_name, text_name, out)
                              : load_manifest(path, latent_name, text_name, out);
    if (!rc) rc = check_unique(out);
    if (rc) wan_input_list_free(out);
    return rc;
}

/* ---- loading one sample ---- */

/* A tensor read from .npy or safetensors: dtype, shape and the bytes. */
typedef struct {
    wan_dtype dtype;
    int ndim;
    int64_t shape[8];
    void *data;
    uint64_t nbytes;
} loaded;

static bool is_npy(const char *p) { return ends_with(p, ".npy"); }

static int load_npy(const char *path, loaded *t) {
    int fd;
    wan_npy_info info;
    WAN_TRY(wan_npy_open(path, &fd, &info));
    t->dtype = info.dtype;
    t->ndim = info.ndim;
    memcpy(t->shape, info.shape, sizeof info.shape);
    t->nbytes = info.nbytes;
    t->data = malloc(info.nbytes ? info.nbytes : 1);
    int rc = t->data ? wan_pread_full(fd, t->data, info.nbytes, info.data_offset, path)
                     : wan_fail(WAN_ERR_RUNTIME, "%s: out of memory (%llu bytes)", path, (unsigned long long)info.nbytes);
    close(fd);
    return rc;
}

static int load_st(const wan_st_set *set, const char *path, const char *name, loaded *t) {
    const wan_st_tensor *st = wan_st_find(set, name);
    if (!st) {
        char names[512] = "";
        int len = 0;
        for (int i = 0; i < set->n && len < (int)sizeof names - 64; i++)
            len += snprintf(names + len, sizeof names - (size_t)len, "%s'%s'", i ? ", " : "", set->t[i].name);
        return wan_fail(WAN_ERR_RUNTIME, "%s: no F32/BF16/F16 tensor '%s' (it has: %s; see --latent-name/--text-name)",
                        path, name, set->n ? names : "none");
    }
    t->dtype = st->dtype;
    t->ndim = st->ndim;
    memcpy(t->shape, st->shape, sizeof(int64_t) * (size_t)st->ndim);
    t->nbytes = st->nbytes;
    t->data = malloc(st->nbytes ? st->nbytes : 1);
    if (!t->data) return wan_fail(WAN_ERR_RUNTIME, "%s: out of memory (%llu bytes)", path, (unsigned long long)st->nbytes);
    return wan_st_read(set, st, t->data);
}

/* Whether a block of 4096 elements holds a NaN or Inf: branch-free, fixed size, so vectorised. */
enum { BLOCK = 4096 };
static unsigned nonfinite_block32(const uint32_t *restrict u) {
    unsigned hit = 0;
    for (size_t i = 0; i < BLOCK; i++) hit |= (u[i] & 0x7f800000u) == 0x7f800000u;
    return hit;
}
static unsigned nonfinite_block16(const uint16_t *restrict u, uint16_t exp) {
    unsigned hit = 0;
    for (size_t i = 0; i < BLOCK; i++) hit |= (u[i] & exp) == exp;
    return hit;
}

/* Index of the first NaN or Inf, or -1: blocks are screened, the one with a hit searched. */
static int64_t first_nonfinite(const void *data, wan_dtype t, uint64_t n) {
    const uint32_t *u32 = data;
    const uint16_t *u16 = data;
    uint16_t exp = t == WAN_BF16 ? 0x7f80u : 0x7c00u;
    uint64_t b = 0;
    for (; b + BLOCK <= n; b += BLOCK)
        if (t == WAN_F32 ? nonfinite_block32(u32 + b) : nonfinite_block16(u16 + b, exp)) break;
    for (uint64_t i = b; i < n; i++)
        if (t == WAN_F32 ? (u32[i] & 0x7f800000u) == 0x7f800000u : (u16[i] & exp) == exp) return (int64_t)i;
    return -1;
}

static const char *shape_str(const loaded *t, char *buf, size_t n) {
    int len = snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim; i++) len += snprintf(buf + len, n - (size_t)len, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    snprintf(buf + len, n - (size_t)len, "]");
    return buf;
}

static int check_sample(const char *lpath, const char *tpath, const wan_input_sample *s, const wan_input_limits *lim,
                        loaded *lat, loaded *txt) {
    char sh[160];
    if (lat->ndim == 5 && lat->shape[0] == 1) {
        memmove(lat->shape, lat->shape + 1, 4 * sizeof(int64_t));
        lat->ndim = 4;
    }
    if (lat->ndim != 4)
        return wan_fail(WAN_ERR_RUNTIME, "%s: latent '%s' has shape %s: expected [C, F, H, W]", lpath, s->latent_name,
                        shape_str(lat, sh, sizeof sh));
    if (lat->shape[0] != lim->channels)
        return wan_fail(WAN_ERR_RUNTIME, "%s: latent '%s' has %lld channels (shape %s): expected %d", lpath,
                        s->latent_name, (long long)lat->shape[0], shape_str(lat, sh, sizeof sh), lim->channels);
    for (int i = 1; i < 4; i++)
        if (lat->shape[i] < 1 || lat->shape[i] > (1 << 20))
            return wan_fail(WAN_ERR_RUNTIME, "%s: latent '%s' has shape %s: every size must be positive", lpath,
                            s->latent_name, shape_str(lat, sh, sizeof sh));
    if (txt->ndim == 3 && txt->shape[0] == 1) {
        memmove(txt->shape, txt->shape + 1, 2 * sizeof(int64_t));
        txt->ndim = 2;
    }
    if (txt->ndim != 2)
        return wan_fail(WAN_ERR_RUNTIME, "%s: text '%s' has shape %s: expected [L, %d]", tpath, s->text_name,
                        shape_str(txt, sh, sizeof sh), lim->text_dim);
    if (txt->shape[1] != lim->text_dim)
        return wan_fail(WAN_ERR_RUNTIME, "%s: text '%s' has dimension %lld (shape %s): expected --text-dim %d", tpath,
                        s->text_name, (long long)txt->shape[1], shape_str(txt, sh, sizeof sh), lim->text_dim);
    if (txt->shape[0] > lim->text_len_max)
        return wan_fail(WAN_ERR_RUNTIME, "%s: text '%s' has %lld rows: expected at most --text-len %d", tpath,
                        s->text_name, (long long)txt->shape[0], lim->text_len_max);
    uint64_t nl = (uint64_t)lat->nbytes / wan_dtype_size(lat->dtype), nt = txt->nbytes / wan_dtype_size(txt->dtype);
    int64_t bad = first_nonfinite(lat->data, lat->dtype, nl);
    if (bad >= 0)
        return wan_fail(WAN_ERR_RUNTIME, "%s: latent '%s' has a NaN or Inf at element %lld", lpath, s->latent_name,
                        (long long)bad);
    bad = first_nonfinite(txt->data, txt->dtype, nt);
    if (bad >= 0)
        return wan_fail(WAN_ERR_RUNTIME, "%s: text '%s' has a NaN or Inf at row %lld, column %lld", tpath,
                        s->text_name, (long long)(bad / lim->text_dim), (long long)(bad % lim->text_dim));
    return 0;
}

int wan_input_load(const wan_input_sample *s, const wan_input_limits *lim, wan_input_tensors *out) {
    memset(out, 0, sizeof *out);
    loaded lat = {0}, txt = {0};
    wan_st_set ls = {0}, ts = {0};
    bool lopen = false, topen = false, same = !strcmp(s->latent_path, s->text_path);
    int rc = 0;
    if (is_npy(s->latent_path)) rc = load_npy(s->latent_path, &lat);
    else if (!(rc = wan_st_open(&ls, s->latent_path, NULL))) {
        lopen = true;
        rc = load_st(&ls, s->latent_path, s->latent_name, &lat);
    }
    if (!rc) {
        if (is_npy(s->text_path)) rc = load_npy(s->text_path, &txt);
        else if (same && lopen) rc = load_st(&ls, s->text_path, s->text_name, &txt);
        else if (!(rc = wan_st_open(&ts, s->text_path, NULL))) {
            topen = true;
            rc = load_st(&ts, s->text_path, s->text_name, &txt);
        }
    }
    if (lopen) wan_st_close(&ls);
    if (topen) wan_st_close(&ts);
    if (!rc) rc = check_sample(s->latent_path, s->text_path, s, lim, &lat, &txt);
    if (rc) {
        free(lat.data);
        free(txt.data);
        char who[256];
        wan_input_describe(s, who, sizeof who);
        return wan_error_context(rc, "%s", who);
    }
    out->latent_dtype = lat.dtype;
    out->text_dtype = txt.dtype;
    out->C = lat.shape[0], out->F = lat.shape[1], out->H = lat.shape[2], out->W = lat.shape[3];
    out->rows = txt.shape[0];
    out->dim = txt.shape[1];
    out->latent = lat.data;
    out->text = txt.data;
    out->input_bytes = lat.nbytes + txt.nbytes;
    return 0;
}

void wan_input_tensors_free(wan_input_tensors *t) {
    free(t->latent);
    free(t->text);
    memset(t, 0, sizeof *t);
}
