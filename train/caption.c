/*
 * `diffc train-caption` (see caption.h): the loop of train.c for a BLIP
 * captioner, on the same modules.
 *
 * Data: the training folder is opened as a dataset (data/dataset.h) at the
 * model's image_size, so the loader's order, shards, flips and cursor are
 * those of `diffc train` (resume and several ranks rely on them); an image
 * of another size is resized as the dataset resizes (shorter side, centre
 * crop), not squashed as BlipImageProcessor does. Its pixels are then
 * rescaled and normalised with the model folder's processor config. Every
 * image needs a caption.
 *
 * A step: --gradient-accumulation-steps micro-batches, their gradients
 * summed and averaged over the ranks (dist.h), clipped to --max-grad-norm,
 * AdamW at the scheduled learning rate (over the text decoder only with
 * --freeze-vision: the vision weights lead the flat buffer), then the EMA.
 * A non-finite loss or gradient skips the step; MAX_BAD_STEPS in a row stop
 * the run. Nothing in a step is random but the loader's draws: the BLIP
 * model has no dropout (models/blip.c).
 *
 * Output: the output folder and each checkpoint-<step> are transformers
 * model folders (config.json, model.safetensors with the state_dict's names
 * and layouts, and the tokenizer and processor files copied from --model),
 * which BlipForConditionalGeneration.from_pretrained and `diffc caption
 * --model` read; a checkpoint adds ema/ (with --use-ema) and
 * train_state.safetensors (AdamW's moments, the counters, the loader's
 * cursor, the options), so --resume-from-checkpoint continues exactly: on
 * the CPU to the same weights, bit for bit. The final model holds the EMA
 * weights when --use-ema is on.
 */
#define _GNU_SOURCE /* strdup */
#include "caption.h"

#include "checkpoint.h"
#include "dist.h"
#include "memory.h"
#include "metrics.h"
#include "options.h"
#include "run_dir.h"
#include "signals.h"
#include "state.h"

#include "autograd/clock.h"
#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/optim.h"
#include "data/dataset.h"
#include "data/image_processor.h"
#include "data/loader.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_BAD_STEPS 5                     /* non-finite steps in a row that stop the run */
#define STATE_VERSION "caption-1"           /* of train_state.safetensors */
#define ACTIVATION_BYTES ((size_t)64 << 30) /* reserved lazily: only what a step touches is used */
#define LOADER_PREFETCH 2
#define EMA_DIR "ema"
#define DEFAULT_MAX_LENGTH 40 /* tokens, when --max-length is 0: room for a long caption */

/* ---- the loss ---- */

int dc_caption_tokens(const dc_wordpiece *tok, const dc_blip_text_config *t, const int32_t *prompt,
                      int64_t n_prompt, const char *caption, int64_t max_length, int32_t *ids, int32_t *labels) {
    int32_t *words = NULL;
    int64_t n_words = 0, room = max_length - 2 - n_prompt;
    if (room < 1)
        return dc_fail("--max-length %" PRId64 " leaves no room for a caption after [DEC] and %" PRId64
                       " prompt tokens", max_length, n_prompt);
    if (dc_wordpiece_encode(tok, caption, false, &words, &n_words))
        return -1;
    int64_t keep = n_words < room ? n_words : room, k = 0;
    ids[k++] = t->bos_token_id;
    for (int64_t i = 0; i < n_prompt; i++)
        ids[k++] = prompt[i];
    for (int64_t i = 0; i < keep; i++)
        ids[k++] = words[i];
    ids[k++] = t->sep_token_id;
    for (int64_t i = 0; i < max_length; i++)
        labels[i] = i >= 1 + n_prompt && i < k ? ids[i] : DC_CAPTION_IGNORE;
    for (; k < max_length; k++)
        ids[k] = t->pad_token_id;
    free(words);
    return 0;
}

dc_tensor *dc_caption_loss(dc_ctx *ctx, const dc_blip *m, dc_tensor *pixels, const int32_t *ids,
                           const int32_t *labels, int64_t n, int64_t t, float smoothing, bool freeze_vision) {
    int64_t v = m->cfg.text.vocab_size;
    int32_t *next = malloc((size_t)(n * t) * sizeof *next);
    if (!next) {
        dc_fail("out of memory");
        return NULL;
    }
    for (int64_t i = 0; i < n * t; i++) /* position j predicts label j + 1; the last predicts nothing */
        next[i] = i % t == t - 1 ? DC_CAPTION_IGNORE : labels[i + 1];
    bool grad = dc_set_grad_enabled(ctx, !freeze_vision && ctx->grad_enabled);
    dc_tensor *images = dc_blip_vision_forward(ctx, m, pixels);
    dc_set_grad_enabled(ctx, grad);
    dc_tensor *tokens = dc_from_host(ctx, DC_I32, DC_SHAPE(n, t), ids);
    dc_tensor *targets = dc_from_host(ctx, DC_I32, DC_SHAPE(n * t), next);
    free(next);
    dc_tensor *logits = images && tokens ? dc_blip_text_logits(ctx, m, tokens, images) : NULL;
    dc_tensor *flat = logits ? dc_reshape(ctx, logits, DC_SHAPE(n * t, v)) : NULL;
    return flat && targets ? dc_cross_entropy_ex(ctx, flat, targets, DC_CAPTION_IGNORE, smoothing) : NULL;
}

/* ---- the trainer ---- */

typedef struct trainer {
    dc_train_options o;
    dc_dist dist;
    dc_run_dir out;
    int device;
    dc_math math;
    dc_blip *model;
    dc_params *ps;           /* model->params */
    dc_wordpiece *tok;
    dc_image_processor proc;
    int32_t *prompt;
    int64_t n_prompt;
    float smoothing;
    dc_dataset ds;
    dc_loader *loader;
    dc_adamw opt;
    size_t opt_lo, opt_n;    /* AdamW's part of the flat buffers: all, or the text decoder's */
    dc_ema ema;
    dc_lr_schedule lr_schedule;
    dc_ctx ctx;
    float *pixels;           /* [batch, S, S, 3] host */
    int32_t *ids, *labels;   /* [batch, max_length] host */
    int64_t step, total;
    char *resumed_from;
    int bad_steps, signal;
    dc_metrics *metrics;
    dc_progress progress;
} trainer;

static int64_t global_batch(const trainer *tr) {
    return tr->dist.world * tr->o.train_batch_size * tr->o.gradient_accumulation_steps;
}

/* ---- setting up ---- */

/* The first float of the text decoder: every vision weight lies below it. */
static int text_offset(const trainer *tr, size_t *lo) {
    *lo = tr->ps->total;
    for (int i = 0; i < tr->ps->n; i++)
        if (!strncmp(tr->ps->p[i]->name, "text_decoder.", 13) && tr->ps->p[i]->offset < *lo)
            *lo = tr->ps->p[i]->offset;
    for (int i = 0; i < tr->ps->n; i++)
        if (strncmp(tr->ps->p[i]->name, "text_decoder.", 13) && tr->ps->p[i]->offset >= *lo)
            return dc_fail("--freeze-vision: %s lies among the text decoder's weights", tr->ps->p[i]->name);
    return 0;
}

/* transformers' default smoothing: BlipTextLMHeadModel reads text_config's
 * label_smoothing (BlipConfig's own is not passed on), 0 when absent. */
static int config_smoothing(const char *dir, float *out) {
    char *path = dc_path_join(dir, DC_BLIP_CONFIG_FILE);
    cJSON *j = path ? dc_json_load(path) : NULL;
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text_config");
    double v = 0;
    int rc = !j || dc_json_get_number(cJSON_IsObject(text) ? text : NULL, "label_smoothing", path, &v) ? -1 : 0;
    if (!rc && !(v >= 0 && v <= 1))
        rc = dc_fail("%s: text_config's label_smoothing %g is outside [0, 1]", path, v);
    *out = (float)v;
    cJSON_Delete(j);
    free(path);
    return rc;
}

static int load_model(trainer *tr) {
    const char *dir = tr->o.model;
    if (dc_blip_load(&tr->model, dir, tr->device) || dc_wordpiece_load(&tr->tok, dir) ||
        dc_image_processor_load_dir(&tr->proc, dir))
        return -1;
    const dc_blip_config *c = &tr->model->cfg;
    tr->ps = &tr->model->params;
    if (tr->proc.height != c->vision.image_size || tr->proc.width != c->vision.image_size)
        return dc_fail("%s: the processor makes %dx%d images, the model takes %dx%d", dir, tr->proc.width,
                       tr->proc.height, c->vision.image_size, c->vision.image_size);
    if (c->text.bos_token_id < 0 || c->text.sep_token_id < 0 || c->text.pad_token_id < 0)
        return dc_fail("%s: config.json's text_config needs bos_token_id, sep_token_id and pad_token_id", dir);
    if (!tr->o.max_length)
        tr->o.max_length = c->text.max_position_embeddings < DEFAULT_MAX_LENGTH ? c->text.max_position_embeddings
                                                                                : DEFAULT_MAX_LENGTH;
    if (tr->o.max_length > c->text.max_position_embeddings)
        return dc_fail("--max-length %" PRId64 " is over the model's %d positions", tr->o.max_length,
                       c->text.max_position_embeddings);
    if (tr->o.prompt && dc_wordpiece_encode(tr->tok, tr->o.prompt, false, &tr->prompt, &tr->n_prompt))
        return dc_fail_prefix("--prompt");
    if (tr->o.max_length < tr->n_prompt + 3)
        return dc_fail("--max-length %" PRId64 " leaves no room for a caption after [DEC] and the prompt's %"
                       PRId64 " tokens", tr->o.max_length, tr->n_prompt);
    tr->smoothing = (float)tr->o.label_smoothing;
    return isnan(tr->o.label_smoothing) ? config_smoothing(dir, &tr->smoothing) : 0;
}

static int setup_optimizer(trainer *tr) {
    size_t lo = 0;
    if (tr->o.freeze_vision && text_offset(tr, &lo))
        return -1;
    tr->opt_lo = lo;
    tr->opt_n = tr->ps->total - lo;
    if (dc_adamw_init_on(&tr->opt, tr->device, tr->opt_n, tr->o.adam_beta1, tr->o.adam_beta2, tr->o.adam_epsilon,
                         tr->o.adam_weight_decay) ||
        dc_lr_schedule_parse(tr->o.lr_scheduler, &tr->lr_schedule))
        return -1;
    dc_ema_config e = dc_train_options_ema(&tr->o);
    return tr->o.use_ema ? dc_ema_init_on(&tr->ema, tr->device, tr->ps->data, tr->ps->total, &e) : 0;
}

/* ---- checkpoints and model folders ---- */

typedef struct folder {
    const trainer *tr;
    const float *weights, *ema; /* ema NULL: no ema/ */
} folder;

/* The tokenizer and processor files of --model (its .json and .txt files
 * but the weights' index and a training run's config) into dir. */
static bool is_side_file(const char *name) {
    size_t n = strlen(name);
    bool text = (n > 5 && !strcmp(name + n - 5, ".json")) || (n > 4 && !strcmp(name + n - 4, ".txt"));
    return text && strcmp(name, DC_BLIP_CONFIG_FILE) && strcmp(name, "model.safetensors.index.json") &&
           strcmp(name, DC_TRAIN_CONFIG_FILE);
}

static int copy_file(const char *from_dir, const char *to_dir, const char *name) {
    char *src = dc_path_join(from_dir, name), *dst = dc_path_join(to_dir, name);
    size_t n = 0;
    char *data = src && dst ? dc_read_file(src, (size_t)1 << 30, &n) : NULL;
    int rc = data ? dc_write_file(dst, data, n, true) : -1;
    free(data);
    free(src);
    free(dst);
    return rc;
}

static int copy_side_files(const char *model_dir, const char *dir) {
    DIR *d = opendir(model_dir);
    if (!d)
        return dc_fail("%s: cannot list the folder: %s", model_dir, strerror(errno));
    int rc = copy_file(model_dir, dir, DC_BLIP_CONFIG_FILE);
    struct dirent *e;
    while (!rc && (e = readdir(d)))
        if (is_side_file(e->d_name) && strcmp(model_dir, dir))
            rc = copy_file(model_dir, dir, e->d_name);
    closedir(d);
    return rc;
}

/* A transformers model folder at dir: --model's files and `weights`. */
static int write_folder(const char *dir, const trainer *tr, const float *weights) {
    static const char *const keys[] = {"format"}, *const values[] = {"pt"}; /* as transformers writes */
    char *path = dc_path_join(dir, DC_BLIP_WEIGHTS_FILE);
    int rc = !path || dc_mkdirs(dir) || (strcmp(tr->o.model, dir) && copy_side_files(tr->o.model, dir)) ||
             dc_params_save(tr->ps, weights, path, keys, values, 1) || dc_sync_dir(dir);
    free(path);
    return rc ? -1 : 0;
}

static int write_model(const char *dir, const void *model, dc_checkpoint_hook fn, void *arg) {
    const folder *f = model;
    char *ema = f->ema ? dc_path_join(dir, EMA_DIR) : NULL;
    int rc = write_folder(dir, f->tr, f->weights) || (f->ema && (!ema || write_folder(ema, f->tr, f->ema)));
    if (!rc && fn)
        fn(dir, arg);
    free(ema);
    return rc ? -1 : 0;
}

static int write_checkpoint(trainer *tr) {
    dc_train_counters c = {.step = tr->step, .adamw_step = tr->opt.step,
                           .ema_step = tr->o.use_ema ? tr->ema.optimization_step : 0,
                           .loader_cursor = dc_loader_cursor(tr->loader), .bad_steps = tr->bad_steps};
    folder f = {tr, tr->ps->data, tr->o.use_ema ? tr->ema.shadow : NULL};
    dc_model_writer w = {write_model, &f};
    float *m_copy = NULL, *v_copy = NULL;
    const float *m = dc_train_on_host(tr->device, tr->opt.m, tr->opt_n, &m_copy);
    const float *v = m ? dc_train_on_host(tr->device, tr->opt.v, tr->opt_n, &v_copy) : NULL;
    int rc = !m || !v || dc_train_state_save(tr->o.output_dir, &w, STATE_VERSION, &c, &tr->o, m, v, tr->opt_n) ||
             dc_checkpoint_prune(tr->o.output_dir, tr->o.checkpoints_total_limit);
    if (!rc)
        dc_progress_note(&tr->progress, "saved %s/checkpoint-%" PRId64, tr->o.output_dir, tr->step);
    free(m_copy);
    free(v_copy);
    return rc ? -1 : 0;
}

/* Every rank proves it holds rank 0's weights; rank 0 writes. */
static int save_checkpoint(trainer *tr) {
    float *copy;
    uint64_t hash;
    const float *w = dc_train_on_host(tr->device, tr->ps->data, tr->ps->total, &copy);
    int rc = !w || dc_dist_check_identical(&tr->dist, w, tr->ps->total * sizeof(float), "weights", &hash) ||
             (dc_dist_is_root(&tr->dist) && write_checkpoint(tr));
    free(copy);
    return rc ? -1 : 0;
}

/* The counters, AdamW's moments and the weights of the checkpoint resumed. */
static int read_state(trainer *tr, const char *dir) {
    dc_st_file state = {0};
    dc_train_counters c;
    char *weights = dc_path_join(dir, DC_BLIP_WEIGHTS_FILE), *ema_dir = dc_path_join(dir, EMA_DIR);
    char *ema_weights = ema_dir ? dc_path_join(ema_dir, DC_BLIP_WEIGHTS_FILE) : NULL;
    dc_rename_fn rename = dc_blip_renamer(tr->model);
    const char *version;
    int rc = !weights || !ema_weights || dc_params_load(tr->ps, NULL, weights, rename) ||
             (tr->o.use_ema && dc_params_load(tr->ps, tr->ema.shadow, ema_weights, rename)) ||
             dc_checkpoint_open_state(dir, &state);
    if (!rc && (!(version = dc_st_meta(&state, "format_version")) || strcmp(version, STATE_VERSION)))
        rc = dc_fail("train_state.safetensors is not a train-caption state (format %s)", version ? version : "?");
    /* the moments of AdamW's part: the text decoder's with --freeze-vision */
    if (!rc)
        rc = dc_train_counters_read(&state, global_batch(tr), MAX_BAD_STEPS, &c) ||
             dc_train_state_moment(&state, "adamw.exp_avg", tr->opt_n, 0, tr->opt_n, tr->device, tr->opt.m) ||
             dc_train_state_moment(&state, "adamw.exp_avg_sq", tr->opt_n, 0, tr->opt_n, tr->device, tr->opt.v);
    if (!rc) {
        tr->step = c.step;
        tr->opt.step = c.adamw_step;
        tr->ema.optimization_step = c.ema_step;
        tr->bad_steps = (int)c.bad_steps;
    }
    dc_st_close(&state);
    free(weights);
    free(ema_weights);
    free(ema_dir);
    return rc ? dc_fail_prefix(dir) : 0;
}

static int resume(trainer *tr) {
    char *dir = NULL;
    if (!tr->o.resume_from_checkpoint)
        return 0;
    if (dc_checkpoint_resolve(tr->o.output_dir, tr->o.resume_from_checkpoint, &dir))
        return -1;
    if (!dir) /* "latest" before the first checkpoint: a new run */
        return 0;
    if (read_state(tr, dir)) {
        free(dir);
        return -1;
    }
    tr->resumed_from = dir;
    return 0;
}

/* ---- data ---- */

static int open_dataset(trainer *tr) {
    dc_dataset_options d = {.resolution = tr->model->cfg.vision.image_size, .channels = 3,
                            .cache_dir = tr->o.cache_dir, .strict = tr->o.strict};
    bool root = dc_dist_is_root(&tr->dist);
    if ((root && dc_dataset_open(&tr->ds, tr->o.train_data_dir, &d)) || dc_dist_barrier(&tr->dist) ||
        (!root && dc_dataset_open(&tr->ds, tr->o.train_data_dir, &d)))
        return -1;
    for (int64_t i = 0; i < tr->ds.count; i++)
        if (!tr->ds.captions || !tr->ds.captions[i] || !*tr->ds.captions[i])
            return dc_fail("%s: image %" PRId64 " of %" PRId64 " has no caption (metadata.jsonl gives each image "
                           "its \"text\")", tr->o.train_data_dir, i + 1, tr->ds.count);
    return 0;
}

static int open_loader(trainer *tr) {
    int64_t per_step = global_batch(tr);
    tr->total = tr->o.max_train_steps ? tr->o.max_train_steps
                                      : tr->o.num_epochs * ((tr->ds.count + per_step - 1) / per_step);
    dc_loader_config lc = {.ds = &tr->ds, .batch_size = (int)tr->o.train_batch_size, .rank = tr->dist.rank,
                           .world = tr->dist.world, .seed = (uint64_t)tr->o.seed,
                           .threads = dc_train_options_loader_threads(&tr->o),
                           .prefetch = LOADER_PREFETCH, .flip = tr->o.random_flip};
    return dc_loader_open(&tr->loader, &lc, tr->step * tr->o.gradient_accumulation_steps);
}

/* Loader pixels in [-1, 1] as the processor leaves them: rescaled from
 * 8-bit values, then normalised. */
static void normalise(const trainer *tr, const float *in, float *out, size_t pixels) {
    const dc_image_processor *p = &tr->proc;
    for (size_t i = 0; i < pixels; i++)
        for (int c = 0; c < 3; c++) {
            double x = ((double)in[i * 3 + c] + 1) * 127.5;
            x = p->do_rescale ? x * p->rescale_factor : x;
            out[i * 3 + c] = p->do_normalize ? (float)((x - p->mean[c]) / p->std[c]) : (float)x;
        }
}

/* ---- one step ---- */

/* Forward and backward of micro-batch b; gradients add up in the flat buffer. */
static int batch_step(trainer *tr, const dc_batch *b, double *loss) {
    dc_ctx *ctx = &tr->ctx;
    int64_t s = tr->model->cfg.vision.image_size, t = tr->o.max_length;
    dc_ctx_reset(ctx);
    normalise(tr, b->images, tr->pixels, (size_t)(b->n * s * s));
    for (int i = 0; i < b->n; i++) {
        const char *caption = tr->ds.captions ? tr->ds.captions[b->ids[i]] : "";
        if (dc_caption_tokens(tr->tok, &tr->model->cfg.text, tr->prompt, tr->n_prompt, caption, t,
                              tr->ids + i * t, tr->labels + i * t))
            return -1;
    }
    dc_tensor *px = dc_from_host(ctx, DC_F32, DC_SHAPE(b->n, s, s, 3), tr->pixels);
    dc_tensor *l = px ? dc_caption_loss(ctx, tr->model, px, tr->ids, tr->labels, b->n, t, tr->smoothing,
                                        tr->o.freeze_vision)
                      : NULL;
    float value;
    if (!l || dc_backward(ctx, l) || dc_memcpy(&value, DC_CPU, l->data, ctx->device, sizeof value))
        return -1;
    *loss += value;
    return 0;
}

/* The activations of a one-image step (memory.h): measured on a blank image
 * and caption, the gradients it adds cleared by the first step. */
static int check_memory(trainer *tr) {
    int64_t s = tr->model->cfg.vision.image_size;
    int64_t id = 0;
    dc_batch b = {.n = 1, .h = (int)s, .w = (int)s, .c = 3, .ids = &id,
                  .images = calloc((size_t)(s * s * 3), sizeof(float))};
    double loss = 0;
    char dev[32];
    dc_step_memory m = {.batch = tr->o.train_batch_size, .resolution = s,
                        .device = dc_device_name(dev, sizeof dev, tr->device), .act_capacity = tr->ctx.act.cap,
                        .act_on_host = tr->device == DC_CPU,
                        .loader_image = dc_loader_buffer_bytes(1, (int)s, (int)s, 3, LOADER_PREFETCH),
                        .held = (2 * tr->ps->total + (tr->o.use_ema ? tr->ps->total : 0) + 2 * tr->opt_n) *
                                sizeof(float),
                        .ranks_on_host = tr->dist.local_world};
    int rc = b.images ? batch_step(tr, &b, &loss) : dc_fail("out of memory");
    m.act_image = tr->ctx.act.used;
    m.act_scratch = tr->ctx.act.peak - tr->ctx.act.used;
    dc_ctx_reset(&tr->ctx);
    free(b.images);
    if (rc)
        return dc_fail_prefix("a training step of one image");
    return dc_device_mem_available(DC_CPU, &m.host_available) || dc_step_memory_check(&m) ? -1 : 0;
}

static int optimizer_step(trainer *tr, double *loss, double *grad_norm, double *lr) {
    int64_t accum = tr->o.gradient_accumulation_steps;
    *loss = 0;
    if (dc_params_zero_grad(tr->ps) || dc_dist_average_begin(&tr->dist, tr->ps->grad, tr->ps->total, accum))
        return -1;
    for (int64_t a = 0; a < accum; a++) {
        const dc_batch *b = dc_loader_next(tr->loader);
        if (!b || batch_step(tr, b, loss))
            return -1;
    }
    *loss /= (double)accum;
    if (dc_dist_average_end(&tr->dist) || dc_dist_sum(&tr->dist, loss, 1))
        return -1;
    *loss /= tr->dist.world;
    float *g = tr->ps->grad + tr->opt_lo;
    *grad_norm = sqrt(dc_grad_sum_squares_on(tr->device, g, tr->opt_n));
    double coef = dc_grad_clip_coef(*grad_norm, tr->o.max_grad_norm);
    if (dc_device_failed(tr->device) || (coef < 1 && dc_grad_scale_on(tr->device, g, tr->opt_n, (float)coef)))
        return -1;
    *lr = dc_lr_at(tr->lr_schedule, tr->o.learning_rate, tr->step, tr->o.lr_warmup_steps, tr->total);
    tr->step++;
    if (!isfinite(*loss) || !isfinite(*grad_norm)) {
        dc_progress_note(&tr->progress, "step %" PRId64 ": non-finite loss or gradient, skipped", tr->step);
        if (++tr->bad_steps >= MAX_BAD_STEPS)
            return dc_fail("%d steps in a row had a non-finite loss or gradient: stopping (lower "
                           "--learning-rate?); the last checkpoint is kept", tr->bad_steps);
        return 0;
    }
    tr->bad_steps = 0;
    return dc_adamw_step(&tr->opt, tr->ps->data + tr->opt_lo, g, *lr) ||
                   (tr->o.use_ema && dc_ema_step(&tr->ema, tr->ps->data))
               ? -1
               : 0;
}

/* ---- the run ---- */

static int log_step(trainer *tr, double loss, double grad_norm, double lr, double images_per_s) {
    dc_metrics_row r = {.step = tr->step, .loss = loss, .lr = lr, .grad_norm = grad_norm,
                        .images_per_s = images_per_s, .loss_t_quartiles = {NAN, NAN, NAN, NAN},
                        .peak_arena_bytes = (double)dc_arena_peak_bytes(tr->device)};
    dc_progress_step(&tr->progress, tr->step, loss, lr, images_per_s);
    if (!tr->metrics || (tr->step % tr->o.logging_steps && tr->step != tr->total))
        return 0;
    return dc_metrics_write(tr->metrics, &r, NULL);
}

static int run(trainer *tr) {
    double loss = NAN, grad_norm, lr, t0 = dc_seconds();
    int64_t first = tr->step;
    while (tr->step < tr->total) {
        tr->signal = dc_signals_caught();
        if (dc_dist_max(&tr->dist, &tr->signal))
            return -1;
        if (tr->signal)
            break;
        double t = dc_seconds();
        if (optimizer_step(tr, &loss, &grad_norm, &lr) ||
            log_step(tr, loss, grad_norm, lr, (double)global_batch(tr) / (dc_seconds() - t)))
            return -1;
        if (tr->o.checkpointing_steps && tr->step % tr->o.checkpointing_steps == 0 && tr->step < tr->total &&
            save_checkpoint(tr))
            return -1;
    }
    double images = (double)((tr->step - first) * global_batch(tr)), seconds = dc_seconds() - t0;
    if (save_checkpoint(tr))
        return -1;
    tr->signal = tr->signal ? tr->signal : dc_signals_caught();
    if (dc_dist_max(&tr->dist, &tr->signal))
        return -1;
    if (!tr->signal && dc_dist_is_root(&tr->dist) &&
        write_folder(tr->o.output_dir, tr, tr->o.use_ema ? tr->ema.shadow : tr->ps->data))
        return -1;
    if (!tr->signal)
        dc_progress_done(&tr->progress, tr->step, loss, images, seconds);
    return dc_dist_barrier(&tr->dist);
}

static int open_outputs(trainer *tr) {
    if (!dc_dist_is_root(&tr->dist)) {
        dc_progress_init(&tr->progress, NULL, tr->step, tr->total, tr->o.logging_steps);
        return 0;
    }
    char *path = dc_path_join(tr->o.output_dir, "metrics.jsonl");
    int rc = !path || dc_metrics_open(&tr->metrics, path, tr->step) ||
             dc_train_options_save(&tr->o, tr->o.output_dir);
    free(path);
    dc_progress_init(&tr->progress, stderr, tr->step, tr->total, tr->o.logging_steps);
    return rc ? -1 : 0;
}

static int setup(trainer *tr) {
    bool root = dc_dist_is_root(&tr->dist);
    size_t bytes, s;
    if ((root && dc_run_dir_take(&tr->out, tr->o.output_dir)) || load_model(tr) || setup_optimizer(tr) ||
        resume(tr) || dc_dist_use_device(&tr->dist, tr->device) ||
        dc_device_arena_bytes(tr->device, ACTIVATION_BYTES, &bytes) || dc_ctx_init(&tr->ctx, tr->device, bytes))
        return -1;
    s = (size_t)tr->model->cfg.vision.image_size;
    size_t batch = (size_t)tr->o.train_batch_size, t = (size_t)tr->o.max_length;
    tr->pixels = malloc(batch * s * s * 3 * sizeof *tr->pixels);
    tr->ids = malloc(batch * t * sizeof *tr->ids);
    tr->labels = malloc(batch * t * sizeof *tr->labels);
    if (!tr->pixels || !tr->ids || !tr->labels)
        return dc_fail("out of memory");
    if (open_dataset(tr) || check_memory(tr) || open_loader(tr))
        return -1;
    if (tr->resumed_from && tr->step >= tr->total)
        return dc_fail("%s: the checkpoint is at step %" PRId64 " and the run ends at step %" PRId64
                       ": nothing left to train (raise --max-train-steps)",
                       tr->resumed_from, tr->step, tr->total);
    if (tr->resumed_from && root)
        fprintf(stderr, "diffc: resuming from %s at step %" PRId64 "\n", tr->resumed_from, tr->step);
    return open_outputs(tr);
}

static void trainer_free(trainer *tr) {
    dc_loader_close(tr->loader);
    dc_dataset_close(&tr->ds);
    dc_metrics_close(tr->metrics);
    dc_ctx_free(&tr->ctx);
    if (tr->o.use_ema && tr->ema.shadow)
        dc_ema_free(&tr->ema);
    dc_adamw_free(&tr->opt);
    dc_blip_free(tr->model);
    dc_wordpiece_free(tr->tok);
    free(tr->prompt);
    free(tr->pixels);
    free(tr->ids);
    free(tr->labels);
    free(tr->resumed_from);
    dc_train_options_free(&tr->o);
    dc_dist_free(&tr->dist);
    dc_run_dir_release(&tr->out, false);
}

static int train(trainer *tr) {
    if (dc_dist_resolve_device(&tr->dist, tr->o.device, tr->o.mixed_precision, &tr->device, &tr->math))
        return -1;
    if (dc_dist_is_root(&tr->dist))
        dc_train_options_print(&tr->o, stdout);
    if (setup(tr)) { /* nothing of worth made yet: leave the output folder as it was */
        dc_run_dir_release(&tr->out, true);
        return -1;
    }
    return dc_signals_install() || run(tr) ? -1 : 0;
}

int dc_cmd_train_caption(int argc, char **argv) {
    trainer tr = {0};
    int rc = dc_train_options_parse(&tr.o, argc, argv);
    if (rc == DC_TRAIN_OPTIONS_HELP) {
        dc_train_caption_options_help(stdout);
        dc_train_options_free(&tr.o);
        return 0;
    }
    if (rc == 0)
        rc = dc_dist_init(&tr.dist) || train(&tr) ? -1 : 0;
    int status = rc == DC_TRAIN_OPTIONS_USAGE ? 2 : rc ? 1 : 0;
    if (rc)
        dc_dist_report_failure(&tr.dist, tr.progress.tty,
                               rc == DC_TRAIN_OPTIONS_USAGE
                                   ? "usage: diffc train-caption --model DIR --train-data-dir DIR --output-dir DIR "
                                     "[options]  (diffc train-caption --help lists the options)\n"
                                   : NULL,
                               status);
    int sig = tr.signal ? tr.signal : dc_signals_caught();
    dc_signals_restore();
    trainer_free(&tr);
    return !rc && sig ? dc_signals_exit_status(sig) : status;
}
