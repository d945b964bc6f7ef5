/* Datasets: round trips (bit-exact for bf16 inputs, correctly rounded for fp32), corruption in
 * each region detected and named, and the loader's order: every sample once per epoch, the
 * same global batches for dp = 1..4, resumable at any position with any dp, prefetch-neutral,
 * buckets of one shape, deterministic replacement of corrupt samples. */
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "dataset_build.h"
#include "dataset_format.h"
#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "rng.h"
#include "safetensors.h"
#include "test.h"

static char tmpdir[256];
enum { TL = 24, TD = 32 }; /* text rows and width of the test data */

/* Synthetic inputs in dir/in (dtype, shapes) converted into dir/ds. */
static int make_dataset(const char *name, int64_t count, int nshapes, const int (*shapes)[3], wan_dtype dtype,
                        bool keep, uint64_t shard_bytes) {
    char dir[512], in[600], ds[600], man[700];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    snprintf(in, sizeof in, "%s/in", dir);
    snprintf(ds, sizeof ds, "%s/ds", dir);
    snprintf(man, sizeof man, "%s/manifest.jsonl", in);
    wan_synth_opts so;
    wan_synth_defaults(&so);
    so.out_dir = in;
    so.count = count;
    so.nshapes = nshapes;
    memcpy(so.shapes, shapes, sizeof(int[3]) * (size_t)nshapes);
    so.text_len = TL;
    so.text_dim = TD;
    so.dtype = dtype;
    so.seed = 77;
    so.threads = 2;
    int rc = wan_build_synth(&so);
    if (rc) return rc;
    wan_build_opts bo;
    wan_build_defaults(&bo);
    bo.input = man;
    bo.out_dir = ds;
    bo.text_dim = TD;
    bo.text_len_max = TL;
    bo.keep_dtype = keep;
    bo.shard_bytes = shard_bytes;
    bo.threads = 2;
    return wan_build_convert(&bo);
}

static void ds_path(char *buf, size_t n, const char *name, const char *rel) {
    snprintf(buf, n, "%s/%s/%s", tmpdir, name, rel);
}

static void test_planes(void) {
    unsigned char src[4 * 37], planes[4 * 37], back[4 * 37];
    for (int i = 0; i < 4 * 37; i++) src[i] = (unsigned char)(wan_rand_uniform(3, 9, 0, 0, (uint64_t)i) * 256);
    for (size_t es = 2; es <= 4; es += 2) {
        wan_planes_split(planes, src, 37, es);
        CHECK(planes[1] == src[es] && planes[37] == src[1]); /* plane 0 = byte 0 of each element */
        wan_planes_join(back, planes, 37, es);
        CHECK(!memcmp(back, src, 37 * es));
    }
    wan_planes_split(planes, src, 37, 2);
    float f[37];
    wan_planes_to_f32(f, planes, 37, WAN_BF16);
    for (int i = 0; i < 37; i++) CHECK(wan_f32_bits(f[i]) == (uint32_t)(src[2 * i] | src[2 * i + 1] << 8) << 16);
}

/* Nearest bf16 of x, ties to even, by comparing the two neighbours in double precision
 * (independent of the bit trick in dtype.h). */
static float ref_bf16(float x) {
    uint32_t u = wan_f32_bits(x), lo = u & 0xffff0000u, hi = lo + 0x10000u;
    double dl = fabs((double)x - (double)wan_bits_f32(lo)), dh = fabs((double)wan_bits_f32(hi) - (double)x);
    if (dl < dh) return wan_bits_f32(lo);
    if (dh < dl) return wan_bits_f32(hi);
    return wan_bits_f32(((lo >> 16) & 1) ? hi : lo);
}

/* Compare every sample of dataset `name` with its input: mode 0 bit-exact, 1 rounded to bf16. */
static void check_roundtrip(const char *name, int mode, int64_t count) {
    char ds[700];
    ds_path(ds, sizeof ds, name, "ds");
    wan_dataset *d;
    CHECK(wan_dataset_open(ds, &d) == 0);
    if (!d) return;
    CHECK(wan_dataset_count(d) == count);
    int mismatches = 0, rounded = 0;
    for (int64_t i = 0; i < count; i++) {
        char in[700], rel[64];
        snprintf(rel, sizeof rel, "in/synth-%06lld.safetensors", (long long)i);
        ds_path(in, sizeof in, name, rel);
        wan_st_set s;
        CHECK(wan_st_open(&s, in, NULL) == 0);
        const wan_st_tensor *tl = wan_st_find(&s, "latent"), *tt = wan_st_find(&s, "text");
        wan_sample_info info;
        CHECK(wan_dataset_info(d, i, &info) == 0);
        size_t nl = (size_t)info.C * info.F * info.H * info.W;
        CHECK((int64_t)nl * (int64_t)wan_dtype_size(tl->dtype) == (int64_t)tl->nbytes);
        CHECK(tt->shape[0] == TL && info.text_len < TL && info.text_len > 0 && info.text_dim == TD);
        float *a = malloc(nl * 4), *b = malloc(nl * 4), *ta = malloc(TL * TD * 4), *tb = malloc((TL + 8) * TD * 4);
        CHECK(wan_st_read_f32(&s, tl, a) == 0 && wan_st_read_f32(&s, tt, ta) == 0);
        for (int k = 0; k < (TL + 8) * TD; k++) tb[k] = 1.0f; /* must be overwritten: zeros past text_len */
        CHECK(wan_dataset_read(d, i, b, tb, TL + 8, true) == 0);
        for (size_t k = 0; k < nl; k++) {
            float want = mode ? ref_bf16(a[k]) : a[k];
            mismatches += wan_f32_bits(b[k]) != wan_f32_bits(want);
            rounded += mode && a[k] != b[k];
        }
        for (int k = 0; k < TL * TD; k++) {
            float want = mode ? ref_bf16(ta[k]) : ta[k];
            mismatches += wan_f32_bits(tb[k]) != wan_f32_bits(want);
        }
        for (int k = TL * TD; k < (TL + 8) * TD; k++) mismatches += tb[k] != 0.0f;
        /* The input's rows past the real length are zero and were dropped, not stored. */
        for (int k = info.text_len * TD; k < TL * TD; k++) mismatches += ta[k] != 0.0f;
        wan_error_clear();
        CHECK(wan_dataset_read(d, i, b, tb, info.text_len - 1, true) != 0 && strstr(wan_errmsg(), "text rows"));
        free(a), free(b), free(ta), free(tb);
        wan_st_close(&s);
    }
    CHECKF(mismatches == 0, "%d values differ", mismatches);
    if (mode) CHECK(rounded > 0); /* fp32 inputs really were rounded */
    wan_dataset_close(d);
}

static const int shapes1[1][3] = {{3, 4, 6}};
static const int shapes3[3][3] = {{3, 4, 6}, {2, 4, 6}, {3, 2, 4}};

static void test_roundtrip_bf16(void) {
    CHECK(make_dataset("bf16", 6, 1, shapes1, WAN_BF16, false, 4096) == 0);
    check_roundtrip("bf16", 0, 6);
}

static void test_roundtrip_f32(void) {
    CHECK(make_dataset("f32", 6, 1, shapes1, WAN_F32, false, 1 << 20) == 0);
    check_roundtrip("f32", 1, 6);
    CHECK(make_dataset("f32keep", 4, 1, shapes1, WAN_F32, true, 1 << 20) == 0);
    check_roundtrip("f32keep", 0, 4);
}

static void flip_byte(const char *path, uint64_t off) {
    int fd = open(path, O_RDWR);
    unsigned char c;
    if (pread(fd, &c, 1, (off_t)off) == 1) {
        c ^= 0x5a;
        if (pwrite(fd, &c, 1, (off_t)off) != 1) fprintf(stderr, "pwrite failed\n");
    }
    close(fd);
}

static void copy_dir(const char *from, const char *to) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", to, from, to);
    if (system(cmd)) fprintf(stderr, "copy failed\n");
}

/* Read sample i of the dataset at dir with verification; return the error text ("" if ok). */
static const char *read_err(const char *dir, int64_t i) {
    static char msg[4096];
    wan_dataset *d;
    wan_error_clear();
    if (wan_dataset_open(dir, &d)) {
        snprintf(msg, sizeof msg, "open: %s", wan_errmsg());
        return msg;
    }
    float lat[16 * 3 * 4 * 6], txt[TL * TD];
    msg[0] = 0;
    if (wan_dataset_read(d, i, lat, txt, TL, true)) snprintf(msg, sizeof msg, "%s", wan_errmsg());
    wan_dataset_close(d);
    return msg;
}

static void test_corruption(void) {
    CHECK(make_dataset("corrupt", 8, 1, shapes1, WAN_F32, false, 4096) == 0);
    char good[700], bad[700], shard[2000];
    ds_path(good, sizeof good, "corrupt", "ds");
    ds_path(bad, sizeof bad, "corrupt", "bad");
    wan_dataset *d;
    CHECK(wan_dataset_open(good, &d) == 0);
    if (!d) return;
    const wan_ds_index *ix = wan_dataset_index(d);
    CHECK(ix->nshards >= 3); /* small shards: several */
    wan_ds_entry e = ix->e[5];
    wan_ds_shard sh = ix->shards[e.shard];
    int64_t other = ix->shards[(e.shard + 1) % ix->nshards].first;
    wan_dataset_close(d);
    CHECK(read_err(good, 5)[0] == 0);

    /* Shard payload: the sample's checksum names shard and sample; others still read. */
    copy_dir(good, bad);
    snprintf(shard, sizeof shard, "%s/%s", bad, sh.path);
    flip_byte(shard, e.offset + e.stored / 2);
    const char *m = read_err(bad, 5);
    CHECKF(strstr(m, sh.path) && strstr(m, "synth-000005") && strstr(m, "checksum mismatch"), "payload: %s", m);
    CHECK(read_err(bad, other)[0] == 0);
    CHECK(wan_build_verify(bad, 2) != 0);

    /* Offset table (just before the footer's metadata): named at first read of the shard. */
    copy_dir(good, bad);
    unsigned char foot[WAN_SHARD_FOOTER_BYTES];
    int fd = open(shard, O_RDONLY);
    CHECK(pread(fd, foot, sizeof foot, (off_t)(sh.bytes - sizeof foot)) == (ssize_t)sizeof foot);
    close(fd);
    wan_shard_footer f;
    CHECK(wan_shard_footer_decode(foot, shard, &f) == 0);
    flip_byte(shard, f.table_offset + 9);
    m = read_err(bad, 5);
    CHECKF(strstr(m, sh.path) && strstr(m, "offset table"), "table: %s", m);
    CHECK(wan_build_verify(bad, 2) != 0);

    /* Footer magic. */
    copy_dir(good, bad);
    flip_byte(shard, sh.bytes - 3);
    m = read_err(bad, 5);
    CHECKF(strstr(m, sh.path) && strstr(m, "footer"), "footer: %s", m);

    /* Index: its own checksum. */
    copy_dir(good, bad);
    char idx[800];
    snprintf(idx, sizeof idx, "%s/index.jsonl", bad);
    struct stat st;
    stat(idx, &st);
    flip_byte(idx, (uint64_t)st.st_size / 2);
    m = read_err(bad, 0);
    CHECKF(strstr(m, "index.jsonl") && strstr(m, "checksum mismatch"), "index: %s", m);
    CHECK(wan_build_verify(bad, 2) != 0);

    /* Truncated shard. */
    copy_dir(good, bad);
    CHECK(truncate(shard, (off_t)(sh.bytes - 100)) == 0);
    m = read_err(bad, 5);
    CHECKF(strstr(m, sh.path) && strstr(m, "truncated"), "truncated: %s", m);
    CHECK(wan_build_verify(bad, 2) != 0);

    /* No index: not a dataset. */
    copy_dir(good, bad);
    unlink(idx);
    m = read_err(bad, 0);
    CHECKF(strstr(m, "not a dataset"), "no index: %s", m);
    CHECK(wan_build_verify(good, 2) == 0);
}

/* ---- loader ---- */

enum { N_SYN = 96, MBS = 2, GBS = 24 };

typedef struct {
    int64_t s[64 * 64];
    int n;
    uint64_t epoch;
} gbatch;

static wan_loader_opts syn_opts(int dp, int rank, wan_loader_state st) {
    wan_loader_opts o = {0};
    o.synthetic_samples = N_SYN;
    o.synth_shape[0] = 16, o.synth_shape[1] = 2, o.synth_shape[2] = 2, o.synth_shape[3] = 4;
    o.gbs = GBS, o.mbs = MBS, o.dp = dp, o.dp_rank = rank;
    o.text_len = 8, o.text_dim = 16;
    o.start = st;
    return o;
}

/* Run all dp ranks for nb global batches from `st`, assembling each global batch by
 * global_index; returns the state the ranks agree on (the check fails if they do not). */
static wan_loader_state run_ranks(wan_loader_opts base, int dp, int nb, gbatch *out) {
    wan_loader *l[8] = {0};
    for (int r = 0; r < dp; r++) {
        wan_loader_opts o = base;
        o.dp = dp, o.dp_rank = r;
        CHECK(wan_loader_create(&o, &l[r]) == 0);
    }
    int per = base.gbs / (base.mbs * dp);
    for (int g = 0; g < nb; g++) {
        memset(&out[g], 0xff, sizeof out[g].s);
        out[g].n = base.gbs;
        for (int r = 0; r < dp; r++)
            for (int j = 0; j < per && l[r]; j++) {
                wan_microbatch mb;
                if (wan_loader_next(l[r], &mb)) {
                    CHECKF(0, "next failed: %s", wan_errmsg());
                    break;
                }
                out[g].epoch = mb.step_epoch;
                for (int i = 0; i < mb.B; i++) {
                    CHECK(mb.global_index[i] / base.mbs / per == r); /* rank r's slice of the batch */
                    out[g].s[mb.global_index[i]] = mb.sample[i];
                }
            }
    }
    wan_loader_state st = l[0] ? wan_loader_get_state(l[0]) : (wan_loader_state){0};
    for (int r = 0; r < dp; r++) {
        if (!l[r]) continue;
        wan_loader_state s = wan_loader_get_state(l[r]);
        CHECK(s.seed == st.seed && s.epoch == st.epoch && s.position == st.position);
        wan_loader_destroy(l[r]);
    }
    return st;
}

static bool same_batches(const gbatch *a, const gbatch *b, int n) {
    for (int g = 0; g < n; g++)
        if (a[g].epoch != b[g].epoch || memcmp(a[g].s, b[g].s, sizeof(int64_t) * (size_t)a[g].n)) return false;
    return true;
}

static void test_loader_order(void) {
    enum { EPOCHS = 2, PER_EPOCH = N_SYN / GBS, NB = EPOCHS * PER_EPOCH };
    static gbatch ref[NB], got[NB];
    wan_loader_state st0 = {.seed = 42, .epoch = 0, .position = 0};
    wan_loader_state end = run_ranks(syn_opts(1, 0, st0), 1, NB, ref);
    CHECK(end.epoch == EPOCHS && end.position == 0);
    /* Every sample exactly once per epoch, and the epochs differ. */
    for (int e = 0; e < EPOCHS; e++) {
        int seen[N_SYN] = {0}, bad = 0;
        for (int g = e * PER_EPOCH; g < (e + 1) * PER_EPOCH; g++) {
            CHECK(ref[g].epoch == (uint64_t)e);
            for (int i = 0; i < GBS; i++) {
                if (ref[g].s[i] < 0 || ref[g].s[i] >= N_SYN) bad++;
                else seen[ref[g].s[i]]++;
            }
        }
        for (int i = 0; i < N_SYN; i++) bad += seen[i] != 1;
        CHECKF(bad == 0, "epoch %d: %d samples not seen exactly once", e, bad);
    }
    CHECK(memcmp(ref[0].s, ref[PER_EPOCH].s, sizeof(int64_t) * GBS) != 0);
    /* Not the identity order: the shuffle does something. */
    int in_order = 0;
    for (int i = 0; i < GBS; i++) in_order += ref[0].s[i] == i;
    CHECK(in_order < GBS / 2);
    /* The same global batches for every data-parallel size. */
    for (int dp = 2; dp <= 4; dp++) {
        memset(got, 0, sizeof got);
        run_ranks(syn_opts(dp, 0, st0), dp, NB, got);
        CHECKF(same_batches(ref, got, NB), "dp=%d differs from dp=1", dp);
    }
    /* Another seed, another order. */
    wan_loader_state st1 = {.seed = 43};
    run_ranks(syn_opts(1, 0, st1), 1, 1, got);
    CHECK(memcmp(ref[0].s, got[0].s, sizeof(int64_t) * GBS) != 0);
}

static void test_loader_resume(void) {
    enum { NB = 3 * (N_SYN / GBS) };
    static gbatch ref[NB], got[NB];
    wan_loader_state st0 = {.seed = 7};
    run_ranks(syn_opts(1, 0, st0), 1, NB, ref);
    /* Stop after t batches with dp_a, continue with dp_b: the same sequence. */
    const int cases[][3] = {{1, 1, 4}, {3, 4, 2}, {4, 7, 3}, {2, 2, 1}, {4, 9, 4}, {3, 11, 2}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int dpa = cases[c][0], t = cases[c][1], dpb = cases[c][2];
        wan_loader_state st = run_ranks(syn_opts(dpa, 0, st0), dpa, t, got);
        CHECK(st.epoch == (uint64_t)(t / (N_SYN / GBS)) && st.position == (uint64_t)(t % (N_SYN / GBS)));
        CHECKF(same_batches(ref, got, t), "case %zu: first part differs", c);
        run_ranks(syn_opts(dpb, 0, st), dpb, NB - t, got);
        CHECKF(same_batches(ref + t, got, NB - t), "case %zu: resume dp %d -> %d at %d differs", c, dpa, dpb, t);
    }
    /* A position past the epoch is refused. */
    wan_loader *l;
    wan_loader_opts o = syn_opts(1, 0, (wan_loader_state){.seed = 7, .position = 5});
    CHECK(wan_loader_create(&o, &l) != 0);
}

/* Prefetching threads return the same micro-batches, with the right content. */
static void test_loader_prefetch(void) {
    wan_loader_state st = {.seed = 5};
    wan_loader_opts a = syn_opts(2, 1, st), b = a;
    b.prefetch = 3, b.threads = 2;
    wan_loader *la, *lb;
    CHECK(wan_loader_create(&a, &la) == 0 && wan_loader_create(&b, &lb) == 0);
    size_t nl = 16 * 2 * 2 * 4, nt = 8 * 16;
    float *lat = malloc(nl * 4), *txt = malloc(nt * 4);
    int diffs = 0, content = 0;
    for (int q = 0; q < 30; q++) {
        wan_microbatch ma, mb;
        CHECK(wan_loader_next(la, &ma) == 0 && wan_loader_next(lb, &mb) == 0);
        diffs += memcmp(ma.sample, mb.sample, sizeof(int64_t) * MBS) != 0;
        diffs += memcmp(ma.latent, mb.latent, sizeof(float) * nl * MBS) != 0;
        diffs += memcmp(ma.text, mb.text, sizeof(float) * nt * MBS) != 0;
        for (int i = 0; i < MBS; i++) {
            int len;
            wan_synth_sample(5, mb.sample[i], 16, 2, 2, 4, 8, 16, lat, txt, &len);
            content += memcmp(lat, mb.latent + i * nl, nl * 4) != 0 || memcmp(txt, mb.text + i * nt, nt * 4) != 0;
        }
    }
    CHECK(diffs == 0 && content == 0);
    wan_loader_destroy(la);
    wan_loader_destroy(lb);
    free(lat);
    free(txt);
}

/* A dataset with three latent shapes: micro-batches of one shape, no sample twice per epoch,
 * and the same global batches for dp 1 and 2, with the samples' own content. */
static void test_loader_buckets(void) {
    CHECK(make_dataset("buckets", 31, 3, shapes3, WAN_BF16, false, 1 << 16) == 0);
    char dir[700];
    ds_path(dir, sizeof dir, "buckets", "ds");
    wan_dataset *d;
    CHECK(wan_dataset_open(dir, &d) == 0);
    if (!d) return;
    wan_loader_opts o = {.ds = d, .gbs = 4, .mbs = 2, .dp = 1, .text_len = TL, .text_dim = TD, .verify = true,
                         .prefetch = 2, .start = {.seed = 11}};
    wan_loader *l;
    CHECK(wan_loader_create(&o, &l) == 0);
    if (!l) return;
    /* 31 samples cycling 3 shapes: 11, 10, 10 -> 5 + 5 + 5 micro-batches -> 7 global batches. */
    CHECK(wan_loader_batches_per_epoch(l) == 7);
    int seen[31] = {0}, wrong_shape = 0, wrong_content = 0;
    float *lat = malloc(16 * 3 * 4 * 6 * 4), *txt = malloc(TL * TD * 4);
    for (int q = 0; q < 14; q++) {
        wan_microbatch mb;
        CHECK(wan_loader_next(l, &mb) == 0);
        size_t nl = (size_t)mb.C * mb.F * mb.H * mb.W;
        for (int i = 0; i < mb.B; i++) {
            wan_sample_info info;
            wan_dataset_info(d, mb.sample[i], &info);
            wrong_shape += info.C != mb.C || info.F != mb.F || info.H != mb.H || info.W != mb.W;
            seen[mb.sample[i]]++;
            wan_dataset_read(d, mb.sample[i], lat, txt, TL, true);
            wrong_content += memcmp(lat, mb.latent + i * nl, nl * 4) || memcmp(txt, mb.text + (size_t)i * TL * TD, TL * TD * 4);
        }
    }
    int twice = 0, total = 0;
    for (int i = 0; i < 31; i++) twice += seen[i] > 1, total += seen[i];
    CHECK(wrong_shape == 0 && wrong_content == 0 && twice == 0 && total == 28);
    wan_loader_state st = wan_loader_get_state(l);
    CHECK(st.epoch == 1 && st.position == 0);
    wan_loader_destroy(l);
    static gbatch a[7], b[7];
    o.prefetch = 0;
    run_ranks(o, 1, 7, a);
    run_ranks(o, 2, 7, b);
    CHECK(same_batches(a, b, 7));
    free(lat);
    free(txt);
    wan_dataset_close(d);
}

/* A corrupt sample: an error naming it, or (skip_corrupt) the same replacement on every
 * layout, counted. */
static void test_loader_skip_corrupt(void) {
    CHECK(make_dataset("skip", 16, 1, shapes1, WAN_BF16, false, 1 << 20) == 0);
    char dir[700], shard[2000];
    ds_path(dir, sizeof dir, "skip", "ds");
    wan_dataset *d;
    CHECK(wan_dataset_open(dir, &d) == 0);
    if (!d) return;
    wan_ds_entry e = wan_dataset_index(d)->e[9];
    snprintf(shard, sizeof shard, "%s/%s", dir, wan_dataset_index(d)->shards[e.shard].path);
    wan_dataset_close(d);
    flip_byte(shard, e.offset + 5);
    CHECK(wan_dataset_open(dir, &d) == 0);
    wan_loader_opts o = {.ds = d, .gbs = 8, .mbs = 2, .dp = 1, .text_len = TL, .text_dim = TD, .verify = true,
                         .start = {.seed = 3}};
    /* Without the policy: an error naming the sample, at the micro-batch that holds it. */
    wan_loader *l;
    CHECK(wan_loader_create(&o, &l) == 0);
    int failed = 0;
    for (int q = 0; q < 8 && !failed; q++) {
        wan_microbatch mb;
        if (wan_loader_next(l, &mb)) failed = strstr(wan_errmsg(), "synth-000009") ? 1 : -1;
    }
    CHECK(failed == 1);
    wan_loader_destroy(l);
    /* With it: identical global batches for dp 1 and 2 (twice: every resume agrees), one skip. */
    o.skip_corrupt = true;
    static gbatch a[4], b[4];
    run_ranks(o, 1, 4, a);
    run_ranks(o, 2, 4, b);
    CHECK(same_batches(a, b, 4));
    int has9 = 0, dup = 0, seen[16] = {0};
    for (int g = 0; g < 2; g++)
        for (int i = 0; i < 8; i++) {
            has9 += a[g].s[i] == 9;
            dup += ++seen[a[g].s[i]] > 1;
        }
    CHECK(has9 == 0 && dup == 1); /* the replacement is another sample of the epoch */
    CHECK(wan_loader_create(&o, &l) == 0);
    for (int q = 0; q < 8; q++) {
        wan_microbatch mb;
        CHECK(wan_loader_next(l, &mb) == 0);
    }
    CHECK(wan_loader_corrupt_skipped(l) == 1);
    wan_loader_destroy(l);
    wan_dataset_close(d);
}

static void test_loader_errors(void) {
    wan_loader *l;
    wan_loader_opts o = syn_opts(1, 0, (wan_loader_state){.seed = 1});
    o.gbs = 6, o.mbs = 4;
    CHECK(wan_loader_create(&o, &l) != 0); /* gbs not a multiple of mbs */
    o = syn_opts(5, 0, (wan_loader_state){.seed = 1});
    CHECK(wan_loader_create(&o, &l) != 0); /* 12 micro-batches over dp 5 */
    o = syn_opts(1, 0, (wan_loader_state){.seed = 1});
    o.synthetic_samples = 10;
    wan_error_clear();
    CHECK(wan_loader_create(&o, &l) != 0 && strstr(wan_errmsg(), "global batch"));
}

int main(void) {
    wan_log_set_level(WAN_LOG_ERROR);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/wan-test-ds.XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(test_planes);
    RUN(test_roundtrip_bf16);
    RUN(test_roundtrip_f32);
    RUN(test_corruption);
    RUN(test_loader_order);
    RUN(test_loader_resume);
    RUN(test_loader_prefetch);
    RUN(test_loader_buckets);
    RUN(test_loader_skip_corrupt);
    RUN(test_loader_errors);
    wan_rm_rf(tmpdir);
    return test_summary();
}
