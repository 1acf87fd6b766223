/*
 * CPU benchmark of the matrix-product ops: conv2d and linear, forward and
 * backward (every input requiring grad), on UNet-like shapes. Each case runs
 * a warmup and then several repetitions and prints the best times as one line:
 *   bench OP name=NAME fwd_ms=F bwd_ms=B total_ms=T gflops=G
 * (flops counted as forward + dx + dw, i.e. three times the forward GEMM; a
 * network's first convolution gets no dx, as its input is data).
 * scripts/bench_torch_cpu.py prints the same lines for PyTorch and
 * scripts/bench.sh sets the thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS)
 * and compares the two.
 *
 * usage: bench_cpu_ops [--reps N] [--warmup N] [--case SUBSTRING]
 */
#include "autograd/error.h"
#include "autograd/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *name;
    int64_t n, h, w, cin, cout, k;
    int stride, pad;
    bool dx; /* the input requires grad */
} conv_case;

/* Keep in step with scripts/bench_torch_cpu.py. */
static const conv_case convs[] = {
    {"conv3x3_c64_32x32", 32, 32, 32, 64, 64, 3, 1, 1, true},
    {"conv3x3_c128_16x16", 32, 16, 16, 128, 128, 3, 1, 1, true},
    {"conv1x1_c64to128_32x32", 32, 32, 32, 64, 128, 1, 1, 0, true},
    {"conv3x3s2_c128_32x32", 32, 32, 32, 128, 128, 3, 2, 1, true},
    {"conv_in_c3to64_32x32", 32, 32, 32, 3, 64, 3, 1, 1, false},
    /* configs/fashion-mnist.json's layers at its batch of 64 (fm_1x1: the
     * attention blocks' projections, which linear runs as 1x1 convolutions) */
    {"fm_c16_32x32", 64, 32, 32, 16, 16, 3, 1, 1, true},
    {"fm_c32_16x16", 64, 16, 16, 32, 32, 3, 1, 1, true},
    {"fm_c64_8x8", 64, 8, 8, 64, 64, 3, 1, 1, true},
    {"fm_c48to32_16x16", 64, 16, 16, 48, 32, 3, 1, 1, true},
    {"fm_c32to16_32x32", 64, 32, 32, 32, 16, 3, 1, 1, true},
    {"fm_c1to16_32x32", 64, 32, 32, 1, 16, 3, 1, 1, false},
    {"fm_1x1_c32_16x16", 64, 16, 16, 32, 32, 1, 1, 0, true},
    {"fm_1x1_c64_8x8", 64, 8, 8, 64, 64, 1, 1, 0, true},
};

typedef struct {
    const char *name;
    int64_t m, k, n; /* x [m, k] @ w [n, k]^T */
} linear_case;

static const linear_case linears[] = {{"linear_4096x512x512", 4096, 512, 512}};

typedef struct {
    dc_ctx *ctx;
    dc_tensor *in[3]; /* x, w, b: leaves (w and b require grad) */
    dc_tensor *dy;    /* the seed gradient */
    const conv_case *conv; /* NULL: linear */
} bench;

static double now(void) {
    struct timespec t;
    clock_gettime(getenv("BENCH_CPUTIME") ? CLOCK_PROCESS_CPUTIME_ID : CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Uniform in [-1, 1) from a fixed LCG: the data only has to be non-trivial. */
static dc_tensor *random_tensor(dc_ctx *ctx, int ndim, const int64_t *shape, bool grad) {
    static uint64_t s = 0x9e3779b97f4a7c15ull;
    dc_tensor *t = dc_new(ctx, DC_F32, ndim, shape);
    if (!t)
        return NULL;
    for (int64_t i = 0; i < t->numel; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        ((float *)t->data)[i] = (float)((double)(s >> 40) / (double)(1 << 23) - 1.0);
    }
    t->requires_grad = grad;
    return t;
}

static dc_tensor *forward(bench *b) {
    const conv_case *c = b->conv;
    return c ? dc_conv2d(b->ctx, b->in[0], b->in[1], b->in[2], c->stride, c->pad)
             : dc_linear(b->ctx, b->in[0], b->in[1], b->in[2]);
}

/* One forward + backward; the step's activations and gradients are released
 * after. The backward time is the op's own backward function, given dy as the
 * output's gradient the way the next op of a network leaves it there
 * (dc_backward_from would first copy the seed: a cost of the benchmark, not
 * of the op; PyTorch's y.backward(dy) uses dy as it is). */
static int step(bench *b, double *fwd_s, double *bwd_s) {
    size_t act = b->ctx->act.used, meta = b->ctx->meta.used;
    for (int i = 0; i < 3; i++)
        b->in[i]->grad = NULL;
    double t0 = now();
    dc_tensor *y = forward(b);
    double t1 = now();
    dc_node *n = b->ctx->tape;
    if (!y || !n || n->out != y)
        return -1;
    y->grad = b->dy;
    int rc = n->backward(b->ctx, n);
    b->ctx->tape = NULL;
    double t2 = now();
    *fwd_s = t1 - t0;
    *bwd_s = t2 - t1;
    dc_arena_rewind(&b->ctx->act, act);
    dc_arena_rewind(&b->ctx->meta, meta);
    return rc;
}

static int run(bench *b, const char *op, const char *name, double flops, int reps, int warmup) {
    double best_f = 1e30, best_b = 1e30, best_t = 1e30, f, bw;
    for (int r = 0; r < warmup + reps; r++) {
        if (step(b, &f, &bw))
            return -1;
        if (r < warmup)
            continue;
        best_f = f < best_f ? f : best_f;
        best_b = bw < best_b ? bw : best_b;
        best_t = f + bw < best_t ? f + bw : best_t;
    }
    printf("bench %s name=%s fwd_ms=%.3f bwd_ms=%.3f total_ms=%.3f gflops=%.1f\n", op, name,
           best_f * 1e3, best_b * 1e3, best_t * 1e3, flops / best_t / 1e9);
    fflush(stdout);
    return 0;
}

static int bench_conv(dc_ctx *ctx, const conv_case *c, int reps, int warmup) {
    dc_ctx_reset(ctx);
    int64_t ho = (c->h + 2 * c->pad - c->k) / c->stride + 1, wo = (c->w + 2 * c->pad - c->k) / c->stride + 1;
    bench b = {ctx,
               {random_tensor(ctx, DC_SHAPE(c->n, c->h, c->w, c->cin), c->dx),
                random_tensor(ctx, DC_SHAPE(c->cout, c->k, c->k, c->cin), true),
                random_tensor(ctx, DC_SHAPE(c->cout), true)},
               random_tensor(ctx, DC_SHAPE(c->n, ho, wo, c->cout), false), c};
    if (dc_ctx_status(ctx))
        return -1;
    double flops = (c->dx ? 3.0 : 2.0) * 2.0 * (double)(c->n * ho * wo * c->cout * c->k * c->k * c->cin);
    return run(&b, "conv2d", c->name, flops, reps, warmup);
}

static int bench_linear(dc_ctx *ctx, const linear_case *c, int reps, int warmup) {
    dc_ctx_reset(ctx);
    bench b = {ctx,
               {random_tensor(ctx, DC_SHAPE(c->m, c->k), true),
                random_tensor(ctx, DC_SHAPE(c->n, c->k), true),
                random_tensor(ctx, DC_SHAPE(c->n), true)},
               random_tensor(ctx, DC_SHAPE(c->m, c->n), false), NULL};
    if (dc_ctx_status(ctx))
        return -1;
    double flops = 3.0 * 2.0 * (double)(c->m * c->k * c->n);
    return run(&b, "linear", c->name, flops, reps, warmup);
}

int main(int argc, char **argv) {
    int reps = 5, warmup = 2;
    const char *only = ""; /* run the cases whose names contain this */
    for (int i = 1; i < argc; i++) {
        if (i + 1 < argc && !strcmp(argv[i], "--reps"))
            reps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--warmup"))
            warmup = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(argv[i], "--case"))
            only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--reps N] [--warmup N] [--case SUBSTRING]\n", argv[0]);
            return 2;
        }
    }
    if (reps < 1 || warmup < 0) {
        fprintf(stderr, "bench_cpu_ops: need --reps >= 1 and --warmup >= 0\n");
        return 2;
    }
    dc_ctx ctx;
    if (dc_ctx_init(&ctx, DC_CPU, (size_t)8 << 30)) {
        fprintf(stderr, "bench_cpu_ops: %s\n", dc_error());
        return 1;
    }
    int rc = 0;
    for (size_t i = 0; i < sizeof convs / sizeof convs[0] && !rc; i++)
        if (strstr(convs[i].name, only))
            rc = bench_conv(&ctx, &convs[i], reps, warmup);
    for (size_t i = 0; i < sizeof linears / sizeof linears[0] && !rc; i++)
        if (strstr(linears[i].name, only))
            rc = bench_linear(&ctx, &linears[i], reps, warmup);
    if (rc)
        fprintf(stderr, "bench_cpu_ops: %s\n", dc_error());
    dc_ctx_free(&ctx);
    return rc ? 1 : 0;
}
