/* The streaming copy engine of wan-reshard (see reshard.h). Threads take target pieces one at
 * a time; each produces its piece in row-major chunks from the overlapping slices of the
 * source pieces, so memory is threads x (chunk + staging) whatever the model's size. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "reshard.h"

/* Element counts for allocations: at least 1, so an empty table is still a valid pointer. */
static size_t nz(int n) { return n > 0 ? (size_t)n : 1; }

/* Buffers above this size do not make the copy faster. */
#define MAX_BUFFER (64u << 20)
#define MIN_BUFFER (128u << 10)
/* Runs at least this long (same element type) are read straight into the chunk. */
#define DIRECT_RUN (64u << 10)
/* Runs batched into one read at most (their (source, chunk) offsets are kept). */
#define MAX_BATCH 4096

int wan_rs_parse_size(const char *text, uint64_t *bytes) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    uint64_t unit = 1;
    if (*end) {
        switch (*end) {
        case 'k': case 'K': unit = 1ull << 10; break;
        case 'm': case 'M': unit = 1ull << 20; break;
        case 'g': case 'G': unit = 1ull << 30; break;
        case 't': case 'T': unit = 1ull << 40; break;
        default: unit = 0;
        }
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'b' || *end == 'B') end++;
    }
    if (errno || end == text || *end || !unit || !(v > 0) || v * (double)unit > 9e18)
        return wan_fail(WAN_ERR_USAGE, "size '%s': expected a positive number with an optional unit K, M, G or T", text);
    *bytes = (uint64_t)(v * (double)unit);
    return 0;
}

void wan_rs_format_size(uint64_t b, char *buf, size_t n) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int i = 0;
    while (v >= 1024 && i < 4) v /= 1024, i++;
    if (i == 0) snprintf(buf, n, "%llu B", (unsigned long long)b);
    else snprintf(buf, n, "%.2f %s", v, u[i]);
}

/* ---------------------------------------------------------------- a small thread pool */

typedef int (*item_fn)(void *ctx, int thread, int item);

typedef struct {
    item_fn fn;
    void *ctx;
    int nitems;
    atomic_int next, running;
    atomic_bool abort;
    int rc;              /* first failure */
    char msg[2048];
    pthread_mutex_t lock;
    pthread_cond_t done; /* signalled by each worker as it ends */
} pool;

typedef struct {
    pool *pl;
    int thread;
} pool_arg;

static void *pool_worker(void *arg) {
    pool_arg *a = arg;
    pool *pl = a->pl;
    while (!atomic_load(&pl->abort)) {
        int i = atomic_fetch_add(&pl->next, 1);
        if (i >= pl->nitems) break;
        int rc = pl->fn(pl->ctx, a->thread, i);
        if (rc) {
            pthread_mutex_lock(&pl->lock);
            if (!pl->rc) {
                pl->rc = rc;
                snprintf(pl->msg, sizeof pl->msg, "%s", wan_errmsg());
            }
            pthread_mutex_unlock(&pl->lock);
            atomic_store(&pl->abort, true);
        }
    }
    pthread_mutex_lock(&pl->lock);
    atomic_fetch_sub(&pl->running, 1);
    pthread_cond_signal(&pl->done);
    pthread_mutex_unlock(&pl->lock);
    return NULL;
}

/* Run fn over items 0..nitems-1 on `threads` threads; while waiting, report *bytes_done as
 * progress. Returns the first failure (its message re-recorded on this thread). */
static int pool_run(int threads, int nitems, item_fn fn, void *ctx, wan_progress *pg, atomic_uint_fast64_t *bytes_done) {
    if (nitems == 0) return 0;
    if (threads > nitems) threads = nitems;
    pool pl;
    memset(&pl, 0, sizeof pl);
    pl.fn = fn;
    pl.ctx = ctx;
    pl.nitems = nitems;
    atomic_init(&pl.next, 0);
    atomic_init(&pl.running, threads);
    atomic_init(&pl.abort, false);
    pthread_mutex_init(&pl.lock, NULL);
    pthread_cond_init(&pl.done, NULL);
    pthread_t *tid = calloc((size_t)threads, sizeof *tid);
    pool_arg *args = calloc((size_t)threads, sizeof *args);
    if (!tid || !args) {
        free(tid);
        free(args);
        return wan_fail(WAN_ERR_RUNTIME, "out of memory starting %d threads", threads);
    }
    int started = 0;
    for (int i = 0; i < threads; i++) {
        args[i] = (pool_arg){&pl, i};
        if (pthread_create(&tid[i], NULL, pool_worker, &args[i])) {
            atomic_fetch_sub(&pl.running, threads - i);
            break;
        }
        started++;
    }
    uint64_t reported = 0;
    pthread_mutex_lock(&pl.lock);
    while (atomic_load(&pl.running) > 0) {
        /* wake for progress reports every 200 ms, and at once when the last worker ends */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&pl.done, &pl.lock, &ts);
        if (pg && bytes_done) {
            uint64_t now = atomic_load(bytes_done);
            wan_progress_add(pg, now - reported);
            reported = now;
        }
    }
    pthread_mutex_unlock(&pl.lock);
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    if (pg && bytes_done) wan_progress_add(pg, atomic_load(bytes_done) - reported);
    free(tid);
    free(args);
    pthread_mutex_destroy(&pl.lock);
    pthread_cond_destroy(&pl.done);
    if (!started) return wan_fail(WAN_ERR_RUNTIME, "cannot start threads");
    if (pl.rc) return wan_fail(pl.rc, "%s", pl.msg);
    return 0;
}

/* ---------------------------------------------------------------- buffers */

/* Split the budget over the threads: per thread one chunk (the target piece being produced)
 * and one staging buffer (source bytes read in bulk), each at most MAX_BUFFER. */
static int plan_buffers(const wan_rs_params *p, uint64_t reserve, uint64_t largest, int *threads, size_t *chunk) {
    int th = p->threads > 0 ? p->threads : 1;
    uint64_t budget = p->memory_budget;
    if (budget <= reserve || (budget - reserve) / (uint64_t)th / 2 < MIN_BUFFER) {
        char b[32], need[32];
        wan_rs_format_size(budget, b, sizeof b);
        wan_rs_format_size(reserve + (uint64_t)th * 2 * MIN_BUFFER, need, sizeof need);
        return wan_fail(WAN_ERR_USAGE, "--memory-budget %s is too small for %d threads and this checkpoint's piece "
                                       "tables (at least %s)", b, th, need);
    }
    uint64_t per = (budget - reserve) / (uint64_t)th / 2;
    if (per > MAX_BUFFER) per = MAX_BUFFER;
    /* no need for more than the largest piece */
    uint64_t want = largest < MIN_BUFFER ? MIN_BUFFER : (largest + 4095) & ~(uint64_t)4095;
    if (per > want) per = want;
    per &= ~(uint64_t)4095;
    *threads = th;
    *chunk = (size_t)per;
    return 0;
}

/* ---------------------------------------------------------------- copy */

/* What has been hashed of a source box: bytes [0, cursor) in order. */
typedef struct {
    pthread_mutex_t lock;
    XXH3_state_t *st;
    uint64_t cursor, nbytes;
    bool touched; /* some of it was read: its checksum must be verified */
} src_hash;

typedef struct {
    const wan_rs_tensor *t;
    int nt;
    wan_rs_target *dst;
    int nd;
    int *src_base;   /* first src_hash of tensor i */
    src_hash *h;
    int nh;
    size_t chunk;    /* bytes per buffer */
    char **bufs;     /* per thread: chunk then staging */
    atomic_uint_fast64_t written, read, reread;
} copy_job;

static uint64_t box_bytes(int ndim, const wan_box *b, wan_dtype dt) {
    return (uint64_t)wan_numel(ndim, b->shape) * wan_dtype_size(dt);
}

/* Feed bytes [off, off + n) of a source box to its checksum when they continue what was hashed. */
static void feed(copy_job *j, int hi, uint64_t off, const void *data, uint64_t n) {
    src_hash *h = &j->h[hi];
    pthread_mutex_lock(&h->lock);
    h->touched = true;
    if (off <= h->cursor && h->cursor < off + n) {
        if (!h->st) {
            h->st = XXH3_createState();
            if (h->st) XXH3_64bits_reset(h->st);
        }
        if (h->st) {
            uint64_t skip = h->cursor - off;
            XXH3_64bits_update(h->st, (const char *)data + skip, (size_t)(n - skip));
            h->cursor = off + n;
        }
    }
    pthread_mutex_unlock(&h->lock);
}

typedef struct {
    uint64_t so, dof; /* element offsets of a run in the source box and in the chunk */
} run_pos;

/* Read source bytes [so, so + n elements) of s (hash index hi) into buf. */
static int read_src(copy_job *j, const wan_rs_tensor *t, const wan_rs_source *s, int hi, uint64_t so, uint64_t n,
                    void *buf) {
    size_t es = wan_dtype_size(s->dtype);
    uint64_t off = so * es, nb = n * es;
    int rc = wan_pread_full(s->fd, buf, (size_t)nb, s->offset + off, s->path);
    if (rc) return wan_error_context(rc, "reading %s (%s)", t->name, t->kind);
    atomic_fetch_add(&j->read, nb);
    if (s->check) feed(j, hi, off, buf, nb);
    return 0;
}

/* Copy the runs batch[0..n) (each `run` elements) of source s into the chunk through staging:
 * one read spanning them all. */
static int flush_batch(copy_job *j, const wan_rs_tensor *t, const wan_rs_source *s, int hi, const run_pos *batch,
                       int n, uint64_t run, char *chunk, wan_dtype dt, char *staging) {
    if (!n) return 0;
    uint64_t span = batch[n - 1].so + run - batch[0].so;
    WAN_TRY(read_src(j, t, s, hi, batch[0].so, span, staging));
    size_t ss = wan_dtype_size(s->dtype), ds = wan_dtype_size(dt);
    for (int i = 0; i < n; i++)
        wan_convert(chunk + batch[i].dof * ds, dt, staging + (batch[i].so - batch[0].so) * ss, s->dtype, (size_t)run);
    return 0;
}

/* Copy x (inside source box s and inside the chunk, which holds the flat range starting at
 * element `a` of target box d) into the chunk. */
static int gather(copy_job *j, const wan_rs_tensor *t, const wan_rs_source *s, int hi, const wan_box *x,
                  const wan_rs_target *d, int64_t a, char *chunk, char *staging, run_pos *batch) {
    int nd = t->ndim;
    /* trailing dims that x covers fully in both boxes are contiguous in both: one run */
    int k = nd - 1;
    while (k > 0 && x->shape[k] == s->box.shape[k] && x->shape[k] == d->box.shape[k]) k--;
    uint64_t run = 1;
    for (int i = k; i < nd; i++) run *= (uint64_t)x->shape[i];
    int64_t sstride[WAN_MAX_DIMS], dstride[WAN_MAX_DIMS];
    sstride[nd - 1] = dstride[nd - 1] = 1;
    for (int i = nd - 2; i >= 0; i--) {
        sstride[i] = sstride[i + 1] * s->box.shape[i + 1];
        dstride[i] = dstride[i + 1] * d->box.shape[i + 1];
    }
    uint64_t nruns = 1;
    for (int i = 0; i < k; i++) nruns *= (uint64_t)x->shape[i];
    size_t ss = wan_dtype_size(s->dtype), ds = wan_dtype_size(d->dtype);
    bool same = s->dtype == d->dtype;
    size_t cap = j->chunk / ss; /* staging capacity in source elements */
    int64_t idx[WAN_MAX_DIMS] = {0};
    int nb = 0;
    uint64_t useful = 0;
    for (uint64_t r = 0; r < nruns; r++) {
        int64_t so = 0, dof = -a;
        for (int i = 0; i < nd; i++) {
            int64_t g = x->start[i] + (i < k ? idx[i] : 0);
            so += (g - s->box.start[i]) * sstride[i];
            dof += (g - d->box.start[i]) * dstride[i];
        }
        for (int i = k - 1; i >= 0; i--) {
            if (++idx[i] < x->shape[i]) break;
            idx[i] = 0;
        }
        if (same && run * ss >= DIRECT_RUN) {
            /* long runs go straight into the chunk */
            WAN_TRY(read_src(j, t, s, hi, (uint64_t)so, run, chunk + (uint64_t)dof * ds));
            continue;
        }
        if (run > cap) {
            /* a long run of another type: through staging in pieces */
            for (uint64_t o = 0; o < run; o += cap) {
                uint64_t m = run - o < cap ? run - o : cap;
                WAN_TRY(read_src(j, t, s, hi, (uint64_t)so + o, m, staging));
                wan_convert(chunk + ((uint64_t)dof + o) * ds, d->dtype, staging, s->dtype, (size_t)m);
            }
            continue;
        }
        /* short runs: batch while one read of their span stays dense and fits staging */
        if (nb) {
            uint64_t span = (uint64_t)so + run - batch[0].so;
            if (nb == MAX_BATCH || span > cap || span > 2 * (useful + run)) {
                WAN_TRY(flush_batch(j, t, s, hi, batch, nb, run, chunk, d->dtype, staging));
                nb = 0;
                useful = 0;
            }
        }
        batch[nb++] = (run_pos){(uint64_t)so, (uint64_t)dof};
        useful += run;
    }
    return flush_batch(j, t, s, hi, batch, nb, run, chunk, d->dtype, staging);
}

static int copy_target(void *ctx, int thread, int item) {
    copy_job *j = ctx;
    wan_rs_target *d = &j->dst[item];
    const wan_rs_tensor *t = &j->t[d->tensor];
    char *chunk = j->bufs[thread], *staging = chunk + j->chunk;
    run_pos *batch = (run_pos *)(staging + j->chunk);
    size_t ds = wan_dtype_size(d->dtype);
    int64_t total = wan_numel(t->ndim, d->box.shape), per = (int64_t)(j->chunk / ds);
    XXH3_state_t *st = XXH3_createState();
    if (!st) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    XXH3_64bits_reset(st);
    int rc = 0;
    for (int64_t a = 0; a < total && !rc; a += per) {
        int64_t b = a + per < total ? a + per : total;
        wan_box boxes[2 * WAN_MAX_DIMS];
        int n = wan_flat_range_boxes(t->ndim, d->box.shape, a, b, boxes);
        int64_t covered = 0;
        for (int i = 0; i < n && !rc; i++) {
            for (int dd = 0; dd < t->ndim; dd++) boxes[i].start[dd] += d->box.start[dd];
            for (int k = 0; k < t->nsrc && !rc; k++) {
                wan_box x;
                if (!wan_box_intersect(t->ndim, &boxes[i], &t->src[k].box, &x)) continue;
                rc = gather(j, t, &t->src[k], j->src_base[d->tensor] + k, &x, d, a, chunk, staging, batch);
                covered += wan_numel(t->ndim, x.shape);
            }
        }
        if (!rc && covered != b - a)
            rc = wan_fail(WAN_ERR_RUNTIME, "tensor %s (%s): the source pieces do not cover the target piece", t->name,
                          t->kind);
        if (rc) break;
        uint64_t nbytes = (uint64_t)(b - a) * ds;
        XXH3_64bits_update(st, chunk, (size_t)nbytes);
        if (d->write) rc = d->write(d->ctx, d->offset + (uint64_t)a * ds, chunk, (size_t)nbytes);
        atomic_fetch_add(&j->written, nbytes);
    }
    d->xxh64 = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return rc;
}

/* Hash what was not read in order, then compare every source that was read with its checksum
 * (sources nobody needed, e.g. optimizer state when exporting weights, are not read at all). */
static int finish_source(void *ctx, int thread, int item) {
    copy_job *j = ctx;
    int lo = 0, hi = j->nt - 1; /* the tensor whose sources hold item: last ti with src_base[ti] <= item */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (j->src_base[mid] <= item) lo = mid;
        else hi = mid - 1;
    }
    int ti = lo;
    const wan_rs_tensor *t = &j->t[ti];
    const wan_rs_source *s = &t->src[item - j->src_base[ti]];
    src_hash *h = &j->h[item];
    if (!s->check || !h->touched) return 0;
    char *buf = j->bufs[thread];
    size_t cap = 2 * j->chunk;
    while (h->cursor < h->nbytes) {
        uint64_t n = h->nbytes - h->cursor < cap ? h->nbytes - h->cursor : cap;
        int rc = wan_pread_full(s->fd, buf, (size_t)n, s->offset + h->cursor, s->path);
        if (rc) return wan_error_context(rc, "reading %s (%s)", t->name, t->kind);
        atomic_fetch_add(&j->reread, n);
        feed(j, item, h->cursor, buf, n);
    }
    uint64_t got = h->st ? XXH3_64bits_digest(h->st) : XXH3_64bits(NULL, 0);
    if (got != s->xxh64)
        return wan_fail(WAN_ERR_RUNTIME, "%s: checksum mismatch in the piece of %s (%s) at offset %llu: corrupt source",
                        s->path, t->name, t->kind, (unsigned long long)s->offset);
    return 0;
}

int wan_rs_copy(const wan_rs_tensor *t, int nt, wan_rs_target *dst, int nd, const wan_rs_params *p,
                wan_rs_stats *stats) {
    double t0 = wan_now();
    copy_job j;
    memset(&j, 0, sizeof j);
    j.t = t, j.nt = nt, j.dst = dst, j.nd = nd;
    j.src_base = calloc((size_t)nt + 1, sizeof *j.src_base);
    if (!j.src_base) return wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int i = 0; i < nt; i++) j.src_base[i + 1] = j.src_base[i] + t[i].nsrc;
    j.nh = j.src_base[nt];
    uint64_t reserve = (uint64_t)j.nh * (sizeof(src_hash) + 640) + (uint64_t)nd * sizeof(wan_rs_target) + (1u << 20);
    uint64_t largest = 0;
    for (int i = 0; i < nd; i++) {
        uint64_t b = box_bytes(t[dst[i].tensor].ndim, &dst[i].box, dst[i].dtype);
        if (b > largest) largest = b;
    }
    for (int i = 0; i < nt; i++)
        for (int k = 0; k < t[i].nsrc; k++) {
            uint64_t b = box_bytes(t[i].ndim, &t[i].src[k].box, t[i].src[k].dtype);
            if (b > largest) largest = b;
        }
    int threads;
    size_t chunk;
    int rc = plan_buffers(p, reserve, largest, &threads, &chunk);
    if (rc) {
        free(j.src_base);
        return rc;
    }
    j.chunk = chunk;
    j.h = calloc(nz((j.nh)), sizeof *j.h);
    j.bufs = calloc((size_t)threads, sizeof *j.bufs);
    if (!j.h || !j.bufs) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int i = 0; i < j.nh && !rc; i++) pthread_mutex_init(&j.h[i].lock, NULL);
    for (int i = 0; i < nt; i++)
        for (int k = 0; k < t[i].nsrc; k++)
            if (j.h) j.h[j.src_base[i] + k].nbytes = box_bytes(t[i].ndim, &t[i].src[k].box, t[i].src[k].dtype);
    for (int i = 0; i < threads && !rc; i++) {
        j.bufs[i] = malloc(2 * chunk + MAX_BATCH * sizeof(run_pos));
        if (!j.bufs[i]) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory for the copy buffers");
    }
    atomic_init(&j.written, 0);
    atomic_init(&j.read, 0);
    atomic_init(&j.reread, 0);
    uint64_t total = 0;
    for (int i = 0; i < nd; i++) total += box_bytes(t[dst[i].tensor].ndim, &dst[i].box, dst[i].dtype);
    if (!rc) {
        wan_progress pg;
        if (!p->quiet) wan_progress_begin(&pg, p->what ? p->what : "copying", total, true);
        rc = pool_run(threads, nd, copy_target, &j, p->quiet ? NULL : &pg, &j.written);
        if (!rc) rc = pool_run(threads, j.nh, finish_source, &j, NULL, NULL);
        if (!p->quiet) wan_progress_end(&pg);
    }
    if (stats) {
        stats->bytes_read += atomic_load(&j.read);
        stats->bytes_reread += atomic_load(&j.reread);
        stats->bytes_written += atomic_load(&j.written);
        stats->seconds_copy += wan_now() - t0;
        uint64_t bb = (uint64_t)threads * (2 * chunk + MAX_BATCH * sizeof(run_pos));
        if (bb > stats->buffer_bytes) stats->buffer_bytes = bb;
    }
    if (j.h)
        for (int i = 0; i < j.nh; i++) {
            if (j.h[i].st) XXH3_freeState(j.h[i].st);
            pthread_mutex_destroy(&j.h[i].lock);
        }
    if (j.bufs)
        for (int i = 0; i < threads; i++) free(j.bufs[i]);
    free(j.bufs);
    free(j.h);
    free(j.src_base);
    return rc;
}

/* ---------------------------------------------------------------- verify */

typedef struct {
    wan_ckpt *c;
    int *tensor, *piece; /* item -> (tensor, piece) */
    char **bufs;
    size_t cap;
    atomic_uint_fast64_t done;
} verify_job;

static int verify_piece(void *ctx, int thread, int item) {
    verify_job *v = ctx;
    const wan_ckpt_tensor *t = &v->c->t[v->tensor[item]];
    int k = v->piece[item];
    uint64_t h;
    WAN_TRY(wan_ckpt_piece_xxh64(v->c, t, k, v->bufs[thread], v->cap, &h));
    if (h != t->pieces[k].xxh64) return wan_ckpt_fail_checksum(v->c, t, k);
    atomic_fetch_add(&v->done, t->pieces[k].nbytes);
    return 0;
}

int wan_rs_verify_ckpt(wan_ckpt *c, const wan_rs_params *p, wan_rs_stats *stats) {
    double t0 = wan_now();
    WAN_TRY(wan_ckpt_open_files(c));
    int n = 0;
    uint64_t total = 0;
    for (int i = 0; i < c->nt; i++) n += c->t[i].npieces;
    uint64_t largest = 0;
    for (int i = 0; i < c->nt; i++)
        for (int k = 0; k < c->t[i].npieces; k++)
            if (c->t[i].pieces[k].nbytes > largest) largest = c->t[i].pieces[k].nbytes;
    int threads;
    size_t chunk;
    WAN_TRY(plan_buffers(p, (uint64_t)n * 2 * sizeof(int) + (1u << 20), largest / 2, &threads, &chunk));
    verify_job v;
    memset(&v, 0, sizeof v);
    v.c = c;
    v.cap = 2 * chunk;
    v.tensor = malloc(nz((n)) * sizeof(int));
    v.piece = malloc(nz((n)) * sizeof(int));
    v.bufs = calloc((size_t)threads, sizeof *v.bufs);
    int rc = !v.tensor || !v.piece || !v.bufs ? wan_fail(WAN_ERR_RUNTIME, "out of memory") : 0;
    for (int i = 0, m = 0; i < c->nt && !rc; i++)
        for (int k = 0; k < c->t[i].npieces; k++, m++) {
            v.tensor[m] = i;
            v.piece[m] = k;
            total += c->t[i].pieces[k].nbytes;
        }
    for (int i = 0; i < threads && !rc; i++)
        if (!(v.bufs[i] = malloc(v.cap))) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    atomic_init(&v.done, 0);
    if (!rc) {
        wan_progress pg;
        if (!p->quiet) wan_progress_begin(&pg, p->what ? p->what : "verifying", total, true);
        rc = pool_run(threads, n, verify_piece, &v, p->quiet ? NULL : &pg, &v.done);
        if (!p->quiet) wan_progress_end(&pg);
    }
    if (stats) {
        stats->bytes_verified += atomic_load(&v.done);
        stats->seconds_verify += wan_now() - t0;
    }
    if (v.bufs)
        for (int i = 0; i < threads; i++) free(v.bufs[i]);
    free(v.bufs);
    free(v.tensor);
    free(v.piece);
    return rc;
}
