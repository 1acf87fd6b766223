/*
 * `diffc anomaly`: anomaly detection with a model trained on normal images.
 *
 * A model trained on normal images only explains them better than anything
 * else. Each image gets an anomaly map per term of the score (--score):
 *   recon  the image noised to --strength (a fraction of the DDIM steps) and
 *          denoised with DDIM (dc_generate's img2img, SDEdit); the per-pixel
 *          squared error to the input (mean over channels);
 *   feat   the same reconstruction, compared in the denoiser's own feature
 *          space: the UNet's down-block outputs at --feature-timestep for
 *          the input and for its reconstruction, 1 - cosine similarity per
 *          location, spread over the pixels it covers, averaged over blocks
 *          (DDAD's feature distance, with no outside network);
 *   eps    the noise-prediction error at each of --timesteps: the image
 *          noised in one step (q_sample) with the same draw, and the squared
 *          error of the model's output against its training target, so the
 *          image's mean is the trainer's loss for that draw (an ELBO-like
 *          score; one forward pass per timestep, no denoising loop);
 *   complexity  the image's zlib-compressed size in bits per value
 *          (dc_complexity_bits), subtracted with --complexity-weight: Serra
 *          et al. (ICLR 2020) show that likelihood-like scores rank simple
 *          images as normal; on Fashion-MNIST the anomalies of the clothing
 *          classes are mostly simpler images;
 *   geo    the loss of a classifier that predicts which of 40 flips,
 *          rotations and shifts was applied (infer/anomaly_geo.h, GeoTrans),
 *          trained for --geo-steps on the --reference's normal images but
 *          those the reference scores;
 *   knn    the mean Euclidean distance, in pixels at the model's size, to the
 *          --knn-k nearest of those same normal images (the one-class
 *          nearest-neighbour score), added with --knn-weight.
 * complexity, geo and knn score whole images: they add nothing to the maps.
 * Every other map is averaged over --ensemble noise draws and Gaussian-smoothed
 * (--sigma); a term's image score is its map's mean, maximum or top-k mean
 * (--reduce). The image score is the terms' mean, or, with --reference
 * (normal images: the training set, of --normal-class only when it has
 * labels), the sum of the terms' z-scores against the reference images'
 * scores, so terms of different scales weigh alike, the levels of a kind
 * (eps's timesteps, recon's strengths) sharing one weight; the map is the
 * same weighted sum of the term maps.
 *
 * --images is any dataset diffc reads (an image folder, IDX or CIFAR-10
 * files: split --split, the test split by default) or one image file; images
 * of another size or channel count are brought to the model's, with a note;
 * unreadable ones are skipped with a warning. Image i of the run draws noise
 * stream (seed, i * ensemble + e), so its score does not depend on the batch
 * size or on which other images are scored; reference image j draws streams
 * from REFERENCE_STREAM + j * ensemble on.
 *
 * Evaluation, when the labels are known: with --labels DIR, an MVTec AD tree
 * (an image is normal when it lies in a folder "good", else its folder names
 * the defect, whose masks are DIR/ground_truth/<defect>/<name>_mask.png):
 * image AUROC, and pixel AUROC and PRO when every defective image has a
 * mask. With --normal-class K, on a labelled dataset (the one-class
 * protocol): class K is normal, every other class anomalous; image AUROC.
 * Class-conditional models reconstruct with label K then, else with their
 * "no class" label.
 *
 * Output in --output-dir: scores.csv (index, name, label, anomalous, score,
 * then each term's score),
 * heatmaps/<name>_raw.png (the map, one scale for all images) and
 * heatmaps/<name>_overlay.png (the map in colour over the image) for the
 * first --max-heatmaps images, and evaluation.json with the measures printed.
 */
#define _GNU_SOURCE /* strdup */
#include "commands.h"

#include "autograd/clock.h"
#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/dataset.h"
#include "data/image.h"
#include "infer/anomaly_eval.h"
#include "infer/anomaly_geo.h"
#include "infer/cli.h"
#include "infer/model.h"
#include "pipeline/generate.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_STRENGTHS 16 /* values of a list option */
#define MAX_TERMS (3 * MAX_STRENGTHS + 2)
#define REFERENCE_STREAM ((uint64_t)1 << 40) /* the reference's noise streams start here, apart from the images' */
#define MAX_NOTES 5   /* per-image notes printed before they are only counted */
#define PRO_MAX_FPR 0.3 /* MVTec AD's integration limit */
#define ACTIVATION_BYTES ((size_t)64 << 30) /* reserved lazily: only what a step touches is used */

/* ---- options ---- */

typedef struct anomaly_options {
    const char *model, *variant, *images, *output_dir, *score, *strength, *timesteps, *reduce, *labels, *normal_class,
        *split, *reference, *reference_split, *device, *mixed_precision;
    int64_t ensemble, num_inference_steps, top_k, batch_size, seed, max_images, max_heatmaps, reference_images,
        geo_steps, knn_k;
    double sigma, feature_timestep, complexity_weight, knn_weight;
    bool no_ema;
} anomaly_options;

#define FIELD(f) offsetof(anomaly_options, f)

static const dc_cli_option options[] = {
    {"model", DC_CLI_STRING, FIELD(model), "DIR", NULL, "required", 0, 0, false,
     "a diffusers pipeline or UNet folder trained on normal images"},
    {"variant", DC_CLI_STRING, FIELD(variant), "NAME", NULL, "default: the plain weights", 0, 0, false,
     "weights of this variant (diffusion_pytorch_model.NAME.safetensors, e.g. fp16)"},
    {"images", DC_CLI_STRING, FIELD(images), "DIR|FILE", NULL, "required, or LABELS/test",
     0, 0, false, "the images: an image folder, IDX or CIFAR-10 files, or one image"},
    {"split", DC_CLI_STRING, FIELD(split), "NAME", "test", NULL, 0, 0, false,
     "IDX and CIFAR-10 folders: train or test"},
    {"output-dir", DC_CLI_STRING, FIELD(output_dir), "DIR", "anomaly", NULL, 0, 0, false,
     "where scores.csv, heatmaps/ and evaluation.json go"},
    {"score", DC_CLI_STRING, FIELD(score), "KIND[,KIND...]", "eps", NULL, 0, 0, false,
     "recon (reconstruction error), feat (feature distance to the reconstruction), eps (noise-prediction error), "
     "complexity (compressed size, subtracted), geo (transform-prediction loss; needs --reference), "
     "knn (distance to the nearest normal images; needs --reference)"},
    {"strength", DC_CLI_STRING, FIELD(strength), "X[,X...]", "0.8", NULL, 0, 0, false,
     "recon and feat: noise level(s) in (0, 1], the fraction of the DDIM steps run"},
    {"timesteps", DC_CLI_STRING, FIELD(timesteps), "X[,X...]", "0.5,0.7,0.9", NULL, 0, 0, false,
     "eps: timesteps as fractions in [0, 1) of the training timesteps"},
    {"feature-timestep", DC_CLI_FLOAT, FIELD(feature_timestep), "X", "0.05", NULL, 0, 0.999, false,
     "feat: the timestep (a fraction) at which the UNet's features are taken"},
    {"complexity-weight", DC_CLI_FLOAT, FIELD(complexity_weight), "X", "0.5", NULL, 0, 1000, false,
     "complexity: the weight its (z-)score is subtracted with"},
    {"geo-steps", DC_CLI_INT, FIELD(geo_steps), "N", "2000", NULL, 1, 1e9, false,
     "geo: training steps (64 transformed images each) of the transform classifier"},
    {"knn-k", DC_CLI_INT, FIELD(knn_k), "K", "1", NULL, 1, DC_KNN_MAX_K, false,
     "knn: the nearest normal images whose distances are averaged"},
    {"knn-weight", DC_CLI_FLOAT, FIELD(knn_weight), "X", "2", NULL, 0, 1000, false,
     "knn: the weight its (z-)score is added with"},
    {"reference", DC_CLI_STRING, FIELD(reference), "DIR", NULL, "default: none", 0, 0, false,
     "normal images (their --normal-class only) whose scores normalise each term (z-scores, summed)"},
    {"reference-split", DC_CLI_STRING, FIELD(reference_split), "NAME", "train", NULL, 0, 0, false,
     "IDX and CIFAR-10 references: train or test"},
    {"reference-images", DC_CLI_INT, FIELD(reference_images), "N", "200", NULL, 2, 1e9, false,
     "reference images scored, evenly spaced"},
    {"ensemble", DC_CLI_INT, FIELD(ensemble), "N", "8", NULL, 1, 1024, false,
     "noise draws per image and term, maps averaged"},
    {"num-inference-steps", DC_CLI_INT, FIELD(num_inference_steps), "N", "10", NULL, 1, 1e6, false,
     "DDIM steps of the whole schedule (strength X runs int(N X))"},
    {"reduce", DC_CLI_STRING, FIELD(reduce), "NAME", "mean", NULL, 0, 0, false,
     "image score: mean, max, or topk-mean (of the --top-k largest pixels)"},
    {"top-k", DC_CLI_INT, FIELD(top_k), "K", "10", NULL, 1, 1e9, false, "pixels averaged by topk-mean"},
    {"sigma", DC_CLI_FLOAT, FIELD(sigma), "X", "1", NULL, 0, 1000, false,
     "Gaussian smoothing of the map, in pixels of the model's size (0: none)"},
    {"batch-size", DC_CLI_INT, FIELD(batch_size), "N", "32", NULL, 1, 65536, false,
     "images reconstructed together"},
    {"seed", DC_CLI_INT, FIELD(seed), "N", "0", NULL, 0, 9007199254740992.0, false, "the noise's seed"},
    {"labels", DC_CLI_STRING, FIELD(labels), "DIR", NULL, "default: none", 0, 0, false,
     "evaluate against an MVTec AD category folder (see above)"},
    {"normal-class", DC_CLI_STRING, FIELD(normal_class), "K", NULL, "default: none", 0, 0, false,
     "one-class protocol: class K (index or name) normal, the rest anomalous"},
    {"max-images", DC_CLI_INT, FIELD(max_images), "N", "0", NULL, 0, 1e12, false,
     "score N images evenly spaced through the set (deterministic; 0: all)"},
    {"max-heatmaps", DC_CLI_INT, FIELD(max_heatmaps), "N", "100", NULL, 0, 1e12, false,
     "heatmap PNGs for the first N images scored"},
    DC_CLI_NO_EMA_ROW,
    DC_CLI_DEVICE_ROW(""),
    DC_CLI_MIXED_PRECISION_ROW,
};
#define N_OPTIONS (sizeof options / sizeof options[0])

static const char usage_line[] = "usage: diffc anomaly --model DIR --images DIR|FILE [options]";

static const char help_intro[] =
    "\n"
    "Score images for anomalies with a model trained on normal images. Terms (--score):\n"
    "eps, the model's noise-prediction error (its training loss) at each of --timesteps;\n"
    "recon, the squared error between the image and its DDIM reconstruction from --strength;\n"
    "feat, the distance between the UNet's features of the image and of that reconstruction;\n"
    "complexity, the image's compressed size, subtracted (simple images are not more normal);\n"
    "geo, the loss of a classifier trained on the --reference images to tell 40 flips,\n"
    "rotations and shifts of them apart; knn, the distance to the nearest of those images\n"
    "(whole-image terms, not in the maps).\n"
    "Maps are averaged over --ensemble noise draws and smoothed (--sigma); a term's score is\n"
    "its map's mean, max or top-k mean. The terms are averaged, or with --reference (normal\n"
    "images, e.g. the training set) their z-scores against the reference's are summed, the\n"
    "levels of a kind (eps's timesteps) sharing one weight. The defaults are what worked\n"
    "best on Fashion-MNIST's one-class protocol; with --reference, --score\n"
    "eps,complexity,geo,knn scored better still. To localise small defects (MVTec AD) use\n"
    "low timesteps (e.g. --timesteps 0.1,0.2,0.3).\n"
    "Writes OUTPUT-DIR/scores.csv, heatmaps/*_raw.png and *_overlay.png, evaluation.json.\n"
    "\n"
    "Evaluation: --labels DIR (an MVTec AD category: test/good, test/<defect>,\n"
    "ground_truth/<defect>/<name>_mask.png; --images defaults to DIR/test) prints the image\n"
    "AUROC, and the pixel AUROC and PRO (FPR up to 0.3) when the masks are there.\n"
    "--normal-class K on a labelled dataset (IDX, CIFAR-10, class folders) prints the\n"
    "one-class AUROC: class K normal, the rest anomalous. Class-conditional models\n"
    "reconstruct with label K, else with their 'no class' label.\n"
    "\n"
    "options:\n";

static const dc_cli cli = {"anomaly", usage_line, help_intro, options, N_OPTIONS};

/* ---- the run ---- */

/* One term of the score: a kind at one level. An image's score is the sum
 * over terms of weight * (term score - mean); its map the sum of weight *
 * term map. */
typedef enum { TERM_RECON, TERM_FEAT, TERM_EPS, TERM_COMPLEXITY, TERM_GEO, TERM_KNN, N_KINDS } term_kind;
static const char *const term_names[] = {"recon", "feat", "eps", "complexity", "geo", "knn"};
_Static_assert(sizeof term_names / sizeof *term_names == N_KINDS, "a name per kind");

/* complexity, geo and knn score whole images: no level, no map (they come
 * last in term_kind; make_terms adds them in that order too). */
static bool whole_image(term_kind kind) { return kind >= TERM_COMPLEXITY; }

typedef struct term {
    term_kind kind;
    double level;        /* recon, feat: the strength; eps: the timestep as a fraction; else 0 */
    double sign;         /* 1; complexity: -(--complexity-weight), as it is subtracted; knn: --knn-weight */
    double mean, weight; /* 0 and sign / terms; with --reference, the reference's mean and sign / (std levels) */
} term;

/* Images scored together: the test images or the reference. */
typedef struct image_set {
    int64_t n;
    const float *px;  /* [n, per] */
    uint64_t stream;  /* image j's draws are streams stream + j * ensemble + e */
    float *maps;      /* [n, hw] added to; NULL: not kept */
    double *terms;    /* [n, n_terms] each term's score */
} image_set;

typedef struct run {
    anomaly_options o;
    dc_model model;
    dc_sampler sampler;
    dc_ctx ctx;
    bool ctx_ready, tty;
    term terms[MAX_TERMS];
    int n_terms;
    int h, w, c;
    int64_t per, hw;
    int32_t cond_label; /* the label reconstructed with; -1: unconditional model */
    int normal_class;   /* --normal-class's index; -1 */
    char *images_path;  /* --images, or LABELS/test */
    dc_dataset_items items;
    /* the images scored, [n] */
    int64_t n;
    int64_t *item;     /* the item each came from */
    float *px;         /* [n, per] in [-1, 1] */
    uint8_t *label;    /* 1 anomalous; NULL without labels */
    uint8_t *masks;    /* [n, hw] ground truth; NULL unless every anomalous image has one */
    float *maps;       /* [n, hw] */
    double *scores;
    double *term_scores; /* [n, n_terms] */
    /* scratch for a batch of b images, b * ensemble rows */
    float *recon, *init, *noise, *pred; /* [b * ensemble, per] */
    float *tmap;       /* [b, hw] one term's maps */
    double *values;    /* [b] one term's image scores */
    float *ref_px;     /* [ref_n, per] the --reference images */
    int64_t ref_n;
    /* [bank_n, per] the reference's other normal images: geo learns from them, knn measures to them */
    float *bank_px;
    int64_t bank_n;
    dc_geo geo;        /* geo's classifier, trained on them */
    double recon_level; /* the strength recon holds; 0: none */
    int32_t *labels;   /* [b * ensemble]; NULL unconditional */
    int64_t notes, skipped;
} run;

/* A list of numbers in (lo, hi] (or [lo, hi) when lo_closed) into out[*n]. */
static int parse_list(const char *opt, const char *text, double lo, double hi, bool lo_closed, double *out,
                      int *n) {
    const char *p = text;
    for (*n = 0;;) {
        char *end;
        errno = 0;
        double x = strtod(p, &end);
        bool in = lo_closed ? x >= lo && x < hi : x > lo && x <= hi;
        if (end == p || (*end && *end != ',') || errno || !in)
            return dc_fail("--%s '%s': expected numbers in %c%g, %g%c, comma-separated", opt, text,
                           lo_closed ? '[' : '(', lo, hi, lo_closed ? ')' : ']');
        if (*n == MAX_STRENGTHS)
            return dc_fail("--%s '%s': at most %d values", opt, text, MAX_STRENGTHS);
        out[(*n)++] = x;
        if (!*end)
            return 0;
        p = end + 1;
    }
}

/* --score's kinds; each bit of *kinds one term_kind. */
static int parse_kinds(const char *text, unsigned *kinds) {
    *kinds = 0;
    for (const char *p = text;;) {
        size_t len = strcspn(p, ",");
        int k = 0;
        while (k < N_KINDS && (strlen(term_names[k]) != len || strncmp(p, term_names[k], len)))
            k++;
        if (k == N_KINDS)
            return dc_fail("--score '%s': '%.*s' is not recon, feat, eps, complexity, geo or knn", text, (int)len, p);
        *kinds |= 1u << k;
        if (!p[len])
            return 0;
        p += len + 1;
    }
}

/* The terms: per strength recon then feat (so both share one reconstruction),
 * then eps per timestep, then complexity, geo and knn, once each. */
static int make_terms(run *r) {
    double strengths[MAX_STRENGTHS], steps[MAX_STRENGTHS];
    int ns = 0, nt = 0;
    unsigned kinds;
    if (parse_kinds(r->o.score, &kinds) || parse_list("strength", r->o.strength, 0, 1, false, strengths, &ns) ||
        parse_list("timesteps", r->o.timesteps, 0, 1, true, steps, &nt))
        return -1;
    for (int i = 0; i < ns; i++)
        for (int k = TERM_RECON; k <= TERM_FEAT; k++)
            if (kinds >> k & 1)
                r->terms[r->n_terms++] = (term){.kind = k, .level = strengths[i]};
    for (int i = 0; (kinds >> TERM_EPS & 1) && i < nt; i++)
        r->terms[r->n_terms++] = (term){.kind = TERM_EPS, .level = steps[i]};
    for (int k = TERM_COMPLEXITY; k < N_KINDS; k++)
        if (kinds >> k & 1)
            r->terms[r->n_terms++] = (term){.kind = k};
    for (int i = 0; i < r->n_terms; i++) {
        term_kind k = r->terms[i].kind;
        r->terms[i].sign = k == TERM_COMPLEXITY ? -r->o.complexity_weight : k == TERM_KNN ? r->o.knn_weight : 1;
        r->terms[i].weight = r->terms[i].sign / r->n_terms;
    }
    return 0;
}

/* "eps@0.5"; "geo" for the kinds without a level. */
static const char *term_label(const term *tm, char *buf, size_t n) {
    if (whole_image(tm->kind))
        return term_names[tm->kind];
    snprintf(buf, n, "%s@%g", term_names[tm->kind], tm->level);
    return buf;
}

static bool has_term(const run *r, term_kind kind) {
    for (int i = 0; i < r->n_terms; i++)
        if (r->terms[i].kind == kind)
            return true;
    return false;
}

static int check_options(run *r) {
    const anomaly_options *o = &r->o;
    if (strcmp(o->reduce, "max") && strcmp(o->reduce, "topk-mean") && strcmp(o->reduce, "mean"))
        return dc_fail("--reduce: '%s' is not max, topk-mean or mean", o->reduce);
    if (o->labels && o->normal_class)
        return dc_fail("--labels and --normal-class: give one (an MVTec tree, or a labelled dataset)");
    if (make_terms(r))
        return -1;
    if (has_term(r, TERM_GEO) && !o->reference)
        return dc_fail("--score geo needs --reference DIR: the normal images its classifier learns from");
    if (has_term(r, TERM_KNN) && !o->reference)
        return dc_fail("--score knn needs --reference DIR: the normal images it measures distances to");
    r->images_path = o->images ? strdup(o->images) : dc_path_join(o->labels, "test");
    return r->images_path ? 0 : dc_fail("out of memory");
}

/* The DDIM sampler of the model's schedule, checked against every strength. */
static int make_sampler(run *r) {
    if (dc_model_sampler(&r->model, "ddim", r->o.num_inference_steps, NULL, -1, &r->sampler))
        return -1;
    for (int i = 0; i < r->n_terms; i++) {
        int start;
        if (r->terms[i].kind <= TERM_FEAT && dc_sampler_img2img_start(&r->sampler, r->terms[i].level, &start))
            return dc_fail_prefix("--strength");
    }
    return 0;
}

/* The model's image size and channels, which every image is brought to. */
static int model_shape(run *r) {
    const dc_unet_config *c = &r->model.cfg;
    r->h = c->sample_size[0], r->w = c->sample_size[1], r->c = c->in_channels;
    if (r->h < 1 || r->w < 1)
        return dc_fail("%s: the model's config has no sample_size", r->o.model);
    if (r->c != 1 && r->c != 3)
        return dc_fail("%s: the model takes images of %d channels; only 1 (gray) or 3 (RGB) are supported",
                       r->o.model, r->c);
    r->hw = (int64_t)r->h * r->w;
    r->per = r->hw * r->c;
    return 0;
}

/* --normal-class as a class index of the dataset, and the label to reconstruct with. */
static int resolve_classes(run *r) {
    const dc_dataset_items *it = &r->items;
    int null_class = dc_unet_null_class(&r->model.cfg);
    r->normal_class = -1;
    const char *k = r->o.normal_class;
    if (k && (r->normal_class = dc_class_index(it->class_names, it->num_classes, k, strlen(k))) < 0)
        return dc_fail_prefix("--normal-class");
    if (null_class >= 0 && r->normal_class >= null_class)
        return dc_fail("--normal-class %d: the model's labels are 0..%d", r->normal_class, null_class - 1);
    r->cond_label = null_class < 0 ? -1 : r->normal_class >= 0 ? r->normal_class : null_class;
    return 0;
}

static int setup(run *r) {
    int device;
    if (check_options(r) || dc_cli_resolve_device(r->o.device, r->o.mixed_precision, &device) ||
        dc_model_load_on(&r->model, r->o.model, !r->o.no_ema, r->o.variant, device) || model_shape(r) || make_sampler(r))
        return -1;
    if (dc_dataset_items_open(&r->items, r->images_path, r->o.split))
        return dc_fail_prefix("--images");
    if (resolve_classes(r) || dc_model_ctx_init(r->model.device, &r->ctx, ACTIVATION_BYTES))
        return -1;
    r->ctx_ready = true;
    dc_set_grad_enabled(&r->ctx, false);
    r->ctx.training = false;
    r->tty = isatty(fileno(stderr));
    return 0;
}

/* ---- the images ---- */

/* The name of the folder image j lies in (good, or the defect's), into buf; "" when none. */
static const char *defect_of(const run *r, int64_t j, char *buf, size_t n) {
    char name_buf[64], path[4096];
    const char *name = dc_dataset_item_name(&r->items, r->item[j], name_buf, sizeof name_buf);
    if (!strcmp(r->items.kind, "image file"))
        snprintf(path, sizeof path, "%s", r->items.root);
    else
        snprintf(path, sizeof path, "%s/%s", r->items.root, name);
    const char *slash = strrchr(path, '/'), *start = slash;
    while (start && start > path && start[-1] != '/')
        start--;
    snprintf(buf, n, "%.*s", slash ? (int)(slash - start) : 0, slash ? start : "");
    return buf;
}

/* LABELS/ground_truth/<defect>/<stem>_mask.png of an item. */
static char *mask_path(const run *r, const char *name, const char *defect) {
    const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
    const char *dot = strrchr(base, '.');
    int stem = dot ? (int)(dot - base) : (int)strlen(base);
    char rel[4096];
    snprintf(rel, sizeof rel, "ground_truth/%s/%.*s_mask.png", defect, stem, base);
    return dc_path_join(r->o.labels, rel);
}

/* Image j's mask, brought to the model's size and thresholded; 1 when it has none. */
static int load_mask(run *r, int64_t j, const char *name, const char *defect) {
    char *path = mask_path(r, name, defect);
    if (!path)
        return -1;
    struct stat st;
    int rc = stat(path, &st) == 0 ? 0 : 1;
    dc_image img = {0}, fit = {0};
    char note[128];
    if (!rc && (dc_image_load(&img, path) || dc_image_fit(&fit, &img, 1, r->w, r->h, note, sizeof note)))
        rc = -1;
    for (int64_t p = 0; !rc && p < r->hw; p++)
        r->masks[j * r->hw + p] = fit.px[p] >= 128;
    dc_image_free(&img);
    dc_image_free(&fit);
    free(path);
    return rc;
}

/* Image j's label (and mask) from its name (--labels) or its class (--normal-class). */
static int label_image(run *r, int64_t j, const char *name) {
    if (r->normal_class >= 0) {
        int32_t k = r->items.labels[r->item[j]];
        r->label[j] = k != r->normal_class;
        return k < 0 ? dc_fail("%s: the image has no class label", name) : 0;
    }
    char defect[256];
    if (!defect_of(r, j, defect, sizeof defect)[0])
        return dc_fail("%s: --labels needs every image in a folder: good, or the defect's name", name);
    r->label[j] = strcmp(defect, "good") != 0;
    if (!r->masks)
        return 0;
    memset(r->masks + j * r->hw, 0, (size_t)r->hw);
    int rc = r->label[j] ? load_mask(r, j, name, defect) : 0;
    if (rc == 1) { /* a defect without its mask: no pixel measures */
        free(r->masks);
        r->masks = NULL;
        fprintf(stderr, "diffc: note: %s: no mask in %s/ground_truth; the pixel measures are left out\n",
                name, r->o.labels);
    }
    return rc < 0 ? -1 : 0;
}

/* Decode item i of `items` into dst [per] at the model's size; 1 when skipped. */
static int decode(run *r, const dc_dataset_items *items, int64_t i, float *dst) {
    char buf[64], note[128];
    const char *name = dc_dataset_item_name(items, i, buf, sizeof buf);
    dc_image img = {0}, fit = {0};
    int rc = dc_dataset_item_image(items, i, &img);
    if (rc == 1) {
        fprintf(stderr, "diffc: warning: skipped: %s: %s\n", name, dc_error());
        r->skipped++;
    }
    if (!rc && dc_image_fit(&fit, &img, r->c, r->w, r->h, note, sizeof note))
        rc = dc_fail_prefix(name);
    if (!rc && note[0] && r->notes++ < MAX_NOTES)
        fprintf(stderr, "diffc: note: %s: %s for the model\n", name, note);
    if (!rc)
        dc_u8_to_float(dst, fit.px, (size_t)r->per);
    dc_image_free(&img);
    dc_image_free(&fit);
    return rc;
}

/* Decode item i into image slot j, at the model's size; 1 when skipped. */
static int load_image(run *r, int64_t i, int64_t j) {
    int rc = decode(r, &r->items, i, r->px + j * r->per);
    if (rc)
        return rc;
    char buf[64];
    r->item[j] = i;
    return r->label && label_image(r, j, dc_dataset_item_name(&r->items, i, buf, sizeof buf)) ? -1 : 0;
}

static int alloc_images(run *r, int64_t n) {
    bool eval = r->o.labels || r->normal_class >= 0;
    int64_t e = r->o.ensemble, b = r->o.batch_size, rows = b * e;
    size_t scratch = (size_t)(rows * r->per) * sizeof(float);
    r->item = malloc((size_t)n * sizeof *r->item);
    r->px = malloc((size_t)(n * r->per) * sizeof *r->px);
    r->label = eval ? malloc((size_t)n) : NULL;
    r->masks = r->o.labels ? malloc((size_t)(n * r->hw)) : NULL;
    r->maps = calloc((size_t)(n * r->hw), sizeof *r->maps);
    r->scores = malloc((size_t)n * sizeof *r->scores);
    r->term_scores = malloc((size_t)(n * r->n_terms) * sizeof *r->term_scores);
    r->recon = malloc(scratch);
    r->init = malloc(scratch);
    r->noise = malloc(scratch);
    r->pred = malloc(scratch);
    r->tmap = malloc((size_t)(b * r->hw) * sizeof *r->tmap);
    r->values = malloc((size_t)b * sizeof *r->values);
    r->labels = r->cond_label >= 0 ? malloc((size_t)rows * sizeof *r->labels) : NULL;
    if (!r->item || !r->px || (eval && !r->label) || (r->o.labels && !r->masks) || !r->maps || !r->scores ||
        !r->term_scores || !r->recon || !r->init || !r->noise || !r->pred || !r->tmap || !r->values ||
        (r->cond_label >= 0 && !r->labels))
        return dc_fail("out of memory for %" PRId64 " images of %dx%d", n, r->w, r->h);
    for (int64_t k = 0; r->labels && k < rows; k++)
        r->labels[k] = r->cond_label;
    return 0;
}

/* Every item, or --max-images of them evenly spaced; unreadable ones skipped. */
static int load_images(run *r) {
    int64_t count = r->items.count, n = r->o.max_images && r->o.max_images < count ? r->o.max_images : count;
    if (alloc_images(r, n))
        return -1;
    for (int64_t j = 0; j < n; j++) {
        int rc = load_image(r, (int64_t)((double)j * (double)count / (double)n), r->n);
        if (rc < 0)
            return -1;
        r->n += rc == 0;
    }
    if (r->notes > MAX_NOTES)
        fprintf(stderr, "diffc: note: %" PRId64 " more images converted or resized likewise\n",
                r->notes - MAX_NOTES);
    if (r->n == 0)
        return dc_fail("%s: no image could be read (%" PRId64 " skipped)", r->images_path, r->skipped);
    return 0;
}

/* ---- scoring ---- */

/* Add the squared error of y [b * ensemble, per] against x to the b images'
 * term maps; x holds a row per image, or per row of y when x_per_row. */
static void add_errors(run *r, const float *x0, bool x_per_row, int64_t b, const float *y) {
    int64_t e = r->o.ensemble;
    for (int64_t k = 0; k < b * e; k++) {
        const float *x = x0 + (x_per_row ? k : k / e) * r->per, *yk = y + k * r->per;
        float *map = r->tmap + (k / e) * r->hw;
        for (int64_t p = 0; p < r->hw; p++) {
            double err = 0;
            for (int ch = 0; ch < r->c; ch++) {
                double d = (double)x[p * r->c + ch] - yk[p * r->c + ch];
                err += d * d;
            }
            map[p] += (float)(err / (r->c * e));
        }
    }
}

/* The model's output for x [n, per] at timestep t, into out [n, per]; with
 * features, each down block's output too (features[i] on the context's device). */
static int forward(run *r, const float *x, int64_t n, float t, float *out, dc_tensor **features) {
    dc_ctx *ctx = &r->ctx;
    dc_ctx_reset(ctx);
    dc_tensor *xt = dc_new(ctx, DC_F32, DC_SHAPE(n, r->h, r->w, r->c));
    dc_tensor *tt = dc_from_host(ctx, DC_F32, DC_SHAPE(1), &t);
    dc_tensor *y = r->labels ? dc_from_host(ctx, DC_I32, DC_SHAPE(n), r->labels) : NULL;
    if (!xt || !tt || (r->labels && !y) ||
        dc_memcpy(xt->data, ctx->device, x, DC_CPU, (size_t)(n * r->per) * sizeof *x))
        return -1;
    dc_tensor *pred = dc_unet_forward_features(ctx, &r->model.unet, xt, tt, y, features);
    if (!pred)
        return -1;
    if (pred->numel != n * r->per)
        return dc_fail("the model predicts %lld values per image, expected %lld", (long long)(pred->numel / n),
                       (long long)r->per);
    return out ? dc_memcpy(out, DC_CPU, pred->data, ctx->device, (size_t)pred->numel * sizeof *out) : 0;
}

/* The training timestep of a fraction of the schedule. */
static int timestep_of(const run *r, double fraction) {
    int64_t T = r->model.sched.T, t = (int64_t)(fraction * (double)T);
    return (int)(t < T ? t : T - 1);
}

/* Every down block's features of n images at the feature timestep, copied
 * to the host: f[i] [n, H_i, W_i, C_i] (malloc'ed), their shapes in dims[i]. */
static int host_features(run *r, const float *x, int64_t n, float **f, int (*dims)[3]) {
    dc_tensor *dev[DC_UNET_MAX_LEVELS];
    if (forward(r, x, n, (float)timestep_of(r, r->o.feature_timestep), NULL, dev))
        return -1;
    for (int i = 0; i < r->model.cfg.levels; i++) {
        for (int d = 0; d < 3; d++)
            dims[i][d] = (int)dev[i]->shape[d + 1];
        f[i] = malloc((size_t)dev[i]->numel * sizeof *f[i]);
        if (!f[i])
            return dc_fail("out of memory for the features");
        if (dc_memcpy(f[i], DC_CPU, dev[i]->data, r->ctx.device, (size_t)dev[i]->numel * sizeof *f[i]))
            return -1;
    }
    return 0;
}

/* Add the feature distance of the images and their reconstructions: per
 * block, 1 - cosine per location, spread over the pixels it covers;
 * averaged over the blocks. */
static int add_feature_distance(run *r, const float *px, int64_t b) {
    int64_t e = r->o.ensemble;
    int levels = r->model.cfg.levels, dims[DC_UNET_MAX_LEVELS][3];
    float *fx[DC_UNET_MAX_LEVELS] = {0}, *fy[DC_UNET_MAX_LEVELS] = {0};
    int rc = host_features(r, px, b, fx, dims) || host_features(r, r->recon, b * e, fy, dims) ? -1 : 0;
    double weight = 1.0 / ((double)e * levels);
    for (int i = 0; !rc && i < levels; i++) {
        int hl = dims[i][0], wl = dims[i][1], c = dims[i][2];
        int64_t size = (int64_t)hl * wl * c;
        for (int64_t k = 0; k < b * e; k++)
            dc_feature_distance_add(r->tmap + (k / e) * r->hw, r->h, r->w, fx[i] + (k / e) * size, fy[i] + k * size,
                                    hl, wl, c, weight);
    }
    for (int i = 0; i < levels; i++) {
        free(fx[i]);
        free(fy[i]);
    }
    return rc;
}

/* Add the noise-prediction error at timestep fraction `level` to the term
 * maps: x_t from each image's initial draw (the one its reconstruction noises
 * with), the squared error of the model's output against its training target. */
static int add_eps_errors(run *r, const image_set *s, int64_t first, int64_t b, double level) {
    int64_t e = r->o.ensemble, rows = b * e;
    int t = timestep_of(r, level);
    double acp = r->model.sched.alphas_cumprod[t], a = sqrt(acp), sd = sqrt(1 - acp);
    dc_sampler_noise(r->noise, rows, r->per, (uint64_t)r->o.seed, s->stream + (uint64_t)(first * e),
                     DC_SAMPLER_DRAW_INIT);
    for (int64_t q = 0; q < rows * r->per; q++)
        r->recon[q] = (float)(a * r->init[q] + sd * r->noise[q]);
    r->recon_level = 0; /* recon now holds x_t */
    if (forward(r, r->recon, rows, (float)t, r->pred, NULL))
        return -1;
    dc_prediction_type type = r->model.sched.config.prediction_type;
    for (int64_t q = 0; q < rows * r->per; q++) { /* the target, in place of the noise */
        double target = type == DC_PRED_EPSILON ? r->noise[q]
                        : type == DC_PRED_SAMPLE ? r->init[q]
                                                 : a * r->noise[q] - sd * r->init[q];
        r->noise[q] = (float)target;
    }
    add_errors(r, r->noise, true, b, r->pred);
    return 0;
}

/* The term's maps of images [first, first + b) of s, into r->tmap [b, hw]. */
static int term_maps(run *r, const image_set *s, int64_t first, int64_t b, const term *tm) {
    int64_t e = r->o.ensemble;
    memset(r->tmap, 0, (size_t)(b * r->hw) * sizeof *r->tmap);
    if (tm->kind == TERM_EPS)
        return add_eps_errors(r, s, first, b, tm->level);
    if (r->recon_level != tm->level) {
        dc_generate_request q = {.unet = &r->model.unet,
                                 .sampler = &r->sampler,
                                 .n = b * e,
                                 .batch = b * e,
                                 .h = r->h,
                                 .w = r->w,
                                 .labels = r->labels,
                                 .guidance_scale = 1.0f,
                                 .seed = (uint64_t)r->o.seed,
                                 .first_image = s->stream + (uint64_t)(first * e),
                                 .init = r->init,
                                 .strength = tm->level};
        if (dc_generate(&r->ctx, &q, r->recon))
            return -1;
        r->recon_level = tm->level;
    }
    const float *px = s->px + first * r->per;
    if (tm->kind == TERM_RECON) {
        add_errors(r, px, false, b, r->recon);
        return 0;
    }
    return add_feature_distance(r, px, b);
}

/* The pixels the image score averages. */
static int64_t top_k(const run *r) {
    return !strcmp(r->o.reduce, "max") ? 1 : !strcmp(r->o.reduce, "mean") ? r->hw : r->o.top_k;
}

/* A term without a map (complexity, geo, knn): the scores of images [first, first + b) of s. */
static int image_term(run *r, image_set *s, int64_t first, int64_t b, int ti) {
    const float *px = s->px + first * r->per;
    if (r->terms[ti].kind == TERM_GEO && dc_geo_score(&r->geo, px, b, r->values))
        return -1;
    if (r->terms[ti].kind == TERM_KNN) {
#pragma omp parallel for schedule(dynamic)
        for (int64_t j = 0; j < b; j++)
            r->values[j] = dc_knn_distance(r->bank_px, r->bank_n, px + j * r->per, r->per, (int)r->o.knn_k);
    }
    for (int64_t j = 0; r->terms[ti].kind == TERM_COMPLEXITY && j < b; j++)
        if (isnan(r->values[j] = dc_complexity_bits(px + j * r->per, r->per)))
            return dc_fail("out of memory for the compression");
    for (int64_t j = 0; j < b; j++)
        s->terms[(first + j) * r->n_terms + ti] = r->values[j];
    return 0;
}

/* Every term of images [first, first + b) of s: smoothed, reduced, added to the maps. */
static int score_batch(run *r, image_set *s, int64_t first, int64_t b) {
    int64_t e = r->o.ensemble, k = top_k(r);
    for (int64_t q = 0; q < b * e; q++)
        memcpy(r->init + q * r->per, s->px + (first + q / e) * r->per, (size_t)r->per * sizeof *r->init);
    r->recon_level = 0;
    for (int ti = 0; ti < r->n_terms; ti++) {
        if (whole_image(r->terms[ti].kind)) {
            if (image_term(r, s, first, b, ti))
                return -1;
            continue;
        }
        if (term_maps(r, s, first, b, &r->terms[ti]))
            return -1;
        for (int64_t j = 0; j < b; j++) {
            float *map = r->tmap + j * r->hw;
            if (dc_gaussian_blur(map, r->h, r->w, r->o.sigma))
                return -1;
            double v = dc_topk_mean(map, r->hw, k);
            if (isnan(v))
                return dc_fail("out of memory for the top-%" PRId64 " pixels", k);
            s->terms[(first + j) * r->n_terms + ti] = v;
            for (int64_t p = 0; s->maps && p < r->hw; p++)
                s->maps[(first + j) * r->hw + p] += (float)(r->terms[ti].weight * map[p]);
        }
    }
    return 0;
}

static int score_set(run *r, image_set *s, const char *what) {
    double t0 = dc_seconds();
    int64_t bs = r->o.batch_size;
    for (int64_t first = 0; first < s->n; first += bs) {
        int64_t b = s->n - first < bs ? s->n - first : bs;
        if (score_batch(r, s, first, b))
            return -1;
        double sec = dc_seconds() - t0;
        fprintf(stderr, r->tty ? "\rscored %" PRId64 "/%" PRId64 " %s, %.1f images/s   "
                               : "scored %" PRId64 "/%" PRId64 " %s, %.1f images/s\n",
                first + b, s->n, what, (double)(first + b) / sec);
    }
    if (r->tty)
        fputc('\n', stderr);
    return 0;
}

/* The reference's items: of the normal class when it has labels and there is one. */
static int64_t reference_items(const run *r, const dc_dataset_items *it, int64_t *out) {
    int64_t m = 0;
    for (int64_t i = 0; i < it->count; i++)
        if (r->normal_class < 0 || !it->num_classes || it->labels[i] == r->normal_class)
            out[m++] = i;
    return m;
}

/* The terms of tm's kind (its levels). */
static int kind_count(const run *r, const term *tm) {
    int n = 0;
    for (int i = 0; i < r->n_terms; i++)
        n += r->terms[i].kind == tm->kind;
    return n;
}

/* Each term's mean and spread over the reference images: weight 1 / std,
 * shared by the levels of a kind (so eps at three timesteps weighs as much
 * as one whole-image term, not three). */
static int set_weights(run *r, const image_set *s) {
    for (int ti = 0; ti < r->n_terms; ti++) {
        term *tm = &r->terms[ti];
        double sum = 0, sq = 0;
        for (int64_t j = 0; j < s->n; j++)
            sum += s->terms[j * r->n_terms + ti];
        tm->mean = sum / (double)s->n;
        for (int64_t j = 0; j < s->n; j++)
            sq += pow(s->terms[j * r->n_terms + ti] - tm->mean, 2);
        double sd = sqrt(sq / (double)(s->n - 1));
        char buf[64];
        if (!(sd > 0))
            return dc_fail("--reference: the %s term scores every reference image alike",
                           term_label(tm, buf, sizeof buf));
        tm->weight = tm->sign / (sd * kind_count(r, tm));
        fprintf(stderr, "reference: %s: mean %.6g, std %.6g\n", term_label(tm, buf, sizeof buf), tm->mean, sd);
    }
    return 0;
}

/* geo and knn: the m normal items idx of the reference set but those the
 * reference scores (in_ref), decoded into the bank. */
static int load_bank(run *r, const dc_dataset_items *it, const int64_t *idx, int64_t m, const bool *in_ref) {
    r->bank_px = malloc((size_t)(m * r->per + 1) * sizeof *r->bank_px);
    if (!r->bank_px)
        return dc_fail("out of memory for the reference's normal images");
    for (int64_t i = 0; i < m; i++) {
        int d = in_ref[i] ? 1 : decode(r, it, idx[i], r->bank_px + r->bank_n * r->per);
        if (d < 0)
            return -1;
        r->bank_n += d == 0;
    }
    if (r->bank_n < 1)
        return dc_fail("--score geo, knn: the --reference has no normal image beside the %" PRId64 " it scores",
                       r->ref_n);
    return 0;
}

/* geo: the classifier trained on the bank. */
static int train_geo(run *r) {
    double t0 = dc_seconds();
    if (dc_geo_train(&r->geo, r->bank_px, r->bank_n, r->h, r->w, r->c, r->o.geo_steps, (uint64_t)r->o.seed))
        return -1;
    fprintf(stderr, "geo: trained the transform classifier on %" PRId64 " normal images, %" PRId64 " steps, %.0f s\n",
            r->bank_n, r->o.geo_steps, dc_seconds() - t0);
    return 0;
}

/* --reference: up to --reference-images normal images, evenly spaced,
 * decoded; with geo or knn, the others too (the bank), and geo's classifier
 * trained on them. */
static int load_reference(run *r) {
    dc_dataset_items it = {0};
    if (dc_dataset_items_open(&it, r->o.reference, r->o.reference_split))
        return dc_fail_prefix("--reference");
    int64_t *idx = malloc((size_t)it.count * sizeof *idx), m = idx ? reference_items(r, &it, idx) : 0;
    int64_t n = m < r->o.reference_images ? m : r->o.reference_images;
    r->ref_px = malloc((size_t)(n * r->per + 1) * sizeof *r->ref_px);
    bool *in_ref = calloc((size_t)m + 1, 1);
    int rc = !idx || !r->ref_px || !in_ref ? dc_fail("out of memory for the reference") : 0;
    for (int64_t j = 0; !rc && j < n; j++) {
        int64_t i = (int64_t)((double)j * (double)m / (double)n);
        int d = decode(r, &it, idx[i], r->ref_px + r->ref_n * r->per);
        rc = d < 0 ? -1 : 0;
        r->ref_n += d == 0;
        in_ref[i] = true;
    }
    if (!rc && r->ref_n < 2)
        rc = dc_fail("--reference %s: %" PRId64 " readable images%s; at least 2 are needed", r->o.reference, r->ref_n,
                     r->normal_class >= 0 && it.num_classes ? " of the normal class" : "");
    if (!rc && (has_term(r, TERM_GEO) || has_term(r, TERM_KNN)))
        rc = load_bank(r, &it, idx, m, in_ref) || (has_term(r, TERM_GEO) && train_geo(r)) ? -1 : 0;
    free(in_ref);
    free(idx);
    dc_dataset_items_close(&it);
    return rc;
}

/* Score the reference images for the terms' weights. */
static int normalise(run *r) {
    double *terms = malloc((size_t)(r->ref_n * r->n_terms) * sizeof *terms);
    image_set s = {.n = r->ref_n, .px = r->ref_px, .stream = REFERENCE_STREAM, .terms = terms};
    int rc = !terms ? dc_fail("out of memory for the reference") : score_set(r, &s, "reference images") ||
                                                                       set_weights(r, &s) ? -1 : 0;
    free(terms);
    return rc;
}

/* The test images' scores: each term's weighted departure from its mean. */
static int score_all(run *r) {
    image_set s = {.n = r->n, .px = r->px, .maps = r->maps, .terms = r->term_scores};
    if (score_set(r, &s, "images"))
        return -1;
    for (int64_t j = 0; j < r->n; j++) {
        r->scores[j] = 0;
        for (int ti = 0; ti < r->n_terms; ti++)
            r->scores[j] += r->terms[ti].weight * (r->term_scores[j * r->n_terms + ti] - r->terms[ti].mean);
    }
    return 0;
}

/* ---- output ---- */

/* "good/000.png" -> "good_000": a file name for the item's heatmaps. */
static void flat_name(char *dst, size_t n, const char *name) {
    snprintf(dst, n, "%s", name);
    char *dot = strrchr(dst, '.');
    if (dot && !strchr(dot, '/'))
        *dot = '\0';
    for (char *p = dst; *p; p++)
        if (*p == '/' || *p == ' ')
            *p = '_';
}

static const char *label_text(const run *r, int64_t j, char *buf, size_t n) {
    if (r->normal_class >= 0 || (!r->o.labels && r->items.num_classes))
        return r->items.labels[r->item[j]] >= 0 ? r->items.class_names[r->items.labels[r->item[j]]] : "";
    if (r->o.labels)
        return defect_of(r, j, buf, n);
    return "";
}

/* A CSV field: quoted, with quotes doubled, when it holds a comma or a quote. */
static void csv_field(FILE *f, const char *s) {
    if (!strpbrk(s, ",\"\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int write_csv(const run *r) {
    char *path = dc_path_join(r->o.output_dir, "scores.csv"), *text = NULL;
    size_t size = 0;
    FILE *f = path ? open_memstream(&text, &size) : NULL;
    if (!f) {
        free(path);
        return dc_fail("out of memory for scores.csv");
    }
    fprintf(f, "index,name,label,anomalous,score");
    for (int ti = 0; ti < r->n_terms; ti++) {
        char buf[64];
        fprintf(f, ",%s", term_label(&r->terms[ti], buf, sizeof buf));
    }
    fputc('\n', f);
    for (int64_t j = 0; j < r->n; j++) {
        char buf[64], lab[256];
        fprintf(f, "%" PRId64 ",", r->item[j]);
        csv_field(f, dc_dataset_item_name(&r->items, r->item[j], buf, sizeof buf));
        fputc(',', f);
        csv_field(f, label_text(r, j, lab, sizeof lab));
        if (r->label)
            fprintf(f, ",%d", r->label[j]);
        else
            fputc(',', f);
        fprintf(f, ",%.9g", r->scores[j]);
        for (int ti = 0; ti < r->n_terms; ti++)
            fprintf(f, ",%.9g", r->term_scores[j * r->n_terms + ti]);
        fputc('\n', f);
    }
    fclose(f);
    int rc = dc_write_file(path, text, size, true);
    free(text);
    free(path);
    return rc;
}

/* A colour map from dark blue through green to red, t in [0, 1]. */
static void heat_colour(double t, uint8_t *rgb) {
    double rr = 1.5 - fabs(4 * t - 3), gg = 1.5 - fabs(4 * t - 2), bb = 1.5 - fabs(4 * t - 1);
    const double ch[3] = {rr, gg, bb};
    for (int k = 0; k < 3; k++)
        rgb[k] = (uint8_t)lrint(255 * (ch[k] < 0 ? 0 : ch[k] > 1 ? 1 : ch[k]));
}

/* Image j's raw map (gray, scaled by `top`) and its overlay on the image. */
static int write_heatmaps(const run *r, int64_t j, const char *dir, double top) {
    dc_image raw = {0}, over = {0};
    int rc = dc_image_alloc(&raw, r->w, r->h, 1) || dc_image_alloc(&over, r->w, r->h, 3) ? -1 : 0;
    const float *map = r->maps + j * r->hw, *x = r->px + j * r->per;
    for (int64_t p = 0; !rc && p < r->hw; p++) {
        double t = top > 0 ? map[p] / top : 0, gray = 0;
        t = t > 1 ? 1 : t;
        raw.px[p] = (uint8_t)lrint(255 * t);
        for (int ch = 0; ch < r->c; ch++)
            gray += (x[p * r->c + ch] + 1) * 127.5 / r->c;
        uint8_t heat[3];
        heat_colour(t, heat);
        for (int k = 0; k < 3; k++)
            over.px[p * 3 + k] = (uint8_t)lrint(0.5 * gray + 0.5 * heat[k]);
    }
    char buf[64], flat[512], file[600];
    flat_name(flat, sizeof flat, dc_dataset_item_name(&r->items, r->item[j], buf, sizeof buf));
    for (int kind = 0; !rc && kind < 2; kind++) {
        snprintf(file, sizeof file, "%s/%s_%s.png", dir, flat, kind ? "overlay" : "raw");
        rc = dc_image_save_png(kind ? &over : &raw, file);
    }
    dc_image_free(&raw);
    dc_image_free(&over);
    return rc;
}

static int write_all_heatmaps(const run *r) {
    int64_t n = r->o.max_heatmaps < r->n ? r->o.max_heatmaps : r->n;
    double top = 0; /* one scale for every image, so their heat compares */
    for (int64_t p = 0; p < r->n * r->hw; p++)
        top = r->maps[p] > top ? r->maps[p] : top;
    char *dir = dc_path_join(r->o.output_dir, "heatmaps");
    int rc = dir && n ? dc_mkdirs(dir) : dir ? 0 : -1;
    for (int64_t j = 0; !rc && j < n; j++)
        rc = write_heatmaps(r, j, dir, top);
    free(dir);
    return rc;
}

/* ---- evaluation ---- */

typedef struct measures {
    double image_auroc, pixel_auroc, pro; /* NaN when not measured */
    int64_t anomalous;
} measures;

static int measure(const run *r, measures *m) {
    *m = (measures){NAN, NAN, NAN, 0};
    float *scores = malloc((size_t)r->n * sizeof *scores);
    if (!scores)
        return dc_fail("out of memory");
    for (int64_t j = 0; j < r->n; j++) {
        scores[j] = (float)r->scores[j];
        m->anomalous += r->label[j];
    }
    m->image_auroc = dc_auroc(scores, r->label, r->n);
    free(scores);
    if (r->masks && m->anomalous) {
        m->pixel_auroc = dc_auroc(r->maps, r->masks, r->n * r->hw);
        m->pro = dc_pro_auc(r->maps, r->masks, r->n, r->h, r->w, PRO_MAX_FPR);
    }
    return m->image_auroc < 0 || m->pixel_auroc < 0 || m->pro < 0 ? -1 : 0;
}

static void print_measures(const run *r, const measures *m) {
    int64_t pos = m->anomalous, neg = r->n - pos;
    if (r->normal_class >= 0)
        printf("one-class AUROC (normal class %d, %s): %.4f over %" PRId64 " images (%" PRId64 " normal, %" PRId64
               " anomalous)\n",
               r->normal_class, r->items.class_names[r->normal_class], m->image_auroc, r->n, neg, pos);
    else
        printf("image AUROC: %.4f over %" PRId64 " images (%" PRId64 " good, %" PRId64 " defective)\n",
               m->image_auroc, r->n, neg, pos);
    if (isnan(m->image_auroc))
        printf("  (AUROC needs both normal and anomalous images)\n");
    if (!isnan(m->pixel_auroc))
        printf("pixel AUROC: %.4f\nPRO (FPR <= %.1f): %.4f\n", m->pixel_auroc, PRO_MAX_FPR, m->pro);
}

static bool add_measure(cJSON *json, const char *key, double v) {
    return cJSON_AddItemToObject(json, key, isnan(v) ? cJSON_CreateNull() : cJSON_CreateNumber(v));
}

/* evaluation.json: the measures (null when not measured) and the counts. */
static int save_measures(const run *r, const measures *m) {
    cJSON *json = cJSON_CreateObject();
    bool ok = json && add_measure(json, "image_auroc", m->image_auroc) &&
              add_measure(json, "pixel_auroc", m->pixel_auroc) && add_measure(json, "pro", m->pro) &&
              add_measure(json, "images", (double)r->n) && add_measure(json, "anomalous", (double)m->anomalous);
    char *path = ok ? dc_path_join(r->o.output_dir, "evaluation.json") : NULL;
    int rc = !ok ? dc_fail("out of memory") : path ? dc_json_save(path, json) : -1;
    free(path);
    cJSON_Delete(json);
    return rc;
}

static int evaluate(const run *r) {
    measures m;
    if (measure(r, &m))
        return -1;
    print_measures(r, &m);
    return save_measures(r, &m);
}

static int finish(const run *r) {
    if (write_csv(r) || write_all_heatmaps(r) || (r->label && evaluate(r)))
        return -1;
    char reduce[64];
    if (strcmp(r->o.reduce, "topk-mean"))
        snprintf(reduce, sizeof reduce, "%s", r->o.reduce);
    else
        snprintf(reduce, sizeof reduce, "top-%" PRId64 " mean", r->o.top_k);
    printf("%" PRId64 " image%s scored (%s, terms", r->n, r->n == 1 ? "" : "s",
           r->model.ema ? "EMA weights" : "weights");
    for (int ti = 0; ti < r->n_terms; ti++) {
        char buf[64];
        printf(" %s", term_label(&r->terms[ti], buf, sizeof buf));
    }
    printf("%s, ensemble %" PRId64 ", %s, sigma %g; %" PRId64 " skipped): %s/scores.csv",
           r->o.reference ? ", z-scores on the reference" : "", r->o.ensemble, reduce, r->o.sigma, r->skipped,
           r->o.output_dir);
    if (r->o.max_heatmaps && r->n)
        printf(", heatmaps/");
    printf("%s\n", r->label ? ", evaluation.json" : "");
    return 0;
}

static void run_free(run *r) {
    if (r->ctx_ready)
        dc_ctx_free(&r->ctx);
    free(r->item);
    free(r->px);
    free(r->label);
    free(r->masks);
    free(r->maps);
    free(r->scores);
    free(r->term_scores);
    free(r->ref_px);
    free(r->bank_px);
    free(r->values);
    dc_geo_free(&r->geo);
    free(r->recon);
    free(r->init);
    free(r->noise);
    free(r->pred);
    free(r->tmap);
    free(r->labels);
    free(r->images_path);
    dc_dataset_items_close(&r->items);
    dc_sampler_free(&r->sampler);
    dc_model_free(&r->model);
}

int dc_cmd_anomaly(int argc, char **argv) {
    run r = {0};
    int rc = dc_cli_parse(&cli, &r.o, argc, argv);
    if (rc == DC_CLI_HELP) {
        dc_cli_help(&cli, stdout);
        return 0;
    }
    if (rc == DC_CLI_PARSED && !r.o.model)
        rc = dc_cli_usage_error(&cli, "%s", "anomaly needs --model DIR");
    if (rc == DC_CLI_PARSED && !r.o.images && !r.o.labels)
        rc = dc_cli_usage_error(&cli, "%s", "anomaly needs --images DIR|FILE (or --labels DIR)");
    if (rc == DC_CLI_USAGE)
        return 2;
    if (!rc)
        rc = setup(&r) || (r.o.reference && load_reference(&r)) || load_images(&r) ||
                     dc_dir_check_writable(r.o.output_dir) || (r.o.reference && normalise(&r)) || score_all(&r) ||
                     finish(&r)
                 ? -1
                 : 0;
    if (rc) {
        fprintf(stderr, "diffc: error: %s\n", dc_error());
        rc = 1;
    }
    run_free(&r);
    return rc;
}
