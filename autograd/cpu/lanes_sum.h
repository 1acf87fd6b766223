/* The sum of a vector's lanes as a tree of halves: log2(VB) vector adds, not
 * VB - 1 dependent scalar ones (they were most of a long row's time in the
 * few-rows linear kernel). For the kernels built once per ISA: include it
 * after defining VB (4, 8 or 16 floats) and the vector type vf of VB floats.
 * The order of the adds is fixed per VB: a sum is the same bits in any
 * call. */
#ifndef DC_CPU_LANES_SUM_H
#define DC_CPU_LANES_SUM_H

static inline float lanes_sum(vf v) {
#if VB == 16
    typedef float vh __attribute__((vector_size(8 * sizeof(float))));
    vh h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#elif VB == 8
    vf h = v;
#endif
#if VB >= 8
    typedef float vq __attribute__((vector_size(4 * sizeof(float))));
    vq q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
#else
    vf q = v;
#endif
    return (q[0] + q[2]) + (q[1] + q[3]);
}

#endif
