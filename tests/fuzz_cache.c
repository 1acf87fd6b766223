/* libFuzzer target for the dataset cache validator: whatever the bytes,
 * dc_cache_parse either refuses them with a message or fills a dataset whose
 * every pixel, label and string lies inside the input (ASan checks that as
 * we read them all), with labels in range.
 *
 * Random bytes almost never carry the right CRC-32s, which would keep the
 * fuzzer at the checksum checks, so each input is parsed twice: as it is,
 * and with both checksums set to match (the tables' where the header's
 * sizes put the tables inside the input). */
#include "data/source.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void put_le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> 8 * i);
}

/* Set the tables' checksum (at 84; they start at the 8-aligned end of the
 * pixels) and then the header's (the header's last 4 bytes). */
static void fix_checksums(uint8_t *b, size_t n) {
    uint64_t count = le(b + 16, 8), hwc = le(b + 24, 4) * le(b + 28, 4) * le(b + 32, 4), px, labels;
    if (!__builtin_mul_overflow(count, hwc, &px) && px < n &&
        (labels = (DC_CACHE_HEADER + px + 7) & ~7ull) < n)
        put_le32(b + 84, (uint32_t)crc32(0, b + labels, (uInt)(n - labels)));
    put_le32(b + DC_CACHE_HEADER - 4, (uint32_t)crc32(0, b, DC_CACHE_HEADER - 4));
}

static void parse(const uint8_t *b, size_t n) {
    dc_dataset ds;
    dc_cache_info info;
    if (dc_cache_parse(&ds, &info, b, n, "<fuzz>") != 0)
        return;
    volatile unsigned sum = 0;
    size_t pixels = (size_t)ds.count * ds.h * ds.w * ds.c;
    for (size_t i = 0; i < pixels; i++)
        sum += ds.pixels[i];
    for (int64_t i = 0; i < ds.count; i++) {
        int32_t l = ds.labels[i];
        if (ds.num_classes ? l < 0 || l >= ds.num_classes : l != -1)
            __builtin_trap();
        if (ds.captions)
            sum += (unsigned)strlen(ds.captions[i]);
    }
    for (int i = 0; i < ds.num_classes; i++)
        sum += (unsigned)strlen(ds.class_names[i]);
    for (int i = 0; i < ds.n_skipped; i++)
        sum += (unsigned)(strlen(ds.skipped[i].path) + strlen(ds.skipped[i].reason));
    dc_cache_verify_pixels(&ds, &info, "<fuzz>");
    (void)sum;
    dc_dataset_close(&ds); /* frees the tables; ds.map is NULL, nothing is unmapped */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *b = malloc(size + 1); /* 8-aligned, as a mapped file is */
    if (!b)
        return 0;
    memcpy(b, data, size);
    parse(b, size);
    if (size >= DC_CACHE_HEADER) {
        fix_checksums(b, size);
        parse(b, size);
    }
    free(b);
    return 0;
}
