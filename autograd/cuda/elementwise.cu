/* CUDA kernels for broadcast binary ops, affine maps, sums and the column
 * sums that bias gradients share (see elementwise.h). */
#include "common.cuh"
#include "elementwise.h"

typedef struct {
    int64_t as[4], bs[4];
} shapes4;

__device__ static inline float apply(cpu_binary_kind k, float a, float b) {
    return k == CPU_ADD ? a + b : k == CPU_SUB ? a - b : a * b;
}

/* Index into b of the element at a's flat index i. */
__device__ static inline int64_t b_index(int64_t i, const shapes4 &s) {
    int64_t j = 0, stride = 1;
    for (int d = 3; d >= 0; d--) {
        int64_t c = i % s.as[d];
        i /= s.as[d];
        if (s.bs[d] != 1)
            j += c * stride;
        stride *= s.bs[d];
    }
    return j;
}

static shapes4 pack(const int64_t as[4], const int64_t bs[4]) {
    shapes4 s;
    for (int d = 0; d < 4; d++)
        s.as[d] = as[d], s.bs[d] = bs[d];
    return s;
}

static int64_t numel4(const int64_t s[4]) { return s[0] * s[1] * s[2] * s[3]; }

__global__ static void binary_fwd(cpu_binary_kind k, float *out, const float *a, const float *b,
                                  shapes4 s, int64_t n, bool same) {
    FOR_N(i, n)
    out[i] = apply(k, a[i], b[same ? i : b_index(i, s)]);
}

extern "C" void cuda_binary_forward(cpu_binary_kind k, float *out, const float *a, const float *b,
                                    const int64_t as[4], const int64_t bs[4]) {
    int64_t n = numel4(as);
    LAUNCH(binary_fwd, grid_for(n), BLOCK, 0, k, out, a, b, pack(as, bs), n, numel4(bs) == n);
}

/* da += dout (times b for mul); db += dout (-dout for sub, dout * a for mul)
 * where b has a's shape. */
__global__ static void binary_bwd_da(cpu_binary_kind k, const float *dout, const float *b,
                                     float *da, shapes4 s, int64_t n, bool same) {
    FOR_N(i, n)
    da[i] += k == CPU_MUL ? dout[i] * b[same ? i : b_index(i, s)] : dout[i];
}

__global__ static void binary_bwd_db_same(cpu_binary_kind k, const float *dout, const float *a,
                                          float *db, int64_t n) {
    FOR_N(i, n)
    db[i] += k == CPU_MUL ? dout[i] * a[i] : k == CPU_SUB ? -dout[i] : dout[i];
}

/* The general broadcast: one thread per element of b sums what reads it. */
__global__ static void binary_bwd_db_general(cpu_binary_kind k, const float *dout, const float *a,
                                             float *db, shapes4 s, int64_t nb) {
    int64_t red[4], nred = 1;
    for (int d = 0; d < 4; d++) {
        red[d] = s.bs[d] == 1 ? s.as[d] : 1;
        nred *= red[d];
    }
    FOR_N(j, nb) {
        int64_t cj[4], r = j;
        for (int d = 3; d >= 0; d--) {
            cj[d] = r % s.bs[d];
            r /= s.bs[d];
        }
        double acc = 0;
        for (int64_t q = 0; q < nred; q++) {
            int64_t rest = q, i = 0, stride = 1;
            for (int d = 3; d >= 0; d--) {
                int64_t c = red[d] == 1 ? cj[d] : rest % red[d];
                if (red[d] != 1)
                    rest /= red[d];
                i += c * stride;
                stride *= s.as[d];
            }
            acc += k == CPU_MUL ? (double)dout[i] * a[i] : dout[i];
        }
        db[j] += (k == CPU_SUB ? -1.0f : 1.0f) * (float)acc;
    }
}

extern "C" void cuda_binary_backward(cpu_binary_kind k, const float *dout, const float *a,
                                     const float *b, float *da, float *db, const int64_t as[4],
                                     const int64_t bs[4]) {
    int64_t n = numel4(as), nb = numel4(bs), A, R, C;
    shapes4 s = pack(as, bs);
    if (da)
        LAUNCH(binary_bwd_da, grid_for(n), BLOCK, 0, k, dout, b, da, s, n, nb == n);
    if (!db)
        return;
    if (nb == n)
        LAUNCH(binary_bwd_db_same, grid_for(n), BLOCK, 0, k, dout, a, db, n);
    else if (cpu_broadcast_split3(as, bs, &A, &R, &C) && A <= 65535) /* the grid's y limit */
        launch_colsum(dout, k == CPU_MUL ? a : NULL, db, A, R, C, k == CPU_SUB ? -1.0f : 1.0f);
    else
        LAUNCH(binary_bwd_db_general, grid_for(nb), BLOCK, 0, k, dout, a, db, s, nb);
}

/* Block (32, 8) per (32 columns, chunk of rows of group i): the 8 lanes run
 * down the chunk, then meet in shared memory; the chunk's sum goes to
 * partial [A, chunks, C], or straight into db when there is one chunk. */
__global__ static void colsum(const float *dout, const float *a, float *db, double *partial,
                              int64_t R, int64_t C, int64_t chunks, int64_t rows, float sign) {
    __shared__ double part[8][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x, i = blockIdx.y / chunks;
    int64_t r0 = blockIdx.y % chunks * rows, r1 = r0 + rows < R ? r0 + rows : R;
    double acc = 0;
    if (c < C)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
            int64_t at = (i * R + r) * C + c;
            acc += a ? (double)dout[at] * a[at] : (double)dout[at];
        }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        for (int y = 1; y < 8; y++)
            acc += part[y][threadIdx.x];
        if (partial)
            partial[blockIdx.y * C + c] = acc;
        else
            db[i * C + c] += sign * (float)acc;
    }
}

void launch_colsum(const float *dout, const float *a, float *db, int64_t A, int64_t R, int64_t C,
                   float sign) {
    if (A == 0 || C == 0)
        return;
    if (A > 65535) { /* gridDim.y's limit: binary ops take the general kernel past it */
        CUDA_FAIL("column sums over more than 65535 groups");
        return;
    }
    int64_t chunks = col_chunks(A, R, C, 1), rows = (R + chunks - 1) / chunks;
    double *partial = chunks > 1 ? cuda_st()->colsum : NULL;
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)(A * chunks)), block(32, 8);
    LAUNCH(colsum, grid, block, 0, dout, a, db, partial, R, C, chunks, rows, sign);
    if (partial)
        launch_colsum_finish(partial, db, A, chunks, C, sign);
}

__global__ static void colsum_finish(const double *partial, float *out, int64_t groups,
                                     int64_t chunks, int64_t C, float sign) {
    FOR_N(k, groups * C) {
        int64_t i = k / C, c = k % C;
        double acc = 0;
        for (int64_t q = 0; q < chunks; q++)
            acc += partial[(i * chunks + q) * C + c];
        out[k] += sign * (float)acc;
    }
}

void launch_colsum_finish(const double *partial, float *out, int64_t groups, int64_t chunks,
                          int64_t C, float sign) {
    LAUNCH(colsum_finish, grid_for(groups * C), BLOCK, 0, partial, out, groups, chunks, C, sign);
}

__global__ static void affine_fwd(float *out, const float *x, int64_t n, float alpha, float beta) {
    FOR_N(i, n)
    out[i] = alpha * x[i] + beta;
}

extern "C" void cuda_affine_forward(float *out, const float *x, int64_t n, float alpha,
                                    float beta) {
    LAUNCH(affine_fwd, grid_for(n), BLOCK, 0, out, x, n, alpha, beta);
}

__global__ static void affine_bwd(const float *dout, float *dx, int64_t n, float alpha) {
    FOR_N(i, n)
    dx[i] += alpha * dout[i];
}

extern "C" void cuda_affine_backward(const float *dout, float *dx, int64_t n, float alpha) {
    LAUNCH(affine_bwd, grid_for(n), BLOCK, 0, dout, dx, n, alpha);
}

struct element_of {
    const float *x;
    __device__ double operator()(int64_t i) const { return x[i]; }
};

extern "C" void cuda_sum_forward(float *out, const float *x, int64_t n, double div) {
    reduce_to_device(element_of{x}, n, div, out);
}

__global__ static void fill_add(float *dx, int64_t n, const float *g, float div) {
    float v = g[0] / div;
    FOR_N(i, n)
    dx[i] += v;
}

extern "C" void cuda_fill_add(float *dx, int64_t n, const float *g, float div) {
    LAUNCH(fill_add, grid_for(n), BLOCK, 0, dx, n, g, div);
}
