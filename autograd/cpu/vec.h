/* The vector width of the ISA a kernel file is built for, VB floats (the
 * files built once per ISA: isa.h), GCC's vector type over it with
 * unaligned loads and stores, and the lanes' maximum and sum. */
#ifndef DC_CPU_VEC_H
#define DC_CPU_VEC_H

#if defined(__AVX512F__)
#define VB 16
#elif defined(__AVX2__)
#define VB 8
#else
#define VB 4
#endif

#include <immintrin.h>
#include <stdint.h>

typedef float vf __attribute__((vector_size(VB * sizeof(float)), aligned(sizeof(float))));

static inline vf load(const float *p) { return *(const vf *)p; }
static inline void store(float *p, vf v) { *(vf *)p = v; }

/* x rounded up to a multiple of m (a length to whole vectors or blocks). */
static inline int64_t round_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

static inline vf vmax(vf a, vf b) {
#if VB == 16
    return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif VB == 8
    return (vf)_mm256_max_ps((__m256)a, (__m256)b);
#else
    return (vf)_mm_max_ps((__m128)a, (__m128)b);
#endif
}

/* The largest lane, halving the vector each step (one lane at a time made a
 * dependency chain of VB operations for each row). */
static inline float lanes_max(vf v) {
#if VB == 16
    return _mm512_reduce_max_ps((__m512)v);
#else
#if VB == 8
    __m128 m = _mm_max_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
#else
    __m128 m = (__m128)v;
#endif
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
#endif
}

/* The sum of the lanes as a tree of halves: log2(VB) vector adds, not VB - 1
 * dependent scalar ones (they were most of a long row's time in the few-rows
 * linear kernel). The order of the adds is fixed per VB: a sum is the same
 * bits in any call. */
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
