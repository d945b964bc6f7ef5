/* One error module for the whole toolkit.
 * Library functions return 0 on success or an exit-class code (WAN_ERR_RUNTIME,
 * WAN_ERR_USAGE) after recording a message with wan_fail(); programs decide to exit.
 * The message is thread-local, so worker threads can fail independently. */
#ifndef WAN_ERROR_H
#define WAN_ERROR_H

#include <stddef.h>

enum {
    WAN_OK = 0,
    WAN_ERR_RUNTIME = 1, /* exit 1: the work failed (I/O, corrupt data, a peer died) */
    WAN_ERR_USAGE = 2,   /* exit 2: bad command line or configuration */
};

/* Record a message (printf-style) and return code. file/line name the code that failed. */
int wan_fail_at(const char *file, int line, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Same, with ": strerror(errno)" appended. */
int wan_fail_errno_at(const char *file, int line, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Prepend context to the current message ("reading shard x: " + message). Returns code. */
int wan_error_context(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

const char *wan_errmsg(void);  /* the recorded message ("" if none) */
const char *wan_errwhere(void); /* "file.c:123" of the first failure */
void wan_error_clear(void);

/* Print "prog: error: message [file:line]" on stderr (through the logger). */
void wan_error_print(const char *prog);

#define wan_fail(code, ...) wan_fail_at(__FILE__, __LINE__, (code), __VA_ARGS__)
#define wan_fail_errno(code, ...) wan_fail_errno_at(__FILE__, __LINE__, (code), __VA_ARGS__)

/* Propagate a non-zero return code. */
#define WAN_TRY(expr)                                                                               \
    do {                                                                                           \
        int wan_rc_ = (expr);                                                                      \
        if (wan_rc_) return wan_rc_;                                                               \
    } while (0)

/* A system call that returns -1 (or NULL) and sets errno: record "call: strerror" with file:line. */
#define WAN_SYS(expr)                                                                              \
    do {                                                                                           \
        if ((expr) == -1) return wan_fail_errno(WAN_ERR_RUNTIME, "%s", #expr);                     \
    } while (0)

/* An internal invariant; failing it is a bug in this toolkit, reported with its location. */
#define WAN_ASSERT(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) wan_assert_fail(__FILE__, __LINE__, #cond);                                   \
    } while (0)
_Noreturn void wan_assert_fail(const char *file, int line, const char *cond);

#endif
