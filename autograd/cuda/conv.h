/* CUDA convolution through cuDNN (NHWC, KRSC filters = our [Cout, kh, kw, Cin]); the contracts
 * of cpu/conv.h, device pointers. */
#ifndef DC_CUDA_CONV_H
#define DC_CUDA_CONV_H

#include "../cpu/conv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Floats of scratch (cuDNN workspace, and bf16 copies under DC_MATH_BF16) that
 * forward and backward of this geometry need within max_bytes of workspace;
 * chooses and caches the algorithms of the shape on first sight. */
int64_t cuda_conv2d_scratch_floats(const cpu_conv_geom *g, int64_t max_bytes);
void cuda_conv2d_forward(const cpu_conv_geom *g, float *y, const float *x, const float *w,
                         const float *b, float *scratch, int64_t scratch_floats);
void cuda_conv2d_backward(const cpu_conv_geom *g, const float *dy, const float *x, const float *w,
                          float *dx, bool dx_fresh, float *dw, float *db, float *scratch,
                          int64_t scratch_floats);

#ifdef __cplusplus
}
#endif

#endif
