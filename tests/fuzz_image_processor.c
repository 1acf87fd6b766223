/* libFuzzer target for preprocessor_config.json (data/image_processor):
 * whatever the bytes, they are refused with a message, or they give a
 * processor that turns an image (its size and pixels from the input too)
 * into finite pixels of the configured size, or refuses the image. */
#include "data/image_processor.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OUT 256 /* the largest output side tried: bounded memory and time */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A w x h x c image from the first bytes of the input (zeros past its end). */
static dc_image image_from(const uint8_t *data, size_t size) {
    dc_image img = {0};
    int w = size > 0 ? 1 + data[0] % 40 : 1, h = size > 1 ? 1 + data[1] % 40 : 1;
    int c = size > 2 && data[2] % 2 ? 3 : 1;
    if (dc_image_alloc(&img, w, h, c))
        return img;
    for (size_t i = 0; i < (size_t)w * h * c; i++)
        img.px[i] = i + 3 < size ? data[i + 3] : 0;
    return img;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    dc_image_processor p;
    if (dc_image_processor_parse(&p, text, "fuzz.json") == 0 && p.width <= MAX_OUT && p.height <= MAX_OUT) {
        dc_image img = image_from(data, size);
        size_t n = (size_t)p.width * p.height * 3;
        float *out = malloc(n * sizeof *out);
        if (img.px && out && dc_image_processor_apply(&p, &img, out, "fuzz.png") == 0)
            for (size_t i = 0; i < n; i++)
                if (!isfinite(out[i]))
                    __builtin_trap();
        free(out);
        dc_image_free(&img);
    }
    free(text);
    return 0;
}
