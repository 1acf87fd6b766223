/*
 * Training arithmetic over the flat buffers of nn.h: AdamW, gradient clipping
 * by global norm, the EMA of the weights, and learning-rate schedules.
 *
 * Each follows the library that users compare against, to float tolerance:
 * torch.optim.AdamW, torch.nn.utils.clip_grad_norm_, diffusers' EMAModel and
 * diffusers.optimization.get_scheduler. Constants are computed in double as
 * Python does; the element loops run in f32 as PyTorch's do.
 *
 * The buffers live on one device, the parameters' (nn.h): the _on functions
 * take it (DC_CPU or a CUDA ordinal), the others mean the CPU. AdamW's
 * moments and the EMA shadow are allocated there; every pass runs there, the
 * CPU's and the GPU's kernels sharing their element arithmetic
 * (cpu/optim.h), so the devices agree to float rounding of the norm's sum.
 * Functions returning a status fail only when a GPU has failed (the message
 * in dc_error(), dc_device_failed() true).
 */
#ifndef DC_OPTIM_H
#define DC_OPTIM_H

#include "tensor.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- AdamW ---- */

typedef struct dc_adamw {
    double beta1, beta2, eps, weight_decay;
    int64_t step; /* steps taken: the t of the bias corrections */
    size_t n;
    int device;   /* where m and v live (the parameters' device) */
    float *m;     /* [n] first moment, on `device` */
    float *v;     /* [n] second moment, on `device` */
    dc_arena state; /* "optimizer state" */
} dc_adamw;

/* State for n parameters, moments zero. PyTorch's defaults are 0.9, 0.999,
 * 1e-8, 0.01; diffusers' training examples use 0.95, 0.999, 1e-8, 1e-6. */
int dc_adamw_init_on(dc_adamw *o, int device, size_t n, double beta1, double beta2, double eps,
                     double weight_decay);
/* dc_adamw_init_on(o, DC_CPU, ...). */
int dc_adamw_init(dc_adamw *o, size_t n, double beta1, double beta2, double eps,
                  double weight_decay);
void dc_adamw_free(dc_adamw *o);
/* One step of torch.optim.AdamW on param[n] with grad[n] (both on o->device):
 *   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
int dc_adamw_step(dc_adamw *o, float *param, const float *grad, double lr);

/* ---- gradient clipping ---- */

/* torch.nn.utils.clip_grad_norm_ over one flat buffer on `device`: the L2
 * norm of grad[n] (summed in double) is returned, on the host; when
 * max_norm > 0 and the norm exceeds it, grad is scaled by
 * max_norm / (norm + 1e-6). A non-finite norm (NaN or inf in the gradients)
 * is returned with grad left as it is, so the caller can skip the step: the
 * trainer's non-finite check, whatever the device. max_norm <= 0 only
 * measures. After a GPU failure the norm is NaN and dc_device_failed(device)
 * tells it from a non-finite gradient. */
double dc_grad_clip_norm_on(int device, float *grad, size_t n, double max_norm);
/* Its two halves, for a gradient sharded over ranks (whose norm needs the
 * ranks' sums): the sum of the squares of grad[n] on `device`, in double
 * (NaN after a GPU failure); and the factor the gradient of L2 norm `norm`
 * is scaled by, 1 when no clipping is due or max_norm <= 0. */
double dc_grad_sum_squares_on(int device, const float *grad, size_t n);
double dc_grad_clip_coef(double norm, double max_norm);
/* dc_grad_clip_norm_on(DC_CPU, ...). */
double dc_grad_clip_norm(float *grad, size_t n, double max_norm);
/* grad[n] *= s on `device` (averaging accumulated micro-batches, s = 1 / A:
 * the same bits as dividing by A only when A is a power of two). */
int dc_grad_scale_on(int device, float *grad, size_t n, float s);

/* ---- EMA of the weights (diffusers' EMAModel) ---- */

typedef struct dc_ema_config {
    double decay;              /* the ceiling of the decay (EMAModel's decay, max_value) */
    double min_decay;          /* its floor */
    int64_t update_after_step; /* the decay is 0 (shadow = weights) until this step has passed */
    bool use_ema_warmup;       /* 1 - (1 + step / inv_gamma)^-power instead of (1 + step) / (10 + step) */
    double inv_gamma, power;
} dc_ema_config;

/* EMAModel's defaults: decay 0.9999, min_decay 0, update_after_step 0, no
 * warmup, inv_gamma 1, power 2/3. */
dc_ema_config dc_ema_default_config(void);
/* EMAModel.get_decay: with step = max(0, optimization_step - update_after_step - 1),
 * 0 when step <= 0, else the warmup or (1 + step) / (10 + step) value, capped
 * at decay and raised to at least min_decay. */
double dc_ema_decay(const dc_ema_config *c, int64_t optimization_step);

typedef struct dc_ema {
    dc_ema_config config;
    int64_t optimization_step; /* updates so far */
    double cur_decay;          /* the decay of the last update */
    size_t n;
    int device;                /* where shadow lives (the parameters' device) */
    float *shadow;             /* [n] the averaged weights, laid out like the parameters */
    dc_arena mem;              /* "ema" */
} dc_ema;

/* A shadow copy of param[n], both on `device`. */
int dc_ema_init_on(dc_ema *e, int device, const float *param, size_t n, const dc_ema_config *c);
/* dc_ema_init_on(e, DC_CPU, ...). */
int dc_ema_init(dc_ema *e, const float *param, size_t n, const dc_ema_config *c);
void dc_ema_free(dc_ema *e);
/* EMAModel.step: count the step, take its decay d and move the shadow
 * s -= (1 - d) (s - p) (param on e->device). */
int dc_ema_step(dc_ema *e, const float *param);

/* ---- learning-rate schedules (diffusers.optimization.get_scheduler) ---- */

typedef enum {
    DC_LR_CONSTANT,             /* base_lr throughout; ignores warmup, as diffusers does */
    DC_LR_CONSTANT_WITH_WARMUP, /* linear from 0 over warmup steps, then base_lr */
    DC_LR_LINEAR,               /* warmup, then linear down to 0 at total */
    DC_LR_COSINE,               /* warmup, then half a cosine down to 0 at total */
    DC_LR_COUNT
} dc_lr_schedule;

/* "constant", "constant_with_warmup", "linear", "cosine" (diffusers' names);
 * an unknown name is an error that lists these. */
int dc_lr_schedule_parse(const char *name, dc_lr_schedule *out);
const char *dc_lr_schedule_name(dc_lr_schedule s);
/* The learning rate of the optimizer step taken after `step` scheduler steps
 * (0 for the first optimizer step): base_lr times LambdaLR's lambda(step),
 * for `warmup` warmup steps and `total` training steps. */
double dc_lr_at(dc_lr_schedule s, double base_lr, int64_t step, int64_t warmup, int64_t total);

#endif
