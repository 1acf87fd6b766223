/* CPU kernels of the optimizer: fused AdamW, sum of squares, scaling, EMA.
 * Constants arrive precomputed (in double, rounded to f32 once, as PyTorch
 * rounds its Python scalars). */
#ifndef DC_CPU_OPTIM_H
#define DC_CPU_OPTIM_H

#include "../hostdev.h"

#include <math.h>
#include <stdint.h>

typedef struct cpu_adamw_args {
    float decay_mul;  /* 1 - lr * weight_decay */
    float beta1, one_minus_beta1, beta2, one_minus_beta2;
    float bc2_sqrt;   /* sqrt(1 - beta2^t) */
    float eps;
    float step_size;  /* lr / (1 - beta1^t) */
} cpu_adamw_args;

/* One element of AdamW, in the order of PyTorch's single-tensor AdamW; the
 * CPU and CUDA kernels both run this, so they round alike. */
DC_HOSTDEV static inline void cpu_adamw_element(float *p, float g, float *m, float *v,
                                                const cpu_adamw_args *a) {
    float pi = *p * a->decay_mul;
    float mi = *m * a->beta1 + a->one_minus_beta1 * g;
    float vi = *v * a->beta2 + a->one_minus_beta2 * g * g;
    float denom = sqrtf(vi) / a->bc2_sqrt + a->eps;
    *p = pi + -a->step_size * mi / denom; /* addcdiv: self + value * t1 / t2 */
    *m = mi;
    *v = vi;
}

void cpu_adamw_step(float *p, const float *g, float *m, float *v, int64_t n,
                    const cpu_adamw_args *a);
/* sum of x^2 in double. */
double cpu_sum_squares(const float *x, int64_t n);
/* x *= s */
void cpu_scale(float *x, int64_t n, float s);
/* s -= one_minus_decay * (s - p) */
void cpu_ema_update(float *s, const float *p, int64_t n, float one_minus_decay);

#endif
