/* CUDA kernels: nearest 2x upsampling, channel concatenation and slices; the contracts of
 * cpu/resample.h, device pointers. */
#ifndef DC_CUDA_RESAMPLE_H
#define DC_CUDA_RESAMPLE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void cuda_upsample2x_forward(float *out, const float *x, int64_t n, int64_t h, int64_t w,
                             int64_t c);
void cuda_upsample2x_backward(const float *dout, float *dx, int64_t n, int64_t h, int64_t w,
                              int64_t c);
void cuda_concat_forward(float *out, const float *a, const float *b, int64_t rows, int64_t ca,
                         int64_t cb);
void cuda_concat_backward(const float *dout, float *da, float *db, int64_t rows, int64_t ca,
                          int64_t cb, bool set_a, bool set_b);
void cuda_slice_forward(float *out, const float *x, int64_t rows, int64_t c, int64_t start,
                        int64_t count);
void cuda_slice_backward(const float *dout, float *dx, int64_t rows, int64_t c, int64_t start,
                         int64_t count);

#ifdef __cplusplus
}
#endif

#endif
