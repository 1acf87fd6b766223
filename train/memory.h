/*
 * Whether a training step fits in memory, checked before the buffers that
 * grow with the batch exist (the data loader's batches, the activations the
 * first step touches): a --train-batch-size far past what the machine holds
 * is one clear error that names the bytes needed and available and the
 * largest batch that fits, instead of gigabytes allocated, then a crash or
 * a swap storm.
 *
 * The trainer measures the activations of a one-image step (a step's arena
 * holds, per image, what the forward pass keeps for the backward pass, plus
 * scratch that does not grow with the batch) and fills in the rest from
 * what it has allocated; the arithmetic is here. The weights, gradients and
 * optimizer state are allocated (and touched) by then, so the memory
 * available already leaves them out.
 */
#ifndef DC_TRAIN_MEMORY_H
#define DC_TRAIN_MEMORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dc_step_memory {
    int64_t batch;         /* images per micro-batch on this rank (--train-batch-size) */
    int64_t resolution;    /* for the message */
    const char *device;    /* "cpu", "cuda:0": where the activations live */
    size_t act_image;      /* activation bytes a step keeps per image */
    size_t act_scratch;    /* the step's transient peak above them */
    size_t act_capacity;   /* the activation arena's size */
    bool act_on_host;      /* the arena is host memory (training on the CPU) */
    size_t loader_image;   /* host bytes of the data loader's buffers per image */
    size_t held;           /* bytes the run holds already on its device (weights, gradients, AdamW's
                              moments, EMA): not in what is available, named in the message */
    size_t host_available; /* the host's MemAvailable */
    int ranks_on_host;     /* processes of this run sharing the host's memory (>= 1) */
} dc_step_memory;

/* 0 when a micro-batch of m->batch fits; otherwise an error naming the bytes
 * needed and available and the largest --train-batch-size that fits. */
int dc_step_memory_check(const dc_step_memory *m);

#endif
