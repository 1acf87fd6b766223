/* Ops: linear (x @ w^T + b) and matmul (plain and batched).
 *
 * On the CPU a linear layer runs as the 1x1 convolution of `samples` images
 * of 1 x M / samples pixels (cpu/conv.h): where the CPU has AVX2 or AVX-512
 * the direct kernels take it, 3 to 7 times faster than OpenBLAS at the sizes
 * of attention blocks (K and N of 32 to 64 over thousands of rows, where
 * packing the operands of each call cost more than the product), and
 * batch-invariant by construction; elsewhere the conv's GEMM way runs it.
 * Fewer rows per sample (CPU_LINEAR_FEW_ROWS: a decoder's new tokens, time
 * embeddings) go to the few-rows kernel, GPUs to cuBLAS. The threshold is per
 * sample, not per call, so that a sample takes the same kernels in any batch. */
#include "cpu/conv.h"
#include "cpu/gemm.h"
#include "cuda/gemm.h"
#include "op_util.h"

#include <string.h>

/* ---- linear ---- */

/* x [M, K] as `samples` images [1, M / samples, K], w [N, K] as [N, 1, 1, K]. */
static cpu_conv_geom pointwise(int64_t samples, int64_t M, int64_t K, int64_t N) {
    int64_t rows = M / samples;
    return (cpu_conv_geom){.n = samples, .h = 1, .w = rows, .cin = K, .cout = N, .kh = 1, .kw = 1,
                           .stride = 1, .pad = 0, .ho = 1, .wo = rows};
}

/* Scratch for the CPU's pointwise convolution g: NULL with the context failed. */
static float *pointwise_scratch(dc_ctx *ctx, const cpu_conv_geom *g, int64_t *floats, size_t *mark) {
    *floats = cpu_conv2d_scratch_floats(g, CPU_CONV_SCRATCH_BYTES);
    return op_scratch_take(ctx, (size_t)*floats * sizeof(float), mark);
}

/* Whether the CPU's pointwise convolution takes an M x K x N product of
 * `samples` equal groups of rows (empty ones go to the GEMM kernels, which
 * know what an empty sum is). */
static bool as_pointwise(const dc_ctx *ctx, int64_t samples, int64_t M, int64_t K, int64_t N) {
    return ctx->device == DC_CPU && M / samples >= CPU_LINEAR_FEW_ROWS && K > 0 && N > 0;
}

/* x [M, K] (leading dims folded into M = iarg[0]; iarg[1] samples), w [N, K], b [N] or NULL. */
static int linear_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *x = n->in[0], *w = n->in[1], *b = n->in[2];
    int64_t M = n->iarg[0], K = w->shape[1], N = w->shape[0];
    bool dx_fresh = false, pw = as_pointwise(ctx, n->iarg[1], M, K, N);
    float *dx = pw ? grad_of_fresh(ctx, x, &dx_fresh) : grad_of(ctx, x);
    float *dw = grad_of(ctx, w), *db = grad_of(ctx, b);
    if (ctx->failed)
        return -1;
    if (!pw) {
        DC_KERNEL(ctx, linear_backward, F32C(n->out->grad), F32C(x), F32C(w), dx, dw, db, M, K, N);
        return 0;
    }
    cpu_conv_geom g = pointwise(n->iarg[1], M, K, N);
    int64_t floats;
    size_t mark;
    float *scratch = pointwise_scratch(ctx, &g, &floats, &mark);
    if (!scratch)
        return -1;
    cpu_conv2d_backward(&g, F32C(n->out->grad), F32C(x), F32C(w), dx, dx_fresh, dw, db, scratch,
                        floats);
    op_scratch_release(ctx, mark);
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

/* The kernels of few rows per sample (or the GPU's): a packed weight is
 * unpacked into scratch first (it is small: a time embedding's). */
static bool linear_rows(dc_ctx *ctx, dc_tensor *out, const dc_tensor *x, const dc_tensor *w,
                        const dc_tensor *b, int64_t M, int64_t K, int64_t N, int64_t samples) {
    size_t mark = 0;
    const float *wf = F32C(w);
    if (w->packed) {
        float *plain = op_scratch_take(ctx, (size_t)(N * K) * sizeof(float), &mark);
        if (!plain)
            return false;
        if (w->dtype == DC_F16)
            cpu_conv_unpack_half(w->data, plain, N, K);
        else
            cpu_conv_unpack(wf, plain, N, K);
        wf = plain;
    }
    DC_KERNEL(ctx, linear_forward, F32(out), F32C(x), wf, b ? F32C(b) : NULL, M, K, N, samples);
    if (w->packed)
        op_scratch_release(ctx, mark);
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
    int64_t samples = x->ndim > 1 && x->shape[0] > 0 ? x->shape[0] : 1;
    if (!as_pointwise(ctx, samples, M, K, N)) {
        if (!linear_rows(ctx, out, x, w, b, M, K, N, samples))
            return NULL;
    } else {
        cpu_conv_geom g = pointwise(samples, M, K, N);
        g.packed = w->packed;
        g.half = w->packed && w->dtype == DC_F16;
        int64_t floats;
        size_t mark;
        float *scratch = pointwise_scratch(ctx, &g, &floats, &mark);
        if (!scratch)
            return NULL;
        cpu_conv2d_forward(&g, F32(out), F32C(x), F32C(w), b ? F32C(b) : NULL, scratch, floats);
        op_scratch_release(ctx, mark);
    }
    dc_node *n = op_record(ctx, DC_OP_LINEAR, linear_backward, out, x, w, b);
    if (n)
        n->iarg[0] = M, n->iarg[1] = samples;
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
