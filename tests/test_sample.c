/* `diffc sample` end to end, through the built binary, on the committed tiny
 * models: a class-conditional one (tests/fixtures/unet_attn_class, 5 class
 * embeddings) wrapped here in a pipeline folder, and a bare unconditional UNet
 * folder with the old attention names (tests/fixtures/unet_legacy). Images are
 * written with the right count, size and channels; the noise contract holds
 * (same seed, same images, whatever the batch size); seeds, labels, guidance,
 * the sampler and the EMA weights each change the images; img2img stays
 * closer to its init image at a low strength; bad input is one error line or
 * a skipped file with a warning. */
#define _GNU_SOURCE /* strdup */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/image.h"
#include "models/unet.h"
#include "pipeline/generate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CLASS_MODEL "tests/fixtures/unet_attn_class"
#define BARE_MODEL "tests/fixtures/unet_legacy"
#define SIDE 8 /* both fixtures' sample_size */


static void spill(const char *path, const char *text, size_t n) {
    ck_assert_msg(dc_write_file(path, text, n, false) == 0, "%s", dc_error());
}

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *text = dc_read_file(from, 1 << 24, &n);
    ck_assert_msg(text, "%s", dc_error());
    spill(to, text, n);
    free(text);
}

/* The fixture's weights scaled by `scale` into `to` (an EMA twin that differs). */
static void write_scaled_weights(const char *fixture, const char *to, float scale) {
    char cfg_path[256], weights[256];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", fixture);
    snprintf(weights, sizeof weights, "%s/diffusion_pytorch_model.safetensors", fixture);
    dc_unet_config c;
    dc_unet m;
    dc_params ps;
    dc_params_init(&ps);
    ck_assert_msg(dc_unet_config_load(&c, cfg_path) == 0 && dc_unet_init(&m, &c, &ps) == 0 &&
                      dc_params_alloc(&ps, 1) == 0 && dc_params_load(&ps, NULL, weights, dc_unet_rename) == 0,
                  "%s", dc_error());
    for (size_t i = 0; i < ps.total; i++)
        ps.data[i] *= scale;
    ck_assert_msg(dc_params_save(&ps, NULL, to, NULL, NULL, 0) == 0, "%s", dc_error());
    dc_unet_free(&m);
    dc_params_free(&ps);
    dc_unet_config_free(&c);
}

static const char scheduler_config[] = "{\"_class_name\": \"DDPMScheduler\", \"num_train_timesteps\": 1000,"
                                       " \"beta_schedule\": \"linear\", \"clip_sample\": true,"
                                       " \"timestep_spacing\": \"leading\"}\n";

static const char model_index[] = "{\"_class_name\": \"DDPMPipeline\", \"scheduler\": [\"diffusers\", "
                                  "\"DDPMScheduler\"], \"unet\": [\"diffusers\", \"UNet2DModel\"]}\n";

/* tu_path(name): a pipeline folder around the class-conditional fixture, with
 * unet_ema/ (the weights scaled by 0.9) when `ema`. Returns its path (good
 * for the test's first 4 pipelines). */
static const char *make_pipeline(const char *name, bool ema) {
    static char made[4][512];
    static int n_made;
    char sub[128];
    const char *dirs[] = {"", "/unet", "/scheduler", "/unet_ema"};
    for (int i = 0; i < (ema ? 4 : 3); i++) {
        snprintf(sub, sizeof sub, "%s%s", name, dirs[i]);
        ck_assert_int_eq(mkdir(tu_path(sub), 0755), 0);
    }
    snprintf(sub, sizeof sub, "%s/model_index.json", name);
    spill(tu_path(sub), model_index, sizeof model_index - 1);
    snprintf(sub, sizeof sub, "%s/scheduler/scheduler_config.json", name);
    spill(tu_path(sub), scheduler_config, sizeof scheduler_config - 1);
    for (int i = 0; i < (ema ? 2 : 1); i++) {
        const char *unet = i ? "unet_ema" : "unet";
        snprintf(sub, sizeof sub, "%s/%s/config.json", name, unet);
        copy_file(CLASS_MODEL "/config.json", tu_path(sub));
        snprintf(sub, sizeof sub, "%s/%s/diffusion_pytorch_model.safetensors", name, unet);
        if (i)
            write_scaled_weights(CLASS_MODEL, tu_path(sub), 0.9f);
        else
            copy_file(CLASS_MODEL "/diffusion_pytorch_model.safetensors", tu_path(sub));
    }
    char *path = made[n_made++ % 4];
    snprintf(path, sizeof made[0], "%s", tu_path(name));
    return path;
}

/* `diffc sample ARGS...` */
#define SAMPLE(...) tu_run_diffc((const char *const[]){"sample", __VA_ARGS__, NULL})

static void assert_ok(const tu_run_result *r) {
    ck_assert_msg(r->status == 0, "exit %d, stderr: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->out, "grid.png"), "stdout: %s", r->out);
}

static void load(dc_image *img, const char *dir, int i) {
    char name[64];
    snprintf(name, sizeof name, "%s/%05d.png", dir, i);
    ck_assert_msg(dc_image_load(img, tu_path(name)) == 0, "%s", dc_error());
}

/* Mean |a - b| over the pixels of image i of two output folders. */
static double image_diff(const char *dir_a, const char *dir_b, int i) {
    dc_image a, b;
    load(&a, dir_a, i);
    load(&b, dir_b, i);
    ck_assert(a.w == b.w && a.h == b.h && a.c == b.c);
    double sum = 0;
    size_t n = (size_t)a.w * a.h * a.c;
    for (size_t k = 0; k < n; k++)
        sum += fabs((double)a.px[k] - b.px[k]);
    dc_image_free(&a);
    dc_image_free(&b);
    return sum / (double)n;
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

/* ---- outputs ---- */

START_TEST(test_writes_images) {
    tu_mkdtemp("sample");
    const char *model = make_pipeline("pipe", false);
    tu_run_result *r = SAMPLE("--model", model, "--output-dir", tu_path("out"), "--num-images", "5",
                              "--batch-size", "2", "--num-inference-steps", "10");
    assert_ok(r);
    ck_assert_msg(strstr(r->out, "5 images of 8x8 (ddim, 10 steps)"), "%s", r->out);
    ck_assert_msg(r->n_err == 0, "not a terminal: quiet, but: %s", tu_tail(r->err));
    for (int i = 0; i < 5; i++) {
        dc_image img;
        load(&img, "out", i);
        ck_assert(img.w == SIDE && img.h == SIDE && img.c == 3);
        dc_image_free(&img);
    }
    ck_assert(!exists(tu_path("out/00005.png")));
    dc_image grid;
    ck_assert_int_eq(dc_image_load(&grid, tu_path("out/grid.png")), 0);
    ck_assert_int_eq(grid.w, 4 * SIDE + 5 * 2); /* one column per class (4), 2-pixel gaps */
    ck_assert_int_eq(grid.h, 2 * SIDE + 3 * 2);
    dc_image_free(&grid);

    /* a bare UNet folder (old attention names, unconditional), at another size */
    r = SAMPLE("--model", BARE_MODEL, "--output-dir", tu_path("bare"), "--num-images", "2", "--resolution",
               "16", "--num-inference-steps", "5");
    assert_ok(r);
    dc_image img;
    load(&img, "bare", 1);
    ck_assert(img.w == 16 && img.h == 16 && img.c == 3);
    dc_image_free(&img);
    tu_rmtemp();
}
END_TEST

/* The noise contract: image i of seed s whatever the batch size; seeds differ. */
START_TEST(test_seed_and_batch) {
    tu_mkdtemp("sample");
    const char *model = make_pipeline("pipe", false);
#define RUN(dir, batch, seed)                                                                                \
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path(dir), "--num-images", "4",                    \
                     "--num-inference-steps", "8", "--batch-size", batch, "--seed", seed))
    RUN("b1", "1", "7");
    RUN("b3", "3", "7");
    RUN("again", "3", "7");
    RUN("seed8", "3", "8");
#undef RUN
    for (int i = 0; i < 4; i++) {
        ck_assert_msg(image_diff("b1", "b3", i) == 0, "image %d depends on the batch size", i);
        ck_assert_msg(image_diff("b3", "again", i) == 0, "image %d differs between runs", i);
        ck_assert_msg(image_diff("b3", "seed8", i) > 1, "image %d does not depend on the seed", i);
    }
    tu_rmtemp();
}
END_TEST

/* Labels cycle over the images; a label and the guidance scale change them. */
START_TEST(test_labels_and_guidance) {
    tu_mkdtemp("sample");
    const char *model = make_pipeline("pipe", false);
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("all"), "--num-images", "6",
                     "--num-inference-steps", "8"));
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("one"), "--num-images", "6", "--class-label",
                     "1", "--num-inference-steps", "8"));
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("list"), "--num-images", "6", "--class-label",
                     "1,3", "--num-inference-steps", "8"));
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("guided"), "--num-images", "6",
                     "--class-label", "1", "--guidance-scale", "3", "--num-inference-steps", "8"));
    /* "all" gives image i label i % 4 (4 classes and the 'no class' label 4) */
    ck_assert(image_diff("all", "one", 1) == 0 && image_diff("all", "one", 5) == 0);
    ck_assert(image_diff("all", "one", 0) > 0 && image_diff("all", "one", 2) > 0);
    ck_assert(image_diff("list", "one", 0) == 0 &&
              image_diff("list", "one", 2) == 0); /* labels 1, 3, 1, ... */
    ck_assert(image_diff("list", "one", 1) > 0);
    for (int i = 0; i < 6; i++)
        ck_assert_msg(image_diff("one", "guided", i) > 0.5, "guidance left image %d alone", i);
    tu_rmtemp();
}
END_TEST

START_TEST(test_schedulers) {
    tu_mkdtemp("sample");
    const char *model = make_pipeline("pipe", false);
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("ddim"), "--num-images", "2",
                     "--num-inference-steps", "10"));
    tu_run_result *r = SAMPLE("--model", model, "--output-dir", tu_path("ddpm"), "--num-images", "2",
                              "--scheduler", "ddpm", "--num-inference-steps", "10");
    assert_ok(r);
    ck_assert_msg(strstr(r->out, "(ddpm, 10 steps)"), "%s", r->out);
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("dpm"), "--num-images", "2", "--scheduler",
                     "dpm++2m", "--num-inference-steps", "10", "--timestep-spacing", "trailing"));
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("eta"), "--num-images", "2", "--eta", "1",
                     "--num-inference-steps", "10"));
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("trailing"), "--num-images", "2",
                     "--num-inference-steps", "10", "--timestep-spacing", "trailing"));
    const char *others[] = {"ddpm", "dpm", "eta", "trailing"};
    for (int k = 0; k < 4; k++)
        ck_assert_msg(image_diff("ddim", others[k], 0) > 0.5, "%s gave ddim's image", others[k]);
    /* the config diffusers writes for DPMSolverMultistepScheduler (lambda_min_clipped -Infinity) */
    char sched[600];
    snprintf(sched, sizeof sched, "%s/scheduler/scheduler_config.json", model);
    copy_file("tests/fixtures/dpm_scheduler_config.json", sched);
    assert_ok(SAMPLE("--model", model, "--output-dir", tu_path("dpm_cfg"), "--num-images", "2", "--scheduler",
                     "dpm++2m", "--num-inference-steps", "10"));
    tu_rmtemp();
}
END_TEST

/* A model of the class fixture's shape that predicts its variance too (out_channels 6 of 3,
 * as guided-diffusion's do), with random weights. */
static void variance_model(dc_unet_config *c, dc_unet *m, dc_params *ps, int out_channels) {
    char *text = dc_read_file(CLASS_MODEL "/config.json", 1 << 20, NULL), *at = strstr(text, "\"out_channels\": 3");
    ck_assert_ptr_nonnull(at);
    at[strlen("\"out_channels\": ")] = (char)('0' + out_channels);
    dc_params_init(ps);
    ck_assert_msg(dc_unet_config_parse(c, text, "cfg") == 0 && dc_unet_init(m, c, ps) == 0 &&
                      dc_params_alloc(ps, tu_next()) == 0,
                  "%s", dc_error());
    free(text);
}

/* The denoising loop written out: the initial noise scaled by init_noise_sigma, the
 * model's input by scale_model_input, its timestep model_t; the model's output split per
 * pixel (NHWC: the first c channels the prediction, the next c the variance), guidance on
 * the prediction, the variance of the conditional pass. */
static void reference_loop(dc_ctx *ctx, const dc_unet *m, dc_sampler *s, const int32_t *labels, int n,
                           float scale, uint64_t seed, float *x) {
    enum { PER = SIDE * SIDE * 3 };
    float out[2 * 2 * 2 * PER], mean[2 * 2 * PER], var[2 * 2 * PER], z[2 * PER], in[2 * PER];
    int32_t y[4];
    for (int k = 0; k < 2 * n; k++)
        y[k] = k < n ? dc_unet_null_class(&m->cfg) : labels[k - n];
    dc_sampler_noise(x, n, PER, seed, 0, DC_SAMPLER_DRAW_INIT);
    for (int e = 0; e < n * PER; e++)
        x[e] *= s->init_noise_sigma;
    for (int i = 0; i < s->n; i++) {
        dc_ctx_reset(ctx);
        ck_assert_int_eq(dc_sampler_scale_model_input(s, i, x, in, n * PER), 0);
        dc_tensor *xt = dc_new(ctx, DC_F32, DC_SHAPE(2 * n, SIDE, SIDE, 3));
        memcpy(xt->data, in, sizeof(float) * n * PER);
        memcpy((float *)xt->data + n * PER, in, sizeof(float) * n * PER);
        dc_tensor *pred = dc_unet_forward(ctx, m, xt, dc_from_host(ctx, DC_F32, DC_SHAPE(1), &s->model_t[i]),
                                          dc_from_host(ctx, DC_I32, DC_SHAPE(2 * n), y));
        ck_assert_msg(pred && pred->numel == 2 * 2 * n * PER, "%s", dc_error());
        memcpy(out, pred->data, sizeof(float) * pred->numel);
        for (int p = 0; p < 2 * n * SIDE * SIDE; p++)
            for (int ch = 0; ch < 3; ch++) {
                mean[p * 3 + ch] = out[p * 6 + ch];
                var[p * 3 + ch] = out[p * 6 + 3 + ch];
            }
        dc_guidance_combine(mean, mean, mean + n * PER, scale, n * PER);
        if (dc_sampler_step_needs_noise(s, i))
            dc_sampler_noise(z, n, PER, seed, 0, DC_SAMPLER_DRAW_STEP(i));
        ck_assert_msg(dc_sampler_step(s, i, mean, var + n * PER, x, z, n, PER) == 0, "%s", dc_error());
    }
    for (int e = 0; e < n * PER; e++)
        x[e] = x[e] < -1 ? -1 : x[e] > 1 ? 1 : x[e];
}

/* DDPM with variance_type learned_range reads the model's second half; other samplers and
 * variance types its first half only; a model without it is refused. */
START_TEST(test_learned_variance) {
    enum { N = 2, PER = SIDE * SIDE * 3 };
    dc_unet_config c;
    dc_unet m;
    dc_params ps;
    variance_model(&c, &m, &ps, 6);
    dc_noise_schedule sched;
    dc_noise_schedule_config sc = dc_noise_schedule_default_config();
    ck_assert_int_eq(dc_noise_schedule_init(&sched, &sc), 0);
    dc_sampler_options o = dc_sampler_default_options(DC_SAMPLER_DDPM);
    o.num_inference_steps = 4;
    o.variance_type = DC_VARIANCE_LEARNED_RANGE;
    dc_sampler s;
    ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDPM, &sched, &o), 0);
    dc_ctx *ctx = tu_ctx();
    ctx->training = false;
    dc_set_grad_enabled(ctx, false);
    const int32_t labels[N] = {1, 3};
    uint64_t seed = tu_next();
    float got[N * PER], want[N * PER], fixed[N * PER];
    dc_generate_request r = {.unet = &m, .sampler = &s, .n = N, .batch = N, .h = SIDE, .w = SIDE,
                             .labels = labels, .guidance_scale = 2.5f, .seed = seed};
    ck_assert_msg(dc_generate(ctx, &r, got) == 0, "%s", dc_error());
    reference_loop(ctx, &m, &s, labels, N, 2.5f, seed, want);
    ck_assert(!memcmp(got, want, sizeof got));
    /* fixed_small: the same model's first half alone, and other images */
    dc_sampler_free(&s);
    o.variance_type = DC_VARIANCE_FIXED_SMALL;
    ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDPM, &sched, &o), 0);
    ck_assert_msg(dc_generate(ctx, &r, fixed) == 0, "%s", dc_error());
    reference_loop(ctx, &m, &s, labels, N, 2.5f, seed, want);
    ck_assert(!memcmp(fixed, want, sizeof fixed) && memcmp(fixed, got, sizeof got));
    /* samplers in sigma: the initial noise scaled up, the model's input down, fractional
     * timesteps (linspace of 5: 249.75 apart), a noise draw per step */
    for (int kind = DC_SAMPLER_EULER; kind <= DC_SAMPLER_LMS; kind++) {
        dc_sampler_free(&s);
        dc_sampler_options e = dc_sampler_default_options(kind);
        e.num_inference_steps = 5;
        ck_assert_int_eq(dc_sampler_init(&s, kind, &sched, &e), 0);
        ck_assert(s.init_noise_sigma > 1 && s.model_t[1] != (float)s.timesteps[1]);
        ck_assert_msg(dc_generate(ctx, &r, got) == 0, "%s", dc_error());
        reference_loop(ctx, &m, &s, labels, N, 2.5f, seed, want);
        ck_assert_msg(!memcmp(got, want, sizeof got), "%s", dc_sampler_kind_name(kind));
    }
    dc_sampler_free(&s);
    dc_unet_free(&m);
    dc_params_free(&ps);
    dc_unet_config_free(&c);
    /* learned_range with a model that does not predict its variance; an odd channel count */
    o.variance_type = DC_VARIANCE_LEARNED_RANGE;
    ck_assert_int_eq(dc_sampler_init(&s, DC_SAMPLER_DDPM, &sched, &o), 0);
    for (int out = 3; out <= 4; out++) {
        variance_model(&c, &m, &ps, out);
        ck_assert_int_ne(dc_generate(ctx, &r, got), 0);
        ck_assert_msg(strstr(dc_error(), out == 3 ? "generate: variance_type learned_range needs a model that "
                                                    "predicts its variance (out_channels twice in_channels); "
                                                    "this one has 3 of 3"
                                                  : "generate: the model predicts 4 channels of a 3-channel "
                                                    "sample"),
                      "%s", dc_error());
        dc_unet_free(&m);
        dc_params_free(&ps);
        dc_unet_config_free(&c);
    }
    dc_sampler_free(&s);
    dc_noise_schedule_free(&sched);
    tu_ctx_free(ctx);
}
END_TEST

/* unet_ema/ is used when present; --no-ema takes unet/. */
START_TEST(test_ema_by_default) {
    tu_mkdtemp("sample");
    const char *plain = make_pipeline("plain", false), *ema = make_pipeline("ema", true);
    assert_ok(SAMPLE("--model", plain, "--output-dir", tu_path("p"), "--num-images", "2",
                     "--num-inference-steps", "8"));
    tu_run_result *r = SAMPLE("--model", ema, "--output-dir", tu_path("e"), "--num-images", "2",
                              "--num-inference-steps", "8");
    assert_ok(r);
    ck_assert_msg(strstr(r->out, "EMA weights"), "%s", r->out);
    assert_ok(SAMPLE("--model", ema, "--output-dir", tu_path("n"), "--num-images", "2", "--no-ema",
                     "--num-inference-steps", "8"));
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(image_diff("p", "e", i) > 0.5, "the EMA weights were not used");
        ck_assert_msg(image_diff("p", "n", i) == 0, "--no-ema did not take unet/");
    }
    tu_rmtemp();
}
END_TEST

/* ---- img2img ---- */

/* An RGB gradient, or a gray w x h image, as PNG. */
static void write_init(const char *name, int w, int h, int c) {
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, w, h, c), 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++)
                img.px[(y * w + x) * c + k] = (uint8_t)(k == 0   ? 255 * x / (w - 1)
                                                        : k == 1 ? 255 * y / (h - 1)
                                                                 : 60);
    ck_assert_msg(dc_image_save_png(&img, tu_path(name)) == 0, "%s", dc_error());
    dc_image_free(&img);
}

/* Mean |output i - the init image| (init.png is SIDE x SIDE RGB). */
static double off_init(const char *dir, int i) {
    dc_image a, b;
    load(&a, dir, i);
    ck_assert_int_eq(dc_image_load(&b, tu_path("init/a.png")), 0);
    double sum = 0;
    for (int k = 0; k < SIDE * SIDE * 3; k++)
        sum += fabs((double)a.px[k] - b.px[k]);
    dc_image_free(&a);
    dc_image_free(&b);
    return sum / (SIDE * SIDE * 3);
}

START_TEST(test_img2img) {
    tu_mkdtemp("sample");
    const char *model = make_pipeline("pipe", false);
    ck_assert_int_eq(mkdir(tu_path("init"), 0755), 0);
    write_init("init/a.png", SIDE, SIDE, 3);
    const char *strengths[] = {"1", "0.3"}, *dirs[] = {"s10", "s03"};
    for (int k = 0; k < 2; k++) {
        tu_run_result *r =
            SAMPLE("--model", model, "--output-dir", tu_path(dirs[k]), "--init-image", tu_path("init/a.png"),
                   "--strength", strengths[k], "--num-images", "4", "--num-inference-steps", "10");
        assert_ok(r);
        ck_assert_msg(strstr(r->out, k ? "3 steps of img2img" : "10 steps of img2img"), "%s", r->out);
    }
    double near = 0, far = 0;
    for (int i = 0; i < 4; i++)
        near += off_init("s03", i), far += off_init("s10", i);
    ck_assert_msg(near < 0.75 * far, "strength 0.3 is %g off the init image, strength 1 %g", near / 4,
                  far / 4);

    /* a folder: its images in turn, a gray one of another size converted with a
     * note, a file that is no image skipped with a warning; batch size free */
    write_init("init/b.png", 12, 10, 1);
    spill(tu_path("init/c.png"), "not a png", 9);
    const char *batch[] = {"1", "3"}, *out[] = {"f1", "f3"};
    for (int k = 0; k < 2; k++) {
        tu_run_result *r = SAMPLE("--model", model, "--output-dir", tu_path(out[k]), "--init-image",
                                  tu_path("init"), "--strength", "0.5", "--batch-size", batch[k],
                                  "--num-inference-steps", "10", "--num-images", "5");
        assert_ok(r);
        ck_assert_msg(strstr(r->err, "b.png: gray converted to RGB") && strstr(r->err, "12x10 resized"), "%s",
                      r->err);
        ck_assert_msg(strstr(r->err, "diffc: warning: skipped: ") && strstr(r->err, "c.png"), "%s", tu_tail(r->err));
    }
    for (int i = 0; i < 5; i++)
        ck_assert_msg(image_diff("f1", "f3", i) == 0, "img2img image %d depends on the batch size", i);
    ck_assert(off_init("f1", 0) < off_init("f1", 1) &&
              off_init("f1", 2) < off_init("f1", 1)); /* a, b, a, ... */

    /* without --num-images: one image per init image */
    tu_run_result *r = SAMPLE("--model", model, "--output-dir", tu_path("each"), "--init-image",
                              tu_path("init"), "--num-inference-steps", "5");
    assert_ok(r);
    ck_assert(exists(tu_path("each/00001.png")) && !exists(tu_path("each/00002.png")));
    tu_rmtemp();
}
END_TEST

/* ---- errors ---- */

START_TEST(test_model_errors) {
    tu_mkdtemp("sample");
    tu_assert_user_error(SAMPLE("--model", tu_path("missing"), "--output-dir", tu_path("o")),
                         "missing: not a folder");

    const char *model = make_pipeline("pipe", false);
    ck_assert_int_eq(rename(tu_path("pipe/unet/diffusion_pytorch_model.safetensors"), tu_path("w")), 0);
    tu_assert_user_error(SAMPLE("--model", model, "--output-dir", tu_path("o")),
                         "pipe/unet: no diffusion_pytorch_model.safetensors");
    ck_assert_int_eq(rename(tu_path("w"), tu_path("pipe/unet/diffusion_pytorch_model.safetensors")), 0);

    /* a config the weights do not fit: the parameter and both shapes */
    size_t n;
    char *cfg = tu_read_file(CLASS_MODEL "/config.json", 1 << 20, &n),
         *at = strstr(cfg, "\"in_channels\": 3");
    ck_assert_ptr_nonnull(at);
    at[strlen("\"in_channels\": ")] = '1';
    spill(tu_path("pipe/unet/config.json"), cfg, n);
    free(cfg);
    tu_assert_user_error(SAMPLE("--model", model, "--output-dir", tu_path("o")),
                         "conv_in.weight: file has [8, 3, 3, 3], model expects [8, 1, 3, 3]");
    copy_file(CLASS_MODEL "/config.json", tu_path("pipe/unet/config.json"));

    /* a latent pipeline: its UNet does not make images */
    static const char latent[] =
        "{\"_class_name\": \"LDMPipeline\", \"unet\": [\"diffusers\", \"UNet2DModel\"],"
        " \"vqvae\": [\"diffusers\", \"VQModel\"]}";
    spill(tu_path("pipe/model_index.json"), latent, sizeof latent - 1);
    tu_assert_user_error(SAMPLE("--model", model, "--output-dir", tu_path("o")), "has a 'vqvae' component");
    spill(tu_path("pipe/model_index.json"), model_index, sizeof model_index - 1);

    ck_assert_int_eq(remove(tu_path("pipe/scheduler/scheduler_config.json")), 0);
    tu_assert_user_error(SAMPLE("--model", model, "--output-dir", tu_path("o")),
                         "scheduler_config.json: cannot open");
    static const char betas[] = "{\"trained_betas\": [0.1, 0.2]}";
    spill(tu_path("pipe/scheduler/scheduler_config.json"), betas, sizeof betas - 1);
    tu_assert_user_error(SAMPLE("--model", model, "--output-dir", tu_path("o")),
                         "trained_betas is not supported");
    tu_rmtemp();
}
END_TEST

/* --variant, and a folder whose only weights are a sharded fp16 variant
 * (tests/fixtures/unet_sharded_fp16, as diffusers saves one). */
START_TEST(test_variants) {
    tu_mkdtemp("sample");
    const char *model = "tests/fixtures/unet_sharded_fp16";
    tu_run_result *r = SAMPLE("--model", model, "--output-dir", tu_path("guessed"), "--num-images", "2",
                              "--num-inference-steps", "3");
    assert_ok(r);
    ck_assert_msg(strstr(r->err, "diffc: note: tests/fixtures/unet_sharded_fp16 has no plain weights; using its "
                                 "only variant, fp16\n"),
                  "%s", tu_tail(r->err));
    r = SAMPLE("--model", model, "--variant", "fp16", "--output-dir", tu_path("asked"), "--num-images", "2",
               "--num-inference-steps", "3");
    assert_ok(r);
    ck_assert_msg(r->n_err == 0, "%s", tu_tail(r->err));
    for (int i = 0; i < 2; i++)
        ck_assert(image_diff("guessed", "asked", i) == 0.0);
    tu_assert_user_error(SAMPLE("--model", model, "--variant", "bf16", "--output-dir", tu_path("o")),
                         "no variant 'bf16' (diffusion_pytorch_model.bf16.safetensors); variants here: 'fp16'");
    tu_assert_user_error(SAMPLE("--model", CLASS_MODEL, "--variant", "../unet_legacy/x", "--output-dir",
                                tu_path("o")),
                         "not a variant name");
    /* an NCSN++ model loads, but takes noise levels, not DDPM timesteps */
    tu_assert_user_error(SAMPLE("--model", "tests/fixtures/unet_fourier_skip", "--output-dir", tu_path("o")),
                         "unet_fourier_skip/config.json: time_embedding_type \"fourier\" (an NCSN++ model) "
                         "takes noise levels");
    tu_rmtemp();
}
END_TEST

/* Configs that do not fit the weights beside them (tests/testutil.c's list,
 * issue #14) are refused before the model they describe is allocated, by
 * every command that opens a model folder: one error line, and the run
 * never grows past a small resident set. */
START_TEST(test_hostile_configs) {
    tu_mkdtemp("sample");
    long base_mb = tu_diffc_base_rss_mb();
    for (int i = 0; i < tu_n_hostile_configs; i++) {
        const tu_hostile_config *h = &tu_hostile_configs[i];
        char dir[32];
        snprintf(dir, sizeof dir, "model%d", i);
        tu_write_hostile_unet(dir, BARE_MODEL, h);
        const char *model = tu_path(dir), *out = tu_path("o");
        const char *const *commands[] = {
            (const char *const[]){"sample", "--model", model, "--output-dir", out, "--device", "cpu", NULL},
            (const char *const[]){"augment", "--model", model, "--train-data-dir", out, "--output-dir", out,
                                  "--per-class", "1", "--device", "cpu", NULL},
            (const char *const[]){"anomaly", "--model", model, "--images", out, "--device", "cpu", NULL},
        };
        for (int k = 0; k < 3; k++) {
            tu_run_result *r = tu_run_diffc_bounded(commands[k]);
            tu_assert_user_error(r, h->error);
            ck_assert_msg(r->peak_rss_mb < base_mb + 64, "%s, %s %s: the run reached %ld MiB (diffc --help: %ld)",
                          commands[k][0], h->key ? h->key : "{}", h->value ? h->value : "", r->peak_rss_mb,
                          base_mb);
        }
    }
    tu_rmtemp();
}
END_TEST

START_TEST(test_option_errors) {
    tu_mkdtemp("sample");
    const char *m = make_pipeline("pipe", false), *o = tu_path("o");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--class-label", "5"), "--class-label 5");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--class-label", "-1"), "--class-label -1");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--class-label", "2,x"),
                         "--class-label '2,x'");
    tu_assert_user_error(SAMPLE("--model", BARE_MODEL, "--output-dir", o, "--class-label", "0"),
                         "unconditional");
    tu_assert_user_error(SAMPLE("--model", BARE_MODEL, "--output-dir", o, "--guidance-scale", "2"),
                         "unconditional");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--strength", "0"),
                         "--strength: 0 is outside (0, 1]");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--strength", "1.5"),
                         "--strength: 1.5 is outside");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--scheduler", "heun"), "--scheduler: ");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--timestep-spacing", "x"),
                         "--timestep-spacing");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--num-images", "two"), "not an integer");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--num-inference-steps", "1001"),
                         "[1, 1000]");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--scheduler", "ddpm", "--eta", "0.5"),
                         "ddim only");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--resolution", "9"), "multiples of 2");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--device", tu_cuda_device_count() ? "cuda:63" : "cuda"),
                         "device 'cuda");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--device", "gpu"), "device 'gpu'");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--mixed-precision", "fp16"),
                         "--mixed-precision: mixed precision 'fp16': expected no or bf16");
    spill(tu_path("file"), "x", 1);
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", tu_path("file")), "not a folder");

    /* init images: an empty folder, a single unreadable file, a missing one */
    ck_assert_int_eq(mkdir(tu_path("empty"), 0755), 0);
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--init-image", tu_path("empty")),
                         "no image to start from");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--init-image", tu_path("file")),
                         "file: not a PNG or JPEG");
    tu_assert_user_error(SAMPLE("--model", m, "--output-dir", o, "--init-image", tu_path("nothing")),
                         "cannot open");

    /* usage errors: exit 2 */
    const char *const usage[][5] = {{"--model", m, NULL},
                                    {"--output-dir", o, NULL},
                                    {"--model", m, "--output-dir", o, "--bogus"},
                                    {"--model", m, "--output-dir", o, "extra"},
                                    {"--model", m, "--output-dir", o, "--seed"},
                                    {"--model", m, "--output-dir", o, "--no-ema=1"}};
    for (size_t k = 0; k < sizeof usage / sizeof usage[0]; k++) {
        const char *args[7] = {"sample"};
        memcpy(args + 1, usage[k], sizeof usage[k]);
        tu_run_result *r = tu_run_diffc(args);
        ck_assert_msg(r->status == 2 && !strncmp(r->err, "diffc: error: ", 14), "case %zu: exit %d: %s", k,
                      r->status, tu_tail(r->err));
    }
    ck_assert(!exists(o));
    tu_rmtemp();
}
END_TEST

START_TEST(test_help) {
    tu_run_result *r = SAMPLE("--help");
    ck_assert_int_eq(r->status, 0);
    const char *every[] = {"--model DIR",
                           "--output-dir DIR",
                           "--scheduler NAME",
                           "(default: ddim; a text-to-image pipeline's own)",
                           "--num-inference-steps N",
                           "--eta X",
                           "--timestep-spacing NAME",
                           "--num-images N",
                           "--batch-size N",
                           "--class-label",
                           "--guidance-scale X",
                           "--seed N",
                           "--resolution N",
                           "--init-image FILE|DIR",
                           "--strength X",
                           "(default: 0.8)",
                           "--prompt TEXT",
                           "--prompt-file FILE",
                           "--negative-prompt TEXT",
                           "--height N",
                           "--width N",
                           "--clip-skip N",
                           "--no-ema",
                           "--device NAME"};
    for (size_t i = 0; i < sizeof every / sizeof every[0]; i++)
        ck_assert_msg(strstr(r->out, every[i]), "--help lacks %s", every[i]);
    r = tu_run_diffc((const char *const[]){"--help", NULL});
    ck_assert_msg(r->status == 0 && strstr(r->out, "sample --model DIR"), "%s", r->out);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sample");
    TCase *tc = tu_tcase(s, "outputs", 60);
    tcase_add_test(tc, test_writes_images);
    tcase_add_test(tc, test_seed_and_batch);
    tcase_add_test(tc, test_labels_and_guidance);
    tcase_add_test(tc, test_schedulers);
    tcase_add_test(tc, test_learned_variance);
    tcase_add_test(tc, test_ema_by_default);
    tcase_add_test(tc, test_img2img);
    tc = tu_tcase(s, "errors", 60);
    tcase_add_test(tc, test_model_errors);
    tcase_add_test(tc, test_variants);
    tcase_add_test(tc, test_option_errors);
    tcase_add_test(tc, test_hostile_configs);
    tcase_add_test(tc, test_help);
    return tu_run(s);
}
