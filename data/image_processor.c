/*
 * BLIP's image preprocessing: preprocessor_config.json read over the class
 * defaults, then convert, resize, rescale, normalise (see image_processor.h).
 */
#include "data/image_processor.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_SIDE 8192 /* far above any ViT input; keeps sizes sane before allocating */
#define PIL_BICUBIC 3

dc_image_processor dc_image_processor_blip_default(void) {
    dc_image_processor p = {.do_resize = true,
                            .do_rescale = true,
                            .do_normalize = true,
                            .do_convert_rgb = true,
                            .height = 384,
                            .width = 384,
                            .resample = PIL_BICUBIC,
                            .rescale_factor = 1.0 / 255.0,
                            .mean = {0.48145466, 0.4578275, 0.40821073}, /* OPENAI_CLIP_MEAN */
                            .std = {0.26862954, 0.26130258, 0.27577711}}; /* OPENAI_CLIP_STD */
    return p;
}

/* A side of `size`: a positive integer up to MAX_SIDE. */
static int parse_side(const cJSON *v, const char *what, const char *key, int *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 ||
        v->valuedouble > MAX_SIDE)
        return dc_fail("%s: size %s must be an integer from 1 to %d, got %s", what, key, MAX_SIDE,
                       cJSON_IsNumber(v) ? "another number" : dc_json_type(v));
    *out = (int)v->valuedouble;
    return 0;
}

/* size: {"height": H, "width": W} or one number (a square, as transformers reads it). */
static int parse_size(dc_image_processor *p, const cJSON *root, const char *what) {
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(root, "size");
    if (!size || cJSON_IsNull(size))
        return 0;
    if (cJSON_IsNumber(size)) {
        if (parse_side(size, what, "", &p->height))
            return -1;
        p->width = p->height;
        return 0;
    }
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(size, "height");
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(size, "width");
    if (!cJSON_IsObject(size) || !h || !w)
        return dc_fail("%s: size must be {\"height\": H, \"width\": W} (shortest_edge resizing is not "
                       "supported)", what);
    return parse_side(h, what, "height", &p->height) || parse_side(w, what, "width", &p->width) ? -1 : 0;
}

/* image_mean / image_std: three numbers or one for all channels. */
static int parse_channels(const cJSON *root, const char *key, const char *what, double out[3]) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (cJSON_IsNumber(v)) {
        out[0] = out[1] = out[2] = v->valuedouble;
        return 0;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 3)
        return dc_fail("%s: %s must be three numbers (R, G, B) or one, got %s", what, key,
                       cJSON_IsArray(v) ? "another count" : dc_json_type(v));
    for (int c = 0; c < 3; c++) {
        const cJSON *x = cJSON_GetArrayItem(v, c);
        if (!cJSON_IsNumber(x))
            return dc_fail("%s: %s[%d] must be a number, got %s", what, key, c, dc_json_type(x));
        out[c] = x->valuedouble;
    }
    return 0;
}

/* Options we do not have must be off. */
static int refuse_on(const cJSON *root, const char *key, const char *what) {
    bool on = false;
    if (dc_json_get_bool(root, key, what, &on))
        return -1;
    return on ? dc_fail("%s: %s is not supported (BLIP's processor does not use it)", what, key) : 0;
}

static int check_values(const dc_image_processor *p, const char *what) {
    if (p->resample != PIL_BICUBIC)
        return dc_fail("%s: resample %d is not supported: only 3 (PIL's bicubic), as BLIP uses", what,
                       p->resample);
    /* the largest |pixel| out, in double: it must be a finite float32 */
    double hi = p->do_rescale ? 255.0 * fabs(p->rescale_factor) : 255.0;
    if (!(hi <= FLT_MAX))
        return dc_fail("%s: rescale_factor %g makes pixels beyond float32", what, p->rescale_factor);
    for (int c = 0; p->do_normalize && c < 3; c++) { /* used as the float32 they become */
        float mean = (float)p->mean[c], std = (float)p->std[c];
        if (!isfinite(mean) || !isfinite(std) || std == 0)
            return dc_fail("%s: image_mean must be finite and image_std finite and not zero (in float32)", what);
        if (!((hi + fabs(mean)) / fabs(std) <= FLT_MAX))
            return dc_fail("%s: image_std %g makes pixels beyond float32", what, p->std[c]);
    }
    return 0;
}

static int parse_root(dc_image_processor *p, const cJSON *root, const char *what) {
    double resample = p->resample;
    const char *type = NULL;
    if (!cJSON_IsObject(root))
        return dc_fail("%s: not a JSON object", what);
    if (dc_json_get_string(root, "image_processor_type", what, &type) ||
        dc_json_get_bool(root, "do_resize", what, &p->do_resize) ||
        dc_json_get_bool(root, "do_rescale", what, &p->do_rescale) ||
        dc_json_get_bool(root, "do_normalize", what, &p->do_normalize) ||
        dc_json_get_bool(root, "do_convert_rgb", what, &p->do_convert_rgb) ||
        dc_json_get_number(root, "rescale_factor", what, &p->rescale_factor) ||
        dc_json_get_number(root, "resample", what, &resample) || parse_size(p, root, what) ||
        parse_channels(root, "image_mean", what, p->mean) || parse_channels(root, "image_std", what, p->std) ||
        refuse_on(root, "do_center_crop", what) || refuse_on(root, "do_pad", what))
        return -1;
    if (type && strncmp(type, "BlipImageProcessor", strlen("BlipImageProcessor")) != 0)
        return dc_fail("%s: image_processor_type %s is not supported (BlipImageProcessor is)", what, type);
    p->resample = resample == floor(resample) && fabs(resample) < 100 ? (int)resample : -1;
    return check_values(p, what);
}

int dc_image_processor_parse(dc_image_processor *p, const char *text, const char *what) {
    *p = dc_image_processor_blip_default();
    cJSON *root = dc_json_parse(text, strlen(text), what);
    if (!root)
        return -1;
    int rc = parse_root(p, root, what);
    cJSON_Delete(root);
    return rc;
}

int dc_image_processor_load(dc_image_processor *p, const char *path) {
    *p = dc_image_processor_blip_default();
    cJSON *root = dc_json_load(path);
    if (!root)
        return -1;
    int rc = parse_root(p, root, path);
    cJSON_Delete(root);
    return rc;
}

/* 8-bit RGB at the output size in rgb (empty on entry). */
static int to_rgb_sized(const dc_image_processor *p, const dc_image *img, dc_image *rgb, const char *what) {
    dc_image conv = {0};
    const dc_image *src = img;
    if (img->c != 3) {
        if (!p->do_convert_rgb)
            return dc_fail("%s: a gray image and do_convert_rgb false: the model wants RGB", what);
        if (dc_image_convert(&conv, img, 3))
            return dc_fail_prefix(what);
        src = &conv;
    }
    int rc = 0;
    if (src->w == p->width && src->h == p->height)
        rc = dc_image_crop(rgb, src, 0, 0, src->w, src->h);
    else if (!p->do_resize)
        rc = dc_fail("%s: the image is %dx%d, the model wants %dx%d, and do_resize is false", what,
                     src->w, src->h, p->width, p->height);
    else if (dc_image_resize(rgb, src, p->width, p->height))
        rc = dc_fail_prefix(what);
    dc_image_free(&conv);
    return rc;
}

int dc_image_processor_apply(const dc_image_processor *p, const dc_image *img, float *out,
                             const char *what) {
    dc_image rgb = {0};
    if (to_rgb_sized(p, img, &rgb, what))
        return -1;
    float mean[3], std[3];
    for (int c = 0; c < 3; c++) {
        mean[c] = (float)p->mean[c];
        std[c] = (float)p->std[c];
    }
    size_t n = (size_t)p->width * (size_t)p->height;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 3; c++) {
            uint8_t v = rgb.px[3 * i + c];
            float x = p->do_rescale ? (float)((double)v * p->rescale_factor) : (float)v;
            out[3 * i + c] = p->do_normalize ? (x - mean[c]) / std[c] : x;
        }
    dc_image_free(&rgb);
    return 0;
}

/* preprocessor_config.json, or processor_config.json's "image_processor"
 * (where transformers 5 saves it). */
int dc_image_processor_load_dir(dc_image_processor *p, const char *dir) {
    char *pre = dc_path_join(dir, "preprocessor_config.json");
    char *proc = dc_path_join(dir, "processor_config.json");
    struct stat st;
    int rc = -1;
    if (!pre || !proc)
        goto done;
    if (stat(pre, &st) == 0 || stat(proc, &st) != 0) {
        rc = dc_image_processor_load(p, pre);
        goto done;
    }
    cJSON *j = dc_json_load(proc);
    const cJSON *ip = cJSON_GetObjectItemCaseSensitive(j, "image_processor");
    char *text = cJSON_IsObject(ip) ? cJSON_PrintUnformatted(ip) : NULL;
    if (j && !cJSON_IsObject(ip))
        dc_fail("%s: no \"image_processor\" object", proc);
    else if (j && !text)
        dc_fail("out of memory");
    rc = text ? dc_image_processor_parse(p, text, proc) : -1;
    free(text);
    cJSON_Delete(j);
done:
    free(pre);
    free(proc);
    return rc;
}
