/* Winograd F(2x2, 3x3) convolutions behind conv.c (not for other callers):
 * 3x3, stride 1, padding 1, NHWC, 2.25 times fewer multiplies than the
 * direct kernels. Each 2x2 block of output pixels (a tile) reads the 4x4
 * input pixels around it: V = B^T d B (16 values per channel), the 16
 * products M_e = V_e U_e with U = G g G^T the transformed weights ([cin,
 * cout] each, register-blocked like the direct kernels, each sum over the
 * input channels in order whatever batch the tile is in), then y = A^T M
 * A + bias. Tiles go in chunks, one per thread at a
 * time, through the thread's own buffers; the transformed weights, a group
 * of output channels at a time, fill the rest of the scratch. Results
 * differ from the direct convolution's by rounding (relative 1e-6 .. 1e-5
 * in f32): the transforms add and subtract inputs, and G halves. */
#ifndef DC_CPU_CONV_WINOGRAD_H
#define DC_CPU_CONV_WINOGRAD_H

#include "conv_direct.h"

/* How the weights lie: [cout, 3, 3, cin] (plain); flipped: the input
 * gradient's, the kernel turned half a circle with the channel roles
 * swapped (w [cin, 3, 3, cout] of the forward convolution whose dx this
 * is); packed: cpu_conv_pack's [cout / B, 3, 3, cin, B], f32 or f16 bits. */
typedef enum {
    WINOGRAD_PLAIN,
    WINOGRAD_FLIPPED,
    WINOGRAD_PACKED,
    WINOGRAD_PACKED_HALF,
} cpu_winograd_layout;

/* y [n, h, w, cout] = (or += with accumulate) the convolution of x [n, h,
 * w, cin] with `weights` (as `layout` says) + bias [cout] (NULL: none). */
typedef struct cpu_winograd {
    const float *x;
    const void *weights;
    cpu_winograd_layout layout;
    const float *bias;
    float *y;
    int64_t n, h, w, cin, cout;
    bool accumulate;
} cpu_winograd;

/* Floats of scratch cpu_winograd_run needs (the thread count is read here,
 * as in cpu_conv2d_scratch_floats). */
int64_t cpu_winograd_scratch_floats(const cpu_direct_kernels *k, const cpu_winograd *c);
void cpu_winograd_run(const cpu_direct_kernels *k, const cpu_winograd *c, float *scratch);

/* dw [cout, 3, 3, cin] += the filter gradient of the convolution of x [n,
 * h, w, cin] whose output gradient is dy [n, h, w, cout]: per tile G^T (A
 * g A^T . B^T d B) G (g its 2x2 output gradients, d its 4x4 inputs), the
 * products summed over all tiles first, in tile order: the sums do not
 * depend on the thread count (chunks of tiles a fixed size, each product a
 * task of its own). */
typedef struct cpu_winograd_grad {
    const float *x, *dy;
    float *dw;
    int64_t n, h, w, cin, cout;
} cpu_winograd_grad;

int64_t cpu_winograd_grad_scratch_floats(const cpu_winograd_grad *c);
void cpu_winograd_grad_run(const cpu_direct_kernels *k, const cpu_winograd_grad *c, float *scratch);

/* dst[i] = src[i] widened from f16 bits, n a multiple of 8 (conv.c). */
void cpu_conv_widen_half(const uint16_t *src, float *dst, int64_t n);

#endif
