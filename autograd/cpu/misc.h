/* CPU kernels: dropout, embedding lookup, sinusoidal timestep embedding, MSE and
 * cross-entropy losses, moving a tensor down its arena.
 * Backward kernels add into the gradient buffers they are given (NULL = not needed). */
#ifndef DC_CPU_MISC_H
#define DC_CPU_MISC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* bytes from src to dst < src (the regions may overlap); on all threads when
 * they do not overlap (a kept block output, several MB, moved by one thread
 * while the others waited took 3% of a sampling step). */
void cpu_move_down(char *dst, const char *src, size_t bytes);

/* out = x * keep / (1 - p) over n elements, element i kept unless
 * dc_rand_uniform(seed, stream, i) < p. The backward recomputes that mask:
 * dx += dout * keep / (1 - p). */
void cpu_dropout_forward(float *out, const float *x, int64_t n, float p, uint64_t seed,
                         uint64_t stream);
void cpu_dropout_backward(const float *dout, float *dx, int64_t n, float p, uint64_t seed,
                          uint64_t stream);

/* The first position of idx [n] whose value is outside [0, v), or -1. */
int64_t cpu_embedding_check(const int32_t *idx, int64_t n, int64_t v);
/* out [n, c] = rows idx [n] of table [v, c]; dtable [v, c] += dout scattered back. */
void cpu_embedding_forward(float *out, const float *table, const int32_t *idx, int64_t n,
                           int64_t c);
void cpu_embedding_backward(const float *dout, float *dtable, const int32_t *idx, int64_t n,
                            int64_t c);

/* out [n, dim] = diffusers' get_timestep_embedding of t [n], given as f32 (tf)
 * or i32 (ti; the other NULL). Requires dim / 2 - shift != 0 when dim >= 2. */
void cpu_timestep_embedding_forward(float *out, const float *tf, const int32_t *ti, int64_t n,
                                    int64_t dim, bool flip_sin_to_cos, float shift,
                                    float max_period);

/* out [n, 2d] = [sin, cos] (flipped: [cos, sin]) of 2 pi log(t) w, t [n]
 * given as f32 (tf) or i32 (ti; the other NULL), w [d]; in double. */
void cpu_fourier_embedding_forward(float *out, const float *tf, const int32_t *ti, const float *w,
                                   int64_t n, int64_t d, bool flip_sin_to_cos);

/* pred, target [n, d], w [n] or NULL (ones): out[0] =
 * (1/n) sum_i w[i] (1/d) sum_j (pred - target)^2, accumulated in double. */
void cpu_mse_loss_forward(float *out, const float *pred, const float *target, const float *w,
                          int64_t n, int64_t d);
/* The gradients of g[0] * loss (g: the loss's one-element gradient): into
 * dpred, dtarget (minus dpred's) and dw, each may be NULL. */
void cpu_mse_loss_backward(const float *g, const float *pred, const float *target, const float *w,
                           float *dpred, float *dtarget, float *dw, int64_t n, int64_t d);

/* logits [n, k], labels [n] in [0, k) or equal to `ignore` (rows left out):
 * (1/kept) sum over the kept rows of lse(logits[i]) - (1 - e) logits[i, labels[i]]
 * - e mean_j logits[i, j], e the label smoothing, with the row maximum
 * subtracted before exp, accumulated in double. */
void cpu_cross_entropy_forward(float *out, const float *logits, const int32_t *labels, int64_t n, int64_t k,
                               int64_t ignore, float smoothing, int64_t kept);
/* dlogits[i] += g[0] / kept * (softmax(logits[i]) - (1 - e) onehot(labels[i]) - e / k), kept rows only. */
void cpu_cross_entropy_backward(const float *g, const float *logits, const int32_t *labels, float *dlogits,
                                int64_t n, int64_t k, int64_t ignore, float smoothing, int64_t kept);

#endif
