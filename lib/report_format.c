/* The report as text: the reference table's markdown exactly (grouped by "#### System: ..."),
 * CSV (one row per run, and per run x reference row with --compare) and JSON. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "flops.h"
#include "report.h"

const char wan_report_md_header[] = "| Model | #-GPUs | GBS | MBS | Sequence Length | FSDP | TP | SP | PP | CP | VP | EP "
                                    "| Tokens / sec / GPU | Model TFLOP / sec / GPU |";
const char wan_report_md_rule[] = "|-------|--------|-----|-----|-----------------|------|----|----|----|----|----|----"
                                  "|-----------------------|-------------------------|";

#define MAX_REFS 16

void wan_report_fmt_grouped(double v, char *buf, size_t n) {
    char digits[64];
    snprintf(digits, sizeof digits, "%.2f", fabs(v));
    char *dot = strchr(digits, '.');
    int int_len = (int)(dot - digits);
    size_t o = 0;
    if (v < 0 && o + 1 < n) buf[o++] = '-';
    for (int i = 0; i < int_len && o + 1 < n; i++) {
        if (i > 0 && (int_len - i) % 3 == 0 && o + 1 < n) buf[o++] = ',';
        if (o + 1 < n) buf[o++] = digits[i];
    }
    for (const char *p = dot; *p && o + 1 < n; p++) buf[o++] = *p;
    buf[o] = 0;
}

/* 1.65907e+11 -> "1.65907e11" (with `digits` decimals), as the reference page writes it */
static void fmt_sci(double v, int digits, char *buf, size_t n) {
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%.*e", digits, v);
    char *e = strchr(tmp, 'e');
    if (!e) {
        snprintf(buf, n, "%.20s", tmp);
        return;
    }
    *e = 0;
    int exp = atoi(e + 1);
    snprintf(buf, n, "%.20se%d", tmp, exp);
}

/* Markdown table cells: '|' would end the cell. */
static void md_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '|') fputc('\\', f);
        fputc(*s == '\n' ? ' ' : *s, f);
    }
}

static void md_int(FILE *f, int v) {
    if (v < 0) fputs("|-", f);
    else fprintf(f, "|%d", v);
}

static void md_layout_cells(FILE *f, int gpus, int gbs, int mbs, int seq, int fsdp, int tp, int sp, int pp, int cp,
                            int vp, int ep) {
    md_int(f, gpus);
    md_int(f, gbs);
    md_int(f, mbs);
    md_int(f, seq);
    md_int(f, fsdp);
    md_int(f, tp);
    md_int(f, sp);
    md_int(f, pp);
    md_int(f, cp);
    md_int(f, vp);
    md_int(f, ep);
}

static void md_run_row(FILE *f, const wan_report_run *r, const wan_report_stats *s) {
    const wan_report_layout *l = &r->layout;
    char tflops[64];
    wan_report_fmt_grouped(s->tflops_per_gpu, tflops, sizeof tflops);
    fputc('|', f);
    md_text(f, s->model_name);
    md_layout_cells(f, r->gpus, l->gbs, l->mbs, l->seq_len, l->fsdp, l->tp, l->sp, l->pp, l->cp, l->vp, l->ep);
    fprintf(f, "|%.2f|%s|\n", s->tokens_per_sec_per_gpu, tflops);
}

static void md_ref_row(FILE *f, const wan_report_reference *ref) {
    char tflops[64];
    wan_report_fmt_grouped(ref->tflops_per_gpu, tflops, sizeof tflops);
    fputc('|', f);
    md_text(f, ref->model);
    fputs(" [", f);
    md_text(f, ref->source);
    fputc(']', f);
    md_layout_cells(f, ref->gpus, ref->gbs, ref->mbs, ref->seq_len, ref->fsdp, ref->tp, ref->sp, ref->pp, ref->cp,
                    ref->vp, ref->ep);
    if (ref->tokens_per_sec_per_gpu > 0) fprintf(f, "|%.2f", ref->tokens_per_sec_per_gpu);
    else fputs("|-", f);
    fprintf(f, "|%s|\n", tflops);
}

static void md_compare(FILE *f, const wan_report_doc *d, const char *system) {
    const wan_report_reference *refs[MAX_REFS];
    int nrefs = 0;
    for (int i = 0; i < d->nruns; i++) {
        if (strcmp(d->stats[i].system, system)) continue;
        const wan_report_reference *found[MAX_REFS];
        int n = wan_report_references(system, d->stats[i].model_name, d->runs[i].layout.seq_len, found, MAX_REFS);
        for (int k = 0; k < n; k++) {
            bool seen = false;
            for (int j = 0; j < nrefs; j++) seen |= refs[j] == found[k];
            if (!seen && nrefs < MAX_REFS) refs[nrefs++] = found[k];
        }
    }
    if (!nrefs) {
        fprintf(f, "No published reference rows for these runs on ");
        md_text(f, system);
        fprintf(f, " (references: Wan 2.1 14B at 37440 tokens on DGX-GB200, DGX-GB300, DGX-B200, DGX-H100).\n\n");
        return;
    }
    fprintf(f, "Published reference rows (--compare):\n\n%s\n%s\n", wan_report_md_header, wan_report_md_rule);
    for (int j = 0; j < nrefs; j++) md_ref_row(f, refs[j]);
    fprintf(f, "\n| Run | Reference | Tokens / sec / GPU ratio | Model TFLOP / sec / GPU ratio |\n"
               "|-----|-----------|--------------------------|-------------------------------|\n");
    bool derived = false;
    for (int i = 0; i < d->nruns; i++) {
        if (strcmp(d->stats[i].system, system)) continue;
        const wan_report_reference *found[MAX_REFS];
        int n = wan_report_references(system, d->stats[i].model_name, d->runs[i].layout.seq_len, found, MAX_REFS);
        for (int k = 0; k < n; k++) {
            double tr, fr;
            wan_report_ratios(&d->stats[i], found[k], &tr, &fr);
            fputc('|', f);
            md_text(f, d->runs[i].dir);
            fputc('|', f);
            md_text(f, found[k]->source);
            if (found[k]->gpus > 0) fprintf(f, ", %d GPUs", found[k]->gpus);
            fprintf(f, "|%.3f%s|%.3f|\n", tr, found[k]->tokens_per_sec_per_gpu > 0 ? "" : "*", fr);
            derived |= !(found[k]->tokens_per_sec_per_gpu > 0);
        }
    }
    fprintf(f, "\nRatios are this run over the reference. Tokens/s compares like with like; the Model TFLOP/s "
               "ratio puts our formula's count against the reference's own.%s\n\n",
            derived ? " *: the reference publishes TFLOP/s only; its tokens/s is taken as TFLOP/s / 1.65907e11 "
                      "(the FLOPs per token its first version implies)."
                    : "");
}

static void md_mfu(FILE *f, const wan_report_stats *s) {
    if (isnan(s->mfu)) fputs("n/a (peak not known: --peak)", f);
    else fprintf(f, "%.2f%% of %.1f", 100 * s->mfu, s->peak_tflops);
}

static void render_md(FILE *f, const wan_report_doc *d) {
    /* systems in order of first appearance, the runs of each in command-line order */
    for (int i = 0; i < d->nruns; i++) {
        bool first = true;
        for (int j = 0; j < i; j++) first &= strcmp(d->stats[j].system, d->stats[i].system) != 0;
        if (!first) continue;
        fprintf(f, "#### System: ");
        md_text(f, d->stats[i].system);
        fprintf(f, "\n\n%s\n%s\n", wan_report_md_header, wan_report_md_rule);
        for (int j = i; j < d->nruns; j++)
            if (!strcmp(d->stats[j].system, d->stats[i].system)) md_run_row(f, &d->runs[j], &d->stats[j]);
        fputc('\n', f);
        if (d->compare) md_compare(f, d, d->stats[i].system);
    }

    fprintf(f, "#### Runs\n\n"
               "Measured: every step except the first %d after the start and after each resume (--warmup) and "
               "those that saved a checkpoint or ran an evaluation. MFU is against the peak dense BF16 "
               "TFLOP/s per GPU.\n\n",
            d->warmup);
    fprintf(f, "| Run | System | Model | Device | Steps measured | Skipped: warm-up / checkpoint / eval "
               "| Step time median (s) | Step time p10-p90 (s) | MFU |\n"
               "|-----|--------|-------|--------|----------------|--------------------------------------"
               "|----------------------|-----------------------|-----|\n");
    for (int i = 0; i < d->nruns; i++) {
        const wan_report_stats *s = &d->stats[i];
        fputc('|', f);
        md_text(f, d->runs[i].dir);
        fputc('|', f);
        md_text(f, s->system);
        fputc('|', f);
        md_text(f, s->model_name);
        fputc('|', f);
        md_text(f, d->runs[i].device);
        fprintf(f, "|%d of %d|%d / %d / %d|%.3f|%.3f-%.3f (%.1f%%)|", s->steps_used, s->steps_total, s->skipped_warmup,
                s->skipped_ckpt, s->skipped_eval, s->step_time_median, s->step_time_p10, s->step_time_p90,
                100 * s->step_time_spread);
        md_mfu(f, s);
        fputs("|\n", f);
    }

    wan_model_cfg big;
    wan_flops_wan21_14b(&big);
    double formula = wan_train_flops_per_token(&big, WAN_FLOPS_SEED_SEQ_LEN);
    char seed_s[32], formula_s[32];
    fmt_sci(WAN_FLOPS_PER_TOKEN_SEED_14B, 5, seed_s, sizeof seed_s);
    fmt_sci(formula, 4, formula_s, sizeof formula_s);
    fprintf(f, "\n#### Model FLOPs\n\n"
               "Model TFLOP/s are counted with the %s: %s FLOPs per token for Wan 2.1 14B at %d tokens. "
               "NeMo DFM's published table implies %s (its Model TFLOP/s over its tokens/s), %.2f%% more; "
               "the last column restates each Wan 2.1 14B run at %d tokens at that figure.\n\n",
            WAN_FLOPS_FORMULA_NAME, formula_s, WAN_FLOPS_SEED_SEQ_LEN, seed_s,
            100 * (WAN_FLOPS_PER_TOKEN_SEED_14B / formula - 1), WAN_FLOPS_SEED_SEQ_LEN);
    fprintf(f, "| Run | FLOPs / token (formula) | Model TFLOP / sec / GPU (formula) "
               "| Model TFLOP / sec / GPU at 1.65907e11 FLOPs / token |\n"
               "|-----|-------------------------|-----------------------------------"
               "|----------------------------------------------------|\n");
    for (int i = 0; i < d->nruns; i++) {
        const wan_report_stats *s = &d->stats[i];
        char a[64], b[64];
        wan_report_fmt_grouped(s->tflops_per_gpu, a, sizeof a);
        fputc('|', f);
        md_text(f, d->runs[i].dir);
        char fpt[32];
        fmt_sci(s->flops_per_token, 4, fpt, sizeof fpt);
        fprintf(f, "|%s|%s|", fpt, a);
        if (isnan(s->seed_tflops_per_gpu)) {
            fputs("n/a (the figure is for Wan 2.1 14B at 37440 tokens)|\n", f);
        } else {
            wan_report_fmt_grouped(s->seed_tflops_per_gpu, b, sizeof b);
            fprintf(f, "%s|\n", b);
        }
    }
}

/* ---- CSV ---- */

static void csv_text(FILE *f, const char *s) {
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void csv_int(FILE *f, int v) {
    if (v >= 0) fprintf(f, "%d", v);
    fputc(',', f);
}

static void csv_num(FILE *f, const char *fmt, double v) {
    if (isfinite(v)) fprintf(f, fmt, v);
    fputc(',', f);
}

static const char csv_header[] =
    "kind,run,system,model,gpus,gbs,mbs,seq_len,fsdp,tp,sp,pp,cp,vp,ep,tokens_per_sec_per_gpu,"
    "model_tflops_per_sec_per_gpu,model_tflops_at_seed_flops_per_token,flops_per_token,step_time_median_s,"
    "step_time_p10_s,step_time_p90_s,steps_measured,steps_warmup,steps_ckpt,steps_eval,mfu,peak_tflops,device,"
    "source,tokens_ratio,tflops_ratio\n";

static void render_csv(FILE *f, const wan_report_doc *d) {
    fputs(csv_header, f);
    for (int i = 0; i < d->nruns; i++) {
        const wan_report_run *r = &d->runs[i];
        const wan_report_stats *s = &d->stats[i];
        const wan_report_layout *l = &r->layout;
        fputs("run,", f);
        csv_text(f, r->dir);
        fputc(',', f);
        csv_text(f, s->system);
        fputc(',', f);
        csv_text(f, s->model_name);
        fputc(',', f);
        int cells[] = {r->gpus, l->gbs, l->mbs, l->seq_len, l->fsdp, l->tp, l->sp, l->pp, l->cp, l->vp, l->ep};
        for (size_t k = 0; k < sizeof cells / sizeof cells[0]; k++) csv_int(f, cells[k]);
        csv_num(f, "%.2f", s->tokens_per_sec_per_gpu);
        csv_num(f, "%.2f", s->tflops_per_gpu);
        csv_num(f, "%.2f", s->seed_tflops_per_gpu);
        csv_num(f, "%.6e", s->flops_per_token);
        csv_num(f, "%.4f", s->step_time_median);
        csv_num(f, "%.4f", s->step_time_p10);
        csv_num(f, "%.4f", s->step_time_p90);
        fprintf(f, "%d,%d,%d,%d,", s->steps_used, s->skipped_warmup, s->skipped_ckpt, s->skipped_eval);
        csv_num(f, "%.4f", s->mfu);
        csv_num(f, "%.1f", s->peak_tflops > 0 ? s->peak_tflops : NAN);
        csv_text(f, r->device);
        fputs(",,,\n", f);
        if (!d->compare) continue;
        const wan_report_reference *refs[MAX_REFS];
        int n = wan_report_references(s->system, s->model_name, l->seq_len, refs, MAX_REFS);
        for (int k = 0; k < n; k++) {
            const wan_report_reference *ref = refs[k];
            double tr, fr;
            wan_report_ratios(s, ref, &tr, &fr);
            fputs("reference,", f);
            csv_text(f, r->dir);
            fputc(',', f);
            csv_text(f, ref->system);
            fputc(',', f);
            csv_text(f, ref->model);
            fputc(',', f);
            int rc[] = {ref->gpus, ref->gbs, ref->mbs, ref->seq_len, ref->fsdp, ref->tp,
                        ref->sp,   ref->pp,  ref->cp,  ref->vp,      ref->ep};
            for (size_t c = 0; c < sizeof rc / sizeof rc[0]; c++) csv_int(f, rc[c]);
            csv_num(f, "%.2f", ref->tokens_per_sec_per_gpu > 0 ? ref->tokens_per_sec_per_gpu : NAN);
            csv_num(f, "%.2f", ref->tflops_per_gpu);
            fputs(",,,,,,,,,,,,", f); /* seed TFLOP/s .. device: not published */
            csv_text(f, ref->source);
            fputc(',', f);
            csv_num(f, "%.4f", tr);
            if (isfinite(fr)) fprintf(f, "%.4f", fr);
            fputc('\n', f);
        }
    }
}

/* ---- JSON ---- */

static json_t *jnum(double v, int decimals) {
    if (!isfinite(v)) return json_null();
    double scale = pow(10, decimals);
    return json_real(round(v * scale) / scale);
}

static json_t *jint_or_null(int v) { return v >= 0 ? json_integer(v) : json_null(); }

static json_t *json_layout(int gpus, int gbs, int mbs, int seq, int fsdp, int tp, int sp, int pp, int cp, int vp,
                           int ep) {
    json_t *o = json_object();
    json_object_set_new(o, "gpus", jint_or_null(gpus));
    json_object_set_new(o, "gbs", jint_or_null(gbs));
    json_object_set_new(o, "mbs", jint_or_null(mbs));
    json_object_set_new(o, "seq_len", jint_or_null(seq));
    json_object_set_new(o, "fsdp", jint_or_null(fsdp));
    json_object_set_new(o, "tp", jint_or_null(tp));
    json_object_set_new(o, "sp", jint_or_null(sp));
    json_object_set_new(o, "pp", jint_or_null(pp));
    json_object_set_new(o, "cp", jint_or_null(cp));
    json_object_set_new(o, "vp", jint_or_null(vp));
    json_object_set_new(o, "ep", jint_or_null(ep));
    return o;
}

static json_t *json_run(const wan_report_doc *d, int i) {
    const wan_report_run *r = &d->runs[i];
    const wan_report_stats *s = &d->stats[i];
    const wan_report_layout *l = &r->layout;
    json_t *o = json_object();
    json_object_set_new(o, "run", json_string(r->dir));
    json_object_set_new(o, "log", json_string(r->log));
    json_object_set_new(o, "system", json_string(s->system));
    json_object_set_new(o, "model", json_string(s->model_name));
    json_object_set_new(o, "device", json_string(r->device));
    json_object_set_new(o, "layout", json_layout(r->gpus, l->gbs, l->mbs, l->seq_len, l->fsdp, l->tp, l->sp, l->pp,
                                                 l->cp, l->vp, l->ep));
    json_object_set_new(o, "tokens_per_sec_per_gpu", jnum(s->tokens_per_sec_per_gpu, 2));
    json_object_set_new(o, "model_tflops_per_sec_per_gpu", jnum(s->tflops_per_gpu, 2));
    json_object_set_new(o, "model_tflops_at_seed_flops_per_token", jnum(s->seed_tflops_per_gpu, 2));
    json_object_set_new(o, "flops_per_token", json_real(s->flops_per_token));
    json_object_set_new(o, "mfu", jnum(s->mfu, 4));
    json_object_set_new(o, "peak_tflops", s->peak_tflops > 0 ? json_real(s->peak_tflops) : json_null());
    json_object_set_new(o, "peak_source", s->peak_source ? json_string(s->peak_source) : json_null());
    json_t *t = json_object();
    json_object_set_new(t, "median", jnum(s->step_time_median, 4));
    json_object_set_new(t, "p10", jnum(s->step_time_p10, 4));
    json_object_set_new(t, "p90", jnum(s->step_time_p90, 4));
    json_object_set_new(t, "min", jnum(s->step_time_min, 4));
    json_object_set_new(t, "max", jnum(s->step_time_max, 4));
    json_object_set_new(t, "spread", jnum(s->step_time_spread, 4));
    json_object_set_new(o, "step_time_s", t);
    json_t *n = json_object();
    json_object_set_new(n, "total", json_integer(s->steps_total));
    json_object_set_new(n, "measured", json_integer(s->steps_used));
    json_object_set_new(n, "warmup", json_integer(s->skipped_warmup));
    json_object_set_new(n, "ckpt", json_integer(s->skipped_ckpt));
    json_object_set_new(n, "eval", json_integer(s->skipped_eval));
    json_object_set_new(o, "steps", n);
    json_object_set_new(o, "resumes", json_integer(r->segments > 0 ? r->segments - 1 : 0));
    if (d->compare) {
        json_t *arr = json_array();
        const wan_report_reference *refs[MAX_REFS];
        int nrefs = wan_report_references(s->system, s->model_name, l->seq_len, refs, MAX_REFS);
        for (int k = 0; k < nrefs; k++) {
            const wan_report_reference *ref = refs[k];
            double tr, fr;
            wan_report_ratios(s, ref, &tr, &fr);
            json_t *e = json_object();
            json_object_set_new(e, "source", json_string(ref->source));
            json_object_set_new(e, "system", json_string(ref->system));
            json_object_set_new(e, "model", json_string(ref->model));
            json_object_set_new(e, "layout", json_layout(ref->gpus, ref->gbs, ref->mbs, ref->seq_len, ref->fsdp,
                                                         ref->tp, ref->sp, ref->pp, ref->cp, ref->vp, ref->ep));
            json_object_set_new(e, "tokens_per_sec_per_gpu",
                                ref->tokens_per_sec_per_gpu > 0 ? jnum(ref->tokens_per_sec_per_gpu, 2) : json_null());
            json_object_set_new(e, "model_tflops_per_sec_per_gpu", jnum(ref->tflops_per_gpu, 2));
            json_object_set_new(e, "tokens_ratio", jnum(tr, 4));
            json_object_set_new(e, "tflops_ratio", jnum(fr, 4));
            json_array_append_new(arr, e);
        }
        json_object_set_new(o, "references", arr);
    }
    return o;
}

static int render_json(FILE *f, const wan_report_doc *d) {
    json_t *root = json_object();
    json_t *fl = json_object();
    json_object_set_new(fl, "formula", json_string(WAN_FLOPS_FORMULA_NAME));
    json_object_set_new(fl, "seed_flops_per_token_wan21_14b_37440", json_real(WAN_FLOPS_PER_TOKEN_SEED_14B));
    json_object_set_new(root, "flops", fl);
    json_object_set_new(root, "warmup", json_integer(d->warmup));
    json_t *runs = json_array();
    for (int i = 0; i < d->nruns; i++) json_array_append_new(runs, json_run(d, i));
    json_object_set_new(root, "runs", runs);
    int rc = json_dumpf(root, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
    json_decref(root);
    fputc('\n', f);
    return rc ? wan_fail(WAN_ERR_RUNTIME, "could not encode the JSON report") : 0;
}

int wan_report_render(const wan_report_doc *doc, wan_report_format fmt, char **out) {
    size_t len;
    *out = NULL;
    FILE *f = open_memstream(out, &len);
    if (!f) return wan_fail_errno(WAN_ERR_RUNTIME, "open_memstream");
    int rc = 0;
    switch (fmt) {
    case WAN_REPORT_MD: render_md(f, doc); break;
    case WAN_REPORT_CSV: render_csv(f, doc); break;
    case WAN_REPORT_JSON: rc = render_json(f, doc); break;
    }
    if (fclose(f) && !rc) rc = wan_fail_errno(WAN_ERR_RUNTIME, "writing the report");
    if (rc) {
        free(*out);
        *out = NULL;
    }
    return rc;
}
