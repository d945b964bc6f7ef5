/* safetensors files: 8-byte little-endian header length, a JSON header
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
 * Reading validates the header against the file (offsets inside the data, sizes equal to
 * dtype * shape, no overlaps) and names the file and tensor in every error. A "set" is one
 * file, or the shards listed by an index JSON ({"weight_map": {name: file}}) as the official
 * Wan 2.1 and diffusers releases ship them. */
#ifndef WAN_SAFETENSORS_H
#define WAN_SAFETENSORS_H

#include <stdint.h>

#include "dtype.h"

#define WAN_ST_MAX_DIMS 8

typedef struct {
    char name[256];
    wan_dtype dtype;
    int ndim;
    int64_t shape[WAN_ST_MAX_DIMS];
    uint64_t offset; /* absolute byte offset of the data in the file */
    uint64_t nbytes;
    int file; /* index into the set's files (0 for a single file) */
} wan_st_tensor;

typedef struct {
    int nfiles;
    char **paths; /* nfiles paths */
    int *fds;
    int n;             /* tensors */
    wan_st_tensor *t;  /* sorted by name */
    char *metadata;    /* "__metadata__" of the first file as JSON text, or NULL */
} wan_st_set;

/* Open a .safetensors file, an index JSON (*.safetensors.index.json), or a directory holding
 * exactly one of: an index JSON, or a single .safetensors file (prefix filters the names,
 * e.g. "diffusion_pytorch_model"; NULL = any). */
int wan_st_open(wan_st_set *s, const char *path, const char *prefix);
void wan_st_close(wan_st_set *s);
const wan_st_tensor *wan_st_find(const wan_st_set *s, const char *name);
/* Raw bytes of a tensor (t->nbytes), or a byte range of it. */
int wan_st_read(const wan_st_set *s, const wan_st_tensor *t, void *dst);
int wan_st_read_range(const wan_st_set *s, const wan_st_tensor *t, uint64_t byte_off, uint64_t nbytes, void *dst);
/* The whole tensor converted to fp32 (numel elements). */
int wan_st_read_f32(const wan_st_set *s, const wan_st_tensor *t, float *dst);

/* Writer: declare every tensor up front (name, dtype, ndim, shape are used), then write the
 * bytes of each tensor in any order and pieces; close() fsyncs and renames the temporary file
 * to its final name, so a crash never leaves a half-written file under that name. */
typedef struct wan_st_writer wan_st_writer;
int wan_st_writer_open(wan_st_writer **w, const char *path, const wan_st_tensor *tensors, int n,
                       const char *metadata_json /* an object as JSON text, or NULL */);
int wan_st_writer_write(wan_st_writer *w, int index, uint64_t byte_off, const void *data, uint64_t nbytes);
int wan_st_writer_close(wan_st_writer *w); /* commits */
void wan_st_writer_abort(wan_st_writer *w); /* removes the temporary file */

#endif
