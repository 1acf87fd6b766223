/*
 * The pieces wordpiece.c and bpe.c share (see textutil.h). Character
 * classes come from libutf8proc (Unicode 15 in Debian 12's 2.8).
 */
#include "textutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

/* ---- buffers ---- */

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 16;
    while (cap2 < need)
        cap2 *= 2;
    void *q = realloc(*p, cap2 * elem);
    if (!q)
        return dc_fail("tokenizer: out of memory");
    *p = q;
    *cap = cap2;
    return 0;
}

int dc_strbuf_add(dc_strbuf *b, const char *s, size_t n) {
    if (grow((void **)&b->p, &b->cap, b->n + n + 1, 1))
        return -1;
    if (n)
        memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
}

int dc_strbuf_add_char(dc_strbuf *b, int32_t c) {
    uint8_t u[4];
    return dc_strbuf_add(b, (const char *)u, (size_t)utf8proc_encode_char(c, u));
}

int dc_strbuf_replace_all(dc_strbuf *b, const char *from, const char *to) {
    size_t nf = strlen(from), nt = strlen(to);
    if (!b->p || !strstr(b->p, from))
        return 0;
    dc_strbuf out = {0};
    const char *p = b->p, *hit;
    while ((hit = strstr(p, from))) {
        if (dc_strbuf_add(&out, p, (size_t)(hit - p)) || dc_strbuf_add(&out, to, nt)) {
            free(out.p);
            return -1;
        }
        p = hit + nf;
    }
    if (dc_strbuf_add(&out, p, strlen(p))) {
        free(out.p);
        return -1;
    }
    free(b->p);
    *b = out;
    return 0;
}

int dc_idbuf_add(dc_idbuf *b, int32_t id) {
    size_t cap = (size_t)b->cap;
    if (grow((void **)&b->p, &cap, (size_t)b->n + 1, sizeof(int32_t)))
        return -1;
    b->cap = (int64_t)cap;
    b->p[b->n++] = id;
    return 0;
}

/* ---- UTF-8 ---- */

size_t dc_utf8_next(const char *s, size_t n, int32_t *c) {
    return (size_t)utf8proc_iterate((const uint8_t *)s, (utf8proc_ssize_t)n, c);
}

size_t dc_utf8_prev(const char *s, size_t end) {
    do
        end--;
    while (end > 0 && ((uint8_t)s[end] & 0xC0) == 0x80);
    return end;
}

int dc_utf8_sanitize(const char *s, size_t n, dc_strbuf *out) {
    for (size_t i = 0; i < n;) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k < 0) {
            c = 0xFFFD;
            k = 1;
        }
        if (dc_strbuf_add_char(out, c))
            return -1;
        i += (size_t)k;
    }
    return dc_strbuf_add(out, "", 0);
}

/* ---- Unicode classes ---- */

bool dc_unicode_is_whitespace(int32_t c) {
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || c == 0x85)
        return true;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}

int dc_strbuf_add_lower(dc_strbuf *b, int32_t c) {
    if (c == 0x130)
        return dc_strbuf_add(b, "i\xCC\x87", 3);
    return dc_strbuf_add_char(b, utf8proc_tolower(c));
}

/* Regex \w as the Rust regex crate has it (Alphabetic, marks, Nd, Pc, joiners),
 * by general category: what an added token's single_word looks at. */
static bool is_word_char(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_ND) || k == UTF8PROC_CATEGORY_NL ||
           k == UTF8PROC_CATEGORY_PC || c == 0x200C || c == 0x200D;
}

/* ---- hashing and files ---- */

uint64_t dc_text_hash(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 0x100000001B3ull;
    return h;
}

/* The file DIR/name when it exists (NULL and *n 0 when not); -1 when it
 * exists but cannot be read. */
static int read_optional(const char *dir, const char *name, char **text, size_t *n) {
    *text = NULL;
    *n = 0;
    char *path = dc_path_join(dir, name);
    struct stat st;
    int rc = 0;
    if (!path)
        return -1;
    if (stat(path, &st) == 0 && !(*text = dc_read_file(path, DC_TEXT_MAX_FILE_BYTES, n)))
        rc = -1;
    free(path);
    return rc;
}

int dc_text_read_folder(const char *dir, int n, const char *const names[], char *text[], size_t len[]) {
    for (int i = 0; i < n; i++) {
        text[i] = NULL;
        len[i] = 0;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return dc_fail("%s: not a folder", dir);
    for (int i = 0; i < n; i++)
        if (read_optional(dir, names[i], &text[i], &len[i]))
            return -1;
    return 0;
}

static cJSON *parse_optional(const char *text, size_t n, const char *what) {
    return text ? dc_json_parse(text, n, what) : NULL;
}

int dc_text_configs_parse(dc_text_configs *j, const char *where, const char *tok, size_t tok_n, const char *cfg,
                          size_t cfg_n) {
    memset(j, 0, sizeof *j);
    snprintf(j->tok_name, sizeof j->tok_name, "%s/tokenizer.json", where);
    snprintf(j->cfg_name, sizeof j->cfg_name, "%s/tokenizer_config.json", where);
    snprintf(j->map_name, sizeof j->map_name, "%s/special_tokens_map.json", where);
    j->tok = parse_optional(tok, tok_n, j->tok_name);
    j->cfg = parse_optional(cfg, cfg_n, j->cfg_name);
    if ((tok && !j->tok) || (cfg && !j->cfg))
        return -1;
    if (j->cfg && !cJSON_IsObject(j->cfg))
        return dc_fail("%s: not a JSON object", j->cfg_name);
    return 0;
}

void dc_text_configs_free(dc_text_configs *j) {
    cJSON_Delete(j->tok);
    cJSON_Delete(j->cfg);
    cJSON_Delete(j->map);
    memset(j, 0, sizeof *j);
}

/* ---- added tokens ---- */

int dc_added_parse(const cJSON *v, bool force_special, const char *where, dc_added_token *a) {
    memset(a, 0, sizeof *a);
    a->id = -1;
    const char *content = cJSON_IsString(v) ? v->valuestring : NULL;
    bool normalized_set = false;
    if (cJSON_IsObject(v)) {
        const cJSON *nz = cJSON_GetObjectItemCaseSensitive(v, "normalized");
        normalized_set = cJSON_IsBool(nz);
        if (dc_json_get_string(v, "content", where, &content) || dc_json_get_bool(v, "special", where, &a->special) ||
            dc_json_get_bool(v, "single_word", where, &a->single_word) ||
            dc_json_get_bool(v, "normalized", where, &a->normalized))
            return -1;
    }
    if (!content)
        return dc_fail("%s: a token is %s, not a string or {\"content\": ...}", where, dc_json_type(v));
    a->special |= force_special;
    if (!normalized_set)
        a->normalized = !a->special;
    if (!(a->content = strdup(content)))
        return dc_fail("%s: out of memory", where);
    return 0;
}

static const char *const NAMED[DC_N_NAMED] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                              "pad_token", "cls_token", "mask_token"};

void dc_added_read_named(dc_added_config *c, const cJSON *obj) {
    for (int i = 0; i < DC_N_NAMED; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, NAMED[i]);
        if (v && !cJSON_IsNull(v))
            c->named[i] = v;
    }
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(obj, "extra_special_tokens");
    if (!cJSON_IsArray(extra))
        extra = cJSON_GetObjectItemCaseSensitive(obj, "additional_special_tokens");
    if (cJSON_IsArray(extra))
        c->extra = extra;
}

const char *dc_added_named_content(const dc_added_config *c, int i) {
    const cJSON *v = c->named[i];
    return cJSON_IsString(v) ? v->valuestring
           : v               ? cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "content"))
                             : c->defaults[i];
}

const dc_added_token *dc_added_find(const dc_added_token *added, int n, const char *content) {
    for (int i = 0; i < n; i++)
        if (strcmp(added[i].content, content) == 0)
            return &added[i];
    return NULL;
}

void dc_added_free(dc_added_token *added, int n) {
    for (int i = 0; i < n; i++) {
        free(added[i].content);
        free(added[i].pattern);
    }
    free(added);
}

/* The list being built, and where new ids start. */
typedef struct added_list {
    dc_added_token *v;
    int n;
    int32_t next_id;
    dc_vocab_find_fn find;
    const void *ctx;
} added_list;

/* Add a parsed token (taking its content) as AddedVocabulary::add_tokens
 * does; an empty one is not added. */
static int add_token(added_list *l, dc_added_token *a, const char *where) {
    dc_added_token *old = (dc_added_token *)dc_added_find(l->v, l->n, a->content);
    if (!a->content[0] || old) {
        if (old) {
            a->id = old->id;
            free(old->content);
            *old = *a;
        } else {
            free(a->content);
        }
        return 0;
    }
    a->id = l->find(l->ctx, a->content);
    if (a->id < 0) {
        if (l->next_id == INT32_MAX)
            return dc_fail("%s: too many tokens", where);
        a->id = l->next_id++;
    }
    dc_added_token *grown = realloc(l->v, ((size_t)l->n + 1) * sizeof *grown);
    if (!grown)
        return dc_fail("%s: out of memory", where);
    l->v = grown;
    l->v[l->n++] = *a;
    return 0;
}

/* Parse then add; the content is freed when adding fails. */
static int parse_add(added_list *l, const cJSON *v, bool special, const char *where) {
    dc_added_token a;
    if (dc_added_parse(v, special, where, &a))
        return -1;
    if (add_token(l, &a, where)) {
        free(a.content);
        return -1;
    }
    return 0;
}

typedef struct keyed {
    double id;
    int index;
    const cJSON *entry;
} keyed;

static int cmp_keyed(const void *a, const void *b) {
    const keyed *x = a, *y = b;
    if (x->id != y->id)
        return x->id > y->id ? 1 : -1;
    return (x->index > y->index) - (x->index < y->index);
}

/* The decoder's entries by declared id, the later of two with one id. */
static int add_decoder(added_list *l, const dc_added_config *c, const char *where) {
    int count = cJSON_GetArraySize(c->decoder), i = 0, rc = 0;
    keyed *k = calloc((size_t)count + 1, sizeof *k);
    if (!k)
        return dc_fail("%s: out of memory", where);
    for (const cJSON *e = c->decoder ? c->decoder->child : NULL; e && rc == 0; e = e->next, i++) {
        char *end = NULL;
        double id = c->decoder_is_list ? cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "id"))
                                       : strtod(e->string, &end);
        if (id != id || id < 0 || id > INT32_MAX || id != (double)(int64_t)id || (end && (*end || end == e->string)))
            rc = dc_fail("%s: added token %d has no id", where, i);
        k[i] = (keyed){id, i, e};
    }
    if (rc == 0)
        qsort(k, (size_t)count, sizeof *k, cmp_keyed);
    for (i = 0; i < count && rc == 0; i++)
        if (i + 1 == count || k[i + 1].id != k[i].id)
            rc = parse_add(l, k[i].entry, false, where);
    free(k);
    return rc;
}

/* A named token: the decoder's own when the decoder holds its content
 * (transformers maps it to that one), else as written. */
static int add_named(added_list *l, const dc_added_config *c, int n_decoder, int i, const char *where) {
    const char *content = dc_added_named_content(c, i);
    if (!content && (c->named[i] || c->defaults[i]))
        return dc_fail("%s: %s is %s, not a string or {\"content\": \"...\"}", where, NAMED[i],
                       dc_json_type(c->named[i]));
    if (!content)
        return 0;
    dc_added_token *old = (dc_added_token *)dc_added_find(l->v, n_decoder, content);
    if (old) {
        old->special = true;
        return 0;
    }
    cJSON *dflt = c->named[i] ? NULL : cJSON_CreateString(content);
    if (!c->named[i] && !dflt)
        return dc_fail("%s: out of memory", where);
    int rc = parse_add(l, c->named[i] ? c->named[i] : dflt, true, where);
    cJSON_Delete(dflt);
    return rc;
}

int dc_added_build(const dc_added_config *c, int64_t n_vocab, dc_vocab_find_fn find, const void *ctx,
                   const char *where, dc_added_token **added, int *n) {
    added_list l = {NULL, 0, (int32_t)n_vocab, find, ctx};
    int rc = add_decoder(&l, c, where);
    int n_decoder = l.n;
    for (int i = 0; i < DC_N_NAMED && rc == 0; i++)
        rc = add_named(&l, c, n_decoder, i, where);
    for (const cJSON *e = c->extra ? c->extra->child : NULL; e && rc == 0; e = e->next)
        rc = parse_add(&l, e, true, where);
    if (rc) {
        dc_added_free(l.v, l.n);
        return -1;
    }
    *added = l.v;
    *n = l.n;
    return 0;
}

/* The longest added token of the kind (normalized or not) that s starts with. */
static const dc_added_token *match_added(const dc_added_token *added, int n_added, bool normalized, const char *s,
                                         size_t n) {
    const dc_added_token *best = NULL;
    size_t best_n = 0;
    for (int i = 0; i < n_added; i++) {
        const dc_added_token *a = &added[i];
        size_t m = strlen(a->pattern);
        if (a->normalized == normalized && m > best_n && m <= n && memcmp(s, a->pattern, m) == 0) {
            best = a;
            best_n = m;
        }
    }
    return best;
}

static bool word_before(const char *s, size_t at) {
    int32_t c;
    return at > 0 && (dc_utf8_next(s + dc_utf8_prev(s, at), at - dc_utf8_prev(s, at), &c), is_word_char(c));
}

static bool word_after(const char *s, size_t n) {
    int32_t c;
    return n > 0 && (dc_utf8_next(s, n, &c), is_word_char(c));
}

int dc_added_split(const dc_added_token *added, int n_added, bool normalized, const char *s, size_t n,
                   dc_added_rest_fn rest, const void *ctx, dc_idbuf *ids) {
    size_t done = 0;
    for (size_t pos = 0; pos < n;) {
        const dc_added_token *a = match_added(added, n_added, normalized, s + pos, n - pos);
        if (!a) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + strlen(a->pattern);
        pos = stop;
        if (a->single_word && (word_before(s, start) || word_after(s + stop, n - stop)))
            continue;
        if ((start > done && rest(ctx, s + done, start - done, ids)) || dc_idbuf_add(ids, a->id))
            return -1;
        done = stop;
    }
    return n > done ? rest(ctx, s + done, n - done, ids) : 0;
}

int dc_added_read_configs(dc_added_config *c, dc_text_configs *j, const char *const defaults[DC_N_NAMED],
                          const char *map, size_t map_n) {
    memcpy(c->defaults, defaults, sizeof c->defaults);
    dc_added_read_named(c, j->cfg);
    c->decoder = cJSON_GetObjectItemCaseSensitive(j->cfg, "added_tokens_decoder");
    if (c->decoder && !cJSON_IsObject(c->decoder))
        return dc_fail("%s: added_tokens_decoder is %s, not an object", j->cfg_name, dc_json_type(c->decoder));
    if (c->decoder)
        return 0;
    if (map && !(j->map = dc_json_parse(map, map_n, j->map_name)))
        return -1;
    if (j->map && !cJSON_IsObject(j->map))
        return dc_fail("%s: not a JSON object", j->map_name);
    dc_added_read_named(c, j->map);
    c->decoder = cJSON_GetObjectItemCaseSensitive(j->tok, "added_tokens");
    c->decoder_is_list = true;
    if (c->decoder && !cJSON_IsArray(c->decoder))
        return dc_fail("%s: added_tokens is %s, not a list", j->tok_name, dc_json_type(c->decoder));
    return 0;
}

/* ---- vocab ---- */

int32_t dc_vocab_find(const dc_vocab *v, const char *prefix, const char *s, size_t n) {
    size_t np = strlen(prefix);
    uint64_t h = dc_text_hash(dc_text_hash(DC_TEXT_HASH_SEED, prefix, np), s, n);
    for (uint64_t i = h & v->table_mask;; i = (i + 1) & v->table_mask) {
        int32_t id = v->table[i];
        if (id < 0)
            return -1;
        const char *t = v->vocab[id];
        if (strncmp(t, prefix, np) == 0 && strlen(t + np) == n && memcmp(t + np, s, n) == 0)
            return id;
    }
}

int32_t dc_vocab_token_id(const dc_vocab *v, const char *token) {
    const dc_added_token *a = dc_added_find(v->added, v->n_added, token);
    return a ? a->id : dc_vocab_find(v, "", token, strlen(token));
}

const char *dc_vocab_token(const dc_vocab *v, int32_t id) { return id >= 0 && id < v->size ? v->tokens[id] : NULL; }

int dc_vocab_from_json(dc_vocab *v, const cJSON *vocab, const char *where) {
    if (!cJSON_IsObject(vocab))
        return dc_fail("%s: the vocab is %s, not a {token: id} object", where, dc_json_type(vocab));
    int64_t count = cJSON_GetArraySize(vocab);
    if (count == 0)
        return dc_fail("%s: the vocab is empty", where);
    if (!(v->vocab = calloc((size_t)count + 1, sizeof *v->vocab)))
        return dc_fail("%s: out of memory", where);
    v->n_vocab = count;
    for (const cJSON *e = vocab->child; e; e = e->next) {
        double id = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (!(id >= 0 && id < (double)count) || id != (double)(int64_t)id)
            return dc_fail("%s: the vocab's \"%s\" is not an id in 0..%lld", where, e->string, (long long)count - 1);
        if (v->vocab[(int64_t)id])
            return dc_fail("%s: the vocab gives id %lld twice", where, (long long)id);
        if (!(v->vocab[(int64_t)id] = strdup(e->string)))
            return dc_fail("%s: out of memory", where);
    }
    return 0;
}

int dc_vocab_index(dc_vocab *v, const char *where) {
    uint64_t cap = 16;
    while (cap < 2 * (uint64_t)v->n_vocab)
        cap *= 2;
    if (!(v->table = malloc(cap * sizeof *v->table)))
        return dc_fail("%s: out of memory", where);
    memset(v->table, 0xFF, cap * sizeof *v->table);
    v->table_mask = cap - 1;
    for (int64_t id = 0; id < v->n_vocab; id++) {
        const char *t = v->vocab[id];
        int32_t other = dc_vocab_find(v, "", t, strlen(t));
        if (other >= 0)
            return dc_fail("%s: the vocab has the token \"%s\" twice (ids %d and %lld)", where, t, other,
                           (long long)id);
        uint64_t i = dc_text_hash(DC_TEXT_HASH_SEED, t, strlen(t)) & v->table_mask;
        while (v->table[i] >= 0)
            i = (i + 1) & v->table_mask;
        v->table[i] = (int32_t)id;
    }
    return 0;
}

static int32_t find_in_vocab(const void *ctx, const char *token) {
    return dc_vocab_find(ctx, "", token, strlen(token));
}

/* Normalised added tokens are matched in normalised text: their own
 * content normalised. */
static int added_patterns(dc_vocab *v, dc_normalize_fn normalize, const void *ctx) {
    for (int i = 0; i < v->n_added; i++) {
        dc_added_token *a = &v->added[i];
        dc_strbuf p = {0};
        size_t n = strlen(a->content);
        if (a->normalized ? normalize(ctx, a->content, n, &p) : dc_strbuf_add(&p, a->content, n))
            return -1;
        a->pattern = p.p;
    }
    return 0;
}

int dc_vocab_finish(dc_vocab *v, const dc_added_config *c, dc_normalize_fn normalize, const void *ctx,
                    const char *added_where, const char *where, int32_t named[DC_N_NAMED]) {
    if (dc_added_build(c, v->n_vocab, find_in_vocab, v, added_where, &v->added, &v->n_added))
        return -1;
    if (added_patterns(v, normalize, ctx))
        return dc_fail_prefix(where);
    v->size = v->n_vocab;
    for (int i = 0; i < v->n_added; i++)
        if (v->added[i].id >= v->size)
            v->size = (int64_t)v->added[i].id + 1;
    v->tokens = calloc((size_t)v->size + 1, sizeof *v->tokens);
    v->special = calloc((size_t)v->size + 1, sizeof *v->special);
    if (!v->tokens || !v->special)
        return dc_fail("%s: out of memory", where);
    for (int64_t i = 0; i < v->n_vocab; i++)
        v->tokens[i] = v->vocab[i];
    for (int i = 0; i < v->n_added; i++)
        v->tokens[v->added[i].id] = v->added[i].content;
    for (int64_t id = 0; id < v->size; id++) { /* tokenizers asks by content */
        const dc_added_token *a = v->tokens[id] ? dc_added_find(v->added, v->n_added, v->tokens[id]) : NULL;
        v->special[id] = a && a->special;
    }
    for (int i = 0; i < DC_N_NAMED; i++) {
        const char *name = dc_added_named_content(c, i);
        named[i] = name ? dc_vocab_token_id(v, name) : -1;
    }
    return 0;
}

/* What the text between non-normalised added tokens goes through. */
typedef struct encode_ctx {
    const dc_vocab *v;
    dc_normalize_fn normalize;
    dc_added_rest_fn words;
    const void *ctx;
} encode_ctx;

/* Text between non-normalised added tokens: normalise, then split at the
 * normalised ones. */
static int encode_raw_piece(const void *ctx, const char *s, size_t n, dc_idbuf *ids) {
    const encode_ctx *e = ctx;
    dc_strbuf norm = {0};
    int rc = e->normalize(e->ctx, s, n, &norm);
    if (rc == 0)
        rc = dc_added_split(e->v->added, e->v->n_added, true, norm.p, norm.n, e->words, e->ctx, ids);
    free(norm.p);
    return rc;
}

int dc_vocab_encode(const dc_vocab *v, const char *text, bool add_special, int32_t first, int32_t last,
                    dc_normalize_fn normalize, dc_added_rest_fn words, const void *ctx, int32_t **ids, int64_t *n) {
    *ids = NULL;
    *n = 0;
    encode_ctx e = {v, normalize, words, ctx};
    dc_strbuf s = {0};
    dc_idbuf out = {0};
    if (dc_utf8_sanitize(text, strlen(text), &s) || (add_special && dc_idbuf_add(&out, first)) ||
        dc_added_split(v->added, v->n_added, false, s.p, s.n, encode_raw_piece, &e, &out) ||
        (add_special && dc_idbuf_add(&out, last)) || dc_idbuf_add(&out, 0)) {
        free(s.p);
        free(out.p);
        return -1;
    }
    free(s.p);
    *ids = out.p;
    *n = out.n - 1;
    return 0;
}

void dc_vocab_free(dc_vocab *v) {
    for (int64_t i = 0; i < v->n_vocab; i++)
        free(v->vocab[i]);
    dc_added_free(v->added, v->n_added);
    free(v->vocab);
    free(v->table);
    free(v->tokens);
    free(v->special);
}
