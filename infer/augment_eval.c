/*
 * `diffc augment --eval`: does the synthetic data help a classifier?
 *
 * For each real fraction f, a class-balanced subset of the real training
 * images (round(f * n_c) images of every class c, at least one, picked by a
 * Philox shuffle of the class keyed by the seed) trains the classifier of
 * models/classifier.h twice from the same initial weights: on the subset
 * alone, and on the subset plus the synthetic images (the class-conditional
 * ones, and the variations of the subset's own images: a variation of an
 * image outside the subset would bring in real data the subset lacks). Both
 * are scored on the test split, and the two accuracies printed side by side.
 * With train.augment a third classifier trains on the subset with standard
 * augmentation (the baseline synthetic data has to beat), and the mixed run
 * uses it too; a fourth trains on the synthetic images alone (the
 * classification accuracy score, CAS: how much of the classes they carry).
 * Pseudo-labelled synthetic images (--unlabelled) take the classes the
 * subset's own classifier gives them: the real+std one (real-only without
 * standard augmentation), trained before the synthetic sets are made, and
 * are kept when its probability of that class is above the threshold.
 * --synthetic-prob P draws each batch image from the synthetic ones with
 * probability P instead of from the union. --eval-seeds N repeats all of it
 * (the subset, the initial weights, the batches) with N seeds: mean ± std.
 *
 * Standard augmentation: each batch image flipped left-right with
 * probability 1/2 and shifted by up to DC_AUGMENT_SHIFT pixels each way (the edge
 * pixels repeated), as torchvision's RandomHorizontalFlip + RandomCrop with
 * padding do.
 *
 * Quality (with a judge, a classifier of all the real images): its features
 * (the last convolution's map averaged over positions) of the synthetic
 * images, of the test images and of as many real training images per class
 * as there are synthetic ones; a Gaussian fit of each set, by class and all
 * together, and the Fréchet distance between fits (FID's formula in this
 * classifier's feature space; the real training images give the floor that
 * sampling alone leaves); and the confusion of the synthetic images: the
 * class the judge gives each, by the class it was made as.
 *
 * Training: --eval-steps AdamW steps (or --eval-epochs passes over the
 * training set) of --eval-batch-size images drawn uniformly with
 * replacement (Philox, so a run is repeatable), cosine-decayed learning rate.
 * The same training, on every real image, makes the classifier that
 * --filter-threshold keeps synthetic images by (dc_augment_classifier); it
 * is saved as a safetensors file whose metadata names its classes.
 */
#include "augment.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/nn.h"
#include "autograd/optim.h"
#include "autograd/rng.h"
#include "autograd/safetensors.h"
#include "data/image.h"
#include "models/classifier.h"

#include <cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EVAL_BATCH 256                    /* test images scored at once (augment.h says it too) */
#define ACTIVATION_BYTES ((size_t)8 << 30) /* reserved lazily */
#define SHUFFLE_STREAM 0x5eed0000u        /* Philox streams of the class shuffles: + class */
#define BATCH_STREAM 0xba7c0000u          /* of the batch draws */
#define MIX_STREAM 0x31c50000u            /* of --synthetic-prob's real-or-synthetic draws */
#define AUG_STREAM 0xa0600000u            /* of standard augmentation: 3 draws per batch image */
#define FEATURES 64                       /* the judge's feature vector (models/classifier.h) */

/* A training or test set: pointers to images of one size, with labels. */
typedef struct image_set {
    int64_t n;
    const uint8_t **px; /* [n] each [h, w, c] */
    int32_t *labels;    /* [n] */
} image_set;

/* What training and scoring a classifier need: a CPU context and a batch's
 * buffers (declared in augment.h, inside dc_augment_classifier). */
typedef struct dc_augment_trainer trainer;

/* What a classifier trains on: batch images drawn uniformly from a, or with probability p from b. */
typedef struct train_set {
    const image_set *a, *b;
    double p;
} train_set;

typedef struct eval {
    const dc_dataset *real;
    const dc_synthetic *syn;
    const dc_augment_eval_options *o;
    dc_augment_train_options cur; /* the training under way: o->train with this seed and augmentation */
    int64_t per;         /* bytes of one image */
    uint8_t *syn_px;     /* [syn->n, per] the synthetic images, decoded */
    bool *syn_ok;        /* [syn->n] decoded and of the right size */
    int32_t *syn_label;  /* [syn->n] their labels for this fraction and seed (pseudo-labels: its classifier's) */
    bool *syn_kept;      /* [syn->n] decoded, and a pseudo-labelled one above the threshold */
    dc_dataset test;
    bool test_open;
    image_set test_set;
    double *test_feat; /* [test.count, FEATURES] the judge's features of the test images, while quality() runs */
    trainer t;
} eval;

static void set_free(image_set *s) {
    free(s->px);
    free(s->labels);
    *s = (image_set){0};
}

static int set_alloc(image_set *s, int64_t cap) {
    *s = (image_set){0};
    s->px = malloc((size_t)(cap ? cap : 1) * sizeof *s->px);
    s->labels = malloc((size_t)(cap ? cap : 1) * sizeof *s->labels);
    return s->px && s->labels ? 0 : dc_fail("out of memory for %" PRId64 " images", cap);
}

static void set_add(image_set *s, const uint8_t *px, int32_t label) {
    s->px[s->n] = px;
    s->labels[s->n++] = label;
}

/* "0.01,0.1,1" -> f[n], each in (0, 1]. */
int dc_augment_parse_fractions(const char *text, double f[DC_AUGMENT_MAX_FRACTIONS], int *n) {
    *n = 0;
    for (const char *p = text;; p++) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || (*end && *end != ',') || errno || !(v > 0 && v <= 1))
            return dc_fail("--real-fraction '%s': expected fractions in (0, 1], such as 0.01,0.1,1", text);
        if (*n == DC_AUGMENT_MAX_FRACTIONS)
            return dc_fail("--real-fraction '%s': at most %d fractions", text, DC_AUGMENT_MAX_FRACTIONS);
        f[(*n)++] = v;
        if (!*end)
            return 0;
        p = end;
    }
}

/* ---- the data ---- */

static int open_test(eval *e) {
    const dc_dataset *r = e->real;
    dc_dataset_options dopt = {.resolution = r->w, .channels = r->c, .split = "test", .cache_dir = e->o->cache_dir};
    if (dc_dataset_open(&e->test, e->o->test_dir, &dopt))
        return -1;
    e->test_open = true;
    bool same = e->test.num_classes == r->num_classes;
    for (int k = 0; same && k < r->num_classes; k++)
        same = !strcmp(e->test.class_names[k], r->class_names[k]);
    if (!same)
        return dc_fail("--eval-data-dir %s: its %d classes are not the %d classes of the training images",
                       e->o->test_dir, e->test.num_classes, r->num_classes);
    if (set_alloc(&e->test_set, e->test.count))
        return -1;
    for (int64_t i = 0; i < e->test.count; i++)
        set_add(&e->test_set, e->test.pixels + i * e->per, e->test.labels[i]);
    return 0;
}

/* Decode every synthetic image; one that cannot be read is skipped with a warning. */
static int load_synthetic(eval *e) {
    const dc_dataset *r = e->real;
    int64_t n = e->syn->n;
    e->syn_px = malloc((size_t)((n ? n : 1) * e->per));
    e->syn_ok = calloc((size_t)(n ? n : 1), sizeof *e->syn_ok);
    e->syn_label = malloc((size_t)(n ? n : 1) * sizeof *e->syn_label);
    e->syn_kept = malloc((size_t)(n ? n : 1) * sizeof *e->syn_kept);
    if (!e->syn_px || !e->syn_ok || !e->syn_label || !e->syn_kept)
        return dc_fail("out of memory for %" PRId64 " synthetic images", n);
    for (int64_t i = 0; i < n; i++) {
        dc_image img = {0};
        if (dc_image_load(&img, e->syn->paths[i]))
            fprintf(stderr, "diffc: warning: skipped: %s\n", dc_error());
        else if (img.w != r->w || img.h != r->h || img.c != r->c)
            fprintf(stderr, "diffc: warning: skipped: %s: %dx%dx%d, not the %dx%dx%d of the real images\n",
                    e->syn->paths[i], img.w, img.h, img.c, r->w, r->h, r->c);
        else {
            memcpy(e->syn_px + i * e->per, img.px, (size_t)e->per);
            e->syn_ok[i] = true;
        }
        dc_image_free(&img);
    }
    return 0;
}

int dc_augment_subset(const dc_dataset *r, double f, uint64_t seed, bool *in_subset) {
    int64_t *idx = malloc((size_t)(r->count ? r->count : 1) * sizeof *idx);
    if (!idx)
        return dc_fail("out of memory");
    for (int c = 0; c < r->num_classes; c++) {
        int64_t m = 0;
        for (int64_t i = 0; i < r->count; i++)
            if (r->labels[i] == c)
                idx[m++] = i;
        for (int64_t i = m - 1; i > 0; i--) { /* Fisher-Yates */
            float u = dc_rand_uniform(seed, SHUFFLE_STREAM + (uint64_t)c, (uint64_t)i);
            int64_t j = (int64_t)(u * (float)(i + 1));
            j = j > i ? i : j;
            int64_t t = idx[i];
            idx[i] = idx[j], idx[j] = t;
        }
        int64_t keep = llround(f * (double)m);
        keep = keep < 1 ? 1 : keep > m ? m : keep;
        for (int64_t i = 0; i < m; i++)
            in_subset[idx[i]] = i < keep;
    }
    free(idx);
    return 0;
}

/* ---- the classifier ---- */

static int trainer_init(trainer *t, const dc_dataset *real, const dc_augment_train_options *o) {
    *t = (trainer){.h = real->h, .w = real->w, .c = real->c, .num_classes = real->num_classes, .o = o,
                   .per = (int64_t)real->h * real->w * real->c};
    int64_t b = o->batch_size > EVAL_BATCH ? o->batch_size : EVAL_BATCH;
    t->x = malloc((size_t)(b * t->per) * sizeof *t->x);
    t->y = malloc((size_t)b * sizeof *t->y);
    t->one = malloc((size_t)t->per * sizeof *t->one);
    if (!t->x || !t->y || !t->one)
        return dc_fail("out of memory");
    if (dc_ctx_init(&t->ctx, DC_CPU, ACTIVATION_BYTES))
        return -1;
    t->ctx_ready = true;
    return 0;
}

static void trainer_free(trainer *t) {
    if (t->ctx_ready)
        dc_ctx_free(&t->ctx);
    free(t->x);
    free(t->one);
    free(t->y);
    *t = (trainer){0};
}

static int64_t train_steps(const trainer *t, int64_t n) {
    if (!t->o->epochs)
        return t->o->steps;
    return (t->o->epochs * n + t->o->batch_size - 1) / t->o->batch_size;
}

void dc_augment_flip_shift(int h, int w, int c, float *dst, const float *src, uint64_t seed, uint64_t k) {
    bool flip = dc_rand_uniform(seed, AUG_STREAM, 3 * k) < 0.5f;
    int dx = (int)(dc_rand_uniform(seed, AUG_STREAM, 3 * k + 1) * (2 * DC_AUGMENT_SHIFT + 1)) - DC_AUGMENT_SHIFT;
    int dy = (int)(dc_rand_uniform(seed, AUG_STREAM, 3 * k + 2) * (2 * DC_AUGMENT_SHIFT + 1)) - DC_AUGMENT_SHIFT;
    dx = dx > DC_AUGMENT_SHIFT ? DC_AUGMENT_SHIFT : dx, dy = dy > DC_AUGMENT_SHIFT ? DC_AUGMENT_SHIFT : dy;
    for (int y = 0; y < h; y++) {
        int sy = y + dy < 0 ? 0 : y + dy >= h ? h - 1 : y + dy;
        for (int x = 0; x < w; x++) {
            int sx = x + dx < 0 ? 0 : x + dx >= w ? w - 1 : x + dx;
            sx = flip ? w - 1 - sx : sx;
            memcpy(dst + ((int64_t)y * w + x) * c, src + ((int64_t)sy * w + sx) * c, (size_t)c * sizeof *dst);
        }
    }
}

/* Batch image `draw` of s: its pixels into dst (standard augmentation with o->augment), its label. */
static int32_t draw_image(trainer *t, const train_set *s, uint64_t draw, float *dst) {
    const image_set *from = s->b && s->b->n && dc_rand_uniform(t->o->seed, MIX_STREAM, draw) < s->p ? s->b : s->a;
    int64_t i = (int64_t)(dc_rand_uniform(t->o->seed, BATCH_STREAM, draw) * (float)from->n);
    i = i >= from->n ? from->n - 1 : i;
    dc_u8_to_float(t->o->augment ? t->one : dst, from->px[i], (size_t)t->per);
    if (t->o->augment)
        dc_augment_flip_shift(t->h, t->w, t->c, dst, t->one, t->o->seed, draw);
    return from->labels[i];
}

static int train_step(trainer *t, const dc_classifier *m, dc_params *ps, dc_adamw *opt, const train_set *s,
                      int64_t step, int64_t steps) {
    int64_t b = t->o->batch_size;
    for (int64_t k = 0; k < b; k++)
        t->y[k] = draw_image(t, s, (uint64_t)(step * b + k), t->x + k * t->per);
    dc_ctx_reset(&t->ctx);
    dc_tensor *x = dc_from_host(&t->ctx, DC_F32, DC_SHAPE(b, t->h, t->w, t->c), t->x);
    dc_tensor *y = dc_from_host(&t->ctx, DC_I32, DC_SHAPE(b), t->y);
    dc_tensor *loss = dc_cross_entropy(&t->ctx, dc_classifier_forward(&t->ctx, m, x), y);
    if (!loss)
        return -1;
    dc_params_zero_grad(ps);
    if (dc_backward(&t->ctx, loss))
        return -1;
    dc_adamw_step(opt, ps->data, ps->grad, dc_lr_at(DC_LR_COSINE, t->o->learning_rate, step, 0, steps));
    return 0;
}

/* Declare a fresh classifier (the same initial weights every time, from the seed) and train it on s. */
static int train(trainer *t, dc_classifier *m, dc_params *ps, const train_set *s) {
    dc_adamw opt = {0};
    int64_t steps = train_steps(t, s->a->n);
    int rc = dc_classifier_init(m, ps, t->h, t->w, t->c, t->num_classes) || dc_params_alloc(ps, t->o->seed) ||
                     dc_adamw_init(&opt, ps->total, 0.9, 0.999, 1e-8, 0.01)
                 ? -1
                 : 0;
    for (int64_t step = 0; !rc && step < steps; step++)
        rc = train_step(t, m, ps, &opt, s, step, steps);
    dc_adamw_free(&opt);
    return rc;
}

/* The logits [b, K] of the b images in t->x, and with map its features'
 * map [b, ..., FEATURES]; NULL on error. Gradients and dropout off. */
static const float *logits_of(trainer *t, const dc_classifier *m, int64_t b, const float **map) {
    bool was = dc_set_grad_enabled(&t->ctx, false);
    t->ctx.training = false;
    dc_ctx_reset(&t->ctx);
    dc_tensor *x = dc_from_host(&t->ctx, DC_F32, DC_SHAPE(b, t->h, t->w, t->c), t->x);
    dc_tensor *h = dc_classifier_features(&t->ctx, m, x);
    dc_tensor *logits = dc_classifier_head(&t->ctx, m, h);
    dc_set_grad_enabled(&t->ctx, was);
    t->ctx.training = true;
    if (map && logits)
        *map = h->data;
    return logits ? logits->data : NULL;
}

static int64_t argmax(const float *l, int64_t K) {
    int64_t best = 0;
    for (int64_t j = 1; j < K; j++)
        best = l[j] > l[best] ? j : best;
    return best;
}

/* The softmax probability of class k of the logits l [K]. */
static double probability(const float *l, int64_t K, int64_t k) {
    double top = l[argmax(l, K)], sum = 0;
    for (int64_t j = 0; j < K; j++)
        sum += exp(l[j] - top);
    return exp(l[k] - top) / sum;
}

/* Every image of s through the classifier: its predicted class into pred[n],
 * with conf its probability into conf[n], and with feat, its FEATURES
 * features (the map averaged over positions) into feat[n, FEATURES]. */
static int classify(trainer *t, const dc_classifier *m, const image_set *s, int32_t *pred, double *conf,
                    double *feat) {
    int64_t K = t->num_classes;
    for (int64_t first = 0; first < s->n; first += EVAL_BATCH) {
        int64_t b = s->n - first < EVAL_BATCH ? s->n - first : EVAL_BATCH;
        for (int64_t k = 0; k < b; k++)
            dc_u8_to_float(t->x + k * t->per, s->px[first + k], (size_t)t->per);
        const float *map = NULL;
        const float *l = logits_of(t, m, b, &map);
        if (!l)
            return -1;
        for (int64_t k = 0; k < b; k++) {
            pred[first + k] = (int32_t)argmax(l + k * K, K);
            if (conf)
                conf[first + k] = probability(l + k * K, K, pred[first + k]);
        }
        if (!feat)
            continue;
        int64_t per_image = ((t->h + 3) / 4) * ((t->w + 3) / 4);
        for (int64_t k = 0; k < b; k++) {
            double *f = feat + (first + k) * FEATURES;
            memset(f, 0, FEATURES * sizeof *f);
            for (int64_t p = 0; p < per_image; p++)
                for (int j = 0; j < FEATURES; j++)
                    f[j] += map[(k * per_image + p) * FEATURES + j];
            for (int j = 0; j < FEATURES; j++)
                f[j] /= (double)per_image;
        }
    }
    return 0;
}

/* The fraction of the test set the classifier gets right. */
static int score(eval *e, const dc_classifier *m, double *accuracy) {
    const image_set *s = &e->test_set;
    int32_t *pred = malloc((size_t)(s->n ? s->n : 1) * sizeof *pred);
    if (!pred)
        return dc_fail("out of memory");
    int rc = classify(&e->t, m, s, pred, NULL, NULL);
    int64_t right = 0;
    for (int64_t i = 0; !rc && i < s->n; i++)
        right += pred[i] == s->labels[i];
    *accuracy = (double)right / (double)s->n;
    free(pred);
    return rc;
}

/* The pseudo-labelled synthetic images: syn_label and syn_kept from
 * classifier m's most probable class and its probability. */
static int pseudo_label(eval *e, const dc_classifier *m) {
    const dc_synthetic *syn = e->syn;
    image_set s = {0};
    int64_t *at = malloc((size_t)(syn->n ? syn->n : 1) * sizeof *at);
    int32_t *pred = malloc((size_t)(syn->n ? syn->n : 1) * sizeof *pred);
    double *conf = malloc((size_t)(syn->n ? syn->n : 1) * sizeof *conf);
    int rc = at && pred && conf ? set_alloc(&s, syn->n) : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < syn->n; i++)
        if (e->syn_ok[i] && syn->pseudo[i]) {
            at[s.n] = i;
            set_add(&s, e->syn_px + i * e->per, -1);
        }
    if (!rc)
        rc = classify(&e->t, m, &s, pred, conf, NULL);
    double t = e->o->pseudo_threshold;
    for (int64_t k = 0; !rc && k < s.n; k++) {
        e->syn_label[at[k]] = pred[k];
        e->syn_kept[at[k]] = isnan(t) || conf[k] > t;
    }
    set_free(&s);
    free(at);
    free(pred);
    free(conf);
    return rc;
}

/* Train a fresh classifier on s (standard augmentation or not); its test
 * accuracy. With label, it then gives the pseudo-labelled images their labels. */
static int train_and_score(eval *e, const train_set *s, bool augment, bool label, double *accuracy) {
    if (!s->a->n) {
        *accuracy = NAN;
        return 0;
    }
    dc_params ps;
    dc_classifier m;
    dc_params_init(&ps);
    e->cur.augment = augment;
    int rc = train(&e->t, &m, &ps, s) || score(e, &m, accuracy) || (label && pseudo_label(e, &m)) ? -1 : 0;
    dc_params_free(&ps);
    return rc;
}

/* The real subset of fraction f (in [count]: its images) into real. */
static int real_set(const eval *e, double f, bool *in, image_set *real) {
    const dc_dataset *r = e->real;
    if (dc_augment_subset(r, f, e->cur.seed, in) || set_alloc(real, r->count))
        return -1;
    for (int64_t i = 0; i < r->count; i++)
        if (in[i])
            set_add(real, r->pixels + i * e->per, r->labels[i]);
    return 0;
}

/* The synthetic images that go with the subset (in) into syn, and with its
 * images (real) into mixed. */
static int synthetic_sets(const eval *e, const bool *in, const image_set *real, image_set *syn, image_set *mixed) {
    if (set_alloc(syn, e->syn->n) || set_alloc(mixed, real->n + e->syn->n))
        return -1;
    for (int64_t i = 0; i < real->n; i++)
        set_add(mixed, real->px[i], real->labels[i]);
    for (int64_t i = 0; i < e->syn->n; i++)
        if (e->syn_kept[i] && (e->syn->source[i] < 0 || in[e->syn->source[i]])) {
            set_add(syn, e->syn_px + i * e->per, e->syn_label[i]);
            set_add(mixed, e->syn_px + i * e->per, e->syn_label[i]);
        }
    return 0;
}

/* Fraction f with the seed in e->cur: the four classifiers' accuracies (and
 * the set sizes). The classifier of the real subset that the baseline column
 * trains (with standard augmentation when there is that column) labels the
 * pseudo-labelled images before the synthetic sets are made. */
static int run_one(eval *e, double f, dc_augment_scores *sc, int64_t *n_real, int64_t *n_syn) {
    image_set real = {0}, syn = {0}, mixed = {0};
    bool aug = e->o->train.augment;
    bool *in = calloc((size_t)(e->real->count ? e->real->count : 1), sizeof *in);
    for (int64_t i = 0; i < e->syn->n; i++) {
        e->syn_label[i] = e->syn->labels[i];
        e->syn_kept[i] = e->syn_ok[i] && !e->syn->pseudo[i];
    }
    *sc = (dc_augment_scores){NAN, NAN, NAN, NAN};
    int rc = in ? real_set(e, f, in, &real) : dc_fail("out of memory");
    train_set real_only = {&real, NULL, 0};
    if (!rc)
        rc = train_and_score(e, &real_only, false, !aug, &sc->real) ||
                     (aug && train_and_score(e, &real_only, true, true, &sc->real_std)) ||
                     synthetic_sets(e, in, &real, &syn, &mixed)
                 ? -1
                 : 0;
    train_set with = isnan(e->o->synthetic_prob) ? (train_set){&mixed, NULL, 0}
                                                 : (train_set){&real, &syn, e->o->synthetic_prob};
    train_set syn_only = {&syn, NULL, 0};
    if (!rc)
        rc = train_and_score(e, &with, aug, false, &sc->mixed) || train_and_score(e, &syn_only, false, false, &sc->cas)
                 ? -1
                 : 0;
    *n_real = real.n, *n_syn = syn.n;
    set_free(&real);
    set_free(&syn);
    set_free(&mixed);
    free(in);
    return rc;
}

/* "mean ± std" in percent of the n accuracies at x[0], x[stride], ...; "-" if not run. */
static void print_stat(const double *x, int n, size_t stride) {
    double sum = 0, sq = 0;
    for (int i = 0; i < n; i++)
        sum += *(const double *)((const char *)x + i * stride);
    double mean = sum / n;
    for (int i = 0; i < n; i++) {
        double d = *(const double *)((const char *)x + i * stride) - mean;
        sq += d * d;
    }
    if (isnan(mean))
        printf(" %15s", "-");
    else
        printf(" %7.2f ± %5.2f", 100 * mean, n > 1 ? 100 * sqrt(sq / (n - 1)) : 0.0);
}

static void print_row(const eval *e, double f, int64_t n_real, int64_t n_syn, const dc_augment_scores *sc, int n) {
    printf("%14g %8" PRId64 " %9" PRId64, f, n_real, n_syn);
    print_stat(&sc->real, n, sizeof *sc);
    if (e->o->train.augment)
        print_stat(&sc->real_std, n, sizeof *sc);
    print_stat(&sc->mixed, n, sizeof *sc);
    print_stat(&sc->cas, n, sizeof *sc);
    printf("\n");
}

static void print_header(const eval *e) {
    const dc_augment_train_options *o = &e->o->train;
    printf("eval: a %d-class CNN per training set, %" PRId64 " %s of batch %" PRId64 ", AdamW lr %g (cosine), "
           "%d seed(s) from %" PRIu64 "; test: %" PRId64 " images of %s (split test)\n",
           e->real->num_classes, o->epochs ? o->epochs : o->steps, o->epochs ? "epochs" : "steps", o->batch_size,
           o->learning_rate, e->o->seeds, o->seed, e->test.count, e->o->test_dir);
    if (o->augment)
        printf("eval: standard augmentation (flip left-right, shift up to %d px) in real+std and real+synthetic\n",
               DC_AUGMENT_SHIFT);
    if (!isnan(e->o->synthetic_prob))
        printf("eval: real+synthetic draws a synthetic image with probability %g\n", e->o->synthetic_prob);
    int64_t pseudo = 0;
    for (int64_t i = 0; i < e->syn->n; i++)
        pseudo += e->syn_ok[i] && e->syn->pseudo[i];
    char kept[48] = "";
    if (!isnan(e->o->pseudo_threshold))
        snprintf(kept, sizeof kept, ", kept above probability %g", e->o->pseudo_threshold);
    if (pseudo)
        printf("eval: %" PRId64 " unlabelled images take the classes the %s classifier of each subset gives them%s\n",
               pseudo, o->augment ? "real+std" : "real-only", kept);
    printf("eval: test accuracy %%, mean ± std over the seeds; CAS: trained on the synthetic images alone\n");
    printf("%14s %8s %9s %15s", "real fraction", "real", "synthetic", "real-only");
    if (o->augment)
        printf(" %15s", "real+std");
    printf(" %15s %15s\n", "real+synthetic", "CAS");
}

static int run_fractions(eval *e, const double *f, int n_f, dc_augment_scores *out) {
    int n = e->o->seeds;
    dc_augment_scores *sc = malloc((size_t)n * sizeof *sc);
    if (!sc)
        return dc_fail("out of memory");
    print_header(e);
    fflush(stdout);
    int rc = 0;
    for (int k = 0; k < n_f && !rc; k++) {
        int64_t n_real = 0, n_syn = 0;
        for (int s = 0; s < n && !rc; s++) {
            e->cur.seed = e->o->train.seed + (uint64_t)s;
            rc = run_one(e, f[k], &sc[s], &n_real, &n_syn);
            if (!rc && out)
                out[k * n + s] = sc[s];
        }
        if (!rc)
            print_row(e, f[k], n_real, n_syn, sc, n);
        fflush(stdout);
    }
    free(sc);
    return rc;
}

/* ---- the synthetic images' quality ---- */

void dc_augment_gaussian_fit(int64_t n, int d, const double *x, double *mu, double *S) {
    for (int j = 0; j < d; j++) {
        mu[j] = 0;
        for (int64_t i = 0; i < n; i++)
            mu[j] += x[i * d + j];
        mu[j] /= (double)n;
    }
    for (int a = 0; a < d; a++)
        for (int b = a; b < d; b++) {
            double sum = 0;
            for (int64_t i = 0; i < n; i++)
                sum += (x[i * d + a] - mu[a]) * (x[i * d + b] - mu[b]);
            S[a * d + b] = S[b * d + a] = sum / (double)(n - 1);
        }
}

/* LAPACK's symmetric eigendecomposition (OpenBLAS has it; Debian ships no LAPACKE header with it). */
extern void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
                    double *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t jobz_len,
                    size_t uplo_len);

/* a [d, d] symmetric -> its eigenvalues w [d] ascending, and its eigenvectors in a's rows. */
static int eigen(int d, double *a, double *w) {
    int lwork = 1 + 6 * d + 2 * d * d, liwork = 3 + 5 * d, info = 0;
    double *work = malloc((size_t)lwork * sizeof *work);
    int *iwork = malloc((size_t)liwork * sizeof *iwork);
    if (work && iwork) /* row-major a is column-major a^T = a: the rows come back as eigenvectors */
        dsyevd_("V", "U", &d, a, &d, w, work, &lwork, iwork, &liwork, &info, 1, 1);
    free(work);
    free(iwork);
    return !work || !iwork ? dc_fail("out of memory") : info ? dc_fail("eigendecomposition failed (%d)", info) : 0;
}

/* root [d, d] = S^1/2 (eigenvalues below zero, rounding, taken as zero); a: [d, d] scratch. */
static int sqrt_psd(int d, const double *S, double *root, double *a, double *w) {
    memcpy(a, S, (size_t)d * d * sizeof *a);
    if (eigen(d, a, w))
        return -1;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) {
            double sum = 0;
            for (int k = 0; k < d; k++)
                sum += a[k * d + i] * sqrt(w[k] > 0 ? w[k] : 0) * a[k * d + j];
            root[i * d + j] = sum;
        }
    return 0;
}

int dc_augment_frechet(int d, const double *mu1, const double *S1, const double *mu2, const double *S2, double *fd) {
    if (d < 1 || d > 4096)
        return dc_fail("Fréchet distance: %d dimensions (1 to 4096)", d);
    size_t dd = (size_t)d * d;
    double *root = malloc(dd * sizeof *root), *a = malloc(dd * sizeof *a), *m = malloc(dd * sizeof *m);
    double *w = malloc((size_t)d * sizeof *w);
    int rc = root && a && m && w ? sqrt_psd(d, S1, root, a, w) : dc_fail("out of memory");
    for (int i = 0; !rc && i < d; i++) /* a = S2 root, then m = root a = S1^1/2 S2 S1^1/2 */
        for (int j = 0; j < d; j++) {
            double sum = 0;
            for (int k = 0; k < d; k++)
                sum += S2[i * d + k] * root[k * d + j];
            a[i * d + j] = sum;
        }
    for (int i = 0; !rc && i < d; i++)
        for (int j = 0; j < d; j++) {
            double sum = 0;
            for (int k = 0; k < d; k++)
                sum += root[i * d + k] * a[k * d + j];
            m[i * d + j] = sum;
        }
    if (!rc)
        rc = eigen(d, m, w);
    double dist = 0;
    for (int i = 0; !rc && i < d; i++)
        dist += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + S1[i * d + i] + S2[i * d + i] - 2 * sqrt(w[i] > 0 ? w[i] : 0);
    *fd = dist;
    free(root), free(a), free(m), free(w);
    return rc;
}

/* The Fréchet distance between the Gaussian fits of the rows of fa [na, FEATURES]
 * and fb [nb, FEATURES] whose label is `label` (-1: every row); NAN with fewer than 2 of either. */
static int distance(const double *fa, const int32_t *la, int64_t na, const double *fb, const int32_t *lb,
                    int64_t nb, int32_t label, double *fd) {
    const double *f[2] = {fa, fb};
    const int32_t *l[2] = {la, lb};
    int64_t n[2] = {na, nb};
    double *x = malloc((size_t)((na > nb ? na : nb) + 1) * FEATURES * sizeof *x);
    double *fit = malloc(2 * (FEATURES + FEATURES * FEATURES) * sizeof *fit);
    int rc = x && fit ? 0 : dc_fail("out of memory");
    bool enough = true;
    for (int s = 0; !rc && s < 2; s++) {
        int64_t m = 0;
        for (int64_t i = 0; i < n[s]; i++)
            if (label < 0 || l[s][i] == label)
                memcpy(x + m++ * FEATURES, f[s] + i * FEATURES, FEATURES * sizeof *x);
        enough = enough && m >= 2;
        if (m >= 2)
            dc_augment_gaussian_fit(m, FEATURES, x, fit + s * (FEATURES + FEATURES * FEATURES),
                                    fit + s * (FEATURES + FEATURES * FEATURES) + FEATURES);
    }
    *fd = NAN;
    if (!rc && enough)
        rc = dc_augment_frechet(FEATURES, fit, fit + FEATURES, fit + FEATURES + FEATURES * FEATURES,
                                fit + 2 * FEATURES + FEATURES * FEATURES, fd);
    free(x);
    free(fit);
    return rc;
}

/* The real training images matching the synthetic ones: per class, the first as many as it has synthetic ones. */
static int reference_set(const eval *e, const image_set *syn, image_set *ref) {
    const dc_dataset *r = e->real;
    int64_t *want = calloc((size_t)r->num_classes, sizeof *want);
    int rc = want ? set_alloc(ref, syn->n) : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < syn->n; i++)
        want[syn->labels[i]]++;
    for (int64_t i = 0; !rc && i < r->count; i++)
        if (want[r->labels[i]] > 0) {
            want[r->labels[i]]--;
            set_add(ref, r->pixels + i * e->per, r->labels[i]);
        }
    free(want);
    return rc;
}

typedef struct judged {
    image_set set;
    int32_t *pred;
    double *feat;
} judged;

static int judge_set(dc_augment_classifier *judge, judged *j) {
    int64_t n = j->set.n ? j->set.n : 1;
    j->pred = malloc((size_t)n * sizeof *j->pred);
    j->feat = malloc((size_t)n * FEATURES * sizeof *j->feat);
    if (!j->pred || !j->feat)
        return dc_fail("out of memory");
    return classify(&judge->t, &judge->m, &j->set, j->pred, NULL, j->feat);
}

static void judged_free(judged *j) {
    set_free(&j->set);
    free(j->pred);
    free(j->feat);
}

/* One row of the quality table: class k (-1: all). */
static int quality_row(const eval *e, const judged *syn, const judged *ref, int32_t k) {
    double fd_syn, fd_ref;
    int64_t n = 0, right = 0;
    for (int64_t i = 0; i < syn->set.n; i++)
        if (k < 0 || syn->set.labels[i] == k)
            n++, right += syn->pred[i] == syn->set.labels[i];
    const image_set *t = &e->test_set;
    if (distance(syn->feat, syn->set.labels, syn->set.n, e->test_feat, t->labels, t->n, k, &fd_syn) ||
        distance(ref->feat, ref->set.labels, ref->set.n, e->test_feat, t->labels, t->n, k, &fd_ref))
        return -1;
    printf("%-20.20s %9" PRId64 " %10.1f%% %12.4g %12.4g\n", k < 0 ? "all" : e->real->class_names[k], n,
           n ? 100.0 * (double)right / (double)n : NAN, fd_syn, fd_ref);
    return 0;
}

static void print_confusion(const eval *e, const judged *syn) {
    int K = e->real->num_classes;
    printf("quality: the judge's class of the synthetic images (%% of each made class; columns in class order)\n");
    for (int k = 0; k < K; k++) {
        int64_t n = 0, *count = calloc((size_t)K, sizeof *count);
        if (!count)
            return;
        for (int64_t i = 0; i < syn->set.n; i++)
            if (syn->set.labels[i] == k)
                n++, count[syn->pred[i]]++;
        printf("%-20.20s", e->real->class_names[k]);
        for (int j = 0; j < K; j++)
            printf(" %5.1f", n ? 100.0 * (double)count[j] / (double)n : 0.0);
        printf("\n");
        free(count);
    }
}

/* How the judge sees the synthetic images (all of them that loaded). */
static int quality(eval *e, dc_augment_classifier *judge) {
    judged syn = {0}, ref = {0}, test = {.set = e->test_set};
    int rc = set_alloc(&syn.set, e->syn->n);
    for (int64_t i = 0; !rc && i < e->syn->n; i++)
        if (e->syn_ok[i])
            set_add(&syn.set, e->syn_px + i * e->per, e->syn->labels[i]);
    if (!rc)
        rc = reference_set(e, &syn.set, &ref.set) || judge_set(judge, &syn) || judge_set(judge, &ref) ||
                     judge_set(judge, &test)
                 ? -1
                 : 0;
    e->test_feat = test.feat;
    int64_t right = 0;
    for (int64_t i = 0; !rc && i < test.set.n; i++)
        right += test.pred[i] == test.set.labels[i];
    if (!rc) {
        printf("quality: judged by a CNN of all %" PRId64 " real training images (%.2f%% right on the test images); "
               "FD: Fréchet distance of its %d features to the test images'\n",
               e->real->count, 100.0 * (double)right / (double)(test.set.n ? test.set.n : 1), FEATURES);
        printf("%-20s %9s %11s %12s %12s\n", "class", "synthetic", "judge agrees", "FD synthetic",
               "FD real");
    }
    for (int32_t k = -1; !rc && k < e->real->num_classes; k++)
        rc = quality_row(e, &syn, &ref, k < 0 ? -1 : k);
    if (!rc)
        print_confusion(e, &syn);
    fflush(stdout);
    free(test.pred);
    free(test.feat);
    e->test_feat = NULL;
    judged_free(&syn);
    judged_free(&ref);
    return rc;
}

int dc_augment_evaluate(const dc_dataset *real, const dc_synthetic *syn, const dc_augment_eval_options *o,
                        dc_augment_classifier *judge, dc_augment_scores *scores) {
    eval e = {.real = real, .syn = syn, .o = o, .cur = o->train, .per = (int64_t)real->h * real->w * real->c};
    double f[DC_AUGMENT_MAX_FRACTIONS];
    int n_f = 0;
    int rc = o->seeds < 1 ? dc_fail("--eval-seeds %d: at least 1", o->seeds) : 0;
    if (!rc)
        rc = dc_augment_parse_fractions(o->fractions, f, &n_f) || open_test(&e) || load_synthetic(&e) ||
                     trainer_init(&e.t, real, &e.cur)
                 ? -1
                 : 0;
    if (!rc && judge)
        rc = quality(&e, judge);
    if (!rc)
        rc = run_fractions(&e, f, n_f, scores);
    trainer_free(&e.t);
    if (e.test_open)
        dc_dataset_close(&e.test);
    set_free(&e.test_set);
    free(e.syn_px);
    free(e.syn_ok);
    free(e.syn_label);
    free(e.syn_kept);
    return rc;
}

/* ---- the filter's classifier ---- */

#define CLASSIFIER_FORMAT "diffc-augment-classifier"

int dc_augment_classifier_train(dc_augment_classifier *c, const dc_dataset *real, const dc_augment_train_options *o) {
    image_set all = {0};
    dc_params_init(&c->ps);
    int rc = trainer_init(&c->t, real, o) || set_alloc(&all, real->count) ? -1 : 0;
    for (int64_t i = 0; !rc && i < real->count; i++)
        set_add(&all, real->pixels + i * c->t.per, real->labels[i]);
    if (!rc)
        rc = train(&c->t, &c->m, &c->ps, &(train_set){&all, NULL, 0});
    set_free(&all);
    return rc;
}

/* The dataset's class names as a JSON array, the file's record of what it tells apart. */
static char *class_list(const dc_dataset *real) {
    cJSON *a = cJSON_CreateArray();
    for (int k = 0; a && k < real->num_classes; k++)
        cJSON_AddItemToArray(a, cJSON_CreateString(real->class_names[k]));
    char *text = a ? dc_json_print(a, false) : NULL;
    cJSON_Delete(a);
    if (!text)
        dc_fail("out of memory");
    return text;
}

int dc_augment_classifier_save(const dc_augment_classifier *c, const dc_dataset *real, const char *path) {
    char *classes = class_list(real);
    if (!classes)
        return -1;
    const char *keys[] = {"format", "classes"}, *values[] = {CLASSIFIER_FORMAT, classes};
    int rc = dc_params_save(&c->ps, NULL, path, keys, values, 2);
    free(classes);
    return rc;
}

/* The file's classes are the dataset's, in the same order. */
static int check_classes(const dc_dataset *real, const char *path) {
    dc_st_file f;
    if (dc_st_open(&f, path))
        return -1;
    const char *format = dc_st_meta(&f, "format"), *classes = dc_st_meta(&f, "classes");
    char *want = class_list(real);
    int rc = !want                                     ? -1
             : !format || strcmp(format, CLASSIFIER_FORMAT) ? dc_fail("%s: not a classifier that diffc augment saved "
                                                                      "(its metadata has no format \"%s\")",
                                                                      path, CLASSIFIER_FORMAT)
             : !classes || strcmp(classes, want)
                 ? dc_fail("%s: a classifier of the classes %s, not the dataset's %s", path, classes ? classes : "?",
                           want)
                 : 0;
    free(want);
    dc_st_close(&f);
    return rc;
}

int dc_augment_classifier_load(dc_augment_classifier *c, const dc_dataset *real, const char *path,
                               const dc_augment_train_options *o) {
    dc_params_init(&c->ps);
    if (check_classes(real, path) || trainer_init(&c->t, real, o) ||
        dc_classifier_init(&c->m, &c->ps, real->h, real->w, real->c, real->num_classes))
        return -1;
    return dc_params_alloc_load(&c->ps, DC_CPU, path, NULL);
}

int dc_augment_classifier_confidence(dc_augment_classifier *c, const float *px, int32_t label, double *p) {
    memcpy(c->t.x, px, (size_t)c->t.per * sizeof *px);
    const float *l = logits_of(&c->t, &c->m, 1, NULL);
    if (!l)
        return -1;
    *p = probability(l, c->t.num_classes, label);
    return 0;
}

int dc_augment_classifier_predict(dc_augment_classifier *c, const float *px, int32_t *label, double *p) {
    memcpy(c->t.x, px, (size_t)c->t.per * sizeof *px);
    const float *l = logits_of(&c->t, &c->m, 1, NULL);
    if (!l)
        return -1;
    *label = (int32_t)argmax(l, c->t.num_classes);
    *p = probability(l, c->t.num_classes, *label);
    return 0;
}

void dc_augment_classifier_free(dc_augment_classifier *c) {
    trainer_free(&c->t);
    dc_params_free(&c->ps);
}
