/* Resharding round trips between every pair of layouts (weights, fp32 masters, both AdamW
 * moments), bit-exact, plus the refusals: layouts the model cannot take, corrupt, truncated
 * and incomplete sources. Source checkpoints are written through the trainer's writer path
 * (wan_layout_write_rank) with random, never-zero content. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_layout.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "reshard.h"
#include "test.h"

static char root[512];

/* tp1, tp2, tp4, tp2 dp2 (ZeRO over 2), dp3 (uneven ZeRO cuts), pp2, tp2 pp2, cp2 dp2 (ZeRO over cp too) */
static const char *layouts[] = {"tp=1", "tp=2", "tp=4", "tp=2,dp=2", "dp=3", "pp=2", "tp=2,pp=2", "cp=2,dp=2"};
#define NL (int)(sizeof layouts / sizeof *layouts)

static wan_config test_cfg(void) {
    wan_config c;
    wan_config_defaults(&c);
    c.model.num_heads = 4; /* tp4 */
    c.model.text_dim = 4096; /* text_embedding.0.weight: 1 MiB, larger than the small-budget chunks below */
    return c;
}

static wan_rs_params io(int threads, uint64_t budget) {
    wan_rs_params p = {budget, threads, "test", true};
    return p;
}

static char *path_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *path_of(const char *fmt, ...) {
    static char bufs[8][1024];
    static int k;
    char *b = bufs[k++ % 8];
    int n = snprintf(b, 1024, "%s/", root);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b + n, (size_t)(1024 - n), fmt, ap);
    va_end(ap);
    return b;
}

static int make(const char *dir, const char *layout, unsigned kinds, wan_dtype wdt) {
    wan_config c = test_cfg();
    wan_ckpt_layout L;
    if (wan_layout_parse(layout, &L)) return 1;
    return wan_rs_make_synthetic(dir, 7, &c, &L, kinds, wdt, 42);
}

static bool same_file(const char *a, const char *b) {
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    bool ok = !wan_read_file(a, &x, &nx) && !wan_read_file(b, &y, &ny) && nx == ny && !memcmp(x, y, nx);
    if (!ok) fprintf(stderr, "  %s and %s differ\n", a, b);
    free(x);
    free(y);
    return ok;
}

/* Every file of checkpoint a (meta.json, rank files, piece lists) equals b's. */
static bool same_ckpt(const char *a, const char *b, int world) {
    char x[1200], y[1200];
    snprintf(x, sizeof x, "%s/meta.json", a);
    snprintf(y, sizeof y, "%s/meta.json", b);
    bool ok = same_file(x, y);
    for (int r = 0; r < world && ok; r++) {
        snprintf(x, sizeof x, "%s/rank%05d.bin", a, r);
        snprintf(y, sizeof y, "%s/rank%05d.bin", b, r);
        ok = same_file(x, y);
        snprintf(x, sizeof x, "%s/rank%05d.json", a, r);
        snprintf(y, sizeof y, "%s/rank%05d.json", b, r);
        ok = ok && same_file(x, y);
    }
    return ok;
}

static int convert(const char *src, const char *dst, const char *layout, wan_rs_params p) {
    wan_reshard_opts o;
    memset(&o, 0, sizeof o);
    if (wan_layout_parse(layout, &o.layout)) return 2;
    o.io = p;
    return wan_reshard_convert(src, dst, &o, NULL);
}

static int digests(const char *dir, uint64_t **out, int *n, wan_ckpt *keep) {
    wan_ckpt c;
    if (wan_ckpt_open(&c, dir)) return 1;
    *out = calloc((size_t)c.nt, sizeof **out);
    *n = c.nt;
    wan_rs_params p = io(2, 64u << 20);
    int rc = wan_rs_digests(&c, &p, *out);
    *keep = c;
    return rc;
}

static void test_layout_parse(void) {
    wan_ckpt_layout L;
    CHECK(wan_layout_parse("tp=2,cp=2,dp=4,pp=2,sp=1", &L) == 0);
    CHECK(L.tp == 2 && L.cp == 2 && L.dp == 4 && L.pp == 2 && L.world == 32 && L.sp);
    CHECK(wan_layout_parse("dp=3", &L) == 0 && L.tp == 1 && L.dp == 3 && L.world == 3 && !L.sp);
    CHECK(wan_layout_parse("tp=1,sp=1", &L) == 0 && !L.sp); /* sp means nothing without tp */
    CHECK(wan_layout_parse("tp=0", &L) == WAN_ERR_USAGE);
    CHECK(wan_layout_parse("tq=2", &L) == WAN_ERR_USAGE && strstr(wan_errmsg(), "unknown key 'tq'"));
    CHECK(wan_layout_parse("tp=2x", &L) == WAN_ERR_USAGE);
    CHECK(wan_layout_parse("fsdp=2", &L) == WAN_ERR_USAGE);
    wan_config c = test_cfg();
    wan_layout_parse("tp=3", &L);
    CHECK(wan_layout_check(&c.model, &L) == WAN_ERR_USAGE && strstr(wan_errmsg(), "num_heads"));
    wan_layout_parse("pp=3", &L);
    CHECK(wan_layout_check(&c.model, &L) == WAN_ERR_USAGE && strstr(wan_errmsg(), "num_layers"));
    wan_error_clear();
}

/* Each rank's held pieces tile its flat buffer; written pieces of all ranks tile every tensor once. */
static void test_layout_pieces(void) {
    wan_config c = test_cfg();
    for (int l = 0; l < NL; l++) {
        wan_ckpt_layout L;
        wan_layout_parse(layouts[l], &L);
        int64_t written[WAN_CKPT_KINDS] = {0}, global = 0;
        for (int r = 0; r < L.world; r++) {
            wan_grid_pos g;
            wan_layout_position(&L, r, &g);
            wan_param_set ps;
            CHECK(wan_layout_params(&c.model, &g, &ps) == 0);
            if (r == 0) global = wan_params_count_global(&ps);
            wan_layout_piece *pc;
            int n;
            CHECK(wan_layout_pieces(&ps, &g, WAN_KINDS_ALL, false, &pc, &n) == 0);
            for (int i = 0; i < n; i++) {
                written[pc[i].kind] += pc[i].numel;
                CHECK(pc[i].numel == wan_numel(ps.p[pc[i].param].ndim, pc[i].box.shape));
            }
            free(pc);
            /* held optimizer pieces are exactly the rank's ZeRO slice minus padding */
            CHECK(wan_layout_pieces(&ps, &g, WAN_KIND_BIT(1), true, &pc, &n) == 0);
            int64_t lo, hi, held = 0;
            wan_layout_zero_range(&ps, &g, &lo, &hi);
            for (int i = 0; i < n; i++) {
                CHECK(pc[i].flat >= lo && pc[i].flat + pc[i].numel <= hi);
                held += pc[i].numel;
            }
            int64_t present = 0;
            for (int i = 0; i < ps.n; i++)
                if (ps.p[i].present) {
                    int64_t a = ps.p[i].offset > lo ? ps.p[i].offset : lo;
                    int64_t b = ps.p[i].offset + ps.p[i].numel < hi ? ps.p[i].offset + ps.p[i].numel : hi;
                    if (b > a) present += b - a;
                }
            CHECK(held == present);
            free(pc);
            wan_params_free(&ps);
        }
        for (int k = 0; k < WAN_CKPT_KINDS; k++)
            CHECKF(written[k] == global, "%s kind %d: %lld of %lld", layouts[l], k, (long long)written[k],
                   (long long)global);
    }
}

/* A -> B equals B as written at B; A -> B -> A equals A; A -> B read as full tensors equals A. */
static void test_round_trips_all_pairs(void) {
    uint64_t *ref = NULL;
    int nref = 0;
    wan_ckpt refc;
    for (int a = 0; a < NL; a++) {
        CHECK(make(path_of("src%d", a), layouts[a], WAN_KINDS_ALL, WAN_F32) == 0);
        uint64_t *d;
        int n;
        wan_ckpt c;
        CHECK(digests(path_of("src%d", a), &d, &n, &c) == 0);
        if (a == 0) {
            ref = d, nref = n, refc = c;
            CHECK(n == 4 * 69); /* every tensor of the tiny model, 4 kinds */
            continue;
        }
        /* the same global tensors at every layout */
        CHECK(n == nref);
        for (int i = 0; i < n && i < nref; i++) {
            const wan_ckpt_tensor *t = wan_ckpt_find(&refc, c.t[i].name, c.t[i].kind);
            CHECKF(t && ref[t - refc.t] == d[i], "%s (%s) at %s", c.t[i].name, wan_ckpt_kind_names[c.t[i].kind],
                   layouts[a]);
        }
        wan_ckpt_close(&c);
        free(d);
    }
    int pairs = 0;
    for (int a = 0; a < NL; a++)
        for (int b = 0; b < NL; b++) {
            if (a == b) continue;
            wan_ckpt_layout La, Lb;
            wan_layout_parse(layouts[a], &La);
            wan_layout_parse(layouts[b], &Lb);
            char *ab = path_of("ab_%d_%d", a, b), *aba = path_of("aba_%d_%d", a, b);
            int rc = convert(path_of("src%d", a), ab, layouts[b], io(2, 64u << 20));
            CHECKF(rc == 0, "%s -> %s: %s", layouts[a], layouts[b], wan_errmsg());
            if (rc) continue;
            CHECKF(same_ckpt(ab, path_of("src%d/step_00000007", b), Lb.world), "%s -> %s is not what a run at %s writes",
                   layouts[a], layouts[b], layouts[b]);
            rc = convert(ab, aba, layouts[a], io(1, 64u << 20));
            CHECKF(rc == 0, "%s -> %s -> %s: %s", layouts[a], layouts[b], layouts[a], wan_errmsg());
            if (!rc)
                CHECKF(same_ckpt(aba, path_of("src%d/step_00000007", a), La.world), "%s -> %s -> %s differs from the source",
                       layouts[a], layouts[b], layouts[a]);
            uint64_t *d;
            int n;
            wan_ckpt c;
            CHECK(digests(ab, &d, &n, &c) == 0);
            bool same = n == nref;
            for (int i = 0; i < n && same; i++) {
                const wan_ckpt_tensor *t = wan_ckpt_find(&refc, c.t[i].name, c.t[i].kind);
                same = t && ref[t - refc.t] == d[i];
            }
            CHECKF(same, "%s -> %s read as full tensors differs", layouts[a], layouts[b]);
            wan_ckpt_close(&c);
            free(d);
            wan_rm_rf(ab);
            wan_rm_rf(aba);
            pairs++;
        }
    CHECK(pairs == NL * (NL - 1));
    wan_ckpt_close(&refc);
    free(ref);
}

/* Streaming in chunks smaller than the pieces, one thread or several: the same bytes. */
static void test_small_budget_and_threads(void) {
    CHECK(make(path_of("sb_src"), "tp=1", WAN_KINDS_ALL, WAN_F32) == 0);
    CHECK(make(path_of("sb_ref"), "tp=4,dp=2", WAN_KINDS_ALL, WAN_F32) == 0);
    int threads[] = {1, 3};
    for (int i = 0; i < 2; i++) {
        char *dst = path_of("sb_out%d", i);
        wan_rs_stats st;
        memset(&st, 0, sizeof st);
        wan_reshard_opts o;
        memset(&o, 0, sizeof o);
        wan_layout_parse("tp=4,dp=2", &o.layout);
        o.io = io(threads[i], 3u << 20);
        CHECKF(wan_reshard_convert(path_of("sb_src"), dst, &o, &st) == 0, "%s", wan_errmsg());
        CHECK(same_ckpt(dst, path_of("sb_ref/step_00000007"), 8));
        CHECKF(st.buffer_bytes <= (3u << 20), "buffers %llu", (unsigned long long)st.buffer_bytes);
        /* the 1 MiB tensor went through in chunks */
        CHECKF(st.buffer_bytes / (uint64_t)threads[i] / 2 < (1u << 20), "buffers %llu", (unsigned long long)st.buffer_bytes);
        CHECK(st.bytes_written > 0 && st.bytes_read >= st.bytes_written / 2);
    }
    /* a budget below the minimum is refused before anything is written */
    wan_reshard_opts o;
    memset(&o, 0, sizeof o);
    wan_layout_parse("tp=2", &o.layout);
    o.io = io(4, 1u << 20);
    CHECK(wan_reshard_convert(path_of("sb_src"), path_of("sb_tiny"), &o, NULL) == WAN_ERR_USAGE);
    CHECK(strstr(wan_errmsg(), "memory-budget") != NULL);
    CHECK(!wan_path_exists(path_of("sb_tiny")));
    wan_error_clear();
}

/* Weights-only checkpoints (imported) and bf16 weights keep their kinds and types. */
static void test_weights_only_and_bf16(void) {
    CHECK(make(path_of("wo_src"), "tp=2", WAN_KINDS_MODEL, WAN_BF16) == 0);
    CHECK(make(path_of("wo_ref"), "tp=4,pp=2", WAN_KINDS_MODEL, WAN_BF16) == 0);
    CHECK(convert(path_of("wo_src"), path_of("wo_out"), "tp=4,pp=2", io(2, 64u << 20)) == 0);
    CHECK(same_ckpt(path_of("wo_out"), path_of("wo_ref/step_00000007"), 8));
    wan_ckpt c;
    CHECK(wan_ckpt_open(&c, path_of("wo_out")) == 0);
    unsigned kinds = 0;
    CHECK(wan_rs_check_tensors(&c, &c.cfg.model, &kinds) == 0 && kinds == WAN_KINDS_MODEL);
    CHECK(c.nt == 69 && c.t[0].dtype == WAN_BF16);
    wan_ckpt_close(&c);
}

static bool no_leftovers(const char *prefix) {
    /* neither the target nor any temporary of it */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "ls -d %s/%s* >/dev/null 2>&1", root, prefix);
    return system(cmd) != 0;
}

static void test_refusals(void) {
    CHECK(make(path_of("bad_src"), "tp=2,dp=2", WAN_KINDS_ALL, WAN_F32) == 0);
    /* layouts the model cannot take: nothing written */
    CHECK(convert(path_of("bad_src"), path_of("bad_tp3"), "tp=3", io(2, 64u << 20)) == WAN_ERR_USAGE);
    CHECK(strstr(wan_errmsg(), "num_heads = 4 is not divisible by tp = 3") != NULL);
    CHECK(no_leftovers("bad_tp3"));
    CHECK(convert(path_of("bad_src"), path_of("bad_pp3"), "pp=3", io(2, 64u << 20)) == WAN_ERR_USAGE);
    CHECK(strstr(wan_errmsg(), "num_layers") != NULL);
    CHECK(no_leftovers("bad_pp3"));
    /* an existing target is not replaced without force */
    CHECK(wan_mkdir_p(path_of("bad_exists")) == 0);
    CHECK(convert(path_of("bad_src"), path_of("bad_exists"), "tp=1", io(2, 64u << 20)) == WAN_ERR_USAGE);

    /* a flipped byte in the middle of a piece: checksum error naming file and tensor; no target */
    CHECK(make(path_of("flip_src"), "tp=2,dp=2", WAN_KINDS_ALL, WAN_F32) == 0);
    char *bin = path_of("flip_src/step_00000007/rank00002.bin");
    FILE *f = fopen(bin, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, 4001, SEEK_SET);
        int ch = fgetc(f);
        fseek(f, 4001, SEEK_SET);
        fputc(ch ^ 0x10, f);
        fclose(f);
    }
    int rc = convert(path_of("flip_src"), path_of("flip_out"), "tp=1", io(2, 64u << 20));
    CHECK(rc == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "checksum mismatch") && strstr(wan_errmsg(), "rank00002.bin"), "%s", wan_errmsg());
    CHECK(no_leftovers("flip_out"));
    wan_ckpt c;
    CHECK(wan_ckpt_open(&c, path_of("flip_src")) == 0);
    wan_rs_params p = io(2, 64u << 20);
    CHECK(wan_rs_verify_ckpt(&c, &p, NULL) == WAN_ERR_RUNTIME && strstr(wan_errmsg(), "checksum mismatch"));
    wan_ckpt_close(&c);
    CHECK(wan_ckpt_open(&c, path_of("flip_src")) == 0);
    CHECK(wan_ckpt_verify(&c) == WAN_ERR_RUNTIME && strstr(wan_errmsg(), "rank00002.bin"));
    wan_ckpt_close(&c);

    /* a truncated rank file */
    CHECK(make(path_of("trunc_src"), "tp=2", WAN_KINDS_ALL, WAN_F32) == 0);
    CHECK(truncate(path_of("trunc_src/step_00000007/rank00001.bin"), 1000) == 0);
    CHECK(convert(path_of("trunc_src"), path_of("trunc_out"), "tp=1", io(2, 64u << 20)) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "truncated") && strstr(wan_errmsg(), "rank00001.bin"), "%s", wan_errmsg());
    CHECK(no_leftovers("trunc_out"));

    /* a missing rank file */
    CHECK(make(path_of("miss_src"), "tp=2", WAN_KINDS_ALL, WAN_F32) == 0);
    CHECK(unlink(path_of("miss_src/step_00000007/rank00001.bin")) == 0);
    CHECK(convert(path_of("miss_src"), path_of("miss_out"), "tp=1", io(2, 64u << 20)) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "rank00001.bin") != NULL, "%s", wan_errmsg());
    CHECK(no_leftovers("miss_out"));

    /* a config that does not match the tensors: a layer fewer */
    CHECK(make(path_of("cfg_src"), "tp=1", WAN_KINDS_ALL, WAN_F32) == 0);
    char *meta = path_of("cfg_src/step_00000007/meta.json"), *text = NULL;
    size_t len;
    CHECK(wan_read_file(meta, &text, &len) == 0);
    char *at = text ? strstr(text, "num_layers = 2") : NULL;
    CHECK(at != NULL);
    if (at) {
        at[13] = '1';
        CHECK(wan_write_file_atomic(meta, text, len) == 0);
    }
    free(text);
    CHECK(convert(path_of("cfg_src"), path_of("cfg_out"), "tp=2", io(2, 64u << 20)) == WAN_ERR_RUNTIME);
    CHECKF(strstr(wan_errmsg(), "blocks.1.") && strstr(wan_errmsg(), "not a parameter"), "%s", wan_errmsg());
    CHECK(no_leftovers("cfg_out"));
    wan_error_clear();
}

int main(void) {
    wan_log_set_level(WAN_LOG_ERROR);
    /* many small fsync-heavy commits: memory-backed /dev/shm keeps the test fast */
    const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : wan_is_dir("/dev/shm") ? "/dev/shm" : "/tmp";
    snprintf(root, sizeof root, "%s/wan-test-reshard.XXXXXX", base);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_layout_parse);
    RUN(test_layout_pieces);
    RUN(test_round_trips_all_pairs);
    RUN(test_small_budget_and_threads);
    RUN(test_weights_only_and_bf16);
    RUN(test_refusals);
    wan_rm_rf(root);
    return test_summary();
}
