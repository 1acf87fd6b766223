/* The transformation-prediction anomaly score (see anomaly_geo.h). */
#include "anomaly_geo.h"

#include "autograd/error.h"
#include "autograd/optim.h"
#include "autograd/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 64          /* transformed images per training step */
#define SCORE_ROWS 320    /* transformed images per forward pass when scoring (8 images) */
#define ROTATIONS 4
#define SHIFTS 5          /* none, then a quarter of the side down, up, right, left */
#define LEARNING_RATE 2e-3
#define DRAW_STREAM 0x9e070000u /* Philox stream of the training draws: 2 per batch row */
#define ACTIVATION_BYTES ((size_t)4 << 30) /* reserved lazily */

_Static_assert(DC_GEO_TRANSFORMS == 2 * ROTATIONS * SHIFTS, "flips x rotations x shifts");

void dc_geo_transform(int h, int c, float *dst, const float *src, int t) {
    int flip = t / (ROTATIONS * SHIFTS), rot = t / SHIFTS % ROTATIONS, shift = t % SHIFTS, q = h / 4;
    static const int dys[SHIFTS] = {0, 1, -1, 0, 0}, dxs[SHIFTS] = {0, 0, 0, 1, -1};
    int dy = dys[shift] * q, dx = dxs[shift] * q;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < h; x++) {
            /* the pixel of the shifted, rotated, flipped image that lands at (y, x) */
            int sy = ((y - dy) % h + h) % h, sx = ((x - dx) % h + h) % h, ry = sy, rx = sx;
            for (int k = 0; k < rot; k++) { /* undo one counter-clockwise quarter turn */
                int ty = rx, tx = h - 1 - ry;
                ry = ty, rx = tx;
            }
            rx = flip ? h - 1 - rx : rx;
            memcpy(dst + ((int64_t)y * h + x) * c, src + ((int64_t)ry * h + rx) * c, (size_t)c * sizeof *dst);
        }
}

static int geo_init(dc_geo *g, int h, int w, int c, uint64_t seed) {
    *g = (dc_geo){.h = h, .w = w, .c = c, .per = (int64_t)h * w * c};
    if (h != w)
        return dc_fail("--score geo: the model's images are %dx%d; the rotations need square ones", w, h);
    g->x = malloc((size_t)(SCORE_ROWS * g->per) * sizeof *g->x);
    g->y = malloc(SCORE_ROWS * sizeof *g->y);
    if (!g->x || !g->y)
        return dc_fail("out of memory for the transform classifier");
    if (dc_ctx_init(&g->ctx, DC_CPU, ACTIVATION_BYTES))
        return -1;
    g->ctx_ready = true;
    return dc_classifier_init(&g->m, &g->ps, h, w, c, DC_GEO_TRANSFORMS) || dc_params_alloc(&g->ps, seed) ? -1 : 0;
}

/* One step on BATCH random (image, transform) pairs. */
static int train_step(dc_geo *g, dc_adamw *opt, const float *px, int64_t n, int64_t step, int64_t steps,
                      uint64_t seed) {
    for (int64_t k = 0; k < BATCH; k++) {
        uint64_t draw = (uint64_t)(step * BATCH + k);
        int64_t i = (int64_t)(dc_rand_uniform(seed, DRAW_STREAM, 2 * draw) * (float)n);
        int t = (int)(dc_rand_uniform(seed, DRAW_STREAM, 2 * draw + 1) * DC_GEO_TRANSFORMS);
        i = i >= n ? n - 1 : i;
        g->y[k] = t >= DC_GEO_TRANSFORMS ? DC_GEO_TRANSFORMS - 1 : t;
        dc_geo_transform(g->h, g->c, g->x + k * g->per, px + i * g->per, g->y[k]);
    }
    dc_ctx_reset(&g->ctx);
    dc_tensor *x = dc_from_host(&g->ctx, DC_F32, DC_SHAPE(BATCH, g->h, g->w, g->c), g->x);
    dc_tensor *y = dc_from_host(&g->ctx, DC_I32, DC_SHAPE(BATCH), g->y);
    dc_tensor *loss = dc_cross_entropy(&g->ctx, dc_classifier_forward(&g->ctx, &g->m, x), y);
    if (!loss)
        return -1;
    dc_params_zero_grad(&g->ps);
    if (dc_backward(&g->ctx, loss))
        return -1;
    return dc_adamw_step(opt, g->ps.data, g->ps.grad, dc_lr_at(DC_LR_COSINE, LEARNING_RATE, step, 0, steps));
}

int dc_geo_train(dc_geo *g, const float *px, int64_t n, int h, int w, int c, int64_t steps, uint64_t seed) {
    if (n < 1)
        return dc_fail("--score geo: no normal image to learn from");
    dc_adamw opt = {0};
    int rc = geo_init(g, h, w, c, seed) || dc_adamw_init(&opt, g->ps.total, 0.9, 0.999, 1e-8, 0.01) ? -1 : 0;
    g->ctx.training = true;
    for (int64_t step = 0; !rc && step < steps; step++)
        rc = train_step(g, &opt, px, n, step, steps, seed);
    dc_adamw_free(&opt);
    return rc;
}

/* The score of the b images of px whose transforms fill g->x: -mean log p(t | transform t of the image). */
static int score_rows(dc_geo *g, int64_t b, double *scores) {
    bool was = dc_set_grad_enabled(&g->ctx, false);
    g->ctx.training = false;
    dc_ctx_reset(&g->ctx);
    dc_tensor *x = dc_from_host(&g->ctx, DC_F32, DC_SHAPE(b * DC_GEO_TRANSFORMS, g->h, g->w, g->c), g->x);
    dc_tensor *logits = dc_classifier_forward(&g->ctx, &g->m, x);
    dc_set_grad_enabled(&g->ctx, was);
    if (!logits)
        return -1;
    const float *l = logits->data;
    for (int64_t j = 0; j < b; j++) {
        double sum = 0;
        for (int t = 0; t < DC_GEO_TRANSFORMS; t++) {
            const float *row = l + (j * DC_GEO_TRANSFORMS + t) * DC_GEO_TRANSFORMS;
            double top = row[0], z = 0;
            for (int k = 1; k < DC_GEO_TRANSFORMS; k++)
                top = row[k] > top ? row[k] : top;
            for (int k = 0; k < DC_GEO_TRANSFORMS; k++)
                z += exp(row[k] - top);
            sum += top + log(z) - row[t]; /* -log softmax(row)[t] */
        }
        scores[j] = sum / DC_GEO_TRANSFORMS;
    }
    return 0;
}

int dc_geo_score(dc_geo *g, const float *px, int64_t n, double *scores) {
    int64_t per_pass = SCORE_ROWS / DC_GEO_TRANSFORMS;
    for (int64_t first = 0; first < n; first += per_pass) {
        int64_t b = n - first < per_pass ? n - first : per_pass;
        for (int64_t j = 0; j < b; j++)
            for (int t = 0; t < DC_GEO_TRANSFORMS; t++)
                dc_geo_transform(g->h, g->c, g->x + (j * DC_GEO_TRANSFORMS + t) * g->per, px + (first + j) * g->per,
                                 t);
        if (score_rows(g, b, scores + first))
            return -1;
    }
    return 0;
}

void dc_geo_free(dc_geo *g) {
    if (g->ctx_ready)
        dc_ctx_free(&g->ctx);
    dc_params_free(&g->ps);
    free(g->x);
    free(g->y);
    *g = (dc_geo){0};
}
