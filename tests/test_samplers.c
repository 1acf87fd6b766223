/* The samplers against diffusers (tests/fixtures/samplers.safetensors, made by
 * scripts/make_sampler_fixtures.py): timesteps for every spacing, each step of
 * DDPM, DDIM and DPM-Solver++(2M) trajectories, add_noise and the img2img
 * start; Stable Diffusion's schedulers (tests/fixtures/sd_schedulers.safetensors,
 * scripts/make_sd_scheduler_fixtures.py: PNDM, Euler, Euler ancestral, LMS,
 * DPM++ 2M Karras from SD-1.5's and SD-2.1's scheduler configs) run as the
 * text-to-image and img2img pipelines run them; then the noise contract (an
 * image's noise does not depend on its batch), configs, guidance, the
 * multistep state, and the errors. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/rng.h"
#include "autograd/safetensors.h"
#include "pipeline/samplers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURE "tests/fixtures/samplers.safetensors"
#define NUMEL 96 /* a fixture sample: [2, 4, 4, 3] */

/* ---- fixture access ---- */

static const dc_st_tensor *fx_find(const dc_st_file *f, const char *name, dc_dtype dtype) {
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL, "fixture has no %s", name);
    ck_assert_msg(t->dtype == (int)dtype, "%s: %s", name, t->dtype_name);
    return t;
}

/* A fixture f32 tensor of n elements, copied (malloc'ed). */
static float *fx_floats(const dc_st_file *f, const char *name, int64_t n) {
    const dc_st_tensor *t = fx_find(f, name, DC_F32);
    ck_assert_msg(t->nbytes == (size_t)n * 4, "%s: %zu bytes, expected %lld floats", name,
                  t->nbytes, (long long)n);
    float *out = malloc((size_t)n * sizeof *out);
    memcpy(out, t->data, (size_t)n * 4);
    return out;
}

/* A fixture i32 list: its length, and the values widened (malloc'ed). */
static int64_t *fx_ints(const dc_st_file *f, const char *name, int *len) {
    const dc_st_tensor *t = fx_find(f, name, DC_I32);
    *len = (int)(t->nbytes / 4);
    int64_t *out = malloc((size_t)(*len + 1) * sizeof *out);
    for (int k = 0; k < *len; k++) {
        int32_t v;
        memcpy(&v, (const char *)t->data + 4 * k, 4);
        out[k] = v;
    }
    return out;
}

/* Metadata "tag.key", or NULL when the case does not set it. */
static const char *fx_opt(const dc_st_file *f, const char *tag, const char *key) {
    char name[128];
    snprintf(name, sizeof name, "%s.%s", tag, key);
    return dc_st_meta(f, name);
}

static const char *fx_meta(const dc_st_file *f, const char *tag, const char *key) {
    const char *v = fx_opt(f, tag, key);
    ck_assert_msg(v != NULL, "fixture has no metadata %s.%s", tag, key);
    return v;
}

/* A linear schedule of T steps (the timestep lists need no more). */
static void linear_schedule(dc_noise_schedule *s, int64_t T) {
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    c.num_train_timesteps = T;
    ck_assert_msg(dc_noise_schedule_init(s, &c) == 0, "%s", dc_error());
}

/* The case's schedule, its alphas_cumprod replaced by diffusers' own, so the steps are
 * checked apart from the schedule (test_diffusion checks that). */
static void fx_schedule(const dc_st_file *f, const char *tag, dc_noise_schedule *s) {
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    ck_assert_int_eq(dc_beta_schedule_parse(fx_meta(f, tag, "beta_schedule"), &c.beta_schedule), 0);
    c.beta_start = strtod(fx_meta(f, tag, "beta_start"), NULL);
    c.beta_end = strtod(fx_meta(f, tag, "beta_end"), NULL);
    c.num_train_timesteps = strtoll(fx_meta(f, tag, "T"), NULL, 10);
    const char *pred = fx_opt(f, tag, "prediction_type");
    if (pred)
        ck_assert_int_eq(dc_prediction_type_parse(pred, &c.prediction_type), 0);
    const char *zsnr = fx_opt(f, tag, "rescale_betas_zero_snr");
    c.rescale_betas_zero_snr = zsnr && !strcmp(zsnr, "True");
    ck_assert_msg(dc_noise_schedule_init(s, &c) == 0, "%s: %s", tag, dc_error());
    char name[64];
    snprintf(name, sizeof name, "acp.%s%s", fx_meta(f, tag, "schedule"),
             c.num_train_timesteps == 37 ? "_37" : "");
    float *acp = fx_floats(f, name, s->T);
    memcpy(s->alphas_cumprod, acp, (size_t)s->T * sizeof(float));
    free(acp);
}

static int fx_bool(const dc_st_file *f, const char *tag, const char *key, int dflt) {
    const char *v = fx_opt(f, tag, key);
    return v ? !strcmp(v, "True") : dflt;
}

/* The case's sampler options, from the keys it gave diffusers (the rest default). */
static dc_sampler_kind fx_options(const dc_st_file *f, const char *tag, dc_sampler_options *o) {
    dc_sampler_kind kind;
    ck_assert_int_eq(dc_sampler_kind_parse(fx_meta(f, tag, "kind"), &kind), 0);
    *o = dc_sampler_default_options(kind);
    o->num_inference_steps = atoi(fx_meta(f, tag, "steps"));
    ck_assert_int_eq(
        dc_timestep_spacing_parse(fx_meta(f, tag, "timestep_spacing"), &o->timestep_spacing), 0);
    o->eta = strtod(fx_meta(f, tag, "eta"), NULL);
    const char *v;
    if ((v = fx_opt(f, tag, "steps_offset")))
        o->steps_offset = atoi(v);
    if ((v = fx_opt(f, tag, "clip_sample_range")))
        o->clip_sample_range = strtod(v, NULL);
    if ((v = fx_opt(f, tag, "variance_type")))
        ck_assert_int_eq(dc_variance_type_parse(v, &o->variance_type), 0);
    if ((v = fx_opt(f, tag, "final_sigmas_type")))
        ck_assert_int_eq(dc_final_sigmas_type_parse(v, &o->final_sigmas_type), 0);
    if ((v = fx_opt(f, tag, "dynamic_thresholding_ratio")))
        o->dynamic_thresholding_ratio = strtod(v, NULL);
    if ((v = fx_opt(f, tag, "sample_max_value")))
        o->sample_max_value = strtod(v, NULL);
    if ((v = fx_opt(f, tag, "lambda_min_clipped")))
        o->lambda_min_clipped = strtod(v, NULL);
    o->clip_sample = fx_bool(f, tag, "clip_sample", o->clip_sample);
    o->set_alpha_to_one = fx_bool(f, tag, "set_alpha_to_one", o->set_alpha_to_one);
    o->lower_order_final = fx_bool(f, tag, "lower_order_final", o->lower_order_final);
    o->thresholding = fx_bool(f, tag, "thresholding", o->thresholding);
    o->use_karras_sigmas = fx_bool(f, tag, "use_karras_sigmas", o->use_karras_sigmas);
    return kind;
}

/* The fixture's model: 0.5 * sample + w[i] (exact in f32 on both sides). */
static void model(float *out, const float *x, const float *w_i) {
    for (int e = 0; e < NUMEL; e++)
        out[e] = 0.5f * x[e] + w_i[e];
}

/* The case's predicted variances [25, NUMEL]: v, or for "learned" (a variance
 * itself, so positive) |v| * 0.01 as the script makes them. */
static float *fx_variances(const dc_st_file *f, const char *tag) {
    float *v = fx_floats(f, "v", 25 * NUMEL);
    const char *type = fx_opt(f, tag, "variance_type");
    for (int e = 0; type && !strcmp(type, "learned") && e < 25 * NUMEL; e++)
        v[e] = fabsf(v[e]) * 0.01f;
    return v;
}

/* max |got - want| / max(1, max |want|): float32 steps amplify the rounding of
 * (x - sqrt(1 - acp) eps) / sqrt(acp) with the sample's scale. On x86-64 DDPM
 * and DDIM match diffusers bit for bit and DPM-Solver++ to ~1e-7 (torch's expf
 * and logf); the tolerances leave room for other libms and FMA contraction. */
static double worst_error(const float *got, const float *want, int n) {
    double scale = 1, worst = 0;
    for (int e = 0; e < n; e++)
        scale = fmax(scale, fabs(want[e]));
    for (int e = 0; e < n; e++) {
        double d = fabs((double)got[e] - want[e]);
        worst = fmax(worst, isnan(d) ? INFINITY : d / scale);
    }
    return worst;
}

static void expect_init_fail(dc_sampler_kind kind, const dc_noise_schedule *sched,
                             const dc_sampler_options *o, const char *message) {
    dc_sampler s;
    ck_assert_msg(dc_sampler_init(&s, kind, sched, o) != 0, "accepted: %s", message);
    ck_assert_msg(strstr(dc_error(), message), "expected '%s', got '%s'", message, dc_error());
    ck_assert_ptr_null(s.timesteps);
    dc_sampler_free(&s);
}

/* ---- against diffusers ---- */

START_TEST(test_trajectories_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    float *w = fx_floats(&f, "w", 25 * NUMEL), *noise = fx_floats(&f, "noise", 25 * NUMEL);
    char cases[2048];
    snprintf(cases, sizeof cases, "%s", dc_st_meta(&f, "cases"));
    int n_cases = 0;
    for (char *save, *tag = strtok_r(cases, ",", &save); tag; tag = strtok_r(NULL, ",", &save)) {
        dc_noise_schedule sched;
        fx_schedule(&f, tag, &sched);
        dc_sampler_options o;
        dc_sampler_kind kind = fx_options(&f, tag, &o);
        dc_sampler s;
        ck_assert_msg(dc_sampler_init(&s, kind, &sched, &o) == 0, "%s: %s", tag, dc_error());
        float *var = fx_variances(&f, tag);
        char name[96];
        int len;
        snprintf(name, sizeof name, "%s.timesteps", tag);
        int64_t *ts = fx_ints(&f, name, &len);
        ck_assert_int_eq(len, s.n);
        for (int i = 0; i < s.n; i++)
            ck_assert_msg(s.timesteps[i] == ts[i], "%s: timestep %d is %lld, diffusers %lld", tag,
                          i, (long long)s.timesteps[i], (long long)ts[i]);
        snprintf(name, sizeof name, "%s.traj", tag);
        float *traj = fx_floats(&f, name, (int64_t)(s.n + 1) * NUMEL);
        float x[NUMEL], mo[NUMEL], run[NUMEL];
        /* step by step from diffusers' sample before each step ... */
        for (int i = 0; i < s.n; i++) {
            memcpy(x, traj + i * NUMEL, sizeof x);
            model(mo, x, w + i * NUMEL);
            ck_assert_msg(dc_sampler_step(&s, i, mo, var + i * NUMEL, x, noise + i * NUMEL, 2,
                                          NUMEL / 2) == 0,
                          "%s: %s", tag, dc_error());
            double err = worst_error(x, traj + (i + 1) * NUMEL, NUMEL);
            ck_assert_msg(err <= 1e-6, "%s: step %d (timestep %lld) off by %g of the scale", tag, i,
                          (long long)s.timesteps[i], err);
        }
        /* ... and a whole run from the initial sample alone */
        memcpy(run, traj, sizeof run);
        for (int i = 0; i < s.n; i++) {
            model(mo, run, w + i * NUMEL);
            ck_assert_int_eq(
                dc_sampler_step(&s, i, mo, var + i * NUMEL, run, noise + i * NUMEL, 2, NUMEL / 2), 0);
        }
        double err = worst_error(run, traj + s.n * NUMEL, NUMEL);
        ck_assert_msg(err <= 4e-6, "%s: the run ends off by %g of the scale", tag, err);
        free(ts);
        free(traj);
        free(var);
        dc_sampler_free(&s);
        dc_noise_schedule_free(&sched);
        n_cases++;
    }
    ck_assert_int_eq(n_cases, 48);
    free(w);
    free(noise);
    dc_st_close(&f);
}
END_TEST

/* A list diffusers would run as it is: n strictly descending timesteps in [0, T). */
static int usable(const int64_t *ts, int len, int n, int64_t T) {
    if (len != n)
        return 0;
    for (int k = 0; k < len; k++)
        if (ts[k] < 0 || ts[k] >= T || (k > 0 && ts[k] >= ts[k - 1]))
            return 0;
    return 1;
}

START_TEST(test_timesteps_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    char specs[8192];
    snprintf(specs, sizeof specs, "%s", dc_st_meta(&f, "timestep_cases"));
    int k = 0, refused = 0, extra = 0;
    for (char *save, *spec = strtok_r(specs, ";", &save); spec;
         spec = strtok_r(NULL, ";", &save), k++) {
        char kind_name[16], spacing_name[16];
        long long T, offset;
        int n;
        ck_assert_int_eq(
            sscanf(spec, "%15[^,],%15[^,],%lld,%d,%lld", kind_name, spacing_name, &T, &n, &offset),
            5);
        dc_sampler_kind kind;
        ck_assert_int_eq(dc_sampler_kind_parse(kind_name, &kind), 0);
        dc_sampler_options o = dc_sampler_default_options(kind);
        ck_assert_int_eq(dc_timestep_spacing_parse(spacing_name, &o.timestep_spacing), 0);
        o.num_inference_steps = n;
        o.steps_offset = offset;
        dc_noise_schedule sched;
        linear_schedule(&sched, T);
        char name[32];
        snprintf(name, sizeof name, "ts.%d", k);
        int len;
        int64_t *ts = fx_ints(&f, name, &len);
        /* numpy's arange may give diffusers one trailing step too many, timestep -1 */
        int one_extra = len == n + 1 && ts[n] == -1 && usable(ts, n, n, T);
        dc_sampler s;
        int rc = dc_sampler_init(&s, kind, &sched, &o);
        if (usable(ts, len, n, T) || one_extra) {
            ck_assert_msg(rc == 0, "%s: %s", spec, dc_error());
            for (int i = 0; i < n; i++)
                ck_assert_msg(s.timesteps[i] == ts[i], "%s: timestep %d is %lld, diffusers %lld",
                              spec, i, (long long)s.timesteps[i], (long long)ts[i]);
            extra += one_extra;
        } else {
            ck_assert_msg(rc != 0, "%s: accepted timesteps diffusers cannot use", spec);
            ck_assert_msg(strstr(dc_error(), "repeat timestep") ||
                              strstr(dc_error(), "outside [0, "),
                          "%s: %s", spec, dc_error());
            refused++;
        }
        free(ts);
        dc_sampler_free(&s);
        dc_noise_schedule_free(&sched);
    }
    ck_assert_int_ge(k, 100);
    ck_assert_int_eq(extra, 3); /* n = 61 trailing, for each kind */
    ck_assert_int_ge(refused, 4);
    dc_st_close(&f);
}
END_TEST

START_TEST(test_add_noise_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    float *x0 = fx_floats(&f, "add_noise.x0", NUMEL), *noise = fx_floats(&f, "noise", 25 * NUMEL);
    dc_noise_schedule sched;
    linear_schedule(&sched, 1000);
    float *acp = fx_floats(&f, "acp.linear", 1000);
    memcpy(sched.alphas_cumprod, acp, sizeof(float) * 1000);
    for (int kind = 0; kind <= DC_SAMPLER_DPMPP_2M; kind++) { /* SD's: test_sd_img2img */
        const char *tag = dc_sampler_kind_name(kind);
        dc_sampler_options o = dc_sampler_default_options(kind);
        o.num_inference_steps = 10;
        dc_sampler s;
        ck_assert_msg(dc_sampler_init(&s, kind, &sched, &o) == 0, "%s", dc_error());
        int first = -1;
        ck_assert_int_eq(dc_sampler_img2img_start(&s, 0.6, &first), 0);
        char name[64];
        snprintf(name, sizeof name, "add_noise.%s", tag);
        ck_assert_int_eq(first, atoi(fx_meta(&f, name, "index")));
        float *want = fx_floats(&f, name, NUMEL), got[NUMEL];
        ck_assert_int_eq(dc_sampler_add_noise(&s, first, x0, noise, got, NUMEL), 0);
        double err = worst_error(got, want, NUMEL);
        ck_assert_msg(err <= 1e-6, "%s: add_noise off by %g", tag, err);
        /* in place over x0 too */
        memcpy(got, x0, sizeof got);
        ck_assert_int_eq(dc_sampler_add_noise(&s, first, got, noise, got, NUMEL), 0);
        ck_assert_double_le(worst_error(got, want, NUMEL), 1e-6);
        free(want);
        dc_sampler_free(&s);
    }
    free(acp);
    free(x0);
    free(noise);
    dc_noise_schedule_free(&sched);
    dc_st_close(&f);
}
END_TEST

/* ---- Stable Diffusion's schedulers against diffusers ---- */

#define SD_FIXTURE "tests/fixtures/sd_schedulers.safetensors"

/* The fake model of scripts/make_sd_scheduler_fixtures.py: 0.5 * in + w * (t / 1000). */
static void sd_model(float *out, const float *in, const float *w_i, float t) {
    float tt = t / 1000.0f;
    for (int e = 0; e < NUMEL; e++)
        out[e] = 0.5f * in[e] + w_i[e] * tt;
}

/* The case's sampler, from its scheduler_config.json as diffc reads a pipeline's. */
static void sd_sampler(const dc_st_file *f, const char *tag, dc_sampler *s) {
    const char *json = fx_meta(f, tag, "config");
    int steps = atoi(fx_meta(f, tag, "steps"));
    ck_assert_msg(dc_sampler_init_from_config(s, json, tag, NULL, steps) == 0, "%s: %s", tag,
                  dc_error());
}

/* Steps first .. s->n - 1 from x as the pipeline runs them, each compared with traj
 * (traj[0] is x; within 1e-5 of the scale); model_in, when given, checks
 * scale_model_input's output too. */
static void sd_run(const char *tag, dc_sampler *s, int first, float *x, const float *traj,
                   const float *model_in, const float *w, const float *noise) {
    float in[NUMEL], mo[NUMEL];
    for (int i = first; i < s->n; i++) {
        ck_assert_int_eq(dc_sampler_scale_model_input(s, i, x, in, NUMEL), 0);
        if (model_in) {
            double err = worst_error(in, model_in + i * NUMEL, NUMEL);
            ck_assert_msg(err <= 1e-6, "%s: model input %d off by %g", tag, i, err);
        }
        sd_model(mo, in, w + i * NUMEL, s->model_t[i]);
        const float *z = dc_sampler_step_needs_noise(s, i) ? noise + i * NUMEL : NULL;
        ck_assert_msg(dc_sampler_step(s, i, mo, NULL, x, z, 2, NUMEL / 2) == 0, "%s: %s", tag,
                      dc_error());
        double err = worst_error(x, traj + (i - first + 1) * NUMEL, NUMEL);
        ck_assert_msg(err <= 1e-5, "%s: step %d (t %g) off by %g of the scale", tag, i,
                      (double)s->model_t[i], err);
    }
}

START_TEST(test_sd_schedulers_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, SD_FIXTURE) == 0, "%s", dc_error());
    float *x0 = fx_floats(&f, "x", NUMEL), *w = fx_floats(&f, "w", 24 * NUMEL);
    float *noise = fx_floats(&f, "noise", 24 * NUMEL);
    char cases[2048], name[96];
    snprintf(cases, sizeof cases, "%s", dc_st_meta(&f, "cases"));
    int n_cases = 0;
    for (char *save, *tag = strtok_r(cases, ",", &save); tag; tag = strtok_r(NULL, ",", &save)) {
        dc_sampler s;
        sd_sampler(&f, tag, &s);
        snprintf(name, sizeof name, "%s.timesteps", tag);
        float *ts = fx_floats(&f, name, s.n); /* its length checked: the count of steps */
        /* identical, but Karras' fractional ones: numpy's float32 log is not libm's logf */
        bool fractional = s.opt.use_karras_sigmas && s.kind != DC_SAMPLER_DPMPP_2M;
        for (int i = 0; i < s.n; i++)
            ck_assert_msg(s.model_t[i] == ts[i] ||
                              (fractional && fabsf(s.model_t[i] - ts[i]) <= 2e-6f * fmaxf(ts[i], 1)),
                          "%s: timestep %d is %.9g, diffusers %.9g", tag, i, (double)s.model_t[i],
                          (double)ts[i]);
        snprintf(name, sizeof name, "%s.sigmas", tag);
        if (dc_st_find(&f, name)) {
            float *sigmas = fx_floats(&f, name, s.n + 1);
            ck_assert_msg(worst_error(s.sigmas, sigmas, s.n + 1) <= 1e-6, "%s: sigmas", tag);
            free(sigmas);
        }
        snprintf(name, sizeof name, "%s.init_noise_sigma", tag);
        float *sigma = fx_floats(&f, name, 1);
        ck_assert_msg(fabsf(s.init_noise_sigma - *sigma) <= 1e-6f * *sigma,
                      "%s: init_noise_sigma %g, diffusers %g", tag, (double)s.init_noise_sigma,
                      (double)*sigma);
        snprintf(name, sizeof name, "%s.traj", tag);
        float *traj = fx_floats(&f, name, (int64_t)(s.n + 1) * NUMEL);
        snprintf(name, sizeof name, "%s.model_in", tag);
        float *model_in = fx_floats(&f, name, (int64_t)s.n * NUMEL), x[NUMEL];
        for (int e = 0; e < NUMEL; e++)
            x[e] = x0[e] * s.init_noise_sigma;
        ck_assert_msg(worst_error(x, traj, NUMEL) <= 1e-6, "%s: initial latents", tag);
        sd_run(tag, &s, 0, x, traj, model_in, w, noise);
        free(ts);
        free(sigma);
        free(traj);
        free(model_in);
        dc_sampler_free(&s);
        n_cases++;
    }
    ck_assert_int_eq(n_cases, 27);
    free(x0);
    free(w);
    free(noise);
    dc_st_close(&f);
}
END_TEST

/* StableDiffusionImg2ImgPipeline: get_timesteps' start, add_noise there, the loop from
 * there (PNDM's counter starts at 0 on that step, as after diffusers' set_timesteps). */
START_TEST(test_sd_img2img_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, SD_FIXTURE) == 0, "%s", dc_error());
    float *x0 = fx_floats(&f, "x0", NUMEL), *w = fx_floats(&f, "w", 24 * NUMEL);
    float *noise = fx_floats(&f, "noise", 24 * NUMEL);
    char cases[512], tag[64], name[96];
    snprintf(cases, sizeof cases, "%s", dc_st_meta(&f, "i2i_cases"));
    int n_cases = 0;
    for (char *save, *c = strtok_r(cases, ",", &save); c; c = strtok_r(NULL, ",", &save)) {
        snprintf(tag, sizeof tag, "i2i.%s", c);
        dc_sampler s;
        sd_sampler(&f, tag, &s);
        int first = -1, len;
        ck_assert_int_eq(dc_sampler_img2img_start(&s, strtod(fx_meta(&f, tag, "strength"), NULL),
                                                  &first),
                         0);
        snprintf(name, sizeof name, "%s.start", tag);
        int64_t *start = fx_ints(&f, name, &len);
        ck_assert_msg(first == start[0], "%s: starts at %d, diffusers %lld", tag, first,
                      (long long)start[0]);
        snprintf(name, sizeof name, "%s.noised", tag);
        float *noised = fx_floats(&f, name, NUMEL), x[NUMEL];
        ck_assert_int_eq(dc_sampler_add_noise(&s, first, x0, noise, x, NUMEL), 0);
        ck_assert_msg(worst_error(x, noised, NUMEL) <= 1e-6, "%s: add_noise", tag);
        snprintf(name, sizeof name, "%s.traj", tag);
        float *traj = fx_floats(&f, name, (int64_t)(s.n - first + 1) * NUMEL);
        sd_run(tag, &s, first, x, traj, NULL, w, noise);
        free(start);
        free(noised);
        free(traj);
        dc_sampler_free(&s);
        n_cases++;
    }
    ck_assert_int_eq(n_cases, 8);
    free(x0);
    free(w);
    free(noise);
    dc_st_close(&f);
}
END_TEST

/* A scheduler_config.json diffc cannot follow is one error that names what. */
START_TEST(test_sd_config_errors) {
    static const struct {
        const char *json, *kind, *message;
    } bad[] = {
        {"{\"_class_name\": \"HeunDiscreteScheduler\"}", NULL,
         "cfg: scheduler class 'HeunDiscreteScheduler' is not supported (expected 'DDPMScheduler'"},
        {"{\"beta_schedule\": \"scaled_linear\"}", NULL, "cfg: no _class_name"},
        {"{\"_class_name\": 7}", NULL, "cfg: _class_name"},
        {"[]", NULL, "cfg: not a JSON object"},
        {"{\"_class_name\": \"PNDMScheduler\"}", "heun", "sampler 'heun' is not supported"},
        {"{\"_class_name\": \"EulerDiscreteScheduler\", \"interpolation_type\": \"log_linear\"}",
         NULL, "interpolation_type 'log_linear' is not supported"},
        {"{\"_class_name\": \"EulerDiscreteScheduler\", \"use_exponential_sigmas\": true}", NULL,
         "cfg: use_exponential_sigmas is not supported"},
        {"{\"_class_name\": \"EulerDiscreteScheduler\", \"use_beta_sigmas\": true}", NULL,
         "cfg: use_beta_sigmas is not supported"},
        {"{\"_class_name\": \"EulerDiscreteScheduler\", \"sigma_min\": 0.1}", NULL,
         "cfg: sigma_min is not supported"},
        {"{\"_class_name\": \"EulerDiscreteScheduler\", \"timestep_type\": \"continuous\"}", NULL,
         "timestep_type 'continuous' is not supported"},
        {"{\"_class_name\": \"EulerDiscreteScheduler\", \"final_sigmas_type\": \"max\"}", NULL,
         "final_sigmas_type 'max' is not supported"},
        {"{\"_class_name\": \"PNDMScheduler\", \"prediction_type\": \"sample\"}", NULL,
         "pndm: prediction_type sample is not supported (diffusers' PNDMScheduler refuses it)"},
        {"{\"_class_name\": \"EulerAncestralDiscreteScheduler\", \"prediction_type\": \"sample\"}",
         NULL, "euler_a: prediction_type sample is not supported"},
        {"{\"_class_name\": \"PNDMScheduler\", \"skip_prk_steps\": \"yes\"}", NULL,
         "skip_prk_steps"},
        {"{\"_class_name\": \"PNDMScheduler\", \"timestep_spacing\": \"even\"}", NULL,
         "timestep_spacing 'even' is not supported"},
        {"{\"_class_name\": \"PNDMScheduler\", \"trained_betas\": [0.1, 0.2]}", NULL,
         "trained_betas"},
        {"{\"_class_name\": \"PNDMScheduler\", \"steps_offset\": 1000}", NULL,
         "pndm: steps_offset 1000 must lie in [0, 1000)"},
        {"{\"_class_name\": \"PNDMScheduler\", \"skip_prk_steps\": false}", "pndm",
         "pndm: 3 steps are too few for its Runge-Kutta start"},
        {"{\"_class_name\": \"PNDMScheduler\", \"rescale_betas_zero_snr\": true}", NULL,
         "cfg: rescale_betas_zero_snr is not supported"},
        {"{\"_class_name\": \"LMSDiscreteScheduler\", \"use_beta_sigmas\": true}", NULL,
         "cfg: use_beta_sigmas is not supported"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        dc_sampler s;
        ck_assert_msg(dc_sampler_init_from_config(&s, bad[k].json, "cfg", bad[k].kind, 3) != 0,
                      "accepted %s", bad[k].json);
        ck_assert_msg(strstr(dc_error(), bad[k].message), "%s: %s", bad[k].json, dc_error());
        ck_assert_ptr_null(s.timesteps);
        dc_sampler_free(&s);
    }
    /* options the class does not read are ignored, as diffusers' from_config ignores them */
    dc_sampler s;
    const char *sd15 = "{\"_class_name\": \"PNDMScheduler\", \"beta_schedule\": \"scaled_linear\", "
                       "\"beta_start\": 0.00085, \"beta_end\": 0.012, \"clip_sample\": true, "
                       "\"thresholding\": true, \"skip_prk_steps\": true, \"steps_offset\": 1}";
    ck_assert_msg(dc_sampler_init_from_config(&s, sd15, "cfg", "euler", 20) == 0, "%s",
                  dc_error());
    ck_assert(s.kind == DC_SAMPLER_EULER && s.n == 20 && !s.opt.clip_sample &&
              !s.opt.thresholding);
    dc_sampler_free(&s);
    ck_assert_msg(dc_sampler_init_from_config(&s, sd15, "cfg", NULL, 20) == 0, "%s", dc_error());
    ck_assert(s.kind == DC_SAMPLER_PNDM && s.n == 21 && s.timesteps[0] == 951 &&
              s.timesteps[1] == 901 && s.timesteps[2] == 901 && s.timesteps[20] == 1);
    dc_sampler_free(&s);
    /* and settings a kind has no use for are refused where they would do nothing */
    dc_noise_schedule sched;
    linear_schedule(&sched, 1000);
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_EULER);
    o.thresholding = true;
    expect_init_fail(DC_SAMPLER_EULER, &sched, &o, "euler: thresholding applies to ddpm, ddim");
    o = dc_sampler_default_options(DC_SAMPLER_PNDM);
    o.clip_sample = true;
    expect_init_fail(DC_SAMPLER_PNDM, &sched, &o, "pndm: clip_sample applies to ddpm and ddim");
    dc_noise_schedule_free(&sched);
}
END_TEST

/* ---- img2img ---- */

START_TEST(test_img2img_start) {
    /* n - int(n * strength), Python's float product truncated: 100 * 0.29 is 28.999... */
    static const struct {
        int n;
        double strength;
        int first;
    } cases[] = {{10, 0.6, 4}, {10, 0.7, 3},   {10, 0.3, 7},  {100, 0.29, 72},
                 {10, 1.0, 0}, {50, 0.75, 13}, {3, 0.999, 1}, {1, 1.0, 0}};
    dc_noise_schedule sched;
    linear_schedule(&sched, 1000);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDIM);
        o.num_inference_steps = cases[k].n;
        dc_sampler s;
        ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDIM, &sched, &o), 0);
        int first = -1;
        ck_assert_msg(dc_sampler_img2img_start(&s, cases[k].strength, &first) == 0, "%s",
                      dc_error());
        ck_assert_msg(first == cases[k].first, "n %d strength %g: first %d, expected %d",
                      cases[k].n, cases[k].strength, first, cases[k].first);
        dc_sampler_free(&s);
    }
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDIM);
    o.num_inference_steps = 10;
    dc_sampler s;
    ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDIM, &sched, &o), 0);
    int first;
    ck_assert_int_ne(dc_sampler_img2img_start(&s, 0.05, &first), 0);
    ck_assert_msg(strstr(dc_error(), "img2img: strength 0.05 of 10 steps leaves no step to run"),
                  "%s", dc_error());
    const double bad[] = {0.0, -0.1, 1.5, NAN};
    for (int k = 0; k < 4; k++) {
        ck_assert_int_ne(dc_sampler_img2img_start(&s, bad[k], &first), 0);
        ck_assert_msg(strstr(dc_error(), "must lie in (0, 1]"), "%s", dc_error());
    }
    ck_assert_int_ne(dc_sampler_add_noise(&s, 10, NULL, NULL, NULL, 1), 0);
    ck_assert_msg(strstr(dc_error(), "add_noise: step 10 is outside [0, 10)"), "%s", dc_error());
    dc_sampler_free(&s);
    dc_noise_schedule_free(&sched);
}
END_TEST

/* ---- the noise contract ---- */

START_TEST(test_noise_per_image) {
    enum { PER = 37, N = 5 }; /* odd sizes: images straddle Philox blocks */
    uint64_t seed = tu_next();
    float batch[N * PER], one[PER], pair[2 * PER];
    dc_sampler_noise(batch, N, PER, seed, 0, DC_SAMPLER_DRAW_STEP(3));
    for (int k = 0; k < N; k++) {
        dc_sampler_noise(one, 1, PER, seed, (uint64_t)k, DC_SAMPLER_DRAW_STEP(3));
        ck_assert_msg(!memcmp(one, batch + k * PER, sizeof one), "image %d alone differs", k);
        for (int e = 0; e < PER; e++)
            ck_assert(one[e] == dc_rand_normal(seed, (uint64_t)k, 4 * PER + e));
    }
    dc_sampler_noise(pair, 2, PER, seed, 3, DC_SAMPLER_DRAW_STEP(3));
    ck_assert(!memcmp(pair, batch + 3 * PER, sizeof pair));
    /* other draws and seeds differ */
    dc_sampler_noise(one, 1, PER, seed, 0, DC_SAMPLER_DRAW_INIT);
    ck_assert(memcmp(one, batch, sizeof one));
    dc_sampler_noise(one, 1, PER, seed + 1, 0, DC_SAMPLER_DRAW_STEP(3));
    ck_assert(memcmp(one, batch, sizeof one));
}
END_TEST

/* A whole DDPM run (noise every step) of 3 images in one batch equals each image alone. */
START_TEST(test_run_independent_of_batch) {
    enum { PER = 29, N = 3 };
    uint64_t seed = tu_next();
    dc_noise_schedule sched;
    linear_schedule(&sched, 1000);
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDPM);
    o.num_inference_steps = 20;
    dc_sampler s;
    ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDPM, &sched, &o), 0);
    float x[N * PER], mo[N * PER], z[N * PER], alone[PER];
    for (int pass = 0; pass <= N; pass++) { /* pass 0: the batch; pass k: image k - 1 alone */
        int count = pass == 0 ? N : 1;
        uint64_t first = pass == 0 ? 0 : (uint64_t)(pass - 1);
        float *out = pass == 0 ? x : alone;
        int64_t numel = (int64_t)count * PER;
        dc_sampler_noise(out, count, PER, seed, first, DC_SAMPLER_DRAW_INIT);
        for (int i = 0; i < s.n; i++) {
            for (int64_t e = 0; e < numel; e++)
                mo[e] = 0.9f * out[e];
            if (dc_sampler_step_needs_noise(&s, i))
                dc_sampler_noise(z, count, PER, seed, first, DC_SAMPLER_DRAW_STEP(i));
            ck_assert_int_eq(dc_sampler_step(&s, i, mo, NULL, out, z, count, PER), 0);
        }
        if (pass > 0)
            ck_assert_msg(!memcmp(alone, x + (pass - 1) * PER, sizeof alone),
                          "image %d differs alone and in the batch", pass - 1);
    }
    dc_sampler_free(&s);
    dc_noise_schedule_free(&sched);
}
END_TEST

/* ---- state, guidance ---- */

/* The multistep state (DPM-Solver's previous x0; PNDM's counter, model outputs and
 * start sample, with PRK and without) starts over after a finished run and after a
 * reset. */
static void check_state_restarts(dc_sampler_kind kind, bool skip_prk_steps) {
    enum { PER = 23 };
    dc_noise_schedule sched;
    linear_schedule(&sched, 1000);
    dc_sampler_options o = dc_sampler_default_options(kind);
    o.num_inference_steps = 6;
    o.skip_prk_steps = skip_prk_steps;
    dc_sampler s;
    ck_assert_int_eq(dc_sampler_init(&s, kind, &sched, &o), 0);
    float start[PER], x[3][PER], mo[PER];
    for (int e = 0; e < PER; e++)
        start[e] = (float)tu_normal();
    int abandoned = 0;
    for (int run = 0; run < 3; run++) {
        memcpy(x[run], start, sizeof start);
        for (int i = 0; i < s.n; i++) {
            for (int e = 0; e < PER; e++)
                mo[e] = 0.3f * x[run][e] + 0.01f * (float)e;
            ck_assert_int_eq(dc_sampler_step(&s, i, mo, NULL, x[run], NULL, 1, PER), 0);
            if (run == 1 && i == 2 && !abandoned++) { /* abandon a run halfway, start over */
                dc_sampler_reset(&s);
                memcpy(x[run], start, sizeof start);
                i = -1;
            }
        }
    }
    ck_assert_msg(!memcmp(x[0], x[1], sizeof x[0]) && !memcmp(x[0], x[2], sizeof x[0]), "%s",
                  dc_sampler_kind_name(kind));
    dc_sampler_free(&s);
    dc_noise_schedule_free(&sched);
}

START_TEST(test_multistep_state) {
    check_state_restarts(DC_SAMPLER_DPMPP_2M, false);
    check_state_restarts(DC_SAMPLER_PNDM, false);
    check_state_restarts(DC_SAMPLER_PNDM, true);
}
END_TEST

START_TEST(test_guidance_combine) {
    enum { N = 131 };
    float u[N], c[N], out[N], alias[N];
    double want[N];
    float scale = (float)tu_uniform(1, 9);
    for (int e = 0; e < N; e++) {
        u[e] = (float)tu_normal();
        c[e] = (float)tu_normal();
        want[e] = u[e] + (double)scale * ((double)c[e] - u[e]);
    }
    dc_guidance_combine(out, u, c, scale, N);
    tu_assert_close(out, want, N, 1e-5, 1e-6, "guidance");
    memcpy(alias, c, sizeof alias);
    dc_guidance_combine(alias, u, alias, scale, N);
    ck_assert(!memcmp(alias, out, sizeof out));
}
END_TEST

/* Thresholding works per image: the same numbers as two images or as one differ; a run
 * may split them differently from step to step (the scratch grows). */
START_TEST(test_threshold_per_image) {
    enum { PER = 40 };
    dc_noise_schedule sched;
    linear_schedule(&sched, 1000);
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDIM);
    o.num_inference_steps = 4;
    o.thresholding = 1;
    o.sample_max_value = 1000.0;
    o.dynamic_thresholding_ratio = 0.6;
    dc_sampler s;
    ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDIM, &sched, &o), 0);
    float start[2 * PER], mo[2 * PER], two[2 * PER], one[2 * PER];
    for (int e = 0; e < 2 * PER; e++) {
        start[e] = (float)tu_normal() * (e < PER ? 1.0f : 3.0f);
        mo[e] = (float)tu_normal();
    }
    memcpy(two, start, sizeof two);
    memcpy(one, start, sizeof one);
    ck_assert_int_eq(dc_sampler_step(&s, 0, mo, NULL, one, NULL, 1, 2 * PER), 0);
    dc_sampler_free(&s); /* a fresh sampler: its scratch starts at one small image */
    ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDIM, &sched, &o), 0);
    ck_assert_int_eq(dc_sampler_step(&s, 0, mo, NULL, two, NULL, 2, PER), 0);
    ck_assert(memcmp(one, two, sizeof one));
    ck_assert_int_eq(dc_sampler_step(&s, 1, mo, NULL, two, NULL, 1, 2 * PER), 0);
    dc_sampler_free(&s);
    dc_noise_schedule_free(&sched);
}
END_TEST

/* ---- names, configs ---- */

START_TEST(test_names) {
    const char *kinds[] = {"ddpm", "ddim", "dpm++2m", "pndm", "euler", "euler_a", "lms"},
               *spacings[] = {"leading", "trailing", "linspace"};
    for (int k = 0; k < DC_SAMPLER_COUNT; k++) {
        dc_sampler_kind kind;
        ck_assert_int_eq(dc_sampler_kind_parse(kinds[k], &kind), 0);
        ck_assert_str_eq(dc_sampler_kind_name(kind), kinds[k]);
    }
    for (int k = 0; k < 3; k++) {
        dc_timestep_spacing spacing;
        ck_assert_int_eq(dc_timestep_spacing_parse(spacings[k], &spacing), 0);
        ck_assert_str_eq(dc_timestep_spacing_name(spacing), spacings[k]);
    }
    dc_sampler_kind kind;
    ck_assert_int_ne(dc_sampler_kind_parse("heun", &kind), 0);
    ck_assert_str_eq(dc_error(), "sampler 'heun' is not supported (expected 'ddpm', 'ddim', "
                                 "'dpm++2m', 'pndm', 'euler', 'euler_a' or 'lms')");
    dc_timestep_spacing spacing;
    ck_assert_int_ne(dc_timestep_spacing_parse("Leading", &spacing), 0);
    ck_assert_msg(strstr(dc_error(), "timestep_spacing 'Leading' is not supported"), "%s",
                  dc_error());
    dc_variance_type v;
    ck_assert_int_eq(dc_variance_type_parse("fixed_large", &v), 0);
    ck_assert_int_eq(v, DC_VARIANCE_FIXED_LARGE);
    ck_assert_int_eq(dc_variance_type_parse("learned_range", &v), 0);
    ck_assert_str_eq(dc_variance_type_name(v), "learned_range");
    ck_assert_int_ne(dc_variance_type_parse("fixed_large_log", &v), 0);
    ck_assert_str_eq(dc_error(), "variance_type 'fixed_large_log' is not supported: diffusers' "
                                 "DDPMScheduler takes the square root of its log variance (NaN)");
    ck_assert_int_ne(dc_variance_type_parse("learned_log", &v), 0);
    ck_assert_str_eq(dc_error(), "variance_type 'learned_log' is not supported (expected "
                                 "'fixed_small', 'fixed_small_log', 'fixed_large', 'learned' or "
                                 "'learned_range')");
    dc_final_sigmas_type fs;
    ck_assert_int_eq(dc_final_sigmas_type_parse("sigma_min", &fs), 0);
    ck_assert_str_eq(dc_final_sigmas_type_name(fs), "sigma_min");
    ck_assert_int_ne(dc_final_sigmas_type_parse(NULL, &fs), 0);
    ck_assert_str_eq(dc_sampler_kind_name(DC_SAMPLER_COUNT), "?");
}
END_TEST

START_TEST(test_config) {
    /* google/ddpm-cifar10-32's scheduler, read for ddpm and for ddim (from_config) */
    const char *ddpm = "{\"_class_name\": \"DDPMScheduler\", \"beta_end\": 0.02, "
                       "\"beta_schedule\": \"linear\", \"beta_start\": 0.0001, \"clip_sample\": "
                       "false, \"num_train_timesteps\": 1000, \"trained_betas\": null, "
                       "\"variance_type\": \"fixed_large\", \"timestep_spacing\": \"trailing\"}";
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDPM);
    ck_assert_msg(dc_sampler_options_parse_config(&o, DC_SAMPLER_DDPM, ddpm, "cfg") == 0, "%s",
                  dc_error());
    ck_assert(!o.clip_sample && o.variance_type == DC_VARIANCE_FIXED_LARGE &&
              o.timestep_spacing == DC_SPACING_TRAILING);
    o = dc_sampler_default_options(DC_SAMPLER_DPMPP_2M);
    ck_assert_int_eq(dc_sampler_options_parse_config(&o, DC_SAMPLER_DPMPP_2M, ddpm, "cfg"), 0);
    ck_assert(!o.clip_sample && o.timestep_spacing == DC_SPACING_TRAILING);
    const char *ddim = "{\"set_alpha_to_one\": false, \"steps_offset\": 1, \"clip_sample_range\": "
                       "2.5, \"thresholding\": false, \"variance_type\": \"learned\"}";
    o = dc_sampler_default_options(DC_SAMPLER_DDIM);
    ck_assert_int_eq(dc_sampler_options_parse_config(&o, DC_SAMPLER_DDIM, ddim, "cfg"), 0);
    ck_assert(!o.set_alpha_to_one && o.steps_offset == 1 && o.clip_sample_range == 2.5 &&
              o.clip_sample && o.timestep_spacing == DC_SPACING_LEADING);
    const char *dpm = "{\"algorithm_type\": \"deis\", \"solver_type\": \"logrho\", "
                      "\"solver_order\": 2, \"use_karras_sigmas\": false, \"lower_order_final\": "
                      "false, \"final_sigmas_type\": \"sigma_min\", \"variance_type\": null}";
    o = dc_sampler_default_options(DC_SAMPLER_DPMPP_2M);
    ck_assert_int_eq(dc_sampler_options_parse_config(&o, DC_SAMPLER_DPMPP_2M, dpm, "cfg"), 0);
    ck_assert(!o.lower_order_final && o.final_sigmas_type == DC_FINAL_SIGMAS_SIGMA_MIN);

    static const struct {
        dc_sampler_kind kind;
        const char *json, *message;
    } bad[] = {
        {DC_SAMPLER_DDPM, "{\"thresholding\": 1}", "cfg: thresholding must be true or false"},
        {DC_SAMPLER_DDIM, "{\"sample_max_value\": \"2\"}", "cfg: sample_max_value must be a number"},
        {DC_SAMPLER_DDPM, "{\"variance_type\": \"fixed_large_log\"}",
         "cfg: variance_type 'fixed_large_log' is not supported: diffusers' DDPMScheduler takes"},
        {DC_SAMPLER_DDPM, "{\"variance_type\": \"learned_log\"}",
         "cfg: variance_type 'learned_log' is not supported (expected 'fixed_small', "},
        {DC_SAMPLER_DDIM, "{\"timestep_spacing\": \"karras\"}",
         "cfg: timestep_spacing 'karras' is not supported"},
        {DC_SAMPLER_DDIM, "{\"steps_offset\": 1.5}", "cfg: steps_offset 1.5 must be a whole"},
        {DC_SAMPLER_DDIM, "{\"steps_offset\": -1}", "cfg: steps_offset -1 must be a whole"},
        {DC_SAMPLER_DDIM, "{\"clip_sample\": \"yes\"}", "cfg: clip_sample must be true or false"},
        {DC_SAMPLER_DDIM, "{\"clip_sample_range\": \"1\"}",
         "cfg: clip_sample_range must be a number"},
        {DC_SAMPLER_DPMPP_2M, "{\"use_karras_sigmas\": \"yes\"}",
         "cfg: use_karras_sigmas must be true or false"},
        {DC_SAMPLER_DPMPP_2M, "{\"use_exponential_sigmas\": true}",
         "cfg: use_exponential_sigmas is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"use_beta_sigmas\": true}", "cfg: use_beta_sigmas is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"use_flow_sigmas\": true}", "cfg: use_flow_sigmas is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"use_lu_lambdas\": true}", "cfg: use_lu_lambdas is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"euler_at_final\": true}", "cfg: euler_at_final is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"solver_order\": 3}", "cfg: solver_order 3 is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"algorithm_type\": \"sde-dpmsolver++\"}",
         "cfg: algorithm_type 'sde-dpmsolver++' is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"solver_type\": \"heun\"}",
         "cfg: solver_type 'heun' is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"variance_type\": \"learned_log\"}",
         "cfg: variance_type 'learned_log' is not supported"},
        {DC_SAMPLER_DPMPP_2M, "{\"lambda_min_clipped\": \"-inf\"}",
         "cfg: lambda_min_clipped must be a number"},
        {DC_SAMPLER_DPMPP_2M, "{\"lambda_min_clipped\": -Infinite}", "cfg:1:24: not valid JSON here"},
        {DC_SAMPLER_DPMPP_2M, "{\"final_sigmas_type\": \"max\"}",
         "cfg: final_sigmas_type 'max' is not supported"},
        {DC_SAMPLER_DPMPP_2M, "[1]", "cfg: not a JSON object"},
        {DC_SAMPLER_DDPM, "{\"clip_sample\": tru", "cfg:1:17: not valid JSON here"},
        {DC_SAMPLER_COUNT, "{}", "cfg: unknown sampler kind 7"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        o = dc_sampler_default_options(DC_SAMPLER_DDIM);
        o.steps_offset = 7;
        ck_assert_msg(dc_sampler_options_parse_config(&o, bad[k].kind, bad[k].json, "cfg") != 0,
                      "accepted %s", bad[k].json);
        ck_assert_msg(strstr(dc_error(), bad[k].message), "%s: %s", bad[k].json, dc_error());
        ck_assert_int_eq(o.steps_offset, 7); /* untouched on failure */
    }
}
END_TEST

/* diffusers' own DPMSolverMultistepScheduler config: lambda_min_clipped is -Infinity. */
START_TEST(test_config_from_diffusers) {
    char *text = dc_read_file("tests/fixtures/dpm_scheduler_config.json", 1 << 16, NULL);
    ck_assert_msg(text != NULL, "%s", dc_error());
    ck_assert_msg(strstr(text, "\"lambda_min_clipped\": -Infinity"), "%s", text);
    for (int kind = 0; kind < DC_SAMPLER_COUNT; kind++) {
        dc_sampler_options o = dc_sampler_default_options(kind);
        o.lambda_min_clipped = 0;
        ck_assert_msg(dc_sampler_options_parse_config(&o, kind, text, "dpm.json") == 0, "%s",
                      dc_error());
        ck_assert(o.lambda_min_clipped == (kind == DC_SAMPLER_DPMPP_2M ? -INFINITY : 0));
        ck_assert(!o.thresholding && !o.use_karras_sigmas && o.sample_max_value == 1.0);
    }
    dc_noise_schedule_config c;
    ck_assert_msg(dc_noise_schedule_config_parse(&c, text, "dpm.json") == 0, "%s", dc_error());
    free(text);
    const char *ddpm = "{\"thresholding\": true, \"dynamic_thresholding_ratio\": 0.9, "
                       "\"sample_max_value\": 2.5, \"variance_type\": \"learned_range\"}";
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDPM);
    ck_assert_int_eq(dc_sampler_options_parse_config(&o, DC_SAMPLER_DDPM, ddpm, "cfg"), 0);
    ck_assert(o.thresholding && o.dynamic_thresholding_ratio == 0.9 && o.sample_max_value == 2.5 &&
              o.variance_type == DC_VARIANCE_LEARNED_RANGE);
    const char *dpm = "{\"use_karras_sigmas\": true, \"lambda_min_clipped\": -5.1, "
                      "\"variance_type\": \"learned_range\", \"use_exponential_sigmas\": false}";
    o = dc_sampler_default_options(DC_SAMPLER_DPMPP_2M);
    ck_assert_int_eq(dc_sampler_options_parse_config(&o, DC_SAMPLER_DPMPP_2M, dpm, "cfg"), 0);
    ck_assert(o.use_karras_sigmas && o.lambda_min_clipped == -5.1);
}
END_TEST

/* rescale_betas_zero_snr: diffusers' betas and alphas_cumprod, the last exactly 1 and 0. */
START_TEST(test_zero_snr_schedule_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    c.rescale_betas_zero_snr = 1;
    dc_noise_schedule s;
    ck_assert_msg(dc_noise_schedule_init(&s, &c) == 0, "%s", dc_error());
    float *betas = fx_floats(&f, "betas.linear_zsnr", 1000), *acp = fx_floats(&f, "acp.linear_zsnr", 1000);
    for (int t = 0; t < 1000; t++) {
        /* torch's vectorised sqrt is an ulp off for a few values; 1 - a ratio of neighbours
         * turns that into a few ulps of 1 */
        ck_assert_msg(fabsf(s.betas[t] - betas[t]) <= 4e-7f, "beta %d: %.9g, diffusers %.9g", t,
                      s.betas[t], betas[t]);
        ck_assert_msg(fabsf(s.alphas_cumprod[t] - acp[t]) <= 1e-6f * acp[t] + 1e-9f,
                      "acp %d: %.9g, diffusers %.9g", t, s.alphas_cumprod[t], acp[t]);
    }
    ck_assert(s.betas[999] == 1.0f && s.alphas_cumprod[999] == 0.0f && acp[999] == 0.0f);
    /* an epsilon model has nothing to say at zero SNR: DDPM and DDIM refuse to start there */
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDPM);
    o.num_inference_steps = 10;
    o.timestep_spacing = DC_SPACING_TRAILING;
    expect_init_fail(DC_SAMPLER_DDPM, &s, &o, "ddpm: timestep 999 has zero SNR");
    o.eta = 0.5;
    expect_init_fail(DC_SAMPLER_DDIM, &s, &o, "ddim: timestep 999 has zero SNR");
    o = dc_sampler_default_options(DC_SAMPLER_PNDM); /* PNDM divides by acp whatever it predicts */
    o.timestep_spacing = DC_SPACING_TRAILING;
    o.skip_prk_steps = true;
    expect_init_fail(DC_SAMPLER_PNDM, &s, &o, "pndm: timestep 999 has zero SNR");
    o = dc_sampler_default_options(DC_SAMPLER_DPMPP_2M); /* DPM-Solver's last acp is 2^-24 */
    o.timestep_spacing = DC_SPACING_TRAILING;
    dc_sampler d;
    ck_assert_msg(dc_sampler_init(&d, DC_SAMPLER_DPMPP_2M, &s, &o) == 0, "%s", dc_error());
    ck_assert(d.alphas_cumprod[999] == 0x1p-24f && s.alphas_cumprod[999] == 0.0f);
    ck_assert_float_eq(d.sigmas[0], sqrtf((1.0f - 0x1p-24f) / 0x1p-24f));
    dc_sampler_free(&d);
    dc_noise_schedule one;
    c.num_train_timesteps = 1;
    ck_assert_int_ne(dc_noise_schedule_init(&one, &c), 0);
    ck_assert_msg(strstr(dc_error(), "rescale_betas_zero_snr needs num_train_timesteps >= 2"), "%s",
                  dc_error());
    free(betas);
    free(acp);
    dc_noise_schedule_free(&s);
    dc_st_close(&f);
}
END_TEST

/* Karras sigmas of the cosine schedule: timesteps truncated, not rounded, and repeated. */
START_TEST(test_karras_cosine_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    c.beta_schedule = DC_BETA_SQUAREDCOS_CAP_V2;
    dc_noise_schedule sched;
    ck_assert_msg(dc_noise_schedule_init(&sched, &c) == 0, "%s", dc_error());
    float *acp = fx_floats(&f, "acp.squaredcos_cap_v2", 1000);
    memcpy(sched.alphas_cumprod, acp, 1000 * sizeof(float));
    for (int n = 10; n <= 20; n += 10) {
        dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DPMPP_2M);
        o.num_inference_steps = n;
        o.use_karras_sigmas = 1;
        dc_sampler s;
        ck_assert_msg(dc_sampler_init(&s, DC_SAMPLER_DPMPP_2M, &sched, &o) == 0, "%s", dc_error());
        char name[64];
        int len;
        snprintf(name, sizeof name, "karras_ts.squaredcos_cap_v2.%d", n);
        int64_t *ts = fx_ints(&f, name, &len);
        snprintf(name, sizeof name, "karras_sigmas.squaredcos_cap_v2.%d", n);
        float *sigmas = fx_floats(&f, name, n + 1);
        ck_assert_int_eq(len, n);
        ck_assert(ts[0] == ts[1]); /* the case this covers */
        for (int i = 0; i < n; i++)
            ck_assert_msg(s.timesteps[i] == ts[i], "n %d: timestep %d is %lld, diffusers %lld", n, i,
                          (long long)s.timesteps[i], (long long)ts[i]);
        for (int i = 0; i <= n; i++)
            ck_assert_msg(fabsf(s.sigmas[i] - sigmas[i]) <= 1e-6f * sigmas[i], "n %d: sigma %d is %.9g, diffusers %.9g",
                          n, i, s.sigmas[i], sigmas[i]);
        free(ts);
        free(sigmas);
        dc_sampler_free(&s);
    }
    free(acp);
    dc_noise_schedule_free(&sched);
    dc_st_close(&f);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_bad_options) {
    dc_noise_schedule sched;
    linear_schedule(&sched, 1000);
    dc_sampler_options o;
#define WITH(kind, field, value, message)                                                          \
    do {                                                                                           \
        o = dc_sampler_default_options(kind);                                                      \
        o.num_inference_steps = 10;                                                                \
        o.field = value;                                                                           \
        expect_init_fail(kind, &sched, &o, message);                                               \
    } while (0)
    WITH(DC_SAMPLER_DDPM, num_inference_steps, 0,
         "ddpm: num_inference_steps 0 must lie in [1, 1000] (num_train_timesteps)");
    WITH(DC_SAMPLER_DDIM, num_inference_steps, 1001, "ddim: num_inference_steps 1001 must lie");
    WITH(DC_SAMPLER_DPMPP_2M, num_inference_steps, -3, "dpm++2m: num_inference_steps -3");
    WITH(DC_SAMPLER_DDIM, timestep_spacing, DC_SPACING_COUNT, "ddim: unknown timestep_spacing 3");
    WITH(DC_SAMPLER_DDPM, variance_type, (dc_variance_type)7, "variance_type 7");
    WITH(DC_SAMPLER_DPMPP_2M, final_sigmas_type, (dc_final_sigmas_type)-1, "final_sigmas_type -1");
    WITH(DC_SAMPLER_DDIM, eta, -0.5, "ddim: eta -0.5 must be finite and >= 0");
    WITH(DC_SAMPLER_DDIM, eta, NAN, "must be finite and >= 0");
    WITH(DC_SAMPLER_DDIM, eta, INFINITY, "must be finite and >= 0");
    WITH(DC_SAMPLER_DDIM, eta, 50.0, "ddim: eta 50 is too large: at step 0 (timestep 900)");
    WITH(DC_SAMPLER_DDPM, eta, 0.5, "ddpm: eta 0.5 applies to ddim only");
    WITH(DC_SAMPLER_DPMPP_2M, eta, 1.0, "dpm++2m: eta 1 applies to ddim only");
    WITH(DC_SAMPLER_DPMPP_2M, clip_sample, 1, "dpm++2m: clip_sample applies to ddpm and ddim");
    WITH(DC_SAMPLER_DDIM, clip_sample_range, 0.0, "ddim: clip_sample_range 0 must be positive");
    WITH(DC_SAMPLER_DDPM, clip_sample_range, NAN, "clip_sample_range nan must be positive");
    WITH(DC_SAMPLER_DDPM, steps_offset, -1, "ddpm: steps_offset -1 must lie in [0, 1000)");
    WITH(DC_SAMPLER_DDIM, steps_offset, 101,
         "ddim: 10 leading steps with steps_offset 101 put timestep 1001 outside [0, 1000)");
    o = dc_sampler_default_options(DC_SAMPLER_DPMPP_2M);
    o.num_inference_steps = 1000;
    expect_init_fail(DC_SAMPLER_DPMPP_2M, &sched, &o,
                     "dpm++2m: 1000 linspace steps of 1000 repeat timestep");
    o.num_inference_steps = 10;
    expect_init_fail(DC_SAMPLER_COUNT, &sched, &o, "sampler: unknown kind 7");
    expect_init_fail(DC_SAMPLER_DDIM, NULL, &o, "ddim: the noise schedule is not initialised");
    dc_noise_schedule empty = {0};
    expect_init_fail(DC_SAMPLER_DDIM, &empty, &o, "ddim: the noise schedule is not initialised");
    o = dc_sampler_default_options(DC_SAMPLER_DDPM);
    o.thresholding = 1;
    o.dynamic_thresholding_ratio = 1.5;
    expect_init_fail(DC_SAMPLER_DDPM, &sched, &o, "ddpm: dynamic_thresholding_ratio 1.5 must lie in [0, 1]");
    o.dynamic_thresholding_ratio = 0.9;
    o.sample_max_value = 0;
    expect_init_fail(DC_SAMPLER_DDPM, &sched, &o, "ddpm: sample_max_value 0 must be positive and finite");
    WITH(DC_SAMPLER_DPMPP_2M, lambda_min_clipped, NAN, "dpm++2m: lambda_min_clipped is NaN");
    o = dc_sampler_default_options(DC_SAMPLER_DPMPP_2M);
    o.lambda_min_clipped = INFINITY;
    o.timestep_spacing = DC_SPACING_TRAILING;
    expect_init_fail(DC_SAMPLER_DPMPP_2M, &sched, &o, "dpm++2m: lambda_min_clipped inf leaves no trailing timestep");
    o.timestep_spacing = DC_SPACING_LINSPACE;
    expect_init_fail(DC_SAMPLER_DPMPP_2M, &sched, &o, "outside [0, 1000)");
    /* eta 1 is fine everywhere; and a sampler left empty by a failure frees cleanly */
    o = dc_sampler_default_options(DC_SAMPLER_DDIM);
    o.eta = 1.0;
    o.set_alpha_to_one = 0;
    dc_sampler s;
    ck_assert_msg(dc_sampler_init(&s, DC_SAMPLER_DDIM, &sched, &o) == 0, "%s", dc_error());
    dc_sampler_free(&s);
    dc_sampler_free(NULL);
#undef WITH
    dc_noise_schedule_free(&sched);
}
END_TEST

START_TEST(test_bad_steps) {
    dc_noise_schedule sched;
    linear_schedule(&sched, 1000);
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDPM);
    o.num_inference_steps = 10;
    dc_sampler s;
    ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDPM, &sched, &o), 0);
    float x[8] = {0}, mo[8] = {0}, z[8] = {0};
    ck_assert_int_ne(dc_sampler_step(&s, 10, mo, NULL, x, z, 1, 8), 0);
    ck_assert_str_eq(dc_error(), "ddpm: step 10 is outside [0, 10)");
    ck_assert_int_ne(dc_sampler_step(&s, 0, mo, NULL, x, NULL, 1, 8), 0);
    ck_assert_str_eq(dc_error(), "ddpm: step 0 (timestep 900) adds noise: pass it");
    ck_assert_int_ne(dc_sampler_step(&s, 0, NULL, NULL, x, z, 1, 8), 0);
    ck_assert_msg(strstr(dc_error(), "needs a model output and a sample"), "%s", dc_error());
    ck_assert_int_ne(dc_sampler_step(&s, 0, mo, NULL, x, z, 1, 0), 0);
    ck_assert_int_eq(dc_sampler_step(&s, 0, mo, NULL, x, z, 1, 8), 0);
    ck_assert_int_ne(dc_sampler_step(&s, 2, mo, NULL, x, z, 1, 8), 0);
    ck_assert_str_eq(
        dc_error(), "ddpm: step 2 after step 0; steps run in order (dc_sampler_reset starts over)");
    ck_assert_int_ne(dc_sampler_step(&s, 1, mo, NULL, x, z, 1, 7), 0);
    ck_assert_str_eq(dc_error(), "ddpm: step 1 has 7 elements, the steps before it 8");
    ck_assert_int_eq(dc_sampler_step(&s, 1, mo, NULL, x, z, 1, 8), 0);
    /* the last step (timestep 0) takes no noise; img2img may start anywhere after a reset */
    ck_assert(!dc_sampler_step_needs_noise(&s, 9) && dc_sampler_step_needs_noise(&s, 8));
    ck_assert(!dc_sampler_step_needs_noise(&s, -1) && !dc_sampler_step_needs_noise(&s, 10));
    dc_sampler_reset(&s);
    ck_assert_int_eq(dc_sampler_step(&s, 9, mo, NULL, x, NULL, 1, 5), 0);
    ck_assert_int_eq(dc_sampler_step(&s, 0, mo, NULL, x, z, 1, 8), 0); /* the run ended: a new one */
    dc_sampler_free(&s);
    ck_assert_int_ne(dc_sampler_step(&s, 0, mo, NULL, x, z, 1, 8), 0);
    ck_assert_str_eq(dc_error(), "sampler: not initialised");
    dc_noise_schedule_free(&sched);
}
END_TEST

int main(void) {
    Suite *s = suite_create("samplers");
    TCase *tc = tu_tcase(s, "diffusers", 60);
    tcase_add_test(tc, test_trajectories_vs_diffusers);
    tcase_add_test(tc, test_timesteps_vs_diffusers);
    tcase_add_test(tc, test_add_noise_vs_diffusers);
    tcase_add_test(tc, test_zero_snr_schedule_vs_diffusers);
    tcase_add_test(tc, test_karras_cosine_vs_diffusers);
    tcase_add_test(tc, test_sd_schedulers_vs_diffusers);
    tcase_add_test(tc, test_sd_img2img_vs_diffusers);
    tcase_add_test(tc, test_img2img_start);
    tc = tu_tcase(s, "noise", 60);
    tcase_add_test(tc, test_noise_per_image);
    tcase_add_test(tc, test_run_independent_of_batch);
    tc = tu_tcase(s, "state", 60);
    tcase_add_test(tc, test_multistep_state);
    tcase_add_test(tc, test_guidance_combine);
    tcase_add_test(tc, test_threshold_per_image);
    tc = tu_tcase(s, "config", 60);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_config_from_diffusers);
    tcase_add_test(tc, test_bad_options);
    tcase_add_test(tc, test_bad_steps);
    tcase_add_test(tc, test_sd_config_errors);
    return tu_run(s);
}
