/* Noise schedules, their scheduler_config.json, and the random draws of a
 * training step (see diffusion.h). The fused ops are in ops_diffusion.c. */
#include "diffusion.h"

#include "cpu/diffusion.h"
#include "error.h"
#include "fileio.h"
#include "op_util.h"
#include "rng.h"
#ifdef DC_HAVE_CUDA
#include "cuda/diffusion.h"
#include "cuda/rng.h"
#endif

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TIMESTEPS ((int64_t)1 << 24) /* t is i32 and T x 8 bytes stays small */
#define MAX_CONFIG_BYTES (1 << 20)       /* a scheduler config is well under 1 KB */

/* ---- names ---- */

static const char *const beta_names[DC_BETA_COUNT] = {"linear", "scaled_linear",
                                                      "squaredcos_cap_v2"};
static const char *const pred_names[DC_PRED_COUNT] = {"epsilon", "v_prediction", "sample"};

int dc_beta_schedule_parse(const char *name, dc_beta_schedule *out) {
    for (int s = 0; s < DC_BETA_COUNT; s++)
        if (!strcmp(name, beta_names[s])) {
            *out = (dc_beta_schedule)s;
            return 0;
        }
    return dc_fail("unknown beta_schedule '%s' (expected linear, scaled_linear or "
                   "squaredcos_cap_v2)",
                   name);
}

const char *dc_beta_schedule_name(dc_beta_schedule s) {
    return (unsigned)s < DC_BETA_COUNT ? beta_names[s] : "?";
}

int dc_prediction_type_parse(const char *name, dc_prediction_type *out) {
    for (int p = 0; p < DC_PRED_COUNT; p++)
        if (!strcmp(name, pred_names[p])) {
            *out = (dc_prediction_type)p;
            return 0;
        }
    return dc_fail("unknown prediction_type '%s' (expected epsilon, v_prediction or sample)", name);
}

const char *dc_prediction_type_name(dc_prediction_type p) {
    return (unsigned)p < DC_PRED_COUNT ? pred_names[p] : "?";
}

/* ---- scheduler_config.json ---- */

dc_noise_schedule_config dc_noise_schedule_default_config(void) {
    return (dc_noise_schedule_config){.num_train_timesteps = 1000,
                                      .beta_start = 0.0001,
                                      .beta_end = 0.02,
                                      .beta_schedule = DC_BETA_LINEAR,
                                      .prediction_type = DC_PRED_EPSILON};
}

/* trained_betas replaces the betas: refused, never ignored. */
static int check_unsupported(const cJSON *root, const char *where) {
    const cJSON *tb = cJSON_GetObjectItemCaseSensitive(root, "trained_betas");
    if (tb && !cJSON_IsNull(tb))
        return dc_fail("%s: trained_betas is not supported (give beta_schedule, beta_start "
                       "and beta_end)",
                       where);
    return 0;
}

static int parse_root(dc_noise_schedule_config *c, const cJSON *root, const char *where) {
    if (!cJSON_IsObject(root))
        return dc_fail("%s: not a JSON object", where);
    double T = (double)c->num_train_timesteps;
    const char *beta = NULL, *pred = NULL;
    if (dc_json_get_number(root, "num_train_timesteps", where, &T) ||
        dc_json_get_number(root, "beta_start", where, &c->beta_start) ||
        dc_json_get_number(root, "beta_end", where, &c->beta_end) ||
        dc_json_get_string(root, "beta_schedule", where, &beta) ||
        dc_json_get_string(root, "prediction_type", where, &pred) ||
        dc_json_get_bool(root, "rescale_betas_zero_snr", where, &c->rescale_betas_zero_snr) ||
        check_unsupported(root, where))
        return -1;
    if ((beta && dc_beta_schedule_parse(beta, &c->beta_schedule)) ||
        (pred && dc_prediction_type_parse(pred, &c->prediction_type)))
        return dc_fail_prefix(where);
    if (!(T >= 1 && T <= (double)MAX_TIMESTEPS && T == floor(T)))
        return dc_fail("%s: num_train_timesteps %g must be a whole number in [1, %lld]", where, T,
                       (long long)MAX_TIMESTEPS);
    c->num_train_timesteps = (int64_t)T;
    return 0;
}

int dc_noise_schedule_config_parse(dc_noise_schedule_config *c, const char *json,
                                   const char *where) {
    *c = dc_noise_schedule_default_config();
    cJSON *root = dc_json_parse(json, strlen(json), where);
    if (!root)
        return -1;
    int rc = parse_root(c, root, where);
    cJSON_Delete(root);
    if (rc)
        *c = dc_noise_schedule_default_config();
    return rc;
}

int dc_noise_schedule_config_load(dc_noise_schedule_config *c, const char *path) {
    *c = dc_noise_schedule_default_config();
    char *text = dc_read_file(path, MAX_CONFIG_BYTES, NULL);
    if (!text)
        return -1;
    int rc = dc_noise_schedule_config_parse(c, text, path);
    free(text);
    return rc;
}

cJSON *dc_noise_schedule_config_to_json(const dc_noise_schedule_config *c) {
    cJSON *root = cJSON_CreateObject();
    /* the version whose DDPMScheduler these fields follow */
    int ok =
        root && cJSON_AddStringToObject(root, "_class_name", "DDPMScheduler") &&
        cJSON_AddStringToObject(root, "_diffusers_version", "0.27.2") &&
        cJSON_AddNumberToObject(root, "beta_end", c->beta_end) &&
        cJSON_AddStringToObject(root, "beta_schedule", dc_beta_schedule_name(c->beta_schedule)) &&
        cJSON_AddNumberToObject(root, "beta_start", c->beta_start) &&
        cJSON_AddNumberToObject(root, "num_train_timesteps", (double)c->num_train_timesteps) &&
        cJSON_AddStringToObject(root, "prediction_type",
                                dc_prediction_type_name(c->prediction_type)) &&
        cJSON_AddBoolToObject(root, "rescale_betas_zero_snr", c->rescale_betas_zero_snr);
    if (!ok) {
        cJSON_Delete(root);
        dc_fail("scheduler config: out of memory");
        return NULL;
    }
    return root;
}

int dc_noise_schedule_config_save(const dc_noise_schedule_config *c, const char *path) {
    cJSON *root = dc_noise_schedule_config_to_json(c);
    int rc = root ? dc_json_save(path, root) : -1;
    cJSON_Delete(root);
    return rc;
}

/* ---- the schedule ---- */

/* torch.linspace(start, end, n, dtype=float32): each half counted from its
 * own end, in f32, with one rounding per term as torch's vectorised kernel
 * (fused multiply-add). fmaf, not a * b + c, so that every CPU and every
 * compiler flag gives the same betas, with or without FMA hardware. */
static void linspace_f32(float *out, int64_t n, float start, float end) {
    if (n == 1) {
        out[0] = start;
        return;
    }
    float step = (end - start) / (float)(n - 1);
    for (int64_t i = 0; i < n; i++)
        out[i] = i < n / 2 ? fmaf(step, (float)i, start) : fmaf(-step, (float)(n - 1 - i), end);
}

/* The cosine alpha_bar of betas_for_alpha_bar, evaluated as Python does (pow for **). */
static double alpha_bar(double t) { return pow(cos((t + 0.008) / 1.008 * M_PI / 2), 2.0); }

static void squaredcos_cap_v2(float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double b = 1 - alpha_bar((double)(i + 1) / (double)n) / alpha_bar((double)i / (double)n);
        out[i] = (float)(0.999 < b ? 0.999 : b); /* min(b, 0.999) */
    }
}

static void make_betas(float *betas, const dc_noise_schedule_config *c) {
    int64_t T = c->num_train_timesteps;
    switch (c->beta_schedule) {
    case DC_BETA_LINEAR:
        linspace_f32(betas, T, (float)c->beta_start, (float)c->beta_end);
        break;
    case DC_BETA_SCALED_LINEAR:
        linspace_f32(betas, T, (float)sqrt(c->beta_start), (float)sqrt(c->beta_end));
        for (int64_t i = 0; i < T; i++)
            betas[i] *= betas[i];
        break;
    default:
        squaredcos_cap_v2(betas, T);
        break;
    }
}

/* diffusers' rescale_zero_terminal_snr, in float32 as torch computes it: the
 * square roots of alphas_cumprod shifted so the last is 0 and scaled so the
 * first is kept, then turned back into betas. acp is scratch [T]. */
static void rescale_zero_snr(float *betas, float *acp, int64_t T) {
    double prod = 1.0; /* torch.cumprod, as in dc_noise_schedule_init */
    for (int64_t i = 0; i < T; i++) {
        prod *= 1.0f - betas[i];
        acp[i] = sqrtf((float)prod);
    }
    float first = acp[0], last = acp[T - 1];
    float scale = first / (first - last);
    for (int64_t i = 0; i < T; i++) {
        float a = (acp[i] - last) * scale;
        acp[i] = a * a;
    }
    for (int64_t i = T - 1; i > 0; i--)
        betas[i] = 1.0f - acp[i] / acp[i - 1];
    betas[0] = 1.0f - acp[0];
}

static int check_config(const dc_noise_schedule_config *c) {
    if (c->num_train_timesteps < 1 || c->num_train_timesteps > MAX_TIMESTEPS)
        return dc_fail("noise schedule: num_train_timesteps %lld is outside [1, %lld]",
                       (long long)c->num_train_timesteps, (long long)MAX_TIMESTEPS);
    if ((unsigned)c->beta_schedule >= DC_BETA_COUNT ||
        (unsigned)c->prediction_type >= DC_PRED_COUNT)
        return dc_fail("noise schedule: bad beta_schedule %d or prediction_type %d",
                       (int)c->beta_schedule, (int)c->prediction_type);
    if (c->beta_schedule != DC_BETA_SQUAREDCOS_CAP_V2 &&
        !(c->beta_start > 0 && c->beta_start < 1 && c->beta_end > 0 && c->beta_end < 1))
        return dc_fail("noise schedule: beta_start %g and beta_end %g must lie in (0, 1)",
                       c->beta_start, c->beta_end);
    if (c->rescale_betas_zero_snr && c->num_train_timesteps < 2)
        return dc_fail("noise schedule: rescale_betas_zero_snr needs num_train_timesteps >= 2");
    return 0;
}

int dc_noise_schedule_init(dc_noise_schedule *s, const dc_noise_schedule_config *c) {
    memset(s, 0, sizeof *s);
    if (check_config(c))
        return -1;
    int64_t T = c->num_train_timesteps;
    s->betas = malloc(2 * (size_t)T * sizeof(float));
    if (!s->betas)
        return dc_fail("noise schedule: out of memory for %lld timesteps", (long long)T);
    s->alphas_cumprod = s->betas + T;
    make_betas(s->betas, c);
    if (c->rescale_betas_zero_snr)
        rescale_zero_snr(s->betas, s->alphas_cumprod, T);
    double acp = 1.0; /* torch.cumprod on the CPU keeps a double running product */
    for (int64_t i = 0; i < T; i++) {
        float alpha = 1.0f - s->betas[i];
        bool zero_snr = c->rescale_betas_zero_snr && i == T - 1 && alpha == 0;
        if (!(s->betas[i] > 0 && (alpha > 0 || zero_snr) && alpha < 1)) {
            dc_fail("noise schedule: betas[%lld] = %g; every beta must lie in (0, 1), large "
                    "enough that 1 - beta < 1 in float32",
                    (long long)i, (double)s->betas[i]);
            dc_noise_schedule_free(s);
            return -1;
        }
        acp *= alpha;
        s->alphas_cumprod[i] = (float)acp;
    }
    s->config = *c;
    s->T = T;
    return 0;
}

void dc_noise_schedule_free(dc_noise_schedule *s) {
    if (!s)
        return;
    free(s->betas); /* alphas_cumprod shares the block */
    memset(s, 0, sizeof *s);
}

/* ---- random draws ---- */

static int check_fill(const char *what, const dc_tensor *x, dc_dtype want) {
    if (!x)
        return dc_fail("%s: no tensor", what);
    if (x->dtype != want)
        return dc_fail("%s: need an %s tensor, got %s", what, dc_dtype_name(want),
                       dc_dtype_name(x->dtype));
    return 0;
}

int dc_sample_timesteps(const dc_noise_schedule *s, dc_tensor *t, uint64_t seed, uint64_t stream,
                        uint64_t offset) {
    if (check_fill("sample_timesteps", t, DC_I32))
        return -1;
    if (!s || s->T < 1)
        return dc_fail("sample_timesteps: the noise schedule is not initialised");
    DC_KERNEL_ON(t->device, sample_timesteps, t->data, t->numel, s->T, seed, stream, offset);
    return dc_device_failed(t->device) ? -1 : 0;
}

int dc_sample_noise(dc_tensor *x, uint64_t seed, uint64_t stream, uint64_t offset) {
    if (check_fill("sample_noise", x, DC_F32))
        return -1;
    DC_KERNEL_ON(x->device, fill_normal, x->data, x->numel, seed, stream, offset);
    return dc_device_failed(x->device) ? -1 : 0;
}
