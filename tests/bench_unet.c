/*
 * CPU benchmark of the whole UNet: one training step's forward and backward
 * (gradients of every parameter and of the input, seeded with a fixed random
 * output gradient) of the model a diffusers config.json describes, on random
 * weights and inputs. Prints the best of the repetitions as one line:
 *   bench unet config=PATH batch=N size=HxW params=P fwd_ms=F bwd_ms=B total_ms=T images_per_s=I
 * peak_act_mb=M scripts/bench_unet_torch.py prints the same line for diffusers' UNet2DModel; run
 * both with the same thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS,
 * --threads) to compare.
 *
 * usage: bench_unet --config PATH [--batch N] [--size S] [--reps N] [--warmup N]
 */
#include "autograd/error.h"
#include "models/unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *config;
    int batch, size, reps, warmup;
} options;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Uniform in [-1, 1) from a fixed LCG: the data only has to be non-trivial. */
static void fill(float *x, int64_t n, float scale) {
    static uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = scale * (float)((double)(s >> 40) / (double)(1 << 23) - 1.0);
    }
}

static dc_tensor *random_tensor(dc_ctx *ctx, int ndim, const int64_t *shape, float scale) {
    dc_tensor *t = dc_new(ctx, DC_F32, ndim, shape);
    if (t)
        fill(t->data, t->numel, scale);
    return t;
}

/* One step from a fresh arena: forward, then backward from dy. */
static int step(dc_ctx *ctx, const dc_unet *m, const options *o, double *fwd_s, double *bwd_s) {
    dc_ctx_reset(ctx);
    const dc_unet_config *c = &m->cfg;
    int64_t n = o->batch, s = o->size;
    dc_tensor *x = random_tensor(ctx, DC_SHAPE(n, s, s, c->in_channels), 1.0f);
    dc_tensor *t = random_tensor(ctx, DC_SHAPE(n), 500.0f);
    dc_tensor *dy = random_tensor(ctx, DC_SHAPE(n, s, s, c->out_channels), 1.0f);
    dc_tensor *y = c->num_class_embeds ? dc_new(ctx, DC_I32, DC_SHAPE(n)) : NULL;
    if (!x || !t || !dy || (c->num_class_embeds && !y))
        return -1;
    for (int64_t i = 0; y && i < n; i++)
        ((int32_t *)y->data)[i] = (int32_t)(i % c->num_class_embeds);
    x->requires_grad = true;
    double t0 = now();
    dc_tensor *out = dc_unet_forward(ctx, m, x, t, y);
    double t1 = now();
    int rc = out ? dc_backward_from(ctx, out, dy) : -1;
    *fwd_s = t1 - t0;
    *bwd_s = now() - t1;
    return rc;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){NULL, 8, 0, 5, 2};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config"))
            o->config = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            o->batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size"))
            o->size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            o->reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup"))
            o->warmup = atoi(argv[i + 1]);
        else
            return -1;
    }
    return argc % 2 == 1 && o->config && o->batch >= 1 && o->size >= 0 && o->reps >= 1 &&
                   o->warmup >= 0
               ? 0
               : -1;
}

static int run(const options *o, dc_unet *m, dc_params *ps, dc_ctx *ctx) {
    double best_f = 1e30, best_b = 1e30, best_t = 1e30, f, b;
    for (int r = 0; r < o->warmup + o->reps; r++) {
        if (step(ctx, m, o, &f, &b))
            return -1;
        dc_params_zero_grad(ps);
        if (r < o->warmup)
            continue;
        best_f = f < best_f ? f : best_f;
        best_b = b < best_b ? b : best_b;
        best_t = f + b < best_t ? f + b : best_t;
    }
    size_t n = 0;
    for (int i = 0; i < ps->n; i++)
        n += (size_t)ps->p[i]->value.numel;
    printf("bench unet config=%s batch=%d size=%dx%d params=%zu fwd_ms=%.1f bwd_ms=%.1f "
           "total_ms=%.1f images_per_s=%.2f peak_act_mb=%.0f\n",
           o->config, o->batch, o->size, o->size, n, best_f * 1e3, best_b * 1e3, best_t * 1e3,
           o->batch / best_t, (double)ctx->act.peak / (1 << 20));
    return 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o)) {
        fprintf(stderr, "usage: %s --config PATH [--batch N] [--size S] [--reps N] [--warmup N]\n",
                argv[0]);
        return 2;
    }
    dc_unet_config c;
    dc_params ps;
    dc_unet m = {0}; /* dc_unet_free is safe on it until init succeeds */
    dc_ctx ctx;
    dc_params_init(&ps);
    int rc = dc_unet_config_load(&c, o.config);
    if (!rc && !o.size)
        o.size = c.sample_size[0] ? c.sample_size[0] : 32;
    rc = rc ? rc : dc_unet_init(&m, &c, &ps);
    rc = rc ? rc : dc_params_alloc(&ps, 1);
    rc = rc ? rc : dc_ctx_init(&ctx, DC_CPU, (size_t)16 << 30);
    if (!rc) {
        rc = run(&o, &m, &ps, &ctx);
        dc_ctx_free(&ctx);
    }
    if (rc)
        fprintf(stderr, "bench_unet: %s\n", dc_error());
    dc_unet_free(&m);
    dc_params_free(&ps);
    dc_unet_config_free(&c);
    return rc ? 1 : 0;
}
