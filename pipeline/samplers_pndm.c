/* PNDMScheduler (Liu et al., "Pseudo Numerical Methods for Diffusion Models
 * on Manifolds"), step for step as diffusers computes it: an optional
 * Runge-Kutta start (step_prk, four model evaluations per step for three
 * steps) and the linear multistep (step_plms) on the last four model
 * outputs. Without PRK, PLMS starts with a second order step that evaluates
 * the model twice at the second timestep. The state is diffusers' counter,
 * ets, cur_sample and cur_model_output, kept in dc_sampler. */
#include "samplers_internal.h"

#include <math.h>
#include <string.h>

/* set_timesteps' lists from the spaced timesteps d[0] > ... > d[n - 1]:
 *   PLMS alone: d0, d1, d1, d2, ..., d[n - 1]   (n + 1; one timestep for n = 1)
 *   PRK first:  d0, d1 + h, d1 + h, d1, d1, d2 + h, d2 + h, d2, d2, d3 + h, d3 + h, d3,
 *               then PLMS d3, ..., d[n - 1]     (n + 9), h = T // n // 2. */
int dc_sampler_pndm_timesteps(dc_sampler *s, const int64_t *spaced, int n) {
    int64_t d[4], h = s->T / s->opt.num_inference_steps / 2;
    for (int k = 0; k < 4 && k < n; k++)
        d[k] = spaced[k];
    if (s->opt.skip_prk_steps) {
        if (n < 2)
            return n;
        memmove(s->timesteps + 2, spaced + 1, (size_t)(n - 1) * sizeof(int64_t));
        s->timesteps[1] = d[1];
        return n + 1;
    }
    memmove(s->timesteps + 12, spaced + 3, (size_t)(n - 3) * sizeof(int64_t));
    int64_t *t = s->timesteps;
    t[0] = d[0];
    for (int k = 1; k < 4; k++) {
        int at = 4 * k - 3; /* d[k] + h twice, then d[k] twice (d3 once: PLMS' first) */
        t[at] = t[at + 1] = d[k] + h;
        t[at + 2] = d[k];
        if (k < 3)
            t[at + 3] = d[k];
    }
    return n + 9;
}

/* ets = ets[-3:] + [mo]. */
static void push_ets(dc_sampler *s, const float *mo, int64_t numel) {
    memcpy(dc_sampler_push_state(s), mo, (size_t)numel * sizeof(float));
}

/* _get_prev_sample: from `sample` at timestep t to prev (the final alpha below 0),
 * given the combined model output m, into out. m may alias out. */
static void prev_sample(const dc_sampler *s, const float *sample, int64_t t, int64_t prev,
                        const float *m, float *out, int64_t numel) {
    float a_t = s->alphas_cumprod[t];
    float a_prev = prev >= 0 ? s->alphas_cumprod[prev]
                   : s->opt.set_alpha_to_one ? 1.0f
                                             : s->alphas_cumprod[0];
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    float c_sample = sqrtf(a_prev / a_t), c_diff = a_prev - a_t;
    float denom = a_t * sqrtf(b_prev) + sqrtf(a_t * b_t * a_prev);
    bool v = s->prediction_type == DC_PRED_V_PREDICTION;
    for (int64_t e = 0; e < numel; e++) {
        float eps = v ? sa * m[e] + sb * sample[e] : m[e];
        out[e] = c_sample * sample[e] - c_diff * eps / denom;
    }
}

/* step_prk: counter c's model output joins RK4's weighted sum (1/6, 1/3, 1/3, 1/6);
 * every evaluation steps from the sample of the group's start (cur_sample) at the
 * group's timestep to half way (even c) or all the way (odd c). */
static void prk_step(dc_sampler *s, int i, const float *mo, float *x, int64_t numel) {
    int c = s->counter;
    int64_t h = s->T / s->opt.num_inference_steps / 2;
    int64_t prev = s->timesteps[i] - (c % 2 ? 0 : h), t = s->timesteps[c / 4 * 4];
    const float *m = mo;
    if (c % 4 == 0) {
        for (int64_t e = 0; e < numel; e++)
            s->cur_mo[e] = (float)(1.0 / 6) * mo[e];
        push_ets(s, mo, numel);
        memcpy(s->cur_sample, x, (size_t)numel * sizeof(float));
    } else if (c % 4 != 3) {
        for (int64_t e = 0; e < numel; e++)
            s->cur_mo[e] = s->cur_mo[e] + (float)(1.0 / 3) * mo[e];
    } else {
        for (int64_t e = 0; e < numel; e++)
            s->cur_mo[e] = s->cur_mo[e] + (float)(1.0 / 6) * mo[e];
        m = s->cur_mo;
    }
    prev_sample(s, s->cur_sample, t, prev, m, x, numel);
}

/* The linear multistep combination of the last model outputs (ets[0] the newest),
 * into out, by how many there are (Adams-Bashforth of order 1 to 4). */
static void plms_combine(const dc_sampler *s, float *out, int64_t numel) {
    float *const *e = s->ets;
    for (int64_t k = 0; k < numel; k++) {
        if (s->n_ets == 1)
            out[k] = e[0][k];
        else if (s->n_ets == 2)
            out[k] = (3.0f * e[0][k] - e[1][k]) / 2.0f;
        else if (s->n_ets == 3)
            out[k] = (23.0f * e[0][k] - 16.0f * e[1][k] + 5.0f * e[2][k]) / 12.0f;
        else
            out[k] = (float)(1.0 / 24) *
                     (55.0f * e[0][k] - 59.0f * e[1][k] + 37.0f * e[2][k] - 9.0f * e[3][k]);
    }
}

/* step_plms: T // n back from the timestep, except the second step (counter 1),
 * which redoes the first from its start sample with the mean of the two
 * evaluations (Heun's method), and does not join ets. */
static void plms_step(dc_sampler *s, int i, const float *mo, float *x, int64_t numel) {
    int64_t t = s->timesteps[i], k = s->T / s->opt.num_inference_steps, prev = t - k;
    if (s->counter == 1) {
        prev = t;
        t = t + k;
        for (int64_t e = 0; e < numel; e++)
            s->cur_mo[e] = (mo[e] + s->ets[0][e]) / 2.0f;
        prev_sample(s, s->cur_sample, t, prev, s->cur_mo, x, numel);
        return;
    }
    push_ets(s, mo, numel);
    if (s->counter == 0)
        memcpy(s->cur_sample, x, (size_t)numel * sizeof(float));
    plms_combine(s, s->cur_mo, numel);
    prev_sample(s, x, t, prev, s->cur_mo, x, numel);
}

void dc_sampler_pndm_step(dc_sampler *s, int i, const float *mo, float *x, int64_t numel) {
    if (!s->opt.skip_prk_steps && s->counter < 12)
        prk_step(s, i, mo, x, numel);
    else
        plms_step(s, i, mo, x, numel);
    s->counter++;
}
