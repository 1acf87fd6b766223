/*
 * Datasets: where training images come from, decoded once into a cache.
 *
 * Sources (DESIGN.md §5):
 *  - an image folder, searched recursively (hidden names skipped, symlinks
 *    followed without loops); PNG/JPEG recognised by content; images in
 *    sorted path order; class = first-level subfolder (sorted names),
 *    unlabelled when there are no subfolders; with subfolders, images lying
 *    directly in the root are skipped (they have no class); an optional
 *    metadata.jsonl ({"file_name", "text"}, file_name relative to the root;
 *    opts.caption_column names another key than "text") gives captions;
 *  - MNIST/Fashion-MNIST IDX files, plain or .gz: a folder holding
 *    train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] (and the
 *    t10k- pair, used by split "test"), or an images file given directly;
 *    classes "0".."N-1", or Fashion-MNIST's names when the folder's path
 *    contains "fashion";
 *  - CIFAR-10 binary batches (data_batch_*.bin / test_batch.bin, or one
 *    file); class names from batches.meta.txt beside them, else CIFAR-10's.
 *
 * Every source is decoded, brought to the requested channels, resized
 * (shorter side to the resolution, then centre crop: torchvision's Resize +
 * CenterCrop) and written once to a cache file, which later runs map
 * directly. The cache header holds a magic, a version, count, H, W, C, the
 * class names and a fingerprint of the source and options; a changed source,
 * resolution or option rebuilds it (under a new name: the fingerprint is in
 * the file name). The file is written to a temporary name and renamed, so a
 * killed build leaves no half cache. Opening validates the header, layout,
 * labels and string tables (and their checksums); the pixels' checksum is
 * verified by dc_dataset_summarize (`diffc info`), not on every open.
 *
 * Bad files in an image folder are skipped with one warning line each and
 * counted (opts.strict makes the first one an error); a source with nothing
 * usable, a malformed IDX or CIFAR file, a corrupt cache: one clear error.
 * A file whose content is not PNG/JPEG is ignored silently unless its name
 * looks like an image (.png, .jpg, .gif, ...), in which case it is a bad file.
 */
#ifndef DC_DATA_DATASET_H
#define DC_DATA_DATASET_H

#include "image.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dc_dataset_options {
    int resolution;         /* square side of the cached images; 0 keeps the source size (all equal) */
    int channels;           /* 1 or 3; 0 keeps the source's (RGB when mixed) */
    const char *split;      /* "train" (default) or "test" for IDX and CIFAR */
    const char *cache_dir;  /* NULL: $DIFFC_CACHE_DIR, else $XDG_CACHE_HOME/diffc, else ~/.cache/diffc */
    const char *caption_column; /* image folder: metadata.jsonl's key of the captions; NULL: "text" */
    bool strict;            /* a bad file is an error, not a skip */
    bool quiet;             /* no warning lines on stderr (they are still counted) */
} dc_dataset_options;

/* One skipped file and why. */
typedef struct dc_dataset_skip {
    char *path;
    char *reason;
} dc_dataset_skip;

typedef struct dc_dataset {
    int64_t count;          /* images */
    int h, w, c;            /* every cached image is h x w x c */
    int num_classes;        /* 0 when unlabelled */
    char **class_names;     /* [num_classes] */
    const uint8_t *pixels;  /* [count, h, w, c], mapped from the cache */
    const int32_t *labels;  /* [count], -1 when unlabelled */
    char **captions;        /* [count] or NULL when the source has none; "" for no caption */
    char *cache_path;       /* the cache file in use */
    int n_skipped;
    dc_dataset_skip *skipped; /* files left out while building the cache */
    void *map;
    size_t map_size;
} dc_dataset;

/* Open `source` (folder or file), building or reusing its cache. */
int dc_dataset_open(dc_dataset *ds, const char *source, const dc_dataset_options *opts);
/* Open a cache file directly (as `diffc info` does). */
int dc_dataset_open_cache(dc_dataset *ds, const char *cache_path);
void dc_dataset_close(dc_dataset *ds);

/* The indices of the images of some classes, in dataset order, for training
 * on part of a dataset (`diffc train --classes`, the one-class protocol of
 * anomaly detection). `spec` lists classes by index or by name, separated by
 * commas ("3", "0,2", "Trouser"). Errors: an unlabelled dataset, a class it
 * does not have, a class with no image. *idx is malloc'ed. */
int dc_dataset_select_classes(const dc_dataset *ds, const char *spec, int64_t **idx, int64_t *n);
/* The class that name[0..len) means: a class name, else an index; -1 after
 * dc_fail (the message lists the classes). */
int dc_class_index(char *const *class_names, int num_classes, const char *name, size_t len);

/* The items of a source read one at a time, as decoded, without a cache,
 * with the name each came from: for commands that score given images
 * (`diffc anomaly`) and must say which file a score is for. `source` is any
 * dataset (an image folder, IDX, CIFAR-10) or a single PNG/JPEG file. */
typedef struct dc_dataset_items {
    const char *kind;         /* "image folder", "IDX", "CIFAR-10", "image file" */
    const char *root;         /* the absolute path opened */
    int64_t count;            /* items, some of which may turn out unreadable */
    int num_classes;          /* 0 when unlabelled */
    char *const *class_names; /* [num_classes] */
    const int32_t *labels;    /* [count], -1 unlabelled */
    void *impl;
} dc_dataset_items;

int dc_dataset_items_open(dc_dataset_items *it, const char *source, const char *split);
/* Item i's name: its path relative to the root (a folder), the file's name,
 * or "image <i>" (IDX, CIFAR-10; written into buf). */
const char *dc_dataset_item_name(const dc_dataset_items *it, int64_t i, char *buf, size_t n);
/* Decode item i: 0; 1 when it must be skipped (the reason in dc_error(),
 * without the name); -1 on a fatal error. */
int dc_dataset_item_image(const dc_dataset_items *it, int64_t i, dc_image *img);
void dc_dataset_items_close(dc_dataset_items *it); /* safe on a zeroed or closed one */

/* What `source` holds without building a cache: image count, size range,
 * channels, classes with counts, skipped files with reasons. For `diffc info`.
 * Every image is decoded (that is how bad files are found); a cache file's
 * pixel checksum is verified. Nothing is printed. */
typedef struct dc_dataset_summary {
    const char *kind;       /* "image folder", "IDX", "CIFAR-10", "cache" */
    char *built_from;       /* a cache: "<kind> <path>" of its source; else NULL */
    int64_t count;          /* usable images (of split "train" for IDX and CIFAR-10 folders) */
    int64_t test_count;     /* IDX and CIFAR-10 folders: images of split "test", -1 when absent */
    int64_t captioned;      /* images with a non-empty caption */
    int min_w, max_w, min_h, max_h;
    int min_c, max_c;
    int num_classes;
    char **class_names;
    int64_t *class_counts;  /* [num_classes] */
    int n_skipped;
    dc_dataset_skip *skipped;
} dc_dataset_summary;

int dc_dataset_summarize(dc_dataset_summary *s, const char *source);
void dc_dataset_summary_free(dc_dataset_summary *s);
/* True when `path` looks like a dataset (IDX/CIFAR/cache file, or a folder
 * with images or IDX/CIFAR files), so `diffc info` knows what to describe. */
bool dc_dataset_recognise(const char *path);

#endif
