/* CPU kernels for SiLU, exact GELU, Mish, quick GELU and softmax (OpenMP). */
#include "activation.h"
#include "isa.h"
#include "parallel.h"

#include "vmath.h"

/* For a very negative x, expf(-x) is inf and the sigmoid a clean 0. */
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

void CPU_ISA_FN(cpu_silu_forward)(float *y, const float *x, int64_t n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * sigmoid(x[i]);
}

void CPU_ISA_FN(cpu_silu_backward)(const float *dy, const float *x, float *dx, int64_t n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float s = sigmoid(x[i]);
        dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

void CPU_ISA_FN(cpu_gelu_forward)(float *y, const float *x, int64_t n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

/* d/dx of x * Phi(x) is Phi(x) + x * phi(x), phi the standard normal density. */
void CPU_ISA_FN(cpu_gelu_backward)(const float *dy, const float *x, float *dx, int64_t n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float cdf = 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]);
        dx[i] += dy[i] * (cdf + x[i] * pdf);
    }
}

/* log(1 + e^x) without overflow: past 20 it equals x in float. */
static inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

void CPU_ISA_FN(cpu_mish_forward)(float *y, const float *x, int64_t n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * tanhf(softplus(x[i]));
}

/* d/dx of x tanh(sp(x)) is tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x), as sp' = sigmoid. */
void CPU_ISA_FN(cpu_mish_backward)(const float *dy, const float *x, float *dx, int64_t n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float t = tanhf(softplus(x[i]));
        dx[i] += dy[i] * (t + x[i] * (1.0f - t * t) * sigmoid(x[i]));
    }
}

#define QUICK_GELU_K 1.702f

void CPU_ISA_FN(cpu_quick_gelu_forward)(float *y, const float *x, int64_t n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * sigmoid(QUICK_GELU_K * x[i]);
}

/* d/dx of x s(kx) is s(kx) + k x s(kx) (1 - s(kx)). */
void CPU_ISA_FN(cpu_quick_gelu_backward)(const float *dy, const float *x, float *dx, int64_t n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        float s = sigmoid(QUICK_GELU_K * x[i]);
        dx[i] += dy[i] * s * (1.0f + QUICK_GELU_K * x[i] * (1.0f - s));
    }
}

/* Subtracting the row max keeps every exponent <= 0: no overflow for large
 * logits, and the largest term is exactly 1, so the sum is never 0. */
void CPU_ISA_FN(cpu_softmax_forward)(float *y, const float *x, int64_t rows, int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C >= CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * C;
        float *yr = y + r * C, max = xr[0];
#pragma omp simd reduction(max : max)
        for (int64_t j = 1; j < C; j++)
            max = xr[j] > max ? xr[j] : max;
        double sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < C; j++) {
            yr[j] = expf(xr[j] - max);
            sum += yr[j];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t j = 0; j < C; j++)
            yr[j] *= inv;
    }
}

void CPU_ISA_FN(cpu_softmax_backward)(const float *dy, const float *y, float *dx, int64_t rows,
                                       int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C >= CPU_PAR_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *dyr = dy + r * C, *yr = y + r * C;
        double dot = 0;
        for (int64_t j = 0; j < C; j++)
            dot += (double)dyr[j] * yr[j];
        for (int64_t j = 0; j < C; j++)
            dx[r * C + j] += yr[j] * (dyr[j] - (float)dot);
    }
}
