/* models/clip_text: transformers' CLIPTextModel. Tiny random-weight models
 * made by scripts/make_clip_text_fixtures.py (tests/fixtures/clip_text_*: an
 * SD-1.x-like f32 one under the hub's "text_model." names, an SD-2.x-like
 * gelu one as diffusers' fp16 variant, a bf16 sharded one with a newer
 * eos_token_id) are loaded from their folders and must give transformers'
 * last_hidden_state, every hidden state, diffusers' clip_skip=1 prompt
 * embeds and the pooled output, each element within 1e-4 of the largest
 * reference magnitude. Fresh random ids check what needs no reference: the
 * pooled positions under both eos rules, clip_skip k against the full run's
 * hidden states, gradients; bad configs, folders, weights and arguments are
 * refused with a message. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/safetensors.h"
#include "models/clip_text.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIXTURES "tests/fixtures/clip_text_"
/* |ours - transformers| <= TOL * max|transformers|, every element. */
#define TOL 1e-4

static const char *const models[] = {"sd1", "sd2", "neweos"};
#define N_MODELS 3

static dc_clip_text *load(const char *name, const char *variant) {
    char dir[256];
    snprintf(dir, sizeof dir, FIXTURES "%s", name);
    dc_clip_text *m;
    ck_assert_msg(dc_clip_text_load(&m, dir, variant, DC_CPU) == 0, "%s: %s", name, dc_error());
    return m;
}

static const dc_st_tensor *ref_find(const dc_st_file *f, const char *name) {
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL, "reference has no %s", name);
    return t;
}

static void check_close(const dc_tensor *got, const dc_st_tensor *want, const float *want_data,
                        int64_t n, const char *what) {
    ck_assert_msg(got != NULL, "%s: %s", what, dc_error());
    ck_assert_int_eq(got->numel, n);
    ck_assert_int_eq(want->dtype, DC_F32);
    tu_check_close(got->data, want_data, n, TOL, what);
}

static void check_fixture(const char *name) {
    dc_clip_text *m = load(name, NULL); /* sd2: the folder's only variant */
    char path[256], what[64];
    snprintf(path, sizeof path, FIXTURES "%s/reference.safetensors", name);
    dc_st_file ref;
    ck_assert_msg(dc_st_open(&ref, path) == 0, "%s", dc_error());
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    const dc_st_tensor *ids_t = ref_find(&ref, "ids");
    dc_tensor *ids = dc_from_host(ctx, DC_I32, ids_t->ndim, ids_t->shape, ids_t->data);
    int layers = m->cfg.num_hidden_layers;
    dc_tensor **hidden = calloc((size_t)layers + 1, sizeof *hidden);
    dc_tensor *last = dc_clip_text_forward(ctx, m, ids, 0, hidden);
    const dc_st_tensor *want = ref_find(&ref, "last");
    check_close(last, want, want->data, want->nbytes / 4, name);

    want = ref_find(&ref, "hidden"); /* [layers + 1, N, L, C] */
    ck_assert_int_eq(want->shape[0], layers + 1);
    int64_t per = last->numel;
    for (int i = 0; i <= layers; i++) {
        snprintf(what, sizeof what, "%s hidden_states[%d]", name, i);
        check_close(hidden[i], want, (const float *)want->data + i * per, per, what);
    }

    want = ref_find(&ref, "pooled");
    snprintf(what, sizeof what, "%s pooled", name);
    check_close(dc_clip_text_pooled(ctx, m, ids, last), want, want->data, want->nbytes / 4, what);

    want = ref_find(&ref, "skip1");
    snprintf(what, sizeof what, "%s clip_skip 1", name);
    check_close(dc_clip_text_forward(ctx, m, ids, 1, hidden), want, want->data, per, what);
    ck_assert_ptr_null(hidden[layers]); /* the skipped layer did not run */
    ck_assert_ptr_nonnull(hidden[layers - 1]);
    free(hidden);
    tu_ctx_free(ctx);
    dc_st_close(&ref);
    dc_clip_text_free(m);
}

START_TEST(test_fixtures) { check_fixture(models[_i]); }
END_TEST

/* The variant asked for by name, and the weights of a model whose own
 * folder holds them unprefixed (transformers 5) and prefixed (the hub). */
START_TEST(test_variant) {
    dc_clip_text *m = load("sd2", "fp16");
    ck_assert_int_eq(m->cfg.hidden_act, DC_CLIP_TEXT_GELU);
    ck_assert_float_eq(m->cfg.layer_norm_eps, 1e-6f);
    dc_clip_text_free(m);
    dc_clip_text *bad;
    ck_assert_int_ne(dc_clip_text_load(&bad, FIXTURES "sd2", "bf16", DC_CPU), 0);
    ck_assert_msg(strstr(dc_error(), "no variant 'bf16' (model.bf16.safetensors); variants here: "
                                     "'fp16'"),
                  "%s", dc_error());
}
END_TEST

/* Random ids [n, L] drawn from the whole vocabulary. */
static int32_t *random_ids(const dc_clip_text *m, int64_t n, int64_t l) {
    int32_t *ids = malloc((size_t)(n * l) * sizeof *ids);
    for (int64_t i = 0; i < n * l; i++)
        ids[i] = (int32_t)(tu_next() % (uint64_t)m->cfg.vocab_size);
    return ids;
}

/* Both rules against their definitions: the first largest id; the first eos,
 * or 0 without one (transformers' argmax of an all-false row). */
START_TEST(test_eos_positions) {
    dc_clip_text_config c = {.eos_token_id = 2};
    enum { N = 64, L = 9 };
    int32_t ids[N * L];
    int64_t pos[N];
    for (int legacy = 0; legacy < 2; legacy++) {
        c.eos_token_id = legacy ? 2 : 5;
        for (int i = 0; i < N * L; i++)
            ids[i] = (int32_t)(tu_next() % 8); /* repeats: ties and rows without 5 */
        dc_clip_text_eos_positions(&c, ids, N, L, pos);
        for (int r = 0; r < N; r++) {
            const int32_t *row = ids + r * L;
            int max = 0, want = -1;
            for (int i = 0; i < L; i++)
                max = row[i] > max ? row[i] : max;
            for (int i = 0; i < L && want < 0; i++)
                if (row[i] == (legacy ? max : 5))
                    want = i;
            ck_assert_int_eq(pos[r], want < 0 ? 0 : want);
        }
    }
}
END_TEST

/* clip_skip k runs the first layers - k layers: its hidden states are the
 * full run's, and its result the final LN of the full run's hidden state
 * layers - k (checked by running that state through clip_skip 0's LN: the
 * full run's result is the LN of hidden[layers]). */
START_TEST(test_clip_skip) {
    dc_clip_text *m = load("neweos", NULL);
    int layers = m->cfg.num_hidden_layers;
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    int32_t *host = random_ids(m, 2, 7);
    dc_tensor *ids = dc_from_host(ctx, DC_I32, DC_SHAPE(2, 7), host);
    dc_tensor **full = calloc((size_t)layers + 1, sizeof *full);
    dc_tensor **part = calloc((size_t)layers + 1, sizeof *part);
    ck_assert_ptr_nonnull(dc_clip_text_forward(ctx, m, ids, 0, full));
    for (int k = 1; k < layers; k++) {
        ck_assert_ptr_nonnull(dc_clip_text_forward(ctx, m, ids, k, part));
        for (int i = 0; i <= layers - k; i++)
            tu_check_close(part[i]->data, full[i]->data, full[i]->numel, 1e-6, "clip_skip");
    }
    free(full);
    free(part);
    free(host);
    tu_ctx_free(ctx);
    dc_clip_text_free(m);
}
END_TEST

static const int32_t grad_ids[2 * 5] = {30, 4, 40, 31, 31, 30, 47, 3, 9, 31};

static dc_tensor *pooled_of(dc_ctx *ctx, dc_tensor **in, void *arg) {
    dc_tensor *ids = dc_from_host(ctx, DC_I32, DC_SHAPE(2, 5), grad_ids);
    return dc_clip_text_pooled(ctx, arg, ids, in[0]);
}

/* The pooled gather's gradient against finite differences; through the
 * encoder (clip_skip 1), every parameter but the skipped layer's gets a
 * gradient and the skipped layer's none. */
START_TEST(test_gradients) {
    dc_clip_text *m = load("neweos", NULL);
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(2, 5, 24))};
    tu_gradcheck(ctx, pooled_of, m, in, 1, 1e-2, 1e-4, 1e-2, 0);
    dc_ctx_reset(ctx);
    ck_assert_int_eq(dc_params_zero_grad(&m->params), 0);
    dc_tensor *ids = dc_from_host(ctx, DC_I32, DC_SHAPE(2, 5), grad_ids);
    dc_tensor *last = dc_clip_text_forward(ctx, m, ids, 1, NULL);
    dc_tensor *loss =
        dc_add(ctx, dc_sum(ctx, dc_clip_text_pooled(ctx, m, ids, last)), dc_mean(ctx, last));
    ck_assert_msg(loss != NULL && dc_backward(ctx, loss) == 0, "%s", dc_error());
    for (int i = 0; i < m->params.n; i++) {
        const dc_param *p = m->params.p[i];
        bool skipped = strstr(p->name, "layers.3.") != NULL;
        ck_assert_msg((tu_max_abs(p->grad.data, p->grad.numel) > 0) != skipped, "%s: %s gradient",
                      p->name, skipped ? "a" : "no");
    }
    tu_ctx_free(ctx);
    dc_clip_text_free(m);
}
END_TEST

/* ==== refusals ==== */

/* A folder in the test's temp dir named `dir` holding sd1's weights and its
 * config.json with `key` set to the JSON `value` (NULL: removed). */
static const char *hostile_folder(const char *dir, const char *key, const char *value) {
    char *text = tu_read_file(FIXTURES "sd1/config.json", 1 << 20, NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    if (value)
        cJSON_AddItemToObject(root, key, cJSON_Parse(value));
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    const char *folder = tu_path(dir);
    ck_assert_int_eq(mkdir(folder, 0755), 0);
    char to[600], from[PATH_MAX];
    snprintf(to, sizeof to, "%s/config.json", folder);
    ck_assert_int_eq(dc_write_file(to, out, strlen(out), false), 0);
    free(out);
    ck_assert_ptr_nonnull(realpath(FIXTURES "sd1/model.safetensors", from));
    snprintf(to, sizeof to, "%s/model.safetensors", folder);
    ck_assert_int_eq(symlink(from, to), 0);
    return folder;
}

static void expect_load_error(const char *folder, const char *want) {
    dc_clip_text *m = (dc_clip_text *)1;
    ck_assert_int_ne(dc_clip_text_load(&m, folder, NULL, DC_CPU), 0);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(dc_error(), want), "want \"%s\", got \"%s\"", want, dc_error());
}

static const struct {
    const char *key, *value, *error;
} hostile[] = {
    {"hidden_act", "\"relu\"",
     "hidden_act \"relu\" is not supported (supported: \"quick_gelu\", \"gelu\")"},
    {"hidden_act", "\"gelu_new\"", "hidden_act \"gelu_new\" is not supported"},
    {"hidden_act", "7", "hidden_act must be a string, got a number"},
    {"num_attention_heads", "5", "hidden_size 24 does not split into num_attention_heads 5"},
    {"num_attention_heads", "0", "num_attention_heads must be an integer in [1, 8192], got 0"},
    {"hidden_size", "1e9", "hidden_size must be an integer in [1, 8192]"},
    {"intermediate_size", "-3", "intermediate_size must be an integer in [1, 65536], got -3"},
    {"vocab_size", "2000000000", "vocab_size must be an integer in [1, 1048576]"},
    {"num_hidden_layers", "100000", "num_hidden_layers must be an integer in [1, 128]"},
    {"num_hidden_layers", "0", "num_hidden_layers must be an integer in [1, 128], got 0"},
    {"max_position_embeddings", "1.5", "max_position_embeddings must be an integer"},
    {"max_position_embeddings", "[77]", "max_position_embeddings must be a number, got an array"},
    {"eos_token_id", "[2, 49407]", "eos_token_id must be a number, got an array"},
    {"eos_token_id", "-1", "eos_token_id must be an integer in [0, 2147483647], got -1"},
    {"layer_norm_eps", "-1", "layer_norm_eps must be in (0, 1)"},
    {"model_type", "\"clip\"", "model_type \"clip\" is not a CLIP text model"},
    {"architectures", "[\"CLIPTextModelWithProjection\"]",
     "architectures \"CLIPTextModelWithProjection\" is not supported"},
    /* sizes the weights beside them do not have: refused before allocating */
    {"hidden_size", "8192", "model expects"},
    {"intermediate_size", "65536", "model expects"},
    {"num_hidden_layers", "128", "parameters missing, the first text_model.encoder.layers.3."},
    {"num_hidden_layers", "2", "text_model.encoder.layers.2."},
    {"", NULL, "model expects"}, /* "{}": the defaults, CLIP ViT-B/32's text model */
};

START_TEST(test_hostile_configs) {
    tu_mkdtemp("clip_hostile");
    for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++) {
        char dir[32];
        snprintf(dir, sizeof dir, "m%zu", i);
        const char *folder = hostile_folder(dir, hostile[i].key, hostile[i].value);
        if (!hostile[i].key[0]) {
            char cfg[600];
            snprintf(cfg, sizeof cfg, "%s/config.json", folder);
            ck_assert_int_eq(dc_write_file(cfg, "{}", 2, false), 0);
        }
        expect_load_error(folder, hostile[i].error);
    }
    ck_assert_int_ne(dc_clip_text_config_parse(&(dc_clip_text_config){0}, "[1]", "text"), 0);
    ck_assert_msg(
        strstr(dc_error(), "text: a CLIP text config must be a JSON object, got an array"), "%s",
        dc_error());
    tu_rmtemp();
}
END_TEST

START_TEST(test_bad_folders) {
    tu_mkdtemp("clip_folders");
    expect_load_error(tu_path("none"), "no config.json");
    /* only PyTorch's pickle */
    const char *folder = hostile_folder("bin", "dropout", "0.0");
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", folder);
    ck_assert_int_eq(unlink(path), 0);
    snprintf(path, sizeof path, "%s/pytorch_model.bin", folder);
    ck_assert_int_eq(dc_write_file(path, "PK", 2, false), 0);
    expect_load_error(folder, "only PyTorch .bin weights; diffc reads safetensors (in Python: "
                              "CLIPTextModel.from_pretrained(DIR)");
    ck_assert_int_eq(unlink(path), 0);
    expect_load_error(folder, "no model.safetensors (a transformers model folder");
    /* truncated weights */
    size_t n;
    char *data = tu_read_file(FIXTURES "sd1/model.safetensors", 1 << 24, &n);
    snprintf(path, sizeof path, "%s/model.safetensors", folder);
    for (int k = 1; k < 4; k++) {
        ck_assert_int_eq(dc_write_file(path, data, n * k / 4, false), 0);
        expect_load_error(folder, "model.safetensors");
    }
    free(data);
    tu_rmtemp();
}
END_TEST

START_TEST(test_bad_arguments) {
    dc_clip_text *m = load("sd1", NULL);
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    int32_t *host = random_ids(m, 2, 17);
    ck_assert_ptr_null(
        dc_clip_text_forward(ctx, m, dc_from_host(ctx, DC_I32, DC_SHAPE(2, 17), host), 0, NULL));
    ck_assert_msg(strstr(dc_error(), "ids [2, 17] longer than max_position_embeddings 16"), "%s",
                  dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_clip_text_forward(ctx, m, tu_randn(ctx, DC_SHAPE(2, 4)), 0, NULL));
    ck_assert_msg(strstr(dc_error(), "ids f32 [2, 4], want i32 [N, L]"), "%s", dc_error());
    dc_ctx_reset(ctx);
    dc_tensor *ids = dc_from_host(ctx, DC_I32, DC_SHAPE(2, 8), host);
    ck_assert_ptr_null(dc_clip_text_forward(ctx, m, ids, 3, NULL));
    ck_assert_msg(strstr(dc_error(), "clip_skip 3 outside [0, num_hidden_layers 3)"), "%s",
                  dc_error());
    dc_ctx_reset(ctx);
    ids = dc_from_host(ctx, DC_I32, DC_SHAPE(2, 8), host);
    ck_assert_ptr_null(dc_clip_text_forward(ctx, m, ids, -1, NULL));
    dc_ctx_reset(ctx);
    host[3] = 50; /* outside the vocabulary */
    ids = dc_from_host(ctx, DC_I32, DC_SHAPE(2, 8), host);
    ck_assert_ptr_null(dc_clip_text_forward(ctx, m, ids, 0, NULL));
    ck_assert_msg(strstr(dc_error(), "50"), "%s", dc_error());
    dc_ctx_reset(ctx);
    ids = dc_from_host(ctx, DC_I32, DC_SHAPE(2, 8), host);
    ck_assert_ptr_null(dc_clip_text_pooled(ctx, m, ids, tu_randn(ctx, DC_SHAPE(2, 7, 24))));
    ck_assert_msg(strstr(dc_error(), "hidden states [2, 7, 24], want [2, 8, 24]"), "%s",
                  dc_error());
    free(host);
    tu_ctx_free(ctx);
    dc_clip_text_free(m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("clip_text");
    TCase *tc = tu_tcase(s, "clip_text", 120);
    tcase_add_loop_test(tc, test_fixtures, 0, N_MODELS);
    tcase_add_test(tc, test_variant);
    tcase_add_test(tc, test_eos_positions);
    tcase_add_test(tc, test_clip_skip);
    tcase_add_test(tc, test_gradients);
    tcase_add_test(tc, test_hostile_configs);
    tcase_add_test(tc, test_bad_folders);
    tcase_add_test(tc, test_bad_arguments);
    return tu_run(s);
}
