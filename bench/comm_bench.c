/* comm_bench: all-reduce bandwidth of the CPU transport against memcpy on the same machine.
 *
 *   comm_bench --nproc N [--seconds S] [--max-mib M]
 *
 * For each size (fp32 sum): time per all-reduce, algorithm bandwidth (buffer bytes / time),
 * bus bandwidth (x 2(N-1)/N, what each rank moves in a ring), and memcpy bandwidth of one
 * process copying a buffer of that size (same machine, the others idle), with the ratio
 * all-reduce algbw / memcpy. Both are the best of several timing windows (the machine may be
 * shared). Printed by rank 0 on stdout as a table. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap.h"
#include "comm.h"
#include "error.h"
#include "log.h"

#define WINDOWS 5 /* timing windows per size; the best counts */

static void die(void) {
    wan_error_print("comm_bench");
    exit(1);
}

/* Seconds per memcpy of `bytes` (warm buffers, best of a few runs). */
static double memcpy_time(size_t bytes, double budget) {
    unsigned char *a = malloc(bytes), *b = malloc(bytes);
    memset(a, 1, bytes), memset(b, 2, bytes);
    double best = 1e30, t_end = wan_now() + budget;
    int reps = 1;
    while (wan_now() < t_end || best > 1e29) {
        double t0 = wan_now();
        for (int i = 0; i < reps; i++) {
            memcpy(b, a, bytes);
            __asm__ __volatile__("" ::"r"(b) : "memory"); /* keep the copy */
            a[i % bytes] ^= 1;
        }
        double dt = (wan_now() - t0) / reps;
        if (dt < best) best = dt;
        if (dt * reps < 1e-3) reps *= 2;
    }
    free(a), free(b);
    return best;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"nproc", required_argument, 0, 'n'}, {"seconds", required_argument, 0, 's'},
                                         {"max-mib", required_argument, 0, 'm'}, {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int nproc = 2, c, max_mib = 64;
    double seconds = 0.3;
    while ((c = getopt_long(argc, argv, "n:s:m:h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': nproc = atoi(optarg); break;
        case 's': seconds = atof(optarg); break;
        case 'm': max_mib = atoi(optarg); break;
        default: printf("usage: comm_bench [--nproc N] [--seconds S per size] [--max-mib M]\n"); return c == 'h' ? 0 : 2;
        }
    }
    wan_bootstrap b;
    int rc = wan_bootstrap_init(&b, nproc);
    if (rc) die();
    wan_comm *comm;
    if (wan_comm_shm_create(&b, 120, &comm)) die();
    wan_group *w = &comm->world;
    int p = comm->size;
    if (comm->rank == 0) {
        printf("CPU transport all-reduce (fp32 sum), %d ranks; memcpy: one process, same size\n", p);
        printf("%10s %12s %12s %12s %12s %8s\n", "bytes", "time_us", "algbw_GB/s", "busbw_GB/s", "memcpy_GB/s",
               "ratio");
        fflush(stdout);
    }
    for (size_t bytes = 4096; bytes <= (size_t)max_mib << 20; bytes *= 4) {
        size_t n = bytes / 4;
        float *x = malloc(bytes);
        for (size_t i = 0; i < n; i++) x[i] = (float)(i % 1000) * 1e-3f;
        /* rank 0 measures memcpy while the others wait in a barrier (asleep) */
        double mc = 0;
        if (comm->rank == 0) mc = memcpy_time(bytes, seconds / 3);
        if (wan_barrier(w)) die();
        /* warm-up, then agree on a repeat count from rank 0's estimate */
        double t0 = wan_now();
        for (int i = 0; i < 2; i++)
            if (wan_allreduce(w, x, n, WAN_F32, WAN_RED_SUM)) die();
        float reps_f = (float)(seconds / WINDOWS / ((wan_now() - t0) / 2 + 1e-9));
        if (wan_broadcast(w, &reps_f, 1, WAN_F32, 0)) die();
        int reps = reps_f < 2 ? 2 : reps_f > 100000 ? 100000 : (int)reps_f;
        /* best of a few windows, like memcpy: the machine may be shared */
        double dt = 1e30;
        for (int k = 0; k < WINDOWS; k++) {
            if (wan_barrier(w)) die();
            t0 = wan_now();
            for (int i = 0; i < reps; i++)
                if (wan_allreduce(w, x, n, WAN_F32, WAN_RED_SUM)) die();
            float took = (float)((wan_now() - t0) / reps);
            /* the slowest rank's time is the collective's time */
            if (wan_allreduce(w, &took, 1, WAN_F32, WAN_RED_MAX)) die();
            if (took < dt) dt = took;
        }
        if (comm->rank == 0) {
            double alg = (double)bytes / dt / 1e9, bus = alg * 2 * (p - 1) / p, mcbw = (double)bytes / mc / 1e9;
            printf("%10zu %12.1f %12.2f %12.2f %12.2f %8.2f\n", bytes, dt * 1e6, alg, bus, mcbw, alg / mcbw);
            fflush(stdout);
        }
        free(x);
    }
    comm->ops->destroy(comm);
    wan_bootstrap_finalize(&b);
    return 0;
}
