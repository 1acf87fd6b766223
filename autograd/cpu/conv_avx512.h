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

/* One direct convolution with the padding already applied: output pixels
 * (img, oy, ox) < (n, ho, wo) from src [n, hp, wp, c] (pixel (img, oy * stride
 * + ky, ox * stride + kx) under tap (ky, kx)) and weights packed by blocks of
 * output channels, w [ceil(co / 64), kh, kw, c, 64] (zero past co), so that a
 * block's weights are one contiguous stream. Output pixel (img, oy, ox) has
 * its co channels at out + ((img * out_h + oy * out_step) * out_w + ox *
 * out_step) * co: out_h = ho, out_w = wo, out_step = 1 for a plain
 * convolution, a strided lattice for one phase of a transposed one. */
typedef struct cpu_direct_conv {
    const float *src;
    const float *w;
    const float *bias; /* [co] or NULL */
    float *out;
    int64_t n, hp, wp, c;
    int64_t co, kh, kw, stride;
    int64_t ho, wo;
    int64_t out_h, out_w, out_step;
    bool accumulate; /* out += the result instead of out = */
} cpu_direct_conv;

void cpu_avx512_conv_forward(const cpu_direct_conv *d);

/* dw [cout, kh, kw, cin] += the filter gradient from x and dy (geometry g,
 * padding handled in place). */
void cpu_avx512_conv_filter(const cpu_conv_geom *g, const float *dy, const float *x, float *dw);

#endif
