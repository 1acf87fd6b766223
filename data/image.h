/*
 * Images in memory: decode (PNG via libpng, JPEG via libjpeg-turbo), encode
 * PNG, convert channels, resize with antialiasing, crop, flip, and move
 * between uint8 HWC and float NHWC in [-1, 1]. Also the image grid that
 * `sample` and training write.
 *
 * A dc_image is 8-bit, row-major HWC with 1 (gray) or 3 (RGB) channels.
 * Decoding always lands in one of those: 16-bit samples are rounded to 8
 * (round(v / 257)), low bit depths scaled up, palettes expanded, alpha
 * composited on white (a transparent background becomes white, as most
 * viewers show it) in 8 bits: out = round((c * a + 255 * (255 - a)) / 255).
 * PNG gray and gray+alpha give 1 channel, palette, RGB and RGBA give 3. JPEG
 * gray gives 1, colour 3; CMYK is converted to RGB as PIL does (inverted
 * when the file has an Adobe marker) and the EXIF orientation (1..8) is
 * applied as PIL's ImageOps.exif_transpose does. Every error names the file
 * (or the `what` given).
 *
 * Functions that make an image write it to `dst`: whatever dst held is not
 * freed (pass an empty or freed image), dst is left empty on failure, and it
 * must not be the source.
 */
#ifndef DC_DATA_IMAGE_H
#define DC_DATA_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct dc_image {
    int w, h, c;  /* c is 1 or 3 */
    uint8_t *px;  /* [h, w, c], malloc'ed; NULL when empty */
} dc_image;

typedef enum { DC_IMAGE_UNKNOWN, DC_IMAGE_PNG, DC_IMAGE_JPEG } dc_image_format;

/* An empty image of w x h x c (pixels uninitialised); -1 on bad sizes or no memory. */
int dc_image_alloc(dc_image *img, int w, int h, int c);
void dc_image_free(dc_image *img); /* safe on an empty or freed image */

/* The format by content (magic bytes), not by file name. */
dc_image_format dc_image_sniff(const void *buf, size_t n);

/* Decode PNG or JPEG from memory; `what` names it in errors ("cats/01.png").
 * Images larger than DC_IMAGE_MAX_PIXELS are refused before decoding. */
#define DC_IMAGE_MAX_PIXELS ((int64_t)1 << 28)
int dc_image_decode(dc_image *img, const void *buf, size_t n, const char *what);
/* The same with a lower limit (the fuzzer keeps claimed sizes within its memory). */
int dc_image_decode_limit(dc_image *img, const void *buf, size_t n, const char *what, int64_t max_pixels);
/* Read and decode a file. */
int dc_image_load(dc_image *img, const char *path);
/* Write an 8-bit gray or RGB PNG (to "<path>.tmp", then renamed). */
int dc_image_save_png(const dc_image *img, const char *path);
/* A PNG text chunk: key (1 to 79 Latin-1 characters, PNG's rule) and a UTF-8 value. */
typedef struct dc_image_text {
    const char *key, *value;
} dc_image_text;
/* The same with n_text text chunks (how an image was made: prompt, seed, settings). */
int dc_image_save_png_text(const dc_image *img, const char *path, const dc_image_text *text,
                           int n_text);
/* The same PNG in memory: *out (malloc'ed, *n bytes), for TensorBoard. */
int dc_image_encode_png(const dc_image *img, uint8_t **out, size_t *n);

/* Gray <-> RGB (gray = ITU-R 601 luma, rounded, as PIL's convert("L")). */
int dc_image_convert(dc_image *dst, const dc_image *src, int channels);
/* Resize to w x h as PIL's Image.resize(size, BICUBIC), pixel for pixel:
 * separable bicubic (a = -0.5) whose support widens with the scale when
 * shrinking, so downscaling averages (antialiasing) instead of skipping
 * pixels. The pass order is Pillow 13's (vertical first when the height
 * loses more than twice the pixels the width does); older Pillows always
 * go horizontal first and differ on those sizes. */
int dc_image_resize(dc_image *dst, const dc_image *src, int w, int h);
/* Shorter side to `size` (aspect kept), then the centre size x size square:
 * torchvision's Resize(size, interpolation=BICUBIC) + CenterCrop(size) on a
 * PIL image, pixel for pixel. Only the kept square is computed. */
int dc_image_resize_center_crop(dc_image *dst, const dc_image *src, int size);
/* Bring an image to c channels and w x h as a model wants it: convert the
 * channels, then resize (a square target from a non-square source: shorter
 * side and centre crop, as training does). `note` (n bytes) says what was
 * done ("gray converted to RGB; 28x28 resized to 32x32"), "" when nothing
 * was: dst is then a copy. */
int dc_image_fit(dc_image *dst, const dc_image *src, int c, int w, int h, char *note, size_t n);
/* The w x h window at (x, y); must lie inside src. */
int dc_image_crop(dc_image *dst, const dc_image *src, int x, int y, int w, int h);
/* Mirror left-right in place. */
void dc_image_flip(dc_image *img);

/* uint8 -> float in [-1, 1] (v / 127.5 - 1), and back ((v + 1) * 127.5
 * rounded half up, clamped to 0..255; NaN gives 0). */
void dc_u8_to_float(float *dst, const uint8_t *src, size_t n);
void dc_float_to_u8(uint8_t *dst, const float *src, size_t n);

/* Tile n images of one size (all c equal) into `cols` columns with `gap`
 * white pixels between and around them; cells past the n-th in the last row
 * stay white. */
int dc_image_grid(dc_image *dst, const dc_image *imgs, int n, int cols, int gap);

#endif
