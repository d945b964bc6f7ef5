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

/* handle: a cudnnHandle_t; stream: the cudaStream_t the handle runs on (set on the handle here).
 * alloc/free: the backend's device allocator for the workspace (one, shared by every plan since
 * they run in order on one stream; grown when a new plan needs more: the backward's holds two fp32
 * buffers, B*H*Sq*(hd+1) floats) and the padding mask's per-sample lengths; free must be safe
 * for memory the stream may still be reading (cudaFree, or an allocator ordered on that stream).
 * Pointers must be 16-byte aligned and row strides multiples of 8 elements.
 * WAN_SDPA_FWD=unified|composite pins the forward graph (default: the single SDPA_FWD operation,
 * falling back to the composite graph when no engine takes it). */
int wan_sdpa_create(void *handle, void *stream, void *(*alloc)(void *ctx, size_t bytes),
                    void (*free)(void *ctx, void *p), void *alloc_ctx, wan_sdpa **out);
void wan_sdpa_destroy(wan_sdpa *s);

/* lse: [B, H, Sq] fp32 natural-log softmax denominators of the scaled logits:
 * lse = m + ln(sum_j exp(s_j - m)), s = scale * q.k. cuDNN's softmax statistics are exactly this
 * (the backward recomputes P = exp(s - lse)), so they are stored as they come. */
int wan_sdpa_fwd(wan_sdpa *s, void *out, int ldo, float *lse, const void *q, int ldq, const void *k, int ldk,
                 const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid, float scale);
/* Writes dq, dk, dv (no accumulation; the caller adds when it needs to). out and lse are the
 * FINAL ones (of the whole key sequence under context parallelism); dk, dv rows of masked keys
 * (>= kv_valid) are written as zeros. */
int wan_sdpa_bwd(wan_sdpa *s, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv, const void *dout,
                 int lddo, const void *out, int ldo, const float *lse, const void *q, int ldq, const void *k,
                 int ldk, const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                 float scale);

/* Build and finalise the forward and backward graphs for a shape without running them; on a
 * machine without a GPU this goes as far as cuDNN allows and reports which step stopped it.
 * Used by the CPU-only CI test. Returns 0 when every descriptor up to the graph finalised. */
/* Graphs built: forward as the SDPA_FWD operation and as the composite graph, backward; each
 * without and with the padding mask (kv_valid = Skv - 1), in the model's layouts (q|k|v and
 * dq|dk|dv column blocks of [tokens, 3*H*hd], out and dout dense). With a GPU it goes on to
 * heuristics and execution plans (the backward and at least one forward must get one). Without,
 * cudnnCreate fails; tensors, operations and operation graphs still finalise, and each graph is
 * checked against a device description of an H100 (sm_90): at least one engine must accept it
 * (engine configs stop at the missing CUDA driver, which the kernel builds need). */
int wan_sdpa_selftest_build(int B, int H, int Sq, int Skv, int hd, char *report, size_t report_len);

#endif
