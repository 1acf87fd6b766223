/* Ops: reshape, broadcast add/sub/mul, affine, sum, mean. */
#include "cpu/elementwise.h"
#include "cuda/elementwise.h"
#include "op_util.h"

#include <string.h>

/* ---- reshape ---- */

static int reshape_backward(dc_ctx *ctx, dc_node *n) {
    if (grad_adopt(ctx, n->in[0], n->out))
        return 0;
    float *dx = grad_of(ctx, n->in[0]);
    if (dx)
        DC_KERNEL(ctx, affine_backward, F32C(n->out->grad), dx, n->out->numel, 1.0f);
    return dc_ctx_status(ctx);
}

dc_tensor *dc_reshape(dc_ctx *ctx, dc_tensor *x, int ndim, const int64_t *shape) {
    if (!op_ok_any(ctx, DC_OP_RESHAPE, 1, x))
        return NULL;
    if (ndim < 1 || ndim > DC_MAX_DIMS || dc_shape_numel(ndim, shape) != x->numel) {
        char a[64], b[64];
        return op_fail(ctx, DC_OP_RESHAPE, "cannot view %s as %s",
                       dc_shape_str(a, sizeof a, x->ndim, x->shape),
                       dc_shape_str(b, sizeof b, ndim, shape));
    }
    dc_tensor *out = dc_arena_alloc(&ctx->meta, sizeof *out);
    if (!out)
        return op_fail(ctx, DC_OP_RESHAPE, "%s", dc_error());
    *out = *x;
    out->grad = NULL;
    out->requires_grad = false;
    out->ndim = ndim;
    memcpy(out->shape, shape, (size_t)ndim * sizeof *shape);
    op_record(ctx, DC_OP_RESHAPE, reshape_backward, out, x, NULL, NULL);
    return out;
}

/* ---- add, sub, mul with broadcasting ---- */

/* Pad a's and b's shapes to 4 dims (aligned right); false when b does not broadcast to a. */
static bool broadcast_shapes(const dc_tensor *a, const dc_tensor *b, int64_t as[4], int64_t bs[4]) {
    if (b->ndim > a->ndim)
        return false;
    for (int d = 0; d < 4; d++) {
        int ia = d - (4 - a->ndim), ib = d - (4 - b->ndim);
        as[d] = ia >= 0 ? a->shape[ia] : 1;
        bs[d] = ib >= 0 ? b->shape[ib] : 1;
        if (bs[d] != 1 && bs[d] != as[d])
            return false;
    }
    return true;
}

static cpu_binary_kind binary_kind(dc_op op) {
    return op == DC_OP_ADD ? CPU_ADD : op == DC_OP_SUB ? CPU_SUB : CPU_MUL;
}

/* The gradient of a (of b when `of_b`) written whole into a buffer of its
 * shape that holds nothing yet: dout, -dout for sub's b, or dout times the
 * other operand for mul (b broadcast as in the forward; for b's gradient a
 * has b's shape). */
static void binary_grad_write(dc_ctx *ctx, dc_node *n, bool of_b, float *d, const int64_t as[4],
                              const int64_t bs[4]) {
    const float *dout = F32C(n->out->grad);
    if (n->op == DC_OP_MUL)
        DC_KERNEL(ctx, binary_forward, CPU_MUL, d, dout, F32C(n->in[of_b ? 0 : 1]), as,
                  of_b ? as : bs);
    else
        DC_KERNEL(ctx, affine_forward, d, dout, n->out->numel,
                  of_b && n->op == DC_OP_SUB ? -1.0f : 1.0f, 0.0f);
}

/* A gradient buffer made here is written whole (binary_grad_write) instead of
 * zeroed and added to, except b's when b is broadcast (a sum over a's shape). */
static int binary_backward(dc_ctx *ctx, dc_node *n) {
    int64_t as[4], bs[4];
    broadcast_shapes(n->in[0], n->in[1], as, bs);
    /* a has out's shape: for add and sub its gradient is out's own. When b
     * is a too, db then adds into that same buffer, element by element. */
    bool adopted = n->op != DC_OP_MUL && grad_adopt(ctx, n->in[0], n->out);
    bool fresh_a = false, fresh_b = false, b_whole = n->in[1]->numel == n->out->numel;
    float *da = adopted ? NULL : grad_of_fresh(ctx, n->in[0], &fresh_a);
    float *db = b_whole ? grad_of_fresh(ctx, n->in[1], &fresh_b) : grad_of(ctx, n->in[1]);
    if (ctx->failed)
        return -1;
    if (fresh_a) {
        binary_grad_write(ctx, n, false, da, as, bs);
        da = NULL;
    }
    if (fresh_b) {
        binary_grad_write(ctx, n, true, db, as, bs);
        db = NULL;
    }
    if (da || db)
        DC_KERNEL(ctx, binary_backward, binary_kind(n->op), F32C(n->out->grad), F32C(n->in[0]),
                  F32C(n->in[1]), da, db, as, bs);
    return 0;
}

static dc_tensor *binary(dc_ctx *ctx, dc_op op, dc_tensor *a, dc_tensor *b) {
    if (!op_ok(ctx, op, 2, a, b))
        return NULL;
    int64_t as[4], bs[4];
    if (!broadcast_shapes(a, b, as, bs)) {
        char sa[64], sb[64];
        return op_fail(ctx, op, "%s does not broadcast to %s",
                       dc_shape_str(sb, sizeof sb, b->ndim, b->shape),
                       dc_shape_str(sa, sizeof sa, a->ndim, a->shape));
    }
    dc_tensor *out = op_out_like(ctx, a);
    if (!out)
        return NULL;
    DC_KERNEL(ctx, binary_forward, binary_kind(op), F32(out), F32C(a), F32C(b), as, bs);
    op_record(ctx, op, binary_backward, out, a, b, NULL);
    return out;
}

dc_tensor *dc_add(dc_ctx *ctx, dc_tensor *a, dc_tensor *b) { return binary(ctx, DC_OP_ADD, a, b); }
dc_tensor *dc_sub(dc_ctx *ctx, dc_tensor *a, dc_tensor *b) { return binary(ctx, DC_OP_SUB, a, b); }
dc_tensor *dc_mul(dc_ctx *ctx, dc_tensor *a, dc_tensor *b) { return binary(ctx, DC_OP_MUL, a, b); }

/* ---- affine ---- */

static int affine_backward(dc_ctx *ctx, dc_node *n) {
    float *dx = grad_of(ctx, n->in[0]);
    if (dx)
        DC_KERNEL(ctx, affine_backward, F32C(n->out->grad), dx, n->out->numel, n->farg[0]);
    return dc_ctx_status(ctx);
}

dc_tensor *dc_affine(dc_ctx *ctx, dc_tensor *x, float alpha, float beta) {
    if (!op_ok(ctx, DC_OP_AFFINE, 1, x))
        return NULL;
    dc_tensor *out = op_out_like(ctx, x);
    if (!out)
        return NULL;
    DC_KERNEL(ctx, affine_forward, F32(out), F32C(x), x->numel, alpha, beta);
    dc_node *n = op_record(ctx, DC_OP_AFFINE, affine_backward, out, x, NULL, NULL);
    if (n)
        n->farg[0] = alpha;
    return out;
}

/* ---- sum, mean ---- */

static int reduce_backward(dc_ctx *ctx, dc_node *n) {
    float *dx = grad_of(ctx, n->in[0]);
    if (dx)
        DC_KERNEL(ctx, fill_add, dx, n->in[0]->numel, F32C(n->out->grad),
                  n->op == DC_OP_MEAN ? (float)n->in[0]->numel : 1.0f);
    return dc_ctx_status(ctx);
}

static dc_tensor *reduce(dc_ctx *ctx, dc_op op, dc_tensor *x) {
    if (!op_ok(ctx, op, 1, x))
        return NULL;
    if (x->numel == 0)
        return op_fail(ctx, op, "empty tensor");
    dc_tensor *out = op_out(ctx, DC_F32, DC_SHAPE(1));
    if (!out)
        return NULL;
    DC_KERNEL(ctx, sum_forward, F32(out), F32C(x), x->numel,
              op == DC_OP_MEAN ? (double)x->numel : 1.0);
    op_record(ctx, op, reduce_backward, out, x, NULL, NULL);
    return out;
}

dc_tensor *dc_sum(dc_ctx *ctx, dc_tensor *x) { return reduce(ctx, DC_OP_SUM, x); }
dc_tensor *dc_mean(dc_ctx *ctx, dc_tensor *x) { return reduce(ctx, DC_OP_MEAN, x); }
