/* CPU kernels of the optimizer (OpenMP). The operations come in the order of
 * PyTorch's single-tensor AdamW, so results agree with it to an ulp or so. */
#include "optim.h"

#include <math.h>

void cpu_adamw_step(float *p, const float *g, float *m, float *v, int64_t n,
                    const cpu_adamw_args *a) {
#pragma omp parallel for simd
    for (int64_t i = 0; i < n; i++)
        cpu_adamw_element(&p[i], g[i], &m[i], &v[i], a);
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
