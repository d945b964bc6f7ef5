/* wan-reshard: offline checkpoint tools. convert (reshard between parallel layouts, optimizer
 * state included), inspect, verify, import and export (Wan 2.1 and diffusers safetensors). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "ckpt.h"
#include "ckpt_layout.h"
#include "cli.h"
#include "config.h"
#include "error.h"
#include "log.h"
#include "reshard.h"
#include "wan_weights.h"

static const char *prog = "wan-reshard";

static const char *io_help =
    "  -j, --threads N         parallel I/O threads (default 4)\n"
    "  -m, --memory-budget SZ  memory for all buffers, e.g. 512M, 2G (default 1G); pieces larger\n"
    "                          than the budget are streamed in chunks\n"
    "  -q, --quiet             no progress output\n";

static void usage(FILE *f) {
    fprintf(f,
            "Usage: wan-reshard COMMAND [options]\n"
            "\n"
            "Offline checkpoint tools for wan-train checkpoints (any parallel layout).\n"
            "\n"
            "Commands:\n"
            "  convert --from CKPT --to DIR --layout L   reshard to another layout (weights, fp32 master\n"
            "                                            weights, AdamW moments, step, data position)\n"
            "  inspect CKPT                              layout, step, tensors, sizes\n"
            "  verify CKPT                               every checksum and the coverage of every tensor\n"
            "  import SRC --to DIR                       an official Wan 2.1 or diffusers release -> checkpoint\n"
            "  export CKPT --to DIR                      checkpoint -> Wan 2.1 or diffusers safetensors\n"
            "\n"
            "  wan-reshard COMMAND --help   options of a command\n"
            "  -h, --help                   this help\n"
            "  -V, --version                version and build\n"
            "\n"
            "CKPT is a checkpoint directory (step_N) or a checkpoint root (then its latest).\n"
            "Exit codes: 0 done, 1 runtime failure (corrupt or missing data, I/O), 2 usage error.\n");
}

static void usage_convert(FILE *f) {
    fprintf(f,
            "Usage: wan-reshard convert --from CKPT --to DIR (--layout L | --config FILE [--world N]) [options]\n"
            "\n"
            "Write the checkpoint a run at the target layout would have saved: the same pieces per rank\n"
            "(rankNNNNN.bin) and the same meta.json, so wan-train resumes from it at that layout. Streams\n"
            "tensor by tensor, reading only the overlapping slices of the source pieces. The source is\n"
            "checked first (coverage, shapes and types against its config) and its checksums as it is\n"
            "read; the new checkpoint is written to DIR.tmp.<pid>, read back and verified, then renamed.\n"
            "\n"
            "Options:\n"
            "  -f, --from CKPT         source checkpoint\n"
            "  -t, --to DIR            new checkpoint directory (e.g. runs/b/checkpoints/step_00001000)\n"
            "  -l, --layout L          target layout: tp=N,cp=N,dp=N,pp=N[,sp=1] (missing sizes are 1)\n"
            "  -c, --config FILE       the target run's configuration: layout from its parallel group and\n"
            "                          --world; written into the checkpoint (its model must match)\n"
            "  -s, --set K=V           override a key of --config (repeatable)\n"
            "  -w, --world N           ranks of the target run (with --config; default slurm.nodes *\n"
            "                          slurm.gpus_per_node)\n"
            "      --link-latest       point <parent of DIR>/latest at the new checkpoint (for --resume)\n"
            "      --force             replace DIR if it exists\n"
            "%s"
            "  -h, --help              this help\n",
            io_help);
}

static void usage_inspect(FILE *f) {
    fprintf(f,
            "Usage: wan-reshard inspect CKPT [--digest] [options]\n"
            "\n"
            "Print the layout, step, data-reader position, every tensor with its shape, type, size and\n"
            "number of pieces per kind, and the bytes of each kind.\n"
            "\n"
            "Options:\n"
            "      --digest            instead, one line per tensor and kind: the XXH3-64 of the full\n"
            "                          tensor read row-major (independent of the layout), the kind and the\n"
            "                          name; two checkpoints hold the same state iff these lines agree\n"
            "%s"
            "  -h, --help              this help\n",
            io_help);
}

static void usage_verify(FILE *f) {
    fprintf(f,
            "Usage: wan-reshard verify CKPT [options]\n"
            "\n"
            "Check that the pieces cover every tensor exactly once, lie inside their files, agree with\n"
            "the model of the checkpoint's config, and that every piece's checksum holds. Exit 1 naming\n"
            "the file and tensor of the first problem.\n"
            "\n"
            "Options:\n"
            "%s"
            "  -h, --help              this help\n",
            io_help);
}

static void usage_import(FILE *f) {
    fprintf(f,
            "Usage: wan-reshard import SRC --to DIR [options]\n"
            "\n"
            "Turn a Wan 2.1 text-to-video release into a checkpoint holding the model weights (wan-train\n"
            "starts the optimizer fresh from them: --init-from DIR). SRC is a directory with config.json\n"
            "and diffusion_pytorch_model.safetensors, or shards with\n"
            "diffusion_pytorch_model.safetensors.index.json; fp32, bf16 or fp16. The official layout\n"
            "(WanModel) and the diffusers layout (WanTransformer3DModel) are told apart by config.json's\n"
            "_class_name or its keys. The model comes from config.json; fields it lacks take Wan 2.1's\n"
            "values (patch_size [1,2,2], text_dim 4096, text_len 512) unless --set model.KEY=V gives them.\n"
            "Unknown or missing keys and wrong shapes are errors that name them.\n"
            "\n"
            "Options:\n"
            "  -t, --to DIR            new checkpoint directory\n"
            "      --format F          auto (default), wan or diffusers\n"
            "  -l, --layout L          layout of the checkpoint (default tp=1)\n"
            "  -c, --config FILE       run settings to record in the checkpoint (default: the embedded\n"
            "                          defaults); its model is replaced by the release's\n"
            "  -s, --set K=V           override a key (repeatable); model.* keys only fill what config.json\n"
            "                          lacks\n"
            "      --dtype T           f32, bf16 or keep (default: as in the files)\n"
            "      --force             replace DIR if it exists\n"
            "%s"
            "  -h, --help              this help\n",
            io_help);
}

static void usage_export(FILE *f) {
    fprintf(f,
            "Usage: wan-reshard export CKPT --to DIR [options]\n"
            "\n"
            "Write the model weights of a checkpoint (any layout) as a Wan 2.1 release: config.json and\n"
            "diffusion_pytorch_model.safetensors, or shards and their index JSON above --max-shard-size.\n"
            "The files are written to DIR.tmp.<pid>, read back and verified, then renamed.\n"
            "\n"
            "Options:\n"
            "  -t, --to DIR            output directory\n"
            "      --format F          wan (default: official keys, WanModel config) or diffusers\n"
            "      --dtype T           f32, bf16 or keep (default: as stored)\n"
            "      --weights W         model (default: the training weights) or master (fp32 master weights)\n"
            "      --max-shard-size SZ bytes per file (default 10G)\n"
            "      --force             replace DIR if it exists\n"
            "%s"
            "  -h, --help              this help\n",
            io_help);
}

/* Options shared by every command. */
typedef struct {
    wan_rs_params io;
} common;

static int parse_common(int c, const char *arg, common *o) {
    switch (c) {
    case 'j': {
        char *end;
        long v = strtol(arg, &end, 10);
        if (*end || v < 1 || v > 256) return wan_cli_usage_error(prog, "--threads %s: expected 1..256", arg);
        o->io.threads = (int)v;
        return 0;
    }
    case 'm':
        if (wan_rs_parse_size(arg, &o->io.memory_budget)) {
            wan_cli_usage_error(prog, "--memory-budget: %s", wan_errmsg());
            return WAN_ERR_USAGE;
        }
        return 0;
    case 'q': o->io.quiet = true; return 0;
    }
    return -1;
}

#define COMMON_OPTS                                                                                                    \
    {"threads", required_argument, 0, 'j'}, {"memory-budget", required_argument, 0, 'm'},                             \
        {"quiet", no_argument, 0, 'q'}, {"help", no_argument, 0, 'h'}

static void print_stats(const char *what, const char *dst, const wan_rs_stats *st) {
    char w[32], r[32], buf[32];
    wan_rs_format_size(st->bytes_written, w, sizeof w);
    wan_rs_format_size(st->bytes_read + st->bytes_reread, r, sizeof r);
    wan_rs_format_size(st->buffer_bytes, buf, sizeof buf);
    double copy = st->seconds_copy > 0 ? st->seconds_copy : 1e-9;
    wan_info("%s %s: %s written (%s read) in %.2f s, %.2f GB/s; verified %.2f s; %.2f s in all; buffers %s", what, dst,
             w, r, st->seconds_copy, (double)st->bytes_written / copy / 1e9, st->seconds_verify, st->seconds_total, buf);
}

/* Parse --dtype for import/export: -1 = keep. */
static int parse_dtype(const char *arg, int *out) {
    if (!strcmp(arg, "keep")) *out = -1;
    else if (!strcmp(arg, "f32") || !strcmp(arg, "fp32")) *out = WAN_F32;
    else if (!strcmp(arg, "bf16")) *out = WAN_BF16;
    else return wan_cli_usage_error(prog, "--dtype %s: expected f32, bf16 or keep", arg);
    return 0;
}

static int parse_format(const char *arg, wan_weights_format *out, bool allow_auto) {
    if (!strcmp(arg, "wan") || !strcmp(arg, "official")) *out = WAN_FORMAT_WAN;
    else if (!strcmp(arg, "diffusers")) *out = WAN_FORMAT_DIFFUSERS;
    else if (allow_auto && !strcmp(arg, "auto")) *out = WAN_FORMAT_AUTO;
    else return wan_cli_usage_error(prog, "--format %s: expected %swan or diffusers", arg, allow_auto ? "auto, " : "");
    return 0;
}

/* ---------------------------------------------------------------- convert */

static int cmd_convert(int argc, char **argv, common *co) {
    static const struct option opts[] = {{"from", required_argument, 0, 'f'},   {"to", required_argument, 0, 't'},
                                         {"layout", required_argument, 0, 'l'}, {"config", required_argument, 0, 'c'},
                                         {"set", required_argument, 0, 's'},    {"world", required_argument, 0, 'w'},
                                         {"link-latest", no_argument, 0, 1},    {"force", no_argument, 0, 2},
                                         COMMON_OPTS,                           {0, 0, 0, 0}};
    const char *from = NULL, *to = NULL, *layout = NULL;
    wan_cli_config cc = {0};
    wan_reshard_opts o;
    memset(&o, 0, sizeof o);
    int world = 0, c;
    while ((c = getopt_long(argc, argv, "f:t:l:c:s:w:j:m:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'f': from = optarg; break;
        case 't': to = optarg; break;
        case 'l': layout = optarg; break;
        case 'c': cc.path = optarg; break;
        case 's':
            if (wan_cli_add_set(&cc, prog, optarg)) return WAN_ERR_USAGE;
            break;
        case 'w': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 1 << 20) return wan_cli_usage_error(prog, "--world %s: expected a positive integer", optarg);
            world = (int)v;
            break;
        }
        case 1: o.link_latest = true; break;
        case 2: o.force = true; break;
        case 'h': usage_convert(stdout); return 0;
        default: {
            int rc = parse_common(c, optarg, co);
            if (rc < 0) {
                usage_convert(stderr);
                return WAN_ERR_USAGE;
            }
            if (rc) return rc;
        }
        }
    }
    if (optind < argc) return wan_cli_usage_error(prog, "convert: unexpected argument '%s'", argv[optind]);
    if (!from || !to) return wan_cli_usage_error(prog, "convert needs --from CKPT and --to DIR");
    if (!layout == !cc.path) return wan_cli_usage_error(prog, "convert needs exactly one of --layout and --config");
    if (cc.nsets && !cc.path) return wan_cli_usage_error(prog, "--set applies to --config");
    if (world && !cc.path) return wan_cli_usage_error(prog, "--world goes with --config (--layout gives dp)");
    char *text = NULL;
    if (layout) {
        if (wan_layout_parse(layout, &o.layout)) return wan_cli_fail(prog, WAN_ERR_USAGE);
    } else {
        wan_config cfg;
        wan_config_defaults(&cfg);
        int rc = cc.path ? wan_config_load(&cfg, cc.path) : 0;
        for (int i = 0; i < cc.nsets && !rc; i++) rc = wan_config_set(&cfg, cc.sets[i]);
        if (rc) return wan_cli_fail(prog, WAN_ERR_USAGE);
        if (!world) world = cfg.slurm.nodes * cfg.slurm.gpus_per_node;
        if (wan_config_validate(&cfg, world)) return wan_cli_fail(prog, WAN_ERR_USAGE);
        int mp = cfg.parallel.tp * cfg.parallel.cp * cfg.parallel.pp;
        o.layout = (wan_ckpt_layout){cfg.parallel.tp, cfg.parallel.cp, world / mp, cfg.parallel.pp, world,
                                     cfg.parallel.sp && cfg.parallel.tp > 1};
        text = wan_config_to_string(&cfg);
        o.config_text = text;
    }
    o.io = co->io;
    o.io.what = "resharding";
    wan_rs_stats st;
    memset(&st, 0, sizeof st);
    int rc = wan_reshard_convert(from, to, &o, &st);
    free(text);
    if (rc) return wan_cli_fail(prog, rc);
    if (!co->io.quiet) print_stats("converted", to, &st);
    return 0;
}

/* ---------------------------------------------------------------- inspect */

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t n) {
    size_t len = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && len < n; d++)
        len += (size_t)snprintf(buf + len, n - len, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (len < n) snprintf(buf + len, n - len, "]");
}

static int cmp_digest_line(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmd_inspect(int argc, char **argv, common *co) {
    static const struct option opts[] = {{"digest", no_argument, 0, 1}, COMMON_OPTS, {0, 0, 0, 0}};
    bool digest = false;
    int c;
    while ((c = getopt_long(argc, argv, "j:m:qh", opts, NULL)) != -1) {
        if (c == 1) digest = true;
        else if (c == 'h') {
            usage_inspect(stdout);
            return 0;
        } else {
            int rc = parse_common(c, optarg, co);
            if (rc < 0) {
                usage_inspect(stderr);
                return WAN_ERR_USAGE;
            }
            if (rc) return rc;
        }
    }
    if (optind + 1 != argc) return wan_cli_usage_error(prog, "inspect needs exactly one checkpoint");
    wan_ckpt ck;
    if (wan_ckpt_open(&ck, argv[optind])) return wan_cli_fail(prog, WAN_ERR_RUNTIME);
    int rc = 0;
    if (digest) {
        uint64_t *h = calloc((size_t)(ck.nt > 0 ? ck.nt : 1), sizeof *h);
        char **lines = calloc((size_t)(ck.nt > 0 ? ck.nt : 1), sizeof *lines);
        wan_rs_params io = co->io;
        io.what = "digesting";
        rc = h && lines ? wan_rs_digests(&ck, &io, h) : wan_fail(WAN_ERR_RUNTIME, "out of memory");
        for (int i = 0; i < ck.nt && !rc; i++) {
            lines[i] = malloc(160);
            snprintf(lines[i], 160, "%016llx %-6s %s", (unsigned long long)h[i], wan_ckpt_kind_names[ck.t[i].kind],
                     ck.t[i].name);
        }
        if (!rc) {
            qsort(lines, (size_t)ck.nt, sizeof *lines, cmp_digest_line);
            for (int i = 0; i < ck.nt; i++) printf("%s\n", lines[i]);
        }
        for (int i = 0; lines && i < ck.nt; i++) free(lines[i]);
        free(lines);
        free(h);
    } else {
        char lay[64];
        wan_layout_format(&ck.layout, lay, sizeof lay);
        const wan_model_cfg *m = &ck.cfg.model;
        printf("checkpoint %s\n", ck.dir);
        printf("  step %d, optimizer step %d\n", ck.step, ck.optimizer_step);
        printf("  layout %s (%d ranks), %d data files\n", lay, ck.layout.world, ck.nfiles);
        printf("  data reader: seed %llu, epoch %llu, position %llu\n", (unsigned long long)ck.data.seed,
               (unsigned long long)ck.data.epoch, (unsigned long long)ck.data.position);
        printf("  model: dim %d, ffn_dim %d, heads %d, layers %d, in/out %d/%d, text %d x %d, patch [%d, %d, %d]\n",
               m->dim, m->ffn_dim, m->num_heads, m->num_layers, m->in_dim, m->out_dim, m->text_len, m->text_dim,
               m->patch_size[0], m->patch_size[1], m->patch_size[2]);
        uint64_t bytes[WAN_CKPT_KINDS] = {0}, total = 0;
        int pieces[WAN_CKPT_KINDS] = {0}, tensors[WAN_CKPT_KINDS] = {0};
        for (int i = 0; i < ck.nt; i++) {
            uint64_t b = (uint64_t)wan_numel(ck.t[i].ndim, ck.t[i].shape) * wan_dtype_size(ck.t[i].dtype);
            bytes[ck.t[i].kind] += b;
            pieces[ck.t[i].kind] += ck.t[i].npieces;
            tensors[ck.t[i].kind]++;
            total += b;
        }
        printf("  bytes by kind:\n");
        for (int k = 0; k < WAN_CKPT_KINDS; k++) {
            if (!tensors[k]) continue;
            char sz[32];
            wan_rs_format_size(bytes[k], sz, sizeof sz);
            printf("    %-7s %12s  %llu bytes, %d tensors, %d pieces\n", wan_ckpt_kind_names[k], sz,
                   (unsigned long long)bytes[k], tensors[k], pieces[k]);
        }
        char sz[32];
        wan_rs_format_size(total, sz, sizeof sz);
        printf("    %-7s %12s  %llu bytes\n", "total", sz, (unsigned long long)total);
        printf("tensors (pieces: model/master/adam_m/adam_v):\n");
        for (int i = 0; i < ck.nt; i++) {
            if (ck.t[i].kind != 0) continue;
            int np[WAN_CKPT_KINDS] = {0};
            for (int k = 0; k < WAN_CKPT_KINDS; k++) {
                const wan_ckpt_tensor *t = wan_ckpt_find(&ck, ck.t[i].name, k);
                np[k] = t ? t->npieces : 0;
            }
            char shape[96];
            shape_text(ck.t[i].ndim, ck.t[i].shape, shape, sizeof shape);
            uint64_t b = (uint64_t)wan_numel(ck.t[i].ndim, ck.t[i].shape) * wan_dtype_size(ck.t[i].dtype);
            wan_rs_format_size(b, sz, sizeof sz);
            printf("  %-40s %-22s %-4s %11s  %d/%d/%d/%d\n", ck.t[i].name, shape, wan_dtype_name(ck.t[i].dtype), sz,
                   np[0], np[1], np[2], np[3]);
        }
    }
    wan_ckpt_close(&ck);
    return rc ? wan_cli_fail(prog, rc) : 0;
}

/* ---------------------------------------------------------------- verify */

static int cmd_verify(int argc, char **argv, common *co) {
    static const struct option opts[] = {COMMON_OPTS, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "j:m:qh", opts, NULL)) != -1) {
        if (c == 'h') {
            usage_verify(stdout);
            return 0;
        }
        int rc = parse_common(c, optarg, co);
        if (rc < 0) {
            usage_verify(stderr);
            return WAN_ERR_USAGE;
        }
        if (rc) return rc;
    }
    if (optind + 1 != argc) return wan_cli_usage_error(prog, "verify needs exactly one checkpoint");
    wan_ckpt ck;
    if (wan_ckpt_open(&ck, argv[optind])) return wan_cli_fail(prog, WAN_ERR_RUNTIME);
    unsigned kinds = 0;
    int rc = wan_rs_check_tensors(&ck, &ck.cfg.model, &kinds);
    wan_rs_stats st;
    memset(&st, 0, sizeof st);
    wan_rs_params io = co->io;
    io.what = "verifying";
    if (!rc) rc = wan_rs_verify_ckpt(&ck, &io, &st);
    if (!rc) {
        int pieces = 0;
        for (int i = 0; i < ck.nt; i++) pieces += ck.t[i].npieces;
        char sz[32];
        wan_rs_format_size(st.bytes_verified, sz, sizeof sz);
        printf("ok %s: step %d, %d tensors (%s), %d pieces, %s verified in %.2f s\n", ck.dir, ck.step, ck.nt,
               kinds == WAN_KINDS_MODEL ? "model weights only" : "weights and optimizer state", pieces, sz,
               st.seconds_verify);
    }
    wan_ckpt_close(&ck);
    return rc ? wan_cli_fail(prog, rc) : 0;
}

/* ---------------------------------------------------------------- import / export */

static int cmd_import(int argc, char **argv, common *co) {
    static const struct option opts[] = {{"to", required_argument, 0, 't'},     {"format", required_argument, 0, 1},
                                         {"layout", required_argument, 0, 'l'}, {"config", required_argument, 0, 'c'},
                                         {"set", required_argument, 0, 's'},    {"dtype", required_argument, 0, 2},
                                         {"force", no_argument, 0, 3},          COMMON_OPTS,
                                         {0, 0, 0, 0}};
    const char *to = NULL, *layout = "tp=1";
    wan_cli_config cc = {0};
    const char *model_sets[64];
    wan_import_opts o;
    memset(&o, 0, sizeof o);
    o.dtype = -1;
    int c;
    while ((c = getopt_long(argc, argv, "t:l:c:s:j:m:qh", opts, NULL)) != -1) {
        switch (c) {
        case 't': to = optarg; break;
        case 1:
            if (parse_format(optarg, &o.format, true)) return WAN_ERR_USAGE;
            break;
        case 'l': layout = optarg; break;
        case 'c': cc.path = optarg; break;
        case 's':
            if (!strncmp(optarg, "model.", 6)) {
                if (o.nmodel_sets == 64) return wan_cli_usage_error(prog, "too many --set options");
                model_sets[o.nmodel_sets++] = optarg;
            } else if (wan_cli_add_set(&cc, prog, optarg)) return WAN_ERR_USAGE;
            break;
        case 2:
            if (parse_dtype(optarg, &o.dtype)) return WAN_ERR_USAGE;
            break;
        case 3: o.force = true; break;
        case 'h': usage_import(stdout); return 0;
        default: {
            int rc = parse_common(c, optarg, co);
            if (rc < 0) {
                usage_import(stderr);
                return WAN_ERR_USAGE;
            }
            if (rc) return rc;
        }
        }
    }
    if (optind + 1 != argc || !to) return wan_cli_usage_error(prog, "import needs a release directory and --to DIR");
    if (wan_layout_parse(layout, &o.layout)) return wan_cli_fail(prog, WAN_ERR_USAGE);
    wan_config base;
    wan_config_defaults(&base);
    int rc = cc.path ? wan_config_load(&base, cc.path) : 0;
    for (int i = 0; i < cc.nsets && !rc; i++) rc = wan_config_set(&base, cc.sets[i]);
    if (rc) return wan_cli_fail(prog, WAN_ERR_USAGE);
    o.base = &base;
    o.model_sets = model_sets;
    o.io = co->io;
    o.io.what = "importing";
    wan_rs_stats st;
    memset(&st, 0, sizeof st);
    rc = wan_weights_import(argv[optind], to, &o, &st);
    if (rc) return wan_cli_fail(prog, rc);
    if (!co->io.quiet) print_stats("imported", to, &st);
    return 0;
}

static int cmd_export(int argc, char **argv, common *co) {
    static const struct option opts[] = {{"to", required_argument, 0, 't'},      {"format", required_argument, 0, 1},
                                         {"dtype", required_argument, 0, 2},     {"weights", required_argument, 0, 3},
                                         {"max-shard-size", required_argument, 0, 4}, {"force", no_argument, 0, 5},
                                         COMMON_OPTS,                            {0, 0, 0, 0}};
    const char *to = NULL;
    wan_export_opts o;
    memset(&o, 0, sizeof o);
    o.format = WAN_FORMAT_WAN;
    o.dtype = -1;
    o.max_shard = 10ull << 30;
    int c;
    while ((c = getopt_long(argc, argv, "t:j:m:qh", opts, NULL)) != -1) {
        switch (c) {
        case 't': to = optarg; break;
        case 1:
            if (parse_format(optarg, &o.format, false)) return WAN_ERR_USAGE;
            break;
        case 2:
            if (parse_dtype(optarg, &o.dtype)) return WAN_ERR_USAGE;
            break;
        case 3:
            if (!strcmp(optarg, "model")) o.kind = 0;
            else if (!strcmp(optarg, "master")) o.kind = 1;
            else return wan_cli_usage_error(prog, "--weights %s: expected model or master", optarg);
            break;
        case 4:
            if (wan_rs_parse_size(optarg, &o.max_shard))
                return wan_cli_usage_error(prog, "--max-shard-size: %s", wan_errmsg());
            break;
        case 5: o.force = true; break;
        case 'h': usage_export(stdout); return 0;
        default: {
            int rc = parse_common(c, optarg, co);
            if (rc < 0) {
                usage_export(stderr);
                return WAN_ERR_USAGE;
            }
            if (rc) return rc;
        }
        }
    }
    if (optind + 1 != argc || !to) return wan_cli_usage_error(prog, "export needs a checkpoint and --to DIR");
    o.io = co->io;
    wan_rs_stats st;
    memset(&st, 0, sizeof st);
    int rc = wan_weights_export(argv[optind], to, &o, &st);
    if (rc) return wan_cli_fail(prog, rc);
    if (!co->io.quiet) print_stats("exported", to, &st);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return WAN_ERR_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
        wan_cli_version(prog);
        return 0;
    }
    /* many ranks' files open at once: allow as many descriptors as the system lets us */
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    common co;
    memset(&co, 0, sizeof co);
    co.io.threads = 4;
    co.io.memory_budget = 1ull << 30;
    /* getopt on the command's own arguments */
    argc--, argv++;
    optind = 1;
    if (!strcmp(cmd, "convert")) return cmd_convert(argc, argv, &co);
    if (!strcmp(cmd, "inspect")) return cmd_inspect(argc, argv, &co);
    if (!strcmp(cmd, "verify")) return cmd_verify(argc, argv, &co);
    if (!strcmp(cmd, "import")) return cmd_import(argc, argv, &co);
    if (!strcmp(cmd, "export")) return cmd_export(argc, argv, &co);
    return wan_cli_usage_error(prog, "unknown command '%s' (convert, inspect, verify, import, export)", cmd);
}
