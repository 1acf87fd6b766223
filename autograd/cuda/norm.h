/* CUDA group normalisation (and layer normalisation, one group per row), NHWC; the contracts of
 * cpu/norm.h, device pointers. */
#ifndef DC_CUDA_NORM_H
#define DC_CUDA_NORM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void cuda_group_norm_forward(float *y, float *stats, const float *x, const float *w,
                             const float *b, int64_t N, int64_t S, int64_t C, int64_t G, float eps);
void cuda_group_norm_backward(const float *dy, const float *x, const float *w, const float *stats,
                              float *dx, float *dw, float *db, int64_t N, int64_t S, int64_t C,
                              int64_t G);

#ifdef __cplusplus
}
#endif

#endif
