/* `diffc caption` end to end against transformers 5.25
 * (scripts/make_caption_fixtures.py): a tiny random BLIP captioner folder
 * as save_pretrained writes it, captions of an image folder (RGB, RGBA,
 * gray, in subfolders, and a damaged file) for greedy search, 3 beams, a
 * prompt, and min_length with a repetition penalty, at a batch size drawn
 * per run; image files printed as FILE<TAB>caption; resuming a
 * metadata.jsonl cut short in the middle of a line, and a run killed
 * halfway; sampling reproducible
 * for a seed; user errors. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define MODEL "tests/fixtures/caption_tiny"
#define IMAGES "tests/fixtures/caption_images"
#define EXPECTED "tests/fixtures/caption_expected.json"

static const char *const NAMES[] = {"a/noise.png", "a/rgba.png", "b/gray.png"};

/* A fresh copy of the image folder in the test's temporary folder. */
static const char *copy_images(void) {
    tu_mkdtemp("cap");
    const char *sub[] = {"a", "b"};
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(dc_mkdirs(tu_path(sub[i])), 0);
    const char *files[] = {"a/noise.png", "a/rgba.png", "b/gray.png", "a/broken.png"};
    for (int i = 0; i < 4; i++) {
        char from[256];
        size_t n;
        snprintf(from, sizeof from, IMAGES "/%s", files[i]);
        char *data = tu_read_file(from, 1 << 20, &n);
        ck_assert_int_eq(dc_write_file(tu_path(files[i]), data, n, false), 0);
        free(data);
    }
    return tu_path("");
}

/* The caption of `name` in a metadata.jsonl text; NULL when absent. Fails
 * on a line that is not a JSON object or a name listed twice. */
static char *caption_in(const char *jsonl, const char *name) {
    char *found = NULL;
    for (const char *line = jsonl; *line;) {
        const char *nl = strchr(line, '\n');
        ck_assert_msg(nl != NULL, "a line without its newline: %s", line);
        cJSON *o = cJSON_ParseWithLength(line, (size_t)(nl - line));
        ck_assert_msg(cJSON_IsObject(o), "not a JSON object: %.*s", (int)(nl - line), line);
        const char *fn = cJSON_GetStringValue(cJSON_GetObjectItem(o, "file_name"));
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(o, "text"));
        ck_assert_ptr_nonnull(fn);
        ck_assert_ptr_nonnull(text);
        if (!strcmp(fn, name)) {
            ck_assert_msg(!found, "%s listed twice", name);
            found = strdup(text);
        }
        cJSON_Delete(o);
        line = nl + 1;
    }
    return found;
}

static void assert_captions(const char *jsonl, const cJSON *want, const char *run) {
    for (int i = 0; i < 3; i++) {
        char *got = caption_in(jsonl, NAMES[i]);
        const char *w = cJSON_GetStringValue(cJSON_GetObjectItem(want, NAMES[i]));
        ck_assert_msg(got && !strcmp(got, w), "%s, %s: \"%s\", transformers \"%s\"", run, NAMES[i],
                      got ? got : "(none)", w);
        free(got);
    }
    ck_assert_ptr_null(caption_in(jsonl, "a/broken.png"));
}

/* The command line of one recorded run; `batch` as text in buf. */
static int run_args(const char **args, const cJSON *options, const char *dir, char *batch) {
    int n = 0;
    args[n++] = "caption";
    args[n++] = "--model";
    args[n++] = MODEL;
    args[n++] = "--images";
    args[n++] = dir;
    args[n++] = "--batch-size";
    args[n++] = batch;
    static char values[4][32], flags[4][64];
    int k = 0;
    for (const cJSON *o = options->child; o && k < 4; o = o->next) {
        snprintf(flags[k], sizeof flags[k], "--%s", o->string);
        for (char *p = flags[k]; *p; p++)
            *p = *p == '_' ? '-' : *p;
        args[n++] = flags[k];
        if (cJSON_IsString(o))
            args[n++] = o->valuestring;
        else
            snprintf(values[k], sizeof values[k], "%g", o->valuedouble), args[n++] = values[k];
        k++;
    }
    args[n] = NULL;
    return n;
}

START_TEST(test_matches_transformers) {
    cJSON *all = dc_json_load(EXPECTED);
    ck_assert_msg(all != NULL, "%s", dc_error());
    for (const cJSON *run = cJSON_GetObjectItem(all, "runs")->child; run; run = run->next) {
        const char *dir = copy_images();
        char batch[16];
        snprintf(batch, sizeof batch, "%d", 1 + (int)(tu_next() % 4));
        const char *args[24];
        run_args(args, cJSON_GetObjectItem(run, "options"), dir, batch);
        tu_run_result *r = tu_run_diffc(args);
        ck_assert_msg(r->status == 0, "%s (batch %s): %s", run->string, batch, tu_tail(r->err));
        ck_assert_msg(strstr(r->err, "skipped: a/broken.png"), "%s", r->err);
        char *jsonl = tu_read_file(tu_path("metadata.jsonl"), 1 << 20, NULL);
        assert_captions(jsonl, cJSON_GetObjectItem(run, "captions"), run->string);
        free(jsonl);
        tu_rmtemp();
    }
    cJSON_Delete(all);
}
END_TEST

/* Files print FILE<TAB>caption, in the order given. */
START_TEST(test_files_print_tsv) {
    cJSON *all = dc_json_load(EXPECTED);
    const cJSON *want = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(all, "runs"), "greedy"), "captions");
    const char *args[] = {"caption", "--model", MODEL, "--images", IMAGES "/b/gray.png", IMAGES "/a/noise.png", NULL};
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    char expect[4096];
    snprintf(expect, sizeof expect, IMAGES "/b/gray.png\t%s\n" IMAGES "/a/noise.png\t%s\n",
             cJSON_GetStringValue(cJSON_GetObjectItem(want, "b/gray.png")),
             cJSON_GetStringValue(cJSON_GetObjectItem(want, "a/noise.png")));
    ck_assert_str_eq(r->out, expect);
    cJSON_Delete(all);
}
END_TEST

/* A run stopped while writing its second line: the next run drops the cut
 * line, keeps the first, captions the rest, and lists each image once. */
START_TEST(test_resume_after_cut_line) {
    cJSON *all = dc_json_load(EXPECTED);
    const cJSON *want = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(all, "runs"), "greedy"), "captions");
    const char *dir = copy_images();
    char out[512];
    snprintf(out, sizeof out, "%s/captions.jsonl", dir);
    const char *args[] = {"caption", "--model", MODEL, "--images", dir, "--output", out, NULL};
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    size_t n;
    char *full = tu_read_file(out, 1 << 20, &n);
    const char *second = strchr(full, '\n') + 1;
    size_t cut = (size_t)(second - full) + 1 + (size_t)(tu_next() % (strchr(second, '\n') - second - 1));
    ck_assert_int_eq(dc_write_file(out, full, cut, false), 0);
    r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "dropped a cut-off last line") && strstr(r->err, "1 image already captioned"), "%s",
                  r->err);
    char *again = tu_read_file(out, 1 << 20, NULL);
    ck_assert_int_eq(strncmp(again, full, (size_t)(second - full)), 0);
    assert_captions(again, want, "resumed");
    free(again);
    r = tu_run_diffc(args); /* nothing left: nothing loaded, nothing written */
    ck_assert_msg(r->status == 0 && strstr(r->err, "3 images already captioned"), "%s", r->err);
    again = tu_read_file(out, 1 << 20, &n);
    ck_assert_int_eq(n, strlen(again));
    free(again);
    free(full);
    tu_rmtemp();
    cJSON_Delete(all);
}
END_TEST

/* Sampling: one seed gives one text, another seed another. */
/* SIGKILL in the middle of a folder of copies of one image: the next run
 * captions what is left, and every image is listed once, with its caption. */
START_TEST(test_killed_run_loses_nothing) {
    cJSON *all = dc_json_load(EXPECTED);
    const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(
        cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(all, "runs"), "greedy"), "captions"), "a/noise.png"));
    enum { COPIES = 300 };
    tu_mkdtemp("capk");
    size_t n;
    char *png = tu_read_file(IMAGES "/a/noise.png", 1 << 20, &n);
    for (int i = 0; i < COPIES; i++) {
        char name[32];
        snprintf(name, sizeof name, "%03d.png", i);
        FILE *f = fopen(tu_path(name), "wb");
        ck_assert_ptr_nonnull(f);
        ck_assert_uint_eq(fwrite(png, 1, n, f), n);
        fclose(f);
    }
    free(png);
    const char *args[] = {"caption", "--model", MODEL, "--images", tu_path(""), "--batch-size", "1", NULL};
    tu_spawn_diffc(args);
    ck_assert_msg(tu_read_diffc_until("captioned 20/"), "no progress: %s", tu_wait_diffc()->err);
    int st = tu_kill_diffc(SIGKILL);
    tu_run_result *r = tu_run_diffc(args);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    char *text = tu_read_file(tu_path("metadata.jsonl"), 1 << 24, NULL);
    for (int i = 0; i < COPIES; i++) {
        char name[32];
        snprintf(name, sizeof name, "%03d.png", i);
        char *got = caption_in(text, name);
        ck_assert_msg(got && !strcmp(got, want), "%s: %s (killed: %d)", name, got ? got : "(none)",
                      WIFSIGNALED(st));
        free(got);
    }
    free(text);
    tu_rmtemp();
    cJSON_Delete(all);
}
END_TEST

/* A caption the user wrote, named "./a/noise.png", counts as done: it is
 * kept, not captioned again (the folder's reader refuses an image listed twice). */
START_TEST(test_resume_keeps_dot_slash_names) {
    const char *dir = copy_images();
    const char *mine = "{\"file_name\": \"./a/noise.png\", \"text\": \"my own words\"}\n";
    ck_assert_int_eq(dc_write_file(tu_path("metadata.jsonl"), mine, strlen(mine), false), 0);
    const char *args[] = {"caption", "--model", MODEL, "--images", dir, NULL};
    for (int run = 0; run < 2; run++) {
        tu_run_result *r = tu_run_diffc(args);
        ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
        ck_assert_msg(strstr(r->err, run ? "3 images already captioned" : "1 image already captioned"), "%s",
                      r->err);
    }
    char *text = tu_read_file(tu_path("metadata.jsonl"), 1 << 20, NULL);
    ck_assert_int_eq(strncmp(text, mine, strlen(mine)), 0);
    char *noise = caption_in(text, "a/noise.png"), *gray = caption_in(text, "b/gray.png");
    ck_assert_ptr_null(noise);
    ck_assert_ptr_nonnull(gray);
    free(gray);
    free(text);
    tu_rmtemp();
}
END_TEST

START_TEST(test_sampling_reproducible) {
    char seed[2][24];
    uint64_t base = tu_next() % 1000000;
    snprintf(seed[0], sizeof seed[0], "%llu", (unsigned long long)base);
    snprintf(seed[1], sizeof seed[1], "%llu", (unsigned long long)base + 1);
    char *out[3];
    for (int i = 0; i < 3; i++) {
        const char *args[] = {"caption", "--model", MODEL, "--images", IMAGES "/a/noise.png", IMAGES "/b/gray.png",
                              "--top-p", "0.9", "--seed", seed[i == 2], NULL};
        tu_run_result *r = tu_run_diffc(args);
        ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
        out[i] = strdup(r->out);
    }
    ck_assert_str_eq(out[0], out[1]);
    ck_assert_str_ne(out[0], out[2]);
    for (int i = 0; i < 3; i++)
        free(out[i]);
}
END_TEST

START_TEST(test_user_errors) {
    const char *no_model[] = {"caption", "--images", IMAGES, NULL};
    ck_assert_int_eq(tu_run_diffc(no_model)->status, 2);
    const char *no_images[] = {"caption", "--model", MODEL, NULL};
    ck_assert_int_eq(tu_run_diffc(no_images)->status, 2);
    const char *stray[] = {"caption", "--model", MODEL, "--batch-size", "2", "x.png", NULL};
    ck_assert_int_eq(tu_run_diffc(stray)->status, 2);
    const char *missing[] = {"caption", "--model", MODEL, "--images", "/nonexistent/x.png", NULL};
    tu_assert_user_error(tu_run_diffc(missing), "/nonexistent/x.png");
    const char *bad_model[] = {"caption", "--model", IMAGES, "--images", IMAGES "/a/noise.png", NULL};
    tu_assert_user_error(tu_run_diffc(bad_model), IMAGES);
    const char *long_prompt[] = {"caption", "--model", MODEL, "--images", IMAGES "/a/noise.png",
                                 "--prompt", "a picture of", "--max-length", "3", NULL};
    tu_assert_user_error(tu_run_diffc(long_prompt), "leaves none to generate");
    const char *too_long[] = {"caption", "--model", MODEL, "--images", IMAGES "/a/noise.png", "--max-length", "41", NULL};
    tu_assert_user_error(tu_run_diffc(too_long), "over the model's 40 positions");
    const char *beams_sample[] = {"caption", "--model", MODEL, "--images", IMAGES "/a/noise.png",
                                  "--num-beams", "2", "--top-p", "0.5", NULL};
    tu_assert_user_error(tu_run_diffc(beams_sample), "");
}
END_TEST

int main(void) {
    Suite *s = suite_create("caption");
    TCase *tc = tu_tcase(s, "transformers", 120);
    tcase_add_test(tc, test_matches_transformers);
    tcase_add_test(tc, test_files_print_tsv);
    tc = tu_tcase(s, "cli", 120);
    tcase_add_test(tc, test_resume_after_cut_line);
    tcase_add_test(tc, test_resume_keeps_dot_slash_names);
    tcase_add_test(tc, test_killed_run_loses_nothing);
    tcase_add_test(tc, test_sampling_reproducible);
    tcase_add_test(tc, test_user_errors);
    return tu_run(s);
}
