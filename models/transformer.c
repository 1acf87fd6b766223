/*
 * Transformer pieces shared by the text and vision models: attention with its
 * projections, the pre-LN encoder layer, the key/value cache of incremental
 * decoding. See transformer.h.
 */
#include "transformer.h"

#include "autograd/device.h"
#include "autograd/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dc_tf_attention_init(dc_tf_attention *a, dc_params *ps, const char *prefix,
                         const dc_tf_attention_names *names, int64_t dim, int64_t kv_dim,
                         int heads) {
    memset(a, 0, sizeof *a);
    if (heads < 1 || dim % heads != 0)
        return dc_fail("%s: %lld channels do not split into %d heads", prefix, (long long)dim,
                       heads);
    a->heads = heads;
    a->dim = dim;
    a->fused = names->qkv != NULL;
    char name[256];
    bool bias = !names->no_qkv_bias; /* of q, k, v and qkv; out has one always */
#define PROJ(field, in, out, b)                                                                    \
    (snprintf(name, sizeof name, "%s%s%s", prefix, *prefix ? "." : "", names->field),              \
     dc_nn_linear_init(&a->field, ps, name, in, out, b))
    if (a->fused) {
        if (kv_dim != dim)
            return dc_fail("%s: a fused qkv projection cannot attend to another width", prefix);
        return PROJ(qkv, dim, 3 * dim, bias) || PROJ(out, dim, dim, true) ? -1 : 0;
    }
    return PROJ(q, dim, dim, bias) || PROJ(k, kv_dim, dim, bias) || PROJ(v, kv_dim, dim, bias) ||
                   PROJ(out, dim, dim, true)
               ? -1
               : 0;
#undef PROJ
}

int dc_tf_attention_kv(dc_ctx *ctx, const dc_tf_attention *a, dc_tensor *context, dc_tensor **k,
                       dc_tensor **v) {
    *k = *v = NULL;
    if (a->fused)
        return dc_fail("attention: keys of a context need separate k and v projections");
    *k = dc_nn_linear_forward(ctx, &a->k, context);
    *v = dc_nn_linear_forward(ctx, &a->v, context);
    return dc_ctx_status(ctx);
}

dc_tensor *dc_tf_attention_over(dc_ctx *ctx, const dc_tf_attention *a, dc_tensor *x, dc_tensor *k,
                                dc_tensor *v, bool causal) {
    dc_tensor *q = a->fused ? dc_slice(ctx, dc_nn_linear_forward(ctx, &a->qkv, x), 0, a->dim)
                            : dc_nn_linear_forward(ctx, &a->q, x);
    if (!q || !k)
        return NULL;
    /* match the queries' samples to the key sets; the sequences are consecutive either way */
    int64_t n = q->shape[0], l = q->shape[1], sets = k->shape[0];
    dc_tensor *qs = q;
    if (sets != n && sets % n == 0 && l % (sets / n) == 0)
        qs = dc_reshape(ctx, q, DC_SHAPE(sets, l / (sets / n), a->dim));
    else if (sets != n && !causal && sets > 0 && n % sets == 0)
        qs = dc_reshape(ctx, q, DC_SHAPE(sets, n / sets * l, a->dim));
    dc_tensor *o = dc_attention(ctx, qs, k, v, a->heads, causal, 0.0f);
    return dc_nn_linear_forward(ctx, &a->out, qs == q ? o : dc_reshape(ctx, o, q->ndim, q->shape));
}

dc_tensor *dc_tf_attention_forward(dc_ctx *ctx, const dc_tf_attention *a, dc_tensor *x,
                                   dc_tensor *context, bool causal) {
    if (!a->fused) {
        dc_tensor *k, *v;
        if (dc_tf_attention_kv(ctx, a, context ? context : x, &k, &v))
            return NULL;
        return dc_tf_attention_over(ctx, a, x, k, v, causal);
    }
    dc_tensor *qkv = dc_nn_linear_forward(ctx, &a->qkv, x);
    dc_tensor *q = dc_slice(ctx, qkv, 0, a->dim), *k = dc_slice(ctx, qkv, a->dim, a->dim),
              *v = dc_slice(ctx, qkv, 2 * a->dim, a->dim);
    return dc_nn_linear_forward(ctx, &a->out, dc_attention(ctx, q, k, v, a->heads, causal, 0.0f));
}

/* ==== encoder layer ==== */

int dc_tf_encoder_layer_init(dc_tf_encoder_layer *l, dc_params *ps, const char *prefix,
                             const dc_tf_attention_names *names, int64_t dim,
                             int64_t intermediate, int heads, float eps, dc_tf_act_fn act) {
    memset(l, 0, sizeof *l);
    l->act = act;
    char n[256];
#define NAME(s) (snprintf(n, sizeof n, "%s.%s", prefix, s), n)
    return dc_nn_layer_norm_init(&l->ln1, ps, NAME("layer_norm1"), dim, eps) ||
                   dc_tf_attention_init(&l->attn, ps, NAME("self_attn"), names, dim, dim, heads) ||
                   dc_nn_layer_norm_init(&l->ln2, ps, NAME("layer_norm2"), dim, eps) ||
                   dc_nn_linear_init(&l->fc1, ps, NAME("mlp.fc1"), dim, intermediate, true) ||
                   dc_nn_linear_init(&l->fc2, ps, NAME("mlp.fc2"), intermediate, dim, true)
               ? -1
               : 0;
#undef NAME
}

dc_tensor *dc_tf_encoder_layer_forward(dc_ctx *ctx, const dc_tf_encoder_layer *l, dc_tensor *x,
                                       bool causal) {
    dc_tensor *h = dc_nn_layer_norm_forward(ctx, &l->ln1, x);
    x = dc_add(ctx, x, dc_tf_attention_forward(ctx, &l->attn, h, NULL, causal));
    h = dc_nn_linear_forward(ctx, &l->fc1, dc_nn_layer_norm_forward(ctx, &l->ln2, x));
    return dc_add(ctx, x, dc_nn_linear_forward(ctx, &l->fc2, l->act(ctx, h)));
}

/* ==== key/value cache ==== */

static void *cache_alloc(int device, size_t bytes) {
    if (device != DC_CPU)
        return dc_device_alloc(device, bytes, "key/value cache");
    void *p = malloc(bytes);
    if (!p)
        dc_fail("key/value cache: out of memory (%zu bytes)", bytes);
    return p;
}

static void cache_release(int device, void *p) {
    if (device != DC_CPU)
        dc_device_free(device, p);
    else
        free(p);
}

int dc_tf_kv_cache_init(dc_tf_kv_cache *c, int device, int64_t rows, int64_t max_len, int64_t dim) {
    memset(c, 0, sizeof *c);
    c->device = device;
    size_t bytes;
    if (rows < 1 || max_len < 1 || dim < 1 ||
        !dc_shape_bytes(3, (const int64_t[]){rows, max_len, dim}, DC_F32, &bytes))
        return dc_fail("key/value cache: bad size (%lld rows, %lld positions, %lld channels)",
                       (long long)rows, (long long)max_len, (long long)dim);
    c->rows = rows, c->max_len = max_len, c->dim = dim;
    c->k = cache_alloc(device, bytes);
    c->v = c->k ? cache_alloc(device, bytes) : NULL;
    if (!c->v) {
        dc_tf_kv_cache_free(c);
        return -1;
    }
    return 0;
}

void dc_tf_kv_cache_free(dc_tf_kv_cache *c) {
    if (!c)
        return;
    cache_release(c->device, c->k);
    cache_release(c->device, c->v);
    c->k = c->v = NULL;
}

/* Row by row: n positions of dst (row stride dst_len) from src (row stride src_len). */
static int copy_rows(float *dst, int64_t dst_len, int64_t dst_at, const float *src, int64_t src_len,
                     int64_t src_at, int64_t n, const dc_tf_kv_cache *c, const int64_t *src_row) {
    for (int64_t r = 0; r < c->rows; r++) {
        int64_t from = src_row ? src_row[r] : r;
        if (dc_memcpy(dst + (r * dst_len + dst_at) * c->dim, c->device,
                      src + (from * src_len + src_at) * c->dim, c->device,
                      (size_t)(n * c->dim) * sizeof(float)))
            return -1;
    }
    return 0;
}

int dc_tf_kv_cache_append(dc_ctx *ctx, dc_tf_kv_cache *c, const dc_tensor *k, const dc_tensor *v,
                          dc_tensor **k_all, dc_tensor **v_all) {
    *k_all = *v_all = NULL;
    if (dc_ctx_status(ctx) || !k || !v)
        return -1;
    int64_t n = k->ndim == 3 ? k->shape[1] : 0;
    if (k->ndim != 3 || !dc_same_shape(k, v) || k->shape[0] != c->rows || k->shape[2] != c->dim ||
        k->device != c->device)
        return dc_fail("key/value cache: new keys of the wrong shape or device");
    if (n < 1 || n > c->max_len - c->len)
        return dc_fail("key/value cache: %lld more positions after %lld exceed its %lld",
                       (long long)n, (long long)c->len, (long long)c->max_len);
    int64_t len = c->len + n;
    *k_all = dc_new(ctx, DC_F32, DC_SHAPE(c->rows, len, c->dim));
    *v_all = dc_new(ctx, DC_F32, DC_SHAPE(c->rows, len, c->dim));
    if (!*k_all || !*v_all || copy_rows(c->k, c->max_len, c->len, k->data, n, 0, n, c, NULL) ||
        copy_rows(c->v, c->max_len, c->len, v->data, n, 0, n, c, NULL) ||
        copy_rows((*k_all)->data, len, 0, c->k, c->max_len, 0, len, c, NULL) ||
        copy_rows((*v_all)->data, len, 0, c->v, c->max_len, 0, len, c, NULL))
        return -1;
    c->len = len;
    return 0;
}

int dc_tf_kv_cache_reorder(dc_ctx *ctx, dc_tf_kv_cache *c, const int64_t *src) {
    for (int64_t r = 0; r < c->rows; r++)
        if (src[r] < 0 || src[r] >= c->rows)
            return dc_fail("key/value cache: reorder from row %lld of %lld", (long long)src[r],
                           (long long)c->rows);
    if (c->len == 0)
        return 0;
    size_t mark = ctx->act.used;
    dc_tensor *tmp = dc_new(ctx, DC_F32, DC_SHAPE(c->rows, c->len, c->dim));
    float *bufs[2] = {c->k, c->v};
    int rc = tmp ? 0 : -1;
    for (int b = 0; b < 2 && !rc; b++)
        rc = copy_rows(tmp->data, c->len, 0, bufs[b], c->max_len, 0, c->len, c, src) ||
             copy_rows(bufs[b], c->max_len, 0, tmp->data, c->len, 0, c->len, c, NULL);
    dc_arena_rewind(&ctx->act, mark);
    return rc ? -1 : 0;
}

dc_tensor *dc_tf_last_position(dc_ctx *ctx, dc_tensor *x) {
    if (!x)
        return NULL;
    int64_t n = x->shape[0], l = x->shape[1], c = x->shape[2];
    return dc_slice(ctx, dc_reshape(ctx, x, DC_SHAPE(n, l * c)), (l - 1) * c, c);
}
