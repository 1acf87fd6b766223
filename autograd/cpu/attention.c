/* CPU kernels for multi-head attention: per (n, head) pair, sgemm calls on the
 * head slices in place (leading dimension C) around a row-wise softmax.
 *
 * Forward: the work items are chunks of a fixed number of queries of one
 * pair, each on one thread with one-threaded GEMMs (cpu_blas_each), so that
 * a sample meets the same GEMM calls in any batch (OpenBLAS's bits depend on
 * a call's shape and threads), and even one pair keeps every thread busy.
 *
 * Backward: when there are at least as many pairs as OpenMP threads, the
 * pairs run in parallel, one thread each, with OpenBLAS held to one thread so
 * the two thread pools do not oversubscribe the cores. Otherwise (few pairs:
 * small batch, one head) the pairs run one after another, each product
 * threaded by OpenBLAS and the softmax rows by OpenMP. */
#include "attention.h"
#include "gemm.h"
#include "isa.h"

#include <cblas.h>
#include "vmath.h"
#include <omp.h>

/* Queries per forward work item. */
#define QUERY_CHUNK 64

/* The backward work of one pair bh = n * heads + h; slot is the pair's [Lq, Lk]
 * scratch (NULL when the call needs none). */
typedef void (*pair_fn)(const void *job, int64_t bh, float *slot, bool rows_parallel);

typedef struct {
    const cpu_attention_dims *a;
    float *out, *p; /* p: all of P when kept, else [threads, QUERY_CHUNK, Lk] of scratch */
    const float *q, *k, *v;
    bool keep_p;
    int chunks; /* query chunks per pair */
} forward_job;

typedef struct {
    const cpu_attention_dims *a;
    const float *dout, *p, *q, *k, *v;
    float *dq, *dk, *dv;
} backward_job;

/* Pairs that run at once: every thread when the pairs can fill them, else one. */
static int pair_threads(const cpu_attention_dims *a) {
    int t = omp_get_max_threads();
    return a->n * a->heads >= t ? t : 1;
}

static int query_chunk(const cpu_attention_dims *a) {
    return a->lq > 0 && a->lq < QUERY_CHUNK ? a->lq : QUERY_CHUNK;
}

int64_t CPU_ISA_FN(cpu_attention_scratch)(const cpu_attention_dims *a) {
    int64_t forward = (int64_t)omp_get_max_threads() * query_chunk(a) * a->lk;
    int64_t backward = (int64_t)pair_threads(a) * a->lq * a->lk;
    return forward > backward ? forward : backward;
}

static void run_pairs(const cpu_attention_dims *a, pair_fn fn, const void *job, float *scratch) {
    int64_t pairs = a->n * a->heads, lqk = (int64_t)a->lq * a->lk;
    int threads = pair_threads(a);
    if (threads == 1) {
        for (int64_t bh = 0; bh < pairs; bh++)
            fn(job, bh, scratch, true);
        return;
    }
    int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t bh = 0; bh < pairs; bh++)
        fn(job, bh, scratch ? scratch + omp_get_thread_num() * lqk : NULL, false);
    openblas_set_num_threads(blas_threads);
}

/* Where pair bh starts: its first element in q, out and dout; and in k and v. */
static void pair_offsets(const cpu_attention_dims *a, int64_t bh, int64_t *qo, int64_t *kvo) {
    int64_t c = (int64_t)a->heads * a->d, n = bh / a->heads, h = bh % a->heads;
    *qo = n * a->lq * c + h * a->d;
    *kvo = n * a->lk * c + h * a->d;
}

/* Scores to probabilities, row by row of p [rows, Lk] (queries i0 ..). The
 * row max is subtracted so exp never overflows; masked keys get exactly 0,
 * and a causal row always keeps key i + Lk - Lq, so no row is empty. */
static void softmax_rows(float *p, int i0, int rows, const cpu_attention_dims *a) {
    for (int r = 0; r < rows; r++) {
        float *row = p + (int64_t)r * a->lk;
        int keep = a->causal ? i0 + r + 1 + a->lk - a->lq : a->lk;
        float max = row[0], sum = 0.0f;
#pragma omp simd reduction(max : max)
        for (int j = 1; j < keep; j++)
            max = row[j] > max ? row[j] : max;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < keep; j++) {
            row[j] = expf(row[j] - max);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < keep; j++)
            row[j] *= inv;
        for (int j = keep; j < a->lk; j++)
            row[j] = 0.0f;
    }
}

/* dP to dS in place: dS = P * (dP - rowsum(dP * P)), the softmax's gradient. */
static void softmax_backward_rows(float *dp, const float *p, const cpu_attention_dims *a,
                                  bool parallel) {
#pragma omp parallel for if (parallel)
    for (int i = 0; i < a->lq; i++) {
        float *g = dp + (int64_t)i * a->lk;
        const float *pr = p + (int64_t)i * a->lk;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < a->lk; j++)
            dot += g[j] * pr[j];
#pragma omp simd
        for (int j = 0; j < a->lk; j++)
            g[j] = pr[j] * (g[j] - dot);
    }
}

/* Work item i: query chunk i % chunks of pair i / chunks. */
static void forward_chunk(void *job, int64_t i, int thread) {
    const forward_job *f = job;
    const cpu_attention_dims *a = f->a;
    int c = a->heads * a->d, chunk = query_chunk(a), i0 = (int)(i % f->chunks) * chunk;
    int rows = a->lq - i0 < chunk ? a->lq - i0 : chunk;
    int64_t bh = i / f->chunks, qo, kvo;
    pair_offsets(a, bh, &qo, &kvo);
    qo += (int64_t)i0 * c;
    float *p = f->keep_p ? f->p + (bh * a->lq + i0) * a->lk
                         : f->p + (int64_t)thread * chunk * a->lk;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, a->lk, a->d, a->scale, f->q + qo,
                c, f->k + kvo, c, 0.0f, p, a->lk);
    softmax_rows(p, i0, rows, a);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, a->d, a->lk, 1.0f, p, a->lk,
                f->v + kvo, c, 0.0f, f->out + qo, c);
}

void CPU_ISA_FN(cpu_attention_forward)(const cpu_attention_dims *a, float *out, float *p,
                                       const float *q, const float *k, const float *v,
                                       bool keep_p) {
    int chunk = query_chunk(a);
    forward_job f = {a, out, p, q, k, v, keep_p, (a->lq + chunk - 1) / chunk};
    cpu_blas_each(a->n * a->heads * f.chunks, omp_get_max_threads(), forward_chunk, &f);
}

/* dV += P^T dO; dS = softmax'(dO V^T); dQ += dS K * scale; dK += dS^T Q * scale.
 * Each product adds into its own pair's slice, so aliased gradient buffers
 * (q, k, v one tensor) are only ever touched by one thread at a time. */
static void backward_pair(const void *job, int64_t bh, float *slot, bool rows_parallel) {
    const backward_job *b = job;
    const cpu_attention_dims *a = b->a;
    int c = a->heads * a->d;
    int64_t qo, kvo;
    pair_offsets(a, bh, &qo, &kvo);
    const float *p = b->p + bh * a->lq * a->lk;
    if (b->dv)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, a->lk, a->d, a->lq, 1.0f, p, a->lk,
                    b->dout + qo, c, 1.0f, b->dv + kvo, c);
    if (!b->dq && !b->dk)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, a->lq, a->lk, a->d, 1.0f, b->dout + qo,
                c, b->v + kvo, c, 0.0f, slot, a->lk);
    softmax_backward_rows(slot, p, a, rows_parallel);
    if (b->dq)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, a->lq, a->d, a->lk, a->scale, slot,
                    a->lk, b->k + kvo, c, 1.0f, b->dq + qo, c);
    if (b->dk)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, a->lk, a->d, a->lq, a->scale, slot,
                    a->lk, b->q + qo, c, 1.0f, b->dk + kvo, c);
}

void CPU_ISA_FN(cpu_attention_backward)(const cpu_attention_dims *a, const float *dout,
                                        const float *p, const float *q, const float *k,
                                        const float *v, float *dq, float *dk, float *dv,
                                        float *work) {
    backward_job b = {a, dout, p, q, k, v, dq, dk, dv};
    run_pairs(a, backward_pair, &b, dq || dk ? work : NULL);
}
