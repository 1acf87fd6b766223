/*
 * The blocks diffusers' convolutional networks share (resnet.py,
 * attention_processor.py, downsampling.py, upsampling.py of diffusers 0.27 to
 * 0.42), as ops whose tape gives the backward pass. See unet_blocks.h.
 */
#include "unet_blocks.h"

#include "autograd/device.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>

const char *dc_unet_name(char *buf, size_t n, const char *prefix, const char *name) {
    snprintf(buf, n, "%s.%s", prefix, name);
    return buf;
}

int dc_unet_check_common(const dc_unet_common_config *c, const char *what) {
    if (c->downsample_padding != 0 && c->downsample_padding != 1)
        return dc_fail("%s: downsample_padding %d is not supported (supported: 0, 1)", what,
                       c->downsample_padding);
    if (!(c->norm_eps > 0.0f))
        return dc_fail("%s: norm_eps %g must be positive", what, (double)c->norm_eps);
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f))
        return dc_fail("%s: dropout %g must be in [0, 1)", what, (double)c->dropout);
    if (!(c->mid_block_scale_factor != 0.0f) || !isfinite(c->mid_block_scale_factor))
        return dc_fail("%s: mid_block_scale_factor %g must be finite and nonzero", what,
                       (double)c->mid_block_scale_factor);
    if (c->c0 / 2 - (double)c->freq_shift == 0.0)
        return dc_fail("%s: freq_shift %g equals half of block_out_channels[0] (a division by zero)",
                       what, (double)c->freq_shift);
    return 0;
}

const char *dc_unet_input_problem(const dc_tensor *x, const dc_tensor *t, int in_channels,
                                  int levels, char *buf, size_t n) {
    char s[64];
    int64_t mult = (int64_t)1 << (levels - 1);
    if (x->dtype != DC_F32 || x->ndim != 4 || x->shape[3] != in_channels || x->numel == 0)
        snprintf(buf, n, "x must be f32 [N, H, W, %d], got %s %s", in_channels,
                 dc_dtype_name(x->dtype), dc_shape_str(s, sizeof s, x->ndim, x->shape));
    else if (x->shape[1] % mult || x->shape[2] % mult)
        snprintf(buf, n, "x is %lldx%lld; with %d levels height and width must be multiples of %lld",
                 (long long)x->shape[1], (long long)x->shape[2], levels, (long long)mult);
    else if ((t->dtype != DC_F32 && t->dtype != DC_I32) || t->ndim != 1 ||
             (t->shape[0] != x->shape[0] && t->shape[0] != 1))
        snprintf(buf, n, "timesteps must be f32 or i32 [%lld] (or [1]), got %s %s",
                 (long long)x->shape[0], dc_dtype_name(t->dtype),
                 dc_shape_str(s, sizeof s, t->ndim, t->shape));
    else
        return NULL;
    return buf;
}

dc_tensor *dc_unet_fail(dc_ctx *ctx, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    dc_fail("unet: %s", msg);
    ctx->failed = true;
    return NULL;
}

void dc_unet_resnet_init(dc_unet_resnet *r, dc_params *ps, const char *prefix,
                         const dc_unet_resnet_shape *s) {
    char b[192];
    int64_t cin = s->cin, cout = s->cout;
    dc_nn_group_norm_init(&r->norm1, ps, dc_unet_name(b, sizeof b, prefix, "norm1"), s->groups, cin, s->eps);
    dc_nn_conv2d_init(&r->conv1, ps, dc_unet_name(b, sizeof b, prefix, "conv1"), cin, cout, 3, 1, 1, true);
    if (s->temb)
        dc_nn_linear_init(&r->time_emb_proj, ps, dc_unet_name(b, sizeof b, prefix, "time_emb_proj"),
                          s->temb, s->scale_shift ? 2 * cout : cout, true);
    dc_nn_group_norm_init(&r->norm2, ps, dc_unet_name(b, sizeof b, prefix, "norm2"), s->groups_out, cout,
                          s->eps);
    dc_nn_conv2d_init(&r->conv2, ps, dc_unet_name(b, sizeof b, prefix, "conv2"), cout, cout, 3, 1, 1, true);
    if (cin != cout || s->shortcut)
        dc_nn_conv2d_init(&r->conv_shortcut, ps, dc_unet_name(b, sizeof b, prefix, "conv_shortcut"), cin,
                          cout, 1, 1, 0, true);
    r->out_channels = cout;
    r->scale_shift = s->scale_shift;
    r->act = s->act;
    r->resample = s->resample;
    r->dropout = s->dropout;
    r->output_scale_factor = s->scale;
}

void dc_unet_attention_init(dc_unet_attention *a, dc_params *ps, const char *prefix, int64_t ch,
                            int64_t head_dim, int groups, float eps, float rescale) {
    char b[192];
    head_dim = head_dim ? head_dim : ch;
    a->heads = (int)(ch / head_dim);
    int64_t inner = a->heads * head_dim;
    if (groups)
        dc_nn_group_norm_init(&a->group_norm, ps, dc_unet_name(b, sizeof b, prefix, "group_norm"), groups,
                              ch, eps);
    dc_nn_linear_init(&a->to_q, ps, dc_unet_name(b, sizeof b, prefix, "to_q"), ch, inner, true);
    dc_nn_linear_init(&a->to_k, ps, dc_unet_name(b, sizeof b, prefix, "to_k"), ch, inner, true);
    dc_nn_linear_init(&a->to_v, ps, dc_unet_name(b, sizeof b, prefix, "to_v"), ch, inner, true);
    dc_nn_linear_init(&a->to_out, ps, dc_unet_name(b, sizeof b, prefix, "to_out.0"), inner, ch, true);
    a->rescale_output_factor = rescale;
}

#define MAX_PERIOD 10000.0f /* get_timestep_embedding's default */

dc_tensor *dc_unet_timesteps(dc_ctx *ctx, dc_tensor *t, int dim, bool flip_sin_to_cos, float shift) {
    return dc_timestep_embedding(ctx, t, dim, flip_sin_to_cos, shift, MAX_PERIOD);
}

dc_tensor *dc_unet_time_mlp(dc_ctx *ctx, const dc_nn_linear *linear_1,
                            const dc_nn_linear *linear_2, dc_tensor *x) {
    return dc_nn_linear_forward(ctx, linear_2, dc_silu(ctx, dc_nn_linear_forward(ctx, linear_1, x)));
}

dc_tensor *dc_unet_activation(dc_ctx *ctx, dc_unet_act act, dc_tensor *x) {
    return act == DC_UNET_SILU ? dc_silu(ctx, x) : act == DC_UNET_MISH ? dc_mish(ctx, x) : dc_gelu(ctx, x);
}

dc_tensor *dc_unet_norm_act(dc_ctx *ctx, const dc_nn_group_norm *norm, dc_unet_act act,
                            dc_tensor *x) {
    if (act == DC_UNET_SILU)
        return dc_nn_group_norm_silu_forward(ctx, norm, x);
    return dc_unet_activation(ctx, act, dc_nn_group_norm_forward(ctx, norm, x));
}

/* A zero f32 tensor of `rows` x `cols` (no gradient). */
static dc_tensor *zeros(dc_ctx *ctx, int64_t rows, int64_t cols) {
    dc_tensor *z = dc_new(ctx, DC_F32, DC_SHAPE(rows, cols));
    if (z && dc_memset(z->data, z->device, 0, dc_tensor_bytes(z))) {
        ctx->failed = true;
        return NULL;
    }
    return z;
}

/* F.avg_pool2d(x, 2): [N, H, W, C] -> [N, H/2, W/2, C], the mean of row
 * pairs, then of column pairs, from slices of reshaped views. */
static dc_tensor *avg_pool2x(dc_ctx *ctx, dc_tensor *x) {
    if (!x)
        return NULL;
    int64_t n = x->shape[0], h = x->shape[1] / 2, w = x->shape[2] / 2, c = x->shape[3];
    dc_tensor *rows = dc_reshape(ctx, x, DC_SHAPE(n * h, 2 * 2 * w * c));
    rows = dc_add(ctx, dc_slice(ctx, rows, 0, 2 * w * c), dc_slice(ctx, rows, 2 * w * c, 2 * w * c));
    dc_tensor *cols = dc_reshape(ctx, rows, DC_SHAPE(n * h * w, 2 * c));
    cols = dc_add(ctx, dc_slice(ctx, cols, 0, c), dc_slice(ctx, cols, c, c));
    return dc_reshape(ctx, dc_scale(ctx, cols, 0.25f), DC_SHAPE(n, h, w, c));
}

/* The FIR resampling of diffusers' upsample_2d / downsample_2d with the
 * kernel (1, 3, 3, 1): separable, so one axis at a time. x is viewed as
 * [rows, len * ch]: `len` positions of `ch` values along the axis. */

/* Each position's neighbour one before (prev) or after (next), zero past the ends. */
static dc_tensor *neighbour(dc_ctx *ctx, dc_tensor *x, int64_t rows, int64_t len, int64_t ch,
                            bool prev) {
    dc_tensor *z = zeros(ctx, rows, ch);
    return prev ? dc_slice(ctx, dc_concat(ctx, z, x), 0, len * ch)
                : dc_slice(ctx, dc_concat(ctx, x, z), ch, len * ch);
}

/* a * s + b * t. */
static dc_tensor *mix(dc_ctx *ctx, dc_tensor *a, float s, dc_tensor *b, float t) {
    return dc_add(ctx, dc_scale(ctx, a, s), dc_scale(ctx, b, t));
}

/* Up by 2: out[2i] = (x[i-1] + 3 x[i]) / 4, out[2i+1] = (3 x[i] + x[i+1]) / 4;
 * [rows, len * ch] -> [rows, 2 len * ch], the two interleaved by a concat. */
static dc_tensor *fir_up_axis(dc_ctx *ctx, dc_tensor *x, int64_t rows, int64_t len, int64_t ch) {
    x = dc_reshape(ctx, x, DC_SHAPE(rows, len * ch));
    dc_tensor *even = mix(ctx, neighbour(ctx, x, rows, len, ch, true), 0.25f, x, 0.75f);
    dc_tensor *odd = mix(ctx, x, 0.75f, neighbour(ctx, x, rows, len, ch, false), 0.25f);
    dc_tensor *both = dc_concat(ctx, dc_reshape(ctx, even, DC_SHAPE(rows * len, ch)),
                                dc_reshape(ctx, odd, DC_SHAPE(rows * len, ch)));
    return dc_reshape(ctx, both, DC_SHAPE(rows, 2 * len * ch));
}

/* Down by 2: out[j] = (x[2j-1] + 3 x[2j] + 3 x[2j+1] + x[2j+2]) / 8;
 * [rows, len * ch] -> [rows, len / 2 * ch], from the even (a) and odd (b) positions. */
static dc_tensor *fir_down_axis(dc_ctx *ctx, dc_tensor *x, int64_t rows, int64_t len, int64_t ch) {
    int64_t half = len / 2;
    dc_tensor *pairs = dc_reshape(ctx, x, DC_SHAPE(rows * half, 2 * ch));
    dc_tensor *a = dc_reshape(ctx, dc_slice(ctx, pairs, 0, ch), DC_SHAPE(rows, half * ch));
    dc_tensor *b = dc_reshape(ctx, dc_slice(ctx, pairs, ch, ch), DC_SHAPE(rows, half * ch));
    dc_tensor *outer = dc_add(ctx, neighbour(ctx, b, rows, half, ch, true),
                              neighbour(ctx, a, rows, half, ch, false));
    return mix(ctx, outer, 0.125f, dc_add(ctx, a, b), 0.375f);
}

/* Along W, then along H (rows of W * C values). */
dc_tensor *dc_unet_fir_resample(dc_ctx *ctx, dc_tensor *x, bool up) {
    if (!x)
        return NULL;
    int64_t n = x->shape[0], h = x->shape[1], w = x->shape[2], c = x->shape[3];
    int64_t w2 = up ? 2 * w : w / 2, h2 = up ? 2 * h : h / 2;
    dc_tensor *y = up ? fir_up_axis(ctx, x, n * h, w, c) : fir_down_axis(ctx, x, n * h, w, c);
    y = up ? fir_up_axis(ctx, y, n, h, w2 * c) : fir_down_axis(ctx, y, n, h, w2 * c);
    return dc_reshape(ctx, y, DC_SHAPE(n, h2, w2, c));
}

/* A resnet's down=True / up=True resampling, or x itself. */
static dc_tensor *resnet_resample(dc_ctx *ctx, const dc_unet_resnet *r, dc_tensor *x) {
    switch (r->resample) {
    case -2: return dc_unet_fir_resample(ctx, x, false);
    case -1: return avg_pool2x(ctx, x);
    case 1: return dc_upsample2x(ctx, x);
    case 2: return dc_unet_fir_resample(ctx, x, true);
    default: return x;
    }
}

/* conv1's output h [N, H, W, Cout] joined with the time projection of temb
 * [N or 1, T]: added before norm2 and act, or norm2's scale and shift; norm2
 * and act alone without a time projection. */
static dc_tensor *add_time(dc_ctx *ctx, const dc_unet_resnet *r, dc_tensor *h, dc_tensor *temb) {
    if (!r->time_emb_proj.weight)
        return dc_unet_norm_act(ctx, &r->norm2, r->act, h);
    dc_tensor *p = dc_nn_linear_forward(ctx, &r->time_emb_proj, temb);
    if (!h || !p)
        return NULL;
    int64_t n = p->shape[0], co = r->out_channels;
    if (!r->scale_shift) {
        h = dc_add(ctx, h, dc_reshape(ctx, p, DC_SHAPE(n, 1, 1, co)));
        return dc_unet_norm_act(ctx, &r->norm2, r->act, h);
    }
    dc_tensor *scale = dc_affine(ctx, dc_slice(ctx, p, 0, co), 1.0f, 1.0f);
    dc_tensor *shift = dc_slice(ctx, p, co, co);
    h = dc_nn_group_norm_forward(ctx, &r->norm2, h);
    h = dc_mul(ctx, h, dc_reshape(ctx, scale, DC_SHAPE(n, 1, 1, co)));
    return dc_unet_activation(ctx, r->act, dc_add(ctx, h, dc_reshape(ctx, shift, DC_SHAPE(n, 1, 1, co))));
}

/* x [N, H, W, C], temb = act(emb) [N or 1, T] -> [N, H', W', Cout] (H' = H
 * but for a resampling resnet). Without a tape conv1's and conv2's outputs
 * take the place of their inputs' norms, so the block holds at most three
 * maps besides x (a 512x512 VAE decode: 640 MB instead of 1.1 GB). */
static dc_tensor *resnet_body(dc_ctx *ctx, const dc_unet_resnet *r, dc_tensor *x,
                              dc_tensor *temb) {
    dc_tensor *x2 = resnet_resample(ctx, r, x);
    size_t mark = dc_mark(ctx);
    dc_tensor *h = resnet_resample(ctx, r, dc_unet_norm_act(ctx, &r->norm1, r->act, x));
    h = dc_keep(ctx, mark, dc_nn_conv2d_forward(ctx, &r->conv1, h));
    h = dc_dropout(ctx, add_time(ctx, r, h, temb), r->dropout);
    h = dc_keep(ctx, mark, dc_nn_conv2d_forward(ctx, &r->conv2, h));
    dc_tensor *skip = r->conv_shortcut.weight ? dc_nn_conv2d_forward(ctx, &r->conv_shortcut, x2) : x2;
    h = dc_add(ctx, skip, h);
    return r->output_scale_factor == 1.0f ? h : dc_scale(ctx, h, 1.0f / r->output_scale_factor);
}

dc_tensor *dc_unet_resnet_forward(dc_ctx *ctx, const dc_unet_resnet *r, dc_tensor *x,
                                  dc_tensor *temb) {
    size_t mark = dc_mark(ctx);
    return dc_keep(ctx, mark, resnet_body(ctx, r, x, temb));
}

/* Self-attention over the H*W positions of x [N, H, W, C]: an NHWC map is
 * already the token sequence [N, H*W, C]. */
static dc_tensor *attention_body(dc_ctx *ctx, const dc_unet_attention *a, dc_tensor *x) {
    if (!x)
        return NULL;
    int64_t n = x->shape[0], len = x->shape[1] * x->shape[2], ch = x->shape[3];
    dc_tensor *s = dc_reshape(ctx, x, DC_SHAPE(n, len, ch));
    if (a->group_norm.weight)
        s = dc_nn_group_norm_forward(ctx, &a->group_norm, s);
    dc_tensor *q = dc_nn_linear_forward(ctx, &a->to_q, s);
    dc_tensor *k = dc_nn_linear_forward(ctx, &a->to_k, s);
    dc_tensor *v = dc_nn_linear_forward(ctx, &a->to_v, s);
    dc_tensor *o = dc_attention(ctx, q, k, v, a->heads, false, 0.0f); /* 1/sqrt(head_dim) */
    o = dc_nn_linear_forward(ctx, &a->to_out, o);
    o = dc_add(ctx, dc_reshape(ctx, o, x->ndim, x->shape), x);
    return a->rescale_output_factor == 1.0f ? o : dc_scale(ctx, o, 1.0f / a->rescale_output_factor);
}

dc_tensor *dc_unet_attention_forward(dc_ctx *ctx, const dc_unet_attention *a, dc_tensor *x) {
    size_t mark = dc_mark(ctx);
    return dc_keep(ctx, mark, attention_body(ctx, a, x));
}

static dc_tensor *resnet_fn(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    return dc_unet_resnet_forward(ctx, *(const dc_unet_resnet *const *)args, in[0], in[1]);
}

dc_tensor *dc_unet_resnet_block(dc_ctx *ctx, const dc_unet_resnet *r, dc_tensor *x, dc_tensor *temb,
                                bool checkpoint) {
    if (!checkpoint)
        return dc_unet_resnet_forward(ctx, r, x, temb);
    return dc_checkpoint(ctx, resnet_fn, &r, sizeof r, 2, (dc_tensor *[]){x, temb});
}

static dc_tensor *attention_fn(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    return dc_unet_attention_forward(ctx, *(const dc_unet_attention *const *)args, in[0]);
}

dc_tensor *dc_unet_attention_block(dc_ctx *ctx, const dc_unet_attention *a, dc_tensor *x,
                                   bool checkpoint) {
    if (!checkpoint)
        return dc_unet_attention_forward(ctx, a, x);
    return dc_checkpoint(ctx, attention_fn, &a, sizeof a, 1, (dc_tensor *[]){x});
}

/* From concatenations along the last dimension of reshaped views. */
dc_tensor *dc_unet_pad_bottom_right(dc_ctx *ctx, dc_tensor *x) {
    if (!x)
        return NULL;
    int64_t n = x->shape[0], h = x->shape[1], w = x->shape[2], c = x->shape[3];
    dc_tensor *rows = dc_reshape(ctx, x, DC_SHAPE(n * h, w * c));
    rows = dc_concat(ctx, rows, zeros(ctx, n * h, c));
    dc_tensor *img = dc_reshape(ctx, rows, DC_SHAPE(n, h * (w + 1) * c));
    img = dc_concat(ctx, img, zeros(ctx, n, (w + 1) * c));
    return dc_reshape(ctx, img, DC_SHAPE(n, h + 1, w + 1, c));
}
