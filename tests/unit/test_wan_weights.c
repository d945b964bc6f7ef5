/* Wan 2.1 weights in and out: key names both ways, config.json of both layouts, and import /
 * export round trips (official and diffusers, fp32 and bf16, single file and shards), bit-exact,
 * with unknown, missing and misshapen keys rejected by name. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_layout.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "params.h"
#include "reshard.h"
#include "safetensors.h"
#include "test.h"
#include "wan_weights.h"

static char root[512];

static char *at(const char *name) {
    static char bufs[4][1100];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, 1100, "%s/%s", root, name);
    return b;
}

static wan_rs_params io(void) {
    wan_rs_params p = {64u << 20, 2, "test", true};
    return p;
}

static void test_names(void) {
    static const char *pairs[][2] = {
        {"patch_embedding.weight", "patch_embedding.weight"},
        {"text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight"},
        {"text_embedding.2.bias", "condition_embedder.text_embedder.linear_2.bias"},
        {"time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight"},
        {"time_embedding.2.bias", "condition_embedder.time_embedder.linear_2.bias"},
        {"time_projection.1.weight", "condition_embedder.time_proj.weight"},
        {"head.modulation", "scale_shift_table"},
        {"head.head.bias", "proj_out.bias"},
        {"blocks.0.modulation", "blocks.0.scale_shift_table"},
        {"blocks.12.self_attn.q.weight", "blocks.12.attn1.to_q.weight"},
        {"blocks.3.self_attn.o.bias", "blocks.3.attn1.to_out.0.bias"},
        {"blocks.3.self_attn.norm_k.weight", "blocks.3.attn1.norm_k.weight"},
        {"blocks.39.cross_attn.v.weight", "blocks.39.attn2.to_v.weight"},
        {"blocks.39.cross_attn.norm_q.weight", "blocks.39.attn2.norm_q.weight"},
        {"blocks.7.norm3.weight", "blocks.7.norm2.weight"},
        {"blocks.7.ffn.0.weight", "blocks.7.ffn.net.0.proj.weight"},
        {"blocks.7.ffn.2.bias", "blocks.7.ffn.net.2.bias"},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
        char out[128];
        CHECKF(wan_weights_to_diffusers(pairs[i][0], out, sizeof out) == 0 && !strcmp(out, pairs[i][1]), "%s -> %s",
               pairs[i][0], out);
        CHECKF(wan_weights_from_diffusers(pairs[i][1], out, sizeof out) == 0 && !strcmp(out, pairs[i][0]), "%s -> %s",
               pairs[i][1], out);
    }
    /* every key of a model maps both ways, and the diffusers names are distinct */
    wan_model_cfg m = {1536, 8960, 12, 30, 256, 4096, 512, 16, 16, {1, 2, 2}, 1e-6};
    wan_param_set ps;
    CHECK(wan_params_build(&m, 1, 0, 1, 0, 1, &ps) == 0);
    char(*names)[128] = calloc((size_t)ps.n, sizeof *names);
    for (int i = 0; i < ps.n; i++) {
        char back[128];
        CHECKF(wan_weights_to_diffusers(ps.p[i].name, names[i], sizeof names[i]) == 0, "%s", ps.p[i].name);
        CHECK(wan_weights_from_diffusers(names[i], back, sizeof back) == 0 && !strcmp(back, ps.p[i].name));
    }
    int dup = 0;
    for (int i = 0; i < ps.n; i++)
        for (int j = i + 1; j < ps.n; j++) dup += !strcmp(names[i], names[j]);
    CHECK(dup == 0);
    CHECK(ps.n == 30 * 27 + 15);
    free(names);
    wan_params_free(&ps);
    /* not keys of the model */
    static const char *bad[] = {"blocks.0.norm1.weight", "blocks.x.modulation", "blocks.01.modulation",
                                "blocks.0.self_attn.q.scale", "img_emb.proj.0.weight", "head.modulation.weight",
                                "blocks.0.ffn.1.weight", "norm3.weight", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char out[128];
        CHECKF(wan_weights_to_diffusers(bad[i], out, sizeof out) == -1, "%s", bad[i]);
    }
    char out[128];
    CHECK(wan_weights_from_diffusers("blocks.0.norm3.weight", out, sizeof out) == -1);
    CHECK(wan_weights_from_diffusers("blocks.0.attn2.add_k_proj.weight", out, sizeof out) == -1);
    CHECK(wan_weights_from_diffusers("condition_embedder.image_embedder.norm1.weight", out, sizeof out) == -1);
}

/* The config.json of the official 1.3B release, as published. */
static const char *official_13b =
    "{\"_class_name\": \"WanModel\", \"_diffusers_version\": \"0.30.0\", \"dim\": 1536, \"eps\": 1e-06, "
    "\"ffn_dim\": 8960, \"freq_dim\": 256, \"in_dim\": 16, \"model_type\": \"t2v\", \"num_heads\": 12, "
    "\"num_layers\": 30, \"out_dim\": 16, \"text_len\": 512}";
static const char *diffusers_14b =
    "{\"_class_name\": \"WanTransformer3DModel\", \"_diffusers_version\": \"0.33.0.dev0\", \"added_kv_proj_dim\": null,"
    " \"attention_head_dim\": 128, \"cross_attn_norm\": true, \"eps\": 1e-06, \"ffn_dim\": 13824, \"freq_dim\": 256,"
    " \"image_dim\": null, \"in_channels\": 16, \"num_attention_heads\": 40, \"num_layers\": 40, \"out_channels\": 16,"
    " \"patch_size\": [1, 2, 2], \"qk_norm\": \"rms_norm_across_heads\", \"rope_max_seq_len\": 1024, \"text_dim\": 4096}";

static void test_config_json(void) {
    wan_weights_format f = WAN_FORMAT_AUTO;
    wan_model_cfg m;
    unsigned given;
    CHECK(wan_weights_parse_config(official_13b, "o.json", &f, &m, &given) == 0);
    CHECK(f == WAN_FORMAT_WAN && m.dim == 1536 && m.ffn_dim == 8960 && m.num_heads == 12 && m.num_layers == 30);
    CHECK(m.text_dim == 4096 && m.patch_size[0] == 1 && m.patch_size[2] == 2 && m.text_len == 512 && m.eps == 1e-6);
    CHECK((given & WAN_WF_TEXT_DIM) == 0 && (given & WAN_WF_PATCH) == 0 && (given & WAN_WF_TEXT_LEN));
    f = WAN_FORMAT_AUTO;
    CHECK(wan_weights_parse_config(diffusers_14b, "d.json", &f, &m, &given) == 0);
    CHECK(f == WAN_FORMAT_DIFFUSERS && m.dim == 5120 && m.num_heads == 40 && m.ffn_dim == 13824 && m.num_layers == 40);
    CHECK(m.in_dim == 16 && m.out_dim == 16 && m.text_len == 512 && !(given & WAN_WF_TEXT_LEN));
    /* written and read back, both layouts */
    wan_model_cfg t = {64, 128, 2, 2, 256, 32, 16, 16, 16, {1, 2, 2}, 1e-6};
    for (int k = 0; k < 2; k++) {
        wan_weights_format w = k ? WAN_FORMAT_DIFFUSERS : WAN_FORMAT_WAN, r = WAN_FORMAT_AUTO;
        char *text = wan_weights_config_json(&t, w);
        wan_model_cfg back;
        CHECK(wan_weights_parse_config(text, "w.json", &r, &back, &given) == 0 && r == w);
        if (w == WAN_FORMAT_DIFFUSERS) back.text_len = t.text_len; /* diffusers has no text_len */
        CHECK(!memcmp(&back, &t, sizeof t));
        free(text);
    }
    /* refusals naming the key */
    struct {
        const char *text, *want;
    } bad[] = {
        {"{\"_class_name\": \"WanModel\", \"model_type\": \"i2v\", \"dim\": 64}", "model_type"},
        {"{\"_class_name\": \"WanModel\", \"ffn_dim\": 128, \"freq_dim\": 256, \"in_dim\": 16, \"out_dim\": 16, "
         "\"num_heads\": 2, \"num_layers\": 2, \"text_len\": 16, \"eps\": 1e-6}", "missing \"dim\""},
        {"{\"_class_name\": \"WanModel\", \"dim\": \"64\"}", "\"dim\": expected a positive integer"},
        {"{\"_class_name\": \"WanTransformer3DModel\", \"image_dim\": 1280}", "image_dim"},
        {"{\"_class_name\": \"WanTransformer3DModel\", \"qk_norm\": \"rms_norm\"}", "qk_norm"},
        {"{\"_class_name\": \"UNet2DConditionModel\"}", "_class_name"},
        {"{\"foo\": 1}", "neither"},
        {"{\"dim\": 64", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        f = WAN_FORMAT_AUTO;
        CHECK(wan_weights_parse_config(bad[i].text, "bad.json", &f, &m, &given) != 0);
        CHECKF(strstr(wan_errmsg(), bad[i].want) && strstr(wan_errmsg(), "bad.json"), "%s", wan_errmsg());
    }
    f = WAN_FORMAT_DIFFUSERS;
    CHECK(wan_weights_parse_config(official_13b, "o.json", &f, &m, &given) == WAN_ERR_USAGE);
    wan_error_clear();
}

static int export_to(const char *ck, const char *dir, wan_weights_format f, int dtype, uint64_t shard) {
    wan_export_opts o;
    memset(&o, 0, sizeof o);
    o.format = f;
    o.dtype = dtype;
    o.max_shard = shard;
    o.io = io();
    return wan_weights_export(ck, dir, &o, NULL);
}

static int import_from(const char *src, const char *dst, wan_weights_format f, const char *layout,
                       const char *const *sets, int nsets) {
    wan_config base;
    wan_config_defaults(&base);
    wan_import_opts o;
    memset(&o, 0, sizeof o);
    o.format = f;
    o.base = &base;
    o.model_sets = sets;
    o.nmodel_sets = nsets;
    o.dtype = -1;
    wan_layout_parse(layout, &o.layout);
    o.io = io();
    return wan_weights_import(src, dst, &o, NULL);
}

/* Digests of the model weights of a checkpoint, in tensor-name order of the source. */
static bool same_weights(const char *a, const char *b) {
    wan_ckpt ca, cb;
    if (wan_ckpt_open(&ca, a) || wan_ckpt_open(&cb, b)) return false;
    uint64_t *da = calloc((size_t)ca.nt, 8), *db = calloc((size_t)cb.nt, 8);
    wan_rs_params p = io();
    bool ok = !wan_rs_digests(&ca, &p, da) && !wan_rs_digests(&cb, &p, db);
    int models = 0;
    for (int i = 0; i < ca.nt && ok; i++) {
        if (ca.t[i].kind != 0) continue;
        models++;
        const wan_ckpt_tensor *t = wan_ckpt_find(&cb, ca.t[i].name, 0);
        ok = t && t->dtype == ca.t[i].dtype && db[t - cb.t] == da[i];
        if (!ok) fprintf(stderr, "  %s differs between %s and %s\n", ca.t[i].name, a, b);
    }
    ok = ok && models == cb.nt && models > 0;
    free(da);
    free(db);
    wan_ckpt_close(&ca);
    wan_ckpt_close(&cb);
    return ok;
}

static void test_round_trips(void) {
    wan_config c;
    wan_config_defaults(&c);
    wan_ckpt_layout L;
    wan_layout_parse("tp=2,dp=2", &L);
    CHECK(wan_rs_make_synthetic(at("f32"), 3, &c, &L, WAN_KINDS_ALL, WAN_F32, 5) == 0);
    CHECK(wan_rs_make_synthetic(at("bf16"), 3, &c, &L, WAN_KINDS_ALL, WAN_BF16, 5) == 0);
    /* the text length of the tiny model is not Wan's 512: diffusers configs do not carry it */
    const char *sets[] = {"model.text_len=16"};
    const char *names[] = {"f32", "bf16"};
    for (int d = 0; d < 2; d++)
        for (int f = 0; f < 2; f++) {
            wan_weights_format fmt = f ? WAN_FORMAT_DIFFUSERS : WAN_FORMAT_WAN;
            char ex[64], im[64];
            snprintf(ex, sizeof ex, "ex_%s_%d", names[d], f);
            snprintf(im, sizeof im, "im_%s_%d", names[d], f);
            CHECKF(export_to(at(names[d]), at(ex), fmt, -1, 10u << 20) == 0, "%s", wan_errmsg());
            CHECK(import_from(at(ex), at(im), WAN_FORMAT_AUTO, "tp=1", sets, f ? 1 : 0) == 0);
            CHECKF(same_weights(at(names[d]), at(im)), "%s %s", names[d], wan_weights_format_name(fmt));
            wan_ckpt ck;
            CHECK(wan_ckpt_open(&ck, at(im)) == 0);
            CHECK(ck.step == 0 && ck.layout.world == 1 && !memcmp(&ck.cfg.model, &c.model, sizeof c.model));
            wan_ckpt_close(&ck);
        }
    /* fp32 exported as bf16 equals the bf16 weights of the same values (round to nearest even) */
    CHECK(export_to(at("f32"), at("ex_cast"), WAN_FORMAT_WAN, WAN_BF16, 10u << 20) == 0);
    CHECK(import_from(at("ex_cast"), at("im_cast"), WAN_FORMAT_AUTO, "tp=1", NULL, 0) == 0);
    CHECK(same_weights(at("bf16"), at("im_cast")));
    /* shards with an index JSON; imported straight into another layout */
    CHECK(export_to(at("f32"), at("ex_shards"), WAN_FORMAT_DIFFUSERS, -1, 64u << 10) == 0);
    CHECK(wan_path_exists(at("ex_shards/diffusion_pytorch_model.safetensors.index.json")));
    /* tiny model: 64 KiB shards; each shard's tensors fit it unless one alone is larger */
    wan_st_set set;
    CHECK(wan_st_open(&set, at("ex_shards"), "diffusion_pytorch_model") == 0);
    CHECKF(set.nfiles > 4 && set.n == 69, "%d files, %d tensors", set.nfiles, set.n);
    char first[64];
    snprintf(first, sizeof first, "ex_shards/diffusion_pytorch_model-00001-of-%05d.safetensors", set.nfiles);
    CHECK(wan_path_exists(at(first)));
    wan_st_close(&set);
    CHECK(import_from(at("ex_shards"), at("im_shards"), WAN_FORMAT_DIFFUSERS, "tp=2,pp=2", sets, 1) == 0);
    CHECK(same_weights(at("f32"), at("im_shards")));
    wan_ckpt ck;
    CHECK(wan_ckpt_open(&ck, at("im_shards")) == 0 && ck.layout.tp == 2 && ck.layout.pp == 2 && ck.nfiles == 4);
    wan_ckpt_close(&ck);
    /* text_len given by the release cannot be contradicted */
    const char *contra[] = {"model.text_len=99"};
    CHECK(import_from(at("ex_f32_0"), at("im_contra"), WAN_FORMAT_AUTO, "tp=1", contra, 1) == WAN_ERR_USAGE);
    CHECK(strstr(wan_errmsg(), "text_len") != NULL && !wan_path_exists(at("im_contra")));
    /* the wrong --format for the files */
    CHECK(import_from(at("ex_f32_1"), at("im_fmt"), WAN_FORMAT_WAN, "tp=1", NULL, 0) == WAN_ERR_USAGE);
    /* export refuses to overwrite */
    CHECK(export_to(at("f32"), at("ex_f32_0"), WAN_FORMAT_WAN, -1, 10u << 20) == WAN_ERR_USAGE);
    wan_error_clear();
}

/* A release written by hand: every key of the model with its shape, plus edits. */
static int write_release(const char *dir, const char *extra, const char *drop, const char *reshape) {
    wan_config c;
    wan_config_defaults(&c);
    wan_param_set ps;
    WAN_TRY(wan_params_build(&c.model, 1, 0, 1, 0, 1, &ps));
    WAN_TRY(wan_mkdir_p(dir));
    wan_st_tensor *tab = calloc((size_t)ps.n + 1, sizeof *tab);
    int n = 0;
    for (int i = 0; i < ps.n; i++) {
        if (drop && !strcmp(ps.p[i].name, drop)) continue;
        snprintf(tab[n].name, sizeof tab[n].name, "%s", ps.p[i].name);
        tab[n].dtype = WAN_F32;
        tab[n].ndim = ps.p[i].ndim;
        memcpy(tab[n].shape, ps.p[i].shape, (size_t)ps.p[i].ndim * sizeof(int64_t));
        if (reshape && !strcmp(ps.p[i].name, reshape)) tab[n].shape[0]++;
        n++;
    }
    if (extra) {
        snprintf(tab[n].name, sizeof tab[n].name, "%s", extra);
        tab[n].dtype = WAN_F32;
        tab[n].ndim = 1;
        tab[n].shape[0] = 4;
        n++;
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    wan_st_writer *w;
    int rc = wan_st_writer_open(&w, path, tab, n, NULL);
    for (int i = 0; i < n && !rc; i++) {
        int64_t numel = 1;
        for (int d = 0; d < tab[i].ndim; d++) numel *= tab[i].shape[d];
        float *v = malloc((size_t)numel * sizeof *v);
        for (int64_t e = 0; e < numel; e++) v[e] = wan_rs_synthetic_value(9, tab[i].name, 0, e);
        rc = wan_st_writer_write(w, i, 0, v, (uint64_t)numel * 4);
        free(v);
    }
    if (!rc) rc = wan_st_writer_close(w);
    char *json = wan_weights_config_json(&c.model, WAN_FORMAT_WAN);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!rc) rc = wan_write_file_atomic(path, json, strlen(json));
    free(json);
    free(tab);
    wan_params_free(&ps);
    return rc;
}

static void test_bad_releases(void) {
    CHECK(write_release(at("rel_ok"), NULL, NULL, NULL) == 0);
    CHECK(import_from(at("rel_ok"), at("rel_ok_ck"), WAN_FORMAT_AUTO, "tp=1", NULL, 0) == 0);
    /* the imported values are the file's, element for element */
    wan_ckpt ck;
    CHECK(wan_ckpt_open(&ck, at("rel_ok_ck")) == 0);
    const wan_ckpt_tensor *t = wan_ckpt_find(&ck, "blocks.1.ffn.2.weight", 0);
    CHECK(t != NULL);
    if (t) {
        wan_box b;
        memset(&b, 0, sizeof b);
        b.start[0] = 5, b.start[1] = 7, b.shape[0] = 1, b.shape[1] = 1;
        float v = 0;
        CHECK(wan_ckpt_read_box(&ck, t, &b, &v, WAN_F32) == 0);
        CHECK(v != 0 && v == wan_rs_synthetic_value(9, "blocks.1.ffn.2.weight", 0, 5 * t->shape[1] + 7));
    }
    wan_ckpt_close(&ck);

    CHECK(write_release(at("rel_extra"), "blocks.0.self_attn.q.scale", NULL, NULL) == 0);
    CHECK(import_from(at("rel_extra"), at("rel_extra_ck"), WAN_FORMAT_AUTO, "tp=1", NULL, 0) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "blocks.0.self_attn.q.scale") != NULL, "%s", wan_errmsg());
    CHECK(!wan_path_exists(at("rel_extra_ck")));
    CHECK(write_release(at("rel_drop"), NULL, "blocks.1.norm3.bias", NULL) == 0);
    CHECK(import_from(at("rel_drop"), at("rel_drop_ck"), WAN_FORMAT_AUTO, "tp=1", NULL, 0) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "missing: blocks.1.norm3.bias") != NULL, "%s", wan_errmsg());
    CHECK(write_release(at("rel_shape"), NULL, NULL, "head.head.weight") == 0);
    CHECK(import_from(at("rel_shape"), at("rel_shape_ck"), WAN_FORMAT_AUTO, "tp=1", NULL, 0) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "head.head.weight has shape [65, 64]") != NULL, "%s", wan_errmsg());
    /* a truncated weight file */
    CHECK(truncate(at("rel_ok/diffusion_pytorch_model.safetensors"), 5000) == 0);
    CHECK(import_from(at("rel_ok"), at("rel_trunc_ck"), WAN_FORMAT_AUTO, "tp=1", NULL, 0) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "diffusion_pytorch_model.safetensors") != NULL, "%s", wan_errmsg());
    CHECK(!wan_path_exists(at("rel_trunc_ck")));
    /* no config.json */
    CHECK(unlink(at("rel_drop/config.json")) == 0);
    CHECK(import_from(at("rel_drop"), at("rel_nocfg"), WAN_FORMAT_AUTO, "tp=1", NULL, 0) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "config.json") != NULL, "%s", wan_errmsg());
    wan_error_clear();
}

int main(void) {
    wan_log_set_level(WAN_LOG_ERROR);
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : wan_is_dir("/dev/shm") ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/wan-test-weights.XXXXXX", base);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_names);
    RUN(test_config_json);
    RUN(test_round_trips);
    RUN(test_bad_releases);
    wan_rm_rf(root);
    return test_summary();
}
