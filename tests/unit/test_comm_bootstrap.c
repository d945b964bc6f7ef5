/* Bootstrap: the single-rank key-value store, the local fork's key-value exchange, and its
 * supervisor (exit statuses, stopping the others when one fails, forwarding signals), and the
 * refusal of `srun --mpi=none` with several tasks. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bootstrap.h"
#include "error.h"
#include "log.h"
#include "test.h"

typedef int (*rank_fn)(wan_bootstrap *b);

/* Fork a process that becomes the supervisor of nproc ranks running fn; its exit status. */
static pid_t start_ranks(int nproc, rank_fn fn) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        wan_bootstrap b;
        if (wan_bootstrap_init(&b, nproc)) _exit(90);
        int rc = fn(&b);
        fflush(NULL);
        _exit(rc);
    }
    return pid;
}
static int wait_status(pid_t pid) {
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
static int run_ranks(int nproc, rank_fn fn) { return wait_status(start_ranks(nproc, fn)); }

static void test_single_kv(void) {
    wan_bootstrap b;
    CHECK(wan_bootstrap_init(&b, 1) == 0);
    CHECK(b.kind == WAN_BOOT_SINGLE && b.rank == 0 && b.size == 1 && b.local_size == 1);
    CHECK(!strncmp(b.job_id, "local-", 6));
    unsigned char v[1024], w[1024];
    for (int i = 0; i < 1024; i++) v[i] = (unsigned char)(i * 7 + 3);
    CHECK(wan_bootstrap_put(&b, "blob", v, sizeof v) == 0);
    CHECK(wan_bootstrap_fence(&b) == 0);
    CHECK(wan_bootstrap_get(&b, "blob", w, sizeof w) == 0);
    CHECK(!memcmp(v, w, sizeof v));
    CHECK(wan_bootstrap_get(&b, "blob", w, 10) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "holds 1024 bytes, expected 10"), "%s", wan_errmsg());
    CHECK(wan_bootstrap_get(&b, "nothing", w, 10) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "'nothing' not found"), "%s", wan_errmsg());
    CHECK(wan_bootstrap_put(&b, "big", v, 1025) == WAN_ERR_USAGE);
    CHECK(wan_bootstrap_put(&b, "a key", v, 1) == WAN_ERR_USAGE);
    wan_bootstrap_finalize(&b);
}

/* Rank 0 publishes a 1 KiB blob; every rank a key of its own; all check after the fence. */
static int r_kv(wan_bootstrap *b) {
    unsigned char v[1024], w[1024];
    if (b->kind != WAN_BOOT_LOCAL || b->size != 3 || b->local_size != 3 || b->local_rank != b->rank) return 10;
    for (int i = 0; i < 1024; i++) v[i] = (unsigned char)(i ^ 0x5a);
    if (b->rank == 0 && wan_bootstrap_put(b, "blob", v, sizeof v)) return 11;
    char key[16];
    snprintf(key, sizeof key, "r%d", b->rank);
    int mine = 1000 + b->rank, theirs = 0;
    if (wan_bootstrap_put(b, key, &mine, sizeof mine)) return 12;
    if (wan_bootstrap_fence(b)) return 13;
    if (wan_bootstrap_get(b, "blob", w, sizeof w) || memcmp(v, w, sizeof v)) return 14;
    snprintf(key, sizeof key, "r%d", (b->rank + 1) % b->size);
    if (wan_bootstrap_get(b, key, &theirs, sizeof theirs) || theirs != 1000 + (b->rank + 1) % b->size) return 15;
    /* a second round of the fence works too */
    if (wan_bootstrap_fence(b) || wan_bootstrap_fence(b)) return 16;
    wan_bootstrap_finalize(b);
    return 0;
}
static void test_local_kv(void) { CHECK(run_ranks(3, r_kv) == 0); }

static int r_all_75(wan_bootstrap *b) { return b->rank >= 0 ? 75 : 0; }
static void test_common_requeue_status(void) { CHECK(run_ranks(3, r_all_75) == 75); }

static int r_mixed(wan_bootstrap *b) { return b->rank == 1 ? 75 : 0; }
static void test_mixed_status_fails(void) { CHECK(run_ranks(2, r_mixed) == 1); }

/* One rank fails at once; the others would sleep 60 s: the supervisor must stop them. */
static int r_one_fails(wan_bootstrap *b) {
    if (b->rank == 1) return 3;
    sleep(60);
    return 0;
}
static void test_failure_stops_others(void) {
    double t0 = wan_now();
    CHECK(run_ranks(4, r_one_fails) == 3);
    CHECKF(wan_now() - t0 < 5, "took %.1f s", wan_now() - t0);
}

static int r_killed(wan_bootstrap *b) {
    if (b->rank == 2) raise(SIGKILL);
    sleep(60);
    return 0;
}
static void test_killed_rank(void) {
    double t0 = wan_now();
    CHECK(run_ranks(3, r_killed) == 128 + SIGKILL);
    CHECKF(wan_now() - t0 < 5, "took %.1f s", wan_now() - t0);
}

/* A rank that ignores SIGTERM gets SIGKILL after the grace period (WAN_KILL_GRACE_S). */
static int r_stubborn(wan_bootstrap *b) {
    if (b->rank == 1) signal(SIGTERM, SIG_IGN);
    if (wan_bootstrap_fence(b)) return 10; /* rank 1 ignores SIGTERM before rank 0 fails */
    if (b->rank == 0) return 1;
    sleep(60);
    return 0;
}
static void test_grace_then_kill(void) {
    setenv("WAN_KILL_GRACE_S", "1", 1);
    double t0 = wan_now();
    CHECK(run_ranks(2, r_stubborn) == 1);
    double took = wan_now() - t0;
    CHECKF(took >= 0.9 && took < 4, "took %.1f s", took);
    unsetenv("WAN_KILL_GRACE_S");
}

/* SIGUSR1 to the supervisor reaches every rank (which then "checkpoints" and exits 75). */
static int ready_pipe[2];
static volatile sig_atomic_t got_usr1;
static void on_usr1(int sig) {
    (void)sig;
    got_usr1 = 1;
}
static int r_signal(wan_bootstrap *b) {
    signal(SIGUSR1, on_usr1);
    char c = (char)('0' + b->rank);
    if (write(ready_pipe[1], &c, 1) != 1) return 20;
    for (int i = 0; i < 1000 && !got_usr1; i++) usleep(10 * 1000);
    return got_usr1 ? 75 : 21;
}
static void test_signal_forwarding(void) {
    if (pipe(ready_pipe)) {
        CHECK(0);
        return;
    }
    pid_t sup = start_ranks(3, r_signal);
    char buf[3];
    size_t got = 0;
    while (got < 3) {
        ssize_t n = read(ready_pipe[0], buf + got, 3 - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    CHECK(got == 3);
    kill(sup, SIGUSR1);
    CHECK(wait_status(sup) == 75);
    close(ready_pipe[0]), close(ready_pipe[1]);
}

/* srun --mpi=none: several tasks, no PMI_FD. */
static void test_srun_without_pmi2_is_refused(void) {
    setenv("SLURM_STEP_ID", "0", 1);
    setenv("SLURM_STEP_NUM_TASKS", "2", 1);
    setenv("SLURM_NTASKS", "2", 1);
    unsetenv("PMI_FD");
    wan_bootstrap b;
    CHECK(wan_bootstrap_init(&b, 1) == WAN_ERR_USAGE);
    CHECKF(strstr(wan_errmsg(), "--mpi=pmi2"), "%s", wan_errmsg());
    /* a batch script (SLURM_NTASKS but no step) is a single rank */
    unsetenv("SLURM_STEP_ID");
    unsetenv("SLURM_STEP_NUM_TASKS");
    CHECK(wan_bootstrap_init(&b, 1) == 0);
    CHECK(b.kind == WAN_BOOT_SINGLE);
    wan_bootstrap_finalize(&b);
    unsetenv("SLURM_NTASKS");
}

int main(void) {
    RUN(test_single_kv);
    RUN(test_local_kv);
    RUN(test_common_requeue_status);
    RUN(test_mixed_status_fails);
    RUN(test_failure_stops_others);
    RUN(test_killed_rank);
    RUN(test_grace_then_kill);
    RUN(test_signal_forwarding);
    RUN(test_srun_without_pmi2_is_refused);
    return test_summary();
}
