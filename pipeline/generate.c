/* The denoising loop (see generate.h). The sampler's arithmetic and its
 * noise stay on the host, whatever the context's device: only the UNet's
 * forward pass runs there, so an image's draws are the same bits on every
 * device and only the model's rounding differs. */
#include "generate.h"

#include "autograd/device.h"
#include "autograd/error.h"

#include <stdlib.h>
#include <string.h>

/* Host buffers of one denoising run of b images. */
typedef struct buffers {
    float *pred;    /* [2b, per] the model's output (the first b: the prediction) */
    float *raw;     /* [2b, 2 per] a model that predicts its variance: its output, split into */
    float *var;     /*   pred and var [2b, per]; NULL for other models */
    float *noise;   /* [b, per] a step's draws */
    float *in;      /* [b, per] the model's input: the sample, scaled (scale_model_input) */
    int32_t *label; /* [2b] the labels of a forward pass */
} buffers;

/* Whether a forward pass holds the unconditional and the conditional halves. */
static bool guided(const dc_generate_request *r, const int32_t *labels) {
    return labels && r->guidance_scale > 1.0f;
}

/* Whether the model predicts its variance too: out_channels twice in_channels. */
static bool predicts_variance(const dc_unet *m) { return m->cfg.out_channels == 2 * m->cfg.in_channels; }

/* torch.split(model_output, c, dim=1) in NHWC: each pixel's first c values are
 * the prediction, the next c the variance. */
static void split_variance(const float *raw, int64_t pixels, int c, float *mean, float *var) {
    for (int64_t p = 0; p < pixels; p++) {
        memcpy(mean + p * c, raw + 2 * p * c, (size_t)c * sizeof(float));
        memcpy(var + p * c, raw + (2 * p + 1) * c, (size_t)c * sizeof(float));
    }
}

/* The model's prediction for the batch `x` [b, h, w, c] at step i, into
 * buf->pred [b]; with guidance, the unconditional and the conditional
 * halves of one forward pass of 2b images are combined. */
static int predict(dc_ctx *ctx, const dc_generate_request *r, int i, const float *x,
                   const int32_t *labels, int64_t b, buffers *buf) {
    const dc_unet *m = r->unet;
    int c = (int)m->cfg.in_channels;
    bool cfg = guided(r, labels);
    int64_t rows = cfg ? 2 * b : b, per = (int64_t)r->h * r->w * c;
    size_t bytes = (size_t)(b * per) * sizeof(float);
    float step = r->sampler->model_t[i]; /* Euler's may be fractional */
    for (int64_t k = 0; labels && k < rows; k++)
        buf->label[k] = k < b && cfg ? dc_unet_null_class(&m->cfg) : labels[k % b];
    dc_ctx_reset(ctx);
    dc_tensor *xt = dc_new(ctx, DC_F32, DC_SHAPE(rows, r->h, r->w, c));
    dc_tensor *t = dc_from_host(ctx, DC_F32, DC_SHAPE(1), &step);
    dc_tensor *y = labels ? dc_from_host(ctx, DC_I32, DC_SHAPE(rows), buf->label) : NULL;
    if (!xt || !t || (labels && !y) || dc_memcpy(xt->data, ctx->device, x, DC_CPU, bytes) ||
        (cfg && dc_memcpy((float *)xt->data + b * per, ctx->device, x, DC_CPU, bytes)))
        return -1;
    dc_tensor *pred = dc_unet_forward(ctx, m, xt, t, y);
    if (!pred)
        return -1;
    float *host = buf->raw ? buf->raw : buf->pred;
    if ((int64_t)pred->numel != rows * per * (buf->raw ? 2 : 1))
        return dc_fail("the model predicts %lld values per image, expected %lld", (long long)(pred->numel / rows),
                       (long long)(per * (buf->raw ? 2 : 1)));
    if (dc_memcpy(host, DC_CPU, pred->data, ctx->device, (size_t)pred->numel * sizeof(float)))
        return -1;
    if (buf->raw) /* guidance steers the prediction; the variance is the conditional pass's */
        split_variance(buf->raw, rows * r->h * r->w, c, buf->pred, buf->var);
    if (cfg) /* elementwise: the result may overwrite the unconditional half */
        dc_guidance_combine(buf->pred, buf->pred, buf->pred + b * per, r->guidance_scale, b * per);
    return 0;
}

/* Draw `draw` of images [first, first + b) of the request into out [b, per]. */
static void draw_noise(const dc_generate_request *r, int64_t first, int64_t b, int64_t per, float *out,
                       uint64_t draw) {
    dc_sampler_noise_streams(out, b, per, r->seed, r->first_image + (uint64_t)first,
                             r->streams ? r->streams + first : NULL, draw);
}

/* One denoising run over images [first, first + b) of the request, from
 * step `start` (0 unless img2img). */
static int run_batch(dc_ctx *ctx, const dc_generate_request *r, int start, int64_t first, int64_t b,
                     float *x, buffers *buf) {
    dc_sampler *s = r->sampler;
    int64_t per = (int64_t)r->h * r->w * r->unet->cfg.in_channels;
    const int32_t *labels = r->labels ? r->labels + first : NULL;
    dc_sampler_reset(s);
    draw_noise(r, first, b, per, x, DC_SAMPLER_DRAW_INIT);
    if (r->init && dc_sampler_add_noise(s, start, r->init + first * per, x, x, b * per))
        return -1;
    for (int64_t k = 0; !r->init && k < b * per; k++) /* the pipeline's latents * init_noise_sigma */
        x[k] = x[k] * s->init_noise_sigma;
    for (int i = start; i < s->n; i++) {
        if (dc_sampler_scale_model_input(s, i, x, buf->in, b * per) ||
            predict(ctx, r, i, buf->in, labels, b, buf))
            return -1;
        bool needs = dc_sampler_step_needs_noise(s, i);
        if (needs)
            draw_noise(r, first, b, per, buf->noise, DC_SAMPLER_DRAW_STEP(i));
        const float *var = buf->var ? buf->var + (guided(r, labels) ? b * per : 0) : NULL;
        if (dc_sampler_step(s, i, buf->pred, var, x, needs ? buf->noise : NULL, b, per))
            return -1;
        if (r->on_step)
            r->on_step(r->on_step_arg, first, b, i - start + 1, s->n - start);
    }
    for (int64_t k = 0; k < b * per; k++)
        x[k] = x[k] < -1.0f ? -1.0f : x[k] > 1.0f ? 1.0f : x[k];
    return 0;
}

int dc_generate(dc_ctx *ctx, const dc_generate_request *r, float *out) {
    if (r->n < 1 || r->batch < 1 || r->h < 1 || r->w < 1)
        return dc_fail("generate: %lld images in batches of %lld at %dx%d", (long long)r->n,
                       (long long)r->batch, r->h, r->w);
    if ((r->labels != NULL) != (dc_unet_null_class(&r->unet->cfg) >= 0))
        return dc_fail(r->labels ? "generate: class labels given to an unconditional model"
                                 : "generate: the model is class-conditional: give class labels");
    const dc_unet_config *u = &r->unet->cfg;
    if (u->out_channels != u->in_channels && !predicts_variance(r->unet))
        return dc_fail("generate: the model predicts %d channels of a %d-channel sample (out_channels must "
                       "be in_channels, or twice that for a model that predicts its variance)",
                       u->out_channels, u->in_channels);
    if (dc_sampler_needs_variance(r->sampler) && !predicts_variance(r->unet))
        return dc_fail("generate: variance_type %s needs a model that predicts its variance (out_channels "
                       "twice in_channels); this one has %d of %d",
                       dc_variance_type_name(r->sampler->opt.variance_type), u->out_channels, u->in_channels);
    int start = 0;
    if (r->init && dc_sampler_img2img_start(r->sampler, r->strength, &start))
        return -1;
    int64_t per = (int64_t)r->h * r->w * r->unet->cfg.in_channels;
    int64_t b = r->batch < r->n ? r->batch : r->n;
    bool variance = predicts_variance(r->unet);
    buffers buf = {.pred = malloc((size_t)(2 * b * per) * sizeof(float)),
                   .raw = variance ? malloc((size_t)(4 * b * per) * sizeof(float)) : NULL,
                   .var = variance ? malloc((size_t)(2 * b * per) * sizeof(float)) : NULL,
                   .noise = malloc((size_t)(b * per) * sizeof(float)),
                   .in = malloc((size_t)(b * per) * sizeof(float)),
                   .label = malloc((size_t)(2 * b) * sizeof(int32_t))};
    int rc = buf.pred && buf.noise && buf.in && buf.label && (!variance || (buf.raw && buf.var))
                 ? 0
                 : dc_fail("generate: out of memory for %lld images", (long long)b);
    bool grad = dc_set_grad_enabled(ctx, false), training = ctx->training;
    ctx->training = false;
    for (int64_t first = 0; !rc && first < r->n; first += b) {
        int64_t nb = r->n - first < b ? r->n - first : b;
        rc = run_batch(ctx, r, start, first, nb, out + first * per, &buf);
    }
    ctx->training = training;
    dc_set_grad_enabled(ctx, grad);
    free(buf.pred);
    free(buf.raw);
    free(buf.var);
    free(buf.noise);
    free(buf.in);
    free(buf.label);
    return rc;
}
