/* End to end on the CPU: a small conv net (conv, group norm, SiLU, conv) built
 * from nn layers, trained with AdamW, warmup + cosine LR and gradient
 * clipping, must fit a fixed batch: the loss falls at least tenfold. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/nn.h"
#include "autograd/optim.h"

#include <math.h>
#include <stdio.h>

typedef struct {
    dc_nn_conv2d conv1, conv2;
    dc_nn_group_norm norm;
} tiny_net;

static dc_tensor *tiny_forward(dc_ctx *ctx, const tiny_net *m, dc_tensor *x) {
    dc_tensor *h = dc_nn_conv2d_forward(ctx, &m->conv1, x);
    h = dc_silu(ctx, dc_nn_group_norm_forward(ctx, &m->norm, h));
    return dc_nn_conv2d_forward(ctx, &m->conv2, h);
}

START_TEST(test_fits_a_batch) {
    dc_params ps;
    dc_params_init(&ps);
    tiny_net m;
    ck_assert_int_eq(dc_nn_conv2d_init(&m.conv1, &ps, "conv1", 3, 16, 3, 1, 1, true), 0);
    ck_assert_int_eq(dc_nn_group_norm_init(&m.norm, &ps, "norm", 4, 16, 1e-5f), 0);
    ck_assert_int_eq(dc_nn_conv2d_init(&m.conv2, &ps, "conv2", 16, 3, 3, 1, 1, true), 0);
    ck_assert_msg(dc_params_alloc(&ps, tu_next()) == 0, "%s", dc_error());
    dc_adamw opt;
    ck_assert_int_eq(dc_adamw_init(&opt, ps.total, 0.9, 0.999, 1e-8, 1e-4), 0);

    dc_ctx *ctx = tu_ctx();
    dc_arena data; /* the batch outlives the per-step reset of the context */
    ck_assert_int_eq(dc_arena_init(&data, "batch", DC_CPU, 1 << 20), 0);
    dc_tensor *x = dc_tensor_new(&data, DC_F32, DC_SHAPE(4, 8, 8, 3));
    dc_tensor *y = dc_tensor_new(&data, DC_F32, DC_SHAPE(4, 8, 8, 3));
    for (int64_t i = 0; i < x->numel; i++) {
        ((float *)x->data)[i] = (float)tu_normal();
        ((float *)y->data)[i] = (float)tu_normal() * 0.5f;
    }
    const int steps = 300;
    double first = 0, last = 0;
    for (int step = 0; step < steps; step++) {
        dc_ctx_reset(ctx);
        dc_params_zero_grad(&ps);
        dc_tensor *loss = dc_mse_loss(ctx, tiny_forward(ctx, &m, x), y, NULL);
        ck_assert_msg(dc_backward(ctx, loss) == 0, "%s", dc_error());
        double norm = dc_grad_clip_norm(ps.grad, ps.total, 1.0);
        ck_assert(isfinite(norm));
        dc_adamw_step(&opt, ps.data, ps.grad, dc_lr_at(DC_LR_COSINE, 2e-2, step, 20, steps));
        last = ((float *)loss->data)[0];
        if (step == 0)
            first = last;
    }
    fprintf(stderr, "loss %g -> %g\n", first, last);
    ck_assert_msg(last < first / 10, "loss %g -> %g: did not fall tenfold (seed %llu)", first, last,
                  (unsigned long long)tu_seed());
    tu_ctx_free(ctx);
    dc_arena_free(&data);
    dc_adamw_free(&opt);
    dc_params_free(&ps);
}
END_TEST

int main(void) {
    Suite *s = suite_create("train_tiny");
    TCase *tc = tu_tcase(s, "fit", 120);
    tcase_add_test(tc, test_fits_a_batch);
    return tu_run(s);
}
