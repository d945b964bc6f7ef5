#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <libconfig.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"

typedef enum { K_INT, K_INT64, K_BOOL, K_FLOAT, K_STRING, K_INT3 } key_type;

typedef struct {
    const char *path;
    key_type type;
    size_t offset;
    size_t size;         /* strings: buffer size */
    double min, max;     /* numbers: inclusive range */
    const char *choices; /* strings: "a|b|c", or NULL for free text */
    const char *def;     /* default, parsed like a --set value */
    const char *help;
} key_desc;

#define OFF(f) offsetof(wan_config, f)
#define STR(f) OFF(f), sizeof(((wan_config *)0)->f)
#define BIG 1e18

/* The schema. The defaults are the embedded tiny model on CPU with synthetic data. */
static const key_desc keys[] = {
    {"model.dim", K_INT, OFF(model.dim), 0, 1, 65536, NULL, "64", "hidden size"},
    {"model.ffn_dim", K_INT, OFF(model.ffn_dim), 0, 1, 1 << 20, NULL, "128", "FFN inner size"},
    {"model.num_heads", K_INT, OFF(model.num_heads), 0, 1, 4096, NULL, "2", "attention heads"},
    {"model.num_layers", K_INT, OFF(model.num_layers), 0, 1, 4096, NULL, "2", "transformer blocks"},
    {"model.freq_dim", K_INT, OFF(model.freq_dim), 0, 2, 65536, NULL, "256",
     "sinusoidal time-embedding channels"},
    {"model.text_dim", K_INT, OFF(model.text_dim), 0, 1, 65536, NULL, "32",
     "text-encoder output channels (4096 for umT5-XXL)"},
    {"model.text_len", K_INT, OFF(model.text_len), 0, 1, 65536, NULL, "16",
     "text rows attended (zero-padded)"},
    {"model.in_dim", K_INT, OFF(model.in_dim), 0, 1, 1024, NULL, "16", "latent channels in"},
    {"model.out_dim", K_INT, OFF(model.out_dim), 0, 1, 1024, NULL, "16", "latent channels out"},
    {"model.patch_size", K_INT3, OFF(model.patch_size), 0, 1, 64, NULL, "[1, 2, 2]",
     "patch (t, h, w)"},
    {"model.eps", K_FLOAT, OFF(model.eps), 0, 1e-12, 1, NULL, "1e-6", "norm epsilon"},

    {"parallel.tp", K_INT, OFF(parallel.tp), 0, 1, 1024, NULL, "1", "tensor-parallel size"},
    {"parallel.sp", K_BOOL, OFF(parallel.sp), 0, 0, 1, NULL, "false",
     "sequence parallel (with tp)"},
    {"parallel.cp", K_INT, OFF(parallel.cp), 0, 1, 1024, NULL, "1", "context-parallel size"},
    {"parallel.pp", K_INT, OFF(parallel.pp), 0, 1, 1024, NULL, "1", "pipeline-parallel size"},
    {"parallel.vp", K_INT, OFF(parallel.vp), 0, 0, 1024, NULL, "0",
     "virtual pipeline stages per rank (0 = none)"},
    {"parallel.fsdp", K_BOOL, OFF(parallel.fsdp), 0, 0, 1, NULL, "false",
     "fully sharded parameters (ZeRO-3)"},

    {"train.gbs", K_INT, OFF(train.gbs), 0, 1, 1 << 24, NULL, "4", "global batch size (samples)"},
    {"train.mbs", K_INT, OFF(train.mbs), 0, 1, 1 << 20, NULL, "1", "micro-batch size (samples)"},
    {"train.latent_shape", K_INT3, OFF(train.latent_shape), 0, 0, 1 << 16, NULL, "[3, 8, 8]",
     "latent (frames, height, width); [0, 0, 0] = from the data"},
    {"train.steps", K_INT, OFF(train.steps), 0, 0, INT_MAX, NULL, "20", "optimizer steps"},
    {"train.optimizer.lr", K_FLOAT, OFF(train.optimizer.lr), 0, 0, 10, NULL, "1e-3", "peak lr"},
    {"train.optimizer.beta1", K_FLOAT, OFF(train.optimizer.beta1), 0, 0, 0.999999, NULL, "0.9",
     "AdamW beta1"},
    {"train.optimizer.beta2", K_FLOAT, OFF(train.optimizer.beta2), 0, 0, 0.999999, NULL, "0.95",
     "AdamW beta2"},
    {"train.optimizer.eps", K_FLOAT, OFF(train.optimizer.eps), 0, 0, 1, NULL, "1e-8",
     "AdamW epsilon"},
    {"train.optimizer.weight_decay", K_FLOAT, OFF(train.optimizer.weight_decay), 0, 0, 10, NULL,
     "0.1", "decoupled weight decay (matrices only)"},
    {"train.optimizer.grad_clip", K_FLOAT, OFF(train.optimizer.grad_clip), 0, 0, BIG, NULL, "1.0",
     "global gradient-norm clip (0 = off)"},
    {"train.schedule.kind", K_STRING, STR(train.schedule.kind), 0, 0, "constant|cosine",
     "constant", "lr schedule after warm-up"},
    {"train.schedule.warmup_steps", K_INT, OFF(train.schedule.warmup_steps), 0, 0, INT_MAX, NULL,
     "0", "linear warm-up steps"},
    {"train.schedule.decay_steps", K_INT, OFF(train.schedule.decay_steps), 0, 0, INT_MAX, NULL,
     "0", "cosine decay steps after warm-up (0 = to train.steps)"},
    {"train.schedule.min_lr", K_FLOAT, OFF(train.schedule.min_lr), 0, 0, 10, NULL, "0",
     "cosine floor"},
    {"train.objective", K_STRING, STR(train.objective), 0, 0, "pretrain|finetune", "pretrain",
     "flow-matching preset"},
    {"train.seed", K_INT64, OFF(train.seed), 0, 0, 9.2e18, NULL, "1234", "seed of all randomness"},
    {"train.recompute", K_BOOL, OFF(train.recompute), 0, 0, 1, NULL, "false",
     "recompute block activations in the backward"},
    {"train.recompute_attention", K_BOOL, OFF(train.recompute_attention), 0, 0, 1, NULL, "false",
     "with recompute: recompute the self-attention core too (false keeps each block's attention output "
     "and log-sum-exp, the cheapest activations to keep for the most work saved)"},
    {"train.recompute_layers", K_INT, OFF(train.recompute_layers), 0, -1, 4096, NULL, "-1",
     "with recompute: how many blocks of each pipeline stage recompute, the first ones (-1 = all); the "
     "others keep their activations: faster, more memory (wan-train --check plans it)"},
    {"train.memory_budget_gib", K_FLOAT, OFF(train.memory_budget_gib), 0, 0, 1e6, NULL, "0",
     "GiB per GPU for what the memory plan counts (state and activations; leave room for the CUDA "
     "context, NCCL and workspaces); with recompute and recompute_layers = -1 each pipeline stage "
     "recomputes as few blocks as fit in it; 0 = no budget"},
    {"train.device", K_STRING, STR(train.device), 0, 0, "cpu|cuda", "cpu", "backend"},
    {"train.threads", K_INT, OFF(train.threads), 0, 0, 4096, NULL, "0",
     "CPU threads per rank (0 = cores / local ranks)"},
    {"train.run_dir", K_STRING, STR(train.run_dir), 0, 0, NULL, "runs/tiny",
     "step log, resolved config, checkpoints"},
    {"train.ckpt_interval", K_INT, OFF(train.ckpt_interval), 0, 0, INT_MAX, NULL, "0",
     "checkpoint every N steps (0 = at the end only)"},
    {"train.ckpt_dir", K_STRING, STR(train.ckpt_dir), 0, 0, NULL, "",
     "checkpoint directory (\"\" = <run_dir>/checkpoints)"},
    {"train.keep_last", K_INT, OFF(train.keep_last), 0, 1, INT_MAX, NULL, "2",
     "checkpoints kept (newest)"},
    {"train.keep_every", K_INT, OFF(train.keep_every), 0, 0, INT_MAX, NULL, "0",
     "also keep every N-th step's checkpoint (0 = none)"},
    {"train.log_interval", K_INT, OFF(train.log_interval), 0, 1, INT_MAX, NULL, "1",
     "human log line every N steps"},
    {"train.comm_timeout", K_INT, OFF(train.comm_timeout), 0, 1, 86400, NULL, "300",
     "seconds a collective waits for its peers"},

    {"data.path", K_STRING, STR(data.path), 0, 0, NULL, "",
     "dataset directory (wan-preprocess output); \"\" = synthetic"},
    {"data.synthetic_samples", K_INT, OFF(data.synthetic_samples), 0, 1, INT_MAX, NULL, "64",
     "size of the synthetic dataset"},
    {"data.verify", K_BOOL, OFF(data.verify), 0, 0, 1, NULL, "true", "verify checksums on read"},
    {"data.prefetch", K_INT, OFF(data.prefetch), 0, 0, 1024, NULL, "2",
     "micro-batches read ahead by background threads"},
    {"data.on_corrupt", K_STRING, STR(data.on_corrupt), 0, 0, "error|skip", "error",
     "a sample failing its checksum: stop, or replace it deterministically"},

    {"eval.interval", K_INT, OFF(eval.interval), 0, 0, INT_MAX, NULL, "0",
     "validation loss every N steps (0 = never)"},
    {"eval.path", K_STRING, STR(eval.path), 0, 0, NULL, "", "held-out dataset (\"\" = synthetic)"},
    {"eval.max_samples", K_INT, OFF(eval.max_samples), 0, 0, INT_MAX, NULL, "8",
     "samples evaluated (0 = all)"},

    {"slurm.nodes", K_INT, OFF(slurm.nodes), 0, 1, 1 << 20, NULL, "1", "nodes for training"},
    {"slurm.gpus_per_node", K_INT, OFF(slurm.gpus_per_node), 0, 1, 1024, NULL, "1",
     "tasks (GPUs) per node"},
    {"slurm.partition", K_STRING, STR(slurm.partition), 0, 0, NULL, "", "partition (\"\" = default)"},
    {"slurm.account", K_STRING, STR(slurm.account), 0, 0, NULL, "", "account (\"\" = default)"},
    {"slurm.time", K_STRING, STR(slurm.time), 0, 0, NULL, "04:00:00", "time limit per train job"},
};
#define NKEYS ((int)(sizeof keys / sizeof keys[0]))
_Static_assert(sizeof keys / sizeof keys[0] <= WAN_CFG_MAX_KEYS, "raise WAN_CFG_MAX_KEYS");

static int key_index(const char *path) {
    for (int i = 0; i < NKEYS; i++)
        if (!strcmp(keys[i].path, path)) return i;
    return -1;
}

static void *field(wan_config *cfg, int k) { return (char *)cfg + keys[k].offset; }
static const void *cfield(const wan_config *cfg, int k) {
    return (const char *)cfg + keys[k].offset;
}

/* Edit distance, for "did you mean" hints on misspelt keys. */
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
            d[i][j] = c;
        }
    return d[la][lb];
}

static void suggest(const char *path, char *buf, size_t n) {
    int best = -1, bd = 4;
    for (int i = 0; i < NKEYS; i++) {
        int d = edit_distance(path, keys[i].path);
        if (d < bd) bd = d, best = i;
    }
    if (best >= 0) snprintf(buf, n, "; did you mean '%s'?", keys[best].path);
    else snprintf(buf, n, "; see --help-config for the keys");
}

static const char *type_name(key_type t) {
    switch (t) {
    case K_INT: return "an integer";
    case K_INT64: return "an integer";
    case K_BOOL: return "true or false";
    case K_FLOAT: return "a number";
    case K_STRING: return "a string";
    case K_INT3: return "a list of 3 integers";
    }
    return "?";
}

static void range_text(int k, char *buf, size_t n) {
    const key_desc *d = &keys[k];
    if (d->max >= 9e17) snprintf(buf, n, ">= %g", d->min);
    else snprintf(buf, n, "in [%g, %g]", d->min, d->max);
}

static int check_range(int k, double v, const char *where) {
    if (v < keys[k].min || v > keys[k].max || isnan(v)) {
        char r[64];
        range_text(k, r, sizeof r);
        return wan_fail(WAN_ERR_USAGE, "%s: %s = %g: expected a value %s (%s)", where, keys[k].path,
                        v, r, keys[k].help);
    }
    return 0;
}

static int check_choice(int k, const char *s, const char *where) {
    const char *c = keys[k].choices;
    if (!c) return 0;
    size_t n = strlen(s);
    for (const char *p = c; *p;) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, s, n)) return 0;
        p += len + (e ? 1 : 0);
    }
    return wan_fail(WAN_ERR_USAGE, "%s: %s = \"%s\": expected one of %s", where, keys[k].path, s, c);
}

static int store_string(wan_config *cfg, int k, const char *s, const char *where) {
    WAN_TRY(check_choice(k, s, where));
    if (strlen(s) >= keys[k].size)
        return wan_fail(WAN_ERR_USAGE, "%s: %s: string longer than %zu characters", where,
                        keys[k].path, keys[k].size - 1);
    strcpy((char *)field(cfg, k), s);
    return 0;
}

/* ---- values from text (defaults and --set) ---- */

static int parse_int_text(const char *s, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    while (*end && isspace((unsigned char)*end)) end++;
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

static int set_from_text(wan_config *cfg, int k, const char *text, const char *where) {
    const key_desc *d = &keys[k];
    while (isspace((unsigned char)*text)) text++;
    switch (d->type) {
    case K_INT:
    case K_INT64: {
        long long v;
        if (parse_int_text(text, &v))
            return wan_fail(WAN_ERR_USAGE, "%s: %s = %s: expected %s", where, d->path, text,
                            type_name(d->type));
        WAN_TRY(check_range(k, (double)v, where));
        if (d->type == K_INT) *(int *)field(cfg, k) = (int)v;
        else *(int64_t *)field(cfg, k) = v;
        return 0;
    }
    case K_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "1")) *(bool *)field(cfg, k) = true;
        else if (!strcmp(text, "false") || !strcmp(text, "0")) *(bool *)field(cfg, k) = false;
        else
            return wan_fail(WAN_ERR_USAGE, "%s: %s = %s: expected true or false", where, d->path,
                            text);
        return 0;
    case K_FLOAT: {
        char *end;
        errno = 0;
        double v = strtod(text, &end);
        if (errno || end == text || *end)
            return wan_fail(WAN_ERR_USAGE, "%s: %s = %s: expected a number", where, d->path, text);
        WAN_TRY(check_range(k, v, where));
        *(double *)field(cfg, k) = v;
        return 0;
    }
    case K_STRING: {
        char buf[WAN_PATH_MAX];
        size_t n = strlen(text);
        if (n >= 2 && text[0] == '"' && text[n - 1] == '"') {
            if (n - 2 >= sizeof buf)
                return wan_fail(WAN_ERR_USAGE, "%s: %s: value too long", where, d->path);
            memcpy(buf, text + 1, n - 2);
            buf[n - 2] = 0;
            text = buf;
        }
        return store_string(cfg, k, text, where);
    }
    case K_INT3: {
        /* "[a, b, c]" or "a,b,c" */
        char buf[256];
        snprintf(buf, sizeof buf, "%s", text);
        char *p = buf;
        if (*p == '[' || *p == '(') p++;
        char *close = strpbrk(p, "])");
        if (close) *close = 0;
        int vals[3], n = 0;
        for (char *tok = strtok(p, ","); tok; tok = strtok(NULL, ",")) {
            long long v;
            if (n == 3 || parse_int_text(tok, &v)) {
                n = -1;
                break;
            }
            WAN_TRY(check_range(k, (double)v, where));
            vals[n++] = (int)v;
        }
        if (n != 3)
            return wan_fail(WAN_ERR_USAGE, "%s: %s = %s: expected a list of 3 integers like [1, 2, 2]",
                            where, d->path, text);
        memcpy(field(cfg, k), vals, sizeof vals);
        return 0;
    }
    }
    return 0;
}

void wan_config_defaults(wan_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (int k = 0; k < NKEYS; k++) {
        int rc = set_from_text(cfg, k, keys[k].def, "default");
        WAN_ASSERT(rc == 0);
        snprintf(cfg->origin[k], sizeof cfg->origin[k], "embedded default");
    }
}

/* ---- values from a libconfig file ---- */

static int set_from_setting(wan_config *cfg, int k, config_setting_t *s, const char *where) {
    const key_desc *d = &keys[k];
    int t = config_setting_type(s);
    switch (d->type) {
    case K_INT:
    case K_INT64: {
        if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64) break;
        long long v = config_setting_get_int64(s);
        WAN_TRY(check_range(k, (double)v, where));
        if (d->type == K_INT) *(int *)field(cfg, k) = (int)v;
        else *(int64_t *)field(cfg, k) = v;
        return 0;
    }
    case K_BOOL:
        if (t == CONFIG_TYPE_BOOL) {
            *(bool *)field(cfg, k) = config_setting_get_bool(s);
            return 0;
        }
        /* 0/1 as in the reference table's SP and FSDP columns */
        if (t == CONFIG_TYPE_INT) {
            long long v = config_setting_get_int64(s);
            if (v == 0 || v == 1) {
                *(bool *)field(cfg, k) = v;
                return 0;
            }
        }
        break;
    case K_FLOAT: {
        double v;
        if (t == CONFIG_TYPE_FLOAT) v = config_setting_get_float(s);
        else if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) v = (double)config_setting_get_int64(s);
        else break;
        WAN_TRY(check_range(k, v, where));
        *(double *)field(cfg, k) = v;
        return 0;
    }
    case K_STRING:
        if (t != CONFIG_TYPE_STRING) break;
        return store_string(cfg, k, config_setting_get_string(s), where);
    case K_INT3: {
        if ((t != CONFIG_TYPE_ARRAY && t != CONFIG_TYPE_LIST) || config_setting_length(s) != 3) break;
        int vals[3];
        for (int i = 0; i < 3; i++) {
            config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
            int et = config_setting_type(e);
            if (et != CONFIG_TYPE_INT && et != CONFIG_TYPE_INT64)
                return wan_fail(WAN_ERR_USAGE, "%s: %s: element %d: expected an integer", where,
                                d->path, i);
            long long v = config_setting_get_int64(e);
            WAN_TRY(check_range(k, (double)v, where));
            vals[i] = (int)v;
        }
        memcpy(field(cfg, k), vals, sizeof vals);
        return 0;
    }
    }
    return wan_fail(WAN_ERR_USAGE, "%s: %s: expected %s", where, d->path, type_name(d->type));
}

static bool is_group_prefix(const char *path) {
    size_t n = strlen(path);
    for (int i = 0; i < NKEYS; i++)
        if (!strncmp(keys[i].path, path, n) && keys[i].path[n] == '.') return true;
    return false;
}

static int walk(wan_config *cfg, config_setting_t *group, const char *prefix, const char *fallback_file,
                const char *dir) {
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(s);
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, prefix[0] ? "." : "", name ? name : "?");
        const char *file = config_setting_source_file(s);
        if (!file) file = fallback_file;
        char where[2 * WAN_PATH_MAX + 32];
        /* included files are named relative to the including file's directory */
        if (dir && file[0] != '/' && strcmp(file, fallback_file))
            snprintf(where, sizeof where, "%s/%s:%d", dir, file, config_setting_source_line(s));
        else snprintf(where, sizeof where, "%s:%d", file, config_setting_source_line(s));
        int k = key_index(path);
        if (config_setting_type(s) == CONFIG_TYPE_GROUP) {
            if (k >= 0)
                return wan_fail(WAN_ERR_USAGE, "%s: %s: expected %s, not a group", where, path,
                                type_name(keys[k].type));
            if (!is_group_prefix(path)) {
                char hint[128];
                suggest(path, hint, sizeof hint);
                return wan_fail(WAN_ERR_USAGE, "%s: unknown group '%s'%s", where, path, hint);
            }
            WAN_TRY(walk(cfg, s, path, fallback_file, dir));
            continue;
        }
        if (k < 0) {
            char hint[128];
            suggest(path, hint, sizeof hint);
            return wan_fail(WAN_ERR_USAGE, "%s: unknown key '%s'%s", where, path, hint);
        }
        WAN_TRY(set_from_setting(cfg, k, s, where));
        snprintf(cfg->origin[k], sizeof cfg->origin[k], "%.*s", (int)sizeof cfg->origin[k] - 1, where);
    }
    return 0;
}

static int load_parsed(wan_config *cfg, config_t *lc, const char *what, const char *dir) {
    return walk(cfg, config_root_setting(lc), "", what, dir);
}

int wan_config_load(wan_config *cfg, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return wan_fail_errno(WAN_ERR_USAGE, "config %s", path);
    fclose(f);
    config_t lc;
    config_init(&lc);
    /* @include paths are relative to the including file's directory. */
    char dir[WAN_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    else snprintf(dir, sizeof dir, ".");
    config_set_include_dir(&lc, dir);
    int rc = 0;
    if (config_read_file(&lc, path) != CONFIG_TRUE) {
        rc = wan_fail(WAN_ERR_USAGE, "%s:%d: %s", config_error_file(&lc) ? config_error_file(&lc) : path,
                      config_error_line(&lc), config_error_text(&lc));
    } else {
        rc = load_parsed(cfg, &lc, path, dir);
        if (!rc) snprintf(cfg->source, sizeof cfg->source, "%s", path);
    }
    config_destroy(&lc);
    return rc;
}

int wan_config_load_string(wan_config *cfg, const char *text, const char *what) {
    config_t lc;
    config_init(&lc);
    int rc = 0;
    if (config_read_string(&lc, text) != CONFIG_TRUE)
        rc = wan_fail(WAN_ERR_USAGE, "%s:%d: %s", what, config_error_line(&lc), config_error_text(&lc));
    else rc = load_parsed(cfg, &lc, what, NULL);
    config_destroy(&lc);
    return rc;
}

int wan_config_set(wan_config *cfg, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return wan_fail(WAN_ERR_USAGE, "--set %s: expected group.key=value", assignment);
    char path[256];
    size_t n = (size_t)(eq - assignment);
    if (n >= sizeof path) n = sizeof path - 1;
    memcpy(path, assignment, n);
    path[n] = 0;
    while (n && isspace((unsigned char)path[n - 1])) path[--n] = 0;
    int k = key_index(path);
    char where[300];
    snprintf(where, sizeof where, "--set %s", assignment);
    if (k < 0) {
        char hint[128];
        suggest(path, hint, sizeof hint);
        return wan_fail(WAN_ERR_USAGE, "%s: unknown key '%s'%s", where, path, hint);
    }
    WAN_TRY(set_from_text(cfg, k, eq + 1, where));
    snprintf(cfg->origin[k], sizeof cfg->origin[k], "--set %.*s", (int)sizeof cfg->origin[k] - 7, path);
    return 0;
}

/* ---- cross-field validation ---- */

typedef struct {
    char text[4096];
    size_t len;
    int count;
} problems;

static void add_problem(problems *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_problem(problems *p, const char *fmt, ...) {
    if (p->len >= sizeof p->text - 2) return;
    if (p->count++) p->text[p->len++] = '\n';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(p->text + p->len, sizeof p->text - p->len, fmt, ap);
    va_end(ap);
    if (n > 0) p->len += (size_t)n;
    if (p->len >= sizeof p->text) p->len = sizeof p->text - 1;
}

static const char *org(const wan_config *cfg, const char *path) {
    int k = key_index(path);
    return k >= 0 ? cfg->origin[k] : "?";
}

int64_t wan_config_tokens_per_sample(const wan_config *cfg) {
    const int *ls = cfg->train.latent_shape, *ps = cfg->model.patch_size;
    if (!ls[0] || !ls[1] || !ls[2]) return 0;
    return (int64_t)(ls[0] / ps[0]) * (ls[1] / ps[1]) * (ls[2] / ps[2]);
}

int wan_config_head_dim(const wan_model_cfg *m) { return m->dim / m->num_heads; }

void wan_config_advise(const wan_config *cfg) {
    const wan_parallel_cfg *par = &cfg->parallel;
    if (par->tp > 1 && !par->sp)
        wan_warn("parallel.tp = %d without parallel.sp: every tp rank holds the whole residual stream and the "
                 "row-parallel outputs are all-reduced in one piece after their GEMM; parallel.sp = true splits the "
                 "stream and runs the transfers under the GEMMs, chunk by chunk", par->tp);
}

int wan_config_validate(const wan_config *cfg, int world_size) {
    problems p = {0};
    const wan_model_cfg *m = &cfg->model;
    const wan_parallel_cfg *par = &cfg->parallel;
    const wan_train_cfg *t = &cfg->train;

    if (m->dim % m->num_heads)
        add_problem(&p, "%s: model.num_heads = %d: model.dim = %d is not divisible by it", org(cfg, "model.num_heads"),
                    m->num_heads, m->dim);
    else {
        int hd = m->dim / m->num_heads;
        if (hd % 2 || hd < 8)
            add_problem(&p, "%s: model.dim / model.num_heads = %d: the head size must be even and >= 8 (3D RoPE rotates pairs over 3 axes)",
                        org(cfg, "model.num_heads"), hd);
    }
    if (m->freq_dim % 2)
        add_problem(&p, "%s: model.freq_dim = %d: expected an even number (cos and sin halves)", org(cfg, "model.freq_dim"),
                    m->freq_dim);
    if (m->in_dim != m->out_dim)
        add_problem(&p, "%s: model.out_dim = %d: flow matching predicts the velocity of the input latent, so it must equal model.in_dim = %d",
                    org(cfg, "model.out_dim"), m->out_dim, m->in_dim);
    if (m->num_heads % par->tp)
        add_problem(&p, "%s: parallel.tp = %d: model.num_heads = %d is not divisible by it (heads are split over tensor-parallel ranks)",
                    org(cfg, "parallel.tp"), par->tp, m->num_heads);
    if (m->ffn_dim % par->tp)
        add_problem(&p, "%s: parallel.tp = %d: model.ffn_dim = %d is not divisible by it", org(cfg, "parallel.tp"), par->tp,
                    m->ffn_dim);
    int vp = par->vp ? par->vp : 1;
    if (m->num_layers % (par->pp * vp))
        add_problem(&p, "%s: parallel.pp = %d, parallel.vp = %d: model.num_layers = %d is not divisible by pp * vp = %d",
                    org(cfg, "parallel.pp"), par->pp, par->vp, m->num_layers, par->pp * vp);
    if (par->vp > 1 && par->pp == 1)
        add_problem(&p, "%s: parallel.vp = %d: virtual pipeline stages need parallel.pp > 1", org(cfg, "parallel.vp"), par->vp);
    if (t->recompute_layers >= 0 && !t->recompute)
        add_problem(&p, "%s: train.recompute_layers = %d: needs train.recompute = true (it says how many blocks recompute)",
                    org(cfg, "train.recompute_layers"), t->recompute_layers);
    else if (par->pp > 0 && t->recompute_layers > m->num_layers / par->pp)
        add_problem(&p, "%s: train.recompute_layers = %d: a pipeline stage holds model.num_layers / parallel.pp = %d / %d = %d "
                    "blocks (-1 recomputes all of them)",
                    org(cfg, "train.recompute_layers"), t->recompute_layers, m->num_layers, par->pp,
                    m->num_layers / par->pp);
    if (t->memory_budget_gib > 0 && t->recompute && t->recompute_layers < 0 &&
        !(t->latent_shape[0] && t->latent_shape[1] && t->latent_shape[2]))
        add_problem(&p, "%s: train.memory_budget_gib = %g chooses how many blocks recompute from the memory plan, which "
                    "needs train.latent_shape (it is [0, 0, 0], taken from the data): set the shape, or train.recompute_layers",
                    org(cfg, "train.memory_budget_gib"), t->memory_budget_gib);
    if (t->gbs % t->mbs)
        add_problem(&p, "%s: train.gbs = %d: not divisible by train.mbs = %d", org(cfg, "train.gbs"), t->gbs, t->mbs);

    const int *ls = t->latent_shape;
    int nzero = (ls[0] == 0) + (ls[1] == 0) + (ls[2] == 0);
    if (nzero != 0 && nzero != 3)
        add_problem(&p, "%s: train.latent_shape = [%d, %d, %d]: expected three positive sizes, or [0, 0, 0] to take shapes from the data",
                    org(cfg, "train.latent_shape"), ls[0], ls[1], ls[2]);
    else if (nzero == 3 && !cfg->data.path[0])
        add_problem(&p, "%s: train.latent_shape = [0, 0, 0] takes shapes from the data, but data.path is empty (synthetic data needs a shape)",
                    org(cfg, "train.latent_shape"));
    else if (nzero == 0) {
        bool ok = true;
        for (int i = 0; i < 3; i++)
            if (ls[i] % m->patch_size[i]) ok = false;
        if (!ok)
            add_problem(&p, "%s: train.latent_shape = [%d, %d, %d]: not divisible by model.patch_size = [%d, %d, %d]",
                        org(cfg, "train.latent_shape"), ls[0], ls[1], ls[2], m->patch_size[0], m->patch_size[1],
                        m->patch_size[2]);
        else {
            int64_t seq = wan_config_tokens_per_sample(cfg);
            int split = par->cp * (par->sp ? par->tp : 1);
            if (seq % split)
                add_problem(&p, "%s: the sequence of %lld tokens (train.latent_shape [%d, %d, %d] / patch) is not divisible by %s = %d",
                            org(cfg, par->sp ? "parallel.sp" : "parallel.cp"), (long long)seq, ls[0], ls[1], ls[2],
                            par->sp ? "parallel.cp * parallel.tp (sequence parallel)" : "parallel.cp", split);
        }
    }
    if (world_size > 0) {
        int mp = par->tp * par->cp * par->pp;
        if (world_size % mp)
            add_problem(&p, "%s: the world of %d ranks is not divisible by tp * cp * pp = %d * %d * %d = %d",
                        org(cfg, "parallel.tp"), world_size, par->tp, par->cp, par->pp, mp);
        else {
            int dp = world_size / mp;
            if (t->gbs % (t->mbs * dp))
                add_problem(&p, "%s: train.gbs = %d: not divisible by train.mbs * dp = %d * %d (dp = %d ranks / (tp * cp * pp))",
                            org(cfg, "train.gbs"), t->gbs, t->mbs, dp, world_size);
        }
    }
    if (p.count) return wan_fail(WAN_ERR_USAGE, "%s", p.text);
    return 0;
}

int wan_model_cfg_diff(const wan_model_cfg *a, const wan_model_cfg *b, char *buf, size_t n) {
    int diffs = 0;
    size_t len = 0;
    buf[0] = 0;
    wan_config ca, cb;
    memset(&ca, 0, sizeof ca);
    memset(&cb, 0, sizeof cb);
    ca.model = *a;
    cb.model = *b;
    for (int k = 0; k < NKEYS; k++) {
        if (strncmp(keys[k].path, "model.", 6)) continue;
        size_t sz = keys[k].type == K_INT3 ? 3 * sizeof(int) : keys[k].type == K_FLOAT ? sizeof(double) : sizeof(int);
        if (!memcmp(cfield(&ca, k), cfield(&cb, k), sz)) continue;
        char va[64], vb[64];
        if (keys[k].type == K_FLOAT) {
            snprintf(va, sizeof va, "%g", *(const double *)cfield(&ca, k));
            snprintf(vb, sizeof vb, "%g", *(const double *)cfield(&cb, k));
        } else if (keys[k].type == K_INT3) {
            const int *x = cfield(&ca, k), *y = cfield(&cb, k);
            snprintf(va, sizeof va, "[%d, %d, %d]", x[0], x[1], x[2]);
            snprintf(vb, sizeof vb, "[%d, %d, %d]", y[0], y[1], y[2]);
        } else {
            snprintf(va, sizeof va, "%d", *(const int *)cfield(&ca, k));
            snprintf(vb, sizeof vb, "%d", *(const int *)cfield(&cb, k));
        }
        if (len < n)
            len += (size_t)snprintf(buf + len, n - len, "%s%s (%s vs %s)", diffs ? ", " : "", keys[k].path, va, vb);
        diffs++;
    }
    return diffs;
}

/* ---- writing ---- */

static void write_value(const wan_config *cfg, int k, FILE *f) {
    const void *v = cfield(cfg, k);
    switch (keys[k].type) {
    case K_INT: fprintf(f, "%d", *(const int *)v); break;
    case K_INT64: fprintf(f, "%lldL", (long long)*(const int64_t *)v); break;
    case K_BOOL: fprintf(f, "%s", *(const bool *)v ? "true" : "false"); break;
    case K_FLOAT: {
        char b[64];
        double x = *(const double *)v;
        /* shortest text that reads back to the same double */
        for (int prec = 6; prec <= 17; prec++) {
            snprintf(b, sizeof b, "%.*g", prec, x);
            if (strtod(b, NULL) == x) break;
        }
        /* libconfig reads "1" as an integer: keep a float a float */
        if (!strpbrk(b, ".eEn")) strcat(b, ".0");
        fputs(b, f);
        break;
    }
    case K_STRING: {
        fputc('"', f);
        for (const char *s = v; *s; s++) {
            if (*s == '"' || *s == '\\') fputc('\\', f);
            fputc(*s, f);
        }
        fputc('"', f);
        break;
    }
    case K_INT3: {
        const int *a = v;
        fprintf(f, "[%d, %d, %d]", a[0], a[1], a[2]);
        break;
    }
    }
}

void wan_config_write(const wan_config *cfg, FILE *f) {
    /* Keys are grouped in the schema, so groups open and close as the prefix changes. */
    char open[4][64];
    int depth = 0;
    for (int k = 0; k < NKEYS; k++) {
        char parts[4][64];
        int np = 0;
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%s", keys[k].path);
        for (char *t = strtok(tmp, "."); t && np < 4; t = strtok(NULL, ".")) snprintf(parts[np++], 64, "%s", t);
        int common = 0;
        while (common < depth && common < np - 1 && !strcmp(open[common], parts[common])) common++;
        while (depth > common) {
            depth--;
            fprintf(f, "%*s};\n", 2 * depth, "");
        }
        while (depth < np - 1) {
            fprintf(f, "%*s%s = {\n", 2 * depth, "", parts[depth]);
            snprintf(open[depth], 64, "%s", parts[depth]);
            depth++;
        }
        fprintf(f, "%*s%s = ", 2 * depth, "", parts[np - 1]);
        write_value(cfg, k, f);
        fprintf(f, ";\n");
    }
    while (depth > 0) {
        depth--;
        fprintf(f, "%*s};\n", 2 * depth, "");
    }
}

char *wan_config_to_string(const wan_config *cfg) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    wan_config_write(cfg, f);
    fclose(f);
    return buf;
}

void wan_config_print_schema(FILE *f) {
    for (int k = 0; k < NKEYS; k++) {
        const key_desc *d = &keys[k];
        char extra[128] = "";
        if (d->choices) snprintf(extra, sizeof extra, " (%s)", d->choices);
        else if (d->type != K_STRING && d->type != K_BOOL) {
            char r[64];
            range_text(k, r, sizeof r);
            snprintf(extra, sizeof extra, " (%s)", r);
        }
        fprintf(f, "  %-30s %s%s, default %s\n      %s\n", d->path, type_name(d->type), extra,
                d->def[0] ? d->def : "\"\"", d->help);
    }
}

json_t *wan_config_to_json(const wan_config *cfg) {
    json_t *root = json_object();
    for (int k = 0; k < NKEYS; k++) {
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%s", keys[k].path);
        json_t *obj = root;
        char *save = NULL, *part = strtok_r(tmp, ".", &save), *next;
        while ((next = strtok_r(NULL, ".", &save))) {
            json_t *child = json_object_get(obj, part);
            if (!child) {
                child = json_object();
                json_object_set_new(obj, part, child);
            }
            obj = child;
            part = next;
        }
        const void *v = cfield(cfg, k);
        json_t *val = NULL;
        switch (keys[k].type) {
        case K_INT: val = json_integer(*(const int *)v); break;
        case K_INT64: val = json_integer(*(const int64_t *)v); break;
        case K_BOOL: val = json_boolean(*(const bool *)v); break;
        case K_FLOAT: val = json_real(*(const double *)v); break;
        case K_STRING: val = json_string((const char *)v); break;
        case K_INT3: {
            const int *a = v;
            val = json_pack("[iii]", a[0], a[1], a[2]);
            break;
        }
        }
        json_object_set_new(obj, part, val);
    }
    return root;
}
