/* The deterministic loader (order specified at the top of dataset.h).
 *
 * Everything about the order is computed in the calling thread from (seed, epoch, mbs, gbs):
 * the epoch's plan is a list of micro-batches (sample indices), and this rank's sequence is
 * micro-batches [r * n, (r + 1) * n) of each global batch. Background threads only fill
 * buffers for micro-batches already placed in slots, in sequence order, so prefetching never
 * changes what is returned. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "dataset_format.h"
#include "error.h"
#include "log.h"
#include "rng.h"

/* 'sample' fields of the RNG counter: keep the loader's uses apart. */
enum { DRAW_PERMUTE = 0, DRAW_SHUFFLE_MB = 1, DRAW_REPLACE = 2 };
#define MAX_REPLACE_TRIES 64

typedef struct {
    uint64_t epoch;
    int64_t nmb;
    int64_t *mb; /* nmb * mbs sample indices */
    bool valid;
} plan_t;

enum { SLOT_FREE, SLOT_QUEUED, SLOT_FILLING, SLOT_READY, SLOT_ERROR };

typedef struct {
    int state;
    uint64_t epoch, position; /* the global batch it belongs to */
    int mb_in_gb;             /* position of the micro-batch in its global batch */
    int bucket;
    int64_t sample[64];
    int rc;
    char err[2048];
    float *latent, *text;
} slot_t;

struct wan_loader {
    wan_loader_opts o;
    uint64_t seed;
    int64_t N;
    int nb;               /* buckets (latent shapes) */
    int *bucket_of;       /* per sample (NULL: synthetic, all bucket 0) */
    int (*shape)[4];      /* per bucket: C, F, H, W */
    int64_t **members;    /* per bucket: its samples, ascending (for replacements) */
    int64_t *nmembers;
    int k, per_rank;      /* micro-batches per global batch; per rank per global batch */
    int64_t nbatches;     /* global batches per epoch */
    plan_t plans[2];
    /* Scheduling cursor (next micro-batch to place in a slot) and the consumer's. */
    uint64_t sched_epoch, sched_pos;
    int sched_j;
    int64_t sched_q, cons_q, fill_q;
    wan_loader_state state;
    slot_t *slots;
    int nslots, nthreads;
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t cv_task, cv_ready;
    bool stop;
    atomic_uint_fast64_t skipped;
};

static double draw(const wan_loader *l, uint64_t epoch, uint32_t what, uint64_t i) {
    return wan_rand_uniform(l->seed, WAN_RNG_DATA, (uint32_t)epoch, what | (uint32_t)(epoch >> 32) << 8, i);
}

/* Fisher-Yates over v[0..n) with draws (epoch, what). */
static void shuffle(const wan_loader *l, uint64_t epoch, uint32_t what, int64_t *v, int64_t n, int64_t stride) {
    int64_t tmp[64];
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(draw(l, epoch, what, (uint64_t)i) * (double)(i + 1));
        if (j > i) j = i;
        if (j == i) continue;
        memcpy(tmp, v + i * stride, (size_t)stride * sizeof *v);
        memcpy(v + i * stride, v + j * stride, (size_t)stride * sizeof *v);
        memcpy(v + j * stride, tmp, (size_t)stride * sizeof *v);
    }
}

/* The epoch's micro-batches: permute all samples, cut each bucket's run into micro-batches
 * in permuted order (a bucket's last partial micro-batch waits for the next epoch), shuffle
 * the micro-batches. */
static int plan_build(wan_loader *l, uint64_t epoch, plan_t *p) {
    int mbs = l->o.mbs;
    int64_t *perm = malloc((size_t)l->N * sizeof *perm);
    int64_t *pend = malloc((size_t)l->nb * (size_t)mbs * sizeof *pend);
    int *npend = calloc((size_t)l->nb, sizeof *npend);
    int64_t cap = 0;
    for (int b = 0; b < l->nb; b++) cap += l->nmembers[b] / mbs;
    int64_t *mb = malloc((size_t)(cap ? cap : 1) * (size_t)mbs * sizeof *mb);
    if (!perm || !pend || !npend || !mb) {
        free(perm), free(pend), free(npend), free(mb);
        return wan_fail(WAN_ERR_RUNTIME, "out of memory planning epoch %llu", (unsigned long long)epoch);
    }
    for (int64_t i = 0; i < l->N; i++) perm[i] = i;
    shuffle(l, epoch, DRAW_PERMUTE, perm, l->N, 1);
    int64_t nmb = 0;
    for (int64_t i = 0; i < l->N; i++) {
        int b = l->bucket_of ? l->bucket_of[perm[i]] : 0;
        pend[(size_t)b * mbs + npend[b]++] = perm[i];
        if (npend[b] == mbs) {
            memcpy(mb + nmb * mbs, pend + (size_t)b * mbs, (size_t)mbs * sizeof *mb);
            nmb++;
            npend[b] = 0;
        }
    }
    shuffle(l, epoch, DRAW_SHUFFLE_MB, mb, nmb, mbs);
    free(perm), free(pend), free(npend);
    free(p->mb);
    *p = (plan_t){epoch, nmb, mb, true};
    return 0;
}

static int plan_get(wan_loader *l, uint64_t epoch, const plan_t **out) {
    for (int i = 0; i < 2; i++)
        if (l->plans[i].valid && l->plans[i].epoch == epoch) {
            *out = &l->plans[i];
            return 0;
        }
    /* Replace the plan of the older epoch. */
    plan_t *p = !l->plans[0].valid ? &l->plans[0] : !l->plans[1].valid ? &l->plans[1]
              : (l->plans[0].epoch < l->plans[1].epoch ? &l->plans[0] : &l->plans[1]);
    WAN_TRY(plan_build(l, epoch, p));
    *out = p;
    return 0;
}

static int bucket_of(const wan_loader *l, int64_t s) { return l->bucket_of ? l->bucket_of[s] : 0; }

static size_t latent_numel(const wan_loader *l, int b) {
    return (size_t)l->shape[b][0] * l->shape[b][1] * l->shape[b][2] * l->shape[b][3];
}

/* Read one sample into place; with skip_corrupt a corrupt one is replaced by a sample of the
 * same bucket drawn from (seed, epoch, sample): the same choice on every rank and resume. */
static int read_one(wan_loader *l, uint64_t epoch, int b, int64_t *sample, float *lat, float *txt) {
    const wan_loader_opts *o = &l->o;
    if (!o->ds) {
        int len;
        wan_synth_sample(l->seed, *sample, l->shape[0][0], l->shape[0][1], l->shape[0][2], l->shape[0][3], o->text_len,
                         o->text_dim, lat, txt, &len);
        return 0;
    }
    bool corrupt;
    int rc = wan_dataset_read_ex(o->ds, *sample, lat, txt, o->text_len, o->verify, &corrupt);
    if (!rc || !corrupt || !o->skip_corrupt) return rc;
    char first[1024];
    snprintf(first, sizeof first, "%s", wan_errmsg());
    int64_t nm = l->nmembers[b];
    for (int t = 0; t < MAX_REPLACE_TRIES && nm > 1; t++) {
        int64_t c = l->members[b][(int64_t)(draw(l, epoch, DRAW_REPLACE, (uint64_t)*sample * MAX_REPLACE_TRIES + t) * nm)];
        if (c == *sample) continue;
        rc = wan_dataset_read_ex(o->ds, c, lat, txt, o->text_len, o->verify, &corrupt);
        if (!rc) {
            wan_warn("%s; replaced by sample %lld (data.on_corrupt = skip)", first, (long long)c);
            atomic_fetch_add(&l->skipped, 1);
            *sample = c;
            return 0;
        }
        if (!corrupt) return rc;
    }
    return wan_fail(WAN_ERR_RUNTIME, "%s; and no intact replacement of the same shape was found", first);
}

static void fill(wan_loader *l, slot_t *s) {
    size_t ln = latent_numel(l, s->bucket), tn = (size_t)l->o.text_len * (size_t)l->o.text_dim;
    s->rc = 0;
    for (int i = 0; i < l->o.mbs && !s->rc; i++) {
        s->rc = read_one(l, s->epoch, s->bucket, &s->sample[i], s->latent + i * ln, s->text + i * tn);
        if (s->rc) snprintf(s->err, sizeof s->err, "%s", wan_errmsg());
    }
}

static void *worker(void *arg) {
    wan_loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && l->fill_q >= l->sched_q) pthread_cond_wait(&l->cv_task, &l->mu);
        if (l->stop) break;
        slot_t *s = &l->slots[l->fill_q++ % l->nslots];
        s->state = SLOT_FILLING;
        pthread_mutex_unlock(&l->mu);
        fill(l, s);
        pthread_mutex_lock(&l->mu);
        s->state = s->rc ? SLOT_ERROR : SLOT_READY;
        pthread_cond_broadcast(&l->cv_ready);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Place the next of this rank's micro-batches in its slot. Caller holds mu (or has no threads). */
static int schedule_one(wan_loader *l) {
    const plan_t *p;
    WAN_TRY(plan_get(l, l->sched_epoch, &p));
    slot_t *s = &l->slots[l->sched_q % l->nslots];
    WAN_ASSERT(s->state == SLOT_FREE);
    s->epoch = l->sched_epoch;
    s->position = l->sched_pos;
    s->mb_in_gb = l->o.dp_rank * l->per_rank + l->sched_j;
    int64_t m = (int64_t)l->sched_pos * l->k + s->mb_in_gb;
    memcpy(s->sample, p->mb + m * l->o.mbs, (size_t)l->o.mbs * sizeof *s->sample);
    s->bucket = bucket_of(l, s->sample[0]);
    s->state = SLOT_QUEUED;
    l->sched_q++;
    if (++l->sched_j == l->per_rank) {
        l->sched_j = 0;
        if ((int64_t)++l->sched_pos == l->nbatches) {
            l->sched_pos = 0;
            l->sched_epoch++;
        }
    }
    return 0;
}

static int setup_buckets(wan_loader *l) {
    const wan_loader_opts *o = &l->o;
    if (!o->ds) {
        l->nb = 1;
        l->shape = calloc(1, sizeof *l->shape);
        l->members = calloc(1, sizeof *l->members);
        l->nmembers = calloc(1, sizeof *l->nmembers);
        if (!l->shape || !l->members || !l->nmembers) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
        memcpy(l->shape[0], o->synth_shape, sizeof l->shape[0]);
        l->nmembers[0] = l->N;
        return 0;
    }
    const wan_ds_index *ix = wan_dataset_index(o->ds);
    l->bucket_of = malloc((size_t)(l->N ? l->N : 1) * sizeof *l->bucket_of);
    if (!l->bucket_of) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    /* Buckets numbered in order of first appearance in the index (from the index alone). */
    int cap = 0;
    for (int64_t i = 0; i < l->N; i++) {
        const wan_ds_entry *e = &ix->e[i];
        if (e->text_len > o->text_len || e->text_dim != o->text_dim)
            return wan_fail(WAN_ERR_USAGE,
                            "%s: sample %lld ('%s') has text [%d, %d]; the model takes at most [%d, %d] "
                            "(model.text_len, model.text_dim)",
                            wan_dataset_dir(o->ds), (long long)i, ix->ids + e->id, e->text_len, e->text_dim,
                            o->text_len, o->text_dim);
        int b = 0;
        while (b < l->nb && (l->shape[b][0] != e->C || l->shape[b][1] != e->F || l->shape[b][2] != e->H ||
                             l->shape[b][3] != e->W))
            b++;
        if (b == l->nb) {
            if (l->nb == cap) {
                cap = cap ? 2 * cap : 8;
                void *s = realloc(l->shape, (size_t)cap * sizeof *l->shape);
                if (!s) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
                l->shape = s;
            }
            l->shape[l->nb][0] = e->C, l->shape[l->nb][1] = e->F, l->shape[l->nb][2] = e->H, l->shape[l->nb][3] = e->W;
            l->nb++;
        }
        l->bucket_of[i] = b;
    }
    l->members = calloc((size_t)(l->nb ? l->nb : 1), sizeof *l->members);
    l->nmembers = calloc((size_t)(l->nb ? l->nb : 1), sizeof *l->nmembers);
    if (!l->members || !l->nmembers) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int64_t i = 0; i < l->N; i++) l->nmembers[l->bucket_of[i]]++;
    for (int b = 0; b < l->nb; b++) {
        l->members[b] = malloc((size_t)l->nmembers[b] * sizeof **l->members);
        if (!l->members[b]) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
        l->nmembers[b] = 0;
    }
    for (int64_t i = 0; i < l->N; i++) l->members[l->bucket_of[i]][l->nmembers[l->bucket_of[i]]++] = i;
    return 0;
}

int wan_loader_create(const wan_loader_opts *o, wan_loader **out) {
    *out = NULL;
    if (o->mbs < 1 || o->mbs > 64 || o->gbs < o->mbs || o->gbs % o->mbs)
        return wan_fail(WAN_ERR_USAGE, "loader: gbs %d and mbs %d: need 1 <= mbs <= 64 and gbs a multiple of mbs",
                        o->gbs, o->mbs);
    if (o->dp < 1 || o->dp_rank < 0 || o->dp_rank >= o->dp || (o->gbs / o->mbs) % o->dp)
        return wan_fail(WAN_ERR_USAGE, "loader: gbs %d is not a multiple of mbs %d x dp %d (or rank %d outside dp)",
                        o->gbs, o->mbs, o->dp, o->dp_rank);
    if (o->text_len < 1 || o->text_dim < 1)
        return wan_fail(WAN_ERR_USAGE, "loader: text_len %d and text_dim %d must be positive", o->text_len, o->text_dim);
    if (!o->ds && (o->synthetic_samples < 1 || o->synth_shape[0] < 1 || o->synth_shape[1] < 1 ||
                   o->synth_shape[2] < 1 || o->synth_shape[3] < 1))
        return wan_fail(WAN_ERR_USAGE, "loader: synthetic data needs a positive sample count and latent shape");
    if (o->prefetch < 0 || o->threads < 0) return wan_fail(WAN_ERR_USAGE, "loader: negative prefetch or threads");
    wan_loader *l = calloc(1, sizeof *l);
    if (!l) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    l->o = *o;
    l->seed = o->start.seed;
    l->N = o->ds ? wan_dataset_count(o->ds) : o->synthetic_samples;
    l->k = o->gbs / o->mbs;
    l->per_rank = l->k / o->dp;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_task, NULL);
    pthread_cond_init(&l->cv_ready, NULL);
    int rc = setup_buckets(l);
    int64_t nmb = 0;
    for (int b = 0; !rc && b < l->nb; b++) nmb += l->nmembers[b] / o->mbs;
    l->nbatches = nmb / l->k;
    if (!rc && l->nbatches < 1)
        rc = wan_fail(WAN_ERR_USAGE,
                      "%s: %lld samples in %d latent shapes make %lld micro-batches of %d: not one global batch of %d",
                      o->ds ? wan_dataset_dir(o->ds) : "synthetic data", (long long)l->N, l->nb, (long long)nmb,
                      o->mbs, o->gbs);
    /* Start where the state says; a position at the end of an epoch is the next epoch's start. */
    wan_loader_state st = o->start;
    if (!rc && (int64_t)st.position > l->nbatches)
        rc = wan_fail(WAN_ERR_USAGE, "loader: resume position %llu is past the %lld global batches of an epoch",
                      (unsigned long long)st.position, (long long)l->nbatches);
    if (!rc && (int64_t)st.position == l->nbatches) st.epoch++, st.position = 0;
    l->state = st;
    l->sched_epoch = st.epoch;
    l->sched_pos = st.position;
    /* Slots: the one being returned plus `prefetch` ahead. */
    l->nslots = o->prefetch + 1;
    l->nthreads = o->prefetch ? (o->threads ? o->threads : (o->prefetch < 4 ? o->prefetch : 4)) : 0;
    size_t lmax = 0, tn = (size_t)o->text_len * (size_t)o->text_dim * (size_t)o->mbs;
    for (int b = 0; b < l->nb; b++)
        if (latent_numel(l, b) > lmax) lmax = latent_numel(l, b);
    lmax *= (size_t)o->mbs;
    if (!rc && !(l->slots = calloc((size_t)l->nslots, sizeof *l->slots))) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int i = 0; !rc && i < l->nslots; i++) {
        l->slots[i].latent = malloc(lmax * sizeof(float));
        l->slots[i].text = malloc(tn * sizeof(float));
        if (!l->slots[i].latent || !l->slots[i].text)
            rc = wan_fail(WAN_ERR_RUNTIME, "out of memory for %d prefetch buffers", l->nslots);
    }
    if (!rc && l->nthreads && !(l->tids = calloc((size_t)l->nthreads, sizeof *l->tids)))
        rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    int started = 0;
    for (; !rc && started < l->nthreads; started++)
        if (pthread_create(&l->tids[started], NULL, worker, l)) rc = wan_fail(WAN_ERR_RUNTIME, "cannot start a reader thread");
    l->nthreads = started;
    if (rc) {
        wan_loader_destroy(l);
        return rc;
    }
    *out = l;
    return 0;
}

int wan_loader_next(wan_loader *l, wan_microbatch *mb) {
    pthread_mutex_lock(&l->mu);
    if (l->cons_q > 0) {
        slot_t *prev = &l->slots[(l->cons_q - 1) % l->nslots];
        if (prev->state == SLOT_READY) prev->state = SLOT_FREE;
    }
    int rc = 0;
    while (!rc && l->sched_q < l->cons_q + l->nslots && l->slots[l->sched_q % l->nslots].state == SLOT_FREE)
        rc = schedule_one(l);
    pthread_cond_broadcast(&l->cv_task);
    slot_t *s = &l->slots[l->cons_q % l->nslots];
    if (!rc && !l->nthreads && s->state == SLOT_QUEUED) {
        l->fill_q++;
        fill(l, s);
        s->state = s->rc ? SLOT_ERROR : SLOT_READY;
    }
    while (!rc && s->state != SLOT_READY && s->state != SLOT_ERROR) pthread_cond_wait(&l->cv_ready, &l->mu);
    if (!rc && s->state == SLOT_ERROR) rc = wan_fail(s->rc, "%s", s->err); /* stays failed: a later call says it again */
    pthread_mutex_unlock(&l->mu);
    if (rc) return rc;
    const int *sh = l->shape[s->bucket];
    mb->B = l->o.mbs;
    mb->C = sh[0], mb->F = sh[1], mb->H = sh[2], mb->W = sh[3];
    mb->latent = s->latent;
    mb->text = s->text;
    for (int i = 0; i < l->o.mbs; i++) {
        mb->sample[i] = s->sample[i];
        mb->global_index[i] = s->mb_in_gb * l->o.mbs + i;
    }
    mb->step_epoch = s->epoch;
    l->cons_q++;
    /* This rank's last micro-batch of a global batch: the batch counts as consumed. */
    if (s->mb_in_gb == l->o.dp_rank * l->per_rank + l->per_rank - 1) {
        l->state.epoch = s->epoch;
        l->state.position = s->position + 1;
        if ((int64_t)l->state.position == l->nbatches) l->state.epoch++, l->state.position = 0;
    }
    return 0;
}

wan_loader_state wan_loader_get_state(const wan_loader *l) { return l->state; }
uint64_t wan_loader_corrupt_skipped(const wan_loader *l) { return atomic_load(&l->skipped); }
int64_t wan_loader_batches_per_epoch(const wan_loader *l) { return l->nbatches; }

void wan_loader_destroy(wan_loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cv_task);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->nthreads; i++) pthread_join(l->tids[i], NULL);
    free(l->tids);
    for (int i = 0; l->slots && i < l->nslots; i++) {
        free(l->slots[i].latent);
        free(l->slots[i].text);
    }
    free(l->slots);
    for (int i = 0; i < 2; i++) free(l->plans[i].mb);
    for (int b = 0; l->members && b < l->nb; b++) free(l->members[b]);
    free(l->members);
    free(l->nmembers);
    free(l->shape);
    free(l->bucket_of);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv_task);
    pthread_cond_destroy(&l->cv_ready);
    free(l);
}
