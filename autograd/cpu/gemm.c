/* CPU kernels for linear layers and matmul: OpenBLAS GEMMs (beta = 1 where a
 * result accumulates), bias rows and column sums with OpenMP. */
#include "gemm.h"

#include <cblas.h>
#include <string.h>

/* The column sums: columns per task, and rows summed in float before the
 * double total takes them. */
#define BIAS_COLS 64
#define BIAS_ROWS 64
/* Floats below which a loop runs on one thread: waking the team would cost more. */
#define PAR_MIN_FLOATS 65536

void cpu_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, const float *B,
              float beta, float *C) {
    if (M == 0 || N == 0)
        return;
    if (K == 0) { /* an empty sum; BLAS would also reject the zero leading dimension */
        if (beta == 0.0f)
            memset(C, 0, (size_t)(M * N) * sizeof *C);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                (int)M, (int)N, (int)K, 1.0f, A, (int)(ta ? M : K), B, (int)(tb ? K : N), beta, C,
                (int)N);
}

void cpu_bias_fill(float *y, const float *b, int64_t rows, int64_t cols) {
    if (!b) {
        memset(y, 0, (size_t)(rows * cols) * sizeof *y);
        return;
    }
#pragma omp parallel for if (rows * cols >= PAR_MIN_FLOATS)
    for (int64_t r = 0; r < rows; r++)
        memcpy(y + r * cols, b, (size_t)cols * sizeof *y);
}

void cpu_bias_backward(const float *dy, float *db, int64_t rows, int64_t cols) {
    int64_t tasks = (cols + BIAS_COLS - 1) / BIAS_COLS;
#pragma omp parallel for if (rows * cols >= PAR_MIN_FLOATS)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t j0 = t * BIAS_COLS, nj = cols - j0 < BIAS_COLS ? cols - j0 : BIAS_COLS;
        double total[BIAS_COLS] = {0};
        for (int64_t r0 = 0; r0 < rows; r0 += BIAS_ROWS) { /* float sums of short runs, vectorised */
            float part[BIAS_COLS] = {0};
            for (int64_t r = r0; r < rows && r < r0 + BIAS_ROWS; r++) {
                const float *row = dy + r * cols + j0;
#pragma omp simd
                for (int64_t j = 0; j < nj; j++)
                    part[j] += row[j];
            }
            for (int64_t j = 0; j < nj; j++)
                total[j] += part[j];
        }
        for (int64_t j = 0; j < nj; j++)
            db[j0 + j] += (float)total[j];
    }
}

void cpu_linear_forward(float *y, const float *x, const float *w, const float *b, int64_t M,
                        int64_t K, int64_t N) {
    if (b) { /* start from the bias rows and let the GEMM add: one pass over y */
        cpu_bias_fill(y, b, M, N);
        cpu_gemm(false, true, M, N, K, x, w, 1.0f, y);
    } else {
        cpu_gemm(false, true, M, N, K, x, w, 0.0f, y);
    }
}

void cpu_linear_backward(const float *dy, const float *x, const float *w, float *dx, float *dw,
                         float *db, int64_t M, int64_t K, int64_t N) {
    if (dx)
        cpu_gemm(false, false, M, K, N, dy, w, 1.0f, dx);
    if (dw)
        cpu_gemm(true, false, N, K, M, dy, x, 1.0f, dw);
    if (db)
        cpu_bias_backward(dy, db, M, N);
}

void cpu_matmul_forward(float *c, const float *a, const float *b, int64_t B, int64_t M, int64_t K,
                        int64_t N) {
    for (int64_t i = 0; i < B; i++)
        cpu_gemm(false, false, M, N, K, a + i * M * K, b + i * K * N, 0.0f, c + i * M * N);
}

void cpu_matmul_backward(const float *dc, const float *a, const float *b, float *da, float *db,
                         int64_t B, int64_t M, int64_t K, int64_t N) {
    for (int64_t i = 0; i < B; i++) {
        if (da)
            cpu_gemm(false, true, M, K, N, dc + i * M * N, b + i * K * N, 1.0f, da + i * M * K);
        if (db)
            cpu_gemm(true, false, K, N, M, a + i * M * K, dc + i * M * N, 1.0f, db + i * K * N);
    }
}
