/* Ops: nearest 2x upsampling, and concatenation and slices of channels. */
#include "cpu/resample.h"
#include "cuda/resample.h"
#include "op_util.h"

/* Elements of x before its last dimension: the rows of a [rows, C] view. */
static int64_t rows_of(const dc_tensor *x) { return dc_shape_numel(x->ndim - 1, x->shape); }

static int64_t channels_of(const dc_tensor *x) { return x->shape[x->ndim - 1]; }

/* ---- upsample2x ---- */

static int upsample2x_backward(dc_ctx *ctx, dc_node *n) {
    const dc_tensor *x = n->in[0];
    float *dx = grad_of(ctx, n->in[0]);
    if (dx)
        DC_KERNEL(ctx, upsample2x_backward, F32C(n->out->grad), dx, x->shape[0], x->shape[1],
                  x->shape[2], x->shape[3]);
    return dc_ctx_status(ctx);
}

dc_tensor *dc_upsample2x(dc_ctx *ctx, dc_tensor *x) {
    if (!op_ok(ctx, DC_OP_UPSAMPLE2X, 1, x))
        return NULL;
    if (x->ndim != 4) {
        char s[64];
        return op_fail(ctx, DC_OP_UPSAMPLE2X, "expected x [N, H, W, C], got %s",
                       dc_shape_str(s, sizeof s, x->ndim, x->shape));
    }
    const int64_t *xs = x->shape;
    dc_tensor *out = op_out(ctx, DC_F32, DC_SHAPE(xs[0], 2 * xs[1], 2 * xs[2], xs[3]));
    if (!out)
        return NULL;
    DC_KERNEL(ctx, upsample2x_forward, F32(out), F32C(x), xs[0], xs[1], xs[2], xs[3]);
    op_record(ctx, DC_OP_UPSAMPLE2X, upsample2x_backward, out, x, NULL, NULL);
    return out;
}

/* ---- concat ---- */

/* A gradient buffer this backward makes is written whole with its slice of
 * out's gradient (no zeroing, no adding); one that exists is added to. The
 * up path of a UNet meets both kinds. */
static int concat_backward(dc_ctx *ctx, dc_node *n) {
    bool fresh_a, fresh_b;
    float *da = grad_of_fresh(ctx, n->in[0], &fresh_a), *db = grad_of_fresh(ctx, n->in[1], &fresh_b);
    if (ctx->failed)
        return -1;
    DC_KERNEL(ctx, concat_backward, F32C(n->out->grad), da, db, rows_of(n->in[0]),
              channels_of(n->in[0]), channels_of(n->in[1]), fresh_a, fresh_b);
    return 0;
}

/* a and b agree in every dimension but the last. */
static bool concat_compatible(const dc_tensor *a, const dc_tensor *b) {
    if (a->ndim != b->ndim || a->ndim < 1)
        return false;
    for (int d = 0; d < a->ndim - 1; d++)
        if (a->shape[d] != b->shape[d])
            return false;
    return true;
}

dc_tensor *dc_concat(dc_ctx *ctx, dc_tensor *a, dc_tensor *b) {
    if (!op_ok(ctx, DC_OP_CONCAT, 2, a, b))
        return NULL;
    if (!concat_compatible(a, b)) {
        char sa[64], sb[64];
        return op_fail(ctx, DC_OP_CONCAT, "%s and %s differ before the last dimension",
                       dc_shape_str(sa, sizeof sa, a->ndim, a->shape),
                       dc_shape_str(sb, sizeof sb, b->ndim, b->shape));
    }
    int64_t shape[DC_MAX_DIMS];
    for (int d = 0; d < a->ndim; d++)
        shape[d] = a->shape[d];
    shape[a->ndim - 1] += channels_of(b);
    dc_tensor *out = op_out(ctx, DC_F32, a->ndim, shape);
    if (!out)
        return NULL;
    DC_KERNEL(ctx, concat_forward, F32(out), F32C(a), F32C(b), rows_of(a), channels_of(a),
              channels_of(b));
    op_record(ctx, DC_OP_CONCAT, concat_backward, out, a, b, NULL);
    return out;
}

/* ---- slice ---- */

static int slice_backward(dc_ctx *ctx, dc_node *n) {
    float *dx = grad_of(ctx, n->in[0]);
    if (dx)
        DC_KERNEL(ctx, slice_backward, F32C(n->out->grad), dx, rows_of(n->in[0]),
                  channels_of(n->in[0]), n->iarg[0], channels_of(n->out));
    return dc_ctx_status(ctx);
}

dc_tensor *dc_slice(dc_ctx *ctx, dc_tensor *x, int64_t start, int64_t count) {
    if (!op_ok(ctx, DC_OP_SLICE, 1, x))
        return NULL;
    if (x->ndim < 1)
        return op_fail(ctx, DC_OP_SLICE, "x has no dimensions");
    int64_t c = channels_of(x);
    if (start < 0 || count < 1 || start > c || count > c - start)
        return op_fail(ctx, DC_OP_SLICE,
                       "start %lld, count %lld: not a nonempty range of the %lld channels",
                       (long long)start, (long long)count, (long long)c);
    int64_t shape[DC_MAX_DIMS];
    for (int d = 0; d < x->ndim; d++)
        shape[d] = x->shape[d];
    shape[x->ndim - 1] = count;
    dc_tensor *out = op_out(ctx, DC_F32, x->ndim, shape);
    if (!out)
        return NULL;
    DC_KERNEL(ctx, slice_forward, F32(out), F32C(x), rows_of(x), c, start, count);
    dc_node *n = op_record(ctx, DC_OP_SLICE, slice_backward, out, x, NULL, NULL);
    if (n)
        n->iarg[0] = start;
    return out;
}
