/*
 * LoRA for Stable Diffusion: low-rank adapters (autograd/nn.h's dc_nn_lora)
 * on the UNet's attention projections, trained, saved and loaded in the files
 * diffusers reads and writes, and fused into the weights for inference.
 *
 * Training (what `diffc train --lora-rank R --lora-alpha A` does):
 *
 *   dc_unet_cond_load(&unet, &base, dir, ...);        the pretrained UNet
 *   dc_lora_attach_unet(&lora, &unet, &base, R, A, seed);
 *       adapters on to_q, to_k, to_v and to_out.0 of attn1 and attn2 of every
 *       transformer block (train_text_to_image_lora.py's target modules),
 *       PEFT's init (A kaiming-uniform from Philox(seed), B zero: the model is
 *       unchanged until a step is taken); `base` is frozen (dc_params_freeze:
 *       no gradients, its gradient buffer given back).
 *   the optimizer, clipping, all-reduce, EMA: over *lora.params alone
 *       (lora.params->data / ->grad / ->total); dc_params_zero_grad(lora.params);
 *       a grad_ready hook (ops.h) is told only of the adapters' gradients,
 *       dc_params_span(lora.params, ...) places them. The base is never
 *       packed (dc_params_pack) while adapters train. train_text_to_image_lora.py
 *       uses lora_alpha = rank (scale 1) unless told otherwise.
 *   dc_unet_cond_forward(ctx, &unet, ...), dc_backward: the adapters are in
 *       the forward pass; gradients reach only lora.params.
 *   dc_lora_save(&lora, dir): DIR/pytorch_lora_weights.safetensors, what
 *       StableDiffusionPipeline.load_lora_weights(DIR) reads.
 *   resuming: dc_lora_load(&lora, file) after attaching (the optimizer state
 *       is the trainer's).
 *   dc_lora_free(&lora) detaches the adapters, then the UNet may be freed.
 * The adapters sit inside the linear layers (dc_nn_linear.lora), so every
 * path through the UNet (dc_unet_cond_forward_text's precomputed keys,
 * recomputed checkpointed blocks) includes them.
 *
 * The file is what diffusers 0.42's save_lora_weights writes for a PEFT
 * adapter: "unet.<module>.lora_A.weight" [rank, in] and ".lora_B.weight"
 * [out, rank] in f32, __metadata__ {"format": "pt", "lora_adapter_metadata":
 * JSON of the LoraConfig with "unet."-prefixed keys (r, lora_alpha,
 * target_modules, ...)}, from which diffusers takes lora_alpha
 * (train_text_to_image_lora.py itself renames the keys to ".lora.down" /
 * ".lora.up" and saves no metadata; diffusers reads both).
 *
 * Reading (dc_lora_load, dc_lora_fuse) also takes the older diffusers names:
 * ".lora.down.weight" / ".lora.up.weight" (train_text_to_image_lora.py's
 * files), ".lora_linear_layer.down/up", the attention processors'
 * "<attn>.processor.to_q_lora.down.weight", and a per-module ".alpha"
 * scalar. A module's scale is alpha / rank with alpha from its ".alpha",
 * else the metadata's lora_alpha, else the rank (diffusers' default: scale
 * 1); alpha / sqrt(rank) with use_rslora. Keys under "text_encoder." adapt
 * the CLIP text encoder's linear layers (q/k/v/out_proj, fc1, fc2). Refused
 * with the key or setting named: kohya-style files (lora_unet_..., lora_te_...),
 * DoRA, LoRA biases, convolution adapters, alpha_pattern, modules the model
 * does not have or whose shapes differ from its layer's.
 */
#ifndef DC_MODELS_LORA_H
#define DC_MODELS_LORA_H

#include "models/unet_cond.h"

#include <stdint.h>

/* The file name inside a LoRA folder (diffusers' LORA_WEIGHT_NAME_SAFE). */
#define DC_LORA_WEIGHTS_FILE "pytorch_lora_weights.safetensors"

typedef struct dc_lora_layer {
    dc_nn_lora adapter;
    dc_nn_linear *target; /* the model's layer, adapter attached */
    char *name;           /* its module: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" */
} dc_lora_layer;

typedef struct dc_lora {
    dc_params *params; /* every A and B, named as in the file ("unet.<module>.lora_A.weight"): what trains */
    bool owns_params;  /* dc_lora_attach_unet's own set, freed with the adapters */
    int rank;
    float alpha;
    int n;
    dc_lora_layer *layers; /* [n] */
} dc_lora;

/* Attach adapters of `rank` (>= 1) and `alpha` (> 0) to the UNet's attention
 * projections, allocate them on base's device with PEFT's init from `seed`,
 * and freeze `base` (the UNet's parameters, allocated). On failure *l is
 * left empty and nothing is attached. */
int dc_lora_attach_unet(dc_lora *l, dc_unet_cond *m, dc_params *base, int rank, float alpha, uint64_t seed);
/* dc_lora_attach_unet's first half, for a trainer that keeps its trained
 * parameters in one set: declare the adapters in `ps` (not allocated yet;
 * dc_params_alloc_on(ps, device, seed) gives PEFT's init) and attach them,
 * naming them after base's parameters (declared). Nothing is frozen: the
 * caller keeps `base` out of its optimizer. No forward pass before `ps` is
 * allocated. */
int dc_lora_declare_unet(dc_lora *l, dc_unet_cond *m, const dc_params *base, dc_params *ps, int rank,
                         float alpha);
/* Detach the adapters and free them (their parameters only when
 * dc_lora_attach_unet made them); safe on an empty *l. */
void dc_lora_free(dc_lora *l);

/* DIR/pytorch_lora_weights.safetensors (DIR made when missing). */
int dc_lora_save(const dc_lora *l, const char *dir);
/* The adapters' values and scales from `path` (a file, or a folder holding
 * DC_LORA_WEIGHTS_FILE): every attached module, each of the same rank and
 * shapes, and nothing else. */
int dc_lora_load(dc_lora *l, const char *path);

/* For inference: W += lora_scale * scale * B A for every module of the file
 * (or folder) `path`: UNet ones into `unet`, text encoder ones into `text`
 * (its file names mapped to parameter names by text_rename, NULL: as they
 * are; `text` NULL: such keys are refused). Everything is checked before
 * any weight changes; packed weights (dc_params_pack) are refused. */
int dc_lora_fuse(const char *path, float lora_scale, dc_params *unet, dc_params *text,
                 dc_rename_fn text_rename);

#endif
