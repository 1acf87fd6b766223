/* The CLIP BPE tokenizer against transformers' CLIPTokenizer
 * (scripts/make_clip_tokenizer_fixtures.py): ids with bos/eos, ids padded and
 * truncated to 77 as the Stable Diffusion pipelines ask, and decodes of a
 * corpus (prompts, Unicode, accents, CJK, emoji, punctuation runs, long
 * words, over-long prompts, empty and blank text, the special tokens inside
 * text, contractions, upper case) and of random ids, with the real CLIP
 * vocabulary in the SD-1.x and SD-2.x ("!" as pad) tokenizer/ folders, and
 * with a tiny BPE in the hub layout and as transformers 5 saves it.
 * Properties: vocab words round-trip, max_length truncation and padding,
 * invalid UTF-8 reads as U+FFFD; missing, truncated, malformed and
 * disagreeing files are one error each. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/text/bpe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <zlib.h>

#define FIXTURES "tests/fixtures/"
#define N_MERGES 48894

static cJSON *expected_layout(cJSON *all, const char *folder) {
    const cJSON *layouts = cJSON_GetObjectItem(all, "layouts");
    for (cJSON *l = layouts ? layouts->child : NULL; l; l = l->next)
        if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(l, "folder")), folder) == 0)
            return l;
    ck_abort_msg("no layout %s in the fixture", folder);
    return NULL;
}

static void assert_ids(const int32_t *got, int64_t n, const cJSON *want, const char *text, const char *what) {
    ck_assert_msg(n == cJSON_GetArraySize(want), "\"%s\" (%s): %lld ids, transformers %d", text, what, (long long)n,
                  cJSON_GetArraySize(want));
    int64_t i = 0;
    for (const cJSON *w = want->child; w; w = w->next, i++)
        ck_assert_msg(got[i] == w->valueint, "\"%s\" (%s): id %lld is %d, transformers %d", text, what, (long long)i,
                      got[i], w->valueint);
}

static int32_t *ids_of(const cJSON *list, int64_t *n) {
    *n = cJSON_GetArraySize(list);
    int32_t *ids = malloc(((size_t)*n + 1) * sizeof *ids);
    int64_t i = 0;
    for (const cJSON *w = list->child; w; w = w->next)
        ids[i++] = w->valueint;
    return ids;
}

static void assert_decode(const dc_bpe *t, const cJSON *case_, const char *what) {
    int64_t n;
    int32_t *ids = ids_of(cJSON_GetObjectItem(case_, "ids"), &n);
    for (int skip = 0; skip < 2; skip++) {
        char *text;
        ck_assert_int_eq(dc_bpe_decode(t, ids, n, skip, &text), 0);
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(case_, skip ? "decoded" : "decoded_raw"));
        ck_assert_msg(strcmp(text, want) == 0, "%s (skip_special %d): \"%s\", transformers \"%s\"", what, skip, text,
                      want);
        free(text);
    }
    free(ids);
}

static void check_case(const dc_bpe *t, const cJSON *c) {
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
    int32_t *ids, padded[77];
    int64_t n, n_real;
    ck_assert_int_eq(dc_bpe_encode(t, text, true, &ids, &n), 0);
    assert_ids(ids, n, cJSON_GetObjectItem(c, "ids"), text, "ids");
    free(ids);
    ck_assert_msg(dc_bpe_encode_padded(t, text, 0, padded, &n_real) == 0, "%s", dc_error());
    assert_ids(padded, 77, cJSON_GetObjectItem(c, "ids_padded"), text, "padded to 77");
    ck_assert_int_eq(n_real, n < 77 ? n : 77);
    assert_decode(t, c, text);
}

/* Everything transformers recorded for one folder. */
static void check_layout(const char *dir, const cJSON *want) {
    dc_bpe *t;
    ck_assert_msg(dc_bpe_load(&t, dir) == 0, "%s", dc_error());
    const dc_bpe_info *info = dc_bpe_get_info(t);
    ck_assert_int_eq(info->size, cJSON_GetObjectItem(want, "size")->valueint);
    const char *keys[] = {"bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"};
    const int32_t got[] = {info->bos, info->eos, info->pad, info->unk};
    for (int i = 0; i < 4; i++)
        ck_assert_msg(got[i] == cJSON_GetObjectItem(want, keys[i])->valueint, "%s: %s", dir, keys[i]);
    ck_assert_int_eq(info->model_max_length, 77);
    ck_assert_int_eq(dc_bpe_token_id(t, "<|startoftext|>"), info->bos);
    ck_assert_str_eq(dc_bpe_token(t, info->eos), "<|endoftext|>");
    for (const cJSON *c = cJSON_GetObjectItem(want, "cases")->child; c; c = c->next)
        check_case(t, c);
    for (const cJSON *d = cJSON_GetObjectItem(want, "decodes")->child; d; d = d->next)
        assert_decode(t, d, "random ids");
    dc_bpe_free(t);
}

static void check_fixture(const char *folder, const char *dir) {
    cJSON *all = dc_json_load(FIXTURES "clip_expected.json");
    ck_assert_msg(all != NULL, "%s", dc_error());
    check_layout(dir, expected_layout(all, folder));
    cJSON_Delete(all);
}

/* ---- the real vocabulary, rebuilt from the committed merges ---- */

/* GPT-2's bytes_to_unicode: the printable bytes as themselves, the others
 * as 256, 257, ... in byte order. */
static int32_t byte_char(int b) {
    static int32_t table[256];
    if (!table['!']) {
        int32_t next = 256;
        for (int x = 0; x < 256; x++)
            table[x] = (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE) ? x : next++;
    }
    return table[b];
}

static void add_token(cJSON *vocab, int *next_id, const char *token) {
    ck_assert_ptr_nonnull(cJSON_AddNumberToObject(vocab, token, (*next_id)++));
}

/* vocab.json as OpenAI's simple_tokenizer and CLIP's files build it from
 * the merges: the 256 byte characters in bytes_to_unicode order (printable
 * first), the same with "</w>", each merge's result, then the two specials. */
static char *vocab_from_merges(const char *merges) {
    cJSON *vocab = cJSON_CreateObject();
    int order[256], n = 0, id = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int b = 0; b < 256; b++)
            if ((byte_char(b) == b) == (pass == 0))
                order[n++] = b;
    for (int eow = 0; eow < 2; eow++)
        for (int i = 0; i < 256; i++) {
            char s[16] = {0};
            int len = (int)utf8proc_encode_char(byte_char(order[i]), (uint8_t *)s);
            strcpy(s + len, eow ? "</w>" : "");
            add_token(vocab, &id, s);
        }
    const char *line = strchr(merges, '\n') + 1; /* after "#version: 0.2" */
    for (int i = 0; i < N_MERGES; i++) {
        const char *eol = strchr(line, '\n'), *sp = strchr(line, ' ');
        char s[256];
        snprintf(s, sizeof s, "%.*s%.*s", (int)(sp - line), line, (int)(eol - sp - 1), sp + 1);
        add_token(vocab, &id, s);
        line = eol + 1;
    }
    add_token(vocab, &id, "<|startoftext|>");
    add_token(vocab, &id, "<|endoftext|>");
    ck_assert_int_eq(id, 49408);
    char *text = cJSON_PrintUnformatted(vocab);
    cJSON_Delete(vocab);
    return text;
}

static char *gunzip(const char *path, size_t *n) {
    gzFile f = gzopen(path, "rb");
    ck_assert_msg(f != NULL, "%s: cannot open", path);
    size_t cap = 1 << 20;
    char *buf = malloc(cap + 1);
    *n = 0;
    int got;
    while ((got = gzread(f, buf + *n, (unsigned)(cap - *n))) > 0)
        if ((*n += (size_t)got) == cap)
            buf = realloc(buf, (cap *= 2) + 1);
    ck_assert_int_eq(got, 0);
    gzclose(f);
    buf[*n] = '\0';
    return buf;
}

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *text = tu_read_file(from, 1 << 24, &n);
    ck_assert_msg(dc_write_file(to, text, n, false) == 0, "%s", dc_error());
    free(text);
}

/* A temp folder as the hub's tokenizer/: vocab.json, merges.txt and the
 * configs of clip_real/<sd>. */
static void write_real_folder(const char *sd) {
    size_t n;
    char *merges = gunzip(FIXTURES "clip_real/merges.txt.gz", &n), *vocab = vocab_from_merges(merges), from[256];
    tu_mkdtemp("clip");
    ck_assert_int_eq(dc_write_file(tu_path("merges.txt"), merges, n, false), 0);
    ck_assert_int_eq(dc_write_file(tu_path("vocab.json"), vocab, strlen(vocab), false), 0);
    const char *configs[] = {"tokenizer_config.json", "special_tokens_map.json"};
    for (int i = 0; i < 2; i++) {
        snprintf(from, sizeof from, FIXTURES "clip_real/%s/%s", sd, configs[i]);
        copy_file(from, tu_path(configs[i]));
    }
    free(merges);
    free(vocab);
}

static void check_real(const char *sd) {
    char folder[64];
    snprintf(folder, sizeof folder, "clip_real/%s", sd);
    write_real_folder(sd);
    check_fixture(folder, tu_path(""));
    tu_rmtemp();
}

START_TEST(test_sd1_real_vocab) { check_real("sd1"); }
END_TEST

START_TEST(test_sd2_real_vocab_pads_with_bang) { check_real("sd2"); }
END_TEST

START_TEST(test_tiny_hub_layout) { check_fixture("clip_tiny", FIXTURES "clip_tiny"); }
END_TEST

START_TEST(test_tiny_saved_by_transformers5) { check_fixture("clip_tiny_v5", FIXTURES "clip_tiny_v5"); }
END_TEST

/* ---- properties ---- */

/* Random prompts of whole-word vocab tokens ("cat</w>"): each word is its
 * own id, and decode gives the prompt back. */
START_TEST(test_whole_words_round_trip) {
    write_real_folder("sd1");
    dc_bpe *t;
    ck_assert_msg(dc_bpe_load(&t, tu_path("")) == 0, "%s", dc_error());
    static int32_t words[40000];
    int n_words = 0;
    for (int32_t id = 0; id < dc_bpe_get_info(t)->size; id++) {
        const char *tok = dc_bpe_token(t, id);
        size_t len = strlen(tok);
        bool plain = len > 4 && strcmp(tok + len - 4, "</w>") == 0;
        for (size_t i = 0; plain && i < len - 4; i++)
            plain = tok[i] >= 'a' && tok[i] <= 'z';
        if (plain)
            words[n_words++] = id;
    }
    ck_assert_int_gt(n_words, 10000);
    for (int trial = 0; trial < 300; trial++) {
        int32_t want[40];
        char text[40 * 64] = "";
        int n = 1 + (int)(tu_next() % 40);
        for (int i = 0; i < n; i++) {
            want[i] = words[tu_next() % (uint64_t)n_words];
            const char *tok = dc_bpe_token(t, want[i]);
            snprintf(text + strlen(text), sizeof text - strlen(text), "%s%.*s", i ? " " : "", (int)strlen(tok) - 4,
                     tok);
        }
        int32_t *ids;
        int64_t m;
        char *back;
        ck_assert_int_eq(dc_bpe_encode(t, text, false, &ids, &m), 0);
        ck_assert_msg(m == n, "\"%s\": %lld ids for %d words", text, (long long)m, n);
        ck_assert_mem_eq(ids, want, (size_t)n * sizeof *ids);
        ck_assert_int_eq(dc_bpe_decode(t, ids, m, true, &back), 0);
        ck_assert_str_eq(back, text);
        free(back);
        free(ids);
    }
    dc_bpe_free(t);
    tu_rmtemp();
}
END_TEST

/* Other max_lengths: bos, the first max_length - 2 ids, eos, then pad. */
START_TEST(test_padding_and_truncation) {
    dc_bpe *t;
    ck_assert_int_eq(dc_bpe_load(&t, FIXTURES "clip_tiny"), 0);
    const dc_bpe_info *info = dc_bpe_get_info(t);
    char text[512] = "";
    int n_words = 1 + (int)(tu_next() % 30);
    for (int i = 0; i < n_words; i++)
        strcat(text, tu_next() % 2 ? "cat " : "riding horse, ");
    int32_t *ids, padded[77];
    int64_t n, n_real;
    ck_assert_int_eq(dc_bpe_encode(t, text, true, &ids, &n), 0);
    for (int64_t len = 2; len <= 64; len++) {
        ck_assert_int_eq(dc_bpe_encode_padded(t, text, len, padded, &n_real), 0);
        int64_t keep = n - 2 < len - 2 ? n - 2 : len - 2;
        ck_assert_int_eq(n_real, keep + 2);
        ck_assert_int_eq(padded[0], info->bos);
        ck_assert_mem_eq(padded + 1, ids + 1, (size_t)keep * sizeof *ids);
        ck_assert_int_eq(padded[keep + 1], info->eos);
        for (int64_t i = keep + 2; i < len; i++)
            ck_assert_int_eq(padded[i], info->pad);
    }
    dc_clear_error();
    ck_assert_int_eq(dc_bpe_encode_padded(t, text, 1, padded, NULL), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "max_length 1"));
    dc_bpe_free(t);
    ck_assert_int_eq(dc_bpe_load(&t, FIXTURES "clip_tiny_v5"), 0); /* its config says 77 */
    ck_assert_int_eq(dc_bpe_encode_padded(t, text, 0, padded, &n_real), 0);
    free(ids);
    dc_bpe_free(t);
}
END_TEST

/* Bytes that are not UTF-8 read as U+FFFD, one per byte. */
START_TEST(test_invalid_utf8) {
    dc_bpe *t;
    ck_assert_int_eq(dc_bpe_load(&t, FIXTURES "clip_tiny"), 0);
    const char *bad[] = {"ca\xfft \xc3", "\xed\xa0\x80\x64og", "\x80\x80 park"};
    const char *clean[] = {"ca\xef\xbf\xbdt \xef\xbf\xbd", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\x64og",
                           "\xef\xbf\xbd\xef\xbf\xbd park"};
    for (int i = 0; i < 3; i++) {
        int32_t *a, *b;
        int64_t na, nb;
        ck_assert_int_eq(dc_bpe_encode(t, bad[i], true, &a, &na), 0);
        ck_assert_int_eq(dc_bpe_encode(t, clean[i], true, &b, &nb), 0);
        ck_assert_int_eq(na, nb);
        ck_assert_mem_eq(a, b, (size_t)na * sizeof *a);
        free(a);
        free(b);
    }
    int32_t junk[] = {-5, 1 << 30, (int32_t)dc_bpe_get_info(t)->size};
    char *text;
    ck_assert_int_eq(dc_bpe_decode(t, junk, 3, false, &text), 0);
    ck_assert_str_eq(text, "");
    free(text);
    dc_bpe_free(t);
}
END_TEST

/* ---- bad files ---- */

static void write_text(const char *name, const char *text) {
    FILE *f = fopen(tu_path(name), "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    ck_assert_int_eq(fclose(f), 0);
}

static void assert_load_fails(const char *want) {
    dc_bpe *t = (dc_bpe *)1;
    dc_clear_error();
    int rc = dc_bpe_load(&t, tu_path(""));
    ck_assert_msg(rc == -1, "loaded where \"%s\" was wanted", want);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(dc_error(), want) != NULL, "error \"%s\" lacks \"%s\"", dc_error(), want);
}

static const char *VOCAB = "{\"a\": 0, \"b\": 1, \"a</w>\": 2, \"b</w>\": 3, \"ab</w>\": 4, \"<|endoftext|>\": 5}";

START_TEST(test_bad_files) {
    tu_mkdtemp("clip");
    assert_load_fails("neither tokenizer.json nor vocab.json");
    write_text("vocab.json", VOCAB);
    assert_load_fails("merges.txt is missing");
    write_text("merges.txt", "#version: 0.2\na b</w>\n");
    remove(tu_path("vocab.json"));
    assert_load_fails("vocab.json is missing");
    write_text("vocab.json", "{\"a\": 0, ");
    assert_load_fails("vocab.json");
    write_text("vocab.json", "[\"a\"]");
    assert_load_fails("not a {token: id} object");
    write_text("vocab.json", "{}");
    assert_load_fails("the vocab is empty");
    write_text("vocab.json", "{\"a\": 0, \"b\": 7}");
    assert_load_fails("not an id in 0..1");
    write_text("vocab.json", "{\"a\": 0, \"b\": 0}");
    assert_load_fails("gives id 0 twice");
    write_text("vocab.json", "{\"a\": 0, \"b\": NaN}"); /* no float-to-int of a NaN (UBSan) */
    assert_load_fails("not an id");
    write_text("vocab.json", "{\"a\": 0, \"b\": \"1\"}");
    assert_load_fails("not an id");
    write_text("vocab.json", VOCAB);
    write_text("merges.txt", "#version: 0.2\na c</w>\n");
    assert_load_fails("merge 1: \"c</w>\" is not in the vocab");
    write_text("merges.txt", "#version: 0.2\nb a\n");
    assert_load_fails("merge 1: \"ba\" is not in the vocab");
    write_text("merges.txt", "#version: 0.2\na b</w>\na  b\n");
    assert_load_fails("merge 2 is \"a  b\", not two tokens");
    write_text("merges.txt", "a b</w>\n\n");
    assert_load_fails("merge 2 is \"\", not two tokens");
    write_text("merges.txt", "a b</w> x\n");
    assert_load_fails("not two tokens");
    write_text("merges.txt", "a b</w>\r\n");
    write_text("vocab.json", "{\"a\": 0, \"b\": 1, \"a</w>\": 2, \"b</w>\": 3, \"ab</w>\": 4}");
    assert_load_fails("unknown token is not in the vocab");
    write_text("vocab.json", VOCAB);
    write_text("tokenizer_config.json", "[1]");
    assert_load_fails("not a JSON object");
    write_text("tokenizer_config.json", "{\"model_max_length\": \"77\"}");
    assert_load_fails("model_max_length");
    write_text("tokenizer_config.json", "{\"added_tokens_decoder\": {\"x\": {\"content\": \"<x>\"}}}");
    assert_load_fails("has no id");
    write_text("tokenizer_config.json", "{\"added_tokens_decoder\": [1]}");
    assert_load_fails("added_tokens_decoder is an array, not an object");
    write_text("tokenizer_config.json", "{\"bos_token\": [\"<s>\"]}");
    assert_load_fails("not a string");
    write_text("tokenizer_config.json", "{\"unk_token\": \"<unk>\"}");
    assert_load_fails("unknown token is not in the vocab");
    write_text("tokenizer_config.json", "{\"pad_token\": \"\"}");
    assert_load_fails("the pad token is empty");
    write_text("tokenizer_config.json", "{\"model_max_length\": 77");
    assert_load_fails("tokenizer_config.json");
    remove(tu_path("tokenizer_config.json"));
    write_text("special_tokens_map.json", "\"x\"");
    assert_load_fails("special_tokens_map.json: not a JSON object");
    remove(tu_path("special_tokens_map.json"));
    write_text("tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}");
    assert_load_fails("is not BPE");
    write_text("tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": {}}}");
    assert_load_fails("model.merges is an object, not a list");
    write_text("tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [[\"a\", 1]]}}");
    assert_load_fails("merge 1 is an array, not \"a b\" or [a, b]");
    write_text("tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}");
    assert_load_fails("merge 1: \"ab\" is not in the vocab");
    write_text("tokenizer.json", "{\"model\": {}}");
    assert_load_fails("the vocab is null, not a {token: id} object");
    /* a whole tokenizer.json cut short at every 997th byte */
    size_t n;
    char *full = tu_read_file(FIXTURES "clip_tiny_v5/tokenizer.json", 1 << 24, &n);
    for (size_t cut = 0; cut < n; cut += 997) {
        FILE *f = fopen(tu_path("tokenizer.json"), "wb");
        ck_assert_uint_eq(fwrite(full, 1, cut, f), cut);
        fclose(f);
        assert_load_fails("tokenizer.json");
    }
    free(full);
    /* no model_max_length: padding needs a length */
    remove(tu_path("tokenizer.json"));
    write_text("vocab.json", VOCAB);
    write_text("merges.txt", "#version: 0.2\na b</w>\n");
    dc_bpe *t;
    int32_t ids[4];
    ck_assert_msg(dc_bpe_load(&t, tu_path("")) == 0, "%s", dc_error());
    ck_assert_int_eq(dc_bpe_encode_padded(t, "ab", 4, ids, NULL), 0);
    ck_assert_int_eq(ids[1], 4);
    ck_assert_int_eq(dc_bpe_encode_padded(t, "ab", 0, ids, NULL), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "no model_max_length"));
    dc_bpe_free(t);
    tu_rmtemp();
}
END_TEST

int main(void) {
    Suite *s = suite_create("bpe");
    TCase *tc = tu_tcase(s, "transformers", 120);
    tcase_add_test(tc, test_sd1_real_vocab);
    tcase_add_test(tc, test_sd2_real_vocab_pads_with_bang);
    tcase_add_test(tc, test_tiny_hub_layout);
    tcase_add_test(tc, test_tiny_saved_by_transformers5);
    tc = tu_tcase(s, "properties", 120);
    tcase_add_test(tc, test_whole_words_round_trip);
    tcase_add_test(tc, test_padding_and_truncation);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_bad_files);
    return tu_run(s);
}
