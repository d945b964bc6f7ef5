/* Inputs of wan-preprocess: the list of samples (a JSON-lines manifest, or a directory scan)
 * and the loading and checking of one sample's latent and text tensors from safetensors or
 * .npy files. Every error names the sample, the file and the problem. */
#ifndef WAN_DATASET_INPUT_H
#define WAN_DATASET_INPUT_H

#include <stdbool.h>
#include <stdint.h>

#include "dtype.h"

struct json_t;

typedef struct {
    char *id;
    char *latent_path, *text_path; /* resolved against the manifest's directory */
    char *latent_name, *text_name; /* tensor names inside safetensors inputs */
    int64_t line;                  /* manifest line (1-based), 0 for a scanned directory */
    struct json_t *extra;          /* caption and metadata carried into the index (an object) */
} wan_input_sample;

typedef struct {
    wan_input_sample *s;
    int64_t n;
    char source[1024]; /* the manifest or directory */
} wan_input_list;

/* Manifest lines: {"id": ..., "latent": path, "text": path, "caption": ..., ...} ("path" gives
 * one file for both; "latent_name"/"text_name" override the tensor names; every other key is
 * metadata kept in the index). A directory is scanned (sorted by name) for NAME.safetensors
 * (both tensors inside), NAME.latent.npy + NAME.text.npy, and subdirectories holding a
 * *.safetensors.index.json; NAME.txt, when present, is the caption. */
int wan_input_list_load(const char *path, const char *latent_name, const char *text_name, wan_input_list *out);
void wan_input_list_free(wan_input_list *l);

typedef struct {
    int channels;     /* latent channels (16) */
    int text_dim;     /* text embedding width (4096) */
    int text_len_max; /* most text rows (512) */
} wan_input_limits;

typedef struct {
    wan_dtype latent_dtype, text_dtype;
    int64_t C, F, H, W;
    int64_t rows, dim;      /* text */
    void *latent, *text;    /* malloc'd, in their input dtype */
    uint64_t input_bytes;   /* bytes of both tensors as given */
} wan_input_tensors;

/* Load and check one sample: shapes ([C,F,H,W] or [1,C,F,H,W]; [L,D] or [1,L,D]), channels,
 * text width and length, supported dtypes, finite values. */
int wan_input_load(const wan_input_sample *s, const wan_input_limits *lim, wan_input_tensors *t);
void wan_input_tensors_free(wan_input_tensors *t);
/* "sample 'id' (manifest line 12)" or "sample 'id'" for error messages. */
void wan_input_describe(const wan_input_sample *s, char *buf, int n);

#endif
