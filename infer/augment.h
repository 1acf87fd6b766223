/*
 * Inside `diffc augment`: what the generation half (augment.c) hands to the
 * evaluation half (augment_eval.c). Not a public API.
 */
#ifndef DC_INFER_AUGMENT_H
#define DC_INFER_AUGMENT_H

#include "data/dataset.h"

#include <stdint.h>

/* The synthetic images of the run, as written. */
typedef struct dc_synthetic {
    int64_t n;
    char **paths;    /* [n] PNG files */
    int32_t *labels; /* [n] class labels of the real dataset */
    int64_t *source; /* [n] the real image a variation was made from; -1 for a class-conditional one */
} dc_synthetic;

typedef struct dc_augment_eval_options {
    const char *test_dir;      /* the dataset whose split "test" is scored */
    const char *cache_dir;     /* NULL: the default */
    const char *fractions;     /* "0.01,0.1,1": fractions of the real training images */
    int64_t steps, epochs;     /* classifier steps; epochs > 0: that many passes instead */
    int64_t batch_size;
    double learning_rate;
    uint64_t seed;
} dc_augment_eval_options;

#define DC_AUGMENT_MAX_FRACTIONS 16

/* --real-fraction's "0.01,0.1,1" -> f[*n], each in (0, 1]. */
int dc_augment_parse_fractions(const char *text, double f[DC_AUGMENT_MAX_FRACTIONS], int *n);

/* For each real fraction, train the classifier of models/classifier.h on a
 * class-balanced subset of `real` alone and on it plus `syn` (variations only
 * of the subset's images), score both on the test split, and print the table
 * on stdout. */
int dc_augment_evaluate(const dc_dataset *real, const dc_synthetic *syn, const dc_augment_eval_options *o);

#endif
