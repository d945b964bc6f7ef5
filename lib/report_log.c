/* Reading one run's step log: every line checked against the contract in steplog.h, resumes
 * resolved (the last occurrence of a step wins), warm-up and checkpoint/evaluation steps
 * marked, and the log rejected when its step lines do not all share one configuration. */
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "report.h"

/* A step as read, with the configuration it ran under (checked for mixing at the end). */
typedef struct {
    wan_report_step s;
    char device[128];
    int gpus;
    wan_report_layout layout;
    wan_model_cfg model;
} raw_step;

typedef struct {
    const char *log;
    int line;
} where;

#define PROGRESS_BYTES (64u << 20) /* logs this large show progress while read */

static const char *json_kind(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "something else";
}

/* obj[key] as an integer in [lo, hi]; `field` is the dotted name used in messages. */
static int get_int(const where *w, json_t *obj, const char *prefix, const char *key, long long lo, long long hi,
                   long long *out) {
    json_t *v = json_object_get(obj, key);
    if (!v)
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: missing field \"%s%s\" (expected an integer)", w->log, w->line,
                        prefix, key);
    if (!json_is_integer(v))
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"%s%s\": expected an integer, found %s", w->log,
                        w->line, prefix, key, json_kind(v));
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"%s%s\" = %lld: expected %lld..%lld", w->log, w->line,
                        prefix, key, x, lo, hi);
    *out = x;
    return 0;
}

static int get_int32(const where *w, json_t *obj, const char *prefix, const char *key, long long lo, long long hi,
                     int *out) {
    long long x;
    WAN_TRY(get_int(w, obj, prefix, key, lo, hi, &x));
    *out = (int)x;
    return 0;
}

/* An optional boolean (absent = false). */
static int get_flag(const where *w, json_t *obj, const char *key, bool *out) {
    json_t *v = json_object_get(obj, key);
    *out = false;
    if (!v) return 0;
    if (!json_is_boolean(v))
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"%s\": expected true or false, found %s", w->log,
                        w->line, key, json_kind(v));
    *out = json_is_true(v);
    return 0;
}

static int get_object(const where *w, json_t *obj, const char *key, json_t **out) {
    json_t *v = json_object_get(obj, key);
    if (!v)
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: missing field \"%s\" (expected an object)", w->log, w->line,
                        key);
    if (!json_is_object(v))
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"%s\": expected an object, found %s", w->log, w->line,
                        key, json_kind(v));
    *out = v;
    return 0;
}

static int parse_model(const where *w, json_t *m, wan_model_cfg *out) {
    memset(out, 0, sizeof *out);
    const long long big = 1 << 24;
    WAN_TRY(get_int32(w, m, "model.", "dim", 1, big, &out->dim));
    WAN_TRY(get_int32(w, m, "model.", "ffn_dim", 1, big, &out->ffn_dim));
    WAN_TRY(get_int32(w, m, "model.", "num_layers", 1, big, &out->num_layers));
    WAN_TRY(get_int32(w, m, "model.", "text_len", 1, big, &out->text_len));
    WAN_TRY(get_int32(w, m, "model.", "text_dim", 1, big, &out->text_dim));
    WAN_TRY(get_int32(w, m, "model.", "in_dim", 1, big, &out->in_dim));
    WAN_TRY(get_int32(w, m, "model.", "out_dim", 1, big, &out->out_dim));
    /* not needed for FLOPs, but part of the configuration when present */
    if (json_object_get(m, "num_heads")) WAN_TRY(get_int32(w, m, "model.", "num_heads", 1, big, &out->num_heads));
    if (json_object_get(m, "freq_dim")) WAN_TRY(get_int32(w, m, "model.", "freq_dim", 1, big, &out->freq_dim));
    json_t *p = json_object_get(m, "patch_size");
    if (!p || !json_is_array(p) || json_array_size(p) != 3)
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"model.patch_size\": expected an array of 3 integers, %s",
                        w->log, w->line, p ? "found something else" : "missing");
    for (int i = 0; i < 3; i++) {
        json_t *e = json_array_get(p, (size_t)i);
        if (!json_is_integer(e) || json_integer_value(e) < 1 || json_integer_value(e) > 64)
            return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"model.patch_size[%d]\": expected an integer 1..64",
                            w->log, w->line, i);
        out->patch_size[i] = (int)json_integer_value(e);
    }
    return 0;
}

static int parse_layout(const where *w, json_t *l, int gpus, wan_report_layout *out) {
    const long long big = 1LL << 30;
    WAN_TRY(get_int32(w, l, "layout.", "gbs", 1, big, &out->gbs));
    WAN_TRY(get_int32(w, l, "layout.", "mbs", 1, big, &out->mbs));
    WAN_TRY(get_int32(w, l, "layout.", "seq_len", 1, big, &out->seq_len));
    WAN_TRY(get_int32(w, l, "layout.", "fsdp", 0, 1, &out->fsdp));
    WAN_TRY(get_int32(w, l, "layout.", "tp", 1, big, &out->tp));
    WAN_TRY(get_int32(w, l, "layout.", "sp", 0, 1, &out->sp));
    WAN_TRY(get_int32(w, l, "layout.", "pp", 1, big, &out->pp));
    WAN_TRY(get_int32(w, l, "layout.", "cp", 1, big, &out->cp));
    WAN_TRY(get_int32(w, l, "layout.", "vp", 0, big, &out->vp));
    WAN_TRY(get_int32(w, l, "layout.", "ep", 0, big, &out->ep));
    out->dp = 0;
    if (json_object_get(l, "dp")) WAN_TRY(get_int32(w, l, "layout.", "dp", 1, big, &out->dp));
    else if (out->tp * out->cp * out->pp > 0) out->dp = gpus / (out->tp * out->cp * out->pp);
    return 0;
}

static int parse_step(const where *w, json_t *o, const wan_model_cfg *header_model, raw_step *r) {
    memset(r, 0, sizeof *r);
    r->s.line = w->line;
    long long x;
    WAN_TRY(get_int(w, o, "", "step", 1, INT32_MAX, &x));
    r->s.step = (int)x;
    json_t *t = json_object_get(o, "step_time");
    if (!t)
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: missing field \"step_time\" (seconds)", w->log, w->line);
    if (!json_is_number(t) || !(json_number_value(t) > 0) || !isfinite(json_number_value(t)))
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"step_time\": expected seconds > 0, found %s", w->log,
                        w->line, json_is_number(t) ? "a number <= 0" : json_kind(t));
    r->s.step_time = json_number_value(t);
    json_t *loss = json_object_get(o, "loss");
    r->s.loss = loss && json_is_number(loss) ? json_number_value(loss) : NAN;
    if (loss && !json_is_number(loss) && !json_is_null(loss))
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"loss\": expected a number or null, found %s", w->log,
                        w->line, json_kind(loss));
    WAN_TRY(get_int(w, o, "", "samples", 1, INT32_MAX, &r->s.samples));
    WAN_TRY(get_int(w, o, "", "tokens", 1, INT64_MAX / 2, &r->s.tokens));
    WAN_TRY(get_int32(w, o, "", "seq_len", 1, INT32_MAX, &r->s.seq_len));
    if (r->s.tokens != r->s.samples * r->s.seq_len)
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: \"tokens\" = %lld, but samples * seq_len = %lld * %d = %lld",
                        w->log, w->line, r->s.tokens, r->s.samples, r->s.seq_len, r->s.samples * r->s.seq_len);
    WAN_TRY(get_int32(w, o, "", "gpus", 1, 1 << 24, &r->gpus));
    json_t *dev = json_object_get(o, "device");
    if (!dev || !json_is_string(dev) || !json_string_length(dev))
        return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"device\": expected the device name (a string), %s",
                        w->log, w->line, dev ? "found something else" : "missing");
    snprintf(r->device, sizeof r->device, "%s", json_string_value(dev));

    json_t *layout = NULL, *model = json_object_get(o, "model");
    WAN_TRY(get_object(w, o, "layout", &layout));
    WAN_TRY(parse_layout(w, layout, r->gpus, &r->layout));
    if (model) {
        if (!json_is_object(model))
            return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"model\": expected an object, found %s", w->log,
                            w->line, json_kind(model));
        WAN_TRY(parse_model(w, model, &r->model));
    } else if (header_model) {
        r->model = *header_model; /* the header's config.model holds it */
    } else {
        return wan_fail(WAN_ERR_RUNTIME,
                        "%s: line %d: missing field \"model\" (and the header has no config.model to fall back on)",
                        w->log, w->line);
    }
    bool ckpt, eval;
    WAN_TRY(get_flag(w, o, "ckpt", &ckpt));
    WAN_TRY(get_flag(w, o, "eval", &eval));
    r->s.use = ckpt ? WAN_STEP_CKPT : eval ? WAN_STEP_EVAL : WAN_STEP_USED;
    return 0;
}

/* The first configuration field in which b differs from a, written as a message into msg. */
static bool config_differs(const raw_step *a, const raw_step *b, char *msg, size_t n) {
    if (strcmp(a->device, b->device)) {
        snprintf(msg, n, "device \"%s\", but line %d (step %d) has \"%s\"", b->device, a->s.line, a->s.step, a->device);
        return true;
    }
#define DIFF(label, fa, fb)                                                                                          \
    if ((fa) != (fb)) {                                                                                              \
        snprintf(msg, n, "%s = %d, but line %d (step %d) has %d", label, (int)(fb), a->s.line, a->s.step, (int)(fa)); \
        return true;                                                                                                 \
    }
    DIFF("gpus", a->gpus, b->gpus);
    DIFF("layout.gbs", a->layout.gbs, b->layout.gbs);
    DIFF("layout.mbs", a->layout.mbs, b->layout.mbs);
    DIFF("layout.seq_len", a->layout.seq_len, b->layout.seq_len);
    DIFF("layout.fsdp", a->layout.fsdp, b->layout.fsdp);
    DIFF("layout.tp", a->layout.tp, b->layout.tp);
    DIFF("layout.sp", a->layout.sp, b->layout.sp);
    DIFF("layout.pp", a->layout.pp, b->layout.pp);
    DIFF("layout.cp", a->layout.cp, b->layout.cp);
    DIFF("layout.vp", a->layout.vp, b->layout.vp);
    DIFF("layout.ep", a->layout.ep, b->layout.ep);
    DIFF("layout.dp", a->layout.dp, b->layout.dp);
    DIFF("model.dim", a->model.dim, b->model.dim);
    DIFF("model.ffn_dim", a->model.ffn_dim, b->model.ffn_dim);
    DIFF("model.num_heads", a->model.num_heads, b->model.num_heads);
    DIFF("model.num_layers", a->model.num_layers, b->model.num_layers);
    DIFF("model.freq_dim", a->model.freq_dim, b->model.freq_dim);
    DIFF("model.text_len", a->model.text_len, b->model.text_len);
    DIFF("model.text_dim", a->model.text_dim, b->model.text_dim);
    DIFF("model.in_dim", a->model.in_dim, b->model.in_dim);
    DIFF("model.out_dim", a->model.out_dim, b->model.out_dim);
    for (int i = 0; i < 3; i++) DIFF("model.patch_size", a->model.patch_size[i], b->model.patch_size[i]);
#undef DIFF
    return false;
}

/* Growable arrays of the steps and evaluations still standing. */
typedef struct {
    raw_step first; /* the first step line: the configuration every other line must share */
    int nseen;
    raw_step *steps;
    int nsteps, capsteps;
    wan_report_eval *evals;
    int nevals, capevals;
} standing;

static int grow(void **p, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int ncap = *cap ? *cap * 2 : 64;
    while (ncap < need) ncap *= 2;
    void *q = realloc(*p, (size_t)ncap * elem);
    if (!q) return wan_fail(WAN_ERR_RUNTIME, "out of memory reading the step log");
    *p = q;
    *cap = ncap;
    return 0;
}

/* The run went back to step `from`: everything logged after it is history that was redone. */
static void rewind_to(standing *st, int from) {
    while (st->nsteps && st->steps[st->nsteps - 1].s.step > from) st->nsteps--;
    while (st->nevals && st->evals[st->nevals - 1].step > from) st->nevals--;
}

static int parse_lines(char *buf, size_t len, const char *log, int warmup, standing *st, int *segments) {
    where w = {log, 0};
    bool have_header = false, have_header_model = false;
    wan_model_cfg header_model;
    int pos_in_segment = 0;
    char *p = buf, *end = buf + len;
    /* a months-long run's log is a few hundred MB: say how far along we are */
    wan_progress prog;
    bool show = len >= PROGRESS_BYTES;
    if (show) wan_progress_begin(&prog, log, len, true);
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        w.line++;
        if (show && (w.line & 1023) == 0) wan_progress_add(&prog, (uint64_t)(p - buf) - prog.done);
        if (!nl)
            return wan_fail(WAN_ERR_RUNTIME,
                            "%s: line %d: truncated: the file ends in the middle of a line (the writer stopped "
                            "mid-line); no report is made from a damaged log",
                            log, w.line);
        size_t n = (size_t)(nl - p);
        char *line = p;
        p = nl + 1;
        if (strspn(line, " \t\r") >= n) continue; /* blank line */

        json_error_t jerr;
        json_t *o = json_loadb(line, n, 0, &jerr);
        if (!o)
            return wan_fail(WAN_ERR_RUNTIME, "%s: line %d: not valid JSON (%s, at column %d)", log, w.line, jerr.text,
                            jerr.column);
        int rc = 0;
        json_t *type = json_object_get(o, "type");
        const char *t = type && json_is_string(type) ? json_string_value(type) : NULL;
        if (!json_is_object(o) || !t) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: line %d: expected a JSON object with a string field \"type\"", log,
                          w.line);
        } else if (!have_header && strcmp(t, "header")) {
            rc = wan_fail(WAN_ERR_RUNTIME,
                          "%s: line %d: expected the header line ({\"type\":\"header\",...}) first, found type \"%s\"",
                          log, w.line, t);
        } else if (!strcmp(t, "header")) {
            json_t *fmt = json_object_get(o, "format");
            long long resumed_from = 0;
            if (fmt && (!json_is_integer(fmt) || json_integer_value(fmt) != 1))
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"format\": this wan-report reads format 1", log,
                              w.line);
            if (!rc && json_object_get(o, "resumed_from"))
                rc = get_int(&w, o, "", "resumed_from", 0, INT32_MAX, &resumed_from);
            if (!rc) {
                json_t *cfg = json_object_get(o, "config");
                json_t *m = cfg && json_is_object(cfg) ? json_object_get(cfg, "model") : NULL;
                have_header_model = m && json_is_object(m) && !parse_model(&w, m, &header_model);
                wan_error_clear(); /* an incomplete header model only matters if a step lacks its own */
                if (have_header) rewind_to(st, (int)resumed_from);
                have_header = true;
                pos_in_segment = 0;
                (*segments)++;
            }
        } else if (!strcmp(t, "step")) {
            raw_step r;
            char why[512];
            rc = parse_step(&w, o, have_header_model ? &header_model : NULL, &r);
            /* every step line counts here, replaced ones too: one directory, one configuration */
            if (!rc && st->nseen++ == 0) st->first = r;
            else if (!rc && config_differs(&st->first, &r, why, sizeof why))
                rc = wan_fail(WAN_ERR_RUNTIME,
                              "%s: line %d (step %d): %s: this log mixes runs with different configurations; "
                              "wan-report measures one configuration per run directory (give each its own "
                              "train.run_dir)",
                              log, w.line, r.s.step, why);
            if (!rc) {
                if (pos_in_segment++ < warmup) r.s.use = WAN_STEP_WARMUP;
                /* a step number seen again replaces the earlier line and what followed it (an
                 * evaluation of this very step may be logged before or after it) */
                while (st->nsteps && st->steps[st->nsteps - 1].s.step >= r.s.step) st->nsteps--;
                while (st->nevals && st->evals[st->nevals - 1].step > r.s.step) st->nevals--;
                rc = grow((void **)&st->steps, &st->capsteps, st->nsteps + 1, sizeof *st->steps);
                if (!rc) st->steps[st->nsteps++] = r;
            }
        } else if (!strcmp(t, "eval")) {
            long long step;
            json_t *loss = json_object_get(o, "loss");
            rc = get_int(&w, o, "", "step", 1, INT32_MAX, &step);
            if (!rc && !json_is_number(loss))
                rc = wan_fail(WAN_ERR_RUNTIME, "%s: line %d: field \"loss\": expected the mean validation loss (a number)",
                              log, w.line);
            if (!rc) {
                while (st->nevals && st->evals[st->nevals - 1].step >= step) st->nevals--;
                rc = grow((void **)&st->evals, &st->capevals, st->nevals + 1, sizeof *st->evals);
                if (!rc) st->evals[st->nevals++] = (wan_report_eval){(int)step, json_number_value(loss)};
            }
        } else {
            wan_debug("%s: line %d: skipping a line of type \"%s\"", log, w.line, t);
        }
        json_decref(o);
        if (rc) return rc;
    }
    if (show) {
        wan_progress_add(&prog, len - prog.done);
        wan_progress_end(&prog);
    }
    if (!have_header)
        return wan_fail(WAN_ERR_RUNTIME, "%s: no header line: not a step log written by wan-train", log);
    return 0;
}

int wan_report_load_run(const char *run_dir, int warmup, wan_report_run *run) {
    memset(run, 0, sizeof *run);
    snprintf(run->dir, sizeof run->dir, "%s", run_dir);
    if (wan_is_dir(run_dir)) {
        WAN_TRY(wan_path_join(run->log, sizeof run->log, run_dir, "steps.jsonl"));
        if (!wan_path_exists(run->log))
            return wan_fail(WAN_ERR_RUNTIME, "%s: no step log: %s does not exist (wan-train writes it into train.run_dir)",
                            run_dir, run->log);
    } else if (wan_path_exists(run_dir)) {
        snprintf(run->log, sizeof run->log, "%s", run_dir); /* the log itself was named */
    } else {
        return wan_fail(WAN_ERR_RUNTIME, "%s: no such run directory", run_dir);
    }

    char *buf;
    size_t len;
    WAN_TRY(wan_read_file(run->log, &buf, &len));
    if (len == 0) {
        free(buf);
        return wan_fail(WAN_ERR_RUNTIME, "%s: empty: expected a header line and one line per step", run->log);
    }
    standing st = {0};
    int rc = parse_lines(buf, len, run->log, warmup, &st, &run->segments);
    free(buf);
    if (!rc && st.nsteps == 0)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: no step lines: the run logged its header but finished no step", run->log);
    if (rc) {
        free(st.steps);
        free(st.evals);
        return rc;
    }
    const raw_step *first = &st.steps[0];
    snprintf(run->device, sizeof run->device, "%s", first->device);
    run->gpus = first->gpus;
    run->layout = first->layout;
    run->model = first->model;
    run->steps = malloc((size_t)st.nsteps * sizeof *run->steps);
    if (!run->steps) {
        free(st.steps);
        free(st.evals);
        return wan_fail(WAN_ERR_RUNTIME, "out of memory reading %s", run->log);
    }
    for (int i = 0; i < st.nsteps; i++) run->steps[i] = st.steps[i].s;
    run->nsteps = st.nsteps;
    run->evals = st.evals;
    run->nevals = st.nevals;
    free(st.steps);
    return 0;
}

void wan_report_run_free(wan_report_run *run) {
    free(run->steps);
    free(run->evals);
    run->steps = NULL;
    run->evals = NULL;
    run->nsteps = run->nevals = 0;
}
