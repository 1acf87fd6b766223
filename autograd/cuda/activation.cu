/* CUDA kernels for SiLU, exact GELU, Mish, quick GELU and softmax over the last dimension
 * (see activation.h). The formulas are the CPU's, term for term. */
#include "activation.h"
#include "common.cuh"

__device__ static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ static void silu_fwd(float *y, const float *x, int64_t n) {
    FOR_N(i, n)
    y[i] = x[i] * sigmoid(x[i]);
}

__global__ static void silu_bwd(const float *dy, const float *x, float *dx, int64_t n) {
    FOR_N(i, n) {
        float s = sigmoid(x[i]);
        dx[i] += dy[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

#define SQRT1_2 0.70710678118654752440f

__global__ static void gelu_fwd(float *y, const float *x, int64_t n) {
    FOR_N(i, n)
    y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * SQRT1_2));
}

__global__ static void gelu_bwd(const float *dy, const float *x, float *dx, int64_t n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    FOR_N(i, n) {
        float cdf = 0.5f * (1.0f + erff(x[i] * SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]);
        dx[i] += dy[i] * (cdf + x[i] * pdf);
    }
}

__device__ static inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

__global__ static void mish_fwd(float *y, const float *x, int64_t n) {
    FOR_N(i, n)
    y[i] = x[i] * tanhf(softplus(x[i]));
}

__global__ static void mish_bwd(const float *dy, const float *x, float *dx, int64_t n) {
    FOR_N(i, n) {
        float t = tanhf(softplus(x[i]));
        dx[i] += dy[i] * (t + x[i] * (1.0f - t * t) * sigmoid(x[i]));
    }
}

#define QUICK_GELU_K 1.702f

__global__ static void quick_gelu_fwd(float *y, const float *x, int64_t n) {
    FOR_N(i, n)
    y[i] = x[i] * sigmoid(QUICK_GELU_K * x[i]);
}

__global__ static void quick_gelu_bwd(const float *dy, const float *x, float *dx, int64_t n) {
    FOR_N(i, n) {
        float s = sigmoid(QUICK_GELU_K * x[i]);
        dx[i] += dy[i] * s * (1.0f + QUICK_GELU_K * x[i] * (1.0f - s));
    }
}

extern "C" void cuda_silu_forward(float *y, const float *x, int64_t n) {
    LAUNCH(silu_fwd, grid_for(n), BLOCK, 0, y, x, n);
}

extern "C" void cuda_silu_backward(const float *dy, const float *x, float *dx, int64_t n) {
    LAUNCH(silu_bwd, grid_for(n), BLOCK, 0, dy, x, dx, n);
}

extern "C" void cuda_gelu_forward(float *y, const float *x, int64_t n) {
    LAUNCH(gelu_fwd, grid_for(n), BLOCK, 0, y, x, n);
}

extern "C" void cuda_gelu_backward(const float *dy, const float *x, float *dx, int64_t n) {
    LAUNCH(gelu_bwd, grid_for(n), BLOCK, 0, dy, x, dx, n);
}

extern "C" void cuda_mish_forward(float *y, const float *x, int64_t n) {
    LAUNCH(mish_fwd, grid_for(n), BLOCK, 0, y, x, n);
}

extern "C" void cuda_mish_backward(const float *dy, const float *x, float *dx, int64_t n) {
    LAUNCH(mish_bwd, grid_for(n), BLOCK, 0, dy, x, dx, n);
}

extern "C" void cuda_quick_gelu_forward(float *y, const float *x, int64_t n) {
    LAUNCH(quick_gelu_fwd, grid_for(n), BLOCK, 0, y, x, n);
}

extern "C" void cuda_quick_gelu_backward(const float *dy, const float *x, float *dx, int64_t n) {
    LAUNCH(quick_gelu_bwd, grid_for(n), BLOCK, 0, dy, x, dx, n);
}

/* One block per row: the max, then the sum of exponentials in double. */
__global__ static void softmax_fwd(float *y, const float *x, int64_t rows, int64_t C) {
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * C;
        float *yr = y + r * C, max = -INFINITY;
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
            max = fmaxf(max, xr[j]);
        max = block_max(max);
        double sum = 0;
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
            float e = expf(xr[j] - max);
            yr[j] = e;
            sum += e;
        }
        float inv = (float)(1.0 / block_sum(sum));
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
            yr[j] *= inv;
    }
}

__global__ static void softmax_bwd(const float *dy, const float *y, float *dx, int64_t rows,
                                   int64_t C) {
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *dyr = dy + r * C, *yr = y + r * C;
        double dot = 0;
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
            dot += (double)dyr[j] * yr[j];
        float d = (float)block_sum(dot);
        for (int64_t j = threadIdx.x; j < C; j += blockDim.x)
            dx[r * C + j] += yr[j] * (dyr[j] - d);
    }
}

extern "C" void cuda_softmax_forward(float *y, const float *x, int64_t rows, int64_t C) {
    LAUNCH(softmax_fwd, grid_rows(rows), BLOCK, 0, y, x, rows, C);
}

extern "C" void cuda_softmax_backward(const float *dy, const float *y, float *dx, int64_t rows,
                                      int64_t C) {
    LAUNCH(softmax_bwd, grid_rows(rows), BLOCK, 0, dy, y, dx, rows, C);
}
