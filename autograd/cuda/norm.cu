/* CUDA group normalisation over NHWC (see norm.h), optionally followed by a
 * SiLU, the CPU kernels' arithmetic: one block per (sample, group) for the
 * statistics and dx, two passes in double; column sums over every (sample,
 * position) for dw, db, in chunks of rows (common.cuh). With the SiLU the
 * backward recomputes the normalised value h wherever it needs the gradient
 * at h. */
#include "common.cuh"
#include "norm.h"

/* Element e of group (n, g) lies at base + (e / Cg) * C + e % Cg. */
__device__ static inline int64_t at(int64_t base, int64_t e, int64_t C, int64_t Cg) {
    return base + e / Cg * C + e % Cg;
}

/* The gradient reaching h = (x - mean) * rstd * w + b: dy, or through the
 * SiLU, dy * silu'(h). */
__device__ static inline float grad_at_h(float dy, float x, float mean, float rstd, float w,
                                         float b, bool silu) {
    if (!silu)
        return dy;
    float h = (x - mean) * rstd * w + b, s = 1.0f / (1.0f + expf(-h));
    return dy * s * (1.0f + h * (1.0f - s));
}

__global__ static void gn_fwd(float *y, float *stats, const float *x, const float *w,
                              const float *b, int64_t NG, int64_t S, int64_t C, int64_t G,
                              float eps, bool silu) {
    int64_t Cg = C / G, M = S * Cg;
    for (int64_t ng = blockIdx.x; ng < NG; ng += gridDim.x) {
        int64_t c0 = ng % G * Cg, base = ng / G * S * C + c0;
        double sum = 0, sq = 0;
        for (int64_t e = threadIdx.x; e < M; e += blockDim.x)
            sum += x[at(base, e, C, Cg)];
        double mu = block_sum(sum) / (double)M;
        for (int64_t e = threadIdx.x; e < M; e += blockDim.x) {
            double d = x[at(base, e, C, Cg)] - mu;
            sq += d * d;
        }
        sq = block_sum(sq);
        float mean = (float)mu, rstd = (float)(1.0 / sqrt(sq / (double)M + eps));
        if (threadIdx.x == 0) {
            stats[2 * ng] = mean;
            stats[2 * ng + 1] = rstd;
        }
        for (int64_t e = threadIdx.x; e < M; e += blockDim.x) {
            int64_t i = at(base, e, C, Cg), c = c0 + e % Cg;
            float h = (x[i] - mean) * rstd * (w ? w[c] : 1.0f) + (b ? b[c] : 0.0f);
            y[i] = silu ? h / (1.0f + expf(-h)) : h;
        }
    }
}

extern "C" void cuda_group_norm_forward(float *y, float *stats, const float *x, const float *w,
                                        const float *b, int64_t N, int64_t S, int64_t C,
                                        int64_t G, float eps, bool silu) {
    LAUNCH(gn_fwd, grid_rows(N * G), BLOCK, 0, y, stats, x, w, b, N * G, S, C, G, eps, silu);
}

/* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = (gradient at h) * w. */
__global__ static void gn_bwd_dx(const float *dy, const float *x, const float *w, const float *b,
                                 const float *stats, float *dx, int64_t NG, int64_t S, int64_t C,
                                 int64_t G, bool silu) {
    int64_t Cg = C / G, M = S * Cg;
    for (int64_t ng = blockIdx.x; ng < NG; ng += gridDim.x) {
        int64_t c0 = ng % G * Cg, base = ng / G * S * C + c0;
        float mean = stats[2 * ng], rstd = stats[2 * ng + 1];
        double sg = 0, sgx = 0;
        for (int64_t e = threadIdx.x; e < M; e += blockDim.x) {
            int64_t i = at(base, e, C, Cg), c = c0 + e % Cg;
            float wc = w ? w[c] : 1.0f;
            double g = (double)grad_at_h(dy[i], x[i], mean, rstd, wc, b ? b[c] : 0.0f, silu) * wc;
            sg += g;
            sgx += g * ((x[i] - mean) * rstd);
        }
        float mg = (float)(block_sum(sg) / (double)M), mgx = (float)(block_sum(sgx) / (double)M);
        for (int64_t e = threadIdx.x; e < M; e += blockDim.x) {
            int64_t i = at(base, e, C, Cg), c = c0 + e % Cg;
            float wc = w ? w[c] : 1.0f, xhat = (x[i] - mean) * rstd;
            float g = grad_at_h(dy[i], x[i], mean, rstd, wc, b ? b[c] : 0.0f, silu) * wc;
            dx[i] += rstd * (g - mg - xhat * mgx);
        }
    }
}

/* dw[c] += sum of g * xhat, db[c] += sum of g over all N * S rows, g the
 * gradient at h: block (32, 8) per (32 channels, chunk of rows), the 8 lanes
 * walking the chunk, meeting in shared memory. The chunk's two sums go to
 * partial [2, chunks, C] (dw's, then db's), or straight into dw and db when
 * there is one chunk. */
__global__ static void gn_bwd_affine(const float *dy, const float *x, const float *w,
                                     const float *b, const float *stats, float *dw, float *db,
                                     double *partial, int64_t N, int64_t S, int64_t C, int64_t G,
                                     int64_t chunks, int64_t rows, bool silu) {
    __shared__ double pw[8][33], pb[8][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x, Cg = C / G;
    int64_t r0 = (int64_t)blockIdx.y * rows, r1 = r0 + rows < N * S ? r0 + rows : N * S;
    double aw = 0, ab = 0;
    if (c < C)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const float *st = stats + 2 * (r / S * G + c / Cg);
            float g = grad_at_h(dy[r * C + c], x[r * C + c], st[0], st[1], w ? w[c] : 1.0f,
                                b ? b[c] : 0.0f, silu);
            ab += g;
            aw += g * ((x[r * C + c] - st[0]) * st[1]);
        }
    pw[threadIdx.y][threadIdx.x] = aw;
    pb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int k = 1; k < 8; k++) {
            aw += pw[k][threadIdx.x];
            ab += pb[k][threadIdx.x];
        }
        if (partial) {
            partial[blockIdx.y * C + c] = aw;
            partial[(chunks + blockIdx.y) * C + c] = ab;
        } else {
            if (dw)
                dw[c] += (float)aw;
            if (db)
                db[c] += (float)ab;
        }
    }
}

extern "C" size_t cuda_group_norm_work_bytes(int64_t N, int64_t S, int64_t C, bool silu) {
    return 0;
}

extern "C" void cuda_group_norm_backward(const float *dy, const float *x, const float *w,
                                         const float *b, const float *stats, float *dx, float *dw,
                                         float *db, void *work, int64_t N, int64_t S, int64_t C,
                                         int64_t G, bool silu) {
    if (dx)
        LAUNCH(gn_bwd_dx, grid_rows(N * G), BLOCK, 0, dy, x, w, b, stats, dx, N * G, S, C, G, silu);
    if (!dw && !db)
        return;
    int64_t chunks = col_chunks(1, N * S, C, 2), rows = (N * S + chunks - 1) / chunks;
    double *partial = chunks > 1 ? cuda_st()->colsum : NULL;
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)chunks);
    LAUNCH(gn_bwd_affine, grid, dim3(32, 8), 0, dy, x, w, b, stats, dw, db, partial, N, S, C, G,
           chunks, rows, silu);
    if (partial && dw)
        launch_colsum_finish(partial, dw, 1, chunks, C, 1.0f);
    if (partial && db)
        launch_colsum_finish(partial + chunks * C, db, 1, chunks, C, 1.0f);
}
