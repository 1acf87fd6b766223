/* CUDA kernels for activations; the contracts of cpu/activation.h, device pointers. */
#ifndef DC_CUDA_ACTIVATION_H
#define DC_CUDA_ACTIVATION_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void cuda_silu_forward(float *y, const float *x, int64_t n);
void cuda_silu_backward(const float *dy, const float *x, float *dx, int64_t n);
void cuda_gelu_forward(float *y, const float *x, int64_t n);
void cuda_gelu_backward(const float *dy, const float *x, float *dx, int64_t n);
void cuda_mish_forward(float *y, const float *x, int64_t n);
void cuda_mish_backward(const float *dy, const float *x, float *dx, int64_t n);
void cuda_quick_gelu_forward(float *y, const float *x, int64_t n);
void cuda_quick_gelu_backward(const float *dy, const float *x, float *dx, int64_t n);
void cuda_softmax_forward(float *y, const float *x, int64_t rows, int64_t C);
void cuda_softmax_backward(const float *dy, const float *y, float *dx, int64_t rows, int64_t C);

#ifdef __cplusplus
}
#endif

#endif
