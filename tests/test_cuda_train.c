/* Training on a GPU against the same training on the CPU: parameters
 * allocated and initialised on GPU 0 (the same bits as on the CPU), weight
 * files written from and read into device buffers (renames included),
 * AdamW / EMA / clipping over a flat buffer step for step, the tiny fixture
 * UNets forward and backward, and three whole training steps (q_sample,
 * the diffusion loss, backward, clipping, AdamW, EMA) from the same start.
 *
 * Tolerances: the optimizer passes share their element arithmetic with the
 * CPU (cpu/optim.h) and are compiled without FMA contraction, so they agree
 * to 1e-6 relative; the UNet runs in f32 arithmetic (DC_MATH_F32) but sums in
 * another order (cuDNN, cuBLASLt), so outputs and gradients agree to 1e-4 of
 * their tensor's largest element. Over training steps Adam's normalised
 * updates amplify that noise where a gradient is near zero, so the weight
 * updates are compared as whole vectors (relative L2 error).
 *
 * Exits 77 (skipped) without a GPU; CUDA is first touched inside a test,
 * never in the process Check forks from. */
#include "testutil.h"

#ifndef DC_HAVE_CUDA
#include <stdio.h>
int main(void) {
    printf("test_cuda_train: this build has no CUDA: skipped\n");
    return 77;
}
#else

#include "autograd/device.h"
#include "autograd/diffusion.h"
#include "autograd/error.h"
#include "autograd/optim.h"
#include "autograd/safetensors.h"
#include "models/unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GPU 0
#define FIXTURES "tests/fixtures/"
#define TOL_OPTIM 1e-6 /* AdamW, EMA, clipping: the same element arithmetic */
#define TOL_UNET 1e-4  /* f32 sums in another order */
#define TOL_STEPS 1e-3 /* relative L2 error of weight updates after three steps */

static const char *const models[] = {"attn_class", "scale_shift", "legacy"};
#define N_MODELS 3

/* ---- helpers ---- */

/* n floats from `device` in a malloc'd host copy. */
static float *to_host(const float *p, int device, size_t n) {
    float *h = malloc(n * sizeof *h + 1);
    ck_assert_ptr_nonnull(h);
    ck_assert_msg(dc_memcpy(h, DC_CPU, p, device, n * sizeof *h) == 0, "%s", dc_error());
    return h;
}

/* A device copy of n host floats (dc_device_free). */
static float *to_gpu(const float *h, size_t n) {
    float *d = dc_device_alloc(GPU, n * sizeof *d + 1, "test buffer");
    ck_assert_msg(d != NULL, "%s", dc_error());
    ck_assert_msg(dc_memcpy(d, GPU, h, DC_CPU, n * sizeof *d) == 0, "%s", dc_error());
    return d;
}

/* |gpu - cpu| <= tol * (|cpu| + max |cpu|) everywhere; NaN fails. */
static void assert_near(const float *gpu, const float *cpu, size_t n, double tol,
                        const char *what) {
    double scale = tu_max_abs(cpu, (int64_t)n);
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)gpu[i] - cpu[i]) <= tol * (fabs(cpu[i]) + scale)))
            ck_abort_msg("%s: element %zu of %zu: GPU %.9g, CPU %.9g (tolerance %g of |CPU| + "
                         "%g; seed %llu)",
                         what, i, n, (double)gpu[i], (double)cpu[i], tol, scale,
                         (unsigned long long)tu_seed());
}

/* The device buffer `gpu` against the host buffer `cpu`, n floats. */
static void assert_near_gpu(const float *gpu, const float *cpu, size_t n, double tol,
                            const char *what) {
    float *h = to_host(gpu, GPU, n);
    assert_near(h, cpu, n, tol, what);
    free(h);
}

static void assert_same_bits(const float *gpu, const float *cpu, size_t n, const char *what) {
    float *h = to_host(gpu, GPU, n);
    for (size_t i = 0; i < n; i++)
        if (memcmp(&h[i], &cpu[i], sizeof *h))
            ck_abort_msg("%s: element %zu of %zu: GPU %.9g, CPU %.9g (seed %llu)", what, i, n,
                         (double)h[i], (double)cpu[i], (unsigned long long)tu_seed());
    free(h);
}

static void assert_close_scalar(double gpu, double cpu, double tol, const char *what) {
    ck_assert_msg(fabs(gpu - cpu) <= tol * fabs(cpu), "%s: GPU %.12g, CPU %.12g", what, gpu, cpu);
}

/* A fixture UNet on `device`: its config, parameters from `seed`, and its
 * weights when `load`. */
typedef struct {
    dc_unet_config cfg;
    dc_unet m;
    dc_params ps;
} model;

static void fixture_path(char *buf, size_t n, const char *name, const char *file) {
    snprintf(buf, n, FIXTURES "unet_%s/%s", name, file);
}

static void model_open(model *m, const char *name, int device, uint64_t seed, bool load) {
    char path[256];
    fixture_path(path, sizeof path, name, DC_UNET_CONFIG_FILE);
    ck_assert_msg(dc_unet_config_load(&m->cfg, path) == 0, "%s", dc_error());
    dc_params_init(&m->ps);
    ck_assert_msg(dc_unet_init(&m->m, &m->cfg, &m->ps) == 0, "%s", dc_error());
    ck_assert_msg(dc_params_alloc_on(&m->ps, device, seed) == 0, "%s", dc_error());
    ck_assert_int_eq(m->ps.device, device);
    fixture_path(path, sizeof path, name, DC_UNET_WEIGHTS_FILE);
    if (load)
        ck_assert_msg(dc_params_load(&m->ps, NULL, path, dc_unet_rename) == 0, "%s", dc_error());
}

static void model_close(model *m) {
    dc_unet_free(&m->m);
    dc_params_free(&m->ps);
    dc_unet_config_free(&m->cfg);
}

static dc_ctx *ctx_on(int device) {
    dc_ctx *ctx = malloc(sizeof *ctx);
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(dc_ctx_init(ctx, device, (size_t)1 << 30) == 0, "%s", dc_error());
    ctx->poison = true;
    return ctx;
}

static void ctx_free(dc_ctx *ctx) {
    dc_ctx_free(ctx);
    free(ctx);
}

/* ---- (a) allocation and initial values ---- */

START_TEST(test_init_same_bits) {
    ck_assert_msg(dc_device_set_math(GPU, DC_MATH_F32) == 0, "%s", dc_error());
    for (int k = 0; k < N_MODELS; k++) {
        uint64_t seed = tu_next();
        model c, g;
        model_open(&c, models[k], DC_CPU, seed, false);
        model_open(&g, models[k], GPU, seed, false);
        ck_assert_uint_eq(c.ps.total, g.ps.total);
        assert_same_bits(g.ps.data, c.ps.data, c.ps.total, models[k]);
        float *grad = to_host(g.ps.grad, GPU, g.ps.total);
        ck_assert_msg(tu_max_abs(grad, g.ps.total) == 0, "%s: gradients not zero", models[k]);
        free(grad);
        for (int i = 0; i < g.ps.n; i++) { /* every tensor a view of the device buffers */
            const dc_param *p = g.ps.p[i];
            ck_assert_int_eq(p->value.device, GPU);
            ck_assert_int_eq(p->grad.device, GPU);
            ck_assert_ptr_eq(p->value.data, g.ps.data + p->offset);
            ck_assert_ptr_eq(p->value.grad, &p->grad);
        }
        /* zero_grad on the device, padding included */
        ck_assert(dc_memset(g.ps.grad, GPU, 0x7f, g.ps.total * sizeof(float)) == 0);
        ck_assert_int_eq(dc_params_zero_grad(&g.ps), 0);
        grad = to_host(g.ps.grad, GPU, g.ps.total);
        ck_assert(tu_max_abs(grad, g.ps.total) == 0);
        free(grad);
        model_close(&g);
        model_close(&c);
    }
    ck_assert_msg(!dc_device_failed(GPU), "%s", dc_error());
}
END_TEST

/* ---- (b) weight files from and into device buffers ---- */

START_TEST(test_save_load) {
    tu_mkdtemp("cuda_train");
    uint64_t seed = tu_next();
    model g, c, want;
    model_open(&g, "attn_class", GPU, seed, false);
    model_open(&want, "attn_class", DC_CPU, seed, false);
    ck_assert_msg(dc_params_save(&g.ps, NULL, tu_path("gpu.safetensors"), NULL, NULL, 0) == 0,
                  "%s", dc_error());
    model_open(&c, "attn_class", DC_CPU, seed + 1, false);
    ck_assert_msg(dc_params_load(&c.ps, NULL, tu_path("gpu.safetensors"), NULL) == 0, "%s",
                  dc_error());
    ck_assert(memcmp(c.ps.data, want.ps.data, c.ps.total * sizeof(float)) == 0);

    /* another device buffer laid out like the parameters: an EMA shadow */
    dc_ema e;
    dc_ema_config ec = dc_ema_default_config();
    ck_assert_msg(dc_ema_init_on(&e, GPU, g.ps.data, g.ps.total, &ec) == 0, "%s", dc_error());
    ck_assert_int_eq(e.device, GPU);
    char path[256];
    fixture_path(path, sizeof path, "attn_class", DC_UNET_WEIGHTS_FILE);
    ck_assert_msg(dc_params_load(&c.ps, NULL, path, NULL) == 0, "%s", dc_error());
    ck_assert_msg(dc_params_load(&g.ps, e.shadow, path, NULL) == 0, "%s", dc_error());
    assert_same_bits(e.shadow, c.ps.data, c.ps.total, "EMA shadow loaded on the GPU");
    assert_same_bits(g.ps.data, want.ps.data, g.ps.total, "weights beside the shadow");
    ck_assert_msg(dc_params_save(&g.ps, e.shadow, tu_path("ema.safetensors"), NULL, NULL, 0) == 0,
                  "%s", dc_error());
    ck_assert_msg(dc_params_load(&want.ps, NULL, tu_path("ema.safetensors"), NULL) == 0, "%s",
                  dc_error());
    ck_assert(memcmp(want.ps.data, c.ps.data, c.ps.total * sizeof(float)) == 0);
    dc_ema_free(&e);
    model_close(&g);
    model_close(&c);
    model_close(&want);

    /* the old attention names, renamed on the way into device memory */
    model_open(&c, "legacy", DC_CPU, seed, true);
    model_open(&g, "legacy", GPU, seed + 1, true);
    assert_same_bits(g.ps.data, c.ps.data, c.ps.total, "legacy weights on the GPU");
    /* a refused file (old names without the rename) leaves the device values alone */
    fixture_path(path, sizeof path, "legacy", DC_UNET_WEIGHTS_FILE);
    ck_assert_int_ne(dc_params_load(&g.ps, NULL, path, NULL), 0);
    assert_same_bits(g.ps.data, c.ps.data, c.ps.total, "after a refused load");
    model_close(&g);
    model_close(&c);
    ck_assert_msg(!dc_device_failed(GPU), "%s", dc_error());
    tu_rmtemp();
}
END_TEST

/* ---- (c) the optimizer over a flat buffer ---- */

START_TEST(test_optimizer_steps) {
    const size_t n = ((size_t)1 << 17) + 13; /* not a multiple of a block */
    const int steps = 6;
    float *p = malloc(n * sizeof *p), *g = malloc(n * sizeof *g);
    ck_assert(p && g);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)tu_normal();
    float *dp = to_gpu(p, n), *dg = dc_device_alloc(GPU, n * sizeof *dg, "test grad");
    ck_assert_ptr_nonnull(dg);
    dc_adamw oc, og;
    ck_assert_int_eq(dc_adamw_init(&oc, n, 0.9, 0.999, 1e-8, 1e-2), 0);
    ck_assert_msg(dc_adamw_init_on(&og, GPU, n, 0.9, 0.999, 1e-8, 1e-2) == 0, "%s", dc_error());
    ck_assert_int_eq(og.device, GPU);
    dc_ema_config ec = dc_ema_default_config();
    ec.use_ema_warmup = true;
    dc_ema ecpu, egpu;
    ck_assert_int_eq(dc_ema_init(&ecpu, p, n, &ec), 0);
    ck_assert_msg(dc_ema_init_on(&egpu, GPU, dp, n, &ec) == 0, "%s", dc_error());
    for (int s = 0; s < steps; s++) {
        for (size_t i = 0; i < n; i++)
            g[i] = (float)(tu_normal() * 1e-2);
        ck_assert(dc_memcpy(dg, GPU, g, DC_CPU, n * sizeof *g) == 0);
        /* clip on odd steps, only measure on even ones */
        double max_norm = s % 2 ? 0.5 : 0.0;
        double nc = dc_grad_clip_norm(g, n, max_norm);
        double ng = dc_grad_clip_norm_on(GPU, dg, n, max_norm);
        assert_close_scalar(ng, nc, 1e-9, "gradient norm");
        assert_near_gpu(dg, g, n, TOL_OPTIM, "clipped gradient");
        double lr = 1e-3 * (s + 1);
        ck_assert_int_eq(dc_adamw_step(&oc, p, g, lr), 0);
        ck_assert_msg(dc_adamw_step(&og, dp, dg, lr) == 0, "%s", dc_error());
        ck_assert_int_eq(dc_ema_step(&ecpu, p), 0);
        ck_assert_msg(dc_ema_step(&egpu, dp) == 0, "%s", dc_error());
    }
    assert_near_gpu(dp, p, n, TOL_OPTIM, "AdamW weights");
    assert_near_gpu(og.m, oc.m, n, TOL_OPTIM, "AdamW first moment");
    assert_near_gpu(og.v, oc.v, n, TOL_OPTIM, "AdamW second moment");
    assert_near_gpu(egpu.shadow, ecpu.shadow, n, TOL_OPTIM, "EMA shadow");
    ck_assert(egpu.cur_decay == ecpu.cur_decay && og.step == oc.step);

    /* averaging accumulated gradients */
    ck_assert_int_eq(dc_grad_scale_on(DC_CPU, g, n, 0.25f), 0);
    ck_assert_msg(dc_grad_scale_on(GPU, dg, n, 0.25f) == 0, "%s", dc_error());
    assert_same_bits(dg, g, n, "scaled gradient");

    /* a non-finite gradient: the norm says so on the host, the buffer is left alone */
    const float bad[2] = {NAN, INFINITY};
    for (int k = 0; k < 2; k++) {
        ck_assert(dc_memcpy(dg + n / 2, GPU, &bad[k], DC_CPU, sizeof(float)) == 0);
        double norm = dc_grad_clip_norm_on(GPU, dg, n, 1.0);
        ck_assert_msg(k ? isinf(norm) : isnan(norm), "norm %g", norm);
        float *h = to_host(dg, GPU, n);
        ck_assert(k ? isinf(h[n / 2]) : isnan(h[n / 2]));
        ck_assert(memcmp(h, g, n / 2 * sizeof *h) == 0);
        free(h);
    }
    ck_assert_msg(!dc_device_failed(GPU), "%s", dc_error());
    dc_ema_free(&egpu);
    dc_ema_free(&ecpu);
    dc_adamw_free(&og);
    dc_adamw_free(&oc);
    dc_device_free(GPU, dg);
    dc_device_free(GPU, dp);
    free(g);
    free(p);
}
END_TEST

/* ---- (d) the fixture UNets forward and backward ---- */

/* A reference input of the fixture as a tensor of ctx. */
static dc_tensor *ref_input(dc_ctx *ctx, const dc_st_file *ref, const char *name) {
    const dc_st_tensor *t = dc_st_find(ref, name);
    if (!t)
        return NULL;
    dc_tensor *x = dc_from_host(ctx, (dc_dtype)t->dtype, t->ndim, t->shape, t->data);
    ck_assert_msg(x != NULL, "%s", dc_error());
    return x;
}

/* Output and input gradient of model m on ctx; parameter gradients land in m->ps. */
static void forward_backward(dc_ctx *ctx, model *m, const dc_st_file *ref, float **out,
                             float **dx) {
    dc_tensor *x = ref_input(ctx, ref, "input.x");
    x->requires_grad = true;
    dc_tensor *y = dc_unet_forward(ctx, &m->m, x, ref_input(ctx, ref, "input.t"),
                                   ref_input(ctx, ref, "input.y"));
    ck_assert_msg(y != NULL, "%s", dc_error());
    ck_assert_msg(dc_params_zero_grad(&m->ps) == 0, "%s", dc_error());
    ck_assert_msg(dc_backward_from(ctx, y, ref_input(ctx, ref, "input.r")) == 0, "%s",
                  dc_error());
    ck_assert_ptr_nonnull(x->grad);
    *out = to_host(y->data, y->device, (size_t)y->numel);
    *dx = to_host(x->grad->data, x->device, (size_t)x->numel);
}

/* Every element within tol of the tensor's largest CPU element. */
static void assert_close_max(const float *gpu, const float *cpu, size_t n, double tol,
                             const char *what) {
    double scale = tu_max_abs(cpu, (int64_t)n);
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)gpu[i] - cpu[i]) <= tol * scale))
            ck_abort_msg("%s: element %zu of %zu: GPU %.9g, CPU %.9g (tolerance %g of %g)", what,
                         i, n, (double)gpu[i], (double)cpu[i], tol, scale);
}

/* A shift shared by all keys leaves the softmax unchanged: to_k.bias has no
 * gradient in exact arithmetic, only rounding noise, on either device. */
static bool no_exact_gradient(const char *name) {
    size_t len = strlen(name), tail = strlen("to_k.bias");
    return len >= tail && !strcmp(name + len - tail, "to_k.bias");
}

START_TEST(test_unet_forward_backward) {
    const char *name = models[_i];
    ck_assert_msg(dc_device_set_math(GPU, DC_MATH_F32) == 0, "%s", dc_error());
    char path[256];
    fixture_path(path, sizeof path, name, "reference.safetensors");
    dc_st_file ref;
    ck_assert_msg(dc_st_open(&ref, path) == 0, "%s", dc_error());
    model c, g;
    model_open(&c, name, DC_CPU, 1, true);
    model_open(&g, name, GPU, 2, true);
    dc_ctx *cc = ctx_on(DC_CPU), *gc = ctx_on(GPU);
    cc->training = gc->training = false; /* the references are in eval mode */
    float *oc, *og, *xc, *xg;
    forward_backward(cc, &c, &ref, &oc, &xc);
    forward_backward(gc, &g, &ref, &og, &xg);
    char what[256];
    size_t n = (size_t)dc_st_find(&ref, "output")->nbytes / sizeof(float);
    snprintf(what, sizeof what, "%s output", name);
    assert_close_max(og, oc, n, TOL_UNET, what);
    n = (size_t)dc_st_find(&ref, "input.x")->nbytes / sizeof(float);
    snprintf(what, sizeof what, "%s grad x", name);
    assert_close_max(xg, xc, n, TOL_UNET, what);
    float *gg = to_host(g.ps.grad, GPU, g.ps.total);
    for (int i = 0; i < c.ps.n; i++) {
        const dc_param *p = c.ps.p[i];
        if (no_exact_gradient(p->name))
            continue;
        snprintf(what, sizeof what, "%s grad %s", name, p->name);
        assert_close_max(gg + p->offset, c.ps.grad + p->offset, (size_t)p->value.numel, TOL_UNET,
                         what);
    }
    free(gg);
    free(oc), free(og), free(xc), free(xg);
    ck_assert_msg(!dc_device_failed(GPU), "%s", dc_error());
    ctx_free(gc);
    ctx_free(cc);
    model_close(&g);
    model_close(&c);
    dc_st_close(&ref);
}
END_TEST

/* ---- (e) whole training steps ---- */

/* What one device trains. */
typedef struct {
    model m;
    dc_ctx *ctx;
    dc_adamw opt;
    dc_ema ema;
} trainer;

static void trainer_open(trainer *t, int device, uint64_t seed) {
    model_open(&t->m, "attn_class", device, seed, false);
    t->ctx = ctx_on(device);
    ck_assert_msg(dc_adamw_init_on(&t->opt, device, t->m.ps.total, 0.95, 0.999, 1e-8, 1e-6) == 0,
                  "%s", dc_error());
    dc_ema_config ec = dc_ema_default_config();
    ec.use_ema_warmup = true;
    ck_assert_msg(dc_ema_init_on(&t->ema, device, t->m.ps.data, t->m.ps.total, &ec) == 0, "%s",
                  dc_error());
}

static void trainer_close(trainer *t) {
    dc_ema_free(&t->ema);
    dc_adamw_free(&t->opt);
    ctx_free(t->ctx);
    model_close(&t->m);
}

/* One optimizer step on the batch (x0, labels) as the trainer takes it;
 * the loss and the gradient norm come back on the host. */
static void train_step(trainer *t, const dc_noise_schedule *s, int64_t step, const float *x0_host,
                       const int32_t *labels, int n, double *loss, double *norm) {
    dc_ctx *ctx = t->ctx;
    dc_params *ps = &t->m.ps;
    dc_ctx_reset(ctx);
    ctx->seed = 1234 + (uint64_t)step; /* dropout */
    int64_t shape[4] = {n, 8, 8, 3};
    dc_tensor *x0 = dc_from_host(ctx, DC_F32, 4, shape, x0_host);
    dc_tensor *noise = dc_new(ctx, DC_F32, 4, shape);
    dc_tensor *ts = dc_new(ctx, DC_I32, DC_SHAPE(n));
    dc_tensor *y = dc_from_host(ctx, DC_I32, DC_SHAPE(n), labels);
    ck_assert_msg(x0 && noise && ts && y, "%s", dc_error());
    uint64_t p0 = (uint64_t)(step * n);
    ck_assert_msg(dc_sample_noise(noise, 7, 1, p0 * 8 * 8 * 3) == 0, "%s", dc_error());
    ck_assert_msg(dc_sample_timesteps(s, ts, 7, 2, p0) == 0, "%s", dc_error());
    ck_assert_msg(dc_params_zero_grad(ps) == 0, "%s", dc_error());
    dc_tensor *xt = dc_q_sample(ctx, x0, noise, ts, s);
    dc_tensor *pred = dc_unet_forward(ctx, &t->m.m, xt, ts, y);
    dc_tensor *l = dc_diffusion_loss(ctx, pred, x0, noise, ts, s, DC_PRED_EPSILON, 5.0f, NULL);
    ck_assert_msg(l && dc_backward(ctx, l) == 0, "%s", dc_error());
    float lh;
    ck_assert_msg(dc_memcpy(&lh, DC_CPU, l->data, l->device, sizeof lh) == 0, "%s", dc_error());
    *loss = lh;
    *norm = dc_grad_clip_norm_on(ps->device, ps->grad, ps->total, 0.05);
    ck_assert_msg(isfinite(*loss) && isfinite(*norm), "loss %g, norm %g: %s", *loss, *norm,
                  dc_device_failed(ps->device) ? dc_error() : "not finite");
    ck_assert_msg(dc_adamw_step(&t->opt, ps->data, ps->grad, 1e-3) == 0, "%s", dc_error());
    ck_assert_msg(dc_ema_step(&t->ema, ps->data) == 0, "%s", dc_error());
}

/* ||(gpu - start) - (cpu - start)|| <= tol ||cpu - start||, and cpu moved. */
static void assert_update_near(const float *gpu_dev, const float *cpu, const float *start,
                               size_t n, double tol, const char *what) {
    float *gpu = to_host(gpu_dev, GPU, n);
    double diff = 0, moved = 0;
    for (size_t i = 0; i < n; i++) {
        double dc = (double)cpu[i] - start[i], dg = (double)gpu[i] - start[i];
        ck_assert_msg(isfinite(dg), "%s: element %zu is %g", what, i, (double)gpu[i]);
        diff += (dg - dc) * (dg - dc);
        moved += dc * dc;
    }
    ck_assert_msg(moved > 0, "%s: the CPU's did not move", what);
    ck_assert_msg(sqrt(diff) <= tol * sqrt(moved), "%s: update differs by %.3g of its norm %.3g",
                  what, sqrt(diff / moved), sqrt(moved));
    free(gpu);
}

START_TEST(test_training_steps) {
    ck_assert_msg(dc_device_set_math(GPU, DC_MATH_F32) == 0, "%s", dc_error());
    dc_noise_schedule_config sc = dc_noise_schedule_default_config();
    dc_noise_schedule s;
    ck_assert_msg(dc_noise_schedule_init(&s, &sc) == 0, "%s", dc_error());
    uint64_t seed = tu_next();
    trainer c, g;
    trainer_open(&c, DC_CPU, seed);
    trainer_open(&g, GPU, seed);
    ck_assert(c.ctx->training && g.ctx->training); /* dropout 0.1: the same masks */
    size_t total = c.m.ps.total;
    float *start = malloc(total * sizeof *start);
    memcpy(start, c.m.ps.data, total * sizeof *start);
    enum { N = 4 };
    float x0[N * 8 * 8 * 3];
    int32_t labels[N];
    for (int step = 0; step < 3; step++) {
        for (size_t i = 0; i < sizeof x0 / sizeof *x0; i++)
            x0[i] = (float)tu_uniform(-1, 1);
        for (int i = 0; i < N; i++)
            labels[i] = (int32_t)(tu_next() % 5);
        double lc, lg, nc, ng;
        train_step(&c, &s, step, x0, labels, N, &lc, &nc);
        train_step(&g, &s, step, x0, labels, N, &lg, &ng);
        assert_close_scalar(lg, lc, TOL_UNET, "loss");
        assert_close_scalar(ng, nc, TOL_UNET, "gradient norm");
    }
    assert_update_near(g.m.ps.data, c.m.ps.data, start, total, TOL_STEPS, "weights");
    assert_update_near(g.ema.shadow, c.ema.shadow, start, total, TOL_STEPS, "EMA weights");
    float *zero = calloc(total, sizeof *zero);
    assert_update_near(g.opt.m, c.opt.m, zero, total, TOL_STEPS, "AdamW first moment");
    free(zero);
    ck_assert_msg(!dc_device_failed(GPU), "%s", dc_error());
    free(start);
    trainer_close(&g);
    trainer_close(&c);
    dc_noise_schedule_free(&s);
}
END_TEST

int main(void) {
    if (tu_cuda_device_count() == 0) {
        printf("test_cuda_train: no CUDA GPU: skipped\n");
        return 77;
    }
    Suite *s = suite_create("cuda_train");
    TCase *tc = tu_tcase(s, "gpu", 300);
    tcase_add_test(tc, test_init_same_bits);
    tcase_add_test(tc, test_save_load);
    tcase_add_test(tc, test_optimizer_steps);
    tcase_add_loop_test(tc, test_unet_forward_backward, 0, N_MODELS);
    tcase_add_test(tc, test_training_steps);
    return tu_run(s);
}

#endif
