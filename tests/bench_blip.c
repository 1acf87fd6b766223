/*
 * CPU benchmark of BLIP captioning (BlipForConditionalGeneration) on random
 * weights: the vision model over a batch of images, then greedy decoding of
 * max_length - 1 tokens per image through the incremental decoder, or beam
 * search (--num-beams, through dc_text_generate as `diffc caption` runs it;
 * no early stop: every image decodes the full length, as generate(min_length =
 * max_length) does on the transformers side). Prints the best repetition:
 *   bench blip config=PATH batch=N max_length=L num_beams=K params=P vision_ms=V decode_ms=D
 *   total_ms=T images_per_s=I peak_mb=M
 * peak_mb is the process's peak resident set (getrusage), as the transformers
 * side reports it. scripts/bench_blip_torch.py prints the same line; run both
 * with the same thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, --threads).
 *
 * usage: bench_blip --config PATH [--batch N] [--max-length L] [--num-beams K] [--reps N]
 *        [--warmup N]
 */
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "models/blip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    const char *config;
    int batch, max_length, num_beams, reps, warmup;
} options;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Uniform in [-1, 1) from a fixed LCG: normalised pixels need only be non-trivial. */
static void fill(float *x, int64_t n) {
    static uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        x[i] = (float)((double)(s >> 40) / (double)(1 << 23) - 1.0);
    }
}

static int32_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        best = x[i] > x[best] ? i : best;
    return (int32_t)best;
}

/* *d for the images img: restarted when there is one (each repetition's
 * images are the same shape), as `diffc caption` does batch after batch. */
static int decoder_for(dc_blip_decoder **d, const dc_blip *m, const dc_tensor *img,
                       int rows_per_image, int max_length) {
    return *d ? dc_blip_decoder_restart(*d, img)
              : dc_blip_decoder_init(d, m, img, rows_per_image, max_length);
}

/* Greedy: bos, then max_length - 1 top tokens per row. */
static int decode(dc_blip_decoder **dp, const dc_blip *m, const dc_tensor *img, int max_length) {
    int64_t rows = img->shape[0], v = m->cfg.text.vocab_size;
    if (decoder_for(dp, m, img, 1, max_length))
        return -1;
    dc_blip_decoder *d = *dp;
    float *logits = malloc((size_t)(rows * v) * sizeof *logits);
    int32_t *next = malloc((size_t)rows * sizeof *next);
    int rc = logits && next ? 0 : dc_fail("out of memory");
    for (int64_t r = 0; !rc && r < rows; r++)
        next[r] = m->cfg.text.bos_token_id;
    for (int i = 1; !rc && i < max_length; i++) {
        rc = dc_blip_decoder_step(d, next, 1, logits);
        for (int64_t r = 0; !rc && r < rows; r++)
            next[r] = argmax(logits + r * v, v);
    }
    free(logits);
    free(next);
    return rc;
}

/* Beam search with k beams to max_length tokens, eos held back until then. */
static int decode_beams(dc_blip_decoder **dp, const dc_blip *m, const dc_tensor *img,
                        int max_length, int k) {
    int64_t images = img->shape[0];
    dc_text_gen_options g = dc_text_gen_default_options();
    g.max_length = g.min_length = max_length;
    g.num_beams = k;
    g.eos_token_id = m->cfg.text.sep_token_id;
    g.pad_token_id = m->cfg.text.pad_token_id;
    int32_t *prefix = malloc((size_t)images * sizeof *prefix);
    dc_text_gen_output out = {0};
    int rc = prefix ? 0 : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < images; i++)
        prefix[i] = m->cfg.text.bos_token_id;
    if (!rc)
        rc = decoder_for(dp, m, img, k, max_length);
    if (!rc) {
        dc_lm lm = dc_blip_decoder_lm(*dp);
        rc = dc_text_generate(&lm, &g, images, prefix, 1, &out);
    }
    dc_text_gen_output_free(&out);
    free(prefix);
    return rc;
}

static int step(dc_ctx *ctx, const dc_blip *m, const options *o, dc_blip_decoder **d,
                double *vision_s, double *decode_s) {
    dc_ctx_reset(ctx);
    int64_t s = m->cfg.vision.image_size;
    dc_tensor *px = dc_new(ctx, DC_F32, DC_SHAPE(o->batch, s, s, 3));
    if (!px)
        return -1;
    fill(px->data, px->numel);
    double t0 = now();
    dc_tensor *img = dc_blip_vision_forward(ctx, m, px);
    double t1 = now();
    int rc = !img ? -1
             : o->num_beams > 1 ? decode_beams(d, m, img, o->max_length, o->num_beams)
                                : decode(d, m, img, o->max_length);
    *vision_s = t1 - t0;
    *decode_s = now() - t1;
    return rc;
}

static int parse(int argc, char **argv, options *o) {
    *o = (options){NULL, 2, 20, 1, 3, 1};
    for (int i = 1; i + 1 < argc; i += 2) {
        int *field = !strcmp(argv[i], "--batch")        ? &o->batch
                     : !strcmp(argv[i], "--max-length") ? &o->max_length
                     : !strcmp(argv[i], "--num-beams")  ? &o->num_beams
                     : !strcmp(argv[i], "--reps")       ? &o->reps
                     : !strcmp(argv[i], "--warmup")     ? &o->warmup
                                                        : NULL;
        if (!strcmp(argv[i], "--config"))
            o->config = argv[i + 1];
        else if (field)
            *field = atoi(argv[i + 1]);
        else
            return -1;
    }
    return argc % 2 == 1 && o->config && o->batch >= 1 && o->max_length >= 2 &&
                   o->num_beams >= 1 && o->reps >= 1 && o->warmup >= 0
               ? 0
               : -1;
}

static int run(const options *o, const dc_blip *m, dc_ctx *ctx) {
    double best_v = 1e30, best_d = 1e30, best_t = 1e30, v, d;
    dc_blip_decoder *dec = NULL;
    for (int r = 0; r < o->warmup + o->reps; r++) {
        if (step(ctx, m, o, &dec, &v, &d)) {
            dc_blip_decoder_free(dec);
            return -1;
        }
        if (r < o->warmup)
            continue;
        best_v = v < best_v ? v : best_v;
        best_d = d < best_d ? d : best_d;
        best_t = v + d < best_t ? v + d : best_t;
    }
    dc_blip_decoder_free(dec);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    size_t n = 0;
    for (int i = 0; i < m->params.n; i++)
        n += (size_t)m->params.p[i]->value.numel;
    printf("bench blip config=%s batch=%d max_length=%d num_beams=%d params=%zu vision_ms=%.1f "
           "decode_ms=%.1f total_ms=%.1f images_per_s=%.3f peak_mb=%.0f\n",
           o->config, o->batch, o->max_length, o->num_beams, n, best_v * 1e3, best_d * 1e3, best_t * 1e3,
           o->batch / best_t, (double)ru.ru_maxrss / 1024);
    return 0;
}

int main(int argc, char **argv) {
    options o;
    if (parse(argc, argv, &o)) {
        fprintf(stderr,
                "usage: %s --config PATH [--batch N] [--max-length L] [--num-beams K] [--reps N] "
                "[--warmup N]\n",
                argv[0]);
        return 2;
    }
    size_t len;
    char *json = dc_read_file(o.config, 1 << 20, &len);
    dc_blip_config c;
    dc_blip *m = NULL;
    dc_ctx ctx;
    int rc = !json || dc_blip_config_parse(&c, json, o.config) || dc_blip_init(&m, &c) ||
             dc_params_alloc(&m->params, 1) || dc_ctx_init(&ctx, DC_CPU, (size_t)16 << 30);
    if (!rc) {
        dc_set_grad_enabled(&ctx, false);
        rc = run(&o, m, &ctx);
        dc_ctx_free(&ctx);
    }
    if (rc)
        fprintf(stderr, "bench_blip: %s\n", dc_error());
    free(json);
    dc_blip_free(m);
    return rc ? 1 : 0;
}
