/* CPU kernels for linear layers and matmul: OpenBLAS GEMMs (beta = 1 where a
 * result accumulates), bias rows and column sums with OpenMP.
 *
 * The forward pass of a linear layer is cut into one-threaded GEMMs over a
 * fixed number of rows of one sample (cpu_blas_each): measured with Debian's
 * OpenBLAS 0.3.21, a row's bits change with the number of rows of its call,
 * its place among them and the threads the call runs on (on Haswell and
 * Cooperlake cores alike), so one batched GEMM would not be batch-invariant. */
#include "gemm.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

/* The column sums: columns per task, and rows summed in float before the
 * double total takes them. */
#define BIAS_COLS 64
#define BIAS_ROWS 64
/* Floats below which a loop runs on one thread: waking the team would cost more. */
#define PAR_MIN_FLOATS 65536
/* Rows of one sample per GEMM of a linear forward pass: enough that the
 * weights packed per call cost little beside the product. */
#define LINEAR_CHUNK_ROWS 256

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

void cpu_blas_each(int64_t count, int threads, void (*job)(void *arg, int64_t i, int thread),
                   void *arg) {
    /* OpenBLAS's OpenMP build runs one-threaded inside a team by itself, its
     * pthreads build needs telling; and a team of one is not a team. Setting
     * OpenBLAS's count also sets OpenMP's (OpenMP build): both come back. */
    int blas_threads = openblas_get_num_threads(), omp_threads = omp_get_max_threads();
    int team = count < threads ? (int)count : threads;
    openblas_set_num_threads(1);
#pragma omp parallel for num_threads(team) schedule(dynamic) if (team > 1)
    for (int64_t i = 0; i < count; i++)
        job(arg, i, omp_get_thread_num());
    openblas_set_num_threads(blas_threads);
    omp_set_num_threads(omp_threads);
}

typedef struct {
    float *y;
    const float *x, *w, *b;
    int64_t K, N, rows, chunk, chunks; /* rows per sample, rows per call, calls per sample */
} linear_job;

void cpu_linear_call(float *y, const float *x, const float *w, const float *b, int64_t M,
                     int64_t K, int64_t N) {
    if (b) /* start from the bias rows and let the GEMM add: one pass over y */
        for (int64_t r = 0; r < M; r++)
            memcpy(y + r * N, b, (size_t)N * sizeof *y);
    if (M == 1 && K > 0) { /* one row (a decoder's token): sgemv reads w once; GEMM packs
                              it first, 2.7x slower at 768 x 3072 */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)N, (int)K, 1.0f, w, (int)K, x, 1,
                    b ? 1.0f : 0.0f, y, 1);
        return;
    }
    cpu_gemm(false, true, M, N, K, x, w, b ? 1.0f : 0.0f, y);
}

static void linear_chunk(void *arg, int64_t i, int thread) {
    const linear_job *j = arg;
    int64_t first = i % j->chunks * j->chunk, r0 = i / j->chunks * j->rows + first;
    int64_t m = j->chunk < j->rows - first ? j->chunk : j->rows - first;
    cpu_linear_call(j->y + r0 * j->N, j->x + r0 * j->K, j->w, j->b, m, j->K, j->N);
}

void cpu_linear_forward(float *y, const float *x, const float *w, const float *b, int64_t M,
                        int64_t K, int64_t N, int64_t samples) {
    if (M == 0)
        return;
    int64_t rows = M / samples, chunk = rows < LINEAR_CHUNK_ROWS ? rows : LINEAR_CHUNK_ROWS;
    if (rows < CPU_LINEAR_FEW_ROWS && K > 0) {
        cpu_linear_rows(y, x, w, b, M, K, N);
        return;
    }
    linear_job j = {y, x, w, b, K, N, rows, chunk, (rows + chunk - 1) / chunk};
    int threads = M * N * K >= PAR_MIN_FLOATS ? omp_get_max_threads() : 1;
    cpu_blas_each(samples * j.chunks, threads, linear_chunk, &j);
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
