/*
 * Pixel operations on dc_image (see image.h): allocation, channel
 * conversion, PIL-exact bicubic resizing, torchvision's resize + centre crop,
 * crop, flip, uint8 <-> float, and the image grid. Decoding and encoding live
 * in image_codec.c.
 */
#include "image.h"

#include "autograd/error.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- allocation ---- */

int dc_image_alloc(dc_image *img, int w, int h, int c) {
    *img = (dc_image){0};
    if (w < 1 || h < 1 || (c != 1 && c != 3))
        return dc_fail("image of %d x %d x %d: sizes must be positive and channels 1 or 3", w, h, c);
    if ((int64_t)w * h > DC_IMAGE_MAX_PIXELS)
        return dc_fail("image of %d x %d: more than %lld pixels", w, h, (long long)DC_IMAGE_MAX_PIXELS);
    img->px = malloc((size_t)w * h * c);
    if (!img->px)
        return dc_fail("image of %d x %d x %d: out of memory", w, h, c);
    img->w = w, img->h = h, img->c = c;
    return 0;
}

void dc_image_free(dc_image *img) {
    free(img->px);
    *img = (dc_image){0};
}

static int check_source(const dc_image *src, const char *op) {
    if (!src->px || src->w < 1 || src->h < 1 || (src->c != 1 && src->c != 3))
        return dc_fail("%s: the source image is empty or malformed (%d x %d x %d)", op, src->w, src->h, src->c);
    return 0;
}

/* ---- channels ---- */

/* PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, rounded. */
static uint8_t luma(const uint8_t *rgb) {
    return (uint8_t)((rgb[0] * 19595 + rgb[1] * 38470 + rgb[2] * 7471 + 0x8000) >> 16);
}

int dc_image_convert(dc_image *dst, const dc_image *src, int channels) {
    *dst = (dc_image){0};
    if (check_source(src, "convert") || dc_image_alloc(dst, src->w, src->h, channels))
        return -1;
    size_t n = (size_t)src->w * src->h;
    if (src->c == channels)
        memcpy(dst->px, src->px, n * channels);
    else if (channels == 1)
        for (size_t i = 0; i < n; i++)
            dst->px[i] = luma(src->px + 3 * i);
    else
        for (size_t i = 0; i < n; i++)
            memset(dst->px + 3 * i, src->px[i], 3);
    return 0;
}

/* ---- resize: PIL's ImagingResample with the bicubic filter ----
 *
 * To match PIL bit for bit we do what it does: per axis, filter weights in
 * double precision, normalised to sum 1, then turned into 22-bit fixed point;
 * a horizontal pass into an 8-bit intermediate, then a vertical pass, each
 * sum starting at one half and clipped to 0..255. An axis whose size does not
 * change is not filtered (its weights would be the identity anyway).
 *
 * Pillow 13 (python-pillow/Pillow#9549) runs the vertical pass first when the
 * height shrinks by more than twice as many pixels as the width does; the
 * 8-bit intermediate then differs, and so do some output pixels (by up to a
 * dozen levels on noise). We follow Pillow 13, the one PyPI serves (and
 * transformers' BLIP processor uses); Pillow 12 and older differ from us on
 * those sizes only. */

#define PRECISION_BITS 22 /* 32 - 8 bits of pixel - 2 bits of headroom for negative lobes */
#define HALF (1 << (PRECISION_BITS - 1))

static double bicubic(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0)
        return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

/* Weights mapping `in` samples onto `out`: output i reads inputs
 * first[i] .. first[i] + count[i] - 1 with weights k[i * ksize + j]. */
typedef struct {
    int ksize;
    int *first, *count;
    int32_t *k;
} axis_weights;

static void axis_free(axis_weights *a) {
    free(a->first);
    free(a->count);
    free(a->k);
}

static int axis_init(axis_weights *a, int in, int out) {
    double scale = (double)in / out;
    double filterscale = scale < 1.0 ? 1.0 : scale; /* widen the kernel only when shrinking */
    double support = 2.0 * filterscale;
    a->ksize = (int)ceil(support) * 2 + 1;
    a->first = malloc((size_t)out * sizeof *a->first);
    a->count = malloc((size_t)out * sizeof *a->count);
    a->k = calloc((size_t)out * a->ksize, sizeof *a->k);
    double *w = malloc((size_t)a->ksize * sizeof *w);
    if (!a->first || !a->count || !a->k || !w) {
        free(w);
        axis_free(a);
        return dc_fail("resize %d -> %d: out of memory for the filter weights", in, out);
    }
    for (int i = 0; i < out; i++) {
        double center = (i + 0.5) * scale;
        /* PIL rounds the window ends by adding 0.5 and truncating */
        int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
        lo = lo < 0 ? 0 : lo;
        hi = hi > in ? in : hi;
        double sum = 0.0;
        for (int j = 0; j < hi - lo; j++)
            sum += w[j] = bicubic((j + lo - center + 0.5) / filterscale);
        for (int j = 0; j < hi - lo; j++) {
            double v = sum != 0.0 ? w[j] / sum : w[j];
            a->k[(size_t)i * a->ksize + j] = (int32_t)(v < 0 ? v * (1 << PRECISION_BITS) - 0.5
                                                             : v * (1 << PRECISION_BITS) + 0.5);
        }
        a->first[i] = lo;
        a->count[i] = hi - lo;
    }
    free(w);
    return 0;
}

static uint8_t clip8(int32_t v) {
    if (v <= 0)
        return 0;
    if (v >= (255 << PRECISION_BITS))
        return 255;
    return (uint8_t)(v >> PRECISION_BITS);
}

/* Rows [y0, y1) of src, columns [x0, x0 + w) of the horizontal resize, into
 * dst ([y1 - y0, w, c]). src's first column is column `base` of the image
 * the weights were made for. */
static void resample_rows(uint8_t *dst, const dc_image *src, int y0, int y1, const axis_weights *a, int x0,
                          int w, int base) {
    int c = src->c;
    for (int y = y0; y < y1; y++) {
        const uint8_t *row = src->px + (size_t)y * src->w * c;
        uint8_t *out = dst + (size_t)(y - y0) * w * c;
        for (int x = x0; x < x0 + w; x++) {
            const int32_t *k = a->k + (size_t)x * a->ksize;
            const uint8_t *in = row + (size_t)(a->first[x] - base) * c;
            for (int ch = 0; ch < c; ch++, out++) {
                int32_t s = HALF;
                for (int j = 0; j < a->count[x]; j++)
                    s += in[j * c + ch] * k[j];
                *out = clip8(s);
            }
        }
    }
}

/* Rows [y0, y0 + h) of the vertical resize, `n` bytes wide, into dst. The
 * input rows are `stride` bytes apart and the first is source row `base`.
 * Sums a whole row at a time in acc[n], so the inner loop runs along memory. */
static void resample_cols(uint8_t *dst, const uint8_t *src, size_t stride, int base, size_t n,
                          const axis_weights *a, int y0, int h, int32_t *acc) {
    for (int y = y0; y < y0 + h; y++) {
        const int32_t *k = a->k + (size_t)y * a->ksize;
        const uint8_t *in = src + (size_t)(a->first[y] - base) * stride;
        for (size_t i = 0; i < n; i++)
            acc[i] = HALF;
        for (int j = 0; j < a->count[y]; j++)
            for (size_t i = 0; i < n; i++)
                acc[i] += in[j * stride + i] * k[j];
        uint8_t *out = dst + (size_t)(y - y0) * n;
        for (size_t i = 0; i < n; i++)
            out[i] = clip8(acc[i]);
    }
}

/* Pillow 13's pass order: vertical first when the height loses more than
 * twice as many pixels as the width. */
static bool vertical_first(const dc_image *src, int out_w, int out_h) {
    return out_h < src->h && src->h - out_h > 2 * (src->w - out_w);
}

/* Both passes, vertical first: the source columns the window's horizontal
 * pass reads, resized vertically into mid, then resized horizontally. */
static int resample_vh(dc_image *dst, const dc_image *src, const axis_weights *ax, const axis_weights *ay,
                       int x0, int y0, int cw, int ch) {
    int c = src->c, c0 = ax->first[x0], c1 = ax->first[x0 + cw - 1] + ax->count[x0 + cw - 1];
    dc_image mid = {0};
    size_t n = (size_t)(c1 - c0) * c;
    int32_t *acc = malloc(n * sizeof *acc);
    if (!acc || dc_image_alloc(&mid, c1 - c0, ch, c)) {
        free(acc);
        return dc_fail("resize %dx%d: out of memory", src->w, src->h);
    }
    resample_cols(mid.px, src->px + (size_t)c0 * c, (size_t)src->w * c, 0, n, ay, y0, ch, acc);
    resample_rows(dst->px, &mid, 0, ch, ax, x0, cw, c0);
    free(acc);
    dc_image_free(&mid);
    return 0;
}

/* The window [x0, x0 + cw) x [y0, y0 + ch) of src resized to out_w x out_h.
 * Each output pixel depends only on its own weights, so computing just the
 * window gives exactly the pixels of the full resize, then cropped. */
static int resample(dc_image *dst, const dc_image *src, int out_w, int out_h, int x0, int y0, int cw, int ch) {
    axis_weights ax = {0}, ay = {0};
    uint8_t *tmp = NULL;
    int32_t *acc = NULL;
    int c = src->c, horiz = out_w != src->w, vert = out_h != src->h, rc = -1;
    size_t n = (size_t)cw * c; /* bytes per output row */
    if (dc_image_alloc(dst, cw, ch, c) || (horiz && axis_init(&ax, src->w, out_w)) ||
        (vert && axis_init(&ay, src->h, out_h)))
        goto done;
    if (horiz && vert && vertical_first(src, out_w, out_h)) {
        rc = resample_vh(dst, src, &ax, &ay, x0, y0, cw, ch);
        goto done;
    }
    /* the source rows the vertical pass reads (all of the window's rows when it is skipped) */
    int r0 = vert ? ay.first[y0] : y0;
    int r1 = vert ? ay.first[y0 + ch - 1] + ay.count[y0 + ch - 1] : y0 + ch;
    if ((horiz && vert && !(tmp = malloc((size_t)(r1 - r0) * n))) || (vert && !(acc = malloc(n * sizeof *acc)))) {
        dc_fail("resize %dx%d -> %dx%d: out of memory", src->w, src->h, out_w, out_h);
        goto done;
    }
    if (horiz && !vert) {
        resample_rows(dst->px, src, r0, r1, &ax, x0, cw, 0);
    } else if (horiz) {
        resample_rows(tmp, src, r0, r1, &ax, x0, cw, 0);
        resample_cols(dst->px, tmp, n, r0, n, &ay, y0, ch, acc);
    } else if (vert) {
        resample_cols(dst->px, src->px + (size_t)x0 * c, (size_t)src->w * c, 0, n, &ay, y0, ch, acc);
    } else {
        for (int y = 0; y < ch; y++)
            memcpy(dst->px + (size_t)y * n, src->px + ((size_t)(y0 + y) * src->w + x0) * c, n);
    }
    rc = 0;
done:
    free(acc);
    free(tmp);
    axis_free(&ax);
    axis_free(&ay);
    if (rc)
        dc_image_free(dst);
    return rc;
}

int dc_image_resize(dc_image *dst, const dc_image *src, int w, int h) {
    *dst = (dc_image){0};
    if (check_source(src, "resize"))
        return -1;
    if (w < 1 || h < 1 || (int64_t)w * h > DC_IMAGE_MAX_PIXELS)
        return dc_fail("resize %dx%d -> %dx%d: bad target size", src->w, src->h, w, h);
    return resample(dst, src, w, h, 0, 0, w, h);
}

/* torchvision's CenterCrop offset: int(round((size - crop) / 2.0)), and
 * Python rounds halves to even. */
static int center_offset(int size, int crop) {
    int d = size - crop, k = d / 2;
    return d % 2 && k % 2 ? k + 1 : k;
}

int dc_image_resize_center_crop(dc_image *dst, const dc_image *src, int size) {
    *dst = (dc_image){0};
    if (check_source(src, "resize"))
        return -1;
    if (size < 1)
        return dc_fail("resize %dx%d -> %d: bad target size", src->w, src->h, size);
    /* torchvision: the shorter side becomes size, the longer int(size * long / short) */
    int portrait = src->w <= src->h;
    int shorter = portrait ? src->w : src->h, longer = portrait ? src->h : src->w;
    double l = (double)((int64_t)size * longer) / shorter;
    if (l > (double)DC_IMAGE_MAX_PIXELS / size)
        return dc_fail("resize %dx%d -> %d: the resized image would be too large", src->w, src->h, size);
    int new_long = (int)l;
    int out_w = portrait ? size : new_long, out_h = portrait ? new_long : size;
    return resample(dst, src, out_w, out_h, center_offset(out_w, size), center_offset(out_h, size), size, size);
}

/* ---- crop, flip ---- */

int dc_image_crop(dc_image *dst, const dc_image *src, int x, int y, int w, int h) {
    *dst = (dc_image){0};
    if (check_source(src, "crop"))
        return -1;
    if (x < 0 || y < 0 || w < 1 || h < 1 || w > src->w - x || h > src->h - y)
        return dc_fail("crop %dx%d at (%d, %d): outside the %dx%d image", w, h, x, y, src->w, src->h);
    if (dc_image_alloc(dst, w, h, src->c))
        return -1;
    size_t row = (size_t)w * src->c;
    for (int r = 0; r < h; r++)
        memcpy(dst->px + r * row, src->px + ((size_t)(y + r) * src->w + x) * src->c, row);
    return 0;
}

void dc_image_flip(dc_image *img) {
    int c = img->c;
    for (int y = 0; y < img->h; y++) {
        uint8_t *row = img->px + (size_t)y * img->w * c;
        for (int a = 0, b = img->w - 1; a < b; a++, b--)
            for (int ch = 0; ch < c; ch++) {
                uint8_t t = row[a * c + ch];
                row[a * c + ch] = row[b * c + ch];
                row[b * c + ch] = t;
            }
    }
}

/* ---- uint8 <-> float ---- */

/* omp simd: the loader converts every pixel of every batch here, and -O2
 * alone leaves the division scalar (vector division gives the same quotients). */
void dc_u8_to_float(float *dst, const uint8_t *src, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] / 127.5f - 1.0f;
}

/* Rounds halves up; NaN becomes 0. */
void dc_float_to_u8(uint8_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = (src[i] + 1.0f) * 127.5f;
        dst[i] = v > 0.0f ? (v < 255.0f ? (uint8_t)(v + 0.5f) : 255) : 0;
    }
}

/* ---- grid ---- */

int dc_image_grid(dc_image *dst, const dc_image *imgs, int n, int cols, int gap) {
    *dst = (dc_image){0};
    if (n < 1 || cols < 1 || gap < 0)
        return dc_fail("image grid: bad layout (%d images, %d columns, gap %d)", n, cols, gap);
    for (int i = 0; i < n; i++) {
        if (check_source(&imgs[i], "image grid"))
            return -1;
        if (imgs[i].w != imgs[0].w || imgs[i].h != imgs[0].h || imgs[i].c != imgs[0].c)
            return dc_fail("image grid: image %d is %dx%dx%d, image 0 is %dx%dx%d", i, imgs[i].w, imgs[i].h,
                           imgs[i].c, imgs[0].w, imgs[0].h, imgs[0].c);
    }
    int w = imgs[0].w, h = imgs[0].h, c = imgs[0].c, rows = (n + cols - 1) / cols;
    int64_t gw = (int64_t)cols * (w + gap) + gap, gh = (int64_t)rows * (h + gap) + gap;
    if (gw > INT32_MAX || gh > INT32_MAX)
        return dc_fail("image grid: %d images of %dx%d make too large a grid", n, w, h);
    if (dc_image_alloc(dst, (int)gw, (int)gh, c))
        return -1;
    memset(dst->px, 255, (size_t)dst->w * dst->h * c);
    for (int i = 0; i < n; i++) {
        size_t x = (size_t)(i % cols) * (w + gap) + gap, y = (size_t)(i / cols) * (h + gap) + gap;
        for (int r = 0; r < h; r++)
            memcpy(dst->px + ((y + r) * dst->w + x) * c, imgs[i].px + (size_t)r * w * c, (size_t)w * c);
    }
    return 0;
}

static const char *channel_name(int c) { return c == 1 ? "gray" : "RGB"; }

int dc_image_fit(dc_image *dst, const dc_image *src, int c, int w, int h, char *note, size_t n) {
    dc_image conv = {0};
    const dc_image *cur = src;
    int rc = 0;
    size_t k = 0;
    note[0] = '\0';
    if (src->c != c) {
        k += (size_t)snprintf(note, n, "%s converted to %s", channel_name(src->c), channel_name(c));
        rc = dc_image_convert(&conv, src, c);
        cur = &conv;
    }
    if (!rc && (cur->w != w || cur->h != h)) {
        bool crop = w == h && cur->w != cur->h;
        snprintf(note + (k < n ? k : n), k < n ? n - k : 0, "%s%dx%d resized%s to %dx%d", k ? "; " : "",
                 cur->w, cur->h, crop ? " and centre-cropped" : "", w, h);
        rc = crop ? dc_image_resize_center_crop(dst, cur, w) : dc_image_resize(dst, cur, w, h);
    } else if (!rc) {
        rc = dc_image_crop(dst, cur, 0, 0, cur->w, cur->h);
    }
    dc_image_free(&conv);
    return rc;
}
