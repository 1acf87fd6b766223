/* CUDA multi-head attention (see attention.h): for each head, batched over
 * the samples, S = scale q_h k_h^T (cuBLASLt) into P [N, heads, Lq, Lk], a
 * row softmax in place (the causal mask applied there), out_h = P v_h. Head
 * slices are read in place: leading dimension C, as the CPU kernels do.
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
 * keys past the query masked to 0 when causal. */
__global__ static void attn_softmax(float *p, int64_t rows, int lq, int lk, bool causal) {
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        float *pr = p + r * lk;
        int last = causal ? (int)(r % lq) : lk - 1; /* keys 0..last are seen */
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

/* Head h's slice of a [N, L, C] tensor: [L, d] with leading dimension C. */
static gemm_operand head(const float *x, const cpu_attention_dims *a, int h, int L) {
    int64_t C = (int64_t)a->heads * a->d;
    return gemm_operand{x + (int64_t)h * a->d, C, (int64_t)L * C};
}

/* Head h's [Lq, Lk] block of P [N, heads, Lq, Lk]. */
static gemm_operand pblock(const float *p, const cpu_attention_dims *a, int h) {
    int64_t block = (int64_t)a->lq * a->lk;
    return gemm_operand{p + h * block, a->lk, a->heads * block};
}

extern "C" void cuda_attention_forward(const cpu_attention_dims *a, float *out, float *p,
                                       const float *q, const float *k, const float *v,
                                       bool keep_p) {
    (void)keep_p; /* P is whole on the GPU either way */
    int64_t C = (int64_t)a->heads * a->d, rows = a->n * a->heads * (int64_t)a->lq;
    for (int h = 0; h < a->heads; h++) {
        gemm_operand P = pblock(p, a, h);
        if (!gemm_ex(false, true, a->lq, a->lk, a->d, a->scale, head(q, a, h, a->lq),
                     head(k, a, h, a->lk), 0.0f, (float *)P.p, P.ld, P.stride, a->n, NULL))
            return;
    }
    LAUNCH(attn_softmax, grid_rows(rows), BLOCK, 0, p, rows, a->lq, a->lk, a->causal);
    for (int h = 0; h < a->heads; h++) {
        gemm_operand O = head(out, a, h, a->lq);
        if (!gemm_ex(false, false, a->lq, a->d, a->lk, 1.0f, pblock(p, a, h), head(v, a, h, a->lk),
                     0.0f, (float *)O.p, C, O.stride, a->n, NULL))
            return;
    }
}

extern "C" void cuda_attention_backward(const cpu_attention_dims *a, const float *dout,
                                        const float *p, const float *q, const float *k,
                                        const float *v, float *dq, float *dk, float *dv,
                                        float *work) {
    int64_t C = (int64_t)a->heads * a->d, rows = a->n * a->heads * (int64_t)a->lq;
    for (int h = 0; h < a->heads && dv; h++) { /* dv_h += P^T dout_h */
        gemm_operand D = head(dv, a, h, a->lk);
        if (!gemm_ex(true, false, a->lk, a->d, a->lq, 1.0f, pblock(p, a, h),
                     head(dout, a, h, a->lq), 1.0f, (float *)D.p, C, D.stride, a->n, NULL))
            return;
    }
    if (!dq && !dk)
        return;
    for (int h = 0; h < a->heads; h++) { /* dP_h = dout_h v_h^T */
        gemm_operand W = pblock(work, a, h);
        if (!gemm_ex(false, true, a->lq, a->lk, a->d, 1.0f, head(dout, a, h, a->lq),
                     head(v, a, h, a->lk), 0.0f, (float *)W.p, W.ld, W.stride, a->n, NULL))
            return;
    }
    LAUNCH(attn_softmax_bwd, grid_rows(rows), BLOCK, 0, work, p, rows, a->lk, a->scale);
    for (int h = 0; h < a->heads; h++) {
        if (dq) { /* dq_h += dS k_h */
            gemm_operand D = head(dq, a, h, a->lq);
            if (!gemm_ex(false, false, a->lq, a->d, a->lk, 1.0f, pblock(work, a, h),
                         head(k, a, h, a->lk), 1.0f, (float *)D.p, C, D.stride, a->n, NULL))
                return;
        }
        if (dk) { /* dk_h += dS^T q_h */
            gemm_operand D = head(dk, a, h, a->lk);
            if (!gemm_ex(true, false, a->lk, a->d, a->lq, 1.0f, pblock(work, a, h),
                         head(q, a, h, a->lq), 1.0f, (float *)D.p, C, D.stride, a->n, NULL))
                return;
        }
    }
}
