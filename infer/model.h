/*
 * A diffusers model folder opened for inference: the UNet with its weights
 * and the noise schedule it was trained with, for `diffc sample` and the
 * commands that follow it (augment, anomaly).
 *
 * Two kinds of folder (DESIGN.md §5):
 *   a pipeline folder   unet/ (and unet_ema/ when trained with EMA) and
 *                       scheduler/scheduler_config.json, as
 *                       DDPMPipeline.save_pretrained and `diffc train` write;
 *   a bare UNet folder  config.json and diffusion_pytorch_model.safetensors
 *                       (or its shards, or a variant such as fp16),
 *                       as UNet2DModel.save_pretrained writes; the schedule
 *                       is then DDPMScheduler's default (1000 linear steps,
 *                       epsilon).
 * The EMA weights (unet_ema/) are used when asked for and present: they are
 * what diffusers' training examples save as the final model. A pipeline
 * whose model_index.json names other components (a VAE, a text encoder) is
 * refused: its UNet does not make images.
 */
#ifndef DC_INFER_MODEL_H
#define DC_INFER_MODEL_H

#include "autograd/diffusion.h"
#include "models/unet.h"
#include "pipeline/samplers.h"

#include <stdbool.h>

typedef struct dc_model {
    dc_unet_config cfg;
    dc_unet unet;
    dc_params ps;
    dc_noise_schedule sched;
    char *weights_path;   /* the weight file (or sharded index) loaded */
    char *scheduler_path; /* scheduler/scheduler_config.json; NULL for a bare UNet folder */
    char *scheduler_json; /* its text */
    bool ema;             /* the weights are unet_ema/'s */
    int device;           /* where the weights live: DC_CPU or a CUDA ordinal */
} dc_model;

/* Open `dir`, with the EMA weights when use_ema and the folder has them.
 * Errors name the file: a missing folder, config or weight file, a config
 * the weights do not fit (the parameter and both shapes), a bad scheduler
 * config. On failure *m is left empty (safe to free). */
int dc_model_load(dc_model *m, const char *dir, bool use_ema);
/* The same with the weights of `variant` ("fp16"; NULL: the plain ones, or
 * the folder's only variant, with a note on stderr; see dc_unet_find) on
 * `device` (DC_CPU or a CUDA ordinal, as dc_device_resolve gives it). */
int dc_model_load_on(dc_model *m, const char *dir, bool use_ema, const char *variant, int device);
void dc_model_free(dc_model *m);

/* A context for forward passes of models loaded on `device` (a dc_model's,
 * or a text-to-image pipeline's): on the CPU an activation arena of
 * `cpu_bytes` (reserved, used as touched); on a GPU most of the memory free
 * after the weights (autograd/device.h). */
int dc_model_ctx_init(int device, dc_ctx *ctx, size_t cpu_bytes);

/* The sampler a command asks for over the model's schedule: `scheduler` by
 * name (its errors prefixed "--scheduler"), with the kind's defaults, then
 * the keys of the folder's scheduler config that apply to it (as diffusers'
 * from_config), then the command's own: `steps` (0: keep), `spacing` (a
 * timestep spacing name, NULL: keep), `eta` (DDIM; negative: keep). */
int dc_model_sampler(const dc_model *m, const char *scheduler, int64_t steps, const char *spacing, double eta,
                     dc_sampler *s);

#endif
