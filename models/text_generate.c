/*
 * Text generation: greedy search, sampling and beam search over a dc_lm, as
 * transformers' generate() does them (the rules are in text_generate.h).
 * Scores are float32 and every operation on them is the one torch does, in
 * its order, so that comparisons between candidates come out the same.
 */
#include "models/text_generate.h"

#include "autograd/error.h"
#include "autograd/rng.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NEG_BIG -1.0e9f /* transformers' "very large negative value" for beams out of the running */
#define MAX_SCORES 1e11 /* rows x vocab floats held per step: 400 GB, beyond any real batch */
#define DEFAULT_NEW_TOKENS 20 /* GenerationConfig's max_length default, counted after the prefix */

dc_text_gen_options dc_text_gen_default_options(void) {
    dc_text_gen_options o = {.num_beams = 1,
                             .num_return_sequences = 1,
                             .length_penalty = 1.0,
                             .early_stopping = DC_EARLY_STOP_FALSE,
                             .repetition_penalty = 1.0,
                             .temperature = 1.0,
                             .top_k = 50,
                             .top_p = 1.0,
                             .eos_token_id = -1,
                             .pad_token_id = -1};
    return o;
}

int64_t dc_text_gen_rows_per_entry(const dc_text_gen_options *o) {
    return o->num_beams == 1 && o->do_sample ? o->num_return_sequences : o->num_beams;
}

void dc_text_gen_output_free(dc_text_gen_output *out) {
    if (!out)
        return;
    free(out->ids);
    free(out->lengths);
    free(out->scores);
    memset(out, 0, sizeof *out);
}

/* ---- checks ---- */

static int check_token(int64_t id, int64_t vocab, const char *what) {
    if (id < -1 || id >= vocab)
        return dc_fail("generate: %s %lld is outside the vocabulary (0..%lld)", what, (long long)id,
                       (long long)vocab - 1);
    return 0;
}

static int check_sampling(const dc_text_gen_options *o) {
    if (o->num_beams > 1)
        return dc_fail("generate: sampling with num_beams %lld (beam sampling) is not supported",
                       (long long)o->num_beams);
    if (!(o->temperature > 0) || !isfinite(o->temperature))
        return dc_fail("generate: temperature must be positive, got %g", o->temperature);
    if (!(o->top_p > 0 && o->top_p <= 1))
        return dc_fail("generate: top_p must be in (0, 1], got %g", o->top_p);
    if (o->top_k < 0)
        return dc_fail("generate: top_k must be 0 (off) or positive, got %lld", (long long)o->top_k);
    return 0;
}

/* transformers' _prepare_generated_length: max_new_tokens wins; an unset
 * max_length generates DEFAULT_NEW_TOKENS, within the model's positions. */
int64_t dc_text_gen_max_length(const dc_text_gen_options *o, int64_t prefix_len) {
    if (o->max_new_tokens > 0)
        return prefix_len + o->max_new_tokens;
    if (o->max_length > 0)
        return o->max_length;
    int64_t n = prefix_len + DEFAULT_NEW_TOKENS;
    return o->max_positions > 0 && o->max_positions < n ? o->max_positions : n;
}

/* The options against the model and the prefix; the total length in *max_length. */
static int check_options(const dc_lm *lm, const dc_text_gen_options *o, int64_t batch,
                         const int32_t *prefix, int64_t prefix_len, int64_t *max_length) {
    if (!lm || !lm->step || lm->vocab < 2)
        return dc_fail("generate: the model has no step function or a vocabulary under 2 tokens");
    if (batch < 1 || prefix_len < 1 || !prefix)
        return dc_fail("generate: needs at least one sequence with a prefix of one token or more");
    if (o->num_beams < 1 || o->num_return_sequences < 1 ||
        (o->num_return_sequences > o->num_beams && !(o->do_sample && o->num_beams == 1)))
        return dc_fail("generate: num_return_sequences %lld must be between 1 and num_beams %lld "
                       "(or any, sampling)", (long long)o->num_return_sequences, (long long)o->num_beams);
    double scores = (double)batch * (double)dc_text_gen_rows_per_entry(o) * (double)lm->vocab;
    if (lm->vocab > INT32_MAX || scores > MAX_SCORES)
        return dc_fail("generate: %lld entries x %lld rows x %lld tokens of scores is too many",
                       (long long)batch, (long long)dc_text_gen_rows_per_entry(o), (long long)lm->vocab);
    if (o->num_beams > 1 && !lm->reorder)
        return dc_fail("generate: beam search needs a model that can reorder its rows");
    if (o->do_sample && check_sampling(o))
        return -1;
    if (!(o->repetition_penalty > 0) || !isfinite(o->repetition_penalty) || !isfinite(o->length_penalty))
        return dc_fail("generate: repetition_penalty must be positive and length_penalty finite");
    if (check_token(o->eos_token_id, lm->vocab, "eos_token_id") ||
        check_token(o->pad_token_id, lm->vocab, "pad_token_id"))
        return -1;
    for (int64_t i = 0; i < batch * prefix_len; i++)
        if (prefix[i] < 0 || prefix[i] >= lm->vocab)
            return dc_fail("generate: prefix token %d is outside the vocabulary (0..%lld)", prefix[i],
                           (long long)lm->vocab - 1);
    if (o->max_length < 0 || o->max_new_tokens < 0 || o->max_positions < 0 || o->min_length < 0)
        return dc_fail("generate: max_length, max_new_tokens, max_positions and min_length must not be negative");
    *max_length = dc_text_gen_max_length(o, prefix_len);
    if (*max_length <= prefix_len)
        return dc_fail("generate: max_length %lld leaves no room after the prefix of %lld tokens",
                       (long long)*max_length, (long long)prefix_len);
    return 0;
}

/* ---- the search state ---- */

/* A score and the token it belongs to, for sorting. */
typedef struct scored {
    float v;
    int64_t i;
} scored;

typedef struct gen {
    const dc_lm *lm;
    const dc_text_gen_options *o;
    int64_t rows, vocab, prefix_len, max_length;
    int64_t cur_len;   /* tokens in every row so far */
    int32_t *seq;      /* [rows, max_length]: the running sequences */
    float *scores;     /* [rows, vocab]: logits, then processed scores */
    uint8_t *seen;     /* [vocab]: scratch for the repetition penalty */
    float *tmp_v;      /* [vocab]: scratch for the sampling warpers */
    int64_t *tmp_i;    /* [vocab] */
    scored *tmp_s;     /* [vocab] */
} gen;

static void gen_free(gen *g) {
    free(g->seq);
    free(g->scores);
    free(g->seen);
    free(g->tmp_v);
    free(g->tmp_i);
    free(g->tmp_s);
}

/* rows sequences, each the prefix of entry row / per_entry. */
static int gen_init(gen *g, const dc_lm *lm, const dc_text_gen_options *o, int64_t batch,
                    int64_t per_entry, const int32_t *prefix, int64_t prefix_len, int64_t max_length) {
    *g = (gen){.lm = lm, .o = o, .rows = batch * per_entry, .vocab = lm->vocab,
               .prefix_len = prefix_len, .max_length = max_length, .cur_len = prefix_len};
    g->seq = malloc((size_t)(g->rows * max_length) * sizeof *g->seq);
    g->scores = malloc((size_t)(g->rows * g->vocab) * sizeof *g->scores);
    g->seen = calloc((size_t)g->vocab, 1);
    g->tmp_v = malloc((size_t)g->vocab * sizeof *g->tmp_v);
    g->tmp_i = malloc((size_t)g->vocab * sizeof *g->tmp_i);
    g->tmp_s = malloc((size_t)g->vocab * sizeof *g->tmp_s);
    if (!g->seq || !g->scores || !g->seen || !g->tmp_v || !g->tmp_i || !g->tmp_s) {
        gen_free(g);
        return dc_fail("generate: out of memory for %lld rows of %lld tokens", (long long)g->rows,
                       (long long)g->vocab);
    }
    for (int64_t r = 0; r < g->rows; r++)
        memcpy(g->seq + r * max_length, prefix + (r / per_entry) * prefix_len,
               (size_t)prefix_len * sizeof *g->seq);
    return 0;
}

/* The model's scores for the next token of every row: the whole prefix at
 * the first step, then each row's last token. */
static int gen_step(gen *g) {
    int64_t n = g->cur_len == g->prefix_len ? g->prefix_len : 1;
    int32_t *ids = malloc((size_t)(g->rows * n) * sizeof *ids);
    if (!ids)
        return dc_fail("generate: out of memory");
    for (int64_t r = 0; r < g->rows; r++)
        memcpy(ids + r * n, g->seq + r * g->max_length + g->cur_len - n, (size_t)n * sizeof *ids);
    int rc = g->lm->step(g->lm->self, ids, n, g->scores);
    free(ids);
    return rc ? dc_fail_prefix("generate: model step") : 0;
}

/* CTRL's penalty on each token of the row (once per token), then min_length. */
static void process_row(gen *g, int64_t r, float *s) {
    const int32_t *seq = g->seq + r * g->max_length;
    if (g->o->repetition_penalty != 1.0) {
        float p = (float)g->o->repetition_penalty;
        for (int64_t i = 0; i < g->cur_len; i++) {
            int32_t t = seq[i];
            if (!g->seen[t])
                s[t] = s[t] < 0 ? s[t] * p : s[t] / p;
            g->seen[t] = 1;
        }
        for (int64_t i = 0; i < g->cur_len; i++)
            g->seen[seq[i]] = 0;
    }
    if (g->o->eos_token_id >= 0 && g->cur_len < g->o->min_length)
        s[g->o->eos_token_id] = -INFINITY;
}

/* In place, as torch's log_softmax: (x - max) - log(sum(exp(x - max))). */
static void log_softmax(float *x, int64_t n) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        m = x[i] > m ? x[i] : m;
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += expf(x[i] - m);
    float ls = logf((float)sum);
    for (int64_t i = 0; i < n; i++)
        x[i] = (x[i] - m) - ls;
}

/* ---- top-k selection and the sampling warpers ---- */

/* Insert (v, i) among the n best kept so far in bv/bi[0..*have), best first;
 * equal scores stay in the order they came. */
static void keep_best(float *bv, int64_t *bi, int64_t *have, int64_t n, float v, int64_t i) {
    if (*have == n && !(v > bv[n - 1]))
        return;
    int64_t j = *have < n ? (*have)++ : n - 1;
    while (j > 0 && v > bv[j - 1]) {
        bv[j] = bv[j - 1];
        bi[j] = bi[j - 1];
        j--;
    }
    bv[j] = v;
    bi[j] = i;
}

/* Scores below the k-th largest become -inf (ties with it stay, as
 * transformers' TopKLogitsWarper keeps them). */
static void top_k(gen *g, float *s, int64_t k) {
    int64_t n = g->vocab, have = 0;
    if (k <= 0 || k >= n)
        return;
    for (int64_t i = 0; i < n; i++)
        keep_best(g->tmp_v, g->tmp_i, &have, k, s[i], i);
    float kth = g->tmp_v[k - 1];
    for (int64_t i = 0; i < n; i++)
        if (s[i] < kth)
            s[i] = -INFINITY;
}

static int cmp_scored_asc(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->v != y->v)
        return (x->v > y->v) - (x->v < y->v);
    return (x->i > y->i) - (x->i < y->i);
}

/* transformers' TopPLogitsWarper: sorted ascending, the tokens whose
 * cumulative probability is at most 1 - top_p go (never the most likely).
 * Tokens already at -inf have probability 0: only the others are sorted. */
static void top_p(gen *g, float *s, double p) {
    if (p >= 1.0)
        return;
    scored *v = g->tmp_s;
    int64_t m = 0;
    for (int64_t i = 0; i < g->vocab; i++)
        if (s[i] != -INFINITY)
            v[m++] = (scored){s[i], i};
    if (m < 2)
        return;
    qsort(v, (size_t)m, sizeof *v, cmp_scored_asc);
    float top = v[m - 1].v;
    double z = 0, cum = 0;
    for (int64_t j = 0; j < m; j++)
        z += expf(v[j].v - top);
    for (int64_t j = 0; j < m - 1; j++) {
        cum += expf(v[j].v - top) / z;
        if ((float)cum <= (float)(1.0 - p))
            s[v[j].i] = -INFINITY;
    }
}

/* One token from softmax(s) by inverting its CDF at u in [0, 1). */
static int32_t draw(const float *s, int64_t n, float u) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        m = s[i] > m ? s[i] : m;
    double z = 0;
    for (int64_t i = 0; i < n; i++)
        z += exp((double)s[i] - m);
    double target = u * z, cum = 0;
    int32_t last = 0;
    for (int64_t i = 0; i < n; i++) {
        if (s[i] == -INFINITY)
            continue;
        cum += exp((double)s[i] - m);
        last = (int32_t)i;
        if (cum > target)
            return last;
    }
    return last;
}

/* The next token of row r from its processed logits s. */
static int32_t pick_token(gen *g, int64_t r, float *s) {
    const dc_text_gen_options *o = g->o;
    if (!o->do_sample) {
        int64_t best = 0;
        for (int64_t i = 1; i < g->vocab; i++)
            best = s[i] > s[best] ? i : best;
        return (int32_t)best;
    }
    if (o->temperature != 1.0)
        for (int64_t i = 0; i < g->vocab; i++)
            s[i] /= (float)o->temperature;
    top_k(g, s, o->top_k);
    top_p(g, s, o->top_p);
    return draw(s, g->vocab, dc_rand_uniform(o->seed, (uint64_t)r, (uint64_t)g->cur_len));
}

/* ---- output ---- */

static int output_alloc(dc_text_gen_output *out, int64_t n, int64_t len) {
    out->n = n;
    out->len = len;
    out->ids = malloc((size_t)(n * len) * sizeof *out->ids);
    out->lengths = malloc((size_t)n * sizeof *out->lengths);
    out->scores = calloc((size_t)n, sizeof *out->scores);
    if (!out->ids || !out->lengths || !out->scores) {
        dc_text_gen_output_free(out);
        return dc_fail("generate: out of memory for %lld sequences", (long long)n);
    }
    return 0;
}

/* ---- greedy search and sampling ---- */

static int greedy_loop(gen *g, int64_t *lengths) {
    const dc_text_gen_options *o = g->o;
    int32_t eos = o->eos_token_id, pad = o->pad_token_id >= 0 ? o->pad_token_id : eos;
    int64_t open = g->rows;
    for (int64_t r = 0; r < g->rows; r++)
        lengths[r] = 0; /* 0: still running */
    while (open > 0) {
        if (gen_step(g))
            return -1;
        for (int64_t r = 0; r < g->rows; r++) {
            float *s = g->scores + r * g->vocab;
            process_row(g, r, s);
            int32_t t = pick_token(g, r, s);
            g->seq[r * g->max_length + g->cur_len] = lengths[r] ? pad : t;
            if (!lengths[r] && (t == eos || g->cur_len + 1 >= g->max_length)) {
                lengths[r] = g->cur_len + 1;
                open--;
            }
        }
        g->cur_len++;
    }
    return 0;
}

/* Greedy search or sampling; every row is one output sequence. */
static int greedy(const dc_lm *lm, const dc_text_gen_options *o, int64_t batch,
                  const int32_t *prefix, int64_t prefix_len, int64_t max_length,
                  dc_text_gen_output *out) {
    gen g;
    if (gen_init(&g, lm, o, batch, dc_text_gen_rows_per_entry(o), prefix, prefix_len, max_length))
        return -1;
    int64_t rows = g.rows, *lengths = malloc((size_t)rows * sizeof *lengths);
    int rc = lengths ? greedy_loop(&g, lengths) : dc_fail("generate: out of memory");
    if (!rc)
        rc = output_alloc(out, rows, g.cur_len);
    if (!rc) {
        for (int64_t r = 0; r < rows; r++)
            memcpy(out->ids + r * g.cur_len, g.seq + r * max_length, (size_t)g.cur_len * sizeof *out->ids);
        memcpy(out->lengths, lengths, (size_t)rows * sizeof *lengths);
    }
    free(lengths);
    gen_free(&g);
    return rc;
}

/* ---- beam search ---- */

typedef struct cand {
    float score;   /* accumulated log-probability */
    int64_t row;   /* the running beam it continues */
    int32_t token;
    bool hit;      /* ends with eos or reaches max_length */
} cand;

/* One batch entry's K best finished hypotheses, best first. */
typedef struct beam_entry {
    float *score;    /* [K]: sum of log-probabilities / generated^length_penalty; -1e9 when empty */
    bool *finished;  /* [K] */
    int64_t *length; /* [K]: tokens, prefix included */
    int32_t *seq;    /* [K, max_length] */
    bool improvable; /* transformers' is_early_stop_heuristic_unsatisfied */
} beam_entry;

typedef struct beam_search {
    gen g;
    int64_t batch, K, n_cand; /* n_cand = 2K candidates per entry */
    float *running;           /* [rows]: accumulated log-probabilities of the running beams */
    cand *cand;               /* [batch, 2K] */
    beam_entry *entry;        /* [batch] */
    int64_t *src;             /* [rows]: what each row continues, for reorder */
    int32_t *newseq;          /* [rows, max_length] */
    float *top_v;             /* [3K]: top-k scratch */
    int64_t *top_i;           /* [3K] */
    float *merged;            /* [3K]: the entry's slots, then its candidates */
    beam_entry next;          /* the slots being built */
} beam_search;

static bool entry_alloc(beam_entry *e, int64_t K, int64_t max_length) {
    e->score = malloc((size_t)K * sizeof *e->score);
    e->finished = calloc((size_t)K, sizeof *e->finished);
    e->length = calloc((size_t)K, sizeof *e->length);
    e->seq = malloc((size_t)(K * max_length) * sizeof *e->seq);
    e->improvable = true;
    for (int64_t k = 0; e->score && k < K; k++)
        e->score[k] = NEG_BIG;
    return e->score && e->finished && e->length && e->seq;
}

static void entry_free(beam_entry *e) {
    free(e->score);
    free(e->finished);
    free(e->length);
    free(e->seq);
}

static void beam_free(beam_search *s) {
    for (int64_t b = 0; s->entry && b < s->batch; b++)
        entry_free(&s->entry[b]);
    entry_free(&s->next);
    free(s->entry);
    free(s->running);
    free(s->cand);
    free(s->src);
    free(s->newseq);
    free(s->top_v);
    free(s->top_i);
    free(s->merged);
    gen_free(&s->g);
}

static int beam_init(beam_search *s, const dc_lm *lm, const dc_text_gen_options *o, int64_t batch,
                     const int32_t *prefix, int64_t prefix_len, int64_t max_length) {
    memset(s, 0, sizeof *s);
    int64_t K = o->num_beams;
    if (gen_init(&s->g, lm, o, batch, K, prefix, prefix_len, max_length))
        return -1;
    s->batch = batch;
    s->K = K;
    s->n_cand = 2 * K;
    s->running = malloc((size_t)s->g.rows * sizeof *s->running);
    s->cand = malloc((size_t)(batch * s->n_cand) * sizeof *s->cand);
    s->entry = calloc((size_t)batch, sizeof *s->entry);
    s->src = malloc((size_t)s->g.rows * sizeof *s->src);
    s->newseq = malloc((size_t)(s->g.rows * max_length) * sizeof *s->newseq);
    s->top_v = malloc((size_t)(3 * K) * sizeof *s->top_v);
    s->top_i = malloc((size_t)(3 * K) * sizeof *s->top_i);
    s->merged = malloc((size_t)(3 * K) * sizeof *s->merged);
    bool ok = s->running && s->cand && s->entry && s->src && s->newseq && s->top_v && s->top_i &&
              s->merged && entry_alloc(&s->next, K, max_length);
    for (int64_t b = 0; ok && b < batch; b++)
        ok = entry_alloc(&s->entry[b], K, max_length);
    if (!ok) {
        beam_free(s);
        return dc_fail("generate: out of memory for %lld beams", (long long)s->g.rows);
    }
    /* only the first beam is live at the start: the others would repeat it */
    for (int64_t r = 0; r < s->g.rows; r++)
        s->running[r] = r % K == 0 ? 0.0f : NEG_BIG;
    return 0;
}

/* The 2K best continuations of entry b over its K beams x vocab. */
static void top_candidates(beam_search *s, int64_t b) {
    const gen *g = &s->g;
    int64_t K = s->K, V = g->vocab, have = 0;
    for (int64_t k = 0; k < K; k++) {
        int64_t r = b * K + k;
        const float *lp = g->scores + r * V;
        for (int64_t t = 0; t < V; t++)
            keep_best(s->top_v, s->top_i, &have, s->n_cand, lp[t] + s->running[r], k * V + t);
    }
    for (int64_t c = 0; c < s->n_cand; c++) {
        int32_t t = (int32_t)(s->top_i[c] % V);
        s->cand[b * s->n_cand + c] =
            (cand){.score = s->top_v[c], .row = b * K + s->top_i[c] / V, .token = t,
                   .hit = t == g->o->eos_token_id || g->cur_len + 1 >= g->max_length};
    }
}

/* The K best unfinished candidates become the running beams (finished ones
 * sink by 1e9), into newseq, running and src. */
static void next_running(beam_search *s, int64_t b) {
    const gen *g = &s->g;
    const cand *c = s->cand + b * s->n_cand;
    int64_t have = 0;
    for (int64_t j = 0; j < s->n_cand; j++)
        keep_best(s->top_v, s->top_i, &have, s->K, c[j].score + (c[j].hit ? NEG_BIG : 0.0f), j);
    for (int64_t k = 0; k < s->K; k++) {
        const cand *h = &c[s->top_i[k]];
        int64_t r = b * s->K + k;
        int32_t *dst = s->newseq + r * g->max_length;
        memcpy(dst, g->seq + h->row * g->max_length, (size_t)g->cur_len * sizeof *dst);
        dst[g->cur_len] = h->token;
        s->running[r] = s->top_v[k];
        s->src[r] = h->row;
    }
}

/* The generated length to the power of the length penalty, as torch divides
 * a float32 tensor by a Python float. */
static float len_pen(int64_t generated, double penalty) {
    return (float)pow((double)generated, penalty);
}

/* Slot k of `next` from slot j of the merged list (the entry's K slots, then
 * its candidates, scores in s->merged). */
static void take_slot(beam_search *s, beam_entry *e, int64_t k, int64_t j, const cand *c) {
    const gen *g = &s->g;
    beam_entry *n = &s->next;
    int32_t *dst = n->seq + k * g->max_length;
    n->score[k] = s->merged[j];
    if (j < s->K) {
        n->finished[k] = e->finished[j];
        n->length[k] = e->length[j];
        memcpy(dst, e->seq + j * g->max_length, (size_t)e->length[j] * sizeof *dst);
        return;
    }
    const cand *h = &c[j - s->K];
    n->finished[k] = h->hit && j - s->K < s->K;
    n->length[k] = g->cur_len + 1;
    memcpy(dst, g->seq + h->row * g->max_length, (size_t)g->cur_len * sizeof *dst);
    dst[g->cur_len] = h->token;
}

/* Finished candidates among the first K join the entry's hypotheses, scored
 * with the length penalty, unless the entry takes no more. */
static void update_finished(beam_search *s, int64_t b) {
    const gen *g = &s->g;
    beam_entry *e = &s->entry[b];
    const cand *c = s->cand + b * s->n_cand;
    int64_t K = s->K, have = 0;
    bool full = true;
    for (int64_t k = 0; k < K; k++)
        full = full && e->finished[k];
    float div = len_pen(g->cur_len + 1 - g->prefix_len, g->o->length_penalty);
    for (int64_t k = 0; k < K; k++)
        s->merged[k] = e->score[k];
    for (int64_t j = 0; j < s->n_cand; j++) {
        float x = c[j].score / div;
        x += full && g->o->early_stopping == DC_EARLY_STOP_TRUE ? NEG_BIG : 0.0f;
        x += e->improvable ? 0.0f : NEG_BIG;
        x += c[j].hit && j < K ? 0.0f : NEG_BIG;
        s->merged[K + j] = x;
    }
    for (int64_t j = 0; j < K + s->n_cand; j++)
        keep_best(s->top_v, s->top_i, &have, K, s->merged[j], j);
    for (int64_t k = 0; k < K; k++)
        take_slot(s, e, k, s->top_i[k], c);
    beam_entry t = *e;
    *e = s->next;
    e->improvable = t.improvable;
    s->next = t;
}

/* Whether entry b's best running beam may still beat its worst hypothesis
 * (after cur_len has moved on). */
static void check_improvable(beam_search *s, int64_t b) {
    const gen *g = &s->g;
    beam_entry *e = &s->entry[b];
    const dc_text_gen_options *o = g->o;
    int64_t len = o->early_stopping == DC_EARLY_STOP_NEVER && o->length_penalty > 0
                      ? g->max_length - g->prefix_len
                      : g->cur_len - g->prefix_len;
    float best = s->running[b * s->K] / len_pen(len, o->length_penalty);
    float worst = e->score[0];
    for (int64_t k = 1; k < s->K; k++)
        worst = e->score[k] < worst ? e->score[k] : worst;
    bool any = false;
    for (int64_t k = 0; k < s->K; k++)
        any = any || best > (e->finished[k] ? worst : NEG_BIG);
    e->improvable = e->improvable && any;
}

/* One step for every entry; *done when the search is over. */
static int beam_step(beam_search *s, bool *done) {
    gen *g = &s->g;
    if (gen_step(g))
        return -1;
    /* rows are independent: their log-softmax (an exp per token) in parallel */
#pragma omp parallel for
    for (int64_t r = 0; r < g->rows; r++)
        log_softmax(g->scores + r * g->vocab, g->vocab);
    for (int64_t r = 0; r < g->rows; r++)
        process_row(g, r, g->scores + r * g->vocab);
    bool all_hit = true;
    for (int64_t b = 0; b < s->batch; b++) {
        top_candidates(s, b);
        for (int64_t j = 0; j < s->n_cand; j++)
            all_hit = all_hit && s->cand[b * s->n_cand + j].hit;
        next_running(s, b);
        update_finished(s, b);
    }
    int32_t *t = g->seq;
    g->seq = s->newseq;
    s->newseq = t;
    g->cur_len++;
    bool improvable = false, all_full = true;
    for (int64_t b = 0; b < s->batch; b++) {
        check_improvable(s, b);
        improvable = improvable || s->entry[b].improvable;
        for (int64_t k = 0; k < s->K; k++)
            all_full = all_full && s->entry[b].finished[k];
    }
    *done = !improvable || (all_full && g->o->early_stopping == DC_EARLY_STOP_TRUE) || all_hit;
    if (*done)
        return 0;
    return g->lm->reorder(g->lm->self, s->src) ? dc_fail_prefix("generate: model reorder") : 0;
}

/* The first num_return_sequences hypotheses of every entry, padded to the longest. */
static int beam_output(const beam_search *s, dc_text_gen_output *out) {
    const dc_text_gen_options *o = s->g.o;
    int64_t R = o->num_return_sequences, len = 0;
    for (int64_t b = 0; b < s->batch; b++)
        for (int64_t k = 0; k < R; k++)
            len = s->entry[b].length[k] > len ? s->entry[b].length[k] : len;
    if (output_alloc(out, s->batch * R, len))
        return -1;
    int32_t fill = o->pad_token_id > 0 ? o->pad_token_id : o->eos_token_id;
    for (int64_t b = 0; b < s->batch; b++)
        for (int64_t k = 0; k < R; k++) {
            const beam_entry *e = &s->entry[b];
            int64_t i = b * R + k;
            int32_t *dst = out->ids + i * len;
            memcpy(dst, e->seq + k * s->g.max_length, (size_t)e->length[k] * sizeof *dst);
            for (int64_t t = e->length[k]; t < len; t++)
                dst[t] = fill;
            out->lengths[i] = e->length[k];
            out->scores[i] = e->score[k];
        }
    return 0;
}

static int beam(const dc_lm *lm, const dc_text_gen_options *o, int64_t batch,
                const int32_t *prefix, int64_t prefix_len, int64_t max_length,
                dc_text_gen_output *out) {
    beam_search s;
    if (beam_init(&s, lm, o, batch, prefix, prefix_len, max_length))
        return -1;
    bool done = false;
    int rc = 0;
    while (!rc && !done)
        rc = beam_step(&s, &done);
    if (!rc)
        rc = beam_output(&s, out);
    beam_free(&s);
    return rc;
}

int dc_text_generate(const dc_lm *lm, const dc_text_gen_options *o, int64_t batch,
                     const int32_t *prefix, int64_t prefix_len, dc_text_gen_output *out) {
    memset(out, 0, sizeof *out);
    int64_t max_length = 0;
    if (check_options(lm, o, batch, prefix, prefix_len, &max_length))
        return -1;
    if (o->num_beams > 1)
        return beam(lm, o, batch, prefix, prefix_len, max_length, out);
    return greedy(lm, o, batch, prefix, prefix_len, max_length, out);
}
