/*
 * A small image classifier built from the engine's layers, for `diffc
 * augment --eval` (does synthetic data help a classifier?).
 *
 * Three 3x3 convolutions, each followed by a group norm and SiLU; the second
 * and third have stride 2; then the feature map is flattened and a linear
 * layer gives the logits:
 *
 *   x [N, H, W, C] -> conv 16 -> conv 32 /2 -> conv 64 /2 -> [N, H/4 * W/4 * 64] -> [N, K]
 *
 * (sides rounded up at each halving). The last convolution's map, averaged
 * over positions (64 values per image), is the feature space augment --eval
 * measures distances between image sets in. About 65,000 weights at 32x32 gray:
 * 500 steps of batch 64 take a minute or two on two CPU cores and reach 88%
 * on Fashion-MNIST. Parameter names are PyTorch-style ("conv1.weight", ...).
 */
#ifndef DC_MODELS_CLASSIFIER_H
#define DC_MODELS_CLASSIFIER_H

#include "autograd/nn.h"

#define DC_CLASSIFIER_CONVS 3

typedef struct dc_classifier {
    int h, w, c;     /* the input image size */
    int num_classes; /* K */
    dc_nn_conv2d conv[DC_CLASSIFIER_CONVS];
    dc_nn_group_norm norm[DC_CLASSIFIER_CONVS];
    dc_nn_linear head; /* [K, (h/4) (w/4) 64] */
} dc_classifier;

/* Declare the parameters in ps (then dc_params_alloc gives them their initial values). */
int dc_classifier_init(dc_classifier *m, dc_params *ps, int h, int w, int c, int num_classes);
/* x [N, h, w, c] in [-1, 1] -> the last convolution's map [N, ceil(h/4), ceil(w/4), 64]; NULL on error. */
dc_tensor *dc_classifier_features(dc_ctx *ctx, const dc_classifier *m, dc_tensor *x);
/* The features' map [N, ...] -> logits [N, K]; NULL on error. */
dc_tensor *dc_classifier_head(dc_ctx *ctx, const dc_classifier *m, dc_tensor *map);
/* x [N, h, w, c] in [-1, 1] -> logits [N, K] (the head of the features); NULL on error (ctx's sticky error). */
dc_tensor *dc_classifier_forward(dc_ctx *ctx, const dc_classifier *m, dc_tensor *x);

#endif
