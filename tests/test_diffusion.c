/* The diffusion process: schedules, add_noise, get_velocity and the training
 * loss against diffusers (tests/fixtures/diffusion.safetensors and
 * diffusion_scheduler_config.json, made by scripts/make_diffusion_fixtures.py),
 * q_sample and the loss against plain double loops on fresh random data,
 * finite-difference gradients, the timestep and noise draws, scheduler
 * configs, and the errors. */
#include "testutil.h"

#include "autograd/diffusion.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/rng.h"
#include "autograd/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIXTURE "tests/fixtures/diffusion.safetensors"
#define CONFIG_FIXTURE "tests/fixtures/diffusion_scheduler_config.json"

static const char *const main_tags[] = {"linear", "scaled_linear", "squaredcos_cap_v2"};
static const char *const all_tags[] = {"linear",    "scaled_linear",   "squaredcos_cap_v2",
                                       "linear_37", "scaled_linear_1", "squaredcos_cap_v2_11"};
static const dc_prediction_type preds[] = {DC_PRED_EPSILON, DC_PRED_V_PREDICTION, DC_PRED_SAMPLE};

/* ---- fixture access ---- */

static const dc_st_tensor *fx_find(const dc_st_file *f, const char *name, dc_dtype dtype,
                                   int64_t n) {
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL, "fixture has no %s", name);
    ck_assert_msg(t->dtype == (int)dtype && t->nbytes == (size_t)n * 4, "%s: %s, %zu bytes", name,
                  t->dtype_name, t->nbytes);
    return t;
}

/* A fixture tensor of n f32 elements as doubles, malloc'ed. */
static double *fx_doubles(const dc_st_file *f, const char *name, int64_t n) {
    const dc_st_tensor *t = fx_find(f, name, DC_F32, n);
    double *out = malloc((size_t)n * sizeof *out);
    for (int64_t i = 0; i < n; i++) {
        float v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        out[i] = v;
    }
    return out;
}

/* A fixture tensor copied into a context tensor of the given shape. */
static dc_tensor *fx_tensor(dc_ctx *ctx, const dc_st_file *f, const char *name, dc_dtype dtype,
                            int ndim, const int64_t *shape) {
    const dc_st_tensor *t = fx_find(f, name, dtype, dc_shape_numel(ndim, shape));
    dc_tensor *x = dc_from_host(ctx, dtype, ndim, shape, t->data);
    ck_assert_msg(x != NULL, "%s", dc_error());
    return x;
}

static const char *fx_meta(const dc_st_file *f, const char *tag, const char *key) {
    char name[96];
    snprintf(name, sizeof name, "%s.%s", tag, key);
    const char *v = dc_st_meta(f, name);
    ck_assert_msg(v != NULL, "fixture has no metadata %s", name);
    return v;
}

/* The schedule diffusers built for `tag`, from the settings in the fixture. */
static void fx_schedule(const dc_st_file *f, const char *tag, dc_noise_schedule *s) {
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    ck_assert_int_eq(dc_beta_schedule_parse(fx_meta(f, tag, "beta_schedule"), &c.beta_schedule), 0);
    c.beta_start = strtod(fx_meta(f, tag, "beta_start"), NULL);
    c.beta_end = strtod(fx_meta(f, tag, "beta_end"), NULL);
    c.num_train_timesteps = strtoll(fx_meta(f, tag, "num_train_timesteps"), NULL, 10);
    ck_assert_msg(dc_noise_schedule_init(s, &c) == 0, "%s: %s", tag, dc_error());
}

/* The fixture's inputs: x0, noise, model_output [7, 4, 3, 2] and t [7]. */
typedef struct {
    dc_tensor *x0, *noise, *model_output, *t;
} fx_inputs;

static fx_inputs fx_load_inputs(dc_ctx *ctx, const dc_st_file *f) {
    fx_inputs in = {
        fx_tensor(ctx, f, "x0", DC_F32, DC_SHAPE(7, 4, 3, 2)),
        fx_tensor(ctx, f, "noise", DC_F32, DC_SHAPE(7, 4, 3, 2)),
        fx_tensor(ctx, f, "model_output", DC_F32, DC_SHAPE(7, 4, 3, 2)),
        fx_tensor(ctx, f, "t", DC_I32, DC_SHAPE(7)),
    };
    return in;
}

/* ---- references in double precision ---- */

static double ref_weight(double acp, dc_prediction_type p, double gamma) {
    double snr = acp / (1 - acp);
    if (gamma == 0)
        return p == DC_PRED_SAMPLE ? snr : 1.0;
    double m = fmin(snr, gamma);
    return p == DC_PRED_EPSILON ? m / snr : p == DC_PRED_V_PREDICTION ? m / (snr + 1) : m;
}

static double ref_target(dc_prediction_type p, double acp, double x0, double noise) {
    return p == DC_PRED_EPSILON        ? noise
           : p == DC_PRED_V_PREDICTION ? sqrt(acp) * noise - sqrt(1 - acp) * x0
                                       : x0;
}

static double ref_loss(const dc_tensor *pred, const dc_tensor *x0, const dc_tensor *noise,
                       const dc_tensor *t, const dc_noise_schedule *s, dc_prediction_type p,
                       double gamma, double *mse) {
    int64_t n = x0->shape[0], d = x0->numel / n;
    const float *mo = pred->data, *x = x0->data, *e = noise->data;
    const int32_t *ts = t->data;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        double acp = s->alphas_cumprod[ts[i]], se = 0;
        for (int64_t j = 0; j < d; j++) {
            double diff = mo[i * d + j] - ref_target(p, acp, x[i * d + j], e[i * d + j]);
            se += diff * diff;
        }
        sum += ref_weight(acp, p, gamma) * se / (double)d;
        if (mse)
            mse[i] = se / (double)d;
    }
    return sum / (double)n;
}

/* Random timesteps in [lo, T). */
static dc_tensor *rand_t(dc_ctx *ctx, int64_t n, int64_t lo, int64_t T) {
    dc_tensor *t = dc_new(ctx, DC_I32, DC_SHAPE(n));
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < n; i++)
        ((int32_t *)t->data)[i] = (int32_t)(lo + (int64_t)(tu_next() % (uint64_t)(T - lo)));
    return t;
}

static void default_schedule(dc_noise_schedule *s, dc_beta_schedule b) {
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    c.beta_schedule = b;
    ck_assert_msg(dc_noise_schedule_init(s, &c) == 0, "%s", dc_error());
}

/* ---- schedules against diffusers ---- */

START_TEST(test_schedules_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    for (size_t k = 0; k < sizeof all_tags / sizeof all_tags[0]; k++) {
        const char *tag = all_tags[k];
        dc_noise_schedule s;
        fx_schedule(&f, tag, &s);
        char name[96];
        snprintf(name, sizeof name, "%s.betas", tag);
        double *betas = fx_doubles(&f, name, s.T);
        snprintf(name, sizeof name, "%s.alphas_cumprod", tag);
        double *acp = fx_doubles(&f, name, s.T);
        if (s.config.beta_schedule == DC_BETA_SQUAREDCOS_CAP_V2) {
            /* double arithmetic and libm, as Python's: bit for bit */
            tu_assert_close(s.betas, betas, s.T, 0, 0, tag);
            tu_assert_close(s.alphas_cumprod, acp, s.T, 0, 0, tag);
        } else {
            /* torch's vectorised linspace may round a value one ulp away (see diffusion.h):
             * up to 3 ulps of beta after scaled_linear's square */
            tu_assert_close(s.betas, betas, s.T, 0, 4e-7, tag);
            tu_assert_close(s.alphas_cumprod, acp, s.T, 1e-7, 1e-6, tag);
        }
        free(betas);
        free(acp);
        dc_noise_schedule_free(&s);
    }
    dc_st_close(&f);
}
END_TEST

START_TEST(test_q_sample_vs_add_noise) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    for (size_t k = 0; k < sizeof main_tags / sizeof main_tags[0]; k++) {
        dc_ctx *ctx = tu_ctx();
        dc_noise_schedule s;
        fx_schedule(&f, main_tags[k], &s);
        fx_inputs in = fx_load_inputs(ctx, &f);
        dc_tensor *xt = dc_q_sample(ctx, in.x0, in.noise, in.t, &s);
        ck_assert_msg(xt != NULL, "%s", dc_error());
        char name[96];
        snprintf(name, sizeof name, "%s.add_noise", main_tags[k]);
        double *want = fx_doubles(&f, name, xt->numel);
        tu_assert_close(xt->data, want, xt->numel, 1e-6, 1e-6, name);
        free(want);
        dc_noise_schedule_free(&s);
        tu_ctx_free(ctx);
    }
    dc_st_close(&f);
}
END_TEST

/* The v target read back from the loss's gradient: with model_output 0 and
 * no weighting, d loss / d model_output = -2 v / (N D). */
START_TEST(test_velocity_vs_get_velocity) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    for (size_t k = 0; k < sizeof main_tags / sizeof main_tags[0]; k++) {
        dc_ctx *ctx = tu_ctx();
        dc_noise_schedule s;
        fx_schedule(&f, main_tags[k], &s);
        fx_inputs in = fx_load_inputs(ctx, &f);
        char name[96];
        snprintf(name, sizeof name, "%s.velocity", main_tags[k]);
        int64_t nd = in.x0->numel;
        double *want = fx_doubles(&f, name, nd);
        dc_tensor *zero = dc_new(ctx, DC_F32, in.x0->ndim, in.x0->shape);
        memset(zero->data, 0, (size_t)nd * sizeof(float));
        zero->requires_grad = true;
        dc_tensor *loss =
            dc_diffusion_loss(ctx, zero, in.x0, in.noise, in.t, &s, DC_PRED_V_PREDICTION, 0.0f, NULL);
        ck_assert_msg(loss && dc_backward(ctx, loss) == 0, "%s", dc_error());
        float *v = malloc((size_t)nd * sizeof *v);
        for (int64_t i = 0; i < nd; i++)
            v[i] = -((float *)zero->grad->data)[i] * (float)nd / 2.0f;
        tu_assert_close(v, want, nd, 1e-6, 1e-6, name);
        /* and predicting diffusers' velocity exactly costs (almost) nothing */
        dc_tensor *vel = fx_tensor(ctx, &f, name, DC_F32, in.x0->ndim, in.x0->shape);
        loss = dc_diffusion_loss(ctx, vel, in.x0, in.noise, in.t, &s, DC_PRED_V_PREDICTION, 0.0f, NULL);
        ck_assert_msg(loss && ((float *)loss->data)[0] < 1e-12f, "%s: loss %g", name,
                      loss ? (double)((float *)loss->data)[0] : -1.0);
        free(v);
        free(want);
        dc_noise_schedule_free(&s);
        tu_ctx_free(ctx);
    }
    dc_st_close(&f);
}
END_TEST

/* The loss of diffusers' training examples (see the fixture script). */
START_TEST(test_loss_vs_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    float gamma = (float)strtod(dc_st_meta(&f, "gamma"), NULL);
    for (size_t k = 0; k < sizeof main_tags / sizeof main_tags[0]; k++) {
        dc_ctx *ctx = tu_ctx();
        dc_noise_schedule s;
        fx_schedule(&f, main_tags[k], &s);
        fx_inputs in = fx_load_inputs(ctx, &f);
        for (int p = 0; p < 3; p++)
            for (int g = 0; g < 2; g++) {
                char name[96];
                snprintf(name, sizeof name, "%s.loss.%s%s", main_tags[k],
                         dc_prediction_type_name(preds[p]), g ? ".gamma5" : "");
                double *want = fx_doubles(&f, name, 1);
                dc_tensor *loss = dc_diffusion_loss(ctx, in.model_output, in.x0, in.noise, in.t, &s,
                                                    preds[p], g ? gamma : 0.0f, NULL);
                ck_assert_msg(loss != NULL, "%s", dc_error());
                tu_assert_close(loss->data, want, 1, 0, 1e-5, name);
                free(want);
            }
        dc_noise_schedule_free(&s);
        tu_ctx_free(ctx);
    }
    dc_st_close(&f);
}
END_TEST

/* ---- against double loops on fresh data ---- */

static const int64_t shapes[][4] = {
    {5, 3, 7, 2}, {1, 11, 1, 1}, {3, 4, 4, 9}, {4, 32, 32, 9}, /* the last for the parallel paths */
};

START_TEST(test_q_sample_reference) {
    for (int b = 0; b < DC_BETA_COUNT; b++) {
        dc_noise_schedule s;
        default_schedule(&s, (dc_beta_schedule)b);
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
            dc_ctx *ctx = tu_ctx();
            dc_tensor *x0 = tu_randn(ctx, 4, shapes[c]), *noise = tu_randn(ctx, 4, shapes[c]);
            dc_tensor *t = rand_t(ctx, shapes[c][0], 0, s.T);
            dc_tensor *xt = dc_q_sample(ctx, x0, noise, t, &s);
            ck_assert_msg(xt != NULL, "%s", dc_error());
            int64_t n = shapes[c][0], d = x0->numel / n;
            double *want = malloc((size_t)x0->numel * sizeof *want);
            for (int64_t i = 0; i < n; i++) {
                double acp = s.alphas_cumprod[((int32_t *)t->data)[i]];
                for (int64_t j = 0; j < d; j++)
                    want[i * d + j] = sqrt(acp) * ((float *)x0->data)[i * d + j] +
                                      sqrt(1 - acp) * ((float *)noise->data)[i * d + j];
            }
            tu_assert_close(xt->data, want, xt->numel, 1e-6, 1e-6,
                            dc_beta_schedule_name(s.config.beta_schedule));
            free(want);
            tu_ctx_free(ctx);
        }
        dc_noise_schedule_free(&s);
    }
}
END_TEST

static const float gammas[] = {0.0f, 0.5f, 5.0f, 1e4f};

START_TEST(test_loss_reference) {
    for (int b = 0; b < DC_BETA_COUNT; b++) {
        dc_noise_schedule s;
        default_schedule(&s, (dc_beta_schedule)b);
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
            dc_ctx *ctx = tu_ctx();
            dc_tensor *pred = tu_randn(ctx, 4, shapes[c]), *x0 = tu_randn(ctx, 4, shapes[c]),
                      *noise = tu_randn(ctx, 4, shapes[c]);
            dc_tensor *t = rand_t(ctx, shapes[c][0], 0, s.T);
            /* both ends of the schedule */
            ((int32_t *)t->data)[0] = (int32_t)(c % 2 ? 0 : s.T - 1);
            for (int p = 0; p < 3; p++)
                for (size_t g = 0; g < sizeof gammas / sizeof gammas[0]; g++) {
                    double mse[64], want_mse[64];
                    ck_assert_int_le(shapes[c][0], 64);
                    dc_tensor *loss =
                        dc_diffusion_loss(ctx, pred, x0, noise, t, &s, preds[p], gammas[g], mse);
                    ck_assert_msg(loss != NULL, "%s", dc_error());
                    double want = ref_loss(pred, x0, noise, t, &s, preds[p], gammas[g], want_mse);
                    for (int64_t i = 0; i < shapes[c][0]; i++)
                        ck_assert_msg(fabs(mse[i] - want_mse[i]) <= 1e-6 * want_mse[i],
                                      "sample %lld: mse %.9g, want %.9g", (long long)i, mse[i],
                                      want_mse[i]);
                    char what[96];
                    snprintf(what, sizeof what, "%s %s gamma %g",
                             dc_beta_schedule_name(s.config.beta_schedule),
                             dc_prediction_type_name(preds[p]), (double)gammas[g]);
                    tu_assert_close(loss->data, &want, 1, 0, 1e-5, what);
                }
            tu_ctx_free(ctx);
        }
        dc_noise_schedule_free(&s);
    }
}
END_TEST

/* ---- gradients ---- */

typedef struct {
    const dc_noise_schedule *s;
    dc_tensor *t;
    dc_prediction_type p;
    float gamma;
} loss_arg;

static dc_tensor *run_q_sample(dc_ctx *ctx, dc_tensor **in, void *arg) {
    loss_arg *a = arg;
    return dc_q_sample(ctx, in[0], in[1], a->t, a->s);
}

static dc_tensor *run_loss(dc_ctx *ctx, dc_tensor **in, void *arg) {
    loss_arg *a = arg;
    return dc_diffusion_loss(ctx, in[0], in[1], in[2], a->t, a->s, a->p, a->gamma, NULL);
}

START_TEST(test_q_sample_gradient) {
    dc_noise_schedule s;
    default_schedule(&s, DC_BETA_SCALED_LINEAR);
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[2] = {tu_leaf(ctx, DC_SHAPE(3, 2, 5, 3)), tu_leaf(ctx, DC_SHAPE(3, 2, 5, 3))};
    loss_arg a = {&s, rand_t(ctx, 3, 0, s.T), DC_PRED_EPSILON, 0.0f};
    tu_gradcheck(ctx, run_q_sample, &a, in, 2, 1e-2, 1e-4, 1e-3, 0);
    tu_ctx_free(ctx);
    dc_noise_schedule_free(&s);
}
END_TEST

START_TEST(test_loss_gradient) {
    dc_noise_schedule s;
    default_schedule(&s, DC_BETA_LINEAR);
    for (int p = 0; p < 3; p++)
        for (int g = 0; g < 2; g++) {
            dc_ctx *ctx = tu_ctx();
            dc_tensor *in[3] = {tu_leaf(ctx, DC_SHAPE(3, 2, 3, 3)),
                                tu_leaf(ctx, DC_SHAPE(3, 2, 3, 3)),
                                tu_leaf(ctx, DC_SHAPE(3, 2, 3, 3))};
            /* from t = 50 on, the unclipped sample weight (snr) stays below ~40, so f32
             * finite differences of the loss still resolve its gradient */
            loss_arg a = {&s, rand_t(ctx, 3, 50, s.T), preds[p], g ? 2.5f : 0.0f};
            tu_gradcheck(ctx, run_loss, &a, in, 3, 1e-2, 2e-4, 2e-3, 0);
            tu_ctx_free(ctx);
        }
    dc_noise_schedule_free(&s);
}
END_TEST

/* Shapes too big for finite differences of the loss (and big enough for the
 * parallel kernels): q_sample probed at a few elements, the loss's gradients
 * against their closed form d/dpred = 2 w (pred - target) / (N D) = -d/dtarget. */
START_TEST(test_gradients_large) {
    dc_noise_schedule s;
    default_schedule(&s, DC_BETA_SQUAREDCOS_CAP_V2);
    dc_ctx *ctx = tu_ctx();
    const int64_t *shape = shapes[3];
    int64_t n = shape[0], nd = dc_shape_numel(4, shape), d = nd / n;
    dc_tensor *in[3] = {tu_leaf(ctx, 4, shape), tu_leaf(ctx, 4, shape), tu_leaf(ctx, 4, shape)};
    loss_arg a = {&s, rand_t(ctx, n, 0, s.T), DC_PRED_EPSILON, 0.0f};
    tu_gradcheck(ctx, run_q_sample, &a, in, 2, 1e-2, 1e-4, 1e-3, 50);
    for (int p = 0; p < 3; p++) {
        for (int k = 0; k < 3; k++)
            in[k]->grad = NULL;
        a.p = preds[p];
        a.gamma = p == 2 ? 0.0f : 5.0f;
        dc_tensor *loss = run_loss(ctx, in, &a);
        ck_assert_msg(loss && dc_backward(ctx, loss) == 0, "%s", dc_error());
        double *want[3];
        for (int k = 0; k < 3; k++)
            want[k] = malloc((size_t)nd * sizeof(double));
        for (int64_t i = 0; i < n; i++) {
            double acp = s.alphas_cumprod[((int32_t *)a.t->data)[i]];
            double w = ref_weight(acp, a.p, a.gamma);
            double cx = a.p == DC_PRED_EPSILON ? 0 : a.p == DC_PRED_SAMPLE ? 1 : -sqrt(1 - acp);
            double cn = a.p == DC_PRED_EPSILON ? 1 : a.p == DC_PRED_SAMPLE ? 0 : sqrt(acp);
            for (int64_t j = i * d; j < (i + 1) * d; j++) {
                double x0 = ((float *)in[1]->data)[j], e = ((float *)in[2]->data)[j];
                double g = 2 * w * (((float *)in[0]->data)[j] - (cx * x0 + cn * e)) / (double)nd;
                want[0][j] = g;
                want[1][j] = -cx * g;
                want[2][j] = -cn * g;
            }
        }
        for (int k = 0; k < 3; k++) {
            tu_assert_close(in[k]->grad->data, want[k], nd, 1e-11, 1e-4,
                            dc_prediction_type_name(a.p));
            free(want[k]);
        }
    }
    tu_ctx_free(ctx);
    dc_noise_schedule_free(&s);
}
END_TEST

/* Only model_output requiring grad, as in training: the other inputs get none. */
START_TEST(test_loss_gradient_model_output_only) {
    dc_noise_schedule s;
    default_schedule(&s, DC_BETA_SQUAREDCOS_CAP_V2);
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[3] = {tu_leaf(ctx, DC_SHAPE(4, 3, 3, 2)), tu_randn(ctx, DC_SHAPE(4, 3, 3, 2)),
                        tu_randn(ctx, DC_SHAPE(4, 3, 3, 2))};
    loss_arg a = {&s, rand_t(ctx, 4, 0, s.T), DC_PRED_V_PREDICTION, 5.0f};
    tu_gradcheck(ctx, run_loss, &a, in, 3, 1e-2, 2e-4, 2e-3, 0);
    ck_assert_ptr_null(in[1]->grad);
    ck_assert_ptr_null(in[2]->grad);
    tu_ctx_free(ctx);
    dc_noise_schedule_free(&s);
}
END_TEST

/* ---- random draws ---- */

START_TEST(test_timesteps) {
    const int64_t Ts[] = {1, 7, 1000};
    uint64_t seed = tu_next(), stream = tu_next() % 1000;
    for (size_t k = 0; k < 3; k++) {
        dc_noise_schedule_config c = dc_noise_schedule_default_config();
        c.num_train_timesteps = Ts[k];
        dc_noise_schedule s;
        ck_assert_msg(dc_noise_schedule_init(&s, &c) == 0, "%s", dc_error());
        dc_ctx *ctx = tu_ctx();
        const int64_t n = 1003;
        dc_tensor *t = dc_new(ctx, DC_I32, DC_SHAPE(n)), *u = dc_new(ctx, DC_I32, DC_SHAPE(n));
        ck_assert_int_eq(dc_sample_timesteps(&s, t, seed, stream, 0), 0);
        const int32_t *tv = t->data, *uv = u->data;
        for (int64_t i = 0; i < n; i++) {
            ck_assert_msg(tv[i] >= 0 && tv[i] < s.T, "t[%lld] = %d, T %lld", (long long)i, tv[i],
                          (long long)s.T);
            /* the documented mapping */
            uint32_t w = dc_rand_block(seed, stream, (uint64_t)i / 4).w[i % 4];
            ck_assert_int_eq(tv[i], (int32_t)(((uint64_t)w * (uint64_t)s.T) >> 32));
        }
        /* the same draws again, and the tail drawn on its own from an odd offset */
        ck_assert_int_eq(dc_sample_timesteps(&s, u, seed, stream, 0), 0);
        ck_assert(!memcmp(tv, uv, (size_t)n * 4));
        dc_tensor *tail = dc_new(ctx, DC_I32, DC_SHAPE(n - 401));
        ck_assert_int_eq(dc_sample_timesteps(&s, tail, seed, stream, 401), 0);
        ck_assert(!memcmp(tv + 401, tail->data, (size_t)(n - 401) * 4));
        /* another stream draws otherwise */
        if (s.T == 1000) {
            ck_assert_int_eq(dc_sample_timesteps(&s, u, seed, stream + 1, 0), 0);
            int same = 0;
            for (int64_t i = 0; i < n; i++)
                same += tv[i] == uv[i];
            ck_assert_msg(same < 20, "%d of %lld equal", same, (long long)n);
        }
        tu_ctx_free(ctx);
        dc_noise_schedule_free(&s);
    }
}
END_TEST

/* Chi-square over T = 10 bins: uniform, and no bias towards either end. */
START_TEST(test_timesteps_uniform) {
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    c.num_train_timesteps = 10;
    dc_noise_schedule s;
    ck_assert_int_eq(dc_noise_schedule_init(&s, &c), 0);
    dc_ctx *ctx = tu_ctx();
    const int64_t n = 200000;
    dc_tensor *t = dc_new(ctx, DC_I32, DC_SHAPE(n));
    ck_assert_int_eq(dc_sample_timesteps(&s, t, tu_next(), tu_next(), tu_next() >> 20), 0);
    int64_t count[10] = {0};
    for (int64_t i = 0; i < n; i++)
        count[((int32_t *)t->data)[i]]++;
    double chi2 = 0, e = (double)n / 10;
    for (int b = 0; b < 10; b++)
        chi2 += (count[b] - e) * (count[b] - e) / e;
    ck_assert_msg(chi2 < 50, "chi-square %g over 9 degrees of freedom (p < 1e-6)", chi2);
    tu_ctx_free(ctx);
    dc_noise_schedule_free(&s);
}
END_TEST

START_TEST(test_noise) {
    dc_ctx *ctx = tu_ctx();
    uint64_t seed = tu_next(), stream = tu_next(), offset = tu_next() >> 24;
    dc_tensor *x = dc_new(ctx, DC_F32, DC_SHAPE(3, 5, 5, 3));
    ck_assert_int_eq(dc_sample_noise(x, seed, stream, offset), 0);
    for (int64_t i = 0; i < x->numel; i++)
        ck_assert(((float *)x->data)[i] == dc_rand_normal(seed, stream, offset + (uint64_t)i));
    dc_tensor *t = dc_new(ctx, DC_I32, DC_SHAPE(4));
    ck_assert_int_eq(dc_sample_noise(t, seed, stream, 0), -1);
    ck_assert_msg(strstr(dc_error(), "sample_noise: need an f32 tensor, got i32"), "%s",
                  dc_error());
    dc_noise_schedule s;
    default_schedule(&s, DC_BETA_LINEAR);
    ck_assert_int_eq(dc_sample_timesteps(&s, x, seed, stream, 0), -1);
    ck_assert_msg(strstr(dc_error(), "sample_timesteps: need an i32 tensor"), "%s", dc_error());
    dc_noise_schedule_free(&s);
    ck_assert_int_eq(dc_sample_timesteps(&s, t, seed, stream, 0), -1);
    ck_assert_msg(strstr(dc_error(), "not initialised"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

/* ---- scheduler configs ---- */

static char tmpdir[64];

static const char *tmp_file(const char *name, const char *text) {
    static char path[128];
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/dc_diffusion_XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    }
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    if (text) {
        FILE *fp = fopen(path, "wb");
        ck_assert_ptr_nonnull(fp);
        fputs(text, fp);
        fclose(fp);
    }
    return path;
}

START_TEST(test_config_from_diffusers) {
    dc_noise_schedule_config c;
    ck_assert_msg(dc_noise_schedule_config_load(&c, CONFIG_FIXTURE) == 0, "%s", dc_error());
    ck_assert_int_eq(c.beta_schedule, DC_BETA_SCALED_LINEAR);
    ck_assert_int_eq(c.prediction_type, DC_PRED_V_PREDICTION);
    ck_assert_int_eq(c.num_train_timesteps, 500);
    ck_assert(c.beta_start == 0.00085 && c.beta_end == 0.012);
    /* absent keys take DDPMScheduler's defaults */
    ck_assert_int_eq(dc_noise_schedule_config_parse(&c, "{\"prediction_type\": \"sample\"}", "x"),
                     0);
    dc_noise_schedule_config d = dc_noise_schedule_default_config();
    ck_assert(c.num_train_timesteps == d.num_train_timesteps && c.beta_start == d.beta_start &&
              c.beta_end == d.beta_end && c.beta_schedule == d.beta_schedule);
    ck_assert_int_eq(c.prediction_type, DC_PRED_SAMPLE);
    ck_assert(d.num_train_timesteps == 1000 && d.beta_start == 0.0001 && d.beta_end == 0.02 &&
              d.beta_schedule == DC_BETA_LINEAR && d.prediction_type == DC_PRED_EPSILON);
}
END_TEST

START_TEST(test_config_round_trip) {
    dc_noise_schedule_config c = {.num_train_timesteps = 37,
                                  .beta_start = 0.000123456789,
                                  .beta_end = 0.0271828,
                                  .beta_schedule = DC_BETA_SQUAREDCOS_CAP_V2,
                                  .prediction_type = DC_PRED_V_PREDICTION,
                                  .rescale_betas_zero_snr = true},
                             r;
    const char *path = tmp_file("scheduler_config.json", NULL);
    ck_assert_msg(dc_noise_schedule_config_save(&c, path) == 0, "%s", dc_error());
    ck_assert_msg(dc_noise_schedule_config_load(&r, path) == 0, "%s", dc_error());
    ck_assert(r.num_train_timesteps == c.num_train_timesteps && r.beta_start == c.beta_start &&
              r.beta_end == c.beta_end && r.beta_schedule == c.beta_schedule &&
              r.prediction_type == c.prediction_type && r.rescale_betas_zero_snr);
    unlink(path);
    ck_assert_int_eq(dc_noise_schedule_config_save(&c, "/nonexistent/dir/scheduler_config.json"),
                     -1);
    ck_assert_msg(strstr(dc_error(), "/nonexistent/dir/scheduler_config.json: cannot create"), "%s", dc_error());
    rmdir(tmpdir);
}
END_TEST

/* Python's json writes NaN, Infinity and -Infinity (diffusers' DPM-Solver config holds
 * -Infinity); they read as such, strings keep them as text, and error positions are
 * those of the original text. */
START_TEST(test_json_nonfinite) {
    const char *text = "{\"a\": [NaN, 1.5, -Infinity, \"NaN -Infinity\\\" Infinity\", Infinity],\n"
                       " \"b\": {\"c\": NaN, \"d\": -2e3}, \"e\": -0}";
    cJSON *j = dc_json_parse(text, strlen(text), "t");
    ck_assert_msg(j != NULL, "%s", dc_error());
    const cJSON *a = cJSON_GetObjectItem(j, "a"), *b = cJSON_GetObjectItem(j, "b");
    ck_assert_int_eq(cJSON_GetArraySize(a), 5);
    ck_assert(isnan(cJSON_GetArrayItem(a, 0)->valuedouble));
    ck_assert(cJSON_GetArrayItem(a, 1)->valuedouble == 1.5);
    ck_assert(cJSON_GetArrayItem(a, 2)->valuedouble == -INFINITY);
    ck_assert_str_eq(cJSON_GetArrayItem(a, 3)->valuestring, "NaN -Infinity\" Infinity");
    ck_assert(cJSON_GetArrayItem(a, 4)->valuedouble == INFINITY);
    ck_assert(isnan(cJSON_GetObjectItem(b, "c")->valuedouble));
    ck_assert(cJSON_GetObjectItem(b, "d")->valuedouble == -2000);
    cJSON_Delete(j);
    static const struct {
        const char *json, *message;
    } bad[] = {
        {"{\"x\": -Infinit}", "t:1:7: not valid JSON here"},
        {"{\"x\":\n  Infinityy}", "t:2:11: not valid JSON here"},
        {"{\"x\": NaNa, \"y\": 1}", "t:1:10: not valid JSON here"},
        {"{\"x\": -NaN}", "t:1:7: not valid JSON here"},
        {"{\"x\": 1NaN}", "t:1:8: not valid JSON here"},
        {"[Infinity] NaN", "t:1:12: text after the JSON value"},
        {"{\"x\": inf}", "t:1:7: not valid JSON here"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_ptr_null(dc_json_parse(bad[i].json, strlen(bad[i].json), "t"));
        ck_assert_msg(strstr(dc_error(), bad[i].message), "%s: %s", bad[i].json, dc_error());
    }
    /* a number key of a scheduler config may be one of them; the checks still apply */
    dc_noise_schedule_config c;
    ck_assert_int_eq(dc_noise_schedule_config_parse(&c, "{\"beta_end\": NaN}", "cfg"), 0);
    dc_noise_schedule s;
    ck_assert_int_ne(dc_noise_schedule_init(&s, &c), 0);
    ck_assert_msg(strstr(dc_error(), "beta_end nan must lie in (0, 1)"), "%s", dc_error());
    ck_assert_int_ne(dc_noise_schedule_config_parse(&c, "{\"num_train_timesteps\": Infinity}", "cfg"), 0);
    ck_assert_msg(strstr(dc_error(), "num_train_timesteps inf must be a whole number"), "%s", dc_error());
}
END_TEST

START_TEST(test_config_refused) {
    static const struct {
        const char *json, *message;
    } bad[] = {
        {"{\"beta_schedule\": \"sigmoid\"}", "cfg: unknown beta_schedule 'sigmoid' (expected "
                                             "linear, scaled_linear or squaredcos_cap_v2)"},
        {"{\"prediction_type\": \"x0\"}", "cfg: unknown prediction_type 'x0'"},
        {"{\"num_train_timesteps\": 10.5}", "num_train_timesteps 10.5 must be a whole number"},
        {"{\"num_train_timesteps\": 0}",
         "num_train_timesteps 0 must be a whole number in [1, 16777216]"},
        {"{\"num_train_timesteps\": \"1000\"}", "cfg: num_train_timesteps must be a number"},
        {"{\"beta_start\": \"0.1\"}", "cfg: beta_start must be a number, got a string"},
        {"{\"beta_schedule\": 3}", "cfg: beta_schedule must be a string"},
        {"{\"trained_betas\": [0.1, 0.2]}", "cfg: trained_betas is not supported"},
        {"{\"rescale_betas_zero_snr\": 1}", "cfg: rescale_betas_zero_snr must be true or false"},
        {"{\"beta_start\": 0.0001,", "cfg:1:22: not valid JSON here"},
        {"[1000]", "cfg: not a JSON object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dc_noise_schedule_config c;
        ck_assert_int_eq(dc_noise_schedule_config_parse(&c, bad[i].json, "cfg"), -1);
        ck_assert_msg(strstr(dc_error(), bad[i].message), "%s: %s", bad[i].json, dc_error());
    }
    /* the explicit "off" values of the refused keys are fine */
    dc_noise_schedule_config c;
    ck_assert_int_eq(dc_noise_schedule_config_parse(
                         &c, "{\"trained_betas\": null, \"rescale_betas_zero_snr\": false}", "cfg"),
                     0);
    ck_assert_int_eq(dc_noise_schedule_config_load(&c, "/nonexistent/scheduler_config.json"), -1);
    ck_assert_msg(strstr(dc_error(), "/nonexistent/scheduler_config.json: cannot open"), "%s",
                  dc_error());
}
END_TEST

START_TEST(test_schedule_refused) {
    static const struct {
        int64_t T;
        double start, end;
        dc_beta_schedule b;
        const char *message;
    } bad[] = {
        {0, 0.0001, 0.02, DC_BETA_LINEAR, "num_train_timesteps 0 is outside [1, 16777216]"},
        {1000, 0.0001, 1.5, DC_BETA_LINEAR,
         "beta_start 0.0001 and beta_end 1.5 must lie in (0, 1)"},
        {1000, 0.0, 0.02, DC_BETA_SCALED_LINEAR,
         "beta_start 0 and beta_end 0.02 must lie in (0, 1)"},
        {1000, 1e-9, 0.02, DC_BETA_LINEAR, "betas[0] = 1e-09; every beta must lie in (0, 1)"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dc_noise_schedule_config c = {bad[i].T, bad[i].start, bad[i].end, bad[i].b,
                                      DC_PRED_EPSILON, false};
        dc_noise_schedule s;
        ck_assert_int_eq(dc_noise_schedule_init(&s, &c), -1);
        ck_assert_msg(strstr(dc_error(), bad[i].message), "%s", dc_error());
        ck_assert_ptr_null(s.betas);
        dc_noise_schedule_free(&s);
    }
    dc_beta_schedule b;
    dc_prediction_type p;
    ck_assert_int_eq(dc_beta_schedule_parse("cosine", &b), -1);
    ck_assert_int_eq(dc_prediction_type_parse("eps", &p), -1);
    ck_assert_msg(strstr(dc_error(), "expected epsilon, v_prediction or sample"), "%s", dc_error());
    dc_noise_schedule_free(NULL);
}
END_TEST

/* ---- op errors ---- */

static void expect_fail(dc_ctx *ctx, dc_tensor *out, const char *message) {
    ck_assert_ptr_null(out);
    ck_assert(ctx->failed);
    ck_assert_msg(strstr(dc_error(), message), "want '%s', got '%s'", message, dc_error());
    dc_ctx_reset(ctx);
}

/* Valid op inputs, made afresh after each reset: x0 and noise [3, 4, 4, 2], t [3]. */
typedef struct {
    dc_tensor *x, *e, *t;
} op_inputs;

static op_inputs fresh(dc_ctx *ctx) {
    op_inputs in = {tu_randn(ctx, DC_SHAPE(3, 4, 4, 2)), tu_randn(ctx, DC_SHAPE(3, 4, 4, 2)),
                    rand_t(ctx, 3, 0, 1000)};
    return in;
}

START_TEST(test_op_errors) {
    dc_noise_schedule s, none;
    default_schedule(&s, DC_BETA_LINEAR);
    memset(&none, 0, sizeof none);
    dc_ctx *ctx = tu_ctx();
    op_inputs a = fresh(ctx);
    expect_fail(ctx, dc_q_sample(ctx, a.x, tu_randn(ctx, DC_SHAPE(3, 4, 2, 4)), a.t, &s),
                "q_sample: noise [3, 4, 2, 4] and x0 [3, 4, 4, 2] differ");
    a = fresh(ctx);
    expect_fail(
        ctx, dc_q_sample(ctx, a.x, a.e, tu_randn(ctx, DC_SHAPE(3)), &s),
        "q_sample: t must be i32 [3], one timestep per sample of x0 [3, 4, 4, 2]; got f32 [3]");
    a = fresh(ctx);
    expect_fail(ctx, dc_q_sample(ctx, a.x, a.e, rand_t(ctx, 4, 0, 1000), &s), "got i32 [4]");
    a = fresh(ctx);
    ((int32_t *)a.t->data)[2] = 1000;
    expect_fail(ctx, dc_q_sample(ctx, a.x, a.e, a.t, &s),
                "q_sample: t[2] = 1000 is outside [0, 1000)");
    a = fresh(ctx);
    ((int32_t *)a.t->data)[1] = -1;
    expect_fail(ctx, dc_diffusion_loss(ctx, a.x, a.x, a.e, a.t, &s, DC_PRED_EPSILON, 0, NULL),
                "diffusion_loss: t[1] = -1 is outside [0, 1000)");
    a = fresh(ctx);
    expect_fail(ctx, dc_q_sample(ctx, a.x, a.e, a.t, &none),
                "q_sample: the noise schedule is not initialised");
    a = fresh(ctx);
    expect_fail(ctx,
                dc_diffusion_loss(ctx, tu_randn(ctx, DC_SHAPE(3, 32)), a.x, a.e, a.t, &s,
                                  DC_PRED_EPSILON, 0, NULL),
                "diffusion_loss: model_output [3, 32] and x0 [3, 4, 4, 2] differ");
    a = fresh(ctx);
    expect_fail(ctx, dc_diffusion_loss(ctx, a.x, a.x, a.e, a.t, &s, DC_PRED_COUNT, 0, NULL),
                "diffusion_loss: unknown prediction type 3");
    const float bad_gamma[] = {-1.0f, NAN, INFINITY};
    for (int g = 0; g < 3; g++) {
        a = fresh(ctx);
        expect_fail(ctx,
                    dc_diffusion_loss(ctx, a.x, a.x, a.e, a.t, &s, DC_PRED_SAMPLE, bad_gamma[g], NULL),
                    "must be 0 (off) or positive and finite");
    }
    a = fresh(ctx);
    expect_fail(ctx, dc_q_sample(ctx, dc_new(ctx, DC_I32, DC_SHAPE(3, 4, 4, 2)), a.e, a.t, &s),
                "q_sample: argument 1 is i32, expected f32");
    a = fresh(ctx);
    expect_fail(ctx,
                dc_q_sample(ctx, tu_randn(ctx, DC_SHAPE(0)), tu_randn(ctx, DC_SHAPE(0)), a.t, &s),
                "q_sample: x0 [0] is empty");
    /* sticky: after a failure valid inputs fail too, keeping the first message */
    a = fresh(ctx);
    ck_assert_ptr_null(dc_diffusion_loss(ctx, a.x, a.x, a.e, a.t, NULL, DC_PRED_EPSILON, 0, NULL));
    ck_assert_ptr_null(dc_q_sample(ctx, a.x, a.e, a.t, &s));
    ck_assert_msg(strstr(dc_error(), "diffusion_loss: the noise schedule is not initialised"), "%s",
                  dc_error());
    tu_ctx_free(ctx);
    dc_noise_schedule_free(&s);
}
END_TEST

int main(void) {
    Suite *s = suite_create("diffusion");
    TCase *tc = tu_tcase(s, "diffusers", 60);
    tcase_add_test(tc, test_schedules_vs_diffusers);
    tcase_add_test(tc, test_q_sample_vs_add_noise);
    tcase_add_test(tc, test_velocity_vs_get_velocity);
    tcase_add_test(tc, test_loss_vs_diffusers);
    tc = tu_tcase(s, "ops", 60);
    tcase_add_test(tc, test_q_sample_reference);
    tcase_add_test(tc, test_loss_reference);
    tcase_add_test(tc, test_q_sample_gradient);
    tcase_add_test(tc, test_loss_gradient);
    tcase_add_test(tc, test_loss_gradient_model_output_only);
    tcase_add_test(tc, test_gradients_large);
    tcase_add_test(tc, test_op_errors);
    tc = tu_tcase(s, "draws", 60);
    tcase_add_test(tc, test_timesteps);
    tcase_add_test(tc, test_timesteps_uniform);
    tcase_add_test(tc, test_noise);
    tc = tu_tcase(s, "config", 60);
    tcase_add_test(tc, test_config_from_diffusers);
    tcase_add_test(tc, test_config_round_trip);
    tcase_add_test(tc, test_config_refused);
    tcase_add_test(tc, test_json_nonfinite);
    tcase_add_test(tc, test_schedule_refused);
    return tu_run(s);
}
