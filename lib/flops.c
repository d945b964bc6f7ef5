#include "flops.h"

/* Every product stays below 2^53 for the real models (6.2e15 for 14B at 37440 tokens), so the
 * double arithmetic below is exact and the unit test can compare integers. */
double wan_train_flops_per_sample(const wan_model_cfg *m, long long seq_len) {
    double s = (double)seq_len, h = m->dim, F = m->ffn_dim, L = m->num_layers;
    double c = m->text_len, T = m->text_dim;
    double patch = (double)m->patch_size[0] * m->patch_size[1] * m->patch_size[2];
    double patch_in = m->in_dim * patch, patch_out = m->out_dim * patch;

    double self_attn = 2 * s * h * (3 * h) + 4 * s * s * h + 2 * s * h * h;
    double cross_attn = 2 * s * h * h + 4 * c * h * h + 4 * s * c * h + 2 * s * h * h;
    double mlp = 4 * s * h * F;
    double patch_embed = 2 * s * patch_in * h;
    double text_embed = 2 * c * (T * h + h * h);
    double head = 2 * s * h * patch_out;
    double forward = L * (self_attn + cross_attn + mlp) + patch_embed + text_embed + head;
    return 3 * forward;
}

double wan_train_flops_per_token(const wan_model_cfg *m, long long seq_len) {
    return seq_len > 0 ? wan_train_flops_per_sample(m, seq_len) / (double)seq_len : 0;
}

void wan_flops_wan21_14b(wan_model_cfg *m) {
    *m = (wan_model_cfg){.dim = 5120, .ffn_dim = 13824, .num_heads = 40, .num_layers = 40, .freq_dim = 256,
                         .text_dim = 4096, .text_len = 512, .in_dim = 16, .out_dim = 16, .patch_size = {1, 2, 2},
                         .eps = 1e-6};
}

bool wan_flops_is_wan21_14b(const wan_model_cfg *m) {
    return m->dim == 5120 && m->ffn_dim == 13824 && m->num_layers == 40 && m->text_len == 512 &&
           m->text_dim == 4096 && m->in_dim == 16 && m->out_dim == 16 && m->patch_size[0] == 1 &&
           m->patch_size[1] == 2 && m->patch_size[2] == 2;
}
