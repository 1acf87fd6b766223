/*
 * diffusers' UNet2DModel (unets/unet_2d.py and the blocks it uses from
 * unet_2d_blocks.py, resnet.py, attention_processor.py, embeddings.py,
 * downsampling.py, upsampling.py of diffusers 0.27): the config parser, the
 * parameter declarations under state_dict names, and the forward pass as ops,
 * whose tape gives the backward pass. See unet.h.
 */
#include "unet.h"

#include "models/config_json.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ==== config ==== */

/* Scalar keys: absent means the default; null is allowed where diffusers
 * allows it and reads as 0 (config_json.h). */
static const dc_cfg_key scalar_keys[] = {
    {"in_channels", DC_CFG_INT, offsetof(dc_unet_config, in_channels), 3},
    {"out_channels", DC_CFG_INT, offsetof(dc_unet_config, out_channels), 3},
    {"center_input_sample", DC_CFG_BOOL, offsetof(dc_unet_config, center_input_sample), 0},
    {"flip_sin_to_cos", DC_CFG_BOOL, offsetof(dc_unet_config, flip_sin_to_cos), 1},
    {"freq_shift", DC_CFG_FLOAT, offsetof(dc_unet_config, freq_shift), 0},
    {"layers_per_block", DC_CFG_INT, offsetof(dc_unet_config, layers_per_block), 2},
    {"mid_block_scale_factor", DC_CFG_FLOAT, offsetof(dc_unet_config, mid_block_scale_factor), 1},
    {"downsample_padding", DC_CFG_INT, offsetof(dc_unet_config, downsample_padding), 1},
    {"dropout", DC_CFG_FLOAT, offsetof(dc_unet_config, dropout), 0},
    {"attention_head_dim", DC_CFG_INT_OR_NULL, offsetof(dc_unet_config, attention_head_dim), 8},
    {"norm_num_groups", DC_CFG_INT_OR_NULL, offsetof(dc_unet_config, norm_num_groups), 32},
    {"attn_norm_num_groups", DC_CFG_INT_OR_NULL, offsetof(dc_unet_config, attn_norm_num_groups), 0},
    {"norm_eps", DC_CFG_FLOAT, offsetof(dc_unet_config, norm_eps), 1e-5},
    {"add_attention", DC_CFG_BOOL, offsetof(dc_unet_config, add_attention), 1},
    {"num_class_embeds", DC_CFG_INT_OR_NULL, offsetof(dc_unet_config, num_class_embeds), 0},
    {"time_embedding_dim", DC_CFG_INT_OR_NULL, offsetof(dc_unet_config, time_embedding_dim), 0},
};

/* Keys that would change the network in ways diffc does not build. */
static int refuse_unsupported(const cJSON *root, const char *what) {
    if (DC_CFG_CHOICE(root, what, "_class_name", "UNet2DModel", "UNet2DModel") < 0 ||
        DC_CFG_CHOICE(root, what, "mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D") < 0)
        return -1;
    const cJSON *legacy = cJSON_GetObjectItemCaseSensitive(root, "attention_legacy_order");
    if (legacy && !cJSON_IsFalse(legacy) && !cJSON_IsNull(legacy))
        return dc_fail("%s: attention_legacy_order %s is not supported (supported: false)", what,
                       cJSON_IsTrue(legacy) ? "true" : dc_json_type(legacy));
    return 0;
}

static int read_channels(dc_unet_config *c, const cJSON *root, const char *what) {
    static const int def[] = {224, 448, 672, 896};
    return dc_cfg_int_list(root, what, "block_out_channels", def, 4, DC_UNET_MAX_LEVELS,
                           c->block_out_channels, &c->levels);
}

/* The block types of either path: attention or not, and the resampler
 * (FROM_KEY: as downsample_type / upsample_type says). */
#define FROM_KEY -1
typedef struct {
    const char *name;
    bool attn;
    int resample;
} block_kind;

static const block_kind down_kinds[] = {
    {"DownBlock2D", false, DC_UNET_RESAMPLE_CONV}, /* ignores downsample_type, as in diffusers */
    {"AttnDownBlock2D", true, FROM_KEY},
    {"ResnetDownsampleBlock2D", false, DC_UNET_RESAMPLE_RESNET},
    {"SkipDownBlock2D", false, DC_UNET_RESAMPLE_FIR},
    {"AttnSkipDownBlock2D", true, DC_UNET_RESAMPLE_FIR},
};
static const block_kind up_kinds[] = {
    {"UpBlock2D", false, DC_UNET_RESAMPLE_CONV},
    {"AttnUpBlock2D", true, FROM_KEY},
    {"ResnetUpsampleBlock2D", false, DC_UNET_RESAMPLE_RESNET},
    {"SkipUpBlock2D", false, DC_UNET_RESAMPLE_FIR},
    {"AttnSkipUpBlock2D", true, DC_UNET_RESAMPLE_FIR},
};
#define N_KINDS 5

/* The kind named `name` ("UNetRes" prefix dropped, as get_down_block does), or NULL. */
static const block_kind *find_kind(const block_kind *kinds, const char *name) {
    if (!strncmp(name, "UNetRes", 7))
        name += 7;
    for (int k = 0; k < N_KINDS; k++)
        if (!strcmp(name, kinds[k].name))
            return &kinds[k];
    return NULL;
}

/* down_block_types or up_block_types into attn[] and resample[]; `from_key`
 * is downsample_type / upsample_type. */
static int read_block_types(bool *attn, dc_unet_resample *resample, const cJSON *root,
                            const char *what, const char *key, int levels, const block_kind *kinds,
                            dc_unet_resample from_key) {
    static const char *const defaults[2][4] = {
        {"DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"},
        {"AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"}};
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v && levels != 4)
        return dc_fail("%s: %s is missing: its default has 4 entries, block_out_channels %d", what,
                       key, levels);
    if (v && !cJSON_IsArray(v))
        return dc_fail("%s: %s must be a list of block names, got %s", what, key, dc_json_type(v));
    if (v && cJSON_GetArraySize(v) != levels)
        return dc_fail("%s: %s has %d entries but block_out_channels has %d", what, key,
                       cJSON_GetArraySize(v), levels);
    const cJSON *e = v ? v->child : NULL;
    for (int i = 0; i < levels; i++, e = e ? e->next : NULL) {
        if (e && !cJSON_IsString(e))
            return dc_fail("%s: %s[%d] must be a string, got %s", what, key, i, dc_json_type(e));
        const char *name = e ? e->valuestring : defaults[kinds == up_kinds][i];
        const block_kind *k = find_kind(kinds, name);
        if (!k)
            return dc_fail("%s: %s[%d] \"%.64s\" is not supported (supported: %s, %s, %s, %s, %s)",
                           what, key, i, name, kinds[0].name, kinds[1].name, kinds[2].name,
                           kinds[3].name, kinds[4].name);
        attn[i] = k->attn;
        resample[i] = k->resample == FROM_KEY ? from_key : (dc_unet_resample)k->resample;
    }
    return 0;
}

static int check_attention(const dc_unet_config *c, const char *what, const char *block, int i,
                           int channels) {
    if (c->attention_head_dim > channels)
        return dc_fail("%s: attention_head_dim %d is larger than the %d channels of %s.%d", what,
                       c->attention_head_dim, channels, block, i);
    return 0;
}

/* The image-sized skip path goes through every level or none: a level
 * without it would leave the image at the wrong resolution. */
static int check_skip_path(const dc_unet_resample *r, int levels, const char *what,
                           const char *key) {
    for (int i = 1; i < levels; i++)
        if ((r[i] == DC_UNET_RESAMPLE_FIR) != (r[0] == DC_UNET_RESAMPLE_FIR))
            return dc_fail("%s: %s mixes Skip blocks with others (levels 0 and %d): the skip path "
                           "needs a Skip block at every level or at none",
                           what, key, i);
    return 0;
}

/* The enumerations and widths a config built in code could get wrong. */
static int check_features(const dc_unet_config *c, const char *what) {
    if ((unsigned)c->act_fn > DC_UNET_GELU || (unsigned)c->class_embed_type > DC_UNET_CLASS_IDENTITY)
        return dc_fail("%s: act_fn %d or class_embed_type %d is out of range", what, (int)c->act_fn,
                       (int)c->class_embed_type);
    for (int i = 0; i < c->levels; i++)
        if ((unsigned)c->down_resample[i] > DC_UNET_RESAMPLE_FIR ||
            (unsigned)c->up_resample[i] > DC_UNET_RESAMPLE_FIR)
            return dc_fail("%s: the resampling of level %d is out of range", what, i);
    if (check_skip_path(c->down_resample, c->levels, what, "down_block_types") ||
        check_skip_path(c->up_resample, c->levels, what, "up_block_types"))
        return -1;
    if (!c->norm_num_groups && (c->down_resample[0] != DC_UNET_RESAMPLE_FIR ||
                                c->up_resample[0] != DC_UNET_RESAMPLE_FIR))
        return dc_fail("%s: norm_num_groups null needs Skip blocks on both paths (the others "
                       "have no groups of their own)",
                       what);
    if ((c->down_resample[0] == DC_UNET_RESAMPLE_FIR && c->in_channels != 3) ||
        (c->up_resample[0] == DC_UNET_RESAMPLE_FIR && c->out_channels != 3))
        return dc_fail("%s: Skip blocks carry a 3-channel image (diffusers' skip_conv), but "
                       "in_channels is %d and out_channels %d",
                       what, c->in_channels, c->out_channels);
    if (c->time_embedding_dim < 0)
        return dc_fail("%s: time_embedding_dim %d must be positive or null", what,
                       c->time_embedding_dim);
    return 0;
}

static int check_limits(const dc_unet_config *c, const char *what) {
    int rc = dc_cfg_limit(what, "in_channels", c->in_channels, DC_UNET_MAX_CHANNELS) ||
             dc_cfg_limit(what, "out_channels", c->out_channels, DC_UNET_MAX_CHANNELS) ||
             dc_cfg_limit(what, "layers_per_block", c->layers_per_block, DC_UNET_MAX_LAYERS_PER_BLOCK) ||
             dc_cfg_limit(what, "num_class_embeds", c->num_class_embeds, DC_UNET_MAX_CLASS_EMBEDS) ||
             dc_cfg_limit(what, "sample_size", c->sample_size[0], DC_UNET_MAX_SAMPLE_SIZE) ||
             dc_cfg_limit(what, "sample_size", c->sample_size[1], DC_UNET_MAX_SAMPLE_SIZE);
    for (int i = 0; !rc && i < c->levels && i < DC_UNET_MAX_LEVELS; i++)
        rc = dc_cfg_limit(what, "block_out_channels", c->block_out_channels[i], DC_UNET_MAX_CHANNELS);
    return rc ? -1 : 0;
}

/* The rules that hold for any config, parsed or built in code. */
static int check_config(const dc_unet_config *c, const char *what) {
    if (c->levels < 1 || c->levels > DC_UNET_MAX_LEVELS)
        return dc_fail("%s: %d levels (diffc builds 1 to %d)", what, c->levels, DC_UNET_MAX_LEVELS);
    if (check_features(c, what) || check_limits(c, what))
        return -1;
    if (c->in_channels < 1 || c->out_channels < 1)
        return dc_fail("%s: in_channels %d and out_channels %d must be positive", what,
                       c->in_channels, c->out_channels);
    if (c->layers_per_block < 1)
        return dc_fail("%s: layers_per_block %d must be positive", what, c->layers_per_block);
    if (c->sample_size[0] < 0 || c->sample_size[1] < 0)
        return dc_fail("%s: sample_size [%d, %d] must not be negative", what, c->sample_size[0],
                       c->sample_size[1]);
    if (c->norm_num_groups < 0)
        return dc_fail("%s: norm_num_groups %d must be positive or null", what, c->norm_num_groups);
    for (int i = 0; i < c->levels; i++)
        if (c->block_out_channels[i] < 1 ||
            (c->norm_num_groups && c->block_out_channels[i] % c->norm_num_groups))
            return dc_fail("%s: block_out_channels[%d] = %d is not a positive multiple of "
                           "norm_num_groups %d",
                           what, i, c->block_out_channels[i], c->norm_num_groups);
    int deepest = c->block_out_channels[c->levels - 1];
    if (c->attn_norm_num_groups < 0 ||
        (c->attn_norm_num_groups && deepest % c->attn_norm_num_groups))
        return dc_fail("%s: attn_norm_num_groups %d does not divide the mid block's %d channels",
                       what, c->attn_norm_num_groups, deepest);
    if (c->attention_head_dim < 0)
        return dc_fail("%s: attention_head_dim %d must be positive or null", what,
                       c->attention_head_dim);
    for (int i = 0; i < c->levels; i++)
        if ((c->down_attn[i] &&
             check_attention(c, what, "down_blocks", i, c->block_out_channels[i])) ||
            (c->up_attn[i] &&
             check_attention(c, what, "up_blocks", i, c->block_out_channels[c->levels - 1 - i])))
            return -1;
    if (c->add_attention && check_attention(c, what, "mid_block", 0, deepest))
        return -1;
    dc_unet_common_config common = {c->downsample_padding, c->norm_eps, c->dropout,
                                     c->mid_block_scale_factor, c->block_out_channels[0],
                                     c->freq_shift};
    if (dc_unet_check_common(&common, what))
        return -1;
    if (c->num_class_embeds < 0)
        return dc_fail("%s: num_class_embeds %d must be positive or null", what,
                       c->num_class_embeds);
    return 0;
}

static int parse_object(void *cfg, const cJSON *root, const char *what) {
    dc_unet_config *c = cfg;
    if (!cJSON_IsObject(root))
        return dc_fail("%s: a UNet config must be a JSON object, got %s", what, dc_json_type(root));
    if (refuse_unsupported(root, what))
        return -1;
    if (dc_cfg_read_keys(c, root, what, scalar_keys, (int)(sizeof scalar_keys / sizeof *scalar_keys)))
        return -1;
    int shift = DC_CFG_CHOICE(root, what, "resnet_time_scale_shift", "default", "default", "scale_shift");
    int time = DC_CFG_CHOICE(root, what, "time_embedding_type", "positional", "positional", "fourier");
    int act = DC_CFG_CHOICE(root, what, "act_fn", "silu", "silu", "swish", "mish", "gelu");
    int cls = DC_CFG_CHOICE(root, what, "class_embed_type", NULL, NULL, "timestep", "identity");
    /* null means "conv" (get_down_block's default) */
    int down = DC_CFG_CHOICE(root, what, "downsample_type", "conv", "conv", NULL, "resnet");
    int up = DC_CFG_CHOICE(root, what, "upsample_type", "conv", "conv", NULL, "resnet");
    if (shift < 0 || time < 0 || act < 0 || cls < 0 || down < 0 || up < 0)
        return -1;
    c->scale_shift = shift == 1;
    c->fourier = time == 1;
    c->act_fn = act < 2 ? DC_UNET_SILU : act == 2 ? DC_UNET_MISH : DC_UNET_GELU;
    c->class_embed_type = (dc_unet_class_embed)cls;
    if (dc_cfg_sample_size(root, what, c->sample_size) || read_channels(c, root, what) ||
        read_block_types(c->down_attn, c->down_resample, root, what, "down_block_types", c->levels,
                         down_kinds, down == 2 ? DC_UNET_RESAMPLE_RESNET : DC_UNET_RESAMPLE_CONV) ||
        read_block_types(c->up_attn, c->up_resample, root, what, "up_block_types", c->levels,
                         up_kinds, up == 2 ? DC_UNET_RESAMPLE_RESNET : DC_UNET_RESAMPLE_CONV))
        return -1;
    return check_config(c, what);
}

int dc_unet_config_parse(dc_unet_config *c, const char *json, const char *what) {
    return dc_cfg_parse_text(c, sizeof *c, json, what, parse_object, &c->json);
}

int dc_unet_config_load(dc_unet_config *c, const char *path) {
    return dc_cfg_load(c, sizeof *c, path, parse_object, &c->json);
}

int dc_unet_config_save(const dc_unet_config *c, const char *path) {
    return dc_cfg_save_text(c->json, path);
}

void dc_unet_config_free(dc_unet_config *c) {
    if (!c)
        return;
    free(c->json);
    memset(c, 0, sizeof *c);
}

int dc_unet_check_ddpm(const dc_unet_config *c, const char *what) {
    if (c->fourier)
        return dc_fail("%s: time_embedding_type \"fourier\" (an NCSN++ model) takes noise levels, "
                       "not the DDPM timesteps of diffc's schedules and samplers",
                       what);
    return 0;
}

/* Identity class embeddings are vectors, not labels: no label means "no class". */
int dc_unet_null_class(const dc_unet_config *c) {
    return c->num_class_embeds > 0 && c->class_embed_type != DC_UNET_CLASS_IDENTITY
               ? c->num_class_embeds - 1
               : -1;
}

/* ==== parameters ==== */

/* T, the width of the time embedding. */
static int64_t temb_dim(const dc_unet_config *c) {
    return c->time_embedding_dim ? c->time_embedding_dim : 4 * (int64_t)c->block_out_channels[0];
}

/* A ResnetBlock2D of this config. */
static dc_unet_resnet_shape resnet_shape(const dc_unet_config *c, int64_t cin, int64_t cout,
                                         int groups, int groups_out, float scale, int resample,
                                         bool shortcut) {
    return (dc_unet_resnet_shape){.cin = cin, .cout = cout, .groups = groups,
                                  .groups_out = groups_out, .eps = c->norm_eps,
                                  .temb = temb_dim(c), .scale_shift = c->scale_shift,
                                  .act = c->act_fn, .dropout = c->dropout, .scale = scale,
                                  .resample = resample, .shortcut = shortcut};
}

/* The common case: the config's groups. resample as dc_unet_resnet_shape's. */
static dc_unet_resnet_shape plain(int64_t cin, int64_t cout, const dc_unet_config *c, float scale,
                                  int resample) {
    return resnet_shape(c, cin, cout, c->norm_num_groups, c->norm_num_groups, scale, resample,
                        false);
}

static void resnet_init(dc_unet_resnet *r, dc_params *ps, const char *prefix,
                        dc_unet_resnet_shape s) {
    dc_unet_resnet_init(r, ps, prefix, &s);
}

/* groups 0: no group_norm (the mid block under scale_shift). */
static void attention_init(dc_unet_attention *a, dc_params *ps, const char *prefix, int64_t ch,
                           const dc_unet_config *c, int groups, float rescale) {
    dc_unet_attention_init(a, ps, prefix, ch, c->attention_head_dim, groups, c->norm_eps, rescale);
}

static int block_alloc(dc_unet_block *b, int n_layers, int n_attn) {
    b->n_layers = n_layers;
    b->resnets = calloc((size_t)n_layers, sizeof *b->resnets);
    b->attentions = n_attn ? calloc((size_t)n_attn, sizeof *b->attentions) : NULL;
    if (!b->resnets || (n_attn && !b->attentions))
        return dc_fail("unet: out of memory");
    return 0;
}

/* DownBlock2D / AttnDownBlock2D `i`, declared as diffusers registers them:
 * attentions, resnets, downsamplers. */
static int down_init(dc_unet_block *b, dc_params *ps, const dc_unet_config *c, int i) {
    char q[128];
    int n = c->layers_per_block, cout = c->block_out_channels[i];
    int cin = c->block_out_channels[i > 0 ? i - 1 : 0];
    if (block_alloc(b, n, c->down_attn[i] ? n : 0))
        return -1;
    for (int j = 0; b->attentions && j < n; j++) {
        snprintf(q, sizeof q, "down_blocks.%d.attentions.%d", i, j);
        attention_init(&b->attentions[j], ps, q, cout, c, c->norm_num_groups, 1.0f);
    }
    for (int j = 0; j < n; j++) {
        snprintf(q, sizeof q, "down_blocks.%d.resnets.%d", i, j);
        resnet_init(&b->resnets[j], ps, q, plain(j ? cout : cin, cout, c, 1.0f, 0));
    }
    if (i < c->levels - 1 && c->down_resample[i] == DC_UNET_RESAMPLE_RESNET) {
        snprintf(q, sizeof q, "down_blocks.%d.downsamplers.0", i);
        resnet_init(&b->resnet_sampler, ps, q, plain(cout, cout, c, 1.0f, -1));
    } else if (i < c->levels - 1) {
        snprintf(q, sizeof q, "down_blocks.%d.downsamplers.0.conv", i);
        dc_nn_conv2d_init(&b->sampler, ps, q, cout, cout, 3, 2, c->downsample_padding, true);
        b->pad_bottom_right = c->downsample_padding == 0;
    }
    return 0;
}

/* The inputs of resnet j of up block `i` (0 = deepest), plain or Skip: the
 * running features (*in channels: the deeper level's for j = 0, this
 * level's after) concatenated with a skip (*res channels): this level's
 * down-path outputs, newest first, and last the output of the level above
 * (its downsampler, or conv_in). */
static void up_resnet_inputs(const dc_unet_config *c, int i, int j, int *in, int *res) {
    const int *ch = c->block_out_channels;
    int L = c->levels, cout = ch[L - 1 - i];
    *in = j ? cout : ch[L - 1 - (i > 0 ? i - 1 : 0)];
    *res = j == c->layers_per_block ? ch[L - 1 - (i + 1 < L ? i + 1 : L - 1)] : cout;
}

/* UpBlock2D / AttnUpBlock2D `i` (0 = deepest): resnets as up_resnet_inputs
 * wires them. */
static int up_init(dc_unet_block *b, dc_params *ps, const dc_unet_config *c, int i) {
    char q[128];
    int L = c->levels, n = c->layers_per_block + 1, cout = c->block_out_channels[L - 1 - i];
    if (block_alloc(b, n, c->up_attn[i] ? n : 0))
        return -1;
    for (int j = 0; b->attentions && j < n; j++) {
        snprintf(q, sizeof q, "up_blocks.%d.attentions.%d", i, j);
        attention_init(&b->attentions[j], ps, q, cout, c, c->norm_num_groups, 1.0f);
    }
    for (int j = 0; j < n; j++) {
        int in, res;
        up_resnet_inputs(c, i, j, &in, &res);
        snprintf(q, sizeof q, "up_blocks.%d.resnets.%d", i, j);
        resnet_init(&b->resnets[j], ps, q, plain(in + res, cout, c, 1.0f, 0));
    }
    if (i < L - 1 && c->up_resample[i] == DC_UNET_RESAMPLE_RESNET) {
        snprintf(q, sizeof q, "up_blocks.%d.upsamplers.0", i);
        resnet_init(&b->resnet_sampler, ps, q, plain(cout, cout, c, 1.0f, 1));
    } else if (i < L - 1) {
        snprintf(q, sizeof q, "up_blocks.%d.upsamplers.0.conv", i);
        dc_nn_conv2d_init(&b->sampler, ps, q, cout, cout, 3, 1, 1, true);
    }
    return 0;
}

/* The Skip blocks' norms: min(channels / 4, 32) groups, whatever norm_num_groups says. */
static int skip_groups(int64_t channels) { return (int)(channels / 4 < 32 ? channels / 4 : 32); }

#define SKIP_SCALE 1.41421356237309504880f /* the Skip blocks' output_scale_factor, sqrt(2) */
#define SKIP_ATTN_GROUPS 32                /* their attention norms' groups, fixed */

/* SkipDownBlock2D / AttnSkipDownBlock2D `i`: resnets (and attentions) as
 * DownBlock2D's with the Skip blocks' groups and scale; then, but on the last
 * level, resnet_down (FIR, its own 1x1 shortcut) and skip_conv (the image,
 * FIR-downsampled, 3 -> C). */
static int skip_down_init(dc_unet_block *b, dc_params *ps, const dc_unet_config *c, int i) {
    char q[128];
    int n = c->layers_per_block, cout = c->block_out_channels[i];
    int cin = c->block_out_channels[i > 0 ? i - 1 : 0];
    if (block_alloc(b, n, c->down_attn[i] ? n : 0))
        return -1;
    b->skip = true;
    for (int j = 0; b->attentions && j < n; j++) {
        snprintf(q, sizeof q, "down_blocks.%d.attentions.%d", i, j);
        attention_init(&b->attentions[j], ps, q, cout, c, SKIP_ATTN_GROUPS, SKIP_SCALE);
    }
    for (int j = 0; j < n; j++) {
        int in = j ? cout : cin;
        snprintf(q, sizeof q, "down_blocks.%d.resnets.%d", i, j);
        resnet_init(&b->resnets[j], ps, q,
                    resnet_shape(c, in, cout, skip_groups(in), skip_groups(cout), SKIP_SCALE, 0, false));
    }
    if (i < c->levels - 1) {
        int g = skip_groups(cout);
        snprintf(q, sizeof q, "down_blocks.%d.resnet_down", i);
        resnet_init(&b->resnet_sampler, ps, q, resnet_shape(c, cout, cout, g, g, SKIP_SCALE, -2, true));
        snprintf(q, sizeof q, "down_blocks.%d.skip_conv", i);
        dc_nn_conv2d_init(&b->skip_conv, ps, q, 3, cout, 1, 1, 0, true);
    }
    return 0;
}

/* SkipUpBlock2D / AttnSkipUpBlock2D `i` (0 = deepest): resnets wired as
 * UpBlock2D's, one attention after them all; then, but on the last level,
 * resnet_up (FIR) and skip_conv after skip_norm and silu (C -> 3). */
static int skip_up_init(dc_unet_block *b, dc_params *ps, const dc_unet_config *c, int i) {
    char q[128];
    int L = c->levels, n = c->layers_per_block + 1, cout = c->block_out_channels[L - 1 - i];
    if (block_alloc(b, n, c->up_attn[i] ? 1 : 0))
        return -1;
    b->skip = true;
    b->attn_after = b->attentions != NULL;
    if (b->attentions) {
        snprintf(q, sizeof q, "up_blocks.%d.attentions.0", i);
        attention_init(&b->attentions[0], ps, q, cout, c, SKIP_ATTN_GROUPS, SKIP_SCALE);
    }
    for (int j = 0; j < n; j++) {
        int in, res;
        up_resnet_inputs(c, i, j, &in, &res);
        /* AttnSkipUpBlock2D's groups are min(in + res // 4, 32), a precedence slip in
         * diffusers kept here: the same groups give the same output */
        int groups = b->attentions ? (in + res / 4 < 32 ? in + res / 4 : 32) : skip_groups(in + res);
        snprintf(q, sizeof q, "up_blocks.%d.resnets.%d", i, j);
        resnet_init(&b->resnets[j], ps, q,
                    resnet_shape(c, in + res, cout, groups, skip_groups(cout), SKIP_SCALE, 0, false));
    }
    if (i < L - 1) {
        int g = skip_groups(cout);
        snprintf(q, sizeof q, "up_blocks.%d.resnet_up", i);
        resnet_init(&b->resnet_sampler, ps, q, resnet_shape(c, cout, cout, g, g, SKIP_SCALE, 2, true));
        snprintf(q, sizeof q, "up_blocks.%d.skip_conv", i);
        dc_nn_conv2d_init(&b->skip_conv, ps, q, cout, 3, 3, 1, 1, true);
        snprintf(q, sizeof q, "up_blocks.%d.skip_norm", i);
        dc_nn_group_norm_init(&b->skip_norm, ps, q, g, cout, c->norm_eps);
    }
    return 0;
}

/* The groups of the norms outside the blocks (mid block, conv_norm_out) over
 * `channels`: norm_num_groups, or when null min(channels / 4, 32), as UNet2DModel. */
static int outer_groups(const dc_unet_config *c, int64_t channels) {
    return c->norm_num_groups ? c->norm_num_groups : skip_groups(channels);
}

/* UNetMidBlock2D: resnet, [attention], resnet, all scaled by mid_block_scale_factor. */
static int mid_init(dc_unet_block *b, dc_params *ps, const dc_unet_config *c) {
    int ch = c->block_out_channels[c->levels - 1], rg = outer_groups(c, ch);
    int groups = c->attn_norm_num_groups ? c->attn_norm_num_groups
                 : c->scale_shift        ? 0
                                         : rg;
    float s = c->mid_block_scale_factor;
    if (block_alloc(b, 2, c->add_attention ? 1 : 0))
        return -1;
    if (b->attentions)
        attention_init(&b->attentions[0], ps, "mid_block.attentions.0", ch, c, groups, s);
    dc_unet_resnet_shape shape = resnet_shape(c, ch, ch, rg, rg, s, 0, false);
    resnet_init(&b->resnets[0], ps, "mid_block.resnets.0", shape);
    resnet_init(&b->resnets[1], ps, "mid_block.resnets.1", shape);
    return 0;
}

static void block_free(dc_unet_block *b) {
    free(b->resnets);
    free(b->attentions);
    memset(b, 0, sizeof *b);
}

void dc_unet_free(dc_unet *m) {
    if (!m)
        return;
    for (int i = 0; i < DC_UNET_MAX_LEVELS; i++) {
        block_free(&m->down[i]);
        block_free(&m->up[i]);
    }
    block_free(&m->mid);
    memset(m, 0, sizeof *m);
}

/* Declared in the order of UNet2DModel's state_dict: conv_in, time_embedding,
 * class_embedding, down_blocks, up_blocks, mid_block (assigned last in its
 * __init__), conv_norm_out, conv_out. */
int dc_unet_init(dc_unet *m, const dc_unet_config *c, dc_params *ps) {
    memset(m, 0, sizeof *m);
    if (check_config(c, "unet config"))
        return -1;
    m->cfg = *c;
    m->cfg.json = NULL;
    int64_t c0 = c->block_out_channels[0], temb = temb_dim(c), proj = c->fourier ? 2 * c0 : c0;
    dc_nn_conv2d_init(&m->conv_in, ps, "conv_in", c->in_channels, c0, 3, 1, 1, true);
    if (c->fourier) /* GaussianFourierProjection(C0, scale=16): randn * 16 */
        m->time_proj = dc_params_add(ps, "time_proj", "weight", DC_SHAPE(c0), DC_LAYOUT_PLAIN,
                                     DC_INIT_NORMAL, 16.0f);
    dc_nn_linear_init(&m->time_linear_1, ps, "time_embedding.linear_1", proj, temb, true);
    dc_nn_linear_init(&m->time_linear_2, ps, "time_embedding.linear_2", temb, temb, true);
    if (c->class_embed_type == DC_UNET_CLASS_TABLE && c->num_class_embeds)
        dc_nn_embedding_init(&m->class_embedding, ps, "class_embedding", c->num_class_embeds, temb);
    if (c->class_embed_type == DC_UNET_CLASS_TIMESTEP) {
        dc_nn_linear_init(&m->class_linear_1, ps, "class_embedding.linear_1", proj, temb, true);
        dc_nn_linear_init(&m->class_linear_2, ps, "class_embedding.linear_2", temb, temb, true);
    }
    int rc = 0;
    for (int i = 0; !rc && i < c->levels; i++)
        rc = c->down_resample[i] == DC_UNET_RESAMPLE_FIR ? skip_down_init(&m->down[i], ps, c, i)
                                                         : down_init(&m->down[i], ps, c, i);
    for (int i = 0; !rc && i < c->levels; i++)
        rc = c->up_resample[i] == DC_UNET_RESAMPLE_FIR ? skip_up_init(&m->up[i], ps, c, i)
                                                       : up_init(&m->up[i], ps, c, i);
    rc = rc ? rc : mid_init(&m->mid, ps, c);
    dc_nn_group_norm_init(&m->conv_norm_out, ps, "conv_norm_out", outer_groups(c, c0), c0,
                          c->norm_eps);
    dc_nn_conv2d_init(&m->conv_out, ps, "conv_out", c0, c->out_channels, 3, 1, 1, true);
    if (rc || ps->failed) {
        dc_unet_free(m);
        return -1;
    }
    return 0;
}

/* ==== forward ==== */

static bool conditional(const dc_unet_config *c) {
    return c->class_embed_type != DC_UNET_CLASS_TABLE || c->num_class_embeds;
}

/* What makes the model class-conditional, for messages. */
static const char *class_kind(const dc_unet_config *c, char *buf, size_t n) {
    static const char *const types[] = {"", "timestep", "identity"};
    if (c->class_embed_type == DC_UNET_CLASS_TABLE)
        snprintf(buf, n, "num_class_embeds %d", c->num_class_embeds);
    else
        snprintf(buf, n, "class_embed_type \"%s\"", types[c->class_embed_type]);
    return buf;
}

/* Whether labels y do not fit the model's class embedding (why in buf). */
static bool labels_problem(const dc_unet *m, const dc_tensor *y, int64_t batch, char *buf,
                           size_t n) {
    const dc_unet_config *c = &m->cfg;
    char s[64];
    dc_shape_str(s, sizeof s, y->ndim, y->shape);
    if (c->class_embed_type == DC_UNET_CLASS_IDENTITY) {
        int64_t t = m->time_linear_2.weight->shape[0];
        if (y->dtype == DC_F32 && y->ndim == 2 && y->shape[0] == batch && y->shape[1] == t)
            return false;
        snprintf(buf, n, "class embeddings (class_embed_type \"identity\") must be f32 [%lld, %lld], "
                 "got %s %s", (long long)batch, (long long)t, dc_dtype_name(y->dtype), s);
        return true;
    }
    bool timestep = c->class_embed_type == DC_UNET_CLASS_TIMESTEP;
    if ((y->dtype == DC_I32 || (timestep && y->dtype == DC_F32)) && y->ndim == 1 &&
        y->shape[0] == batch)
        return false;
    snprintf(buf, n, "class labels must be %s [%lld], got %s %s", timestep ? "i32 or f32" : "i32",
             (long long)batch, dc_dtype_name(y->dtype), s);
    return true;
}

/* The reason x, t and class_labels cannot go through m, or NULL. */
static const char *input_problem(const dc_unet *m, const dc_tensor *x, const dc_tensor *t,
                                 const dc_tensor *y, char *buf, size_t n) {
    const dc_unet_config *c = &m->cfg;
    char s[64];
    if (dc_unet_input_problem(x, t, c->in_channels, c->levels, buf, n))
        return buf;
    if (conditional(c) && !y)
        snprintf(buf, n, "the model is class-conditional (%s): class labels are required",
                 class_kind(c, s, sizeof s));
    else if (!conditional(c) && y)
        snprintf(buf, n, "class labels given to a model without class embeddings");
    else if (y && labels_problem(m, y, x->shape[0], buf, n))
        return buf;
    else
        return NULL;
    return buf;
}

/* time_proj: timesteps [N] -> sinusoids [N, C0], or noise levels -> Gaussian
 * Fourier features [N, 2 C0] (sin first: UNet2DModel does not pass
 * flip_sin_to_cos to GaussianFourierProjection). */
static dc_tensor *time_proj(dc_ctx *ctx, const dc_unet *m, dc_tensor *t) {
    const dc_unet_config *c = &m->cfg;
    if (c->fourier)
        return dc_fourier_embedding(ctx, t, m->time_proj, false);
    return dc_unet_timesteps(ctx, t, c->block_out_channels[0], c->flip_sin_to_cos, c->freq_shift);
}

/* Timesteps (and class labels) -> emb [N, T]: the time MLP of the
 * projected timesteps, plus the class embedding. */
static dc_tensor *time_embedding(dc_ctx *ctx, const dc_unet *m, dc_tensor *t, dc_tensor *y) {
    const dc_unet_config *c = &m->cfg;
    dc_tensor *e = dc_unet_time_mlp(ctx, &m->time_linear_1, &m->time_linear_2, time_proj(ctx, m, t));
    if (!y)
        return e;
    dc_tensor *ce = c->class_embed_type == DC_UNET_CLASS_TABLE
                        ? dc_nn_embedding_forward(ctx, &m->class_embedding, y)
                    : c->class_embed_type == DC_UNET_CLASS_TIMESTEP
                        ? dc_unet_time_mlp(ctx, &m->class_linear_1, &m->class_linear_2, time_proj(ctx, m, y))
                        : y;
    /* labels first: with one shared timestep e is [1, T] and broadcasts */
    return dc_add(ctx, ce, e);
}

static bool has_sampler(const dc_unet_block *b) {
    return b->sampler.weight || b->resnet_sampler.resample;
}

/* Downsample2D (conv, stride 2), Upsample2D (nearest 2x, conv), or a
 * resampling resnet. */
static dc_tensor *resample(dc_ctx *ctx, const dc_unet_block *b, dc_tensor *h, dc_tensor *temb,
                           bool up) {
    if (b->resnet_sampler.resample)
        return dc_unet_resnet_forward(ctx, &b->resnet_sampler, h, temb);
    if (up)
        return dc_nn_conv2d_forward(ctx, &b->sampler, dc_upsample2x(ctx, h));
    if (b->pad_bottom_right)
        h = dc_unet_pad_bottom_right(ctx, h);
    return dc_nn_conv2d_forward(ctx, &b->sampler, h);
}

/* One up block: its resnets on the skip tensors popped from skips[..*top],
 * its attentions, its resampler; a Skip block also carries *image up and
 * adds its own image to it. */
static dc_tensor *up_block_forward(dc_ctx *ctx, const dc_unet_block *b, dc_tensor *h,
                                   dc_tensor *temb, dc_tensor **skips, int *top,
                                   dc_tensor **image, bool ckpt) {
    for (int j = 0; j < b->n_layers; j++) {
        h = dc_unet_resnet_block(ctx, &b->resnets[j], dc_concat(ctx, h, skips[--*top]), temb, ckpt);
        if (b->attentions && !b->attn_after)
            h = dc_unet_attention_block(ctx, &b->attentions[j], h, ckpt);
    }
    if (b->attn_after)
        h = dc_unet_attention_block(ctx, &b->attentions[0], h, ckpt);
    if (b->skip && *image)
        *image = dc_unet_fir_resample(ctx, *image, true);
    if (b->skip && has_sampler(b)) {
        dc_tensor *s = dc_nn_group_norm_silu_forward(ctx, &b->skip_norm, h);
        s = dc_nn_conv2d_forward(ctx, &b->skip_conv, s);
        *image = *image ? dc_add(ctx, *image, s) : s;
    }
    return has_sampler(b) ? resample(ctx, b, h, temb, true) : h;
}

/* out / t per sample, as UNet2DModel does with a fourier time embedding: t
 * [N] or [1] (f32 or i32, data) is read to the host for its reciprocals. */
static dc_tensor *divide_by_noise_level(dc_ctx *ctx, dc_tensor *out, dc_tensor *t) {
    if (!out)
        return NULL;
    int64_t n = t->shape[0];
    float *host = dc_arena_alloc(&ctx->meta, (size_t)n * sizeof *host);
    if (!host || dc_memcpy(host, DC_CPU, t->data, t->device, (size_t)n * sizeof *host))
        return dc_unet_fail(ctx, "%s", dc_error());
    for (int64_t i = 0; i < n; i++)
        host[i] = 1.0f / (t->dtype == DC_I32 ? (float)((int32_t *)host)[i] : host[i]);
    return dc_mul(ctx, out, dc_from_host(ctx, DC_F32, DC_SHAPE(n, 1, 1, 1), host));
}

/* How many skip tensors the down path leaves for the up path. */
static int skip_count(const dc_unet *m) {
    int n = 1; /* conv_in's output */
    for (int i = 0; i < m->cfg.levels; i++)
        n += m->down[i].n_layers + has_sampler(&m->down[i]);
    return n;
}

dc_tensor *dc_unet_forward(dc_ctx *ctx, const dc_unet *m, dc_tensor *x, dc_tensor *t,
                           dc_tensor *class_labels) {
    return dc_unet_forward_features(ctx, m, x, t, class_labels, NULL);
}

dc_tensor *dc_unet_forward_features(dc_ctx *ctx, const dc_unet *m, dc_tensor *x, dc_tensor *t,
                                    dc_tensor *class_labels, dc_tensor **features) {
    if (ctx->failed || !x || !t) {
        ctx->failed = true; /* a NULL input: whatever made it has said why */
        return NULL;
    }
    char why[256];
    if (input_problem(m, x, t, class_labels, why, sizeof why))
        return dc_unet_fail(ctx, "%s", why);
    const dc_unet_config *c = &m->cfg;
    dc_tensor **skips = dc_arena_alloc(&ctx->meta, (size_t)skip_count(m) * sizeof *skips);
    if (!skips)
        return dc_unet_fail(ctx, "%s", dc_error());
    dc_tensor *temb = dc_unet_activation(ctx, c->act_fn, time_embedding(ctx, m, t, class_labels));
    dc_tensor *h = c->center_input_sample ? dc_affine(ctx, x, 2.0f, -1.0f) : x;
    dc_tensor *image = h; /* the Skip blocks' skip_sample, down the levels */
    h = dc_nn_conv2d_forward(ctx, &m->conv_in, h);
    int top = 0;
    bool ckpt = m->gradient_checkpointing;
    skips[top++] = h;
    for (int i = 0; i < c->levels; i++) {
        const dc_unet_block *b = &m->down[i];
        for (int j = 0; j < b->n_layers; j++) {
            h = dc_unet_resnet_block(ctx, &b->resnets[j], h, temb, ckpt);
            if (b->attentions)
                h = dc_unet_attention_block(ctx, &b->attentions[j], h, ckpt);
            skips[top++] = h;
        }
        if (features)
            features[i] = h;
        if (has_sampler(b))
            h = resample(ctx, b, h, temb, false);
        if (has_sampler(b) && b->skip) {
            image = dc_unet_fir_resample(ctx, image, false);
            h = dc_add(ctx, dc_nn_conv2d_forward(ctx, &b->skip_conv, image), h);
        }
        if (has_sampler(b))
            skips[top++] = h;
    }
    h = dc_unet_resnet_block(ctx, &m->mid.resnets[0], h, temb, ckpt);
    if (m->mid.attentions)
        h = dc_unet_attention_block(ctx, &m->mid.attentions[0], h, ckpt);
    h = dc_unet_resnet_block(ctx, &m->mid.resnets[1], h, temb, ckpt);
    dc_tensor *out_skip = NULL; /* the up Skip blocks' skip_sample (NULL: diffusers' 0) */
    for (int i = 0; i < c->levels; i++)
        h = up_block_forward(ctx, &m->up[i], h, temb, skips, &top, &out_skip, ckpt);
    h = dc_nn_group_norm_silu_forward(ctx, &m->conv_norm_out, h);
    h = dc_nn_conv2d_forward(ctx, &m->conv_out, h);
    if (out_skip)
        h = dc_add(ctx, h, out_skip);
    return c->fourier ? divide_by_noise_level(ctx, h, t) : h;
}

/* ==== old attention names ==== */

/* Whether name[0, seg) ends with "attentions.<digits>." (at the start or after a dot). */
static bool in_attention(const char *name, const char *seg) {
    const char *p = seg - 1; /* the dot before the segment */
    if (p <= name || *p != '.')
        return false;
    const char *d = p;
    while (d > name && d[-1] >= '0' && d[-1] <= '9')
        d--;
    static const char word[] = "attentions.";
    size_t wl = sizeof word - 1;
    if (d == p || (size_t)(d - name) < wl || strncmp(d - wl, word, wl))
        return false;
    return d - wl == name || d[-(ptrdiff_t)wl - 1] == '.';
}

const char *dc_unet_rename(const char *file_name, char *buf, size_t size) {
    static const char *const old_names[] = {"query", "key", "value", "proj_attn"};
    static const char *const new_names[] = {"to_q", "to_k", "to_v", "to_out.0"};
    const char *leaf = strrchr(file_name, '.');
    if (!leaf || (strcmp(leaf, ".weight") && strcmp(leaf, ".bias")))
        return file_name;
    const char *seg = leaf;
    while (seg > file_name && seg[-1] != '.')
        seg--;
    for (int k = 0; k < 4; k++) {
        size_t len = strlen(old_names[k]);
        if ((size_t)(leaf - seg) != len || strncmp(seg, old_names[k], len) ||
            !in_attention(file_name, seg))
            continue;
        int n =
            snprintf(buf, size, "%.*s%s%s", (int)(seg - file_name), file_name, new_names[k], leaf);
        return n >= 0 && (size_t)n < size ? buf : file_name;
    }
    return file_name;
}
