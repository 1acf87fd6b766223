/* Op: multi-head scaled-dot-product attention as one op. Forward keeps the
 * probabilities P [N, heads, Lq, Lk] on the node when it records one, so
 * backward needs no recomputation; without a tape P lives only in per-thread
 * scratch. Causal attention needs Lk >= Lq: query i sees keys 0..i + Lk - Lq,
 * the last Lq keys being the queries' own positions (a decoder's new tokens
 * after Lk - Lq cached ones; Lk == Lq is the plain causal mask). */
#include "cpu/attention.h"
#include "cuda/attention.h"
#include "op_util.h"

#include <limits.h>
#include <math.h>

static cpu_attention_dims dims_of(const dc_tensor *q, const dc_tensor *k, int heads, bool causal,
                                  float scale) {
    int d = (int)(q->shape[2] / heads);
    return (cpu_attention_dims){
        .n = q->shape[0],
        .lq = (int)q->shape[1],
        .lk = (int)k->shape[1],
        .heads = heads,
        .d = d,
        .causal = causal,
        .scale = scale != 0.0f ? scale : 1.0f / sqrtf((float)d),
    };
}

/* Why q, k, v and heads cannot be attended, or NULL when they can. */
static const char *shape_problem(const dc_tensor *q, const dc_tensor *k, const dc_tensor *v,
                                 int heads, bool causal) {
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3)
        return "q, k and v must be [N, L, C]";
    if (q->numel == 0 || k->numel == 0 || v->numel == 0)
        return "empty tensor";
    if (k->shape[0] != q->shape[0] || v->shape[0] != q->shape[0])
        return "batch sizes differ";
    if (k->shape[2] != q->shape[2] || v->shape[2] != q->shape[2])
        return "channel counts differ";
    if (v->shape[1] != k->shape[1])
        return "k and v lengths differ";
    if (heads < 1)
        return "heads must be at least 1";
    if (q->shape[2] % heads != 0)
        return "the channel count does not split into equal heads";
    if (causal && k->shape[1] < q->shape[1])
        return "causal attention needs at least as many keys as queries";
    if (q->shape[1] > INT_MAX || k->shape[1] > INT_MAX || q->shape[2] > INT_MAX)
        return "a length or channel count beyond what BLAS takes";
    return NULL;
}

static int attention_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *q = n->in[0], *k = n->in[1], *v = n->in[2];
    cpu_attention_dims a = dims_of(q, k, (int)n->iarg[0], n->iarg[1] != 0, n->farg[0]);
    /* q, k and v may be one tensor: grad_of then hands out one buffer, and the
     * kernel adds all three gradients into it. */
    float *dq = grad_of(ctx, q), *dk = grad_of(ctx, k), *dv = grad_of(ctx, v);
    float *work = NULL;
    size_t mark = ctx->act.used;
    if (dq || dk)
        work = op_scratch_take(ctx, (size_t)DC_KERNEL(ctx, attention_scratch, &a) * sizeof(float),
                               &mark);
    if (ctx->failed)
        return -1;
    DC_KERNEL(ctx, attention_backward, &a, F32C(n->out->grad), F32C(n->saved[0]), F32C(q), F32C(k),
              F32C(v), dq, dk, dv, work);
    op_scratch_release(ctx, mark);
    return 0;
}

dc_tensor *dc_attention(dc_ctx *ctx, dc_tensor *q, dc_tensor *k, dc_tensor *v, int heads,
                        bool causal, float scale) {
    if (!op_ok(ctx, DC_OP_ATTENTION, 3, q, k, v))
        return NULL;
    const char *problem = shape_problem(q, k, v, heads, causal);
    if (problem) {
        char sq[64], sk[64], sv[64];
        return op_fail(ctx, DC_OP_ATTENTION, "%s (q %s, k %s, v %s, %d heads%s)", problem,
                       dc_shape_str(sq, sizeof sq, q->ndim, q->shape),
                       dc_shape_str(sk, sizeof sk, k->ndim, k->shape),
                       dc_shape_str(sv, sizeof sv, v->ndim, v->shape), heads,
                       causal ? ", causal" : "");
    }
    cpu_attention_dims a = dims_of(q, k, heads, causal, scale);
    dc_tensor *out = op_out_like(ctx, q);
    dc_node *n = op_record(ctx, DC_OP_ATTENTION, attention_backward, out, q, k, v);
    if (ctx->failed)
        return NULL;
    float *p;
    if (n) {
        n->saved[0] = op_out(ctx, DC_F32, DC_SHAPE(a.n, a.heads, a.lq, a.lk));
        n->iarg[0] = heads;
        n->iarg[1] = causal;
        n->farg[0] = a.scale;
        p = n->saved[0] ? F32(n->saved[0]) : NULL;
    } else {
        p = op_scratch(ctx, (size_t)DC_KERNEL(ctx, attention_scratch, &a) * sizeof(float));
    }
    if (!p)
        return NULL;
    DC_KERNEL(ctx, attention_forward, &a, F32(out), p, F32C(q), F32C(k), F32C(v), n != NULL);
    return out;
}
