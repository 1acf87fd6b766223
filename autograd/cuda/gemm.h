/* CUDA matrix products through cuBLASLt (f32, TF32 or bf16 with f32 accumulation, see dc_math);
 * the contracts of cpu/gemm.h, device pointers. */
#ifndef DC_CUDA_GEMM_H
#define DC_CUDA_GEMM_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void cuda_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, const float *B,
               float beta, float *C);
/* samples: as cpu_linear_forward's; one cuBLAS call takes every row here */
void cuda_linear_forward(float *y, const float *x, const float *w, const float *b, int64_t M,
                         int64_t K, int64_t N, int64_t samples);
void cuda_linear_backward(const float *dy, const float *x, const float *w, float *dx, float *dw,
                          float *db, int64_t M, int64_t K, int64_t N);
void cuda_matmul_forward(float *c, const float *a, const float *b, int64_t B, int64_t M, int64_t K,
                         int64_t N);
void cuda_matmul_backward(const float *dc, const float *a, const float *b, float *da, float *db,
                          int64_t B, int64_t M, int64_t K, int64_t N);
void cuda_bias_backward(const float *dy, float *db, int64_t rows, int64_t cols);

#ifdef __cplusplus
}
#endif

#endif
