/* SiLU, GELU, Mish, quick GELU and softmax: forward against plain double-precision loops,
 * backward against finite differences, at unit scale and with large inputs
 * (where exp overflows unless the kernels avoid it). */
#include "testutil.h"

#include "autograd/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static dc_tensor *run_op(dc_ctx *ctx, dc_tensor **in, void *arg) {
    dc_op op = *(dc_op *)arg;
    return op == DC_OP_SILU ? dc_silu(ctx, in[0])
         : op == DC_OP_GELU ? dc_gelu(ctx, in[0])
         : op == DC_OP_MISH ? dc_mish(ctx, in[0])
         : op == DC_OP_QUICK_GELU ? dc_quick_gelu(ctx, in[0])
                            : dc_softmax(ctx, in[0]);
}

/* The reference of op on x [rows, C], in double; softmax straight from its
 * definition (double has room for exp of the inputs used here). */
static void reference(dc_op op, const float *x, int64_t rows, int64_t C, double *y) {
    for (int64_t r = 0; r < rows; r++) {
        double sum = 0;
        for (int64_t j = 0; j < C; j++)
            sum += exp((double)x[r * C + j]);
        for (int64_t j = 0; j < C; j++) {
            double v = x[r * C + j];
            y[r * C + j] = op == DC_OP_SILU ? v / (1 + exp(-v))
                         : op == DC_OP_GELU ? 0.5 * v * (1 + erf(v / sqrt(2.0)))
                         : op == DC_OP_MISH ? v * tanh(log1p(exp(v)))
                         : op == DC_OP_QUICK_GELU ? v / (1 + exp(-1.702 * v))
                                            : exp(v) / sum;
        }
    }
}

/* x = shift + scale * normal of the given shape: forward, finiteness, and
 * the gradient (probing at most max_elems elements). */
static void check_op(dc_op op, int ndim, const int64_t *shape, double scale, double shift,
                     int max_elems) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[1] = {tu_leaf(ctx, ndim, shape)};
    float *x = in[0]->data;
    int64_t n = in[0]->numel, C = shape[ndim - 1];
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(shift + scale * x[i]);
    dc_tensor *out = run_op(ctx, in, &op);
    ck_assert_msg(out != NULL, "%s", dc_error());
    double *want = malloc((size_t)n * sizeof *want);
    reference(op, x, n / C, C, want);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(isfinite(((float *)out->data)[i]), "%s: element %lld is %g", dc_op_name(op),
                      (long long)i, ((float *)out->data)[i]);
    tu_assert_close(out->data, want, n, 1e-6, 1e-5, dc_op_name(op));
    free(want);
    tu_gradcheck(ctx, run_op, &op, in, 1, 1e-2, 1e-3, 1e-2, max_elems);
    tu_ctx_free(ctx);
}

START_TEST(test_silu) {
    check_op(DC_OP_SILU, DC_SHAPE(3, 5, 7), 1, 0, 0);
    check_op(DC_OP_SILU, DC_SHAPE(2, 4, 4, 3), 3, 0, 0);
    check_op(DC_OP_SILU, DC_SHAPE(4, 25), 40, 0, 0);
    check_op(DC_OP_SILU, DC_SHAPE(64, 512), 3, 0, 24); /* multithreaded */ /* |x| up to ~100: expf(-x) overflows */
}
END_TEST

START_TEST(test_quick_gelu) {
    check_op(DC_OP_QUICK_GELU, DC_SHAPE(3, 5, 7), 1, 0, 0);
    check_op(DC_OP_QUICK_GELU, DC_SHAPE(2, 4, 4, 3), 3, 0, 0);
    check_op(DC_OP_QUICK_GELU, DC_SHAPE(4, 25), 40, 0, 0); /* expf(-1.702 x) overflows */
    check_op(DC_OP_QUICK_GELU, DC_SHAPE(64, 512), 3, 0, 24); /* multithreaded */
}
END_TEST

START_TEST(test_gelu) {
    check_op(DC_OP_GELU, DC_SHAPE(3, 5, 7), 1, 0, 0);
    check_op(DC_OP_GELU, DC_SHAPE(2, 4, 4, 3), 3, 0, 0);
    check_op(DC_OP_GELU, DC_SHAPE(4, 25), 40, 0, 0);
    check_op(DC_OP_GELU, DC_SHAPE(64, 512), 3, 0, 24); /* multithreaded */
}
END_TEST

START_TEST(test_mish) {
    check_op(DC_OP_MISH, DC_SHAPE(3, 5, 7), 1, 0, 0);
    check_op(DC_OP_MISH, DC_SHAPE(2, 4, 4, 3), 3, 0, 0);
    check_op(DC_OP_MISH, DC_SHAPE(4, 25), 40, 0, 0); /* past the softplus threshold, and exp overflow */
    check_op(DC_OP_MISH, DC_SHAPE(5, 9), 1, 20, 0);  /* around the threshold */
    check_op(DC_OP_MISH, DC_SHAPE(64, 512), 3, 0, 24); /* multithreaded */
}
END_TEST

START_TEST(test_softmax) {
    check_op(DC_OP_SOFTMAX, DC_SHAPE(3, 5, 7), 1, 0, 0);
    check_op(DC_OP_SOFTMAX, DC_SHAPE(2, 3, 2, 13), 1, 0, 0);
    check_op(DC_OP_SOFTMAX, DC_SHAPE(5, 1), 1, 0, 0); /* one class: y = 1, no gradient */
    /* logits around 80 (expf(80) > 1e34, expf(90) overflows f32) */
    check_op(DC_OP_SOFTMAX, DC_SHAPE(4, 9), 5, 80, 0);
    check_op(DC_OP_SOFTMAX, DC_SHAPE(3, 11), 1, 500, 0);
    check_op(DC_OP_SOFTMAX, DC_SHAPE(64, 512), 3, 0, 24); /* multithreaded */
}
END_TEST

START_TEST(test_softmax_rows) {
    /* equal logits give a uniform row whatever their size; rows sum to 1 */
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(3, 6));
    for (int j = 0; j < 6; j++)
        ((float *)x->data)[j] = 80.0f;
    dc_tensor *y = dc_softmax(ctx, x);
    ck_assert_ptr_nonnull(y);
    const float *yd = y->data;
    for (int j = 0; j < 6; j++)
        ck_assert_float_eq_tol(yd[j], 1.0f / 6, 1e-7);
    for (int r = 0; r < 3; r++) {
        double s = 0;
        for (int j = 0; j < 6; j++)
            s += yd[r * 6 + j];
        ck_assert_double_eq_tol(s, 1.0, 1e-6);
    }
    tu_ctx_free(ctx);
}
END_TEST

START_TEST(test_activation_errors) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = dc_new(ctx, DC_F32, DC_SHAPE(2, 0));
    ck_assert_ptr_null(dc_softmax(ctx, x));
    ck_assert_msg(strstr(dc_error(), "softmax: x is [2, 0]: empty"), "%s", dc_error());
    dc_ctx_reset(ctx);
    x = dc_new(ctx, DC_I32, DC_SHAPE(4));
    ck_assert_ptr_null(dc_silu(ctx, x));
    ck_assert_msg(strstr(dc_error(), "silu: argument 1 is i32, expected f32"), "%s", dc_error());
    dc_ctx_reset(ctx);
    x = dc_new(ctx, DC_I32, DC_SHAPE(4));
    ck_assert_ptr_null(dc_gelu(ctx, x));
    ck_assert_msg(strstr(dc_error(), "gelu: argument 1 is i32"), "%s", dc_error());
    ck_assert_ptr_null(dc_gelu(ctx, NULL)); /* sticky */
    ck_assert_ptr_null(dc_mish(ctx, NULL));
    dc_ctx_reset(ctx);
    x = dc_new(ctx, DC_I32, DC_SHAPE(4));
    ck_assert_ptr_null(dc_quick_gelu(ctx, x));
    ck_assert_msg(strstr(dc_error(), "quick_gelu: argument 1 is i32"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_activation");
    TCase *tc = tu_tcase(s, "ops", 60);
    tcase_add_test(tc, test_silu);
    tcase_add_test(tc, test_gelu);
    tcase_add_test(tc, test_quick_gelu);
    tcase_add_test(tc, test_mish);
    tcase_add_test(tc, test_softmax);
    tcase_add_test(tc, test_softmax_rows);
    tcase_add_test(tc, test_activation_errors);
    return tu_run(s);
}
