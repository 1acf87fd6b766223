/* Datasets: image folders (classes, unlabelled, captions, bad files, strict
 * mode, mixed channels, resizing), IDX (plain, gzip, damaged), CIFAR-10
 * (folder, file, damaged), the cache (round trip, reuse, rebuild on change,
 * deterministic bytes, damaged files refused), summaries and recognition.
 * Every image is fresh random data; expected pixels are the written ones, or
 * the image API's convert + resize of them (that API is tested against PIL
 * in test_image). */
#define _GNU_SOURCE /* nftw */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/dataset.h"
#include "data/image.h"
#include "data/metadata.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define FASHION "/usr/share/datasets/fashion-mnist"

/* ---- files ---- */

static char tmpdir[64];

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dc_ds_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return remove(path);
}

static void remove_tmpdir(void) { nftw(tmpdir, remove_entry, 8, FTW_DEPTH | FTW_PHYS); }

static const char *tmp_path(const char *name) {
    static char buf[8][512];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

/* mkdir -p for the folders of tmp_path(rel). */
static void make_parents(const char *rel) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
    for (char *p = path + strlen(tmpdir) + 1; (p = strchr(p, '/')); p++) {
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
}

static void write_bytes(const char *rel, const void *data, size_t n) {
    make_parents(rel);
    FILE *f = fopen(tmp_path(rel), "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(*n + 1);
    ck_assert_uint_eq(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

/* A random PNG at tmp_path(rel); returns its pixels. */
static dc_image write_png(const char *rel, int w, int h, int c) {
    dc_image img = tu_random_image(w, h, c);
    make_parents(rel);
    ck_assert_msg(dc_image_save_png(&img, tmp_path(rel)) == 0, "%s", dc_error());
    return img;
}

/* The same when the pixels are not needed. */
static void put_png(const char *rel, int w, int h, int c) {
    dc_image img = write_png(rel, w, h, c);
    dc_image_free(&img);
}

static dc_dataset_options options(void) {
    static char dir[128];
    snprintf(dir, sizeof dir, "%s/cache", tmpdir);
    return (dc_dataset_options){.cache_dir = dir, .quiet = true};
}

static void open_ok(dc_dataset *ds, const char *source, const dc_dataset_options *o) {
    ck_assert_msg(dc_dataset_open(ds, source, o) == 0, "%s: %s", source, dc_error());
}

static void open_fails(const char *source, const dc_dataset_options *o, const char *want) {
    dc_dataset ds;
    ck_assert_msg(dc_dataset_open(&ds, source, o) != 0, "%s opened", source);
    ck_assert_msg(strstr(dc_error(), want), "'%s' lacks '%s'", dc_error(), want);
    ck_assert_ptr_null(ds.map);
}

/* Image i of the dataset equals img. */
static void assert_pixels(const dc_dataset *ds, int64_t i, const dc_image *img) {
    ck_assert_msg(ds->w == img->w && ds->h == img->h && ds->c == img->c,
                  "image %lld: %dx%dx%d, want %dx%dx%d", (long long)i, ds->w, ds->h, ds->c, img->w, img->h,
                  img->c);
    size_t n = (size_t)img->w * img->h * img->c;
    ck_assert_msg(memcmp(ds->pixels + (size_t)i * n, img->px, n) == 0, "image %lld: pixels differ",
                  (long long)i);
}

/* img brought to `channels` and resized as the dataset promises. */
static dc_image expected(const dc_image *img, int channels, int size) {
    dc_image conv, out;
    ck_assert_int_eq(dc_image_convert(&conv, img, channels ? channels : img->c), 0);
    if (!size)
        return conv;
    ck_assert_int_eq(dc_image_resize_center_crop(&out, &conv, size), 0);
    dc_image_free(&conv);
    return out;
}

/* The number of entries in a folder (to see that no temporary is left). */
static int cache_files(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "%s", dir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

/* stderr into a file while f runs; returns what was written (static). */
static const char *stderr_of(void (*f)(void *), void *arg) {
    static char text[8192];
    fflush(stderr);
    int saved = dup(2), fd = open(tmp_path("stderr.txt"), O_CREAT | O_TRUNC | O_RDWR, 0644);
    ck_assert(saved >= 0 && fd >= 0);
    dup2(fd, 2);
    f(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    text[n > 0 ? n : 0] = '\0';
    close(fd);
    return text;
}

/* ---- image folders ---- */

START_TEST(test_folder_classes) {
    make_tmpdir();
    dc_image a = write_png("set/cat/a.png", 8, 6, 3), b = write_png("set/cat/b.png", 8, 6, 3);
    dc_image c = write_png("set/dog/c.png", 8, 6, 3), d = write_png("set/dog/sub/d.png", 8, 6, 3);
    dc_image j;
    ck_assert_int_eq(dc_image_load(&j, "tests/fixtures/image_rgb.jpg"), 0);
    size_t n;
    uint8_t *jpg = read_bytes("tests/fixtures/image_rgb.jpg", &n);
    write_bytes("set/dog/photo.dat", jpg, n); /* a JPEG by content, whatever its name */
    free(jpg);
    mkdir(tmp_path("set/bird"), 0755);     /* a class without images */
    put_png("set/.hidden/x.png", 8, 6, 3); /* hidden: never read */
    put_png("set/cat/.y.png", 8, 6, 3);
    write_bytes("set/cat/notes.txt", "hello", 5); /* not an image: ignored silently */
    put_png("set/stray.png", 8, 6, 3);            /* outside the class folders: skipped */
    ck_assert_int_eq(symlink(tmp_path("set"), tmp_path("set/dog/loop")), 0);

    dc_dataset ds;
    dc_dataset_options o = options();
    o.resolution = 0;
    open_fails(tmp_path("set"), &o, "differ in size"); /* the JPEG is not 8x6 */
    unlink(tmp_path("set/dog/photo.dat"));
    open_ok(&ds, tmp_path("set"), &o);
    ck_assert_int_eq(ds.count, 4);
    ck_assert_int_eq(ds.num_classes, 3);
    ck_assert_str_eq(ds.class_names[0], "bird");
    ck_assert_str_eq(ds.class_names[1], "cat");
    ck_assert_str_eq(ds.class_names[2], "dog");
    const dc_image *want[] = {&a, &b, &c, &d};
    const int32_t labels[] = {1, 1, 2, 2};
    for (int i = 0; i < 4; i++) {
        assert_pixels(&ds, i, want[i]);
        ck_assert_int_eq(ds.labels[i], labels[i]);
    }
    ck_assert_ptr_null(ds.captions);
    ck_assert_int_eq(ds.n_skipped, 1);
    ck_assert_str_eq(ds.skipped[0].path, "stray.png");
    ck_assert_msg(strstr(ds.skipped[0].reason, "outside the class folders"), "%s", ds.skipped[0].reason);
    dc_dataset_close(&ds);
    dc_dataset_close(&ds); /* safe twice */

    /* the JPEG at a resolution: decoded by content and resized */
    jpg = read_bytes("tests/fixtures/image_rgb.jpg", &n);
    write_bytes("set/dog/photo.dat", jpg, n);
    free(jpg);
    o.resolution = 5;
    open_ok(&ds, tmp_path("set"), &o);
    ck_assert_int_eq(ds.count, 5);
    dc_image e = expected(&j, 3, 5), e0 = expected(&a, 3, 5);
    assert_pixels(&ds, 3, &e); /* dog/c.png, dog/photo.dat, dog/sub/d.png */
    assert_pixels(&ds, 0, &e0);
    dc_dataset_close(&ds);
    dc_image_free(&e), dc_image_free(&e0), dc_image_free(&j);
    dc_image_free(&a), dc_image_free(&b), dc_image_free(&c), dc_image_free(&d);
    remove_tmpdir();
}
END_TEST

START_TEST(test_folder_unlabelled) {
    make_tmpdir();
    dc_image a = write_png("u/01.png", 20, 12, 3), b = write_png("u/02.png", 9, 17, 1),
             c = write_png("u/03.png", 16, 16, 3);
    dc_dataset ds;
    dc_dataset_options o = options();
    for (int channels = 1; channels <= 3; channels += 2) {
        o.resolution = 10, o.channels = channels;
        open_ok(&ds, tmp_path("u"), &o);
        ck_assert_int_eq(ds.count, 3);
        ck_assert_int_eq(ds.num_classes, 0);
        ck_assert_int_eq(ds.c, channels);
        const dc_image *src[] = {&a, &b, &c};
        for (int i = 0; i < 3; i++) {
            dc_image e = expected(src[i], channels, 10);
            assert_pixels(&ds, i, &e);
            dc_image_free(&e);
            ck_assert_int_eq(ds.labels[i], -1);
        }
        dc_dataset_close(&ds);
    }
    dc_image_free(&a), dc_image_free(&b), dc_image_free(&c);
    remove_tmpdir();
}
END_TEST

/* Channels 0 keeps the source's: gray when all are gray; RGB as soon as one
 * is, the gray ones written before it widened. */
START_TEST(test_folder_channels) {
    make_tmpdir();
    dc_image g1 = write_png("m/1.png", 7, 5, 1), g2 = write_png("m/2.png", 7, 5, 1);
    dc_dataset ds;
    dc_dataset_options o = options();
    open_ok(&ds, tmp_path("m"), &o);
    ck_assert_int_eq(ds.c, 1);
    assert_pixels(&ds, 1, &g2);
    dc_dataset_close(&ds);

    dc_image rgb = write_png("m/3.png", 7, 5, 3), g4 = write_png("m/4.png", 7, 5, 1);
    open_ok(&ds, tmp_path("m"), &o);
    ck_assert_int_eq(ds.c, 3);
    const dc_image *src[] = {&g1, &g2, &rgb, &g4};
    for (int i = 0; i < 4; i++) {
        dc_image e = expected(src[i], 3, 0);
        assert_pixels(&ds, i, &e);
        dc_image_free(&e);
    }
    dc_dataset_close(&ds);
    dc_image_free(&g1), dc_image_free(&g2), dc_image_free(&rgb), dc_image_free(&g4);
    remove_tmpdir();
}
END_TEST

static void write_text(const char *rel, const char *text) { write_bytes(rel, text, strlen(text)); }

START_TEST(test_metadata) {
    make_tmpdir();
    dc_image a = write_png("c/a.png", 4, 4, 3), b = write_png("c/sub/b.png", 4, 4, 3),
             z = write_png("c/sub/z.png", 4, 4, 3);
    write_text("c/metadata.jsonl",
               "\xef\xbb\xbf{\"file_name\": \"a.png\", \"text\": \"a red \\\"cat\\\"\"}\n"
               "\n"
               "{\"file_name\": \"./sub/b.png\", \"text\": \"\\u00e9t\\u00e9\", \"other\": 1}\r\n"
               "{\"file_name\": \"sub/z.png\"}\n");
    dc_dataset ds;
    dc_dataset_options o = options();
    open_ok(&ds, tmp_path("c"), &o);
    ck_assert_int_eq(ds.count, 2);
    ck_assert_int_eq(ds.num_classes, 1); /* "sub"; a.png is outside it */
    ck_assert_int_eq(ds.n_skipped, 1);
    ck_assert_ptr_nonnull(ds.captions);
    ck_assert_str_eq(ds.captions[0], "\xc3\xa9t\xc3\xa9");
    ck_assert_str_eq(ds.captions[1], "");
    dc_dataset_close(&ds);

    /* unlabelled, so all three are used, with their captions */
    rename(tmp_path("c/sub/b.png"), tmp_path("c/b.png"));
    rename(tmp_path("c/sub/z.png"), tmp_path("c/z.png"));
    rmdir(tmp_path("c/sub"));
    write_text("c/metadata.jsonl", "{\"file_name\": \"a.png\", \"text\": \"a red \\\"cat\\\"\"}\n"
                                   "{\"file_name\": \"b.png\", \"text\": \"two\"}");
    open_ok(&ds, tmp_path("c"), &o);
    ck_assert_int_eq(ds.count, 3);
    ck_assert_str_eq(ds.captions[0], "a red \"cat\"");
    ck_assert_str_eq(ds.captions[1], "two");
    ck_assert_str_eq(ds.captions[2], "");
    assert_pixels(&ds, 2, &z);
    dc_dataset_close(&ds);

    /* empty, as `diffc caption` leaves it before its first caption (UBSan
     * caught the pointer arithmetic on the NULL map of an empty file) */
    write_text("c/metadata.jsonl", "");
    open_ok(&ds, tmp_path("c"), &o);
    ck_assert_int_eq(ds.count, 3);
    ck_assert_str_eq(ds.captions[0], "");
    dc_dataset_close(&ds);

    static const struct {
        const char *text, *want;
    } bad[] = {
        {"{\"file_name\": \"a.png\"}\n{\"file_name\": \"b.png\", \"text\": \"x\"\n",
         "metadata.jsonl line 2: not valid JSON"},
        {"\n\n[1, 2]\n", "metadata.jsonl line 3: not a JSON object"},
        {"{\"text\": \"x\"}", "line 1: no \"file_name\" string"},
        {"{\"file_name\": \"nope.png\", \"text\": \"x\"}",
         "line 1: file_name 'nope.png' is not an image in the folder"},
        {"{\"file_name\": \"a.png\"}\n{\"file_name\": \"a.png\"}",
         "line 2: 'a.png' is listed a second time (first on line 1)"},
        {"{\"file_name\": \"a.png\", \"text\": 3}", "line 1: \"text\" is not a string"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text("c/metadata.jsonl", bad[i].text);
        open_fails(tmp_path("c"), &o, bad[i].want);
    }
    dc_image_free(&a), dc_image_free(&b), dc_image_free(&z);
    remove_tmpdir();
}
END_TEST

/* Lines written by dc_metadata_append (as `diffc caption` and text-to-image
 * `sample` write them) are what the folder source reads: quotes, newlines
 * and UTF-8 in the text survive. */
START_TEST(test_metadata_append) {
    make_tmpdir();
    dc_image a = write_png("m/a.png", 4, 4, 3), b = write_png("m/b.png", 4, 4, 3);
    int fd = open(tmp_path("m/metadata.jsonl"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    const char *texts[2] = {"a \"red\" cube,\nthen a line \\ and a tab\t", "\xe9t\xe9 \xe9\xa6\xac"};
    ck_assert_msg(dc_metadata_append(fd, "m", "b.png", texts[1]) == 0, "%s", dc_error());
    ck_assert_msg(dc_metadata_append(fd, "m", "a.png", texts[0]) == 0, "%s", dc_error());
    close(fd);
    dc_dataset ds;
    dc_dataset_options o = options();
    open_ok(&ds, tmp_path("m"), &o);
    ck_assert_int_eq(ds.count, 2);
    ck_assert_str_eq(ds.captions[0], texts[0]);
    ck_assert_str_eq(ds.captions[1], texts[1]);
    dc_dataset_close(&ds);
    /* a closed descriptor: an error naming the file, not a crash */
    ck_assert_int_eq(dc_metadata_append(fd, "m/metadata.jsonl", "a.png", "x"), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "m/metadata.jsonl"));
    dc_image_free(&a), dc_image_free(&b);
    remove_tmpdir();
}
END_TEST

static void assert_prompts(const char *prompt, const char *path, const char *const *want, int64_t n) {
    char **got;
    int64_t got_n;
    ck_assert_msg(dc_prompts_read(prompt, path, &got, &got_n) == 0, "%s", dc_error());
    ck_assert_int_eq(got_n, n);
    for (int64_t i = 0; i < n; i++) {
        ck_assert_str_eq(got[i], want[i]);
        free(got[i]);
    }
    free(got);
}

START_TEST(test_prompts) {
    make_tmpdir();
    write_text("p.txt", "a red cube\r\n\n  a blue ball  \n\r\n\xe9t\xe9");
    const char *want[] = {"first", "a red cube", "  a blue ball  ", "\xe9t\xe9"};
    assert_prompts("first", tmp_path("p.txt"), want, 4);
    assert_prompts(NULL, tmp_path("p.txt"), want + 1, 3);
    assert_prompts("", NULL, (const char *const[]){""}, 1); /* an empty prompt, as diffusers takes it */
    char **got = (char **)&got;
    int64_t n = 5;
    write_text("empty.txt", "\n\r\n");
    write_bytes("nul.txt", "a\0b\n", 4);
    static const struct {
        const char *prompt, *file, *want;
    } bad[] = {{NULL, NULL, "needs --prompt"},
               {NULL, "empty.txt", "no prompt in the file"},
               {NULL, "nul.txt", "NUL byte"},
               {"x", "missing.txt", "missing.txt"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(dc_prompts_read(bad[i].prompt, bad[i].file ? tmp_path(bad[i].file) : NULL, &got, &n), -1);
        ck_assert_msg(strstr(dc_error(), bad[i].want), "'%s' lacks '%s'", dc_error(), bad[i].want);
        ck_assert(got == NULL && n == 0);
    }
    remove_tmpdir();
}
END_TEST

/* A folder with three bad files among good ones. */
static dc_image make_bad_folder(void) {
    dc_image good = write_png("bad/b_good.png", 6, 6, 3);
    put_png("bad/d_good.png", 6, 6, 3);
    size_t n;
    uint8_t *png = read_bytes(tmp_path("bad/b_good.png"), &n);
    write_bytes("bad/a_truncated.png", png, n / 2);
    free(png);
    write_text("bad/c_garbage.png", "this is not an image at all");
    write_bytes("bad/e_empty.jpg", "", 0);
    return good;
}

static void open_quietly_not(void *arg) {
    dc_dataset_options o = options();
    o.quiet = false;
    ck_assert_msg(dc_dataset_open(arg, tmp_path("bad"), &o) == 0, "%s", dc_error());
}

START_TEST(test_bad_files) {
    make_tmpdir();
    dc_image good = make_bad_folder();
    dc_dataset ds;
    const char *err = stderr_of(open_quietly_not, &ds);
    ck_assert_int_eq(ds.count, 2);
    assert_pixels(&ds, 0, &good);
    ck_assert_int_eq(ds.n_skipped, 3);
    ck_assert_str_eq(ds.skipped[0].path, "a_truncated.png");
    ck_assert_str_eq(ds.skipped[1].path, "c_garbage.png");
    ck_assert_str_eq(ds.skipped[2].path, "e_empty.jpg");
    ck_assert_str_eq(ds.skipped[1].reason, "not a PNG or JPEG file");
    ck_assert_str_eq(ds.skipped[2].reason, "empty file");
    ck_assert_msg(strstr(ds.skipped[0].reason, "PNG"), "%s", ds.skipped[0].reason);
    /* one line per file, in order, then a summary line */
    char want[512];
    snprintf(want, sizeof want,
             "diffc: warning: skipping a_truncated.png: %s\n"
             "diffc: warning: skipping c_garbage.png: not a PNG or JPEG file\n"
             "diffc: warning: skipping e_empty.jpg: empty file\n"
             "diffc: warning: skipped 3 of 5 files in %s/bad\n",
             ds.skipped[0].reason, tmpdir);
    ck_assert_str_eq(err, want);
    dc_dataset_close(&ds);

    /* reusing the cache names the skipped files once more, in one line */
    err = stderr_of(open_quietly_not, &ds);
    ck_assert_msg(strstr(err, "3 files of") && strstr(err, "were skipped") && !strchr(err, '\n')[1], "%s",
                  err);
    dc_dataset_close(&ds);

    /* strict: the first bad file is the error, built or reused */
    dc_dataset_options o = options();
    o.strict = true;
    open_fails(tmp_path("bad"), &o, "bad/a_truncated.png: ");
    open_fails(tmp_path("bad"), &o, "strict");
    char cache2[128];
    snprintf(cache2, sizeof cache2, "%s/cache2", tmpdir);
    o.cache_dir = cache2;
    open_fails(tmp_path("bad"), &o, "bad/a_truncated.png: ");
    ck_assert_int_eq(cache_files(tmp_path("cache2")), 0); /* no temporary left behind */
    dc_image_free(&good);
    remove_tmpdir();
}
END_TEST

START_TEST(test_empty_folders) {
    make_tmpdir();
    dc_dataset_options o = options();
    mkdir(tmp_path("empty"), 0755);
    open_fails(tmp_path("empty"), &o, "no PNG or JPEG image");
    write_text("text/readme.md", "# nothing");
    open_fails(tmp_path("text"), &o, "no PNG or JPEG image");
    write_text("junk/a.png", "junk");
    write_bytes("junk/b.jpg", "\xff\xd8\xff\xe0", 4);
    open_fails(tmp_path("junk"), &o,
               "no usable image: all 2 were skipped (the first, a.png: not a PNG or JPEG");
    open_fails(tmp_path("missing"), &o, "missing: cannot open: No such file or directory");
    dc_dataset ds;
    o.resolution = -1;
    ck_assert_int_ne(dc_dataset_open(&ds, tmp_path("junk"), &o), 0);
    ck_assert_msg(strstr(dc_error(), "resolution -1"), "%s", dc_error());
    o.resolution = 0, o.channels = 2;
    ck_assert_int_ne(dc_dataset_open(&ds, tmp_path("junk"), &o), 0);
    o.channels = 0, o.split = "val";
    ck_assert_int_ne(dc_dataset_open(&ds, tmp_path("junk"), &o), 0);
    ck_assert_msg(strstr(dc_error(), "split 'val'"), "%s", dc_error());
    remove_tmpdir();
}
END_TEST

/* ---- IDX ---- */

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* An IDX file image: images [n, rows, cols] (ndim 3) or labels [n]. */
static uint8_t *idx_bytes(int ndim, uint32_t n, uint32_t rows, uint32_t cols, const uint8_t *data,
                          size_t *size) {
    size_t hdr = 4 + 4 * (size_t)ndim, len = ndim == 3 ? (size_t)n * rows * cols : n;
    uint8_t *b = malloc(hdr + len);
    b[0] = b[1] = 0, b[2] = 8, b[3] = (uint8_t)ndim;
    put_be32(b + 4, n);
    if (ndim == 3)
        put_be32(b + 8, rows), put_be32(b + 12, cols);
    memcpy(b + hdr, data, len);
    *size = hdr + len;
    return b;
}

static void write_gz(const char *rel, const void *data, size_t n) {
    make_parents(rel);
    gzFile f = gzopen(tmp_path(rel), "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(gzwrite(f, data, (unsigned)n), (int)n);
    ck_assert_int_eq(gzclose(f), Z_OK);
}

typedef struct {
    uint8_t px[7 * 5 * 4], labels[7];
} idx_set;

/* 7 images of 5x4 (rows x cols) with labels in 0..6, as `prefix`-images/labels. */
static idx_set write_idx(const char *dir, const char *prefix, int gz) {
    idx_set s;
    for (size_t i = 0; i < sizeof s.px; i++)
        s.px[i] = (uint8_t)tu_next();
    for (int i = 0; i < 7; i++)
        s.labels[i] = (uint8_t)(i == 3 ? 6 : tu_next() % 6);
    size_t n;
    char rel[256];
    uint8_t *b = idx_bytes(3, 7, 5, 4, s.px, &n);
    snprintf(rel, sizeof rel, "%s/%s-images-idx3-ubyte%s", dir, prefix, gz ? ".gz" : "");
    gz ? write_gz(rel, b, n) : write_bytes(rel, b, n);
    free(b);
    b = idx_bytes(1, 7, 0, 0, s.labels, &n);
    snprintf(rel, sizeof rel, "%s/%s-labels-idx1-ubyte%s", dir, prefix, gz ? ".gz" : "");
    gz ? write_gz(rel, b, n) : write_bytes(rel, b, n);
    free(b);
    return s;
}

static void assert_idx(const dc_dataset *ds, const idx_set *s) {
    ck_assert_int_eq(ds->count, 7);
    ck_assert(ds->h == 5 && ds->w == 4 && ds->c == 1);
    ck_assert_mem_eq(ds->pixels, s->px, sizeof s->px);
    ck_assert_int_eq(ds->num_classes, 7);
    ck_assert_str_eq(ds->class_names[6], "6");
    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(ds->labels[i], s->labels[i]);
}

START_TEST(test_idx) {
    make_tmpdir();
    idx_set train = write_idx("mnist", "train", 0), test = write_idx("mnist", "t10k", 1);
    dc_dataset ds;
    dc_dataset_options o = options();
    open_ok(&ds, tmp_path("mnist"), &o);
    assert_idx(&ds, &train);
    dc_dataset_close(&ds);
    o.split = "test";
    open_ok(&ds, tmp_path("mnist"), &o);
    assert_idx(&ds, &test);
    dc_dataset_close(&ds);
    /* a file given directly, its labels found beside it */
    open_ok(&ds, tmp_path("mnist/t10k-images-idx3-ubyte.gz"), &o);
    assert_idx(&ds, &test);
    dc_dataset_close(&ds);
    /* resized and widened like any image */
    o.resolution = 3, o.channels = 3;
    open_ok(&ds, tmp_path("mnist/train-images-idx3-ubyte"), &o);
    dc_image src = {.w = 4, .h = 5, .c = 1, .px = train.px + 20 * 6};
    dc_image e = expected(&src, 3, 3);
    assert_pixels(&ds, 6, &e);
    dc_image_free(&e);
    dc_dataset_close(&ds);
    /* without a labels file: unlabelled */
    o = options();
    unlink(tmp_path("mnist/train-labels-idx1-ubyte"));
    open_ok(&ds, tmp_path("mnist/train-images-idx3-ubyte"), &o);
    ck_assert_int_eq(ds.num_classes, 0);
    ck_assert_int_eq(ds.labels[6], -1);
    dc_dataset_close(&ds);
    open_fails(tmp_path("mnist"), &o, "without train-labels-idx1-ubyte");
    open_fails(tmp_path("mnist/t10k-labels-idx1-ubyte.gz"), &o, "an IDX labels file");
    remove_tmpdir();
}
END_TEST

/* An IDX images file `rel` whose bytes were damaged: refused with `want`. */
static void assert_idx_refused(const char *rel, const uint8_t *b, size_t n, int gz, const char *want) {
    gz ? write_gz(rel, b, n) : write_bytes(rel, b, n);
    dc_dataset_options o = options();
    open_fails(tmp_path(rel), &o, want);
}

START_TEST(test_idx_damaged) {
    make_tmpdir();
    uint8_t px[2 * 3 * 3] = {0}, labels[3] = {1, 2, 3};
    size_t n;
    uint8_t *b = idx_bytes(3, 2, 3, 3, px, &n);
    assert_idx_refused("x-images-idx3-ubyte", b, n - 1, 0, "needs 18 (truncated)");
    uint8_t *longer = calloc(n + 1, 1);
    memcpy(longer, b, n);
    assert_idx_refused("x-images-idx3-ubyte", longer, n + 1, 0, "needs 18 (trailing bytes)");
    assert_idx_refused("x-images-idx3-ubyte", longer, n + 1, 1, "longer than its IDX header says");
    assert_idx_refused("x-images-idx3-ubyte", b, n - 5, 1, "its header needs 18 (truncated)");
    free(longer);
    b[2] = 0x0d;
    assert_idx_refused("x-images-idx3-ubyte", b, n, 0, "IDX data type 0x0d is not unsigned bytes");
    b[2] = 8, put_be32(b + 8, 0);
    assert_idx_refused("x-images-idx3-ubyte", b, n, 0, "IDX dimension 1 is 0");
    /* a bomb: a small gzip file whose header promises 4 GiB */
    put_be32(b + 4, 65536), put_be32(b + 8, 256), put_be32(b + 12, 256);
    assert_idx_refused("x-images-idx3-ubyte", b, n, 1, "more than");
    free(b);

    /* wrong magic: no longer an IDX file, so not a dataset at all */
    write_bytes("y-images-idx3-ubyte", "\x01\x02\x03\x04 not idx", 12);
    dc_dataset_options o = options();
    open_fails(tmp_path("y-images-idx3-ubyte"), &o, "not a dataset");

    /* a gzip file cut short inside the deflate stream */
    b = idx_bytes(3, 2, 3, 3, px, &n);
    write_gz("z-images-idx3-ubyte", b, n);
    size_t zn;
    uint8_t *z = read_bytes(tmp_path("z-images-idx3-ubyte"), &zn);
    assert_idx_refused("z-images-idx3-ubyte", z, zn - 6, 0, "gzip data is truncated");
    z[zn - 1] ^= 1; /* the stored length */
    assert_idx_refused("z-images-idx3-ubyte", z, zn, 0, "corrupt gzip data");
    free(z);
    free(b);

    /* labels that do not match the images */
    b = idx_bytes(3, 2, 3, 3, px, &n);
    write_bytes("w/train-images-idx3-ubyte", b, n);
    free(b);
    b = idx_bytes(1, 3, 0, 0, labels, &n);
    write_bytes("w/train-labels-idx1-ubyte", b, n);
    free(b);
    open_fails(tmp_path("w"), &o, "3 labels for the 2 images");
    b = idx_bytes(3, 2, 3, 3, px, &n);
    write_bytes("w/train-labels-idx1-ubyte", b, n);
    free(b);
    open_fails(tmp_path("w"), &o, "expected labels (1: count)");
    remove_tmpdir();
}
END_TEST

START_TEST(test_fashion_mnist) {
    struct stat st;
    if (stat(FASHION "/t10k-images-idx3-ubyte.gz", &st) != 0)
        return; /* the Debian package dataset-fashion-mnist is not installed */
    make_tmpdir();
    dc_dataset ds;
    dc_dataset_options o = options();
    o.split = "test";
    open_ok(&ds, FASHION, &o);
    ck_assert_int_eq(ds.count, 10000);
    ck_assert(ds.h == 28 && ds.w == 28 && ds.c == 1);
    ck_assert_int_eq(ds.num_classes, 10);
    ck_assert_str_eq(ds.class_names[0], "T-shirt/top");
    ck_assert_str_eq(ds.class_names[9], "Ankle boot");
    int64_t counts[10] = {0};
    for (int64_t i = 0; i < ds.count; i++)
        counts[ds.labels[i]]++;
    for (int k = 0; k < 10; k++)
        ck_assert_int_eq(counts[k], 1000);
    ck_assert_int_eq(ds.labels[0], 9); /* the first test image is an ankle boot */
    dc_dataset_close(&ds);
    remove_tmpdir();
}
END_TEST

/* ---- CIFAR-10 ---- */

/* n records with random pixels and labels (label of record 0: `first`). */
static uint8_t *cifar_records(int n, int first, size_t *size) {
    *size = (size_t)n * 3073;
    uint8_t *b = malloc(*size);
    for (size_t i = 0; i < *size; i++)
        b[i] = (uint8_t)tu_next();
    for (int r = 0; r < n; r++)
        b[(size_t)r * 3073] = (uint8_t)(r ? tu_next() % 10 : (uint64_t)first);
    return b;
}

/* Record r as HWC. */
static dc_image cifar_image(const uint8_t *b, int r) {
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, 32, 32, 3), 0);
    const uint8_t *p = b + (size_t)r * 3073 + 1;
    for (int i = 0; i < 1024; i++)
        for (int c = 0; c < 3; c++)
            img.px[3 * i + c] = p[c * 1024 + i];
    return img;
}

START_TEST(test_cifar) {
    make_tmpdir();
    size_t n1, n2, n10, nt;
    uint8_t *b1 = cifar_records(3, 7, &n1), *b2 = cifar_records(2, 0, &n2), *b10 = cifar_records(1, 5, &n10),
            *bt = cifar_records(2, 9, &nt);
    write_bytes("cifar/data_batch_1.bin", b1, n1);
    write_bytes("cifar/data_batch_10.bin", b10, n10); /* numeric order: after 2 */
    write_bytes("cifar/data_batch_2.bin", b2, n2);
    write_bytes("cifar/test_batch.bin", bt, nt);
    dc_dataset ds;
    dc_dataset_options o = options();
    open_ok(&ds, tmp_path("cifar"), &o);
    ck_assert_int_eq(ds.count, 6);
    ck_assert_int_eq(ds.num_classes, 10);
    ck_assert_str_eq(ds.class_names[7], "horse");
    const uint8_t *files[] = {b1, b1, b1, b2, b2, b10};
    const int recs[] = {0, 1, 2, 0, 1, 0};
    for (int i = 0; i < 6; i++) {
        dc_image e = cifar_image(files[i], recs[i]);
        assert_pixels(&ds, i, &e);
        dc_image_free(&e);
        ck_assert_int_eq(ds.labels[i], files[i][recs[i] * 3073]);
    }
    dc_dataset_close(&ds);

    write_text("cifar/batches.meta.txt", "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n");
    o.split = "test";
    open_ok(&ds, tmp_path("cifar"), &o);
    ck_assert_int_eq(ds.count, 2);
    ck_assert_str_eq(ds.class_names[9], "j");
    ck_assert_int_eq(ds.labels[0], 9);
    dc_dataset_close(&ds);
    o.split = NULL;
    open_ok(&ds, tmp_path("cifar/test_batch.bin"), &o);
    ck_assert_int_eq(ds.count, 2);
    ck_assert_str_eq(ds.class_names[0], "a");
    dc_dataset_close(&ds);

    write_text("cifar/batches.meta.txt", "cat\ndog\n");
    open_fails(tmp_path("cifar/test_batch.bin"), &o, "record 0 has label 9, but there are 2 classes");
    unlink(tmp_path("cifar/batches.meta.txt"));
    write_bytes("cifar/data_batch_3.bin", b1, n1 - 1);
    open_fails(tmp_path("cifar"), &o,
               "data_batch_3.bin: file is 9218 bytes, not a whole number of CIFAR-10 records");
    mkdir(tmp_path("only"), 0755);
    write_bytes("only/test_batch.bin", bt, nt);
    open_fails(tmp_path("only"), &o, "CIFAR-10 folder without data_batch_1.bin");
    free(b1), free(b2), free(b10), free(bt);
    remove_tmpdir();
}
END_TEST

/* ---- the cache ---- */

static void stat_ok(const char *path, struct stat *st) { ck_assert_msg(stat(path, st) == 0, "%s", path); }

START_TEST(test_cache_reuse) {
    make_tmpdir();
    dc_image a = write_png("r/x/a.png", 9, 7, 3), b = write_png("r/y/b.png", 9, 7, 1);
    write_text("r/metadata.jsonl", "{\"file_name\": \"y/b.png\", \"text\": \"bee\"}\n");
    put_png("r/bad.png", 3, 3, 3); /* outside the classes: a skip recorded in the cache */
    dc_dataset ds, again, direct;
    dc_dataset_options o = options();
    open_ok(&ds, tmp_path("r"), &o);
    struct stat s1, s2;
    stat_ok(ds.cache_path, &s1);
    ck_assert_msg(strncmp(ds.cache_path, tmp_path("cache/r-"), strlen(tmp_path("cache/r-"))) == 0, "%s",
                  ds.cache_path);

    /* a second open maps the same file without writing it */
    open_ok(&again, tmp_path("r"), &o);
    ck_assert_str_eq(again.cache_path, ds.cache_path);
    stat_ok(again.cache_path, &s2);
    ck_assert(s1.st_ino == s2.st_ino && s1.st_mtim.tv_nsec == s2.st_mtim.tv_nsec &&
              s1.st_mtime == s2.st_mtime);

    /* the cache opened directly holds everything */
    ck_assert_msg(dc_dataset_open_cache(&direct, ds.cache_path) == 0, "%s", dc_error());
    const dc_dataset *all[] = {&ds, &again, &direct};
    for (int k = 0; k < 3; k++) {
        const dc_dataset *d = all[k];
        ck_assert_int_eq(d->count, 2);
        ck_assert_int_eq(d->c, 3);
        ck_assert_int_eq(d->num_classes, 2);
        ck_assert_str_eq(d->class_names[1], "y");
        ck_assert_int_eq(d->labels[1], 1);
        ck_assert_str_eq(d->captions[0], "");
        ck_assert_str_eq(d->captions[1], "bee");
        ck_assert_int_eq(d->n_skipped, 1);
        ck_assert_str_eq(d->skipped[0].path, "bad.png");
        ck_assert_mem_eq(d->pixels, ds.pixels, (size_t)2 * 9 * 7 * 3);
    }
    assert_pixels(&direct, 0, &a);
    dc_image e = expected(&b, 3, 0);
    assert_pixels(&direct, 1, &e);
    dc_image_free(&e);
    dc_dataset_close(&direct);
    dc_dataset_close(&again);
    ck_assert_int_eq(cache_files(tmp_path("cache")), 1);

    /* another resolution: another cache */
    o.resolution = 4;
    open_ok(&again, tmp_path("r"), &o);
    ck_assert_str_ne(again.cache_path, ds.cache_path);
    ck_assert_int_eq(again.h, 4);
    dc_dataset_close(&again);
    ck_assert_int_eq(cache_files(tmp_path("cache")), 2);

    /* a source file touched: rebuilt under a new name */
    o.resolution = 0;
    struct timespec t[2] = {{.tv_sec = 1000000000}, {.tv_sec = 1000000000}};
    ck_assert_int_eq(utimensat(AT_FDCWD, tmp_path("r/x/a.png"), t, 0), 0);
    open_ok(&again, tmp_path("r"), &o);
    ck_assert_str_ne(again.cache_path, ds.cache_path);
    ck_assert_mem_eq(again.pixels, ds.pixels, (size_t)2 * 9 * 7 * 3);
    dc_dataset_close(&again);
    /* a file added: rebuilt */
    dc_image c = write_png("r/x/c.png", 9, 7, 3);
    open_ok(&again, tmp_path("r"), &o);
    ck_assert_int_eq(again.count, 3);
    assert_pixels(&again, 1, &c);
    dc_dataset_close(&again);
    ck_assert_int_eq(cache_files(tmp_path("cache")), 4);
    dc_dataset_close(&ds);
    dc_image_free(&a), dc_image_free(&b), dc_image_free(&c);
    remove_tmpdir();
}
END_TEST

/* The same source built with 1 and 2 threads: the same bytes. */
START_TEST(test_cache_deterministic) {
    make_tmpdir();
    for (int i = 0; i < 40; i++) {
        char rel[64];
        snprintf(rel, sizeof rel, "d/%c/%02d.png", 'a' + i % 3, i);
        put_png(rel, 10 + i % 7, 12 + i % 5, i % 4 ? 3 : 1);
    }
    write_text("d/a/99.png", "bad");
    dc_dataset one, two;
    dc_dataset_options o = options();
    o.resolution = 8;
    omp_set_num_threads(1);
    open_ok(&one, tmp_path("d"), &o);
    omp_set_num_threads(2);
    char cache2[128];
    snprintf(cache2, sizeof cache2, "%s/cache2", tmpdir);
    o.cache_dir = cache2;
    open_ok(&two, tmp_path("d"), &o);
    ck_assert_int_eq(one.count, 40);
    ck_assert_uint_eq(one.map_size, two.map_size);
    ck_assert_mem_eq(one.map, two.map, one.map_size);
    dc_dataset_close(&one);
    dc_dataset_close(&two);
    remove_tmpdir();
}
END_TEST

static uint32_t get32le(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

static void fix_header_crc(uint8_t *b) {
    uint32_t crc = (uint32_t)crc32(0, b, 4092);
    for (int i = 0; i < 4; i++)
        b[4092 + i] = (uint8_t)(crc >> 8 * i);
}

/* The cache bytes with one change, written to bad.diffc-ds: refused with want. */
static void assert_cache_refused(const uint8_t *good, size_t n, size_t at, uint8_t x, int fix_crc,
                                 const char *want) {
    uint8_t *b = malloc(n);
    memcpy(b, good, n);
    if (at < n)
        b[at] ^= x;
    if (fix_crc)
        fix_header_crc(b);
    write_bytes("bad.diffc-ds", b, n);
    free(b);
    dc_dataset ds;
    ck_assert_msg(dc_dataset_open_cache(&ds, tmp_path("bad.diffc-ds")) != 0, "opened (%s)", want);
    ck_assert_msg(strstr(dc_error(), want), "'%s' lacks '%s'", dc_error(), want);
    ck_assert_msg(strstr(dc_error(), "bad.diffc-ds: "), "%s", dc_error());
}

START_TEST(test_cache_damaged) {
    make_tmpdir();
    dc_image a = write_png("k/x/a.png", 5, 5, 3), b = write_png("k/y/b.png", 5, 5, 3);
    dc_dataset ds;
    dc_dataset_options o = options();
    open_ok(&ds, tmp_path("k"), &o);
    char path[512];
    snprintf(path, sizeof path, "%s", ds.cache_path);
    dc_dataset_close(&ds);
    size_t n;
    uint8_t *good = read_bytes(path, &n);
    size_t labels = 4096 + 2 * 75 + 2; /* the 8-aligned labels after 150 pixel bytes */

    assert_cache_refused(good, 100, n, 0, 0, "file is 100 bytes, too short for a diffc dataset cache");
    assert_cache_refused(good, n - 1, n, 0, 0, "but its header describes");
    assert_cache_refused(good, n, 0, 1, 0, "not a diffc dataset cache (bad magic)");
    assert_cache_refused(good, n, 8, 1, 0, "cache format version 0, this diffc reads version 1");
    assert_cache_refused(good, n, 300, 1, 0, "header checksum mismatch");
    assert_cache_refused(good, n, 16, 1, 1, "file is"); /* count 3 instead of 2 */
    assert_cache_refused(good, n, 16, 1, 1, "but its header describes");
    assert_cache_refused(good, n, 23, 0x80, 1, "image count");
    assert_cache_refused(good, n, 32, 1, 1, "image shape 5x5x2 is not"); /* c = 3 ^ 1 */
    assert_cache_refused(good, n, 36, 4, 1, "the class names table is 36 bytes, too small for 6 entries");
    assert_cache_refused(good, n, labels, 1, 0, "labels and tables checksum mismatch");
    assert_cache_refused(good, n, n - 1, 0xff, 0, "checksum mismatch");
    ck_assert_int_eq(get32le(good + 36), 2);

    /* a damaged pixel: opening does not read the pixels, info does */
    uint8_t *bad = malloc(n);
    memcpy(bad, good, n);
    bad[4096 + 7] ^= 1;
    write_bytes("pix.diffc-ds", bad, n);
    ck_assert_msg(dc_dataset_open_cache(&ds, tmp_path("pix.diffc-ds")) == 0, "%s", dc_error());
    dc_dataset_close(&ds);
    dc_dataset_summary s;
    ck_assert_int_ne(dc_dataset_summarize(&s, tmp_path("pix.diffc-ds")), 0);
    ck_assert_msg(strstr(dc_error(), "pixel checksum mismatch"), "%s", dc_error());

    /* the cache of a source damaged in place: rebuilt on open */
    write_bytes("pix.diffc-ds", bad, n);
    FILE *f = fopen(path, "r+b");
    fseek(f, 20, SEEK_SET);
    fputc(0x55, f);
    fclose(f);
    open_ok(&ds, tmp_path("k"), &o);
    assert_pixels(&ds, 1, &b);
    dc_dataset_close(&ds);
    size_t n2;
    uint8_t *rebuilt = read_bytes(path, &n2);
    ck_assert_uint_eq(n2, n);
    ck_assert_mem_eq(rebuilt, good, n);
    free(rebuilt);
    free(bad);
    free(good);
    dc_image_free(&a), dc_image_free(&b);
    remove_tmpdir();
}
END_TEST

/* ---- summaries ---- */

START_TEST(test_summary) {
    make_tmpdir();
    dc_image imgs[4] = {write_png("s/cat/1.png", 10, 8, 3), write_png("s/cat/2.png", 30, 6, 1),
                        write_png("s/dog/3.png", 12, 20, 3), write_png("s/dog/4.png", 12, 20, 3)};
    write_text("s/dog/5.jpg", "broken");
    dc_dataset_summary s;
    ck_assert_msg(dc_dataset_summarize(&s, tmp_path("s")) == 0, "%s", dc_error());
    ck_assert_str_eq(s.kind, "image folder");
    ck_assert_int_eq(s.count, 4);
    ck_assert(s.min_w == 10 && s.max_w == 30 && s.min_h == 6 && s.max_h == 20);
    ck_assert(s.min_c == 1 && s.max_c == 3);
    ck_assert_int_eq(s.num_classes, 2);
    ck_assert_str_eq(s.class_names[1], "dog");
    ck_assert(s.class_counts[0] == 2 && s.class_counts[1] == 2);
    ck_assert_int_eq(s.n_skipped, 1);
    ck_assert_str_eq(s.skipped[0].path, "dog/5.jpg");
    ck_assert_int_eq(s.test_count, -1);
    dc_dataset_summary_free(&s);
    dc_dataset_summary_free(&s);

    dc_dataset ds;
    dc_dataset_options o = options();
    o.resolution = 6;
    open_ok(&ds, tmp_path("s"), &o);
    ck_assert_msg(dc_dataset_summarize(&s, ds.cache_path) == 0, "%s", dc_error());
    ck_assert_str_eq(s.kind, "cache");
    ck_assert_msg(strstr(s.built_from, "image folder /") && strstr(s.built_from, "/s"), "%s", s.built_from);
    ck_assert(s.count == 4 && s.min_w == 6 && s.max_h == 6 && s.max_c == 3 && s.n_skipped == 1);
    ck_assert(s.class_counts[0] == 2 && s.class_counts[1] == 2);
    dc_dataset_summary_free(&s);

    ck_assert(dc_dataset_recognise(tmp_path("s")));
    ck_assert(dc_dataset_recognise(ds.cache_path));
    dc_dataset_close(&ds);
    mkdir(tmp_path("empty"), 0755);
    ck_assert(!dc_dataset_recognise(tmp_path("empty")));
    ck_assert(!dc_dataset_recognise(tmp_path("missing")));
    ck_assert(!dc_dataset_recognise("tests/fixtures/optim_adamw.safetensors"));
    ck_assert(!dc_dataset_recognise("tests/fixtures/image_rgb.jpg"));
    idx_set idx = write_idx("m", "train", 1);
    write_idx("m", "t10k", 0);
    ck_assert(dc_dataset_recognise(tmp_path("m")));
    ck_assert(dc_dataset_recognise(tmp_path("m/train-images-idx3-ubyte.gz")));
    ck_assert_msg(dc_dataset_summarize(&s, tmp_path("m")) == 0, "%s", dc_error());
    ck_assert(s.count == 7 && s.test_count == 7 && s.num_classes == 7 && s.max_w == 4 && s.max_h == 5);
    int64_t six = 0;
    for (int i = 0; i < 7; i++)
        six += idx.labels[i] == 6;
    ck_assert_int_eq(s.class_counts[6], six);
    dc_dataset_summary_free(&s);
    for (int i = 0; i < 4; i++)
        dc_image_free(&imgs[i]);
    remove_tmpdir();
}
END_TEST

int main(void) {
    Suite *s = suite_create("dataset");
    TCase *tc = tu_tcase(s, "folder", 20);
    tcase_add_test(tc, test_folder_classes);
    tcase_add_test(tc, test_folder_unlabelled);
    tcase_add_test(tc, test_folder_channels);
    tcase_add_test(tc, test_metadata);
    tcase_add_test(tc, test_metadata_append);
    tcase_add_test(tc, test_prompts);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_empty_folders);
    tc = tu_tcase(s, "idx_cifar", 20);
    tcase_add_test(tc, test_idx);
    tcase_add_test(tc, test_idx_damaged);
    tcase_add_test(tc, test_fashion_mnist);
    tcase_add_test(tc, test_cifar);
    tc = tu_tcase(s, "cache", 20);
    tcase_add_test(tc, test_cache_reuse);
    tcase_add_test(tc, test_cache_deterministic);
    tcase_add_test(tc, test_cache_damaged);
    tcase_add_test(tc, test_summary);
    return tu_run(s);
}
