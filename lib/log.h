/* Logs on stderr, one line each: "2026-11-25 16:04:05.123 [r3] info: message".
 * The level comes from WAN_LOG_LEVEL (debug|info|warn|error), default info. */
#ifndef WAN_LOG_H
#define WAN_LOG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { WAN_LOG_DEBUG, WAN_LOG_INFO, WAN_LOG_WARN, WAN_LOG_ERROR } wan_log_level;

void wan_log(wan_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void wan_log_set_rank(int rank);    /* shown as [rN]; -1 (the default) hides it */
void wan_log_set_level(wan_log_level level);
bool wan_log_enabled(wan_log_level level);

#define wan_debug(...) wan_log(WAN_LOG_DEBUG, __VA_ARGS__)
#define wan_info(...) wan_log(WAN_LOG_INFO, __VA_ARGS__)
#define wan_warn(...) wan_log(WAN_LOG_WARN, __VA_ARGS__)

/* Seconds since an arbitrary point (CLOCK_MONOTONIC). */
double wan_now(void);

/* Progress of long work: a bar with rate and ETA when stderr is a terminal, otherwise a
 * plain log line every `interval` seconds (Slurm logs). Units are whatever the caller counts
 * (bytes when bytes=true: shown as MB and MB/s). */
typedef struct {
    const char *what;
    uint64_t total, done;
    bool bytes, tty;
    double start, last_print, interval;
} wan_progress;

void wan_progress_begin(wan_progress *p, const char *what, uint64_t total, bool bytes);
void wan_progress_add(wan_progress *p, uint64_t n); /* not thread-safe: call from one thread */
void wan_progress_end(wan_progress *p);

#endif
