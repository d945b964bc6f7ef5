/* Latent datasets written by wan-preprocess, and the deterministic loader that feeds
 * wan-train and wan-eval.
 *
 * Global order: for epoch e, a permutation seeded by (seed, e) groups samples of one latent
 * shape (bucket) into micro-batches of mbs; the micro-batches of an epoch are shuffled and
 * taken gbs / mbs at a time as global batches (samples that do not fill a whole global batch
 * at the end of an epoch are left for the next epoch's permutation, i.e. dropped from this
 * one). The order depends on (seed, mbs, gbs) only: data-parallel rank r of dp takes
 * micro-batches [r * n, (r + 1) * n) of each global batch, n = gbs / (mbs * dp). */
#ifndef WAN_DATASET_H
#define WAN_DATASET_H

#include <stdbool.h>
#include <stdint.h>

typedef struct wan_dataset wan_dataset;

typedef struct {
    int64_t index;          /* position in the dataset index */
    char id[128];
    int C, F, H, W;         /* latent shape */
    int text_len;           /* real text rows (padding rows were dropped) */
    int text_dim;
} wan_sample_info;

/* Open a dataset directory: reads and checks its index (a directory without one is not a
 * dataset; the error says so). */
int wan_dataset_open(const char *dir, wan_dataset **out);
void wan_dataset_close(wan_dataset *ds);
int64_t wan_dataset_count(const wan_dataset *ds);
int wan_dataset_info(const wan_dataset *ds, int64_t index, wan_sample_info *info);
/* Read one sample: latent [C, F, H, W] fp32 and text [text_len_model, text_dim] fp32 with the
 * rows past the sample's text_len zero (text longer than text_len_model is an error).
 * verify checks the sample's checksum; a mismatch is an error naming shard and sample. */
int wan_dataset_read(wan_dataset *ds, int64_t index, float *latent, float *text, int text_len_model, bool verify);

/* Layout-independent position in the global order: saved in checkpoints. */
typedef struct {
    uint64_t seed;
    uint64_t epoch;
    uint64_t position; /* global batches already taken in this epoch */
} wan_loader_state;

typedef struct {
    wan_dataset *ds;        /* or NULL: synthetic samples (below) */
    int synthetic_samples;  /* count of synthetic samples */
    int synth_shape[4];     /* C, F, H, W of synthetic latents */
    int gbs, mbs, dp, dp_rank;
    int text_len, text_dim; /* the model's: text is zero-padded to text_len rows */
    int prefetch;           /* micro-batches read ahead by background threads (0 = none) */
    int threads;            /* background reader threads when prefetch > 0 (0 = min(prefetch, 4)) */
    bool verify;
    bool skip_corrupt;      /* replace a corrupt sample deterministically instead of failing */
    wan_loader_state start;
} wan_loader_opts;

typedef struct {
    int B, C, F, H, W;
    float *latent;           /* [B, C, F, H, W] */
    float *text;             /* [B, text_len, text_dim] */
    int64_t sample[64];      /* dataset index of each sample (B <= 64) */
    int global_index[64];    /* position of each sample within its global batch: 0 .. gbs-1 */
    uint64_t step_epoch;     /* epoch of the global batch this belongs to */
} wan_microbatch;

typedef struct wan_loader wan_loader;
int wan_loader_create(const wan_loader_opts *o, wan_loader **out);
/* The next of this rank's micro-batches (gbs / (mbs * dp) per global batch). The buffers
 * stay valid until the next call. */
int wan_loader_next(wan_loader *l, wan_microbatch *mb);
/* Position after the last fully consumed global batch. */
wan_loader_state wan_loader_get_state(const wan_loader *l);
uint64_t wan_loader_corrupt_skipped(const wan_loader *l);
int64_t wan_loader_batches_per_epoch(const wan_loader *l); /* global batches in one epoch */
void wan_loader_destroy(wan_loader *l);

/* Synthetic samples (wan-preprocess synth and data.path = ""): a pure function of
 * (seed, index). Latents are smooth in space and time with noise on top and per-channel
 * means and scales like a VAE's; text has a varying number of real rows (the rest zero). */
void wan_synth_sample(uint64_t seed, int64_t index, int C, int F, int H, int W, int text_len_max, int text_dim,
                      float *latent, float *text, int *text_len);

#endif
