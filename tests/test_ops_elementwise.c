/* Elementwise ops, reshape and reductions: forward against plain loops,
 * backward against finite differences. */
#include "testutil.h"

#include "autograd/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    dc_op op;
} binary_arg;

static dc_tensor *run_binary(dc_ctx *ctx, dc_tensor **in, void *arg) {
    dc_op op = ((binary_arg *)arg)->op;
    return op == DC_OP_ADD ? dc_add(ctx, in[0], in[1])
         : op == DC_OP_SUB ? dc_sub(ctx, in[0], in[1])
                           : dc_mul(ctx, in[0], in[1]);
}

/* Shapes of a, then of b (right-aligned broadcast). */
static const int64_t cases[][2][4] = {
    {{2, 3, 5, 4}, {2, 3, 5, 4}}, /* same shape */
    {{2, 3, 5, 4}, {1, 1, 1, 4}}, /* [C] as 4 dims */
    {{2, 3, 5, 7}, {2, 1, 1, 7}}, /* [N,1,1,C] */
    {{3, 1, 5, 2}, {3, 1, 1, 1}}, /* per sample */
    {{4, 32, 32, 9}, {4, 1, 1, 9}}, /* large enough for the parallel paths */
    {{2, 3, 2, 70}, {2, 1, 1, 70}}, /* channels across two reduction strips */
    {{2, 3, 5, 4}, {1, 3, 1, 4}},   /* broadcast over two separate dims: the general path */
    {{1, 64, 33, 17}, {1, 64, 1, 17}}, /* the general path, parallel */
};

static void check_binary(dc_op op) {
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        dc_ctx *ctx = tu_ctx();
        const int64_t *as = cases[c][0], *bs = cases[c][1];
        dc_tensor *in[2] = {tu_leaf(ctx, 4, as), tu_leaf(ctx, 4, bs)};
        if (c == 1) /* also the true 1-D [C] form */
            in[1] = tu_leaf(ctx, 1, &bs[3]);
        binary_arg arg = {op};
        dc_tensor *out = run_binary(ctx, in, &arg);
        ck_assert_msg(out != NULL, "%s", dc_error());
        int64_t n = out->numel;
        double *want = malloc((size_t)n * sizeof *want);
        for (int64_t i = 0; i < n; i++) {
            int64_t r = i, j = 0, stride = 1;
            for (int d = 3; d >= 0; d--) {
                int64_t coord = r % as[d];
                r /= as[d];
                if (bs[d] != 1)
                    j += coord * stride;
                stride *= bs[d];
            }
            double a = ((const float *)(in[0])->data)[i], b = ((const float *)(in[1])->data)[j];
            want[i] = op == DC_OP_ADD ? a + b : op == DC_OP_SUB ? a - b : a * b;
        }
        tu_assert_close(out->data, want, n, 1e-6, 1e-6, dc_op_name(op));
        free(want);
        /* L is linear in each input: a large step has no truncation error and
         * divides the rounding of the 1000-term broadcast sums by less */
        tu_gradcheck(ctx, run_binary, &arg, in, 2, 0.5, 1e-4, 1e-3, 300);
        tu_ctx_free(ctx);
    }
}

START_TEST(test_add) { check_binary(DC_OP_ADD); }
END_TEST
START_TEST(test_sub) { check_binary(DC_OP_SUB); }
END_TEST
START_TEST(test_mul) { check_binary(DC_OP_MUL); }
END_TEST

START_TEST(test_broadcast_refused) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *a = tu_randn(ctx, DC_SHAPE(2, 3)), *b = tu_randn(ctx, DC_SHAPE(2));
    ck_assert_ptr_null(dc_add(ctx, a, b));
    ck_assert(ctx->failed);
    ck_assert_msg(strstr(dc_error(), "add: [2] does not broadcast to [2, 3]"), "%s", dc_error());
    /* sticky: a later op fails too, keeping the first message */
    ck_assert_ptr_null(dc_affine(ctx, a, 2.0f, 0.0f));
    ck_assert_msg(strstr(dc_error(), "add:"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

static dc_tensor *run_affine(dc_ctx *ctx, dc_tensor **in, void *arg) {
    (void)arg;
    return dc_affine(ctx, in[0], -1.5f, 0.25f);
}

START_TEST(test_affine) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(3, 7))};
    dc_tensor *out = run_affine(ctx, in, NULL);
    double want[21];
    for (int i = 0; i < 21; i++)
        want[i] = -1.5 * ((const float *)(in[0])->data)[i] + 0.25;
    tu_assert_close(out->data, want, 21, 1e-6, 1e-6, "affine");
    tu_gradcheck(ctx, run_affine, NULL, in, 1, 1e-2, 1e-4, 1e-3, 0);
    tu_ctx_free(ctx);
}
END_TEST

static dc_tensor *run_reshape_mul(dc_ctx *ctx, dc_tensor **in, void *arg) {
    (void)arg; /* the view's gradient must reach the viewed tensor */
    dc_tensor *v = dc_reshape(ctx, in[0], DC_SHAPE(2, 1, 1, 5));
    return dc_mul(ctx, in[1], v);
}

START_TEST(test_reshape) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[2] = {tu_leaf(ctx, DC_SHAPE(2, 5)), tu_leaf(ctx, DC_SHAPE(2, 3, 3, 5))};
    dc_tensor *v = dc_reshape(ctx, in[0], DC_SHAPE(10));
    ck_assert_ptr_eq(v->data, in[0]->data);
    ck_assert_ptr_null(dc_reshape(ctx, in[0], DC_SHAPE(3, 3)));
    ck_assert_msg(strstr(dc_error(), "cannot view [2, 5] as [3, 3]"), "%s", dc_error());
    dc_ctx_reset(ctx);
    in[0] = tu_leaf(ctx, DC_SHAPE(2, 5));
    in[1] = tu_leaf(ctx, DC_SHAPE(2, 3, 3, 5));
    tu_gradcheck(ctx, run_reshape_mul, NULL, in, 2, 1e-2, 1e-4, 1e-3, 0);
    tu_ctx_free(ctx);
}
END_TEST

static dc_tensor *run_sum(dc_ctx *ctx, dc_tensor **in, void *arg) {
    return *(int *)arg ? dc_mean(ctx, in[0]) : dc_sum(ctx, in[0]);
}

START_TEST(test_sum_mean) {
    for (int mean = 0; mean < 2; mean++) {
        dc_ctx *ctx = tu_ctx();
        dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(3, 5, 7))};
        double s = 0;
        for (int i = 0; i < 105; i++)
            s += ((const float *)(in[0])->data)[i];
        double want = mean ? s / 105 : s;
        dc_tensor *out = run_sum(ctx, in, &mean);
        tu_assert_close(out->data, &want, 1, 1e-5, 1e-6, mean ? "mean" : "sum");
        tu_gradcheck(ctx, run_sum, &mean, in, 1, 1e-2, 1e-4, 1e-3, 0);
        tu_ctx_free(ctx);
    }
}
END_TEST

/* Graphs where add, sub and reshape hand their output's gradient buffer to
 * an input (grad_adopt) that is used again: x + x, (x + w) - x, a reshape of
 * x next to x itself, and x * w after all of them. */
static dc_tensor *run_handoff(dc_ctx *ctx, dc_tensor **in, void *arg) {
    dc_tensor *x = in[0], *w = in[1];
    dc_tensor *twice = dc_add(ctx, x, x);
    dc_tensor *back = dc_sub(ctx, dc_add(ctx, x, w), x);
    dc_tensor *flat = dc_reshape(ctx, dc_add(ctx, twice, back), DC_SHAPE(12));
    dc_tensor *y = dc_add(ctx, flat, dc_reshape(ctx, x, DC_SHAPE(12)));
    return dc_mul(ctx, dc_reshape(ctx, y, DC_SHAPE(3, 4)), dc_mul(ctx, x, w));
}

START_TEST(test_gradient_handoff) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[2] = {tu_leaf(ctx, DC_SHAPE(3, 4)), tu_leaf(ctx, DC_SHAPE(3, 4))};
    tu_gradcheck(ctx, run_handoff, NULL, in, 2, 1e-2, 1e-3, 1e-2, 0);
    tu_ctx_free(ctx);
}
END_TEST

/* Gradients that each binary op's backward makes (written whole) and that
 * exist already (added to), for every op and operand, with a == b and a
 * broadcast b: x * x, y - x, their product, times s [4], minus y. */
static dc_tensor *run_fresh_or_not(dc_ctx *ctx, dc_tensor **in, void *arg) {
    (void)arg;
    dc_tensor *x = in[0], *y = in[1], *s = in[2];
    dc_tensor *t = dc_mul(ctx, dc_mul(ctx, x, x), dc_sub(ctx, y, x));
    return dc_sub(ctx, dc_mul(ctx, t, s), y);
}

START_TEST(test_gradient_fresh_or_not) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[3] = {tu_leaf(ctx, DC_SHAPE(3, 4)), tu_leaf(ctx, DC_SHAPE(3, 4)),
                        tu_leaf(ctx, DC_SHAPE(4))};
    tu_gradcheck(ctx, run_fresh_or_not, NULL, in, 3, 1e-2, 1e-3, 1e-2, 0);
    tu_ctx_free(ctx);
}
END_TEST

START_TEST(test_accumulate_and_no_grad) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_leaf(ctx, DC_SHAPE(4));
    /* x used twice: gradients of both uses add up */
    dc_tensor *y = dc_sum(ctx, dc_mul(ctx, x, x));
    ck_assert_int_eq(dc_backward(ctx, y), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq_tol(((const float *)(x->grad)->data)[i], 2 * ((const float *)(x)->data)[i], 1e-6);
    ck_assert_ptr_null(ctx->tape); /* backward consumed the tape */
    /* a second graph's backward accumulates */
    y = dc_sum(ctx, x);
    ck_assert_int_eq(dc_backward(ctx, y), 0);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq_tol(((const float *)(x->grad)->data)[i], 2 * ((const float *)(x)->data)[i] + 1, 1e-6);
    /* no-grad mode records nothing */
    dc_set_grad_enabled(ctx, false);
    y = dc_sum(ctx, x);
    ck_assert_ptr_null(ctx->tape);
    ck_assert(!y->requires_grad);
    ck_assert_int_ne(dc_backward(ctx, y), 0);
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_elementwise");
    TCase *tc = tu_tcase(s, "ops", 120);
    tcase_add_test(tc, test_add);
    tcase_add_test(tc, test_sub);
    tcase_add_test(tc, test_mul);
    tcase_add_test(tc, test_broadcast_refused);
    tcase_add_test(tc, test_gradient_handoff);
    tcase_add_test(tc, test_gradient_fresh_or_not);
    tcase_add_test(tc, test_affine);
    tcase_add_test(tc, test_reshape);
    tcase_add_test(tc, test_sum_mean);
    tcase_add_test(tc, test_accumulate_and_no_grad);
    return tu_run(s);
}
