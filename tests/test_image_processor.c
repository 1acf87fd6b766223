/* BLIP's image preprocessing (data/image_processor) against transformers'
 * BlipImageProcessorPil on small PNGs (tests/fixtures/blip_preprocess/, made
 * by scripts/make_blip_preprocess_fixtures.py): gradients, noise, gray and
 * RGBA, shrunk, enlarged and kept; dc_image_resize against Pillow 13 on both
 * sides of its pass-order rule; then the configs it refuses. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "data/image_processor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIR "tests/fixtures/blip_preprocess/"

static const char *const IMAGES[] = {"grad", "noise", "gray", "rgba", "square"};

/* Every fixture image through config `cname`, against transformers' pixel values. */
static void check_config(const dc_st_file *f, const char *cname, int *checked) {
    char path[256];
    snprintf(path, sizeof path, DIR "%s.json", cname);
    dc_image_processor p;
    ck_assert_msg(dc_image_processor_load(&p, path) == 0, "%s", dc_error());
    for (size_t i = 0; i < sizeof IMAGES / sizeof *IMAGES; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s.%s", cname, IMAGES[i]);
        const dc_st_tensor *want = dc_st_find(f, name);
        if (!want)
            continue;
        ck_assert(want->ndim == 3 && want->shape[0] == p.height && want->shape[1] == p.width &&
                  want->shape[2] == 3);
        snprintf(path, sizeof path, DIR "%s.png", IMAGES[i]);
        dc_image img = {0};
        ck_assert_msg(dc_image_load(&img, path) == 0, "%s", dc_error());
        size_t n = (size_t)p.height * (size_t)p.width * 3;
        float *got = malloc(n * sizeof *got);
        ck_assert_msg(dc_image_processor_apply(&p, &img, got, path) == 0, "%s", dc_error());
        const float *w = want->data;
        for (size_t k = 0; k < n; k++)
            ck_assert_msg(got[k] == w[k], "%s: pixel %zu channel %zu is %.9g, transformers %.9g", name,
                          k / 3, k % 3, got[k], w[k]);
        free(got);
        dc_image_free(&img);
        (*checked)++;
    }
}

START_TEST(test_vs_transformers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, DIR "pixels.safetensors") == 0, "%s", dc_error());
    int checked = 0;
    check_config(&f, "blip", &checked);
    check_config(&f, "rect", &checked);
    check_config(&f, "plain", &checked);
    ck_assert_int_eq(checked, 11);
    dc_st_close(&f);
}
END_TEST

/* An 8-bit image from a fixture tensor [H, W, C] (U8). */
static dc_image fx_image(const dc_st_file *f, const char *name) {
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t && t->ndim == 3 && t->dtype == DC_U8, "fixture has no %s", name);
    dc_image img = {0};
    ck_assert(dc_image_alloc(&img, (int)t->shape[1], (int)t->shape[0], (int)t->shape[2]) == 0);
    memcpy(img.px, t->data, t->nbytes);
    return img;
}

static void assert_same_image(const dc_image *got, const dc_image *want, const char *name) {
    ck_assert_msg(got->w == want->w && got->h == want->h && got->c == want->c, "%s: size", name);
    for (int64_t i = 0; i < (int64_t)want->w * want->h * want->c; i++)
        ck_assert_msg(got->px[i] == want->px[i], "%s: byte %lld is %d, Pillow %d", name, (long long)i,
                      got->px[i], want->px[i]);
}

/* Pillow 13 runs the vertical pass first when the height loses more than
 * twice the pixels the width does: sizes on both sides of the rule. */
START_TEST(test_resize_vs_pillow13) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, DIR "pixels.safetensors") == 0, "%s", dc_error());
    int n = 0;
    for (int i = 0; i < f.n; i++) {
        const char *name = f.tensors[i].name;
        int w, h, c, ow, oh, size;
        char src_name[64];
        dc_image got = {0}, src, want;
        if (sscanf(name, "resize.%dx%dx%d.%dx%d", &w, &h, &c, &ow, &oh) == 5) {
            snprintf(src_name, sizeof src_name, "src.%dx%dx%d", w, h, c);
            src = fx_image(&f, src_name);
            ck_assert_msg(dc_image_resize(&got, &src, ow, oh) == 0, "%s", dc_error());
        } else if (sscanf(name, "crop.%dx%dx%d.%d", &w, &h, &c, &size) == 4) {
            snprintf(src_name, sizeof src_name, "src.%dx%dx%d", w, h, c);
            src = fx_image(&f, src_name);
            ck_assert_msg(dc_image_resize_center_crop(&got, &src, size) == 0, "%s", dc_error());
        } else {
            continue;
        }
        want = fx_image(&f, name);
        assert_same_image(&got, &want, name);
        dc_image_free(&got);
        dc_image_free(&src);
        dc_image_free(&want);
        n++;
    }
    ck_assert_int_eq(n, 11);
    dc_st_close(&f);
}
END_TEST

/* Keys left out take BlipImageProcessor's class defaults. */
START_TEST(test_defaults) {
    dc_image_processor p;
    ck_assert_msg(dc_image_processor_parse(&p, "{}", "empty") == 0, "%s", dc_error());
    ck_assert(p.do_resize && p.do_rescale && p.do_normalize && p.do_convert_rgb);
    ck_assert_int_eq(p.height, 384);
    ck_assert_int_eq(p.width, 384);
    ck_assert_int_eq(p.resample, 3);
    ck_assert_double_eq_tol(p.rescale_factor, 1.0 / 255, 1e-15);
    ck_assert_double_eq_tol(p.mean[1], 0.4578275, 1e-12);
    ck_assert_double_eq_tol(p.std[2], 0.27577711, 1e-12);
    ck_assert(dc_image_processor_parse(&p, "{\"size\": 224, \"image_mean\": 0.5}", "n") == 0);
    ck_assert(p.height == 224 && p.width == 224 && p.mean[0] == 0.5 && p.mean[2] == 0.5);
}
END_TEST

static void assert_bad_config(const char *json, const char *want) {
    dc_image_processor p;
    ck_assert_int_eq(dc_image_processor_parse(&p, json, "cfg.json"), -1);
    ck_assert_msg(strstr(dc_error(), want), "%s: error \"%s\" lacks \"%s\"", json, dc_error(), want);
}

START_TEST(test_bad_configs) {
    assert_bad_config("{\"resample\": 2}", "cfg.json: resample 2 is not supported: only 3");
    assert_bad_config("{\"size\": {\"shortest_edge\": 384}}", "shortest_edge resizing is not supported");
    assert_bad_config("{\"size\": {\"height\": 0, \"width\": 3}}", "size height must be an integer from 1");
    assert_bad_config("{\"size\": {\"height\": 2.5, \"width\": 3}}", "size height must be an integer");
    assert_bad_config("{\"size\": \"big\"}", "size must be {\"height\": H, \"width\": W}");
    assert_bad_config("{\"image_std\": [0.2, 0, 0.3]}", "image_std finite and not zero");
    assert_bad_config("{\"image_std\": 1e-300}", "image_std finite and not zero (in float32)");
    assert_bad_config("{\"image_mean\": [0.2, 1e300, 0.3]}", "image_mean must be finite");
    assert_bad_config("{\"image_std\": 1e-39}", "image_std 1e-39 makes pixels beyond float32");
    assert_bad_config("{\"rescale_factor\": 1e300}", "rescale_factor 1e+300 makes pixels beyond float32");
    dc_image_processor ok;
    ck_assert_msg(dc_image_processor_parse(&ok, "{\"do_normalize\": false, \"image_std\": 0}", "c") == 0,
                  "mean and std are not used without do_normalize: %s", dc_error());
    assert_bad_config("{\"image_mean\": [0.2, 0.3]}", "image_mean must be three numbers");
    assert_bad_config("{\"image_mean\": [0.2, \"a\", 0.3]}", "image_mean[1] must be a number");
    assert_bad_config("{\"do_center_crop\": true}", "do_center_crop is not supported");
    assert_bad_config("{\"do_resize\": 1}", "do_resize must be true or false");
    assert_bad_config("{\"image_processor_type\": \"CLIPImageProcessor\"}",
                      "image_processor_type CLIPImageProcessor is not supported");
    assert_bad_config("[1]", "not a JSON object");
    assert_bad_config("{\"size\": ", "cfg.json");
    dc_image_processor p;
    ck_assert_int_eq(dc_image_processor_load(&p, "tests/fixtures/no_such/preprocessor_config.json"), -1);
    ck_assert_msg(strstr(dc_error(), "no_such/preprocessor_config.json"), "%s", dc_error());
}
END_TEST

START_TEST(test_bad_images) {
    dc_image_processor p;
    ck_assert(dc_image_processor_parse(&p, "{\"size\": 8, \"do_convert_rgb\": false}", "c") == 0);
    dc_image gray = tu_random_image(5, 7, 1), rgb = tu_random_image(5, 7, 3);
    float out[8 * 8 * 3];
    ck_assert_int_eq(dc_image_processor_apply(&p, &gray, out, "g.png"), -1);
    ck_assert_str_eq(dc_error(), "g.png: a gray image and do_convert_rgb false: the model wants RGB");
    ck_assert(dc_image_processor_parse(&p, "{\"size\": 8, \"do_resize\": false}", "c") == 0);
    ck_assert_int_eq(dc_image_processor_apply(&p, &rgb, out, "r.png"), -1);
    ck_assert_str_eq(dc_error(), "r.png: the image is 5x7, the model wants 8x8, and do_resize is false");
    dc_image_free(&gray);
    dc_image_free(&rgb);
}
END_TEST

int main(void) {
    Suite *s = suite_create("image_processor");
    TCase *tc = tu_tcase(s, "transformers", 60);
    tcase_add_test(tc, test_vs_transformers);
    tcase_add_test(tc, test_resize_vs_pillow13);
    tc = tu_tcase(s, "config", 60);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_bad_configs);
    tcase_add_test(tc, test_bad_images);
    return tu_run(s);
}
