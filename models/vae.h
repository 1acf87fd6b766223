/*
 * diffusers' AutoencoderKL, the VAE of Stable Diffusion pipelines, built
 * from the blocks of unet_blocks.h.
 *
 * The configuration is a diffusers config.json (a pipeline's vae/ folder):
 * the same keys and the same defaults as AutoencoderKL.__init__ (diffusers
 * 0.42). Parameters carry the names of its state_dict
 * ("encoder.down_blocks.0.resnets.0.norm1.weight",
 * "decoder.mid_block.attentions.0.to_q.weight", "quant_conv.weight", ...);
 * the older attention names (query/key/value/proj_attn) of early SD
 * checkpoints are accepted on load (dc_unet_rename).
 *
 * Encoder: conv_in, per level a DownEncoderBlock2D (layers_per_block
 * resnets, then, but on the last level, Downsample2D: pad bottom and right,
 * a 3x3 conv of stride 2), UNetMidBlock2D (resnet, attention with one head
 * over all channels, resnet), conv_norm_out, silu, conv_out to 2 x
 * latent_channels, and quant_conv (1x1) when use_quant_conv. Decoder:
 * post_quant_conv (1x1) when use_post_quant_conv, conv_in, the mid block,
 * per level from the deepest an UpDecoderBlock2D (layers_per_block + 1
 * resnets, then, but on the last level, Upsample2D: nearest 2x, a 3x3 conv),
 * conv_norm_out, silu, conv_out. Resnets have no time embedding, norms eps
 * 1e-6 and norm_num_groups groups; act_fn is the resnets' activation
 * (silu / swish, mish, gelu), the one after conv_norm_out is silu whatever it
 * says, as in diffusers.
 *
 * Supported: down_block_types all "DownEncoderBlock2D", up_block_types all
 * "UpDecoderBlock2D"; anything else that would change the network is refused
 * with the key and its value; keys AutoencoderKL does not know are ignored,
 * as diffusers ignores them. latents_mean / latents_std (SDXL-style
 * pipelines) and force_upcast (diffc computes in f32) do not change the
 * network: they are accepted and not used.
 *
 * Tensors are NHWC: images [N, H, W, in_channels / out_channels] in [-1, 1],
 * H and W multiples of 2^(levels - 1); latents [N, H / 2^(levels - 1),
 * W / 2^(levels - 1), latent_channels].
 */
#ifndef DC_MODELS_VAE_H
#define DC_MODELS_VAE_H

#include "models/unet_blocks.h"

#include <stdbool.h>

/* Plausible sizes, generous for real models (SD's VAE: 4 levels of up to
 * 512 channels, 2 layers per block, 4 latent channels; later ones 16): a
 * config beyond them is refused before anything is declared. */
#define DC_VAE_MAX_LEVELS 8
#define DC_VAE_MAX_CHANNELS 16384 /* in_channels, out_channels, block_out_channels[i] */
#define DC_VAE_MAX_LATENT 4096    /* latent_channels */
#define DC_VAE_MAX_LAYERS_PER_BLOCK 32
#define DC_VAE_MAX_SAMPLE_SIZE 65536

/* A parsed config.json. */
typedef struct dc_vae_config {
    int in_channels, out_channels, latent_channels;
    int levels;                                 /* len(block_out_channels) */
    int block_out_channels[DC_VAE_MAX_LEVELS]; /* [levels] */
    int layers_per_block;
    int norm_num_groups;
    dc_unet_act act_fn;
    int sample_size[2];   /* [height, width] the VAE was trained at (its tiling's tile size) */
    float scaling_factor; /* latents = (z - shift_factor) * scaling_factor */
    float shift_factor;   /* 0 when null */
    bool use_quant_conv, use_post_quant_conv, mid_block_add_attention;
} dc_vae_config;

/* Parse config.json text; `what` names it in errors ("sd/vae/config.json"). */
int dc_vae_config_parse(dc_vae_config *c, const char *json, const char *what);
int dc_vae_config_load(dc_vae_config *c, const char *path);

/* One level of the encoder or decoder. */
typedef struct dc_vae_level {
    int n_layers;
    dc_unet_resnet *resnets; /* [n_layers] */
    dc_nn_conv2d sampler;    /* downsamplers.0.conv / upsamplers.0.conv; weight NULL on the
                                last level */
} dc_vae_level;

/* The encoder or the decoder. */
typedef struct dc_vae_coder {
    dc_nn_conv2d conv_in;
    dc_vae_level level[DC_VAE_MAX_LEVELS]; /* [levels]: the encoder's full resolution first,
                                              the decoder's deepest first */
    dc_unet_resnet mid_resnets[2];
    dc_unet_attention mid_attention; /* to_q.weight NULL without mid_block_add_attention */
    dc_nn_group_norm conv_norm_out;
    dc_nn_conv2d conv_out;
} dc_vae_coder;

typedef struct dc_vae {
    dc_vae_config cfg;
    dc_params params;
    int device; /* where the parameters live: DC_CPU or a CUDA ordinal */
    dc_vae_coder encoder, decoder;
    dc_nn_conv2d quant_conv;      /* [2 latent] -> [2 latent], weight NULL without */
    dc_nn_conv2d post_quant_conv; /* [latent] -> [latent], weight NULL without */
} dc_vae;

/* Declare the model of `cfg` in (*out)->params, in the order of
 * AutoencoderKL's state_dict (no values yet: dc_params_alloc* gives them). */
int dc_vae_init(dc_vae **out, const dc_vae_config *cfg);
#define DC_VAE_CONFIG_FILE "config.json"

/* Read a VAE onto `device` (DC_CPU or a CUDA ordinal) from its folder `dir`
 * (a pipeline's vae/, or what AutoencoderKL.save_pretrained writes):
 * config.json and diffusion_pytorch_model.safetensors, or with `variant`
 * ("fp16"; NULL for none) diffusion_pytorch_model.<variant>.safetensors, or
 * a sharded index; without a variant and without plain weights, the
 * folder's only variant (dc_weights_find). f32, f16 or bf16, read as f32;
 * checked against the config before anything is allocated. */
int dc_vae_load(dc_vae **out, const char *dir, const char *variant, int device);
void dc_vae_free(dc_vae *m);

/* DiagonalGaussianDistribution: the encoder's moments split in two. */
typedef struct dc_vae_latent_dist {
    dc_tensor *mean;   /* [N, h, w, latent]; differentiable; mode() */
    dc_tensor *logvar; /* [N, h, w, latent], clamped to [-30, 20]; data (no gradient) */
    dc_tensor *std;    /* exp(logvar / 2); data (no gradient) */
} dc_vae_latent_dist;

/* x [N, H, W, in_channels] in [-1, 1] -> the latent distribution. 0, or -1
 * with the context failed and the reason in dc_error(). */
int dc_vae_encode(dc_ctx *ctx, const dc_vae *m, dc_tensor *x, dc_vae_latent_dist *out);
/* mean + std * noise: noise [N, h, w, latent] f32, standard normal (diffc's
 * Philox draws; diffusers draws it in NCHW order). Differentiable in mean. */
dc_tensor *dc_vae_sample(dc_ctx *ctx, const dc_vae_latent_dist *d, dc_tensor *noise);
/* z [N, h, w, latent] -> images [N, h 2^(levels-1), w 2^(levels-1),
 * out_channels], about [-1, 1]. Differentiable; with gradients off (how
 * sampling calls it) each block gives its temporaries back at once, so a
 * 512x512 decode holds a few full-size feature maps, not every block's. */
dc_tensor *dc_vae_decode(dc_ctx *ctx, const dc_vae *m, dc_tensor *z);

/* diffusers' tiled_decode (AutoencoderKL.enable_tiling()), for images
 * larger than the VAE was trained at: latents larger than T = sample_size /
 * 2^(levels-1) a side are cut into T x T tiles every int(0.75 T), each
 * decoded alone; a tile's first int(sample_size / 4) pixel rows and columns
 * are blended linearly with the tiles above and to its left, and each is
 * cropped to sample_size - int(sample_size / 4) pixels. Smaller latents are
 * decoded whole. Holds one tile's activations at a time (the image and two
 * rows of tiles on the host). Not differentiable. */
dc_tensor *dc_vae_decode_tiled(dc_ctx *ctx, const dc_vae *m, dc_tensor *z);
/* The same for encoding (diffusers' _tiled_encode): images larger than
 * sample_size a side in tiles of sample_size pixels every int(0.75
 * sample_size), their moments blended over int(T / 4) latents and cropped
 * to T - int(T / 4); the distribution as dc_vae_encode's, its mean data too
 * (no gradient). Tiles must have sides that are multiples of 2^(levels-1)
 * (so sample_size and the image's sides should be). */
int dc_vae_encode_tiled(dc_ctx *ctx, const dc_vae *m, dc_tensor *x, dc_vae_latent_dist *out);

/* What the diffusion model sees: (z - shift_factor) * scaling_factor, and
 * back: latents / scaling_factor + shift_factor, what dc_vae_decode takes. */
dc_tensor *dc_vae_scale_latents(dc_ctx *ctx, const dc_vae *m, dc_tensor *z);
dc_tensor *dc_vae_unscale_latents(dc_ctx *ctx, const dc_vae *m, dc_tensor *latents);

#endif
