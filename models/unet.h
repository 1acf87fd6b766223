/*
 * diffusers' UNet2DModel, built from the engine's layers.
 *
 * The configuration is a diffusers config.json: the same keys, the same
 * defaults as UNet2DModel.__init__ (diffusers 0.27 to 0.42), and the original text kept
 * so a checkpoint saves it back unchanged. Parameters carry the names of
 * UNet2DModel's state_dict ("down_blocks.0.resnets.0.conv1.weight", ...), so
 * dc_params_load / dc_params_save read and write files that diffusers reads
 * and writes; dc_unet_rename also accepts the older attention names
 * (query/key/value/proj_attn) that published checkpoints such as
 * google/ddpm-cifar10-32 still use.
 *
 * Supported: DownBlock2D, AttnDownBlock2D, ResnetDownsampleBlock2D,
 * UpBlock2D, AttnUpBlock2D, ResnetUpsampleBlock2D and UNetMidBlock2D with or
 * without attention; downsample_type / upsample_type "conv" or "resnet"
 * (followed by the attention blocks, ignored by the plain ones, as in
 * diffusers); conv down- and upsampling (downsample_padding 0 or 1); the
 * Skip blocks of NCSN++ (SkipDownBlock2D, AttnSkipDownBlock2D, SkipUpBlock2D,
 * AttnSkipUpBlock2D: FIR resampling and the image-sized skip path, at every
 * level of a path), with norm_num_groups null; resnet_time_scale_shift
 * "default" and "scale_shift"; act_fn silu (swish), mish and gelu; the
 * positional (sinusoidal) and fourier (Gaussian Fourier projection of the
 * noise level, output divided by it) time embeddings, time_embedding_dim;
 * class conditioning through num_class_embeds or class_embed_type
 * "timestep" / "identity"; dropout. Anything else in a config that would
 * change the network (time_embedding_type "learned", another block, another
 * activation) is refused with the key and its value. Keys UNet2DModel does
 * not know are ignored, as diffusers ignores them. Weights may be sharded or
 * a variant (dc_unet_find).
 *
 * time_proj.weight, the fourier frequencies, is frozen in diffusers
 * (requires_grad False): it gets no gradient here either, but diffc's AdamW
 * still applies weight decay to it.
 *
 * Class conditioning and classifier-free guidance: by this project's
 * convention the last class label, num_class_embeds - 1, means "no class"
 * (a model for K classes has num_class_embeds = K + 1), see dc_unet_null_class.
 *
 * Tensors are NHWC: x [N, H, W, in_channels] -> [N, H, W, out_channels], H
 * and W multiples of 2^(levels - 1) as in diffusers.
 */
#ifndef DC_MODELS_UNET_H
#define DC_MODELS_UNET_H

#include "models/unet_blocks.h"

#include <stdbool.h>
#include <stddef.h>

#define DC_UNET_MAX_LEVELS 8 /* len(block_out_channels); diffusers' examples use up to 6 */

/* class_embed_type: how class labels join the time embedding. */
typedef enum {
    DC_UNET_CLASS_TABLE,    /* null: a table of num_class_embeds rows, labels i32 [N]; none
                               (unconditional) when num_class_embeds is null too */
    DC_UNET_CLASS_TIMESTEP, /* "timestep": labels (i32 or f32 [N]) through the time projection
                               and their own MLP, class_embedding.linear_1/2 */
    DC_UNET_CLASS_IDENTITY, /* "identity": labels are the embeddings, f32 [N, T] */
} dc_unet_class_embed;

/* A level's down- or upsampler. */
typedef enum {
    DC_UNET_RESAMPLE_CONV,   /* Downsample2D (conv, stride 2) / Upsample2D (nearest 2x, conv) */
    DC_UNET_RESAMPLE_RESNET, /* a ResnetBlock2D with down=True (2x2 average pool) / up=True
                                (nearest 2x) applied to its input and after norm1 */
    DC_UNET_RESAMPLE_FIR,    /* a Skip block (SkipDownBlock2D, AttnSkipDownBlock2D, SkipUpBlock2D,
                                AttnSkipUpBlock2D), at every level of its path: resnets that
                                resample with the FIR kernel (1, 3, 3, 1), and the image-sized
                                skip path of NCSN++ */
} dc_unet_resample;

/* Plausible sizes, generous for real models (published UNet2DModels have at
 * most 1280 channels, 1 to 4 layers per block, 1000 classes): a config
 * beyond them is refused before anything is declared, so a hostile or
 * mistyped config.json cannot make diffc declare billions of parameters or
 * spend minutes on 10^8 layers. Weights are checked against the declared
 * shapes before anything is allocated (dc_params_alloc_load). */
#define DC_UNET_MAX_CHANNELS 16384          /* in_channels, out_channels, block_out_channels[i] */
#define DC_UNET_MAX_LAYERS_PER_BLOCK 32
#define DC_UNET_MAX_CLASS_EMBEDS (1 << 20)  /* num_class_embeds */
#define DC_UNET_MAX_SAMPLE_SIZE 65536       /* sample_size, as train's --resolution */

/* A parsed config.json. Zero where diffusers has null. */
typedef struct dc_unet_config {
    int sample_size[2]; /* [height, width] the model was trained at; 0 when null */
    int in_channels, out_channels;
    bool center_input_sample; /* x -> 2x - 1 before conv_in */
    bool flip_sin_to_cos;     /* time embedding [cos, sin] instead of [sin, cos] */
    bool fourier;             /* time_embedding_type "fourier": GaussianFourierProjection of
                                 the noise level, the output divided by it; else "positional" */
    float freq_shift;         /* downscale_freq_shift of the time embedding */
    int levels;               /* len(block_out_channels) */
    int block_out_channels[DC_UNET_MAX_LEVELS]; /* [levels] */
    bool down_attn[DC_UNET_MAX_LEVELS];         /* [levels] AttnDownBlock2D, else DownBlock2D */
    bool up_attn[DC_UNET_MAX_LEVELS]; /* [levels] AttnUpBlock2D, else UpBlock2D (deepest first) */
    dc_unet_resample down_resample[DC_UNET_MAX_LEVELS]; /* [levels] (the last has none) */
    dc_unet_resample up_resample[DC_UNET_MAX_LEVELS];   /* [levels] (the last has none) */
    int layers_per_block;             /* resnets per down block; up blocks have one more */
    float mid_block_scale_factor;
    int downsample_padding; /* 1, or 0: pad bottom and right by one, then an unpadded conv */
    float dropout;
    int attention_head_dim; /* 0 (null): one head over all channels */
    int norm_num_groups;      /* 0 (null): min(C / 4, 32) per norm (only with Skip blocks) */
    int attn_norm_num_groups; /* the mid attention's norm; 0 (null): norm_num_groups with
                                 "default", no norm with "scale_shift" (as diffusers) */
    float norm_eps;
    bool scale_shift;     /* resnet_time_scale_shift "scale_shift", else "default" */
    bool add_attention;   /* attention in the mid block */
    int num_class_embeds; /* 0: null */
    dc_unet_class_embed class_embed_type;
    dc_unet_act act_fn;
    int time_embedding_dim; /* T, the time embedding's width: 0 (null) means 4 block_out_channels[0] */
    char *json;           /* the original text (malloc'ed), for saving back */
} dc_unet_config;

/* Parse config.json text; `what` names it in errors ("ckpt/unet/config.json").
 * On failure *c is left empty (safe to free). */
int dc_unet_config_parse(dc_unet_config *c, const char *json, const char *what);
int dc_unet_config_load(dc_unet_config *c, const char *path);
/* Write the original text back (to "<path>.tmp", synced, then renamed). */
int dc_unet_config_save(const dc_unet_config *c, const char *path);
void dc_unet_config_free(dc_unet_config *c);
/* 0 when the model takes the integer DDPM timesteps that diffc's noise
 * schedules and samplers give it; an error naming `what` for a fourier time
 * embedding (NCSN++), which takes noise levels: its log of timestep 0 is
 * -inf, and it needs a score-SDE sampler diffc does not have. */
int dc_unet_check_ddpm(const dc_unet_config *c, const char *what);
/* The "no class" label for classifier-free guidance, or -1 when unconditional. */
int dc_unet_null_class(const dc_unet_config *c);

/* One level of the down or up path, or the mid block. */
typedef struct dc_unet_block {
    int n_layers;
    dc_unet_resnet *resnets;       /* [n_layers] */
    dc_unet_attention *attentions; /* [n_layers] (mid: [n_layers - 1]); NULL without attention */
    dc_nn_conv2d
        sampler; /* downsamplers.0.conv / upsamplers.0.conv; weight NULL on the last level */
    dc_unet_resnet resnet_sampler; /* downsamplers.0 / upsamplers.0 with resnet resampling;
                                      resnet_down / resnet_up in a Skip block */
    bool pad_bottom_right;         /* downsample_padding 0 */
    bool skip;                     /* a Skip block: it carries the image-sized skip path */
    bool attn_after;               /* AttnSkipUpBlock2D: one attention after all resnets */
    dc_nn_conv2d skip_conv;        /* Skip blocks with a resampler: down 1x1 3 -> C, up 3x3 C -> 3 */
    dc_nn_group_norm skip_norm;    /* up Skip blocks with a resampler: before skip_conv */
} dc_unet_block;

typedef struct dc_unet {
    dc_unet_config cfg;              /* a copy, without the text */
    dc_nn_conv2d conv_in;            /* in_channels -> block_out_channels[0] */
    dc_tensor *time_proj;            /* time_proj.weight [C0]: the fourier frequencies, or NULL */
    dc_nn_linear time_linear_1;      /* time_embedding.linear_1: [C0 (fourier: 2 C0)] -> [T = 4 C0] */
    dc_nn_linear time_linear_2;      /* time_embedding.linear_2: [T] -> [T] */
    dc_nn_embedding class_embedding; /* [num_class_embeds, T]; weight NULL but for CLASS_TABLE */
    dc_nn_linear class_linear_1;     /* class_embedding.linear_1: [C0] -> [T] (CLASS_TIMESTEP) */
    dc_nn_linear class_linear_2;     /* class_embedding.linear_2: [T] -> [T] (CLASS_TIMESTEP) */
    dc_unet_block down[DC_UNET_MAX_LEVELS]; /* [levels], full resolution first */
    dc_unet_block mid;
    dc_unet_block up[DC_UNET_MAX_LEVELS]; /* [levels], lowest resolution first */
    dc_nn_group_norm conv_norm_out;
    dc_nn_conv2d conv_out; /* block_out_channels[0] -> out_channels */
    bool gradient_checkpointing; /* each block's resnets and attentions a checkpoint (dc_checkpoint):
                                    less memory for a third more compute in training */
} dc_unet;

/* Declare every parameter in `ps` under its state_dict name, in diffusers'
 * order, with PyTorch's initial values (dc_params_alloc draws them). */
int dc_unet_init(dc_unet *m, const dc_unet_config *c, dc_params *ps);
void dc_unet_free(dc_unet *m);

/* The predicted noise (or whatever the model was trained on):
 * x [N, H, W, in_channels] f32, t [N] (or [1], shared) f32 or i32 timesteps,
 * class_labels as cfg.class_embed says (NULL for an unconditional model;
 * required otherwise) -> [N, H, W, out_channels]. Dropout follows ctx->training. NULL on failure,
 * with the context failed and the reason in dc_error(). */
dc_tensor *dc_unet_forward(dc_ctx *ctx, const dc_unet *m, dc_tensor *x, dc_tensor *t,
                           dc_tensor *class_labels);
/* The same, and features[i] (i < cfg.levels) = down block i's output before
 * its downsampler, [N, H_i, W_i, block_out_channels[i]]: what `diffc anomaly`
 * compares in the denoiser's own feature space. features may be NULL. */
dc_tensor *dc_unet_forward_features(dc_ctx *ctx, const dc_unet *m, dc_tensor *x, dc_tensor *t,
                                    dc_tensor *class_labels, dc_tensor **features);

/* The files of a diffusers model folder. */
#define DC_UNET_CONFIG_FILE "config.json"
#define DC_UNET_WEIGHTS_FILE "diffusion_pytorch_model.safetensors"

/* Where a UNet's files lie: in `dir`/`component` (a pipeline folder's "unet"
 * or "unet_ema") when that folder exists, else in `dir` itself (a bare UNet
 * folder). Sets *config_path and *weights_path (malloc'ed) when both are
 * there. The weights, by diffusers' names: with `variant` ("fp16"; NULL for
 * none) diffusion_pytorch_model.<variant>.safetensors or the sharded index
 * diffusion_pytorch_model.safetensors.index.<variant>.json; without one
 * diffusion_pytorch_model.safetensors or ....safetensors.index.json, and
 * when neither is there but the folder holds exactly one variant, that one,
 * named in *guessed (malloc'ed; NULL otherwise; `guessed` may be NULL) so the
 * caller can say so. dc_params_load reads either kind of path. Only
 * safetensors weights can be read: a folder with only PyTorch .bin weights
 * is an error that says how to convert them. */
int dc_unet_find(const char *dir, const char *component, const char *variant, char **config_path,
                 char **weights_path, char **guessed);

/* Whether the file name `name` is a UNet's weights by diffusers' names (see
 * dc_unet_find): a single file or a sharded index, not a shard; its variant
 * ("" for the plain weights) into variant[n]. */
bool dc_unet_weights_name(const char *name, char *variant, size_t n);

/* A dc_rename_fn for dc_params_load: "*.attentions.K.query.weight" ->
 * "*.attentions.K.to_q.weight", and key, value, proj_attn (-> to_out.0) alike. */
const char *dc_unet_rename(const char *file_name, char *buf, size_t size);

#endif
