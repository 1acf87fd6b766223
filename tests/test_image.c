/* Images: resizing and centre cropping against PIL and torchvision
 * (tests/fixtures/image_ref.safetensors, from scripts/make_image_fixtures.py),
 * JPEG decoding against PIL's, PNG decoding of every colour type and bit depth
 * against pixels computed here, EXIF orientation, the pixel operations, and
 * malformed files refused with a message. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static dc_image random_image(int w, int h, int c) {
    dc_image img;
    ck_assert_int_eq(dc_image_alloc(&img, w, h, c), 0);
    for (size_t i = 0; i < (size_t)w * h * c; i++)
        img.px[i] = (uint8_t)tu_next();
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

/* ---- round trip ---- */

START_TEST(test_png_round_trip) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/dc_img_%d.png", (int)getpid());
    for (int c = 1; c <= 3; c += 2) {
        dc_image src = random_image(1 + (int)(tu_next() % 70), 1 + (int)(tu_next() % 50), c), got;
        ck_assert_msg(dc_image_save_png(&src, path) == 0, "%s", dc_error());
        ck_assert_msg(dc_image_load(&got, path) == 0, "%s", dc_error());
        assert_equal(&got, &src, "PNG round trip");
        dc_image_free(&got);
        dc_image_free(&src);
    }
    remove(path);
}
END_TEST

/* ---- malformed files ---- */

/* Every prefix of a good file (in steps) is refused with a message naming it. */
static void assert_truncations_refused(const char *path, size_t step) {
    size_t n;
    unsigned char *buf = slurp(path, &n);
    for (size_t len = 0; len < n; len += step) {
        dc_image img = {0};
        dc_clear_error();
        ck_assert_msg(dc_image_decode(&img, buf, len, "cut.file") == -1, "%s cut to %zu bytes decoded", path, len);
        ck_assert_msg(strstr(dc_error(), "cut.file") != NULL, "%s cut to %zu: message '%s'", path, len, dc_error());
        ck_assert_ptr_null(img.px);
    }
    free(buf);
}

START_TEST(test_truncated_jpeg) {
    assert_truncations_refused(FIXTURES "image_rgb.jpg", 7);
    assert_truncations_refused(FIXTURES "image_progressive.jpg", 5);
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
    tc = tu_tcase(s, "codec", 20);
    tcase_add_test(tc, test_png_round_trip);
    tcase_add_test(tc, test_truncated_jpeg);
    return tu_run(s);
}
