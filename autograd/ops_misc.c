/* Ops: dropout, embedding lookup, sinusoidal timestep embedding, MSE and cross-entropy losses. */
#include "cpu/misc.h"
#include "cuda/misc.h"
#include "op_util.h"

#include <math.h>
#include <stdlib.h>

/* ---- dropout ---- */

/* The mask is not kept: backward draws it again from the seed and stream
 * stored in the node (iarg[0], iarg[1]), which costs a little compute and no memory. */
static int dropout_backward(dc_ctx *ctx, dc_node *n) {
    float *dx = grad_of(ctx, n->in[0]);
    if (dx)
        DC_KERNEL(ctx, dropout_backward, F32C(n->out->grad), dx, n->out->numel, n->farg[0],
                  (uint64_t)n->iarg[0], (uint64_t)n->iarg[1]);
    return dc_ctx_status(ctx);
}

dc_tensor *dc_dropout(dc_ctx *ctx, dc_tensor *x, float p) {
    if (!op_ok(ctx, DC_OP_DROPOUT, 1, x))
        return NULL;
    if (!(p >= 0.0f && p < 1.0f))
        return op_fail(ctx, DC_OP_DROPOUT, "probability %g is outside [0, 1)", (double)p);
    if (!ctx->training || p == 0.0f)
        return x;
    uint64_t stream = ctx->rng_calls++;
    dc_tensor *out = op_out_like(ctx, x);
    if (!out)
        return NULL;
    DC_KERNEL(ctx, dropout_forward, F32(out), F32C(x), x->numel, p, ctx->seed, stream);
    dc_node *n = op_record(ctx, DC_OP_DROPOUT, dropout_backward, out, x, NULL, NULL);
    if (n) {
        n->iarg[0] = (int64_t)ctx->seed;
        n->iarg[1] = (int64_t)stream;
        n->farg[0] = p;
    }
    return out;
}

/* ---- embedding ---- */

static int embedding_backward(dc_ctx *ctx, dc_node *n) {
    float *dtable = grad_of(ctx, n->in[0]);
    if (dtable)
        DC_KERNEL(ctx, embedding_backward, F32C(n->out->grad), dtable, n->in[1]->data,
                  n->in[1]->numel, n->in[0]->shape[1]);
    return dc_ctx_status(ctx);
}

/* NULL when table [V, C] f32 and idx i32 of at most 3 dimensions fit, else why not. */
static const char *embedding_mismatch(const dc_tensor *table, const dc_tensor *idx) {
    if (table->dtype != DC_F32)
        return "table must be f32";
    if (table->ndim != 2)
        return "table must be [V, C]";
    if (idx->dtype != DC_I32)
        return "indices must be i32";
    if (idx->ndim > DC_MAX_DIMS - 1)
        return "indices may have at most 3 dimensions (the result adds one)";
    return NULL;
}

dc_tensor *dc_embedding(dc_ctx *ctx, dc_tensor *table, dc_tensor *idx) {
    if (!op_ok_any(ctx, DC_OP_EMBEDDING, 2, table, idx))
        return NULL;
    const char *why = embedding_mismatch(table, idx);
    if (why) {
        char st[64], si[64];
        return op_fail(
            ctx, DC_OP_EMBEDDING, "%s (table %s %s, indices %s %s)", why,
            dc_dtype_name(table->dtype), dc_shape_str(st, sizeof st, table->ndim, table->shape),
            dc_dtype_name(idx->dtype), dc_shape_str(si, sizeof si, idx->ndim, idx->shape));
    }
    const int32_t *ix = idx->data;
    int64_t bad = DC_KERNEL(ctx, embedding_check, ix, idx->numel, table->shape[0]);
    if (bad >= 0)
        return op_fail(ctx, DC_OP_EMBEDDING, "index %d at position %lld is outside [0, %lld)",
                       op_i32_at(ctx, idx, bad), (long long)bad, (long long)table->shape[0]);
    int64_t shape[DC_MAX_DIMS];
    for (int d = 0; d < idx->ndim; d++)
        shape[d] = idx->shape[d];
    shape[idx->ndim] = table->shape[1];
    dc_tensor *out = op_out(ctx, DC_F32, idx->ndim + 1, shape);
    if (!out)
        return NULL;
    DC_KERNEL(ctx, embedding_forward, F32(out), F32C(table), ix, idx->numel, table->shape[1]);
    op_record(ctx, DC_OP_EMBEDDING, embedding_backward, out, table, idx, NULL);
    return out;
}

/* ---- timestep embedding ---- */

dc_tensor *dc_timestep_embedding(dc_ctx *ctx, dc_tensor *t, int dim, bool flip_sin_to_cos,
                                 float shift, float max_period) {
    if (!op_ok_any(ctx, DC_OP_TIMESTEP_EMBEDDING, 1, t))
        return NULL;
    if ((t->dtype != DC_F32 && t->dtype != DC_I32) || t->ndim != 1) {
        char s[64];
        return op_fail(ctx, DC_OP_TIMESTEP_EMBEDDING, "t must be f32 or i32 [N], got %s %s",
                       dc_dtype_name(t->dtype), dc_shape_str(s, sizeof s, t->ndim, t->shape));
    }
    if (dim < 1)
        return op_fail(ctx, DC_OP_TIMESTEP_EMBEDDING, "dim %d is not positive", dim);
    if (!(max_period > 0.0f) || !isfinite(max_period))
        return op_fail(ctx, DC_OP_TIMESTEP_EMBEDDING, "max_period %g is not positive and finite",
                       (double)max_period);
    if (!isfinite(shift) || (dim >= 2 && (double)(dim / 2) - shift == 0.0))
        return op_fail(ctx, DC_OP_TIMESTEP_EMBEDDING,
                       "shift %g: dim/2 - shift must be finite and nonzero (dim %d)", (double)shift,
                       dim);
    dc_tensor *out = op_out(ctx, DC_F32, DC_SHAPE(t->shape[0], dim));
    if (!out)
        return NULL;
    DC_KERNEL(ctx, timestep_embedding_forward, F32(out), t->dtype == DC_F32 ? F32C(t) : NULL,
              t->dtype == DC_I32 ? t->data : NULL, t->shape[0], dim, flip_sin_to_cos, shift,
              max_period);
    return out; /* timesteps are data: nothing to record */
}

/* ---- Gaussian Fourier embedding ---- */

dc_tensor *dc_fourier_embedding(dc_ctx *ctx, dc_tensor *t, dc_tensor *w, bool flip_sin_to_cos) {
    if (!op_ok_any(ctx, DC_OP_FOURIER_EMBEDDING, 2, t, w))
        return NULL;
    char s[64];
    if ((t->dtype != DC_F32 && t->dtype != DC_I32) || t->ndim != 1)
        return op_fail(ctx, DC_OP_FOURIER_EMBEDDING, "t must be f32 or i32 [N], got %s %s",
                       dc_dtype_name(t->dtype), dc_shape_str(s, sizeof s, t->ndim, t->shape));
    if (w->dtype != DC_F32 || w->ndim != 1 || w->numel == 0)
        return op_fail(ctx, DC_OP_FOURIER_EMBEDDING, "w must be f32 [D], got %s %s",
                       dc_dtype_name(w->dtype), dc_shape_str(s, sizeof s, w->ndim, w->shape));
    dc_tensor *out = op_out(ctx, DC_F32, DC_SHAPE(t->shape[0], 2 * w->shape[0]));
    if (!out)
        return NULL;
    DC_KERNEL(ctx, fourier_embedding_forward, F32(out), t->dtype == DC_F32 ? F32C(t) : NULL,
              t->dtype == DC_I32 ? t->data : NULL, F32C(w), t->shape[0], w->shape[0],
              flip_sin_to_cos);
    return out; /* noise levels are data and w is frozen: nothing to record */
}

/* ---- MSE loss ---- */

static int mse_loss_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *pred = n->in[0], *target = n->in[1], *w = n->in[2];
    float *dpred = grad_of(ctx, pred), *dtarget = grad_of(ctx, target), *dw = grad_of(ctx, w);
    if (ctx->failed)
        return -1;
    int64_t rows = pred->shape[0];
    DC_KERNEL(ctx, mse_loss_backward, F32C(n->out->grad), F32C(pred), F32C(target),
              w ? F32C(w) : NULL, dpred, dtarget, dw, rows, pred->numel / rows);
    return 0;
}

dc_tensor *dc_mse_loss(dc_ctx *ctx, dc_tensor *pred, dc_tensor *target, dc_tensor *w) {
    if (!op_ok(ctx, DC_OP_MSE_LOSS, 2, pred, target) || (w && !op_ok(ctx, DC_OP_MSE_LOSS, 1, w)))
        return NULL;
    char sp[64], st[64];
    if (!dc_same_shape(pred, target))
        return op_fail(ctx, DC_OP_MSE_LOSS, "pred %s and target %s differ",
                       dc_shape_str(sp, sizeof sp, pred->ndim, pred->shape),
                       dc_shape_str(st, sizeof st, target->ndim, target->shape));
    if (pred->ndim < 1 || pred->numel == 0)
        return op_fail(ctx, DC_OP_MSE_LOSS, "pred %s is empty",
                       dc_shape_str(sp, sizeof sp, pred->ndim, pred->shape));
    int64_t rows = pred->shape[0];
    if (w && (w->ndim != 1 || w->shape[0] != rows))
        return op_fail(ctx, DC_OP_MSE_LOSS, "w %s must be [%lld], one weight per sample",
                       dc_shape_str(st, sizeof st, w->ndim, w->shape), (long long)rows);
    dc_tensor *out = op_out(ctx, DC_F32, DC_SHAPE(1));
    if (!out)
        return NULL;
    DC_KERNEL(ctx, mse_loss_forward, F32(out), F32C(pred), F32C(target), w ? F32C(w) : NULL, rows,
              pred->numel / rows);
    op_record(ctx, DC_OP_MSE_LOSS, mse_loss_backward, out, pred, target, w);
    return out;
}

/* ---- cross-entropy ---- */

static int cross_entropy_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *logits = n->in[0], *labels = n->in[1];
    float *dlogits = grad_of(ctx, logits);
    if (dlogits)
        DC_KERNEL(ctx, cross_entropy_backward, F32C(n->out->grad), F32C(logits), labels->data, dlogits,
                  logits->shape[0], logits->shape[1], n->iarg[0], n->farg[0], n->iarg[1]);
    return dc_ctx_status(ctx);
}

/* The labels are checked (and the kept ones counted) on the host: they are a
 * few thousand integers, and the count divides the loss. -1 after dc_fail
 * (the op's message), else the kept rows in *kept. */
static int check_labels(dc_ctx *ctx, dc_tensor *labels, int64_t k, int64_t ignore_index, int64_t *kept) {
    size_t bytes = (size_t)labels->numel * sizeof(int32_t);
    int32_t *copy = ctx->device == DC_CPU ? NULL : malloc(bytes ? bytes : 1);
    const int32_t *y = ctx->device == DC_CPU ? labels->data : copy;
    if (!y || (copy && dc_memcpy(copy, DC_CPU, labels->data, ctx->device, bytes))) {
        free(copy);
        op_fail(ctx, DC_OP_CROSS_ENTROPY, "cannot read the labels back (%zu bytes)", bytes);
        return -1;
    }
    int rc = 0;
    *kept = 0;
    for (int64_t i = 0; !rc && i < labels->numel; i++) {
        if (y[i] == ignore_index)
            continue;
        if (y[i] < 0 || y[i] >= k) {
            op_fail(ctx, DC_OP_CROSS_ENTROPY, "label %d at position %lld is outside [0, %lld)%s", y[i], (long long)i,
                    (long long)k, ignore_index == DC_CE_NO_IGNORE ? "" : " and not the ignore index");
            rc = -1;
        }
        ++*kept;
    }
    free(copy);
    return rc;
}

dc_tensor *dc_cross_entropy_ex(dc_ctx *ctx, dc_tensor *logits, dc_tensor *labels, int64_t ignore_index,
                               float label_smoothing) {
    if (!op_ok(ctx, DC_OP_CROSS_ENTROPY, 1, logits) || !op_ok_any(ctx, DC_OP_CROSS_ENTROPY, 1, labels))
        return NULL;
    char sl[64], sy[64];
    dc_shape_str(sl, sizeof sl, logits->ndim, logits->shape);
    dc_shape_str(sy, sizeof sy, labels->ndim, labels->shape);
    if (logits->ndim != 2 || logits->numel == 0)
        return op_fail(ctx, DC_OP_CROSS_ENTROPY, "logits %s must be [N, K], not empty", sl);
    if (labels->dtype != DC_I32 || labels->ndim != 1 || labels->shape[0] != logits->shape[0])
        return op_fail(ctx, DC_OP_CROSS_ENTROPY, "labels %s %s must be i32 [%lld], one per row of logits %s",
                       dc_dtype_name(labels->dtype), sy, (long long)logits->shape[0], sl);
    if (!(label_smoothing >= 0.0f && label_smoothing <= 1.0f))
        return op_fail(ctx, DC_OP_CROSS_ENTROPY, "label smoothing %g is outside [0, 1]", (double)label_smoothing);
    int64_t kept;
    if (check_labels(ctx, labels, logits->shape[1], ignore_index, &kept))
        return NULL;
    dc_tensor *out = op_out(ctx, DC_F32, DC_SHAPE(1));
    if (!out)
        return NULL;
    DC_KERNEL(ctx, cross_entropy_forward, F32(out), F32C(logits), labels->data, logits->shape[0],
              logits->shape[1], ignore_index, label_smoothing, kept);
    dc_node *n = op_record(ctx, DC_OP_CROSS_ENTROPY, cross_entropy_backward, out, logits, labels, NULL);
    if (n) {
        n->iarg[0] = ignore_index;
        n->iarg[1] = kept;
        n->farg[0] = label_smoothing;
    }
    return out;
}

dc_tensor *dc_cross_entropy(dc_ctx *ctx, dc_tensor *logits, dc_tensor *labels) {
    return dc_cross_entropy_ex(ctx, logits, labels, DC_CE_NO_IGNORE, 0.0f);
}
