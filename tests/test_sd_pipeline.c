/*
 * Tests of the Stable Diffusion pipeline (pipeline/sd_pipeline.c) and of
 * text-to-image `diffc sample`: whole runs of the tiny random-weight
 * pipelines of tests/fixtures/sd_tiny (SD-1.x-like) and sd_tiny2 (SD-2.x-like,
 * v-prediction) against diffusers' (made by scripts/make_sd_pipeline_fixtures.py
 * from given initial latents: PNDM, DDIM with a negative prompt, Euler without
 * guidance, DPM++ 2M Karras with clip_skip 1; DDIM and Euler in v), the
 * batch-size contract, img2img, the PNG text chunk and metadata.jsonl, and
 * refusals of folders and options.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "autograd/cpu/conv.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/safetensors.h"
#include "data/image.h"
#include "pipeline/sd_pipeline.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MODEL "tests/fixtures/sd_tiny"
#define MODEL2 "tests/fixtures/sd_tiny2"
#define SIDE 16
#define TOL 2e-4 /* of the largest magnitude: four to five denoising steps, then the VAE */
/* The same with the weights packed as f16 (dc_sd_load_lora's half, packed as read; pipeline 2):
 * measured up to 2.8e-3 under AVX2 (blocks of 16 channels: most weights
 * packed), 9.3e-4 under AVX-512 (of 64: fewer), images in [0, 1]: under one
 * 8-bit level. */
#define TOL_HALF 4e-3

#define SAMPLE(...) tu_run_diffc((const char *const[]){"sample", __VA_ARGS__, NULL})

static dc_sd_pipeline pipes[3];
static bool loaded[3];

/* Pipeline 0 (MODEL), 1 (MODEL2) or 2 (MODEL, its weights packed as f16),
 * loaded once. */
static const dc_sd_pipeline *pipeline_at(int k) {
    if (!loaded[k])
        ck_assert_msg(dc_sd_load_lora(&pipes[k], k == 1 ? MODEL2 : MODEL, NULL, DC_CPU, NULL, 1, k == 2) == 0,
                      "%s", dc_error());
    loaded[k] = true;
    return &pipes[k];
}

static const dc_sd_pipeline *pipeline(void) { return pipeline_at(0); }

/* The pipeline's scheduler config, as `name` (NULL: its own class), with
 * use_karras_sigmas when asked: diffusers' from_config(config, **extra). */
static void sampler_of(const dc_sd_pipeline *p, dc_sampler *s, const char *name, bool karras, int steps) {
    cJSON *c = cJSON_Parse(p->scheduler_json);
    if (karras)
        cJSON_AddBoolToObject(c, "use_karras_sigmas", true);
    char *json = cJSON_PrintUnformatted(c);
    cJSON_Delete(c);
    ck_assert_msg(dc_sampler_init_from_config(s, json, "scheduler", name, steps) == 0, "%s", dc_error());
    free(json);
}

static void sampler(dc_sampler *s, const char *name, bool karras, int steps) {
    sampler_of(pipeline(), s, name, karras, steps);
}

static const dc_st_tensor *find(const dc_st_file *f, const char *run, const char *what) {
    char name[64];
    snprintf(name, sizeof name, "%s.%s", run, what);
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL, "no %s in the runs' file", name);
    return t;
}

/* One recorded run: its prompts, settings and initial latents in, the
 * images diffusers made (NHWC in [0, 1]) compared. */
static void check_run(int model, const dc_st_file *f, const char *name, const char *kind) {
    cJSON *meta = cJSON_Parse(dc_st_meta(f, name));
    ck_assert_ptr_nonnull(meta);
    const cJSON *prompts = cJSON_GetObjectItem(meta, "prompts"), *neg = cJSON_GetObjectItem(meta, "negative");
    int n = cJSON_GetArraySize(prompts), steps = cJSON_GetObjectItem(meta, "steps")->valueint;
    const cJSON *skip = cJSON_GetObjectItem(meta, "clip_skip");
    const char *texts[4];
    for (int i = 0; i < n; i++)
        texts[i] = cJSON_GetArrayItem(prompts, i)->valuestring;
    dc_sampler s;
    sampler_of(pipeline_at(model), &s, kind, cJSON_IsTrue(cJSON_GetObjectItem(meta, "karras")), steps);
    dc_sd_request q = {.sampler = &s,
                       .n = n,
                       .batch = n,
                       .h = SIDE,
                       .w = SIDE,
                       .prompts = texts,
                       .negative = cJSON_IsString(neg) ? neg->valuestring : NULL,
                       .guidance_scale = (float)cJSON_GetObjectItem(meta, "guidance")->valuedouble,
                       .clip_skip = cJSON_IsNumber(skip) ? skip->valueint : 0,
                       .latents = find(f, name, "latents")->data};
    int64_t numel = (int64_t)n * SIDE * SIDE * 3;
    float *out = malloc((size_t)numel * sizeof *out);
    for (int64_t k = 0; k < numel; k++)
        out[k] = NAN; /* poisoned: every value must be written */
    dc_ctx *ctx = tu_ctx();
    ck_assert_msg(dc_sd_generate(ctx, pipeline_at(model), &q, out) == 0, "%s: %s", name, dc_error());
    for (int64_t k = 0; k < numel; k++)
        out[k] = out[k] / 2 + 0.5f; /* the pipeline's postprocess: [-1, 1] to [0, 1] */
    tu_check_close(out, find(f, name, "images")->data, numel, model == 2 ? TOL_HALF : TOL, name);
    tu_ctx_free(ctx);
    free(out);
    dc_sampler_free(&s);
    cJSON_Delete(meta);
}

START_TEST(test_matches_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, MODEL "_runs.safetensors") == 0, "%s", dc_error());
    check_run(0, &f, "pndm", NULL);
    check_run(0, &f, "ddim", "ddim");
    check_run(0, &f, "euler", "euler");
    check_run(0, &f, "dpm", "dpm++2m");
    dc_st_close(&f);
}
END_TEST

/* The same runs with the weights packed as f16 (where a direct kernel runs:
 * then some are), within TOL_HALF. */
START_TEST(test_half_weights) {
    const dc_sd_pipeline *p = pipeline_at(2);
    int half = 0;
    const dc_params *sets[3] = {&p->text_encoder->params, &p->unet_params, &p->vae->params};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < sets[k]->n; i++)
            half += sets[k]->p[i]->value.dtype == DC_F16;
    ck_assert_msg(cpu_conv_pack_block() ? half > 0 : half == 0, "%d weights in f16", half);
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, MODEL "_runs.safetensors") == 0, "%s", dc_error());
    check_run(2, &f, "pndm", NULL);
    check_run(2, &f, "ddim", "ddim");
    check_run(2, &f, "euler", "euler");
    check_run(2, &f, "dpm", "dpm++2m");
    dc_st_close(&f);
}
END_TEST

/* SD-2.x's parts: gelu text encoder, "!" padding, linear projections,
 * per-level heads, v-prediction. */
START_TEST(test_matches_diffusers_sd2) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, MODEL2 "_runs.safetensors") == 0, "%s", dc_error());
    const dc_bpe *tok = pipeline_at(1)->tokenizer;
    ck_assert_int_eq(dc_bpe_get_info(tok)->pad, dc_bpe_token_id(tok, "!"));
    check_run(1, &f, "ddim", NULL);
    check_run(1, &f, "euler", "euler");
    dc_st_close(&f);
}
END_TEST

/* Drawn noise: image k of seed s is the same alone or in a batch; seeds and
 * prompts change it. */
START_TEST(test_batch_and_seed) {
    const char *texts[3] = {"a red cube", "a blue ball", "a red cube"};
    int64_t per = SIDE * SIDE * 3;
    float *all = malloc((size_t)(3 * per) * sizeof *all), *one = malloc((size_t)per * sizeof *one);
    dc_sampler s;
    sampler(&s, "euler_a", false, 3); /* draws noise at every step too */
    dc_sd_request q = {.sampler = &s, .n = 3, .batch = 2, .h = SIDE, .w = SIDE, .prompts = texts,
                       .guidance_scale = 3.0f, .seed = 7};
    dc_ctx *ctx = tu_ctx();
    ck_assert_msg(dc_sd_generate(ctx, pipeline(), &q, all) == 0, "%s", dc_error());
    for (int k = 0; k < 3; k++) {
        dc_sd_request alone = q;
        alone.n = alone.batch = 1;
        alone.prompts = texts + k;
        alone.first_image = (uint64_t)k;
        ck_assert_msg(dc_sd_generate(ctx, pipeline(), &alone, one) == 0, "%s", dc_error());
        ck_assert_msg(memcmp(one, all + k * per, (size_t)per * sizeof *one) == 0, "image %d differs alone", k);
    }
    /* images 0 and 2 share a prompt, not a stream; another seed changes image 0 */
    ck_assert(memcmp(all, all + 2 * per, (size_t)per * sizeof *all) != 0);
    q.n = q.batch = 1;
    q.seed = 8;
    ck_assert_msg(dc_sd_generate(ctx, pipeline(), &q, one) == 0, "%s", dc_error());
    ck_assert(memcmp(one, all, (size_t)per * sizeof *one) != 0);
    tu_ctx_free(ctx);
    dc_sampler_free(&s);
    free(all);
    free(one);
}
END_TEST

/* Each image's own stream (streams[k], as `diffc augment` names them): the
 * same as the image alone from first_image = streams[k], in a batch large
 * enough (12 rows of text with guidance) that the text encoder's matrix
 * products run differently from one image's (on the baseline CPU kernels,
 * OpenBLAS rounds by row count: the prompts are encoded one at a time). */
START_TEST(test_streams) {
    const char *texts[6] = {"a red cube", "a blue ball", "a red cube", "two green cones", "a cat", "a dog"};
    const uint64_t streams[6] = {5, 100, 7, (uint64_t)1 << 40, 3, 9};
    int64_t per = SIDE * SIDE * 3;
    float *all = malloc((size_t)(6 * per) * sizeof *all), *one = malloc((size_t)per * sizeof *one);
    dc_sampler s;
    sampler(&s, "euler_a", false, 3);
    dc_sd_request q = {.sampler = &s, .n = 6, .batch = 6, .h = SIDE, .w = SIDE, .prompts = texts,
                       .guidance_scale = 3.0f, .seed = 7, .first_image = 1000, .streams = streams};
    dc_ctx *ctx = tu_ctx();
    ck_assert_msg(dc_sd_generate(ctx, pipeline(), &q, all) == 0, "%s", dc_error());
    for (int k = 0; k < 6; k++) {
        dc_sd_request alone = q;
        alone.n = alone.batch = 1;
        alone.prompts = texts + k;
        alone.streams = NULL;
        alone.first_image = streams[k];
        ck_assert_msg(dc_sd_generate(ctx, pipeline(), &alone, one) == 0, "%s", dc_error());
        ck_assert_msg(memcmp(one, all + k * per, (size_t)per * sizeof *one) == 0, "image %d differs alone", k);
    }
    tu_ctx_free(ctx);
    dc_sampler_free(&s);
    free(all);
    free(one);
}
END_TEST

static int steps_seen;
static void count_step(void *arg, int64_t first, int64_t b, int done, int steps) {
    (void)arg, (void)first, (void)b, (void)steps;
    steps_seen = done;
}

/* img2img runs the last int(n * strength) steps from the image's latents;
 * the result depends on the image. */
START_TEST(test_img2img) {
    int64_t per = SIDE * SIDE * 3;
    float *init = malloc((size_t)(2 * per) * sizeof *init), *out = malloc((size_t)(2 * per) * sizeof *out);
    for (int64_t k = 0; k < 2 * per; k++)
        init[k] = (float)tu_uniform(-1, 1);
    const char *texts[1] = {"a red cube"};
    dc_sampler s;
    sampler(&s, "ddim", false, 10);
    dc_sd_request q = {.sampler = &s, .n = 1, .batch = 1, .h = SIDE, .w = SIDE, .prompts = texts,
                       .guidance_scale = 7.5f, .init = init, .strength = 0.45, .on_step = count_step};
    dc_ctx *ctx = tu_ctx();
    ck_assert_msg(dc_sd_generate(ctx, pipeline(), &q, out) == 0, "%s", dc_error());
    ck_assert_int_eq(steps_seen, 4);
    q.init = init + per; /* another image */
    ck_assert_msg(dc_sd_generate(ctx, pipeline(), &q, out + per) == 0, "%s", dc_error());
    ck_assert(memcmp(out, out + per, (size_t)per * sizeof *out) != 0);
    q.strength = 0.05; /* no step left */
    ck_assert_int_eq(dc_sd_generate(ctx, pipeline(), &q, out), -1);
    tu_ctx_free(ctx);
    dc_sampler_free(&s);
    free(init);
    free(out);
}
END_TEST

/* ---- the command ---- */

START_TEST(test_command) {
    tu_mkdtemp("sd");
    FILE *fp = fopen(tu_path("prompts.txt"), "w");
    fputs("a red cube\n\na blue \"ball\"\n", fp);
    fclose(fp);
    tu_run_result *r = SAMPLE("--model", MODEL, "--prompt-file", tu_path("prompts.txt"), "--num-images", "2",
                              "--num-inference-steps", "3", "--negative-prompt", "blurry", "--seed", "5",
                              "--output-dir", tu_path("out"));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->out, "4 images of 16x16 (pndm, 3 steps)"), "%s", r->out);
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "out/%05d.png", i);
        dc_image img;
        ck_assert_msg(dc_image_load(&img, tu_path(name)) == 0, "%s", dc_error());
        ck_assert(img.w == SIDE && img.h == SIDE && img.c == 3);
        dc_image_free(&img);
        char *params = tu_png_text(tu_path(name), "parameters", NULL);
        ck_assert_ptr_nonnull(params);
        ck_assert_msg(strncmp(params, i < 2 ? "a red cube\n" : "a blue \"ball\"\n", 11) == 0, "%s", params);
        ck_assert_msg(strstr(params, "Negative prompt: blurry") && strstr(params, "Seed: 5"), "%s", params);
        free(params);
    }
    size_t n;
    char *meta = tu_read_file(tu_path("out/metadata.jsonl"), 1 << 20, &n);
    ck_assert_msg(strstr(meta, "{\"file_name\":\"00003.png\",\"text\":\"a blue \\\"ball\\\"\"}\n"), "%s", meta);
    free(meta);
    tu_rmtemp();
}
END_TEST

START_TEST(test_errors) {
    tu_mkdtemp("sd");
    tu_assert_user_error(SAMPLE("--model", MODEL, "--output-dir", tu_path("o")), "needs --prompt");
    tu_assert_user_error(SAMPLE("--model", MODEL, "--prompt", "x", "--height", "15", "--output-dir", tu_path("o")),
                         "multiples of 2");
    tu_assert_user_error(SAMPLE("--model", MODEL, "--prompt", "x", "--class-label", "1", "--output-dir",
                                tu_path("o")),
                         "--class-label");
    tu_assert_user_error(SAMPLE("--model", MODEL, "--prompt", "x", "--clip-skip", "2", "--output-dir",
                                tu_path("o")),
                         "--clip-skip 2: the text encoder has 2 layers");
    tu_assert_user_error(SAMPLE("--model", "tests/fixtures/unet_legacy", "--prompt", "x", "--output-dir",
                                tu_path("o")),
                         "not a text-to-image pipeline");
    tu_assert_user_error(SAMPLE("--model", MODEL, "--prompt", "x", "--weights-dtype", "bf16", "--output-dir",
                                tu_path("o")),
                         "--weights-dtype bf16: f32 or f16");
    tu_assert_user_error(SAMPLE("--model", "tests/fixtures/unet_legacy", "--weights-dtype", "f16", "--output-dir",
                                tu_path("o")),
                         "--weights-dtype: tests/fixtures/unet_legacy is not a text-to-image pipeline");
    tu_rmtemp();
}
END_TEST

/* A copy of the fixture pipeline in the temporary folder, with one file replaced. */
static void copy_pipeline_with(const char *rel, const char *text) {
    static const char *const files[] = {"model_index.json", "scheduler/scheduler_config.json",
                                        "text_encoder/config.json", "text_encoder/model.safetensors",
                                        "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                                        "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                                        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char src[256], dst[256];
        snprintf(src, sizeof src, MODEL "/%s", files[i]);
        snprintf(dst, sizeof dst, "p/%s", files[i]);
        size_t n;
        char *data = tu_read_file(src, 1 << 24, &n);
        bool replace = !strcmp(files[i], rel);
        tu_write_file(dst, replace ? text : data, replace ? strlen(text) : n);
        free(data);
    }
}

START_TEST(test_bad_folders) {
    static const struct {
        const char *file, *text, *want;
    } bad[] = {
        {"model_index.json",
         "{\"_class_name\": \"StableDiffusionXLPipeline\", \"text_encoder_2\": [\"transformers\", "
         "\"CLIPTextModelWithProjection\"], \"vae\": [\"diffusers\", \"AutoencoderKL\"]}",
         "'text_encoder_2' component"},
        {"model_index.json", "{\"unet\": [\"diffusers\", \"UNet2DConditionModel\"], \"vae\": [\"diffusers\", "
                             "\"VQModel\"]}",
         "vae is a VQModel"},
        {"model_index.json", "{\"vae\": [\"diffusers\", \"AutoencoderKL\"]}", "no 'tokenizer' component"},
        {"model_index.json", "[1, 2", "model_index.json"},
        {"scheduler/scheduler_config.json", "{\"_class_name\": \"HeunDiscreteScheduler\"}",
         "HeunDiscreteScheduler"},
        {"vae/config.json", "{\"latent_channels\": 8, \"block_out_channels\": [8, 16], \"norm_num_groups\": 4}",
         "vae"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_mkdtemp("sd");
        copy_pipeline_with(bad[i].file, bad[i].text);
        tu_assert_user_error(SAMPLE("--model", tu_path("p"), "--prompt", "x", "--output-dir", tu_path("o")),
                             bad[i].want);
        tu_rmtemp();
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("sd_pipeline");
    TCase *tc = tu_tcase(s, "pipeline", 120);
    tcase_add_test(tc, test_matches_diffusers);
    tcase_add_test(tc, test_half_weights);
    tcase_add_test(tc, test_matches_diffusers_sd2);
    tcase_add_test(tc, test_batch_and_seed);
    tcase_add_test(tc, test_streams);
    tcase_add_test(tc, test_img2img);
    tc = tu_tcase(s, "command", 120);
    tcase_add_test(tc, test_command);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_bad_folders);
    int rc = tu_run(s);
    for (int k = 0; k < 3; k++)
        if (loaded[k])
            dc_sd_free(&pipes[k]);
    return rc;
}
