/*
 * `diffc train-caption` (train/caption.c): one step against transformers,
 * learning captions end to end, and a killed run resumed to the same weights.
 *
 * Fixtures: scripts/make_train_caption_fixtures.py (transformers 5.25, torch
 * 2.15): a tiny random BlipForConditionalGeneration with its tokenizer and
 * processor, and the loss and every parameter's gradient of one batch (two
 * captions after a prompt, label smoothing 0.1).
 */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/safetensors.h"
#include "data/image.h"
#include "models/blip.h"
#include "train/caption.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define MODEL "tests/fixtures/train_caption/model"
#define REFERENCE "tests/fixtures/train_caption/reference.safetensors"
#define PROMPT "a picture of"
#define MAX_LENGTH 16
#define SMOOTHING 0.1f

static const char *const captions[] = {"a red square", "a small blue circle on the grass"};

static const dc_st_tensor *ref_find(const dc_st_file *f, const char *name) {
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL, "the reference has no %s", name);
    return t;
}

/* |got - want| <= tol * max|want|, every element. */
static void check_close(const float *got, const float *want, int64_t n, double tol, const char *what) {
    double scale = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(want[i]));
    ck_assert_msg(scale > 0, "%s: the reference is all zeros", what);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs((double)got[i] - want[i]) <= tol * scale,
                      "%s: element %lld: got %.8g, want %.8g (max %.3g)", what, (long long)i, (double)got[i],
                      (double)want[i], scale);
}

/* The batch as the trainer builds it, the loss, and every gradient, against
 * transformers' BlipForConditionalGeneration(pixel_values, input_ids, labels). */
START_TEST(test_step_matches_transformers) {
    dc_blip *m;
    dc_wordpiece *tok;
    dc_st_file ref;
    ck_assert_msg(!dc_blip_load(&m, MODEL, DC_CPU) && !dc_wordpiece_load(&tok, MODEL), "%s", dc_error());
    ck_assert_msg(!dc_st_open(&ref, REFERENCE), "%s", dc_error());
    int32_t *prompt, ids[2 * MAX_LENGTH], labels[2 * MAX_LENGTH];
    int64_t n_prompt;
    ck_assert(!dc_wordpiece_encode(tok, PROMPT, false, &prompt, &n_prompt));
    for (int i = 0; i < 2; i++)
        ck_assert_msg(!dc_caption_tokens(tok, &m->cfg.text, prompt, n_prompt, captions[i], MAX_LENGTH,
                                         ids + i * MAX_LENGTH, labels + i * MAX_LENGTH), "%s", dc_error());
    ck_assert_mem_eq(ids, ref_find(&ref, "input_ids")->data, sizeof ids);
    ck_assert_mem_eq(labels, ref_find(&ref, "labels")->data, sizeof labels);

    dc_ctx *ctx = tu_ctx();
    const dc_st_tensor *px = ref_find(&ref, "pixel_values");
    dc_tensor *pixels = dc_from_host(ctx, DC_F32, px->ndim, px->shape, px->data);
    ck_assert(!dc_params_zero_grad(&m->params));
    dc_tensor *loss = dc_caption_loss(ctx, m, pixels, ids, labels, 2, MAX_LENGTH, SMOOTHING, false);
    ck_assert_msg(loss && !dc_backward(ctx, loss), "%s", dc_error());
    float want = *(const float *)ref_find(&ref, "loss")->data, got = ((float *)loss->data)[0];
    ck_assert_msg(fabsf(got - want) <= 1e-5f * fabsf(want), "loss %.8g, transformers %.8g", got, want);

    /* the gradients in the file layout, by state_dict name */
    tu_mkdtemp("tcgrad");
    dc_st_file grads;
    ck_assert_msg(!dc_params_save(&m->params, m->params.grad, tu_path("g.safetensors"), NULL, NULL, 0) &&
                      !dc_st_open(&grads, tu_path("g.safetensors")), "%s", dc_error());
    int checked = 0;
    for (int i = 0; i < m->params.n; i++) {
        const char *name = m->params.p[i]->name;
        char key[256];
        snprintf(key, sizeof key, "grad.%s", name);
        const dc_st_tensor *w = ref_find(&ref, key), *g = dc_st_find(&grads, name);
        ck_assert(g && g->nbytes == w->nbytes);
        int64_t n = (int64_t)(w->nbytes / sizeof(float));
        const float *gv = g->data, *wv = w->data;
        double scale = 0;
        for (int64_t j = 0; j < n; j++)
            scale = fmax(scale, fabs(wv[j]));
        if (scale < 1e-9) { /* zero but for rounding (a key's bias: softmax ignores it): so is ours */
            for (int64_t j = 0; j < n; j++)
                ck_assert_msg(fabs(gv[j]) < 1e-9, "%s: element %lld: %g", name, (long long)j, (double)gv[j]);
        } else {
            check_close(gv, wv, n, 1e-4, name);
        }
        checked++;
    }
    ck_assert_int_eq(checked, 53); /* every parameter transformers has */
    dc_st_close(&grads);
    tu_rmtemp();
    tu_ctx_free(ctx);
    dc_st_close(&ref);
    free(prompt);
    dc_wordpiece_free(tok);
    dc_blip_free(m);
}
END_TEST

/* Caption tokens past --max-length are cut, [SEP] kept; a length without
 * room for a caption is refused. */
START_TEST(test_tokens_cut) {
    dc_blip *m;
    dc_wordpiece *tok;
    ck_assert_msg(!dc_blip_load(&m, MODEL, DC_CPU) && !dc_wordpiece_load(&tok, MODEL), "%s", dc_error());
    int32_t ids[6], labels[6];
    ck_assert(!dc_caption_tokens(tok, &m->cfg.text, NULL, 0, "a small blue circle on the grass", 6, ids, labels));
    ck_assert_int_eq(ids[0], m->cfg.text.bos_token_id);
    ck_assert_int_eq(ids[5], m->cfg.text.sep_token_id);
    ck_assert_int_eq(labels[0], DC_CAPTION_IGNORE);
    for (int i = 1; i < 6; i++)
        ck_assert_int_eq(labels[i], ids[i]);
    ck_assert_int_eq(dc_caption_tokens(tok, &m->cfg.text, ids, 2, "a", 4, ids, labels), -1);
    ck_assert_msg(strstr(dc_error(), "leaves no room for a caption"), "%s", dc_error());
    dc_wordpiece_free(tok);
    dc_blip_free(m);
}
END_TEST

/* ---- a captioned folder of shapes ---- */

#define COPIES 2

/* The shapes of testutil.h, COPIES of each, captioned. */
static void make_shapes(const char *dir) { tu_make_shapes(dir, COPIES, true); }

/* The caption `diffc caption` gave file `name` in the metadata.jsonl text. */
static char *caption_of(const char *text, const char *name) {
    char key[128];
    snprintf(key, sizeof key, "\"file_name\":\"%s\"", name);
    const char *line = strstr(text, key);
    if (!line)
        return NULL;
    const char *end = strchr(line, '\n');
    cJSON *j = cJSON_ParseWithLength(line - 1, (size_t)(end - line + 1)); /* from the line's { */
    char *got = j ? strdup(cJSON_GetStringValue(cJSON_GetObjectItem(j, "text"))) : NULL;
    cJSON_Delete(j);
    return got;
}

/* 200 steps (batch 8, lr 3e-3, the fixture's model: 1 vision and 1 text
 * layer, 16 and 32 wide) on the 8 images bring every greedy caption to its
 * words (the start, a random model, names none); the output folder is
 * a model folder `diffc caption` reads. */
START_TEST(test_learns_shapes) {
    tu_mkdtemp("tcshapes");
    char data[512], out[512], got_path[512];
    snprintf(data, sizeof data, "%s", tu_path("data"));
    make_shapes(data);
    snprintf(out, sizeof out, "%s", tu_path("out"));
    snprintf(got_path, sizeof got_path, "%s", tu_path("got.jsonl"));
    const char *train[] = {"train-caption", "--model", MODEL, "--train-data-dir", data, "--output-dir", out,
                           "--max-train-steps", "200", "--train-batch-size", "8", "--learning-rate", "3e-3",
                           "--lr-warmup-steps", "10", "--adam-weight-decay", "0", "--max-length", "8",
                           "--checkpointing-steps", "0", "--device", "cpu", "--cache-dir", out, NULL};
    tu_run_result *r = tu_run_diffc(train);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    const char *caption[] = {"caption", "--model", out, "--images", data, "--output", got_path, NULL};
    r = tu_run_diffc(caption);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    char *text = tu_read_file(got_path, 1 << 20, NULL);
    for (int c = 0; c < 2; c++)
        for (int s = 0; s < 2; s++)
            for (int k = 0; k < COPIES; k++) {
                char name[64], want[64];
                snprintf(name, sizeof name, "%s_%s_%d.png", tu_shape_colours[c], tu_shape_kinds[s], k);
                snprintf(want, sizeof want, "a %s %s", tu_shape_colours[c], tu_shape_kinds[s]);
                char *got = caption_of(text, name);
                ck_assert_msg(got && !strcmp(got, want), "%s: \"%s\", want \"%s\"", name, got ? got : "(none)",
                              want);
                free(got);
            }
    free(text);
    tu_rmtemp();
}
END_TEST

static char *read_weights(const char *dir, const char *sub, size_t *n) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s/model.safetensors", dir, sub);
    char *data = tu_read_file(path, 1 << 24, n);
    ck_assert_msg(data != NULL, "%s is missing", path);
    return data;
}

/* SIGKILL after checkpoint-5, then --resume-from-checkpoint latest: the
 * weights, EMA weights and final model are those of a run never stopped, bit
 * for bit. */
START_TEST(test_killed_and_resumed_is_bit_exact) {
    tu_mkdtemp("tcresume");
    char data[512], a[512], b[512];
    snprintf(data, sizeof data, "%s", tu_path("data"));
    make_shapes(data);
    snprintf(a, sizeof a, "%s", tu_path("a"));
    snprintf(b, sizeof b, "%s", tu_path("b"));
    const char *args[] = {"train-caption", "--model", MODEL, "--train-data-dir", data, "--output-dir", a,
                          "--max-train-steps", "12", "--train-batch-size", "3", "--gradient-accumulation-steps",
                          "2", "--learning-rate", "1e-3", "--lr-warmup-steps", "3", "--use-ema", "--random-flip",
                          "--prompt", PROMPT, "--checkpointing-steps", "1", "--checkpoints-total-limit", "2",
                          "--device", "cpu", "--cache-dir", a, NULL, NULL, NULL};
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    args[6] = args[28] = b;
    tu_spawn_diffc(args);
    ck_assert_msg(tu_read_diffc_until("checkpoint-5"), "no checkpoint-5: %s", tu_wait_diffc()->err);
    tu_kill_diffc(SIGKILL);
    args[29] = "--resume-from-checkpoint", args[30] = "latest";
    r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "resuming from"), "%s", tu_tail(r->err));
    static const char *const subs[] = {".", "checkpoint-12", "checkpoint-12/ema"};
    for (int i = 0; i < 3; i++) {
        size_t na, nb;
        char *wa = read_weights(a, subs[i], &na), *wb = read_weights(b, subs[i], &nb);
        ck_assert_msg(na == nb && !memcmp(wa, wb, na), "%s differs after the resume", subs[i]);
        free(wa);
        free(wb);
    }
    tu_rmtemp();
}
END_TEST

/* --help lists the captioner's options and the shared ones, not the UNet's. */
START_TEST(test_help) {
    const char *help[] = {"train-caption", "--help", NULL};
    tu_run_result *r = tu_run_diffc(help);
    ck_assert_int_eq(r->status, 0);
    static const char *const listed[] = {"--prompt TEXT", "--max-length N", "--label-smoothing X",
                                         "--[no-]freeze-vision", "--learning-rate X", "--[no-]use-ema",
                                         "--resume-from-checkpoint", "--gradient-accumulation-steps N"};
    for (size_t i = 0; i < sizeof listed / sizeof listed[0]; i++)
        ck_assert_msg(strstr(r->out, listed[i]), "--help lacks %s", listed[i]);
    ck_assert_msg(!strstr(r->out, "--resolution") && !strstr(r->out, "--prediction-type"), "%s", r->out);
}
END_TEST

/* --freeze-vision: the vision weights leave as they came, the text decoder's change. */
START_TEST(test_freeze_vision) {
    tu_mkdtemp("tcfreeze");
    char data[512], out[512];
    snprintf(data, sizeof data, "%s", tu_path("data"));
    make_shapes(data);
    snprintf(out, sizeof out, "%s", tu_path("out"));
    const char *args[] = {"train-caption", "--model", MODEL, "--train-data-dir", data, "--output-dir", out,
                          "--max-train-steps", "3", "--train-batch-size", "4", "--learning-rate", "1e-2",
                          "--lr-warmup-steps", "0", "--freeze-vision", "--device", "cpu", "--cache-dir", out,
                          NULL};
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    dc_blip *before, *after;
    ck_assert_msg(!dc_blip_load(&before, MODEL, DC_CPU) && !dc_blip_load(&after, out, DC_CPU), "%s", dc_error());
    int vision = 0, text_changed = 0;
    for (int i = 0; i < before->params.n; i++) {
        const dc_param *a = before->params.p[i], *b = dc_params_find(&after->params, a->name);
        bool same = !memcmp(a->value.data, b->value.data, (size_t)a->value.numel * sizeof(float));
        if (!strncmp(a->name, "vision_model.", 13)) {
            ck_assert_msg(same, "%s changed", a->name);
            vision++;
        } else {
            text_changed += !same;
        }
    }
    ck_assert_int_gt(vision, 5);
    ck_assert_int_gt(text_changed, 10);
    dc_blip_free(before);
    dc_blip_free(after);
    tu_rmtemp();
}
END_TEST

/* The first step's loss of a run on `model` (learning rate 0), with `extra`
 * options (NULL-terminated, at most 2). */
static double first_loss(const char *model, const char *data, const char *out, const char *a, const char *b) {
    const char *args[] = {"train-caption", "--model", model, "--train-data-dir", data, "--output-dir", out,
                          "--max-train-steps", "1", "--train-batch-size", "4", "--learning-rate", "0",
                          "--device", "cpu", "--cache-dir", out, a, b, NULL};
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    char path[600];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    char *text = tu_read_file(path, 1 << 20, NULL);
    cJSON *j = cJSON_Parse(text);
    double loss = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss"));
    cJSON_Delete(j);
    free(text);
    return loss;
}

/* Without --label-smoothing the loss smooths by text_config's
 * label_smoothing (what transformers' text decoder reads), not the top
 * level's. */
START_TEST(test_smoothing_from_text_config) {
    tu_mkdtemp("tcsmooth");
    char data[512], model[512], path[600];
    snprintf(data, sizeof data, "%s", tu_path("data"));
    make_shapes(data);
    snprintf(model, sizeof model, "%s", tu_path("model"));
    ck_assert_int_eq(dc_mkdirs(model), 0);
    static const char *const files[] = {"config.json", "model.safetensors", "processor_config.json",
                                        "tokenizer.json", "tokenizer_config.json"};
    for (int i = 0; i < 5; i++) {
        size_t n;
        snprintf(path, sizeof path, MODEL "/%s", files[i]);
        char *bytes = tu_read_file(path, 1 << 24, &n);
        if (!i) { /* text_config.label_smoothing 0.3, the top level's 0 */
            cJSON *j = cJSON_Parse(bytes);
            cJSON_ReplaceItemInObject(cJSON_GetObjectItem(j, "text_config"), "label_smoothing",
                                      cJSON_CreateNumber(0.3));
            free(bytes);
            bytes = cJSON_Print(j);
            n = strlen(bytes);
            cJSON_Delete(j);
        }
        snprintf(path, sizeof path, "%s/%s", model, files[i]);
        ck_assert_int_eq(dc_write_file(path, bytes, n, false), 0);
        free(bytes);
    }
    double from_config = first_loss(model, data, tu_path("a"), NULL, NULL);
    double given = first_loss(MODEL, data, tu_path("b"), "--label-smoothing", "0.3");
    double none = first_loss(MODEL, data, tu_path("c"), NULL, NULL);
    ck_assert_msg(from_config == given && fabs(none - given) > 1e-3,
                  "losses %.9g (config 0.3), %.9g (given 0.3), %.9g (0)", from_config, given, none);
    tu_rmtemp();
}
END_TEST

START_TEST(test_user_errors) {
    const char *unet_option[] = {"train-caption", "--model", MODEL, "--train-data-dir", "x", "--output-dir", "y",
                                 "--resolution", "32", NULL};
    tu_run_result *r = tu_run_diffc(unet_option);
    ck_assert_msg(r->status == 2 && strstr(r->err, "--resolution is an option of diffc train, not of diffc "
                                                   "train-caption"), "%s", r->err);
    const char *caption_option[] = {"train", "--prompt", "a", NULL};
    r = tu_run_diffc(caption_option);
    ck_assert_msg(r->status == 2 && strstr(r->err, "--prompt is an option of diffc train-caption"), "%s", r->err);
    const char *no_output[] = {"train-caption", "--model", MODEL, "--train-data-dir", "x", NULL};
    tu_assert_user_error(tu_run_diffc(no_output), "no output folder: give --output-dir");
    tu_mkdtemp("tcerr");
    make_shapes(tu_path("data"));
    FILE *f = fopen(tu_path("data/metadata.jsonl"), "w"); /* the captions gone */
    fclose(f);
    char data[512], out[512];
    snprintf(data, sizeof data, "%s", tu_path("data"));
    snprintf(out, sizeof out, "%s", tu_path("out"));
    const char *uncaptioned[] = {"train-caption", "--model", MODEL, "--train-data-dir", data, "--output-dir", out,
                                 "--cache-dir", out, "--device", "cpu", NULL};
    tu_assert_user_error(tu_run_diffc(uncaptioned), "has no caption");
    struct stat st;
    ck_assert_msg(stat(out, &st) != 0, "a failed setup leaves no output folder");
    const char *long_prompt[] = {"train-caption", "--model", MODEL, "--train-data-dir", data, "--output-dir", out,
                                 "--prompt", "a picture of a big", "--max-length", "6", "--device", "cpu", NULL};
    tu_assert_user_error(tu_run_diffc(long_prompt), "leaves no room for a caption");
    tu_rmtemp();
}
END_TEST

/* ---- several ranks: `test_train_caption dist`, its own CTest entry ---- */

static const char *const mpirun2[] = {"mpirun", "-np", "2", "--oversubscribe", "--allow-run-as-root",
                                      "--bind-to", "none", "-x", "OMP_NUM_THREADS=1", NULL};

/* The loss column of metrics.jsonl. */
static int read_losses(const char *dir, double *loss, int max) {
    char path[600];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    char *text = tu_read_file(path, 1 << 20, NULL), *line = text;
    int n = 0;
    while (line && *line && n < max) {
        cJSON *j = cJSON_Parse(line);
        loss[n++] = cJSON_GetNumberValue(cJSON_GetObjectItem(j, "loss"));
        cJSON_Delete(j);
        line = strchr(line, '\n');
        line = line ? line + 1 : NULL;
    }
    free(text);
    return n;
}

/* Two ranks with batch 2 train as one process with batch 4: the same losses
 * and weights to float tolerance (every caption has as many tokens, so the
 * mean of the ranks' means is the batch's mean). */
START_TEST(test_two_ranks_match_one_big_batch) {
    tu_mkdtemp("tcdist");
    char data[512], one[512], two[512];
    snprintf(data, sizeof data, "%s", tu_path("data"));
    make_shapes(data);
    snprintf(one, sizeof one, "%s", tu_path("one"));
    snprintf(two, sizeof two, "%s", tu_path("two"));
    const char *args[] = {"train-caption", "--model", MODEL, "--train-data-dir", data, "--output-dir", one,
                          "--max-train-steps", "4", "--train-batch-size", "4", "--learning-rate", "3e-3",
                          "--lr-warmup-steps", "1", "--prompt", PROMPT, "--device", "cpu", "--cache-dir", one,
                          "--logging-steps", "1", NULL};
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    args[6] = args[20] = two;
    args[10] = "2";
    tu_spawn_diffc_under(mpirun2, args);
    r = tu_wait_diffc();
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    double a[4], b[4];
    ck_assert_int_eq(read_losses(one, a, 4), 4);
    ck_assert_int_eq(read_losses(two, b, 4), 4);
    for (int i = 0; i < 4; i++)
        ck_assert_msg(fabs(a[i] - b[i]) <= 1e-5 * fabs(a[i]), "step %d: loss %.9g vs %.9g", i + 1, a[i], b[i]);
    dc_blip *ma, *mb;
    ck_assert_msg(!dc_blip_load(&ma, one, DC_CPU) && !dc_blip_load(&mb, two, DC_CPU), "%s", dc_error());
    for (int i = 0; i < ma->params.n; i++) {
        const dc_param *p = ma->params.p[i], *q = dc_params_find(&mb->params, p->name);
        if (strstr(p->name, "key.bias")) /* a gradient of rounding noise (softmax ignores it), scaled up by AdamW */
            continue;
        check_close(q->value.data, p->value.data, p->value.numel, 1e-3, p->name);
    }
    dc_blip_free(ma);
    dc_blip_free(mb);
    tu_rmtemp();
}
END_TEST

/* Skipped (77) without MPI in this build or mpirun on the PATH. */
static int dist_main(void) {
    if (!tu_have_mpirun("test_train_caption dist"))
        return 77;
    Suite *s = suite_create("train_caption_dist");
    TCase *tc = tu_tcase(s, "dist", 120);
    tcase_add_test(tc, test_two_ranks_match_one_big_batch);
    return tu_run(s);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "dist"))
        return dist_main();
    Suite *s = suite_create("train_caption");
    TCase *tc = tu_tcase(s, "transformers", 60);
    tcase_add_test(tc, test_step_matches_transformers);
    tcase_add_test(tc, test_tokens_cut);
    tcase_add_test(tc, test_help);
    tc = tu_tcase(s, "runs", 240);
    tcase_add_test(tc, test_learns_shapes);
    tcase_add_test(tc, test_killed_and_resumed_is_bit_exact);
    tcase_add_test(tc, test_freeze_vision);
    tcase_add_test(tc, test_smoothing_from_text_config);
    tcase_add_test(tc, test_user_errors);
    return tu_run(s);
}
