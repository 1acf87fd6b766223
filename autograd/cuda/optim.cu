/* CUDA kernels of the optimizer over the flat parameter and gradient
 * buffers (see optim.h): one fused AdamW pass (the CPU's element function),
 * the sum of squares for the gradient norm, scaling, the EMA. */
#include "common.cuh"
#include "optim.h"

__global__ static void adamw(float *p, const float *g, float *m, float *v, int64_t n,
                             cpu_adamw_args a) {
    FOR_N(i, n)
    cpu_adamw_element(&p[i], g[i], &m[i], &v[i], &a);
}

extern "C" void cuda_adamw_step(float *p, const float *g, float *m, float *v, int64_t n,
                                const cpu_adamw_args *a) {
    LAUNCH(adamw, grid_for(n), BLOCK, 0, p, g, m, v, n, *a);
}

struct square_of {
    const float *x;
    __device__ double operator()(int64_t i) const { return (double)x[i] * x[i]; }
};

extern "C" double cuda_sum_squares(const float *x, int64_t n) {
    return reduce_to_host(square_of{x}, n);
}

__global__ static void scale(float *x, int64_t n, float s) {
    FOR_N(i, n)
    x[i] *= s;
}

extern "C" void cuda_scale(float *x, int64_t n, float s) {
    LAUNCH(scale, grid_for(n), BLOCK, 0, x, n, s);
}

__global__ static void ema(float *s, const float *p, int64_t n, float one_minus_decay) {
    FOR_N(i, n)
    s[i] -= one_minus_decay * (s[i] - p[i]);
}

extern "C" void cuda_ema_update(float *s, const float *p, int64_t n, float one_minus_decay) {
    LAUNCH(ema, grid_for(n), BLOCK, 0, s, p, n, one_minus_decay);
}
