/* CPU kernels for 2-D convolution over NHWC images with [Cout, kh, kw, Cin]
 * weights. Two ways: direct AVX-512 or AVX2 kernels where the CPU has them
 * (isa.h; 3x3 stride-1 convolutions with enough channels the Winograd way,
 * conv_winograd.h, on the same kernels), and otherwise GEMMs (a 1x1 stride-1 unpadded convolution is a
 * GEMM over the pixels, anything else im2col + GEMM a chunk of output rows
 * at a time so the column buffer stays bounded). Either way a sample's
 * forward result does not depend on its batch. Backward kernels add into the
 * gradient buffers they are given (NULL = not needed). */
#ifndef DC_CPU_CONV_H
#define DC_CPU_CONV_H

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    CPU_CONV_AUTO,     /* direct or Winograd (where faster) with AVX2 or AVX-512, GEMM otherwise */
    CPU_CONV_GEMM,     /* always the GEMM way (tests compare the ways) */
    CPU_CONV_DIRECT,   /* the direct kernels, never Winograd (GEMM where there are none) */
    CPU_CONV_WINOGRAD, /* Winograd for every 3x3 stride-1 padding-1 forward pass and input
                        * gradient (conv_winograd.h), else as AUTO */
} cpu_conv_algo;

/* x [n, h, w, cin] * w [cout, kh, kw, cin] -> y [n, ho, wo, cout]. */
typedef struct cpu_conv_geom {
    int64_t n, h, w, cin;
    int64_t cout, kh, kw;
    int64_t stride, pad;
    int64_t ho, wo;
    cpu_conv_algo algo;
    bool packed; /* w is in the direct kernels' layout already (cpu_conv_pack) */
    bool half;   /* ... and f16 bits (cpu_conv_pack_half): w points at uint16_t */
} cpu_conv_geom;

/* Weights packed once for inference: the direct kernels read w [cout, K]
 * (K = kh kw cin; a linear layer's [out, in] alike) as [cout / B, K, B],
 * blocks of B output channels innermost, and repack them at every forward
 * pass; weights that do not change can be kept that way (cout a multiple of
 * B). cpu_conv_pack_block: B on this CPU, 0 where no direct kernel runs
 * (nothing to pack for). */
int64_t cpu_conv_pack_block(void);
void cpu_conv_pack(const float *w, float *wp, int64_t cout, int64_t K);
void cpu_conv_unpack(const float *wp, float *w, int64_t cout, int64_t K);
/* The same with the packed weights as f16 bits (round to nearest even): the
 * forward pass widens each vector as it loads it (or, over many output
 * pixels, all of them once into its scratch). cpu_conv_half_fits: every
 * w[i] is finite and rounds to a finite f16 (|w| < 65520), so packing keeps
 * them all. */
bool cpu_conv_half_fits(const float *w, int64_t n);
void cpu_conv_pack_half(const float *w, uint16_t *wp, int64_t cout, int64_t K);
void cpu_conv_unpack_half(const uint16_t *wp, float *w, int64_t cout, int64_t K);

/* The bound the ops put on the chunked part of the scratch. */
#define CPU_CONV_SCRATCH_BYTES ((int64_t)64 << 20)

/* Floats of scratch the kernels below need: the direct way's repacked
 * weights and per-thread windows, plus the chunked buffers (output rows of
 * the column buffer, or images of padded input) within max_bytes, but at
 * least one chunk and at most all. The thread count is read here: run the
 * kernels with the same OpenMP setting. */
int64_t cpu_conv2d_scratch_floats(const cpu_conv_geom *g, int64_t max_bytes);

/* y = conv(x, w) + b (b [cout] may be NULL), using scratch [scratch_floats]
 * as cpu_conv2d_scratch_floats sized it; w packed when g->packed (only
 * where cpu_conv_pack_block is not 0). */
void cpu_conv2d_forward(const cpu_conv_geom *g, float *y, const float *x, const float *w,
                        const float *b, float *scratch, int64_t scratch_floats);
/* dx [n, h, w, cin], dw [cout, kh, kw, cin], db [cout] += the gradients from
 * dy [n, ho, wo, cout]; with dx_fresh, dx holds no values yet and gets =. */
void cpu_conv2d_backward(const cpu_conv_geom *g, const float *dy, const float *x, const float *w,
                         float *dx, bool dx_fresh, float *dw, float *db, float *scratch,
                         int64_t scratch_floats);

#endif
