/* CPU kernels for dropout, embeddings and the MSE and cross-entropy losses (OpenMP). */
#include "misc.h"

#include "../rng.h"
#include "parallel.h"

#include <math.h>
#include <string.h>

/* y = v * keep / (1 - p), or y += that when `accumulate`: the shared body of
 * dropout's forward and backward, one Philox block per four elements. */
static void dropout_apply(float *y, const float *v, int64_t n, float p, uint64_t seed,
                          uint64_t stream, bool accumulate) {
    float scale = 1.0f / (1.0f - p);
    int64_t blocks = (n + 3) / 4;
#pragma omp parallel for
    for (int64_t b = 0; b < blocks; b++) {
        dc_u32x4 r = dc_rand_block(seed, stream, (uint64_t)b);
        for (int64_t j = 0; j < 4 && 4 * b + j < n; j++) {
            int64_t i = 4 * b + j;
            float kept = dc_u32_to_uniform(r.w[j]) < p ? 0.0f : v[i] * scale;
            y[i] = accumulate ? y[i] + kept : kept;
        }
    }
}

void cpu_dropout_forward(float *out, const float *x, int64_t n, float p, uint64_t seed,
                         uint64_t stream) {
    dropout_apply(out, x, n, p, seed, stream, false);
}

void cpu_dropout_backward(const float *dout, float *dx, int64_t n, float p, uint64_t seed,
                          uint64_t stream) {
    dropout_apply(dx, dout, n, p, seed, stream, true);
}

int64_t cpu_embedding_check(const int32_t *idx, int64_t n, int64_t v) {
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= v)
            return i;
    return -1;
}

void cpu_embedding_forward(float *out, const float *table, const int32_t *idx, int64_t n,
                           int64_t c) {
#pragma omp parallel for
    for (int64_t i = 0; i < n; i++) {
        const float *row = table + (int64_t)idx[i] * c;
        for (int64_t k = 0; k < c; k++)
            out[i * c + k] = row[k];
    }
}

/* Rows may repeat in idx, so threads split the columns, not the positions:
 * each table element is summed by one thread, in position order. */
#define EMBEDDING_COLS 64

void cpu_embedding_backward(const float *dout, float *dtable, const int32_t *idx, int64_t n,
                            int64_t c) {
    int64_t chunks = (c + EMBEDDING_COLS - 1) / EMBEDDING_COLS;
#pragma omp parallel for
    for (int64_t q = 0; q < chunks; q++) {
        int64_t k0 = q * EMBEDDING_COLS, k1 = k0 + EMBEDDING_COLS < c ? k0 + EMBEDDING_COLS : c;
        for (int64_t i = 0; i < n; i++) {
            float *row = dtable + (int64_t)idx[i] * c;
            for (int64_t k = k0; k < k1; k++)
                row[k] += dout[i * c + k];
        }
    }
}

/* Every step in f32 as diffusers does it in PyTorch: the exponent as
 * f32(-ln max_period) * k / f32(half - shift), then exp, then t * freq, then
 * sin/cos; so values match diffusers to within an ulp or two of the angle
 * (PyTorch's vectorised exp/sin and the C library's may differ in the last bit). */
void cpu_timestep_embedding_forward(float *out, const float *tf, const int32_t *ti, int64_t n,
                                    int64_t dim, bool flip_sin_to_cos, float shift,
                                    float max_period) {
    int64_t half = dim / 2;
    float neg_log = (float)-log((double)max_period);
    float denom = (float)((double)half - shift);
    int64_t sin_at = flip_sin_to_cos ? half : 0, cos_at = flip_sin_to_cos ? 0 : half;
#pragma omp parallel for
    for (int64_t i = 0; i < n; i++) {
        float t = ti ? (float)ti[i] : tf[i];
        float *row = out + i * dim;
        for (int64_t k = 0; k < half; k++) {
            float freq = expf(neg_log * (float)k / denom);
            float angle = t * freq;
            row[sin_at + k] = sinf(angle);
            row[cos_at + k] = cosf(angle);
        }
        if (dim % 2)
            row[dim - 1] = 0.0f;
    }
}

void cpu_fourier_embedding_forward(float *out, const float *tf, const int32_t *ti, const float *w,
                                   int64_t n, int64_t d, bool flip_sin_to_cos) {
    int64_t sin_at = flip_sin_to_cos ? d : 0, cos_at = flip_sin_to_cos ? 0 : d;
#pragma omp parallel for if (n * d >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        double lt = log(ti ? (double)ti[i] : (double)tf[i]);
        float *row = out + i * 2 * d;
        for (int64_t k = 0; k < d; k++) {
            double angle = 2.0 * M_PI * lt * (double)w[k];
            row[sin_at + k] = (float)sin(angle);
            row[cos_at + k] = (float)cos(angle);
        }
    }
}

/* Both loops run over all n * d elements, so a batch of one still uses every thread. */
void cpu_mse_loss_forward(float *out, const float *pred, const float *target, const float *w,
                          int64_t n, int64_t d) {
    double s = 0;
#pragma omp parallel for collapse(2) reduction(+ : s)
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++) {
            double e = (double)pred[i * d + j] - target[i * d + j];
            s += (w ? w[i] : 1.0) * e * e;
        }
    out[0] = (float)(s / ((double)n * (double)d));
}

void cpu_mse_loss_backward(const float *gp, const float *pred, const float *target, const float *w,
                           float *dpred, float *dtarget, float *dw, int64_t n, int64_t d) {
    double nd = (double)n * (double)d, g = gp[0];
    if (dpred || dtarget) {
#pragma omp parallel for collapse(2)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < d; j++) {
                double e = (double)pred[i * d + j] - target[i * d + j];
                float de = (float)(2.0 * g * (w ? w[i] : 1.0) * e / nd);
                if (dpred)
                    dpred[i * d + j] += de;
                if (dtarget)
                    dtarget[i * d + j] -= de;
            }
    }
    if (dw) {
#pragma omp parallel for
        for (int64_t i = 0; i < n; i++) {
            double si = 0;
            for (int64_t j = 0; j < d; j++) {
                double e = (double)pred[i * d + j] - target[i * d + j];
                si += e * e;
            }
            dw[i] += (float)(g * si / nd);
        }
    }
}

/* max and log(sum(exp(row - max))) of one row, in double: the stable log-sum-exp. */
static void row_logsumexp(const float *row, int64_t k, double *max, double *lse) {
    double m = row[0];
    for (int64_t j = 1; j < k; j++)
        m = row[j] > m ? row[j] : m;
    double s = 0;
    for (int64_t j = 0; j < k; j++)
        s += exp((double)row[j] - m);
    *max = m;
    *lse = log(s);
}

/* One kept row's term: lse - (1 - e) row[y] - e mean(row). */
static double row_term(const float *row, int64_t k, int32_t y, double e) {
    double m, lse, sum = 0;
    row_logsumexp(row, k, &m, &lse);
    if (e != 0)
        for (int64_t j = 0; j < k; j++)
            sum += row[j];
    return m + lse - (1 - e) * row[y] - e * sum / (double)k;
}

void cpu_cross_entropy_forward(float *out, const float *logits, const int32_t *labels, int64_t n, int64_t k,
                               int64_t ignore, float smoothing, int64_t kept) {
    double total = 0;
    for (int64_t i = 0; i < n; i++) /* in order: the same sum for any thread count */
        if (labels[i] != ignore)
            total += row_term(logits + i * k, k, labels[i], smoothing);
    out[0] = (float)(total / (double)kept); /* no row kept: 0 / 0, NaN as in PyTorch */
}

void cpu_cross_entropy_backward(const float *g, const float *logits, const int32_t *labels, float *dlogits,
                                int64_t n, int64_t k, int64_t ignore, float smoothing, int64_t kept) {
    double scale = (double)g[0] / (double)kept, e = smoothing, off = e / (double)k;
#pragma omp parallel for if (n * k >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        if (labels[i] == ignore)
            continue;
        const float *row = logits + i * k;
        double m, lse;
        row_logsumexp(row, k, &m, &lse);
        for (int64_t j = 0; j < k; j++) {
            double p = exp((double)row[j] - m - lse) - (1 - e) * (j == labels[i]) - off;
            dlogits[i * k + j] += (float)(scale * p);
        }
    }
}

void cpu_move_down(char *dst, const char *src, size_t bytes) {
    const size_t piece = (size_t)1 << 16;
    if ((size_t)(src - dst) < bytes || bytes < 4 * piece) {
        memmove(dst, src, bytes);
        return;
    }
    int64_t pieces = (int64_t)((bytes + piece - 1) / piece);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < pieces; i++) {
        size_t at = (size_t)i * piece;
        memcpy(dst + at, src + at, bytes - at < piece ? bytes - at : piece);
    }
}
