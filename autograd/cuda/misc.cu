/* CUDA kernels for dropout, embeddings, the timestep embedding and the MSE
 * loss (see misc.h). */
#include "common.cuh"
#include "misc.h"

#include "../rng.h"

/* y = v * keep / (1 - p) (or y += that): one thread per Philox block of four
 * elements, the CPU's mask. */
__global__ static void dropout_apply(float *y, const float *v, int64_t n, float p, uint64_t seed,
                                     uint64_t stream, bool accumulate) {
    float scale = 1.0f / (1.0f - p);
    FOR_N(b, (n + 3) / 4) {
        dc_u32x4 r = dc_rand_block(seed, stream, (uint64_t)b);
        for (int64_t j = 0; j < 4 && 4 * b + j < n; j++) {
            int64_t i = 4 * b + j;
            float kept = dc_u32_to_uniform(r.w[j]) < p ? 0.0f : v[i] * scale;
            y[i] = accumulate ? y[i] + kept : kept;
        }
    }
}

extern "C" void cuda_dropout_forward(float *out, const float *x, int64_t n, float p,
                                     uint64_t seed, uint64_t stream) {
    LAUNCH(dropout_apply, grid_for((n + 3) / 4), BLOCK, 0, out, x, n, p, seed, stream, false);
}

extern "C" void cuda_dropout_backward(const float *dout, float *dx, int64_t n, float p,
                                      uint64_t seed, uint64_t stream) {
    LAUNCH(dropout_apply, grid_for((n + 3) / 4), BLOCK, 0, dx, dout, n, p, seed, stream, true);
}

/* first[0] = min(first[0], i) over the positions i with an index outside [0, v). */
__global__ static void find_bad(const int32_t *idx, int64_t n, int64_t v,
                                unsigned long long *first) {
    FOR_N(i, n)
    if (idx[i] < 0 || idx[i] >= v)
        atomicMin(first, (unsigned long long)i);
}

extern "C" int64_t cuda_embedding_check(const int32_t *idx, int64_t n, int64_t v) {
    cuda_state *st = cuda_st();
    unsigned long long *first = (unsigned long long *)(st->reduce + REDUCE_BLOCKS);
    unsigned long long none = ~0ull, got = 0;
    if (!CUDA_CHECK(cudaMemcpyAsync(first, &none, sizeof none, cudaMemcpyHostToDevice, st->stream)))
        return -1;
    LAUNCH(find_bad, grid_for(n), BLOCK, 0, idx, n, v, first);
    if (!CUDA_CHECK(cudaMemcpyAsync(&got, first, sizeof got, cudaMemcpyDeviceToHost, st->stream)) ||
        !CUDA_CHECK(cudaStreamSynchronize(st->stream)))
        return -1; /* the sticky error stops the op */
    return got == none ? -1 : (int64_t)got;
}

__global__ static void embedding_fwd(float *out, const float *table, const int32_t *idx,
                                     int64_t n, int64_t c) {
    FOR_N(i, n * c)
    out[i] = table[(int64_t)idx[i / c] * c + i % c];
}

/* Rows may repeat: atomic adds (the order of a repeated row's sum varies). */
__global__ static void embedding_bwd(const float *dout, float *dtable, const int32_t *idx,
                                     int64_t n, int64_t c) {
    FOR_N(i, n * c)
    atomicAdd(&dtable[(int64_t)idx[i / c] * c + i % c], dout[i]);
}

extern "C" void cuda_embedding_forward(float *out, const float *table, const int32_t *idx,
                                       int64_t n, int64_t c) {
    LAUNCH(embedding_fwd, grid_for(n * c), BLOCK, 0, out, table, idx, n, c);
}

extern "C" void cuda_embedding_backward(const float *dout, float *dtable, const int32_t *idx,
                                        int64_t n, int64_t c) {
    LAUNCH(embedding_bwd, grid_for(n * c), BLOCK, 0, dout, dtable, idx, n, c);
}

/* The CPU's steps in f32; exp, sin and cos through double and rounded once,
 * which matches a correctly rounded libm (glibc's expf/sinf/cosf) far more
 * often than CUDA's 2-ulp f32 functions would. */
__global__ static void timestep_fwd(float *out, const float *tf, const int32_t *ti, int64_t n,
                                    int64_t dim, bool flip, float shift, float neg_log) {
    int64_t half = dim / 2;
    float denom = (float)((double)half - shift);
    FOR_N(e, n * dim) {
        int64_t i = e / dim, k = e % dim;
        float *row = out + i * dim;
        if (k >= 2 * half) {
            row[k] = 0.0f; /* odd dim: the zero pad */
            continue;
        }
        int64_t f = k < half ? k : k - half; /* this element's frequency */
        bool is_sin = (k < half) != flip; /* [sin, cos], or [cos, sin] when flipped */
        float t = ti ? (float)ti[i] : tf[i];
        float freq = (float)exp((double)(neg_log * (float)f / denom));
        float angle = t * freq;
        row[k] = is_sin ? (float)sin((double)angle) : (float)cos((double)angle);
    }
}

extern "C" void cuda_timestep_embedding_forward(float *out, const float *tf, const int32_t *ti,
                                                int64_t n, int64_t dim, bool flip_sin_to_cos,
                                                float shift, float max_period) {
    float neg_log = (float)-log((double)max_period);
    LAUNCH(timestep_fwd, grid_for(n * dim), BLOCK, 0, out, tf, ti, n, dim, flip_sin_to_cos, shift,
           neg_log);
}

/* The CPU's formula, in double, one element per thread. */
__global__ static void fourier_fwd(float *out, const float *tf, const int32_t *ti, const float *w,
                                   int64_t n, int64_t d, bool flip) {
    FOR_N(e, n * 2 * d) {
        int64_t i = e / (2 * d), k = e % (2 * d), f = k < d ? k : k - d;
        bool is_sin = (k < d) != flip;
        double angle = 2.0 * 3.14159265358979323846 * log(ti ? (double)ti[i] : (double)tf[i]) * (double)w[f];
        out[e] = is_sin ? (float)sin(angle) : (float)cos(angle);
    }
}

extern "C" void cuda_fourier_embedding_forward(float *out, const float *tf, const int32_t *ti,
                                               const float *w, int64_t n, int64_t d,
                                               bool flip_sin_to_cos) {
    LAUNCH(fourier_fwd, grid_for(n * 2 * d), BLOCK, 0, out, tf, ti, w, n, d, flip_sin_to_cos);
}

struct weighted_sq_err {
    const float *pred, *target, *w;
    int64_t d;
    __device__ double operator()(int64_t k) const {
        double e = (double)pred[k] - target[k];
        return (w ? w[k / d] : 1.0) * e * e;
    }
};

extern "C" void cuda_mse_loss_forward(float *out, const float *pred, const float *target,
                                      const float *w, int64_t n, int64_t d) {
    reduce_to_device(weighted_sq_err{pred, target, w, d}, n * d, (double)n * (double)d, out);
}

__global__ static void mse_bwd(const float *gp, const float *pred, const float *target,
                               const float *w, float *dpred, float *dtarget, int64_t n,
                               int64_t d) {
    double nd = (double)n * (double)d, g = gp[0];
    FOR_N(k, n * d) {
        double e = (double)pred[k] - target[k];
        float de = (float)(2.0 * g * (w ? w[k / d] : 1.0) * e / nd);
        if (dpred)
            dpred[k] += de;
        if (dtarget)
            dtarget[k] -= de;
    }
}

/* dw[i] += g * mean of row i's squared errors / n: one block per row. */
__global__ static void mse_bwd_w(const float *gp, const float *pred, const float *target,
                                 float *dw, int64_t n, int64_t d) {
    double nd = (double)n * (double)d, g = gp[0];
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        double si = 0;
        for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
            double e = (double)pred[i * d + j] - target[i * d + j];
            si += e * e;
        }
        si = block_sum(si);
        if (threadIdx.x == 0)
            dw[i] += (float)(g * si / nd);
    }
}

extern "C" void cuda_mse_loss_backward(const float *g, const float *pred, const float *target,
                                       const float *w, float *dpred, float *dtarget, float *dw,
                                       int64_t n, int64_t d) {
    if (dpred || dtarget)
        LAUNCH(mse_bwd, grid_for(n * d), BLOCK, 0, g, pred, target, w, dpred, dtarget, n, d);
    if (dw)
        LAUNCH(mse_bwd_w, grid_rows(n), BLOCK, 0, g, pred, target, dw, n, d);
}

/* Cross-entropy: one block per row, as a vocabulary's rows are long (BLIP's
 * 30524 logits): the row's maximum, log-sum-exp and sum found by the block
 * together, in double but for the maximum. Rows go to blocks i, i + grid,
 * ...; the block's terms (0 for an ignored row) are summed in order by
 * thread 0, so the loss is the same on every run. */
#define CE_BLOCKS 256

struct ce_row {
    double lse, sum; /* log-sum-exp and the plain sum of the row */
};

__device__ static ce_row ce_row_stats(const float *row, int64_t k, bool want_sum) {
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x)
        m = fmaxf(m, row[j]);
    m = block_max(m);
    double e = 0, sum = 0;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
        e += exp((double)row[j] - m);
        sum += want_sum ? row[j] : 0;
    }
    e = block_sum(e);
    sum = want_sum ? block_sum(sum) : 0;
    return ce_row{m + log(e), sum};
}

__global__ static void ce_fwd_rows(const float *logits, const int32_t *labels, int64_t n, int64_t k,
                                   int64_t ignore, double e, double *partial) {
    double s = 0;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        if (labels[i] == ignore) /* the same for the whole block */
            continue;
        const float *row = logits + i * k;
        ce_row r = ce_row_stats(row, k, e != 0);
        s += r.lse - (1 - e) * row[labels[i]] - e * r.sum / (double)k;
    }
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s;
}

extern "C" void cuda_cross_entropy_forward(float *out, const float *logits, const int32_t *labels,
                                           int64_t n, int64_t k, int64_t ignore, float smoothing,
                                           int64_t kept) {
    cuda_state *st = cuda_st();
    unsigned blocks = n < CE_BLOCKS ? (unsigned)n : CE_BLOCKS;
    LAUNCH(ce_fwd_rows, blocks, BLOCK, 0, logits, labels, n, k, ignore, (double)smoothing, st->reduce);
    LAUNCH(reduce_pass2, 1, BLOCK, 0, st->reduce, (int)blocks, (double)kept, out, (double *)NULL);
}

__global__ static void ce_bwd_rows(const float *gp, const float *logits, const int32_t *labels,
                                   float *dlogits, int64_t n, int64_t k, int64_t ignore, double e,
                                   int64_t kept) {
    double scale = (double)gp[0] / (double)kept, off = e / (double)k;
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        if (labels[i] == ignore)
            continue;
        const float *row = logits + i * k;
        double lse = ce_row_stats(row, k, false).lse;
        for (int64_t j = threadIdx.x; j < k; j += blockDim.x)
            dlogits[i * k + j] +=
                (float)(scale * (exp((double)row[j] - lse) - (1 - e) * (j == labels[i]) - off));
    }
}

extern "C" void cuda_cross_entropy_backward(const float *g, const float *logits,
                                            const int32_t *labels, float *dlogits, int64_t n,
                                            int64_t k, int64_t ignore, float smoothing,
                                            int64_t kept) {
    unsigned blocks = n < 65535 ? (unsigned)n : 65535;
    LAUNCH(ce_bwd_rows, blocks, BLOCK, 0, g, logits, labels, dlogits, n, k, ignore,
           (double)smoothing, kept);
}
