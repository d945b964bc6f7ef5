/* The CPU transport: ranks of one node meet in one POSIX shared-memory segment.
 *
 * Segment: a header (abort flag and message, group table lock), one slot per world rank (pid,
 * point-to-point handshake words), a table of groups (a generation barrier and per-member
 * state each), then per world rank two scratch buffers of `chunk` bytes (double buffering).
 * Rank 0 creates it and publishes its name through the bootstrap key-value store; the last rank
 * to map it unlinks the name, so nothing is left in /dev/shm whatever happens afterwards.
 *
 * Data moves through the scratch buffers in rounds of at most `chunk` bytes per rank: every
 * member copies its part in, a barrier, then members read what they need. Reductions add the
 * members' contributions in member order (m0 + m1 + m2 ...) elementwise, with each member
 * reducing one slice of the round, so every rank gets bit-identical results whatever the
 * timing, and the reduction work is spread over the ranks.
 *
 * Waiting spins briefly, then sleeps on a futex; while asleep it checks the shared abort flag,
 * whether the awaited peers still live (kill(pid, 0)) and the deadline (comm->timeout_s), and
 * fails naming the group, the operation and the peers it waited for. A failing rank publishes
 * its message in the abort flag, so every other rank's current and later calls fail promptly. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bootstrap.h"
#include "comm.h"
#include "error.h"
#include "log.h"

#define SHM_MAGIC 0x31306d6873776e61ull /* "anwshm01" */
#define LINE 64
#define DEFAULT_CHUNK (1u << 20)
#define DEFAULT_TIMEOUT_S 300
#define CHECK_INTERVAL_S 0.05 /* how often a sleeping waiter checks abort, peers, deadline */

enum { OP_NONE, OP_ALLREDUCE, OP_REDUCE_SCATTER, OP_ALLGATHER, OP_BROADCAST, OP_SENDRECV,
       OP_SEND, OP_RECV, OP_BARRIER, OP_MAKE_GROUP, OP_CREATE, OP_REDUCE, OP_COUNT };
static const char *op_names[OP_COUNT] = {"nothing", "allreduce", "reduce_scatter", "allgather", "broadcast",
                                         "sendrecv", "send", "recv", "barrier", "make_group", "create", "reduce"};

typedef struct {
    uint64_t magic;
    int world, max_groups;
    size_t chunk, total_bytes, group_stride;
    size_t slots_off, groups_off, scratch_off;
    _Atomic int attached;
    atomic_flag group_lock;
    _Atomic int abort_claim; /* 0, or the failing rank + 1 */
    _Atomic int abort_ready; /* abort_msg is complete */
    char abort_msg[1024];
} shm_header;

/* Per world rank. */
typedef struct {
    _Alignas(LINE) _Atomic int pid;
    /* point to point, in the sender's slot: "dest + 1" << 32 | pair sequence, announced last */
    _Alignas(LINE) _Atomic uint64_t p2p_announce;
    uint32_t p2p_base;  /* posted == taken == base when the message began */
    uint64_t p2p_bytes; /* its size */
    _Alignas(LINE) _Atomic uint32_t p2p_posted; /* chunks posted (monotonic); receiver waits on it */
    _Atomic uint32_t p2p_posted_sleepers;
    _Alignas(LINE) _Atomic uint32_t p2p_taken; /* chunks taken by the receiver; sender waits on it */
    _Atomic uint32_t p2p_taken_sleepers;
} rank_slot;

/* Per member of a group, written by that member only. */
typedef struct {
    _Alignas(LINE) _Atomic uint32_t arrivals; /* barriers arrived at (who is missing) */
    _Atomic int in_op;                        /* the operation of its last barrier (diagnostics) */
    /* the call it is in (checked by the others after the first barrier) */
    int call_op, call_root, call_to;
    wan_dtype call_dt;
    size_t call_n;
} member_state;

typedef struct {
    _Atomic int state; /* 0 free, 1 ready */
    char name[16];
    int index, size;
    _Alignas(LINE) _Atomic uint32_t count;
    _Alignas(LINE) _Atomic uint32_t gen; /* futex word: bumped when all arrived */
    _Atomic uint32_t sleepers;
    /* then: int members[world] (padded to a line), member_state states[world] */
} group_hdr;

typedef struct shm_group {
    group_hdr *gh; /* NULL for groups of one */
    const int *members;
    member_state *states;
    struct shm_group *next; /* all groups of this comm, freed by destroy */
} shm_group;

typedef struct {
    shm_header *h;
    size_t map_bytes;
    char name[64];
    rank_slot *slots;
    unsigned char *scratch;
    uint32_t *sent_to, *recvd_from; /* point-to-point messages per world peer */
    double spin_s;
    bool poisoned;
    char poison_msg[512];
    shm_group *groups;
} shm_comm;

static size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void futex_wait(_Atomic uint32_t *word, uint32_t old, double seconds) {
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, old, &ts, NULL, 0);
}

static void wake(_Atomic uint32_t *word, _Atomic uint32_t *sleepers) {
    if (atomic_load(sleepers)) syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

static shm_comm *impl_of(wan_group *g) { return g->comm->impl; }
static unsigned char *scratch_of(shm_comm *sc, int world_rank, int buf) {
    return sc->scratch + ((size_t)world_rank * 2 + (size_t)buf) * sc->h->chunk;
}

/* ---- failure: record, poison, tell the others ---- */

static void publish_abort(shm_comm *sc, int rank, const char *msg) {
    int none = 0;
    if (atomic_compare_exchange_strong(&sc->h->abort_claim, &none, rank + 1)) {
        snprintf(sc->h->abort_msg, sizeof sc->h->abort_msg, "%s", msg);
        atomic_store(&sc->h->abort_ready, 1);
    }
}

static void poison(shm_comm *sc, const char *msg) {
    if (sc->poisoned) return;
    sc->poisoned = true;
    snprintf(sc->poison_msg, sizeof sc->poison_msg, "%.500s", msg);
}

/* Fail this call: the message goes to wan_fail, the poison flag and (publish) the abort flag. */
__attribute__((format(printf, 4, 5))) static int comm_fail(wan_group *g, bool publish, int op, const char *fmt,
                                                           ...) {
    shm_comm *sc = impl_of(g);
    char detail[900], msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    snprintf(msg, sizeof msg, "%s on %s[%d]: %s", op_names[op], g->name, g->index, detail);
    poison(sc, msg);
    if (publish) publish_abort(sc, g->comm->rank, msg);
    return wan_fail(WAN_ERR_RUNTIME, "%s", msg);
}

/* Another rank published an abort: fail with its message. */
static int check_abort(wan_group *g, int op) {
    shm_comm *sc = impl_of(g);
    if (sc->poisoned) {
        return wan_fail(WAN_ERR_RUNTIME, "%s on %s[%d]: the communicator is unusable after an earlier error: %s",
                        op_names[op], g->name, g->index, sc->poison_msg);
    }
    if (!atomic_load_explicit(&sc->h->abort_ready, memory_order_acquire)) return 0;
    int who = atomic_load(&sc->h->abort_claim) - 1;
    return comm_fail(g, false, op, "rank %d aborted: %s", who, sc->h->abort_msg);
}

static bool pid_dead(int pid) { return pid > 0 && kill(pid, 0) == -1 && errno == ESRCH; }

static int timeout_of(wan_group *g) { return g->comm->timeout_s > 0 ? g->comm->timeout_s : DEFAULT_TIMEOUT_S; }

/* Who a waiter waits for: one member (point to point), or (peer < 0) the group's members that
 * have not yet arrived at barrier number `arrival`. Fails if one died; names them on timeout. */
static int check_peers(wan_group *g, int op, int peer, uint32_t arrival, bool timed_out) {
    shm_comm *sc = impl_of(g);
    shm_group *sg = g->impl;
    char list[600] = "";
    size_t len = 0;
    int missing = 0;
    for (int j = 0; j < g->size; j++) {
        if (peer >= 0 ? j != peer : (j == g->rank || atomic_load(&sg->states[j].arrivals) >= arrival)) continue;
        int wr = g->ranks[j], pid = atomic_load(&sc->slots[wr].pid);
        if (pid_dead(pid)) return comm_fail(g, true, op, "member %d (rank %d, pid %d) died", j, wr, pid);
        if (timed_out && missing++ < 8 && len < sizeof list - 100) {
            int in = sg->gh ? atomic_load(&sg->states[j].in_op) : OP_NONE;
            len += (size_t)snprintf(list + len, sizeof list - len, "%smember %d (rank %d, pid %d, last in %s)",
                                    len ? ", " : "", j, wr, pid, op_names[in >= 0 && in < OP_COUNT ? in : 0]);
        }
    }
    if (!timed_out) return 0;
    if (missing > 8) snprintf(list + len, sizeof list - len, " and %d more", missing - 8);
    return comm_fail(g, true, op, "timed out after %d s waiting for %s", timeout_of(g),
                     missing ? list : "the peers (no one missing: a bug?)");
}

/* Wait until *word != old: spin, then sleep on the futex with periodic checks. */
static int wait_change(wan_group *g, int op, _Atomic uint32_t *word, _Atomic uint32_t *sleepers, uint32_t old,
                       int peer, uint32_t arrival) {
    shm_comm *sc = impl_of(g);
    if (atomic_load_explicit(word, memory_order_acquire) != old) return 0;
    /* spin, yielding now and then: a peer waiting for a core (a busy or oversubscribed
     * machine) gets it at once */
    double t0 = wan_now(), spin_until = t0 + sc->spin_s;
    do {
        for (int i = 0; i < 64; i++) {
            cpu_relax();
            if (atomic_load_explicit(word, memory_order_acquire) != old) return 0;
        }
        sched_yield();
        if (atomic_load_explicit(word, memory_order_acquire) != old) return 0;
    } while (wan_now() < spin_until);
    double next_check = 0;
    for (;;) {
        if (atomic_load_explicit(word, memory_order_acquire) != old) return 0;
        WAN_TRY(check_abort(g, op));
        double now = wan_now();
        if (now >= next_check) {
            WAN_TRY(check_peers(g, op, peer, arrival, now - t0 > timeout_of(g)));
            next_check = now + CHECK_INTERVAL_S;
        }
        atomic_fetch_add(sleepers, 1);
        futex_wait(word, old, CHECK_INTERVAL_S);
        atomic_fetch_sub(sleepers, 1);
    }
}

/* All members of the group meet (a generation barrier: the last to arrive bumps `gen`). */
static int group_barrier(wan_group *g, int op) {
    shm_group *sg = g->impl;
    group_hdr *gh = sg->gh;
    member_state *me = &sg->states[g->rank];
    atomic_store_explicit(&me->in_op, op, memory_order_relaxed);
    uint32_t gen = atomic_load(&gh->gen);
    uint32_t arrival = atomic_fetch_add(&me->arrivals, 1) + 1;
    if (atomic_fetch_add(&gh->count, 1) == (uint32_t)g->size - 1) {
        atomic_store(&gh->count, 0);
        atomic_store(&gh->gen, gen + 1);
        wake(&gh->gen, &gh->sleepers);
        return 0;
    }
    while (atomic_load_explicit(&gh->gen, memory_order_acquire) == gen)
        WAN_TRY(wait_change(g, op, &gh->gen, &gh->sleepers, gen, -1, arrival));
    return 0;
}

/* ---- collectives ---- */

/* Start of every call: usable, a member, and the same call on every member (checked after the
 * first barrier by check_call). */
static int begin(wan_group *g, int op, size_t n, wan_dtype dt, int root, int to) {
    if (!g->impl) {
        return wan_fail(WAN_ERR_RUNTIME, "%s on %s[%d]: rank %d is not a member of this group", op_names[op], g->name,
                        g->index, g->comm->rank);
    }
    WAN_TRY(check_abort(g, op));
    shm_group *sg = g->impl;
    if (sg->gh) {
        member_state *me = &sg->states[g->rank];
        me->call_op = op, me->call_n = n, me->call_dt = dt, me->call_root = root, me->call_to = to;
    }
    return 0;
}

static int check_call(wan_group *g, int op) {
    shm_group *sg = g->impl;
    const member_state *me = &sg->states[g->rank];
    for (int j = 0; j < g->size; j++) {
        const member_state *o = &sg->states[j];
        if (o->call_op != op || o->call_n != me->call_n || o->call_dt != me->call_dt ||
            o->call_root != me->call_root) {
            int oop = o->call_op >= 0 && o->call_op < OP_COUNT ? o->call_op : 0;
            return comm_fail(g, true, op,
                             "mismatched calls: member %d called %s(%zu %s, root %d), member %d (rank %d) called "
                             "%s(%zu %s, root %d)",
                             g->rank, op_names[op], me->call_n, wan_dtype_name(me->call_dt), me->call_root, j,
                             g->ranks[j], op_names[oop], o->call_n, wan_dtype_name(o->call_dt), o->call_root);
        }
    }
    return 0;
}

/* Slice `i` of p over [0, m), cut at multiples of `unit` elements (cache lines). */
static void slice_of(size_t m, int p, int i, size_t unit, size_t *lo, size_t *hi) {
    size_t units = (m + unit - 1) / unit;
    size_t a = units * (size_t)i / (size_t)p * unit, b = units * (size_t)(i + 1) / (size_t)p * unit;
    *lo = a < m ? a : m;
    *hi = b < m ? b : m;
}

#define RBLK 512

/* dst[i] = src[0][i] (op) src[1][i] (op) ... in member order, fp32 accumulation for 16-bit
 * types; also into dst2 unless NULL. A destination may be one of the sources (each block is
 * read whole before it is written). */
static void reduce_into(void *dst, void *dst2, const void *const *src, int nsrc, size_t n, wan_dtype dt,
                        wan_redop op) {
    float acc[RBLK], v[RBLK];
    size_t es = wan_dtype_size(dt);
    for (size_t i0 = 0; i0 < n; i0 += RBLK) {
        size_t m = n - i0 < RBLK ? n - i0 : RBLK;
        for (int j = 0; j < nsrc; j++) {
            float *t = j ? v : acc;
            if (dt == WAN_F32) memcpy(t, (const float *)src[j] + i0, m * sizeof(float));
            else if (dt == WAN_BF16) {
                const uint16_t *s = (const uint16_t *)src[j] + i0;
                for (size_t i = 0; i < m; i++) t[i] = wan_bf16_to_f32(s[i]);
            } else {
                const uint16_t *s = (const uint16_t *)src[j] + i0;
                for (size_t i = 0; i < m; i++) t[i] = wan_f16_to_f32(s[i]);
            }
            if (!j) continue;
            if (op == WAN_RED_SUM) {
#pragma omp simd
                for (size_t i = 0; i < m; i++) acc[i] += v[i];
            } else {
#pragma omp simd
                for (size_t i = 0; i < m; i++) acc[i] = (v[i] > acc[i] || v[i] != v[i]) ? v[i] : acc[i];
            }
        }
        void *d = (unsigned char *)dst + i0 * es;
        if (dt == WAN_F32) memcpy(d, acc, m * sizeof(float));
        else if (dt == WAN_BF16)
            for (size_t i = 0; i < m; i++) ((uint16_t *)d)[i] = wan_f32_to_bf16(acc[i]);
        else
            for (size_t i = 0; i < m; i++) ((uint16_t *)d)[i] = wan_f32_to_f16(acc[i]);
        if (dst2) memcpy((unsigned char *)dst2 + i0 * es, d, m * es);
    }
}

/* The fast path of reduce_into for fp32 sums (most gradient traffic). */
static void reduce_f32_sum(float *dst, float *dst2, const float *const *src, int nsrc, size_t n) {
    float acc[RBLK];
    for (size_t i0 = 0; i0 < n; i0 += RBLK) {
        size_t m = n - i0 < RBLK ? n - i0 : RBLK;
        memcpy(acc, src[0] + i0, m * sizeof(float));
        for (int j = 1; j < nsrc; j++) {
            const float *s = src[j] + i0;
            /* -O2 does not vectorize this by itself (the build has -fopenmp) */
#pragma omp simd
            for (size_t i = 0; i < m; i++) acc[i] += s[i];
        }
        memcpy(dst + i0, acc, m * sizeof(float));
        if (dst2) memcpy(dst2 + i0, acc, m * sizeof(float));
    }
}

static void reduce(void *dst, void *dst2, const void *const *src, int nsrc, size_t n, wan_dtype dt, wan_redop op) {
    if (dt == WAN_F32 && op == WAN_RED_SUM) reduce_f32_sum(dst, dst2, (const float *const *)src, nsrc, n);
    else reduce_into(dst, dst2, src, nsrc, n, dt, op);
}

/* Per round: everyone copies in the parts the others reduce; each reduces its own slice,
 * reading its own contribution in place, into its buffer and its scratch; then copies out
 * the others' slices. */
static int shm_allreduce(wan_group *g, void *buf, size_t n, wan_dtype dt, wan_redop op) {
    WAN_TRY(begin(g, OP_ALLREDUCE, n, dt, (int)op, -1));
    shm_comm *sc = impl_of(g);
    if (g->size == 1 || n == 0) return 0;
    size_t es = wan_dtype_size(dt), per_round = sc->h->chunk / es, unit = LINE / es;
    const void *src[1024];
    unsigned char *data = buf;
    for (size_t off = 0, r = 0; off < n; off += per_round, r++) {
        int b = (int)(r & 1);
        size_t m = n - off < per_round ? n - off : per_round, lo, hi;
        unsigned char *mine = scratch_of(sc, g->comm->rank, b), *in = data + off * es;
        slice_of(m, g->size, g->rank, unit, &lo, &hi);
        memcpy(mine, in, lo * es);
        memcpy(mine + hi * es, in + hi * es, (m - hi) * es);
        WAN_TRY(group_barrier(g, OP_ALLREDUCE));
        if (r == 0) WAN_TRY(check_call(g, OP_ALLREDUCE));
        for (int j = 0; j < g->size; j++)
            src[j] = (j == g->rank ? in : scratch_of(sc, g->ranks[j], b)) + lo * es;
        reduce(in + lo * es, mine + lo * es, src, g->size, hi - lo, dt, op);
        WAN_TRY(group_barrier(g, OP_ALLREDUCE));
        for (int j = 0; j < g->size; j++) {
            if (j == g->rank) continue;
            slice_of(m, g->size, j, unit, &lo, &hi);
            memcpy(in + lo * es, scratch_of(sc, g->ranks[j], b) + lo * es, (hi - lo) * es);
        }
    }
    /* nobody may reuse its scratch (next call, maybe in another group) before all read it */
    return group_barrier(g, OP_ALLREDUCE);
}

static int shm_reduce_scatter(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt) {
    WAN_TRY(begin(g, OP_REDUCE_SCATTER, n, dt, 0, -1));
    shm_comm *sc = impl_of(g);
    size_t es = wan_dtype_size(dt);
    if (g->size == 1) {
        if (recv != send) memmove(recv, send, n * es);
        return 0;
    }
    if (n == 0) return 0;
    /* a round carries `per` elements for each destination member */
    size_t per = sc->h->chunk / es / (size_t)g->size;
    if (per > LINE / es) per = per / (LINE / es) * (LINE / es);
    const void *src[1024];
    const unsigned char *in = send;
    for (size_t off = 0, r = 0; off < n; off += per, r++) {
        int b = (int)(r & 1);
        size_t m = n - off < per ? n - off : per;
        unsigned char *mine = scratch_of(sc, g->comm->rank, b);
        for (int d = 0; d < g->size; d++) memcpy(mine + (size_t)d * per * es, in + ((size_t)d * n + off) * es, m * es);
        WAN_TRY(group_barrier(g, OP_REDUCE_SCATTER));
        if (r == 0) WAN_TRY(check_call(g, OP_REDUCE_SCATTER));
        for (int j = 0; j < g->size; j++) src[j] = scratch_of(sc, g->ranks[j], b) + (size_t)g->rank * per * es;
        reduce((unsigned char *)recv + off * es, NULL, src, g->size, m, dt, WAN_RED_SUM);
    }
    return group_barrier(g, OP_REDUCE_SCATTER);
}

static int shm_allgather(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt) {
    WAN_TRY(begin(g, OP_ALLGATHER, n, dt, 0, -1));
    shm_comm *sc = impl_of(g);
    size_t es = wan_dtype_size(dt), per_round = sc->h->chunk / es;
    unsigned char *out = recv;
    const unsigned char *in = send;
    if (out + (size_t)g->rank * n * es != in) memmove(out + (size_t)g->rank * n * es, in, n * es);
    /* from here on, my own part is in place: read it there */
    in = out + (size_t)g->rank * n * es;
    if (g->size == 1 || n == 0) return 0;
    for (size_t off = 0, r = 0; off < n; off += per_round, r++) {
        int b = (int)(r & 1);
        size_t m = n - off < per_round ? n - off : per_round;
        memcpy(scratch_of(sc, g->comm->rank, b), in + off * es, m * es);
        WAN_TRY(group_barrier(g, OP_ALLGATHER));
        if (r == 0) WAN_TRY(check_call(g, OP_ALLGATHER));
        for (int j = 0; j < g->size; j++)
            if (j != g->rank) memcpy(out + ((size_t)j * n + off) * es, scratch_of(sc, g->ranks[j], b), m * es);
    }
    return group_barrier(g, OP_ALLGATHER);
}

static int shm_broadcast(wan_group *g, void *buf, size_t n, wan_dtype dt, int root) {
    WAN_TRY(begin(g, OP_BROADCAST, n, dt, root, -1));
    shm_comm *sc = impl_of(g);
    if (g->size == 1 || n == 0) return 0;
    size_t es = wan_dtype_size(dt), per_round = sc->h->chunk / es;
    unsigned char *p = buf;
    for (size_t off = 0, r = 0; off < n; off += per_round, r++) {
        int b = (int)(r & 1);
        size_t m = n - off < per_round ? n - off : per_round;
        if (g->rank == root) memcpy(scratch_of(sc, g->comm->rank, b), p + off * es, m * es);
        WAN_TRY(group_barrier(g, OP_BROADCAST));
        if (r == 0) WAN_TRY(check_call(g, OP_BROADCAST));
        if (g->rank != root) memcpy(p + off * es, scratch_of(sc, g->ranks[root], b), m * es);
    }
    return group_barrier(g, OP_BROADCAST);
}

/* Per round: everyone copies its part into its scratch; the root sums them in member order
 * (its own read in place) into its buffer. */
static int shm_reduce(wan_group *g, void *buf, size_t n, wan_dtype dt, int root) {
    WAN_TRY(begin(g, OP_REDUCE, n, dt, root, -1));
    shm_comm *sc = impl_of(g);
    if (g->size == 1 || n == 0) return 0;
    size_t es = wan_dtype_size(dt), per_round = sc->h->chunk / es;
    const void *src[1024];
    unsigned char *p = buf;
    for (size_t off = 0, r = 0; off < n; off += per_round, r++) {
        int b = (int)(r & 1);
        size_t m = n - off < per_round ? n - off : per_round;
        if (g->rank != root) memcpy(scratch_of(sc, g->comm->rank, b), p + off * es, m * es);
        WAN_TRY(group_barrier(g, OP_REDUCE));
        if (r == 0) WAN_TRY(check_call(g, OP_REDUCE));
        if (g->rank == root) {
            for (int j = 0; j < g->size; j++) src[j] = j == root ? p + off * es : scratch_of(sc, g->ranks[j], b);
            reduce(p + off * es, NULL, src, g->size, m, dt, WAN_RED_SUM);
        }
    }
    return group_barrier(g, OP_REDUCE);
}

static int shm_sendrecv(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt) {
    WAN_TRY(begin(g, OP_SENDRECV, n, dt, 0, to));
    shm_comm *sc = impl_of(g);
    size_t es = wan_dtype_size(dt), per_round = sc->h->chunk / es;
    if (g->size == 1) {
        if (recv != send) memmove(recv, send, n * es);
        return 0;
    }
    if (n == 0) return 0;
    shm_group *sg = g->impl;
    const unsigned char *in = send;
    unsigned char *out = recv;
    for (size_t off = 0, r = 0; off < n; off += per_round, r++) {
        int b = (int)(r & 1);
        size_t m = n - off < per_round ? n - off : per_round;
        memcpy(scratch_of(sc, g->comm->rank, b), in + off * es, m * es);
        WAN_TRY(group_barrier(g, OP_SENDRECV));
        if (r == 0) {
            WAN_TRY(check_call(g, OP_SENDRECV));
            if (sg->states[from].call_to != g->rank)
                return comm_fail(g, true, OP_SENDRECV,
                                 "member %d receives from member %d, but member %d sends to member %d", g->rank, from,
                                 from, sg->states[from].call_to);
        }
        memcpy(out + off * es, scratch_of(sc, g->ranks[from], b), m * es);
    }
    return group_barrier(g, OP_SENDRECV);
}

/* Point to point through the sender's scratch buffers: chunk k goes to buffer k % 2; the
 * sender waits for the receiver to take chunk k - 2 before reusing its buffer, and for the
 * last chunk before returning. */
static int shm_send(wan_group *g, const void *buf, size_t n, wan_dtype dt, int peer) {
    WAN_TRY(begin(g, OP_SEND, n, dt, 0, peer));
    shm_comm *sc = impl_of(g);
    if (peer < 0 || peer >= g->size || peer == g->rank)
        return wan_fail(WAN_ERR_USAGE, "send on %s[%d]: peer %d is not another member of %d", g->name, g->index, peer,
                        g->size);
    size_t bytes = n * wan_dtype_size(dt), chunk = sc->h->chunk;
    if (bytes == 0) return 0;
    rank_slot *me = &sc->slots[g->comm->rank];
    int dest = g->ranks[peer];
    uint32_t base = atomic_load(&me->p2p_posted);
    uint32_t nchunks = (uint32_t)((bytes + chunk - 1) / chunk);
    me->p2p_base = base;
    me->p2p_bytes = bytes;
    atomic_store(&me->p2p_announce, (uint64_t)(dest + 1) << 32 | ++sc->sent_to[dest]);
    const unsigned char *in = buf;
    for (uint32_t k = 0; k < nchunks; k++) {
        /* buffer k % 2 is free once chunk k - 2 was taken */
        for (uint32_t t; k >= 2 && (t = atomic_load(&me->p2p_taken)) - base < k - 1;)
            WAN_TRY(wait_change(g, OP_SEND, &me->p2p_taken, &me->p2p_taken_sleepers, t, peer, 0));
        size_t off = (size_t)k * chunk, m = bytes - off < chunk ? bytes - off : chunk;
        memcpy(scratch_of(sc, g->comm->rank, (int)(k & 1)), in + off, m);
        atomic_store(&me->p2p_posted, base + k + 1);
        wake(&me->p2p_posted, &me->p2p_posted_sleepers);
    }
    for (uint32_t t; (t = atomic_load(&me->p2p_taken)) - base < nchunks;)
        WAN_TRY(wait_change(g, OP_SEND, &me->p2p_taken, &me->p2p_taken_sleepers, t, peer, 0));
    return 0;
}

static int shm_recv(wan_group *g, void *buf, size_t n, wan_dtype dt, int peer) {
    WAN_TRY(begin(g, OP_RECV, n, dt, 0, peer));
    shm_comm *sc = impl_of(g);
    if (peer < 0 || peer >= g->size || peer == g->rank)
        return wan_fail(WAN_ERR_USAGE, "recv on %s[%d]: peer %d is not another member of %d", g->name, g->index, peer,
                        g->size);
    size_t bytes = n * wan_dtype_size(dt), chunk = sc->h->chunk;
    if (bytes == 0) return 0;
    int src = g->ranks[peer];
    rank_slot *from = &sc->slots[src];
    uint64_t want = (uint64_t)(g->comm->rank + 1) << 32 | (sc->recvd_from[src] + 1);
    /* the sender announces before posting its first chunk: wait on `posted` for both */
    for (uint32_t p; (p = atomic_load(&from->p2p_posted)), atomic_load(&from->p2p_announce) != want;)
        WAN_TRY(wait_change(g, OP_RECV, &from->p2p_posted, &from->p2p_posted_sleepers, p, peer, 0));
    sc->recvd_from[src]++;
    uint32_t base = from->p2p_base;
    if (from->p2p_bytes != bytes)
        return comm_fail(g, true, OP_RECV, "member %d sends %llu bytes, member %d expects %zu", peer,
                         (unsigned long long)from->p2p_bytes, g->rank, bytes);
    uint32_t nchunks = (uint32_t)((bytes + chunk - 1) / chunk);
    unsigned char *out = buf;
    for (uint32_t k = 0; k < nchunks; k++) {
        for (uint32_t p; (p = atomic_load(&from->p2p_posted)) - base < k + 1;)
            WAN_TRY(wait_change(g, OP_RECV, &from->p2p_posted, &from->p2p_posted_sleepers, p, peer, 0));
        size_t off = (size_t)k * chunk, m = bytes - off < chunk ? bytes - off : chunk;
        memcpy(out + off, scratch_of(sc, src, (int)(k & 1)), m);
        atomic_store(&from->p2p_taken, base + k + 1);
        wake(&from->p2p_taken, &from->p2p_taken_sleepers);
    }
    return 0;
}

static int shm_barrier(wan_group *g) {
    WAN_TRY(begin(g, OP_BARRIER, 0, WAN_F32, 0, -1));
    if (g->size == 1) return 0;
    return group_barrier(g, OP_BARRIER);
}

/* ---- groups ---- */

static group_hdr *group_at(shm_comm *sc, int i) {
    return (group_hdr *)((unsigned char *)sc->h + sc->h->groups_off + (size_t)i * sc->h->group_stride);
}
static int *group_members(shm_comm *sc, group_hdr *gh) {
    (void)sc;
    return (int *)((unsigned char *)gh + align_up(sizeof(group_hdr), LINE));
}
static member_state *group_states(shm_comm *sc, group_hdr *gh) {
    return (member_state *)((unsigned char *)group_members(sc, gh) + align_up((size_t)sc->h->world * sizeof(int), LINE));
}

static void list_ranks(char *buf, size_t cap, const int *r, int n) {
    size_t len = 0;
    buf[0] = 0;
    for (int i = 0; i < n && len + 16 < cap; i++) len += (size_t)snprintf(buf + len, cap - len, "%s%d", i ? "," : "", r[i]);
}

static int shm_make_group(wan_comm *c, wan_group *g, const char *name, int index, const int *ranks, int size) {
    shm_comm *sc = c->impl;
    WAN_TRY(wan_group_init(g, c, name, index, ranks, size));
    if (g->rank < 0) return 0; /* not a member: the handle stays unusable */
    shm_group *sg = calloc(1, sizeof *sg);
    if (!sg) return wan_fail(WAN_ERR_RUNTIME, "make_group: out of memory");
    sg->next = sc->groups;
    sc->groups = sg;
    g->impl = sg;
    if (size == 1) return 0;
    WAN_TRY(check_abort(g, OP_MAKE_GROUP));

    /* find the entry a fellow member made, or make it */
    double deadline = wan_now() + timeout_of(g);
    while (atomic_flag_test_and_set(&sc->h->group_lock)) {
        if (wan_now() > deadline) return comm_fail(g, true, OP_MAKE_GROUP, "the group table stayed locked");
        sched_yield();
    }
    group_hdr *found = NULL, *free_entry = NULL;
    for (int i = 0; i < sc->h->max_groups && !found; i++) {
        group_hdr *gh = group_at(sc, i);
        if (!atomic_load(&gh->state)) {
            if (!free_entry) free_entry = gh;
        } else if (gh->index == index && !strcmp(gh->name, g->name))
            found = gh;
    }
    int rc = 0;
    if (found) {
        if (found->size != size || memcmp(group_members(sc, found), ranks, (size_t)size * sizeof(int))) {
            char a[256], b[256];
            list_ranks(a, sizeof a, ranks, size);
            list_ranks(b, sizeof b, group_members(sc, found), found->size);
            rc = comm_fail(g, true, OP_MAKE_GROUP, "rank %d lists the members {%s}, but another member listed {%s}",
                           c->rank, a, b);
        }
    } else if (!free_entry) {
        rc = comm_fail(g, true, OP_MAKE_GROUP, "the group table is full (%d groups)", sc->h->max_groups);
    } else {
        found = free_entry;
        snprintf(found->name, sizeof found->name, "%s", g->name);
        found->index = index;
        found->size = size;
        memcpy(group_members(sc, found), ranks, (size_t)size * sizeof(int));
        atomic_store(&found->state, 1);
    }
    atomic_flag_clear(&sc->h->group_lock);
    if (rc) return rc;
    sg->gh = found;
    sg->members = group_members(sc, found);
    sg->states = group_states(sc, found);
    /* every member made it (and the entry is complete) before anyone uses it */
    return group_barrier(g, OP_MAKE_GROUP);
}

static void shm_destroy(wan_comm *c) {
    if (!c) return;
    shm_comm *sc = c->impl;
    if (sc) {
        for (shm_group *sg = sc->groups, *next; sg; sg = next) {
            next = sg->next;
            free(sg);
        }
        if (sc->h) munmap(sc->h, sc->map_bytes);
        free(sc->sent_to);
        free(sc->recvd_from);
        free(sc);
    }
    free(c);
}

static void shm_abort(wan_comm *c, const char *why) {
    shm_comm *sc = c->impl;
    if (!sc || !sc->h) return;
    poison(sc, why);
    publish_abort(sc, c->rank, why);
}

static const wan_comm_ops shm_ops = {
    .allreduce = shm_allreduce,
    .reduce_scatter = shm_reduce_scatter,
    .allgather = shm_allgather,
    .broadcast = shm_broadcast,
    .reduce = shm_reduce,
    .sendrecv = shm_sendrecv,
    .send = shm_send,
    .recv = shm_recv,
    .barrier = shm_barrier,
    .make_group = shm_make_group,
    .destroy = shm_destroy,
    .abort = shm_abort,
};

/* ---- creation ---- */

/* Scratch bytes per buffer: WAN_SHM_CHUNK_KB (tests use small ones to force many rounds). */
static size_t chunk_bytes(void) {
    const char *e = getenv("WAN_SHM_CHUNK_KB");
    if (e && *e) {
        char *end;
        long kb = strtol(e, &end, 10);
        if (!*end && kb >= 1 && kb <= 1 << 20) return (size_t)kb * 1024;
        wan_warn("WAN_SHM_CHUNK_KB=%s: expected 1..1048576; using %u KiB", e, DEFAULT_CHUNK / 1024);
    }
    return DEFAULT_CHUNK;
}

static void layout(shm_header *h, int world, size_t chunk) {
    h->world = world;
    /* a reduce-scatter round needs a few cache lines per member */
    if (chunk < (size_t)world * 4 * LINE) chunk = (size_t)world * 4 * LINE;
    h->chunk = align_up(chunk, LINE);
    h->max_groups = 8 * world + 16;
    h->group_stride = align_up(sizeof(group_hdr), LINE) + align_up((size_t)world * sizeof(int), LINE) +
                      (size_t)world * sizeof(member_state);
    h->slots_off = align_up(sizeof(shm_header), LINE);
    h->groups_off = align_up(h->slots_off + (size_t)world * sizeof(rank_slot), LINE);
    h->scratch_off = align_up(h->groups_off + (size_t)h->max_groups * h->group_stride, 4096);
    h->total_bytes = h->scratch_off + (size_t)world * 2 * chunk;
}

/* Rank 0 makes the segment (its name goes through the key-value store). */
static int create_segment(wan_bootstrap *b, shm_comm *sc, int *fd) {
    static int serial;
    char job[48];
    snprintf(job, sizeof job, "%.40s", b->job_id);
    for (char *p = job; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9'))) *p = '_';
    snprintf(sc->name, sizeof sc->name, "/wan-%s-%d-%d", job, (int)getpid(), serial++);
    shm_header tmp = {0};
    layout(&tmp, b->size, chunk_bytes());
    *fd = shm_open(sc->name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (*fd < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "shm_open(%s)", sc->name);
    /* reserve the pages now: a full /dev/shm is an error here, not a SIGBUS later */
    int e = posix_fallocate(*fd, 0, (off_t)tmp.total_bytes);
    if (e) {
        errno = e;
        return wan_fail_errno(WAN_ERR_RUNTIME,
                              "reserving %.1f MiB of shared memory for %d ranks in /dev/shm (%s); free space there "
                              "or lower WAN_SHM_CHUNK_KB (now %zu)",
                              (double)tmp.total_bytes / (1 << 20), b->size, sc->name, tmp.chunk / 1024);
    }
    sc->map_bytes = tmp.total_bytes;
    void *m = mmap(NULL, sc->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (m == MAP_FAILED) return wan_fail_errno(WAN_ERR_RUNTIME, "mmap of %s", sc->name);
    sc->h = m;
    *sc->h = tmp;
    atomic_flag_clear(&sc->h->group_lock);
    sc->h->magic = SHM_MAGIC;
    return 0;
}

static int open_segment(wan_bootstrap *b, shm_comm *sc, int *fd) {
    *fd = shm_open(sc->name, O_RDWR, 0);
    if (*fd < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "shm_open(%s) published by rank 0", sc->name);
    struct stat st;
    if (fstat(*fd, &st)) return wan_fail_errno(WAN_ERR_RUNTIME, "fstat(%s)", sc->name);
    sc->map_bytes = (size_t)st.st_size;
    if (sc->map_bytes < sizeof(shm_header))
        return wan_fail(WAN_ERR_RUNTIME, "shared memory %s: %zu bytes, too small for a header", sc->name, sc->map_bytes);
    void *m = mmap(NULL, sc->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, *fd, 0);
    if (m == MAP_FAILED) return wan_fail_errno(WAN_ERR_RUNTIME, "mmap of %s", sc->name);
    sc->h = m;
    if (sc->h->magic != SHM_MAGIC || sc->h->world != b->size || sc->h->total_bytes != sc->map_bytes)
        return wan_fail(WAN_ERR_RUNTIME, "shared memory %s: not a segment for %d ranks (world %d)", sc->name, b->size,
                        sc->h->world);
    return 0;
}

static int create_comm(wan_bootstrap *b, int timeout_s, wan_comm *c, shm_comm *sc) {
    static int serial;
    char key[32];
    snprintf(key, sizeof key, "wan-shm-%d", serial++);
    int fd = -1, rc;
    if (b->rank == 0) {
        rc = create_segment(b, sc, &fd);
        /* publish even a failure (an empty name), so the others do not wait for nothing */
        char blob[64] = {0};
        if (!rc) snprintf(blob, sizeof blob, "%s", sc->name);
        int prc = wan_bootstrap_put(b, key, blob, sizeof blob);
        if (!rc) rc = prc;
        int frc = wan_bootstrap_fence(b);
        if (!rc) rc = frc;
    } else {
        char blob[64];
        rc = wan_bootstrap_fence(b);
        if (!rc) rc = wan_bootstrap_get(b, key, blob, sizeof blob);
        if (!rc && !blob[0]) rc = wan_fail(WAN_ERR_RUNTIME, "rank 0 could not create the shared memory segment");
        if (!rc) {
            memcpy(sc->name, blob, sizeof sc->name);
            sc->name[sizeof sc->name - 1] = 0;
            rc = open_segment(b, sc, &fd);
        }
    }
    if (fd >= 0) close(fd);
    if (rc) return rc;

    shm_header *h = sc->h;
    sc->slots = (rank_slot *)((unsigned char *)h + h->slots_off);
    sc->scratch = (unsigned char *)h + h->scratch_off;
    atomic_store(&sc->slots[b->rank].pid, (int)getpid());
    /* the last to map it unlinks the name: from now on a crash leaves nothing behind */
    if (atomic_fetch_add(&h->attached, 1) + 1 == b->size) shm_unlink(sc->name);
    c->rank = b->rank;
    c->size = b->size;
    c->timeout_s = timeout_s > 0 ? timeout_s : DEFAULT_TIMEOUT_S;
    int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    sc->spin_s = b->size <= ncpu ? 50e-6 : 5e-6; /* spinning on an oversubscribed machine steals the CPU */
    int all[1024];
    if (b->size > 1024) return wan_fail(WAN_ERR_USAGE, "the CPU transport supports at most 1024 ranks");
    for (int i = 0; i < b->size; i++) all[i] = i;
    /* the world group's first barrier is where every rank has mapped the segment */
    return shm_make_group(c, &c->world, "world", 0, all, b->size);
}

int wan_comm_shm_create(wan_bootstrap *b, int timeout_s, wan_comm **out) {
    *out = NULL;
    if (b->local_size != b->size)
        return wan_fail(WAN_ERR_USAGE,
                        "the CPU transport needs all ranks on one node, but this node has %d of the %d ranks "
                        "(use the NCCL transport, train.device = \"cuda\", or one node)",
                        b->local_size, b->size);
    wan_comm *c = calloc(1, sizeof *c);
    shm_comm *sc = calloc(1, sizeof *sc);
    if (c) c->impl = sc;
    if (sc) {
        sc->sent_to = calloc((size_t)b->size, sizeof *sc->sent_to);
        sc->recvd_from = calloc((size_t)b->size, sizeof *sc->recvd_from);
    }
    if (!c || !sc || !sc->sent_to || !sc->recvd_from) {
        shm_destroy(c);
        if (!c) free(sc);
        return wan_fail(WAN_ERR_RUNTIME, "comm: out of memory");
    }
    c->ops = &shm_ops;
    int rc = create_comm(b, timeout_s, c, sc);
    if (rc) {
        /* never leave the name behind (harmless if already unlinked) */
        if (sc->name[0]) shm_unlink(sc->name);
        shm_destroy(c);
        return wan_error_context(rc, "creating the CPU transport for %d ranks", b->size);
    }
    *out = c;
    return 0;
}
