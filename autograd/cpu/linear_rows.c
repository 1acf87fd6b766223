/* A linear layer over a few rows per sample (a decoder's new token for each
 * sequence), y [M, N] = x [M, K] @ w [N, K]^T + b: every output is one dot
 * product over K in a fixed order whatever M is, so rows do not affect each
 * other (batch invariance), and a block of weight rows is read from memory
 * once for all M rows. OpenBLAS packed the weights per call and, to stay
 * batch-invariant, got one call per sample: every sample streamed every
 * weight (BLIP base: ~0.5 GB per decoding step and image).
 *
 * GCC vector types of the pass's width (isa.h builds this file once per ISA)
 * with unaligned loads: no peeling for alignment, whose start would depend
 * on where a row happens to lie. */
#include "gemm.h"
#include "isa.h"
#include "parallel.h"

#include <stdint.h>

#if defined(__AVX512F__)
#define VB 16
#elif defined(__AVX2__)
#define VB 8
#else
#define VB 4
#endif
/* Weight rows per dot block (x's vectors loaded once for them) and per task
 * (their K floats stay in cache while every row of x goes by). */
#define WB 4
#define TASK_ROWS 16

typedef float vf __attribute__((vector_size(VB * sizeof(float)), aligned(sizeof(float))));

static inline vf load(const float *p) { return *(const vf *)p; }

static inline float lanes_sum(vf v) {
    float s = 0.0f;
    for (int i = 0; i < VB; i++)
        s += v[i];
    return s;
}

/* out[j] = x . w[j] (rows of w K apart) for j < WB. */
static void dots(const float *x, const float *w, int64_t K, float out[WB]) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int64_t k = 0;
    for (; k + VB <= K; k += VB) {
        vf xv = load(x + k);
        a0 += xv * load(w + k);
        a1 += xv * load(w + K + k);
        a2 += xv * load(w + 2 * K + k);
        a3 += xv * load(w + 3 * K + k);
    }
    float s0 = lanes_sum(a0), s1 = lanes_sum(a1), s2 = lanes_sum(a2), s3 = lanes_sum(a3);
    for (; k < K; k++) {
        s0 += x[k] * w[k];
        s1 += x[k] * w[K + k];
        s2 += x[k] * w[2 * K + k];
        s3 += x[k] * w[3 * K + k];
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* out = x . w, the same arithmetic as one lane of dots. */
static float dot(const float *x, const float *w, int64_t K) {
    vf a = {0};
    int64_t k = 0;
    for (; k + VB <= K; k += VB)
        a += load(x + k) * load(w + k);
    float s = lanes_sum(a);
    for (; k < K; k++)
        s += x[k] * w[k];
    return s;
}

void CPU_ISA_FN(cpu_linear_rows)(float *y, const float *x, const float *w, const float *b,
                                 int64_t M, int64_t K, int64_t N) {
    int64_t tasks = (N + TASK_ROWS - 1) / TASK_ROWS;
#pragma omp parallel for schedule(static) if (M * N * K >= CPU_PAR_MIN)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t n0 = t * TASK_ROWS, n1 = n0 + TASK_ROWS < N ? n0 + TASK_ROWS : N;
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            float *ym = y + m * N;
            int64_t n = n0;
            for (; n + WB <= n1; n += WB) {
                float s[WB];
                dots(xm, w + n * K, K, s);
                for (int j = 0; j < WB; j++)
                    ym[n + j] = s[j] + (b ? b[n + j] : 0.0f);
            }
            for (; n < n1; n++)
                ym[n] = dot(xm, w + n * K, K) + (b ? b[n] : 0.0f);
        }
    }
}
