/*
 * CPU benchmark of sampling: dc_generate with DDIM (what `diffc sample` runs)
 * on the model a diffusers config.json describes, with random weights
 * (PyTorch's initialisation), for one batch. The config may also be a
 * training config whose "model" holds it (configs/fashion-mnist.json).
 * Class-conditional models get labels 0, 1, 2, ... cycled; no guidance.
 * Prints the best of the repetitions as one line:
 *   bench sample config=PATH batch=N steps=S size=HxW params=P seconds=T images_per_s=I
 * scripts/bench_sample_torch.py prints the same line for diffusers' DDIM
 * pipeline; run both with the same thread count to compare.
 *
 * usage: bench_sample --config PATH [--batch N] [--steps N] [--reps N]
 */
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "pipeline/generate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *config;
    int batch, steps, reps;
} options;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){NULL, 64, 50, 2};
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--config"))
            o->config = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            o->batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            o->steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            o->reps = atoi(argv[i + 1]);
        else
            return -1;
    }
    return o->config && o->batch > 0 && o->steps > 0 && o->reps > 0 && argc % 2 == 1 ? 0 : -1;
}

/* The UNet config: the file itself, or its "model" object. */
static int load_config(dc_unet_config *c, const char *path) {
    cJSON *root = dc_json_load(path);
    if (!root)
        return -1;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    char *text = dc_json_print(cJSON_IsObject(model) ? model : root, false);
    int rc = text ? dc_unet_config_parse(c, text, path) : dc_fail("%s: out of memory", path);
    free(text);
    cJSON_Delete(root);
    return rc;
}

/* One batch of o->batch images, best of o->reps runs, in seconds. */
static int time_sampling(const options *o, const dc_unet *m, const dc_sampler_options *so,
                         const dc_noise_schedule *sched, double *best) {
    const dc_unet_config *c = &m->cfg;
    int h = c->sample_size[0] ? c->sample_size[0] : 32, w = c->sample_size[1] ? c->sample_size[1] : 32;
    int64_t n = o->batch;
    float *out = malloc((size_t)(n * h * w * c->in_channels) * sizeof *out);
    int32_t *labels = malloc((size_t)n * sizeof *labels);
    for (int64_t i = 0; labels && i < n; i++)
        labels[i] = c->num_class_embeds > 1 ? (int32_t)(i % (c->num_class_embeds - 1)) : 0;
    dc_ctx ctx = {0};
    dc_sampler s = {0};
    int rc = out && labels ? 0 : dc_fail("out of memory");
    if (!rc)
        rc = dc_ctx_init(&ctx, DC_CPU, (size_t)64 << 30) || dc_sampler_init(&s, DC_SAMPLER_DDIM, sched, so);
    dc_generate_request r = {.unet = m,
                             .sampler = &s,
                             .n = n,
                             .batch = n,
                             .h = h,
                             .w = w,
                             .labels = c->num_class_embeds ? labels : NULL,
                             .guidance_scale = 1.0f};
    *best = 1e30;
    for (int k = 0; !rc && k < o->reps; k++) {
        double t0 = now();
        rc = dc_generate(&ctx, &r, out);
        double t = now() - t0;
        *best = t < *best ? t : *best;
    }
    dc_sampler_free(&s);
    dc_ctx_free(&ctx);
    free(labels);
    free(out);
    return rc;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o)) {
        fprintf(stderr, "usage: bench_sample --config PATH [--batch N] [--steps N] [--reps N]\n");
        return 2;
    }
    dc_unet_config c;
    dc_unet m;
    dc_params ps;
    dc_params_init(&ps);
    dc_noise_schedule sched = {0};
    dc_noise_schedule_config sc = dc_noise_schedule_default_config();
    dc_sampler_options so = dc_sampler_default_options(DC_SAMPLER_DDIM);
    so.num_inference_steps = o.steps;
    double best = 0;
    int rc = load_config(&c, o.config) || dc_unet_init(&m, &c, &ps) || dc_params_alloc(&ps, 1) ||
             dc_noise_schedule_init(&sched, &sc) || time_sampling(&o, &m, &so, &sched, &best);
    if (rc) {
        fprintf(stderr, "bench_sample: %s\n", dc_error());
        return 1;
    }
    size_t params = 0;
    for (int i = 0; i < ps.n; i++)
        params += (size_t)ps.p[i]->value.numel;
    int h = c.sample_size[0] ? c.sample_size[0] : 32, w = c.sample_size[1] ? c.sample_size[1] : 32;
    printf("bench sample config=%s batch=%d steps=%d size=%dx%d params=%zu seconds=%.3f images_per_s=%.2f\n",
           o.config, o.batch, o.steps, h, w, params, best, o.batch / best);
    dc_noise_schedule_free(&sched);
    dc_unet_free(&m);
    dc_params_free(&ps);
    dc_unet_config_free(&c);
    return 0;
}
