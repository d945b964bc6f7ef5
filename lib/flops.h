/* Model FLOPs of a Wan 2.1 DiT training step, counted the way Megatron-Bridge counts them for
 * Wan (../shared/reference/wan21.md), so that our TFLOP/s line up with NeMo DFM's table.
 *
 * Per sample of s video tokens, with c text rows, h = dim, F = ffn_dim, L = layers, forward:
 *   self  = 2sh(3h) + 4s^2 h + 2sh^2          q,k,v projections, scores and values, output
 *   cross = 2sh^2 + 4ch^2 + 4sch + 2sh^2      q from video, k,v from text, scores+values, output
 *   mlp   = 4shF
 *   fwd   = L(self + cross + mlp) + 2s*P_in*h + 2c(T*h + h^2) + 2sh*P_out
 * where P_in = P_out = in_dim * prod(patch) = 16*1*2*2 = 64 (patch embedding and head) and
 * T = text_dim = 4096 (the text embedding's two linears). A training step is 3 * fwd (the
 * backward costs twice the forward). Norms, RoPE, softmax, modulation and the time embedding
 * are not counted. With the Wan 2.1 sizes this is exactly the formula written in wan21.md. */
#ifndef WAN_FLOPS_H
#define WAN_FLOPS_H

#include "config.h"

/* The formula's name, as printed in reports. */
#define WAN_FLOPS_FORMULA_NAME "Megatron-Bridge Wan formula (3 x forward; self- and cross-attention, MLP, patch/text embeddings, head)"

/* What NeMo DFM's published table implies for Wan 2.1 14B at 37440 tokens: its Model TFLOP/s
 * divided by its tokens/s (787.59e12 / 4747.17 on GB200; the H100 and GB300 rows agree to
 * 3e-6). 0.44% above the formula: the table counts something the formula does not. */
#define WAN_FLOPS_PER_TOKEN_SEED_14B 1.65907e11
#define WAN_FLOPS_SEED_SEQ_LEN 37440

/* Training FLOPs (forward + backward) for one sample of seq_len video tokens. */
double wan_train_flops_per_sample(const wan_model_cfg *m, long long seq_len);

/* The same divided by seq_len: training FLOPs per video token. */
double wan_train_flops_per_token(const wan_model_cfg *m, long long seq_len);

/* Fill m with the Wan 2.1 14B sizes (for the comparison with the seed figure). */
void wan_flops_wan21_14b(wan_model_cfg *m);

/* True for the Wan 2.1 14B sizes (dim 5120, ffn 13824, 40 layers, text 512 x 4096, patch
 * 1x2x2 over 16 channels): the model the seed figure above belongs to. */
bool wan_flops_is_wan21_14b(const wan_model_cfg *m);

#endif
