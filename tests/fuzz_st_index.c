/* libFuzzer target for the sharded-weights index parser: whatever the bytes,
 * dc_st_index_parse either refuses them with a message or returns sorted,
 * distinct tensor names, each mapped to one of at most DC_ST_MAX_SHARDS plain
 * .safetensors file names (no folder part, so no path leaves the index's
 * folder), and free releases all. */
#include "autograd/safetensors.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    dc_st_index ix;
    if (dc_st_index_parse(&ix, (const char *)data, size, "<fuzz>") == 0) {
        if (ix.n < 1 || ix.n_files < 1 || ix.n_files > DC_ST_MAX_SHARDS)
            __builtin_trap();
        for (int i = 0; i < ix.n; i++)
            if ((i && strcmp(ix.names[i - 1], ix.names[i]) >= 0) || ix.shard[i] < 0 ||
                ix.shard[i] >= ix.n_files)
                __builtin_trap();
        for (int j = 0; j < ix.n_files; j++)
            if (strchr(ix.files[j], '/') || strchr(ix.files[j], '\\') ||
                strlen(ix.files[j]) < strlen(".safetensors"))
                __builtin_trap();
    }
    dc_st_index_free(&ix);
    return 0;
}
