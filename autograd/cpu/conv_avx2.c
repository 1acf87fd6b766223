/* The direct convolution (conv_direct_tmpl.h) for AVX2 + FMA: 8-float
 * vectors, tiles of 6 pixels x 2 vectors (12 accumulators, 2 weight vectors
 * and a broadcast in the 16 registers). Masks are integer vectors, as
 * AVX2's masked loads and stores take them. F16C widens f16 weights (every
 * AVX2 CPU has it; isa.c asks for it). */
#include "conv_direct.h"

#if defined(__x86_64__)

#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline)) TARGET
#define KERNELS cpu_direct_avx2

enum { LANES = 8 };
#define VJ 2
#define FP 6
#define FR 6

typedef __m256 vec;
typedef __m256i vmask;

INLINE vec v_zero(void) { return _mm256_setzero_ps(); }
INLINE vec v_set1(float x) { return _mm256_set1_ps(x); }
INLINE vec v_load(const float *p) { return _mm256_loadu_ps(p); }
INLINE vec v_load_mask(vmask m, const float *p) { return _mm256_maskload_ps(p, m); }
INLINE void v_store(float *p, vec v) { _mm256_storeu_ps(p, v); }
INLINE void v_store_mask(float *p, vmask m, vec v) { _mm256_maskstore_ps(p, m, v); }
INLINE vec v_load_half(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}
INLINE vec v_fma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
INLINE vec v_add(vec a, vec b) { return _mm256_add_ps(a, b); }
INLINE vec v_sub(vec a, vec b) { return _mm256_sub_ps(a, b); }
INLINE vmask v_lanes(int64_t n) {
    int k = n >= LANES ? LANES : n <= 0 ? 0 : (int)n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

#include "conv_direct_tmpl.h"

#endif
