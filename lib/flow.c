#include "flow.h"

#include <math.h>
#include <string.h>

#include "rng.h"

int wan_flow_preset_get(const char *objective, wan_flow_preset *p) {
    memset(p, 0, sizeof *p);
    if (!strcmp(objective, "pretrain")) {
        *p = (wan_flow_preset){.shift = 2.5, .logit_normal = true, .mean = 0.0, .std = 1.5, .uniform_prob = 0.2};
        return 0;
    }
    if (!strcmp(objective, "finetune")) {
        *p = (wan_flow_preset){.shift = 3.0, .logit_normal = false};
        return 0;
    }
    return -1;
}

double wan_flow_sigma(const wan_flow_preset *p, uint64_t seed, uint32_t step, uint32_t sample) {
    /* one coin per step (sample slot 0xffffffff), then the sample's own draws */
    bool uniform = !p->logit_normal ||
                   wan_rand_uniform(seed, WAN_RNG_TIMESTEP, step, 0xffffffffu, 0) < p->uniform_prob;
    double u;
    if (uniform) u = wan_rand_uniform(seed, WAN_RNG_TIMESTEP, step, sample, 1);
    else {
        double z = wan_rand_normal(seed, WAN_RNG_TIMESTEP, step, sample, 0);
        u = 1.0 / (1.0 + exp(-(p->mean + p->std * z)));
    }
    /* keep u strictly inside (0, 1) so sigma stays finite and positive */
    if (u < 1e-7) u = 1e-7;
    if (u > 1.0 - 1e-7) u = 1.0 - 1e-7;
    return p->shift / (p->shift + (1.0 / u - 1.0));
}

void wan_flow_noise(uint64_t seed, uint32_t step, uint32_t sample, float *out, uint64_t n) {
    wan_rand_normal_fill(out, n, seed, WAN_RNG_NOISE, step, sample, 0);
}
