/*
 * Gradient checkpointing (ops.h, dc_checkpoint): a function's forward pass
 * run without a tape, its temporaries given back, and one node that runs it
 * again in backward.
 *
 * The first pass finds what the node must know that a tape would have
 * told: which tensors requiring grad the function reads (op_record reports
 * them while ctx->reads is set). They decide whether the output requires
 * grad, they are the node's uses for the grad_ready hook, and their gradient
 * buffers are made before the recomputation, below the arena mark that the
 * backward rewinds to, so that giving the recomputation back keeps them.
 *
 * The recomputation sees the context as the first pass saw it: the same
 * Philox seed, dropout stream position and training flag, so every dropout
 * mask is drawn again bit for bit. Its ops are the plain ops in the same
 * order, so the gradients are those of a plain forward pass.
 */
#include "op_util.h"

#include <string.h>

/* The tensors requiring grad one pass read, newest first (host memory, meta arena). */
typedef struct dc_reads {
    dc_tensor *t;
    struct dc_reads *next;
    int count;
} dc_reads;

typedef struct {
    dc_node node; /* first: the tape holds &node */
    dc_checkpoint_fn fn;
    const void *args;
    uint64_t seed, rng_calls;
    bool training;
} ckpt_node;

void op_checkpoint_note(dc_ctx *ctx, dc_tensor *in0, dc_tensor *in1, dc_tensor *in2) {
    dc_tensor *in[3] = {in0, in1, in2};
    for (int k = 0; k < 3; k++) {
        if (!in[k] || !in[k]->requires_grad)
            continue;
        dc_reads *r = dc_arena_alloc(&ctx->meta, sizeof *r);
        if (!r) {
            ctx->failed = true;
            return;
        }
        *r = (dc_reads){.t = in[k], .next = ctx->reads, .count = ctx->reads->count + 1};
        ctx->reads = r;
    }
}

/* The context as the first pass found it, swapped with what it is now. */
static void swap_rng(dc_ctx *ctx, ckpt_node *c) {
    uint64_t seed = ctx->seed, calls = ctx->rng_calls;
    bool training = ctx->training;
    ctx->seed = c->seed, ctx->rng_calls = c->rng_calls, ctx->training = c->training;
    c->seed = seed, c->rng_calls = calls, c->training = training;
}

/* fn's output, recomputed with the tape on; the new tape in *tape, the
 * context's own left as it was. */
static dc_tensor *recompute(dc_ctx *ctx, ckpt_node *c, dc_node **tape) {
    dc_node *outer = ctx->tape;
    ctx->tape = NULL;
    swap_rng(ctx, c);
    bool was = dc_set_grad_enabled(ctx, true);
    dc_tensor *y = c->fn(ctx, c->args, c->node.in);
    dc_set_grad_enabled(ctx, was);
    swap_rng(ctx, c);
    *tape = ctx->tape;
    ctx->tape = outer;
    return y;
}

/* The gradient buffers of the inputs and of what fn read, made now (below
 * the mark the backward rewinds to). */
static int make_grads(dc_ctx *ctx, dc_node *n) {
    for (int k = 0; k < 3 + n->n_reads; k++) {
        dc_tensor *t = k < 3 ? n->in[k] : n->reads[k - 3];
        if (t && t->requires_grad && !grad_of(ctx, t))
            return -1;
    }
    return 0;
}

static int checkpoint_backward(dc_ctx *ctx, dc_node *n) {
    ckpt_node *c = (ckpt_node *)n;
    if (make_grads(ctx, n))
        return -1;
    size_t act = ctx->act.used, meta = ctx->meta.used;
    dc_node *tape;
    dc_tensor *y = recompute(ctx, c, &tape);
    if (!y)
        return -1;
    if (!dc_same_shape(y, n->out) || !y->requires_grad) {
        op_fail(ctx, DC_OP_CHECKPOINT, "the function gave another output when run again");
        return -1;
    }
    y->grad = n->out->grad; /* only read by the walk: y is its last node's output */
    int rc = op_walk(ctx, tape);
    if (ctx->act.used > ctx->act_held)
        ctx->act_held = ctx->act.used;
    dc_arena_rewind(&ctx->act, act);
    dc_arena_rewind(&ctx->meta, meta);
    return rc;
}

/* The node for output y and what the pass read (r, newest first). */
static dc_tensor *record(dc_ctx *ctx, dc_checkpoint_fn fn, const void *args, size_t args_bytes,
                         dc_tensor *const in[3], dc_reads *r, dc_tensor *y, const ckpt_node *rng) {
    ckpt_node *c = dc_arena_alloc(&ctx->meta, sizeof *c);
    void *copy = args_bytes ? dc_arena_alloc(&ctx->meta, args_bytes) : NULL;
    dc_tensor **reads = dc_arena_alloc(&ctx->meta, (size_t)r->count * sizeof *reads);
    if (!c || (args_bytes && !copy) || !reads)
        return op_fail(ctx, DC_OP_CHECKPOINT, "%s", dc_error());
    *c = *rng;
    c->fn = fn;
    c->args = args_bytes ? memcpy(copy, args, args_bytes) : args;
    c->node = (dc_node){.op = DC_OP_CHECKPOINT, .backward = checkpoint_backward, .prev = ctx->tape,
                        .out = y, .in = {in[0], in[1], in[2]}, .reads = reads, .n_reads = r->count};
    for (int i = r->count - 1; i >= 0; i--, r = r->next)
        reads[i] = r->t;
    ctx->tape = &c->node;
    y->requires_grad = true;
    return y;
}

dc_tensor *dc_checkpoint(dc_ctx *ctx, dc_checkpoint_fn fn, const void *args, size_t args_bytes,
                         int n, dc_tensor *const *in) {
    if (ctx->failed)
        return NULL;
    if (n < 0 || n > DC_CHECKPOINT_INPUTS || !fn)
        return op_fail(ctx, DC_OP_CHECKPOINT, "%d inputs (at most %d), function %s", n,
                       DC_CHECKPOINT_INPUTS, fn ? "given" : "missing");
    dc_tensor *x[3] = {NULL, NULL, NULL};
    for (int k = 0; k < n; k++)
        x[k] = in[k];
    ckpt_node rng = {.seed = ctx->seed, .rng_calls = ctx->rng_calls, .training = ctx->training};
    /* without a tape (inference, or an enclosing checkpoint's first pass,
     * which then hears of the reads) fn runs as it is, its temporaries given back */
    bool taped = ctx->grad_enabled;
    dc_reads none = {0};
    if (taped)
        ctx->reads = &none;
    size_t mark = dc_mark(ctx);
    dc_set_grad_enabled(ctx, false);
    dc_tensor *y = op_keep(ctx, mark, fn(ctx, args, x));
    dc_set_grad_enabled(ctx, taped);
    if (!taped)
        return ctx->failed ? NULL : y;
    dc_reads *r = ctx->reads;
    ctx->reads = NULL;
    if (!y || ctx->failed)
        return NULL;
    return r->count ? record(ctx, fn, args, args_bytes, x, r, y, &rng) : y;
}
