/* pmi2_smoke: run under `srun -n N --mpi=pmi2`. Rank 0 publishes a 128-byte blob (the size of
 * an NCCL unique id) through the PMI2 key-value space; after the fence every rank checks it
 * byte for byte against the value it computes itself from the job id. Every rank also publishes
 * a key of its own and checks its neighbour's, and rank 0 a 1024-byte value (the largest the
 * bootstrap takes: several PMI2 keys). Exit 0 when all is well. */
#include <stdio.h>
#include <string.h>
#include <xxhash.h>

#include "bootstrap.h"
#include "error.h"
#include "log.h"
#include "rng.h"

static void expected_blob(unsigned char *blob, size_t len, const char *job_id, int who) {
    uint64_t seed = XXH64(job_id, strlen(job_id), (uint64_t)who);
    for (uint32_t i = 0; i < len / 16; i++) {
        uint32_t w[4];
        wan_philox(w, i, (uint32_t)who, 0, 0, (uint32_t)seed, (uint32_t)(seed >> 32));
        memcpy(blob + 16 * i, w, 16);
    }
}

int main(void) {
    wan_bootstrap b;
    if (wan_bootstrap_init(&b, 1)) {
        wan_error_print("pmi2_smoke");
        return 1;
    }
    if (b.kind != WAN_BOOT_PMI2) {
        fprintf(stderr, "pmi2_smoke: not started by srun --mpi=pmi2 (no PMI_FD)\n");
        return 1;
    }
    unsigned char mine[128], got[128], want[128], big[1024], big_got[1024];
    char key[32];
    if (b.rank == 0) {
        expected_blob(mine, sizeof mine, b.job_id, -1);
        if (wan_bootstrap_put(&b, "smoke-blob", mine, sizeof mine)) goto fail;
        expected_blob(big, sizeof big, b.job_id, -2);
        if (wan_bootstrap_put(&b, "smoke-big", big, sizeof big)) goto fail;
    }
    expected_blob(mine, sizeof mine, b.job_id, b.rank);
    snprintf(key, sizeof key, "smoke-r%d", b.rank);
    if (wan_bootstrap_put(&b, key, mine, sizeof mine)) goto fail;
    if (wan_bootstrap_fence(&b)) goto fail;
    int bad = 0;
    if (wan_bootstrap_get(&b, "smoke-blob", got, sizeof got)) goto fail;
    expected_blob(want, sizeof want, b.job_id, -1);
    if (memcmp(got, want, sizeof got)) bad++, wan_log(WAN_LOG_ERROR, "rank 0's blob arrived altered");
    if (wan_bootstrap_get(&b, "smoke-big", big_got, sizeof big_got)) goto fail;
    expected_blob(big, sizeof big, b.job_id, -2);
    if (memcmp(big, big_got, sizeof big)) bad++, wan_log(WAN_LOG_ERROR, "rank 0's 1024-byte value arrived altered");
    int next = (b.rank + 1) % b.size;
    snprintf(key, sizeof key, "smoke-r%d", next);
    if (wan_bootstrap_get(&b, key, got, sizeof got)) goto fail;
    expected_blob(want, sizeof want, b.job_id, next);
    if (memcmp(got, want, sizeof got)) bad++, wan_log(WAN_LOG_ERROR, "rank %d's blob arrived altered", next);
    printf("pmi2_smoke: rank %d of %d (local %d of %d, job %s): %s\n", b.rank, b.size, b.local_rank, b.local_size,
           b.job_id, bad ? "BLOB MISMATCH" : "blob ok");
    wan_bootstrap_finalize(&b);
    return bad ? 1 : 0;
fail:
    wan_error_print("pmi2_smoke");
    return 1;
}
