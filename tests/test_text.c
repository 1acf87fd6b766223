/* The WordPiece tokenizer against transformers' BertTokenizer
 * (scripts/make_text_fixtures.py): ids and decodes of a corpus of Unicode,
 * accents, CJK, emoji, control characters, punctuation runs, long words and
 * special tokens, in three folder layouts (tokenizer.json + vocab.txt as on
 * the hub, tokenizer.json alone as transformers 5 saves, vocab.txt alone with
 * other flags, and lower-casing kept apart from accent stripping); vocab.txt and tokenizer.json of one vocab agree; random
 * sentences of whole vocab words round-trip; invalid UTF-8 reads as nothing;
 * missing, truncated and malformed files are one error each. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/fileio.h"
#include "data/text/wordpiece.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define FIXTURES "tests/fixtures/"

static cJSON *expected_layout(cJSON *all, const char *folder) {
    const cJSON *layouts = cJSON_GetObjectItem(all, "layouts");
    for (cJSON *l = layouts ? layouts->child : NULL; l; l = l->next)
        if (strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(l, "folder")), folder) == 0)
            return l;
    ck_abort_msg("no layout %s in the fixture", folder);
    return NULL;
}

static void assert_ids(const int32_t *got, int64_t n, const cJSON *want, const char *text) {
    ck_assert_msg(n == cJSON_GetArraySize(want), "\"%s\": %lld ids, transformers %d", text, (long long)n,
                  cJSON_GetArraySize(want));
    int64_t i = 0;
    for (const cJSON *w = want->child; w; w = w->next, i++)
        ck_assert_msg(got[i] == w->valueint, "\"%s\": id %lld is %d, transformers %d", text, (long long)i, got[i],
                      w->valueint);
}

static int32_t *ids_of(const cJSON *list, int64_t *n) {
    *n = cJSON_GetArraySize(list);
    int32_t *ids = malloc(((size_t)*n + 1) * sizeof *ids);
    int64_t i = 0;
    for (const cJSON *w = list->child; w; w = w->next)
        ids[i++] = w->valueint;
    return ids;
}

static void assert_decode(const dc_wordpiece *t, const cJSON *case_, const char *ids_key, const char *what) {
    int64_t n;
    int32_t *ids = ids_of(cJSON_GetObjectItem(case_, ids_key), &n);
    for (int skip = 0; skip < 2; skip++) {
        char *text;
        ck_assert_int_eq(dc_wordpiece_decode(t, ids, n, skip, &text), 0);
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(case_, skip ? "decoded" : "decoded_raw"));
        ck_assert_msg(strcmp(text, want) == 0, "%s (skip_special %d): \"%s\", transformers \"%s\"", what, skip,
                      text, want);
        free(text);
    }
    free(ids);
}

/* Everything transformers recorded for one folder. */
static void check_layout(const char *dir, const cJSON *want) {
    dc_wordpiece *t;
    ck_assert_msg(dc_wordpiece_load(&t, dir) == 0, "%s", dc_error());
    const dc_wordpiece_info *info = dc_wordpiece_get_info(t);
    ck_assert_int_eq(info->size, cJSON_GetObjectItem(want, "size")->valueint);
    const char *keys[] = {"bos_token_id", "cls_token_id", "sep_token_id", "pad_token_id", "unk_token_id", "mask_token_id"};
    const int32_t got[] = {info->bos, info->cls, info->sep, info->pad, info->unk, info->mask};
    for (int i = 0; i < 6; i++)
        ck_assert_msg(got[i] == cJSON_GetObjectItem(want, keys[i])->valueint, "%s: %s", dir, keys[i]);
    ck_assert_int_eq(info->eos, -1);
    const cJSON *ml = cJSON_GetObjectItem(want, "model_max_length");
    ck_assert_int_eq(info->model_max_length, cJSON_IsNumber(ml) ? ml->valueint : 0);
    ck_assert_int_eq(dc_wordpiece_token_id(t, "[DEC]"), info->bos);
    ck_assert_str_eq(dc_wordpiece_token(t, info->bos), "[DEC]");

    for (const cJSON *c = cJSON_GetObjectItem(want, "cases")->child; c; c = c->next) {
        const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(c, "text"));
        for (int special = 0; special < 2; special++) {
            int32_t *ids;
            int64_t n;
            ck_assert_int_eq(dc_wordpiece_encode(t, text, special, &ids, &n), 0);
            assert_ids(ids, n, cJSON_GetObjectItem(c, special ? "ids_special" : "ids"), text);
            free(ids);
        }
        assert_decode(t, c, "ids_special", text);
    }
    for (const cJSON *d = cJSON_GetObjectItem(want, "decodes")->child; d; d = d->next)
        assert_decode(t, d, "ids", "random ids");
    dc_wordpiece_free(t);
}

static void check_fixture(const char *folder) {
    cJSON *all = dc_json_load(FIXTURES "wordpiece_expected.json");
    ck_assert_msg(all != NULL, "%s", dc_error());
    char dir[256];
    snprintf(dir, sizeof dir, FIXTURES "%s", folder);
    check_layout(dir, expected_layout(all, folder));
    cJSON_Delete(all);
}

START_TEST(test_hub_layout) { check_fixture("wordpiece_hub"); }
END_TEST

START_TEST(test_saved_by_transformers5) { check_fixture("wordpiece_v5"); }
END_TEST

START_TEST(test_vocab_txt_cased_added_token) { check_fixture("wordpiece_cased"); }
END_TEST

START_TEST(test_lower_case_keeping_accents) { check_fixture("wordpiece_nostrip"); }
END_TEST

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *text = tu_read_file(from, 1 << 24, &n);
    ck_assert_msg(dc_write_file(to, text, n, false) == 0, "%s", dc_error());
    free(text);
}

/* The hub folder without tokenizer.json: its vocab.txt gives the same. */
START_TEST(test_vocab_txt_equals_tokenizer_json) {
    cJSON *all = dc_json_load(FIXTURES "wordpiece_expected.json");
    tu_mkdtemp("wp");
    copy_file(FIXTURES "wordpiece_hub/vocab.txt", tu_path("vocab.txt"));
    copy_file(FIXTURES "wordpiece_hub/tokenizer_config.json", tu_path("tokenizer_config.json"));
    check_layout(tu_path(""), expected_layout(all, "wordpiece_hub"));
    tu_rmtemp();
    cJSON_Delete(all);
}
END_TEST

/* Random sentences of whole-word vocab tokens: each word is its own id, and
 * decode gives the sentence back. */
START_TEST(test_whole_words_round_trip) {
    dc_wordpiece *t;
    ck_assert_int_eq(dc_wordpiece_load(&t, FIXTURES "wordpiece_hub"), 0);
    int32_t words[4096];
    int n_words = 0;
    for (int32_t id = 0; id < dc_wordpiece_get_info(t)->size && n_words < 4096; id++) {
        const char *tok = dc_wordpiece_token(t, id);
        bool plain = tok && tok[0];
        for (const char *p = tok; plain && *p; p++)
            plain = *p >= 'a' && *p <= 'z';
        if (plain)
            words[n_words++] = id;
    }
    ck_assert_int_gt(n_words, 100);
    for (int trial = 0; trial < 200; trial++) {
        int32_t want[32];
        char text[32 * 64] = "";
        int n = 1 + (int)(tu_next() % 32);
        for (int i = 0; i < n; i++) {
            want[i] = words[tu_next() % (uint64_t)n_words];
            if (i)
                strcat(text, " ");
            strcat(text, dc_wordpiece_token(t, want[i]));
        }
        int32_t *ids;
        int64_t m;
        char *back;
        ck_assert_int_eq(dc_wordpiece_encode(t, text, false, &ids, &m), 0);
        ck_assert_int_eq(m, n);
        ck_assert_mem_eq(ids, want, (size_t)n * sizeof *ids);
        ck_assert_int_eq(dc_wordpiece_decode(t, ids, m, true, &back), 0);
        ck_assert_str_eq(back, text);
        free(back);
        free(ids);
    }
    dc_wordpiece_free(t);
}
END_TEST

/* Bytes that are not UTF-8 read as U+FFFD, which the normaliser drops:
 * the text encodes as it would without them. */
START_TEST(test_invalid_utf8) {
    dc_wordpiece *t;
    ck_assert_int_eq(dc_wordpiece_load(&t, FIXTURES "wordpiece_hub"), 0);
    const char *bad[] = {"ca\xfft \xc3", "\xed\xa0\x80""dog\xf4\x90\x80\x80", "\xc0\xaf""a\xe2\x82 park", "\x80\x80\x80"};
    const char *clean[] = {"cat ", "dog", "a park", ""};
    for (int i = 0; i < 4; i++) {
        int32_t *a, *b;
        int64_t na, nb;
        ck_assert_int_eq(dc_wordpiece_encode(t, bad[i], true, &a, &na), 0);
        ck_assert_int_eq(dc_wordpiece_encode(t, clean[i], true, &b, &nb), 0);
        ck_assert_int_eq(na, nb);
        ck_assert_mem_eq(a, b, (size_t)na * sizeof *a);
        free(a);
        free(b);
    }
    int32_t junk[] = {-5, 1 << 30, dc_wordpiece_get_info(t)->size};
    char *text;
    ck_assert_int_eq(dc_wordpiece_decode(t, junk, 3, false, &text), 0);
    ck_assert_str_eq(text, "");
    free(text);
    dc_wordpiece_free(t);
}
END_TEST

/* ---- bad files ---- */

/* Without dc_write_file's fsync: hundreds of files are written. */
static void put_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void write_text(const char *name, const char *text) { put_file(tu_path(name), text, strlen(text)); }

static void assert_load_fails(const char *want) {
    dc_wordpiece *t = (dc_wordpiece *)1;
    dc_clear_error();
    int rc = dc_wordpiece_load(&t, tu_path(""));
    ck_assert_msg(rc == -1, "loaded where \"%s\" was wanted", want);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(dc_error(), want) != NULL, "error \"%s\" lacks \"%s\"", dc_error(), want);
}

static const char *VOCAB = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n##b\n";

START_TEST(test_bad_files) {
    tu_mkdtemp("wp");
    assert_load_fails("neither tokenizer.json nor vocab.txt");
    write_text("vocab.txt", "");
    assert_load_fails("the vocab has 0 tokens");
    write_text("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nab\xc3");
    assert_load_fails("line 5 is not UTF-8");
    write_text("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\na\na \n");
    assert_load_fails("the token \"a\" twice");
    write_text("vocab.txt", "[PAD]\n[CLS]\n[SEP]\na\n");
    assert_load_fails("unknown token is not in the vocab");
    write_text("vocab.txt", VOCAB);
    write_text("tokenizer_config.json", "{\"do_lower_case\": \"yes\"}");
    assert_load_fails("do_lower_case");
    write_text("tokenizer_config.json", "[1]");
    assert_load_fails("not a JSON object");
    write_text("tokenizer_config.json", "{\"added_tokens_decoder\": {\"x\": {\"content\": \"[X]\"}}}");
    assert_load_fails("has no id");
    write_text("tokenizer_config.json", "{\"added_tokens_decoder\": {\"7\": {\"special\": true}}}");
    assert_load_fails("not a string or {\"content\"");
    write_text("tokenizer_config.json", "{\"added_tokens_decoder\": {\"7\": {\"content\": 3}}}");
    assert_load_fails("content");
    write_text("tokenizer_config.json", "{\"bos_token\": [\"[DEC]\"]}");
    assert_load_fails("not a string");
    write_text("tokenizer_config.json", "{\"do_lower_case\": tr");
    assert_load_fails("tokenizer_config.json");
    remove(tu_path("tokenizer_config.json"));
    write_text("special_tokens_map.json", "\"x\"");
    assert_load_fails("special_tokens_map.json: not a JSON object");
    remove(tu_path("special_tokens_map.json"));
    write_text("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}");
    assert_load_fails("is not WordPiece");
    write_text("tokenizer.json", "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"[UNK]\": 0, \"a\": 2}}}");
    assert_load_fails("not an id in 0..1");
    write_text("tokenizer.json", "{\"model\": {\"vocab\": {\"[UNK]\": 0, \"a\": NaN}}}");
    assert_load_fails("not an id in 0..1");
    write_text("tokenizer.json", "{\"model\": {\"vocab\": {\"[UNK]\": 0, \"a\": 0}}}");
    assert_load_fails("gives id 0 twice");
    write_text("tokenizer.json", "{\"model\": {\"vocab\": [\"[UNK]\"]}}");
    assert_load_fails("not a {token: id} object");
    write_text("tokenizer.json", "{\"model\": {\"vocab\": {\"[UNK]\": 0, \"[CLS]\": 1, \"[SEP]\": 2}}, \"added_tokens\": 5}");
    assert_load_fails("added_tokens is a number");
    /* a whole tokenizer.json cut short at every 499th byte */
    size_t n;
    char *full = tu_read_file(FIXTURES "wordpiece_v5/tokenizer.json", 1 << 24, &n);
    for (size_t cut = 0; cut < n; cut += 499) {
        put_file(tu_path("tokenizer.json"), full, cut);
        assert_load_fails("tokenizer.json");
    }
    free(full);
    tu_rmtemp();
}
END_TEST

int main(void) {
    Suite *s = suite_create("text");
    TCase *tc = tu_tcase(s, "transformers", 60);
    tcase_add_test(tc, test_hub_layout);
    tcase_add_test(tc, test_saved_by_transformers5);
    tcase_add_test(tc, test_vocab_txt_cased_added_token);
    tcase_add_test(tc, test_lower_case_keeping_accents);
    tcase_add_test(tc, test_vocab_txt_equals_tokenizer_json);
    tc = tu_tcase(s, "properties", 60);
    tcase_add_test(tc, test_whole_words_round_trip);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_bad_files);
    return tu_run(s);
}
