/* One row of softmax for the attention kernels (attention.c,
 * attention_few.c): the exponentials and the scale that makes them
 * probabilities, in one place so that both paths mask and round alike. */
#ifndef DC_CPU_SOFTMAX_ROW_H
#define DC_CPU_SOFTMAX_ROW_H

#include "vmath.h"

/* A row of scores to the exponentials of softmax, p = exp(s - max(s)), p
 * may be s; returns 1 / their sum, the scale that makes them probabilities
 * (it scales the row's output instead, d products instead of Lk, and the
 * kept P afterwards, so that a forward with a tape gives the same bits as
 * one without: gradient checkpointing recomputes one as the other). The
 * row max is subtracted so exp never overflows; masked keys (j >= keep) get
 * exactly 0, and a causal row always keeps key i + Lk - Lq (its own position
 * when the queries are the last Lq of the keys' sequence), so no row is
 * empty. */
static inline float exp_row(float *p, const float *s, int keep, int lk) {
    float max = s[0], sum = 0.0f;
#pragma omp simd reduction(max : max)
    for (int j = 1; j < keep; j++)
        max = s[j] > max ? s[j] : max;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < keep; j++) {
        p[j] = expf(s[j] - max);
        sum += p[j];
    }
    for (int j = keep; j < lk; j++)
        p[j] = 0.0f;
    return 1.0f / sum;
}

#endif
