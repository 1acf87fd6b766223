/*
 * BERT WordPiece, matched to what transformers 5.25 runs for BertTokenizer:
 * the Rust `tokenizers` backend (BertNormalizer, BertPreTokenizer,
 * WordPiece model, WordPiece decoder with cleanup) that BertTokenizer
 * rebuilds from the folder's files. What that means for the files:
 *   - the vocab is tokenizer.json's model.vocab, else vocab.txt (lines with
 *     trailing whitespace trimmed); "##" and 100 characters are fixed (the
 *     file's continuing_subword_prefix / max_input_chars_per_word and its
 *     normalizer and decoder are not read by BertTokenizer);
 *   - the normaliser flags and special tokens come from tokenizer_config.json
 *     (do_lower_case, strip_accents, tokenize_chinese_chars,
 *     clean_up_tokenization_spaces), with BertTokenizer's defaults;
 *   - added tokens: tokenizer_config.json's added_tokens_decoder, or, for
 *     folders saved without one, tokenizer.json's added_tokens and
 *     special_tokens_map.json; then the named special tokens not among them.
 *     Ids are given as the Rust AddedVocabulary gives them: the vocab's id
 *     for a token already in it, else the next one after the vocab.
 *
 * Unicode: the character classes come from libutf8proc (Unicode 15 in
 * Debian 12's 2.8). tokenizers takes control/format/private-use,
 * punctuation and nonspacing marks from the unicode_categories crate, whose
 * tables are Unicode 8.0, and case mappings from Rust's std (Unicode 15/16).
 * So characters assigned since Unicode 9 in those classes differ: e.g. U+2E43
 * (Po), U+08E2 (Cf), U+08D4 (Mn) are punctuation / dropped / stripped here
 * and plain letters to transformers. Everything assigned by Unicode 8.0 (all
 * of BERT's vocab) matches.
 */
#include "wordpiece.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "textutil.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#define MAX_WORD_CHARS 100

struct dc_wordpiece {
    dc_wordpiece_info info;
    char **vocab; /* [n_vocab] the WordPiece model's tokens, id = index */
    int64_t n_vocab;
    int32_t *table; /* open-addressing hash of vocab: ids, -1 empty */
    uint64_t table_mask;
    dc_added_token *added; /* in the order they were added */
    int n_added;
    const char **tokens; /* [info.size] what an id decodes to (NULL: nothing) */
    bool *special;       /* [info.size] skipped by skip_special_tokens */
    bool lowercase, strip_accents, chinese, cleanup_spaces;
};

/* ---- character classes (BertNormalizer / BertPreTokenizer) ---- */

/* Dropped by the normaliser: Cc, Cf, Co, except tab and newlines, which are whitespace. */
static bool is_control(int32_t c) {
    if (c == '\t' || c == '\n' || c == '\r')
        return false;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_CC || k == UTF8PROC_CATEGORY_CF || k == UTF8PROC_CATEGORY_CO;
}

/* ASCII punctuation (all of !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~) or Unicode P*. */
static bool is_punct(int32_t c) {
    if ((c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
        (c >= 0x7B && c <= 0x7E))
        return true;
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

/* The CJK ideograph blocks BERT puts spaces around (not kana or hangul). */
static bool is_cjk(int32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* ---- normaliser ---- */

/* Clean-up and CJK spacing, one character at a time. */
static int clean_text(const dc_wordpiece *t, const char *s, size_t n, dc_strbuf *out) {
    for (size_t i = 0; i < n;) {
        int32_t c;
        i += dc_utf8_next(s + i, n - i, &c);
        if (c == 0 || c == 0xFFFD || is_control(c))
            continue;
        if (dc_unicode_is_whitespace(c))
            c = ' ';
        bool pad = t->chinese && is_cjk(c);
        if ((pad && dc_strbuf_add(out, " ", 1)) || dc_strbuf_add_char(out, c) || (pad && dc_strbuf_add(out, " ", 1)))
            return -1;
    }
    return dc_strbuf_add(out, "", 0);
}

/* BertNormalizer on valid UTF-8: clean, CJK spacing, NFD without nonspacing
 * marks, lower case (in that order, as tokenizers does them). */
static int normalize(const dc_wordpiece *t, const char *s, size_t n, dc_strbuf *out) {
    dc_strbuf a = {0};
    int32_t *cps = NULL;
    int rc = -1;
    if (clean_text(t, s, n, &a))
        goto done;
    utf8proc_ssize_t m = 0;
    if (t->strip_accents) {
        utf8proc_option_t nfd = UTF8PROC_DECOMPOSE;
        m = utf8proc_decompose((const uint8_t *)a.p, (utf8proc_ssize_t)a.n, NULL, 0, nfd);
        cps = m > 0 ? malloc((size_t)m * sizeof *cps) : NULL;
        if (m > 0 && (!cps || utf8proc_decompose((const uint8_t *)a.p, (utf8proc_ssize_t)a.n, cps, m, nfd) != m)) {
            dc_fail("tokenizer: out of memory");
            goto done;
        }
    } else {
        cps = malloc((a.n + 1) * sizeof *cps);
        if (!cps) {
            dc_fail("tokenizer: out of memory");
            goto done;
        }
        for (size_t i = 0; i < a.n; m++)
            i += dc_utf8_next(a.p + i, a.n - i, &cps[m]);
    }
    for (utf8proc_ssize_t i = 0; i < m; i++) {
        if (t->strip_accents && utf8proc_category(cps[i]) == UTF8PROC_CATEGORY_MN)
            continue;
        if (t->lowercase ? dc_strbuf_add_lower(out, cps[i]) : dc_strbuf_add_char(out, cps[i]))
            goto done;
    }
    rc = dc_strbuf_add(out, "", 0);
done:
    free(cps);
    free(a.p);
    return rc;
}

/* ---- vocab lookup ---- */

/* The vocab id of prefix + s[0..n), -1 when absent. */
static int32_t vocab_find(const dc_wordpiece *t, const char *prefix, const char *s, size_t n) {
    size_t np = strlen(prefix);
    uint64_t h = dc_text_hash(dc_text_hash(DC_TEXT_HASH_SEED, prefix, np), s, n);
    for (uint64_t i = h & t->table_mask;; i = (i + 1) & t->table_mask) {
        int32_t id = t->table[i];
        if (id < 0)
            return -1;
        const char *v = t->vocab[id];
        if (strncmp(v, prefix, np) == 0 && strlen(v + np) == n && memcmp(v + np, s, n) == 0)
            return id;
    }
}

/* Index the vocab; a token that appears twice is an error (an id would be lost). */
static int vocab_index(dc_wordpiece *t, const char *where) {
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)t->n_vocab)
        cap *= 2;
    t->table = malloc(cap * sizeof *t->table);
    if (!t->table)
        return dc_fail("%s: out of memory", where);
    memset(t->table, 0xFF, cap * sizeof *t->table);
    t->table_mask = cap - 1;
    for (int64_t id = 0; id < t->n_vocab; id++) {
        const char *v = t->vocab[id];
        int32_t other = vocab_find(t, "", v, strlen(v));
        if (other >= 0)
            return dc_fail("%s: the vocab has the token \"%s\" twice (ids %d and %lld)", where, v, other, (long long)id);
        uint64_t i = dc_text_hash(DC_TEXT_HASH_SEED, v, strlen(v)) & t->table_mask;
        while (t->table[i] >= 0)
            i = (i + 1) & t->table_mask;
        t->table[i] = (int32_t)id;
    }
    return 0;
}

int32_t dc_wordpiece_token_id(const dc_wordpiece *t, const char *token) {
    const dc_added_token *a = dc_added_find(t->added, t->n_added, token);
    return a ? a->id : vocab_find(t, "", token, strlen(token));
}

const char *dc_wordpiece_token(const dc_wordpiece *t, int32_t id) {
    return id >= 0 && id < t->info.size ? t->tokens[id] : NULL;
}

const dc_wordpiece_info *dc_wordpiece_get_info(const dc_wordpiece *t) { return &t->info; }

/* ---- encode ---- */

/* One word: the longest vocab pieces from its start, or [UNK]. */
static int encode_word(const dc_wordpiece *t, const char *w, size_t n, int64_t chars, dc_idbuf *ids) {
    if (chars > MAX_WORD_CHARS)
        return dc_idbuf_add(ids, t->info.unk);
    int64_t mark = ids->n;
    for (size_t start = 0; start < n;) {
        size_t end = n;
        int32_t id = -1;
        while (start < end && (id = vocab_find(t, start ? "##" : "", w + start, end - start)) < 0)
            end = dc_utf8_prev(w, end);
        if (id < 0) {
            ids->n = mark;
            return dc_idbuf_add(ids, t->info.unk);
        }
        if (dc_idbuf_add(ids, id))
            return -1;
        start = end;
    }
    return 0;
}

/* BertPreTokenizer then WordPiece: words end at whitespace (dropped) and
 * around each punctuation character (a word of its own). */
static int encode_words(const void *ctx, const char *s, size_t n, dc_idbuf *ids) {
    const dc_wordpiece *t = ctx;
    size_t word = 0;
    int64_t chars = 0;
    for (size_t i = 0; i < n;) {
        int32_t c;
        size_t k = dc_utf8_next(s + i, n - i, &c);
        bool space = dc_unicode_is_whitespace(c), punct = !space && is_punct(c);
        if (space || punct) {
            if ((i > word && encode_word(t, s + word, i - word, chars, ids)) ||
                (punct && encode_word(t, s + i, k, 1, ids)))
                return -1;
            word = i + k;
            chars = 0;
        } else {
            chars++;
        }
        i += k;
    }
    return n > word ? encode_word(t, s + word, n - word, chars, ids) : 0;
}

/* Text between non-normalised added tokens: normalise, then split at the
 * normalised ones. */
static int encode_raw_piece(const void *ctx, const char *s, size_t n, dc_idbuf *ids) {
    const dc_wordpiece *t = ctx;
    dc_strbuf norm = {0};
    int rc = normalize(t, s, n, &norm);
    if (rc == 0)
        rc = dc_added_split(t->added, t->n_added, true, norm.p, norm.n, encode_words, t, ids);
    free(norm.p);
    return rc;
}

int dc_wordpiece_encode(const dc_wordpiece *t, const char *text, bool add_special, int32_t **ids, int64_t *n) {
    *ids = NULL;
    *n = 0;
    dc_strbuf s = {0};
    dc_idbuf out = {0};
    if (dc_utf8_sanitize(text, strlen(text), &s) || (add_special && dc_idbuf_add(&out, t->info.cls)) ||
        dc_added_split(t->added, t->n_added, false, s.p, s.n, encode_raw_piece, t, &out) ||
        (add_special && dc_idbuf_add(&out, t->info.sep)) || dc_idbuf_add(&out, 0)) {
        free(s.p);
        free(out.p);
        return -1;
    }
    free(s.p);
    *ids = out.p;
    *n = out.n - 1;
    return 0;
}

/* ---- decode ---- */

/* The WordPiece decoder's cleanup (tokenizers, per token) and transformers'
 * clean_up_tokenization (on the whole text): the same list but " do not". */
static const char *const CLEANUP[][2] = {
    {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
    {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"},
};

static int cleanup(dc_strbuf *b, bool decoder) {
    for (size_t i = 0; i < sizeof CLEANUP / sizeof CLEANUP[0]; i++)
        if ((decoder || strcmp(CLEANUP[i][0], " do not") != 0) &&
            dc_strbuf_replace_all(b, CLEANUP[i][0], CLEANUP[i][1]))
            return -1;
    return 0;
}

int dc_wordpiece_decode(const dc_wordpiece *t, const int32_t *ids, int64_t n, bool skip_special, char **text) {
    *text = NULL;
    dc_strbuf out = {0}, piece = {0};
    bool first = true;
    int rc = dc_strbuf_add(&out, "", 0);
    for (int64_t i = 0; i < n && rc == 0; i++) {
        const char *tok = dc_wordpiece_token(t, ids[i]);
        if (!tok || (skip_special && t->special[ids[i]]))
            continue;
        piece.n = 0;
        if (!first && strncmp(tok, "##", 2) == 0)
            tok += 2;
        else if (!first)
            rc = dc_strbuf_add(&piece, " ", 1);
        first = false;
        if (rc || (rc = dc_strbuf_add(&piece, tok, strlen(tok))) || (rc = cleanup(&piece, true)))
            break;
        rc = dc_strbuf_add(&out, piece.p, piece.n);
    }
    if (rc == 0 && t->cleanup_spaces)
        rc = cleanup(&out, false);
    free(piece.p);
    if (rc) {
        free(out.p);
        return -1;
    }
    *text = out.p;
    return 0;
}

/* ---- loading ---- */

void dc_wordpiece_free(dc_wordpiece *t) {
    if (!t)
        return;
    for (int64_t i = 0; i < t->n_vocab; i++)
        free(t->vocab[i]);
    dc_added_free(t->added, t->n_added);
    free(t->vocab);
    free(t->table);
    free(t->tokens);
    free(t->special);
    free(t);
}

/* vocab.txt: one token a line, id = line number, trailing whitespace trimmed
 * (as the Rust reader does). */
static int vocab_from_txt(dc_wordpiece *t, const char *text, size_t n, const char *where) {
    int64_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    lines += n > 0 && text[n - 1] != '\n';
    t->vocab = calloc((size_t)lines + 1, sizeof *t->vocab);
    if (!t->vocab)
        return dc_fail("%s: out of memory", where);
    for (size_t i = 0; i < n; t->n_vocab++) {
        const char *eol = memchr(text + i, '\n', n - i);
        size_t len = eol ? (size_t)(eol - text - i) : n - i;
        if (utf8proc_decompose((const uint8_t *)text + i, (utf8proc_ssize_t)len, NULL, 0, 0) < 0 ||
            memchr(text + i, '\0', len))
            return dc_fail("%s: line %lld is not UTF-8 text", where, (long long)t->n_vocab + 1);
        while (len > 0) {
            int32_t c;
            size_t p = dc_utf8_prev(text + i, len);
            dc_utf8_next(text + i + p, len - p, &c);
            if (!dc_unicode_is_whitespace(c))
                break;
            len = p;
        }
        if (!(t->vocab[t->n_vocab] = strndup(text + i, len)))
            return dc_fail("%s: out of memory", where);
        i += (eol ? (size_t)(eol - text - i) + 1 : n - i);
    }
    return 0;
}

/* tokenizer.json's model: a WordPiece vocab {token: id} with ids 0..N-1. */
static int vocab_from_json(dc_wordpiece *t, const cJSON *root, const char *where) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *type = NULL;
    if (!cJSON_IsObject(model))
        return dc_fail("%s: no \"model\" object", where);
    if (dc_json_get_string(model, "type", where, &type))
        return -1;
    if (type && strcmp(type, "WordPiece") != 0)
        return dc_fail("%s: model type \"%s\" is not WordPiece (BERT/BLIP tokenizers are)", where, type);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return dc_fail("%s: model.vocab is %s, not a {token: id} object", where, dc_json_type(vocab));
    int64_t count = cJSON_GetArraySize(vocab);
    t->vocab = calloc((size_t)count + 1, sizeof *t->vocab);
    if (!t->vocab)
        return dc_fail("%s: out of memory", where);
    t->n_vocab = count;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        double id = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(id >= 0 && id < (double)count) || id != (double)(int64_t)id)
            return dc_fail("%s: model.vocab[\"%s\"] is not an id in 0..%lld", where, e->string, (long long)count - 1);
        if (t->vocab[(int64_t)id])
            return dc_fail("%s: model.vocab gives id %lld twice", where, (long long)id);
        if (!(t->vocab[(int64_t)id] = strdup(e->string)))
            return dc_fail("%s: out of memory", where);
    }
    return 0;
}

static const char *const NAMED_DEFAULT[DC_N_NAMED] = {NULL, NULL, "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"};

static int32_t find_in_vocab(const void *ctx, const char *token) {
    return vocab_find(ctx, "", token, strlen(token));
}

static int read_flags(dc_wordpiece *t, const cJSON *cfg, const char *where) {
    bool lower = true, chinese = true, cleanup_spaces = false, strip = false;
    const cJSON *sa = cJSON_GetObjectItemCaseSensitive(cfg, "strip_accents");
    double max_len = 0;
    if (dc_json_get_bool(cfg, "do_lower_case", where, &lower) ||
        dc_json_get_bool(cfg, "tokenize_chinese_chars", where, &chinese) ||
        dc_json_get_bool(cfg, "clean_up_tokenization_spaces", where, &cleanup_spaces) ||
        dc_json_get_bool(cfg, "strip_accents", where, &strip) ||
        dc_json_get_number(cfg, "model_max_length", where, &max_len))
        return -1;
    t->lowercase = lower;
    t->strip_accents = cJSON_IsBool(sa) ? strip : lower; /* null: as lower-casing */
    t->chinese = chinese;
    t->cleanup_spaces = cleanup_spaces;
    /* transformers writes 1e30 for "no limit" */
    t->info.model_max_length = max_len >= 1 && max_len < 1e15 ? (int64_t)max_len : 0;
    return 0;
}

/* Normalised added tokens are matched in normalised text: their own
 * content normalised. */
static int finish_added(dc_wordpiece *t, const char *where) {
    for (int i = 0; i < t->n_added; i++) {
        dc_added_token *a = &t->added[i];
        dc_strbuf p = {0};
        size_t n = strlen(a->content);
        if (a->normalized ? normalize(t, a->content, n, &p) : dc_strbuf_add(&p, a->content, n))
            return dc_fail_prefix(where);
        a->pattern = p.p;
    }
    return 0;
}

/* What ids decode to, which are special, and the named ids. */
static int finish_ids(dc_wordpiece *t, const dc_added_config *c, const char *where) {
    int64_t size = t->n_vocab;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id >= size)
            size = (int64_t)t->added[i].id + 1;
    t->info.size = size;
    t->tokens = calloc((size_t)size + 1, sizeof *t->tokens);
    t->special = calloc((size_t)size + 1, sizeof *t->special);
    if (!t->tokens || !t->special)
        return dc_fail("%s: out of memory", where);
    for (int64_t i = 0; i < t->n_vocab; i++)
        t->tokens[i] = t->vocab[i];
    for (int i = 0; i < t->n_added; i++)
        t->tokens[t->added[i].id] = t->added[i].content;
    for (int64_t id = 0; id < size; id++) { /* tokenizers asks by content */
        const dc_added_token *a = t->tokens[id] ? dc_added_find(t->added, t->n_added, t->tokens[id]) : NULL;
        t->special[id] = a && a->special;
    }
    int32_t *named[DC_N_NAMED] = {&t->info.bos, &t->info.eos, &t->info.unk, &t->info.sep,
                                  &t->info.pad, &t->info.cls, &t->info.mask};
    for (int i = 0; i < DC_N_NAMED; i++) {
        const char *name = dc_added_named_content(c, i);
        *named[i] = name ? dc_wordpiece_token_id(t, name) : -1;
    }
    const char *unk = t->info.unk >= 0 ? t->tokens[t->info.unk] : NULL;
    if (!unk || t->info.unk >= t->n_vocab || vocab_find(t, "", unk, strlen(unk)) != t->info.unk)
        return dc_fail("%s: the unknown token is not in the vocab", where);
    return 0;
}

static cJSON *parse_optional(const char *text, size_t n, const char *what) {
    return text ? dc_json_parse(text, n, what) : NULL;
}

int dc_wordpiece_load_files(dc_wordpiece **out, const dc_wordpiece_files *f, const char *where) {
    *out = NULL;
    char name[4][512];
    snprintf(name[0], sizeof name[0], "%s/tokenizer.json", where);
    snprintf(name[1], sizeof name[1], "%s/vocab.txt", where);
    snprintf(name[2], sizeof name[2], "%s/tokenizer_config.json", where);
    snprintf(name[3], sizeof name[3], "%s/special_tokens_map.json", where);
    dc_wordpiece *t = calloc(1, sizeof *t);
    cJSON *tok = parse_optional(f->tokenizer_json, f->tokenizer_json_n, name[0]);
    cJSON *cfg = parse_optional(f->tokenizer_config, f->tokenizer_config_n, name[2]);
    cJSON *map = NULL;
    dc_added_config c = {0};
    memcpy(c.defaults, NAMED_DEFAULT, sizeof c.defaults);
    int rc = -1;
    if (!t) {
        dc_fail("%s: out of memory", where);
        goto done;
    }
    if ((f->tokenizer_json && !tok) || (f->tokenizer_config && !cfg))
        goto done;
    if (cfg && !cJSON_IsObject(cfg)) {
        dc_fail("%s: not a JSON object", name[2]);
        goto done;
    }
    if (tok ? vocab_from_json(t, tok, name[0])
            : f->vocab_txt ? vocab_from_txt(t, f->vocab_txt, f->vocab_txt_n, name[1])
                           : dc_fail("%s: neither tokenizer.json nor vocab.txt is there", where))
        goto done;
    if (t->n_vocab == 0 || t->n_vocab > INT32_MAX) {
        dc_fail("%s: the vocab has %lld tokens", tok ? name[0] : name[1], (long long)t->n_vocab);
        goto done;
    }
    if (vocab_index(t, tok ? name[0] : name[1]) || (cfg && read_flags(t, cfg, name[2])))
        goto done;
    if (!cfg)
        t->lowercase = t->strip_accents = t->chinese = true;
    dc_added_read_named(&c, cfg);
    c.decoder = cJSON_GetObjectItemCaseSensitive(cfg, "added_tokens_decoder");
    if (c.decoder && !cJSON_IsObject(c.decoder)) {
        dc_fail("%s: added_tokens_decoder is %s, not an object", name[2], dc_json_type(c.decoder));
        goto done;
    }
    if (!c.decoder) { /* saved without one: the older files say it */
        if (f->special_tokens_map && !(map = dc_json_parse(f->special_tokens_map, f->special_tokens_map_n, name[3])))
            goto done;
        dc_added_read_named(&c, map);
        c.decoder = cJSON_GetObjectItemCaseSensitive(tok, "added_tokens");
        c.decoder_is_list = true;
        if (c.decoder && !cJSON_IsArray(c.decoder)) {
            dc_fail("%s: added_tokens is %s, not a list", name[0], dc_json_type(c.decoder));
            goto done;
        }
    }
    if (dc_added_build(&c, t->n_vocab, find_in_vocab, t, cfg ? name[2] : name[0], &t->added, &t->n_added) ||
        finish_added(t, where) || finish_ids(t, &c, where))
        goto done;
    rc = 0;
done:
    cJSON_Delete(tok);
    cJSON_Delete(cfg);
    cJSON_Delete(map);
    if (rc)
        dc_wordpiece_free(t);
    else
        *out = t;
    return rc;
}

int dc_wordpiece_load(dc_wordpiece **out, const char *dir) {
    *out = NULL;
    char *text[4] = {0};
    dc_wordpiece_files f = {0};
    int rc = -1;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        dc_fail("%s: not a folder", dir);
        goto done;
    }
    if (dc_text_read_optional(dir, "vocab.txt", &text[0], &f.vocab_txt_n) ||
        dc_text_read_optional(dir, "tokenizer.json", &text[1], &f.tokenizer_json_n) ||
        dc_text_read_optional(dir, "tokenizer_config.json", &text[2], &f.tokenizer_config_n) ||
        dc_text_read_optional(dir, "special_tokens_map.json", &text[3], &f.special_tokens_map_n))
        goto done;
    f.vocab_txt = text[0];
    f.tokenizer_json = text[1];
    f.tokenizer_config = text[2];
    f.special_tokens_map = text[3];
    rc = dc_wordpiece_load_files(out, &f, dir);
done:
    for (int i = 0; i < 4; i++)
        free(text[i]);
    return rc;
}
