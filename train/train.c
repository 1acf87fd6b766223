/*
 * `diffc train`: the training loop of a diffusion UNet, whichever model.h
 * trains: a diffusers UNet2DModel on images, or the UNet2DConditionModel of
 * a Stable Diffusion pipeline on VAE latents and text.
 *
 * One optimizer step: gradient_accumulation_steps micro-batches, each drawn
 * from the loader (global batch index k), noised at random timesteps
 * (q_sample), denoised by the UNet and scored by the diffusion loss; then the
 * summed gradients are averaged, clipped, and AdamW steps at the scheduled
 * learning rate; the EMA follows. A step whose loss or gradient is not finite
 * is skipped (and logged); MAX_BAD_STEPS of them in a row stop the run with an
 * error, the last checkpoint untouched.
 *
 * Everything random is Philox keyed by the seed (model.h's DC_TRAIN_STREAM_*).
 * The timestep, the noise (and its --noise-offset) and the label drop of an
 * image are drawn for its position p in the loader's stream of images, not
 * for the micro-batch that carries it: so --gradient-accumulation-steps A with batch B sees exactly the
 * images, timesteps and noise of one batch of A*B (and N processes with batch
 * B those of one with N*B), and computes the same gradients up to float
 * rounding. Dropout masks are drawn per micro-batch, so that needs --dropout
 * 0. A run
 * resumed from a checkpoint draws exactly what the uninterrupted run would
 * have drawn, and on the CPU ends with the same weights, bit for bit.
 *
 * Around it: sample grids every --sample-every steps (EMA weights when on),
 * checkpoints every --checkpointing-steps (and on SIGINT/SIGTERM, see
 * signals.h), the final pipeline folder in --output-dir, metrics.jsonl,
 * TensorBoard events and the progress line. Resuming without --model or
 * --pretrained-model takes the UNet config from the checkpoint (model_unet.c). The run
 * holds --output-dir locked from its first look at it (run_dir.h), and a
 * setup that fails (bad data, a bad model) leaves the folder as it found it.
 *
 * Devices: the weights, gradients, AdamW moments, EMA and activations live
 * on --device (resolved once, in resolve_device); the loader, the Philox
 * draws of labels and the log stay on the host, and what the host needs
 * from a GPU (the loss, the timesteps, checkpoint buffers) is copied back.
 * The CPU path reads its buffers in place, so it runs as it always did.
 *
 * Several ranks (dist.h): each reads its shard of global batch k (the
 * loader's positions k G + r B ..), so the draws above are those of one
 * process with batch G; the gradients are averaged before clipping, and the
 * loss and its quartiles summed for the log, so every rank takes the same
 * decisions (clip, skip, stop) on the same numbers. Rank 0 alone writes:
 * logs, metrics, samples, checkpoints (after checking that every rank holds
 * the same weights) and the final model. Every rank reads the checkpoint it
 * resumes from, and then takes rank 0's state, so all start alike.
 */
#include "train.h"

#include "checkpoint.h"
#include "dist.h"
#include "memory.h"
#include "metrics.h"
#include "model.h"
#include "options.h"
#include "run_dir.h"
#include "signals.h"
#include "state.h"
#include "tensorboard.h"

#include "autograd/clock.h"
#include "autograd/device.h"
#include "autograd/diffusion.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/nn.h"
#include "autograd/optim.h"
#include "autograd/rng.h"
#include "autograd/tensor.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/loader.h"
#include "models/unet.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_BAD_STEPS 5            /* non-finite steps in a row that stop the run */
#define STATE_VERSION "1"          /* of train_state.safetensors */
#define ACTIVATION_BYTES ((size_t)64 << 30) /* reserved lazily: only what a step touches is used */
#define LOADER_PREFETCH 2          /* batches the loader assembles ahead */

typedef struct trainer {
    dc_train_options o;
    dc_dist dist;
    dc_run_dir out;          /* rank 0's lock on --output-dir */
    int device;              /* parameters, optimizer, EMA and activations: DC_CPU or a GPU */
    dc_math math;            /* a GPU's matrix arithmetic (--mixed-precision) */
    cJSON *sched_json;
    dc_train_model model;    /* the network trained (model.h) */
    dc_params *ps;           /* its trained parameters: model.ps */
    dc_noise_schedule sched;
    dc_dataset ds;
    int64_t *subset, n_subset; /* --classes: the images trained on (NULL: all) */
    dc_loader *loader;
    dc_adamw opt;
    size_t opt_lo, opt_n;    /* AdamW's part of the flat buffers: all, or this rank's shard */
    dc_ema ema;
    dc_lr_schedule lr_schedule;
    dc_ctx ctx;
    double *mse;             /* [train_batch_size] per-sample loss of the last micro-batch */
    int32_t *t;              /* [train_batch_size] its timesteps, drawn on the host */
    float *noise_host;       /* [train_batch_size, x0] the noise, for --noise-offset; NULL: off */
    int64_t step, total;     /* optimizer steps done, and in all */
    char *resumed_from;      /* the checkpoint folder resumed from; NULL: a new run */
    int bad_steps;           /* non-finite steps in a row */
    int signal;              /* the signal some rank caught, as all ranks agreed; 0: none */
    dc_metrics *metrics;
    dc_tb_writer *tb;
    dc_progress progress;
} trainer;

/* What one optimizer step measured. */
typedef struct step_stats {
    double loss, grad_norm, lr, images_per_s;
    double q_sum[4];         /* loss per timestep quartile, summed */
    double q_n[4];
} step_stats;

/* ---- setting up ---- */

/* --device and --mixed-precision into tr->device and tr->math (dist.h). */
static int resolve_device(trainer *tr) {
    return dc_dist_resolve_device(&tr->dist, tr->o.device, tr->o.mixed_precision, &tr->device, &tr->math);
}

static int load_schedule(trainer *tr) {
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    c.num_train_timesteps = tr->o.ddpm_num_steps;
    c.beta_start = tr->o.ddpm_beta_start;
    c.beta_end = tr->o.ddpm_beta_end;
    c.rescale_betas_zero_snr = tr->o.rescale_betas_zero_snr;
    if (dc_beta_schedule_parse(tr->o.ddpm_beta_schedule, &c.beta_schedule) ||
        dc_prediction_type_parse(tr->o.prediction_type, &c.prediction_type) ||
        dc_noise_schedule_init(&tr->sched, &c))
        return -1;
    tr->sched_json = dc_noise_schedule_config_to_json(&c);
    return tr->sched_json ? 0 : -1;
}

/* Rank 0 opens the dataset first, building its cache when there is none;
 * the other ranks then read that cache instead of all building it at once. */
static int open_dataset(trainer *tr) {
    dc_dataset_options d = {.cache_dir = tr->o.cache_dir, .strict = tr->o.strict};
    tr->model.ops->dataset_options(&tr->model, &d);
    bool root = dc_dist_is_root(&tr->dist);
    if (root && dc_dataset_open(&tr->ds, tr->o.train_data_dir, &d))
        return -1;
    if (dc_dist_barrier(&tr->dist) || (!root && dc_dataset_open(&tr->ds, tr->o.train_data_dir, &d)))
        return -1;
    tr->model.ds = &tr->ds;
    return 0;
}

/* Images in one optimizer step, over all ranks. */
static int64_t global_batch(const trainer *tr) {
    return tr->dist.world * tr->o.train_batch_size * tr->o.gradient_accumulation_steps;
}

static int check_memory(trainer *tr); /* below, beside the step it measures */

static int open_data(trainer *tr) {
    if (open_dataset(tr) || tr->model.ops->open_data(&tr->model, &tr->ctx) || check_memory(tr))
        return -1;
    size_t x0 = (size_t)tr->model.x0_h * tr->model.x0_w * tr->model.x0_c;
    if (tr->o.noise_offset > 0 && !(tr->noise_host = malloc((size_t)tr->o.train_batch_size * x0 * sizeof(float))))
        return dc_fail("out of memory");
    if (tr->o.classes && dc_dataset_select_classes(&tr->ds, tr->o.classes, &tr->subset, &tr->n_subset))
        return dc_fail_prefix(tr->o.train_data_dir);
    int64_t count = tr->subset ? tr->n_subset : tr->ds.count;
    int64_t per_step = global_batch(tr);
    tr->total = tr->o.max_train_steps ? tr->o.max_train_steps
                                      : tr->o.num_epochs * ((count + per_step - 1) / per_step);
    dc_loader_config lc = {.ds = &tr->ds,
                           .subset = tr->subset,
                           .n_subset = tr->n_subset,
                           .batch_size = (int)tr->o.train_batch_size,
                           .rank = tr->dist.rank,
                           .world = tr->dist.world,
                           .seed = (uint64_t)tr->o.seed,
                           .threads = dc_train_options_loader_threads(&tr->o),
                           .prefetch = LOADER_PREFETCH,
                           .flip = tr->o.random_flip && tr->model.loader_flips};
    return dc_loader_open(&tr->loader, &lc, tr->step * tr->o.gradient_accumulation_steps);
}

/* The weights of the checkpoint to resume from (if any) against the
 * model's declarations, before anything is allocated. */
static int check_resume_weights(const trainer *tr) {
    char *dir = NULL;
    if (!tr->o.resume_from_checkpoint)
        return 0;
    int rc = dc_checkpoint_resolve(tr->o.output_dir, tr->o.resume_from_checkpoint, &dir) ||
             (dir && dc_checkpoint_check(dir, tr->ps));
    free(dir);
    return rc ? -1 : 0;
}

static int setup_optimizer(trainer *tr) {
    bool zero = tr->o.zero_stage == 1;
    tr->opt_n = zero ? dc_dist_shard(&tr->dist, tr->ps->total) : tr->ps->total;
    tr->opt_lo = zero ? (size_t)tr->dist.rank * tr->opt_n : 0;
    if (dc_adamw_init_on(&tr->opt, tr->device, tr->opt_n, tr->o.adam_beta1, tr->o.adam_beta2,
                         tr->o.adam_epsilon, tr->o.adam_weight_decay) ||
        dc_lr_schedule_parse(tr->o.lr_scheduler, &tr->lr_schedule))
        return -1;
    if (tr->o.use_ema) {
        dc_ema_config e = dc_train_options_ema(&tr->o);
        if (dc_ema_init_on(&tr->ema, tr->device, tr->ps->data, tr->ps->total, &e))
            return -1;
    }
    size_t batch = (size_t)tr->o.train_batch_size;
    tr->mse = malloc(batch * sizeof *tr->mse);
    tr->t = malloc(batch * sizeof *tr->t);
    return tr->mse && tr->t ? 0 : dc_fail("out of memory");
}

/* The model declared, its parameters allocated and loaded (or drawn). */
static int setup_model(trainer *tr) {
    char *pretrained_weights = NULL;
    tr->ps = &tr->model.ps;
    if (dc_train_model_init(&tr->model, &tr->o, tr->device, dc_dist_is_root(&tr->dist)))
        return -1;
    bool zero = tr->o.zero_stage == 1; /* any world: with one rank the shard is everything */
    tr->ps->multiple = zero ? (size_t)tr->dist.world * 16 : 0; /* equal shards */
    int rc = tr->model.ops->declare(&tr->model, &pretrained_weights) || check_resume_weights(tr) ||
             (pretrained_weights ? dc_params_alloc_load(tr->ps, tr->device, pretrained_weights, dc_unet_rename)
                                 : dc_params_alloc_on(tr->ps, tr->device, (uint64_t)tr->o.seed));
    free(pretrained_weights);
    return rc ? -1 : setup_optimizer(tr);
}


/* The activation arena, last: on a GPU it takes most of the memory left. */
static int setup_activations(trainer *tr) {
    size_t bytes;
    if (dc_device_arena_bytes(tr->device, ACTIVATION_BYTES, &bytes) || dc_ctx_init(&tr->ctx, tr->device, bytes))
        return -1;
    tr->ctx.grad_ready_user = tr;
    return 0;
}

/* ---- checkpoints ---- */

static dc_pipeline pipeline_of(const trainer *tr) {
    return (dc_pipeline){.unet_config = tr->model.unet_json,
                         .scheduler_config = tr->sched_json,
                         .params = tr->ps,
                         .ema = tr->o.use_ema ? tr->ema.shadow : NULL,
                         .frozen_from = tr->model.frozen_from,
                         .lora = tr->model.lora};
}

static int write_checkpoint(trainer *tr, uint64_t fingerprint, const float *m, const float *v) {
    dc_train_counters c = {.step = tr->step, .adamw_step = tr->opt.step,
                           .ema_step = tr->o.use_ema ? tr->ema.optimization_step : 0,
                           .loader_cursor = dc_loader_cursor(tr->loader), .bad_steps = tr->bad_steps};
    dc_pipeline p = pipeline_of(tr);
    dc_model_writer w = dc_pipeline_writer(&p);
    /* the moments without the shards' rounding: any world resumes them */
    int rc = dc_train_state_save(tr->o.output_dir, &w, STATE_VERSION, &c, &tr->o, m, v, tr->ps->extent);
    if (!rc)
        rc = dc_checkpoint_prune(tr->o.output_dir, tr->o.checkpoints_total_limit);
    if (!rc && tr->dist.world > 1)
        dc_progress_note(&tr->progress, "saved %s/checkpoint-%" PRId64 " (weights %016" PRIx64
                         ", the same on all %d ranks)", tr->o.output_dir, tr->step, fingerprint, tr->dist.world);
    else if (!rc)
        dc_progress_note(&tr->progress, "saved %s/checkpoint-%" PRId64, tr->o.output_dir, tr->step);
    return rc;
}

/* dc_dist_check_identical of buf[ps.total] on the training device. */
static int check_identical(trainer *tr, const float *buf, const char *what, uint64_t *hash) {
    float *copy;
    const float *host = dc_train_on_host(tr->device, buf, tr->ps->total, &copy);
    int rc = host ? dc_dist_check_identical(&tr->dist, host, tr->ps->total * sizeof(float), what, hash) : -1;
    free(copy);
    return rc;
}

/* One of AdamW's moments of the whole flat buffer, in rank 0's host memory
 * (*out; NULL on the other ranks; *copy to be freed). Every rank calls it:
 * the shards of --zero-stage 1 are gathered. */
static int moment_on_root(trainer *tr, const float *buf, const float **out, float **copy) {
    bool root = dc_dist_is_root(&tr->dist);
    *out = *copy = NULL;
    if (!tr->o.zero_stage)
        return !root || (*out = dc_train_on_host(tr->device, buf, tr->opt_n, copy)) ? 0 : -1;
    float *mine_copy;
    const float *mine = dc_train_on_host(tr->device, buf, tr->opt_n, &mine_copy);
    if (mine && root && !(*copy = malloc(tr->ps->total * sizeof(float))))
        dc_fail("out of memory for the optimizer state (%zu bytes)", tr->ps->total * sizeof(float));
    int rc = !mine || (root && !*copy) || dc_dist_gather(&tr->dist, mine, tr->opt_n, *copy);
    free(mine_copy);
    *out = *copy;
    return rc ? -1 : 0;
}

/* Every rank: prove that all hold the same weights (and EMA weights), hand
 * rank 0 the optimizer's moments; then rank 0 writes the checkpoint. */
static int save_checkpoint(trainer *tr) {
    uint64_t weights, ema;
    float *m_copy = NULL, *v_copy = NULL;
    const float *m, *v;
    int rc = check_identical(tr, tr->ps->data, "weights", &weights) ||
             (tr->o.use_ema && check_identical(tr, tr->ema.shadow, "EMA weights", &ema)) ||
             moment_on_root(tr, tr->opt.m, &m, &m_copy) || moment_on_root(tr, tr->opt.v, &v, &v_copy) ||
             (dc_dist_is_root(&tr->dist) && write_checkpoint(tr, weights, m, v));
    free(m_copy);
    free(v_copy);
    return rc ? -1 : 0;
}

/* Copy a moment buffer of the optimizer back from the train state: AdamW's
 * part of it (at --zero-stage 1 each rank reads its own shard). */
static int restore_moment(const trainer *tr, const dc_st_file *f, const char *name, float *dst) {
    size_t n = tr->ps->extent, lo = tr->opt_lo < n ? tr->opt_lo : n;
    size_t len = tr->opt_n < n - lo ? tr->opt_n : n - lo; /* the rest: rounding, zero */
    return dc_train_state_moment(f, name, n, lo, len, tr->device, dst);
}

static int resume(trainer *tr) {
    char *dir = NULL;
    if (!tr->o.resume_from_checkpoint)
        return 0;
    if (dc_checkpoint_resolve(tr->o.output_dir, tr->o.resume_from_checkpoint, &dir))
        return -1;
    if (!dir) /* "latest" before the first checkpoint: a new run, as in diffusers */
        return 0;
    dc_st_file state = {0};
    dc_train_counters c;
    int rc = dc_checkpoint_load(dir, tr->ps, NULL, tr->o.use_ema ? tr->ema.shadow : NULL, &state);
    if (!rc && (!dc_st_meta(&state, "format_version") ||
                strcmp(dc_st_meta(&state, "format_version"), STATE_VERSION)))
        rc = dc_fail("%s: train_state.safetensors has another format version", dir);
    if (!rc && (dc_train_counters_read(&state, global_batch(tr), MAX_BAD_STEPS, &c) ||
                restore_moment(tr, &state, "adamw.exp_avg", tr->opt.m) ||
                restore_moment(tr, &state, "adamw.exp_avg_sq", tr->opt.v)))
        rc = dc_fail_prefix(dir);
    if (!rc) {
        tr->step = c.step;
        tr->opt.step = c.adamw_step;
        tr->ema.optimization_step = c.ema_step;
        tr->bad_steps = (int)c.bad_steps;
        tr->resumed_from = dir;
    }
    dc_st_close(&state);
    if (rc)
        free(dir);
    return rc ? -1 : 0;
}

/* Rank 0's buf[ps.total] (on the training device) into every rank's. */
static int broadcast_buffer(trainer *tr, float *buf) {
    size_t bytes = tr->ps->total * sizeof(float);
    float *copy;
    float *host = (float *)dc_train_on_host(tr->device, buf, tr->ps->total, &copy);
    int rc = !host || dc_dist_broadcast(&tr->dist, host, bytes) ||
             (copy && dc_memcpy(buf, tr->device, copy, DC_CPU, bytes));
    free(copy);
    return rc ? -1 : 0;
}

/* Every rank takes rank 0's weights, optimizer and EMA state and counters:
 * they start alike even if their copies of a checkpoint were not (but for
 * the moments of --zero-stage 1, each rank's shard its own). */
static int share_state(trainer *tr) {
    int64_t counts[4] = {tr->step, tr->opt.step, tr->ema.optimization_step, tr->bad_steps};
    if (tr->dist.world == 1)
        return 0;
    bool moments = !tr->o.zero_stage; /* stage 1: each rank's shard is its own */
    if (broadcast_buffer(tr, tr->ps->data) || (moments && broadcast_buffer(tr, tr->opt.m)) ||
        (moments && broadcast_buffer(tr, tr->opt.v)) || dc_dist_broadcast(&tr->dist, counts, sizeof counts) ||
        (tr->o.use_ema && broadcast_buffer(tr, tr->ema.shadow)))
        return -1;
    tr->step = counts[0];
    tr->opt.step = counts[1];
    tr->ema.optimization_step = counts[2];
    tr->bad_steps = (int)counts[3];
    return 0;
}

/* ---- one step ---- */

/* --noise-offset, as diffusers' train_text_to_image adds it: the noise of
 * the image at stream position p moves by offset times the normals [p C,
 * (p + 1) C) of STREAM_NOISE_OFFSET, one per channel. On the host (the
 * noise is small; a GPU's makes a round trip). */
static int offset_noise(trainer *tr, dc_tensor *noise, int n, uint64_t p0) {
    const dc_train_model *m = &tr->model;
    int c = m->x0_c;
    int64_t per = noise->numel / n;
    float shift[DC_UNET_MAX_CHANNELS];
    if (c > DC_UNET_MAX_CHANNELS)
        return dc_fail("--noise-offset: %d channels", c);
    if (dc_memcpy(tr->noise_host, DC_CPU, noise->data, noise->device, (size_t)noise->numel * sizeof(float)))
        return -1;
    for (int i = 0; i < n; i++) {
        dc_fill_normal(shift, c, (uint64_t)tr->o.seed, DC_TRAIN_STREAM_NOISE_OFFSET, (p0 + (uint64_t)i) * (uint64_t)c);
        for (int64_t k = 0; k < per; k++)
            tr->noise_host[i * per + k] += (float)tr->o.noise_offset * shift[k % c];
    }
    return dc_memcpy(noise->data, noise->device, tr->noise_host, DC_CPU, (size_t)noise->numel * sizeof(float));
}

/* Forward and backward of micro-batch b; gradients add up in the flat buffer. */
static int batch_step(trainer *tr, const dc_batch *b, step_stats *st) {
    dc_ctx *ctx = &tr->ctx;
    uint64_t seed = (uint64_t)tr->o.seed, k = (uint64_t)b->index, p0 = (uint64_t)b->position;
    const dc_train_model *m = &tr->model;
    uint64_t per_image = (uint64_t)m->x0_h * (uint64_t)m->x0_w * (uint64_t)m->x0_c;
    uint64_t shard = k * (uint64_t)tr->dist.world + (uint64_t)tr->dist.rank; /* k with one rank */
    dc_ctx_reset(ctx);
    ctx->seed = dc_rand_block(seed, DC_TRAIN_STREAM_DROPOUT, shard).w[0] | shard << 32;
    /* the timesteps drawn on the host (the same values as on a GPU), where the
     * diffusion ops check them without a round trip; a copy for the UNet */
    dc_tensor t_host = {.dtype = DC_I32, .device = DC_CPU, .ndim = 1, .shape = {b->n}, .numel = b->n,
                        .data = tr->t};
    dc_tensor *x0 = m->ops->x0(&tr->model, ctx, b);
    dc_tensor *noise = dc_new(ctx, DC_F32, DC_SHAPE(b->n, m->x0_h, m->x0_w, m->x0_c));
    if (!x0 || !noise || dc_sample_noise(noise, seed, DC_TRAIN_STREAM_NOISE, p0 * per_image) ||
        (tr->noise_host && offset_noise(tr, noise, b->n, p0)) ||
        dc_sample_timesteps(&tr->sched, &t_host, seed, DC_TRAIN_STREAM_TIMESTEPS, p0))
        return -1;
    dc_tensor *t = dc_from_host(ctx, DC_I32, DC_SHAPE(b->n), tr->t);
    dc_tensor *xt = dc_q_sample(ctx, x0, noise, &t_host, &tr->sched);
    dc_tensor *pred = xt ? m->ops->forward(&tr->model, ctx, b, xt, t) : NULL;
    dc_tensor *loss = dc_diffusion_loss(ctx, pred, x0, noise, &t_host, &tr->sched,
                                        tr->sched.config.prediction_type, (float)tr->o.snr_gamma, tr->mse);
    float value;
    if (!loss || dc_backward(ctx, loss) || dc_memcpy(&value, DC_CPU, loss->data, ctx->device, sizeof value))
        return -1;
    st->loss += value;
    for (int i = 0; i < b->n; i++) {
        int q = (int)(tr->t[i] * 4 / tr->sched.T);
        st->q_sum[q] += tr->mse[i];
        st->q_n[q]++;
    }
    return 0;
}

/* The next micro-batch from the loader, forward and backward. */
static int micro_step(trainer *tr, step_stats *st) {
    const dc_batch *b = dc_loader_next(tr->loader);
    return b ? batch_step(tr, b, st) : -1;
}

/* The activation arena of a step of one image (zeros, label 0), run on the
 * fresh context: what the step holds at once (*kept: per image, the tensors
 * the backward pass reads, and with gradient checkpointing one block's
 * recomputation; dc_act_held) and its peak above that (*scratch). The gradients it
 * adds are cleared by the first optimizer step. */
static int measure_one_image(trainer *tr, size_t *kept, size_t *scratch) {
    int32_t label = 0;
    int64_t id = 0;
    dc_batch b = {.n = 1, .h = tr->ds.h, .w = tr->ds.w, .c = tr->ds.c, .labels = &label, .ids = &id,
                  .images = calloc((size_t)tr->ds.h * tr->ds.w * tr->ds.c, sizeof(float))};
    step_stats st = {0};
    int rc = b.images ? batch_step(tr, &b, &st) : dc_fail("out of memory");
    *kept = dc_act_held(&tr->ctx);
    *scratch = tr->ctx.act.peak - *kept;
    dc_ctx_reset(&tr->ctx);
    free(b.images);
    if (rc)
        return dc_fail_prefix("a training step of one image");
    return 0;
}

/* A micro-batch must fit in memory before the loader allocates its buffers
 * and the first step touches its activations (memory.h); called once the
 * data is known to fit the model, on the fresh activation context. */
static int check_memory(trainer *tr) {
    char dev[32];
    bool cpu = tr->device == DC_CPU;
    dc_step_memory m = {.batch = tr->o.train_batch_size, .resolution = tr->o.resolution,
                        .device = dc_device_name(dev, sizeof dev, tr->device),
                        .act_capacity = tr->ctx.act.cap, .act_on_host = cpu,
                        .loader_image = dc_loader_buffer_bytes(1, tr->ds.h, tr->ds.w, tr->ds.c,
                                                               LOADER_PREFETCH),
                        /* weights, gradients, EMA and AdamW's moments; frozen networks */
                        .held = (2 * tr->ps->total + (tr->o.use_ema ? tr->ps->total : 0) + 2 * tr->opt_n) *
                                    sizeof(float) + tr->model.frozen_bytes,
                        .ranks_on_host = tr->dist.local_world};
    return dc_device_mem_available(DC_CPU, &m.host_available) ||
                   measure_one_image(tr, &m.act_image, &m.act_scratch) || dc_step_memory_check(&m)
               ? -1
               : 0;
}

/* The loss averaged and the quartiles summed over the ranks' images. */
static int sum_stats(trainer *tr, step_stats *st) {
    double v[9] = {st->loss};
    memcpy(v + 1, st->q_sum, sizeof st->q_sum);
    memcpy(v + 5, st->q_n, sizeof st->q_n);
    if (dc_dist_sum(&tr->dist, v, 9))
        return -1;
    st->loss = v[0] / tr->dist.world;
    memcpy(st->q_sum, v + 1, sizeof st->q_sum);
    memcpy(st->q_n, v + 5, sizeof st->q_n);
    return 0;
}

/* The backward pass's word that a parameter's gradient is final: its span
 * of the flat buffer joins the average (dist.h), which starts the buckets
 * it completes while the pass goes on. */
static int grad_ready(void *user, dc_tensor *t) {
    trainer *tr = user;
    size_t offset, len;
    return dc_params_span(tr->ps, t, &offset, &len) ? dc_dist_average_ready(&tr->dist, offset, len) : 0;
}

/* The L2 norm of the averaged gradient in *norm, the gradient clipped to
 * --max-grad-norm: over AdamW's part of it, the ranks' sums of squares
 * added when that is a shard (--zero-stage 1). */
static int clip_gradient(trainer *tr, double *norm) {
    float *g = tr->ps->grad + tr->opt_lo;
    double sq = dc_grad_sum_squares_on(tr->device, g, tr->opt_n);
    if (dc_device_failed(tr->device) || (tr->o.zero_stage && dc_dist_sum(&tr->dist, &sq, 1)))
        return -1;
    *norm = sqrt(sq);
    double coef = dc_grad_clip_coef(*norm, tr->o.max_grad_norm);
    return coef < 1 ? dc_grad_scale_on(tr->device, g, tr->opt_n, (float)coef) : 0;
}

/* One optimizer step; a non-finite loss or gradient skips it (counted). The
 * gradient is averaged over the ranks before it is measured, so the norm,
 * the clipping and the decision to skip are the same on every rank. */
static int optimizer_step(trainer *tr, step_stats *st) {
    int64_t accum = tr->o.gradient_accumulation_steps;
    double t0 = dc_seconds();
    if (dc_params_zero_grad(tr->ps))
        return -1;
    bool zero = tr->o.zero_stage == 1;
    for (int64_t a = 0; a < accum; a++) {
        bool last = a == accum - 1 && !zero; /* its backward pass overlaps the average */
        if ((last && dc_dist_average_begin(&tr->dist, tr->ps->grad, tr->ps->total, accum)))
            return -1;
        tr->ctx.grad_ready = last && dc_dist_communicates(&tr->dist) ? grad_ready : NULL;
        if (micro_step(tr, st))
            return -1;
    }
    tr->ctx.grad_ready = NULL;
    st->loss /= (double)accum;
    if ((zero ? dc_dist_reduce_scatter(&tr->dist, tr->ps->grad, tr->opt_n, accum) : dc_dist_average_end(&tr->dist)) ||
        sum_stats(tr, st) || clip_gradient(tr, &st->grad_norm))
        return -1;
    st->lr = dc_lr_at(tr->lr_schedule, tr->o.learning_rate, tr->step, tr->o.lr_warmup_steps, tr->total);
    tr->step++;
    if (!isfinite(st->loss) || !isfinite(st->grad_norm)) {
        dc_progress_note(&tr->progress, "step %" PRId64 ": non-finite loss or gradient, skipped",
                         tr->step);
        if (++tr->bad_steps >= MAX_BAD_STEPS)
            return dc_fail("%d steps in a row had a non-finite loss or gradient: stopping (lower "
                           "--learning-rate?); the last checkpoint is kept", tr->bad_steps);
    } else {
        tr->bad_steps = 0;
        if (dc_adamw_step(&tr->opt, tr->ps->data + tr->opt_lo, tr->ps->grad + tr->opt_lo, st->lr) ||
            (zero && dc_dist_all_gather(&tr->dist, tr->ps->data, tr->opt_n)) ||
            (tr->o.use_ema && dc_ema_step(&tr->ema, tr->ps->data)))
            return -1;
    }
    st->images_per_s = (double)global_batch(tr) / (dc_seconds() - t0);
    return 0;
}

/* ---- reporting ---- */

static int log_step(trainer *tr, const step_stats *st) {
    dc_metrics_row r = {.step = tr->step, .loss = st->loss, .lr = st->lr,
                        .grad_norm = st->grad_norm, .images_per_s = st->images_per_s,
                        .peak_arena_bytes = (double)dc_arena_peak_bytes(tr->device)};
    for (int q = 0; q < 4; q++)
        r.loss_t_quartiles[q] = st->q_n[q] ? st->q_sum[q] / st->q_n[q] : NAN;
    dc_progress_step(&tr->progress, tr->step, st->loss, st->lr, st->images_per_s);
    if (!tr->metrics || (tr->step % tr->o.logging_steps && tr->step != tr->total))
        return 0; /* a rank other than 0, or not a step to log */
    return dc_metrics_write(tr->metrics, &r, NULL) || dc_tb_scalar(tr->tb, "train/loss", tr->step, st->loss) ||
           dc_tb_scalar(tr->tb, "train/lr", tr->step, st->lr) ||
           dc_tb_scalar(tr->tb, "train/grad_norm", tr->step, st->grad_norm) ||
           dc_tb_scalar(tr->tb, "train/images_per_s", tr->step, st->images_per_s);
}

/* The images of a grid laid out as one picture, `cols` to a row. */
static int grid_of(const float *px, int64_t n, int h, int w, int c, int cols, dc_image *grid) {
    dc_image *imgs = calloc((size_t)n, sizeof *imgs);
    int rc = imgs ? 0 : dc_fail("out of memory");
    for (int64_t i = 0; !rc && i < n; i++)
        if (!(rc = dc_image_alloc(&imgs[i], w, h, c)))
            dc_float_to_u8(imgs[i].px, px + i * h * w * c, (size_t)h * w * c);
    if (!rc)
        rc = dc_image_grid(grid, imgs, (int)n, cols, 2);
    for (int64_t i = 0; imgs && i < n; i++)
        dc_image_free(&imgs[i]);
    free(imgs);
    return rc;
}

/* A fixed-seed grid of the model's (EMA weights when on) into
 * samples/step-N.png and TensorBoard. */
static int sample_grid(trainer *tr) {
    dc_train_grid g = {0};
    float *keep = NULL;
    size_t bytes = tr->ps->total * sizeof *keep;
    int rc = 0;
    if (tr->o.use_ema) { /* sample with the averaged weights; keep the others on the host */
        keep = malloc(bytes);
        rc = !keep ? dc_fail("out of memory for the sample grid")
                   : dc_memcpy(keep, DC_CPU, tr->ps->data, tr->device, bytes) ||
                         dc_memcpy(tr->ps->data, tr->device, tr->ema.shadow, tr->device, bytes);
    }
    if (!rc)
        rc = tr->model.ops->sample(&tr->model, &tr->ctx, &tr->sched,
                                   (uint64_t)tr->o.seed + DC_TRAIN_SAMPLE_SEED_OFFSET, &g);
    if (keep && dc_memcpy(tr->ps->data, tr->device, keep, DC_CPU, bytes))
        rc = -1;
    dc_image grid = {0};
    char name[64], *dir = NULL, *path = NULL;
    snprintf(name, sizeof name, "step-%06" PRId64 ".png", tr->step);
    if (!rc && !(rc = grid_of(g.px, g.n, g.h, g.w, g.c, g.cols, &grid)) &&
        (dir = dc_path_join(tr->o.output_dir, "samples")) && !(rc = dc_mkdirs(dir)) &&
        (path = dc_path_join(dir, name)))
        rc = dc_image_save_png(&grid, path) || dc_tb_image(tr->tb, "samples", tr->step, &grid);
    if (!rc && path)
        dc_progress_note(&tr->progress, "sample grid: %s", path);
    dc_image_free(&grid);
    free(path);
    free(dir);
    free(keep);
    free(g.px);
    return rc;
}

/* ---- the run ---- */

/* Rank 0's metrics.jsonl, TensorBoard events and progress line; the other
 * ranks report nothing. */
static int open_outputs(trainer *tr) {
    if (!dc_dist_is_root(&tr->dist)) {
        dc_progress_init(&tr->progress, NULL, tr->step, tr->total, tr->o.logging_steps);
        return 0;
    }
    char *metrics = dc_path_join(tr->o.output_dir, "metrics.jsonl");
    char *logs = dc_path_join(tr->o.output_dir, tr->o.logging_dir);
    int rc = metrics && logs ? 0 : -1;
    if (!rc)
        rc = dc_metrics_open(&tr->metrics, metrics, tr->step) || dc_tb_open(&tr->tb, logs, tr->step);
    free(metrics);
    free(logs);
    dc_progress_init(&tr->progress, stderr, tr->step, tr->total, tr->o.logging_steps);
    return rc;
}

/* tr->signal = the first signal any rank caught, the same on every rank, so
 * that all stop after the same step. */
static int agree_on_signal(trainer *tr) {
    tr->signal = dc_signals_caught();
    return dc_dist_max(&tr->dist, &tr->signal);
}

/* The final model (rank 0): the output folder itself is a pipeline, EMA
 * weights as the UNet when on. */
static int save_final(trainer *tr) {
    dc_pipeline p = pipeline_of(tr);
    if (tr->o.use_ema)
        p.weights = tr->ema.shadow;
    return dc_dist_is_root(&tr->dist) ? dc_pipeline_save(tr->o.output_dir, &p) : 0;
}

/* How the first step's gradients travelled (the same on every rank). */
static void note_dist(trainer *tr) {
    const dc_dist *d = &tr->dist;
    double mib = (double)(1 << 20) / (2 * sizeof(float)); /* floats of both moments per MiB */
    if (!dc_dist_is_root(d) || !dc_dist_communicates(d))
        return;
    if (tr->o.zero_stage)
        dc_progress_note(&tr->progress, "ZeRO-1: gradient reduce-scatter and weight all-gather; AdamW's state "
                         "takes %.3g MiB on each rank instead of %.3g MiB", (double)tr->opt_n / mib,
                         (double)tr->ps->total / mib);
    else
        dc_progress_note(&tr->progress, "gradient all-reduce: %d bucket%s of up to %.3g MiB, %d started during "
                         "the backward pass", d->buckets, d->buckets == 1 ? "" : "s",
                         (double)d->bucket * sizeof(float) / (1 << 20), d->overlapped);
}

static int run(trainer *tr) {
    step_stats st = {0};
    bool root = dc_dist_is_root(&tr->dist);
    int64_t first = tr->step;
    double t0 = dc_seconds();
    while (tr->step < tr->total) {
        if (agree_on_signal(tr))
            return -1;
        if (tr->signal)
            break;
        memset(&st, 0, sizeof st);
        if (optimizer_step(tr, &st) || log_step(tr, &st))
            return -1;
        if (tr->step == first + 1)
            note_dist(tr);
        if (root && tr->o.sample_every && tr->step % tr->o.sample_every == 0 && sample_grid(tr))
            return -1;
        if (tr->o.checkpointing_steps && tr->step % tr->o.checkpointing_steps == 0 &&
            tr->step < tr->total && save_checkpoint(tr))
            return -1;
    }
    double images = (double)((tr->step - first) * global_batch(tr)), seconds = dc_seconds() - t0;
    /* a signal during the last step still stops the run short of the final model */
    if (save_checkpoint(tr) || agree_on_signal(tr) || (!tr->signal && save_final(tr)))
        return -1;
    if (!tr->signal)
        dc_progress_done(&tr->progress, tr->step, st.loss, images, seconds);
    /* no rank leaves (and a launcher takes a non-zero exit for a failure
     * and kills the job) before rank 0 has written everything */
    return dc_dist_barrier(&tr->dist);
}

static void trainer_free(trainer *tr) {
    dc_loader_close(tr->loader);
    dc_dataset_close(&tr->ds);
    free(tr->subset);
    dc_metrics_close(tr->metrics);
    dc_tb_close(tr->tb);
    dc_ctx_free(&tr->ctx);
    if (tr->o.use_ema)
        dc_ema_free(&tr->ema);
    dc_adamw_free(&tr->opt);
    dc_train_model_free(&tr->model);
    dc_noise_schedule_free(&tr->sched);
    cJSON_Delete(tr->sched_json);
    free(tr->mse);
    free(tr->t);
    free(tr->noise_host);
    free(tr->resumed_from);
    dc_train_options_free(&tr->o);
    dc_dist_free(&tr->dist);
    dc_run_dir_release(&tr->out, false);
}

/* A resumed run says where it starts, once the run's length is known; it
 * must have steps left: one whose checkpoint is at or past the last step
 * would end at once, having trained nothing. */
static int announce_resume(const trainer *tr) {
    if (!tr->resumed_from)
        return 0;
    if (tr->step >= tr->total && tr->o.max_train_steps)
        return dc_fail("%s: the checkpoint is at step %" PRId64 " and --max-train-steps is %" PRId64
                       ": nothing left to train (raise --max-train-steps to train on)",
                       tr->resumed_from, tr->step, tr->o.max_train_steps);
    if (tr->step >= tr->total)
        return dc_fail("%s: the checkpoint is at step %" PRId64 " and --num-epochs %" PRId64 " ends at step %"
                       PRId64 ": nothing left to train (raise --num-epochs or --max-train-steps)",
                       tr->resumed_from, tr->step, tr->o.num_epochs, tr->total);
    if (dc_dist_is_root(&tr->dist))
        fprintf(stderr, "diffc: resuming from %s at step %" PRId64 "\n", tr->resumed_from, tr->step);
    return 0;
}

static int setup(trainer *tr) {
    bool root = dc_dist_is_root(&tr->dist);
    int rc = (root && dc_run_dir_take(&tr->out, tr->o.output_dir)) || load_schedule(tr) || setup_model(tr) ||
             resume(tr) || share_state(tr) ||
             dc_dist_use_device(&tr->dist, tr->device) || setup_activations(tr) || open_data(tr) ||
             announce_resume(tr) ||
             (root && dc_train_options_save(&tr->o, tr->o.output_dir)) || open_outputs(tr);
    if (!rc && root && dc_dist_nccl(&tr->dist))
        fprintf(stderr, "diffc: gradients averaged with NCCL over %d rank%s\n", tr->dist.world,
                tr->dist.world == 1 ? "" : "s");
    return rc ? -1 : 0;
}

/* Rank 0 says what it runs: the resolved options and, with several ranks,
 * how the global batch is made. */
static void print_plan(const trainer *tr) {
    static const char *const math[] = {"f32", "f32 with TF32 tensor cores", "bf16 with f32 accumulation"};
    char name[32];
    if (!dc_dist_is_root(&tr->dist))
        return;
    dc_train_options_print(&tr->o, stdout);
    printf("  (resolved) device %s%s, matrix arithmetic %s\n", dc_device_name(name, sizeof name, tr->device),
           tr->dist.world > 1 && tr->device != DC_CPU ? " on rank 0 (each rank its node-local GPU)" : "",
           tr->device == DC_CPU ? "f32" : math[tr->math]);
    if (tr->device == DC_CPU)
        printf("  (resolved) cpu kernels %s\n", dc_device_cpu_kernels());
    if (tr->dist.world > 1)
        fprintf(stderr, "diffc: %d ranks (%d on this node), global batch %" PRId64 " = %d ranks x "
                "--train-batch-size %" PRId64 " x --gradient-accumulation-steps %" PRId64 "\n",
                tr->dist.world, tr->dist.local_world, global_batch(tr), tr->dist.world,
                tr->o.train_batch_size, tr->o.gradient_accumulation_steps);
}

static int train(trainer *tr) {
    if (resolve_device(tr))
        return -1;
    print_plan(tr);
    if (setup(tr)) { /* nothing of worth made yet: leave the output folder as it was */
        dc_run_dir_release(&tr->out, true);
        return -1;
    }
    return dc_signals_install() || run(tr) ? -1 : 0;
}

int dc_cmd_train(int argc, char **argv) {
    trainer tr = {0};
    int rc = dc_train_options_parse(&tr.o, argc, argv);
    if (rc == DC_TRAIN_OPTIONS_HELP) {
        dc_train_options_help(stdout);
        dc_train_options_free(&tr.o);
        return 0;
    }
    if (rc == 0)
        rc = dc_dist_init(&tr.dist) || train(&tr) ? -1 : 0;
    int status = rc == DC_TRAIN_OPTIONS_USAGE ? 2 : rc ? 1 : 0;
    if (rc)
        dc_dist_report_failure(&tr.dist, tr.progress.tty,
                               rc == DC_TRAIN_OPTIONS_USAGE ? "usage: diffc train --config FILE [options]  "
                                                              "(diffc train --help lists the options)\n"
                                                            : NULL,
                               status);
    int sig = tr.signal ? tr.signal : dc_signals_caught();
    dc_signals_restore();
    trainer_free(&tr);
    return !rc && sig ? dc_signals_exit_status(sig) : status;
}
