/* CPU kernels for group normalisation, which also serves layer normalisation:
 * a layer norm of rows of C channels is a group norm of [rows, 1, C] with one
 * group. With `silu` the kernels compute silu(group_norm(x)) in one pass.
 * Backward kernels add into the gradient buffers they are given (NULL = not
 * needed). */
#ifndef DC_CPU_NORM_H
#define DC_CPU_NORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* x, y [N, S, C]: N samples, S spatial positions, C channels in G groups of
 * C/G. w, b [C] or NULL (identity). stats [N, G, 2]: mean and
 * 1/sqrt(var + eps) of each (sample, group), written for the backward pass. */
void cpu_group_norm_forward(float *y, float *stats, const float *x, const float *w,
                            const float *b, int64_t N, int64_t S, int64_t C, int64_t G, float eps,
                            bool silu);
/* dy, x [N, S, C]; w, b [C] or NULL; stats as written by the forward.
 * dx [N, S, C], dw [C], db [C]: each NULL when not needed. work: scratch of
 * cpu_group_norm_work_bytes(), 8-byte aligned. */
void cpu_group_norm_backward(const float *dy, const float *x, const float *w, const float *b,
                             const float *stats, float *dx, float *dw, float *db, void *work,
                             int64_t N, int64_t S, int64_t C, int64_t G, bool silu);
size_t cpu_group_norm_work_bytes(int64_t N, int64_t S, int64_t C, bool silu);

#endif
