/*
 * transformers' CLIPTextModel (models/clip/modeling_clip.py of transformers
 * 5.25): the config parser, the parameter declarations under the hub's
 * names, the forward pass as ops and the pooled output. See clip_text.h.
 */
#include "clip_text.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/config_json.h"
#include "models/transformer.h"
#include "models/weights.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ==== config ==== */

static int read_act(dc_clip_text_config *c, const cJSON *root, const char *what) {
    const char *act = "quick_gelu";
    if (dc_json_get_string(root, "hidden_act", what, &act))
        return -1;
    if (!strcmp(act, "quick_gelu"))
        c->hidden_act = DC_CLIP_TEXT_QUICK_GELU;
    else if (!strcmp(act, "gelu"))
        c->hidden_act = DC_CLIP_TEXT_GELU;
    else
        return dc_fail("%s: hidden_act \"%.64s\" is not supported (supported: \"quick_gelu\", "
                       "\"gelu\")",
                       what, act);
    return 0;
}

static int read_sizes(dc_clip_text_config *c, const cJSON *root, const char *what) {
    *c = (dc_clip_text_config){.vocab_size = 49408, .hidden_size = 512, .intermediate_size = 2048,
                               .num_hidden_layers = 12, .num_attention_heads = 8,
                               .max_position_embeddings = 77, .bos_token_id = 49406,
                               .eos_token_id = 49407, .pad_token_id = 1};
    if (dc_json_get_int(root, "vocab_size", what, 1, DC_CLIP_TEXT_MAX_VOCAB, &c->vocab_size) ||
        dc_json_get_int(root, "hidden_size", what, 1, DC_CLIP_TEXT_MAX_HIDDEN, &c->hidden_size) ||
        dc_json_get_int(root, "intermediate_size", what, 1, DC_CLIP_TEXT_MAX_INTERMEDIATE,
                        &c->intermediate_size) ||
        dc_json_get_int(root, "num_hidden_layers", what, 1, DC_CLIP_TEXT_MAX_LAYERS,
                        &c->num_hidden_layers) ||
        dc_json_get_int(root, "num_attention_heads", what, 1, DC_CLIP_TEXT_MAX_HIDDEN,
                        &c->num_attention_heads) ||
        dc_json_get_int(root, "max_position_embeddings", what, 1, DC_CLIP_TEXT_MAX_POSITIONS,
                        &c->max_position_embeddings) ||
        dc_json_get_int(root, "bos_token_id", what, 0, INT32_MAX, &c->bos_token_id) ||
        dc_json_get_int(root, "eos_token_id", what, 0, INT32_MAX, &c->eos_token_id) ||
        dc_json_get_int(root, "pad_token_id", what, 0, INT32_MAX, &c->pad_token_id))
        return -1;
    if (c->hidden_size % c->num_attention_heads)
        return dc_fail("%s: hidden_size %d does not split into num_attention_heads %d", what,
                       c->hidden_size, c->num_attention_heads);
    return 0;
}

static int parse_root(void *cfg, const cJSON *root, const char *what) {
    dc_clip_text_config *c = cfg;
    if (!cJSON_IsObject(root))
        return dc_fail("%s: a CLIP text config must be a JSON object, got %s", what,
                       dc_json_type(root));
    double eps = 1e-5;
    if (dc_cfg_check_class(root, what, "clip_text_model", "a CLIP text model (clip_text_model)",
                           "CLIPTextModel") ||
        read_sizes(c, root, what) || read_act(c, root, what) ||
        dc_json_get_number(root, "layer_norm_eps", what, &eps))
        return -1;
    if (!(eps > 0 && eps < 1))
        return dc_fail("%s: layer_norm_eps must be in (0, 1), got %g", what, eps);
    c->layer_norm_eps = (float)eps;
    return 0;
}

int dc_clip_text_config_parse(dc_clip_text_config *c, const char *json, const char *what) {
    return dc_cfg_parse_text(c, sizeof *c, json, what, parse_root, NULL);
}

/* ==== declarations ==== */

struct dc_clip_text_net {
    dc_nn_embedding tokens;    /* [V, C] */
    dc_nn_embedding positions; /* [max_position_embeddings, C] */
    dc_tf_encoder_layer *layers; /* [num_hidden_layers] */
    dc_nn_layer_norm final_ln;
};

static const dc_tf_attention_names clip_attn = {
    .q = "q_proj", .k = "k_proj", .v = "v_proj", .out = "out_proj"};

static int declare(dc_clip_text_net *net, dc_params *ps, const dc_clip_text_config *c) {
    int64_t d = c->hidden_size;
    if (dc_nn_embedding_init(&net->tokens, ps, "text_model.embeddings.token_embedding",
                             c->vocab_size, d) ||
        dc_nn_embedding_init(&net->positions, ps, "text_model.embeddings.position_embedding",
                             c->max_position_embeddings, d))
        return -1;
    dc_tf_act_fn act = c->hidden_act == DC_CLIP_TEXT_GELU ? dc_gelu : dc_quick_gelu;
    for (int i = 0; i < c->num_hidden_layers; i++) {
        char p[64];
        snprintf(p, sizeof p, "text_model.encoder.layers.%d", i);
        if (dc_tf_encoder_layer_init(&net->layers[i], ps, p, &clip_attn, d, c->intermediate_size,
                                     c->num_attention_heads, c->layer_norm_eps, act))
            return -1;
    }
    return dc_nn_layer_norm_init(&net->final_ln, ps, "text_model.final_layer_norm", d,
                                 c->layer_norm_eps);
}

void dc_clip_text_free(dc_clip_text *m) {
    if (!m)
        return;
    dc_params_free(&m->params);
    if (m->net)
        free(m->net->layers);
    free(m->net);
    free(m);
}

int dc_clip_text_init(dc_clip_text **out, const dc_clip_text_config *cfg) {
    *out = NULL;
    dc_clip_text *m = calloc(1, sizeof *m);
    dc_clip_text_net *net = m ? calloc(1, sizeof *net) : NULL;
    if (m)
        m->net = net;
    if (net)
        net->layers = calloc((size_t)cfg->num_hidden_layers + 1, sizeof *net->layers);
    if (!net || !net->layers) {
        dc_clip_text_free(m);
        return dc_fail("CLIP text model: out of memory");
    }
    m->cfg = *cfg;
    m->device = DC_CPU;
    dc_params_init(&m->params);
    if (declare(net, &m->params, cfg) || m->params.failed) {
        dc_clip_text_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

/* ==== files ==== */

static const dc_weights_kind clip_weights = {
    .stem = "model",
    .bin = "pytorch_model.bin",
    .library = "transformers",
    .cls = "CLIPTextModel",
};

static bool ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), t = strlen(tail);
    return n >= t && !strcmp(s + n - t, tail);
}

/* The hub's names as they are; transformers 5's without "text_model." get it
 * back; the position_ids buffer is no parameter. */
static const char *rename_clip(const char *name, char *buf, size_t size) {
    static const char prefix[] = "text_model.";
    if (ends_with(name, "embeddings.position_ids"))
        return NULL;
    if (!strncmp(name, prefix, sizeof prefix - 1))
        return name;
    if ((size_t)snprintf(buf, size, "%s%s", prefix, name) >= size)
        return name; /* too long for any parameter: reported as unknown under its own name */
    return buf;
}

dc_rename_fn dc_clip_text_renamer(const dc_clip_text *m) {
    (void)m;
    return rename_clip;
}

int dc_clip_text_load(dc_clip_text **out, const char *dir, const char *variant, int device) {
    *out = NULL;
    dc_clip_text_config cfg;
    char *weights = NULL;
    dc_clip_text *m = NULL;
    int rc = dc_cfg_load_folder(&cfg, sizeof cfg, dir, DC_CLIP_TEXT_CONFIG_FILE, "transformers",
                                parse_root) ||
             dc_weights_find(dir, &clip_weights, variant, &weights, NULL) ||
             dc_clip_text_init(&m, &cfg) ||
             dc_params_alloc_load(&m->params, device, weights, rename_clip);
    free(weights);
    if (rc) {
        dc_clip_text_free(m);
        return -1;
    }
    m->device = device;
    *out = m;
    return 0;
}

/* ==== forward ==== */

/* Fail the context with a message; NULL. */
DC_PRINTF(2, 3) static dc_tensor *fail_ctx(dc_ctx *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    dc_vfail(fmt, ap);
    va_end(ap);
    ctx->failed = true;
    return NULL;
}

static bool ids_ok(dc_ctx *ctx, const dc_clip_text *m, const dc_tensor *ids) {
    char s[64];
    dc_shape_str(s, sizeof s, ids->ndim, ids->shape);
    if (ids->ndim != 2 || ids->dtype != DC_I32 || ids->shape[0] < 1 || ids->shape[1] < 1)
        fail_ctx(ctx, "CLIP text model: ids %s %s, want i32 [N, L]", dc_dtype_name(ids->dtype), s);
    else if (ids->shape[1] > m->cfg.max_position_embeddings)
        fail_ctx(ctx, "CLIP text model: ids %s longer than max_position_embeddings %d", s,
                 m->cfg.max_position_embeddings);
    return !ctx->failed;
}

/* Tokens plus the first L positions: [N, L, C]. */
static dc_tensor *embed(dc_ctx *ctx, const dc_clip_text *m, dc_tensor *ids) {
    int64_t l = ids->shape[1], d = m->cfg.hidden_size;
    dc_tensor *table = m->net->positions.weight; /* [P, C] */
    dc_tensor *pos = dc_slice(ctx, dc_reshape(ctx, table, DC_SHAPE(1, table->numel)), 0, l * d);
    return dc_add(ctx, dc_nn_embedding_forward(ctx, &m->net->tokens, ids),
                  dc_reshape(ctx, pos, DC_SHAPE(l, d)));
}

dc_tensor *dc_clip_text_forward(dc_ctx *ctx, const dc_clip_text *m, dc_tensor *ids, int clip_skip,
                                dc_tensor **hidden) {
    if (dc_ctx_status(ctx) || !ids || !ids_ok(ctx, m, ids))
        return NULL;
    int layers = m->cfg.num_hidden_layers;
    if (clip_skip < 0 || clip_skip >= layers)
        return fail_ctx(ctx, "CLIP text model: clip_skip %d outside [0, num_hidden_layers %d)",
                        clip_skip, layers);
    for (int i = 0; hidden && i <= layers; i++)
        hidden[i] = NULL;
    dc_tensor *x = embed(ctx, m, ids);
    for (int i = 0; i < layers - clip_skip; i++) {
        if (hidden)
            hidden[i] = x;
        x = dc_tf_encoder_layer_forward(ctx, &m->net->layers[i], x, true);
    }
    if (hidden)
        hidden[layers - clip_skip] = x;
    return dc_nn_layer_norm_forward(ctx, &m->net->final_ln, x);
}

void dc_clip_text_eos_positions(const dc_clip_text_config *c, const int32_t *ids, int64_t n,
                                int64_t L, int64_t *pos) {
    for (int64_t r = 0; r < n; r++) {
        const int32_t *row = ids + r * L;
        int64_t best = 0;
        for (int64_t i = 1; i < L; i++)
            if (c->eos_token_id == 2 ? row[i] > row[best]
                                     : row[i] == c->eos_token_id && row[best] != c->eos_token_id)
                best = i;
        pos[r] = best;
    }
}

dc_tensor *dc_clip_text_pooled(dc_ctx *ctx, const dc_clip_text *m, dc_tensor *ids, dc_tensor *x) {
    if (dc_ctx_status(ctx) || !ids || !x || !ids_ok(ctx, m, ids))
        return NULL;
    int64_t n = ids->shape[0], l = ids->shape[1], d = m->cfg.hidden_size;
    if (x->ndim != 3 || x->shape[0] != n || x->shape[1] != l || x->shape[2] != d) {
        char s[64];
        return fail_ctx(ctx, "CLIP text model: hidden states %s, want [%lld, %lld, %lld]",
                        dc_shape_str(s, sizeof s, x->ndim, x->shape), (long long)n, (long long)l,
                        (long long)d);
    }
    int32_t *host = malloc((size_t)(n * l) * sizeof *host);
    int64_t *pos = malloc((size_t)n * sizeof *pos);
    int32_t *rows = malloc((size_t)n * sizeof *rows);
    dc_tensor *at = NULL;
    if (!host || !pos || !rows) {
        fail_ctx(ctx, "CLIP text model: out of memory");
    } else if (dc_memcpy(host, DC_CPU, ids->data, ids->device, dc_tensor_bytes(ids))) {
        ctx->failed = true;
    } else {
        dc_clip_text_eos_positions(&m->cfg, host, n, l, pos);
        for (int64_t r = 0; r < n; r++)
            rows[r] = (int32_t)(r * l + pos[r]); /* the row of x seen as [N * L, C] */
        at = dc_from_host(ctx, DC_I32, DC_SHAPE(n), rows);
    }
    free(host);
    free(pos);
    free(rows);
    return at ? dc_embedding(ctx, dc_reshape(ctx, x, DC_SHAPE(n * l, d)), at) : NULL;
}
