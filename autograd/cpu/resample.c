/* CPU kernels for nearest 2x upsampling, concatenation and slices of the
 * channel (last) dimension (OpenMP). Each output row is written by one
 * thread and each gradient element gathered by one thread: no races. */
#include "resample.h"

#include <string.h>

void cpu_upsample2x_forward(float *out, const float *x, int64_t n, int64_t h, int64_t w,
                            int64_t c) {
#pragma omp parallel for collapse(2)
    for (int64_t i = 0; i < n; i++)
        for (int64_t oy = 0; oy < 2 * h; oy++)
            for (int64_t ox = 0; ox < 2 * w; ox++) {
                const float *src = x + ((i * h + oy / 2) * w + ox / 2) * c;
                float *dst = out + ((i * 2 * h + oy) * 2 * w + ox) * c;
                for (int64_t k = 0; k < c; k++)
                    dst[k] = src[k];
            }
}

void cpu_upsample2x_backward(const float *dout, float *dx, int64_t n, int64_t h, int64_t w,
                             int64_t c) {
    int64_t ow = 2 * w;
#pragma omp parallel for collapse(2)
    for (int64_t i = 0; i < n; i++)
        for (int64_t y = 0; y < h; y++)
            for (int64_t xx = 0; xx < w; xx++) {
                const float *g = dout + ((i * 2 * h + 2 * y) * ow + 2 * xx) * c;
                float *d = dx + ((i * h + y) * w + xx) * c;
                for (int64_t k = 0; k < c; k++)
                    d[k] += g[k] + g[c + k] + g[ow * c + k] + g[ow * c + c + k];
            }
}

void cpu_concat_forward(float *out, const float *a, const float *b, int64_t rows, int64_t ca,
                        int64_t cb) {
    int64_t co = ca + cb;
#pragma omp parallel for
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t k = 0; k < ca; k++)
            out[r * co + k] = a[r * ca + k];
        for (int64_t k = 0; k < cb; k++)
            out[r * co + ca + k] = b[r * cb + k];
    }
}

/* d [cols] = or += s [cols]. */
static inline void put_row(float *d, const float *s, int64_t cols, bool set) {
    if (set) {
        memcpy(d, s, (size_t)cols * sizeof *d);
        return;
    }
#pragma omp simd
    for (int64_t k = 0; k < cols; k++)
        d[k] += s[k];
}

/* Row by row, a's slice before b's: when da and db are one buffer (a and b
 * one tensor), a row is set before it is added to. */
void cpu_concat_backward(const float *dout, float *da, float *db, int64_t rows, int64_t ca,
                         int64_t cb, bool set_a, bool set_b) {
    int64_t co = ca + cb;
#pragma omp parallel for
    for (int64_t r = 0; r < rows; r++) {
        if (da)
            put_row(da + r * ca, dout + r * co, ca, set_a);
        if (db)
            put_row(db + r * cb, dout + r * co + ca, cb, set_b);
    }
}

void cpu_slice_forward(float *out, const float *x, int64_t rows, int64_t c, int64_t start,
                       int64_t count) {
#pragma omp parallel for
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < count; k++)
            out[r * count + k] = x[r * c + start + k];
}

void cpu_slice_backward(const float *dout, float *dx, int64_t rows, int64_t c, int64_t start,
                        int64_t count) {
#pragma omp parallel for
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < count; k++)
            dx[r * c + start + k] += dout[r * count + k];
}
