/* CUDA kernels for nearest 2x upsampling, channel concatenation and channel
 * slices (see resample.h): one thread per output element. */
#include "common.cuh"
#include "resample.h"

/* out [n, 2h, 2w, c] from x [n, h, w, c]. */
__global__ static void upsample_fwd(float *out, const float *x, int64_t n, int64_t h, int64_t w,
                                    int64_t c) {
    FOR_N(i, n * 4 * h * w * c) {
        int64_t ch = i % c, rest = i / c, ox = rest % (2 * w);
        rest /= 2 * w;
        int64_t oy = rest % (2 * h), img = rest / (2 * h);
        out[i] = x[((img * h + oy / 2) * w + ox / 2) * c + ch];
    }
}

/* dx [n, h, w, c] += the 2x2 block sums of dout. */
__global__ static void upsample_bwd(const float *dout, float *dx, int64_t n, int64_t h, int64_t w,
                                    int64_t c) {
    FOR_N(i, n * h * w * c) {
        int64_t ch = i % c, rest = i / c, x = rest % w;
        rest /= w;
        int64_t y = rest % h, img = rest / h;
        const float *d = dout + ((img * 2 * h + 2 * y) * 2 * w + 2 * x) * c + ch;
        int64_t row = 2 * w * c;
        dx[i] += d[0] + d[c] + d[row] + d[row + c]; /* the CPU's order */
    }
}

extern "C" void cuda_upsample2x_forward(float *out, const float *x, int64_t n, int64_t h,
                                        int64_t w, int64_t c) {
    LAUNCH(upsample_fwd, grid_for(n * 4 * h * w * c), BLOCK, 0, out, x, n, h, w, c);
}

extern "C" void cuda_upsample2x_backward(const float *dout, float *dx, int64_t n, int64_t h,
                                         int64_t w, int64_t c) {
    LAUNCH(upsample_bwd, grid_for(n * h * w * c), BLOCK, 0, dout, dx, n, h, w, c);
}

/* Columns [start, start + count) of a wide [rows, c] matrix against a dense
 * [rows, count] one: gather reads the wide one into the dense one, scatter
 * the other way; each sets or (accumulate) adds. */
__global__ static void gather(float *dense, const float *wide, int64_t rows, int64_t c,
                              int64_t start, int64_t count, bool accumulate) {
    FOR_N(i, rows * count) {
        float v = wide[i / count * c + start + i % count];
        dense[i] = accumulate ? dense[i] + v : v;
    }
}

__global__ static void scatter(float *wide, const float *dense, int64_t rows, int64_t c,
                               int64_t start, int64_t count, bool accumulate) {
    FOR_N(i, rows * count) {
        float *w = wide + i / count * c + start + i % count;
        *w = accumulate ? *w + dense[i] : dense[i];
    }
}

extern "C" void cuda_concat_forward(float *out, const float *a, const float *b, int64_t rows,
                                    int64_t ca, int64_t cb) {
    LAUNCH(scatter, grid_for(rows * ca), BLOCK, 0, out, a, rows, ca + cb, 0, ca, false);
    LAUNCH(scatter, grid_for(rows * cb), BLOCK, 0, out, b, rows, ca + cb, ca, cb, false);
}

extern "C" void cuda_concat_backward(const float *dout, float *da, float *db, int64_t rows,
                                     int64_t ca, int64_t cb, bool set_a, bool set_b) {
    if (da)
        LAUNCH(gather, grid_for(rows * ca), BLOCK, 0, da, dout, rows, ca + cb, 0, ca, !set_a);
    if (db)
        LAUNCH(gather, grid_for(rows * cb), BLOCK, 0, db, dout, rows, ca + cb, ca, cb, !set_b);
}

extern "C" void cuda_slice_forward(float *out, const float *x, int64_t rows, int64_t c,
                                   int64_t start, int64_t count) {
    LAUNCH(gather, grid_for(rows * count), BLOCK, 0, out, x, rows, c, start, count, false);
}

extern "C" void cuda_slice_backward(const float *dout, float *dx, int64_t rows, int64_t c,
                                    int64_t start, int64_t count) {
    LAUNCH(scatter, grid_for(rows * count), BLOCK, 0, dx, dout, rows, c, start, count, true);
}
