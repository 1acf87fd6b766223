/* CPU kernels for group (and layer) normalisation, optionally followed by a
 * SiLU, OpenMP over samples.
 *
 * In NHWC the channels of one position are contiguous, and a group's
 * channels are a short run of them (often 2 to 16), too short to vectorise.
 * So every pass walks whole rows of C channels, which vectorise, and keeps
 * per-channel sums; the groups are formed from those sums afterwards, and
 * the normalisation folds into one multiply-add per element with a scale and
 * a shift per channel. */
#include "norm.h"
#include "isa.h"
#include "parallel.h"
#include "vec.h"
#include "vmath.h"

#include <omp.h>
#include <stddef.h>

static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Rows summed in float before a sum goes into its double total: the float
 * sums vectorise at full width and stay exact to a few ulps over so few rows,
 * the double totals keep long sums exact. */
#define ROW_BLOCK 16

/* sum[c] += the float sums over rows s0 to s1 of x[s][c] (of (x[s][c] -
 * m[c])^2 with m). Channels VB at a time in a vector variable, which stays
 * in registers over the block's rows (a float array indexed by channel went
 * through memory, a store-to-load chain at every row: a fifth of a sampling
 * step's group norm at 16 channels; a vector wider than the ISA's was no
 * better). Each channel's sum keeps its order whatever the width: rows in
 * order in float within a block, the blocks in order in double. */
static void block_sums(const float *x, int64_t s0, int64_t s1, int64_t C, const float *m,
                       double *sum) {
    int64_t c0 = 0;
    for (; c0 + VB <= C; c0 += VB) {
        vf part = {0};
        if (m) {
            vf mc = load(m + c0);
            for (int64_t s = s0; s < s1; s++) {
                vf d = load(x + s * C + c0) - mc;
                part += d * d;
            }
        } else {
            for (int64_t s = s0; s < s1; s++)
                part += load(x + s * C + c0);
        }
        for (int l = 0; l < VB; l++)
            sum[c0 + l] += part[l];
    }
    for (int64_t c = c0; c < C; c++) {
        float part = 0, mc = m ? m[c] : 0.0f;
        for (int64_t s = s0; s < s1; s++) {
            float d = x[s * C + c] - mc;
            part += m ? d * d : d;
        }
        sum[c] += part;
    }
}

/* sg[c] += the float sums over rows s0 to s1 of g[s][c], and sgx[c] of
 * g[s][c] * (x[s][c] - mu[c]), in chunks as block_sums. */
static void block_grad_sums(const float *g, const float *x, const float *mu, int64_t s0,
                            int64_t s1, int64_t C, double *sg, double *sgx) {
    int64_t c0 = 0;
    for (; c0 + VB <= C; c0 += VB) {
        vf pg = {0}, pgx = {0}, mc = load(mu + c0);
        for (int64_t s = s0; s < s1; s++) {
            vf gs = load(g + s * C + c0);
            pg += gs;
            pgx += gs * (load(x + s * C + c0) - mc);
        }
        for (int l = 0; l < VB; l++)
            sg[c0 + l] += pg[l], sgx[c0 + l] += pgx[l];
    }
    for (int64_t c = c0; c < C; c++) {
        float pg = 0, pgx = 0;
        for (int64_t s = s0; s < s1; s++)
            pg += g[s * C + c], pgx += g[s * C + c] * (x[s * C + c] - mu[c]);
        sg[c] += pg, sgx[c] += pgx;
    }
}

/* sum[c] = the sum of the channel-c elements of S rows of C. */
static void channel_sums(const float *x, int64_t S, int64_t C, double *sum) {
    for (int64_t c = 0; c < C; c++)
        sum[c] = 0;
    for (int64_t s0 = 0; s0 < S; s0 += ROW_BLOCK)
        block_sums(x, s0, s0 + ROW_BLOCK < S ? s0 + ROW_BLOCK : S, C, NULL, sum);
}

/* sq[c] = sum over rows of (x - mu[c])^2. */
static void channel_squares(const float *x, const double *mu, int64_t S, int64_t C, double *sq) {
    float m[C];
    for (int64_t c = 0; c < C; c++)
        sq[c] = 0, m[c] = (float)mu[c];
    for (int64_t s0 = 0; s0 < S; s0 += ROW_BLOCK)
        block_sums(x, s0, s0 + ROW_BLOCK < S ? s0 + ROW_BLOCK : S, C, m, sq);
}

/* Adds up the per-channel values v[C] of each group into out[G]. */
static void group_totals(const double *v, int64_t C, int64_t G, double *out) {
    int64_t Cg = C / G;
    for (int64_t g = 0; g < G; g++) {
        double t = 0;
        for (int64_t j = 0; j < Cg; j++)
            t += v[g * Cg + j];
        out[g] = t;
    }
}

/* Mean and 1/sqrt(var + eps) of each group of one sample, written to stats
 * [G, 2]; mu[C] gets each channel's group mean. Two passes, the second
 * centred, so a mean far larger than the spread costs no precision. */
static void sample_stats(const float *x, int64_t S, int64_t C, int64_t G, float eps,
                         float *stats, double *mu, double *acc, double *tot) {
    int64_t Cg = C / G;
    double m = (double)(S * Cg);
    channel_sums(x, S, C, acc);
    group_totals(acc, C, G, tot);
    for (int64_t g = 0; g < G; g++)
        for (int64_t j = 0; j < Cg; j++)
            mu[g * Cg + j] = tot[g] / m;
    channel_squares(x, mu, S, C, acc);
    group_totals(acc, C, G, tot);
    for (int64_t g = 0; g < G; g++) {
        stats[2 * g] = (float)mu[g * Cg];
        stats[2 * g + 1] = (float)(1.0 / sqrt(tot[g] / m + eps)); /* biased variance, as PyTorch */
    }
}

/* The affine map of one sample's normalisation, channel by channel:
 * w * (x - mean) * rstd + b = (x - mu[c]) * scale[c] + shift[c]. Centring
 * first keeps the precision when the mean is far larger than the spread. */
typedef struct {
    float *mu, *scale, *shift; /* [C] each */
} channel_affine;

static void sample_affine(const float *stats, const float *w, const float *b, int64_t C,
                          int64_t G, channel_affine f) {
    int64_t Cg = C / G;
    for (int64_t g = 0; g < G; g++)
        for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
            f.mu[c] = stats[2 * g];
            f.scale[c] = stats[2 * g + 1] * (w ? w[c] : 1.0f);
            f.shift[c] = b ? b[c] : 0.0f;
        }
}

/* Lanes of a row's sums: element c goes into lane c % LANES, whatever the
 * row's address, so a row's bits do not depend on where it lies (a vector
 * reduction would start where alignment lets it, and a sample's result
 * would change with its batch). */
#define LANES 16

/* The sum of x[c] (squares of x[c] - mean with `centred`) over C, by lanes. */
static double row_sum(const float *x, int64_t C, float mean, bool centred) {
    double lane[LANES] = {0};
    int64_t c = 0;
    for (; c + LANES <= C; c += LANES)
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            float d = x[c + l] - mean;
            lane[l] += centred ? d * d : x[c + l];
        }
    for (int l = 0; c + l < C; l++) {
        float d = x[c + l] - mean;
        lane[l] += centred ? d * d : x[c + l];
    }
    double total = 0;
    for (int l = 0; l < LANES; l++)
        total += lane[l];
    return total;
}

/* A layer norm's rows (S = 1, G = 1): the same two centred passes with
 * double sums, but per row, without the per-channel bookkeeping of the
 * general case, which cost 40 times the arithmetic on rows of 320 to 1280
 * channels (a UNet's transformer normalises every token three times). */
static void rows_forward(float *y, float *stats, const float *x, const float *w, const float *b,
                         int64_t N, int64_t C, float eps, bool silu) {
#pragma omp parallel for schedule(static) if (N * C >= CPU_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * C;
        float *yn = y + n * C;
        float mean = (float)(row_sum(xn, C, 0.0f, false) / (double)C);
        double sq = row_sum(xn, C, mean, true);
        float rstd = (float)(1.0 / sqrt(sq / (double)C + eps)); /* biased variance, as PyTorch */
        stats[2 * n] = mean, stats[2 * n + 1] = rstd;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            float h = (xn[c] - mean) * (rstd * (w ? w[c] : 1.0f)) + (b ? b[c] : 0.0f);
            yn[c] = silu ? h * sigmoid(h) : h;
        }
    }
}

void CPU_ISA_FN(cpu_group_norm_forward)(float *y, float *stats, const float *x, const float *w,
                                        const float *b, int64_t N, int64_t S, int64_t C, int64_t G,
                                        float eps, bool silu) {
    if (S == 1 && G == 1) {
        rows_forward(y, stats, x, w, b, N, C, eps, silu);
        return;
    }
#pragma omp parallel for schedule(static) if (N * S * C >= CPU_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        double mu[C], acc[C], tot[G];
        float fm[C], fs[C], fb[C];
        channel_affine f = {fm, fs, fb};
        const float *xn = x + n * S * C;
        float *yn = y + n * S * C;
        sample_stats(xn, S, C, G, eps, stats + 2 * n * G, mu, acc, tot);
        sample_affine(stats + 2 * n * G, w, b, C, G, f);
        for (int64_t s = 0; s < S; s++) {
            const float *xs = xn + s * C;
            float *ys = yn + s * C;
            if (silu) {
#pragma omp simd
                for (int64_t c = 0; c < C; c++) {
                    float h = (xs[c] - fm[c]) * fs[c] + fb[c];
                    ys[c] = h * sigmoid(h);
                }
            } else {
#pragma omp simd
                for (int64_t c = 0; c < C; c++)
                    ys[c] = (xs[c] - fm[c]) * fs[c] + fb[c];
            }
        }
    }
}

/* The gradient reaching the normalised values h of one sample: dy itself,
 * or through the SiLU, dy * silu'(h), recomputing h into g [S, C]. */
static const float *sample_grad(const float *dy, const float *x, channel_affine f, int64_t S,
                                int64_t C, bool silu, float *g) {
    if (!silu)
        return dy;
    for (int64_t s = 0; s < S; s++) {
        const float *xs = x + s * C, *dys = dy + s * C;
        float *gs = g + s * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) {
            float h = (xs[c] - f.mu[c]) * f.scale[c] + f.shift[c], sg = sigmoid(h);
            gs[c] = dys[c] * sg * (1.0f + h * (1.0f - sg));
        }
    }
    return g;
}

/* One sample's backward from g, the gradient at h. Per channel
 * sg[c] = sum g and sgx[c] = sum g * (x - mean) over positions. Then per
 * group, with M elements and gw = g * w: mean(gw) and mean(gw * xhat) give
 * dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), an affine map of
 * (g, x - mean) per channel; and dw[c] = rstd * sgx, db[c] = sg, kept in
 * sums [2, C] for the caller to add up over samples. */
static void sample_backward(const float *g, const float *x, const float *w, const float *stats,
                            channel_affine f, float *dx, double *sums, int64_t S, int64_t C,
                            int64_t G) {
    int64_t Cg = C / G;
    double *sg = sums, *sgx = sums + C, t1[G], t2[G], m = (double)(S * Cg);
    for (int64_t c = 0; c < C; c++)
        sg[c] = sgx[c] = 0;
    for (int64_t s0 = 0; s0 < S; s0 += ROW_BLOCK)
        block_grad_sums(g, x, f.mu, s0, s0 + ROW_BLOCK < S ? s0 + ROW_BLOCK : S, C, sg, sgx);
    double gw[C], gwx[C];
    for (int64_t c = 0; c < C; c++) { /* sums of gw and gw * xhat, per channel */
        double rstd = stats[2 * (c / Cg) + 1], wc = w ? w[c] : 1.0;
        gw[c] = wc * sg[c];
        gwx[c] = wc * rstd * sgx[c];
    }
    group_totals(gw, C, G, t1);
    group_totals(gwx, C, G, t2);
    if (!dx)
        return;
    float ga[C], xa[C], k[C]; /* dx = ga * g + xa * (x - mean) + k */
    for (int64_t c = 0; c < C; c++) {
        double rstd = stats[2 * (c / Cg) + 1], wc = w ? w[c] : 1.0;
        ga[c] = (float)(rstd * wc);
        xa[c] = (float)(-rstd * rstd * t2[c / Cg] / m);
        k[c] = (float)(-rstd * t1[c / Cg] / m);
    }
    for (int64_t s = 0; s < S; s++) {
        const float *xs = x + s * C, *gs = g + s * C;
        float *dxs = dx + s * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++)
            dxs[c] += ga[c] * gs[c] + xa[c] * (xs[c] - f.mu[c]) + k[c];
    }
}

size_t CPU_ISA_FN(cpu_group_norm_work_bytes)(int64_t N, int64_t S, int64_t C, bool silu) {
    size_t sums = (size_t)(2 * N * C) * sizeof(double);
    return sums + (silu ? (size_t)omp_get_max_threads() * (size_t)(S * C) * sizeof(float) : 0);
}

void CPU_ISA_FN(cpu_group_norm_backward)(const float *dy, const float *x, const float *w,
                                         const float *b, const float *stats, float *dx, float *dw,
                                         float *db, void *work, int64_t N, int64_t S, int64_t C,
                                         int64_t G, bool silu) {
    int64_t Cg = C / G;
    double *sums = work;              /* [N, 2, C] */
    float *gbuf = (float *)(sums + 2 * N * C); /* [threads, S, C] with silu */
#pragma omp parallel for schedule(static) if (N * S * C >= CPU_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        float fm[C], fs[C], fb[C];
        channel_affine f = {fm, fs, fb};
        const float *st = stats + 2 * n * G, *xn = x + n * S * C;
        sample_affine(st, w, b, C, G, f);
        const float *g = sample_grad(dy + n * S * C, xn, f, S, C, silu,
                                     gbuf + (int64_t)omp_get_thread_num() * S * C);
        sample_backward(g, xn, w, st, f, dx ? dx + n * S * C : NULL, sums + 2 * n * C, S, C, G);
    }
    /* dw and db summed over samples in order: the same for any thread count. */
    for (int64_t c = 0; c < C; c++) {
        double aw = 0, ab = 0;
        for (int64_t n = 0; n < N; n++) {
            const double *sn = sums + 2 * n * C;
            aw += stats[2 * (n * G + c / Cg) + 1] * sn[C + c];
            ab += sn[c];
        }
        if (dw)
            dw[c] += (float)aw;
        if (db)
            db[c] += (float)ab;
    }
}
