/* CUDA convolution through cuDNN (see conv.h): NHWC images, KRSC filters
 * (= our [Cout, kh, kw, Cin]), cross-correlation with symmetric zero padding.
 *
 * Each geometry gets a plan the first time it is seen: descriptors and, for
 * forward, backward-data and backward-filter, the algorithms of cuDNN's
 * heuristic list, best first, that cuDNN sizes for this geometry within the
 * workspace budget (and, under DC_MATH_F32, use no tensor cores). The first
 * one runs; one that cuDNN then refuses as unsupported is dropped for the
 * next, as PyTorch does, since the heuristic's list is a guess. Plans are
 * cached per device and math setting for the life of the process. The
 * workspace is the op's scratch from the activation arena, as large as the
 * largest candidate needs. Under DC_MATH_BF16 the operands are rounded to
 * bf16 in that scratch, cuDNN accumulates in f32, and the results are widened
 * back (gradients added); a geometry cuDNN has no bf16 algorithm for runs in
 * TF32. The bias is our own row kernel (forward) and column sum (backward):
 * cuDNN fuses a bias only into one algorithm with an activation we do not
 * have. */
#include "common.cuh"
#include "conv.h"

#include <stdio.h>

#define MAX_PLANS 256
#define ALIGN_FLOATS 64  /* 256 bytes between scratch regions */
#define MAX_CANDIDATES 8 /* CUDNN_CONVOLUTION_FWD_ALGO_COUNT, the largest of the three */

enum { FWD, DATA, FILTER, DIRECTIONS }; /* forward, backward-data, backward-filter */

/* An algorithm of one direction (a cudnnConvolution*Algo_t), the math type
 * it runs with and the workspace bytes cuDNN says it needs. */
typedef struct {
    int algo;
    cudnnMathType_t math;
    size_t workspace;
} candidate;

/* The usable algorithms of one direction, best first; c[at] is the one in use. */
typedef struct {
    candidate c[MAX_CANDIDATES];
    int count, at;
} choice;

typedef struct {
    bool used;
    int device;
    dc_math math;  /* the device's setting the plan is for */
    dc_math arith; /* the arithmetic it runs: math, or TF32 where cuDNN has no bf16 algorithm */
    int64_t n, h, w, cin, cout, kh, kw, stride, pad;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t f;
    cudnnConvolutionDescriptor_t conv;
    choice dir[DIRECTIONS];
    size_t workspace; /* bytes: the largest any candidate needs */
} plan;

static plan plans[MAX_PLANS];
static int next_victim;

static bool same_geometry(const plan *p, const cpu_conv_geom *g, int device, dc_math m) {
    return p->used && p->device == device && p->math == m && p->n == g->n && p->h == g->h &&
           p->w == g->w && p->cin == g->cin && p->cout == g->cout && p->kh == g->kh &&
           p->kw == g->kw && p->stride == g->stride && p->pad == g->pad;
}

static void drop(plan *p) {
    if (!p->used)
        return;
    CUDNN_CHECK(cudnnDestroyTensorDescriptor(p->x));
    CUDNN_CHECK(cudnnDestroyTensorDescriptor(p->y));
    CUDNN_CHECK(cudnnDestroyFilterDescriptor(p->f));
    CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(p->conv));
    p->used = false;
}

/* Floats of a bf16 copy of n elements, rounded up to the region alignment. */
static int64_t bf16_floats(int64_t n) {
    return ((n + 1) / 2 + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

static int64_t workspace_floats(const plan *p) {
    return ((int64_t)((p->workspace + 3) / 4) + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
}

/* The scratch: the workspace, then under bf16 the copies x, w, y (dy), dx, dw. */
static int64_t scratch_of(const plan *p) {
    int64_t ws = workspace_floats(p);
    if (p->arith != DC_MATH_BF16)
        return ws < 1 ? 1 : ws;
    int64_t nx = p->n * p->h * p->w * p->cin, nw = p->cout * p->kh * p->kw * p->cin;
    int64_t ho = (p->h + 2 * p->pad - p->kh) / p->stride + 1;
    int64_t wo = (p->w + 2 * p->pad - p->kw) / p->stride + 1;
    return ws + 2 * bf16_floats(nx) + 2 * bf16_floats(nw) + bf16_floats(p->n * ho * wo * p->cout);
}

/* Whether a heuristic result's math type may be used: under DC_MATH_F32 no
 * tensor cores (it then runs with CUDNN_FMA_MATH). */
static bool usable_math(cudnnMathType_t mt, dc_math m) {
    return m != DC_MATH_F32 ||
           (mt != CUDNN_TENSOR_OP_MATH && mt != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION);
}

/* The math type an algorithm runs with: its own, but never TF32 under DC_MATH_F32. */
static cudnnMathType_t run_math(const plan *p, cudnnMathType_t mt) {
    return p->arith == DC_MATH_F32 ? CUDNN_FMA_MATH : mt;
}

/* The workspace cuDNN says `algo` of direction dir needs on this geometry
 * with the descriptor's current math type; not SUCCESS when it cannot run it. */
static cudnnStatus_t workspace_of(const plan *p, int dir, int algo, size_t *bytes) {
    cudnnHandle_t h = cuda_st()->dnn;
    switch (dir) {
    case FWD:
        return cudnnGetConvolutionForwardWorkspaceSize(h, p->x, p->f, p->conv, p->y,
                                                       (cudnnConvolutionFwdAlgo_t)algo, bytes);
    case DATA:
        return cudnnGetConvolutionBackwardDataWorkspaceSize(
            h, p->f, p->y, p->conv, p->x, (cudnnConvolutionBwdDataAlgo_t)algo, bytes);
    default:
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(
            h, p->x, p->y, p->conv, p->f, (cudnnConvolutionBwdFilterAlgo_t)algo, bytes);
    }
}

/* The heuristic's results for direction dir kept as candidates when they
 * succeed, suit the math setting, and are sized by cuDNN within budget (the
 * heuristic's own memory figure is an estimate: the larger of the two counts). */
template <class Perf>
static bool collect(plan *p, int dir, const Perf *perf, int count, size_t budget) {
    choice *ch = &p->dir[dir];
    for (int i = 0; i < count && ch->count < MAX_CANDIDATES; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || !usable_math(perf[i].mathType, p->arith))
            continue;
        cudnnMathType_t mt = run_math(p, perf[i].mathType);
        size_t need = 0;
        if (!CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv, mt)))
            return false;
        if (workspace_of(p, dir, (int)perf[i].algo, &need) != CUDNN_STATUS_SUCCESS)
            continue; /* not for this geometry after all */
        need = need > perf[i].memory ? need : perf[i].memory;
        if (need > budget)
            continue;
        ch->c[ch->count++] = candidate{(int)perf[i].algo, mt, need};
        p->workspace = need > p->workspace ? need : p->workspace;
    }
    return true;
}

/* The status of a heuristic query checked, except that "not supported" (for
 * the data type or layout) means no results, not a failure. */
static bool heuristic(cudnnStatus_t s, int *count, const char *call) {
    if (CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED) {
        *count = 0;
        return true;
    }
    return cuda_check_dnn(s, call, __FILE__, __LINE__);
}

/* Collects the candidates of every direction: the first direction left
 * without one (DIRECTIONS when none is), or -1 after a failure (recorded). */
static int choose_algorithms(plan *p, size_t budget) {
    cudnnHandle_t h = cuda_st()->dnn;
    int nf = 0, nd = 0, nw = 0;
    cudnnConvolutionFwdAlgoPerf_t fwd[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    cudnnConvolutionBwdDataAlgoPerf_t data[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    cudnnConvolutionBwdFilterAlgoPerf_t filt[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    p->workspace = 0;
    if (!heuristic(cudnnGetConvolutionForwardAlgorithm_v7(
                       h, p->x, p->f, p->conv, p->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &nf, fwd),
                   &nf, "cudnnGetConvolutionForwardAlgorithm_v7") ||
        !heuristic(cudnnGetConvolutionBackwardDataAlgorithm_v7(
                       h, p->f, p->y, p->conv, p->x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &nd,
                       data),
                   &nd, "cudnnGetConvolutionBackwardDataAlgorithm_v7") ||
        !heuristic(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                       h, p->x, p->y, p->conv, p->f, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &nw,
                       filt),
                   &nw, "cudnnGetConvolutionBackwardFilterAlgorithm_v7") ||
        !collect(p, FWD, fwd, nf, budget) || !collect(p, DATA, data, nd, budget) ||
        !collect(p, FILTER, filt, nw, budget))
        return -1;
    for (int d = 0; d < DIRECTIONS; d++)
        if (!p->dir[d].count)
            return d;
    return DIRECTIONS;
}

/* Records that direction dir of p has no algorithm; false. */
static bool no_algorithm(const plan *p, int dir, size_t budget) {
    const char *names[DIRECTIONS] = {"forward", "backward-data", "backward-filter"};
    char why[240];
    snprintf(why, sizeof why,
             "cuDNN offers no %s convolution algorithm within %zu bytes of workspace "
             "(x [%lld, %lld, %lld, %lld], %lldx%lld kernel, %lld outputs, math %d)",
             names[dir], budget, (long long)p->n, (long long)p->h, (long long)p->w,
             (long long)p->cin, (long long)p->kh, (long long)p->kw, (long long)p->cout,
             (int)p->arith);
    return CUDA_FAIL(why);
}

/* Descriptors of the geometry in the math's data type, checked against ours. */
static bool describe(plan *p, const cpu_conv_geom *g) {
    cudnnDataType_t dt = p->arith == DC_MATH_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    int64_t biggest = g->n * g->h * g->w * g->cin > g->n * g->ho * g->wo * g->cout
                          ? g->n * g->h * g->w * g->cin
                          : g->n * g->ho * g->wo * g->cout;
    if (biggest > INT32_MAX || g->cout * g->kh * g->kw * g->cin > INT32_MAX)
        return CUDA_FAIL("convolution tensor over 2^31 elements: beyond cuDNN's 4-D descriptors");
    int on, oc, oh, ow;
    bool ok =
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x)) &&
        CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y)) &&
        CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->f)) &&
        CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
    p->used = ok; /* from here drop() releases what exists */
    ok = ok &&
         CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, dt, (int)g->n, (int)g->cin,
                                                (int)g->h, (int)g->w)) &&
         CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, dt, (int)g->n,
                                                (int)g->cout, (int)g->ho, (int)g->wo)) &&
         CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->f, dt, CUDNN_TENSOR_NHWC, (int)g->cout,
                                                (int)g->cin, (int)g->kh, (int)g->kw)) &&
         CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, (int)g->pad, (int)g->pad,
                                                     (int)g->stride, (int)g->stride, 1, 1,
                                                     CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT)) &&
         CUDNN_CHECK(cudnnSetConvolutionMathType(
             p->conv, p->arith == DC_MATH_F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH)) &&
         CUDNN_CHECK(
             cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->f, &on, &oc, &oh, &ow));
    if (ok && (on != g->n || oc != g->cout || oh != g->ho || ow != g->wo))
        ok = CUDA_FAIL("cuDNN's convolution output shape differs from ours");
    return ok;
}

/* p made afresh for g in arithmetic `arith`: what choose_algorithms says. */
static int make(plan *p, const cpu_conv_geom *g, dc_math arith, size_t budget) {
    cuda_state *st = cuda_st();
    drop(p);
    *p = plan{};
    p->device = st->device, p->math = st->math, p->arith = arith;
    p->n = g->n, p->h = g->h, p->w = g->w, p->cin = g->cin, p->cout = g->cout;
    p->kh = g->kh, p->kw = g->kw, p->stride = g->stride, p->pad = g->pad;
    return describe(p, g) ? choose_algorithms(p, budget) : -1;
}

/* The plan of g on the current device, made on first sight; NULL on failure.
 * cuDNN's bf16 kernels may not take every geometry (the 3 channels of an
 * image): such a convolution runs in TF32 instead of failing the step. */
static plan *plan_for(const cpu_conv_geom *g, size_t budget) {
    cuda_state *st = cuda_st();
    for (int i = 0; i < MAX_PLANS; i++)
        if (same_geometry(&plans[i], g, st->device, st->math))
            return &plans[i];
    plan *p = &plans[next_victim];
    next_victim = (next_victim + 1) % MAX_PLANS;
    int missing = make(p, g, st->math, budget);
    if (missing >= 0 && missing < DIRECTIONS && st->math == DC_MATH_BF16)
        missing = make(p, g, DC_MATH_TF32, budget);
    if (missing == DIRECTIONS)
        return p;
    if (missing >= 0)
        no_algorithm(p, missing, budget);
    drop(p);
    return NULL;
}

extern "C" int64_t cuda_conv2d_scratch_floats(const cpu_conv_geom *g, int64_t max_bytes) {
    plan *p = plan_for(g, (size_t)max_bytes);
    return p ? scratch_of(p) : 1;
}

/* ---- bf16 staging ---- */

__global__ static void to_bf16(__nv_bfloat16 *dst, const float *src, int64_t n) {
    FOR_N(i, n)
    dst[i] = __float2bfloat16_rn(src[i]);
}

/* dst = src or dst += src, widened to f32. */
__global__ static void from_bf16(float *dst, const __nv_bfloat16 *src, int64_t n, bool accumulate) {
    FOR_N(i, n) {
        float v = __bfloat162float(src[i]);
        dst[i] = accumulate ? dst[i] + v : v;
    }
}

static __nv_bfloat16 *staged(const float *src, int64_t n, float **region) {
    __nv_bfloat16 *dst = (__nv_bfloat16 *)*region;
    if (src)
        LAUNCH(to_bf16, grid_for(n), BLOCK, 0, dst, src, n);
    *region += bf16_floats(n);
    return dst;
}

/* y [rows, C] += b [C] on every row. */
__global__ static void add_bias(float *y, const float *b, int64_t rows, int64_t C) {
    FOR_N(i, rows * C)
    y[i] += b[i % C];
}

/* The plan for g and the scratch laid out for it, or NULL after a failure. */
static plan *ready(const cpu_conv_geom *g, int64_t scratch_floats) {
    plan *p = plan_for(g, (size_t)CPU_CONV_SCRATCH_BYTES);
    if (p && scratch_of(p) > scratch_floats) {
        CUDA_FAIL("convolution scratch smaller than cuda_conv2d_scratch_floats asked for");
        return NULL;
    }
    return p;
}

/* Runs direction dir of p through call(algorithm, workspace bytes) with its
 * algorithm in use. When cuDNN refuses that one as unsupported (before
 * running anything), the next candidate takes its place for good; the last
 * one's refusal is the error. False after a failure, recorded with the
 * algorithm named. */
template <class Call> static bool run_direction(plan *p, int dir, const char *what, Call call) {
    choice *ch = &p->dir[dir];
    for (; ch->at < ch->count; ch->at++) {
        const candidate *c = &ch->c[ch->at];
        cudnnStatus_t s = cudnnSetConvolutionMathType(p->conv, c->math);
        if (s == CUDNN_STATUS_SUCCESS)
            s = call(c->algo, c->workspace);
        bool refused = CUDNN_STATUS_CATEGORY(s) == CUDNN_STATUS_NOT_SUPPORTED ||
                       s == CUDNN_STATUS_BAD_PARAM_MISALIGNED_POINTER;
        if (!refused || ch->at + 1 == ch->count) {
            char call_text[160];
            snprintf(call_text, sizeof call_text,
                     "%s (algorithm %d, math type %d, %zu bytes of workspace, candidate %d of %d)",
                     what, c->algo, (int)c->math, c->workspace, ch->at + 1, ch->count);
            return cuda_check_dnn(s, call_text, __FILE__, __LINE__);
        }
    }
    return CUDA_FAIL("convolution plan without algorithms");
}

extern "C" void cuda_conv2d_forward(const cpu_conv_geom *g, float *y, const float *x,
                                    const float *w, const float *b, float *scratch,
                                    int64_t scratch_floats) {
    plan *p = ready(g, scratch_floats);
    if (!p)
        return;
    cudnnHandle_t h = cuda_st()->dnn;
    float one = 1.0f, zero = 0.0f, *region = scratch + workspace_floats(p);
    int64_t nx = g->n * g->h * g->w * g->cin, nw = g->cout * g->kh * g->kw * g->cin;
    int64_t ny = g->n * g->ho * g->wo * g->cout;
    const void *xs = x, *ws = w;
    void *ys = y;
    if (p->arith == DC_MATH_BF16) {
        xs = staged(x, nx, &region);
        ws = staged(w, nw, &region);
        ys = staged(NULL, ny, &region);
    }
    if (!run_direction(p, FWD, "cudnnConvolutionForward", [&](int algo, size_t bytes) {
            return cudnnConvolutionForward(h, &one, p->x, xs, p->f, ws, p->conv,
                                           (cudnnConvolutionFwdAlgo_t)algo, scratch, bytes, &zero,
                                           p->y, ys);
        }))
        return;
    if (p->arith == DC_MATH_BF16)
        LAUNCH(from_bf16, grid_for(ny), BLOCK, 0, y, (const __nv_bfloat16 *)ys, ny, false);
    if (b)
        LAUNCH(add_bias, grid_for(ny), BLOCK, 0, y, b, ny / g->cout, g->cout);
}

extern "C" void cuda_conv2d_backward(const cpu_conv_geom *g, const float *dy, const float *x,
                                     const float *w, float *dx, bool dx_fresh, float *dw,
                                     float *db, float *scratch, int64_t scratch_floats) {
    plan *p = ready(g, scratch_floats);
    if (!p)
        return;
    cudnnHandle_t h = cuda_st()->dnn;
    int64_t nx = g->n * g->h * g->w * g->cin, nw = g->cout * g->kh * g->kw * g->cin;
    int64_t ny = g->n * g->ho * g->wo * g->cout;
    bool bf16 = p->arith == DC_MATH_BF16;
    /* f32: accumulate straight into dx, dw (beta 1; dx beta 0 when it holds
     * nothing yet); bf16: into staging, added (or copied) after. */
    float one = 1.0f, beta = bf16 ? 0.0f : 1.0f, *region = scratch + workspace_floats(p);
    float dx_beta = dx_fresh ? 0.0f : beta;
    const void *xs = x, *ws = w, *dys = dy;
    void *dxs = dx, *dws = dw;
    if (bf16) {
        xs = staged(dw ? x : NULL, nx, &region);
        ws = staged(dx ? w : NULL, nw, &region);
        dys = staged(dy, ny, &region);
        dxs = staged(NULL, nx, &region);
        dws = staged(NULL, nw, &region);
    }
    if (dx && !run_direction(p, DATA, "cudnnConvolutionBackwardData", [&](int algo, size_t bytes) {
            return cudnnConvolutionBackwardData(h, &one, p->f, ws, p->y, dys, p->conv,
                                                (cudnnConvolutionBwdDataAlgo_t)algo, scratch,
                                                bytes, &dx_beta, p->x, dxs);
        }))
        return;
    if (dw &&
        !run_direction(p, FILTER, "cudnnConvolutionBackwardFilter", [&](int algo, size_t bytes) {
            return cudnnConvolutionBackwardFilter(h, &one, p->x, xs, p->y, dys, p->conv,
                                                  (cudnnConvolutionBwdFilterAlgo_t)algo, scratch,
                                                  bytes, &beta, p->f, dws);
        }))
        return;
    if (bf16 && dx)
        LAUNCH(from_bf16, grid_for(nx), BLOCK, 0, dx, (const __nv_bfloat16 *)dxs, nx, !dx_fresh);
    if (bf16 && dw)
        LAUNCH(from_bf16, grid_for(nw), BLOCK, 0, dw, (const __nv_bfloat16 *)dws, nw, true);
    if (db)
        launch_colsum(dy, NULL, db, 1, ny / g->cout, g->cout, 1.0f);
}
