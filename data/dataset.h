/*
 * Datasets: where training images come from, decoded once into a cache.
 *
 * Sources (DESIGN.md §5):
 *  - an image folder, searched recursively; PNG/JPEG recognised by content;
 *    class = first-level subfolder (sorted names), unlabelled when there are
 *    no subfolders; an optional metadata.jsonl ({"file_name", "text"}) gives
 *    captions;
 *  - MNIST/Fashion-MNIST IDX files, plain or .gz: a folder holding
 *    train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] (and the
 *    t10k- pair, used by split "test"), or an images file given directly;
 *  - CIFAR-10 binary batches (data_batch_*.bin / test_batch.bin, or one file).
 *
 * Every source is decoded, brought to the requested channels, resized
 * (shorter side to the resolution, then centre crop: torchvision's Resize +
 * CenterCrop) and written once to a cache file, which later runs map
 * directly. The cache header holds a magic, a version, count, H, W, C, the
 * class names and a fingerprint of the source and options; a changed source,
 * resolution or option rebuilds it. The file is written to a temporary name
 * and renamed, so a killed build leaves no half cache.
 *
 * Bad files in an image folder are skipped with one warning line each and
 * counted (opts.strict makes the first one an error); a source with nothing
 * usable, a malformed IDX or CIFAR file, a corrupt cache: one clear error.
 */
#ifndef DC_DATA_DATASET_H
#define DC_DATA_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dc_dataset_options {
    int resolution;         /* square side of the cached images; 0 keeps the source size (all equal) */
    int channels;           /* 1 or 3; 0 keeps the source's (RGB when mixed) */
    const char *split;      /* "train" (default) or "test" for IDX and CIFAR */
    const char *cache_dir;  /* NULL: $DIFFC_CACHE_DIR, else $XDG_CACHE_HOME/diffc, else ~/.cache/diffc */
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

/* What `source` holds without building a cache: image count, size range,
 * channels, classes with counts, skipped files with reasons. For `diffc info`. */
typedef struct dc_dataset_summary {
    const char *kind;       /* "image folder", "IDX", "CIFAR-10", "cache" */
    int64_t count;
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
