/* `diffc info`: runs the built diffc binary (found beside this test binary)
 * on files and folders made here (weight files, checkpoints, datasets), and
 * checks its output, its exit status (0 done, 1 user error, 2 usage) and
 * that every error is exactly one line "diffc: error: ..." on stderr. */
#define _GNU_SOURCE /* nftw */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/dataset.h"
#include "data/image.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


/* ---- running diffc ---- */

typedef tu_run_result run_result;

/* diffc info ARGS... (NULL ends them early). */
static run_result *run_info(const char *a1, const char *a2) {
    const char *args[] = {"info", a1, a2, NULL};
    return tu_run_diffc(args);
}

/* Exit 1, nothing on stdout, one line "diffc: error: ...<want>..." on stderr. */
static void assert_user_error(const run_result *r, const char *want) {
    ck_assert_msg(r->n_out == 0, "stdout: %s", r->out);
    tu_assert_user_error(r, want);
}

static void assert_usage_error(const run_result *r, const char *want) {
    ck_assert_msg(r->status == 2, "exit %d, stderr: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strncmp(r->err, "diffc: error: ", 14) == 0 && strstr(r->err, want), "stderr: %s", tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "usage: diffc info"), "stderr: %s", tu_tail(r->err));
}

/* ---- files ---- */

static char tmpdir[64];

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dc_info_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

static void remove_tmpdir(void) { nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS); }

static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int next;
    char *p = buf[next++ % 4];
    snprintf(p, 256, "%s/%s", tmpdir, name);
    return p;
}

/* conv_in.weight F32 [64, 3, 3, 3] and a BF16 bias [8]: 1,736 parameters,
 * 6,928 bytes; metadata format=pt, note=hello. */
static void write_model(const char *path) {
    static float w[64 * 27];
    static uint16_t b[8];
    dc_st_tensor t[2] = {
        {.name = "conv_in.weight",
         .dtype = DC_F32,
         .ndim = 4,
         .shape = {64, 3, 3, 3},
         .data = w,
         .nbytes = sizeof w},
        {.name = "time_embedding.linear_1.bias",
         .dtype = DC_BF16,
         .ndim = 1,
         .shape = {8},
         .data = b,
         .nbytes = sizeof b},
    };
    const char *k[] = {"format", "note"}, *v[] = {"pt", "hello"};
    ck_assert_msg(dc_st_write(path, t, 2, k, v, 2) == 0, "%s", dc_error());
}

/* The line of `text` that starts with `prefix`, copied into buf, or NULL. */
static const char *line_starting(const char *text, const char *prefix, char *buf, size_t n) {
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, prefix, strlen(prefix))) {
            size_t len = strcspn(p, "\n");
            snprintf(buf, n, "%.*s", (int)(len < n ? len : n - 1), p);
            return buf;
        }
    return NULL;
}

START_TEST(test_file) {
    make_tmpdir();
    const char *path = tmp_path("model.safetensors");
    write_model(path);
    run_result *r = run_info(path, NULL);
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(r->n_err == 0, "stderr: %s", tu_tail(r->err));
    char want[300], head[256], w[256], b[256], line[256];
    snprintf(want, sizeof want, "%s: safetensors weight file\n", path);
    ck_assert_msg(strncmp(r->out, want, strlen(want)) == 0, "%s", r->out);
    ck_assert_ptr_nonnull(line_starting(r->out, "  name ", head, sizeof head));
    ck_assert_ptr_nonnull(line_starting(r->out, "  conv_in.weight ", w, sizeof w));
    ck_assert_ptr_nonnull(line_starting(r->out, "  time_embedding.linear_1.bias ", b, sizeof b));
    ck_assert_msg(strstr(w, " F32 ") && strstr(w, " [64, 3, 3, 3] ") && strstr(w, " 6,912"), "%s", w);
    ck_assert_msg(strstr(b, " BF16 ") && strstr(b, " [8] ") && strstr(b, " 16"), "%s", b);
    /* aligned columns: dtype and shape start, and bytes end, at the same place */
    ck_assert_int_eq(strstr(head, "dtype") - head, strstr(w, "F32") - w);
    ck_assert_int_eq(strstr(head, "dtype") - head, strstr(b, "BF16") - b);
    ck_assert_int_eq(strstr(head, "shape") - head, strstr(w, "[64") - w);
    ck_assert_int_eq(strstr(head, "shape") - head, strstr(b, "[8]") - b);
    ck_assert_int_eq(strlen(head), strlen(w));
    ck_assert_int_eq(strlen(head), strlen(b));
    ck_assert_ptr_nonnull(line_starting(r->out, "  total: ", line, sizeof line));
    ck_assert_str_eq(line, "  total: 2 tensors, 1,736 parameters, 6.8 KiB (6,928 bytes)");
    ck_assert_ptr_nonnull(line_starting(r->out, "    format = ", line, sizeof line));
    ck_assert_str_eq(line, "    format = pt");
    ck_assert_ptr_nonnull(line_starting(r->out, "    note = ", line, sizeof line));
    ck_assert_str_eq(line, "    note = hello");
    remove_tmpdir();
}
END_TEST

START_TEST(test_folders) {
    make_tmpdir();
    ck_assert_int_eq(mkdir(tmp_path("pipe"), 0755), 0);
    ck_assert_int_eq(mkdir(tmp_path("pipe/unet"), 0755), 0);
    ck_assert_int_eq(mkdir(tmp_path("pipe/scheduler"), 0755), 0);
    write_model(tmp_path("pipe/unet/diffusion_pytorch_model.safetensors"));
    run_result *r = run_info(tmp_path("pipe"), NULL);
    ck_assert_msg(r->status == 0 && r->n_err == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->out, "pipe/unet/diffusion_pytorch_model.safetensors: safetensors weight file\n"),
                  "%s", r->out);
    ck_assert_msg(strstr(r->out, "  total: 2 tensors, 1,736 parameters"), "%s", r->out);

    /* a model folder: the weights at the top */
    r = run_info(tmp_path("pipe/unet"), NULL);
    ck_assert_msg(r->status == 0 && strstr(r->out, "unet/diffusion_pytorch_model.safetensors: "), "%s%s",
                  r->out, tu_tail(r->err));

    ck_assert_int_eq(mkdir(tmp_path("empty"), 0755), 0);
    char want[300];
    snprintf(want, sizeof want, "diffc: error: %s: no safetensors weight file found\n", tmp_path("empty"));
    r = run_info(tmp_path("empty"), NULL);
    assert_user_error(r, "no safetensors weight file found");
    ck_assert_str_eq(r->err, want);
    remove_tmpdir();
}
END_TEST

START_TEST(test_bad_files) {
    make_tmpdir();
    run_result *r = run_info(tmp_path("missing.safetensors"), NULL);
    assert_user_error(r, "missing.safetensors: cannot open: No such file or directory");

    const char *empty = tmp_path("empty.safetensors");
    fclose(fopen(empty, "wb"));
    assert_user_error(run_info(empty, NULL), "empty.safetensors: file is 0 bytes");

    const char *model = tmp_path("model.safetensors");
    write_model(model);
    struct stat st;
    ck_assert_int_eq(stat(model, &st), 0);
    ck_assert_int_eq(truncate(model, st.st_size / 2), 0);
    assert_user_error(run_info(model, NULL), "run past the end of the data");
    ck_assert_int_eq(truncate(model, 20), 0);
    assert_user_error(run_info(model, NULL), "runs past the end of the file");

    FILE *fp = fopen(model, "wb");
    fwrite("\x0d\0\0\0\0\0\0\0{\"a\":{\"x\":1}}", 1, 21, fp);
    fclose(fp);
    assert_user_error(run_info(model, NULL), "model.safetensors: tensor 'a': \"dtype\" is missing");
    remove_tmpdir();
}
END_TEST

/* ---- datasets ---- */

static void write_png(const char *path, int w, int h, int c) {
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, w, h, c), 0);
    memset(img.px, 0x80, (size_t)w * h * c);
    ck_assert_msg(dc_image_save_png(&img, path) == 0, "%s", dc_error());
    dc_image_free(&img);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* info's stdout is exactly `want`, with nothing on stderr. */
static void assert_output(const run_result *r, const char *want) {
    ck_assert_msg(r->status == 0 && r->n_err == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_str_eq(r->out, want);
}

START_TEST(test_image_folder) {
    make_tmpdir();
    ck_assert_int_eq(mkdir(tmp_path("set"), 0755), 0);
    ck_assert_int_eq(mkdir(tmp_path("set/cat"), 0755), 0);
    ck_assert_int_eq(mkdir(tmp_path("set/dog"), 0755), 0);
    write_png(tmp_path("set/cat/1.png"), 8, 6, 3);
    write_png(tmp_path("set/cat/2.png"), 12, 4, 1);
    write_png(tmp_path("set/dog/3.png"), 8, 6, 3);
    write_bytes(tmp_path("set/dog/bad\n.png"), "oops", 4);
    const char *meta = "{\"file_name\": \"dog/3.png\", \"text\": \"a dog\"}\n";
    write_bytes(tmp_path("set/metadata.jsonl"), meta, strlen(meta));
    char want[1024];
    snprintf(want, sizeof want,
             "%s: image folder dataset\n"
             "  images: 3\n"
             "  size: width 8 to 12, height 4 to 6\n"
             "  channels: 1 and 3 (gray and RGB)\n"
             "  captions: 1 of 3 images\n"
             "  classes: 2\n"
             "    cat  2\n"
             "    dog  1\n"
             "  skipped: 1\n"
             "    dog/bad\\n.png: not a PNG or JPEG file\n",
             tmp_path("set"));
    assert_output(run_info(tmp_path("set"), NULL), want);

    /* its cache, built at 4x4 */
    setenv("DIFFC_CACHE_DIR", tmp_path("cache"), 1);
    dc_dataset ds;
    dc_dataset_options o = {.resolution = 4, .quiet = true};
    ck_assert_msg(dc_dataset_open(&ds, tmp_path("set"), &o) == 0, "%s", dc_error());
    char cache[512];
    snprintf(cache, sizeof cache, "%s", ds.cache_path);
    dc_dataset_close(&ds);
    char *real = realpath(tmp_path("set"), NULL);
    snprintf(want, sizeof want,
             "%s: diffc dataset cache, built from image folder %s\n"
             "  images: 3\n"
             "  size: 4x4\n"
             "  channels: 3 (RGB)\n"
             "  captions: 1 of 3 images\n"
             "  checksum: verified\n"
             "  classes: 2\n"
             "    cat  2\n"
             "    dog  1\n"
             "  skipped: 1\n"
             "    dog/bad\\n.png: not a PNG or JPEG file\n",
             cache, real);
    free(real);
    assert_output(run_info(cache, NULL), want);

    /* a damaged cache: one line */
    FILE *f = fopen(cache, "r+b");
    fseek(f, 4096 + 5, SEEK_SET);
    fputc(0x11, f);
    fclose(f);
    assert_user_error(run_info(cache, NULL), "pixel checksum mismatch");
    remove_tmpdir();
}
END_TEST

START_TEST(test_idx_cifar) {
    make_tmpdir();
    static const uint8_t images[16 + 3 * 4] = {0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2};
    static const uint8_t labels[8 + 3] = {0, 0, 8, 1, 0, 0, 0, 3, 4, 0, 4};
    write_bytes(tmp_path("train-images-idx3-ubyte"), images, sizeof images);
    write_bytes(tmp_path("train-labels-idx1-ubyte"), labels, sizeof labels);
    char want[1024];
    snprintf(want, sizeof want,
             "%s: IDX dataset\n"
             "  images: 3\n"
             "  size: 2x2\n"
             "  channels: 1 (gray)\n"
             "  classes: 5\n"
             "    0  1\n    1  0\n    2  0\n    3  0\n    4  2\n",
             tmp_path("train-images-idx3-ubyte"));
    assert_output(run_info(tmp_path("train-images-idx3-ubyte"), NULL), want);
    write_bytes(tmp_path("train-images-idx3-ubyte"), images, sizeof images - 1);
    assert_user_error(run_info(tmp_path("train-images-idx3-ubyte"), NULL), "needs 12 (truncated)");

    static uint8_t batch[2 * 3073];
    batch[0] = 3, batch[3073] = 3;
    ck_assert_int_eq(mkdir(tmp_path("cifar"), 0755), 0);
    write_bytes(tmp_path("cifar/data_batch_1.bin"), batch, sizeof batch);
    write_bytes(tmp_path("cifar/test_batch.bin"), batch, 3073);
    run_result *r = run_info(tmp_path("cifar"), NULL);
    ck_assert_msg(r->status == 0, "%s", tu_tail(r->err));
    ck_assert_msg(strstr(r->out,
                         ": CIFAR-10 dataset\n  images: 2 (split train), 1 (split test)\n  size: 32x32\n"
                         "  channels: 3 (RGB)\n  classes: 10\n    airplane    0\n"),
                  "%s", r->out);
    ck_assert_msg(strstr(r->out, "\n    cat         2\n"), "%s", r->out);
    write_bytes(tmp_path("cifar/data_batch_1.bin"), batch, 3000);
    assert_user_error(run_info(tmp_path("cifar"), NULL), "not a whole number of CIFAR-10 records");
    remove_tmpdir();
}
END_TEST

/* diffc info --variant NAME PATH */
static run_result *run_info_variant(const char *variant, const char *path) {
    const char *args[] = {"info", "--variant", variant, path, NULL};
    return tu_run_diffc(args);
}

static int count(const char *text, const char *what) {
    int n = 0;
    for (const char *p = strstr(text, what); p; p = strstr(p + 1, what))
        n++;
    return n;
}

/* Variants and sharded sets in a model folder, and an index given alone. */
START_TEST(test_variants_and_shards) {
    make_tmpdir();
    ck_assert_int_eq(mkdir(tmp_path("m"), 0755), 0);
    write_model(tmp_path("m/diffusion_pytorch_model.safetensors"));
    write_model(tmp_path("m/diffusion_pytorch_model.fp16.safetensors"));
    write_model(tmp_path("m/diffusion_pytorch_model.ema-00001-of-00002.safetensors"));
    float v = 1;
    dc_st_tensor t = {.name = "conv_out.bias", .dtype = DC_F32, .ndim = 1, .shape = {1}, .data = &v,
                      .nbytes = sizeof v};
    ck_assert_int_eq(dc_st_write(tmp_path("m/diffusion_pytorch_model.ema-00002-of-00002.safetensors"), &t, 1,
                                 NULL, NULL, 0), 0);
    const char *index =
        "{\"weight_map\": {\"conv_in.weight\": \"diffusion_pytorch_model.ema-00001-of-00002.safetensors\", "
        "\"time_embedding.linear_1.bias\": \"diffusion_pytorch_model.ema-00001-of-00002.safetensors\", "
        "\"conv_out.bias\": \"diffusion_pytorch_model.ema-00002-of-00002.safetensors\"}}";
    write_bytes(tmp_path("m/diffusion_pytorch_model.safetensors.index.ema.json"), index, strlen(index));

    run_result *r = run_info(tmp_path("m"), NULL); /* all: plain, fp16, and the ema set */
    ck_assert_msg(r->status == 0 && r->n_err == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_int_eq(count(r->out, "safetensors weight file\n"), 4);
    ck_assert_msg(strstr(r->out, "index.ema.json: sharded safetensors weights, 3 tensors in 2 shards\n"), "%s",
                  r->out);
    r = run_info_variant("ema", tmp_path("m"));
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_int_eq(count(r->out, "safetensors weight file\n"), 2);
    ck_assert_int_eq(count(r->out, "fp16"), 0);
    r = run_info_variant("fp16", tmp_path("m"));
    ck_assert_msg(r->status == 0 && count(r->out, "safetensors weight file\n") == 1, "%s", r->out);
    assert_user_error(run_info_variant("bf16", tmp_path("m")), "no weights of variant 'bf16' found");
    r = run_info(tmp_path("m/diffusion_pytorch_model.safetensors.index.ema.json"), NULL);
    ck_assert_msg(r->status == 0 && count(r->out, "safetensors weight file\n") == 2, "%s", r->out);

    index = "{\"weight_map\": {\"conv_out.bias\": \"../x.safetensors\"}}";
    write_bytes(tmp_path("m/diffusion_pytorch_model.safetensors.index.ema.json"), index, strlen(index));
    assert_user_error(run_info(tmp_path("m/diffusion_pytorch_model.safetensors.index.ema.json"), NULL),
                      "a path, not a file name beside the index");
    remove_tmpdir();
}
END_TEST

START_TEST(test_usage) {
    run_result *r = run_info("--help", NULL);
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(strncmp(r->out, "usage: diffc info [--variant NAME] FILE|DIR\n", 44) == 0, "%s", r->out);
    ck_assert_uint_eq(r->n_err, 0);
    assert_usage_error(run_info(NULL, NULL), "needs a FILE or DIR");
    assert_usage_error(run_info("--bogus", NULL), "unknown option '--bogus'");
    assert_usage_error(run_info("a", "b"), "not also 'b'");
    assert_usage_error(run_info("--variant", NULL), "--variant needs a NAME");
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli_info");
    TCase *tc = tu_tcase(s, "info", 20);
    tcase_add_test(tc, test_file);
    tcase_add_test(tc, test_folders);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_usage);
    tcase_add_test(tc, test_variants_and_shards);
    tcase_add_test(tc, test_image_folder);
    tcase_add_test(tc, test_idx_cifar);
    return tu_run(s);
}
