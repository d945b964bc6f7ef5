/* wan-report: throughput of training runs as NeMo DFM's performance table (markdown, CSV or
 * JSON), with MFU, step-time spread, the published reference rows (--compare) and plots. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "report.h"

static const char *prog = "wan-report";

static void usage(FILE *f) {
    fprintf(f,
            "Usage: wan-report [options] RUN_DIR...\n"
            "\n"
            "Throughput of wan-train runs in the format of NeMo DFM's performance table: tokens/s/GPU,\n"
            "model TFLOP/s/GPU (Megatron-Bridge's Wan formula), step time (median, p10-p90) and MFU\n"
            "against the device's peak dense BF16 rate, grouped by system. RUN_DIR is a train.run_dir\n"
            "holding steps.jsonl (or the steps.jsonl itself).\n"
            "\n"
            "Measured steps: all but the first N after the start and after each resume (--warmup) and\n"
            "those that saved a checkpoint or ran an evaluation. A step re-run after a resume replaces\n"
            "the earlier one. A run whose log is missing, truncated or mixes configurations, or that has\n"
            "no step left to measure, is an error: no table is printed.\n"
            "\n"
            "Options:\n"
            "  -f, --format FMT     md (default: the reference table's markdown), csv or json\n"
            "  -c, --compare        add the published reference rows for the same system and model\n"
            "                       (NeMo DFM's Wan 2.1 14B rows) and the ratio of each run to them\n"
            "  -w, --warmup N       steps skipped after the start and each resume (default %d)\n"
            "  -p, --peak TFLOPS    peak dense BF16 TFLOP/s per GPU for MFU (default: from the device:\n"
            "                       H100 SXM / H200 989.4, B200 2250, GB200 / GB300 2500, ...)\n"
            "      --system NAME    group every run under this system name (default: from the device,\n"
            "                       e.g. \"NVIDIA H100 80GB HBM3\" -> DGX-H100; CPU runs -> CPU)\n"
            "      --plot DIR       write DIR/loss.svg and DIR/throughput.svg (and .png when\n"
            "                       rsvg-convert is installed)\n"
            "  -o, --output FILE    write the report to FILE (atomically) instead of stdout\n"
            "  -h, --help           this help\n"
            "  -V, --version        version and build\n"
            "\n"
            "Exit codes: 0 done, 1 a run could not be reported, 2 usage error.\n",
            WAN_REPORT_DEFAULT_WARMUP);
}

typedef struct {
    wan_report_format format;
    bool compare;
    int warmup;
    wan_report_opts opts;
    const char *plot_dir, *output;
} options;

static int parse_args(int argc, char **argv, options *o, bool *done) {
    static const struct option longopts[] = {
        {"format", required_argument, 0, 'f'}, {"compare", no_argument, 0, 'c'},
        {"warmup", required_argument, 0, 'w'}, {"peak", required_argument, 0, 'p'},
        {"system", required_argument, 0, 1},   {"plot", required_argument, 0, 2},
        {"output", required_argument, 0, 'o'}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},      {0, 0, 0, 0}};
    *done = false;
    int c;
    while ((c = getopt_long(argc, argv, "f:cw:p:o:hV", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'f':
            if (!strcmp(optarg, "md") || !strcmp(optarg, "markdown")) o->format = WAN_REPORT_MD;
            else if (!strcmp(optarg, "csv")) o->format = WAN_REPORT_CSV;
            else if (!strcmp(optarg, "json")) o->format = WAN_REPORT_JSON;
            else return wan_cli_usage_error(prog, "--format %s: expected md, csv or json", optarg);
            break;
        case 'c': o->compare = true; break;
        case 'w': {
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < 0 || v > 1000000)
                return wan_cli_usage_error(prog, "--warmup %s: expected a number of steps >= 0", optarg);
            o->warmup = (int)v;
            break;
        }
        case 'p': {
            double v = strtod(optarg, &end);
            if (end == optarg || *end || !(v > 0) || !isfinite(v))
                return wan_cli_usage_error(prog, "--peak %s: expected TFLOP/s per GPU > 0 (e.g. 989.4)", optarg);
            o->opts.peak_tflops = v;
            break;
        }
        case 1:
            if (!*optarg || strchr(optarg, '\n'))
                return wan_cli_usage_error(prog, "--system: expected a non-empty name on one line");
            o->opts.system = optarg;
            break;
        case 2: o->plot_dir = optarg; break;
        case 'o': o->output = optarg; break;
        case 'h': usage(stdout); *done = true; return 0;
        case 'V': wan_cli_version(prog); *done = true; return 0;
        default: usage(stderr); return WAN_ERR_USAGE;
        }
    }
    if (optind >= argc) return wan_cli_usage_error(prog, "no run directory given");
    return 0;
}

int main(int argc, char **argv) {
    options o = {.format = WAN_REPORT_MD, .warmup = WAN_REPORT_DEFAULT_WARMUP};
    bool done;
    int rc = parse_args(argc, argv, &o, &done);
    if (rc || done) return rc;

    int nruns = argc - optind;
    wan_report_run *runs = calloc((size_t)nruns, sizeof *runs);
    wan_report_stats *stats = calloc((size_t)nruns, sizeof *stats);
    if (!runs || !stats) {
        wan_fail(WAN_ERR_RUNTIME, "out of memory");
        return wan_cli_fail(prog, WAN_ERR_RUNTIME);
    }
    int loaded = 0;
    for (int i = 0; !rc && i < nruns; i++) {
        rc = wan_report_load_run(argv[optind + i], o.warmup, &runs[i]);
        if (rc) break;
        loaded++;
        rc = wan_report_compute(&runs[i], &o.opts, &stats[i]);
        if (rc) break;
        const wan_report_stats *s = &stats[i];
        wan_info("%s: %s on %d x %s: %d steps measured of %d (skipped %d warm-up, %d checkpoint, %d eval)",
                 runs[i].dir, s->model_name, runs[i].gpus, runs[i].device, s->steps_used, s->steps_total,
                 s->skipped_warmup, s->skipped_ckpt, s->skipped_eval);
        if (s->steps_used < 5)
            wan_warn("%s: only %d measured step%s: expect noisy numbers", runs[i].dir, s->steps_used,
                     s->steps_used == 1 ? "" : "s");
        if (isnan(s->mfu))
            wan_warn("%s: no peak rate known for \"%s\": MFU left out (give one with --peak)", runs[i].dir,
                     runs[i].device);
    }

    char *text = NULL;
    if (!rc && o.plot_dir) {
        bool png;
        rc = wan_report_write_plots(runs, nruns, o.plot_dir, &png);
    }
    if (!rc) {
        wan_report_doc doc = {runs, stats, nruns, o.warmup, o.compare};
        rc = wan_report_render(&doc, o.format, &text);
    }
    if (!rc) {
        if (o.output) {
            rc = wan_write_file_atomic(o.output, text, strlen(text));
            if (!rc) wan_info("wrote %s", o.output);
        } else if (fputs(text, stdout) == EOF || fflush(stdout)) {
            rc = wan_fail_errno(WAN_ERR_RUNTIME, "writing the report to stdout");
        }
    }
    free(text);
    for (int i = 0; i < loaded; i++) wan_report_run_free(&runs[i]);
    free(runs);
    free(stats);
    return rc ? wan_cli_fail(prog, rc) : 0;
}
