/* CPU kernels for group (and layer) normalisation: OpenMP over (sample, group)
 * for the statistics and dx, over strips of channels for dw and db. */
#include "norm.h"
#include "parallel.h"

#include <math.h>
#include <stddef.h>

/* Channels per dw/db task: one cache line of floats. */
#define STRIP 16

/* Mean and 1/sqrt(var + eps) of one group: x points at its first channel of
 * position 0; elements x[s * C + j], s < S, j < Cg. Two passes in double, so
 * a mean far larger than the spread costs no precision. */
static void group_stats(const float *x, int64_t S, int64_t C, int64_t Cg, float eps,
                        float *mean, float *rstd) {
    double sum = 0, sq = 0, m = (double)(S * Cg);
    for (int64_t s = 0; s < S; s++)
        for (int64_t j = 0; j < Cg; j++)
            sum += x[s * C + j];
    double mu = sum / m;
    for (int64_t s = 0; s < S; s++)
        for (int64_t j = 0; j < Cg; j++) {
            double d = x[s * C + j] - mu;
            sq += d * d;
        }
    *mean = (float)mu;
    *rstd = (float)(1.0 / sqrt(sq / m + eps)); /* biased variance, as PyTorch */
}

void cpu_group_norm_forward(float *y, float *stats, const float *x, const float *w,
                            const float *b, int64_t N, int64_t S, int64_t C, int64_t G, float eps) {
    int64_t Cg = C / G;
#pragma omp parallel for schedule(static) if (N * S * C >= CPU_PAR_MIN)
    for (int64_t ng = 0; ng < N * G; ng++) {
        int64_t c0 = ng % G * Cg, base = ng / G * S * C + c0;
        float mean, rstd;
        group_stats(x + base, S, C, Cg, eps, &mean, &rstd);
        stats[2 * ng] = mean;
        stats[2 * ng + 1] = rstd;
        for (int64_t s = 0; s < S; s++) {
            const float *xs = x + base + s * C;
            float *ys = y + base + s * C;
            for (int64_t j = 0; j < Cg; j++) {
                float v = (xs[j] - mean) * rstd;
                ys[j] = v * (w ? w[c0 + j] : 1.0f) + (b ? b[c0 + j] : 0.0f);
            }
        }
    }
}

/* dx of one group (pointers at its first channel of position 0; w at its
 * first channel or NULL). With g = dy * w and M elements in the group:
 * dx = rstd * (g - mean(g) - xhat * mean(g * xhat)). */
static void group_dx(const float *dy, const float *x, const float *w, float mean, float rstd,
                     float *dx, int64_t S, int64_t C, int64_t Cg) {
    double sg = 0, sgx = 0;
    for (int64_t s = 0; s < S; s++)
        for (int64_t j = 0; j < Cg; j++) {
            double g = (double)dy[s * C + j] * (w ? w[j] : 1.0f);
            sg += g;
            sgx += g * ((x[s * C + j] - mean) * rstd);
        }
    double m = (double)(S * Cg);
    float mg = (float)(sg / m), mgx = (float)(sgx / m);
    for (int64_t s = 0; s < S; s++)
        for (int64_t j = 0; j < Cg; j++) {
            int64_t i = s * C + j;
            float g = dy[i] * (w ? w[j] : 1.0f), xhat = (x[i] - mean) * rstd;
            dx[i] += rstd * (g - mg - xhat * mgx);
        }
}

/* dw += sum of dy * xhat, db += sum of dy over samples and positions. Each
 * task owns a strip of channels, so the sums need no atomics and come out the
 * same for any thread count. */
static void affine_grads(const float *dy, const float *x, const float *stats, float *dw,
                         float *db, int64_t N, int64_t S, int64_t C, int64_t G) {
    int64_t Cg = C / G, strips = (C + STRIP - 1) / STRIP;
#pragma omp parallel for schedule(static) if (N * S * C >= CPU_PAR_MIN)
    for (int64_t t = 0; t < strips; t++) {
        int64_t c0 = t * STRIP, nc = C - c0 < STRIP ? C - c0 : STRIP;
        double aw[STRIP] = {0}, ab[STRIP] = {0};
        for (int64_t n = 0; n < N; n++) {
            float mean[STRIP], rstd[STRIP]; /* of each strip channel's group in sample n */
            for (int64_t j = 0; j < nc; j++) {
                const float *st = stats + 2 * (n * G + (c0 + j) / Cg);
                mean[j] = st[0];
                rstd[j] = st[1];
            }
            for (int64_t s = 0; s < S; s++) {
                const float *dys = dy + (n * S + s) * C + c0, *xs = x + (n * S + s) * C + c0;
                for (int64_t j = 0; j < nc; j++) {
                    ab[j] += dys[j];
                    aw[j] += dys[j] * ((xs[j] - mean[j]) * rstd[j]);
                }
            }
        }
        for (int64_t j = 0; j < nc; j++) {
            if (dw)
                dw[c0 + j] += (float)aw[j];
            if (db)
                db[c0 + j] += (float)ab[j];
        }
    }
}

void cpu_group_norm_backward(const float *dy, const float *x, const float *w, const float *stats,
                             float *dx, float *dw, float *db, int64_t N, int64_t S, int64_t C,
                             int64_t G) {
    int64_t Cg = C / G;
    if (dx) {
#pragma omp parallel for schedule(static) if (N * S * C >= CPU_PAR_MIN)
        for (int64_t ng = 0; ng < N * G; ng++) {
            int64_t c0 = ng % G * Cg, base = ng / G * S * C + c0;
            group_dx(dy + base, x + base, w ? w + c0 : NULL, stats[2 * ng], stats[2 * ng + 1],
                     dx + base, S, C, Cg);
        }
    }
    if (dw || db)
        affine_grads(dy, x, stats, dw, db, N, S, C, G);
}
