/* The step log as wan-train writes it (steplog.c) read back by wan-report (report_log.c): the
 * writer and the reader agree on the contract in steplog.h, resumes included. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "fsutil.h"
#include "report.h"
#include "steplog.h"
#include "test.h"

static char tmp[256];

static wan_step_record record(const wan_config *cfg, int step, double t, bool ckpt, bool eval) {
    int seq = 48; /* the default latent 3 x 8 x 8 patched 1x2x2 */
    return (wan_step_record){.step = step, .step_time = t, .loss = 1.0 / step, .grad_norm = 1, .lr = 1e-3,
                             .samples = cfg->train.gbs, .tokens = (long long)cfg->train.gbs * seq, .seq_len = seq,
                             .gpus = 2, .dp = 2, .ckpt = ckpt, .eval = eval, .mem_peak = 1000, .data_epoch = 0};
}

static void test_roundtrip(void) {
    wan_config cfg;
    wan_config_defaults(&cfg);
    const char *dev = "CPU (1 threads)";
    wan_steplog l;
    CHECK(wan_steplog_open(&l, tmp, &cfg, 2, dev, 0) == 0);
    const double times[] = {5.0, 0.5, 0.25, 0.75, 2.0, 0.5};
    for (int s = 1; s <= 6; s++) {
        wan_step_record r = record(&cfg, s, times[s - 1], s == 5, false);
        CHECK(wan_steplog_step(&l, &cfg, dev, &r) == 0);
    }
    wan_steplog_close(&l);
    /* resumed from the checkpoint of step 5: step 6 again, slower, then 7 with an evaluation */
    CHECK(wan_steplog_open(&l, tmp, &cfg, 2, dev, 5) == 0);
    wan_step_record r6 = record(&cfg, 6, 1.5, false, false), r7 = record(&cfg, 7, 3.0, false, true);
    CHECK(wan_steplog_step(&l, &cfg, dev, &r6) == 0);
    CHECK(wan_steplog_step(&l, &cfg, dev, &r7) == 0);
    double sig[] = {0.1, 0.9}, los[] = {0.3, 0.5};
    CHECK(wan_steplog_eval(&l, 7, 0.4, sig, los, 2, 8) == 0);
    wan_steplog_close(&l);

    wan_report_run run;
    int rc = wan_report_load_run(tmp, 1, &run);
    CHECKF(rc == 0, "%s", wan_errmsg());
    if (rc) return;
    CHECK(run.nsteps == 7 && run.segments == 2 && run.gpus == 2);
    CHECK(!strcmp(run.device, dev));
    CHECK(run.model.dim == cfg.model.dim && run.model.num_layers == cfg.model.num_layers);
    CHECK(run.layout.gbs == cfg.train.gbs && run.layout.seq_len == 48 && run.layout.tp == cfg.parallel.tp);
    CHECK(run.steps[5].step_time == 1.5 && run.steps[5].use == WAN_STEP_WARMUP);
    CHECK(run.steps[4].use == WAN_STEP_CKPT && run.steps[6].use == WAN_STEP_EVAL);
    CHECK(run.nevals == 1 && run.evals[0].step == 7 && fabs(run.evals[0].loss - 0.4) < 1e-9);
    wan_report_stats st;
    CHECK(wan_report_compute(&run, NULL, &st) == 0);
    /* measured: steps 2, 3, 4 (0.5 + 0.25 + 0.75 s) */
    CHECK(st.steps_used == 3);
    CHECK_NEAR(st.tokens_per_sec_per_gpu, 3.0 * cfg.train.gbs * 48 / 1.5 / 2, 1e-9);
    wan_report_run_free(&run);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "/tmp/wan-test-steplog.XXXXXX");
    if (!mkdtemp(tmp)) return 1;
    RUN(test_roundtrip);
    wan_rm_rf(tmp);
    return test_summary();
}
