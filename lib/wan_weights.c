/* Key names and config.json of the official Wan 2.1 and diffusers layouts (see wan_weights.h). */
#include "wan_weights.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

const char *wan_weights_format_name(wan_weights_format f) {
    return f == WAN_FORMAT_WAN ? "wan" : f == WAN_FORMAT_DIFFUSERS ? "diffusers" : "auto";
}

/* ---------------------------------------------------------------- key names */

/* A name is prefix + "weight" / "bias" (or the prefix alone when whole). Block rules apply
 * after "blocks.N.". diffusers calls the affine LayerNorm of the block norm2 (official norm3). */
typedef struct {
    const char *wan, *diffusers;
    bool whole;
} name_rule;

static const name_rule top_rules[] = {
    {"patch_embedding.", "patch_embedding.", false},
    {"text_embedding.0.", "condition_embedder.text_embedder.linear_1.", false},
    {"text_embedding.2.", "condition_embedder.text_embedder.linear_2.", false},
    {"time_embedding.0.", "condition_embedder.time_embedder.linear_1.", false},
    {"time_embedding.2.", "condition_embedder.time_embedder.linear_2.", false},
    {"time_projection.1.", "condition_embedder.time_proj.", false},
    {"head.modulation", "scale_shift_table", true},
    {"head.head.", "proj_out.", false},
};

static const name_rule block_rules[] = {
    {"modulation", "scale_shift_table", true},
    {"self_attn.q.", "attn1.to_q.", false},
    {"self_attn.k.", "attn1.to_k.", false},
    {"self_attn.v.", "attn1.to_v.", false},
    {"self_attn.o.", "attn1.to_out.0.", false},
    {"self_attn.norm_q.", "attn1.norm_q.", false},
    {"self_attn.norm_k.", "attn1.norm_k.", false},
    {"cross_attn.q.", "attn2.to_q.", false},
    {"cross_attn.k.", "attn2.to_k.", false},
    {"cross_attn.v.", "attn2.to_v.", false},
    {"cross_attn.o.", "attn2.to_out.0.", false},
    {"cross_attn.norm_q.", "attn2.norm_q.", false},
    {"cross_attn.norm_k.", "attn2.norm_k.", false},
    {"norm3.", "norm2.", false},
    {"ffn.0.", "ffn.net.0.proj.", false},
    {"ffn.2.", "ffn.net.2.", false},
};

/* Apply the first matching rule of a table to name (from = 0: wan -> diffusers). */
static int apply_rules(const name_rule *rules, int n, bool to_diffusers, const char *prefix, const char *name,
                       char *out, size_t cap) {
    for (int i = 0; i < n; i++) {
        const char *from = to_diffusers ? rules[i].wan : rules[i].diffusers;
        const char *to = to_diffusers ? rules[i].diffusers : rules[i].wan;
        size_t fl = strlen(from);
        if (strncmp(name, from, fl)) continue;
        const char *rest = name + fl;
        if (rules[i].whole ? *rest != 0 : strcmp(rest, "weight") && strcmp(rest, "bias")) continue;
        if (snprintf(out, cap, "%s%s%s", prefix, to, rest) >= (int)cap) return -1;
        return 0;
    }
    return -1;
}

static int map_name(const char *name, bool to_diffusers, char *out, size_t cap) {
    if (!strncmp(name, "blocks.", 7)) {
        const char *p = name + 7;
        size_t digits = strspn(p, "0123456789");
        if (!digits || p[digits] != '.' || (p[0] == '0' && digits > 1) || digits > 6) return -1;
        char prefix[24];
        snprintf(prefix, sizeof prefix, "blocks.%.*s.", (int)digits, p);
        return apply_rules(block_rules, (int)(sizeof block_rules / sizeof *block_rules), to_diffusers, prefix,
                           p + digits + 1, out, cap);
    }
    return apply_rules(top_rules, (int)(sizeof top_rules / sizeof *top_rules), to_diffusers, "", name, out, cap);
}

int wan_weights_to_diffusers(const char *official, char *out, size_t n) { return map_name(official, true, out, n); }
int wan_weights_from_diffusers(const char *diffusers, char *out, size_t n) {
    return map_name(diffusers, false, out, n);
}

/* ---------------------------------------------------------------- config.json */

static int get_int(json_t *root, const char *key, bool required, int *out, bool *given, const char *path) {
    json_t *v = json_object_get(root, key);
    *given = v != NULL;
    if (!v) return required ? wan_fail(WAN_ERR_RUNTIME, "%s: missing \"%s\" (expected a positive integer)", path, key) : 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1 << 30)
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"%s\": expected a positive integer", path, key);
    *out = (int)json_integer_value(v);
    return 0;
}

static int get_real(json_t *root, const char *key, bool required, double *out, bool *given, const char *path) {
    json_t *v = json_object_get(root, key);
    *given = v != NULL;
    if (!v) return required ? wan_fail(WAN_ERR_RUNTIME, "%s: missing \"%s\" (expected a positive number)", path, key) : 0;
    if (!json_is_number(v) || !(json_number_value(v) > 0))
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"%s\": expected a positive number", path, key);
    *out = json_number_value(v);
    return 0;
}

static int get_patch(json_t *root, const char *key, int *out, bool *given, const char *path) {
    json_t *v = json_object_get(root, key);
    *given = v != NULL;
    if (!v) return 0;
    if (!json_is_array(v) || json_array_size(v) != 3)
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"%s\": expected a list of 3 positive integers", path, key);
    for (int i = 0; i < 3; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > 64)
            return wan_fail(WAN_ERR_RUNTIME, "%s: \"%s\"[%d]: expected a positive integer", path, key, i);
        out[i] = (int)json_integer_value(e);
    }
    return 0;
}

/* A key that, when present, must have the value of the text-to-video model. */
static int expect_null(json_t *root, const char *key, const char *path) {
    json_t *v = json_object_get(root, key);
    if (v && !json_is_null(v))
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"%s\" is set: an image-to-video or other variant; only the Wan 2.1 "
                                         "text-to-video model is supported", path, key);
    return 0;
}

static int expect_true(json_t *root, const char *key, const char *path) {
    json_t *v = json_object_get(root, key);
    if (v && !json_is_true(v))
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"%s\": expected true (the Wan 2.1 model has it on)", path, key);
    return 0;
}

static void wan_defaults(wan_model_cfg *m) {
    memset(m, 0, sizeof *m);
    m->freq_dim = 256;
    m->text_dim = 4096;
    m->text_len = 512;
    m->patch_size[0] = 1, m->patch_size[1] = 2, m->patch_size[2] = 2;
    m->eps = 1e-6;
}

static int parse_wan(json_t *root, const char *path, wan_model_cfg *m, unsigned *given) {
    bool g;
    const char *type = json_string_value(json_object_get(root, "model_type"));
    if (json_object_get(root, "model_type") && (!type || strcmp(type, "t2v")))
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"model_type\" is %s: only the text-to-video model (t2v) is supported",
                        path, type ? type : "not a string");
    WAN_TRY(expect_true(root, "qk_norm", path));
    WAN_TRY(expect_true(root, "cross_attn_norm", path));
    json_t *win = json_object_get(root, "window_size");
    if (win && !(json_is_array(win) && json_array_size(win) == 2 &&
                 json_integer_value(json_array_get(win, 0)) == -1 && json_integer_value(json_array_get(win, 1)) == -1))
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"window_size\": expected [-1, -1] (no attention window)", path);
#define INT(key, field, bit, req)                                                                                      \
    do {                                                                                                               \
        WAN_TRY(get_int(root, key, req, &m->field, &g, path));                                                        \
        if (g) *given |= bit;                                                                                          \
    } while (0)
    INT("dim", dim, WAN_WF_DIM, true);
    INT("ffn_dim", ffn_dim, WAN_WF_FFN, true);
    INT("freq_dim", freq_dim, WAN_WF_FREQ, true);
    INT("in_dim", in_dim, WAN_WF_IN, true);
    INT("out_dim", out_dim, WAN_WF_OUT, true);
    INT("num_heads", num_heads, WAN_WF_HEADS, true);
    INT("num_layers", num_layers, WAN_WF_LAYERS, true);
    INT("text_len", text_len, WAN_WF_TEXT_LEN, true);
    INT("text_dim", text_dim, WAN_WF_TEXT_DIM, false);
    WAN_TRY(get_real(root, "eps", true, &m->eps, &g, path));
    if (g) *given |= WAN_WF_EPS;
    WAN_TRY(get_patch(root, "patch_size", m->patch_size, &g, path));
    if (g) *given |= WAN_WF_PATCH;
    return 0;
}

static int parse_diffusers(json_t *root, const char *path, wan_model_cfg *m, unsigned *given) {
    bool g;
    WAN_TRY(expect_null(root, "image_dim", path));
    WAN_TRY(expect_null(root, "added_kv_proj_dim", path));
    WAN_TRY(expect_null(root, "pos_embed_seq_len", path));
    WAN_TRY(expect_true(root, "cross_attn_norm", path));
    json_t *qk = json_object_get(root, "qk_norm");
    if (qk && (!json_is_string(qk) || strcmp(json_string_value(qk), "rms_norm_across_heads")))
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"qk_norm\": expected \"rms_norm_across_heads\" (Wan 2.1 normalises q and "
                                         "k over the full dim)", path);
    int heads = 0, head_dim = 0;
    bool gh, gd;
    WAN_TRY(get_int(root, "num_attention_heads", true, &heads, &gh, path));
    WAN_TRY(get_int(root, "attention_head_dim", true, &head_dim, &gd, path));
    m->num_heads = heads;
    m->dim = heads * head_dim;
    *given |= WAN_WF_HEADS | WAN_WF_DIM;
    INT("in_channels", in_dim, WAN_WF_IN, true);
    INT("out_channels", out_dim, WAN_WF_OUT, true);
    INT("ffn_dim", ffn_dim, WAN_WF_FFN, true);
    INT("num_layers", num_layers, WAN_WF_LAYERS, true);
    INT("text_dim", text_dim, WAN_WF_TEXT_DIM, false);
    INT("freq_dim", freq_dim, WAN_WF_FREQ, false);
#undef INT
    WAN_TRY(get_real(root, "eps", false, &m->eps, &g, path));
    if (g) *given |= WAN_WF_EPS;
    WAN_TRY(get_patch(root, "patch_size", m->patch_size, &g, path));
    if (g) *given |= WAN_WF_PATCH;
    return 0;
}

int wan_weights_parse_config(const char *text, const char *path, wan_weights_format *fmt, wan_model_cfg *m,
                             unsigned *given) {
    json_error_t je;
    json_t *root = json_loads(text, 0, &je);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return wan_fail(WAN_ERR_RUNTIME, "%s:%d: not a JSON object (%s)", path, je.line, root ? "" : je.text);
    }
    wan_defaults(m);
    *given = 0;
    const char *cls = json_string_value(json_object_get(root, "_class_name"));
    wan_weights_format found = WAN_FORMAT_AUTO;
    if (cls && !strcmp(cls, "WanModel")) found = WAN_FORMAT_WAN;
    else if (cls && !strcmp(cls, "WanTransformer3DModel")) found = WAN_FORMAT_DIFFUSERS;
    else if (cls) {
        json_decref(root);
        return wan_fail(WAN_ERR_RUNTIME, "%s: \"_class_name\" is \"%s\": expected WanModel (official Wan 2.1) or "
                                         "WanTransformer3DModel (diffusers)", path, cls);
    } else if (json_object_get(root, "num_attention_heads")) found = WAN_FORMAT_DIFFUSERS;
    else if (json_object_get(root, "num_heads")) found = WAN_FORMAT_WAN;
    int rc = 0;
    if (found == WAN_FORMAT_AUTO && *fmt == WAN_FORMAT_AUTO)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: neither a Wan 2.1 (num_heads, dim, ...) nor a diffusers "
                                       "(num_attention_heads, attention_head_dim, ...) model config", path);
    else if (found != WAN_FORMAT_AUTO && *fmt != WAN_FORMAT_AUTO && found != *fmt)
        rc = wan_fail(WAN_ERR_USAGE, "%s: a %s config, but --format %s was given", path, wan_weights_format_name(found),
                      wan_weights_format_name(*fmt));
    if (!rc) {
        if (*fmt == WAN_FORMAT_AUTO) *fmt = found;
        rc = *fmt == WAN_FORMAT_WAN ? parse_wan(root, path, m, given) : parse_diffusers(root, path, m, given);
    }
    json_decref(root);
    return rc;
}

/* Shortest decimal text that reads back to the same double. */
static void fmt_real(double v, char *buf, size_t n) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
}

char *wan_weights_config_json(const wan_model_cfg *m, wan_weights_format fmt) {
    char eps[32], *out = malloc(2048);
    if (!out) return NULL;
    fmt_real(m->eps, eps, sizeof eps);
    if (fmt == WAN_FORMAT_DIFFUSERS)
        snprintf(out, 2048,
                 "{\n  \"_class_name\": \"WanTransformer3DModel\",\n  \"_diffusers_version\": \"0.33.0\",\n"
                 "  \"added_kv_proj_dim\": null,\n  \"attention_head_dim\": %d,\n  \"cross_attn_norm\": true,\n"
                 "  \"eps\": %s,\n  \"ffn_dim\": %d,\n  \"freq_dim\": %d,\n  \"image_dim\": null,\n"
                 "  \"in_channels\": %d,\n  \"num_attention_heads\": %d,\n  \"num_layers\": %d,\n"
                 "  \"out_channels\": %d,\n  \"patch_size\": [%d, %d, %d],\n  \"pos_embed_seq_len\": null,\n"
                 "  \"qk_norm\": \"rms_norm_across_heads\",\n  \"rope_max_seq_len\": 1024,\n  \"text_dim\": %d\n}\n",
                 m->dim / m->num_heads, eps, m->ffn_dim, m->freq_dim, m->in_dim, m->num_heads, m->num_layers,
                 m->out_dim, m->patch_size[0], m->patch_size[1], m->patch_size[2], m->text_dim);
    else
        snprintf(out, 2048,
                 "{\n  \"_class_name\": \"WanModel\",\n  \"_diffusers_version\": \"0.30.0\",\n"
                 "  \"model_type\": \"t2v\",\n  \"patch_size\": [%d, %d, %d],\n  \"text_len\": %d,\n"
                 "  \"in_dim\": %d,\n  \"dim\": %d,\n  \"ffn_dim\": %d,\n  \"freq_dim\": %d,\n  \"text_dim\": %d,\n"
                 "  \"out_dim\": %d,\n  \"num_heads\": %d,\n  \"num_layers\": %d,\n  \"window_size\": [-1, -1],\n"
                 "  \"qk_norm\": true,\n  \"cross_attn_norm\": true,\n  \"eps\": %s\n}\n",
                 m->patch_size[0], m->patch_size[1], m->patch_size[2], m->text_len, m->in_dim, m->dim, m->ffn_dim,
                 m->freq_dim, m->text_dim, m->out_dim, m->num_heads, m->num_layers, eps);
    return out;
}
