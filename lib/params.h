/* Parameters: one contiguous buffer per rank described by named tensor descriptors.
 * Names are the official Wan 2.1 keys ("blocks.3.self_attn.q.weight"); nothing is identified
 * by its position. The same table says how each tensor shards under tensor parallelism and
 * which pipeline stage holds it, so training, checkpoints and the resharding tool agree. */
#ifndef WAN_PARAMS_H
#define WAN_PARAMS_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

typedef enum {
    WAN_ROLE_MATRIX,     /* weight of a linear/conv: decayed */
    WAN_ROLE_BIAS,
    WAN_ROLE_NORM,       /* norm weights and biases */
    WAN_ROLE_MODULATION, /* blocks.N.modulation, head.modulation */
} wan_role;

typedef enum {
    WAN_SHARD_NONE, /* replicated over tensor-parallel ranks */
    WAN_SHARD_DIM0, /* split along dim 0 (column-parallel outputs, their biases and q/k norms) */
    WAN_SHARD_DIM1, /* split along dim 1 (row-parallel inputs) */
} wan_tp_shard;

typedef enum {
    WAN_INIT_XAVIER,  /* xavier_uniform over (dim0, product of the rest) */
    WAN_INIT_NORMAL02, /* normal, std 0.02 */
    WAN_INIT_ZERO,
    WAN_INIT_ONE,
    WAN_INIT_RANDN_SQRT_DIM, /* randn / sqrt(dim): modulation */
} wan_init;

#define WAN_MAX_DIMS 5

typedef struct {
    char name[96];
    int ndim;
    int64_t shape[WAN_MAX_DIMS]; /* global shape, official layout */
    wan_role role;
    bool decay;
    wan_tp_shard shard;
    wan_init init;
    int layer;  /* block index, or -1 */
    int stage;  /* pipeline stage that holds it */
    /* this rank's piece (tp shard of a tensor held by this rank's stage) */
    bool present;
    int64_t local_shape[WAN_MAX_DIMS];
    int64_t local_start[WAN_MAX_DIMS]; /* where the piece starts in the global tensor */
    int64_t numel;                     /* elements of the local piece */
    int64_t offset;                    /* element offset in the rank's flat buffer */
} wan_param;

typedef struct {
    wan_param *p;
    int n;
    int64_t total; /* elements in the flat buffer, padded for alignment and ZeRO sharding */
    int tp, tp_rank, pp, pp_stage;
} wan_param_set;

/* Describe every tensor of the model for tensor-parallel rank tp_rank of tp and pipeline stage
 * pp_stage of pp, laid out in this rank's flat buffer; the total is padded to a multiple of
 * zero_ranks * 64 so the ZeRO shards are equal slices. */
int wan_params_build(const wan_model_cfg *m, int tp, int tp_rank, int pp, int pp_stage, int zero_ranks,
                     wan_param_set *out);
void wan_params_free(wan_param_set *s);
/* NULL when there is no such tensor (or it is not present on this rank). */
const wan_param *wan_params_find(const wan_param_set *s, const char *name);
/* The tensor whether or not this rank holds it (present, offset -1 when not); NULL when the
 * model has no such tensor. */
const wan_param *wan_params_lookup(const wan_param_set *s, const char *name);
int64_t wan_params_count_global(const wan_param_set *s); /* elements of the whole model */

/* Initial value of element `index` (row-major in the GLOBAL tensor) of parameter p: a pure
 * function of (seed, name, index), so every layout initialises the same model. */
float wan_param_init_value(const wan_param *p, uint64_t seed, int64_t index);
/* Fill this rank's flat fp32 buffer (host memory, params.total elements) with initial values. */
void wan_params_init_host(const wan_param_set *s, uint64_t seed, float *buf);

/* The ZeRO-1 slice [lo, hi) of a flat buffer of `total` elements owned by shard r of k. */
void wan_zero_range(int64_t total, int k, int r, int64_t *lo, int64_t *hi);

/* Global flat index <-> multi-index helpers for pieces. */
int64_t wan_numel(int ndim, const int64_t *shape);

#endif
