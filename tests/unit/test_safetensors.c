/* safetensors reader and writer: round trips, sharded sets, and malformed files rejected with
 * errors that name the file and the tensor. */
#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"
#include "rng.h"
#include "safetensors.h"
#include "test.h"

static char tmpdir[256];

static void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", tmpdir, name); }

/* Write a raw safetensors file: 8-byte length, header text, data bytes. */
static void write_raw(const char *name, const char *header, const void *data, size_t nbytes) {
    char p[512];
    path_of(p, sizeof p, name);
    size_t hl = strlen(header);
    unsigned char *buf = malloc(8 + hl + nbytes + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (nbytes) memcpy(buf + 8 + hl, data, nbytes);
    wan_write_file_atomic(p, buf, 8 + hl + nbytes);
    free(buf);
}

/* Opening `name` fails, and the message contains each of the given fragments. */
static void expect_open_error(const char *name, const char *frag1, const char *frag2) {
    char p[512];
    path_of(p, sizeof p, name);
    wan_st_set s;
    wan_error_clear();
    int rc = wan_st_open(&s, p, NULL);
    CHECKF(rc != 0, "%s opened but should not", name);
    if (rc == 0) {
        wan_st_close(&s);
        return;
    }
    CHECKF(strstr(wan_errmsg(), name) != NULL, "error does not name the file: %s", wan_errmsg());
    CHECKF(!frag1 || strstr(wan_errmsg(), frag1), "error lacks '%s': %s", frag1, wan_errmsg());
    CHECKF(!frag2 || strstr(wan_errmsg(), frag2), "error lacks '%s': %s", frag2, wan_errmsg());
}

static void test_roundtrip(void) {
    enum { A = 3 * 5, B = 7, C = 2 * 2 * 2 };
    float a[A];
    uint16_t b[B], c[C];
    for (int i = 0; i < A; i++) a[i] = wan_rand_normal(1, 9, 0, 0, (uint64_t)i);
    for (int i = 0; i < B; i++) b[i] = wan_f32_to_bf16(wan_rand_normal(1, 9, 0, 1, (uint64_t)i));
    for (int i = 0; i < C; i++) c[i] = wan_f32_to_f16(wan_rand_normal(1, 9, 0, 2, (uint64_t)i));
    wan_st_tensor t[3] = {{.name = "zeta.weight", .dtype = WAN_F32, .ndim = 2, .shape = {3, 5}},
                          {.name = "alpha", .dtype = WAN_BF16, .ndim = 1, .shape = {B}},
                          {.name = "mid.h", .dtype = WAN_F16, .ndim = 3, .shape = {2, 2, 2}}};
    char p[512];
    path_of(p, sizeof p, "rt.safetensors");
    wan_st_writer *w;
    CHECK(wan_st_writer_open(&w, p, t, 3, "{\"format\":\"pt\",\"note\":\"test\"}") == 0);
    /* Pieces out of order: the second half of a first, then the rest. */
    CHECK(wan_st_writer_write(w, 0, 8 * 4, a + 8, (A - 8) * 4) == 0);
    CHECK(wan_st_writer_write(w, 2, 0, c, sizeof c) == 0);
    CHECK(wan_st_writer_write(w, 1, 0, b, sizeof b) == 0);
    CHECK(wan_st_writer_write(w, 0, 0, a, 8 * 4) == 0);
    CHECK(!wan_path_exists(p)); /* nothing under the final name before close */
    CHECK(wan_st_writer_close(w) == 0);

    wan_st_set s;
    CHECK(wan_st_open(&s, p, NULL) == 0);
    CHECK(s.n == 3 && s.nfiles == 1);
    CHECK(!strcmp(s.t[0].name, "alpha") && !strcmp(s.t[2].name, "zeta.weight")); /* sorted by name */
    CHECK(s.metadata && strstr(s.metadata, "\"note\":\"test\""));
    const wan_st_tensor *ta = wan_st_find(&s, "zeta.weight"), *tb = wan_st_find(&s, "alpha"), *tc = wan_st_find(&s, "mid.h");
    CHECK(ta && tb && tc && !wan_st_find(&s, "nope"));
    if (ta && tb && tc) {
        CHECK(ta->ndim == 2 && ta->shape[0] == 3 && ta->shape[1] == 5 && ta->nbytes == A * 4 && ta->dtype == WAN_F32);
        CHECK(ta->offset % 8 == 0); /* data aligned as the format recommends */
        float ra[A], rb[B], rc[C];
        CHECK(wan_st_read(&s, ta, ra) == 0 && !memcmp(ra, a, sizeof a));
        CHECK(wan_st_read_f32(&s, tb, rb) == 0);
        for (int i = 0; i < B; i++) CHECK(rb[i] == wan_bf16_to_f32(b[i]));
        CHECK(wan_st_read_f32(&s, tc, rc) == 0);
        for (int i = 0; i < C; i++) CHECK(rc[i] == wan_f16_to_f32(c[i]));
        float piece[3];
        CHECK(wan_st_read_range(&s, ta, 4 * 4, 12, piece) == 0 && !memcmp(piece, a + 4, 12));
        wan_error_clear();
        CHECK(wan_st_read_range(&s, ta, A * 4 - 4, 8, piece) != 0 && strstr(wan_errmsg(), "zeta.weight"));
    }
    wan_st_close(&s);
}

static void test_writer_errors(void) {
    char p[512];
    path_of(p, sizeof p, "partial.safetensors");
    wan_st_tensor t = {.name = "x", .dtype = WAN_F32, .ndim = 1, .shape = {4}};
    wan_st_writer *w;
    float v[4] = {1, 2, 3, 4};
    CHECK(wan_st_writer_open(&w, p, &t, 1, NULL) == 0);
    CHECK(wan_st_writer_write(w, 0, 0, v, 8) == 0);
    CHECK(wan_st_writer_write(w, 0, 12, v, 8) != 0); /* past the end */
    CHECK(wan_st_writer_write(w, 1, 0, v, 4) != 0);  /* no such tensor */
    wan_error_clear();
    CHECK(wan_st_writer_close(w) != 0); /* only 8 of 16 bytes written */
    CHECK(strstr(wan_errmsg(), "8 of 16") != NULL);
    CHECK(!wan_path_exists(p));
    CHECK(wan_st_writer_open(&w, p, &t, 1, NULL) == 0);
    wan_st_writer_abort(w);
    CHECK(!wan_path_exists(p));
    CHECK(wan_st_writer_open(&w, p, &t, 1, "{\"n\": 3}") != 0); /* metadata values must be strings */
    wan_st_tensor dup[2] = {t, t};
    CHECK(wan_st_writer_open(&w, p, dup, 2, NULL) != 0);
}

static void test_malformed(void) {
    float d[4] = {1, 2, 3, 4};
    /* Shorter than the length field. */
    char p[512];
    path_of(p, sizeof p, "tiny.safetensors");
    wan_write_file_atomic(p, "abc", 3);
    expect_open_error("tiny.safetensors", "too short", NULL);
    /* Header length beyond the file. */
    path_of(p, sizeof p, "hlen.safetensors");
    unsigned char big[16] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}'};
    wan_write_file_atomic(p, big, sizeof big);
    expect_open_error("hlen.safetensors", "header length", NULL);
    write_raw("json.safetensors", "{\"x\": {\"dtype\": \"F32\",", d, 16);
    expect_open_error("json.safetensors", "not valid JSON", NULL);
    write_raw("array.safetensors", "[1, 2, 3]", d, 16);
    expect_open_error("array.safetensors", "not a JSON object", NULL);
    write_raw("nodtype.safetensors", "{\"x\": {\"shape\": [4], \"data_offsets\": [0, 16]}}", d, 16);
    expect_open_error("nodtype.safetensors", "'x'", "dtype");
    write_raw("baddtype.safetensors", "{\"x\": {\"dtype\": \"F31\", \"shape\": [4], \"data_offsets\": [0, 16]}}", d, 16);
    expect_open_error("baddtype.safetensors", "'x'", "F31");
    /* Offsets past the data: a truncated file. */
    write_raw("trunc.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", d, 12);
    expect_open_error("trunc.safetensors", "'w'", "truncated");
    write_raw("size.safetensors", "{\"w\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 16]}}", d, 16);
    expect_open_error("size.safetensors", "'w'", "shape needs 12");
    write_raw("overlap.safetensors",
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
              " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
              d, 16);
    expect_open_error("overlap.safetensors", "overlap", "'a'");
    write_raw("dup.safetensors",
              "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
              " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
              d, 16);
    expect_open_error("dup.safetensors", "not valid JSON", NULL);
    write_raw("neg.safetensors", "{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", d, 16);
    expect_open_error("neg.safetensors", "'a'", "shape[0]");
    write_raw("meta.safetensors", "{\"__metadata__\": [1]}", d, 0);
    expect_open_error("meta.safetensors", "__metadata__", NULL);
    /* Valid: an I64 tensor is checked and left out; an empty header is fine. */
    write_raw("int.safetensors",
              "{\"i\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]},"
              " \"f\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}   ",
              d, 16);
    wan_st_set s;
    path_of(p, sizeof p, "int.safetensors");
    CHECK(wan_st_open(&s, p, NULL) == 0);
    CHECK(s.n == 1 && wan_st_find(&s, "f") && !wan_st_find(&s, "i"));
    wan_st_close(&s);
    expect_open_error("missing.safetensors", "No such file", NULL);
}

static void test_sharded_set(void) {
    char sub[512], p[512];
    path_of(sub, sizeof sub, "model");
    wan_mkdir_p(sub);
    float v[6] = {1, 2, 3, 4, 5, 6};
    const char *names[2] = {"model/m-00001-of-00002.safetensors", "model/m-00002-of-00002.safetensors"};
    for (int f = 0; f < 2; f++) {
        wan_st_tensor t[2] = {{.dtype = WAN_F32, .ndim = 1, .shape = {3}}, {.dtype = WAN_F32, .ndim = 1, .shape = {3}}};
        snprintf(t[0].name, sizeof t[0].name, "blocks.%d.a", f);
        snprintf(t[1].name, sizeof t[1].name, "blocks.%d.b", f);
        path_of(p, sizeof p, names[f]);
        wan_st_writer *w;
        CHECK(wan_st_writer_open(&w, p, t, 2, NULL) == 0);
        wan_st_writer_write(w, 0, 0, v, 12);
        wan_st_writer_write(w, 1, 0, v + 3, 12);
        CHECK(wan_st_writer_close(w) == 0);
    }
    const char *idx = "{\"metadata\": {\"total_size\": 48}, \"weight_map\": {"
                      "\"blocks.0.a\": \"m-00001-of-00002.safetensors\", \"blocks.0.b\": \"m-00001-of-00002.safetensors\","
                      "\"blocks.1.a\": \"m-00002-of-00002.safetensors\", \"blocks.1.b\": \"m-00002-of-00002.safetensors\"}}";
    path_of(p, sizeof p, "model/m.safetensors.index.json");
    wan_write_file_atomic(p, idx, strlen(idx));
    wan_st_set s;
    CHECK(wan_st_open(&s, sub, NULL) == 0); /* the directory resolves to its index */
    CHECK(s.n == 4 && s.nfiles == 2);
    const wan_st_tensor *t = wan_st_find(&s, "blocks.1.b");
    float r[3];
    CHECK(t && t->file == 1 && wan_st_read(&s, t, r) == 0 && r[0] == 4 && r[2] == 6);
    wan_st_close(&s);
    /* A map naming a tensor that its shard lacks. */
    const char *bad = "{\"weight_map\": {\"blocks.0.a\": \"m-00002-of-00002.safetensors\"}}";
    path_of(p, sizeof p, "model/m.safetensors.index.json");
    wan_write_file_atomic(p, bad, strlen(bad));
    wan_error_clear();
    CHECK(wan_st_open(&s, p, NULL) != 0);
    CHECK(strstr(wan_errmsg(), "blocks.0.a") && strstr(wan_errmsg(), "m-00002-of-00002"));
    /* A directory with two files and no index is ambiguous. */
    unlink(p);
    wan_error_clear();
    CHECK(wan_st_open(&s, sub, NULL) != 0 && strstr(wan_errmsg(), "2 "));
    CHECK(wan_st_open(&s, sub, "m-00002") == 0 && s.n == 2); /* a prefix picks one */
    wan_st_close(&s);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/wan-test-st.XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    RUN(test_roundtrip);
    RUN(test_writer_errors);
    RUN(test_malformed);
    RUN(test_sharded_set);
    wan_rm_rf(tmpdir);
    return test_summary();
}
