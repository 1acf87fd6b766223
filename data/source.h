/*
 * Inside data/: what the dataset sources (image folder, IDX, CIFAR-10), the
 * cache file and the cache builder share. Not a public API.
 *
 * A source is used in two steps. scan() only lists and stats the files it
 * would read, which is all the cache fingerprint needs, so reusing a cache
 * never reads the data. load() then reads what the source needs to know its
 * items (labels, captions, the IDX/CIFAR bytes), and image() produces item i
 * as a dc_image; the builder calls image() from several threads at once.
 */
#ifndef DC_DATA_SOURCE_H
#define DC_DATA_SOURCE_H

#include "dataset.h"
#include "image.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- sources ---- */

typedef struct dc_source_file {
    char *path; /* relative to the source root (folder), or absolute */
    int64_t size;
    int64_t mtime_ns;
} dc_source_file;

typedef struct dc_source dc_source;

typedef struct dc_source_ops {
    int (*load)(dc_source *s);
    /* Item i: 0 with *img filled; 1 when the item must be skipped (the reason
     * in dc_error(), without the item name); -1 on a fatal error. */
    int (*image)(const dc_source *s, int64_t i, dc_image *img);
    void (*free)(dc_source *s);
} dc_source_ops;

struct dc_source {
    const char *kind;  /* "image folder", "IDX", "CIFAR-10" */
    char *root;        /* absolute path of the folder or file opened */
    const char *split; /* "train" or "test" (IDX and CIFAR-10) */
    const char *caption_column; /* the image folder's metadata.jsonl key of the captions; NULL: "text" */
    /* after scan: every file the source reads, sorted */
    int n_files;
    dc_source_file *files;
    /* after load */
    int64_t count; /* items (some may be skipped when building) */
    char **names;  /* [count] item names for messages */
    int num_classes;
    char **class_names; /* [num_classes] */
    int32_t *labels;    /* [count], -1 unlabelled */
    char **captions;    /* [count] (NULL entries: no caption), or NULL */
    const dc_source_ops *ops;
    void *impl;
};

/* Each scan returns 1 when `path` is its kind (s filled), 0 when it is not
 * (s untouched), -1 on an error (a file of its kind that is unreadable). */
int dc_folder_scan(dc_source *s, const char *path);
/* 1 when the folder holds a file that is an image by content or by name. */
int dc_folder_has_images(const char *path);
int dc_idx_scan(dc_source *s, const char *path, const char *split);
int dc_cifar_scan(dc_source *s, const char *path, const char *split);
/* The source at `path`, of whatever kind it is (a cache file is not a source). */
int dc_source_scan(dc_source *s, const char *path, const char *split);
void dc_source_free(dc_source *s); /* safe on a zeroed or freed source */

/* Helpers for the scans: append a stat'ed file (path copied), a strdup that
 * records an error, and a zeroed source with root = realpath(path). */
int dc_source_add_file(dc_source *s, const char *path, const char *stat_path);
char *dc_strdup(const char *s);
int dc_source_init(dc_source *s, const char *kind, const char *path, const char *split,
                   const dc_source_ops *ops);
/* s->class_names = names[0..n), or "0".."n-1" when names is NULL. */
int dc_source_set_classes(dc_source *s, int n, const char *const *names);
/* Map a whole file read-only (*map NULL for an empty file). */
int dc_map_file(const char *path, const void **map, size_t *size);
void dc_unmap_file(const void *map, size_t size);

/* Run every item of a loaded source through image(), then conversion to
 * `channels` (0: as decoded) and resize + centre crop to `resolution` (0:
 * as decoded), in parallel; then hand the results to commit() in item order,
 * on the calling thread: img is the image (commit may take it, leaving it
 * empty), or NULL with `reason` when the item is skipped. commit returns 0,
 * or -1 to stop. Returns -1 on the first fatal error or stop. */
typedef int (*dc_commit_fn)(void *ctx, int64_t i, dc_image *img, const char *reason);
int dc_source_each(const dc_source *s, int channels, int resolution, dc_commit_fn commit, void *ctx);
/* "name" of item i for messages (a folder's relative path, or "image <i>"). */
const char *dc_source_item_name(const dc_source *s, int64_t i, char *buf, size_t n);

/* ---- IDX parsing on memory (also the fuzz target) ---- */

typedef struct dc_idx {
    uint32_t dims[3]; /* [n] for labels, [n, rows, cols] for images */
    int ndim;
    const uint8_t *data; /* the bytes after the header */
    size_t size;         /* exactly the product of dims */
    uint8_t *owned;      /* the decompressed file when it was gzip, else NULL */
} dc_idx;

/* Decode an IDX file image (plain, or gzip: decompressed with a bound the
 * header sets). `what` names it in errors. data points into buf for plain
 * files. On failure idx is empty. */
int dc_idx_decode(dc_idx *idx, const void *buf, size_t n, const char *what);
void dc_idx_free(dc_idx *idx);

/* ---- the cache file ---- */

#define DC_CACHE_VERSION 1
#define DC_CACHE_HEADER 4096 /* the pixels start here, page-aligned */
#define DC_CACHE_SUFFIX ".diffc-ds"

/* Everything but the pixels, for the header and tables. */
typedef struct dc_cache_meta {
    int64_t count;
    int h, w, c;
    int num_classes;
    char *const *class_names;
    const int32_t *labels; /* [count] */
    char *const *captions; /* [count] (NULL entries: ""), or NULL */
    int n_skipped;
    const dc_dataset_skip *skipped;
    const char *kind, *source; /* what it was built from, for `info` */
    uint64_t fingerprint;
} dc_cache_meta;

/* What the header says beyond dc_dataset's fields. */
typedef struct dc_cache_info {
    uint64_t fingerprint;
    uint32_t pixels_crc;
    char kind[24];
    char source[4096];
} dc_cache_info;

/* Writes a cache to "<path>.tmp.<pid>": pixels are appended image by image,
 * then finish() writes the tables and the header, syncs and renames. */
typedef struct dc_cache_writer {
    char *path, *tmp;
    int fd;
    uint64_t pixel_bytes; /* appended so far */
} dc_cache_writer;

int dc_cache_writer_open(dc_cache_writer *w, const char *path);
int dc_cache_writer_append(dc_cache_writer *w, const uint8_t *px, size_t n);
/* Gray -> RGB for the n_images of hw pixels written so far (in place). */
int dc_cache_writer_widen(dc_cache_writer *w, int64_t n_images, size_t hw);
int dc_cache_writer_finish(dc_cache_writer *w, const dc_cache_meta *m);
void dc_cache_writer_abort(dc_cache_writer *w); /* removes the temporary file */

/* 1 when the file starts with the cache magic (whatever else is wrong with it). */
int dc_is_cache_file(const char *path);
/* Validate a cache image in memory (8-byte aligned) and fill ds with
 * pointers into it (ds->map is left to the caller). Everything is checked
 * except the pixels' checksum, which dc_cache_verify_pixels checks. */
int dc_cache_parse(dc_dataset *ds, dc_cache_info *info, const void *buf, size_t n, const char *what);
int dc_cache_verify_pixels(const dc_dataset *ds, const dc_cache_info *info, const char *what);
/* dc_dataset_open_cache that also returns the header's info (may be NULL). */
int dc_dataset_open_cache_info(dc_dataset *ds, dc_cache_info *info, const char *path);

/* ---- building ---- */

/* Decode every item of a loaded source (in parallel), bring it to the
 * options' channels and resolution and write the cache at `path`. Skipped
 * items are warned about (unless quiet) and listed in the cache. */
int dc_cache_build(const dc_source *s, const dc_dataset_options *o, const char *path, uint64_t fingerprint);

#endif
