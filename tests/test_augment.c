/* `diffc augment` end to end, through the built binary, with the committed
 * tiny class-conditional model (tests/fixtures/unet_attn_class: 8x8 RGB, 5
 * class embeddings = 4 classes and "no class") on a fresh random image folder
 * of 4 classes: the class folders, the manifest's fields and the image counts;
 * a rerun rewrites nothing; a run killed midway and resumed (with a partial
 * manifest line) writes the same bytes as an uninterrupted one; other
 * settings in the same folder are refused; the --eval report; bad input is
 * one error line or a skipped file with a warning. Then the text mode, with
 * the tiny Stable Diffusion pipeline (tests/fixtures/sd_tiny, 16x16, 2 steps)
 * on a random folder of two classes with captions: prompts from the class
 * template and from captions (another column, combined), metadata.jsonl and
 * the captioned dataset it makes; the classifier filter at 0, 1 and between
 * two of its scores (checked against the classifier loaded here); a killed
 * and resumed filtered run; the errors of text options. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/dataset.h"
#include "data/image.h"
#include "infer/augment.h"

#include <cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODEL "tests/fixtures/unet_attn_class"
#define UNCONDITIONAL_MODEL "tests/fixtures/unet_legacy"
#define SIDE 8
#define PER_CLASS_REAL 3 /* real images per class */

static const char *const classes[] = {"bird", "cat", "dog", "fish"};
#define N_CLASSES 4

static void spill(const char *path, const char *text) {
    ck_assert_msg(dc_write_file(path, text, strlen(text), false) == 0, "%s", dc_error());
}

static void write_image(const char *path, int w, int h, int c) {
    dc_image img = tu_random_image(w, h, c);
    ck_assert_msg(dc_image_save_png(&img, path) == 0, "%s", dc_error());
    dc_image_free(&img);
}

/* A copy of tu_path(name) that outlives 8 more calls (good for 8 at a time). */
static const char *keep(const char *name) {
    static char kept[8][512];
    static int n;
    char *p = kept[n++ % 8];
    snprintf(p, sizeof kept[0], "%s", tu_path(name));
    return p;
}

/* tu_path(dir): per_class random images in each of the first n_classes class folders. */
static const char *make_folder(const char *dir, int n_classes, int per_class) {
    char sub[256];
    ck_assert_int_eq(mkdir(tu_path(dir), 0755), 0);
    for (int k = 0; k < n_classes; k++) {
        snprintf(sub, sizeof sub, "%s/%s", dir, classes[k]);
        ck_assert_int_eq(mkdir(tu_path(sub), 0755), 0);
        for (int i = 0; i < per_class; i++) {
            snprintf(sub, sizeof sub, "%s/%s/%d.png", dir, classes[k], i);
            write_image(tu_path(sub), SIDE, SIDE, 3);
        }
    }
    return keep(dir);
}

static const char *make_dataset(const char *dir, int n_classes) {
    return make_folder(dir, n_classes, PER_CLASS_REAL);
}

/* `diffc augment --model MODEL --cache-dir ... ARGS...` */
#define AUGMENT(...)                                                                                         \
    tu_run_diffc((const char *const[]){"augment", "--cache-dir", tu_path("cache"), "--num-inference-steps", "4", \
                                       __VA_ARGS__, NULL})

static void assert_ok(const tu_run_result *r) {
    ck_assert_msg(r->status == 0, "exit %d, stderr: %s", r->status, tu_tail(r->err));
}

/* The manifest's lines as JSON objects; *n of them. */
static cJSON **read_manifest(const char *out, int *n) {
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.jsonl", out);
    size_t len;
    char *text = dc_read_file(path, 1 << 24, &len);
    ck_assert_msg(text, "%s", dc_error());
    cJSON **lines = calloc(len + 1, sizeof *lines);
    *n = 0;
    for (char *p = text, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        ck_assert_msg(nl, "a partial last line: %s", p);
        *nl = '\0';
        ck_assert_msg((lines[*n] = cJSON_Parse(p)) != NULL, "not JSON: %s", p);
        ++*n;
    }
    free(text);
    return lines;
}

static void free_manifest(cJSON **lines, int n) {
    for (int i = 0; i < n; i++)
        cJSON_Delete(lines[i]);
    free(lines);
}

static const cJSON *field(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    ck_assert_msg(v, "no %s in %s", key, cJSON_PrintUnformatted(o));
    return v;
}

/* Every line's file exists in its class's folder, at 8x8 RGB; a variation's
 * source is an image of its class (the real images are in class order,
 * counts[k] of class k). Counts the gen_ and var_ files. */
static void check_manifest(const char *out, const int *counts, int *gen, int *var, double strength) {
    int n;
    cJSON **lines = read_manifest(out, &n);
    *gen = *var = 0;
    for (int i = 0; i < n; i++) {
        const char *file = field(lines[i], "file")->valuestring, *cls = field(lines[i], "class")->valuestring;
        int label = field(lines[i], "label")->valueint;
        ck_assert(label >= 0 && label < N_CLASSES);
        ck_assert_str_eq(cls, classes[label]);
        ck_assert_msg(!strncmp(file, cls, strlen(cls)) && file[strlen(cls)] == '/', "%s not in %s/", file, cls);
        const cJSON *source = field(lines[i], "source"), *s = field(lines[i], "strength");
        bool is_var = strstr(file, "/var_") != NULL;
        ck_assert_msg(is_var || strstr(file, "/gen_"), "%s", file);
        if (is_var) {
            int first = 0;
            for (int k = 0; k < label; k++)
                first += counts[k];
            ck_assert_msg(cJSON_IsNumber(source) && source->valueint >= first &&
                              source->valueint < first + counts[label],
                          "%s: source %d", file, source->valueint);
            ck_assert(cJSON_IsNumber(s) && s->valuedouble == strength);
        } else
            ck_assert(cJSON_IsNull(source) && cJSON_IsNull(s));
        ck_assert(cJSON_IsNumber(field(lines[i], "seed")) && cJSON_IsNumber(field(lines[i], "stream")));
        ck_assert(field(lines[i], "guidance")->valuedouble == 2);
        *gen += !is_var;
        *var += is_var;
        char path[512];
        snprintf(path, sizeof path, "%s/%s", out, file);
        dc_image img;
        ck_assert_msg(dc_image_load(&img, path) == 0, "%s", dc_error());
        ck_assert(img.w == SIDE && img.h == SIDE && img.c == 3);
        dc_image_free(&img);
    }
    free_manifest(lines, n);
}

static int count_pngs(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "find '%s' -name '*.png' | wc -l", dir);
    FILE *p = popen(cmd, "r");
    int n = -1;
    ck_assert(p && fscanf(p, "%d", &n) == 1);
    pclose(p);
    return n;
}

/* ---- outputs ---- */

START_TEST(test_writes_and_skips) {
    tu_mkdtemp("augment");
    const char *data = make_dataset("data", N_CLASSES);
    write_image(tu_path("data/cat/wide_gray.png"), 12, 10, 1); /* converted as training does */
    ck_assert_int_eq(rename(tu_path("data/dog/2.png"), tu_path("data/dog/broken.png")), 0);
    spill(tu_path("data/dog/broken.png"), "not a png"); /* skipped with a warning */
    const char *out = keep("out");
    tu_run_result *r = AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", out, "--per-class", "3",
                               "--variations", "2", "--strength", "0.6", "--guidance-scale", "2", "--batch-size", "5");
    assert_ok(r);
    ck_assert_msg(strstr(r->err, "diffc: warning: ") && strstr(r->err, "broken.png"), "%s", tu_tail(r->err));
    int real = N_CLASSES * PER_CLASS_REAL, want = 3 * N_CLASSES + 2 * real;
    char line[128];
    snprintf(line, sizeof line, "%d images to make", want);
    ck_assert_msg(strstr(r->out, line) && strstr(r->out, "0 already"), "%s", r->out);
    for (int k = 0; k < N_CLASSES; k++) {
        char dir[64];
        snprintf(dir, sizeof dir, "out/%s", classes[k]);
        struct stat st;
        ck_assert_msg(stat(tu_path(dir), &st) == 0 && S_ISDIR(st.st_mode), "no %s", dir);
    }
    int gen, var;
    const int counts[N_CLASSES] = {3, 4, 2, 3}; /* cat: + wide_gray.png; dog: - broken.png */
    check_manifest(out, counts, &gen, &var, 0.6);
    ck_assert_int_eq(gen, 3 * N_CLASSES);
    ck_assert_int_eq(var, 2 * real);
    ck_assert_int_eq(count_pngs(out), want);

    /* a rerun makes nothing and rewrites nothing */
    struct stat before, after;
    ck_assert_int_eq(stat(tu_path("out/fish/var_000011_01.png"), &before), 0);
    r = AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", out, "--per-class", "3", "--variations",
                "2", "--strength", "0.6", "--guidance-scale", "2", "--batch-size", "5");
    assert_ok(r);
    snprintf(line, sizeof line, "%d already", want);
    ck_assert_msg(strstr(r->out, line) && !strstr(r->out, "wrote"), "%s", r->out);
    ck_assert_int_eq(stat(tu_path("out/fish/var_000011_01.png"), &after), 0);
    ck_assert(before.st_ino == after.st_ino && before.st_mtim.tv_sec == after.st_mtim.tv_sec &&
              before.st_mtim.tv_nsec == after.st_mtim.tv_nsec);
    int n = 0;
    free_manifest(read_manifest(out, &n), n);
    ck_assert_int_eq(n, want);

    /* other settings in the same folder: refused, nothing changed */
    ck_assert_int_eq(remove(tu_path("data/dog/broken.png")), 0); /* its warning would make two lines */
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", out, "--per-class",
                                 "3", "--guidance-scale", "3"),
                         "was made with other settings");
    /* more per class later: only the new ones are made */
    r = AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", out, "--per-class", "4",
                "--guidance-scale", "2");
    assert_ok(r);
    ck_assert_msg(strstr(r->out, "wrote 4 image(s)"), "%s", r->out);
    ck_assert_int_eq(count_pngs(out), want + N_CLASSES);
    tu_rmtemp();
}
END_TEST

static bool same_bytes(const char *a, const char *b) {
    size_t na, nb;
    char *ta = dc_read_file(a, 1 << 20, &na), *tb = dc_read_file(b, 1 << 20, &nb);
    bool same = ta && tb && na == nb && !memcmp(ta, tb, na);
    free(ta);
    free(tb);
    return same;
}

/* Kill a run midway (SIGKILL), leave a partial manifest line, resume with
 * another batch size: the same files, byte for byte, as one whole run. */
START_TEST(test_kill_and_resume) {
    tu_mkdtemp("augment");
    const char *data = make_dataset("data", N_CLASSES);
    const char *whole = keep("whole"), *cut = keep("cut"), *cache = keep("cache");
#define ARGS(out, batch)                                                                                     \
    "augment", "--cache-dir", cache, "--num-inference-steps", "20", "--model", MODEL, "--train-data-dir", data, \
        "--output-dir", out, "--per-class", "3", "--variations", "1", "--guidance-scale", "2", "--batch-size", batch
    assert_ok(tu_run_diffc((const char *const[]){ARGS(whole, "7"), NULL}));
    tu_spawn_diffc((const char *const[]){ARGS(cut, "1"), NULL});
    ck_assert_msg(tu_read_diffc_until("augment: 2/"), "no progress: %s", tu_wait_diffc()->err);
    int st = tu_kill_diffc(SIGKILL);
    ck_assert_msg(WIFSIGNALED(st), "finished before the kill: status %d", st);
    char path[512];
    snprintf(path, sizeof path, "%s/manifest.jsonl", cut);
    FILE *f = fopen(path, "a");
    ck_assert(f && fputs("{\"file\": \"cat/gen_000", f) >= 0 && fclose(f) == 0);
    tu_run_result *r = tu_run_diffc((const char *const[]){ARGS(cut, "3"), NULL});
    assert_ok(r);
    ck_assert_msg(strstr(r->err, "dropped a partial last line"), "%s", tu_tail(r->err));
    ck_assert_msg(!strstr(r->out, " 0 already") && strstr(r->out, "wrote"), "%s", r->out);
    int n_whole, n_cut;
    cJSON **lw = read_manifest(whole, &n_whole), **lc = read_manifest(cut, &n_cut);
    ck_assert_int_eq(n_whole, 3 * N_CLASSES + N_CLASSES * PER_CLASS_REAL);
    ck_assert_int_eq(n_cut, n_whole);
    for (int i = 0; i < n_whole; i++) {
        const char *file = field(lw[i], "file")->valuestring;
        char a[512], b[512];
        snprintf(a, sizeof a, "%s/%s", whole, file);
        snprintf(b, sizeof b, "%s/%s", cut, file);
        ck_assert_msg(same_bytes(a, b), "%s differs after the resume", file);
    }
    ck_assert_int_eq(count_pngs(cut), n_whole);
    free_manifest(lw, n_whole);
    free_manifest(lc, n_cut);
    tu_rmtemp();
#undef ARGS
}
END_TEST

/* The probability classifier c gives class `label` of the file out/file (defined with the filters' tests). */
static double score_file(dc_augment_classifier *c, const char *out, const char *file, int label);

/* --unlabelled: images of the unconditional model, each in the folder of the
 * class the saved classifier of the real images finds most probable, with
 * that probability in the manifest (checked against the classifier loaded
 * here); a rerun finds them in their folders; a filter above 1 rejects them
 * all, except with --eval, where each subset's classifier labels and filters
 * them again (none then reach the real+synthetic column). */
START_TEST(test_unlabelled) {
    tu_mkdtemp("augment");
    const char *data = make_dataset("data", N_CLASSES), *out = keep("out"), *none = keep("none"),
               *eval = keep("eval");
#define UNLABELLED_ARGS(o) \
    "--model", UNCONDITIONAL_MODEL, "--train-data-dir", data, "--output-dir", o, "--unlabelled", "6", "--eval-steps", \
        "20", "--eval-batch-size", "4"
    tu_run_result *r = AUGMENT(UNLABELLED_ARGS(out));
    assert_ok(r);
    ck_assert_msg(strstr(r->out, "6 unlabelled") && strstr(r->out, "pseudo-labels: training a classifier"), "%s",
                  r->out);
    char classifier[512];
    snprintf(classifier, sizeof classifier, "%s/filter_classifier.safetensors", out);
    dc_dataset real;
    ck_assert_msg(dc_dataset_open(&real, data, &(dc_dataset_options){.cache_dir = tu_path("cache")}) == 0, "%s",
                  dc_error());
    dc_augment_train_options to = {.batch_size = 4};
    dc_augment_classifier c = {0};
    ck_assert_msg(dc_augment_classifier_load(&c, &real, classifier, &to) == 0, "%s", dc_error());
    int n;
    cJSON **lines = read_manifest(out, &n);
    ck_assert_int_eq(n, 6);
    for (int i = 0; i < n; i++) {
        const char *file = field(lines[i], "file")->valuestring;
        int label = field(lines[i], "label")->valueint;
        char want[64];
        snprintf(want, sizeof want, "%s/unl_%05d.png", classes[label], i);
        ck_assert_str_eq(file, want);
        ck_assert(cJSON_IsTrue(field(lines[i], "pseudo")) && cJSON_IsNull(field(lines[i], "source")));
        double p = score_file(&c, out, file, label), conf = field(lines[i], "confidence")->valuedouble;
        ck_assert_msg(fabs(p - conf) < 1e-6, "%s: %g vs %g", file, p, conf);
        for (int k = 0; k < N_CLASSES; k++)
            ck_assert_msg(k == label || score_file(&c, out, file, k) <= p, "%s: class %d is more probable", file, k);
    }
    free_manifest(lines, n);
    dc_augment_classifier_free(&c);
    dc_dataset_close(&real);
    r = AUGMENT(UNLABELLED_ARGS(out));
    assert_ok(r);
    ck_assert_msg(strstr(r->out, "6 already") && !strstr(r->out, "wrote"), "%s", r->out);

    r = AUGMENT(UNLABELLED_ARGS(none), "--filter-threshold", "1", "--filter-classifier", classifier);
    assert_ok(r);
    ck_assert_msg(strstr(r->out, "kept 0 of 6 images"), "%s", r->out);
    ck_assert_int_eq(count_pngs(none), 0);
    r = AUGMENT(UNLABELLED_ARGS(eval), "--filter-threshold", "1", "--filter-classifier", classifier, "--eval",
                "--eval-data-dir", data, "--real-fraction", "1");
    assert_ok(r);
    ck_assert_int_eq(count_pngs(eval), 6);
    int real_n, syn;
    double f;
    const char *row = strstr(r->out, "\n             1 ");
    ck_assert_msg(row && sscanf(row, "%lf %d %d", &f, &real_n, &syn) == 3, "%s", r->out);
    ck_assert(real_n == N_CLASSES * PER_CLASS_REAL && syn == 0);
    /* a class-conditional model makes them with its null class */
    r = AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", tu_path("conditional"), "--unlabelled",
                "2", "--filter-classifier", classifier, "--filter-threshold", "0");
    assert_ok(r);
    ck_assert_int_eq(count_pngs(tu_path("conditional")), 2);
#undef UNLABELLED_ARGS
    tu_rmtemp();
}
END_TEST

START_TEST(test_eval) {
    tu_mkdtemp("augment");
    const char *data = make_dataset("data", N_CLASSES), *test = make_dataset("test", N_CLASSES);
    tu_run_result *r = AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", tu_path("out"),
                               "--per-class", "2", "--variations", "1", "--eval", "--eval-data-dir", test,
                               "--real-fraction", "0.5,1", "--eval-steps", "3", "--eval-batch-size", "4");
    assert_ok(r);
    ck_assert_msg(strstr(r->out, "real-only") && strstr(r->out, "real+synthetic") && strstr(r->out, "CAS") &&
                      strstr(r->out, "3 steps of batch 4") && strstr(r->out, "test: 12 images"),
                  "%s", r->out);
    /* fraction 0.5: round(1.5) = 2 of each class's 3, with their 2 variations
     * and the 8 class-conditional images; 1: all 12 real and 12 + 8 synthetic */
    double f, a, sa, b, sb, c, sc;
    int real, syn;
    const char *row = strstr(r->out, "\n           0.5 ");
    ck_assert_msg(row && sscanf(row, "%lf %d %d %lf ± %lf %lf ± %lf %lf ± %lf", &f, &real, &syn, &a, &sa, &b, &sb, &c,
                                &sc) == 9,
                  "%s", r->out);
    ck_assert(real == 8 && syn == 16 && a >= 0 && a <= 100 && b >= 0 && b <= 100 && c >= 0 && c <= 100);
    ck_assert(sa == 0 && sb == 0 && sc == 0);
    row = strstr(r->out, "\n             1 ");
    ck_assert_msg(row && sscanf(row, "%lf %d %d %lf ± %lf %lf ± %lf", &f, &real, &syn, &a, &sa, &b, &sb) == 7,
                  "%s", r->out);
    ck_assert(real == 12 && syn == 20);
    /* the judge: trained on the 12 real images and saved; its table covers all 20 synthetic images */
    ck_assert_msg(strstr(r->out, "judge: training a classifier on the 12 real images"), "%s", r->out);
    row = strstr(r->out, "\nall ");
    int n;
    double agree, fd_syn, fd_real;
    ck_assert_msg(row && sscanf(row, " all %d %lf%% %lf %lf", &n, &agree, &fd_syn, &fd_real) == 4, "%s", r->out);
    ck_assert_msg(n == 20 && agree >= 0 && agree <= 100 && fd_syn >= 0 && fd_real >= 0, "%s", r->out);
    /* each confusion row sums to 100% */
    for (int k = 0; k < N_CLASSES; k++) {
        char head[64];
        double p[N_CLASSES], sum = 0;
        snprintf(head, sizeof head, "\n%-20s", classes[k]);
        const char *line = strstr(strstr(r->out, "quality: the judge's class"), head);
        ck_assert_msg(line && sscanf(line + strlen(head), "%lf %lf %lf %lf", &p[0], &p[1], &p[2], &p[3]) == 4, "%s",
                      r->out);
        for (int j = 0; j < N_CLASSES; j++)
            sum += p[j];
        ck_assert_msg(fabs(sum - 100) < 0.5, "%s", r->out);
    }

    /* --vary-eval-subsets: variations only of the 2 images per class of the largest fraction's subset,
     * all of them in the subset --eval then trains on */
    r = AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", tu_path("subsets"), "--variations", "1",
                "--guidance-scale", "2", "--vary-eval-subsets", "--eval", "--eval-data-dir", test, "--real-fraction", "0.5,0.25",
                "--eval-steps", "2", "--eval-batch-size", "4");
    assert_ok(r);
    int gen, var, counts[N_CLASSES] = {PER_CLASS_REAL, PER_CLASS_REAL, PER_CLASS_REAL, PER_CLASS_REAL};
    check_manifest(tu_path("subsets"), counts, &gen, &var, 0.5);
    ck_assert_msg(gen == 0 && var == 2 * N_CLASSES, "%d variations", var);
    row = strstr(r->out, "\n           0.5 ");
    ck_assert_msg(row && sscanf(row, "%lf %d %d", &f, &real, &syn) == 3 && real == 8 && syn == 8, "%s", r->out);
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", tu_path("subsets"),
                                 "--eval", "--eval-data-dir", test, "--synthetic-prob", "1.5"),
                         "--synthetic-prob '1.5'");

    /* --eval alone: the manifest's images, nothing made */
    r = AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", tu_path("out"), "--eval",
                "--eval-data-dir", test, "--real-fraction", "1", "--eval-steps", "2", "--eval-batch-size", "4");
    assert_ok(r);
    row = strstr(r->out, "\n             1 ");
    ck_assert_msg(row && sscanf(row, "%lf %d %d", &f, &real, &syn) == 3 && syn == 20, "%s", r->out);

    const char *other = make_dataset("other", 3);
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", tu_path("out"),
                                 "--eval", "--eval-data-dir", other, "--eval-steps", "1"),
                         "are not the 4 classes");
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", tu_path("out"),
                                 "--per-class", "1", "--eval", "--eval-data-dir", test, "--real-fraction", "0,1"),
                         "--real-fraction '0,1'");
    tu_rmtemp();
}
END_TEST


/* ---- the measurements of --eval ---- */

/* The Fréchet distance against closed forms: a fit with itself is 0; two
 * Gaussians with commuting covariances (Q diag(a) Q^T, Q diag(b) Q^T for a
 * random rotation Q) are |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2 apart; and
 * in 2-D, where tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = S1^1/2 S2
 * S1^1/2 (tr M = tr S1 S2, det M = det S1 det S2), any two. */
START_TEST(test_frechet) {
    enum { N = 300, D = 6 };
    double *x = malloc(N * D * sizeof *x), mu[D], S[D * D], fd;
    for (int i = 0; i < N * D; i++)
        x[i] = tu_normal() * (1 + i % D) + i % D;
    dc_augment_gaussian_fit(N, D, x, mu, S);
    ck_assert_msg(dc_augment_frechet(D, mu, S, mu, S, &fd) == 0, "%s", dc_error());
    ck_assert_msg(fabs(fd) < 1e-8, "%g", fd);
    free(x);

    double q[D * D], a[D], b[D], mu1[D], mu2[D], S1[D * D], S2[D * D], want = 0;
    for (int i = 0; i < D * D; i++) /* Gram-Schmidt on random rows */
        q[i] = tu_normal();
    for (int i = 0; i < D; i++) {
        for (int j = 0; j < i; j++) {
            double dot = 0;
            for (int k = 0; k < D; k++)
                dot += q[i * D + k] * q[j * D + k];
            for (int k = 0; k < D; k++)
                q[i * D + k] -= dot * q[j * D + k];
        }
        double norm = 0;
        for (int k = 0; k < D; k++)
            norm += q[i * D + k] * q[i * D + k];
        for (int k = 0; k < D; k++)
            q[i * D + k] /= sqrt(norm);
        a[i] = tu_uniform(0.1, 3), b[i] = tu_uniform(0.1, 3);
        mu1[i] = tu_normal(), mu2[i] = tu_normal();
        want += (mu1[i] - mu2[i]) * (mu1[i] - mu2[i]) + (sqrt(a[i]) - sqrt(b[i])) * (sqrt(a[i]) - sqrt(b[i]));
    }
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            S1[i * D + j] = S2[i * D + j] = 0;
            for (int k = 0; k < D; k++)
                S1[i * D + j] += q[k * D + i] * a[k] * q[k * D + j], S2[i * D + j] += q[k * D + i] * b[k] * q[k * D + j];
        }
    ck_assert_msg(dc_augment_frechet(D, mu1, S1, mu2, S2, &fd) == 0, "%s", dc_error());
    ck_assert_msg(fabs(fd - want) < 1e-8 * (1 + want), "%g vs %g", fd, want);

    double s1[4], s2[4], m1[2] = {tu_normal(), tu_normal()}, m2[2] = {tu_normal(), tu_normal()};
    for (int k = 0; k < 2; k++) { /* S = L L^T, L random lower triangular */
        double *s = k ? s2 : s1, l0 = tu_uniform(0.5, 2), l1 = tu_normal(), l2 = tu_uniform(0.5, 2);
        s[0] = l0 * l0, s[1] = s[2] = l0 * l1, s[3] = l1 * l1 + l2 * l2;
    }
    double tr12 = s1[0] * s2[0] + 2 * s1[1] * s2[1] + s1[3] * s2[3];
    double det = (s1[0] * s1[3] - s1[1] * s1[1]) * (s2[0] * s2[3] - s2[1] * s2[1]);
    want = (m1[0] - m2[0]) * (m1[0] - m2[0]) + (m1[1] - m2[1]) * (m1[1] - m2[1]) + s1[0] + s1[3] + s2[0] + s2[3] -
           2 * sqrt(tr12 + 2 * sqrt(det));
    ck_assert_msg(dc_augment_frechet(2, m1, s1, m2, s2, &fd) == 0, "%s", dc_error());
    ck_assert_msg(fabs(fd - want) < 1e-9 * (1 + want), "%g vs %g", fd, want);
    ck_assert_int_eq(dc_augment_frechet(0, m1, s1, m2, s2, &fd), -1);
}
END_TEST

/* Every output of the standard augmentation is one of the 2 x 25 flips and
 * shifts of its input, computed here; over many images each of them turns up. */
START_TEST(test_flip_shift) {
    enum { H = 5, W = 7, C = 2, SHIFTS = 2 * DC_AUGMENT_SHIFT + 1 };
    float src[H * W * C], dst[H * W * C];
    for (int i = 0; i < H * W * C; i++)
        src[i] = (float)tu_normal();
    int seen[2][SHIFTS][SHIFTS] = {{{0}}};
    uint64_t seed = tu_next();
    for (uint64_t k = 0; k < 2000; k++) {
        dc_augment_flip_shift(H, W, C, dst, src, seed, k);
        int matches = 0;
        for (int f = 0; f < 2; f++)
            for (int dy = -DC_AUGMENT_SHIFT; dy <= DC_AUGMENT_SHIFT; dy++)
                for (int dx = -DC_AUGMENT_SHIFT; dx <= DC_AUGMENT_SHIFT; dx++) {
                    bool same = true;
                    for (int y = 0; same && y < H; y++)
                        for (int x = 0; same && x < W; x++) {
                            int sy = y + dy < 0 ? 0 : y + dy > H - 1 ? H - 1 : y + dy;
                            int sx = x + dx < 0 ? 0 : x + dx > W - 1 ? W - 1 : x + dx;
                            sx = f ? W - 1 - sx : sx;
                            for (int c = 0; c < C; c++)
                                same = same && dst[(y * W + x) * C + c] == src[(sy * W + sx) * C + c];
                        }
                    if (same)
                        matches++, seen[f][dy + DC_AUGMENT_SHIFT][dx + DC_AUGMENT_SHIFT]++;
                }
        ck_assert_int_eq(matches, 1);
    }
    for (int f = 0; f < 2; f++)
        for (int i = 0; i < SHIFTS * SHIFTS; i++)
            ck_assert_msg(seen[f][i / SHIFTS][i % SHIFTS] > 0, "flip %d shift %d never drawn", f, i);
}
END_TEST

/* The synthetic set: PNG copies of the real images, in the dataset's order. */
static dc_synthetic copies_of(const dc_dataset *ds) {
    dc_synthetic syn = {.n = ds->count};
    syn.paths = calloc((size_t)ds->count, sizeof *syn.paths);
    syn.labels = malloc((size_t)ds->count * sizeof *syn.labels);
    syn.source = malloc((size_t)ds->count * sizeof *syn.source);
    syn.pseudo = calloc((size_t)ds->count, sizeof *syn.pseudo);
    for (int64_t i = 0; i < ds->count; i++) {
        char name[64];
        snprintf(name, sizeof name, "copy_%" PRId64 ".png", i);
        syn.paths[i] = strdup(tu_path(name));
        dc_image img = {.w = ds->w, .h = ds->h, .c = ds->c, 
                       .px = (uint8_t *)ds->pixels + i * ds->w * ds->h * ds->c}; /* only read */
        ck_assert_msg(dc_image_save_png(&img, syn.paths[i]) == 0, "%s", dc_error());
        syn.labels[i] = ds->labels[i], syn.source[i] = -1;
    }
    return syn;
}

static void synthetic_free(dc_synthetic *syn) {
    for (int64_t i = 0; i < syn->n; i++)
        free(syn->paths[i]);
    free(syn->paths), free(syn->labels), free(syn->source), free(syn->pseudo);
}

static bool same(double a, double b) {
    return a == b || (isnan(a) && isnan(b));
}

static bool same_scores(const dc_augment_scores *a, const dc_augment_scores *b) {
    return same(a->real, b->real) && same(a->real_std, b->real_std) && same(a->mixed, b->mixed) && same(a->cas, b->cas);
}

/* With the synthetic images copies of the real ones in the same order, the
 * classifier of the synthetic images alone is the real-only one: CAS equals
 * its accuracy; --synthetic-prob 1 trains on them alone too, 0 on the real
 * ones alone. The same seed gives the same numbers, other seeds other ones;
 * standard augmentation leaves the real-only column as it was. */
START_TEST(test_eval_scores) {
    tu_mkdtemp("augment_scores");
    const char *data = make_folder("data", N_CLASSES, 6), *test = make_folder("test", N_CLASSES, 10);
    dc_dataset ds;
    ck_assert_msg(dc_dataset_open(&ds, data, &(dc_dataset_options){.cache_dir = tu_path("cache")}) == 0, "%s",
                  dc_error());
    dc_synthetic syn = copies_of(&ds);
    dc_augment_eval_options o = {.test_dir = test,
                                 .cache_dir = tu_path("cache"),
                                 .fractions = "1",
                                 .seeds = 1,
                                 .synthetic_prob = NAN,
                                 .pseudo_threshold = NAN,
                                 .train = {.steps = 6, .batch_size = 4, .learning_rate = 0.01, .seed = tu_next() % 1000}};
    dc_augment_scores a, b, p1, p0, seeds[3], aug;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, &a) == 0, "%s", dc_error());
    ck_assert_msg(a.cas == a.real && isnan(a.real_std) && a.real >= 0 && a.real <= 1, "%g %g", a.cas, a.real);
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, &b) == 0, "%s", dc_error());
    ck_assert(same_scores(&a, &b));

    o.synthetic_prob = 1;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, &p1) == 0, "%s", dc_error());
    o.synthetic_prob = 0;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, &p0) == 0, "%s", dc_error());
    ck_assert(p1.mixed == p1.cas && p0.mixed == p0.real);

    o.synthetic_prob = NAN, o.seeds = 3;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, seeds) == 0, "%s", dc_error());
    ck_assert(same_scores(&seeds[0], &a));
    ck_assert(!same_scores(&seeds[1], &a) || !same_scores(&seeds[2], &a));
    ck_assert(seeds[1].cas == seeds[1].real && seeds[2].cas == seeds[2].real);

    o.seeds = 1, o.train.augment = true;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, &aug) == 0, "%s", dc_error());
    ck_assert(aug.real == a.real && !isnan(aug.real_std) && aug.cas == a.cas);

    /* Other labels change the scores of labelled copies, not of pseudo-labelled
     * ones (the real+std classifier labels them again); a threshold of 1 keeps
     * none of them: real+synthetic is real+std, and CAS has nothing to train on.
     * Three seeds: on these random images one accuracy can match by chance. */
    dc_augment_scores labelled[3], shifted[3], p_true[3], p_shifted[3], p_none;
    o.seeds = 3;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, labelled) == 0, "%s", dc_error());
    for (int64_t i = 0; i < syn.n; i++)
        syn.labels[i] = (ds.labels[i] + 1) % N_CLASSES;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, shifted) == 0, "%s", dc_error());
    ck_assert(!same_scores(&shifted[0], &labelled[0]) || !same_scores(&shifted[1], &labelled[1]) ||
              !same_scores(&shifted[2], &labelled[2]));
    for (int64_t i = 0; i < syn.n; i++)
        syn.pseudo[i] = true;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, p_shifted) == 0, "%s", dc_error());
    for (int64_t i = 0; i < syn.n; i++)
        syn.labels[i] = ds.labels[i];
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, p_true) == 0, "%s", dc_error());
    for (int s = 0; s < 3; s++)
        ck_assert(same_scores(&p_true[s], &p_shifted[s]) && p_true[s].real_std == labelled[s].real_std);
    o.seeds = 1, o.pseudo_threshold = 1;
    ck_assert_msg(dc_augment_evaluate(&ds, &syn, &o, NULL, &p_none) == 0, "%s", dc_error());
    ck_assert(p_none.mixed == p_none.real_std && isnan(p_none.cas));
    o.seeds = 0;
    ck_assert_int_eq(dc_augment_evaluate(&ds, &syn, &o, NULL, &aug), -1);
    synthetic_free(&syn);
    dc_dataset_close(&ds);
    tu_rmtemp();
}
END_TEST

/* ---- errors ---- */

/* Exit 1, the last stderr line "diffc: error: ...<want>...", any before it warnings. */
static void assert_error_after_warnings(const tu_run_result *r, const char *want) {
    ck_assert_msg(r->status == 1, "exit %d, stderr: %s", r->status, tu_tail(r->err));
    const char *last = r->err;
    for (const char *p = r->err; *p; p = strchr(p, '\n') + 1) {
        ck_assert_msg(strchr(p, '\n'), "no final newline: %s", tu_tail(r->err));
        last = p;
        if (strchr(p, '\n')[1])
            ck_assert_msg(!strncmp(p, "diffc: warning: ", 16), "not a warning: %s", tu_tail(r->err));
    }
    ck_assert_msg(!strncmp(last, "diffc: error: ", 14) && strstr(last, want), "'%s' lacks '%s'", tu_tail(r->err),
                  want);
}

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *text = dc_read_file(from, 1 << 24, &n);
    ck_assert_msg(text && dc_write_file(to, text, n, false) == 0, "%s", dc_error());
    free(text);
}

START_TEST(test_bad_input) {
    tu_mkdtemp("augment");
    const char *data = make_dataset("data", N_CLASSES), *o = keep("o");
    /* a model folder without weights, and one whose config the weights do not fit */
    ck_assert_int_eq(mkdir(tu_path("m"), 0755), 0);
    copy_file(MODEL "/config.json", tu_path("m/config.json"));
    tu_assert_user_error(AUGMENT("--model", tu_path("m"), "--train-data-dir", data, "--output-dir", o,
                                 "--per-class", "1"),
                         "no diffusion_pytorch_model.safetensors");
    copy_file(MODEL "/diffusion_pytorch_model.safetensors", tu_path("m/diffusion_pytorch_model.safetensors"));
    size_t n;
    char *cfg = tu_read_file(MODEL "/config.json", 1 << 20, &n), *at = strstr(cfg, "\"in_channels\": 3");
    ck_assert_ptr_nonnull(at);
    at[strlen("\"in_channels\": ")] = '1';
    spill(tu_path("m/config.json"), cfg);
    free(cfg);
    tu_assert_user_error(AUGMENT("--model", tu_path("m"), "--train-data-dir", data, "--output-dir", o,
                                 "--per-class", "1"),
                         "conv_in.weight: file has [8, 3, 3, 3], model expects [8, 1, 3, 3]");

    /* --strength outside (0, 1] */
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", o, "--variations",
                                 "1", "--strength", "0"),
                         "--strength: 0 is outside (0, 1]");
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", o, "--variations",
                                 "1", "--strength", "1.5"),
                         "--strength: 1.5 is outside");
    /* datasets: empty, every file unreadable, the wrong number of classes */
    ck_assert_int_eq(mkdir(tu_path("empty"), 0755), 0);
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", tu_path("empty"), "--output-dir", o,
                                 "--per-class", "1"),
                         "empty");
    ck_assert_int_eq(mkdir(tu_path("bad"), 0755), 0);
    spill(tu_path("bad/a.png"), "garbage");
    assert_error_after_warnings(AUGMENT("--model", MODEL, "--train-data-dir", tu_path("bad"), "--output-dir", o,
                                 "--per-class", "1"),
                         "no usable image");
    const char *three = make_dataset("three", 3);
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", three, "--output-dir", o, "--per-class",
                                 "1"),
                         "has 3 classes but the model");
    tu_assert_user_error(AUGMENT("--model", UNCONDITIONAL_MODEL, "--train-data-dir", data, "--output-dir", o,
                                 "--per-class", "1"),
                         "unconditional");
    const char *one = make_dataset("one", 1);
    tu_assert_user_error(AUGMENT("--model", UNCONDITIONAL_MODEL, "--train-data-dir", one, "--output-dir", o,
                                 "--unlabelled", "1"),
                         "pseudo-labels need a classifier of at least 2");
    /* a manifest with a bad line before the last */
    ck_assert_int_eq(mkdir(o, 0755), 0);
    spill(tu_path("o/manifest.jsonl"), "not json\n{\"file\": \"x.png\", \"scheduler\": \"ddim\"}\n");
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", o, "--per-class",
                                 "1"),
                         "manifest.jsonl: line 1 is not a manifest entry");

    /* usage errors: exit 2 */
    const char *const usage[][10] = {
        {"--model", MODEL, "--output-dir", o, NULL},
        {"--model", MODEL, "--train-data-dir", data, "--output-dir", o, NULL},
        {"--model", MODEL, "--train-data-dir", data, "--output-dir", o, "--eval", NULL},
        {"--model", MODEL, "--train-data-dir", data, "--output-dir", o, "--bogus", NULL},
        {"--model", MODEL, "--train-data-dir", data, "--output-dir", o, "--variations", "1", "--vary-eval-subsets",
         NULL}};
    for (size_t k = 0; k < sizeof usage / sizeof usage[0]; k++) {
        const char *args[12] = {"augment"};
        memcpy(args + 1, usage[k], sizeof usage[k]);
        tu_run_result *r = tu_run_diffc(args);
        ck_assert_msg(r->status == 2 && !strncmp(r->err, "diffc: error: ", 14), "case %zu: exit %d: %s", k,
                      r->status, tu_tail(r->err));
    }
    tu_rmtemp();
}
END_TEST

START_TEST(test_help) {
    tu_run_result *r = tu_run_diffc((const char *const[]){"augment", "--help", NULL});
    ck_assert_int_eq(r->status, 0);
    const char *every[] = {"--model DIR",   "--train-data-dir DIR", "--output-dir DIR", "--per-class N",
                           "--unlabelled N", "--variations K", "--strength X",        "--guidance-scale X", "--eval",
                           "--eval-data-dir DIR", "--real-fraction LIST", "--eval-steps N", "--eval-epochs N",
                           "--prompt-template TEXT", "--caption-column NAME", "--negative-prompt TEXT",
                           "--resolution N", "--filter-threshold T", "--filter-classifier FILE"};
    for (size_t i = 0; i < sizeof every / sizeof every[0]; i++)
        ck_assert_msg(strstr(r->out, every[i]), "--help lacks %s", every[i]);
    r = tu_run_diffc((const char *const[]){"--help", NULL});
    ck_assert_msg(r->status == 0 && strstr(r->out, "augment --model DIR"), "%s", r->out);
}
END_TEST

/* ---- text-to-image (a Stable Diffusion pipeline folder) ---- */

#define SD_MODEL "tests/fixtures/sd_tiny" /* 16x16 RGB images */
#define SD_SIDE 16

static const char *const sd_classes[] = {"golden_retriever", "tabby_cat"};
#define SD_CLASSES 2
#define SD_REAL 3 /* real images per class */

/* tu_path(dir): SD_REAL random images per class, and a metadata.jsonl with
 * two captions of each ("text", and "alt" for --caption-column). */
static const char *make_sd_dataset(const char *dir) {
    char sub[256], line[256];
    ck_assert_int_eq(mkdir(tu_path(dir), 0755), 0);
    char *meta = calloc(1, 8192);
    for (int k = 0; k < SD_CLASSES; k++) {
        snprintf(sub, sizeof sub, "%s/%s", dir, sd_classes[k]);
        ck_assert_int_eq(mkdir(tu_path(sub), 0755), 0);
        for (int i = 0; i < SD_REAL; i++) {
            snprintf(sub, sizeof sub, "%s/%s/%d.png", dir, sd_classes[k], i);
            write_image(tu_path(sub), SD_SIDE, SD_SIDE, 3);
            snprintf(line, sizeof line,
                     "{\"file_name\": \"%s/%d.png\", \"text\": \"caption %d of %s\", \"alt\": \"alt %d %d\"}\n",
                     sd_classes[k], i, i, sd_classes[k], k, i);
            strcat(meta, line);
        }
    }
    snprintf(sub, sizeof sub, "%s/metadata.jsonl", dir);
    spill(tu_path(sub), meta);
    free(meta);
    return keep(dir);
}

#define SD_AUGMENT(...)                                                                                       \
    tu_run_diffc((const char *const[]){"augment", "--cache-dir", tu_path("cache"), "--model", SD_MODEL,        \
                                       "--num-inference-steps", "2", __VA_ARGS__, NULL})

/* The lines of a .jsonl file under out. */
static cJSON **read_jsonl(const char *out, const char *name, int *n) {
    char path[8400];
    snprintf(path, sizeof path, "%s/%s", out, name);
    size_t len;
    char *text = dc_read_file(path, 1 << 24, &len);
    ck_assert_msg(text, "%s", dc_error());
    cJSON **lines = calloc(len + 1, sizeof *lines);
    *n = 0;
    for (char *p = text, *nl; *p; p = nl + 1) {
        ck_assert((nl = strchr(p, '\n')) != NULL);
        *nl = '\0';
        ck_assert_msg((lines[*n] = cJSON_Parse(p)) != NULL, "not JSON: %s", p);
        ++*n;
    }
    free(text);
    return lines;
}

/* The metadata.jsonl line of `file`, or NULL. */
static const cJSON *meta_of(cJSON **meta, int n, const char *file) {
    for (int i = 0; i < n; i++)
        if (!strcmp(field(meta[i], "file_name")->valuestring, file))
            return meta[i];
    return NULL;
}

/* The real image a var_ file was made from: "<class>/<i>.png" of source index s. */
static void source_name(int s, char *buf, size_t n) {
    snprintf(buf, n, "%s/%d.png", sd_classes[s / SD_REAL], s % SD_REAL);
}

/* Every manifest line has a file, its class folder's, of 16x16 RGB, with the
 * prompt `want(label, source)`; metadata.jsonl lists the same files with the
 * same prompts and the real image's name; the folder reads back as a
 * captioned dataset. Returns the number of images. */
static int check_text_output(const char *out, void (*want)(int label, int source, char *buf, size_t n)) {
    int n, n_meta;
    cJSON **lines = read_jsonl(out, "manifest.jsonl", &n), **meta = read_jsonl(out, "metadata.jsonl", &n_meta);
    ck_assert_int_eq(n_meta, n);
    for (int i = 0; i < n; i++) {
        const char *file = field(lines[i], "file")->valuestring, *prompt = field(lines[i], "prompt")->valuestring;
        int label = field(lines[i], "label")->valueint;
        const cJSON *source = field(lines[i], "source");
        int s = cJSON_IsNumber(source) ? source->valueint : -1;
        char expect[256], src[64];
        want(label, s, expect, sizeof expect);
        ck_assert_str_eq(prompt, expect);
        ck_assert_msg(!strncmp(file, sd_classes[label], strlen(sd_classes[label])), "%s", file);
        const cJSON *m = meta_of(meta, n_meta, file);
        ck_assert_msg(m, "%s is not in metadata.jsonl", file);
        ck_assert_str_eq(field(m, "text")->valuestring, prompt);
        if (s >= 0) {
            ck_assert(s / SD_REAL == label);
            source_name(s, src, sizeof src);
            ck_assert_str_eq(field(m, "source")->valuestring, src);
        } else
            ck_assert(cJSON_IsNull(field(m, "source")));
        if (i)
            ck_assert(strcmp(field(meta[i - 1], "file_name")->valuestring,
                             field(meta[i], "file_name")->valuestring) < 0);
        char path[8400];
        snprintf(path, sizeof path, "%s/%s", out, file);
        dc_image img;
        ck_assert_msg(dc_image_load(&img, path) == 0, "%s", dc_error());
        ck_assert(img.w == SD_SIDE && img.h == SD_SIDE && img.c == 3);
        dc_image_free(&img);
    }
    /* what diffc train reads: a captioned class-folder dataset */
    dc_dataset ds;
    dc_dataset_options o = {.cache_dir = tu_path("cache")};
    ck_assert_msg(dc_dataset_open(&ds, out, &o) == 0, "%s", dc_error());
    ck_assert(ds.count == n && ds.num_classes == SD_CLASSES && ds.captions);
    for (int64_t i = 0; i < ds.count; i++)
        ck_assert(*ds.captions[i]);
    dc_dataset_close(&ds);
    free_manifest(lines, n);
    free_manifest(meta, n_meta);
    return n;
}

static void class_prompt(int label, int source, char *buf, size_t n) {
    (void)source;
    const char *c = sd_classes[label];
    snprintf(buf, n, "a photo of a %s", !strcmp(c, "golden_retriever") ? "golden retriever" : "tabby cat");
}

static void alt_prompt(int label, int source, char *buf, size_t n) {
    ck_assert(source >= 0);
    snprintf(buf, n, "alt %d %d", label, source % SD_REAL);
}

static void combined_prompt(int label, int source, char *buf, size_t n) {
    ck_assert(source >= 0);
    snprintf(buf, n, "%s: caption %d of %s", !label ? "golden retriever" : "tabby cat", source % SD_REAL,
             sd_classes[label]);
}

START_TEST(test_text_outputs) {
    tu_mkdtemp("augment");
    const char *data = make_sd_dataset("data"), *out = keep("out");
    tu_run_result *r = SD_AUGMENT("--train-data-dir", data, "--output-dir", out, "--per-class", "2", "--variations",
                                  "2", "--strength", "0.7", "--guidance-scale", "3", "--negative-prompt", "blurry");
    assert_ok(r);
    int real = SD_CLASSES * SD_REAL, want = 2 * SD_CLASSES + 2 * real;
    ck_assert_int_eq(check_text_output(out, class_prompt), want);
    ck_assert_int_eq(count_pngs(out), want);
    int n;
    cJSON **lines = read_jsonl(out, "manifest.jsonl", &n);
    for (int i = 0; i < n; i++) {
        ck_assert_str_eq(field(lines[i], "negative_prompt")->valuestring, "blurry");
        ck_assert(field(lines[i], "guidance")->valuedouble == 3);
        bool var = strstr(field(lines[i], "file")->valuestring, "/var_");
        ck_assert(var ? field(lines[i], "strength")->valuedouble == 0.7 : cJSON_IsNull(field(lines[i], "strength")));
    }
    free_manifest(lines, n);
    /* another prompt in the same folder: other settings */
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", out, "--per-class", "2",
                                    "--guidance-scale", "3", "--negative-prompt", "blurry", "--prompt-template",
                                    "a {class}"),
                         "was made with other settings");

    /* captions: another column, and combined with the class */
    const char *caps = keep("caps"), *both = keep("both");
    assert_ok(SD_AUGMENT("--train-data-dir", data, "--output-dir", caps, "--variations", "1", "--caption-column",
                         "alt"));
    ck_assert_int_eq(check_text_output(caps, alt_prompt), real);
    assert_ok(SD_AUGMENT("--train-data-dir", data, "--output-dir", both, "--variations", "1", "--prompt-template",
                         "{class}: {caption}"));
    ck_assert_int_eq(check_text_output(both, combined_prompt), real);
    tu_rmtemp();
}
END_TEST

/* The filter's confidences: file -> confidence and kept, from the manifest. */
typedef struct scored {
    char file[96];
    double confidence;
    bool kept;
} scored;

static int read_scores(const char *out, scored *s) {
    int n;
    cJSON **lines = read_jsonl(out, "manifest.jsonl", &n);
    for (int i = 0; i < n; i++) {
        snprintf(s[i].file, sizeof s[i].file, "%s", field(lines[i], "file")->valuestring);
        s[i].confidence = field(lines[i], "confidence")->valuedouble;
        s[i].kept = cJSON_IsTrue(field(lines[i], "kept"));
    }
    free_manifest(lines, n);
    return n;
}

static int by_confidence(const void *a, const void *b) {
    double x = ((const scored *)a)->confidence, y = ((const scored *)b)->confidence;
    return (x > y) - (x < y);
}

static bool exists(const char *out, const char *file) {
    char path[8400];
    snprintf(path, sizeof path, "%s/%s", out, file);
    return access(path, F_OK) == 0;
}

/* The classifier's own probability of the class for a written image. */
static double score_file(dc_augment_classifier *c, const char *out, const char *file, int label) {
    char path[8400];
    snprintf(path, sizeof path, "%s/%s", out, file);
    dc_image img;
    ck_assert_msg(dc_image_load(&img, path) == 0, "%s", dc_error());
    float *x = malloc((size_t)img.w * img.h * img.c * sizeof *x);
    dc_u8_to_float(x, img.px, (size_t)img.w * img.h * img.c);
    double p = -1;
    ck_assert_msg(dc_augment_classifier_confidence(c, x, label, &p) == 0, "%s", dc_error());
    free(x);
    dc_image_free(&img);
    return p;
}

START_TEST(test_text_filter) {
    tu_mkdtemp("augment");
    const char *data = make_sd_dataset("data"), *all = keep("all"), *none = keep("none"), *some = keep("some");
#define FILTER_ARGS "--per-class", "2", "--variations", "2", "--eval-steps", "30", "--eval-batch-size", "4"
    /* tau 0 keeps every image (a probability is never 0); the classifier is saved */
    tu_run_result *r =
        SD_AUGMENT("--train-data-dir", data, "--output-dir", all, FILTER_ARGS, "--filter-threshold", "0");
    assert_ok(r);
    int total = 2 * SD_CLASSES + 2 * SD_CLASSES * SD_REAL;
    ck_assert_int_eq(count_pngs(all), total);
    ck_assert_msg(strstr(r->out, "filter: golden_retriever") && strstr(r->out, "filter: tabby_cat"), "%s", r->out);
    char classifier[512];
    snprintf(classifier, sizeof classifier, "%s/filter_classifier.safetensors", all);
    ck_assert(access(classifier, F_OK) == 0);
    /* tau 1 keeps none, and lists them all as rejected */
    r = SD_AUGMENT("--train-data-dir", data, "--output-dir", none, FILTER_ARGS, "--filter-threshold", "1",
                   "--filter-classifier", classifier);
    assert_ok(r);
    ck_assert_int_eq(count_pngs(none), 0);
    char line[96];
    snprintf(line, sizeof line, "kept 0 of %d images", total);
    ck_assert_msg(strstr(r->out, line), "%s", r->out);

    /* tau between two of the classifier's scores: kept exactly those above it */
    scored s[64], t[64];
    int n = read_scores(all, s);
    ck_assert_int_eq(n, total);
    qsort(s, (size_t)n, sizeof *s, by_confidence);
    ck_assert_msg(s[n / 2 - 1].confidence < s[n / 2].confidence, "ties in the classifier's scores");
    double tau = (s[n / 2 - 1].confidence + s[n / 2].confidence) / 2;
    char tau_text[32];
    snprintf(tau_text, sizeof tau_text, "%.17g", tau);
    r = SD_AUGMENT("--train-data-dir", data, "--output-dir", some, FILTER_ARGS, "--filter-threshold", tau_text,
                   "--filter-classifier", classifier);
    assert_ok(r);
    ck_assert_int_eq(read_scores(some, t), n);
    ck_assert_int_eq(count_pngs(some), n - n / 2);
    /* the classifier itself, loaded here, scores the written files above tau and as the manifest says */
    dc_dataset real;
    dc_dataset_options o = {.resolution = SD_SIDE, .channels = 3, .cache_dir = tu_path("cache")};
    ck_assert_msg(dc_dataset_open(&real, data, &o) == 0, "%s", dc_error());
    dc_augment_train_options to = {.batch_size = 4};
    dc_augment_classifier c = {0};
    ck_assert_msg(dc_augment_classifier_load(&c, &real, classifier, &to) == 0, "%s", dc_error());
    int kept[SD_CLASSES] = {0}, rejected[SD_CLASSES] = {0};
    for (int i = 0; i < n; i++) {
        int label = strncmp(t[i].file, "golden", 6) ? 1 : 0;
        ck_assert_msg(t[i].kept == (t[i].confidence > tau) && exists(some, t[i].file) == t[i].kept, "%s", t[i].file);
        if (t[i].kept) {
            double p = score_file(&c, some, t[i].file, label);
            ck_assert_msg(p > tau && fabs(p - t[i].confidence) < 1e-6, "%s: %g vs %g", t[i].file, p, t[i].confidence);
        }
        (t[i].kept ? kept : rejected)[label]++;
    }
    for (int k = 0; k < SD_CLASSES; k++) {
        snprintf(line, sizeof line, "filter: %-20s kept %6d, rejected %6d", sd_classes[k], kept[k], rejected[k]);
        ck_assert_msg(strstr(r->out, line), "no '%s' in %s", line, r->out);
    }
    dc_augment_classifier_free(&c);
    dc_dataset_close(&real);
    /* --eval sees the kept images only */
    r = SD_AUGMENT("--train-data-dir", data, "--output-dir", some, FILTER_ARGS, "--filter-threshold", tau_text,
                   "--filter-classifier", classifier, "--eval", "--eval-data-dir", data, "--real-fraction", "1");
    assert_ok(r);
    int real_n, syn;
    double f;
    const char *row = strstr(r->out, "\n             1 ");
    ck_assert_msg(row && sscanf(row, "%lf %d %d", &f, &real_n, &syn) == 3, "%s", r->out);
    ck_assert_int_eq(real_n, SD_CLASSES * SD_REAL);
    ck_assert_int_eq(syn, n - n / 2);
#undef FILTER_ARGS
    tu_rmtemp();
}
END_TEST

/* Kill a filtered text run midway, resume with another batch size: the same
 * files, byte for byte, the same manifest decisions and metadata.jsonl. */
START_TEST(test_text_kill_and_resume) {
    tu_mkdtemp("augment");
    const char *data = make_sd_dataset("data"), *whole = keep("whole"), *cut = keep("cut"), *cache = keep("cache");
#define ARGS(out, batch)                                                                                     \
    "augment", "--cache-dir", cache, "--model", SD_MODEL, "--num-inference-steps", "20", "--train-data-dir", data, \
        "--output-dir", out, "--per-class", "3", "--variations", "3", "--filter-threshold", "0.4", "--eval-steps", \
        "10", "--eval-batch-size", "4", "--batch-size", batch
    assert_ok(tu_run_diffc((const char *const[]){ARGS(whole, "5"), NULL}));
    tu_spawn_diffc((const char *const[]){ARGS(cut, "1"), NULL});
    ck_assert_msg(tu_read_diffc_until("augment: 2/"), "no progress: %s", tu_wait_diffc()->err);
    int st = tu_kill_diffc(SIGKILL);
    ck_assert_msg(WIFSIGNALED(st), "finished before the kill: status %d", st);
    tu_run_result *r = tu_run_diffc((const char *const[]){ARGS(cut, "4"), NULL});
    assert_ok(r);
    ck_assert_msg(!strstr(r->out, " 0 already") && strstr(r->out, "made"), "%s", r->out);
    scored a[64], b[64];
    int n = read_scores(whole, a);
    ck_assert_int_eq(n, 3 * SD_CLASSES + 3 * SD_CLASSES * SD_REAL);
    ck_assert_int_eq(read_scores(cut, b), n);
    for (int i = 0; i < n; i++) {
        int j = 0;
        while (j < n && strcmp(a[i].file, b[j].file))
            j++;
        ck_assert_msg(j < n && a[i].kept == b[j].kept, "%s", a[i].file);
        char x[8400], y[8400];
        snprintf(x, sizeof x, "%s/%s", whole, a[i].file);
        snprintf(y, sizeof y, "%s/%s", cut, a[i].file);
        ck_assert_msg(a[i].kept ? same_bytes(x, y) : !exists(cut, a[i].file), "%s differs after the resume", a[i].file);
    }
    char x[8400], y[8400];
    snprintf(x, sizeof x, "%s/metadata.jsonl", whole);
    snprintf(y, sizeof y, "%s/metadata.jsonl", cut);
    ck_assert(same_bytes(x, y));
    ck_assert_int_eq(count_pngs(cut), count_pngs(whole));
#undef ARGS
    tu_rmtemp();
}
END_TEST

START_TEST(test_text_bad_input) {
    tu_mkdtemp("augment");
    const char *data = make_sd_dataset("data"), *o = keep("o");
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--variations", "1",
                                    "--prompt-template", "a photo"),
                         "--prompt-template 'a photo': it has no {class}");
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--variations", "1",
                                    "--caption-column", "missing"),
                         "has no caption for golden_retriever/0.png (\"missing\" in metadata.jsonl)");
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--per-class", "1",
                                    "--prompt-template", "{class}: {caption}"),
                         "--per-class: the prompt template '{class}: {caption}' has {caption}");
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--unlabelled", "1"),
                         "--unlabelled: ");
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--variations", "1",
                                    "--caption-column", "alt", "--prompt-template", "a {class}"),
                         "has no {caption} to put the captions in");
    ck_assert_int_eq(remove(tu_path("data/metadata.jsonl")), 0);
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--variations", "1",
                                    "--prompt-template", "{caption}"),
                         "has no captions for {caption}");
    /* options of the other kind of model */
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--variations", "1", "--no-ema"),
                         "--no-ema: " SD_MODEL " is a text-to-image pipeline");
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--variations", "1", "--resolution",
                                    "15"),
                         "--resolution 15: the side must be a positive multiple of 2");
    tu_assert_user_error(AUGMENT("--model", MODEL, "--train-data-dir", data, "--output-dir", o, "--variations", "1",
                                 "--prompt-template", "a {class}"),
                         "--prompt-template: " MODEL " is not a text-to-image pipeline");
    /* the filter */
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--variations", "1",
                                    "--filter-threshold", "1.5"),
                         "--filter-threshold '1.5': expected a probability in [0, 1]");
    tu_assert_user_error(SD_AUGMENT("--train-data-dir", data, "--output-dir", o, "--variations", "1",
                                    "--filter-threshold", "0.5", "--filter-classifier",
                                    SD_MODEL "/vae/diffusion_pytorch_model.safetensors"),
                         "not a classifier that diffc augment saved");
    tu_rmtemp();
}
END_TEST

int main(void) {
    Suite *s = suite_create("augment");
    TCase *tc = tu_tcase(s, "outputs", 600);
    tcase_add_test(tc, test_writes_and_skips);
    tcase_add_test(tc, test_kill_and_resume);
    tcase_add_test(tc, test_unlabelled);
    tcase_add_test(tc, test_eval);
    tcase_add_test(tc, test_eval_scores);
    tcase_add_test(tc, test_frechet);
    tcase_add_test(tc, test_flip_shift);
    tc = tu_tcase(s, "text", 600);
    tcase_add_test(tc, test_text_outputs);
    tcase_add_test(tc, test_text_filter);
    tcase_add_test(tc, test_text_kill_and_resume);
    tcase_add_test(tc, test_text_bad_input);
    tc = tu_tcase(s, "errors", 60);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_help);
    return tu_run(s);
}
