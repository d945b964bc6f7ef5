/* The communication interface: collectives on backend buffers within a group of ranks.
 * Two transports implement it: the CPU one (comm_shm.c: ranks of one node over POSIX shared
 * memory, reductions in a fixed rank order, so results are deterministic) and NCCL
 * (lib/cuda/comm_nccl.c). The parallel code calls only these.
 *
 * Every call is collective over the group (all members call it, in the same order) and returns
 * 0, or WAN_ERR_RUNTIME with a message naming the group and the operation when a peer died,
 * a peer failed, or nothing happened for comm_timeout seconds. After an error the
 * communicator is poisoned: every later call on any group fails at once. */
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
    uint64_t bytes_sent; /* logical bytes this rank sent in this group (ring-algorithm volume) */
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
    /* Every member sends n elements to member `to` and receives n from member `from` at once
     * (the ring shift of context parallelism). */
    int (*sendrecv)(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt);
    /* Point to point (pipeline stages): blocks until the peer takes / provides the data. */
    int (*send)(wan_group *g, const void *buf, size_t n, wan_dtype dt, int peer);
    int (*recv)(wan_group *g, void *buf, size_t n, wan_dtype dt, int peer);
    int (*barrier)(wan_group *g);
    /* Group of the given world ranks (rank order as listed); collective over the world.
     * Called once per group at start-up. */
    int (*make_group)(wan_comm *c, wan_group *g, const char *name, int index, const int *ranks, int size);
    void (*destroy)(wan_comm *c);
} wan_comm_ops;

struct wan_comm {
    const wan_comm_ops *ops;
    int rank, size;   /* world */
    int timeout_s;
    wan_group world;
    void *impl;
};

/* Convenience wrappers that account bytes_sent and skip work on groups of one. */
int wan_allreduce(wan_group *g, void *buf, size_t n, wan_dtype dt, wan_redop op);
int wan_reduce_scatter(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt);
int wan_allgather(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt);
int wan_broadcast(wan_group *g, void *buf, size_t n, wan_dtype dt, int root);
int wan_sendrecv(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt);
int wan_send(wan_group *g, const void *buf, size_t n, wan_dtype dt, int peer);
int wan_recv(wan_group *g, void *buf, size_t n, wan_dtype dt, int peer);
int wan_barrier(wan_group *g);

#endif
