/* Attention: forward against a plain double-precision loop, backward against
 * finite differences, on one thread and two (cases large enough to go
 * parallel, with several query chunks, lengths and head sizes that are not
 * whole vectors); q, k, v as one tensor; inputs that do or do not require
 * grad; a sample's results the same bits alone and in a batch; and the shape
 * errors. */
#include "testutil.h"

#include "autograd/error.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int64_t n, lq, lk;
    int heads, d;
    bool causal;
    float scale; /* 0: 1/sqrt(d) */
} att_case;

static const att_case cases[] = {
    {"self, 1 head", 2, 7, 7, 1, 5, false, 0.0f},
    {"self, 3 heads", 2, 7, 7, 3, 5, false, 0.0f},
    {"cross", 2, 6, 9, 2, 3, false, 0.0f},
    {"causal", 2, 7, 7, 3, 5, true, 0.0f},
    {"explicit scale", 1, 5, 8, 2, 4, false, 0.3f},
    {"one pair, causal", 1, 7, 7, 1, 5, true, 0.0f},
    {"long, threaded", 1, 67, 37, 2, 18, false, 0.1f},
    {"long, causal, threaded", 1, 67, 67, 1, 17, true, 0.1f},
    /* several query chunks of several pairs: a thread keeps a pair's packed keys
     * and values from one chunk to its next, and must repack them for another pair */
    {"long, pairs of chunks", 2, 130, 29, 3, 6, false, 0.0f},
    {"causal after cached keys", 2, 3, 8, 2, 4, true, 0.0f},
    {"causal, one new query", 3, 1, 6, 3, 2, true, 0.0f},
    /* heads of several vectors (a UNet's 40 channels): the forward's P v in
     * blocks of 2 or 3 vectors and a last one; rows short of a whole block;
     * over 32 queries, for the gradient check's looser bound on longer sums */
    {"wide heads", 2, 37, 45, 2, 40, false, 0.1f},
    {"wider heads, causal", 1, 35, 35, 1, 70, true, 0.05f},
    /* at most 4 queries (FEW_QUERIES): keys and values read in place, 4 keys
     * at a time and a short last block, channels in vectors and a remainder
     * (40: 2 vectors of 16 and 8 left; of 8, 5 whole), P v for 1 to 4 rows;
     * a decoder's cross-attention over many image tokens (threaded), and its
     * causal self-attention after cached keys */
    {"few queries: one, wide head", 2, 1, 7, 2, 40, false, 0.0f},
    {"few queries: two, causal after cached keys", 2, 2, 9, 3, 37, true, 0.0f},
    {"few queries: three, head of 3", 3, 3, 5, 2, 3, false, 0.2f},
    {"few queries: four, causal", 1, 4, 6, 2, 17, true, 0.0f},
    {"few queries: cross over many keys, threaded", 2, 3, 203, 2, 48, false, 0.0f},
    /* one sample on two threads: its heads in two groups, of 1 and 2 heads */
    {"few queries: heads in groups, threaded", 1, 2, 150, 3, 40, false, 0.0f},
};

/* The kernels go parallel for cases of CPU_PAR_MIN multiply-adds and more
 * (the "threaded" ones) when there are threads. */
static const int thread_counts[] = {1, 2};

/* Elements probed per input by a gradient check: all of them on one thread;
 * a sample on two, where every forward starts an OpenMP team, which is slow
 * on a loaded machine. */
static int probes(int threads) { return threads == 1 ? 0 : 16; }

/* The gradient check's step and tolerances. The loss's f32 rounding, divided
 * by twice the step, must stay well under GC_ATOL: at a step of 1e-2 a case
 * of some 400 outputs (heads of 37 channels) went past it one run in twenty.
 * Attention is smooth, so the larger step's curvature error is small, and the
 * Richardson retry in tu_gradcheck cancels what is left of it. */
#define GC_EPS 3e-2
#define GC_ATOL 1e-4
/* The long cases sum over dozens of keys and queries in f32: the finite
 * differences of their loss carry ~1e-4 of rounding (the BLAS kernels showed
 * it as well). */
#define GC_ATOL_LONG 1e-3
#define GC_RTOL 1e-3

/* out [N, Lq, heads*d] = softmax(q k^T * scale + mask) v per (n, head), in double. */
static void reference(const att_case *c, const float *q, const float *k, const float *v,
                      double *out) {
    int64_t ch = (int64_t)c->heads * c->d;
    double scale = c->scale != 0.0f ? c->scale : 1.0 / sqrt(c->d);
    double *w = malloc((size_t)c->lk * sizeof *w);
    for (int64_t n = 0; n < c->n; n++)
        for (int h = 0; h < c->heads; h++)
            for (int64_t i = 0; i < c->lq; i++) {
                const float *qi = q + (n * c->lq + i) * ch + h * c->d;
                double max = -INFINITY, sum = 0;
                for (int64_t j = 0; j < c->lk; j++) {
                    const float *kj = k + (n * c->lk + j) * ch + h * c->d;
                    double s = 0;
                    for (int e = 0; e < c->d; e++)
                        s += (double)qi[e] * kj[e];
                    w[j] = c->causal && j > i + c->lk - c->lq ? -INFINITY : s * scale;
                    max = fmax(max, w[j]);
                }
                for (int64_t j = 0; j < c->lk; j++)
                    sum += w[j] = exp(w[j] - max);
                for (int e = 0; e < c->d; e++) {
                    double acc = 0;
                    for (int64_t j = 0; j < c->lk; j++)
                        acc += w[j] / sum * v[(n * c->lk + j) * ch + h * c->d + e];
                    out[(n * c->lq + i) * ch + h * c->d + e] = acc;
                }
            }
    free(w);
}

static dc_tensor *run_attention(dc_ctx *ctx, dc_tensor **in, void *arg) {
    const att_case *c = arg;
    return dc_attention(ctx, in[0], in[1], in[2], c->heads, c->causal, c->scale);
}

/* q, k and v one tensor, plus a residual: x + attention(x, x, x). The
 * residual's gradient reaches x first, so all three of the attention's
 * gradients must add to it, not overwrite it. */
static dc_tensor *run_self(dc_ctx *ctx, dc_tensor **in, void *arg) {
    const att_case *c = arg;
    dc_tensor *x = in[0];
    return dc_add(ctx, x, dc_attention(ctx, x, x, x, c->heads, c->causal, c->scale));
}

static void check_forward(dc_ctx *ctx, const att_case *c, dc_tensor **in, const double *want) {
    dc_tensor *out = run_attention(ctx, in, (void *)c);
    ck_assert_msg(out != NULL, "%s: %s", c->name, dc_error());
    ck_assert_int_eq(out->ndim, 3);
    ck_assert(out->shape[0] == c->n && out->shape[1] == c->lq &&
              out->shape[2] == (int64_t)c->heads * c->d);
    ck_assert(ctx->tape && ctx->tape->saved[0]); /* recorded, P kept */
    tu_assert_close(out->data, want, out->numel, 1e-5, 1e-4, c->name);
    /* without a tape P lives in per-thread scratch instead: the same result */
    bool was = dc_set_grad_enabled(ctx, false);
    out = run_attention(ctx, in, (void *)c);
    ck_assert_msg(out != NULL, "%s: %s", c->name, dc_error());
    tu_assert_close(out->data, want, out->numel, 1e-5, 1e-4, c->name);
    dc_set_grad_enabled(ctx, was);
}

static void make_inputs(dc_ctx *ctx, const att_case *c, dc_tensor **in) {
    int64_t ch = (int64_t)c->heads * c->d;
    in[0] = tu_leaf(ctx, DC_SHAPE(c->n, c->lq, ch));
    in[1] = tu_leaf(ctx, DC_SHAPE(c->n, c->lk, ch));
    in[2] = tu_leaf(ctx, DC_SHAPE(c->n, c->lk, ch));
}

static void check_case(const att_case *c, int threads) {
    omp_set_num_threads(threads);
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[3];
    make_inputs(ctx, c, in);
    double *want = malloc((size_t)in[0]->numel * sizeof *want);
    reference(c, in[0]->data, in[1]->data, in[2]->data, want);
    check_forward(ctx, c, in, want);
    free(want);
    dc_ctx_reset(ctx); /* drop the tape of the forward check */
    if (c->d > 32 && tu_sanitized()) { /* minutes under ASan; the normal build checks them */
        tu_ctx_free(ctx);
        return;
    }
    make_inputs(ctx, c, in);
    tu_gradcheck(ctx, run_attention, (void *)c, in, 3, GC_EPS, c->lq > 32 ? GC_ATOL_LONG : GC_ATOL,
                 GC_RTOL, probes(threads));
    tu_ctx_free(ctx);
}

START_TEST(test_cases) {
    for (size_t t = 0; t < sizeof thread_counts / sizeof thread_counts[0]; t++)
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            check_case(&cases[i], thread_counts[t]);
}
END_TEST

START_TEST(test_one_tensor) {
    for (size_t t = 0; t < sizeof thread_counts / sizeof thread_counts[0]; t++) {
        omp_set_num_threads(thread_counts[t]);
        for (int causal = 0; causal < 2; causal++) {
            att_case c = {"x + attention(x, x, x)", 2, 6, 6, 3, 3, causal, 0.0f};
            dc_ctx *ctx = tu_ctx();
            dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(2, 6, 9))};
            double want[108];
            reference(&c, in[0]->data, in[0]->data, in[0]->data, want);
            for (int i = 0; i < 108; i++)
                want[i] += ((const float *)in[0]->data)[i];
            dc_tensor *out = run_self(ctx, in, &c);
            ck_assert_msg(out != NULL, "%s", dc_error());
            tu_assert_close(out->data, want, out->numel, 1e-5, 1e-4, c.name);
            dc_ctx_reset(ctx);
            in[0] = tu_leaf(ctx, DC_SHAPE(2, 6, 9));
            tu_gradcheck(ctx, run_self, &c, in, 1, GC_EPS, GC_ATOL, GC_RTOL,
                         probes(thread_counts[t]));
            tu_ctx_free(ctx);
        }
    }
}
END_TEST

/* Every subset of q, k, v requiring grad: the others get no gradient, and
 * with none nothing is recorded. */
START_TEST(test_grad_subsets) {
    const att_case c = {"subset", 2, 5, 6, 2, 3, false, 0.0f};
    omp_set_num_threads(1);
    for (int mask = 0; mask < 8; mask++) {
        dc_ctx *ctx = tu_ctx();
        dc_tensor *in[3] = {tu_randn(ctx, DC_SHAPE(2, 5, 6)), tu_randn(ctx, DC_SHAPE(2, 6, 6)),
                            tu_randn(ctx, DC_SHAPE(2, 6, 6))};
        for (int i = 0; i < 3; i++)
            in[i]->requires_grad = mask >> i & 1;
        if (mask == 0) {
            dc_tensor *out = run_attention(ctx, in, (void *)&c);
            ck_assert_msg(out != NULL, "%s", dc_error());
            ck_assert(!out->requires_grad);
            ck_assert_ptr_null(ctx->tape);
        } else {
            tu_gradcheck(ctx, run_attention, (void *)&c, in, 3, GC_EPS, GC_ATOL, GC_RTOL, 0);
            for (int i = 0; i < 3; i++)
                ck_assert_msg((in[i]->grad != NULL) == (mask >> i & 1), "mask %d input %d", mask,
                              i);
        }
        tu_ctx_free(ctx);
    }
}
END_TEST

/* Sample 1 of a batch of 3 and the same sample alone: the same output and
 * gradients, to the bit (the work split must not depend on the batch); with
 * many queries and with few (read in place; alone, the sample's heads are
 * split in two groups for the two threads, in the batch they are not). */
static void check_batch_invariant(int64_t lq, int64_t C, int HEADS) {
    enum { L = 70 };
    const int64_t len[4] = {lq, L, L, lq}; /* q, k, v, dout */
    omp_set_num_threads(2);
    dc_ctx *ctx = tu_ctx();
    dc_tensor *big[4], *one[4];
    for (int i = 0; i < 4; i++) {
        big[i] = i < 3 ? tu_leaf(ctx, DC_SHAPE(3, len[i], C))
                       : tu_randn(ctx, DC_SHAPE(3, len[i], C));
        one[i] = dc_new(ctx, DC_F32, DC_SHAPE(1, len[i], C));
        ck_assert_ptr_nonnull(one[i]);
        memcpy(one[i]->data, (float *)big[i]->data + len[i] * C,
               (size_t)(len[i] * C) * sizeof(float));
        one[i]->requires_grad = i < 3;
    }
    dc_tensor *oo = dc_attention(ctx, one[0], one[1], one[2], HEADS, false, 0.0f);
    ck_assert_msg(oo && dc_backward_from(ctx, oo, one[3]) == 0, "%s", dc_error());
    dc_tensor *ob = dc_attention(ctx, big[0], big[1], big[2], HEADS, false, 0.0f);
    ck_assert_msg(ob && dc_backward_from(ctx, ob, big[3]) == 0, "%s", dc_error());
    ck_assert(memcmp((float *)ob->data + lq * C, oo->data, (size_t)(lq * C) * sizeof(float)) == 0);
    for (int i = 0; i < 3; i++)
        ck_assert_msg(memcmp((float *)big[i]->grad->data + len[i] * C, one[i]->grad->data,
                             (size_t)(len[i] * C) * sizeof(float)) == 0,
                      "%lld queries: gradient of input %d", (long long)lq, i);
    tu_ctx_free(ctx);
}

START_TEST(test_batch_invariant) {
    check_batch_invariant(70, 32, 1);
    check_batch_invariant(4, 128, 4);
}
END_TEST

/* dc_attention with these shapes must fail with a message containing `msg`. */
static void expect_error(const int64_t qs[3], const int64_t ks[3], const int64_t vs[3], int heads,
                         bool causal, const char *msg) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *q = tu_randn(ctx, 3, qs), *k = tu_randn(ctx, 3, ks), *v = tu_randn(ctx, 3, vs);
    ck_assert_ptr_null(dc_attention(ctx, q, k, v, heads, causal, 0.0f));
    ck_assert(ctx->failed);
    ck_assert_msg(strstr(dc_error(), msg), "want \"%s\", got \"%s\"", msg, dc_error());
    tu_ctx_free(ctx);
}

START_TEST(test_errors) {
    const int64_t q[3] = {2, 7, 12}, k[3] = {2, 9, 12};
    expect_error(q, k, k, 5, false,
                 "attention: the channel count does not split into equal heads "
                 "(q [2, 7, 12], k [2, 9, 12], v [2, 9, 12], 5 heads)");
    expect_error(q, k, k, 0, false, "attention: heads must be at least 1");
    expect_error(q, (int64_t[]){3, 9, 12}, (int64_t[]){3, 9, 12}, 2, false,
                 "attention: batch sizes differ");
    expect_error(q, k, (int64_t[]){1, 9, 12}, 2, false, "attention: batch sizes differ");
    expect_error(q, (int64_t[]){2, 9, 8}, (int64_t[]){2, 9, 8}, 2, false,
                 "attention: channel counts differ");
    expect_error(q, k, (int64_t[]){2, 9, 6}, 2, false, "attention: channel counts differ");
    expect_error(q, k, (int64_t[]){2, 8, 12}, 2, false,
                 "attention: k and v lengths differ (q [2, 7, 12], k [2, 9, 12], v [2, 8, 12]");
    expect_error(
        k, q, q, 2, true,
        "attention: causal attention needs at least as many keys as queries (q [2, 9, 12], "
        "k [2, 7, 12], v [2, 7, 12], 2 heads, causal)");

    dc_ctx *ctx = tu_ctx(); /* not [N, L, C] */
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(2, 7, 3, 4)), *y = tu_randn(ctx, DC_SHAPE(2, 7, 12));
    ck_assert_ptr_null(dc_attention(ctx, x, y, y, 2, false, 0.0f));
    ck_assert_msg(strstr(dc_error(), "attention: q, k and v must be [N, L, C]"), "%s", dc_error());
    /* sticky: a later call fails too, keeping the first message */
    ck_assert_ptr_null(dc_attention(ctx, y, y, y, 2, false, 0.0f));
    ck_assert_msg(strstr(dc_error(), "must be [N, L, C]"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_attention");
    TCase *tc = tu_tcase(s, "ops", 300);
    tcase_add_test(tc, test_cases);
    tcase_add_test(tc, test_one_tensor);
    tcase_add_test(tc, test_grad_subsets);
    tcase_add_test(tc, test_batch_invariant);
    tcase_add_test(tc, test_errors);
    return tu_run(s);
}
