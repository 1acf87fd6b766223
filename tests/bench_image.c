/*
 * Benchmark: decode + resize throughput of data/image on one thread, the work
 * a dataset cache build does per file. Each case encodes one synthetic photo
 * (smooth shapes plus sensor-like noise) as PNG or JPEG (quality 90, 4:2:0),
 * then decodes and resizes it in a loop for about a second. One line per case:
 *
 *   bench_image case=jpeg_256x256_resize_64 images_per_s=... ms_per_image=... bytes=...
 *
 * Usage: bench_image [seconds per case]
 */
#include "data/image.h"

#include "autograd/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jpeglib.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "bench_image: %s: %s\n", what, dc_error());
    exit(1);
}

/* Smooth colour blobs and a little noise: compresses like a photo, not like
 * a flat test card or white noise. */
static dc_image photo(int w, int h) {
    dc_image img;
    if (dc_image_alloc(&img, w, h, 3))
        die("alloc");
    uint32_t s = 12345;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < 3; k++) {
                double v = 128 + 60 * sin(x * (0.03 + 0.01 * k) + y * 0.02) + 50 * cos(hypot(x - w / 3, y - h / 2) * 0.05);
                s = s * 1664525u + 1013904223u;
                v += (int)(s >> 29) - 4;
                img.px[((size_t)y * w + x) * 3 + k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
    return img;
}

static unsigned char *encode_jpeg(const dc_image *img, size_t *n) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    unsigned char *out = NULL;
    unsigned long size = 0;
    jpeg_mem_dest(&c, &out, &size);
    c.image_width = (JDIMENSION)img->w, c.image_height = (JDIMENSION)img->h;
    c.input_components = 3, c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = img->px + (size_t)c.next_scanline * img->w * 3;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *n = size;
    return out;
}

static unsigned char *encode_png(const dc_image *img, size_t *n) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/bench_image_%d.png", (int)getpid());
    if (dc_image_save_png(img, path))
        die("save");
    FILE *fp = fopen(path, "rb");
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc(*n);
    if (fread(buf, 1, *n, fp) != *n)
        die("read back");
    fclose(fp);
    remove(path);
    return buf;
}

/* Decode + (resize to size x size, or shorter side + centre crop) until
 * `seconds` have passed. */
static void run(const char *name, const unsigned char *buf, size_t n, int size, int crop, double seconds) {
    int iters = 0;
    double t0 = now(), t;
    do {
        dc_image img, out;
        if (dc_image_decode(&img, buf, n, name))
            die(name);
        int rc = crop ? dc_image_resize_center_crop(&out, &img, size) : dc_image_resize(&out, &img, size, size);
        if (rc)
            die(name);
        dc_image_free(&out);
        dc_image_free(&img);
        iters++;
    } while ((t = now() - t0) < seconds);
    printf("bench_image case=%s images_per_s=%.1f ms_per_image=%.3f bytes=%zu\n", name, iters / t, 1e3 * t / iters,
           n);
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    static const struct {
        int w, h, size, crop;
    } cases[] = {{256, 256, 64, 0}, {512, 384, 64, 1}, {1024, 768, 256, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dc_image src = photo(cases[i].w, cases[i].h);
        for (int png = 0; png < 2; png++) {
            size_t n;
            unsigned char *buf = png ? encode_png(&src, &n) : encode_jpeg(&src, &n);
            char name[96];
            snprintf(name, sizeof name, "%s_%dx%d_%s_%d", png ? "png" : "jpeg", cases[i].w, cases[i].h,
                     cases[i].crop ? "resize_crop" : "resize", cases[i].size);
            run(name, buf, n, cases[i].size, cases[i].crop, seconds);
            free(buf);
        }
        dc_image_free(&src);
    }
    return 0;
}
