/*
 * Stable Diffusion in `diffc train` (model.h): full fine-tuning of the
 * UNet2DConditionModel of a StableDiffusionPipeline folder, as diffusers'
 * train_text_to_image.py does, its VAE and text encoder frozen.
 *
 * Prompts: each image's caption from the folder's metadata.jsonl (the key
 * --caption-column), or with --prompt-template the template with {class}
 * replaced by the image's class folder. Each distinct prompt is encoded
 * once, at the start, with the empty prompt among them; --cond-drop-prob
 * replaces an image's prompt by the empty one, drawn for its stream
 * position (DC_TRAIN_STREAM_LABEL_DROP), for classifier-free guidance.
 *
 * Latents: the dataset caches each image resized (shorter side to
 * --resolution; when not given, the UNet's sample_size in pixels, 512 for
 * SD-1.5) and centre-cropped, as diffusers' script does with
 * --center-crop (random crops would need the VAE on every step). At the
 * start every image is encoded once: the mean and the std of its latent
 * distribution are kept (both orientations with --random-flip, whose coin
 * is then drawn here, per stream position, from DC_TRAIN_STREAM_FLIP; the
 * loader flips nothing), in a file beside the dataset's cache
 * (<cache>.latents-<fingerprint>.safetensors, the fingerprint of the
 * dataset cache's name, the VAE's weights and the flips), which later runs
 * read instead of running the VAE again. A step draws the sample mean + std * eps with eps
 * from DC_TRAIN_STREAM_LATENT at the image's position, and scales it:
 * latents = (z - shift_factor) * scaling_factor, diffusers'
 * latent_dist.sample() * scaling_factor. The VAE never runs in a step.
 *
 * Sample grids: the pipeline's own scheduler, --ddpm-num-inference-steps
 * steps (50 unless given, the pipelines' default), guidance 7.5, at
 * --resolution, the prompts of --validation-prompt ('|' between them; unset:
 * the first image's prompt), through pipeline/sd_pipeline.h's loop.
 *
 * The output folders (checkpoints, the final model) take the pretrained
 * folder's model_index.json, scheduler, tokenizer, text encoder and VAE
 * (checkpoint.h: dc_pipeline.frozen_from) beside the trained unet/.
 */
#define _GNU_SOURCE /* strdup */
#include "model.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/rng.h"
#include "autograd/safetensors.h"
#include "data/image.h"
#include "data/metadata.h"
#include "models/lora.h"
#include "models/unet_cond.h"
#include "pipeline/sd_pipeline.h"
#include "state.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GRID_GUIDANCE 7.5f /* StableDiffusionPipeline's default, as diffusers' validation runs it */
#define GRID_STEPS 50      /* likewise */

typedef struct sd_model {
    dc_sd_pipeline sd;         /* the frozen parts; its unet stays empty */
    int64_t resolution;        /* --resolution, or the UNet's sample_size in pixels when not given */
    dc_unet_cond_config cfg;
    dc_unet_cond unet;         /* the trained UNet, in m->ps (with --lora-rank: in base, its adapters in m->ps) */
    dc_params base;            /* --lora-rank: the UNet's own weights, frozen */
    dc_lora lora;              /* --lora-rank: the adapters */
    int64_t tokens, width;     /* of a prompt's embeds */
    int64_t n_prompts;         /* distinct prompts, the empty one first */
    char **prompts;            /* [n_prompts] */
    float *embeds;             /* [n_prompts, tokens, width] */
    int64_t *prompt_of;        /* [ds->count] each image's index into prompts */
    int flips;                 /* 2 with --random-flip, else 1 */
    int64_t lper;              /* floats of one image's latents */
    float *moments;            /* [count, flips, 2, lper]: mean, then std */
    float *batch_x0;           /* [train_batch_size, lper] */
    float *batch_text;         /* [train_batch_size, tokens, width] */
} sd_model;

/* ---- the model ---- */

/* --resolution, or, when not given, what the pipeline was trained at (its
 * UNet's sample_size in pixels: 512 for SD-1.5), as diffusers' script
 * defaults to 512 rather than to train_unconditional's 64. */
static void pick_resolution(const dc_train_model *m, sd_model *s) {
    int64_t native = (int64_t)s->cfg.sample_size[0] * dc_sd_latent_scale(&s->sd);
    s->resolution = m->o->resolution;
    if (dc_train_options_given(m->o, "resolution") || native <= 0)
        return;
    s->resolution = native;
    if (m->root)
        fprintf(stderr, "diffc: --resolution not given: %" PRId64 ", the UNet's sample_size %d times the VAE's "
                "factor %d\n", native, s->cfg.sample_size[0], dc_sd_latent_scale(&s->sd));
}

/* --lora-rank: the UNet loaded from *weights and frozen in s->base, the
 * adapters declared in m->ps (the loop draws them: PEFT's init); *weights
 * taken, so that the loop loads nothing. */
static int declare_lora(dc_train_model *m, sd_model *s, char **weights) {
    const dc_train_options *o = m->o;
    if (o->use_ema)
        return dc_fail("--use-ema with --lora-rank: the adapters have no EMA (diffusers' LoRA training has "
                       "none either)");
    float alpha = isnan(o->lora_alpha) ? (float)o->lora_rank : (float)o->lora_alpha;
    int rc = dc_unet_cond_init(&s->unet, &s->cfg, &s->base) ||
             dc_params_alloc_load(&s->base, m->device, *weights, dc_unet_rename) ||
             dc_lora_declare_unet(&s->lora, &s->unet, &s->base, &m->ps, (int)o->lora_rank, alpha);
    free(*weights);
    *weights = NULL;
    if (rc)
        return -1;
    dc_params_freeze(&s->base);
    m->lora = &s->lora;
    m->frozen_bytes += s->base.total * sizeof(float);
    return 0;
}

static int declare(dc_train_model *m, char **weights) {
    sd_model *s = m->impl;
    const dc_train_options *o = m->o;
    char *config_path = NULL, *guessed = NULL, *text = NULL;
    int rc = dc_sd_load_frozen(&s->sd, o->pretrained_model, o->variant, m->device) ||
             dc_unet_find(o->pretrained_model, "unet", o->variant, &config_path, weights, &guessed);
    if (guessed && m->root)
        fprintf(stderr, "diffc: note: %s/unet has no plain weights; using its only variant, %s\n",
                o->pretrained_model, guessed);
    if (!rc && (!(m->unet_json = dc_json_load(config_path)) || dc_train_model_override_dropout(m)))
        rc = -1;
    if (!rc && !(text = dc_json_print(m->unet_json, true)))
        rc = dc_fail("out of memory");
    if (!rc)
        rc = dc_unet_cond_config_parse(&s->cfg, text, config_path) ||
             dc_sd_check_unet(&s->sd, &s->cfg, o->pretrained_model);
    free(text);
    free(guessed);
    free(config_path);
    m->frozen_from = o->pretrained_model;
    if (!rc) /* values only: dc_sd_load_frozen froze them */
        m->frozen_bytes = (s->sd.text_encoder->params.total + s->sd.vae->params.total) * sizeof(float);
    if (!rc)
        rc = o->lora_rank ? declare_lora(m, s, weights) : dc_unet_cond_init(&s->unet, &s->cfg, &m->ps);
    s->unet.gradient_checkpointing = o->gradient_checkpointing;
    if (!rc)
        pick_resolution(m, s);
    return rc;
}

static void dataset_options(const dc_train_model *m, dc_dataset_options *d) {
    d->resolution = (int)((const sd_model *)m->impl)->resolution;
    d->channels = 3;
    d->caption_column = m->o->caption_column;
}

/* ---- prompts ---- */

/* The prompt of image i: its caption, or the template filled with its class
 * (and caption). NULL after dc_fail. */
static char *prompt_of(const dc_train_model *m, int64_t i) {
    const dc_dataset *ds = m->ds;
    const char *caption = ds->captions ? ds->captions[i] : NULL;
    if (!m->o->prompt_template) {
        char *p = strdup(caption);
        if (!p)
            dc_fail("out of memory");
        return p;
    }
    return dc_prompt_from_template(m->o->prompt_template, ds->labels[i] >= 0 ? ds->class_names[ds->labels[i]] : NULL,
                                   caption);
}

/* The data can give every image a prompt. */
static int check_prompts(const dc_train_model *m) {
    const dc_train_options *o = m->o;
    const dc_dataset *ds = m->ds;
    if (o->prompt_template && !strstr(o->prompt_template, "{class}") && !strstr(o->prompt_template, "{caption}"))
        return dc_fail("--prompt-template '%s' has no {class} (nor {caption}) to fill in", o->prompt_template);
    if (o->prompt_template && strstr(o->prompt_template, "{class}") && ds->num_classes == 0)
        return dc_fail("%s: --prompt-template needs class folders (a subfolder per class), the data has no "
                       "classes", o->train_data_dir);
    if (o->prompt_template)
        return 0;
    if (!ds->captions)
        return dc_fail("%s: no captions: text-to-image training reads them from metadata.jsonl "
                       "({\"file_name\": ..., \"%s\": ...} per image), or give --prompt-template",
                       o->train_data_dir, o->caption_column);
    int64_t missing = 0, first = -1;
    for (int64_t i = 0; i < ds->count; i++)
        if (!ds->captions[i] || !ds->captions[i][0])
            missing++, first = first < 0 ? i : first;
    if (missing)
        return dc_fail("%s: %" PRId64 " of %" PRId64 " images have no \"%s\" in metadata.jsonl (the first is image "
                       "%" PRId64 "); every image needs a caption (--caption-column names the key)",
                       o->train_data_dir, missing, ds->count, o->caption_column, first);
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* s->prompts: the distinct prompts, sorted, "" first; s->prompt_of. */
static int collect_prompts(dc_train_model *m, sd_model *s) {
    int64_t n = m->ds->count;
    char **all = calloc((size_t)n + 1, sizeof *all);
    s->prompt_of = malloc((size_t)n * sizeof *s->prompt_of);
    int rc = all && s->prompt_of ? 0 : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i <= n; i++)
        if (!(all[i] = i ? prompt_of(m, i - 1) : strdup("")))
            rc = i ? -1 : dc_fail("out of memory");
    if (rc) {
        for (int64_t i = 0; all && i <= n; i++)
            free(all[i]);
        free(all);
        return -1;
    }
    qsort(all, (size_t)n + 1, sizeof *all, cmp_str); /* "" sorts first */
    int64_t k = 0;
    for (int64_t i = 0; i <= n; i++) {
        if (k && !strcmp(all[k - 1], all[i]))
            free(all[i]);
        else
            all[k++] = all[i];
    }
    s->prompts = all;
    s->n_prompts = k;
    for (int64_t i = 0; !rc && i < n; i++) {
        char *p = prompt_of(m, i);
        rc = p ? 0 : -1;
        if (p)
            s->prompt_of[i] = (char **)bsearch(&p, all, (size_t)k, sizeof *all, cmp_str) - all;
        free(p);
    }
    return rc;
}

/* Every distinct prompt's embeds, a few at a time. */
static int encode_prompts(sd_model *s, dc_ctx *ctx) {
    enum { CHUNK = 8 };
    int64_t per = s->tokens * s->width;
    s->embeds = malloc((size_t)(s->n_prompts * per) * sizeof *s->embeds);
    if (!s->embeds)
        return dc_fail("out of memory for the embeds of %" PRId64 " distinct prompts", s->n_prompts);
    for (int64_t i = 0; i < s->n_prompts; i += CHUNK) {
        int64_t n = s->n_prompts - i < CHUNK ? s->n_prompts - i : CHUNK;
        if (dc_sd_encode_text(ctx, &s->sd, (const char *const *)s->prompts + i, n, 0, s->embeds + i * per))
            return -1;
    }
    return 0;
}

/* ---- latents ---- */

/* Image i of the dataset, flipped or not, into x [h, w, 3] in [-1, 1]. */
static void image_of(const dc_dataset *ds, int64_t i, bool flip, float *x) {
    size_t row = (size_t)ds->w * 3;
    const uint8_t *px = ds->pixels + (size_t)i * ds->h * row;
    dc_u8_to_float(x, px, (size_t)ds->h * row);
    for (int y = 0; flip && y < ds->h; y++)
        for (int a = 0, b = ds->w - 1; a < b; a++, b--)
            for (int c = 0; c < 3; c++) {
                float t = x[y * row + a * 3 + c];
                x[y * row + a * 3 + c] = x[y * row + b * 3 + c];
                x[y * row + b * 3 + c] = t;
            }
}

/* The moments of every image through the VAE. */
static int run_vae(dc_train_model *m, sd_model *s, dc_ctx *ctx) {
    const dc_dataset *ds = m->ds;
    float *x = malloc((size_t)ds->h * ds->w * 3 * sizeof *x);
    int rc = x ? 0 : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < ds->count; i++)
        for (int f = 0; !rc && f < s->flips; f++) {
            float *out = s->moments + (i * s->flips + f) * 2 * s->lper;
            dc_vae_latent_dist d;
            image_of(ds, i, f, x);
            dc_ctx_reset(ctx);
            dc_tensor *img = dc_from_host(ctx, DC_F32, DC_SHAPE(1, ds->h, ds->w, 3), x);
            rc = !img || dc_vae_encode(ctx, s->sd.vae, img, &d) ||
                 dc_memcpy(out, DC_CPU, d.mean->data, ctx->device, (size_t)s->lper * sizeof(float)) ||
                 dc_memcpy(out + s->lper, DC_CPU, d.std->data, ctx->device, (size_t)s->lper * sizeof(float));
        }
    free(x);
    return rc;
}

/* ---- the latents' cache ---- */

#define LATENT_CACHE_FORMAT "diffc-sd-latents-1"


static uint64_t hash_words(uint64_t h, const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w = 0;
        memcpy(&w, b + i, n - i < 8 ? n - i : 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return h;
}

/* Beside the dataset's cache, named by what the moments depend on: the
 * dataset cache (source, resolution: its name has their fingerprint), the
 * VAE's weights and the flips. NULL after dc_fail. */
static char *latent_cache_path(const dc_train_model *m, const sd_model *s) {
    const dc_params *vae = &s->sd.vae->params;
    float *copy;
    const float *w = dc_train_on_host(vae->device, vae->data, vae->total, &copy);
    if (!w)
        return NULL;
    uint64_t h = hash_words(0xcbf29ce484222325ull, LATENT_CACHE_FORMAT, sizeof LATENT_CACHE_FORMAT);
    h = hash_words(h, w, vae->total * sizeof *w);
    h = hash_words(h, m->ds->cache_path, strlen(m->ds->cache_path));
    h = hash_words(h, &s->flips, sizeof s->flips);
    free(copy);
    const char *dot = strrchr(m->ds->cache_path, '.');
    int stem = dot ? (int)(dot - m->ds->cache_path) : (int)strlen(m->ds->cache_path);
    char *path;
    if (asprintf(&path, "%.*s.latents-%016" PRIx64 ".safetensors", stem, m->ds->cache_path, h) < 0)
        return dc_fail("out of memory"), NULL;
    return path;
}

/* s->moments from the cache file at `path`: 1 when read, 0 when there is
 * none or it does not hold what this run needs (it is then rebuilt). */
static int read_latent_cache(const char *path, sd_model *s, int64_t count) {
    dc_st_file f;
    if (access(path, F_OK) != 0 || dc_st_open(&f, path))
        return 0;
    const dc_st_tensor *t = dc_st_find(&f, "moments");
    const char *format = dc_st_meta(&f, "format");
    size_t n = (size_t)(count * s->flips * 2 * s->lper);
    bool ok = t && format && !strcmp(format, LATENT_CACHE_FORMAT) && !strcmp(t->dtype_name, "F32") &&
              t->ndim == 4 && t->shape[0] == count && t->shape[1] == s->flips && t->shape[2] == 2 &&
              t->shape[3] == s->lper && t->nbytes == n * sizeof(float);
    for (size_t i = 0; ok && i < n; i++)
        ok = isfinite(((const float *)t->data)[i]);
    if (ok)
        memcpy(s->moments, t->data, t->nbytes);
    dc_st_close(&f);
    return ok;
}

static int write_latent_cache(const char *path, const sd_model *s, int64_t count) {
    static const char *const keys[] = {"format"}, *const values[] = {LATENT_CACHE_FORMAT};
    dc_st_tensor t = {.name = "moments", .dtype_name = "F32", .ndim = 4,
                      .shape = {count, s->flips, 2, s->lper}, .data = s->moments,
                      .nbytes = (size_t)(count * s->flips * 2 * s->lper) * sizeof(float)};
    return dc_st_write(path, &t, 1, keys, values, 1);
}

/* The latent distribution of every image (and of its mirror image): from
 * the cache when an earlier run left it, else from the VAE (rank 0 then
 * writes the cache; the other ranks compute the same and keep it). */
static int encode_images(dc_train_model *m, sd_model *s, dc_ctx *ctx) {
    const dc_dataset *ds = m->ds;
    s->moments = malloc((size_t)(ds->count * s->flips * 2 * s->lper) * sizeof *s->moments);
    char *path = s->moments ? latent_cache_path(m, s) : NULL;
    int rc = !s->moments ? dc_fail("out of memory for the latents of %" PRId64 " images", ds->count)
             : !path     ? -1
             : read_latent_cache(path, s, ds->count) ? 1
                                                     : 0;
    if (rc == 0 && !(rc = run_vae(m, s, ctx)) && m->root)
        rc = write_latent_cache(path, s, ds->count);
    if (rc >= 0 && m->root)
        fprintf(stderr, "diffc: latents of %" PRId64 " images%s %s %s\n", ds->count,
                s->flips == 2 ? " and their mirror images" : "", rc == 1 ? "read from" : "cached in", path);
    free(path);
    return rc < 0 ? -1 : 0;
}

static int open_data(dc_train_model *m, dc_ctx *ctx) {
    sd_model *s = m->impl;
    const dc_dataset *ds = m->ds;
    int f = dc_sd_latent_scale(&s->sd), side = f << (s->cfg.levels - 1);
    if (s->resolution % side)
        return dc_fail("--resolution %" PRId64 " is not divisible by %d: the VAE divides it by %d and the "
                       "UNet's %d levels halve that %d times", s->resolution, side, f, s->cfg.levels,
                       s->cfg.levels - 1);
    if (check_prompts(m))
        return -1;
    m->x0_h = ds->h / f, m->x0_w = ds->w / f, m->x0_c = s->sd.vae->cfg.latent_channels;
    s->lper = (int64_t)m->x0_h * m->x0_w * m->x0_c;
    s->flips = m->o->random_flip ? 2 : 1;
    dc_sd_text_shape(&s->sd, &s->tokens, &s->width);
    size_t batch = (size_t)m->o->train_batch_size;
    s->batch_x0 = malloc(batch * (size_t)s->lper * sizeof *s->batch_x0);
    s->batch_text = malloc(batch * (size_t)(s->tokens * s->width) * sizeof *s->batch_text);
    if (!s->batch_x0 || !s->batch_text)
        return dc_fail("out of memory");
    bool grad = dc_set_grad_enabled(ctx, false);
    int rc = collect_prompts(m, s) || encode_prompts(s, ctx) || encode_images(m, s, ctx);
    dc_set_grad_enabled(ctx, grad);
    dc_ctx_reset(ctx);
    if (!rc && m->root)
        fprintf(stderr, "diffc: %" PRId64 " images as %dx%dx%d latents, %" PRId64 " distinct prompts\n", ds->count,
                m->x0_h, m->x0_w, m->x0_c, s->n_prompts - 1);
    return rc;
}

/* ---- a step ---- */

void dc_train_sd_latents(const float *mean, const float *std, const float *eps, int64_t n, float scaling_factor,
                         float shift_factor, float *out) {
    for (int64_t k = 0; k < n; k++)
        out[k] = (mean[k] + std[k] * eps[k] - shift_factor) * scaling_factor;
}

/* Image j of the batch: its latents drawn from the cached distribution. */
static dc_tensor *x0(dc_train_model *m, dc_ctx *ctx, const dc_batch *b) {
    sd_model *s = m->impl;
    uint64_t seed = (uint64_t)m->o->seed;
    float scale = s->sd.vae->cfg.scaling_factor, shift = s->sd.vae->cfg.shift_factor;
    for (int j = 0; j < b->n; j++) {
        uint64_t p = (uint64_t)(b->position + j);
        int flip = s->flips == 2 && dc_rand_uniform(seed, DC_TRAIN_STREAM_FLIP, p) < 0.5f;
        const float *mean = s->moments + (b->ids[j] * s->flips + flip) * 2 * s->lper, *std = mean + s->lper;
        float *z = s->batch_x0 + j * s->lper;
        dc_fill_normal(z, s->lper, seed, DC_TRAIN_STREAM_LATENT, p * (uint64_t)s->lper);
        dc_train_sd_latents(mean, std, z, s->lper, scale, shift, z);
    }
    return dc_from_host(ctx, DC_F32, DC_SHAPE(b->n, m->x0_h, m->x0_w, m->x0_c), s->batch_x0);
}

/* The batch's prompt embeds, --cond-drop-prob of them the empty prompt's. */
static dc_tensor *batch_text(dc_train_model *m, dc_ctx *ctx, const dc_batch *b) {
    sd_model *s = m->impl;
    int64_t per = s->tokens * s->width;
    for (int j = 0; j < b->n; j++) {
        bool drop = dc_rand_uniform((uint64_t)m->o->seed, DC_TRAIN_STREAM_LABEL_DROP, (uint64_t)(b->position + j)) <
                    m->o->cond_drop_prob;
        int64_t k = drop ? 0 : s->prompt_of[b->ids[j]];
        memcpy(s->batch_text + j * per, s->embeds + k * per, (size_t)per * sizeof(float));
    }
    return dc_from_host(ctx, DC_F32, DC_SHAPE(b->n, s->tokens, s->width), s->batch_text);
}

static dc_tensor *forward(dc_train_model *m, dc_ctx *ctx, const dc_batch *b, dc_tensor *xt, dc_tensor *t) {
    sd_model *s = m->impl;
    dc_tensor *text = batch_text(m, ctx, b);
    return text ? dc_unet_cond_forward(ctx, &s->unet, xt, t, text) : NULL;
}

/* ---- sample grids ---- */

/* --validation-prompt split at '|' (or the first image's prompt) into *out[*n]. */
static int grid_prompts(const dc_train_model *m, const sd_model *s, char **text, const char ***out, int64_t *n) {
    const char *given = m->o->validation_prompt;
    *text = strdup(given ? given : s->prompts[s->prompt_of[0]]);
    int64_t count = 1;
    for (const char *c = *text; *text && *c; c++)
        count += *c == '|';
    *out = *text ? malloc((size_t)count * sizeof **out) : NULL;
    if (!*out)
        return dc_fail("out of memory");
    *n = 0;
    for (char *save = NULL, *p = strtok_r(*text, "|", &save); p; p = strtok_r(NULL, "|", &save))
        (*out)[(*n)++] = p;
    return *n ? 0 : dc_fail("--validation-prompt '%s' holds no prompt", given);
}

/* The number of denoising steps: --ddpm-num-inference-steps when given, else the pipelines' default. */
static int grid_steps(const dc_train_options *o) {
    return dc_train_options_given(o, "ddpm_num_inference_steps") ? (int)o->ddpm_num_inference_steps : GRID_STEPS;
}

static int sample(dc_train_model *m, dc_ctx *ctx, const dc_noise_schedule *sched, uint64_t seed,
                  dc_train_grid *g) {
    (void)sched; /* the pipeline's own scheduler, as a user of the folder samples */
    sd_model *s = m->impl;
    int64_t n = m->o->eval_batch_size, n_texts = 0;
    char *text = NULL;
    const char **texts = NULL, **prompts = malloc((size_t)n * sizeof *prompts);
    *g = (dc_train_grid){.n = n, .h = (int)s->resolution, .w = (int)s->resolution, .c = 3};
    g->px = malloc((size_t)(n * g->h * g->w * 3) * sizeof *g->px);
    int rc = prompts && g->px ? grid_prompts(m, s, &text, &texts, &n_texts) : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < n; i++)
        prompts[i] = texts[i % n_texts];
    g->cols = rc ? 1 : n_texts < n ? (int)n_texts : (int)ceil(sqrt((double)n));
    dc_sampler sampler = {0};
    dc_sd_pipeline view = s->sd; /* the frozen parts with the trained UNet; not freed */
    view.unet = s->unet;
    dc_sd_request r = {.sampler = &sampler, .n = n, .batch = n, .h = g->h, .w = g->w, .prompts = prompts,
                       .guidance_scale = GRID_GUIDANCE, .seed = seed};
    if (!rc)
        rc = dc_sd_sampler(&view, NULL, grid_steps(m->o), &sampler) || dc_sd_generate(ctx, &view, &r, g->px);
    dc_sampler_free(&sampler);
    free(prompts);
    free(texts);
    free(text);
    return rc;
}

static void model_free(dc_train_model *m) {
    sd_model *s = m->impl;
    if (!s)
        return;
    dc_sd_free(&s->sd);
    dc_lora_free(&s->lora);
    dc_unet_cond_free(&s->unet);
    dc_params_free(&s->base);
    dc_unet_cond_config_free(&s->cfg);
    for (int64_t i = 0; i < s->n_prompts; i++)
        free(s->prompts[i]);
    free(s->prompts);
    free(s->embeds);
    free(s->prompt_of);
    free(s->moments);
    free(s->batch_x0);
    free(s->batch_text);
    free(s);
}

static const dc_train_model_ops ops = {declare, dataset_options, open_data, x0, forward, sample, model_free};

int dc_train_model_sd_init(dc_train_model *m) {
    m->ops = &ops;
    m->loader_flips = false;
    m->impl = calloc(1, sizeof(sd_model));
    return m->impl ? 0 : dc_fail("out of memory");
}
