/*
 * The batch loader: worker threads assemble batches from a dataset's cache
 * (augment, uint8 -> float in [-1, 1]) into a small queue the trainer reads.
 *
 * Order (a contract: resume and multi-GPU rely on it). The epochs form one
 * stream: epoch e is a permutation of [0, count) drawn from Philox keyed by
 * (seed, stream e), and the stream is epoch 0, then epoch 1, ... Global batch k
 * is stream positions [k G, (k + 1) G) with G = world * batch_size, and rank r
 * takes positions [k G + r B, k G + (r + 1) B). So every batch is full, every
 * image is seen exactly once per epoch across all ranks, and batch k is the
 * same whatever the number of threads. Augmentation of the image at stream
 * position p (flip, crop offset) is drawn from Philox keyed by (seed, stream
 * 2^63 + p), apart from the epochs' streams, so it too is independent of
 * threads and of where a run was resumed. loader.c spells out both draws.
 *
 * The cursor is the index of the next global batch: saving it and passing it
 * back to dc_loader_open resumes exactly where the run stopped.
 */
#ifndef DC_DATA_LOADER_H
#define DC_DATA_LOADER_H

#include "dataset.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dc_loader_config {
    const dc_dataset *ds;
    const int64_t *subset; /* [n_subset] the dataset indices to draw from, ascending (NULL: all); the
                              order below is over positions in this list */
    int64_t n_subset;
    int batch_size;   /* per rank */
    int rank, world;  /* 0, 1 for a single process */
    uint64_t seed;
    int threads;      /* worker threads (>= 1) */
    int prefetch;     /* batches assembled ahead of the one being used (>= 1) */
    bool flip;        /* random horizontal flip, p = 0.5 */
    int crop;         /* random crop side (<= the cached size); 0 = no crop */
} dc_loader_config;

typedef struct dc_batch {
    int64_t index;    /* global batch index k */
    int64_t position; /* stream position of images[0]: k G + rank B */
    int n;            /* images in this batch (= batch_size) */
    int h, w, c;
    float *images;    /* [n, h, w, c] in [-1, 1] */
    int32_t *labels;  /* [n], -1 when unlabelled */
    int64_t *ids;     /* [n] dataset indices, for captions and tests */
} dc_batch;

typedef struct dc_loader dc_loader;

/* Host bytes of the batch buffers a loader holds for batches of `batch_size`
 * images of w x h x c with `prefetch` (SIZE_MAX when that overflows), so a
 * trainer can check that they fit before opening one. */
size_t dc_loader_buffer_bytes(int64_t batch_size, int h, int w, int c, int prefetch);

/* Start the workers; the first batch is `cursor` (0 for a new run). */
int dc_loader_open(dc_loader **l, const dc_loader_config *cfg, int64_t cursor);
/* The next batch, in order; valid until the following call. NULL on error. */
const dc_batch *dc_loader_next(dc_loader *l);
/* The index of the batch the next dc_loader_next returns. */
int64_t dc_loader_cursor(const dc_loader *l);
/* Epoch of a global batch index: (k G) / count; -1 for a k < 0 or so large
 * that its positions overflow int64 (no batch has it). */
int64_t dc_loader_epoch(const dc_loader *l, int64_t batch_index);
void dc_loader_close(dc_loader *l); /* joins the workers; NULL-safe */

#endif
