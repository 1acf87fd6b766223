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
#include "vec.h"

#include <stdbool.h>
#include <stdint.h>

/* Weight rows per dot block (x's vectors loaded once for them); rows of w
 * and of x per task (both stay in cache while the task runs). */
#define WB 4
#define TASK_ROWS 16
#define X_ROWS 64


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

/* The dots of two rows of x (K apart) with WB rows of w: out0 for x, out1
 * for x + K, each sum formed exactly as dots forms it. */
static void dots2(const float *x, const float *w, int64_t K, float out0[WB], float out1[WB]) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    int64_t k = 0;
    for (; k + VB <= K; k += VB) {
        vf xa = load(x + k), xb = load(x + K + k);
        vf w0 = load(w + k), w1 = load(w + K + k), w2 = load(w + 2 * K + k), w3 = load(w + 3 * K + k);
        a0 += xa * w0, a1 += xa * w1, a2 += xa * w2, a3 += xa * w3;
        b0 += xb * w0, b1 += xb * w1, b2 += xb * w2, b3 += xb * w3;
    }
    float s[2][WB] = {{lanes_sum(a0), lanes_sum(a1), lanes_sum(a2), lanes_sum(a3)},
                      {lanes_sum(b0), lanes_sum(b1), lanes_sum(b2), lanes_sum(b3)}};
    for (; k < K; k++)
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < WB; j++)
                s[i][j] += x[i * K + k] * w[j * K + k];
    for (int j = 0; j < WB; j++)
        out0[j] = s[0][j], out1[j] = s[1][j];
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
    /* tasks: blocks of X_ROWS rows of x times TASK_ROWS rows of w, the rows'
     * block outer, so a thread's consecutive tasks keep their rows of x in
     * cache while the weights go by */
    int64_t wblocks = (N + TASK_ROWS - 1) / TASK_ROWS, tasks = (M + X_ROWS - 1) / X_ROWS * wblocks;
#pragma omp parallel for schedule(static) if (M * N * K >= CPU_PAR_MIN)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t m0 = t / wblocks * X_ROWS, m1 = m0 + X_ROWS < M ? m0 + X_ROWS : M;
        int64_t n0 = t % wblocks * TASK_ROWS, n1 = n0 + TASK_ROWS < N ? n0 + TASK_ROWS : N;
        for (int64_t m = m0; m < m1; m += 2) { /* rows in pairs: a weight vector loaded once for two */
            const float *xm = x + m * K;
            float *ym = y + m * N;
            bool pair = m + 1 < m1;
            int64_t n = n0;
            for (; n + WB <= n1; n += WB) {
                float s[WB], u[WB];
                if (pair)
                    dots2(xm, w + n * K, K, s, u);
                else
                    dots(xm, w + n * K, K, s);
                for (int j = 0; j < WB; j++) {
                    ym[n + j] = s[j] + (b ? b[n + j] : 0.0f);
                    if (pair)
                        ym[N + n + j] = u[j] + (b ? b[n + j] : 0.0f);
                }
            }
            for (; n < n1; n++) {
                ym[n] = dot(xm, w + n * K, K) + (b ? b[n] : 0.0f);
                if (pair)
                    ym[N + n] = dot(xm + K, w + n * K, K) + (b ? b[n] : 0.0f);
            }
        }
    }
}
