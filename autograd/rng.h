/*
 * Random numbers: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3", SC11; the generator of Random123 and cuRAND),
 * header-only so that the CPU and CUDA code draw from the same functions.
 *
 * Philox is counter based: a block of four 32-bit words is a pure function of
 * a 128-bit counter and a 64-bit key, so any element can be drawn on its own,
 * in any order, on any device.
 *
 * The mapping below is a contract: the same (seed, stream, i) gives the same
 * number on the CPU and on every GPU, and a resumed run draws what the
 * uninterrupted run would have drawn. Changing it changes every noise tensor
 * and dropout mask of every run.
 *
 *   key     = {seed lo32, seed hi32}
 *   counter = {block lo32, block hi32, stream lo32, stream hi32}
 *   block b of (seed, stream) = dc_philox4x32_10(counter, key) = words w0..w3
 *
 *   element i uses block i / 4.
 *   uniform(i) = (w[i % 4] >> 8) * 2^-24                    in [0, 1), 24 bits
 *   normal(i):  Box-Muller on a pair of words of block i / 4; words (w0, w1)
 *               give elements 4b, 4b+1 and words (w2, w3) give 4b+2, 4b+3:
 *                 u1 = ((wa >> 8) + 1) * 2^-24              in (0, 1]
 *                 u2 = (wb >> 8) * 2^-24                    in [0, 1)
 *                 r  = sqrtf(-2 logf(u1)),  a = 2 pi u2 (as the f32 2pi times u2)
 *                 the even element is r cosf(a), the odd one r sinf(a).
 *
 * Uniforms are bit-identical everywhere (integer work and exact scaling).
 * Normals use logf, sqrtf, sinf and cosf, all in f32 with no other rounding
 * step, so CPU and GPU agree to the last-place differences of their libm.
 *
 * The header uses only 32/64-bit integer arithmetic and the float functions
 * CUDA also has. Bulk fills for the host (OpenMP) are at the end.
 */
#ifndef DC_RNG_H
#define DC_RNG_H

#include "hostdev.h"

#include <math.h>
#include <stdint.h>

/* Four 32-bit words: one Philox counter or output block. */
typedef struct {
    uint32_t w[4];
} dc_u32x4;

#define DC_PHILOX_M0 0xD2511F53u /* round multipliers */
#define DC_PHILOX_M1 0xCD9E8D57u
#define DC_PHILOX_W0 0x9E3779B9u /* key schedule increments (golden ratio, sqrt(3) - 1) */
#define DC_PHILOX_W1 0xBB67AE85u

DC_HOSTDEV static inline dc_u32x4 dc_philox_round(dc_u32x4 c, uint32_t k0, uint32_t k1) {
    uint64_t p0 = (uint64_t)DC_PHILOX_M0 * c.w[0];
    uint64_t p1 = (uint64_t)DC_PHILOX_M1 * c.w[2];
    dc_u32x4 r = {{(uint32_t)(p1 >> 32) ^ c.w[1] ^ k0, (uint32_t)p1,
                   (uint32_t)(p0 >> 32) ^ c.w[3] ^ k1, (uint32_t)p0}};
    return r;
}

/* The raw generator: ten rounds over `counter` with `key`, the key bumped
 * between rounds. Matches Random123's philox4x32_10 known-answer vectors. */
DC_HOSTDEV static inline dc_u32x4 dc_philox4x32_10(const uint32_t counter[4],
                                                   const uint32_t key[2]) {
    dc_u32x4 c = {{counter[0], counter[1], counter[2], counter[3]}};
    uint32_t k0 = key[0], k1 = key[1];
    c = dc_philox_round(c, k0, k1);
    for (int r = 1; r < 10; r++) {
        k0 += DC_PHILOX_W0;
        k1 += DC_PHILOX_W1;
        c = dc_philox_round(c, k0, k1);
    }
    return c;
}

/* Block `block` of the stream (seed, stream): the four words behind
 * elements 4 block .. 4 block + 3. */
DC_HOSTDEV static inline dc_u32x4 dc_rand_block(uint64_t seed, uint64_t stream, uint64_t block) {
    const uint32_t counter[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                                 (uint32_t)(stream >> 32)};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    return dc_philox4x32_10(counter, key);
}

/* A word as a float in [0, 1): its 24 high bits, so every value is exact. */
DC_HOSTDEV static inline float dc_u32_to_uniform(uint32_t w) {
    return (float)(w >> 8) * 0x1.0p-24f;
}

/* Two standard normals from two words (Box-Muller; u1 > 0 keeps logf finite). */
DC_HOSTDEV static inline void dc_box_muller(uint32_t wa, uint32_t wb, float *z_even, float *z_odd) {
    float u1 = (float)((wa >> 8) + 1u) * 0x1.0p-24f;
    float u2 = dc_u32_to_uniform(wb);
    float r = sqrtf(-2.0f * logf(u1));
    float a = 6.28318530717958647692f * u2;
    *z_even = r * cosf(a);
    *z_odd = r * sinf(a);
}

/* Element i of the uniform stream (seed, stream). */
DC_HOSTDEV static inline float dc_rand_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
    return dc_u32_to_uniform(dc_rand_block(seed, stream, i / 4).w[i % 4]);
}

/* Element i of the standard normal stream (seed, stream). */
DC_HOSTDEV static inline float dc_rand_normal(uint64_t seed, uint64_t stream, uint64_t i) {
    dc_u32x4 b = dc_rand_block(seed, stream, i / 4);
    unsigned pair = (unsigned)(i % 4) / 2;
    float z[2];
    dc_box_muller(b.w[2 * pair], b.w[2 * pair + 1], &z[0], &z[1]);
    return z[i % 2];
}

#ifndef __CUDACC__
/* out[k] = uniform / normal element offset + k of (seed, stream), k < n.
 * Element-wise identical to dc_rand_uniform / dc_rand_normal, so what out[k]
 * holds depends neither on n nor on where a fill is split. */
static inline void dc_fill_uniform(float *out, int64_t n, uint64_t seed, uint64_t stream,
                                   uint64_t offset) {
    if (n <= 0)
        return;
    uint64_t first = offset / 4, last = (offset + (uint64_t)n - 1) / 4;
#pragma omp parallel for
    for (uint64_t b = first; b <= last; b++) {
        dc_u32x4 r = dc_rand_block(seed, stream, b);
        for (uint64_t j = 0; j < 4; j++) {
            uint64_t i = 4 * b + j;
            if (i >= offset && i - offset < (uint64_t)n)
                out[i - offset] = dc_u32_to_uniform(r.w[j]);
        }
    }
}

static inline void dc_fill_normal(float *out, int64_t n, uint64_t seed, uint64_t stream,
                                  uint64_t offset) {
    if (n <= 0)
        return;
    uint64_t first = offset / 4, last = (offset + (uint64_t)n - 1) / 4;
#pragma omp parallel for
    for (uint64_t b = first; b <= last; b++) {
        dc_u32x4 r = dc_rand_block(seed, stream, b);
        float z[4];
        dc_box_muller(r.w[0], r.w[1], &z[0], &z[1]);
        dc_box_muller(r.w[2], r.w[3], &z[2], &z[3]);
        for (uint64_t j = 0; j < 4; j++) {
            uint64_t i = 4 * b + j;
            if (i >= offset && i - offset < (uint64_t)n)
                out[i - offset] = z[j];
        }
    }
}
#endif

#endif
