/*
 * CLIP's byte-level BPE tokenizer, as transformers' CLIPTokenizer runs it
 * (Stable Diffusion's text side): the files of a diffusers pipeline's
 * tokenizer/ folder in, token ids out and back.
 *
 * Encode: added tokens (<|startoftext|>, <|endoftext|>, SD-2.x's "!") are
 * split out of the text first; the rest is normalised (NFC, each run of
 * whitespace one ' ', lower-cased), split by CLIP's pattern into words,
 * runs of letters, single digits and runs of other characters (whitespace
 * dropped), each piece's UTF-8 bytes become characters (GPT-2's
 * bytes_to_unicode), "</w>" marks the last, and merges.txt's merges join
 * them, lowest rank first. A character missing from the vocab is the unknown
 * token (<|endoftext|>).
 *
 * Decode: ids to tokens (special ones skipped on request), characters back
 * to bytes, read as UTF-8 (U+FFFD for what is not), "</w>" made ' ', and the
 * ends stripped of whitespace.
 *
 * Any bytes are accepted as text: invalid UTF-8 reads as U+FFFD (one per
 * byte). A missing or malformed file is one dc_fail() message.
 */
#ifndef DC_DATA_TEXT_BPE_H
#define DC_DATA_TEXT_BPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct dc_bpe dc_bpe;

/* What a loaded tokenizer knows besides its tokens. */
typedef struct dc_bpe_info {
    int64_t size;             /* len(tokenizer): ids are below it (vocab plus added tokens) */
    int32_t bos, eos, unk, pad; /* SD-1.x: 49406, 49407, 49407, 49407; SD-2.x pads with "!", 0 */
    int64_t model_max_length; /* 77 for SD; 0 when the config gives none */
} dc_bpe_info;

/* The files of one folder, in memory: each NULL when absent. */
typedef struct dc_bpe_files {
    const char *vocab_json, *merges_txt, *tokenizer_json, *tokenizer_config, *special_tokens_map;
    size_t vocab_json_n, merges_txt_n, tokenizer_json_n, tokenizer_config_n, special_tokens_map_n;
} dc_bpe_files;

/* Read DIR/tokenizer.json (its BPE vocab and merges) or else DIR/vocab.json
 * and DIR/merges.txt, and DIR/tokenizer_config.json and
 * DIR/special_tokens_map.json when present. DIR is a pipeline's tokenizer/. */
int dc_bpe_load(dc_bpe **out, const char *dir);
/* The same from files in memory; `where` names them in messages. */
int dc_bpe_load_files(dc_bpe **out, const dc_bpe_files *f, const char *where);
void dc_bpe_free(dc_bpe *t);

const dc_bpe_info *dc_bpe_get_info(const dc_bpe *t);
/* The id of a token (vocab or added), -1 when there is none. */
int32_t dc_bpe_token_id(const dc_bpe *t, const char *token);
/* The token of an id (NULL when out of range or unused); owned by t. */
const char *dc_bpe_token(const dc_bpe *t, int32_t id);

/* Token ids of `text` (NUL-terminated), with bos first and eos last when
 * add_special; *ids (malloc'ed, free() it; non-NULL even when *n is 0). */
int dc_bpe_encode(const dc_bpe *t, const char *text, bool add_special, int32_t **ids, int64_t *n);
/* What the Stable Diffusion pipelines feed the text encoder:
 * tokenizer(text, padding="max_length", max_length=max_length,
 * truncation=True): bos, the text's ids cut to max_length - 2, eos, then the
 * pad id up to max_length. ids: [max_length], max_length >= 2 (0: the
 * config's model_max_length, which must then be set). *n_real (may be NULL):
 * how many ids are not padding (the attention mask's ones). */
int dc_bpe_encode_padded(const dc_bpe *t, const char *text, int64_t max_length, int32_t *ids, int64_t *n_real);
/* The text of n ids (malloc'ed, free() it). Ids out of range are left out,
 * as transformers leaves them out. */
int dc_bpe_decode(const dc_bpe *t, const int32_t *ids, int64_t n, bool skip_special, char **text);

#endif
