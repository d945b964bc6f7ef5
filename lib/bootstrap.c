/* Who am I and how do ranks meet: Slurm PMI2 under srun, N local processes forked here, or a
 * single process; plus the small key-value exchange that carries a transport's rendezvous blob.
 *
 * Local mode: the calling process forks the ranks and stays behind as their supervisor. It
 * forwards the signals a job gets (TERM, INT, USR1, USR2), reaps the ranks, and when one fails
 * it names it, stops the others (TERM, then KILL after a grace period) and exits non-zero. The
 * key-value store of the local ranks is a shared anonymous mapping made before the fork. */
#include "bootstrap.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <slurm/pmi2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "log.h"

#define KV_MAX_ENTRIES 64
#define KV_MAX_KEY 48
#define KV_MAX_VALUE 1024
/* PMI2 values are strings of at most PMI2_MAX_VALLEN - 1 characters: hex, split over keys. */
#define PMI_PIECE_BYTES 500
/* Exit status of a rank that checkpointed on a signal and asks to be requeued (trainer.h). */
#define EXIT_REQUEUE 75
/* Seconds between SIGTERM and SIGKILL when the supervisor stops the ranks (WAN_KILL_GRACE_S). */
#define KILL_GRACE_S 10

typedef struct {
    char key[KV_MAX_KEY];
    int len;
    unsigned char value[KV_MAX_VALUE];
} kv_entry;

/* The store of local (and single) ranks; shared between forked ranks. */
typedef struct {
    atomic_flag lock;
    atomic_int fence_count;
    atomic_uint fence_gen;
    int nentries;
    kv_entry entries[KV_MAX_ENTRIES];
} local_kv;

typedef struct {
    local_kv *kv; /* LOCAL and SINGLE */
    size_t kv_bytes;
    char pmi_jobid[256]; /* PMI2 */
} boot_impl;

static int env_int(const char *name, int fallback) {
    const char *s = getenv(name);
    if (!s || !*s) return fallback;
    char *end;
    long v = strtol(s, &end, 10);
    return (*end || v < 0 || v > 1 << 30) ? fallback : (int)v;
}

/* Tasks of this node from Slurm's compressed list "2(x3),1" (tasks per node, node by node). */
static int slurm_tasks_on_node(const char *list, int node) {
    const char *p = list;
    int seen = 0;
    while (p && *p) {
        char *end;
        long tasks = strtol(p, &end, 10), reps = 1;
        if (end == p) return -1;
        p = end;
        if (!strncmp(p, "(x", 2)) {
            reps = strtol(p + 2, &end, 10);
            if (*end != ')') return -1;
            p = end + 1;
        }
        if (node < seen + reps) return (int)tasks;
        seen += (int)reps;
        if (*p == ',') p++;
    }
    return -1;
}

static local_kv *kv_map(size_t *bytes) {
    *bytes = sizeof(local_kv);
    void *m = mmap(NULL, *bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    local_kv *kv = m; /* zero-filled: the lock is clear, the store empty */
    return kv;
}

static void kv_lock(local_kv *kv) {
    while (atomic_flag_test_and_set_explicit(&kv->lock, memory_order_acquire)) sched_yield();
}
static void kv_unlock(local_kv *kv) { atomic_flag_clear_explicit(&kv->lock, memory_order_release); }

/* ---- the supervisor of forked ranks ---- */

static void describe_status(int status, char *buf, size_t n) {
    if (WIFEXITED(status)) snprintf(buf, n, "exit status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, n, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else snprintf(buf, n, "status 0x%x", status);
}

/* The shell's convention: exit code, or 128 + signal. */
static int status_code(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

static void signal_all(const pid_t *pids, const int *done, int n, int sig) {
    for (int i = 0; i < n; i++)
        if (!done[i]) kill(pids[i], sig);
}

/* Never returns: waits for the ranks and exits with their verdict. */
static _Noreturn void supervise(pid_t *pids, int n, const sigset_t *caught) {
    int *done = calloc((size_t)n, sizeof *done), *status = calloc((size_t)n, sizeof *status);
    if (!done || !status) {
        for (int i = 0; i < n; i++) kill(pids[i], SIGKILL);
        fprintf(stderr, "wan: supervisor out of memory\n");
        exit(1);
    }
    int left = n, failed = -1, exit_code = 0, grace = env_int("WAN_KILL_GRACE_S", KILL_GRACE_S);
    double kill_at = 0; /* when stopping: the moment to send SIGKILL */
    while (left > 0) {
        /* reap every rank that finished */
        for (;;) {
            int st;
            pid_t pid = waitpid(-1, &st, WNOHANG);
            if (pid <= 0) break;
            int r = -1;
            for (int i = 0; i < n; i++)
                if (pids[i] == pid) r = i;
            if (r < 0 || done[r]) continue;
            done[r] = 1, status[r] = st, left--;
            bool ok = WIFEXITED(st) && (WEXITSTATUS(st) == 0 || WEXITSTATUS(st) == EXIT_REQUEUE);
            if (!ok && failed < 0) {
                char what[96];
                describe_status(st, what, sizeof what);
                failed = r;
                exit_code = status_code(st);
                if (exit_code == 0) exit_code = 1;
                if (left > 0) {
                    wan_log(WAN_LOG_ERROR, "rank %d (pid %d) failed: %s; stopping the other %d rank%s", r,
                            (int)pid, what, left, left == 1 ? "" : "s");
                    signal_all(pids, done, n, SIGTERM);
                    kill_at = wan_now() + grace;
                } else {
                    wan_log(WAN_LOG_ERROR, "rank %d (pid %d) failed: %s", r, (int)pid, what);
                }
            }
        }
        if (left == 0) break;
        if (kill_at > 0 && wan_now() >= kill_at) {
            wan_warn("%d rank%s still running %d s after SIGTERM: sending SIGKILL", left, left == 1 ? "" : "s",
                     grace);
            signal_all(pids, done, n, SIGKILL);
            kill_at = 0;
        }
        struct timespec tick = {0, 200 * 1000 * 1000};
        siginfo_t si;
        int sig = sigtimedwait(caught, &si, &tick);
        if (sig > 0 && sig != SIGCHLD) signal_all(pids, done, n, sig); /* forward */
    }
    if (failed < 0) {
        /* all ended well: their common status, or a disagreement (some asked for a requeue) */
        exit_code = status_code(status[0]);
        for (int i = 1; i < n; i++)
            if (status_code(status[i]) != exit_code) {
                char a[96], b[96];
                describe_status(status[0], a, sizeof a);
                describe_status(status[i], b, sizeof b);
                wan_log(WAN_LOG_ERROR, "ranks ended differently: rank 0 %s, rank %d %s", a, i, b);
                exit_code = 1;
                break;
            }
    }
    exit(exit_code);
}

static int init_local(wan_bootstrap *b, boot_impl *im, int nproc) {
    im->kv = kv_map(&im->kv_bytes);
    if (!im->kv) return wan_fail_errno(WAN_ERR_RUNTIME, "bootstrap: mapping the shared key-value store");
    pid_t supervisor = getpid();
    /* Block the forwarded signals before forking: none is lost between the forks, and the
     * supervisor takes them with sigtimedwait. The ranks restore the original mask. */
    sigset_t caught, old;
    sigemptyset(&caught);
    int forwarded[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP, SIGCHLD};
    for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++) sigaddset(&caught, forwarded[i]);
    if (sigprocmask(SIG_BLOCK, &caught, &old)) return wan_fail_errno(WAN_ERR_RUNTIME, "sigprocmask");
    fflush(NULL); /* no buffered output is written twice */
    pid_t *pids = calloc((size_t)nproc, sizeof *pids);
    if (!pids) return wan_fail(WAN_ERR_RUNTIME, "bootstrap: out of memory");
    for (int r = 0; r < nproc; r++) {
        pid_t pid = fork();
        if (pid < 0) {
            int e = errno;
            for (int i = 0; i < r; i++) kill(pids[i], SIGKILL);
            for (int i = 0; i < r; i++) waitpid(pids[i], NULL, 0);
            sigprocmask(SIG_SETMASK, &old, NULL);
            errno = e;
            return wan_fail_errno(WAN_ERR_RUNTIME, "bootstrap: forking rank %d of %d", r, nproc);
        }
        if (pid == 0) {
            free(pids);
            /* a rank does not outlive its supervisor */
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != supervisor) _exit(1);
            sigprocmask(SIG_SETMASK, &old, NULL);
            b->kind = WAN_BOOT_LOCAL;
            b->rank = r, b->size = nproc;
            b->local_rank = r, b->local_size = nproc;
            snprintf(b->job_id, sizeof b->job_id, "local-%d", (int)supervisor);
            wan_log_set_rank(r);
            return 0;
        }
        pids[r] = pid;
    }
    wan_info("started %d local ranks (pids %d..%d); this process (pid %d) supervises them", nproc, (int)pids[0],
             (int)pids[nproc - 1], (int)supervisor);
    supervise(pids, nproc, &caught);
}

static int init_pmi2(wan_bootstrap *b, boot_impl *im, int step_tasks) {
    int spawned = 0, size = 0, rank = 0, appnum = 0;
    int rc = PMI2_Init(&spawned, &size, &rank, &appnum);
    if (rc != PMI2_SUCCESS) return wan_fail(WAN_ERR_RUNTIME, "PMI2_Init failed (error %d) under srun", rc);
    if (size == 1 && step_tasks > 1) {
        PMI2_Finalize();
        return wan_fail(WAN_ERR_USAGE,
                        "srun started %d tasks but PMI2 reports a world of 1: launch with `srun --mpi=pmi2` "
                        "(or set MpiDefault=pmi2 in slurm.conf)",
                        step_tasks);
    }
    rc = PMI2_Job_GetId(im->pmi_jobid, sizeof im->pmi_jobid);
    if (rc != PMI2_SUCCESS) {
        PMI2_Finalize();
        return wan_fail(WAN_ERR_RUNTIME, "PMI2_Job_GetId failed (error %d)", rc);
    }
    b->kind = WAN_BOOT_PMI2;
    b->rank = rank, b->size = size;
    b->local_rank = env_int("SLURM_LOCALID", 0);
    const char *per_node = getenv("SLURM_STEP_TASKS_PER_NODE");
    int local = per_node ? slurm_tasks_on_node(per_node, env_int("SLURM_NODEID", 0)) : -1;
    b->local_size = local > 0 ? local : size;
    const char *job = getenv("SLURM_JOB_ID"), *step = getenv("SLURM_STEP_ID");
    if (!step) step = getenv("SLURM_STEPID");
    snprintf(b->job_id, sizeof b->job_id, "%s.%s", job ? job : "0", step ? step : "0");
    wan_log_set_rank(rank);
    return 0;
}

int wan_bootstrap_init(wan_bootstrap *b, int nproc) {
    memset(b, 0, sizeof *b);
    boot_impl *im = calloc(1, sizeof *im);
    if (!im) return wan_fail(WAN_ERR_RUNTIME, "bootstrap: out of memory");
    b->impl = im;
    /* srun sets SLURM_STEP_NUM_TASKS in every task (a batch script has only SLURM_NTASKS) */
    bool in_srun = getenv("SLURM_STEP_ID") || getenv("SLURM_STEPID");
    int step_tasks = env_int("SLURM_STEP_NUM_TASKS", in_srun ? env_int("SLURM_NTASKS", 1) : 1);
    int rc = 0;
    if (getenv("PMI_FD") && !(nproc > 1 && step_tasks <= 1)) {
        if (nproc > 1)
            rc = wan_fail(WAN_ERR_USAGE,
                          "--nproc %d under srun with %d tasks: use either srun -n (PMI2) or --nproc, not both",
                          nproc, step_tasks);
        else rc = init_pmi2(b, im, step_tasks);
    } else if (in_srun && step_tasks > 1) {
        /* srun --mpi=none (or pmix): every task would believe it is the only one */
        rc = wan_fail(WAN_ERR_USAGE,
                      "srun started %d tasks without PMI2 (PMI_FD is not set): launch with `srun --mpi=pmi2` "
                      "(or set MpiDefault=pmi2 in slurm.conf)",
                      step_tasks);
    } else if (nproc > 1) {
        rc = init_local(b, im, nproc);
    } else {
        im->kv = kv_map(&im->kv_bytes);
        if (!im->kv) rc = wan_fail_errno(WAN_ERR_RUNTIME, "bootstrap: mapping the key-value store");
        b->kind = WAN_BOOT_SINGLE;
        b->rank = 0, b->size = 1, b->local_rank = 0, b->local_size = 1;
        snprintf(b->job_id, sizeof b->job_id, "local-%d", (int)getpid());
    }
    if (rc) {
        if (im->kv) munmap(im->kv, im->kv_bytes);
        free(im);
        b->impl = NULL;
    }
    return rc;
}

static int check_key(const char *key) {
    size_t n = strlen(key);
    if (n == 0 || n >= KV_MAX_KEY - 8)
        return wan_fail(WAN_ERR_USAGE, "bootstrap: key '%s' must have 1..%d characters", key, KV_MAX_KEY - 9);
    for (size_t i = 0; i < n; i++)
        if (key[i] <= ' ' || key[i] == '=' || key[i] > '~')
            return wan_fail(WAN_ERR_USAGE, "bootstrap: key '%s' has a space, '=' or a non-ASCII character", key);
    return 0;
}

int wan_bootstrap_put(wan_bootstrap *b, const char *key, const void *value, size_t len) {
    boot_impl *im = b->impl;
    WAN_TRY(check_key(key));
    if (len > KV_MAX_VALUE)
        return wan_fail(WAN_ERR_USAGE, "bootstrap: value of '%s' has %zu bytes, at most %d", key, len, KV_MAX_VALUE);
    if (b->kind == WAN_BOOT_PMI2) {
        /* pieces: "key" = "<len>:<hex>", then "key.1", "key.2", ... = "<hex>" */
        const unsigned char *v = value;
        size_t off = 0;
        for (int piece = 0; piece == 0 || off < len; piece++) {
            char k[PMI2_MAX_KEYLEN], hex[PMI2_MAX_VALLEN];
            size_t take = len - off < PMI_PIECE_BYTES ? len - off : PMI_PIECE_BYTES;
            int h = 0;
            if (piece == 0) {
                snprintf(k, sizeof k, "%s", key);
                h = snprintf(hex, sizeof hex, "%zu:", len);
            } else snprintf(k, sizeof k, "%s.%d", key, piece);
            for (size_t i = 0; i < take; i++) h += snprintf(hex + h, sizeof hex - (size_t)h, "%02x", v[off + i]);
            off += take;
            int rc = PMI2_KVS_Put(k, hex);
            if (rc != PMI2_SUCCESS) return wan_fail(WAN_ERR_RUNTIME, "PMI2_KVS_Put('%s') failed (error %d)", k, rc);
        }
        return 0;
    }
    local_kv *kv = im->kv;
    int rc = 0;
    kv_lock(kv);
    int slot = -1;
    for (int i = 0; i < kv->nentries; i++)
        if (!strcmp(kv->entries[i].key, key)) slot = i;
    if (slot < 0 && kv->nentries == KV_MAX_ENTRIES)
        rc = wan_fail(WAN_ERR_RUNTIME, "bootstrap: key-value store full (%d keys)", KV_MAX_ENTRIES);
    else {
        if (slot < 0) slot = kv->nentries++;
        kv_entry *e = &kv->entries[slot];
        snprintf(e->key, sizeof e->key, "%s", key);
        e->len = (int)len;
        memcpy(e->value, value, len);
    }
    kv_unlock(kv);
    return rc;
}

int wan_bootstrap_fence(wan_bootstrap *b) {
    boot_impl *im = b->impl;
    if (b->kind == WAN_BOOT_PMI2) {
        int rc = PMI2_KVS_Fence();
        return rc == PMI2_SUCCESS ? 0 : wan_fail(WAN_ERR_RUNTIME, "PMI2_KVS_Fence failed (error %d)", rc);
    }
    if (b->size == 1) return 0;
    /* A generation barrier. A rank that dies makes the supervisor stop all, so no deadline. */
    local_kv *kv = im->kv;
    unsigned gen = atomic_load(&kv->fence_gen);
    if (atomic_fetch_add(&kv->fence_count, 1) == b->size - 1) {
        atomic_store(&kv->fence_count, 0);
        atomic_store(&kv->fence_gen, gen + 1);
        return 0;
    }
    for (long spins = 0; atomic_load(&kv->fence_gen) == gen; spins++) {
        if (spins < 1000) sched_yield();
        else nanosleep(&(struct timespec){0, 200 * 1000}, NULL);
    }
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static int pmi_get(boot_impl *im, const char *key, char *out, int cap) {
    int got = 0;
    int rc = PMI2_KVS_Get(im->pmi_jobid, PMI2_ID_NULL, key, out, cap, &got);
    if (rc != PMI2_SUCCESS || got < 0)
        return wan_fail(WAN_ERR_RUNTIME, "bootstrap: PMI2_KVS_Get('%s') failed (error %d): was it put before the fence?",
                        key, rc);
    return 0;
}

int wan_bootstrap_get(wan_bootstrap *b, const char *key, void *value, size_t len) {
    boot_impl *im = b->impl;
    WAN_TRY(check_key(key));
    if (b->kind == WAN_BOOT_PMI2) {
        unsigned char *v = value;
        size_t off = 0, stored = 0;
        for (int piece = 0; piece == 0 || off < len; piece++) {
            char k[PMI2_MAX_KEYLEN], hex[PMI2_MAX_VALLEN + 1];
            if (piece == 0) snprintf(k, sizeof k, "%s", key);
            else snprintf(k, sizeof k, "%s.%d", key, piece);
            WAN_TRY(pmi_get(im, k, hex, PMI2_MAX_VALLEN));
            hex[PMI2_MAX_VALLEN] = 0;
            const char *h = hex;
            if (piece == 0) {
                char *end;
                stored = strtoul(hex, &end, 10);
                if (*end != ':') return wan_fail(WAN_ERR_RUNTIME, "bootstrap: PMI2 value of '%s' is malformed", key);
                if (stored != len)
                    return wan_fail(WAN_ERR_RUNTIME, "bootstrap: '%s' holds %zu bytes, expected %zu", key, stored, len);
                h = end + 1;
            }
            size_t take = len - off < PMI_PIECE_BYTES ? len - off : PMI_PIECE_BYTES;
            for (size_t i = 0; i < take; i++) {
                int hi = hexval(h[2 * i]), lo = hi < 0 ? -1 : hexval(h[2 * i + 1]);
                if (lo < 0) return wan_fail(WAN_ERR_RUNTIME, "bootstrap: PMI2 value of '%s' is malformed", k);
                v[off + i] = (unsigned char)(hi << 4 | lo);
            }
            off += take;
        }
        return 0;
    }
    local_kv *kv = im->kv;
    int rc = -1;
    kv_lock(kv);
    for (int i = 0; i < kv->nentries; i++) {
        kv_entry *e = &kv->entries[i];
        if (strcmp(e->key, key)) continue;
        if ((size_t)e->len != len) {
            rc = wan_fail(WAN_ERR_RUNTIME, "bootstrap: '%s' holds %d bytes, expected %zu", key, e->len, len);
        } else {
            memcpy(value, e->value, len);
            rc = 0;
        }
    }
    kv_unlock(kv);
    if (rc < 0) rc = wan_fail(WAN_ERR_RUNTIME, "bootstrap: key '%s' not found (was it put before the fence?)", key);
    return rc;
}

void wan_bootstrap_finalize(wan_bootstrap *b) {
    boot_impl *im = b->impl;
    if (!im) return;
    if (b->kind == WAN_BOOT_PMI2) PMI2_Finalize();
    if (im->kv) munmap(im->kv, im->kv_bytes);
    free(im);
    b->impl = NULL;
}
