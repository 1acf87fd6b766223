/* Samplers: names, options, scheduler configs, timesteps and sigmas, and
 * diffusers' DDPM, DDIM and DPM-Solver++(2M) steps (see samplers.h); PNDM's
 * steps are in samplers_pndm.c, Euler's and LMS' in samplers_sigma.c. Scalars and
 * elements are float32 with one rounding per torch operation, in diffusers'
 * order: keep each expression's grouping when editing. */
#include "samplers.h"
#include "samplers_internal.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/rng.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- names ---- */

static const char *const kind_names[DC_SAMPLER_COUNT] = {"ddpm", "ddim",  "dpm++2m", "pndm",
                                                          "euler", "euler_a", "lms"};
static const char *const class_names[DC_SAMPLER_COUNT] = {
    "DDPMScheduler",  "DDIMScheduler",          "DPMSolverMultistepScheduler",
    "PNDMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler"};
static const char *const spacing_names[DC_SPACING_COUNT] = {"leading", "trailing", "linspace"};
static const char *const variance_names[DC_VARIANCE_COUNT] = {"fixed_small", "fixed_small_log",
                                                               "fixed_large", "learned",
                                                               "learned_range"};
static const char *const final_sigmas_names[DC_FINAL_SIGMAS_COUNT] = {"zero", "sigma_min"};

/* The index of `name` in names[count]; else an error listing them all. */
static int parse_name(const char *what, const char *name, const char *const *names, int count,
                      int *out) {
    char list[256] = "";
    size_t len = 0;
    for (int k = 0; k < count; k++) {
        if (name && !strcmp(name, names[k])) {
            *out = k;
            return 0;
        }
        const char *sep = k == 0 ? "" : k == count - 1 ? " or " : ", ";
        len += (size_t)snprintf(list + len, sizeof list - len, "%s'%s'", sep, names[k]);
    }
    return dc_fail("%s '%s' is not supported (expected %s)", what, name ? name : "(null)", list);
}

static const char *name_of(const char *const *names, int count, int v) {
    return v >= 0 && v < count ? names[v] : "?";
}

int dc_sampler_kind_parse(const char *name, dc_sampler_kind *out) {
    int v;
    if (parse_name("sampler", name, kind_names, DC_SAMPLER_COUNT, &v))
        return -1;
    *out = (dc_sampler_kind)v;
    return 0;
}

const char *dc_sampler_kind_name(dc_sampler_kind k) {
    return name_of(kind_names, DC_SAMPLER_COUNT, (int)k);
}

int dc_timestep_spacing_parse(const char *name, dc_timestep_spacing *out) {
    int v;
    if (parse_name("timestep_spacing", name, spacing_names, DC_SPACING_COUNT, &v))
        return -1;
    *out = (dc_timestep_spacing)v;
    return 0;
}

const char *dc_timestep_spacing_name(dc_timestep_spacing s) {
    return name_of(spacing_names, DC_SPACING_COUNT, (int)s);
}

int dc_variance_type_parse(const char *name, dc_variance_type *out) {
    int v;
    if (name && !strcmp(name, "fixed_large_log"))
        return dc_fail("variance_type 'fixed_large_log' is not supported: diffusers' DDPMScheduler "
                       "takes the square root of its log variance (NaN)");
    if (parse_name("variance_type", name, variance_names, DC_VARIANCE_COUNT, &v))
        return -1;
    *out = (dc_variance_type)v;
    return 0;
}

const char *dc_variance_type_name(dc_variance_type v) {
    return name_of(variance_names, DC_VARIANCE_COUNT, (int)v);
}

int dc_final_sigmas_type_parse(const char *name, dc_final_sigmas_type *out) {
    int v;
    if (parse_name("final_sigmas_type", name, final_sigmas_names, DC_FINAL_SIGMAS_COUNT, &v))
        return -1;
    *out = (dc_final_sigmas_type)v;
    return 0;
}

const char *dc_final_sigmas_type_name(dc_final_sigmas_type f) {
    return name_of(final_sigmas_names, DC_FINAL_SIGMAS_COUNT, (int)f);
}

/* ---- options ---- */

/* The kinds that step in sigma (Karras et al.'s formulation). */
static bool is_euler(dc_sampler_kind kind) {
    return kind == DC_SAMPLER_EULER || kind == DC_SAMPLER_EULER_A || kind == DC_SAMPLER_LMS;
}

/* The kinds with clip_sample, and with dynamic thresholding. */
static bool clips(dc_sampler_kind kind) {
    return kind == DC_SAMPLER_DDPM || kind == DC_SAMPLER_DDIM;
}

static bool thresholds(dc_sampler_kind kind) {
    return clips(kind) || kind == DC_SAMPLER_DPMPP_2M;
}

dc_sampler_options dc_sampler_default_options(dc_sampler_kind kind) {
    bool linspace = kind == DC_SAMPLER_DPMPP_2M || is_euler(kind);
    return (dc_sampler_options){
        .num_inference_steps = kind == DC_SAMPLER_DDPM ? 1000 : 50,
        .timestep_spacing = linspace ? DC_SPACING_LINSPACE : DC_SPACING_LEADING,
        .steps_offset = 0,
        .clip_sample = clips(kind),
        .clip_sample_range = 1.0,
        .variance_type = DC_VARIANCE_FIXED_SMALL,
        .eta = 0.0,
        .set_alpha_to_one = kind != DC_SAMPLER_PNDM,
        .skip_prk_steps = 0,
        .thresholding = 0,
        .dynamic_thresholding_ratio = 0.995,
        .sample_max_value = 1.0,
        .lower_order_final = 1,
        .final_sigmas_type = DC_FINAL_SIGMAS_ZERO,
        .use_karras_sigmas = 0,
        .lambda_min_clipped = -INFINITY,
    };
}

/* ---- scheduler_config.json ---- */

/* A string key that must hold one of `allowed` (diffusers' aliases included) when set. */
static int check_string(const cJSON *root, const char *key, const char *where,
                        const char *const *allowed, int count) {
    const char *v = NULL;
    int unused;
    if (dc_json_get_string(root, key, where, &v))
        return -1;
    return v && parse_name(key, v, allowed, count, &unused) ? dc_fail_prefix(where) : 0;
}

/* A boolean key that changes the sampler in a way we do not build: false or unset only. */
static int check_false(const cJSON *root, const char *key, const char *where) {
    bool on = false;
    if (dc_json_get_bool(root, key, where, &on))
        return -1;
    return on ? dc_fail("%s: %s is not supported", where, key) : 0;
}

/* What DPMSolverMultistepScheduler reads beyond what we implement: refused unless it
 * says order 2, dpmsolver++ (or "deis", which diffusers maps to it), midpoint (or its
 * aliases), and plain or Karras sigmas. Any of DDPM's variance types is fine: a
 * learned one only means the model's first half is the prediction. */
static int check_dpm_config(const cJSON *root, const char *where) {
    static const char *const algorithms[] = {"dpmsolver++", "deis"};
    static const char *const solvers[] = {"midpoint", "logrho", "bh1", "bh2"};
    static const char *const variances[] = {"fixed_small", "fixed_small_log", "fixed_large",
                                            "fixed_large_log", "learned", "learned_range"};
    double order = 2;
    if (dc_json_get_number(root, "solver_order", where, &order))
        return -1;
    if (order != 2)
        return dc_fail("%s: solver_order %g is not supported (dpm++2m is order 2)", where, order);
    return check_string(root, "algorithm_type", where, algorithms, 2) ||
                   check_string(root, "solver_type", where, solvers, 4) ||
                   check_string(root, "variance_type", where, variances, 6) ||
                   check_false(root, "use_exponential_sigmas", where) ||
                   check_false(root, "use_beta_sigmas", where) ||
                   check_false(root, "use_flow_sigmas", where) ||
                   check_false(root, "use_lu_lambdas", where) ||
                   check_false(root, "euler_at_final", where)
               ? -1
               : 0;
}

/* A number key that changes the sampler in a way we do not build: null or unset only. */
static int check_null(const cJSON *root, const char *key, const char *where) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return v && !cJSON_IsNull(v) ? dc_fail("%s: %s is not supported (only the schedule's own "
                                           "sigmas bound Karras sigmas)",
                                           where, key)
                                 : 0;
}

/* What EulerDiscreteScheduler reads beyond what we implement. */
static int check_euler_config(const cJSON *root, const char *where) {
    static const char *const interpolations[] = {"linear"};
    static const char *const timestep_types[] = {"discrete"};
    return check_string(root, "interpolation_type", where, interpolations, 1) ||
                   check_string(root, "timestep_type", where, timestep_types, 1) ||
                   check_false(root, "use_exponential_sigmas", where) ||
                   check_false(root, "use_beta_sigmas", where) ||
                   check_null(root, "sigma_min", where) || check_null(root, "sigma_max", where)
               ? -1
               : 0;
}

static int parse_enum_key(const cJSON *root, const char *key, const char *where,
                          const char *const *names, int count, int *out) {
    const char *v = NULL;
    if (dc_json_get_string(root, key, where, &v))
        return -1;
    return v && parse_name(key, v, names, count, out) ? dc_fail_prefix(where) : 0;
}

/* DDPM's variance_type, with dc_variance_type_parse's reason for fixed_large_log. */
static int parse_variance_type(const cJSON *root, const char *where, int *out) {
    const char *v = NULL;
    dc_variance_type t = DC_VARIANCE_FIXED_SMALL; /* set when the parse succeeds; GCC cannot tell */
    if (dc_json_get_string(root, "variance_type", where, &v))
        return -1;
    if (v && dc_variance_type_parse(v, &t))
        return dc_fail_prefix(where);
    if (v)
        *out = (int)t;
    return 0;
}

/* The keys only some classes read (the others ignore them, as from_config does). */
static int parse_kind_keys(dc_sampler_options *o, dc_sampler_kind kind, const cJSON *root,
                           const char *where, int *variance, int *final_sigmas) {
    if (thresholds(kind) &&
        (dc_json_get_bool(root, "thresholding", where, &o->thresholding) ||
         dc_json_get_number(root, "dynamic_thresholding_ratio", where,
                            &o->dynamic_thresholding_ratio) ||
         dc_json_get_number(root, "sample_max_value", where, &o->sample_max_value)))
        return -1;
    if (clips(kind) &&
        (dc_json_get_bool(root, "clip_sample", where, &o->clip_sample) ||
         dc_json_get_number(root, "clip_sample_range", where, &o->clip_sample_range)))
        return -1;
    if ((kind == DC_SAMPLER_DDIM || kind == DC_SAMPLER_PNDM) &&
        dc_json_get_bool(root, "set_alpha_to_one", where, &o->set_alpha_to_one))
        return -1;
    if ((kind == DC_SAMPLER_DPMPP_2M || kind == DC_SAMPLER_EULER || kind == DC_SAMPLER_LMS) &&
        dc_json_get_bool(root, "use_karras_sigmas", where, &o->use_karras_sigmas))
        return -1;
    if ((kind == DC_SAMPLER_DPMPP_2M || kind == DC_SAMPLER_EULER) &&
        parse_enum_key(root, "final_sigmas_type", where, final_sigmas_names,
                       DC_FINAL_SIGMAS_COUNT, final_sigmas))
        return -1;
    if ((kind == DC_SAMPLER_PNDM || kind == DC_SAMPLER_LMS) &&
        check_false(root, "rescale_betas_zero_snr", where))
        return -1;
    switch (kind) {
    case DC_SAMPLER_DDPM:
        return parse_variance_type(root, where, variance);
    case DC_SAMPLER_DPMPP_2M:
        return check_dpm_config(root, where) ||
                       dc_json_get_bool(root, "lower_order_final", where, &o->lower_order_final) ||
                       dc_json_get_number(root, "lambda_min_clipped", where, &o->lambda_min_clipped)
                   ? -1
                   : 0;
    case DC_SAMPLER_PNDM:
        return dc_json_get_bool(root, "skip_prk_steps", where, &o->skip_prk_steps);
    case DC_SAMPLER_EULER:
        return check_euler_config(root, where);
    case DC_SAMPLER_LMS:
        return check_false(root, "use_exponential_sigmas", where) ||
                       check_false(root, "use_beta_sigmas", where)
                   ? -1
                   : 0;
    default:
        return 0;
    }
}

static int parse_config_root(dc_sampler_options *o, dc_sampler_kind kind, const cJSON *root,
                             const char *where) {
    if (!cJSON_IsObject(root))
        return dc_fail("%s: not a JSON object", where);
    int spacing = (int)o->timestep_spacing, variance = (int)o->variance_type;
    int final_sigmas = (int)o->final_sigmas_type;
    double offset = (double)o->steps_offset;
    if (parse_enum_key(root, "timestep_spacing", where, spacing_names, DC_SPACING_COUNT,
                       &spacing) ||
        dc_json_get_number(root, "steps_offset", where, &offset))
        return -1;
    if (!(offset >= 0 && offset <= 1e9 && offset == floor(offset)))
        return dc_fail("%s: steps_offset %g must be a whole number in [0, 1e9]", where, offset);
    if (parse_kind_keys(o, kind, root, where, &variance, &final_sigmas))
        return -1;
    o->timestep_spacing = (dc_timestep_spacing)spacing;
    o->variance_type = (dc_variance_type)variance;
    o->final_sigmas_type = (dc_final_sigmas_type)final_sigmas;
    o->steps_offset = (int64_t)offset;
    return 0;
}

int dc_sampler_options_parse_config(dc_sampler_options *o, dc_sampler_kind kind, const char *json,
                                    const char *where) {
    if ((unsigned)kind >= DC_SAMPLER_COUNT)
        return dc_fail("%s: unknown sampler kind %d", where, (int)kind);
    cJSON *root = dc_json_parse(json, strlen(json), where);
    if (!root)
        return -1;
    dc_sampler_options parsed = *o; /* o changes only when every key is good */
    int rc = parse_config_root(&parsed, kind, root, where);
    cJSON_Delete(root);
    if (!rc)
        *o = parsed;
    return rc;
}

int dc_sampler_kind_from_config(const char *json, const char *where, dc_sampler_kind *out) {
    cJSON *root = dc_json_parse(json, strlen(json), where);
    if (!root)
        return -1;
    const char *name = NULL;
    int k = -1, rc = cJSON_IsObject(root) ? dc_json_get_string(root, "_class_name", where, &name)
                                          : dc_fail("%s: not a JSON object", where);
    if (!rc && !name)
        rc = dc_fail("%s: no _class_name: which scheduler is it?", where);
    if (!rc && parse_name("scheduler class", name, class_names, DC_SAMPLER_COUNT, &k))
        rc = dc_fail_prefix(where);
    cJSON_Delete(root);
    if (!rc)
        *out = (dc_sampler_kind)k;
    return rc;
}

/* ---- timesteps, as numpy computes them in each class's set_timesteps ---- */

/* Element k of np.linspace(0, stop, num): k * (stop / (num - 1)), the last exactly stop. */
double dc_sampler_np_linspace(double stop, int64_t num, int64_t k) {
    if (num == 1)
        return 0.0;
    return k == num - 1 ? stop : (double)k * (stop / (double)(num - 1));
}

/* Element k of np.arange(start, 0, -step): numpy stores start and start - step, then
 * fills start + k * delta with delta the difference of those two. */
static double np_arange_down(double start, double step, int64_t k) {
    double next = start + -step;
    return k == 0 ? start : k == 1 ? next : start + (double)k * (next - start);
}

/* DPMSolverMultistepScheduler's last_timestep: T less the timesteps whose lambda
 * (log sqrt(acp) - log sqrt(1 - acp), float32) lies below lambda_min_clipped. */
static int64_t dpm_last_timestep(const dc_sampler *s) {
    int64_t last = s->T;
    while (last > 0) {
        float a = s->alphas_cumprod[last - 1];
        if (!((double)(logf(sqrtf(a)) - logf(sqrtf(1.0f - a))) < s->opt.lambda_min_clipped))
            break;
        last--;
    }
    return last;
}

/* The timesteps, descending, for the spacing; returns how many there are: n, or
 * fewer for dpm++2m's trailing steps below lambda_min_clipped. DPM-Solver spaces
 * n + 1 points and drops the last (leading, linspace); rint rounds half to even
 * as numpy's round does. */
int dc_sampler_spaced_timesteps(const dc_sampler *s, int64_t *out) {
    const dc_sampler_options *o = &s->opt;
    int n = o->num_inference_steps;
    bool dpm = s->kind == DC_SAMPLER_DPMPP_2M;
    int64_t num = n + dpm, T = s->T, last = dpm ? dpm_last_timestep(s) : T;
    if (o->timestep_spacing == DC_SPACING_TRAILING) { /* np.arange's length, at most n */
        double len = ceil((double)last / ((double)T / n));
        n = len < n ? (int)len : n;
    }
    for (int k = 0; k < n; k++) {
        switch (o->timestep_spacing) {
        case DC_SPACING_LEADING:
            out[k] = (num - 1 - k) * (last / num) + o->steps_offset;
            break;
        case DC_SPACING_TRAILING:
            out[k] = (int64_t)rint(np_arange_down((double)last, (double)T / n, k)) - 1;
            break;
        default:
            out[k] = (int64_t)rint(dc_sampler_np_linspace((double)(last - 1), num, num - 1 - k));
            break;
        }
    }
    return n;
}

static int check_timesteps(const dc_sampler *s) {
    const char *spacing = dc_timestep_spacing_name(s->opt.timestep_spacing);
    if (s->n < 1)
        return dc_fail("%s: lambda_min_clipped %g leaves no %s timestep",
                       dc_sampler_kind_name(s->kind), s->opt.lambda_min_clipped, spacing);
    for (int k = 0; k < s->n; k++) {
        if (s->timesteps[k] < 0 || s->timesteps[k] >= s->T)
            return dc_fail("%s: %d %s steps with steps_offset %lld put timestep %lld outside "
                           "[0, %lld)",
                           dc_sampler_kind_name(s->kind), s->n, spacing,
                           (long long)s->opt.steps_offset, (long long)s->timesteps[k],
                           (long long)s->T);
        if (k > 0 && s->timesteps[k] >= s->timesteps[k - 1] &&
            !(s->timesteps[k] == s->timesteps[k - 1] && s->opt.use_karras_sigmas))
            return dc_fail("%s: %d %s steps of %lld repeat timestep %lld; use fewer steps",
                           dc_sampler_kind_name(s->kind), s->n, spacing, (long long)s->T,
                           (long long)s->timesteps[k]);
    }
    return 0;
}

/* ---- DPM-Solver's sigmas ---- */

/* DPMSolverMultistepScheduler._sigma_to_alpha_sigma_t. */
static void alpha_sigma(float sigma, float *alpha, float *sigma_t) {
    float a = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *alpha = a;
    *sigma_t = sigma * a;
}

static float lambda_of(float sigma) {
    float a, s;
    alpha_sigma(sigma, &a, &s);
    return logf(a) - logf(s);
}

float dc_sampler_sigma_at(const dc_sampler *s, int64_t t) {
    float a = s->alphas_cumprod[t];
    return sqrtf((1.0f - a) / a);
}

/* _sigma_to_t: the timestep of `sigma` interpolated linearly in log sigma between
 * the two training timesteps around it (numpy: log_sigmas float32, the rest double,
 * low - high float32). */
double dc_sampler_sigma_to_t(const dc_sampler *s, double sigma) {
    double log_sigma = log(fmax(sigma, 1e-10));
    int64_t low = 0;
    for (int64_t t = 0; t < s->T; t++) /* the last t with log_sigmas[t] <= log_sigma */
        if (log_sigma - (double)logf(dc_sampler_sigma_at(s, t)) >= 0)
            low = t;
    low = low < s->T - 2 ? low : s->T - 2;
    float lo = logf(dc_sampler_sigma_at(s, low)), hi = logf(dc_sampler_sigma_at(s, low + 1));
    double w = ((double)lo - log_sigma) / (double)(lo - hi);
    w = w > 0 ? (w < 1 ? w : 1) : 0; /* np.clip; NaN (lo == hi) as 0, not an undefined cast */
    return (1 - w) * (double)low + w * (double)(low + 1);
}

double dc_sampler_karras_sigma(double sigma_min, double sigma_max, int n, int i) {
    double lo = pow(sigma_min, 1.0 / 7.0), hi = pow(sigma_max, 1.0 / 7.0);
    return pow(hi + dc_sampler_np_linspace(1.0, n, i) * (lo - hi), 7.0);
}

/* DPM-Solver's Karras sigmas (between the sigmas of timesteps 0 and T - 1),
 * the timesteps from sigma_to_t: rounded, except that diffusers leaves
 * squaredcos_cap_v2's unrounded and int64 truncates them. They replace the
 * spacing's timesteps (and lambda_min_clipped's cut): n of them. */
static int make_karras(dc_sampler *s, dc_beta_schedule beta) {
    s->n = s->opt.num_inference_steps;
    double lo = (double)dc_sampler_sigma_at(s, 0), hi = (double)dc_sampler_sigma_at(s, s->T - 1);
    for (int i = 0; i < s->n; i++) {
        double sigma = dc_sampler_karras_sigma(lo, hi, s->n, i);
        double t = dc_sampler_sigma_to_t(s, sigma);
        s->sigmas[i] = (float)sigma;
        s->timesteps[i] = (int64_t)(beta == DC_BETA_SQUAREDCOS_CAP_V2 ? t : rint(t));
    }
    return s->n;
}

/* The sigmas of the steps (Karras' own, else those of the timesteps, which
 * numpy's interp reads back exactly), then the final one. */
static void make_sigmas(dc_sampler *s) {
    for (int i = 0; i < s->n && !s->opt.use_karras_sigmas; i++)
        s->sigmas[i] = dc_sampler_sigma_at(s, s->timesteps[i]);
    bool zero = s->opt.final_sigmas_type == DC_FINAL_SIGMAS_ZERO;
    s->sigmas[s->n] = zero ? 0.0f : dc_sampler_sigma_at(s, 0);
}

/* ---- per-step scalars ---- */

/* diffusers' DDIM steps back by T // n, whatever the spacing; its DDPM
 * (previous_timestep) to the next timestep of the list, -1 after the last. */
static int64_t prev_timestep(const dc_sampler *s, int i) {
    if (s->kind == DC_SAMPLER_DDPM)
        return i + 1 < s->n ? s->timesteps[i + 1] : -1;
    return s->timesteps[i] - s->T / s->opt.num_inference_steps;
}

/* DDIMScheduler.step's scalars for step i. */
typedef struct {
    float sa, sb;      /* sqrt(acp_t), sqrt(1 - acp_t) */
    float c_x0, c_dir; /* sqrt(acp_prev); sqrt(1 - acp_prev - std^2) (NaN when negative) */
    float std;         /* eta * sqrt(variance) */
    float dir_var;     /* 1 - acp_prev - std^2 */
} ddim_scalars;

static ddim_scalars ddim_at(const dc_sampler *s, int i) {
    const float *acp = s->alphas_cumprod;
    int64_t prev = prev_timestep(s, i);
    float a_t = acp[s->timesteps[i]];
    float a_prev = prev >= 0 ? acp[prev] : s->opt.set_alpha_to_one ? 1.0f : acp[0];
    float b_t = 1.0f - a_t;
    float variance = (1.0f - a_prev) / b_t * (1.0f - a_t / a_prev);
    ddim_scalars c = {.sa = sqrtf(a_t), .sb = sqrtf(b_t), .c_x0 = sqrtf(a_prev)};
    c.std = (float)s->opt.eta * sqrtf(variance);
    c.dir_var = 1.0f - a_prev - c.std * c.std;
    c.c_dir = sqrtf(c.dir_var);
    return c;
}

/* ---- init ---- */

static int check_thresholding(const char *name, const dc_sampler_options *o) {
    if (!o->thresholding)
        return 0;
    if (!(o->dynamic_thresholding_ratio >= 0 && o->dynamic_thresholding_ratio <= 1))
        return dc_fail("%s: dynamic_thresholding_ratio %g must lie in [0, 1]", name,
                       o->dynamic_thresholding_ratio);
    if (!(o->sample_max_value > 0 && o->sample_max_value <= FLT_MAX))
        return dc_fail("%s: sample_max_value %g must be positive and finite", name,
                       o->sample_max_value);
    return 0;
}

static int check_options(dc_sampler_kind kind, const dc_noise_schedule *sched,
                         const dc_sampler_options *o) {
    if ((unsigned)kind >= DC_SAMPLER_COUNT)
        return dc_fail("sampler: unknown kind %d", (int)kind);
    const char *name = dc_sampler_kind_name(kind);
    if (!sched || sched->T < 1 || !sched->alphas_cumprod)
        return dc_fail("%s: the noise schedule is not initialised", name);
    if ((unsigned)sched->config.prediction_type >= DC_PRED_COUNT)
        return dc_fail("%s: unknown prediction type %d", name, (int)sched->config.prediction_type);
    if (o->num_inference_steps < 1 || o->num_inference_steps > sched->T)
        return dc_fail("%s: num_inference_steps %d must lie in [1, %lld] (num_train_timesteps)",
                       name, o->num_inference_steps, (long long)sched->T);
    if ((unsigned)o->timestep_spacing >= DC_SPACING_COUNT ||
        (unsigned)o->variance_type >= DC_VARIANCE_COUNT ||
        (unsigned)o->final_sigmas_type >= DC_FINAL_SIGMAS_COUNT)
        return dc_fail("%s: unknown timestep_spacing %d, variance_type %d or final_sigmas_type %d",
                       name, (int)o->timestep_spacing, (int)o->variance_type,
                       (int)o->final_sigmas_type);
    if (o->steps_offset < 0 || o->steps_offset >= sched->T)
        return dc_fail("%s: steps_offset %lld must lie in [0, %lld)", name,
                       (long long)o->steps_offset, (long long)sched->T);
    if (!(o->eta >= 0 && isfinite(o->eta)))
        return dc_fail("%s: eta %g must be finite and >= 0", name, o->eta);
    if (o->eta != 0 && kind != DC_SAMPLER_DDIM)
        return dc_fail("%s: eta %g applies to ddim only", name, o->eta);
    if (o->clip_sample && !clips(kind))
        return dc_fail("%s: clip_sample applies to ddpm and ddim only", name);
    if (o->thresholding && !thresholds(kind))
        return dc_fail("%s: thresholding applies to ddpm, ddim and dpm++2m only", name);
    if (sched->config.prediction_type == DC_PRED_SAMPLE &&
        (kind == DC_SAMPLER_PNDM || kind == DC_SAMPLER_EULER_A))
        return dc_fail("%s: prediction_type sample is not supported (diffusers' %s refuses it)",
                       name, class_names[kind]);
    if (kind == DC_SAMPLER_PNDM && !o->skip_prk_steps && o->num_inference_steps < 4)
        return dc_fail("%s: %d steps are too few for its Runge-Kutta start (4 or more, or "
                       "skip_prk_steps)",
                       name, o->num_inference_steps);
    if (o->clip_sample && !(o->clip_sample_range > 0 && o->clip_sample_range <= FLT_MAX))
        return dc_fail("%s: clip_sample_range %g must be positive and finite", name,
                       o->clip_sample_range);
    if (isnan(o->lambda_min_clipped))
        return dc_fail("%s: lambda_min_clipped is NaN", name);
    return check_thresholding(name, o);
}

/* Where diffusers' DDIM would take the square root of a negative number (eta too large). */
static int check_ddim_eta(const dc_sampler *s) {
    for (int i = 0; i < s->n; i++)
        if (!(ddim_at(s, i).dir_var >= 0))
            return dc_fail("ddim: eta %g is too large: at step %d (timestep %lld) the noise would "
                           "exceed the step's variance (use eta <= 1)",
                           s->opt.eta, i, (long long)s->timesteps[i]);
    return 0;
}

/* DDPM and DDIM recover x0 from an epsilon prediction as (x - sqrt(1 - acp) eps) /
 * sqrt(acp): nothing to recover at a zero-SNR timestep. PNDM divides by acp
 * whatever the model predicts. */
static int check_zero_snr(const dc_sampler *s) {
    bool pndm = s->kind == DC_SAMPLER_PNDM;
    if (!clips(s->kind) && !pndm)
        return 0;
    if (!pndm && s->prediction_type != DC_PRED_EPSILON)
        return 0;
    for (int i = 0; i < s->n; i++)
        if (s->alphas_cumprod[s->timesteps[i]] == 0)
            return dc_fail("%s: timestep %lld has zero SNR (rescale_betas_zero_snr) and %s, "
                           "which says nothing of the image there (diffusers divides by zero): "
                           "use %s, or a spacing that starts below it",
                           dc_sampler_kind_name(s->kind), (long long)s->timesteps[i],
                           pndm ? "PNDM divides by its alphas_cumprod"
                                : "the model predicts epsilon",
                           pndm ? "another scheduler" : "a v_prediction model");
    return 0;
}

/* Room for n steps, or PNDM's n + 9 (PRK) model evaluations. */
static int alloc_sampler(dc_sampler *s, int64_t T, int n) {
    n += s->kind == DC_SAMPLER_PNDM ? 9 : 0;
    s->alphas_cumprod = malloc((size_t)T * sizeof(float));
    s->timesteps = malloc((size_t)n * sizeof(int64_t));
    s->model_t = malloc((size_t)n * sizeof(float));
    s->sigmas = malloc(((size_t)n + 1) * sizeof(float));
    if (!s->alphas_cumprod || !s->timesteps || !s->model_t || !s->sigmas)
        return dc_fail("%s: out of memory for %d steps", dc_sampler_kind_name(s->kind), n);
    return 0;
}

/* What the model sees, and the initial noise's scale, for the kinds that step in
 * timesteps; Euler's come with its sigmas. */
static void make_model_timesteps(dc_sampler *s) {
    if (is_euler(s->kind)) {
        dc_sampler_euler_sigmas(s);
        return;
    }
    for (int i = 0; i < s->n; i++)
        s->model_t[i] = (float)s->timesteps[i];
    s->init_noise_sigma = 1.0f;
}

int dc_sampler_init(dc_sampler *s, dc_sampler_kind kind, const dc_noise_schedule *sched,
                    const dc_sampler_options *o) {
    memset(s, 0, sizeof *s);
    s->next = -1;
    if (check_options(kind, sched, o))
        return -1;
    s->kind = kind;
    s->opt = *o;
    s->prediction_type = sched->config.prediction_type;
    s->T = sched->T;
    if (alloc_sampler(s, s->T, o->num_inference_steps)) {
        dc_sampler_free(s);
        return -1;
    }
    memcpy(s->alphas_cumprod, sched->alphas_cumprod, (size_t)s->T * sizeof(float));
    bool dpm = kind == DC_SAMPLER_DPMPP_2M;
    /* "so the first sigma is not inf" */
    if ((dpm || is_euler(kind)) && s->alphas_cumprod[s->T - 1] == 0)
        s->alphas_cumprod[s->T - 1] = 0x1p-24f;
    s->n = dpm && o->use_karras_sigmas ? make_karras(s, sched->config.beta_schedule)
                                       : dc_sampler_spaced_timesteps(s, s->timesteps);
    if (check_timesteps(s) || (kind == DC_SAMPLER_DDIM && check_ddim_eta(s))) {
        dc_sampler_free(s);
        return -1;
    }
    if (kind == DC_SAMPLER_PNDM)
        s->n = dc_sampler_pndm_timesteps(s, s->timesteps, s->n);
    if (check_zero_snr(s)) {
        dc_sampler_free(s);
        return -1;
    }
    if (dpm)
        make_sigmas(s);
    make_model_timesteps(s);
    return 0;
}

int dc_sampler_init_from_config(dc_sampler *s, const char *json, const char *where,
                                const char *kind_name, int num_inference_steps) {
    memset(s, 0, sizeof *s);
    s->next = -1;
    dc_sampler_kind kind;
    dc_noise_schedule_config c;
    if (kind_name ? dc_sampler_kind_parse(kind_name, &kind)
                  : dc_sampler_kind_from_config(json, where, &kind))
        return -1;
    dc_sampler_options o = dc_sampler_default_options(kind);
    o.num_inference_steps = num_inference_steps;
    if (dc_noise_schedule_config_parse(&c, json, where) ||
        dc_sampler_options_parse_config(&o, kind, json, where))
        return -1;
    dc_noise_schedule sched;
    if (dc_noise_schedule_init(&sched, &c))
        return dc_fail_prefix(where);
    int rc = dc_sampler_init(s, kind, &sched, &o);
    dc_noise_schedule_free(&sched);
    return rc;
}

void dc_sampler_free(dc_sampler *s) {
    if (!s)
        return;
    free(s->alphas_cumprod);
    free(s->timesteps);
    free(s->model_t);
    free(s->sigmas);
    free(s->x0);
    free(s->prev_x0);
    free(s->sorted);
    for (int k = 0; k < 4; k++)
        free(s->ets[k]);
    free(s->cur_sample);
    free(s->cur_mo);
    memset(s, 0, sizeof *s);
    s->next = -1;
}

void dc_sampler_reset(dc_sampler *s) {
    s->next = -1;
    s->numel = 0;
    s->counter = 0;
    s->n_ets = 0;
}

/* ---- steps ---- */

int dc_sampler_step_needs_noise(const dc_sampler *s, int i) {
    if (i < 0 || i >= s->n)
        return 0;
    return (s->kind == DC_SAMPLER_DDPM && s->timesteps[i] > 0) ||
           (s->kind == DC_SAMPLER_DDIM && s->opt.eta > 0) || s->kind == DC_SAMPLER_EULER_A;
}

bool dc_sampler_needs_variance(const dc_sampler *s) {
    return s->kind == DC_SAMPLER_DDPM && (s->opt.variance_type == DC_VARIANCE_LEARNED ||
                                          s->opt.variance_type == DC_VARIANCE_LEARNED_RANGE);
}

int dc_sampler_scale_model_input(const dc_sampler *s, int i, const float *sample, float *out,
                                 int64_t numel) {
    if (s->n < 1)
        return dc_fail("sampler: not initialised");
    if (i < 0 || i >= s->n)
        return dc_fail("scale_model_input: step %d is outside [0, %d)", i, s->n);
    float scale = 1.0f; /* sample / 1 is the sample */
    if (is_euler(s->kind))
        scale = sqrtf(s->sigmas[i] * s->sigmas[i] + 1.0f);
    for (int64_t e = 0; e < numel; e++)
        out[e] = sample[e] / scale;
    return 0;
}

/* Predicted x0 from the model output for DDPM and DDIM (sa, sb: sqrt(acp_t), sqrt(1 - acp_t)). */
static float pred_x0(dc_prediction_type p, float sa, float sb, float mo, float x) {
    return p == DC_PRED_EPSILON        ? (x - sb * mo) / sa
           : p == DC_PRED_V_PREDICTION ? sa * x - sb * mo
                                       : mo;
}

/* torch.clamp(x, -r, r): NaN stays NaN. */
static float clamp_sym(float x, float r) { return x < -r ? -r : x > r ? r : x; }

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* torch.quantile(|x|, ratio) over n values, linear interpolation in float32
 * (NaN when any is NaN); sorted is scratch [n]. */
static float abs_quantile(const float *x, int64_t n, float ratio, float *sorted) {
    for (int64_t e = 0; e < n; e++) {
        if (isnan(x[e]))
            return NAN;
        sorted[e] = fabsf(x[e]);
    }
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_float);
    float rank = ratio * (float)(n - 1);
    int64_t below = (int64_t)rank, above = (int64_t)ceilf(rank);
    float w = rank - (float)below, lo = sorted[below], hi = sorted[above];
    return w < 0.5f ? lo + w * (hi - lo) : hi - (hi - lo) * (1.0f - w); /* torch.lerp */
}

/* _threshold_sample per image, or clip_sample, or nothing, on x0 [images, per]. */
static void limit_x0(dc_sampler *s, float *x0, int64_t images, int64_t per) {
    if (s->opt.thresholding) {
        for (int64_t k = 0; k < images; k++) {
            float *img = x0 + k * per;
            float q = abs_quantile(img, per, (float)s->opt.dynamic_thresholding_ratio, s->sorted);
            float r = q < 1.0f ? 1.0f : q; /* torch.clamp(q, 1, sample_max_value) */
            r = r > (float)s->opt.sample_max_value ? (float)s->opt.sample_max_value : r;
            r = isnan(q) ? q : r;
            for (int64_t e = 0; e < per; e++)
                img[e] = clamp_sym(img[e], r) / r;
        }
    } else if (s->opt.clip_sample) {
        float r = (float)s->opt.clip_sample_range;
        for (int64_t e = 0; e < images * per; e++)
            x0[e] = clamp_sym(x0[e], r);
    }
}

/* DDPM's noise deviation per element: fixed, or from the predicted variance v. */
typedef struct {
    dc_variance_type type;
    float fixed;            /* fixed_small, fixed_small_log, fixed_large */
    float min_log, max_log; /* learned_range: log beta~_t, log beta_t */
} ddpm_deviation;

static float ddpm_sd(const ddpm_deviation *d, const float *v, int64_t e) {
    if (d->type == DC_VARIANCE_LEARNED)
        return sqrtf(v[e]);
    if (d->type != DC_VARIANCE_LEARNED_RANGE)
        return d->fixed;
    float frac = (v[e] + 1.0f) / 2.0f;
    return expf(0.5f * (frac * d->max_log + (1.0f - frac) * d->min_log));
}

/* DDPMScheduler.step; the variance (DDPMScheduler._get_variance) only while t > 0. */
static void ddpm_step(dc_sampler *s, int i, const float *mo, const float *var, float *x,
                      const float *noise, int64_t images, int64_t per) {
    int64_t t = s->timesteps[i], prev = prev_timestep(s, i), numel = images * per;
    float a_t = s->alphas_cumprod[t], a_prev = prev >= 0 ? s->alphas_cumprod[prev] : 1.0f;
    float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    float alpha = a_t / a_prev, beta = 1.0f - alpha; /* current_alpha_t, current_beta_t */
    float c_x0 = sqrtf(a_prev) * beta / b_t, c_x = sqrtf(alpha) * b_prev / b_t;
    float small = fmaxf(b_prev / b_t * beta, 1e-20f);
    dc_variance_type type = s->opt.variance_type;
    ddpm_deviation d = {.type = type,
                        .fixed = type == DC_VARIANCE_FIXED_SMALL       ? sqrtf(small)
                                 : type == DC_VARIANCE_FIXED_SMALL_LOG ? expf(0.5f * logf(small))
                                                                       : sqrtf(beta),
                        .min_log = logf(small),
                        .max_log = logf(beta)};
    float sa = sqrtf(a_t), sb = sqrtf(b_t);
    for (int64_t e = 0; e < numel; e++)
        s->x0[e] = pred_x0(s->prediction_type, sa, sb, mo[e], x[e]);
    limit_x0(s, s->x0, images, per);
    for (int64_t e = 0; e < numel; e++) {
        float y = c_x0 * s->x0[e] + c_x * x[e];
        x[e] = t > 0 ? y + ddpm_sd(&d, var, e) * noise[e] : y;
    }
}

/* DDIMScheduler.step (use_clipped_model_output off, as its pipeline calls it): the
 * noise direction comes from the x0 before clipping or thresholding. */
static void ddim_step(dc_sampler *s, int i, const float *mo, float *x, const float *noise,
                      int64_t images, int64_t per) {
    ddim_scalars c = ddim_at(s, i);
    dc_prediction_type p = s->prediction_type;
    for (int64_t e = 0; e < images * per; e++)
        s->x0[e] = pred_x0(p, c.sa, c.sb, mo[e], x[e]);
    limit_x0(s, s->x0, images, per);
    for (int64_t e = 0; e < images * per; e++) {
        float eps = p == DC_PRED_EPSILON  ? mo[e]
                    : p == DC_PRED_SAMPLE ? (x[e] - c.sa * mo[e]) / c.sb
                                          : c.sa * mo[e] + c.sb * x[e];
        float y = c.c_x0 * s->x0[e] + c.c_dir * eps;
        x[e] = s->opt.eta > 0 ? y + c.std * noise[e] : y;
    }
}

/* DPMSolverMultistepScheduler.step: convert_model_output to x0 (thresholded when
 * asked), then the first order update on the first step and at the end
 * (lower_order_final; always with a zero final sigma), the second order midpoint
 * update otherwise. */
static void dpm_step(dc_sampler *s, int i, const float *mo, float *x, int64_t images,
                     int64_t per) {
    int last = i == s->n - 1;
    int first_order = s->next < 0 || (last && ((s->opt.lower_order_final && s->n < 15) ||
                                               s->opt.final_sigmas_type == DC_FINAL_SIGMAS_ZERO));
    float a_t, s_t, a_0, s_0;
    alpha_sigma(s->sigmas[i + 1], &a_t, &s_t);
    alpha_sigma(s->sigmas[i], &a_0, &s_0);
    float h = lambda_of(s->sigmas[i + 1]) - lambda_of(s->sigmas[i]);
    float c_x = s_t / s_0, c_d0 = a_t * (expf(-h) - 1.0f);
    float inv_r0 = 0.0f, c_d1 = 0.5f * c_d0;
    if (!first_order) {
        float r0 = (lambda_of(s->sigmas[i]) - lambda_of(s->sigmas[i - 1])) / h;
        inv_r0 = 1.0f / r0;
    }
    dc_prediction_type p = s->prediction_type;
    int64_t numel = images * per;
    for (int64_t e = 0; e < numel; e++)
        s->x0[e] = p == DC_PRED_EPSILON        ? (x[e] - s_0 * mo[e]) / a_0
                   : p == DC_PRED_V_PREDICTION ? a_0 * x[e] - s_0 * mo[e]
                                               : mo[e];
    limit_x0(s, s->x0, images, per);
    for (int64_t e = 0; e < numel; e++) {
        float y = c_x * x[e] - c_d0 * s->x0[e];
        if (!first_order)
            y = y - c_d1 * (inv_r0 * (s->x0[e] - s->prev_x0[e]));
        x[e] = y;
    }
    float *swap = s->prev_x0; /* this step's x0 is the next one's previous */
    s->prev_x0 = s->x0;
    s->x0 = swap;
}

static int check_step(const dc_sampler *s, int i, const float *model_output, const float *variance,
                      float *sample, const float *noise, int64_t images, int64_t per) {
    const char *name = dc_sampler_kind_name(s->kind);
    if (s->n < 1 || !s->timesteps)
        return dc_fail("sampler: not initialised");
    if (i < 0 || i >= s->n)
        return dc_fail("%s: step %d is outside [0, %d)", name, i, s->n);
    if (s->next >= 0 && i != s->next)
        return dc_fail("%s: step %d after step %d; steps run in order (dc_sampler_reset starts "
                       "over)",
                       name, i, s->next - 1);
    if (!model_output || !sample || images < 1 || per < 1 || images > INT64_MAX / per)
        return dc_fail("%s: step %d needs a model output and a sample of at least one element",
                       name, i);
    if (s->next >= 0 && images * per != s->numel)
        return dc_fail("%s: step %d has %lld elements, the steps before it %lld", name, i,
                       (long long)(images * per), (long long)s->numel);
    if (!noise && dc_sampler_step_needs_noise(s, i))
        return dc_fail("%s: step %d (timestep %lld) adds noise: pass it", name, i,
                       (long long)s->timesteps[i]);
    if (!variance && dc_sampler_needs_variance(s))
        return dc_fail("%s: variance_type %s needs the model's predicted variance (a model with "
                       "out_channels twice in_channels)",
                       name, dc_variance_type_name(s->opt.variance_type));
    return 0;
}

/* *buf grown to numel floats, its values kept; 0 or -1 (out of memory, *buf kept). */
static int grow(float **buf, int64_t numel) {
    float *p = realloc(*buf, (size_t)numel * sizeof(float));
    if (!p)
        return -1;
    *buf = p;
    return 0;
}

/* Room for the x0 buffers and PNDM's (grown on a run's first step: its numel
 * stays) and thresholding's scratch (an image may grow inside a run, the same
 * numel split into fewer images). realloc keeps the state's values. */
static int reserve_state(dc_sampler *s, int64_t images, int64_t per) {
    int64_t numel = images * per, sorted = s->opt.thresholding ? per : 0;
    if (numel > s->cap) {
        int rc = grow(&s->x0, numel) || grow(&s->prev_x0, numel);
        for (int k = 0; k < 4 && (s->kind == DC_SAMPLER_PNDM || s->kind == DC_SAMPLER_LMS); k++)
            rc = rc || grow(&s->ets[k], numel);
        if (rc || (s->kind == DC_SAMPLER_PNDM &&
                   (grow(&s->cur_sample, numel) || grow(&s->cur_mo, numel))))
            return dc_fail("%s: out of memory for %lld elements of state",
                           dc_sampler_kind_name(s->kind), (long long)numel);
        s->cap = numel;
    }
    if (sorted > s->sorted_cap) {
        float *c = realloc(s->sorted, (size_t)sorted * sizeof(float));
        if (!c)
            return dc_fail("%s: out of memory for thresholding %lld values",
                           dc_sampler_kind_name(s->kind), (long long)sorted);
        s->sorted = c;
        s->sorted_cap = sorted;
    }
    return 0;
}

int dc_sampler_step(dc_sampler *s, int i, const float *model_output, const float *variance,
                    float *sample, const float *noise, int64_t images, int64_t per_image) {
    if (check_step(s, i, model_output, variance, sample, noise, images, per_image) ||
        reserve_state(s, images, per_image))
        return -1;
    if (s->kind == DC_SAMPLER_DDPM)
        ddpm_step(s, i, model_output, variance, sample, noise, images, per_image);
    else if (s->kind == DC_SAMPLER_DDIM)
        ddim_step(s, i, model_output, sample, noise, images, per_image);
    else if (s->kind == DC_SAMPLER_DPMPP_2M)
        dpm_step(s, i, model_output, sample, images, per_image);
    else if (s->kind == DC_SAMPLER_PNDM)
        dc_sampler_pndm_step(s, i, model_output, sample, images * per_image);
    else if (s->kind == DC_SAMPLER_LMS)
        dc_sampler_lms_step(s, i, model_output, sample, images * per_image);
    else
        dc_sampler_euler_step(s, i, model_output, sample, noise, images * per_image);
    s->numel = images * per_image;
    s->next = i + 1;
    if (s->next == s->n) /* a finished run: ready for the next batch */
        dc_sampler_reset(s);
    return 0;
}

float *dc_sampler_push_state(dc_sampler *s) {
    float *oldest = s->ets[3];
    memmove(s->ets + 1, s->ets, 3 * sizeof s->ets[0]);
    s->ets[0] = oldest;
    s->n_ets = s->n_ets < 4 ? s->n_ets + 1 : 4;
    return oldest;
}

/* ---- noise ---- */

void dc_sampler_noise(float *out, int64_t n_images, int64_t per_image, uint64_t seed,
                      uint64_t first_image, uint64_t draw) {
    for (int64_t k = 0; k < n_images; k++)
        dc_fill_normal(out + k * per_image, per_image, seed, first_image + (uint64_t)k,
                       draw * (uint64_t)per_image);
}

void dc_sampler_noise_streams(float *out, int64_t n_images, int64_t per_image, uint64_t seed,
                              uint64_t first_image, const uint64_t *streams, uint64_t draw) {
    if (!streams) {
        dc_sampler_noise(out, n_images, per_image, seed, first_image, draw);
        return;
    }
    for (int64_t k = 0; k < n_images; k++)
        dc_sampler_noise(out + k * per_image, 1, per_image, seed, streams[k], draw);
}

/* ---- img2img and guidance ---- */

int dc_sampler_img2img_start(const dc_sampler *s, double strength, int *first) {
    if (s->n < 1)
        return dc_fail("sampler: not initialised");
    if (!(strength > 0 && strength <= 1))
        return dc_fail("img2img: strength %g must lie in (0, 1]", strength);
    int n = s->kind == DC_SAMPLER_PNDM ? s->opt.num_inference_steps : s->n;
    int init = (int)((double)n * strength); /* Python's int(n * strength) */
    if (init == 0)
        return dc_fail("img2img: strength %g of %d steps leaves no step to run", strength, n);
    *first = n - (init < n ? init : n);
    return 0;
}

int dc_sampler_add_noise(const dc_sampler *s, int i, const float *x0, const float *noise,
                         float *out, int64_t numel) {
    if (s->n < 1)
        return dc_fail("sampler: not initialised");
    if (i < 0 || i >= s->n)
        return dc_fail("add_noise: step %d is outside [0, %d)", i, s->n);
    float a, b;
    if (is_euler(s->kind)) {
        for (int64_t e = 0; e < numel; e++)
            out[e] = x0[e] + noise[e] * s->sigmas[i];
        return 0;
    }
    if (s->kind == DC_SAMPLER_DPMPP_2M) {
        alpha_sigma(s->sigmas[i], &a, &b);
    } else {
        float acp = s->alphas_cumprod[s->timesteps[i]];
        a = sqrtf(acp);
        b = sqrtf(1.0f - acp);
    }
    for (int64_t e = 0; e < numel; e++)
        out[e] = a * x0[e] + b * noise[e];
    return 0;
}

void dc_guidance_combine(float *out, const float *uncond, const float *cond, float scale,
                         int64_t numel) {
    for (int64_t e = 0; e < numel; e++)
        out[e] = uncond[e] + scale * (cond[e] - uncond[e]);
}
