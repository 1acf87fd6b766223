/* CUDA matrix products through cuBLASLt (see gemm.h): linear layers,
 * (batched) matmul, and gemm_ex for attention's per-head products.
 *
 * cuBLASLt is column-major; a row-major C = op(A) op(B) is the column-major
 * C^T = op(B)^T op(A)^T, so B goes in as cuBLASLt's first operand and A as
 * its second, with the transposes unchanged. The algorithm comes from
 * cuBLASLt's heuristic for the shape, the pointers' alignment and our
 * workspace. */
#include "common.cuh"
#include "gemm.h"

static cublasComputeType_t compute_type(dc_math m) {
    return m == DC_MATH_BF16   ? CUBLAS_COMPUTE_32F_FAST_16BF
           : m == DC_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                               : CUBLAS_COMPUTE_32F;
}

/* The largest of 16, 8, 4 bytes dividing the address and every row and
 * matrix step of an operand. */
static uint32_t alignment(const void *p, int64_t ld, int64_t stride) {
    uintptr_t v = (uintptr_t)p | (uintptr_t)(ld * 4) | (uintptr_t)(stride * 4);
    return v % 16 == 0 ? 16 : v % 8 == 0 ? 8 : 4;
}

/* A column-major layout of rows x cols, leading dimension ld, batched. */
static bool layout(cublasLtMatrixLayout_t *l, int64_t rows, int64_t cols, int64_t ld,
                   int64_t stride, int64_t batch) {
    if (!CUBLAS_CHECK(
            cublasLtMatrixLayoutCreate(l, CUDA_R_32F, (uint64_t)rows, (uint64_t)cols, ld)))
        return false;
    int32_t count = (int32_t)batch;
    return batch == 1 ||
           (CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                          &count, sizeof count)) &&
            CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
                *l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride)));
}

/* The descriptor of the operation: compute type, transposes, bias epilogue. */
static bool describe(cublasLtMatmulDesc_t *op, bool ta, bool tb, const float *bias) {
    if (!CUBLAS_CHECK(cublasLtMatmulDescCreate(op, compute_type(cuda_st()->math), CUDA_R_32F)))
        return false;
    cublasOperation_t first = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t second = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    bool ok = CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSA, &first,
                                                          sizeof first)) &&
              CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSB,
                                                          &second, sizeof second));
    if (ok && bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_32F;
        ok = CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                         sizeof epi)) &&
             CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                         &bias, sizeof bias)) &&
             CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                         &bt, sizeof bt));
    }
    return ok;
}

/* Search preferences: our workspace and the operands' real alignment. */
static bool prefer(cublasLtMatmulPreference_t *pref, uint32_t align_a, uint32_t align_b,
                   uint32_t align_c) {
    uint64_t ws = LT_WORKSPACE;
    return CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(pref)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof align_c)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof align_c));
}

bool gemm_ex(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, gemm_operand A,
             gemm_operand B, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch,
             const float *bias) {
    if (M == 0 || N == 0 || batch == 0)
        return true;
    if (K == 0 || batch > INT32_MAX)
        return CUDA_FAIL("GEMM with an empty inner dimension or over 2^31 matrices");
    cuda_state *st = cuda_st();
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t found;
    int count = 0;
    /* cuBLASLt's first operand is our B: [N, K] column-major, or [K, N] when tb. */
    bool ok = describe(&op, ta, tb, bias) &&
              layout(&la, tb ? K : N, tb ? N : K, B.ld, B.stride, batch) &&
              layout(&lb, ta ? M : K, ta ? K : M, A.ld, A.stride, batch) &&
              layout(&lc, N, M, ldc, sc, batch) &&
              prefer(&pref, alignment(B.p, B.ld, B.stride), alignment(A.p, A.ld, A.stride),
                     alignment(C, ldc, sc));
    /* The GEMM in words, for the messages: no algorithm, or a failed run. */
    char what[224], call[256];
    snprintf(what, sizeof what,
             "a %lldx%lldx%lld GEMM (ta %d, tb %d, ld %lld/%lld/%lld, batch %lld, math %d%s)",
             (long long)M, (long long)N, (long long)K, ta, tb, (long long)A.ld, (long long)B.ld,
             (long long)ldc, (long long)batch, (int)st->math, bias ? ", bias" : "");
    snprintf(call, sizeof call, "cublasLtMatmul of %s", what);
    if (ok) { /* "not supported" is how the heuristic may say it has nothing */
        cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(st->lt, op, la, lb, lc, lc, pref, 1,
                                                          &found, &count);
        if (s != CUBLAS_STATUS_SUCCESS && s != CUBLAS_STATUS_NOT_SUPPORTED)
            ok = cuda_check_blas(s, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
        else if (s != CUBLAS_STATUS_SUCCESS || count == 0) {
            char why[320];
            snprintf(why, sizeof why, "cuBLASLt has no algorithm for %s", what);
            ok = CUDA_FAIL(why);
        }
    }
    ok = ok && cuda_check_blas(cublasLtMatmul(st->lt, op, &alpha, B.p, la, A.p, lb, &beta, C, lc,
                                              C, lc, &found.algo, st->lt_workspace, LT_WORKSPACE,
                                              st->stream),
                               call, __FILE__, __LINE__);
    if (pref)
        CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    if (lc)
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lc));
    if (lb)
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    if (la)
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    if (op)
        CUBLAS_CHECK(cublasLtMatmulDescDestroy(op));
    return ok;
}

/* A dense row-major operand of a batch of rows x cols matrices. */
static gemm_operand dense(const float *p, int64_t rows, int64_t cols) {
    return gemm_operand{p, cols, rows * cols};
}

extern "C" void cuda_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A,
                          const float *B, float beta, float *C) {
    gemm_ex(ta, tb, M, N, K, 1.0f, dense(A, ta ? K : M, ta ? M : K),
            dense(B, tb ? N : K, tb ? K : N), beta, C, N, M * N, 1, NULL);
}

extern "C" void cuda_bias_backward(const float *dy, float *db, int64_t rows, int64_t cols) {
    launch_colsum(dy, NULL, db, 1, rows, cols, 1.0f);
}

extern "C" void cuda_linear_forward(float *y, const float *x, const float *w, const float *b,
                                    int64_t M, int64_t K, int64_t N) {
    gemm_ex(false, true, M, N, K, 1.0f, dense(x, M, K), dense(w, N, K), 0.0f, y, N, M * N, 1, b);
}

extern "C" void cuda_linear_backward(const float *dy, const float *x, const float *w, float *dx,
                                     float *dw, float *db, int64_t M, int64_t K, int64_t N) {
    if (dx)
        cuda_gemm(false, false, M, K, N, dy, w, 1.0f, dx);
    if (dw)
        cuda_gemm(true, false, N, K, M, dy, x, 1.0f, dw);
    if (db)
        cuda_bias_backward(dy, db, M, N);
}

extern "C" void cuda_matmul_forward(float *c, const float *a, const float *b, int64_t B,
                                    int64_t M, int64_t K, int64_t N) {
    gemm_ex(false, false, M, N, K, 1.0f, dense(a, M, K), dense(b, K, N), 0.0f, c, N, M * N, B,
            NULL);
}

extern "C" void cuda_matmul_backward(const float *dc, const float *a, const float *b, float *da,
                                     float *db, int64_t B, int64_t M, int64_t K, int64_t N) {
    if (da) /* dc [M, N] @ b^T, b stored [K, N] */
        gemm_ex(false, true, M, K, N, 1.0f, dense(dc, M, N), dense(b, K, N), 1.0f, da, K, M * K,
                B, NULL);
    if (db) /* a^T @ dc, a stored [M, K] */
        gemm_ex(true, false, K, N, M, 1.0f, dense(a, M, K), dense(dc, M, N), 1.0f, db, N, K * N,
                B, NULL);
}
