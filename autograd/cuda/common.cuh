/*
 * What every .cu file of the CUDA backend shares (internal, not for C): the
 * per-device state, the check macros, launch helpers and block reductions.
 *
 * Every CUDA runtime, cuDNN and cuBLAS call goes through CUDA_CHECK,
 * CUDNN_CHECK or CUBLAS_CHECK, and every kernel launch through LAUNCH, which
 * checks it. A failure records "file:line: the call: the error" with
 * dc_fail() (the first one only) and makes the device's error sticky; the
 * macros evaluate to true on success so callers can stop early. Nothing
 * here exits.
 *
 * Kernels run on the current device's one stream, in the order they are
 * queued; the ops never synchronise except to bring a value to the host.
 */
#ifndef DC_CUDA_COMMON_CUH
#define DC_CUDA_COMMON_CUH

extern "C" { /* the engine's C headers */
#include "../device.h"
#include "../error.h"
}
#include "device.h"

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <stdint.h>

/* Doubles of the persistent buffer for two-pass reductions: one per block of
 * the first pass (REDUCE_BLOCKS) plus a few result slots. */
#define REDUCE_BLOCKS 1024
#define REDUCE_SLOTS (REDUCE_BLOCKS + 8)

/* Column sums (bias and norm-affine gradients) split their rows into chunks
 * of COL_ROWS, one (32, 8) block per chunk of 32 columns, and keep each
 * chunk's sum in the persistent buffer of COL_PARTIALS doubles: one block per
 * 32 columns alone left all but a few multiprocessors idle over the 10^5
 * rows of a batch of feature maps. */
#define COL_ROWS 256
#define COL_PARTIALS ((int64_t)1 << 20)

typedef struct cuda_state {
    bool ready, failed;
    int device;
    dc_math math;
    int sms;                     /* multiprocessors: sizes grids */
    cudaStream_t stream;
    cublasLtHandle_t lt;
    cudnnHandle_t dnn;
    void *lt_workspace;          /* cuBLASLt's workspace [LT_WORKSPACE bytes] */
    double *reduce;              /* [REDUCE_SLOTS] partial sums of reductions */
    double *colsum;              /* [COL_PARTIALS] chunk sums of column sums */
} cuda_state;

#define LT_WORKSPACE ((size_t)32 << 20)

/* The current device's state (cuda_select() chose it). */
cuda_state *cuda_st(void);

bool cuda_check_rt(cudaError_t e, const char *call, const char *file, int line);
bool cuda_check_dnn(cudnnStatus_t s, const char *call, const char *file, int line);
bool cuda_check_blas(cublasStatus_t s, const char *call, const char *file, int line);
/* Record a failure of our own making (an unsupported shape) the same way. */
bool cuda_fail_at(const char *file, int line, const char *what);

#define CUDA_CHECK(call) cuda_check_rt((call), #call, __FILE__, __LINE__)
#define CUDNN_CHECK(call) cuda_check_dnn((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) cuda_check_blas((call), #call, __FILE__, __LINE__)
#define CUDA_FAIL(what) cuda_fail_at(__FILE__, __LINE__, (what))

/* Launch `kernel` on the current stream and check the launch. */
#define LAUNCH(kernel, grid, block, smem, ...)                                              \
    do {                                                                                    \
        kernel<<<(grid), (block), (smem), cuda_st()->stream>>>(__VA_ARGS__);                \
        cuda_check_rt(cudaGetLastError(), #kernel "<<<" #grid ", " #block ">>>", __FILE__, \
                      __LINE__);                                                            \
    } while (0)

#define BLOCK 256

/* Blocks for a grid-stride loop over n elements: enough to fill the GPU, at least 1. */
static inline unsigned grid_for(int64_t n) {
    int64_t b = (n + BLOCK - 1) / BLOCK, cap = (int64_t)cuda_st()->sms * 16;
    if (cap < 1)
        cap = 1024;
    return (unsigned)(b < 1 ? 1 : b < cap ? b : cap);
}

/* Blocks for one block per row (rows walked in a grid-stride loop past the cap). */
static inline unsigned grid_rows(int64_t rows) {
    return (unsigned)(rows < 1 ? 1 : rows < (1 << 30) ? rows : (1 << 30));
}

/* i over [0, n) in a grid-stride loop. */
#define FOR_N(i, n)                                                                      \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (int64_t)(n); \
         i += (int64_t)gridDim.x * blockDim.x)

/* The sum of v over the block (blockDim.x a multiple of 32, at most 1024),
 * returned to every thread. Safe to call repeatedly in one kernel. */
template <typename T> __device__ T block_sum(T v) {
    __shared__ T part[32];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads(); /* a previous call may still be reading part[] */
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    v = lane < warps ? part[lane] : (T)0;
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The maximum of v over the block, returned to every thread. */
__device__ inline float block_max(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0)
        part[warp] = v;
    __syncthreads();
    v = lane < warps ? part[lane] : -INFINITY;
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* db[A, C] += sign * the sums over R of dout [A, R, C] (times a [A, R, C]
 * when a is not NULL), in double: column sums, read coalesced. elementwise.cu. */
void launch_colsum(const float *dout, const float *a, float *db, int64_t A, int64_t R, int64_t C,
                   float sign);

/* How many chunks of rows column sums over R rows of `groups` x C columns
 * take, with `arrays` partial sums per column: enough for COL_ROWS rows each
 * where the partials fit in COL_PARTIALS and the grid's y in 65535, at least
 * 1 (then the sums go straight to their destination). Depends on the shape
 * alone, so the sums are the same on every GPU. */
static inline int64_t col_chunks(int64_t groups, int64_t R, int64_t C, int64_t arrays) {
    int64_t chunks = (R + COL_ROWS - 1) / COL_ROWS;
    int64_t room = COL_PARTIALS / (arrays * groups * (C > 0 ? C : 1)), grid = 65535 / groups;
    chunks = chunks < room ? chunks : room;
    chunks = chunks < grid ? chunks : grid;
    return chunks < 1 ? 1 : chunks;
}

/* out[g, c] += sign * the sum over k of partial [groups, chunks, C] at
 * (g, k, c), in chunk order. elementwise.cu. */
void launch_colsum_finish(const double *partial, float *out, int64_t groups, int64_t chunks,
                          int64_t C, float sign);

/* One operand of gemm_ex: row-major, leading dimension ld (floats between
 * rows), stride floats between the matrices of a batch. */
typedef struct {
    const float *p;
    int64_t ld, stride;
} gemm_operand;

/* Row-major C = alpha op(A) op(B) + beta C for `batch` matrices, op(A)
 * [M, K] (A stored [K, M] when ta), op(B) [K, N] (stored [N, K] when tb),
 * C [M, N] with leading dimension ldc and batch stride sc; bias [N] (or
 * NULL) added to every row through cuBLASLt's epilogue (needs beta == 0).
 * Arithmetic by the device's dc_math. gemm.cu. */
bool gemm_ex(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, gemm_operand A,
             gemm_operand B, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch,
             const float *bias);

/* ---- two-pass reductions in double: deterministic, no atomics ---- */

template <class F> __global__ void reduce_pass1(F f, int64_t n, double *partial) {
    double s = 0;
    FOR_N(i, n)
    s += f(i);
    s = block_sum(s);
    if (threadIdx.x == 0)
        partial[blockIdx.x] = s;
}

/* out[0] = (float)(sum / div), or result[0] = sum (double) when out is NULL. */
__global__ void reduce_pass2(const double *partial, int blocks, double div, float *out,
                             double *result);

/* The sum over i < n of f(i) (a __device__ functor returning double):
 * written as (float)(sum / div) into the device float *out. */
template <class F> void reduce_to_device(F f, int64_t n, double div, float *out) {
    cuda_state *st = cuda_st();
    unsigned blocks = grid_for(n) < REDUCE_BLOCKS ? grid_for(n) : REDUCE_BLOCKS;
    LAUNCH(reduce_pass1<F>, blocks, BLOCK, 0, f, n, st->reduce);
    LAUNCH(reduce_pass2, 1, BLOCK, 0, st->reduce, (int)blocks, div, out, (double *)NULL);
}

/* The same sum brought to the host (waits for the stream); NaN after an error. */
template <class F> double reduce_to_host(F f, int64_t n) {
    cuda_state *st = cuda_st();
    unsigned blocks = grid_for(n) < REDUCE_BLOCKS ? grid_for(n) : REDUCE_BLOCKS;
    double s = NAN;
    LAUNCH(reduce_pass1<F>, blocks, BLOCK, 0, f, n, st->reduce);
    LAUNCH(reduce_pass2, 1, BLOCK, 0, st->reduce, (int)blocks, 1.0, (float *)NULL,
           st->reduce + REDUCE_BLOCKS);
    if (!CUDA_CHECK(cudaMemcpyAsync(&s, st->reduce + REDUCE_BLOCKS, sizeof s,
                                    cudaMemcpyDeviceToHost, st->stream)) ||
        !CUDA_CHECK(cudaStreamSynchronize(st->stream)))
        return NAN;
    return s;
}

#endif
