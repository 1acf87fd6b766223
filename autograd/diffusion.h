/*
 * The diffusion process of DDPM training, as diffusers' DDPMScheduler defines
 * it: the beta schedule and its cumulative products, the random draws of a
 * training step (timesteps and noise), the forward noising q(x_t | x_0) and
 * the loss, the last two as fused ops.
 *
 * Schedules are built exactly as diffusers builds them, float32 rounding
 * included: betas in f32 (torch.linspace; squaredcos_cap_v2 in double, then
 * cast), alphas = 1 - betas in f32, alphas_cumprod = torch.cumprod(alphas)
 * (a double running product on the CPU, each value rounded to f32). The one
 * known difference: torch's vectorised CPU linspace (its rounding depends on
 * the CPU's vector width and FMA) puts some values one f32 ulp away from its
 * scalar formula, which is what we compute; that is up to 3 ulps of a
 * scaled_linear beta and at most ~6e-8 in alphas_cumprod.
 *
 * With rescale_betas_zero_snr (Lin et al., "Common Diffusion Noise
 * Schedules and Sample Steps are Flawed", Algorithm 1) the betas are rescaled
 * as diffusers' rescale_zero_terminal_snr does, in float32: the last beta is
 * 1 and alphas_cumprod[T - 1] is 0, pure noise (a zero SNR). torch's
 * vectorised sqrt is an ulp off the correctly rounded one for a few values,
 * so a few rescaled betas differ by a few ulps of 1 and alphas_cumprod by
 * up to ~4e-7 of itself.
 *
 * Sampler settings (clip_sample, variance_type, timestep_spacing, ...) are
 * not kept here: the samplers read their own.
 */
#ifndef DC_DIFFUSION_H
#define DC_DIFFUSION_H

#include "ops.h"

#include <cjson/cJSON.h>

#include <stdint.h>

/* diffusers' beta_schedule names. */
typedef enum {
    DC_BETA_LINEAR,        /* linspace(beta_start, beta_end, T) */
    DC_BETA_SCALED_LINEAR, /* linspace(sqrt(beta_start), sqrt(beta_end), T)^2 (latent diffusion) */
    DC_BETA_SQUAREDCOS_CAP_V2, /* Nichol & Dhariwal's cosine alpha_bar, betas capped at 0.999 */
    DC_BETA_COUNT
} dc_beta_schedule;

/* What the model predicts (diffusers' prediction_type). */
typedef enum {
    DC_PRED_EPSILON,      /* the noise */
    DC_PRED_V_PREDICTION, /* v = sqrt(acp) noise - sqrt(1 - acp) x0 (get_velocity) */
    DC_PRED_SAMPLE,       /* x0 itself */
    DC_PRED_COUNT
} dc_prediction_type;

/* Names as diffusers spells them; an unknown name is an error that lists the known ones. */
int dc_beta_schedule_parse(const char *name, dc_beta_schedule *out);
const char *dc_beta_schedule_name(dc_beta_schedule s);
int dc_prediction_type_parse(const char *name, dc_prediction_type *out);
const char *dc_prediction_type_name(dc_prediction_type p);

/* What training needs of a diffusers scheduler_config.json. */
typedef struct dc_noise_schedule_config {
    int64_t num_train_timesteps; /* T */
    double beta_start, beta_end; /* unused by squaredcos_cap_v2, as in diffusers */
    dc_beta_schedule beta_schedule;
    dc_prediction_type prediction_type;
    bool rescale_betas_zero_snr; /* rescaled to a zero terminal SNR (see above) */
} dc_noise_schedule_config;

/* DDPMScheduler's defaults: T 1000, linear 0.0001 to 0.02, epsilon, no rescaling. */
dc_noise_schedule_config dc_noise_schedule_default_config(void);
/* Read the keys above from the JSON text of a scheduler config (any diffusers
 * scheduler class: DDPM, DDIM, PNDM, DPMSolverMultistep share them); absent
 * keys take the defaults, other keys are ignored. trained_betas, which would
 * replace the betas, is refused rather than ignored. `where` names the source
 * in messages. */
int dc_noise_schedule_config_parse(dc_noise_schedule_config *c, const char *json,
                                   const char *where);
int dc_noise_schedule_config_load(dc_noise_schedule_config *c, const char *path);
/* Write a DDPMScheduler scheduler_config.json with these keys; diffusers fills
 * in its defaults for the rest. */
int dc_noise_schedule_config_save(const dc_noise_schedule_config *c, const char *path);
/* The same config as a cJSON object (NULL after dc_fail when out of memory). */
cJSON *dc_noise_schedule_config_to_json(const dc_noise_schedule_config *c);

typedef struct dc_noise_schedule {
    dc_noise_schedule_config config;
    int64_t T;             /* config.num_train_timesteps */
    float *betas;          /* [T] */
    float *alphas_cumprod; /* [T] prod_{s <= t} (1 - betas[s]) */
} dc_noise_schedule;

/* Build the schedule of c. T must lie in [1, 2^24], and every beta in (0, 1)
 * and large enough that 1 - beta < 1 in f32: so 0 < acp < 1 and the SNR is
 * finite (a beta of 1 would destroy the signal at once). The one exception is
 * the last beta of a zero-SNR rescaled schedule, 1 by design (T >= 2). */
int dc_noise_schedule_init(dc_noise_schedule *s, const dc_noise_schedule_config *c);
void dc_noise_schedule_free(dc_noise_schedule *s);

/* ---- the random draws of a training step ----
 * Both fill a tensor on any device with elements offset .. offset + numel - 1
 * of the Philox stream (seed, stream) (see rng.h), so a batch split across
 * ranks draws what one rank would draw for the whole batch. Timesteps are the
 * same integers on every device; normals agree to the last place of the
 * devices' logf/sinf/cosf. */

/* t (i32, any shape): timesteps uniform in [0, T). Element i is (w * T) >> 32
 * for the 32-bit Philox word w of element i (word i % 4 of block i / 4, as
 * dc_rand_uniform uses it): integer arithmetic, the same on every device. */
int dc_sample_timesteps(const dc_noise_schedule *s, dc_tensor *t, uint64_t seed, uint64_t stream,
                        uint64_t offset);
/* x (f32, any shape): standard normals, element i = dc_rand_normal(seed, stream, offset + i). */
int dc_sample_noise(dc_tensor *x, uint64_t seed, uint64_t stream, uint64_t offset);

/* ---- fused ops ----
 * x0, noise, model_output are f32 [N, ...] of one shape; t is i32 [N] with
 * values in [0, T), on the context's device or on the CPU (checked there
 * without waiting for a GPU); acp = alphas_cumprod[t[n]] per sample n. */

/* diffusers' add_noise: x_t = sqrt(acp) x0 + sqrt(1 - acp) noise (f32, as
 * PyTorch rounds it). Differentiable in x0 and noise. */
dc_tensor *dc_q_sample(dc_ctx *ctx, dc_tensor *x0, dc_tensor *noise, dc_tensor *t,
                       const dc_noise_schedule *s);

/* The training loss, one element [1]: mean over samples n of
 * w_n * mean((model_output - target)^2) over the rest, with the target noise
 * (epsilon), sqrt(acp) noise - sqrt(1 - acp) x0 (v_prediction) or x0 (sample).
 *
 * With snr = acp / (1 - acp), the weights are those of diffusers' training
 * examples: without min-SNR (snr_gamma 0) w = 1 for epsilon and
 * v_prediction, and w = snr for sample (train_unconditional.py: the x0 loss
 * weighted to match the epsilon loss). With snr_gamma > 0 (Hang et al.,
 * "Efficient Diffusion Training via Min-SNR Weighting Strategy", as in
 * train_text_to_image.py) w = min(snr, gamma) / snr for epsilon,
 * min(snr, gamma) / (snr + 1) for v_prediction, and the paper's x0 weight
 * min(snr, gamma) for sample. Weights at acp = 0 take their limits (epsilon 1).
 *
 * Differentiable in model_output, x0 and noise. When `mse` is not NULL it
 * receives each sample's unweighted mean squared error ([N], host memory):
 * what the trainer logs per timestep range. */
dc_tensor *dc_diffusion_loss(dc_ctx *ctx, dc_tensor *model_output, dc_tensor *x0, dc_tensor *noise,
                             dc_tensor *t, const dc_noise_schedule *s,
                             dc_prediction_type prediction_type, float snr_gamma, double *mse);

#endif
