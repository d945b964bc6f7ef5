/* NCCL in the emulation build: a CPU stand-in for the part of NCCL that the NCCL transport
 * (lib/cuda/comm_nccl.c) uses, so that transport runs unchanged between real processes on one
 * machine. Written from NVIDIA's NCCL documentation; "device" buffers are host memory here
 * (tests/emu/cudart_emu.c), so data moves with plain copies.
 *
 * Communicators. The unique id carries the name of a POSIX shared-memory segment; the first rank
 * to reach ncclCommInitRank* creates it (O_CREAT | O_EXCL, then a ready flag), the others open
 * it, and the last rank to map it unlinks the name, so /dev/shm keeps nothing whatever happens
 * afterwards (a rank that never arrives: the last to leave unlinks it). ncclCommSplit exchanges
 * (color, key) over the parent; the members of a color (ordered by key, then by parent rank) meet
 * in a segment named after the parent, the split's number and the color.
 *
 * Segment: a header, one line per rank (barrier count, pid, the collective it is in), one data
 * slot per rank (collectives), one channel per ordered pair of ranks (send/recv).
 *
 * Collectives move data in rounds of at most one slot per rank: every rank copies its part into
 * its own slot, a barrier, every rank reads what it needs from all slots (reductions add the
 * ranks' values in rank order, bf16 and fp16 in fp32 rounded once: bit-identical results on every
 * rank), a second barrier before the slots are reused. The first round also checks that every
 * rank called the same collective with the same count, type, operation and root.
 * Send/recv: one chunk at a time through the pair's channel; the operations of one group progress
 * together, so any exchange that does not deadlock on NCCL does not here.
 *
 * Asynchrony: each communicator has a worker thread that runs what the calls enqueue, in order.
 * Collectives and send/recv are stream work, as on a GPU: the call returns once queued, the
 * stream counts the task (tests/emu/cudart_emu.c), tasks of one stream run in the order they
 * were queued whatever their communicator, and an event recorded on the stream behind a task
 * is "not ready" until the task ran, which is when cudaStreamWaitEvent lets its caller go on.
 * WAN_EMU_NCCL_LAZY_MS=N makes every stream task read as early and write as late as a GPU
 * may: what it sends is copied at enqueue (the stream is ordered after the compute so far), and
 * it runs when the caller blocks on it (an event behind it waited for, the stream
 * synchronised) or N ms after its turn came; so compute not ordered after a transfer reads
 * stale data, and a transfer started before its data was final sends stale data. Always: stream
 * work is refused unless its stream waited for an event recorded after every device operation
 * the host issued so far (tests/emu/cudart_emu.c counts them), the ordering the other way.
 * Init, split and finalise are host work: a non-blocking communicator (config.blocking = 0)
 * returns ncclInProgress from them and ncclCommGetAsyncError says ncclInProgress until they are
 * done, so the caller's own deadline governs (comm_nccl.c then calls ncclCommAbort, which
 * returns promptly: the worker checks the abort flag in every wait);
 * a blocking communicator waits in the call.
 *
 * Failures: every wait checks the local abort flag, whether a peer aborted the communicator,
 * whether the awaited peers still live (kill(pid, 0)), and a deadline of WAN_EMU_NCCL_TIMEOUT
 * seconds without progress (default 60; 0 waits forever); it then fails with ncclSystemError or
 * ncclRemoteError, and ncclGetLastError names the communicator, the operation and the ranks that
 * did not arrive. The error is sticky, as on NCCL. Sizes: WAN_EMU_NCCL_SLOT_BYTES and
 * WAN_EMU_NCCL_CHAN_BYTES (the creator's values hold for everyone; small values test the
 * chunking).
 *
 * Not emulated: fp8 reductions, user-defined reduction operations and the calls comm_nccl.c
 * does not use. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <nccl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dtype.h"
#include "emu.h"

#define SEG_MAGIC 0x3155434e4d45574eull /* "NWEMNCU1" */
#define ID_TAG "wan-emu-nccl-id"        /* 15 characters and a NUL, then the segment's name */
#define ID_NAME_OFF 16
#define LINE 64
#define MAX_RANKS 1024
#define NAME_LEN 200
#define DEFAULT_TIMEOUT_S 60.0
#define CONFIG_MAGIC 0xcafebeefu

/* ---------------------------------------------------------------- shared layout */

enum { K_NONE, K_INIT, K_ALLREDUCE, K_REDUCE_SCATTER, K_ALLGATHER, K_BROADCAST, K_SEND, K_RECV, K_SPLIT, K_FINALIZE,
       K_REDUCE, K_COUNT };
static const char *const kind_names[K_COUNT] = {
    "nothing",       "ncclCommInitRank", "ncclAllReduce", "ncclReduceScatter", "ncclAllGather",
    "ncclBroadcast", "ncclSend",         "ncclRecv",      "ncclCommSplit",     "ncclCommFinalize",
    "ncclReduce"};

typedef struct {
    uint64_t magic;
    _Atomic int ready; /* the creator has filled in the header */
    int nranks;
    uint64_t slot_bytes, chan_bytes, chan_stride, total_bytes;
    uint64_t info_off, slots_off, chans_off;
    _Atomic int attached;   /* ranks that mapped it (the one that makes it nranks unlinks the name) */
    _Atomic int live;       /* ranks still holding it (the last to leave unlinks, if nobody did) */
    _Atomic int unlinked;   /* the name was removed */
    _Atomic int abort_claim; /* the first rank to call ncclCommAbort writes abort_msg... */
    _Atomic int aborted_by;  /* ...then says who it was: 1 + its rank (0: nobody) */
    char abort_msg[512];     /* that rank's error on this communicator, if it had one */
} seg_hdr;

/* One per rank, written by that rank. The descriptor of the collective a rank is in is written
 * before the barrier that publishes it and read by the others after it. */
typedef struct {
    _Alignas(LINE) _Atomic uint64_t seq; /* barriers passed */
    _Atomic int claimed, pid, kind;
    int type, red, root, color, key;
    uint64_t count, opno;
} rank_info;

/* One per ordered pair (src, dst): at most one chunk in flight. */
typedef struct {
    _Alignas(LINE) _Atomic uint64_t posted; /* chunks the sender wrote */
    uint64_t msg_bytes, len;                /* the chunk's message size and its own */
    _Alignas(LINE) _Atomic uint64_t taken;  /* chunks the receiver copied out */
} chan_hdr;

/* ---------------------------------------------------------------- process-local state */

typedef struct op {
    int kind;
    const void *send;
    void *recv;
    size_t count;
    ncclDataType_t type;
    ncclRedOp_t red;
    int root; /* broadcast root; send/recv peer */
    cudaStream_t stream; /* stream work: collectives, send, recv */
    void *snapshot;      /* lazy mode: the send data as it was at enqueue (send points here) */
    struct ncclComm *child;
    struct ncclComm **newcomm; /* split: where the child is stored once the split has run */
    int color, key;
    size_t done; /* send/recv: bytes moved */
} op;

typedef struct task {
    struct task *next;
    op *ops;
    int nops;
    cudaStream_t stream; /* stream work: the stream and its ticket for this task */
    uint64_t sticket;
} task;

struct ncclComm {
    char name[NAME_LEN];
    int rank, nranks;
    bool blocking;
    double timeout_s;
    seg_hdr *seg; /* written by the worker (attach) */
    size_t seg_len;
    uint64_t seq, opno, nsplits; /* the worker's */
    _Atomic int setup_pending;   /* split: the parent's worker is still setting this one up */
    struct ncclComm *splitting; /* the child the worker is making (its abort stops the split) */
    pthread_t worker;
    bool have_worker;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* tasks queued, tasks completed, quit */
    task *head, *tail;
    uint64_t submitted, completed;
    bool quit;
    _Atomic int aborting;
    _Atomic int status; /* ncclResult_t: ncclSuccess, ncclInProgress or the first error */
    char err[1024];     /* the first error, complete before status says so */
    /* WAN_EMU_NCCL_STATS=1: printed by ncclCommDestroy */
    uint64_t stat_ops, stat_bytes;
    double stat_wait, stat_max_wait;
    /* point-to-point links (peer, direction) used, and those first used by more than one
     * element: NCCL connects a link at its first send or recv */
    uint8_t *stat_link_seen; /* [2 * nranks]: send to / recv from each peer */
    int stat_links, stat_links_late;
};

static pthread_mutex_t last_mu = PTHREAD_MUTEX_INITIALIZER;
static char last_err[1024] = "no error";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void note_wait(struct ncclComm *c, double t0) {
    double w = now_s() - t0;
    c->stat_wait += w;
    if (w > c->stat_max_wait) c->stat_max_wait = w;
}

static void set_last(const char *msg) {
    pthread_mutex_lock(&last_mu);
    snprintf(last_err, sizeof last_err, "%s", msg);
    pthread_mutex_unlock(&last_mu);
}

/* An error of the API call itself (nothing enqueued): kept as the last error. */
__attribute__((format(printf, 2, 3))) static ncclResult_t api_fail(ncclResult_t r, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int k = snprintf(msg, sizeof msg, "nccl emulator: ");
    vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", msg);
    set_last(msg);
    return r;
}

/* An error met by the worker on comm c: the comm's first error (sticky), the last error. The
 * caller sets status. quiet: the local abort, which the caller asked for. */
__attribute__((format(printf, 4, 5))) static ncclResult_t comm_fail(struct ncclComm *c, ncclResult_t r, bool quiet,
                                                                    const char *fmt, ...) {
    if (atomic_load(&c->status) != ncclSuccess && atomic_load(&c->status) != ncclInProgress)
        return r; /* keep the first */
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int k = snprintf(msg, sizeof msg, "nccl emulator: %s (rank %d of %d): ", c->name, c->rank, c->nranks);
    vsnprintf(msg + k, sizeof msg - (size_t)k, fmt, ap);
    va_end(ap);
    if (!quiet) fprintf(stderr, "%s\n", msg);
    pthread_mutex_lock(&c->mu);
    if (!c->err[0]) snprintf(c->err, sizeof c->err, "%s", msg);
    pthread_mutex_unlock(&c->mu);
    set_last(msg);
    return r;
}

static size_t type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8:
    case ncclUint8:
    case ncclFloat8e4m3:
    case ncclFloat8e5m2: return 1;
    case ncclFloat16:
    case ncclBfloat16: return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32: return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64: return 8;
    default: return 0;
    }
}

static const char *type_name(int t) {
    static const char *const names[] = {"int8",    "uint8",   "int32",   "uint32", "int64",     "uint64",
                                        "float16", "float32", "float64", "bfloat16", "fp8e4m3", "fp8e5m2"};
    return t >= 0 && t < (int)(sizeof names / sizeof names[0]) ? names[t] : "?";
}

static const char *red_name(int r) {
    static const char *const names[] = {"sum", "prod", "max", "min", "avg"};
    return r >= 0 && r < 5 ? names[r] : "?";
}

static double env_double(const char *name, double dflt) {
    const char *s = getenv(name);
    if (!s || !*s) return dflt;
    char *end;
    double v = strtod(s, &end);
    return end != s ? v : dflt;
}

/* ---------------------------------------------------------------- segment */

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static rank_info *info_of(struct ncclComm *c, int r) {
    return (rank_info *)((char *)c->seg + c->seg->info_off + (size_t)r * sizeof(rank_info));
}
static char *slot_of(struct ncclComm *c, int r) {
    return (char *)c->seg + c->seg->slots_off + (size_t)r * c->seg->slot_bytes;
}
static chan_hdr *chan_of(struct ncclComm *c, int src, int dst) {
    return (chan_hdr *)((char *)c->seg + c->seg->chans_off +
                        ((size_t)src * (size_t)c->nranks + (size_t)dst) * c->seg->chan_stride);
}
static char *chan_data(chan_hdr *h) { return (char *)h + align_up(sizeof(chan_hdr), LINE); }

/* The layout for n ranks (the creator's choice; the others read it from the header). */
static void layout(seg_hdr *h, int n) {
    size_t slot = (size_t)env_double("WAN_EMU_NCCL_SLOT_BYTES", 0);
    if (!slot) { /* 64 MiB in all, between 256 KiB and 8 MiB per rank */
        slot = ((size_t)64 << 20) / (size_t)n;
        if (slot > ((size_t)8 << 20)) slot = (size_t)8 << 20;
        if (slot < ((size_t)256 << 10)) slot = (size_t)256 << 10;
    }
    if (slot < (size_t)n * 8) slot = (size_t)n * 8; /* a reduce-scatter round holds one element per rank */
    slot = align_up(slot, LINE);
    size_t chan = (size_t)env_double("WAN_EMU_NCCL_CHAN_BYTES", 0);
    if (!chan) { /* 16 MiB in all, between 4 KiB and 4 MiB per pair */
        chan = ((size_t)16 << 20) / ((size_t)n * (size_t)n);
        if (chan > ((size_t)4 << 20)) chan = (size_t)4 << 20;
        if (chan < 4096) chan = 4096;
    }
    chan = align_up(chan, LINE);
    h->nranks = n;
    h->slot_bytes = slot;
    h->chan_bytes = chan;
    h->chan_stride = align_up(sizeof(chan_hdr), LINE) + chan;
    h->info_off = align_up(sizeof(seg_hdr), LINE);
    h->slots_off = align_up(h->info_off + (size_t)n * sizeof(rank_info), 4096);
    h->chans_off = h->slots_off + (size_t)n * slot;
    h->total_bytes = h->chans_off + (size_t)n * (size_t)n * h->chan_stride;
}

static void unlink_once(struct ncclComm *c) {
    int no = 0;
    if (atomic_compare_exchange_strong(&c->seg->unlinked, &no, 1)) shm_unlink(c->name);
}

static void detach(struct ncclComm *c) {
    if (!c->seg) return;
    if (atomic_fetch_sub(&c->seg->live, 1) == 1) unlink_once(c);
    munmap(c->seg, c->seg_len);
    c->seg = NULL;
}

/* ---------------------------------------------------------------- waiting */

typedef struct {
    double t0, next_check;
    long polls;
} waiter;

static void wait_begin(waiter *w) {
    w->t0 = now_s();
    w->next_check = w->t0 + 0.2;
    w->polls = 0;
}

static bool pid_gone(int pid) { return pid > 0 && kill(pid, 0) == -1 && errno == ESRCH; }

/* What a wait is waiting for: the ranks (liveness) and, for the timeout, a description. */
typedef struct {
    const char *what; /* the operation */
    int ranks[MAX_RANKS];
    int nranks;
    char detail[600];
} wait_desc;

typedef void (*describe_fn)(struct ncclComm *c, void *arg, wait_desc *d);

#define PEER_ABORTED ((ncclResult_t)(ncclNumResults + 100)) /* internal: never returned */

static ncclResult_t peer_aborted(struct ncclComm *c, const char *what) {
    int by = atomic_load_explicit(&c->seg->aborted_by, memory_order_acquire);
    return comm_fail(c, ncclRemoteError, false, "%s: rank %d aborted the communicator%s%.400s%s", what, by - 1,
                     c->seg->abort_msg[0] ? " (after: " : "", c->seg->abort_msg, c->seg->abort_msg[0] ? ")" : "");
}

/* One idle turn of a wait that made no progress: back off, then check abort, peers, deadline.
 * 0 to keep waiting, PEER_ABORTED, or an error to stop. */
static ncclResult_t wait_idle(struct ncclComm *c, waiter *w, const char *what, describe_fn describe, void *arg) {
    w->polls++;
    if (w->polls < 32) sched_yield();
    else {
        struct timespec ts = {0, w->polls < 4000 ? 50 * 1000 : 500 * 1000};
        nanosleep(&ts, NULL);
    }
    if (atomic_load(&c->aborting) || (c->splitting && atomic_load(&c->splitting->aborting)))
        return comm_fail(c, ncclInvalidUsage, true, "%s: stopped by ncclCommAbort", what);
    /* a peer's abort: the caller looks once more (what the peer did before aborting is visible
     * now), then fails with peer_aborted */
    if (c->seg && atomic_load_explicit(&c->seg->aborted_by, memory_order_acquire)) return PEER_ABORTED;
    double t = now_s();
    if (t < w->next_check) return ncclSuccess;
    w->next_check = t + 0.2;
    static wait_desc d; /* large: not on the worker's stack; only built on the slow path */
    static pthread_mutex_t d_mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&d_mu);
    d.what = what;
    d.nranks = 0;
    d.detail[0] = 0;
    describe(c, arg, &d);
    ncclResult_t r = ncclSuccess;
    for (int i = 0; i < d.nranks && c->seg; i++) {
        int pid = atomic_load(&info_of(c, d.ranks[i])->pid);
        if (pid_gone(pid)) {
            r = comm_fail(c, ncclRemoteError, false, "%s: rank %d (pid %d) exited; waiting for %s", what, d.ranks[i],
                          pid, d.detail);
            break;
        }
    }
    if (!r && c->timeout_s > 0 && t - w->t0 > c->timeout_s)
        r = comm_fail(c, ncclSystemError, false, "%s: no progress for %.0f s (WAN_EMU_NCCL_TIMEOUT): waiting for %s",
                      what, c->timeout_s, d.detail);
    pthread_mutex_unlock(&d_mu);
    return r;
}

static void appendf(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void appendf(char *buf, size_t len, const char *fmt, ...) {
    size_t k = strlen(buf);
    if (k + 1 >= len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + k, len - k, fmt, ap);
    va_end(ap);
}

/* The ranks that have not reached barrier number `target`. */
static void describe_barrier(struct ncclComm *c, void *arg, wait_desc *d) {
    uint64_t target = *(uint64_t *)arg;
    int shown = 0;
    for (int j = 0; j < c->nranks; j++) {
        rank_info *ri = info_of(c, j);
        uint64_t s = atomic_load(&ri->seq);
        if (s >= target) continue;
        d->ranks[d->nranks++] = j;
        if (shown++ < 8) {
            int k = atomic_load(&ri->kind);
            if (s == 0)
                appendf(d->detail, sizeof d->detail, "%srank %d (never joined)", shown > 1 ? ", " : "", j);
            else
                appendf(d->detail, sizeof d->detail, "%srank %d (at barrier %llu, last in %s #%llu)",
                        shown > 1 ? ", " : "", j, (unsigned long long)s, kind_names[k >= 0 && k < K_COUNT ? k : 0],
                        (unsigned long long)ri->opno);
        }
    }
    if (shown > 8) appendf(d->detail, sizeof d->detail, " and %d more", shown - 8);
    appendf(d->detail, sizeof d->detail, " to reach barrier %llu", (unsigned long long)target);
}

static ncclResult_t barrier(struct ncclComm *c, const char *what) {
    uint64_t k = ++c->seq;
    atomic_store_explicit(&info_of(c, c->rank)->seq, k, memory_order_release);
    waiter w;
    wait_begin(&w);
    int j = 0;
    bool aborted = false;
    for (;;) {
        while (j < c->nranks && atomic_load_explicit(&info_of(c, j)->seq, memory_order_acquire) >= k) j++;
        if (j == c->nranks) {
            if (w.polls) note_wait(c, w.t0);
            return ncclSuccess;
        }
        if (aborted) return peer_aborted(c, what);
        ncclResult_t r = wait_idle(c, &w, what, describe_barrier, &k);
        if (r == PEER_ABORTED) aborted = true;
        else if (r) return r;
    }
}

/* ---------------------------------------------------------------- joining */

static void describe_nothing(struct ncclComm *c, void *arg, wait_desc *d) {
    (void)c;
    appendf(d->detail, sizeof d->detail, "%s", (const char *)arg);
}

/* Create or open the segment c->name for c->nranks ranks, claim c->rank, wait for everyone. */
static ncclResult_t attach(struct ncclComm *c) {
    const char *what = kind_names[K_INIT];
    waiter w;
    wait_begin(&w);
    seg_hdr want;
    memset(&want, 0, sizeof want);
    layout(&want, c->nranks);
    for (;;) {
        int fd = shm_open(c->name, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (fd >= 0) { /* the first: size it, fill in the header, say it is ready */
            if (ftruncate(fd, (off_t)want.total_bytes) != 0) {
                int e = errno;
                close(fd);
                shm_unlink(c->name);
                return comm_fail(c, ncclSystemError, false, "%s: sizing shared memory %s to %llu bytes: %s", what,
                                 c->name, (unsigned long long)want.total_bytes, strerror(e));
            }
            void *p = mmap(NULL, want.total_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            int e = errno;
            close(fd);
            if (p == MAP_FAILED) {
                shm_unlink(c->name);
                return comm_fail(c, ncclSystemError, false, "%s: mapping %s: %s", what, c->name, strerror(e));
            }
            seg_hdr *h = p;
            memcpy(h, &want, sizeof want); /* the atomics are zero in want, as in the fresh file */
            h->magic = SEG_MAGIC;
            c->seg = h;
            c->seg_len = want.total_bytes;
            atomic_store(&h->live, 1);
            atomic_store_explicit(&h->ready, 1, memory_order_release);
            break;
        }
        if (errno != EEXIST)
            return comm_fail(c, ncclSystemError, false, "%s: creating shared memory %s: %s", what, c->name,
                             strerror(errno));
        fd = shm_open(c->name, O_RDWR, 0600);
        if (fd >= 0) {
            struct stat st;
            if (fstat(fd, &st) == 0 && (size_t)st.st_size >= sizeof(seg_hdr)) {
                void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                close(fd);
                if (p == MAP_FAILED)
                    return comm_fail(c, ncclSystemError, false, "%s: mapping %s: %s", what, c->name, strerror(errno));
                seg_hdr *h = p;
                /* wait until the creator has filled it in */
                while (!atomic_load_explicit(&h->ready, memory_order_acquire)) {
                    ncclResult_t r = wait_idle(c, &w, what, describe_nothing, "the creator of the segment");
                    if (r == PEER_ABORTED) r = comm_fail(c, ncclInternalError, false, "%s: no segment yet", what);
                    if (r) {
                        munmap(p, (size_t)st.st_size);
                        return r;
                    }
                }
                if (h->magic != SEG_MAGIC || h->total_bytes != (uint64_t)st.st_size || h->nranks != c->nranks) {
                    int n = h->nranks;
                    munmap(p, (size_t)st.st_size);
                    return comm_fail(c, ncclInvalidArgument, false,
                                     "%s: the communicator %s has %d ranks, this rank was told %d", what, c->name, n,
                                     c->nranks);
                }
                atomic_fetch_add(&h->live, 1);
                c->seg = h;
                c->seg_len = (size_t)st.st_size;
                break;
            }
            close(fd); /* created but not yet sized: try again */
        } else if (errno != ENOENT)
            return comm_fail(c, ncclSystemError, false, "%s: opening shared memory %s: %s", what, c->name,
                             strerror(errno));
        ncclResult_t r = wait_idle(c, &w, what, describe_nothing, "the shared-memory segment to be created");
        if (r == PEER_ABORTED) r = comm_fail(c, ncclInternalError, false, "%s: no segment yet", what);
        if (r) return r;
    }
    rank_info *me = info_of(c, c->rank);
    int no = 0;
    if (!atomic_compare_exchange_strong(&me->claimed, &no, 1)) {
        detach(c);
        return comm_fail(c, ncclInvalidArgument, false, "%s: rank %d joined %s twice", what, c->rank, c->name);
    }
    atomic_store(&me->pid, (int)getpid());
    atomic_store(&me->kind, K_INIT);
    if (atomic_fetch_add(&c->seg->attached, 1) + 1 == c->nranks) unlink_once(c); /* everyone has it mapped */
    c->seq = 0;
    return barrier(c, what);
}

/* ---------------------------------------------------------------- reductions */

static inline float ld_bf16(const void *p, size_t i) {
    uint16_t h;
    memcpy(&h, (const char *)p + 2 * i, 2);
    return wan_bf16_to_f32(h);
}
static inline void st_bf16(void *p, size_t i, float v) {
    uint16_t h = wan_f32_to_bf16(v);
    memcpy((char *)p + 2 * i, &h, 2);
}
static inline float ld_f16(const void *p, size_t i) {
    uint16_t h;
    memcpy(&h, (const char *)p + 2 * i, 2);
    return wan_f16_to_f32(h);
}
static inline void st_f16(void *p, size_t i, float v) {
    uint16_t h = wan_f32_to_f16(v);
    memcpy((char *)p + 2 * i, &h, 2);
}
static inline float ld_f32(const void *p, size_t i) { return ((const float *)p)[i]; }
static inline void st_f32(void *p, size_t i, float v) { ((float *)p)[i] = v; }
static inline double ld_f64(const void *p, size_t i) { return ((const double *)p)[i]; }
static inline void st_f64(void *p, size_t i, double v) { ((double *)p)[i] = v; }

/* Floating types: accumulate in ACC, ranks in order, NaN wins max and min, store once. */
#define REDUCE_FLOAT(ACC, LD, ST)                                                                  \
    for (size_t i = 0; i < len; i++) {                                                             \
        ACC a = LD(in[0], off0 + i);                                                               \
        for (int j = 1; j < n; j++) {                                                              \
            ACC b = LD(in[j], off0 + i);                                                           \
            switch (red) {                                                                         \
            case ncclProd: a *= b; break;                                                          \
            case ncclMax: if (!isnan(a) && (isnan(b) || b > a)) a = b; break;                     \
            case ncclMin: if (!isnan(a) && (isnan(b) || b < a)) a = b; break;                     \
            default: a += b; break;                                                                \
            }                                                                                      \
        }                                                                                          \
        if (red == ncclAvg) a /= (ACC)n;                                                           \
        ST(out, i, a);                                                                             \
    }

/* Integer types: wrap around in UT (no signed overflow), compare as T. */
#define REDUCE_INT(T, UT)                                                                          \
    for (size_t i = 0; i < len; i++) {                                                             \
        T a = ((const T *)in[0])[off0 + i];                                                        \
        for (int j = 1; j < n; j++) {                                                              \
            T b = ((const T *)in[j])[off0 + i];                                                    \
            switch (red) {                                                                         \
            case ncclProd: a = (T)((UT)a * (UT)b); break;                                          \
            case ncclMax: a = b > a ? b : a; break;                                                \
            case ncclMin: a = b < a ? b : a; break;                                                \
            default: a = (T)((UT)a + (UT)b); break;                                                \
            }                                                                                      \
        }                                                                                          \
        if (red == ncclAvg) a = (T)(a / (T)n);                                                     \
        ((T *)out)[i] = a;                                                                         \
    }

/* out[i] = red over j of in[j][off0 + i], i < len. */
static void reduce(void *out, char *const *in, int n, size_t off0, size_t len, ncclDataType_t t, ncclRedOp_t red) {
    switch (t) {
    case ncclInt8: REDUCE_INT(int8_t, uint32_t) break;
    case ncclUint8: REDUCE_INT(uint8_t, uint32_t) break;
    case ncclInt32: REDUCE_INT(int32_t, uint32_t) break;
    case ncclUint32: REDUCE_INT(uint32_t, uint32_t) break;
    case ncclInt64: REDUCE_INT(int64_t, uint64_t) break;
    case ncclUint64: REDUCE_INT(uint64_t, uint64_t) break;
    case ncclFloat16: REDUCE_FLOAT(float, ld_f16, st_f16) break;
    case ncclBfloat16: REDUCE_FLOAT(float, ld_bf16, st_bf16) break;
    case ncclFloat32: REDUCE_FLOAT(float, ld_f32, st_f32) break;
    case ncclFloat64: REDUCE_FLOAT(double, ld_f64, st_f64) break;
    default: break; /* refused when enqueued */
    }
}

/* ---------------------------------------------------------------- collectives */

/* After the first barrier of a collective: did every rank call the same one? */
static ncclResult_t check_same(struct ncclComm *c, const op *o) {
    rank_info *me = info_of(c, c->rank);
    for (int j = 0; j < c->nranks; j++) {
        rank_info *ri = info_of(c, j);
        int k = atomic_load(&ri->kind);
        if (k == me->kind && ri->type == me->type && ri->red == me->red && ri->root == me->root &&
            ri->count == me->count && ri->opno == me->opno)
            continue;
        return comm_fail(c, ncclInvalidUsage, false,
                         "%s #%llu (%zu x %s, %s, root %d) does not match rank %d's %s #%llu (%llu x %s, %s, root %d)",
                         kind_names[o->kind], (unsigned long long)me->opno, o->count, type_name(o->type),
                         red_name(o->red), o->root, j, kind_names[k >= 0 && k < K_COUNT ? k : 0],
                         (unsigned long long)ri->opno, (unsigned long long)ri->count, type_name(ri->type),
                         red_name(ri->red), ri->root);
    }
    return ncclSuccess;
}

/* Write this rank's descriptor of o (read by the others after the next barrier). */
static void publish(struct ncclComm *c, const op *o) {
    rank_info *me = info_of(c, c->rank);
    me->type = o->kind == K_SPLIT ? 0 : (int)o->type;
    me->red = o->kind == K_ALLREDUCE || o->kind == K_REDUCE_SCATTER || o->kind == K_REDUCE ? (int)o->red : 0;
    me->root = o->kind == K_BROADCAST || o->kind == K_REDUCE ? o->root : 0;
    me->count = o->kind == K_SPLIT ? 0 : o->count;
    me->color = o->color;
    me->key = o->key;
    me->opno = ++c->opno;
    atomic_store(&me->kind, o->kind);
}

static ncclResult_t run_collective(struct ncclComm *c, const op *o) {
    const char *what = kind_names[o->kind];
    int n = c->nranks, me = c->rank;
    size_t es = type_size(o->type), slot = c->seg->slot_bytes, total = o->count;
    if ((o->kind == K_BROADCAST || o->kind == K_REDUCE) && (o->root < 0 || o->root >= n))
        return comm_fail(c, ncclInvalidArgument, false, "%s: root %d is not a rank of %d", what, o->root, n);
    size_t per = o->kind == K_REDUCE_SCATTER ? slot / ((size_t)n * es) : slot / es; /* elements per rank per round */
    char *in[MAX_RANKS];
    for (int j = 0; j < n; j++) in[j] = slot_of(c, j);
    publish(c, o);
    c->stat_ops++;
    c->stat_bytes += total * es * (o->kind == K_REDUCE_SCATTER ? (size_t)n : 1);
    bool first = true;
    for (size_t off = 0; first || off < total; off += per) {
        size_t len = total - off < per ? total - off : per;
        /* in: this rank's part of the round */
        switch (len ? o->kind : K_NONE) {
        case K_ALLREDUCE:
        case K_REDUCE:
        case K_ALLGATHER: memcpy(in[me], (const char *)o->send + off * es, len * es); break;
        case K_REDUCE_SCATTER:
            for (int j = 0; j < n; j++)
                memcpy(in[me] + (size_t)j * len * es, (const char *)o->send + ((size_t)j * total + off) * es, len * es);
            break;
        case K_BROADCAST:
            if (me == o->root) memcpy(in[me], (const char *)o->send + off * es, len * es);
            break;
        }
        ncclResult_t r = barrier(c, what);
        if (r) return r;
        if (first && (r = check_same(c, o))) return r;
        first = false;
        /* out: what this rank needs from every slot */
        switch (len ? o->kind : K_NONE) {
        case K_ALLREDUCE: reduce((char *)o->recv + off * es, in, n, 0, len, o->type, o->red); break;
        case K_REDUCE:
            if (me == o->root) reduce((char *)o->recv + off * es, in, n, 0, len, o->type, o->red);
            break;
        case K_REDUCE_SCATTER: reduce((char *)o->recv + off * es, in, n, (size_t)me * len, len, o->type, o->red); break;
        case K_ALLGATHER:
            for (int j = 0; j < n; j++) memcpy((char *)o->recv + ((size_t)j * total + off) * es, in[j], len * es);
            break;
        case K_BROADCAST: memcpy((char *)o->recv + off * es, in[o->root], len * es); break;
        }
        if ((r = barrier(c, what))) return r;
    }
    return ncclSuccess;
}

/* ---------------------------------------------------------------- splitting */

static ncclResult_t submit(struct ncclComm *c, op *ops, int nops, uint64_t *ticket);

static int cmp_member(const void *a, const void *b) {
    const int *x = a, *y = b; /* key, parent rank */
    if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

static void child_failed(struct ncclComm *ch, ncclResult_t r, const char *why) {
    comm_fail(ch, r, true, "ncclCommSplit: %s", why);
    atomic_store(&ch->status, r);
}

/* The split has run (or failed) on the parent's worker: the child's setup is over, and, as in
 * NCCL, only now does the new communicator reach the caller's variable (a non-blocking
 * ncclCommSplit returns with it NULL). */
static void child_ready(const op *o) {
    atomic_store(&o->child->setup_pending, 0);
    if (o->newcomm) __atomic_store_n(o->newcomm, o->child, __ATOMIC_RELEASE);
}

static ncclResult_t run_split(struct ncclComm *c, const op *o) {
    const char *what = kind_names[K_SPLIT];
    struct ncclComm *ch = o->child;
    c->splitting = ch;
    uint64_t split_no = ++c->nsplits;
    publish(c, o);
    ncclResult_t r = barrier(c, what);
    if (!r) r = check_same(c, o);
    int(*members)[2] = NULL;
    int m = 0;
    if (!r && ch) {
        members = malloc((size_t)c->nranks * sizeof *members);
        if (!members) r = comm_fail(c, ncclSystemError, false, "%s: out of memory", what);
        for (int j = 0; !r && j < c->nranks; j++) {
            rank_info *ri = info_of(c, j);
            if (ri->color != o->color) continue;
            members[m][0] = ri->key;
            members[m][1] = j;
            m++;
        }
    }
    if (!r) r = barrier(c, what); /* the colors are read: the lines may be reused */
    c->splitting = NULL;
    if (!ch) return r;
    if (r) {
        free(members);
        child_failed(ch, r, "the exchange over the parent failed");
        child_ready(o);
        return r;
    }
    qsort(members, (size_t)m, sizeof *members, cmp_member);
    int my = 0;
    while (members[my][1] != c->rank) my++;
    free(members);
    ch->rank = my;
    ch->nranks = m;
    ch->timeout_s = c->timeout_s;
    char name[NAME_LEN + 64];
    snprintf(name, sizeof name, "%s.s%llu.c%d", c->name, (unsigned long long)split_no, o->color);
    if (strlen(name) >= NAME_LEN) { /* deep splits: a hash of the same string on every member */
        uint64_t hsh = 1469598103934665603ull;
        for (const char *p = name; *p; p++) hsh = (hsh ^ (unsigned char)*p) * 1099511628211ull;
        snprintf(name, sizeof name, "/wan-emu-nccl-h%016llx", (unsigned long long)hsh);
    }
    snprintf(ch->name, sizeof ch->name, "%s", name);
    if (atomic_load(&ch->aborting)) {
        child_ready(o);
        return ncclSuccess;
    }
    op *init = calloc(1, sizeof *init);
    if (!init) {
        child_failed(ch, ncclSystemError, "out of memory");
        child_ready(o);
        return ncclSuccess;
    }
    init->kind = K_INIT;
    uint64_t ticket;
    ncclResult_t e = submit(ch, init, 1, &ticket); /* the child's worker joins its segment */
    if (e != ncclSuccess && e != ncclInProgress) child_failed(ch, e, "could not start joining");
    child_ready(o);
    return ncclSuccess;
}

/* ---------------------------------------------------------------- send and receive */

typedef struct {
    op *ops;
    int nops;
} p2p_set;

static bool blocked_behind(const p2p_set *s, int i) { /* an earlier op of the same kind and peer is pending */
    for (int k = 0; k < i; k++)
        if (s->ops[k].kind == s->ops[i].kind && s->ops[k].root == s->ops[i].root &&
            s->ops[k].done < s->ops[k].count * type_size(s->ops[k].type))
            return true;
    return false;
}

static void describe_p2p(struct ncclComm *c, void *arg, wait_desc *d) {
    const p2p_set *s = arg;
    (void)c;
    int shown = 0;
    for (int i = 0; i < s->nops; i++) {
        const op *o = &s->ops[i];
        size_t bytes = o->count * type_size(o->type);
        if (o->kind != K_SEND && o->kind != K_RECV) continue;
        if (o->done >= bytes) continue;
        if (d->nranks < MAX_RANKS) d->ranks[d->nranks++] = o->root;
        if (shown++ < 6)
            appendf(d->detail, sizeof d->detail, "%s%s rank %d (%zu of %zu bytes)", shown > 1 ? ", " : "",
                    o->kind == K_SEND ? "a send to" : "a receive from", o->root, o->done, bytes);
    }
    if (shown > 6) appendf(d->detail, sizeof d->detail, " and %d more", shown - 6);
}

/* Every send and receive of a task, progressing together. */
static ncclResult_t run_p2p(struct ncclComm *c, op *ops, int nops) {
    p2p_set s = {ops, nops};
    for (int i = 0; i < nops; i++)
        if ((ops[i].kind == K_SEND || ops[i].kind == K_RECV) && (ops[i].root < 0 || ops[i].root >= c->nranks))
            return comm_fail(c, ncclInvalidArgument, false, "%s: peer %d is not a rank of %d", kind_names[ops[i].kind],
                             ops[i].root, c->nranks);
    size_t cap = c->seg->chan_bytes;
    waiter w;
    wait_begin(&w);
    double t_start = w.t0;
    bool aborted = false;
    for (int i = 0; i < nops; i++)
        if (ops[i].kind == K_SEND || ops[i].kind == K_RECV) {
            int link = 2 * ops[i].root + (ops[i].kind == K_RECV);
            if (!c->stat_link_seen) c->stat_link_seen = calloc(2 * (size_t)c->nranks, 1);
            if (c->stat_link_seen && ops[i].root >= 0 && ops[i].root < c->nranks && !c->stat_link_seen[link]) {
                c->stat_link_seen[link] = 1;
                c->stat_links++;
                c->stat_links_late += ops[i].count != 1;
            }
            c->stat_ops++;
            c->stat_bytes += ops[i].count * type_size(ops[i].type);
        }
    for (;;) {
        bool all = true, moved = false;
        for (int i = 0; i < nops; i++) {
            op *o = &ops[i];
            if (o->kind != K_SEND && o->kind != K_RECV) continue;
            size_t bytes = o->count * type_size(o->type);
            if (o->done >= bytes) continue;
            all = false;
            if (blocked_behind(&s, i)) continue;
            if (o->kind == K_SEND) {
                chan_hdr *h = chan_of(c, c->rank, o->root);
                uint64_t posted = atomic_load_explicit(&h->posted, memory_order_relaxed);
                if (atomic_load_explicit(&h->taken, memory_order_acquire) != posted) continue; /* still full */
                size_t len = bytes - o->done < cap ? bytes - o->done : cap;
                memcpy(chan_data(h), (const char *)o->send + o->done, len);
                h->msg_bytes = bytes;
                h->len = len;
                atomic_store_explicit(&h->posted, posted + 1, memory_order_release);
                o->done += len;
                moved = true;
            } else {
                chan_hdr *h = chan_of(c, o->root, c->rank);
                uint64_t taken = atomic_load_explicit(&h->taken, memory_order_relaxed);
                if (atomic_load_explicit(&h->posted, memory_order_acquire) == taken) continue; /* empty */
                if (h->msg_bytes != bytes || h->len > bytes - o->done)
                    return comm_fail(c, ncclInvalidUsage, false,
                                     "ncclRecv: rank %d sends a message of %llu bytes, this receive expects %zu "
                                     "(%zu x %s)",
                                     o->root, (unsigned long long)h->msg_bytes, bytes, o->count, type_name(o->type));
                memcpy((char *)o->recv + o->done, chan_data(h), h->len);
                o->done += h->len;
                atomic_store_explicit(&h->taken, taken + 1, memory_order_release);
                moved = true;
            }
        }
        if (all) {
            note_wait(c, t_start);
            return ncclSuccess;
        }
        if (moved) wait_begin(&w), aborted = false; /* the deadline counts time without progress */
        else if (aborted) return peer_aborted(c, "ncclSend/ncclRecv");
        else {
            ncclResult_t r = wait_idle(c, &w, "ncclSend/ncclRecv", describe_p2p, &s);
            if (r == PEER_ABORTED) aborted = true;
            else if (r) return r;
        }
    }
}

/* ---------------------------------------------------------------- the worker */

/* Collectives (and init, split, finalize) in the order issued, then the sends and receives of
 * the group together. */
static ncclResult_t run_task(struct ncclComm *c, task *t) {
    bool p2p = false;
    for (int i = 0; i < t->nops; i++) {
        op *o = &t->ops[i];
        ncclResult_t r = ncclSuccess;
        if (o->kind != K_INIT && !c->seg)
            return comm_fail(c, ncclInvalidUsage, false, "%s: the communicator is not initialised",
                             kind_names[o->kind]);
        switch (o->kind) {
        case K_INIT: r = attach(c); break;
        case K_ALLREDUCE:
        case K_REDUCE_SCATTER:
        case K_ALLGATHER:
        case K_BROADCAST:
        case K_REDUCE: r = run_collective(c, o); break;
        case K_SPLIT: r = run_split(c, o); break;
        case K_SEND:
        case K_RECV: p2p = true; break;
        default: break; /* finalize: everything before it is done */
        }
        if (r) return r;
    }
    return p2p ? run_p2p(c, t->ops, t->nops) : ncclSuccess;
}

static int lazy_ms(void) {
    static _Atomic int v = -1;
    if (atomic_load(&v) < 0) atomic_store(&v, (int)env_double("WAN_EMU_NCCL_LAZY_MS", 0));
    return atomic_load(&v);
}

/* Lazy mode reads as early and writes as late as a GPU may: the data a stream task sends is
 * taken at enqueue (the stream is ordered after the compute issued so far), its results land
 * when someone waits for them. */
static void snapshot_sends(struct ncclComm *c, op *ops, int nops) {
    for (int i = 0; i < nops; i++) {
        op *o = &ops[i];
        if (!o->stream || !o->send) continue; /* every stream operation but a receive sends */
        size_t n = o->count * type_size(o->type) * (o->kind == K_REDUCE_SCATTER ? (size_t)c->nranks : 1);
        void *copy = malloc(n ? n : 1);
        if (!copy) continue; /* out of memory: reads at run time, as without lazy mode */
        memcpy(copy, o->send, n);
        o->snapshot = copy;
        o->send = copy;
    }
}

static void free_ops(op *ops, int nops) {
    for (int i = 0; i < nops; i++) free(ops[i].snapshot);
    free(ops);
}

static int aborting_of(void *arg) { return atomic_load(&((struct ncclComm *)arg)->aborting); }

/* Stream work waits for its turn on the stream (and, lazy, for a caller to need it), runs,
 * completes. */
static ncclResult_t run_stream_task(struct ncclComm *c, task *t, bool skip, ncclResult_t st) {
    wan_emu_stream_wait_turn(t->stream, t->sticket, skip ? 0 : lazy_ms() / 1000.0, aborting_of, c);
    ncclResult_t r = skip ? st : run_task(c, t);
    if (r != ncclSuccess && !skip) { /* the error is posted before the stream moves on */
        pthread_mutex_lock(&c->mu);
        atomic_store(&c->status, r);
        pthread_mutex_unlock(&c->mu);
    }
    wan_emu_stream_complete(t->stream, t->sticket);
    return r;
}

static void *worker_main(void *arg) {
    struct ncclComm *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->head && !c->quit) pthread_cond_wait(&c->cv, &c->mu);
        if (!c->head) break;
        task *t = c->head;
        c->head = t->next;
        if (!c->head) c->tail = NULL;
        ncclResult_t st = atomic_load(&c->status);
        bool failed = st != ncclSuccess && st != ncclInProgress;
        pthread_mutex_unlock(&c->mu);
        ncclResult_t r = t->stream ? run_stream_task(c, t, failed, st) : failed ? st : run_task(c, t);
        if (r != ncclSuccess) {
            /* the worker's own failures; a split's child reports through its own status */
            for (int i = 0; i < t->nops; i++)
                if (t->ops[i].kind == K_SPLIT && t->ops[i].child && atomic_load(&t->ops[i].child->setup_pending)) {
                    child_failed(t->ops[i].child, r, "the parent failed");
                    child_ready(&t->ops[i]); /* the caller gets the failed child to abort */
                }
        }
        free_ops(t->ops, t->nops);
        free(t);
        pthread_mutex_lock(&c->mu);
        if (r != ncclSuccess && !failed) atomic_store(&c->status, r);
        c->completed++;
        if (!c->head && atomic_load(&c->status) == ncclInProgress) atomic_store(&c->status, ncclSuccess);
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Queue ops (taken over) as one task. */
static ncclResult_t submit(struct ncclComm *c, op *ops, int nops, uint64_t *ticket) {
    task *t = malloc(sizeof *t);
    if (!t) {
        free(ops);
        return api_fail(ncclSystemError, "out of memory");
    }
    t->next = NULL;
    t->ops = ops;
    t->nops = nops;
    t->stream = ops[0].stream;
    t->sticket = 0;
    uint64_t unordered = t->stream ? wan_emu_stream_unordered(t->stream) : 0;
    if (unordered) { /* on a GPU it could read its input before the compute wrote it */
        ncclResult_t r = api_fail(ncclInvalidUsage,
                                  "%s queued on a stream that is not ordered after the last %llu device operations "
                                  "(no cudaStreamWaitEvent on an event recorded after them)",
                                  kind_names[ops[0].kind], (unsigned long long)unordered);
        free_ops(ops, nops);
        free(t);
        return r;
    }
    if (t->stream && lazy_ms() > 0) snapshot_sends(c, ops, nops);
    pthread_mutex_lock(&c->mu);
    ncclResult_t st = atomic_load(&c->status);
    if ((st != ncclSuccess && st != ncclInProgress) || c->quit || atomic_load(&c->aborting)) {
        pthread_mutex_unlock(&c->mu);
        free_ops(ops, nops);
        free(t);
        return st != ncclSuccess && st != ncclInProgress ? st : ncclInvalidUsage;
    }
    if (c->tail) c->tail->next = t;
    else c->head = t;
    c->tail = t;
    *ticket = ++c->submitted;
    /* stream work counts on its stream (in queueing order: this thread holds c->mu); host
     * work keeps the communicator "in progress" until done */
    if (t->stream) t->sticket = wan_emu_stream_enqueue(t->stream);
    else atomic_store(&c->status, ncclInProgress);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return ncclSuccess;
}

/* Blocking communicators: wait for the task with this ticket. */
static ncclResult_t wait_ticket(struct ncclComm *c, uint64_t ticket) {
    pthread_mutex_lock(&c->mu);
    while (c->completed < ticket) pthread_cond_wait(&c->cv, &c->mu);
    ncclResult_t st = atomic_load(&c->status);
    pthread_mutex_unlock(&c->mu);
    return st == ncclInProgress ? ncclSuccess : st;
}

/* After submit of host work: a blocking comm waits, a non-blocking one says ncclInProgress.
 * Stream work is done with once queued. */
static ncclResult_t after_submit(struct ncclComm *c, ncclResult_t r, uint64_t ticket, bool stream_work) {
    if (r != ncclSuccess || stream_work) return r;
    return c->blocking ? wait_ticket(c, ticket) : ncclInProgress;
}

static struct ncclComm *new_comm(bool blocking) {
    struct ncclComm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->blocking = blocking;
    c->timeout_s = env_double("WAN_EMU_NCCL_TIMEOUT", DEFAULT_TIMEOUT_S);
    atomic_store(&c->status, ncclInProgress);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    /* the worker takes no asynchronous signals: they stay with the application's threads */
    sigset_t all, old;
    sigfillset(&all);
    int sync_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
    for (size_t i = 0; i < sizeof sync_signals / sizeof sync_signals[0]; i++) sigdelset(&all, sync_signals[i]);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&c->worker, NULL, worker_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) {
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        free(c);
        return NULL;
    }
    c->have_worker = true;
    return c;
}

/* Stop the worker (after what is queued, unless aborting), leave the segment, free. */
static void free_comm(struct ncclComm *c) {
    pthread_mutex_lock(&c->mu);
    c->quit = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->have_worker) pthread_join(c->worker, NULL);
    detach(c);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c->stat_link_seen);
    free(c);
}

/* A split child still being set up by its parent's worker: wait until the parent lets go. */
static void wait_setup(struct ncclComm *c) {
    while (atomic_load(&c->setup_pending)) {
        struct timespec ts = {0, 100 * 1000};
        nanosleep(&ts, NULL);
    }
}

static int config_blocking(const ncclConfig_t *cfg, int dflt) {
    if (!cfg || cfg->blocking == NCCL_CONFIG_UNDEF_INT) return dflt;
    return cfg->blocking != 0;
}

static ncclResult_t check_config(const ncclConfig_t *cfg, const char *call) {
    if (cfg && (cfg->magic != CONFIG_MAGIC || cfg->size < offsetof(ncclConfig_t, blocking) + sizeof(int)))
        return api_fail(ncclInvalidArgument, "%s: the config was not set up with NCCL_CONFIG_INITIALIZER", call);
    return ncclSuccess;
}

/* ---------------------------------------------------------------- groups */

typedef struct {
    struct ncclComm *c;
    op *ops;
    int n, cap;
} pending;

static _Thread_local int group_depth;
static _Thread_local pending *group_pend;
static _Thread_local int group_npend, group_cap;
static _Thread_local ncclResult_t group_err;

static ncclResult_t group_add(struct ncclComm *c, const op *o) {
    int i = 0;
    while (i < group_npend && group_pend[i].c != c) i++;
    if (i == group_npend) {
        if (group_npend == group_cap) {
            int cap = group_cap ? 2 * group_cap : 8;
            pending *p = realloc(group_pend, (size_t)cap * sizeof *p);
            if (!p) return api_fail(ncclSystemError, "out of memory");
            group_pend = p, group_cap = cap;
        }
        group_pend[group_npend++] = (pending){c, NULL, 0, 0};
    }
    pending *p = &group_pend[i];
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 8;
        op *ops = realloc(p->ops, (size_t)cap * sizeof *ops);
        if (!ops) return api_fail(ncclSystemError, "out of memory");
        p->ops = ops, p->cap = cap;
    }
    p->ops[p->n++] = *o;
    return ncclSuccess;
}

ncclResult_t ncclGroupStart(void) {
    if (group_depth == 0) group_err = ncclSuccess;
    group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
    if (group_depth <= 0) return api_fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--group_depth > 0) return ncclSuccess;
    ncclResult_t r = group_err, any_nonblocking = ncclSuccess;
    uint64_t *tickets = calloc((size_t)group_npend + 1, sizeof *tickets);
    for (int i = 0; i < group_npend; i++) {
        pending *p = &group_pend[i];
        if (r != ncclSuccess || !tickets) { /* an operation of the group was refused: nothing runs */
            free(p->ops);
            continue;
        }
        bool stream_work = p->ops[0].stream != NULL;
        ncclResult_t e = submit(p->c, p->ops, p->n, &tickets[i]);
        if (e != ncclSuccess) r = e;
        else if (stream_work) tickets[i] = 0; /* queued is done with */
        else if (!p->c->blocking) any_nonblocking = ncclInProgress;
    }
    if (!tickets && r == ncclSuccess) r = api_fail(ncclSystemError, "out of memory");
    for (int i = 0; r == ncclSuccess && i < group_npend; i++)
        if (group_pend[i].c->blocking && tickets[i]) {
            ncclResult_t e = wait_ticket(group_pend[i].c, tickets[i]);
            if (e != ncclSuccess) r = e;
        }
    free(tickets);
    free(group_pend);
    group_pend = NULL, group_npend = group_cap = 0;
    group_err = ncclSuccess;
    return r != ncclSuccess ? r : any_nonblocking;
}

/* Run or queue one operation: inside a group it waits for ncclGroupEnd. */
static ncclResult_t issue(struct ncclComm *c, const op *o) {
    if (group_depth > 0) return group_add(c, o);
    op *ops = malloc(sizeof *ops);
    if (!ops) return api_fail(ncclSystemError, "out of memory");
    *ops = *o;
    uint64_t ticket = 0;
    bool stream_work = o->stream != NULL;
    ncclResult_t r = submit(c, ops, 1, &ticket);
    return after_submit(c, r, ticket, stream_work);
}

/* An invalid operation: refused now; inside a group it also fails the group. */
static ncclResult_t refuse(ncclResult_t r) {
    if (group_depth > 0 && group_err == ncclSuccess) group_err = r;
    return r;
}

/* bufs_ok: the buffers the call needs are there (or count is 0). */
static ncclResult_t check_op(struct ncclComm *c, const char *call, size_t count, ncclDataType_t t, int red,
                             bool bufs_ok) {
    if (!c) return refuse(api_fail(ncclInvalidArgument, "%s: NULL communicator", call));
    if ((int)t < 0 || t >= ncclNumTypes || !type_size(t))
        return refuse(api_fail(ncclInvalidArgument, "%s: unknown data type %d", call, (int)t));
    if (red >= 0) {
        if (red >= ncclNumOps)
            return refuse(api_fail(ncclInvalidArgument, "%s: reduction operation %d is not emulated", call, red));
        if (t == ncclFloat8e4m3 || t == ncclFloat8e5m2)
            return refuse(api_fail(ncclInvalidArgument, "%s: fp8 reductions are not emulated", call));
    }
    if (count && !bufs_ok) return refuse(api_fail(ncclInvalidArgument, "%s: NULL buffer", call));
    if (count > ((size_t)1 << 48))
        return refuse(api_fail(ncclInvalidArgument, "%s: count %zu is out of range", call, count));
    return ncclSuccess;
}

/* ---------------------------------------------------------------- the API */

const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "a CUDA call failed";
    case ncclSystemError: return "a system call failed or a peer did not answer in time";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "a peer failed, exited or aborted";
    case ncclInProgress: return "in progress";
    default: return "unknown result code";
    }
}

const char *ncclGetLastError(ncclComm_t comm) {
    if (comm) {
        ncclResult_t st = atomic_load(&comm->status);
        if (st != ncclSuccess && st != ncclInProgress && comm->err[0]) return comm->err;
    }
    return last_err;
}

ncclResult_t ncclGetVersion(int *version) {
    if (!version) return api_fail(ncclInvalidArgument, "ncclGetVersion: NULL");
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    if (!id) return api_fail(ncclInvalidArgument, "ncclGetUniqueId: NULL id");
    static _Atomic unsigned serial;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 40);
    x ^= (uintptr_t)&x; /* stack address randomisation */
    x *= 0x9e3779b97f4a7c15ull;
    memset(id, 0, sizeof *id);
    memcpy(id->internal, ID_TAG, sizeof ID_TAG);
    snprintf(id->internal + ID_NAME_OFF, sizeof id->internal - ID_NAME_OFF, "/wan-emu-nccl-%d-%u-%016llx",
             (int)getpid(), atomic_fetch_add(&serial, 1), (unsigned long long)x);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *config) {
    if (!comm) return api_fail(ncclInvalidArgument, "ncclCommInitRankConfig: NULL comm");
    *comm = NULL;
    ncclResult_t r = check_config(config, "ncclCommInitRankConfig");
    if (r) return r;
    if (nranks < 1 || nranks > MAX_RANKS || rank < 0 || rank >= nranks)
        return api_fail(ncclInvalidArgument, "ncclCommInitRankConfig: rank %d of %d (the emulator takes up to %d ranks)",
                        rank, nranks, MAX_RANKS);
    if (memcmp(id.internal, ID_TAG, sizeof ID_TAG) != 0 ||
        !memchr(id.internal + ID_NAME_OFF, 0, sizeof id.internal - ID_NAME_OFF) || id.internal[ID_NAME_OFF] != '/')
        return api_fail(ncclInvalidArgument, "ncclCommInitRankConfig: the id does not come from ncclGetUniqueId");
    struct ncclComm *c = new_comm(config_blocking(config, 1));
    if (!c) return api_fail(ncclSystemError, "ncclCommInitRankConfig: out of memory or threads");
    snprintf(c->name, sizeof c->name, "%s", id.internal + ID_NAME_OFF);
    c->rank = rank;
    c->nranks = nranks;
    op *init = calloc(1, sizeof *init);
    if (!init) {
        free_comm(c);
        return api_fail(ncclSystemError, "ncclCommInitRankConfig: out of memory");
    }
    init->kind = K_INIT;
    uint64_t ticket = 0;
    r = submit(c, init, 1, &ticket);
    if (r) {
        free_comm(c);
        return r;
    }
    *comm = c;
    return after_submit(c, r, ticket, false);
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    return ncclCommInitRankConfig(comm, nranks, id, rank, NULL);
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t *newcomm, ncclConfig_t *config) {
    if (!comm || !newcomm) return api_fail(ncclInvalidArgument, "ncclCommSplit: NULL communicator");
    *newcomm = NULL;
    ncclResult_t r = check_config(config, "ncclCommSplit");
    if (r) return r;
    if (color < 0 && color != NCCL_SPLIT_NOCOLOR)
        return api_fail(ncclInvalidArgument, "ncclCommSplit: color %d (must be >= 0 or NCCL_SPLIT_NOCOLOR)", color);
    if (group_depth > 0) return refuse(api_fail(ncclInvalidUsage, "ncclCommSplit inside a group is not emulated"));
    struct ncclComm *ch = NULL;
    if (color != NCCL_SPLIT_NOCOLOR) {
        ch = new_comm(config_blocking(config, comm->blocking));
        if (!ch) return api_fail(ncclSystemError, "ncclCommSplit: out of memory or threads");
        atomic_store(&ch->setup_pending, 1);
        snprintf(ch->name, sizeof ch->name, "%.150s (split, joining)", comm->name);
        ch->rank = -1;
    }
    op *o = calloc(1, sizeof *o);
    if (!o) {
        if (ch) free_comm(ch);
        return api_fail(ncclSystemError, "ncclCommSplit: out of memory");
    }
    o->kind = K_SPLIT;
    o->child = ch;
    o->newcomm = ch ? newcomm : NULL;
    o->color = color;
    o->key = key;
    uint64_t ticket = 0;
    r = submit(comm, o, 1, &ticket);
    if (r != ncclSuccess) {
        if (ch) free_comm(ch);
        return r;
    }
    if (!comm->blocking && !(ch && ch->blocking)) return ncclInProgress; /* *newcomm comes later */
    *newcomm = ch;
    r = wait_ticket(comm, ticket);
    if (r == ncclSuccess && ch) {
        wait_setup(ch);
        ncclResult_t st = atomic_load(&ch->status);
        if (st != ncclSuccess && st != ncclInProgress) r = st;
        else r = ch->blocking ? wait_ticket(ch, 1) : ncclInProgress;
    }
    return r;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
    if (!comm || !count) return api_fail(ncclInvalidArgument, "ncclCommCount: NULL argument");
    if (atomic_load(&comm->setup_pending)) return ncclInProgress;
    *count = comm->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
    if (!comm || !rank) return api_fail(ncclInvalidArgument, "ncclCommUserRank: NULL argument");
    if (atomic_load(&comm->setup_pending)) return ncclInProgress;
    *rank = comm->rank;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
    if (!comm || !device) return api_fail(ncclInvalidArgument, "ncclCommCuDevice: NULL argument");
    *device = 0;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *e) {
    if (!comm || !e) return api_fail(ncclInvalidArgument, "ncclCommGetAsyncError: NULL argument");
    *e = atomic_load(&comm->status);
    return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    if (!comm) return api_fail(ncclInvalidArgument, "ncclCommFinalize: NULL communicator");
    op *o = calloc(1, sizeof *o);
    if (!o) return api_fail(ncclSystemError, "ncclCommFinalize: out of memory");
    o->kind = K_FINALIZE;
    uint64_t ticket = 0;
    ncclResult_t r = submit(comm, o, 1, &ticket);
    return after_submit(comm, r, ticket, false);
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return api_fail(ncclInvalidArgument, "ncclCommDestroy: NULL communicator");
    wait_setup(comm);
    pthread_mutex_lock(&comm->mu); /* what is queued finishes first (each wait has its deadline) */
    while (comm->completed < comm->submitted) pthread_cond_wait(&comm->cv, &comm->mu);
    pthread_mutex_unlock(&comm->mu);
    const char *stats = getenv("WAN_EMU_NCCL_STATS");
    if (stats && *stats && strcmp(stats, "0") != 0)
        fprintf(stderr,
                "nccl emulator: %s rank %d of %d: %llu operations, %llu bytes in, %.3f s waiting for peers "
                "(longest %.3f s), %d point-to-point links, %d first used by more than one element\n",
                comm->name, comm->rank, comm->nranks, (unsigned long long)comm->stat_ops,
                (unsigned long long)comm->stat_bytes, comm->stat_wait, comm->stat_max_wait, comm->stat_links,
                comm->stat_links_late);
    free_comm(comm);
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    atomic_store(&comm->aborting, 1); /* every wait of the worker checks it */
    wait_setup(comm);
    pthread_mutex_lock(&comm->mu);
    comm->quit = true; /* what is still queued is dropped */
    for (task *t = comm->head, *next; t; t = next) {
        next = t->next;
        for (int i = 0; i < t->nops; i++)
            if (t->ops[i].kind == K_SPLIT && t->ops[i].child) {
                child_failed(t->ops[i].child, ncclInvalidUsage, "the parent was aborted");
                child_ready(&t->ops[i]);
            }
        wan_emu_stream_complete(t->stream, t->sticket); /* the aborted kernel lets the stream go on */
        free_ops(t->ops, t->nops);
        free(t);
        comm->completed++;
    }
    comm->head = comm->tail = NULL;
    pthread_cond_broadcast(&comm->cv);
    pthread_mutex_unlock(&comm->mu);
    if (comm->have_worker) pthread_join(comm->worker, NULL);
    comm->have_worker = false;
    if (comm->seg) { /* the peers' waits on this communicator fail now instead of at their deadline */
        int none = 0;
        if (atomic_compare_exchange_strong(&comm->seg->abort_claim, &none, 1)) {
            /* the reason: this communicator's error, else this process's last one (another
             * communicator's, when the application aborts them all) */
            char why[1024];
            pthread_mutex_lock(&last_mu);
            snprintf(why, sizeof why, "%s", comm->err[0] ? comm->err : strcmp(last_err, "no error") ? last_err : "");
            pthread_mutex_unlock(&last_mu);
            const char *tag = "nccl emulator: ";
            const char *text = strncmp(why, tag, strlen(tag)) ? why : why + strlen(tag);
            snprintf(comm->seg->abort_msg, sizeof comm->seg->abort_msg, "%.500s", text);
            atomic_store_explicit(&comm->seg->aborted_by, comm->rank + 1, memory_order_release);
        }
    }
    free_comm(comm);
    return ncclSuccess;
}

/* ---------------------------------------------------------------- operations */

ncclResult_t ncclAllReduce(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t red, ncclComm_t c,
                           cudaStream_t st) {
    ncclResult_t e = check_op(c, "ncclAllReduce", n, t, (int)red, s && r);
    if (e) return e;
    op o = {.kind = K_ALLREDUCE, .stream = st, .send = s, .recv = r, .count = n, .type = t, .red = red};
    return issue(c, &o);
}

ncclResult_t ncclReduceScatter(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t red, ncclComm_t c,
                               cudaStream_t st) {
    ncclResult_t e = check_op(c, "ncclReduceScatter", n, t, (int)red, s && r);
    if (e) return e;
    op o = {.kind = K_REDUCE_SCATTER, .stream = st, .send = s, .recv = r, .count = n, .type = t, .red = red};
    return issue(c, &o);
}

ncclResult_t ncclAllGather(const void *s, void *r, size_t n, ncclDataType_t t, ncclComm_t c, cudaStream_t st) {
    ncclResult_t e = check_op(c, "ncclAllGather", n, t, -1, s && r);
    if (e) return e;
    op o = {.kind = K_ALLGATHER, .stream = st, .send = s, .recv = r, .count = n, .type = t};
    return issue(c, &o);
}

ncclResult_t ncclBroadcast(const void *s, void *r, size_t n, ncclDataType_t t, int root, ncclComm_t c,
                           cudaStream_t st) {
    ncclResult_t e = check_op(c, "ncclBroadcast", n, t, -1, r != NULL);
    if (e) return e;
    op o = {.kind = K_BROADCAST, .stream = st, .send = s, .recv = r, .count = n, .type = t, .root = root};
    return issue(c, &o);
}

ncclResult_t ncclReduce(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t red, int root, ncclComm_t c,
                        cudaStream_t st) {
    ncclResult_t e = check_op(c, "ncclReduce", n, t, (int)red, s != NULL);
    if (e) return e;
    op o = {.kind = K_REDUCE, .stream = st, .send = s, .recv = r, .count = n, .type = t, .red = red, .root = root};
    return issue(c, &o);
}

ncclResult_t ncclSend(const void *s, size_t n, ncclDataType_t t, int peer, ncclComm_t c, cudaStream_t st) {
    ncclResult_t e = check_op(c, "ncclSend", n, t, -1, s != NULL);
    if (e) return e;
    op o = {.kind = K_SEND, .stream = st, .send = s, .count = n, .type = t, .root = peer};
    return issue(c, &o);
}

ncclResult_t ncclRecv(void *r, size_t n, ncclDataType_t t, int peer, ncclComm_t c, cudaStream_t st) {
    ncclResult_t e = check_op(c, "ncclRecv", n, t, -1, r != NULL);
    if (e) return e;
    op o = {.kind = K_RECV, .stream = st, .recv = r, .count = n, .type = t, .root = peer};
    return issue(c, &o);
}
