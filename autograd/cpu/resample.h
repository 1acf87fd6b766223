/* CPU kernels: nearest 2x upsampling, channel concatenation and channel slices.
 * Backward kernels add into the gradient buffers they are given (NULL = not needed). */
#ifndef DC_CPU_RESAMPLE_H
#define DC_CPU_RESAMPLE_H

#include <stdbool.h>
#include <stdint.h>

/* x [n, h, w, c] -> out [n, 2h, 2w, c]; dx [n, h, w, c] += the 2x2 block sums of dout. */
void cpu_upsample2x_forward(float *out, const float *x, int64_t n, int64_t h, int64_t w, int64_t c);
void cpu_upsample2x_backward(const float *dout, float *dx, int64_t n, int64_t h, int64_t w,
                             int64_t c);

/* a [rows, ca] and b [rows, cb] side by side: out [rows, ca + cb]. */
void cpu_concat_forward(float *out, const float *a, const float *b, int64_t rows, int64_t ca,
                        int64_t cb);
/* da, db (each NULL when not needed) get their slices of dout: added to, or
 * written whole where set_a / set_b (a buffer that holds nothing yet). */
void cpu_concat_backward(const float *dout, float *da, float *db, int64_t rows, int64_t ca,
                         int64_t cb, bool set_a, bool set_b);

/* Columns [start, start + count) of x [rows, c]: out [rows, count]. */
void cpu_slice_forward(float *out, const float *x, int64_t rows, int64_t c, int64_t start,
                       int64_t count);
void cpu_slice_backward(const float *dout, float *dx, int64_t rows, int64_t c, int64_t start,
                        int64_t count);

#endif
