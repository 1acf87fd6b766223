/* CUDA kernels of the diffusion process (see diffusion.h): q_sample, the
 * training loss (per-sample coefficients from cpu/diffusion_coefs.h, the
 * CPU's own definitions) and timestep draws. */
#include "common.cuh"
#include "diffusion.h"

#include "../cpu/diffusion_coefs.h"
#include "../rng.h"

__global__ static void q_sample_fwd(float *out, const float *x0, const float *noise,
                                    const float *acp, int64_t n, int64_t d) {
    FOR_N(k, n * d) {
        float a = acp[k / d];
        out[k] = mix(sqrtf(a), x0[k], sqrtf(1.0f - a), noise[k]);
    }
}

__global__ static void q_sample_bwd(const float *dout, float *dx0, float *dnoise,
                                    const float *acp, int64_t n, int64_t d) {
    FOR_N(k, n * d) {
        float a = acp[k / d];
        if (dx0)
            dx0[k] += sqrtf(a) * dout[k];
        if (dnoise)
            dnoise[k] += sqrtf(1.0f - a) * dout[k];
    }
}

extern "C" void cuda_q_sample_forward(float *out, const float *x0, const float *noise,
                                      const float *acp, int64_t n, int64_t d) {
    LAUNCH(q_sample_fwd, grid_for(n * d), BLOCK, 0, out, x0, noise, acp, n, d);
}

extern "C" void cuda_q_sample_backward(const float *dout, float *dx0, float *dnoise,
                                       const float *acp, int64_t n, int64_t d) {
    LAUNCH(q_sample_bwd, grid_for(n * d), BLOCK, 0, dout, dx0, dnoise, acp, n, d);
}

/* mse[i] = the mean squared error of sample i against its target: one block per sample. */
__global__ static void loss_rows(double *mse, const float *pred, const float *x0,
                                 const float *noise, const float *acp, int64_t n, int64_t d,
                                 dc_prediction_type p, float snr_gamma) {
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        loss_coefs c = coefs_of(acp[i], p, snr_gamma);
        double row = 0;
        for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
            int64_t k = i * d + j;
            double e = (double)pred[k] - mix(c.cx, x0[k], c.cn, noise[k]);
            row += e * e;
        }
        row = block_sum(row);
        if (threadIdx.x == 0)
            mse[i] = row / (double)d;
    }
}

/* out[0] = (1/n) sum_i w_i mse_i: one block. */
__global__ static void loss_total(float *out, const double *mse, const float *acp, int64_t n,
                                  dc_prediction_type p, float snr_gamma) {
    double s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        s += coefs_of(acp[i], p, snr_gamma).w * mse[i];
    s = block_sum(s);
    if (threadIdx.x == 0)
        out[0] = (float)(s / (double)n);
}

extern "C" void cuda_diffusion_loss_forward(float *out, double *mse, const float *pred,
                                            const float *x0, const float *noise, const float *acp,
                                            int64_t n, int64_t d, dc_prediction_type p,
                                            float snr_gamma) {
    LAUNCH(loss_rows, grid_rows(n), BLOCK, 0, mse, pred, x0, noise, acp, n, d, p, snr_gamma);
    LAUNCH(loss_total, 1, BLOCK, 0, out, mse, acp, n, p, snr_gamma);
}

__global__ static void loss_bwd(const float *gp, const float *pred, const float *x0,
                                const float *noise, const float *acp, int64_t n, int64_t d,
                                dc_prediction_type p, float snr_gamma, float *dpred, float *dx0,
                                float *dnoise) {
    double nd = (double)n * (double)d, g = gp[0];
    FOR_N(k, n * d)
    loss_grad_element(coefs_of(acp[k / d], p, snr_gamma), g, nd, pred, x0, noise, k, dpred, dx0,
                      dnoise);
}

extern "C" void cuda_diffusion_loss_backward(const float *g, const float *pred, const float *x0,
                                             const float *noise, const float *acp, int64_t n,
                                             int64_t d, dc_prediction_type p, float snr_gamma,
                                             float *dpred, float *dx0, float *dnoise) {
    LAUNCH(loss_bwd, grid_for(n * d), BLOCK, 0, g, pred, x0, noise, acp, n, d, p, snr_gamma,
           dpred, dx0, dnoise);
}

__global__ static void timesteps(int32_t *t, int64_t n, int64_t T, uint64_t seed, uint64_t stream,
                                 uint64_t offset) {
    FOR_N(k, n) {
        uint64_t i = offset + (uint64_t)k;
        uint32_t w = dc_rand_block(seed, stream, i / 4).w[i % 4];
        t[k] = (int32_t)(((uint64_t)w * (uint64_t)T) >> 32);
    }
}

extern "C" void cuda_sample_timesteps(int32_t *t, int64_t n, int64_t T, uint64_t seed,
                                      uint64_t stream, uint64_t offset) {
    LAUNCH(timesteps, grid_for(n), BLOCK, 0, t, n, T, seed, stream, offset);
}
