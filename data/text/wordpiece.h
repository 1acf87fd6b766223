/*
 * BERT's WordPiece tokenizer, as transformers' BertTokenizer runs it (BLIP's
 * text side, Salesforce/blip-image-captioning-*): the files of a
 * transformers model folder in, token ids out and back.
 *
 * Encode: added tokens ([CLS], [SEP], BLIP's [DEC], ...) are split out of
 * the raw text first; the rest is normalised (control characters dropped,
 * whitespace made ' ', spaces around CJK ideographs, NFD with nonspacing
 * marks dropped, lower-cased: each as the config says), split at whitespace
 * and around punctuation, and each word becomes the longest vocabulary
 * pieces from its start ("##" before a piece inside a word), or [UNK] when
 * a piece is missing or the word is over 100 characters.
 *
 * Decode: ids to tokens (special ones skipped on request), "##" pieces
 * joined to the piece before, others after a space, then the clean-up of
 * spaces before punctuation that transformers does (" ." -> ".").
 *
 * Any bytes are accepted as text: invalid UTF-8 reads as U+FFFD, which the
 * normaliser drops. A missing or malformed file is one dc_fail() message.
 */
#ifndef DC_DATA_TEXT_WORDPIECE_H
#define DC_DATA_TEXT_WORDPIECE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dc_wordpiece dc_wordpiece;

/* What a loaded tokenizer knows besides its tokens. */
typedef struct dc_wordpiece_info {
    int64_t size; /* len(tokenizer): ids are below it (vocab plus added tokens) */
    /* ids of the named special tokens, -1 where the config names none
     * (BLIP: bos is [DEC], eos unset) */
    int32_t bos, eos, unk, sep, pad, cls, mask;
    int64_t model_max_length; /* 0 when the config gives none */
} dc_wordpiece_info;

/* The files of one folder, in memory: each NULL when absent. */
typedef struct dc_wordpiece_files {
    const char *vocab_txt, *tokenizer_json, *tokenizer_config, *special_tokens_map;
    size_t vocab_txt_n, tokenizer_json_n, tokenizer_config_n, special_tokens_map_n;
} dc_wordpiece_files;

/* Read DIR/tokenizer.json (its WordPiece vocab) or else DIR/vocab.txt, and
 * DIR/tokenizer_config.json and DIR/special_tokens_map.json when present. */
int dc_wordpiece_load(dc_wordpiece **out, const char *dir);
/* The same from files in memory; `where` names them in messages. */
int dc_wordpiece_load_files(dc_wordpiece **out, const dc_wordpiece_files *f, const char *where);
void dc_wordpiece_free(dc_wordpiece *t);

const dc_wordpiece_info *dc_wordpiece_get_info(const dc_wordpiece *t);
/* The id of a token (vocab or added), -1 when there is none. */
int32_t dc_wordpiece_token_id(const dc_wordpiece *t, const char *token);
/* The token of an id (NULL when out of range or unused); owned by t. */
const char *dc_wordpiece_token(const dc_wordpiece *t, int32_t id);

/* Token ids of `text` (NUL-terminated), with [CLS] first and [SEP] last when
 * add_special; *ids (malloc'ed, free() it; non-NULL even when *n is 0). */
int dc_wordpiece_encode(const dc_wordpiece *t, const char *text, bool add_special, int32_t **ids,
                        int64_t *n);
/* The text of n ids (malloc'ed, free() it). Ids out of range are left out,
 * as transformers leaves them out. */
int dc_wordpiece_decode(const dc_wordpiece *t, const int32_t *ids, int64_t n, bool skip_special,
                        char **text);

#endif
