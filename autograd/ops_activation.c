/* Ops: SiLU, exact GELU, Mish, quick GELU and softmax over the last dimension. */
#include "cpu/activation.h"
#include "cuda/activation.h"
#include "op_util.h"

/* ---- silu, gelu, mish, quick_gelu: pointwise, backward from the input ---- */

static int pointwise_backward(dc_ctx *ctx, dc_node *n) {
    float *dx = grad_of(ctx, n->in[0]);
    if (dx && n->op == DC_OP_SILU)
        DC_KERNEL(ctx, silu_backward, F32C(n->out->grad), F32C(n->in[0]), dx, n->out->numel);
    else if (dx && n->op == DC_OP_GELU)
        DC_KERNEL(ctx, gelu_backward, F32C(n->out->grad), F32C(n->in[0]), dx, n->out->numel);
    else if (dx && n->op == DC_OP_QUICK_GELU)
        DC_KERNEL(ctx, quick_gelu_backward, F32C(n->out->grad), F32C(n->in[0]), dx,
                  n->out->numel);
    else if (dx)
        DC_KERNEL(ctx, mish_backward, F32C(n->out->grad), F32C(n->in[0]), dx, n->out->numel);
    return dc_ctx_status(ctx);
}

static dc_tensor *pointwise(dc_ctx *ctx, dc_op op, dc_tensor *x) {
    if (!op_ok(ctx, op, 1, x))
        return NULL;
    dc_tensor *out = op_out_like(ctx, x);
    if (!out)
        return NULL;
    if (op == DC_OP_SILU)
        DC_KERNEL(ctx, silu_forward, F32(out), F32C(x), x->numel);
    else if (op == DC_OP_GELU)
        DC_KERNEL(ctx, gelu_forward, F32(out), F32C(x), x->numel);
    else if (op == DC_OP_QUICK_GELU)
        DC_KERNEL(ctx, quick_gelu_forward, F32(out), F32C(x), x->numel);
    else
        DC_KERNEL(ctx, mish_forward, F32(out), F32C(x), x->numel);
    op_record(ctx, op, pointwise_backward, out, x, NULL, NULL);
    return out;
}

dc_tensor *dc_silu(dc_ctx *ctx, dc_tensor *x) { return pointwise(ctx, DC_OP_SILU, x); }
dc_tensor *dc_gelu(dc_ctx *ctx, dc_tensor *x) { return pointwise(ctx, DC_OP_GELU, x); }
dc_tensor *dc_mish(dc_ctx *ctx, dc_tensor *x) { return pointwise(ctx, DC_OP_MISH, x); }
dc_tensor *dc_quick_gelu(dc_ctx *ctx, dc_tensor *x) {
    return pointwise(ctx, DC_OP_QUICK_GELU, x);
}

/* ---- softmax: backward from the output ---- */

static int softmax_backward(dc_ctx *ctx, dc_node *n) {
    float *dx = grad_of(ctx, n->in[0]);
    int64_t C = n->out->shape[n->out->ndim - 1];
    if (dx)
        DC_KERNEL(ctx, softmax_backward, F32C(n->out->grad), F32C(n->out), dx, n->out->numel / C,
                  C);
    return dc_ctx_status(ctx);
}

dc_tensor *dc_softmax(dc_ctx *ctx, dc_tensor *x) {
    if (!op_ok(ctx, DC_OP_SOFTMAX, 1, x))
        return NULL;
    if (x->numel == 0) {
        char s[64];
        return op_fail(ctx, DC_OP_SOFTMAX, "x is %s: empty",
                       dc_shape_str(s, sizeof s, x->ndim, x->shape));
    }
    dc_tensor *out = op_out_like(ctx, x);
    if (!out)
        return NULL;
    int64_t C = x->shape[x->ndim - 1];
    DC_KERNEL(ctx, softmax_forward, F32(out), F32C(x), x->numel / C, C);
    op_record(ctx, DC_OP_SOFTMAX, softmax_backward, out, x, NULL, NULL);
    return out;
}
