/*
 * `diffc augment`: synthetic training data from a trained model and its
 * dataset, and (--eval) whether it helps a classifier.
 *
 * Two kinds of image, written into OUTPUT-DIR/<class>/ (one folder per class
 * of the dataset, named after it; the root for an unlabelled dataset):
 *   <class>/gen_NNNNN.png      --per-class N class-conditional images per class
 *                              (classifier-free guidance --guidance-scale);
 *   <class>/var_SSSSSS_KK.png  --variations K img2img (SDEdit) variations of every
 *                              real image S, at --strength, with its class.
 * manifest.jsonl lists each written image on one line: file, class, label,
 * source (the real image's index in the dataset, null for gen_), seed,
 * stream, strength (null for gen_), guidance, scheduler and steps.
 *
 * Every image has its own noise stream, named after what it is (gen_ i of
 * class c: c 2^32 + i; var_ k of image s: 2^52 + s 2^16 + k), so it is the
 * same whatever else the run makes, whatever the batch and whether the run
 * was interrupted. That makes resuming exact: an image listed in the manifest
 * whose file exists is not made again; one made with other settings is an
 * error (another --output-dir, or the same settings). Images are written to a
 * temporary name and renamed, then their manifest line is appended with one
 * write; a partial last line (a killed run) is dropped when the next run
 * reads the manifest, as are lines whose file has gone.
 */
#define _GNU_SOURCE /* strdup */
#include "commands.h"

#include "autograd/clock.h"
#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/dataset.h"
#include "data/image.h"
#include "infer/augment.h"
#include "infer/cli.h"
#include "infer/generate.h"
#include "infer/model.h"

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
#define MAX_VARIATIONS 65536
#define MAX_FILE 320

/* ---- options ---- */

typedef struct augment_options {
    const char *model, *variant, *train_data_dir, *output_dir, *scheduler, *cache_dir, *device;
    const char *eval_data_dir, *real_fraction;
    int64_t per_class, variations, num_inference_steps, batch_size, seed;
    int64_t eval_steps, eval_epochs, eval_batch_size;
    double strength, guidance_scale, eval_learning_rate;
    bool no_ema, eval;
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
     "class-conditional images per class"},
    {"variations", DC_CLI_INT, FIELD(variations), "K", "0", NULL, 0, MAX_VARIATIONS, false,
     "img2img variations of every real image"},
    {"strength", DC_CLI_FLOAT, FIELD(strength), "X", "0.5", NULL, 0, 1, true,
     "variations: how much noise, in (0, 1]"},
    {"guidance-scale", DC_CLI_FLOAT, FIELD(guidance_scale), "X", "1", NULL, 1, 1e6, false,
     "classifier-free guidance (1: none)"},
    {"scheduler", DC_CLI_STRING, FIELD(scheduler), "NAME", "ddim", NULL, 0, 0, false, "ddpm, ddim or dpm++2m"},
    {"num-inference-steps", DC_CLI_INT, FIELD(num_inference_steps), "N", NULL, "default: 50; ddpm 1000", 1,
     1e6, false, "denoising steps"},
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
    {"eval-steps", DC_CLI_INT, FIELD(eval_steps), "N", "500", NULL, 1, 1e8, false, "classifier training steps"},
    {"eval-epochs", DC_CLI_INT, FIELD(eval_epochs), "N", NULL, "default: use --eval-steps", 1, 1e4, false,
     "classifier training passes over its training set instead"},
    {"eval-batch-size", DC_CLI_INT, FIELD(eval_batch_size), "N", "64", NULL, 1, 65536, false,
     "classifier batch size"},
    {"eval-learning-rate", DC_CLI_FLOAT, FIELD(eval_learning_rate), "X", "0.002", NULL, 0, 1, true,
     "classifier AdamW learning rate (cosine decay)"},
};
#define N_OPTIONS (sizeof options / sizeof options[0])

static const char usage_line[] =
    "usage: diffc augment --model DIR --train-data-dir DIR --output-dir DIR [--per-class N] [--variations K]";

static const char help_intro[] =
    "\n"
    "Make synthetic training data with a trained model: OUTPUT-DIR/<class>/gen_NNNNN.png\n"
    "(--per-class N class-conditional images of every class) and var_SSSSSS_KK.png\n"
    "(--variations K img2img variations of every real image S at --strength), and\n"
    "manifest.jsonl with one line per image (file, class, label, source, seed, stream,\n"
    "strength, guidance, scheduler, steps). Images are those of the model's size and\n"
    "channels; the real images are brought to them as training does.\n"
    "\n"
    "Resumable: a rerun makes only the images the manifest does not list; each image has\n"
    "its own noise stream, so an interrupted and resumed run writes the same files.\n"
    "\n"
    "--eval then trains a small classifier on a class-balanced --real-fraction of the real\n"
    "images, alone and with the synthetic ones, and prints both test accuracies (on the\n"
    "split test of --eval-data-dir).\n"
    "\n"
    "options:\n";

static const dc_cli cli = {"augment", usage_line, help_intro, options, N_OPTIONS};

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
    if (!ao->per_class && !ao->variations && !ao->eval)
        return dc_cli_usage_error(&cli, "%s", "nothing to do: give --per-class N, --variations K or --eval");
    double f[DC_AUGMENT_MAX_FRACTIONS];
    int n_f;
    return ao->eval ? dc_augment_parse_fractions(ao->real_fraction, f, &n_f) : DC_CLI_PARSED;
}

/* ---- the images to make ---- */

typedef struct job {
    char file[MAX_FILE]; /* relative to the output folder */
    int32_t label;       /* of the real dataset; -1 unlabelled */
    int64_t source;      /* variations: the real image; -1 for gen_ */
    uint64_t stream;
} job;

/* One manifest line as read back. */
typedef struct entry {
    char *file, *line; /* line: the text, without its newline */
    double seed, stream, strength, guidance, steps; /* strength NAN for gen_ */
    const char *scheduler;
    cJSON *json;
} entry;

typedef struct run {
    augment_options o;
    dc_model model;
    dc_sampler sampler;
    dc_dataset ds;
    bool ds_open, ctx_ready;
    dc_ctx ctx;
    int side, c, null_class; /* null_class -1: an unconditional model */
    char **class_dirs;       /* [ds.num_classes] folder names */
    job *jobs;
    int64_t n_jobs;
    entry *entries; /* the manifest's lines, sorted by file */
    int64_t n_entries;
    bool *done;     /* [n_jobs] */
    int manifest_fd;
    bool tty;
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
static void set_file(run *r, job *j, const char *name) {
    if (j->label >= 0)
        snprintf(j->file, sizeof j->file, "%s/%s.png", r->class_dirs[j->label], name);
    else
        snprintf(j->file, sizeof j->file, "%s.png", name);
}

/* gen_ images round-robin over the classes (an interrupted run is balanced), then var_. */
static int plan_jobs(run *r) {
    int64_t classes = r->ds.num_classes, n = r->o.per_class * classes + r->o.variations * r->ds.count;
    if (n > 0 && !(r->jobs = calloc((size_t)n, sizeof *r->jobs)))
        return dc_fail("out of memory for %" PRId64 " images", n);
    for (int64_t i = 0; i < r->o.per_class; i++)
        for (int32_t c = 0; c < classes; c++) {
            job *j = &r->jobs[r->n_jobs++];
            *j = (job){.label = c, .source = -1, .stream = ((uint64_t)c << 32) + (uint64_t)i};
            char name[32];
            snprintf(name, sizeof name, "gen_%05" PRId64, i);
            set_file(r, j, name);
        }
    for (int64_t s = 0; s < r->ds.count; s++)
        for (int64_t k = 0; k < r->o.variations; k++) {
            job *j = &r->jobs[r->n_jobs++];
            *j = (job){.label = r->ds.labels[s], .source = s,
                       .stream = VARIATION_STREAMS + ((uint64_t)s << 16) + (uint64_t)k};
            char name[48];
            snprintf(name, sizeof name, "var_%06" PRId64 "_%02" PRId64, s, k);
            set_file(r, j, name);
        }
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

/* Keep a parsed line whose file exists; drop (and count) the rest. */
static void keep_entry(run *r, entry *e, int *dropped) {
    if (file_exists(r, e->file)) {
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

/* 0 when entry e was made with this run's settings for job j. */
static int check_entry(const run *r, const job *j, const entry *e) {
    double strength = j->source >= 0 ? r->o.strength : NAN;
    bool same_strength = isnan(strength) ? isnan(e->strength) : near(e->strength, strength);
    if (near(e->seed, (double)r->o.seed) && near(e->stream, (double)j->stream) && same_strength &&
        near(e->guidance, r->o.guidance_scale) && near(e->steps, r->sampler.n) &&
        !strcmp(e->scheduler, dc_sampler_kind_name(r->sampler.kind)))
        return 0;
    char strength_text[48] = "";
    if (!isnan(strength))
        snprintf(strength_text, sizeof strength_text, ", strength %.9g", strength);
    return dc_fail("%s/%s: %s was made with other settings (%s); this run: seed %" PRId64
                   ", guidance %g%s, %s %d steps. Use the same settings or another --output-dir",
                   r->o.output_dir, MANIFEST, j->file, e->line, r->o.seed, r->o.guidance_scale, strength_text,
                   dc_sampler_kind_name(r->sampler.kind), r->sampler.n);
}

/* done[i]: job i is in the manifest (with its file); count them. */
static int mark_done(run *r, int64_t *n_done) {
    *n_done = 0;
    if (r->n_jobs && !(r->done = calloc((size_t)r->n_jobs, sizeof *r->done)))
        return dc_fail("out of memory");
    for (int64_t i = 0; i < r->n_jobs; i++) {
        entry key = {.file = r->jobs[i].file};
        const entry *e = bsearch(&key, r->entries, (size_t)r->n_entries, sizeof key, by_file);
        if (e && check_entry(r, &r->jobs[i], e))
            return -1;
        r->done[i] = e != NULL;
        *n_done += e != NULL;
    }
    return 0;
}

static cJSON *entry_json(const run *r, const job *j) {
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
    return o;
}

/* One line, one write(): a killed run leaves whole lines or a partial last one. */
static int append_entry(const run *r, const job *j) {
    cJSON *o = entry_json(r, j);
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

/* The dataset's classes against the model's. */
static int check_classes(run *r) {
    int k = r->ds.num_classes;
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
    dc_dataset_options dopt = {.resolution = r->side, .channels = r->c, .split = "train", .cache_dir = r->o.cache_dir};
    if (dc_dataset_open(&r->ds, r->o.train_data_dir, &dopt))
        return -1;
    r->ds_open = true;
    printf("%s: %" PRId64 " images, %d classes, at the model's %dx%d %s (resized and converted as training "
           "does)\n",
           r->o.train_data_dir, r->ds.count, r->ds.num_classes, r->side, r->side, r->c == 1 ? "gray" : "RGB");
    return 0;
}

static int setup(run *r, char **manifest_text) {
    const augment_options *o = &r->o;
    int device;
    r->manifest_fd = -1;
    if (dc_device_resolve(o->device, &device) || dc_model_load_on(&r->model, o->model, !o->no_ema, o->variant, device) ||
        check_model(r) || dc_model_sampler(&r->model, o->scheduler, o->num_inference_steps, NULL, -1, &r->sampler) ||
        open_dataset(r) || check_classes(r) || dc_dir_check_writable(o->output_dir) || make_class_dirs(r) || plan_jobs(r) ||
        read_manifest(r, manifest_text) || dc_model_ctx_init(r->model.device, &r->ctx, ACTIVATION_BYTES))
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
    float *init, *px;
} batch;

static int save(run *r, const job *j, const float *px) {
    dc_image img = {0};
    if (dc_image_alloc(&img, r->side, r->side, r->c))
        return -1;
    int64_t per = (int64_t)r->side * r->side * r->c;
    dc_float_to_u8(img.px, px, (size_t)per);
    char *path = out_path(r, j->file);
    int rc = path ? dc_image_save_png(&img, path) : -1;
    free(path);
    dc_image_free(&img);
    return rc ? rc : append_entry(r, j);
}

static int generate_batch(run *r, batch *b) {
    int64_t per = (int64_t)r->side * r->side * r->c;
    bool img2img = r->jobs[b->idx[0]].source >= 0;
    for (int64_t k = 0; k < b->n; k++) {
        const job *j = &r->jobs[b->idx[k]];
        b->labels[k] = j->label >= 0 ? j->label : r->null_class;
        b->streams[k] = j->stream;
        if (img2img)
            dc_u8_to_float(b->init + k * per, r->ds.pixels + j->source * per, (size_t)per);
    }
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
    if (dc_generate(&r->ctx, &q, b->px))
        return -1;
    for (int64_t k = 0; k < b->n; k++)
        if (save(r, &r->jobs[b->idx[k]], b->px + k * per))
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
        b->init = malloc((size_t)(cap * per) * sizeof(float));
        b->px = malloc((size_t)(cap * per) * sizeof(float));
        if (!b->idx || !b->labels || !b->streams || !b->init || !b->px)
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
        free(b->idx), free(b->labels), free(b->streams), free(b->init), free(b->px);
    free(b);
    return rc;
}

/* ---- evaluation ---- */

static int32_t int_or(const cJSON *obj, const char *key, int64_t none) {
    double v = number_or_nan(obj, key);
    return isnan(v) ? (int32_t)none : (int32_t)v;
}

/* The synthetic set: this run's images, or with nothing to make, every image the manifest lists. */
static int synthetic_set(const run *r, dc_synthetic *syn) {
    bool jobs = r->n_jobs > 0;
    int64_t n = jobs ? r->n_jobs : r->n_entries, cap = n ? n : 1;
    *syn = (dc_synthetic){.n = n};
    syn->paths = calloc((size_t)cap, sizeof *syn->paths);
    syn->labels = malloc((size_t)cap * sizeof *syn->labels);
    syn->source = malloc((size_t)cap * sizeof *syn->source);
    if (!syn->paths || !syn->labels || !syn->source)
        return dc_fail("out of memory");
    for (int64_t i = 0; i < n; i++) {
        const entry *e = jobs ? NULL : &r->entries[i];
        syn->labels[i] = jobs ? r->jobs[i].label : int_or(e->json, "label", -1);
        syn->source[i] = jobs ? r->jobs[i].source : int_or(e->json, "source", -1);
        if (!(syn->paths[i] = out_path(r, jobs ? r->jobs[i].file : e->file)))
            return -1;
        if (syn->labels[i] < 0 || syn->labels[i] >= r->ds.num_classes)
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
                                  .steps = r->o.eval_steps,
                                  .epochs = r->o.eval_epochs,
                                  .batch_size = r->o.eval_batch_size,
                                  .learning_rate = r->o.eval_learning_rate,
                                  .seed = (uint64_t)r->o.seed};
    int rc = synthetic_set(r, &syn) || dc_augment_evaluate(&r->ds, &syn, &eo) ? -1 : 0;
    for (int64_t i = 0; syn.paths && i < syn.n; i++)
        free(syn.paths[i]);
    free(syn.paths);
    free(syn.labels);
    free(syn.source);
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
        printf("%" PRId64 " images to make (%" PRId64 " per class, %" PRId64 " variations of each of %" PRId64
               " real images%s), %" PRId64 " already in %s/%s\n",
               r->n_jobs, r->o.per_class, r->o.variations, r->ds.count, strength, n_done, r->o.output_dir,
               MANIFEST);
        fflush(stdout);
    }
    double t0 = dc_seconds();
    if (!rc)
        rc = generate_all(r, r->n_jobs - n_done);
    if (!rc && r->n_jobs > n_done)
        printf("wrote %" PRId64 " image(s) to %s (%s, %d steps%s); %.1f s, %.2f images/s\n", r->n_jobs - n_done,
               r->o.output_dir, dc_sampler_kind_name(r->sampler.kind), r->sampler.n,
               r->model.ema ? ", EMA weights" : "", dc_seconds() - t0, (double)(r->n_jobs - n_done) / (dc_seconds() - t0));
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
    free(r->jobs);
    free(r->entries);
    free(r->done);
    if (r->ds_open)
        dc_dataset_close(&r->ds);
    dc_sampler_free(&r->sampler);
    dc_model_free(&r->model);
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
