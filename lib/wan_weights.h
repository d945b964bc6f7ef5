/* Wan 2.1 weights as released: the official layout (WanModel: config.json with dim, ffn_dim,
 * num_heads, ...; diffusion_pytorch_model*.safetensors with the keys of wan/modules/model.py)
 * and the diffusers layout (WanTransformer3DModel: num_attention_heads, attention_head_dim,
 * in_channels, ...; keys such as condition_embedder.time_embedder.linear_1.weight). Checkpoint
 * tensors carry the official keys; this module maps names and configs both ways, and
 * `wan-reshard import` / `export` move weights between releases and checkpoints. */
#ifndef WAN_WAN_WEIGHTS_H
#define WAN_WAN_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckpt.h"
#include "config.h"
#include "reshard.h"

typedef enum { WAN_FORMAT_AUTO = 0, WAN_FORMAT_WAN, WAN_FORMAT_DIFFUSERS } wan_weights_format;
const char *wan_weights_format_name(wan_weights_format f); /* "wan", "diffusers", "auto" */

/* Key names. 0 on success; -1 when the name is not a key of the Wan 2.1 text-to-video model
 * (no message recorded: the caller lists every unknown key). */
int wan_weights_to_diffusers(const char *official, char *out, size_t n);
int wan_weights_from_diffusers(const char *diffusers, char *out, size_t n);

/* Model fields a config.json gave (the rest take Wan 2.1's values). */
enum {
    WAN_WF_DIM = 1 << 0, WAN_WF_FFN = 1 << 1, WAN_WF_HEADS = 1 << 2, WAN_WF_LAYERS = 1 << 3,
    WAN_WF_FREQ = 1 << 4, WAN_WF_TEXT_DIM = 1 << 5, WAN_WF_TEXT_LEN = 1 << 6, WAN_WF_IN = 1 << 7,
    WAN_WF_OUT = 1 << 8, WAN_WF_PATCH = 1 << 9, WAN_WF_EPS = 1 << 10,
};

/* Parse a config.json (text; path for messages). *fmt: AUTO detects the layout from
 * _class_name or the keys, and returns what was found. Fields it lacks take Wan 2.1's values
 * (patch_size [1, 2, 2], text_dim 4096, text_len 512, freq_dim 256, eps 1e-6); *given says
 * which it had. Image-to-video and other variants are refused naming the key. */
int wan_weights_parse_config(const char *text, const char *path, wan_weights_format *fmt, wan_model_cfg *m,
                             unsigned *given);
/* config.json text of the model in a layout (malloc'd). */
char *wan_weights_config_json(const wan_model_cfg *m, wan_weights_format fmt);

typedef struct {
    wan_weights_format format;    /* AUTO: detect */
    const wan_config *base;       /* run settings for the new checkpoint (its model is replaced) */
    const char *const *model_sets; /* "model.text_len=16", ...: for fields config.json lacks */
    int nmodel_sets;
    wan_ckpt_layout layout;       /* default tp1 (world 1) */
    int dtype;                    /* a wan_dtype to store the weights in, or -1 = as in the files */
    bool force;
    wan_rs_params io;
} wan_import_opts;

/* An official or diffusers release directory -> a checkpoint at o->layout holding model
 * weights only (the trainer starts the optimizer fresh from them), step 0. Unknown, missing
 * or misshapen keys are errors that name them. */
int wan_weights_import(const char *src, const char *dst, const wan_import_opts *o, wan_rs_stats *stats);

typedef struct {
    wan_weights_format format;    /* WAN (default) or DIFFUSERS */
    int dtype;                    /* -1 = as stored */
    int kind;                     /* 0 model weights (default), 1 fp32 master weights */
    uint64_t max_shard;           /* bytes per safetensors file; above it: shards + index JSON */
    bool force;
    wan_rs_params io;
} wan_export_opts;

/* A checkpoint (any layout) -> config.json and diffusion_pytorch_model.safetensors (or shards
 * with diffusion_pytorch_model.safetensors.index.json) in dst, written under a temporary name,
 * read back and verified, then renamed. */
int wan_weights_export(const char *ckpt, const char *dst, const wan_export_opts *o, wan_rs_stats *stats);

#endif
