/* libFuzzer target for the CLIP BPE tokenizer. The input is up to five
 * parts cut at the bytes "\0\1": vocab.json, merges.txt, tokenizer.json,
 * tokenizer_config.json (an empty part: that file is absent) and a text.
 * Whatever they hold, loading refuses them with a message or gives a
 * tokenizer whose encode of the text (plain and padded to a few lengths)
 * gives ids below its size that decode (with and without special tokens)
 * without fault. The whole input, as text, also goes through a fixed small
 * tokenizer (bytes missing from its vocab, merges, added tokens of each
 * kind): any bytes, invalid UTF-8 included, encode and decode. */
#define _GNU_SOURCE /* memmem */
#include "autograd/error.h"
#include "data/text/bpe.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char FIXED_VOCAB[] = "{\"!\": 0, \"a\": 1, \"b\": 2, \"c\": 3, \"a</w>\": 4, \"b</w>\": 5, \"c</w>\": 6, "
                                  "\"ab\": 7, \"ab</w>\": 8, \"abc</w>\": 9, \"\xc3\x83\": 10, \"\xc2\xa9</w>\": 11, "
                                  "\"\xc3\x83\xc2\xa9</w>\": 12, \"'\": 13, \"s</w>\": 14, \"'s</w>\": 15, "
                                  "\"<|startoftext|>\": 16, \"<|endoftext|>\": 17, \"!</w>\": 18}";
static const char FIXED_MERGES[] = "#version: 0.2\na b\na b</w>\nab c</w>\n\xc3\x83 \xc2\xa9</w>\n' s</w>\n";
static const char FIXED_CONFIG[] = "{\"model_max_length\": 8, \"pad_token\": \"!\", \"added_tokens_decoder\": {"
                                   "\"0\": {\"content\": \"!\", \"special\": true}, "
                                   "\"16\": {\"content\": \"<|startoftext|>\", \"special\": true, \"normalized\": true}, "
                                   "\"19\": {\"content\": \"AB\", \"single_word\": true, \"normalized\": false}, "
                                   "\"20\": {\"content\": \"zz\", \"normalized\": true}}}";

/* Encode `text` plain and padded, and decode the ids both ways; traps on an
 * id out of range or a padded encode that fails. */
static void round_trip(const dc_bpe *t, const char *text) {
    int32_t *ids, padded[8];
    int64_t n, n_real;
    const dc_bpe_info *info = dc_bpe_get_info(t);
    for (int64_t len = 2; len <= 8; len += 3)
        if (dc_bpe_encode_padded(t, text, len, padded, &n_real) != 0 || n_real > len || n_real < 2)
            __builtin_trap();
    if (dc_bpe_encode(t, text, true, &ids, &n) != 0)
        return;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= info->size)
            __builtin_trap();
    for (int skip = 0; skip < 2; skip++) {
        char *back;
        if (dc_bpe_decode(t, ids, n, skip, &back) == 0)
            free(back);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static dc_bpe *fixed;
    if (!fixed) {
        dc_bpe_files f = {.vocab_json = FIXED_VOCAB, .vocab_json_n = sizeof FIXED_VOCAB - 1,
                          .merges_txt = FIXED_MERGES, .merges_txt_n = sizeof FIXED_MERGES - 1,
                          .tokenizer_config = FIXED_CONFIG, .tokenizer_config_n = sizeof FIXED_CONFIG - 1};
        if (dc_bpe_load_files(&fixed, &f, "fixed") != 0)
            __builtin_trap();
    }
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    round_trip(fixed, copy);

    const char *part[5] = {0};
    size_t len[5] = {0};
    const char *p = copy, *end = copy + size;
    for (int i = 0; i < 5 && p <= end; i++) {
        const char *cut = i < 4 ? memmem(p, (size_t)(end - p), "\0\1", 2) : NULL;
        part[i] = p;
        len[i] = cut ? (size_t)(cut - p) : (size_t)(end - p);
        p += len[i] + 2;
    }
    /* the parts are NUL-terminated where they are cut, as files read are */
    for (int i = 0; i < 4; i++)
        if (part[i] && part[i] + len[i] < end)
            ((char *)part[i])[len[i]] = '\0';
    dc_bpe_files f = {.vocab_json = len[0] ? part[0] : NULL, .vocab_json_n = len[0],
                      .merges_txt = len[1] ? part[1] : NULL, .merges_txt_n = len[1],
                      .tokenizer_json = len[2] ? part[2] : NULL, .tokenizer_json_n = len[2],
                      .tokenizer_config = len[3] ? part[3] : NULL, .tokenizer_config_n = len[3]};
    dc_bpe *t;
    dc_clear_error();
    if (dc_bpe_load_files(&t, &f, "fuzz") == 0) {
        round_trip(t, part[4] ? part[4] : "");
        dc_bpe_free(t);
    } else if (!dc_error()[0]) {
        __builtin_trap();
    }
    free(copy);
    return 0;
}
