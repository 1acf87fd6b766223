/*
 * The UNet2DModel of `diffc train` (model.h): diffusion on the images
 * themselves, unconditional or class-conditional (num_class_embeds), with
 * --cond-drop-prob of the labels replaced by the null class for
 * classifier-free guidance. Its config comes from --pretrained-model's
 * unet/, --model, or the checkpoint resumed; sample grids are DDIM runs of
 * pipeline/generate.h, one column per class when class-conditional.
 */
#include "model.h"

#include "checkpoint.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/rng.h"
#include "models/unet.h"
#include "pipeline/generate.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct unet_model {
    dc_unet_config cfg;
    dc_unet unet;
    int null_class;  /* -1: unconditional */
    int32_t *labels; /* [train_batch_size] the micro-batch's labels, some dropped */
} unet_model;

/* The config.json of the checkpoint being resumed, for a run without --model. */
static int checkpoint_config(const dc_train_options *o, char **config_path) {
    char *dir = NULL, *weights = NULL;
    if (dc_checkpoint_resolve(o->output_dir, o->resume_from_checkpoint, &dir))
        return -1;
    int rc = dir ? dc_unet_find(dir, "unet", NULL, config_path, &weights, NULL)
                 : dc_fail("--resume-from-checkpoint %s: %s holds no complete checkpoint, and without "
                           "--model or --pretrained-model there is no model to start from",
                           o->resume_from_checkpoint, o->output_dir);
    free(weights);
    free(dir);
    return rc;
}

/* The UNet config: from --pretrained-model's folder, --model, or the checkpoint resumed. */
static int load_config(dc_train_model *m, unet_model *u, char **weights) {
    const dc_train_options *o = m->o;
    char *config_path = NULL, *guessed = NULL;
    *weights = NULL;
    int rc = o->pretrained_model ? dc_unet_find(o->pretrained_model, "unet", o->variant, &config_path, weights,
                                                &guessed)
             : o->model          ? 0
                                 : checkpoint_config(o, &config_path);
    if (guessed && m->root)
        fprintf(stderr, "diffc: note: %s has no plain weights; using its only variant, %s\n", o->pretrained_model,
                guessed);
    free(guessed);
    if (!rc)
        m->unet_json = config_path ? dc_json_load(config_path) : dc_train_options_model_config(o);
    char *text = m->unet_json && !dc_train_model_override_dropout(m) ? dc_json_print(m->unet_json, true) : NULL;
    const char *what = config_path ? config_path : "the model config";
    rc = text ? dc_unet_config_parse(&u->cfg, text, what) || dc_unet_check_ddpm(&u->cfg, what) : -1;
    free(text);
    free(config_path);
    return rc;
}

/* The options of text-to-image training are refused, not ignored. */
static int check_no_text(const dc_train_options *o) {
    static const char *const text_only[] = {"caption-column", "prompt-template", "validation-prompt", "lora-rank",
                                            "lora-alpha"};
    for (size_t i = 0; i < sizeof text_only / sizeof text_only[0]; i++)
        if (dc_train_options_given(o, text_only[i]))
            return dc_fail("--%s is an option of text-to-image training (--pretrained-model a "
                           "StableDiffusionPipeline folder); this run trains a UNet2DModel", text_only[i]);
    return 0;
}

static int declare(dc_train_model *m, char **weights) {
    unet_model *u = m->impl;
    if (check_no_text(m->o) || load_config(m, u, weights) || dc_unet_init(&u->unet, &u->cfg, &m->ps))
        return -1;
    u->unet.gradient_checkpointing = m->o->gradient_checkpointing;
    u->null_class = dc_unet_null_class(&u->cfg);
    u->labels = malloc((size_t)m->o->train_batch_size * sizeof *u->labels);
    return u->labels ? 0 : dc_fail("out of memory");
}

static void dataset_options(const dc_train_model *m, dc_dataset_options *d) {
    d->resolution = (int)m->o->resolution;
}

/* The data must fit the model: channels, classes, a size the UNet can halve. */
static int open_data(dc_train_model *m, dc_ctx *ctx) {
    (void)ctx;
    const unet_model *u = m->impl;
    const dc_unet_config *c = &u->cfg;
    const dc_dataset *ds = m->ds;
    const char *data = m->o->train_data_dir;
    int halvings = 1 << (c->levels - 1);
    if (m->o->resolution % halvings)
        return dc_fail("--resolution %" PRId64 " is not divisible by %d, which the model's %d levels "
                       "of down-sampling need", m->o->resolution, halvings, c->levels);
    if (ds->c != c->in_channels)
        return dc_fail("%s: the images have %d channel%s, the model's in_channels is %d", data, ds->c,
                       ds->c == 1 ? "" : "s", c->in_channels);
    if (u->null_class >= 0 && ds->num_classes == 0)
        return dc_fail("%s: the model is class-conditional (num_class_embeds %d) but the data has "
                       "no labels", data, c->num_class_embeds);
    if (u->null_class >= 0 && ds->num_classes > u->null_class)
        return dc_fail("%s: %d classes, but num_class_embeds %d leaves room for %d (the last label "
                       "is the 'no class' label of classifier-free guidance)",
                       data, ds->num_classes, c->num_class_embeds, u->null_class);
    m->x0_h = ds->h, m->x0_w = ds->w, m->x0_c = ds->c;
    return 0;
}

static dc_tensor *x0(dc_train_model *m, dc_ctx *ctx, const dc_batch *b) {
    (void)m;
    return dc_from_host(ctx, DC_F32, DC_SHAPE(b->n, b->h, b->w, b->c), b->images);
}

/* Labels of the batch, with --cond-drop-prob of them replaced by the null class. */
static dc_tensor *batch_labels(dc_train_model *m, dc_ctx *ctx, const dc_batch *b) {
    unet_model *u = m->impl;
    if (u->null_class < 0)
        return NULL;
    for (int i = 0; i < b->n; i++)
        u->labels[i] = dc_rand_uniform((uint64_t)m->o->seed, DC_TRAIN_STREAM_LABEL_DROP,
                                       (uint64_t)(b->position + i)) < m->o->cond_drop_prob
                           ? u->null_class
                           : b->labels[i];
    return dc_from_host(ctx, DC_I32, DC_SHAPE(b->n), u->labels);
}

static dc_tensor *forward(dc_train_model *m, dc_ctx *ctx, const dc_batch *b, dc_tensor *xt, dc_tensor *t) {
    unet_model *u = m->impl;
    return dc_unet_forward(ctx, &u->unet, xt, t, batch_labels(m, ctx, b));
}

/* --eval-batch-size images of DDIM; class-conditional: one column per class. */
static int sample(dc_train_model *m, dc_ctx *ctx, const dc_noise_schedule *sched, uint64_t seed,
                  dc_train_grid *g) {
    unet_model *u = m->impl;
    int64_t n = m->o->eval_batch_size;
    int classes = m->ds->num_classes;
    *g = (dc_train_grid){.n = n, .h = m->x0_h, .w = m->x0_w, .c = m->x0_c,
                         .cols = u->null_class >= 0 ? classes : (int)ceil(sqrt((double)n))};
    g->px = malloc((size_t)(n * g->h * g->w * g->c) * sizeof *g->px);
    int32_t *labels = u->null_class >= 0 ? malloc((size_t)n * sizeof *labels) : NULL;
    int rc = g->px && (u->null_class < 0 || labels) ? 0 : dc_fail("out of memory for the sample grid");
    for (int64_t i = 0; labels && i < n; i++)
        labels[i] = (int32_t)(i % classes);
    dc_sampler s = {0};
    dc_sampler_options so = dc_sampler_default_options(DC_SAMPLER_DDIM);
    so.num_inference_steps = (int)m->o->ddpm_num_inference_steps;
    dc_generate_request r = {.unet = &u->unet, .sampler = &s, .n = n, .batch = n, .h = g->h, .w = g->w,
                             .labels = labels, .guidance_scale = 1.0f, .seed = seed};
    if (!rc)
        rc = dc_sampler_init(&s, DC_SAMPLER_DDIM, sched, &so) || dc_generate(ctx, &r, g->px);
    dc_sampler_free(&s);
    free(labels);
    return rc;
}

static void model_free(dc_train_model *m) {
    unet_model *u = m->impl;
    if (!u)
        return;
    dc_unet_free(&u->unet);
    dc_unet_config_free(&u->cfg);
    free(u->labels);
    free(u);
}

static const dc_train_model_ops ops = {declare, dataset_options, open_data, x0, forward, sample, model_free};

int dc_train_model_unet_init(dc_train_model *m) {
    m->ops = &ops;
    m->loader_flips = true;
    m->impl = calloc(1, sizeof(unet_model));
    return m->impl ? 0 : dc_fail("out of memory");
}
