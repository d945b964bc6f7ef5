#include "steplog.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "error.h"
#include "fsutil.h"

static double unix_now(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
}

static int emit(wan_steplog *l, json_t *obj) {
    char *text = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(obj);
    if (!text) return wan_fail(WAN_ERR_RUNTIME, "step log: cannot encode a line");
    int rc = 0;
    if (fprintf(l->f, "%s\n", text) < 0 || fflush(l->f) != 0)
        rc = wan_fail_errno(WAN_ERR_RUNTIME, "writing the step log");
    free(text);
    return rc;
}

int wan_steplog_open(wan_steplog *l, const char *run_dir, const wan_config *cfg, int world_size, const char *device,
                     int resumed_from) {
    char path[WAN_PATH_MAX + 32];
    WAN_TRY(wan_mkdir_p(run_dir));
    snprintf(path, sizeof path, "%s/steps.jsonl", run_dir);
    l->f = fopen(path, "a");
    if (!l->f) return wan_fail_errno(WAN_ERR_RUNTIME, "open step log %s", path);
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *h = json_pack("{s:s,s:i,s:s,s:s,s:s,s:s,s:i,s:s,s:i,s:o}", "type", "header", "format", 1, "program",
                          "wan-train", "version", WAN_VERSION, "git", WAN_GIT_REV, "time", ts, "world_size", world_size,
                          "device", device, "resumed_from", resumed_from, "config", wan_config_to_json(cfg));
    return emit(l, h);
}

/* NaN or inf (a diverged loss) as null: the line must still be valid JSON */
static json_t *num(double x) { return isfinite(x) ? json_real(x) : json_null(); }

int wan_steplog_step(wan_steplog *l, const wan_config *cfg, const char *device, const wan_step_record *r) {
    const wan_model_cfg *m = &cfg->model;
    const wan_parallel_cfg *p = &cfg->parallel;
    /* the layout's sequence length is the configured one (per-step lengths vary with the data) */
    int64_t cfg_seq = wan_config_tokens_per_sample(cfg);
    json_t *layout = json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}", "gbs", cfg->train.gbs, "mbs",
                               cfg->train.mbs, "seq_len", cfg_seq ? (int)cfg_seq : r->seq_len, "fsdp", (int)p->fsdp, "tp", p->tp, "sp",
                               (int)(p->sp && p->tp > 1), "pp", p->pp, "cp", p->cp, "vp", p->vp, "ep", 0, "dp", r->dp);
    json_t *model = json_pack("{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:[iii]}", "dim", m->dim, "ffn_dim", m->ffn_dim,
                              "num_heads", m->num_heads, "num_layers", m->num_layers, "text_len", m->text_len,
                              "text_dim", m->text_dim, "freq_dim", m->freq_dim, "in_dim", m->in_dim, "out_dim",
                              m->out_dim, "patch_size", m->patch_size[0], m->patch_size[1], m->patch_size[2]);
    json_t *o = json_pack("{s:s,s:i,s:f,s:f,s:o,s:o,s:f,s:i,s:I,s:i,s:i,s:s,s:o,s:o,s:b,s:b,s:I,s:I}", "type", "step",
                          "step", r->step, "time", unix_now(), "step_time", r->step_time, "loss", num(r->loss),
                          "grad_norm", num(r->grad_norm), "lr", r->lr, "samples", r->samples, "tokens", (json_int_t)r->tokens, "seq_len",
                          r->seq_len, "gpus", r->gpus, "device", device, "layout", layout, "model", model, "ckpt",
                          r->ckpt, "eval", r->eval, "mem_peak", (json_int_t)r->mem_peak, "data_epoch",
                          (json_int_t)r->data_epoch);
    static const char *groups[7] = {"tp", "cp", "dp", "pp", "dpcp", "mp", "world"};
    json_t *cb = json_object();
    for (int i = 0; i < 7; i++) json_object_set_new(cb, groups[i], json_integer(r->comm_bytes[i]));
    json_object_set_new(o, "comm_bytes", cb);
    return emit(l, o);
}

int wan_steplog_eval(wan_steplog *l, int step, double mean, const double *sigmas, const double *losses, int n,
                     int samples) {
    json_t *s = json_array(), *v = json_array();
    for (int i = 0; i < n; i++) {
        json_array_append_new(s, json_real(sigmas[i]));
        json_array_append_new(v, num(losses[i]));
    }
    return emit(l, json_pack("{s:s,s:i,s:o,s:o,s:o,s:i}", "type", "eval", "step", step, "loss", num(mean), "sigmas", s,
                             "loss_by_sigma", v, "samples", samples));
}

void wan_steplog_close(wan_steplog *l) {
    if (l->f) fclose(l->f);
    l->f = NULL;
}
