/* models/unet_cond: diffusers' UNet2DConditionModel. Tiny random-weight
 * models made by scripts/make_unet_cond_fixtures.py (tests/fixtures/unet_cond_*:
 * SD 1.x's and SD 2.x's layouts, f32, bf16 and sharded fp16 weights) are
 * loaded by dc_unet_cond_load and must give diffusers' output and the
 * gradients of the input, the text states and parameters of every kind
 * (the references are float64, so the tolerances measure our float32
 * error); SD 1.5's and 2.1's configs must declare as many parameters as
 * diffusers makes; bad configs, inputs and weight files are refused with
 * the key, value or file named; a sample gives the same bits alone as in a
 * batch. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/safetensors.h"
#include "models/unet_cond.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIXTURES "tests/fixtures/"

/* |ours - diffusers| <= TOL * max|diffusers|, every element of the output and
 * of every gradient (the input's, the text's, each saved parameter's).
 * Measured: every one below 1e-5 (1e-6 fails on a few gradients). */
#define TOL 1e-4

static const char *const models[] = {"sd1", "sd2", "tl2"};
#define N_MODELS 3

typedef struct {
    dc_unet_cond m;
    dc_params ps;
    dc_st_file ref; /* reference.safetensors */
} fixture;

static void fixture_open(fixture *f, const char *name) {
    char dir[256], path[300];
    snprintf(dir, sizeof dir, FIXTURES "unet_cond_%s", name);
    dc_params_init(&f->ps);
    ck_assert_msg(dc_unet_cond_load(&f->m, &f->ps, dir, NULL, DC_CPU, NULL) == 0, "%s", dc_error());
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    ck_assert_msg(dc_st_open(&f->ref, path) == 0, "%s", dc_error());
}

static void fixture_close(fixture *f) {
    dc_st_close(&f->ref);
    dc_unet_cond_free(&f->m);
    dc_params_free(&f->ps);
}

static const dc_st_tensor *ref_find(const fixture *f, const char *name) {
    const dc_st_tensor *t = dc_st_find(&f->ref, name);
    ck_assert_msg(t != NULL, "reference has no %s", name);
    return t;
}

static dc_tensor *ref_tensor(dc_ctx *ctx, const fixture *f, const char *name) {
    const dc_st_tensor *t = ref_find(f, name);
    ck_assert_msg(t->dtype == DC_F32 || t->dtype == DC_I32, "%s: dtype %s", name, t->dtype_name);
    dc_tensor *x = dc_from_host(ctx, (dc_dtype)t->dtype, t->ndim, t->shape, t->data);
    ck_assert_msg(x != NULL, "%s", dc_error());
    return x;
}

static void check_output(const fixture *f, const dc_tensor *out, const char *what) {
    const dc_st_tensor *want = ref_find(f, "output");
    ck_assert_msg(out != NULL, "%s: %s", what, dc_error());
    ck_assert_msg(want->ndim == 4 && out->ndim == 4 && want->nbytes == dc_tensor_bytes(out),
                  "%s: output shape", what);
    for (int d = 0; d < 4; d++)
        ck_assert_int_eq(out->shape[d], want->shape[d]);
    tu_check_close(out->data, want->data, out->numel, TOL, what);
}

/* ---- parity with diffusers ---- */

START_TEST(test_parity) {
    const char *name = models[_i];
    fixture f;
    fixture_open(&f, name);
    ck_assert_int_eq(f.ps.n, atoi(dc_st_meta(&f.ref, "tensors"))); /* the file's: none left over */
    dc_ctx *ctx = tu_ctx();
    ctx->training = false; /* the references are in eval mode */
    dc_tensor *x = ref_tensor(ctx, &f, "input.x"), *text = ref_tensor(ctx, &f, "input.text");
    x->requires_grad = text->requires_grad = true;
    dc_tensor *out = dc_unet_cond_forward(ctx, &f.m, x, ref_tensor(ctx, &f, "input.t"), text);
    char what[256];
    snprintf(what, sizeof what, "%s output", name);
    check_output(&f, out, what);

    ck_assert_msg(dc_backward_from(ctx, out, ref_tensor(ctx, &f, "input.r")) == 0, "%s", dc_error());
    snprintf(what, sizeof what, "%s grad.x", name);
    tu_check_close(x->grad->data, ref_find(&f, "grad.x")->data, x->numel, TOL, what);
    snprintf(what, sizeof what, "%s grad.text", name);
    tu_check_close(text->grad->data, ref_find(&f, "grad.text")->data, text->numel, TOL, what);
    int checked = 0;
    for (int i = 0; i < f.ref.n; i++) {
        const dc_st_tensor *t = &f.ref.tensors[i];
        if (strncmp(t->name, "grad.", 5) || !strcmp(t->name, "grad.x") || !strcmp(t->name, "grad.text"))
            continue;
        const dc_param *p = dc_params_find(&f.ps, t->name + 5);
        ck_assert_msg(p != NULL, "%s: the model has no parameter %s", name, t->name + 5);
        float *g = tu_ref_grad(t, p);
        snprintf(what, sizeof what, "%s %s", name, t->name);
        tu_check_close(p->grad.data, g, p->value.numel, TOL, what);
        free(g);
        checked++;
    }
    ck_assert_int_ge(checked, 30); /* each kind, in a shallow and a deep block */
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* Without a tape every block gives its temporaries back (dc_keep): the same
 * output from a fraction of the memory. */
START_TEST(test_no_grad) {
    fixture f;
    fixture_open(&f, "sd1");
    dc_ctx *ctx = tu_ctx();
    ctx->training = false;
    dc_tensor *x = ref_tensor(ctx, &f, "input.x"), *t = ref_tensor(ctx, &f, "input.t"),
              *text = ref_tensor(ctx, &f, "input.text");
    size_t start = ctx->act.used;
    dc_tensor *out = dc_unet_cond_forward(ctx, &f.m, x, t, text);
    check_output(&f, out, "sd1 output with a tape");
    size_t taped = ctx->act.used - start;
    dc_ctx_reset(ctx);
    dc_set_grad_enabled(ctx, false);
    x = ref_tensor(ctx, &f, "input.x"), t = ref_tensor(ctx, &f, "input.t");
    text = ref_tensor(ctx, &f, "input.text");
    start = ctx->act.used;
    out = dc_unet_cond_forward(ctx, &f.m, x, t, text);
    check_output(&f, out, "sd1 output without a tape");
    size_t kept = ctx->act.used - start;
    ck_assert_msg(kept * 4 < taped, "no-grad forward keeps %zu bytes, with a tape %zu", kept, taped);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* Sample i of x (any shape [N, ...]) as a batch of one. */
static dc_tensor *sample_of(dc_ctx *ctx, const dc_tensor *x, int64_t i) {
    int64_t shape[DC_MAX_DIMS], per = x->numel / x->shape[0];
    memcpy(shape, x->shape, sizeof shape);
    shape[0] = 1;
    return dc_from_host(ctx, x->dtype, x->ndim, shape, (const float *)x->data + i * per);
}

/* Every sample gives the same bits alone as in a batch (its own text and
 * timestep), as the engine promises; one shared timestep [1] is the same as
 * it repeated. */
START_TEST(test_batch_invariance) {
    fixture f;
    fixture_open(&f, "sd1");
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    ctx->training = false;
    const int64_t n = 3, hw = 16, per = hw * hw * 4;
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(n, hw, hw, 4)), *text = tu_randn(ctx, DC_SHAPE(n, 9, 32));
    float steps[3], s = (float)tu_uniform(0, 1000), same[3] = {s, s, s};
    for (int i = 0; i < 3; i++)
        steps[i] = (float)tu_uniform(0, 1000);
    dc_tensor *t = dc_from_host(ctx, DC_F32, DC_SHAPE(n), steps);
    dc_tensor *all = dc_unet_cond_forward(ctx, &f.m, x, t, text);
    ck_assert_msg(all != NULL, "%s", dc_error());
    for (int64_t i = 0; i < n; i++) {
        dc_tensor *one = dc_unet_cond_forward(ctx, &f.m, sample_of(ctx, x, i), sample_of(ctx, t, i),
                                              sample_of(ctx, text, i));
        ck_assert_msg(one != NULL, "%s", dc_error());
        ck_assert_msg(!memcmp(one->data, (float *)all->data + i * per, (size_t)per * sizeof(float)),
                      "sample %lld alone differs from it in the batch", (long long)i);
    }
    dc_tensor *shared = dc_unet_cond_forward(ctx, &f.m, x, dc_from_host(ctx, DC_F32, DC_SHAPE(1), &s), text);
    dc_tensor *repeated = dc_unet_cond_forward(ctx, &f.m, x, dc_from_host(ctx, DC_F32, DC_SHAPE(3), same), text);
    ck_assert_msg(shared && repeated, "%s", dc_error());
    ck_assert(!memcmp(shared->data, repeated->data, dc_tensor_bytes(shared)));
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* The text's keys and values made once, in a context of their own, give the
 * same output as the text states (every model: the cross-attentions are
 * taken in forward order), step after step; a set made for another model or
 * batch is refused. */
START_TEST(test_text_once) {
    const char *name = models[_i];
    fixture f;
    fixture_open(&f, name);
    dc_ctx *tctx = tu_ctx(), *ctx = tu_ctx();
    ctx->training = false;
    dc_set_grad_enabled(tctx, false);
    dc_set_grad_enabled(ctx, false);
    dc_unet_cond_text kv;
    ck_assert_msg(dc_unet_cond_text_init(tctx, &f.m, ref_tensor(tctx, &f, "input.text"), &kv) == 0,
                  "%s", dc_error());
    /* attentions x transformer_layers: sd1 1 down, 1 mid, 2 up; sd2 1 + 2 down, 1 mid,
     * 3 + 2 up; tl2 2 + 1 down, 1 x 2 + 2 x 2 up */
    ck_assert_int_eq(kv.n, strcmp(name, "sd1") ? 9 : 4);
    char what[128];
    for (int step = 0; step < 2; step++) {
        dc_ctx_reset(ctx);
        dc_tensor *x = ref_tensor(ctx, &f, "input.x"), *t = ref_tensor(ctx, &f, "input.t");
        snprintf(what, sizeof what, "%s output from the keys and values, step %d", name, step);
        check_output(&f, dc_unet_cond_forward_text(ctx, &f.m, x, t, &kv), what);
    }
    dc_ctx_reset(ctx);
    const dc_st_tensor *ref_x = ref_find(&f, "input.x");
    int64_t shape[4] = {1, ref_x->shape[1], ref_x->shape[2], ref_x->shape[3]}, one = 1;
    dc_tensor *x = tu_randn(ctx, 4, shape), *t = tu_randn(ctx, 1, &one);
    ck_assert_ptr_null(dc_unet_cond_forward_text(ctx, &f.m, x, t, &kv));
    ck_assert_msg(strstr(dc_error(), "a batch of 2; the model has"), "%s", dc_error());
    tu_ctx_free(ctx);
    tu_ctx_free(tctx);
    fixture_close(&f);
}
END_TEST

/* ---- gradient checkpointing ---- */

/* Every resnet's dropout set to p (the fixtures have none). */
static void set_dropout(dc_unet_cond *m, float p) {
    for (int i = 0; i <= 2 * m->cfg.levels; i++) {
        dc_unet_cond_block *b = i < m->cfg.levels ? &m->down[i] : i == m->cfg.levels ? &m->mid
                                                                  : &m->up[i - m->cfg.levels - 1];
        for (int j = 0; j < b->n_layers; j++)
            b->resnets[j].dropout = p;
    }
}

typedef struct {
    float loss, *grads[3]; /* x, text, parameters */
    size_t held;
} cond_step;

/* A training step (MSE against target) from fixed inputs, on a fresh context. */
static cond_step cond_train_step(fixture *f, dc_ctx *ctx, float *const host[4], const int64_t xs[4],
                                 const int64_t ts[3], uint64_t seed) {
    dc_ctx_reset(ctx);
    ctx->seed = seed;
    ck_assert_int_eq(dc_params_zero_grad(&f->ps), 0);
    dc_tensor *x = dc_from_host(ctx, DC_F32, 4, xs, host[0]), *text = dc_from_host(ctx, DC_F32, 3, ts, host[1]);
    x->requires_grad = text->requires_grad = true;
    dc_tensor *out = dc_unet_cond_forward(ctx, &f->m, x, dc_from_host(ctx, DC_F32, DC_SHAPE(xs[0]), host[2]), text);
    dc_tensor *loss = dc_mse_loss(ctx, out, out ? dc_from_host(ctx, DC_F32, 4, out->shape, host[3]) : NULL, NULL);
    ck_assert_msg(loss && dc_backward(ctx, loss) == 0, "%s", dc_error());
    cond_step r = {.loss = *(float *)loss->data, .held = dc_act_held(ctx)};
    const void *from[3] = {x->grad->data, text->grad->data, f->ps.grad};
    size_t bytes[3] = {dc_tensor_bytes(x), dc_tensor_bytes(text), f->ps.total * sizeof(float)};
    for (int k = 0; k < 3; k++)
        r.grads[k] = memcpy(malloc(bytes[k]), from[k], bytes[k]);
    return r;
}

/* Each resnet and transformer a checkpoint: the same loss and gradients
 * (input, text states, every parameter) bit for bit, sd1 with dropout 0.1
 * in every resnet, drawn again alike; less memory held (dc_act_held,
 * measured at batch 2, 16x16, 7 tokens: sd1 3.18 MB against 9.87, sd2 3.33
 * against 14.13, tl2 5.69 against 18.40). */
START_TEST(test_gradient_checkpointing) {
    const char *name = models[_i];
    fixture f;
    fixture_open(&f, name);
    if (_i == 0)
        set_dropout(&f.m, 0.1f);
    const int64_t width = ref_find(&f, "input.text")->shape[2];
    const int64_t xs[4] = {2, 16, 16, 4}, ts[3] = {2, 7, width};
    const int64_t n[4] = {2 * 16 * 16 * 4, 2 * 7 * width, 2, 2 * 16 * 16 * f.m.cfg.out_channels};
    float *host[4];
    for (int k = 0; k < 4; k++) {
        host[k] = malloc((size_t)n[k] * sizeof(float));
        for (int64_t i = 0; i < n[k]; i++)
            host[k][i] = k == 2 ? (float)tu_uniform(0, 1000) : (float)tu_normal();
    }
    uint64_t seed = tu_next();
    dc_ctx *ctx = tu_ctx();
    cond_step plain = cond_train_step(&f, ctx, host, xs, ts, seed);
    f.m.gradient_checkpointing = true;
    cond_step ckpt = cond_train_step(&f, ctx, host, xs, ts, seed);
    ck_assert_msg(ckpt.loss == plain.loss, "%s: loss %.9g, plain %.9g", name, (double)ckpt.loss, (double)plain.loss);
    static const char *const what[3] = {"x", "text", "parameter"};
    size_t count[3] = {(size_t)n[0], (size_t)n[1], f.ps.total};
    for (int k = 0; k < 3; k++) {
        for (size_t i = 0; i < count[k]; i++)
            ck_assert_msg(ckpt.grads[k][i] == plain.grads[k][i], "%s: %s gradient %zu: %.9g, plain %.9g", name,
                          what[k], i, (double)ckpt.grads[k][i], (double)plain.grads[k][i]);
        free(ckpt.grads[k]), free(plain.grads[k]);
    }
    ck_assert_msg(ckpt.held * 2 < plain.held, "%s: held %zu bytes checkpointed, %zu plain", name, ckpt.held,
                  plain.held);
    if (_i == 0) { /* the dropout acted: without it the loss differs */
        set_dropout(&f.m, 0.0f);
        cond_step none = cond_train_step(&f, ctx, host, xs, ts, seed);
        ck_assert(none.loss != plain.loss);
        for (int k = 0; k < 3; k++)
            free(none.grads[k]);
    }
    for (int k = 0; k < 4; k++)
        free(host[k]);
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* ---- configs ---- */

static void parse_ok(dc_unet_cond_config *c, const char *json) {
    ck_assert_msg(dc_unet_cond_config_parse(c, json, "test.json") == 0, "%s: %s", json, dc_error());
}

/* {} is SD 1.x's UNet with 1280-wide text; SD 2.1's per-level heads. */
START_TEST(test_config_defaults) {
    dc_unet_cond_config c;
    parse_ok(&c, "{}");
    ck_assert_int_eq(c.levels, 4);
    static const int ch[] = {320, 640, 1280, 1280};
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(c.block_out_channels[i], ch[i]);
        ck_assert(c.down_cross[i] == (i < 3) && c.up_cross[i] == (i > 0));
        ck_assert(c.heads[i] == 8 && c.layers_per_block[i] == 2 && c.transformer_layers[i] == 1 &&
                  c.cross_attention_dim[i] == 1280);
    }
    ck_assert(c.in_channels == 4 && c.out_channels == 4 && c.mid_block && c.flip_sin_to_cos &&
              !c.use_linear_projection && c.norm_num_groups == 32 && c.downsample_padding == 1);
    dc_unet_cond_config_free(&c);
    dc_unet_cond_config_free(&c); /* idempotent */
    parse_ok(&c, "{\"attention_head_dim\": [5, 10, 20, 20], \"use_linear_projection\": true, "
                 "\"upcast_attention\": true, \"transformer_layers_per_block\": [1, 2, 3, 4], "
                 "\"mid_block_type\": null, \"only_cross_attention\": [false, false, false, false], "
                 "\"addition_embed_type\": null, \"sample_size\": [96, 64], \"unknown_key\": 7, "
                 /* read by the SimpleCrossAttn blocks alone */
                 "\"cross_attention_norm\": \"group_norm\", \"mid_block_only_cross_attention\": true, "
                 "\"resnet_skip_time_act\": true, \"resnet_out_scale_factor\": 2.0}");
    static const int heads[] = {5, 10, 20, 20};
    for (int i = 0; i < 4; i++)
        ck_assert(c.heads[i] == heads[i] && c.transformer_layers[i] == i + 1);
    ck_assert(c.use_linear_projection && c.upcast_attention && !c.mid_block);
    ck_assert(c.sample_size[0] == 96 && c.sample_size[1] == 64);
    ck_assert_ptr_nonnull(strstr(c.json, "unknown_key"));
    dc_unet_cond_config_free(&c);
}
END_TEST

/* SD 1.5's and 2.1's configs declare every tensor and element diffusers makes. */
START_TEST(test_wild_configs) {
    char *text = tu_read_file(FIXTURES "unet_cond_configs.json", 1 << 20, NULL);
    cJSON *root = cJSON_Parse(text);
    ck_assert_ptr_nonnull(root);
    int n = 0;
    for (const cJSON *e = root->child; e; e = e->next, n++) {
        char *cfg = cJSON_PrintUnformatted(cJSON_GetObjectItem(e, "config"));
        dc_unet_cond_config c;
        parse_ok(&c, cfg);
        dc_params ps;
        dc_params_init(&ps);
        dc_unet_cond m;
        ck_assert_msg(dc_unet_cond_init(&m, &c, &ps) == 0, "%s: %s", e->string, dc_error());
        int64_t numel = 0;
        for (int i = 0; i < ps.n; i++)
            numel += ps.p[i]->value.numel;
        ck_assert_int_eq(ps.n, cJSON_GetObjectItem(e, "tensors")->valueint);
        ck_assert_int_eq(numel, (int64_t)cJSON_GetObjectItem(e, "numel")->valuedouble);
        dc_unet_cond_free(&m);
        dc_params_free(&ps);
        dc_unet_cond_config_free(&c);
        free(cfg);
    }
    ck_assert_int_eq(n, 3);
    cJSON_Delete(root);
    free(text);
}
END_TEST

START_TEST(test_bad_configs) {
    static const char *const cases[][2] = {
        {"{\"addition_embed_type\": \"text_time\"}",
         "test.json: addition_embed_type \"text_time\" (an SDXL UNet, with pooled text and size "
         "conditioning) is not supported (supported: null)"},
        {"{\"addition_embed_type\": \"text\"}", "addition_embed_type \"text\" is not supported"},
        {"{\"num_attention_heads\": 8}", "num_attention_heads 8 is not supported (supported: null)"},
        {"{\"class_embed_type\": \"timestep\"}", "class_embed_type \"timestep\" is not supported"},
        {"{\"num_class_embeds\": 1000}", "num_class_embeds 1000 is not supported (supported: null)"},
        {"{\"encoder_hid_dim\": 768}", "encoder_hid_dim 768 is not supported"},
        {"{\"time_cond_proj_dim\": 256}", "time_cond_proj_dim 256 is not supported"},
        {"{\"dual_cross_attention\": true}", "dual_cross_attention true is not supported (supported: false)"},
        {"{\"only_cross_attention\": true}", "only_cross_attention true is not supported"},
        {"{\"only_cross_attention\": [false, true, false, false]}",
         "only_cross_attention [false,true,false,false] is not supported"},
        {"{\"conv_in_kernel\": 1}", "conv_in_kernel 1 is not supported (supported: 3)"},
        {"{\"act_fn\": \"gelu\"}", "act_fn \"gelu\" is not supported (supported: \"silu\", \"swish\")"},
        {"{\"resnet_time_scale_shift\": \"scale_shift\"}",
         "resnet_time_scale_shift \"scale_shift\" is not supported"},
        {"{\"time_embedding_type\": \"fourier\"}", "time_embedding_type \"fourier\" is not supported"},
        {"{\"attention_type\": \"gated\"}", "attention_type \"gated\" is not supported"},
        {"{\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"}",
         "mid_block_type \"UNetMidBlock2DSimpleCrossAttn\" is not supported (supported: "
         "\"UNetMidBlock2DCrossAttn\", null)"},
        {"{\"_class_name\": \"UNet2DModel\"}", "_class_name \"UNet2DModel\" is not supported"},
        {"{\"block_out_channels\": [32, 64], \"down_block_types\": [\"CrossAttnDownBlock2D\", "
         "\"AttnDownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"]}",
         "down_block_types[1] \"AttnDownBlock2D\" is not supported (supported: "
         "CrossAttnDownBlock2D, DownBlock2D)"},
        {"{\"block_out_channels\": [32, 64], \"down_block_types\": [\"DownBlock2D\", "
         "\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\"]}",
         "up_block_types has 1 entries but block_out_channels has 2"},
        {"{\"block_out_channels\": [32, 64]}", "down_block_types is missing"},
        {"{\"attention_head_dim\": null}", "attention_head_dim null is not supported"},
        {"{\"attention_head_dim\": [5, 10, 20]}",
         "attention_head_dim has 3 entries but block_out_channels has 4"},
        {"{\"attention_head_dim\": 7}",
         "attention_head_dim[0] = 7 (the number of heads) does not divide the 320 channels of level 0"},
        {"{\"attention_head_dim\": \"8\"}",
         "attention_head_dim must be an integer or a list of 4 integers, got a string"},
        {"{\"layers_per_block\": [2, 2, 0, 2]}", "level 2: layers_per_block 0"},
        {"{\"layers_per_block\": 33}", "layers_per_block 33 is implausibly large (diffc builds at most 32)"},
        {"{\"transformer_layers_per_block\": [[1, 2], [1, 2], [1, 2], [1, 2]]}",
         "transformer_layers_per_block with a list per block (an asymmetric UNet) is not supported"},
        {"{\"transformer_layers_per_block\": 65}", "transformer_layers_per_block 65 is implausibly large"},
        {"{\"cross_attention_dim\": 16385}", "cross_attention_dim 16385 is implausibly large"},
        {"{\"cross_attention_dim\": [768, 768, 768, 2.5]}", "cross_attention_dim must be an integer, got 2.5"},
        {"{\"cross_attention_dim\": 0}", "cross_attention_dim 0 must be positive"},
        {"{\"block_out_channels\": [320, 640, 1280, 1290]}",
         "block_out_channels[3] = 1290 is not a positive multiple of norm_num_groups 32"},
        {"{\"block_out_channels\": [32, 32, 32, 16416]}", "block_out_channels 16416 is implausibly large"},
        {"{\"norm_num_groups\": null}", "norm_num_groups 0 is not supported"},
        {"{\"in_channels\": 16385}", "in_channels 16385 is implausibly large"},
        {"{\"out_channels\": 0}", "in_channels 4 and out_channels 0 must be positive"},
        {"{\"downsample_padding\": 2}", "downsample_padding 2 is not supported (supported: 0, 1)"},
        {"{\"dropout\": 1.0}", "dropout 1 must be in [0, 1)"},
        {"{\"norm_eps\": 0}", "norm_eps 0 must be positive"},
        {"{\"freq_shift\": 160}", "freq_shift 160 equals half of block_out_channels[0]"},
        {"{\"sample_size\": [64]}", "sample_size must be an integer or [height, width]"},
        {"[1, 2]", "test.json: a UNet config must be a JSON object, got an array"},
        {"{\"in_channels\": 4", "test.json:1:17: not valid JSON here"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dc_unet_cond_config c;
        ck_assert_msg(dc_unet_cond_config_parse(&c, cases[i][0], "test.json") != 0, "accepted %s",
                      cases[i][0]);
        ck_assert_msg(strstr(dc_error(), cases[i][1]), "%s: message \"%s\", want \"%s\"",
                      cases[i][0], dc_error(), cases[i][1]);
        ck_assert_ptr_null(c.json);
        dc_unet_cond_config_free(&c);
    }
    /* a config built in code goes through the same checks */
    dc_unet_cond_config c;
    parse_ok(&c, "{}");
    c.heads[2] = 0;
    dc_params ps;
    dc_params_init(&ps);
    dc_unet_cond m;
    ck_assert_int_ne(dc_unet_cond_init(&m, &c, &ps), 0);
    ck_assert_msg(strstr(dc_error(), "unet config: attention_head_dim[2] = 0"), "%s", dc_error());
    dc_params_free(&ps);
    dc_unet_cond_config_free(&c);
}
END_TEST

START_TEST(test_config_save) {
    char out[128];
    snprintf(out, sizeof out, "/tmp/dc_test_unet_cond_%d.json", (int)getpid());
    dc_unet_cond_config c, again;
    ck_assert_msg(dc_unet_cond_config_load(&c, FIXTURES "unet_cond_sd2/config.json") == 0, "%s",
                  dc_error());
    ck_assert_msg(dc_unet_cond_config_save(&c, out) == 0, "%s", dc_error());
    ck_assert_msg(dc_unet_cond_config_load(&again, out) == 0, "%s", dc_error());
    ck_assert_str_eq(again.json, c.json);
    ck_assert(again.heads[0] == 2 && again.heads[1] == 4 && again.layers_per_block[1] == 2);
    unlink(out);
    dc_unet_cond_config_free(&again);
    dc_unet_cond_config_free(&c);
    ck_assert_int_ne(dc_unet_cond_config_load(&c, "/nonexistent/config.json"), 0);
    ck_assert_ptr_nonnull(strstr(dc_error(), "/nonexistent/config.json: cannot open"));
}
END_TEST

/* ---- bad weights and inputs ---- */

/* A copy of fixture sd1 in a temporary folder with its weights cut to
 * `keep` bytes, or its config's `key` set to `value`. */
static const char *broken_copy(long keep, const char *key, const char *value) {
    tu_mkdtemp("unet_cond");
    char *cfg = tu_read_file(FIXTURES "unet_cond_sd1/config.json", 1 << 20, NULL);
    size_t n;
    char *w = tu_read_file(FIXTURES "unet_cond_sd1/diffusion_pytorch_model.safetensors", 1 << 24, &n);
    if (key) {
        cJSON *root = cJSON_Parse(cfg);
        cJSON_ReplaceItemInObject(root, key, cJSON_Parse(value));
        free(cfg);
        cfg = cJSON_Print(root);
        cJSON_Delete(root);
    }
    ck_assert_int_eq(dc_write_file(tu_path("config.json"), cfg, strlen(cfg), false), 0);
    ck_assert_int_eq(dc_write_file(tu_path("diffusion_pytorch_model.safetensors"), w,
                                   keep >= 0 && (size_t)keep < n ? (size_t)keep : n, false), 0);
    free(cfg);
    free(w);
    return tu_path("");
}

static void load_fails(const char *dir, const char *want) {
    dc_params ps;
    dc_params_init(&ps);
    dc_unet_cond m;
    ck_assert_int_ne(dc_unet_cond_load(&m, &ps, dir, NULL, DC_CPU, NULL), 0);
    ck_assert_msg(strstr(dc_error(), want), "message \"%s\", want \"%s\"", dc_error(), want);
    ck_assert_ptr_null(ps.data); /* refused before anything was allocated */
    dc_params_free(&ps);
    tu_rmtemp();
}

START_TEST(test_bad_weights) {
    load_fails(broken_copy(100000, NULL, NULL), "diffusion_pytorch_model.safetensors");
    load_fails(broken_copy(4, NULL, NULL), "diffusion_pytorch_model.safetensors");
    load_fails(broken_copy(-1, "cross_attention_dim", "24"),
               "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight: file has [8, 32], "
               "model expects [8, 24]");
    load_fails(broken_copy(-1, "use_linear_projection", "true"), "proj_in.weight");
    load_fails(broken_copy(-1, "block_out_channels", "[8, 16000]"), "file has");
    load_fails("/nonexistent", "/nonexistent: not a folder");
}
END_TEST

START_TEST(test_bad_inputs) {
    fixture f;
    fixture_open(&f, "sd1");
    dc_ctx *ctx = tu_ctx();
    static const struct {
        int64_t x[4], t, text[3];
        const char *want;
    } cases[] = {
        {{2, 8, 8, 3}, 2, {2, 7, 32}, "unet: x must be f32 [N, H, W, 4], got f32 [2, 8, 8, 3]"},
        {{2, 5, 8, 4}, 2, {2, 7, 32}, "x is 5x8; with 2 levels height and width must be multiples of 2"},
        {{2, 8, 8, 4}, 3, {2, 7, 32}, "timesteps must be f32 or i32 [2] (or [1]), got f32 [3]"},
        {{2, 8, 8, 4}, 2, {2, 7, 24}, "encoder_hidden_states must be f32 [2, L, 32], got f32 [2, 7, 24]"},
        {{2, 8, 8, 4}, 1, {1, 7, 32}, "encoder_hidden_states must be f32 [2, L, 32], got f32 [1, 7, 32]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dc_ctx_reset(ctx);
        dc_tensor *x = tu_randn(ctx, 4, cases[i].x), *t = tu_randn(ctx, 1, &cases[i].t);
        dc_tensor *text = tu_randn(ctx, 3, cases[i].text);
        ck_assert_ptr_null(dc_unet_cond_forward(ctx, &f.m, x, t, text));
        ck_assert_msg(strstr(dc_error(), cases[i].want), "message \"%s\", want \"%s\"", dc_error(),
                      cases[i].want);
    }
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_unet_cond_forward(ctx, &f.m, NULL, NULL, NULL));
    tu_ctx_free(ctx);
    fixture_close(&f);
}
END_TEST

/* A pipeline folder's unet/ is found, and a folder with only an fp16 variant
 * uses it and says which. */
START_TEST(test_folders) {
    tu_mkdtemp("unet_cond_pipe");
    ck_assert_int_eq(dc_mkdirs(tu_path("unet")), 0);
    static const char *const files[] = {"config.json", "diffusion_pytorch_model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char src[256], dst[256];
        size_t n;
        snprintf(src, sizeof src, FIXTURES "unet_cond_sd1/%s", files[i]);
        snprintf(dst, sizeof dst, "unet/%s", files[i]);
        char *data = tu_read_file(src, 1 << 24, &n);
        ck_assert_int_eq(dc_write_file(tu_path(dst), data, n, false), 0);
        free(data);
    }
    dc_params ps;
    dc_unet_cond m;
    char *guessed = NULL;
    dc_params_init(&ps);
    ck_assert_msg(dc_unet_cond_load(&m, &ps, tu_path(""), NULL, DC_CPU, &guessed) == 0, "%s", dc_error());
    ck_assert_ptr_null(guessed);
    ck_assert_int_eq(m.cfg.cross_attention_dim[0], 32);
    dc_unet_cond_free(&m);
    dc_params_free(&ps);
    tu_rmtemp();
    dc_params_init(&ps);
    ck_assert_msg(dc_unet_cond_load(&m, &ps, FIXTURES "unet_cond_tl2", NULL, DC_CPU, &guessed) == 0,
                  "%s", dc_error());
    ck_assert_ptr_nonnull(guessed);
    ck_assert_str_eq(guessed, "fp16");
    free(guessed);
    dc_unet_cond_free(&m);
    dc_params_free(&ps);
}
END_TEST

int main(void) {
    Suite *s = suite_create("unet_cond");
    TCase *tc = tu_tcase(s, "parity", 60);
    tcase_add_loop_test(tc, test_parity, 0, N_MODELS);
    tcase_add_test(tc, test_no_grad);
    tcase_add_loop_test(tc, test_text_once, 0, N_MODELS);
    tcase_add_test(tc, test_batch_invariance);
    tcase_add_loop_test(tc, test_gradient_checkpointing, 0, N_MODELS);
    tc = tu_tcase(s, "config", 30);
    tcase_add_test(tc, test_config_defaults);
    tcase_add_test(tc, test_wild_configs);
    tcase_add_test(tc, test_bad_configs);
    tcase_add_test(tc, test_config_save);
    tc = tu_tcase(s, "errors", 30);
    tcase_add_test(tc, test_folders);
    tcase_add_test(tc, test_bad_weights);
    tcase_add_test(tc, test_bad_inputs);
    return tu_run(s);
}
