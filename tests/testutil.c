/* Test helpers (see testutil.h). */
#include "testutil.h"

#include "autograd/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t state;
static int seeded;

uint64_t tu_seed(void) {
    static uint64_t seed;
    if (!seeded) {
        const char *env = getenv("DC_TEST_SEED");
        seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
        state = seed;
        seeded = 1;
    }
    return seed;
}

uint64_t tu_next(void) { /* splitmix64 */
    tu_seed();
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double tu_uniform(double lo, double hi) {
    return lo + (hi - lo) * ((double)(tu_next() >> 11) * 0x1.0p-53);
}

double tu_normal(void) {
    double u1 = tu_uniform(1e-12, 1.0), u2 = tu_uniform(0.0, 1.0);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

dc_ctx *tu_ctx(void) {
    dc_ctx *ctx = malloc(sizeof *ctx);
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(dc_ctx_init(ctx, DC_CPU, (size_t)1 << 30) == 0, "%s", dc_error());
    ctx->poison = true;
    return ctx;
}

void tu_ctx_free(dc_ctx *ctx) {
    dc_ctx_free(ctx);
    free(ctx);
}

dc_tensor *tu_randn(dc_ctx *ctx, int ndim, const int64_t *shape) {
    dc_tensor *t = dc_new(ctx, DC_F32, ndim, shape);
    ck_assert_msg(t != NULL, "%s", dc_error());
    for (int64_t i = 0; i < t->numel; i++)
        ((float *)t->data)[i] = (float)tu_normal();
    return t;
}

dc_tensor *tu_leaf(dc_ctx *ctx, int ndim, const int64_t *shape) {
    dc_tensor *t = tu_randn(ctx, ndim, shape);
    t->requires_grad = true;
    return t;
}

void tu_assert_close(const float *got, const double *want, int64_t n, double atol, double rtol,
                     const char *what) {
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        ck_assert_msg(d <= atol + rtol * fabs(want[i]),
                      "%s: element %lld: got %.8g, want %.8g (seed %llu)", what, (long long)i,
                      (double)got[i], want[i], (unsigned long long)tu_seed());
    }
}

/* sum(out * r) in double, with everything the forward allocated released again. */
static double probe(dc_ctx *ctx, tu_fn f, void *arg, dc_tensor **in, const float *r) {
    size_t act = ctx->act.used, meta = ctx->meta.used;
    bool was = dc_set_grad_enabled(ctx, false);
    dc_tensor *out = f(ctx, in, arg);
    ck_assert_msg(out != NULL, "forward failed: %s", dc_error());
    double s = 0;
    for (int64_t i = 0; i < out->numel; i++)
        s += (double)((float *)out->data)[i] * r[i];
    dc_set_grad_enabled(ctx, was);
    ctx->act.used = act;
    ctx->meta.used = meta;
    return s;
}

void tu_gradcheck(dc_ctx *ctx, tu_fn f, void *arg, dc_tensor **in, int n_in, double eps,
                  double atol, double rtol, int max_elems) {
    dc_tensor *out = f(ctx, in, arg);
    ck_assert_msg(out != NULL, "forward failed: %s", dc_error());
    dc_tensor *r = tu_randn(ctx, out->ndim, out->shape);
    ck_assert_msg(dc_backward_from(ctx, out, r) == 0, "backward failed: %s", dc_error());
    for (int k = 0; k < n_in; k++) {
        dc_tensor *x = in[k];
        if (!x->requires_grad)
            continue;
        ck_assert_msg(x->grad != NULL, "input %d got no gradient", k);
        float *xd = x->data;
        int64_t probes = max_elems > 0 && max_elems < x->numel ? max_elems : x->numel;
        for (int64_t p = 0; p < probes; p++) {
            int64_t j = probes == x->numel ? p : (int64_t)(tu_next() % (uint64_t)x->numel);
            float keep = xd[j];
            float up = (float)(keep + eps), down = (float)(keep - eps);
            xd[j] = up;
            double hi = probe(ctx, f, arg, in, r->data);
            xd[j] = down;
            double lo = probe(ctx, f, arg, in, r->data);
            xd[j] = keep;
            double num = (hi - lo) / ((double)up - down), ana = ((float *)x->grad->data)[j];
            double tol = atol + rtol * fmax(fabs(num), fabs(ana));
            ck_assert_msg(fabs(num - ana) <= tol,
                          "input %d element %lld: analytic %.7g, numeric %.7g (seed %llu)", k,
                          (long long)j, ana, num, (unsigned long long)tu_seed());
        }
    }
}

TCase *tu_tcase(Suite *s, const char *name, double timeout) {
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout);
    suite_add_tcase(s, tc);
    return tc;
}

int tu_run(Suite *s) {
    tu_seed();
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (failed)
        fprintf(stderr, "test seed: DC_TEST_SEED=%llu\n", (unsigned long long)tu_seed());
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
