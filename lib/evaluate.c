#include "evaluate.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "rng.h"

void wan_val_default_sigmas(wan_val_opts *o) {
    static const double s[] = {0.1, 0.3, 0.5, 0.7, 0.9};
    o->nsig = 5;
    memcpy(o->sigmas, s, sizeof s);
}

int wan_validate(wan_model *m, const wan_val_opts *o, wan_val_result *r) {
    memset(r, 0, sizeof *r);
    wan_dist *d = m->dist;
    wan_backend *be = m->be;
    int64_t n = o->ds ? wan_dataset_count(o->ds) : o->max_samples;
    if (o->max_samples > 0 && o->max_samples < n) n = o->max_samples;
    if (n <= 0) return wan_fail(WAN_ERR_USAGE, "validation: no samples");
    if (o->nsig < 1 || o->nsig > WAN_VAL_MAX_SIGMAS) return wan_fail(WAN_ERR_USAGE, "validation: 1 to %d sigmas", WAN_VAL_MAX_SIGMAS);
    int L = m->cfg.text_len, Ct = m->cfg.text_dim;
    /* per-sigma sums of per-sample mean squared errors, reduced at the end */
    double *sums = calloc((size_t)o->nsig, sizeof(double));
    float *text = malloc((size_t)L * Ct * sizeof(float));
    float *lat = NULL, *noise = NULL;
    size_t cap = 0;
    int rc = 0;
    for (int64_t i = d->dp_rank; i < n && !rc; i += d->dp) {
        int C, F, H, W;
        if (o->ds) {
            wan_sample_info info;
            rc = wan_dataset_info(o->ds, i, &info);
            if (rc) break;
            C = info.C, F = info.F, H = info.H, W = info.W;
        } else C = o->synth_shape[0], F = o->synth_shape[1], H = o->synth_shape[2], W = o->synth_shape[3];
        size_t nl = (size_t)C * F * H * W;
        if (nl > cap) {
            free(lat);
            free(noise);
            lat = malloc(nl * sizeof(float));
            noise = malloc(nl * sizeof(float));
            cap = nl;
        }
        if (o->ds) rc = wan_dataset_read(o->ds, i, lat, text, L, true);
        else {
            int tl;
            wan_synth_sample(o->seed, i, C, F, H, W, L, Ct, lat, text, &tl);
        }
        if (rc) break;
        wan_rand_normal_fill(noise, nl, o->seed, WAN_RNG_EVAL, 0, (uint32_t)i, 0);
        for (int k = 0; k < o->nsig && !rc; k++) {
            float sg = (float)o->sigmas[k], coef = 1.0f / (float)nl;
            wan_model_input in = {1, C, F, H, W, lat, noise, &sg, text, &coef, NULL};
            double sq = 0;
            rc = wan_model_forward_pipelined(m, &in, &sq);
            sums[k] += sq / (double)nl;
        }
    }
    free(lat);
    free(noise);
    free(text);
    /* this rank's sums are partial over cp (and tp with sp) and over dp: add them up once per
     * replica (tp ranks without sp hold the same value) */
    if (!rc) {
        float *buf = be->alloc(be, 2 * (size_t)o->nsig * sizeof(float));
        float *h = malloc(2 * (size_t)o->nsig * sizeof(float));
        bool counts = d->sp || d->tp_rank == 0;
        for (int k = 0; k < o->nsig; k++) {
            double v = counts ? sums[k] : 0;
            h[2 * k] = (float)v;
            h[2 * k + 1] = (float)(v - (double)h[2 * k]);
        }
        be->upload(be, buf, h, 2 * (size_t)o->nsig * sizeof(float));
        rc = wan_allreduce(&d->comm->world, buf, 2 * (size_t)o->nsig, WAN_F32, WAN_RED_SUM);
        be->download(be, h, buf, 2 * (size_t)o->nsig * sizeof(float));
        be->free(be, buf);
        r->nsig = o->nsig;
        r->samples = (int)n;
        for (int k = 0; k < o->nsig; k++) {
            r->sigmas[k] = o->sigmas[k];
            r->loss[k] = ((double)h[2 * k] + (double)h[2 * k + 1]) / (double)n;
            r->mean += r->loss[k] / o->nsig;
        }
        free(h);
    }
    free(sums);
    return rc;
}
