/* The published Wan 2.1 14B throughput that --compare puts beside a run: the NeMo DFM
 * performance page this project started from (../shared/reference/dfm-performance-summary.md)
 * and the later versions of that page listed in ../shared/reference/wan21.md, which publish
 * Model TFLOP/s/GPU only (their layouts and tokens/s are not given: -1 and 0 below). */
#include <math.h>
#include <string.h>

#include "flops.h"
#include "report.h"

#define SEED "NeMo DFM performance summary (Megatron-Core)"
#define LATER "NeMo DFM performance summary, later version (Megatron-Core)"
#define NATIVE "NeMo DFM performance summary, later version (PyTorch-native path)"

static const wan_report_reference refs[] = {
    /* system, model, source, gpus, gbs, mbs, seq, fsdp, tp, sp, pp, cp, vp, ep, tok/s/GPU, TFLOP/s/GPU */
    {"DGX-GB200", "Wan 2.1 14B", SEED, 32, 64, 1, 37440, 0, 1, 0, 1, 4, 0, 0, 4747.17, 787.59},
    {"DGX-GB300", "Wan 2.1 14B", SEED, 32, 64, 1, 37440, 0, 1, 0, 1, 2, 0, 0, 6161.63, 1022.26},
    {"DGX-H100", "Wan 2.1 14B", SEED, 64, 64, 1, 37440, 0, 2, 1, 1, 4, 0, 0, 1866.47, 309.66},
    {"DGX-GB200", "Wan 2.1 14B", LATER, -1, -1, -1, 37440, -1, -1, -1, -1, -1, -1, -1, 0, 899.62},
    {"DGX-GB300", "Wan 2.1 14B", LATER, -1, -1, -1, 37440, -1, -1, -1, -1, -1, -1, -1, 0, 1030.67},
    {"DGX-B200", "Wan 2.1 14B", LATER, -1, -1, -1, 37440, -1, -1, -1, -1, -1, -1, -1, 0, 804.02},
    {"DGX-H100", "Wan 2.1 14B", LATER, 128, -1, -1, 37440, -1, -1, -1, -1, -1, -1, -1, 0, 325.77},
    {"DGX-H100", "Wan 2.1 14B", NATIVE, 8, -1, -1, 37440, -1, -1, -1, -1, -1, -1, -1, 0, 175.88},
    {"DGX-H100", "Wan 2.1 14B", NATIVE, 64, -1, -1, 37440, -1, -1, -1, -1, -1, -1, -1, 0, 228.85},
};

const wan_report_reference *wan_report_reference_table(int *n) {
    *n = (int)(sizeof refs / sizeof refs[0]);
    return refs;
}

int wan_report_references(const char *system, const char *model, int seq_len, const wan_report_reference **out,
                          int max) {
    int found = 0;
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++)
        if (!strcmp(refs[i].system, system) && !strcmp(refs[i].model, model) && refs[i].seq_len == seq_len &&
            found < max)
            out[found++] = &refs[i];
    return found;
}

void wan_report_ratios(const wan_report_stats *st, const wan_report_reference *ref, double *tokens_ratio,
                       double *tflops_ratio) {
    /* Rows without tokens/s are taken to count FLOPs as the seed rows do (1.65907e11 per
     * token at 37440), the only counting the page ever documented by example. */
    double ref_tokens = ref->tokens_per_sec_per_gpu > 0 ? ref->tokens_per_sec_per_gpu
                                                        : ref->tflops_per_gpu * 1e12 / WAN_FLOPS_PER_TOKEN_SEED_14B;
    *tokens_ratio = ref_tokens > 0 ? st->tokens_per_sec_per_gpu / ref_tokens : NAN;
    *tflops_ratio = ref->tflops_per_gpu > 0 ? st->tflops_per_gpu / ref->tflops_per_gpu : NAN;
}
