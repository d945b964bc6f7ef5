#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int log_rank = -1;
static int log_level = -1;

static const char *level_name[] = {"debug", "info", "warn", "error"};

static int current_level(void) {
    if (log_level < 0) {
        const char *e = getenv("WAN_LOG_LEVEL");
        log_level = WAN_LOG_INFO;
        for (int i = 0; e && i < 4; i++)
            if (!strcmp(e, level_name[i])) log_level = i;
    }
    return log_level;
}

void wan_log_set_rank(int rank) { log_rank = rank; }
void wan_log_set_level(wan_log_level level) { log_level = (int)level; }
bool wan_log_enabled(wan_log_level level) { return (int)level >= current_level(); }

void wan_log(wan_log_level level, const char *fmt, ...) {
    if ((int)level < current_level()) return;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char line[8192];
    int n = (int)strftime(line, sizeof line, "%Y-%m-%d %H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03d ", (int)(tv.tv_usec / 1000));
    if (log_rank >= 0) n += snprintf(line + n, sizeof line - (size_t)n, "[r%d] ", log_rank);
    n += snprintf(line + n, sizeof line - (size_t)n, "%s: ", level_name[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = (m < 0 || (size_t)(n + m) >= sizeof line - 1) ? (int)sizeof line - 2 : n + m;
    line[n++] = '\n';
    /* One write per line, so lines of concurrent ranks do not interleave. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

double wan_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void wan_progress_begin(wan_progress *p, const char *what, uint64_t total, bool bytes) {
    memset(p, 0, sizeof *p);
    p->what = what;
    p->total = total;
    p->bytes = bytes;
    p->tty = isatty(STDERR_FILENO) && getenv("WAN_NO_BAR") == NULL;
    p->start = p->last_print = wan_now();
    p->interval = p->tty ? 0.1 : 5.0;
}

static void fmt_amount(char *buf, size_t n, double v, bool bytes) {
    if (bytes) snprintf(buf, n, "%.1f MB", v / 1e6);
    else snprintf(buf, n, "%.0f", v);
}

static void progress_print(wan_progress *p, bool final) {
    double el = wan_now() - p->start;
    double rate = el > 0 ? (double)p->done / el : 0;
    double eta = (rate > 0 && p->total > p->done) ? (double)(p->total - p->done) / rate : 0;
    char done[32], total[32], rs[32];
    fmt_amount(done, sizeof done, (double)p->done, p->bytes);
    fmt_amount(total, sizeof total, (double)p->total, p->bytes);
    if (p->bytes) snprintf(rs, sizeof rs, "%.1f MB/s", rate / 1e6);
    else snprintf(rs, sizeof rs, "%.1f/s", rate);
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    if (p->tty) {
        char bar[31];
        int filled = (int)(frac * 30);
        for (int i = 0; i < 30; i++) bar[i] = i < filled ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%s [%s] %5.1f%% %s/%s %s ETA %.0fs   %s", p->what, bar, 100 * frac, done,
                total, rs, eta, final ? "\n" : "");
        fflush(stderr);
    } else {
        wan_info("%s: %.1f%% %s/%s %s elapsed %.0fs ETA %.0fs", p->what, 100 * frac, done, total, rs,
                 el, eta);
    }
}

void wan_progress_add(wan_progress *p, uint64_t n) {
    p->done += n;
    double t = wan_now();
    if (t - p->last_print >= p->interval) {
        p->last_print = t;
        progress_print(p, false);
    }
}

void wan_progress_end(wan_progress *p) { progress_print(p, true); }
