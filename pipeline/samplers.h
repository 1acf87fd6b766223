/*
 * Samplers: the reverse diffusion steps of diffusers' DDPMScheduler,
 * DDIMScheduler, DPMSolverMultistepScheduler (solver_order 2, algorithm_type
 * dpmsolver++, solver_type midpoint: "DPM++ 2M", Karras sigmas optional),
 * and the schedulers Stable Diffusion pipelines ship: PNDMScheduler (PLMS,
 * with or without its Runge-Kutta warm-up), EulerDiscreteScheduler,
 * EulerAncestralDiscreteScheduler and LMSDiscreteScheduler; step for step,
 * on host float arrays. They know nothing of the model: the caller runs the
 * model at model_t[i] on the scaled input and hands its output to
 * dc_sampler_step, as diffusers' StableDiffusionPipeline does:
 *
 *   dc_sampler s;
 *   dc_sampler_init_from_config(&s, json_of_scheduler_config, path, NULL, 50);
 *   dc_sampler_noise(x, n_images, per_image, seed, first_image, DC_SAMPLER_DRAW_INIT);
 *   x *= s.init_noise_sigma (every element)
 *   for (int i = 0; i < s.n; i++) {
 *       dc_sampler_scale_model_input(&s, i, x, in, numel);
 *       run the model on in at timestep s.model_t[i] -> eps
 *       if (dc_sampler_step_needs_noise(&s, i))
 *           dc_sampler_noise(z, n_images, per_image, seed, first_image, DC_SAMPLER_DRAW_STEP(i));
 *       dc_sampler_step(&s, i, eps, NULL, x, z, n_images, per_image);
 *   }
 *
 * s.n is the number of model evaluations: num_inference_steps, except PNDM's
 * n + 1 (PLMS evaluates its second timestep twice) or n + 9 (PRK: 12
 * Runge-Kutta evaluations for the first 3 steps).
 *
 * Timesteps are those of each class's set_timesteps for the spacing
 * (leading, trailing, linspace: Table 2 of Lin et al., "Common Diffusion
 * Noise Schedules and Sample Steps are Flawed"), numpy's float rounding
 * included. One deliberate difference: for some n (61 of T = 1000, ...)
 * numpy's arange gives diffusers n + 1 trailing timesteps, the last -1,
 * which diffusers then uses as an index from the end; we keep the first n.
 * A second: Karras sigmas of squaredcos_cap_v2 repeat the first timestep,
 * where diffusers' step starts at index 1 and runs off the end of its
 * sigmas; we step by index. DDPM steps from a timestep to the next of its
 * list (previous_timestep), DDIM to t - T // n, as current diffusers does.
 *
 * Precision: every scalar and every element is computed in float32, one
 * rounding per operation in the order diffusers' torch code does them, so
 * results agree with diffusers to a few float32 ulps per step (torch's expf
 * and logf differ from libm's in the last place; compilers that contract
 * a * b + c into an FMA round once where torch rounds twice). Euler's and
 * LMS' Karras timesteps are fractional, so numpy's float32 log (not libm's)
 * moves them by a few ulps; LMS integrates its coefficients exactly in
 * double where diffusers' scipy quad evaluates the polynomial in float32
 * (~1e-7 of a coefficient).
 *
 * The prediction type (epsilon, v_prediction, sample) is the schedule's
 * (scheduler_config.json), as the model was trained for it. So is
 * rescale_betas_zero_snr, which DPM-Solver++, Euler and Euler ancestral
 * follow as diffusers does: their copy of alphas_cumprod ends at 2^-24
 * instead of 0.
 *
 * A model that also predicts its variance (guided-diffusion's learned_range:
 * out_channels twice in_channels, the second half the variance) hands the
 * two halves separately: DDPM with a learned variance_type uses the second,
 * every other sampler only the first, as diffusers' DPM-Solver does.
 */
#ifndef DC_PIPELINE_SAMPLERS_H
#define DC_PIPELINE_SAMPLERS_H

#include "autograd/diffusion.h"

#include <stdint.h>

typedef enum {
    DC_SAMPLER_DDPM,     /* "ddpm": ancestral sampling (Ho et al.), one noise draw per step */
    DC_SAMPLER_DDIM,     /* "ddim": Song et al.; deterministic at eta 0 */
    DC_SAMPLER_DPMPP_2M, /* "dpm++2m": DPM-Solver++(2M) (Lu et al.), deterministic */
    DC_SAMPLER_PNDM,     /* "pndm": pseudo linear multistep (Liu et al.), SD-1.x's default */
    DC_SAMPLER_EULER,    /* "euler": Euler in sigma (Karras et al., Algorithm 2 without churn) */
    DC_SAMPLER_EULER_A,  /* "euler_a": ancestral Euler, one noise draw per step */
    DC_SAMPLER_LMS,      /* "lms": linear multistep in sigma (Karras et al.), order 4 */
    DC_SAMPLER_COUNT
} dc_sampler_kind;

typedef enum {
    DC_SPACING_LEADING,  /* "leading": multiples of T / n from 0, plus steps_offset */
    DC_SPACING_TRAILING, /* "trailing": from T - 1 down in steps of T / n */
    DC_SPACING_LINSPACE, /* "linspace": rounded linspace(0, T - 1) */
    DC_SPACING_COUNT
} dc_timestep_spacing;

/* DDPMScheduler's variance_type (the learned ones need a model that predicts
 * it). Its "fixed_large_log" is refused: diffusers' step takes the square
 * root of that log variance, a NaN. */
typedef enum {
    DC_VARIANCE_FIXED_SMALL,     /* "fixed_small": the posterior variance beta~_t, clamped at 1e-20 */
    DC_VARIANCE_FIXED_SMALL_LOG, /* "fixed_small_log": the same, its deviation as exp(log(v) / 2) */
    DC_VARIANCE_FIXED_LARGE,     /* "fixed_large": beta_t */
    DC_VARIANCE_LEARNED,         /* "learned": the model predicts the variance itself */
    DC_VARIANCE_LEARNED_RANGE,   /* "learned_range": v in [-1, 1] interpolates the log variance
                                    from beta~_t (-1) to beta_t (1) (Nichol & Dhariwal) */
    DC_VARIANCE_COUNT
} dc_variance_type;

/* DPMSolverMultistepScheduler's and EulerDiscreteScheduler's final_sigmas_type: the
 * sigma after the last step. */
typedef enum {
    DC_FINAL_SIGMAS_ZERO,      /* "zero": the last step lands on x0 (diffusers' default) */
    DC_FINAL_SIGMAS_SIGMA_MIN, /* "sigma_min": on the noise level of timestep 0 */
    DC_FINAL_SIGMAS_COUNT
} dc_final_sigmas_type;

/* Names as diffusers (and the --scheduler option) spell them; an unknown name
 * is an error that lists the known ones. */
int dc_sampler_kind_parse(const char *name, dc_sampler_kind *out);
const char *dc_sampler_kind_name(dc_sampler_kind k);
int dc_timestep_spacing_parse(const char *name, dc_timestep_spacing *out);
const char *dc_timestep_spacing_name(dc_timestep_spacing s);
int dc_variance_type_parse(const char *name, dc_variance_type *out);
const char *dc_variance_type_name(dc_variance_type v);
int dc_final_sigmas_type_parse(const char *name, dc_final_sigmas_type *out);
const char *dc_final_sigmas_type_name(dc_final_sigmas_type f);
/* The kind a scheduler_config.json's _class_name names (DDPMScheduler,
 * DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler,
 * EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
 * LMSDiscreteScheduler); a missing or
 * other class is an error naming it. `where` names the source. */
int dc_sampler_kind_from_config(const char *json, const char *where, dc_sampler_kind *out);

/* Sampler settings, by diffusers' config names. Fields a kind does not use
 * are ignored, except eta (DDIM only) and clip_sample (DDPM and DDIM only),
 * which are refused elsewhere because they would silently do nothing.
 * Dynamic thresholding (Saharia et al., Imagen) replaces clip_sample: per
 * image, s = the dynamic_thresholding_ratio quantile of |x0| (torch.quantile,
 * linear), clamped to [1, sample_max_value]; x0 becomes clamp(x0, -s, s) / s. */
typedef struct dc_sampler_options {
    int num_inference_steps; /* n, in [1, T] */
    dc_timestep_spacing timestep_spacing;
    int64_t steps_offset;           /* added to leading timesteps */
    bool clip_sample;               /* ddpm, ddim: clamp predicted x0 to */
    double clip_sample_range;       /*   [-clip_sample_range, clip_sample_range] */
    dc_variance_type variance_type; /* ddpm */
    double eta;                     /* ddim: 0 deterministic, 1 DDPM-like */
    bool set_alpha_to_one;          /* ddim, pndm: alphas_cumprod "before" t = 0 is 1
                                       (else acp[0]) */
    bool skip_prk_steps;            /* pndm: PLMS from the start (else 12 Runge-Kutta evaluations
                                       first; they need n >= 4) */
    bool thresholding;              /* all: dynamic thresholding of the predicted x0 */
    double dynamic_thresholding_ratio; /*   the quantile, in [0, 1] */
    double sample_max_value;        /*   the largest s, positive */
    bool lower_order_final;         /* dpm++2m: first order at the end when n < 15 */
    dc_final_sigmas_type final_sigmas_type; /* dpm++2m, euler */
    bool use_karras_sigmas;         /* dpm++2m, euler, lms: Karras et al.'s sigmas (rho 7), their
                                       timesteps interpolated in log sigma. dpm++2m spans all
                                       training sigmas (spacing, steps_offset and
                                       lambda_min_clipped then do nothing, as in diffusers) and
                                       rounds the timesteps; euler and lms span their spaced
                                       sigmas and keep them fractional */
    double lambda_min_clipped;      /* dpm++2m: timesteps whose lambda (log(alpha / sigma))
                                       lies below this are left out; -inf: none */
} dc_sampler_options;

/* The defaults of the diffusers class and its pipeline: 1000 steps for DDPM
 * (DDPMPipeline), 50 for the others; leading spacing for DDPM, DDIM and
 * PNDM, linspace for DPM-Solver++, Euler and LMS; clipping at 1 for DDPM and
 * DDIM; eta 0, fixed_small, set_alpha_to_one (false for PNDM), PRK steps
 * (skip_prk_steps false), no thresholding (ratio 0.995, sample_max_value 1),
 * lower_order_final, final sigma zero, no Karras sigmas, lambda_min_clipped
 * -inf. */
dc_sampler_options dc_sampler_default_options(dc_sampler_kind kind);

/* Apply the keys of a diffusers scheduler_config.json (of any scheduler
 * class) that the kind's diffusers class reads, as its from_config would:
 * timestep_spacing, steps_offset; thresholding, dynamic_thresholding_ratio,
 * sample_max_value (ddpm, ddim, dpm++2m); clip_sample, clip_sample_range
 * (ddpm, ddim); variance_type (ddpm); set_alpha_to_one (ddim, pndm);
 * skip_prk_steps (pndm); lower_order_final, lambda_min_clipped (dpm++2m);
 * final_sigmas_type (dpm++2m, euler); use_karras_sigmas (dpm++2m, euler,
 * lms). Absent or null keys
 * leave o as it is. Settings we do not implement are refused, never ignored:
 * variance_type fixed_large_log; for dpm++2m solver_order other than 2, other
 * algorithm or solver types, exponential, beta, flow or Lu sigmas,
 * euler_at_final; for euler interpolation_type log_linear, exponential or
 * beta sigmas, sigma_min / sigma_max, timestep_type continuous; for lms
 * exponential or beta sigmas; for pndm and lms rescale_betas_zero_snr,
 * which their diffusers classes ignore (so the model's zero-SNR schedule
 * would not be the one they sample with). `where` names the source. */
int dc_sampler_options_parse_config(dc_sampler_options *o, dc_sampler_kind kind, const char *json,
                                    const char *where);

typedef struct dc_sampler {
    dc_sampler_kind kind;
    dc_sampler_options opt;
    dc_prediction_type prediction_type; /* the schedule's */
    int64_t T;
    float *alphas_cumprod; /* [T] a copy of the schedule's (dpm++2m: the last 2^-24 when 0) */
    int n;                 /* steps: opt.num_inference_steps, fewer where dpm++2m's
                              lambda_min_clipped cuts trailing timesteps */
    int64_t *timesteps;    /* [n] in [0, T), descending but for PNDM's repeats: step i's
                              timestep (euler: model_t rounded) */
    float *model_t;        /* [n] the timestep the model sees at step i, float32 as diffusers
                              hands it to the UNet (euler's may be fractional) */
    float *sigmas;         /* [n + 1] dpm++2m, euler, lms: sqrt((1 - acp) / acp) per step,
                              then the final */
    float init_noise_sigma; /* the initial noise's deviation: 1, or for euler and lms the
                               largest sigma (leading spacing: sqrt(sigma^2 + 1)) */
    int next;              /* the step that must come next; -1 before the first */
    /* a step's x0 prediction, and dpm++2m's multistep state: the previous one's */
    float *x0, *prev_x0; /* [numel] each */
    float *sorted;       /* [per_image] thresholding's scratch */
    int64_t cap, sorted_cap; /* their capacities */
    int64_t numel;       /* of this run (0 before its first step) */
    /* pndm's state: steps since reset (diffusers' counter), the last model outputs
       (ets[0] the newest, n_ets of them; lms: the last derivatives), the sample of
       the multistep's start and PRK's running sum of model outputs */
    int counter, n_ets;
    float *ets[4], *cur_sample, *cur_mo; /* [numel] each */
} dc_sampler;

/* Build the timesteps of `kind` for o on sched (copied: sched may be freed
 * after). Refused: n outside [1, T], unknown enum values, negative
 * steps_offset, settings whose timesteps leave [0, T) or repeat (leading with
 * a large steps_offset; dpm++2m with n close to T; Karras sigmas may repeat a
 * timestep, as in diffusers), eta < 0 or so large that a step's noise would
 * exceed its variance (diffusers' NaN), eta or clipping where the kind has
 * none, clip_sample_range <= 0, a thresholding ratio outside [0, 1] or a
 * sample_max_value that is not positive, a lambda_min_clipped that leaves no
 * timestep, and DDPM or DDIM steps of an epsilon model at a timestep of zero
 * SNR (diffusers divides by zero there). *s is left empty on failure (safe
 * to free). */
int dc_sampler_init(dc_sampler *s, dc_sampler_kind kind, const dc_noise_schedule *sched,
                    const dc_sampler_options *o);
/* The sampler of a scheduler_config.json (its text `json`, from `where`):
 * the noise schedule and options it says, the kind its _class_name names,
 * or `kind_name` when that is not NULL (a pipeline run with another
 * scheduler, as diffusers' from_config swaps them), with
 * num_inference_steps steps. */
int dc_sampler_init_from_config(dc_sampler *s, const char *json, const char *where,
                                const char *kind_name, int num_inference_steps);
void dc_sampler_free(dc_sampler *s);
/* Forget the multistep state: the next step may be any index again. */
void dc_sampler_reset(dc_sampler *s);

/* Whether step i adds noise (DDPM while timesteps[i] > 0, DDIM with eta > 0). */
int dc_sampler_step_needs_noise(const dc_sampler *s, int i);
/* Whether the steps read the model's predicted variance (DDPM with a learned variance_type). */
bool dc_sampler_needs_variance(const dc_sampler *s);

/* scheduler.scale_model_input: the model's input at step i. Euler and LMS
 * divide the sample by sqrt(sigma_i^2 + 1); the others copy it. out may alias sample. */
int dc_sampler_scale_model_input(const dc_sampler *s, int i, const float *sample, float *out,
                                 int64_t numel);

/* One step: sample ([images, per_image] floats, x at timesteps[i]) becomes x
 * at the next timestep, in place, given the model's output at (x,
 * timesteps[i]) and, when dc_sampler_step_needs_noise, standard normal noise
 * (else NULL is fine; it is not read). model_output has the sample's shape;
 * a model that predicts its variance too gives that half as `variance` (same
 * shape), which dc_sampler_needs_variance samplers need and the others
 * ignore (NULL is fine there). Steps run in order: the first after init or
 * reset may be any i (img2img starts late), each later one must be the next,
 * with the same shape. The inputs may not alias sample. PNDM's state counts
 * the steps since init or reset, as diffusers' counter does from
 * set_timesteps: an img2img run's first step is its counter 0 whatever i. */
int dc_sampler_step(dc_sampler *s, int i, const float *model_output, const float *variance,
                    float *sample, const float *noise, int64_t images, int64_t per_image);

/* ---- noise: a contract ----
 * Image k of a run (counted from 0 across the whole run, whatever the batch
 * size) with seed `seed` draws from the Philox stream (seed, k) (rng.h).
 * Draw d of an image is elements d * per_image .. (d + 1) * per_image - 1 of
 * its stream, in the image's memory order (NHWC):
 *   d = 0       the initial noise x_T, or img2img's noise for add_noise,
 *   d = i + 1   the variance noise of step i.
 * So image k of seed s is the same whether it is sampled alone or in any
 * batch, and on any device. */
#define DC_SAMPLER_DRAW_INIT 0
#define DC_SAMPLER_DRAW_STEP(i) ((uint64_t)(i) + 1)
/* An img2img image's VAE latent sample (text-to-image pipelines): past every step's draw. */
#define DC_SAMPLER_DRAW_VAE ((uint64_t)1 << 32)

/* out [n_images, per_image]: draw `draw` of images first_image ..
 * first_image + n_images - 1. */
void dc_sampler_noise(float *out, int64_t n_images, int64_t per_image, uint64_t seed,
                      uint64_t first_image, uint64_t draw);
/* The same with each image's own stream, streams[k] (`diffc augment` names
 * an image's stream after what it is); consecutive from first_image when
 * streams is NULL. */
void dc_sampler_noise_streams(float *out, int64_t n_images, int64_t per_image, uint64_t seed,
                              uint64_t first_image, const uint64_t *streams, uint64_t draw);

/* ---- img2img ----
 * diffusers' img2img pipelines (StableDiffusionImg2ImgPipeline.get_timesteps)
 * start at step n - int(n * strength) and noise the clean image to that
 * step's timestep. */

/* The first step for strength in (0, 1]: n - min(int(n * strength), n), n
 * the steps asked for (PNDM's list is longer: it starts at that index of
 * it). Refused when that leaves no step (int(n * strength) == 0). */
int dc_sampler_img2img_start(const dc_sampler *s, double strength, int *first);
/* out = scheduler.add_noise(x0, noise, timesteps[i]): sqrt(acp) x0 +
 * sqrt(1 - acp) noise for DDPM, DDIM and PNDM; DPM-Solver computes the same
 * from its sigma of step i (its own rounding); Euler's and LMS' are x0 + sigma_i noise
 * (not multiplied by init_noise_sigma after, as the img2img pipeline does
 * not). out may alias x0 or noise. */
int dc_sampler_add_noise(const dc_sampler *s, int i, const float *x0, const float *noise,
                         float *out, int64_t numel);

/* Classifier-free guidance as diffusers' pipelines combine the two model
 * outputs: out = uncond + scale * (cond - uncond), in float32. out may alias
 * either input. */
void dc_guidance_combine(float *out, const float *uncond, const float *cond, float scale,
                         int64_t numel);

#endif
