/* models/vae: diffusers' AutoencoderKL. Tiny random-weight VAEs made by
 * scripts/make_vae_fixtures.py (tests/fixtures/vae_*) are loaded with
 * dc_vae_load and must give diffusers' encoder mean and clamped logvar, its
 * posterior sample for given noise, its decode of given latents, its full
 * forward (sample_posterior false) and, through the decoder, its gradients
 * (the references are float64, so the tolerances below measure our float32
 * error); configs from the wild must declare as many parameters as
 * diffusers makes; bad configs, inputs and weight files are refused with the
 * key, value or file named; a decode without a tape holds a few feature maps
 * at a time, not all of them. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "models/vae.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FIXTURES "tests/fixtures/"

/* |ours - diffusers| <= TOL * max|diffusers|, every element, for every output
 * and gradient. Measured: up to 1.3e-6 (float32 sums in another order than
 * float64). */
#define TOL 1e-5

static const char *const models[] = {"kl", "three", "plain"};
#define N_MODELS 3

typedef struct {
    dc_vae *m;
    dc_st_file ref; /* reference.safetensors */
} fixture;

static void fixture_open(fixture *f, const char *name) {
    char path[256];
    snprintf(path, sizeof path, FIXTURES "vae_%s", name);
    ck_assert_msg(dc_vae_load(&f->m, path, NULL, DC_CPU) == 0, "%s", dc_error());
    snprintf(path, sizeof path, FIXTURES "vae_%s/reference.safetensors", name);
    ck_assert_msg(dc_st_open(&f->ref, path) == 0, "%s", dc_error());
}

static void fixture_close(fixture *f) {
    dc_st_close(&f->ref);
    dc_vae_free(f->m);
}

static const dc_st_tensor *ref_find(const dc_st_file *ref, const char *name) {
    const dc_st_tensor *t = dc_st_find(ref, name);
    ck_assert_msg(t != NULL && t->dtype == DC_F32, "reference has no F32 %s", name);
    return t;
}

static dc_tensor *ref_tensor(dc_ctx *ctx, const fixture *f, const char *name) {
    const dc_st_tensor *t = ref_find(&f->ref, name);
    dc_tensor *x = dc_from_host(ctx, DC_F32, t->ndim, t->shape, t->data);
    ck_assert_msg(x != NULL, "%s", dc_error());
    return x;
}

/* got (NHWC) against the reference `name`: shape and values. */
static void check_output(const dc_tensor *got, const dc_st_file *ref, const char *name,
                         const char *model) {
    ck_assert_msg(got != NULL, "%s %s: %s", model, name, dc_error());
    const dc_st_tensor *want = ref_find(ref, name);
    ck_assert_int_eq(got->ndim, want->ndim);
    for (int d = 0; d < want->ndim; d++)
        ck_assert_msg(got->shape[d] == want->shape[d], "%s %s: dimension %d is %lld, want %lld",
                      model, name, d, (long long)got->shape[d], (long long)want->shape[d]);
    char what[128];
    snprintf(what, sizeof what, "%s %s", model, name);
    tu_check_close(got->data, want->data, got->numel, TOL, what);
}

/* ---- parity with diffusers ---- */

START_TEST(test_parity) {
    const char *name = models[_i];
    fixture f;
    fixture_open(&f, name);
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    dc_vae_latent_dist d;
    ck_assert_msg(dc_vae_encode(ctx, f.m, ref_tensor(ctx, &f, "input.x"), &d) == 0, "%s", dc_error());
    check_output(d.mean, &f.ref, "mean", name);
    check_output(d.logvar, &f.ref, "logvar", name);
    check_output(dc_vae_sample(ctx, &d, ref_tensor(ctx, &f, "input.noise")), &f.ref, "sample", name);
    check_output(dc_vae_decode(ctx, f.m, d.mean), &f.ref, "forward", name); /* mode() */
    check_output(dc_vae_decode(ctx, f.m, ref_tensor(ctx, &f, "input.z")), &f.ref, "decoded", name);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* kl's quant_conv pushes logvar channel 0 above 20 and channel 1 below -30:
 * the reference holds the clamped values, and so must ours, exactly. */
START_TEST(test_logvar_clamp) {
    fixture f;
    fixture_open(&f, "kl");
    dc_ctx *ctx = tu_ctx();
    dc_vae_latent_dist d;
    ck_assert_msg(dc_vae_encode(ctx, f.m, ref_tensor(ctx, &f, "input.x"), &d) == 0, "%s", dc_error());
    const float *want = ref_find(&f.ref, "logvar")->data, *got = d.logvar->data;
    const float *std = d.std->data;
    for (int64_t i = 0; i < d.logvar->numel; i++) {
        if (i % 4 == 0)
            ck_assert(want[i] == 20.0f && got[i] == 20.0f && std[i] == expf(10.0f));
        else if (i % 4 == 1)
            ck_assert(want[i] == -30.0f && got[i] == -30.0f);
        else
            ck_assert(want[i] > -30.0f && want[i] < 20.0f);
    }
    ck_assert(!d.logvar->requires_grad && !d.std->requires_grad);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* L = sum(decode(z) * r): dL/dz and the decoder's parameter gradients
 * against diffusers', the parameters' compared in the file layout (the
 * gradient buffer written as a weight file does the conversion). */
START_TEST(test_decoder_gradients) {
    fixture f;
    fixture_open(&f, "kl");
    dc_ctx *ctx = tu_ctx();
    dc_tensor *z = ref_tensor(ctx, &f, "input.z");
    z->requires_grad = true;
    dc_tensor *out = dc_vae_decode(ctx, f.m, z);
    check_output(out, &f.ref, "decoded", "kl");
    ck_assert_msg(dc_backward_from(ctx, out, ref_tensor(ctx, &f, "input.r")) == 0, "%s", dc_error());
    ck_assert_ptr_nonnull(z->grad);
    check_output(z->grad, &f.ref, "grad.z", "kl");
    tu_mkdtemp("vae_grad");
    const char *path = tu_path("grad.safetensors");
    ck_assert_msg(dc_params_save(&f.m->params, f.m->params.grad, path, NULL, NULL, 0) == 0, "%s",
                  dc_error());
    dc_st_file grads;
    ck_assert_msg(dc_st_open(&grads, path) == 0, "%s", dc_error());
    int checked = 0;
    for (int i = 0; i < f.ref.n; i++) {
        const dc_st_tensor *want = &f.ref.tensors[i];
        if (strncmp(want->name, "grad.", 5) || !strcmp(want->name, "grad.z"))
            continue;
        const dc_st_tensor *got = dc_st_find(&grads, want->name + 5);
        ck_assert_msg(got && got->nbytes == want->nbytes, "%s: missing or misshapen", want->name);
        tu_check_close(got->data, want->data, (int64_t)(want->nbytes / 4), TOL, want->name);
        checked++;
    }
    ck_assert_int_ge(checked, 40); /* every small decoder parameter and a weight of each kind */
    /* the encoder took no part: its gradients are zero */
    const dc_st_tensor *enc = dc_st_find(&grads, "encoder.conv_in.weight");
    ck_assert(enc && tu_max_abs(enc->data, (int64_t)(enc->nbytes / 4)) == 0.0);
    dc_st_close(&grads);
    tu_rmtemp();
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* Names: the legacy file of "three" holds query/key/value/proj_attn, which
 * only the rename hook maps; its F16 weights are read as f32. */
START_TEST(test_legacy_names_fp16) {
    const char *path = FIXTURES "vae_three/diffusion_pytorch_model.fp16.safetensors";
    dc_st_file w;
    ck_assert_msg(dc_st_open(&w, path) == 0, "%s", dc_error());
    ck_assert_ptr_nonnull(dc_st_find(&w, "encoder.mid_block.attentions.0.query.weight"));
    ck_assert_int_eq(w.tensors[0].dtype, DC_F16);
    dc_st_close(&w);
    dc_vae_config c;
    ck_assert_msg(dc_vae_config_load(&c, FIXTURES "vae_three/config.json") == 0, "%s", dc_error());
    dc_vae *m;
    ck_assert_msg(dc_vae_init(&m, &c) == 0, "%s", dc_error());
    ck_assert_int_ne(dc_params_check_file(&m->params, path, NULL), 0);
    ck_assert_msg(strstr(dc_error(), "attentions.0.") && strstr(dc_error(), "no such parameter"),
                  "%s", dc_error());
    dc_vae_free(m);
    /* a variant asked for by name; one that is not there is named */
    ck_assert_msg(dc_vae_load(&m, FIXTURES "vae_three", "fp16", DC_CPU) == 0, "%s", dc_error());
    dc_vae_free(m);
    ck_assert_int_ne(dc_vae_load(&m, FIXTURES "vae_three", "bf16", DC_CPU), 0);
    ck_assert_msg(strstr(dc_error(), "no variant 'bf16'"), "%s", dc_error());
    ck_assert_ptr_null(m);
}
END_TEST

/* enable_tiling's decode of 12x21 latents in 8x8 tiles (kl: sample_size
 * 16, 2 levels): 2 x 4 tiles, the last column 3 latents wide; and its
 * encode of a 24x44 image in 16x16 tiles. Inputs within one tile go through
 * whole. The gradient setting is left as it was. */
START_TEST(test_tiled_decode) {
    fixture f;
    fixture_open(&f, "kl");
    dc_ctx *ctx = tu_ctx();
    dc_tensor *out = dc_vae_decode_tiled(ctx, f.m, ref_tensor(ctx, &f, "input.z_tiles"));
    check_output(out, &f.ref, "tiled", "kl");
    ck_assert(ctx->grad_enabled && !out->requires_grad);
    dc_tensor *z = tu_randn(ctx, DC_SHAPE(2, 8, 5, 4));
    dc_tensor *whole = dc_vae_decode(ctx, f.m, z), *tiled = dc_vae_decode_tiled(ctx, f.m, z);
    ck_assert(whole && tiled && !memcmp(whole->data, tiled->data, dc_tensor_bytes(whole)));
    /* encoding a 24x44 image in 16x16 tiles (12-pixel steps) */
    dc_vae_latent_dist d, e;
    ck_assert_msg(dc_vae_encode_tiled(ctx, f.m, ref_tensor(ctx, &f, "input.x_tiles"), &d) == 0, "%s",
                  dc_error());
    check_output(d.mean, &f.ref, "tiled_mean", "kl");
    check_output(d.logvar, &f.ref, "tiled_logvar", "kl");
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(1, 16, 10, 3));
    ck_assert(dc_vae_encode(ctx, f.m, x, &d) == 0 && dc_vae_encode_tiled(ctx, f.m, x, &e) == 0);
    ck_assert(!memcmp(d.mean->data, e.mean->data, dc_tensor_bytes(d.mean)));
    ck_assert_int_ne(dc_vae_encode_tiled(ctx, f.m, tu_randn(ctx, DC_SHAPE(1, 24, 45, 3)), &d), 0);
    ck_assert_msg(strstr(dc_error(), "multiples of 2"), "%s", dc_error());
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* ---- configs ---- */

/* Configs from the wild declare what diffusers makes: tensors and elements. */
START_TEST(test_wild_configs) {
    char *text = tu_read_file(FIXTURES "vae_configs.json", 1 << 20, NULL);
    cJSON *root = cJSON_Parse(text);
    ck_assert_ptr_nonnull(root);
    int n = 0;
    for (const cJSON *e = root->child; e; e = e->next, n++) {
        char *cfg_text = cJSON_PrintUnformatted(cJSON_GetObjectItem(e, "config"));
        dc_vae_config c;
        ck_assert_msg(dc_vae_config_parse(&c, cfg_text, e->string) == 0, "%s", dc_error());
        dc_vae *m;
        ck_assert_msg(dc_vae_init(&m, &c) == 0, "%s", dc_error());
        int64_t numel = 0;
        for (int i = 0; i < m->params.n; i++)
            numel += m->params.p[i]->value.numel;
        ck_assert_int_eq(m->params.n, cJSON_GetObjectItem(e, "tensors")->valueint);
        ck_assert_int_eq(numel, (int64_t)cJSON_GetObjectItem(e, "numel")->valuedouble);
        float scaling = strcmp(e->string, "sdxl") ? 0.18215f : 0.13025f;
        ck_assert(c.scaling_factor == scaling && c.shift_factor == 0.0f);
        dc_vae_free(m);
        free(cfg_text);
    }
    ck_assert_int_eq(n, 3);
    cJSON_Delete(root);
    free(text);
}
END_TEST

/* What the plain fixture's config says, read back. */
START_TEST(test_config_fields) {
    dc_vae_config c;
    ck_assert_msg(dc_vae_config_load(&c, FIXTURES "vae_plain/config.json") == 0, "%s", dc_error());
    ck_assert_int_eq(c.in_channels, 1);
    ck_assert_int_eq(c.out_channels, 2);
    ck_assert_int_eq(c.latent_channels, 3);
    ck_assert_int_eq(c.levels, 2);
    ck_assert_int_eq(c.act_fn, DC_UNET_MISH);
    ck_assert(!c.use_quant_conv && !c.use_post_quant_conv && !c.mid_block_add_attention);
    ck_assert(c.scaling_factor == 0.13025f && c.shift_factor == 0.0609f);
    ck_assert(c.sample_size[0] == 8 && c.sample_size[1] == 8);
    ck_assert_msg(dc_vae_config_load(&c, FIXTURES "vae_three/config.json") == 0, "%s", dc_error());
    ck_assert(c.sample_size[0] == 8 && c.sample_size[1] == 12 && c.act_fn == DC_UNET_SILU);
    ck_assert(c.use_quant_conv && c.mid_block_add_attention && c.layers_per_block == 2);
}
END_TEST

static const struct {
    const char *json, *error;
} bad_configs[] = {
    {"[1, 2]", "must be a JSON object"},
    {"{\"_class_name\": \"AutoencoderTiny\"}", "_class_name \"AutoencoderTiny\" is not supported"},
    {"{\"block_out_channels\": [32, 64]}", "down_block_types is missing"},
    {"{\"block_out_channels\": [32, 64], \"down_block_types\": [\"DownEncoderBlock2D\"], "
     "\"up_block_types\": [\"UpDecoderBlock2D\"]}",
     "down_block_types has 1 entries but block_out_channels has 2"},
    {"{\"down_block_types\": [\"AttnDownEncoderBlock2D\"]}",
     "down_block_types[0] \"AttnDownEncoderBlock2D\" is not supported"},
    {"{\"up_block_types\": [7]}", "up_block_types[0] must be a string, got a number"},
    {"{\"act_fn\": \"relu\"}", "act_fn \"relu\" is not supported"},
    {"{\"norm_num_groups\": 48}", "block_out_channels[0] = 64 is not a multiple of norm_num_groups 48"},
    {"{\"block_out_channels\": [1000000000]}", "block_out_channels[0] must be an integer in [1, 16384]"},
    {"{\"block_out_channels\": [64.5]}", "block_out_channels[0] must be an integer"},
    {"{\"block_out_channels\": []}", "block_out_channels has 0 entries"},
    {"{\"layers_per_block\": 0}", "layers_per_block must be an integer in [1, 32]"},
    {"{\"latent_channels\": 100000}", "latent_channels must be an integer in [1, 4096]"},
    {"{\"in_channels\": 2.5}", "in_channels must be an integer"},
    {"{\"out_channels\": \"3\"}", "out_channels must be a number, got a string"},
    {"{\"scaling_factor\": 0}", "scaling_factor 0 must be finite and nonzero"},
    {"{\"scaling_factor\": null}", "scaling_factor must be a finite number"},
    {"{\"shift_factor\": 1e300}", "shift_factor must be a finite number"},
    {"{\"sample_size\": [8, 8, 8]}", "sample_size must be an integer or [height, width]"},
    {"{\"sample_size\": [8, -1]}", "sample_size[1] must be an integer in [1, 65536]"},
    {"{\"use_quant_conv\": 1}", "use_quant_conv must be true or false"},
    {"{\"mid_block_add_attention\": \"yes\"}", "mid_block_add_attention must be true or false"},
    {"{\"in_channels\": 3,}", "bad.json"},
};

START_TEST(test_bad_configs) {
    for (size_t i = 0; i < sizeof bad_configs / sizeof *bad_configs; i++) {
        dc_vae_config c;
        ck_assert_msg(dc_vae_config_parse(&c, bad_configs[i].json, "bad.json") != 0, "accepted %s",
                      bad_configs[i].json);
        ck_assert_msg(strstr(dc_error(), bad_configs[i].error) && !strncmp(dc_error(), "bad.json", 8),
                      "%s: got \"%s\", want \"%s\"", bad_configs[i].json, dc_error(),
                      bad_configs[i].error);
        ck_assert_int_eq(c.levels, 0); /* left empty */
    }
    /* the defaults and unknown keys: a one-level 64-channel VAE */
    dc_vae_config c;
    ck_assert_msg(dc_vae_config_parse(&c, "{\"latents_mean\": [1, 2], \"no_such_key\": 1}", "ok") == 0,
                  "%s", dc_error());
    ck_assert(c.levels == 1 && c.block_out_channels[0] == 64 && c.layers_per_block == 1 &&
              c.norm_num_groups == 32 && c.latent_channels == 4 && c.sample_size[0] == 32);
    /* a config built in code is checked too */
    c.norm_num_groups = 0;
    dc_vae *m = (dc_vae *)1;
    ck_assert_int_ne(dc_vae_init(&m, &c), 0);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(dc_error(), "norm_num_groups 0 must be positive"), "%s", dc_error());
}
END_TEST

/* ---- weight files ---- */

/* A copy of the kl fixture's folder in the temp folder, its weights cut to
 * `keep` bytes (0: whole) and its config changed by `key` = `value` (NULL: not). */
static const char *copy_fixture(size_t keep, const char *key, const char *value) {
    size_t n;
    char *w = tu_read_file(FIXTURES "vae_kl/diffusion_pytorch_model.safetensors", 1 << 24, &n);
    char *cfg = tu_read_file(FIXTURES "vae_kl/config.json", 1 << 20, NULL);
    cJSON *root = cJSON_Parse(cfg);
    if (key)
        cJSON_ReplaceItemInObject(root, key, cJSON_Parse(value));
    char *text = cJSON_Print(root);
    const char *dir = tu_path("vae");
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    fputs(text, fp);
    fclose(fp);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    fwrite(w, 1, keep ? keep : n, fp);
    fclose(fp);
    free(text);
    cJSON_Delete(root);
    free(cfg);
    free(w);
    return tu_path("vae");
}

START_TEST(test_bad_weights) {
    tu_mkdtemp("vae_weights");
    dc_vae *m = NULL;
    ck_assert_msg(dc_vae_load(&m, copy_fixture(0, NULL, NULL), NULL, DC_CPU) == 0, "%s", dc_error());
    dc_vae_free(m);
    /* the vae/ of the tiny SD pipeline */
    ck_assert_msg(dc_vae_load(&m, FIXTURES "sd_tiny/vae", NULL, DC_CPU) == 0, "%s", dc_error());
    ck_assert(m->cfg.scaling_factor == 0.18215f && m->cfg.latent_channels == 4);
    dc_vae_free(m);
    const size_t cuts[] = {4, 100, 5000, 150000};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_ne(dc_vae_load(&m, copy_fixture(cuts[i], NULL, NULL), NULL, DC_CPU), 0);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(dc_error(), "diffusion_pytorch_model.safetensors"), "cut at %zu: %s",
                      cuts[i], dc_error());
    }
    /* a config that does not fit the weights: refused before allocating */
    ck_assert_int_ne(dc_vae_load(&m, copy_fixture(0, "latent_channels", "8"), NULL, DC_CPU), 0);
    ck_assert_msg(strstr(dc_error(), "conv_in.weight: file has [16, 4, 3, 3], model expects [16, 8, 3, 3]"),
                  "%s", dc_error());
    ck_assert_int_ne(dc_vae_load(&m, copy_fixture(0, "block_out_channels", "[16384, 16384]"), NULL, DC_CPU), 0);
    ck_assert_msg(strstr(dc_error(), "file has"), "%s", dc_error());
    ck_assert_int_ne(dc_vae_load(&m, copy_fixture(0, "use_post_quant_conv", "false"), NULL, DC_CPU), 0);
    ck_assert_msg(strstr(dc_error(), "post_quant_conv"), "%s", dc_error());
    /* no config, no weights, only PyTorch's */
    ck_assert_int_ne(dc_vae_load(&m, tu_path("nowhere"), NULL, DC_CPU), 0);
    ck_assert_msg(strstr(dc_error(), "no config.json"), "%s", dc_error());
    char from[512], to[512];
    snprintf(from, sizeof from, "%s/diffusion_pytorch_model.safetensors", tu_path("vae"));
    snprintf(to, sizeof to, "%s/diffusion_pytorch_model.bin", tu_path("vae"));
    ck_assert_int_eq(rename(from, to), 0);
    ck_assert_int_ne(dc_vae_load(&m, tu_path("vae"), NULL, DC_CPU), 0);
    ck_assert_msg(strstr(dc_error(), "only PyTorch .bin weights") && strstr(dc_error(), "AutoencoderKL"),
                  "%s", dc_error());
    tu_rmtemp();
}
END_TEST

/* ---- inputs ---- */

START_TEST(test_bad_inputs) {
    fixture f;
    fixture_open(&f, "kl");
    dc_ctx *ctx = tu_ctx();
    dc_vae_latent_dist d;
    static const struct {
        int64_t shape[4];
        bool encode;
        const char *error;
    } cases[] = {
        {{1, 16, 16, 4}, true, "x must be f32 [N, H, W, 3]"},
        {{1, 15, 16, 3}, true, "x is 15x16; height and width must be multiples of 2"},
        {{1, 8, 8, 3}, false, "z must be f32 [N, H, W, 4]"},
    };
    for (int i = 0; i < 3; i++) {
        dc_ctx_reset(ctx);
        dc_tensor *x = tu_randn(ctx, 4, cases[i].shape);
        bool failed = cases[i].encode ? dc_vae_encode(ctx, f.m, x, &d) != 0
                                      : dc_vae_decode(ctx, f.m, x) == NULL;
        ck_assert(failed && ctx->failed);
        ck_assert_msg(strstr(dc_error(), cases[i].error) && !strncmp(dc_error(), "vae: ", 5), "%s",
                      dc_error());
    }
    dc_ctx_reset(ctx);
    ck_assert_int_eq(dc_vae_encode(ctx, f.m, tu_randn(ctx, DC_SHAPE(2, 8, 8, 3)), &d), 0);
    ck_assert_ptr_null(dc_vae_sample(ctx, &d, tu_randn(ctx, DC_SHAPE(2, 8, 8, 4))));
    ck_assert_msg(strstr(dc_error(), "noise must be f32 [2, 4, 4, 4] as the latents"), "%s", dc_error());
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* (z - shift) * scaling and back, with plain's factors 0.13025 and 0.0609. */
START_TEST(test_scale_latents) {
    fixture f;
    fixture_open(&f, "plain");
    dc_ctx *ctx = tu_ctx();
    dc_tensor *z = tu_randn(ctx, DC_SHAPE(2, 3, 5, 3));
    dc_tensor *s = dc_vae_scale_latents(ctx, f.m, z);
    dc_tensor *back = dc_vae_unscale_latents(ctx, f.m, s);
    ck_assert_ptr_nonnull(back);
    const float *zf = z->data, *sf = s->data, *bf = back->data;
    for (int64_t i = 0; i < z->numel; i++) {
        ck_assert_double_eq_tol(sf[i], ((double)zf[i] - 0.0609) * 0.13025, 1e-6);
        ck_assert_double_eq_tol(bf[i], zf[i], 1e-5);
    }
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* ---- memory ---- */

/* Without a tape a decode gives each block's temporaries back: its peak is
 * a fraction of what the same decode takes with one, and its output the
 * same bits. */
START_TEST(test_decode_memory) {
    fixture f;
    fixture_open(&f, "three");
    dc_ctx *ctx = tu_ctx();
    float *zh = malloc(16 * 16 * 4 * sizeof *zh), *want = NULL;
    for (int i = 0; i < 16 * 16 * 4; i++)
        zh[i] = (float)tu_normal();
    size_t peak[2], out_bytes = 0;
    for (int tape = 1; tape >= 0; tape--) {
        dc_ctx_reset(ctx);
        dc_set_grad_enabled(ctx, tape);
        dc_tensor *z = dc_from_host(ctx, DC_F32, DC_SHAPE(1, 16, 16, 4), zh);
        z->requires_grad = tape;
        size_t base = ctx->act.used;
        ctx->act.peak = base;
        dc_tensor *out = dc_vae_decode(ctx, f.m, z);
        ck_assert_msg(out != NULL, "%s", dc_error());
        peak[tape] = ctx->act.peak - base;
        if (!tape) /* the output alone is left, in the place of the first stage's */
            ck_assert_uint_le(ctx->act.used - base, (dc_tensor_bytes(out) + 63) / 64 * 64);
        if (tape) {
            out_bytes = dc_tensor_bytes(out);
            want = malloc(out_bytes);
            memcpy(want, out->data, out_bytes);
        } else {
            ck_assert(dc_tensor_bytes(out) == out_bytes && !memcmp(out->data, want, out_bytes));
        }
    }
    ck_assert_msg(peak[0] * 2 < peak[1], "peak %zu bytes without a tape, %zu with", peak[0], peak[1]);
    free(want);
    free(zh);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

int main(void) {
    Suite *s = suite_create("vae");
    TCase *tc = tu_tcase(s, "parity", 60);
    tcase_add_loop_test(tc, test_parity, 0, N_MODELS);
    tcase_add_test(tc, test_logvar_clamp);
    tcase_add_test(tc, test_decoder_gradients);
    tcase_add_test(tc, test_legacy_names_fp16);
    tcase_add_test(tc, test_tiled_decode);
    tc = tu_tcase(s, "config", 60);
    tcase_add_test(tc, test_wild_configs);
    tcase_add_test(tc, test_config_fields);
    tcase_add_test(tc, test_bad_configs);
    tc = tu_tcase(s, "files", 60);
    tcase_add_test(tc, test_bad_weights);
    tc = tu_tcase(s, "forward", 60);
    tcase_add_test(tc, test_bad_inputs);
    tcase_add_test(tc, test_scale_latents);
    tcase_add_test(tc, test_decode_memory);
    return tu_run(s);
}
