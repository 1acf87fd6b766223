/*
 * A Stable Diffusion pipeline folder opened for inference, and its
 * text-to-image and image-to-image loop: diffusers' StableDiffusionPipeline
 * and StableDiffusionImg2ImgPipeline.
 *
 * The folder is what StableDiffusionPipeline.save_pretrained writes and what
 * the hub's SD-1.x / SD-2.x repositories hold: model_index.json naming
 * tokenizer/ (CLIPTokenizer), text_encoder/ (CLIPTextModel), unet/
 * (UNet2DConditionModel), vae/ (AutoencoderKL) and scheduler/ (its
 * scheduler_config.json). safety_checker, feature_extractor and
 * image_encoder entries are ignored with a note; any other component, or a
 * class diffc does not implement, is an error naming it.
 *
 * The loop, per batch of images, as the pipelines compute it:
 *   prompt embeds = text_encoder(tokenizer(prompt, padded to 77)), and with
 *     guidance (scale > 1) the negative prompt's ("" when none) before them;
 *   latents = noise * init_noise_sigma, or (img2img) the init image's VAE
 *     latents * scaling_factor noised to the first step's timestep;
 *   every step: eps = unet(scale_model_input(latents), t, embeds), guided as
 *     uncond + scale (cond - uncond); latents = scheduler.step(eps);
 *   images = vae.decode(latents / scaling_factor + shift_factor).
 * Image k of a request draws from the Philox stream (seed, first_image + k),
 * or (seed, streams[k]) (the samplers' noise contract), so an image is the
 * same whatever the batch.
 * Tensors are NHWC: latents [N, H/8, W/8, 4], images [N, H, W, 3] in [-1, 1].
 */
#ifndef DC_PIPELINE_SD_PIPELINE_H
#define DC_PIPELINE_SD_PIPELINE_H

#include "data/text/bpe.h"
#include "models/clip_text.h"
#include "models/unet_cond.h"
#include "models/vae.h"
#include "pipeline/samplers.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct dc_sd_pipeline {
    dc_bpe *tokenizer;
    dc_clip_text *text_encoder;
    dc_unet_cond unet;
    dc_params unet_params;
    dc_vae *vae;
    char *scheduler_path; /* scheduler/scheduler_config.json */
    char *scheduler_json; /* its text */
    int device;           /* where the weights live: DC_CPU or a CUDA ordinal */
} dc_sd_pipeline;

/* Whether `dir` holds a Stable Diffusion pipeline: its model_index.json
 * names a text encoder or a VAE. */
bool dc_sd_is_pipeline(const char *dir);
/* Open the pipeline in `dir` with the weights of `variant` (NULL: the plain
 * ones) on `device`. On failure *p is left empty (safe to free). */
int dc_sd_load(dc_sd_pipeline *p, const char *dir, const char *variant, int device);
/* dc_sd_load with a LoRA (models/lora.h: a pytorch_lora_weights.safetensors
 * or its folder; NULL: none) fused into the UNet's and text encoder's
 * weights at lora_scale before they are packed, as diffusers'
 * load_lora_weights then fuse_lora(lora_scale) gives them; with `half`, the
 * conv and linear weights packed as f16 for CPU inference
 * (dc_params_pack_half: half their memory, the sums stay f32; without a
 * LoRA each is packed as it is read, which keeps the peak of loading there
 * too). */
int dc_sd_load_lora(dc_sd_pipeline *p, const char *dir, const char *variant, int device, const char *lora,
                    float lora_scale, bool half);
void dc_sd_free(dc_sd_pipeline *p);
/* dc_sd_load without the UNet (unet and unet_params left empty): for a
 * trainer, which declares the UNet in parameters of its own; the text
 * encoder and the VAE are packed for inference (frozen). */
int dc_sd_load_frozen(dc_sd_pipeline *p, const char *dir, const char *variant, int device);
/* The UNet of config u fits p's VAE (latent channels) and text encoder
 * (cross-attention width); `dir` names the folder in errors. */
int dc_sd_check_unet(const dc_sd_pipeline *p, const dc_unet_cond_config *u, const char *dir);
/* The prompt embeds' shape: tokens per prompt (padded to the tokenizer's
 * model_max_length) and width. */
void dc_sd_text_shape(const dc_sd_pipeline *p, int64_t *tokens, int64_t *width);
/* texts[n] -> out [n, tokens, width] (host): the text encoder's last hidden
 * states (clip_skip layers fewer), as the pipeline conditions on them. ctx
 * is reset first; nothing is recorded on its tape. */
int dc_sd_encode_text(dc_ctx *ctx, const dc_sd_pipeline *p, const char *const *texts, int64_t n, int clip_skip,
                      float *out);
/* The sampler of the folder's scheduler config, or of `kind_name` (NULL:
 * the folder's class) with the folder's settings, num_inference_steps steps. */
int dc_sd_sampler(const dc_sd_pipeline *p, const char *kind_name, int num_inference_steps,
                  dc_sampler *s);
/* The latents' downscale factor (8 for SD) and channels. */
int dc_sd_latent_scale(const dc_sd_pipeline *p);

typedef struct dc_sd_request {
    dc_sampler *sampler;
    int64_t n;                   /* images */
    int64_t batch;               /* images per denoising run (>= 1) */
    int h, w;                    /* image size, multiples of dc_sd_latent_scale */
    const char *const *prompts;  /* [n] each image's prompt */
    const char *negative;        /* every image's negative prompt; NULL: "" */
    float guidance_scale;        /* > 1: classifier-free guidance */
    int clip_skip;               /* text encoder layers skipped (diffusers' clip_skip) */
    uint64_t seed;
    uint64_t first_image; /* the stream of image 0 */
    const uint64_t *streams; /* [n] each image's own stream instead (first_image unused); NULL: consecutive */
    const float *latents; /* [n, h/f, w/f, c] the initial noise instead of the draws (diffusers'
                             latents=); NULL: drawn */
    const float *init;    /* [n, h, w, 3] img2img: images in [-1, 1]; NULL: text-to-image */
    double strength;      /* img2img: in (0, 1] */
    void (*on_step)(void *arg, int64_t first, int64_t b, int done, int steps);
    void *on_step_arg;
} dc_sd_request;

/* Fill out [n, h, w, 3] with the images in [-1, 1] (clamped). ctx is the
 * pipeline's device's, reset at every model call, gradients off. */
int dc_sd_generate(dc_ctx *ctx, const dc_sd_pipeline *p, const dc_sd_request *r, float *out);

#endif
