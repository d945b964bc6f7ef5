/* cuDNN fused attention graphs (lib/cuda/sdpa_cudnn.c), built as far as this machine allows.
 * Without a GPU (CI): every tensor, operation and operation graph must finalise, and an sm_90
 * engine must accept each graph (checked against cuDNN's description of an H100). With a GPU:
 * execution plans too. Built with CUDA=0 it has nothing to test. */
#include "test.h"

#ifdef WAN_CUDA
#include "cuda/sdpa_cudnn.h"
#include "error.h"

static char report[16384];

/* Lines of text holding needle (and needle2, when not NULL). */
static int count_lines(const char *text, const char *needle, const char *needle2) {
    int n = 0;
    char line[4096];
    for (const char *p = text; *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len >= sizeof line) len = sizeof line - 1;
        memcpy(line, p, len);
        line[len] = 0;
        if (strstr(line, needle) && (!needle2 || strstr(line, needle2))) n++;
        p = end ? end + 1 : p + len;
    }
    return n;
}

static int count_lines_with(const char *text, const char *needle) { return count_lines(text, needle, NULL); }

/* Build all six graphs (forward unified and composite, backward; no mask and padding mask). */
static void check_shape_builds(int B, int H, int Sq, int Skv, int hd) {
    wan_error_clear();
    int rc = wan_sdpa_selftest_build(B, H, Sq, Skv, hd, report, sizeof report);
    printf("%s", report);
    CHECKF(rc == 0, "B=%d H=%d Sq=%d Skv=%d hd=%d: %s", B, H, Sq, Skv, hd, wan_errmsg());
    /* the single forward operation is skipped, not failed, on a cuDNN older than it (9.13.1, its
     * padding 9.15.0): never on a newer one */
    int major = 0, minor = 0, patch = 0;
    CHECK(sscanf(report, "cuDNN %d.%d.%d", &major, &minor, &patch) == 3);
    int version = major * 10000 + minor * 100 + patch, skipped = count_lines_with(report, "skipped: ");
    CHECKF(version < 91500 || skipped == 0, "cuDNN %d: %d graphs skipped", version, skipped);
    int graphs = (Skv > 1 ? 6 : 3) - skipped;
    CHECKF(count_lines_with(report, "operation graph finalised") == graphs, "%d of %d graphs finalised",
           count_lines_with(report, "operation graph finalised"), graphs);
    CHECK(count_lines_with(report, "FAILED") == 0);
    if (strstr(report, "no GPU")) {
        /* device-less: every graph reached the engine check, and some engine took each */
        CHECK(count_lines_with(report, "device description (H100, sm_90) finalised") == 1);
        CHECK(count_lines_with(report, "sm_90 engines accepting the graph:") == graphs);
        CHECK(count_lines_with(report, "accepting the graph: none") == 0);
        CHECK(strstr(report, "needs a GPU:") != NULL);
    } else {
        /* a GPU: the backward always gets a plan; the forward through one of its two graphs */
        int masks = Skv > 1 ? 2 : 1;
        CHECK(count_lines(report, "backward", "plan on engine") == masks);
        CHECK(count_lines(report, "forward", "plan on engine") >= masks);
    }
}

/* The 14B model's self-attention over a whole sample's video tokens: 40 heads of 128. */
static void test_video_self_attention_14b(void) { check_shape_builds(1, 40, 37440, 37440, 128); }

/* One context-parallel block of it (cp = 4): the backward gets the final out/lse of the block. */
static void test_context_parallel_block(void) { check_shape_builds(1, 40, 9360, 9360, 128); }

/* Cross-attention of the 1.3B model (12 heads) to the 512 text tokens, two samples. */
static void test_cross_attention_1_3b(void) { check_shape_builds(2, 12, 32760, 512, 128); }

/* head_dim 64, a ragged sequence length (not a multiple of 64 or 128). */
static void test_head_dim_64(void) { check_shape_builds(3, 4, 1000, 777, 64); }

/* Shapes cuDNN cannot take are refused before any descriptor is built, with a message. */
static void test_rejects_unsupported_shapes(void) {
    wan_error_clear();
    CHECK(wan_sdpa_selftest_build(1, 2, 64, 64, 12, report, sizeof report) != 0);
    CHECKF(strstr(wan_errmsg(), "head_dim 12") != NULL, "%s", wan_errmsg());
    wan_error_clear();
    CHECK(wan_sdpa_selftest_build(1, 2, 64, 64, 264, report, sizeof report) != 0);
    CHECKF(strstr(wan_errmsg(), "head_dim 264") != NULL, "%s", wan_errmsg());
    wan_error_clear();
    CHECK(wan_sdpa_selftest_build(1, 2, 1, 1, 128, report, sizeof report) != 0);
    CHECKF(strstr(wan_errmsg(), "Sq = Skv = 1") != NULL, "%s", wan_errmsg());
    wan_error_clear();
    CHECK(wan_sdpa_selftest_build(0, 2, 64, 64, 128, report, sizeof report) != 0);
    CHECKF(strstr(wan_errmsg(), "bad shape") != NULL, "%s", wan_errmsg());
}

/* Without a cuDNN handle there is nothing to run on: a clear error, no object. */
static void test_create_needs_handle(void) {
    wan_error_clear();
    wan_sdpa *s = (wan_sdpa *)&report; /* must be overwritten with NULL */
    CHECK(wan_sdpa_create(NULL, NULL, NULL, NULL, NULL, &s) != 0);
    CHECK(s == NULL);
    CHECKF(strstr(wan_errmsg(), "handle") != NULL, "%s", wan_errmsg());
    wan_sdpa_destroy(NULL); /* a no-op */
}

int main(void) {
    RUN(test_video_self_attention_14b);
    RUN(test_context_parallel_block);
    RUN(test_cross_attention_1_3b);
    RUN(test_head_dim_64);
    RUN(test_rejects_unsupported_shapes);
    RUN(test_create_needs_handle);
    return test_summary();
}

#else

int main(void) {
    (void)test_cur, (void)test_cur_failed; /* CUDA=0: nothing to test */
    return test_summary();
}

#endif
