/* CPU kernels for activations: SiLU, exact GELU, Mish, quick GELU, softmax over the last
 * dimension. Backward kernels add into dx. */
#ifndef DC_CPU_ACTIVATION_H
#define DC_CPU_ACTIVATION_H

#include <stdint.h>

/* y = x * sigmoid(x), n elements. */
void cpu_silu_forward(float *y, const float *x, int64_t n);
void cpu_silu_backward(const float *dy, const float *x, float *dx, int64_t n);

/* y = 0.5 x (1 + erf(x / sqrt 2)), n elements. */
void cpu_gelu_forward(float *y, const float *x, int64_t n);
void cpu_gelu_backward(const float *dy, const float *x, float *dx, int64_t n);

/* y = x tanh(softplus(x)), softplus(x) = log(1 + e^x), or x when x > 20 (PyTorch's threshold). */
void cpu_mish_forward(float *y, const float *x, int64_t n);
void cpu_mish_backward(const float *dy, const float *x, float *dx, int64_t n);

/* y = x sigmoid(1.702 x), n elements. */
void cpu_quick_gelu_forward(float *y, const float *x, int64_t n);
void cpu_quick_gelu_backward(const float *dy, const float *x, float *dx, int64_t n);

/* x, y [rows, C]: softmax of each row. */
void cpu_softmax_forward(float *y, const float *x, int64_t rows, int64_t C);
/* From the forward's output y: dx += y * (dy - sum(dy * y)) per row. */
void cpu_softmax_backward(const float *dy, const float *y, float *dx, int64_t rows, int64_t C);

#endif
