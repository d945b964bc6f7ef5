/* wan-preprocess synth (synthetic input sets on disk) and export (one decoded sample). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dataset.h"
#include "dataset_build.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "npy.h"
#include "rng.h"
#include "safetensors.h"

void wan_synth_defaults(wan_synth_opts *o) {
    memset(o, 0, sizeof *o);
    o->count = 16;
    o->nshapes = 1;
    o->shapes[0][0] = 21, o->shapes[0][1] = 60, o->shapes[0][2] = 104; /* 81 frames at 832 x 480 */
    o->channels = 16;
    o->text_len = 512;
    o->text_dim = 4096;
    o->seed = 1234;
    o->dtype = WAN_F32;
}

/* A caption of a few words drawn from the sample's index, so that captions differ. */
static void caption(uint64_t seed, int64_t i, char *buf, size_t n) {
    static const char *adj[] = {"slow", "bright", "quiet", "windy", "busy", "misty", "golden", "rainy"};
    static const char *noun[] = {"river", "city street", "forest", "harbour", "kitchen", "mountain road", "beach", "market"};
    static const char *shot[] = {"aerial shot", "close-up", "tracking shot", "time-lapse", "handheld shot", "wide shot"};
    uint32_t r[4];
    wan_philox(r, (uint32_t)i, (uint32_t)((uint64_t)i >> 32), 7, WAN_RNG_SYNTH, (uint32_t)seed, (uint32_t)(seed >> 32));
    snprintf(buf, n, "%s of a %s %s, synthetic sample %lld", shot[r[0] % 6], adj[r[1] % 8], noun[r[2] % 8], (long long)i);
}

static int write_sample(const wan_synth_opts *o, int64_t i, float *lat, float *txt, void *conv) {
    const int *shp = o->shapes[i % o->nshapes];
    int len;
    wan_synth_sample(o->seed, i, o->channels, shp[0], shp[1], shp[2], o->text_len, o->text_dim, lat, txt, &len);
    int rows = o->trim_text ? len : o->text_len;
    size_t nl = (size_t)o->channels * shp[0] * shp[1] * shp[2], nt = (size_t)rows * o->text_dim;
    size_t es = wan_dtype_size(o->dtype);
    char name[64], path[WAN_PATH_MAX];
    wan_st_tensor t[2] = {{.name = "latent", .dtype = o->dtype, .ndim = 4, .shape = {o->channels, shp[0], shp[1], shp[2]}},
                          {.name = "text", .dtype = o->dtype, .ndim = 2, .shape = {rows, o->text_dim}}};
    if (o->npy) {
        snprintf(name, sizeof name, "synth-%06lld.latent.npy", (long long)i);
        WAN_TRY(wan_path_join(path, sizeof path, o->out_dir, name));
        wan_convert(conv, o->dtype, lat, WAN_F32, nl);
        WAN_TRY(wan_npy_write(path, o->dtype, 4, t[0].shape, conv));
        snprintf(name, sizeof name, "synth-%06lld.text.npy", (long long)i);
        WAN_TRY(wan_path_join(path, sizeof path, o->out_dir, name));
        wan_convert(conv, o->dtype, txt, WAN_F32, nt);
        return wan_npy_write(path, o->dtype, 2, t[1].shape, conv);
    }
    snprintf(name, sizeof name, "synth-%06lld.safetensors", (long long)i);
    WAN_TRY(wan_path_join(path, sizeof path, o->out_dir, name));
    wan_st_writer *w;
    WAN_TRY(wan_st_writer_open(&w, path, t, 2, "{\"source\":\"wan-preprocess synth\"}"));
    wan_convert(conv, o->dtype, lat, WAN_F32, nl);
    int rc = wan_st_writer_write(w, 0, 0, conv, nl * es);
    wan_convert(conv, o->dtype, txt, WAN_F32, nt);
    if (!rc) rc = wan_st_writer_write(w, 1, 0, conv, nt * es);
    if (rc) {
        wan_st_writer_abort(w);
        return rc;
    }
    return wan_st_writer_close(w);
}

int wan_build_synth(const wan_synth_opts *o) {
    if (o->count < 1 || o->nshapes < 1 || o->channels < 1 || o->text_len < 1 || o->text_dim < 1)
        return wan_fail(WAN_ERR_USAGE, "synth: count, shapes, channels, text length and width must be positive");
    if (o->npy && o->dtype == WAN_BF16) return wan_fail(WAN_ERR_USAGE, "synth: .npy has no bfloat16; use --dtype f32 or f16");
    WAN_TRY(wan_mkdir_p(o->out_dir));
    size_t maxlat = 0, nt = (size_t)o->text_len * o->text_dim;
    for (int s = 0; s < o->nshapes; s++) {
        size_t n = (size_t)o->channels * o->shapes[s][0] * o->shapes[s][1] * o->shapes[s][2];
        if (n > maxlat) maxlat = n;
    }
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    int64_t failed_at = -1;
    char failed_msg[2048] = "";
    wan_progress pr;
    wan_progress_begin(&pr, "synth", (uint64_t)o->count, false);
#pragma omp parallel num_threads(threads)
    {
        float *lat = malloc(maxlat * sizeof(float)), *txt = malloc(nt * sizeof(float));
        void *conv = malloc((maxlat > nt ? maxlat : nt) * sizeof(float));
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < o->count; i++) {
            int rc = (!lat || !txt || !conv) ? wan_fail(WAN_ERR_RUNTIME, "out of memory") : write_sample(o, i, lat, txt, conv);
#pragma omp critical
            {
                if (rc && (failed_at < 0 || i < failed_at)) {
                    failed_at = i;
                    snprintf(failed_msg, sizeof failed_msg, "%s", wan_errmsg());
                }
                wan_progress_add(&pr, 1);
            }
        }
        free(lat);
        free(txt);
        free(conv);
    }
    if (failed_at >= 0) return wan_fail(WAN_ERR_RUNTIME, "synth sample %lld: %s", (long long)failed_at, failed_msg);
    wan_progress_end(&pr);
    /* The manifest last: it is what makes the set usable. */
    size_t cap = (size_t)o->count * 256 + 1, len = 0;
    char *m = malloc(cap);
    if (!m) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int64_t i = 0; i < o->count; i++) {
        char cap_s[160], id[32], a[64], b[64];
        caption(o->seed, i, cap_s, sizeof cap_s);
        snprintf(id, sizeof id, "synth-%06lld", (long long)i);
        json_t *j;
        if (o->npy) {
            snprintf(a, sizeof a, "%s.latent.npy", id);
            snprintf(b, sizeof b, "%s.text.npy", id);
            j = json_pack("{sssssssssssi}", "id", id, "latent", a, "text", b, "caption", cap_s, "source", "synthetic",
                          "fps", 16);
        } else {
            snprintf(a, sizeof a, "%s.safetensors", id);
            j = json_pack("{sssssssssi}", "id", id, "path", a, "caption", cap_s, "source", "synthetic", "fps", 16);
        }
        char *s = json_dumps(j, JSON_COMPACT);
        json_decref(j);
        size_t l = s ? strlen(s) : 0;
        if (s && len + l + 1 < cap) {
            memcpy(m + len, s, l);
            m[len + l] = '\n';
            len += l + 1;
        }
        free(s);
    }
    char mp[WAN_PATH_MAX];
    int rc = wan_path_join(mp, sizeof mp, o->out_dir, "manifest.jsonl");
    if (!rc) rc = wan_write_file_atomic(mp, m, len);
    free(m);
    if (!rc) wan_info("%s: %lld synthetic samples and manifest.jsonl", o->out_dir, (long long)o->count);
    return rc;
}

int wan_build_export(const char *dir, int64_t index, const char *out_path) {
    wan_dataset *ds;
    WAN_TRY(wan_dataset_open(dir, &ds));
    wan_sample_info info;
    int rc = wan_dataset_info(ds, index, &info);
    float *lat = NULL, *txt = NULL;
    size_t nl = (size_t)info.C * info.F * info.H * info.W, nt = (size_t)info.text_len * info.text_dim;
    if (!rc) {
        lat = malloc(nl * sizeof(float));
        txt = malloc((nt ? nt : 1) * sizeof(float));
        if (!lat || !txt) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    }
    if (!rc) rc = wan_dataset_read(ds, index, lat, txt, info.text_len, true);
    if (!rc) {
        wan_st_tensor t[2] = {{.name = "latent", .dtype = WAN_F32, .ndim = 4, .shape = {info.C, info.F, info.H, info.W}},
                              {.name = "text", .dtype = WAN_F32, .ndim = 2, .shape = {info.text_len, info.text_dim}}};
        json_t *meta = json_pack("{ssss}", "id", info.id, "dataset", dir);
        char *ms = json_dumps(meta, JSON_COMPACT);
        json_decref(meta);
        wan_st_writer *w;
        rc = wan_st_writer_open(&w, out_path, t, 2, ms);
        free(ms);
        if (!rc) {
            rc = wan_st_writer_write(w, 0, 0, lat, nl * sizeof(float));
            if (!rc) rc = wan_st_writer_write(w, 1, 0, txt, nt * sizeof(float));
            if (rc) wan_st_writer_abort(w);
            else rc = wan_st_writer_close(w);
        }
    }
    free(lat);
    free(txt);
    wan_dataset_close(ds);
    return rc;
}
