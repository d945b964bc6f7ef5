/* wan-report's library: reading step logs (resumes, warm-up, checkpoint and evaluation steps,
 * bad input), statistics, names, the reference table's markdown and the other formats. */
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "flops.h"
#include "fsutil.h"
#include "report.h"
#include "test.h"

static char tmp[256];

/* ---- synthetic logs in the steplog.h format ---- */

static const char *TINY_MODEL = "{\"dim\":64,\"ffn_dim\":128,\"num_heads\":2,\"num_layers\":2,\"text_len\":16,"
                                "\"text_dim\":32,\"freq_dim\":256,\"in_dim\":16,\"out_dim\":16,\"patch_size\":[1,2,2]}";

typedef struct {
    char *buf;
    size_t len;
    FILE *f;
} logbuf;

static void log_begin(logbuf *l) { l->f = open_memstream(&l->buf, &l->len); }

static void header(logbuf *l, int resumed_from) {
    fprintf(l->f,
            "{\"type\":\"header\",\"format\":1,\"program\":\"wan-train\",\"version\":\"0.1.0\",\"git\":\"abc\","
            "\"time\":\"2026-11-25T16:04:05Z\",\"world_size\":2,\"device\":\"CPU (1 threads)\",\"resumed_from\":%d,"
            "\"config\":{\"model\":%s}}\n",
            resumed_from, TINY_MODEL);
}

/* A step of the tiny model on 2 CPU ranks, gbs 4 x 48 tokens; tp and device vary for the mixing tests. */
static void step_full(logbuf *l, int n, double t, bool ckpt, bool eval, int tp, const char *device) {
    fprintf(l->f,
            "{\"type\":\"step\",\"step\":%d,\"time\":1764086645.0,\"step_time\":%.17g,\"loss\":%g,\"grad_norm\":1.2,"
            "\"lr\":0.001,\"samples\":4,\"tokens\":192,\"seq_len\":48,\"gpus\":2,\"device\":\"%s\","
            "\"layout\":{\"gbs\":4,\"mbs\":1,\"seq_len\":48,\"fsdp\":0,\"tp\":%d,\"sp\":0,\"pp\":1,\"cp\":1,\"vp\":0,"
            "\"ep\":0,\"dp\":2},\"model\":%s,\"ckpt\":%s,\"eval\":%s,\"mem_peak\":1,\"data_epoch\":0}\n",
            n, t, 1.0 / n, device, tp, TINY_MODEL, ckpt ? "true" : "false", eval ? "true" : "false");
}

static void step(logbuf *l, int n, double t) { step_full(l, n, t, false, false, 1, "CPU (1 threads)"); }

static void raw(logbuf *l, const char *text) { fputs(text, l->f); }

/* Write the log as <tmp>/<name>/steps.jsonl; returns the run directory. */
static const char *log_end(logbuf *l, const char *name) {
    static char dir[512];
    fclose(l->f);
    snprintf(dir, sizeof dir, "%s/%s", tmp, name);
    char path[600];
    snprintf(path, sizeof path, "%s/steps.jsonl", dir);
    wan_mkdir_p(dir);
    if (wan_write_file_atomic(path, l->buf, l->len)) fprintf(stderr, "cannot write %s\n", path);
    free(l->buf);
    return dir;
}

/* Load with the given warm-up; on failure the message must contain every `want`. */
static int load_expect_error(const char *dir, int warmup, int nwant, ...) {
    wan_report_run run;
    wan_error_clear();
    int rc = wan_report_load_run(dir, warmup, &run);
    if (!rc) {
        wan_report_stats st;
        rc = wan_report_compute(&run, NULL, &st);
        wan_report_run_free(&run);
    }
    CHECKF(rc == WAN_ERR_RUNTIME, "%s: rc %d", dir, rc);
    va_list ap;
    va_start(ap, nwant);
    for (int i = 0; i < nwant; i++) {
        const char *want = va_arg(ap, const char *);
        CHECKF(strstr(wan_errmsg(), want) != NULL, "message \"%s\" lacks \"%s\"", wan_errmsg(), want);
    }
    va_end(ap);
    return rc;
}

/* ---- tests ---- */

/* Warm-up steps, checkpoint steps and evaluation steps are not measured; the numbers come from
 * the rest only. */
static void test_exclusions(void) {
    logbuf l;
    log_begin(&l);
    header(&l, 0);
    const double times[] = {9.0, 7.0, 0.50, 0.25, 3.0, 0.75, 4.0, 0.5, 1.0, 0.5};
    for (int n = 1; n <= 10; n++) step_full(&l, n, times[n - 1], n == 5, n == 7, 1, "CPU (1 threads)");
    raw(&l, "{\"type\":\"eval\",\"step\":7,\"loss\":0.42,\"sigmas\":[0.5],\"loss_by_sigma\":[0.42],\"samples\":2}\n");
    const char *dir = log_end(&l, "exclusions");

    wan_report_run run;
    CHECK(wan_report_load_run(dir, 2, &run) == 0);
    CHECK(run.nsteps == 10 && run.nevals == 1 && run.segments == 1);
    CHECK(run.steps[0].use == WAN_STEP_WARMUP && run.steps[1].use == WAN_STEP_WARMUP);
    CHECK(run.steps[4].use == WAN_STEP_CKPT && run.steps[6].use == WAN_STEP_EVAL);
    CHECK(run.steps[2].use == WAN_STEP_USED);
    CHECK(run.nevals == 1 && run.evals[0].step == 7 && run.evals[0].loss == 0.42);
    wan_report_stats st;
    CHECK(wan_report_compute(&run, NULL, &st) == 0);
    CHECK(st.steps_used == 6 && st.skipped_warmup == 2 && st.skipped_ckpt == 1 && st.skipped_eval == 1);
    /* measured: steps 3, 4, 6, 8, 9, 10 = 0.5 + 0.25 + 0.75 + 0.5 + 1.0 + 0.5 = 3.5 s for 6 x 192 tokens */
    CHECK_NEAR(st.tokens_per_sec_per_gpu, 6 * 192 / 3.5 / 2, 1e-12);
    double flops = 6 * 4 * wan_train_flops_per_sample(&run.model, 48);
    CHECK_NEAR(st.tflops_per_gpu, flops / 3.5 / 2 / 1e12, 1e-12);
    CHECK_NEAR(st.step_time_median, 0.5, 1e-12);
    CHECK_NEAR(st.step_time_min, 0.25, 0);
    CHECK_NEAR(st.step_time_max, 1.0, 0);
    CHECK(strcmp(st.system, "CPU") == 0 && strcmp(st.model_name, "Wan DiT (dim 64, 2 layers)") == 0);
    CHECK(isnan(st.mfu) && st.peak_tflops == 0);
    CHECK(isnan(st.seed_tflops_per_gpu));

    /* no warm-up: the two slow first steps now count */
    wan_report_run_free(&run);
    CHECK(wan_report_load_run(dir, 0, &run) == 0);
    CHECK(wan_report_compute(&run, NULL, &st) == 0);
    CHECK(st.steps_used == 8);
    CHECK_NEAR(st.tokens_per_sec_per_gpu, 8 * 192 / 19.5 / 2, 1e-12);
    wan_report_run_free(&run);
}

/* After a resume the re-run steps replace the earlier lines, the abandoned tail is dropped,
 * and warm-up starts again. */
static void test_resume(void) {
    logbuf l;
    log_begin(&l);
    header(&l, 0);
    for (int n = 1; n <= 6; n++) step(&l, n, 1.0);
    raw(&l, "{\"type\":\"eval\",\"step\":6,\"loss\":0.9}\n");
    header(&l, 4); /* back to the checkpoint of step 4 */
    for (int n = 5; n <= 8; n++) step(&l, n, 2.0);
    step(&l, 8, 3.0); /* the same step number again: the last one wins */
    const char *dir = log_end(&l, "resume");

    wan_report_run run;
    CHECK(wan_report_load_run(dir, 1, &run) == 0);
    CHECK(run.segments == 2);
    CHECKF(run.nsteps == 8, "nsteps %d", run.nsteps);
    for (int i = 0; i < run.nsteps; i++) CHECK(run.steps[i].step == i + 1);
    CHECK(run.steps[3].step_time == 1.0 && run.steps[4].step_time == 2.0 && run.steps[7].step_time == 3.0);
    CHECK(run.steps[0].use == WAN_STEP_WARMUP && run.steps[1].use == WAN_STEP_USED);
    CHECK(run.steps[4].use == WAN_STEP_WARMUP); /* first step after the resume */
    CHECK(run.steps[7].use == WAN_STEP_USED);
    CHECK(run.steps[7].line == 14); /* the repeated line, not line 13 */
    CHECK(run.nevals == 0); /* the evaluation of step 6 belonged to the abandoned history */
    wan_report_stats st;
    CHECK(wan_report_compute(&run, NULL, &st) == 0);
    CHECK(st.steps_used == 6); /* 2, 3, 4 at 1 s; 6, 7 at 2 s; 8 at 3 s */
    CHECK_NEAR(st.tokens_per_sec_per_gpu, 6 * 192 / 10.0 / 2, 1e-12);
    wan_report_run_free(&run);

    /* the resumed run has not yet reached the end of the old one: the old tail goes */
    log_begin(&l);
    header(&l, 0);
    for (int n = 1; n <= 6; n++) step(&l, n, 1.0);
    header(&l, 4);
    step(&l, 5, 2.0);
    dir = log_end(&l, "resume_short");
    CHECK(wan_report_load_run(dir, 0, &run) == 0);
    CHECKF(run.nsteps == 5 && run.steps[4].step_time == 2.0, "nsteps %d", run.nsteps);
    wan_report_run_free(&run);
}

static void test_bad_logs(void) {
    char path[600];
    snprintf(path, sizeof path, "%s/nothing", tmp);
    load_expect_error(path, 0, 2, "nothing", "no such run directory");

    snprintf(path, sizeof path, "%s/no_log", tmp);
    wan_mkdir_p(path);
    load_expect_error(path, 0, 2, "no_log/steps.jsonl", "does not exist");

    logbuf l;
    log_begin(&l);
    const char *dir = log_end(&l, "empty");
    load_expect_error(dir, 0, 2, "empty/steps.jsonl", "empty");

    log_begin(&l);
    header(&l, 0);
    step(&l, 1, 1.0);
    raw(&l, "{\"type\":\"step\",\"step\":2,\"time\":17640"); /* the writer died mid-line */
    dir = log_end(&l, "truncated");
    load_expect_error(dir, 0, 2, "truncated/steps.jsonl: line 3", "truncated");

    log_begin(&l);
    header(&l, 0);
    raw(&l, "{\"type\":\"step\",\"step\":1,,}\n");
    step(&l, 2, 1.0);
    dir = log_end(&l, "garbage");
    load_expect_error(dir, 0, 2, "garbage/steps.jsonl: line 2", "not valid JSON");

    log_begin(&l);
    step(&l, 1, 1.0);
    dir = log_end(&l, "headless");
    load_expect_error(dir, 0, 2, "line 1", "expected the header line");

    log_begin(&l);
    header(&l, 0);
    raw(&l, "{\"type\":\"step\",\"step\":1,\"samples\":4,\"tokens\":192}\n");
    dir = log_end(&l, "no_time");
    load_expect_error(dir, 0, 2, "line 2", "missing field \"step_time\"");

    log_begin(&l);
    header(&l, 0);
    step(&l, 1, 1.0);
    raw(&l, "{\"type\":\"step\",\"step\":2,\"step_time\":1,\"samples\":4,\"tokens\":192,\"seq_len\":48,\"gpus\":2,"
            "\"device\":\"CPU\",\"layout\":{\"gbs\":4,\"mbs\":1,\"seq_len\":48,\"fsdp\":0,\"tp\":\"2\"}}\n");
    dir = log_end(&l, "wrong_type");
    load_expect_error(dir, 0, 3, "line 3", "\"layout.tp\"", "expected an integer, found a string");

    log_begin(&l);
    header(&l, 0);
    raw(&l, "{\"type\":\"step\",\"step\":1,\"step_time\":1,\"samples\":4,\"tokens\":100,\"seq_len\":48}\n");
    dir = log_end(&l, "tokens");
    load_expect_error(dir, 0, 2, "line 2", "samples * seq_len = 4 * 48 = 192");

    /* mixed configurations: a layout change, then a device change */
    log_begin(&l);
    header(&l, 0);
    for (int n = 1; n <= 3; n++) step(&l, n, 1.0);
    step_full(&l, 4, 1.0, false, false, 2, "CPU (1 threads)");
    dir = log_end(&l, "mixed_tp");
    load_expect_error(dir, 0, 3, "line 5 (step 4): layout.tp = 2, but line 2 (step 1) has 1", "mixes runs",
                      "train.run_dir");

    log_begin(&l);
    header(&l, 0);
    step(&l, 1, 1.0);
    header(&l, 1);
    step_full(&l, 2, 1.0, false, false, 1, "NVIDIA H100 80GB HBM3");
    dir = log_end(&l, "mixed_device");
    load_expect_error(dir, 0, 2, "device \"NVIDIA H100 80GB HBM3\"", "mixes runs");

    log_begin(&l);
    header(&l, 0);
    dir = log_end(&l, "header_only");
    load_expect_error(dir, 0, 1, "no step lines");

    log_begin(&l);
    raw(&l, "{\"type\":\"header\",\"format\":2}\n");
    dir = log_end(&l, "format2");
    load_expect_error(dir, 0, 1, "format 1");

    /* everything is warm-up or a checkpoint: nothing to measure */
    log_begin(&l);
    header(&l, 0);
    for (int n = 1; n <= 3; n++) step(&l, n, 1.0);
    step_full(&l, 4, 1.0, true, false, 1, "CPU (1 threads)");
    dir = log_end(&l, "all_warmup");
    load_expect_error(dir, 3, 3, "no steps left to measure", "3 are warm-up", "1 saved a checkpoint");

    /* the same log with no warm-up is fine: the test above can fail for the right reason only */
    wan_report_run run;
    CHECK(wan_report_load_run(dir, 0, &run) == 0);
    wan_report_run_free(&run);
}

/* A step line without "model" takes the header's config.model; without either it is an error. */
static void test_model_from_header(void) {
    logbuf l;
    log_begin(&l);
    header(&l, 0);
    raw(&l, "{\"type\":\"step\",\"step\":1,\"step_time\":0.5,\"samples\":4,\"tokens\":192,\"seq_len\":48,"
            "\"gpus\":2,\"device\":\"CPU (1 threads)\",\"layout\":{\"gbs\":4,\"mbs\":1,\"seq_len\":48,\"fsdp\":0,"
            "\"tp\":1,\"sp\":0,\"pp\":1,\"cp\":1,\"vp\":0,\"ep\":0}}\n");
    const char *dir = log_end(&l, "header_model");
    wan_report_run run;
    CHECK(wan_report_load_run(dir, 0, &run) == 0);
    CHECK(run.model.dim == 64 && run.model.num_layers == 2 && run.model.patch_size[2] == 2);
    CHECK(run.layout.dp == 2); /* not logged: gpus / (tp * cp * pp) */
    CHECK(isnan(run.steps[0].loss));
    wan_report_run_free(&run);

    log_begin(&l);
    raw(&l, "{\"type\":\"header\",\"format\":1}\n");
    raw(&l, "{\"type\":\"step\",\"step\":1,\"step_time\":0.5,\"samples\":4,\"tokens\":192,\"seq_len\":48,"
            "\"gpus\":2,\"device\":\"CPU\",\"layout\":{\"gbs\":4,\"mbs\":1,\"seq_len\":48,\"fsdp\":0,"
            "\"tp\":1,\"sp\":0,\"pp\":1,\"cp\":1,\"vp\":0,\"ep\":0}}\n");
    dir = log_end(&l, "no_model");
    load_expect_error(dir, 0, 2, "line 2", "missing field \"model\"");
}

static void test_percentile(void) {
    double a[] = {4, 1, 3, 2};
    CHECK_NEAR(wan_report_percentile(a, 4, 0.5), 2.5, 1e-15);
    CHECK_NEAR(wan_report_percentile(a, 4, 0.1), 1.3, 1e-15);
    CHECK_NEAR(wan_report_percentile(a, 4, 0.9), 3.7, 1e-15);
    CHECK_NEAR(wan_report_percentile(a, 4, 1.0), 4, 0);
    double b[] = {7};
    CHECK(wan_report_percentile(b, 1, 0.9) == 7);
    CHECK(isnan(wan_report_percentile(b, 0, 0.5)));
}

static void test_names(void) {
    char buf[128];
    struct {
        const char *device, *system;
        double peak;
    } cases[] = {
        {"NVIDIA H100 80GB HBM3", "DGX-H100", 989.4}, {"NVIDIA H100 PCIe", "H100-PCIe", 756.5},
        {"NVIDIA H200", "DGX-H200", 989.4},           {"NVIDIA GH200 480GB", "GH200", 989.4},
        {"NVIDIA B200", "DGX-B200", 2250},            {"NVIDIA GB200", "DGX-GB200", 2500},
        {"NVIDIA GB300", "DGX-GB300", 2500},          {"NVIDIA A100-SXM4-80GB", "DGX-A100", 312},
        {"NVIDIA H100 NVL", "H100-NVL", 0},           {"CPU (4 threads)", "CPU", 0},
        {"Some Accelerator X", "Some Accelerator X", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        wan_report_system_name(cases[i].device, buf, sizeof buf);
        CHECKF(!strcmp(buf, cases[i].system), "%s -> %s", cases[i].device, buf);
        const wan_report_device *d = wan_report_device_lookup(cases[i].device);
        double peak = d ? d->peak_tflops : 0;
        CHECKF(peak == cases[i].peak, "%s: peak %g", cases[i].device, peak);
    }
    wan_model_cfg m;
    wan_flops_wan21_14b(&m);
    wan_report_model_name(&m, buf, sizeof buf);
    CHECK(!strcmp(buf, "Wan 2.1 14B"));
    m.dim = 1536;
    m.num_layers = 30;
    wan_report_model_name(&m, buf, sizeof buf);
    CHECK(!strcmp(buf, "Wan 2.1 1.3B"));
    m.num_layers = 12;
    wan_report_model_name(&m, buf, sizeof buf);
    CHECK(!strcmp(buf, "Wan DiT (dim 1536, 12 layers)"));
}

static void test_grouped(void) {
    char buf[64];
    struct {
        double v;
        const char *s;
    } cases[] = {{1022.26, "1,022.26"}, {787.59, "787.59"},   {0, "0.00"},           {999.999, "1,000.00"},
                 {-1234.5, "-1,234.50"}, {1234567.891, "1,234,567.89"}, {100000, "100,000.00"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        wan_report_fmt_grouped(cases[i].v, buf, sizeof buf);
        CHECKF(!strcmp(buf, cases[i].s), "%g -> %s", cases[i].v, buf);
    }
}

/* A 14B run in the reference GB200 row's layout and speed, in memory. */
static void gb200_run(wan_report_run *run, wan_report_step *steps, int n) {
    memset(run, 0, sizeof *run);
    snprintf(run->dir, sizeof run->dir, "runs/gb200|a");
    snprintf(run->device, sizeof run->device, "NVIDIA GB200");
    run->gpus = 32;
    run->layout = (wan_report_layout){64, 1, 37440, 0, 1, 0, 1, 4, 0, 0, 8};
    wan_flops_wan21_14b(&run->model);
    for (int i = 0; i < n; i++)
        steps[i] = (wan_report_step){i + 1, i + 2, 64.0 * 37440 / (32 * 4747.17), 0.5, 64, 64 * 37440, 37440,
                                     WAN_STEP_USED};
    run->steps = steps;
    run->nsteps = n;
    run->segments = 1;
}

/* The markdown: the reference page's header character for character, the same grouping and
 * the same row for a run that matches the GB200 reference row. */
static void test_markdown_matches_reference(void) {
    /* the header as the reference page writes it (checked against the page itself below) */
    CHECK(!strcmp(wan_report_md_header, "| Model | #-GPUs | GBS | MBS | Sequence Length | FSDP | TP | SP | PP | CP "
                                        "| VP | EP | Tokens / sec / GPU | Model TFLOP / sec / GPU |"));
    char *page;
    size_t len;
    if (wan_read_file("../shared/reference/dfm-performance-summary.md", &page, &len) == 0) {
        int headers = 0;
        for (char *line = strtok(page, "\n"); line; line = strtok(NULL, "\n")) {
            if (!strncmp(line, "| Model |", 9)) {
                headers++;
                CHECKF(!strcmp(line, wan_report_md_header), "reference header \"%s\"", line);
                char *rule = strtok(NULL, "\n");
                CHECKF(rule && !strcmp(rule, wan_report_md_rule), "reference rule \"%s\"", rule ? rule : "");
            }
        }
        CHECKF(headers == 3, "%d headers in the reference page", headers);
        free(page);
    } else {
        printf("note: ../shared/reference/dfm-performance-summary.md not found; checked the built-in copy only\n");
        wan_error_clear();
    }

    wan_report_run run;
    wan_report_step steps[6];
    gb200_run(&run, steps, 6);
    wan_report_stats st;
    CHECK(wan_report_compute(&run, NULL, &st) == 0);
    CHECK_NEAR(st.tokens_per_sec_per_gpu, 4747.17, 1e-9);
    CHECK_NEAR(st.seed_tflops_per_gpu, 787.59, 1e-4); /* the reference's own figure */
    CHECK_NEAR(st.mfu, st.tflops_per_gpu / 2500, 1e-12);
    wan_report_doc doc = {&run, &st, 1, 3, false};
    char *md;
    CHECK(wan_report_render(&doc, WAN_REPORT_MD, &md) == 0);
    char tfl[32], want[1024];
    wan_report_fmt_grouped(st.tflops_per_gpu, tfl, sizeof tfl);
    snprintf(want, sizeof want, "#### System: DGX-GB200\n\n%s\n%s\n|Wan 2.1 14B|32|64|1|37440|0|1|0|1|4|0|0|4747.17|%s|\n",
             wan_report_md_header, wan_report_md_rule, tfl);
    CHECKF(!strncmp(md, want, strlen(want)), "markdown starts:\n%.600s", md);
    CHECK(strstr(md, "Megatron-Bridge Wan formula") != NULL);
    CHECK(strstr(md, "1.65907e11") != NULL && strstr(md, "|787.59|") != NULL);
    CHECK(strstr(md, "runs/gb200\\|a") != NULL); /* '|' in a cell is escaped */
    CHECK(strstr(md, "Published reference rows") == NULL);
    free(md);

    doc.compare = true;
    CHECK(wan_report_render(&doc, WAN_REPORT_MD, &md) == 0);
    CHECK(strstr(md, "|Wan 2.1 14B [NeMo DFM performance summary (Megatron-Core)]|32|64|1|37440|0|1|0|1|4|0|0|"
                     "4747.17|787.59|") != NULL);
    CHECK(strstr(md, "|899.62|") != NULL);
    CHECK(strstr(md, "|NeMo DFM performance summary (Megatron-Core), 32 GPUs|1.000|") != NULL);
    CHECK(strstr(md, "DGX-H100") == NULL); /* other systems' rows stay out */
    free(md);
}

static void test_references(void) {
    const wan_report_reference *refs[16];
    CHECK(wan_report_references("DGX-H100", "Wan 2.1 14B", 37440, refs, 16) == 4);
    CHECK(wan_report_references("DGX-GB300", "Wan 2.1 14B", 37440, refs, 16) == 2);
    CHECK(wan_report_references("DGX-B200", "Wan 2.1 14B", 37440, refs, 16) == 1);
    CHECK(wan_report_references("DGX-H100", "Wan 2.1 14B", 32760, refs, 16) == 0);
    CHECK(wan_report_references("DGX-H100", "Wan 2.1 1.3B", 37440, refs, 16) == 0);
    CHECK(wan_report_references("CPU", "Wan 2.1 14B", 37440, refs, 16) == 0);

    wan_report_stats st = {.tokens_per_sec_per_gpu = 1866.47 / 2, .tflops_per_gpu = 100};
    CHECK(wan_report_references("DGX-H100", "Wan 2.1 14B", 37440, refs, 16) == 4);
    double tr, fr;
    wan_report_ratios(&st, refs[0], &tr, &fr);
    CHECK_NEAR(tr, 0.5, 1e-12);
    CHECK_NEAR(fr, 100 / 309.66, 1e-12);
    wan_report_ratios(&st, refs[1], &tr, &fr); /* TFLOP/s only: tokens at the seed's FLOPs/token */
    CHECK_NEAR(tr, (1866.47 / 2) / (325.77e12 / 1.65907e11), 1e-12);
}

/* CSV quoting and JSON that parses back to the numbers. */
static void test_csv_json(void) {
    wan_report_run run;
    wan_report_step steps[4];
    gb200_run(&run, steps, 4);
    snprintf(run.dir, sizeof run.dir, "runs/a,\"b\"");
    wan_report_stats st;
    wan_report_opts opts = {.peak_tflops = 1000, .system = "My Cluster"};
    CHECK(wan_report_compute(&run, &opts, &st) == 0);
    CHECK(!strcmp(st.system, "My Cluster"));
    CHECK_NEAR(st.mfu, st.tflops_per_gpu / 1000, 1e-12);
    wan_report_doc doc = {&run, &st, 1, 3, true};
    char *csv;
    CHECK(wan_report_render(&doc, WAN_REPORT_CSV, &csv) == 0);
    CHECK(!strncmp(csv, "kind,run,system,model,gpus,", 27));
    CHECK(strstr(csv, "\nrun,\"runs/a,\"\"b\"\"\",My Cluster,Wan 2.1 14B,32,64,1,37440,0,1,0,1,4,0,0,4747.17,") != NULL);
    CHECK(strstr(csv, "\nreference,") == NULL); /* "My Cluster" has no reference rows */
    free(csv);

    char *js;
    CHECK(wan_report_render(&doc, WAN_REPORT_JSON, &js) == 0);
    json_error_t err;
    json_t *root = json_loads(js, 0, &err);
    CHECKF(root != NULL, "JSON: %s", err.text);
    json_t *r0 = json_array_get(json_object_get(root, "runs"), 0);
    CHECK_NEAR(json_real_value(json_object_get(r0, "tokens_per_sec_per_gpu")), 4747.17, 1e-9);
    CHECK_NEAR(json_real_value(json_object_get(r0, "model_tflops_at_seed_flops_per_token")), 787.59, 1e-9);
    CHECK(json_integer_value(json_object_get(json_object_get(r0, "layout"), "cp")) == 4);
    CHECK(!strcmp(json_string_value(json_object_get(r0, "run")), "runs/a,\"b\""));
    CHECK(json_array_size(json_object_get(r0, "references")) == 0);
    json_decref(root);
    free(js);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/wan-test-report.XXXXXX");
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_exclusions);
    RUN(test_resume);
    RUN(test_bad_logs);
    RUN(test_model_from_header);
    RUN(test_percentile);
    RUN(test_names);
    RUN(test_grouped);
    RUN(test_markdown_matches_reference);
    RUN(test_references);
    RUN(test_csv_json);
    wan_rm_rf(tmp);
    return test_summary();
}
