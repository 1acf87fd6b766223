/*
 * diffusers' UNet2DConditionModel (unets/unet_2d_condition.py, the blocks of
 * unet_2d_blocks.py, transformers/transformer_2d.py, attention.py of
 * diffusers 0.42): the config parser, the parameter declarations under
 * state_dict names, and the forward pass as ops, whose tape gives the
 * backward pass. See unet_cond.h.
 */
#include "unet_cond.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/config_json.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WHAT "unet config" /* names a config built in code in messages */
#define TF_NORM_EPS 1e-6f  /* Transformer2DModel's GroupNorm */
#define LN_EPS 1e-5f       /* BasicTransformerBlock's LayerNorms (norm_eps of Transformer2DModel) */
#define FF_MULT 4          /* FeedForward's hidden width / C */

/* ==== config ==== */

static const dc_cfg_key scalar_keys[] = {
    {"in_channels", DC_CFG_INT, offsetof(dc_unet_cond_config, in_channels), 4},
    {"out_channels", DC_CFG_INT, offsetof(dc_unet_cond_config, out_channels), 4},
    {"center_input_sample", DC_CFG_BOOL, offsetof(dc_unet_cond_config, center_input_sample), 0},
    {"flip_sin_to_cos", DC_CFG_BOOL, offsetof(dc_unet_cond_config, flip_sin_to_cos), 1},
    {"freq_shift", DC_CFG_FLOAT, offsetof(dc_unet_cond_config, freq_shift), 0},
    {"downsample_padding", DC_CFG_INT, offsetof(dc_unet_cond_config, downsample_padding), 1},
    {"mid_block_scale_factor", DC_CFG_FLOAT, offsetof(dc_unet_cond_config, mid_block_scale_factor), 1},
    {"dropout", DC_CFG_FLOAT, offsetof(dc_unet_cond_config, dropout), 0},
    {"norm_num_groups", DC_CFG_INT_OR_NULL, offsetof(dc_unet_cond_config, norm_num_groups), 32},
    {"norm_eps", DC_CFG_FLOAT, offsetof(dc_unet_cond_config, norm_eps), 1e-5},
    {"use_linear_projection", DC_CFG_BOOL, offsetof(dc_unet_cond_config, use_linear_projection), 0},
    {"upcast_attention", DC_CFG_BOOL, offsetof(dc_unet_cond_config, upcast_attention), 0},
    {"time_embedding_dim", DC_CFG_INT_OR_NULL, offsetof(dc_unet_cond_config, time_embedding_dim), 0},
};

/* Keys whose only supported value is null (or absent). Those that only the
 * blocks diffc does not build read (cross_attention_norm,
 * mid_block_only_cross_attention, resnet_skip_time_act, resnet_out_scale_factor:
 * the SimpleCrossAttn ones) are ignored, as those blocks are refused. */
static const char *const null_keys[] = {
    "num_attention_heads", "class_embed_type", "num_class_embeds", "encoder_hid_dim",
    "encoder_hid_dim_type", "time_embedding_act_fn", "timestep_post_act", "time_cond_proj_dim",
    "reverse_transformer_layers_per_block",
};
/* Keys whose only supported value is false (or absent, or null). */
static const char *const false_keys[] = {"dual_cross_attention", "class_embeddings_concat"};

static int refuse_value(const cJSON *root, const char *what, const char *key, const char *supported,
                        bool ok) {
    if (ok)
        return 0;
    char *text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(root, key));
    int rc = dc_fail("%s: %s %.64s is not supported (supported: %s)", what, key,
                     text ? text : "(a value)", supported);
    cJSON_free(text);
    return rc;
}

static bool null_or_absent(const cJSON *v) { return !v || cJSON_IsNull(v); }

/* only_cross_attention: false, or a list of false. */
static bool no_only_cross(const cJSON *v) {
    if (null_or_absent(v) || cJSON_IsFalse(v))
        return true;
    if (!cJSON_IsArray(v))
        return false;
    for (const cJSON *e = v->child; e; e = e->next)
        if (!cJSON_IsFalse(e))
            return false;
    return true;
}

/* The keys that would make another network than the one diffc builds. */
static int refuse_unsupported(const cJSON *root, const char *what) {
    const cJSON *add = cJSON_GetObjectItemCaseSensitive(root, "addition_embed_type");
    if (cJSON_IsString(add) && !strcmp(add->valuestring, "text_time"))
        return dc_fail("%s: addition_embed_type \"text_time\" (an SDXL UNet, with pooled text and "
                       "size conditioning) is not supported (supported: null)",
                       what);
    if (DC_CFG_CHOICE(root, what, "_class_name", "UNet2DConditionModel", "UNet2DConditionModel") < 0 ||
        DC_CFG_CHOICE(root, what, "addition_embed_type", NULL, NULL) < 0 ||
        DC_CFG_CHOICE(root, what, "act_fn", "silu", "silu", "swish") < 0 ||
        DC_CFG_CHOICE(root, what, "resnet_time_scale_shift", "default", "default") < 0 ||
        DC_CFG_CHOICE(root, what, "time_embedding_type", "positional", "positional") < 0 ||
        DC_CFG_CHOICE(root, what, "attention_type", "default", "default") < 0)
        return -1;
    for (size_t i = 0; i < sizeof null_keys / sizeof *null_keys; i++)
        if (refuse_value(root, what, null_keys[i], "null",
                         null_or_absent(cJSON_GetObjectItemCaseSensitive(root, null_keys[i]))))
            return -1;
    for (size_t i = 0; i < sizeof false_keys / sizeof *false_keys; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, false_keys[i]);
        if (refuse_value(root, what, false_keys[i], "false", null_or_absent(v) || cJSON_IsFalse(v)))
            return -1;
    }
    if (refuse_value(root, what, "only_cross_attention", "false",
                     no_only_cross(cJSON_GetObjectItemCaseSensitive(root, "only_cross_attention"))))
        return -1;
    static const char *const kernels[] = {"conv_in_kernel", "conv_out_kernel"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, kernels[i]);
        if (refuse_value(root, what, kernels[i], "3", !v || (cJSON_IsNumber(v) && v->valuedouble == 3)))
            return -1;
    }
    return 0;
}

/* down_block_types or up_block_types: whether each level cross-attends. */
static int read_block_types(bool *cross, const cJSON *root, const char *what, const char *key,
                            int levels, const char *cross_name, const char *plain_name,
                            const char *const *defaults) {
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
        const char *name = e ? e->valuestring : defaults[i];
        if (!strncmp(name, "UNetRes", 7)) /* get_down_block / get_up_block drop it */
            name += 7;
        if (strcmp(name, cross_name) && strcmp(name, plain_name))
            return dc_fail("%s: %s[%d] \"%.64s\" is not supported (supported: %s, %s)", what, key, i,
                           name, cross_name, plain_name);
        cross[i] = !strcmp(name, cross_name);
    }
    return 0;
}

/* The per-level keys: an integer for all levels or a list of one per level. */
static int read_levels(dc_unet_cond_config *c, const cJSON *root, const char *what) {
    const cJSON *tl = cJSON_GetObjectItemCaseSensitive(root, "transformer_layers_per_block");
    if (cJSON_IsArray(tl))
        for (const cJSON *e = tl->child; e; e = e->next)
            if (cJSON_IsArray(e))
                return dc_fail("%s: transformer_layers_per_block with a list per block (an "
                               "asymmetric UNet) is not supported (supported: an integer or one "
                               "per level)",
                               what);
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(root, "attention_head_dim");
    if (hd && cJSON_IsNull(hd))
        return dc_fail("%s: attention_head_dim null is not supported (UNet2DConditionModel takes "
                       "it as the number of heads)",
                       what);
    int n = c->levels;
    return dc_cfg_int_or_list(root, what, "layers_per_block", 2, n, c->layers_per_block) ||
           dc_cfg_int_or_list(root, what, "transformer_layers_per_block", 1, n,
                              c->transformer_layers) ||
           /* num_attention_heads = num_attention_heads or attention_head_dim */
           dc_cfg_int_or_list(root, what, "attention_head_dim", 8, n, c->heads) ||
           dc_cfg_int_or_list(root, what, "cross_attention_dim", 1280, n, c->cross_attention_dim)
               ? -1
               : 0;
}

static int check_limits(const dc_unet_cond_config *c, const char *what) {
    int rc = dc_cfg_limit(what, "in_channels", c->in_channels, DC_UNET_MAX_CHANNELS) ||
             dc_cfg_limit(what, "out_channels", c->out_channels, DC_UNET_MAX_CHANNELS) ||
             dc_cfg_limit(what, "sample_size", c->sample_size[0], DC_UNET_MAX_SAMPLE_SIZE) ||
             dc_cfg_limit(what, "sample_size", c->sample_size[1], DC_UNET_MAX_SAMPLE_SIZE) ||
             dc_cfg_limit(what, "time_embedding_dim", c->time_embedding_dim, DC_UNET_MAX_CHANNELS);
    for (int i = 0; !rc && i < c->levels; i++)
        rc = dc_cfg_limit(what, "block_out_channels", c->block_out_channels[i], DC_UNET_MAX_CHANNELS) ||
             dc_cfg_limit(what, "layers_per_block", c->layers_per_block[i], DC_UNET_MAX_LAYERS_PER_BLOCK) ||
             dc_cfg_limit(what, "transformer_layers_per_block", c->transformer_layers[i],
                          DC_UNET_COND_MAX_TRANSFORMER_LAYERS) ||
             dc_cfg_limit(what, "cross_attention_dim", c->cross_attention_dim[i],
                          DC_UNET_COND_MAX_CROSS_DIM);
    return rc ? -1 : 0;
}

/* Level i's values must be positive, its heads must split its channels. */
static int check_level(const dc_unet_cond_config *c, const char *what, int i) {
    int ch = c->block_out_channels[i];
    if (ch < 1 || ch % c->norm_num_groups)
        return dc_fail("%s: block_out_channels[%d] = %d is not a positive multiple of "
                       "norm_num_groups %d",
                       what, i, ch, c->norm_num_groups);
    if (c->layers_per_block[i] < 1 || c->transformer_layers[i] < 1 || c->cross_attention_dim[i] < 1)
        return dc_fail("%s: level %d: layers_per_block %d, transformer_layers_per_block %d and "
                       "cross_attention_dim %d must be positive",
                       what, i, c->layers_per_block[i], c->transformer_layers[i],
                       c->cross_attention_dim[i]);
    if (c->heads[i] < 1 || ch % c->heads[i])
        return dc_fail("%s: attention_head_dim[%d] = %d (the number of heads) does not divide the "
                       "%d channels of level %d",
                       what, i, c->heads[i], ch, i);
    return 0;
}

/* The rules that hold for any config, parsed or built in code. */
static int check_config(const dc_unet_cond_config *c, const char *what) {
    if (c->levels < 1 || c->levels > DC_UNET_MAX_LEVELS)
        return dc_fail("%s: %d levels (diffc builds 1 to %d)", what, c->levels, DC_UNET_MAX_LEVELS);
    if (check_limits(c, what))
        return -1;
    if (c->in_channels < 1 || c->out_channels < 1)
        return dc_fail("%s: in_channels %d and out_channels %d must be positive", what,
                       c->in_channels, c->out_channels);
    if (c->norm_num_groups < 1)
        return dc_fail("%s: norm_num_groups %d is not supported (a positive group count)", what,
                       c->norm_num_groups);
    if (c->sample_size[0] < 0 || c->sample_size[1] < 0 || c->time_embedding_dim < 0)
        return dc_fail("%s: sample_size [%d, %d] and time_embedding_dim %d must not be negative",
                       what, c->sample_size[0], c->sample_size[1], c->time_embedding_dim);
    for (int i = 0; i < c->levels; i++)
        if (check_level(c, what, i))
            return -1;
    dc_unet_common_config common = {c->downsample_padding, c->norm_eps, c->dropout,
                                     c->mid_block_scale_factor, c->block_out_channels[0],
                                     c->freq_shift};
    if (dc_unet_check_common(&common, what))
        return -1;
    return 0;
}

static int parse_object(void *cfg, const cJSON *root, const char *what) {
    dc_unet_cond_config *c = cfg;
    static const int def_channels[] = {320, 640, 1280, 1280};
    static const char *const def_down[] = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                           "CrossAttnDownBlock2D", "DownBlock2D"};
    static const char *const def_up[] = {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                         "CrossAttnUpBlock2D"};
    if (!cJSON_IsObject(root))
        return dc_fail("%s: a UNet config must be a JSON object, got %s", what, dc_json_type(root));
    if (refuse_unsupported(root, what) ||
        dc_cfg_read_keys(c, root, what, scalar_keys, (int)(sizeof scalar_keys / sizeof *scalar_keys)))
        return -1;
    int mid = DC_CFG_CHOICE(root, what, "mid_block_type", "UNetMidBlock2DCrossAttn",
                            "UNetMidBlock2DCrossAttn", NULL);
    if (mid < 0 || dc_cfg_sample_size(root, what, c->sample_size) ||
        dc_cfg_int_list(root, what, "block_out_channels", def_channels, 4, DC_UNET_MAX_LEVELS,
                        c->block_out_channels, &c->levels) ||
        read_block_types(c->down_cross, root, what, "down_block_types", c->levels,
                         "CrossAttnDownBlock2D", "DownBlock2D", def_down) ||
        read_block_types(c->up_cross, root, what, "up_block_types", c->levels,
                         "CrossAttnUpBlock2D", "UpBlock2D", def_up) ||
        read_levels(c, root, what))
        return -1;
    c->mid_block = mid == 0;
    return check_config(c, what);
}

int dc_unet_cond_config_parse(dc_unet_cond_config *c, const char *json, const char *what) {
    return dc_cfg_parse_text(c, sizeof *c, json, what, parse_object, &c->json);
}

int dc_unet_cond_config_load(dc_unet_cond_config *c, const char *path) {
    return dc_cfg_load(c, sizeof *c, path, parse_object, &c->json);
}

int dc_unet_cond_config_save(const dc_unet_cond_config *c, const char *path) {
    return dc_cfg_save_text(c->json, path);
}

void dc_unet_cond_config_free(dc_unet_cond_config *c) {
    if (!c)
        return;
    free(c->json);
    memset(c, 0, sizeof *c);
}

/* ==== parameters ==== */

static int64_t temb_dim(const dc_unet_cond_config *c) {
    return c->time_embedding_dim ? c->time_embedding_dim : 4 * (int64_t)c->block_out_channels[0];
}

/* The config's ResnetBlock2D from cin to cout channels, scaled by `scale`. */
static void resnet_init(dc_unet_resnet *r, dc_params *ps, const char *prefix,
                        const dc_unet_cond_config *c, int64_t cin, int64_t cout, float scale) {
    dc_unet_resnet_shape s = {.cin = cin, .cout = cout, .groups = c->norm_num_groups,
                              .groups_out = c->norm_num_groups, .eps = c->norm_eps,
                              .temb = temb_dim(c), .act = DC_UNET_SILU, .dropout = c->dropout,
                              .scale = scale};
    dc_unet_resnet_init(r, ps, prefix, &s);
}

/* BasicTransformerBlock over ch channels in `heads` heads, attending to a
 * text of kv channels. */
static int tf_block_init(dc_unet_tf_block *b, dc_params *ps, const char *prefix, int64_t ch,
                         int64_t kv, int heads) {
    static const dc_tf_attention_names names = {
        .q = "to_q", .k = "to_k", .v = "to_v", .out = "to_out.0", .no_qkv_bias = true};
    char q[256];
    dc_nn_layer_norm_init(&b->norm1, ps, dc_unet_name(q, sizeof q, prefix, "norm1"), ch, LN_EPS);
    if (dc_tf_attention_init(&b->attn1, ps, dc_unet_name(q, sizeof q, prefix, "attn1"), &names, ch, ch, heads))
        return -1;
    dc_nn_layer_norm_init(&b->norm2, ps, dc_unet_name(q, sizeof q, prefix, "norm2"), ch, LN_EPS);
    if (dc_tf_attention_init(&b->attn2, ps, dc_unet_name(q, sizeof q, prefix, "attn2"), &names, ch, kv, heads))
        return -1;
    dc_nn_layer_norm_init(&b->norm3, ps, dc_unet_name(q, sizeof q, prefix, "norm3"), ch, LN_EPS);
    dc_nn_linear_init(&b->ff_proj, ps, dc_unet_name(q, sizeof q, prefix, "ff.net.0.proj"), ch,
                      2 * FF_MULT * ch, true);
    dc_nn_linear_init(&b->ff_out, ps, dc_unet_name(q, sizeof q, prefix, "ff.net.2"), FF_MULT * ch, ch, true);
    return 0;
}

/* Transformer2DModel of level `lvl`'s heads, text width and layer count
 * over ch channels: norm, proj_in, transformer_blocks, proj_out. */
static int transformer_init(dc_unet_transformer *t, dc_params *ps, const char *prefix,
                            const dc_unet_cond_config *c, int lvl) {
    char q[192], b[32];
    int64_t ch = c->block_out_channels[lvl];
    t->n_blocks = c->transformer_layers[lvl];
    t->blocks = calloc((size_t)t->n_blocks, sizeof *t->blocks);
    if (!t->blocks)
        return dc_fail("unet: out of memory");
    dc_nn_group_norm_init(&t->norm, ps, dc_unet_name(q, sizeof q, prefix, "norm"), c->norm_num_groups, ch,
                          TF_NORM_EPS);
    if (c->use_linear_projection)
        dc_nn_linear_init(&t->proj_in, ps, dc_unet_name(q, sizeof q, prefix, "proj_in"), ch, ch, true);
    else
        dc_nn_conv2d_init(&t->proj_in_conv, ps, dc_unet_name(q, sizeof q, prefix, "proj_in"), ch, ch, 1, 1, 0,
                          true);
    for (int k = 0; k < t->n_blocks; k++) {
        snprintf(b, sizeof b, "transformer_blocks.%d", k);
        if (tf_block_init(&t->blocks[k], ps, dc_unet_name(q, sizeof q, prefix, b), ch,
                          c->cross_attention_dim[lvl], c->heads[lvl]))
            return -1;
    }
    if (c->use_linear_projection)
        dc_nn_linear_init(&t->proj_out, ps, dc_unet_name(q, sizeof q, prefix, "proj_out"), ch, ch, true);
    else
        dc_nn_conv2d_init(&t->proj_out_conv, ps, dc_unet_name(q, sizeof q, prefix, "proj_out"), ch, ch, 1, 1,
                          0, true);
    return 0;
}

static int block_alloc(dc_unet_cond_block *b, int n_layers, int n_attn) {
    b->n_layers = n_layers;
    b->n_attentions = n_attn;
    b->resnets = calloc((size_t)n_layers, sizeof *b->resnets);
    b->attentions = n_attn ? calloc((size_t)n_attn, sizeof *b->attentions) : NULL;
    if (!b->resnets || (n_attn && !b->attentions))
        return dc_fail("unet: out of memory");
    return 0;
}

/* The attentions of a block at level `lvl` (`path`: "down_blocks.0", ...). */
static int attentions_init(dc_unet_cond_block *b, dc_params *ps, const char *path,
                           const dc_unet_cond_config *c, int lvl, int n) {
    char q[128];
    for (int j = 0; b->attentions && j < n; j++) {
        snprintf(q, sizeof q, "%s.attentions.%d", path, j);
        if (transformer_init(&b->attentions[j], ps, q, c, lvl))
            return -1;
    }
    return 0;
}

/* CrossAttnDownBlock2D / DownBlock2D `i`: attentions, resnets, downsamplers. */
static int down_init(dc_unet_cond_block *b, dc_params *ps, const dc_unet_cond_config *c, int i) {
    char path[64], q[128];
    int n = c->layers_per_block[i], cout = c->block_out_channels[i];
    int cin = c->block_out_channels[i > 0 ? i - 1 : 0];
    snprintf(path, sizeof path, "down_blocks.%d", i);
    if (block_alloc(b, n, c->down_cross[i] ? n : 0) || attentions_init(b, ps, path, c, i, n))
        return -1;
    for (int j = 0; j < n; j++) {
        snprintf(q, sizeof q, "%s.resnets.%d", path, j);
        resnet_init(&b->resnets[j], ps, q, c, j ? cout : cin, cout, 1.0f);
    }
    if (i < c->levels - 1) {
        snprintf(q, sizeof q, "%s.downsamplers.0.conv", path);
        dc_nn_conv2d_init(&b->sampler, ps, q, cout, cout, 3, 2, c->downsample_padding, true);
        b->pad_bottom_right = c->downsample_padding == 0;
    }
    return 0;
}

/* CrossAttnUpBlock2D / UpBlock2D `i` (0 = deepest, level L - 1 - i): resnet j
 * takes the running features (the deeper level's channels for j = 0, this
 * level's after) and a skip (this level's, and last the level above's). */
static int up_init(dc_unet_cond_block *b, dc_params *ps, const dc_unet_cond_config *c, int i) {
    char path[64], q[128];
    const int *ch = c->block_out_channels;
    int L = c->levels, lvl = L - 1 - i, n = c->layers_per_block[lvl] + 1, cout = ch[lvl];
    int prev = ch[i > 0 ? lvl + 1 : lvl], skip_last = ch[lvl > 0 ? lvl - 1 : 0];
    snprintf(path, sizeof path, "up_blocks.%d", i);
    if (block_alloc(b, n, c->up_cross[i] ? n : 0) || attentions_init(b, ps, path, c, lvl, n))
        return -1;
    for (int j = 0; j < n; j++) {
        int in = j ? cout : prev, res = j == n - 1 ? skip_last : cout;
        snprintf(q, sizeof q, "%s.resnets.%d", path, j);
        resnet_init(&b->resnets[j], ps, q, c, in + res, cout, 1.0f);
    }
    if (i < L - 1) {
        snprintf(q, sizeof q, "%s.upsamplers.0.conv", path);
        dc_nn_conv2d_init(&b->sampler, ps, q, cout, cout, 3, 1, 1, true);
    }
    return 0;
}

/* UNetMidBlock2DCrossAttn: resnet, attention, resnet, scaled by mid_block_scale_factor. */
static int mid_init(dc_unet_cond_block *b, dc_params *ps, const dc_unet_cond_config *c) {
    int L = c->levels, ch = c->block_out_channels[L - 1];
    if (block_alloc(b, 2, 1) || attentions_init(b, ps, "mid_block", c, L - 1, 1))
        return -1;
    resnet_init(&b->resnets[0], ps, "mid_block.resnets.0", c, ch, ch, c->mid_block_scale_factor);
    resnet_init(&b->resnets[1], ps, "mid_block.resnets.1", c, ch, ch, c->mid_block_scale_factor);
    return 0;
}

static void block_free(dc_unet_cond_block *b) {
    for (int j = 0; b->attentions && j < b->n_attentions; j++)
        free(b->attentions[j].blocks);
    free(b->resnets);
    free(b->attentions);
    memset(b, 0, sizeof *b);
}

void dc_unet_cond_free(dc_unet_cond *m) {
    if (!m)
        return;
    for (int i = 0; i < DC_UNET_MAX_LEVELS; i++) {
        block_free(&m->down[i]);
        block_free(&m->up[i]);
    }
    block_free(&m->mid);
    memset(m, 0, sizeof *m);
}

/* Declared in the order of UNet2DConditionModel's state_dict: conv_in,
 * time_embedding, down_blocks, up_blocks, mid_block (assigned after both
 * lists), conv_norm_out, conv_out. */
int dc_unet_cond_init(dc_unet_cond *m, const dc_unet_cond_config *c, dc_params *ps) {
    memset(m, 0, sizeof *m);
    if (check_config(c, WHAT))
        return -1;
    m->cfg = *c;
    m->cfg.json = NULL;
    int64_t c0 = c->block_out_channels[0], temb = temb_dim(c);
    dc_nn_conv2d_init(&m->conv_in, ps, "conv_in", c->in_channels, c0, 3, 1, 1, true);
    dc_nn_linear_init(&m->time_linear_1, ps, "time_embedding.linear_1", c0, temb, true);
    dc_nn_linear_init(&m->time_linear_2, ps, "time_embedding.linear_2", temb, temb, true);
    int rc = 0;
    for (int i = 0; !rc && i < c->levels; i++)
        rc = down_init(&m->down[i], ps, c, i);
    for (int i = 0; !rc && i < c->levels; i++)
        rc = up_init(&m->up[i], ps, c, i);
    if (!rc && c->mid_block)
        rc = mid_init(&m->mid, ps, c);
    dc_nn_group_norm_init(&m->conv_norm_out, ps, "conv_norm_out", c->norm_num_groups, c0, c->norm_eps);
    dc_nn_conv2d_init(&m->conv_out, ps, "conv_out", c0, c->out_channels, 3, 1, 1, true);
    if (rc || ps->failed) {
        dc_unet_cond_free(m);
        return -1;
    }
    return 0;
}

int dc_unet_cond_load(dc_unet_cond *m, dc_params *ps, const char *dir, const char *variant,
                      int device, char **guessed) {
    memset(m, 0, sizeof *m);
    char *cfg_path = NULL, *weights = NULL;
    dc_unet_cond_config c;
    memset(&c, 0, sizeof c);
    int rc = dc_unet_find(dir, "unet", variant, &cfg_path, &weights, guessed) ||
             dc_unet_cond_config_load(&c, cfg_path) || dc_unet_cond_init(m, &c, ps) ||
             dc_params_alloc_load(ps, device, weights, NULL);
    if (rc)
        dc_unet_cond_free(m);
    dc_unet_cond_config_free(&c);
    free(cfg_path);
    free(weights);
    return rc ? -1 : 0;
}

/* ==== forward ==== */

/* The text width every cross-attention takes, or 0 when none (then any goes). */
static int text_width(const dc_unet_cond_config *c, const char **mismatch) {
    int w = 0;
    *mismatch = NULL;
    for (int i = 0; i < c->levels; i++) {
        bool used = c->down_cross[i] || c->up_cross[c->levels - 1 - i] ||
                    (c->mid_block && i == c->levels - 1);
        if (used && w && c->cross_attention_dim[i] != w)
            *mismatch = "the levels' cross_attention_dim differ, so no one text fits them all";
        if (used && !w)
            w = c->cross_attention_dim[i];
    }
    return w;
}

/* The reason text cannot be attended to by m for a batch of n, or NULL. */
static const char *text_problem(const dc_unet_cond *m, const dc_tensor *text, int64_t n, char *buf,
                                size_t size) {
    const char *mismatch;
    int w = text_width(&m->cfg, &mismatch);
    char s[64], batch[24] = "N";
    if (n)
        snprintf(batch, sizeof batch, "%lld", (long long)n);
    if (mismatch)
        snprintf(buf, size, "%s", mismatch);
    else if (text->dtype != DC_F32 || text->ndim != 3 || (n && text->shape[0] != n) ||
             text->shape[1] < 1 || (w && text->shape[2] != w))
        snprintf(buf, size, "encoder_hidden_states must be f32 [%s, L, %d], got %s %s", batch, w,
                 dc_dtype_name(text->dtype), dc_shape_str(s, sizeof s, text->ndim, text->shape));
    else
        return NULL;
    return buf;
}

/* What the cross-attentions attend to: the text states, or their keys and
 * values made once (kv, taken in forward order from `next`). */
typedef struct {
    dc_tensor *text;
    const dc_unet_cond_text *kv;
    int next;
} text_src;

static dc_tensor *cross_attention(dc_ctx *ctx, const dc_unet_tf_block *b, dc_tensor *h,
                                  text_src *src) {
    if (!src->kv)
        return dc_tf_attention_forward(ctx, &b->attn2, h, src->text, false);
    int i = src->next++;
    return dc_tf_attention_over(ctx, &b->attn2, h, src->kv->k[i], src->kv->v[i], false);
}

/* a * gelu(g) of ff.net.0.proj's [a, g], then ff.net.2. */
static dc_tensor *feed_forward(dc_ctx *ctx, const dc_unet_tf_block *b, dc_tensor *x) {
    dc_tensor *p = dc_nn_linear_forward(ctx, &b->ff_proj, x);
    if (!p)
        return NULL;
    int64_t inner = p->shape[p->ndim - 1] / 2;
    dc_tensor *h = dc_mul(ctx, dc_slice(ctx, p, 0, inner), dc_gelu(ctx, dc_slice(ctx, p, inner, inner)));
    return dc_nn_linear_forward(ctx, &b->ff_out, h);
}

/* x [N, L, C] -> [N, L, C]. */
static dc_tensor *tf_block_body(dc_ctx *ctx, const dc_unet_tf_block *b, dc_tensor *x,
                                text_src *text) {
    dc_tensor *h = dc_nn_layer_norm_forward(ctx, &b->norm1, x);
    x = dc_add(ctx, dc_tf_attention_forward(ctx, &b->attn1, h, NULL, false), x);
    h = dc_nn_layer_norm_forward(ctx, &b->norm2, x);
    x = dc_add(ctx, cross_attention(ctx, b, h, text), x);
    h = dc_nn_layer_norm_forward(ctx, &b->norm3, x);
    return dc_add(ctx, feed_forward(ctx, b, h), x);
}

static dc_tensor *tf_block_forward(dc_ctx *ctx, const dc_unet_tf_block *b, dc_tensor *x,
                                   text_src *text) {
    size_t mark = dc_mark(ctx);
    return dc_keep(ctx, mark, tf_block_body(ctx, b, x, text));
}

/* x [N, H, W, C]: an NHWC map is already the token sequence [N, H*W, C], and
 * proj_in / proj_out are the same product as a 1x1 conv or a linear. */
static dc_tensor *transformer_body(dc_ctx *ctx, const dc_unet_transformer *t, dc_tensor *x,
                                   text_src *text) {
    if (!x)
        return NULL;
    int64_t n = x->shape[0], len = x->shape[1] * x->shape[2], ch = x->shape[3];
    dc_tensor *h = dc_nn_group_norm_forward(ctx, &t->norm, x);
    h = t->proj_in.weight ? dc_nn_linear_forward(ctx, &t->proj_in, h)
                          : dc_nn_conv2d_forward(ctx, &t->proj_in_conv, h);
    h = dc_reshape(ctx, h, DC_SHAPE(n, len, ch));
    for (int k = 0; k < t->n_blocks; k++)
        h = tf_block_forward(ctx, &t->blocks[k], h, text);
    h = dc_reshape(ctx, h, x->ndim, x->shape);
    h = t->proj_out.weight ? dc_nn_linear_forward(ctx, &t->proj_out, h)
                           : dc_nn_conv2d_forward(ctx, &t->proj_out_conv, h);
    return dc_add(ctx, h, x);
}

static dc_tensor *transformer_forward(dc_ctx *ctx, const dc_unet_transformer *t, dc_tensor *x,
                                      text_src *text) {
    size_t mark = dc_mark(ctx);
    return dc_keep(ctx, mark, transformer_body(ctx, t, x, text));
}

static dc_tensor *transformer_fn(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    text_src text = {.text = in[1]};
    return transformer_forward(ctx, *(const dc_unet_transformer *const *)args, in[0], &text);
}

/* A transformer, one checkpoint (dc_checkpoint) under gradient
 * checkpointing: the text states are an input of it, the keys and values
 * made once (inference) never are. */
static dc_tensor *transformer_block(dc_ctx *ctx, const dc_unet_cond *m, const dc_unet_transformer *t,
                                    dc_tensor *x, text_src *text) {
    if (!m->gradient_checkpointing || text->kv)
        return transformer_forward(ctx, t, x, text);
    return dc_checkpoint(ctx, transformer_fn, &t, sizeof t, 2, (dc_tensor *[]){x, text->text});
}

/* Downsample2D (conv, stride 2, after padding bottom and right with
 * downsample_padding 0) or Upsample2D (nearest 2x, conv). */
static dc_tensor *resample(dc_ctx *ctx, const dc_unet_cond_block *b, dc_tensor *h, bool up) {
    if (up)
        return dc_nn_conv2d_forward(ctx, &b->sampler, dc_upsample2x(ctx, h));
    return dc_nn_conv2d_forward(ctx, &b->sampler, b->pad_bottom_right ? dc_unet_pad_bottom_right(ctx, h) : h);
}

/* How many skip tensors the down path leaves for the up path. */
static int skip_count(const dc_unet_cond *m) {
    int n = 1; /* conv_in's output */
    for (int i = 0; i < m->cfg.levels; i++)
        n += m->down[i].n_layers + (m->down[i].sampler.weight != NULL);
    return n;
}

/* The down path from conv_in's output h; pushes the skips. */
static dc_tensor *down_path(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *h, dc_tensor *temb,
                            text_src *text, dc_tensor **skips, int *top) {
    skips[(*top)++] = h;
    for (int i = 0; i < m->cfg.levels; i++) {
        const dc_unet_cond_block *b = &m->down[i];
        for (int j = 0; j < b->n_layers; j++) {
            h = dc_unet_resnet_block(ctx, &b->resnets[j], h, temb, m->gradient_checkpointing);
            if (b->attentions)
                h = transformer_block(ctx, m, &b->attentions[j], h, text);
            skips[(*top)++] = h;
        }
        if (b->sampler.weight) {
            h = resample(ctx, b, h, false);
            skips[(*top)++] = h;
        }
    }
    return h;
}

/* The up path; pops the skips. */
static dc_tensor *up_path(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *h, dc_tensor *temb,
                          text_src *text, dc_tensor **skips, int *top) {
    for (int i = 0; i < m->cfg.levels; i++) {
        const dc_unet_cond_block *b = &m->up[i];
        for (int j = 0; j < b->n_layers; j++) {
            h = dc_unet_resnet_block(ctx, &b->resnets[j], dc_concat(ctx, h, skips[--*top]), temb,
                                     m->gradient_checkpointing);
            if (b->attentions)
                h = transformer_block(ctx, m, &b->attentions[j], h, text);
        }
        if (b->sampler.weight)
            h = resample(ctx, b, h, true);
    }
    return h;
}

/* The whole network on inputs already checked. */
static dc_tensor *forward(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *x, dc_tensor *t,
                          text_src *text) {
    const dc_unet_cond_config *c = &m->cfg;
    dc_tensor **skips = dc_arena_alloc(&ctx->meta, (size_t)skip_count(m) * sizeof *skips);
    if (!skips)
        return dc_unet_fail(ctx, "%s", dc_error());
    dc_tensor *emb = dc_unet_time_mlp(
        ctx, &m->time_linear_1, &m->time_linear_2,
        dc_unet_timesteps(ctx, t, c->block_out_channels[0], c->flip_sin_to_cos, c->freq_shift));
    dc_tensor *temb = dc_silu(ctx, emb); /* what every resnet's time_emb_proj takes */
    dc_tensor *h = c->center_input_sample ? dc_affine(ctx, x, 2.0f, -1.0f) : x;
    h = dc_nn_conv2d_forward(ctx, &m->conv_in, h);
    int top = 0;
    h = down_path(ctx, m, h, temb, text, skips, &top);
    if (c->mid_block) {
        h = dc_unet_resnet_block(ctx, &m->mid.resnets[0], h, temb, m->gradient_checkpointing);
        h = transformer_block(ctx, m, &m->mid.attentions[0], h, text);
        h = dc_unet_resnet_block(ctx, &m->mid.resnets[1], h, temb, m->gradient_checkpointing);
    }
    h = up_path(ctx, m, h, temb, text, skips, &top);
    h = dc_nn_group_norm_silu_forward(ctx, &m->conv_norm_out, h);
    return dc_nn_conv2d_forward(ctx, &m->conv_out, h);
}

dc_tensor *dc_unet_cond_forward(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *x, dc_tensor *t,
                                dc_tensor *text) {
    if (ctx->failed || !x || !t || !text) {
        ctx->failed = true; /* a NULL input: whatever made it has said why */
        return NULL;
    }
    char why[256];
    if (dc_unet_input_problem(x, t, m->cfg.in_channels, m->cfg.levels, why, sizeof why) || text_problem(m, text, x->shape[0], why, sizeof why))
        return dc_unet_fail(ctx, "%s", why);
    text_src src = {.text = text};
    return forward(ctx, m, x, t, &src);
}

int dc_unet_cond_transformers(const dc_unet_cond *m, dc_unet_transformer **out) {
    const dc_unet_cond_block *blocks[2 * DC_UNET_MAX_LEVELS + 1];
    int nb = 0, n = 0;
    for (int i = 0; i < m->cfg.levels; i++)
        blocks[nb++] = &m->down[i];
    blocks[nb++] = &m->mid;
    for (int i = 0; i < m->cfg.levels; i++)
        blocks[nb++] = &m->up[i];
    for (int b = 0; b < nb; b++)
        for (int j = 0; j < blocks[b]->n_attentions; j++, n++)
            if (out)
                out[n] = &blocks[b]->attentions[j];
    return n;
}

/* How many cross-attentions the transformers list[0, n) have. */
static int cross_count(dc_unet_transformer *const *list, int n) {
    int count = 0;
    for (int i = 0; i < n; i++)
        count += list[i]->n_blocks;
    return count;
}

int dc_unet_cond_text_init(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *text,
                           dc_unet_cond_text *kv) {
    memset(kv, 0, sizeof *kv);
    if (ctx->failed || !text) {
        ctx->failed = true;
        return -1;
    }
    char why[256];
    if (text_problem(m, text, 0, why, sizeof why)) {
        dc_unet_fail(ctx, "%s", why);
        return -1;
    }
    int nt = dc_unet_cond_transformers(m, NULL);
    dc_unet_transformer **list = dc_arena_alloc(&ctx->meta, (size_t)(nt + 1) * sizeof *list);
    if (list)
        dc_unet_cond_transformers(m, list);
    int n = list ? cross_count(list, nt) : 0;
    kv->k = list ? dc_arena_alloc(&ctx->meta, (size_t)(n + 1) * sizeof *kv->k) : NULL;
    kv->v = kv->k ? dc_arena_alloc(&ctx->meta, (size_t)(n + 1) * sizeof *kv->v) : NULL;
    if (!kv->v) {
        dc_unet_fail(ctx, "%s", dc_error());
        return -1;
    }
    kv->n = n;
    kv->batch = text->shape[0];
    int at = 0;
    for (int i = 0; i < nt; i++)
        for (int b = 0; b < list[i]->n_blocks; b++, at++)
            if (dc_tf_attention_kv(ctx, &list[i]->blocks[b].attn2, text, &kv->k[at], &kv->v[at]))
                return -1;
    return 0;
}

dc_tensor *dc_unet_cond_forward_text(dc_ctx *ctx, const dc_unet_cond *m, dc_tensor *x,
                                     dc_tensor *t, const dc_unet_cond_text *kv) {
    if (ctx->failed || !x || !t || !kv) {
        ctx->failed = true;
        return NULL;
    }
    char why[256];
    if (dc_unet_input_problem(x, t, m->cfg.in_channels, m->cfg.levels, why, sizeof why))
        return dc_unet_fail(ctx, "%s", why);
    int nt = dc_unet_cond_transformers(m, NULL);
    dc_unet_transformer **list = dc_arena_alloc(&ctx->meta, (size_t)(nt + 1) * sizeof *list);
    if (!list)
        return dc_unet_fail(ctx, "%s", dc_error());
    dc_unet_cond_transformers(m, list);
    int n = cross_count(list, nt);
    if (kv->n != n || kv->batch != x->shape[0])
        return dc_unet_fail(ctx, "the text's keys and values are for %d cross-attentions and a "
                                 "batch of %lld; the model has %d, the sample a batch of %lld",
                            kv->n, (long long)kv->batch, n, (long long)x->shape[0]);
    text_src src = {.kv = kv};
    return forward(ctx, m, x, t, &src);
}
