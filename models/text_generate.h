/*
 * Text generation as transformers' GenerationMixin.generate() does it, for any
 * language model behind a two-call interface: greedy search, beam search
 * (length penalty, early stopping true / false / "never", several returned
 * sequences) and multinomial sampling (temperature, top-k, top-p), with
 * min_length and the repetition penalty. Used by `diffc caption` and by
 * training's sample captions, so it sits in models/, below both.
 *
 *   dc_lm lm = {decoder, vocab, step_fn, reorder_fn};
 *   dc_text_gen_options o = dc_text_gen_default_options();
 *   o.num_beams = 3; o.eos_token_id = sep; o.pad_token_id = pad;
 *   dc_text_gen_output out;
 *   dc_text_generate(&lm, &o, n_images, prefix, prefix_len, &out);
 *   sequence i: out.ids[i * out.len ..], out.lengths[i] tokens before padding
 *   dc_text_gen_output_free(&out);
 *
 * The model holds its own state (a KV cache): each step call hands it the
 * tokens that follow what it has seen, for every row (the whole prefix first,
 * then one token), and it returns the logits of the next token. Rows are
 * grouped per batch entry: with K = dc_text_gen_rows_per_entry rows each
 * (num_beams; for sampling, num_return_sequences), row r belongs to entry
 * r / K. Beam search reorders rows between steps: reorder(src) makes row r
 * what row src[r] was (several rows may copy one).
 *
 * Greedy and beam search are token-exact with transformers 5.25 (the same
 * float32 operations in the same order; only near-ties within the last-place
 * rounding of log_softmax could differ). The rules kept, from
 * transformers/generation/utils.py (_beam_search and its helpers):
 * - max_length counts the prefix (max_new_tokens > 0 sets it to prefix +
 *   max_new_tokens). Left unset (0), it is transformers' default: the prefix
 *   and 20 new tokens, at most the model's max_position_embeddings
 *   (max_positions, when given). min_length counts the prefix too: eos is
 *   suppressed while the sequence is shorter.
 * - The processors run on the raw logits for greedy and sampling and on the
 *   log-softmax for beam search: repetition penalty (CTRL: a score s of a
 *   token already in the sequence, prefix included, becomes s * p if s < 0,
 *   else s / p), then min_length; for sampling then temperature, top-k, top-p
 *   (the smallest set of most likely tokens whose probability exceeds top_p,
 *   at least one), softmax and one draw.
 * - Greedy: a row that has produced eos gets pad_token_id from then on; the
 *   loop stops when every row has eos or max_length is reached.
 * - Beam search keeps 2K candidates per entry (the best accumulated
 *   log-probabilities over K beams x vocab). A candidate that ends with eos or
 *   reaches max_length is finished; among the first K candidates, it joins the
 *   entry's K best hypotheses with score sum(logprobs) / generated^length_penalty.
 *   The next beams are the best K unfinished candidates (finished ones are
 *   pushed down by 1e9). An entry stops taking hypotheses when early_stopping
 *   is true and it holds K, or when its best running beam (scored at the
 *   current length, or at max_length for "never" with a positive penalty)
 *   cannot beat its worst hypothesis. The whole batch stops when no entry can
 *   improve, when early_stopping is true and every entry holds K, or at
 *   max_length.
 * - Outputs: prefix + tokens, as many columns as the longest sequence.
 *   Greedy and sampling pad with pad_token_id (eos when it is unset); beam
 *   search pads with pad_token_id, or eos when pad_token_id is 0 or unset
 *   (transformers' `pad_token_id or eos_token_id[0]` on a tensor 0).
 *
 * Sampling draws from our Philox generator: reproducible for a seed, not the
 * numbers torch draws. The draw of row r when its sequence holds t tokens is
 * uniform element t of stream r of the seed, so it does not depend on the
 * batch size. One deliberate difference: transformers runs with a prefix of
 * max_length tokens or more (one token comes out); we refuse it.
 */
#ifndef DC_MODELS_TEXT_GENERATE_H
#define DC_MODELS_TEXT_GENERATE_H

#include <stdbool.h>
#include <stdint.h>

/* A language model behind generation. Both calls return 0, or -1 after dc_fail. */
typedef struct dc_lm {
    void *self;
    int64_t vocab;
    /* ids [rows, n]: the next n tokens of every row; logits [rows, vocab]: the
     * scores of the token after them. */
    int (*step)(void *self, const int32_t *ids, int64_t n, float *logits);
    /* Row r becomes row src[r], r < rows (beam search only). */
    int (*reorder)(void *self, const int64_t *src);
} dc_lm;

typedef enum {
    DC_EARLY_STOP_FALSE, /* stop when the best running beam, at its length, cannot win */
    DC_EARLY_STOP_TRUE,  /* stop as soon as num_beams hypotheses are finished */
    DC_EARLY_STOP_NEVER  /* the same as false, but scored at max_length when length_penalty > 0 */
} dc_early_stopping;

typedef struct dc_text_gen_options {
    int64_t max_length;           /* 0: unset (prefix + 20, at most max_positions); else prefix included */
    int64_t max_new_tokens;       /* 0: unset; > 0: max_length = prefix_len + this */
    int64_t max_positions;        /* 0: none; the model's positions, capping an unset max_length */
    int64_t min_length;           /* 0: prefix included */
    int64_t num_beams;            /* 1: greedy or sampling */
    int64_t num_return_sequences; /* 1: per batch entry; at most num_beams, or any with sampling */
    double length_penalty;        /* 1.0: exponent of the generated length in beam scores */
    dc_early_stopping early_stopping; /* false */
    double repetition_penalty;    /* 1.0: off */
    bool do_sample;               /* false; sampling with num_beams > 1 is refused */
    double temperature;           /* 1.0 */
    int64_t top_k;                /* 50 (transformers' default); 0: off */
    double top_p;                 /* 1.0: off */
    uint64_t seed;                /* 0 */
    int32_t eos_token_id;         /* -1: none */
    int32_t pad_token_id;         /* -1: none (eos pads) */
} dc_text_gen_options;

/* transformers' GenerationConfig defaults (max_length unset), no eos or pad. */
dc_text_gen_options dc_text_gen_default_options(void);
/* The total length generation runs to for a prefix of prefix_len tokens
 * (max_new_tokens, max_length or the default): what a KV cache must hold. */
int64_t dc_text_gen_max_length(const dc_text_gen_options *o, int64_t prefix_len);
/* The model rows each batch entry takes: num_beams, or num_return_sequences
 * when sampling one beam (each row its own sample). */
int64_t dc_text_gen_rows_per_entry(const dc_text_gen_options *o);

typedef struct dc_text_gen_output {
    int64_t n;        /* sequences: batch * num_return_sequences, entry by entry */
    int64_t len;      /* columns of ids */
    int32_t *ids;     /* [n, len]: prefix, generated tokens, padding */
    int64_t *lengths; /* [n]: tokens before the padding (prefix and eos included) */
    float *scores;    /* [n]: beam search: the hypothesis score; else 0 */
} dc_text_gen_output;

/* Generate for `batch` entries whose prefixes are prefix [batch, prefix_len]
 * (BLIP: bos, then the prompt's tokens without [SEP]). On success *out holds
 * the sequences (free with dc_text_gen_output_free); on failure it is empty
 * and dc_error() says why (bad options, ids outside the vocabulary, a failed
 * model step). */
int dc_text_generate(const dc_lm *lm, const dc_text_gen_options *o, int64_t batch,
                     const int32_t *prefix, int64_t prefix_len, dc_text_gen_output *out);
void dc_text_gen_output_free(dc_text_gen_output *out); /* safe on an empty or freed output */

#endif
