/* Nearest 2x upsampling, channel concatenation and channel slices: forward
 * against plain loops, backward against finite differences, bad shapes refused. */
#include "testutil.h"

#include "autograd/error.h"

#include <stdlib.h>
#include <string.h>

static dc_tensor *run_upsample(dc_ctx *ctx, dc_tensor **in, void *arg) {
    (void)arg;
    return dc_upsample2x(ctx, in[0]);
}

START_TEST(test_upsample2x) {
    dc_ctx *ctx = tu_ctx();
    const int64_t n = 2, h = 3, w = 5, c = 3;
    dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(n, h, w, c))};
    dc_tensor *out = run_upsample(ctx, in, NULL);
    ck_assert_msg(out != NULL, "%s", dc_error());
    ck_assert_int_eq(out->ndim, 4);
    ck_assert(out->shape[0] == n && out->shape[1] == 2 * h && out->shape[2] == 2 * w &&
              out->shape[3] == c);
    double *want = malloc((size_t)out->numel * sizeof *want);
    const float *x = in[0]->data;
    for (int64_t i = 0; i < n; i++)
        for (int64_t y = 0; y < 2 * h; y++)
            for (int64_t xx = 0; xx < 2 * w; xx++)
                for (int64_t k = 0; k < c; k++)
                    want[((i * 2 * h + y) * 2 * w + xx) * c + k] =
                        x[((i * h + y / 2) * w + xx / 2) * c + k];
    tu_assert_close(out->data, want, out->numel, 0, 0, "upsample2x");
    free(want);
    tu_gradcheck(ctx, run_upsample, NULL, in, 1, 1e-2, 1e-3, 1e-2, 0);
    tu_ctx_free(ctx);
}
END_TEST

START_TEST(test_upsample2x_refused) {
    dc_ctx *ctx = tu_ctx();
    ck_assert_ptr_null(dc_upsample2x(ctx, tu_randn(ctx, DC_SHAPE(2, 3, 4))));
    ck_assert_msg(strstr(dc_error(), "upsample2x: expected x [N, H, W, C], got [2, 3, 4]"), "%s",
                  dc_error());
    tu_ctx_free(ctx);
}
END_TEST

static dc_tensor *run_concat(dc_ctx *ctx, dc_tensor **in, void *arg) {
    (void)arg;
    return dc_concat(ctx, in[0], in[1]);
}

/* Shapes of a and b; ndim in the last column. */
static const int64_t concat_cases[][2][5] = {
    {{2, 3, 5, 0, 3}, {2, 3, 2, 0, 3}},
    {{2, 1, 3, 4, 4}, {2, 1, 3, 1, 4}},
    {{3, 0, 0, 0, 1}, {4, 0, 0, 0, 1}},
};

START_TEST(test_concat) {
    for (size_t t = 0; t < sizeof concat_cases / sizeof concat_cases[0]; t++) {
        dc_ctx *ctx = tu_ctx();
        const int64_t *as = concat_cases[t][0], *bs = concat_cases[t][1];
        int nd = (int)as[4];
        dc_tensor *in[2] = {tu_leaf(ctx, nd, as), tu_leaf(ctx, nd, bs)};
        dc_tensor *out = run_concat(ctx, in, NULL);
        ck_assert_msg(out != NULL, "%s", dc_error());
        int64_t ca = as[nd - 1], cb = bs[nd - 1], rows = in[0]->numel / ca;
        ck_assert_int_eq(out->ndim, nd);
        ck_assert_int_eq(out->shape[nd - 1], ca + cb);
        double *want = malloc((size_t)out->numel * sizeof *want);
        const float *a = in[0]->data, *b = in[1]->data;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < ca + cb; k++)
                want[r * (ca + cb) + k] = k < ca ? a[r * ca + k] : b[r * cb + k - ca];
        tu_assert_close(out->data, want, out->numel, 0, 0, "concat");
        free(want);
        tu_gradcheck(ctx, run_concat, NULL, in, 2, 1e-2, 1e-3, 1e-2, 0);
        tu_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_concat_refused) {
    dc_ctx *ctx = tu_ctx();
    ck_assert_ptr_null(
        dc_concat(ctx, tu_randn(ctx, DC_SHAPE(2, 3)), tu_randn(ctx, DC_SHAPE(3, 3))));
    ck_assert_msg(strstr(dc_error(), "concat: [2, 3] and [3, 3] differ before the last dimension"),
                  "%s", dc_error());
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(
        dc_concat(ctx, tu_randn(ctx, DC_SHAPE(2, 3)), tu_randn(ctx, DC_SHAPE(2, 1, 3))));
    ck_assert_msg(strstr(dc_error(), "concat: [2, 3] and [2, 1, 3] differ"), "%s", dc_error());
    tu_ctx_free(ctx);
}
END_TEST

typedef struct {
    int64_t start, count;
} slice_arg;

static dc_tensor *run_slice(dc_ctx *ctx, dc_tensor **in, void *arg) {
    slice_arg *s = arg;
    return dc_slice(ctx, in[0], s->start, s->count);
}

START_TEST(test_slice) {
    static const slice_arg args[] = {{2, 3}, {0, 7}, {6, 1}, {0, 1}};
    for (size_t t = 0; t < sizeof args / sizeof args[0]; t++) {
        dc_ctx *ctx = tu_ctx();
        const int64_t c = 7, rows = 2 * 3;
        dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(2, 3, c))};
        slice_arg s = args[t];
        dc_tensor *out = run_slice(ctx, in, &s);
        ck_assert_msg(out != NULL, "%s", dc_error());
        ck_assert(out->ndim == 3 && out->shape[0] == 2 && out->shape[1] == 3 &&
                  out->shape[2] == s.count);
        ck_assert_ptr_ne(out->data, in[0]->data); /* a copy, never a view */
        double want[2 * 3 * 7];
        const float *x = in[0]->data;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < s.count; k++)
                want[r * s.count + k] = x[r * c + s.start + k];
        tu_assert_close(out->data, want, out->numel, 0, 0, "slice");
        tu_gradcheck(ctx, run_slice, &s, in, 1, 1e-2, 1e-3, 1e-2, 0);
        tu_ctx_free(ctx);
    }
}
END_TEST

START_TEST(test_slice_refused) {
    static const slice_arg bad[] = {{-1, 2}, {0, 0}, {5, 3}, {8, 1}, {1, INT64_MAX}};
    for (size_t t = 0; t < sizeof bad / sizeof bad[0]; t++) {
        dc_ctx *ctx = tu_ctx();
        ck_assert_ptr_null(
            dc_slice(ctx, tu_randn(ctx, DC_SHAPE(4, 7)), bad[t].start, bad[t].count));
        ck_assert_msg(strstr(dc_error(), "slice: start") && strstr(dc_error(), "of the 7 channels"),
                      "%s", dc_error());
        tu_ctx_free(ctx);
    }
}
END_TEST

/* Two slices of one tensor put back together, upsampled: the gradient of x
 * collects from both slices, and concat(slice(x, 0, k), slice(x, k, C - k)) is x. */
static dc_tensor *run_split_join(dc_ctx *ctx, dc_tensor **in, void *arg) {
    (void)arg;
    dc_tensor *x = in[0];
    dc_tensor *joined = dc_concat(ctx, dc_slice(ctx, x, 3, 2), dc_slice(ctx, x, 0, 3));
    return dc_upsample2x(ctx, dc_concat(ctx, joined, dc_slice(ctx, x, 1, 4)));
}

START_TEST(test_split_join) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(1, 3, 2, 5));
    dc_tensor *back = dc_concat(ctx, dc_slice(ctx, x, 0, 2), dc_slice(ctx, x, 2, 3));
    ck_assert_msg(back && memcmp(back->data, x->data, dc_tensor_bytes(x)) == 0, "%s", dc_error());
    dc_tensor *in[1] = {tu_leaf(ctx, DC_SHAPE(1, 3, 2, 5))};
    tu_gradcheck(ctx, run_split_join, NULL, in, 1, 1e-2, 1e-3, 1e-2, 0);
    tu_ctx_free(ctx);
}
END_TEST

/* Concat gradients that the backward makes (written whole from a slice) and
 * that exist already (added to), and x joined to itself: the outer concat
 * meets two new ones, concat(x, x) a new one and then the same, concat(x, w)
 * an existing one and a new one. */
static dc_tensor *run_concat_fresh_or_not(dc_ctx *ctx, dc_tensor **in, void *arg) {
    (void)arg;
    dc_tensor *x = in[0], *w = in[1];
    dc_tensor *xw = dc_concat(ctx, x, w), *xx = dc_concat(ctx, x, x);
    return dc_upsample2x(ctx, dc_concat(ctx, xw, xx));
}

START_TEST(test_concat_fresh_or_not) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[2] = {tu_leaf(ctx, DC_SHAPE(1, 3, 2, 2)), tu_leaf(ctx, DC_SHAPE(1, 3, 2, 3))};
    tu_gradcheck(ctx, run_concat_fresh_or_not, NULL, in, 2, 1e-2, 1e-3, 1e-2, 0);
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_resample");
    TCase *tc = tu_tcase(s, "ops", 60);
    tcase_add_test(tc, test_upsample2x);
    tcase_add_test(tc, test_upsample2x_refused);
    tcase_add_test(tc, test_concat);
    tcase_add_test(tc, test_concat_refused);
    tcase_add_test(tc, test_slice);
    tcase_add_test(tc, test_slice_refused);
    tcase_add_test(tc, test_split_join);
    tcase_add_test(tc, test_concat_fresh_or_not);
    return tu_run(s);
}
