/*
 * The context and the machinery every op shares: argument checks, output
 * allocation, recording on the tape. The ops themselves live in ops_*.c,
 * grouped by kind; the tape walk is in backward.c.
 */
#include "cpu/misc.h"
#include "op_util.h"

#include <stdio.h>
#include <string.h>

static const char *op_names[] = {
    "reshape", "add",       "sub",     "mul",       "affine",     "linear",
    "matmul",  "conv2d",    "group_norm", "layer_norm", "group_norm_silu", "silu", "gelu",
    "mish",    "quick_gelu", "softmax", "attention", "upsample2x", "concat",  "slice",     "dropout",
    "embedding", "timestep_embedding", "fourier_embedding", "sum", "mean", "mse_loss", "cross_entropy",
    "q_sample", "diffusion_loss", "checkpoint",
};
_Static_assert(sizeof op_names / sizeof op_names[0] == DC_OP_COUNT, "one name per op");
_Static_assert(DC_OP_COUNT == 31, "a new op needs a name, kernels and a gradient test");

const char *dc_op_name(dc_op op) { return (unsigned)op < DC_OP_COUNT ? op_names[op] : "?"; }

int dc_ctx_init(dc_ctx *ctx, int device, size_t act_bytes) {
    memset(ctx, 0, sizeof *ctx);
    ctx->device = device;
    ctx->grad_enabled = true;
    ctx->training = true;
    if (dc_arena_init(&ctx->act, "activations", device, act_bytes) ||
        dc_arena_init(&ctx->meta, "tensor metadata", DC_CPU, 64u << 20)) {
        dc_ctx_free(ctx);
        return -1;
    }
    return 0;
}

void dc_ctx_free(dc_ctx *ctx) {
    if (!ctx)
        return;
    dc_arena_free(&ctx->act);
    dc_arena_free(&ctx->meta);
}

void dc_ctx_reset(dc_ctx *ctx) {
    dc_device_clear_error(ctx->device);
    dc_arena_reset(&ctx->act);
    dc_arena_reset(&ctx->meta);
    ctx->tape = NULL;
    ctx->rng_calls = 0;
    ctx->act_held = 0;
    ctx->failed = false;
}

/* A failed CUDA call on the context's device fails the context (the message
 * is already recorded). */
int dc_ctx_status(const dc_ctx *ctx) {
    return ctx->failed || dc_device_failed(ctx->device) ? -1 : 0;
}

bool dc_set_grad_enabled(dc_ctx *ctx, bool on) {
    bool was = ctx->grad_enabled;
    ctx->grad_enabled = on;
    return was;
}

void *op_fail(dc_ctx *ctx, dc_op op, const char *fmt, ...) {
    if (!ctx->failed) { /* keep the first message: it names the cause */
        char msg[768];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        dc_fail("%s: %s", dc_op_name(op), msg);
    }
    ctx->failed = true;
    return NULL;
}

static bool check_args(dc_ctx *ctx, dc_op op, bool need_f32, int n, va_list ap) {
    if (dc_ctx_status(ctx)) {
        ctx->failed = true;
        return false;
    }
    for (int i = 0; i < n; i++) {
        const dc_tensor *t = va_arg(ap, const dc_tensor *);
        if (!t) {
            ctx->failed = true; /* the op that produced NULL has already said why */
            return false;
        }
        if (t->packed && !(i == 1 && (op == DC_OP_CONV2D || op == DC_OP_LINEAR) && !ctx->grad_enabled))
            return op_fail(ctx, op, "argument %d is a weight packed for inference (dc_params_pack): only "
                           "the forward pass of a conv2d or linear without a tape reads it", i + 1);
        /* a packed weight may be f16 (dc_params_pack_half): the kernels widen it */
        if (need_f32 && t->dtype != DC_F32 && !(t->packed && t->dtype == DC_F16))
            return op_fail(ctx, op, "argument %d is %s, expected f32", i + 1, dc_dtype_name(t->dtype));
        if (t->device != ctx->device)
            return op_fail(ctx, op, "argument %d is on device %d, the context on %d", i + 1,
                           t->device, ctx->device);
    }
    return true;
}

bool op_ok(dc_ctx *ctx, dc_op op, int n, ...) {
    va_list ap;
    va_start(ap, n);
    bool ok = check_args(ctx, op, true, n, ap);
    va_end(ap);
    return ok;
}

bool op_ok_any(dc_ctx *ctx, dc_op op, int n, ...) {
    va_list ap;
    va_start(ap, n);
    bool ok = check_args(ctx, op, false, n, ap);
    va_end(ap);
    return ok;
}

dc_tensor *op_out(dc_ctx *ctx, dc_dtype dtype, int ndim, const int64_t *shape) {
    dc_tensor *t = dc_tensor_new2(&ctx->meta, &ctx->act, dtype, ndim, shape);
    if (!t)
        ctx->failed = true;
    else if (ctx->poison &&
             dc_memset(t->data, ctx->device, 0xff, dc_tensor_bytes(t))) /* NaN in f32 */
        ctx->failed = true;
    return t;
}

dc_tensor *op_out_like(dc_ctx *ctx, const dc_tensor *x) {
    return op_out(ctx, x->dtype, x->ndim, x->shape);
}

void *op_scratch(dc_ctx *ctx, size_t bytes) {
    void *p = dc_arena_alloc(&ctx->act, bytes);
    if (!p)
        ctx->failed = true;
    return p;
}

void *op_scratch_take(dc_ctx *ctx, size_t bytes, size_t *mark) {
    *mark = ctx->act.used;
    return op_scratch(ctx, bytes);
}

void op_scratch_release(dc_ctx *ctx, size_t mark) { dc_arena_rewind(&ctx->act, mark); }

const float *op_upload(dc_ctx *ctx, const float *host, int64_t n) {
    if (ctx->device == DC_CPU)
        return host;
    float *p = op_scratch(ctx, (size_t)n * sizeof *p);
    if (p && dc_memcpy(p, ctx->device, host, DC_CPU, (size_t)n * sizeof *p))
        ctx->failed = true;
    return ctx->failed ? NULL : p;
}

int32_t op_i32_at(dc_ctx *ctx, const dc_tensor *t, int64_t i) {
    int32_t v = 0;
    dc_memcpy(&v, DC_CPU, (const int32_t *)t->data + i, t->device, sizeof v);
    return v;
}

dc_tensor *dc_new(dc_ctx *ctx, dc_dtype dtype, int ndim, const int64_t *shape) {
    return ctx->failed ? NULL : op_out(ctx, dtype, ndim, shape);
}

dc_tensor *dc_from_host(dc_ctx *ctx, dc_dtype dtype, int ndim, const int64_t *shape,
                        const void *host) {
    dc_tensor *t = dc_new(ctx, dtype, ndim, shape);
    if (t && dc_memcpy(t->data, ctx->device, host, DC_CPU, dc_tensor_bytes(t))) {
        ctx->failed = true;
        return NULL;
    }
    return t;
}

dc_tensor *dc_clone(dc_ctx *ctx, const dc_tensor *x) {
    if (!x || ctx->failed)
        return NULL;
    dc_tensor *t = dc_new(ctx, x->dtype, x->ndim, x->shape);
    if (t && dc_tensor_copy(t, x)) {
        ctx->failed = true;
        return NULL;
    }
    return t;
}

size_t dc_mark(const dc_ctx *ctx) { return ctx->act.used; }

/* dst < src: copied front to back in pieces no longer than the distance
 * between them, so that no piece overlaps its source (a GPU has no memmove). */
static int move_down(dc_ctx *ctx, char *dst, const char *src, size_t bytes) {
    if (ctx->device == DC_CPU) {
        cpu_move_down(dst, src, bytes);
        return 0;
    }
    size_t step = (size_t)(src - dst);
    for (size_t at = 0; at < bytes; at += step)
        if (dc_memcpy(dst + at, ctx->device, src + at, ctx->device, bytes - at < step ? bytes - at : step))
            return -1;
    return 0;
}

dc_tensor *op_keep(dc_ctx *ctx, size_t mark, dc_tensor *t) {
    if (!t || ctx->failed || mark > ctx->act.used)
        return t;
    char *data = t->data, *from = ctx->act.base + mark, *end = ctx->act.base + ctx->act.used;
    size_t bytes = dc_tensor_bytes(t);
    dc_arena_rewind(&ctx->act, mark);
    if (data < from || data >= end) /* made before the mark, or not an activation */
        return t;
    t->data = dc_arena_alloc(&ctx->act, bytes); /* at the mark: it held more a moment ago */
    if (t->data != data && move_down(ctx, t->data, data, bytes)) {
        ctx->failed = true;
        return NULL;
    }
    return t;
}

dc_tensor *dc_keep(dc_ctx *ctx, size_t mark, dc_tensor *t) {
    return ctx->grad_enabled || ctx->device != DC_CPU ? t : op_keep(ctx, mark, t);
}

size_t dc_act_held(const dc_ctx *ctx) {
    return ctx->act_held > ctx->act.used ? ctx->act_held : ctx->act.used;
}

dc_node *op_record(dc_ctx *ctx, dc_op op, dc_backward_fn backward, dc_tensor *out,
                   dc_tensor *in0, dc_tensor *in1, dc_tensor *in2) {
    if (!ctx->grad_enabled || !out) {
        if (ctx->reads && out)
            op_checkpoint_note(ctx, in0, in1, in2);
        return NULL;
    }
    if (!((in0 && in0->requires_grad) || (in1 && in1->requires_grad) || (in2 && in2->requires_grad)))
        return NULL;
    dc_node *n = dc_arena_alloc(&ctx->meta, sizeof *n);
    if (!n) {
        ctx->failed = true;
        return NULL;
    }
    memset(n, 0, sizeof *n);
    n->op = op;
    n->backward = backward;
    n->out = out;
    n->in[0] = in0;
    n->in[1] = in1;
    n->in[2] = in2;
    n->prev = ctx->tape;
    ctx->tape = n;
    out->requires_grad = true;
    return n;
}

float *grad_of_fresh(dc_ctx *ctx, dc_tensor *t, bool *fresh) {
    *fresh = false;
    if (!t || !t->requires_grad)
        return NULL;
    if (!t->grad) {
        t->grad = op_out(ctx, DC_F32, t->ndim, t->shape);
        if (!t->grad)
            return NULL;
        *fresh = true;
    }
    return F32(t->grad);
}

float *grad_of(dc_ctx *ctx, dc_tensor *t) {
    bool fresh;
    float *g = grad_of_fresh(ctx, t, &fresh);
    if (fresh && dc_memset(g, ctx->device, 0, dc_tensor_bytes(t->grad))) {
        ctx->failed = true;
        return NULL;
    }
    return g;
}

bool grad_adopt(dc_ctx *ctx, dc_tensor *t, const dc_tensor *out) {
    if (!t || !t->requires_grad || t->grad || t->numel != out->numel)
        return false;
    dc_tensor *g = dc_arena_alloc(&ctx->meta, sizeof *g);
    if (!g) {
        ctx->failed = true;
        return false;
    }
    *g = *out->grad;
    g->ndim = t->ndim;
    memcpy(g->shape, t->shape, sizeof g->shape);
    t->grad = g;
    return true;
}
