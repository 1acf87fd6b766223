/* `diffc train` end to end on tiny datasets made here: the loss falls; a run
 * resumed from its checkpoint ends with the same weights, bit for bit, as the
 * uninterrupted run; SIGTERM and SIGINT stop a run with 128 + the signal and a
 * checkpoint to resume from; a fine-tune starts from the pretrained weights
 * and keeps their config; accumulating batches equals one big batch;
 * non-finite steps are skipped, then stop the run; --help and bad
 * configurations and options; one run at a time in an output folder, which
 * a run failing on its data leaves as it was; the summary's rate is the
 * whole run's. Runs the built diffc binary. */
#define _GNU_SOURCE /* realpath */
#include "testutil.h"

#include "autograd/clock.h"
#include "autograd/diffusion.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/safetensors.h"
#include "data/image.h"
#include "models/unet.h"
#include "train/checkpoint.h"
#include "train/options.h"
#include "train/run_dir.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>


/* Two classes of 8x8 images with c channels in `dir`: bright squares on the
 * left or on the right. */
static void make_images(const char *dir, int c) {
    const char *classes[] = {"left", "right"};
    ck_assert_int_eq(mkdir(tu_path(dir), 0755), 0);
    for (int k = 0; k < 2; k++) {
        char sub[128];
        snprintf(sub, sizeof sub, "%s/%s", dir, classes[k]);
        ck_assert_int_eq(mkdir(tu_path(sub), 0755), 0);
        for (int i = 0; i < 12; i++) {
            dc_image img;
            ck_assert_int_eq(dc_image_alloc(&img, 8, 8, c), 0);
            for (int p = 0; p < 64 * c; p++) {
                bool lit = (p / c % 8 < 4) == (k == 0);
                img.px[p] = (uint8_t)(lit ? 200 + (int)(tu_next() % 56) : (int)(tu_next() % 40));
            }
            char name[160];
            snprintf(name, sizeof name, "%s/%02d.png", sub, i);
            ck_assert_msg(dc_image_save_png(&img, tu_path(name)) == 0, "%s", dc_error());
            dc_image_free(&img);
        }
    }
}

/* Gray images in data/ and a small class-conditional UNet for them in model.json. */
static void make_dataset(void) {
    tu_mkdtemp("train");
    make_images("data", 1);
    FILE *f = fopen(tu_path("model.json"), "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"_class_name\": \"UNet2DModel\", \"sample_size\": 8, \"in_channels\": 1, \"out_channels\": 1,"
          " \"layers_per_block\": 1, \"block_out_channels\": [8, 16],"
          " \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\"],"
          " \"up_block_types\": [\"AttnUpBlock2D\", \"UpBlock2D\"], \"attention_head_dim\": 8,"
          " \"norm_num_groups\": 4, \"num_class_embeds\": 3, \"dropout\": 0.1}\n",
          f);
    ck_assert_int_eq(fclose(f), 0);
}


/* The arguments of diffc train with the tests' settings: `model_opt model`
 * (--model FILE, --pretrained-model DIR; none when model_opt is NULL), the
 * images in `data`, into `out`, then `extra` (NULL-terminated, may be NULL),
 * which overrides what comes before. Valid until the next call. */
static const char *const *train_args(const char *model_opt, const char *model, const char *data,
                                     const char *out, const char *steps, const char *const *extra) {
    static const char *args[64];
    const char *base[] = {"train", "--train-data-dir", tu_path(data), "--cache-dir", tu_path("cache"),
                          "--resolution", "8", "--output-dir", tu_path(out), "--train-batch-size", "4",
                          "--max-train-steps", steps, "--learning-rate", "3e-3", "--lr-warmup-steps", "2",
                          "--use-ema", "--cond-drop-prob", "0.25", "--logging-steps", "1",
                          "--sample-every", "0", "--seed", "7", "--dataloader-num-workers", "2", NULL};
    int n = 0;
    for (int i = 0; base[i]; i++)
        args[n++] = base[i];
    if (model_opt) {
        args[n++] = model_opt;
        args[n++] = model;
    }
    for (int i = 0; extra && extra[i]; i++) {
        ck_assert_int_lt(n, 63);
        args[n++] = extra[i];
    }
    args[n] = NULL;
    return args;
}

/* diffc train of model.json on the gray images into `out`, with extra options. */
static tu_run_result *train(const char *out, const char *steps, const char *const *extra) {
    return tu_run_diffc(train_args("--model", tu_path("model.json"), "data", out, steps, extra));
}

/* The loss column of metrics.jsonl, [steps]. */
/* The values of `key` ("loss", "grad_norm") in out/metrics.jsonl, a line per step. */
static int read_metric(const char *out, const char *key, double *v, int max) {
    char path[600], want[64];
    snprintf(path, sizeof path, "%s/metrics.jsonl", tu_path(out));
    snprintf(want, sizeof want, "\"%s\":", key);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s missing", path);
    char line[4096];
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, want);
        ck_assert_msg(p != NULL, "no %s in: %s", key, line);
        v[n++] = strtod(p + strlen(want), NULL);
    }
    fclose(f);
    return n;
}

static int read_losses(const char *out, double *loss, int max) { return read_metric(out, "loss", loss, max); }

START_TEST(test_loss_falls) {
    make_dataset();
    tu_run_result *r = train("fall", "80", NULL);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    double loss[80];
    int n = read_losses("fall", loss, 80);
    ck_assert_int_eq(n, 80);
    double first = 0, last = 0;
    for (int i = 0; i < 10; i++) {
        first += loss[i] / 10;
        last += loss[n - 10 + i] / 10;
    }
    ck_assert_msg(last < first / 3, "loss %g -> %g did not fall threefold", first, last);
    /* the arenas' high-water mark: never falling, and at least the weights,
     * their gradients, AdamW's two moments and the EMA */
    double peak[80];
    ck_assert_int_eq(read_metric("fall", "peak_arena_bytes", peak, 80), 80);
    dc_st_file w;
    ck_assert_msg(dc_st_open(&w, tu_path("fall/unet/diffusion_pytorch_model.safetensors")) == 0, "%s", dc_error());
    double weights = 0;
    for (int i = 0; i < w.n; i++)
        weights += (double)w.tensors[i].nbytes;
    dc_st_close(&w);
    for (int i = 0; i < 80; i++)
        ck_assert_msg(peak[i] >= 5 * weights && (i == 0 || peak[i] >= peak[i - 1]), "step %d: peak %.0f, weights %.0f",
                      i + 1, peak[i], weights);
    /* the final model is a pipeline folder; so is each checkpoint */
    ck_assert_int_eq(access(tu_path("fall/unet/diffusion_pytorch_model.safetensors"), R_OK), 0);
    ck_assert_int_eq(access(tu_path("fall/checkpoint-80/DONE"), R_OK), 0);
    tu_rmtemp();
}
END_TEST

/* Every tensor of weight file a is in b, under the name dc_unet_rename gives
 * it (the same but for legacy attention names), with the same bytes. */
static void assert_same_weights_at(const char *a, const char *b) {
    dc_st_file fa, fb;
    ck_assert_msg(dc_st_open(&fa, a) == 0, "%s", dc_error());
    ck_assert_msg(dc_st_open(&fb, b) == 0, "%s", dc_error());
    ck_assert_int_eq(fa.n, fb.n);
    for (int i = 0; i < fa.n; i++) {
        char buf[256];
        const char *name = dc_unet_rename(fa.tensors[i].name, buf, sizeof buf);
        const dc_st_tensor *t = dc_st_find(&fb, name);
        ck_assert_msg(t && t->nbytes == fa.tensors[i].nbytes && t->dtype == fa.tensors[i].dtype, "%s", name);
        ck_assert_msg(memcmp(t->data, fa.tensors[i].data, t->nbytes) == 0, "%s differs between %s and %s",
                      name, a, b);
    }
    dc_st_close(&fa);
    dc_st_close(&fb);
}

/* The same for two files of the test's folder. */
static void assert_same_weights(const char *a, const char *b) {
    assert_same_weights_at(tu_path(a), tu_path(b));
}

/* A run folder "resumed" that holds only whole/checkpoint-3: a run stopped there. */
static void start_from_checkpoint_3(void) {
    ck_assert_int_eq(mkdir(tu_path("resumed"), 0755), 0);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r %s %s", tu_path("whole/checkpoint-3"), tu_path("resumed/"));
    ck_assert_int_eq(system(cmd), 0);
}

/* --zero-stage 1 in one process: the "shard" is the whole buffer, and the
 * reduce-scatter path (divide, clip, update, gather) gives stage 0's bits. */
START_TEST(test_zero_stage_1_alone_is_stage_0) {
    make_dataset();
    const char *plain[] = {"--gradient-accumulation-steps", "2", "--checkpointing-steps", "2", NULL};
    const char *zero[] = {"--gradient-accumulation-steps", "2", "--checkpointing-steps", "2", "--zero-stage", "1",
                          NULL};
    tu_run_result *r = train("plain", "3", plain);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    r = train("zero", "3", zero);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    assert_same_weights("plain/unet/diffusion_pytorch_model.safetensors", "zero/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("plain/checkpoint-2/train_state.safetensors", "zero/checkpoint-2/train_state.safetensors");
    tu_rmtemp();
}
END_TEST

START_TEST(test_resume_is_exact) {
    make_dataset();
    const char *ckpt[] = {"--checkpointing-steps", "3", NULL};
    tu_run_result *r = train("whole", "7", ckpt);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    /* a second run stopped at step 3: its folder holds only checkpoint-3 */
    start_from_checkpoint_3();
    const char *resume[] = {"--checkpointing-steps", "3", "--resume-from-checkpoint", "latest", NULL};
    r = train("resumed", "7", resume);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "resuming from") && strstr(r->err, "at step 3"), "%s", tu_tail(r->err));
    assert_same_weights("whole/unet/diffusion_pytorch_model.safetensors",
                        "resumed/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("whole/checkpoint-7/unet/diffusion_pytorch_model.safetensors",
                        "resumed/checkpoint-7/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("whole/checkpoint-7/train_state.safetensors",
                        "resumed/checkpoint-7/train_state.safetensors");
    /* and it computed the same losses on the way */
    double a[8], b[8];
    ck_assert_int_eq(read_losses("whole", a, 8), 7);
    ck_assert_int_eq(read_losses("resumed", b, 8), 4);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(a[3 + i] == b[i], "step %d: loss %.17g vs %.17g", 4 + i, a[3 + i], b[i]);
    tu_rmtemp();
}
END_TEST

START_TEST(test_bad_configs) {
    make_dataset();
    const char *unknown[] = {"train", "--config", tu_path("bad.json"), NULL};
    FILE *f = fopen(tu_path("bad.json"), "w");
    fputs("{\"lerning_rate\": 1e-4}\n", f);
    fclose(f);
    tu_assert_user_error(tu_run_diffc(unknown), "lerning_rate");

    const char *rgb[] = {"--model", "{\"in_channels\": 3, \"out_channels\": 3, \"block_out_channels\": "
                                    "[8, 16], \"down_block_types\": [\"DownBlock2D\", \"DownBlock2D\"], "
                                    "\"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"], "
                                    "\"norm_num_groups\": 4}",
                         NULL};
    tu_assert_user_error(train("rgb", "2", rgb), "the model's in_channels is 3");

    const char *odd[] = {"--resolution", "7", NULL};
    tu_assert_user_error(train("odd", "2", odd), "--resolution 7 is not divisible by 2");

    /* a GPU that is not there: none on this machine (or in this build), or past the last */
    const char *gpu[] = {"--device", tu_cuda_device_count() ? "cuda:63" : "cuda", NULL};
    tu_assert_user_error(train("gpu", "2", gpu), "device 'cuda");
    const char *typo[] = {"--device", "gpu", NULL};
    tu_assert_user_error(train("typo", "2", typo), "--device: 'gpu' is not a device: auto, cpu, cuda or cuda:N");
    const char *fp16[] = {"--mixed-precision", "fp16", NULL};
    tu_assert_user_error(train("fp16", "2", fp16), "--mixed-precision");

    const char *nodir[] = {"--output-dir", "/proc/diffc-cannot-be-here", NULL};
    tu_assert_user_error(train("x", "2", nodir), "/proc/diffc-cannot-be-here");
    tu_rmtemp();
}
END_TEST

/* The step of the checkpoint a run last reported saving ("saved DIR/checkpoint-N"). */
static long saved_step(const tu_run_result *r) {
    const char *p = NULL;
    for (const char *q = r->err; (q = strstr(q, "/checkpoint-")); q++)
        p = q;
    ck_assert_msg(p != NULL, "no checkpoint saved: %s", tu_tail(r->err));
    return strtol(p + strlen("/checkpoint-"), NULL, 10);
}

/* Start a run of many steps, signal it once it has taken a step past
 * `after`, and check that it stopped with the documented status and a
 * complete checkpoint of the step it reached, which metrics.jsonl and
 * train_state.safetensors agree on. */
static long stop_with(int sig, const char *const *args, long after) {
    pid_t pid = tu_spawn_diffc(args);
    char want[32];
    snprintf(want, sizeof want, "step %ld/", after + 1);
    ck_assert_msg(tu_read_diffc_until(want), "no '%s' on stderr: %s", want, tu_wait_diffc()->err);
    ck_assert_int_eq(kill(pid, sig), 0);
    tu_run_result *r = tu_wait_diffc();
    ck_assert_msg(r->status == 128 + sig, "exit %d after signal %d: %s", r->status, sig, tu_tail(r->err));
    ck_assert_msg(strstr(r->err, sig == SIGINT ? "interrupted: writing a checkpoint"
                                               : "terminated: writing a checkpoint"),
                  "%s", tu_tail(r->err));
    ck_assert_msg(!strstr(r->err, "error"), "%s", tu_tail(r->err));
    long step = saved_step(r);
    ck_assert_msg(step > after, "stopped at step %ld", step);
    char ckpt[64];
    snprintf(ckpt, sizeof ckpt, "sig/checkpoint-%ld/DONE", step);
    ck_assert_int_eq(access(tu_path(ckpt), R_OK), 0);
    snprintf(ckpt, sizeof ckpt, "sig/checkpoint-%ld/train_state.safetensors", step);
    dc_st_file st;
    ck_assert_msg(dc_st_open(&st, tu_path(ckpt)) == 0, "%s", dc_error());
    ck_assert_int_eq(strtol(dc_st_meta(&st, "step"), NULL, 10), step);
    dc_st_close(&st);
    double loss[1000];
    ck_assert_int_eq(read_losses("sig", loss, 1000), step);
    /* stopped early: no final model in the output folder */
    ck_assert_int_ne(access(tu_path("sig/model_index.json"), F_OK), 0);
    return step;
}

START_TEST(test_signals_stop_with_a_checkpoint) {
    make_dataset();
    char model[600], steps[24];
    snprintf(model, sizeof model, "%s", tu_path("model.json"));
    const char *many = "1000000";
    long s1 = stop_with(SIGTERM, train_args("--model", model, "data", "sig", many, NULL), 0);
    /* resumed, then interrupted again (Ctrl-C) */
    const char *resume[] = {"--resume-from-checkpoint", "latest", NULL};
    long s2 = stop_with(SIGINT, train_args("--model", model, "data", "sig", many, resume), s1);
    /* resumed to an end a few steps on, the model config taken from the checkpoint */
    snprintf(steps, sizeof steps, "%ld", s2 + 3);
    tu_run_result *r = tu_run_diffc(train_args(NULL, NULL, "data", "sig", steps, resume));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    char at[32], done[64];
    snprintf(at, sizeof at, "at step %ld", s2);
    ck_assert_msg(strstr(r->err, "resuming from") && strstr(r->err, at), "%s", tu_tail(r->err));
    snprintf(done, sizeof done, "sig/checkpoint-%ld/DONE", s2 + 3);
    ck_assert_int_eq(access(tu_path(done), R_OK), 0);
    ck_assert_int_eq(access(tu_path("sig/model_index.json"), R_OK), 0);
    double loss[1000];
    ck_assert_int_eq(read_losses("sig", loss, 1000), s2 + 3);
    /* a run without a model has nothing to start from when there is no checkpoint */
    tu_assert_user_error(tu_run_diffc(train_args(NULL, NULL, "data", "empty", "2", resume)),
                         "holds no complete checkpoint");
    tu_rmtemp();
}
END_TEST

/* The fine-tune of `fixture` (a diffusers UNet folder, or a pipeline folder)
 * on the RGB images for one step at learning rate 0 starts from, and so ends
 * with, its weights; the saved config is its config, but for the dropout
 * --dropout sets when `dropout` is not NULL. */
static void check_finetune(const char *fixture, const char *out, const char *dropout) {
    char dir[PATH_MAX], unet[PATH_MAX + 8], cfg[PATH_MAX + 32], weights[PATH_MAX + 64];
    ck_assert_ptr_nonnull(realpath(fixture, dir));
    snprintf(unet, sizeof unet, "%s/unet", dir);
    const char *base = access(unet, F_OK) == 0 ? unet : dir;
    snprintf(cfg, sizeof cfg, "%s/config.json", base);
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.safetensors", base);
    const char *extra[] = {"--learning-rate", "0", "--no-use-ema", "--dropout", dropout, NULL};
    if (!dropout)
        extra[3] = NULL;
    tu_run_result *r = tu_run_diffc(train_args("--pretrained-model", dir, "rgb", out, "1", extra));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    char got[600];
    snprintf(got, sizeof got, "%s/unet/diffusion_pytorch_model.safetensors", tu_path(out));
    assert_same_weights_at(weights, got);
    snprintf(got, sizeof got, "%s/checkpoint-1/unet/diffusion_pytorch_model.safetensors", tu_path(out));
    assert_same_weights_at(weights, got);

    cJSON *want = dc_json_load(cfg);
    ck_assert_msg(want != NULL, "%s", dc_error());
    if (dropout)
        cJSON_ReplaceItemInObjectCaseSensitive(want, "dropout", cJSON_CreateNumber(strtod(dropout, NULL)));
    snprintf(got, sizeof got, "%s/unet/config.json", tu_path(out));
    cJSON *saved = dc_json_load(got);
    ck_assert_msg(saved != NULL, "%s", dc_error());
    char *a = cJSON_Print(want), *b = cJSON_Print(saved);
    ck_assert_msg(cJSON_Compare(want, saved, true), "%s:\n%s\nsaved:\n%s", cfg, a, b);
    free(a);
    free(b);
    cJSON_Delete(want);
    cJSON_Delete(saved);
}

START_TEST(test_finetune_starts_from_the_pretrained_weights) {
    make_dataset();
    make_images("rgb", 3);
    check_finetune("tests/fixtures/unet_attn_class", "attn", NULL);
    check_finetune(tu_path("attn"), "again", NULL); /* our own output folder: a pipeline */
    check_finetune("tests/fixtures/unet_legacy", "legacy", "0.25");

    /* a folder whose weights do not fit its config */
    ck_assert_int_eq(mkdir(tu_path("wide"), 0755), 0);
    cJSON *cfg = dc_json_load("tests/fixtures/unet_attn_class/config.json");
    ck_assert_ptr_nonnull(cfg);
    static const int wider[] = {8, 24};
    cJSON_ReplaceItemInObjectCaseSensitive(cfg, "block_out_channels", cJSON_CreateIntArray(wider, 2));
    ck_assert_msg(dc_json_save(tu_path("wide/config.json"), cfg) == 0, "%s", dc_error());
    cJSON_Delete(cfg);
    char weights[PATH_MAX];
    ck_assert_ptr_nonnull(
        realpath("tests/fixtures/unet_attn_class/diffusion_pytorch_model.safetensors", weights));
    ck_assert_int_eq(symlink(weights, tu_path("wide/diffusion_pytorch_model.safetensors")), 0);
    tu_run_result *r = tu_run_diffc(train_args("--pretrained-model", tu_path("wide"), "rgb", "w", "1", NULL));
    tu_assert_user_error(r, "down_blocks.1.");
    ck_assert_msg(strstr(r->err, "model expects [24"), "%s", tu_tail(r->err));
    tu_rmtemp();
}
END_TEST

/* A pipeline whose scheduler is squaredcos_cap_v2 + v_prediction (zero SNR) fine-tunes
 * with them, and says so; the command line still wins. */
START_TEST(test_finetune_takes_the_pipeline_schedule) {
    make_dataset();
    make_images("rgb", 3);
    ck_assert_int_eq(dc_mkdirs(tu_path("vpipe/unet")), 0);
    ck_assert_int_eq(dc_mkdirs(tu_path("vpipe/scheduler")), 0);
    const char *files[] = {"config.json", "diffusion_pytorch_model.safetensors"};
    for (int k = 0; k < 2; k++) {
        char from[PATH_MAX], to[PATH_MAX + 32], name[PATH_MAX];
        snprintf(name, sizeof name, "tests/fixtures/unet_attn_class/%s", files[k]);
        ck_assert_ptr_nonnull(realpath(name, from));
        snprintf(to, sizeof to, "vpipe/unet/%s", files[k]);
        ck_assert_int_eq(symlink(from, tu_path(to)), 0);
    }
    static const char sched[] = "{\"_class_name\": \"DDPMScheduler\", \"beta_schedule\": \"squaredcos_cap_v2\", "
                                "\"prediction_type\": \"v_prediction\", \"num_train_timesteps\": 500, "
                                "\"rescale_betas_zero_snr\": true}";
    ck_assert_int_eq(dc_write_file(tu_path("vpipe/scheduler/scheduler_config.json"), sched, sizeof sched - 1, false),
                     0);
    const char *extra[] = {"--no-use-ema", NULL};
    tu_run_result *r = tu_run_diffc(train_args("--pretrained-model", tu_path("vpipe"), "rgb", "v", "1", extra));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->out, "\"v_prediction\"  (from the pipeline)") &&
                      strstr(r->out, "\"squaredcos_cap_v2\"  (from the pipeline)"),
                  "%s", r->out);
    dc_noise_schedule_config c;
    char path[600];
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", tu_path("v"));
    ck_assert_msg(dc_noise_schedule_config_load(&c, path) == 0, "%s", dc_error());
    ck_assert(c.beta_schedule == DC_BETA_SQUAREDCOS_CAP_V2 && c.prediction_type == DC_PRED_V_PREDICTION &&
              c.num_train_timesteps == 500 && c.rescale_betas_zero_snr);
    const char *mine[] = {"--no-use-ema", "--prediction-type", "sample", NULL};
    r = tu_run_diffc(train_args("--pretrained-model", tu_path("vpipe"), "rgb", "s", "1", mine));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", tu_path("s"));
    ck_assert_msg(dc_noise_schedule_config_load(&c, path) == 0, "%s", dc_error());
    ck_assert(c.beta_schedule == DC_BETA_SQUAREDCOS_CAP_V2 && c.prediction_type == DC_PRED_SAMPLE);
    tu_rmtemp();
}
END_TEST

/* Hostile configs beside real weights (tests/testutil.c's list), through
 * every way train reads weights: --pretrained-model, and a resume whose
 * checkpoint holds the config. Refused before the model they describe is
 * allocated: one error line, a small resident set. */
START_TEST(test_hostile_configs) {
    tu_mkdtemp("train");
    long base_mb = tu_diffc_base_rss_mb();
    const char *cpu[] = {"--device", "cpu", NULL}; /* no CUDA context under the test's memory limit */
    const char *resume[] = {"--device", "cpu", "--resume-from-checkpoint", "latest", NULL};
    for (int i = 0; i < tu_n_hostile_configs; i++) {
        const tu_hostile_config *h = &tu_hostile_configs[i];
        char dir[64], out[32], done[96];
        snprintf(dir, sizeof dir, "model%d", i);
        tu_write_hostile_unet(dir, "tests/fixtures/unet_legacy", h);
        tu_run_result *r = tu_run_diffc_bounded(train_args("--pretrained-model", tu_path(dir), "data", "o", "2", cpu));
        tu_assert_user_error(r, h->error);
        ck_assert_msg(r->peak_rss_mb < base_mb + 64, "--pretrained-model, config %d: the run reached %ld MiB", i,
                      r->peak_rss_mb);

        snprintf(out, sizeof out, "out%d", i);
        ck_assert_int_eq(mkdir(tu_path(out), 0755), 0);
        snprintf(dir, sizeof dir, "%s/checkpoint-1", out);
        ck_assert_int_eq(mkdir(tu_path(dir), 0755), 0);
        snprintf(dir, sizeof dir, "%s/checkpoint-1/unet", out);
        tu_write_hostile_unet(dir, "tests/fixtures/unet_legacy", h);
        snprintf(done, sizeof done, "%s/checkpoint-1/DONE", out);
        ck_assert_int_eq(dc_write_file(tu_path(done), "", 0, false), 0);
        r = tu_run_diffc_bounded(train_args(NULL, NULL, "data", out, "2", resume));
        tu_assert_user_error(r, h->error);
        ck_assert_msg(r->peak_rss_mb < base_mb + 64, "resume, config %d: the run reached %ld MiB", i, r->peak_rss_mb);
    }
    tu_rmtemp();
}
END_TEST

/* A fine-tune from diffusers' sharded fp16 variant (found alone, or asked
 * for with --variant) starts from its values, converted to f32. */
START_TEST(test_finetune_from_a_sharded_variant) {
    make_dataset();
    const char *fixture = "tests/fixtures/unet_sharded_fp16";
    const char *extra[] = {"--learning-rate", "0", "--no-use-ema", "--variant", "fp16", NULL};
    tu_run_result *r = tu_run_diffc(train_args("--pretrained-model", fixture, "data", "asked", "1", extra));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(!strstr(r->err, "note:"), "%s", tu_tail(r->err));
    dc_st_set want;
    dc_st_file got;
    ck_assert_msg(dc_st_set_open(&want, "tests/fixtures/unet_sharded_fp16/"
                                        "diffusion_pytorch_model.safetensors.index.fp16.json") == 0,
                  "%s", dc_error());
    ck_assert_msg(dc_st_open(&got, tu_path("asked/unet/diffusion_pytorch_model.safetensors")) == 0, "%s",
                  dc_error());
    int n = 0;
    for (int s = 0; s < want.n; s++)
        for (int i = 0; i < want.files[s].n; i++, n++) {
            const dc_st_tensor *w = &want.files[s].tensors[i], *g = dc_st_find(&got, w->name);
            ck_assert_msg(g && g->dtype == DC_F32 && w->dtype == DC_F16 && g->nbytes == 2 * w->nbytes, "%s",
                          w->name);
            size_t k = w->nbytes / 2;
            float *v = malloc(k * sizeof *v);
            ck_assert_int_eq(dc_convert(v, DC_F32, w->data, DC_F16, k), 0);
            ck_assert_msg(memcmp(v, g->data, g->nbytes) == 0, "%s", w->name);
            free(v);
        }
    ck_assert_int_eq(n, got.n);
    dc_st_close(&got);
    dc_st_set_close(&want);

    extra[3] = NULL; /* the folder's only variant, said on stderr */
    r = tu_run_diffc(train_args("--pretrained-model", fixture, "data", "guessed", "1", extra));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "has no plain weights; using its only variant, fp16"), "%s", tu_tail(r->err));
    assert_same_weights("asked/unet/diffusion_pytorch_model.safetensors",
                        "guessed/unet/diffusion_pytorch_model.safetensors");

    const char *bad[] = {"--variant", "bf16", NULL};
    tu_assert_user_error(tu_run_diffc(train_args("--pretrained-model", fixture, "data", "b", "1", bad)),
                         "no variant 'bf16'");
    tu_assert_user_error(train("c", "1", bad), "--variant bf16: only --pretrained-model has weight variants");
    /* an NCSN++ model takes noise levels, not the DDPM timesteps training draws */
    tu_assert_user_error(
        tu_run_diffc(train_args("--pretrained-model", "tests/fixtures/unet_fourier_skip", "data", "d", "1", NULL)),
        "time_embedding_type \"fourier\" (an NCSN++ model) takes noise levels");
    tu_rmtemp();
}
END_TEST

/* A batch far past the machine's memory is refused before the loader's
 * buffers or the step's activations exist: one error naming the bytes
 * needed and available and a batch that fits; the run stays small. */
START_TEST(test_batch_too_large_for_memory) {
    make_dataset();
    long base_mb = tu_diffc_base_rss_mb();
    const char *big[] = {"--train-batch-size", "1048576", "--resolution", "64", "--device", "cpu", NULL};
    tu_run_result *r = tu_run_diffc(train_args("--model", tu_path("model.json"), "data", "big", "2", big));
    tu_assert_user_error(r, "--train-batch-size 1048576 at 64x64 needs about ");
    ck_assert_msg(strstr(r->err, "is available") && strstr(r->err, "--gradient-accumulation-steps"), "%s", r->err);
    const char *fit = strstr(r->err, "use --train-batch-size ");
    ck_assert_msg(fit, "no batch size suggested: %s", r->err);
    long most = strtol(fit + strlen("use --train-batch-size "), NULL, 10);
    ck_assert_msg(most > 0 && most < 1048576, "%s", r->err);
    ck_assert_msg(r->peak_rss_mb < base_mb + 128, "the run reached %ld MiB (diffc --help: %ld)", r->peak_rss_mb,
                  base_mb);
    tu_rmtemp();
}
END_TEST

/* The largest --train-batch-size the memory check suggests for a batch far too large. */
static long batch_that_fits(const char *out, const char *const *extra) {
    const char *args[8] = {"--train-batch-size", "1048576", "--resolution", "64", "--device", "cpu"};
    for (int i = 0; extra && extra[i]; i++)
        args[6 + i] = extra[i];
    tu_run_result *r = tu_run_diffc(train_args("--model", tu_path("model.json"), "data", out, "2", args));
    tu_assert_user_error(r, "--train-batch-size 1048576 at 64x64 needs about ");
    const char *fit = strstr(r->err, "use --train-batch-size ");
    ck_assert_msg(fit, "no batch size suggested: %s", r->err);
    return strtol(fit + strlen("use --train-batch-size "), NULL, 10);
}

/* --gradient-checkpointing changes the memory, not the run: the same
 * losses and weights bit for bit (the model has attention and dropout
 * 0.1), and the memory check, measuring what a checkpointed step holds,
 * fits more images. */
START_TEST(test_gradient_checkpointing_changes_only_memory) {
    make_dataset();
    const char *on[] = {"--gradient-checkpointing", NULL};
    tu_run_result *r = train("plain", "3", NULL);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    r = train("ckpt", "3", on);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    assert_same_weights("plain/unet/diffusion_pytorch_model.safetensors",
                        "ckpt/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("plain/checkpoint-3/train_state.safetensors", "ckpt/checkpoint-3/train_state.safetensors");
    double a[4], b[4];
    ck_assert_int_eq(read_losses("plain", a, 4), 3);
    ck_assert_int_eq(read_losses("ckpt", b, 4), 3);
    for (int i = 0; i < 3; i++)
        ck_assert_msg(a[i] == b[i], "step %d: loss %.17g, checkpointed %.17g", i + 1, a[i], b[i]);
    long plain = batch_that_fits("big", NULL), ckpt = batch_that_fits("big2", on);
    ck_assert_msg(ckpt > plain * 3 / 2, "a batch of %ld fits checkpointed, %ld plain", ckpt, plain);
    tu_rmtemp();
}
END_TEST

/* out/checkpoint-N/train_state.safetensors with metadata `key` set to `value`. */
static void edit_state(const char *ckpt, const char *key, const char *value) {
    char path[128];
    snprintf(path, sizeof path, "%s/train_state.safetensors", ckpt);
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, tu_path(path)) == 0, "%s", dc_error());
    const char *values[16];
    ck_assert_int_le(f.n_meta, 16);
    for (int i = 0; i < f.n_meta; i++)
        values[i] = strcmp(f.meta_keys[i], key) ? f.meta_values[i] : value;
    ck_assert_msg(dc_st_write(tu_path(path), f.tensors, f.n, (const char *const *)f.meta_keys, values, f.n_meta) == 0,
                  "%s", dc_error());
    dc_st_close(&f);
}

/* A resume must have steps left, and every counter of the train state must
 * hold together; each violation is one error naming the numbers. */
START_TEST(test_train_state_checked) {
    make_dataset();
    const char *ckpt[] = {"--checkpointing-steps", "2", "--gradient-accumulation-steps", "2", NULL};
    tu_run_result *r = train("run", "3", ckpt);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    const char *resume[] = {"--resume-from-checkpoint", "latest", "--gradient-accumulation-steps", "2", NULL};
    /* the run is done: checkpoint-3 is its last step */
    tu_assert_user_error(train("run", "3", resume), "checkpoint-3: the checkpoint is at step 3 and --max-train-steps is 3");
    tu_assert_user_error(train("run", "2", resume), "the checkpoint is at step 3 and --max-train-steps is 2");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r %s %s", tu_path("run/checkpoint-2"), tu_path("keep"));
    ck_assert_int_eq(system(cmd), 0);
    static const struct {
        const char *key, *value, *error;
    } bad[] = {
        {"loader_cursor", "-4", "'loader_cursor' is missing or not a count (\"-4\")"},
        {"loader_cursor", "9223372036854775807", "loader_cursor 9223372036854775807 is not step 2 x the 2"},
        {"loader_cursor", "99999999999999999999", "'loader_cursor' is missing or not a count"},
        {"loader_cursor", "3", "loader_cursor 3 is not step 2 x the 2 micro-batches"},
        {"loader_cursor", "", "'loader_cursor' is missing or not a count"},
        {"step", "-1", "'step' is missing or not a count"},
        {"step", "4611686018427387904", "step 4611686018427387904 is past any run's end"},
        {"step", "1", "adamw_step 2 is past step 1"},
        {"adamw_step", "3", "adamw_step 3 is past step 2"},
        {"ema_step", "7", "ema_step 7 is past step 2"},
        {"bad_steps", "3", "bad_steps 3 is past step 2"},
        {"bad_steps", "x", "'bad_steps' is missing or not a count"},
        {"train_config", "[", "'train_config' is missing or not a JSON object"},
        {"train_config", "{\"gradient_accumulation_steps\": 0}", "gradient_accumulation_steps 0 is not a count"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", tu_path("run/checkpoint-2"), tu_path("keep"),
                 tu_path("run/checkpoint-2"));
        ck_assert_int_eq(system(cmd), 0);
        edit_state("run/checkpoint-2", bad[i].key, bad[i].value);
        const char *from2[] = {"--resume-from-checkpoint", "checkpoint-2", "--gradient-accumulation-steps", "2", NULL};
        r = train("run", "9", from2);
        tu_assert_user_error(r, bad[i].error);
        ck_assert_msg(strstr(r->err, "checkpoint-2"), "%s", r->err);
    }
    /* the moments must be finite, the second not negative */
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", tu_path("run/checkpoint-2"), tu_path("keep"),
             tu_path("run/checkpoint-2"));
    ck_assert_int_eq(system(cmd), 0);
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, tu_path("run/checkpoint-2/train_state.safetensors")) == 0, "%s", dc_error());
    dc_st_tensor ts[2];
    ck_assert_int_eq(f.n, 2);
    memcpy(ts, f.tensors, sizeof ts);
    size_t n = ts[1].nbytes / sizeof(float), at = tu_next() % n;
    float *sq = malloc(ts[1].nbytes);
    memcpy(sq, ts[1].data, ts[1].nbytes);
    sq[at] = -1.0f;
    ts[1].data = sq;
    ck_assert_str_eq(ts[1].name, "adamw.exp_avg_sq");
    ck_assert_msg(dc_st_write(tu_path("run/checkpoint-2/train_state.safetensors"), ts, 2,
                              (const char *const *)f.meta_keys, (const char *const *)f.meta_values, f.n_meta) == 0,
                  "%s", dc_error());
    dc_st_close(&f);
    free(sq);
    const char *from2[] = {"--resume-from-checkpoint", "checkpoint-2", "--gradient-accumulation-steps", "2", NULL};
    tu_assert_user_error(train("run", "9", from2), "'adamw.exp_avg_sq' holds -1");
    /* the untouched state resumes */
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", tu_path("run/checkpoint-2"), tu_path("keep"),
             tu_path("run/checkpoint-2"));
    ck_assert_int_eq(system(cmd), 0);
    r = train("run", "4", from2);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    tu_rmtemp();
}
END_TEST

/* Largest |a - b| over the largest |a|, per tensor, of two weight files. */
static double worst_relative_difference(const char *a, const char *b, const char *skip) {
    dc_st_file fa, fb;
    ck_assert_msg(dc_st_open(&fa, tu_path(a)) == 0, "%s", dc_error());
    ck_assert_msg(dc_st_open(&fb, tu_path(b)) == 0, "%s", dc_error());
    double worst = 0;
    for (int i = 0; i < fa.n; i++) {
        const dc_st_tensor *ta = &fa.tensors[i], *tb = dc_st_find(&fb, ta->name);
        ck_assert_msg(tb && tb->nbytes == ta->nbytes && ta->dtype == DC_F32, "%s", ta->name);
        if (strstr(ta->name, skip))
            continue;
        const float *x = ta->data, *y = tb->data;
        double diff = 0, scale = 0;
        for (size_t k = 0; k < ta->nbytes / sizeof(float); k++) {
            diff = fmax(diff, fabs((double)x[k] - y[k]));
            scale = fmax(scale, fabs((double)x[k]));
        }
        worst = fmax(worst, scale > 0 ? diff / scale : diff);
    }
    dc_st_close(&fa);
    dc_st_close(&fb);
    return worst;
}

/* Accumulating 2 batches of 2 sees the images, timesteps, noise and dropped
 * labels of one batch of 4, so it computes the same losses and weights. */
START_TEST(test_accumulation_matches_a_big_batch) {
    make_dataset();
    const char *big[] = {"--dropout", "0", NULL};
    tu_run_result *r = train("b4", "5", big);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    const char *accum[] = {"--dropout", "0", "--train-batch-size", "2", "--gradient-accumulation-steps", "2",
                           NULL};
    r = train("a2", "5", accum);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    double a[6], b[6];
    ck_assert_int_eq(read_losses("b4", a, 6), 5);
    ck_assert_int_eq(read_losses("a2", b, 6), 5);
    for (int i = 0; i < 5; i++)
        ck_assert_msg(fabs(a[i] - b[i]) <= 1e-6 * fabs(a[i]), "step %d: loss %.9g vs %.9g", i + 1, a[i],
                      b[i]);
    /* Attention's key bias has a gradient of exactly 0 (softmax ignores a
     * shift shared by all keys): what is computed is rounding noise, which
     * AdamW scales up to steps of the learning rate's size. It is left out. */
    const char *skip = "to_k.bias";
    double raw = worst_relative_difference("b4/checkpoint-5/unet/diffusion_pytorch_model.safetensors",
                                           "a2/checkpoint-5/unet/diffusion_pytorch_model.safetensors", skip);
    double ema = worst_relative_difference("b4/unet/diffusion_pytorch_model.safetensors",
                                           "a2/unet/diffusion_pytorch_model.safetensors", skip);
    /* Two half batches sum their gradients in another order than one batch:
     * AdamW turns that rounding into weight differences of up to ~2e-5. */
    ck_assert_msg(raw <= 1e-4 && ema <= 1e-4, "weights differ by %g (EMA %g) relative", raw, ema);
    tu_rmtemp();
}
END_TEST

/* On a machine without a GPU, --device auto (the default) is the CPU: the
 * same weights, bit for bit, as --device cpu, with bf16 asked (it applies
 * to GPUs only); the resolved device is printed with the config. */
START_TEST(test_device_cpu_is_the_default_here) {
    if (tu_cuda_device_count() > 0)
        return; /* auto picks the GPU there: test_cuda_cli compares the two */
    make_dataset();
    tu_run_result *r = train("auto", "3", NULL);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->out, "(resolved) device cpu"), "%s", tu_tail(r->out));
    ck_assert_msg(strstr(r->out, "(resolved) cpu kernels "), "%s", tu_tail(r->out));
    const char *cpu[] = {"--device", "cpu", "--mixed-precision", "bf16", NULL};
    r = train("cpu", "3", cpu);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->out, "(resolved) device cpu, matrix arithmetic f32"), "%s", tu_tail(r->out));
    assert_same_weights("auto/unet/diffusion_pytorch_model.safetensors",
                        "cpu/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("auto/checkpoint-3/train_state.safetensors", "cpu/checkpoint-3/train_state.safetensors");
    tu_rmtemp();
}
END_TEST

/* A learning rate so large that the weights blow up after the first step that
 * uses it: the following steps are skipped, and the fifth in a row stops the
 * run with one error line, the checkpoints written before it complete. */
START_TEST(test_non_finite_steps_stop_the_run) {
    make_dataset();
    const char *huge[] = {"--learning-rate", "1e15", "--lr-scheduler", "constant_with_warmup",
                          "--lr-warmup-steps", "1", "--checkpointing-steps", "1", NULL};
    tu_run_result *r = train("nan", "20", huge);
    ck_assert_msg(r->status == 1, "exit %d: %s", r->status, tu_tail(r->err));
    const char *err = strstr(r->err, "diffc: error: ");
    ck_assert_msg(err && (err == r->err || err[-1] == '\n'), "%s", tu_tail(r->err));
    ck_assert_msg(strstr(err, "5 steps in a row had a non-finite loss"), "%s", tu_tail(r->err));
    ck_assert_msg(strchr(err, '\n') == r->err + r->n_err - 1, "not the last line: %s", tu_tail(r->err));
    int skipped = 0;
    for (const char *p = r->err; (p = strstr(p, "non-finite loss or gradient, skipped")); p++)
        skipped++;
    ck_assert_int_eq(skipped, 5);
    /* the step that stopped it wrote nothing; the newest checkpoint is complete and readable */
    char *latest = NULL;
    int64_t step = 0;
    ck_assert_int_eq(dc_checkpoint_latest(tu_path("nan"), &latest, &step), 1);
    ck_assert_msg(step >= 2 && step < 20, "latest checkpoint %lld", (long long)step);
    char next[64];
    snprintf(next, sizeof next, "nan/checkpoint-%lld", (long long)step + 1);
    ck_assert_int_ne(access(tu_path(next), F_OK), 0);
    char path[600];
    snprintf(path, sizeof path, "%s/unet/diffusion_pytorch_model.safetensors", latest);
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, path) == 0, "%s", dc_error());
    dc_st_close(&f);
    free(latest);
    tu_rmtemp();
}
END_TEST

/* ---- the output folder, and the summary ---- */

/* The names in `dir`, sorted and comma-joined, into buf. */
static void list_dir(const char *dir, char *buf, size_t n) {
    struct dirent **names;
    int k = scandir(dir, &names, NULL, alphasort);
    ck_assert_msg(k >= 0, "%s: %s", dir, strerror(errno));
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; i < k; i++) {
        len += (size_t)snprintf(buf + len, len < n ? n - len : 0, "%s,", names[i]->d_name);
        free(names[i]);
    }
    free(names);
    ck_assert_uint_lt(len, n);
}

/* Exit 1, and the last line of stderr, the only error among any warnings
 * before it, is "diffc: error: ...want...". */
static void assert_error_line(const tu_run_result *r, const char *want) {
    const char *err = strstr(r->err, "diffc: error: ");
    ck_assert_msg(r->status == 1 && err && (err == r->err || err[-1] == '\n'), "exit %d: %s", r->status,
                  tu_tail(r->err));
    ck_assert_msg(strchr(err, '\n') == r->err + r->n_err - 1, "not the last line: %s", tu_tail(r->err));
    ck_assert_msg(strstr(err, want), "'%s' lacks '%s'", err, want);
}

/* Training data that is missing, empty or all bad: one error, and the
 * output folder is left as it was: not there when it was not (nor the
 * parents the run made for it), or holding what it held, a lock file that
 * a killed run left included. */
START_TEST(test_data_errors_leave_the_output_folder_alone) {
    make_dataset();
    char model[600], before[4096], after[4096];
    snprintf(model, sizeof model, "%s", tu_path("model.json"));
    ck_assert_int_eq(mkdir(tu_path("empty"), 0755), 0);
    ck_assert_int_eq(mkdir(tu_path("bad"), 0755), 0);
    const char *bad[] = {"bad/a.png", "bad/b.jpg", "bad/c.png"};
    for (int i = 0; i < 3; i++) {
        uint8_t junk[64];
        for (size_t k = 0; k < sizeof junk; k++)
            junk[k] = (uint8_t)tu_next();
        ck_assert_int_eq(dc_write_file(tu_path(bad[i]), junk, sizeof junk, false), 0);
    }
    const char *data[] = {"missing", "empty", "bad"};
    const char *want[] = {"missing: cannot open", "no PNG or JPEG image", "no usable image"};
    for (int i = 0; i < 3; i++) {
        assert_error_line(tu_run_diffc(train_args("--model", model, data[i], "new/run", "2", NULL)), want[i]);
        ck_assert_msg(access(tu_path("new"), F_OK) != 0, "%s: the output folder was left behind", data[i]);
    }
    /* a folder that was there keeps its files, and gets none */
    ck_assert_int_eq(mkdir(tu_path("old"), 0755), 0);
    ck_assert_int_eq(mkdir(tu_path("old/sub"), 0755), 0);
    ck_assert_int_eq(dc_write_file(tu_path("old/notes.txt"), "mine\n", 5, false), 0);
    ck_assert_int_eq(dc_write_file(tu_path("old/" RUN_DIR_LOCK), "1\n", 2, false), 0); /* a killed run's */
    list_dir(tu_path("old"), before, sizeof before);
    for (int i = 0; i < 3; i++) {
        assert_error_line(tu_run_diffc(train_args("--model", model, data[i], "old", "2", NULL)), want[i]);
        list_dir(tu_path("old"), after, sizeof after);
        ck_assert_str_eq(after, before);
    }
    ck_assert_int_eq(access(tu_path("old/sub"), F_OK), 0);
    tu_rmtemp();
}
END_TEST

static int count_lines(const char *path) {
    size_t n;
    char *text = dc_read_file(path, 1 << 24, &n);
    ck_assert_msg(text != NULL, "%s", dc_error());
    int lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    free(text);
    return lines;
}

/* One run at a time in an output folder: a second is refused naming the
 * first's pid, and touches nothing; a run killed outright leaves no lock
 * behind, and its resume goes on; a finished run removes its lock file. */
START_TEST(test_output_folder_is_locked) {
    make_dataset();
    char model[600], want[64], steps[24];
    snprintf(model, sizeof model, "%s", tu_path("model.json"));
    const char *ckpt[] = {"--checkpointing-steps", "2", NULL};
    pid_t pid = tu_spawn_diffc(train_args("--model", model, "data", "busy", "1000000", ckpt));
    ck_assert_msg(tu_read_diffc_until("/checkpoint-2"), "%s", tu_tail(tu_wait_diffc()->err));
    dc_run_dir second; /* what a second diffc train on the folder does first */
    ck_assert_int_eq(dc_run_dir_take(&second, tu_path("busy")), -1);
    snprintf(want, sizeof want, "in use by another training run (pid %ld)", (long)pid);
    ck_assert_msg(strstr(dc_error(), want), "%s", dc_error());
    dc_run_dir_release(&second, true);
    ck_assert_int_eq(access(tu_path("busy/" RUN_DIR_LOCK), F_OK), 0);
    ck_assert_int_eq(access(tu_path("busy/checkpoint-2/DONE"), F_OK), 0);

    int st = tu_kill_diffc(SIGKILL);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "status %d", st);
    char *latest = NULL;
    int64_t step = 0;
    ck_assert_int_eq(dc_checkpoint_latest(tu_path("busy"), &latest, &step), 1);
    free(latest);
    snprintf(steps, sizeof steps, "%lld", (long long)step + 2);
    const char *resume[] = {"--resume-from-checkpoint", "latest", NULL};
    tu_run_result *r = tu_run_diffc(train_args("--model", model, "data", "busy", steps, resume));
    ck_assert_msg(r->status == 0 && strstr(r->err, "resuming from"), "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_int_ne(access(tu_path("busy/" RUN_DIR_LOCK), F_OK), 0);

    /* held by this process: diffc train says so, one line, and writes nothing */
    dc_run_dir mine;
    ck_assert_msg(dc_run_dir_take(&mine, tu_path("busy")) == 0, "%s", dc_error());
    int lines = count_lines(tu_path("busy/metrics.jsonl"));
    snprintf(want, sizeof want, "in use by another training run (pid %ld)", (long)getpid());
    tu_assert_user_error(tu_run_diffc(train_args("--model", model, "data", "busy", "1000000", NULL)), want);
    ck_assert_int_eq(count_lines(tu_path("busy/metrics.jsonl")), lines);
    dc_run_dir_release(&mine, false);
    ck_assert_int_ne(access(tu_path("busy/" RUN_DIR_LOCK), F_OK), 0);
    ck_assert_int_eq(access(tu_path("busy/model_index.json"), F_OK), 0);
    tu_rmtemp();
}
END_TEST

/* The summary's img/s is the whole run's: its images over the training
 * loop's time, which the sample grids lengthen, and not the rate of the
 * last step (far higher here). The loop took at least the time between the
 * first and the last step line, and at most the process's lifetime; the
 * figure is as exact as its printed digits. */
START_TEST(test_summary_rate_is_the_whole_runs) {
    make_dataset();
    char model[600];
    snprintf(model, sizeof model, "%s", tu_path("model.json"));
    const char *grids[] = {"--sample-every", "3", "--eval-batch-size", "8", "--ddpm-num-inference-steps", "100",
                           NULL};
    double t0 = dc_seconds();
    tu_spawn_diffc(train_args("--model", model, "data", "rate", "6", grids));
    ck_assert_msg(tu_read_diffc_until("step 1/6"), "%s", tu_tail(tu_wait_diffc()->err));
    double t1 = dc_seconds();
    ck_assert_msg(tu_read_diffc_until("step 6/6"), "%s", tu_tail(tu_wait_diffc()->err));
    double t6 = dc_seconds();
    tu_run_result *r = tu_wait_diffc();
    double t_end = dc_seconds();
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    const char *done = strstr(r->err, "done: 6 steps in ");
    ck_assert_msg(done != NULL, "%s", tu_tail(r->err));
    double rate = strtod(strchr(done, ',') + 1, NULL), images = 6 * 4;
    double shown = rate < 100 ? 0.05 : 0.5; /* printed with 1 decimal below 100, else none */
    ck_assert_msg(rate + shown >= images / (t_end - t0) && rate - shown <= 1.25 * images / (t6 - t1),
                  "%s: %g images, step 1 to 6 in %.3f s, the process %.3f s", done, images, t6 - t1,
                  t_end - t0);
    tu_rmtemp();
}
END_TEST

/* A launcher's environment asking for two ranks, without the launcher:
 * built without MPI, the error says how to rebuild; with MPI, MPI sees one
 * process and the error says that it and the launcher disagree. */
START_TEST(test_ranks_need_a_matching_mpi) {
    make_dataset();
    ck_assert_int_eq(setenv("PMI_SIZE", "2", 1), 0);
    tu_run_result *r = train("pmi", "1", NULL);
    unsetenv("PMI_SIZE");
#ifdef DC_HAVE_MPI
    const char *want = "the launcher started 2 processes but MPI sees 1";
#else
    const char *want = "the launcher started 2 processes, but this diffc was built without MPI";
#endif
    ck_assert_msg(r->status == 1 && !strncmp(r->err, "diffc: error: ", 14) && strstr(r->err, want), "exit %d: %s",
                  r->status, tu_tail(r->err));
    ck_assert_int_ne(access(tu_path("pmi/metrics.jsonl"), F_OK), 0);
    tu_rmtemp();
}
END_TEST

START_TEST(test_help_and_usage) {
    const char *help[] = {"train", "--help", NULL};
    tu_run_result *r = tu_run_diffc(help);
    ck_assert_msg(r->status == 0 && r->n_err == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strncmp(r->out, "usage: diffc train", 18) == 0, "%s", r->out);
    /* the help with each option on a line of its own: "--name META text (default: D)" */
    char text[sizeof r->out];
    size_t len = 0;
    for (size_t i = 0; i < r->n_out; i++) {
        char c = r->out[i];
        if (c == '\n' && !strncmp(r->out + i + 1, "  --", 4))
            text[len++] = c, i += 2;
        else if (!isspace((unsigned char)c))
            text[len++] = c;
        else if (len && !isspace((unsigned char)text[len - 1]))
            text[len++] = ' ';
    }
    text[len] = '\0';
    int n;
    const dc_train_option *t = dc_train_option_table(&n);
    for (int i = 0; i < n; i++) {
        char key[80], name[100], def[120];
        if (!strcmp(t[i].group, "captions"))
            continue; /* train-caption's (test_train_caption reads its --help) */
        snprintf(key, sizeof key, "%s", t[i].key);
        for (char *c = key; *c; c++)
            *c = *c == '_' ? '-' : *c;
        snprintf(name, sizeof name, t[i].type == DC_OPT_BOOL ? "\n--[no-]%s " : "\n--%s ", key);
        const char *at = strstr(text, name);
        ck_assert_msg(at != NULL, "--%s is not in --help", key);
        if (!t[i].def)
            continue;
        const char *end = strchr(at + 1, '\n'), *d;
        bool on = !strcmp(t[i].def, "true");
        snprintf(def, sizeof def, "(default: %s)", t[i].type != DC_OPT_BOOL ? t[i].def : on ? "on" : "off");
        ck_assert_msg((d = strstr(at, def)) && (!end || d < end), "--%s: no '%s'", key, def);
    }

    const char *unknown[] = {"train", "--lerning-rate", "1", NULL};
    const char *missing[] = {"train", "--seed", NULL};
    const char *positional[] = {"train", "data", NULL};
    const char *const *bad[] = {unknown, missing, positional};
    const char *says[] = {"unknown option '--lerning-rate' (did you mean --learning-rate?)",
                          "--seed needs a value", "no positional arguments ('data')"};
    for (int i = 0; i < 3; i++) {
        r = tu_run_diffc(bad[i]);
        ck_assert_msg(r->status == 2 && r->n_out == 0, "%s: exit %d", bad[i][1], r->status);
        ck_assert_msg(strncmp(r->err, "diffc: error: ", 14) == 0 && strstr(r->err, says[i]) &&
                          strstr(r->err, "diffc train --help"),
                      "%s", tu_tail(r->err));
    }
}
END_TEST

/* ---- several ranks (train/dist.c): `test_train dist`, its own CTest entry ---- */

/* mpirun with two ranks on however many cores there are, one thread each,
 * as root too (containers, CI). */
static const char *const mpirun2[] = {"mpirun", "-np", "2", "--oversubscribe", "--allow-run-as-root",
                                      "--bind-to", "none", "-x", "OMP_NUM_THREADS=1", NULL};

static tu_run_result *train_2_ranks(const char *out, const char *steps, const char *const *extra) {
    tu_spawn_diffc_under(mpirun2, train_args("--model", tu_path("model.json"), "data", out, steps, extra));
    return tu_wait_diffc();
}

/* How many times `what` occurs in s. */
static int count_of(const char *s, const char *what) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, what)); p++)
        n++;
    return n;
}

/* Two ranks with batch 2 see the images, timesteps, noise and dropped labels
 * of one process with batch 4: the same losses and weights, to float
 * tolerance (as accumulating batches); rank 0 alone logs, and the ranks prove
 * at each checkpoint that they hold the same weights, bit for bit. The
 * gradient travels in 18 buckets of 10 KiB, the last one partial, most of
 * them started while the backward pass goes on. */
START_TEST(test_two_ranks_match_one_big_batch) {
    make_dataset();
    ck_assert_int_eq(setenv("DC_BUCKET_MB", "0.01", 1), 0);
    const char *big[] = {"--dropout", "0", NULL};
    tu_run_result *r = train("one", "5", big);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    const char *half[] = {"--dropout", "0", "--train-batch-size", "2", "--checkpointing-steps", "2", NULL};
    r = train_2_ranks("two", "5", half);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "global batch 4 = 2 ranks x --train-batch-size 2"), "%s", tu_tail(r->err));
    ck_assert_msg(count_of(r->err, "step 1/5") == 1, "%s", tu_tail(r->err));
    int buckets, early;
    const char *note = strstr(r->err, "gradient all-reduce: ");
    ck_assert_msg(note && sscanf(note, "gradient all-reduce: %d buckets of up to %*s MiB, %d started", &buckets,
                                 &early) == 2, "%s", tu_tail(r->err));
    ck_assert_msg(buckets > 10 && early > buckets / 2, "%d of %d buckets overlapped the backward pass", early,
                  buckets);
    ck_assert_msg(count_of(r->out, "train_batch_size") == 1, "options printed by each rank: %s", r->out);
    for (int step = 2; step <= 5; step += step == 4 ? 1 : 2) {
        char want[64];
        snprintf(want, sizeof want, "checkpoint-%d (weights ", step);
        ck_assert_msg(count_of(r->err, want) == 1 && strstr(r->err, "the same on all 2 ranks"), "%s",
                      tu_tail(r->err));
    }
    double a[6], b[6];
    ck_assert_int_eq(read_losses("one", a, 6), 5);
    ck_assert_int_eq(read_losses("two", b, 6), 5);
    for (int i = 0; i < 5; i++)
        ck_assert_msg(fabs(a[i] - b[i]) <= 1e-6 * fabs(a[i]), "step %d: loss %.9g vs %.9g", i + 1, a[i], b[i]);
    const char *skip = "to_k.bias"; /* see test_accumulation_matches_a_big_batch */
    double raw = worst_relative_difference("one/checkpoint-5/unet/diffusion_pytorch_model.safetensors",
                                           "two/checkpoint-5/unet/diffusion_pytorch_model.safetensors", skip);
    double ema = worst_relative_difference("one/unet/diffusion_pytorch_model.safetensors",
                                           "two/unet/diffusion_pytorch_model.safetensors", skip);
    ck_assert_msg(raw <= 1e-4 && ema <= 1e-4, "weights differ by %g (EMA %g) relative", raw, ema);
    /* and two ranks accumulating two micro-batches of 1: the mean over four */
    const char *quarter[] = {"--dropout", "0", "--train-batch-size", "1", "--gradient-accumulation-steps", "2", NULL};
    r = train_2_ranks("acc", "5", quarter);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    raw = worst_relative_difference("one/unet/diffusion_pytorch_model.safetensors",
                                    "acc/unet/diffusion_pytorch_model.safetensors", skip);
    ck_assert_msg(raw <= 1e-4, "accumulating on 2 ranks: weights differ by %g relative", raw);
    ck_assert_int_eq(read_metric("one", "grad_norm", a, 6), 5);
    ck_assert_int_eq(read_metric("acc", "grad_norm", b, 6), 5);
    for (int i = 0; i < 5; i++) /* AdamW hides a wrong scale from the weights, not from the norm */
        ck_assert_msg(fabs(a[i] - b[i]) <= 1e-5 * fabs(a[i]), "step %d: gradient norm %.9g vs %.9g", i + 1,
                      a[i], b[i]);
    tu_rmtemp();
}
END_TEST

/* --zero-stage 1 (each rank keeps half of AdamW's state, reduce-scatters
 * the gradient and all-gathers the weights) trains as stage 0 does: the
 * same losses, gradient norms, weights and, gathered into the checkpoint,
 * the same optimizer state, of the model's size whatever the rounding. */
START_TEST(test_zero_stage_1_matches_stage_0) {
    make_dataset();
    const char *plain[] = {"--checkpointing-steps", "4", NULL};
    const char *zero[] = {"--checkpointing-steps", "4", "--zero-stage", "1", NULL};
    tu_run_result *r = train_2_ranks("plain", "5", plain);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    r = train_2_ranks("zero", "5", zero);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "the same on all 2 ranks") && strstr(r->err, "ZeRO-1: "), "%s", tu_tail(r->err));
    const char *keys[] = {"loss", "grad_norm"};
    for (int k = 0; k < 2; k++) {
        double a[6], b[6];
        ck_assert_int_eq(read_metric("plain", keys[k], a, 6), 5);
        ck_assert_int_eq(read_metric("zero", keys[k], b, 6), 5);
        for (int i = 0; i < 5; i++)
            ck_assert_msg(fabs(a[i] - b[i]) <= 1e-6 * fabs(a[i]), "step %d: %s %.9g vs %.9g", i + 1, keys[k],
                          a[i], b[i]);
    }
    const char *files[] = {"checkpoint-4/unet/diffusion_pytorch_model.safetensors",
                           "checkpoint-4/train_state.safetensors", "unet/diffusion_pytorch_model.safetensors"};
    for (int f = 0; f < 3; f++) {
        char a[256], b[256];
        snprintf(a, sizeof a, "plain/%s", files[f]);
        snprintf(b, sizeof b, "zero/%s", files[f]);
        double worst = worst_relative_difference(a, b, "(nothing skipped)");
        ck_assert_msg(worst <= 1e-6, "%s: differs by %g relative", files[f], worst);
    }
    tu_rmtemp();
}
END_TEST

/* Resuming on two ranks continues exactly as the uninterrupted two-rank run. */
START_TEST(test_two_ranks_resume_exactly) {
    make_dataset();
    const char *stage = _i ? "1" : "0"; /* also with AdamW's state in shards */
    const char *ckpt[] = {"--checkpointing-steps", "3", "--zero-stage", stage, NULL};
    tu_run_result *r = train_2_ranks("whole", "6", ckpt);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    start_from_checkpoint_3();
    const char *resume[] = {"--checkpointing-steps", "3", "--zero-stage", stage, "--resume-from-checkpoint",
                            "latest", NULL};
    r = train_2_ranks("resumed", "6", resume);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(count_of(r->err, "resuming from") == 1 && strstr(r->err, "at step 3"), "%s", tu_tail(r->err));
    assert_same_weights("whole/unet/diffusion_pytorch_model.safetensors",
                        "resumed/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("whole/checkpoint-6/train_state.safetensors",
                        "resumed/checkpoint-6/train_state.safetensors");
    tu_rmtemp();
}
END_TEST

/* The pids of the processes whose parent is `parent`. */
static int children_of(pid_t parent, pid_t *pids, int max) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)parent, (int)parent);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "%s: cannot read", path);
    int n = 0;
    while (n < max && fscanf(f, "%d", &pids[n]) == 1)
        n++;
    fclose(f);
    return n;
}

/* The pid of rank `rank` of the job that mpirun `launcher` started, found by
 * the OMPI_COMM_WORLD_RANK in its environment. */
static pid_t rank_pid(pid_t launcher, int rank) {
    pid_t pids[16];
    int n = children_of(launcher, pids, 16);
    char want[48];
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    for (int i = 0; i < n; i++) {
        char path[64], env[1 << 15];
        snprintf(path, sizeof path, "/proc/%d/environ", (int)pids[i]);
        FILE *f = fopen(path, "r");
        size_t len = f ? fread(env, 1, sizeof env - 1, f) : 0;
        if (f)
            fclose(f);
        for (size_t at = 0; at < len; at += strlen(env + at) + 1)
            if (!strcmp(env + at, want))
                return pids[i];
    }
    ck_abort_msg("no child of mpirun (pid %d) is rank %d", (int)launcher, rank);
    return -1;
}

/* Start a long two-rank run into `out` and wait until it has taken a step. */
static pid_t start_long_run(const char *out, const char *const *extra) {
    pid_t pid = tu_spawn_diffc_under(mpirun2, train_args("--model", tu_path("model.json"), "data", out,
                                                         "1000000", extra));
    ck_assert_msg(tu_read_diffc_until("step 2/"), "no step: %s", tu_tail(tu_wait_diffc()->err));
    return pid;
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A rank killed outright: the job ends, non-zero and with a word, well
 * within a minute; the checkpoint written before is complete. */
START_TEST(test_killed_rank_stops_the_job) {
    make_dataset();
    const char *ckpt[] = {"--checkpointing-steps", "2", NULL};
    pid_t pid = start_long_run("killed", ckpt);
    ck_assert_msg(tu_read_diffc_until("checkpoint-2 (weights"), "%s", tu_tail(tu_wait_diffc()->err));
    double t0 = seconds();
    ck_assert_int_eq(kill(rank_pid(pid, 1), SIGKILL), 0);
    tu_run_result *r = tu_wait_diffc();
    double took = seconds() - t0;
    ck_assert_msg(r->status != 0 && took < 60, "exit %d after %.1f s", r->status, took);
    ck_assert_msg(strstr(r->err, "rank 1"), "no word of rank 1: %s", tu_tail(r->err));
    ck_assert_int_eq(access(tu_path("killed/checkpoint-2/DONE"), R_OK), 0);
    tu_rmtemp();
}
END_TEST

/* An error on one rank (rank 0 cannot write its sample grid: samples/ is a
 * file) ends every rank at once (MPI_Abort), with the error on stderr. (Open
 * MPI's own banner about MPI_Abort is not checked: it is lost now and then.) */
START_TEST(test_error_on_one_rank_aborts_the_job) {
    make_dataset();
    ck_assert_int_eq(mkdir(tu_path("err"), 0755), 0);
    FILE *f = fopen(tu_path("err/samples"), "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    const char *sample[] = {"--sample-every", "2", "--eval-batch-size", "2", "--ddpm-num-inference-steps", "2",
                            NULL};
    double t0 = seconds();
    tu_run_result *r = train_2_ranks("err", "1000000", sample);
    double took = seconds() - t0;
    ck_assert_msg(r->status != 0 && took < 60, "exit %d after %.1f s", r->status, took);
    ck_assert_msg(strstr(r->err, "diffc: error: rank 0 of 2: ") && strstr(r->err, "samples"), "%s",
                  tu_tail(r->err));
    tu_rmtemp();
}
END_TEST

/* SIGTERM to one rank stops them all after the same step: rank 0 writes the
 * checkpoint, and the job ends with 128 + SIGTERM. */
START_TEST(test_signal_to_one_rank_stops_all) {
    make_dataset();
    pid_t pid = start_long_run("sig", NULL);
    ck_assert_int_eq(kill(rank_pid(pid, 1), SIGTERM), 0);
    tu_run_result *r = tu_wait_diffc();
    ck_assert_msg(r->status == 128 + SIGTERM, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(!strstr(r->err, "error"), "%s", tu_tail(r->err));
    long step = saved_step(r);
    char done[64];
    snprintf(done, sizeof done, "sig/checkpoint-%ld/DONE", step);
    ck_assert_int_eq(access(tu_path(done), R_OK), 0);
    double loss[1000];
    ck_assert_int_eq(read_losses("sig", loss, 1000), step);
    tu_rmtemp();
}
END_TEST

/* Skipped (77) without MPI in this build or mpirun on the PATH. */
/* Two ranks with --gradient-checkpointing: the buckets still start during
 * the backward pass, each when its parameters' checkpoints are walked
 * (a bucket started early would miss gradients), and the run is the plain
 * two-rank run bit for bit, dropout 0.1 included. */
START_TEST(test_two_ranks_with_gradient_checkpointing) {
    make_dataset();
    ck_assert_int_eq(setenv("DC_BUCKET_MB", "0.01", 1), 0);
    const char *plain[] = {"--train-batch-size", "2", NULL};
    const char *ckpt[] = {"--train-batch-size", "2", "--gradient-checkpointing", NULL};
    tu_run_result *r = train_2_ranks("plain", "3", plain);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    r = train_2_ranks("ckpt", "3", ckpt);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    int buckets, early;
    const char *note = strstr(r->err, "gradient all-reduce: ");
    ck_assert_msg(note && sscanf(note, "gradient all-reduce: %d buckets of up to %*s MiB, %d started", &buckets,
                                 &early) == 2, "%s", tu_tail(r->err));
    ck_assert_msg(buckets > 10 && early > buckets / 2, "%d of %d buckets overlapped the backward pass", early,
                  buckets);
    assert_same_weights("plain/unet/diffusion_pytorch_model.safetensors",
                        "ckpt/unet/diffusion_pytorch_model.safetensors");
    assert_same_weights("plain/checkpoint-3/train_state.safetensors", "ckpt/checkpoint-3/train_state.safetensors");
    tu_rmtemp();
}
END_TEST

static int dist_main(void) {
    if (!tu_have_mpirun("test_train dist"))
        return 77;
    Suite *s = suite_create("train_dist");
    TCase *tc = tu_tcase(s, "dist", 120);
    tcase_add_test(tc, test_two_ranks_match_one_big_batch);
    tcase_add_test(tc, test_two_ranks_with_gradient_checkpointing);
    tcase_add_test(tc, test_zero_stage_1_matches_stage_0);
    tcase_add_loop_test(tc, test_two_ranks_resume_exactly, 0, 2);
    tcase_add_test(tc, test_killed_rank_stops_the_job);
    tcase_add_test(tc, test_error_on_one_rank_aborts_the_job);
    tcase_add_test(tc, test_signal_to_one_rank_stops_all);
    return tu_run(s);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "dist"))
        return dist_main();
    Suite *s = suite_create("train");
    TCase *tc = tu_tcase(s, "train", 300);
    tcase_add_test(tc, test_loss_falls);
    tcase_add_test(tc, test_resume_is_exact);
    tcase_add_test(tc, test_hostile_configs);
    tcase_add_test(tc, test_train_state_checked);
    tcase_add_test(tc, test_batch_too_large_for_memory);
    tcase_add_test(tc, test_gradient_checkpointing_changes_only_memory);
    tcase_add_test(tc, test_zero_stage_1_alone_is_stage_0);
    tcase_add_test(tc, test_bad_configs);
    tcase_add_test(tc, test_signals_stop_with_a_checkpoint);
    tcase_add_test(tc, test_finetune_starts_from_the_pretrained_weights);
    tcase_add_test(tc, test_finetune_takes_the_pipeline_schedule);
    tcase_add_test(tc, test_finetune_from_a_sharded_variant);
    tcase_add_test(tc, test_accumulation_matches_a_big_batch);
    tcase_add_test(tc, test_non_finite_steps_stop_the_run);
    tcase_add_test(tc, test_ranks_need_a_matching_mpi);
    tcase_add_test(tc, test_help_and_usage);
    tcase_add_test(tc, test_device_cpu_is_the_default_here);
    tcase_add_test(tc, test_data_errors_leave_the_output_folder_alone);
    tcase_add_test(tc, test_output_folder_is_locked);
    tcase_add_test(tc, test_summary_rate_is_the_whole_runs);
    return tu_run(s);
}
