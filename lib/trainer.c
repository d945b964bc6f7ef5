/* The training job: bootstrap, configuration, backend and transport, model, optimizer, data,
 * then steps of gradient accumulation, with step logs, evaluation, checkpoints and
 * preemption handling. */
#include "trainer.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bootstrap.h"
#include "dataset.h"
#include "dist.h"
#include "error.h"
#include "evaluate.h"
#include "flow.h"
#include "fsutil.h"
#include "log.h"
#include "memory_plan.h"
#include "model.h"
#include "optim.h"
#include "runtime.h"
#include "steplog.h"
#include "train_state.h"

static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) {
    /* finish the step, save, exit for requeue; a second signal changes nothing */
    if (!stop_signal) stop_signal = sig;
}

static void install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

typedef struct {
    wan_config cfg;
    wan_runtime rt;
    wan_model model;
    wan_optim opt;
    wan_dataset *ds, *eval_ds;
    wan_loader *loader;
    wan_steplog log;
    wan_flow_preset flow;
    char ckpt_root[WAN_PATH_MAX];
    float *stop_flag; /* backend scalar for agreeing on a stop */
} job;

static int world_max(job *j, float *v) {
    wan_backend *be = j->rt.be;
    be->upload(be, j->stop_flag, v, sizeof *v);
    WAN_TRY(wan_allreduce(&j->rt.comm->world, j->stop_flag, 1, WAN_F32, WAN_RED_MAX));
    be->download(be, v, j->stop_flag, sizeof *v);
    return 0;
}

/* This stage's memory plan (wan-train --check's), where something depends on it: how many blocks
 * recompute under train.memory_budget_gib, and on a GPU, before anything large is allocated, a
 * plan that cannot fit is a configuration error named with what to change (a budget above the
 * GPU's memory a warning). *recompute_layers: what the model is created with. */
static int plan_stage_memory(job *j, int *recompute_layers) {
    const wan_config *cfg = &j->cfg;
    const wan_train_cfg *t = &cfg->train;
    const wan_dist *d = &j->rt.dist;
    size_t dev = j->rt.be->mem_device;
    const int *ls = t->latent_shape;
    bool budget = t->recompute && t->recompute_layers < 0 && t->memory_budget_gib > 0;
    *recompute_layers = t->recompute_layers;
    if (!(budget || dev) || !ls[0] || !ls[1] || !ls[2]) return 0; /* a budget needs the shape (validated) */
    const double GiB = 1073741824.0;
    bool first_of_stage = d->tp_rank == 0 && d->cp_rank == 0 && d->dp_rank == 0;
    if (dev && first_of_stage && t->memory_budget_gib * GiB > (double)dev)
        wan_warn("train.memory_budget_gib = %g exceeds this GPU's %.1f GiB (%s): the plan may not fit",
                 t->memory_budget_gib, dev / GiB, j->rt.be->device_name);
    wan_memory_plan_t p;
    WAN_TRY(wan_memory_plan(cfg, d->world, !strcmp(j->rt.be->name, "cuda"), d->pp_rank, &p));
    if (t->recompute) *recompute_layers = p.recomputing; /* the stage's first p.recomputing blocks */
    if (dev && p.total > dev)
        return wan_fail(WAN_ERR_USAGE,
                        "pipeline stage %d plans %.2f GiB per GPU (training state %.2f, activations %.2f; wan-train "
                        "--check) but %s has %.1f GiB: %s",
                        d->pp_rank, p.total / GiB, p.state / GiB, p.activations / GiB, j->rt.be->device_name, dev / GiB,
                        !cfg->train.recompute ? "train.recompute = true keeps only each block's input"
                        : p.recomputing < p.blocks
                            ? "a lower train.memory_budget_gib or a higher train.recompute_layers recomputes more blocks"
                            : "more model parallelism (tp, cp, pp) or more data-parallel ranks (the optimizer state is "
                              "sharded over dp x cp) lowers it");
    return 0;
}

static int setup(job *j, const wan_train_opts *opts) {
    wan_config *cfg = &j->cfg;
    /* validate before starting ranks: a bad config fails once, with exit 2 */
    int expect_world = opts->nproc > 1 ? opts->nproc : 0;
    const char *nt = getenv("SLURM_NTASKS");
    if (getenv("PMI_FD") && nt) expect_world = atoi(nt);
    WAN_TRY(wan_cli_load_config(opts->config, cfg, expect_world));
    if (cfg->parallel.fsdp)
        return wan_fail(WAN_ERR_USAGE, "parallel.fsdp = true: fully sharded parameters are not implemented; the "
                                       "optimizer state is always sharded over data-parallel ranks (ZeRO-1)");
    if (wan_flow_preset_get(cfg->train.objective, &j->flow))
        return wan_fail(WAN_ERR_USAGE, "train.objective = %s: unknown", cfg->train.objective);

    if (cfg->parallel.vp > 1)
        return wan_fail(WAN_ERR_USAGE, "parallel.vp = %d: virtual pipeline stages (the interleaved schedule) are not "
                        "implemented; training runs one chunk of blocks per pipeline stage (parallel.vp = 0)",
                        cfg->parallel.vp);
    WAN_TRY(wan_runtime_init(&j->rt, cfg, opts->nproc));
    j->stop_flag = j->rt.be->alloc(j->rt.be, sizeof(float));
    if (j->rt.boot.rank == 0) {
        wan_info("world %d = tp %d x cp %d x dp %d x pp %d%s; backend %s", j->rt.dist.world, j->rt.dist.tp, j->rt.dist.cp,
                 j->rt.dist.dp, j->rt.dist.pp, j->rt.dist.sp ? " (sequence parallel)" : "", j->rt.be->device_name);
        wan_config_advise(cfg);
    }

    const wan_dist *d = &j->rt.dist;
    int recompute_layers;
    WAN_TRY(plan_stage_memory(j, &recompute_layers));
    WAN_TRY(wan_model_create(&j->model, &cfg->model, j->rt.be, &j->rt.dist, wan_recompute_of(&cfg->train),
                             recompute_layers, true));
    if (cfg->train.recompute && d->tp_rank == 0 && d->cp_rank == 0 && d->dp_rank == 0) {
        int n = j->model.l1 - j->model.l0, r = wan_model_blocks_recomputing(&j->model);
        wan_info("pipeline stage %d: %d of its %d blocks recompute their activations in the backward, %d keep them%s",
                 d->pp_rank, r, n, n - r,
                 cfg->train.recompute_layers < 0 && cfg->train.memory_budget_gib > 0 ? " (train.memory_budget_gib)" : "");
    }
    float *init = malloc((size_t)j->model.ps.total * sizeof(float));
    if (!init) return wan_fail(WAN_ERR_RUNTIME, "out of host memory for the initial weights");
    wan_params_init_host(&j->model.ps, (uint64_t)cfg->train.seed, init);
    wan_model_set_params(&j->model, init);
    free(init);
    WAN_TRY(wan_optim_create(&j->opt, &j->model, &cfg->train));
    j->model.block_grads_done = wan_optim_block_grads_done;
    j->model.block_grads_ctx = &j->opt;
    j->model.params_needed = wan_optim_params_needed;
    j->model.params_ctx = &j->opt;

    if (cfg->train.ckpt_dir[0]) snprintf(j->ckpt_root, sizeof j->ckpt_root, "%s", cfg->train.ckpt_dir);
    else snprintf(j->ckpt_root, sizeof j->ckpt_root, "%.900s/checkpoints", cfg->train.run_dir);
    if (cfg->data.path[0]) WAN_TRY(wan_dataset_open(cfg->data.path, &j->ds));
    if (cfg->eval.interval > 0 && cfg->eval.path[0]) WAN_TRY(wan_dataset_open(cfg->eval.path, &j->eval_ds));
    return 0;
}

static int make_loader(job *j, wan_loader_state start) {
    wan_config *cfg = &j->cfg;
    wan_loader_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.ds = j->ds;
    lo.synthetic_samples = cfg->data.synthetic_samples;
    lo.synth_shape[0] = cfg->model.in_dim;
    for (int i = 0; i < 3; i++) lo.synth_shape[1 + i] = cfg->train.latent_shape[i];
    lo.gbs = cfg->train.gbs;
    lo.mbs = cfg->train.mbs;
    lo.dp = j->rt.dist.dp;
    lo.dp_rank = j->rt.dist.dp_rank;
    lo.text_len = cfg->model.text_len;
    lo.text_dim = cfg->model.text_dim;
    lo.prefetch = cfg->data.prefetch;
    lo.verify = cfg->data.verify;
    lo.skip_corrupt = !strcmp(cfg->data.on_corrupt, "skip");
    lo.start = start;
    return wan_loader_create(&lo, &j->loader);
}

/* Host inputs of the micro-batch loaded next (one at a time: loaded, then run forward). */
typedef struct {
    wan_microbatch mb;
    float *noise, *sigma, *coef;
    double *w, *sq;
    size_t cap;
    int bcap;
    wan_model_input in;
} mb_input;

static void mb_input_free(mb_input *u) {
    free(u->noise);
    free(u->sigma);
    free(u->coef);
    free(u->w);
    free(u->sq);
}

/* Load the next micro-batch and form its flow-matching inputs. */
static int load_input(job *j, int step, mb_input *u) {
    wan_config *cfg = &j->cfg;
    WAN_TRY(wan_loader_next(j->loader, &u->mb));
    const wan_microbatch *mb = &u->mb;
    size_t lat = (size_t)mb->C * mb->F * mb->H * mb->W;
    if (lat * mb->B > u->cap) {
        free(u->noise);
        u->noise = malloc(lat * mb->B * sizeof(float));
        u->cap = u->noise ? lat * mb->B : 0;
    }
    if (mb->B > u->bcap) {
        free(u->sigma), free(u->coef), free(u->w), free(u->sq);
        u->sigma = malloc((size_t)mb->B * sizeof(float));
        u->coef = malloc((size_t)mb->B * sizeof(float));
        u->w = malloc((size_t)mb->B * sizeof(double));
        u->sq = malloc((size_t)mb->B * sizeof(double));
        u->bcap = mb->B;
    }
    if (!u->noise || !u->sigma || !u->coef || !u->w || !u->sq)
        return wan_fail(WAN_ERR_RUNTIME, "out of host memory for a micro-batch");
    for (int b = 0; b < mb->B; b++) {
        uint32_t gi = (uint32_t)mb->global_index[b];
        double sg = wan_flow_sigma(&j->flow, (uint64_t)cfg->train.seed, (uint32_t)step, gi);
        u->sigma[b] = (float)sg;
        u->w[b] = wan_flow_weight(&j->flow, sg);
        u->coef[b] = (float)(u->w[b] / ((double)cfg->train.gbs * (double)lat));
        /* x_t (first pipeline stage) and the target (last) need it; the stages between do not */
        if (j->model.first || j->model.last)
            wan_flow_noise((uint64_t)cfg->train.seed, (uint32_t)step, gi, u->noise + b * lat, lat);
    }
    u->in = (wan_model_input){mb->B, mb->C, mb->F, mb->H, mb->W, mb->latent, u->noise, u->sigma, mb->text, u->coef, NULL};
    return 0;
}

/* The 1F1B schedule's moves on micro-batch i, whose activations live in set i % K. */
static int load_recv(job *j, int step, mb_input *u) {
    WAN_TRY(load_input(j, step, u));
    return wan_pipe_recv_forward(&j->model, u->in.B, u->in.C, u->in.F, u->in.H, u->in.W);
}

static int forward_send(job *j, mb_input *u, int i, int K, double *local) {
    wan_model *m = &j->model;
    WAN_TRY(wan_model_use_slot(m, i % K, K));
    WAN_TRY(wan_model_set_shape(m, u->in.B, u->in.C, u->in.F, u->in.H, u->in.W));
    WAN_TRY(wan_model_forward(m, &u->in, u->sq, NULL));
    size_t lat = (size_t)u->in.C * u->in.F * u->in.H * u->in.W;
    for (int b = 0; b < u->in.B; b++) *local += u->w[b] * u->sq[b] / ((double)j->cfg.train.gbs * (double)lat);
    return wan_pipe_send_forward(m);
}

/* last: the step's last backward on this stage, during which the optimizer starts reducing
 * each block's gradients once they are complete */
static int recv_backward(job *j, int i, int K, bool last) {
    WAN_TRY(wan_model_use_slot(&j->model, i % K, K));
    WAN_TRY(wan_pipe_recv_backward(&j->model));
    j->model.grads_final = last;
    int rc = wan_model_backward(&j->model);
    j->model.grads_final = false;
    return rc;
}

static int send_backward(job *j, int i, int K) {
    WAN_TRY(wan_model_use_slot(&j->model, i % K, K));
    return wan_pipe_send_backward(&j->model);
}

/* One optimizer step: gbs / (mbs * dp) micro-batches on this rank. Returns the step's loss
 * (mean over the global batch of the weighted per-sample mean squared errors).
 * With pipeline stages the micro-batches run one-forward-one-backward (1F1B): stage s first
 * runs min(pp - s - 1, M) forwards, then alternates forward and backward, then finishes the
 * backwards; it holds at most that many + 1 activation sets. Transfers block, so neighbours
 * must meet in the same order: on each link the lower stage sends its forward output before it
 * receives a gradient, and the upper stage receives its next input before it sends that
 * gradient back. With pp = 1 this is forward, backward per micro-batch. */
static int train_step(job *j, int step, double *loss, int *seq_len) {
    wan_config *cfg = &j->cfg;
    wan_dist *d = &j->rt.dist;
    int M = cfg->train.gbs / (cfg->train.mbs * d->dp);
    int warm = d->pp - d->pp_rank - 1 < M ? d->pp - d->pp_rank - 1 : M;
    int K = wan_1f1b_in_flight(d->pp, d->pp_rank, M);
    double local = 0;
    mb_input u = {0};
    int rc = 0;
    for (int i = 0; i < warm && !rc; i++) {
        rc = load_recv(j, step, &u);
        if (!rc) rc = forward_send(j, &u, i, K, &local);
    }
    if (!rc && warm < M) rc = load_recv(j, step, &u);
    for (int i = warm; i < M && !rc; i++) {
        rc = forward_send(j, &u, i, K, &local);
        if (!rc) rc = recv_backward(j, i - warm, K, i - warm == M - 1);
        if (!rc && i + 1 < M) rc = load_recv(j, step, &u);
        if (!rc) rc = send_backward(j, i - warm, K);
    }
    for (int b = M - warm; b < M && !rc; b++) {
        rc = recv_backward(j, b, K, b == M - 1);
        if (!rc) rc = send_backward(j, b, K);
    }
    *seq_len = j->model.sh.S;
    mb_input_free(&u);
    if (rc) return rc;
    /* the loss: partial over dp x cp (and tp with sp); tp ranks without sp hold copies; only
     * the last pipeline stage has it */
    wan_backend *be = j->rt.be;
    float pair[2] = {(float)local, 0};
    pair[1] = (float)(local - (double)pair[0]);
    if (!(d->sp || d->tp_rank == 0) || !j->model.last) pair[0] = pair[1] = 0;
    float *buf = be->alloc(be, sizeof pair);
    be->upload(be, buf, pair, sizeof pair);
    rc = wan_allreduce(&j->rt.comm->world, buf, 2, WAN_F32, WAN_RED_SUM);
    be->download(be, pair, buf, sizeof pair);
    be->free(be, buf);
    *loss = (double)pair[0] + (double)pair[1];
    return rc;
}

static int evaluate(job *j, int step) {
    wan_val_opts vo;
    memset(&vo, 0, sizeof vo);
    wan_val_default_sigmas(&vo);
    vo.ds = j->eval_ds;
    vo.seed = (uint64_t)j->cfg.train.seed ^ 0x5eedULL;
    vo.max_samples = j->cfg.eval.max_samples ? j->cfg.eval.max_samples : 8;
    vo.synth_shape[0] = j->cfg.model.in_dim;
    for (int i = 0; i < 3; i++) vo.synth_shape[1 + i] = j->cfg.train.latent_shape[i];
    wan_val_result r;
    WAN_TRY(wan_validate(&j->model, &vo, &r));
    if (j->rt.boot.rank == 0) {
        wan_info("step %d: validation loss %.6f (sigma 0.1..0.9: %.4f %.4f %.4f %.4f %.4f) over %d samples", step, r.mean,
                 r.loss[0], r.loss[1], r.loss[2], r.loss[3], r.loss[4], r.samples);
        WAN_TRY(wan_steplog_eval(&j->log, step, r.mean, r.sigmas, r.loss, r.nsig, r.samples));
    }
    return 0;
}

/* Bytes this rank has sent so far in each group (tp, cp, dp, pp, dpcp, mp, world). */
static void comm_bytes(job *j, long long out[7]) {
    wan_dist *d = &j->rt.dist;
    const wan_group *g[7] = {&d->tp_g, &d->cp_g, &d->dp_g, &d->pp_g, &d->dpcp_g, &d->mp_g, &j->rt.comm->world};
    for (int i = 0; i < 7; i++) out[i] = (long long)g[i]->bytes_sent;
}

static int run(job *j, const wan_train_opts *opts) {
    wan_config *cfg = &j->cfg;
    int start_step = 0;
    wan_loader_state ds = {(uint64_t)cfg->train.seed, 0, 0};
    const char *from = opts->init_from;
    char latest[WAN_PATH_MAX];
    if (opts->resume && !from) {
        if (wan_ckpt_latest(j->ckpt_root, latest, sizeof latest) == 0) from = latest;
        else if (j->rt.boot.rank == 0) wan_info("no checkpoint in %s: starting from scratch", j->ckpt_root);
        wan_error_clear();
    }
    if (from) {
        WAN_TRY(wan_state_load(&j->model, &j->opt, from, &start_step, &ds));
        if (ds.seed != (uint64_t)cfg->train.seed) {
            /* a weights-only start (imported model) has no data position */
            ds = (wan_loader_state){(uint64_t)cfg->train.seed, 0, 0};
        }
    }
    WAN_TRY(make_loader(j, ds));

    if (j->rt.boot.rank == 0) {
        WAN_TRY(wan_mkdir_p(cfg->train.run_dir));
        char path[WAN_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/config.cfg", cfg->train.run_dir);
        char *text = wan_config_to_string(cfg);
        int rc = wan_write_file_atomic(path, text, strlen(text));
        free(text);
        WAN_TRY(rc);
        WAN_TRY(wan_steplog_open(&j->log, cfg->train.run_dir, cfg, j->rt.dist.world, j->rt.be->device_name, start_step));
        fprintf(stderr, "resolved configuration:\n");
        wan_config_write(cfg, stderr);
    }
    int64_t tokens_per_sample = 0;
    bool stopped = false;
    for (int step = start_step + 1; step <= cfg->train.steps; step++) {
        double t0 = wan_now(), loss = 0, gnorm = 0, lr = 0;
        int seq = 0;
        long long cb0[7], cb1[7];
        comm_bytes(j, cb0);
        WAN_TRY(train_step(j, step, &loss, &seq));
        /* agree on a stop request (a signal may reach ranks at different moments); before the
         * optimizer, whose weight gather then runs on under the next step's forward (this
         * exchange waits for the GPU) */
        float stop = stop_signal ? 1.0f : 0.0f;
        WAN_TRY(world_max(j, &stop));
        stopped = stop > 0;
        WAN_TRY(wan_optim_step(&j->opt, &gnorm, &lr));
        tokens_per_sample = seq;
        /* the first rank of each pipeline stage (stages hold different parts of the model) */
        const wan_dist *dd = &j->rt.dist;
        if (step == start_step + 1 && dd->tp_rank == 0 && dd->cp_rank == 0 && dd->dp_rank == 0)
            wan_info("%s memory on rank %d (pipeline stage %d): training state %.1f MiB (weights, gradients, optimizer), "
                     "activations %.1f MiB (%d micro-batch%s in flight), peak %.1f MiB (%zu bytes); the step's backwards "
                     "recomputed %lld block forwards", j->rt.be->name,
                     dd->rank, dd->pp_rank, j->model.state_bytes / 1048576.0,
                     wan_model_activation_bytes(&j->model) / 1048576.0, j->model.nslots > 1 ? j->model.nslots : 1,
                     j->model.nslots > 1 ? "es" : "", j->rt.be->mem_peak / 1048576.0, j->rt.be->mem_peak,
                     (long long)j->model.blocks_recomputed);
        comm_bytes(j, cb1);
        bool save = stopped || step == cfg->train.steps ||
                    (cfg->train.ckpt_interval > 0 && step % cfg->train.ckpt_interval == 0);
        bool eval = cfg->eval.interval > 0 && step % cfg->eval.interval == 0;
        if (eval) WAN_TRY(evaluate(j, step));
        if (save) {
            WAN_TRY(wan_state_save(&j->model, &j->opt, cfg, step, wan_loader_get_state(j->loader), j->ckpt_root));
        }
        double dt = wan_now() - t0;
        if (j->rt.boot.rank == 0) {
            wan_step_record r = {step,
                                 dt,
                                 loss,
                                 gnorm,
                                 lr,
                                 cfg->train.gbs,
                                 (long long)cfg->train.gbs * tokens_per_sample,
                                 (int)tokens_per_sample,
                                 j->rt.dist.world,
                                 j->rt.dist.dp,
                                 save,
                                 eval,
                                 (long long)j->rt.be->mem_peak,
                                 (long long)wan_loader_get_state(j->loader).epoch,
                                 {0}};
            for (int i = 0; i < 7; i++) r.comm_bytes[i] = cb1[i] - cb0[i];
            WAN_TRY(wan_steplog_step(&j->log, cfg, j->rt.be->device_name, &r));
            if (step % cfg->train.log_interval == 0 || step == cfg->train.steps || stopped)
                wan_info("step %d/%d loss %.6f grad_norm %.4f lr %.3g %.3fs %.0f tokens/s%s", step, cfg->train.steps, loss,
                         gnorm, lr, dt, (double)r.tokens / dt, save ? " (checkpoint)" : "");
        }
        if (stopped) {
            if (j->rt.boot.rank == 0)
                wan_info("stopped by signal after step %d: checkpoint saved, exit %d to requeue", step, WAN_EXIT_REQUEUE);
            /* under srun --kill-on-bad-exit the first rank to exit 75 ends the step: nobody
             * leaves before rank 0 has logged this step */
            WAN_TRY(wan_barrier(&j->rt.comm->world));
            break;
        }
    }
    return stopped ? WAN_EXIT_REQUEUE : 0;
}

static void teardown(job *j) {
    if (j->loader) wan_loader_destroy(j->loader);
    if (j->opt.m) wan_optim_destroy(&j->opt);
    if (j->model.be) wan_model_destroy(&j->model);
    if (j->rt.be && j->stop_flag) j->rt.be->free(j->rt.be, j->stop_flag);
    if (j->ds) wan_dataset_close(j->ds);
    if (j->eval_ds) wan_dataset_close(j->eval_ds);
    wan_steplog_close(&j->log);
    wan_runtime_fini(&j->rt);
}

int wan_train_main(const wan_train_opts *opts) {
    /* from the start: a stop request during set-up or a long checkpoint load is honoured
     * after the first step */
    install_signals();
    job *j = calloc(1, sizeof *j);
    int rc = setup(j, opts);
    if (!rc) rc = run(j, opts);
    /* a failure outside a collective: tell the other ranks now instead of at their timeout */
    if (rc && rc != WAN_EXIT_REQUEUE && j->rt.comm) wan_comm_abort(j->rt.comm, wan_errmsg());
    teardown(j);
    free(j);
    return rc;
}
