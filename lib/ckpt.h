/* Checkpoints: self-describing directories that any layout can read.
 *
 *   <ckpt_dir>/step_00000100/meta.json        written last, by rank 0: the commit point
 *                           /rank00000.bin     each writing rank's pieces, raw little-endian
 *                           /rank00000.json    that rank's piece list (merged into meta.json)
 *   <ckpt_dir>/latest -> step_00000100         replaced atomically after the directory is final
 *
 * meta.json: {"format":"wan-checkpoint","version":1,"step":N,"config":"<resolved libconfig
 * text>","layout":{...},"data":{"seed":..,"epoch":..,"position":..},"optimizer_step":N,
 * "tensors":[{"name":"blocks.0.ffn.0.weight","kind":"model"|"master"|"adam_m"|"adam_v",
 * "dtype":"F32","shape":[...],"pieces":[{"file":"rank00003.bin","offset":0,"nbytes":..,
 * "start":[...],"shape":[...],"xxh64":"0123456789abcdef"}]}]}
 *
 * A piece is a box (start, shape) of the global tensor stored row-major; the layout that wrote
 * the checkpoint is a fact in it, not an assumption of the reader. Saving: every rank writes
 * its pieces into step_N.tmp/, fsyncs, a barrier, rank 0 merges the piece lists into
 * meta.json, fsyncs, renames step_N.tmp -> step_N, then replaces `latest`. A crash at any
 * moment leaves the previous checkpoint intact; a *.tmp directory is never taken for one. */
#ifndef WAN_CKPT_H
#define WAN_CKPT_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "dataset.h"
#include "dtype.h"
#include "params.h"

#define WAN_CKPT_KINDS 4
extern const char *const wan_ckpt_kind_names[WAN_CKPT_KINDS]; /* model, master, adam_m, adam_v */

typedef struct {
    int64_t start[WAN_MAX_DIMS], shape[WAN_MAX_DIMS];
} wan_box;

typedef struct {
    int file; /* index into wan_ckpt.files */
    uint64_t offset, nbytes;
    wan_box box;
    uint64_t xxh64;
} wan_ckpt_piece;

typedef struct {
    char name[96];
    int kind; /* index into wan_ckpt_kind_names */
    wan_dtype dtype;
    int ndim;
    int64_t shape[WAN_MAX_DIMS];
    wan_ckpt_piece *pieces;
    int npieces;
} wan_ckpt_tensor;

typedef struct {
    int tp, cp, dp, pp, world;
    bool sp;
} wan_ckpt_layout;

typedef struct {
    char dir[WAN_PATH_MAX];
    int step, optimizer_step;
    char *config_text;
    wan_config cfg;
    wan_ckpt_layout layout;
    wan_loader_state data;
    int nfiles;
    char (*files)[64];
    int *fds;
    wan_ckpt_tensor *t;
    int nt;
    /* one-piece read cache */
    int cache_tensor, cache_piece;
    void *cache;
    size_t cache_cap;
} wan_ckpt;

/* Open a checkpoint directory (or a checkpoint root: then its `latest`), parse and check
 * meta.json: every tensor covered exactly once by its pieces, pieces inside their files. */
int wan_ckpt_open(wan_ckpt *c, const char *path);
void wan_ckpt_close(wan_ckpt *c);
const wan_ckpt_tensor *wan_ckpt_find(const wan_ckpt *c, const char *name, int kind);
/* Read the box of a tensor into dst (row-major box, converted to dt), verifying the checksum
 * of every piece it touches. */
int wan_ckpt_read_box(wan_ckpt *c, const wan_ckpt_tensor *t, const wan_box *box, void *dst, wan_dtype dt);
/* Read every piece and check its checksum (streaming: memory does not grow with piece size). */
int wan_ckpt_verify(wan_ckpt *c);
/* Open every data file up front, so that the two functions below can run on many threads. */
int wan_ckpt_open_files(wan_ckpt *c);
/* Raw bytes [off, off + n) of piece k of tensor t, unchecked (the caller verifies the piece's
 * checksum, e.g. with wan_ckpt_piece_xxh64 or by hashing what it reads). Thread-safe. */
int wan_ckpt_piece_pread(const wan_ckpt *c, const wan_ckpt_tensor *t, int k, uint64_t off, void *dst, size_t n);
/* XXH3-64 of piece k of tensor t, streamed through buf (cap bytes). Thread-safe. */
int wan_ckpt_piece_xxh64(const wan_ckpt *c, const wan_ckpt_tensor *t, int k, void *buf, size_t cap, uint64_t *h);
/* "path: checksum mismatch in the piece of NAME (KIND) at offset N: corrupt checkpoint" */
int wan_ckpt_fail_checksum(const wan_ckpt *c, const wan_ckpt_tensor *t, int k);
/* Resolve <root>/latest (or the newest complete step_* when latest is missing). */
int wan_ckpt_latest(const char *root, char *out, size_t n);

/* Intersection of two boxes (zero-filled beyond ndim); false when empty. */
bool wan_box_intersect(int ndim, const wan_box *a, const wan_box *b, wan_box *out);

/* Boxes covering the flat range [a, b) of a tensor piece of shape `shape` (row-major), in
 * order; at most 2 * ndim - 1. Offsets are relative to the piece. */
int wan_flat_range_boxes(int ndim, const int64_t *shape, int64_t a, int64_t b, wan_box *out);

/* ---- writing ---- */
typedef struct wan_ckpt_writer wan_ckpt_writer;
/* Start this rank's part of a checkpoint in tmpdir (created by the caller beforehand). */
int wan_ckpt_writer_begin(wan_ckpt_writer **w, const char *tmpdir, int rank);
/* Append a piece: the box `box` of global tensor (name, kind, dtype, ndim, shape), data row-major. */
int wan_ckpt_writer_add(wan_ckpt_writer *w, const char *name, int kind, wan_dtype dt, int ndim, const int64_t *shape,
                        const wan_box *box, const void *data);
/* Streaming: reserve the place of a piece (offsets follow the order of calls, as with
 * wan_ckpt_writer_add); its bytes come later through wan_ckpt_writer_pwrite, from any thread,
 * and its checksum through wan_ckpt_writer_set_xxh64, all before wan_ckpt_writer_end. */
int wan_ckpt_writer_reserve(wan_ckpt_writer *w, const char *name, int kind, wan_dtype dt, int ndim,
                            const int64_t *shape, const wan_box *box, uint64_t *offset, int *index);
int wan_ckpt_writer_pwrite(wan_ckpt_writer *w, uint64_t offset, const void *data, size_t n); /* thread-safe */
void wan_ckpt_writer_set_xxh64(wan_ckpt_writer *w, int index, uint64_t xxh);
/* fsync the data file and write the rank's piece list. */
int wan_ckpt_writer_end(wan_ckpt_writer *w);
void wan_ckpt_writer_abort(wan_ckpt_writer *w);

typedef struct {
    int step, optimizer_step;
    const char *config_text;
    wan_ckpt_layout layout;
    wan_loader_state data;
    int nranks; /* rank piece lists to merge: rank00000.json .. */
} wan_ckpt_meta;
/* Rank 0 after every rank finished: merge the piece lists into meta.json (checking coverage),
 * rename tmpdir to finaldir, replace <root>/latest. The same as wan_ckpt_write_meta followed by
 * wan_ckpt_publish (wan-reshard reads the new checkpoint back in between). */
int wan_ckpt_commit(const char *tmpdir, const char *finaldir, const wan_ckpt_meta *meta, bool update_latest);
int wan_ckpt_write_meta(const char *tmpdir, const wan_ckpt_meta *meta);
int wan_ckpt_publish(const char *tmpdir, const char *finaldir, bool update_latest);

/* Tests of the commit protocol: with WAN_TEST_CKPT_PAUSE_MS=N in the environment, a save
 * prints "wan-test-ckpt-pause: STEP" on stderr and sleeps N ms at each step, so that a test can
 * kill it at any point: "piece" (after each piece), "pieces-done" (before meta.json),
 * "meta" (meta.json durable), "renamed" (the directory has its final name), "latest" (the
 * pointer replaced). WAN_TEST_CKPT_PAUSE_AT=STEP pauses at that step only. */

#endif
