/* libFuzzer target for the safetensors reader: whatever the bytes, dc_st_parse
 * either refuses them with a message or returns tensors whose every byte lies
 * inside the input (ASan checks that as we sum them), and close frees all. */
#include "autograd/safetensors.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dc_st_file f;
    if (dc_st_parse(&f, data, size) == 0) {
        volatile unsigned sum = 0;
        for (int i = 0; i < f.n; i++) {
            const dc_st_tensor *t = &f.tensors[i];
            for (size_t j = 0; j < t->nbytes; j++)
                sum += ((const uint8_t *)t->data)[j];
            if (dc_st_find(&f, t->name) == NULL)
                __builtin_trap();
        }
        for (int i = 0; i < f.n_meta; i++)
            if (dc_st_meta(&f, f.meta_keys[i]) == NULL)
                __builtin_trap();
        (void)sum;
    }
    dc_st_close(&f);
    return 0;
}
