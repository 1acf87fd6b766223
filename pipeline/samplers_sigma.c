/* The samplers that step in sigma: EulerDiscreteScheduler,
 * EulerAncestralDiscreteScheduler and LMSDiscreteScheduler, step for step as
 * diffusers computes them. The sample lives at noise level sigma (x = x0 +
 * sigma eps, so the model sees x / sqrt(sigma^2 + 1)); a step is one Euler
 * step of the probability flow ODE in sigma (Karras et al., "Elucidating the
 * Design Space of Diffusion-Based Generative Models"), the ancestral one
 * down to sigma_down plus fresh noise of deviation sigma_up, or LMS' linear
 * multistep over the last four derivatives. Settings beyond diffusers'
 * pipeline defaults (s_churn, exponential or beta sigmas) are refused where
 * the config is read. */
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
    bool karras = s->kind != DC_SAMPLER_EULER_A && s->opt.use_karras_sigmas;
    for (int i = 0; i < n; i++) {
        double sigma = karras ? dc_sampler_karras_sigma(last, first, n, i)
                              : interp_sigma(s, s->model_t[i]);
        if (karras)
            s->model_t[i] = (float)dc_sampler_sigma_to_t(s, sigma);
        s->sigmas[i] = (float)sigma;
        s->timesteps[i] = (int64_t)rintf(s->model_t[i]);
    }
    bool zero = s->kind != DC_SAMPLER_EULER || s->opt.final_sigmas_type == DC_FINAL_SIGMAS_ZERO;
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

/* get_lms_coefficient: the integral from sigma_t to sigma_{t+1} of the Lagrange
 * basis polynomial of node t - j over the nodes t, t - 1, ..., t - order + 1.
 * diffusers integrates it with scipy's quad; the polynomial (degree <= 3) is
 * integrated exactly by 4-point Gauss-Legendre, here in double. */
static double lms_coefficient(const float *sigmas, int order, int t, int j) {
    static const double node[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563,
                                   0.8611363115940526};
    static const double weight[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461,
                                     0.3478548451374538};
    double a = sigmas[t], b = sigmas[t + 1], sum = 0;
    for (int q = 0; q < 4; q++) {
        double tau = 0.5 * (a + b) + 0.5 * (b - a) * node[q], prod = 1;
        for (int k = 0; k < order; k++)
            if (k != j)
                prod *= (tau - sigmas[t - k]) / ((double)sigmas[t - j] - sigmas[t - k]);
        sum += weight[q] * prod;
    }
    return 0.5 * (b - a) * sum;
}

/* The derivative joins the last ones; the order is min(i + 1, 4) whatever the
 * history holds (an img2img run's first step uses one coefficient of order 4,
 * as diffusers' zip does). */
void dc_sampler_lms_step(dc_sampler *s, int i, const float *mo, float *x, int64_t numel) {
    float sigma = s->sigmas[i], coeff[4];
    float *d = dc_sampler_push_state(s);
    for (int64_t e = 0; e < numel; e++)
        d[e] = (x[e] - euler_x0(s->prediction_type, sigma, mo[e], x[e])) / sigma;
    int order = i + 1 < 4 ? i + 1 : 4, terms = order < s->n_ets ? order : s->n_ets;
    for (int j = 0; j < terms; j++)
        coeff[j] = (float)lms_coefficient(s->sigmas, order, i, j);
    for (int64_t e = 0; e < numel; e++) {
        float sum = coeff[0] * s->ets[0][e];
        for (int j = 1; j < terms; j++)
            sum = sum + coeff[j] * s->ets[j][e];
        x[e] = x[e] + sum;
    }
}
