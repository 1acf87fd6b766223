/*
 * Images from noise: the denoising loop of a UNet and a sampler, in batches,
 * with optional class labels and classifier-free guidance. Used by `diffc
 * sample` and by the trainer's sample grids.
 *
 * Image k of a request draws from the Philox stream (seed, first_image + k)
 * (the sampler's noise contract), so an image is the same whatever the batch
 * size it was generated in.
 */
#ifndef DC_INFER_GENERATE_H
#define DC_INFER_GENERATE_H

#include "infer/samplers.h"
#include "models/unet.h"

typedef struct dc_generate_request {
    const dc_unet *unet;
    dc_sampler *sampler;
    int64_t n;             /* images */
    int64_t batch;         /* images per denoising run (>= 1) */
    int h, w;              /* image size; channels are the UNet's */
    const int32_t *labels; /* [n] class labels, NULL for an unconditional model */
    float guidance_scale;  /* > 1: classifier-free guidance against the "no class" label */
    uint64_t seed;
    uint64_t first_image;  /* the stream of image 0 */
} dc_generate_request;

/* Fill out [n, h, w, c] with the generated images in [-1, 1] (clamped).
 * Uses ctx for activations (it is reset at every step) with gradients and
 * dropout off. */
int dc_generate(dc_ctx *ctx, const dc_generate_request *r, float *out);

#endif
