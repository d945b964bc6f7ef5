/* wan-eval: run the model on given inputs (the golden entry point any framework can check us
 * with), and the flow-matching validation loss of a checkpoint on held-out data. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "blas_kernels.h"
#include "cli.h"
#include "dataset.h"
#include "error.h"
#include "evaluate.h"
#include "flow.h"
#include "fsutil.h"
#include "log.h"
#include "model_internal.h"
#include "runtime.h"
#include "safetensors.h"
#include "train_state.h"

static const char *prog = "wan-eval";

static void usage(FILE *f) {
    fprintf(f,
            "Usage: wan-eval forward --weights CKPT --inputs IN.safetensors --out OUT.safetensors [options]\n"
            "       wan-eval val --checkpoint CKPT [--data DIR] [options]\n"
            "\n"
            "forward  Run the model on given inputs. IN holds latent [B,16,F,H,W], timestep [B],\n"
            "         context [B,text_len,text_dim] (fp32) and optionally noise [B,16,F,H,W] and\n"
            "         sigma [B]. OUT gets pred [B,16,F,H,W]; with noise and sigma the model sees\n"
            "         x_t = (1-sigma) latent + sigma noise at timestep 1000 sigma, and OUT also gets\n"
            "         loss (mean squared error against noise - latent), loss_weighted (each sample\n"
            "         weighted by 1 + shift sigma as in training) and grad.<key> for every parameter\n"
            "         (the gradient of loss_weighted).\n"
            "val      Flow-matching validation loss at fixed sigmas (0.1 0.3 0.5 0.7 0.9) with fixed\n"
            "         noise per sample: per-sigma and mean loss, printed and written as JSON.\n"
            "\n"
            "Options:\n"
            "  --weights, --checkpoint CKPT  a wan checkpoint directory (or its root: uses latest)\n"
            "  --inputs FILE, --out FILE     forward's input and output\n"
            "  --data DIR                    val: dataset (wan-preprocess output); default: synthetic\n"
            "  --max-samples N               val: at most N samples (default 8 synthetic, all of a dataset)\n"
            "  --json FILE                   val: write the result here (default: print only)\n"
            "  -c, --config FILE             run configuration overriding the checkpoint's (layout, device)\n"
            "  -s, --set K=V                 override a key (repeatable), e.g. --set parallel.tp=2\n"
            "  -n, --nproc N                 val: local ranks\n"
            "  --objective NAME              forward: pretrain|finetune for loss_weighted's shift (default: the\n"
            "                                checkpoint's train.objective)\n"
            "  -h, --help, -V, --version\n"
            "Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.\n");
}

typedef struct {
    const char *cmd, *weights, *inputs, *out, *data, *json, *objective;
    int nproc, max_samples;
    wan_cli_config cc;
} opts_t;

/* The checkpoint's configuration, then --config/--set on top (model keys must not change). */
static int load_config(const opts_t *o, wan_config *cfg) {
    wan_ckpt c;
    WAN_TRY(wan_ckpt_open(&c, o->weights));
    *cfg = c.cfg;
    wan_model_cfg model = c.cfg.model;
    wan_ckpt_close(&c);
    /* evaluation runs on one rank unless told otherwise */
    cfg->parallel.tp = cfg->parallel.cp = cfg->parallel.pp = 1;
    cfg->parallel.sp = false;
    cfg->parallel.vp = 0;
    if (o->cc.path) WAN_TRY(wan_config_load(cfg, o->cc.path));
    for (int i = 0; i < o->cc.nsets; i++) WAN_TRY(wan_config_set(cfg, o->cc.sets[i]));
    char diff[512];
    if (wan_model_cfg_diff(&model, &cfg->model, diff, sizeof diff))
        return wan_fail(WAN_ERR_USAGE, "the model of %s cannot be changed: %s", o->weights, diff);
    return 0;
}

static int need(const wan_st_set *s, const char *name, int ndim, const char *what, const wan_st_tensor **t) {
    *t = wan_st_find(s, name);
    if (!*t) return wan_fail(WAN_ERR_USAGE, "%s: missing tensor '%s' (%s)", s->paths[0], name, what);
    if ((*t)->ndim != ndim)
        return wan_fail(WAN_ERR_USAGE, "%s: tensor '%s' has %d dims, expected %d (%s)", s->paths[0], name, (*t)->ndim,
                        ndim, what);
    return 0;
}

static float *read_f32(const wan_st_set *s, const wan_st_tensor *t, int *rc) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    float *p = malloc(n * sizeof(float));
    if (!p) *rc = wan_fail(WAN_ERR_RUNTIME, "out of memory for %s", t->name);
    else *rc = wan_st_read_f32(s, t, p);
    return p;
}

static int cmd_forward(const opts_t *o) {
    if (!o->weights || !o->inputs || !o->out)
        return wan_fail(WAN_ERR_USAGE, "forward needs --weights, --inputs and --out (see --help)");
    wan_config cfg;
    WAN_TRY(load_config(o, &cfg));
    wan_st_set in;
    WAN_TRY(wan_st_open(&in, o->inputs, NULL));
    const wan_st_tensor *tl, *tt, *tc, *tn = wan_st_find(&in, "noise"), *ts = wan_st_find(&in, "sigma");
    int rc = need(&in, "latent", 5, "[B, C, F, H, W]", &tl);
    if (!rc) rc = need(&in, "context", 3, "[B, text_len, text_dim]", &tc);
    bool flow = tn && ts;
    tt = wan_st_find(&in, "timestep");
    if (!rc && !flow && !tt) rc = wan_fail(WAN_ERR_USAGE, "%s: needs 'timestep' [B] (or 'noise' and 'sigma')", o->inputs);
    int B = rc ? 0 : (int)tl->shape[0], C = rc ? 0 : (int)tl->shape[1];
    int F = rc ? 0 : (int)tl->shape[2], H = rc ? 0 : (int)tl->shape[3], W = rc ? 0 : (int)tl->shape[4];
    if (!rc && (tc->shape[0] != B || tc->shape[1] != cfg.model.text_len || tc->shape[2] != cfg.model.text_dim))
        rc = wan_fail(WAN_ERR_USAGE, "%s: context is [%lld, %lld, %lld], expected [%d, %d, %d] (model.text_len, text_dim)",
                      o->inputs, (long long)tc->shape[0], (long long)tc->shape[1], (long long)tc->shape[2], B,
                      cfg.model.text_len, cfg.model.text_dim);
    if (!rc && flow && (tn->ndim != 5 || memcmp(tn->shape, tl->shape, 5 * sizeof(int64_t)) || ts->ndim != 1 ||
                        ts->shape[0] != B))
        rc = wan_fail(WAN_ERR_USAGE, "%s: noise must have latent's shape and sigma must be [%d]", o->inputs, B);
    if (!rc && tt && (tt->ndim != 1 || tt->shape[0] != B))
        rc = wan_fail(WAN_ERR_USAGE, "%s: timestep must be [%d]", o->inputs, B);
    float *lat = NULL, *ctx = NULL, *noise = NULL, *sigma = NULL, *tstep = NULL;
    if (!rc) lat = read_f32(&in, tl, &rc);
    if (!rc) ctx = read_f32(&in, tc, &rc);
    if (!rc && flow) noise = read_f32(&in, tn, &rc);
    if (!rc && flow) sigma = read_f32(&in, ts, &rc);
    if (!rc && tt && !flow) tstep = read_f32(&in, tt, &rc);
    int64_t lat_shape[5] = {B, C, F, H, W};
    wan_st_close(&in); /* tl, tc... point into it: not used below */

    wan_runtime rt;
    memset(&rt, 0, sizeof rt);
    wan_model m;
    memset(&m, 0, sizeof m);
    if (!rc) rc = wan_runtime_init(&rt, &cfg, 1);
    if (!rc) rc = wan_model_create(&m, &cfg.model, rt.be, &rt.dist, WAN_RECOMPUTE_NONE, -1, false);
    if (!rc) rc = wan_state_load(&m, NULL, o->weights, NULL, NULL);
    wan_flow_preset fp;
    if (!rc && wan_flow_preset_get(o->objective ? o->objective : cfg.train.objective, &fp))
        rc = wan_fail(WAN_ERR_USAGE, "--objective %s: expected pretrain or finetune", o->objective);
    size_t nl = (size_t)C * F * H * W;
    float *coef = calloc((size_t)B + 1, sizeof(float));
    double *sq = calloc((size_t)B + 1, sizeof(double));
    double loss = 0, loss_w = 0;
    if (!rc && flow)
        for (int b = 0; b < B; b++) coef[b] = (float)(wan_flow_weight(&fp, sigma[b]) / ((double)B * nl));
    wan_model_input mi = {B, C, F, H, W, lat, noise, sigma, ctx, flow ? coef : NULL, tstep};
    if (!rc) rc = wan_model_forward(&m, &mi, sq, NULL);
    if (!rc && flow) {
        for (int b = 0; b < B; b++) {
            loss += sq[b] / ((double)B * nl);
            loss_w += wan_flow_weight(&fp, sigma[b]) * sq[b] / ((double)B * nl);
        }
        rc = wan_model_backward(&m);
    }
    /* outputs: pred back in the latent layout, then loss and gradients */
    float *pred = NULL, *grads = NULL;
    if (!rc) {
        wan_backend *be = rt.be;
        float *dlat = be->alloc(be, (size_t)B * nl * sizeof(float));
        const int *ps = cfg.model.patch_size;
        wan_tokens tk = wan_tk_local(&m);
        be->ops->unpatchify(be, dlat, m.a->pred, B, C, F, H, W, ps[0], ps[1], ps[2], tk, m.sh.S);
        pred = malloc((size_t)B * nl * sizeof(float));
        be->download(be, pred, dlat, (size_t)B * nl * sizeof(float));
        be->free(be, dlat);
        if (flow) {
            grads = malloc((size_t)m.ps.total * sizeof(float));
            be->download(be, grads, m.g, (size_t)m.ps.total * sizeof(float));
        }
    }
    if (!rc) {
        int nt = 1 + (flow ? 2 + m.ps.n : 0);
        wan_st_tensor *decl = calloc((size_t)nt, sizeof *decl);
        snprintf(decl[0].name, sizeof decl[0].name, "pred");
        decl[0].dtype = WAN_F32;
        decl[0].ndim = 5;
        memcpy(decl[0].shape, lat_shape, sizeof lat_shape);
        if (flow) {
            snprintf(decl[1].name, sizeof decl[1].name, "loss");
            snprintf(decl[2].name, sizeof decl[2].name, "loss_weighted");
            for (int i = 1; i <= 2; i++) decl[i].dtype = WAN_F32, decl[i].ndim = 1, decl[i].shape[0] = 1;
            for (int i = 0; i < m.ps.n; i++) {
                wan_st_tensor *d = &decl[3 + i];
                snprintf(d->name, sizeof d->name, "grad.%s", m.ps.p[i].name);
                d->dtype = WAN_F32;
                d->ndim = m.ps.p[i].ndim;
                memcpy(d->shape, m.ps.p[i].shape, sizeof m.ps.p[i].shape);
            }
        }
        wan_st_writer *w;
        rc = wan_st_writer_open(&w, o->out, decl, nt, NULL);
        if (!rc) rc = wan_st_writer_write(w, 0, 0, pred, (uint64_t)B * nl * sizeof(float));
        if (!rc && flow) {
            float l1 = (float)loss, l2 = (float)loss_w;
            rc = wan_st_writer_write(w, 1, 0, &l1, sizeof l1);
            if (!rc) rc = wan_st_writer_write(w, 2, 0, &l2, sizeof l2);
            for (int i = 0; i < m.ps.n && !rc; i++)
                rc = wan_st_writer_write(w, 3 + i, 0, grads + m.ps.p[i].offset, (uint64_t)m.ps.p[i].numel * sizeof(float));
        }
        if (!rc) rc = wan_st_writer_close(w);
        else wan_st_writer_abort(w);
        free(decl);
        if (!rc)
            wan_info("wrote %s: pred%s", o->out,
                     flow ? ", loss, loss_weighted and the gradient of every parameter" : "");
        if (!rc && flow) wan_info("loss %.9g, loss_weighted %.9g", loss, loss_w);
    }
    free(pred);
    free(grads);
    free(coef);
    free(sq);
    free(lat);
    free(ctx);
    free(noise);
    free(sigma);
    free(tstep);
    if (m.be) wan_model_destroy(&m);
    wan_runtime_fini(&rt);
    return rc;
}

static int cmd_val(const opts_t *o) {
    if (!o->weights) return wan_fail(WAN_ERR_USAGE, "val needs --checkpoint (see --help)");
    wan_config cfg;
    WAN_TRY(load_config(o, &cfg));
    wan_runtime rt;
    wan_model m;
    memset(&m, 0, sizeof m);
    wan_dataset *ds = NULL;
    int rc = wan_runtime_init(&rt, &cfg, o->nproc);
    if (!rc && o->data) rc = wan_dataset_open(o->data, &ds);
    if (!rc) rc = wan_model_create(&m, &cfg.model, rt.be, &rt.dist, WAN_RECOMPUTE_NONE, -1, false);
    if (!rc) rc = wan_state_load(&m, NULL, o->weights, NULL, NULL);
    wan_val_opts vo;
    memset(&vo, 0, sizeof vo);
    wan_val_default_sigmas(&vo);
    vo.ds = ds;
    vo.seed = (uint64_t)cfg.train.seed ^ 0x5eedULL;
    vo.max_samples = o->max_samples ? o->max_samples : (ds ? 0 : 8);
    vo.synth_shape[0] = cfg.model.in_dim;
    for (int i = 0; i < 3; i++) vo.synth_shape[1 + i] = cfg.train.latent_shape[i];
    if (!rc && !ds && !cfg.train.latent_shape[0])
        rc = wan_fail(WAN_ERR_USAGE, "synthetic validation needs train.latent_shape (or give --data)");
    wan_val_result r;
    if (!rc) rc = wan_validate(&m, &vo, &r);
    if (!rc && rt.boot.rank == 0) {
        printf("validation of %s on %s (%d samples)\n", o->weights, o->data ? o->data : "synthetic data", r.samples);
        printf("  sigma   loss\n");
        for (int k = 0; k < r.nsig; k++) printf("  %.2f    %.9f\n", r.sigmas[k], r.loss[k]);
        printf("  mean    %.9f\n", r.mean);
        if (o->json) {
            json_t *s = json_array(), *v = json_array();
            for (int k = 0; k < r.nsig; k++) {
                json_array_append_new(s, json_real(r.sigmas[k]));
                json_array_append_new(v, json_real(r.loss[k]));
            }
            json_t *root = json_pack("{s:s,s:s,s:i,s:o,s:o,s:f}", "checkpoint", o->weights, "data",
                                     o->data ? o->data : "synthetic", "samples", r.samples, "sigmas", s,
                                     "loss_by_sigma", v, "loss", r.mean);
            char *text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(12));
            json_decref(root);
            rc = wan_write_file_atomic(o->json, text, strlen(text));
            free(text);
        }
    }
    if (m.be) wan_model_destroy(&m);
    if (ds) wan_dataset_close(ds);
    wan_runtime_fini(&rt);
    return rc;
}

int main(int argc, char **argv) {
    wan_blas_ensure_kernels(argv);
    if (argc < 2) {
        usage(stderr);
        return WAN_ERR_USAGE;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version")) {
        wan_cli_version(prog);
        return 0;
    }
    opts_t o;
    memset(&o, 0, sizeof o);
    o.cmd = argv[1];
    if (strcmp(o.cmd, "forward") && strcmp(o.cmd, "val"))
        return wan_cli_usage_error(prog, "unknown command '%s' (forward or val)", o.cmd);
    static const struct option lo[] = {{"weights", required_argument, 0, 'w'},
                                       {"checkpoint", required_argument, 0, 'w'},
                                       {"inputs", required_argument, 0, 'i'},
                                       {"out", required_argument, 0, 'o'},
                                       {"data", required_argument, 0, 'd'},
                                       {"json", required_argument, 0, 'j'},
                                       {"max-samples", required_argument, 0, 'm'},
                                       {"objective", required_argument, 0, 'O'},
                                       {"config", required_argument, 0, 'c'},
                                       {"set", required_argument, 0, 's'},
                                       {"nproc", required_argument, 0, 'n'},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "c:s:n:h", lo, NULL)) != -1) {
        switch (c) {
        case 'w': o.weights = optarg; break;
        case 'i': o.inputs = optarg; break;
        case 'o': o.out = optarg; break;
        case 'd': o.data = optarg; break;
        case 'j': o.json = optarg; break;
        case 'm': o.max_samples = atoi(optarg); break;
        case 'O': o.objective = optarg; break;
        case 'c': o.cc.path = optarg; break;
        case 's':
            if (wan_cli_add_set(&o.cc, prog, optarg)) return WAN_ERR_USAGE;
            break;
        case 'n': o.nproc = atoi(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return WAN_ERR_USAGE;
        }
    }
    if (optind < argc) return wan_cli_usage_error(prog, "unexpected argument '%s'", argv[optind]);
    int rc = !strcmp(o.cmd, "forward") ? cmd_forward(&o) : cmd_val(&o);
    return rc ? wan_cli_fail(prog, rc) : 0;
}
