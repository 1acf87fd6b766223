/*
 * Checkpoints and pipeline folders (DESIGN.md §5).
 *
 * A pipeline folder is what diffusers' DDPMPipeline.save_pretrained writes
 * and DDPMPipeline.from_pretrained reads (or, fine-tuning Stable Diffusion,
 * what StableDiffusionPipeline reads: see dc_pipeline.frozen_from):
 *
 *   model_index.json
 *   unet/config.json                               the UNet2DModel config
 *   unet/diffusion_pytorch_model.safetensors       the weights (PyTorch layout)
 *   scheduler/scheduler_config.json                the DDPMScheduler config
 *
 * A checkpoint is a pipeline folder named checkpoint-<step> inside the
 * output folder, plus what training needs to continue:
 *
 *   unet_ema/config.json, unet_ema/diffusion_pytorch_model.safetensors
 *                                                  the EMA weights, as diffusers' EMAModel saves them
 *   train_state.safetensors                        the caller's tensors (optimizer moments, step,
 *                                                  RNG, data cursor) and metadata (the training config)
 *   DONE                                           written last: the checkpoint is complete
 *
 * Writing one: everything goes into .checkpoint-<step>.tmp (a stale one is
 * removed first), every file and folder is fsync'ed, the folder is renamed
 * to checkpoint-<step> (an existing one of that step is replaced), the
 * output folder is synced, and DONE is written and synced. A failure (a
 * full disk, say) removes the temporary folder and leaves every earlier
 * checkpoint as it was; a crash or kill -9 at any point leaves at worst a
 * temporary folder or a checkpoint without DONE, which readers ignore and the
 * next save removes.
 */
#ifndef DC_TRAIN_CHECKPOINT_H
#define DC_TRAIN_CHECKPOINT_H

#include "autograd/nn.h"
#include "autograd/safetensors.h"

#include <cjson/cJSON.h>
#include <stdint.h>

/* The diffusers version our folders claim to be written by. */
#define DC_DIFFUSERS_VERSION "0.27.2"

/* What a pipeline folder holds. */
typedef struct dc_pipeline {
    const cJSON *unet_config;      /* the UNet2DModel config ("_class_name" is added when missing) */
    const cJSON *scheduler_config; /* the DDPMScheduler config (likewise) */
    const dc_params *params;       /* the parameters' names and shapes */
    const float *weights;          /* laid out like params->data; NULL: params->data */
    const float *ema;              /* the EMA weights, same layout; NULL: no unet_ema/ */
    const cJSON *ema_state;        /* EMAModel's fields (decay, optimization_step, ...) that diffusers
                                      keeps in unet_ema/config.json; may be NULL */
    const char *frozen_from;       /* a Stable Diffusion pipeline folder whose model_index.json,
                                      scheduler/ and frozen components (tokenizer/, text_encoder/,
                                      vae/) the folder takes, hard-linked where the file system
                                      allows, else copied; NULL: a DDPMPipeline (scheduler_config) */
    const struct dc_lora *lora;    /* a LoRA run (params are its adapters): the folder holds only
                                      pytorch_lora_weights.safetensors, what diffusers' LoRA training
                                      writes and load_lora_weights reads */
} dc_pipeline;

/* What a checkpoint adds: train_state.safetensors. */
typedef struct dc_train_state {
    const dc_st_tensor *tensors;
    int n;
    const char *const *meta_keys, *const *meta_values;
    int n_meta;
} dc_train_state;

/* Called after each file of a checkpoint is written and synced, and after
 * the rename (with the checkpoint folder's path): for progress, and for
 * tests that kill the writer at a chosen point. */
typedef void (*dc_checkpoint_hook)(const char *path, void *arg);

/* Write a pipeline folder at `dir` (created if needed; the final model goes
 * into the output folder itself, as diffusers' training examples do). Each
 * file is replaced atomically; unet_ema/ is written when p->ema is set. */
int dc_pipeline_save(const char *dir, const dc_pipeline *p);

/* Write `output_dir`/checkpoint-<step> as described above. `s` may be NULL
 * (no train_state.safetensors), `hook` too. */
int dc_checkpoint_save(const char *output_dir, int64_t step, const dc_pipeline *p, const dc_train_state *s,
                       dc_checkpoint_hook hook, void *arg);

/* What a checkpoint holds besides train_state.safetensors, for a trainer
 * of another model: write(dir, model, fn, arg) writes the model's files into
 * the fresh folder `dir`, calling fn(path, arg) (when set) after each file,
 * and syncs them. */
typedef struct dc_model_writer {
    int (*write)(const char *dir, const void *model, dc_checkpoint_hook fn, void *arg);
    const void *model;
} dc_model_writer;

/* The writer of pipeline folders, for dc_checkpoint_save_model. */
dc_model_writer dc_pipeline_writer(const dc_pipeline *p);

/* dc_checkpoint_save with the model's files from `w`. */
int dc_checkpoint_save_model(const char *output_dir, int64_t step, const dc_model_writer *w,
                             const dc_train_state *s, dc_checkpoint_hook fn, void *arg);

/* Remove what earlier saves left behind (temporary folders, checkpoints
 * without DONE) and, when keep > 0, the oldest complete checkpoints beyond
 * the newest `keep` (--checkpoints-total-limit). Call after a successful save. */
int dc_checkpoint_prune(const char *output_dir, int64_t keep);

/* The newest complete checkpoint in `output_dir`: 1 with *path (malloc'ed)
 * and *step set, 0 when there is none (or no such folder), -1 on error. */
int dc_checkpoint_latest(const char *output_dir, char **path, int64_t *step);

/* --resume-from-checkpoint: "latest" (the newest complete checkpoint; *path
 * is NULL when there is none, and a new run starts, as in diffusers), or a
 * checkpoint folder, given as a path or as a name inside `output_dir`; it
 * must be complete (hold DONE). 0 or -1. */
int dc_checkpoint_resolve(const char *output_dir, const char *which, char **path);

/* Read a checkpoint back: the UNet weights into `weights` (NULL:
 * ps->data), the EMA weights into `ema` when it is not NULL (an error when
 * the checkpoint has none), and train_state.safetensors into *state when it
 * is not NULL (the caller closes it). Names, shapes and dtypes are checked
 * by dc_params_load before any value changes. */
int dc_checkpoint_load(const char *dir, dc_params *ps, float *weights, float *ema, dc_st_file *state);

/* Open `dir`/train_state.safetensors into *state (the caller closes it). */
int dc_checkpoint_open_state(const char *dir, dc_st_file *state);

/* Whether the checkpoint's UNet weights fit ps's declarations, from the
 * file's header alone: called before the parameters are allocated, so a
 * checkpoint whose config.json does not match its weights is refused before
 * the model it describes takes any memory. */
int dc_checkpoint_check(const char *dir, const dc_params *ps);

#endif
