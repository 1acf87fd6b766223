/* libFuzzer target for the image decoders: whatever the bytes, dc_image_decode
 * either refuses them with a message or returns a whole image (ASan checks
 * every byte as we sum it), which then survives a resize to 17x13 and a
 * channel conversion. The pixel limit is lowered so that a header claiming a
 * huge image cannot reach libFuzzer's memory limit. */
#include "data/image.h"

#include "autograd/error.h"

#include <stddef.h>
#include <stdint.h>

#define FUZZ_MAX_PIXELS ((int64_t)1 << 18)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void touch(const dc_image *img) {
    volatile unsigned sum = 0;
    for (size_t i = 0; i < (size_t)img->w * img->h * img->c; i++)
        sum += img->px[i];
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dc_image img, small, other;
    if (dc_image_decode_limit(&img, data, size, "fuzz", FUZZ_MAX_PIXELS) != 0) {
        if (img.px || !dc_error()[0])
            __builtin_trap();
        return 0;
    }
    if (img.w < 1 || img.h < 1 || (img.c != 1 && img.c != 3))
        __builtin_trap();
    touch(&img);
    if (dc_image_resize(&small, &img, 17, 13) != 0)
        __builtin_trap();
    touch(&small);
    if (dc_image_convert(&other, &small, 4 - small.c) != 0)
        __builtin_trap();
    touch(&other);
    dc_image_free(&other);
    dc_image_free(&small);
    dc_image_free(&img);
    return 0;
}
