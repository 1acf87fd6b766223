/* The parameter registry and layer declarations: names, flat allocation,
 * initial values, save and load with layout and dtype conversion, and the
 * errors a user meets loading the wrong file. Forward passes are the ops'
 * tests' business. */
#include "testutil.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/nn.h"
#include "autograd/ops.h"
#include "autograd/cpu/conv.h"
#include "autograd/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* A small model touching every layer kind; odd sizes throughout. */
typedef struct {
    dc_nn_conv2d conv_in;   /* 5 -> 8, 3x3 */
    dc_nn_linear lin;       /* 7 -> 6 */
    dc_nn_linear proj;      /* 6 -> 6, no bias */
    dc_nn_group_norm norm;  /* 8 channels, 2 groups */
    dc_nn_layer_norm ln;    /* 6 */
    dc_nn_embedding embed;  /* 11 x 3 */
} toy;

static void toy_declare(toy *m, dc_params *ps) {
    dc_params_init(ps);
    ck_assert_int_eq(dc_nn_conv2d_init(&m->conv_in, ps, "conv_in", 5, 8, 3, 1, 1, true), 0);
    ck_assert_int_eq(dc_nn_linear_init(&m->lin, ps, "time_embedding.linear_1", 7, 6, true), 0);
    ck_assert_int_eq(dc_nn_linear_init(&m->proj, ps, "proj", 6, 6, false), 0);
    ck_assert_int_eq(dc_nn_group_norm_init(&m->norm, ps, "norm", 2, 8, 1e-5f), 0);
    ck_assert_int_eq(dc_nn_layer_norm_init(&m->ln, ps, "ln", 6, 1e-6f), 0);
    ck_assert_int_eq(dc_nn_embedding_init(&m->embed, ps, "class_embedding", 11, 3), 0);
}

static const char *toy_names[] = {
    "conv_in.weight", "conv_in.bias", "time_embedding.linear_1.weight",
    "time_embedding.linear_1.bias", "proj.weight", "norm.weight", "norm.bias", "ln.weight",
    "ln.bias", "class_embedding.weight",
};
#define TOY_N 10

static void toy_alloc(toy *m, dc_params *ps, uint64_t seed) {
    toy_declare(m, ps);
    ck_assert_msg(dc_params_alloc(ps, seed) == 0, "%s", dc_error());
}

static float *param_data(const dc_params *ps, const char *name) {
    dc_param *p = dc_params_find(ps, name);
    ck_assert_msg(p != NULL, "no parameter %s", name);
    return p->value.data;
}

/* A fresh path in /tmp, removed by the caller. */
static void temp_path(char *buf, size_t n) {
    snprintf(buf, n, "/tmp/dc_test_nn_%d_%llu.safetensors", (int)getpid(),
             (unsigned long long)(tu_next() % 1000000007u));
}

START_TEST(test_declare_and_alloc) {
    toy m;
    dc_params ps;
    toy_declare(&m, &ps);
    ck_assert_int_eq(ps.n, TOY_N);
    for (int i = 0; i < TOY_N; i++)
        ck_assert_str_eq(ps.p[i]->name, toy_names[i]); /* declaration order */
    ck_assert_ptr_null(m.proj.bias);
    ck_assert_ptr_null(ps.data);
    /* shapes in memory layout; the conv's file layout differs */
    dc_param *w = dc_params_find(&ps, "conv_in.weight");
    ck_assert_ptr_eq(&w->value, m.conv_in.weight);
    int64_t want_mem[4] = {8, 3, 3, 5}, want_file[4] = {8, 5, 3, 3}, file[4];
    ck_assert_int_eq(w->value.ndim, 4);
    ck_assert(!memcmp(w->value.shape, want_mem, sizeof want_mem));
    dc_param_file_shape(w, file);
    ck_assert(!memcmp(file, want_file, sizeof want_file));
    ck_assert_int_eq(w->layout, DC_LAYOUT_CONV);
    ck_assert_int_eq(dc_params_find(&ps, "time_embedding.linear_1.weight")->value.shape[0], 6);
    ck_assert_int_eq(dc_params_find(&ps, "time_embedding.linear_1.weight")->value.shape[1], 7);
    ck_assert_ptr_null(dc_params_find(&ps, "conv_in"));
    ck_assert_ptr_null(dc_params_find(&ps, "proj.bias"));

    ck_assert_int_eq(dc_params_alloc(&ps, tu_next()), 0);
    ck_assert_int_eq(ps.device, DC_CPU);
    size_t end = 0;
    for (int i = 0; i < ps.n; i++) {
        dc_param *p = ps.p[i];
        ck_assert_uint_eq(p->offset % 16, 0);
        ck_assert_uint_ge(p->offset, end); /* in order, no overlap */
        end = p->offset + (size_t)p->value.numel;
        ck_assert_ptr_eq(p->value.data, ps.data + p->offset);
        ck_assert_ptr_eq(p->value.grad, &p->grad);
        ck_assert_ptr_eq(p->grad.data, ps.grad + p->offset);
        ck_assert(p->value.requires_grad && p->value.dtype == DC_F32 && p->value.device == DC_CPU);
        ck_assert(dc_same_shape(&p->value, &p->grad));
        ck_assert(((uintptr_t)p->value.data) % 64 == 0);
    }
    ck_assert_uint_eq(ps.total, (end + 15) / 16 * 16);
    /* padding is zero in both buffers; every gradient starts at zero */
    size_t next = 0;
    for (int i = 0; i <= ps.n; i++) {
        size_t start = i < ps.n ? ps.p[i]->offset : ps.total;
        for (size_t j = next; j < start; j++)
            ck_assert_msg(ps.data[j] == 0.0f, "padding at %zu is %g", j, ps.data[j]);
        next = i < ps.n ? start + (size_t)ps.p[i]->value.numel : next;
    }
    for (size_t j = 0; j < ps.total; j++)
        ck_assert(ps.grad[j] == 0.0f);
    /* zero_grad clears what backward accumulated */
    for (size_t j = 0; j < ps.total; j++)
        ps.grad[j] = 1.5f;
    ck_assert_int_eq(dc_params_zero_grad(&ps), 0);
    for (size_t j = 0; j < ps.total; j++)
        ck_assert(ps.grad[j] == 0.0f);
    dc_params_free(&ps);
    dc_params_free(&ps); /* idempotent */
}
END_TEST

/* ---- the backward pass's grad_ready hook (ops.h) with parameter spans ---- */

typedef struct {
    dc_params *ps;
    int told[TOY_N];         /* times each parameter was reported */
    int order[TOY_N], reports; /* when each was last reported */
    float *at_report;        /* [total] each reported gradient as it was when reported */
    bool fail;               /* answer the next report with an error */
} hook_log;

static int record_ready(void *user, dc_tensor *t) {
    hook_log *h = user;
    size_t off, len;
    ck_assert_msg(dc_params_span(h->ps, t, &off, &len), "a tensor that is not a parameter was reported");
    int i = 0;
    while (h->ps->p[i]->offset != off)
        i++;
    h->told[i]++;
    h->order[i] = h->reports++;
    memcpy(h->at_report + off, h->ps->grad + off, len * sizeof(float));
    return h->fail ? dc_fail("the hook says no") : 0;
}

/* proj is used twice, far apart; ln after them; conv_in, norm and the
 * embedding not at all. Each used parameter is reported once, when its
 * gradient already has its final value; unused ones never. */
START_TEST(test_grad_ready_hook) {
    toy m;
    dc_params ps;
    toy_declare(&m, &ps);
    ck_assert_int_eq(dc_params_alloc(&ps, tu_next()), 0);
    /* the spans tile the buffers, values and gradients alike; others are no parameter */
    size_t off, len, end = 0;
    for (int i = 0; i < ps.n; i++) {
        ck_assert(dc_params_span(&ps, &ps.p[i]->value, &off, &len));
        ck_assert_uint_eq(off, end);
        ck_assert_uint_ge(len, (size_t)ps.p[i]->value.numel);
        end = off + len;
        ck_assert(dc_params_span(&ps, &ps.p[i]->grad, &off, &len) && off == ps.p[i]->offset);
    }
    ck_assert_uint_eq(end, ps.total);
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = tu_randn(ctx, DC_SHAPE(3, 7));
    ck_assert(!dc_params_span(&ps, x, &off, &len));
    dc_tensor inside = ps.p[0]->value;
    inside.data = ps.data + 1; /* inside a parameter, not at its start */
    ck_assert(!dc_params_span(&ps, &inside, &off, &len));

    hook_log h = {.ps = &ps, .at_report = malloc(ps.total * sizeof(float))};
    ck_assert_ptr_nonnull(h.at_report);
    for (int pass = 0; pass < 2; pass++) { /* the second pass adds to the first's gradients */
        memset(h.told, 0, sizeof h.told);
        for (size_t j = 0; j < ps.total; j++)
            h.at_report[j] = NAN;
        ctx->grad_ready = record_ready;
        ctx->grad_ready_user = &h;
        dc_tensor *x = tu_randn(ctx, DC_SHAPE(3, 7)), *y = dc_nn_linear_forward(ctx, &m.lin, x);
        y = dc_nn_linear_forward(ctx, &m.proj, dc_gelu(ctx, y));
        y = dc_nn_layer_norm_forward(ctx, &m.ln, dc_nn_linear_forward(ctx, &m.proj, dc_silu(ctx, y)));
        ck_assert_int_eq(dc_backward(ctx, dc_sum(ctx, dc_mul(ctx, y, y))), 0);
        /* told as the walk goes, newest use first */
        int ln = 7, proj = 4, lin = 2; /* toy_names */
        ck_assert(h.order[ln] < h.order[proj] && h.order[proj] < h.order[lin]);
        for (int i = 0; i < ps.n; i++) {
            dc_param *p = ps.p[i];
            bool used = strncmp(p->name, "conv_in", 7) && strncmp(p->name, "norm", 4) &&
                        strncmp(p->name, "class_embedding", 15);
            ck_assert_msg(h.told[i] == (used ? 1 : 0), "%s reported %d times", p->name, h.told[i]);
            for (int64_t j = 0; used && j < p->value.numel; j++)
                ck_assert_msg(h.at_report[p->offset + j] == ps.grad[p->offset + j],
                              "%s[%lld] was %g when reported, %g at the end", p->name, (long long)j,
                              h.at_report[p->offset + j], ps.grad[p->offset + j]);
        }
        dc_ctx_reset(ctx);
    }
    /* an error of the hook fails the pass */
    h.fail = true;
    dc_tensor *y = dc_nn_linear_forward(ctx, &m.lin, tu_randn(ctx, DC_SHAPE(3, 7)));
    ck_assert_int_eq(dc_backward(ctx, dc_sum(ctx, y)), -1);
    ck_assert_msg(strstr(dc_error(), "the hook says no"), "%s", dc_error());
    free(h.at_report);
    tu_ctx_free(ctx);
    dc_params_free(&ps);
}
END_TEST

/* dc_params_alloc_on: the CPU gives dc_params_alloc's bits; a GPU that is
 * not there (this build or this machine has none) is an error that leaves
 * the parameters unallocated and ready for another try. The GPU itself is
 * test_cuda_train's. */
START_TEST(test_alloc_on_device) {
    uint64_t seed = tu_next();
    toy a, b;
    dc_params pa, pb;
    toy_alloc(&a, &pa, seed);
    toy_declare(&b, &pb);
    if (dc_device_count() == 0) {
        ck_assert_int_ne(dc_params_alloc_on(&pb, 0, seed), 0);
        ck_assert_msg(*dc_error(), "no message");
        ck_assert_ptr_null(pb.data);
        ck_assert_ptr_null(pb.grad);
        ck_assert_uint_eq(pb.total, 0);
        ck_assert_int_ne(dc_params_save(&pb, NULL, "/nonexistent", NULL, NULL, 0), 0);
    }
    ck_assert_msg(dc_params_alloc_on(&pb, DC_CPU, seed) == 0, "%s", dc_error());
    ck_assert_int_eq(pb.device, DC_CPU);
    ck_assert_uint_eq(pb.total, pa.total);
    ck_assert(!memcmp(pa.data, pb.data, pa.total * sizeof(float)));
    for (int i = 0; i < pb.n; i++)
        ck_assert(pb.p[i]->value.device == DC_CPU && pb.p[i]->grad.device == DC_CPU);
    dc_params_free(&pa);
    dc_params_free(&pb);
}
END_TEST

/* Mean and variance of x[n] in double. */
static void moments(const float *x, int64_t n, double *mean, double *var) {
    double s = 0, ss = 0;
    for (int64_t i = 0; i < n; i++)
        s += x[i];
    *mean = s / (double)n;
    for (int64_t i = 0; i < n; i++)
        ss += (x[i] - *mean) * (x[i] - *mean);
    *var = ss / (double)n;
}

static void check_uniform(const dc_tensor *t, double bound, const char *what) {
    const float *x = t->data;
    for (int64_t i = 0; i < t->numel; i++)
        ck_assert_msg(x[i] >= -bound && x[i] < bound, "%s[%lld] = %g outside +-%g", what,
                      (long long)i, x[i], bound);
    double mean, var, n = (double)t->numel, v = bound * bound / 3;
    moments(x, t->numel, &mean, &var);
    /* 5 standard errors: a broken generator fails, a good one essentially never */
    ck_assert_msg(fabs(mean) < 5 * sqrt(v / n), "%s: mean %g", what, mean);
    ck_assert_msg(fabs(var - v) < 5 * sqrt(0.8 * v * v / n), "%s: variance %g, want %g", what, var, v);
}

/* On the CPU the gradient buffer of a freshly allocated model is zero without
 * being touched: inference never makes its pages resident. */
START_TEST(test_grad_pages_untouched) {
    dc_params ps;
    dc_params_init(&ps);
    ck_assert_ptr_nonnull(dc_params_add(&ps, NULL, "w", DC_SHAPE(1024, 1024), DC_LAYOUT_PLAIN,
                                        DC_INIT_NORMAL, 1.0f));
    ck_assert_int_eq(dc_params_alloc(&ps, tu_next()), 0);
    long page = sysconf(_SC_PAGESIZE);
    size_t bytes = ps.total * sizeof(float), pages = (bytes + (size_t)page - 1) / (size_t)page;
    unsigned char *resident = malloc(pages);
    ck_assert_int_eq(mincore(ps.grad, bytes, resident), 0);
    size_t touched = 0;
    for (size_t i = 0; i < pages; i++)
        touched += resident[i] & 1;
    ck_assert_msg(touched == 0, "%zu of %zu gradient pages resident", touched, pages);
    for (size_t i = 0; i < ps.total; i += 4096) /* and they read as zeros */
        ck_assert(ps.grad[i] == 0.0f);
    free(resident);
    dc_params_free(&ps);
}
END_TEST

START_TEST(test_init_statistics) {
    dc_params ps;
    dc_params_init(&ps);
    dc_nn_conv2d conv;
    dc_nn_linear lin;
    dc_nn_group_norm gn;
    dc_nn_embedding emb;
    ck_assert_int_eq(dc_nn_conv2d_init(&conv, &ps, "c", 32, 64, 3, 2, 1, true), 0);
    ck_assert_int_eq(dc_nn_linear_init(&lin, &ps, "l", 129, 300, true), 0);
    ck_assert_int_eq(dc_nn_group_norm_init(&gn, &ps, "g", 8, 64, 1e-5f), 0);
    ck_assert_int_eq(dc_nn_embedding_init(&emb, &ps, "e", 250, 64), 0);
    ck_assert_int_eq(dc_params_alloc(&ps, tu_next()), 0);
    ck_assert_int_eq(conv.stride, 2);
    ck_assert_int_eq(conv.pad, 1);
    /* kaiming_uniform(a = sqrt(5)) and PyTorch's bias rule: +-1/sqrt(fan_in) */
    check_uniform(conv.weight, 1 / sqrt(32 * 9), "conv weight");
    check_uniform(lin.weight, 1 / sqrt(129), "linear weight");
    check_uniform(lin.bias, 1 / sqrt(129), "linear bias");
    const float *cb = conv.bias->data;
    for (int i = 0; i < 64; i++)
        ck_assert(fabs(cb[i]) <= 1 / sqrt(32 * 9));
    for (int i = 0; i < 64; i++)
        ck_assert(((float *)gn.weight->data)[i] == 1.0f && ((float *)gn.bias->data)[i] == 0.0f);
    ck_assert_int_eq(gn.groups, 8);
    double mean, var, n = (double)emb.weight->numel;
    moments(emb.weight->data, emb.weight->numel, &mean, &var);
    ck_assert_msg(fabs(mean) < 5 / sqrt(n), "embedding mean %g", mean);
    ck_assert_msg(fabs(var - 1) < 5 * sqrt(2 / n), "embedding variance %g", var);
    dc_params_free(&ps);
}
END_TEST

START_TEST(test_init_reproducible) {
    uint64_t seed = tu_next();
    toy a, b;
    dc_params pa, pb;
    toy_alloc(&a, &pa, seed);
    /* same seed, an extra parameter declared first: every name keeps its values */
    dc_params_init(&pb);
    ck_assert_ptr_nonnull(dc_params_add(&pb, NULL, "extra", DC_SHAPE(13), DC_LAYOUT_PLAIN,
                                        DC_INIT_UNIFORM, 1.0f));
    ck_assert_int_eq(dc_nn_conv2d_init(&b.conv_in, &pb, "conv_in", 5, 8, 3, 1, 1, true), 0);
    ck_assert_int_eq(dc_params_alloc(&pb, seed), 0);
    ck_assert(!memcmp(a.conv_in.weight->data, b.conv_in.weight->data, dc_tensor_bytes(a.conv_in.weight)));
    ck_assert(!memcmp(a.conv_in.bias->data, b.conv_in.bias->data, dc_tensor_bytes(a.conv_in.bias)));
    /* same shape, same bound, different names: different values */
    ck_assert(memcmp(a.conv_in.bias->data, a.lin.bias->data, 6 * sizeof(float)) != 0);
    dc_params_free(&pb);
    /* another seed: different values */
    toy c;
    dc_params pc;
    toy_alloc(&c, &pc, seed + 1);
    ck_assert(memcmp(a.conv_in.weight->data, c.conv_in.weight->data, dc_tensor_bytes(a.conv_in.weight)) != 0);
    dc_params_free(&pa);
    dc_params_free(&pc);
}
END_TEST

START_TEST(test_declaration_errors) {
    dc_params ps;
    dc_params_init(&ps);
    ck_assert_ptr_nonnull(dc_params_add(&ps, "a", "weight", DC_SHAPE(3, 4), DC_LAYOUT_PLAIN,
                                        DC_INIT_ZEROS, 0));
    ck_assert_ptr_null(dc_params_add(&ps, "a", "weight", DC_SHAPE(3, 4), DC_LAYOUT_PLAIN,
                                     DC_INIT_ZEROS, 0));
    ck_assert_msg(strstr(dc_error(), "parameter a.weight is declared twice"), "%s", dc_error());
    /* sticky: later declarations and the allocation fail, the first message stays */
    ck_assert_ptr_null(dc_params_add(&ps, "b", "weight", DC_SHAPE(2), DC_LAYOUT_PLAIN,
                                     DC_INIT_ZEROS, 0));
    ck_assert_int_ne(dc_params_alloc(&ps, 1), 0);
    ck_assert_msg(strstr(dc_error(), "a.weight is declared twice"), "%s", dc_error());
    dc_params_free(&ps);

    struct {
        int ndim;
        int64_t shape[4];
        dc_layout layout;
        const char *msg;
    } bad[] = {
        {2, {3, 0}, DC_LAYOUT_PLAIN, "parameter x.w has a dimension below 1"},
        {0, {0}, DC_LAYOUT_PLAIN, "parameter x.w needs 1 to 4 dimensions"},
        {2, {3, 3}, DC_LAYOUT_CONV, "parameter x.w has a conv layout but is not 4-D"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        dc_params_init(&ps);
        ck_assert_ptr_null(dc_params_add(&ps, "x", "w", bad[i].ndim, bad[i].shape, bad[i].layout,
                                         DC_INIT_ZEROS, 0));
        ck_assert_msg(strstr(dc_error(), bad[i].msg), "%s", dc_error());
        dc_params_free(&ps);
    }

    dc_nn_group_norm gn;
    dc_params_init(&ps);
    ck_assert_int_ne(dc_nn_group_norm_init(&gn, &ps, "norm1", 32, 48, 1e-5f), 0);
    ck_assert_msg(strstr(dc_error(), "group_norm norm1: 48 channels do not split into 32 groups"),
                  "%s", dc_error());
    dc_params_free(&ps);
    dc_nn_conv2d conv;
    dc_params_init(&ps);
    ck_assert_int_ne(dc_nn_conv2d_init(&conv, &ps, "down", 4, 4, 3, 0, 1, true), 0);
    ck_assert_msg(strstr(dc_error(), "conv2d down: stride 0"), "%s", dc_error());
    dc_params_free(&ps);

    /* nothing may join after allocation (the buffers are laid out) */
    dc_params_init(&ps);
    ck_assert_ptr_nonnull(dc_params_add(&ps, "", "w", DC_SHAPE(5), DC_LAYOUT_PLAIN, DC_INIT_ONES, 0));
    ck_assert_int_eq(dc_params_alloc(&ps, 1), 0);
    ck_assert_ptr_nonnull(dc_params_find(&ps, "w"));
    ck_assert_ptr_null(dc_params_add(&ps, "", "v", DC_SHAPE(5), DC_LAYOUT_PLAIN, DC_INIT_ONES, 0));
    ck_assert_msg(strstr(dc_error(), "parameter v declared after dc_params_alloc"), "%s", dc_error());
    ck_assert_int_ne(dc_params_alloc(&ps, 1), 0);
    dc_params_free(&ps);
}
END_TEST

/* Sizes from hostile shapes are computed with overflow checks: a product or
 * sum that wraps mod 2^64 must be an error, never a small size. */
START_TEST(test_sizes_overflow) {
    int64_t big = (int64_t)1 << 31;
    ck_assert_int_eq(dc_shape_numel(DC_SHAPE(1000000000, 1000000000)), 1000000000000000000);
    ck_assert_int_eq(dc_shape_numel(DC_SHAPE(10000000000, 10000000000)), -1);
    ck_assert_int_eq(dc_shape_numel(DC_SHAPE(big, big, big)), -1); /* 2^93: 0 mod 2^64 */
    ck_assert_int_eq(dc_shape_numel(DC_SHAPE(big, big, big, 0)), 0);
    ck_assert_int_eq(dc_shape_numel(DC_SHAPE(-2, -3)), -1);
    size_t bytes;
    ck_assert(!dc_shape_bytes(DC_SHAPE(big * big), DC_F32, &bytes)); /* 2^62 floats: 2^64 bytes */
    ck_assert(dc_shape_bytes(DC_SHAPE(big, big / 2), DC_F32, &bytes) && bytes == (size_t)1 << 63);

    /* tensors and arenas: wrapped sizes would hand out a few bytes */
    dc_arena a;
    ck_assert_int_eq(dc_arena_init(&a, "test", DC_CPU, 1 << 20), 0);
    ck_assert_ptr_null(dc_tensor_new(&a, DC_F32, DC_SHAPE(big, big, big)));
    ck_assert_ptr_null(dc_tensor_new(&a, DC_F32, DC_SHAPE(big * big)));
    ck_assert_msg(strstr(dc_error(), "more bytes than a size_t holds"), "%s", dc_error());
    ck_assert_ptr_null(dc_arena_alloc(&a, SIZE_MAX));
    ck_assert_ptr_null(dc_arena_alloc(&a, SIZE_MAX - 10));
    ck_assert_msg(strstr(dc_error(), "test arena: out of memory"), "%s", dc_error());
    ck_assert_int_eq(a.used, 0);
    ck_assert_int_ne(dc_arena_init(&a, "huge", DC_CPU, SIZE_MAX - 1), 0);
    dc_arena_free(&a);
    ck_assert_int_eq(dc_arena_init(&a, "test", DC_CPU, 1 << 20), 0);
    dc_arena_free(&a);

    /* a declaration past what memory can address */
    dc_params ps;
    dc_params_init(&ps);
    ck_assert_ptr_null(dc_params_add(&ps, "x", "w", DC_SHAPE(10000000000, 10000000000),
                                     DC_LAYOUT_PLAIN, DC_INIT_ZEROS, 0));
    ck_assert_msg(strstr(dc_error(), "parameter x.w has more elements than memory can address"), "%s",
                  dc_error());
    dc_params_free(&ps);
    /* 8 parameters of 2^61 floats each: 2^64 floats, 0 mod 2^64; 4 of them
     * are 2^63 floats, whose bytes wrap */
    for (int n = 4; n <= 8; n += 4) {
        dc_params_init(&ps);
        for (int i = 0; i < n; i++) {
            char name[16];
            snprintf(name, sizeof name, "w%d", i);
            ck_assert_ptr_nonnull(dc_params_add(&ps, "", name, DC_SHAPE(big, big / 2), DC_LAYOUT_PLAIN,
                                                DC_INIT_ZEROS, 0));
        }
        ck_assert_int_ne(dc_params_alloc(&ps, 1), 0);
        ck_assert_msg(strstr(dc_error(), "parameters: the model is too large"), "%s", dc_error());
        ck_assert_ptr_null(ps.data);
        dc_params_free(&ps);
    }
}
END_TEST

/* ---- save and load (need autograd/safetensors.c) ---- */

START_TEST(test_save_writes_pytorch_layout) {
    toy m;
    dc_params ps;
    toy_alloc(&m, &ps, tu_next());
    char path[128];
    temp_path(path, sizeof path);
    const char *keys[] = {"format"}, *values[] = {"pt"};
    ck_assert_msg(dc_params_save(&ps, NULL, path, keys, values, 1) == 0, "%s", dc_error());
    dc_st_file f;
    ck_assert_msg(dc_st_open(&f, path) == 0, "%s", dc_error());
    ck_assert_int_eq(f.n, TOY_N);
    ck_assert_str_eq(dc_st_meta(&f, "format"), "pt");
    /* the conv weight is OIHW: file[o][i][y][x] == memory[o][y][x][i] */
    const dc_st_tensor *t = dc_st_find(&f, "conv_in.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t->dtype_name, "F32");
    ck_assert_int_eq(t->ndim, 4);
    ck_assert(t->shape[0] == 8 && t->shape[1] == 5 && t->shape[2] == 3 && t->shape[3] == 3);
    const float *mem = m.conv_in.weight->data;
    for (int o = 0; o < 8; o++)
        for (int i = 0; i < 5; i++)
            for (int y = 0; y < 3; y++)
                for (int x = 0; x < 3; x++) {
                    float v;
                    memcpy(&v, (const char *)t->data + 4 * (((o * 5 + i) * 3 + y) * 3 + x), 4);
                    ck_assert(v == mem[((o * 3 + y) * 3 + x) * 5 + i]);
                }
    /* plain tensors are stored as they are */
    t = dc_st_find(&f, "time_embedding.linear_1.weight");
    ck_assert(t->ndim == 2 && t->shape[0] == 6 && t->shape[1] == 7);
    ck_assert(!memcmp(t->data, m.lin.weight->data, 42 * sizeof(float)));
    dc_st_close(&f);
    unlink(path);
    dc_params_free(&ps);
}
END_TEST

START_TEST(test_save_load_roundtrip) {
    toy a, b;
    dc_params pa, pb;
    uint64_t seed = tu_next();
    toy_alloc(&a, &pa, seed);
    toy_alloc(&b, &pb, seed + 7); /* other values, to be overwritten */
    char path[128];
    temp_path(path, sizeof path);
    ck_assert_msg(dc_params_save(&pa, NULL, path, NULL, NULL, 0) == 0, "%s", dc_error());
    ck_assert_msg(dc_params_load(&pb, NULL, path, NULL) == 0, "%s", dc_error());
    ck_assert_uint_eq(pa.total, pb.total);
    ck_assert(!memcmp(pa.data, pb.data, pa.total * sizeof(float)));
    /* an EMA-style buffer: save from it, load into another one; ps->data untouched */
    float *shadow = calloc(pa.total, sizeof *shadow), *back = calloc(pa.total, sizeof *back);
    for (int i = 0; i < pa.n; i++)
        for (int64_t j = 0; j < pa.p[i]->value.numel; j++)
            shadow[pa.p[i]->offset + j] = (float)tu_normal();
    ck_assert_msg(dc_params_save(&pa, shadow, path, NULL, NULL, 0) == 0, "%s", dc_error());
    ck_assert_msg(dc_params_load(&pb, back, path, NULL) == 0, "%s", dc_error());
    ck_assert(!memcmp(shadow, back, pa.total * sizeof(float)));
    ck_assert(!memcmp(pa.data, pb.data, pa.total * sizeof(float)));
    free(shadow);
    free(back);
    unlink(path);
    dc_params_free(&pa);
    dc_params_free(&pb);
}
END_TEST

/* One tensor of a hand-made file: f32 values converted to `dtype`. */
typedef struct {
    const char *name;
    dc_dtype dtype;
    int ndim;
    int64_t shape[4];
    void *data;
} file_tensor;

static void write_file(const char *path, file_tensor *ts, int n) {
    dc_st_tensor st[16];
    memset(st, 0, sizeof st);
    for (int i = 0; i < n; i++) {
        st[i].name = (char *)ts[i].name;
        st[i].dtype = (int)ts[i].dtype;
        snprintf(st[i].dtype_name, sizeof st[i].dtype_name, "%s",
                 ts[i].dtype == DC_F32 ? "F32" : ts[i].dtype == DC_BF16 ? "BF16"
                 : ts[i].dtype == DC_F16 ? "F16" : "I32");
        st[i].elem_size = dc_dtype_size(ts[i].dtype);
        st[i].ndim = ts[i].ndim;
        memcpy(st[i].shape, ts[i].shape, sizeof ts[i].shape);
        st[i].data = ts[i].data;
        st[i].nbytes = (size_t)dc_shape_numel(ts[i].ndim, ts[i].shape) * st[i].elem_size;
    }
    ck_assert_msg(dc_st_write(path, st, n, NULL, NULL, 0) == 0, "%s", dc_error());
}

/* The toy's parameters as a file would hold them, random, in `dtypes[i]`;
 * the f32 value of every element (after rounding to its dtype) in want[i]. */
static int toy_file(file_tensor *ts, float **want, const dc_params *ps, const dc_dtype *dtypes) {
    for (int i = 0; i < ps->n; i++) {
        const dc_param *p = ps->p[i];
        int64_t n = p->value.numel;
        ts[i].name = p->name;
        ts[i].dtype = dtypes[i];
        ts[i].ndim = p->value.ndim;
        dc_param_file_shape(p, ts[i].shape);
        ts[i].data = malloc((size_t)n * 4);
        float *f32 = malloc((size_t)n * sizeof *f32);
        for (int64_t j = 0; j < n; j++)
            f32[j] = (float)tu_normal();
        dc_convert(ts[i].data, dtypes[i], f32, DC_F32, (size_t)n);
        dc_convert(f32, DC_F32, ts[i].data, dtypes[i], (size_t)n);
        want[i] = f32;
    }
    return ps->n;
}

static void free_file(file_tensor *ts, float **want, int n) {
    for (int i = 0; i < n; i++) {
        free(ts[i].data);
        free(want[i]);
    }
}

START_TEST(test_load_converts_layout_and_dtype) {
    toy m;
    dc_params ps;
    toy_alloc(&m, &ps, tu_next());
    file_tensor ts[TOY_N];
    float *want[TOY_N];
    dc_dtype dtypes[TOY_N] = {DC_BF16, DC_F16, DC_F32, DC_BF16, DC_F16,
                              DC_F32,  DC_F32, DC_F16, DC_BF16, DC_F32};
    int n = toy_file(ts, want, &ps, dtypes);
    char path[128];
    temp_path(path, sizeof path);
    write_file(path, ts, n);
    ck_assert_msg(dc_params_load(&ps, NULL, path, NULL) == 0, "%s", dc_error());
    for (int k = 0; k < n; k++) {
        const dc_param *p = ps.p[k];
        const float *got = p->value.data;
        if (p->layout != DC_LAYOUT_CONV) {
            for (int64_t j = 0; j < p->value.numel; j++)
                ck_assert_msg(got[j] == want[k][j], "%s[%lld]", p->name, (long long)j);
            continue;
        }
        const int64_t *s = p->value.shape; /* [O, kh, kw, I] */
        for (int64_t o = 0; o < s[0]; o++)
            for (int64_t y = 0; y < s[1]; y++)
                for (int64_t x = 0; x < s[2]; x++)
                    for (int64_t i = 0; i < s[3]; i++)
                        ck_assert(got[((o * s[1] + y) * s[2] + x) * s[3] + i] ==
                                  want[k][((o * s[3] + i) * s[1] + y) * s[2] + x]);
    }
    free_file(ts, want, n);
    unlink(path);
    dc_params_free(&ps);
}
END_TEST

/* Load a broken variant of a good file; the error must name the problem and
 * leave every value as it was. */
static void expect_load_error(dc_params *ps, file_tensor *ts, int n, dc_rename_fn rename,
                              const char *msg) {
    char path[128];
    temp_path(path, sizeof path);
    write_file(path, ts, n);
    float *before = malloc(ps->total * sizeof *before);
    memcpy(before, ps->data, ps->total * sizeof *before);
    ck_assert_int_ne(dc_params_load(ps, NULL, path, rename), 0);
    ck_assert_msg(strstr(dc_error(), msg), "got \"%s\", want \"%s\"", dc_error(), msg);
    ck_assert_msg(strstr(dc_error(), path), "the message names the file: %s", dc_error());
    ck_assert(!memcmp(before, ps->data, ps->total * sizeof *before));
    free(before);
    unlink(path);
}

START_TEST(test_load_errors) {
    toy m;
    dc_params ps;
    toy_alloc(&m, &ps, tu_next());
    file_tensor ts[TOY_N + 1];
    float *want[TOY_N];
    dc_dtype dtypes[TOY_N];
    for (int i = 0; i < TOY_N; i++)
        dtypes[i] = DC_F32;
    int n = toy_file(ts, want, &ps, dtypes);
    /* the shape mismatch comes last, after tensors a careless loader would have copied */
    file_tensor keep = ts[0];
    ts[0] = ts[n - 1];
    ts[n - 1] = keep;
    ts[n - 1].shape[1] = 4;
    expect_load_error(&ps, ts, n, NULL, "conv_in.weight: file has [8, 4, 3, 3], model expects [8, 5, 3, 3]");
    ts[n - 1].shape[1] = 5;
    ts[n - 1].ndim = 3;
    expect_load_error(&ps, ts, n, NULL, "conv_in.weight: file has [8, 5, 3], model expects [8, 5, 3, 3]");
    ts[n - 1].ndim = 4;
    /* a parameter missing */
    expect_load_error(&ps, ts, n - 1, NULL, "1 parameter missing, the first conv_in.weight");
    expect_load_error(&ps, ts + 2, n - 2, NULL, "2 parameters missing, the first conv_in.bias");
    /* a tensor the model does not have */
    ts[n] = ts[1];
    ts[n].name = "mid_block.attentions.0.query.weight";
    expect_load_error(&ps, ts, n + 1, NULL, "mid_block.attentions.0.query.weight: the model has no such parameter");
    /* integers are not weights */
    int32_t ints[6] = {0};
    file_tensor bias = {"ln.bias", DC_I32, 1, {6}, ints};
    for (int i = 0; i < n; i++)
        if (!strcmp(ts[i].name, "ln.bias")) {
            keep = ts[i];
            ts[i] = bias;
            expect_load_error(&ps, ts, n, NULL, "ln.bias: dtype I32 cannot be loaded into an f32 parameter");
            ts[i] = keep;
        }
    /* the file itself must exist */
    ck_assert_int_ne(dc_params_load(&ps, NULL, "/nonexistent/model.safetensors", NULL), 0);
    ck_assert_msg(strstr(dc_error(), "/nonexistent/model.safetensors"), "%s", dc_error());
    free_file(ts, want, n);
    dc_params_free(&ps);

    dc_params_init(&ps); /* not yet allocated */
    ck_assert_int_ne(dc_params_load(&ps, NULL, "x.safetensors", NULL), 0);
    ck_assert_msg(strstr(dc_error(), "not allocated"), "%s", dc_error());
    ck_assert_int_ne(dc_params_save(&ps, NULL, "x.safetensors", NULL, NULL, 0), 0);
    dc_params_free(&ps);
}
END_TEST

/* The file's header against the declarations, before anything is
 * allocated; dc_params_alloc_load then gives what dc_params_load gives. */
START_TEST(test_check_before_alloc) {
    toy m, big;
    dc_params ps, pb;
    toy_alloc(&m, &ps, tu_next());
    char path[128];
    temp_path(path, sizeof path);
    ck_assert_msg(dc_params_save(&ps, NULL, path, NULL, NULL, 0) == 0, "%s", dc_error());
    toy_declare(&big, &pb);
    ck_assert_msg(dc_params_check_file(&pb, path, NULL) == 0, "%s", dc_error());
    ck_assert_msg(dc_params_alloc_load(&pb, DC_CPU, path, NULL) == 0, "%s", dc_error());
    ck_assert_uint_eq(pb.total, ps.total);
    ck_assert(!memcmp(pb.data, ps.data, ps.total * sizeof(float)));
    ck_assert_int_ne(dc_params_alloc_load(&pb, DC_CPU, path, NULL), 0);
    ck_assert_msg(strstr(dc_error(), "already allocated"), "%s", dc_error());
    dc_params_free(&pb);
    /* a model declared larger than its file: refused, nothing allocated */
    dc_params_init(&pb);
    ck_assert_int_eq(dc_nn_conv2d_init(&big.conv_in, &pb, "conv_in", 5, 1 << 20, 3, 1, 1, true), 0);
    ck_assert_int_ne(dc_params_check_file(&pb, path, NULL), 0);
    ck_assert_msg(strstr(dc_error(), "conv_in.weight: file has [8, 5, 3, 3], model expects [1048576, 5, 3, 3]") ||
                      strstr(dc_error(), "conv_in.bias: file has [8], model expects [1048576]"),
                  "%s", dc_error());
    ck_assert_int_ne(dc_params_alloc_load(&pb, DC_CPU, path, NULL), 0);
    ck_assert_msg(strstr(dc_error(), path), "%s", dc_error());
    ck_assert_ptr_null(pb.data);
    ck_assert_ptr_null(pb.values.base);
    dc_params_free(&pb);
    unlink(path);
    dc_params_free(&ps);
}
END_TEST

/* diffusers' older attention names, and a buffer that is no parameter. */
static const char *legacy_names(const char *name, char *buf, size_t size) {
    static const char *const from[] = {".query.", ".key.", ".value.", ".proj_attn."};
    static const char *const to[] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    if (strstr(name, "position_ids"))
        return NULL;
    for (int i = 0; i < 4; i++) {
        const char *at = strstr(name, from[i]);
        if (at) {
            snprintf(buf, size, "%.*s%s%s", (int)(at - name), name, to[i], at + strlen(from[i]));
            return buf;
        }
    }
    return name;
}

START_TEST(test_load_rename) {
    const char *model[] = {"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"};
    const char *file[] = {"attn.query", "attn.key", "attn.value", "attn.proj_attn"};
    dc_params ps;
    dc_params_init(&ps);
    dc_nn_linear l[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(dc_nn_linear_init(&l[i], &ps, model[i], 6, 6, true), 0);
    ck_assert_int_eq(dc_params_alloc(&ps, tu_next()), 0);
    file_tensor ts[9];
    float vals[9][36];
    char names[9][64];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof names[i], "%s.%s", file[i / 2], i % 2 ? "bias" : "weight");
        ts[i] = (file_tensor){names[i], DC_F32, i % 2 ? 1 : 2, {6, 6}, vals[i]};
        for (int j = 0; j < 36; j++)
            vals[i][j] = (float)tu_normal();
    }
    ts[8] = (file_tensor){"attn.position_ids", DC_F32, 1, {3}, vals[8]};
    char path[128];
    temp_path(path, sizeof path);
    write_file(path, ts, 9);
    ck_assert_msg(dc_params_load(&ps, NULL, path, legacy_names) == 0, "%s", dc_error());
    ck_assert(!memcmp(l[0].weight->data, vals[0], 36 * sizeof(float)));
    ck_assert(!memcmp(l[3].bias->data, vals[7], 6 * sizeof(float)));
    ck_assert(!memcmp(param_data(&ps, "attn.to_v.weight"), vals[4], 36 * sizeof(float)));
    /* two file names landing on one parameter */
    ts[8] = (file_tensor){"attn.to_q.weight", DC_F32, 2, {6, 6}, vals[8]};
    write_file(path, ts, 9);
    ck_assert_int_ne(dc_params_load(&ps, NULL, path, legacy_names), 0);
    ck_assert_msg(strstr(dc_error(), "attn.to_q.weight: given twice (attn.query.weight and attn.to_q.weight)"),
                  "%s", dc_error());
    /* without the hook the old names are unknown */
    write_file(path, ts, 8);
    ck_assert_int_ne(dc_params_load(&ps, NULL, path, NULL), 0);
    ck_assert_msg(strstr(dc_error(), "attn.query.weight: the model has no such parameter"), "%s", dc_error());
    unlink(path);
    dc_params_free(&ps);
}
END_TEST

/* The forward passes of a packing model: conv 5 -> 64 (3x3), linear 7 -> 128
 * over `rows` rows a sample (many: the pointwise kernels read the packed
 * weight; few: it is unpacked first), linear 7 -> 20 (not a whole block of 16 or 64:
 * left as it is), each output copied into out[0..2]. */
typedef struct {
    dc_nn_conv2d conv;
    dc_nn_linear wide, odd;
    dc_nn_embedding table;
} packing;

static void packing_forward(const packing *m, const float *xs, const float *vs, int64_t rows, float *out[3]) {
    dc_ctx *ctx = tu_ctx();
    dc_set_grad_enabled(ctx, false);
    dc_tensor *x = dc_from_host(ctx, DC_F32, DC_SHAPE(2, 6, 5, 5), xs);
    dc_tensor *v = dc_from_host(ctx, DC_F32, DC_SHAPE(2, rows, 7), vs);
    dc_tensor *y[3] = {dc_nn_conv2d_forward(ctx, &m->conv, x), dc_nn_linear_forward(ctx, &m->wide, v),
                       dc_nn_linear_forward(ctx, &m->odd, v)};
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(y[i] != NULL, "%s", dc_error());
        out[i] = malloc((size_t)y[i]->numel * sizeof(float));
        memcpy(out[i], y[i]->data, (size_t)y[i]->numel * sizeof(float));
    }
    tu_ctx_free(ctx);
}

/* The packing model with fresh weights. */
static void packing_declare(packing *m, dc_params *ps) {
    dc_params_init(ps);
    dc_nn_conv2d_init(&m->conv, ps, "conv", 5, 64, 3, 1, 1, true);
    dc_nn_linear_init(&m->wide, ps, "wide", 7, 128, true);
    dc_nn_linear_init(&m->odd, ps, "odd", 7, 20, false);
    dc_nn_embedding_init(&m->table, ps, "table", 32, 16);
}

static void packing_init(packing *m, dc_params *ps) {
    packing_declare(m, ps);
    ck_assert_msg(dc_params_alloc(ps, tu_next()) == 0, "%s", dc_error());
}

/* m's outputs before and after `pack` are the same bits: at few rows and at
 * many, for the three layers. */
static void check_packed_outputs(packing *m, dc_params *ps, int (*pack)(dc_params *)) {
    int64_t rows[2] = {3, 40};
    float *plain[2][3], *packed[2][3], xs[2 * 6 * 5 * 5], vs[2 * 40 * 7];
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
        xs[i] = (float)tu_normal();
    for (size_t i = 0; i < sizeof vs / sizeof vs[0]; i++)
        vs[i] = (float)tu_normal();
    for (int r = 0; r < 2; r++)
        packing_forward(m, xs, vs, rows[r], plain[r]);
    ck_assert_msg(pack(ps) == 0, "%s", dc_error());
    ck_assert(m->conv.weight->packed && m->wide.weight->packed);
    ck_assert(!m->odd.weight->packed && !m->table.weight->packed && !m->conv.bias->packed);
    for (int r = 0; r < 2; r++) {
        packing_forward(m, xs, vs, rows[r], packed[r]);
        int64_t n[3] = {2 * 6 * 5 * 64, 2 * rows[r] * 128, 2 * rows[r] * 20};
        for (int i = 0; i < 3; i++) {
            ck_assert_msg(memcmp(plain[r][i], packed[r][i], (size_t)n[i] * sizeof(float)) == 0,
                          "output %d at %lld rows differs once packed", i, (long long)rows[r]);
            free(plain[r][i]);
            free(packed[r][i]);
        }
    }
}

/* dc_params_pack_half leaves f32 where no direct kernel runs. */
static void check_half_unpacked(void) {
    dc_params ps;
    packing m;
    packing_init(&m, &ps);
    ck_assert_msg(dc_params_pack_half(&ps) == 0, "%s", dc_error());
    ck_assert(!m.conv.weight->packed && m.conv.weight->dtype == DC_F32);
    ck_assert(!m.wide.weight->packed && m.wide.weight->dtype == DC_F32);
    dc_params_free(&ps);
}

START_TEST(test_pack_for_inference) {
    if (!cpu_conv_pack_block())
        return; /* no direct kernels here (DC_CPU_ISA=baseline): nothing is packed */
    dc_params ps;
    packing m;
    packing_init(&m, &ps);
    check_packed_outputs(&m, &ps, dc_params_pack);
    float xs[5 * 5 * 5];
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
        xs[i] = (float)tu_normal();
    /* no tape through packed weights, and no file can hold them */
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = dc_from_host(ctx, DC_F32, DC_SHAPE(1, 5, 5, 5), xs);
    ck_assert_ptr_null(dc_nn_conv2d_forward(ctx, &m.conv, x));
    ck_assert_msg(strstr(dc_error(), "packed for inference"), "%s", dc_error());
    tu_ctx_free(ctx);
    char path[128];
    temp_path(path, sizeof path);
    ck_assert_int_eq(dc_params_save(&ps, NULL, path, NULL, NULL, 0), -1);
    ck_assert_msg(strstr(dc_error(), "packed for inference (conv.weight)"), "%s", dc_error());
    ck_assert_int_eq(access(path, F_OK), -1);
    dc_params_free(&ps);
}
END_TEST

/* dc_params_pack, then dc_params_pack_half over it. */
static int pack_twice(dc_params *ps) { return dc_params_pack(ps) || dc_params_pack_half(ps); }

/* f16 packing: the outputs are those of the f32 weights rounded to f16 (the
 * kernels widen each loaded vector, the sums the same), at few rows
 * (unpacked first) and many; a weight beyond f16's range stays f32; still no
 * tape through them. Where no direct kernel runs nothing is packed. */
START_TEST(test_pack_half) {
    if (!cpu_conv_pack_block()) {
        check_half_unpacked();
        return;
    }
    dc_params ps, big;
    packing m, mb;
    for (int twice = 1; twice >= 0; twice--) { /* from packed f32 weights, then from plain ones */
        if (!twice)
            dc_params_free(&ps);
        packing_init(&m, &ps);
        dc_tensor *half[2] = {m.conv.weight, m.wide.weight};
        for (int k = 0; k < 2; k++) {
            float *w = half[k]->data;
            for (int64_t i = 0; i < half[k]->numel; i++)
                w[i] = dc_f16_to_f32(dc_f32_to_f16(w[i]));
        }
        check_packed_outputs(&m, &ps, twice ? pack_twice : dc_params_pack_half);
        ck_assert(m.conv.weight->dtype == DC_F16 && m.wide.weight->dtype == DC_F16);
        ck_assert(m.odd.weight->dtype == DC_F32 && m.conv.bias->dtype == DC_F32);
    }
    /* the f16 bits are the weights', packed in blocks of output channels */
    const int64_t B = cpu_conv_pack_block();
    float *plain = malloc((size_t)m.wide.weight->numel * sizeof *plain);
    cpu_conv_unpack_half(m.wide.weight->data, plain, 128, 7);
    ck_assert_float_eq(plain[(B + 1) * 7 + 2], dc_f16_to_f32(((uint16_t *)m.wide.weight->data)[(7 + 2) * B + 1]));
    free(plain);
    float xs[5 * 5 * 5];
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
        xs[i] = (float)tu_normal();
    dc_ctx *ctx = tu_ctx();
    dc_tensor *x = dc_from_host(ctx, DC_F32, DC_SHAPE(1, 5, 5, 5), xs);
    ck_assert_ptr_null(dc_nn_conv2d_forward(ctx, &m.conv, x));
    ck_assert_msg(strstr(dc_error(), "packed for inference"), "%s", dc_error());
    tu_ctx_free(ctx);
    dc_params_free(&ps);
    packing_init(&mb, &big);
    ((float *)mb.wide.weight->data)[5] = 70000.0f; /* rounds to f16's infinity */
    ck_assert_msg(pack_twice(&big) == 0, "%s", dc_error());
    ck_assert(mb.wide.weight->packed && mb.wide.weight->dtype == DC_F32);
    ck_assert(mb.conv.weight->packed && mb.conv.weight->dtype == DC_F16);
    dc_params_free(&big);
}
END_TEST

/* Weights packed as f16 as they are loaded (pack_half_on_load) are those
 * dc_params_pack_half makes after the load: the same dtypes and bits. */
START_TEST(test_pack_half_on_load) {
    dc_params ps, sets[2];
    packing m, ms[2];
    packing_init(&m, &ps);
    ((float *)m.wide.weight->data)[3] = 70000.0f; /* stays f32 either way */
    char path[128];
    temp_path(path, sizeof path);
    ck_assert_msg(dc_params_save(&ps, NULL, path, NULL, NULL, 0) == 0, "%s", dc_error());
    for (int k = 0; k < 2; k++) { /* 0: packed after loading, 1: as it loads */
        packing_declare(&ms[k], &sets[k]);
        sets[k].pack_half_on_load = k == 1;
        ck_assert_msg(dc_params_alloc_load(&sets[k], DC_CPU, path, NULL) == 0, "%s", dc_error());
    }
    ck_assert_msg(dc_params_pack_half(&sets[0]) == 0, "%s", dc_error());
    ck_assert(!cpu_conv_pack_block() || ms[1].conv.weight->dtype == DC_F16);
    for (int i = 0; i < sets[0].n; i++) {
        const dc_tensor *a = &sets[0].p[i]->value, *b = &sets[1].p[i]->value;
        ck_assert_msg(a->dtype == b->dtype && a->packed == b->packed, "%s", sets[0].p[i]->name);
        ck_assert_msg(memcmp(a->data, b->data, (size_t)a->numel * dc_dtype_size(a->dtype)) == 0, "%s",
                      sets[0].p[i]->name);
    }
    for (int k = 0; k < 2; k++)
        dc_params_free(&sets[k]);
    unlink(path);
    dc_params_free(&ps);
}
END_TEST

int main(void) {
    Suite *s = suite_create("nn");
    TCase *tc = tu_tcase(s, "registry", 60);
    tcase_add_test(tc, test_declare_and_alloc);
    tcase_add_test(tc, test_grad_pages_untouched);
    tcase_add_test(tc, test_init_statistics);
    tcase_add_test(tc, test_init_reproducible);
    tcase_add_test(tc, test_alloc_on_device);
    tcase_add_test(tc, test_declaration_errors);
    tcase_add_test(tc, test_sizes_overflow);
    tcase_add_test(tc, test_grad_ready_hook);
    tcase_add_test(tc, test_pack_for_inference);
    tcase_add_test(tc, test_pack_half);
    tcase_add_test(tc, test_pack_half_on_load);
    TCase *io = tu_tcase(s, "save_load", 60);
    tcase_add_test(io, test_save_writes_pytorch_layout);
    tcase_add_test(io, test_save_load_roundtrip);
    tcase_add_test(io, test_load_converts_layout_and_dtype);
    tcase_add_test(io, test_load_errors);
    tcase_add_test(io, test_load_rename);
    tcase_add_test(io, test_check_before_alloc);
    return tu_run(s);
}
