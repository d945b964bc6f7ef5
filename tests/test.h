/* A small test harness: TEST functions with CHECK macros; main runs them with RUN() and ends
 * with test_summary(), whose last line "N passed, M failed" is what tests/run.sh counts. */
#ifndef WAN_TEST_H
#define WAN_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed, test_failed, test_cur_failed;
static const char *test_cur;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            test_cur_failed++;                                                                     \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);             \
        }                                                                                          \
    } while (0)

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            test_cur_failed++;                                                                     \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);             \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

/* |a - b| <= tol * max(1, |b|) */
#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double ta_ = (double)(a), tb_ = (double)(b);                                               \
        double sc_ = fabs(tb_) > 1 ? fabs(tb_) : 1;                                                \
        if (!(fabs(ta_ - tb_) <= (tol) * sc_)) {                                                   \
            test_cur_failed++;                                                                     \
            fprintf(stderr, "  %s:%d: %s = %.9g, expected %s = %.9g (tol %g)\n", __FILE__,         \
                    __LINE__, #a, ta_, #b, tb_, (double)(tol));                                    \
        }                                                                                          \
    } while (0)

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        test_cur = #fn;                                                                            \
        test_cur_failed = 0;                                                                       \
        fn();                                                                                      \
        if (test_cur_failed) {                                                                     \
            test_failed++;                                                                         \
            printf("FAIL %s\n", #fn);                                                              \
        } else {                                                                                   \
            test_passed++;                                                                         \
            printf("ok   %s\n", #fn);                                                              \
        }                                                                                          \
        fflush(stdout);                                                                            \
    } while (0)

static inline int test_summary(void) {
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

#endif
