/* The direct convolution (conv_direct_tmpl.h) for AVX-512: 16-float vectors,
 * tiles of 6 pixels x 4 vectors (24 accumulators of the 32 registers). */
#include "conv_direct.h"

#if defined(__x86_64__)

#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,fma")))
#define INLINE static inline __attribute__((always_inline)) TARGET
#define KERNELS cpu_direct_avx512

enum { LANES = 16 };
#define VJ 4
#define FP 6
#define FR 6

typedef __m512 vec;
typedef __mmask16 vmask;

INLINE vec v_zero(void) { return _mm512_setzero_ps(); }
INLINE vec v_set1(float x) { return _mm512_set1_ps(x); }
INLINE vec v_load(const float *p) { return _mm512_loadu_ps(p); }
INLINE vec v_load_mask(vmask m, const float *p) { return _mm512_maskz_loadu_ps(m, p); }
INLINE void v_store(float *p, vec v) { _mm512_storeu_ps(p, v); }
INLINE void v_store_mask(float *p, vmask m, vec v) { _mm512_mask_storeu_ps(p, m, v); }
INLINE vec v_load_half(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)p));
}
INLINE vec v_fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
INLINE vec v_add(vec a, vec b) { return _mm512_add_ps(a, b); }
INLINE vec v_sub(vec a, vec b) { return _mm512_sub_ps(a, b); }
INLINE vmask v_lanes(int64_t n) {
    return n >= LANES ? (vmask)0xffff : n <= 0 ? (vmask)0 : (vmask)((1u << n) - 1);
}

#include "conv_direct_tmpl.h"

#endif
