/* Ops: group normalisation (alone or followed by a SiLU) and layer
 * normalisation, each with an optional per-channel affine w [C], b [C]. All
 * run the group-norm kernels: a layer norm treats every row of C channels as
 * one sample with one group. The
 * forward saves mean and rstd per (sample, group) in node->saved[0]: [N, G, 2]
 * for a group norm, x's shape with C replaced by 2 for a layer norm. */
#include "cpu/norm.h"
#include "cuda/norm.h"
#include "op_util.h"

#include <inttypes.h>

/* The kernels' view of x: N samples of S positions of C channels in G groups. */
typedef struct {
    int64_t N, S, C, G;
} norm_dims;

static norm_dims dims_of(dc_op op, const dc_tensor *x, int64_t groups) {
    int64_t C = x->shape[x->ndim - 1];
    if (op == DC_OP_LAYER_NORM)
        return (norm_dims){x->numel / C, 1, C, 1};
    return (norm_dims){x->shape[0], x->numel / (x->shape[0] * C), C, groups};
}

static int norm_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2];
    float *dx = grad_of(ctx, x), *dw = grad_of(ctx, w), *db = grad_of(ctx, b);
    norm_dims d = dims_of(n->op, x, n->iarg[0]);
    bool silu = n->op == DC_OP_GROUP_NORM_SILU;
    size_t mark;
    void *work = op_scratch_take(ctx, DC_KERNEL(ctx, group_norm_work_bytes, d.N, d.S, d.C, silu),
                                 &mark);
    if (ctx->failed)
        return -1;
    DC_KERNEL(ctx, group_norm_backward, F32C(n->out->grad), F32C(x), w ? F32C(w) : NULL,
              b ? F32C(b) : NULL, F32C(n->saved[0]), dx, dw, db, work, d.N, d.S, d.C, d.G, silu);
    op_scratch_release(ctx, mark);
    return 0;
}

/* Absent w and b stand in as x, so the argument numbers of messages stay 1, 2, 3. */
static bool args_ok(dc_ctx *ctx, dc_op op, dc_tensor *x, dc_tensor *w, dc_tensor *b) {
    if (!op_ok(ctx, op, 3, x, w ? w : x, b ? b : x))
        return false;
    if (x->numel == 0) {
        char s[64];
        op_fail(ctx, op, "x is %s: empty", dc_shape_str(s, sizeof s, x->ndim, x->shape));
        return false;
    }
    return true;
}

/* w and b, where given, must be [C]. */
static bool affine_ok(dc_ctx *ctx, dc_op op, const dc_tensor *w, const dc_tensor *b, int64_t C) {
    const dc_tensor *p[2] = {w, b};
    for (int i = 0; i < 2; i++)
        if (p[i] && (p[i]->ndim != 1 || p[i]->shape[0] != C)) {
            char s[64];
            op_fail(ctx, op, "%s is %s, expected [%" PRId64 "] (the channels of x)", i ? "b" : "w",
                    dc_shape_str(s, sizeof s, p[i]->ndim, p[i]->shape), C);
            return false;
        }
    return true;
}

/* What both ops share once x's shape is known good: check w, b and eps,
 * normalise, record. stats has the given shape (2 * N * G elements). */
static dc_tensor *normalise(dc_ctx *ctx, dc_op op, dc_tensor *x, dc_tensor *w, dc_tensor *b,
                            float eps, norm_dims d, int stats_ndim, const int64_t *stats_shape) {
    if (!affine_ok(ctx, op, w, b, d.C))
        return NULL;
    if (!(eps >= 0.0f)) /* a negative eps would turn small variances into NaN */
        return op_fail(ctx, op, "eps %g must be >= 0", (double)eps);
    dc_tensor *out = op_out_like(ctx, x);
    dc_tensor *stats = op_out(ctx, DC_F32, stats_ndim, stats_shape);
    if (!out || !stats)
        return NULL;
    DC_KERNEL(ctx, group_norm_forward, F32(out), F32(stats), F32C(x), w ? F32C(w) : NULL,
              b ? F32C(b) : NULL, d.N, d.S, d.C, d.G, eps, op == DC_OP_GROUP_NORM_SILU);
    dc_node *n = op_record(ctx, op, norm_backward, out, x, w, b);
    if (n) {
        n->saved[0] = stats;
        n->iarg[0] = d.G;
    }
    return out;
}

static dc_tensor *group_norm(dc_ctx *ctx, dc_op op, dc_tensor *x, int groups, dc_tensor *w,
                             dc_tensor *b, float eps) {
    if (!args_ok(ctx, op, x, w, b))
        return NULL;
    if (x->ndim < 2) {
        char s[64];
        return op_fail(ctx, op, "x is %s, expected [N, ..., C]",
                       dc_shape_str(s, sizeof s, x->ndim, x->shape));
    }
    int64_t C = x->shape[x->ndim - 1];
    if (groups < 1 || C % groups)
        return op_fail(ctx, op, "%d groups do not divide %" PRId64 " channels", groups, C);
    norm_dims d = dims_of(op, x, groups);
    return normalise(ctx, op, x, w, b, eps, d, DC_SHAPE(d.N, d.G, 2));
}

dc_tensor *dc_group_norm(dc_ctx *ctx, dc_tensor *x, int groups, dc_tensor *w, dc_tensor *b,
                         float eps) {
    return group_norm(ctx, DC_OP_GROUP_NORM, x, groups, w, b, eps);
}

dc_tensor *dc_group_norm_silu(dc_ctx *ctx, dc_tensor *x, int groups, dc_tensor *w, dc_tensor *b,
                              float eps) {
    return group_norm(ctx, DC_OP_GROUP_NORM_SILU, x, groups, w, b, eps);
}

dc_tensor *dc_layer_norm(dc_ctx *ctx, dc_tensor *x, dc_tensor *w, dc_tensor *b, float eps) {
    const dc_op op = DC_OP_LAYER_NORM;
    if (!args_ok(ctx, op, x, w, b))
        return NULL;
    int64_t stats_shape[DC_MAX_DIMS]; /* x's shape with the channels replaced by (mean, rstd) */
    for (int i = 0; i < x->ndim; i++)
        stats_shape[i] = x->shape[i];
    stats_shape[x->ndim - 1] = 2;
    return normalise(ctx, op, x, w, b, eps, dims_of(op, x, 1), x->ndim, stats_shape);
}
