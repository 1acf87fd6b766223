/*
 * What the sampler families share inside infer/ (samplers.c builds the
 * timesteps and the training sigmas; samplers_pndm.c and samplers_sigma.c
 * build their own lists from them and step). Not a public interface: the
 * public one is samplers.h.
 */
#ifndef DC_PIPELINE_SAMPLERS_INTERNAL_H
#define DC_PIPELINE_SAMPLERS_INTERNAL_H

#include "samplers.h"

/* Element k of np.linspace(0, stop, num) (float64). */
double dc_sampler_np_linspace(double stop, int64_t num, int64_t k);
/* The spacing's num_inference_steps timesteps, descending, into out; returns
 * how many (fewer only for dpm++2m's lambda_min_clipped). */
int dc_sampler_spaced_timesteps(const dc_sampler *s, int64_t *out);
/* sqrt((1 - acp) / acp) at training timestep t, float32 as torch computes it. */
float dc_sampler_sigma_at(const dc_sampler *s, int64_t t);
/* _sigma_to_t: the fractional training timestep of sigma (log-sigma interpolation). */
double dc_sampler_sigma_to_t(const dc_sampler *s, double sigma);
/* _convert_to_karras: sigma i of n from sigma_max down to sigma_min (rho 7, float64). */
double dc_sampler_karras_sigma(double sigma_min, double sigma_max, int n, int i);

/* The last four model outputs (PNDM) or derivatives (LMS), newest first: the
 * oldest buffer becomes ets[0], to be filled; n_ets counts up to 4. */
float *dc_sampler_push_state(dc_sampler *s);

/* PNDM: its timestep list (PRK's then PLMS', from the spaced ones) into
 * s->timesteps; returns how many. */
int dc_sampler_pndm_timesteps(dc_sampler *s, const int64_t *spaced, int n);
/* PNDMScheduler.step: step_prk for the first 12 steps without skip_prk_steps, else
 * step_plms. Needs the state buffers of dc_sampler (numel each). */
void dc_sampler_pndm_step(dc_sampler *s, int i, const float *mo, float *x, int64_t numel);

/* Euler's and LMS' model_t and sigmas for the spaced s->timesteps (Karras' when asked, which
 * replace the timesteps), and init_noise_sigma. */
void dc_sampler_euler_sigmas(dc_sampler *s);
/* EulerDiscreteScheduler.step (no churn) and EulerAncestralDiscreteScheduler.step. */
void dc_sampler_euler_step(const dc_sampler *s, int i, const float *mo, float *x,
                           const float *noise, int64_t numel);
/* LMSDiscreteScheduler.step (order 4). */
void dc_sampler_lms_step(dc_sampler *s, int i, const float *mo, float *x, int64_t numel);

#endif
