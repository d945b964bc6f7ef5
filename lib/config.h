/* Run configuration: one libconfig file with groups model, parallel, train, data, eval, slurm.
 * Every key is described once in a schema (config.c); loading, --set overrides, validation,
 * defaults and the printed/saved resolved configuration all come from that table. */
#ifndef WAN_CONFIG_H
#define WAN_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define WAN_PATH_MAX 1024
#define WAN_CFG_MAX_KEYS 96

typedef struct {
    int dim, ffn_dim, num_heads, num_layers, freq_dim, text_dim, text_len, in_dim, out_dim;
    int patch_size[3]; /* (t, h, w) */
    double eps;
} wan_model_cfg;

typedef struct {
    int tp, cp, pp, vp;
    bool sp, fsdp;
} wan_parallel_cfg;

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, grad_clip;
} wan_optim_cfg;

typedef struct {
    char kind[16]; /* constant | cosine */
    int warmup_steps;
    int decay_steps; /* cosine: steps from the end of warm-up to min_lr; 0 = train.steps */
    double min_lr;
} wan_schedule_cfg;

typedef struct {
    int gbs, mbs;
    int latent_shape[3]; /* latent (frames, height, width); all 0 = taken from the data */
    int steps;
    wan_optim_cfg optimizer;
    wan_schedule_cfg schedule;
    char objective[16];  /* pretrain | finetune */
    int64_t seed;
    bool recompute;      /* recompute each block's activations in the backward */
    bool recompute_attention; /* with recompute: the self-attention core too (false keeps its output) */
    int recompute_layers; /* with recompute: blocks per pipeline stage that recompute, the first ones;
                           * -1 = all of them, or as few as memory_budget_gib allows */
    double memory_budget_gib; /* per GPU, for what the memory plan counts; 0 = none */
    char device[8];      /* cpu | cuda */
    int threads;         /* CPU threads per rank; 0 = cores / local ranks */
    char run_dir[WAN_PATH_MAX];
    int ckpt_interval;   /* 0 = only at the end */
    char ckpt_dir[WAN_PATH_MAX]; /* "" = <run_dir>/checkpoints */
    int keep_last, keep_every;
    int log_interval;
    int comm_timeout;    /* seconds a collective may wait for its peers */
} wan_train_cfg;

typedef struct {
    char path[WAN_PATH_MAX]; /* dataset directory; "" = synthetic samples */
    int synthetic_samples;
    bool verify;
    int prefetch;
    char on_corrupt[8]; /* error | skip */
} wan_data_cfg;

typedef struct {
    int interval; /* run validation every N steps; 0 = never */
    char path[WAN_PATH_MAX];
    int max_samples;
} wan_eval_cfg;

typedef struct {
    int nodes, gpus_per_node;
    char partition[64], account[64], time[32];
} wan_slurm_cfg;

typedef struct {
    wan_model_cfg model;
    wan_parallel_cfg parallel;
    wan_train_cfg train;
    wan_data_cfg data;
    wan_eval_cfg eval;
    wan_slurm_cfg slurm;
    char source[WAN_PATH_MAX]; /* the file it came from, "" for the embedded default */
    /* Where each key's value came from ("file:line", "--set", "default"), parallel to the
     * schema, so that every error can point at the line to fix. */
    char origin[WAN_CFG_MAX_KEYS][160];
} wan_config;

/* Fill cfg with the embedded default (the tiny model, CPU, synthetic data). */
void wan_config_defaults(wan_config *cfg);
/* Load a libconfig file over the defaults. Unknown keys, wrong types and out-of-range values
 * are WAN_ERR_USAGE errors naming the file, line, key and what was expected. */
int wan_config_load(wan_config *cfg, const char *path);
/* Apply "group.key=value" as from --set; validated like the file. */
int wan_config_set(wan_config *cfg, const char *assignment);
/* Cross-field checks (divisibility, layout). world_size 0 = not known yet (skip the checks
 * that need it). All problems are reported, one per line, naming where each value came from. */
int wan_config_validate(const wan_config *cfg, int world_size);

/* Valid but slow choices, one warning line each (wan-train --check and rank 0 at start-up). */
void wan_config_advise(const wan_config *cfg);

/* The resolved configuration in libconfig syntax (loadable again). */
void wan_config_write(const wan_config *cfg, FILE *f);
char *wan_config_to_string(const wan_config *cfg); /* malloc'd */
/* Load from a string written by wan_config_write (e.g. from a checkpoint's metadata). */
int wan_config_load_string(wan_config *cfg, const char *text, const char *what);

/* The resolved configuration as a JSON object (a jansson json_t *, new reference):
 * {"model": {"dim": 64, ...}, "train": {"optimizer": {...}, ...}, ...} */
struct json_t;
struct json_t *wan_config_to_json(const wan_config *cfg);

/* Derived facts. */
int64_t wan_config_tokens_per_sample(const wan_config *cfg); /* 0 when data-driven */
int wan_config_head_dim(const wan_model_cfg *m);
/* Index of the schema entries that differ between two model configs, written as
 * "model.dim (5120 vs 1536), ..." into buf; returns the number of differences. */
int wan_model_cfg_diff(const wan_model_cfg *a, const wan_model_cfg *b, char *buf, size_t n);

/* Print every key with its type, default and help (for --help-config). */
void wan_config_print_schema(FILE *f);

#endif
