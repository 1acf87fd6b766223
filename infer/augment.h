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
    bool *pseudo;    /* [n] made without a class: labels[i] is a classifier's guess (--unlabelled) */
} dc_synthetic;

/* How the classifier of models/classifier.h is trained (--eval-steps ...). */
typedef struct dc_augment_train_options {
    int64_t steps, epochs;     /* classifier steps; epochs > 0: that many passes instead */
    int64_t batch_size;
    double learning_rate;
    uint64_t seed;
    bool augment; /* standard augmentation: a random horizontal flip and shift (augment_eval.c) */
} dc_augment_train_options;

typedef struct dc_augment_eval_options {
    const char *test_dir;      /* the dataset whose split "test" is scored */
    const char *cache_dir;     /* NULL: the default */
    const char *fractions;     /* "0.01,0.1,1": fractions of the real training images */
    int seeds;                 /* repeat every training with seeds train.seed, +1, ... */
    double synthetic_prob;     /* a batch image is synthetic with this probability; NAN: drawn from the union */
    double pseudo_threshold;   /* a pseudo-labelled image is kept above this probability; NAN: all kept */
    dc_augment_train_options train;
} dc_augment_eval_options;

/* One fraction and seed's test accuracies, in [0, 1]; NAN where not run:
 * trained on the real subset, the same with standard augmentation (only with
 * train.augment), real + synthetic (standard augmentation with
 * train.augment), synthetic only (the classification accuracy score, CAS). */
typedef struct dc_augment_scores {
    double real, real_std, mixed, cas;
} dc_augment_scores;

#define DC_AUGMENT_MAX_FRACTIONS 16

/* --real-fraction's "0.01,0.1,1" -> f[*n], each in (0, 1]. */
int dc_augment_parse_fractions(const char *text, double f[DC_AUGMENT_MAX_FRACTIONS], int *n);

/* in_subset [real->count]: image i is among the round(f n_c) (at least 1)
 * of its class c that --eval trains on with this seed (a Philox shuffle of
 * the class; the subset of a smaller f is part of a larger f's). */
int dc_augment_subset(const dc_dataset *real, double f, uint64_t seed, bool *in_subset);

struct dc_augment_classifier;

/* For each real fraction and seed, train the classifier of models/classifier.h
 * on a class-balanced subset of `real` alone, with standard augmentation, on
 * it plus `syn` (variations only of the subset's images) and on those
 * synthetic images alone, score them on the test split, and print the table
 * (mean ± std over the seeds) on stdout. With a judge (a classifier of all
 * the real images; NULL: none), first print how it sees the synthetic images:
 * the Fréchet distance of their features to the test images' by class, and
 * the classes it gives them. The pseudo-labelled synthetic images are labelled
 * again by each fraction and seed's own classifier of the real subset (with
 * standard augmentation when train.augment), and kept when its probability of
 * that class is above pseudo_threshold: their labels then come only from the
 * labels the subset has. scores: NULL, or [fractions x seeds], filled. */
int dc_augment_evaluate(const dc_dataset *real, const dc_synthetic *syn, const dc_augment_eval_options *o,
                        struct dc_augment_classifier *judge, dc_augment_scores *scores);

/* Standard augmentation, batch image k of a training with this seed: dst
 * [h, w, c] is src shifted by dx, dy in [-DC_AUGMENT_SHIFT, DC_AUGMENT_SHIFT]
 * (edge pixels repeated) and flipped left-right with probability 1/2:
 * dst[y][x] = src[clamp(y + dy)][f(clamp(x + dx))], f(x) = w - 1 - x or x. */
#define DC_AUGMENT_SHIFT 2
void dc_augment_flip_shift(int h, int w, int c, float *dst, const float *src, uint64_t seed, uint64_t k);

/* Mean mu [d] and covariance S [d, d] (over n - 1) of the n >= 2 rows of x [n, d]. */
void dc_augment_gaussian_fit(int64_t n, int d, const double *x, double *mu, double *S);
/* The Fréchet distance of N(mu1, S1) and N(mu2, S2) (S symmetric positive
 * semi-definite, d <= 4096): |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2,
 * the square roots by LAPACK's symmetric eigendecomposition. */
int dc_augment_frechet(int d, const double *mu1, const double *S1, const double *mu2, const double *S2, double *fd);

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
        float *one; /* [per] an image before standard augmentation */
        int32_t *y;
    } t;
} dc_augment_classifier;

int dc_augment_classifier_train(dc_augment_classifier *c, const dc_dataset *real, const dc_augment_train_options *o);
int dc_augment_classifier_load(dc_augment_classifier *c, const dc_dataset *real, const char *path,
                               const dc_augment_train_options *o);
int dc_augment_classifier_save(const dc_augment_classifier *c, const dc_dataset *real, const char *path);
/* px [h, w, c] in [-1, 1] (the real images' size): the softmax probability of class `label`. */
int dc_augment_classifier_confidence(dc_augment_classifier *c, const float *px, int32_t label, double *p);
/* The same image's most probable class (the first of equals) and its probability. */
int dc_augment_classifier_predict(dc_augment_classifier *c, const float *px, int32_t *label, double *p);
/* Safe on a zeroed one. */
void dc_augment_classifier_free(dc_augment_classifier *c);

#endif
