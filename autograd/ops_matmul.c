/* Ops: linear (x @ w^T + b) and matmul (plain and batched). */
#include "cpu/gemm.h"
#include "cuda/gemm.h"
#include "op_util.h"

#include <string.h>

/* ---- linear ---- */

/* x [M, K] (leading dims folded into M = iarg[0]), w [N, K], b [N] or NULL. */
static int linear_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2];
    float *dx = grad_of(ctx, x), *dw = grad_of(ctx, w), *db = grad_of(ctx, b);
    if (ctx->failed)
        return -1;
    DC_KERNEL(ctx, linear_backward, F32C(n->out->grad), F32C(x), F32C(w), dx, dw, db, n->iarg[0],
              w->shape[1], w->shape[0]);
    return 0;
}

/* True when x, w and b fit together; otherwise fails the op. */
static bool linear_shapes_ok(dc_ctx *ctx, const dc_tensor *x, const dc_tensor *w,
                             const dc_tensor *b) {
    char sx[64], sw[64], sb[64];
    dc_shape_str(sx, sizeof sx, x->ndim, x->shape);
    dc_shape_str(sw, sizeof sw, w->ndim, w->shape);
    if (w->ndim != 2)
        return op_fail(ctx, DC_OP_LINEAR, "weight %s is not 2-D [out, in]", sw);
    if (x->ndim < 1)
        return op_fail(ctx, DC_OP_LINEAR, "input %s has no feature dimension", sx);
    int64_t K = x->shape[x->ndim - 1];
    if (K != w->shape[1])
        return op_fail(ctx, DC_OP_LINEAR, "input %s has %lld features, weight %s expects %lld", sx,
                       (long long)K, sw, (long long)w->shape[1]);
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[0]))
        return op_fail(ctx, DC_OP_LINEAR, "bias %s does not match weight %s: expected [%lld]",
                       dc_shape_str(sb, sizeof sb, b->ndim, b->shape), sw, (long long)w->shape[0]);
    if (!cpu_gemm_fits(dc_shape_numel(x->ndim - 1, x->shape), w->shape[0], K))
        return op_fail(ctx, DC_OP_LINEAR, "input %s is too large for one BLAS call", sx);
    return true;
}

dc_tensor *dc_linear(dc_ctx *ctx, dc_tensor *x, dc_tensor *w, dc_tensor *b) {
    if (!op_ok(ctx, DC_OP_LINEAR, 2, x, w) || (b && !op_ok(ctx, DC_OP_LINEAR, 1, b)))
        return NULL;
    if (!linear_shapes_ok(ctx, x, w, b))
        return NULL;
    int64_t shape[DC_MAX_DIMS], N = w->shape[0], K = w->shape[1];
    int64_t M = dc_shape_numel(x->ndim - 1, x->shape);
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = N;
    dc_tensor *out = op_out(ctx, DC_F32, x->ndim, shape);
    if (!out)
        return NULL;
    /* the first dimension counts the samples, which must not affect each other */
    int64_t samples = x->ndim > 1 ? x->shape[0] : 1;
    DC_KERNEL(ctx, linear_forward, F32(out), F32C(x), F32C(w), b ? F32C(b) : NULL, M, K, N,
              samples);
    dc_node *n = op_record(ctx, DC_OP_LINEAR, linear_backward, out, x, w, b);
    if (n)
        n->iarg[0] = M;
    return out;
}

/* ---- matmul ---- */

/* a [B, M, K] @ b [B, K, N] (B = 1 for 2-D operands). */
static void matmul_dims(const dc_tensor *a, const dc_tensor *b, int64_t d[4]) {
    int o = a->ndim - 2;
    d[0] = o ? a->shape[0] : 1;
    d[1] = a->shape[o];
    d[2] = a->shape[o + 1];
    d[3] = b->shape[o + 1];
}

static int matmul_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *a = n->in[0], *b = n->in[1];
    float *da = grad_of(ctx, a), *db = grad_of(ctx, b);
    if (ctx->failed)
        return -1;
    int64_t d[4];
    matmul_dims(a, b, d);
    DC_KERNEL(ctx, matmul_backward, F32C(n->out->grad), F32C(a), F32C(b), da, db, d[0], d[1], d[2],
              d[3]);
    return 0;
}

dc_tensor *dc_matmul(dc_ctx *ctx, dc_tensor *a, dc_tensor *b) {
    if (!op_ok(ctx, DC_OP_MATMUL, 2, a, b))
        return NULL;
    char sa[64], sb[64];
    dc_shape_str(sa, sizeof sa, a->ndim, a->shape);
    dc_shape_str(sb, sizeof sb, b->ndim, b->shape);
    if (a->ndim != b->ndim || a->ndim < 2 || a->ndim > 3)
        return op_fail(ctx, DC_OP_MATMUL, "%s @ %s: expected two 2-D or two 3-D tensors", sa, sb);
    int o = a->ndim - 2;
    if (o && a->shape[0] != b->shape[0])
        return op_fail(ctx, DC_OP_MATMUL, "%s @ %s: batch sizes %lld and %lld differ", sa, sb,
                       (long long)a->shape[0], (long long)b->shape[0]);
    if (a->shape[o + 1] != b->shape[o])
        return op_fail(ctx, DC_OP_MATMUL, "%s @ %s: inner dimensions %lld and %lld differ", sa, sb,
                       (long long)a->shape[o + 1], (long long)b->shape[o]);
    int64_t d[4];
    matmul_dims(a, b, d);
    if (!cpu_gemm_fits(d[1], d[3], d[2]))
        return op_fail(ctx, DC_OP_MATMUL, "%s @ %s is too large for one BLAS call", sa, sb);
    int64_t shape[3] = {d[0], d[1], d[3]};
    dc_tensor *out = op_out(ctx, DC_F32, a->ndim, shape + 1 - o);
    if (!out)
        return NULL;
    DC_KERNEL(ctx, matmul_forward, F32(out), F32C(a), F32C(b), d[0], d[1], d[2], d[3]);
    op_record(ctx, DC_OP_MATMUL, matmul_backward, out, a, b, NULL);
    return out;
}
