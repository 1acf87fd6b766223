/*
 * What the loop of `diffc train` (train.c) needs of the network it trains,
 * so one loop, one checkpoint format and one resume logic serve every
 * model: a UNet2DModel on images (model_unet.c) and a Stable Diffusion
 * UNet2DConditionModel on VAE latents with text (model_sd.c).
 *
 * The loop owns everything generic: the schedule, AdamW, the EMA, the
 * loader and its order, the timesteps and the noise of q_sample, the loss,
 * gradient accumulation, clipping, several ranks, checkpoints, metrics. A
 * model declares its parameters, says what the diffusion runs on (x0: the
 * batch's images, or their latents) and runs the network on a noised x0
 * with its conditioning (class labels, text). Its random draws are keyed
 * like the loop's (DC_TRAIN_STREAM_*, element = the image's stream
 * position), so they too are the same for any batch split, any number of
 * ranks and after a resume.
 *
 * `declare` decides which parameters are trained (m->ps: only those get
 * gradients and optimizer state; a frozen base model lives in the model's
 * own storage, as the SD model's VAE and text encoder do, and with
 * --lora-rank its UNet, m->ps then holding the LoRA adapters), and `forward`
 * decides how the network runs.
 */
#ifndef DC_TRAIN_MODEL_H
#define DC_TRAIN_MODEL_H

#include "options.h"

#include "autograd/diffusion.h"
#include "autograd/nn.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "models/lora.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

/* Philox streams under the run's seed. The loader uses streams below 2^62
 * (epoch shuffles) and from 2^63 (augmentation). The image at stream
 * position p takes element p of TIMESTEPS, LABEL_DROP and FLIP, elements
 * [p D, (p + 1) D) of NOISE and LATENT (D = the floats of one x0), and
 * [p C, (p + 1) C) of NOISE_OFFSET (C = x0's channels); rank r's
 * share of micro-batch k seeds its dropout masks from block k W + r of
 * DROPOUT (W ranks). */
#define DC_TRAIN_STREAM_BASE ((uint64_t)1 << 62)
#define DC_TRAIN_STREAM_TIMESTEPS (DC_TRAIN_STREAM_BASE + 0)
#define DC_TRAIN_STREAM_NOISE (DC_TRAIN_STREAM_BASE + 1)
#define DC_TRAIN_STREAM_LABEL_DROP (DC_TRAIN_STREAM_BASE + 2) /* and the captions' */
#define DC_TRAIN_STREAM_DROPOUT (DC_TRAIN_STREAM_BASE + 3)
#define DC_TRAIN_STREAM_LATENT (DC_TRAIN_STREAM_BASE + 4) /* the VAE sample's noise */
#define DC_TRAIN_STREAM_FLIP (DC_TRAIN_STREAM_BASE + 5)   /* --random-flip of cached latents */
#define DC_TRAIN_STREAM_NOISE_OFFSET (DC_TRAIN_STREAM_BASE + 6) /* elements [p C, (p + 1) C), C channels */
#define DC_TRAIN_SAMPLE_SEED_OFFSET 1000003 /* the grids' seed: fixed for the run, unlike its noise */

typedef struct dc_train_model dc_train_model;

/* A sample grid's images, for the loop to lay out and save. */
typedef struct dc_train_grid {
    float *px; /* [n, h, w, c] in [-1, 1], malloc'ed */
    int64_t n;
    int h, w, c;
    int cols;
} dc_train_grid;

typedef struct dc_train_model_ops {
    /* m->unet_json and the trained parameters declared in m->ps (not yet
     * allocated); *weights (malloc'ed) the file that holds their values, or
     * NULL for a fresh model. */
    int (*declare)(dc_train_model *m, char **weights);
    /* The dataset's options (resolution, captions' column). */
    void (*dataset_options)(const dc_train_model *m, dc_dataset_options *d);
    /* Once the weights are loaded and m->ds is open: the data fits the
     * model, what the model precomputes (latents, text embeddings) is
     * ready, and m->x0_h, _w, _c are set. ctx is the step's, free to use. */
    int (*open_data)(dc_train_model *m, dc_ctx *ctx);
    /* x0 [b->n, x0_h, x0_w, x0_c] of the micro-batch, on ctx. */
    dc_tensor *(*x0)(dc_train_model *m, dc_ctx *ctx, const dc_batch *b);
    /* The network's prediction for xt [n, ...] at timesteps t [n] (i32),
     * with the batch's conditioning. */
    dc_tensor *(*forward)(dc_train_model *m, dc_ctx *ctx, const dc_batch *b, dc_tensor *xt, dc_tensor *t);
    /* The sample grid of the current weights (m->ps), seeded with `seed`. */
    int (*sample)(dc_train_model *m, dc_ctx *ctx, const dc_noise_schedule *sched, uint64_t seed,
                  dc_train_grid *g);
    void (*free)(dc_train_model *m);
} dc_train_model_ops;

struct dc_train_model {
    const dc_train_model_ops *ops;
    const dc_train_options *o;
    int device;           /* where the parameters and activations live */
    bool root;            /* rank 0: the one that speaks */
    const dc_dataset *ds; /* set before open_data */
    dc_params ps;         /* the trained parameters, in the flat buffers AdamW and the ranks use */
    cJSON *unet_json;     /* unet/config.json as saved */
    const char *frozen_from; /* dc_pipeline.frozen_from: the SD folder, or NULL */
    const dc_lora *lora;  /* --lora-rank: m->ps holds the adapters, the saved folders their file alone */
    bool loader_flips;    /* --random-flip is the loader's (images); else the model's */
    size_t frozen_bytes;  /* what the model holds besides m->ps (frozen networks), for the memory check */
    int x0_h, x0_w, x0_c; /* what the diffusion runs on */
    void *impl;
};

/* The model that o trains: Stable Diffusion when --pretrained-model is a
 * StableDiffusionPipeline folder, else a UNet2DModel. */
int dc_train_model_init(dc_train_model *m, const dc_train_options *o, int device, bool root);
void dc_train_model_free(dc_train_model *m);

/* --dropout into m->unet_json (the saved config says what was trained). */
int dc_train_model_override_dropout(dc_train_model *m);

/* Stable Diffusion's latents of a latent distribution: z = mean + std * eps,
 * (z - shift_factor) * scaling_factor, as diffusers' latent_dist.sample()
 * times scaling_factor; out[n] (may be eps). */
void dc_train_sd_latents(const float *mean, const float *std, const float *eps, int64_t n, float scaling_factor,
                         float shift_factor, float *out);

/* The two kinds (model_unet.c, model_sd.c). */
int dc_train_model_unet_init(dc_train_model *m);
int dc_train_model_sd_init(dc_train_model *m);

#endif
