/* Per-run statistics over the measured steps. Throughput is total tokens over total seconds
 * (a slow step costs what it cost); step-time median and p10-p90 show how steady it was. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "flops.h"
#include "report.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double wan_report_percentile(double *v, int n, double q) {
    if (n <= 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double pos = q * (n - 1);
    int lo = (int)floor(pos);
    if (lo >= n - 1) return v[n - 1];
    return v[lo] + (pos - lo) * (v[lo + 1] - v[lo]);
}

int wan_report_compute(const wan_report_run *run, const wan_report_opts *opts, wan_report_stats *st) {
    memset(st, 0, sizeof *st);
    wan_report_model_name(&run->model, st->model_name, sizeof st->model_name);
    if (opts && opts->system) snprintf(st->system, sizeof st->system, "%s", opts->system);
    else wan_report_system_name(run->device, st->system, sizeof st->system);

    st->steps_total = run->nsteps;
    double *times = malloc((size_t)(run->nsteps ? run->nsteps : 1) * sizeof *times);
    if (!times) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    double seconds = 0, tokens = 0, flops = 0;
    for (int i = 0; i < run->nsteps; i++) {
        const wan_report_step *s = &run->steps[i];
        switch (s->use) {
        case WAN_STEP_WARMUP: st->skipped_warmup++; continue;
        case WAN_STEP_CKPT: st->skipped_ckpt++; continue;
        case WAN_STEP_EVAL: st->skipped_eval++; continue;
        case WAN_STEP_USED: break;
        }
        times[st->steps_used++] = s->step_time;
        seconds += s->step_time;
        tokens += (double)s->tokens;
        flops += (double)s->samples * wan_train_flops_per_sample(&run->model, s->seq_len);
    }
    if (st->steps_used == 0) {
        free(times);
        return wan_fail(WAN_ERR_RUNTIME,
                        "%s: no steps left to measure: of %d steps, %d are warm-up (--warmup), %d saved a "
                        "checkpoint and %d ran an evaluation; run more steps or lower --warmup",
                        run->log, st->steps_total, st->skipped_warmup, st->skipped_ckpt, st->skipped_eval);
    }
    st->tokens_per_sec_per_gpu = tokens / seconds / run->gpus;
    st->tflops_per_gpu = flops / seconds / run->gpus / 1e12;
    st->flops_per_token = wan_train_flops_per_token(&run->model, run->layout.seq_len);
    st->seed_tflops_per_gpu = NAN;
    if (wan_flops_is_wan21_14b(&run->model) && run->layout.seq_len == WAN_FLOPS_SEED_SEQ_LEN)
        st->seed_tflops_per_gpu = st->tokens_per_sec_per_gpu * WAN_FLOPS_PER_TOKEN_SEED_14B / 1e12;

    st->step_time_median = wan_report_percentile(times, st->steps_used, 0.5);
    st->step_time_p10 = wan_report_percentile(times, st->steps_used, 0.1);
    st->step_time_p90 = wan_report_percentile(times, st->steps_used, 0.9);
    st->step_time_min = times[0]; /* sorted by the percentile calls */
    st->step_time_max = times[st->steps_used - 1];
    st->step_time_spread = (st->step_time_p90 - st->step_time_p10) / st->step_time_median;
    free(times);

    const wan_report_device *dev = wan_report_device_lookup(run->device);
    if (!dev && opts && opts->system) dev = wan_report_device_lookup(opts->system); /* "DGX-H100" names one */
    if (opts && opts->peak_tflops > 0) {
        st->peak_tflops = opts->peak_tflops;
        st->peak_source = "--peak";
    } else if (dev && dev->peak_tflops > 0) {
        st->peak_tflops = dev->peak_tflops;
        st->peak_source = dev->source;
    }
    st->mfu = st->peak_tflops > 0 ? st->tflops_per_gpu / st->peak_tflops : NAN;
    return 0;
}
