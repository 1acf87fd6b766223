/*
 * safetensors weight files: an 8-byte little-endian header length N, N bytes
 * of JSON ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
 * ..., "__metadata__": {"key": "value"}}), then the data block. Offsets are
 * relative to the data block.
 *
 * The reader maps the file and validates everything before anyone reads a
 * byte of tensor data: header length within the file, well-formed JSON,
 * known dtypes, shape x element size == byte range (without overflow),
 * ranges inside the data block, no overlaps, and a metadata map of strings.
 * Any violation is a clear error naming the file, never a crash.
 */
#ifndef DC_SAFETENSORS_H
#define DC_SAFETENSORS_H

#include "tensor.h"

#include <stddef.h>
#include <stdint.h>

#define DC_ST_MAX_DIMS 8

typedef struct dc_st_tensor {
    char *name;
    char dtype_name[12];            /* as in the file: "F32", "BF16", "I64", ... */
    int dtype;                      /* the dc_dtype, or -1 for a dtype the engine does not compute in */
    size_t elem_size;               /* bytes per element */
    int ndim;
    int64_t shape[DC_ST_MAX_DIMS];
    const void *data;               /* into the mapped file (reader) or caller memory (writer) */
    size_t nbytes;
} dc_st_tensor;

typedef struct dc_st_file {
    void *map;                      /* the whole file when opened with dc_st_open */
    size_t map_size;
    int n;                          /* tensors, in file order of their data */
    dc_st_tensor *tensors;
    int n_meta;                     /* __metadata__ entries */
    char **meta_keys, **meta_values;
} dc_st_file;

/* Map and validate `path`. On failure *f is left empty (safe to close). */
int dc_st_open(dc_st_file *f, const char *path);
/* Validate an in-memory file image (not copied: `buf` must outlive f). */
int dc_st_parse(dc_st_file *f, const void *buf, size_t size);
void dc_st_close(dc_st_file *f);

const dc_st_tensor *dc_st_find(const dc_st_file *f, const char *name);
const char *dc_st_meta(const dc_st_file *f, const char *key); /* NULL when absent */

/* Write tensors (name, dtype_name or dtype, ndim, shape, data, nbytes used)
 * and metadata pairs to `path`: header padded with spaces to 8 bytes, data
 * contiguous with no gaps (the reference reader refuses gaps), tensors of
 * wider elements first and in the given order within one element size, so
 * each starts at a multiple of its element size. Written to "<path>.tmp",
 * synced, then renamed, so an existing file is never left half-written. */
int dc_st_write(const char *path, const dc_st_tensor *tensors, int n, const char *const *meta_keys,
                const char *const *meta_values, int n_meta);

/* ---- sharded weights ----
 * A large model is saved as shard files plus an index, as diffusers and
 * transformers write them: "diffusion_pytorch_model.safetensors.index.json",
 * {"metadata": {...}, "weight_map": {"tensor name": "shard file name", ...}}.
 * The index is untrusted like a weight file: it must be a JSON object of at
 * most DC_ST_MAX_INDEX bytes whose weight_map maps each name once to a plain
 * file name in the index's own folder (no '/' or '\\', not "." or "..",
 * ending in ".safetensors"), over at most DC_ST_MAX_SHARDS files. */
#define DC_ST_MAX_INDEX (64u << 20)
#define DC_ST_MAX_SHARDS 1024

typedef struct dc_st_index {
    int n;           /* weight_map entries */
    char **names;    /* [n] tensor names, sorted */
    int *shard;      /* [n] the shard of names[i], an index into files */
    int n_files;
    char **files;    /* [n_files] shard file names, sorted */
} dc_st_index;

/* Parse index text of `len` bytes; `what` names it in messages. On failure
 * *ix is left empty (safe to free). */
int dc_st_index_parse(dc_st_index *ix, const char *text, size_t len, const char *what);
int dc_st_index_load(dc_st_index *ix, const char *path);
void dc_st_index_free(dc_st_index *ix);

/* A model's weights: one safetensors file, or, for a path ending in ".json",
 * the shards its index lists. Every shard must exist, hold exactly the
 * tensors the index puts in it (a tensor in two shards, in another shard than
 * the index says, or in none is an error naming both files), and every
 * tensor name is unique across the set. On failure *s is left empty. */
typedef struct dc_st_set {
    int n;              /* files */
    dc_st_file *files;  /* [n] */
    char **paths;       /* [n], for messages */
} dc_st_set;
int dc_st_set_open(dc_st_set *s, const char *path);
void dc_st_set_close(dc_st_set *s);
/* Done with the data of t, a tensor of s: the whole pages it covers are
 * given back (the file stays mapped; reading them again reads the file), so
 * a model loaded tensor by tensor holds its weights once, not once in the
 * mapping and once in the parameters. */
void dc_st_set_release(const dc_st_set *s, const dc_st_tensor *t);

#endif
