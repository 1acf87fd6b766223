/* libFuzzer target for the WordPiece tokenizer. The input is up to four
 * parts cut at the bytes "\0\1": vocab.txt, tokenizer.json,
 * tokenizer_config.json (an empty part: that file is absent) and a text.
 * Whatever they hold, loading refuses them with a message or gives a
 * tokenizer whose encode of the text gives ids below its size that decode
 * (with and without special tokens) without fault. The whole input, as
 * text, also goes through a fixed small tokenizer: any bytes, invalid
 * UTF-8 included, encode and decode. */
#define _GNU_SOURCE /* memmem */
#include "autograd/error.h"
#include "data/text/wordpiece.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char FIXED_VOCAB[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\nb\n##a\n##b\nab\n.\n,\n\xc3\xa9\n"
                                  "\xe6\x9d\xb1\n##\xcc\x81\n";
static const char FIXED_CONFIG[] = "{\"bos_token\": \"[DEC]\", \"clean_up_tokenization_spaces\": true, "
                                   "\"added_tokens_decoder\": {\"16\": {\"content\": \"ab\", \"single_word\": true, "
                                   "\"special\": false, \"normalized\": true}}}";

/* Encode `text` and decode the ids both ways; traps on an id out of range. */
static void round_trip(const dc_wordpiece *t, const char *text) {
    int32_t *ids;
    int64_t n;
    if (dc_wordpiece_encode(t, text, true, &ids, &n) != 0)
        return;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= dc_wordpiece_get_info(t)->size)
            __builtin_trap();
    for (int skip = 0; skip < 2; skip++) {
        char *back;
        if (dc_wordpiece_decode(t, ids, n, skip, &back) == 0)
            free(back);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static dc_wordpiece *fixed;
    if (!fixed) {
        dc_wordpiece_files f = {.vocab_txt = FIXED_VOCAB, .vocab_txt_n = sizeof FIXED_VOCAB - 1,
                                .tokenizer_config = FIXED_CONFIG, .tokenizer_config_n = sizeof FIXED_CONFIG - 1};
        if (dc_wordpiece_load_files(&fixed, &f, "fixed") != 0)
            __builtin_trap();
    }
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    round_trip(fixed, copy);

    const char *part[4] = {0};
    size_t len[4] = {0};
    const char *p = copy, *end = copy + size;
    for (int i = 0; i < 4 && p <= end; i++) {
        const char *cut = i < 3 ? memmem(p, (size_t)(end - p), "\0\1", 2) : NULL;
        part[i] = p;
        len[i] = cut ? (size_t)(cut - p) : (size_t)(end - p);
        p += len[i] + 2;
    }
    /* the parts are NUL-terminated where they are cut, as files read are */
    for (int i = 0; i < 3; i++)
        if (part[i] && part[i] + len[i] < end)
            ((char *)part[i])[len[i]] = '\0';
    dc_wordpiece_files f = {.vocab_txt = len[0] ? part[0] : NULL, .vocab_txt_n = len[0],
                            .tokenizer_json = len[1] ? part[1] : NULL, .tokenizer_json_n = len[1],
                            .tokenizer_config = len[2] ? part[2] : NULL, .tokenizer_config_n = len[2]};
    dc_wordpiece *t;
    dc_clear_error();
    if (dc_wordpiece_load_files(&t, &f, "fuzz") == 0) {
        round_trip(t, part[3] ? part[3] : "");
        dc_wordpiece_free(t);
    } else if (!dc_error()[0]) {
        __builtin_trap();
    }
    free(copy);
    return 0;
}
