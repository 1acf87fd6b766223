/*
 * `diffc sample`: images from a trained model, as PNG files and a grid.
 *
 * The model is any diffusers UNet2DModel folder (infer/model.h), with the
 * EMA weights when it has them; the sampler is DDPM, DDIM or DPM-Solver++(2M)
 * with the folder's scheduler settings, then the command line's. Images are
 * made in batches by dc_generate and written as each batch ends, so memory
 * does not grow with --num-images. Image i of seed s draws Philox stream
 * (s, i), so it is the same whatever --batch-size (the samplers' noise
 * contract).
 *
 * Class-conditional models get their labels from --class-label, cycled over
 * the images (default: every class in turn); --guidance-scale > 1 runs
 * classifier-free guidance against the "no class" label. With --init-image
 * (a file, or a folder whose images are used in turn) the images start from
 * those images noised part-way (SDEdit, diffusers' img2img).
 *
 * A Stable Diffusion pipeline folder (pipeline/sd_pipeline.h) makes images from
 * text instead: --prompt or --prompt-file (one prompt a line), each made
 * --num-images times, with the folder's scheduler unless --scheduler names
 * another, guided at 7.5 unless told; img2img as StableDiffusionImg2ImgPipeline.
 * Each PNG carries its prompt and settings in a text chunk, and
 * metadata.jsonl pairs the files with their prompts (the layout `diffc
 * train` and datasets read back).
 */
#define _GNU_SOURCE /* strdup */
#include "commands.h"

#include "autograd/clock.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/image.h"
#include "data/metadata.h"
#include "infer/cli.h"
#include "infer/model.h"
#include "pipeline/generate.h"
#include "pipeline/sd_pipeline.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_IMAGES 16
#define DEFAULT_BATCH 16
#define DEFAULT_SCHEDULER "ddim"
#define SD_STEPS 50       /* StableDiffusionPipeline's num_inference_steps */
#define SD_GUIDANCE 7.5   /* and guidance_scale */
#define GRID_MAX 100                        /* grid.png shows the first GRID_MAX images */
#define ACTIVATION_BYTES ((size_t)64 << 30) /* reserved lazily: only what a step touches is used */

/* ---- options ---- */

typedef struct sample_options {
    const char *model, *variant, *output_dir, *scheduler, *timestep_spacing, *class_label, *init_image, *device,
        *mixed_precision, *prompt, *prompt_file, *negative_prompt, *lora, *weights_dtype;
    int64_t num_inference_steps;          /* 0: the scheduler's default */
    int64_t num_images;                   /* 0: DEFAULT_IMAGES, or one per init image */
    int64_t batch_size, seed, resolution; /* resolution 0: the model's sample_size */
    int64_t height, width, clip_skip;     /* text-to-image; 0: the model's size */
    double eta, guidance_scale, strength; /* guidance_scale 0: the kind's default */
    double lora_scale;
    bool no_ema;
} sample_options;

#define FIELD(f) offsetof(sample_options, f)

static const dc_cli_option options[] = {
    {"model", DC_CLI_STRING, FIELD(model), "DIR", NULL, "required", 0, 0, false,
     "a diffusers pipeline or UNet folder"},
    {"variant", DC_CLI_STRING, FIELD(variant), "NAME", NULL, "default: the plain weights", 0, 0, false,
     "weights of this variant (diffusion_pytorch_model.NAME.safetensors, e.g. fp16)"},
    {"output-dir", DC_CLI_STRING, FIELD(output_dir), "DIR", NULL, "required", 0, 0, false,
     "where the images go"},
    {"scheduler", DC_CLI_STRING, FIELD(scheduler), "NAME", NULL, "default: ddim; a text-to-image pipeline's own",
     0, 0, false, "ddpm, ddim, dpm++2m, pndm, euler, euler_a or lms"},
    {"num-inference-steps", DC_CLI_INT, FIELD(num_inference_steps), "N", NULL, "default: 50; ddpm 1000", 1, 1e6,
     false, "denoising steps"},
    {"eta", DC_CLI_FLOAT, FIELD(eta), "X", "0", NULL, 0, 1e6, false,
     "ddim's noise: 0 deterministic, 1 ddpm-like"},
    {"timestep-spacing", DC_CLI_STRING, FIELD(timestep_spacing), "NAME", NULL, "default: the model's", 0, 0,
     false, "leading, trailing or linspace"},
    {"num-images", DC_CLI_INT, FIELD(num_images), "N", NULL, "default: 16, or one per init image or prompt", 1,
     1e8, false, "images to make (text-to-image: per prompt)"},
    {"batch-size", DC_CLI_INT, FIELD(batch_size), "N", NULL, "default: 16; text-to-image 1", 1, 65536, false,
     "images denoised together"},
    {"prompt", DC_CLI_STRING, FIELD(prompt), "TEXT", NULL, "default: none", 0, 0, false,
     "text-to-image: what to draw"},
    {"prompt-file", DC_CLI_STRING, FIELD(prompt_file), "FILE", NULL, "default: none", 0, 0, false,
     "text-to-image: one prompt a line"},
    {"negative-prompt", DC_CLI_STRING, FIELD(negative_prompt), "TEXT", NULL, "default: none", 0, 0, false,
     "text-to-image: what to guide away from"},
    {"height", DC_CLI_INT, FIELD(height), "N", NULL, "default: the model's", 8, 65536, false,
     "text-to-image: image height in pixels"},
    {"width", DC_CLI_INT, FIELD(width), "N", NULL, "default: the model's", 8, 65536, false,
     "text-to-image: image width in pixels"},
    {"clip-skip", DC_CLI_INT, FIELD(clip_skip), "N", "0", NULL, 0, 1024, false,
     "text-to-image: text encoder layers to skip"},
    {"lora", DC_CLI_STRING, FIELD(lora), "DIR|FILE", NULL, "default: none", 0, 0, false,
     "text-to-image: a LoRA (pytorch_lora_weights.safetensors) fused into the weights"},
    {"lora-scale", DC_CLI_FLOAT, FIELD(lora_scale), "X", "1", NULL, -1e6, 1e6, false,
     "text-to-image: the LoRA's weight"},
    {"weights-dtype", DC_CLI_STRING, FIELD(weights_dtype), "f32|f16", NULL, "default: f16", 0, 0, false,
     "text-to-image on the CPU: the conv and linear weights' precision (sums stay f32)"},
    {"class-label", DC_CLI_STRING, FIELD(class_label), "K|LIST|all", NULL, "default: all", 0, 0, false,
     "class labels, cycled over the images"},
    {"guidance-scale", DC_CLI_FLOAT, FIELD(guidance_scale), "X", NULL, "default: 1; text-to-image 7.5", 1, 1e6,
     false, "classifier-free guidance (1: none)"},
    {"seed", DC_CLI_INT, FIELD(seed), "N", "0", NULL, 0, 9007199254740992.0, false, "the noise's seed"},
    {"resolution", DC_CLI_INT, FIELD(resolution), "N", NULL, "default: the model's sample_size", 1, 65536, false,
     "image side in pixels"},
    {"init-image", DC_CLI_STRING, FIELD(init_image), "FILE|DIR", NULL, "default: none", 0, 0, false,
     "img2img: start from these images"},
    {"strength", DC_CLI_FLOAT, FIELD(strength), "X", "0.8", NULL, 0, 1, true,
     "img2img: how much noise, in (0, 1]"},
    DC_CLI_NO_EMA_ROW,
    DC_CLI_DEVICE_ROW(""),
    DC_CLI_MIXED_PRECISION_ROW,
};
#define N_OPTIONS (sizeof options / sizeof options[0])

static const char usage_line[] = "usage: diffc sample --model DIR --output-dir DIR [options]";

static const char help_intro[] =
    "\n"
    "Generate images with a trained diffusion model: OUTPUT-DIR/00000.png, 00001.png, ...\n"
    "and grid.png (the first 100). The model is a diffusers pipeline folder (unet/,\n"
    "scheduler/scheduler_config.json; the EMA weights of unet_ema/ when it has them) or a\n"
    "UNet folder (config.json, diffusion_pytorch_model.safetensors; DDPM's default schedule).\n"
    "The sampler takes the folder's scheduler settings, then --timestep-spacing and the rest.\n"
    "Image i of seed s is the same whatever the batch size.\n"
    "\n"
    "Class-conditional models: --class-label is a label K, a list \"0,3,5\" or all (every\n"
    "class), cycled over the images. The model's last label (num_class_embeds - 1) means\n"
    "'no class': --guidance-scale X > 1 guides away from it (classifier-free guidance).\n"
    "\n"
    "img2img (SDEdit): --init-image FILE, or DIR to use its images in turn, converted and\n"
    "resized to the model's channels and size when they differ; each is noised to the\n"
    "step --strength selects and denoised from there (1: from almost pure noise).\n"
    "\n"
    "Text-to-image: a Stable Diffusion pipeline folder (model_index.json with tokenizer/,\n"
    "text_encoder/, unet/, vae/, scheduler/, as diffusers saves it) and --prompt TEXT or\n"
    "--prompt-file FILE (one prompt a line); --num-images images per prompt. The PNGs carry\n"
    "their prompt and settings in a 'parameters' text chunk; metadata.jsonl lists them.\n"
    "\n"
    "options:\n";

static const dc_cli cli = {"sample", usage_line, help_intro, options, N_OPTIONS};

/* DC_CLI_PARSED, DC_CLI_HELP, DC_CLI_USAGE, or -1 after dc_fail for a bad value. */
static int parse_args(sample_options *so, int argc, char **argv) {
    memset(so, 0, sizeof *so);
    int rc = dc_cli_parse(&cli, so, argc, argv);
    if (rc)
        return rc;
    if (!so->model)
        return dc_cli_usage_error(&cli, "%s", "sample needs --model DIR");
    if (!so->output_dir)
        return dc_cli_usage_error(&cli, "%s", "sample needs --output-dir DIR");
    return DC_CLI_PARSED;
}

/* ---- what the options mean for this model ---- */

/* The labels cycled over the images: --class-label's, or every class. */
static int class_labels(const sample_options *so, const dc_unet_config *c, int32_t **labels, int *n) {
    *labels = NULL;
    *n = 0;
    int null_class = dc_unet_null_class(c);
    if (null_class < 0) {
        if (so->class_label)
            return dc_fail(
                "--class-label %s: the model is unconditional (its config has no num_class_embeds)",
                so->class_label);
        return so->guidance_scale > 1 ? dc_fail("--guidance-scale %g: the model is unconditional, there is "
                                                "nothing to guide towards",
                                                so->guidance_scale)
                                      : 0;
    }
    const char *spec = so->class_label ? so->class_label : "all";
    if (!strcmp(spec, "all")) { /* every class; a model of the 'no class' label alone has that */
        *n = null_class > 0 ? null_class : 1;
        if (!(*labels = malloc((size_t)*n * sizeof **labels)))
            return dc_fail("out of memory");
        for (int k = 0; k < *n; k++)
            (*labels)[k] = k;
        return 0;
    }
    int cap = 1;
    for (const char *p = spec; *p; p++)
        cap += *p == ',';
    if (!(*labels = malloc((size_t)cap * sizeof **labels)))
        return dc_fail("out of memory");
    for (const char *p = spec;; p++) { /* p: the start of a label */
        char *end;
        errno = 0;
        long k = strtol(p, &end, 10);
        if (end == p || (*end && *end != ',') || errno)
            return dc_fail("--class-label '%s': expected a label, a list such as 0,3,5, or all", spec);
        if (k < 0 || k >= c->num_class_embeds)
            return dc_fail("--class-label %ld: the model's labels are 0..%d (num_class_embeds %d; %d is its "
                           "'no class' label)",
                           k, c->num_class_embeds - 1, c->num_class_embeds, null_class);
        (*labels)[(*n)++] = (int32_t)k;
        if (!*end)
            return 0;
        p = end;
    }
}

/* Image size: --resolution, else the config's sample_size; one the UNet can halve. */
static int image_size(const sample_options *so, const dc_unet_config *c, int *h, int *w) {
    *h = so->resolution ? (int)so->resolution : c->sample_size[0];
    *w = so->resolution ? (int)so->resolution : c->sample_size[1];
    if (*h < 1 || *w < 1)
        return dc_fail("the model's config has no sample_size: give --resolution");
    int halvings = 1 << (c->levels - 1);
    if (*h % halvings || *w % halvings)
        return dc_fail(
            "%s %dx%d: the sides must be multiples of %d for the model's %d levels of down-sampling",
            so->resolution ? "--resolution" : "the model's sample_size", *w, *h, halvings, c->levels);
    return 0;
}

/* ---- init images (img2img) ---- */

typedef struct init_images {
    float *px; /* [n, h, w, c] in [-1, 1] */
    int64_t n, cap;
    int h, w, c;
} init_images;

/* Decode `path` and bring it to the model's channels and size, with a note when it had to. */
static int add_init_image(init_images *in, const char *path) {
    dc_image img = {0}, sized = {0};
    char note[128];
    int rc = dc_image_load(&img, path) || dc_image_fit(&sized, &img, in->c, in->w, in->h, note, sizeof note);
    if (!rc && note[0])
        fprintf(stderr, "diffc: note: %s: %s\n", path, note);
    int64_t per = (int64_t)in->h * in->w * in->c;
    if (!rc && in->n == in->cap) {
        int64_t cap = in->cap ? 2 * in->cap : 8;
        float *px = realloc(in->px, (size_t)(cap * per) * sizeof *px);
        rc = px ? 0 : dc_fail("%s: out of memory for %" PRId64 " init images", path, cap);
        if (px)
            in->px = px, in->cap = cap;
    }
    if (!rc)
        dc_u8_to_float(in->px + in->n++ * per, sized.px, (size_t)per);
    dc_image_free(&img);
    dc_image_free(&sized);
    return rc;
}

static int skip_hidden(const struct dirent *e) { return e->d_name[0] != '.'; }

/* Every file directly in `dir`, in name order; unreadable ones are skipped with a warning. */
static int add_init_folder(init_images *in, const char *dir) {
    struct dirent **names;
    int n = scandir(dir, &names, skip_hidden, alphasort);
    if (n < 0)
        return dc_fail("%s: cannot list the folder: %s", dir, strerror(errno));
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        char *path = dc_path_join(dir, names[i]->d_name);
        struct stat st;
        rc = path ? 0 : -1;
        if (!rc && stat(path, &st) == 0 && S_ISREG(st.st_mode) && add_init_image(in, path))
            fprintf(stderr, "diffc: warning: skipped: %s\n", dc_error());
        free(path);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (!rc && in->n == 0)
        rc = dc_fail("%s: no image to start from in the folder (--init-image)", dir);
    return rc;
}

static int load_init_images(init_images *in, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0)
        return dc_fail("--init-image %s: cannot open: %s", path, strerror(errno));
    return S_ISDIR(st.st_mode) ? add_init_folder(in, path) : add_init_image(in, path);
}

/* ---- the run ---- */

typedef struct run {
    sample_options o;
    bool text;          /* a text-to-image pipeline: sd is loaded, model is not */
    dc_model model;
    dc_sd_pipeline sd;
    char **prompts;     /* [n_prompts] text-to-image; image k has prompt k / per_prompt */
    int64_t n_prompts, per_prompt;
    const char **batch_prompts; /* [batch] this batch's */
    int metadata;       /* OUTPUT-DIR/metadata.jsonl (text-to-image), or -1 */
    int device;
    dc_sampler sampler;
    dc_ctx ctx;
    bool ctx_ready;
    int h, w, c;
    int start; /* the first step run: 0, or later with img2img */
    int64_t n, per;
    int32_t *cycle; /* [n_cycle] class labels cycled over the images; NULL: unconditional */
    int n_cycle;
    init_images init;
    int32_t *labels;   /* [batch] this batch's */
    float *batch_init; /* [batch, per] this batch's init images */
    float *px;         /* [batch, per] this batch's images */
    dc_image *grid;    /* [min(n, GRID_MAX)] */
    bool tty;
    int64_t n_batches, batch_first; /* batches; the first image of the one running */
    double step_at, step_sum;       /* the last step's end; the time of the steps after */
    int64_t step_count;             /*   each run's first, which times the model alone */
} run;

/* dc_generate runs one batch at a time here, so its `first` is always 0. */
static void on_step(void *arg, int64_t first, int64_t b, int done, int steps) {
    run *r = arg;
    double now = dc_seconds();
    if (done > 1)
        r->step_sum += now - r->step_at, r->step_count++;
    r->step_at = now;
    if (r->tty)
        fprintf(stderr, "\rbatch %" PRId64 "/%" PRId64 " (images %" PRId64 "-%" PRId64 "): step %d/%d   ",
                r->batch_first / r->o.batch_size + 1, r->n_batches, r->batch_first, r->batch_first + b - 1,
                done, steps);
}

/* The options only a text-to-image pipeline reads: the first given, or NULL. */
static const char *text_option(const sample_options *o) {
    return o->prompt            ? "--prompt"
           : o->prompt_file     ? "--prompt-file"
           : o->negative_prompt ? "--negative-prompt"
           : o->height          ? "--height"
           : o->width           ? "--width"
           : o->clip_skip       ? "--clip-skip"
           : o->lora            ? "--lora"
           : o->weights_dtype   ? "--weights-dtype"
                                : NULL;
}

/* A UNet2DModel folder: its labels, size, sampler and channels. */
static int setup_unet(run *r) {
    const sample_options *o = &r->o;
    if (text_option(o))
        return dc_fail("%s: %s is not a text-to-image pipeline (a model_index.json naming a text_encoder "
                       "and a vae)",
                       text_option(o), o->model);
    if (dc_model_load_on(&r->model, o->model, !o->no_ema, o->variant, r->device) ||
        dc_params_pack(&r->model.ps))
        return -1;
    const dc_unet_config *c = &r->model.cfg;
    if (class_labels(o, c, &r->cycle, &r->n_cycle) || image_size(o, c, &r->h, &r->w) ||
        dc_model_sampler(&r->model, o->scheduler ? o->scheduler : DEFAULT_SCHEDULER, o->num_inference_steps,
                         o->timestep_spacing, o->eta,
                         &r->sampler))
        return -1;
    r->c = c->in_channels;
    if (r->c != 1 && r->c != 3)
        return dc_fail("%s: the model makes images of %d channels; PNG files take 1 (gray) or 3 (RGB)",
                       o->model, r->c);
    return 0;
}

/* Image size: --height and --width (or --resolution), else the UNet's sample_size in pixels. */
static int text_image_size(run *r) {
    const sample_options *o = &r->o;
    int f = dc_sd_latent_scale(&r->sd);
    const int *s = r->sd.unet.cfg.sample_size;
    r->h = o->height ? (int)o->height : o->resolution ? (int)o->resolution : s[0] * f;
    r->w = o->width ? (int)o->width : o->resolution ? (int)o->resolution : s[1] * f;
    if (r->h < 1 || r->w < 1)
        return dc_fail("the UNet's config has no sample_size: give --height and --width");
    if (r->h % f || r->w % f)
        return dc_fail("%dx%d: the sides must be multiples of %d (the VAE's down-sampling)", r->w, r->h, f);
    return 0;
}

/* A Stable Diffusion pipeline folder: its prompts, size and sampler. */
static int setup_text(run *r) {
    const sample_options *o = &r->o;
    if (o->class_label || o->timestep_spacing)
        return dc_fail("%s: a text-to-image pipeline takes prompts and its scheduler's own spacing",
                       o->class_label ? "--class-label" : "--timestep-spacing");
    const char *dtype = o->weights_dtype ? o->weights_dtype : "f16";
    if (strcmp(dtype, "f16") && strcmp(dtype, "f32"))
        return dc_fail("--weights-dtype %.32s: f32 or f16", dtype);
    if (dc_sd_load_lora(&r->sd, o->model, o->variant, r->device, o->lora, (float)o->lora_scale,
                        !strcmp(dtype, "f16")) ||
        dc_prompts_read(o->prompt, o->prompt_file, &r->prompts, &r->n_prompts) || text_image_size(r) ||
        dc_sd_sampler(&r->sd, o->scheduler, o->num_inference_steps ? (int)o->num_inference_steps : SD_STEPS,
                      &r->sampler))
        return -1;
    r->c = 3;
    r->per_prompt = o->num_images ? o->num_images : 1;
    return 0;
}

/* OUTPUT-DIR/metadata.jsonl, made anew: the images of this run and their prompts. */
static int open_metadata(run *r) {
    char *path = dc_path_join(r->o.output_dir, DC_METADATA_FILE);
    r->metadata = path ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : -1;
    int rc = r->metadata < 0 && path ? dc_fail("%s: cannot create: %s", path, strerror(errno)) : path ? 0 : -1;
    free(path);
    return rc;
}

static int setup(run *r) {
    sample_options *o = &r->o;
    if (dc_cli_resolve_device(o->device, o->mixed_precision, &r->device))
        return -1;
    r->text = dc_sd_is_pipeline(o->model);
    o->batch_size = o->batch_size ? o->batch_size : r->text ? 1 : DEFAULT_BATCH;
    o->guidance_scale = o->guidance_scale ? o->guidance_scale : r->text ? SD_GUIDANCE : 1;
    if (r->text ? setup_text(r) : setup_unet(r))
        return -1;
    r->per = (int64_t)r->h * r->w * r->c;
    if (o->init_image) {
        r->init = (init_images){.h = r->h, .w = r->w, .c = r->c};
        if (dc_sampler_img2img_start(&r->sampler, o->strength, &r->start) ||
            load_init_images(&r->init, o->init_image))
            return -1;
    }
    r->n = r->text             ? r->n_prompts * r->per_prompt
           : o->num_images     ? o->num_images
           : o->init_image     ? r->init.n
                               : DEFAULT_IMAGES;
    int64_t b = o->batch_size < r->n ? o->batch_size : r->n;
    r->n_batches = (r->n + o->batch_size - 1) / o->batch_size;
    r->labels = malloc((size_t)b * sizeof *r->labels);
    r->batch_prompts = malloc((size_t)b * sizeof *r->batch_prompts);
    r->batch_init = o->init_image ? malloc((size_t)(b * r->per) * sizeof(float)) : NULL;
    r->px = malloc((size_t)(b * r->per) * sizeof(float));
    r->grid = calloc((size_t)(r->n < GRID_MAX ? r->n : GRID_MAX), sizeof *r->grid);
    if (!r->labels || !r->batch_prompts || (o->init_image && !r->batch_init) || !r->px || !r->grid)
        return dc_fail("out of memory for batches of %" PRId64 " images of %dx%d", b, r->w, r->h);
    if (dc_dir_check_writable(o->output_dir) || (r->text && open_metadata(r)) ||
        dc_model_ctx_init(r->device, &r->ctx, ACTIVATION_BYTES))
        return -1;
    r->ctx_ready = true;
    r->tty = isatty(fileno(stderr));
    return 0;
}

/* The denoising steps a run takes: PNDM evaluates the model once more than
 * its steps (twice at its second timestep), the other samplers once a step. */
static int steps_run(const run *r) {
    int n = r->sampler.opt.num_inference_steps;
    return (r->sampler.n < n ? r->sampler.n : n) - r->start;
}

/* How text-to-image image i was made, in the "parameters" layout image
 * viewers and other tools read: the prompt, then the settings. */
static char *parameters(const run *r, int64_t i) {
    const sample_options *o = &r->o;
    char *text = NULL;
    if (asprintf(&text,
                 "%s\nNegative prompt: %s\nSteps: %d, Sampler: %s, CFG scale: %g, Seed: %" PRId64
                 ", Image: %" PRId64 ", Size: %dx%d, Model: %s%s",
                 r->prompts[i / r->per_prompt], o->negative_prompt ? o->negative_prompt : "",
                 steps_run(r), dc_sampler_kind_name(r->sampler.kind), o->guidance_scale, o->seed, i,
                 r->w, r->h, o->model, o->init_image ? ", img2img" : "") < 0)
        return NULL;
    return text;
}

/* Image i's file name and, for text-to-image, its prompt in the PNG and in metadata.jsonl. */
static int write_image(const run *r, int64_t i, const dc_image *img) {
    char name[32], *path = NULL, *params = NULL;
    snprintf(name, sizeof name, "%05" PRId64 ".png", i);
    if (!(path = dc_path_join(r->o.output_dir, name)) || (r->text && !(params = parameters(r, i)))) {
        free(path);
        return dc_fail("out of memory");
    }
    dc_image_text chunk = {"parameters", params};
    int rc = dc_image_save_png_text(img, path, &chunk, r->text ? 1 : 0);
    if (!rc && r->text)
        rc = dc_metadata_append(r->metadata, DC_METADATA_FILE, name, r->prompts[i / r->per_prompt]);
    free(params);
    free(path);
    return rc;
}

/* Write image i (its pixels at px) as NNNNN.png, and keep it for the grid. */
static int save_image(run *r, int64_t i, const float *px) {
    dc_image img = {0};
    if (dc_image_alloc(&img, r->w, r->h, r->c))
        return -1;
    dc_float_to_u8(img.px, px, (size_t)r->per);
    int rc = write_image(r, i, &img);
    if (!rc && i < GRID_MAX)
        r->grid[i] = img;
    else
        dc_image_free(&img);
    return rc;
}

/* The batch's images from their prompts. */
static int generate_text(run *r, int64_t first, int64_t b) {
    for (int64_t k = 0; k < b; k++)
        r->batch_prompts[k] = r->prompts[(first + k) / r->per_prompt];
    dc_sd_request q = {.sampler = &r->sampler,
                       .n = b,
                       .batch = b,
                       .h = r->h,
                       .w = r->w,
                       .prompts = r->batch_prompts,
                       .negative = r->o.negative_prompt,
                       .guidance_scale = (float)r->o.guidance_scale,
                       .clip_skip = (int)r->o.clip_skip,
                       .seed = (uint64_t)r->o.seed,
                       .first_image = (uint64_t)first,
                       .init = r->batch_init,
                       .strength = r->o.strength,
                       .on_step = on_step,
                       .on_step_arg = r};
    return dc_sd_generate(&r->ctx, &r->sd, &q, r->px);
}

/* The batch's images from the UNet2DModel, with their class labels. */
static int generate_unet(run *r, int64_t first, int64_t b) {
    for (int64_t k = 0; k < b && r->cycle; k++)
        r->labels[k] = r->cycle[(first + k) % r->n_cycle];
    dc_generate_request q = {.unet = &r->model.unet,
                             .sampler = &r->sampler,
                             .n = b,
                             .batch = b,
                             .h = r->h,
                             .w = r->w,
                             .labels = r->cycle ? r->labels : NULL,
                             .guidance_scale = (float)r->o.guidance_scale,
                             .seed = (uint64_t)r->o.seed,
                             .first_image = (uint64_t)first,
                             .init = r->batch_init,
                             .strength = r->o.strength,
                             .on_step = on_step,
                             .on_step_arg = r};
    return dc_generate(&r->ctx, &q, r->px);
}

static int sample_batch(run *r, int64_t first, int64_t b) {
    for (int64_t k = 0; k < b && r->batch_init; k++)
        memcpy(r->batch_init + k * r->per, r->init.px + (first + k) % r->init.n * r->per,
               (size_t)r->per * sizeof(float));
    r->batch_first = first;
    if (r->text ? generate_text(r, first, b) : generate_unet(r, first, b))
        return -1;
    for (int64_t k = 0; k < b; k++)
        if (save_image(r, first + k, r->px + k * r->per))
            return -1;
    return 0;
}

/* Square-ish; with several cycled class labels, one column per label. */
static int save_grid(const run *r) {
    int n = (int)(r->n < GRID_MAX ? r->n : GRID_MAX), cols = (int)ceil(sqrt((double)n));
    if (r->n_cycle > 1 && r->n_cycle <= 32 && n > r->n_cycle)
        cols = r->n_cycle;
    dc_image grid = {0};
    char *path = dc_path_join(r->o.output_dir, "grid.png");
    int rc = path ? dc_image_grid(&grid, r->grid, n, cols, 2) : -1;
    if (!rc)
        rc = dc_image_save_png(&grid, path);
    dc_image_free(&grid);
    free(path);
    return rc;
}

static int sample_all(run *r) {
    double t0 = dc_seconds();
    for (int64_t first = 0; first < r->n; first += r->o.batch_size)
        if (sample_batch(r, first, r->n - first < r->o.batch_size ? r->n - first : r->o.batch_size))
            return -1;
    if (save_grid(r))
        return -1;
    double s = dc_seconds() - t0;
    if (r->tty)
        fputc('\n', stderr);
    printf("%" PRId64 " image%s of %dx%d (%s, %d steps%s%s) in %s: 00000.png .. %05" PRId64
           ".png, grid.png%s; %.1f s, %.2f images/s, %.3f s per step\n",
           r->n, r->n == 1 ? "" : "s", r->w, r->h, dc_sampler_kind_name(r->sampler.kind),
           steps_run(r), r->o.init_image ? " of img2img" : "", r->model.ema ? ", EMA weights" : "",
           r->o.output_dir, r->n - 1, r->text ? ", " DC_METADATA_FILE : "", s, (double)r->n / s,
           r->step_count ? r->step_sum / (double)r->step_count : s / (double)steps_run(r));
    return 0;
}

static void run_free(run *r) {
    if (r->ctx_ready)
        dc_ctx_free(&r->ctx);
    for (int64_t i = 0; r->grid && i < r->n && i < GRID_MAX; i++)
        dc_image_free(&r->grid[i]);
    free(r->grid);
    free(r->px);
    free(r->batch_init);
    free(r->labels);
    free(r->init.px);
    free(r->cycle);
    for (int64_t i = 0; r->prompts && i < r->n_prompts; i++)
        free(r->prompts[i]);
    free(r->prompts);
    free(r->batch_prompts);
    if (r->metadata >= 0)
        close(r->metadata);
    dc_sd_free(&r->sd);
    dc_sampler_free(&r->sampler);
    dc_model_free(&r->model);
}

int dc_cmd_sample(int argc, char **argv) {
    run r = {.metadata = -1};
    int rc = parse_args(&r.o, argc, argv);
    if (rc == DC_CLI_HELP) {
        dc_cli_help(&cli, stdout);
        return 0;
    }
    if (rc == DC_CLI_USAGE)
        return 2;
    if (!rc)
        rc = setup(&r) || sample_all(&r) ? -1 : 0;
    if (rc) {
        fprintf(stderr, "%sdiffc: error: %s\n", r.tty ? "\n" : "", dc_error());
        rc = 1;
    }
    run_free(&r);
    return rc;
}
