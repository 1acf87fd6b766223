/*
 * transformers' BlipForConditionalGeneration, the BLIP captioner, built from
 * the engine's layers and models/transformer's shared pieces.
 *
 * A model folder as save_pretrained writes it: config.json (BlipConfig:
 * vision_config and text_config, transformers' defaults for absent keys) and
 * model.safetensors or model.safetensors.index.json with its shards, in f32,
 * f16 or bf16. Parameters carry the state_dict's names
 * ("vision_model.encoder.layers.0.self_attn.qkv.weight",
 * "text_decoder.bert.encoder.layer.0.crossattention.self.query.weight", ...).
 * With tie_word_embeddings (the default) the LM head's decoder is the word
 * embedding table and its bias cls.predictions.bias, as transformers ties
 * them: text_decoder.cls.predictions.decoder.weight/.bias are then not
 * parameters, and copies of them in a file are skipped; untied, the decoder
 * has its own weight and bias (and cls.predictions.bias is loaded, unused).
 *
 * Vision (BlipVisionModel): a patch conv (stride = patch), the class token,
 * learned positions, pre-LN layers (fused qkv, projection, GELU MLP), a final
 * LayerNorm on every token. Text (BlipTextLMHeadModel): BERT embeddings
 * (word + absolute position, LayerNorm), post-LN layers of causal
 * self-attention, cross-attention to the image tokens and a GELU MLP, and the
 * cls.predictions head (dense, GELU, LayerNorm, decoder).
 *
 * Supported: hidden_act "gelu" (erf) in both halves, is_decoder true, square
 * integer image_size and patch_size; anything else that changes the network
 * is refused with the key and its value. Sizes are checked against generous
 * limits before anything is declared, and the weight file against the
 * declarations before anything is allocated (dc_params_alloc_load).
 *
 * Tensors: pixels NHWC [N, S, S, 3], already normalised (BlipImageProcessor);
 * image embeddings [N, 1 + (S/P)^2, Dv]; token ids i32 [N, T].
 */
#ifndef DC_MODELS_BLIP_H
#define DC_MODELS_BLIP_H

#include "autograd/nn.h"
#include "models/text_generate.h"
#include "models/transformer.h"

#include <stdbool.h>
#include <stdint.h>

#define DC_BLIP_CONFIG_FILE "config.json"
#define DC_BLIP_WEIGHTS_FILE "model.safetensors"

/* Plausible sizes, generous for real models (BLIP large: 1024 wide, 24
 * vision layers, 384 pixels in 16-pixel patches, 30524 tokens). */
#define DC_BLIP_MAX_HIDDEN 8192
#define DC_BLIP_MAX_INTERMEDIATE 65536
#define DC_BLIP_MAX_LAYERS 128
#define DC_BLIP_MAX_VOCAB (1 << 20)
#define DC_BLIP_MAX_POSITIONS 65536
#define DC_BLIP_MAX_IMAGE 8192
#define DC_BLIP_MAX_PATCHES 65536 /* (image_size / patch_size)^2 */

typedef struct dc_blip_vision_config {
    int hidden_size, intermediate_size, num_hidden_layers, num_attention_heads;
    int image_size, patch_size;
    float layer_norm_eps;
} dc_blip_vision_config;

typedef struct dc_blip_text_config {
    int vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads;
    int max_position_embeddings;
    int encoder_hidden_size; /* always the vision hidden_size, as BlipConfig sets it */
    float layer_norm_eps;
    /* -1 where the config has null. sep_token_id ends a caption (generate's eos). */
    int bos_token_id, pad_token_id, sep_token_id, eos_token_id;
} dc_blip_text_config;

typedef struct dc_blip_config {
    dc_blip_vision_config vision;
    dc_blip_text_config text;
    bool tie_word_embeddings;
    float label_smoothing;
} dc_blip_config;

/* Parse a BlipConfig JSON text; `what` names it in messages. */
int dc_blip_config_parse(dc_blip_config *c, const char *json, const char *what);

typedef struct dc_blip_net dc_blip_net; /* the layers (blip.c) */

typedef struct dc_blip {
    dc_blip_config cfg;
    dc_params params;
    int device; /* where the parameters live: DC_CPU or a CUDA ordinal */
    dc_blip_net *net;
} dc_blip;

/* Declare the model of `cfg` (no values yet; dc_params_alloc* gives them). */
int dc_blip_init(dc_blip **out, const dc_blip_config *cfg);
/* Read a model folder onto `device` (DC_CPU or a CUDA ordinal). */
int dc_blip_load(dc_blip **out, const char *dir, int device);
void dc_blip_free(dc_blip *m);
/* The rename function for dc_params_load / dc_params_check_file of m's weight
 * files: the tied copies (when tied) and the position_ids buffers some files
 * carry are skipped. */
dc_rename_fn dc_blip_renamer(const dc_blip *m);

/* pixels [N, S, S, 3] (S = image_size) -> image embeddings [N, 1 + (S/P)^2, Dv]. */
dc_tensor *dc_blip_vision_forward(dc_ctx *ctx, const dc_blip *m, dc_tensor *pixels);
/* ids [N, T] i32 (T <= max_position_embeddings), image_embeds [N, L, Dv] ->
 * logits [N, T, V]: every position's next-token logits, causal. Differentiable. */
dc_tensor *dc_blip_text_logits(dc_ctx *ctx, const dc_blip *m, dc_tensor *ids,
                               dc_tensor *image_embeds);

/* Incremental decoding for generation: self-attention keys and values cached
 * per row, cross-attention keys and values computed once per image and shared
 * by its rows (row r belongs to image r / rows_per_image). */
typedef struct dc_blip_decoder dc_blip_decoder;
/* image_embeds [images, L, Dv] (any device); rows = images * rows_per_image;
 * at most max_len tokens per row (<= max_position_embeddings). */
int dc_blip_decoder_init(dc_blip_decoder **out, const dc_blip *m, const dc_tensor *image_embeds,
                         int64_t rows_per_image, int64_t max_len);
/* The same decoder for new images of the same shape as its first ones
 * (image_embeds [images, L, Dv]), with its rows per image and max_len, from
 * no tokens: its memory is reused, where a new decoder's first touches of
 * fresh memory cost page faults (an eighth of a 3-beam decode). Fails (and
 * leaves d to be freed) when the shape differs. */
int dc_blip_decoder_restart(dc_blip_decoder *d, const dc_tensor *image_embeds);
/* Feed n tokens to every row (ids [rows, n], host), after those fed before;
 * logits [rows, V] (host) receives each row's next-token logits after its
 * last new token. */
int dc_blip_decoder_step(dc_blip_decoder *d, const int32_t *ids, int64_t n, float *logits);
/* Beam bookkeeping: new row i continues old row src[i] (src [rows], each
 * within row i's image). */
int dc_blip_decoder_reorder(dc_blip_decoder *d, const int64_t *src);
/* Tokens fed so far per row. */
int64_t dc_blip_decoder_length(const dc_blip_decoder *d);
/* The decoder as the language model of dc_text_generate (step and reorder). */
dc_lm dc_blip_decoder_lm(dc_blip_decoder *d);
void dc_blip_decoder_free(dc_blip_decoder *d);

#endif
