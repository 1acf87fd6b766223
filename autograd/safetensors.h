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

#endif
