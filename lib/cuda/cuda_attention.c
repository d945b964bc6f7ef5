/* Attention ops of the CUDA backend: cuDNN's fused scaled-dot-product attention (sdpa_cudnn.c)
 * for the forward and backward, scratch buffers when the backward must accumulate, and the
 * context-parallel merge (cuda_attn_merge.cu). */
#include "cuda_internal.h"
#include "error.h"
#include "sdpa_cudnn.h"

static void sdpa_failed(const char *what) {
    wan_cuda_dief(__FILE__, __LINE__, "cuDNN attention %s: %s [%s]", what, wan_errmsg(), wan_errwhere());
}

void wan_cuda_attention_fwd(wan_backend *be, void *out, int ldo, float *lse, const void *q, int ldq, const void *k,
                            int ldk, const void *v, int ldv, int B, int H, int Sq, int Skv, int hd, int kv_valid,
                            float scale) {
    if (B <= 0 || H <= 0 || Sq <= 0) return;
    wan_cuda *c = wan_cuda_of(be);
    if (wan_sdpa_fwd(c->sdpa, out, ldo, lse, q, ldq, k, ldk, v, ldv, B, H, Sq, Skv, hd, kv_valid, scale))
        sdpa_failed("forward");
}

void wan_cuda_attention_bwd(wan_backend *be, void *dq, int lddq, void *dk, int lddk, void *dv, int lddv,
                            unsigned accumulate, const void *dout, int lddo, const void *out, int ldo, const float *lse,
                            const void *q, int ldq, const void *k, int ldk, const void *v, int ldv, int B, int H,
                            int Sq, int Skv, int hd, int kv_valid, float scale) {
    if (B <= 0 || H <= 0 || Sq <= 0) return;
    wan_cuda *c = wan_cuda_of(be);
    /* cuDNN writes its gradients; one to accumulate (or to discard when NULL) goes to a dense
     * [rows, H * hd] scratch buffer that is then added to its strided destination. */
    int dense = H * hd;
    size_t esz = wan_dtype_size(be->act);
    bool aq = dq && (accumulate & WAN_ACC_DQ), ak = dk && (accumulate & WAN_ACC_DK), av = dv && (accumulate & WAN_ACC_DV);
    void *wq = dq, *wk = dk, *wv = dv;
    int lq = lddq, lk = lddk, lv = lddv;
    if (aq || !dq) wq = wan_cuda_scratch(be, WAN_SCR_ATT_DQ, (size_t)B * Sq * dense * esz), lq = dense;
    if (ak || !dk) wk = wan_cuda_scratch(be, WAN_SCR_ATT_DK, (size_t)B * Skv * dense * esz), lk = dense;
    if (av || !dv) wv = wan_cuda_scratch(be, WAN_SCR_ATT_DV, (size_t)B * Skv * dense * esz), lv = dense;
    if (wan_sdpa_bwd(c->sdpa, wq, lq, wk, lk, wv, lv, dout, lddo, out, ldo, lse, q, ldq, k, ldk, v, ldv, B, H, Sq, Skv,
                     hd, kv_valid, scale))
        sdpa_failed("backward");
    if (aq) wan_cuda_add_2d(c->stream, dq, lddq, wq, dense, be->act, B * Sq, dense);
    if (ak) wan_cuda_add_2d(c->stream, dk, lddk, wk, dense, be->act, B * Skv, dense);
    if (av) wan_cuda_add_2d(c->stream, dv, lddv, wv, dense, be->act, B * Skv, dense);
}

void wan_cuda_attention_merge(wan_backend *be, float *acc, float *lse_acc, const void *o, int ldo, const float *lse,
                              int B, int H, int Sq, int hd, bool first) {
    wan_cuda_merge_launch(wan_cuda_stream_of(be), acc, lse_acc, o, ldo, be->act, lse, B, H, Sq, hd, first);
}
