/*
 * The weight files of a diffusers or transformers model folder, safetensors
 * under the library's stem ("diffusion_pytorch_model" for diffusers' models,
 * "model" for transformers'), in one file or sharded, plain or as a variant
 * ("fp16", "non_ema", ...), as both libraries name them:
 *   <stem>.safetensors                 <stem>.safetensors.index.json
 *   <stem>.<variant>.safetensors       <stem>.safetensors.index.<variant>.json
 * Shards are named by their index; dc_params_load reads either kind of path.
 */
#ifndef DC_MODELS_WEIGHTS_H
#define DC_MODELS_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct dc_weights_kind {
    const char *stem;    /* "diffusion_pytorch_model" */
    const char *bin;     /* PyTorch's pickle by the same library: "diffusion_pytorch_model.bin" */
    const char *library; /* "diffusers", for messages */
    const char *cls;     /* the class that converts a .bin folder, for messages: "UNet2DModel" */
} dc_weights_kind;

/* The weights in folder `base` (*weights, malloc'ed): with `variant` (NULL for
 * none) that variant's single file or index; without one the plain ones, and
 * when those are not there but the folder holds exactly one variant, that
 * one, named in *guessed (malloc'ed, else NULL; `guessed` may be NULL) so the
 * caller can say so. Only safetensors can be read: a folder with only
 * PyTorch's .bin is an error that says how to convert it. */
int dc_weights_find(const char *base, const dc_weights_kind *kind, const char *variant,
                    char **weights, char **guessed);

/* Whether the file name `name` is a single weight file or a sharded index of
 * `kind` (not a shard); its variant ("" for the plain weights) into variant[n]. */
bool dc_weights_name(const dc_weights_kind *kind, const char *name, char *variant, size_t n);

#endif
