/* NumPy .npy files (format versions 1.0 to 3.0): the header is a Python dict literal
 * {'descr': '<f4', 'fortran_order': False, 'shape': (16, 5, 8, 8), } padded with spaces, then
 * the raw C-order data. Only little-endian float32 ('<f4') and float16 ('<f2') are tensors we
 * load; anything else is an error naming the file and what was found. */
#ifndef WAN_NPY_H
#define WAN_NPY_H

#include <stdint.h>

#include "dtype.h"

#define WAN_NPY_MAX_DIMS 8

typedef struct {
    wan_dtype dtype;
    int ndim;
    int64_t shape[WAN_NPY_MAX_DIMS];
    uint64_t data_offset; /* where the data starts in the file */
    uint64_t nbytes;      /* numel * element size; the file holds at least this much after data_offset */
} wan_npy_info;

/* Parse and check the header of an open file (path names it in errors). */
int wan_npy_read_header(int fd, const char *path, wan_npy_info *info);
/* Open path read-only and parse its header; on success *fd is open (the caller closes it). */
int wan_npy_open(const char *path, int *fd, wan_npy_info *info);
/* Write an array (format 1.0) atomically: temporary name, fsync, rename. */
int wan_npy_write(const char *path, wan_dtype dtype, int ndim, const int64_t *shape, const void *data);

#endif
