/* CUDA kernels of the optimizer: fused AdamW over the flat buffers, sum of squares (gradient
 * norm), scaling, EMA; the contracts of cpu/optim.h, device pointers. */
#ifndef DC_CUDA_OPTIM_H
#define DC_CUDA_OPTIM_H

#include "../cpu/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

void cuda_adamw_step(float *p, const float *g, float *m, float *v, int64_t n,
                     const cpu_adamw_args *a);
/* Waits for the device (the norm decides the clipping). */
double cuda_sum_squares(const float *x, int64_t n);
void cuda_scale(float *x, int64_t n, float s);
void cuda_ema_update(float *s, const float *p, int64_t n, float one_minus_decay);

#ifdef __cplusplus
}
#endif

#endif
