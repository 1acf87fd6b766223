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

/* A training or test set: pointers to images of one size, with labels. */
typedef struct image_set {
    int64_t n;
    const uint8_t **px; /* [n] each [h, w, c] */
    int32_t *labels;    /* [n] */
} image_set;

/* What training and scoring a classifier need: a CPU context and a batch's
 * buffers (declared in augment.h, inside dc_augment_classifier). */
typedef struct dc_augment_trainer trainer;

typedef struct eval {
    const dc_dataset *real;
    const dc_synthetic *syn;
    const dc_augment_eval_options *o;
    int64_t per;         /* bytes of one image */
    uint8_t *syn_px;     /* [syn->n, per] the synthetic images, decoded */
    bool *syn_ok;        /* [syn->n] decoded and of the right size */
    dc_dataset test;
    bool test_open;
    image_set test_set;
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
    if (!e->syn_px || !e->syn_ok)
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

/* in_subset[i]: real image i is among the round(f n_c) picked of its class. */
static int pick_subset(const eval *e, double f, bool *in_subset) {
    const dc_dataset *r = e->real;
    int64_t *idx = malloc((size_t)(r->count ? r->count : 1) * sizeof *idx);
    if (!idx)
        return dc_fail("out of memory");
    for (int c = 0; c < r->num_classes; c++) {
        int64_t m = 0;
        for (int64_t i = 0; i < r->count; i++)
            if (r->labels[i] == c)
                idx[m++] = i;
        for (int64_t i = m - 1; i > 0; i--) { /* Fisher-Yates */
            float u = dc_rand_uniform(e->o->train.seed, SHUFFLE_STREAM + (uint64_t)c, (uint64_t)i);
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
    if (!t->x || !t->y)
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
    free(t->y);
    *t = (trainer){0};
}

static int64_t train_steps(const trainer *t, int64_t n) {
    if (!t->o->epochs)
        return t->o->steps;
    return (t->o->epochs * n + t->o->batch_size - 1) / t->o->batch_size;
}

static int train_step(trainer *t, const dc_classifier *m, dc_params *ps, dc_adamw *opt, const image_set *s,
                      int64_t step, int64_t steps) {
    int64_t b = t->o->batch_size;
    for (int64_t k = 0; k < b; k++) {
        uint64_t draw = (uint64_t)(step * b + k);
        int64_t i = (int64_t)(dc_rand_uniform(t->o->seed, BATCH_STREAM, draw) * (float)s->n);
        i = i >= s->n ? s->n - 1 : i;
        dc_u8_to_float(t->x + k * t->per, s->px[i], (size_t)t->per);
        t->y[k] = s->labels[i];
    }
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
static int train(trainer *t, dc_classifier *m, dc_params *ps, const image_set *s) {
    dc_adamw opt = {0};
    int64_t steps = train_steps(t, s->n);
    int rc = dc_classifier_init(m, ps, t->h, t->w, t->c, t->num_classes) || dc_params_alloc(ps, t->o->seed) ||
                     dc_adamw_init(&opt, ps->total, 0.9, 0.999, 1e-8, 0.01)
                 ? -1
                 : 0;
    for (int64_t step = 0; !rc && step < steps; step++)
        rc = train_step(t, m, ps, &opt, s, step, steps);
    dc_adamw_free(&opt);
    return rc;
}

/* The logits [b, K] of the b images in t->x; NULL on error. Gradients and dropout off. */
static const float *logits_of(trainer *t, const dc_classifier *m, int64_t b) {
    bool was = dc_set_grad_enabled(&t->ctx, false);
    t->ctx.training = false;
    dc_ctx_reset(&t->ctx);
    dc_tensor *x = dc_from_host(&t->ctx, DC_F32, DC_SHAPE(b, t->h, t->w, t->c), t->x);
    dc_tensor *logits = dc_classifier_forward(&t->ctx, m, x);
    dc_set_grad_enabled(&t->ctx, was);
    t->ctx.training = true;
    return logits ? logits->data : NULL;
}

/* The fraction of the test set the classifier gets right. */
static int score(eval *e, const dc_classifier *m, double *accuracy) {
    const image_set *s = &e->test_set;
    trainer *t = &e->t;
    int64_t right = 0, K = t->num_classes;
    for (int64_t first = 0; first < s->n; first += EVAL_BATCH) {
        int64_t b = s->n - first < EVAL_BATCH ? s->n - first : EVAL_BATCH;
        for (int64_t k = 0; k < b; k++)
            dc_u8_to_float(t->x + k * t->per, s->px[first + k], (size_t)t->per);
        const float *l = logits_of(t, m, b);
        if (!l)
            return -1;
        for (int64_t k = 0; k < b; k++) {
            int64_t best = 0;
            for (int64_t j = 1; j < K; j++)
                best = l[k * K + j] > l[k * K + best] ? j : best;
            right += best == s->labels[first + k];
        }
    }
    *accuracy = (double)right / (double)s->n;
    return 0;
}

/* Train a fresh classifier on s; its test accuracy. */
static int train_and_score(eval *e, const image_set *s, double *accuracy) {
    dc_params ps;
    dc_classifier m;
    dc_params_init(&ps);
    int rc = train(&e->t, &m, &ps, s) || score(e, &m, accuracy) ? -1 : 0;
    dc_params_free(&ps);
    return rc;
}

/* The two training sets of fraction f: real (the subset) and mixed (it plus the synthetic images). */
static int build_sets(const eval *e, double f, image_set *real, image_set *mixed) {
    const dc_dataset *r = e->real;
    bool *in = calloc((size_t)(r->count ? r->count : 1), sizeof *in);
    int rc = in ? pick_subset(e, f, in) : dc_fail("out of memory");
    if (!rc)
        rc = set_alloc(real, r->count) || set_alloc(mixed, r->count + e->syn->n) ? -1 : 0;
    for (int64_t i = 0; !rc && i < r->count; i++)
        if (in[i]) {
            set_add(real, r->pixels + i * e->per, r->labels[i]);
            set_add(mixed, r->pixels + i * e->per, r->labels[i]);
        }
    for (int64_t i = 0; !rc && i < e->syn->n; i++)
        if (e->syn_ok[i] && (e->syn->source[i] < 0 || in[e->syn->source[i]]))
            set_add(mixed, e->syn_px + i * e->per, e->syn->labels[i]);
    free(in);
    return rc;
}

static int run_fractions(eval *e, const double *f, int n_f) {
    const dc_augment_train_options *o = &e->o->train;
    printf("eval: a %d-class CNN per training set, %" PRId64 " %s of batch %" PRId64 ", AdamW lr %g (cosine); "
           "test: %" PRId64 " images of %s (split test)\n",
           e->real->num_classes, o->epochs ? o->epochs : o->steps, o->epochs ? "epochs" : "steps", o->batch_size,
           o->learning_rate, e->test.count, e->o->test_dir);
    printf("%14s %10s %10s %12s %15s\n", "real fraction", "real", "synthetic", "real-only", "real+synthetic");
    fflush(stdout);
    int rc = 0;
    for (int k = 0; k < n_f && !rc; k++) {
        image_set real = {0}, mixed = {0};
        double acc_real = 0, acc_mixed = 0;
        rc = build_sets(e, f[k], &real, &mixed);
        if (!rc)
            rc = train_and_score(e, &real, &acc_real) || train_and_score(e, &mixed, &acc_mixed) ? -1 : 0;
        if (!rc)
            printf("%14g %10" PRId64 " %10" PRId64 " %11.2f%% %14.2f%%\n", f[k], real.n, mixed.n - real.n,
                   100 * acc_real, 100 * acc_mixed);
        fflush(stdout);
        set_free(&real);
        set_free(&mixed);
    }
    return rc;
}

int dc_augment_evaluate(const dc_dataset *real, const dc_synthetic *syn, const dc_augment_eval_options *o) {
    eval e = {.real = real, .syn = syn, .o = o, .per = (int64_t)real->h * real->w * real->c};
    double f[DC_AUGMENT_MAX_FRACTIONS];
    int n_f = 0;
    int rc = dc_augment_parse_fractions(o->fractions, f, &n_f) || open_test(&e) || load_synthetic(&e) ||
                     trainer_init(&e.t, real, &o->train)
                 ? -1
                 : 0;
    if (!rc)
        rc = run_fractions(&e, f, n_f);
    trainer_free(&e.t);
    if (e.test_open)
        dc_dataset_close(&e.test);
    set_free(&e.test_set);
    free(e.syn_px);
    free(e.syn_ok);
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
        rc = train(&c->t, &c->m, &c->ps, &all);
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
    const float *l = logits_of(&c->t, &c->m, 1);
    if (!l)
        return -1;
    double top = l[0], sum = 0;
    for (int k = 1; k < c->t.num_classes; k++)
        top = l[k] > top ? l[k] : top;
    for (int k = 0; k < c->t.num_classes; k++)
        sum += exp(l[k] - top);
    *p = exp(l[label] - top) / sum;
    return 0;
}

void dc_augment_classifier_free(dc_augment_classifier *c) {
    trainer_free(&c->t);
    dc_params_free(&c->ps);
}
