/* Direct-convolution kernels behind conv.c (not for other callers), one set
 * per vector ISA: conv_avx512.c and conv_avx2.c compile the same source
 * (conv_direct_tmpl.h) for their vector width. They read NHWC images in
 * place, with no column buffer: each output tile keeps its sums in registers
 * while it walks the kernel taps. */
#ifndef DC_CPU_CONV_DIRECT_H
#define DC_CPU_CONV_DIRECT_H

#include "conv.h"

#include <stdbool.h>

/* One direct convolution: output pixels (img, oy, ox) < (n, ho, wo) from
 * src [n, h, w, c], where tap (ky, kx) of output (oy, ox) reads input pixel
 * (oy * stride + ky - top, ox * stride + kx - left) and zero outside the
 * image (top and left may be negative: an offset into it). Weights are
 * packed by blocks of output channels, weights [ceil(co / block), kh, kw, c,
 * block] (zero past co), so that a block's weights are one contiguous stream.
 * Output pixel (img, oy, ox) has its co channels at out + ((img * out_h +
 * oy * out_step) * out_w + ox * out_step) * co: out_h = ho, out_w = wo,
 * out_step = 1 for a plain convolution, a strided lattice for one phase of a
 * transposed one. Weights packed once for inference may be f16 (`half`):
 * each vector of them is widened to f32 as it is loaded, the sums stay f32. */
typedef struct cpu_direct_conv {
    const float *src;
    const float *weights;
    const uint16_t *half; /* the same weights as f16 bits instead (NULL: f32 `weights`) */
    const float *bias; /* [co] or NULL */
    float *out;
    float *patches;    /* [threads, patch_floats()]: inputs of pixels at the border */
    int threads;       /* at most this many threads run */
    int64_t n, h, w, c;
    int64_t co, kh, kw, stride, top, left;
    int64_t ho, wo;
    int64_t out_h, out_w, out_step;
    bool accumulate; /* out += the result instead of out = */
} cpu_direct_conv;

/* The kernels of one ISA. */
typedef struct cpu_direct_kernels {
    int64_t block; /* output channels per block of packed weights */
    int64_t lanes; /* floats per vector: inputs with fewer channels are "narrow" */
    /* Floats of patch memory per thread for a kh x kw kernel over c channels. */
    int64_t (*patch_floats)(int64_t kh, int64_t kw, int64_t c);
    /* Runs d, threads splitting the output pixels. */
    void (*forward)(const cpu_direct_conv *d);
    /* A tap whose window lies inside the image for every output pixel (ky *
     * kw + kx), or -1 when there is none. */
    int64_t (*full_tap)(const cpu_conv_geom *g);
    /* dw [cout, kh, kw, cin] += the filter gradient from x and dy (geometry
     * g, padding handled in place), and db [cout] (when not NULL) += the
     * column sums of dy, taken alongside bias_tap, which must be full_tap(g). */
    void (*filter)(const cpu_conv_geom *g, const float *dy, const float *x, float *dw, float *db,
                   int64_t bias_tap);
    /* The same for inputs with fewer channels than a vector (vectors run over
     * output channels instead), from n images of zero-padded input xp [n, h +
     * 2 pad, w + 2 pad, cin] and their dy [n, ho, wo, cout]; db may be NULL. */
    void (*filter_narrow)(const cpu_conv_geom *g, int64_t n, const float *xp, const float *dy,
                          float *dw, float *db);
    /* The kernels of the Winograd convolution (conv_winograd_tmpl.h). */
    void (*winograd_input)(const float *x, int64_t h, int64_t w, int64_t c, int64_t th, int64_t tw,
                           int64_t t0, int64_t nt, float *v, int64_t es);
    void (*winograd_output)(const float *m, int64_t es, int64_t c, const float *bias, float *y,
                            int64_t h, int64_t w, int64_t yc, int64_t c0, int64_t th, int64_t tw,
                            int64_t t0, int64_t nt, bool accumulate);
    void (*winograd_products)(const float *v, int64_t nt, int64_t c, const float *u, int64_t co,
                              float *m);
    /* The filter gradient's: the output gradients' transform (as
     * winograd_input's, of 2x2 tiles), and m [., ci] rows co0 .. co0 + nr,
     * columns j0 .. j0 + nj vectors += the sums over nt tiles of g [nt, co]
     * x [nt, ci] (nj at most vectors_per_tile, nr at most rows_per_vectors
     * / nj). */
    void (*winograd_grad_input)(const float *dy, int64_t h, int64_t w, int64_t c, int64_t th,
                                int64_t tw, int64_t t0, int64_t nt, float *v, int64_t es);
    void (*winograd_grad_products)(const float *g, int64_t co, const float *x, int64_t ci,
                                   int64_t nt, int nr, int nj, float *m, int64_t co0, int64_t j0);
    int vectors_per_tile; /* VJ: most vectors of input channels of a grad product tile */
    int rows_per_vectors; /* FR VJ: rows of a grad tile of nj vectors, over nj */
} cpu_direct_kernels;

#if defined(__x86_64__)
extern const cpu_direct_kernels cpu_direct_avx512; /* AVX-512F + FMA */
extern const cpu_direct_kernels cpu_direct_avx2;   /* AVX2 + FMA */
#endif

#endif
