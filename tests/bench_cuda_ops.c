/* The GPU ops at UNet shapes: conv2d, linear, group_norm and attention,
 * forward and backward, under TF32 (f32 storage) and bf16 arithmetic, each
 * time taken with CUDA events on the device's stream, the best of --reps.
 * scripts/bench_torch_cuda_ops.py times the same cases in PyTorch;
 * scripts/bench.sh cuda-ops prints both. One line per case:
 * `bench OP name=... math=... fwd_ms=... bwd_ms=... total_ms=...`.
 * Exits 77 without CUDA or a GPU. */
#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef DC_HAVE_CUDA
int main(void) {
    fprintf(stderr, "bench_cuda_ops: this build has no CUDA\n");
    return 77;
}
#else
#include "autograd/cuda/device.h"

/* x's shape; p0, p1: conv Cout and kernel, linear out, groups, heads.
 * Keep in step with scripts/bench_torch_cuda_ops.py. */
typedef struct {
    const char *name;
    dc_op op;
    int ndim;
    int64_t shape[4];
    int64_t p0, p1;
} bench_case;

static const bench_case cases[] = {
    {"conv3x3_c128_32x32", DC_OP_CONV2D, 4, {8, 32, 32, 128}, 128, 3},
    {"conv3x3_c256_16x16", DC_OP_CONV2D, 4, {8, 16, 16, 256}, 256, 3},
    {"linear_8192x512x512", DC_OP_LINEAR, 2, {8192, 512}, 512, 0},
    {"group_norm_c128_32x32", DC_OP_GROUP_NORM, 4, {8, 32, 32, 128}, 32, 0},
    {"attention_1024tok_c128_h4", DC_OP_ATTENTION, 3, {8, 1024, 128}, 4, 0},
    {"attention_256tok_c256_h8", DC_OP_ATTENTION, 3, {8, 256, 256}, 8, 0},
};

typedef struct {
    const bench_case *c;
    dc_ctx data, work;      /* inputs and the seed gradient; one step's activations */
    dc_tensor *in[3], *dy;  /* x (or q = k = v), weight, bias */
    dc_tensor *out;
} bench;

/* A tensor of normals times scale, requiring grad. */
static dc_tensor *randn(dc_ctx *ctx, int ndim, const int64_t *shape, float scale) {
    int64_t n = dc_shape_numel(ndim, shape);
    float *h = malloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        h[i] = scale * (float)((double)rand() / RAND_MAX * 2 - 1);
    dc_tensor *t = dc_from_host(ctx, DC_F32, ndim, shape, h);
    free(h);
    if (t)
        t->requires_grad = true;
    return t;
}

static void forward(void *arg) {
    bench *b = arg;
    const bench_case *c = b->c;
    dc_ctx_reset(&b->work);
    for (int i = 0; i < 3; i++)
        if (b->in[i])
            b->in[i]->grad = NULL;
    dc_tensor **in = b->in;
    switch (c->op) {
    case DC_OP_CONV2D: b->out = dc_conv2d(&b->work, in[0], in[1], in[2], 1, (int)c->p1 / 2); break;
    case DC_OP_LINEAR: b->out = dc_linear(&b->work, in[0], in[1], in[2]); break;
    case DC_OP_GROUP_NORM:
        b->out = dc_group_norm(&b->work, in[0], (int)c->p0, in[1], in[2], 1e-5f);
        break;
    default: b->out = dc_attention(&b->work, in[0], in[0], in[0], (int)c->p0, false, 0); break;
    }
}

static void backward(void *arg) {
    bench *b = arg;
    dc_backward_from(&b->work, b->out, b->dy);
}

static int setup(bench *b, const bench_case *c) {
    memset(b, 0, sizeof *b);
    b->c = c;
    if (dc_ctx_init(&b->data, 0, (size_t)1 << 30) || dc_ctx_init(&b->work, 0, (size_t)8 << 30))
        return -1;
    int64_t C = c->shape[c->ndim - 1];
    b->in[0] = randn(&b->data, c->ndim, c->shape, 1.0f);
    if (c->op == DC_OP_CONV2D) {
        b->in[1] = randn(&b->data, DC_SHAPE(c->p0, c->p1, c->p1, C), 0.05f);
        b->in[2] = randn(&b->data, DC_SHAPE(c->p0), 0.1f);
    } else if (c->op == DC_OP_LINEAR) {
        b->in[1] = randn(&b->data, DC_SHAPE(c->p0, C), 0.05f);
        b->in[2] = randn(&b->data, DC_SHAPE(c->p0), 0.1f);
    } else if (c->op == DC_OP_GROUP_NORM) {
        b->in[1] = randn(&b->data, DC_SHAPE(C), 1.0f);
        b->in[2] = randn(&b->data, DC_SHAPE(C), 0.1f);
    }
    forward(b); /* the output's shape for the seed gradient, and cuDNN's plans */
    if (!b->out)
        return -1;
    b->dy = randn(&b->data, b->out->ndim, b->out->shape, 1.0f);
    return b->dy ? dc_ctx_status(&b->data) : -1;
}

int main(int argc, char **argv) {
    int reps = 20;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
    if (dc_device_count() == 0) {
        fprintf(stderr, "bench_cuda_ops: no CUDA GPU\n");
        return 77;
    }
    const dc_math maths[2] = {DC_MATH_TF32, DC_MATH_BF16};
    const char *math_names[2] = {"tf32", "bf16"};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        for (int m = 0; m < 2; m++) {
            bench b;
            if (dc_device_set_math(0, maths[m]) || setup(&b, &cases[k])) {
                fprintf(stderr, "bench_cuda_ops: %s: %s\n", cases[k].name, dc_error());
                return 1;
            }
            float best_f = 1e30f, best_b = 1e30f, best_t = 1e30f;
            for (int r = 0; r < reps + 2; r++) { /* two warm-up rounds */
                float f = cuda_time_ms(0, forward, &b), bw = cuda_time_ms(0, backward, &b);
                if (f < 0 || bw < 0 || dc_ctx_status(&b.work)) {
                    fprintf(stderr, "bench_cuda_ops: %s: %s\n", cases[k].name, dc_error());
                    return 1;
                }
                if (r >= 2 && f + bw < best_t)
                    best_f = f, best_b = bw, best_t = f + bw;
            }
            printf("bench %s name=%s math=%s fwd_ms=%.4f bwd_ms=%.4f total_ms=%.4f\n",
                   dc_op_name(cases[k].op), cases[k].name, math_names[m], best_f, best_b, best_t);
            dc_ctx_free(&b.work);
            dc_ctx_free(&b.data);
        }
    return 0;
}
#endif
