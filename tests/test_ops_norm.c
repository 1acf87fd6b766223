/* Group and layer normalisation, and the fused group norm + SiLU: forward and saved statistics against a plain
 * double-precision reference, gradients of x, w and b by finite differences,
 * and the argument errors. */
#include "testutil.h"

#include "autograd/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EPS 1e-5f

/* in[] holds x, then w when has_w, then b when has_b (packed: the gradient
 * check walks every entry). */
typedef struct {
    dc_op op;
    int groups; /* group norm only */
    bool has_w, has_b;
} norm_arg;

static dc_tensor *run_norm(dc_ctx *ctx, dc_tensor **in, void *arg) {
    const norm_arg *a = arg;
    int k = 1;
    dc_tensor *w = a->has_w ? in[k++] : NULL;
    dc_tensor *b = a->has_b ? in[k++] : NULL;
    switch (a->op) {
    case DC_OP_GROUP_NORM: return dc_group_norm(ctx, in[0], a->groups, w, b, EPS);
    case DC_OP_GROUP_NORM_SILU: return dc_group_norm_silu(ctx, in[0], a->groups, w, b, EPS);
    default: return dc_layer_norm(ctx, in[0], w, b, EPS);
    }
}

/* y and per-(n, g) mean and rstd of x [N, S, C] in G groups, in double. */
static void ref_norm(const float *x, const float *w, const float *b, int64_t N, int64_t S,
                     int64_t C, int64_t G, double *y, double *mean, double *rstd) {
    int64_t Cg = C / G;
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            double sum = 0, sq = 0, m = (double)(S * Cg);
            for (int64_t s = 0; s < S; s++)
                for (int64_t c = g * Cg; c < (g + 1) * Cg; c++)
                    sum += x[(n * S + s) * C + c];
            double mu = sum / m;
            for (int64_t s = 0; s < S; s++)
                for (int64_t c = g * Cg; c < (g + 1) * Cg; c++)
                    sq += pow(x[(n * S + s) * C + c] - mu, 2);
            double r = 1 / sqrt(sq / m + (double)EPS);
            mean[n * G + g] = mu;
            rstd[n * G + g] = r;
            for (int64_t s = 0; s < S; s++)
                for (int64_t c = g * Cg; c < (g + 1) * Cg; c++) {
                    int64_t i = (n * S + s) * C + c;
                    y[i] = (x[i] - mu) * r * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
                }
        }
}

/* x of the given shape (shift + scale * normal), then w and b [C] where a
 * asks for them, all requiring grad, into in[]. Returns how many. */
static int make_inputs(dc_ctx *ctx, norm_arg a, int ndim, const int64_t *shape, double scale,
                       double shift, dc_tensor **in) {
    int n_in = 0;
    dc_tensor *x = in[n_in++] = tu_leaf(ctx, ndim, shape);
    for (int64_t i = 0; i < x->numel; i++)
        ((float *)x->data)[i] = (float)(shift + scale * ((float *)x->data)[i]);
    if (a.has_w)
        in[n_in++] = tu_leaf(ctx, DC_SHAPE(shape[ndim - 1]));
    if (a.has_b)
        in[n_in++] = tu_leaf(ctx, DC_SHAPE(shape[ndim - 1]));
    return n_in;
}

/* The forward (to atol) and the statistics saved on the tape against ref_norm. */
static void check_forward(dc_ctx *ctx, norm_arg a, dc_tensor **in, double atol) {
    dc_tensor *x = in[0], *w = a.has_w ? in[1] : NULL, *b = a.has_b ? in[1 + a.has_w] : NULL;
    dc_tensor *out = run_norm(ctx, in, &a);
    ck_assert_msg(out != NULL, "%s", dc_error());
    int64_t C = x->shape[x->ndim - 1];
    bool group = a.op != DC_OP_LAYER_NORM;
    int64_t G = group ? a.groups : 1, N = group ? x->shape[0] : x->numel / C;
    int64_t S = x->numel / (N * C);
    double *want = malloc((size_t)x->numel * sizeof *want);
    double *mean = malloc((size_t)(N * G) * sizeof *mean);
    double *rstd = malloc((size_t)(N * G) * sizeof *rstd);
    ref_norm(x->data, w ? w->data : NULL, b ? b->data : NULL, N, S, C, G, want, mean, rstd);
    if (a.op == DC_OP_GROUP_NORM_SILU)
        for (int64_t i = 0; i < x->numel; i++)
            want[i] /= 1 + exp(-want[i]);
    tu_assert_close(out->data, want, x->numel, atol, 1e-5, dc_op_name(a.op));

    ck_assert_ptr_nonnull(ctx->tape);
    ck_assert_int_eq(ctx->tape->op, a.op);
    const float *stats = ctx->tape->saved[0]->data; /* [N, G, 2]: mean, rstd */
    ck_assert_int_eq(ctx->tape->saved[0]->numel, 2 * N * G);
    for (int64_t i = 0; i < N * G; i++) {
        tu_assert_close(stats + 2 * i, &mean[i], 1, 1e-6, 1e-6, "saved mean");
        tu_assert_close(stats + 2 * i + 1, &rstd[i], 1, 0, 1e-5, "saved rstd");
    }
    free(want);
    free(mean);
    free(rstd);
}

/* Forward and gradients of x, w, b for normal inputs of the given shape
 * (all elements probed when max_elems is 0). */
static void check_norm(norm_arg a, int ndim, const int64_t *shape, int max_elems) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[3];
    int n_in = make_inputs(ctx, a, ndim, shape, 1, 0, in);
    check_forward(ctx, a, in, 1e-5);
    tu_gradcheck(ctx, run_norm, &a, in, n_in, 1e-2, 1e-3, 1e-2, max_elems);
    tu_ctx_free(ctx);
}

/* Forward only, for inputs far from unit scale: there the f32 grid of x
 * makes finite differences too coarse to check gradients. */
static void check_norm_scaled(norm_arg a, int ndim, const int64_t *shape, double scale,
                              double shift, double atol) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[3];
    make_inputs(ctx, a, ndim, shape, scale, shift, in);
    check_forward(ctx, a, in, atol);
    tu_ctx_free(ctx);
}

START_TEST(test_group_norm_4d) {
    norm_arg a = {DC_OP_GROUP_NORM, 3, true, true};
    check_norm(a, DC_SHAPE(2, 5, 3, 6), 0); /* odd sizes, 2 channels per group */
    a.groups = 1;
    check_norm(a, DC_SHAPE(2, 4, 3, 8), 0);
    a.groups = 4; /* groups == C: instance norm */
    check_norm(a, DC_SHAPE(2, 3, 3, 4), 0);
    a = (norm_arg){DC_OP_GROUP_NORM, 8, true, true}; /* several channel strips, one partial */
    check_norm(a, DC_SHAPE(2, 3, 2, 40), 80);
    check_norm(a, DC_SHAPE(2, 16, 16, 64), 24); /* large enough to run multithreaded */
}
END_TEST

START_TEST(test_group_norm_3d_and_2d) {
    norm_arg a = {DC_OP_GROUP_NORM, 2, true, true};
    check_norm(a, DC_SHAPE(3, 7, 6), 0); /* token map [N, L, C] */
    check_norm(a, DC_SHAPE(3, 12), 0); /* no spatial dimensions */
}
END_TEST

START_TEST(test_group_norm_affine_optional) {
    norm_arg a = {DC_OP_GROUP_NORM, 3, true, false};
    check_norm(a, DC_SHAPE(2, 5, 3, 6), 0);
    a = (norm_arg){DC_OP_GROUP_NORM, 3, false, true};
    check_norm(a, DC_SHAPE(2, 5, 3, 6), 0);
    a = (norm_arg){DC_OP_GROUP_NORM, 3, false, false};
    check_norm(a, DC_SHAPE(2, 5, 3, 6), 0);
}
END_TEST

START_TEST(test_group_norm_scales) {
    norm_arg a = {DC_OP_GROUP_NORM, 3, true, true};
    /* a mean 1000 times the spread: a one-pass f32 variance would be far off */
    check_norm_scaled(a, DC_SHAPE(2, 5, 3, 6), 1, 1000, 5e-4);
    /* variance 1e-4 next to eps 1e-5: eps must sit inside the square root */
    check_norm_scaled(a, DC_SHAPE(2, 5, 3, 6), 1e-2, 0, 1e-5);
}
END_TEST

START_TEST(test_group_norm_grad_w_only) {
    /* x is data: only w and b get gradients, and dx is never formed */
    dc_ctx *ctx = tu_ctx();
    norm_arg a = {DC_OP_GROUP_NORM, 2, true, true};
    dc_tensor *in[3] = {tu_randn(ctx, DC_SHAPE(2, 3, 3, 4)), tu_leaf(ctx, DC_SHAPE(4)),
                        tu_leaf(ctx, DC_SHAPE(4))};
    tu_gradcheck(ctx, run_norm, &a, in, 3, 1e-2, 1e-3, 1e-2, 0);
    ck_assert_ptr_null(in[0]->grad);
    /* no recording in no-grad mode */
    dc_set_grad_enabled(ctx, false);
    ck_assert_ptr_nonnull(run_norm(ctx, in, &a));
    ck_assert_ptr_null(ctx->tape);
    tu_ctx_free(ctx);
}
END_TEST

START_TEST(test_group_norm_silu) {
    norm_arg a = {DC_OP_GROUP_NORM_SILU, 3, true, true};
    check_norm(a, DC_SHAPE(2, 5, 3, 6), 0);
    check_norm(a, DC_SHAPE(3, 7, 6), 0);
    a = (norm_arg){DC_OP_GROUP_NORM_SILU, 8, true, true};
    check_norm(a, DC_SHAPE(2, 16, 16, 64), 24); /* multithreaded */
    a = (norm_arg){DC_OP_GROUP_NORM_SILU, 2, false, true};
    check_norm(a, DC_SHAPE(2, 3, 3, 4), 0);
    a = (norm_arg){DC_OP_GROUP_NORM_SILU, 2, true, false};
    check_norm(a, DC_SHAPE(2, 3, 3, 4), 0);
    check_norm_scaled(a, DC_SHAPE(2, 5, 3, 6), 1, 1000, 5e-4);
}
END_TEST

START_TEST(test_layer_norm) {
    norm_arg a = {DC_OP_LAYER_NORM, 0, true, true};
    check_norm(a, DC_SHAPE(3, 7), 0);
    check_norm(a, DC_SHAPE(2, 3, 13), 0);
    check_norm(a, DC_SHAPE(2, 2, 3, 9), 0);
    check_norm(a, DC_SHAPE(4, 1), 0); /* one channel: y = b */
    check_norm(a, DC_SHAPE(5, 37), 60); /* several channel strips */
    check_norm(a, DC_SHAPE(512, 64), 24); /* multithreaded */
    check_norm_scaled(a, DC_SHAPE(3, 7), 1, 1000, 5e-4);
    check_norm_scaled(a, DC_SHAPE(3, 7), 1e-2, 0, 1e-5);
    a = (norm_arg){DC_OP_LAYER_NORM, 0, true, false};
    check_norm(a, DC_SHAPE(3, 7), 0);
    a = (norm_arg){DC_OP_LAYER_NORM, 0, false, true};
    check_norm(a, DC_SHAPE(3, 7), 0);
    a = (norm_arg){DC_OP_LAYER_NORM, 0, false, false};
    check_norm(a, DC_SHAPE(3, 7), 0);
}
END_TEST

/* The op must return NULL, fail the context and say `msg`. */
static void expect_error(dc_ctx *ctx, dc_tensor *out, const char *msg) {
    ck_assert_ptr_null(out);
    ck_assert(ctx->failed);
    ck_assert_msg(strstr(dc_error(), msg), "expected \"%s\", got \"%s\"", msg, dc_error());
    dc_ctx_reset(ctx);
}

START_TEST(test_norm_errors) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(2, 4, 4, 6));
    expect_error(ctx, dc_group_norm(ctx, x, 4, NULL, NULL, EPS),
                 "group_norm: 4 groups do not divide 6 channels");
    x = tu_randn(ctx, DC_SHAPE(2, 4, 4, 6));
    expect_error(ctx, dc_group_norm(ctx, x, 0, NULL, NULL, EPS), "0 groups do not divide 6");
    x = tu_randn(ctx, DC_SHAPE(2, 4, 4, 6));
    dc_tensor *w = tu_randn(ctx, DC_SHAPE(5));
    expect_error(ctx, dc_group_norm(ctx, x, 3, w, NULL, EPS), "group_norm: w is [5], expected [6]");
    x = tu_randn(ctx, DC_SHAPE(2, 4, 4, 6));
    dc_tensor *b = tu_randn(ctx, DC_SHAPE(6, 1));
    expect_error(ctx, dc_group_norm(ctx, x, 3, NULL, b, EPS), "b is [6, 1], expected [6]");
    x = tu_randn(ctx, DC_SHAPE(6));
    expect_error(ctx, dc_group_norm(ctx, x, 3, NULL, NULL, EPS), "x is [6], expected [N, ..., C]");
    x = tu_randn(ctx, DC_SHAPE(2, 6));
    expect_error(ctx, dc_group_norm(ctx, x, 3, NULL, NULL, -1.0f), "eps -1 must be >= 0");
    x = tu_randn(ctx, DC_SHAPE(2, 6));
    w = dc_new(ctx, DC_I32, DC_SHAPE(6));
    expect_error(ctx, dc_group_norm(ctx, x, 3, w, NULL, EPS), "argument 2 is i32, expected f32");
    x = dc_new(ctx, DC_F32, DC_SHAPE(2, 0, 6));
    expect_error(ctx, dc_group_norm(ctx, x, 3, NULL, NULL, EPS), "x is [2, 0, 6]: empty");
    expect_error(ctx, dc_group_norm(ctx, NULL, 3, NULL, NULL, EPS), "");

    x = tu_randn(ctx, DC_SHAPE(3, 5));
    w = tu_randn(ctx, DC_SHAPE(4));
    expect_error(ctx, dc_layer_norm(ctx, x, w, NULL, EPS), "layer_norm: w is [4], expected [5]");
    x = tu_randn(ctx, DC_SHAPE(3, 5));
    b = tu_randn(ctx, DC_SHAPE(3, 5));
    expect_error(ctx, dc_layer_norm(ctx, x, NULL, b, EPS), "layer_norm: b is [3, 5], expected [5]");
    x = dc_new(ctx, DC_F32, DC_SHAPE(3, 0));
    expect_error(ctx, dc_layer_norm(ctx, x, NULL, NULL, EPS), "layer_norm: x is [3, 0]: empty");
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_norm");
    TCase *tc = tu_tcase(s, "ops", 60);
    tcase_add_test(tc, test_group_norm_4d);
    tcase_add_test(tc, test_group_norm_3d_and_2d);
    tcase_add_test(tc, test_group_norm_affine_optional);
    tcase_add_test(tc, test_group_norm_scales);
    tcase_add_test(tc, test_group_norm_grad_w_only);
    tcase_add_test(tc, test_group_norm_silu);
    tcase_add_test(tc, test_layer_norm);
    tcase_add_test(tc, test_norm_errors);
    return tu_run(s);
}
