/* models/unet: diffusers' UNet2DModel. Tiny random-weight models made by
 * scripts/make_unet_fixtures.py (tests/fixtures/unet_*) are loaded from their
 * config.json and weight files and must give diffusers' output and gradients
 * (the references are float64, so the tolerances below measure our float32
 * error); configs from the wild must declare as many parameters as diffusers
 * makes; bad configs, inputs and weight files are refused with the key, value
 * or parameter named. Fresh random inputs check what needs no reference:
 * finite differences through the whole network, samples independent of the
 * batch they share, and dropout only in training. dc_unet_find locates a
 * UNet's files in bare and pipeline folders. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "models/unet.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURES "tests/fixtures/"

/* Forward: |ours - diffusers| <= FWD_TOL * max|diffusers output|, every element.
 * Backward (the input's and every saved parameter's gradient): the same with
 * BWD_TOL against the largest element of that gradient. Measured: up to 7e-7
 * forward and 3e-6 backward (float32 sums in another order than float64). */
#define FWD_TOL 1e-5
#define BWD_TOL 5e-5

static const char *const models[] = {"attn_class",    "scale_shift",  "legacy",      "mish_resnet",
                                     "gelu_identity", "sharded_fp16", "fourier_skip"};
#define N_MODELS 7

typedef struct {
    dc_unet_config cfg;
    dc_unet m;
    dc_params ps;
    dc_st_file ref; /* reference.safetensors */
} fixture;

static void fixture_path(char *buf, size_t n, const char *model, const char *file) {
    snprintf(buf, n, FIXTURES "unet_%s/%s", model, file);
}

/* The weights of fixture `name` as dc_unet_find finds them (malloc'ed). */
static char *fixture_weights(const char *name) {
    char dir[256], *cfg, *weights;
    snprintf(dir, sizeof dir, FIXTURES "unet_%s", name);
    ck_assert_msg(dc_unet_find(dir, "unet", NULL, &cfg, &weights, NULL) == 0, "%s", dc_error());
    free(cfg);
    return weights;
}

/* The model of fixture `name` with its weights, and its reference file. */
static void fixture_open(fixture *f, const char *name) {
    char path[256];
    fixture_path(path, sizeof path, name, "config.json");
    ck_assert_msg(dc_unet_config_load(&f->cfg, path) == 0, "%s", dc_error());
    dc_params_init(&f->ps);
    ck_assert_msg(dc_unet_init(&f->m, &f->cfg, &f->ps) == 0, "%s", dc_error());
    ck_assert_msg(dc_params_alloc(&f->ps, tu_next()) == 0, "%s", dc_error());
    char *weights = fixture_weights(name);
    ck_assert_msg(dc_params_load(&f->ps, NULL, weights, dc_unet_rename) == 0, "%s", dc_error());
    free(weights);
    fixture_path(path, sizeof path, name, "reference.safetensors");
    ck_assert_msg(dc_st_open(&f->ref, path) == 0, "%s", dc_error());
}

static void fixture_close(fixture *f) {
    dc_st_close(&f->ref);
    dc_unet_free(&f->m);
    dc_params_free(&f->ps);
    dc_unet_config_free(&f->cfg);
}

static const dc_st_tensor *ref_find(const fixture *f, const char *name) {
    const dc_st_tensor *t = dc_st_find(&f->ref, name);
    ck_assert_msg(t != NULL, "reference has no %s", name);
    return t;
}

/* A reference tensor as an activation of the context. */
static dc_tensor *ref_tensor(dc_ctx *ctx, const fixture *f, const char *name) {
    const dc_st_tensor *t = ref_find(f, name);
    ck_assert_msg(t->dtype == DC_F32 || t->dtype == DC_I32, "%s: dtype %s", name, t->dtype_name);
    dc_tensor *x = dc_from_host(ctx, (dc_dtype)t->dtype, t->ndim, t->shape, t->data);
    ck_assert_msg(x != NULL, "%s", dc_error());
    return x;
}

/* A shift shared by all keys leaves the softmax unchanged, so to_k.bias has no
 * gradient in exact arithmetic (the fixtures leave it out): ours must be
 * rounding noise next to the same attention's to_q.bias gradient. */
static void check_zero_key_bias(const dc_params *ps, const dc_param *p) {
    size_t len = strlen(p->name), tail = strlen("to_k.bias");
    if (len < tail || strcmp(p->name + len - tail, "to_k.bias"))
        return;
    char q[256];
    snprintf(q, sizeof q, "%.*sto_q.bias", (int)(len - tail), p->name);
    const dc_param *qb = dc_params_find(ps, q);
    ck_assert_ptr_nonnull(qb);
    double k = tu_max_abs(p->grad.data, p->value.numel), ref = tu_max_abs(qb->grad.data, qb->value.numel);
    ck_assert_msg(ref > 0 && k <= 1e-4 * ref, "%s: gradient %g, to_q.bias's %g", p->name, k, ref);
}

static dc_tensor *fixture_forward(dc_ctx *ctx, const fixture *f, dc_tensor *x) {
    dc_tensor *t = ref_tensor(ctx, f, "input.t");
    dc_tensor *y = dc_st_find(&f->ref, "input.y") ? ref_tensor(ctx, f, "input.y") : NULL;
    dc_tensor *out = dc_unet_forward(ctx, &f->m, x, t, y);
    ck_assert_msg(out != NULL, "%s", dc_error());
    return out;
}

/* ---- parity with diffusers ---- */

START_TEST(test_parity) {
    const char *name = models[_i];
    fixture f;
    fixture_open(&f, name);
    dc_ctx *ctx = tu_ctx();
    ctx->training = false; /* the references are in eval mode */
    dc_tensor *x = ref_tensor(ctx, &f, "input.x");
    x->requires_grad = true;
    dc_tensor *out = fixture_forward(ctx, &f, x);
    const dc_st_tensor *want = ref_find(&f, "output");
    ck_assert_msg(want->ndim == 4 && out->ndim == 4 && want->nbytes == dc_tensor_bytes(out),
                  "%s: output shape", name);
    for (int d = 0; d < 4; d++)
        ck_assert_int_eq(out->shape[d], want->shape[d]);
    char what[256];
    snprintf(what, sizeof what, "%s output", name);
    tu_check_close(out->data, want->data, out->numel, FWD_TOL, what);

    ck_assert_msg(dc_backward_from(ctx, out, ref_tensor(ctx, &f, "input.r")) == 0, "%s",
                  dc_error());
    ck_assert_ptr_nonnull(x->grad);
    snprintf(what, sizeof what, "%s grad.x", name);
    tu_check_close(x->grad->data, ref_find(&f, "grad.x")->data, x->numel, BWD_TOL, what);
    int checked = 0;
    for (int i = 0; i < f.ref.n; i++) {
        const dc_st_tensor *t = &f.ref.tensors[i];
        if (strncmp(t->name, "grad.", 5) || !strcmp(t->name, "grad.x"))
            continue;
        const dc_param *p = dc_params_find(&f.ps, t->name + 5);
        ck_assert_msg(p != NULL, "%s: the model has no parameter %s", name, t->name + 5);
        float *g = tu_ref_grad(t, p);
        snprintf(what, sizeof what, "%s %s", name, t->name);
        tu_check_close(p->grad.data, g, p->value.numel, BWD_TOL, what);
        free(g);
        checked++;
    }
    ck_assert_int_ge(checked, 60); /* every norm and bias, and a weight of each kind */
    for (int i = 0; i < f.ps.n; i++)
        check_zero_key_bias(&f.ps, f.ps.p[i]);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* Names and shapes: dc_params_load refuses a missing, extra or misshapen
 * tensor, so loading proves them; here also the count, and that the legacy
 * file really holds the old names. */
START_TEST(test_state_dict_names) {
    for (int k = 0; k < N_MODELS; k++) {
        fixture f;
        fixture_open(&f, models[k]);
        char *path = fixture_weights(models[k]);
        dc_st_set w;
        ck_assert_msg(dc_st_set_open(&w, path) == 0, "%s", dc_error());
        bool legacy = !strcmp(models[k], "legacy"), sharded = !strcmp(models[k], "sharded_fp16");
        int old = 0, n = 0;
        for (int s = 0; s < w.n; s++)
            for (int i = 0; i < w.files[s].n; i++, n++) {
                const dc_st_tensor *t = &w.files[s].tensors[i];
                old += strstr(t->name, ".query.") || strstr(t->name, ".proj_attn.");
                ck_assert_int_eq(t->dtype, sharded ? DC_F16 : DC_F32);
            }
        ck_assert_int_eq(n, f.ps.n);
        ck_assert_int_eq(old > 0, legacy);
        ck_assert_int_eq(w.n > 1, sharded);
        dc_st_set_close(&w);
        if (legacy) { /* without the hook the old names are unknown */
            ck_assert_int_ne(dc_params_load(&f.ps, NULL, path, NULL), 0);
            ck_assert_msg(strstr(dc_error(), "attentions.0.") &&
                              strstr(dc_error(), "no such parameter"),
                          "%s", dc_error());
        }
        /* the mid attention: none without add_attention, no norm under scale_shift */
        bool mid_attn = dc_params_find(&f.ps, "mid_block.attentions.0.to_q.weight") != NULL;
        bool mid_norm = dc_params_find(&f.ps, "mid_block.attentions.0.group_norm.weight") != NULL;
        ck_assert_int_eq(mid_attn, f.cfg.add_attention);
        ck_assert_int_eq(mid_norm, f.cfg.add_attention && !f.cfg.scale_shift);
        free(path);
        fixture_close(&f);
    }
}
END_TEST

START_TEST(test_rename) {
    static const char *const cases[][2] = {
        {"mid_block.attentions.0.query.weight", "mid_block.attentions.0.to_q.weight"},
        {"down_blocks.3.attentions.1.key.bias", "down_blocks.3.attentions.1.to_k.bias"},
        {"up_blocks.2.attentions.12.value.weight", "up_blocks.2.attentions.12.to_v.weight"},
        {"up_blocks.0.attentions.2.proj_attn.bias", "up_blocks.0.attentions.2.to_out.0.bias"},
        {"attentions.0.query.weight", "attentions.0.to_q.weight"},
        {"mid_block.attentions.0.group_norm.weight", NULL},
        {"mid_block.attentions.0.to_q.weight", NULL},
        {"down_blocks.0.resnets.0.query.weight", NULL},
        {"mid_block.xattentions.0.query.weight", NULL},
        {"mid_block.attentions.query.weight", NULL},
        {"mid_block.attentions.0.query.scale", NULL},
        {"mid_block.attentions.0.query", NULL},
        {"query.weight", NULL},
        {"conv_in.weight", NULL},
    };
    char buf[128];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *got = dc_unet_rename(cases[i][0], buf, sizeof buf);
        if (!cases[i][1])
            ck_assert_msg(got == cases[i][0], "%s renamed to %s", cases[i][0], got);
        else
            ck_assert_str_eq(got, cases[i][1]);
    }
    /* a name that does not fit stays as it was (and will be reported unknown) */
    const char *name = "mid_block.attentions.0.proj_attn.weight";
    ck_assert_ptr_eq(dc_unet_rename(name, buf, 20), name);
}
END_TEST

/* ---- configs ---- */

static void parse_ok(dc_unet_config *c, const char *json) {
    ck_assert_msg(dc_unet_config_parse(c, json, "test.json") == 0, "%s: %s", json, dc_error());
}

START_TEST(test_config_defaults) {
    dc_unet_config c;
    parse_ok(&c, "{}");
    ck_assert_int_eq(c.levels, 4);
    static const int ch[] = {224, 448, 672, 896};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(c.block_out_channels[i], ch[i]);
        ck_assert_int_eq(c.down_attn[i], i > 0); /* DownBlock2D, then AttnDownBlock2D x3 */
        ck_assert_int_eq(c.up_attn[i], i < 3);   /* AttnUpBlock2D x3, then UpBlock2D */
    }
    ck_assert(c.in_channels == 3 && c.out_channels == 3 && c.layers_per_block == 2);
    ck_assert(c.attention_head_dim == 8 && c.norm_num_groups == 32 && c.attn_norm_num_groups == 0);
    ck_assert(c.norm_eps == 1e-5f && c.dropout == 0.0f && c.mid_block_scale_factor == 1.0f);
    ck_assert(c.flip_sin_to_cos && c.freq_shift == 0.0f && !c.center_input_sample);
    ck_assert(c.add_attention && !c.scale_shift && c.downsample_padding == 1);
    ck_assert(c.num_class_embeds == 0 && dc_unet_null_class(&c) == -1);
    ck_assert(c.sample_size[0] == 0 && c.sample_size[1] == 0);
    ck_assert_str_eq(c.json, "{}");
    dc_unet_config_free(&c);
    dc_unet_config_free(&c); /* idempotent */

    ck_assert(c.act_fn == DC_UNET_SILU && c.class_embed_type == DC_UNET_CLASS_TABLE);
    ck_assert(c.time_embedding_dim == 0);
    for (int i = 0; i < 4; i++)
        ck_assert(c.down_resample[i] == DC_UNET_RESAMPLE_CONV &&
                  c.up_resample[i] == DC_UNET_RESAMPLE_CONV);
    dc_unet_config_free(&c);

    /* "resnet" resampling: the attention blocks follow it, the plain ones ignore it */
    parse_ok(&c, "{\"downsample_type\": \"resnet\", \"upsample_type\": \"resnet\", "
                 "\"act_fn\": \"mish\", \"class_embed_type\": \"timestep\"}");
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(c.down_resample[i], i > 0 ? DC_UNET_RESAMPLE_RESNET : DC_UNET_RESAMPLE_CONV);
        ck_assert_int_eq(c.up_resample[i], i < 3 ? DC_UNET_RESAMPLE_RESNET : DC_UNET_RESAMPLE_CONV);
    }
    ck_assert(c.act_fn == DC_UNET_MISH && c.class_embed_type == DC_UNET_CLASS_TIMESTEP);
    ck_assert_int_eq(dc_unet_null_class(&c), -1); /* labels, but no range: none means "no class" */
    dc_unet_config_free(&c);
    parse_ok(&c, "{\"block_out_channels\": [32, 64], \"down_block_types\": [\"UNetResDownBlock2D\", "
                 "\"ResnetDownsampleBlock2D\"], \"up_block_types\": [\"ResnetUpsampleBlock2D\", "
                 "\"UpBlock2D\"], \"act_fn\": \"gelu\", \"class_embed_type\": \"identity\", "
                 "\"num_class_embeds\": 3}");
    ck_assert(c.down_resample[0] == DC_UNET_RESAMPLE_CONV && !c.down_attn[0]);
    ck_assert(c.up_resample[0] == DC_UNET_RESAMPLE_RESNET && c.act_fn == DC_UNET_GELU);
    ck_assert_int_eq(dc_unet_null_class(&c), -1); /* identity: embeddings, not labels */
    dc_unet_config_free(&c);

    parse_ok(
        &c, "{\"sample_size\": [24, 40], \"num_class_embeds\": 11, \"attention_head_dim\": null,"
            " \"resnet_time_scale_shift\": \"scale_shift\", \"act_fn\": \"swish\","
            " \"upsample_type\": null, \"an_unknown_key\": [1, 2], \"_diffusers_version\": \"9\"}");
    ck_assert(c.sample_size[0] == 24 && c.sample_size[1] == 40);
    ck_assert(c.num_class_embeds == 11 && dc_unet_null_class(&c) == 10);
    ck_assert(c.attention_head_dim == 0 && c.scale_shift);
    dc_unet_config_free(&c);
}
END_TEST

/* UNet2DModel's configs in the wild declare what diffusers declares. */
START_TEST(test_wild_configs) {
    FILE *fp = fopen(FIXTURES "unet_configs.json", "rb");
    ck_assert_ptr_nonnull(fp);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[n] = '\0';
    cJSON *root = cJSON_Parse(text);
    ck_assert_ptr_nonnull(root);
    int count = 0;
    for (const cJSON *e = root->child; e; e = e->next, count++) {
        char *json = cJSON_Print(cJSON_GetObjectItem(e, "config"));
        dc_unet_config c;
        parse_ok(&c, json);
        dc_params ps;
        dc_params_init(&ps);
        dc_unet m;
        ck_assert_msg(dc_unet_init(&m, &c, &ps) == 0, "%s: %s", e->string, dc_error());
        int64_t numel = 0;
        for (int i = 0; i < ps.n; i++)
            numel += ps.p[i]->value.numel;
        ck_assert_msg(ps.n == cJSON_GetObjectItem(e, "tensors")->valueint, "%s: %d tensors",
                      e->string, ps.n);
        ck_assert_msg(numel == (int64_t)cJSON_GetObjectItem(e, "numel")->valuedouble,
                      "%s: %lld elements", e->string, (long long)numel);
        dc_unet_free(&m);
        dc_params_free(&ps);
        dc_unet_config_free(&c);
        free(json);
    }
    ck_assert_int_eq(count, 4);
    cJSON_Delete(root);
}
END_TEST

START_TEST(test_config_save) {
    char in[256], out[256];
    fixture_path(in, sizeof in, "scale_shift", "config.json");
    snprintf(out, sizeof out, "/tmp/dc_test_unet_%d_%llu.json", (int)getpid(),
             (unsigned long long)(tu_next() % 1000000007u));
    dc_unet_config c;
    ck_assert_msg(dc_unet_config_load(&c, in) == 0, "%s", dc_error());
    ck_assert_int_eq(c.levels, 3);
    ck_assert(c.scale_shift && c.downsample_padding == 0 && !c.flip_sin_to_cos);
    ck_assert(c.sample_size[0] == 8 && c.sample_size[1] == 12);
    ck_assert_msg(dc_unet_config_save(&c, out) == 0, "%s", dc_error());
    dc_unet_config again;
    ck_assert_msg(dc_unet_config_load(&again, out) == 0, "%s", dc_error());
    ck_assert_str_eq(again.json, c.json); /* byte for byte */
    unlink(out);
    dc_unet_config_free(&again);
    dc_unet_config_free(&c);
    ck_assert_int_ne(dc_unet_config_load(&c, "/nonexistent/config.json"), 0);
    ck_assert_msg(strstr(dc_error(), "/nonexistent/config.json: cannot open"), "%s", dc_error());
    ck_assert_ptr_null(c.json);
}
END_TEST

START_TEST(test_bad_configs) {
    static const char *const cases[][2] = {
        {"{\"time_embedding_type\": \"learned\"}",
         "test.json: time_embedding_type \"learned\" is not supported (supported: \"positional\", "
         "\"fourier\")"},
        {"{\"time_embedding_type\": null}", "time_embedding_type null is not supported"},
        {"{\"class_embed_type\": \"projection\", \"num_class_embeds\": 4}",
         "class_embed_type \"projection\" is not supported (supported: null, \"timestep\", "
         "\"identity\")"},
        {"{\"upsample_type\": \"fir\"}", "upsample_type \"fir\" is not supported"},
        {"{\"downsample_type\": 2}", "downsample_type must be a string, got a number"},
        {"{\"act_fn\": \"relu\"}",
         "act_fn \"relu\" is not supported (supported: \"silu\", \"swish\", \"mish\", \"gelu\")"},
        {"{\"time_embedding_dim\": 0}", "time_embedding_dim 0 must be positive or null"},
        {"{\"resnet_time_scale_shift\": \"spatial\"}",
         "resnet_time_scale_shift \"spatial\" is not supported"},
        {"{\"_class_name\": \"UNet2DConditionModel\"}",
         "_class_name \"UNet2DConditionModel\" is not supported"},
        {"{\"mid_block_type\": \"UNetMidBlock2DCrossAttn\"}",
         "mid_block_type \"UNetMidBlock2DCrossAttn\""},
        {"{\"attention_legacy_order\": true}", "attention_legacy_order true is not supported"},
        {"{\"block_out_channels\": [32, 64], \"down_block_types\": [\"DownBlock2D\", "
         "\"CrossAttnDownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"]}",
         "down_block_types[1] \"CrossAttnDownBlock2D\" is not supported"},
        {"{\"block_out_channels\": [32, 64], \"down_block_types\": [\"DownBlock2D\", "
         "\"DownBlock2D\"], "
         "\"up_block_types\": [\"UpBlock2D\", \"SkipUpBlock2D\"]}",
         "up_block_types mixes Skip blocks with others (levels 0 and 1): the skip path needs a "
         "Skip block at every level or at none"},
        {"{\"block_out_channels\": [32, 64], \"down_block_types\": [\"DownBlock2D\", "
         "\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"]}",
         "up_block_types[1] \"CrossAttnUpBlock2D\" is not supported (supported: UpBlock2D, "
         "AttnUpBlock2D, ResnetUpsampleBlock2D, SkipUpBlock2D, AttnSkipUpBlock2D)"},
        {"{\"block_out_channels\": [32, 64], \"down_block_types\": [\"SkipDownBlock2D\", "
         "\"AttnSkipDownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"], "
         "\"in_channels\": 1}",
         "Skip blocks carry a 3-channel image (diffusers' skip_conv), but in_channels is 1"},
        {"{\"block_out_channels\": [32, 64], \"down_block_types\": [\"DownBlock2D\", "
         "\"DownBlock2D\", "
         "\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"]}",
         "down_block_types has 3 entries but block_out_channels has 2"},
        {"{\"block_out_channels\": [32, 64]}", "down_block_types is missing"},
        {"{\"block_out_channels\": [32, 48, 64, 96], \"norm_num_groups\": 32}",
         "block_out_channels[1] = 48 is not a positive multiple of norm_num_groups 32"},
        {"{\"block_out_channels\": [32, 32, 32, 32, 32, 32, 32, 32, 32]}",
         "block_out_channels has 9 entries"},
        {"{\"block_out_channels\": []}", "block_out_channels has 0 entries"},
        {"{\"block_out_channels\": 64}",
         "block_out_channels must be a list of integers, got a number"},
        {"{\"in_channels\": \"3\"}", "in_channels must be an integer, got a string"},
        {"{\"in_channels\": 2.5}", "in_channels must be an integer, got 2.5"},
        {"{\"out_channels\": 0}", "in_channels 3 and out_channels 0 must be positive"},
        {"{\"layers_per_block\": 0}", "layers_per_block 0 must be positive"},
        {"{\"flip_sin_to_cos\": 1}", "flip_sin_to_cos must be true or false, got a number"},
        {"{\"dropout\": 1.0}", "dropout 1 must be in [0, 1)"},
        {"{\"norm_eps\": 0}", "norm_eps 0 must be positive"},
        {"{\"downsample_padding\": 2}", "downsample_padding 2 is not supported (supported: 0, 1)"},
        {"{\"attention_head_dim\": 512}",
         "attention_head_dim 512 is larger than the 448 channels of down_blocks.1"},
        {"{\"attention_head_dim\": 0}", "attention_head_dim 0 must be positive or null"},
        {"{\"attn_norm_num_groups\": 5}",
         "attn_norm_num_groups 5 does not divide the mid block's 896 channels"},
        {"{\"num_class_embeds\": 0}", "num_class_embeds 0 must be positive or null"},
        {"{\"freq_shift\": 112}", "freq_shift 112 equals half of block_out_channels[0]"},
        {"{\"mid_block_scale_factor\": 0}", "mid_block_scale_factor 0 must be finite and nonzero"},
        {"{\"sample_size\": [32]}", "sample_size must be an integer or [height, width]"},
        {"{\"sample_size\": -1}", "sample_size [-1, -1] must not be negative"},
        {"{\"norm_num_groups\": null}",
         "norm_num_groups null needs Skip blocks on both paths (the others have no groups of their "
         "own)"},
        {"{\"norm_num_groups\": 0}", "norm_num_groups 0 must be positive or null"},
        {"{\"norm_num_groups\": \"4\"}", "norm_num_groups must be an integer, got a string"},
        /* plausible sizes (unet.h): just past each limit */
        {"{\"in_channels\": 16385}", "in_channels 16385 is implausibly large (diffc builds at most 16384)"},
        {"{\"out_channels\": 2000000000}", "out_channels 2000000000 is implausibly large"},
        {"{\"layers_per_block\": 33}", "layers_per_block 33 is implausibly large (diffc builds at most 32)"},
        {"{\"num_class_embeds\": 1048577}", "num_class_embeds 1048577 is implausibly large"},
        {"{\"sample_size\": [64, 65537]}", "sample_size 65537 is implausibly large"},
        {"{\"block_out_channels\": [32, 32, 32, 16416], \"norm_num_groups\": 32}",
         "block_out_channels 16416 is implausibly large"},
        {"[1, 2]", "test.json: a UNet config must be a JSON object, got an array"},
        {"{\"in_channels\": 3", "test.json:1:17: not valid JSON here"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dc_unet_config c;
        ck_assert_msg(dc_unet_config_parse(&c, cases[i][0], "test.json") != 0, "accepted %s",
                      cases[i][0]);
        ck_assert_msg(strstr(dc_error(), cases[i][1]), "%s: message \"%s\", want \"%s\"",
                      cases[i][0], dc_error(), cases[i][1]);
        ck_assert_ptr_null(c.json);
        dc_unet_config_free(&c);
    }
    /* at the limits: accepted */
    dc_unet_config c;
    parse_ok(&c, "{\"in_channels\": 16384, \"out_channels\": 16384, \"layers_per_block\": 32, "
                 "\"num_class_embeds\": 1048576, \"sample_size\": 65536, "
                 "\"block_out_channels\": [32, 32, 32, 16384], \"norm_num_groups\": 32}");
    dc_unet_config_free(&c);
    /* a config built in code goes through the same checks */
    parse_ok(&c, "{}");
    c.norm_num_groups = 5;
    dc_params ps;
    dc_params_init(&ps);
    dc_unet m;
    ck_assert_int_ne(dc_unet_init(&m, &c, &ps), 0);
    ck_assert_msg(strstr(dc_error(), "unet config: block_out_channels[0] = 224 is not a positive "
                                     "multiple of norm_num_groups 5"),
                  "%s", dc_error());
    ck_assert_int_eq(ps.n, 0);
    dc_params_free(&ps);
    dc_unet_config_free(&c);
}
END_TEST

/* ---- weights and inputs that do not fit ---- */

START_TEST(test_weights_that_do_not_fit) {
    char cfg_path[256], weights[256];
    fixture_path(cfg_path, sizeof cfg_path, "attn_class", "config.json");
    fixture_path(weights, sizeof weights, "attn_class", "diffusion_pytorch_model.safetensors");
    dc_unet_config c;
    ck_assert_msg(dc_unet_config_load(&c, cfg_path) == 0, "%s", dc_error());
    for (int k = 0; k < 3; k++) {
        dc_unet_config d = c;
        const char *want = NULL;
        if (k == 0) {
            d.in_channels = 4;
            want = "conv_in.weight: file has [8, 3, 3, 3], model expects [8, 4, 3, 3]";
        } else if (k == 1) {
            d.attention_head_dim = 0; /* one head: same shapes, loads fine */
        } else {
            d.num_class_embeds = 0;
            want = "class_embedding.weight: the model has no such parameter";
        }
        dc_params ps;
        dc_params_init(&ps);
        dc_unet m;
        ck_assert_msg(dc_unet_init(&m, &d, &ps) == 0, "%s", dc_error());
        ck_assert_msg(dc_params_alloc(&ps, 1) == 0, "%s", dc_error());
        int rc = dc_params_load(&ps, NULL, weights, dc_unet_rename);
        if (!want)
            ck_assert_msg(rc == 0, "%s", dc_error());
        else
            ck_assert_msg(rc != 0 && strstr(dc_error(), want), "%s", dc_error());
        dc_unet_free(&m);
        dc_params_free(&ps);
    }
    dc_unet_config_free(&c);
}
END_TEST

START_TEST(test_bad_inputs) {
    fixture f;
    fixture_open(&f, "attn_class");
    dc_ctx *ctx = tu_ctx();
    int32_t labels[3] = {0, 1, 5}; /* 5 is past the table */
    float steps[3] = {1, 2, 3};
    struct {
        int64_t x[4];
        int64_t nt;
        int64_t ny;
        const char *want;
    } cases[] = {
        {{3, 8, 8, 4}, 3, 3, "unet: x must be f32 [N, H, W, 3], got f32 [3, 8, 8, 4]"},
        {{3, 7, 8, 3}, 3, 3, "x is 7x8; with 2 levels height and width must be multiples of 2"},
        {{3, 8, 8, 3}, 2, 3, "timesteps must be f32 or i32 [3] (or [1]), got f32 [2]"},
        {{3, 8, 8, 3}, 3, 0, "class labels are required"},
        {{3, 8, 8, 3}, 3, 2, "class labels must be i32 [3], got i32 [2]"},
        {{3, 8, 8, 3}, 3, 3, "embedding: index 5 at position 2 is outside [0, 5)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dc_ctx_reset(ctx);
        dc_tensor *x = tu_randn(ctx, 4, cases[i].x);
        dc_tensor *t = dc_from_host(ctx, DC_F32, DC_SHAPE(cases[i].nt), steps);
        dc_tensor *y =
            cases[i].ny ? dc_from_host(ctx, DC_I32, DC_SHAPE(cases[i].ny), labels) : NULL;
        ck_assert_ptr_null(dc_unet_forward(ctx, &f.m, x, t, y));
        ck_assert_msg(strstr(dc_error(), cases[i].want), "case %zu: \"%s\", want \"%s\"", i,
                      dc_error(), cases[i].want);
        ck_assert_int_ne(dc_ctx_status(ctx), 0);
    }
    /* a NULL input (a failed op upstream) gives NULL */
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_unet_forward(ctx, &f.m, NULL, NULL, NULL));
    ck_assert_int_ne(dc_ctx_status(ctx), 0);
    tu_ctx_free(ctx);
    fixture_close(&f);

    fixture_open(&f, "legacy");
    ctx = tu_ctx();
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(1, 8, 8, 3));
    dc_tensor *t = dc_from_host(ctx, DC_F32, DC_SHAPE(1), steps);
    dc_tensor *y = dc_from_host(ctx, DC_I32, DC_SHAPE(1), labels);
    ck_assert_ptr_null(dc_unet_forward(ctx, &f.m, x, t, y));
    ck_assert_msg(strstr(dc_error(), "class labels given to a model without class embeddings"),
                  "%s", dc_error());
    tu_ctx_free(ctx);
    fixture_close(&f);

    /* identity: embeddings [N, T], not labels; timestep: labels of either type */
    fixture_open(&f, "gelu_identity");
    ctx = tu_ctx();
    x = tu_randn(ctx, DC_SHAPE(1, 8, 8, 3));
    t = dc_from_host(ctx, DC_F32, DC_SHAPE(1), steps);
    y = dc_from_host(ctx, DC_I32, DC_SHAPE(1), labels);
    ck_assert_ptr_null(dc_unet_forward(ctx, &f.m, x, t, y));
    ck_assert_msg(strstr(dc_error(), "class embeddings (class_embed_type \"identity\") must be f32 "
                                     "[1, 24], got i32 [1]"),
                  "%s", dc_error());
    dc_ctx_reset(ctx);
    x = tu_randn(ctx, DC_SHAPE(1, 8, 8, 3));
    t = dc_from_host(ctx, DC_F32, DC_SHAPE(1), steps);
    ck_assert_ptr_null(dc_unet_forward(ctx, &f.m, x, t, NULL));
    ck_assert_msg(strstr(dc_error(), "class-conditional (class_embed_type \"identity\")"), "%s",
                  dc_error());
    tu_ctx_free(ctx);
    fixture_close(&f);
    fixture_open(&f, "mish_resnet");
    ctx = tu_ctx();
    x = tu_randn(ctx, DC_SHAPE(1, 12, 8, 2));
    t = dc_from_host(ctx, DC_F32, DC_SHAPE(1), steps);
    ck_assert_msg(dc_unet_forward(ctx, &f.m, x, t, dc_from_host(ctx, DC_F32, DC_SHAPE(1), steps)),
                  "%s", dc_error());
    ck_assert_ptr_null(dc_unet_forward(ctx, &f.m, x, t, tu_randn(ctx, DC_SHAPE(1, 64))));
    ck_assert_msg(strstr(dc_error(), "class labels must be i32 or f32 [1], got f32 [1, 64]"), "%s",
                  dc_error());
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* ---- fresh random inputs ---- */

typedef struct {
    const dc_unet *m;
    dc_tensor *t, *y;
} net_arg;

static dc_tensor *net(dc_ctx *ctx, dc_tensor **in, void *arg) {
    const net_arg *a = arg;
    return dc_unet_forward(ctx, a->m, in[0], a->t, a->y);
}

static dc_tensor *random_labels(dc_ctx *ctx, int64_t n, int classes) {
    dc_tensor *y = dc_new(ctx, DC_I32, DC_SHAPE(n));
    for (int64_t i = 0; i < n; i++)
        ((int32_t *)y->data)[i] = (int32_t)(tu_next() % (uint64_t)classes);
    return y;
}

/* What the model of f takes as class labels: labels, embeddings or NULL. */
static dc_tensor *random_classes(dc_ctx *ctx, const fixture *f, int64_t n) {
    if (f->cfg.class_embed_type == DC_UNET_CLASS_IDENTITY)
        return tu_randn(ctx, DC_SHAPE(n, f->m.time_linear_2.weight->shape[0]));
    return dc_unet_null_class(&f->cfg) >= 0 ? random_labels(ctx, n, f->cfg.num_class_embeds) : NULL;
}

static dc_tensor *random_steps(dc_ctx *ctx, int64_t n) {
    dc_tensor *t = dc_new(ctx, DC_F32, DC_SHAPE(n));
    for (int64_t i = 0; i < n; i++)
        ((float *)t->data)[i] = (float)tu_uniform(0, 1000);
    return t;
}

/* Finite differences through the whole network, on random weights (norms
 * perturbed so their parameters matter) and inputs, for the input and one
 * parameter of each kind. attn_class: attention and class labels;
 * scale_shift with the padded downsampling; mish_resnet: resnet resampling,
 * timestep class embeddings; gelu_identity: identity class embeddings;
 * fourier_skip: the Skip blocks' FIR resampling and image path. */
START_TEST(test_gradcheck_random) {
    static const char *const probe[] = {
        "conv_in.weight",
        "time_embedding.linear_1.weight",
        "class_embedding.weight",
        "class_embedding.linear_1.weight",
        "down_blocks.0.downsamplers.0.conv1.weight",
        "up_blocks.1.upsamplers.0.norm1.bias",
        "down_blocks.0.resnet_down.conv_shortcut.weight",
        "up_blocks.0.skip_conv.weight",
        "up_blocks.0.skip_norm.bias",
        "mid_block.attentions.0.to_k.weight",
        "down_blocks.1.attentions.0.group_norm.bias",
        "mid_block.resnets.0.time_emb_proj.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "up_blocks.0.resnets.1.conv_shortcut.weight",
        "conv_norm_out.weight",
        "conv_out.bias",
    };
    static const char *const names[] = {"attn_class", "scale_shift", "mish_resnet",
                                        "gelu_identity", "fourier_skip"};
    const char *name = names[_i];
    fixture f;
    fixture_open(&f, name);
    for (int i = 0; i < f.ps.n; i++) { /* fresh weights; norms away from 1 and 0 */
        dc_param *p = f.ps.p[i];
        for (int64_t j = 0; j < p->value.numel; j++)
            ((float *)p->value.data)[j] =
                strstr(p->name, "norm")
                    ? (float)(0.3 * tu_normal() + (p->init == DC_INIT_ONES))
                    : (float)(0.5 * tu_normal() /
                              sqrt((double)(p->value.numel / p->value.shape[0])));
    }
    dc_ctx *ctx = tu_ctx();
    ctx->training = false;
    int64_t h = f.cfg.sample_size[0], w = f.cfg.sample_size[1];
    dc_tensor *in[1 + sizeof probe / sizeof *probe] = {
        tu_leaf(ctx, DC_SHAPE(2, h, w, f.cfg.in_channels))};
    int n_in = 1;
    for (size_t k = 0; k < sizeof probe / sizeof *probe; k++) {
        dc_param *p = dc_params_find(&f.ps, probe[k]);
        if (p)
            in[n_in++] = &p->value;
    }
    ck_assert_int_ge(n_in, 8);
    net_arg a = {&f.m, random_steps(ctx, 2), random_classes(ctx, &f, 2)};
    tu_gradcheck(ctx, net, &a, in, n_in, 1e-2, 1e-3, 1e-2, 8);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* Samples idx[0 .. k) of src (any dtype) as a batch of k. */
static dc_tensor *subset(dc_ctx *ctx, const dc_tensor *src, const int64_t *idx, int64_t k) {
    int64_t shape[DC_MAX_DIMS];
    memcpy(shape, src->shape, sizeof shape);
    shape[0] = k;
    dc_tensor *out = dc_new(ctx, src->dtype, src->ndim, shape);
    size_t per = (size_t)(src->numel / src->shape[0]) * dc_dtype_size(src->dtype);
    for (int64_t i = 0; i < k; i++)
        memcpy((char *)out->data + i * per, (const char *)src->data + idx[i] * per, per);
    return out;
}

static void assert_same(const float *got, const float *want, int64_t n, const char *what,
                        int64_t sample) {
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "%s: sample %lld element %lld: %.9g, in the batch of five %.9g",
                      what, (long long)sample, (long long)i, (double)got[i], (double)want[i]);
}

/* A sample's output does not depend on its batch, bit for bit, whatever
 * kernels run (the _avx2 and _baseline runs of this suite): each of five
 * samples alone and in a batch of three at another place, against the batch
 * of five; and one shared timestep [1] gives what the same timestep repeated
 * gives. 32 x 32 images cut the convolutions and the attention into several
 * chunks of work per sample. */
START_TEST(test_batch_invariance) {
    fixture f;
    fixture_open(&f, "attn_class");
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    ctx->training = false;
    const int64_t n = 5, hw = 32, c = 3, per = hw * hw * c, three[3] = {3, 0, 4};
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(n, hw, hw, c));
    dc_tensor *t = random_steps(ctx, n), *y = random_labels(ctx, n, 5);
    dc_tensor *all = dc_unet_forward(ctx, &f.m, x, t, y);
    dc_tensor *some = dc_unet_forward(ctx, &f.m, subset(ctx, x, three, 3), subset(ctx, t, three, 3),
                                      subset(ctx, y, three, 3));
    ck_assert_msg(all && some, "%s", dc_error());
    for (int64_t i = 0; i < 3; i++)
        assert_same((float *)some->data + i * per, (float *)all->data + three[i] * per, per,
                    "in a batch of three", three[i]);
    for (int64_t i = 0; i < n; i++) {
        dc_tensor *one = dc_unet_forward(ctx, &f.m, subset(ctx, x, &i, 1), subset(ctx, t, &i, 1),
                                         subset(ctx, y, &i, 1));
        ck_assert_msg(one != NULL, "%s", dc_error());
        assert_same(one->data, (float *)all->data + i * per, per, "alone", i);
    }
    float s = (float)tu_uniform(0, 1000), same[5] = {s, s, s, s, s};
    dc_tensor *shared =
        dc_unet_forward(ctx, &f.m, x, dc_from_host(ctx, DC_F32, DC_SHAPE(1), &s), y);
    dc_tensor *repeated =
        dc_unet_forward(ctx, &f.m, x, dc_from_host(ctx, DC_F32, DC_SHAPE(5), same), y);
    ck_assert_msg(shared && repeated, "%s", dc_error());
    assert_same(shared->data, repeated->data, shared->numel, "shared timestep", 0);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* Without a tape the forward gives each block's temporaries back as it
 * goes (dc_keep): the same bits as the recorded forward, in a fraction of
 * its memory. */
START_TEST(test_no_grad_memory) {
    fixture f;
    fixture_open(&f, "attn_class");
    dc_ctx *ctx = tu_ctx();
    ctx->training = false;
    const int64_t n = 3, hw = 32, c = 3;
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(n, hw, hw, c));
    dc_tensor *t = random_steps(ctx, n), *y = random_labels(ctx, n, 5);
    size_t mark = dc_mark(ctx);
    dc_tensor *taped = dc_unet_forward(ctx, &f.m, x, t, y);
    ck_assert_msg(taped && ctx->tape, "%s", dc_error());
    size_t taped_bytes = dc_mark(ctx) - mark;
    dc_set_grad_enabled(ctx, false);
    mark = dc_mark(ctx);
    dc_tensor *plain = dc_unet_forward(ctx, &f.m, x, t, y);
    ck_assert_msg(plain != NULL, "%s", dc_error());
    size_t plain_bytes = dc_mark(ctx) - mark;
    assert_same(plain->data, taped->data, plain->numel, "without a tape", 0);
    ck_assert_msg(plain_bytes * 3 < taped_bytes, "kept %zu bytes without a tape, %zu with one",
                  plain_bytes, taped_bytes);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* Dropout acts only in training, in exactly the resnets diffusers gives it to. */
START_TEST(test_dropout) {
    fixture f;
    fixture_open(&f, "attn_class");
    ck_assert(f.cfg.dropout > 0);
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    dc_tensor *x = ref_tensor(ctx, &f, "input.x");
    ctx->training = false;
    dc_tensor *eval = fixture_forward(ctx, &f, x);
    ck_assert_int_eq(ctx->rng_calls, 0);
    ctx->training = true;
    ctx->seed = tu_next();
    dc_tensor *train = fixture_forward(ctx, &f, x);
    const char *layers = dc_st_meta(&f.ref, "dropout_layers");
    ck_assert_ptr_nonnull(layers);
    ck_assert_int_eq(ctx->rng_calls, strtoull(layers, NULL, 10));
    int64_t differ = 0;
    for (int64_t i = 0; i < eval->numel; i++)
        differ += ((float *)eval->data)[i] != ((float *)train->data)[i];
    ck_assert_int_gt(differ, eval->numel / 2);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* ---- gradient checkpointing ---- */

/* One training step's results: the loss, the input's and every parameter's
 * gradient, and the activation bytes it held (dc_act_held) and peaked at. */
typedef struct {
    float loss, *dx, *dp;
    size_t held, peak, used; /* used: the arena's use once backward is done */
} step_result;

/* A training step (MSE against a random target) of x, t, y on a fresh
 * context with dropout seed `seed`, the gradients zeroed first. */
static step_result train_step(fixture *f, dc_ctx *ctx, const float *x, const float *t,
                              const int32_t *y, const float *target, int64_t n, int64_t hw,
                              uint64_t seed) {
    dc_ctx_reset(ctx);
    ctx->act.peak = 0;
    ctx->seed = seed;
    ck_assert_int_eq(dc_params_zero_grad(&f->ps), 0);
    int64_t c = f->cfg.in_channels;
    dc_tensor *xs = dc_from_host(ctx, DC_F32, DC_SHAPE(n, hw, hw, c), x);
    xs->requires_grad = true;
    dc_tensor *ys = y ? dc_from_host(ctx, DC_I32, DC_SHAPE(n), y) : NULL;
    dc_tensor *out = dc_unet_forward(ctx, &f->m, xs, dc_from_host(ctx, DC_F32, DC_SHAPE(n), t), ys);
    dc_tensor *want = out ? dc_from_host(ctx, DC_F32, out->ndim, out->shape, target) : NULL;
    dc_tensor *loss = dc_mse_loss(ctx, out, want, NULL);
    ck_assert_msg(loss && dc_backward(ctx, loss) == 0, "%s", dc_error());
    step_result r = {.loss = *(float *)loss->data, .held = dc_act_held(ctx), .peak = ctx->act.peak,
                     .used = ctx->act.used,
                     .dx = malloc(dc_tensor_bytes(xs)), .dp = malloc(f->ps.total * sizeof(float))};
    memcpy(r.dx, xs->grad->data, dc_tensor_bytes(xs));
    memcpy(r.dp, f->ps.grad, f->ps.total * sizeof(float));
    return r;
}

/* The name of the parameter at flat offset i, for messages. */
static const char *param_at(const fixture *f, size_t i) {
    for (int k = 0; k < f->ps.n; k++) {
        const dc_param *p = f->ps.p[k];
        size_t at = (size_t)((float *)p->grad.data - f->ps.grad);
        if (i >= at && i < at + (size_t)p->value.numel)
            return p->name;
    }
    return "padding";
}

/* enable_gradient_checkpointing(): the same loss and the same gradient of
 * the input and of every parameter, bit for bit (the recomputation runs the
 * same kernels on the same numbers in the same order, and dropout draws
 * the same masks: attn_class has dropout 0.1), for less memory. The step
 * holds at once (dc_act_held; measured, batch 2 at 32x32): attn_class 4.3
 * MB checkpointed against 13.2 MB, scale_shift 4.3 against 14.1,
 * mish_resnet 6.9 against 16.0, fourier_skip 32.1 against 49.0 (its image
 * path between the blocks is not checkpointed, as in diffusers). */
START_TEST(test_gradient_checkpointing) {
    static const char *const names[] = {"attn_class", "scale_shift", "mish_resnet", "fourier_skip"};
    fixture f;
    fixture_open(&f, names[_i]);
    const int64_t n = 2, hw = 32, c = f.cfg.in_channels, per = hw * hw * c;
    float *x = malloc(n * per * sizeof *x), *target = malloc(n * hw * hw * f.cfg.out_channels * sizeof *target);
    float t[2] = {(float)tu_uniform(1, 1000), (float)tu_uniform(1, 1000)};
    int32_t y[2];
    for (int64_t i = 0; i < n * per; i++)
        x[i] = (float)tu_normal();
    for (int64_t i = 0; i < n * hw * hw * f.cfg.out_channels; i++)
        target[i] = (float)tu_normal();
    for (int i = 0; i < 2; i++)
        y[i] = f.cfg.num_class_embeds ? (int32_t)(tu_next() % (uint64_t)f.cfg.num_class_embeds) : 0;
    const int32_t *labels = dc_unet_null_class(&f.cfg) >= 0 ? y : NULL;
    if (f.cfg.class_embed_type == DC_UNET_CLASS_IDENTITY)
        labels = NULL;
    uint64_t seed = tu_next();
    dc_ctx *ctx = tu_ctx();
    step_result plain = train_step(&f, ctx, x, t, labels, target, n, hw, seed);
    f.m.gradient_checkpointing = true;
    step_result ckpt = train_step(&f, ctx, x, t, labels, target, n, hw, seed);
    ck_assert_msg(ckpt.loss == plain.loss, "%s: loss %.9g checkpointed, %.9g plain", names[_i],
                  (double)ckpt.loss, (double)plain.loss);
    for (int64_t i = 0; i < n * per; i++)
        ck_assert_msg(ckpt.dx[i] == plain.dx[i], "%s: input gradient %lld: %.9g, plain %.9g", names[_i],
                      (long long)i, (double)ckpt.dx[i], (double)plain.dx[i]);
    size_t nonzero = 0;
    for (size_t i = 0; i < f.ps.total; i++) {
        ck_assert_msg(ckpt.dp[i] == plain.dp[i], "%s: %s gradient: %.9g, plain %.9g", names[_i],
                      param_at(&f, i), (double)ckpt.dp[i], (double)plain.dp[i]);
        nonzero += plain.dp[i] != 0;
    }
    ck_assert_uint_gt(nonzero, f.ps.extent / 2);
    /* what a step holds is the arena's end use without checkpoints; with
     * them the recomputation's high point is above it (train's memory check) */
    ck_assert_uint_eq(plain.held, plain.used);
    ck_assert_uint_gt(ckpt.held, ckpt.used);
    ck_assert_msg(ckpt.held * 10 < plain.held * 7 && ckpt.peak < plain.peak,
                  "%s: held %zu bytes checkpointed, %zu plain (peaks %zu, %zu)", names[_i], ckpt.held,
                  plain.held, ckpt.peak, plain.peak);
    free(plain.dx), free(plain.dp), free(ckpt.dx), free(ckpt.dp), free(x), free(target);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* Without a tape the flag changes nothing: the same bits as sampling always gave. */
START_TEST(test_gradient_checkpointing_no_grad) {
    fixture f;
    fixture_open(&f, "attn_class");
    dc_ctx *ctx = tu_ctx();
    ctx->training = false;
    dc_set_grad_enabled(ctx, false);
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(2, 16, 16, 3));
    dc_tensor *t = random_steps(ctx, 2), *y = random_labels(ctx, 2, 5);
    size_t mark = dc_mark(ctx);
    dc_tensor *plain = dc_unet_forward(ctx, &f.m, x, t, y);
    size_t plain_bytes = dc_mark(ctx) - mark;
    f.m.gradient_checkpointing = true;
    mark = dc_mark(ctx);
    dc_tensor *ckpt = dc_unet_forward(ctx, &f.m, x, t, y);
    ck_assert_msg(plain && ckpt, "%s", dc_error());
    ck_assert_uint_eq(dc_mark(ctx) - mark, plain_bytes);
    ck_assert_ptr_null(ctx->tape);
    assert_same(ckpt->data, plain->data, plain->numel, "checkpointed, without a tape", 0);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* dc_unet_find: a bare UNet folder, a pipeline's component, and what is missing. */
static void spill(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(fputs(text, f), 0);
    ck_assert_int_eq(fclose(f), 0);
}

START_TEST(test_find_files) {
    char dir[64], sub[96], want[160], *cfg, *weights;
    snprintf(dir, sizeof dir, "/tmp/dc_test_unet_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_int_eq(dc_unet_find(dir, "unet", NULL, &cfg, &weights, NULL), -1);
    ck_assert_msg(strstr(dc_error(), "no config.json"), "%s", dc_error());
    spill(dir, "config.json", "{}");
    spill(dir, "diffusion_pytorch_model.bin", "pickle");
    ck_assert_int_eq(dc_unet_find(dir, "unet", NULL, &cfg, &weights, NULL), -1);
    ck_assert_msg(strstr(dc_error(), "only PyTorch .bin weights"), "%s", dc_error());
    spill(dir, "diffusion_pytorch_model.safetensors", "x");
    ck_assert_int_eq(dc_unet_find(dir, "unet", NULL, &cfg, &weights, NULL), 0); /* a bare UNet folder */
    snprintf(want, sizeof want, "%s/config.json", dir);
    ck_assert_str_eq(cfg, want);
    free(cfg);
    free(weights);
    snprintf(sub, sizeof sub, "%s/unet_ema", dir); /* a component without weights */
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    spill(sub, "config.json", "{}");
    ck_assert_int_eq(dc_unet_find(dir, "unet_ema", NULL, &cfg, &weights, NULL), -1);
    ck_assert_msg(strstr(dc_error(), "unet_ema: no diffusion_pytorch_model.safetensors"), "%s", dc_error());
    spill(sub, "diffusion_pytorch_model.safetensors", "x");
    ck_assert_int_eq(dc_unet_find(dir, "unet_ema", NULL, &cfg, &weights, NULL), 0);
    snprintf(want, sizeof want, "%s/diffusion_pytorch_model.safetensors", sub);
    ck_assert_str_eq(weights, want);
    free(cfg);
    free(weights);
    const char *files[] = {"unet_ema/config.json", "unet_ema/diffusion_pytorch_model.safetensors", "unet_ema",
                           "config.json", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(want, sizeof want, "%s/%s", dir, files[i]);
        ck_assert_int_eq(remove(want), 0);
    }
    ck_assert_int_eq(dc_unet_find(dir, "unet", NULL, &cfg, &weights, NULL), -1);
    ck_assert_int_eq(rmdir(dir), 0);
    ck_assert_int_eq(dc_unet_find(dir, "unet", NULL, &cfg, &weights, NULL), -1);
    ck_assert_msg(strstr(dc_error(), "not a folder"), "%s", dc_error());
    ck_assert_ptr_null(cfg);
}
END_TEST

/* Weights by diffusers' names: variants, sharded indexes, and the folder's
 * only variant when the plain weights are absent. */
static void find_ok(const char *dir, const char *variant, const char *want_file, const char *want_guess) {
    char *cfg, *weights, *guessed, want[256];
    ck_assert_msg(dc_unet_find(dir, "unet", variant, &cfg, &weights, &guessed) == 0, "%s", dc_error());
    snprintf(want, sizeof want, "%s/%s", dir, want_file);
    ck_assert_str_eq(weights, want);
    if (want_guess)
        ck_assert_str_eq(guessed, want_guess);
    else
        ck_assert_ptr_null(guessed);
    free(cfg), free(weights), free(guessed);
}

static void find_fails(const char *dir, const char *variant, const char *want) {
    char *cfg, *weights, *guessed;
    ck_assert_int_eq(dc_unet_find(dir, "unet", variant, &cfg, &weights, &guessed), -1);
    ck_assert_msg(strstr(dc_error(), want), "\"%s\", want \"%s\"", dc_error(), want);
    ck_assert(!cfg && !weights && !guessed);
}

START_TEST(test_find_variants) {
    char dir[64], path[160];
    snprintf(dir, sizeof dir, "/tmp/dc_test_unet_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    spill(dir, "config.json", "{}");
    spill(dir, "diffusion_pytorch_model.fp16-00001-of-00002.safetensors", "x"); /* shards are no variant */
    spill(dir, "diffusion_pytorch_model.fp16.bin", "pickle");
    find_fails(dir, NULL, "no diffusion_pytorch_model.safetensors (a diffusers model folder");
    spill(dir, "diffusion_pytorch_model.fp16.safetensors", "x");
    find_ok(dir, NULL, "diffusion_pytorch_model.fp16.safetensors", "fp16");
    find_ok(dir, "fp16", "diffusion_pytorch_model.fp16.safetensors", NULL);
    spill(dir, "diffusion_pytorch_model.safetensors.index.ema.json", "{}");
    find_fails(dir, NULL, "no diffusion_pytorch_model.safetensors, but variants '");
    find_fails(dir, NULL, "'ema'");
    find_fails(dir, NULL, "'fp16'");
    find_ok(dir, "ema", "diffusion_pytorch_model.safetensors.index.ema.json", NULL);
    find_fails(dir, "bf16", "no variant 'bf16' (diffusion_pytorch_model.bf16.safetensors); variants here: ");
    find_fails(dir, "../x", "variant '../x': not a variant name");
    find_fails(dir, "", "variant '': not a variant name");
    spill(dir, "diffusion_pytorch_model.safetensors.index.json", "{}"); /* plain sharded weights first */
    find_ok(dir, NULL, "diffusion_pytorch_model.safetensors.index.json", NULL);
    spill(dir, "diffusion_pytorch_model.safetensors", "x"); /* then a single plain file first of all */
    find_ok(dir, NULL, "diffusion_pytorch_model.safetensors", NULL);
    const char *files[] = {"config.json", "diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
                           "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.fp16.safetensors",
                           "diffusion_pytorch_model.safetensors.index.ema.json",
                           "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        ck_assert_int_eq(remove(path), 0);
    }
    ck_assert_int_eq(rmdir(dir), 0);

    /* diffusers' own sharded fp16 variant, found without asking */
    find_ok(FIXTURES "unet_sharded_fp16", NULL, "diffusion_pytorch_model.safetensors.index.fp16.json", "fp16");

    char name_variant[16];
    ck_assert(dc_unet_weights_name("diffusion_pytorch_model.safetensors", name_variant, sizeof name_variant) &&
              !name_variant[0]);
    ck_assert(dc_unet_weights_name("diffusion_pytorch_model.safetensors.index.non_ema.json", name_variant,
                                   sizeof name_variant));
    ck_assert_str_eq(name_variant, "non_ema");
    ck_assert(!dc_unet_weights_name("diffusion_pytorch_model-00001-of-00002.safetensors", name_variant,
                                    sizeof name_variant));
    ck_assert(!dc_unet_weights_name("diffusion_pytorch_model..safetensors", name_variant, sizeof name_variant));
    ck_assert(!dc_unet_weights_name("model.safetensors", name_variant, sizeof name_variant));
}
END_TEST

int main(void) {
    Suite *s = suite_create("unet");
    TCase *tc = tu_tcase(s, "parity", 60);
    tcase_add_loop_test(tc, test_parity, 0, N_MODELS);
    tcase_add_test(tc, test_state_dict_names);
    tcase_add_test(tc, test_rename);
    tc = tu_tcase(s, "config", 30);
    tcase_add_test(tc, test_config_defaults);
    tcase_add_test(tc, test_wild_configs);
    tcase_add_test(tc, test_config_save);
    tcase_add_test(tc, test_bad_configs);
    tcase_add_test(tc, test_find_files);
    tcase_add_test(tc, test_find_variants);
    tc = tu_tcase(s, "errors", 30);
    tcase_add_test(tc, test_weights_that_do_not_fit);
    tcase_add_test(tc, test_bad_inputs);
    tc = tu_tcase(s, "random", 60);
    tcase_add_loop_test(tc, test_gradcheck_random, 0, 5);
    tcase_add_test(tc, test_batch_invariance);
    tcase_add_test(tc, test_no_grad_memory);
    tcase_add_test(tc, test_dropout);
    tcase_add_loop_test(tc, test_gradient_checkpointing, 0, 4);
    tcase_add_test(tc, test_gradient_checkpointing_no_grad);
    return tu_run(s);
}
