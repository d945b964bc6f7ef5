/* Shared by the emulation build's pieces (tests/emu): the runtime's sticky "last error", which a
 * failed kernel launch sets the way the real runtime does. */
#ifndef WAN_EMU_H
#define WAN_EMU_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Record a cudaError_t as the last error (kept until cudaGetLastError reads it). */
void wan_emu_set_error(int e);

/* Work queued on a stream by another thread (the NCCL stand-in): a ticket for it (0 for the NULL
 * stream), its completion (tickets complete in order), and the wait for its turn: until the
 * work before `ticket` completed and then, when lazy_s > 0, until a caller blocks on this work
 * (cudaStreamWaitEvent, ...) or lazy_s seconds have passed; stop(arg) non-zero ends the wait
 * (polled). */
uint64_t wan_emu_stream_enqueue(void *stream);
void wan_emu_stream_complete(void *stream, uint64_t ticket);
void wan_emu_stream_wait_turn(void *stream, uint64_t ticket, double lazy_s, int (*stop)(void *), void *arg);

/* Device work issued by the host (kernel launch, copy, memset, matmul, cuDNN execution): counted,
 * so that the NCCL stand-in can check that a stream it queues on is ordered after all of it
 * (cudaStreamWaitEvent on an event recorded since). Returns how much the stream is not. */
void wan_emu_compute_op(void);
uint64_t wan_emu_stream_unordered(void *stream);

#ifdef __cplusplus
}
#endif

#endif
