/* CPU kernels of the optimizer (OpenMP). The operations come in the order of
 * PyTorch's single-tensor AdamW, so results agree with it to an ulp or so. */
#include "optim.h"

#include <math.h>

void cpu_adamw_step(float *p, const float *g, float *m, float *v, int64_t n,
                    const cpu_adamw_args *a) {
#pragma omp parallel for simd
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i] * a->decay_mul;
        float mi = m[i] * a->beta1 + a->one_minus_beta1 * g[i];
        float vi = v[i] * a->beta2 + a->one_minus_beta2 * g[i] * g[i];
        float denom = sqrtf(vi) / a->bc2_sqrt + a->eps;
        p[i] = pi + -a->step_size * mi / denom; /* addcdiv: self + value * t1 / t2 */
        m[i] = mi;
        v[i] = vi;
    }
}

double cpu_sum_squares(const float *x, int64_t n) {
    double s = 0;
#pragma omp parallel for simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return s;
}

void cpu_scale(float *x, int64_t n, float s) {
#pragma omp parallel for simd
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
}

void cpu_ema_update(float *s, const float *p, int64_t n, float one_minus_decay) {
#pragma omp parallel for simd
    for (int64_t i = 0; i < n; i++)
        s[i] -= one_minus_decay * (s[i] - p[i]);
}
