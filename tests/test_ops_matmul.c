/* linear and matmul: forward against plain double-precision loops, backward
 * against finite differences, and the shape errors. */
#include "testutil.h"

#include "autograd/error.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* ---- linear ---- */

typedef struct {
    int ndim;
    int64_t shape[4]; /* of x; the last dimension is `in` */
    int64_t out;
    bool bias;
} linear_case;

static const linear_case linear_cases[] = {
    {2, {5, 7}, 4, true},        /* 2-D */
    {3, {2, 3, 7}, 5, true},     /* 3-D: leading dims fold into rows */
    {4, {2, 1, 3, 6}, 3, false}, /* 4-D, no bias */
    {1, {9}, 2, true},           /* one vector */
    {2, {33, 19}, 37, true},     /* columns beyond one bias block */
    {3, {2, 300, 5}, 6, true},   /* samples of more rows than one GEMM takes */
};

static dc_tensor *run_linear(dc_ctx *ctx, dc_tensor **in, void *arg) {
    const linear_case *c = arg;
    return dc_linear(ctx, in[0], in[1], c->bias ? in[2] : NULL);
}

START_TEST(test_linear) {
    for (size_t k = 0; k < sizeof linear_cases / sizeof linear_cases[0]; k++) {
        const linear_case *c = &linear_cases[k];
        dc_ctx *ctx = tu_ctx();
        int64_t K = c->shape[c->ndim - 1], N = c->out;
        dc_tensor *in[3] = {tu_leaf(ctx, c->ndim, c->shape), tu_leaf(ctx, DC_SHAPE(N, K)),
                            tu_leaf(ctx, DC_SHAPE(N))};
        dc_tensor *y = run_linear(ctx, in, (void *)c);
        ck_assert_msg(y != NULL, "case %zu: %s", k, dc_error());
        ck_assert_int_eq(y->ndim, c->ndim);
        for (int d = 0; d < c->ndim - 1; d++)
            ck_assert_int_eq(y->shape[d], c->shape[d]);
        ck_assert_int_eq(y->shape[c->ndim - 1], N);
        int64_t M = in[0]->numel / K;
        const float *x = in[0]->data, *w = in[1]->data, *b = in[2]->data;
        double *want = malloc((size_t)(M * N) * sizeof *want);
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double acc = c->bias ? b[j] : 0;
                for (int64_t q = 0; q < K; q++)
                    acc += (double)x[i * K + q] * w[j * K + q];
                want[i * N + j] = acc;
            }
        tu_assert_close(y->data, want, M * N, 1e-4, 1e-4, "linear");
        free(want);
        tu_gradcheck(ctx, run_linear, (void *)c, in, c->bias ? 3 : 2, 1e-2, 2e-3, 1e-2, 50);
        tu_ctx_free(ctx);
    }
}
END_TEST

/* The linear forward pass holds OpenBLAS to one thread while it runs
 * (batch invariance) and gives both counts back after, OpenMP's too, which
 * OpenBLAS's OpenMP build sets along with its own. */
START_TEST(test_linear_keeps_thread_counts) {
    openblas_set_num_threads(1);
    omp_set_num_threads(2);
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(4, 70, 16)), *w = tu_randn(ctx, DC_SHAPE(32, 16));
    ck_assert_msg(dc_linear(ctx, x, w, NULL) != NULL, "%s", dc_error());
    ck_assert_int_eq(omp_get_max_threads(), 2);
    ck_assert_int_eq(openblas_get_num_threads(), 1);
    tu_ctx_free(ctx);
}
END_TEST

/* ---- matmul ---- */

static dc_tensor *run_matmul(dc_ctx *ctx, dc_tensor **in, void *arg) {
    (void)arg;
    return dc_matmul(ctx, in[0], in[1]);
}

/* a [B, M, K] @ b [B, K, N]; B == 0 means plain 2-D operands. */
static void check_matmul(int64_t B, int64_t M, int64_t K, int64_t N) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[2];
    if (B) {
        in[0] = tu_leaf(ctx, DC_SHAPE(B, M, K));
        in[1] = tu_leaf(ctx, DC_SHAPE(B, K, N));
    } else {
        in[0] = tu_leaf(ctx, DC_SHAPE(M, K));
        in[1] = tu_leaf(ctx, DC_SHAPE(K, N));
    }
    dc_tensor *y = run_matmul(ctx, in, NULL);
    ck_assert_msg(y != NULL, "%s", dc_error());
    ck_assert_int_eq(y->ndim, B ? 3 : 2);
    ck_assert_int_eq(y->shape[y->ndim - 2], M);
    ck_assert_int_eq(y->shape[y->ndim - 1], N);
    int64_t nb = B ? B : 1;
    const float *a = in[0]->data, *b = in[1]->data;
    double *want = malloc((size_t)(nb * M * N) * sizeof *want);
    for (int64_t i = 0; i < nb; i++)
        for (int64_t r = 0; r < M; r++)
            for (int64_t c = 0; c < N; c++) {
                double acc = 0;
                for (int64_t q = 0; q < K; q++)
                    acc += (double)a[(i * M + r) * K + q] * b[(i * K + q) * N + c];
                want[(i * M + r) * N + c] = acc;
            }
    tu_assert_close(y->data, want, nb * M * N, 1e-4, 1e-4, "matmul");
    free(want);
    tu_gradcheck(ctx, run_matmul, NULL, in, 2, 1e-2, 2e-3, 1e-2, 50);
    tu_ctx_free(ctx);
}

/* A sample's output does not depend on its batch, bit for bit: rows of a
 * 2-D input (one row a sample: the few-rows kernel, which pairs rows) and
 * samples of 3-D ones (whole samples as 1x1 convolutions), each alone and
 * in a batch of 7 at every place; the widths leave vector tails. */
START_TEST(test_linear_batch_invariance) {
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    const int64_t n = 7, in = 37, out = 11;
    for (int64_t rows = 1; rows <= 9; rows += 8) {
        dc_tensor *x = tu_randn(ctx, DC_SHAPE(n, rows, in)), *w = tu_randn(ctx, DC_SHAPE(out, in));
        dc_tensor *b = tu_randn(ctx, DC_SHAPE(out));
        dc_tensor *all = dc_linear(ctx, rows == 1 ? dc_reshape(ctx, x, DC_SHAPE(n, in)) : x, w, b);
        ck_assert_msg(all != NULL, "%s", dc_error());
        for (int64_t i = 0; i < n; i++) {
            dc_tensor *xi = dc_from_host(ctx, DC_F32, DC_SHAPE(1, rows, in),
                                         (const float *)x->data + i * rows * in);
            dc_tensor *one = dc_linear(ctx, xi, w, b);
            ck_assert_msg(one != NULL, "%s", dc_error());
            for (int64_t j = 0; j < rows * out; j++)
                ck_assert_msg(((float *)one->data)[j] == ((float *)all->data)[i * rows * out + j],
                              "rows %lld, sample %lld, element %lld: %.9g alone, %.9g in the batch",
                              (long long)rows, (long long)i, (long long)j,
                              (double)((float *)one->data)[j],
                              (double)((float *)all->data)[i * rows * out + j]);
        }
    }
    tu_ctx_free(ctx);
}
END_TEST

START_TEST(test_matmul) {
    check_matmul(0, 5, 7, 3);
    check_matmul(0, 1, 9, 1);
    check_matmul(3, 4, 5, 2);
    check_matmul(2, 7, 1, 6);
}
END_TEST

/* Only b requires grad: a's gradient is skipped. */
START_TEST(test_matmul_partial_grad) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[2] = {tu_randn(ctx, DC_SHAPE(2, 3, 4)), tu_leaf(ctx, DC_SHAPE(2, 4, 5))};
    tu_gradcheck(ctx, run_matmul, NULL, in, 2, 1e-2, 2e-3, 1e-2, 0);
    ck_assert_ptr_null(in[0]->grad);
    tu_ctx_free(ctx);
}
END_TEST

/* Two backward passes add up: gradients that already hold something get the
 * new one added (the GEMMs must accumulate, not overwrite). */
START_TEST(test_backward_accumulates) {
    dc_ctx *ctx = tu_ctx();
    const int64_t M = 6, K = 5, N = 4;
    dc_tensor *x = tu_leaf(ctx, DC_SHAPE(M, K)), *w = tu_leaf(ctx, DC_SHAPE(N, K));
    dc_tensor *b = tu_leaf(ctx, DC_SHAPE(N)), *a2 = tu_leaf(ctx, DC_SHAPE(2, M, K));
    dc_tensor *b2 = tu_leaf(ctx, DC_SHAPE(2, K, N)), *dy = tu_randn(ctx, DC_SHAPE(M, N));
    dc_tensor *dc = tu_randn(ctx, DC_SHAPE(2, M, N));
    for (int pass = 0; pass < 2; pass++) {
        ck_assert_int_eq(dc_backward_from(ctx, dc_linear(ctx, x, w, b), dy), 0);
        ck_assert_int_eq(dc_backward_from(ctx, dc_matmul(ctx, a2, b2), dc), 0);
    }
    const float *xf = x->data, *wf = w->data, *g = dy->data, *af = a2->data, *bf = b2->data;
    const float *gc = dc->data;
    double dx[6 * 5] = {0}, dw[4 * 5] = {0}, db[4] = {0}, da[2 * 6 * 5] = {0}, dbm[2 * 5 * 4] = {0};
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            db[j] += 2.0 * g[i * N + j];
            for (int64_t q = 0; q < K; q++) {
                dx[i * K + q] += 2.0 * g[i * N + j] * wf[j * K + q];
                dw[j * K + q] += 2.0 * g[i * N + j] * xf[i * K + q];
            }
        }
    for (int64_t t = 0; t < 2; t++)
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++)
                for (int64_t q = 0; q < K; q++) {
                    double gv = 2.0 * gc[(t * M + i) * N + j];
                    da[(t * M + i) * K + q] += gv * bf[(t * K + q) * N + j];
                    dbm[(t * K + q) * N + j] += gv * af[(t * M + i) * K + q];
                }
    tu_assert_close(x->grad->data, dx, M * K, 1e-4, 1e-4, "linear dx twice");
    tu_assert_close(w->grad->data, dw, N * K, 1e-4, 1e-4, "linear dw twice");
    tu_assert_close(b->grad->data, db, N, 1e-4, 1e-4, "linear db twice");
    tu_assert_close(a2->grad->data, da, 2 * M * K, 1e-4, 1e-4, "matmul da twice");
    tu_assert_close(b2->grad->data, dbm, 2 * K * N, 1e-4, 1e-4, "matmul db twice");
    tu_ctx_free(ctx);
}
END_TEST

/* ---- errors ---- */

static void expect_error(dc_ctx *ctx, dc_tensor *y, const char *msg) {
    ck_assert_ptr_null(y);
    ck_assert(ctx->failed);
    ck_assert_msg(strstr(dc_error(), msg), "got \"%s\", want \"%s\"", dc_error(), msg);
    dc_ctx_reset(ctx);
}

START_TEST(test_errors) {
    dc_ctx *ctx = tu_ctx();
#define T(sh) tu_randn(ctx, DC_SHAPE sh)
    dc_tensor *a, *b, *c;
    a = T((2, 3)), b = T((4, 5));
    expect_error(ctx, dc_linear(ctx, a, b, NULL),
                 "linear: input [2, 3] has 3 features, weight [4, 5] expects 5");
    a = T((2, 5)), b = T((4, 5)), c = T((5));
    expect_error(ctx, dc_linear(ctx, a, b, c),
                 "linear: bias [5] does not match weight [4, 5]: expected [4]");
    a = T((2, 5)), b = T((4, 5, 1));
    expect_error(ctx, dc_linear(ctx, a, b, NULL), "linear: weight [4, 5, 1] is not 2-D [out, in]");
    a = T((2, 3)), b = T((4, 5));
    expect_error(ctx, dc_matmul(ctx, a, b),
                 "matmul: [2, 3] @ [4, 5]: inner dimensions 3 and 4 differ");
    a = T((2, 3, 4)), b = T((3, 4, 5));
    expect_error(ctx, dc_matmul(ctx, a, b),
                 "matmul: [2, 3, 4] @ [3, 4, 5]: batch sizes 2 and 3 differ");
    a = T((3, 4)), b = T((1, 4, 5));
    expect_error(ctx, dc_matmul(ctx, a, b),
                 "matmul: [3, 4] @ [1, 4, 5]: expected two 2-D or two 3-D tensors");
    a = T((4)), b = T((4));
    expect_error(ctx, dc_matmul(ctx, a, b), "expected two 2-D or two 3-D tensors");
    /* i32 operands are refused by the common checks */
    a = dc_new(ctx, DC_I32, DC_SHAPE(2, 3)), b = T((3, 3));
    expect_error(ctx, dc_matmul(ctx, a, b), "matmul: argument 1 is i32, expected f32");
#undef T
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_matmul");
    TCase *tc = tu_tcase(s, "matmul", 120);
    tcase_add_test(tc, test_linear);
    tcase_add_test(tc, test_linear_keeps_thread_counts);
    tcase_add_test(tc, test_linear_batch_invariance);
    tcase_add_test(tc, test_matmul);
    tcase_add_test(tc, test_matmul_partial_grad);
    tcase_add_test(tc, test_backward_accumulates);
    tcase_add_test(tc, test_errors);
    return tu_run(s);
}
