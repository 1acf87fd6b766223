/* AVX-512 direct-convolution kernels behind conv.c (not for other callers).
 * They read NHWC images in place, with no column buffer: each output tile
 * keeps its sums in registers while it walks the kernel taps. */
#ifndef DC_CPU_CONV_AVX512_H
#define DC_CPU_CONV_AVX512_H

#include "conv.h"

#include <stdbool.h>

/* True when this CPU runs AVX-512F and FMA. */
bool cpu_avx512_available(void);

/* Output channels per block of packed weights. */
#define CPU_DIRECT_BLOCK 64

/* One direct convolution: output pixels (img, oy, ox) < (n, ho, wo) from
 * src [n, h, w, c], where tap (ky, kx) of output (oy, ox) reads input pixel
 * (oy * stride + ky - top, ox * stride + kx - left) and zero outside the
 * image (top and left may be negative: an offset into it). Weights are
 * packed by blocks of output channels, weights [ceil(co / 64), kh, kw, c, 64]
 * (zero past co), so that a block's weights are one contiguous stream.
 * Output pixel (img, oy, ox) has its co channels at out + ((img * out_h +
 * oy * out_step) * out_w + ox * out_step) * co: out_h = ho, out_w = wo,
 * out_step = 1 for a plain convolution, a strided lattice for one phase of a
 * transposed one. */
typedef struct cpu_direct_conv {
    const float *src;
    const float *weights;
    const float *bias; /* [co] or NULL */
    float *out;
    float *patches;    /* [threads, cpu_avx512_patch_floats()]: inputs of pixels at the border */
    int threads;       /* at most this many threads run */
    int64_t n, h, w, c;
    int64_t co, kh, kw, stride, top, left;
    int64_t ho, wo;
    int64_t out_h, out_w, out_step;
    bool accumulate; /* out += the result instead of out = */
} cpu_direct_conv;

/* Floats of patch memory per thread for a kh x kw kernel over c channels. */
int64_t cpu_avx512_patch_floats(int64_t kh, int64_t kw, int64_t c);

/* Runs d, threads splitting the output pixels. */
void cpu_avx512_conv_forward(const cpu_direct_conv *d);

/* A tap whose window lies inside the image for every output pixel (ky * kw
 * + kx), or -1 when there is none. */
int64_t cpu_avx512_full_tap(const cpu_conv_geom *g);

/* dw [cout, kh, kw, cin] += the filter gradient from x and dy (geometry g,
 * padding handled in place), and db [cout] (when not NULL) += the column sums
 * of dy, taken alongside bias_tap, which must be cpu_avx512_full_tap(g). */
void cpu_avx512_conv_filter(const cpu_conv_geom *g, const float *dy, const float *x, float *dw,
                            float *db, int64_t bias_tap);

/* The same for inputs with few channels (vectors run over output channels
 * instead), from n images of zero-padded input xp [n, h + 2 pad, w + 2 pad, cin]
 * and their dy [n, ho, wo, cout]; db may be NULL. */
void cpu_avx512_conv_filter_narrow(const cpu_conv_geom *g, int64_t n, const float *xp,
                                   const float *dy, float *dw, float *db);

#endif
