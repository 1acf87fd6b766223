/* CUDA kernels: broadcast binary ops, affine, sums; the contracts of cpu/elementwise.h, device
 * pointers. */
#ifndef DC_CUDA_ELEMENTWISE_H
#define DC_CUDA_ELEMENTWISE_H

#include "../cpu/elementwise.h"

#ifdef __cplusplus
extern "C" {
#endif

void cuda_binary_forward(cpu_binary_kind k, float *out, const float *a, const float *b,
                         const int64_t as[4], const int64_t bs[4]);
void cuda_binary_backward(cpu_binary_kind k, const float *dout, const float *a, const float *b,
                          float *da, float *db, const int64_t as[4], const int64_t bs[4]);
void cuda_affine_forward(float *out, const float *x, int64_t n, float alpha, float beta);
void cuda_affine_backward(const float *dout, float *dx, int64_t n, float alpha);
void cuda_sum_forward(float *out, const float *x, int64_t n, double div);
void cuda_fill_add(float *dx, int64_t n, const float *g, float div);

#ifdef __cplusplus
}
#endif

#endif
