/* The wrappers the parallel code calls: argument checks that name the group, nothing to do on
 * groups of one (or n = 0), and bytes_sent counted as the ring algorithm would send (comm.h). */
#include "comm.h"

#include <stdio.h>
#include <string.h>

#include "error.h"

static int usable(wan_group *g, const char *op) {
    if (!g || !g->comm || !g->comm->ops) return wan_fail(WAN_ERR_RUNTIME, "%s: the group was never made", op);
    if (g->rank < 0)
        return wan_fail(WAN_ERR_RUNTIME, "%s on %s[%d]: rank %d is not a member", op, g->name, g->index, g->comm->rank);
    return 0;
}

static int member(wan_group *g, const char *op, const char *what, int m) {
    if (m < 0 || m >= g->size)
        return wan_fail(WAN_ERR_USAGE, "%s on %s[%d]: %s %d is not a member (size %d)", op, g->name, g->index, what, m,
                        g->size);
    return 0;
}

static uint64_t bytes_of(size_t n, wan_dtype dt) { return (uint64_t)n * wan_dtype_size(dt); }

int wan_allreduce(wan_group *g, void *buf, size_t n, wan_dtype dt, wan_redop op) {
    WAN_TRY(usable(g, "allreduce"));
    if (g->size == 1 || n == 0) return 0;
    WAN_TRY(g->comm->ops->allreduce(g, buf, n, dt, op));
    g->bytes_sent += 2 * (uint64_t)(g->size - 1) * bytes_of(n, dt) / (uint64_t)g->size;
    return 0;
}

int wan_reduce_scatter(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt) {
    WAN_TRY(usable(g, "reduce_scatter"));
    if (n == 0 || (g->size == 1 && recv == send)) return 0;
    /* a group of one still copies (the transport knows how to copy its buffers) */
    WAN_TRY(g->comm->ops->reduce_scatter(g, recv, send, n, dt));
    g->bytes_sent += (uint64_t)(g->size - 1) * bytes_of(n, dt);
    return 0;
}

int wan_allgather(wan_group *g, void *recv, const void *send, size_t n, wan_dtype dt) {
    WAN_TRY(usable(g, "allgather"));
    if (n == 0 || (g->size == 1 && recv == send)) return 0;
    WAN_TRY(g->comm->ops->allgather(g, recv, send, n, dt));
    g->bytes_sent += (uint64_t)(g->size - 1) * bytes_of(n, dt);
    return 0;
}

/* broadcast, reduce and sendrecv, plain or started: req NULL is the plain call; otherwise the
 * transport starts it where it can (req->started says so) and runs it plainly where not. */
static int broadcast_any(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, wan_comm_req *req) {
    WAN_TRY(usable(g, "broadcast"));
    WAN_TRY(member(g, "broadcast", "root", root));
    if (g->size == 1 || n == 0) return 0;
    if (req && g->comm->ops->broadcast_start) {
        WAN_TRY(g->comm->ops->broadcast_start(g, buf, n, dt, root, &req->id));
        req->started = true;
    } else
        WAN_TRY(g->comm->ops->broadcast(g, buf, n, dt, root));
    if (g->rank != (root + g->size - 1) % g->size) g->bytes_sent += bytes_of(n, dt);
    return 0;
}

int wan_broadcast(wan_group *g, void *buf, size_t n, wan_dtype dt, int root) {
    return broadcast_any(g, buf, n, dt, root, NULL);
}

int wan_broadcast_start(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, wan_comm_req *req) {
    *req = (wan_comm_req){0};
    return broadcast_any(g, buf, n, dt, root, req);
}

static int reduce_any(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, wan_comm_req *req) {
    WAN_TRY(usable(g, "reduce"));
    WAN_TRY(member(g, "reduce", "root", root));
    if (g->size == 1 || n == 0) return 0;
    if (req && g->comm->ops->reduce_start) {
        WAN_TRY(g->comm->ops->reduce_start(g, buf, n, dt, root, &req->id));
        req->started = true;
    } else
        WAN_TRY(g->comm->ops->reduce(g, buf, n, dt, root));
    if (g->rank != root) g->bytes_sent += bytes_of(n, dt);
    return 0;
}

static int sendrecv_any(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt,
                        wan_comm_req *req) {
    WAN_TRY(usable(g, "sendrecv"));
    WAN_TRY(member(g, "sendrecv", "destination", to));
    WAN_TRY(member(g, "sendrecv", "source", from));
    if (n == 0 || (g->size == 1 && recv == send)) return 0;
    if (req && g->comm->ops->sendrecv_start) {
        WAN_TRY(g->comm->ops->sendrecv_start(g, send, to, recv, from, n, dt, &req->id));
        req->started = true;
    } else
        WAN_TRY(g->comm->ops->sendrecv(g, send, to, recv, from, n, dt));
    if (to != g->rank) g->bytes_sent += bytes_of(n, dt);
    return 0;
}

int wan_reduce(wan_group *g, void *buf, size_t n, wan_dtype dt, int root) {
    return reduce_any(g, buf, n, dt, root, NULL);
}

int wan_sendrecv(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt) {
    return sendrecv_any(g, send, to, recv, from, n, dt, NULL);
}

int wan_sendrecv_start(wan_group *g, const void *send, int to, void *recv, int from, size_t n, wan_dtype dt,
                       wan_comm_req *req) {
    *req = (wan_comm_req){0};
    return sendrecv_any(g, send, to, recv, from, n, dt, req);
}

int wan_reduce_start(wan_group *g, void *buf, size_t n, wan_dtype dt, int root, wan_comm_req *req) {
    *req = (wan_comm_req){0};
    return reduce_any(g, buf, n, dt, root, req);
}

int wan_comm_wait(wan_group *g, wan_comm_req *req) {
    if (!req->started) return 0;
    req->started = false;
    return g->comm->ops->wait(g, req->id);
}

int wan_comm_flush(wan_comm *c) { return c && c->ops && c->ops->flush ? c->ops->flush(c) : 0; }

int wan_send(wan_group *g, const void *buf, size_t n, wan_dtype dt, int peer) {
    WAN_TRY(usable(g, "send"));
    WAN_TRY(member(g, "send", "peer", peer));
    if (peer == g->rank) return wan_fail(WAN_ERR_USAGE, "send on %s[%d]: member %d sends to itself", g->name, g->index, peer);
    if (n == 0) return 0;
    WAN_TRY(g->comm->ops->send(g, buf, n, dt, peer));
    g->bytes_sent += bytes_of(n, dt);
    return 0;
}

int wan_recv(wan_group *g, void *buf, size_t n, wan_dtype dt, int peer) {
    WAN_TRY(usable(g, "recv"));
    WAN_TRY(member(g, "recv", "peer", peer));
    if (peer == g->rank)
        return wan_fail(WAN_ERR_USAGE, "recv on %s[%d]: member %d receives from itself", g->name, g->index, peer);
    if (n == 0) return 0;
    return g->comm->ops->recv(g, buf, n, dt, peer);
}

int wan_barrier(wan_group *g) {
    WAN_TRY(usable(g, "barrier"));
    if (g->size == 1) return 0;
    return g->comm->ops->barrier(g);
}

void wan_comm_abort(wan_comm *c, const char *why) {
    if (c && c->ops && c->ops->abort) c->ops->abort(c, why ? why : "(no reason given)");
}

int wan_group_init(wan_group *g, wan_comm *c, const char *name, int index, const int *ranks, int size) {
    memset(g, 0, sizeof *g);
    g->comm = c;
    snprintf(g->name, sizeof g->name, "%s", name);
    g->index = index;
    g->size = size;
    g->rank = -1;
    if (size < 1 || size > c->size || size > (int)(sizeof g->ranks / sizeof g->ranks[0]))
        return wan_fail(WAN_ERR_USAGE, "make_group %s[%d]: %d members, expected 1..%d", name, index, size, c->size);
    if (index < 0) return wan_fail(WAN_ERR_USAGE, "make_group %s[%d]: negative index", name, index);
    for (int i = 0; i < size; i++) {
        if (ranks[i] < 0 || ranks[i] >= c->size)
            return wan_fail(WAN_ERR_USAGE, "make_group %s[%d]: member %d is rank %d, outside 0..%d", name, index, i,
                            ranks[i], c->size - 1);
        for (int j = 0; j < i; j++)
            if (ranks[j] == ranks[i])
                return wan_fail(WAN_ERR_USAGE, "make_group %s[%d]: rank %d listed twice", name, index, ranks[i]);
        g->ranks[i] = ranks[i];
        if (ranks[i] == c->rank) g->rank = i;
    }
    return 0;
}
