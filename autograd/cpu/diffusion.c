/* CPU kernels of the diffusion process (OpenMP): q_sample, the training loss, timestep draws.
 * Per-sample constants are recomputed per element: a few flops beside the
 * memory traffic, and every element stays independent (as on the GPU). */
#include "diffusion.h"

#include "../rng.h"
#include "diffusion_coefs.h"
#include "parallel.h"

#include <math.h>

void cpu_q_sample_forward(float *out, const float *x0, const float *noise, const float *acp,
                          int64_t n, int64_t d) {
#pragma omp parallel for collapse(2) if (n * d >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++) {
            int64_t k = i * d + j;
            out[k] = mix(sqrtf(acp[i]), x0[k], sqrtf(1.0f - acp[i]), noise[k]);
        }
}

void cpu_q_sample_backward(const float *dout, float *dx0, float *dnoise, const float *acp,
                           int64_t n, int64_t d) {
#pragma omp parallel for collapse(2) if (n * d >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++) {
            int64_t k = i * d + j;
            if (dx0)
                dx0[k] += sqrtf(acp[i]) * dout[k];
            if (dnoise)
                dnoise[k] += sqrtf(1.0f - acp[i]) * dout[k];
        }
}

void cpu_diffusion_loss_forward(float *out, double *mse, const float *pred, const float *x0,
                                const float *noise, const float *acp, int64_t n, int64_t d,
                                dc_prediction_type p, float snr_gamma) {
    double s = 0;
#pragma omp parallel for reduction(+ : s) if (n * d >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        loss_coefs c = coefs_of(acp[i], p, snr_gamma);
        double row = 0;
        for (int64_t j = 0; j < d; j++) {
            int64_t k = i * d + j;
            double e = (double)pred[k] - mix(c.cx, x0[k], c.cn, noise[k]);
            row += e * e;
        }
        mse[i] = row / (double)d;
        s += c.w * mse[i];
    }
    out[0] = (float)(s / (double)n);
}

void cpu_diffusion_loss_backward(const float *gp, const float *pred, const float *x0,
                                 const float *noise, const float *acp, int64_t n, int64_t d,
                                 dc_prediction_type p, float snr_gamma, float *dpred, float *dx0,
                                 float *dnoise) {
    double nd = (double)n * (double)d, g = gp[0];
#pragma omp parallel for collapse(2) if (n * d >= CPU_PAR_MIN)
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < d; j++)
            loss_grad_element(coefs_of(acp[i], p, snr_gamma), g, nd, pred, x0, noise, i * d + j,
                              dpred, dx0, dnoise);
}

void cpu_sample_timesteps(int32_t *t, int64_t n, int64_t T, uint64_t seed, uint64_t stream,
                          uint64_t offset) {
#pragma omp parallel for if (n >= CPU_PAR_MIN)
    for (int64_t k = 0; k < n; k++) {
        uint64_t i = offset + (uint64_t)k;
        uint32_t w = dc_rand_block(seed, stream, i / 4).w[i % 4];
        t[k] = (int32_t)(((uint64_t)w * (uint64_t)T) >> 32); /* < T: w < 2^32 */
    }
}

void cpu_fill_normal(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset) {
    dc_fill_normal(out, n, seed, stream, offset);
}
