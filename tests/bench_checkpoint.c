/*
 * Benchmark of gradient checkpointing (dc_checkpoint, `diffc train
 * --gradient-checkpointing`): training steps (forward, MSE against a random
 * target, backward) of a UNet2DModel or UNet2DConditionModel on random
 * weights, without and with checkpointing, on the same inputs. Prints one
 * line:
 *   bench checkpoint config=PATH model=unet|unet_cond device=D size=HxW batch=N params=P
 *   plain_ms=A ckpt_ms=B plain_cpu_ms=C ckpt_cpu_ms=D overhead_pct=O plain_held_mb=H
 *   ckpt_held_mb=K plain_peak_mb=X ckpt_peak_mb=Y device_peak_mb=M peak_rss_mb=R
 * held: what a step holds at once in the activation arena outside one
 * kernel's scratch (dc_act_held: what `diffc train` counts per image);
 * peak: the arena's high-water mark, scratch included; device_peak: that of
 * all the device's arenas (weights and gradients too) over both runs;
 * times: the best of --reps steps after --warmup (1), wall and CPU time of
 * all threads (the overhead is the CPU time's: steadier on a shared machine).
 *
 * --frozen leaves the parameters without gradients (the backward still
 * reaches every activation: the input requires grad), so a model as large
 * as SD-1.5's UNet is measured without its 3.4 GB of gradient buffers; its
 * activation figures are a training step's, but for the few kilobytes the
 * time embedding's and text states' tape adds. --only runs one of the two
 * (the other's figures print as 0): a step too large for the machine
 * without checkpoints can still be measured with them. --device cuda runs
 * it on a GPU (the CUDA build's bench_checkpoint): device_peak is then what
 * a GPU's training step needs besides AdamW's two moments.
 *
 * usage: bench_checkpoint --config PATH [--size S] [--batch N] [--text-len L] [--reps N] [--warmup N]
 *                         [--frozen] [--only plain|checkpointed] [--device cpu|cuda[:N]]
 *   (PATH: a diffusers config.json, or a training config holding one as "model";
 *   S: the model's input, latents for UNet2DConditionModel; default its sample_size)
 */
#include "autograd/device.h"
#include "autograd/error.h"
#include "models/config_json.h"
#include "models/unet.h"
#include "models/unet_cond.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    const char *config, *device; /* --device: cpu (default), cuda, cuda:N */
    int dev;                     /* what it resolves to */
    int size, batch, text_len, reps, warmup;
    bool frozen;
    bool plain, ckpt; /* the modes to run (--only plain|checkpointed: one) */
} options;

/* Either model, with what a step needs of it. */
typedef struct {
    bool cond;
    dc_unet_config ucfg;
    dc_unet unet;
    dc_unet_cond_config ccfg;
    dc_unet_cond cunet;
    dc_params ps;
    int in_ch, out_ch, text_width;
} model;

static double clock_s(clockid_t id) {
    struct timespec t;
    clock_gettime(id, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A step's wall time and the CPU time of all its threads (steadier on a shared machine). */
typedef struct {
    double wall, cpu;
} times;

/* Uniform in [-scale, scale) from a fixed LCG restarted per step (the same
 * data each time), made on the host and copied to the context's device. */
static dc_tensor *random_tensor(dc_ctx *ctx, uint64_t *s, int ndim, const int64_t *shape, float scale) {
    int64_t n = dc_shape_numel(ndim, shape);
    float *host = malloc((size_t)n * sizeof *host);
    for (int64_t i = 0; host && i < n; i++) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        host[i] = scale * (float)((double)(*s >> 40) / (double)(1 << 23) - 1.0);
    }
    dc_tensor *t = host ? dc_from_host(ctx, DC_F32, ndim, shape, host) : NULL;
    free(host);
    return t;
}

/* One training step from a fresh arena: its times, what it held and peaked at. */
static int step(dc_ctx *ctx, model *m, const options *o, times *secs, size_t *held, size_t *peak) {
    dc_ctx_reset(ctx);
    ctx->act.peak = 0;
    ctx->seed = 1;
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int64_t n = o->batch, hw = o->size;
    dc_tensor *x = random_tensor(ctx, &s, DC_SHAPE(n, hw, hw, m->in_ch), 1.0f);
    dc_tensor *t = random_tensor(ctx, &s, DC_SHAPE(n), 500.0f);
    dc_tensor *target = random_tensor(ctx, &s, DC_SHAPE(n, hw, hw, m->out_ch), 1.0f);
    dc_tensor *text = m->cond ? random_tensor(ctx, &s, DC_SHAPE(n, o->text_len, m->text_width), 1.0f) : NULL;
    if (!x || !t || !target || (m->cond && !text))
        return -1;
    x->requires_grad = true;
    dc_tensor *labels = NULL; /* class 0 for a class-conditional UNet2DModel */
    if (!m->cond && dc_unet_null_class(&m->ucfg) >= 0) {
        int32_t *zeros = calloc((size_t)n, sizeof *zeros);
        labels = zeros ? dc_from_host(ctx, DC_I32, DC_SHAPE(n), zeros) : NULL;
        free(zeros);
        if (!labels)
            return -1;
    }
    times t0 = {clock_s(CLOCK_MONOTONIC), clock_s(CLOCK_PROCESS_CPUTIME_ID)};
    dc_tensor *out = m->cond ? dc_unet_cond_forward(ctx, &m->cunet, x, t, text)
                             : dc_unet_forward(ctx, &m->unet, x, t, labels);
    dc_tensor *loss = dc_mse_loss(ctx, out, target, NULL);
    if (!loss || dc_backward(ctx, loss) || dc_device_synchronize(ctx->device))
        return -1;
    *secs = (times){clock_s(CLOCK_MONOTONIC) - t0.wall, clock_s(CLOCK_PROCESS_CPUTIME_ID) - t0.cpu};
    *held = dc_act_held(ctx);
    *peak = ctx->act.peak;
    return 0;
}

/* The best of o->reps steps (after o->warmup more) with checkpointing on or off. */
static int measure(dc_ctx *ctx, model *m, const options *o, bool ckpt, times *best, size_t *held, size_t *peak) {
    m->unet.gradient_checkpointing = m->cunet.gradient_checkpointing = ckpt;
    *best = (times){1e30, 1e30};
    for (int r = 0; r < o->warmup + o->reps; r++) {
        times secs;
        if (step(ctx, m, o, &secs, held, peak))
            return -1;
        if (r >= o->warmup && secs.wall < best->wall)
            best->wall = secs.wall;
        if (r >= o->warmup && secs.cpu < best->cpu)
            best->cpu = secs.cpu;
    }
    return 0;
}

/* The model config: the file, or its "model" object (a training config). */
static char *model_json(const char *path) {
    char *text = dc_cfg_read_text(path);
    cJSON *root = text ? cJSON_Parse(text) : NULL, *inner = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (cJSON_IsObject(inner)) {
        free(text);
        text = cJSON_PrintUnformatted(inner);
    }
    cJSON_Delete(root);
    return text;
}

static int model_init(model *m, const options *o) {
    char *json = model_json(o->config);
    if (!json)
        return -1;
    m->cond = strstr(json, "UNet2DConditionModel") != NULL;
    dc_params_init(&m->ps);
    int rc;
    if (m->cond) {
        rc = dc_unet_cond_config_parse(&m->ccfg, json, o->config) || dc_unet_cond_init(&m->cunet, &m->ccfg, &m->ps);
        m->in_ch = m->ccfg.in_channels, m->out_ch = m->ccfg.out_channels;
        m->text_width = m->ccfg.cross_attention_dim[0];
    } else {
        rc = dc_unet_config_parse(&m->ucfg, json, o->config) || dc_unet_init(&m->unet, &m->ucfg, &m->ps);
        m->in_ch = m->ucfg.in_channels, m->out_ch = m->ucfg.out_channels;
    }
    free(json);
    if (rc || dc_params_alloc_on(&m->ps, o->dev, 1))
        return -1;
    for (int i = 0; o->frozen && i < m->ps.n; i++)
        m->ps.p[i]->value.requires_grad = false;
    return 0;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){NULL, "cpu", DC_CPU, 0, 1, 77, 1, 1, false, true, true};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--frozen"))
            o->frozen = true;
        else if (i + 1 == argc)
            return -1;
        else if (!strcmp(argv[i], "--config"))
            o->config = argv[++i];
        else if (!strcmp(argv[i], "--device"))
            o->device = argv[++i];
        else if (!strcmp(argv[i], "--size"))
            o->size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch"))
            o->batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--text-len"))
            o->text_len = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps"))
            o->reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup"))
            o->warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && !strcmp(argv[i + 1], "plain"))
            o->ckpt = false, i++;
        else if (!strcmp(argv[i], "--only") && !strcmp(argv[i + 1], "checkpointed"))
            o->plain = false, i++;
        else
            return -1;
    }
    bool ok = o->config && o->size >= 0 && o->batch >= 1 && o->text_len >= 1 && o->reps >= 1 && o->warmup >= 0;
    return ok ? 0 : -1;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o)) {
        fprintf(stderr, "usage: %s --config PATH [--size S] [--batch N] [--text-len L] [--reps N] [--warmup N]\n"
                        "       [--frozen] [--only plain|checkpointed] [--device cpu|cuda[:N]]\n",
                argv[0]);
        return 2;
    }
    model m = {0};
    dc_ctx ctx;
    size_t arena;
    int rc = dc_device_resolve(o.device, &o.dev) || model_init(&m, &o);
    if (!rc && !o.size)
        o.size = m.cond ? m.ccfg.sample_size[0] : m.ucfg.sample_size[0];
    times plain_s = {0, 0}, ckpt_s = {0, 0};
    size_t plain_held = 0, plain_peak = 0, ckpt_held = 0, ckpt_peak = 0;
    rc = rc ? rc : dc_device_arena_bytes(o.dev, (size_t)64 << 30, &arena) || dc_ctx_init(&ctx, o.dev, arena);
    if (!rc) { /* checkpointed first: the process's peak memory is then the plain step's */
        rc = (o.ckpt && measure(&ctx, &m, &o, true, &ckpt_s, &ckpt_held, &ckpt_peak)) ||
             (o.plain && measure(&ctx, &m, &o, false, &plain_s, &plain_held, &plain_peak));
        dc_ctx_free(&ctx);
    }
    if (!rc) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        size_t params = 0;
        for (int i = 0; i < m.ps.n; i++)
            params += (size_t)m.ps.p[i]->value.numel;
        const double mb = 1 << 20;
        double overhead = plain_s.cpu > 0 && ckpt_s.cpu > 0 ? 100 * (ckpt_s.cpu / plain_s.cpu - 1) : 0;
        char dev[32];
        printf("bench checkpoint config=%s model=%s device=%s size=%dx%d batch=%d params=%zu%s plain_ms=%.1f "
               "ckpt_ms=%.1f plain_cpu_ms=%.1f ckpt_cpu_ms=%.1f overhead_pct=%.0f plain_held_mb=%.1f "
               "ckpt_held_mb=%.1f plain_peak_mb=%.1f ckpt_peak_mb=%.1f device_peak_mb=%.0f peak_rss_mb=%.0f\n",
               o.config, m.cond ? "unet_cond" : "unet", dc_device_name(dev, sizeof dev, o.dev), o.size, o.size,
               o.batch, params, o.frozen ? " frozen=1" : "",
               plain_s.wall * 1e3, ckpt_s.wall * 1e3, plain_s.cpu * 1e3, ckpt_s.cpu * 1e3, overhead,
               plain_held / mb, ckpt_held / mb, plain_peak / mb, ckpt_peak / mb, dc_arena_peak_bytes(o.dev) / mb,
               (double)ru.ru_maxrss / 1024);
    } else {
        fprintf(stderr, "bench_checkpoint: %s\n", dc_error());
    }
    dc_unet_free(&m.unet);
    dc_unet_cond_free(&m.cunet);
    dc_params_free(&m.ps);
    if (m.cond)
        dc_unet_cond_config_free(&m.ccfg);
    else
        dc_unet_config_free(&m.ucfg);
    return rc ? 1 : 0;
}
