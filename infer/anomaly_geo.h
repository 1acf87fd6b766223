/*
 * The transformation-prediction score of `diffc anomaly --score geo`
 * (GeoTrans: Golan and El-Yaniv, "Deep Anomaly Detection Using Geometric
 * Transformations", NeurIPS 2018), with diffc's own small classifier
 * (models/classifier.h) and no outside weights.
 *
 * A classifier learns, on normal images only, which of DC_GEO_TRANSFORMS
 * geometric transforms was applied to an image: a horizontal flip or not,
 * times a rotation by 0, 90, 180 or 270 degrees, times no shift or a
 * circular shift by a quarter of the side up, down, left or right. To tell
 * them apart it must learn what normal images look like upright; on an
 * anomalous image it is unsure. An image's score is the negative mean, over
 * the transforms, of the log-probability the classifier gives the transform
 * that was applied: higher is more anomalous. Discriminative, it errs on
 * other images than the diffusion model's noise-prediction error does.
 *
 * Images are [h, w, c] floats in [-1, 1], square (the rotations keep the
 * shape). Training is deterministic for a seed.
 */
#ifndef DC_INFER_ANOMALY_GEO_H
#define DC_INFER_ANOMALY_GEO_H

#include "autograd/nn.h"
#include "models/classifier.h"

#include <stdbool.h>
#include <stdint.h>

#define DC_GEO_TRANSFORMS 40 /* 2 flips x 4 rotations x 5 shifts */

typedef struct dc_geo {
    int h, w, c;
    int64_t per;         /* h w c */
    dc_classifier m;     /* DC_GEO_TRANSFORMS classes */
    dc_params ps;
    dc_ctx ctx;
    bool ctx_ready;
    float *x;            /* [DC_GEO_BATCH, per] a batch */
    int32_t *y;          /* [DC_GEO_BATCH] its transforms */
} dc_geo;

/* Transform t (0 .. DC_GEO_TRANSFORMS - 1) of src [h, h, c] into dst. */
void dc_geo_transform(int h, int c, float *dst, const float *src, int t);

/* Train a fresh classifier on the n normal images px [n, h, w, c] for
 * `steps` steps of 64 transformed images (AdamW, cosine learning rate). */
int dc_geo_train(dc_geo *g, const float *px, int64_t n, int h, int w, int c, int64_t steps, uint64_t seed);

/* The score of each of the n images px [n, per] into scores[n]. */
int dc_geo_score(dc_geo *g, const float *px, int64_t n, double *scores);

void dc_geo_free(dc_geo *g);

#endif
