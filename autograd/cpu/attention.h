/* CPU kernels for multi-head scaled-dot-product attention (OpenMP + OpenBLAS).
 *
 * q [N, Lq, C], k and v [N, Lk, C] with C = heads * d; head h reads channels
 * [h*d, (h+1)*d) of every token, so the kernels multiply the head slices in
 * place (leading dimension C) and never copy them out. The probabilities
 * P = softmax(q k^T * scale + mask) of every (n, head) are materialised.
 * Backward kernels add into the gradient buffers they are given (NULL = not
 * needed); those buffers may be the same one (q, k and v one tensor). */
#ifndef DC_CPU_ATTENTION_H
#define DC_CPU_ATTENTION_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    int64_t n;                   /* batch */
    int lq, lk, heads, d;        /* int, as BLAS takes them; heads * d fits too */
    bool causal;                 /* key j > query i + lk - lq masked; needs lk >= lq */
    float scale;                 /* applied to q k^T; already resolved (never 0) */
} cpu_attention_dims;

/* Floats of scratch the kernels need when P is not kept (forward without a
 * tape: rows of P per thread) or for dP in backward (one [Lq, Lk] matrix per
 * head run at once). Ask right before the kernel call: it depends on the
 * OpenMP thread count. */
int64_t cpu_attention_scratch(const cpu_attention_dims *a);

/* out [N, Lq, C] = P v per (n, head); a sample's result does not depend on
 * the others in the batch. When keep_p, p is [N, heads, Lq, Lk] and
 * holds P afterwards (backward reads it); otherwise p is
 * cpu_attention_scratch() floats of scratch. */
void cpu_attention_forward(const cpu_attention_dims *a, float *out, float *p, const float *q,
                           const float *k, const float *v, bool keep_p);

/* dq, dk, dv (each NULL when not needed) += the gradients of q, k, v given
 * dout [N, Lq, C] and the P [N, heads, Lq, Lk] forward kept.
 * work: cpu_attention_scratch() floats, needed when dq or dk is. */
void cpu_attention_backward(const cpu_attention_dims *a, const float *dout, const float *p,
                            const float *q, const float *k, const float *v, float *dq,
                            float *dk, float *dv, float *work);

#endif
