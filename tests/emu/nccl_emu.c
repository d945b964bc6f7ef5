/* NCCL in the emulation build: not emulated. Every call fails with ncclInvalidUsage and says so,
 * so a test that reaches the NCCL transport under the emulator stops with that message instead
 * of passing without communicating. (The transport's logic is shared with the CPU shared-memory
 * transport's tests; NCCL itself runs only on a GPU machine: make test-gpu, gpu_check --nccl.) */
#include <nccl.h>
#include <stdio.h>

static ncclResult_t not_emulated(const char *call) {
    fprintf(stderr, "cuda emulator: %s: NCCL is not emulated (use the shm transport, or a GPU)\n", call);
    return ncclInvalidUsage;
}

const char *ncclGetErrorString(ncclResult_t r) { return r == ncclSuccess ? "no error" : "NCCL is not emulated"; }
const char *ncclGetLastError(ncclComm_t comm) {
    (void)comm;
    return "NCCL is not emulated";
}
ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    (void)id;
    return not_emulated("ncclGetUniqueId");
}
ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank, ncclConfig_t *config) {
    (void)comm, (void)nranks, (void)id, (void)rank, (void)config;
    return not_emulated("ncclCommInitRankConfig");
}
ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t *out, ncclConfig_t *config) {
    (void)comm, (void)color, (void)key, (void)out, (void)config;
    return not_emulated("ncclCommSplit");
}
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    (void)comm;
    return not_emulated("ncclCommFinalize");
}
ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    (void)comm;
    return not_emulated("ncclCommDestroy");
}
ncclResult_t ncclCommAbort(ncclComm_t comm) {
    (void)comm;
    return not_emulated("ncclCommAbort");
}
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *e) {
    (void)comm, (void)e;
    return not_emulated("ncclCommGetAsyncError");
}
ncclResult_t ncclCommCount(const ncclComm_t comm, int *n) {
    (void)comm, (void)n;
    return not_emulated("ncclCommCount");
}
ncclResult_t ncclGroupStart(void) { return not_emulated("ncclGroupStart"); }
ncclResult_t ncclGroupEnd(void) { return not_emulated("ncclGroupEnd"); }
ncclResult_t ncclBroadcast(const void *s, void *r, size_t n, ncclDataType_t t, int root, ncclComm_t c,
                           cudaStream_t st) {
    (void)s, (void)r, (void)n, (void)t, (void)root, (void)c, (void)st;
    return not_emulated("ncclBroadcast");
}
ncclResult_t ncclAllReduce(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t op, ncclComm_t c,
                           cudaStream_t st) {
    (void)s, (void)r, (void)n, (void)t, (void)op, (void)c, (void)st;
    return not_emulated("ncclAllReduce");
}
ncclResult_t ncclReduceScatter(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t op, ncclComm_t c,
                               cudaStream_t st) {
    (void)s, (void)r, (void)n, (void)t, (void)op, (void)c, (void)st;
    return not_emulated("ncclReduceScatter");
}
ncclResult_t ncclAllGather(const void *s, void *r, size_t n, ncclDataType_t t, ncclComm_t c, cudaStream_t st) {
    (void)s, (void)r, (void)n, (void)t, (void)c, (void)st;
    return not_emulated("ncclAllGather");
}
ncclResult_t ncclSend(const void *s, size_t n, ncclDataType_t t, int peer, ncclComm_t c, cudaStream_t st) {
    (void)s, (void)n, (void)t, (void)peer, (void)c, (void)st;
    return not_emulated("ncclSend");
}
ncclResult_t ncclRecv(void *r, size_t n, ncclDataType_t t, int peer, ncclComm_t c, cudaStream_t st) {
    (void)r, (void)n, (void)t, (void)peer, (void)c, (void)st;
    return not_emulated("ncclRecv");
}
