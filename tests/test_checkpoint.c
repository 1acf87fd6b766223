/* Gradient checkpointing (dc_checkpoint): the same loss and gradients as
 * the plain function, bit for bit, with dropout, nested checkpoints,
 * tensors reached through args, and the grad_ready hook; less memory held;
 * no tape, empty functions, a second backward, and refused arguments. */
#include "testutil.h"

#include "autograd/error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define C 24 /* channels */
#define ROWS 40

/* A small residual MLP block: x + (linear2(dropout(gelu(linear1(x)))) * s). */
typedef struct {
    dc_tensor *w1, *b1, *w2; /* [4C, C], [4C], [C, 4C] */
    float p;                 /* dropout */
} block;

static dc_tensor *block_fn(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    const block *b = args;
    dc_tensor *h = dc_dropout(ctx, dc_gelu(ctx, dc_linear(ctx, in[0], b->w1, b->b1)), b->p);
    h = dc_linear(ctx, h, b->w2, NULL);
    if (in[1]) /* a scale [C], when given */
        h = dc_mul(ctx, h, in[1]);
    return dc_add(ctx, h, in[0]);
}

/* Two blocks, each its own checkpoint inside this one (or plain). */
typedef struct {
    const block *b;
    bool inner;
} pair;

static dc_tensor *run_block(dc_ctx *ctx, const block *b, dc_tensor *x, dc_tensor *s, bool ckpt) {
    return ckpt ? dc_checkpoint(ctx, block_fn, b, sizeof *b, 2, (dc_tensor *[]){x, s})
                : block_fn(ctx, b, (dc_tensor *[]){x, s});
}

static dc_tensor *pair_fn(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    const pair *p = args;
    return run_block(ctx, &p->b[1], run_block(ctx, &p->b[0], in[0], in[1], p->inner), in[1], p->inner);
}

/* The network: 0 plain, 1 each block a checkpoint, 2 pairs of blocks as
 * checkpoints that hold a checkpoint each. b[0]'s weights are read by the
 * last block again, outside any checkpoint too: one parameter, three uses. */
typedef struct {
    dc_params ps;
    block b[4];
    dc_tensor *s, *x, *target; /* s: the scale, a leaf requiring grad without a gradient buffer */
    dc_tensor *bias;           /* b[2].b1: such a leaf too, reached through args */
} net;

static void net_init(net *n, dc_ctx *ctx, float p) {
    dc_params_init(&n->ps);
    for (int i = 0; i < 3; i++) {
        char name[16];
        snprintf(name, sizeof name, "b%d", i);
        n->b[i] = (block){dc_params_add(&n->ps, name, "w1", DC_SHAPE(4 * C, C), DC_LAYOUT_PLAIN, DC_INIT_NORMAL, 0.3f),
                          dc_params_add(&n->ps, name, "b1", DC_SHAPE(4 * C), DC_LAYOUT_PLAIN, DC_INIT_NORMAL, 0.3f),
                          dc_params_add(&n->ps, name, "w2", DC_SHAPE(C, 4 * C), DC_LAYOUT_PLAIN, DC_INIT_NORMAL, 0.2f),
                          p};
    }
    n->b[3] = n->b[0];
    ck_assert_msg(dc_params_alloc(&n->ps, tu_next()) == 0, "%s", dc_error());
    n->x = tu_randn(ctx, DC_SHAPE(ROWS, C));
    n->target = tu_randn(ctx, DC_SHAPE(ROWS, C));
    n->s = tu_randn(ctx, DC_SHAPE(C));
    n->b[2].b1 = n->bias = tu_randn(ctx, DC_SHAPE(4 * C));
}

/* The loss of one step, its gradients left in the parameters, x and s. */
static float step(dc_ctx *ctx, net *n, int mode) {
    n->x->grad = n->s->grad = n->bias->grad = NULL;
    n->x->requires_grad = n->s->requires_grad = n->bias->requires_grad = true;
    dc_tensor *h;
    if (mode == 2) {
        pair p0 = {n->b, true}, p1 = {n->b + 2, true};
        h = dc_checkpoint(ctx, pair_fn, &p0, sizeof p0, 2, (dc_tensor *[]){n->x, n->s});
        h = dc_checkpoint(ctx, pair_fn, &p1, sizeof p1, 2, (dc_tensor *[]){h, n->s});
    } else {
        h = n->x;
        for (int i = 0; i < 4; i++)
            h = run_block(ctx, &n->b[i], h, n->s, mode == 1);
    }
    h = dc_linear(ctx, dc_linear(ctx, h, n->b[0].w1, NULL), n->b[0].w2, NULL);
    dc_tensor *loss = dc_mse_loss(ctx, h, n->target, NULL);
    ck_assert_msg(loss && dc_backward(ctx, loss) == 0, "%s", dc_error());
    return *(float *)loss->data;
}

typedef struct {
    float loss, *dp, *dx, *ds, *db;
    size_t held;
} result;

static result run(dc_ctx *ctx, net *n, int mode, uint64_t seed) {
    size_t mark = dc_mark(ctx);
    ctx->seed = seed;
    ctx->rng_calls = 0;
    ctx->act_held = 0;
    ck_assert_int_eq(dc_params_zero_grad(&n->ps), 0);
    result r = {.loss = step(ctx, n, mode)};
    r.held = dc_act_held(ctx) - mark;
    r.dp = malloc(n->ps.total * sizeof(float));
    r.dx = malloc(dc_tensor_bytes(n->x));
    r.ds = malloc(dc_tensor_bytes(n->s));
    memcpy(r.dp, n->ps.grad, n->ps.total * sizeof(float));
    memcpy(r.dx, n->x->grad->data, dc_tensor_bytes(n->x));
    memcpy(r.ds, n->s->grad->data, dc_tensor_bytes(n->s));
    r.db = memcpy(malloc(dc_tensor_bytes(n->bias)), n->bias->grad->data, dc_tensor_bytes(n->bias));
    return r;
}

static void assert_same(const float *got, const float *want, size_t n, const char *what, int mode) {
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "mode %d: %s[%zu] %.9g, plain %.9g", mode, what, i,
                      (double)got[i], (double)want[i]);
}

static void result_free(result *r) { free(r->dp), free(r->dx), free(r->ds), free(r->db); }

/* Plain, checkpointed, nested: the same bits, dropout 0.2 drawn alike; the
 * nested checkpoints hold the least. */
START_TEST(test_same_gradients) {
    dc_ctx *ctx = tu_ctx();
    net n;
    net_init(&n, ctx, 0.2f);
    uint64_t seed = tu_next();
    result plain = run(ctx, &n, 0, seed);
    double sum = 0;
    for (size_t i = 0; i < n.ps.total; i++)
        sum += plain.dp[i] * plain.dp[i];
    ck_assert(sum > 0);
    for (int mode = 1; mode <= 2; mode++) {
        result r = run(ctx, &n, mode, seed);
        ck_assert_msg(r.loss == plain.loss, "mode %d: loss %.9g, plain %.9g", mode, (double)r.loss,
                      (double)plain.loss);
        assert_same(r.dp, plain.dp, n.ps.total, "parameter gradient", mode);
        assert_same(r.dx, plain.dx, ROWS * C, "x gradient", mode);
        assert_same(r.ds, plain.ds, C, "s gradient", mode);
        assert_same(r.db, plain.db, 4 * C, "gradient of the bias in args", mode);
        ck_assert_msg(r.held < plain.held, "mode %d holds %zu bytes, plain %zu", mode, r.held, plain.held);
        result_free(&r);
    }
    result other = run(ctx, &n, 1, seed + 1); /* dropout matters: another seed, another loss */
    ck_assert(other.loss != plain.loss);
    result_free(&other);
    result_free(&plain);
    dc_params_free(&n.ps);
    tu_ctx_free(ctx);
}
END_TEST

/* grad_ready: each parameter told once, after its last gradient arrived,
 * whether it is read inside one checkpoint, two, or outside too. */
typedef struct {
    net *n;
    int told[16];
    float *at[16]; /* the parameter's gradient when it was told */
} hook;

static int ready(void *user, dc_tensor *t) {
    hook *h = user;
    for (int i = 0; i < h->n->ps.n; i++)
        if (&h->n->ps.p[i]->value == t) {
            h->told[i]++;
            h->at[i] = malloc(dc_tensor_bytes(t));
            memcpy(h->at[i], h->n->ps.p[i]->grad.data, dc_tensor_bytes(t));
        }
    return 0;
}

START_TEST(test_grad_ready) {
    dc_ctx *ctx = tu_ctx();
    net n;
    net_init(&n, ctx, 0.0f);
    for (int mode = 0; mode <= 2; mode++) {
        hook h = {.n = &n};
        ctx->grad_ready = ready;
        ctx->grad_ready_user = &h;
        result r = run(ctx, &n, mode, 1);
        for (int i = 0; i < n.ps.n; i++) {
            const dc_param *p = n.ps.p[i];
            bool unused = !strcmp(p->name, "b2.b1"); /* the leaf n.bias took its place */
            ck_assert_msg(h.told[i] == !unused, "mode %d: %s told %d times", mode, p->name, h.told[i]);
            if (!unused)
                assert_same(h.at[i], p->grad.data, (size_t)p->value.numel, p->name, mode);
            free(h.at[i]);
        }
        ctx->grad_ready = NULL;
        result_free(&r);
    }
    dc_params_free(&n.ps);
    tu_ctx_free(ctx);
}
END_TEST

/* Without a tape: fn's output, nothing recorded, its temporaries given back. */
START_TEST(test_no_grad) {
    dc_ctx *ctx = tu_ctx();
    net n;
    net_init(&n, ctx, 0.0f);
    dc_set_grad_enabled(ctx, false);
    dc_tensor *plain = block_fn(ctx, &n.b[0], (dc_tensor *[]){n.x, n.s});
    size_t mark = dc_mark(ctx);
    dc_tensor *y = dc_checkpoint(ctx, block_fn, &n.b[0], sizeof n.b[0], 2, (dc_tensor *[]){n.x, n.s});
    ck_assert_msg(y != NULL, "%s", dc_error());
    ck_assert_uint_eq(dc_mark(ctx) - mark, 64 * ((dc_tensor_bytes(y) + 63) / 64));
    ck_assert_ptr_null(ctx->tape);
    ck_assert(!y->requires_grad);
    assert_same(y->data, plain->data, (size_t)y->numel, "output", 0);
    dc_params_free(&n.ps);
    tu_ctx_free(ctx);
}
END_TEST

/* x * sum(x): the output made 64 bytes above the mark, moved down over itself. */
static dc_tensor *scaled_by_sum(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    (void)args;
    return dc_mul(ctx, in[0], dc_sum(ctx, in[0]));
}

/* What is kept is the output alone, moved to the mark though it overlaps
 * where it was; its values and gradient (L = sum(x)^2: 2 sum(x) each) hold. */
START_TEST(test_output_moved_down) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_leaf(ctx, DC_SHAPE(50, 20));
    size_t mark = dc_mark(ctx);
    dc_tensor *y = dc_checkpoint(ctx, scaled_by_sum, NULL, 0, 1, (dc_tensor *[]){x});
    ck_assert_msg(y != NULL, "%s", dc_error());
    ck_assert_uint_eq(dc_mark(ctx) - mark, 4032);
    ck_assert_ptr_eq(y->data, ctx->act.base + mark);
    double sum = 0;
    for (int64_t i = 0; i < x->numel; i++)
        sum += ((float *)x->data)[i];
    for (int64_t i = 0; i < x->numel; i++)
        ck_assert_double_eq_tol(((float *)y->data)[i], ((float *)x->data)[i] * sum, 1e-4 * (1 + fabs(sum)));
    ck_assert_msg(dc_backward(ctx, dc_sum(ctx, y)) == 0, "%s", dc_error());
    for (int64_t i = 0; i < x->numel; i++)
        ck_assert_double_eq_tol(((float *)x->grad->data)[i], 2 * sum, 1e-4 * (1 + fabs(sum)));
    tu_ctx_free(ctx);
}
END_TEST

static dc_tensor *identity(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    (void)ctx, (void)args;
    return in[0];
}

static dc_tensor *constant(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    (void)args, (void)in;
    return dc_affine(ctx, dc_from_host(ctx, DC_F32, DC_SHAPE(3), (float[]){1, 2, 3}), 2.0f, 0.0f);
}

/* Functions that read nothing requiring grad record nothing; an identity is its input. */
START_TEST(test_empty) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_leaf(ctx, DC_SHAPE(5));
    ck_assert_ptr_eq(dc_checkpoint(ctx, identity, NULL, 0, 1, (dc_tensor *[]){x}), x);
    dc_tensor *k = dc_checkpoint(ctx, constant, NULL, 0, 0, NULL);
    ck_assert_msg(k != NULL, "%s", dc_error());
    ck_assert(!k->requires_grad);
    ck_assert_float_eq(((float *)k->data)[2], 6.0f);
    ck_assert_ptr_null(ctx->tape);
    tu_ctx_free(ctx);
}
END_TEST

/* A second backward over the consumed tape adds nothing; two steps without
 * a reset in between add up alike with and without checkpoints. */
START_TEST(test_backward_twice) {
    dc_ctx *ctx = tu_ctx();
    net n;
    net_init(&n, ctx, 0.1f);
    float *twice[2];
    for (int mode = 0; mode <= 1; mode++) {
        ctx->seed = 7;
        ctx->rng_calls = 0;
        ck_assert_int_eq(dc_params_zero_grad(&n.ps), 0);
        step(ctx, &n, mode);
        ck_assert_ptr_null(ctx->tape);
        float *once = malloc(n.ps.total * sizeof(float));
        memcpy(once, n.ps.grad, n.ps.total * sizeof(float));
        dc_tensor *loss = dc_sum(ctx, dc_checkpoint(ctx, block_fn, &n.b[0], sizeof n.b[0], 2,
                                                   (dc_tensor *[]){n.x, NULL}));
        ck_assert_msg(loss && dc_backward(ctx, loss) == 0, "%s", dc_error());
        ck_assert_msg(dc_backward(ctx, loss) == 0, "%s", dc_error()); /* the tape is spent */
        step(ctx, &n, mode);
        twice[mode] = malloc(n.ps.total * sizeof(float));
        memcpy(twice[mode], n.ps.grad, n.ps.total * sizeof(float));
        bool grew = false;
        for (size_t i = 0; i < n.ps.total; i++)
            grew |= twice[mode][i] != once[i];
        ck_assert(grew);
        free(once);
    }
    assert_same(twice[1], twice[0], n.ps.total, "gradient of two steps", 1);
    free(twice[0]), free(twice[1]);
    dc_params_free(&n.ps);
    tu_ctx_free(ctx);
}
END_TEST

/* Another shape on every run: the recomputation does not match. */
static dc_tensor *unstable(dc_ctx *ctx, const void *args, dc_tensor *const *in) {
    static int calls;
    (void)args;
    return dc_slice(ctx, in[0], 0, 1 + calls++ % 2);
}

START_TEST(test_refused) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_leaf(ctx, DC_SHAPE(4, 3));
    ck_assert_ptr_null(dc_checkpoint(ctx, identity, NULL, 0, 4, (dc_tensor *[]){x, x, x, x}));
    ck_assert_ptr_nonnull(strstr(dc_error(), "checkpoint: 4 inputs (at most 3)"));
    dc_ctx_reset(ctx);
    ck_assert_ptr_null(dc_checkpoint(ctx, NULL, NULL, 0, 1, (dc_tensor *[]){x}));
    ck_assert_ptr_nonnull(strstr(dc_error(), "function missing"));
    dc_ctx_reset(ctx);
    x = tu_leaf(ctx, DC_SHAPE(4, 3));
    dc_tensor *y = dc_checkpoint(ctx, unstable, NULL, 0, 1, (dc_tensor *[]){x});
    ck_assert_msg(y != NULL, "%s", dc_error());
    ck_assert_int_eq(dc_backward(ctx, dc_sum(ctx, y)), -1);
    ck_assert_ptr_nonnull(strstr(dc_error(), "checkpoint: the function gave another output when run again"));
    dc_ctx_reset(ctx); /* a failing op inside: NULL, the op's message */
    x = tu_leaf(ctx, DC_SHAPE(4, 3));
    block bad = {tu_leaf(ctx, DC_SHAPE(5, 7)), NULL, x, 0};
    ck_assert_ptr_null(dc_checkpoint(ctx, block_fn, &bad, sizeof bad, 1, (dc_tensor *[]){x}));
    ck_assert_ptr_nonnull(strstr(dc_error(), "linear"));
    tu_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("checkpoint");
    TCase *tc = tu_tcase(s, "checkpoint", 60);
    tcase_add_test(tc, test_same_gradients);
    tcase_add_test(tc, test_grad_ready);
    tcase_add_test(tc, test_no_grad);
    tcase_add_test(tc, test_output_moved_down);
    tcase_add_test(tc, test_empty);
    tcase_add_test(tc, test_backward_twice);
    tcase_add_test(tc, test_refused);
    return tu_run(s);
}
