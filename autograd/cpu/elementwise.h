/* CPU kernels: broadcast binary ops, affine, reshape gradient, sums.
 * Backward kernels add into the gradient buffers they are given (NULL = not needed). */
#ifndef DC_CPU_ELEMENTWISE_H
#define DC_CPU_ELEMENTWISE_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { CPU_ADD, CPU_SUB, CPU_MUL } cpu_binary_kind;

/* When b is broadcast over one contiguous block of a's dimensions, a reads
 * as [A, R, C] and b as [A, 1, C]. Every broadcast the models make is of
 * this form: a bias [C] (A = 1), a time embedding [N, 1, 1, C], a
 * per-sample scale [N, 1, 1, 1]. False otherwise. */
static inline bool cpu_broadcast_split3(const int64_t as[4], const int64_t bs[4], int64_t *A,
                                        int64_t *R, int64_t *C) {
    int first = 4, last = -1;
    for (int d = 0; d < 4; d++)
        if (bs[d] != as[d]) {
            first = first < d ? first : d;
            last = d;
        }
    for (int d = first; d <= last; d++)
        if (bs[d] != 1 && as[d] != 1)
            return false;
    *A = *R = *C = 1;
    for (int d = 0; d < 4; d++)
        *(d < first ? A : d <= last ? R : C) *= as[d];
    return true;
}

/* a has shape as[4]; b has bs[4] with bs[i] == as[i] or 1 (both padded to 4 dims). */
void cpu_binary_forward(cpu_binary_kind k, float *out, const float *a, const float *b,
                        const int64_t as[4], const int64_t bs[4]);
void cpu_binary_backward(cpu_binary_kind k, const float *dout, const float *a, const float *b,
                         float *da, float *db, const int64_t as[4], const int64_t bs[4]);

void cpu_affine_forward(float *out, const float *x, int64_t n, float alpha, float beta);
/* dx += alpha * dout */
void cpu_affine_backward(const float *dout, float *dx, int64_t n, float alpha);

/* out[0] = (float)(sum / div), the sum taken in double precision. */
void cpu_sum_forward(float *out, const float *x, int64_t n, double div);
/* dx += g[0] / div (g: a one-element gradient on the kernel's device). */
void cpu_fill_add(float *dx, int64_t n, const float *g, float div);

#endif
