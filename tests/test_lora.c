/*
 * Tests of LoRA (autograd/nn.h's dc_nn_lora, models/lora.c, `sample --lora`)
 * against diffusers + PEFT (scripts/make_lora_fixtures.py on the tiny
 * pipeline tests/fixtures/sd_tiny): a text-to-image run with a UNet and text
 * encoder LoRA at scale 0.7; one training step's loss and every lora_A /
 * lora_B gradient; the older key names; diffc's own files read back; the
 * finite-difference gradients of an adapted linear layer, the base frozen;
 * hostile and damaged files refused with one line.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "models/lora.h"
#include "pipeline/sd_pipeline.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "tests/fixtures/sd_tiny"
#define LORA "tests/fixtures/sd_tiny_lora"
#define LORA_FILE LORA "/" DC_LORA_WEIGHTS_FILE
#define LORA_OLD "tests/fixtures/sd_tiny_lora_old.safetensors"
#define STEP "tests/fixtures/lora_step"
#define SIDE 16
#define TOL 2e-4 /* of the largest magnitude, as test_sd_pipeline */
#define Q_MODULE "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"

static const dc_st_tensor *find(const dc_st_file *f, const char *name) {
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL, "no %s in the fixture", name);
    return t;
}

static dc_tensor *from_ref(dc_ctx *ctx, const dc_st_file *f, const char *name) {
    const dc_st_tensor *t = find(f, name);
    dc_tensor *x = dc_from_host(ctx, (dc_dtype)t->dtype, t->ndim, t->shape, t->data);
    ck_assert_msg(x != NULL, "%s", dc_error());
    return x;
}

typedef struct unet {
    dc_unet_cond m;
    dc_params ps;
} unet;

static void unet_load(unet *u) {
    dc_params_init(&u->ps);
    ck_assert_msg(dc_unet_cond_load(&u->m, &u->ps, MODEL, NULL, DC_CPU, NULL) == 0, "%s", dc_error());
}

static void unet_free(unet *u) {
    dc_unet_cond_free(&u->m);
    dc_params_free(&u->ps);
}

/* ---- the adapted linear layer ---- */

typedef struct {
    dc_nn_linear l;
} linear_arg;

static dc_tensor *adapted(dc_ctx *ctx, dc_tensor **in, void *arg) {
    linear_arg *a = arg;
    dc_nn_lora lora = {.A = in[1], .B = in[2], .scale = 1.5f};
    a->l.weight = in[3];
    a->l.bias = in[4];
    a->l.lora = &lora;
    return dc_nn_linear_forward(ctx, &a->l, in[0]);
}

/* y = W x + b + 1.5 B (A x): gradients of x, A and B by finite differences;
 * the frozen W and b get none. */
START_TEST(test_gradcheck) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[5] = {tu_leaf(ctx, DC_SHAPE(2, 3, 7)), tu_leaf(ctx, DC_SHAPE(3, 7)), tu_leaf(ctx, DC_SHAPE(5, 3)),
                        tu_randn(ctx, DC_SHAPE(5, 7)), tu_randn(ctx, DC_SHAPE(5))};
    linear_arg a;
    tu_gradcheck(ctx, adapted, &a, in, 5, 1e-2, 1e-3, 1e-2, 0);
    ck_assert_ptr_null(in[3]->grad);
    ck_assert_ptr_null(in[4]->grad);
    tu_ctx_free(ctx);
}
END_TEST

/* A fresh adapter is PEFT's: A within kaiming-uniform's bound 1/sqrt(in)
 * and not constant, B zero, so the model is unchanged; the base is frozen
 * and its gradient buffer given back. */
START_TEST(test_attach_init) {
    unet u;
    unet_load(&u);
    dc_ctx *ctx = tu_ctx();
    ctx->training = false;
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(1, 8, 8, 4)), *text = tu_randn(ctx, DC_SHAPE(1, 5, 32));
    float t = 500;
    dc_tensor *base = dc_unet_cond_forward(ctx, &u.m, x, dc_from_host(ctx, DC_F32, DC_SHAPE(1), &t), text);
    dc_lora l;
    ck_assert_msg(dc_lora_attach_unet(&l, &u.m, &u.ps, 4, 8, 11) == 0, "%s", dc_error());
    ck_assert_int_eq(l.n, 32); /* 2 transformer blocks x 2 attentions x 4 projections */
    ck_assert_int_eq(l.params->n, 64);
    ck_assert_ptr_null(u.ps.grad);
    for (int i = 0; i < l.n; i++) {
        const dc_tensor *A = l.layers[i].adapter.A, *B = l.layers[i].adapter.B;
        double bound = 1 / sqrt((double)A->shape[1]), lo = 1, hi = -1;
        for (int64_t k = 0; k < A->numel; k++) {
            float v = ((float *)A->data)[k];
            ck_assert(fabs(v) <= bound);
            lo = fmin(lo, v), hi = fmax(hi, v);
        }
        ck_assert(hi - lo > bound / 2);
        ck_assert(tu_max_abs(B->data, B->numel) == 0);
        ck_assert(l.layers[i].adapter.scale == 2.0f);
    }
    ck_assert_str_eq(l.layers[0].name, Q_MODULE);
    dc_tensor *same = dc_unet_cond_forward(ctx, &u.m, x, dc_from_host(ctx, DC_F32, DC_SHAPE(1), &t), text);
    ck_assert_msg(same != NULL, "%s", dc_error());
    ck_assert(memcmp(base->data, same->data, dc_tensor_bytes(base)) == 0);
    dc_lora_free(&l);
    ck_assert_int_ne(dc_lora_attach_unet(&l, &u.m, &u.ps, 0, 8, 11), 0);
    ck_assert_msg(strstr(dc_error(), "rank 0"), "%s", dc_error());
    ck_assert_ptr_null(u.m.down[0].attentions[0].blocks[0].attn1.q.lora); /* detached */
    tu_ctx_free(ctx);
    unet_free(&u);
}
END_TEST

/* ---- against diffusers + PEFT ---- */

/* One training step: the loss and every lora_A / lora_B gradient of the
 * PEFT-wrapped UNet, from the adapters of lora_step/ (B non-zero). */
START_TEST(test_step_matches_peft) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, STEP ".safetensors") == 0, "%s", dc_error());
    unet u;
    unet_load(&u);
    dc_lora l;
    ck_assert_msg(dc_lora_attach_unet(&l, &u.m, &u.ps, 4, 1, 3) == 0, "%s", dc_error());
    ck_assert_msg(dc_lora_load(&l, STEP) == 0, "%s", dc_error());
    ck_assert(l.layers[0].adapter.scale == 2.0f); /* the file's metadata: lora_alpha 8, not the attach's 1 */
    dc_ctx *ctx = tu_ctx();
    dc_tensor *pred = dc_unet_cond_forward(ctx, &u.m, from_ref(ctx, &f, "x"), from_ref(ctx, &f, "t"),
                                           from_ref(ctx, &f, "text"));
    dc_tensor *loss = dc_mse_loss(ctx, pred, from_ref(ctx, &f, "target"), NULL);
    ck_assert_msg(loss != NULL, "%s", dc_error());
    tu_check_close(loss->data, find(&f, "loss")->data, 1, 1e-5, "loss");
    ck_assert_msg(dc_params_zero_grad(l.params) == 0 && dc_backward(ctx, loss) == 0, "%s", dc_error());
    int checked = 0;
    for (int i = 0; i < l.params->n; i++) {
        const dc_param *p = l.params->p[i];
        char name[600];
        snprintf(name, sizeof name, "grad.%s", p->name);
        float *g = tu_ref_grad(find(&f, name), p);
        tu_check_close(p->grad.data, g, p->value.numel, TOL, name);
        free(g);
        checked++;
    }
    ck_assert_int_eq(checked, f.n - 5); /* every gradient of the fixture, A and B of 32 layers */
    for (int i = 0; i < u.ps.n; i++)
        ck_assert_ptr_null(u.ps.p[i]->value.grad);
    tu_ctx_free(ctx);
    dc_lora_free(&l);
    unet_free(&u);
    dc_st_close(&f);
}
END_TEST

/* load_lora_weights, then the pipeline with scale 0.7 from given latents:
 * the same images from dc_sd_load_lora (UNet and text encoder LoRA fused). */
START_TEST(test_pipeline_matches_diffusers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, MODEL "_lora_runs.safetensors") == 0, "%s", dc_error());
    cJSON *meta = cJSON_Parse(dc_st_meta(&f, "run"));
    ck_assert_ptr_nonnull(meta);
    const cJSON *prompts = cJSON_GetObjectItem(meta, "prompts");
    const char *texts[2] = {cJSON_GetArrayItem(prompts, 0)->valuestring, cJSON_GetArrayItem(prompts, 1)->valuestring};
    dc_sd_pipeline p;
    float scale = (float)cJSON_GetObjectItem(meta, "lora_scale")->valuedouble;
    ck_assert_msg(dc_sd_load_lora(&p, MODEL, NULL, DC_CPU, LORA, scale, false) == 0, "%s", dc_error());
    dc_sampler s;
    ck_assert_msg(dc_sd_sampler(&p, NULL, cJSON_GetObjectItem(meta, "steps")->valueint, &s) == 0, "%s", dc_error());
    dc_sd_request q = {.sampler = &s, .n = 2, .batch = 2, .h = SIDE, .w = SIDE, .prompts = texts,
                       .guidance_scale = (float)cJSON_GetObjectItem(meta, "guidance")->valuedouble,
                       .latents = find(&f, "latents")->data};
    int64_t numel = 2 * SIDE * SIDE * 3;
    float *out = malloc((size_t)numel * sizeof *out);
    dc_ctx *ctx = tu_ctx();
    ck_assert_msg(dc_sd_generate(ctx, &p, &q, out) == 0, "%s", dc_error());
    for (int64_t k = 0; k < numel; k++)
        out[k] = out[k] / 2 + 0.5f;
    tu_check_close(out, find(&f, "images")->data, numel, TOL, "images with the LoRA");
    /* the LoRA matters: without it (or at another scale) the images differ beyond the tolerance */
    dc_sd_free(&p);
    ck_assert_msg(dc_sd_load_lora(&p, MODEL, NULL, DC_CPU, LORA, 0.2f, false) == 0, "%s", dc_error());
    ck_assert_msg(dc_sd_generate(ctx, &p, &q, out) == 0, "%s", dc_error());
    double diff = 0;
    for (int64_t k = 0; k < numel; k++)
        diff = fmax(diff, fabs(out[k] / 2 + 0.5 - ((const float *)find(&f, "images")->data)[k]));
    ck_assert_msg(diff > 100 * TOL, "scale 0.2 differs by only %g", diff);
    tu_ctx_free(ctx);
    free(out);
    dc_sampler_free(&s);
    dc_sd_free(&p);
    cJSON_Delete(meta);
    dc_st_close(&f);
}
END_TEST

/* ---- the older names, and diffc's own files ---- */

typedef struct models {
    unet u;
    dc_clip_text *text;
} models;

static void models_load(models *m) {
    unet_load(&m->u);
    ck_assert_msg(dc_clip_text_load(&m->text, MODEL "/text_encoder", NULL, DC_CPU) == 0, "%s", dc_error());
}

static void models_free(models *m) {
    unet_free(&m->u);
    dc_clip_text_free(m->text);
}

static int fuse(models *m, const char *path, float scale) {
    return dc_lora_fuse(path, scale, &m->u.ps, &m->text->params, dc_clip_text_renamer(m->text));
}

static double max_diff(const dc_params *a, const dc_params *b) {
    double d = 0;
    for (size_t k = 0; k < a->total; k++)
        d = fmax(d, fabs((double)a->data[k] - b->data[k]));
    return d;
}

/* lora.down / lora.up, lora_linear_layer, processor to_q_lora and ".alpha"
 * keys fuse into the same weights as the PEFT file with its metadata. */
START_TEST(test_old_names) {
    models peft, old, plain;
    models_load(&peft);
    models_load(&old);
    models_load(&plain);
    ck_assert_msg(fuse(&peft, LORA, 1.3f) == 0, "%s", dc_error());
    ck_assert_msg(fuse(&old, LORA_OLD, 1.3f) == 0, "%s", dc_error());
    ck_assert(max_diff(&peft.u.ps, &old.u.ps) == 0);
    ck_assert(max_diff(&peft.text->params, &old.text->params) == 0);
    ck_assert(max_diff(&peft.u.ps, &plain.u.ps) > 1e-2);
    ck_assert(max_diff(&peft.text->params, &plain.text->params) > 1e-2);
    models_free(&peft);
    models_free(&old);
    models_free(&plain);
}
END_TEST

/* Fill the adapters' B with random values, so that they do something. */
static void randomize_b(dc_lora *l) {
    for (int i = 0; i < l->n; i++) {
        dc_tensor *B = l->layers[i].adapter.B;
        for (int64_t k = 0; k < B->numel; k++)
            ((float *)B->data)[k] = (float)(0.2 * tu_normal());
    }
}

static dc_tensor *run_unet(dc_ctx *ctx, unet *u, dc_tensor *x, dc_tensor *t, dc_tensor *text) {
    dc_tensor *out = dc_unet_cond_forward(ctx, &u->m, x, t, text);
    ck_assert_msg(out != NULL, "%s", dc_error());
    return out;
}

/* The developer check of scripts/make_lora_fixtures.py --check: the LoRA and
 * what diffc's UNet made with it, in DIR. */
static void write_check(const dc_lora *l, const char *dir, dc_tensor **io) {
    static const char *const names[] = {"x", "t", "text", "out"};
    dc_st_tensor ts[4];
    for (int k = 0; k < 4; k++) {
        ts[k] = (dc_st_tensor){.name = (char *)names[k], .dtype = DC_F32, .elem_size = 4, .ndim = io[k]->ndim,
                               .data = io[k]->data, .nbytes = dc_tensor_bytes(io[k])};
        snprintf(ts[k].dtype_name, sizeof ts[k].dtype_name, "F32");
        memcpy(ts[k].shape, io[k]->shape, sizeof io[k]->shape);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/unet_check.safetensors", dir);
    ck_assert_msg(dc_lora_save(l, dir) == 0 && dc_st_write(path, ts, 4, NULL, NULL, 0) == 0, "%s", dc_error());
}

/* Saved in diffusers' names and metadata; read back by dc_lora_load into
 * other adapters, and fused into a plain UNet: the same output. */
START_TEST(test_save_load_fuse) {
    tu_mkdtemp("lora");
    unet a, b, c;
    unet_load(&a);
    unet_load(&b);
    unet_load(&c);
    dc_lora la, lb;
    ck_assert_msg(dc_lora_attach_unet(&la, &a.m, &a.ps, 3, 5, 1) == 0, "%s", dc_error());
    ck_assert_msg(dc_lora_attach_unet(&lb, &b.m, &b.ps, 3, 1, 2) == 0, "%s", dc_error());
    randomize_b(&la);
    ck_assert_msg(dc_lora_save(&la, tu_path("out")) == 0, "%s", dc_error());

    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, tu_path("out/" DC_LORA_WEIGHTS_FILE)) == 0, "%s", dc_error());
    const dc_st_tensor *A = find(&f, "unet." Q_MODULE ".lora_A.weight"), *B = find(&f, "unet." Q_MODULE ".lora_B.weight");
    ck_assert(A->ndim == 2 && A->shape[0] == 3 && A->shape[1] == 16 && B->shape[0] == 16 && B->shape[1] == 3);
    ck_assert_str_eq(dc_st_meta(&f, "format"), "pt");
    cJSON *meta = cJSON_Parse(dc_st_meta(&f, "lora_adapter_metadata"));
    ck_assert_int_eq(cJSON_GetObjectItem(meta, "unet.r")->valueint, 3);
    ck_assert(cJSON_GetObjectItem(meta, "unet.lora_alpha")->valuedouble == 5);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(meta, "unet.target_modules")), 4);
    cJSON_Delete(meta);
    ck_assert_int_eq(f.n, 64);
    dc_st_close(&f);

    ck_assert_msg(dc_lora_load(&lb, tu_path("out")) == 0, "%s", dc_error());
    ck_assert_msg(dc_lora_fuse(tu_path("out"), 1.0f, &c.ps, NULL, NULL) == 0, "%s", dc_error());
    dc_ctx *ctx = tu_ctx();
    ctx->training = false;
    float steps[2] = {20, 700};
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(2, 8, 8, 4)), *t = dc_from_host(ctx, DC_F32, DC_SHAPE(2), steps),
              *text = tu_randn(ctx, DC_SHAPE(2, 6, 32));
    dc_tensor *ya = run_unet(ctx, &a, x, t, text), *yb = run_unet(ctx, &b, x, t, text),
              *yc = run_unet(ctx, &c, x, t, text);
    ck_assert(memcmp(ya->data, yb->data, dc_tensor_bytes(ya)) == 0);
    tu_check_close(yc->data, ya->data, ya->numel, 1e-5, "fused");
    const char *dir = getenv("DC_LORA_CHECK_DIR");
    if (dir)
        write_check(&la, dir, (dc_tensor *[]){x, t, text, ya});
    tu_ctx_free(ctx);
    dc_lora_free(&la);
    dc_lora_free(&lb);
    unet_free(&a);
    unet_free(&b);
    unet_free(&c);
    tu_rmtemp();
}
END_TEST

/* ---- hostile files ---- */

typedef struct key {
    const char *name;
    int ndim;
    int64_t shape[4];
} key;

/* A LoRA file of the given keys, random f32 values. */
static void write_keys(const char *path, const key *keys, int n, const char *meta) {
    dc_st_tensor ts[8] = {0};
    float *data[8] = {0};
    for (int k = 0; k < n; k++) {
        int64_t numel = 1;
        for (int d = 0; d < keys[k].ndim; d++)
            numel *= keys[k].shape[d];
        data[k] = malloc((size_t)numel * sizeof(float) + 4);
        for (int64_t j = 0; j < numel; j++)
            data[k][j] = (float)tu_normal();
        ts[k] = (dc_st_tensor){.name = (char *)keys[k].name, .dtype = DC_F32, .elem_size = 4,
                               .ndim = keys[k].ndim, .data = data[k], .nbytes = (size_t)numel * 4};
        snprintf(ts[k].dtype_name, sizeof ts[k].dtype_name, "F32");
        memcpy(ts[k].shape, keys[k].shape, sizeof keys[k].shape);
    }
    const char *mk[] = {"lora_adapter_metadata"};
    ck_assert_msg(dc_st_write(path, ts, n, mk, &meta, meta ? 1 : 0) == 0, "%s", dc_error());
    for (int k = 0; k < n; k++)
        free(data[k]);
}

#define QA "unet." Q_MODULE ".lora_A.weight"
#define QB "unet." Q_MODULE ".lora_B.weight"

static double checksum(const dc_params *ps) {
    double s = 0;
    for (size_t k = 0; k < ps->total; k++)
        s += ps->data[k] * (double)(k % 7 + 1);
    return s;
}

START_TEST(test_hostile_files) {
    static const struct {
        key keys[3];
        int n;
        const char *meta, *want;
    } bad[] = {
        {{{QA, 2, {4, 16}}}, 1, NULL, "has no lora_B"},
        {{{QB, 2, {16, 4}}}, 1, NULL, "has no lora_A"},
        {{{QA, 2, {4, 17}}, {QB, 2, {16, 4}}}, 2, NULL, "maps 17 to 16 features"},
        {{{QA, 2, {4, 16}}, {QB, 2, {12, 4}}}, 2, NULL, "maps 16 to 12 features"},
        {{{QA, 2, {4, 16}}, {QB, 2, {16, 2}}}, 2, NULL, "rank 2, but"},
        {{{QA, 4, {4, 16, 1, 1}}, {QB, 4, {16, 4, 1, 1}}}, 2, NULL, "4-D adapter"},
        {{{QA, 2, {4, 16}}, {QB, 2, {16, 4}}, {"unet." Q_MODULE ".alpha", 1, {3}}}, 3, NULL, "one finite number"},
        {{{"unet.conv_in.lora_A.weight", 2, {4, 4}}, {"unet.conv_in.lora_B.weight", 2, {16, 4}}}, 2, NULL,
         "conv_in is not a linear layer"},
        {{{"unet.nowhere.to_q.lora_A.weight", 2, {4, 16}}, {"unet.nowhere.to_q.lora_B.weight", 2, {16, 4}}}, 2,
         NULL, "no layer nowhere.to_q"},
        {{{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", 2, {4, 16}}}, 1, NULL, "kohya-style"},
        {{{"unet." Q_MODULE ".lora_magnitude_vector", 1, {16}}}, 1, NULL, "lora_magnitude_vector: not a LoRA"},
        {{{"unet.down\n\tblocks.lora_up", 1, {16}}}, 1, NULL, "unet.down??blocks.lora_up: not a LoRA"},
        {{{QA, 2, {4, 16}}, {QB, 2, {16, 4}}}, 2, "{\"unet.use_dora\": true}", "unet.use_dora"},
        {{{QA, 2, {4, 16}}, {QB, 2, {16, 4}}}, 2, "[1,", "not a JSON object"},
        {{{QA, 2, {4, 16}}, {QB, 2, {16, 4}}}, 2, "{\"unet.lora_alpha\": -1}", "not a positive number"},
        {{{"text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight", 2, {4, 32}},
          {"text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight", 2, {32, 4}}},
         2, NULL, "no text encoder to fuse it into"},
    };
    tu_mkdtemp("lora");
    unet u;
    unet_load(&u);
    double before = checksum(&u.ps);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_keys(tu_path("bad.safetensors"), bad[i].keys, bad[i].n, bad[i].meta);
        ck_assert_int_eq(dc_lora_fuse(tu_path("bad.safetensors"), 1, &u.ps, NULL, NULL), -1);
        ck_assert_msg(strstr(dc_error(), bad[i].want) && !strchr(dc_error(), '\n'), "case %zu: %s", i, dc_error());
    }
    ck_assert(checksum(&u.ps) == before); /* nothing written by a refused file */

    /* a good module beside a bad one: refused before the good one is fused */
    key half[] = {{QA, 2, {4, 16}}, {QB, 2, {16, 4}}, {"unet.up_blocks.1.x.lora_A.weight", 2, {4, 16}}};
    write_keys(tu_path("bad.safetensors"), half, 3, NULL);
    ck_assert_int_eq(dc_lora_fuse(tu_path("bad.safetensors"), 1, &u.ps, NULL, NULL), -1);
    ck_assert(checksum(&u.ps) == before);

    /* into attached adapters: another rank, or a module missing */
    dc_lora l;
    ck_assert_msg(dc_lora_attach_unet(&l, &u.m, &u.ps, 2, 2, 1) == 0, "%s", dc_error());
    ck_assert_int_eq(dc_lora_load(&l, STEP), -1);
    ck_assert_msg(strstr(dc_error(), "the adapter has rank 2"), "%s", dc_error());
    write_keys(tu_path("one.safetensors"), (key[]){{QA, 2, {2, 16}}, {QB, 2, {16, 2}}}, 2, NULL);
    ck_assert_int_eq(dc_lora_load(&l, tu_path("one.safetensors")), -1);
    ck_assert_msg(strstr(dc_error(), "adapts 1 layers; the model has adapters on 32"), "%s", dc_error());
    ck_assert_int_eq(dc_lora_fuse(tu_path("missing"), 1, &u.ps, NULL, NULL), -1);
    dc_lora_free(&l);
    unet_free(&u);
    tu_rmtemp();
}
END_TEST

/* The fixture cut short at every length class and with bytes flipped: an
 * error or a fused model, never a crash. */
START_TEST(test_damaged_files) {
    tu_mkdtemp("lora");
    size_t n;
    char *data = tu_read_file(LORA_FILE, 1 << 24, &n);
    models m;
    models_load(&m);
    int refused = 0, runs = 0;
    for (size_t cut = 0; cut < n; cut += 1 + cut / 3, runs++) {
        tu_write_file("cut.safetensors", data, cut);
        refused += fuse(&m, tu_path("cut.safetensors"), 1) != 0;
    }
    ck_assert_int_eq(refused, runs); /* every truncation is refused */
    char *copy = malloc(n);
    for (int round = 0; round < 200; round++) {
        memcpy(copy, data, n);
        for (int k = 0; k < 4; k++)
            copy[tu_next() % (round % 2 ? n : 512)] ^= (char)(1 + tu_next() % 255); /* even rounds: the header */
        tu_write_file("flip.safetensors", copy, n);
        if (fuse(&m, tu_path("flip.safetensors"), 1))
            ck_assert_msg(!strchr(dc_error(), '\n') && strlen(dc_error()) > 0, "%s", dc_error());
    }
    free(copy);
    free(data);
    models_free(&m);
    tu_rmtemp();
}
END_TEST

/* ---- the command ---- */

#define SAMPLE(...) tu_run_diffc((const char *const[]){"sample", __VA_ARGS__, NULL})

START_TEST(test_command) {
    tu_mkdtemp("lora");
    tu_run_result *r = SAMPLE("--model", MODEL, "--prompt", "a red cube", "--num-inference-steps", "2", "--lora",
                              LORA, "--lora-scale", "0.7", "--output-dir", tu_path("with"));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    r = SAMPLE("--model", MODEL, "--prompt", "a red cube", "--num-inference-steps", "2", "--output-dir",
               tu_path("without"));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    size_t a, b;
    char *with = tu_read_file(tu_path("with/00000.png"), 1 << 20, &a),
         *without = tu_read_file(tu_path("without/00000.png"), 1 << 20, &b);
    ck_assert(a != b || memcmp(with, without, a) != 0);
    free(with);
    free(without);
    tu_write_file("bad.safetensors", "\x08\0\0\0\0\0\0\0{}      ", 16);
    tu_assert_user_error(SAMPLE("--model", MODEL, "--prompt", "x", "--lora", tu_path("bad.safetensors"),
                                "--output-dir", tu_path("o")),
                         "holds no LoRA weights");
    tu_assert_user_error(SAMPLE("--model", "tests/fixtures/unet_legacy", "--lora", LORA, "--output-dir", tu_path("o")),
                         "--lora: tests/fixtures/unet_legacy is not a text-to-image pipeline");
    tu_rmtemp();
}
END_TEST

int main(void) {
    Suite *s = suite_create("lora");
    TCase *tc = tu_tcase(s, "layer", 60);
    tcase_add_test(tc, test_gradcheck);
    tcase_add_test(tc, test_attach_init);
    tc = tu_tcase(s, "diffusers", 120);
    tcase_add_test(tc, test_step_matches_peft);
    tcase_add_test(tc, test_pipeline_matches_diffusers);
    tc = tu_tcase(s, "files", 120);
    tcase_add_test(tc, test_old_names);
    tcase_add_test(tc, test_save_load_fuse);
    tcase_add_test(tc, test_hostile_files);
    tcase_add_test(tc, test_damaged_files);
    tc = tu_tcase(s, "command", 120);
    tcase_add_test(tc, test_command);
    return tu_run(s);
}
