/* Reader throughput for bench/data.sh: samples/s through the loader with checksum
 * verification, synchronously (one thread) and with background prefetch.
 *   data_read DIR PREFETCH THREADS SAMPLES TEXT_LEN TEXT_DIM
 * Prints one line: "samples S seconds T samples_per_s R stored_MB_per_s M". */
#include <stdio.h>
#include <stdlib.h>

#include "dataset.h"
#include "dataset_format.h"
#include "error.h"
#include "log.h"

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: data_read DIR PREFETCH THREADS SAMPLES TEXT_LEN TEXT_DIM\n");
        return 2;
    }
    wan_dataset *ds;
    if (wan_dataset_open(argv[1], &ds)) {
        wan_error_print("data_read");
        return 1;
    }
    wan_loader_opts o = {.ds = ds, .gbs = 1, .mbs = 1, .dp = 1, .verify = true, .prefetch = atoi(argv[2]),
                         .threads = atoi(argv[3]), .text_len = atoi(argv[5]), .text_dim = atoi(argv[6]),
                         .start = {.seed = 1}};
    long n = atol(argv[4]);
    wan_loader *l;
    if (wan_loader_create(&o, &l)) {
        wan_error_print("data_read");
        return 1;
    }
    const wan_ds_index *ix = wan_dataset_index(ds);
    double t0 = wan_now();
    uint64_t stored = 0;
    for (long i = 0; i < n; i++) {
        wan_microbatch mb;
        if (wan_loader_next(l, &mb)) {
            wan_error_print("data_read");
            return 1;
        }
        stored += ix->e[mb.sample[0]].stored;
    }
    double el = wan_now() - t0;
    printf("samples %ld seconds %.3f samples_per_s %.1f stored_MB_per_s %.1f\n", n, el, n / el, stored / 1e6 / el);
    wan_loader_destroy(l);
    wan_dataset_close(ds);
    return 0;
}
