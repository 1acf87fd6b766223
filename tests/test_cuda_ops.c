/* The CUDA backend against the CPU kernels: every op forward and backward,
 * through the op API on a GPU context and a CPU context, on the same fresh
 * random inputs of several shapes (odd sizes included). The GPU context
 * poisons every output with NaN bytes before its kernel runs, so an element
 * a kernel forgets to write fails the comparison.
 *
 * Tolerances, per dtype of the arithmetic (dc_math): an element passes when
 * |gpu - cpu| <= tol * (|cpu| + max |cpu| over the tensor), with tol
 *   f32  1e-5 (every op; the GPU's sums run in another order),
 *   tf32 2e-3 (convolutions, GEMMs, attention: 10-bit mantissas),
 *   bf16 2e-2 (the same: 7-bit mantissas, f32 accumulation).
 * Also: the Philox streams (uniforms bit for bit), AdamW, EMA, the gradient
 * norm, out-of-memory and sticky-error messages.
 *
 * Exits 77 (skipped) without a GPU; CUDA is first touched inside a test,
 * never in the process Check forks from. */
#include "testutil.h"

#ifndef DC_HAVE_CUDA
#include <stdio.h>
int main(void) {
    printf("test_cuda_ops: this build has no CUDA: skipped\n");
    return 77;
}
#else

#include "autograd/cpu/diffusion.h"
#include "autograd/cpu/optim.h"
#include "autograd/cuda/device.h"
#include "autograd/cuda/diffusion.h"
#include "autograd/cuda/optim.h"
#include "autograd/cuda/rng.h"
#include "autograd/device.h"
#include "autograd/diffusion.h"
#include "autograd/error.h"
#include "autograd/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_F32 1e-5
#define TOL_TF32 2e-3
#define TOL_BF16 2e-2

/* ---- comparing the devices ---- */

/* A fresh context on GPU 0 that poisons outputs, with the given arithmetic. */
static dc_ctx *gpu_ctx(dc_math m) {
    dc_ctx *ctx = malloc(sizeof *ctx);
    ck_assert_ptr_nonnull(ctx);
    ck_assert_msg(dc_ctx_init(ctx, 0, (size_t)1 << 30) == 0, "%s", dc_error());
    ctx->poison = true;
    ck_assert_msg(dc_device_set_math(0, m) == 0, "%s", dc_error());
    return ctx;
}

static void gpu_ctx_free(dc_ctx *ctx) {
    dc_ctx_free(ctx);
    free(ctx);
}

/* The floats of t, wherever it lives, in a malloc'd host copy. */
static float *host_copy(const dc_tensor *t) {
    float *h = malloc(dc_tensor_bytes(t) + 1);
    ck_assert_ptr_nonnull(h);
    ck_assert_msg(dc_memcpy(h, DC_CPU, t->data, t->device, dc_tensor_bytes(t)) == 0, "%s",
                  dc_error());
    return h;
}

/* |got - want| <= tol * (|want| + max |want|) everywhere; NaN fails. */
static void assert_near(const float *got, const float *want, int64_t n, double tol,
                        const char *what, const char *part) {
    double scale = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(want[i]));
    for (int64_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol * (fabs(want[i]) + scale)))
            ck_abort_msg("%s, %s: element %lld of %lld: GPU %.9g, CPU %.9g (tolerance %g of "
                         "|CPU| + %g)",
                         what, part, (long long)i, (long long)n, (double)got[i], (double)want[i],
                         tol, scale);
}

/* Everything an op of the table below needs besides its tensors. */
typedef struct {
    dc_op op;
    int i0, i1;       /* groups, stride and pad, heads, slice start and count, dim */
    float f0;         /* dropout p, attention scale, timestep shift, snr gamma, label smoothing */
    bool b0;          /* causal, flip_sin_to_cos, conv2d twice (accumulating gradients), ignore index -100 */
    dc_prediction_type pred;
    const dc_noise_schedule *sched;
} op_arg;

/* The op of `arg` on in[] (absent optional tensors are NULL). */
static dc_tensor *run(dc_ctx *c, dc_tensor **in, void *argp) {
    const op_arg *a = argp;
    switch (a->op) {
    case DC_OP_ADD: return dc_add(c, in[0], in[1]);
    case DC_OP_SUB: return dc_sub(c, in[0], in[1]);
    case DC_OP_MUL: return dc_mul(c, in[0], in[1]);
    case DC_OP_AFFINE: /* through a reshape, which shares the gradient path */
        return dc_affine(c, dc_reshape(c, in[0], DC_SHAPE(in[0]->numel)), 1.5f, -0.25f);
    case DC_OP_SUM: return dc_sum(c, in[0]);
    case DC_OP_MEAN: return dc_mean(c, in[0]);
    case DC_OP_LINEAR: return dc_linear(c, in[0], in[1], in[2]);
    case DC_OP_MATMUL: return dc_matmul(c, in[0], in[1]);
    case DC_OP_CONV2D:
        if (a->b0) /* conv(conv(x) + x): x and w get a second gradient added to their first */
            return dc_conv2d(c, dc_add(c, dc_conv2d(c, in[0], in[1], in[2], 1, 1), in[0]), in[1],
                             in[2], 1, 1);
        return dc_conv2d(c, in[0], in[1], in[2], a->i0, a->i1);
    case DC_OP_GROUP_NORM: return dc_group_norm(c, in[0], a->i0, in[1], in[2], 1e-5f);
    case DC_OP_GROUP_NORM_SILU: return dc_group_norm_silu(c, in[0], a->i0, in[1], in[2], 1e-5f);
    case DC_OP_LAYER_NORM: return dc_layer_norm(c, in[0], in[1], in[2], 1e-5f);
    case DC_OP_SILU: return dc_silu(c, in[0]);
    case DC_OP_GELU: return dc_gelu(c, in[0]);
    case DC_OP_MISH: return dc_mish(c, in[0]);
    case DC_OP_QUICK_GELU: return dc_quick_gelu(c, in[0]);
    case DC_OP_SOFTMAX: return dc_softmax(c, in[0]);
    case DC_OP_ATTENTION: return dc_attention(c, in[0], in[1], in[2], a->i0, a->b0, a->f0);
    case DC_OP_UPSAMPLE2X: return dc_upsample2x(c, in[0]);
    case DC_OP_CONCAT: return dc_concat(c, in[0], in[1]);
    case DC_OP_SLICE: return dc_slice(c, in[0], a->i0, a->i1);
    case DC_OP_DROPOUT: return dc_dropout(c, in[0], a->f0);
    case DC_OP_EMBEDDING: return dc_embedding(c, in[0], in[1]);
    case DC_OP_TIMESTEP_EMBEDDING:
        return dc_timestep_embedding(c, in[0], a->i0, a->b0, a->f0, 10000.0f);
    case DC_OP_FOURIER_EMBEDDING: return dc_fourier_embedding(c, in[0], in[1], a->b0);
    case DC_OP_MSE_LOSS: return dc_mse_loss(c, in[0], in[1], in[2]);
    case DC_OP_CROSS_ENTROPY:
        return a->b0 ? dc_cross_entropy_ex(c, in[0], in[1], -100, a->f0) : dc_cross_entropy(c, in[0], in[1]);
    case DC_OP_Q_SAMPLE: return dc_q_sample(c, in[0], in[1], in[2], a->sched);
    case DC_OP_DIFFUSION_LOSS:
        return dc_diffusion_loss(c, in[0], in[1], in[2], in[3], a->sched, a->pred, a->f0, NULL);
    default: return NULL;
    }
}

/* The op on the CPU context (where in[] lives) and on a fresh GPU context
 * with copies of in[]; outputs, then (seeded with one random gradient) the
 * gradients of every input that requires one, compared within tol. */
static void check_op(dc_ctx *cpu, dc_math m, double tol, op_arg a, dc_tensor **in, int n_in) {
    char what[128];
    snprintf(what, sizeof what, "%s, math %d, seed %llu", dc_op_name(a.op), (int)m,
             (unsigned long long)tu_seed());
    dc_ctx *gpu = gpu_ctx(m);
    dc_tensor *gin[4] = {NULL};
    for (int i = 0; i < n_in; i++)
        if (in[i]) {
            gin[i] = dc_clone(gpu, in[i]);
            ck_assert_msg(gin[i] != NULL, "%s: copy: %s", what, dc_error());
            gin[i]->requires_grad = in[i]->requires_grad;
        }
    gpu->seed = cpu->seed;
    gpu->rng_calls = cpu->rng_calls;
    dc_tensor *want = run(cpu, in, &a);
    ck_assert_msg(want != NULL, "%s: CPU: %s", what, dc_error());
    dc_tensor *got = run(gpu, gin, &a);
    /* a failed CUDA call leaves the output in place but the context failed: say why */
    ck_assert_msg(got != NULL && dc_ctx_status(gpu) == 0, "%s: GPU: %s", what, dc_error());
    ck_assert_msg(got->device == 0 && dc_same_shape(got, want), "%s: output shape", what);
    float *h = host_copy(got);
    assert_near(h, want->data, want->numel, tol, what, "forward");
    free(h);
    if (want->requires_grad) {
        dc_tensor *seed = tu_randn(cpu, want->ndim, want->shape);
        dc_tensor *gseed = dc_clone(gpu, seed);
        ck_assert_msg(gseed && dc_backward_from(cpu, want, seed) == 0, "%s: CPU backward: %s",
                      what, dc_error());
        ck_assert_msg(dc_backward_from(gpu, got, gseed) == 0, "%s: GPU backward: %s", what,
                      dc_error());
        for (int i = 0; i < n_in; i++) {
            if (!in[i] || !in[i]->requires_grad)
                continue;
            ck_assert_msg(in[i]->grad && gin[i]->grad, "%s: input %d has no gradient", what, i);
            char part[32];
            snprintf(part, sizeof part, "gradient of input %d", i);
            h = host_copy(gin[i]->grad);
            assert_near(h, in[i]->grad->data, in[i]->numel, tol, what, part);
            free(h);
        }
    }
    ck_assert_msg(dc_ctx_status(gpu) == 0 && dc_device_synchronize(0) == 0, "%s: %s", what,
                  dc_error());
    gpu_ctx_free(gpu);
}

/* Shorthands for inputs on the CPU context. */
#define LEAF(ctx, ...) tu_leaf((ctx), DC_SHAPE(__VA_ARGS__))
#define DATA(ctx, ...) tu_randn((ctx), DC_SHAPE(__VA_ARGS__))

/* Runs check_op with a fresh CPU context per case; `in` built by the caller's block. */
#define CHECK(m, tol, arg, ...)                                                                    \
    do {                                                                                           \
        dc_tensor *in_[] = {__VA_ARGS__};                                                          \
        check_op(cpu, (m), (tol), (arg), in_, (int)(sizeof in_ / sizeof in_[0]));                  \
    } while (0)

/* i32 indices uniform in [0, v) of the given shape. */
static dc_tensor *indices(dc_ctx *cpu, int ndim, const int64_t *shape, int64_t v) {
    dc_tensor *t = dc_new(cpu, DC_I32, ndim, shape);
    ck_assert_ptr_nonnull(t);
    for (int64_t i = 0; i < t->numel; i++)
        ((int32_t *)t->data)[i] = (int32_t)(tu_next() % (uint64_t)v);
    return t;
}

/* indices() with every third set to -100 (an ignore index), the first kept. */
static dc_tensor *some_ignored(dc_tensor *t) {
    for (int64_t i = 2; i < t->numel; i += 3)
        ((int32_t *)t->data)[i] = -100;
    return t;
}

/* ---- the ops ---- */

START_TEST(test_elementwise) {
    dc_ctx *cpu = tu_ctx();
    const dc_op ops[3] = {DC_OP_ADD, DC_OP_SUB, DC_OP_MUL};
    for (int k = 0; k < 3; k++) {
        op_arg a = {.op = ops[k]};
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 7), LEAF(cpu, 2, 5, 3, 7));
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 7), LEAF(cpu, 7));       /* bias */
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 7), LEAF(cpu, 2, 1, 1, 7)); /* time emb */
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 7), LEAF(cpu, 2, 5, 1, 1));
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 7), LEAF(cpu, 1, 5, 1, 7)); /* general */
        CHECK(DC_MATH_F32, TOL_F32, a, DATA(cpu, 3, 33), LEAF(cpu, 33)); /* grad of b only */
        /* a per-pixel b: 257 * 256 groups of columns, past the grid's 65535 in y */
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 1, 257, 256, 2), LEAF(cpu, 1, 257, 256, 1));
    }
    op_arg a = {.op = DC_OP_AFFINE};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 7, 5));
    a.op = DC_OP_SUM;
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 1001));
    a.op = DC_OP_MEAN;
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 7, 300, 11));
    tu_ctx_free(cpu);
}
END_TEST

/* Convolutions, GEMMs and attention in the given arithmetic. */
static void check_products(dc_math m, double tol) {
    dc_ctx *cpu = tu_ctx();
    op_arg a = {.op = DC_OP_LINEAR};
    CHECK(m, tol, a, LEAF(cpu, 3, 5, 7), LEAF(cpu, 11, 7), LEAF(cpu, 11));
    CHECK(m, tol, a, LEAF(cpu, 13, 33), LEAF(cpu, 17, 33), NULL);
    CHECK(m, tol, a, LEAF(cpu, 256, 64), LEAF(cpu, 128, 64), LEAF(cpu, 128));
    a.op = DC_OP_MATMUL;
    CHECK(m, tol, a, LEAF(cpu, 5, 7), LEAF(cpu, 7, 9));
    CHECK(m, tol, a, LEAF(cpu, 3, 5, 7), LEAF(cpu, 3, 7, 4));
    a = (op_arg){.op = DC_OP_CONV2D, .i0 = 1, .i1 = 1};
    CHECK(m, tol, a, LEAF(cpu, 2, 9, 7, 5), LEAF(cpu, 6, 3, 3, 5), LEAF(cpu, 6));
    CHECK(m, tol, a, LEAF(cpu, 2, 16, 16, 32), LEAF(cpu, 64, 3, 3, 32), LEAF(cpu, 64));
    a.i0 = 2; /* stride 2, the downsampler */
    CHECK(m, tol, a, LEAF(cpu, 2, 9, 8, 6), LEAF(cpu, 6, 3, 3, 6), LEAF(cpu, 6));
    a.i0 = 1, a.i1 = 0; /* 1x1, the shortcut; and an unpadded odd kernel */
    CHECK(m, tol, a, LEAF(cpu, 3, 5, 5, 12), LEAF(cpu, 8, 1, 1, 12), NULL);
    CHECK(m, tol, a, DATA(cpu, 1, 7, 9, 3), LEAF(cpu, 4, 3, 5, 3), LEAF(cpu, 4));
    a.i0 = 2, a.i1 = 2;
    CHECK(m, tol, a, LEAF(cpu, 2, 11, 10, 3), LEAF(cpu, 4, 5, 5, 3), LEAF(cpu, 4));
    a = (op_arg){.op = DC_OP_CONV2D, .b0 = true}; /* dx and dw added to, not set */
    CHECK(m, tol, a, LEAF(cpu, 2, 9, 7, 6), LEAF(cpu, 6, 3, 3, 6), LEAF(cpu, 6));
    a = (op_arg){.op = DC_OP_ATTENTION, .i0 = 3};
    CHECK(m, tol, a, LEAF(cpu, 2, 7, 12), LEAF(cpu, 2, 5, 12), LEAF(cpu, 2, 5, 12)); /* cross */
    CHECK(m, tol, a, LEAF(cpu, 2, 9, 15), LEAF(cpu, 2, 9, 15), LEAF(cpu, 2, 9, 15)); /* d = 5 */
    a = (op_arg){.op = DC_OP_ATTENTION, .i0 = 2, .b0 = true, .f0 = 0.3f};
    CHECK(m, tol, a, LEAF(cpu, 2, 6, 8), LEAF(cpu, 2, 6, 8), LEAF(cpu, 2, 6, 8));
    a = (op_arg){.op = DC_OP_ATTENTION, .i0 = 4}; /* a 16x16 map of 128 channels */
    CHECK(m, tol, a, LEAF(cpu, 2, 256, 128), LEAF(cpu, 2, 256, 128), LEAF(cpu, 2, 256, 128));
    /* more samples than heads: one batched GEMM per head (above: one per sample) */
    a = (op_arg){.op = DC_OP_ATTENTION, .i0 = 2};
    CHECK(m, tol, a, LEAF(cpu, 5, 7, 6), LEAF(cpu, 5, 3, 6), LEAF(cpu, 5, 3, 6)); /* d = 3 */
    a = (op_arg){.op = DC_OP_ATTENTION, .i0 = 3, .b0 = true};
    CHECK(m, tol, a, LEAF(cpu, 4, 9, 21), LEAF(cpu, 4, 9, 21), LEAF(cpu, 4, 9, 21)); /* d = 7 */
    CHECK(m, tol, a, LEAF(cpu, 2, 3, 12), LEAF(cpu, 2, 8, 12), LEAF(cpu, 2, 8, 12)); /* cached keys */
    a = (op_arg){.op = DC_OP_ATTENTION, .i0 = 3}; /* as many samples as heads */
    CHECK(m, tol, a, LEAF(cpu, 3, 11, 15), LEAF(cpu, 3, 13, 15), LEAF(cpu, 3, 13, 15));
    a.i0 = 5; /* one sample: a single GEMM over its 5 heads */
    CHECK(m, tol, a, LEAF(cpu, 1, 17, 40), LEAF(cpu, 1, 17, 40), LEAF(cpu, 1, 17, 40));
    a.i0 = 1; /* one head: a single GEMM over the samples */
    CHECK(m, tol, a, LEAF(cpu, 3, 10, 9), LEAF(cpu, 3, 6, 9), LEAF(cpu, 3, 6, 9));
    tu_ctx_free(cpu);
}

START_TEST(test_products_f32) { check_products(DC_MATH_F32, TOL_F32); }
END_TEST

START_TEST(test_products_tf32) { check_products(DC_MATH_TF32, TOL_TF32); }
END_TEST

START_TEST(test_products_bf16) { check_products(DC_MATH_BF16, TOL_BF16); }
END_TEST

/* cuBLASLt plans are made once per GEMM and reused: the same shapes again
 * with other data, more shapes than the cache holds (plans replaced and made
 * again), and one shape under two math settings, which must not share a plan
 * (f32 after TF32 is held to f32's tolerance). */
START_TEST(test_gemm_plans) {
    dc_ctx *cpu = tu_ctx();
    op_arg a = {.op = DC_OP_LINEAR};
    for (int rep = 0; rep < 3; rep++)
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 13, 33), LEAF(cpu, 17, 33), LEAF(cpu, 17));
    a.op = DC_OP_MATMUL; /* 3 GEMMs each (forward and two gradients): 300 shapes, twice */
    for (int pass = 0; pass < 2; pass++)
        for (int rows = 1; rows <= 100; rows++)
            CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, rows, 3), LEAF(cpu, 3, 5));
    a.op = DC_OP_LINEAR;
    CHECK(DC_MATH_TF32, TOL_TF32, a, LEAF(cpu, 64, 256), LEAF(cpu, 32, 256), LEAF(cpu, 32));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 64, 256), LEAF(cpu, 32, 256), LEAF(cpu, 32));
    tu_ctx_free(cpu);
}
END_TEST

START_TEST(test_norms) {
    dc_ctx *cpu = tu_ctx();
    op_arg a = {.op = DC_OP_GROUP_NORM, .i0 = 3};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 6), LEAF(cpu, 6), LEAF(cpu, 6));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 6), NULL, LEAF(cpu, 6));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 7, 6), NULL, NULL); /* [N, L, C] */
    a.i0 = 32; /* the UNet's: 32 groups */
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 16, 16, 128), LEAF(cpu, 128), LEAF(cpu, 128));
    CHECK(DC_MATH_F32, TOL_F32, a, DATA(cpu, 3, 5, 7, 64), LEAF(cpu, 64), LEAF(cpu, 64));
    a = (op_arg){.op = DC_OP_GROUP_NORM_SILU, .i0 = 3};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 6), LEAF(cpu, 6), LEAF(cpu, 6));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 5, 3, 6), LEAF(cpu, 6), NULL);
    a.i0 = 32;
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 16, 16, 128), LEAF(cpu, 128), LEAF(cpu, 128));
    a.op = DC_OP_LAYER_NORM;
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 5, 13), LEAF(cpu, 13), LEAF(cpu, 13));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 4, 37), LEAF(cpu, 37), NULL);
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 513, 300), NULL, NULL);
    tu_ctx_free(cpu);
}
END_TEST

START_TEST(test_activations) {
    dc_ctx *cpu = tu_ctx();
    const dc_op ops[] = {DC_OP_SILU, DC_OP_GELU, DC_OP_MISH, DC_OP_QUICK_GELU, DC_OP_SOFTMAX};
    for (int k = 0; k < (int)(sizeof ops / sizeof *ops); k++) {
        op_arg a = {.op = ops[k]};
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 7, 5));
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 3, 257)); /* rows longer than a block */
        CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 1, 1));
    }
    tu_ctx_free(cpu);
}
END_TEST

START_TEST(test_resample) {
    dc_ctx *cpu = tu_ctx();
    op_arg a = {.op = DC_OP_UPSAMPLE2X};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 3, 5, 7));
    a.op = DC_OP_CONCAT;
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 3, 5), LEAF(cpu, 2, 3, 4));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 2, 4, 4, 64), DATA(cpu, 2, 4, 4, 32));
    a = (op_arg){.op = DC_OP_SLICE, .i0 = 2, .i1 = 5};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 11));
    a.i0 = 0, a.i1 = 11;
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 2, 11));
    tu_ctx_free(cpu);
}
END_TEST

START_TEST(test_misc) {
    dc_ctx *cpu = tu_ctx();
    cpu->seed = tu_next();
    op_arg a = {.op = DC_OP_DROPOUT, .f0 = 0.3f}; /* the same mask: Philox on both */
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 5, 7, 9));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 1, 3)); /* less than one Philox block */
    a = (op_arg){.op = DC_OP_EMBEDDING};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 10, 6), indices(cpu, DC_SHAPE(3, 4), 10));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 65), indices(cpu, DC_SHAPE(40), 3)); /* repeats */
    for (int flip = 0; flip < 2; flip++)
        for (int dim = 32; dim <= 33; dim++) {
            dc_tensor *t = dc_new(cpu, DC_F32, DC_SHAPE(5));
            for (int i = 0; i < 5; i++)
                ((float *)t->data)[i] = (float)(tu_next() % 1000);
            /* angles up to ~1000 rad: a last-bit difference of exp there moves sin by ~6e-5 */
            a = (op_arg){.op = DC_OP_TIMESTEP_EMBEDDING, .i0 = dim, .b0 = flip, .f0 = (float)flip};
            CHECK(DC_MATH_F32, 2e-4, a, t);
            CHECK(DC_MATH_F32, 2e-4, a, indices(cpu, DC_SHAPE(7), 1000));
        }
    for (int flip = 0; flip < 2; flip++) { /* noise levels in (0, 80], weights ~ 16 N(0, 1) */
        dc_tensor *t = dc_new(cpu, DC_F32, DC_SHAPE(5)), *w = dc_new(cpu, DC_F32, DC_SHAPE(12));
        dc_tensor *steps = dc_new(cpu, DC_I32, DC_SHAPE(7)); /* log needs them positive */
        for (int i = 0; i < 7; i++)
            ((int32_t *)steps->data)[i] = (int32_t)(1 + tu_next() % 1000);
        for (int i = 0; i < 5; i++)
            ((float *)t->data)[i] = (float)tu_uniform(0.002, 80);
        for (int k = 0; k < 12; k++)
            ((float *)w->data)[k] = (float)(16 * tu_normal());
        a = (op_arg){.op = DC_OP_FOURIER_EMBEDDING, .b0 = flip};
        CHECK(DC_MATH_F32, 1e-5, a, t, w);
        CHECK(DC_MATH_F32, 1e-5, a, steps, w);
    }
    a = (op_arg){.op = DC_OP_MSE_LOSS};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 4, 3, 5, 2), LEAF(cpu, 4, 3, 5, 2), NULL);
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 1000), DATA(cpu, 3, 1000), LEAF(cpu, 3));
    a = (op_arg){.op = DC_OP_CROSS_ENTROPY};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 7, 10), indices(cpu, DC_SHAPE(7), 10));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 300, 3), indices(cpu, DC_SHAPE(300), 3));
    a = (op_arg){.op = DC_OP_CROSS_ENTROPY, .b0 = true, .f0 = 0.1f}; /* a captioner's: long rows, some ignored */
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 20, 3001), some_ignored(indices(cpu, DC_SHAPE(20), 3001)));
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 300, 7), some_ignored(indices(cpu, DC_SHAPE(300), 7)));
    tu_ctx_free(cpu);
}
END_TEST

START_TEST(test_diffusion_ops) {
    dc_noise_schedule s;
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    ck_assert_msg(dc_noise_schedule_init(&s, &c) == 0, "%s", dc_error());
    dc_ctx *cpu = tu_ctx();
    op_arg a = {.op = DC_OP_Q_SAMPLE, .sched = &s};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 3, 4, 5, 2), LEAF(cpu, 3, 4, 5, 2),
          indices(cpu, DC_SHAPE(3), s.T));
    for (int p = 0; p < DC_PRED_COUNT; p++)
        for (int g = 0; g < 2; g++) {
            a = (op_arg){.op = DC_OP_DIFFUSION_LOSS, .sched = &s, .pred = (dc_prediction_type)p,
                         .f0 = g ? 5.0f : 0.0f};
            CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 4, 3, 7, 3), LEAF(cpu, 4, 3, 7, 3),
                  LEAF(cpu, 4, 3, 7, 3), indices(cpu, DC_SHAPE(4), s.T));
        }
    /* the per-sample losses reach the caller's host array */
    dc_ctx *gpu = gpu_ctx(DC_MATH_F32);
    dc_tensor *x0 = DATA(cpu, 2, 9), *noise = DATA(cpu, 2, 9), *pred = DATA(cpu, 2, 9);
    dc_tensor *t = indices(cpu, DC_SHAPE(2), s.T);
    double want[2], got[2];
    ck_assert_ptr_nonnull(dc_diffusion_loss(cpu, pred, x0, noise, t, &s, DC_PRED_EPSILON, 0, want));
    ck_assert_ptr_nonnull(dc_diffusion_loss(gpu, dc_clone(gpu, pred), dc_clone(gpu, x0),
                                            dc_clone(gpu, noise), dc_clone(gpu, t), &s,
                                            DC_PRED_EPSILON, 0, got));
    for (int i = 0; i < 2; i++)
        ck_assert_double_eq_tol(got[i], want[i], 1e-6 * fabs(want[i]));
    gpu_ctx_free(gpu);
    tu_ctx_free(cpu);
    dc_noise_schedule_free(&s);
}
END_TEST

/* Whether dc_q_sample of (x0, noise, t) fails on ctx with "q_sample: <want>". */
static void assert_timestep_error(dc_ctx *ctx, dc_tensor *x0, dc_tensor *noise, dc_tensor *t,
                                  const dc_noise_schedule *s, const char *want) {
    ck_assert_ptr_null(dc_q_sample(ctx, x0, noise, t, s));
    ck_assert_msg(strstr(dc_error(), want), "want \"%s\", got \"%s\"", want, dc_error());
}

/* Timesteps on the host for a GPU context (checked there, then copied): the
 * same results as on the CPU; a timestep outside the schedule is the op's
 * error wherever t lives, and the device is left healthy. */
START_TEST(test_host_timesteps) {
    dc_noise_schedule s;
    dc_noise_schedule_config c = dc_noise_schedule_default_config();
    ck_assert_msg(dc_noise_schedule_init(&s, &c) == 0, "%s", dc_error());
    dc_ctx *cpu = tu_ctx(), *gpu = gpu_ctx(DC_MATH_F32);
    dc_tensor *x0 = DATA(cpu, 3, 4, 5, 2), *noise = DATA(cpu, 3, 4, 5, 2);
    dc_tensor *pred = DATA(cpu, 3, 4, 5, 2), *t = indices(cpu, DC_SHAPE(3), s.T);
    dc_tensor *gx0 = dc_clone(gpu, x0), *gnoise = dc_clone(gpu, noise);
    dc_tensor *want = dc_q_sample(cpu, x0, noise, t, &s);
    dc_tensor *got = dc_q_sample(gpu, gx0, gnoise, t, &s);
    ck_assert_msg(want && got, "%s", dc_error());
    float *h = host_copy(got);
    assert_near(h, want->data, want->numel, TOL_F32, "q_sample, host t", "forward");
    free(h);
    double want_mse[3], got_mse[3];
    want = dc_diffusion_loss(cpu, pred, x0, noise, t, &s, DC_PRED_V_PREDICTION, 5.0f, want_mse);
    got = dc_diffusion_loss(gpu, dc_clone(gpu, pred), gx0, gnoise, t, &s, DC_PRED_V_PREDICTION,
                            5.0f, got_mse);
    ck_assert_msg(want && got, "%s", dc_error());
    h = host_copy(got);
    assert_near(h, want->data, 1, TOL_F32, "diffusion_loss, host t", "loss");
    free(h);
    for (int i = 0; i < 3; i++)
        ck_assert_double_eq_tol(got_mse[i], want_mse[i], 1e-6 * fabs(want_mse[i]));
    const int32_t bad[2] = {(int32_t)s.T, -1};
    for (int k = 0; k < 2; k++)
        for (int on_gpu = 0; on_gpu < 2; on_gpu++) {
            ((int32_t *)t->data)[1] = bad[k];
            dc_ctx_reset(gpu);
            dc_tensor *tt = on_gpu ? dc_clone(gpu, t) : t;
            char msg[128];
            snprintf(msg, sizeof msg, "q_sample: t[1] = %d is outside [0, %lld)", bad[k],
                     (long long)s.T);
            assert_timestep_error(gpu, dc_clone(gpu, x0), dc_clone(gpu, noise), tt, &s, msg);
            ck_assert(!dc_device_failed(0));
        }
    gpu_ctx_free(gpu);
    tu_ctx_free(cpu);
    dc_noise_schedule_free(&s);
}
END_TEST

/* Shapes of a small UNet's inner blocks: grids past one block per element
 * group, many rows per softmax. */
START_TEST(test_unet_shapes) {
    dc_ctx *cpu = tu_ctx();
    op_arg a = {.op = DC_OP_CONV2D, .i0 = 1, .i1 = 1};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 4, 32, 32, 64), LEAF(cpu, 64, 3, 3, 64),
          LEAF(cpu, 64));
    a = (op_arg){.op = DC_OP_GROUP_NORM, .i0 = 32};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 4, 32, 32, 128), LEAF(cpu, 128), LEAF(cpu, 128));
    a = (op_arg){.op = DC_OP_ADD};
    CHECK(DC_MATH_F32, TOL_F32, a, LEAF(cpu, 4, 32, 32, 128), LEAF(cpu, 4, 1, 1, 128));
    tu_ctx_free(cpu);
}
END_TEST

/* ---- randomness and the optimizer, kernel against kernel ---- */

/* A device copy of n host floats (freed with dc_device_free). */
static float *upload(const float *h, int64_t n) {
    float *d = dc_device_alloc(0, (size_t)n * sizeof *d, "test buffer");
    ck_assert_msg(d != NULL, "%s", dc_error());
    ck_assert(dc_memcpy(d, 0, h, DC_CPU, (size_t)n * sizeof *d) == 0);
    return d;
}

static float *download(const float *d, int64_t n) {
    float *h = malloc((size_t)n * sizeof *h);
    ck_assert(dc_memcpy(h, DC_CPU, d, 0, (size_t)n * sizeof *h) == 0);
    return h;
}

START_TEST(test_philox) {
    cuda_select(0);
    const int64_t n = 1001; /* not a multiple of 4, from an offset inside a block */
    uint64_t seed = tu_next(), stream = tu_next() % 1000, offset = 3;
    float *want = malloc(n * sizeof *want), *d = dc_device_alloc(0, n * sizeof *d, "test");
    ck_assert_ptr_nonnull(d);
    dc_fill_uniform(want, n, seed, stream, offset);
    cuda_fill_uniform(d, n, seed, stream, offset);
    float *got = download(d, n);
    ck_assert_msg(memcmp(got, want, n * sizeof *got) == 0, "uniforms differ (seed %llu)",
                  (unsigned long long)seed);
    free(got);
    dc_fill_normal(want, n, seed, stream, offset);
    cuda_fill_normal(d, n, seed, stream, offset);
    got = download(d, n);
    for (int64_t i = 0; i < n; i++) /* logf, sinf, cosf: last-place differences only */
        ck_assert_msg(fabsf(got[i] - want[i]) <= 4e-6f * (1 + fabsf(want[i])),
                      "normal %lld: GPU %.9g, CPU %.9g", (long long)i, got[i], want[i]);
    free(got);
    int32_t *ts = dc_device_alloc(0, n * sizeof *ts, "test"), tw[1001], tg[1001];
    ck_assert_ptr_nonnull(ts);
    cpu_sample_timesteps(tw, n, 1000, seed, stream, offset);
    cuda_sample_timesteps(ts, n, 1000, seed, stream, offset);
    ck_assert(dc_memcpy(tg, DC_CPU, ts, 0, sizeof tg) == 0);
    ck_assert(memcmp(tg, tw, sizeof tg) == 0);
    ck_assert_msg(!dc_device_failed(0), "%s", dc_error());
    dc_device_free(0, ts);
    dc_device_free(0, d);
    free(want);
}
END_TEST

static void randn_fill(float *x, int64_t n, double scale) {
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(scale * tu_normal());
}

START_TEST(test_optimizer) {
    cuda_select(0);
    const int64_t n = 100003;
    float *p = malloc(n * 4), *g = malloc(n * 4), *m = calloc(n, 4), *v = calloc(n, 4);
    randn_fill(p, n, 1);
    float *dp = upload(p, n), *dm = upload(m, n), *dv = upload(v, n), *dg = NULL;
    for (int step = 1; step <= 3; step++) {
        randn_fill(g, n, 1e-2);
        dg = upload(g, n);
        cpu_adamw_args a = {.decay_mul = 1 - 1e-3f * 1e-2f, .beta1 = 0.9f,
                            .one_minus_beta1 = 0.1f, .beta2 = 0.999f, .one_minus_beta2 = 1e-3f,
                            .bc2_sqrt = (float)sqrt(1 - pow(0.999, step)), .eps = 1e-8f,
                            .step_size = (float)(1e-3 / (1 - pow(0.9, step)))};
        cpu_adamw_step(p, g, m, v, n, &a);
        cuda_adamw_step(dp, dg, dm, dv, n, &a);
        dc_device_free(0, dg);
    }
    float *hp = download(dp, n), *hm = download(dm, n), *hv = download(dv, n);
    assert_near(hp, p, n, 1e-6, "adamw", "parameters");
    assert_near(hm, m, n, 1e-6, "adamw", "first moment");
    assert_near(hv, v, n, 1e-6, "adamw", "second moment");
    /* the gradient norm, clipping's scale, the EMA */
    randn_fill(g, n, 1);
    dg = upload(g, n);
    double want = cpu_sum_squares(g, n), got = cuda_sum_squares(dg, n);
    ck_assert_msg(fabs(got - want) <= 1e-10 * want, "sum of squares GPU %.17g CPU %.17g", got,
                  want);
    cpu_scale(g, n, 0.37f);
    cuda_scale(dg, n, 0.37f);
    cpu_ema_update(p, g, n, 0.01f);
    cuda_ema_update(dp, dg, n, 0.01f);
    free(hp);
    hp = download(dp, n);
    assert_near(hp, p, n, 1e-6, "ema", "shadow");
    ck_assert_msg(!dc_device_failed(0), "%s", dc_error());
    dc_device_free(0, dp), dc_device_free(0, dm), dc_device_free(0, dv), dc_device_free(0, dg);
    free(p), free(g), free(m), free(v), free(hp), free(hm), free(hv);
}
END_TEST

/* ---- gradient checkpointing ---- */

/* x * sum(x): the output lands 64 bytes above the checkpoint's mark, so
 * giving the temporaries back moves it down in 63 pieces (no memmove on a GPU). */
static dc_tensor *scaled_by_sum(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    (void)args;
    return dc_mul(ctx, in[0], dc_sum(ctx, in[0]));
}

/* dc_checkpoint on a GPU: its temporaries given back (the output moved
 * down to the mark), the output and the gradient of the recomputation the CPU's. */
START_TEST(test_checkpoint) {
    dc_ctx *cpu = tu_ctx(), *gpu = gpu_ctx(DC_MATH_F32);
    dc_tensor *xc = tu_leaf(cpu, DC_SHAPE(50, 20)), *xg = dc_clone(gpu, xc);
    ck_assert_ptr_nonnull(xg);
    xg->requires_grad = true;
    dc_tensor *yc = dc_checkpoint(cpu, scaled_by_sum, NULL, 0, 1, (dc_tensor *[]){xc});
    size_t mark = dc_mark(gpu);
    dc_tensor *yg = dc_checkpoint(gpu, scaled_by_sum, NULL, 0, 1, (dc_tensor *[]){xg});
    ck_assert_msg(yc && yg, "%s", dc_error());
    ck_assert_uint_eq(dc_mark(gpu) - mark, 4032); /* 50 x 20 floats, 64-byte aligned */
    float *h = host_copy(yg);
    assert_near(h, yc->data, yc->numel, TOL_F32, "checkpoint", "output");
    free(h);
    ck_assert_msg(dc_backward(cpu, dc_sum(cpu, yc)) == 0 && dc_backward(gpu, dc_sum(gpu, yg)) == 0, "%s",
                  dc_error());
    h = host_copy(xg->grad);
    assert_near(h, xc->grad->data, xc->numel, TOL_F32, "checkpoint", "gradient");
    free(h);
    gpu_ctx_free(gpu);
    tu_ctx_free(cpu);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_out_of_memory) {
    dc_arena a;
    ck_assert_int_eq(dc_arena_init(&a, "activations", 0, (size_t)1 << 50), -1);
    const char *e = dc_error();
    ck_assert_msg(strstr(e, "activations arena: out of GPU memory on cuda:0") &&
                      strstr(e, "1125899906842624 bytes") && strstr(e, "MiB free of"),
                  "got \"%s\"", e);
    ck_assert(!dc_device_failed(0)); /* not sticky: the device still works */
    dc_ctx *gpu = gpu_ctx(DC_MATH_F32);
    ck_assert_ptr_nonnull(dc_silu(gpu, dc_new(gpu, DC_F32, DC_SHAPE(4))));
    gpu_ctx_free(gpu);
}
END_TEST

START_TEST(test_sticky_error) {
    dc_ctx *gpu = gpu_ctx(DC_MATH_F32);
    dc_tensor *x = dc_new(gpu, DC_F32, DC_SHAPE(8));
    ck_assert_int_eq(dc_memset((void *)(uintptr_t)16, 0, 0, 64), -1); /* not device memory */
    const char *e = dc_error();
    ck_assert_msg(strstr(e, "CUDA device 0: ") && strstr(e, "memory.cu:") &&
                      strstr(e, "cudaMemsetAsync"),
                  "got \"%s\"", e);
    ck_assert(dc_device_failed(0));
    ck_assert_int_eq(dc_ctx_status(gpu), -1);
    ck_assert_ptr_null(dc_silu(gpu, x)); /* the ops see it */
    ck_assert_msg(strstr(dc_error(), "cudaMemsetAsync"), "first message kept: %s", dc_error());
    dc_ctx_reset(gpu);
    ck_assert(!dc_device_failed(0));
    x = dc_new(gpu, DC_F32, DC_SHAPE(8));
    ck_assert_ptr_nonnull(dc_silu(gpu, x));
    gpu_ctx_free(gpu);
}
END_TEST

START_TEST(test_embedding_error) {
    dc_ctx *gpu = gpu_ctx(DC_MATH_F32);
    int32_t idx[5] = {1, 2, 12, 0, -1};
    dc_tensor *table = dc_new(gpu, DC_F32, DC_SHAPE(10, 3));
    dc_tensor *ix = dc_from_host(gpu, DC_I32, DC_SHAPE(5), idx);
    ck_assert_ptr_null(dc_embedding(gpu, table, ix));
    ck_assert_msg(strstr(dc_error(), "embedding: index 12 at position 2 is outside [0, 10)"),
                  "got \"%s\"", dc_error());
    gpu_ctx_free(gpu);
}
END_TEST

START_TEST(test_device_names) {
    int d = -2;
    ck_assert_int_eq(dc_device_resolve("cuda", &d), 0);
    ck_assert_int_eq(d, 0);
    ck_assert_int_eq(dc_device_resolve("auto", &d), 0);
    ck_assert_int_eq(d, 0);
    ck_assert_int_eq(dc_device_resolve("cuda:99", &d), -1);
    ck_assert_msg(strstr(dc_error(), "device 'cuda:99': only"), "%s", dc_error());
}
END_TEST

int main(void) {
    if (tu_cuda_device_count() == 0) {
        printf("test_cuda_ops: no CUDA GPU: skipped\n");
        return 77;
    }
    Suite *s = suite_create("cuda_ops");
    TCase *tc = tu_tcase(s, "gpu", 300);
    tcase_add_test(tc, test_elementwise);
    tcase_add_test(tc, test_products_f32);
    tcase_add_test(tc, test_products_tf32);
    tcase_add_test(tc, test_products_bf16);
    tcase_add_test(tc, test_gemm_plans);
    tcase_add_test(tc, test_norms);
    tcase_add_test(tc, test_activations);
    tcase_add_test(tc, test_resample);
    tcase_add_test(tc, test_misc);
    tcase_add_test(tc, test_diffusion_ops);
    tcase_add_test(tc, test_host_timesteps);
    tcase_add_test(tc, test_unet_shapes);
    tcase_add_test(tc, test_philox);
    tcase_add_test(tc, test_optimizer);
    tcase_add_test(tc, test_checkpoint);
    tcase_add_test(tc, test_out_of_memory);
    tcase_add_test(tc, test_sticky_error);
    tcase_add_test(tc, test_embedding_error);
    tcase_add_test(tc, test_device_names);
    return tu_run(s);
}

#endif
