/* Which pieces of a checkpoint each rank of a parallel layout holds and writes. One function
 * answers it for the trainer (wan_state_save / wan_state_load) and for wan-reshard, so a
 * resharded checkpoint is exactly what a run at the target layout would have written.
 *
 * Rank order is Megatron's (tp fastest, then cp, dp, pp: see dist.h). A rank writes:
 *   model weights: the local tp piece of every tensor of its pipeline stage, when it is the
 *     first of its dp x cp replicas (dp_rank 0, cp_rank 0); replicated tensors by tp rank 0;
 *   master, adam_m, adam_v: its ZeRO slice (dp x cp group, cp fastest) of the flat buffer, as
 *     boxes of each tensor the slice touches; replicated tensors by tp rank 0.
 * Pieces of one rank come in this order: model pieces in parameter order, then for each tensor
 * the slice touches, the master boxes, the adam_m boxes and the adam_v boxes. */
#ifndef WAN_CKPT_LAYOUT_H
#define WAN_CKPT_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ckpt.h"
#include "config.h"
#include "params.h"

/* A rank's coordinates in a layout. */
typedef struct {
    int tp, cp, dp, pp;
    int tp_rank, cp_rank, dp_rank, pp_rank;
    int zero_size, zero_rank; /* the ZeRO group: dp x cp, cp fastest */
} wan_grid_pos;

/* Kinds of state, as bits: which kinds a checkpoint holds (imported weights: model only). */
#define WAN_KIND_BIT(k) (1u << (k))
#define WAN_KINDS_MODEL 1u
#define WAN_KINDS_ALL 15u

/* "tp=2,cp=1,dp=4,pp=1[,sp=1]" (any order; missing sizes are 1; fsdp= is refused). */
int wan_layout_parse(const char *text, wan_ckpt_layout *L);
void wan_layout_format(const wan_ckpt_layout *L, char *buf, size_t n); /* "tp2 cp1 dp4 pp1" (+" sp") */
/* The model can take the layout: heads and ffn_dim divisible by tp, layers by pp, sizes >= 1.
 * WAN_ERR_USAGE naming the fields otherwise. */
int wan_layout_check(const wan_model_cfg *m, const wan_ckpt_layout *L);
void wan_layout_position(const wan_ckpt_layout *L, int rank, wan_grid_pos *g);
/* The parameter set (flat-buffer layout) of the rank at g. */
int wan_layout_params(const wan_model_cfg *m, const wan_grid_pos *g, wan_param_set *ps);
/* The rank's ZeRO slice [lo, hi) of its flat buffer. */
void wan_layout_zero_range(const wan_param_set *ps, const wan_grid_pos *g, int64_t *lo, int64_t *hi);

typedef struct {
    int param;     /* index into the rank's parameter set */
    int kind;      /* 0 model, 1 master, 2 adam_m, 3 adam_v */
    wan_box box;   /* in global coordinates */
    int64_t flat;  /* first element in the rank's flat buffer (row-major box follows) */
    int64_t numel;
} wan_layout_piece;

/* The pieces of the kinds in `kinds` that the rank at g writes (held = false), or all it holds
 * and loads (held = true: also the replicas it does not write), in the order above. *out is
 * malloc'd. */
int wan_layout_pieces(const wan_param_set *ps, const wan_grid_pos *g, unsigned kinds, bool held,
                      wan_layout_piece **out, int *n);

/* Write the pieces of the rank at g from its flat buffers: weights (dtype wdt, ps->total
 * elements) and the optimizer slice opt[0..2] = master, adam_m, adam_v ([hi - lo] fp32 each,
 * starting at the ZeRO slice's lo; NULL when kinds has model only). */
int wan_layout_write_rank(wan_ckpt_writer *w, const wan_param_set *ps, const wan_grid_pos *g, unsigned kinds,
                          wan_dtype wdt, const void *weights, const float *const opt[3]);

#endif
