/* CPU kernels for conv2d: a plain GEMM for 1x1 stride-1 unpadded kernels,
 * otherwise NHWC im2col + GEMM (OpenBLAS threads the GEMMs, OpenMP the
 * gathers and scatters).
 *
 * The column buffer has one row per output pixel and one column per
 * (ky, kx, cin), the order of the weight's [Cout, kh, kw, Cin] layout, so the
 * forward pass is col @ w^T and w needs no repacking. It is filled for a
 * chunk of output rows (units of (image, oy)) at a time. */
#include "conv.h"

#include "gemm.h"

#include <stdbool.h>
#include <string.h>

/* Floats moved below which a gather or scatter runs on one thread: waking
 * the team would cost more than it saves. */
#define PAR_MIN_FLOATS 65536

static bool is_pointwise(const cpu_conv_geom *g) {
    return g->kh == 1 && g->kw == 1 && g->stride == 1 && g->pad == 0;
}

static int64_t col_width(const cpu_conv_geom *g) { return g->kh * g->kw * g->cin; }

/* Floats of the column buffer per output row (image, oy): the chunking unit. */
static int64_t unit_floats(const cpu_conv_geom *g) { return g->wo * col_width(g); }

int64_t cpu_conv2d_scratch_floats(const cpu_conv_geom *g, int64_t max_bytes) {
    if (is_pointwise(g))
        return 0;
    int64_t fit = max_bytes / (int64_t)sizeof(float) / unit_floats(g), all = g->n * g->ho;
    return (fit < 1 ? 1 : fit < all ? fit : all) * unit_floats(g);
}

/* col [units * wo, kh * kw * cin] = the input patches of output rows u0 .. u0 + units. */
static void im2col(const cpu_conv_geom *g, const float *x, float *col, int64_t u0, int64_t units) {
    const int64_t K = col_width(g), C = g->cin, seg = g->kw * C;
#pragma omp parallel for if (units * g->wo * K >= PAR_MIN_FLOATS)
    for (int64_t u = 0; u < units; u++) {
        int64_t img = (u0 + u) / g->ho, oy = (u0 + u) % g->ho;
        for (int64_t ox = 0; ox < g->wo; ox++) {
            float *row = col + (u * g->wo + ox) * K;
            int64_t ix0 = ox * g->stride - g->pad;
            bool inside = ix0 >= 0 && ix0 + g->kw <= g->w;
            for (int64_t ky = 0; ky < g->kh; ky++) {
                float *dst = row + ky * seg;
                int64_t iy = oy * g->stride - g->pad + ky;
                if (iy < 0 || iy >= g->h) {
                    memset(dst, 0, (size_t)seg * sizeof *dst);
                    continue;
                }
                const float *src = x + ((img * g->h + iy) * g->w) * C;
                if (inside) { /* the kw pixels are contiguous in x */
                    memcpy(dst, src + ix0 * C, (size_t)seg * sizeof *dst);
                    continue;
                }
                for (int64_t kx = 0; kx < g->kw; kx++) {
                    int64_t ix = ix0 + kx;
                    if (ix < 0 || ix >= g->w)
                        memset(dst + kx * C, 0, (size_t)C * sizeof *dst);
                    else
                        memcpy(dst + kx * C, src + ix * C, (size_t)C * sizeof *dst);
                }
            }
        }
    }
}

/* dst[i] += src[i] */
static inline void add_to(float *restrict dst, const float *restrict src, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        dst[i] += src[i];
}

/* dx += the column gradients dcol of output rows u0 .. u0 + units, scattered
 * back to their input pixels. Each thread owns whole input rows, so no two
 * threads add into the same element. */
static void col2im(const cpu_conv_geom *g, const float *dcol, float *dx, int64_t u0, int64_t units) {
    const int64_t K = col_width(g), C = g->cin, seg = g->kw * C;
    const int64_t img0 = u0 / g->ho, img1 = (u0 + units - 1) / g->ho;
#pragma omp parallel for if (units * g->wo * K >= PAR_MIN_FLOATS)
    for (int64_t r = 0; r < (img1 - img0 + 1) * g->h; r++) {
        int64_t img = img0 + r / g->h, iy = r % g->h;
        float *dxrow = dx + (img * g->h + iy) * g->w * C;
        for (int64_t ky = 0; ky < g->kh; ky++) {
            int64_t t = iy + g->pad - ky, u = img * g->ho + t / g->stride - u0;
            if (t < 0 || t % g->stride || t / g->stride >= g->ho || u < 0 || u >= units)
                continue;
            for (int64_t ox = 0; ox < g->wo; ox++) {
                const float *src = dcol + (u * g->wo + ox) * K + ky * seg;
                int64_t ix0 = ox * g->stride - g->pad;
                if (ix0 >= 0 && ix0 + g->kw <= g->w) {
                    add_to(dxrow + ix0 * C, src, seg);
                    continue;
                }
                for (int64_t kx = 0; kx < g->kw; kx++)
                    if (ix0 + kx >= 0 && ix0 + kx < g->w)
                        add_to(dxrow + (ix0 + kx) * C, src + kx * C, C);
            }
        }
    }
}

void cpu_conv2d_forward(const cpu_conv_geom *g, float *y, const float *x, const float *w,
                        const float *b, float *scratch, int64_t scratch_floats) {
    const int64_t K = col_width(g), pix = g->n * g->ho * g->wo;
    if (is_pointwise(g)) {
        cpu_linear_forward(y, x, w, b, pix, K, g->cout);
        return;
    }
    const int64_t all = g->n * g->ho, step = scratch_floats / unit_floats(g);
    for (int64_t u0 = 0; u0 < all; u0 += step) {
        int64_t units = all - u0 < step ? all - u0 : step, rows = units * g->wo;
        im2col(g, x, scratch, u0, units);
        cpu_linear_forward(y + u0 * g->wo * g->cout, scratch, w, b, rows, K, g->cout);
    }
}

void cpu_conv2d_backward(const cpu_conv_geom *g, const float *dy, const float *x, const float *w,
                         float *dx, float *dw, float *db, float *scratch, int64_t scratch_floats) {
    const int64_t K = col_width(g), pix = g->n * g->ho * g->wo;
    if (is_pointwise(g)) {
        cpu_linear_backward(dy, x, w, dx, dw, db, pix, K, g->cout);
        return;
    }
    if (db)
        cpu_bias_backward(dy, db, pix, g->cout);
    const int64_t all = g->n * g->ho, step = scratch_floats / unit_floats(g);
    for (int64_t u0 = 0; u0 < all; u0 += step) {
        int64_t units = all - u0 < step ? all - u0 : step, rows = units * g->wo;
        const float *dyc = dy + u0 * g->wo * g->cout; /* [rows, cout] */
        if (dw) { /* dw [cout, K] += dy^T @ col */
            im2col(g, x, scratch, u0, units);
            cpu_gemm(true, false, g->cout, K, rows, dyc, scratch, 1.0f, dw);
        }
        if (dx) { /* dcol [rows, K] = dy @ w, then scattered into dx */
            cpu_gemm(false, false, rows, K, g->cout, dyc, w, 0.0f, scratch);
            col2im(g, scratch, dx, u0, units);
        }
    }
}
