/* CPU kernels for matrix products: linear layers, (batched) matmul, and the
 * bias helpers that conv2d shares. GEMMs go to OpenBLAS (which threads them);
 * the rest is OpenMP. Backward kernels add into the gradient buffers they are
 * given (NULL = not needed). Every dimension must fit in an int (BLAS). */
#ifndef DC_CPU_GEMM_H
#define DC_CPU_GEMM_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

/* True when GEMM dimensions fit BLAS's int. */
static inline bool cpu_gemm_fits(int64_t m, int64_t n, int64_t k) {
    return m <= INT_MAX && n <= INT_MAX && k <= INT_MAX;
}

/* Row-major C [M, N] = A @ B + beta * C, with A [M, K] (stored [K, M] when
 * ta), B [K, N] (stored [N, K] when tb), all dense. */
void cpu_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, const float *B,
              float beta, float *C);

/* Runs job(arg, i, thread) for i < count on up to `threads` OpenMP threads
 * (thread < threads), with every BLAS call inside on one thread. OpenBLAS's
 * bits depend on a call's shape and on how many threads share it, so work
 * cut into calls whose shapes do not depend on the batch gives every sample
 * the same result in any batch. */
void cpu_blas_each(int64_t count, int threads, void (*job)(void *arg, int64_t i, int thread),
                   void *arg);

/* Rows per sample below which a linear layer is a few dot products per
 * output row (cpu_linear_rows) rather than a product of matrices: packing
 * the weights for a GEMM does not pay there. */
#define CPU_LINEAR_FEW_ROWS 8

/* y [M, N] = x [M, K] @ w [N, K]^T + b (b may be NULL), each output one dot
 * product in a fixed order: rows independent of each other, the weights read
 * once for all of them. Built per ISA (isa.h). */
void cpu_linear_rows(float *y, const float *x, const float *w, const float *b, int64_t M,
                     int64_t K, int64_t N);
/* y [M, N] = x [M, K] @ w [N, K]^T + b [N] (b may be NULL), where the M rows
 * are `samples` equal groups (images, sequences, or single rows): each
 * group's rows are computed by the same calls whatever the other groups are,
 * so a sample's result does not depend on its batch. */
void cpu_linear_forward(float *y, const float *x, const float *w, const float *b, int64_t M,
                        int64_t K, int64_t N, int64_t samples);
/* The same as one GEMM call on this thread: for jobs of cpu_blas_each. */
void cpu_linear_call(float *y, const float *x, const float *w, const float *b, int64_t M,
                     int64_t K, int64_t N);
/* dx [M, K] += dy @ w; dw [N, K] += dy^T @ x; db [N] += column sums of dy [M, N]. */
void cpu_linear_backward(const float *dy, const float *x, const float *w, float *dx, float *dw,
                         float *db, int64_t M, int64_t K, int64_t N);

/* c [B, M, N] = a [B, M, K] @ b [B, K, N], one GEMM per batch entry. */
void cpu_matmul_forward(float *c, const float *a, const float *b, int64_t B, int64_t M, int64_t K,
                        int64_t N);
/* da [B, M, K] += dc @ b^T; db [B, K, N] += a^T @ dc. */
void cpu_matmul_backward(const float *dc, const float *a, const float *b, float *da, float *db,
                         int64_t B, int64_t M, int64_t K, int64_t N);

/* db [cols] += column sums of dy [rows, cols]. */
void cpu_bias_backward(const float *dy, float *db, int64_t rows, int64_t cols);

#endif
