/* Shared by the emulation build's pieces (tests/emu): the runtime's sticky "last error", which a
 * failed kernel launch sets the way the real runtime does. */
#ifndef WAN_EMU_H
#define WAN_EMU_H

#ifdef __cplusplus
extern "C" {
#endif

/* Record a cudaError_t as the last error (kept until cudaGetLastError reads it). */
void wan_emu_set_error(int e);

#ifdef __cplusplus
}
#endif

#endif
