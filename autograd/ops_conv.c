/* Op: conv2d over NHWC images with [Cout, kh, kw, Cin] weights. */
#include "cpu/conv.h"
#include "cpu/gemm.h"
#include "cuda/conv.h"
#include "op_util.h"

/* x [N, H, W, Cin], w [Cout, kh, kw, Cin]; the shapes are already checked. */
static cpu_conv_geom conv_geom(const dc_tensor *x, const dc_tensor *w, int64_t stride, int64_t pad) {
    cpu_conv_geom g = {
        .n = x->shape[0], .h = x->shape[1], .w = x->shape[2], .cin = x->shape[3],
        .cout = w->shape[0], .kh = w->shape[1], .kw = w->shape[2],
        .stride = stride, .pad = pad,
    };
    g.ho = (g.h + 2 * pad - g.kh) / stride + 1;
    g.wo = (g.w + 2 * pad - g.kw) / stride + 1;
    return g;
}

/* in: x, w, b (or NULL); iarg: stride, pad. */
static int conv2d_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2];
    bool dx_fresh;
    float *dx = grad_of_fresh(ctx, x, &dx_fresh), *dw = grad_of(ctx, w), *db = grad_of(ctx, b);
    if (ctx->failed)
        return -1;
    cpu_conv_geom g = conv_geom(x, w, n->iarg[0], n->iarg[1]);
    int64_t floats = DC_KERNEL(ctx, conv2d_scratch_floats, &g, CPU_CONV_SCRATCH_BYTES);
    size_t mark;
    float *scratch = op_scratch_take(ctx, (size_t)floats * sizeof(float), &mark);
    if (!scratch)
        return -1;
    DC_KERNEL(ctx, conv2d_backward, &g, F32C(n->out->grad), F32C(x), F32C(w), dx, dx_fresh, dw, db,
              scratch, floats);
    op_scratch_release(ctx, mark);
    return 0;
}

/* True when the arguments make a convolution; otherwise fails the op. */
static bool conv_args_ok(dc_ctx *ctx, const dc_tensor *x, const dc_tensor *w, const dc_tensor *b,
                         int stride, int pad) {
    char sx[64], sw[64], sb[64];
    dc_shape_str(sx, sizeof sx, x->ndim, x->shape);
    dc_shape_str(sw, sizeof sw, w->ndim, w->shape);
    if (x->ndim != 4)
        return op_fail(ctx, DC_OP_CONV2D, "input %s is not 4-D [N, H, W, Cin]", sx);
    if (w->ndim != 4 || w->numel == 0)
        return op_fail(ctx, DC_OP_CONV2D, "weight %s is not a non-empty [Cout, kh, kw, Cin]", sw);
    if (x->shape[3] != w->shape[3])
        return op_fail(ctx, DC_OP_CONV2D, "input %s has %lld channels, weight %s expects %lld", sx,
                       (long long)x->shape[3], sw, (long long)w->shape[3]);
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[0]))
        return op_fail(ctx, DC_OP_CONV2D, "bias %s does not match weight %s: expected [%lld]",
                       dc_shape_str(sb, sizeof sb, b->ndim, b->shape), sw, (long long)w->shape[0]);
    if (stride < 1 || pad < 0)
        return op_fail(ctx, DC_OP_CONV2D, "stride %d, padding %d: need stride >= 1, padding >= 0",
                       stride, pad);
    int64_t hp = x->shape[1] + 2 * (int64_t)pad, wp = x->shape[2] + 2 * (int64_t)pad;
    if (w->shape[1] > hp || w->shape[2] > wp)
        return op_fail(ctx, DC_OP_CONV2D,
                       "kernel %lldx%lld is larger than the padded input %lldx%lld (input %s, padding %d)",
                       (long long)w->shape[1], (long long)w->shape[2], (long long)hp,
                       (long long)wp, sx, pad);
    cpu_conv_geom g = conv_geom(x, w, stride, pad);
    if (!cpu_gemm_fits(g.n * g.ho * g.wo, g.cout, g.kh * g.kw * g.cin))
        return op_fail(ctx, DC_OP_CONV2D, "input %s with weight %s is too large for BLAS", sx, sw);
    return true;
}

dc_tensor *dc_conv2d(dc_ctx *ctx, dc_tensor *x, dc_tensor *w, dc_tensor *b, int stride, int pad) {
    if (!op_ok(ctx, DC_OP_CONV2D, 2, x, w) || (b && !op_ok(ctx, DC_OP_CONV2D, 1, b)))
        return NULL;
    if (!conv_args_ok(ctx, x, w, b, stride, pad))
        return NULL;
    cpu_conv_geom g = conv_geom(x, w, stride, pad);
    g.packed = w->packed;
    g.half = w->packed && w->dtype == DC_F16;
    dc_tensor *out = op_out(ctx, DC_F32, DC_SHAPE(g.n, g.ho, g.wo, g.cout));
    if (!out)
        return NULL;
    int64_t floats = DC_KERNEL(ctx, conv2d_scratch_floats, &g, CPU_CONV_SCRATCH_BYTES);
    size_t mark;
    float *scratch = op_scratch_take(ctx, (size_t)floats * sizeof(float), &mark);
    if (!scratch)
        return NULL;
    DC_KERNEL(ctx, conv2d_forward, &g, F32(out), F32C(x), F32C(w), b ? F32C(b) : NULL, scratch,
              floats);
    op_scratch_release(ctx, mark);
    dc_node *n = op_record(ctx, DC_OP_CONV2D, conv2d_backward, out, x, w, b);
    if (n) {
        n->iarg[0] = stride;
        n->iarg[1] = pad;
    }
    return out;
}
