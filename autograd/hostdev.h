/* DC_HOSTDEV marks the small inline functions that the CPU kernels and the
 * CUDA kernels share (rng.h, the diffusion loss coefficients, the AdamW
 * update), so that both devices compute them from one definition. */
#ifndef DC_HOSTDEV_H
#define DC_HOSTDEV_H

#ifdef __CUDACC__
#define DC_HOSTDEV __host__ __device__
#else
#define DC_HOSTDEV
#endif

#endif
