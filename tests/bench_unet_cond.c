/*
 * CPU benchmark of UNet2DConditionModel's sampling step: one no-grad forward
 * (what a denoising step with classifier-free guidance runs, batch 2 = the
 * unconditional and the conditional half) of the model a diffusers
 * config.json describes, on random weights, latents and text states. Prints
 * the best of the repetitions as one line:
 *   bench unet_cond config=PATH batch=N size=HxW text=L params=P fwd_ms=F cpu_ms=C
 *   peak_act_mb=A peak_rss_mb=R
 * (cpu_ms: the CPU time of all threads, steadier than the wall time on a
 * shared machine). scripts/bench_unet_cond_torch.py prints the same line for
 * diffusers; run both with the same thread count (OMP_NUM_THREADS, --threads)
 * to compare.
 *
 * usage: bench_unet_cond --config PATH [--batch N] [--size S] [--text-len L] [--reps N] [--warmup N]
 */
#include "autograd/error.h"
#include "models/unet_cond.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    const char *config;
    int batch, size, text_len, reps, warmup;
} options;

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Uniform in [-scale, scale) from a fixed LCG: the data only has to be non-trivial. */
static dc_tensor *random_tensor(dc_ctx *ctx, int ndim, const int64_t *shape, float scale) {
    static uint64_t s = 0x9e3779b97f4a7c15ull;
    dc_tensor *t = dc_new(ctx, DC_F32, ndim, shape);
    for (int64_t i = 0; t && i < t->numel; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ((float *)t->data)[i] = scale * (float)((double)(s >> 40) / (double)(1 << 23) - 1.0);
    }
    return t;
}

/* One forward without a tape from a fresh arena; its wall time into *secs,
 * the CPU time of all threads into *cpu. */
static int step(dc_ctx *ctx, const dc_unet_cond *m, const options *o, double *secs, double *cpu) {
    dc_ctx_reset(ctx);
    const dc_unet_cond_config *c = &m->cfg;
    int64_t n = o->batch, s = o->size;
    dc_tensor *x = random_tensor(ctx, DC_SHAPE(n, s, s, c->in_channels), 1.0f);
    dc_tensor *t = random_tensor(ctx, DC_SHAPE(n), 500.0f);
    dc_tensor *text = random_tensor(ctx, DC_SHAPE(n, o->text_len, c->cross_attention_dim[0]), 1.0f);
    double t0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    dc_tensor *out = dc_unet_cond_forward(ctx, m, x, t, text);
    *secs = clock_s(CLOCK_MONOTONIC) - t0;
    *cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    return out ? 0 : -1;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){NULL, 2, 0, 77, 2, 1};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config"))
            o->config = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            o->batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--size"))
            o->size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--text-len"))
            o->text_len = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            o->reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup"))
            o->warmup = atoi(argv[i + 1]);
        else
            return -1;
    }
    return argc % 2 == 1 && o->config && o->batch >= 1 && o->size >= 0 && o->text_len >= 1 &&
                   o->reps >= 1 && o->warmup >= 0
               ? 0
               : -1;
}

static int run(const options *o, const dc_unet_cond *m, const dc_params *ps, dc_ctx *ctx) {
    double best = 1e30, best_cpu = 1e30, secs, cpu;
    for (int r = 0; r < o->warmup + o->reps; r++) {
        if (step(ctx, m, o, &secs, &cpu))
            return -1;
        best = r >= o->warmup && secs < best ? secs : best;
        best_cpu = r >= o->warmup && cpu < best_cpu ? cpu : best_cpu;
    }
    size_t n = 0;
    for (int i = 0; i < ps->n; i++)
        n += (size_t)ps->p[i]->value.numel;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("bench unet_cond config=%s batch=%d size=%dx%d text=%d params=%zu fwd_ms=%.1f "
           "cpu_ms=%.1f peak_act_mb=%.0f peak_rss_mb=%.0f\n",
           o->config, o->batch, o->size, o->size, o->text_len, n, best * 1e3, best_cpu * 1e3,
           (double)ctx->act.peak / (1 << 20), (double)ru.ru_maxrss / 1024);
    return 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o)) {
        fprintf(stderr, "usage: %s --config PATH [--batch N] [--size S] [--text-len L] [--reps N] "
                        "[--warmup N]\n", argv[0]);
        return 2;
    }
    dc_unet_cond_config c;
    dc_params ps;
    dc_unet_cond m = {0}; /* dc_unet_cond_free is safe on it until init succeeds */
    dc_ctx ctx;
    dc_params_init(&ps);
    int rc = dc_unet_cond_config_load(&c, o.config);
    if (!rc && !o.size)
        o.size = c.sample_size[0] ? c.sample_size[0] : 64;
    rc = rc ? rc : dc_unet_cond_init(&m, &c, &ps);
    rc = rc ? rc : dc_params_alloc(&ps, 1);
    rc = rc ? rc : dc_ctx_init(&ctx, DC_CPU, (size_t)16 << 30);
    if (!rc) {
        dc_set_grad_enabled(&ctx, false);
        ctx.training = false;
        rc = run(&o, &m, &ps, &ctx);
        dc_ctx_free(&ctx);
    }
    if (rc)
        fprintf(stderr, "bench_unet_cond: %s\n", dc_error());
    dc_unet_cond_free(&m);
    dc_params_free(&ps);
    dc_unet_cond_config_free(&c);
    return rc ? 1 : 0;
}
