/*
 * diffusers' AutoencoderKL (autoencoders/autoencoder_kl.py, the Encoder,
 * Decoder and DiagonalGaussianDistribution of autoencoders/vae.py, and
 * DownEncoderBlock2D, UpDecoderBlock2D, UNetMidBlock2D of unet_2d_blocks.py,
 * diffusers 0.42): the config parser, the parameter declarations under
 * state_dict names, and encode / decode as ops. See vae.h.
 */
#include "vae.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/config_json.h"
#include "models/unet.h"
#include "models/weights.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VAE_EPS 1e-6f       /* every norm of the Encoder and Decoder */
#define LOGVAR_MIN -30.0f   /* DiagonalGaussianDistribution's clamp */
#define LOGVAR_MAX 20.0f

/* ==== config ==== */

static int read_bool(const cJSON *root, const char *what, const char *key, bool def, bool *out) {
    *out = def;
    return dc_json_get_bool(root, key, what, out);
}

/* A float key that must be finite; null reads as `null_value`. */
static int read_float(const cJSON *root, const char *what, const char *key, float def,
                      float null_value, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    double d = v && cJSON_IsNull(v) ? null_value : def;
    if (dc_json_get_number(root, key, what, &d))
        return -1;
    if (!isfinite((float)d))
        return dc_fail("%s: %s must be a finite number, got %g", what, key, d);
    *out = (float)d;
    return 0;
}

/* A string key that must be `want` when present (the network has no other). */
static int require_string(const cJSON *root, const char *what, const char *key, const char *want) {
    const char *s = want;
    if (dc_json_get_string(root, key, what, &s))
        return -1;
    if (strcmp(s, want))
        return dc_fail("%s: %s \"%.64s\" is not supported (supported: \"%s\")", what, key, s, want);
    return 0;
}

static int read_act(dc_vae_config *c, const cJSON *root, const char *what) {
    static const char *const names[] = {"silu", "swish", "mish", "gelu"};
    static const dc_unet_act acts[] = {DC_UNET_SILU, DC_UNET_SILU, DC_UNET_MISH, DC_UNET_GELU};
    const char *s = "silu";
    if (dc_json_get_string(root, "act_fn", what, &s))
        return -1;
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            c->act_fn = acts[i];
            return 0;
        }
    return dc_fail("%s: act_fn \"%.64s\" is not supported (supported: \"silu\", \"swish\", "
                   "\"mish\", \"gelu\")",
                   what, s);
}

/* key[i] of a list: an integer in [1, max]. */
static int list_int(const cJSON *e, const char *what, const char *key, int i, int max, int *out) {
    if (!cJSON_IsNumber(e))
        return dc_fail("%s: %s[%d] must be an integer, got %s", what, key, i, dc_json_type(e));
    double d = e->valuedouble;
    if (d != floor(d) || d < 1 || d > max)
        return dc_fail("%s: %s[%d] must be an integer in [1, %d], got %.17g", what, key, i, max, d);
    *out = (int)d;
    return 0;
}

/* sample_size: an integer or [height, width]. */
static int read_sample_size(dc_vae_config *c, const cJSON *root, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "sample_size");
    c->sample_size[0] = c->sample_size[1] = 32;
    if (!v || !cJSON_IsArray(v)) {
        if (dc_json_get_int(root, "sample_size", what, 1, DC_VAE_MAX_SAMPLE_SIZE, &c->sample_size[0]))
            return -1;
        c->sample_size[1] = c->sample_size[0];
        return 0;
    }
    if (cJSON_GetArraySize(v) != 2)
        return dc_fail("%s: sample_size must be an integer or [height, width], got an array of "
                       "%d entries",
                       what, cJSON_GetArraySize(v));
    return list_int(v->child, what, "sample_size", 0, DC_VAE_MAX_SAMPLE_SIZE, &c->sample_size[0]) ||
                   list_int(v->child->next, what, "sample_size", 1, DC_VAE_MAX_SAMPLE_SIZE,
                            &c->sample_size[1])
               ? -1
               : 0;
}

static int read_channels(dc_vae_config *c, const cJSON *root, const char *what) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "block_out_channels");
    if (!v) {
        c->levels = 1;
        c->block_out_channels[0] = 64;
        return 0;
    }
    if (!cJSON_IsArray(v))
        return dc_fail("%s: block_out_channels must be a list of integers, got %s", what,
                       dc_json_type(v));
    int n = cJSON_GetArraySize(v);
    if (n < 1 || n > DC_VAE_MAX_LEVELS)
        return dc_fail("%s: block_out_channels has %d entries (diffc builds 1 to %d levels)", what,
                       n, DC_VAE_MAX_LEVELS);
    c->levels = n;
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++)
        if (list_int(e, what, "block_out_channels", i, DC_VAE_MAX_CHANNELS, &c->block_out_channels[i]))
            return -1;
    return 0;
}

/* down_block_types / up_block_types: `levels` entries, each `only` (the
 * default is one entry, for the default single level). */
static int read_block_types(const cJSON *root, const char *what, const char *key, const char *only,
                            int levels) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v && levels != 1)
        return dc_fail("%s: %s is missing: its default has 1 entry, block_out_channels %d", what,
                       key, levels);
    if (!v)
        return 0;
    if (!cJSON_IsArray(v))
        return dc_fail("%s: %s must be a list of block names, got %s", what, key, dc_json_type(v));
    if (cJSON_GetArraySize(v) != levels)
        return dc_fail("%s: %s has %d entries but block_out_channels has %d", what, key,
                       cJSON_GetArraySize(v), levels);
    int i = 0;
    for (const cJSON *e = v->child; e; e = e->next, i++) {
        if (!cJSON_IsString(e))
            return dc_fail("%s: %s[%d] must be a string, got %s", what, key, i, dc_json_type(e));
        if (strcmp(e->valuestring, only))
            return dc_fail("%s: %s[%d] \"%.64s\" is not supported (supported: \"%s\")", what, key,
                           i, e->valuestring, only);
    }
    return 0;
}

/* The rules that hold for any config, parsed or built in code. */
static int check_config(const dc_vae_config *c, const char *what) {
    if (c->levels < 1 || c->levels > DC_VAE_MAX_LEVELS)
        return dc_fail("%s: %d levels (diffc builds 1 to %d)", what, c->levels, DC_VAE_MAX_LEVELS);
    if (c->in_channels < 1 || c->in_channels > DC_VAE_MAX_CHANNELS || c->out_channels < 1 ||
        c->out_channels > DC_VAE_MAX_CHANNELS)
        return dc_fail("%s: in_channels %d and out_channels %d must be in [1, %d]", what,
                       c->in_channels, c->out_channels, DC_VAE_MAX_CHANNELS);
    if (c->latent_channels < 1 || c->latent_channels > DC_VAE_MAX_LATENT)
        return dc_fail("%s: latent_channels %d must be in [1, %d]", what, c->latent_channels,
                       DC_VAE_MAX_LATENT);
    if (c->layers_per_block < 1 || c->layers_per_block > DC_VAE_MAX_LAYERS_PER_BLOCK)
        return dc_fail("%s: layers_per_block %d must be in [1, %d]", what, c->layers_per_block,
                       DC_VAE_MAX_LAYERS_PER_BLOCK);
    if ((unsigned)c->act_fn > DC_UNET_GELU)
        return dc_fail("%s: act_fn %d is out of range", what, (int)c->act_fn);
    if (c->norm_num_groups < 1)
        return dc_fail("%s: norm_num_groups %d must be positive", what, c->norm_num_groups);
    for (int i = 0; i < c->levels; i++)
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] > DC_VAE_MAX_CHANNELS ||
            c->block_out_channels[i] % c->norm_num_groups)
            return dc_fail("%s: block_out_channels[%d] = %d is not a multiple of norm_num_groups "
                           "%d in [1, %d]",
                           what, i, c->block_out_channels[i], c->norm_num_groups,
                           DC_VAE_MAX_CHANNELS);
    if (!(c->scaling_factor != 0.0f) || !isfinite(c->scaling_factor) || !isfinite(c->shift_factor))
        return dc_fail("%s: scaling_factor %g must be finite and nonzero, shift_factor %g finite",
                       what, (double)c->scaling_factor, (double)c->shift_factor);
    return 0;
}

static int parse_object(void *cfg, const cJSON *root, const char *what) {
    dc_vae_config *c = cfg;
    if (!cJSON_IsObject(root))
        return dc_fail("%s: an AutoencoderKL config must be a JSON object, got %s", what,
                       dc_json_type(root));
    bool upcast;
    c->in_channels = c->out_channels = 3;
    c->latent_channels = 4;
    c->layers_per_block = 1;
    c->norm_num_groups = 32;
    if (require_string(root, what, "_class_name", "AutoencoderKL") ||
        dc_json_get_int(root, "in_channels", what, 1, DC_VAE_MAX_CHANNELS, &c->in_channels) ||
        dc_json_get_int(root, "out_channels", what, 1, DC_VAE_MAX_CHANNELS, &c->out_channels) ||
        dc_json_get_int(root, "latent_channels", what, 1, DC_VAE_MAX_LATENT, &c->latent_channels) ||
        dc_json_get_int(root, "layers_per_block", what, 1, DC_VAE_MAX_LAYERS_PER_BLOCK,
                        &c->layers_per_block) ||
        dc_json_get_int(root, "norm_num_groups", what, 1, DC_VAE_MAX_CHANNELS, &c->norm_num_groups) ||
        read_act(c, root, what) || read_sample_size(c, root, what) ||
        read_float(root, what, "scaling_factor", 0.18215f, NAN, &c->scaling_factor) ||
        read_float(root, what, "shift_factor", 0.0f, 0.0f, &c->shift_factor) ||
        read_bool(root, what, "force_upcast", true, &upcast) ||
        read_bool(root, what, "use_quant_conv", true, &c->use_quant_conv) ||
        read_bool(root, what, "use_post_quant_conv", true, &c->use_post_quant_conv) ||
        read_bool(root, what, "mid_block_add_attention", true, &c->mid_block_add_attention) ||
        read_channels(c, root, what) ||
        read_block_types(root, what, "down_block_types", "DownEncoderBlock2D", c->levels) ||
        read_block_types(root, what, "up_block_types", "UpDecoderBlock2D", c->levels))
        return -1;
    return check_config(c, what);
}

int dc_vae_config_parse(dc_vae_config *c, const char *json, const char *what) {
    return dc_cfg_parse_text(c, sizeof *c, json, what, parse_object, NULL);
}

int dc_vae_config_load(dc_vae_config *c, const char *path) {
    return dc_cfg_load(c, sizeof *c, path, parse_object, NULL);
}

/* ==== parameters ==== */

static dc_unet_resnet_shape resnet_shape(const dc_vae_config *c, int64_t cin, int64_t cout) {
    return (dc_unet_resnet_shape){.cin = cin, .cout = cout, .groups = c->norm_num_groups,
                                  .groups_out = c->norm_num_groups, .eps = VAE_EPS,
                                  .act = c->act_fn, .scale = 1.0f};
}

static void resnet_init(dc_unet_resnet *r, dc_params *ps, const dc_vae_config *c, int64_t cin,
                        int64_t cout, const char *fmt, ...) DC_PRINTF(6, 7);
static void resnet_init(dc_unet_resnet *r, dc_params *ps, const dc_vae_config *c, int64_t cin,
                        int64_t cout, const char *fmt, ...) {
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    dc_unet_resnet_shape s = resnet_shape(c, cin, cout);
    dc_unet_resnet_init(r, ps, name, &s);
}

/* The resnets of one level: `n` of them, the first from `cin` channels. */
static int level_init(dc_vae_level *l, dc_params *ps, const dc_vae_config *c, const char *block,
                      int i, int n, int64_t cin, int64_t cout) {
    l->n_layers = n;
    if (!(l->resnets = calloc((size_t)n, sizeof *l->resnets)))
        return dc_fail("vae: out of memory");
    for (int j = 0; j < n; j++)
        resnet_init(&l->resnets[j], ps, c, j ? cout : cin, cout, "%s.%d.resnets.%d", block, i, j);
    return 0;
}

/* UNetMidBlock2D as the VAE builds it: attentions (one head over all
 * channels, upcast: f32 here anyway), then resnets. */
static void mid_init(dc_vae_coder *k, dc_params *ps, const dc_vae_config *c, const char *coder) {
    int64_t ch = c->block_out_channels[c->levels - 1];
    char name[64];
    if (c->mid_block_add_attention) {
        snprintf(name, sizeof name, "%s.mid_block.attentions.0", coder);
        dc_unet_attention_init(&k->mid_attention, ps, name, ch, 0, c->norm_num_groups, VAE_EPS, 1.0f);
    }
    for (int j = 0; j < 2; j++)
        resnet_init(&k->mid_resnets[j], ps, c, ch, ch, "%s.mid_block.resnets.%d", coder, j);
}

/* conv_norm_out over `ch` channels, then conv_out to `out`. */
static void out_init(dc_vae_coder *k, dc_params *ps, const dc_vae_config *c, const char *coder,
                     int64_t ch, int64_t out) {
    char name[64];
    snprintf(name, sizeof name, "%s.conv_norm_out", coder);
    dc_nn_group_norm_init(&k->conv_norm_out, ps, name, c->norm_num_groups, ch, VAE_EPS);
    snprintf(name, sizeof name, "%s.conv_out", coder);
    dc_nn_conv2d_init(&k->conv_out, ps, name, ch, out, 3, 1, 1, true);
}

/* Encoder: conv_in, down_blocks, mid_block, conv_norm_out, conv_out. */
static int encoder_init(dc_vae_coder *k, dc_params *ps, const dc_vae_config *c) {
    const int *ch = c->block_out_channels;
    dc_nn_conv2d_init(&k->conv_in, ps, "encoder.conv_in", c->in_channels, ch[0], 3, 1, 1, true);
    for (int i = 0; i < c->levels; i++) {
        if (level_init(&k->level[i], ps, c, "encoder.down_blocks", i, c->layers_per_block,
                       ch[i > 0 ? i - 1 : 0], ch[i]))
            return -1;
        char name[64];
        snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0.conv", i);
        if (i < c->levels - 1) /* Downsample2D with padding 0: pad, then a plain conv */
            dc_nn_conv2d_init(&k->level[i].sampler, ps, name, ch[i], ch[i], 3, 2, 0, true);
    }
    mid_init(k, ps, c, "encoder");
    out_init(k, ps, c, "encoder", ch[c->levels - 1], 2 * (int64_t)c->latent_channels);
    return 0;
}

/* Decoder: conv_in, up_blocks (deepest first; declared before the mid block
 * as Decoder.__init__ registers them), mid_block, conv_norm_out, conv_out. */
static int decoder_init(dc_vae_coder *k, dc_params *ps, const dc_vae_config *c) {
    const int *ch = c->block_out_channels, L = c->levels;
    dc_nn_conv2d_init(&k->conv_in, ps, "decoder.conv_in", c->latent_channels, ch[L - 1], 3, 1, 1,
                      true);
    for (int i = 0; i < L; i++) {
        int cout = ch[L - 1 - i], prev = ch[L - (i > 0 ? i : 1)];
        if (level_init(&k->level[i], ps, c, "decoder.up_blocks", i, c->layers_per_block + 1, prev,
                       cout))
            return -1;
        char name[64];
        snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
        if (i < L - 1)
            dc_nn_conv2d_init(&k->level[i].sampler, ps, name, cout, cout, 3, 1, 1, true);
    }
    mid_init(k, ps, c, "decoder");
    out_init(k, ps, c, "decoder", ch[0], c->out_channels);
    return 0;
}

static void coder_free(dc_vae_coder *k) {
    for (int i = 0; i < DC_VAE_MAX_LEVELS; i++)
        free(k->level[i].resnets);
}

void dc_vae_free(dc_vae *m) {
    if (!m)
        return;
    coder_free(&m->encoder);
    coder_free(&m->decoder);
    dc_params_free(&m->params);
    free(m);
}

int dc_vae_init(dc_vae **out, const dc_vae_config *cfg) {
    *out = NULL;
    if (check_config(cfg, "vae config"))
        return -1;
    dc_vae *m = calloc(1, sizeof *m);
    if (!m)
        return dc_fail("vae: out of memory");
    m->cfg = *cfg;
    m->device = DC_CPU;
    dc_params *ps = &m->params;
    dc_params_init(ps);
    int64_t lat = cfg->latent_channels;
    int rc = encoder_init(&m->encoder, ps, cfg) || decoder_init(&m->decoder, ps, cfg);
    if (!rc && cfg->use_quant_conv)
        dc_nn_conv2d_init(&m->quant_conv, ps, "quant_conv", 2 * lat, 2 * lat, 1, 1, 0, true);
    if (!rc && cfg->use_post_quant_conv)
        dc_nn_conv2d_init(&m->post_quant_conv, ps, "post_quant_conv", lat, lat, 1, 1, 0, true);
    if (rc || ps->failed) {
        dc_vae_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

static const dc_weights_kind vae_weights = {
    .stem = "diffusion_pytorch_model",
    .bin = "diffusion_pytorch_model.bin",
    .library = "diffusers",
    .cls = "AutoencoderKL",
};

int dc_vae_load(dc_vae **out, const char *dir, const char *variant, int device) {
    *out = NULL;
    char *weights = NULL;
    dc_vae_config cfg;
    dc_vae *m = NULL;
    int rc = dc_cfg_load_folder(&cfg, sizeof cfg, dir, DC_VAE_CONFIG_FILE, "diffusers",
                                parse_object) ||
             dc_weights_find(dir, &vae_weights, variant, &weights, NULL) ||
             dc_vae_init(&m, &cfg) ||
             dc_params_alloc_load(&m->params, device, weights, dc_unet_rename);
    free(weights);
    if (rc) {
        dc_vae_free(m);
        return -1;
    }
    m->device = device;
    *out = m;
    return 0;
}

/* ==== forward ==== */

static dc_tensor *forward_fail(dc_ctx *ctx, const char *fmt, ...) DC_PRINTF(2, 3);
static dc_tensor *forward_fail(dc_ctx *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dc_fail("vae: %s", msg);
    ctx->failed = true;
    return NULL;
}

/* Whether x is f32 [N, H, W, channels] with H and W multiples of
 * `multiple`; if not, the context fails with the complaint about `name`. */
static bool input_ok(dc_ctx *ctx, const dc_tensor *x, const char *name, int64_t channels,
                     int64_t multiple) {
    char s[64];
    if (x->dtype != DC_F32 || x->ndim != 4 || x->shape[3] != channels || x->numel == 0)
        forward_fail(ctx, "%s must be f32 [N, H, W, %lld], got %s %s", name, (long long)channels,
                     dc_dtype_name(x->dtype), dc_shape_str(s, sizeof s, x->ndim, x->shape));
    else if (x->shape[1] % multiple || x->shape[2] % multiple)
        forward_fail(ctx, "%s is %lldx%lld; height and width must be multiples of %lld", name,
                     (long long)x->shape[1], (long long)x->shape[2], (long long)multiple);
    return !ctx->failed;
}

/* A stage of the network: x through `body`. Without a tape its output
 * takes the place of everything made since `at` (x and the stage's
 * temporaries), as does each resnet's output within the stage, so a pass
 * holds about one block's memory at a time. */
typedef dc_tensor *(*stage_fn)(dc_ctx *ctx, const dc_vae_coder *k, int i, dc_tensor *x, size_t at);

static dc_tensor *stage(dc_ctx *ctx, size_t at, stage_fn body, const dc_vae_coder *k, int i,
                        dc_tensor *x) {
    return dc_keep(ctx, at, body(ctx, k, i, x, at));
}

static dc_tensor *resnets(dc_ctx *ctx, const dc_unet_resnet *r, int n, dc_tensor *h, size_t at) {
    for (int j = 0; j < n; j++)
        h = dc_keep(ctx, at, dc_unet_resnet_forward(ctx, &r[j], h, NULL));
    return h;
}

/* DownEncoderBlock2D i: resnets, then pad bottom/right and a stride-2 conv. */
static dc_tensor *down_level(dc_ctx *ctx, const dc_vae_coder *k, int i, dc_tensor *h, size_t at) {
    const dc_vae_level *l = &k->level[i];
    h = resnets(ctx, l->resnets, l->n_layers, h, at);
    if (!l->sampler.weight)
        return h;
    return dc_nn_conv2d_forward(ctx, &l->sampler, dc_unet_pad_bottom_right(ctx, h));
}

/* UpDecoderBlock2D i: resnets, then nearest 2x and a conv. */
static dc_tensor *up_level(dc_ctx *ctx, const dc_vae_coder *k, int i, dc_tensor *h, size_t at) {
    const dc_vae_level *l = &k->level[i];
    h = resnets(ctx, l->resnets, l->n_layers, h, at);
    if (!l->sampler.weight)
        return h;
    return dc_nn_conv2d_forward(ctx, &l->sampler, dc_upsample2x(ctx, h));
}

/* UNetMidBlock2D: resnet, [attention], resnet. */
static dc_tensor *mid_block(dc_ctx *ctx, const dc_vae_coder *k, int i, dc_tensor *h, size_t at) {
    (void)i;
    h = dc_keep(ctx, at, dc_unet_resnet_forward(ctx, &k->mid_resnets[0], h, NULL));
    if (k->mid_attention.to_q.weight)
        h = dc_keep(ctx, at, dc_unet_attention_forward(ctx, &k->mid_attention, h));
    return dc_unet_resnet_forward(ctx, &k->mid_resnets[1], h, NULL);
}

/* conv_norm_out, silu (whatever act_fn is), conv_out. */
static dc_tensor *out_block(dc_ctx *ctx, const dc_vae_coder *k, int i, dc_tensor *h, size_t at) {
    (void)i, (void)at;
    return dc_nn_conv2d_forward(ctx, &k->conv_out,
                                dc_nn_group_norm_silu_forward(ctx, &k->conv_norm_out, h));
}

static dc_tensor *conv_in_block(dc_ctx *ctx, const dc_vae_coder *k, int i, dc_tensor *h, size_t at) {
    (void)i, (void)at;
    return dc_nn_conv2d_forward(ctx, &k->conv_in, h);
}

/* x [N, H, W, in] -> moments [N, h, w, 2 latent], made where x's successors
 * were (`at`, after x). */
static dc_tensor *encoder_forward(dc_ctx *ctx, const dc_vae *m, dc_tensor *x) {
    const dc_vae_coder *k = &m->encoder;
    size_t at = dc_mark(ctx);
    dc_tensor *h = stage(ctx, at, conv_in_block, k, 0, x);
    for (int i = 0; i < m->cfg.levels; i++)
        h = stage(ctx, at, down_level, k, i, h);
    h = stage(ctx, at, mid_block, k, 0, h);
    h = stage(ctx, at, out_block, k, 0, h);
    return m->quant_conv.weight ? dc_keep(ctx, at, dc_nn_conv2d_forward(ctx, &m->quant_conv, h)) : h;
}

/* The clamped logvar and std of the moments' second half, computed on the
 * host (data, as the clamp and exp have no ops): latents are small. */
static int posterior_spread(dc_ctx *ctx, dc_tensor *moments, int64_t lat, dc_vae_latent_dist *d) {
    bool was = dc_set_grad_enabled(ctx, false);
    dc_tensor *lv = dc_slice(ctx, moments, lat, lat);
    dc_set_grad_enabled(ctx, was);
    if (!lv)
        return -1;
    size_t bytes = dc_tensor_bytes(lv);
    float *host = dc_arena_alloc(&ctx->meta, 2 * bytes);
    if (!host || dc_memcpy(host, DC_CPU, lv->data, lv->device, bytes)) {
        forward_fail(ctx, "%s", dc_error());
        return -1;
    }
    float *sd = host + lv->numel;
    for (int64_t i = 0; i < lv->numel; i++) {
        float v = host[i]; /* a NaN stays NaN, as torch.clamp leaves it */
        v = v < LOGVAR_MIN ? LOGVAR_MIN : v > LOGVAR_MAX ? LOGVAR_MAX : v;
        host[i] = v;
        sd[i] = expf(0.5f * v);
    }
    d->logvar = dc_from_host(ctx, DC_F32, lv->ndim, lv->shape, host);
    d->std = dc_from_host(ctx, DC_F32, lv->ndim, lv->shape, sd);
    return d->logvar && d->std ? 0 : -1;
}

/* x [N, H, W, in] checked, then the encoder's moments [N, h, w, 2 latent]. */
static dc_tensor *moments_forward(dc_ctx *ctx, const dc_vae *m, dc_tensor *x) {
    if (ctx->failed || !x) {
        ctx->failed = true; /* a NULL input: whatever made it has said why */
        return NULL;
    }
    if (!input_ok(ctx, x, "x", m->cfg.in_channels, (int64_t)1 << (m->cfg.levels - 1)))
        return NULL;
    return encoder_forward(ctx, m, x);
}

/* DiagonalGaussianDistribution of the moments. */
static int split_moments(dc_ctx *ctx, const dc_vae *m, dc_tensor *moments, dc_vae_latent_dist *out) {
    int64_t lat = m->cfg.latent_channels;
    memset(out, 0, sizeof *out);
    out->mean = dc_slice(ctx, moments, 0, lat);
    if (!out->mean || posterior_spread(ctx, moments, lat, out)) {
        memset(out, 0, sizeof *out);
        ctx->failed = true;
        return -1;
    }
    return 0;
}

int dc_vae_encode(dc_ctx *ctx, const dc_vae *m, dc_tensor *x, dc_vae_latent_dist *out) {
    return split_moments(ctx, m, moments_forward(ctx, m, x), out);
}

dc_tensor *dc_vae_sample(dc_ctx *ctx, const dc_vae_latent_dist *d, dc_tensor *noise) {
    if (ctx->failed || !d->mean || !d->std || !noise) {
        ctx->failed = true;
        return NULL;
    }
    char s[64], t[64];
    if (noise->dtype != DC_F32 || noise->ndim != 4 || noise->numel != d->mean->numel ||
        memcmp(noise->shape, d->mean->shape, 4 * sizeof *noise->shape))
        return forward_fail(ctx, "noise must be f32 %s as the latents, got %s %s",
                            dc_shape_str(s, sizeof s, 4, d->mean->shape), dc_dtype_name(noise->dtype),
                            dc_shape_str(t, sizeof t, noise->ndim, noise->shape));
    return dc_add(ctx, d->mean, dc_mul(ctx, d->std, noise));
}

dc_tensor *dc_vae_decode(dc_ctx *ctx, const dc_vae *m, dc_tensor *z) {
    if (ctx->failed || !z) {
        ctx->failed = true;
        return NULL;
    }
    if (!input_ok(ctx, z, "z", m->cfg.latent_channels, 1))
        return NULL;
    const dc_vae_coder *k = &m->decoder;
    size_t at = dc_mark(ctx);
    dc_tensor *h = m->post_quant_conv.weight ? dc_nn_conv2d_forward(ctx, &m->post_quant_conv, z) : z;
    h = stage(ctx, at, conv_in_block, k, 0, h);
    h = stage(ctx, at, mid_block, k, 0, h);
    for (int i = 0; i < m->cfg.levels; i++)
        h = stage(ctx, at, up_level, k, i, h);
    return stage(ctx, at, out_block, k, 0, h);
}

/* ==== tiled encode and decode ==== */

/* A tile's result on the host: [N, h, w, C]. */
typedef struct {
    float *px;
    int64_t h, w;
} tile;

/* How diffusers cuts: tiles of `t` inputs a side every `step`, each through
 * `run` alone (k inputs give k * up / down outputs), their outputs blended
 * over `blend` rows and columns and cropped to `limit`. */
typedef struct {
    dc_tensor *(*run)(dc_ctx *ctx, const dc_vae *m, dc_tensor *x);
    int64_t t, step, blend, limit, up, down;
    int64_t n, cin, cout; /* batch, input and output channels */
} tiling;

/* blend_v / blend_h: b's first rows (columns) fade in from a's last ones,
 * in place. rows: y indexes rows of w * C values; else columns within them. */
static void blend(const tiling *g, const tile *a, tile *b, bool rows) {
    int64_t extent = rows ? (a->h < b->h ? a->h : b->h) : (a->w < b->w ? a->w : b->w);
    extent = extent < g->blend ? extent : g->blend;
    for (int64_t y = 0; y < extent; y++) {
        double t = (double)y / (double)extent;
        float wa = (float)(1.0 - t), wb = (float)t;
        for (int64_t n = 0; n < g->n; n++)
            for (int64_t r = 0; r < (rows ? 1 : b->h); r++) {
                int64_t ra = rows ? a->h - extent + y : r, rb = rows ? y : r;
                int64_t xa = rows ? 0 : a->w - extent + y;
                const float *pa = a->px + ((n * a->h + ra) * a->w + xa) * g->cout;
                float *pb = b->px + ((n * b->h + rb) * b->w + (rows ? 0 : y)) * g->cout;
                for (int64_t k = 0; k < (rows ? b->w : 1) * g->cout; k++)
                    pb[k] = pa[k] * wa + pb[k] * wb;
            }
    }
}

/* Tile (i0, j0) of x (host, [N, H, W, cin]) through g->run onto the host;
 * the arena is given back once the result is copied out (the copy waited
 * for it). */
static int run_tile(dc_ctx *ctx, const dc_vae *m, const tiling *g, const float *x, int64_t H,
                    int64_t W, int64_t i0, int64_t j0, tile *out) {
    int64_t th = H - i0 < g->t ? H - i0 : g->t, tw = W - j0 < g->t ? W - j0 : g->t;
    float *host = malloc((size_t)(g->n * th * tw * g->cin) * sizeof *host);
    if (!host) {
        ctx->failed = true;
        return dc_fail("vae: out of memory for a tile");
    }
    for (int64_t n = 0; n < g->n; n++)
        for (int64_t y = 0; y < th; y++)
            memcpy(host + (n * th + y) * tw * g->cin, x + ((n * H + i0 + y) * W + j0) * g->cin,
                   (size_t)(tw * g->cin) * sizeof *host);
    size_t mark = dc_mark(ctx);
    dc_tensor *in = dc_from_host(ctx, DC_F32, DC_SHAPE(g->n, th, tw, g->cin), host);
    dc_tensor *px = g->run(ctx, m, in);
    free(host);
    out->h = px ? px->shape[1] : 0;
    out->w = px ? px->shape[2] : 0;
    out->px = px ? malloc(dc_tensor_bytes(px)) : NULL;
    int rc = !px                       ? -1
             : !out->px                ? dc_fail("vae: out of memory for a tile's result")
             : dc_memcpy(out->px, DC_CPU, px->data, px->device, dc_tensor_bytes(px)) ? -1
                                                                                    : 0;
    dc_arena_rewind(&ctx->act, mark);
    if (rc)
        ctx->failed = true;
    return rc;
}

/* The cropped tile into the result (host, [N, HO, WO, C]) at (y0, x0). */
static void place(const tiling *g, const tile *t, float *img, int64_t HO, int64_t WO, int64_t y0,
                  int64_t x0) {
    int64_t h = t->h < g->limit ? t->h : g->limit, w = t->w < g->limit ? t->w : g->limit;
    for (int64_t n = 0; n < g->n; n++)
        for (int64_t y = 0; y < h; y++)
            memcpy(img + ((n * HO + y0 + y) * WO + x0) * g->cout,
                   t->px + ((n * t->h + y) * t->w) * g->cout, (size_t)(w * g->cout) * sizeof *img);
}

/* The cropped extent of `count` inputs cut every `step`: diffusers' concatenation. */
static int64_t tiled_extent(const tiling *g, int64_t count) {
    int64_t total = 0;
    for (int64_t i = 0; i < count; i += g->step) {
        int64_t px = (count - i < g->t ? count - i : g->t) * g->up / g->down;
        total += px < g->limit ? px : g->limit;
    }
    return total;
}

/* Row after row of tiles, each blended with the tile above (its row's, kept
 * from the last pass) and the one to its left, then placed. */
static int tiled_rows(dc_ctx *ctx, const dc_vae *m, const tiling *g, const float *x, int64_t H,
                      int64_t W, float *img, int64_t HO, int64_t WO) {
    int64_t cols = (W + g->step - 1) / g->step;
    tile *above = calloc((size_t)cols, sizeof *above), *row = calloc((size_t)cols, sizeof *row);
    int rc = above && row ? 0 : dc_fail("vae: out of memory for the tiles");
    int64_t y0 = 0;
    for (int64_t i = 0; !rc && i < H; i += g->step) {
        int64_t x0 = 0;
        for (int64_t j = 0; !rc && j < cols; j++) {
            if ((rc = run_tile(ctx, m, g, x, H, W, i, j * g->step, &row[j])))
                break;
            if (i > 0)
                blend(g, &above[j], &row[j], true);
            if (j > 0)
                blend(g, &row[j - 1], &row[j], false);
            place(g, &row[j], img, HO, WO, y0, x0);
            x0 += row[j].w < g->limit ? row[j].w : g->limit;
        }
        y0 += row && row[0].h < g->limit ? row[0].h : g->limit;
        for (int64_t j = 0; above && j < cols; j++) {
            free(above[j].px);
            above[j] = row[j];
            row[j] = (tile){0};
        }
    }
    for (int64_t j = 0; above && j < cols; j++)
        free(above[j].px);
    for (int64_t j = 0; row && j < cols; j++)
        free(row[j].px);
    free(above);
    free(row);
    return rc;
}

/* x [N, H, W, cin] (checked by the caller) through the tiles of g; the
 * result is data (no gradient), made without a tape. */
static dc_tensor *tiled(dc_ctx *ctx, const dc_vae *m, const tiling *g, dc_tensor *x) {
    int64_t H = x->shape[1], W = x->shape[2];
    if (g->step < 1)
        return forward_fail(ctx, "sample_size %d gives tiles of %lld, too few to overlap",
                            m->cfg.sample_size[0], (long long)g->t);
    int64_t HO = tiled_extent(g, H), WO = tiled_extent(g, W);
    size_t xbytes = dc_tensor_bytes(x), ibytes = (size_t)(g->n * HO * WO * g->cout) * sizeof(float);
    float *xh = malloc(xbytes), *img = malloc(ibytes);
    bool was = dc_set_grad_enabled(ctx, false);
    int rc = !xh || !img ? dc_fail("vae: out of memory for a tiled pass")
             : dc_memcpy(xh, DC_CPU, x->data, x->device, xbytes)
                 ? -1
                 : tiled_rows(ctx, m, g, xh, H, W, img, HO, WO);
    dc_set_grad_enabled(ctx, was);
    dc_tensor *out = rc ? NULL : dc_from_host(ctx, DC_F32, DC_SHAPE(g->n, HO, WO, g->cout), img);
    free(xh);
    free(img);
    if (!out)
        ctx->failed = true;
    return out;
}

/* diffusers' tile sizes: sample_size pixels, sample_size / 2^(levels - 1) latents. */
static void tile_sizes(const dc_vae *m, int64_t *pixels, int64_t *latents, int64_t *scale) {
    *scale = (int64_t)1 << (m->cfg.levels - 1);
    *pixels = m->cfg.sample_size[0];
    *latents = *pixels / *scale;
}

dc_tensor *dc_vae_decode_tiled(dc_ctx *ctx, const dc_vae *m, dc_tensor *z) {
    if (ctx->failed || !z) {
        ctx->failed = true;
        return NULL;
    }
    if (!input_ok(ctx, z, "z", m->cfg.latent_channels, 1))
        return NULL;
    int64_t s, t, scale;
    tile_sizes(m, &s, &t, &scale);
    if (z->shape[1] <= t && z->shape[2] <= t) /* one tile: diffusers decodes it whole */
        return dc_vae_decode(ctx, m, z);
    tiling g = {.run = dc_vae_decode, .t = t, .step = (int64_t)((double)t * 0.75),
                .blend = (int64_t)((double)s * 0.25), .up = scale, .down = 1, .n = z->shape[0],
                .cin = m->cfg.latent_channels, .cout = m->cfg.out_channels};
    g.limit = s - g.blend;
    return tiled(ctx, m, &g, z);
}

int dc_vae_encode_tiled(dc_ctx *ctx, const dc_vae *m, dc_tensor *x, dc_vae_latent_dist *out) {
    memset(out, 0, sizeof *out);
    if (ctx->failed || !x) {
        ctx->failed = true;
        return -1;
    }
    int64_t s, t, scale;
    tile_sizes(m, &s, &t, &scale);
    if (!input_ok(ctx, x, "x", m->cfg.in_channels, scale))
        return -1;
    if (x->shape[1] <= s && x->shape[2] <= s) /* one tile: diffusers encodes it whole */
        return dc_vae_encode(ctx, m, x, out);
    tiling g = {.run = moments_forward, .t = s, .step = (int64_t)((double)s * 0.75),
                .blend = (int64_t)((double)t * 0.25), .up = 1, .down = scale, .n = x->shape[0],
                .cin = m->cfg.in_channels, .cout = 2 * (int64_t)m->cfg.latent_channels};
    g.limit = t - g.blend;
    return split_moments(ctx, m, tiled(ctx, m, &g, x), out);
}

dc_tensor *dc_vae_scale_latents(dc_ctx *ctx, const dc_vae *m, dc_tensor *z) {
    float s = m->cfg.scaling_factor;
    return dc_affine(ctx, z, s, -m->cfg.shift_factor * s);
}

dc_tensor *dc_vae_unscale_latents(dc_ctx *ctx, const dc_vae *m, dc_tensor *latents) {
    return dc_affine(ctx, latents, 1.0f / m->cfg.scaling_factor, m->cfg.shift_factor);
}
