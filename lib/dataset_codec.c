/* Byte planes, shard footers and tables: the binary pieces of the dataset format
 * (dataset_format.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "dataset_format.h"
#include "error.h"
#include "fsutil.h"

size_t wan_raw_bytes(uint64_t latent_numel, wan_dtype ld, uint64_t text_numel, wan_dtype td) {
    return (size_t)(latent_numel * wan_dtype_size(ld) + text_numel * wan_dtype_size(td));
}

/* The 16-bit paths work in fixed-size blocks so that the compiler vectorises them. */
enum { BLOCK = 4096 };
static void split2_block(unsigned char *restrict lo, unsigned char *restrict hi, const unsigned char *restrict s) {
    for (size_t i = 0; i < BLOCK; i++) {
        lo[i] = s[2 * i];
        hi[i] = s[2 * i + 1];
    }
}
static void bf16_block(uint32_t *restrict d, const unsigned char *restrict lo, const unsigned char *restrict hi) {
    for (size_t i = 0; i < BLOCK; i++) d[i] = (uint32_t)hi[i] << 24 | (uint32_t)lo[i] << 16;
}

void wan_planes_split(unsigned char *dst, const void *src, size_t n, size_t es) {
    const unsigned char *s = src;
    if (es == 2) {
        unsigned char *lo = dst, *hi = dst + n;
        size_t i = 0;
        for (; i + BLOCK <= n; i += BLOCK) split2_block(lo + i, hi + i, s + 2 * i);
        for (; i < n; i++) {
            lo[i] = s[2 * i];
            hi[i] = s[2 * i + 1];
        }
        return;
    }
    for (size_t b = 0; b < es; b++)
        for (size_t i = 0; i < n; i++) dst[b * n + i] = s[i * es + b];
}

void wan_planes_join(void *dst, const unsigned char *src, size_t n, size_t es) {
    unsigned char *d = dst;
    for (size_t b = 0; b < es; b++)
        for (size_t i = 0; i < n; i++) d[i * es + b] = src[b * n + i];
}

void wan_planes_to_f32(float *dst, const unsigned char *src, size_t n, wan_dtype t) {
    if (t == WAN_BF16) {
        const unsigned char *lo = src, *hi = src + n;
        uint32_t *d = (uint32_t *)dst;
        size_t i = 0;
        for (; i + BLOCK <= n; i += BLOCK) bf16_block(d + i, lo + i, hi + i);
        for (; i < n; i++) d[i] = (uint32_t)hi[i] << 24 | (uint32_t)lo[i] << 16;
    } else if (t == WAN_F16) {
        for (size_t i = 0; i < n; i++) dst[i] = wan_f16_to_f32((uint16_t)(src[i] | src[n + i] << 8));
    } else {
        uint32_t *d = (uint32_t *)dst;
        for (size_t i = 0; i < n; i++)
            d[i] = (uint32_t)src[i] | (uint32_t)src[n + i] << 8 | (uint32_t)src[2 * n + i] << 16 |
                   (uint32_t)src[3 * n + i] << 24;
    }
}

void wan_shard_footer_encode(const wan_shard_footer *f, unsigned char out[WAN_SHARD_FOOTER_BYTES]) {
    wan_put_u64(out + 0, f->table_offset);
    wan_put_u64(out + 8, f->samples);
    wan_put_u64(out + 16, f->meta_bytes);
    wan_put_u64(out + 24, f->first_ordinal);
    wan_put_u64(out + 32, f->end_ordinal);
    wan_put_u64(out + 40, f->run_key);
    wan_put_u64(out + 48, f->table_xxh3);
    memcpy(out + 56, WAN_SHARD_END, 8);
}

int wan_shard_footer_decode(const unsigned char in[WAN_SHARD_FOOTER_BYTES], const char *path, wan_shard_footer *f) {
    if (memcmp(in + 56, WAN_SHARD_END, 8))
        return wan_fail(WAN_ERR_RUNTIME, "%s: no shard footer at the end of the file (truncated or not a shard)", path);
    f->table_offset = wan_get_u64(in + 0);
    f->samples = wan_get_u64(in + 8);
    f->meta_bytes = wan_get_u64(in + 16);
    f->first_ordinal = wan_get_u64(in + 24);
    f->end_ordinal = wan_get_u64(in + 32);
    f->run_key = wan_get_u64(in + 40);
    f->table_xxh3 = wan_get_u64(in + 48);
    return 0;
}

int wan_shard_read_table(int fd, const char *path, uint64_t file_bytes, wan_shard_footer *f, wan_shard_rec **table,
                         char **meta) {
    *table = NULL;
    *meta = NULL;
    if (file_bytes < WAN_SHARD_HEADER_BYTES + WAN_SHARD_FOOTER_BYTES)
        return wan_fail(WAN_ERR_RUNTIME, "%s: %llu bytes: too short for a shard (truncated)", path,
                        (unsigned long long)file_bytes);
    unsigned char hdr[WAN_SHARD_HEADER_BYTES], foot[WAN_SHARD_FOOTER_BYTES];
    WAN_TRY(wan_pread_full(fd, hdr, sizeof hdr, 0, path));
    if (memcmp(hdr, WAN_SHARD_MAGIC, 8)) return wan_fail(WAN_ERR_RUNTIME, "%s: not a shard (bad magic)", path);
    uint32_t version = (uint32_t)hdr[8] | (uint32_t)hdr[9] << 8 | (uint32_t)hdr[10] << 16 | (uint32_t)hdr[11] << 24;
    if (version != WAN_DS_VERSION)
        return wan_fail(WAN_ERR_RUNTIME, "%s: shard format version %u (this build reads %d)", path, version,
                        WAN_DS_VERSION);
    WAN_TRY(wan_pread_full(fd, foot, sizeof foot, file_bytes - WAN_SHARD_FOOTER_BYTES, path));
    WAN_TRY(wan_shard_footer_decode(foot, path, f));
    uint64_t end = file_bytes - WAN_SHARD_FOOTER_BYTES;
    if (f->table_offset < WAN_SHARD_HEADER_BYTES || f->table_offset > end || f->samples > (end - f->table_offset) / 32 ||
        f->meta_bytes != end - f->table_offset - f->samples * WAN_SHARD_REC_BYTES)
        return wan_fail(WAN_ERR_RUNTIME,
                        "%s: footer does not describe this file (table at %llu, %llu samples, %llu meta bytes in a "
                        "%llu-byte file): corrupt footer or truncated shard",
                        path, (unsigned long long)f->table_offset, (unsigned long long)f->samples,
                        (unsigned long long)f->meta_bytes, (unsigned long long)file_bytes);
    size_t tb = (size_t)(f->samples * WAN_SHARD_REC_BYTES), total = tb + (size_t)f->meta_bytes;
    unsigned char *buf = malloc(total + 1);
    if (!buf) return wan_fail(WAN_ERR_RUNTIME, "%s: out of memory for the table", path);
    int rc = wan_pread_full(fd, buf, total, f->table_offset, path);
    if (!rc && XXH3_64bits(buf, total) != f->table_xxh3)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: offset table checksum mismatch: the table or its metadata is corrupt", path);
    wan_shard_rec *t = NULL;
    if (!rc) {
        t = malloc((f->samples ? f->samples : 1) * sizeof *t);
        *meta = malloc(f->meta_bytes + 1);
        if (!t || !*meta) rc = wan_fail(WAN_ERR_RUNTIME, "%s: out of memory", path);
    }
    for (uint64_t i = 0; !rc && i < f->samples; i++) {
        const unsigned char *p = buf + i * WAN_SHARD_REC_BYTES;
        t[i] = (wan_shard_rec){wan_get_u64(p), wan_get_u64(p + 8), wan_get_u64(p + 16), wan_get_u64(p + 24)};
        if (t[i].offset < WAN_SHARD_HEADER_BYTES || t[i].offset > f->table_offset ||
            t[i].stored > f->table_offset - t[i].offset)
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: table entry %llu points outside the records", path,
                          (unsigned long long)i);
    }
    if (!rc) {
        memcpy(*meta, buf + tb, (size_t)f->meta_bytes);
        (*meta)[f->meta_bytes] = 0;
        *table = t;
    } else {
        free(t);
        free(*meta);
        *meta = NULL;
    }
    free(buf);
    return rc;
}

void wan_hex64(uint64_t v, char out[17]) { snprintf(out, 17, "%016llx", (unsigned long long)v); }

int wan_parse_hex64(const char *s, uint64_t *v) {
    uint64_t r = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        r = r << 4 | (uint64_t)d;
    }
    if (s[16]) return -1;
    *v = r;
    return 0;
}
