/* Dropout, embedding, timestep embedding, the MSE and cross-entropy losses: forward against
 * plain loops (and hand-computed values), backward against finite
 * differences, errors named. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- dropout ---- */

/* Rewinds the stream counter so every probe of the gradcheck draws the same mask. */
static dc_tensor *run_dropout(dc_ctx *ctx, dc_tensor **in, void *arg) {
    ctx->rng_calls = 0;
    return dc_dropout(ctx, in[0], *(float *)arg);
}

START_TEST(test_dropout_forward) {
    dc_ctx *ctx = tu_ctx();
    ctx->seed = tu_next();
    const float p = 0.3f;
    const int64_t n = 100003;
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(n));
    dc_tensor *y = dc_dropout(ctx, x, p);
    ck_assert_msg(y != NULL, "%s", dc_error());
    ck_assert_uint_eq(ctx->rng_calls, 1);
    double scale = 1.0 / (1.0 - p);
    int64_t kept = 0;
    const float *xd = x->data, *yd = y->data;
    for (int64_t i = 0; i < n; i++) {
        bool drop = dc_rand_uniform(ctx->seed, 0, (uint64_t)i) < p; /* the documented mask */
        if (drop)
            ck_assert_msg(yd[i] == 0.0f, "element %lld should be dropped", (long long)i);
        else
            ck_assert_msg(fabs(yd[i] - xd[i] * scale) <= 1e-6 * fabs(xd[i] * scale),
                          "element %lld: %g, want %g", (long long)i, (double)yd[i], xd[i] * scale);
        kept += !drop;
    }
    /* about six standard errors of the kept fraction */
    ck_assert_msg(fabs(kept / (double)n - (1 - p)) < 6 * sqrt(p * (1 - p) / n), "kept %lld of %lld",
                  (long long)kept, (long long)n);
    /* the next call uses the next stream: another mask */
    dc_tensor *y2 = dc_dropout(ctx, x, p);
    ck_assert_uint_eq(ctx->rng_calls, 2);
    ck_assert_msg(memcmp(y->data, y2->data, dc_tensor_bytes(y)) != 0, "two calls, one mask");
    /* a new step with the same seed replays the first mask */
    float *x_host = malloc((size_t)n * sizeof *x_host),
          *y_host = malloc((size_t)n * sizeof *y_host);
    memcpy(x_host, xd, (size_t)n * sizeof *x_host);
    memcpy(y_host, yd, (size_t)n * sizeof *y_host);
    dc_ctx_reset(ctx);
    dc_tensor *y3 = dc_dropout(ctx, dc_from_host(ctx, DC_F32, DC_SHAPE(n), x_host), p);
    ck_assert_msg(memcmp(y3->data, y_host, (size_t)n * sizeof *y_host) == 0, "replay differs");
    free(x_host);
    free(y_host);
    tu_ctx_free(ctx);
}
END_TEST

START_TEST(test_dropout_grad) {
    for (int t = 0; t < 2; t++) {
        dc_ctx *ctx = tu_ctx();
        ctx->seed = tu_next();
        float p = t ? 0.5f : 0.1f;
        dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(3, 5, 7))};
        tu_gradcheck(ctx, run_dropout, &p, in, 1, 1e-2, 1e-3, 1e-2, 0);
        tu_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_dropout_identity) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_leaf(ctx, DC_SHAPE(4, 3));
    ctx->training = false;
    ck_assert_ptr_eq(dc_dropout(ctx, x, 0.5f), x);
    ctx->training = true;
    ck_assert_ptr_eq(dc_dropout(ctx, x, 0.0f), x);
    ck_assert_ptr_null(ctx->tape);
    ck_assert_uint_eq(ctx->rng_calls, 0);
    static const float bad[] = {-0.1f, 1.0f, 1.5f, NAN};
    for (int i = 0; i < 4; i++) {
        dc_ctx_reset(ctx);
        ck_assert_ptr_null(dc_dropout(ctx, tu_randn(ctx, DC_SHAPE(2)), bad[i]));
        ck_assert_msg(strstr(dc_error(), "dropout: probability") &&
                          strstr(dc_error(), "outside [0, 1)"),
                      "%s", dc_error());
    }
    tu_ctx_free(ctx);
}
END_TEST

/* ---- embedding ---- */

typedef struct {
    dc_tensor *idx;
} embedding_arg;

static dc_tensor *run_embedding(dc_ctx *ctx, dc_tensor **in, void *arg) {
    return dc_embedding(ctx, in[0], ((embedding_arg *)arg)->idx);
}

START_TEST(test_embedding) {
    /* Rows repeat in idx, so the backward's scatter must add; C = 131 spans
     * more than two of the kernel's column chunks. */
    static const int64_t sizes[][2] = {{7, 5}, {4, 131}};
    for (int t = 0; t < 2; t++) {
        dc_ctx *ctx = tu_ctx();
        int64_t v = sizes[t][0], c = sizes[t][1];
        dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(v, c))};
        dc_tensor *idx = dc_new(ctx, DC_I32, DC_SHAPE(2, 3, 3));
        int32_t *ix = idx->data;
        for (int i = 0; i < 18; i++)
            ix[i] = (int32_t)(tu_next() % (uint64_t)v);
        ix[0] = 0, ix[17] = (int32_t)v - 1, ix[5] = ix[9];
        embedding_arg arg = {idx};
        dc_tensor *out = run_embedding(ctx, in, &arg);
        ck_assert_msg(out != NULL, "%s", dc_error());
        ck_assert(out->ndim == 4 && out->shape[0] == 2 && out->shape[1] == 3 &&
                  out->shape[2] == 3 && out->shape[3] == c);
        double *want = malloc((size_t)out->numel * sizeof *want);
        for (int i = 0; i < 18; i++)
            for (int64_t k = 0; k < c; k++)
                want[i * c + k] = ((float *)in[0]->data)[ix[i] * c + k];
        tu_assert_close(out->data, want, out->numel, 0, 0, "embedding");
        free(want);
        tu_gradcheck(ctx, run_embedding, &arg, in, 1, 1e-2, 1e-3, 1e-2, 200);
        tu_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_embedding_refused) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *table;
    int32_t bad[2][4] = {{0, 4, 5, 1}, {2, -1, 0, 0}};
    const char *want[2] = {"embedding: index 5 at position 2 is outside [0, 5)",
                           "embedding: index -1 at position 1 is outside [0, 5)"};
    for (int i = 0; i < 2; i++) {
        dc_ctx_reset(ctx);
        table = tu_randn(ctx, DC_SHAPE(5, 3));
        dc_tensor *idx = dc_from_host(ctx, DC_I32, DC_SHAPE(4), bad[i]);
        ck_assert_ptr_null(dc_embedding(ctx, table, idx));
        ck_assert_msg(strstr(dc_error(), want[i]), "%s", dc_error());
    }
    dc_ctx_reset(ctx);
    table = tu_randn(ctx, DC_SHAPE(5, 3));
    ck_assert_ptr_null(dc_embedding(ctx, table, tu_randn(ctx, DC_SHAPE(4))));
    ck_assert_msg(
        strstr(dc_error(), "embedding: indices must be i32 (table f32 [5, 3], indices f32 [4])"),
        "%s", dc_error());
    dc_ctx_reset(ctx);
    dc_tensor *idx4 = dc_new(ctx, DC_I32, DC_SHAPE(1, 1, 1, 1));
    ((int32_t *)idx4->data)[0] = 0;
    ck_assert_ptr_null(dc_embedding(ctx, tu_randn(ctx, DC_SHAPE(5, 3)), idx4));
    ck_assert_msg(strstr(dc_error(), "at most 3 dimensions"), "%s", dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_embedding(ctx, tu_randn(ctx, DC_SHAPE(15)), idx4));
    ck_assert_msg(strstr(dc_error(), "table must be [V, C]"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

/* ---- timestep embedding ---- */

/* Hand-computed frequencies exp(-ln(10000) k / (dim/2 - shift)):
 * dim 4, shift 1: 10000^(-k)     dim 5, shift 0: 10000^(-k/2)
 * dim 7, shift 1: 10000^(-k/2)   dim 6, shift 0: 10000^(-k/3) */
static const struct {
    int dim;
    float shift;
    double freq[3];
} hand[] = {
    {4, 1, {1, 1e-4}},
    {5, 0, {1, 1e-2}},
    {7, 1, {1, 1e-2, 1e-4}},
    {6, 0, {1, 4.6415888336127789e-2, 2.1544346900318837e-3}},
};

START_TEST(test_timestep_embedding_hand) {
    static const float ts[3] = {0, 2, 3.5f};
    for (size_t c = 0; c < sizeof hand / sizeof hand[0]; c++)
        for (int flip = 0; flip < 2; flip++) {
            dc_ctx *ctx = tu_ctx();
            int dim = hand[c].dim, half = dim / 2;
            dc_tensor *t = dc_from_host(ctx, DC_F32, DC_SHAPE(3), ts);
            dc_tensor *out = dc_timestep_embedding(ctx, t, dim, flip, hand[c].shift, 10000);
            ck_assert_msg(out != NULL, "%s", dc_error());
            ck_assert(out->ndim == 2 && out->shape[0] == 3 && out->shape[1] == dim);
            double want[3 * 7];
            for (int i = 0; i < 3; i++) {
                for (int k = 0; k < half; k++) {
                    double a = ts[i] * hand[c].freq[k];
                    want[i * dim + (flip ? half : 0) + k] = sin(a);
                    want[i * dim + (flip ? 0 : half) + k] = cos(a);
                }
                if (dim % 2)
                    want[i * dim + dim - 1] = 0;
            }
            char what[64];
            snprintf(what, sizeof what, "dim %d shift %g flip %d", dim, (double)hand[c].shift,
                     flip);
            tu_assert_close(out->data, want, 3 * dim, 2e-6, 0, what);
            tu_ctx_free(ctx);
        }
}
END_TEST

/* Integer timesteps over the whole training range, against the f32 steps of
 * diffusers (see the kernel) with exp/sin/cos in double. */
START_TEST(test_timestep_embedding_i32) {
    dc_ctx *ctx = tu_ctx();
    enum { N = 9, DIM = 33 };
    int32_t ts[N];
    for (int i = 0; i < N; i++)
        ts[i] = (int32_t)(tu_next() % 1000);
    ts[0] = 0, ts[1] = 999;
    dc_tensor *t = dc_from_host(ctx, DC_I32, DC_SHAPE(N), ts);
    dc_tensor *out = dc_timestep_embedding(ctx, t, DIM, true, 1, 10000);
    ck_assert_msg(out != NULL, "%s", dc_error());
    double want[N * DIM];
    int half = DIM / 2;
    float neg_log = (float)-log(10000.0);
    for (int i = 0; i < N; i++) {
        for (int k = 0; k < half; k++) {
            float freq = (float)exp(neg_log * (float)k / (float)(half - 1));
            float a = (float)ts[i] * freq;
            want[i * DIM + k] = cos(a);
            want[i * DIM + half + k] = sin(a);
        }
        want[i * DIM + DIM - 1] = 0;
    }
    tu_assert_close(out->data, want, N * DIM, 2e-6, 0, "i32 timesteps");
    tu_ctx_free(ctx);
}
END_TEST

/* GaussianFourierProjection: random noise levels (f32, and i32 steps) and
 * weights of the size diffusers draws (scale 16), against double loops. */
START_TEST(test_fourier_embedding) {
    dc_ctx *ctx = tu_ctx();
    enum { N = 6, D = 9 };
    dc_tensor *t = dc_new(ctx, DC_F32, DC_SHAPE(N)), *w = tu_randn(ctx, DC_SHAPE(D));
    int32_t steps[N];
    for (int i = 0; i < N; i++) {
        ((float *)t->data)[i] = (float)tu_uniform(0.002, 80);
        steps[i] = (int32_t)(1 + tu_next() % 1000);
    }
    for (int k = 0; k < D; k++)
        ((float *)w->data)[k] *= 16;
    w->requires_grad = true; /* a parameter, frozen: still nothing recorded */
    dc_tensor *ti = dc_from_host(ctx, DC_I32, DC_SHAPE(N), steps);
    for (int flip = 0; flip < 2; flip++)
        for (int as_int = 0; as_int < 2; as_int++) {
            dc_tensor *out = dc_fourier_embedding(ctx, as_int ? ti : t, w, flip);
            ck_assert_msg(out != NULL, "%s", dc_error());
            ck_assert(out->shape[0] == N && out->shape[1] == 2 * D && !ctx->tape);
            double want[N * 2 * D];
            for (int i = 0; i < N; i++)
                for (int k = 0; k < D; k++) {
                    double tv = as_int ? steps[i] : ((float *)t->data)[i];
                    double a = 2 * M_PI * log(tv) * ((float *)w->data)[k];
                    want[i * 2 * D + (flip ? D : 0) + k] = sin(a);
                    want[i * 2 * D + (flip ? 0 : D) + k] = cos(a);
                }
            tu_assert_close(out->data, want, N * 2 * D, 1e-6, 0, flip ? "flipped" : "sin first");
        }
    ck_assert_ptr_null(dc_fourier_embedding(ctx, t, tu_randn(ctx, DC_SHAPE(2, 3)), false));
    ck_assert_msg(strstr(dc_error(), "fourier_embedding: w must be f32 [D], got f32 [2, 3]"), "%s",
                  dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_fourier_embedding(ctx, tu_randn(ctx, DC_SHAPE(2, 2)), w, false));
    ck_assert_msg(strstr(dc_error(), "t must be f32 or i32 [N], got f32 [2, 2]"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

START_TEST(test_timestep_embedding_refused) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *t = tu_leaf(ctx, DC_SHAPE(3));
    dc_tensor *out = dc_timestep_embedding(ctx, t, 8, false, 1, 10000);
    ck_assert(out && !out->requires_grad && !ctx->tape); /* data, not a parameter path */
    static const struct {
        int dim;
        float shift, max_period;
        const char *msg;
    } bad[] = {
        {0, 1, 10000, "dim 0 is not positive"},
        {2, 1, 10000, "shift 1: dim/2 - shift must be finite and nonzero (dim 2)"},
        {8, 4, 10000, "shift 4: dim/2 - shift"},
        {8, 1, 0, "max_period 0 is not positive"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dc_ctx_reset(ctx);
        t = tu_randn(ctx, DC_SHAPE(3));
        ck_assert_ptr_null(
            dc_timestep_embedding(ctx, t, bad[i].dim, false, bad[i].shift, bad[i].max_period));
        ck_assert_msg(strstr(dc_error(), bad[i].msg), "%s", dc_error());
    }
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(
        dc_timestep_embedding(ctx, tu_randn(ctx, DC_SHAPE(3, 1)), 8, false, 1, 10000));
    ck_assert_msg(
        strstr(dc_error(), "timestep_embedding: t must be f32 or i32 [N], got f32 [3, 1]"), "%s",
        dc_error());
    tu_ctx_free(ctx);
}
END_TEST

/* ---- MSE loss ---- */

static dc_tensor *run_mse(dc_ctx *ctx, dc_tensor **in, void *arg) {
    return dc_mse_loss(ctx, in[0], in[1], *(bool *)arg ? in[2] : NULL);
}

START_TEST(test_mse_loss) {
    static const int64_t shapes[][4] = {{3, 2, 5, 1}, {7, 1, 1, 1}};
    static const int ndims[] = {3, 1};
    for (int s = 0; s < 2; s++)
        for (int weighted = 0; weighted < 2; weighted++) {
            dc_ctx *ctx = tu_ctx();
            int nd = ndims[s];
            int64_t n = shapes[s][0];
            dc_tensor *in[3] = {tu_leaf(ctx, nd, shapes[s]), tu_leaf(ctx, nd, shapes[s]),
                                tu_leaf(ctx, DC_SHAPE(n))};
            in[1]->requires_grad = s == 0; /* target with and without a gradient */
            bool use_w = weighted;
            dc_tensor *out = run_mse(ctx, in, &use_w);
            ck_assert_msg(out != NULL, "%s", dc_error());
            ck_assert(out->ndim == 1 && out->shape[0] == 1);
            int64_t d = in[0]->numel / n;
            const float *p = in[0]->data, *t = in[1]->data, *w = in[2]->data;
            double want = 0;
            for (int64_t i = 0; i < n; i++) {
                double si = 0;
                for (int64_t j = 0; j < d; j++)
                    si += ((double)p[i * d + j] - t[i * d + j]) *
                          ((double)p[i * d + j] - t[i * d + j]);
                want += (use_w ? w[i] : 1.0) * si / d;
            }
            want /= n;
            tu_assert_close(out->data, &want, 1, 1e-6, 1e-6, "mse_loss");
            tu_gradcheck(ctx, run_mse, &use_w, in, use_w ? 3 : 2, 1e-2, 1e-3, 1e-2, 0);
            if (s == 1)
                ck_assert_ptr_null(in[1]->grad);
            tu_ctx_free(ctx);
        }
}
END_TEST

START_TEST(test_mse_loss_refused) {
    dc_ctx *ctx = tu_ctx();
    ck_assert_ptr_null(
        dc_mse_loss(ctx, tu_randn(ctx, DC_SHAPE(2, 3)), tu_randn(ctx, DC_SHAPE(3, 2)), NULL));
    ck_assert_msg(strstr(dc_error(), "mse_loss: pred [2, 3] and target [3, 2] differ"), "%s",
                  dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_mse_loss(ctx, tu_randn(ctx, DC_SHAPE(2, 3)),
                                   tu_randn(ctx, DC_SHAPE(2, 3)), tu_randn(ctx, DC_SHAPE(3))));
    ck_assert_msg(strstr(dc_error(), "mse_loss: w [3] must be [2], one weight per sample"), "%s",
                  dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(
        dc_mse_loss(ctx, tu_randn(ctx, DC_SHAPE(0, 3)), tu_randn(ctx, DC_SHAPE(0, 3)), NULL));
    ck_assert_msg(strstr(dc_error(), "mse_loss: pred [0, 3] is empty"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

/* ---- cross-entropy ---- */

static dc_tensor *run_cross_entropy(dc_ctx *ctx, dc_tensor **in, void *arg) {
    return dc_cross_entropy(ctx, in[0], arg);
}

/* Random labels in [0, k) as an i32 tensor [n]. */
static dc_tensor *random_labels(dc_ctx *ctx, int64_t n, int64_t k) {
    dc_tensor *y = dc_new(ctx, DC_I32, DC_SHAPE(n));
    for (int64_t i = 0; i < n; i++)
        ((int32_t *)y->data)[i] = (int32_t)(tu_next() % (uint64_t)k);
    return y;
}

/* The loss straight from its definition, in long double: no max subtracted,
 * so rows far from zero test the kernel's stable log-sum-exp against plain sums. */
static double cross_entropy_reference(const float *x, const int32_t *y, int64_t n, int64_t k) {
    long double total = 0;
    for (int64_t i = 0; i < n; i++) {
        long double s = 0;
        for (int64_t j = 0; j < k; j++)
            s += expl((long double)x[i * k + j]);
        total += logl(s) - x[i * k + y[i]];
    }
    return (double)(total / n);
}

START_TEST(test_cross_entropy) {
    static const int64_t sizes[][2] = {{5, 7}, {1, 2}, {9, 10}};
    for (int s = 0; s < 3; s++) {
        dc_ctx *ctx = tu_ctx();
        int64_t n = sizes[s][0], k = sizes[s][1];
        dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(n, k))};
        float *x = in[0]->data;
        float shift = s == 2 ? (float)tu_uniform(200, 800) : 0.0f; /* exp(shift) overflows a float */
        for (int64_t i = 0; i < n * k; i++)
            x[i] = x[i] * 3 + (i / k % 2 ? shift : -shift);
        dc_tensor *y = random_labels(ctx, n, k);
        dc_tensor *out = dc_cross_entropy(ctx, in[0], y);
        ck_assert_msg(out != NULL, "%s", dc_error());
        ck_assert(out->ndim == 1 && out->shape[0] == 1);
        double want = cross_entropy_reference(x, y->data, n, k);
        tu_assert_close(out->data, &want, 1, 1e-6, 1e-6, "cross_entropy");
        tu_gradcheck(ctx, run_cross_entropy, y, in, 1, 1e-2, 1e-3, 1e-2, 0);
        tu_ctx_free(ctx);
    }
}
END_TEST

/* Ignore index and label smoothing as PyTorch defines them, in long double
 * from the definition: the smoothed target is (1 - e) onehot + e / k, the
 * mean over the rows whose label is not `ignore`. */
static double cross_entropy_ex_reference(const float *x, const int32_t *y, int64_t n, int64_t k, int32_t ignore,
                                         double e) {
    long double total = 0;
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        if (y[i] == ignore)
            continue;
        long double s = 0;
        for (int64_t j = 0; j < k; j++)
            s += expl((long double)x[i * k + j]);
        for (int64_t j = 0; j < k; j++) {
            long double target = (1 - e) * (j == y[i]) + e / (double)k;
            total -= target * ((long double)x[i * k + j] - logl(s));
        }
        kept++;
    }
    return (double)(total / kept);
}

typedef struct {
    dc_tensor *labels;
    float smoothing;
} ce_ex_arg;

static dc_tensor *run_cross_entropy_ex(dc_ctx *ctx, dc_tensor **in, void *arg) {
    ce_ex_arg *a = arg;
    return dc_cross_entropy_ex(ctx, in[0], a->labels, -100, a->smoothing);
}

START_TEST(test_cross_entropy_ignore_smoothing) {
    static const int64_t sizes[][2] = {{7, 5}, {12, 9}};
    for (int s = 0; s < 2; s++) {
        dc_ctx *ctx = tu_ctx();
        int64_t n = sizes[s][0], k = sizes[s][1];
        dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(n, k))};
        dc_tensor *y = random_labels(ctx, n, k);
        int32_t *yv = y->data;
        yv[0] = yv[n - 2] = -100; /* two rows left out, one at each end */
        ce_ex_arg arg = {y, (float)tu_uniform(0.05, 0.3)};
        dc_tensor *out = dc_cross_entropy_ex(ctx, in[0], y, -100, arg.smoothing);
        ck_assert_msg(out != NULL, "%s", dc_error());
        double want = cross_entropy_ex_reference(in[0]->data, yv, n, k, -100, arg.smoothing);
        tu_assert_close(out->data, &want, 1, 1e-6, 1e-6, "cross_entropy_ex");
        tu_gradcheck(ctx, run_cross_entropy_ex, &arg, in, 1, 1e-2, 1e-3, 1e-2, 0);
        /* an ignored row takes no gradient */
        dc_ctx_reset(ctx);
        in[0] = tu_leaf(ctx, DC_SHAPE(n, k));
        y = random_labels(ctx, n, k);
        ((int32_t *)y->data)[1] = -100;
        out = dc_cross_entropy_ex(ctx, in[0], y, -100, 0.1f);
        ck_assert_msg(out && !dc_backward(ctx, out), "%s", dc_error());
        for (int64_t j = 0; j < k; j++)
            ck_assert_float_eq(((float *)in[0]->grad->data)[k + j], 0.0f);
        for (int64_t j = 0; j < k; j++) /* and a kept row does */
            ck_assert_float_ne(((float *)in[0]->grad->data)[j], 0.0f);
        tu_ctx_free(ctx);
    }
    /* every row ignored: NaN, as torch.nn.functional.cross_entropy gives */
    dc_ctx *ctx = tu_ctx();
    dc_tensor *y = random_labels(ctx, 3, 4);
    for (int i = 0; i < 3; i++)
        ((int32_t *)y->data)[i] = -100;
    dc_tensor *out = dc_cross_entropy_ex(ctx, tu_randn(ctx, DC_SHAPE(3, 4)), y, -100, 0.1f);
    ck_assert_msg(out != NULL, "%s", dc_error());
    ck_assert(isnan(((float *)out->data)[0]));
    /* without an ignore index, -100 is a bad label; a bad smoothing is refused */
    ck_assert_ptr_null(dc_cross_entropy(ctx, tu_randn(ctx, DC_SHAPE(3, 4)), y));
    ck_assert_msg(strstr(dc_error(), "label -100 at position 0 is outside [0, 4)"), "%s", dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(
        dc_cross_entropy_ex(ctx, tu_randn(ctx, DC_SHAPE(3, 4)), random_labels(ctx, 3, 4), -100, 1.5f));
    ck_assert_msg(strstr(dc_error(), "label smoothing 1.5 is outside [0, 1]"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

START_TEST(test_cross_entropy_refused) {
    dc_ctx *ctx = tu_ctx();
    ck_assert_ptr_null(dc_cross_entropy(ctx, tu_randn(ctx, DC_SHAPE(2, 3, 1)), random_labels(ctx, 2, 3)));
    ck_assert_msg(strstr(dc_error(), "cross_entropy: logits [2, 3, 1] must be [N, K]"), "%s", dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_cross_entropy(ctx, tu_randn(ctx, DC_SHAPE(2, 3)), random_labels(ctx, 3, 3)));
    ck_assert_msg(strstr(dc_error(), "cross_entropy: labels i32 [3] must be i32 [2]"), "%s", dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_cross_entropy(ctx, tu_randn(ctx, DC_SHAPE(2, 3)), tu_randn(ctx, DC_SHAPE(2))));
    ck_assert_msg(strstr(dc_error(), "labels f32 [2] must be i32"), "%s", dc_error());
    dc_ctx_reset(ctx);
    dc_tensor *y = random_labels(ctx, 4, 3);
    ((int32_t *)y->data)[2] = 3;
    ck_assert_ptr_null(dc_cross_entropy(ctx, tu_randn(ctx, DC_SHAPE(4, 3)), y));
    ck_assert_msg(strstr(dc_error(), "cross_entropy: label 3 at position 2 is outside [0, 3)"), "%s",
                  dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_cross_entropy(ctx, tu_randn(ctx, DC_SHAPE(0, 3)), random_labels(ctx, 0, 3)));
    ck_assert_msg(strstr(dc_error(), "logits [0, 3] must be [N, K], not empty"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_misc");
    TCase *tc = tu_tcase(s, "ops", 60);
    tcase_add_test(tc, test_dropout_forward);
    tcase_add_test(tc, test_dropout_grad);
    tcase_add_test(tc, test_dropout_identity);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_embedding_refused);
    tcase_add_test(tc, test_timestep_embedding_hand);
    tcase_add_test(tc, test_timestep_embedding_i32);
    tcase_add_test(tc, test_timestep_embedding_refused);
    tcase_add_test(tc, test_fourier_embedding);
    tcase_add_test(tc, test_mse_loss);
    tcase_add_test(tc, test_mse_loss_refused);
    tcase_add_test(tc, test_cross_entropy);
    tcase_add_test(tc, test_cross_entropy_refused);
    tcase_add_test(tc, test_cross_entropy_ignore_smoothing);
    return tu_run(s);
}
