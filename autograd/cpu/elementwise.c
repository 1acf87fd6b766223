/* CPU kernels for broadcast binary ops, affine maps and sums (OpenMP). */
#include "elementwise.h"

#include "parallel.h"

#include <stdbool.h>

static inline float apply(cpu_binary_kind k, float a, float b) {
    return k == CPU_ADD ? a + b : k == CPU_SUB ? a - b : a * b;
}

/* Index into b of the element at a's flat index i (the general case). */
static inline int64_t b_index(int64_t i, const int64_t as[4], const int64_t bs[4]) {
    int64_t j = 0, stride = 1;
    for (int d = 3; d >= 0; d--) {
        int64_t c = i % as[d];
        i /= as[d];
        if (bs[d] != 1)
            j += c * stride;
        stride *= bs[d];
    }
    return j;
}

static int64_t numel4(const int64_t s[4]) { return s[0] * s[1] * s[2] * s[3]; }

void cpu_binary_forward(cpu_binary_kind k, float *out, const float *a, const float *b,
                        const int64_t as[4], const int64_t bs[4]) {
    int64_t n = numel4(as), A, R, C;
    if (numel4(bs) == n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = apply(k, a[i], b[i]);
    } else if (cpu_broadcast_split3(as, bs, &A, &R, &C)) {
#pragma omp parallel for if (n >= CPU_PAR_MIN)
        for (int64_t row = 0; row < A * R; row++) {
            const float *br = b + row / R * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++)
                out[row * C + c] = apply(k, a[row * C + c], br[c]);
        }
    } else {
#pragma omp parallel for if (n >= CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = apply(k, a[i], b[b_index(i, as, bs)]);
    }
}

/* db[A, 1, C] += the sums over R of dout (times a for mul), in double;
 * tasks own (row of A, strip of C), so no two threads write one element. */
#define STRIP 64
static void reduce_db(cpu_binary_kind k, const float *dout, const float *a, float *db, int64_t A,
                      int64_t R, int64_t C) {
    float sign = k == CPU_SUB ? -1.0f : 1.0f;
    int64_t strips = (C + STRIP - 1) / STRIP;
#pragma omp parallel for collapse(2) if (A * R * C >= CPU_PAR_MIN)
    for (int64_t i = 0; i < A; i++)
        for (int64_t sj = 0; sj < strips; sj++) {
            int64_t c0 = sj * STRIP, w = C - c0 < STRIP ? C - c0 : STRIP;
            double acc[STRIP] = {0};
            for (int64_t r = 0; r < R; r++) {
                int64_t base = (i * R + r) * C + c0;
                for (int64_t c = 0; c < w; c++)
                    acc[c] += k == CPU_MUL ? (double)dout[base + c] * a[base + c] : dout[base + c];
            }
            for (int64_t c = 0; c < w; c++)
                db[i * C + c0 + c] += sign * (float)acc[c];
        }
}

void cpu_binary_backward(cpu_binary_kind k, const float *dout, const float *a, const float *b,
                         float *da, float *db, const int64_t as[4], const int64_t bs[4]) {
    int64_t n = numel4(as), A, R, C;
    if (numel4(bs) == n) {
        float sign = k == CPU_SUB ? -1.0f : 1.0f;
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++) {
            if (da)
                da[i] += k == CPU_MUL ? dout[i] * b[i] : dout[i];
            if (db)
                db[i] += k == CPU_MUL ? dout[i] * a[i] : sign * dout[i];
        }
        return;
    }
    bool split = cpu_broadcast_split3(as, bs, &A, &R, &C);
    if (da && split) {
#pragma omp parallel for if (n >= CPU_PAR_MIN)
        for (int64_t row = 0; row < A * R; row++) {
            const float *br = b + row / R * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++)
                da[row * C + c] += k == CPU_MUL ? dout[row * C + c] * br[c] : dout[row * C + c];
        }
    } else if (da) {
#pragma omp parallel for if (n >= CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            da[i] += k == CPU_MUL ? dout[i] * b[b_index(i, as, bs)] : dout[i];
    }
    if (!db)
        return;
    if (split) {
        reduce_db(k, dout, a, db, A, R, C);
        return;
    }
    /* General case: db[j] sums over every a position that reads b[j]. */
    int64_t nb = numel4(bs), red[4], nred = 1; /* broadcast dimension sizes (1 elsewhere) */
    for (int d = 0; d < 4; d++) {
        red[d] = bs[d] == 1 ? as[d] : 1;
        nred *= red[d];
    }
    float sign = k == CPU_SUB ? -1.0f : 1.0f;
#pragma omp parallel for if (n >= CPU_PAR_MIN)
    for (int64_t j = 0; j < nb; j++) {
        int64_t cj[4], r = j;
        for (int d = 3; d >= 0; d--) {
            cj[d] = r % bs[d];
            r /= bs[d];
        }
        double acc = 0;
        for (int64_t q = 0; q < nred; q++) {
            int64_t rest = q, i = 0, stride = 1, c[4];
            for (int d = 3; d >= 0; d--) {
                c[d] = red[d] == 1 ? cj[d] : rest % red[d];
                if (red[d] != 1)
                    rest /= red[d];
            }
            for (int d = 3; d >= 0; d--) {
                i += c[d] * stride;
                stride *= as[d];
            }
            acc += k == CPU_MUL ? (double)dout[i] * a[i] : dout[i];
        }
        db[j] += sign * (float)acc;
    }
}

void cpu_affine_forward(float *out, const float *x, int64_t n, float alpha, float beta) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        out[i] = alpha * x[i] + beta;
}

void cpu_affine_backward(const float *dout, float *dx, int64_t n, float alpha) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dx[i] += alpha * dout[i];
}

void cpu_sum_forward(float *out, const float *x, int64_t n, double div) {
    double s = 0;
#pragma omp parallel for reduction(+ : s) if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        s += x[i];
    out[0] = (float)(s / div);
}

void cpu_fill_add(float *dx, int64_t n, const float *gp, float div) {
    float g = gp[0] / div;
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dx[i] += g;
}
