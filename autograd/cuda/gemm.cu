/* CUDA matrix products through cuBLASLt (see gemm.h): linear layers,
 * (batched) matmul, and gemm_ex for attention's per-head products.
 *
 * cuBLASLt is column-major; a row-major C = op(A) op(B) is the column-major
 * C^T = op(B)^T op(A)^T, so B goes in as cuBLASLt's first operand and A as
 * its second, with the transposes unchanged. The algorithm comes from
 * cuBLASLt's heuristic for the shape, the pointers' alignment and our
 * workspace, asked once per distinct GEMM: the descriptors and the answer are
 * kept as a plan (plan_for) that later calls of the same GEMM reuse. */
#include "common.cuh"
#include "gemm.h"

#include <stdio.h>
#include <string.h>

#define MAX_PLANS 256

/* Everything cuBLASLt's plan depends on, as our gemm_ex sees it: the device
 * and math setting, transposes, sizes, leading dimensions, batch count and
 * strides (0 when there is one matrix), the bias epilogue, and the alignment
 * class (4, 8 or 16 bytes) of each pointer, which the heuristic is told (for
 * the bias it reads the pointer itself). All int64_t: no padding, so memcmp
 * compares keys. */
typedef struct {
    int64_t device, math, ta, tb, m, n, k;
    int64_t lda, ldb, ldc, sa, sb, sc, batch;
    int64_t bias, align_a, align_b, align_c, align_bias;
} gemm_key;

/* A GEMM made once and reused: the descriptors and the heuristic's algorithm. */
typedef struct {
    bool used;
    uint64_t hash; /* of key: most lookups reject an entry on it alone */
    gemm_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc; /* cuBLASLt's A (our B), B (our A), C = D */
    cublasLtMatmulHeuristicResult_t found;
} gemm_plan;

/* Plans of every device for the life of the process, as conv.cu keeps
 * cuDNN's: a training step's ~1000 GEMMs come in a few dozen shapes, and
 * making a plan (descriptors and a heuristic query) costs more host time
 * than running a small GEMM. When all are in use the oldest is replaced. */
static gemm_plan plans[MAX_PLANS];
static int next_victim;

static cublasComputeType_t compute_type(int64_t m) {
    return m == DC_MATH_BF16   ? CUBLAS_COMPUTE_32F_FAST_16BF
           : m == DC_MATH_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                               : CUBLAS_COMPUTE_32F;
}

/* The largest of 16, 8, 4 bytes dividing the address and every row and
 * matrix step of an operand (stride 0: one matrix). */
static int64_t alignment(const void *p, int64_t ld, int64_t stride) {
    uintptr_t v = (uintptr_t)p | (uintptr_t)(ld * 4) | (uintptr_t)(stride * 4);
    return v % 16 == 0 ? 16 : v % 8 == 0 ? 8 : 4;
}

static uint64_t hash_of(const gemm_key *k) {
    const int64_t *w = (const int64_t *)k;
    uint64_t h = 14695981039346656037ull; /* FNV-1a over the words */
    for (size_t i = 0; i < sizeof *k / sizeof *w; i++)
        h = (h ^ (uint64_t)w[i]) * 1099511628211ull;
    return h;
}

/* The GEMM in words, for the messages: no algorithm, or a failed run. */
static void describe_gemm(char *what, size_t size, const gemm_key *k) {
    snprintf(what, size,
             "a %lldx%lldx%lld GEMM (ta %d, tb %d, ld %lld/%lld/%lld, batch %lld, math %d%s)",
             (long long)k->m, (long long)k->n, (long long)k->k, (int)k->ta, (int)k->tb,
             (long long)k->lda, (long long)k->ldb, (long long)k->ldc, (long long)k->batch,
             (int)k->math, k->bias ? ", bias" : "");
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

/* The bias the epilogue adds: a per-call attribute of the (cached) descriptor. */
static bool set_bias(cublasLtMatmulDesc_t op, const float *bias) {
    return CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias, sizeof bias));
}

/* The descriptor of the operation: compute type, transposes, bias epilogue. */
static bool describe(cublasLtMatmulDesc_t *op, const gemm_key *k, const float *bias) {
    if (!CUBLAS_CHECK(cublasLtMatmulDescCreate(op, compute_type(k->math), CUDA_R_32F)))
        return false;
    cublasOperation_t first = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t second = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    bool ok = CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSA, &first,
                                                          sizeof first)) &&
              CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSB,
                                                          &second, sizeof second));
    if (ok && bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        cudaDataType_t bt = CUDA_R_32F;
        ok = CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                         sizeof epi)) &&
             set_bias(*op, bias) &&
             CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                         &bt, sizeof bt));
    }
    return ok;
}

/* Search preferences: our workspace and the operands' real alignment. */
static bool prefer(cublasLtMatmulPreference_t *pref, const gemm_key *k) {
    uint64_t ws = LT_WORKSPACE;
    /* cuBLASLt's A is our B and its B our A; C and D are one buffer */
    uint32_t a = (uint32_t)k->align_b, b = (uint32_t)k->align_a, c = (uint32_t)k->align_c;
    return CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(pref)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a, sizeof a)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b, sizeof b)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &c, sizeof c)) &&
           CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
               *pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &c, sizeof c));
}

/* Releases what p holds (a plan being made may hold only part of it). */
static void drop(gemm_plan *p) {
    if (p->lc)
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lc));
    if (p->lb)
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->lb));
    if (p->la)
        CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(p->la));
    if (p->op)
        CUBLAS_CHECK(cublasLtMatmulDescDestroy(p->op));
    *p = gemm_plan{};
}

/* The descriptors of k and the heuristic's algorithm for them. False after
 * a failure (recorded); p then holds what was made, for drop(). */
static bool make(gemm_plan *p, const gemm_key *k, const float *bias) {
    cublasLtMatmulPreference_t pref = NULL;
    int count = 0;
    /* cuBLASLt's first operand is our B: [N, K] column-major, or [K, N] when tb. */
    bool ok = describe(&p->op, k, bias) &&
              layout(&p->la, k->tb ? k->k : k->n, k->tb ? k->n : k->k, k->ldb, k->sb, k->batch) &&
              layout(&p->lb, k->ta ? k->m : k->k, k->ta ? k->k : k->m, k->lda, k->sa, k->batch) &&
              layout(&p->lc, k->n, k->m, k->ldc, k->sc, k->batch) && prefer(&pref, k);
    if (ok) { /* "not supported" is how the heuristic may say it has nothing */
        cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(cuda_st()->lt, p->op, p->la, p->lb,
                                                          p->lc, p->lc, pref, 1, &p->found, &count);
        if (s != CUBLAS_STATUS_SUCCESS && s != CUBLAS_STATUS_NOT_SUPPORTED)
            ok = cuda_check_blas(s, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
        else if (s != CUBLAS_STATUS_SUCCESS || count == 0) {
            char what[224], why[320];
            describe_gemm(what, sizeof what, k);
            snprintf(why, sizeof why, "cuBLASLt has no algorithm for %s", what);
            ok = CUDA_FAIL(why);
        }
    }
    if (pref)
        CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    return ok;
}

/* The plan of k, made on first sight (bias: this call's, when k has one);
 * NULL after a failure. */
static gemm_plan *plan_for(const gemm_key *k, const float *bias) {
    uint64_t h = hash_of(k);
    for (int i = 0; i < MAX_PLANS; i++)
        if (plans[i].used && plans[i].hash == h && !memcmp(&plans[i].key, k, sizeof *k))
            return &plans[i];
    gemm_plan *p = &plans[next_victim];
    next_victim = (next_victim + 1) % MAX_PLANS;
    drop(p);
    p->key = *k;
    if (!make(p, k, bias)) {
        drop(p);
        return NULL;
    }
    p->used = true;
    p->hash = h;
    return p;
}

bool gemm_ex(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, gemm_operand A,
             gemm_operand B, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch,
             const float *bias) {
    if (M == 0 || N == 0 || batch == 0)
        return true;
    if (K == 0 || batch > INT32_MAX)
        return CUDA_FAIL("GEMM with an empty inner dimension or over 2^31 matrices");
    if (batch == 1) /* strides then mean nothing: kept out of the key and the alignment */
        A.stride = B.stride = sc = 0;
    cuda_state *st = cuda_st();
    gemm_key key = {st->device, st->math, ta, tb, M, N, K, A.ld, B.ld, ldc, A.stride, B.stride,
                    sc, batch, bias != NULL, alignment(A.p, A.ld, A.stride),
                    alignment(B.p, B.ld, B.stride), alignment(C, ldc, sc),
                    bias ? alignment(bias, 0, 0) : 0};
    gemm_plan *p = plan_for(&key, bias);
    if (!p || (bias && !set_bias(p->op, bias)))
        return false;
    cublasStatus_t s = cublasLtMatmul(st->lt, p->op, &alpha, B.p, p->la, A.p, p->lb, &beta, C,
                                      p->lc, C, p->lc, &p->found.algo, st->lt_workspace,
                                      LT_WORKSPACE, st->stream);
    if (s == CUBLAS_STATUS_SUCCESS)
        return true;
    char what[224], call[256];
    describe_gemm(what, sizeof what, &key);
    snprintf(call, sizeof call, "cublasLtMatmul of %s", what);
    return cuda_check_blas(s, call, __FILE__, __LINE__);
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
                                    int64_t M, int64_t K, int64_t N, int64_t samples) {
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
