/* One row of softmax for the attention kernels (attention.c,
 * attention_few.c): the exponentials and the scale that makes them
 * probabilities, in one place so that both paths mask and round alike. */
#ifndef DC_CPU_SOFTMAX_ROW_H
#define DC_CPU_SOFTMAX_ROW_H

#include "vec.h"
#include "vmath.h"

/* A row of scores to the exponentials of softmax, p = exp(s - max(s)), p
 * may be s; returns 1 / their sum, the scale that makes them probabilities
 * (it scales the row's output instead, d products instead of Lk, and the
 * kept P afterwards, so that a forward with a tape gives the same bits as
 * one without: gradient checkpointing recomputes one as the other). The row
 * max is subtracted so exp never overflows; masked keys (j >= keep) get
 * exactly 0, and a causal row always keeps key i + Lk - Lq (its own position
 * when the queries are the last Lq of the keys' sequence), so no row is
 * empty. Max and sum in explicit vectors and the exponentials in a loop of
 * their own: a `simd reduction` around the libmvec call kept its
 * accumulators on the stack (every call clobbers the vector registers), and
 * the max's lanes were combined one scalar load at a time, half the time of
 * a forward item at d = 16. */
static inline float exp_row(float *p, const float *s, int keep, int lk) {
    int j = 0;
    float max = s[0];
    if (keep >= VB) { /* two chains of maxima, a max's latency apart */
        vf m0 = load(s), m1 = m0;
        for (j = VB; j + 2 * VB <= keep; j += 2 * VB)
            m0 = vmax(m0, load(s + j)), m1 = vmax(m1, load(s + j + VB));
        max = lanes_max(vmax(m0, m1));
    }
    for (; j < keep; j++)
        max = s[j] > max ? s[j] : max;
#pragma omp simd
    for (j = 0; j < keep; j++)
        p[j] = expf(s[j] - max);
    vf acc = {0};
    for (j = 0; j + VB <= keep; j += VB)
        acc += load(p + j);
    float sum = lanes_sum(acc);
    for (; j < keep; j++)
        sum += p[j];
    for (j = keep; j < lk; j++)
        p[j] = 0.0f;
    return 1.0f / sum;
}

#endif
