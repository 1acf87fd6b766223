/*
 * CLIP's byte-level BPE, matched to what transformers 5.25 runs for
 * CLIPTokenizer (CLIPTokenizerFast is the same class there; the Python
 * tokenizer with its ftfy / BasicTokenizer clean-up is gone): the Rust
 * `tokenizers` backend that CLIPTokenizer builds from the folder's vocab
 * and merges:
 *   - normaliser: NFC, regex \s+ -> " ", Lowercase (per character, Rust's
 *     char::to_lowercase); do_lower_case is not read (always lower case);
 *   - pre-tokenizer: Split on CLIP's pattern
 *     <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 *     keeping the matches, then ByteLevel (no prefix space, GPT-2's pattern);
 *     of the pieces above GPT-2's pattern only cuts the two special-token
 *     matches, into "<|", the letters, "|>";
 *   - model: BPE with end_of_word_suffix "</w>", no subword prefix, no
 *     dropout, unknown characters one unk each (fuse_unk false);
 *   - post-processor: bos text eos; decoder: ByteLevel, then "</w>" -> " "
 *     and strip(); no clean_up_tokenization.
 * Files: tokenizer.json's model.vocab and model.merges, else vocab.json
 * and merges.txt (a "#version" line skipped, then "a b" a line); the
 * special tokens and added tokens from tokenizer_config.json,
 * special_tokens_map.json and tokenizer.json's added_tokens as
 * transformers 5 reads them (see add_tokens).
 *
 * transformers 4's Python CLIPTokenizer without ftfy cleaned text with
 * BasicTokenizer instead (control characters dropped, CJK ideographs split
 * one by one, no NFC): prompts with those tokenize differently there.
 *
 * Unicode: \p{L}, \p{N}, White_Space, NFC and case mapping come from
 * libutf8proc (Unicode 15 in Debian 12's 2.8); tokenizers has them from
 * Oniguruma and Rust's std, of about the same Unicode version, so letters
 * assigned in the newest versions may differ.
 */
#include "bpe.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "textutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define EOW "</w>"
#define NO_MERGE UINT64_MAX
#define N_BYTE_CHARS 324 /* bytes_to_unicode's characters are below this */

/* One merge of merges.txt: the pair of ids it joins, its rank, the id of the result. */
typedef struct merge {
    uint64_t pair; /* left id << 32 | right id; NO_MERGE: empty slot */
    int32_t rank, id;
} merge;

struct dc_bpe {
    dc_bpe_info info;
    dc_vocab v;    /* the BPE model's tokens and the added ones */
    merge *merges; /* open-addressing hash of merges by pair */
    uint64_t merges_mask;
    int32_t byte_id[256], byte_eow_id[256]; /* the first symbols: a byte inside / at the end of a word */
    int16_t char_byte[N_BYTE_CHARS];        /* the byte each character stands for, -1: none */
};

/* ---- bytes as characters (GPT-2's bytes_to_unicode) ---- */

/* The character of byte b: itself for the printable ones, else 256, 257, ...
 * in byte order. */
static bool printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

static int32_t byte_char(int b) {
    if (printable(b))
        return b;
    int32_t n = 0;
    for (int x = 0; x < b; x++)
        n += !printable(x);
    return 256 + n;
}

/* ---- vocab and merges lookup ---- */

static int32_t vocab_find(const dc_bpe *t, const char *s, size_t n) { return dc_vocab_find(&t->v, "", s, n); }

/* The slot of a pair in the merges table: its own, or the empty one where it would go. */
static merge *merge_slot(const dc_bpe *t, int32_t a, int32_t b) {
    uint64_t pair = (uint64_t)a << 32 | (uint32_t)b, i = (pair * 0x9E3779B97F4A7C15ull >> 20) & t->merges_mask;
    while (t->merges[i].pair != pair && t->merges[i].pair != NO_MERGE)
        i = (i + 1) & t->merges_mask;
    return &t->merges[i];
}

static const merge *merge_find(const dc_bpe *t, int32_t a, int32_t b) {
    const merge *m = merge_slot(t, a, b);
    return m->pair == NO_MERGE ? NULL : m;
}

int32_t dc_bpe_token_id(const dc_bpe *t, const char *token) {
    return dc_vocab_token_id(&t->v, token);
}

const char *dc_bpe_token(const dc_bpe *t, int32_t id) {
    return dc_vocab_token(&t->v, id);
}

const dc_bpe_info *dc_bpe_get_info(const dc_bpe *t) { return &t->info; }

/* ---- normaliser ---- */

/* NFC, then each run of White_Space one ' ', then lower case. */
static int normalize(const void *ctx, const char *s, size_t n, dc_strbuf *out) {
    (void)ctx; /* CLIP's normaliser has no settings */
    uint8_t *nfc = NULL;
    if (n > 0) {
        utf8proc_ssize_t m = utf8proc_map((const uint8_t *)s, (utf8proc_ssize_t)n, &nfc,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (m < 0)
            return dc_fail("tokenizer: %s", utf8proc_errmsg(m));
        n = (size_t)m;
    }
    int rc = dc_strbuf_add(out, "", 0);
    bool in_space = false;
    for (size_t i = 0; i < n && rc == 0;) {
        int32_t c;
        i += dc_utf8_next((const char *)nfc + i, n - i, &c);
        bool space = dc_unicode_is_whitespace(c);
        if (!space)
            rc = dc_strbuf_add_lower(out, c);
        else if (!in_space)
            rc = dc_strbuf_add(out, " ", 1);
        in_space = space;
    }
    free(nfc);
    return rc;
}

/* ---- BPE on one word ---- */

/* A merge waiting in the heap: the symbol at pos with its right neighbour. */
typedef struct pending {
    int32_t rank, pos, id;
} pending;

/* A symbol of the word: its id and neighbours; len 0 once merged away. */
typedef struct symbol {
    int32_t id, prev, next, len;
} symbol;

static bool before(pending a, pending b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static void heap_push(pending *h, int64_t *n, pending x) {
    int64_t i = (*n)++;
    for (; i > 0 && before(x, h[(i - 1) / 2]); i = (i - 1) / 2)
        h[i] = h[(i - 1) / 2];
    h[i] = x;
}

static pending heap_pop(pending *h, int64_t *n) {
    pending top = h[0], x = h[--*n];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && before(h[c + 1], h[c]))
            c++;
        if (!before(h[c], x))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0)
        h[i] = x;
    return top;
}

/* Queue the merge of the symbol at pos with its right neighbour, if any. */
static void queue_pair(const dc_bpe *t, const symbol *sym, int32_t pos, pending *h, int64_t *n) {
    if (pos < 0 || sym[pos].next < 0)
        return;
    const merge *m = merge_find(t, sym[pos].id, sym[sym[pos].next].id);
    if (m)
        heap_push(h, n, (pending){m->rank, pos, m->id});
}

/* Merge lowest rank first (leftmost among equals), as tokenizers' Word::merge_all
 * does; a queued merge whose pair has changed is dropped unless the new pair
 * makes the same token, as there. */
static void merge_word(const dc_bpe *t, symbol *sym, int32_t n, pending *h) {
    int64_t nh = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        queue_pair(t, sym, i, h, &nh);
    while (nh > 0) {
        pending top = heap_pop(h, &nh);
        symbol *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0)
            continue;
        symbol *right = &sym[cur->next];
        const merge *m = merge_find(t, cur->id, right->id);
        if (!m || m->id != top.id)
            continue;
        cur->id = top.id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0)
            sym[cur->next].prev = top.pos;
        queue_pair(t, sym, cur->prev, h, &nh);
        queue_pair(t, sym, top.pos, h, &nh);
    }
}

/* The ids of one piece of text: a symbol per byte, then the merges. */
static int encode_word(const dc_bpe *t, const char *s, size_t n, dc_idbuf *ids) {
    if (n > INT32_MAX / 4)
        return dc_fail("tokenizer: a word of %zu bytes is too long", n);
    symbol *sym = malloc(n * sizeof *sym);
    pending *h = malloc(3 * n * sizeof *h); /* n - 1 pairs, then at most 2 more per merge */
    int rc = sym && h ? 0 : dc_fail("tokenizer: out of memory");
    for (size_t i = 0; i < n && rc == 0; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t id = i + 1 < n ? t->byte_id[b] : t->byte_eow_id[b];
        sym[i] = (symbol){id >= 0 ? id : t->info.unk, (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 1};
    }
    if (rc == 0)
        merge_word(t, sym, (int32_t)n, h);
    for (size_t i = 0; i < n && rc == 0; i++)
        if (sym[i].len > 0)
            rc = dc_idbuf_add(ids, sym[i].id);
    free(sym);
    free(h);
    return rc;
}

/* ---- pre-tokenizer ---- */

static bool is_letter(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static bool is_number(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

/* The kind of a character for CLIP's pattern: 0 whitespace, 1 letter, 2 number, 3 other. */
static int kind(int32_t c) { return dc_unicode_is_whitespace(c) ? 0 : is_letter(c) ? 1 : is_number(c) ? 2 : 3; }

/* Bytes of the run of characters of kind k at s. */
static size_t run(const char *s, size_t n, int k) {
    size_t i = 0;
    while (i < n) {
        int32_t c;
        size_t len = dc_utf8_next(s + i, n - i, &c);
        if (kind(c) != k)
            break;
        i += len;
    }
    return i;
}

/* Bytes of the match of CLIP's pattern that starts at s (not whitespace);
 * *special when it is one of the special-token alternatives. */
static size_t clip_match(const char *s, size_t n, bool *special) {
    static const char *const SPECIAL[] = {"<|startoftext|>", "<|endoftext|>"};
    static const char *const CONTRACTION[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    *special = false;
    for (int i = 0; i < 2; i++)
        if (n >= strlen(SPECIAL[i]) && memcmp(s, SPECIAL[i], strlen(SPECIAL[i])) == 0)
            return *special = true, strlen(SPECIAL[i]);
    for (int i = 0; i < 7; i++)
        if (n >= strlen(CONTRACTION[i]) && memcmp(s, CONTRACTION[i], strlen(CONTRACTION[i])) == 0)
            return strlen(CONTRACTION[i]);
    int32_t c;
    size_t len = dc_utf8_next(s, n, &c);
    int k = kind(c);
    return k == 2 ? len : run(s, n, k);
}

/* Normalised text between added tokens: CLIP's pieces, each through BPE. */
static int encode_words(const void *ctx, const char *s, size_t n, dc_idbuf *ids) {
    const dc_bpe *t = ctx;
    for (size_t i = 0; i < n;) {
        int32_t c;
        size_t len = dc_utf8_next(s + i, n - i, &c);
        if (kind(c) == 0) {
            i += len;
            continue;
        }
        bool special;
        size_t m = clip_match(s + i, n - i, &special);
        if (special) { /* GPT-2's pattern: "<|", the letters, "|>" */
            if (encode_word(t, s + i, 2, ids) || encode_word(t, s + i + 2, m - 4, ids) ||
                encode_word(t, s + i + m - 2, 2, ids))
                return -1;
        } else if (encode_word(t, s + i, m, ids)) {
            return -1;
        }
        i += m;
    }
    return 0;
}

int dc_bpe_encode(const dc_bpe *t, const char *text, bool add_special, int32_t **ids, int64_t *n) {
    return dc_vocab_encode(&t->v, text, add_special, t->info.bos, t->info.eos, normalize, encode_words, t, ids, n);
}

int dc_bpe_encode_padded(const dc_bpe *t, const char *text, int64_t max_length, int32_t *ids, int64_t *n_real) {
    if (max_length == 0 && t->info.model_max_length == 0)
        return dc_fail("tokenizer: the config gives no model_max_length; a max_length is needed");
    if (max_length == 0)
        max_length = t->info.model_max_length;
    if (max_length < 2)
        return dc_fail("tokenizer: max_length %lld leaves no room for bos and eos", (long long)max_length);
    int32_t *words;
    int64_t n;
    if (dc_bpe_encode(t, text, false, &words, &n))
        return -1;
    if (n > max_length - 2) /* truncation keeps the start, then eos */
        n = max_length - 2;
    ids[0] = t->info.bos;
    memcpy(ids + 1, words, (size_t)n * sizeof *ids);
    ids[n + 1] = t->info.eos;
    for (int64_t i = n + 2; i < max_length; i++)
        ids[i] = t->info.pad;
    if (n_real)
        *n_real = n + 2;
    free(words);
    return 0;
}

/* ---- decode ---- */

/* A token's characters as the bytes they stand for; a token with a
 * character that stands for no byte (an added token's) as its own UTF-8. */
static int token_bytes(const dc_bpe *t, const char *tok, dc_strbuf *out) {
    size_t n = strlen(tok), mark = out->n;
    for (size_t i = 0; i < n;) {
        int32_t c;
        i += dc_utf8_next(tok + i, n - i, &c);
        int b = c >= 0 && c < N_BYTE_CHARS ? t->char_byte[c] : -1;
        if (b < 0) {
            out->n = mark;
            return dc_strbuf_add(out, tok, n);
        }
        char byte = (char)b;
        if (dc_strbuf_add(out, &byte, 1))
            return -1;
    }
    return 0;
}

/* Bytes in the maximal part of an invalid UTF-8 sequence at s (n > 0):
 * the longest start of some valid sequence, at least 1. */
static size_t invalid_prefix(const char *s, size_t n) {
    uint8_t b = (uint8_t)s[0], lo = 0x80, hi = 0xBF;
    size_t need = b >= 0xC2 && b <= 0xDF ? 1 : b >= 0xE0 && b <= 0xEF ? 2 : b >= 0xF0 && b <= 0xF4 ? 3 : 0;
    lo = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : lo;
    hi = b == 0xED ? 0x9F : b == 0xF4 ? 0x8F : hi;
    size_t i = 1;
    for (; i <= need && i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c < (i == 1 ? lo : 0x80) || c > (i == 1 ? hi : 0xBF))
            break;
    }
    return i;
}

/* Bytes as UTF-8, each maximal invalid part one U+FFFD, as Rust's
 * String::from_utf8_lossy reads them. */
static int lossy_utf8(const char *s, size_t n, dc_strbuf *out) {
    int rc = dc_strbuf_add(out, "", 0);
    for (size_t i = 0; i < n && rc == 0;) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k < 0) {
            c = 0xFFFD;
            k = (utf8proc_ssize_t)invalid_prefix(s + i, n - i);
        }
        rc = dc_strbuf_add_char(out, c);
        i += (size_t)k;
    }
    return rc;
}

/* Python's str.isspace: White_Space and the separators U+001C..U+001F. */
static bool py_isspace(int32_t c) { return dc_unicode_is_whitespace(c) || (c >= 0x1C && c <= 0x1F); }

/* b's text without the whitespace at its ends, as str.strip() gives it. */
static void strip(dc_strbuf *b) {
    size_t start = 0, end = b->n;
    int32_t c;
    while (start < end && (dc_utf8_next(b->p + start, end - start, &c), py_isspace(c)))
        start += dc_utf8_next(b->p + start, end - start, &c);
    while (end > start && (dc_utf8_next(b->p + dc_utf8_prev(b->p, end), end - dc_utf8_prev(b->p, end), &c),
                           py_isspace(c)))
        end = dc_utf8_prev(b->p, end);
    memmove(b->p, b->p + start, end - start);
    b->n = end - start;
    b->p[b->n] = '\0';
}

int dc_bpe_decode(const dc_bpe *t, const int32_t *ids, int64_t n, bool skip_special, char **text) {
    *text = NULL;
    dc_strbuf bytes = {0}, out = {0};
    int rc = dc_strbuf_add(&bytes, "", 0);
    for (int64_t i = 0; i < n && rc == 0; i++) {
        const char *tok = dc_bpe_token(t, ids[i]);
        if (tok && !(skip_special && t->v.special[ids[i]]))
            rc = token_bytes(t, tok, &bytes);
    }
    if (rc == 0 && (rc = lossy_utf8(bytes.p, bytes.n, &out)) == 0 && (rc = dc_strbuf_replace_all(&out, EOW, " ")) == 0)
        strip(&out);
    free(bytes.p);
    if (rc) {
        free(out.p);
        return -1;
    }
    *text = out.p;
    return 0;
}

/* ---- loading ---- */

void dc_bpe_free(dc_bpe *t) {
    if (!t)
        return;
    dc_vocab_free(&t->v);
    free(t->merges);
    free(t);
}

static int merges_alloc(dc_bpe *t, int64_t count, const char *where) {
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)count)
        cap *= 2;
    if (count > INT32_MAX || !(t->merges = malloc(cap * sizeof *t->merges)))
        return dc_fail("%s: out of memory for %lld merges", where, (long long)count);
    for (uint64_t i = 0; i < cap; i++)
        t->merges[i].pair = NO_MERGE;
    t->merges_mask = cap - 1;
    return 0;
}

/* Merge number `rank`, "a b": both and their join must be vocab tokens. A
 * pair given again takes the later rank (tokenizers collects them into a map). */
static int add_merge(dc_bpe *t, const char *a, size_t na, const char *b, size_t nb, int32_t rank, const char *where) {
    dc_strbuf ab = {0};
    int32_t ia = vocab_find(t, a, na), ib = vocab_find(t, b, nb), id = -1;
    if (ia < 0 || ib < 0)
        return dc_fail("%s: merge %d: \"%.*s\" is not in the vocab", where, rank + 1, (int)(ia < 0 ? na : nb),
                       ia < 0 ? a : b);
    if (dc_strbuf_add(&ab, a, na) || dc_strbuf_add(&ab, b, nb))
        return -1;
    id = vocab_find(t, ab.p, ab.n);
    if (id < 0)
        dc_fail("%s: merge %d: \"%s\" is not in the vocab", where, rank + 1, ab.p);
    free(ab.p);
    if (id < 0)
        return -1;
    *merge_slot(t, ia, ib) = (merge){(uint64_t)ia << 32 | (uint32_t)ib, rank, id};
    return 0;
}

/* One "a b" line (or string of tokenizer.json): exactly one space between two tokens. */
static int add_merge_line(dc_bpe *t, const char *s, size_t n, int32_t rank, const char *where) {
    const char *sp = memchr(s, ' ', n);
    if (!sp || sp == s || sp == s + n - 1 || memchr(sp + 1, ' ', n - (size_t)(sp - s) - 1) || memchr(s, '\0', n))
        return dc_fail("%s: merge %d is \"%.*s\", not two tokens with a space between", where, rank + 1,
                       (int)(n < 80 ? n : 80), s);
    return add_merge(t, s, (size_t)(sp - s), sp + 1, n - (size_t)(sp - s) - 1, rank, where);
}

/* merges.txt: lines "a b" (a line ending "\r\n" as one ending "\n"); lines
 * starting "#version" are skipped, as the Rust reader skips them. */
static int merges_from_txt(dc_bpe *t, const char *text, size_t n, const char *where) {
    int64_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    if (merges_alloc(t, lines + 1, where))
        return -1;
    int32_t rank = 0;
    for (size_t i = 0; i < n;) {
        const char *eol = memchr(text + i, '\n', n - i);
        size_t len = eol ? (size_t)(eol - text) - i : n - i;
        size_t next = i + len + (eol != NULL);
        if (len > 0 && text[i + len - 1] == '\r')
            len--;
        if (!(len >= 8 && memcmp(text + i, "#version", 8) == 0) && add_merge_line(t, text + i, len, rank++, where))
            return -1;
        i = next;
    }
    return 0;
}

/* tokenizer.json's model.merges: "a b" strings or [a, b] pairs. */
static int merges_from_json(dc_bpe *t, const cJSON *merges, const char *where) {
    if (!cJSON_IsArray(merges))
        return dc_fail("%s: model.merges is %s, not a list", where, dc_json_type(merges));
    if (merges_alloc(t, cJSON_GetArraySize(merges), where))
        return -1;
    int32_t rank = 0;
    for (const cJSON *m = merges->child; m; m = m->next, rank++) {
        const cJSON *a = cJSON_GetArrayItem(m, 0), *b = cJSON_GetArrayItem(m, 1);
        if (cJSON_IsString(m) ? add_merge_line(t, m->valuestring, strlen(m->valuestring), rank, where)
            : cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(a) && cJSON_IsString(b)
                ? add_merge(t, a->valuestring, strlen(a->valuestring), b->valuestring, strlen(b->valuestring), rank,
                            where)
                : dc_fail("%s: merge %d is %s, not \"a b\" or [a, b]", where, rank + 1, dc_json_type(m)))
            return -1;
    }
    return 0;
}

/* tokenizer.json's model: a BPE vocab and merges. */
static int model_from_json(dc_bpe *t, const cJSON *root, const char *where) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *type = NULL;
    if (!cJSON_IsObject(model))
        return dc_fail("%s: no \"model\" object", where);
    if (dc_json_get_string(model, "type", where, &type))
        return -1;
    if (type && strcmp(type, "BPE") != 0)
        return dc_fail("%s: model type \"%s\" is not BPE (CLIP tokenizers are)", where, type);
    if (dc_vocab_from_json(&t->v, cJSON_GetObjectItemCaseSensitive(model, "vocab"), where) ||
        dc_vocab_index(&t->v, where))
        return -1;
    return merges_from_json(t, cJSON_GetObjectItemCaseSensitive(model, "merges"), where);
}

/* The first symbols: each byte's character, alone and with "</w>"; and
 * the way back. */
static void byte_ids(dc_bpe *t) {
    memset(t->char_byte, 0xFF, sizeof t->char_byte);
    for (int b = 0; b < 256; b++) {
        t->char_byte[byte_char(b)] = (int16_t)b;
        uint8_t u[8];
        size_t n = (size_t)utf8proc_encode_char(byte_char(b), u);
        t->byte_id[b] = vocab_find(t, (const char *)u, n);
        memcpy(u + n, EOW, 4);
        t->byte_eow_id[b] = vocab_find(t, (const char *)u, n + 4);
    }
}

/* CLIPTokenizer's defaults: bos <|startoftext|>, eos, unk and pad <|endoftext|>. */
static const char *const NAMED_DEFAULT[DC_N_NAMED] = {"<|startoftext|>", "<|endoftext|>", "<|endoftext|>", NULL,
                                                      "<|endoftext|>", NULL, NULL};

static int read_config(dc_bpe *t, const cJSON *cfg, const char *where) {
    double max_len = 0;
    if (dc_json_get_number(cfg, "model_max_length", where, &max_len))
        return -1;
    /* transformers writes 1e30 for "no limit" */
    t->info.model_max_length = max_len >= 1 && max_len < 1e15 ? (int64_t)max_len : 0;
    return 0;
}

/* The added tokens, what ids decode to, and the named ids. */
static int finish_ids(dc_bpe *t, const dc_added_config *c, const char *added_where, const char *where) {
    int32_t named[DC_N_NAMED];
    if (dc_vocab_finish(&t->v, c, normalize, t, added_where, where, named))
        return -1;
    t->info.size = t->v.size;
    const int which[] = {DC_BOS, DC_EOS, DC_UNK, DC_PAD};
    const char *what[] = {"bos", "eos", "unk", "pad"};
    for (int i = 0; i < 4; i++)
        if (named[which[i]] < 0) /* only an empty string names no token */
            return dc_fail("%s: the %s token is empty", where, what[i]);
    t->info.bos = named[DC_BOS];
    t->info.eos = named[DC_EOS];
    t->info.unk = named[DC_UNK];
    t->info.pad = named[DC_PAD];
    const char *unk = t->v.tokens[t->info.unk];
    if (vocab_find(t, unk, strlen(unk)) < 0)
        return dc_fail("%s: the unknown token is not in the vocab", where);
    return 0;
}

/* The BPE model: tokenizer.json's, else vocab.json + merges.txt. */
static int load_model(dc_bpe *t, const dc_bpe_files *f, const dc_text_configs *j, const char *where) {
    if (j->tok)
        return model_from_json(t, j->tok, j->tok_name);
    if (!f->vocab_json || !f->merges_txt)
        return dc_fail("%s: neither tokenizer.json nor vocab.json and merges.txt are there (%s is missing)", where,
                       f->vocab_json ? "merges.txt" : "vocab.json");
    char name[2][512];
    snprintf(name[0], sizeof name[0], "%s/vocab.json", where);
    snprintf(name[1], sizeof name[1], "%s/merges.txt", where);
    cJSON *vocab = dc_json_parse(f->vocab_json, f->vocab_json_n, name[0]);
    int rc = vocab && dc_vocab_from_json(&t->v, vocab, name[0]) == 0 && dc_vocab_index(&t->v, name[0]) == 0 &&
                     merges_from_txt(t, f->merges_txt, f->merges_txt_n, name[1]) == 0
                 ? 0
                 : -1;
    cJSON_Delete(vocab);
    return rc;
}

int dc_bpe_load_files(dc_bpe **out, const dc_bpe_files *f, const char *where) {
    *out = NULL;
    dc_bpe *t = calloc(1, sizeof *t);
    dc_text_configs j;
    int parsed = dc_text_configs_parse(&j, where, f->tokenizer_json, f->tokenizer_json_n, f->tokenizer_config,
                                       f->tokenizer_config_n);
    dc_added_config c = {0};
    int rc = -1;
    if (!t)
        dc_fail("%s: out of memory", where);
    else if (parsed == 0 && load_model(t, f, &j, where) == 0 && (!j.cfg || read_config(t, j.cfg, j.cfg_name) == 0) &&
             dc_added_read_configs(&c, &j, NAMED_DEFAULT, f->special_tokens_map, f->special_tokens_map_n) == 0 &&
             finish_ids(t, &c, j.cfg ? j.cfg_name : where, where) == 0) {
        byte_ids(t);
        rc = 0;
    }
    dc_text_configs_free(&j);
    if (rc)
        dc_bpe_free(t);
    else
        *out = t;
    return rc;
}

int dc_bpe_load(dc_bpe **out, const char *dir) {
    *out = NULL;
    const char *const names[5] = {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                                  "special_tokens_map.json"};
    char *text[5];
    size_t n[5];
    int rc = -1;
    if (dc_text_read_folder(dir, 5, names, text, n) == 0) {
        dc_bpe_files f = {text[0], text[1], text[2], text[3], text[4], n[0], n[1], n[2], n[3], n[4]};
        rc = dc_bpe_load_files(out, &f, dir);
    }
    for (int i = 0; i < 5; i++)
        free(text[i]);
    return rc;
}
