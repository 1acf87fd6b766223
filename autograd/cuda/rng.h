/* CUDA Philox fills: the same numbers as rng.h on the host, element for element. */
#ifndef DC_CUDA_RNG_H
#define DC_CUDA_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* out[k] = dc_rand_uniform / dc_rand_normal element offset + k of (seed, stream):
 * what rng.h's dc_fill_uniform / dc_fill_normal write on the host. */
void cuda_fill_uniform(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset);
void cuda_fill_normal(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset);

#ifdef __cplusplus
}
#endif

#endif
