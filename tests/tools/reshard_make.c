/* reshard_make: write a synthetic checkpoint (random, never-zero content; the same global
 * tensors at every layout) as a training run at a layout would save it, for the resharding
 * tests and benchmark. With WAN_TEST_CKPT_PAUSE_MS=N the save pauses N ms between pieces and
 * commit steps, so a test can kill it anywhere.
 *
 *   reshard_make --out ROOT --layout tp=2,dp=2 [--step N] [--seed S] [--config F] [--set K=V]...
 *                [--weights-only] [--dtype f32|bf16] */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "ckpt_layout.h"
#include "error.h"
#include "reshard.h"

int main(int argc, char **argv) {
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},   {"layout", required_argument, 0, 'l'},
                                         {"step", required_argument, 0, 'n'},  {"seed", required_argument, 0, 'S'},
                                         {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 's'},
                                         {"weights-only", no_argument, 0, 'w'}, {"dtype", required_argument, 0, 'd'},
                                         {0, 0, 0, 0}};
    const char *prog = "reshard_make", *out = NULL, *layout = "tp=1";
    int step = 1, c;
    uint64_t seed = 1;
    unsigned kinds = WAN_KINDS_ALL;
    wan_dtype wdt = WAN_F32;
    wan_cli_config cc = {0};
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'l': layout = optarg; break;
        case 'n': step = atoi(optarg); break;
        case 'S': seed = strtoull(optarg, NULL, 0); break;
        case 'c': cc.path = optarg; break;
        case 's':
            if (wan_cli_add_set(&cc, prog, optarg)) return 2;
            break;
        case 'w': kinds = WAN_KINDS_MODEL; break;
        case 'd':
            if (!strcmp(optarg, "f32")) wdt = WAN_F32;
            else if (!strcmp(optarg, "bf16")) wdt = WAN_BF16;
            else return wan_cli_usage_error(prog, "--dtype %s: expected f32 or bf16", optarg);
            break;
        default: return 2;
        }
    }
    if (!out) return wan_cli_usage_error(prog, "--out ROOT is required");
    wan_ckpt_layout L;
    if (wan_layout_parse(layout, &L)) return wan_cli_fail(prog, WAN_ERR_USAGE);
    wan_config cfg;
    wan_config_defaults(&cfg);
    if (cc.path && wan_config_load(&cfg, cc.path)) return wan_cli_fail(prog, WAN_ERR_USAGE);
    for (int i = 0; i < cc.nsets; i++)
        if (wan_config_set(&cfg, cc.sets[i])) return wan_cli_fail(prog, WAN_ERR_USAGE);
    int rc = wan_rs_make_synthetic(out, step, &cfg, &L, kinds, wdt, seed);
    if (rc) return wan_cli_fail(prog, rc);
    return 0;
}
