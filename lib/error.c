#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static _Thread_local char err_msg[4096];
static _Thread_local char err_where[256];

static int vrecord(const char *file, int line, int code, int errnum, const char *fmt, va_list ap) {
    char buf[sizeof err_msg];
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    if (errnum && n >= 0 && (size_t)n < sizeof buf)
        snprintf(buf + n, sizeof buf - (size_t)n, ": %s", strerror(errnum));
    memcpy(err_msg, buf, sizeof buf);
    snprintf(err_where, sizeof err_where, "%s:%d", file, line);
    return code;
}

int wan_fail_at(const char *file, int line, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vrecord(file, line, code, 0, fmt, ap);
    va_end(ap);
    return code;
}

int wan_fail_errno_at(const char *file, int line, int code, const char *fmt, ...) {
    int errnum = errno;
    va_list ap;
    va_start(ap, fmt);
    vrecord(file, line, code, errnum, fmt, ap);
    va_end(ap);
    return code;
}

int wan_error_context(int code, const char *fmt, ...) {
    char prefix[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    char buf[sizeof err_msg];
    size_t n = strlen(prefix);
    if (n > sizeof buf - 3) n = sizeof buf - 3;
    memcpy(buf, prefix, n);
    buf[n++] = ':';
    buf[n++] = ' ';
    size_t m = strlen(err_msg);
    if (m > sizeof buf - 1 - n) m = sizeof buf - 1 - n;
    memcpy(buf + n, err_msg, m);
    buf[n + m] = 0;
    memcpy(err_msg, buf, sizeof buf);
    return code;
}

const char *wan_errmsg(void) { return err_msg; }
const char *wan_errwhere(void) { return err_where; }

void wan_error_clear(void) {
    err_msg[0] = 0;
    err_where[0] = 0;
}

void wan_error_print(const char *prog) {
    if (err_where[0])
        wan_log(WAN_LOG_ERROR, "%s: %s [%s]", prog, err_msg[0] ? err_msg : "unknown error", err_where);
    else
        wan_log(WAN_LOG_ERROR, "%s: %s", prog, err_msg[0] ? err_msg : "unknown error");
}

void wan_assert_fail(const char *file, int line, const char *cond) {
    wan_log(WAN_LOG_ERROR, "internal error: assertion '%s' failed [%s:%d]", cond, file, line);
    abort();
}
