/*
 * Images from noise: the denoising loop of a UNet and a sampler, in batches,
 * with optional class labels and classifier-free guidance. Used by `diffc
 * sample` and by the trainer's sample grids.
 *
 * Image k of a request draws from the Philox stream (seed, first_image + k)
 * (the sampler's noise contract), so an image is the same whatever the batch
 * size it was generated in (or from streams[k] when given: `diffc augment`
 * names each image's stream after what it is). With init images (img2img),
 * the denoising starts part-way, from the init images noised to that step's
 * timestep. A model that predicts its variance too (out_channels twice
 * in_channels, guided-diffusion's learned_range) has its output split per
 * pixel: the first half is the prediction (guided), the second the variance
 * (of the conditional pass), which the sampler reads when it needs it.
 */
#ifndef DC_PIPELINE_GENERATE_H
#define DC_PIPELINE_GENERATE_H

#include "models/unet.h"
#include "pipeline/samplers.h"

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
    const uint64_t *streams; /* [n] each image's own stream instead (first_image unused); NULL: consecutive */
    const float *init;     /* [n, h, w, c] img2img (SDEdit): images in [-1, 1] to start from,
                              noised to the timestep of the first step run; NULL: pure noise */
    double strength;       /* img2img: in (0, 1]; the last int(steps * strength) steps run */
    /* When set, called after every step of every denoising run: `done` of
     * `steps` steps of the run over images [first, first + b) of the request. */
    void (*on_step)(void *arg, int64_t first, int64_t b, int done, int steps);
    void *on_step_arg;
} dc_generate_request;

/* Fill out [n, h, w, c] with the generated images in [-1, 1] (clamped).
 * Uses ctx for activations, on its device, which must be the UNet's
 * parameters' (dc_model_ctx_init makes one); the sampler and its noise run
 * on the host, so image k is the same draw on every device. ctx is reset at
 * every step, with gradients and
 * dropout off. img2img follows diffusers' img2img pipelines: start at step
 * dc_sampler_img2img_start(strength) with the init image noised by
 * dc_sampler_add_noise with the image's initial draw (the noise contract),
 * so an img2img image too is the same whatever the batch size. */
int dc_generate(dc_ctx *ctx, const dc_generate_request *r, float *out);

#endif
