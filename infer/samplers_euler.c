/* EulerDiscreteScheduler and EulerAncestralDiscreteScheduler, step for step
 * as diffusers computes them: the sample lives at noise level sigma (x =
 * x0 + sigma eps, so the model sees x / sqrt(sigma^2 + 1)), and a step is
 * one Euler step of the probability flow ODE in sigma (Karras et al.,
 * "Elucidating the Design Space of Diffusion-Based Generative Models");
 * the ancestral one steps down to sigma_down and adds fresh noise of
 * deviation sigma_up. Settings beyond diffusers' pipeline defaults (s_churn,
 * exponential or beta sigmas) are refused where the config is read. */
#include "samplers_internal.h"

#include <math.h>

/* np.interp(t, arange(T), sigmas) in float64 on the float32 training sigmas. */
static double interp_sigma(const dc_sampler *s, double t) {
    int64_t j = (int64_t)floor(t);
    if (j >= s->T - 1)
        return dc_sampler_sigma_at(s, s->T - 1);
    double lo = dc_sampler_sigma_at(s, j);
    if ((double)j == t)
        return lo;
    double slope = (double)dc_sampler_sigma_at(s, j + 1) - lo;
    return slope * (t - (double)j) + lo;
}

/* set_timesteps: float32 timesteps (linspace's unrounded), their interpolated
 * sigmas or Karras' between the first and last of them (the timesteps then from
 * _sigma_to_t, unrounded), then the final sigma. The integer timesteps become the
 * model's rounded. */
void dc_sampler_euler_sigmas(dc_sampler *s) {
    int n = s->n;
    bool linspace = s->opt.timestep_spacing == DC_SPACING_LINSPACE;
    for (int i = 0; i < n; i++)
        s->model_t[i] = linspace ? (float)dc_sampler_np_linspace((double)(s->T - 1), n, n - 1 - i)
                                 : (float)s->timesteps[i];
    double first = interp_sigma(s, s->model_t[0]), last = interp_sigma(s, s->model_t[n - 1]);
    bool karras = s->kind == DC_SAMPLER_EULER && s->opt.use_karras_sigmas;
    for (int i = 0; i < n; i++) {
        double sigma = karras ? dc_sampler_karras_sigma(last, first, n, i)
                              : interp_sigma(s, s->model_t[i]);
        if (karras)
            s->model_t[i] = (float)dc_sampler_sigma_to_t(s, sigma);
        s->sigmas[i] = (float)sigma;
        s->timesteps[i] = (int64_t)rintf(s->model_t[i]);
    }
    bool zero = s->kind == DC_SAMPLER_EULER_A || s->opt.final_sigmas_type == DC_FINAL_SIGMAS_ZERO;
    s->sigmas[n] = zero ? 0.0f : dc_sampler_sigma_at(s, 0);
    float max = 0.0f;
    for (int i = 0; i <= n; i++)
        max = s->sigmas[i] > max ? s->sigmas[i] : max;
    s->init_noise_sigma =
        s->opt.timestep_spacing == DC_SPACING_LEADING ? sqrtf(max * max + 1.0f) : max;
}

/* The predicted x0 at sigma (c_out and c_skip of Karras et al. for v). */
static float euler_x0(dc_prediction_type p, float sigma, float mo, float x) {
    if (p == DC_PRED_EPSILON)
        return x - sigma * mo;
    if (p == DC_PRED_SAMPLE)
        return mo;
    float c_out = -sigma / sqrtf(sigma * sigma + 1.0f), c_in2 = sigma * sigma + 1.0f;
    return mo * c_out + x / c_in2;
}

void dc_sampler_euler_step(const dc_sampler *s, int i, const float *mo, float *x,
                           const float *noise, int64_t numel) {
    float sigma = s->sigmas[i], to = s->sigmas[i + 1], dt = to - sigma, up = 0.0f;
    bool ancestral = s->kind == DC_SAMPLER_EULER_A;
    if (ancestral) { /* sigma_up, sigma_down */
        up = sqrtf(to * to * (sigma * sigma - to * to) / (sigma * sigma));
        dt = sqrtf(to * to - up * up) - sigma;
    }
    for (int64_t e = 0; e < numel; e++) {
        float derivative = (x[e] - euler_x0(s->prediction_type, sigma, mo[e], x[e])) / sigma;
        float y = x[e] + derivative * dt;
        x[e] = ancestral ? y + noise[e] * up : y;
    }
}
