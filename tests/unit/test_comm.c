/* The communication wrappers (byte accounting, groups of one, argument checks) on a mock
 * transport, and the CPU transport's failure handling across forked ranks: mismatched calls,
 * mismatched groups, abort, timeout naming the missing peer, poisoning, no leftovers in
 * /dev/shm. (Every collective on many shapes: tests/tools/comm_check via test_comm_local.sh.) */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bootstrap.h"
#include "comm.h"
#include "error.h"
#include "log.h"
#include "test.h"

/* ---- a mock transport that counts calls ---- */

static int mock_calls, mock_fail;
static int m_allreduce(wan_group *g, void *b, size_t n, wan_dtype dt, wan_redop op) {
    (void)g, (void)b, (void)n, (void)dt, (void)op;
    mock_calls++;
    return mock_fail ? wan_fail(WAN_ERR_RUNTIME, "mock failure") : 0;
}
static int m_rs(wan_group *g, void *r, const void *s, size_t n, wan_dtype dt) {
    (void)g, (void)r, (void)s, (void)n, (void)dt;
    mock_calls++;
    return 0;
}
static int m_bcast(wan_group *g, void *b, size_t n, wan_dtype dt, int root) {
    (void)g, (void)b, (void)n, (void)dt, (void)root;
    mock_calls++;
    return 0;
}
static int m_sendrecv(wan_group *g, const void *s, int to, void *r, int from, size_t n, wan_dtype dt) {
    (void)g, (void)s, (void)to, (void)r, (void)from, (void)n, (void)dt;
    mock_calls++;
    return 0;
}
static int m_p2p(wan_group *g, const void *b, size_t n, wan_dtype dt, int peer) {
    (void)g, (void)b, (void)n, (void)dt, (void)peer;
    mock_calls++;
    return 0;
}
static int m_recv(wan_group *g, void *b, size_t n, wan_dtype dt, int peer) { return m_p2p(g, b, n, dt, peer); }
static int m_barrier(wan_group *g) {
    (void)g;
    mock_calls++;
    return 0;
}
static const wan_comm_ops mock_ops = {.allreduce = m_allreduce, .reduce_scatter = m_rs, .allgather = m_rs,
                                      .broadcast = m_bcast, .reduce = m_bcast, .sendrecv = m_sendrecv,
                                      .send = m_p2p, .recv = m_recv, .barrier = m_barrier};

static wan_comm mock_comm = {.ops = &mock_ops, .rank = 5, .size = 8};

/* The same with the optional asynchronous sendrecv, wait and flush. */
static uint64_t started_id, waited_id;
static int starts, waits, flushes;
static int m_start(wan_group *g, const void *s, int to, void *r, int from, size_t n, wan_dtype dt, uint64_t *req) {
    (void)g, (void)s, (void)to, (void)r, (void)from, (void)n, (void)dt;
    starts++;
    *req = ++started_id + 100;
    return 0;
}
static int m_wait(wan_group *g, uint64_t req) {
    (void)g;
    waits++;
    waited_id = req;
    return 0;
}
static int m_flush(wan_comm *c) {
    (void)c;
    flushes++;
    return 0;
}
static const wan_comm_ops async_ops = {.allreduce = m_allreduce, .reduce_scatter = m_rs, .allgather = m_rs,
                                       .broadcast = m_bcast, .reduce = m_bcast, .sendrecv = m_sendrecv, .send = m_p2p,
                                       .recv = m_recv, .barrier = m_barrier, .sendrecv_start = m_start,
                                       .wait = m_wait, .flush = m_flush};
static wan_comm async_comm = {.ops = &async_ops, .rank = 5, .size = 8};

static void mock_group(wan_group *g, int size, int rank) {
    memset(g, 0, sizeof *g);
    g->comm = &mock_comm;
    snprintf(g->name, sizeof g->name, "tp");
    g->index = 1, g->size = size, g->rank = rank;
}

static void test_wrappers_bytes(void) {
    wan_group g;
    float buf[64];
    mock_group(&g, 4, 2);
    mock_calls = 0;
    CHECK(wan_allreduce(&g, buf, 10, WAN_F32, WAN_RED_SUM) == 0);
    CHECK(g.bytes_sent == 2 * 3 * 40 / 4); /* 60 */
    CHECK(wan_allreduce(&g, buf, 10, WAN_BF16, WAN_RED_SUM) == 0);
    CHECK(g.bytes_sent == 60 + 30);
    g.bytes_sent = 0;
    CHECK(wan_reduce_scatter(&g, buf, buf + 8, 8, WAN_F32) == 0);
    CHECK(g.bytes_sent == 3 * 32);
    g.bytes_sent = 0;
    CHECK(wan_allgather(&g, buf, buf + 16, 4, WAN_F32) == 0);
    CHECK(g.bytes_sent == 3 * 16);
    /* broadcast: the root's ring predecessor sends nothing */
    g.bytes_sent = 0;
    CHECK(wan_broadcast(&g, buf, 5, WAN_F32, 3) == 0); /* member 2 precedes root 3 */
    CHECK(g.bytes_sent == 0);
    CHECK(wan_broadcast(&g, buf, 5, WAN_F32, 2) == 0);
    CHECK(g.bytes_sent == 20);
    /* reduce: everyone but the root sends its buffer */
    g.bytes_sent = 0;
    CHECK(wan_reduce(&g, buf, 5, WAN_F32, 2) == 0); /* this member (2) is the root */
    CHECK(g.bytes_sent == 0);
    CHECK(wan_reduce(&g, buf, 5, WAN_BF16, 0) == 0);
    CHECK(g.bytes_sent == 10);
    CHECK(wan_reduce(&g, buf, 5, WAN_F32, 4) == WAN_ERR_USAGE); /* no member 4 */
    g.bytes_sent = 0;
    CHECK(wan_sendrecv(&g, buf, 3, buf + 8, 1, 6, WAN_F32) == 0);
    CHECK(g.bytes_sent == 24);
    CHECK(wan_send(&g, buf, 6, WAN_BF16, 0) == 0);
    CHECK(g.bytes_sent == 36);
    CHECK(wan_recv(&g, buf, 6, WAN_BF16, 0) == 0);
    CHECK(g.bytes_sent == 36);
    CHECK(wan_barrier(&g) == 0);
    CHECK(mock_calls == 12);
    /* a failed call counts nothing */
    mock_fail = 1;
    g.bytes_sent = 0;
    CHECK(wan_allreduce(&g, buf, 10, WAN_F32, WAN_RED_SUM) == WAN_ERR_RUNTIME);
    CHECK(g.bytes_sent == 0);
    mock_fail = 0;
}

/* Started transfers: the transport's start and wait when it has them (bytes counted once, the
 * request waited for once), plain sendrecv when it does not; nothing on a group of one. */
static void test_wrappers_async(void) {
    wan_group g;
    float buf[64] = {0};
    mock_group(&g, 4, 2);
    mock_calls = starts = waits = flushes = 0;
    wan_comm_req req;
    CHECK(wan_sendrecv_start(&g, buf, 3, buf + 32, 1, 8, WAN_F32, &req) == 0);
    CHECK(mock_calls == 1 && !req.started);
    CHECK(wan_comm_wait(&g, &req) == 0);
    CHECK(wan_comm_flush(g.comm) == 0);
    CHECK(g.bytes_sent == 32);

    g.comm = &async_comm;
    g.bytes_sent = 0;
    CHECK(wan_sendrecv_start(&g, buf, 3, buf + 32, 1, 8, WAN_F32, &req) == 0);
    CHECK(starts == 1 && mock_calls == 1 && req.started && g.bytes_sent == 32);
    CHECK(wan_comm_wait(&g, &req) == 0);
    CHECK(waits == 1 && waited_id == req.id && !req.started);
    CHECK(wan_comm_wait(&g, &req) == 0 && waits == 1); /* once */
    CHECK(wan_comm_flush(g.comm) == 0 && flushes == 1);
    CHECK(wan_comm_flush(NULL) == 0);
    /* errors are the wrappers': a bad peer is refused before the transport sees it */
    CHECK(wan_sendrecv_start(&g, buf, 4, buf + 32, 1, 8, WAN_F32, &req) == WAN_ERR_USAGE && !req.started);
    mock_group(&g, 1, 0);
    g.comm = &async_comm;
    CHECK(wan_sendrecv_start(&g, buf, 0, buf, 0, 8, WAN_F32, &req) == 0 && !req.started && starts == 1);
}

static void test_wrappers_skip(void) {
    wan_group g;
    float buf[16];
    mock_group(&g, 1, 0);
    mock_calls = 0;
    CHECK(wan_allreduce(&g, buf, 10, WAN_F32, WAN_RED_SUM) == 0);
    CHECK(wan_broadcast(&g, buf, 10, WAN_F32, 0) == 0);
    CHECK(wan_barrier(&g) == 0);
    CHECK(wan_allgather(&g, buf, buf, 4, WAN_F32) == 0);        /* in place: nothing to do */
    CHECK(wan_reduce_scatter(&g, buf, buf, 4, WAN_F32) == 0);   /* in place */
    CHECK(wan_sendrecv(&g, buf, 0, buf, 0, 4, WAN_F32) == 0);   /* in place */
    CHECK(mock_calls == 0);
    CHECK(wan_allgather(&g, buf, buf + 8, 4, WAN_F32) == 0); /* a copy: the transport does it */
    CHECK(mock_calls == 1);
    CHECK(g.bytes_sent == 0);
    mock_group(&g, 4, 1);
    mock_calls = 0;
    CHECK(wan_allreduce(&g, buf, 0, WAN_F32, WAN_RED_SUM) == 0);
    CHECK(wan_send(&g, buf, 0, WAN_F32, 2) == 0);
    CHECK(mock_calls == 0);
}

static void test_wrappers_errors(void) {
    wan_group g;
    float buf[16];
    mock_group(&g, 4, 1);
    CHECK(wan_broadcast(&g, buf, 4, WAN_F32, 4) == WAN_ERR_USAGE);
    CHECKF(strstr(wan_errmsg(), "broadcast on tp[1]") && strstr(wan_errmsg(), "root 4"), "%s", wan_errmsg());
    CHECK(wan_sendrecv(&g, buf, -1, buf, 0, 4, WAN_F32) == WAN_ERR_USAGE);
    CHECK(wan_send(&g, buf, 4, WAN_F32, 1) == WAN_ERR_USAGE);
    CHECKF(strstr(wan_errmsg(), "itself"), "%s", wan_errmsg());
    mock_group(&g, 4, -1);
    CHECK(wan_barrier(&g) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "not a member"), "%s", wan_errmsg());
    wan_comm_abort(&mock_comm, "no abort in the mock"); /* optional op: must not crash */
    wan_comm_abort(NULL, NULL);
}

/* ---- the CPU transport across forked ranks ----
 * run_ranks forks a supervisor (wan_bootstrap_init with nproc) whose ranks run fn and exit
 * with its result; returns the supervisor's exit status. */

typedef int (*rank_fn)(wan_bootstrap *b);

static int run_ranks(int nproc, rank_fn fn) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        wan_bootstrap b;
        if (wan_bootstrap_init(&b, nproc)) {
            wan_error_print("test_comm");
            _exit(90);
        }
        int rc = fn(&b);
        fflush(NULL);
        _exit(rc);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int expect_error(int rc, const char *a, const char *b) {
    if (rc && strstr(wan_errmsg(), a) && (!b || strstr(wan_errmsg(), b))) return 0;
    fprintf(stderr, "  expected an error with '%s' and '%s', got rc %d: %s\n", a, b ? b : "", rc, wan_errmsg());
    return 1;
}

static int r_mismatch(wan_bootstrap *b) {
    wan_comm *c;
    if (wan_comm_shm_create(b, 10, &c)) return 91;
    float x[32] = {0};
    int rc = b->rank == 0 ? wan_allreduce(&c->world, x, 10, WAN_F32, WAN_RED_SUM)
                          : wan_allgather(&c->world, x, x + b->rank * 5, 5, WAN_F32);
    int bad = expect_error(rc, "mismatched calls", "allgather(5 F32");
    /* poisoned: the next call fails at once */
    double t0 = wan_now();
    rc = wan_barrier(&c->world);
    bad += expect_error(rc, "unusable after an earlier error", NULL);
    bad += wan_now() - t0 > 1;
    c->ops->destroy(c);
    return bad;
}

static int r_group_mismatch(wan_bootstrap *b) {
    wan_comm *c;
    if (wan_comm_shm_create(b, 10, &c)) return 91;
    wan_group g;
    int ranks[2] = {b->rank == 0 ? 0 : 1, b->rank == 0 ? 1 : 0};
    int rc = c->ops->make_group(c, &g, "pp", 0, ranks, 2);
    /* one of the two finds the other's entry and complains; the other hears of its abort */
    int bad = expect_error(rc, "make_group on pp[0]", NULL);
    bad += !(strstr(wan_errmsg(), "lists the members {0,1}") || strstr(wan_errmsg(), "lists the members {1,0}"));
    c->ops->destroy(c);
    return bad;
}

static int r_abort(wan_bootstrap *b) {
    wan_comm *c;
    if (wan_comm_shm_create(b, 30, &c)) return 91;
    int bad = 0;
    if (b->rank == 2) {
        wan_comm_abort(c, "disk full writing the checkpoint");
    } else {
        double t0 = wan_now();
        int rc = wan_barrier(&c->world);
        bad += expect_error(rc, "barrier on world[0]: rank 2 aborted: disk full", NULL);
        if (wan_now() - t0 > 2) bad++, fprintf(stderr, "  the abort took %.1f s to arrive\n", wan_now() - t0);
    }
    c->ops->destroy(c);
    return bad;
}

static int r_timeout(wan_bootstrap *b) {
    wan_comm *c;
    if (wan_comm_shm_create(b, 1, &c)) return 91;
    wan_group pair;
    int bad = 0;
    if (c->ops->make_group(c, &pair, "cp", 3, (int[]){0, 1}, 2)) return 92;
    float x[100] = {1};
    if (b->rank == 1) {
        usleep(2500 * 1000); /* hangs past the 1 s timeout, then finds the call failed */
        int rc = wan_allreduce(&pair, x, 100, WAN_F32, WAN_RED_SUM);
        bad += expect_error(rc, "rank 0 aborted", "timed out after 1 s");
    } else {
        double t0 = wan_now();
        int rc = wan_allreduce(&pair, x, 100, WAN_F32, WAN_RED_SUM);
        double took = wan_now() - t0;
        bad += expect_error(rc, "allreduce on cp[3]: timed out after 1 s waiting for member 1 (rank 1", NULL);
        if (took < 0.9 || took > 2) bad++, fprintf(stderr, "  timeout after %.2f s, expected ~1 s\n", took);
    }
    c->ops->destroy(c);
    return bad;
}

static int r_no_leftover(wan_bootstrap *b) {
    wan_comm *c;
    if (wan_comm_shm_create(b, 10, &c)) return 91;
    if (wan_barrier(&c->world)) return 92;
    /* the segment's name is gone as soon as every rank mapped it */
    char prefix[64];
    snprintf(prefix, sizeof prefix, "wan-local_%d-", (int)getppid());
    int found = 0;
    DIR *d = opendir("/dev/shm");
    for (struct dirent *e; d && (e = readdir(d));) found += !strncmp(e->d_name, prefix, strlen(prefix));
    if (d) closedir(d);
    if (found) fprintf(stderr, "  /dev/shm still has %s*\n", prefix);
    c->ops->destroy(c);
    return found ? 1 : 0;
}

/* A size-1 world (no fork) works and copies where asked. */
static void test_single_rank(void) {
    wan_bootstrap b;
    CHECK(wan_bootstrap_init(&b, 1) == 0);
    wan_comm *c = NULL;
    CHECK(wan_comm_shm_create(&b, 5, &c) == 0);
    if (!c) return;
    float a[4] = {1, 2, 3, 4}, r[4] = {0};
    CHECK(wan_allreduce(&c->world, a, 4, WAN_F32, WAN_RED_SUM) == 0);
    CHECK(a[0] == 1 && a[3] == 4);
    CHECK(wan_allgather(&c->world, r, a, 4, WAN_F32) == 0);
    CHECK(r[2] == 3);
    CHECK(wan_send(&c->world, a, 4, WAN_F32, 0) == WAN_ERR_USAGE);
    c->ops->destroy(c);
    wan_bootstrap_finalize(&b);
}

static void test_mismatched_calls(void) { CHECK(run_ranks(2, r_mismatch) == 0); }
static void test_mismatched_groups(void) { CHECK(run_ranks(2, r_group_mismatch) == 0); }
static void test_abort(void) { CHECK(run_ranks(3, r_abort) == 0); }
static void test_timeout(void) { CHECK(run_ranks(2, r_timeout) == 0); }
static void test_no_leftover(void) { CHECK(run_ranks(3, r_no_leftover) == 0); }

int main(void) {
    RUN(test_wrappers_bytes);
    RUN(test_wrappers_async);
    RUN(test_wrappers_skip);
    RUN(test_wrappers_errors);
    RUN(test_single_rank);
    RUN(test_mismatched_calls);
    RUN(test_mismatched_groups);
    RUN(test_abort);
    RUN(test_timeout);
    RUN(test_no_leftover);
    return test_summary();
}
