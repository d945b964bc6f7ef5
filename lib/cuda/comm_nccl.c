/* The NCCL transport of the communication interface (comm.h): one GPU per rank, the unique id
 * shared through the bootstrap's key-value exchange (PMI2 under srun), one communicator for the
 * world and one per group from ncclCommSplit.
 *
 * Ordering: collectives run on streams of their own: one for the world and the model's
 * parallelism (tp, cp, pp), one for the data-parallel groups (dp, dpcp), whose gradient
 * reductions run under the backward and must not hold up the transfers the compute waits for
 * (NCCL runs the operations of one stream in order). The compute stream is the one passed to
 * wan_comm_nccl_create, or, when that is NULL, the stream of the CUDA backend made in this
 * process (so create the backend first). Before each, an event recorded on the compute
 * stream makes the NCCL stream wait for the data; after it, an event recorded on the NCCL stream
 * makes the compute stream wait for the result (wan_sendrecv_start: only at wan_comm_wait, so the
 * transfer overlaps the compute in between). The host does not wait: it goes on issuing work,
 * as it does for kernels, and the GPU never idles between a collective and the next kernel.
 * The host waits for the collectives where it must: flush (wan_comm_flush), barrier, and the
 * CUDA backend's downloads and syncs (wan_cuda_set_host_wait), which wait for everything in
 * flight here before they block on the compute stream.
 *
 * No hang: the communicators are non-blocking (config.blocking = 0), so initialisation, splits
 * and enqueues return at once and are polled against a deadline of comm->timeout_s seconds.
 * The collectives in flight are watched by a thread of their own (one event each, oldest
 * first): when one has made no progress for timeout_s seconds, or NCCL reports an
 * asynchronous error, the transport is poisoned, the failure logged, and every communicator
 * of this rank aborted (ncclCommAbort: the kernels stop, the streams move on); the next call,
 * flush or download then fails with WAN_ERR_RUNTIME naming the operation and the group.
 * Backstops, where nothing else could end a wait: the watchdog ends the process (exit 1, with
 * the message) when the host has been inside one NCCL call for the timeout (an enqueue stuck
 * behind a hung GPU) or has not stopped WAN_NCCL_GRACE_S seconds after a failure. The mutex
 * is held only for NCCL calls and the ring's bookkeeping, never across stream calls or aborts.
 *
 * What NCCL does not do: tell the other ranks. ncclCommAbort acts on this rank only, and a peer
 * that died or gave up leaves the others spinning with no error (unlike the CPU transport, which
 * sees dead processes and aborts). Prompt stopping therefore comes from the launcher: srun
 * --kill-on-bad-exit=1 (slurm/train.sbatch) or wan-train --nproc's supervisor end the job when a
 * rank exits non-zero; the deadline above is the backstop for a rank that hangs alive. */
#include <nccl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bootstrap.h"
#include "cuda_internal.h"
#include "error.h"
#include "log.h"

#define WAN_NCCL_MAX_COMMS 64 /* world + one per group this rank is in */
#define WAN_NCCL_DEFAULT_TIMEOUT 600
/* Collectives enqueued and not yet seen complete. Retired in issue order, so finished transfers
 * of the main stream wait behind the oldest gradient reduction of the second: room for a whole
 * backward's worth (a 14B stage with tp, sp and cp issues about 25 per block). */
#define WAN_NCCL_INFLIGHT 4096
#define WAN_NCCL_GRACE_S 30   /* after a failure: time the process has to stop by itself */

typedef struct {
    ncclComm_t comm;     /* NULL when this rank is not a member */
    cudaStream_t stream; /* the transport's stream its collectives run on */
} nccl_group;

/* A collective in flight: completion event, what to call it in a message. */
typedef struct {
    cudaEvent_t done;
    ncclComm_t comm;
    char what[200]; /* "allreduce on group tp[0] (member 0 of 2, world rank 0)" */
} inflight;

typedef struct {
    int device;
    cudaStream_t compute; /* the caller's stream (the backend's) */
    cudaStream_t stream;  /* collectives of the model's parallelism (tp, cp, pp) and the world */
    cudaStream_t bg_stream; /* data-parallel ones (dp, dpcp): the gradient reductions that run
                             * under the backward must not queue in front of the transfers the
                             * compute waits for */
    cudaEvent_t ready;
    float *barrier_buf;   /* four floats on the device: the barrier's, and the link warm-up's */
    /* mu guards the fields below and every NCCL call on the communicators (the watchdog may
     * abort them from its thread); cv signals progress of the ring, poisoning and quitting */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool have_sync, have_watchdog, quit; /* have_sync: mu and cv exist (always, once created) */
    pthread_t watchdog;
    const char *_Atomic in_call; /* the NCCL call the main thread is in while holding mu (messages) */
    inflight ring[WAN_NCCL_INFLIGHT]; /* [head, tail) in flight, position id at id % size */
    uint64_t head, tail;
    double head_since;    /* when ring[head] became the oldest in flight */
    bool poisoned;
    bool announced;       /* why was logged or returned to a caller */
    double poisoned_at;
    char why[768];        /* the first failure, repeated by every later call */
    ncclComm_t comms[WAN_NCCL_MAX_COMMS]; /* world first; aborted or destroyed together */
    int ncomms;
    nccl_group world;
    nccl_group groups[WAN_NCCL_MAX_COMMS]; /* what wan_group.impl points to */
    int ngroups;
} nccl_impl;

static nccl_impl *impl_of(wan_comm *c) { return (nccl_impl *)c->impl; }

/* Mark the transport failed and take its communicators out of use (mu held). Returns how many
 * it put in out[]: the caller aborts them (abort_comms) after releasing mu, because
 * ncclCommAbort can take long and nothing may wait for mu meanwhile. No NCCL call touches a
 * communicator once poisoned is set, so they are the caller's alone. */
static int poison_take_locked(nccl_impl *ni, const char *why, ncclComm_t *out) {
    if (ni->poisoned) return 0;
    ni->poisoned = true;
    ni->poisoned_at = wan_now();
    snprintf(ni->why, sizeof ni->why, "%s", why);
    int n = ni->ncomms;
    for (int i = 0; i < n; i++) out[i] = ni->comms[i];
    ni->ncomms = 0;
    pthread_cond_broadcast(&ni->cv);
    return n;
}

/* Abort (stops kernels that wait for a dead peer, the streams move on), newest first. */
static void abort_comms(ncclComm_t *cs, int n) {
    for (int i = n - 1; i >= 0; i--)
        if (cs[i]) (void)ncclCommAbort(cs[i]);
}

static void lock(nccl_impl *ni) { pthread_mutex_lock(&ni->mu); }
static void unlock(nccl_impl *ni) { pthread_mutex_unlock(&ni->mu); }

static void poison(wan_comm *c, const char *why) {
    nccl_impl *ni = impl_of(c);
    ncclComm_t cs[WAN_NCCL_MAX_COMMS];
    lock(ni);
    int n = poison_take_locked(ni, why, cs);
    unlock(ni);
    abort_comms(cs, n);
}

/* "allreduce on group tp[0] (member 0 of 2, world rank 0)" */
static void describe(char *out, size_t cap, wan_comm *c, wan_group *g, const char *op) {
    if (g)
        snprintf(out, cap, "%s on group %s[%d] (member %d of %d, world rank %d)", op, g->name, g->index, g->rank,
                 g->size, c->rank);
    else
        snprintf(out, cap, "%s (world rank %d of %d)", op, c->rank, c->size);
}

/* The error every call returns once the transport is poisoned; mu not held. */
static int failed_earlier(wan_comm *c, wan_group *g, const char *op) {
    nccl_impl *ni = impl_of(c);
    char what[200];
    describe(what, sizeof what, c, g, op);
    lock(ni);
    ni->announced = true;
    int rc = wan_fail(WAN_ERR_RUNTIME, "NCCL %s: the transport failed earlier: %s", what, ni->why);
    unlock(ni);
    return rc;
}

/* Record the failure of `op` on group g: message, poison, WAN_ERR_RUNTIME. */
__attribute__((format(printf, 4, 5))) static int fail_op(wan_comm *c, wan_group *g, const char *op, const char *fmt,
                                                         ...) {
    char detail[512], what[200], msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    describe(what, sizeof what, c, g, op);
    snprintf(msg, sizeof msg, "NCCL %s: %s", what, detail);
    poison(c, msg);
    impl_of(c)->announced = true; /* the caller reports it */
    return wan_fail(WAN_ERR_RUNTIME, "%s", msg);
}

static cudaStream_t stream_of(wan_group *g) { return ((nccl_group *)g->impl)->stream; }

static int timeout_of(wan_comm *c) { return c->timeout_s > 0 ? c->timeout_s : WAN_NCCL_DEFAULT_TIMEOUT; }

/* Wait until comm has finished its background work (a non-blocking call returned
 * ncclInProgress: initialisation, split, finalise, or the enqueue of a collective). */
static int wait_comm(wan_comm *c, wan_group *g, ncclComm_t comm, const char *op) {
    nccl_impl *ni = impl_of(c);
    double deadline = wan_now() + timeout_of(c);
    long polls = 0;
    for (;;) {
        lock(ni);
        if (ni->poisoned) {
            unlock(ni);
            return failed_earlier(c, g, op);
        }
        ncclResult_t st = ncclSuccess, r = ncclCommGetAsyncError(comm, &st);
        unlock(ni);
        if (r != ncclSuccess) st = r;
        if (st == ncclSuccess) return 0;
        if (st != ncclInProgress)
            return fail_op(c, g, op, "%s (%s)", ncclGetErrorString(st), ncclGetLastError(comm));
        if (wan_now() > deadline)
            return fail_op(c, g, op, "no progress for %d s (comm_timeout): a peer is missing, stuck or dead",
                           timeout_of(c));
        if (++polls > 2000) { /* past the first ~ms, poll gently */
            struct timespec ts = {0, 50 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

/* Start a collective on g: the NCCL stream ordered after the compute stream's work so far;
 * returns with mu held for the enqueue (finish releases it), the communicator in *comm. */
static int enter(wan_group *g, const char *op, ncclComm_t *comm) {
    wan_comm *c = g->comm;
    nccl_impl *ni = impl_of(c);
    nccl_group *ng = g->impl;
    if (!ng || !ng->comm)
        return wan_fail(WAN_ERR_RUNTIME, "NCCL %s on group %s[%d]: world rank %d is not a member", op, g->name,
                        g->index, c->rank);
    /* stream calls outside mu: they can block (a full launch queue behind a stuck collective),
     * and only this thread uses ready and the NCCL stream */
    cudaError_t e = cudaEventRecord(ni->ready, ni->compute);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(ng->stream, ni->ready, 0);
    if (e != cudaSuccess) return fail_op(c, g, op, "ordering after the compute stream: %s", cudaGetErrorString(e));
    lock(ni);
    if (ni->poisoned) {
        unlock(ni);
        return failed_earlier(c, g, op);
    }
    *comm = ng->comm;
    atomic_store(&ni->in_call, op);
    return 0;
}

/* After the enqueue call r (mu held, from enter): wait for the enqueue, record the completion
 * event and hand it to the watchdog. req NULL: the compute stream waits for it now; else *req
 * names it for nccl_wait. */
static int finish(wan_group *g, ncclComm_t comm, ncclResult_t r, const char *op, uint64_t *req) {
    wan_comm *c = g->comm;
    nccl_impl *ni = impl_of(c);
    atomic_store(&ni->in_call, NULL);
    unlock(ni);
    if (r != ncclSuccess && r != ncclInProgress)
        return fail_op(c, g, op, "%s (%s)", ncclGetErrorString(r), ncclGetLastError(comm));
    if (r == ncclInProgress) WAN_TRY(wait_comm(c, g, comm, op));
    lock(ni);
    while (ni->tail - ni->head >= WAN_NCCL_INFLIGHT && !ni->poisoned) pthread_cond_wait(&ni->cv, &ni->mu);
    if (ni->poisoned) {
        unlock(ni);
        return failed_earlier(c, g, op);
    }
    uint64_t id = ni->tail;
    inflight *f = &ni->ring[id % WAN_NCCL_INFLIGHT];
    unlock(ni);
    /* the slot is this thread's until tail moves past it; the record can block (see enter) */
    cudaError_t e = cudaEventRecord(f->done, stream_of(g));
    if (e != cudaSuccess) return fail_op(c, g, op, "recording its completion: %s", cudaGetErrorString(e));
    lock(ni);
    if (ni->poisoned) {
        unlock(ni);
        return failed_earlier(c, g, op);
    }
    f->comm = comm;
    describe(f->what, sizeof f->what, c, g, op);
    if (ni->head == ni->tail) ni->head_since = wan_now();
    ni->tail++;
    pthread_cond_broadcast(&ni->cv);
    unlock(ni);
    if (req) {
        *req = id;
        return 0;
    }
    /* only this thread records the ring's events, so f->done is still this collective's */
    e = cudaStreamWaitEvent(ni->compute, f->done, 0);
    if (e != cudaSuccess) return fail_op(c, g, op, "ordering the compute stream: %s", cudaGetErrorString(e));
    return 0;
}

/* The compute stream waits for the collective started as id. */
static int nccl_wait(wan_group *g, uint64_t id) {
    wan_comm *c = g->comm;
    nccl_impl *ni = impl_of(c);
    lock(ni);
    bool in_flight = id >= ni->head && id < ni->tail, bad = ni->poisoned;
    unlock(ni);
    if (bad) return failed_earlier(c, g, "wait");
    if (!in_flight) return 0; /* completed (or never started): nothing to order */
    cudaError_t e = cudaStreamWaitEvent(ni->compute, ni->ring[id % WAN_NCCL_INFLIGHT].done, 0);
    if (e != cudaSuccess) return fail_op(c, g, "wait", "ordering the compute stream: %s", cudaGetErrorString(e));
    return 0;
}

/* Block until the watchdog has seen every collective in flight complete, or the transport fail. */
static int nccl_flush(wan_comm *c) {
    nccl_impl *ni = impl_of(c);
    ncclComm_t cs[WAN_NCCL_MAX_COMMS];
    int n = 0;
    lock(ni);
    while (ni->head < ni->tail && !ni->poisoned) pthread_cond_wait(&ni->cv, &ni->mu);
    /* a collective that failed may have let its kernel finish before the error was posted */
    for (int i = 0; i < ni->ncomms && !ni->poisoned; i++) {
        ncclResult_t st = ncclSuccess, r = ncclCommGetAsyncError(ni->comms[i], &st);
        if (r != ncclSuccess) st = r;
        if (st != ncclSuccess && st != ncclInProgress) {
            char msg[768];
            snprintf(msg, sizeof msg, "NCCL (world rank %d of %d): a collective failed: %s (%s)", c->rank, c->size,
                     ncclGetErrorString(st), ncclGetLastError(ni->comms[i]));
            n = poison_take_locked(ni, msg, cs);
        }
    }
    int rc = 0;
    if (ni->poisoned) {
        ni->announced = true;
        rc = wan_fail(WAN_ERR_RUNTIME, "%s", ni->why); /* the failure itself */
    }
    unlock(ni);
    abort_comms(cs, n);
    return rc;
}

static void deadline_in(struct timespec *ts, double s) {
    clock_gettime(CLOCK_REALTIME, ts);
    long ns = ts->tv_nsec + (long)(s * 1e9);
    ts->tv_sec += ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

/* mu for the watchdog, waiting at most a second at a time. The main thread holds mu only
 * inside an NCCL call; one that has not returned within the timeout (an enqueue stuck behind
 * a hung GPU) leaves nothing that could end the wait: say so and end the process. */
static void watchdog_lock(wan_comm *c, nccl_impl *ni) {
    double since = wan_now();
    for (;;) {
        struct timespec ts;
        deadline_in(&ts, 1.0);
        if (pthread_mutex_timedlock(&ni->mu, &ts) == 0) return;
        if (wan_now() - since > timeout_of(c)) {
            const char *call = atomic_load(&ni->in_call);
            wan_log(WAN_LOG_ERROR,
                    "NCCL (world rank %d of %d): the host has been inside NCCL's %s for more than %d s (comm_timeout): "
                    "a peer is missing, stuck or dead; exiting",
                    c->rank, c->size, call ? call : "enqueue", timeout_of(c));
            _exit(WAN_ERR_RUNTIME);
        }
    }
}

/* The watchdog: retires completed collectives in order; aborts everything when the oldest made
 * no progress for the timeout or its communicator reports an error. Holds mu except while it
 * queries an event, sleeps or aborts. */
static void *watchdog_main(void *arg) {
    wan_comm *c = arg;
    nccl_impl *ni = impl_of(c);
    (void)cudaSetDevice(ni->device); /* the current device is per thread */
    long idle_polls = 0;
    watchdog_lock(c, ni);
    while (!ni->quit) {
        if (ni->poisoned) {
            /* the run cannot go on: the main thread learns it at its next call, flush or
             * download and stops; should it be stuck where none comes, end the process */
            if (wan_now() - ni->poisoned_at > WAN_NCCL_GRACE_S) {
                wan_log(WAN_LOG_ERROR, "%s; the process did not stop within %d s of it: exiting", ni->why,
                        WAN_NCCL_GRACE_S);
                _exit(WAN_ERR_RUNTIME);
            }
            struct timespec ts;
            deadline_in(&ts, 1.0);
            pthread_cond_timedwait(&ni->cv, &ni->mu, &ts);
            continue;
        }
        if (ni->head == ni->tail) { /* nothing in flight: nothing can hang */
            pthread_cond_wait(&ni->cv, &ni->mu);
            idle_polls = 0;
            continue;
        }
        inflight *f = &ni->ring[ni->head % WAN_NCCL_INFLIGHT];
        ncclResult_t st = ncclSuccess, r = ncclCommGetAsyncError(f->comm, &st);
        if (r != ncclSuccess) st = r;
        pthread_mutex_unlock(&ni->mu);
        cudaError_t q = cudaEventQuery(f->done); /* the event is not re-recorded before it retires */
        if (q != cudaSuccess) (void)cudaGetLastError(); /* this thread's copy of "not ready" */
        watchdog_lock(c, ni);
        if (ni->quit || ni->poisoned) continue;
        char msg[768];
        if (st != ncclSuccess && st != ncclInProgress) /* also when the kernel gave up and "completed" */
            snprintf(msg, sizeof msg, "NCCL %s: %s (%s)", f->what, ncclGetErrorString(st), ncclGetLastError(f->comm));
        else if (q == cudaSuccess) {
            ni->head++;
            ni->head_since = wan_now();
            pthread_cond_broadcast(&ni->cv);
            idle_polls = 0;
            continue;
        } else if (q != cudaErrorNotReady)
            snprintf(msg, sizeof msg, "NCCL %s: CUDA: %s", f->what, cudaGetErrorString(q));
        else if (wan_now() - ni->head_since > timeout_of(c))
            snprintf(msg, sizeof msg, "NCCL %s: no progress for %d s (comm_timeout): a peer is missing, stuck or dead",
                     f->what, timeout_of(c));
        else {
            /* poll briefly at 10 us (short collectives), then every 200 us: a flush learns of the
             * completion that much later, and the thread costs no core. Without mu: the main
             * thread may be inside an enqueue that waits for the GPU */
            pthread_mutex_unlock(&ni->mu);
            struct timespec ts = {0, ++idle_polls < 50 ? 10000 : 200000};
            nanosleep(&ts, NULL);
            watchdog_lock(c, ni);
            continue;
        }
        ncclComm_t cs[WAN_NCCL_MAX_COMMS];
        int n = poison_take_locked(ni, msg, cs);
        ni->announced = true;
        pthread_mutex_unlock(&ni->mu);
        /* said now: the main thread may be blocked where it cannot report it soon */
        wan_log(WAN_LOG_WARN, "%s: aborting this rank's NCCL communicators", msg);
        abort_comms(cs, n);
        watchdog_lock(c, ni);
    }
    pthread_mutex_unlock(&ni->mu);
    return NULL;
}

static int host_wait_hook(void *ctx) { return nccl_flush(ctx); }

static void stop_watchdog(nccl_impl *ni) {
    if (!ni->have_watchdog) return;
    pthread_mutex_lock(&ni->mu);
    ni->quit = true;
    pthread_cond_broadcast(&ni->cv);
    pthread_mutex_unlock(&ni->mu);
    /* an abort that does not return (NCCL can hang there) must not keep the process */
    struct timespec ts;
    deadline_in(&ts, 10.0);
    if (pthread_timedjoin_np(ni->watchdog, NULL, &ts) != 0) {
        wan_warn("NCCL: the watchdog thread did not stop within 10 s (stuck in ncclCommAbort?); leaving it");
        pthread_detach(ni->watchdog);
    }
    ni->have_watchdog = false;
}

static ncclDataType_t nccl_type(wan_dtype dt) {
    switch (dt) {
    case WAN_F32: return ncclFloat32;
    case WAN_BF16: return ncclBfloat16;
    case WAN_F16: return ncclFloat16;
    }
    return ncclFloat32;
}

/* ---------------------------------------------------------------- collectives */

static int nccl_allreduce(wan_group *g, void *buf, size_t n, wan_dtype dt, wan_redop op) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "allreduce", &comm));
    ncclResult_t r = ncclAllReduce(buf, buf, n, nccl_type(dt), op == WAN_RED_MAX ? ncclMax : ncclSum, comm,
                                   stream_of(g));
    return finish(g, comm, r, "allreduce", NULL);
}

static int nccl_reduce_scatter(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "reduce_scatter", &comm));
    ncclResult_t r = ncclReduceScatter(send, recv, n, nccl_type(dt), ncclSum, comm, stream_of(g));
    return finish(g, comm, r, "reduce_scatter", NULL);
}

static int nccl_allgather(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "allgather", &comm));
    /* in place (send == recv + rank * n) is NCCL's in-place allgather */
    ncclResult_t r = ncclAllGather(send, recv, n, nccl_type(dt), comm, stream_of(g));
    return finish(g, comm, r, "allgather", NULL);
}

static int broadcast(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, uint64_t *req) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "broadcast", &comm));
    ncclResult_t r = ncclBroadcast(buf, buf, n, nccl_type(dt), root, comm, stream_of(g));
    return finish(g, comm, r, "broadcast", req);
}

static int nccl_broadcast(wan_group *g, void *buf, size_t n, wan_dtype dt, int root) {
    return broadcast(g, buf, n, dt, root, NULL);
}

static int nccl_broadcast_start(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, uint64_t *req) {
    return broadcast(g, buf, n, dt, root, req);
}

static int reduce(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, uint64_t *req) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "reduce", &comm));
    ncclResult_t r = ncclReduce(buf, buf, n, nccl_type(dt), ncclSum, root, comm, stream_of(g));
    return finish(g, comm, r, "reduce", req);
}

static int nccl_reduce(wan_group *g, void *buf, size_t n, wan_dtype dt, int root) {
    return reduce(g, buf, n, dt, root, NULL);
}

static int nccl_reduce_start(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, uint64_t *req) {
    return reduce(g, buf, n, dt, root, req);
}

static int sendrecv(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt,
                    uint64_t *req) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "sendrecv", &comm));
    cudaStream_t st = stream_of(g);
    ncclResult_t r = ncclGroupStart();
    if (r == ncclSuccess) r = ncclSend(send, n, nccl_type(dt), to, comm, st);
    if (r == ncclSuccess) r = ncclRecv(recv, n, nccl_type(dt), from, comm, st);
    ncclResult_t e = ncclGroupEnd(); /* always close the group */
    if (r == ncclSuccess) r = e;
    return finish(g, comm, r, "sendrecv", req);
}

static int nccl_sendrecv(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt) {
    return sendrecv(g, send, to, recv, from, n, dt, NULL);
}

static int nccl_sendrecv_start(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt,
                               uint64_t *req) {
    return sendrecv(g, send, to, recv, from, n, dt, req);
}

static int nccl_send(wan_group *g, const void *buf, size_t n, wan_dtype dt, int peer) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "send", &comm));
    ncclResult_t r = ncclSend(buf, n, nccl_type(dt), peer, comm, stream_of(g));
    return finish(g, comm, r, "send", NULL);
}

static int nccl_recv(wan_group *g, void *buf, size_t n, wan_dtype dt, int peer) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "recv", &comm));
    ncclResult_t r = ncclRecv(buf, n, nccl_type(dt), peer, comm, stream_of(g));
    return finish(g, comm, r, "recv", NULL);
}

static int nccl_barrier(wan_group *g) {
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "barrier", &comm));
    ncclResult_t r = ncclAllReduce(impl_of(g->comm)->barrier_buf, impl_of(g->comm)->barrier_buf, 1, ncclFloat32,
                                   ncclSum, comm, stream_of(g));
    WAN_TRY(finish(g, comm, r, "barrier", NULL));
    return nccl_flush(g->comm); /* the host waits: that is what a barrier is for */
}

/* ---------------------------------------------------------------- groups and lifetime */

/* One-element transfers over the links a group's kind uses: tp and cp shift rings (send to the
 * next member, receive from the previous), pp passes activations up and gradients down between
 * neighbouring stages (both directions, no wrap-around); the others only run collectives. */
static int connect_links(wan_group *g, const char *kind) {
    bool ring = !strcmp(kind, "tp") || !strcmp(kind, "cp"), chain = !strcmp(kind, "pp");
    if (!ring && !chain) return 0;
    float *b = impl_of(g->comm)->barrier_buf;
    int r = g->rank, p = g->size;
    if (ring) return sendrecv(g, b + 1, (r + 1) % p, b + 2, (r + p - 1) % p, 1, WAN_F32, NULL);
    ncclComm_t comm = NULL;
    WAN_TRY(enter(g, "connect", &comm));
    ncclResult_t res = ncclGroupStart();
    cudaStream_t st = stream_of(g);
    if (res == ncclSuccess && r + 1 < p) res = ncclSend(b + 1, 1, ncclFloat32, r + 1, comm, st);
    if (res == ncclSuccess && r + 1 < p) res = ncclRecv(b + 2, 1, ncclFloat32, r + 1, comm, st);
    if (res == ncclSuccess && r > 0) res = ncclSend(b + 1, 1, ncclFloat32, r - 1, comm, st);
    if (res == ncclSuccess && r > 0) res = ncclRecv(b + 3, 1, ncclFloat32, r - 1, comm, st);
    ncclResult_t e = ncclGroupEnd(); /* always close the group */
    if (res == ncclSuccess) res = e;
    return finish(g, comm, res, "connect", NULL);
}

static int nccl_make_group(wan_comm *c, wan_group *g, const char *name, int index, const int *ranks, int size) {
    nccl_impl *ni = impl_of(c);
    WAN_TRY(wan_group_init(g, c, name, index, ranks, size));
    if (ni->ncomms >= WAN_NCCL_MAX_COMMS || ni->ngroups >= WAN_NCCL_MAX_COMMS)
        return wan_fail(WAN_ERR_RUNTIME, "make_group %s[%d]: more than %d NCCL groups", name, index,
                        WAN_NCCL_MAX_COMMS - 1);
    nccl_group *ng = &ni->groups[ni->ngroups++];
    g->impl = ng;
    const char *one = getenv("WAN_NCCL_ONE_STREAM");
    bool dp_group = !strcmp(name, "dp") || !strcmp(name, "dpcp");
    ng->stream = dp_group && !(one && *one && strcmp(one, "0")) ? ni->bg_stream : ni->stream;
    /* every rank of the world calls this for its own group of the kind: the color (the group's
     * index) separates the groups, the key orders the members as listed */
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t world = ni->world.comm;
    lock(ni);
    if (ni->poisoned) {
        unlock(ni);
        return failed_earlier(c, g, "make_group");
    }
    ncclResult_t r = ncclCommSplit(world, g->rank >= 0 ? index : NCCL_SPLIT_NOCOLOR, g->rank >= 0 ? g->rank : 0,
                                   &ng->comm, &cfg);
    unlock(ni);
    if (r != ncclSuccess && r != ncclInProgress)
        return fail_op(c, g, "make_group (ncclCommSplit)", "%s (%s)", ncclGetErrorString(r), ncclGetLastError(world));
    /* A non-blocking split fills in the new communicator only when it is done, which the parent
     * reports (NCCL stores the handle at the end of its init job; until then it is NULL). From
     * then on it is aborted with the others; one that arrives after a failure is aborted now. */
    int wrc = wait_comm(c, g, world, "make_group (ncclCommSplit)");
    lock(ni);
    ncclComm_t made = __atomic_load_n(&ng->comm, __ATOMIC_ACQUIRE), late = NULL;
    if (made && !ni->poisoned) ni->comms[ni->ncomms++] = made;
    else late = made;
    unlock(ni);
    if (late) {
        (void)ncclCommAbort(late);
        ng->comm = NULL;
    }
    WAN_TRY(wrc);
    if (g->rank >= 0 && !ng->comm)
        return fail_op(c, g, "make_group (ncclCommSplit)", "the split completed without this rank's communicator");
    if (ng->comm) {
        WAN_TRY(wait_comm(c, g, ng->comm, "make_group (ncclCommSplit)"));
        int n = 0;
        lock(ni);
        ncclResult_t rc = ni->poisoned ? ncclInvalidUsage : ncclCommCount(ng->comm, &n);
        unlock(ni);
        if (rc != ncclSuccess || n != size)
            return fail_op(c, g, "make_group", "the new communicator has %d ranks, expected %d", n, size);
        /* NCCL connects peers at a communicator's first collective, and point-to-point links at
         * their first send/recv: do both now, with the host waiting, not inside a step beside
         * another communicator's kernels. */
        if (size > 1) {
            WAN_TRY(nccl_barrier(g));
            WAN_TRY(connect_links(g, name));
            WAN_TRY(nccl_flush(c));
        }
    }
    return 0;
}

/* This rank only (see the top): the others learn it from the launcher ending the job. */
static void nccl_abort(wan_comm *c, const char *why) {
    char msg[640];
    snprintf(msg, sizeof msg, "rank %d aborted: %s", c->rank, why);
    poison(c, msg);
}

/* Free the CUDA objects and the structs (the communicators are gone by then). */
static void release(wan_comm *c) {
    nccl_impl *ni = impl_of(c);
    if (ni) {
        if (ni->have_watchdog) wan_cuda_set_host_wait(NULL, NULL);
        stop_watchdog(ni);
        if (ni->barrier_buf) (void)cudaFree(ni->barrier_buf);
        if (ni->ready) (void)cudaEventDestroy(ni->ready);
        for (int i = 0; i < WAN_NCCL_INFLIGHT; i++)
            if (ni->ring[i].done) (void)cudaEventDestroy(ni->ring[i].done);
        if (ni->stream) (void)cudaStreamDestroy(ni->stream);
        if (ni->bg_stream) (void)cudaStreamDestroy(ni->bg_stream);
        if (ni->have_sync) {
            pthread_mutex_destroy(&ni->mu);
            pthread_cond_destroy(&ni->cv);
        }
        free(ni);
    }
    free(c);
}

static void nccl_destroy(wan_comm *c) {
    if (!c) return;
    nccl_impl *ni = impl_of(c);
    (void)cudaSetDevice(ni->device);
    /* what is in flight completes (or fails) under the watchdog; then each communicator is
     * finalised (flush, then quiescent) under the deadline and destroyed; on a failure
     * wait_comm aborts them all */
    (void)nccl_flush(c);
    wan_cuda_set_host_wait(NULL, NULL);
    stop_watchdog(ni);
    for (int i = ni->ncomms - 1; i >= 0 && !ni->poisoned; i--) {
        ncclResult_t r = ncclCommFinalize(ni->comms[i]);
        if (r != ncclSuccess && r != ncclInProgress) {
            fail_op(c, NULL, "destroy (ncclCommFinalize)", "%s", ncclGetErrorString(r));
            break;
        }
        if (wait_comm(c, NULL, ni->comms[i], "destroy (ncclCommFinalize)")) break;
    }
    if (ni->poisoned) { /* the communicators were aborted */
        if (!ni->announced) wan_warn("%s", ni->why);
    } else
        for (int i = ni->ncomms - 1; i >= 0; i--) (void)ncclCommDestroy(ni->comms[i]);
    ni->ncomms = 0;
    release(c);
}

static const wan_comm_ops nccl_ops = {
    .allreduce = nccl_allreduce,
    .reduce_scatter = nccl_reduce_scatter,
    .allgather = nccl_allgather,
    .broadcast = nccl_broadcast,
    .reduce = nccl_reduce,
    .reduce_start = nccl_reduce_start,
    .broadcast_start = nccl_broadcast_start,
    .sendrecv = nccl_sendrecv,
    .sendrecv_start = nccl_sendrecv_start,
    .wait = nccl_wait,
    .flush = nccl_flush,
    .send = nccl_send,
    .recv = nccl_recv,
    .barrier = nccl_barrier,
    .make_group = nccl_make_group,
    .destroy = nccl_destroy,
    .abort = nccl_abort,
};

#define INIT_CU(call)                                                                              \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            rc = wan_fail(WAN_ERR_RUNTIME, "NCCL transport on device %d: %s: %s", device, #call,   \
                          cudaGetErrorString(e_));                                                 \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

int wan_comm_nccl_create(wan_bootstrap *b, int device, int timeout_s, void *cuda_stream, wan_comm **out) {
    *out = NULL;
    int rc = 0;
    wan_comm *c = calloc(1, sizeof *c);
    nccl_impl *ni = calloc(1, sizeof *ni);
    if (!c || !ni) {
        free(c), free(ni);
        return wan_fail(WAN_ERR_RUNTIME, "NCCL transport: out of memory");
    }
    c->ops = &nccl_ops;
    c->impl = ni;
    c->rank = b->rank;
    c->size = b->size;
    c->timeout_s = timeout_s;
    ni->device = device;
    if (pthread_mutex_init(&ni->mu, NULL) == 0) {
        if (pthread_cond_init(&ni->cv, NULL) == 0) ni->have_sync = true;
        else pthread_mutex_destroy(&ni->mu);
    }
    if (!ni->have_sync) {
        release(c);
        return wan_fail(WAN_ERR_RUNTIME, "NCCL transport: cannot make a mutex");
    }
    /* no stream given: the CUDA backend's (its stream does not synchronise with stream 0) */
    ni->compute = (cudaStream_t)(cuda_stream ? cuda_stream : wan_cuda_process_stream());
    if (!ni->compute) {
        release(c);
        return wan_fail(WAN_ERR_RUNTIME, "NCCL transport: no compute stream (create the CUDA backend first)");
    }

    int count = 0;
    INIT_CU(cudaGetDeviceCount(&count));
    if (device >= count && count == 1) device = 0; /* one GPU bound to this task (as the backend) */
    ni->device = device;
    if (device < 0 || device >= count) {
        rc = wan_fail(WAN_ERR_RUNTIME, "NCCL transport: rank %d (local rank %d) wants GPU %d, %d visible", b->rank,
                      b->local_rank, device, count);
        goto fail;
    }
    INIT_CU(cudaSetDevice(device));
    INIT_CU(cudaStreamCreateWithFlags(&ni->stream, cudaStreamNonBlocking));
    INIT_CU(cudaStreamCreateWithFlags(&ni->bg_stream, cudaStreamNonBlocking));
    INIT_CU(cudaEventCreateWithFlags(&ni->ready, cudaEventDisableTiming));
    for (int i = 0; i < WAN_NCCL_INFLIGHT; i++) INIT_CU(cudaEventCreateWithFlags(&ni->ring[i].done, cudaEventDisableTiming));
    INIT_CU(cudaMalloc((void **)&ni->barrier_buf, 4 * sizeof(float)));
    INIT_CU(cudaMemset(ni->barrier_buf, 0, 4 * sizeof(float)));

    /* rank 0 makes the id; everyone reads it after the fence */
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (b->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) {
            rc = wan_fail(WAN_ERR_RUNTIME, "NCCL transport: ncclGetUniqueId: %s (%s)", ncclGetErrorString(r),
                          ncclGetLastError(NULL));
            goto fail;
        }
        if ((rc = wan_bootstrap_put(b, "wan-nccl-id", &id, sizeof id))) goto fail;
    }
    if ((rc = wan_bootstrap_fence(b))) goto fail;
    if ((rc = wan_bootstrap_get(b, "wan-nccl-id", &id, sizeof id))) goto fail;

    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t world = NULL;
    ncclResult_t r = ncclCommInitRankConfig(&world, b->size, id, b->rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        rc = wan_fail(WAN_ERR_RUNTIME, "NCCL transport: ncclCommInitRankConfig (rank %d of %d, GPU %d): %s (%s)",
                      b->rank, b->size, device, ncclGetErrorString(r), ncclGetLastError(world));
        if (world) (void)ncclCommAbort(world);
        goto fail;
    }
    ni->world.comm = world;
    ni->world.stream = ni->stream;
    ni->comms[ni->ncomms++] = world;
    /* all ranks must arrive within the deadline; on failure wait_comm aborts the world */
    if ((rc = wait_comm(c, NULL, world, "init (ncclCommInitRankConfig)"))) goto fail;
    /* the watchdog takes no asynchronous signals (SIGTERM, SIGUSR1 stay with the main thread) */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int te = pthread_create(&ni->watchdog, NULL, watchdog_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (te) {
        rc = wan_fail(WAN_ERR_RUNTIME, "NCCL transport: cannot start the watchdog thread");
        goto fail;
    }
    ni->have_watchdog = true;
    wan_cuda_set_host_wait(host_wait_hook, c);

    /* the world group */
    wan_group *g = &c->world;
    memset(g, 0, sizeof *g);
    g->comm = c;
    snprintf(g->name, sizeof g->name, "world");
    g->size = b->size;
    g->rank = b->rank;
    for (int i = 0; i < b->size && i < (int)(sizeof g->ranks / sizeof g->ranks[0]); i++) g->ranks[i] = i;
    g->impl = &ni->world;
    wan_info("NCCL %d.%d.%d: rank %d of %d on GPU %d", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH, b->rank, b->size, device);
    *out = c;
    return 0;
fail:
    (void)cudaGetLastError();
    /* abort what was made (keeps the first message: poison does not touch it) */
    for (int i = ni->ncomms - 1; i >= 0; i--) (void)ncclCommAbort(ni->comms[i]);
    ni->ncomms = 0;
    release(c);
    return rc;
}
