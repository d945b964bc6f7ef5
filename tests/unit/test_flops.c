/* The model-FLOPs formula (lib/flops.c) against values worked out by hand from the formula in
 * ../shared/reference/wan21.md, and the seed's implied figure against the published rows. */
#include "flops.h"
#include "test.h"

static wan_model_cfg wan21(int dim, int ffn, int layers) {
    wan_model_cfg m;
    wan_flops_wan21_14b(&m); /* shared sizes: text 512 x 4096, 16 channels, patch 1x2x2 */
    m.dim = dim;
    m.ffn_dim = ffn;
    m.num_layers = layers;
    return m;
}

/* The figure wan21.md and the issue quote: 1.6517e11 FLOPs per token for 14B at 37440. */
static void test_14b_per_token(void) {
    wan_model_cfg m = wan21(5120, 13824, 40);
    double per_token = wan_train_flops_per_token(&m, 37440);
    CHECKF(fabs(per_token / 1.6517e11 - 1) < 5e-5, "per token %.6e", per_token);
    CHECK(wan_flops_is_wan21_14b(&m));
    wan_model_cfg small = wan21(1536, 8960, 30);
    CHECK(!wan_flops_is_wan21_14b(&small));
}

/* Per sample, by hand (s tokens, h = dim, F = ffn_dim, L = layers, c = 512):
 *   self = 8sh^2 + 4s^2h; cross = 4sh^2 + 4ch^2 + 4sch; mlp = 4shF;
 *   outside the blocks = 2s*64*h + 2c(4096h + h^2) + 2sh*64; train = 3(L(self+cross+mlp) + outside)
 * 14B, s = 37440:  self 36,559,650,816,000  cross 4,372,142,489,600  mlp 10,599,845,068,800
 *                  outside 97,391,738,880 -> fwd 2,061,362,926,714,880 -> train 6,184,088,780,144,640
 * 14B, s = 32760:  self 28,849,766,400,000  cross 3,832,335,564,800  mlp 9,274,864,435,200
 *                  outside 91,257,569,280 -> fwd 1,678,369,913,569,280 -> train 5,035,109,740,707,840
 * 1.3B, s = 37440: self 9,319,030,456,320  cross 475,936,063,488  mlp 2,061,080,985,600
 *                  outside 23,580,377,088 -> fwd 355,705,005,539,328 -> train 1,067,115,016,617,984
 * 1.3B, s = 32760: self 7,212,173,230,080  cross 417,048,035,328  mlp 1,803,445,862,400
 *                  outside 21,740,126,208 -> fwd 283,001,753,960,448 -> train 849,005,261,881,344
 * All below 2^53, so the double arithmetic is exact and the comparison is too. */
static void test_hand_computed(void) {
    wan_model_cfg big = wan21(5120, 13824, 40), small = wan21(1536, 8960, 30);
    CHECK(wan_train_flops_per_sample(&big, 37440) == 6184088780144640.0);
    CHECK(wan_train_flops_per_sample(&big, 32760) == 5035109740707840.0);
    CHECK(wan_train_flops_per_sample(&small, 37440) == 1067115016617984.0);
    CHECK(wan_train_flops_per_sample(&small, 32760) == 849005261881344.0);
    CHECK_NEAR(wan_train_flops_per_token(&big, 32760), 5035109740707840.0 / 32760, 1e-15);
    CHECK_NEAR(wan_train_flops_per_token(&small, 37440), 1067115016617984.0 / 37440, 1e-15);
}

/* The sizes outside the blocks come from the config, not constants: a 1x1x1 patch over 16
 * channels takes 2 * 2sh * (64 - 16) forward FLOPs off, 3x that for training. */
static void test_uses_config(void) {
    wan_model_cfg m = wan21(1536, 8960, 30), p = m;
    p.patch_size[1] = p.patch_size[2] = 1;
    double s = 1000, h = 1536;
    CHECK(wan_train_flops_per_sample(&m, 1000) - wan_train_flops_per_sample(&p, 1000) == 3 * 2 * (2 * s * h * 48));
    wan_model_cfg t = m;
    t.text_len = 256; /* cross attention and the text embedding shrink */
    CHECK(wan_train_flops_per_sample(&t, 1000) < wan_train_flops_per_sample(&m, 1000));
    CHECK(wan_train_flops_per_token(&m, 0) == 0);
}

/* The seed's implied figure: each published row's TFLOP/s over its tokens/s, and 0.44% above
 * the formula as wan21.md says. */
static void test_seed_figure(void) {
    const double rows[][2] = {{787.59, 4747.17}, {1022.26, 6161.63}, {309.66, 1866.47}};
    for (int i = 0; i < 3; i++) {
        double implied = rows[i][0] * 1e12 / rows[i][1];
        CHECKF(fabs(implied / WAN_FLOPS_PER_TOKEN_SEED_14B - 1) < 3e-6, "row %d implies %.6e", i, implied);
    }
    wan_model_cfg m = wan21(5120, 13824, 40);
    double ratio = WAN_FLOPS_PER_TOKEN_SEED_14B / wan_train_flops_per_token(&m, WAN_FLOPS_SEED_SEQ_LEN);
    CHECKF(ratio > 1.0040 && ratio < 1.0050, "seed / formula = %.5f", ratio);
}

int main(void) {
    RUN(test_14b_per_token);
    RUN(test_hand_computed);
    RUN(test_uses_config);
    RUN(test_seed_figure);
    return test_summary();
}
