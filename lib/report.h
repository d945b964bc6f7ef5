/* wan-report's library: read a run's step log (<run_dir>/steps.jsonl, the format described in
 * steplog.h), keep the steps that measure steady-state throughput, and turn them into the rows
 * of NeMo DFM's performance table (markdown exactly as the reference page, CSV, JSON), with
 * MFU against the device's peak and, on request, the published reference rows beside them.
 *
 *   report_log.c        parse and validate one run's log (jansson), resume and exclusion rules
 *   report_stats.c      per-run statistics: tokens/s/GPU, model TFLOP/s/GPU, step times, MFU
 *   report_devices.c    device -> system name and peak dense BF16 rate; config -> model name
 *   report_reference.c  the published rows for --compare
 *   report_format.c     markdown, CSV and JSON
 *   report_plot.c       loss and throughput plots (svgplot.h), PNG through rsvg-convert */
#ifndef WAN_REPORT_H
#define WAN_REPORT_H

#include <stdbool.h>
#include <stdio.h>

#include "config.h"

/* Steps skipped at the start of the log and after every resume (allocator, autotuning, JIT and
 * data-pipeline warm-up make them slow). */
#define WAN_REPORT_DEFAULT_WARMUP 3

/* The parallel layout as the step log records it (the reference table's columns). */
typedef struct {
    int gbs, mbs, seq_len, fsdp, tp, sp, pp, cp, vp, ep, dp;
} wan_report_layout;

/* Why a step is or is not measured. */
typedef enum { WAN_STEP_USED, WAN_STEP_WARMUP, WAN_STEP_CKPT, WAN_STEP_EVAL } wan_step_use;

typedef struct {
    int step, line;      /* optimizer step (1-based); line of steps.jsonl it came from */
    double step_time;    /* wall seconds of the whole step */
    double loss;         /* NAN when the log has none */
    long long samples, tokens;
    int seq_len;
    wan_step_use use;
} wan_report_step;

typedef struct {
    int step;
    double loss; /* mean validation loss over the sigmas */
} wan_report_eval;

typedef struct {
    char dir[WAN_PATH_MAX];  /* the run as named on the command line */
    char log[WAN_PATH_MAX];  /* the steps.jsonl read */
    char device[128];
    int gpus;
    wan_report_layout layout;
    wan_model_cfg model;
    int segments;            /* header lines: 1 + the number of resumes */
    wan_report_step *steps;  /* one per step number, ascending, the last occurrence of each */
    int nsteps;
    wan_report_eval *evals;  /* ascending by step */
    int nevals;
} wan_report_run;

/* Read run_dir/steps.jsonl (or run_dir itself when it is a file). Steps re-run after a resume
 * replace the earlier lines (a header's resumed_from, or a step number seen again, drops every
 * earlier step from that point on); the first `warmup` steps after the start and after each
 * resume, and steps that saved a checkpoint or ran an evaluation, are marked as not measured.
 * A missing, empty or truncated log, a line that is not the expected JSON, or steps with
 * different configurations (device, GPUs, layout, model) fail with WAN_ERR_RUNTIME and a
 * message naming the file, the line and the field. */
int wan_report_load_run(const char *run_dir, int warmup, wan_report_run *run);
void wan_report_run_free(wan_report_run *run);

/* Options that change the numbers or the grouping. */
typedef struct {
    double peak_tflops;   /* > 0: peak dense BF16 TFLOP/s per GPU, overriding the device table */
    const char *system;   /* non-NULL: system name for every run, overriding the device's */
} wan_report_opts;

typedef struct {
    char model_name[96];  /* "Wan 2.1 14B", ... */
    char system[128];     /* "DGX-H100", ..., "CPU" */
    int steps_total, steps_used, skipped_warmup, skipped_ckpt, skipped_eval;
    double tokens_per_sec_per_gpu;  /* measured tokens / measured seconds / GPUs */
    double tflops_per_gpu;          /* model TFLOP/s per GPU by the formula (flops.h) */
    double flops_per_token;         /* the formula's training FLOPs per token at layout.seq_len */
    double seed_tflops_per_gpu;     /* at the reference table's implied FLOPs/token; NAN unless
                                       the run is Wan 2.1 14B at 37440 tokens */
    double step_time_median, step_time_p10, step_time_p90, step_time_min, step_time_max;
    double step_time_spread;        /* (p90 - p10) / median */
    double peak_tflops;             /* 0 when unknown */
    const char *peak_source;        /* where the peak comes from ("--peak" or a device entry) */
    double mfu;                     /* tflops_per_gpu / peak_tflops; NAN when the peak is unknown */
} wan_report_stats;

/* Statistics over the measured steps; WAN_ERR_RUNTIME when none is left after warm-up and the
 * checkpoint/evaluation exclusions (the message says how many of each were skipped). */
int wan_report_compute(const wan_report_run *run, const wan_report_opts *opts, wan_report_stats *st);

/* Linear-interpolation percentile (q in [0,1]) of n values; sorts v in place. */
double wan_report_percentile(double *v, int n, double q);

/* ---- devices and names (report_devices.c) ---- */

typedef struct {
    const char *match;    /* case-insensitive substring of the device name */
    const char *system;   /* system name for the report's grouping */
    double peak_tflops;   /* dense BF16 tensor-core TFLOP/s per GPU; 0 = not known */
    const char *source;
} wan_report_device;

/* The table entry for a device name (NULL when unknown). */
const wan_report_device *wan_report_device_lookup(const char *device);
/* System name: the table's ("NVIDIA H100 80GB HBM3" -> "DGX-H100"), "CPU" for CPU runs, or the
 * device name itself when unknown. */
void wan_report_system_name(const char *device, char *buf, size_t n);
/* "Wan 2.1 14B" (dim 5120, 40 layers), "Wan 2.1 1.3B" (dim 1536, 30 layers), otherwise
 * "Wan DiT (dim D, L layers)". */
void wan_report_model_name(const wan_model_cfg *m, char *buf, size_t n);

/* ---- published reference rows (report_reference.c) ---- */

typedef struct {
    const char *system, *model, *source;
    int gpus, gbs, mbs, seq_len, fsdp, tp, sp, pp, cp, vp, ep; /* -1: not published */
    double tokens_per_sec_per_gpu;  /* 0: not published */
    double tflops_per_gpu;
} wan_report_reference;

/* The rows published for system and model at seq_len, up to max; returns how many. */
int wan_report_references(const char *system, const char *model, int seq_len,
                          const wan_report_reference **out, int max);
/* All rows (for listing). */
const wan_report_reference *wan_report_reference_table(int *n);

/* Our run against a reference row, like with like: the ratio of tokens/s/GPU (for rows that
 * publish only TFLOP/s, their tokens/s at the table's implied FLOPs/token), and the ratio of
 * model TFLOP/s/GPU as each side reports it (ours by the formula). */
void wan_report_ratios(const wan_report_stats *st, const wan_report_reference *ref, double *tokens_ratio,
                       double *tflops_ratio);

/* ---- output (report_format.c) ---- */

typedef enum { WAN_REPORT_MD, WAN_REPORT_CSV, WAN_REPORT_JSON } wan_report_format;

typedef struct {
    const wan_report_run *runs;
    const wan_report_stats *stats;
    int nruns;
    int warmup;
    bool compare;
} wan_report_doc;

/* The reference table's two header lines, exactly as the DFM page writes them. */
extern const char wan_report_md_header[];
extern const char wan_report_md_rule[];

/* Write the report into a malloc'd string (*out). */
int wan_report_render(const wan_report_doc *doc, wan_report_format fmt, char **out);

/* 1234.5 -> "1,234.50" (the reference table's TFLOP/s style) */
void wan_report_fmt_grouped(double v, char *buf, size_t n);

/* ---- plots (report_plot.c) ---- */

/* Write dir/loss.svg (training loss per run, validation loss where the log has it) and
 * dir/throughput.svg (tokens/s/GPU of the measured steps per run); also .png next to them when
 * rsvg-convert is installed. *png_written tells whether it was. */
int wan_report_write_plots(const wan_report_run *runs, int nruns, const char *dir, bool *png_written);

#endif
