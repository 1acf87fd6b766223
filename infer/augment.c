/*
 * `diffc augment`: synthetic training data from a trained model and its
 * dataset, and (--eval) whether it helps a classifier.
 *
 * Three kinds of image, written into OUTPUT-DIR/<class>/ (one folder per class
 * of the dataset, named after it; the root for an unlabelled dataset):
 *   <class>/gen_NNNNN.png      --per-class N class-conditional images per class
 *                              (classifier-free guidance --guidance-scale);
 *   <class>/unl_NNNNN.png      --unlabelled N images made without a class (an
 *                              unconditional model, or the null class), each in
 *                              the folder of the class a classifier of the real
 *                              images finds most probable (a pseudo-label);
 *   <class>/var_SSSSSS_KK.png  --variations K img2img (SDEdit) variations of every
 *                              real image S, at --strength, with its class.
 * manifest.jsonl lists each made image on one line: file, class, label,
 * source (the real image's index in the dataset, null for gen_ and unl_),
 * seed, stream, strength (null for gen_ and unl_), guidance, scheduler and
 * steps; an unl_ line adds pseudo (true) and confidence (the classifier's
 * probability of its class).
 *
 * unl_ images are how a generator trained on unlabelled images helps a
 * classifier of few labels: the generator needs no labels, and the classes
 * come only from the labelled images, through their classifier. --eval
 * labels them again with the classifier of each subset it trains on, so a
 * subset's real+synthetic run uses no label the subset lacks.
 *
 * The model is a UNet2DModel (its class label conditions gen_ and var_) or a
 * Stable Diffusion pipeline folder (pipeline/sd_pipeline.h; dispatched on
 * model_index.json), whose images are made from prompts: --prompt-template
 * with {class} (the class folder's name, underscores as spaces) and
 * {caption} (the real image's caption from the dataset's metadata.jsonl,
 * --caption-column). gen_ images are then text-to-image from the class's
 * prompt, var_ images img2img from the real image and its prompt (DA-Fusion).
 * The manifest adds prompt and negative_prompt, and metadata.jsonl (file_name,
 * text = the prompt, source = the real image's name) makes the output a
 * captioned dataset; it is rewritten from the manifest at the end of a run.
 *
 * --filter-threshold T scores every new image with a classifier of the real
 * images (augment_eval.c; trained, or --filter-classifier FILE) and writes it
 * only if its probability of the intended class is above T (an unl_ image:
 * of its pseudo-label; with --eval unl_ images are all written, and each
 * subset's classifier keeps those above T). A rejected image
 * is not written at all: a rejected/ folder inside OUTPUT-DIR would read as
 * one more class to `diffc train`, and the manifest keeps what it needs (its
 * line with kept false and its confidence) so a resumed run does not make it
 * again. The trained classifier is saved as filter_classifier.safetensors and
 * reused when the run resumes, so its decisions are the same.
 *
 * Every image has its own noise stream, named after what it is (gen_ i of
 * class c: c 2^32 + i; unl_ i: 2^51 + i; var_ k of image s: 2^52 + s 2^16 +
 * k), so it is the
 * same whatever else the run makes, whatever the batch and whether the run
 * was interrupted. That makes resuming exact: an image listed in the manifest
 * whose file exists is not made again; one made with other settings is an
 * error (another --output-dir, or the same settings). Images are written to a
 * temporary name and renamed, then their manifest line is appended with one
 * write; a partial last line (a killed run) is dropped when the next run
 * reads the manifest, as are lines whose file has gone (a rejected image's
 * line has no file and stays).
 */
#define _GNU_SOURCE /* strdup */
#include "commands.h"

#include "autograd/clock.h"
#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/metadata.h"
#include "infer/augment.h"
#include "infer/cli.h"
#include "infer/model.h"
#include "pipeline/generate.h"
#include "pipeline/sd_pipeline.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ACTIVATION_BYTES ((size_t)64 << 30) /* reserved lazily: only what a step touches is used */
#define MANIFEST "manifest.jsonl"
#define MAX_MANIFEST_BYTES ((size_t)1 << 31)
#define VARIATION_STREAMS ((uint64_t)1 << 52) /* below 2^53: JSON numbers hold them exactly */
#define UNLABELLED_STREAMS ((uint64_t)1 << 51) /* above every gen_ stream (classes < 2^19) */
#define MAX_VARIATIONS 65536
#define MAX_FILE 320
#define FILTER_CLASSIFIER "filter_classifier.safetensors"
#define DEFAULT_SCHEDULER "ddim"  /* a UNet2DModel's; a pipeline's is its own */
#define DEFAULT_TEMPLATE "a photo of a {class}"
#define CAPTION_TEMPLATE "{caption}" /* the default with --caption-column */
#define SD_STEPS 50     /* StableDiffusionPipeline's num_inference_steps */
#define SD_GUIDANCE 7.5 /* and guidance_scale */

/* ---- options ---- */

typedef struct augment_options {
    const char *model, *variant, *train_data_dir, *output_dir, *scheduler, *cache_dir, *device;
    const char *eval_data_dir, *real_fraction;
    const char *prompt_template, *caption_column, *negative_prompt, *filter_threshold, *filter_classifier;
    int64_t per_class, unlabelled, variations, num_inference_steps, batch_size, seed, resolution;
    const char *synthetic_prob;
    int64_t eval_steps, eval_epochs, eval_batch_size, eval_seeds;
    double strength, guidance_scale, eval_learning_rate;
    bool no_ema, eval, eval_augment, vary_eval_subsets;
    double threshold; /* --filter-threshold's value; NAN: no filter */
    double prob;      /* --synthetic-prob's; NAN: not given */
} augment_options;

#define FIELD(f) offsetof(augment_options, f)

static const dc_cli_option options[] = {
    {"model", DC_CLI_STRING, FIELD(model), "DIR", NULL, "required", 0, 0, false,
     "a diffusers pipeline or UNet folder"},
    {"variant", DC_CLI_STRING, FIELD(variant), "NAME", NULL, "default: the plain weights", 0, 0, false,
     "weights of this variant (diffusion_pytorch_model.NAME.safetensors, e.g. fp16)"},
    {"train-data-dir", DC_CLI_STRING, FIELD(train_data_dir), "DIR", NULL, "required", 0, 0, false,
     "the real images: an image folder, IDX or CIFAR-10 files (split train)"},
    {"output-dir", DC_CLI_STRING, FIELD(output_dir), "DIR", NULL, "required", 0, 0, false,
     "where the class folders and manifest.jsonl go"},
    {"per-class", DC_CLI_INT, FIELD(per_class), "N", "0", NULL, 0, 1e7, false,
     "class-conditional images per class (text-to-image: from the class's prompt, no init image)"},
    {"unlabelled", DC_CLI_INT, FIELD(unlabelled), "N", "0", NULL, 0, 1e7, false,
     "images made without a class, each given the class a classifier of the real images finds most probable "
     "(a pseudo-label; --eval labels them again with each subset's classifier)"},
    {"variations", DC_CLI_INT, FIELD(variations), "K", "0", NULL, 0, MAX_VARIATIONS, false,
     "img2img variations of every real image"},
    {"strength", DC_CLI_FLOAT, FIELD(strength), "X", "0.5", NULL, 0, 1, true,
     "variations: how much noise, in (0, 1]"},
    {"guidance-scale", DC_CLI_FLOAT, FIELD(guidance_scale), "X", NULL, "default: 1; text-to-image 7.5", 1, 1e6,
     false, "classifier-free guidance (1: none)"},
    {"scheduler", DC_CLI_STRING, FIELD(scheduler), "NAME", NULL, "default: ddim; text-to-image: the pipeline's", 0,
     0, false, "ddpm, ddim, dpm++2m (or pndm, euler, ... for a pipeline)"},
    {"num-inference-steps", DC_CLI_INT, FIELD(num_inference_steps), "N", NULL, "default: 50; ddpm 1000", 1,
     1e6, false, "denoising steps"},
    {"prompt-template", DC_CLI_STRING, FIELD(prompt_template), "TEXT", NULL,
     "default: \"" DEFAULT_TEMPLATE "\"; \"" CAPTION_TEMPLATE "\" with --caption-column", 0, 0, false,
     "text-to-image: each image's prompt; {class} is its class folder's name (_ as spaces), {caption} its "
     "real image's caption"},
    {"caption-column", DC_CLI_STRING, FIELD(caption_column), "NAME", NULL, "default: text", 0, 0, false,
     "text-to-image: the key of the captions in the dataset's metadata.jsonl (as diffc caption writes it)"},
    {"negative-prompt", DC_CLI_STRING, FIELD(negative_prompt), "TEXT", NULL, "default: none", 0, 0, false,
     "text-to-image: what guidance steers away from"},
    {"resolution", DC_CLI_INT, FIELD(resolution), "N", NULL, "default: the pipeline's sample size", 1, 65536, false,
     "text-to-image: the images' side (real images resized and centre-cropped to it)"},
    {"filter-threshold", DC_CLI_STRING, FIELD(filter_threshold), "T", NULL, "default: no filter", 0, 0, false,
     "keep an image only if a classifier of the real images gives its class a probability above T, in [0, 1]"},
    {"filter-classifier", DC_CLI_STRING, FIELD(filter_classifier), "FILE", NULL,
     "default: train one (the --eval-* options) and save it as OUTPUT-DIR/" FILTER_CLASSIFIER, 0, 0, false,
     "the filter's classifier, as a run saved it"},
    {"batch-size", DC_CLI_INT, FIELD(batch_size), "N", "16", NULL, 1, 65536, false, "images denoised together"},
    {"seed", DC_CLI_INT, FIELD(seed), "N", "0", NULL, 0, 9007199254740992.0, false, "the noise's seed"},
    {"cache-dir", DC_CLI_STRING, FIELD(cache_dir), "DIR", NULL, "default: $DIFFC_CACHE_DIR or ~/.cache/diffc",
     0, 0, false, "where decoded dataset caches are kept"},
    DC_CLI_NO_EMA_ROW,
    DC_CLI_DEVICE_ROW(" (generation; the --eval classifier runs on the CPU)"),
    {"eval", DC_CLI_FLAG, FIELD(eval), NULL, NULL, NULL, 0, 0, false,
     "then train a classifier on real and on real+synthetic images and compare test accuracy"},
    {"eval-data-dir", DC_CLI_STRING, FIELD(eval_data_dir), "DIR", NULL, "required with --eval", 0, 0, false,
     "the test images (split test of IDX and CIFAR-10 folders)"},
    {"real-fraction", DC_CLI_STRING, FIELD(real_fraction), "LIST", "0.01,0.1,1", NULL, 0, 0, false,
     "fractions of the real training images to evaluate with (class-balanced)"},
    {"eval-steps", DC_CLI_INT, FIELD(eval_steps), "N", "2000", NULL, 1, 1e8, false,
     "classifier training steps (--eval, and the filter's)"},
    {"eval-epochs", DC_CLI_INT, FIELD(eval_epochs), "N", NULL, "default: use --eval-steps", 1, 1e4, false,
     "classifier training passes over its training set instead"},
    {"eval-batch-size", DC_CLI_INT, FIELD(eval_batch_size), "N", "64", NULL, 1, 65536, false,
     "classifier batch size"},
    {"eval-learning-rate", DC_CLI_FLOAT, FIELD(eval_learning_rate), "X", "0.002", NULL, 0, 1, true,
     "classifier AdamW learning rate (cosine decay)"},
    {"eval-seeds", DC_CLI_INT, FIELD(eval_seeds), "N", "1", NULL, 1, 1000, false,
     "train every classifier with N seeds (--seed, +1, ...: subset, weights, batches); mean ± std"},
    {"eval-augment", DC_CLI_FLAG, FIELD(eval_augment), NULL, NULL, NULL, 0, 0, false,
     "standard augmentation (random flip left-right, shift up to 2 px): a real+std column, and real+synthetic with it"},
    {"vary-eval-subsets", DC_CLI_FLAG, FIELD(vary_eval_subsets), NULL, NULL, NULL, 0, 0, false,
     "--variations only of the real images --eval trains on (the largest --real-fraction, every seed)"},
    {"synthetic-prob", DC_CLI_STRING, FIELD(synthetic_prob), "P", NULL, "default: draw from the union", 0, 0, false,
     "real+synthetic: each batch image is a synthetic one with probability P"},
};
#define N_OPTIONS (sizeof options / sizeof options[0])

static const char usage_line[] =
    "usage: diffc augment --model DIR --train-data-dir DIR --output-dir DIR [--per-class N] [--unlabelled N]\n"
    "                     [--variations K]";

static const char help_intro[] =
    "\n"
    "Make synthetic training data with a trained model: OUTPUT-DIR/<class>/gen_NNNNN.png\n"
    "(--per-class N class-conditional images of every class), unl_NNNNN.png (--unlabelled\n"
    "N images made without a class, each in the folder of the class a classifier of the\n"
    "real images finds most probable: a pseudo-label) and var_SSSSSS_KK.png (--variations\n"
    "K img2img variations of every real image S at --strength), and manifest.jsonl with\n"
    "one line per image (file, class, label, source, seed, stream, strength, guidance,\n"
    "scheduler, steps; unl_: pseudo and confidence). Images are those of the model's size\n"
    "and channels; the real images are brought to them as training does.\n"
    "\n"
    "With a Stable Diffusion pipeline folder as --model, images come from prompts:\n"
    "--prompt-template (\"a photo of a {class}\"; {caption}: the real image's caption from\n"
    "the dataset's metadata.jsonl). gen_ images are text-to-image from the class's prompt,\n"
    "var_ images img2img from the real image (DA-Fusion); metadata.jsonl pairs every image\n"
    "with its prompt and source, so OUTPUT-DIR is a captioned dataset for diffc train.\n"
    "\n"
    "--filter-threshold T keeps only the images a classifier of the real images (trained\n"
    "as --eval trains, or --filter-classifier) gives their class a probability above T;\n"
    "rejected ones are not written (the manifest lists them with kept false).\n"
    "\n"
    "Resumable: a rerun makes only the images the manifest does not list; each image has\n"
    "its own noise stream, so an interrupted and resumed run writes the same files.\n"
    "\n"
    "--eval then trains a small classifier on a class-balanced --real-fraction of the real\n"
    "images, alone, with standard augmentation (--eval-augment), with the synthetic ones,\n"
    "and on the synthetic ones alone (CAS), and prints their test accuracies (on the split\n"
    "test of --eval-data-dir; mean ± std over --eval-seeds). unl_ images are labelled again\n"
    "by each subset's own classifier (real+std), and kept above --filter-threshold, so they\n"
    "bring no label the subset lacks. First it judges the synthetic images with a\n"
    "classifier of all the real ones: the Fréchet distance of its features to the test\n"
    "images', by class, and the classes it gives them.\n"
    "\n"
    "options:\n";

static const dc_cli cli = {"augment", usage_line, help_intro, options, N_OPTIONS};

/* A probability, or NAN for an option not given. */
static int parse_probability(const char *option, const char *text, double *t) {
    *t = NAN;
    if (!text)
        return 0;
    char *end;
    errno = 0;
    *t = strtod(text, &end);
    if (end == text || *end || errno || !(*t >= 0 && *t <= 1))
        return dc_fail("--%s '%s': expected a probability in [0, 1]", option, text);
    return 0;
}

/* DC_CLI_PARSED, DC_CLI_HELP, DC_CLI_USAGE, or -1 after dc_fail for a bad value. */
static int parse_args(augment_options *ao, int argc, char **argv) {
    memset(ao, 0, sizeof *ao);
    int rc = dc_cli_parse(&cli, ao, argc, argv);
    if (rc)
        return rc;
    if (!ao->model || !ao->train_data_dir || !ao->output_dir)
        return dc_cli_usage_error(&cli, "%s", "augment needs --model DIR, --train-data-dir DIR and --output-dir DIR");
    if (ao->eval && !ao->eval_data_dir)
        return dc_cli_usage_error(&cli, "%s", "--eval needs --eval-data-dir DIR (the test images)");
    if (!ao->per_class && !ao->unlabelled && !ao->variations && !ao->eval)
        return dc_cli_usage_error(&cli, "%s",
                                  "nothing to do: give --per-class N, --unlabelled N, --variations K or --eval");
    if (ao->vary_eval_subsets && !ao->eval)
        return dc_cli_usage_error(&cli, "%s", "--vary-eval-subsets needs --eval");
    if (ao->filter_classifier && !ao->filter_threshold)
        return dc_cli_usage_error(&cli, "%s", "--filter-classifier needs --filter-threshold T");
    if (parse_probability("filter-threshold", ao->filter_threshold, &ao->threshold) ||
        parse_probability("synthetic-prob", ao->synthetic_prob, &ao->prob))
        return -1;
    double f[DC_AUGMENT_MAX_FRACTIONS];
    int n_f;
    return ao->eval ? dc_augment_parse_fractions(ao->real_fraction, f, &n_f) : DC_CLI_PARSED;
}

/* ---- the images to make ---- */

typedef struct job {
    char file[MAX_FILE]; /* relative to the output folder; a pseudo-labelled one's once it has its class */
    int32_t label;       /* of the real dataset; -1 unlabelled (or not yet pseudo-labelled) */
    int64_t source;      /* variations: the real image; -1 for gen_ and unl_ */
    uint64_t stream;
    bool pseudo;         /* unl_: made without a class, labelled by the classifier of the real images */
} job;

/* One manifest line as read back. */
typedef struct entry {
    char *file, *line; /* line: the text, without its newline */
    double seed, stream, strength, guidance, steps; /* strength NAN for gen_ */
    double threshold;                               /* NAN: made without a filter */
    const char *scheduler;
    const char *prompt, *negative; /* NULL: none (a UNet2DModel's image) */
    bool kept;                     /* false: rejected by the filter, no file */
    cJSON *json;
} entry;

typedef struct run {
    augment_options o;
    bool text;        /* o.model is a Stable Diffusion pipeline */
    dc_model model;   /* else this UNet2DModel */
    dc_sd_pipeline sd;
    const char *tmpl; /* text: the prompt template */
    char **class_prompts; /* text: [ds.num_classes] the gen_ images' prompts, or NULL without {class} */
    char **image_prompts; /* text: [ds.count] the var_ images' */
    dc_sampler sampler;
    dc_dataset ds;
    char **source_names; /* text: [ds.count] the real images' names, for metadata.jsonl */
    bool ds_open, ctx_ready;
    int device;
    dc_ctx ctx;
    int side, c, null_class; /* null_class -1: an unconditional model */
    char **class_dirs;       /* [ds.num_classes] folder names */
    job *jobs;
    int64_t n_jobs;
    entry *entries; /* the manifest's lines, sorted by file */
    int64_t n_entries;
    bool *done;     /* [n_jobs] */
    bool *kept;     /* [n_jobs] done and not rejected by the filter */
    int manifest_fd;
    bool tty;
    bool filtering, classifier_ready;
    dc_augment_classifier filter; /* the filter's and --eval's judge */
    dc_augment_train_options train; /* the filter's and --eval's classifiers */
    int64_t *n_kept, *n_rejected; /* [num_classes or 1] this run's images, by class */
} run;

/* The class's name made into one folder name: '/' and control characters become '_'. */
static char *folder_name(const char *name, int k) {
    char fallback[32];
    snprintf(fallback, sizeof fallback, "class_%d", k);
    bool unusable = !*name || !strcmp(name, ".") || !strcmp(name, "..");
    char *s = strdup(unusable ? fallback : name);
    if (!s) {
        dc_fail("out of memory");
        return NULL;
    }
    for (char *p = s; *p; p++)
        if (*p == '/' || (unsigned char)*p < 32)
            *p = '_';
    return s;
}

static int make_class_dirs(run *r) {
    int k = r->ds.num_classes;
    if (!(r->class_dirs = calloc((size_t)(k ? k : 1), sizeof *r->class_dirs)))
        return dc_fail("out of memory");
    for (int i = 0; i < k; i++) {
        if (!(r->class_dirs[i] = folder_name(r->ds.class_names[i], i)))
            return -1;
        for (int j = 0; j < i; j++)
            if (!strcmp(r->class_dirs[i], r->class_dirs[j]))
                return dc_fail("%s: classes '%s' and '%s' would share the folder '%s'", r->o.train_data_dir,
                               r->ds.class_names[j], r->ds.class_names[i], r->class_dirs[i]);
        char *dir = dc_path_join(r->o.output_dir, r->class_dirs[i]);
        int rc = dir ? dc_mkdirs(dir) : -1;
        free(dir);
        if (rc)
            return -1;
    }
    return 0;
}

/* j->file: "<class folder>/<name>.png", or "<name>.png" when unlabelled. */
static void set_file(const run *r, job *j, const char *name) {
    if (j->label >= 0)
        snprintf(j->file, sizeof j->file, "%s/%s.png", r->class_dirs[j->label], name);
    else
        snprintf(j->file, sizeof j->file, "%s.png", name);
}

/* gen_ images round-robin over the classes (an interrupted run is balanced), then unl_, then var_. */
/* vary [ds.count]: the real images to make variations of: all, or with
 * --vary-eval-subsets those of the largest fraction's subset of every seed. */
static int pick_sources(const run *r, bool *vary) {
    const augment_options *o = &r->o;
    double f[DC_AUGMENT_MAX_FRACTIONS], largest = 0;
    int n_f = 0;
    if (!o->vary_eval_subsets) {
        for (int64_t i = 0; i < r->ds.count; i++)
            vary[i] = true;
        return 0;
    }
    bool *in = malloc((size_t)(r->ds.count ? r->ds.count : 1) * sizeof *in);
    int rc = in ? dc_augment_parse_fractions(o->real_fraction, f, &n_f) : dc_fail("out of memory");
    for (int k = 0; k < n_f; k++)
        largest = f[k] > largest ? f[k] : largest;
    for (int64_t s = 0; !rc && s < o->eval_seeds; s++) {
        rc = dc_augment_subset(&r->ds, largest, (uint64_t)(o->seed + s), in);
        for (int64_t i = 0; !rc && i < r->ds.count; i++)
            vary[i] = vary[i] || in[i];
    }
    free(in);
    return rc;
}

/* An unl_ job's name, from its stream. */
static void unlabelled_name(const job *j, char name[32]) {
    snprintf(name, 32, "unl_%05" PRIu64, j->stream - UNLABELLED_STREAMS);
}

static int plan_jobs(run *r) {
    int64_t classes = r->ds.num_classes,
            n = r->o.per_class * classes + r->o.unlabelled + r->o.variations * r->ds.count;
    bool *vary = calloc((size_t)(r->ds.count ? r->ds.count : 1), sizeof *vary);
    if (!vary || (n > 0 && !(r->jobs = calloc((size_t)n, sizeof *r->jobs)))) {
        free(vary);
        return dc_fail("out of memory for %" PRId64 " images", n);
    }
    if (pick_sources(r, vary)) {
        free(vary);
        return -1;
    }
    for (int64_t i = 0; i < r->o.per_class; i++)
        for (int32_t c = 0; c < classes; c++) {
            job *j = &r->jobs[r->n_jobs++];
            *j = (job){.label = c, .source = -1, .stream = ((uint64_t)c << 32) + (uint64_t)i};
            char name[32];
            snprintf(name, sizeof name, "gen_%05" PRId64, i);
            set_file(r, j, name);
        }
    for (int64_t i = 0; i < r->o.unlabelled; i++) /* their files once they have a class */
        r->jobs[r->n_jobs++] = (job){.label = -1, .source = -1, .stream = UNLABELLED_STREAMS + (uint64_t)i,
                                     .pseudo = true};
    for (int64_t s = 0; s < r->ds.count; s++)
        for (int64_t k = 0; vary[s] && k < r->o.variations; k++) {
            job *j = &r->jobs[r->n_jobs++];
            *j = (job){.label = r->ds.labels[s], .source = s,
                       .stream = VARIATION_STREAMS + ((uint64_t)s << 16) + (uint64_t)k};
            char name[48];
            snprintf(name, sizeof name, "var_%06" PRId64 "_%02" PRId64, s, k);
            set_file(r, j, name);
        }
    free(vary);
    return 0;
}

/* ---- the manifest ---- */

static char *out_path(const run *r, const char *name) { return dc_path_join(r->o.output_dir, name); }

static bool file_exists(const run *r, const char *rel) {
    char *p = out_path(r, rel);
    bool ok = p && access(p, F_OK) == 0;
    free(p);
    return ok;
}

static double number_or_nan(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *string_or_null(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Parse one line; false when it is not a manifest entry. */
static bool parse_entry(entry *e, char *line, size_t n) {
    *e = (entry){.line = line};
    if (!(e->json = cJSON_ParseWithLength(line, n)))
        return false;
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(e->json, "file"),
                *sched = cJSON_GetObjectItemCaseSensitive(e->json, "scheduler");
    if (!cJSON_IsString(file) || !cJSON_IsString(sched)) {
        cJSON_Delete(e->json);
        return false;
    }
    e->file = file->valuestring;
    e->scheduler = sched->valuestring;
    e->seed = number_or_nan(e->json, "seed");
    e->stream = number_or_nan(e->json, "stream");
    e->strength = number_or_nan(e->json, "strength");
    e->guidance = number_or_nan(e->json, "guidance");
    e->steps = number_or_nan(e->json, "steps");
    e->threshold = number_or_nan(e->json, "filter_threshold");
    e->prompt = string_or_null(e->json, "prompt");
    e->negative = string_or_null(e->json, "negative_prompt");
    e->kept = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(e->json, "kept"));
    return true;
}

static int by_file(const void *a, const void *b) {
    return strcmp(((const entry *)a)->file, ((const entry *)b)->file);
}

/* Write the kept lines back (atomically) when some were dropped. */
static int rewrite_manifest(const run *r, const char *path) {
    size_t total = 0;
    for (int64_t i = 0; i < r->n_entries; i++)
        total += strlen(r->entries[i].line) + 1;
    char *text = malloc(total + 1), *p = text;
    if (!text)
        return dc_fail("out of memory");
    for (int64_t i = 0; i < r->n_entries; i++)
        p += sprintf(p, "%s\n", r->entries[i].line);
    int rc = dc_write_file(path, text, total, true);
    free(text);
    return rc;
}

/* Keep a parsed line whose file exists, or that says the filter rejected it; drop (and count) the rest. */
static void keep_entry(run *r, entry *e, int *dropped) {
    if (!e->kept || file_exists(r, e->file)) {
        r->entries[r->n_entries++] = *e;
        return;
    }
    cJSON_Delete(e->json);
    ++*dropped;
}

/* Read OUTPUT-DIR/manifest.jsonl: a bad last line is a partial write and is
 * dropped, a bad line before it is an error. */
static int read_manifest(run *r, char **text) {
    char *path = out_path(r, MANIFEST);
    if (!path)
        return -1;
    int rc = 0, dropped = 0;
    size_t n = 0;
    *text = NULL;
    if (access(path, F_OK) == 0 && !(*text = dc_read_file(path, MAX_MANIFEST_BYTES, &n)))
        rc = -1;
    int64_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += (*text)[i] == '\n';
    if (!rc && !(r->entries = calloc((size_t)lines + 1, sizeof *r->entries)))
        rc = dc_fail("out of memory");
    int64_t line_no = 0;
    for (char *p = *text, *end = p ? p + n : NULL; !rc && p && p < end; line_no++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        p[len] = '\0';
        entry e;
        bool last = !nl || nl + 1 == end;
        if (parse_entry(&e, p, len))
            keep_entry(r, &e, &dropped);
        else if (last) {
            fprintf(stderr, "diffc: warning: %s: dropped a partial last line (an interrupted run)\n", path);
            dropped++;
        } else
            rc = dc_fail("%s: line %" PRId64 " is not a manifest entry (a JSON object with file and scheduler)",
                         path, line_no + 1);
        p += len + 1;
    }
    if (!rc && dropped)
        rc = rewrite_manifest(r, path);
    if (!rc)
        qsort(r->entries, (size_t)r->n_entries, sizeof *r->entries, by_file);
    if (!rc && (r->manifest_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) < 0)
        rc = dc_fail("%s: cannot open for writing: %s", path, strerror(errno));
    free(path);
    return rc;
}

static bool near(double a, double b) { return fabs(a - b) <= 1e-9 * (fabs(b) > 1 ? fabs(b) : 1); }

/* Both NAN, or near. */
static bool same_number(double a, double b) { return isnan(b) ? isnan(a) : near(a, b); }

/* Both NULL, or equal. */
static bool same_text(const char *a, const char *b) { return !a || !b ? a == b : !strcmp(a, b); }

/* Job j's prompt; NULL for a UNet2DModel. */
static const char *job_prompt(const run *r, const job *j) {
    if (!r->text)
        return NULL;
    return j->source >= 0 ? r->image_prompts[j->source] : r->class_prompts[j->label];
}

/* The negative prompt of every image: "" for none; NULL for a UNet2DModel. */
static const char *job_negative(const run *r) {
    if (!r->text)
        return NULL;
    return r->o.negative_prompt ? r->o.negative_prompt : "";
}

/* 0 when entry e was made with this run's settings for job j. */
static int check_entry(const run *r, const job *j, const entry *e) {
    double strength = j->source >= 0 ? r->o.strength : NAN;
    if (near(e->seed, (double)r->o.seed) && near(e->stream, (double)j->stream) &&
        same_number(e->strength, strength) && near(e->guidance, r->o.guidance_scale) && near(e->steps, r->sampler.n) &&
        !strcmp(e->scheduler, dc_sampler_kind_name(r->sampler.kind)) && same_text(e->prompt, job_prompt(r, j)) &&
        same_text(e->negative, job_negative(r)) && same_number(e->threshold, r->o.threshold))
        return 0;
    char strength_text[48] = "", filter_text[48] = "";
    if (!isnan(strength))
        snprintf(strength_text, sizeof strength_text, ", strength %.9g", strength);
    if (!isnan(r->o.threshold))
        snprintf(filter_text, sizeof filter_text, ", filter threshold %.9g", r->o.threshold);
    const char *prompt = job_prompt(r, j);
    return dc_fail("%s/%s: %s was made with other settings (%s); this run: seed %" PRId64
                   ", guidance %g%s, %s %d steps%s%s%s%s. Use the same settings or another --output-dir",
                   r->o.output_dir, MANIFEST, j->file, e->line, r->o.seed, r->o.guidance_scale, strength_text,
                   dc_sampler_kind_name(r->sampler.kind), r->sampler.n, filter_text, prompt ? ", prompt '" : "",
                   prompt ? prompt : "", prompt ? "'" : "");
}

/* Job j's manifest entry, or NULL. An unl_ job's is in one of the class
 * folders; found, the job takes that class and file. */
static const entry *find_entry(const run *r, job *j) {
    entry key = {.file = j->file};
    if (!j->pseudo)
        return bsearch(&key, r->entries, (size_t)r->n_entries, sizeof key, by_file);
    char name[32];
    unlabelled_name(j, name);
    for (int32_t c = 0; c < r->ds.num_classes; c++) {
        job as = {.label = c};
        set_file(r, &as, name);
        key.file = as.file;
        const entry *e = bsearch(&key, r->entries, (size_t)r->n_entries, sizeof key, by_file);
        if (e) {
            j->label = c;
            memcpy(j->file, as.file, sizeof j->file);
            return e;
        }
    }
    return NULL;
}

/* done[i]: job i is in the manifest (with its file, or rejected by the
 * filter: kept[i] false); count them. */
static int mark_done(run *r, int64_t *n_done) {
    *n_done = 0;
    if (r->n_jobs && (!(r->done = calloc((size_t)r->n_jobs, sizeof *r->done)) ||
                      !(r->kept = calloc((size_t)r->n_jobs, sizeof *r->kept))))
        return dc_fail("out of memory");
    for (int64_t i = 0; i < r->n_jobs; i++) {
        const entry *e = find_entry(r, &r->jobs[i]);
        if (e && check_entry(r, &r->jobs[i], e))
            return -1;
        r->done[i] = e != NULL;
        r->kept[i] = e && e->kept;
        *n_done += e != NULL;
    }
    return 0;
}

static void add_text_or_null(cJSON *o, const char *key, const char *text) {
    if (text)
        cJSON_AddStringToObject(o, key, text);
    else
        cJSON_AddNullToObject(o, key);
}

/* confidence: the filter's or the pseudo-label's, NAN without either; kept: the file was written. */
static cJSON *entry_json(const run *r, const job *j, double confidence, bool kept) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "file", j->file);
    if (j->label >= 0) {
        cJSON_AddStringToObject(o, "class", r->ds.class_names[j->label]);
        cJSON_AddNumberToObject(o, "label", j->label);
    } else {
        cJSON_AddNullToObject(o, "class");
        cJSON_AddNullToObject(o, "label");
    }
    if (j->source >= 0)
        cJSON_AddNumberToObject(o, "source", (double)j->source);
    else
        cJSON_AddNullToObject(o, "source");
    cJSON_AddNumberToObject(o, "seed", (double)r->o.seed);
    cJSON_AddNumberToObject(o, "stream", (double)j->stream);
    if (j->source >= 0)
        cJSON_AddNumberToObject(o, "strength", r->o.strength);
    else
        cJSON_AddNullToObject(o, "strength");
    cJSON_AddNumberToObject(o, "guidance", r->o.guidance_scale);
    cJSON_AddStringToObject(o, "scheduler", dc_sampler_kind_name(r->sampler.kind));
    cJSON_AddNumberToObject(o, "steps", r->sampler.n);
    if (r->text) {
        add_text_or_null(o, "prompt", job_prompt(r, j));
        add_text_or_null(o, "negative_prompt", job_negative(r));
    }
    if (j->pseudo)
        cJSON_AddTrueToObject(o, "pseudo");
    if (r->filtering)
        cJSON_AddNumberToObject(o, "filter_threshold", r->o.threshold);
    if (r->filtering || j->pseudo)
        cJSON_AddNumberToObject(o, "confidence", confidence);
    if (r->filtering)
        cJSON_AddBoolToObject(o, "kept", kept);
    return o;
}

/* One line, one write(): a killed run leaves whole lines or a partial last one. */
static int append_entry(const run *r, const job *j, double confidence, bool kept) {
    cJSON *o = entry_json(r, j, confidence, kept);
    char *text = o ? dc_json_print(o, false) : NULL;
    cJSON_Delete(o);
    if (!text)
        return dc_fail("out of memory");
    size_t n = strlen(text);
    text[n] = '\n'; /* replaces the NUL: the buffer is written by length */
    ssize_t w = write(r->manifest_fd, text, n + 1);
    free(text);
    if (w != (ssize_t)(n + 1))
        return dc_fail("%s/%s: cannot append: %s", r->o.output_dir, MANIFEST, w < 0 ? strerror(errno) : "short write");
    return 0;
}

/* ---- setup ---- */

static int check_model(run *r) {
    const dc_unet_config *c = &r->model.cfg;
    r->side = c->sample_size[0];
    r->c = c->in_channels;
    r->null_class = dc_unet_null_class(c);
    if (r->side < 1 || c->sample_size[1] != r->side)
        return dc_fail("%s: augment needs a model of square images (its config's sample_size is %dx%d)",
                       r->o.model, c->sample_size[1], c->sample_size[0]);
    if (r->c != 1 && r->c != 3)
        return dc_fail("%s: the model makes images of %d channels; PNG files take 1 (gray) or 3 (RGB)",
                       r->o.model, r->c);
    if (r->null_class < 0 && r->o.guidance_scale > 1)
        return dc_fail("--guidance-scale %g: the model is unconditional, there is nothing to guide towards",
                       r->o.guidance_scale);
    return 0;
}

/* The options only a text-to-image pipeline reads: the first given, or NULL. */
static const char *text_option(const augment_options *o) {
    return o->prompt_template   ? "--prompt-template"
           : o->caption_column  ? "--caption-column"
           : o->negative_prompt ? "--negative-prompt"
           : o->resolution      ? "--resolution"
                                : NULL;
}

/* A UNet2DModel folder: its weights, image size and sampler. */
static int load_unet(run *r) {
    const augment_options *o = &r->o;
    if (text_option(o))
        return dc_fail("%s: %s is not a text-to-image pipeline (a model_index.json naming a text_encoder and a vae)",
                       text_option(o), o->model);
    return dc_model_load_on(&r->model, o->model, !o->no_ema, o->variant, r->device) || check_model(r) ||
                   dc_model_sampler(&r->model, o->scheduler ? o->scheduler : DEFAULT_SCHEDULER,
                                    o->num_inference_steps, NULL, -1, &r->sampler)
               ? -1
               : 0;
}

/* The prompt template: given, or the default; it must vary with the image. */
static int check_template(run *r) {
    const augment_options *o = &r->o;
    r->tmpl = o->prompt_template ? o->prompt_template : o->caption_column ? CAPTION_TEMPLATE : DEFAULT_TEMPLATE;
    bool has_class = strstr(r->tmpl, "{class}"), has_caption = strstr(r->tmpl, "{caption}");
    if (!has_class && !has_caption)
        return dc_fail("--prompt-template '%s': it has no {class} (nor {caption}), so every image would get the "
                       "same prompt",
                       r->tmpl);
    if (o->caption_column && !has_caption)
        return dc_fail("--caption-column %s: the prompt template '%s' has no {caption} to put the captions in",
                       o->caption_column, r->tmpl);
    if (o->per_class && !has_class)
        return dc_fail("--per-class: the prompt template '%s' has no {class}; text-to-image images of a class "
                       "need it in their prompt",
                       r->tmpl);
    if (o->per_class && has_caption)
        return dc_fail("--per-class: the prompt template '%s' has {caption}, but a text-to-image image has no "
                       "real image to take a caption from (use --variations, or a template without {caption})",
                       r->tmpl);
    return 0;
}

/* A Stable Diffusion pipeline folder: its weights, image size and sampler. */
static int load_text(run *r) {
    const augment_options *o = &r->o;
    if (o->no_ema)
        return dc_fail("--no-ema: %s is a text-to-image pipeline, which has no EMA weights to leave out", o->model);
    if (check_template(r) || dc_sd_load(&r->sd, o->model, o->variant, r->device))
        return -1;
    int f = dc_sd_latent_scale(&r->sd);
    r->side = o->resolution ? (int)o->resolution : r->sd.unet.cfg.sample_size[0] * f;
    r->c = 3;
    r->null_class = -1;
    if (r->side < f || r->side % f)
        return dc_fail("--resolution %d: the side must be a positive multiple of %d (the VAE's down-sampling)",
                       r->side, f);
    return dc_sd_sampler(&r->sd, o->scheduler, o->num_inference_steps ? (int)o->num_inference_steps : SD_STEPS,
                         &r->sampler);
}

/* The dataset's classes against the model's. */
static int check_classes(run *r) {
    int k = r->ds.num_classes;
    if (r->text && k == 0 && strstr(r->tmpl, "{class}"))
        return dc_fail("--prompt-template '%s': %s has no classes (no subfolders) for {class}; use {caption}",
                       r->tmpl, r->o.train_data_dir);
    if (r->text && r->o.unlabelled)
        return dc_fail("--unlabelled: %s is a text-to-image pipeline, whose images come from prompts (use "
                       "--per-class)",
                       r->o.model);
    if (r->text)
        return 0;
    if (r->o.unlabelled && k < 2)
        return dc_fail("--unlabelled: %s has %d classes; pseudo-labels need a classifier of at least 2",
                       r->o.train_data_dir, k);
    if (r->o.per_class && r->null_class < 0)
        return dc_fail("--per-class: %s is unconditional (its config has no num_class_embeds); "
                       "--variations works with it",
                       r->o.model);
    if (r->o.per_class && k == 0)
        return dc_fail("--per-class: %s has no classes (no subfolders)", r->o.train_data_dir);
    if (r->null_class >= 0 && k > 0 && k != r->null_class)
        return dc_fail("%s has %d classes but the model %s was trained for %d (num_class_embeds %d)",
                       r->o.train_data_dir, k, r->o.model, r->null_class, r->null_class + 1);
    return 0;
}

static int open_dataset(run *r) {
    dc_dataset_options dopt = {.resolution = r->side, .channels = r->c, .split = "train", .cache_dir = r->o.cache_dir,
                               .caption_column = r->o.caption_column};
    if (dc_dataset_open(&r->ds, r->o.train_data_dir, &dopt))
        return -1;
    r->ds_open = true;
    printf("%s: %" PRId64 " images, %d classes, at the %s %dx%d %s (resized and converted as training "
           "does)\n",
           r->o.train_data_dir, r->ds.count, r->ds.num_classes, r->text ? "pipeline's" : "model's", r->side, r->side,
           r->c == 1 ? "gray" : "RGB");
    return 0;
}

/* r->source_names: the names of the dataset's images (its items less the
 * files skipped when its cache was built, which are named the same way). */
static int name_sources(run *r) {
    dc_dataset_items it = {0};
    if (dc_dataset_items_open(&it, r->o.train_data_dir, "train"))
        return -1;
    r->source_names = calloc((size_t)r->ds.count + 1, sizeof *r->source_names);
    int rc = r->source_names ? 0 : dc_fail("out of memory");
    int64_t n = 0;
    int skipped = 0;
    for (int64_t i = 0; !rc && i < it.count; i++) {
        char buf[64];
        const char *name = dc_dataset_item_name(&it, i, buf, sizeof buf);
        if (skipped < r->ds.n_skipped && !strcmp(name, r->ds.skipped[skipped].path))
            skipped++;
        else if (n < r->ds.count && !(r->source_names[n++] = strdup(name)))
            rc = dc_fail("out of memory");
    }
    if (!rc && n != r->ds.count)
        rc = dc_fail("%s: the folder changed while it was read (%" PRId64 " images, the cache has %" PRId64 ")",
                     r->o.train_data_dir, n, r->ds.count);
    dc_dataset_items_close(&it);
    return rc;
}

/* Image s's caption for {caption}: an error when it has none. */
static const char *caption_of(const run *r, int64_t s) {
    const char *column = r->o.caption_column ? r->o.caption_column : "text";
    if (!r->ds.captions) {
        dc_fail("--prompt-template '%s': %s has no captions for {caption} (no %s with a \"%s\" key; diffc caption "
                "writes one)",
                r->tmpl, r->o.train_data_dir, DC_METADATA_FILE, column);
        return NULL;
    }
    if (!*r->ds.captions[s]) {
        dc_fail("--prompt-template '%s': %s has no caption for %s (\"%s\" in %s)", r->tmpl, r->o.train_data_dir,
                r->source_names[s], column, DC_METADATA_FILE);
        return NULL;
    }
    return r->ds.captions[s];
}

/* The prompts: of every class for gen_, of every real image for var_. */
static int make_prompts(run *r) {
    int k = r->ds.num_classes;
    bool has_caption = strstr(r->tmpl, "{caption}");
    if (!(r->class_prompts = calloc((size_t)k + 1, sizeof *r->class_prompts)) ||
        !(r->image_prompts = calloc((size_t)r->ds.count + 1, sizeof *r->image_prompts)))
        return dc_fail("out of memory");
    for (int c = 0; r->o.per_class && c < k; c++)
        if (!(r->class_prompts[c] = dc_prompt_from_template(r->tmpl, r->ds.class_names[c], NULL)))
            return -1;
    for (int64_t s = 0; r->o.variations && s < r->ds.count; s++) {
        const char *caption = has_caption ? caption_of(r, s) : NULL;
        const char *cls = r->ds.labels[s] >= 0 ? r->ds.class_names[r->ds.labels[s]] : NULL;
        if ((has_caption && !caption) || !(r->image_prompts[s] = dc_prompt_from_template(r->tmpl, cls, caption)))
            return -1;
    }
    return 0;
}

/* The classifier of the real images that the filter keeps images by and
 * --eval judges them with: --filter-classifier, the one an earlier run saved
 * in the output folder, or one trained now and saved there. */
static int real_classifier(run *r, const char *purpose) {
    const augment_options *o = &r->o;
    if (r->classifier_ready)
        return 0;
    if (r->ds.num_classes < 2)
        return dc_fail("%s: %s has %d classes; a classifier needs at least 2", purpose, o->train_data_dir,
                       r->ds.num_classes);
    char *saved = out_path(r, FILTER_CLASSIFIER);
    if (!saved)
        return -1;
    const char *from = o->filter_classifier ? o->filter_classifier : access(saved, F_OK) == 0 ? saved : NULL;
    int rc;
    if (from) {
        rc = dc_augment_classifier_load(&r->filter, &r->ds, from, &r->train);
        if (!rc)
            printf("%s: the classifier of %s\n", purpose, from);
    } else {
        printf("%s: training a classifier on the %" PRId64 " real images (%" PRId64 " %s of batch %" PRId64 ")\n",
               purpose, r->ds.count, o->eval_epochs ? o->eval_epochs : o->eval_steps,
               o->eval_epochs ? "epochs" : "steps", o->eval_batch_size);
        fflush(stdout);
        rc = dc_augment_classifier_train(&r->filter, &r->ds, &r->train) ||
             dc_augment_classifier_save(&r->filter, &r->ds, saved);
        if (!rc)
            printf("%s: saved it as %s\n", purpose, saved);
    }
    r->classifier_ready = !rc;
    free(saved);
    return rc;
}

static int setup_filter(run *r) {
    if (isnan(r->o.threshold))
        return 0;
    int rc = real_classifier(r, "filter");
    if (!rc)
        printf("filter: keeping images above %g\n", r->o.threshold);
    r->filtering = !rc;
    int k = r->ds.num_classes;
    if (!rc && (!(r->n_kept = calloc((size_t)k, sizeof *r->n_kept)) ||
                !(r->n_rejected = calloc((size_t)k, sizeof *r->n_rejected))))
        rc = dc_fail("out of memory");
    return rc;
}

static int setup(run *r, char **manifest_text) {
    augment_options *o = &r->o;
    r->manifest_fd = -1;
    r->text = dc_sd_is_pipeline(o->model);
    o->guidance_scale = o->guidance_scale ? o->guidance_scale : r->text ? SD_GUIDANCE : 1;
    r->train = (dc_augment_train_options){.steps = o->eval_steps,
                                          .epochs = o->eval_epochs,
                                          .batch_size = o->eval_batch_size,
                                          .learning_rate = o->eval_learning_rate,
                                          .seed = (uint64_t)o->seed,
                                          .augment = o->eval_augment};
    if (dc_device_resolve(o->device, &r->device) || (r->text ? load_text(r) : load_unet(r)) || open_dataset(r) ||
        check_classes(r) || (r->text && (name_sources(r) || make_prompts(r))) ||
        dc_dir_check_writable(o->output_dir) || make_class_dirs(r) || plan_jobs(r) ||
        read_manifest(r, manifest_text) || setup_filter(r) ||
        (r->o.unlabelled && real_classifier(r, "pseudo-labels")) ||
        dc_model_ctx_init(r->device, &r->ctx, ACTIVATION_BYTES))
        return -1;
    r->ctx_ready = true;
    r->tty = isatty(fileno(stderr));
    return 0;
}

/* ---- generation ---- */

typedef struct batch {
    int64_t *idx; /* [n] the jobs in this batch */
    int64_t n;
    int32_t *labels;
    uint64_t *streams;
    const char **prompts;
    float *init, *px, *scored; /* scored: [per] one image as written, for the filter */
} batch;

/* An unl_ job's class: the most probable of the real images' classifier for
 * px (its image as written), and that probability; then its file. */
static int pseudo_label(run *r, job *j, const float *px, double *confidence) {
    if (dc_augment_classifier_predict(&r->filter, px, &j->label, confidence))
        return -1;
    char name[32];
    unlabelled_name(j, name);
    set_file(r, j, name);
    return 0;
}

/* Job i's image px: pseudo-labelled, scored by the filter, written when
 * kept, listed in the manifest. With --eval an unl_ image is always kept:
 * each subset's classifier labels and filters it again. */
static int save(run *r, batch *b, int64_t i, const float *px) {
    job *j = &r->jobs[i];
    dc_image img = {0};
    if (dc_image_alloc(&img, r->side, r->side, r->c))
        return -1;
    int64_t per = (int64_t)r->side * r->side * r->c;
    dc_float_to_u8(img.px, px, (size_t)per);
    double confidence = NAN;
    if (r->filtering || j->pseudo) { /* the image as written, as --eval and a later classifier read it */
        dc_u8_to_float(b->scored, img.px, (size_t)per);
        if (j->pseudo ? pseudo_label(r, j, b->scored, &confidence)
                      : dc_augment_classifier_confidence(&r->filter, b->scored, j->label, &confidence)) {
            dc_image_free(&img);
            return -1;
        }
    }
    r->kept[i] = !r->filtering || (j->pseudo && r->o.eval) || confidence > r->o.threshold;
    char *path = r->kept[i] ? out_path(r, j->file) : NULL;
    int rc = !r->kept[i] ? 0 : path ? dc_image_save_png(&img, path) : -1;
    free(path);
    dc_image_free(&img);
    return rc ? rc : append_entry(r, j, confidence, r->kept[i]);
}

/* The batch's images from the UNet2DModel, with their class labels. */
static int generate_unet(run *r, batch *b, bool img2img) {
    for (int64_t k = 0; k < b->n; k++)
        b->labels[k] = r->jobs[b->idx[k]].label >= 0 ? r->jobs[b->idx[k]].label : r->null_class;
    dc_generate_request q = {.unet = &r->model.unet,
                             .sampler = &r->sampler,
                             .n = b->n,
                             .batch = b->n,
                             .h = r->side,
                             .w = r->side,
                             .labels = r->null_class >= 0 ? b->labels : NULL,
                             .guidance_scale = (float)r->o.guidance_scale,
                             .seed = (uint64_t)r->o.seed,
                             .streams = b->streams,
                             .init = img2img ? b->init : NULL,
                             .strength = r->o.strength};
    return dc_generate(&r->ctx, &q, b->px);
}

/* The batch's images from the pipeline, with their prompts. */
static int generate_text(run *r, batch *b, bool img2img) {
    for (int64_t k = 0; k < b->n; k++)
        b->prompts[k] = job_prompt(r, &r->jobs[b->idx[k]]);
    dc_sd_request q = {.sampler = &r->sampler,
                       .n = b->n,
                       .batch = b->n,
                       .h = r->side,
                       .w = r->side,
                       .prompts = b->prompts,
                       .negative = r->o.negative_prompt,
                       .guidance_scale = (float)r->o.guidance_scale,
                       .seed = (uint64_t)r->o.seed,
                       .streams = b->streams,
                       .init = img2img ? b->init : NULL,
                       .strength = r->o.strength};
    return dc_sd_generate(&r->ctx, &r->sd, &q, b->px);
}

static int generate_batch(run *r, batch *b) {
    int64_t per = (int64_t)r->side * r->side * r->c;
    bool img2img = r->jobs[b->idx[0]].source >= 0;
    for (int64_t k = 0; k < b->n; k++) {
        const job *j = &r->jobs[b->idx[k]];
        b->streams[k] = j->stream;
        if (img2img)
            dc_u8_to_float(b->init + k * per, r->ds.pixels + j->source * per, (size_t)per);
    }
    if (r->text ? generate_text(r, b, img2img) : generate_unet(r, b, img2img))
        return -1;
    for (int64_t k = 0; k < b->n; k++)
        if (save(r, b, b->idx[k], b->px + k * per))
            return -1;
    return fdatasync(r->manifest_fd) ? dc_fail("%s/%s: %s", r->o.output_dir, MANIFEST, strerror(errno)) : 0;
}

/* The jobs not done, in batches of one kind (gen_ or var_: img2img or not). */
static int generate_all(run *r, int64_t todo) {
    int64_t per = (int64_t)r->side * r->side * r->c, cap = r->o.batch_size;
    batch *b = calloc(1, sizeof *b);
    int rc = b ? 0 : dc_fail("out of memory");
    if (!rc) {
        b->idx = malloc((size_t)cap * sizeof *b->idx);
        b->labels = malloc((size_t)cap * sizeof *b->labels);
        b->streams = malloc((size_t)cap * sizeof *b->streams);
        b->prompts = malloc((size_t)cap * sizeof *b->prompts);
        b->init = malloc((size_t)(cap * per) * sizeof(float));
        b->px = malloc((size_t)(cap * per) * sizeof(float));
        b->scored = malloc((size_t)per * sizeof(float));
        if (!b->idx || !b->labels || !b->streams || !b->prompts || !b->init || !b->px || !b->scored)
            rc = dc_fail("out of memory for batches of %" PRId64 " images", cap);
    }
    double t0 = dc_seconds();
    int64_t made = 0;
    for (int64_t i = 0; !rc && i < r->n_jobs; i++) {
        if (r->done[i])
            continue;
        bool kind_changes = b->n && (r->jobs[b->idx[0]].source >= 0) != (r->jobs[i].source >= 0);
        if (kind_changes) {
            rc = generate_batch(r, b);
            made += b->n;
            b->n = 0;
        }
        b->idx[b->n++] = i;
        if (!rc && b->n == cap) {
            rc = generate_batch(r, b);
            made += b->n;
            b->n = 0;
            fprintf(stderr, r->tty ? "\raugment: %" PRId64 "/%" PRId64 " images, %.2f images/s   "
                                   : "augment: %" PRId64 "/%" PRId64 " images, %.2f images/s\n",
                    made, todo, (double)made / (dc_seconds() - t0));
        }
    }
    if (!rc && b->n) {
        rc = generate_batch(r, b);
        made += b->n;
    }
    if (r->tty && made)
        fputc('\n', stderr);
    if (b)
        free(b->idx), free(b->labels), free(b->streams), free(b->prompts), free(b->init), free(b->px), free(b->scored);
    free(b);
    return rc;
}

/* ---- evaluation ---- */

static int32_t int_or(const cJSON *obj, const char *key, int64_t none) {
    double v = number_or_nan(obj, key);
    return isnan(v) ? (int32_t)none : (int32_t)v;
}

/* The synthetic set: this run's images, or with nothing to make, every image
 * the manifest lists; those the filter rejected are not there. */
static int synthetic_set(const run *r, dc_synthetic *syn) {
    bool jobs = r->n_jobs > 0;
    int64_t n = jobs ? r->n_jobs : r->n_entries, cap = n ? n : 1;
    *syn = (dc_synthetic){0};
    syn->paths = calloc((size_t)cap, sizeof *syn->paths);
    syn->labels = malloc((size_t)cap * sizeof *syn->labels);
    syn->source = malloc((size_t)cap * sizeof *syn->source);
    syn->pseudo = malloc((size_t)cap * sizeof *syn->pseudo);
    if (!syn->paths || !syn->labels || !syn->source || !syn->pseudo)
        return dc_fail("out of memory");
    for (int64_t i = 0; i < n; i++) {
        const entry *e = jobs ? NULL : &r->entries[i];
        if (jobs ? !r->kept[i] : !e->kept)
            continue;
        int64_t k = syn->n++;
        syn->labels[k] = jobs ? r->jobs[i].label : int_or(e->json, "label", -1);
        syn->source[k] = jobs ? r->jobs[i].source : int_or(e->json, "source", -1);
        syn->pseudo[k] = jobs ? r->jobs[i].pseudo : cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e->json, "pseudo"));
        if (!(syn->paths[k] = out_path(r, jobs ? r->jobs[i].file : e->file)))
            return -1;
        if (syn->labels[k] < 0 || syn->labels[k] >= r->ds.num_classes)
            return dc_fail("%s/%s: %s has no class label of %s", r->o.output_dir, MANIFEST, jobs ? r->jobs[i].file : e->file,
                           r->o.train_data_dir);
    }
    return 0;
}

static int evaluate(run *r) {
    if (r->ds.num_classes < 2)
        return dc_fail("--eval: %s has %d classes; a classifier needs at least 2", r->o.train_data_dir,
                       r->ds.num_classes);
    dc_synthetic syn;
    dc_augment_eval_options eo = {.test_dir = r->o.eval_data_dir,
                                  .cache_dir = r->o.cache_dir,
                                  .fractions = r->o.real_fraction,
                                  .seeds = (int)r->o.eval_seeds,
                                  .synthetic_prob = r->o.prob,
                                  .pseudo_threshold = r->o.threshold,
                                  .train = r->train};
    int rc = synthetic_set(r, &syn) || real_classifier(r, "judge") ||
                     dc_augment_evaluate(&r->ds, &syn, &eo, &r->filter, NULL)
                 ? -1
                 : 0;
    for (int64_t i = 0; syn.paths && i < syn.n; i++) /* paths past n are NULL */
        free(syn.paths[i]);
    free(syn.paths);
    free(syn.labels);
    free(syn.source);
    free(syn.pseudo);
    return rc;
}

/* ---- the filter's report and metadata.jsonl ---- */

/* Kept and rejected images of this run's jobs, by class. */
static void report_filter(const run *r) {
    for (int64_t i = 0; i < r->n_jobs; i++)
        (r->kept[i] ? r->n_kept : r->n_rejected)[r->jobs[i].label]++;
    int64_t kept = 0, rejected = 0;
    for (int c = 0; c < r->ds.num_classes; c++) {
        printf("filter: %-20s kept %6" PRId64 ", rejected %6" PRId64 "\n", r->ds.class_names[c], r->n_kept[c],
               r->n_rejected[c]);
        kept += r->n_kept[c], rejected += r->n_rejected[c];
    }
    printf("filter: kept %" PRId64 " of %" PRId64 " images (probability of their class above %g)\n", kept,
           kept + rejected, r->o.threshold);
    if (r->o.unlabelled && r->o.eval)
        printf("filter: with --eval every unl_ image is kept here; each subset's own classifier filters them\n");
}

typedef struct caption {
    const char *file, *text;
    int64_t source; /* -1: none */
} caption;

static int by_file_name(const void *a, const void *b) {
    return strcmp(((const caption *)a)->file, ((const caption *)b)->file);
}

static cJSON *caption_json(const run *r, const caption *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "file_name", c->file);
    cJSON_AddStringToObject(o, "text", c->text);
    add_text_or_null(o, "source", c->source >= 0 && c->source < r->ds.count ? r->source_names[c->source] : NULL);
    return o;
}

/* Every kept image in the folder with its prompt: the manifest's earlier
 * lines and this run's new images, sorted by file. */
static int list_captions(const run *r, caption **out, int64_t *n) {
    *out = malloc((size_t)(r->n_entries + r->n_jobs + 1) * sizeof **out);
    if (!*out)
        return dc_fail("out of memory");
    *n = 0;
    for (int64_t i = 0; i < r->n_entries; i++) {
        const entry *e = &r->entries[i];
        if (e->kept && e->prompt)
            (*out)[(*n)++] = (caption){e->file, e->prompt, int_or(e->json, "source", -1)};
    }
    for (int64_t i = 0; i < r->n_jobs; i++)
        if (!r->done[i] && r->kept[i])
            (*out)[(*n)++] = (caption){r->jobs[i].file, job_prompt(r, &r->jobs[i]), r->jobs[i].source};
    qsort(*out, (size_t)*n, sizeof **out, by_file_name);
    return 0;
}

/* OUTPUT-DIR/metadata.jsonl, written whole (and atomically) from the manifest. */
static int write_metadata(const run *r) {
    caption *list;
    int64_t n;
    if (list_captions(r, &list, &n))
        return -1;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    int rc = f ? 0 : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < n; i++) {
        cJSON *o = caption_json(r, &list[i]);
        char *line = o ? dc_json_print(o, false) : NULL;
        cJSON_Delete(o);
        rc = line && fprintf(f, "%s\n", line) >= 0 ? 0 : dc_fail("out of memory");
        free(line);
    }
    if (f && fclose(f) && !rc)
        rc = dc_fail("out of memory");
    char *path = rc ? NULL : out_path(r, DC_METADATA_FILE);
    if (!rc)
        rc = path ? dc_write_file(path, text, len, true) : -1;
    free(path);
    free(text);
    free(list);
    return rc;
}

/* ---- the run ---- */

static int augment(run *r) {
    char *manifest_text = NULL;
    int rc = setup(r, &manifest_text);
    int64_t n_done = 0;
    if (!rc)
        rc = mark_done(r, &n_done);
    if (!rc) {
        char strength[48] = "";
        if (r->o.variations)
            snprintf(strength, sizeof strength, " at strength %g", r->o.strength);
        if (r->text)
            printf("prompts from \"%s\"%s%s%s, guidance %g\n", r->tmpl, r->o.negative_prompt ? ", negative \"" : "",
                   r->o.negative_prompt ? r->o.negative_prompt : "", r->o.negative_prompt ? "\"" : "",
                   r->o.guidance_scale);
        printf("%" PRId64 " images to make (%" PRId64 " per class, %" PRId64 " unlabelled, %" PRId64
               " variations of each of %" PRId64 " real images%s), %" PRId64 " already in %s/%s\n",
               r->n_jobs, r->o.per_class, r->o.unlabelled, r->o.variations,
               r->o.variations ? (r->n_jobs - r->o.per_class * r->ds.num_classes - r->o.unlabelled) / r->o.variations
                               : r->ds.count,
               strength, n_done, r->o.output_dir,
               MANIFEST);
        fflush(stdout);
    }
    double t0 = dc_seconds();
    if (!rc)
        rc = generate_all(r, r->n_jobs - n_done);
    if (!rc && r->n_jobs > n_done)
        printf("%s %" PRId64 " image(s) %s %s (%s, %d steps%s); %.1f s, %.2f images/s\n",
               r->filtering ? "made" : "wrote", r->n_jobs - n_done, r->filtering ? "for" : "to", r->o.output_dir,
               dc_sampler_kind_name(r->sampler.kind), r->sampler.n, r->model.ema ? ", EMA weights" : "",
               dc_seconds() - t0, (double)(r->n_jobs - n_done) / (dc_seconds() - t0));
    if (!rc && r->filtering)
        report_filter(r);
    if (!rc && r->text)
        rc = write_metadata(r);
    if (!rc && r->o.eval)
        rc = evaluate(r);
    for (int64_t i = 0; i < r->n_entries; i++)
        cJSON_Delete(r->entries[i].json);
    free(manifest_text);
    return rc;
}

static void run_free(run *r) {
    if (r->manifest_fd >= 0)
        close(r->manifest_fd);
    if (r->ctx_ready)
        dc_ctx_free(&r->ctx);
    for (int i = 0; r->class_dirs && i < r->ds.num_classes; i++)
        free(r->class_dirs[i]);
    free(r->class_dirs);
    for (int i = 0; r->class_prompts && i < r->ds.num_classes; i++)
        free(r->class_prompts[i]);
    for (int64_t i = 0; r->image_prompts && i < r->ds.count; i++)
        free(r->image_prompts[i]);
    for (int64_t i = 0; r->source_names && i < r->ds.count; i++)
        free(r->source_names[i]);
    free(r->class_prompts);
    free(r->image_prompts);
    free(r->source_names);
    dc_augment_classifier_free(&r->filter);
    free(r->n_kept);
    free(r->n_rejected);
    free(r->jobs);
    free(r->entries);
    free(r->done);
    free(r->kept);
    if (r->ds_open)
        dc_dataset_close(&r->ds);
    dc_sampler_free(&r->sampler);
    dc_model_free(&r->model);
    dc_sd_free(&r->sd);
}

int dc_cmd_augment(int argc, char **argv) {
    run r = {.manifest_fd = -1};
    int rc = parse_args(&r.o, argc, argv);
    if (rc == DC_CLI_HELP) {
        dc_cli_help(&cli, stdout);
        return 0;
    }
    if (rc == DC_CLI_USAGE)
        return 2;
    if (!rc)
        rc = augment(&r);
    if (rc) {
        fflush(stdout);
        fprintf(stderr, "diffc: error: %s\n", dc_error());
        rc = 1;
    }
    run_free(&r);
    return rc;
}
