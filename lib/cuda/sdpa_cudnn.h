/* Fused scaled-dot-product attention through cuDNN's backend API (C, no frontend):
 * forward as the single SDPA_FWD operation with a softmax-statistics output; backward as the
 * composite graph (matmul, pointwise, reduction, reshape ops) that cudnn-frontend's SDPA
 * backward node emits. bf16 q/k/v/o in BSHD strides, fp32 statistics, no mask (keys at
 * positions >= kv_valid masked by a padding mask when kv_valid < Skv). One plan per shape,
 * built once and cached. Semantics are those of attention_fwd/attention_bwd in ops.h. */
#ifndef WAN_SDPA_CUDNN_H
#define WAN_SDPA_CUDNN_H

#include <stdbool.h>
#include <stddef.h>

typedef struct wan_sdpa wan_sdpa;

/* handle: a cudnnHandle_t; stream: the cudaStream_t the handle runs on.
 * alloc/free: the backend's device allocator for workspaces (kept per plan). */
int wan_sdpa_create(void *handle, void *stream, void *(*alloc)(void *ctx, size_t bytes),
                    void (*free)(void *ctx, void *p), void *alloc_ctx, wan_sdpa **out);
void wan_sdpa_destroy(wan_sdpa *s);

/* lse: [B, H, Sq] fp32 natural-log softmax denominators of the scaled logits. */
int wan_sdpa_fwd(wan_sdpa *s, void *out, int ldo, float *lse, const void *q, int ldq, const void *k, int ldk,
                 const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid, float scale);
/* Writes dq, dk, dv (no accumulation; the caller adds when it needs to). */
int wan_sdpa_bwd(wan_sdpa *s, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv, const void *dout,
                 int lddo, const void *out, int ldo, const float *lse, const void *q, int ldq, const void *k,
                 int ldk, const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                 float scale);

/* Build and finalise the forward and backward graphs for a shape without running them; on a
 * machine without a GPU this goes as far as cuDNN allows and reports which step stopped it.
 * Used by the CPU-only CI test. Returns 0 when every descriptor up to the graph finalised. */
int wan_sdpa_selftest_build(int B, int H, int Sq, int Skv, int hd, char *report, size_t report_len);

#endif
