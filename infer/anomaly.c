/*
 * `diffc anomaly`: anomaly detection by reconstruction.
 *
 * A model trained on normal images only pulls any image towards what it
 * knows: each image is noised to --strength (a fraction of the training
 * timesteps) and denoised with DDIM (dc_generate's img2img, SDEdit), and
 * where the reconstruction departs from the input is where the image is
 * unlike the training data. The anomaly map is the per-pixel squared error
 * (mean over channels), averaged over --ensemble noise draws and over every
 * strength of a list, then Gaussian-smoothed (--sigma); the image score is
 * its maximum, the mean of its --top-k largest pixels, or its mean (--reduce).
 *
 * --images is any dataset diffc reads (an image folder, IDX or CIFAR-10
 * files: split --split, the test split by default) or one image file; images
 * of another size or channel count are brought to the model's, with a note;
 * unreadable ones are skipped with a warning. Image i of the run draws noise
 * stream (seed, i * ensemble + e), so its score does not depend on the batch
 * size or on which other images are scored.
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
 * Output in --output-dir: scores.csv (index, name, label, score),
 * heatmaps/<name>_raw.png (the map, one scale for all images) and
 * heatmaps/<name>_overlay.png (the map in colour over the image) for the
 * first --max-heatmaps images, and evaluation.json with the measures printed.
 */
#define _GNU_SOURCE /* strdup */
#include "commands.h"

#include "autograd/clock.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/dataset.h"
#include "data/image.h"
#include "infer/anomaly_eval.h"
#include "infer/cli.h"
#include "infer/generate.h"
#include "infer/model.h"

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

#define MAX_STRENGTHS 16
#define MAX_NOTES 5   /* per-image notes printed before they are only counted */
#define PRO_MAX_FPR 0.3 /* MVTec AD's integration limit */
#define ACTIVATION_BYTES ((size_t)64 << 30) /* reserved lazily: only what a step touches is used */

/* ---- options ---- */

typedef struct anomaly_options {
    const char *model, *variant, *images, *output_dir, *strength, *reduce, *labels, *normal_class, *split, *device,
        *mixed_precision;
    int64_t ensemble, num_inference_steps, top_k, batch_size, seed, max_images, max_heatmaps;
    double sigma;
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
    {"strength", DC_CLI_STRING, FIELD(strength), "X[,X...]", "0.8", NULL, 0, 0, false,
     "noise level(s) in (0, 1], the fraction of the DDIM steps run; a list averages"},
    {"ensemble", DC_CLI_INT, FIELD(ensemble), "N", "4", NULL, 1, 1024, false,
     "noise draws per image and strength, maps averaged"},
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
    "Score images for anomalies with a model trained on normal images: each image is noised\n"
    "to --strength and denoised with DDIM; the anomaly map is the squared error between the\n"
    "image and its reconstruction (averaged over --ensemble draws and the strengths given),\n"
    "smoothed with a Gaussian of --sigma pixels; the image score is its mean, max or the\n"
    "mean of its top-k pixels. The defaults are what worked best on Fashion-MNIST.\n"
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

typedef struct run {
    anomaly_options o;
    dc_model model;
    dc_sampler sampler;
    dc_ctx ctx;
    bool ctx_ready, tty;
    double strengths[MAX_STRENGTHS];
    int n_strengths;
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
    float *recon;      /* [batch * ensemble, per] scratch */
    float *init;       /* [batch * ensemble, per] scratch */
    int32_t *labels;   /* [batch * ensemble] scratch; NULL unconditional */
    int64_t notes, skipped;
} run;

static int parse_strengths(run *r) {
    const char *p = r->o.strength;
    for (;;) {
        char *end;
        errno = 0;
        double s = strtod(p, &end);
        if (end == p || (*end && *end != ',') || errno || !(s > 0 && s <= 1))
            return dc_fail("--strength '%s': expected numbers in (0, 1], comma-separated", r->o.strength);
        if (r->n_strengths == MAX_STRENGTHS)
            return dc_fail("--strength '%s': at most %d strengths", r->o.strength, MAX_STRENGTHS);
        r->strengths[r->n_strengths++] = s;
        if (!*end)
            return 0;
        p = end + 1;
    }
}

static int check_options(run *r) {
    const anomaly_options *o = &r->o;
    if (strcmp(o->reduce, "max") && strcmp(o->reduce, "topk-mean") && strcmp(o->reduce, "mean"))
        return dc_fail("--reduce: '%s' is not max, topk-mean or mean", o->reduce);
    if (o->labels && o->normal_class)
        return dc_fail("--labels and --normal-class: give one (an MVTec tree, or a labelled dataset)");
    if (parse_strengths(r))
        return -1;
    r->images_path = o->images ? strdup(o->images) : dc_path_join(o->labels, "test");
    return r->images_path ? 0 : dc_fail("out of memory");
}

/* The DDIM sampler of the model's schedule, checked against every strength. */
static int make_sampler(run *r) {
    if (dc_model_sampler(&r->model, "ddim", r->o.num_inference_steps, NULL, -1, &r->sampler))
        return -1;
    for (int i = 0; i < r->n_strengths; i++) {
        int start;
        if (dc_sampler_img2img_start(&r->sampler, r->strengths[i], &start))
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
    if (resolve_classes(r))
        return -1;
    if (dc_dir_check_writable(r->o.output_dir) || dc_model_ctx_init(r->model.device, &r->ctx, ACTIVATION_BYTES))
        return -1;
    r->ctx_ready = true;
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

/* Decode item i into image slot j, at the model's size; 1 when skipped. */
static int load_image(run *r, int64_t i, int64_t j) {
    char buf[64], note[128];
    const char *name = dc_dataset_item_name(&r->items, i, buf, sizeof buf);
    dc_image img = {0}, fit = {0};
    int rc = dc_dataset_item_image(&r->items, i, &img);
    if (rc == 1) {
        fprintf(stderr, "diffc: warning: skipped: %s: %s\n", name, dc_error());
        r->skipped++;
    }
    if (!rc && dc_image_fit(&fit, &img, r->c, r->w, r->h, note, sizeof note))
        rc = dc_fail_prefix(name);
    if (!rc && note[0] && r->notes++ < MAX_NOTES)
        fprintf(stderr, "diffc: note: %s: %s for the model\n", name, note);
    if (!rc) {
        dc_u8_to_float(r->px + j * r->per, fit.px, (size_t)r->per);
        r->item[j] = i;
        if (r->label && label_image(r, j, name))
            rc = -1;
    }
    dc_image_free(&img);
    dc_image_free(&fit);
    return rc;
}

static int alloc_images(run *r, int64_t n) {
    bool eval = r->o.labels || r->normal_class >= 0;
    int64_t e = r->o.ensemble, b = r->o.batch_size < n ? r->o.batch_size : n;
    r->item = malloc((size_t)n * sizeof *r->item);
    r->px = malloc((size_t)(n * r->per) * sizeof *r->px);
    r->label = eval ? malloc((size_t)n) : NULL;
    r->masks = r->o.labels ? malloc((size_t)(n * r->hw)) : NULL;
    r->maps = calloc((size_t)(n * r->hw), sizeof *r->maps);
    r->scores = malloc((size_t)n * sizeof *r->scores);
    r->recon = malloc((size_t)(b * e * r->per) * sizeof *r->recon);
    r->init = malloc((size_t)(b * e * r->per) * sizeof *r->init);
    r->labels = r->cond_label >= 0 ? malloc((size_t)(b * e) * sizeof *r->labels) : NULL;
    if (!r->item || !r->px || (eval && !r->label) || (r->o.labels && !r->masks) || !r->maps || !r->scores ||
        !r->recon || !r->init || (r->cond_label >= 0 && !r->labels))
        return dc_fail("out of memory for %" PRId64 " images of %dx%d", n, r->w, r->h);
    for (int64_t k = 0; r->labels && k < b * e; k++)
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

/* Add the squared error of b images' reconstructions (ensemble each) to their maps. */
static void add_errors(run *r, int64_t first, int64_t b, double weight) {
    int64_t e = r->o.ensemble;
    for (int64_t k = 0; k < b * e; k++) {
        const float *x = r->px + (first + k / e) * r->per, *y = r->recon + k * r->per;
        float *map = r->maps + (first + k / e) * r->hw;
        for (int64_t p = 0; p < r->hw; p++) {
            double err = 0;
            for (int ch = 0; ch < r->c; ch++) {
                double d = (double)x[p * r->c + ch] - y[p * r->c + ch];
                err += d * d;
            }
            map[p] += (float)(weight * err / r->c);
        }
    }
}

/* Reconstruct images [first, first + b) at every strength and add to their maps. */
static int score_batch(run *r, int64_t first, int64_t b) {
    int64_t e = r->o.ensemble;
    for (int64_t k = 0; k < b * e; k++)
        memcpy(r->init + k * r->per, r->px + (first + k / e) * r->per, (size_t)r->per * sizeof *r->init);
    for (int s = 0; s < r->n_strengths; s++) {
        dc_generate_request q = {.unet = &r->model.unet,
                                 .sampler = &r->sampler,
                                 .n = b * e,
                                 .batch = b * e,
                                 .h = r->h,
                                 .w = r->w,
                                 .labels = r->labels,
                                 .guidance_scale = 1.0f,
                                 .seed = (uint64_t)r->o.seed,
                                 .first_image = (uint64_t)(first * e),
                                 .init = r->init,
                                 .strength = r->strengths[s]};
        if (dc_generate(&r->ctx, &q, r->recon))
            return -1;
        add_errors(r, first, b, 1.0 / (double)(e * r->n_strengths));
    }
    return 0;
}

/* The pixels the image score averages. */
static int64_t top_k(const run *r) {
    return !strcmp(r->o.reduce, "max") ? 1 : !strcmp(r->o.reduce, "mean") ? r->hw : r->o.top_k;
}

static int score_all(run *r) {
    double t0 = dc_seconds();
    int64_t bs = r->o.batch_size, k = top_k(r);
    for (int64_t first = 0; first < r->n; first += bs) {
        int64_t b = r->n - first < bs ? r->n - first : bs;
        if (score_batch(r, first, b))
            return -1;
        for (int64_t j = first; j < first + b; j++) {
            if (dc_gaussian_blur(r->maps + j * r->hw, r->h, r->w, r->o.sigma))
                return -1;
            r->scores[j] = dc_topk_mean(r->maps + j * r->hw, r->hw, k);
            if (isnan(r->scores[j]))
                return dc_fail("out of memory for the top-%" PRId64 " pixels", k);
        }
        double s = dc_seconds() - t0;
        fprintf(stderr, r->tty ? "\rscored %" PRId64 "/%" PRId64 " images, %.1f images/s   "
                               : "scored %" PRId64 "/%" PRId64 " images, %.1f images/s\n",
                first + b, r->n, (double)(first + b) / s);
    }
    if (r->tty)
        fputc('\n', stderr);
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
    fprintf(f, "index,name,label,anomalous,score\n");
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
        fprintf(f, ",%.9g\n", r->scores[j]);
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
    printf("%" PRId64 " image%s scored (%s, strength %s, ensemble %" PRId64 ", %s, sigma %g; %" PRId64
           " skipped): %s/scores.csv",
           r->n, r->n == 1 ? "" : "s", r->model.ema ? "EMA weights" : "weights", r->o.strength, r->o.ensemble,
           reduce, r->o.sigma, r->skipped, r->o.output_dir);
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
    free(r->recon);
    free(r->init);
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
        rc = setup(&r) || load_images(&r) || score_all(&r) || finish(&r) ? -1 : 0;
    if (rc) {
        fprintf(stderr, "diffc: error: %s\n", dc_error());
        rc = 1;
    }
    run_free(&r);
    return rc;
}
