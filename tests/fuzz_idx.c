/* libFuzzer target for the IDX reader: whatever the bytes (plain or gzip),
 * dc_idx_decode either refuses them with a message or returns dimensions
 * whose product is exactly the data size, every byte of which is readable
 * (ASan checks that as we sum them), and free releases everything. */
#include "data/source.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dc_idx idx;
    if (dc_idx_decode(&idx, data, size, "<fuzz>") == 0) {
        uint64_t want = 1;
        for (int i = 0; i < idx.ndim; i++)
            want *= idx.dims[i];
        if (want != idx.size || (idx.ndim != 1 && idx.ndim != 3))
            __builtin_trap();
        volatile unsigned sum = 0;
        for (size_t i = 0; i < idx.size; i++)
            sum += idx.data[i];
        (void)sum;
    }
    dc_idx_free(&idx);
    return 0;
}
