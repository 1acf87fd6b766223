/*
 * transformers' BlipForConditionalGeneration (models/blip/modeling_blip.py and
 * modeling_blip_text.py of transformers 5.25): the config parser, the
 * parameter declarations under state_dict names, the vision and text forward
 * passes as ops, and the incremental decoder. See blip.h.
 */
#include "blip.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/config_json.h"
#include "models/weights.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== config ==== */

typedef struct {
    const char *key;
    size_t offset; /* of an int in the config struct */
    int def, min, max;
} int_key;

static const int_key vision_ints[] = {
    {"hidden_size", offsetof(dc_blip_vision_config, hidden_size), 768, 1, DC_BLIP_MAX_HIDDEN},
    {"intermediate_size", offsetof(dc_blip_vision_config, intermediate_size), 3072, 1,
     DC_BLIP_MAX_INTERMEDIATE},
    {"num_hidden_layers", offsetof(dc_blip_vision_config, num_hidden_layers), 12, 0,
     DC_BLIP_MAX_LAYERS},
    {"num_attention_heads", offsetof(dc_blip_vision_config, num_attention_heads), 12, 1,
     DC_BLIP_MAX_HIDDEN},
    {"image_size", offsetof(dc_blip_vision_config, image_size), 384, 1, DC_BLIP_MAX_IMAGE},
    {"patch_size", offsetof(dc_blip_vision_config, patch_size), 16, 1, DC_BLIP_MAX_IMAGE},
};

static const int_key text_ints[] = {
    {"vocab_size", offsetof(dc_blip_text_config, vocab_size), 30524, 1, DC_BLIP_MAX_VOCAB},
    {"hidden_size", offsetof(dc_blip_text_config, hidden_size), 768, 1, DC_BLIP_MAX_HIDDEN},
    {"intermediate_size", offsetof(dc_blip_text_config, intermediate_size), 3072, 1,
     DC_BLIP_MAX_INTERMEDIATE},
    {"num_hidden_layers", offsetof(dc_blip_text_config, num_hidden_layers), 12, 0,
     DC_BLIP_MAX_LAYERS},
    {"num_attention_heads", offsetof(dc_blip_text_config, num_attention_heads), 8, 1,
     DC_BLIP_MAX_HIDDEN},
    {"max_position_embeddings", offsetof(dc_blip_text_config, max_position_embeddings), 512, 1,
     DC_BLIP_MAX_POSITIONS},
};

/* Token ids: null reads as -1. */
static const int_key text_ids[] = {
    {"bos_token_id", offsetof(dc_blip_text_config, bos_token_id), 30522, 0, DC_BLIP_MAX_VOCAB},
    {"pad_token_id", offsetof(dc_blip_text_config, pad_token_id), 0, 0, DC_BLIP_MAX_VOCAB},
    {"sep_token_id", offsetof(dc_blip_text_config, sep_token_id), 102, 0, INT32_MAX},
    {"eos_token_id", offsetof(dc_blip_text_config, eos_token_id), 2, 0, INT32_MAX},
};

static int read_int(const cJSON *obj, const int_key *k, const char *where, void *base,
                    bool nullable) {
    int *field = (int *)((char *)base + k->offset);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, k->key);
    *field = nullable && v && cJSON_IsNull(v) ? -1 : k->def;
    if (nullable && cJSON_IsArray(v)) { /* eos_token_id may list several; generation uses sep */
        *field = -1;
        return 0;
    }
    double d = *field;
    if (dc_json_get_number(obj, k->key, where, &d))
        return -1;
    if (d != floor(d) || (d != -1 && (d < k->min || d > k->max)) || (d == -1 && !nullable))
        return dc_fail("%s: %s must be an integer in [%d, %d], got %.17g", where, k->key, k->min,
                       k->max, d);
    *field = (int)d;
    return 0;
}

static int read_ints(const cJSON *obj, const int_key *keys, int n, const char *where, void *base,
                     bool nullable) {
    for (int i = 0; i < n; i++)
        if (read_int(obj, &keys[i], where, base, nullable))
            return -1;
    return 0;
}

static int read_eps(const cJSON *obj, const char *where, float def, float *out) {
    double d = def;
    if (dc_json_get_number(obj, "layer_norm_eps", where, &d))
        return -1;
    if (!(d > 0 && d < 1))
        return dc_fail("%s: layer_norm_eps must be in (0, 1), got %g", where, d);
    *out = (float)d;
    return 0;
}

/* hidden_act: the exact (erf) GELU is what the engine has. */
static int check_act(const cJSON *obj, const char *where) {
    const char *act = "gelu";
    if (dc_json_get_string(obj, "hidden_act", where, &act))
        return -1;
    if (strcmp(act, "gelu"))
        return dc_fail("%s: hidden_act \"%.64s\" is not supported (supported: \"gelu\")", where,
                       act);
    return 0;
}

static int heads_divide(const char *where, int hidden, int heads) {
    if (hidden % heads)
        return dc_fail("%s: hidden_size %d does not split into num_attention_heads %d", where,
                       hidden, heads);
    return 0;
}

/* A sub-config: an object, or absent / null for all defaults. */
static int sub_config(const cJSON *root, const char *key, const char *what, const cJSON **out,
                      char *where, size_t n) {
    snprintf(where, n, "%s: %s", what, key);
    *out = cJSON_GetObjectItemCaseSensitive(root, key);
    if (*out && !cJSON_IsObject(*out) && !cJSON_IsNull(*out))
        return dc_fail("%s must be an object, got %s", where, dc_json_type(*out));
    return 0;
}

static int parse_vision(dc_blip_vision_config *v, const cJSON *obj, const char *where) {
    if (read_ints(obj, vision_ints, sizeof vision_ints / sizeof *vision_ints, where, v, false) ||
        read_eps(obj, where, 1e-5f, &v->layer_norm_eps) || check_act(obj, where) ||
        heads_divide(where, v->hidden_size, v->num_attention_heads))
        return -1;
    int grid = v->image_size / v->patch_size;
    if (grid < 1)
        return dc_fail("%s: patch_size %d is larger than image_size %d", where, v->patch_size,
                       v->image_size);
    if ((int64_t)grid * grid > DC_BLIP_MAX_PATCHES)
        return dc_fail("%s: %d x %d patches (diffc builds at most %d)", where, grid, grid,
                       DC_BLIP_MAX_PATCHES);
    return 0;
}

static int parse_text(dc_blip_text_config *t, const cJSON *obj, const char *where) {
    bool is_decoder = true;
    if (read_ints(obj, text_ints, sizeof text_ints / sizeof *text_ints, where, t, false) ||
        read_ints(obj, text_ids, sizeof text_ids / sizeof *text_ids, where, t, true) ||
        read_eps(obj, where, 1e-12f, &t->layer_norm_eps) || check_act(obj, where) ||
        heads_divide(where, t->hidden_size, t->num_attention_heads) ||
        dc_json_get_bool(obj, "is_decoder", where, &is_decoder))
        return -1;
    if (!is_decoder)
        return dc_fail("%s: is_decoder false is not supported (the captioner's decoder is causal "
                       "and attends to the image)",
                       where);
    if (t->bos_token_id >= t->vocab_size || t->pad_token_id >= t->vocab_size)
        return dc_fail("%s: bos_token_id %d and pad_token_id %d must be below vocab_size %d", where,
                       t->bos_token_id, t->pad_token_id, t->vocab_size);
    return 0;
}

static int parse_root(void *cfg, const cJSON *root, const char *what) {
    dc_blip_config *c = cfg;
    if (!cJSON_IsObject(root))
        return dc_fail("%s: a BLIP config must be a JSON object, got %s", what, dc_json_type(root));
    if (dc_cfg_check_class(root, what, "blip", "BLIP (BlipForConditionalGeneration)",
                           "BlipForConditionalGeneration"))
        return -1;
    char vw[256], tw[256];
    const cJSON *vision, *text;
    double smoothing = 0;
    c->tie_word_embeddings = true;
    if (sub_config(root, "vision_config", what, &vision, vw, sizeof vw) ||
        sub_config(root, "text_config", what, &text, tw, sizeof tw) ||
        parse_vision(&c->vision, vision, vw) || parse_text(&c->text, text, tw) ||
        dc_json_get_bool(root, "tie_word_embeddings", what, &c->tie_word_embeddings) ||
        dc_json_get_number(root, "label_smoothing", what, &smoothing))
        return -1;
    if (!(smoothing >= 0 && smoothing <= 1))
        return dc_fail("%s: label_smoothing must be in [0, 1], got %g", what, smoothing);
    c->label_smoothing = (float)smoothing;
    c->text.encoder_hidden_size = c->vision.hidden_size; /* as BlipConfig.__post_init__ */
    return 0;
}

int dc_blip_config_parse(dc_blip_config *c, const char *json, const char *what) {
    return dc_cfg_parse_text(c, sizeof *c, json, what, parse_root, NULL);
}

/* ==== declarations ==== */

typedef struct {
    dc_tf_attention self, cross;
    dc_nn_layer_norm self_ln, cross_ln, out_ln;
    dc_nn_linear intermediate, output;
} text_layer;

struct dc_blip_net {
    /* vision */
    dc_tensor *class_embedding;    /* [1, 1, Dv] */
    dc_nn_conv2d patch;            /* [Dv, P, P, 3] */
    dc_tensor *position_embedding; /* [1, 1 + G^2, Dv] */
    dc_tf_encoder_layer *vl;       /* [vision layers] */
    dc_nn_layer_norm post_ln;
    /* text */
    dc_nn_embedding words;     /* [V, D] */
    dc_nn_embedding positions; /* [max_position_embeddings, D] */
    dc_nn_layer_norm emb_ln;
    text_layer *tl; /* [text layers] */
    dc_nn_linear head_dense;
    dc_nn_layer_norm head_ln;
    dc_tensor *head_bias;  /* [V] cls.predictions.bias */
    dc_nn_linear decoder;  /* untied only: [V, D] and [V] */
    dc_tensor *out_weight; /* the LM head's weight and bias: the tied or the decoder's own */
    dc_tensor *out_bias;
};

static const dc_tf_attention_names vision_attn = {.qkv = "qkv", .out = "projection"};
static const dc_tf_attention_names bert_attn = {
    .q = "self.query", .k = "self.key", .v = "self.value", .out = "output.dense"};

static int declare_text_layer(text_layer *l, dc_params *ps, const dc_blip_text_config *t, int i) {
    char p[96], n[128];
    snprintf(p, sizeof p, "text_decoder.bert.encoder.layer.%d", i);
#define NAME(s) (snprintf(n, sizeof n, "%s.%s", p, s), n)
    int64_t d = t->hidden_size;
    float eps = t->layer_norm_eps;
    return dc_tf_attention_init(&l->self, ps, NAME("attention"), &bert_attn, d, d,
                                t->num_attention_heads) ||
                   dc_nn_layer_norm_init(&l->self_ln, ps, NAME("attention.output.LayerNorm"), d,
                                         eps) ||
                   dc_tf_attention_init(&l->cross, ps, NAME("crossattention"), &bert_attn, d,
                                        t->encoder_hidden_size, t->num_attention_heads) ||
                   dc_nn_layer_norm_init(&l->cross_ln, ps, NAME("crossattention.output.LayerNorm"),
                                         d, eps) ||
                   dc_nn_linear_init(&l->intermediate, ps, NAME("intermediate.dense"), d,
                                     t->intermediate_size, true) ||
                   dc_nn_linear_init(&l->output, ps, NAME("output.dense"), t->intermediate_size, d,
                                     true) ||
                   dc_nn_layer_norm_init(&l->out_ln, ps, NAME("output.LayerNorm"), d, eps)
               ? -1
               : 0;
#undef NAME
}

static int declare_vision(dc_blip_net *net, dc_params *ps, const dc_blip_vision_config *v) {
    int64_t d = v->hidden_size, grid = v->image_size / v->patch_size;
    const char *e = "vision_model.embeddings";
    net->class_embedding = dc_params_add(ps, e, "class_embedding", DC_SHAPE(1, 1, d),
                                         DC_LAYOUT_PLAIN, DC_INIT_NORMAL, 1.0f);
    if (dc_nn_conv2d_init(&net->patch, ps, "vision_model.embeddings.patch_embedding", 3, d,
                          v->patch_size, v->patch_size, 0, true))
        return -1;
    net->position_embedding =
        dc_params_add(ps, e, "position_embedding", DC_SHAPE(1, 1 + grid * grid, d), DC_LAYOUT_PLAIN,
                      DC_INIT_NORMAL, 1.0f);
    for (int i = 0; i < v->num_hidden_layers; i++) {
        char p[96];
        snprintf(p, sizeof p, "vision_model.encoder.layers.%d", i);
        if (dc_tf_encoder_layer_init(&net->vl[i], ps, p, &vision_attn, d, v->intermediate_size,
                                     v->num_attention_heads, v->layer_norm_eps, dc_gelu))
            return -1;
    }
    return dc_nn_layer_norm_init(&net->post_ln, ps, "vision_model.post_layernorm", d,
                                 v->layer_norm_eps);
}

static int declare_text(dc_blip_net *net, dc_params *ps, const dc_blip_config *c) {
    const dc_blip_text_config *t = &c->text;
    int64_t d = t->hidden_size;
    if (dc_nn_embedding_init(&net->words, ps, "text_decoder.bert.embeddings.word_embeddings",
                             t->vocab_size, d) ||
        dc_nn_embedding_init(&net->positions, ps,
                             "text_decoder.bert.embeddings.position_embeddings",
                             t->max_position_embeddings, d) ||
        dc_nn_layer_norm_init(&net->emb_ln, ps, "text_decoder.bert.embeddings.LayerNorm", d,
                              t->layer_norm_eps))
        return -1;
    for (int i = 0; i < t->num_hidden_layers; i++)
        if (declare_text_layer(&net->tl[i], ps, t, i))
            return -1;
    const char *h = "text_decoder.cls.predictions";
    if (dc_nn_linear_init(&net->head_dense, ps, "text_decoder.cls.predictions.transform.dense", d,
                          d, true) ||
        dc_nn_layer_norm_init(&net->head_ln, ps, "text_decoder.cls.predictions.transform.LayerNorm",
                              d, t->layer_norm_eps) ||
        !(net->head_bias = dc_params_add(ps, h, "bias", DC_SHAPE(t->vocab_size), DC_LAYOUT_PLAIN,
                                         DC_INIT_ZEROS, 0.0f)))
        return -1;
    if (c->tie_word_embeddings) {
        net->out_weight = net->words.weight, net->out_bias = net->head_bias;
        return 0;
    }
    if (dc_nn_linear_init(&net->decoder, ps, "text_decoder.cls.predictions.decoder", d,
                          t->vocab_size, true))
        return -1;
    net->out_weight = net->decoder.weight, net->out_bias = net->decoder.bias;
    return 0;
}

void dc_blip_free(dc_blip *m) {
    if (!m)
        return;
    dc_params_free(&m->params);
    if (m->net) {
        free(m->net->vl);
        free(m->net->tl);
        free(m->net);
    }
    free(m);
}

int dc_blip_init(dc_blip **out, const dc_blip_config *cfg) {
    *out = NULL;
    dc_blip *m = calloc(1, sizeof *m);
    dc_blip_net *net = m ? calloc(1, sizeof *net) : NULL;
    if (m)
        m->net = net;
    if (net) {
        net->vl = calloc((size_t)cfg->vision.num_hidden_layers + 1, sizeof *net->vl);
        net->tl = calloc((size_t)cfg->text.num_hidden_layers + 1, sizeof *net->tl);
    }
    if (!net || !net->vl || !net->tl) {
        dc_blip_free(m);
        return dc_fail("BLIP: out of memory");
    }
    m->cfg = *cfg;
    m->device = DC_CPU;
    dc_params_init(&m->params);
    if (declare_vision(net, &m->params, &cfg->vision) || declare_text(net, &m->params, cfg) ||
        m->params.failed) {
        dc_blip_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

/* ==== files ==== */

static bool ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), t = strlen(tail);
    return n >= t && !strcmp(s + n - t, tail);
}

/* Buffers some files carry, never parameters. */
static const char *rename_common(const char *name) {
    return ends_with(name, ".position_ids") ? NULL : name;
}

/* Tied: the decoder's weight is the word table and its bias cls.predictions.bias. */
static const char *rename_tied(const char *name, char *buf, size_t size) {
    (void)buf, (void)size;
    if (!strcmp(name, "text_decoder.cls.predictions.decoder.weight") ||
        !strcmp(name, "text_decoder.cls.predictions.decoder.bias"))
        return NULL;
    return rename_common(name);
}

static const char *rename_untied(const char *name, char *buf, size_t size) {
    (void)buf, (void)size;
    return rename_common(name);
}

dc_rename_fn dc_blip_renamer(const dc_blip *m) {
    return m->cfg.tie_word_embeddings ? rename_tied : rename_untied;
}

static const dc_weights_kind blip_weights = {
    .stem = "model",
    .bin = "pytorch_model.bin",
    .library = "transformers",
    .cls = "BlipForConditionalGeneration",
};

int dc_blip_load(dc_blip **out, const char *dir, int device) {
    *out = NULL;
    dc_blip_config cfg;
    char *weights = NULL;
    dc_blip *m = NULL;
    int rc = dc_cfg_load_folder(&cfg, sizeof cfg, dir, DC_BLIP_CONFIG_FILE, "transformers",
                                parse_root) ||
             dc_weights_find(dir, &blip_weights, NULL, &weights, NULL) || dc_blip_init(&m, &cfg) ||
             dc_params_alloc_load(&m->params, device, weights, dc_blip_renamer(m));
    free(weights);
    if (rc) {
        dc_blip_free(m);
        return -1;
    }
    m->device = device;
    *out = m;
    return 0;
}

/* ==== vision ==== */

/* The class token, then the patches, plus the positions: [N, 1 + G^2, Dv]. */
static dc_tensor *vision_embed(dc_ctx *ctx, const dc_blip *m, dc_tensor *pixels) {
    const dc_blip_net *net = m->net;
    int64_t n = pixels->shape[0], d = m->cfg.vision.hidden_size;
    dc_tensor *patches = dc_nn_conv2d_forward(ctx, &net->patch, pixels); /* [N, G, G, Dv] */
    dc_tensor *zeros = dc_new(ctx, DC_F32, DC_SHAPE(n, d));
    if (!patches || !zeros || dc_memset(zeros->data, ctx->device, 0, dc_tensor_bytes(zeros)))
        return NULL;
    int64_t tokens = patches->shape[1] * patches->shape[2];
    dc_tensor *cls = dc_add(ctx, zeros, dc_reshape(ctx, net->class_embedding, DC_SHAPE(d)));
    dc_tensor *x = dc_concat(ctx, cls, dc_reshape(ctx, patches, DC_SHAPE(n, tokens * d)));
    x = dc_reshape(ctx, x, DC_SHAPE(n, 1 + tokens, d));
    return dc_add(ctx, x, dc_reshape(ctx, net->position_embedding, DC_SHAPE(1 + tokens, d)));
}

dc_tensor *dc_blip_vision_forward(dc_ctx *ctx, const dc_blip *m, dc_tensor *pixels) {
    if (dc_ctx_status(ctx) || !pixels)
        return NULL;
    int s = m->cfg.vision.image_size;
    if (pixels->ndim != 4 || pixels->shape[1] != s || pixels->shape[2] != s ||
        pixels->shape[3] != 3) {
        char sh[64];
        dc_fail("BLIP vision: pixels %s, want [N, %d, %d, 3]",
                dc_shape_str(sh, sizeof sh, pixels->ndim, pixels->shape), s, s);
        ctx->failed = true;
        return NULL;
    }
    dc_tensor *x = vision_embed(ctx, m, pixels);
    for (int i = 0; i < m->cfg.vision.num_hidden_layers; i++)
        x = dc_tf_encoder_layer_forward(ctx, &m->net->vl[i], x, false);
    return dc_nn_layer_norm_forward(ctx, &m->net->post_ln, x);
}

/* ==== text ==== */

/* Words at positions start.. plus their positions, normalised: [N, T, D]. */
static dc_tensor *text_embed(dc_ctx *ctx, const dc_blip *m, dc_tensor *ids, int64_t start) {
    const dc_blip_net *net = m->net;
    int64_t t = ids->shape[1];
    int32_t *pos = malloc((size_t)t * sizeof *pos);
    if (!pos) {
        dc_fail("BLIP text: out of memory");
        ctx->failed = true;
        return NULL;
    }
    for (int64_t i = 0; i < t; i++)
        pos[i] = (int32_t)(start + i);
    dc_tensor *p = dc_from_host(ctx, DC_I32, DC_SHAPE(t), pos);
    free(pos);
    dc_tensor *x = dc_add(ctx, dc_nn_embedding_forward(ctx, &net->words, ids),
                          dc_nn_embedding_forward(ctx, &net->positions, p));
    return dc_nn_layer_norm_forward(ctx, &net->emb_ln, x);
}

/* One post-LN layer. self_cache NULL: x [N, T, D] is the whole sequence.
 * Else x [images, rows_per_image * n, D] holds each image's rows of n new
 * positions after the cached ones, side by side, so that an image's rows
 * share the linear layers' calls (dc_linear keeps samples apart: an image's
 * result does not depend on the others). cross_k, cross_v [x's N, L, D]: the
 * image tokens' keys and values. */
static dc_tensor *text_layer_forward(dc_ctx *ctx, const text_layer *l, dc_tensor *x,
                                     dc_tf_kv_cache *self_cache, dc_tensor *cross_k,
                                     dc_tensor *cross_v) {
    dc_tensor *a;
    if (self_cache) {
        dc_tensor *k, *v, *k_all, *v_all;
        int64_t rows = self_cache->rows, n = x->shape[0] * x->shape[1] / rows;
        if (dc_tf_attention_kv(ctx, &l->self, x, &k, &v) ||
            dc_tf_kv_cache_append(
                ctx, self_cache, dc_reshape(ctx, k, DC_SHAPE(rows, n, k->shape[2])),
                dc_reshape(ctx, v, DC_SHAPE(rows, n, v->shape[2])), &k_all, &v_all)) {
            ctx->failed = true;
            return NULL;
        }
        a = dc_tf_attention_over(ctx, &l->self, x, k_all, v_all, true);
    } else {
        a = dc_tf_attention_forward(ctx, &l->self, x, NULL, true);
    }
    x = dc_nn_layer_norm_forward(ctx, &l->self_ln, dc_add(ctx, a, x));
    a = dc_tf_attention_over(ctx, &l->cross, x, cross_k, cross_v, false);
    x = dc_nn_layer_norm_forward(ctx, &l->cross_ln, dc_add(ctx, a, x));
    dc_tensor *h = dc_gelu(ctx, dc_nn_linear_forward(ctx, &l->intermediate, x));
    return dc_nn_layer_norm_forward(ctx, &l->out_ln,
                                    dc_add(ctx, dc_nn_linear_forward(ctx, &l->output, h), x));
}

/* cls.predictions: [..., D] -> [..., V]. */
static dc_tensor *lm_head(dc_ctx *ctx, const dc_blip_net *net, dc_tensor *x) {
    x = dc_gelu(ctx, dc_nn_linear_forward(ctx, &net->head_dense, x));
    x = dc_nn_layer_norm_forward(ctx, &net->head_ln, x);
    return dc_linear(ctx, x, net->out_weight, net->out_bias);
}

static bool fail_ctx(dc_ctx *ctx, const char *fmt, const dc_tensor *a, const dc_tensor *b) {
    char sa[64], sb[64];
    dc_fail(fmt, dc_shape_str(sa, sizeof sa, a->ndim, a->shape),
            dc_shape_str(sb, sizeof sb, b->ndim, b->shape));
    ctx->failed = true;
    return false;
}

static bool text_inputs_ok(dc_ctx *ctx, const dc_blip *m, const dc_tensor *ids,
                           const dc_tensor *img) {
    const dc_blip_text_config *t = &m->cfg.text;
    if (ids->ndim != 2 || ids->dtype != DC_I32 || img->ndim != 3 ||
        img->shape[0] != ids->shape[0] || img->shape[2] != t->encoder_hidden_size ||
        ids->shape[1] < 1)
        return fail_ctx(ctx,
                        "BLIP text: ids %s (want i32 [N, T]) with image embeddings %s "
                        "(want [N, L, vision hidden_size])",
                        ids, img);
    if (ids->shape[1] > t->max_position_embeddings)
        return fail_ctx(ctx, "BLIP text: ids %s longer than max_position_embeddings (image %s)",
                        ids, img);
    return true;
}

dc_tensor *dc_blip_text_logits(dc_ctx *ctx, const dc_blip *m, dc_tensor *ids,
                               dc_tensor *image_embeds) {
    if (dc_ctx_status(ctx) || !ids || !image_embeds || !text_inputs_ok(ctx, m, ids, image_embeds))
        return NULL;
    dc_tensor *x = text_embed(ctx, m, ids, 0);
    for (int i = 0; i < m->cfg.text.num_hidden_layers; i++) {
        const text_layer *l = &m->net->tl[i];
        dc_tensor *k, *v;
        if (dc_tf_attention_kv(ctx, &l->cross, image_embeds, &k, &v)) {
            ctx->failed = true;
            return NULL;
        }
        x = text_layer_forward(ctx, l, x, NULL, k, v);
    }
    return lm_head(ctx, m->net, x);
}

/* ==== incremental decoder ==== */

struct dc_blip_decoder {
    const dc_blip *m;
    dc_ctx step; /* one step's activations, reset per step */
    dc_ctx kept; /* the cross-attention keys and values, for the decoder's life */
    dc_tensor **cross_k, **cross_v; /* [layers] of [images, L, D] */
    dc_tf_kv_cache *self;           /* [layers] */
    int64_t images, rows, rows_per_image, max_len, len;
};

static int lm_step(void *d, const int32_t *ids, int64_t n, float *logits) {
    return dc_blip_decoder_step(d, ids, n, logits);
}

static int lm_reorder(void *d, const int64_t *src) { return dc_blip_decoder_reorder(d, src); }

dc_lm dc_blip_decoder_lm(dc_blip_decoder *d) {
    return (dc_lm){d, d->m->cfg.text.vocab_size, lm_step, lm_reorder};
}

void dc_blip_decoder_free(dc_blip_decoder *d) {
    if (!d)
        return;
    for (int i = 0; d->self && i < d->m->cfg.text.num_hidden_layers; i++)
        dc_tf_kv_cache_free(&d->self[i]);
    free(d->self);
    free(d->cross_k);
    free(d->cross_v);
    dc_ctx_free(&d->step);
    dc_ctx_free(&d->kept);
    free(d);
}

/* Bytes of one step's activations, generously: per layer the new tokens'
 * tensors, all cached keys and values gathered, attention scratch. */
static size_t step_bytes(const dc_blip_decoder *d, int64_t image_tokens) {
    const dc_blip_text_config *t = &d->m->cfg.text;
    double wide = t->intermediate_size > t->hidden_size ? t->intermediate_size : t->hidden_size;
    double keys = d->max_len > image_tokens ? d->max_len : image_tokens;
    double per_layer =
        16.0 * d->rows * d->max_len * wide + 4.0 * d->rows * d->max_len * t->hidden_size +
        2.0 * d->rows * t->num_attention_heads * d->max_len * keys + 64.0 * 1024 * 64;
    double total = 4.0 * (t->num_hidden_layers * per_layer + 4.0 * d->rows * t->vocab_size +
                          8.0 * d->rows * d->max_len * t->hidden_size) +
                   (16 << 20);
    return total > 1e15 ? (size_t)1e15 : (size_t)total;
}

/* Cross-attention keys and values of every layer, once per image. */
static int cross_kv(dc_blip_decoder *d, const dc_tensor *image_embeds) {
    dc_ctx *ctx = &d->kept;
    dc_set_grad_enabled(ctx, false);
    dc_tensor *img = dc_clone(ctx, image_embeds);
    for (int i = 0; i < d->m->cfg.text.num_hidden_layers; i++)
        if (dc_tf_attention_kv(ctx, &d->m->net->tl[i].cross, img, &d->cross_k[i], &d->cross_v[i]))
            return -1;
    return dc_ctx_status(ctx);
}

static int decoder_check(const dc_blip *m, const dc_tensor *img, int64_t rows_per_image,
                         int64_t max_len) {
    const dc_blip_text_config *t = &m->cfg.text;
    char s[64];
    if (img->ndim != 3 || img->shape[2] != t->encoder_hidden_size || img->shape[0] < 1 ||
        img->dtype != DC_F32)
        return dc_fail("BLIP decoder: image embeddings %s, want f32 [images, L, %d]",
                       dc_shape_str(s, sizeof s, img->ndim, img->shape), t->encoder_hidden_size);
    if (rows_per_image < 1 || rows_per_image > 4096 || img->shape[0] > INT32_MAX / rows_per_image)
        return dc_fail("BLIP decoder: %lld rows per image", (long long)rows_per_image);
    if (max_len < 1 || max_len > t->max_position_embeddings)
        return dc_fail("BLIP decoder: max_len %lld outside [1, max_position_embeddings %d]",
                       (long long)max_len, t->max_position_embeddings);
    return 0;
}

int dc_blip_decoder_init(dc_blip_decoder **out, const dc_blip *m, const dc_tensor *image_embeds,
                         int64_t rows_per_image, int64_t max_len) {
    *out = NULL;
    if (decoder_check(m, image_embeds, rows_per_image, max_len))
        return -1;
    const dc_blip_text_config *t = &m->cfg.text;
    int layers = t->num_hidden_layers;
    dc_blip_decoder *d = calloc(1, sizeof *d);
    if (!d)
        return dc_fail("BLIP decoder: out of memory");
    d->m = m;
    d->images = image_embeds->shape[0];
    d->rows_per_image = rows_per_image;
    d->rows = d->images * rows_per_image;
    d->max_len = max_len;
    d->self = calloc((size_t)layers + 1, sizeof *d->self);
    d->cross_k = calloc((size_t)layers + 1, sizeof *d->cross_k);
    d->cross_v = calloc((size_t)layers + 1, sizeof *d->cross_v);
    size_t kv = (size_t)d->images * (size_t)image_embeds->shape[1] * (size_t)t->hidden_size;
    size_t kept = 4 * ((size_t)image_embeds->numel + 2 * (size_t)layers * kv) +
                  256 * (size_t)layers + (4 << 20);
    size_t step = 0;
    int rc =
        !d->self || !d->cross_k || !d->cross_v ? dc_fail("BLIP decoder: out of memory")
        : dc_ctx_init(&d->kept, m->device, kept) || cross_kv(d, image_embeds) ||
                dc_device_arena_bytes(m->device, step_bytes(d, image_embeds->shape[1]), &step) ||
                dc_ctx_init(&d->step, m->device, step)
            ? -1
            : 0;
    for (int i = 0; !rc && i < layers; i++)
        rc = dc_tf_kv_cache_init(&d->self[i], m->device, d->rows, max_len, t->hidden_size);
    if (rc) {
        dc_blip_decoder_free(d);
        return -1;
    }
    dc_set_grad_enabled(&d->step, false);
    d->step.training = false;
    *out = d;
    return 0;
}

int dc_blip_decoder_restart(dc_blip_decoder *d, const dc_tensor *image_embeds) {
    const dc_tensor *first = d->cross_k[0];
    if (decoder_check(d->m, image_embeds, d->rows_per_image, d->max_len))
        return -1;
    if (image_embeds->shape[0] != d->images || !first || image_embeds->shape[1] != first->shape[1])
        return dc_fail("BLIP decoder: restarted with images of another shape");
    d->len = 0;
    for (int i = 0; i < d->m->cfg.text.num_hidden_layers; i++)
        d->self[i].len = 0;
    dc_ctx_reset(&d->kept);
    return cross_kv(d, image_embeds);
}

int dc_blip_decoder_step(dc_blip_decoder *d, const int32_t *ids, int64_t n, float *logits) {
    const dc_blip *m = d->m;
    const dc_blip_text_config *t = &m->cfg.text;
    if (n < 1 || n > d->max_len - d->len)
        return dc_fail("BLIP decoder: %lld more tokens after %lld exceed max_len %lld",
                       (long long)n, (long long)d->len, (long long)d->max_len);
    dc_ctx *ctx = &d->step;
    dc_ctx_reset(ctx);
    int64_t per = d->rows_per_image, dim = t->hidden_size;
    dc_tensor *x = text_embed(ctx, m, dc_from_host(ctx, DC_I32, DC_SHAPE(d->rows, n), ids), d->len);
    x = dc_reshape(ctx, x, DC_SHAPE(d->images, per * n, dim)); /* see text_layer_forward */
    for (int i = 0; i < t->num_hidden_layers && x; i++)
        x = text_layer_forward(ctx, &m->net->tl[i], x, &d->self[i], d->cross_k[i], d->cross_v[i]);
    x = dc_tf_last_position(ctx, dc_reshape(ctx, x, DC_SHAPE(d->rows, n, dim)));
    dc_tensor *out = lm_head(ctx, m->net, dc_reshape(ctx, x, DC_SHAPE(d->images, per, dim)));
    if (!out)
        return -1;
    d->len += n;
    return dc_memcpy(logits, DC_CPU, out->data, ctx->device, dc_tensor_bytes(out));
}

int dc_blip_decoder_reorder(dc_blip_decoder *d, const int64_t *src) {
    for (int64_t r = 0; r < d->rows; r++)
        if (src[r] < 0 || src[r] >= d->rows || src[r] / d->rows_per_image != r / d->rows_per_image)
            return dc_fail(
                "BLIP decoder: row %lld cannot continue row %lld (another image's, or none)",
                (long long)r, (long long)src[r]);
    dc_ctx_reset(&d->step);
    for (int i = 0; i < d->m->cfg.text.num_hidden_layers; i++)
        if (dc_tf_kv_cache_reorder(&d->step, &d->self[i], src))
            return -1;
    return 0;
}

int64_t dc_blip_decoder_length(const dc_blip_decoder *d) { return d->len; }
