/* comm_check: every collective of the CPU transport across real processes, checked bit for bit
 * against a reference computed locally in the same fixed member order.
 *
 *   comm_check [--nproc N] [--timeout S] [--big]        all checks; exit 0 when all pass
 *   comm_check ... --kill-rank R --at K                   rank R dies (SIGKILL) at its call K
 *   comm_check ... --hang-rank R --at K                   rank R stops responding at call K
 *   comm_check ... --abort-rank R --at K                  rank R calls wan_comm_abort and exits 1
 *   --ignore-term: ignore SIGTERM, so that the ranks find a dead peer themselves before the
 *   local supervisor (or srun) stops them
 *
 * Started by srun --mpi=pmi2 or with --nproc (local fork). Every member can generate every
 * other member's input (a pure function of seed, test and world rank), so each rank checks
 * its result against the reference without trusting the transport; results are also hashed
 * and the hashes all-gathered, so ranks agree bit for bit. Groups: the world, the world in
 * reverse order, pairs (the last alone when odd), even/odd ranks (non-contiguous), and a
 * scattered group of three. Each rank ends with "rank R: N passed, M failed". */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "bootstrap.h"
#include "comm.h"
#include "error.h"
#include "log.h"
#include "rng.h"

static int passed, failed;
static int fault_rank = -1, fault_at = -1, fault_kind; /* 1 kill, 2 hang, 3 abort */
static int calls;
static wan_comm *comm;

#define EXPECT(cond, ...)                                                                                              \
    do {                                                                                                               \
        if (cond) passed++;                                                                                            \
        else {                                                                                                         \
            failed++;                                                                                                  \
            wan_log(WAN_LOG_ERROR, __VA_ARGS__);                                                                       \
        }                                                                                                              \
    } while (0)

/* Before each collective: the injected fault, if this is the rank and the call. */
static void maybe_fault(void) {
    if (comm->rank != fault_rank || calls++ != fault_at) return;
    if (fault_kind == 1) {
        wan_info("injected fault: killing myself (pid %d)", (int)getpid());
        raise(SIGKILL);
    } else if (fault_kind == 2) {
        wan_info("injected fault: hanging");
        for (;;) pause();
    } else {
        wan_comm_abort(comm, "injected fault: giving up");
        wan_log(WAN_LOG_ERROR, "injected fault: aborted");
        exit(1);
    }
}

/* Input of world rank `wr` for test `t`: normals, some values large so sums round. */
static void input(float *x, size_t n, int t, int wr, int salt) {
    wan_rand_normal_fill(x, n, 1234, WAN_RNG_SYNTH, (uint32_t)t, (uint32_t)(wr * 16 + salt), 0);
    for (size_t i = 0; i < n; i += 7) x[i] *= 1000.0f;
}

static void to_dtype(void *dst, const float *x, size_t n, wan_dtype dt) { wan_convert(dst, dt, x, WAN_F32, n); }

/* Reference reduction in member order, fp32 accumulation, result in dt. */
static void ref_reduce(void *out, wan_group *g, size_t n, size_t off, size_t total, int t, wan_dtype dt, wan_redop op) {
    float *acc = malloc(n * sizeof(float)), *x = malloc(total * sizeof(float));
    void *tmp = malloc(total * 4);
    for (int j = 0; j < g->size; j++) {
        input(x, total, t, g->ranks[j], 0);
        to_dtype(tmp, x, total, dt); /* what member j holds, then back to fp32 exactly */
        wan_convert(x, WAN_F32, tmp, dt, total);
        for (size_t i = 0; i < n; i++) {
            float v = x[off + i];
            if (j == 0) acc[i] = v;
            else if (op == WAN_RED_SUM) acc[i] += v;
            else acc[i] = (v > acc[i] || v != v) ? v : acc[i];
        }
    }
    to_dtype(out, acc, n, dt);
    free(acc), free(x), free(tmp);
}

/* All members hold the same bytes: all-gather the hashes. */
static void check_same(wan_group *g, const void *buf, size_t bytes, const char *what) {
    uint64_t h = XXH64(buf, bytes, 0), *all = calloc((size_t)g->size, sizeof *all);
    maybe_fault();
    int rc = wan_allgather(g, all, &h, 2, WAN_F32);
    int same = !rc;
    for (int j = 0; j < g->size && same; j++) same = all[j] == h;
    EXPECT(same, "%s on %s[%d]: results differ between members%s%s", what, g->name, g->index, rc ? ": " : "",
           rc ? wan_errmsg() : "");
    free(all);
    if (rc) {
        wan_error_print("comm_check");
        exit(1);
    }
}

#define CALL(expr)                                                                                                     \
    do {                                                                                                               \
        maybe_fault();                                                                                                 \
        if (expr) {                                                                                                    \
            wan_error_print("comm_check");                                                                             \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

static void check_group(wan_group *g, size_t n, wan_dtype dt, int t) {
    size_t es = wan_dtype_size(dt), p = (size_t)g->size, me = (size_t)g->rank;
    int wr = g->comm->rank;
    const char *dn = wan_dtype_name(dt);
    float *x = malloc(p * n * sizeof(float));
    unsigned char *buf = malloc(p * n * es), *ref = malloc(p * n * es), *out = malloc(p * n * es);

    /* all-reduce, sum and max */
    for (int op = 0; op < 2; op++) {
        input(x, n, t, wr, 0);
        to_dtype(buf, x, n, dt);
        uint64_t before = g->bytes_sent;
        CALL(wan_allreduce(g, buf, n, dt, (wan_redop)op));
        ref_reduce(ref, g, n, 0, n, t, dt, (wan_redop)op);
        EXPECT(!memcmp(buf, ref, n * es), "allreduce %s %s n=%zu on %s[%d]: differs from the member-order reference",
               op ? "max" : "sum", dn, n, g->name, g->index);
        EXPECT(g->bytes_sent - before == (p > 1 ? 2 * (p - 1) * n * es / p : 0), "allreduce bytes_sent %llu",
               (unsigned long long)(g->bytes_sent - before));
        check_same(g, buf, n * es, "allreduce");
    }
    /* reduce-scatter: member i gets the sum of everyone's chunk i */
    {
        input(x, p * n, t + 1, wr, 0);
        to_dtype(buf, x, p * n, dt);
        uint64_t before = g->bytes_sent;
        CALL(wan_reduce_scatter(g, out, buf, n, dt));
        ref_reduce(ref, g, n, me * n, p * n, t + 1, dt, WAN_RED_SUM);
        EXPECT(!memcmp(out, ref, n * es), "reduce_scatter %s n=%zu on %s[%d]: differs from the reference", dn, n,
               g->name, g->index);
        EXPECT(g->bytes_sent - before == (p - 1) * n * es, "reduce_scatter bytes_sent");
    }
    /* all-gather, into a separate buffer and in place */
    for (int inplace = 0; inplace < 2; inplace++) {
        input(x, n, t + 2, wr, 1);
        memset(out, 0xab, p * n * es);
        void *send = inplace ? out + me * n * es : buf;
        to_dtype(send, x, n, dt);
        CALL(wan_allgather(g, out, send, n, dt));
        for (size_t j = 0; j < p; j++) {
            input(x, n, t + 2, g->ranks[j], 1);
            to_dtype(ref + j * n * es, x, n, dt);
        }
        EXPECT(!memcmp(out, ref, p * n * es), "allgather%s %s n=%zu on %s[%d]: wrong", inplace ? " (in place)" : "",
               dn, n, g->name, g->index);
    }
    /* broadcast from the last member and from member 0 */
    for (int k = 0; k < 2; k++) {
        int root = k ? 0 : g->size - 1;
        input(x, n, t + 3, wr, 2);
        to_dtype(buf, x, n, dt);
        CALL(wan_broadcast(g, buf, n, dt, root));
        input(x, n, t + 3, g->ranks[root], 2);
        to_dtype(ref, x, n, dt);
        EXPECT(!memcmp(buf, ref, n * es), "broadcast from %d %s n=%zu on %s[%d]: wrong", root, dn, n, g->name,
               g->index);
    }
    /* reduce to the last member and to member 0: the root gets the member-order sum, the others
     * keep their input */
    for (int k = 0; k < 2; k++) {
        int root = k ? 0 : g->size - 1;
        input(x, n, t + 6, wr, 0);
        to_dtype(buf, x, n, dt);
        to_dtype(out, x, n, dt);
        uint64_t before = g->bytes_sent;
        CALL(wan_reduce(g, buf, n, dt, root));
        if (g->rank == root) {
            ref_reduce(ref, g, n, 0, n, t + 6, dt, WAN_RED_SUM);
            EXPECT(!memcmp(buf, ref, n * es), "reduce to %d %s n=%zu on %s[%d]: differs from the member-order reference",
                   root, dn, n, g->name, g->index);
        } else
            EXPECT(!memcmp(buf, out, n * es), "reduce to %d %s n=%zu on %s[%d]: a non-root buffer changed", root, dn, n,
                   g->name, g->index);
        EXPECT(g->bytes_sent - before == (p > 1 && g->rank != root ? n * es : 0), "reduce bytes_sent %llu",
               (unsigned long long)(g->bytes_sent - before));
    }
    /* ring shift: send to the next member, receive from the previous one */
    {
        int to = (g->rank + 1) % g->size, from = (g->rank + g->size - 1) % g->size;
        input(x, n, t + 4, wr, 3);
        to_dtype(buf, x, n, dt);
        CALL(wan_sendrecv(g, buf, to, out, from, n, dt));
        input(x, n, t + 4, g->ranks[from], 3);
        to_dtype(ref, x, n, dt);
        EXPECT(!memcmp(out, ref, n * es), "sendrecv %s n=%zu on %s[%d]: wrong", dn, n, g->name, g->index);
    }
    /* point to point: even members send to the next, which receive; then back, twice */
    if (g->size > 1) {
        for (int rep = 0; rep < 2; rep++) {
            int partner = g->rank % 2 == 0 ? g->rank + 1 : g->rank - 1;
            if (partner >= g->size) continue;
            bool sender = (g->rank % 2 == 0) == (rep == 0);
            if (sender) {
                input(x, n, t + 5 + rep, wr, 4);
                to_dtype(buf, x, n, dt);
                CALL(wan_send(g, buf, n, dt, partner));
            } else {
                memset(out, 0, n * es);
                CALL(wan_recv(g, out, n, dt, partner));
                input(x, n, t + 5 + rep, g->ranks[partner], 4);
                to_dtype(ref, x, n, dt);
                EXPECT(!memcmp(out, ref, n * es), "send/recv %s n=%zu on %s[%d]: wrong", dn, n, g->name, g->index);
            }
        }
    }
    CALL(wan_barrier(g));
    free(x), free(buf), free(ref), free(out);
}

static void make(wan_group *g, const char *name, int index, const int *ranks, int n) {
    if (comm->ops->make_group(comm, g, name, index, ranks, n)) {
        wan_error_print("comm_check");
        exit(1);
    }
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"nproc", required_argument, 0, 'n'},  {"timeout", required_argument, 0, 't'},
                                         {"kill-rank", required_argument, 0, 1}, {"hang-rank", required_argument, 0, 2},
                                         {"abort-rank", required_argument, 0, 3}, {"at", required_argument, 0, 4},
                                         {"big", no_argument, 0, 5},             {"ignore-term", no_argument, 0, 6},
                                         {0, 0, 0, 0}};
    int nproc = 1, timeout = 60, c;
    bool big = false;
    while ((c = getopt_long(argc, argv, "n:t:", opts, NULL)) != -1) {
        switch (c) {
        case 'n': nproc = atoi(optarg); break;
        case 't': timeout = atoi(optarg); break;
        case 1: case 2: case 3: fault_kind = c, fault_rank = atoi(optarg); break;
        case 4: fault_at = atoi(optarg); break;
        case 5: big = true; break;
        case 6: signal(SIGTERM, SIG_IGN); break; /* find dead peers without the supervisor's help */
        default: fprintf(stderr, "usage: comm_check [--nproc N] [--timeout S] [--big] [--kill-rank|--hang-rank|--abort-rank R --at K]\n"); return 2;
        }
    }
    wan_bootstrap b;
    int rc = wan_bootstrap_init(&b, nproc);
    if (rc) {
        wan_error_print("comm_check");
        return rc;
    }
    if (wan_comm_shm_create(&b, timeout, &comm)) {
        wan_error_print("comm_check");
        return 1;
    }
    int w = comm->size, r = comm->rank;
    wan_info("comm_check: rank %d of %d (%s, local %d of %d)", r, w,
             b.kind == WAN_BOOT_PMI2 ? "PMI2" : b.kind == WAN_BOOT_LOCAL ? "local" : "single", b.local_rank,
             b.local_size);

    /* the groups, made by their members in the same order everywhere */
    static wan_group rev, pair, parity, tri;
    int ranks[1024], n = 0;
    for (int i = 0; i < w; i++) ranks[i] = w - 1 - i;
    make(&rev, "rev", 0, ranks, w);
    n = 0;
    for (int i = r / 2 * 2; i < w && i < r / 2 * 2 + 2; i++) ranks[n++] = i;
    make(&pair, "pair", r / 2, ranks, n);
    n = 0;
    for (int i = r % 2; i < w; i += 2) ranks[n++] = i;
    make(&parity, "parity", r % 2, ranks, n);
    bool in_tri = w >= 3 && (r == w - 1 || r == 0 || r == 1);
    if (in_tri) make(&tri, "tri", 0, (int[]){w - 1, 0, 1}, 3);

    wan_group *groups[] = {&comm->world, &rev, &pair, &parity, in_tri ? &tri : NULL};
    /* counts: tiny, odd, uneven, and several scratch rounds (tests set a small WAN_SHM_CHUNK_KB) */
    size_t counts[] = {1, 7, 1000, 12345, big ? (size_t)700 * 1000 : 3000};
    wan_dtype dts[] = {WAN_F32, WAN_BF16};
    int t = 0;
    for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
        if (!groups[gi]) continue;
        for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++)
            for (size_t di = 0; di < 2; di++) {
                check_group(groups[gi], counts[ci], dts[di], t);
                t += 10;
            }
    }
    /* a barrier is a barrier: a slow member holds the others back */
    {
        double t0 = wan_now();
        if (r == 0) usleep(200 * 1000);
        CALL(wan_barrier(&comm->world));
        double waited = wan_now() - t0;
        EXPECT(waited >= 0.19, "barrier returned after %.3f s while rank 0 slept 0.2 s", waited);
    }
    printf("rank %d: %d passed, %d failed\n", r, passed, failed);
    fflush(stdout);
    comm->ops->destroy(comm);
    wan_bootstrap_finalize(&b);
    return failed ? 1 : 0;
}
