/* CPU kernels of the diffusion process: forward noising, the training loss,
 * timestep draws. Rows are samples: x0, noise, pred [n, d]; acp [n] holds
 * alphas_cumprod[t] of each sample (gathered by the op).
 * Backward kernels add into the gradient buffers they are given (NULL = not needed). */
#ifndef DC_CPU_DIFFUSION_H
#define DC_CPU_DIFFUSION_H

#include "../diffusion.h"

#include <stdint.h>

/* out = sqrt(acp) x0 + sqrt(1 - acp) noise, rounded in f32 step by step as PyTorch does. */
void cpu_q_sample_forward(float *out, const float *x0, const float *noise, const float *acp,
                          int64_t n, int64_t d);
/* dx0 += sqrt(acp) dout; dnoise += sqrt(1 - acp) dout. */
void cpu_q_sample_backward(const float *dout, float *dx0, float *dnoise, const float *acp,
                           int64_t n, int64_t d);

/* out[0] = (1/n) sum_i w_i mse_i in double, with mse_i = (1/d) sum_j (pred - target)^2
 * (unweighted, stored in mse[n], on the kernel's device) and the target and
 * weights of dc_diffusion_loss (snr_gamma 0: no min-SNR). */
void cpu_diffusion_loss_forward(float *out, double *mse, const float *pred, const float *x0,
                                const float *noise, const float *acp, int64_t n, int64_t d,
                                dc_prediction_type p, float snr_gamma);
/* The gradients of g[0] * loss (g: the loss's one-element gradient) into
 * dpred, dx0 and dnoise (each may be NULL). */
void cpu_diffusion_loss_backward(const float *g, const float *pred, const float *x0,
                                 const float *noise, const float *acp, int64_t n, int64_t d,
                                 dc_prediction_type p, float snr_gamma, float *dpred, float *dx0,
                                 float *dnoise);

/* t[k] = (w * T) >> 32 for the Philox word w of element offset + k of (seed, stream). */
void cpu_sample_timesteps(int32_t *t, int64_t n, int64_t T, uint64_t seed, uint64_t stream,
                          uint64_t offset);
/* out[k] = standard normal element offset + k of (seed, stream): rng.h's
 * dc_fill_normal, under the name that pairs it with cuda/rng.h's
 * cuda_fill_normal for dispatch. */
void cpu_fill_normal(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset);

#endif
