/* wan-preprocess: turn pre-encoded latents and text embeddings into a checksummed, sharded,
 * randomly readable dataset (and merge, verify, inspect such datasets; write synthetic inputs). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "dataset_build.h"
#include "error.h"
#include "log.h"

static const char *prog = "wan-preprocess";

static void usage(FILE *f) {
    fprintf(f,
            "Usage: wan-preprocess [convert] INPUT -o DIR [options]\n"
            "       wan-preprocess merge DIR [--force]\n"
            "       wan-preprocess verify DIR [--threads N]\n"
            "       wan-preprocess stats DIR\n"
            "       wan-preprocess synth -o DIR [--count N] [--shape FxHxW]... [options]\n"
            "       wan-preprocess export DIR --sample I -o FILE.safetensors\n"
            "\n"
            "convert (the default): INPUT is a JSON-lines manifest, one sample per line\n"
            "  {\"id\": ..., \"latent\": path, \"text\": path, \"caption\": ..., other metadata}\n"
            "(\"path\" names one file holding both; paths are relative to the manifest), or a\n"
            "directory of NAME.safetensors, NAME.latent.npy + NAME.text.npy, or subdirectories with a\n"
            "*.safetensors.index.json (NAME.txt: caption). Latents are [16, F, H, W], text [L, 4096],\n"
            "in F32, BF16 or F16. Writes DIR/shard-NNNNNN.wls and, last, DIR/index.jsonl.\n"
            "  -o, --output DIR       dataset directory\n"
            "      --latent-name S    tensor name of the latent in safetensors inputs (latent)\n"
            "      --text-name S      tensor name of the text embedding (text)\n"
            "      --channels N       latent channels expected (16)\n"
            "      --text-dim N       text embedding width expected (4096)\n"
            "      --text-len N       most text rows allowed (512)\n"
            "      --keep-dtype       store inputs in their own dtype (default: BF16, fp32 rounded to\n"
            "                         nearest even)\n"
            "      --level N          zstd level (3)\n"
            "      --shard-size SIZE  target shard size, e.g. 512M, 2G (1G)\n"
            "  -j, --threads N        worker threads (default: all cores); output is identical for any N\n"
            "      --part I/N         convert slice I (0-based) of N of the inputs into\n"
            "                         DIR/part-IIII-of-NNNN; 'slurm' takes I and N from the job array\n"
            "      --skip-bad         skip bad inputs (listed in the report) instead of failing\n"
            "      --report FILE      report of skipped inputs (DIR/skipped.jsonl)\n"
            "      --force            replace a different dataset already in DIR\n"
            "A re-run after an interruption keeps the complete, verified shards and redoes the rest.\n"
            "\n"
            "merge DIR: join DIR/part-*-of-N into DIR/index.jsonl (no shard data is copied).\n"
            "verify DIR: check every checksum, the index against the shards, and that samples decode.\n"
            "stats DIR: counts, latent shapes (buckets), text tokens, bytes, compression ratio.\n"
            "synth: write synthetic inputs (safetensors per sample + manifest.jsonl):\n"
            "      --count N          samples (16)\n"
            "      --shape FxHxW      latent frames x height x width (21x60x104); repeat for several\n"
            "                         buckets (samples cycle through them)\n"
            "      --channels N, --text-len N (512), --text-dim N (4096), --seed N (1234)\n"
            "      --dtype f32|bf16|f16  (f32)   --npy: .npy files   --trim-text: real rows only\n"
            "export DIR --sample I -o FILE: decode one sample to safetensors (F32), for inspection.\n"
            "\n"
            "  -h, --help             this help\n"
            "  -V, --version          version and build\n"
            "Exit codes: 0 done, 1 runtime failure (bad input, corrupt data, I/O), 2 usage error.\n");
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return wan_cli_usage_error(prog, "%s %s: expected an integer in [%ld, %ld]", opt, s, lo, hi);
    *out = v;
    return 0;
}

static int parse_size(const char *s, uint64_t *out) {
    char *end;
    double v = strtod(s, &end);
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
    else if (*end == 'T' || *end == 't') mul = 1024.0 * 1024 * 1024 * 1024, end++;
    if (*end == 'i' || *end == 'B') end++;
    if (*end == 'B') end++;
    if (end == s || *end || v <= 0)
        return wan_cli_usage_error(prog, "--shard-size %s: expected a size such as 512M or 2G", s);
    *out = (uint64_t)(v * mul);
    return 0;
}

static int parse_part(const char *s, int *part, int *nparts) {
    if (!strcmp(s, "slurm")) {
        const char *id = getenv("SLURM_ARRAY_TASK_ID"), *cnt = getenv("SLURM_ARRAY_TASK_COUNT"),
                   *mn = getenv("SLURM_ARRAY_TASK_MIN");
        if (!id || !cnt)
            return wan_cli_usage_error(prog, "--part slurm: not in a Slurm job array (SLURM_ARRAY_TASK_ID unset)");
        *part = atoi(id) - (mn ? atoi(mn) : 0);
        *nparts = atoi(cnt);
    } else {
        char extra;
        if (sscanf(s, "%d/%d%c", part, nparts, &extra) != 2)
            return wan_cli_usage_error(prog, "--part %s: expected I/N (0 <= I < N) or 'slurm'", s);
    }
    if (*nparts < 1 || *nparts > 9999 || *part < 0 || *part >= *nparts)
        return wan_cli_usage_error(prog, "--part %s: expected 0 <= I < N <= 9999 (got %d/%d)", s, *part, *nparts);
    return 0;
}

static int parse_shape(const char *s, int out[3]) {
    char extra;
    if (sscanf(s, "%dx%dx%d%c", &out[0], &out[1], &out[2], &extra) != 3 || out[0] < 1 || out[1] < 1 || out[2] < 1)
        return wan_cli_usage_error(prog, "--shape %s: expected FxHxW, e.g. 21x60x104", s);
    return 0;
}

enum {
    O_LATENT_NAME = 256, O_TEXT_NAME, O_CHANNELS, O_TEXT_DIM, O_TEXT_LEN, O_KEEP, O_LEVEL, O_SHARD, O_PART, O_SKIP,
    O_REPORT, O_FORCE, O_COUNT, O_SHAPE, O_SEED, O_DTYPE, O_NPY, O_TRIM, O_SAMPLE,
};

static const struct option long_opts[] = {
    {"output", required_argument, 0, 'o'},     {"latent-name", required_argument, 0, O_LATENT_NAME},
    {"text-name", required_argument, 0, O_TEXT_NAME}, {"channels", required_argument, 0, O_CHANNELS},
    {"text-dim", required_argument, 0, O_TEXT_DIM},   {"text-len", required_argument, 0, O_TEXT_LEN},
    {"keep-dtype", no_argument, 0, O_KEEP},           {"level", required_argument, 0, O_LEVEL},
    {"shard-size", required_argument, 0, O_SHARD},    {"threads", required_argument, 0, 'j'},
    {"part", required_argument, 0, O_PART},           {"skip-bad", no_argument, 0, O_SKIP},
    {"report", required_argument, 0, O_REPORT},       {"force", no_argument, 0, O_FORCE},
    {"count", required_argument, 0, O_COUNT},         {"shape", required_argument, 0, O_SHAPE},
    {"seed", required_argument, 0, O_SEED},           {"dtype", required_argument, 0, O_DTYPE},
    {"npy", no_argument, 0, O_NPY},                   {"trim-text", no_argument, 0, O_TRIM},
    {"sample", required_argument, 0, O_SAMPLE},       {"help", no_argument, 0, 'h'},
    {"version", no_argument, 0, 'V'},                 {0, 0, 0, 0}};

typedef enum { CMD_CONVERT, CMD_MERGE, CMD_VERIFY, CMD_STATS, CMD_SYNTH, CMD_EXPORT } command;

/* Which options each command takes (the rest are usage errors). */
static bool allowed(command cmd, int c) {
    switch (c) {
    case 'h': case 'V': return true;
    case 'j': return cmd == CMD_CONVERT || cmd == CMD_VERIFY || cmd == CMD_SYNTH;
    case 'o': return cmd == CMD_CONVERT || cmd == CMD_SYNTH || cmd == CMD_EXPORT;
    case O_FORCE: return cmd == CMD_CONVERT || cmd == CMD_MERGE;
    case O_CHANNELS: case O_TEXT_DIM: case O_TEXT_LEN: return cmd == CMD_CONVERT || cmd == CMD_SYNTH;
    case O_LATENT_NAME: case O_TEXT_NAME: case O_KEEP: case O_LEVEL: case O_SHARD: case O_PART: case O_SKIP:
    case O_REPORT: return cmd == CMD_CONVERT;
    case O_COUNT: case O_SHAPE: case O_SEED: case O_DTYPE: case O_NPY: case O_TRIM: return cmd == CMD_SYNTH;
    case O_SAMPLE: return cmd == CMD_EXPORT;
    }
    return false;
}

int main(int argc, char **argv) {
    static const char *names[] = {"convert", "merge", "verify", "stats", "synth", "export"};
    command cmd = CMD_CONVERT;
    int first = 1;
    if (argc > 1)
        for (int i = 0; i < 6; i++)
            if (!strcmp(argv[1], names[i])) cmd = (command)i, first = 2;
    wan_build_opts bo;
    wan_build_defaults(&bo);
    wan_synth_opts so;
    wan_synth_defaults(&so);
    bool shapes_given = false;
    long sample = -1, v;
    const char *out = NULL;
    int threads = 0, c;
    optind = first;
    while ((c = getopt_long(argc, argv, "o:j:hV", long_opts, NULL)) != -1) {
        if (c == '?') {
            usage(stderr);
            return WAN_ERR_USAGE;
        }
        if (!allowed(cmd, c)) return wan_cli_usage_error(prog, "%s does not take %s", names[cmd], argv[optind - 1]);
        switch (c) {
        case 'h': usage(stdout); return 0;
        case 'V': wan_cli_version(prog); return 0;
        case 'o': out = optarg; break;
        case 'j':
            if (parse_int("--threads", optarg, 1, 4096, &v)) return WAN_ERR_USAGE;
            threads = (int)v;
            break;
        case O_LATENT_NAME: bo.latent_name = optarg; break;
        case O_TEXT_NAME: bo.text_name = optarg; break;
        case O_CHANNELS:
            if (parse_int("--channels", optarg, 1, 4096, &v)) return WAN_ERR_USAGE;
            bo.channels = so.channels = (int)v;
            break;
        case O_TEXT_DIM:
            if (parse_int("--text-dim", optarg, 1, 1 << 20, &v)) return WAN_ERR_USAGE;
            bo.text_dim = so.text_dim = (int)v;
            break;
        case O_TEXT_LEN:
            if (parse_int("--text-len", optarg, 1, 1 << 20, &v)) return WAN_ERR_USAGE;
            bo.text_len_max = so.text_len = (int)v;
            break;
        case O_KEEP: bo.keep_dtype = true; break;
        case O_LEVEL:
            if (parse_int("--level", optarg, 1, 22, &v)) return WAN_ERR_USAGE;
            bo.level = (int)v;
            break;
        case O_SHARD:
            if (parse_size(optarg, &bo.shard_bytes)) return WAN_ERR_USAGE;
            break;
        case O_PART:
            if (parse_part(optarg, &bo.part, &bo.nparts)) return WAN_ERR_USAGE;
            break;
        case O_SKIP: bo.skip_bad = true; break;
        case O_REPORT: bo.report = optarg; break;
        case O_FORCE: bo.force = true; break;
        case O_COUNT:
            if (parse_int("--count", optarg, 1, 100000000, &v)) return WAN_ERR_USAGE;
            so.count = v;
            break;
        case O_SHAPE:
            if (!shapes_given) so.nshapes = 0;
            shapes_given = true;
            if (so.nshapes == 8) return wan_cli_usage_error(prog, "at most 8 --shape options");
            if (parse_shape(optarg, so.shapes[so.nshapes])) return WAN_ERR_USAGE;
            so.nshapes++;
            break;
        case O_SEED: {
            char *end;
            so.seed = strtoull(optarg, &end, 10);
            if (!*optarg || *end) return wan_cli_usage_error(prog, "--seed %s: expected a non-negative integer", optarg);
            break;
        }
        case O_DTYPE:
            if (!strcmp(optarg, "f32")) so.dtype = WAN_F32;
            else if (!strcmp(optarg, "bf16")) so.dtype = WAN_BF16;
            else if (!strcmp(optarg, "f16")) so.dtype = WAN_F16;
            else return wan_cli_usage_error(prog, "--dtype %s: expected f32, bf16 or f16", optarg);
            break;
        case O_NPY: so.npy = true; break;
        case O_TRIM: so.trim_text = true; break;
        case O_SAMPLE:
            if (parse_int("--sample", optarg, 0, 1L << 40, &sample)) return WAN_ERR_USAGE;
            break;
        }
    }
    const char *arg = optind < argc ? argv[optind] : NULL;
    if (optind + 1 < argc) return wan_cli_usage_error(prog, "unexpected argument '%s'", argv[optind + 1]);
    if (cmd != CMD_SYNTH && !arg)
        return wan_cli_usage_error(prog, "%s needs %s", names[cmd], cmd == CMD_CONVERT ? "an INPUT manifest or directory" : "a dataset DIR");
    if (cmd == CMD_SYNTH && arg) return wan_cli_usage_error(prog, "synth takes no argument (use -o DIR)");
    if ((cmd == CMD_CONVERT || cmd == CMD_SYNTH || cmd == CMD_EXPORT) && !out)
        return wan_cli_usage_error(prog, "%s needs -o %s", names[cmd], cmd == CMD_EXPORT ? "FILE" : "DIR");
    if (cmd == CMD_EXPORT && sample < 0) return wan_cli_usage_error(prog, "export needs --sample I");
    int rc = 0;
    switch (cmd) {
    case CMD_CONVERT:
        bo.input = arg;
        bo.out_dir = out;
        bo.threads = threads;
        rc = wan_build_convert(&bo);
        break;
    case CMD_MERGE: rc = wan_build_merge(arg, bo.force); break;
    case CMD_VERIFY: rc = wan_build_verify(arg, threads); break;
    case CMD_STATS: rc = wan_build_stats(arg, stdout); break;
    case CMD_SYNTH:
        so.out_dir = out;
        so.threads = threads;
        rc = wan_build_synth(&so);
        break;
    case CMD_EXPORT: rc = wan_build_export(arg, sample, out); break;
    }
    return rc ? wan_cli_fail(prog, rc) : 0;
}
