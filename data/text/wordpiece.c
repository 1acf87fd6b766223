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
#include <utf8proc.h>

#define MAX_WORD_CHARS 100

struct dc_wordpiece {
    dc_wordpiece_info info;
    dc_vocab v; /* the WordPiece model's tokens and the added ones */
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
static int normalize(const void *ctx, const char *s, size_t n, dc_strbuf *out) {
    const dc_wordpiece *t = ctx;
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

/* ---- ids ---- */

int32_t dc_wordpiece_token_id(const dc_wordpiece *t, const char *token) {
    return dc_vocab_token_id(&t->v, token);
}

const char *dc_wordpiece_token(const dc_wordpiece *t, int32_t id) {
    return dc_vocab_token(&t->v, id);
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
        while (start < end && (id = dc_vocab_find(&t->v, start ? "##" : "", w + start, end - start)) < 0)
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

int dc_wordpiece_encode(const dc_wordpiece *t, const char *text, bool add_special, int32_t **ids, int64_t *n) {
    return dc_vocab_encode(&t->v, text, add_special, t->info.cls, t->info.sep, normalize, encode_words, t, ids, n);
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
        if (!tok || (skip_special && t->v.special[ids[i]]))
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
    dc_vocab_free(&t->v);
    free(t);
}

/* vocab.txt: one token a line, id = line number, trailing whitespace trimmed
 * (as the Rust reader does). */
static int vocab_from_txt(dc_vocab *v, const char *text, size_t n, const char *where) {
    int64_t lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += text[i] == '\n';
    lines += n > 0 && text[n - 1] != '\n';
    v->vocab = calloc((size_t)lines + 1, sizeof *v->vocab);
    if (!v->vocab)
        return dc_fail("%s: out of memory", where);
    for (size_t i = 0; i < n; v->n_vocab++) {
        const char *eol = memchr(text + i, '\n', n - i);
        size_t len = eol ? (size_t)(eol - text - i) : n - i;
        if (utf8proc_decompose((const uint8_t *)text + i, (utf8proc_ssize_t)len, NULL, 0, 0) < 0 ||
            memchr(text + i, '\0', len))
            return dc_fail("%s: line %lld is not UTF-8 text", where, (long long)v->n_vocab + 1);
        while (len > 0) {
            int32_t c;
            size_t p = dc_utf8_prev(text + i, len);
            dc_utf8_next(text + i + p, len - p, &c);
            if (!dc_unicode_is_whitespace(c))
                break;
            len = p;
        }
        if (!(v->vocab[v->n_vocab] = strndup(text + i, len)))
            return dc_fail("%s: out of memory", where);
        i += (eol ? (size_t)(eol - text - i) + 1 : n - i);
    }
    return 0;
}

/* tokenizer.json's model: a WordPiece vocab {token: id} with ids 0..N-1. */
static int vocab_from_json(dc_vocab *v, const cJSON *root, const char *where) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *type = NULL;
    if (!cJSON_IsObject(model))
        return dc_fail("%s: no \"model\" object", where);
    if (dc_json_get_string(model, "type", where, &type))
        return -1;
    if (type && strcmp(type, "WordPiece") != 0)
        return dc_fail("%s: model type \"%s\" is not WordPiece (BERT/BLIP tokenizers are)", where, type);
    return dc_vocab_from_json(v, cJSON_GetObjectItemCaseSensitive(model, "vocab"), where);
}

static const char *const NAMED_DEFAULT[DC_N_NAMED] = {NULL, NULL, "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"};

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

/* The added tokens, what ids decode to, and the named ids. */
static int finish_ids(dc_wordpiece *t, const dc_added_config *c, const char *added_where, const char *where) {
    int32_t named[DC_N_NAMED];
    if (dc_vocab_finish(&t->v, c, normalize, t, added_where, where, named))
        return -1;
    t->info.size = t->v.size;
    t->info.bos = named[DC_BOS];
    t->info.eos = named[DC_EOS];
    t->info.unk = named[DC_UNK];
    t->info.sep = named[DC_SEP];
    t->info.pad = named[DC_PAD];
    t->info.cls = named[DC_CLS];
    t->info.mask = named[DC_MASK];
    const char *unk = t->info.unk >= 0 ? t->v.tokens[t->info.unk] : NULL;
    if (!unk || t->info.unk >= t->v.n_vocab || dc_vocab_find(&t->v, "", unk, strlen(unk)) != t->info.unk)
        return dc_fail("%s: the unknown token is not in the vocab", where);
    return 0;
}

int dc_wordpiece_load_files(dc_wordpiece **out, const dc_wordpiece_files *f, const char *where) {
    *out = NULL;
    char vocab_name[512];
    snprintf(vocab_name, sizeof vocab_name, "%s/vocab.txt", where);
    dc_wordpiece *t = calloc(1, sizeof *t);
    dc_text_configs j;
    int parsed = dc_text_configs_parse(&j, where, f->tokenizer_json, f->tokenizer_json_n, f->tokenizer_config,
                                       f->tokenizer_config_n);
    const char *vocab_where = j.tok ? j.tok_name : vocab_name;
    dc_added_config c = {0};
    int rc = -1;
    if (!t) {
        dc_fail("%s: out of memory", where);
        goto done;
    }
    if (parsed)
        goto done;
    if (j.tok ? vocab_from_json(&t->v, j.tok, j.tok_name)
              : f->vocab_txt ? vocab_from_txt(&t->v, f->vocab_txt, f->vocab_txt_n, vocab_name)
                             : dc_fail("%s: neither tokenizer.json nor vocab.txt is there", where))
        goto done;
    if (t->v.n_vocab == 0 || t->v.n_vocab > INT32_MAX) {
        dc_fail("%s: the vocab has %lld tokens", vocab_where, (long long)t->v.n_vocab);
        goto done;
    }
    if (dc_vocab_index(&t->v, vocab_where) || (j.cfg && read_flags(t, j.cfg, j.cfg_name)))
        goto done;
    if (!j.cfg)
        t->lowercase = t->strip_accents = t->chinese = true;
    if (dc_added_read_configs(&c, &j, NAMED_DEFAULT, f->special_tokens_map, f->special_tokens_map_n) ||
        finish_ids(t, &c, j.cfg ? j.cfg_name : j.tok_name, where))
        goto done;
    rc = 0;
done:
    dc_text_configs_free(&j);
    if (rc)
        dc_wordpiece_free(t);
    else
        *out = t;
    return rc;
}

int dc_wordpiece_load(dc_wordpiece **out, const char *dir) {
    *out = NULL;
    const char *const names[4] = {"vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"};
    char *text[4];
    size_t n[4];
    int rc = -1;
    if (dc_text_read_folder(dir, 4, names, text, n) == 0) {
        dc_wordpiece_files f = {text[0], text[1], text[2], text[3], n[0], n[1], n[2], n[3]};
        rc = dc_wordpiece_load_files(out, &f, dir);
    }
    for (int i = 0; i < 4; i++)
        free(text[i]);
    return rc;
}
