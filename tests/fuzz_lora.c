/* libFuzzer target for the LoRA reader (models/lora.c): whatever the bytes,
 * dc_lora_fuse either fuses them into a small model (a UNet attention
 * projection and a conv, a text encoder projection, declared here) or refuses
 * them with a one-line message and leaves every weight as it was. The input
 * reaches the reader as a file, through a memfd. */
#define _GNU_SOURCE /* memfd_create */
#include "autograd/error.h"
#include "models/lora.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static dc_params unet, text;

static void declare(void) {
    dc_params_init(&unet);
    dc_params_init(&text);
    dc_params_add(&unet, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", "weight", DC_SHAPE(8, 8),
                  DC_LAYOUT_LINEAR, DC_INIT_UNIFORM, 1);
    dc_params_add(&unet, "conv_in", "weight", DC_SHAPE(8, 3, 3, 4), DC_LAYOUT_CONV, DC_INIT_UNIFORM, 1);
    dc_params_add(&text, "text_model.encoder.layers.0.self_attn.q_proj", "weight", DC_SHAPE(4, 4),
                  DC_LAYOUT_LINEAR, DC_INIT_UNIFORM, 1);
    if (dc_params_alloc(&unet, 1) || dc_params_alloc(&text, 2))
        __builtin_trap();
}

static float sum(const dc_params *ps) {
    float s = 0;
    for (size_t k = 0; k < ps->total; k++)
        s += ps->data[k] * (float)(k + 1);
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!unet.data)
        declare();
    int fd = memfd_create("lora", 0);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size)
        __builtin_trap();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    float before[2] = {sum(&unet), sum(&text)};
    if (dc_lora_fuse(path, 0.5f, &unet, &text, NULL)) {
        if (strchr(dc_error(), '\n') || !dc_error()[0])
            __builtin_trap();
        float after[2] = {sum(&unet), sum(&text)};
        if (memcmp(before, after, sizeof before))
            __builtin_trap(); /* a refused file changed a weight */
    }
    close(fd);
    return 0;
}
