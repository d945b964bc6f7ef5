/* The on-disk format of a latent dataset, shared by wan-preprocess (writer, merge, verify,
 * stats) and the reader in dataset.c.
 *
 * A dataset directory holds index.jsonl and shards (shard-000000.wls, ...; a merged dataset
 * refers to the shards of its parts as part-0000-of-0004/shard-000000.wls). The index is the
 * commit point: it is written last (temporary name, fsync, rename) and a directory without one
 * is not a dataset.
 *
 * Shard (.wls), all integers little-endian:
 *   header   16 bytes: "WANLSHD1", u32 format version, u32 0
 *   records  one zstd frame per sample, back to back; a frame decompresses to the sample's
 *            "raw" bytes: the latent's byte planes, then the text's (below)
 *   table    32 bytes per sample: u64 offset, u64 stored bytes, u64 raw bytes, u64 xxh3
 *            (XXH3-64 of the stored frame)
 *   meta     JSON: {"samples": [per-sample index fields], "skipped": [bad inputs]} so that an
 *            interrupted run can rebuild the index from complete shards without their inputs
 *   footer   64 bytes: u64 table offset, u64 samples, u64 meta bytes, u64 first ordinal,
 *            u64 end ordinal (the slice of the input list this shard covers), u64 run key,
 *            u64 XXH3-64 of table + meta, "WANLEND1"
 *
 * Raw sample: the latent [C, F, H, W] then the real text rows [text_len, text_dim], each in
 * its stored dtype (BF16 by default) and split into byte planes: for n elements of s bytes,
 * plane b holds byte b of every element (n bytes), planes in order b = 0 .. s-1. The planes
 * that carry sign and exponent compress well; the low mantissa bytes barely do.
 *
 * index.jsonl: one JSON object per line:
 *   header  {"format":"wan-latents","version":1,"samples":N,"shards":S,"skipped":K,...}
 *   S shard lines  {"shard":k,"path":"shard-000000.wls","bytes":..,"samples":..,"xxh3":"hex"}
 *   N sample lines {"id":..,"shard":k,"offset":..,"stored":..,"raw":..,"xxh3":"hex",
 *                   "latent":[C,F,H,W],"latent_dtype":"BF16","text_len":L,"text_dim":D,
 *                   "text_dtype":"BF16","input_bytes":..,"caption":..,(metadata)}
 *   trailer {"end":"wan-latents","xxh3":"hex"}: XXH3-64 of every byte before this line. */
#ifndef WAN_DATASET_FORMAT_H
#define WAN_DATASET_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "dtype.h"

#define WAN_DS_FORMAT "wan-latents"
#define WAN_DS_VERSION 1
#define WAN_DS_INDEX "index.jsonl"
#define WAN_SHARD_MAGIC "WANLSHD1"
#define WAN_SHARD_END "WANLEND1"
#define WAN_SHARD_HEADER_BYTES 16
#define WAN_SHARD_REC_BYTES 32
#define WAN_SHARD_FOOTER_BYTES 64

static inline void wan_put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint64_t wan_get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

typedef struct {
    uint64_t offset, stored, raw, xxh3;
} wan_shard_rec;

typedef struct {
    uint64_t table_offset, samples, meta_bytes, first_ordinal, end_ordinal, run_key, table_xxh3;
} wan_shard_footer;

void wan_shard_footer_encode(const wan_shard_footer *f, unsigned char out[WAN_SHARD_FOOTER_BYTES]);
/* Decode and check the magic; path names the shard in errors. */
int wan_shard_footer_decode(const unsigned char in[WAN_SHARD_FOOTER_BYTES], const char *path, wan_shard_footer *f);
/* Read a shard's footer, table and meta from an open file of size file_bytes and check the
 * table checksum and that the table lies inside the file. *table (f.samples records) and *meta
 * (NUL-terminated) are malloc'd. */
int wan_shard_read_table(int fd, const char *path, uint64_t file_bytes, wan_shard_footer *f, wan_shard_rec **table,
                         char **meta);

/* One sample as the reader keeps it (the index without caption and metadata). */
typedef struct {
    uint64_t offset, stored, raw, xxh3, input_bytes;
    int32_t shard;
    int32_t C, F, H, W;
    int32_t text_len, text_dim;
    uint8_t latent_dtype, text_dtype;
    uint32_t id; /* offset of the id in the dataset's string pool */
} wan_ds_entry;

typedef struct {
    char path[1024]; /* relative to the dataset directory */
    uint64_t bytes, xxh3;
    int64_t samples;
    int64_t first; /* index of its first sample: a shard's samples are consecutive */
} wan_ds_shard;

/* A parsed index: what the reader, verify and stats need. */
typedef struct {
    int64_t n, nshards, skipped;
    wan_ds_entry *e;
    wan_ds_shard *shards;
    char *ids;       /* string pool of ids */
    char *header;    /* the header line's JSON text */
} wan_ds_index;

/* Read DIR/index.jsonl, check its own checksum, its structure and every entry (shards exist in
 * the list, offsets and sizes inside the shard, shapes positive). Errors name the file and line. */
int wan_ds_index_load(const char *dir, wan_ds_index *ix);
void wan_ds_index_free(wan_ds_index *ix);
/* Write an index atomically: header, shard lines, sample lines (each a complete JSON text
 * without newline), trailer with the checksum. */
int wan_ds_index_write(const char *path, const char *header, char *const *shard_lines, int64_t nshards,
                       const char *sample_lines_file);

/* Per-dataset access for the loader and the tools. */
const wan_ds_index *wan_dataset_index(const wan_dataset *ds);
const char *wan_dataset_dir(const wan_dataset *ds);
/* wan_dataset_read that says whether a failure was corrupt data (checksum, frame, size) rather
 * than an I/O or usage problem, for the loader's skip policy. */
int wan_dataset_read_ex(wan_dataset *ds, int64_t index, float *latent, float *text, int text_len_model, bool verify,
                        bool *corrupt);
/* Check a shard's footer and table against the index (lazily done by reads with verify). */
int wan_dataset_check_shard(wan_dataset *ds, int shard);

/* Sample codec: the raw layout above plus one zstd frame. */
size_t wan_raw_bytes(uint64_t latent_numel, wan_dtype ld, uint64_t text_numel, wan_dtype td);
/* Split into byte planes (src n elements of size es -> dst) and back. */
void wan_planes_split(unsigned char *dst, const void *src, size_t n, size_t es);
void wan_planes_join(void *dst, const unsigned char *src, size_t n, size_t es);
/* Byte planes of es-byte elements in dtype t -> fp32 (dst n floats). */
void wan_planes_to_f32(float *dst, const unsigned char *src, size_t n, wan_dtype t);

/* Exit-free helpers shared by the tools. */
void wan_hex64(uint64_t v, char out[17]);
int wan_parse_hex64(const char *s, uint64_t *v); /* 0 ok, -1 not 16 hex digits */

#endif
