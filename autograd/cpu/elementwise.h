/* CPU kernels: broadcast binary ops, affine, reshape gradient, sums.
 * Backward kernels add into the gradient buffers they are given (NULL = not needed). */
#ifndef DC_CPU_ELEMENTWISE_H
#define DC_CPU_ELEMENTWISE_H

#include <stdint.h>

typedef enum { CPU_ADD, CPU_SUB, CPU_MUL } cpu_binary_kind;

/* a has shape as[4]; b has bs[4] with bs[i] == as[i] or 1 (both padded to 4 dims). */
void cpu_binary_forward(cpu_binary_kind k, float *out, const float *a, const float *b,
                        const int64_t as[4], const int64_t bs[4]);
void cpu_binary_backward(cpu_binary_kind k, const float *dout, const float *a, const float *b,
                         float *da, float *db, const int64_t as[4], const int64_t bs[4]);

void cpu_affine_forward(float *out, const float *x, int64_t n, float alpha, float beta);
/* dx += alpha * dout */
void cpu_affine_backward(const float *dout, float *dx, int64_t n, float alpha);

/* Sum in double precision. */
double cpu_sum_forward(const float *x, int64_t n);
/* dx += g */
void cpu_fill_add(float *dx, int64_t n, float g);

#endif
