/* The communication interface: collectives on backend buffers within a group of ranks.
 * Two transports implement it: the CPU one (comm_shm.c: ranks of one node over POSIX shared
 * memory, reductions in a fixed rank order, so results are deterministic) and NCCL
 * (lib/cuda/comm_nccl.c). The parallel code calls only these.
 *
 * Every call is collective over the group (all members call it, in the same order) and returns
 * 0, or WAN_ERR_RUNTIME with a message naming the group and the operation when a peer died,
 * a peer failed, or nothing happened for comm_timeout seconds. After an error the
 * communicator is poisoned: every later call on any group fails at once.
 *
 * Completion: the CPU transport completes every call before returning. The NCCL transport
 * only enqueues it, ordered on the GPU after the compute so far and before the compute that
 * follows (so buffers may be used at once by later ops, never read on the host without the
 * backend's download, which waits); a failure there is reported by a later call, by
 * wan_comm_flush, or, if the host meanwhile waits for the GPU, by the backend stopping the
 * process with the transport's message. wan_sendrecv_start leaves even the GPU-side order open
 * until wan_comm_wait: the transfer then overlaps the compute issued in between. */
#ifndef WAN_COMM_H
#define WAN_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

typedef enum { WAN_RED_SUM = 0, WAN_RED_MAX = 1 } wan_redop;

typedef struct wan_comm wan_comm;

typedef struct wan_group {
    wan_comm *comm;
    char name[16];  /* "tp", "cp", "dp", "pp", "dpcp", "world" */
    int index;      /* which group of that kind (for messages: "tp[3]") */
    int size, rank; /* members, and this rank's place among them */
    int ranks[1024]; /* world ranks of the members in group order */
    /* Logical bytes this rank sent in this group, counted by the wan_* wrappers as the ring
     * algorithm would send them, whatever the transport really does (B = n * element size,
     * p = size; nothing on groups of one, on n = 0 or on failure):
     *   allreduce 2 (p-1) B / p (rounded down) | reduce_scatter (p-1) B (B = one member's chunk)
     *   allgather (p-1) B (B = one member's part) | broadcast B, except the root's ring
     *   predecessor (member root-1 mod p), which sends nothing | reduce B, except the root
     *   (the chain ends there) | sendrecv B (0 when to == rank)
     *   send B | recv 0 | barrier 0 */
    uint64_t bytes_sent;
    void *impl;
} wan_group;

typedef struct wan_comm_ops {
    int (*allreduce)(wan_group *g, void *buf, size_t n, wan_dtype dt, wan_redop op);
    /* send holds size * n elements (chunk i for member i); recv gets the sum of chunk `rank` */
    int (*reduce_scatter)(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt);
    /* send holds n elements; recv gets size * n (member i's at i * n); recv may alias
     * recv + rank * n == send (in place) */
    int (*allgather)(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt);
    int (*broadcast)(wan_group *g, void *buf, size_t n, wan_dtype dt, int root);
    /* Sum of every member's buf into root's buf (in place); the others' buf are left as they
     * were. Reductions in member order, like the others. */
    int (*reduce)(wan_group *g, void *buf, size_t n, wan_dtype dt, int root);
    /* Every member sends n elements to member `to` and receives n from member `from` at once
     * (the ring shift of context parallelism). */
    int (*sendrecv)(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt);
    /* Optional: sendrecv whose result the compute issued before wait() must not use (it runs
     * alongside); *req identifies it for wait(). NULL: the wrappers use sendrecv. */
    int (*sendrecv_start)(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt,
                          uint64_t *req);
    /* Optional: reduce whose buffer the compute issued before wait() must neither read (root)
     * nor write; *req identifies it. NULL: the wrappers use reduce. */
    int (*reduce_start)(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, uint64_t *req);
    /* Optional: broadcast started the same way (buf neither read nor written by the compute
     * until wait()). NULL: the wrappers use broadcast. */
    int (*broadcast_start)(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, uint64_t *req);
    /* Optional: order the compute that follows after the started operation req. */
    int (*wait)(wan_group *g, uint64_t req);
    /* Optional: block until everything this rank enqueued has completed; report its failure. */
    int (*flush)(wan_comm *c);
    /* Point to point (pipeline stages): in order with the peer's matching call (a send completes
     * when the peer takes the data). */
    int (*send)(wan_group *g, const void *buf, size_t n, wan_dtype dt, int peer);
    int (*recv)(wan_group *g, void *buf, size_t n, wan_dtype dt, int peer);
    int (*barrier)(wan_group *g);
    /* Group of the given world ranks (rank order as listed). Called at start-up by every rank
     * once per kind of group, for the group of that kind it belongs to, the kinds in the same
     * order on every rank (as dist.c does). The CPU transport also accepts a rank that is not
     * listed: it gets rank -1 and a handle it must not use. */
    int (*make_group)(wan_comm *c, wan_group *g, const char *name, int index, const int *ranks, int size);
    void (*destroy)(wan_comm *c);
    /* Optional: this rank gives up (a fatal error outside the communicator). CPU transport: the
     * other ranks' current and later calls fail promptly with "rank R aborted: why". NCCL: this
     * rank's communicators only; the launcher (srun --kill-on-bad-exit, --nproc) stops the rest. */
    void (*abort)(wan_comm *c, const char *why);
} wan_comm_ops;

struct wan_comm {
    const wan_comm_ops *ops;
    int rank, size;   /* world */
    int timeout_s;
    wan_group world;
    void *impl;
};

/* For transports' make_group: fill g's common fields (name, index, size, members, this rank's
 * place: -1 when not a member) after checking the member list. */
int wan_group_init(wan_group *g, wan_comm *c, const char *name, int index, const int *ranks, int size);

/* Convenience wrappers that account bytes_sent and skip work on groups of one. */
int wan_allreduce(wan_group *g, void *buf, size_t n, wan_dtype dt, wan_redop op);
int wan_reduce_scatter(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt);
int wan_allgather(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt);
int wan_broadcast(wan_group *g, void *buf, size_t n, wan_dtype dt, int root);
int wan_reduce(wan_group *g, void *buf, size_t n, wan_dtype dt, int root);
int wan_sendrecv(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt);
/* sendrecv whose receive buffer (and the send buffer, for writing) is not to be touched by
 * the compute until wan_comm_wait(g, req): on NCCL the transfer overlaps the work issued in
 * between; elsewhere it has completed on return. req is 0 when nothing was started. */
typedef struct wan_comm_req {
    uint64_t id;
    bool started;
} wan_comm_req;
int wan_sendrecv_start(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt,
                       wan_comm_req *req);
/* reduce and broadcast started the same way: buf is not to be touched by the compute until
 * wan_comm_wait. */
int wan_reduce_start(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, wan_comm_req *req);
int wan_broadcast_start(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, wan_comm_req *req);
int wan_comm_wait(wan_group *g, wan_comm_req *req);
/* Wait until every operation this rank enqueued has completed (under the timeout); 0, or the
 * failure one of them met. No-op on a transport that completes each call on return. */
int wan_comm_flush(wan_comm *c);
int wan_send(wan_group *g, const void *buf, size_t n, wan_dtype dt, int peer);
int wan_recv(wan_group *g, void *buf, size_t n, wan_dtype dt, int peer);
int wan_barrier(wan_group *g);
/* Tell the other ranks this one is failing (before exiting non-zero); no-op when c is NULL or
 * the transport has no abort. */
void wan_comm_abort(wan_comm *c, const char *why);

#endif
