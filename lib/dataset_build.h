/* What wan-preprocess does, as library calls: convert inputs into a dataset (threads, parts,
 * resume), merge part datasets, verify, stats, write synthetic inputs, export one sample. */
#ifndef WAN_DATASET_BUILD_H
#define WAN_DATASET_BUILD_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "dtype.h"

typedef struct {
    const char *input;   /* manifest (JSON lines) or directory */
    const char *out_dir; /* dataset directory (a part goes to out_dir/part-IIII-of-NNNN) */
    const char *latent_name, *text_name; /* tensor names in safetensors inputs */
    int channels, text_dim, text_len_max;
    bool keep_dtype;     /* store inputs in their own dtype instead of BF16 */
    int level;           /* zstd level */
    uint64_t shard_bytes;
    int threads;
    int part, nparts;    /* slice part of nparts of the input list (nparts 0 or 1: all) */
    bool skip_bad;       /* skip bad inputs (listed in the report) instead of failing */
    const char *report;  /* skipped-input report; NULL: <dataset>/skipped.jsonl */
    bool force;          /* replace a different dataset already in the directory */
} wan_build_opts;

void wan_build_defaults(wan_build_opts *o);
int wan_build_convert(const wan_build_opts *o);
/* Join out_dir/part-*-of-NNNN into out_dir/index.jsonl without copying shard data. */
int wan_build_merge(const char *dir, bool force);
/* Check every checksum, the index against the shards, and that every sample decodes. */
int wan_build_verify(const char *dir, int threads);
int wan_build_stats(const char *dir, FILE *out);

typedef struct {
    const char *out_dir;
    int64_t count;
    int nshapes;
    int shapes[8][3];   /* latent (F, H, W); samples cycle through them */
    int channels, text_len, text_dim;
    uint64_t seed;
    wan_dtype dtype;
    bool npy;           /* .latent.npy + .text.npy instead of one .safetensors per sample */
    bool trim_text;     /* write only the real text rows (default: padded to text_len, zero rows after) */
    int threads;
} wan_synth_opts;
void wan_synth_defaults(wan_synth_opts *o);
/* Writes the sample files and out_dir/manifest.jsonl (last, atomically). */
int wan_build_synth(const wan_synth_opts *o);

/* Decode sample `index` of a dataset into a safetensors file (latent and text as F32, text
 * with its real rows only), for inspection. */
int wan_build_export(const char *dir, int64_t index, const char *out_path);

#endif
