/* The denoising loop (see generate.h). */
#include "generate.h"

#include "autograd/error.h"

#include <stdlib.h>
#include <string.h>

/* The model's prediction for the batch `x` [b, h, w, c] at step i, into out;
 * with guidance, the unconditional and the conditional halves of one forward
 * pass of 2b images are combined. */
static int predict(dc_ctx *ctx, const dc_generate_request *r, int i, const float *x,
                   const int32_t *labels, int64_t b, float *out) {
    const dc_unet *m = r->unet;
    int c = (int)m->cfg.in_channels;
    bool cfg = labels && r->guidance_scale > 1.0f;
    int64_t rows = cfg ? 2 * b : b, per = (int64_t)r->h * r->w * c;
    dc_ctx_reset(ctx);
    dc_tensor *xt = dc_new(ctx, DC_F32, DC_SHAPE(rows, r->h, r->w, c));
    dc_tensor *t = dc_new(ctx, DC_I32, DC_SHAPE(1));
    dc_tensor *y = labels ? dc_new(ctx, DC_I32, DC_SHAPE(rows)) : NULL;
    if (!xt || !t || (labels && !y))
        return -1;
    ((int32_t *)t->data)[0] = (int32_t)r->sampler->timesteps[i];
    memcpy(xt->data, x, (size_t)(b * per) * sizeof(float));
    if (cfg)
        memcpy((float *)xt->data + b * per, x, (size_t)(b * per) * sizeof(float));
    for (int64_t k = 0; labels && k < rows; k++)
        ((int32_t *)y->data)[k] = k < b && cfg ? dc_unet_null_class(&m->cfg) : labels[k % b];
    dc_tensor *pred = dc_unet_forward(ctx, m, xt, t, y);
    if (!pred)
        return -1;
    if ((int64_t)pred->numel != rows * per)
        return dc_fail("the model predicts %lld values per image, the sample has %lld (out_channels "
                       "must equal in_channels)", (long long)(pred->numel / rows), (long long)per);
    const float *p = pred->data;
    if (cfg)
        dc_guidance_combine(out, p, p + b * per, r->guidance_scale, b * per);
    else
        memcpy(out, p, (size_t)(b * per) * sizeof(float));
    return 0;
}

/* Draw `draw` of images [first, first + b) of the request into out [b, per]:
 * consecutive streams from first_image, or each image's own from streams. */
static void draw_noise(const dc_generate_request *r, int64_t first, int64_t b, int64_t per, float *out,
                       uint64_t draw) {
    if (!r->streams) {
        dc_sampler_noise(out, b, per, r->seed, r->first_image + (uint64_t)first, draw);
        return;
    }
    for (int64_t k = 0; k < b; k++)
        dc_sampler_noise(out + k * per, 1, per, r->seed, r->streams[first + k], draw);
}

/* One denoising run over images [first, first + b) of the request, from
 * step `start` (0 unless img2img). */
static int run_batch(dc_ctx *ctx, const dc_generate_request *r, int start, int64_t first, int64_t b,
                     float *x, float *pred, float *noise) {
    dc_sampler *s = r->sampler;
    int64_t per = (int64_t)r->h * r->w * r->unet->cfg.in_channels;
    const int32_t *labels = r->labels ? r->labels + first : NULL;
    dc_sampler_reset(s);
    draw_noise(r, first, b, per, x, DC_SAMPLER_DRAW_INIT);
    if (r->init && dc_sampler_add_noise(s, start, r->init + first * per, x, x, b * per))
        return -1;
    for (int i = start; i < s->n; i++) {
        if (predict(ctx, r, i, x, labels, b, pred))
            return -1;
        bool needs = dc_sampler_step_needs_noise(s, i);
        if (needs)
            draw_noise(r, first, b, per, noise, DC_SAMPLER_DRAW_STEP(i));
        if (dc_sampler_step(s, i, pred, x, needs ? noise : NULL, b * per))
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
    int start = 0;
    if (r->init && dc_sampler_img2img_start(r->sampler, r->strength, &start))
        return -1;
    int64_t per = (int64_t)r->h * r->w * r->unet->cfg.in_channels;
    int64_t b = r->batch < r->n ? r->batch : r->n;
    float *pred = malloc((size_t)(b * per) * sizeof(float));
    float *noise = malloc((size_t)(b * per) * sizeof(float));
    int rc = pred && noise ? 0 : dc_fail("generate: out of memory for %lld images", (long long)b);
    bool grad = dc_set_grad_enabled(ctx, false), training = ctx->training;
    ctx->training = false;
    for (int64_t first = 0; !rc && first < r->n; first += b) {
        int64_t nb = r->n - first < b ? r->n - first : b;
        rc = run_batch(ctx, r, start, first, nb, out + first * per, pred, noise);
    }
    ctx->training = training;
    dc_set_grad_enabled(ctx, grad);
    free(pred);
    free(noise);
    return rc;
}
