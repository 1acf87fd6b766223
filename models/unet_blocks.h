/*
 * The blocks diffusers' convolutional networks share: ResnetBlock2D, the
 * spatial self-attention (Attention over the H*W positions of a feature
 * map), the time embedding, and the resamplers (Downsample2D, Upsample2D, average pooling and the
 * FIR kernel of the Skip blocks). UNet2DModel (unet.c) is built from them, and
 * so are AutoencoderKL and UNet2DConditionModel.
 *
 * Tensors are NHWC [N, H, W, C]. Parameters are declared under the names
 * diffusers gives them below the prefix a block is created with.
 */
#ifndef DC_MODELS_UNET_BLOCKS_H
#define DC_MODELS_UNET_BLOCKS_H

#include "autograd/error.h"
#include "autograd/nn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* act_fn: the resnets' activation. */
typedef enum { DC_UNET_SILU, DC_UNET_MISH, DC_UNET_GELU } dc_unet_act;

/* What distinguishes one ResnetBlock2D from another. */
typedef struct dc_unet_resnet_shape {
    int64_t cin, cout;
    int groups, groups_out; /* norm1's and norm2's groups */
    float eps;              /* both norms' */
    int64_t temb;           /* the time embedding's width T; 0: no time_emb_proj (a VAE's) */
    bool scale_shift;       /* resnet_time_scale_shift "scale_shift" */
    dc_unet_act act;
    float dropout;
    float scale;  /* output_scale_factor */
    int resample; /* 0; -1 / 1: average pool / nearest (down=True / up=True); -2 / 2: FIR */
    bool shortcut; /* a 1x1 conv_shortcut even when cin == cout */
} dc_unet_resnet_shape;

/* ResnetBlock2D: norm1, act, [resample], conv1, + time projection (or scale
 * and shift after norm2), norm2, act, dropout, conv2, + the input ([resampled],
 * 1x1 conv_shortcut when channels change), / output_scale_factor. */
typedef struct dc_unet_resnet {
    dc_nn_group_norm norm1, norm2;
    dc_nn_conv2d conv1, conv2;
    dc_nn_conv2d conv_shortcut; /* weight NULL when in and out channels agree */
    dc_nn_linear time_emb_proj; /* [T] -> [Cout], or [2 Cout] (scale, shift) with scale_shift;
                                   weight NULL without a time embedding */
    int64_t out_channels;
    bool scale_shift;
    dc_unet_act act;
    int resample; /* as dc_unet_resnet_shape's */
    float dropout;
    float output_scale_factor;
} dc_unet_resnet;

/* diffusers' Attention as the convolutional networks use it: self-attention
 * over the H*W positions, residual added, / rescale_output_factor. */
typedef struct dc_unet_attention {
    dc_nn_group_norm group_norm;   /* weight NULL without a norm */
    dc_nn_linear to_q, to_k, to_v; /* [C] -> [heads * head_dim] */
    dc_nn_linear to_out;           /* "to_out.0": [heads * head_dim] -> [C] */
    int heads;
    float rescale_output_factor;
} dc_unet_attention;

/* Declare a resnet's parameters under `prefix` ("down_blocks.0.resnets.1"). */
void dc_unet_resnet_init(dc_unet_resnet *r, dc_params *ps, const char *prefix,
                         const dc_unet_resnet_shape *s);
/* x [N, H, W, Cin], temb = act(emb) [N or 1, T] (NULL without time_emb_proj)
 * -> [N, H', W', Cout] (H' = H but for a resampling resnet). Without a tape
 * its temporaries are given back at once (dc_keep), so sampling touches the
 * memory of one block, not of them all. */
dc_tensor *dc_unet_resnet_forward(dc_ctx *ctx, const dc_unet_resnet *r, dc_tensor *x,
                                  dc_tensor *temb);

/* Declare an attention over `ch` channels in heads of head_dim (0: one head
 * over all channels); groups 0: no group_norm. */
void dc_unet_attention_init(dc_unet_attention *a, dc_params *ps, const char *prefix, int64_t ch,
                            int64_t head_dim, int groups, float eps, float rescale);
/* x [N, H, W, C] -> [N, H, W, C], its temporaries given back as the resnet's. */
dc_tensor *dc_unet_attention_forward(dc_ctx *ctx, const dc_unet_attention *a, dc_tensor *x);

/* dc_unet_resnet_forward and dc_unet_attention_forward, each one gradient
 * checkpoint (dc_checkpoint: its activations made again in backward) when
 * `checkpoint` is set, as a model's enable_gradient_checkpointing() does. */
dc_tensor *dc_unet_resnet_block(dc_ctx *ctx, const dc_unet_resnet *r, dc_tensor *x, dc_tensor *temb,
                                bool checkpoint);
dc_tensor *dc_unet_attention_block(dc_ctx *ctx, const dc_unet_attention *a, dc_tensor *x,
                                   bool checkpoint);

/* diffusers' Timesteps: t [N] (f32 or i32) -> sinusoids [N, dim], max period 10000. */
dc_tensor *dc_unet_timesteps(dc_ctx *ctx, dc_tensor *t, int dim, bool flip_sin_to_cos, float shift);
/* diffusers' TimestepEmbedding with act_fn silu: linear_1, silu, linear_2 (UNet2DModel's
 * whatever its act_fn; UNet2DConditionModel's takes act_fn, which diffc holds to silu). */
dc_tensor *dc_unet_time_mlp(dc_ctx *ctx, const dc_nn_linear *linear_1,
                            const dc_nn_linear *linear_2, dc_tensor *x);

/* "prefix.name" into buf (n bytes); returns buf. */
const char *dc_unet_name(char *buf, size_t n, const char *prefix, const char *name);
/* Why a UNet of `levels` levels taking in_channels cannot take x (f32 [N,
 * H, W, in_channels], H and W multiples of 2^(levels - 1)) and timesteps t
 * (f32 or i32 [N] or [1]), written into buf; NULL when it can. */
const char *dc_unet_input_problem(const dc_tensor *x, const dc_tensor *t, int in_channels,
                                  int levels, char *buf, size_t n);
/* The numbers both UNets' configs share, checked with the same messages
 * (`what` names the config): downsample_padding 0 or 1, norm_eps > 0,
 * dropout in [0, 1), mid_block_scale_factor finite and nonzero, freq_shift
 * not half of block_out_channels[0] (c0; the sinusoids would divide by zero). */
typedef struct dc_unet_common_config {
    int downsample_padding;
    float norm_eps, dropout, mid_block_scale_factor;
    int c0;
    float freq_shift;
} dc_unet_common_config;
int dc_unet_check_common(const dc_unet_common_config *c, const char *what);

/* A UNet's forward refuses its inputs: "unet: <message>" as the error, the
 * context failed; NULL. */
dc_tensor *dc_unet_fail(dc_ctx *ctx, const char *fmt, ...) DC_PRINTF(2, 3);

dc_tensor *dc_unet_activation(dc_ctx *ctx, dc_unet_act act, dc_tensor *x);
/* The norm, then the activation (fused for silu). */
dc_tensor *dc_unet_norm_act(dc_ctx *ctx, const dc_nn_group_norm *norm, dc_unet_act act,
                            dc_tensor *x);

/* F.pad(x, (0, 1, 0, 1)): [N, H, W, C] -> [N, H+1, W+1, C], a zero column on
 * the right and a zero row at the bottom (Downsample2D with padding 0). */
dc_tensor *dc_unet_pad_bottom_right(dc_ctx *ctx, dc_tensor *x);
/* upsample_2d / downsample_2d with the FIR kernel (1, 3, 3, 1): [N, H, W, C]
 * -> [N, 2H, 2W, C] (up) or [N, H/2, W/2, C]. */
dc_tensor *dc_unet_fir_resample(dc_ctx *ctx, dc_tensor *x, bool up);

#endif
