/* CUDA multi-head attention (see attention.h): for every (sample, head)
 * pair, S = scale q_h k_h^T (cuBLASLt strided batched GEMMs, see grouping)
 * into P [N, heads, Lq, Lk], a row softmax in place (the causal mask applied
 * there), out_h = P v_h. Head slices are read and written in place: leading
 * dimension C, as the CPU kernels do.
 * Backward: dv_h += P^T dout_h; dP = dout_h v_h^T; dS = P (dP - rowsum(dP P))
 * scale, in place; dq_h += dS k_h; dk_h += dS^T q_h.
 * TODO(perf): cuDNN's fused flash attention (backend graph API) would avoid
 * materialising P; this is the reference-shaped version. */
#include "attention.h"
#include "common.cuh"

extern "C" int64_t cuda_attention_scratch(const cpu_attention_dims *a) {
    return a->n * a->heads * (int64_t)a->lq * a->lk;
}

/* Row r of P [N * heads * Lq, Lk] is query r % Lq: softmax of its logits,
 * keys past the query's position (r % Lq + Lk - Lq) masked to 0 when causal. */
__global__ static void attn_softmax(float *p, int64_t rows, int lq, int lk, bool causal) {
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float *pr = p + r * lk;
        int last = causal ? (int)(r % lq) + lk - lq : lk - 1; /* keys 0..last are seen */
        float max = -INFINITY;
        for (int j = threadIdx.x; j <= last; j += blockDim.x)
            max = fmaxf(max, pr[j]);
        max = block_max(max);
        double sum = 0;
        for (int j = threadIdx.x; j < lk; j += blockDim.x) {
            float e = j <= last ? expf(pr[j] - max) : 0.0f;
            pr[j] = e;
            sum += e;
        }
        float inv = (float)(1.0 / block_sum(sum));
        for (int j = threadIdx.x; j <= last; j += blockDim.x)
            pr[j] *= inv;
    }
}

/* dP -> dS = P (dP - sum_j dP P) * scale, row by row, in place. */
__global__ static void attn_softmax_bwd(float *dp, const float *p, int64_t rows, int lk,
                                        float scale) {
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float *dr = dp + r * lk;
        const float *pr = p + r * lk;
        double dot = 0;
        for (int j = threadIdx.x; j < lk; j += blockDim.x)
            dot += (double)dr[j] * pr[j];
        float d = (float)block_sum(dot);
        for (int j = threadIdx.x; j < lk; j += blockDim.x)
            dr[j] = pr[j] * (dr[j] - d) * scale;
    }
}

/* How the products of the N * heads (sample, head) pairs are grouped into
 * strided batched GEMMs. No one stride steps through all pairs of a
 * [N, L, heads * d] tensor (heads are d apart, samples L * C), so one
 * dimension is batched and the other looped over: the heads of one sample
 * (stride d) per call, or the samples of one head (stride L * C), whichever
 * makes fewer calls. */
typedef struct {
    bool by_sample; /* one call per sample, its heads batched (else one per head) */
    int64_t calls, batch;
} grouping;

static grouping group(const cpu_attention_dims *a) {
    return a->n <= a->heads ? grouping{true, a->n, a->heads} : grouping{false, a->heads, a->n};
}

/* Call i's head slices [L, d] of a [N, L, C] tensor, read in place: leading
 * dimension C. */
static gemm_operand heads_of(const float *x, const cpu_attention_dims *a, grouping g, int64_t i,
                             int L) {
    int64_t C = (int64_t)a->heads * a->d, sample = (int64_t)L * C;
    return g.by_sample ? gemm_operand{x + i * sample, C, a->d}
                       : gemm_operand{x + i * a->d, C, sample};
}

/* Call i's [Lq, Lk] blocks of P [N, heads, Lq, Lk]. */
static gemm_operand blocks_of(const float *p, const cpu_attention_dims *a, grouping g,
                              int64_t i) {
    int64_t block = (int64_t)a->lq * a->lk;
    return g.by_sample ? gemm_operand{p + i * a->heads * block, a->lk, block}
                       : gemm_operand{p + i * block, a->lk, a->heads * block};
}

/* C = alpha op(A) op(B) + beta C over call i's pairs; A, B, C from the same call. */
static bool pairs_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                       gemm_operand A, gemm_operand B, float beta, gemm_operand C, grouping g) {
    return gemm_ex(ta, tb, M, N, K, alpha, A, B, beta, (float *)C.p, C.ld, C.stride, g.batch,
                   NULL);
}

extern "C" void cuda_attention_forward(const cpu_attention_dims *a, float *out, float *p,
                                       const float *q, const float *k, const float *v,
                                       bool keep_p) {
    (void)keep_p; /* P is whole on the GPU either way */
    int64_t rows = a->n * a->heads * (int64_t)a->lq;
    grouping g = group(a);
    for (int64_t i = 0; i < g.calls; i++) /* S = scale q_h k_h^T */
        if (!pairs_gemm(false, true, a->lq, a->lk, a->d, a->scale, heads_of(q, a, g, i, a->lq),
                        heads_of(k, a, g, i, a->lk), 0.0f, blocks_of(p, a, g, i), g))
            return;
    LAUNCH(attn_softmax, grid_rows(rows), BLOCK, 0, p, rows, a->lq, a->lk, a->causal);
    for (int64_t i = 0; i < g.calls; i++) /* out_h = P v_h */
        if (!pairs_gemm(false, false, a->lq, a->d, a->lk, 1.0f, blocks_of(p, a, g, i),
                        heads_of(v, a, g, i, a->lk), 0.0f, heads_of(out, a, g, i, a->lq), g))
            return;
}

extern "C" void cuda_attention_backward(const cpu_attention_dims *a, const float *dout,
                                        const float *p, const float *q, const float *k,
                                        const float *v, float *dq, float *dk, float *dv,
                                        float *work) {
    int64_t rows = a->n * a->heads * (int64_t)a->lq;
    grouping g = group(a);
    for (int64_t i = 0; i < g.calls && dv; i++) /* dv_h += P^T dout_h */
        if (!pairs_gemm(true, false, a->lk, a->d, a->lq, 1.0f, blocks_of(p, a, g, i),
                        heads_of(dout, a, g, i, a->lq), 1.0f, heads_of(dv, a, g, i, a->lk), g))
            return;
    if (!dq && !dk)
        return;
    for (int64_t i = 0; i < g.calls; i++) /* dP_h = dout_h v_h^T */
        if (!pairs_gemm(false, true, a->lq, a->lk, a->d, 1.0f, heads_of(dout, a, g, i, a->lq),
                        heads_of(v, a, g, i, a->lk), 0.0f, blocks_of(work, a, g, i), g))
            return;
    LAUNCH(attn_softmax_bwd, grid_rows(rows), BLOCK, 0, work, p, rows, a->lk, a->scale);
    for (int64_t i = 0; i < g.calls; i++) {
        if (dq && /* dq_h += dS k_h */
            !pairs_gemm(false, false, a->lq, a->d, a->lk, 1.0f, blocks_of(work, a, g, i),
                        heads_of(k, a, g, i, a->lk), 1.0f, heads_of(dq, a, g, i, a->lq), g))
            return;
        if (dk && /* dk_h += dS^T q_h */
            !pairs_gemm(true, false, a->lk, a->d, a->lq, 1.0f, blocks_of(work, a, g, i),
                        heads_of(q, a, g, i, a->lq), 1.0f, heads_of(dk, a, g, i, a->lk), g))
            return;
    }
}
