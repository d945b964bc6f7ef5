/* .npy reader and writer (see npy.h). The header dict is tiny and fixed in form, so it is
 * parsed here with a few string scans rather than a Python-literal parser. */
#include "npy.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"

static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

/* The value text after 'key': in the dict, or NULL. */
static const char *dict_value(const char *h, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(h, pat);
    if (!p) {
        snprintf(pat, sizeof pat, "\"%s\"", key);
        p = strstr(h, pat);
    }
    if (!p) return NULL;
    p += strlen(pat);
    while (isspace((unsigned char)*p)) p++;
    if (*p != ':') return NULL;
    p++;
    while (isspace((unsigned char)*p)) p++;
    return p;
}

int wan_npy_read_header(int fd, const char *path, wan_npy_info *info) {
    memset(info, 0, sizeof *info);
    struct stat st;
    if (fstat(fd, &st) < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "stat %s", path);
    uint64_t size = (uint64_t)st.st_size;
    unsigned char pre[12];
    if (size < 10) return wan_fail(WAN_ERR_RUNTIME, "%s: %llu bytes: too short for a .npy file", path,
                                   (unsigned long long)size);
    WAN_TRY(wan_pread_full(fd, pre, size < 12 ? 10 : 12, 0, path));
    if (memcmp(pre, npy_magic, 6)) return wan_fail(WAN_ERR_RUNTIME, "%s: not a .npy file (bad magic)", path);
    int major = pre[6];
    uint64_t hlen, hoff;
    if (major == 1) {
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8;
        hoff = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) return wan_fail(WAN_ERR_RUNTIME, "%s: truncated .npy header", path);
        hlen = (uint64_t)pre[8] | (uint64_t)pre[9] << 8 | (uint64_t)pre[10] << 16 | (uint64_t)pre[11] << 24;
        hoff = 12;
    } else {
        return wan_fail(WAN_ERR_RUNTIME, "%s: .npy format version %d.%d (expected 1.0 to 3.0)", path, major, pre[7]);
    }
    if (hlen > (1u << 20) || hoff + hlen > size)
        return wan_fail(WAN_ERR_RUNTIME, "%s: .npy header length %llu does not fit the %llu-byte file (truncated?)",
                        path, (unsigned long long)hlen, (unsigned long long)size);
    char *h = malloc(hlen + 1);
    if (!h) return wan_fail(WAN_ERR_RUNTIME, "%s: out of memory", path);
    int rc = wan_pread_full(fd, h, hlen, hoff, path);
    if (rc) {
        free(h);
        return rc;
    }
    h[hlen] = 0;
    const char *d = dict_value(h, "descr"), *fo = dict_value(h, "fortran_order"), *sh = dict_value(h, "shape");
    if (!d || !fo || !sh || h[0] != '{') {
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: .npy header is not a dict with descr, fortran_order and shape", path);
        goto out;
    }
    if (!strncmp(d, "'<f4'", 5) || !strncmp(d, "'f4'", 4)) info->dtype = WAN_F32;
    else if (!strncmp(d, "'<f2'", 5) || !strncmp(d, "'f2'", 4)) info->dtype = WAN_F16;
    else {
        char found[24];
        int n = 0;
        while (d[n] && d[n] != ',' && n < 23) n++;
        snprintf(found, sizeof found, "%.*s", n, d);
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: .npy dtype %s (expected little-endian float32 '<f4' or float16 '<f2')",
                      path, found);
        goto out;
    }
    if (strncmp(fo, "False", 5)) {
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: .npy array is in Fortran order (expected C order)", path);
        goto out;
    }
    if (*sh != '(') {
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: .npy shape is not a tuple", path);
        goto out;
    }
    const char *p = sh + 1;
    uint64_t numel = 1;
    for (;;) {
        while (isspace((unsigned char)*p) || *p == ',') p++;
        if (*p == ')') break;
        if (!isdigit((unsigned char)*p) || info->ndim == WAN_NPY_MAX_DIMS) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: .npy shape is not a tuple of at most %d sizes", path, WAN_NPY_MAX_DIMS);
            goto out;
        }
        char *end;
        errno = 0;
        unsigned long long v = strtoull(p, &end, 10);
        if (errno || v > (1ull << 40) || (v && numel > (UINT64_MAX >> 4) / v)) {
            rc = wan_fail(WAN_ERR_RUNTIME, "%s: .npy shape too large", path);
            goto out;
        }
        info->shape[info->ndim++] = (int64_t)v;
        numel *= v;
        p = end;
        while (*p == 'L') p++; /* Python 2 long suffix */
    }
    info->data_offset = hoff + hlen;
    info->nbytes = numel * wan_dtype_size(info->dtype);
    if (size - info->data_offset < info->nbytes)
        rc = wan_fail(WAN_ERR_RUNTIME, "%s: truncated: shape needs %llu data bytes, the file has %llu", path,
                      (unsigned long long)info->nbytes, (unsigned long long)(size - info->data_offset));
out:
    free(h);
    return rc;
}

int wan_npy_open(const char *path, int *fd, wan_npy_info *info) {
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    if (*fd < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "open %s", path);
    int rc = wan_npy_read_header(*fd, path, info);
    if (rc) {
        close(*fd);
        *fd = -1;
    }
    return rc;
}

int wan_npy_write(const char *path, wan_dtype dtype, int ndim, const int64_t *shape, const void *data) {
    if (dtype == WAN_BF16) return wan_fail(WAN_ERR_USAGE, "%s: .npy has no bfloat16 type", path);
    if (ndim < 0 || ndim > WAN_NPY_MAX_DIMS) return wan_fail(WAN_ERR_USAGE, "%s: %d dimensions", path, ndim);
    char dict[256];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     dtype == WAN_F32 ? "<f4" : "<f2");
    uint64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld,%s", (long long)shape[i], i + 1 < ndim ? " " : "");
        numel *= (uint64_t)shape[i];
    }
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    /* Pad so that magic + version + length + header is a multiple of 64, ending in '\n'. */
    size_t total = ((size_t)n + 10 + 1 + 63) & ~(size_t)63;
    size_t hlen = total - 10, nbytes = numel * wan_dtype_size(dtype);
    char *buf = malloc(total + nbytes);
    if (!buf) return wan_fail(WAN_ERR_RUNTIME, "%s: out of memory", path);
    memcpy(buf, npy_magic, 6);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (char)(hlen & 0xff);
    buf[9] = (char)(hlen >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', hlen - (size_t)n - 1);
    buf[total - 1] = '\n';
    memcpy(buf + total, data, nbytes);
    int rc = wan_write_file_atomic(path, buf, total + nbytes);
    free(buf);
    return rc;
}
