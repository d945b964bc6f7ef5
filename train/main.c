/* wan-train: pretrain a Wan 2.1 DiT with flow matching (CPU or CUDA; data, tensor + sequence
 * and context parallel). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas_kernels.h"
#include "cli.h"
#include "config.h"
#include "error.h"
#include "log.h"
#include "memory_plan.h"
#include "trainer.h"

static const char *prog = "wan-train";

/* --check: what a rank of each pipeline stage will allocate (MiB, as the first step logs it). */
static int print_memory_plan(const wan_config *cfg, int world) {
    bool cuda = !strcmp(cfg->train.device, "cuda");
    const int *ls = cfg->train.latent_shape;
    if (!ls[0] || !ls[1] || !ls[2]) {
        wan_info("no memory plan: train.latent_shape is taken from the data (set it to plan the activations)");
        return 0;
    }
    for (int s = 0; s < cfg->parallel.pp; s++) {
        wan_memory_plan_t p;
        if (wan_memory_plan(cfg, world, cuda, s, &p)) return WAN_ERR_USAGE;
        const double MiB = 1048576.0;
        wan_info("memory of a stage %d rank (%s): training state %.1f MiB (weights %.1f, gradients %.1f, optimizer "
                 "%.1f; %lld parameters), activations %.1f MiB (%d micro-batch%s in flight x %.1f kept + %.1f shared "
                 "+ %.1f pipeline inbox), total %.2f GiB (%zu bytes)",
                 s, cuda ? "cuda" : "cpu", p.state / MiB, p.weights / MiB, p.grads / MiB, p.optimizer / MiB,
                 (long long)p.params, p.activations / MiB, p.in_flight, p.in_flight > 1 ? "es" : "",
                 p.per_microbatch / MiB, p.shared / MiB, p.inbox / MiB, p.total / (1024.0 * MiB), p.total);
        const wan_train_cfg *t = &cfg->train;
        if (t->recompute) {
            wan_info("stage %d: %d of its %d blocks recompute their activations in the backward, %d keep them%s", s,
                     p.recomputing, p.blocks, p.blocks - p.recomputing,
                     t->recompute_layers < 0 && t->memory_budget_gib > 0 ? " (the fewest that fit train.memory_budget_gib)"
                                                                          : "");
            if (p.recomputing > 0 && t->recompute_layers < 0 && t->memory_budget_gib <= 0) {
                /* what the trade costs, for choosing a budget */
                wan_config keep = *cfg;
                keep.train.recompute_layers = 0;
                wan_memory_plan_t k;
                if (!wan_memory_plan(&keep, world, cuda, s, &k))
                    wan_info("stage %d: with every block keeping its activations the plan would be %.2f GiB; "
                             "train.memory_budget_gib lets as many keep them as fit", s, k.total / (1024.0 * MiB));
            }
        }
        if (t->memory_budget_gib > 0 && p.total > t->memory_budget_gib * 1024.0 * MiB)
            wan_warn("stage %d: the plan's %.2f GiB exceed train.memory_budget_gib = %g%s", s, p.total / (1024.0 * MiB),
                     t->memory_budget_gib,
                     t->recompute ? (p.recomputing == p.blocks ? " with every block recomputing" : "")
                                  : "; train.recompute = true keeps only each block's input");
    }
    if (cuda)
        wan_info("not counted above: cuBLASLt's 32 MiB workspace, cuDNN's attention workspaces and the backend's "
                 "scratch buffers (all three in the step log's peak), NCCL's buffers and the CUDA context");
    return 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "Usage: wan-train [--config FILE] [--set group.key=value]... [options]\n"
            "\n"
            "Train a Wan 2.1 text-to-video DiT with flow matching. Without --config the embedded\n"
            "default runs: the tiny model on CPU with synthetic data.\n"
            "\n"
            "Options:\n"
            "  -c, --config FILE     run configuration (libconfig; see configs/)\n"
            "  -s, --set K=V         override a key, e.g. --set train.steps=10 (repeatable)\n"
            "  -n, --nproc N         start N local ranks on this machine (without Slurm)\n"
            "  -r, --resume          continue from the latest complete checkpoint\n"
            "      --init-from CKPT  start from this checkpoint's weights (any layout; optimizer\n"
            "                        state and step too, as a resume would)\n"
            "      --check           validate the configuration, print each pipeline stage's memory\n"
            "                        per GPU (training state, activations), and exit (2 when invalid)\n"
            "      --world N         world size assumed by --check (default: slurm.nodes *\n"
            "                        slurm.gpus_per_node)\n"
            "      --print-config    print the resolved configuration and exit\n"
            "      --help-config     list every configuration key with its default\n"
            "  -h, --help            this help\n"
            "  -V, --version         version and build\n"
            "\n"
            "Under srun (--mpi=pmi2) ranks come from Slurm's PMI2; the local rank picks the GPU.\n"
            "Outputs: <train.run_dir>/steps.jsonl (one JSON line per step), config.cfg, checkpoints/.\n"
            "Signals: SIGUSR1 or SIGTERM finish the step, save a checkpoint and exit with status %d\n"
            "(requeue me). Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error.\n",
            WAN_EXIT_REQUEUE);
}

int main(int argc, char **argv) {
    wan_blas_ensure_kernels(argv);
    static const struct option opts[] = {
        {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 's'},
        {"nproc", required_argument, 0, 'n'},  {"resume", no_argument, 0, 'r'},
        {"check", no_argument, 0, 1},          {"world", required_argument, 0, 2},
        {"print-config", no_argument, 0, 3},   {"help-config", no_argument, 0, 4},
        {"init-from", required_argument, 0, 5}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},      {0, 0, 0, 0}};
    wan_cli_config cc = {0};
    wan_train_opts to = {0};
    bool check = false, print = false;
    int world = 0, c;
    while ((c = getopt_long(argc, argv, "c:s:n:rhV", opts, NULL)) != -1) {
        switch (c) {
        case 'c': cc.path = optarg; break;
        case 's':
            if (wan_cli_add_set(&cc, prog, optarg)) return WAN_ERR_USAGE;
            break;
        case 'n': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1024) return wan_cli_usage_error(prog, "--nproc %s: expected 1..1024", optarg);
            to.nproc = (int)v;
            break;
        }
        case 'r': to.resume = true; break;
        case 1: check = true; break;
        case 2: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1) return wan_cli_usage_error(prog, "--world %s: expected a positive integer", optarg);
            world = (int)v;
            break;
        }
        case 3: print = true; break;
        case 4:
            printf("Configuration keys (group.key: type, default):\n");
            wan_config_print_schema(stdout);
            return 0;
        case 5: to.init_from = optarg; break;
        case 'h': usage(stdout); return 0;
        case 'V': wan_cli_version(prog); return 0;
        default: usage(stderr); return WAN_ERR_USAGE;
        }
    }
    if (optind < argc) return wan_cli_usage_error(prog, "unexpected argument '%s'", argv[optind]);

    wan_config cfg;
    if (check || print) {
        if (wan_cli_load_config(&cc, &cfg, 0)) return wan_cli_fail(prog, WAN_ERR_USAGE);
        if (!world) world = cfg.slurm.nodes * cfg.slurm.gpus_per_node;
        if (check && wan_config_validate(&cfg, world)) return wan_cli_fail(prog, WAN_ERR_USAGE);
        if (print) {
            wan_config_write(&cfg, stdout);
            return 0;
        }
        wan_info("%s: configuration is valid for %d ranks", cc.path ? cc.path : "embedded default", world);
        wan_config_advise(&cfg);
        if (print_memory_plan(&cfg, world)) return wan_cli_fail(prog, WAN_ERR_USAGE);
        return 0;
    }
    to.config = &cc;
    int rc = wan_train_main(&to);
    if (rc && rc != WAN_EXIT_REQUEUE) return wan_cli_fail(prog, rc);
    return rc;
}
