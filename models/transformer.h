/*
 * Transformer pieces shared by the text and vision models (BLIP, CLIP, the
 * cross-attention UNet): multi-head attention with its projections under the
 * names each family gives them, the pre-LN encoder layer, and a key/value
 * cache for incremental decoding.
 *
 * Sequences are [N, L, C]; head h uses channels [h*d, (h+1)*d) of q, k and
 * v, as dc_attention does and as every PyTorch implementation splits them.
 */
#ifndef DC_MODELS_TRANSFORMER_H
#define DC_MODELS_TRANSFORMER_H

#include "autograd/nn.h"

#include <stdbool.h>
#include <stdint.h>

/* The projections' names under the layer's prefix: either qkv (one fused
 * [3C, C] linear, q then k then v: ViT / BLIP vision) or q, k and v; and out.
 * BERT: {.q = "self.query", .k = "self.key", .v = "self.value", .out = "output.dense"}.
 * no_qkv_bias: q, k and v (or qkv) without bias, as diffusers' Attention in
 * the UNet's transformer blocks (bias=False; to_out.0 keeps its bias). */
typedef struct dc_tf_attention_names {
    const char *q, *k, *v, *qkv, *out;
    bool no_qkv_bias;
} dc_tf_attention_names;

typedef struct dc_tf_attention {
    dc_nn_linear q, k, v; /* q [C, C]; k, v [C, kv_dim] (unused when fused) */
    dc_nn_linear qkv;     /* [3C, C] when fused */
    dc_nn_linear out;     /* [C, C] */
    bool fused;
    int heads;
    int64_t dim;
} dc_tf_attention;

/* dim channels in `heads` heads (dim % heads == 0); keys and values projected
 * from kv_dim channels (a cross-attention's context; dim for self-attention;
 * a fused qkv needs kv_dim == dim). Every projection has a bias unless
 * names->no_qkv_bias. */
int dc_tf_attention_init(dc_tf_attention *a, dc_params *ps, const char *prefix,
                         const dc_tf_attention_names *names, int64_t dim, int64_t kv_dim,
                         int heads);
/* Keys and values of `context` [N, Lk, kv_dim]: [N, Lk, C] each (for a cross-attention's
 * context computed once). Separate projections only. */
int dc_tf_attention_kv(dc_ctx *ctx, const dc_tf_attention *a, dc_tensor *context, dc_tensor **k,
                       dc_tensor **v);
/* x [N, L, C] attends to itself (context NULL) or to context [N, Lk, kv_dim]; the
 * projected result [N, L, C]. */
dc_tensor *dc_tf_attention_forward(dc_ctx *ctx, const dc_tf_attention *a, dc_tensor *x,
                                   dc_tensor *context, bool causal);
/* The attention of x [N, L, C]'s queries over given keys and values k, v
 * [B, Lk, C], then the out projection. B == N; or B divides N and each group
 * of N / B consecutive samples of x shares one key set (a caption's beams,
 * their image's cross-attention keys; not causal); or N divides B and each
 * sample of x holds B / N consecutive sequences of L * N / B queries, each
 * with its own key set (a decoder's rows grouped by image, so that their
 * projections share their calls: causal allowed). */
dc_tensor *dc_tf_attention_over(dc_ctx *ctx, const dc_tf_attention *a, dc_tensor *x, dc_tensor *k,
                                dc_tensor *v, bool causal);

/* An activation op: dc_gelu, dc_quick_gelu, ... */
typedef dc_tensor *(*dc_tf_act_fn)(dc_ctx *ctx, dc_tensor *x);

/* The pre-LN encoder layer of CLIP and ViT (BLIP's vision encoder too), under
 * their names below the prefix: layer_norm1, self_attn (projections named by
 * `names`), layer_norm2, mlp.fc1, mlp.fc2. x + attn(ln1(x)), then
 * x + fc2(act(fc1(ln2(x)))). */
typedef struct dc_tf_encoder_layer {
    dc_nn_layer_norm ln1, ln2;
    dc_tf_attention attn;
    dc_nn_linear fc1; /* [intermediate, C] */
    dc_nn_linear fc2; /* [C, intermediate] */
    dc_tf_act_fn act;
} dc_tf_encoder_layer;

int dc_tf_encoder_layer_init(dc_tf_encoder_layer *l, dc_params *ps, const char *prefix,
                             const dc_tf_attention_names *names, int64_t dim,
                             int64_t intermediate, int heads, float eps, dc_tf_act_fn act);
/* x [N, L, C] -> [N, L, C]; causal: each position attends to itself and earlier ones. */
dc_tensor *dc_tf_encoder_layer_forward(dc_ctx *ctx, const dc_tf_encoder_layer *l, dc_tensor *x,
                                       bool causal);

/* Keys and values of a self-attention for `rows` sequences of up to max_len
 * tokens, dim channels, on one device; outside any arena. */
typedef struct dc_tf_kv_cache {
    float *k, *v; /* [rows, max_len, dim] each; the first len positions of every row are set */
    int64_t rows, max_len, dim, len;
    int device;
} dc_tf_kv_cache;

int dc_tf_kv_cache_init(dc_tf_kv_cache *c, int device, int64_t rows, int64_t max_len, int64_t dim);
void dc_tf_kv_cache_free(dc_tf_kv_cache *c);
/* Append k, v [rows, n, dim] (ctx's device) after the cached positions, and
 * give every position so far as k_all, v_all [rows, len + n, dim] in ctx. */
int dc_tf_kv_cache_append(dc_ctx *ctx, dc_tf_kv_cache *c, const dc_tensor *k, const dc_tensor *v,
                          dc_tensor **k_all, dc_tensor **v_all);
/* Row i takes what row src[i] held (src [rows], host, each in [0, rows)),
 * through scratch from ctx's arena. */
int dc_tf_kv_cache_reorder(dc_ctx *ctx, dc_tf_kv_cache *c, const int64_t *src);

/* x [N, L, C] -> its last position [N, C] (a copy). */
dc_tensor *dc_tf_last_position(dc_ctx *ctx, dc_tensor *x);

#endif
