/*
 * Inside `diffc augment`: what the generation half (augment.c) hands to the
 * evaluation half (augment_eval.c). Not a public API.
 */
#ifndef DC_INFER_AUGMENT_H
#define DC_INFER_AUGMENT_H

#include "autograd/nn.h"
#include "data/dataset.h"
#include "models/classifier.h"

#include <stdint.h>

/* The synthetic images of the run, as written. */
typedef struct dc_synthetic {
    int64_t n;
    char **paths;    /* [n] PNG files */
    int32_t *labels; /* [n] class labels of the real dataset */
    int64_t *source; /* [n] the real image a variation was made from; -1 for a class-conditional one */
} dc_synthetic;

/* How the classifier of models/classifier.h is trained (--eval-steps ...). */
typedef struct dc_augment_train_options {
    int64_t steps, epochs;     /* classifier steps; epochs > 0: that many passes instead */
    int64_t batch_size;
    double learning_rate;
    uint64_t seed;
} dc_augment_train_options;

typedef struct dc_augment_eval_options {
    const char *test_dir;      /* the dataset whose split "test" is scored */
    const char *cache_dir;     /* NULL: the default */
    const char *fractions;     /* "0.01,0.1,1": fractions of the real training images */
    dc_augment_train_options train;
} dc_augment_eval_options;

#define DC_AUGMENT_MAX_FRACTIONS 16

/* --real-fraction's "0.01,0.1,1" -> f[*n], each in (0, 1]. */
int dc_augment_parse_fractions(const char *text, double f[DC_AUGMENT_MAX_FRACTIONS], int *n);

/* For each real fraction, train the classifier of models/classifier.h on a
 * class-balanced subset of `real` alone and on it plus `syn` (variations only
 * of the subset's images), score both on the test split, and print the table
 * on stdout. */
int dc_augment_evaluate(const dc_dataset *real, const dc_synthetic *syn, const dc_augment_eval_options *o);

/* The classifier --filter-threshold keeps synthetic images by: trained on
 * every real image as --eval trains its classifiers, or loaded from a file
 * dc_augment_classifier_save wrote (its metadata names the classes, which
 * must be the dataset's). Runs on the CPU, one image at a time. */
typedef struct dc_augment_classifier {
    dc_classifier m;
    dc_params ps;
    struct dc_augment_trainer {
        int h, w, c, num_classes;
        int64_t per; /* values of one image */
        const dc_augment_train_options *o;
        dc_ctx ctx;
        bool ctx_ready;
        float *x; /* [max(batch, 256), per] */
        int32_t *y;
    } t;
} dc_augment_classifier;

int dc_augment_classifier_train(dc_augment_classifier *c, const dc_dataset *real, const dc_augment_train_options *o);
int dc_augment_classifier_load(dc_augment_classifier *c, const dc_dataset *real, const char *path,
                               const dc_augment_train_options *o);
int dc_augment_classifier_save(const dc_augment_classifier *c, const dc_dataset *real, const char *path);
/* px [h, w, c] in [-1, 1] (the real images' size): the softmax probability of class `label`. */
int dc_augment_classifier_confidence(dc_augment_classifier *c, const float *px, int32_t label, double *p);
/* Safe on a zeroed one. */
void dc_augment_classifier_free(dc_augment_classifier *c);

#endif
