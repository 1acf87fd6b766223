/* Optimizer arithmetic: AdamW, clipping, EMA and learning-rate schedules
 * against PyTorch and diffusers (tests/fixtures/optim_adamw.safetensors, made
 * by scripts/make_optim_fixtures.py), against plain double loops on fresh
 * random data, and against values worked out by hand from the formulas. */
#include "testutil.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/optim.h"
#include "autograd/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#define FIXTURE "tests/fixtures/optim_adamw.safetensors"

static void open_fixture(dc_st_file *f) {
    ck_assert_msg(dc_st_open(f, FIXTURE) == 0, "%s", dc_error());
}

/* A fixture tensor of n elements as doubles (F32 or F64), malloc'ed. */
static double *fx_values(const dc_st_file *f, const char *name, int64_t n) {
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL, "fixture has no %s", name);
    bool f64 = !strcmp(t->dtype_name, "F64");
    ck_assert_msg(f64 || t->dtype == DC_F32, "%s: dtype %s", name, t->dtype_name);
    ck_assert_msg(t->nbytes == (size_t)n * (f64 ? 8 : 4), "%s: %zu bytes", name, t->nbytes);
    double *out = malloc((size_t)n * sizeof *out);
    for (int64_t i = 0; i < n; i++) {
        if (f64) {
            memcpy(&out[i], (const char *)t->data + 8 * i, 8);
        } else {
            float v;
            memcpy(&v, (const char *)t->data + 4 * i, 4);
            out[i] = v;
        }
    }
    return out;
}

/* The same as floats (the inputs our f32 code takes). */
static float *fx_floats(const dc_st_file *f, const char *name, int64_t n) {
    double *d = fx_values(f, name, n);
    float *out = malloc((size_t)n * sizeof *out);
    for (int64_t i = 0; i < n; i++)
        out[i] = (float)d[i];
    free(d);
    return out;
}

static double fx_meta(const dc_st_file *f, const char *key) {
    const char *v = dc_st_meta(f, key);
    ck_assert_msg(v != NULL, "fixture has no metadata %s", key);
    return !strcmp(v, "True") ? 1.0 : !strcmp(v, "False") ? 0.0 : strtod(v, NULL);
}

/* ---- AdamW ---- */

START_TEST(test_adamw_vs_pytorch) {
    dc_st_file f;
    open_fixture(&f);
    const int64_t n = 37;
    int steps = (int)fx_meta(&f, "adamw.steps");
    double base_lr = fx_meta(&f, "adamw.lr");
    int64_t warmup = (int64_t)fx_meta(&f, "adamw.warmup"), total = (int64_t)fx_meta(&f, "adamw.total");
    dc_adamw o;
    ck_assert_int_eq(dc_adamw_init(&o, n, fx_meta(&f, "adamw.beta1"), fx_meta(&f, "adamw.beta2"),
                                   fx_meta(&f, "adamw.eps"), fx_meta(&f, "adamw.weight_decay")),
                     0);
    float *p = fx_floats(&f, "adamw.param.0", n);
    double *lrs = fx_values(&f, "adamw.lr", steps);
    char name[64];
    for (int k = 1; k <= steps; k++) {
        /* the learning rate came from diffusers' cosine schedule: ours must agree */
        double lr = dc_lr_at(DC_LR_COSINE, base_lr, k - 1, warmup, total);
        ck_assert_msg(fabs(lr - lrs[k - 1]) <= 1e-15, "step %d: lr %.17g, diffusers %.17g", k, lr,
                      lrs[k - 1]);
        snprintf(name, sizeof name, "adamw.grad.%d", k);
        float *g = fx_floats(&f, name, n);
        dc_adamw_step(&o, p, g, lr);
        snprintf(name, sizeof name, "adamw.param.%d", k);
        double *want = fx_values(&f, name, n);
        tu_assert_close(p, want, n, 1e-7, 1e-6, name);
        free(g);
        free(want);
    }
    ck_assert_int_eq(o.step, steps);
    double *m = fx_values(&f, "adamw.exp_avg", n), *v = fx_values(&f, "adamw.exp_avg_sq", n);
    tu_assert_close(o.m, m, n, 1e-9, 1e-6, "exp_avg");
    tu_assert_close(o.v, v, n, 1e-12, 1e-6, "exp_avg_sq");
    free(m);
    free(v);
    free(lrs);
    free(p);
    dc_adamw_free(&o);
    dc_st_close(&f);
}
END_TEST

/* Fresh random data and settings against the formula in double; the zero
 * tail stands for the padding of the flat buffers and must stay zero. */
START_TEST(test_adamw_vs_double_loop) {
    const int64_t n = 1001, live = 997;
    double b1 = tu_uniform(0.5, 0.95), b2 = tu_uniform(0.9, 0.999), eps = tu_uniform(1e-8, 1e-3);
    double wd = tu_uniform(0, 0.2);
    dc_adamw o;
    ck_assert_int_eq(dc_adamw_init(&o, n, b1, b2, eps, wd), 0);
    float *p = calloc(n, sizeof *p), *g = calloc(n, sizeof *g);
    double *rp = calloc(n, sizeof *rp), *rm = calloc(n, sizeof *rm), *rv = calloc(n, sizeof *rv);
    for (int64_t i = 0; i < live; i++)
        rp[i] = p[i] = (float)tu_normal();
    for (int t = 1; t <= 7; t++) {
        double lr = tu_uniform(1e-4, 1e-2);
        for (int64_t i = 0; i < live; i++)
            g[i] = (float)(tu_normal() * exp(tu_uniform(-6, 2)));
        dc_adamw_step(&o, p, g, lr);
        for (int64_t i = 0; i < n; i++) {
            rp[i] -= lr * wd * rp[i];
            rm[i] = b1 * rm[i] + (1 - b1) * g[i];
            rv[i] = b2 * rv[i] + (1 - b2) * (double)g[i] * g[i];
            double mhat = rm[i] / (1 - pow(b1, t)), vhat = rv[i] / (1 - pow(b2, t));
            rp[i] -= lr * mhat / (sqrt(vhat) + eps);
        }
        tu_assert_close(p, rp, n, 1e-6, 1e-5, "adamw param");
    }
    for (int64_t i = live; i < n; i++)
        ck_assert(p[i] == 0.0f && o.m[i] == 0.0f && o.v[i] == 0.0f);
    free(p);
    free(g);
    free(rp);
    free(rm);
    free(rv);
    dc_adamw_free(&o);
}
END_TEST

/* The _on functions on the CPU: the same bits as the plain ones, which
 * the trainer's bit-exact resume relies on; a GPU that is not there is an
 * error, not a crash. The GPU itself is test_cuda_train's. */
START_TEST(test_on_cpu) {
    const int64_t n = 777;
    float *p = malloc(n * sizeof *p), *q = malloc(n * sizeof *q);
    float *g = malloc(n * sizeof *g), *h = malloc(n * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        p[i] = q[i] = (float)tu_normal();
    dc_adamw a, b;
    ck_assert_int_eq(dc_adamw_init(&a, n, 0.9, 0.999, 1e-8, 1e-2), 0);
    ck_assert_int_eq(dc_adamw_init_on(&b, DC_CPU, n, 0.9, 0.999, 1e-8, 1e-2), 0);
    ck_assert(a.device == DC_CPU && b.device == DC_CPU);
    dc_ema_config c = dc_ema_default_config();
    dc_ema ea, eb;
    ck_assert_int_eq(dc_ema_init(&ea, p, n, &c), 0);
    ck_assert_int_eq(dc_ema_init_on(&eb, DC_CPU, q, n, &c), 0);
    ck_assert_int_eq(eb.device, DC_CPU);
    for (int t = 0; t < 4; t++) {
        for (int64_t i = 0; i < n; i++)
            g[i] = h[i] = (float)tu_normal();
        ck_assert_int_eq(dc_grad_scale_on(DC_CPU, h, n, 0.5f), 0);
        for (int64_t i = 0; i < n; i++)
            ck_assert(h[i] == g[i] * 0.5f);
        memcpy(h, g, n * sizeof *h);
        double na = dc_grad_clip_norm(g, n, 10.0), nb = dc_grad_clip_norm_on(DC_CPU, h, n, 10.0);
        ck_assert(na == nb);
        ck_assert_int_eq(dc_adamw_step(&a, p, g, 1e-2), 0);
        ck_assert_int_eq(dc_adamw_step(&b, q, h, 1e-2), 0);
        ck_assert_int_eq(dc_ema_step(&ea, p), 0);
        ck_assert_int_eq(dc_ema_step(&eb, q), 0);
    }
    ck_assert(!memcmp(p, q, n * sizeof *p) && !memcmp(a.m, b.m, n * sizeof *p) &&
              !memcmp(a.v, b.v, n * sizeof *p) && !memcmp(ea.shadow, eb.shadow, n * sizeof *p));
    if (dc_device_count() == 0) {
        dc_adamw o;
        dc_ema e;
        ck_assert_int_ne(dc_adamw_init_on(&o, 0, n, 0.9, 0.999, 1e-8, 1e-2), 0);
        ck_assert_ptr_null(o.m);
        dc_adamw_free(&o);
        ck_assert_int_ne(dc_ema_init_on(&e, 0, p, n, &c), 0);
        ck_assert_ptr_null(e.shadow);
        dc_ema_free(&e);
    }
    dc_ema_free(&ea);
    dc_ema_free(&eb);
    dc_adamw_free(&a);
    dc_adamw_free(&b);
    free(p), free(q), free(g), free(h);
}
END_TEST

START_TEST(test_adamw_errors) {
    dc_adamw o;
    ck_assert_int_ne(dc_adamw_init(&o, 10, 1.0, 0.999, 1e-8, 0.01), 0);
    ck_assert_msg(strstr(dc_error(), "adamw: betas (1, 0.999) must lie in [0, 1)"), "%s", dc_error());
    ck_assert_int_ne(dc_adamw_init(&o, 10, 0.9, 0.999, -1, 0.01), 0);
    ck_assert_msg(strstr(dc_error(), "must not be negative"), "%s", dc_error());
    ck_assert_int_ne(dc_adamw_init(&o, 0, 0.9, 0.999, 1e-8, 0.01), 0);
    ck_assert_msg(strstr(dc_error(), "adamw: no parameters"), "%s", dc_error());
    /* 2 x n floats past 2^64 bytes must not wrap to a small state */
    ck_assert_int_ne(dc_adamw_init(&o, SIZE_MAX / 8 + 1 + tu_next() % 1000, 0.9, 0.999, 1e-8, 0.01), 0);
    ck_assert_msg(strstr(dc_error(), "the size of its state overflows"), "%s", dc_error());
    dc_adamw_free(&o); /* safe on a failed init */
    dc_adamw_free(NULL);
}
END_TEST

/* ---- gradient clipping ---- */

START_TEST(test_clip_vs_pytorch) {
    dc_st_file f;
    open_fixture(&f);
    const int64_t n = 53;
    float *g = fx_floats(&f, "clip.grad", n);
    double *want = fx_values(&f, "clip.clipped", n), *norm = fx_values(&f, "clip.norm", 1);
    double got = dc_grad_clip_norm(g, n, fx_meta(&f, "clip.max_norm"));
    ck_assert_msg(fabs(got - norm[0]) <= 1e-6 * norm[0], "norm %.9g, torch %.9g", got, norm[0]);
    ck_assert(got > 5.0); /* the fixture does clip */
    tu_assert_close(g, want, n, 1e-8, 1e-6, "clipped gradient");
    free(g);
    free(want);
    free(norm);
    dc_st_close(&f);
}
END_TEST

START_TEST(test_clip_cases) {
    const int64_t n = 333;
    float g[333], keep[333];
    double ss = 0;
    for (int64_t i = 0; i < n; i++) {
        g[i] = (float)tu_normal();
        ss += (double)g[i] * g[i];
    }
    memcpy(keep, g, sizeof g);
    /* below the limit: measured, untouched */
    double norm = dc_grad_clip_norm(g, n, 1e3);
    ck_assert(fabs(norm - sqrt(ss)) <= 1e-12 * sqrt(ss));
    ck_assert(!memcmp(g, keep, sizeof g));
    /* max_norm <= 0: measures only */
    ck_assert(dc_grad_clip_norm(g, n, 0) == norm);
    ck_assert(!memcmp(g, keep, sizeof g));
    /* above: scaled to max_norm / (norm + 1e-6) */
    double max = norm / 3;
    ck_assert(dc_grad_clip_norm(g, n, max) == norm);
    double want[333];
    for (int64_t i = 0; i < n; i++)
        want[i] = keep[i] * (max / (norm + 1e-6));
    tu_assert_close(g, want, n, 1e-7, 1e-6, "clipped");
    /* a non-finite gradient: reported, nothing scaled */
    memcpy(g, keep, sizeof g);
    g[17] = NAN;
    ck_assert(isnan(dc_grad_clip_norm(g, n, 1.0)));
    g[17] = INFINITY;
    ck_assert(isinf(dc_grad_clip_norm(g, n, 1.0)));
    g[17] = keep[17];
    ck_assert(!memcmp(g, keep, sizeof g));
}
END_TEST

/* ---- EMA ---- */

static void check_decay(const dc_ema_config *c, int64_t step, double want) {
    double got = dc_ema_decay(c, step);
    ck_assert_msg(fabs(got - want) <= 1e-12, "optimization step %lld: decay %.15g, want %.15g",
                  (long long)step, got, want);
}

START_TEST(test_ema_decay_by_hand) {
    dc_ema_config c = dc_ema_default_config();
    ck_assert(c.decay == 0.9999 && c.min_decay == 0 && c.update_after_step == 0 && !c.use_ema_warmup);
    /* no warmup: (1 + s) / (10 + s) with s = step - 1, capped at decay */
    check_decay(&c, 0, 0.0);
    check_decay(&c, 1, 0.0); /* the first update copies the weights */
    check_decay(&c, 2, 2.0 / 11.0);
    check_decay(&c, 11, 0.55);
    check_decay(&c, 1000000, 0.9999);
    /* warmup 1 - (1 + s / inv_gamma)^-power */
    c.use_ema_warmup = true;
    c.power = 0.75;
    check_decay(&c, 2, 1.0 - 0.59460355750136053); /* 2^-3/4 */
    check_decay(&c, 16, 0.875);                     /* 1 - 16^-3/4 */
    c.power = 2.0 / 3.0;
    check_decay(&c, 8, 0.75);              /* 1 - 8^-2/3 */
    check_decay(&c, 27, 1.0 - 1.0 / 9.0); /* 1 - 27^-2/3 */
    c.inv_gamma = 2.0;
    c.power = 1.0;
    check_decay(&c, 3, 0.5); /* 1 - (1 + 2/2)^-1 */
    /* update_after_step shifts the start; min_decay is a floor */
    c = dc_ema_default_config();
    c.use_ema_warmup = true;
    c.power = 0.75;
    c.update_after_step = 10;
    check_decay(&c, 10, 0.0);
    check_decay(&c, 11, 0.0);
    check_decay(&c, 12, 1.0 - 0.59460355750136053);
    c.min_decay = 0.5;
    check_decay(&c, 12, 0.5);
    check_decay(&c, 11, 0.0); /* before the start the floor does not apply */
    check_decay(&c, 26, 0.875);
}
END_TEST

static void check_ema_fixture(const dc_st_file *f, const char *tag) {
    char key[64];
    const int64_t n = 19;
#define META(k) (snprintf(key, sizeof key, "%s.%s", tag, k), fx_meta(f, key))
    dc_ema_config c = {.decay = META("decay"),
                       .min_decay = META("min_decay"),
                       .update_after_step = (int64_t)META("update_after_step"),
                       .use_ema_warmup = META("use_ema_warmup") != 0};
    c.inv_gamma = c.use_ema_warmup ? META("inv_gamma") : 1.0;
    c.power = c.use_ema_warmup ? META("power") : 1.0;
    int steps = (int)META("steps");
#undef META
    snprintf(key, sizeof key, "%s.param.0", tag);
    float *p0 = fx_floats(f, key, n);
    snprintf(key, sizeof key, "%s.param", tag);
    float *params = fx_floats(f, key, steps * n);
    snprintf(key, sizeof key, "%s.shadow", tag);
    double *shadows = fx_values(f, key, steps * n);
    snprintf(key, sizeof key, "%s.decay", tag);
    double *decays = fx_values(f, key, steps);
    dc_ema e;
    ck_assert_int_eq(dc_ema_init(&e, p0, n, &c), 0);
    for (int k = 0; k < steps; k++) {
        dc_ema_step(&e, params + k * n);
        ck_assert_msg(fabs(e.cur_decay - decays[k]) <= 1e-15, "%s step %d: decay %.17g, diffusers %.17g",
                      tag, k + 1, e.cur_decay, decays[k]);
        snprintf(key, sizeof key, "%s shadow after step %d", tag, k + 1);
        tu_assert_close(e.shadow, shadows + k * n, n, 1e-7, 1e-6, key);
    }
    ck_assert_int_eq(e.optimization_step, steps);
    dc_ema_free(&e);
    free(p0);
    free(params);
    free(shadows);
    free(decays);
}

START_TEST(test_ema_vs_diffusers) {
    dc_st_file f;
    open_fixture(&f);
    check_ema_fixture(&f, "ema_warmup");
    check_ema_fixture(&f, "ema_plain");
    dc_st_close(&f);
}
END_TEST

START_TEST(test_ema_errors) {
    dc_ema e;
    float p[3] = {1, 2, 3};
    dc_ema_config c = dc_ema_default_config();
    c.min_decay = 0.99999;
    ck_assert_int_ne(dc_ema_init(&e, p, 3, &c), 0);
    ck_assert_msg(strstr(dc_error(), "ema: need 0 <= min_decay"), "%s", dc_error());
    c = dc_ema_default_config();
    c.use_ema_warmup = true;
    c.inv_gamma = 0;
    ck_assert_int_ne(dc_ema_init(&e, p, 3, &c), 0);
    ck_assert_msg(strstr(dc_error(), "inv_gamma"), "%s", dc_error());
    dc_ema_free(&e);
}
END_TEST

/* ---- learning-rate schedules ---- */

static void check_lr(dc_lr_schedule s, int64_t step, double want) {
    double got = dc_lr_at(s, 1e-3, step, 4, 12); /* base 1e-3, 4 warmup steps, 12 in all */
    ck_assert_msg(fabs(got - want) <= 1e-15, "%s step %lld: lr %.17g, want %.17g",
                  dc_lr_schedule_name(s), (long long)step, got, want);
}

START_TEST(test_lr_by_hand) {
    check_lr(DC_LR_CONSTANT, 0, 1e-3); /* diffusers' constant ignores warmup */
    check_lr(DC_LR_CONSTANT, 2, 1e-3);
    check_lr(DC_LR_CONSTANT, 50, 1e-3);
    for (dc_lr_schedule s = DC_LR_CONSTANT_WITH_WARMUP; s <= DC_LR_COSINE; s++) {
        check_lr(s, 0, 0.0);    /* the first step of a warmup learns nothing */
        check_lr(s, 2, 0.5e-3); /* warmup midpoint */
        check_lr(s, 3, 0.75e-3);
        check_lr(s, 4, 1e-3); /* end of warmup */
    }
    check_lr(DC_LR_CONSTANT_WITH_WARMUP, 12, 1e-3);
    check_lr(DC_LR_CONSTANT_WITH_WARMUP, 99, 1e-3);
    check_lr(DC_LR_LINEAR, 8, 0.5e-3); /* (12 - 8) / (12 - 4) */
    check_lr(DC_LR_LINEAR, 10, 0.25e-3);
    check_lr(DC_LR_LINEAR, 12, 0.0); /* end */
    check_lr(DC_LR_LINEAR, 20, 0.0);
    check_lr(DC_LR_COSINE, 6, 1e-3 * (0.5 + 0.35355339059327376)); /* (1 + cos(pi/4)) / 2 */
    check_lr(DC_LR_COSINE, 8, 0.5e-3);                             /* mid decay: cos(pi/2) = 0 */
    check_lr(DC_LR_COSINE, 12, 0.0);                               /* end */
    /* no warmup starts at the full rate */
    ck_assert(dc_lr_at(DC_LR_COSINE, 2e-4, 0, 0, 100) == 2e-4);
    ck_assert(dc_lr_at(DC_LR_LINEAR, 2e-4, 50, 0, 100) == 1e-4);
}
END_TEST

START_TEST(test_lr_vs_diffusers) {
    dc_st_file f;
    open_fixture(&f);
    double base = fx_meta(&f, "lr.base");
    int64_t warmup = (int64_t)fx_meta(&f, "lr.warmup"), total = (int64_t)fx_meta(&f, "lr.total");
    int steps = (int)fx_meta(&f, "lr.steps");
    for (dc_lr_schedule s = 0; s < DC_LR_COUNT; s++) {
        char key[64];
        snprintf(key, sizeof key, "lr.%s", dc_lr_schedule_name(s));
        double *want = fx_values(&f, key, steps);
        for (int k = 0; k < steps; k++) {
            double got = dc_lr_at(s, base, k, warmup, total);
            ck_assert_msg(fabs(got - want[k]) <= 1e-18, "%s step %d: %.17g, diffusers %.17g", key,
                          k, got, want[k]);
        }
        free(want);
    }
    dc_st_close(&f);
}
END_TEST

START_TEST(test_lr_names) {
    for (dc_lr_schedule s = 0; s < DC_LR_COUNT; s++) {
        dc_lr_schedule back = DC_LR_COUNT;
        ck_assert_int_eq(dc_lr_schedule_parse(dc_lr_schedule_name(s), &back), 0);
        ck_assert_int_eq(back, s);
    }
    dc_lr_schedule out = DC_LR_LINEAR;
    ck_assert_int_eq(dc_lr_schedule_parse("cosine", &out), 0);
    ck_assert_int_eq(out, DC_LR_COSINE);
    ck_assert_int_ne(dc_lr_schedule_parse("cosine_with_restarts", &out), 0);
    ck_assert_int_eq(out, DC_LR_COSINE); /* untouched on error */
    ck_assert_msg(strstr(dc_error(), "unknown learning-rate schedule 'cosine_with_restarts' "
                                     "(expected constant, constant_with_warmup, linear or cosine)"),
                  "%s", dc_error());
    ck_assert_int_ne(dc_lr_schedule_parse("Cosine", &out), 0);
    ck_assert_int_ne(dc_lr_schedule_parse("", &out), 0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("optim");
    TCase *tc = tu_tcase(s, "optim", 60);
    tcase_add_test(tc, test_adamw_vs_pytorch);
    tcase_add_test(tc, test_adamw_vs_double_loop);
    tcase_add_test(tc, test_adamw_errors);
    tcase_add_test(tc, test_on_cpu);
    tcase_add_test(tc, test_clip_vs_pytorch);
    tcase_add_test(tc, test_clip_cases);
    tcase_add_test(tc, test_ema_decay_by_hand);
    tcase_add_test(tc, test_ema_vs_diffusers);
    tcase_add_test(tc, test_ema_errors);
    tcase_add_test(tc, test_lr_by_hand);
    tcase_add_test(tc, test_lr_vs_diffusers);
    tcase_add_test(tc, test_lr_names);
    return tu_run(s);
}
