/* AdamW, gradient clipping, EMA and learning-rate schedules (see optim.h).
 * The passes over the buffers run on their device through op_util.h's
 * DC_KERNEL_ON; everything else (constants, decays, schedules) is host
 * arithmetic in double. */
#include "optim.h"

#include "cpu/optim.h"
#include "device.h"
#include "error.h"
#include "op_util.h"
#ifdef DC_HAVE_CUDA
#include "cuda/optim.h"
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- AdamW ---- */

/* 0, or -1 when the GPU that ran the last pass has failed. */
static int device_status(int device) { return dc_device_failed(device) ? -1 : 0; }

int dc_adamw_init_on(dc_adamw *o, int device, size_t n, double beta1, double beta2, double eps,
                     double weight_decay) {
    memset(o, 0, sizeof *o);
    if (!(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1))
        return dc_fail("adamw: betas (%g, %g) must lie in [0, 1)", beta1, beta2);
    if (!(eps >= 0 && weight_decay >= 0))
        return dc_fail("adamw: eps %g and weight decay %g must not be negative", eps, weight_decay);
    if (n == 0)
        return dc_fail("adamw: no parameters");
    if (n > (SIZE_MAX - 128) / (2 * sizeof(float)))
        return dc_fail("adamw: %zu parameters: the size of its state overflows", n);
    if (dc_arena_init(&o->state, "optimizer state", device, 2 * n * sizeof(float) + 128))
        return -1;
    o->m = dc_arena_alloc(&o->state, n * sizeof(float));
    o->v = dc_arena_alloc(&o->state, n * sizeof(float));
    if (!o->m || !o->v || dc_memset(o->m, device, 0, n * sizeof(float)) ||
        dc_memset(o->v, device, 0, n * sizeof(float))) {
        dc_adamw_free(o);
        return -1;
    }
    o->n = n;
    o->device = device;
    o->beta1 = beta1;
    o->beta2 = beta2;
    o->eps = eps;
    o->weight_decay = weight_decay;
    return 0;
}

int dc_adamw_init(dc_adamw *o, size_t n, double beta1, double beta2, double eps,
                  double weight_decay) {
    return dc_adamw_init_on(o, DC_CPU, n, beta1, beta2, eps, weight_decay);
}

void dc_adamw_free(dc_adamw *o) {
    if (!o)
        return;
    dc_arena_free(&o->state);
    memset(o, 0, sizeof *o);
}

int dc_adamw_step(dc_adamw *o, float *param, const float *grad, double lr) {
    o->step++;
    double t = (double)o->step;
    cpu_adamw_args a = {
        .decay_mul = (float)(1 - lr * o->weight_decay),
        .beta1 = (float)o->beta1,
        .one_minus_beta1 = (float)(1 - o->beta1),
        .beta2 = (float)o->beta2,
        .one_minus_beta2 = (float)(1 - o->beta2),
        .bc2_sqrt = (float)sqrt(1 - pow(o->beta2, t)),
        .eps = (float)o->eps,
        .step_size = (float)(lr / (1 - pow(o->beta1, t))),
    };
    DC_KERNEL_ON(o->device, adamw_step, param, grad, o->m, o->v, (int64_t)o->n, &a);
    return device_status(o->device);
}

/* ---- gradient clipping ---- */

int dc_grad_scale_on(int device, float *grad, size_t n, float s) {
    DC_KERNEL_ON(device, scale, grad, (int64_t)n, s);
    return device_status(device);
}

double dc_grad_sum_squares_on(int device, const float *grad, size_t n) {
    return DC_KERNEL_ON(device, sum_squares, grad, (int64_t)n);
}

double dc_grad_clip_coef(double norm, double max_norm) {
    double coef = max_norm / (norm + 1e-6);
    return max_norm > 0 && isfinite(norm) && coef < 1 ? coef : 1.0;
}

double dc_grad_clip_norm_on(int device, float *grad, size_t n, double max_norm) {
    double norm = sqrt(dc_grad_sum_squares_on(device, grad, n)), coef = dc_grad_clip_coef(norm, max_norm);
    return coef < 1 && dc_grad_scale_on(device, grad, n, (float)coef) ? NAN : norm;
}

double dc_grad_clip_norm(float *grad, size_t n, double max_norm) {
    return dc_grad_clip_norm_on(DC_CPU, grad, n, max_norm);
}

/* ---- EMA ---- */

dc_ema_config dc_ema_default_config(void) {
    return (dc_ema_config){.decay = 0.9999,
                           .min_decay = 0.0,
                           .update_after_step = 0,
                           .use_ema_warmup = false,
                           .inv_gamma = 1.0,
                           .power = 2.0 / 3.0};
}

double dc_ema_decay(const dc_ema_config *c, int64_t optimization_step) {
    int64_t step = optimization_step - c->update_after_step - 1;
    if (step <= 0)
        return 0.0;
    double s = (double)step;
    double d = c->use_ema_warmup ? 1 - pow(1 + s / c->inv_gamma, -c->power) : (1 + s) / (10 + s);
    d = fmin(d, c->decay);
    return fmax(d, c->min_decay);
}

int dc_ema_init_on(dc_ema *e, int device, const float *param, size_t n,
                   const dc_ema_config *c) {
    memset(e, 0, sizeof *e);
    if (!(c->decay >= 0 && c->decay <= 1 && c->min_decay >= 0 && c->min_decay <= c->decay))
        return dc_fail("ema: need 0 <= min_decay (%g) <= decay (%g) <= 1", c->min_decay, c->decay);
    if (c->use_ema_warmup && !(c->inv_gamma > 0))
        return dc_fail("ema: inv_gamma %g must be positive", c->inv_gamma);
    if (n == 0)
        return dc_fail("ema: no parameters");
    if (dc_arena_init(&e->mem, "ema", device, n * sizeof(float)))
        return -1;
    e->shadow = dc_arena_alloc(&e->mem, n * sizeof(float));
    if (!e->shadow || dc_memcpy(e->shadow, device, param, device, n * sizeof(float))) {
        dc_ema_free(e);
        return -1;
    }
    e->n = n;
    e->device = device;
    e->config = *c;
    return 0;
}

int dc_ema_init(dc_ema *e, const float *param, size_t n, const dc_ema_config *c) {
    return dc_ema_init_on(e, DC_CPU, param, n, c);
}

void dc_ema_free(dc_ema *e) {
    if (!e)
        return;
    dc_arena_free(&e->mem);
    memset(e, 0, sizeof *e);
}

int dc_ema_step(dc_ema *e, const float *param) {
    e->optimization_step++;
    e->cur_decay = dc_ema_decay(&e->config, e->optimization_step);
    DC_KERNEL_ON(e->device, ema_update, e->shadow, param, (int64_t)e->n,
                 (float)(1 - e->cur_decay));
    return device_status(e->device);
}

/* ---- learning-rate schedules ---- */

static const char *const schedule_names[DC_LR_COUNT] = {"constant", "constant_with_warmup",
                                                        "linear", "cosine"};

int dc_lr_schedule_parse(const char *name, dc_lr_schedule *out) {
    for (int s = 0; s < DC_LR_COUNT; s++)
        if (!strcmp(name, schedule_names[s])) {
            *out = (dc_lr_schedule)s;
            return 0;
        }
    return dc_fail("unknown learning-rate schedule '%s' (expected constant, "
                   "constant_with_warmup, linear or cosine)", name);
}

const char *dc_lr_schedule_name(dc_lr_schedule s) {
    return (unsigned)s < DC_LR_COUNT ? schedule_names[s] : "?";
}

/* LambdaLR's factor: the lambdas of diffusers.optimization, including their
 * max(1, ...) guards and the cosine's max(0, ...) (past `total` the cosine
 * rises again; diffusers lets it, and so do we). */
static double lr_lambda(dc_lr_schedule s, int64_t step, int64_t warmup, int64_t total) {
    double t = (double)step;
    if (s == DC_LR_CONSTANT)
        return 1.0;
    if (step < warmup)
        return t / fmax(1.0, (double)warmup);
    double decay_steps = fmax(1.0, (double)(total - warmup));
    switch (s) {
    case DC_LR_LINEAR: return fmax(0.0, (double)(total - step) / decay_steps);
    case DC_LR_COSINE: {
        double progress = (t - (double)warmup) / decay_steps;
        return fmax(0.0, 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress))); /* num_cycles 0.5 */
    }
    case DC_LR_CONSTANT_WITH_WARMUP:
    default: return 1.0;
    }
}

double dc_lr_at(dc_lr_schedule s, double base_lr, int64_t step, int64_t warmup, int64_t total) {
    return base_lr * lr_lambda(s, step, warmup, total);
}
