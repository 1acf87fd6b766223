/*
 * diffusers' UNet2DConditionModel, the Stable Diffusion UNet, built from the
 * engine's layers and the blocks of unet_blocks.h.
 *
 * The configuration is a diffusers config.json: the same keys and defaults
 * as UNet2DConditionModel.__init__ (diffusers 0.42), unknown keys ignored.
 * Parameters carry the names of its state_dict
 * ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"), so
 * the weights of a Stable Diffusion 1.x / 2.x pipeline's unet/ folder load
 * unchanged (f16 and bf16 converted to f32).
 *
 * Supported: CrossAttnDownBlock2D, DownBlock2D, CrossAttnUpBlock2D,
 * UpBlock2D, UNetMidBlock2DCrossAttn or no mid block (mid_block_type null);
 * Transformer2DModel with a 1x1 conv or (use_linear_projection, SD 2.x) a
 * linear proj_in / proj_out; BasicTransformerBlock (LayerNorm, self-attention,
 * cross-attention to the text, GEGLU feed-forward); layers_per_block,
 * transformer_layers_per_block, attention_head_dim and cross_attention_dim
 * per level or for all; upcast_attention (diffc's softmax is f32 anyway);
 * act_fn silu; time_embedding_dim. Refused with the key named: class and
 * addition embeddings (SDXL's text_time), encoder_hid_proj, other blocks,
 * only_cross_attention, num_attention_heads (diffusers refuses it too),
 * resnet_time_scale_shift other than "default", kernels other than 3.
 *
 * Heads, diffusers' quirk kept: num_attention_heads = attention_head_dim
 * (an integer or a per-level list: SD 1.x's 8, SD 2.x's [5, 10, 20, 20]),
 * and each level's head width is its channels / heads. The up path takes
 * the levels' values in reverse, the mid block the deepest level's.
 *
 * Tensors are NHWC: sample [N, H, W, in_channels], encoder_hidden_states
 * [N, L, cross_attention_dim] -> [N, H, W, out_channels], H and W multiples
 * of 2^(levels - 1).
 */
#ifndef DC_MODELS_UNET_COND_H
#define DC_MODELS_UNET_COND_H

#include "models/transformer.h"
#include "models/unet.h"
#include "models/unet_blocks.h"

#include <stdbool.h>

/* Plausible sizes beyond unet.h's (SD: 1 transformer layer per block, 768 /
 * 1024-wide text, 5 to 20 heads; SDXL's deepest blocks have 10 layers). */
#define DC_UNET_COND_MAX_TRANSFORMER_LAYERS 64
#define DC_UNET_COND_MAX_CROSS_DIM 16384

/* A parsed config.json; per-level values already resolved as diffusers does. */
typedef struct dc_unet_cond_config {
    int sample_size[2]; /* [height, width] the model was trained at (latents); 0 when null */
    int in_channels, out_channels;
    bool center_input_sample; /* x -> 2x - 1 before conv_in */
    bool flip_sin_to_cos;
    float freq_shift;
    int levels;                                     /* len(block_out_channels) */
    int block_out_channels[DC_UNET_MAX_LEVELS];     /* [levels] */
    bool down_cross[DC_UNET_MAX_LEVELS];            /* [levels] CrossAttnDownBlock2D, else DownBlock2D */
    bool up_cross[DC_UNET_MAX_LEVELS];              /* [levels] CrossAttnUpBlock2D, else UpBlock2D
                                                       (deepest first) */
    bool mid_block;                                 /* UNetMidBlock2DCrossAttn; false: null */
    int layers_per_block[DC_UNET_MAX_LEVELS];       /* [levels]; up blocks have one more */
    int transformer_layers[DC_UNET_MAX_LEVELS];     /* [levels] transformer_layers_per_block */
    int heads[DC_UNET_MAX_LEVELS];                  /* [levels] num_attention_heads */
    int cross_attention_dim[DC_UNET_MAX_LEVELS];    /* [levels] the text's width */
    int downsample_padding;                         /* 1, or 0 (pad bottom and right first) */
    float mid_block_scale_factor;
    float dropout; /* the resnets' */
    int norm_num_groups;
    float norm_eps;
    bool use_linear_projection; /* proj_in / proj_out linear (SD 2.x), else 1x1 convs */
    bool upcast_attention;      /* accepted: diffc's softmax is f32 whatever it says */
    int time_embedding_dim;     /* 0 (null): 4 block_out_channels[0] */
    char *json;                 /* the original text (malloc'ed), for saving back */
} dc_unet_cond_config;

/* Parse config.json text; `what` names it in errors. On failure *c is left
 * empty (safe to free). */
int dc_unet_cond_config_parse(dc_unet_cond_config *c, const char *json, const char *what);
int dc_unet_cond_config_load(dc_unet_cond_config *c, const char *path);
int dc_unet_cond_config_save(const dc_unet_cond_config *c, const char *path);
void dc_unet_cond_config_free(dc_unet_cond_config *c);

/* BasicTransformerBlock: x += attn1(norm1(x)); x += attn2(norm2(x), text);
 * x += ff(norm3(x)), ff = net.2(a * gelu(g)) with [a, g] = net.0.proj(x). */
typedef struct dc_unet_tf_block {
    dc_nn_layer_norm norm1, norm2, norm3;
    dc_tf_attention attn1, attn2; /* to_q, to_k, to_v without bias, to_out.0 */
    dc_nn_linear ff_proj;         /* ff.net.0.proj: [C] -> [8C] (a, then the gate g) */
    dc_nn_linear ff_out;          /* ff.net.2: [4C] -> [C] */
} dc_unet_tf_block;

/* Transformer2DModel over a feature map: GroupNorm (eps 1e-6), proj_in, the
 * blocks over the H*W tokens, proj_out, + the input. */
typedef struct dc_unet_transformer {
    dc_nn_group_norm norm;
    dc_nn_conv2d proj_in_conv, proj_out_conv; /* 1x1; weight NULL with linear projections */
    dc_nn_linear proj_in, proj_out;           /* use_linear_projection; weight NULL otherwise */
    int n_blocks;
    dc_unet_tf_block *blocks; /* [n_blocks] transformer_blocks */
} dc_unet_transformer;

/* One level of the down or up path, or the mid block. */
typedef struct dc_unet_cond_block {
    int n_layers, n_attentions;
    dc_unet_resnet *resnets;           /* [n_layers] */
    dc_unet_transformer *attentions;   /* [n_attentions]: n_layers (mid: 1), or 0 and NULL */
    dc_nn_conv2d sampler;              /* downsamplers.0.conv / upsamplers.0.conv; weight NULL
                                          on the last level */
    bool pad_bottom_right;             /* downsample_padding 0 */
} dc_unet_cond_block;

typedef struct dc_unet_cond {
    dc_unet_cond_config cfg;         /* a copy, without the text */
    dc_nn_conv2d conv_in;            /* in_channels -> block_out_channels[0] */
    dc_nn_linear time_linear_1;      /* time_embedding.linear_1: [C0] -> [T] */
    dc_nn_linear time_linear_2;      /* time_embedding.linear_2: [T] -> [T] */
    dc_unet_cond_block down[DC_UNET_MAX_LEVELS]; /* [levels], full resolution first */
    dc_unet_cond_block mid;                      /* n_layers 0 without a mid block */
    dc_unet_cond_block up[DC_UNET_MAX_LEVELS];   /* [levels], lowest resolution first */
    dc_nn_group_norm conv_norm_out;
    dc_nn_conv2d conv_out; /* block_out_channels[0] -> out_channels */
    bool gradient_checkpointing; /* each resnet and transformer a checkpoint (dc_checkpoint):
                                    less memory for a third more compute in training */
} dc_unet_cond;

/* Declare every parameter in `ps` under its state_dict name, in diffusers'
 * order, with PyTorch's initial values. */
int dc_unet_cond_init(dc_unet_cond *m, const dc_unet_cond_config *c, dc_params *ps);
void dc_unet_cond_free(dc_unet_cond *m);

/* The UNet of a Stable Diffusion pipeline folder `dir` (its unet/, or `dir`
 * itself when it is the UNet's own folder; dc_unet_find finds the weights:
 * single or sharded, `variant` such as "fp16" or NULL, *guessed as there),
 * declared in a fresh `ps` and loaded onto `device`. */
int dc_unet_cond_load(dc_unet_cond *m, dc_params *ps, const char *dir, const char *variant,
                      int device, char **guessed);

/* The predicted noise: x [N, H, W, in_channels] f32, t [N] (or [1], shared)
 * f32 or i32 timesteps, text [N, L, cross_attention_dim] f32 (the text
 * encoder's last hidden states) -> [N, H, W, out_channels]. Dropout follows
 * ctx->training. Without a tape every block gives its temporaries back as it
 * ends. NULL on failure, with the context failed and the reason in dc_error(). */
dc_tensor *dc_unet_cond_forward(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *x, dc_tensor *t,
                                dc_tensor *text);

/* The cross-attentions' keys and values of one text for every transformer
 * block, in forward order: what dc_unet_cond_forward projects from the text
 * states at every call, made once for a sampling run, whose text does not
 * change between steps. The tensors and arrays live in the context that made
 * them (its arenas; nothing to free), which must outlive their use and not be
 * reset meanwhile. */
typedef struct dc_unet_cond_text {
    int n;              /* cross-attentions */
    int64_t batch;      /* N */
    dc_tensor **k, **v; /* [n] each [N, L, C of the block's level] */
} dc_unet_cond_text;

/* text [N, L, cross_attention_dim] f32 -> every attn2's keys and values. */
int dc_unet_cond_text_init(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *text,
                           dc_unet_cond_text *kv);
/* dc_unet_cond_forward with the keys and values of dc_unet_cond_text_init
 * (made by the same model) instead of the text states: the same result. */
/* The model's transformers (Transformer2DModel) in forward order: down
 * levels, mid, up levels, into out (when not NULL); how many. */
int dc_unet_cond_transformers(const dc_unet_cond *m, dc_unet_transformer **out);

dc_tensor *dc_unet_cond_forward_text(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *x,
                                     dc_tensor *t, const dc_unet_cond_text *kv);

#endif
