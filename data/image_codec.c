/*
 * Image files: PNG (libpng) and JPEG (libjpeg-turbo) decoded from memory into
 * a dc_image, and PNG written atomically (see image.h).
 *
 * Both libraries report errors by calling a handler that must not return;
 * ours records the message with dc_fail() and longjmps back to the function
 * that called setjmp. Everything that function allocates is held in a reader
 * struct in its caller's frame, so the values survive the longjmp and the
 * caller frees them on every path. Neither library prints anything: PNG
 * warnings (bad ancillary chunks and the like) and JPEG warnings (stray bytes
 * between markers) are dropped, except that a JPEG running out of data is an
 * error, where libjpeg would quietly pad it with gray.
 *
 * The pixel rules (bit depths, alpha on white, CMYK, EXIF) are in image.h.
 * One departure from PIL: PIL treats every CMYK JPEG as inverted, we only
 * those with an Adobe marker, the usual rule (Photoshop, PIL and libjpeg all
 * write that marker with inverted CMYK); the two agree on every file PIL
 * makes.
 */
#include "image.h"

#include "autograd/error.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

#define JPEG_MAX_SCANS 500 /* a progressive file needs about 10; thousands are a denial of service */

dc_image_format dc_image_sniff(const void *buf, size_t n) {
    const uint8_t *p = buf;
    if (n >= 8 && !memcmp(p, "\x89PNG\r\n\x1a\n", 8))
        return DC_IMAGE_PNG;
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return DC_IMAGE_JPEG;
    return DC_IMAGE_UNKNOWN;
}

/* ---- PNG decoding ---- */

typedef struct {
    const char *what;
    const uint8_t *buf;
    size_t n, pos;
    int64_t max_pixels;
    png_structp png;
    png_infop info;
    png_bytep *rows;  /* [h] pointers into `samples` or straight into the image */
    uint8_t *samples; /* decoded rows when they need converting, else NULL */
    dc_image *img;
} png_reader;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_reader *r = png_get_error_ptr(png);
    dc_fail("%s: bad PNG file: %s", r->what, msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {}

/* The last message again, prefixed with the file's name. */
static int fail_named(const char *what) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", dc_error());
    return dc_fail("%s: %s", what, msg);
}

static void png_read_mem(png_structp png, png_bytep out, size_t len) {
    png_reader *r = png_get_io_ptr(png);
    if (len > r->n - r->pos)
        png_error(png, "truncated file");
    memcpy(out, r->buf + r->pos, len);
    r->pos += len;
}

static uint8_t sample8(const uint8_t *p, int depth) {
    return depth == 8 ? p[0] : (uint8_t)(((p[0] << 8 | p[1]) * 255u + 32767) / 65535);
}

static uint8_t over_white(unsigned v, unsigned a) { return (uint8_t)((v * a + 255 * (255 - a) + 127) / 255); }

/* One decoded row (ch samples of depth bits per pixel, alpha last) to 8-bit
 * gray or RGB on white. */
static void png_convert_row(uint8_t *out, const uint8_t *in, int w, int ch, int depth) {
    int bytes = depth / 8, color = ch <= 2 ? 1 : 3, alpha = ch == 2 || ch == 4;
    for (int x = 0; x < w; x++, in += ch * bytes, out += color) {
        unsigned a = alpha ? sample8(in + color * bytes, depth) : 255;
        for (int k = 0; k < color; k++)
            out[k] = over_white(sample8(in + k * bytes, depth), a);
    }
}

static int png_decode_into(png_reader *r) {
    if (setjmp(png_jmpbuf(r->png)))
        return -1;
    png_set_read_fn(r->png, r, png_read_mem);
    png_read_info(r->png, r->info);
    png_uint_32 w = png_get_image_width(r->png, r->info), h = png_get_image_height(r->png, r->info);
    if ((int64_t)w * h > r->max_pixels) /* an unknown chunk before the IHDR got past the early check */
        return dc_fail("%s: PNG of %ux%u pixels, more than the %lld allowed", r->what, (unsigned)w, (unsigned)h,
                       (long long)r->max_pixels);
    png_set_expand(r->png); /* palette to RGB, gray below 8 bits to 8, tRNS to alpha */
    png_set_interlace_handling(r->png);
    png_read_update_info(r->png, r->info);
    int ch = png_get_channels(r->png, r->info), depth = png_get_bit_depth(r->png, r->info);
    size_t rowbytes = png_get_rowbytes(r->png, r->info);
    if ((depth != 8 && depth != 16) || rowbytes != (size_t)w * ch * (depth / 8))
        return dc_fail("%s: PNG rows of %d channels x %d bits, expected 8 or 16", r->what, ch, depth);
    if (dc_image_alloc(r->img, (int)w, (int)h, ch <= 2 ? 1 : 3))
        return fail_named(r->what);
    int direct = depth == 8 && (ch == 1 || ch == 3); /* already what the image holds */
    r->samples = direct ? NULL : malloc(rowbytes * h);
    r->rows = malloc(h * sizeof *r->rows);
    if (!r->rows || (!direct && !r->samples))
        return dc_fail("%s: out of memory for a %ux%u PNG", r->what, (unsigned)w, (unsigned)h);
    for (png_uint_32 y = 0; y < h; y++)
        r->rows[y] = (direct ? r->img->px : r->samples) + y * rowbytes;
    png_read_image(r->png, r->rows);
    png_read_end(r->png, NULL); /* the rest of the file must be there too */
    for (png_uint_32 y = 0; !direct && y < h; y++)
        png_convert_row(r->img->px + (size_t)y * w * r->img->c, r->rows[y], (int)w, ch, depth);
    return 0;
}

static uint32_t rd32be(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

static int decode_png(dc_image *img, const uint8_t *buf, size_t n, const char *what, int64_t max_pixels) {
    /* libpng reads on to the first IDAT before it tells us the size, so a
     * huge claim in an IHDR where it belongs (first) is refused here, before
     * libpng starts, whatever follows it */
    if (n >= 24 && !memcmp(buf + 12, "IHDR", 4) &&
        (uint64_t)rd32be(buf + 16) * rd32be(buf + 20) > (uint64_t)max_pixels)
        return dc_fail("%s: PNG of %ux%u pixels, more than the %lld allowed", what, (unsigned)rd32be(buf + 16),
                       (unsigned)rd32be(buf + 20), (long long)max_pixels);
    png_reader r = {.what = what, .buf = buf, .n = n, .max_pixels = max_pixels, .img = img};
    r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r, png_on_error, png_on_warning);
    r.info = r.png ? png_create_info_struct(r.png) : NULL;
    int rc = r.info ? png_decode_into(&r) : dc_fail("%s: out of memory for the PNG decoder", what);
    png_destroy_read_struct(&r.png, &r.info, NULL);
    free(r.rows);
    free(r.samples);
    if (rc)
        dc_image_free(img);
    return rc;
}

/* ---- JPEG decoding ---- */

typedef struct {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr err;
    struct jpeg_progress_mgr progress;
    jmp_buf jmp;
    const char *what;
    int64_t max_pixels;
    int orientation;  /* EXIF, 1..8 */
    uint8_t *samples; /* [h, w, output_components] when they need converting, else NULL */
    dc_image *img;
} jpeg_reader;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_reader *r = cinfo->client_data;
    char msg[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, msg);
    dc_fail("%s: bad JPEG file: %s", r->what, msg);
    longjmp(r->jmp, 1);
}

static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF)
        jpeg_on_error(cinfo);
}

static void jpeg_on_progress(j_common_ptr cinfo) {
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->input_scan_number > JPEG_MAX_SCANS) {
        jpeg_reader *r = cinfo->client_data;
        dc_fail("%s: bad JPEG file: more than %d scans", r->what, JPEG_MAX_SCANS);
        longjmp(r->jmp, 1);
    }
}

static unsigned rd16(const uint8_t *p, int le) { return le ? p[0] | p[1] << 8 : p[0] << 8 | p[1]; }

static uint32_t rd32(const uint8_t *p, int le) {
    return le ? rd16(p, 1) | (uint32_t)rd16(p + 2, 1) << 16 : (uint32_t)rd16(p, 0) << 16 | rd16(p + 2, 0);
}

/* The orientation tag (0x0112, a SHORT) of IFD0 in the TIFF structure t[0..n)
 * that follows "Exif\0\0"; 1 when absent or malformed. */
static int tiff_orientation(const uint8_t *t, size_t n) {
    if (n < 8 || (memcmp(t, "II", 2) && memcmp(t, "MM", 2)))
        return 1;
    int le = t[0] == 'I';
    uint32_t ifd = rd32(t + 4, le);
    if (rd16(t + 2, le) != 42 || ifd > n - 2)
        return 1;
    size_t room = (n - ifd - 2) / 12; /* whole 12-byte entries inside the data */
    unsigned count = rd16(t + ifd, le);
    for (size_t i = 0; i < count && i < room; i++) {
        const uint8_t *e = t + ifd + 2 + 12 * i;
        if (rd16(e, le) != 0x0112)
            continue;
        unsigned v = rd16(e + 8, le);
        return rd16(e + 2, le) == 3 && v >= 1 && v <= 8 ? (int)v : 1;
    }
    return 1;
}

static int exif_orientation(jpeg_saved_marker_ptr m) {
    for (; m; m = m->next)
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 && !memcmp(m->data, "Exif\0\0", 6))
            return tiff_orientation(m->data + 6, m->data_length - 6);
    return 1;
}

static int jpeg_decode_into(jpeg_reader *r, const uint8_t *buf, size_t n) {
    j_decompress_ptr ci = &r->cinfo;
    if (setjmp(r->jmp))
        return -1;
    jpeg_create_decompress(ci);
    ci->progress = &r->progress;
    jpeg_mem_src(ci, buf, (unsigned long)n);
    jpeg_save_markers(ci, JPEG_APP0 + 1, 0xffff);
    jpeg_read_header(ci, TRUE);
    if ((int64_t)ci->image_width * ci->image_height > r->max_pixels)
        return dc_fail("%s: JPEG of %ux%u pixels, more than the %lld allowed", r->what, ci->image_width,
                       ci->image_height, (long long)r->max_pixels);
    r->orientation = exif_orientation(ci->marker_list); /* before finish_decompress frees the markers */
    J_COLOR_SPACE in = ci->jpeg_color_space;
    ci->out_color_space = in == JCS_GRAYSCALE ? JCS_GRAYSCALE : in == JCS_CMYK || in == JCS_YCCK ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(ci);
    int w = (int)ci->output_width, h = (int)ci->output_height, comps = ci->output_components;
    uint8_t *dst;
    if (r->orientation == 1 && comps != 4) { /* the common case: straight into the image */
        if (dc_image_alloc(r->img, w, h, comps))
            return fail_named(r->what);
        dst = r->img->px;
    } else if (!(dst = r->samples = malloc((size_t)w * h * comps))) {
        return dc_fail("%s: out of memory for a %dx%d JPEG", r->what, w, h);
    }
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW row = dst + (size_t)ci->output_scanline * w * comps;
        if (jpeg_read_scanlines(ci, &row, 1) != 1)
            return dc_fail("%s: bad JPEG file: no data for row %u", r->what, ci->output_scanline);
    }
    jpeg_finish_decompress(ci);
    return 0;
}

/* PIL's CMYK to RGB: (255 - k) - (255 - k) * c / 255 per channel, with its
 * rounding. Adobe files hold 255 - value. */
static void cmyk_to_rgb(uint8_t *out, const uint8_t *in, int inverted) {
    int nk = inverted ? in[3] : 255 - in[3];
    for (int i = 0; i < 3; i++) {
        int c = inverted ? 255 - in[i] : in[i], t = c * nk + 128;
        out[i] = (uint8_t)(nk - (((t >> 8) + t) >> 8));
    }
}

/* Where pixel (x, y) of the upright image comes from in a w x h source with
 * EXIF orientation o (2: mirrored, 3: rotated 180, 4: flipped, 5: transposed,
 * 6: needs 90 clockwise, 7: transversed, 8: needs 90 anticlockwise). */
static void orient_source(int o, int x, int y, int w, int h, int *sx, int *sy) {
    switch (o) {
    case 2: *sx = w - 1 - x, *sy = y; break;
    case 3: *sx = w - 1 - x, *sy = h - 1 - y; break;
    case 4: *sx = x, *sy = h - 1 - y; break;
    case 5: *sx = y, *sy = x; break;
    case 6: *sx = y, *sy = h - 1 - x; break;
    case 7: *sx = w - 1 - y, *sy = h - 1 - x; break;
    case 8: *sx = w - 1 - y, *sy = x; break;
    default: *sx = x, *sy = y;
    }
}

/* The image from the decoded samples: colours to gray or RGB, turned upright. */
static int jpeg_finish_image(jpeg_reader *r) {
    int w = (int)r->cinfo.output_width, h = (int)r->cinfo.output_height, comps = r->cinfo.output_components;
    int o = r->orientation, c = comps == 1 ? 1 : 3, inverted = r->cinfo.saw_Adobe_marker;
    if (dc_image_alloc(r->img, o >= 5 ? h : w, o >= 5 ? w : h, c))
        return fail_named(r->what);
    for (int y = 0; y < r->img->h; y++)
        for (int x = 0; x < r->img->w; x++) {
            int sx, sy;
            orient_source(o, x, y, w, h, &sx, &sy);
            const uint8_t *in = r->samples + ((size_t)sy * w + sx) * comps;
            uint8_t *out = r->img->px + ((size_t)y * r->img->w + x) * c;
            if (comps == 4)
                cmyk_to_rgb(out, in, inverted);
            else
                memcpy(out, in, c);
        }
    return 0;
}

static int decode_jpeg(dc_image *img, const uint8_t *buf, size_t n, const char *what, int64_t max_pixels) {
    jpeg_reader r = {.what = what, .max_pixels = max_pixels, .img = img};
    r.cinfo.err = jpeg_std_error(&r.err);
    r.err.error_exit = jpeg_on_error;
    r.err.emit_message = jpeg_on_message;
    r.progress.progress_monitor = jpeg_on_progress;
    r.cinfo.client_data = &r;
    int rc = jpeg_decode_into(&r, buf, n);
    if (!rc && r.samples)
        rc = jpeg_finish_image(&r);
    jpeg_destroy_decompress(&r.cinfo);
    free(r.samples);
    if (rc)
        dc_image_free(img);
    return rc;
}

/* ---- entry points ---- */

int dc_image_decode_limit(dc_image *img, const void *buf, size_t n, const char *what, int64_t max_pixels) {
    *img = (dc_image){0};
    what = what ? what : "image";
    if (n == 0)
        return dc_fail("%s: empty file", what);
    switch (dc_image_sniff(buf, n)) {
    case DC_IMAGE_PNG: return decode_png(img, buf, n, what, max_pixels);
    case DC_IMAGE_JPEG: return decode_jpeg(img, buf, n, what, max_pixels);
    default: return dc_fail("%s: not a PNG or JPEG file", what);
    }
}

int dc_image_decode(dc_image *img, const void *buf, size_t n, const char *what) {
    return dc_image_decode_limit(img, buf, n, what, DC_IMAGE_MAX_PIXELS);
}

/* Reads the whole regular file behind fd into a malloc'ed buffer. */
static uint8_t *read_fd(int fd, const char *path, size_t *n) {
    struct stat st;
    if (fstat(fd, &st) != 0) {
        dc_fail("%s: %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        dc_fail("%s: not a regular file", path);
        return NULL;
    }
    *n = (size_t)st.st_size;
    uint8_t *buf = malloc(*n ? *n : 1);
    if (!buf) {
        dc_fail("%s: out of memory for %zu bytes", path, *n);
        return NULL;
    }
    for (size_t got = 0; got < *n;) {
        ssize_t k = read(fd, buf + got, *n - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            dc_fail("%s: read failed: %s", path, k ? strerror(errno) : "the file shrank");
            free(buf);
            return NULL;
        }
        got += (size_t)k;
    }
    return buf;
}

int dc_image_load(dc_image *img, const char *path) {
    *img = (dc_image){0};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return dc_fail("%s: %s", path, strerror(errno));
    size_t n = 0;
    uint8_t *buf = read_fd(fd, path, &n);
    close(fd);
    if (!buf)
        return -1;
    int rc = dc_image_decode(img, buf, n, path);
    free(buf);
    return rc;
}

/* ---- PNG encoding ---- */

/* libpng writes through png_write_mem into a buffer that doubles as it grows. */
typedef struct {
    const char *what;
    png_structp png;
    png_infop info;
    uint8_t *buf;
    size_t n, cap;
} png_writer;

static void png_on_write_error(png_structp png, png_const_charp msg) {
    png_writer *wr = png_get_error_ptr(png);
    dc_fail("%s: cannot encode PNG: %s", wr->what, msg);
    png_longjmp(png, 1);
}

static void png_write_mem(png_structp png, png_bytep data, size_t len) {
    png_writer *wr = png_get_io_ptr(png);
    if (len > wr->cap - wr->n) {
        size_t cap = wr->cap ? wr->cap : 4096;
        while (cap - wr->n < len)
            cap *= 2;
        uint8_t *p = realloc(wr->buf, cap);
        if (!p)
            png_error(png, "out of memory");
        wr->buf = p, wr->cap = cap;
    }
    memcpy(wr->buf + wr->n, data, len);
    wr->n += len;
}

static void png_flush_mem(png_structp png) {}

static bool ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return false;
    return true;
}

/* The text chunks before the pixels: tEXt when the value is ASCII (what
 * every viewer shows), else iTXt, PNG's UTF-8 text chunk. */
static void png_add_text(png_writer *wr, const dc_image_text *text, int n) {
    for (int i = 0; i < n; i++) {
        png_text t = {.key = (char *)text[i].key, .text = (char *)text[i].value};
        t.compression = ascii(t.text) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
        png_set_text(wr->png, wr->info, &t, 1);
    }
}

static int png_encode_into(png_writer *wr, const dc_image *img, const dc_image_text *text, int n) {
    if (setjmp(png_jmpbuf(wr->png)))
        return -1;
    png_set_write_fn(wr->png, wr, png_write_mem, png_flush_mem);
    png_set_IHDR(wr->png, wr->info, (png_uint_32)img->w, (png_uint_32)img->h, 8,
                 img->c == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_add_text(wr, text, n);
    png_write_info(wr->png, wr->info);
    for (int y = 0; y < img->h; y++)
        png_write_row(wr->png, img->px + (size_t)y * img->w * img->c);
    png_write_end(wr->png, NULL);
    return 0;
}

/* The PNG bytes of img with n_text text chunks; `what` names it in errors. */
static int encode_png(const dc_image *img, const dc_image_text *text, int n_text, const char *what,
                      uint8_t **out, size_t *n) {
    *out = NULL, *n = 0;
    if (!img->px || img->w < 1 || img->h < 1 || (img->c != 1 && img->c != 3))
        return dc_fail("%s: cannot encode an empty or malformed image (%dx%dx%d)", what, img->w, img->h,
                       img->c);
    for (int i = 0; i < n_text; i++) {
        size_t len = strlen(text[i].key);
        if (len < 1 || len > 79)
            return dc_fail("%s: a PNG text key has 1 to 79 characters, not %zu ('%.20s')", what, len,
                           text[i].key);
    }
    png_writer wr = {.what = what};
    wr.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &wr, png_on_write_error, png_on_warning);
    wr.info = wr.png ? png_create_info_struct(wr.png) : NULL;
    int rc = wr.info ? png_encode_into(&wr, img, text, n_text) : dc_fail("%s: out of memory for the PNG encoder", what);
    png_destroy_write_struct(&wr.png, &wr.info);
    if (rc) {
        free(wr.buf);
        return rc;
    }
    *out = wr.buf, *n = wr.n;
    return 0;
}

int dc_image_encode_png(const dc_image *img, uint8_t **out, size_t *n) {
    return encode_png(img, NULL, 0, "PNG image", out, n);
}

/* Written to "<path>.tmp" and renamed, so `path` never holds half an image.
 * Not fsynced: an image is cheap to make again, and samples come by the
 * thousand. */
int dc_image_save_png_text(const dc_image *img, const char *path, const dc_image_text *text,
                           int n_text) {
    uint8_t *png;
    size_t n;
    if (encode_png(img, text, n_text, path, &png, &n))
        return -1;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    FILE *fp = NULL;
    int rc = 0;
    if (!tmp)
        rc = dc_fail("%s: out of memory", path);
    else if (memcpy(tmp, path, plen), memcpy(tmp + plen, ".tmp", 5), !(fp = fopen(tmp, "wb")))
        rc = dc_fail("%s: cannot create %s: %s", path, tmp, strerror(errno));
    if (fp) {
        bool ok = fwrite(png, 1, n, fp) == n;
        int err = ok ? 0 : errno;
        if (fclose(fp) != 0 && ok)
            ok = false, err = errno;
        if (!ok)
            rc = dc_fail("%s: cannot write %s: %s", path, tmp, strerror(err ? err : EIO));
        if (!rc && rename(tmp, path) != 0)
            rc = dc_fail("%s: cannot rename %s: %s", path, tmp, strerror(errno));
        if (rc)
            unlink(tmp);
    }
    free(tmp);
    free(png);
    return rc;
}

int dc_image_save_png(const dc_image *img, const char *path) {
    return dc_image_save_png_text(img, path, NULL, 0);
}
