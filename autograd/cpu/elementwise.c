/* CPU kernels for broadcast binary ops, affine maps and sums (OpenMP). */
#include "elementwise.h"

#include "parallel.h"

#include <stdbool.h>

static inline float apply(cpu_binary_kind k, float a, float b) {
    return k == CPU_ADD ? a + b : k == CPU_SUB ? a - b : a * b;
}

/* Index into b of the element at a's flat index i. */
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
    int64_t n = numel4(as), nb = numel4(bs);
    if (nb == n) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = apply(k, a[i], b[i]);
    } else if (as[3] == bs[3] && nb == bs[3]) { /* b is [C]: the common bias case */
        int64_t c = bs[3];
#pragma omp parallel for if (n >= CPU_PAR_MIN)
        for (int64_t r = 0; r < n / c; r++)
            for (int64_t j = 0; j < c; j++)
                out[r * c + j] = apply(k, a[r * c + j], b[j]);
    } else {
#pragma omp parallel for if (n >= CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            out[i] = apply(k, a[i], b[b_index(i, as, bs)]);
    }
}

void cpu_binary_backward(cpu_binary_kind k, const float *dout, const float *a, const float *b,
                         float *da, float *db, const int64_t as[4], const int64_t bs[4]) {
    int64_t n = numel4(as), nb = numel4(bs);
    if (da) {
#pragma omp parallel for if (n >= CPU_PAR_MIN)
        for (int64_t i = 0; i < n; i++)
            da[i] += k == CPU_MUL ? dout[i] * b[b_index(i, as, bs)] : dout[i];
    }
    if (!db)
        return;
    /* db[j] sums over every a position that reads b[j]: walk those positions per j. */
    int64_t red[4], nred = 1; /* sizes of the broadcast dimensions (1 where not broadcast) */
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

double cpu_sum_forward(const float *x, int64_t n) {
    double s = 0;
#pragma omp parallel for reduction(+ : s) if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        s += x[i];
    return s;
}

void cpu_fill_add(float *dx, int64_t n, float g) {
#pragma omp parallel for simd if (n >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        dx[i] += g;
}
