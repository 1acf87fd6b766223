/*
 * What the tokenizers (wordpiece.c, bpe.c) share: growable byte and id
 * buffers, UTF-8 stepping and clean-up, the Unicode classes both Rust
 * `tokenizers` pipelines use, a string hash, reading a folder's optional
 * files and the JSON configs, added tokens ("<|endoftext|>", "[CLS]") as
 * the configs write them and as the Rust AddedVocabulary splits text at
 * them, and the vocab with its ids (dc_vocab): loading, lookup, and the
 * encode pipeline around each tokenizer's normaliser and word splitter.
 *
 * Functions that return int give 0, or -1 after dc_fail().
 */
#ifndef DC_DATA_TEXT_TEXTUTIL_H
#define DC_DATA_TEXT_TEXTUTIL_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Tokenizer files over this are refused before they are read. */
#define DC_TEXT_MAX_FILE_BYTES ((size_t)1 << 30)

/* Bytes, kept NUL-terminated after each add; {0} is empty. */
typedef struct dc_strbuf {
    char *p;
    size_t n, cap;
} dc_strbuf;

/* Token ids; {0} is empty. */
typedef struct dc_idbuf {
    int32_t *p;
    int64_t n, cap;
} dc_idbuf;

int dc_strbuf_add(dc_strbuf *b, const char *s, size_t n);
/* One code point as UTF-8. */
int dc_strbuf_add_char(dc_strbuf *b, int32_t c);
/* Each `from` replaced by `to`, left to right, as Python's str.replace does. */
int dc_strbuf_replace_all(dc_strbuf *b, const char *from, const char *to);
int dc_idbuf_add(dc_idbuf *b, int32_t id);

/* Next character of valid UTF-8 at s (n > 0 bytes); its length in bytes. */
size_t dc_utf8_next(const char *s, size_t n, int32_t *c);
/* Start of the character of valid UTF-8 that ends at byte `end` of s. */
size_t dc_utf8_prev(const char *s, size_t end);
/* Any bytes as valid UTF-8: each byte that starts no valid character
 * becomes U+FFFD (as Python's errors="replace" would, one per byte). */
int dc_utf8_sanitize(const char *s, size_t n, dc_strbuf *out);

/* The White_Space property: Rust's char::is_whitespace and the regex \s of
 * the Oniguruma patterns tokenizers runs. */
bool dc_unicode_is_whitespace(int32_t c);
/* c lower-cased as Rust's char::to_lowercase: the simple mapping, except
 * the one character whose full mapping is two (U+0130 -> i + U+0307). */
int dc_strbuf_add_lower(dc_strbuf *b, int32_t c);

/* FNV-1a over n bytes, continuing from h (DC_TEXT_HASH_SEED to start). */
#define DC_TEXT_HASH_SEED 0xCBF29CE484222325ull
uint64_t dc_text_hash(uint64_t h, const char *s, size_t n);

/* The files DIR/names[i] (i < n) that exist, into text[i] (malloc'ed; NULL
 * and len[i] 0 where absent); -1 when DIR is no folder or one that exists
 * cannot be read. The caller frees text[] either way. */
int dc_text_read_folder(const char *dir, int n, const char *const names[], char *text[], size_t len[]);

/* The JSON files every tokenizer folder may have, parsed: NULL where absent. */
typedef struct dc_text_configs {
    cJSON *tok; /* tokenizer.json */
    cJSON *cfg; /* tokenizer_config.json (an object) */
    cJSON *map; /* special_tokens_map.json, read only when cfg has no added_tokens_decoder */
    char tok_name[512], cfg_name[512], map_name[512]; /* WHERE/file, for messages */
} dc_text_configs;

/* tokenizer.json and tokenizer_config.json (each NULL when absent) of the
 * folder `where`. dc_text_configs_free() it either way. */
int dc_text_configs_parse(dc_text_configs *j, const char *where, const char *tok, size_t tok_n, const char *cfg,
                          size_t cfg_n);
void dc_text_configs_free(dc_text_configs *j);

/* An added token of a tokenizer: split out of the text before the model
 * sees it, matched on the raw text or (normalized) on the normalised text. */
typedef struct dc_added_token {
    char *content;
    char *pattern; /* what is matched: content, or content normalised */
    int32_t id;
    bool special, normalized, single_word;
} dc_added_token;

/* A token as the configs write one: "<x>" or {"content": "<x>", flags...}
 * (special forced when force_special; normalized defaults to !special, as
 * AddedToken's does). a->content is malloc'ed; pattern is left NULL. */
int dc_added_parse(const cJSON *v, bool force_special, const char *where, dc_added_token *a);

/* The named special tokens, in the order transformers adds them. */
enum { DC_BOS, DC_EOS, DC_UNK, DC_SEP, DC_PAD, DC_CLS, DC_MASK, DC_N_NAMED };

/* What the configs say about added tokens, before ids are given. */
typedef struct dc_added_config {
    const cJSON *named[DC_N_NAMED];   /* bos_token ... mask_token as written; NULL: unset */
    const char *defaults[DC_N_NAMED]; /* the tokenizer class's default of each (NULL: none) */
    const cJSON *extra;               /* extra_special_tokens (or additional_...): a list, or NULL */
    const cJSON *decoder;             /* added_tokens_decoder, or tokenizer.json's added_tokens */
    bool decoder_is_list;             /* the latter */
} dc_added_config;

/* The named and extra special tokens of one config object (NULL: none);
 * what it names replaces what an earlier one named. */
void dc_added_read_named(dc_added_config *c, const cJSON *obj);
/* The content of named token i (written or default), NULL when none. */
const char *dc_added_named_content(const dc_added_config *c, int i);

/* Is a token (content) in the model's vocab: its id, or -1. */
typedef int32_t (*dc_vocab_find_fn)(const void *ctx, const char *token);

/* The added tokens as transformers 5 adds them to the Rust AddedVocabulary:
 * the decoder's entries by declared id (the ids only order them; of two
 * with one id, the later), then the named special tokens (one the decoder
 * holds stays as the decoder has it), then the extra ones. Each gets the
 * vocab's id when the vocab has it, else the next id after the vocab's
 * n_vocab; one added again keeps its id and takes the newer flags. Named
 * and extra ones are special. *added (malloc'ed; dc_added_free) gets *n. */
int dc_added_build(const dc_added_config *c, int64_t n_vocab, dc_vocab_find_fn find, const void *ctx,
                   const char *where, dc_added_token **added, int *n);
const dc_added_token *dc_added_find(const dc_added_token *added, int n, const char *content);
void dc_added_free(dc_added_token *added, int n);

/* The added-token configs: tokenizer_config.json's added_tokens_decoder,
 * or, for folders saved without one, special_tokens_map.json (map text,
 * NULL when absent; parsed into j->map) and tokenizer.json's added_tokens.
 * defaults: the tokenizer class's named tokens. */
int dc_added_read_configs(dc_added_config *c, dc_text_configs *j, const char *const defaults[DC_N_NAMED],
                          const char *map, size_t map_n);

/* What the text between added tokens goes to. */
typedef int (*dc_added_rest_fn)(const void *ctx, const char *s, size_t n, dc_idbuf *ids);

/* Split s at the added tokens of one kind (normalized or not): leftmost,
 * then longest, as tokenizers' Aho-Corasick matches, single_word as there.
 * Their ids go to ids, the text between them to `rest`. lstrip/rstrip are
 * not read: the whitespace they would take from the neighbouring text is
 * dropped by both tokenizers' pre-tokenizers anyway, so they change no id. */
int dc_added_split(const dc_added_token *added, int n_added, bool normalized, const char *s, size_t n,
                   dc_added_rest_fn rest, const void *ctx, dc_idbuf *ids);

/* A tokenizer's ids: its model's vocab (id = index), the added tokens, and
 * what each id decodes to; {0} is empty. Both tokenizers embed one. */
typedef struct dc_vocab {
    char **vocab; /* [n_vocab] the model's tokens, id = index */
    int64_t n_vocab;
    int32_t *table; /* open-addressing hash of vocab: ids, -1 empty */
    uint64_t table_mask;
    dc_added_token *added; /* in the order they were added */
    int n_added;
    int64_t size;        /* len(tokenizer): ids are below it (vocab plus added tokens) */
    const char **tokens; /* [size] what an id decodes to (NULL: nothing) */
    bool *special;       /* [size] skipped by skip_special_tokens */
} dc_vocab;

/* The vocab id of prefix + s[0..n), -1 when absent. */
int32_t dc_vocab_find(const dc_vocab *v, const char *prefix, const char *s, size_t n);
/* The id of a token (added or vocab), -1 when there is none. */
int32_t dc_vocab_token_id(const dc_vocab *v, const char *token);
/* The token of an id (NULL when out of range or unused). */
const char *dc_vocab_token(const dc_vocab *v, int32_t id);
/* The vocab from a {token: id} object with ids 0..N-1, each once. */
int dc_vocab_from_json(dc_vocab *v, const cJSON *vocab, const char *where);
/* Index the vocab; a token that appears twice is an error (an id would be lost). */
int dc_vocab_index(dc_vocab *v, const char *where);

/* A tokenizer's normaliser (ctx: the tokenizer). */
typedef int (*dc_normalize_fn)(const void *ctx, const char *s, size_t n, dc_strbuf *out);

/* After the vocab is indexed: the added tokens (dc_added_build; added_where
 * names the configs in its messages), each normalised one's pattern its
 * content normalised, what ids decode to, which are special, and named[i]
 * the id of named token i (-1 when none). */
int dc_vocab_finish(dc_vocab *v, const dc_added_config *c, dc_normalize_fn normalize, const void *ctx,
                    const char *added_where, const char *where, int32_t named[DC_N_NAMED]);
/* Token ids of `text` (any bytes, NUL-terminated): first and last around
 * them when add_special; added tokens split out of the text, the rest
 * normalised, split at the normalised added tokens, and what remains goes
 * to `words` (ctx: the tokenizer). *ids as dc_bpe_encode gives them. */
int dc_vocab_encode(const dc_vocab *v, const char *text, bool add_special, int32_t first, int32_t last,
                    dc_normalize_fn normalize, dc_added_rest_fn words, const void *ctx, int32_t **ids, int64_t *n);
void dc_vocab_free(dc_vocab *v);

#endif
