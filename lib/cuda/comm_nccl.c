/* The NCCL transport of the communication interface (comm.h): one GPU per rank, the unique id
 * shared through the bootstrap's key-value exchange (PMI2 under srun), one communicator for the
 * world and one per group from ncclCommSplit.
 *
 * Ordering: collectives run on their own stream. The compute stream is the one passed to
 * wan_comm_nccl_create, or, when that is NULL, the stream of the CUDA backend made in this
 * process (so create the backend first). Before each, an event recorded on the compute
 * stream makes the NCCL stream wait for the data; after it, an event recorded on the NCCL stream
 * makes the compute stream wait for the result. The call then waits (polling) until the
 * collective has completed, so a failure is reported by the call that met it.
 *
 * No hang: the communicators are non-blocking (config.blocking = 0), so initialisation, splits
 * and enqueues return at once; every wait polls ncclCommGetAsyncError and the completion event
 * against a deadline of comm->timeout_s seconds. On an error or at the deadline every
 * communicator of this rank is aborted (ncclCommAbort: the kernels stop, the streams move on),
 * the transport is poisoned, and the call returns WAN_ERR_RUNTIME naming the operation and the
 * group.
 *
 * What NCCL does not do: tell the other ranks. ncclCommAbort acts on this rank only, and a peer
 * that died or gave up leaves the others spinning with no error (unlike the CPU transport, which
 * sees dead processes and aborts). Prompt stopping therefore comes from the launcher: srun
 * --kill-on-bad-exit=1 (slurm/train.sbatch) or wan-train --nproc's supervisor end the job when a
 * rank exits non-zero; the deadline above is the backstop for a rank that hangs alive. */
#include <nccl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bootstrap.h"
#include "cuda_internal.h"
#include "error.h"
#include "log.h"

#define WAN_NCCL_MAX_COMMS 64 /* world + one per group this rank is in */
#define WAN_NCCL_DEFAULT_TIMEOUT 600

typedef struct {
    ncclComm_t comm; /* NULL when this rank is not a member */
} nccl_group;

typedef struct {
    int device;
    cudaStream_t compute; /* the caller's stream (the backend's) */
    cudaStream_t stream;  /* collectives */
    cudaEvent_t ready, done;
    float *barrier_buf;   /* one float on the device */
    bool poisoned;
    char why[768];        /* the first failure, repeated by every later call */
    ncclComm_t comms[WAN_NCCL_MAX_COMMS]; /* world first; aborted or destroyed together */
    int ncomms;
    nccl_group world;
    nccl_group groups[WAN_NCCL_MAX_COMMS]; /* what wan_group.impl points to */
    int ngroups;
} nccl_impl;

static nccl_impl *impl_of(wan_comm *c) { return (nccl_impl *)c->impl; }

/* Abort every communicator (stops kernels that wait for a dead peer) and remember why. */
static void poison(wan_comm *c, const char *why) {
    nccl_impl *ni = impl_of(c);
    if (ni->poisoned) return;
    ni->poisoned = true;
    snprintf(ni->why, sizeof ni->why, "%s", why);
    for (int i = ni->ncomms - 1; i >= 0; i--)
        if (ni->comms[i]) (void)ncclCommAbort(ni->comms[i]);
    ni->ncomms = 0;
}

/* Record the failure of `op` on group g: message, poison, WAN_ERR_RUNTIME. */
__attribute__((format(printf, 4, 5))) static int fail_op(wan_comm *c, wan_group *g, const char *op, const char *fmt,
                                                         ...) {
    char detail[512], msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (g)
        snprintf(msg, sizeof msg, "NCCL %s on group %s[%d] (member %d of %d, world rank %d): %s", op, g->name,
                 g->index, g->rank, g->size, c->rank, detail);
    else
        snprintf(msg, sizeof msg, "NCCL %s (world rank %d of %d): %s", op, c->rank, c->size, detail);
    poison(c, msg);
    return wan_fail(WAN_ERR_RUNTIME, "%s", msg);
}

static int timeout_of(wan_comm *c) { return c->timeout_s > 0 ? c->timeout_s : WAN_NCCL_DEFAULT_TIMEOUT; }

/* Wait until comm has finished its background work (non-blocking calls return ncclInProgress)
 * and, when ev is given, until the stream work recorded in ev has completed. */
static int wait_comm(wan_comm *c, wan_group *g, ncclComm_t comm, cudaEvent_t ev, const char *op) {
    double deadline = wan_now() + timeout_of(c);
    long polls = 0;
    for (;;) {
        ncclResult_t st = ncclSuccess, r = ncclCommGetAsyncError(comm, &st);
        if (r != ncclSuccess) st = r;
        if (st != ncclSuccess && st != ncclInProgress)
            return fail_op(c, g, op, "%s (%s)", ncclGetErrorString(st), ncclGetLastError(comm));
        if (st == ncclSuccess) {
            if (!ev) return 0;
            cudaError_t q = cudaEventQuery(ev);
            if (q == cudaSuccess) return 0;
            if (q != cudaErrorNotReady) return fail_op(c, g, op, "CUDA: %s", cudaGetErrorString(q));
            /* "not ready" also becomes the runtime's last error, which the next kernel launch's
             * check (cudaGetLastError) would take for a failure: clear it */
            (void)cudaGetLastError();
        }
        if (wan_now() > deadline)
            return fail_op(c, g, op, "no progress for %d s (comm_timeout): a peer is missing, stuck or dead",
                           timeout_of(c));
        if (++polls > 2000) { /* past the first ~ms, poll gently */
            struct timespec ts = {0, 50 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

static int check_usable(wan_group *g, const char *op, ncclComm_t *comm) {
    wan_comm *c = g->comm;
    nccl_impl *ni = impl_of(c);
    if (ni->poisoned)
        return wan_fail(WAN_ERR_RUNTIME, "NCCL %s on group %s[%d]: the transport failed earlier: %s", op, g->name,
                        g->index, ni->why);
    nccl_group *ng = g->impl;
    if (!ng || !ng->comm)
        return wan_fail(WAN_ERR_RUNTIME, "NCCL %s on group %s[%d]: world rank %d is not a member", op, g->name,
                        g->index, c->rank);
    *comm = ng->comm;
    return 0;
}

/* The NCCL stream waits for the compute stream's work so far. */
static int begin(wan_group *g, const char *op) {
    nccl_impl *ni = impl_of(g->comm);
    cudaError_t e = cudaEventRecord(ni->ready, ni->compute);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(ni->stream, ni->ready, 0);
    if (e != cudaSuccess) return fail_op(g->comm, g, op, "ordering after the compute stream: %s", cudaGetErrorString(e));
    return 0;
}

/* After the enqueue call r: wait for the enqueue, order the compute stream after the result,
 * wait for completion. */
static int finish(wan_group *g, ncclComm_t comm, ncclResult_t r, const char *op) {
    wan_comm *c = g->comm;
    nccl_impl *ni = impl_of(c);
    if (r != ncclSuccess && r != ncclInProgress)
        return fail_op(c, g, op, "%s (%s)", ncclGetErrorString(r), ncclGetLastError(comm));
    WAN_TRY(wait_comm(c, g, comm, NULL, op));
    cudaError_t e = cudaEventRecord(ni->done, ni->stream);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(ni->compute, ni->done, 0);
    if (e != cudaSuccess) return fail_op(c, g, op, "ordering the compute stream: %s", cudaGetErrorString(e));
    return wait_comm(c, g, comm, ni->done, op);
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
    WAN_TRY(check_usable(g, "allreduce", &comm));
    WAN_TRY(begin(g, "allreduce"));
    ncclResult_t r = ncclAllReduce(buf, buf, n, nccl_type(dt), op == WAN_RED_MAX ? ncclMax : ncclSum, comm,
                                   impl_of(g->comm)->stream);
    return finish(g, comm, r, "allreduce");
}

static int nccl_reduce_scatter(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt) {
    ncclComm_t comm = NULL;
    WAN_TRY(check_usable(g, "reduce_scatter", &comm));
    WAN_TRY(begin(g, "reduce_scatter"));
    ncclResult_t r = ncclReduceScatter(send, recv, n, nccl_type(dt), ncclSum, comm, impl_of(g->comm)->stream);
    return finish(g, comm, r, "reduce_scatter");
}

static int nccl_allgather(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt) {
    ncclComm_t comm = NULL;
    WAN_TRY(check_usable(g, "allgather", &comm));
    WAN_TRY(begin(g, "allgather"));
    /* in place (send == recv + rank * n) is NCCL's in-place allgather */
    ncclResult_t r = ncclAllGather(send, recv, n, nccl_type(dt), comm, impl_of(g->comm)->stream);
    return finish(g, comm, r, "allgather");
}

static int nccl_broadcast(wan_group *g, void *buf, size_t n, wan_dtype dt, int root) {
    ncclComm_t comm = NULL;
    WAN_TRY(check_usable(g, "broadcast", &comm));
    WAN_TRY(begin(g, "broadcast"));
    ncclResult_t r = ncclBroadcast(buf, buf, n, nccl_type(dt), root, comm, impl_of(g->comm)->stream);
    return finish(g, comm, r, "broadcast");
}

static int nccl_sendrecv(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt) {
    ncclComm_t comm = NULL;
    WAN_TRY(check_usable(g, "sendrecv", &comm));
    WAN_TRY(begin(g, "sendrecv"));
    cudaStream_t st = impl_of(g->comm)->stream;
    ncclResult_t r = ncclGroupStart();
    if (r == ncclSuccess) r = ncclSend(send, n, nccl_type(dt), to, comm, st);
    if (r == ncclSuccess) r = ncclRecv(recv, n, nccl_type(dt), from, comm, st);
    ncclResult_t e = ncclGroupEnd(); /* always close the group */
    if (r == ncclSuccess) r = e;
    return finish(g, comm, r, "sendrecv");
}

static int nccl_send(wan_group *g, const void *buf, size_t n, wan_dtype dt, int peer) {
    ncclComm_t comm = NULL;
    WAN_TRY(check_usable(g, "send", &comm));
    WAN_TRY(begin(g, "send"));
    ncclResult_t r = ncclSend(buf, n, nccl_type(dt), peer, comm, impl_of(g->comm)->stream);
    return finish(g, comm, r, "send");
}

static int nccl_recv(wan_group *g, void *buf, size_t n, wan_dtype dt, int peer) {
    ncclComm_t comm = NULL;
    WAN_TRY(check_usable(g, "recv", &comm));
    WAN_TRY(begin(g, "recv"));
    ncclResult_t r = ncclRecv(buf, n, nccl_type(dt), peer, comm, impl_of(g->comm)->stream);
    return finish(g, comm, r, "recv");
}

static int nccl_barrier(wan_group *g) {
    ncclComm_t comm = NULL;
    WAN_TRY(check_usable(g, "barrier", &comm));
    WAN_TRY(begin(g, "barrier"));
    ncclResult_t r = ncclAllReduce(impl_of(g->comm)->barrier_buf, impl_of(g->comm)->barrier_buf, 1, ncclFloat32,
                                   ncclSum, comm, impl_of(g->comm)->stream);
    return finish(g, comm, r, "barrier");
}

/* ---------------------------------------------------------------- groups and lifetime */

static int nccl_make_group(wan_comm *c, wan_group *g, const char *name, int index, const int *ranks, int size) {
    nccl_impl *ni = impl_of(c);
    WAN_TRY(wan_group_init(g, c, name, index, ranks, size));
    if (ni->poisoned)
        return wan_fail(WAN_ERR_RUNTIME, "make_group %s[%d]: the transport failed earlier: %s", name, index, ni->why);
    if (ni->ncomms >= WAN_NCCL_MAX_COMMS || ni->ngroups >= WAN_NCCL_MAX_COMMS)
        return wan_fail(WAN_ERR_RUNTIME, "make_group %s[%d]: more than %d NCCL groups", name, index,
                        WAN_NCCL_MAX_COMMS - 1);
    nccl_group *ng = &ni->groups[ni->ngroups++];
    g->impl = ng;
    /* every rank of the world calls this for its own group of the kind: the color (the group's
     * index) separates the groups, the key orders the members as listed */
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t world = ni->world.comm;
    ncclResult_t r = ncclCommSplit(world, g->rank >= 0 ? index : NCCL_SPLIT_NOCOLOR, g->rank >= 0 ? g->rank : 0,
                                   &ng->comm, &cfg);
    if (r != ncclSuccess && r != ncclInProgress)
        return fail_op(c, g, "make_group (ncclCommSplit)", "%s (%s)", ncclGetErrorString(r), ncclGetLastError(world));
    WAN_TRY(wait_comm(c, g, world, NULL, "make_group (ncclCommSplit)"));
    if (ng->comm) {
        ni->comms[ni->ncomms++] = ng->comm;
        WAN_TRY(wait_comm(c, g, ng->comm, NULL, "make_group (ncclCommSplit)"));
        int n = 0;
        if (ncclCommCount(ng->comm, &n) != ncclSuccess || n != size)
            return fail_op(c, g, "make_group", "the new communicator has %d ranks, expected %d", n, size);
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
        if (ni->barrier_buf) (void)cudaFree(ni->barrier_buf);
        if (ni->ready) (void)cudaEventDestroy(ni->ready);
        if (ni->done) (void)cudaEventDestroy(ni->done);
        if (ni->stream) (void)cudaStreamDestroy(ni->stream);
        free(ni);
    }
    free(c);
}

static void nccl_destroy(wan_comm *c) {
    if (!c) return;
    nccl_impl *ni = impl_of(c);
    (void)cudaSetDevice(ni->device);
    /* finalise each communicator (flush, then quiescent) under the deadline, then destroy; on a
     * failure wait_comm aborts them all */
    for (int i = ni->ncomms - 1; i >= 0 && !ni->poisoned; i--) {
        ncclResult_t r = ncclCommFinalize(ni->comms[i]);
        if (r != ncclSuccess && r != ncclInProgress) {
            fail_op(c, NULL, "destroy (ncclCommFinalize)", "%s", ncclGetErrorString(r));
            break;
        }
        if (wait_comm(c, NULL, ni->comms[i], NULL, "destroy (ncclCommFinalize)")) break;
    }
    if (ni->poisoned) wan_warn("%s", ni->why);
    else
        for (int i = ni->ncomms - 1; i >= 0; i--) (void)ncclCommDestroy(ni->comms[i]);
    ni->ncomms = 0;
    release(c);
}

static const wan_comm_ops nccl_ops = {
    .allreduce = nccl_allreduce,
    .reduce_scatter = nccl_reduce_scatter,
    .allgather = nccl_allgather,
    .broadcast = nccl_broadcast,
    .sendrecv = nccl_sendrecv,
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
    /* no stream given: the CUDA backend's (its stream does not synchronise with stream 0) */
    ni->compute = (cudaStream_t)(cuda_stream ? cuda_stream : wan_cuda_process_stream());

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
    INIT_CU(cudaEventCreateWithFlags(&ni->ready, cudaEventDisableTiming));
    INIT_CU(cudaEventCreateWithFlags(&ni->done, cudaEventDisableTiming));
    INIT_CU(cudaMalloc((void **)&ni->barrier_buf, sizeof(float)));
    INIT_CU(cudaMemset(ni->barrier_buf, 0, sizeof(float)));

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
    ni->comms[ni->ncomms++] = world;
    /* all ranks must arrive within the deadline; on failure wait_comm aborts the world */
    if ((rc = wait_comm(c, NULL, world, NULL, "init (ncclCommInitRankConfig)"))) goto fail;

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
