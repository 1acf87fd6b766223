/*
 * transformers' CLIPTextModel: the text encoder of Stable Diffusion
 * pipelines (their text_encoder/ folder), built from the engine's layers and
 * models/transformer's attention.
 *
 * A model folder as save_pretrained writes it: config.json (CLIPTextConfig;
 * transformers' defaults for absent keys, projection_dim ignored) and
 * model.safetensors, model.<variant>.safetensors (diffusers' "fp16", ...) or
 * a sharded index, in f32, f16 or bf16 (models/weights.h). Parameters carry
 * the hub's names ("text_model.embeddings.token_embedding.weight",
 * "text_model.encoder.layers.0.self_attn.q_proj.weight", ...,
 * "text_model.final_layer_norm.weight"); files that transformers 5 writes
 * without the "text_model." prefix load the same, and the
 * embeddings.position_ids buffer some files carry is skipped.
 *
 * Network: token + position embeddings; pre-LN layers (layer_norm1, causal
 * self-attention with biased q/k/v/out projections, residual; layer_norm2,
 * fc1, activation, fc2, residual); final_layer_norm. hidden_act "quick_gelu"
 * (OpenAI CLIP, SD-1.x) or "gelu" (OpenCLIP, SD-2.x); others are refused.
 *
 * Only the causal mask is applied: no padding mask, as Stable Diffusion
 * pipelines pass none (their text encoders' configs leave use_attention_mask
 * unset), so padding after the eos token changes no earlier position.
 *
 * Tensors: token ids i32 [N, L] (L <= max_position_embeddings), hidden
 * states [N, L, C].
 */
#ifndef DC_MODELS_CLIP_TEXT_H
#define DC_MODELS_CLIP_TEXT_H

#include "autograd/nn.h"

#include <stdbool.h>

#define DC_CLIP_TEXT_CONFIG_FILE "config.json"

/* Plausible sizes, generous for real models (SD-2.x's OpenCLIP ViT-H: 1024
 * wide, 23 layers, 4096 intermediate; SDXL's bigG: 1280 wide, 32 layers). */
#define DC_CLIP_TEXT_MAX_HIDDEN 8192
#define DC_CLIP_TEXT_MAX_INTERMEDIATE 65536
#define DC_CLIP_TEXT_MAX_LAYERS 128
#define DC_CLIP_TEXT_MAX_VOCAB (1 << 20)
#define DC_CLIP_TEXT_MAX_POSITIONS 65536

typedef enum dc_clip_text_act { DC_CLIP_TEXT_QUICK_GELU, DC_CLIP_TEXT_GELU } dc_clip_text_act;

typedef struct dc_clip_text_config {
    int vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads;
    int max_position_embeddings;
    dc_clip_text_act hidden_act;
    float layer_norm_eps;
    /* eos_token_id picks the pooled position: 2 (configs before transformers
     * PR #24773, all SD-1.x/2.x ones) means the largest id of each row, else
     * the row's first eos_token_id. */
    int bos_token_id, eos_token_id, pad_token_id;
} dc_clip_text_config;

/* Parse a CLIPTextConfig JSON text; `what` names it in messages. */
int dc_clip_text_config_parse(dc_clip_text_config *c, const char *json, const char *what);

typedef struct dc_clip_text_net dc_clip_text_net; /* the layers (clip_text.c) */

typedef struct dc_clip_text {
    dc_clip_text_config cfg;
    dc_params params;
    int device; /* where the parameters live: DC_CPU or a CUDA ordinal */
    dc_clip_text_net *net;
} dc_clip_text;

/* Declare the model of `cfg` (no values yet; dc_params_alloc* gives them). */
int dc_clip_text_init(dc_clip_text **out, const dc_clip_text_config *cfg);
/* Read a model folder (a pipeline's text_encoder/) onto `device` (DC_CPU or
 * a CUDA ordinal): its weights of `variant` ("fp16"; NULL: the plain ones,
 * or the folder's only variant, see dc_weights_find). */
int dc_clip_text_load(dc_clip_text **out, const char *dir, const char *variant, int device);
void dc_clip_text_free(dc_clip_text *m);
/* The rename function for dc_params_load of m's weight files (see above). */
dc_rename_fn dc_clip_text_renamer(const dc_clip_text *m);

/* ids [N, L] i32 -> final_layer_norm of the output of the last layer but
 * clip_skip ([N, L, C]): clip_skip 0 is transformers' last_hidden_state, k
 * is diffusers' prompt embeds with clip_skip=k (final_layer_norm of
 * hidden_states[-(k + 1)]); only the layers needed run. clip_skip in
 * [0, num_hidden_layers). hidden: NULL, or num_hidden_layers + 1 slots for
 * transformers' hidden_states (the embeddings, then every layer's output,
 * before final_layer_norm; the slots of layers that did not run are NULL).
 * Differentiable. */
dc_tensor *dc_clip_text_forward(dc_ctx *ctx, const dc_clip_text *m, dc_tensor *ids, int clip_skip,
                                dc_tensor **hidden);
/* transformers' pooler_output: x [N, L, C] (a last_hidden_state) at each row's
 * eos position of ids [N, L] (see eos_token_id above; a row without eos
 * gives position 0, as transformers' argmax does) -> [N, C]. */
dc_tensor *dc_clip_text_pooled(dc_ctx *ctx, const dc_clip_text *m, dc_tensor *ids, dc_tensor *x);
/* The pooled position of each of n rows of ids [n, L] (host). */
void dc_clip_text_eos_positions(const dc_clip_text_config *c, const int32_t *ids, int64_t n,
                                int64_t L, int64_t *pos);

#endif
