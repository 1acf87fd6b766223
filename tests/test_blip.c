/* models/blip: transformers' BlipForConditionalGeneration. Tiny random-weight
 * models made by scripts/make_blip_fixtures.py (tests/fixtures/blip/: f32
 * tied, f16, sharded untied) are loaded from their folders and must give
 * transformers' vision output and logits (within 1e-4 of the largest) and
 * its greedy ids exactly, through the incremental decoder. Fresh random
 * inputs check what needs no reference: the decoder's steps (a prompt of
 * several tokens, then one at a time, rows sharing their image) give the
 * whole-sequence logits; reorder moves rows' histories; bad configs, folders,
 * weights and arguments are refused with a message. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/safetensors.h"
#include "models/blip.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURES "tests/fixtures/blip/"
/* |ours - transformers| <= TOL * max|transformers|, every element. */
#define TOL 1e-4

static const char *const models[] = {"tiny", "wide", "sharded"};
#define N_MODELS 3

static dc_blip *load(const char *name) {
    char dir[256];
    snprintf(dir, sizeof dir, FIXTURES "%s", name);
    dc_blip *m;
    ck_assert_msg(dc_blip_load(&m, dir, DC_CPU) == 0, "%s: %s", name, dc_error());
    return m;
}

static const dc_st_tensor *ref_find(const dc_st_file *f, const char *name) {
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL, "reference has no %s", name);
    return t;
}

static dc_tensor *ref_tensor(dc_ctx *ctx, const dc_st_file *f, const char *name) {
    const dc_st_tensor *t = ref_find(f, name);
    dc_tensor *x = dc_from_host(ctx, (dc_dtype)t->dtype, t->ndim, t->shape, t->data);
    ck_assert_msg(x != NULL, "%s", dc_error());
    return x;
}

static int32_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return (int32_t)best;
}

/* generate(num_beams=1, do_sample=False) through the decoder: bos, then the
 * top token of each row until it gives sep (pad after), max_len tokens or
 * every row done. The ids [rows, max_len] and the length reached. */
static int64_t greedy(const dc_blip *m, const dc_tensor *image_embeds, int64_t max_len,
                      int32_t *out) {
    const dc_blip_text_config *t = &m->cfg.text;
    int64_t rows = image_embeds->shape[0], v = t->vocab_size, len = 1;
    dc_blip_decoder *d;
    ck_assert_msg(dc_blip_decoder_init(&d, m, image_embeds, 1, max_len) == 0, "%s", dc_error());
    float *logits = malloc((size_t)(rows * v) * sizeof *logits);
    int32_t *next = malloc((size_t)rows * sizeof *next);
    bool *done = calloc((size_t)rows, sizeof *done);
    for (int64_t r = 0; r < rows; r++)
        next[r] = out[r * max_len] = t->bos_token_id;
    bool all = false;
    for (; len < max_len && !all; len++) {
        ck_assert_msg(dc_blip_decoder_step(d, next, 1, logits) == 0, "%s", dc_error());
        all = true;
        for (int64_t r = 0; r < rows; r++) {
            next[r] = done[r] ? t->pad_token_id : argmax(logits + r * v, v);
            out[r * max_len + len] = next[r];
            done[r] = done[r] || next[r] == t->sep_token_id;
            all = all && done[r];
        }
    }
    free(logits);
    free(next);
    free(done);
    dc_blip_decoder_free(d);
    return len;
}

static void check_fixture(const char *name) {
    dc_blip *m = load(name);
    char path[256];
    snprintf(path, sizeof path, FIXTURES "%s/reference.safetensors", name);
    dc_st_file ref;
    ck_assert_msg(dc_st_open(&ref, path) == 0, "%s", dc_error());
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    dc_tensor *img = dc_blip_vision_forward(ctx, m, ref_tensor(ctx, &ref, "pixels"));
    ck_assert_msg(img != NULL, "%s: %s", name, dc_error());
    const dc_st_tensor *want = ref_find(&ref, "vision");
    ck_assert_int_eq(img->numel * 4, (int64_t)want->nbytes);
    tu_check_close(img->data, want->data, img->numel, TOL, name);

    dc_tensor *logits = dc_blip_text_logits(ctx, m, ref_tensor(ctx, &ref, "ids"), img);
    ck_assert_msg(logits != NULL, "%s: %s", name, dc_error());
    want = ref_find(&ref, "logits");
    ck_assert_int_eq(logits->numel * 4, (int64_t)want->nbytes);
    tu_check_close(logits->data, want->data, logits->numel, TOL, name);

    const dc_st_tensor *g = ref_find(&ref, "greedy");
    int64_t rows = g->shape[0], len = g->shape[1], max_len = atoi(dc_st_meta(&ref, "max_length"));
    int32_t *ids = calloc((size_t)(rows * max_len), sizeof *ids);
    ck_assert_int_eq(greedy(m, img, max_len, ids), len);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < len; i++)
            ck_assert_msg(ids[r * max_len + i] == ((const int32_t *)g->data)[r * len + i],
                          "%s: row %lld token %lld: %d, transformers %d", name, (long long)r,
                          (long long)i, ids[r * max_len + i],
                          ((const int32_t *)g->data)[r * len + i]);
    free(ids);
    tu_ctx_free(ctx);
    dc_st_close(&ref);
    dc_blip_free(m);
}

START_TEST(test_fixtures) { check_fixture(models[_i]); }
END_TEST

/* Fresh pixels [images, S, S, 3] through the vision model. */
static dc_tensor *random_image_embeds(dc_ctx *ctx, const dc_blip *m, int64_t images) {
    int64_t s = m->cfg.vision.image_size;
    dc_tensor *img = dc_blip_vision_forward(ctx, m, tu_randn(ctx, DC_SHAPE(images, s, s, 3)));
    ck_assert_msg(img != NULL, "%s", dc_error());
    return img;
}

static void random_ids(const dc_blip *m, int32_t *ids, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        ids[i] = (int32_t)(tu_next() % (uint64_t)m->cfg.text.vocab_size);
}

/* Each image's embeddings repeated for its rows: [images * per, L, D]. */
static dc_tensor *repeat_rows(dc_ctx *ctx, const dc_tensor *img, int64_t per) {
    int64_t images = img->shape[0], each = img->shape[1] * img->shape[2];
    dc_tensor *out = dc_new(ctx, DC_F32, DC_SHAPE(images * per, img->shape[1], img->shape[2]));
    for (int64_t r = 0; r < images * per; r++)
        memcpy((float *)out->data + r * each, (const float *)img->data + r / per * each,
               (size_t)each * sizeof(float));
    return out;
}

/* Rows [rows, t] of ids through the decoder: a prompt of `prompt` tokens,
 * then one at a time; every step's logits against the whole sequence's at
 * that position. */
static void check_steps(const char *name, int64_t images, int64_t per, int64_t t, int64_t prompt) {
    dc_blip *m = load(name);
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    int64_t rows = images * per, v = m->cfg.text.vocab_size;
    dc_tensor *img = random_image_embeds(ctx, m, images);
    int32_t *ids = malloc((size_t)(rows * t) * sizeof *ids);
    random_ids(m, ids, rows * t);
    dc_tensor *whole = dc_blip_text_logits(
        ctx, m, dc_from_host(ctx, DC_I32, DC_SHAPE(rows, t), ids), repeat_rows(ctx, img, per));
    ck_assert_msg(whole != NULL, "%s", dc_error());
    dc_blip_decoder *d;
    ck_assert_msg(dc_blip_decoder_init(&d, m, img, per, t) == 0, "%s", dc_error());
    float *logits = malloc((size_t)(rows * v) * sizeof *logits),
          *want = malloc((size_t)(rows * v) * sizeof *want);
    int32_t *step = malloc((size_t)(rows * t) * sizeof *step);
    for (int64_t at = 0; at < t;) {
        int64_t n = at == 0 ? prompt : 1;
        for (int64_t r = 0; r < rows; r++)
            memcpy(step + r * n, ids + r * t + at, (size_t)n * sizeof *step);
        ck_assert_msg(dc_blip_decoder_step(d, step, n, logits) == 0, "%s", dc_error());
        at += n;
        ck_assert_int_eq(dc_blip_decoder_length(d), at);
        for (int64_t r = 0; r < rows; r++)
            memcpy(want + r * v, (const float *)whole->data + (r * t + at - 1) * v,
                   (size_t)v * sizeof *want);
        tu_check_close(logits, want, rows * v, TOL, "decoder step");
    }
    /* full: one more token is refused */
    ck_assert_int_ne(dc_blip_decoder_step(d, step, 1, logits), 0);
    ck_assert_msg(strstr(dc_error(), "exceed max_len"), "%s", dc_error());
    free(logits);
    free(want);
    free(step);
    free(ids);
    dc_blip_decoder_free(d);
    tu_ctx_free(ctx);
    dc_blip_free(m);
}

START_TEST(test_steps) {
    check_steps("tiny", 2, 1, 7, 3);
    check_steps("sharded", 2, 3, 6, 1); /* three rows share each image's keys */
    check_steps("wide", 1, 2, 5, 5);    /* the whole sequence as one prompt */
}
END_TEST

/* After a reorder, each row goes on from its source row's history: the same
 * logits as a fresh decoder fed those histories. */
START_TEST(test_reorder) {
    dc_blip *m = load("tiny");
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    enum { IMAGES = 2, PER = 3, ROWS = IMAGES * PER, T = 4 };
    int64_t v = m->cfg.text.vocab_size;
    dc_tensor *img = random_image_embeds(ctx, m, IMAGES);
    int32_t hist[ROWS * T], moved[ROWS * T], last[ROWS];
    random_ids(m, hist, ROWS * T);
    random_ids(m, last, ROWS);
    const int64_t src[ROWS] = {2, 2, 0, 4, 5, 3};
    for (int r = 0; r < ROWS; r++)
        memcpy(moved + r * T, hist + src[r] * T, sizeof(int32_t) * T);
    float *got = malloc((size_t)(ROWS * v) * sizeof *got),
          *want = malloc((size_t)(ROWS * v) * sizeof *want);
    dc_blip_decoder *a, *b;
    ck_assert_msg(dc_blip_decoder_init(&a, m, img, PER, T + 1) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_init(&b, m, img, PER, T + 1) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_step(a, hist, T, got) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_reorder(a, src) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_step(a, last, 1, got) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_step(b, moved, T, want) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_step(b, last, 1, want) == 0, "%s", dc_error());
    tu_check_close(got, want, ROWS * v, 1e-6, "reordered");
    /* a row may not continue another image's */
    const int64_t bad[ROWS] = {0, 1, 3, 3, 4, 5};
    ck_assert_int_ne(dc_blip_decoder_reorder(a, bad), 0);
    ck_assert_msg(strstr(dc_error(), "row 2 cannot continue row 3"), "%s", dc_error());
    free(got);
    free(want);
    dc_blip_decoder_free(a);
    dc_blip_decoder_free(b);
    tu_ctx_free(ctx);
    dc_blip_free(m);
}
END_TEST

/* An image's logits do not depend on the images decoded beside it, bit for
 * bit (its rows share the linear layers' calls, other images' rows never). */
START_TEST(test_batch_invariance) {
    dc_blip *m = load("sharded");
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    enum { PER = 2, T = 3 };
    int64_t v = m->cfg.text.vocab_size;
    dc_tensor *img = random_image_embeds(ctx, m, 3);
    dc_tensor *first =
        dc_from_host(ctx, DC_F32, DC_SHAPE(1, img->shape[1], img->shape[2]), img->data);
    ck_assert_ptr_nonnull(first);
    int32_t ids[3 * PER * T];
    random_ids(m, ids, 3 * PER * T);
    float *all = malloc((size_t)(3 * PER * v) * sizeof *all),
          *one = malloc((size_t)(PER * v) * sizeof *one);
    dc_blip_decoder *a, *b;
    ck_assert_msg(dc_blip_decoder_init(&a, m, img, PER, T + 1) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_init(&b, m, first, PER, T + 1) == 0, "%s", dc_error());
    for (int step = 0; step < 2; step++) { /* a prompt of T tokens, then one more */
        int64_t n = step ? 1 : T;
        ck_assert_msg(dc_blip_decoder_step(a, ids, n, all) == 0, "%s", dc_error());
        ck_assert_msg(dc_blip_decoder_step(b, ids, n, one) == 0, "%s", dc_error());
        ck_assert_msg(!memcmp(all, one, (size_t)(PER * v) * sizeof *one), "step %d", step);
    }
    free(all);
    free(one);
    dc_blip_decoder_free(a);
    dc_blip_decoder_free(b);
    tu_ctx_free(ctx);
    dc_blip_free(m);
}
END_TEST

/* A decoder restarted for new images (after a full run on others, beams
 * reordered) gives the bits a fresh decoder gives them; images of another
 * shape are refused. */
START_TEST(test_restart) {
    dc_blip *m = load("tiny");
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    enum { IMAGES = 2, PER = 2, ROWS = IMAGES * PER, T = 3 };
    int64_t v = m->cfg.text.vocab_size;
    dc_tensor *old = random_image_embeds(ctx, m, IMAGES), *img = random_image_embeds(ctx, m, IMAGES);
    int32_t ids[ROWS * T];
    random_ids(m, ids, ROWS * T);
    const int64_t src[ROWS] = {1, 1, 3, 2};
    float *got = malloc((size_t)(ROWS * v) * sizeof *got),
          *want = malloc((size_t)(ROWS * v) * sizeof *want);
    dc_blip_decoder *a, *b;
    ck_assert_msg(dc_blip_decoder_init(&a, m, old, PER, T) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_step(a, ids, T - 1, got) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_reorder(a, src) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_step(a, ids, 1, got) == 0, "%s", dc_error());
    ck_assert_msg(dc_blip_decoder_restart(a, img) == 0, "%s", dc_error());
    ck_assert_int_eq(dc_blip_decoder_length(a), 0);
    ck_assert_msg(dc_blip_decoder_init(&b, m, img, PER, T) == 0, "%s", dc_error());
    for (int step = 0; step < 2; step++) { /* a prompt of T - 1 tokens, then one more */
        int64_t n = step ? 1 : T - 1;
        for (int64_t i = 0; i < ROWS * v; i++)
            got[i] = NAN;
        ck_assert_msg(dc_blip_decoder_step(a, ids, n, got) == 0, "%s", dc_error());
        ck_assert_msg(dc_blip_decoder_step(b, ids, n, want) == 0, "%s", dc_error());
        ck_assert_msg(!memcmp(got, want, (size_t)(ROWS * v) * sizeof *got), "step %d", step);
    }
    dc_tensor *three = random_image_embeds(ctx, m, IMAGES + 1);
    ck_assert_int_ne(dc_blip_decoder_restart(a, three), 0);
    ck_assert_msg(strstr(dc_error(), "another shape"), "%s", dc_error());
    free(got);
    free(want);
    dc_blip_decoder_free(a);
    dc_blip_decoder_free(b);
    tu_ctx_free(ctx);
    dc_blip_free(m);
}
END_TEST

/* pixels -> vision -> logits of fixed ids -> the captioning loss (next-token
 * cross-entropy): the whole model on the tape. A loss of a few units, not the
 * logits themselves, keeps float32's rounding in the finite differences near
 * 1e-4, below the absolute tolerance. */
static dc_tensor *caption_loss(dc_ctx *ctx, dc_tensor **in, void *arg) {
    const dc_blip *m = arg;
    int32_t ids[2 * 4] = {118, 5, 77, 3, 118, 90, 12, 64},
                    next[2 * 4] = {5, 77, 3, 102, 90, 12, 64, 102};
    dc_tensor *logits = dc_blip_text_logits(ctx, m, dc_from_host(ctx, DC_I32, DC_SHAPE(2, 4), ids),
                                            dc_blip_vision_forward(ctx, m, in[0]));
    return dc_cross_entropy(ctx, dc_reshape(ctx, logits, DC_SHAPE(8, m->cfg.text.vocab_size)),
                            dc_from_host(ctx, DC_I32, DC_SHAPE(8), next));
}

/* Differentiable (fine-tuning builds on it): the pixels' gradient through both
 * halves against finite differences, and every parameter gets a gradient. */
START_TEST(test_gradients) {
    dc_blip *m = load("tiny");
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(2, 20, 20, 3))};
    tu_gradcheck(ctx, caption_loss, m, in, 1, 1e-2, 3e-4, 1e-2, 24);
    dc_ctx_reset(ctx);
    in[0] = tu_leaf(ctx, DC_SHAPE(2, 20, 20, 3));
    ck_assert_int_eq(dc_params_zero_grad(&m->params), 0);
    dc_tensor *loss = caption_loss(ctx, in, m);
    ck_assert_msg(loss != NULL && dc_backward(ctx, loss) == 0, "%s", dc_error());
    for (int i = 0; i < m->params.n; i++) {
        const dc_param *p = m->params.p[i];
        ck_assert_msg(tu_max_abs(p->grad.data, p->grad.numel) > 0, "%s: no gradient", p->name);
    }
    tu_ctx_free(ctx);
    dc_blip_free(m);
}
END_TEST

/* ==== refusals ==== */

/* A folder in the test's temp dir named `dir` holding tiny's weights and its
 * config.json with `path` ("text_config.hidden_act", or "" for the root) set
 * to the JSON `value` (NULL: removed). */
static const char *hostile_folder(const char *dir, const char *path, const char *value) {
    char *text = tu_read_file(FIXTURES "tiny/config.json", 1 << 20, NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *obj = root;
    char key[128];
    snprintf(key, sizeof key, "%s", path);
    char *dot = strchr(key, '.');
    if (dot) {
        *dot = '\0';
        obj = cJSON_GetObjectItemCaseSensitive(root, key);
        memmove(key, dot + 1, strlen(dot + 1) + 1);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    if (value)
        cJSON_AddItemToObject(obj, key, cJSON_Parse(value));
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    const char *folder = tu_path(dir);
    ck_assert_int_eq(mkdir(folder, 0755), 0);
    char to[600], from[PATH_MAX];
    snprintf(to, sizeof to, "%s/config.json", folder);
    ck_assert_int_eq(dc_write_file(to, out, strlen(out), false), 0);
    free(out);
    ck_assert_ptr_nonnull(realpath(FIXTURES "tiny/model.safetensors", from));
    snprintf(to, sizeof to, "%s/model.safetensors", folder);
    ck_assert_int_eq(symlink(from, to), 0);
    return folder;
}

static void expect_load_error(const char *folder, const char *want) {
    dc_blip *m = (dc_blip *)1;
    ck_assert_int_ne(dc_blip_load(&m, folder, DC_CPU), 0);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(dc_error(), want), "want \"%s\", got \"%s\"", want, dc_error());
}

static const struct {
    const char *key, *value, *error;
} hostile[] = {
    {"text_config.hidden_act", "\"relu\"", "hidden_act \"relu\" is not supported"},
    {"vision_config.hidden_act", "\"quick_gelu\"", "vision_config: hidden_act \"quick_gelu\""},
    {"vision_config.num_attention_heads", "5",
     "hidden_size 24 does not split into num_attention_heads 5"},
    {"text_config.num_attention_heads", "0",
     "num_attention_heads must be an integer in [1, 8192], got 0"},
    {"vision_config.image_size", "1e9", "image_size must be an integer in [1, 8192]"},
    {"vision_config.image_size", "[20, 20]", "image_size must be a number, got an array"},
    {"vision_config.patch_size", "32", "patch_size 32 is larger than image_size 20"},
    {"vision_config.patch_size", "1.5", "patch_size must be an integer"},
    {"text_config.vocab_size", "2000000000", "vocab_size must be an integer in [1, 1048576]"},
    {"text_config.num_hidden_layers", "100000", "num_hidden_layers must be an integer in [0, 128]"},
    {"text_config.is_decoder", "false", "is_decoder false is not supported"},
    {"text_config.bos_token_id", "500",
     "bos_token_id 500 and pad_token_id 0 must be below vocab_size 120"},
    {"text_config.layer_norm_eps", "-1", "layer_norm_eps must be in (0, 1)"},
    {"model_type", "\"clip\"", "model_type \"clip\" is not BLIP"},
    {"architectures", "[\"BlipForQuestionAnswering\"]",
     "architectures \"BlipForQuestionAnswering\" is not supported"},
    {"vision_config", "[]", "vision_config must be an object, got an array"},
    /* sizes the weights beside them do not have: refused before allocating */
    {"text_config.hidden_size", "8192", "model expects"},
    {"vision_config.num_hidden_layers", "128",
     "parameters missing, the first vision_model.encoder.layers.2."},
    {"tie_word_embeddings", "false", "text_decoder.cls.predictions.decoder.weight"},
    {"", NULL, "model expects"}, /* the defaults: BLIP base, not this file */
};

START_TEST(test_hostile_configs) {
    tu_mkdtemp("blip_hostile");
    for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
        char dir[32];
        snprintf(dir, sizeof dir, "m%zu", i);
        const char *folder = hostile[i].key[0]
                                 ? hostile_folder(dir, hostile[i].key, hostile[i].value)
                                 : hostile_folder(dir, "vision_config", NULL);
        if (!hostile[i].key[0]) { /* "{}" */
            char cfg[600];
            snprintf(cfg, sizeof cfg, "%s/config.json", folder);
            ck_assert_int_eq(dc_write_file(cfg, "{}", 2, false), 0);
        }
        expect_load_error(folder, hostile[i].error);
    }
    tu_rmtemp();
}
END_TEST

START_TEST(test_bad_folders) {
    tu_mkdtemp("blip_folders");
    expect_load_error(tu_path("none"), "no config.json");
    /* only PyTorch's pickle */
    const char *folder = hostile_folder("bin", "label_smoothing", "0.0");
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", folder);
    ck_assert_int_eq(unlink(path), 0);
    snprintf(path, sizeof path, "%s/pytorch_model.bin", folder);
    ck_assert_int_eq(dc_write_file(path, "PK", 2, false), 0);
    expect_load_error(folder, "only PyTorch .bin weights");
    ck_assert_int_eq(unlink(path), 0);
    expect_load_error(folder, "no model.safetensors");
    /* truncated weights */
    size_t n;
    char *data = tu_read_file(FIXTURES "tiny/model.safetensors", 1 << 24, &n);
    snprintf(path, sizeof path, "%s/model.safetensors", folder);
    ck_assert_int_eq(dc_write_file(path, data, n / 2, false), 0);
    dc_blip *m;
    ck_assert_int_ne(dc_blip_load(&m, folder, DC_CPU), 0);
    ck_assert_ptr_nonnull(strstr(dc_error(), "model.safetensors"));
    free(data);
    tu_rmtemp();
}
END_TEST

START_TEST(test_bad_arguments) {
    dc_blip *m = load("tiny");
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    ck_assert_ptr_null(dc_blip_vision_forward(ctx, m, tu_randn(ctx, DC_SHAPE(1, 24, 24, 3))));
    ck_assert_msg(strstr(dc_error(), "pixels [1, 24, 24, 3], want [N, 20, 20, 3]"), "%s",
                  dc_error());
    dc_ctx_reset(ctx);
    dc_tensor *img = random_image_embeds(ctx, m, 2);
    int32_t ids[2 * 30];
    random_ids(m, ids, 60);
    ck_assert_ptr_null(
        dc_blip_text_logits(ctx, m, dc_from_host(ctx, DC_I32, DC_SHAPE(2, 30), ids), img));
    ck_assert_msg(strstr(dc_error(), "longer than max_position_embeddings"), "%s", dc_error());
    dc_ctx_reset(ctx);
    img = random_image_embeds(ctx, m, 2);
    ck_assert_ptr_null(
        dc_blip_text_logits(ctx, m, dc_from_host(ctx, DC_I32, DC_SHAPE(1, 3), ids), img));
    ck_assert_msg(strstr(dc_error(), "ids [1, 3]"), "%s", dc_error());
    dc_ctx_reset(ctx);
    img = random_image_embeds(ctx, m, 2);
    dc_blip_decoder *d;
    ck_assert_int_ne(dc_blip_decoder_init(&d, m, img, 1, 25), 0);
    ck_assert_msg(strstr(dc_error(), "max_len 25 outside"), "%s", dc_error());
    ck_assert_int_ne(dc_blip_decoder_init(&d, m, img, 0, 5), 0);
    ck_assert_int_eq(dc_blip_decoder_init(&d, m, img, 1, 5), 0);
    float logits[2 * 120];
    ids[1] = 120; /* outside the vocabulary */
    ck_assert_int_ne(dc_blip_decoder_step(d, ids, 1, logits), 0);
    ck_assert_msg(strstr(dc_error(), "120"), "%s", dc_error());
    dc_blip_decoder_free(d);
    tu_ctx_free(ctx);
    dc_blip_free(m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("blip");
    TCase *tc = tu_tcase(s, "blip", 120);
    tcase_add_loop_test(tc, test_fixtures, 0, N_MODELS);
    tcase_add_test(tc, test_steps);
    tcase_add_test(tc, test_reorder);
    tcase_add_test(tc, test_batch_invariance);
    tcase_add_test(tc, test_restart);
    tcase_add_test(tc, test_gradients);
    tcase_add_test(tc, test_hostile_configs);
    tcase_add_test(tc, test_bad_folders);
    tcase_add_test(tc, test_bad_arguments);
    return tu_run(s);
}
