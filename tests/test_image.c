/* Images: resizing and centre cropping against PIL and torchvision
 * (tests/fixtures/image_ref.safetensors, from scripts/make_image_fixtures.py),
 * JPEG decoding against PIL's, PNG decoding of every colour type and bit depth
 * against pixels computed here, EXIF orientation, the pixel operations, and
 * malformed files refused with a message. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/image.h"

#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>

#include <jpeglib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define FIXTURES "tests/fixtures/"

/* ---- helpers ---- */

/* The source pattern of make_image_fixtures.py: wrapping ramps plus hashed noise. */
static uint8_t pattern_px(uint32_t x, uint32_t y, uint32_t c) {
    uint32_t v = x * 0x9E3779B1u + y * 0x85EBCA77u + c * 0xC2B2AE3Du;
    v ^= v >> 15;
    v *= 0x2C1B3C6Du;
    v ^= v >> 12;
    return (uint8_t)(x * 5 + y * 3 + c * 80 + (v >> 26));
}

static dc_image pattern(int w, int h, int c) {
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, w, h, c), 0);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++)
                img.px[((size_t)y * w + x) * c + k] = pattern_px(x, y, k);
    return img;
}

/* The reference tensor `name` ([H, W, C] uint8) as an image (a copy). */
static dc_image reference(const char *name) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURES "image_ref.safetensors") == 0, "%s", dc_error());
    const dc_st_tensor *t = dc_st_find(&f, name);
    ck_assert_msg(t != NULL, "fixture %s is missing", name);
    ck_assert_int_eq(t->ndim, 3);
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, (int)t->shape[1], (int)t->shape[0], (int)t->shape[2]), 0);
    memcpy(img.px, t->data, t->nbytes);
    dc_st_close(&f);
    return img;
}

/* Same size, and pixels within max_diff levels with a mean difference of at
 * most max_mean. */
static void assert_close(const dc_image *got, const dc_image *want, int max_diff, double max_mean,
                         const char *what) {
    ck_assert_msg(got->w == want->w && got->h == want->h && got->c == want->c, "%s: %dx%dx%d, want %dx%dx%d",
                  what, got->w, got->h, got->c, want->w, want->h, want->c);
    size_t n = (size_t)got->w * got->h * got->c, worst = 0;
    int max = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        int d = abs(got->px[i] - want->px[i]);
        sum += d;
        if (d > max)
            max = d, worst = i;
    }
    ck_assert_msg(max <= max_diff && sum / n <= max_mean,
                  "%s: max diff %d (byte %zu: %d, want %d), mean diff %.3f; allowed %d and %.3f", what, max, worst,
                  got->px[worst], want->px[worst], sum / n, max_diff, max_mean);
}

static void assert_equal(const dc_image *got, const dc_image *want, const char *what) {
    assert_close(got, want, 0, 0.0, what);
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    ck_assert_msg(fp != NULL, "cannot open %s", path);
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *p = malloc(*n + 1);
    ck_assert_uint_eq(fread(p, 1, *n, fp), *n);
    fclose(fp);
    return p;
}

/* ---- against PIL and torchvision ---- */

START_TEST(test_pattern_matches_script) {
    const char *names[] = {"src.28x28x1", "src.7x5x3"};
    for (int i = 0; i < 2; i++) {
        dc_image want = reference(names[i]), got = pattern(want.w, want.h, want.c);
        assert_equal(&got, &want, names[i]);
        dc_image_free(&got);
        dc_image_free(&want);
    }
}
END_TEST

/* PIL's resize is fixed point and so is ours, step for step: exact. */
START_TEST(test_resize_matches_pil) {
    static const int cases[][5] = {{256, 256, 3, 64, 64}, {100, 100, 3, 37, 37}, {28, 28, 1, 64, 64},
                                   {120, 80, 3, 50, 30},  {80, 120, 3, 33, 97},  {100, 37, 1, 100, 20},
                                   {57, 40, 1, 23, 40},   {7, 5, 3, 1, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int *k = cases[i];
        char name[64];
        snprintf(name, sizeof name, "resize.%dx%dx%d.%dx%d", k[0], k[1], k[2], k[3], k[4]);
        dc_image src = pattern(k[0], k[1], k[2]), want = reference(name), got;
        ck_assert_msg(dc_image_resize(&got, &src, k[3], k[4]) == 0, "%s", dc_error());
        assert_equal(&got, &want, name);
        dc_image_free(&got);
        dc_image_free(&want);
        dc_image_free(&src);
    }
}
END_TEST

START_TEST(test_resize_center_crop_matches_torchvision) {
    static const int cases[][4] = {{120, 80, 3, 48}, {75, 131, 3, 32}, {74, 64, 3, 32}, {101, 100, 1, 50},
                                   {28, 28, 1, 64}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const int *k = cases[i];
        char name[64];
        snprintf(name, sizeof name, "crop.%dx%dx%d.%d", k[0], k[1], k[2], k[3]);
        dc_image src = pattern(k[0], k[1], k[2]), want = reference(name), got;
        ck_assert_msg(dc_image_resize_center_crop(&got, &src, k[3]) == 0, "%s", dc_error());
        assert_equal(&got, &want, name);
        dc_image_free(&got);
        dc_image_free(&want);
        dc_image_free(&src);
    }
}
END_TEST

START_TEST(test_gray_matches_pil) {
    dc_image src = pattern(60, 40, 3), want = reference("gray.60x40"), got, back;
    ck_assert_int_eq(dc_image_convert(&got, &src, 1), 0);
    assert_equal(&got, &want, "convert L");
    ck_assert_int_eq(dc_image_convert(&back, &got, 3), 0);
    for (size_t i = 0; i < (size_t)60 * 40 * 3; i++)
        ck_assert_uint_eq(back.px[i], got.px[i / 3]);
    dc_image_free(&back);
    dc_image_free(&got);
    dc_image_free(&want);
    dc_image_free(&src);
}
END_TEST

/* PIL decodes with the same libjpeg-turbo and default settings (islow IDCT,
 * fancy upsampling), so the pixels agree exactly; CMYK goes through the same
 * integer formula. */
START_TEST(test_jpeg_matches_pil) {
    const char *names[] = {"gray", "rgb", "progressive", "cmyk", "orient3", "orient6"};
    for (int i = 0; i < 6; i++) {
        char path[128], name[64];
        snprintf(path, sizeof path, FIXTURES "image_%s.jpg", names[i]);
        snprintf(name, sizeof name, "jpeg.%s", names[i]);
        dc_image got, want = reference(name);
        ck_assert_msg(dc_image_load(&got, path) == 0, "%s", dc_error());
        assert_equal(&got, &want, path);
        dc_image_free(&got);
        dc_image_free(&want);
    }
}
END_TEST

/* ---- pixel operations ---- */

START_TEST(test_alloc) {
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, 3, 2, 3), 0);
    ck_assert(img.w == 3 && img.h == 2 && img.c == 3 && img.px);
    dc_image_free(&img);
    ck_assert_ptr_null(img.px);
    dc_image_free(&img); /* twice is fine */
    const int bad[][3] = {{0, 5, 1}, {5, 0, 3}, {-1, 5, 1}, {5, 5, 2}, {5, 5, 4}, {65536, 65536, 1}};
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(dc_image_alloc(&img, bad[i][0], bad[i][1], bad[i][2]), -1);
        ck_assert_ptr_null(img.px);
        ck_assert_ptr_nonnull(strstr(dc_error(), "image of"));
    }
}
END_TEST

/* Known values of PIL's luma: pure red, green, blue, white; and 3 -> 3. */
START_TEST(test_convert) {
    dc_image src, got;
    ck_assert_int_eq(dc_image_alloc(&src, 4, 1, 3), 0);
    const uint8_t rgb[12] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255}, want[4] = {76, 150, 29, 255};
    memcpy(src.px, rgb, 12);
    ck_assert_int_eq(dc_image_convert(&got, &src, 1), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_uint_eq(got.px[i], want[i]);
    dc_image_free(&got);
    ck_assert_int_eq(dc_image_convert(&got, &src, 3), 0);
    assert_equal(&got, &src, "RGB to RGB");
    dc_image_free(&got);
    ck_assert_int_eq(dc_image_convert(&got, &src, 2), -1);
    ck_assert_ptr_null(got.px);
    dc_image_free(&src);
}
END_TEST

/* Fresh random sizes: a flat image stays flat (weights sum to one), the same
 * size is a copy, and PIL's coefficients never overflow on extreme values. */
START_TEST(test_resize_properties) {
    for (int trial = 0; trial < 30; trial++) {
        int w = 1 + (int)(tu_next() % 90), h = 1 + (int)(tu_next() % 90), c = tu_next() % 2 ? 3 : 1;
        int ow = 1 + (int)(tu_next() % 90), oh = 1 + (int)(tu_next() % 90);
        uint8_t v = (uint8_t)tu_next();
        dc_image flat, got;
        ck_assert_int_eq(dc_image_alloc(&flat, w, h, c), 0);
        memset(flat.px, v, (size_t)w * h * c);
        ck_assert_int_eq(dc_image_resize(&got, &flat, ow, oh), 0);
        ck_assert(got.w == ow && got.h == oh && got.c == c);
        for (size_t i = 0; i < (size_t)ow * oh * c; i++)
            ck_assert_msg(got.px[i] == v, "%dx%d -> %dx%d of flat %d gave %d", w, h, ow, oh, v, got.px[i]);
        dc_image_free(&got);
        dc_image_free(&flat);
        dc_image src = tu_random_image(w, h, c);
        ck_assert_int_eq(dc_image_resize(&got, &src, w, h), 0);
        assert_equal(&got, &src, "resize to the same size");
        dc_image_free(&got);
        dc_image_free(&src);
    }
    dc_image src = pattern(10, 10, 1), got;
    ck_assert_int_eq(dc_image_resize(&got, &src, 0, 5), -1);
    ck_assert_ptr_null(got.px);
    dc_image_free(&src);
}
END_TEST

/* The centre crop computes only the window it keeps: it must equal the full
 * resize cropped at torchvision's offsets (round half to even, as rint). */
START_TEST(test_center_crop_is_resize_then_crop) {
    for (int trial = 0; trial < 30; trial++) {
        int w = 1 + (int)(tu_next() % 120), h = 1 + (int)(tu_next() % 120), c = tu_next() % 2 ? 3 : 1;
        int size = 1 + (int)(tu_next() % 70);
        int shorter = w < h ? w : h, longer = w < h ? h : w;
        int new_long = (int)((double)size * longer / shorter);
        int rw = w <= h ? size : new_long, rh = w <= h ? new_long : size;
        dc_image src = tu_random_image(w, h, c), full, want, got;
        ck_assert_int_eq(dc_image_resize(&full, &src, rw, rh), 0);
        ck_assert_int_eq(dc_image_crop(&want, &full, (int)rint((rw - size) / 2.0), (int)rint((rh - size) / 2.0),
                                       size, size),
                         0);
        ck_assert_int_eq(dc_image_resize_center_crop(&got, &src, size), 0);
        char what[64];
        snprintf(what, sizeof what, "%dx%d -> %d", w, h, size);
        assert_equal(&got, &want, what);
        dc_image_free(&got);
        dc_image_free(&want);
        dc_image_free(&full);
        dc_image_free(&src);
    }
}
END_TEST

START_TEST(test_crop_flip) {
    dc_image src = pattern(9, 7, 3), got;
    ck_assert_int_eq(dc_image_crop(&got, &src, 2, 3, 5, 4), 0);
    ck_assert(got.w == 5 && got.h == 4);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 5; x++)
            for (int k = 0; k < 3; k++)
                ck_assert_uint_eq(got.px[(y * 5 + x) * 3 + k], pattern_px(x + 2, y + 3, k));
    dc_image_flip(&got);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 5; x++)
            for (int k = 0; k < 3; k++)
                ck_assert_uint_eq(got.px[(y * 5 + x) * 3 + k], pattern_px(6 - x, y + 3, k));
    dc_image_free(&got);
    const int bad[][4] = {{-1, 0, 3, 3}, {0, -1, 3, 3}, {7, 0, 3, 3}, {0, 5, 3, 3}, {0, 0, 0, 3}, {0, 0, 10, 1}};
    for (int i = 0; i < 6; i++) {
        ck_assert_int_eq(dc_image_crop(&got, &src, bad[i][0], bad[i][1], bad[i][2], bad[i][3]), -1);
        ck_assert_ptr_nonnull(strstr(dc_error(), "outside the 9x7 image"));
    }
    dc_image_free(&src);
}
END_TEST

START_TEST(test_u8_float) {
    uint8_t all[256], back[256];
    float f[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    dc_u8_to_float(f, all, 256);
    ck_assert_float_eq(f[0], -1.0f);
    ck_assert_float_eq(f[255], 1.0f);
    for (int i = 0; i < 256; i++)
        ck_assert_float_eq_tol(f[i], i / 127.5 - 1.0, 1e-6);
    dc_float_to_u8(back, f, 256);
    for (int i = 0; i < 256; i++)
        ck_assert_uint_eq(back[i], i);
    /* clamped, NaN to 0, rounded to nearest: (v + 1) * 127.5 = 0.49 -> 0, 0.51 -> 1 */
    const float edge[] = {-3.0f, 7.0f, NAN, INFINITY, -INFINITY, 0.49f / 127.5f - 1, 0.51f / 127.5f - 1, 0.0f};
    const uint8_t want[] = {0, 255, 0, 255, 0, 0, 1, 128};
    dc_float_to_u8(back, edge, 8);
    for (int i = 0; i < 8; i++)
        ck_assert_msg(back[i] == want[i], "edge %d: %d, want %d", i, back[i], want[i]);
}
END_TEST

/* 5 images of 3x2 in 3 columns, gap 2: 3 * (3 + 2) + 2 = 17 wide, 2 * (2 + 2)
 * + 2 = 10 high; image i at (2 + 5 * (i % 3), 2 + 4 * (i / 3)); everything
 * else, the empty sixth cell included, white. */
START_TEST(test_grid) {
    dc_image imgs[5], grid;
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(dc_image_alloc(&imgs[i], 3, 2, 3), 0);
        for (int k = 0; k < 18; k++)
            imgs[i].px[k] = (uint8_t)(10 * i + k);
    }
    ck_assert_int_eq(dc_image_grid(&grid, imgs, 5, 3, 2), 0);
    ck_assert(grid.w == 17 && grid.h == 10 && grid.c == 3);
    for (int y = 0; y < 10; y++)
        for (int x = 0; x < 17; x++) {
            int cx = (x - 2) / 5, cy = (y - 2) / 4, ix = (x - 2) % 5, iy = (y - 2) % 4;
            int i = cy * 3 + cx, inside = x >= 2 && y >= 2 && ix < 3 && iy < 2 && i < 5;
            for (int k = 0; k < 3; k++)
                ck_assert_msg(grid.px[(y * 17 + x) * 3 + k] == (inside ? 10 * i + (iy * 3 + ix) * 3 + k : 255),
                              "grid pixel (%d, %d)", x, y);
        }
    dc_image_free(&grid);
    ck_assert_int_eq(dc_image_grid(&grid, imgs, 5, 5, 0), 0); /* one row, no gap */
    ck_assert(grid.w == 15 && grid.h == 2);
    ck_assert_uint_eq(grid.px[(1 * 15 + 14) * 3 + 2], 40 + 17);
    dc_image_free(&grid);
    dc_image_free(&imgs[3]);
    ck_assert_int_eq(dc_image_alloc(&imgs[3], 2, 2, 3), 0);
    ck_assert_int_eq(dc_image_grid(&grid, imgs, 5, 3, 2), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "image 3"));
    ck_assert_int_eq(dc_image_grid(&grid, imgs, 5, 0, 2), -1);
    ck_assert_ptr_null(grid.px);
    for (int i = 0; i < 5; i++)
        dc_image_free(&imgs[i]);
}
END_TEST

/* ---- PNG: every colour type and bit depth, written here with libpng ---- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} membuf;

static void membuf_write(png_structp png, png_bytep data, size_t len) {
    membuf *b = png_get_io_ptr(png);
    if (b->n + len > b->cap) {
        b->cap = (b->n + len) * 2;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->n, data, len);
    b->n += len;
}

static void membuf_flush(png_structp png) {}

/* A PNG source: samples[(y * w + x) * ch + k] in 0 .. 2^depth - 1 (palette
 * indices for palette images), a palette and its tRNS alphas, or a tRNS key
 * colour (gray, or RGB) for the other types. */
typedef struct {
    int w, h, color_type, depth, interlace;
    uint16_t *samples;
    png_color palette[256];
    int n_palette;
    uint8_t palette_alpha[256];
    int n_palette_alpha;
    int has_key;
    png_color_16 key;
} png_source;

static int png_channels(int color_type) {
    switch (color_type) {
    case PNG_COLOR_TYPE_GRAY_ALPHA: return 2;
    case PNG_COLOR_TYPE_RGB: return 3;
    case PNG_COLOR_TYPE_RGB_ALPHA: return 4;
    default: return 1;
    }
}

static membuf write_png(const png_source *s) {
    membuf b = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    int ch = png_channels(s->color_type), bytes = s->depth == 16 ? 2 : 1;
    unsigned char *row = malloc((size_t)s->w * ch * bytes);
    if (setjmp(png_jmpbuf(png)))
        ck_abort_msg("libpng could not write the test image");
    png_set_write_fn(png, &b, membuf_write, membuf_flush);
    png_set_IHDR(png, info, s->w, s->h, s->depth, s->color_type, s->interlace, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    if (s->color_type == PNG_COLOR_TYPE_PALETTE)
        png_set_PLTE(png, info, s->palette, s->n_palette);
    if (s->n_palette_alpha)
        png_set_tRNS(png, info, s->palette_alpha, s->n_palette_alpha, NULL);
    if (s->has_key)
        png_set_tRNS(png, info, NULL, 0, &s->key);
    png_write_info(png, info);
    if (s->depth < 8)
        png_set_packing(png); /* one sample per byte in our rows */
    int passes = png_set_interlace_handling(png);
    for (int pass = 0; pass < passes; pass++)
        for (int y = 0; y < s->h; y++) {
            for (int i = 0; i < s->w * ch; i++) {
                uint16_t v = s->samples[(size_t)y * s->w * ch + i];
                if (bytes == 2)
                    row[2 * i] = (unsigned char)(v >> 8), row[2 * i + 1] = (unsigned char)v;
                else
                    row[i] = (unsigned char)v;
            }
            png_write_row(png, row);
        }
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(row);
    return b;
}

/* The pixels the decoder must produce, computed in floating point from the
 * definitions in image.h: samples scaled to 8 bits and rounded, alpha
 * composited on white and rounded. */
static dc_image expected_png(const png_source *s) {
    int ch = png_channels(s->color_type), gray = s->color_type == PNG_COLOR_TYPE_GRAY ||
                                                  s->color_type == PNG_COLOR_TYPE_GRAY_ALPHA;
    double max = (1 << s->depth) - 1;
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, s->w, s->h, gray ? 1 : 3), 0);
    for (int i = 0; i < s->w * s->h; i++) {
        const uint16_t *in = s->samples + (size_t)i * ch;
        double color[3], alpha = 255;
        if (s->color_type == PNG_COLOR_TYPE_PALETTE) {
            color[0] = s->palette[in[0]].red, color[1] = s->palette[in[0]].green, color[2] = s->palette[in[0]].blue;
            alpha = in[0] < s->n_palette_alpha ? s->palette_alpha[in[0]] : 255;
        } else {
            for (int k = 0; k < img.c; k++)
                color[k] = floor(in[k] * 255.0 / max + 0.5);
            if (ch == 2 || ch == 4)
                alpha = floor(in[ch - 1] * 255.0 / max + 0.5);
            int keyed = s->has_key && (gray ? in[0] == s->key.gray
                                            : in[0] == s->key.red && in[1] == s->key.green && in[2] == s->key.blue);
            if (keyed)
                alpha = 0;
        }
        for (int k = 0; k < img.c; k++)
            img.px[(size_t)i * img.c + k] = (uint8_t)floor((color[k] * alpha + 255.0 * (255 - alpha)) / 255.0 + 0.5);
    }
    return img;
}

/* Random samples; palette images get a random palette of `n_palette` entries
 * and, with `alphas`, a tRNS chunk covering some of them. */
static png_source random_png(int w, int h, int color_type, int depth, int interlace, int alphas) {
    png_source s = {.w = w, .h = h, .color_type = color_type, .depth = depth, .interlace = interlace};
    int ch = png_channels(color_type);
    s.samples = malloc((size_t)w * h * ch * sizeof *s.samples);
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        s.n_palette = 1 + (int)(tu_next() % (1u << depth));
        for (int i = 0; i < s.n_palette; i++)
            s.palette[i] = (png_color){(uint8_t)tu_next(), (uint8_t)tu_next(), (uint8_t)tu_next()};
        s.n_palette_alpha = alphas ? 1 + (int)(tu_next() % s.n_palette) : 0;
        for (int i = 0; i < s.n_palette_alpha; i++)
            s.palette_alpha[i] = i == 0 ? 0 : i == 1 ? 255 : (uint8_t)tu_next();
    }
    uint32_t range = color_type == PNG_COLOR_TYPE_PALETTE ? (uint32_t)s.n_palette : 1u << depth;
    for (size_t i = 0; i < (size_t)w * h * ch; i++)
        s.samples[i] = (uint16_t)(tu_next() % range);
    for (int k = 0; alphas && k < 4 && (ch == 2 || ch == 4); k++) /* fully transparent and opaque pixels too */
        s.samples[(size_t)(tu_next() % ((size_t)w * h)) * ch + ch - 1] = k % 2 ? 0 : (uint16_t)(range - 1);
    return s;
}

static void check_png(const png_source *s, const char *what) {
    membuf b = write_png(s);
    dc_image got, want = expected_png(s);
    ck_assert_msg(dc_image_decode(&got, b.p, b.n, what) == 0, "%s", dc_error());
    assert_equal(&got, &want, what);
    dc_image_free(&got);
    dc_image_free(&want);
    free(b.p);
}

START_TEST(test_png_every_type) {
    static const struct {
        int color_type, depths[5];
    } types[] = {
        {PNG_COLOR_TYPE_GRAY, {1, 2, 4, 8, 16}},     {PNG_COLOR_TYPE_GRAY_ALPHA, {8, 16}},
        {PNG_COLOR_TYPE_PALETTE, {1, 2, 4, 8}},      {PNG_COLOR_TYPE_RGB, {8, 16}},
        {PNG_COLOR_TYPE_RGB_ALPHA, {8, 16}},
    };
    static const int sizes[][2] = {{13, 7}, {1, 1}, {3, 2}, {9, 17}};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (int d = 0; d < 5 && types[t].depths[d]; d++)
            for (int interlace = 0; interlace < 2; interlace++)
                for (int alphas = 0; alphas < 2; alphas++)
                    for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++) {
                        char what[96];
                        snprintf(what, sizeof what, "type %d, %d bits, %s, %s, %dx%d", types[t].color_type,
                                 types[t].depths[d], interlace ? "Adam7" : "not interlaced",
                                 alphas ? "with alpha values" : "plain", sizes[z][0], sizes[z][1]);
                        png_source s = random_png(sizes[z][0], sizes[z][1], types[t].color_type,
                                                  types[t].depths[d], interlace, alphas);
                        check_png(&s, what);
                        free(s.samples);
                    }
}
END_TEST

/* A tRNS key colour makes matching gray or RGB pixels transparent: white. */
START_TEST(test_png_transparent_key) {
    for (int depth = 8; depth <= 16; depth += 8)
        for (int rgb = 0; rgb < 2; rgb++) {
            png_source s = random_png(11, 5, rgb ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY, depth, 0, 0);
            int ch = rgb ? 3 : 1;
            s.has_key = 1;
            for (int i = 0; i < 11 * 5; i += 3) /* every third pixel gets the key colour */
                for (int k = 0; k < ch; k++)
                    s.samples[i * ch + k] = (uint16_t)(100 + 7 * k);
            s.key = (png_color_16){.gray = 100, .red = 100, .green = 107, .blue = 114};
            check_png(&s, rgb ? "RGB with a tRNS key" : "gray with a tRNS key");
            dc_image got;
            membuf b = write_png(&s);
            ck_assert_int_eq(dc_image_decode(&got, b.p, b.n, "key"), 0);
            ck_assert_uint_eq(got.px[0], 255);
            dc_image_free(&got);
            free(b.p);
            free(s.samples);
        }
}
END_TEST

/* The definitions spelled out at known points: 16-bit v becomes v / 257
 * rounded (0x10ff = 16.93 -> 17 where taking the high byte gives 16; 0x7fff =
 * 127.498 -> 127; 0x8000 = 127.502 -> 128); alpha a over white gives
 * (c * a + 255 * (255 - a)) / 255 rounded. */
START_TEST(test_png_known_values) {
    png_source s = {.w = 4, .h = 1, .color_type = PNG_COLOR_TYPE_GRAY_ALPHA, .depth = 16};
    uint16_t samples[] = {0x10ff, 0xffff, 0x7fff, 0xffff, 0x8000, 0xffff, 0, 0x8080};
    s.samples = samples;
    membuf b = write_png(&s);
    dc_image got;
    ck_assert_int_eq(dc_image_decode(&got, b.p, b.n, "known"), 0);
    ck_assert_uint_eq(got.px[0], 17);
    ck_assert_uint_eq(got.px[1], 127);
    ck_assert_uint_eq(got.px[2], 128);
    ck_assert_uint_eq(got.px[3], 127); /* black at alpha 0x8080 -> 128: 255 * 127 / 255 */
    dc_image_free(&got);
    free(b.p);
    png_source p = {.w = 3, .h = 1, .color_type = PNG_COLOR_TYPE_RGB_ALPHA, .depth = 8};
    uint16_t rgba[] = {200, 100, 0, 128, 10, 20, 30, 0, 10, 20, 30, 255};
    p.samples = rgba;
    b = write_png(&p);
    ck_assert_int_eq(dc_image_decode(&got, b.p, b.n, "known"), 0);
    /* (200 * 128 + 255 * 127) / 255 = 227.4 -> 227; 100 -> 177.2 -> 177; 0 -> 127 */
    const uint8_t want[] = {227, 177, 127, 255, 255, 255, 10, 20, 30};
    for (int i = 0; i < 9; i++)
        ck_assert_uint_eq(got.px[i], want[i]);
    dc_image_free(&got);
    free(b.p);
}
END_TEST

/* ---- JPEG: EXIF orientation and CMYK, on files written here with libjpeg ---- */

/* A JPEG (quality 95) of comps = 1, 3 or 4 (CMYK) samples per pixel, with an
 * APP1 marker holding app1[0..app1_len) when given; `adobe` keeps libjpeg's
 * Adobe marker on CMYK files (which then hold inverted values). */
static membuf write_jpeg(const uint8_t *px, int w, int h, int comps, const uint8_t *app1, size_t app1_len,
                         int adobe) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    unsigned long size = 0;
    jpeg_mem_dest(&c, &out, &size);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h, c.input_components = comps;
    c.in_color_space = comps == 1 ? JCS_GRAYSCALE : comps == 3 ? JCS_RGB : JCS_CMYK;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 95, TRUE);
    if (comps == 4)
        c.write_Adobe_marker = adobe;
    jpeg_start_compress(&c, TRUE);
    if (app1)
        jpeg_write_marker(&c, JPEG_APP0 + 1, app1, (unsigned)app1_len);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)px + (size_t)c.next_scanline * w * comps;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return (membuf){out, size, size};
}

/* "Exif\0\0", a TIFF header, and IFD0 with a Make tag then the orientation
 * tag (type SHORT) set to `o`; 44 bytes. Offsets of the parts, for tests
 * that damage them: byte order at 6, magic 8, IFD offset 10, entry count 14,
 * orientation entry 28 (type at 30, value at 36). */
static size_t exif(uint8_t *p, int big_endian, unsigned o) {
    uint8_t le[] = {'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 42, 0, 8, 0, 0, 0, 2, 0,  /* header, 2 entries */
                    0x0f, 0x01, 2, 0, 4, 0, 0, 0, 'a', 'b', 'c', 0,              /* Make, ASCII[4] */
                    0x12, 0x01, 3, 0, 1, 0, 0, 0, (uint8_t)o, 0, 0, 0,           /* Orientation, SHORT[1] */
                    0, 0, 0, 0};                                                 /* no next IFD */
    uint8_t be[] = {'E', 'x', 'i', 'f', 0, 0, 'M', 'M', 0, 42, 0, 0, 0, 8, 0, 2,
                    0x01, 0x0f, 0, 2, 0, 0, 0, 4, 'a', 'b', 'c', 0,
                    0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, (uint8_t)o, 0, 0,
                    0, 0, 0, 0};
    memcpy(p, big_endian ? be : le, sizeof le);
    return sizeof le;
}

static dc_image rotate_ccw(const dc_image *a) { /* PIL's ROTATE_90 */
    dc_image r;
    ck_assert_int_eq(dc_image_alloc(&r, a->h, a->w, a->c), 0);
    for (int y = 0; y < r.h; y++)
        for (int x = 0; x < r.w; x++)
            memcpy(r.px + ((size_t)y * r.w + x) * a->c, a->px + ((size_t)x * a->w + (a->w - 1 - y)) * a->c,
                   (size_t)a->c);
    return r;
}

static dc_image flip_tb(const dc_image *a) {
    dc_image r;
    ck_assert_int_eq(dc_image_alloc(&r, a->w, a->h, a->c), 0);
    size_t row = (size_t)a->w * a->c;
    for (int y = 0; y < a->h; y++)
        memcpy(r.px + y * row, a->px + (a->h - 1 - y) * row, row);
    return r;
}

/* What PIL's exif_transpose shows for orientation o, built from rotations
 * and flips as PIL names them: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180,
 * 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90. */
static dc_image upright(const dc_image *a, int o) {
    static const int ccw_turns[9] = {0, 0, 0, 2, 0, 1, 3, 1, 1};
    static const int flip_lr[9] = {0, 0, 1, 0, 0, 0, 0, 1, 0}, flip_v[9] = {0, 0, 0, 0, 1, 1, 0, 0, 0};
    dc_image r;
    ck_assert_int_eq(dc_image_crop(&r, a, 0, 0, a->w, a->h), 0);
    for (int t = 0; t < ccw_turns[o]; t++) {
        dc_image n = rotate_ccw(&r);
        dc_image_free(&r);
        r = n;
    }
    if (flip_v[o]) {
        dc_image n = flip_tb(&r);
        dc_image_free(&r);
        r = n;
    }
    if (flip_lr[o])
        dc_image_flip(&r);
    return r;
}

START_TEST(test_exif_orientation) {
    dc_image src = tu_random_image(24, 16, 3), plain;
    membuf base = write_jpeg(src.px, 24, 16, 3, NULL, 0, 0);
    ck_assert_int_eq(dc_image_decode(&plain, base.p, base.n, "plain.jpg"), 0);
    for (int big = 0; big < 2; big++)
        for (unsigned o = 0; o <= 9; o++) {
            uint8_t app1[64];
            size_t n = exif(app1, big, o);
            membuf b = write_jpeg(src.px, 24, 16, 3, app1, n, 0);
            dc_image got, want = upright(&plain, o >= 1 && o <= 8 ? (int)o : 1);
            ck_assert_msg(dc_image_decode(&got, b.p, b.n, "exif.jpg") == 0, "%s", dc_error());
            char what[64];
            snprintf(what, sizeof what, "orientation %u, %s", o, big ? "big-endian" : "little-endian");
            assert_equal(&got, &want, what);
            dc_image_free(&got);
            dc_image_free(&want);
            free(b.p);
        }
    dc_image_free(&plain);
    free(base.p);
    dc_image_free(&src);
}
END_TEST

/* Damaged EXIF data is ignored (orientation 1), never read out of bounds. */
START_TEST(test_exif_malformed) {
    dc_image src = tu_random_image(20, 12, 3), plain;
    membuf base = write_jpeg(src.px, 20, 12, 3, NULL, 0, 0);
    ck_assert_int_eq(dc_image_decode(&plain, base.p, base.n, "plain.jpg"), 0);
    for (int big = 0; big < 2; big++) {
        for (int damage = 0; damage < 10; damage++) {
            uint8_t app1[64];
            size_t n = exif(app1, big, 6);
            switch (damage) {
            case 0: n = 39; break;                                 /* the orientation entry cut short */
            case 1: n = 6; break;                                  /* "Exif\0\0" alone */
            case 2: n = 13; break;                                 /* inside the TIFF header */
            case 3: app1[6] = 'X'; break;                          /* unknown byte order */
            case 4: app1[big ? 9 : 8] = 43; break;                 /* bad magic */
            case 5: memset(app1 + 10, 0xff, 4); break;             /* IFD offset far past the end */
            case 6: app1[big ? 13 : 10] = 37; break;               /* IFD offset leaving no room for the count */
            case 7: app1[big ? 31 : 30] = 4; break;                /* orientation as a LONG */
            case 8: n = 16; break;                                 /* the count but no entries */
            case 9: app1[big ? 15 : 14] = 1; break;                /* only the Make entry counted */
            }
            membuf b = write_jpeg(src.px, 20, 12, 3, app1, n, 0);
            dc_image got;
            ck_assert_msg(dc_image_decode(&got, b.p, b.n, "exif.jpg") == 0, "%s", dc_error());
            char what[64];
            snprintf(what, sizeof what, "damage %d, %s", damage, big ? "big-endian" : "little-endian");
            assert_equal(&got, &plain, what);
            dc_image_free(&got);
            free(b.p);
        }
        /* an entry count past the data: the entries that are there still count */
        uint8_t app1[64];
        size_t n = exif(app1, big, 6);
        app1[14] = app1[15] = 0xff;
        membuf b = write_jpeg(src.px, 20, 12, 3, app1, n, 0);
        dc_image got, want = upright(&plain, 6);
        ck_assert_int_eq(dc_image_decode(&got, b.p, b.n, "exif.jpg"), 0);
        assert_equal(&got, &want, "count past the data");
        dc_image_free(&got);
        dc_image_free(&want);
        free(b.p);
    }
    dc_image_free(&plain);
    free(base.p);
    dc_image_free(&src);
}
END_TEST

/* A flat CMYK colour: red is C=0 M=255 Y=255 K=0. Without an Adobe marker
 * the file holds those values; with one (Photoshop's convention) it holds
 * 255 minus them. Both must decode to red. */
START_TEST(test_jpeg_cmyk) {
    for (int adobe = 0; adobe < 2; adobe++) {
        uint8_t px[16 * 8 * 4];
        const uint8_t red[4] = {0, 255, 255, 0};
        for (int i = 0; i < 16 * 8; i++)
            for (int k = 0; k < 4; k++)
                px[i * 4 + k] = adobe ? 255 - red[k] : red[k];
        membuf b = write_jpeg(px, 16, 8, 4, NULL, 0, adobe);
        dc_image got;
        ck_assert_msg(dc_image_decode(&got, b.p, b.n, "cmyk.jpg") == 0, "%s", dc_error());
        ck_assert_int_eq(got.c, 3);
        for (int i = 0; i < 16 * 8; i++)
            ck_assert_msg(got.px[3 * i] >= 253 && got.px[3 * i + 1] <= 2 && got.px[3 * i + 2] <= 2,
                          "adobe %d: pixel %d is (%d, %d, %d), want red", adobe, i, got.px[3 * i],
                          got.px[3 * i + 1], got.px[3 * i + 2]);
        dc_image_free(&got);
        free(b.p);
    }
}
END_TEST

/* Gray and RGB JPEGs of smooth ramps decode close to the source (quality
 * 95; this checks the channel layout, not the codec). */
START_TEST(test_jpeg_channels) {
    for (int c = 1; c <= 3; c += 2) {
        dc_image src, got;
        ck_assert_int_eq(dc_image_alloc(&src, 33, 17, c), 0);
        for (int i = 0; i < 33 * 17 * c; i++)
            src.px[i] = (uint8_t)(i / c % 33 * 3 + i / c / 33 * 2 + i % c * 50);
        membuf b = write_jpeg(src.px, 33, 17, c, NULL, 0, 0);
        ck_assert_int_eq(dc_image_decode(&got, b.p, b.n, "j.jpg"), 0);
        ck_assert_int_eq(got.c, c);
        assert_close(&got, &src, 6, 1.0, "JPEG of a ramp");
        dc_image_free(&got);
        dc_image_free(&src);
        free(b.p);
    }
}
END_TEST

/* ---- round trip ---- */

START_TEST(test_png_round_trip) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/dc_img_%d.png", (int)getpid());
    for (int c = 1; c <= 3; c += 2) {
        dc_image src = tu_random_image(1 + (int)(tu_next() % 70), 1 + (int)(tu_next() % 50), c), got;
        ck_assert_msg(dc_image_save_png(&src, path) == 0, "%s", dc_error());
        ck_assert_msg(dc_image_load(&got, path) == 0, "%s", dc_error());
        assert_equal(&got, &src, "PNG round trip");
        dc_image_free(&got);
        /* in memory: the same bytes as the file (one encoder), decoded back */
        uint8_t *png;
        size_t n, file_n;
        ck_assert_msg(dc_image_encode_png(&src, &png, &n) == 0, "%s", dc_error());
        FILE *fp = fopen(path, "rb");
        uint8_t *file = malloc(n + 1);
        file_n = fread(file, 1, n + 1, fp);
        fclose(fp);
        ck_assert(file_n == n && memcmp(file, png, n) == 0);
        ck_assert_msg(dc_image_decode(&got, png, n, "memory") == 0, "%s", dc_error());
        assert_equal(&got, &src, "PNG in memory");
        dc_image_free(&got);
        free(file);
        free(png);
        dc_image_free(&src);
    }
    remove(path);
}
END_TEST

START_TEST(test_png_text) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/dc_img_text_%d.png", (int)getpid());
    dc_image src = tu_random_image(3 + (int)(tu_next() % 20), 2 + (int)(tu_next() % 20), 3), got;
    dc_image_text text[2] = {{"parameters", "a red cube, seed 7, 50 steps"},
                             {"prompt", "ein Pferd \xc3\xa0 la plage, \xe9\xa6\xac \xf0\x9f\x90\x8e"}};
    ck_assert_msg(dc_image_save_png_text(&src, path, text, 2) == 0, "%s", dc_error());
    for (int i = 0; i < 2; i++) { /* ASCII as tEXt, UTF-8 as iTXt */
        int kind;
        char *value = tu_png_text(path, text[i].key, &kind);
        ck_assert_msg(value && !strcmp(value, text[i].value), "%s: %s", text[i].key, value);
        ck_assert_int_eq(kind, i ? PNG_ITXT_COMPRESSION_NONE : PNG_TEXT_COMPRESSION_NONE);
        free(value);
    }
    ck_assert_msg(dc_image_load(&got, path) == 0, "%s", dc_error());
    assert_equal(&got, &src, "PNG with text");
    dc_image_free(&got);
    /* PNG keys are 1 to 79 characters: a longer one is an error, and no file is left */
    char key[81];
    memset(key, 'k', 80);
    key[80] = 0;
    remove(path);
    ck_assert_int_eq(dc_image_save_png_text(&src, path, &(dc_image_text){key, "v"}, 1), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), path));
    ck_assert_int_eq(access(path, F_OK), -1);
    dc_image_free(&src);
}
END_TEST

/* ---- malformed files ---- */

static void assert_refused(const void *buf, size_t n, const char *what, const char *needle) {
    dc_image img = {0};
    dc_clear_error();
    ck_assert_msg(dc_image_decode(&img, buf, n, what) == -1, "%s decoded", what);
    ck_assert_msg(strstr(dc_error(), what) != NULL, "%s: message '%s' does not name it", what, dc_error());
    ck_assert_msg(!needle || strstr(dc_error(), needle), "%s: message '%s' lacks '%s'", what, dc_error(), needle);
    ck_assert_ptr_null(img.px);
}

/* Appends a PNG chunk with its length and CRC at p + *n. */
static void put_chunk(uint8_t *p, size_t *n, const char *type, const uint8_t *data, uint32_t len) {
    uint8_t *c = p + *n;
    for (int i = 0; i < 4; i++)
        c[i] = (uint8_t)(len >> (24 - 8 * i));
    memcpy(c + 4, type, 4);
    if (len)
        memcpy(c + 8, data, len);
    uint32_t crc = (uint32_t)crc32(0, c + 4, 4 + len);
    for (int i = 0; i < 4; i++)
        c[8 + len + i] = (uint8_t)(crc >> (24 - 8 * i));
    *n += 12 + len;
}

/* A PNG signature, optionally an unknown chunk, and an IHDR for w x h 8-bit
 * RGB. */
static size_t png_header(uint8_t *p, uint32_t w, uint32_t h, int unknown_first) {
    const uint8_t ihdr[13] = {(uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w,
                              (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h, 8, 2};
    size_t n = 8;
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    if (unknown_first)
        put_chunk(p, &n, "abCd", (const uint8_t *)"xyz", 3);
    put_chunk(p, &n, "IHDR", ihdr, 13);
    return n;
}

START_TEST(test_refuses_garbage) {
    uint8_t buf[512];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (uint8_t)tu_next();
    assert_refused(buf, 0, "empty.png", "empty");
    buf[0] = 'G';
    assert_refused(buf, sizeof buf, "noise.bin", "not a PNG or JPEG");
    assert_refused("GIF89a", 6, "anim.gif", "not a PNG or JPEG");
    memcpy(buf, "\x89PNG\r\n\x1a\n", 8);
    assert_refused(buf, sizeof buf, "noise.png", "PNG");
    assert_refused(buf, 8, "signature.png", "PNG");
    memcpy(buf, "\xff\xd8\xff", 3);
    assert_refused(buf, sizeof buf, "noise.jpg", "JPEG");
    assert_refused(buf, 3, "soi.jpg", "JPEG");
}
END_TEST

/* Headers claiming huge images are refused before anything that size is
 * allocated (under ASan a 30 GB allocation would abort). */
START_TEST(test_refuses_huge) {
    uint8_t buf[128];
    for (int unknown_first = 0; unknown_first < 2; unknown_first++) {
        size_t n = png_header(buf, 100000, 100000, unknown_first);
        if (!unknown_first)
            assert_refused(buf, n, "huge.png", "more than");
        put_chunk(buf, &n, "IDAT", NULL, 0);
        assert_refused(buf, n, "huge.png", "more than");
        n = png_header(buf, 16385, 16384, unknown_first); /* just over 2^28 pixels */
        put_chunk(buf, &n, "IDAT", NULL, 0);
        assert_refused(buf, n, "big.png", "more than");
    }
    size_t jn;
    unsigned char *jpeg = slurp(FIXTURES "image_rgb.jpg", &jn);
    for (size_t i = 2; i + 9 < jn; i++)
        if (jpeg[i] == 0xff && jpeg[i + 1] == 0xc0) { /* SOF0: length, precision, height, width */
            jpeg[i + 5] = jpeg[i + 6] = jpeg[i + 7] = jpeg[i + 8] = 0xfe;
            break;
        }
    assert_refused(jpeg, jn, "huge.jpg", "more than");
    free(jpeg);
    /* and a lower limit refuses a small image that the default one accepts */
    png_source s = random_png(40, 30, PNG_COLOR_TYPE_RGB, 8, 0, 0);
    membuf b = write_png(&s);
    dc_image img;
    ck_assert_int_eq(dc_image_decode_limit(&img, b.p, b.n, "small.png", 1200), 0);
    dc_image_free(&img);
    ck_assert_int_eq(dc_image_decode_limit(&img, b.p, b.n, "small.png", 1199), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "more than"));
    free(b.p);
    free(s.samples);
}
END_TEST

/* Every prefix of a good file (in steps) is refused with a message naming it. */
static void assert_truncations_refused(const unsigned char *buf, size_t n, size_t step, const char *what) {
    for (size_t len = 0; len < n; len += step) {
        char name[96];
        snprintf(name, sizeof name, "%s[:%zu]", what, len);
        assert_refused(buf, len, name, NULL);
    }
}

START_TEST(test_truncated_png) {
    for (int interlace = 0; interlace < 2; interlace++) {
        png_source s = random_png(20, 15, PNG_COLOR_TYPE_RGB_ALPHA, 8, interlace, 1);
        membuf b = write_png(&s);
        assert_truncations_refused(b.p, b.n, 3, interlace ? "adam7.png" : "plain.png");
        free(b.p);
        free(s.samples);
    }
}
END_TEST

START_TEST(test_truncated_jpeg) {
    const char *names[] = {FIXTURES "image_rgb.jpg", FIXTURES "image_progressive.jpg", FIXTURES "image_cmyk.jpg"};
    for (int i = 0; i < 3; i++) {
        size_t n;
        unsigned char *buf = slurp(names[i], &n);
        assert_truncations_refused(buf, n, 3, names[i]);
        free(buf);
    }
}
END_TEST

/* A progressive file whose last scan repeats 600 times: refused at scan 501,
 * not decoded for ever (each scan is a pass over the whole image). */
START_TEST(test_jpeg_too_many_scans) {
    size_t n;
    unsigned char *src = slurp(FIXTURES "image_progressive.jpg", &n);
    size_t sos = 0;
    for (size_t i = 2; i + 1 < n; i++)
        if (src[i] == 0xff && src[i + 1] == 0xda)
            sos = i;
    ck_assert(sos > 0 && src[n - 2] == 0xff && src[n - 1] == 0xd9);
    size_t scan = n - 2 - sos, big_n = sos + 600 * scan + 2;
    unsigned char *big = malloc(big_n);
    memcpy(big, src, sos);
    for (int k = 0; k < 600; k++)
        memcpy(big + sos + k * scan, src + sos, scan);
    memcpy(big + big_n - 2, "\xff\xd9", 2);
    assert_refused(big, big_n, "scans.jpg", "more than 500 scans");
    /* the same scan twice is merely odd: decoded */
    dc_image img;
    memcpy(big + sos + 2 * scan, "\xff\xd9", 2);
    ck_assert_msg(dc_image_decode(&img, big, sos + 2 * scan + 2, "twice.jpg") == 0, "%s", dc_error());
    dc_image_free(&img);
    free(big);
    free(src);
}
END_TEST

/* A damaged CRC on image data is an error, not a guess. */
START_TEST(test_png_bad_crc) {
    png_source s = random_png(10, 10, PNG_COLOR_TYPE_RGB, 8, 0, 0);
    membuf b = write_png(&s);
    for (size_t i = 12; i + 4 < b.n; i++)
        if (!memcmp(b.p + i, "IDAT", 4)) {
            size_t len = (size_t)b.p[i - 4] << 24 | b.p[i - 3] << 16 | b.p[i - 2] << 8 | b.p[i - 1];
            b.p[i + 4 + len] ^= 0x40; /* the chunk's CRC */
            break;
        }
    assert_refused(b.p, b.n, "crc.png", "CRC");
    free(b.p);
    free(s.samples);
}
END_TEST

/* Random damage: decoded or refused, never a crash or a read out of bounds
 * (ASan), and a decoded image is whole. */
START_TEST(test_damaged_files) {
    png_source s = random_png(16, 12, PNG_COLOR_TYPE_PALETTE, 4, 1, 1);
    membuf png = write_png(&s);
    size_t jn;
    unsigned char *jpeg = slurp(FIXTURES "image_progressive.jpg", &jn);
    for (int trial = 0; trial < 400; trial++) {
        int is_png = trial % 2;
        size_t n = is_png ? png.n : jn;
        unsigned char *buf = malloc(n);
        memcpy(buf, is_png ? png.p : jpeg, n);
        for (int k = 1 + (int)(tu_next() % 4); k > 0; k--)
            buf[8 + tu_next() % (n - 8)] = (uint8_t)tu_next();
        dc_image img;
        if (dc_image_decode(&img, buf, n, "damaged") == 0) {
            ck_assert(img.w > 0 && img.h > 0 && (img.c == 1 || img.c == 3));
            unsigned sum = 0;
            for (size_t i = 0; i < (size_t)img.w * img.h * img.c; i++)
                sum += img.px[i];
            (void)sum;
            dc_image_free(&img);
        } else {
            ck_assert_ptr_nonnull(strstr(dc_error(), "damaged"));
        }
        free(buf);
    }
    free(jpeg);
    free(png.p);
    free(s.samples);
}
END_TEST

START_TEST(test_load_errors) {
    dc_image img;
    ck_assert_int_eq(dc_image_load(&img, "/nonexistent/cat.png"), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "/nonexistent/cat.png"));
    ck_assert_int_eq(dc_image_load(&img, "tests/fixtures"), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "not a regular file"));
    ck_assert_int_eq(dc_image_load(&img, "CMakeLists.txt"), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "CMakeLists.txt: not a PNG or JPEG"));
    ck_assert_ptr_null(img.px);
}
END_TEST

START_TEST(test_save_errors) {
    dc_image img = tu_random_image(5, 4, 3), empty = {0};
    ck_assert_int_eq(dc_image_save_png(&img, "/nonexistent/out.png"), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "/nonexistent/out.png"));
    ck_assert_int_eq(dc_image_save_png(&empty, "/tmp/never.png"), -1);
    ck_assert_int_eq(access("/tmp/never.png.tmp", F_OK), -1);
    uint8_t *png = (uint8_t *)&img;
    size_t n = 1;
    ck_assert_int_eq(dc_image_encode_png(&empty, &png, &n), -1);
    ck_assert(png == NULL && n == 0);
    dc_image_free(&img);
}
END_TEST

int main(void) {
    Suite *s = suite_create("image");
    TCase *tc = tu_tcase(s, "reference", 20);
    tcase_add_test(tc, test_pattern_matches_script);
    tcase_add_test(tc, test_resize_matches_pil);
    tcase_add_test(tc, test_resize_center_crop_matches_torchvision);
    tcase_add_test(tc, test_gray_matches_pil);
    tcase_add_test(tc, test_jpeg_matches_pil);
    tc = tu_tcase(s, "pixels", 20);
    tcase_add_test(tc, test_alloc);
    tcase_add_test(tc, test_convert);
    tcase_add_test(tc, test_resize_properties);
    tcase_add_test(tc, test_center_crop_is_resize_then_crop);
    tcase_add_test(tc, test_crop_flip);
    tcase_add_test(tc, test_u8_float);
    tcase_add_test(tc, test_grid);
    tc = tu_tcase(s, "codec", 20);
    tcase_add_test(tc, test_png_every_type);
    tcase_add_test(tc, test_png_transparent_key);
    tcase_add_test(tc, test_png_known_values);
    tcase_add_test(tc, test_exif_orientation);
    tcase_add_test(tc, test_exif_malformed);
    tcase_add_test(tc, test_jpeg_cmyk);
    tcase_add_test(tc, test_jpeg_channels);
    tcase_add_test(tc, test_png_round_trip);
    tcase_add_test(tc, test_png_text);
    tc = tu_tcase(s, "errors", 20);
    tcase_add_test(tc, test_refuses_garbage);
    tcase_add_test(tc, test_refuses_huge);
    tcase_add_test(tc, test_truncated_png);
    tcase_add_test(tc, test_truncated_jpeg);
    tcase_add_test(tc, test_jpeg_too_many_scans);
    tcase_add_test(tc, test_png_bad_crc);
    tcase_add_test(tc, test_damaged_files);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_save_errors);
    return tu_run(s);
}
