/* Ops of the diffusion process, fused: q_sample and the training loss (declared in diffusion.h).
 *
 * The timesteps t may be on the context's device or on the CPU, for a caller
 * that draws them there (Philox draws the same values on both). Their range
 * check runs where they are: on a GPU it must bring its answer to the host,
 * which waits for everything queued before it (twice per training step:
 * q_sample and the loss); host timesteps are checked at once and copied to
 * the GPU behind the queued work, a small copy like the schedule's table. */
#include "cpu/diffusion.h"
#include "cpu/misc.h"
#include "cuda/diffusion.h"
#include "cuda/misc.h"
#include "diffusion.h"
#include "op_util.h"

#include <math.h>

/* ---- shared checks ---- */

static bool same_shape(dc_ctx *ctx, dc_op op, const char *name, const dc_tensor *x,
                       const dc_tensor *x0) {
    if (dc_same_shape(x, x0))
        return true;
    char a[64], b[64];
    op_fail(ctx, op, "%s %s and x0 %s differ", name, dc_shape_str(a, sizeof a, x->ndim, x->shape),
            dc_shape_str(b, sizeof b, x0->ndim, x0->shape));
    return false;
}

/* The context is healthy and t is on its device or on the CPU. */
static bool timesteps_ok(dc_ctx *ctx, dc_op op, dc_tensor *t) {
    return t && t->device == DC_CPU ? op_ok_any(ctx, op, 0) : op_ok_any(ctx, op, 1, t);
}

/* The n timesteps ts of the CPU in scratch on the context's device; NULL on failure. */
static const int32_t *upload_timesteps(dc_ctx *ctx, const int32_t *ts, int64_t n) {
    int32_t *d = op_scratch(ctx, (size_t)n * sizeof *d);
    if (d && dc_memcpy(d, ctx->device, ts, DC_CPU, (size_t)n * sizeof *d))
        ctx->failed = true;
    return ctx->failed ? NULL : d;
}

/* alphas_cumprod[t[n]] per sample: f32 [N], after checking that x0 [N, ...]
 * is not empty and t is i32 [N] within the schedule. NULL on failure. */
static dc_tensor *per_sample_acp(dc_ctx *ctx, dc_op op, const dc_tensor *x0, const dc_tensor *t,
                                 const dc_noise_schedule *s) {
    char sx[64], st[64];
    if (!s || !s->alphas_cumprod)
        return op_fail(ctx, op, "the noise schedule is not initialised");
    if (x0->ndim < 1 || x0->numel == 0)
        return op_fail(ctx, op, "x0 %s is empty", dc_shape_str(sx, sizeof sx, x0->ndim, x0->shape));
    if (t->dtype != DC_I32 || t->ndim != 1 || t->shape[0] != x0->shape[0])
        return op_fail(ctx, op, "t must be i32 [%lld], one timestep per sample of x0 %s; got %s %s",
                       (long long)x0->shape[0], dc_shape_str(sx, sizeof sx, x0->ndim, x0->shape),
                       dc_dtype_name(t->dtype), dc_shape_str(st, sizeof st, t->ndim, t->shape));
    const int32_t *ts = t->data;
    int64_t bad = DC_KERNEL_ON(t->device, embedding_check, ts, t->numel, s->T);
    if (bad >= 0)
        return op_fail(ctx, op, "t[%lld] = %d is outside [0, %lld), the schedule's timesteps",
                       (long long)bad, op_i32_at(ctx, t, bad), (long long)s->T);
    if (t->device != ctx->device && !(ts = upload_timesteps(ctx, ts, t->numel)))
        return NULL;
    const float *table = op_upload(ctx, s->alphas_cumprod, s->T);
    dc_tensor *acp = table ? op_out(ctx, DC_F32, DC_SHAPE(t->shape[0])) : NULL;
    if (acp) /* a gather of rows of width 1 */
        DC_KERNEL(ctx, embedding_forward, F32(acp), table, ts, t->numel, 1);
    return acp;
}

/* ---- q_sample ---- */

static int q_sample_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *x0 = n->in[0];
    float *dx0 = grad_of(ctx, x0), *dnoise = grad_of(ctx, n->in[1]);
    if (ctx->failed)
        return -1;
    int64_t rows = x0->shape[0];
    DC_KERNEL(ctx, q_sample_backward, F32C(n->out->grad), dx0, dnoise, F32C(n->saved[0]), rows,
              x0->numel / rows);
    return 0;
}

dc_tensor *dc_q_sample(dc_ctx *ctx, dc_tensor *x0, dc_tensor *noise, dc_tensor *t,
                       const dc_noise_schedule *s) {
    const dc_op op = DC_OP_Q_SAMPLE;
    if (!op_ok(ctx, op, 2, x0, noise) || !timesteps_ok(ctx, op, t) ||
        !same_shape(ctx, op, "noise", noise, x0))
        return NULL;
    dc_tensor *acp = per_sample_acp(ctx, op, x0, t, s);
    dc_tensor *out = acp ? op_out_like(ctx, x0) : NULL;
    if (!out)
        return NULL;
    int64_t rows = x0->shape[0];
    DC_KERNEL(ctx, q_sample_forward, F32(out), F32C(x0), F32C(noise), F32C(acp), rows,
              x0->numel / rows);
    dc_node *n = op_record(ctx, op, q_sample_backward, out, x0, noise, NULL);
    if (n)
        n->saved[0] = acp;
    return out;
}

/* ---- the training loss ---- */

/* The target is recomputed from x0 and noise rather than kept: it costs a
 * pass of arithmetic and saves a tensor the size of the batch. */
static int diffusion_loss_backward(dc_ctx *ctx, dc_node *n) {
    dc_tensor *pred = n->in[0], *x0 = n->in[1], *noise = n->in[2];
    float *dpred = grad_of(ctx, pred), *dx0 = grad_of(ctx, x0), *dnoise = grad_of(ctx, noise);
    if (ctx->failed)
        return -1;
    int64_t rows = pred->shape[0];
    DC_KERNEL(ctx, diffusion_loss_backward, F32C(n->out->grad), F32C(pred), F32C(x0), F32C(noise),
              F32C(n->saved[0]), rows, pred->numel / rows, (dc_prediction_type)n->iarg[0],
              n->farg[0], dpred, dx0, dnoise);
    return 0;
}

dc_tensor *dc_diffusion_loss(dc_ctx *ctx, dc_tensor *model_output, dc_tensor *x0, dc_tensor *noise,
                             dc_tensor *t, const dc_noise_schedule *s,
                             dc_prediction_type prediction_type, float snr_gamma, double *mse) {
    const dc_op op = DC_OP_DIFFUSION_LOSS;
    if (!op_ok(ctx, op, 3, model_output, x0, noise) || !timesteps_ok(ctx, op, t) ||
        !same_shape(ctx, op, "model_output", model_output, x0) ||
        !same_shape(ctx, op, "noise", noise, x0))
        return NULL;
    if ((unsigned)prediction_type >= DC_PRED_COUNT)
        return op_fail(ctx, op, "unknown prediction type %d", (int)prediction_type);
    if (!(snr_gamma >= 0.0f) || !isfinite(snr_gamma))
        return op_fail(ctx, op, "snr_gamma %g must be 0 (off) or positive and finite",
                       (double)snr_gamma);
    dc_tensor *acp = per_sample_acp(ctx, op, x0, t, s);
    dc_tensor *out = acp ? op_out(ctx, DC_F32, DC_SHAPE(1)) : NULL;
    int64_t rows = x0->shape[0];
    double *sample_mse = out ? op_scratch(ctx, (size_t)rows * sizeof *sample_mse) : NULL;
    if (!sample_mse)
        return NULL;
    DC_KERNEL(ctx, diffusion_loss_forward, F32(out), sample_mse, F32C(model_output), F32C(x0),
              F32C(noise), F32C(acp), rows, x0->numel / rows, prediction_type, snr_gamma);
    if (mse && dc_memcpy(mse, DC_CPU, sample_mse, ctx->device, (size_t)rows * sizeof *mse)) {
        ctx->failed = true;
        return NULL;
    }
    dc_node *n = op_record(ctx, op, diffusion_loss_backward, out, model_output, x0, noise);
    if (n) {
        n->saved[0] = acp;
        n->iarg[0] = prediction_type;
        n->farg[0] = snr_gamma;
    }
    return out;
}
