/* CUDA group normalisation (and layer normalisation, one group per row), NHWC; the contracts of
 * cpu/norm.h, device pointers. */
#ifndef DC_CUDA_NORM_H
#define DC_CUDA_NORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void cuda_group_norm_forward(float *y, float *stats, const float *x, const float *w,
                             const float *b, int64_t N, int64_t S, int64_t C, int64_t G, float eps,
                             bool silu);
void cuda_group_norm_backward(const float *dy, const float *x, const float *w, const float *b,
                              const float *stats, float *dx, float *dw, float *db, void *work,
                              int64_t N, int64_t S, int64_t C, int64_t G, bool silu);
size_t cuda_group_norm_work_bytes(int64_t N, int64_t S, int64_t C, bool silu);

#ifdef __cplusplus
}
#endif

#endif
