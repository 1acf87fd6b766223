/*
 * The tape walk: seed the output's gradient and call each recorded node's
 * backward function, newest first. Nodes whose output received no gradient
 * are skipped. Gradients accumulate; parameters keep theirs in the flat
 * buffer of nn.h until the optimizer zeroes it. Like PyTorch without
 * retain_graph, a backward pass consumes the tape. A context's grad_ready
 * hook hears of each parameter gradient as soon as it is final, so its
 * all-reduce can start while the walk goes on (PyTorch DDP's hooks); a
 * checkpoint's node counts as one use of each parameter its function reads,
 * and its walk through the recomputation tells the hook nothing.
 */
#include "op_util.h"

/* Input k of n: in[0, 3), then the tensors a checkpoint read; NULL past them. */
static dc_tensor *input(const dc_node *n, int k) {
    return k < 3 ? n->in[k] : k - 3 < n->n_reads ? n->reads[k - 3] : NULL;
}

/* With a grad_ready hook: count, for every input whose gradient was set
 * before the pass, the nodes that will add to it. */
static void count_uses(dc_node *tape) {
    for (dc_node *n = tape; n; n = n->prev)
        for (int k = 0; k < 3 + n->n_reads; k++)
            if (input(n, k) && input(n, k)->grad)
                input(n, k)->pending_uses = 0;
    for (dc_node *n = tape; n; n = n->prev)
        for (int k = 0; k < 3 + n->n_reads; k++)
            if (input(n, k) && input(n, k)->grad)
                input(n, k)->pending_uses++;
}

/* n has been walked (run or skipped): tell the hook of the inputs it was the last to add to. */
static int uses_done(dc_ctx *ctx, dc_node *n) {
    for (int k = 0; k < 3 + n->n_reads; k++) {
        dc_tensor *t = input(n, k);
        if (t && t->pending_uses > 0 && --t->pending_uses == 0 && ctx->grad_ready(ctx->grad_ready_user, t))
            return -1;
    }
    return 0;
}

static int walk_with(dc_ctx *ctx, dc_node *tape, dc_grad_ready_fn ready) {
    bool was = dc_set_grad_enabled(ctx, false); /* backward records nothing */
    dc_grad_ready_fn outer = ctx->grad_ready;
    ctx->grad_ready = ready;
    if (ready)
        count_uses(tape);
    for (dc_node *n = tape; n && !ctx->failed; n = n->prev)
        if ((n->out->grad && (n->backward(ctx, n) || dc_ctx_status(ctx))) ||
            (ready && uses_done(ctx, n)))
            ctx->failed = true;
    ctx->grad_ready = outer;
    dc_set_grad_enabled(ctx, was);
    return dc_ctx_status(ctx);
}

int op_walk(dc_ctx *ctx, dc_node *tape) { return walk_with(ctx, tape, NULL); }

static int walk(dc_ctx *ctx) {
    int rc = walk_with(ctx, ctx->tape, ctx->grad_ready);
    ctx->tape = NULL;
    return rc;
}

int dc_backward_from(dc_ctx *ctx, dc_tensor *out, const dc_tensor *grad_out) {
    if (ctx->failed || !out)
        return -1;
    if (!grad_out || grad_out->dtype != DC_F32 || !dc_same_shape(out, grad_out))
        return dc_fail("backward: the seed gradient must be f32 and of the output's shape");
    if (!out->requires_grad)
        return dc_fail("backward: the output does not depend on anything that requires grad");
    float *g = grad_of(ctx, out);
    if (!g)
        return -1;
    if (dc_memcpy(g, ctx->device, grad_out->data, grad_out->device, dc_tensor_bytes(grad_out)))
        return -1;
    return walk(ctx);
}

int dc_backward(dc_ctx *ctx, dc_tensor *loss) {
    if (ctx->failed || !loss)
        return -1;
    if (loss->numel != 1 || loss->dtype != DC_F32)
        return dc_fail("backward: the loss must be one f32 element");
    if (!loss->requires_grad)
        return dc_fail("backward: the loss does not depend on anything that requires grad");
    float *g = grad_of(ctx, loss);
    if (!g)
        return -1;
    const float one = 1.0f;
    if (dc_memcpy(g, ctx->device, &one, DC_CPU, sizeof one))
        return -1;
    return walk(ctx);
}
