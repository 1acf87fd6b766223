/*
 * Benchmark of the CLIP text encoder (CLIPTextModel) on random weights: a
 * batch of prompts of max_position_embeddings tokens (bos, random tokens,
 * eos, padding, as SD pipelines tokenize) through every layer, then the
 * pooled output. Prints the best repetition:
 *   bench clip_text config=PATH device=D batch=N tokens=L params=P forward_ms=F
 *   prompts_per_s=R peak_mb=M
 * peak_mb is the process's peak resident set (getrusage).
 * scripts/bench_clip_text_torch.py prints the same line for transformers; run
 * both with the same thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, --threads).
 *
 * usage: bench_clip_text --config PATH [--device D] [--batch N] [--reps N] [--warmup N]
 */
#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/clip_text.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    const char *config, *device;
    int batch, reps, warmup;
} options;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Rows of bos, 20 tokens from a fixed LCG, eos, then eos as padding (SD-1.x's). */
static int32_t *prompt_ids(const dc_clip_text_config *c, int64_t n, int64_t l) {
    int32_t *ids = malloc((size_t)(n * l) * sizeof *ids);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    int32_t bos = c->vocab_size - 2, eos = c->vocab_size - 1;
    for (int64_t i = 0; ids && i < n * l; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int64_t at = i % l;
        bool word = at > 0 && at <= 20 && at < l - 1;
        ids[i] = at == 0 ? bos : word ? (int32_t)((s >> 33) % (uint64_t)bos) : eos;
    }
    return ids;
}

static int step(dc_ctx *ctx, const dc_clip_text *m, const int32_t *host, const options *o,
                double *seconds) {
    dc_ctx_reset(ctx);
    double t0 = now();
    dc_tensor *ids =
        dc_from_host(ctx, DC_I32, DC_SHAPE(o->batch, m->cfg.max_position_embeddings), host);
    dc_tensor *last = dc_clip_text_forward(ctx, m, ids, 0, NULL);
    dc_tensor *pooled = dc_clip_text_pooled(ctx, m, ids, last);
    if (!pooled || dc_device_synchronize(ctx->device))
        return -1;
    *seconds = now() - t0;
    return 0;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){NULL, "cpu", 1, 5, 1};
    for (int i = 1; i + 1 < argc; i += 2) {
        int *field = !strcmp(argv[i], "--batch")    ? &o->batch
                     : !strcmp(argv[i], "--reps")   ? &o->reps
                     : !strcmp(argv[i], "--warmup") ? &o->warmup
                                                    : NULL;
        if (!strcmp(argv[i], "--config"))
            o->config = argv[i + 1];
        else if (!strcmp(argv[i], "--device"))
            o->device = argv[i + 1];
        else if (field)
            *field = atoi(argv[i + 1]);
        else
            return -1;
    }
    return argc % 2 == 1 && o->config && o->batch >= 1 && o->reps >= 1 && o->warmup >= 0 ? 0 : -1;
}

static int run(const options *o, const dc_clip_text *m, dc_ctx *ctx) {
    int64_t l = m->cfg.max_position_embeddings;
    int32_t *host = prompt_ids(&m->cfg, o->batch, l);
    double best = 1e30, s = 0;
    int rc = host ? 0 : dc_fail("out of memory");
    for (int r = 0; !rc && r < o->warmup + o->reps; r++) {
        rc = step(ctx, m, host, o, &s);
        best = r >= o->warmup && s < best ? s : best;
    }
    free(host);
    if (rc)
        return -1;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    size_t n = 0;
    for (int i = 0; i < m->params.n; i++)
        n += (size_t)m->params.p[i]->value.numel;
    printf("bench clip_text config=%s device=%s batch=%d tokens=%lld params=%zu forward_ms=%.2f "
           "prompts_per_s=%.2f peak_mb=%.0f\n",
           o->config, o->device, o->batch, (long long)l, n, best * 1e3, o->batch / best,
           (double)ru.ru_maxrss / 1024);
    return 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o)) {
        fprintf(stderr,
                "usage: %s --config PATH [--device D] [--batch N] [--reps N] [--warmup N]\n",
                argv[0]);
        return 2;
    }
    size_t len, arena = 0;
    char *json = dc_read_file(o.config, 1 << 20, &len);
    dc_clip_text_config c;
    dc_clip_text *m = NULL;
    dc_ctx ctx;
    int device = DC_CPU;
    int rc = !json || dc_clip_text_config_parse(&c, json, o.config) ||
             dc_device_resolve(o.device, &device) || dc_clip_text_init(&m, &c) ||
             dc_params_alloc_on(&m->params, device, 1) ||
             dc_device_arena_bytes(device, (size_t)4 << 30, &arena) ||
             dc_ctx_init(&ctx, device, arena);
    if (!rc) {
        dc_set_grad_enabled(&ctx, false);
        ctx.training = false;
        rc = run(&o, m, &ctx);
        dc_ctx_free(&ctx);
    }
    if (rc)
        fprintf(stderr, "bench_clip_text: %s\n", dc_error());
    free(json);
    dc_clip_text_free(m);
    return rc ? 1 : 0;
}
