/* CPU kernels for SiLU, exact GELU, Mish, quick GELU and softmax (OpenMP). */
#include "activation.h"
#include "isa.h"
#include "parallel.h"

#include "vmath.h"

#include <string.h>

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

/* The exact GELU in whole blocks of GELU_LANES elements, the last one padded
 * in scratch: every element goes through libmvec's vector erff, where a
 * plain vector loop would leave its last elements to the scalar erff, which
 * rounds differently, and a sample's bits would change with its batch. */
#define GELU_LANES 16

static inline float gelu_cdf(float x) { return 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)); }

static void gelu_block(float *y, const float *x) {
#pragma omp simd
    for (int l = 0; l < GELU_LANES; l++)
        y[l] = x[l] * gelu_cdf(x[l]);
}

/* d/dx of x * Phi(x) is Phi(x) + x * phi(x), phi the standard normal density. */
static void gelu_grad_block(float *dx, const float *dy, const float *x) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
#pragma omp simd
    for (int l = 0; l < GELU_LANES; l++) {
        float pdf = inv_sqrt_2pi * expf(-0.5f * x[l] * x[l]);
        dx[l] += dy[l] * (gelu_cdf(x[l]) + x[l] * pdf);
    }
}

void CPU_ISA_FN(cpu_gelu_forward)(float *y, const float *x, int64_t n) {
    int64_t whole = n / GELU_LANES * GELU_LANES, rest = n - whole;
#pragma omp parallel for if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < whole; i += GELU_LANES)
        gelu_block(y + i, x + i);
    if (rest) {
        float xb[GELU_LANES] = {0}, yb[GELU_LANES];
        memcpy(xb, x + whole, (size_t)rest * sizeof(float));
        gelu_block(yb, xb);
        memcpy(y + whole, yb, (size_t)rest * sizeof(float));
    }
}

void CPU_ISA_FN(cpu_gelu_backward)(const float *dy, const float *x, float *dx, int64_t n) {
    int64_t whole = n / GELU_LANES * GELU_LANES, rest = n - whole;
#pragma omp parallel for if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < whole; i += GELU_LANES)
        gelu_grad_block(dx + i, dy + i, x + i);
    if (rest) {
        float dyb[GELU_LANES] = {0}, xb[GELU_LANES] = {0}, dxb[GELU_LANES] = {0};
        memcpy(dyb, dy + whole, (size_t)rest * sizeof(float));
        memcpy(xb, x + whole, (size_t)rest * sizeof(float));
        gelu_grad_block(dxb, dyb, xb);
        for (int64_t l = 0; l < rest; l++)
            dx[whole + l] += dxb[l];
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
