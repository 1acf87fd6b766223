/* conv2d: forward and backward against plain double-precision loops (also
 * through the kernels directly, both the direct way (where the CPU has it)
 * and the GEMM way, with small scratch so that chunk boundaries are
 * crossed), gradients against finite differences, and the shape errors.
 * Inputs with fewer than 16 channels take other direct kernels than wider
 * ones, so the cases have both. */
#include "testutil.h"

#include "autograd/cpu/conv.h"
#include "autograd/error.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t n, h, w, cin, cout, kh, kw;
    int stride, pad;
    bool bias;
} conv_case;

static const conv_case cases[] = {
    {2, 5, 6, 4, 3, 1, 1, 1, 0, true},   /* 1x1: one GEMM the GEMM way */
    {2, 6, 5, 3, 4, 3, 3, 1, 1, true},   /* 3x3 pad 1 */
    {2, 7, 6, 3, 5, 3, 3, 2, 1, true},   /* 3x3 pad 1 stride 2 */
    {1, 7, 5, 3, 5, 3, 3, 1, 1, false},  /* odd sizes, no bias */
    {2, 8, 8, 3, 4, 4, 4, 4, 0, true},   /* 4x4 stride 4: patch embedding */
    {2, 5, 5, 3, 2, 1, 1, 2, 0, true},   /* 1x1 stride 2: input pixels no output reads */
    {1, 5, 6, 2, 20, 3, 3, 1, 0, true},  /* no padding; cout beyond one vector */
    {2, 5, 4, 2, 3, 3, 2, 1, 1, true},   /* kh != kw */
    {1, 3, 4, 2, 2, 5, 5, 1, 2, false},  /* kernel larger than the unpadded input */
    {1, 9, 7, 2, 3, 3, 3, 3, 2, true},   /* stride 3, pad 2 */
    {1, 5, 4, 70, 67, 3, 3, 1, 1, true}, /* channels beyond one 64-wide block, with tails */
    {2, 6, 5, 33, 80, 3, 3, 2, 1, true}, /* the same, strided */
    {2, 6, 7, 16, 32, 3, 3, 1, 1, true}, /* whole vectors, no tails */
    {2, 6, 5, 16, 21, 3, 3, 1, 1, true}, /* one vector in: filter tiles of > 16 rows (AVX-512) */
    {1, 5, 6, 8, 11, 3, 3, 1, 1, true},  /* the same for AVX2's 8 lanes */
    {2, 4, 5, 20, 17, 1, 1, 1, 0, true}, /* 1x1, wide input */
    {1, 17, 16, 16, 32, 3, 3, 1, 1, true}, /* threaded, tiles split into strips of unequal length */
};

static int64_t out_size(int64_t in, int64_t k, int stride, int pad) {
    return (in + 2 * pad - k) / stride + 1;
}

/* The input pixel under output (oy, ox) and kernel tap (ky, kx), or -1 in the padding. */
static int64_t tap(const conv_case *c, int64_t img, int64_t oy, int64_t ox, int64_t ky, int64_t kx) {
    int64_t iy = oy * c->stride - c->pad + ky, ix = ox * c->stride - c->pad + kx;
    if (iy < 0 || iy >= c->h || ix < 0 || ix >= c->w)
        return -1;
    return (img * c->h + iy) * c->w + ix;
}

/* y [n, ho, wo, cout] in double. */
static double *ref_forward(const conv_case *c, const float *x, const float *w, const float *b) {
    int64_t ho = out_size(c->h, c->kh, c->stride, c->pad), wo = out_size(c->w, c->kw, c->stride, c->pad);
    double *y = malloc((size_t)(c->n * ho * wo * c->cout) * sizeof *y);
    for (int64_t img = 0; img < c->n; img++)
        for (int64_t oy = 0; oy < ho; oy++)
            for (int64_t ox = 0; ox < wo; ox++)
                for (int64_t co = 0; co < c->cout; co++) {
                    double acc = b ? b[co] : 0;
                    for (int64_t ky = 0; ky < c->kh; ky++)
                        for (int64_t kx = 0; kx < c->kw; kx++)
                            for (int64_t ci = 0; ci < c->cin; ci++) {
                                int64_t p = tap(c, img, oy, ox, ky, kx);
                                if (p >= 0)
                                    acc += (double)x[p * c->cin + ci] *
                                           w[((co * c->kh + ky) * c->kw + kx) * c->cin + ci];
                            }
                    y[((img * ho + oy) * wo + ox) * c->cout + co] = acc;
                }
    return y;
}

/* dx, dw, db (each zeroed here) from dy, in double. */
static void ref_backward(const conv_case *c, const float *x, const float *w, const float *dy,
                         double *dx, double *dw, double *db) {
    int64_t ho = out_size(c->h, c->kh, c->stride, c->pad), wo = out_size(c->w, c->kw, c->stride, c->pad);
    memset(dx, 0, (size_t)(c->n * c->h * c->w * c->cin) * sizeof *dx);
    memset(dw, 0, (size_t)(c->cout * c->kh * c->kw * c->cin) * sizeof *dw);
    memset(db, 0, (size_t)c->cout * sizeof *db);
    for (int64_t img = 0; img < c->n; img++)
        for (int64_t oy = 0; oy < ho; oy++)
            for (int64_t ox = 0; ox < wo; ox++)
                for (int64_t co = 0; co < c->cout; co++) {
                    double g = dy[((img * ho + oy) * wo + ox) * c->cout + co];
                    db[co] += g;
                    for (int64_t ky = 0; ky < c->kh; ky++)
                        for (int64_t kx = 0; kx < c->kw; kx++)
                            for (int64_t ci = 0; ci < c->cin; ci++) {
                                int64_t p = tap(c, img, oy, ox, ky, kx);
                                int64_t wi = ((co * c->kh + ky) * c->kw + kx) * c->cin + ci;
                                if (p >= 0) {
                                    dx[p * c->cin + ci] += g * w[wi];
                                    dw[wi] += g * x[p * c->cin + ci];
                                }
                            }
                }
}

static dc_tensor *run_conv(dc_ctx *ctx, dc_tensor **in, void *arg) {
    const conv_case *c = arg;
    return dc_conv2d(ctx, in[0], in[1], c->bias ? in[2] : NULL, c->stride, c->pad);
}

/* Fresh leaves x, w, b for case c. */
static void make_inputs(dc_ctx *ctx, const conv_case *c, dc_tensor *in[3]) {
    in[0] = tu_leaf(ctx, DC_SHAPE(c->n, c->h, c->w, c->cin));
    in[1] = tu_leaf(ctx, DC_SHAPE(c->cout, c->kh, c->kw, c->cin));
    in[2] = tu_leaf(ctx, DC_SHAPE(c->cout));
}

START_TEST(test_forward) {
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const conv_case *c = &cases[k];
        dc_ctx *ctx = tu_ctx();
        dc_tensor *in[3];
        make_inputs(ctx, c, in);
        dc_tensor *y = run_conv(ctx, in, (void *)c);
        ck_assert_msg(y != NULL, "case %zu: %s", k, dc_error());
        int64_t ho = out_size(c->h, c->kh, c->stride, c->pad), wo = out_size(c->w, c->kw, c->stride, c->pad);
        ck_assert_int_eq(y->ndim, 4);
        ck_assert(y->shape[0] == c->n && y->shape[1] == ho && y->shape[2] == wo && y->shape[3] == c->cout);
        double *want = ref_forward(c, in[0]->data, in[1]->data, c->bias ? in[2]->data : NULL);
        char what[32];
        snprintf(what, sizeof what, "conv2d case %zu", k);
        tu_assert_close(y->data, want, y->numel, 1e-4, 1e-4, what);
        free(want);
        tu_ctx_free(ctx);
    }
}
END_TEST

/* Finite differences with a step of 1: the convolution is linear in each
 * input, so a large step has no truncation error, and it keeps the forward's
 * rounding small beside the difference. With a step of 0.01 the Winograd
 * forward's rounding (each of the ~600 outputs one input pixel reaches moves
 * by its own 1e-6 relative) came out 50 times larger, 3% of the gradient, and
 * failed one run in seven at 70 channels. */
#define FD_STEP 1.0

START_TEST(test_gradcheck) {
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const conv_case *c = &cases[k];
        dc_ctx *ctx = tu_ctx();
        dc_tensor *in[3];
        make_inputs(ctx, c, in);
        tu_gradcheck(ctx, run_conv, (void *)c, in, c->bias ? 3 : 2, FD_STEP, 2e-3, 1e-2, 60);
        tu_ctx_free(ctx);
    }
}
END_TEST

/* Only one of x, w and b requires grad: the other gradients are skipped, the
 * wanted one still right (db alone cannot ride along with dw). */
START_TEST(test_partial_grad) {
    const conv_case *c = &cases[2];
    for (int which = 0; which < 3; which++) {
        dc_ctx *ctx = tu_ctx();
        dc_tensor *in[3];
        make_inputs(ctx, c, in);
        for (int k = 0; k < 3; k++)
            in[k]->requires_grad = k == which;
        tu_gradcheck(ctx, run_conv, (void *)c, in, 3, FD_STEP, 2e-3, 1e-2, 40);
        for (int k = 0; k < 3; k++)
            if (k != which)
                ck_assert_ptr_null(in[k]->grad);
        tu_ctx_free(ctx);
    }
}
END_TEST

/* The kernels both ways with the smallest scratch (chunks of one output row
 * or one image) and with room for three output rows (chunks that split
 * images, a short last chunk), against the double reference. */
START_TEST(test_chunked_kernels) {
    const conv_case *pick[] = {&cases[0], &cases[1], &cases[2], &cases[4], &cases[9], &cases[10], &cases[11], &cases[12]};
    for (size_t k = 0; k < sizeof pick / sizeof pick[0]; k++)
        for (int algo = CPU_CONV_AUTO; algo <= CPU_CONV_GEMM; algo++)
            for (int rows = 1; rows <= 3; rows += 2) {
                const conv_case *c = pick[k];
                cpu_conv_geom g = {c->n, c->h, c->w, c->cin, c->cout, c->kh, c->kw, c->stride, c->pad,
                                   out_size(c->h, c->kh, c->stride, c->pad),
                                   out_size(c->w, c->kw, c->stride, c->pad), algo, false, false};
                int64_t nx = g.n * g.h * g.w * g.cin, nw = g.cout * g.kh * g.kw * g.cin;
                int64_t ny = g.n * g.ho * g.wo * g.cout, unit = g.wo * g.kh * g.kw * g.cin;
                int64_t floats = cpu_conv2d_scratch_floats(&g, rows == 1 ? 1 : rows * unit * 4);
                if (algo == CPU_CONV_GEMM && k > 0)
                    ck_assert_int_eq(floats, rows * unit);
                dc_ctx *ctx = tu_ctx();
                dc_tensor *x = tu_randn(ctx, DC_SHAPE(nx)), *w = tu_randn(ctx, DC_SHAPE(nw));
                dc_tensor *b = tu_randn(ctx, DC_SHAPE(g.cout)), *dy = tu_randn(ctx, DC_SHAPE(ny));
                float *scratch = malloc((size_t)(floats + 1) * sizeof *scratch);
                float *y = malloc((size_t)ny * sizeof *y);
                float *grads = calloc((size_t)(nx + nw + g.cout), sizeof *grads);
                cpu_conv2d_forward(&g, y, x->data, w->data, b->data, scratch, floats);
                double *want = ref_forward(c, x->data, w->data, b->data);
                tu_assert_close(y, want, ny, 1e-4, 1e-4, algo ? "gemm forward" : "auto forward");
                free(want);
                /* first with dx fresh (poisoned: every element must be written), then
                 * adding a second time into all three */
                for (int64_t i = 0; i < nx; i++)
                    grads[i] = NAN;
                double *ref = malloc((size_t)(nx + nw + g.cout) * sizeof *ref);
                ref_backward(c, x->data, w->data, dy->data, ref, ref + nx, ref + nx + nw);
                for (int pass = 1; pass <= 2; pass++) {
                    cpu_conv2d_backward(&g, dy->data, x->data, w->data, grads, pass == 1,
                                        grads + nx, grads + nx + nw, scratch, floats);
                    tu_assert_close(grads, ref, nx, 1e-4, 1e-4, algo ? "gemm dx" : "auto dx");
                    tu_assert_close(grads + nx, ref + nx, nw, 1e-4, 1e-4, algo ? "gemm dw" : "auto dw");
                    tu_assert_close(grads + nx + nw, ref + nx + nw, g.cout, 1e-4, 1e-4, "db");
                    for (int64_t i = 0; i < nx + nw + g.cout; i++)
                        ref[i] *= 2;
                }
                free(ref);
                free(grads);
                free(y);
                free(scratch);
                tu_ctx_free(ctx);
            }
}
END_TEST

/* Weights packed as f16 (every case: 1x1 and 3x3, strides, channel tails
 * of both ISAs' blocks; few pixels: widened per vector load, many: once
 * into the scratch) against the double reference on the same weights
 * rounded to f16, as tight as the f32 kernels. */
START_TEST(test_half_weights) {
    const int64_t B = cpu_conv_pack_block();
    if (!B)
        return; /* the baseline ISA packs nothing (dc_params_pack_half keeps f32: test_nn) */
    /* and cases of enough pixels (>= 1024) that the weights are widened once first */
    const conv_case wide[] = {{1, 34, 32, 20, 70, 3, 3, 1, 1, true}, {2, 46, 45, 17, 33, 3, 3, 2, 1, false},
                              {1, 32, 40, 24, 80, 1, 1, 1, 0, true}};
    const size_t n_cases = sizeof cases / sizeof cases[0], n_wide = sizeof wide / sizeof wide[0];
    for (size_t k = 0; k < n_cases + n_wide; k++) {
        const conv_case *c = k < n_cases ? &cases[k] : &wide[k - n_cases];
        cpu_conv_geom g = {c->n, c->h, c->w, c->cin, c->cout, c->kh, c->kw, c->stride, c->pad,
                           out_size(c->h, c->kh, c->stride, c->pad),
                           out_size(c->w, c->kw, c->stride, c->pad), CPU_CONV_AUTO, true, true};
        int64_t nx = g.n * g.h * g.w * g.cin, K = g.kh * g.kw * g.cin, nw = g.cout * K;
        int64_t ny = g.n * g.ho * g.wo * g.cout, floats = cpu_conv2d_scratch_floats(&g, 1 << 20);
        dc_ctx *ctx = tu_ctx();
        dc_tensor *x = tu_randn(ctx, DC_SHAPE(nx)), *w = tu_randn(ctx, DC_SHAPE(nw));
        dc_tensor *b = tu_randn(ctx, DC_SHAPE(g.cout));
        uint16_t *wh = malloc((size_t)((g.cout + B - 1) / B * B * K) * sizeof *wh);
        float *rounded = malloc((size_t)nw * sizeof *rounded);
        float *scratch = malloc((size_t)(floats + 1) * sizeof *scratch);
        float *y = malloc((size_t)ny * sizeof *y);
        const float *wf = w->data;
        for (int64_t i = 0; i < nw; i++)
            rounded[i] = dc_f16_to_f32(dc_f32_to_f16(wf[i]));
        cpu_conv_pack_half(wf, wh, g.cout, K);
        cpu_conv2d_forward(&g, y, x->data, (const float *)(const void *)wh, c->bias ? b->data : NULL,
                           scratch, floats);
        double *want = ref_forward(c, x->data, rounded, c->bias ? b->data : NULL);
        char what[64];
        snprintf(what, sizeof what, "f16 weights, case %zu", k);
        tu_assert_close(y, want, ny, 1e-4, 1e-4, what);
        free(want);
        free(y);
        free(scratch);
        free(rounded);
        free(wh);
        tu_ctx_free(ctx);
    }
}
END_TEST

/* Winograd F(2x2, 3x3) (CPU_CONV_WINOGRAD, or the GEMM way where the ISA
 * has no direct kernels) against the double reference: forward and input
 * gradient (dx fresh, poisoned, then added to), odd sizes, channel tails,
 * one pixel, several chunks of tiles (7x9 in batch 3), several groups of
 * output channels (1024 in, 600 out). Its rounding differs from a direct
 * sum's (the transforms add and subtract inputs first): within 1e-5 of
 * sqrt(9 cin), the outputs' standard deviation here (dx: sqrt(9 cout)). Also a sample's
 * result alone and in batch 3 bit-identical, and the packed f32 and f16
 * weights of inference. */
static const conv_case winograd_cases[] = {
    {1, 1, 1, 3, 5, 3, 3, 1, 1, true},     {3, 7, 9, 20, 17, 3, 3, 1, 1, true},
    {1, 9, 7, 70, 67, 3, 3, 1, 1, false},  {2, 8, 8, 16, 32, 3, 3, 1, 1, true},
    {3, 5, 6, 9, 130, 3, 3, 1, 1, true},   {1, 2, 3, 1024, 600, 3, 3, 1, 1, true},
};

static cpu_conv_geom winograd_geom(const conv_case *c, int64_t n, bool packed, bool half) {
    return (cpu_conv_geom){n, c->h, c->w, c->cin, c->cout, 3, 3, 1, 1, c->h, c->w,
                           CPU_CONV_WINOGRAD, packed, half};
}

/* y = the forward pass over n images (weights w, as g says), and dx = then
 * += the input gradient from dy, through fresh scratch. */
static void winograd_run(const cpu_conv_geom *g, const float *x, const void *w, const float *b,
                         const float *dy, float *y, float *dx) {
    int64_t floats = cpu_conv2d_scratch_floats(g, CPU_CONV_SCRATCH_BYTES);
    float *scratch = malloc((size_t)(floats + 1) * sizeof *scratch);
    cpu_conv2d_forward(g, y, x, w, b, scratch, floats);
    for (int pass = 1; dx && pass <= 2; pass++)
        cpu_conv2d_backward(g, dy, x, w, dx, pass == 1, NULL, NULL, scratch, floats);
    free(scratch);
}

/* dw and db += the filter and bias gradients from dy, with `threads` threads. */
static void winograd_filter_run(const cpu_conv_geom *g, const float *x, const float *dy, float *dw, float *db,
                                int threads) {
    int64_t floats = cpu_conv2d_scratch_floats(g, CPU_CONV_SCRATCH_BYTES);
    float *scratch = malloc((size_t)(floats + 1) * sizeof *scratch);
    int was = omp_get_max_threads();
    omp_set_num_threads(threads);
    cpu_conv2d_backward(g, dy, x, NULL, NULL, false, dw, db, scratch, floats);
    omp_set_num_threads(was);
    free(scratch);
}

/* The filter and bias gradients, twice onto random values, against the
 * double reference (sums over n h w pixels: within 1e-5 of sqrt(n h w) each
 * time); the same bits with 1 and 3 threads the Winograd way. */
static void check_winograd_filter(const conv_case *c, size_t k, const float *x, const float *dy, const double *ref_dw,
                                  const double *ref_db) {
    const cpu_conv_geom g = winograd_geom(c, c->n, false, false);
    const int64_t nw = c->cout * 9 * c->cin;
    const double tol = 2e-5 * sqrt((double)(c->n * c->h * c->w));
    dc_ctx *ctx = tu_ctx();
    const float *start = tu_randn(ctx, DC_SHAPE(nw + c->cout))->data;
    float *dw = malloc((size_t)(nw + c->cout) * sizeof *dw), *db = dw + nw;
    float *again = malloc((size_t)(nw + c->cout) * sizeof *again);
    double *want = malloc((size_t)(nw + c->cout) * sizeof *want);
    for (int64_t i = 0; i < nw + c->cout; i++)
        want[i] = start[i] + 2 * (i < nw ? ref_dw[i] : ref_db[i - nw]);
    memcpy(dw, start, (size_t)(nw + c->cout) * sizeof *dw);
    for (int pass = 0; pass < 2; pass++)
        winograd_filter_run(&g, x, dy, dw, db, 1);
    char what[80];
    snprintf(what, sizeof what, "winograd dw twice, case %zu", k);
    tu_assert_close(dw, want, nw, tol, 0, what);
    snprintf(what, sizeof what, "winograd db twice, case %zu", k);
    tu_assert_close(db, want + nw, c->cout, tol, 0, what);
    memcpy(again, start, (size_t)(nw + c->cout) * sizeof *again);
    for (int pass = 0; pass < 2; pass++)
        winograd_filter_run(&g, x, dy, again, again + nw, 3);
    /* Without direct kernels (the baseline ISA) this is the GEMM way: one
     * OpenBLAS call, whose bits depend on its rows and threads (on Zen cores). */
    if (cpu_conv_pack_block())
        ck_assert_msg(!memcmp(dw, again, (size_t)(nw + c->cout) * sizeof *dw), "case %zu: dw differs with 3 threads", k);
    free(dw);
    free(again);
    free(want);
    tu_ctx_free(ctx);
}

START_TEST(test_winograd) {
    for (size_t k = 0; k < sizeof winograd_cases / sizeof winograd_cases[0]; k++) {
        const conv_case *c = &winograd_cases[k];
        const cpu_conv_geom g = winograd_geom(c, c->n, false, false);
        const int64_t px = c->h * c->w, nx = c->n * px * c->cin, nw = c->cout * 9 * c->cin;
        const int64_t ny = c->n * px * c->cout;
        const double tol = 1e-5 * sqrt(9.0 * (double)c->cin), dx_tol = 1e-5 * sqrt(9.0 * (double)c->cout);
        dc_ctx *ctx = tu_ctx();
        dc_tensor *x = tu_randn(ctx, DC_SHAPE(nx)), *w = tu_randn(ctx, DC_SHAPE(nw));
        dc_tensor *b = tu_randn(ctx, DC_SHAPE(c->cout)), *dy = tu_randn(ctx, DC_SHAPE(ny));
        const float *bias = c->bias ? b->data : NULL;
        float *y = malloc((size_t)ny * sizeof *y), *dx = malloc((size_t)nx * sizeof *dx);
        for (int64_t i = 0; i < nx; i++)
            dx[i] = NAN;
        winograd_run(&g, x->data, w->data, bias, dy->data, y, dx);
        double *want = ref_forward(c, x->data, w->data, bias);
        char what[80];
        snprintf(what, sizeof what, "winograd forward, case %zu", k);
        tu_assert_close(y, want, ny, tol, 0, what);
        double *ref = malloc((size_t)(nx + nw + c->cout) * sizeof *ref);
        ref_backward(c, x->data, w->data, dy->data, ref, ref + nx, ref + nx + nw);
        for (int64_t i = 0; i < nx; i++)
            ref[i] *= 2;
        snprintf(what, sizeof what, "winograd dx twice, case %zu", k);
        tu_assert_close(dx, ref, nx, 2 * dx_tol, 0, what);
        check_winograd_filter(c, k, x->data, dy->data, ref + nx, ref + nx + nw);
        if (c->n == 3) { /* image 1 alone: bit for bit (dx only the Winograd way, as in check_winograd_filter) */
            const cpu_conv_geom one = winograd_geom(c, 1, false, false);
            float *y1 = malloc((size_t)(px * c->cout) * sizeof *y1);
            float *dx1 = malloc((size_t)(px * c->cin) * sizeof *dx1);
            winograd_run(&one, (const float *)x->data + px * c->cin, w->data, bias,
                         (const float *)dy->data + px * c->cout, y1, dx1);
            ck_assert(!memcmp(y1, y + px * c->cout, (size_t)(px * c->cout) * sizeof *y1));
            if (cpu_conv_pack_block())
                ck_assert(!memcmp(dx1, dx + px * c->cin, (size_t)(px * c->cin) * sizeof *dx1));
            free(y1);
            free(dx1);
        }
        const int64_t B = cpu_conv_pack_block();
        for (int half = 0; B && half <= 1; half++) { /* inference's packed weights */
            const cpu_conv_geom gp = winograd_geom(c, c->n, true, half);
            const int64_t padded = (c->cout + B - 1) / B * B * 9 * c->cin;
            void *wp = malloc((size_t)padded * (half ? sizeof(uint16_t) : sizeof(float)));
            float *rounded = malloc((size_t)nw * sizeof *rounded);
            const float *wf = w->data;
            for (int64_t i = 0; i < nw; i++)
                rounded[i] = half ? dc_f16_to_f32(dc_f32_to_f16(wf[i])) : wf[i];
            if (half)
                cpu_conv_pack_half(wf, wp, c->cout, 9 * c->cin);
            else
                cpu_conv_pack(wf, wp, c->cout, 9 * c->cin);
            for (int64_t i = 0; i < ny; i++)
                y[i] = NAN;
            winograd_run(&gp, x->data, wp, bias, NULL, y, NULL);
            double *wr = ref_forward(c, x->data, rounded, bias);
            snprintf(what, sizeof what, "winograd, %s weights, case %zu", half ? "f16" : "packed", k);
            tu_assert_close(y, wr, ny, tol, 0, what);
            free(wr);
            free(rounded);
            free(wp);
        }
        free(ref);
        free(want);
        free(y);
        free(dx);
        tu_ctx_free(ctx);
    }
}
END_TEST

/* Backward through the op adds to gradients already there. */
START_TEST(test_backward_accumulates) {
    const conv_case *c = &cases[1];
    dc_ctx *ctx = tu_ctx();
    dc_tensor *in[3];
    make_inputs(ctx, c, in);
    dc_tensor *dy = NULL;
    for (int pass = 0; pass < 2; pass++) {
        dc_tensor *y = run_conv(ctx, in, (void *)c);
        ck_assert_msg(y != NULL, "%s", dc_error());
        if (!dy)
            dy = tu_randn(ctx, y->ndim, y->shape);
        ck_assert_int_eq(dc_backward_from(ctx, y, dy), 0);
    }
    int64_t nx = in[0]->numel, nw = in[1]->numel;
    double *ref = malloc((size_t)(nx + nw + c->cout) * sizeof *ref);
    ref_backward(c, in[0]->data, in[1]->data, dy->data, ref, ref + nx, ref + nx + nw);
    for (int64_t i = 0; i < nx + nw + c->cout; i++)
        ref[i] *= 2;
    tu_assert_close(in[0]->grad->data, ref, nx, 1e-4, 1e-4, "dx twice");
    tu_assert_close(in[1]->grad->data, ref + nx, nw, 1e-4, 1e-4, "dw twice");
    tu_assert_close(in[2]->grad->data, ref + nx + nw, c->cout, 1e-4, 1e-4, "db twice");
    free(ref);
    tu_ctx_free(ctx);
}
END_TEST

/* dc_conv2d(x, w, b, stride, pad) fails with a message containing `msg`. */
static void expect_error(dc_tensor *x, dc_tensor *w, dc_tensor *b, int stride, int pad,
                         dc_ctx *ctx, const char *msg) {
    ck_assert_ptr_null(dc_conv2d(ctx, x, w, b, stride, pad));
    ck_assert(ctx->failed);
    ck_assert_msg(strstr(dc_error(), msg), "got \"%s\", want \"%s\"", dc_error(), msg);
    dc_ctx_reset(ctx);
}

START_TEST(test_errors) {
    dc_ctx *ctx = tu_ctx();
#define T(sh) tu_randn(ctx, DC_SHAPE sh)
    expect_error(T((2, 8, 8, 3)), T((4, 3, 3, 5)), NULL, 1, 1, ctx,
                 "conv2d: input [2, 8, 8, 3] has 3 channels, weight [4, 3, 3, 5] expects 5");
    expect_error(T((1, 4, 4, 2)), T((3, 5, 5, 2)), NULL, 1, 0, ctx,
                 "conv2d: kernel 5x5 is larger than the padded input 4x4 (input [1, 4, 4, 2], padding 0)");
    expect_error(T((1, 4, 4, 2)), T((3, 3, 3, 2)), NULL, 0, 1, ctx,
                 "conv2d: stride 0, padding 1: need stride >= 1, padding >= 0");
    expect_error(T((1, 4, 4, 2)), T((3, 3, 3, 2)), NULL, 1, -1, ctx, "need stride >= 1");
    expect_error(T((1, 4, 4, 2)), T((3, 3, 3, 2)), T((4)), 1, 1, ctx,
                 "conv2d: bias [4] does not match weight [3, 3, 3, 2]: expected [3]");
    expect_error(T((4, 4, 2)), T((3, 3, 3, 2)), NULL, 1, 1, ctx,
                 "conv2d: input [4, 4, 2] is not 4-D [N, H, W, Cin]");
    expect_error(T((1, 4, 4, 2)), T((3, 9, 2)), NULL, 1, 1, ctx, "weight [3, 9, 2] is not");
    /* a failed input makes the next op fail too, keeping the first message */
    dc_tensor *x = T((1, 4, 4, 2)), *bad = T((3, 3, 3, 5)), *good = T((3, 3, 3, 2));
    dc_tensor *y = dc_conv2d(ctx, x, bad, NULL, 1, 1);
    ck_assert_ptr_null(dc_conv2d(ctx, y, good, NULL, 1, 1));
    ck_assert_ptr_null(dc_conv2d(ctx, x, good, NULL, 1, 1));
    ck_assert_msg(strstr(dc_error(), "has 2 channels"), "%s", dc_error());
#undef T
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops_conv");
    TCase *tc = tu_tcase(s, "conv2d", 120);
    tcase_add_test(tc, test_forward);
    tcase_add_test(tc, test_gradcheck);
    tcase_add_test(tc, test_partial_grad);
    tcase_add_test(tc, test_chunked_kernels);
    tcase_add_test(tc, test_half_weights);
    tcase_add_test(tc, test_winograd);
    tcase_add_test(tc, test_backward_accumulates);
    tcase_add_test(tc, test_errors);
    return tu_run(s);
}
