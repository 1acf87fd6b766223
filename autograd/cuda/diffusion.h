/* CUDA kernels of the diffusion process: q_sample, the training loss, timestep draws; the
 * contracts of cpu/diffusion.h, device pointers. */
#ifndef DC_CUDA_DIFFUSION_H
#define DC_CUDA_DIFFUSION_H

#include "../cpu/diffusion.h"

#ifdef __cplusplus
extern "C" {
#endif

void cuda_q_sample_forward(float *out, const float *x0, const float *noise, const float *acp,
                           int64_t n, int64_t d);
void cuda_q_sample_backward(const float *dout, float *dx0, float *dnoise, const float *acp,
                            int64_t n, int64_t d);
void cuda_diffusion_loss_forward(float *out, double *mse, const float *pred, const float *x0,
                                 const float *noise, const float *acp, int64_t n, int64_t d,
                                 dc_prediction_type p, float snr_gamma);
void cuda_diffusion_loss_backward(const float *g, const float *pred, const float *x0,
                                  const float *noise, const float *acp, int64_t n, int64_t d,
                                  dc_prediction_type p, float snr_gamma, float *dpred, float *dx0,
                                  float *dnoise);
void cuda_sample_timesteps(int32_t *t, int64_t n, int64_t T, uint64_t seed, uint64_t stream,
                           uint64_t offset);

#ifdef __cplusplus
}
#endif

#endif
