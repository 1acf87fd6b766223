/* The small CNN classifier (see classifier.h). */
#include "classifier.h"

#include "autograd/error.h"

#include <stdio.h>

static const int widths[DC_CLASSIFIER_CONVS] = {16, 32, 64};
static const int strides[DC_CLASSIFIER_CONVS] = {1, 2, 2};
#define GROUPS 8

int dc_classifier_init(dc_classifier *m, dc_params *ps, int h, int w, int c, int num_classes) {
    if (h < 1 || w < 1 || c < 1 || num_classes < 2)
        return dc_fail("classifier: %dx%dx%d images and %d classes (at least 2)", w, h, c, num_classes);
    *m = (dc_classifier){.h = h, .w = w, .c = c, .num_classes = num_classes};
    int64_t cin = c, oh = h, ow = w;
    for (int i = 0; i < DC_CLASSIFIER_CONVS; i++) {
        char name[32];
        snprintf(name, sizeof name, "conv%d", i + 1);
        dc_nn_conv2d_init(&m->conv[i], ps, name, cin, widths[i], 3, strides[i], 1, true);
        snprintf(name, sizeof name, "norm%d", i + 1);
        dc_nn_group_norm_init(&m->norm[i], ps, name, GROUPS, widths[i], 1e-5f);
        cin = widths[i];
        oh = (oh - 1) / strides[i] + 1; /* (H + 2 - 3) / stride + 1 */
        ow = (ow - 1) / strides[i] + 1;
    }
    dc_nn_linear_init(&m->head, ps, "head", oh * ow * cin, num_classes, true);
    return ps->failed ? -1 : 0;
}

dc_tensor *dc_classifier_features(dc_ctx *ctx, const dc_classifier *m, dc_tensor *x) {
    dc_tensor *h = x;
    for (int i = 0; i < DC_CLASSIFIER_CONVS; i++)
        h = dc_nn_group_norm_silu_forward(ctx, &m->norm[i], dc_nn_conv2d_forward(ctx, &m->conv[i], h));
    return h;
}

dc_tensor *dc_classifier_head(dc_ctx *ctx, const dc_classifier *m, dc_tensor *map) {
    if (!map)
        return NULL;
    dc_tensor *h = dc_reshape(ctx, map, DC_SHAPE(map->shape[0], map->numel / map->shape[0]));
    return dc_nn_linear_forward(ctx, &m->head, h);
}

dc_tensor *dc_classifier_forward(dc_ctx *ctx, const dc_classifier *m, dc_tensor *x) {
    return dc_classifier_head(ctx, m, dc_classifier_features(ctx, m, x));
}
