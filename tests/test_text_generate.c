/* Text generation (models/text_generate) against transformers' generate():
 * greedy and beam search on a toy language model both sides compute exactly
 * (tests/fixtures/generate.safetensors, made by scripts/make_generate_fixtures.py),
 * token for token; then sampling's warpers (temperature, top-k, top-p) on
 * known distributions, statistically; then the errors. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/safetensors.h"
#include "models/text_generate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURE "tests/fixtures/generate.safetensors"
#define V 16
#define MAX_POS 32
#define N_HASH 7

/* ---- the toy model of the fixture script, with a per-row "cache" ---- */

typedef struct toy {
    const float *w, *p, *h; /* [V, V], [MAX_POS, V], [N_HASH, V] */
    int64_t rows;
    int64_t pos[256], hash[256]; /* tokens seen and their hash, per row */
    int32_t last[256];
    int64_t steps, reorders;
} toy;

static int toy_step(void *self, const int32_t *ids, int64_t n, float *logits) {
    toy *t = self;
    ck_assert_msg(n == 1 || t->steps == 0, "only the first step feeds the whole prefix");
    for (int64_t r = 0; r < t->rows; r++) {
        for (int64_t i = 0; i < n; i++) {
            int32_t id = ids[r * n + i];
            t->hash[r] = (t->hash[r] + id * (t->pos[r] + 1)) % N_HASH;
            t->pos[r]++;
            t->last[r] = id;
        }
        const float *w = t->w + t->last[r] * V, *p = t->p + (t->pos[r] - 1) * V,
                    *h = t->h + t->hash[r] * V;
        for (int64_t v = 0; v < V; v++)
            logits[r * V + v] = (w[v] + p[v]) + h[v];
    }
    t->steps++;
    return 0;
}

/* Forget what the rows have seen: a new generation. */
static void toy_reset(toy *t) {
    memset(t->pos, 0, sizeof t->pos);
    memset(t->hash, 0, sizeof t->hash);
    t->steps = t->reorders = 0;
}

static int toy_reorder(void *self, const int64_t *src) {
    toy *t = self;
    int64_t pos[256], hash[256];
    int32_t last[256];
    for (int64_t r = 0; r < t->rows; r++) {
        ck_assert(src[r] >= 0 && src[r] < t->rows);
        pos[r] = t->pos[src[r]];
        hash[r] = t->hash[src[r]];
        last[r] = t->last[src[r]];
    }
    memcpy(t->pos, pos, sizeof pos);
    memcpy(t->hash, hash, sizeof hash);
    memcpy(t->last, last, sizeof last);
    t->reorders++;
    return 0;
}

/* ---- fixture access ---- */

static const dc_st_tensor *fx(const dc_st_file *f, const char *tag, const char *what, int dtype) {
    char name[96];
    snprintf(name, sizeof name, "%s.%s", tag, what);
    const dc_st_tensor *t = dc_st_find(f, name);
    ck_assert_msg(t != NULL && t->dtype == dtype, "fixture has no %s of the right dtype", name);
    return t;
}

static const char *fx_opt(const dc_st_file *f, const char *tag, const char *key) {
    char name[96];
    snprintf(name, sizeof name, "%s.%s", tag, key);
    return dc_st_meta(f, name);
}

/* The case's generate() kwargs as our options. */
static dc_text_gen_options fx_options(const dc_st_file *f, const char *tag) {
    dc_text_gen_options o = dc_text_gen_default_options();
    const char *v;
    if ((v = fx_opt(f, tag, "max_length")))
        o.max_length = atoll(v);
    if ((v = fx_opt(f, tag, "max_positions")))
        o.max_positions = atoll(v);
    if ((v = fx_opt(f, tag, "max_new_tokens")))
        o.max_new_tokens = atoll(v);
    if ((v = fx_opt(f, tag, "min_length")))
        o.min_length = atoll(v);
    if ((v = fx_opt(f, tag, "num_beams")))
        o.num_beams = atoll(v);
    if ((v = fx_opt(f, tag, "num_return_sequences")))
        o.num_return_sequences = atoll(v);
    if ((v = fx_opt(f, tag, "length_penalty")))
        o.length_penalty = strtod(v, NULL);
    if ((v = fx_opt(f, tag, "repetition_penalty")))
        o.repetition_penalty = strtod(v, NULL);
    if ((v = fx_opt(f, tag, "early_stopping")))
        o.early_stopping = !strcmp(v, "true")    ? DC_EARLY_STOP_TRUE
                           : !strcmp(v, "never") ? DC_EARLY_STOP_NEVER
                                                 : DC_EARLY_STOP_FALSE;
    o.eos_token_id = atoi(fx_opt(f, tag, "eos_token_id"));
    o.pad_token_id = atoi(fx_opt(f, tag, "pad_token_id"));
    return o;
}

static void check_case(const dc_st_file *f, const char *tag) {
    toy t = {.w = dc_st_find(f, "toy.w")->data, .p = dc_st_find(f, "toy.p")->data,
             .h = dc_st_find(f, "toy.h")->data};
    dc_text_gen_options o = fx_options(f, tag);
    const dc_st_tensor *prefix = fx(f, tag, "prefix", DC_I32), *ids = fx(f, tag, "ids", DC_I32),
                       *lengths = fx(f, tag, "lengths", DC_I32);
    int64_t batch = prefix->shape[0];
    t.rows = batch * o.num_beams;
    dc_lm lm = {&t, V, toy_step, toy_reorder};
    dc_text_gen_output out;
    ck_assert_msg(dc_text_generate(&lm, &o, batch, prefix->data, prefix->shape[1], &out) == 0, "%s: %s",
                  tag, dc_error());
    ck_assert_msg(out.n == ids->shape[0] && out.len == ids->shape[1],
                  "%s: %lld sequences of %lld ids, transformers has %lld of %lld", tag, (long long)out.n,
                  (long long)out.len, (long long)ids->shape[0], (long long)ids->shape[1]);
    const int32_t *want = ids->data, *want_len = lengths->data;
    for (int64_t i = 0; i < out.n; i++) {
        for (int64_t j = 0; j < out.len; j++)
            ck_assert_msg(out.ids[i * out.len + j] == want[i * out.len + j],
                          "%s: sequence %lld token %lld is %d, transformers has %d", tag, (long long)i,
                          (long long)j, out.ids[i * out.len + j], want[i * out.len + j]);
        ck_assert_msg(out.lengths[i] == want_len[i], "%s: sequence %lld has length %lld, not %d", tag,
                      (long long)i, (long long)out.lengths[i], want_len[i]);
    }
    if (o.num_beams > 1) {
        const float *s = fx(f, tag, "scores", DC_F32)->data;
        for (int64_t i = 0; i < out.n; i++)
            ck_assert_msg(fabsf(out.scores[i] - s[i]) <= 1e-5f * (1 + fabsf(s[i])),
                          "%s: sequence %lld scores %.9g, transformers %.9g", tag, (long long)i,
                          out.scores[i], s[i]);
        ck_assert_msg(t.reorders == t.steps - 1, "%s: %lld reorders for %lld steps", tag,
                      (long long)t.reorders, (long long)t.steps);
    }
    dc_text_gen_output_free(&out);
}

START_TEST(test_vs_transformers) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    char *cases = strdup(dc_st_meta(&f, "cases"));
    int n = 0;
    for (char *save, *tag = strtok_r(cases, ",", &save); tag; tag = strtok_r(NULL, ",", &save), n++)
        check_case(&f, tag);
    ck_assert_int_ge(n, 19);
    free(cases);
    dc_st_close(&f);
}
END_TEST

/* ---- sampling on known distributions ---- */

/* Every row scores the next token with the same fixed logits. */
typedef struct fixed {
    int64_t rows, vocab;
    const double *logits;
} fixed;

static int fixed_step(void *self, const int32_t *ids, int64_t n, float *logits) {
    (void)ids;
    (void)n;
    fixed *m = self;
    for (int64_t r = 0; r < m->rows; r++)
        for (int64_t v = 0; v < m->vocab; v++)
            logits[r * m->vocab + v] = (float)m->logits[v];
    return 0;
}

#define DRAWS 20000

/* One token per row from `probs` (vocab 6, as logits log p + a random shift)
 * with the options given; the counts of each token. */
static void sample_counts(const double *probs, dc_text_gen_options o, int64_t counts[6]) {
    double logits[6], shift = tu_uniform(-3, 3);
    for (int v = 0; v < 6; v++)
        logits[v] = log(probs[v]) + shift;
    fixed m = {DRAWS, 6, logits};
    dc_lm lm = {&m, 6, fixed_step, NULL};
    int32_t *prefix = malloc(DRAWS * sizeof *prefix);
    for (int i = 0; i < DRAWS; i++)
        prefix[i] = 0;
    o.do_sample = true;
    o.max_new_tokens = 1;
    dc_text_gen_output out;
    ck_assert_msg(dc_text_generate(&lm, &o, DRAWS, prefix, 1, &out) == 0, "%s", dc_error());
    ck_assert_int_eq(out.len, 2);
    memset(counts, 0, 6 * sizeof *counts);
    for (int i = 0; i < DRAWS; i++)
        counts[out.ids[2 * i + 1]]++;
    dc_text_gen_output_free(&out);
    free(prefix);
}

/* Counts within 5 standard deviations of DRAWS * want (want unnormalised; 0: never drawn). */
static void assert_frequencies(const int64_t counts[6], const double want[6], const char *what) {
    double z = 0;
    for (int v = 0; v < 6; v++)
        z += want[v];
    for (int v = 0; v < 6; v++) {
        double p = want[v] / z, sd = sqrt(DRAWS * p * (1 - p));
        ck_assert_msg(fabs((double)counts[v] - DRAWS * p) <= 5 * sd + (p == 0 ? 0 : 1),
                      "%s: token %d drawn %lld times, expected %.1f +- %.1f", what, v,
                      (long long)counts[v], DRAWS * p, sd);
    }
}

static const double PROBS[6] = {0.05, 0.40, 0.10, 0.30, 0.15, 0.0}; /* token 5: never (-inf) */

START_TEST(test_sample_plain) {
    dc_text_gen_options o = dc_text_gen_default_options();
    o.seed = tu_next();
    int64_t c[6];
    sample_counts(PROBS, o, c);
    assert_frequencies(c, PROBS, "plain");
}
END_TEST

START_TEST(test_sample_top_k) {
    dc_text_gen_options o = dc_text_gen_default_options();
    o.seed = tu_next();
    o.top_k = 3;
    int64_t c[6];
    sample_counts(PROBS, o, c);
    assert_frequencies(c, (double[6]){0, 0.40, 0, 0.30, 0.15, 0}, "top_k 3");
}
END_TEST

START_TEST(test_sample_top_p) {
    /* ascending: 0.05, 0.10, 0.15, 0.30, 0.40; cumulative 0.05, 0.15, 0.30, ...:
     * top_p 0.75 drops those at most 0.25 (0.05 and 0.10), keeps 0.15 */
    dc_text_gen_options o = dc_text_gen_default_options();
    o.seed = tu_next();
    o.top_p = 0.75;
    int64_t c[6];
    sample_counts(PROBS, o, c);
    assert_frequencies(c, (double[6]){0, 0.40, 0, 0.30, 0.15, 0}, "top_p 0.75");
    /* top_p below the largest probability keeps that token alone */
    o.top_p = 0.2;
    sample_counts(PROBS, o, c);
    assert_frequencies(c, (double[6]){0, 1, 0, 0, 0, 0}, "top_p 0.2");
}
END_TEST

START_TEST(test_sample_temperature_then_top_p) {
    /* temperature 2: p^(1/2), normalised 0.106, 0.300, 0.150, 0.260, 0.184;
     * ascending cumulative 0.106, 0.256, 0.440, ...: top_p 0.7 drops those at
     * most 0.3 (tokens 0 and 2); before the temperature it would drop token 4 too */
    dc_text_gen_options o = dc_text_gen_default_options();
    o.seed = tu_next();
    o.temperature = 2.0;
    o.top_p = 0.7;
    double want[6];
    for (int v = 0; v < 6; v++)
        want[v] = v == 0 || v == 2 ? 0 : sqrt(PROBS[v]);
    int64_t c[6];
    sample_counts(PROBS, o, c);
    assert_frequencies(c, want, "temperature 2, top_p 0.7");
    /* top_k after the temperature: the same 2 best whatever the temperature */
    o.top_p = 1.0;
    o.top_k = 2;
    o.temperature = 0.5;
    sample_counts(PROBS, o, c);
    assert_frequencies(c, (double[6]){0, 0.16, 0, 0.09, 0, 0}, "temperature 0.5, top_k 2");
}
END_TEST

/* Same seed, same sequences; another seed, others; a row's draws do not depend on the batch. */
START_TEST(test_sample_seeded) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    toy t = {.w = dc_st_find(&f, "toy.w")->data, .p = dc_st_find(&f, "toy.p")->data,
             .h = dc_st_find(&f, "toy.h")->data, .rows = 8};
    dc_lm lm = {&t, V, toy_step, toy_reorder};
    dc_text_gen_options o = dc_text_gen_default_options();
    o.do_sample = true;
    o.max_length = 20;
    o.eos_token_id = 2;
    o.seed = tu_next();
    int32_t prefix[8];
    for (int i = 0; i < 8; i++)
        prefix[i] = 1;
    dc_text_gen_output a, b, c, d;
    ck_assert(dc_text_generate(&lm, &o, 8, prefix, 1, &a) == 0);
    toy_reset(&t);
    ck_assert(dc_text_generate(&lm, &o, 8, prefix, 1, &b) == 0);
    ck_assert_int_eq(a.len, b.len);
    ck_assert_mem_eq(a.ids, b.ids, (size_t)(a.n * a.len) * sizeof *a.ids);
    toy_reset(&t);
    o.seed++;
    ck_assert(dc_text_generate(&lm, &o, 8, prefix, 1, &c) == 0);
    ck_assert(c.len != a.len || memcmp(a.ids, c.ids, (size_t)(a.n * a.len) * sizeof *a.ids) != 0);
    toy_reset(&t);
    t.rows = 3;
    o.seed--;
    ck_assert(dc_text_generate(&lm, &o, 3, prefix, 1, &d) == 0);
    for (int64_t i = 0; i < 3; i++) {
        ck_assert_int_eq(d.lengths[i], a.lengths[i]);
        ck_assert_mem_eq(d.ids + i * d.len, a.ids + i * a.len, (size_t)d.lengths[i] * sizeof *d.ids);
    }
    dc_text_gen_output_free(&a);
    dc_text_gen_output_free(&b);
    dc_text_gen_output_free(&c);
    dc_text_gen_output_free(&d);
    dc_st_close(&f);
}
END_TEST

/* Several samples per entry: rows grouped per entry, each with its
 * entry's prefix and its own draws. */
START_TEST(test_sample_several_per_entry) {
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, FIXTURE) == 0, "%s", dc_error());
    toy t = {.w = dc_st_find(&f, "toy.w")->data, .p = dc_st_find(&f, "toy.p")->data,
             .h = dc_st_find(&f, "toy.h")->data};
    dc_lm lm = {&t, V, toy_step, toy_reorder};
    dc_text_gen_options o = dc_text_gen_default_options();
    o.do_sample = true, o.num_return_sequences = 4, o.max_length = 14, o.eos_token_id = 2;
    o.seed = tu_next();
    ck_assert_int_eq(dc_text_gen_rows_per_entry(&o), 4);
    t.rows = 2 * 4;
    int32_t prefix[4] = {1, 5, 1, 9};
    dc_text_gen_output out;
    ck_assert_msg(dc_text_generate(&lm, &o, 2, prefix, 2, &out) == 0, "%s", dc_error());
    ck_assert_int_eq(out.n, 8);
    for (int64_t e = 0; e < 2; e++) {
        bool differ = false;
        for (int64_t k = 0; k < 4; k++) {
            const int32_t *seq = out.ids + (e * 4 + k) * out.len;
            ck_assert(seq[0] == prefix[2 * e] && seq[1] == prefix[2 * e + 1]);
            differ = differ || memcmp(seq, out.ids + e * 4 * out.len, (size_t)out.len * sizeof *seq) != 0;
        }
        ck_assert_msg(differ, "entry %lld: four samples, all the same", (long long)e);
    }
    dc_text_gen_output_free(&out);
    o.do_sample = false;
    ck_assert_int_eq(dc_text_generate(&lm, &o, 2, prefix, 2, &out), -1);
    ck_assert_msg(strstr(dc_error(), "num_return_sequences 4 must be between 1 and num_beams 1"), "%s",
                  dc_error());
    dc_st_close(&f);
}
END_TEST

/* A model whose scores are all -inf (or one finite): sampling still gives a
 * token, read from nowhere outside the vocabulary (top-p has nothing to sort;
 * the AddressSanitizer build checks the reads). */
START_TEST(test_sample_degenerate_scores) {
    double logits[6] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    fixed m = {2, 6, logits};
    dc_lm lm = {&m, 6, fixed_step, NULL};
    int32_t prefix[2] = {1, 1};
    dc_text_gen_options o = dc_text_gen_default_options();
    o.do_sample = true, o.top_p = 0.5, o.top_k = 3, o.max_new_tokens = 2, o.seed = tu_next();
    dc_text_gen_output out;
    ck_assert_msg(dc_text_generate(&lm, &o, 2, prefix, 1, &out) == 0, "%s", dc_error());
    for (int64_t i = 0; i < out.n * out.len; i++)
        ck_assert(out.ids[i] >= 0 && out.ids[i] < 6);
    dc_text_gen_output_free(&out);
    logits[4] = tu_normal();
    ck_assert(dc_text_generate(&lm, &o, 2, prefix, 1, &out) == 0);
    ck_assert_int_eq(out.ids[1], 4);
    ck_assert_int_eq(out.ids[out.len + 2], 4);
    dc_text_gen_output_free(&out);
}
END_TEST

/* ---- errors ---- */

static int failing_step(void *self, const int32_t *ids, int64_t n, float *logits) {
    (void)self, (void)ids, (void)n, (void)logits;
    return dc_fail("decoder out of memory");
}

static void assert_refused(const dc_lm *lm, dc_text_gen_options o, const int32_t *prefix, int64_t len,
                           const char *want) {
    dc_text_gen_output out = {0};
    ck_assert_int_eq(dc_text_generate(lm, &o, 1, prefix, len, &out), -1);
    ck_assert_msg(strstr(dc_error(), want), "error \"%s\" lacks \"%s\"", dc_error(), want);
    ck_assert(out.ids == NULL && out.n == 0);
    dc_text_gen_output_free(&out);
}

START_TEST(test_errors) {
    double logits[6] = {0, 1, 2, 3, 4, 5};
    fixed m = {3, 6, logits};
    dc_lm lm = {&m, 6, fixed_step, NULL};
    int32_t prefix[3] = {1, 2, 3};
    dc_text_gen_options d = dc_text_gen_default_options(), o;
    m.rows = 1;
    o = d, o.num_beams = 2, o.num_return_sequences = 3;
    assert_refused(&lm, o, prefix, 1, "num_return_sequences 3 must be between 1 and num_beams 2");
    o = d, o.num_beams = 2;
    assert_refused(&lm, o, prefix, 1, "beam search needs a model that can reorder");
    o = d, o.do_sample = true, o.top_p = 0;
    assert_refused(&lm, o, prefix, 1, "top_p must be in (0, 1]");
    o = d, o.do_sample = true, o.temperature = 0;
    assert_refused(&lm, o, prefix, 1, "temperature must be positive");
    o = d, o.max_length = 3;
    assert_refused(&lm, o, prefix, 3, "max_length 3 leaves no room after the prefix of 3 tokens");
    o = d, o.max_positions = 2;
    assert_refused(&lm, o, prefix, 2, "max_length 2 leaves no room after the prefix of 2 tokens");
    o = d, o.max_length = -1;
    assert_refused(&lm, o, prefix, 1, "must not be negative");
    o = d, o.eos_token_id = 6;
    assert_refused(&lm, o, prefix, 1, "eos_token_id 6 is outside the vocabulary (0..5)");
    o = d, o.num_beams = (int64_t)1 << 40;
    dc_lm huge = {&m, 6, fixed_step, toy_reorder};
    assert_refused(&huge, o, prefix, 1, "rows x 6 tokens of scores is too many");
    int32_t bad[2] = {1, 9};
    assert_refused(&lm, d, bad, 2, "prefix token 9 is outside the vocabulary");
    dc_lm failing = {&m, 6, failing_step, NULL};
    assert_refused(&failing, d, prefix, 1, "generate: model step: decoder out of memory");
    toy t = {.rows = 2};
    dc_lm beams = {&t, 6, failing_step, toy_reorder};
    o = d, o.num_beams = 2, o.do_sample = true;
    assert_refused(&beams, o, prefix, 1, "beam sampling) is not supported");
}
END_TEST

int main(void) {
    Suite *s = suite_create("text_generate");
    TCase *tc = tu_tcase(s, "transformers", 60);
    tcase_add_test(tc, test_vs_transformers);
    tc = tu_tcase(s, "sampling", 60);
    tcase_add_test(tc, test_sample_plain);
    tcase_add_test(tc, test_sample_top_k);
    tcase_add_test(tc, test_sample_top_p);
    tcase_add_test(tc, test_sample_temperature_then_top_p);
    tcase_add_test(tc, test_sample_seeded);
    tcase_add_test(tc, test_sample_degenerate_scores);
    tcase_add_test(tc, test_sample_several_per_entry);
    tc = tu_tcase(s, "errors", 60);
    tcase_add_test(tc, test_errors);
    return tu_run(s);
}
