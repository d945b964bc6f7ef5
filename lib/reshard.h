/* Offline resharding: checkpoints from one parallel layout to another, tensor by tensor, in
 * memory bounded by a budget (not by the model's size), with parallel I/O threads.
 *
 * The engine (reshard_engine.c) copies boxes of global tensors: every target piece is produced
 * in row-major chunks by reading only the overlapping slices of the source pieces, converting
 * the element type when asked, and is written with its XXH3-64 computed on the way. Source
 * bytes are hashed as they are read (and what was not read in order is read once more at the
 * end), so a corrupt source is always detected before anything is committed. The same engine
 * serves convert (checkpoint -> checkpoint), import (safetensors -> checkpoint), export
 * (checkpoint -> safetensors) and the layout-independent content digest of `inspect`. */
#ifndef WAN_RESHARD_H
#define WAN_RESHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "ckpt.h"
#include "config.h"
#include "dtype.h"

/* ---- the engine ---- */

/* A stored box of a global tensor: where its row-major bytes are. */
typedef struct {
    int fd;
    const char *path;        /* for messages */
    uint64_t offset;         /* absolute byte offset of the box's data in the file */
    wan_box box;
    wan_dtype dtype;
    bool check;              /* verify the box's bytes against xxh64 (XXH3-64) */
    uint64_t xxh64;
} wan_rs_source;

typedef struct {
    const char *name, *kind; /* for messages */
    int ndim;
    int64_t shape[WAN_MAX_DIMS];
    const wan_rs_source *src; /* covering the tensor exactly once (checked by the caller) */
    int nsrc;
} wan_rs_tensor;

/* Writes n bytes at offset of the target (thread-safe: different targets run on different
 * threads at the same time). */
typedef int (*wan_rs_write_fn)(void *ctx, uint64_t offset, const void *data, size_t n);

typedef struct {
    int tensor;           /* index into the tensor table */
    wan_box box;          /* the box of the global tensor to produce, row-major */
    wan_dtype dtype;
    wan_rs_write_fn write; /* NULL: compute the checksum only (content digests) */
    void *ctx;
    uint64_t offset;      /* where the box's bytes go */
    uint64_t xxh64;       /* out: XXH3-64 of the box's bytes */
} wan_rs_target;

typedef struct {
    uint64_t memory_budget; /* bytes for all buffers of all threads */
    int threads;
    const char *what;       /* progress label, e.g. "resharding" */
    bool quiet;             /* no progress output */
} wan_rs_params;

typedef struct {
    uint64_t bytes_read, bytes_written, bytes_reread, bytes_verified;
    double seconds_copy, seconds_verify, seconds_total;
    uint64_t buffer_bytes;  /* memory the buffers took (per-thread buffers x threads) */
} wan_rs_stats;

/* Produce every target from the sources. Bad checksums fail after the copy (the caller then
 * discards what was written). stats may be NULL; times and byte counts add up over calls. */
int wan_rs_copy(const wan_rs_tensor *t, int nt, wan_rs_target *dst, int nd, const wan_rs_params *p,
                wan_rs_stats *stats);
/* Read every piece of an open checkpoint and check its checksum, on p->threads threads. */
int wan_rs_verify_ckpt(wan_ckpt *c, const wan_rs_params *p, wan_rs_stats *stats);
/* "1G", "512M", "64K", "1048576" -> bytes (binary units). */
int wan_rs_parse_size(const char *text, uint64_t *bytes);
void wan_rs_format_size(uint64_t bytes, char *buf, size_t n); /* "1.5 GiB" */

/* ---- checkpoints ---- */

/* The engine's view of an open checkpoint (sources of every tensor, checked against their
 * checksums). Needs wan_ckpt_open_files. Free with wan_rs_sources_free. */
typedef struct {
    wan_rs_tensor *t; /* parallel to c->t */
    wan_rs_source *src;
    char (*paths)[2 * WAN_PATH_MAX];
    int nt;
} wan_rs_sources;
int wan_rs_sources_of(wan_ckpt *c, wan_rs_sources *s);
void wan_rs_sources_free(wan_rs_sources *s);

/* The tensors of a checkpoint agree with its model config: every parameter of the model is
 * there with its shape (model weights in F32, BF16 or F16; optimizer state F32, all three
 * kinds or none) and nothing else is. Returns the kinds present (WAN_KIND_BIT mask). */
int wan_rs_check_tensors(const wan_ckpt *c, const wan_model_cfg *m, unsigned *kinds);

typedef struct {
    wan_ckpt_layout layout;  /* target layout (world = tp * cp * dp * pp) */
    const char *config_text; /* resolved config of the target run; NULL = the source's with
                                the parallel group set to the layout */
    bool link_latest;        /* replace <parent of dst>/latest */
    bool force;              /* replace an existing dst */
    wan_rs_params io;
} wan_reshard_opts;

/* Convert the checkpoint src (a step directory or a checkpoint root) into dst, the checkpoint
 * a run at the target layout would have written. Everything goes to dst.tmp.<pid> first and is
 * read back and verified before the rename; on failure nothing named dst appears. */
int wan_reshard_convert(const char *src, const char *dst, const wan_reshard_opts *o, wan_rs_stats *stats);

/* Content digest of every full tensor (layout-independent): XXH3-64 of its row-major bytes.
 * out[i] parallel to c->t. */
int wan_rs_digests(wan_ckpt *c, const wan_rs_params *p, uint64_t *out);

/* Write pieces for every rank of layout L from per-tensor sources (one wan_rs_tensor per
 * (param, kind) as looked up by find), then commit: used by convert and import.
 *   find(ctx, name, kind) -> index into t, or -1 when the kind is absent. */
typedef struct {
    const wan_model_cfg *model;
    wan_ckpt_layout layout;
    unsigned kinds;
    const wan_rs_tensor *t;
    int nt;
    int (*find)(void *ctx, const char *name, int kind);
    void *find_ctx;
    wan_dtype (*dtype_of)(void *ctx, int tensor); /* element type to store */
    wan_ckpt_meta meta;      /* step, optimizer_step, config_text, data (layout and nranks are set here) */
    bool link_latest, force;
    wan_rs_params io;
} wan_rs_write_job;
int wan_rs_write_checkpoint(const char *dst, const wan_rs_write_job *job, wan_rs_stats *stats);

/* ---- synthetic checkpoints (tests and benchmarks) ---- */

/* Value of element `index` (row-major, global) of tensor `name` of `kind` in a synthetic
 * checkpoint: random in (-1, 1), never 0 (adam_v in (0, 1)), the same for every layout. */
float wan_rs_synthetic_value(uint64_t seed, const char *name, int kind, int64_t index);
/* Write <root>/step_<step> (and <root>/latest) as a run of cfg->model at layout L would save
 * it, every rank through the trainer's writer path (wan_layout_write_rank), with synthetic
 * values: model weights of type wdt, and master/adam state when kinds says so. */
int wan_rs_make_synthetic(const char *root, int step, const wan_config *cfg, const wan_ckpt_layout *L,
                          unsigned kinds, wan_dtype wdt, uint64_t seed);

#endif
