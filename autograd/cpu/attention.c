/* CPU kernels for multi-head attention, one (sample, head) pair at a time and
 * no BLAS: with a head dimension of 8 to 64 the products are too thin for
 * sgemm, whose packing, zeroing (beta = 0) and per-call costs took most of
 * the time at UNet shapes (d = 16, L = 256: 12 GFLOP/s on one AVX-512 core).
 *
 * A work item first packs what its pair multiplies into contiguous blocks,
 * zero-padded to whole vectors of VB floats (the width of the ISA this file
 * is built for; a forward item finding its pair's keys and values already
 * packed in its thread's slot, by the chunk before, keeps them: at 4096
 * queries and keys repacking them for every chunk took half the time);
 * every product is then one of two register-blocked loops
 * over GCC vector types, RB = 4 rows at a time, eight sums in registers so
 * that two FMA units of four cycles' latency stay busy: rows times a
 * transposed block (dP) and rows times a block (dS k, and, with columns of
 * P and dS as the rows, P^T dout and dS^T q). The forward's scores and P v
 * have loops of their own, FRB rows at a time (8 with AVX-512's 32
 * registers), the keys in tiles of 2 VB. The rows of a
 * pair are computed by the same code in the same order whatever the batch,
 * the thread count or the work split: a sample's result does not depend on
 * its batch.
 *
 * Threading: forward items are (pair, chunk of QUERY_CHUNK queries), so even
 * one pair keeps every thread busy; backward items are whole pairs, each on
 * one thread, with the pair's dS [Lq, Lk] in its scratch.
 *
 * The forward of pairs of at most CPU_ATTENTION_FEW_QUERIES queries (a
 * decoder's new tokens), for which packing costs more than it saves, is
 * attention_few.c's. */
#include "attention.h"
#include "attention_few.h"
#include "parallel.h"
#include "softmax_row.h"
#include "vec.h"

#include <omp.h>
#include <string.h>

#define RB 4           /* query rows per block (the products spell out 4) */
/* The forward pass's rows per block and most vectors of channels per P v
 * product: with AVX-512's 32 registers, 8 rows x 3 vectors of sums (a head
 * of 40 channels is 3 vectors) and the 3 vectors of v, reading k and v from
 * L2 half as often as 4 rows did; 4 x 2 in the 16 registers of AVX2 and SSE. */
#if VB == 16
#define FRB 8
#define FNV 3
#else
#define FRB 4
#define FNV 2
#endif
#define QUERY_CHUNK 64 /* queries per forward work item */

/* Built once per ISA: the entry points carry the pass's suffix (isa.h). */
#include "isa.h"

/* A thread's scratch: packed operands [rows, width] and row blocks. */
typedef struct {
    int64_t lkp, dp, lqr; /* lk, d rounded up for the vectors, lq to whole blocks */
    float *kt;            /* [d, lkp]: v transposed (backward); k in tiles (forward, pack_tiles) */
    float *kv;            /* [lk, dp]: v (forward) or k (backward) */
    float *g, *q;         /* [lqr, dp]: the pair's dout and q (backward) */
    float *s;             /* [FRB, lkp] scores (forward); [lqr, lkp] dS (backward) */
    float *a, *o;         /* [FRB, dp]: query rows (forward), output rows */
} slot;

/* Thread `thread`'s slot; *floats (when not NULL) gets the floats a slot takes. */
static slot slot_at(const cpu_attention_dims *a, float *work, int thread, bool backward,
                    int64_t *floats) {
    slot s = {.lkp = round_to(a->lk, 2 * VB), .dp = round_to(a->d, VB), .lqr = round_to(a->lq, RB)};
    int64_t rows = backward ? s.lqr : FRB;
    int64_t n = a->d * s.lkp + a->lk * s.dp + (backward ? 2 * s.lqr * s.dp : 0) + rows * s.lkp +
                2 * FRB * s.dp;
    if (floats)
        *floats = n;
    if (!work)
        return s;
    float *w = work + thread * n;
    s.kt = w, w += a->d * s.lkp;
    s.kv = w, w += a->lk * s.dp;
    if (backward) {
        s.g = w, w += s.lqr * s.dp;
        s.q = w, w += s.lqr * s.dp;
    }
    s.s = w, w += rows * s.lkp;
    s.a = w, w += FRB * s.dp;
    s.o = w;
    return s;
}

static int threads_for(const cpu_attention_dims *a) {
    return (int64_t)a->n * a->heads * a->lq * a->lk * a->d >= CPU_PAR_MIN ? omp_get_max_threads()
                                                                          : 1;
}

/* Where pair bh starts: its first element in q, out and dout; and in k and v. */
static void pair_offsets(const cpu_attention_dims *a, int64_t bh, int64_t *qo, int64_t *kvo) {
    int64_t c = (int64_t)a->heads * a->d, n = bh / a->heads, h = bh % a->heads;
    *qo = n * a->lq * c + h * a->d;
    *kvo = n * a->lk * c + h * a->d;
}

/* dst [d, lkp] = src [rows, d] (leading dimension ld) transposed, zero-padded. */
static void pack_transposed(float *dst, const float *src, int64_t ld, int rows, int d,
                            int64_t lkp) {
    for (int t = 0; t < d; t++) {
        float *row = dst + t * lkp;
        for (int j = 0; j < rows; j++)
            row[j] = src[(int64_t)j * ld + t];
        for (int64_t j = rows; j < lkp; j++)
            row[j] = 0.0f;
    }
}

/* dst [lkp / 2VB, d, 2VB] = src [rows, d] (leading dimension ld) in tiles of
 * 2VB keys transposed, zero-padded: each block of scores reads one
 * contiguous tile (rows of the whole transpose, 4 lkp bytes apart, fell in
 * the same few L1 sets and missed at every step of t). */
static void pack_tiles(float *dst, const float *src, int64_t ld, int rows, int d, int64_t lkp) {
    for (int64_t j0 = 0; j0 < lkp; j0 += 2 * VB) {
        float *tile = dst + j0 * d;
        int have = rows - j0 < 2 * VB ? (int)(rows - j0) : 2 * VB;
        for (int u = 0; u < have; u++) /* each key's channels read in a row */
            for (int t = 0; t < d; t++)
                tile[t * 2 * VB + u] = src[(j0 + u) * ld + t];
        for (int t = 0; have < 2 * VB && t < d; t++)
            for (int u = have; u < 2 * VB; u++)
                tile[t * 2 * VB + u] = 0.0f;
    }
}

/* dst [rows, dp] = alpha * src [rows, d] (leading dimension ld), zero-padded;
 * rows past `have` are zero. */
static void pack_rows(float *dst, const float *src, int64_t ld, int have, int64_t rows, int d,
                      int64_t dp, float alpha) {
    for (int64_t j = 0; j < rows; j++) {
        float *row = dst + j * dp;
        int t = 0;
        if (j < have) {
#pragma omp simd
            for (t = 0; t < d; t++)
                row[t] = alpha * src[j * ld + t];
        }
        for (; t < dp; t++)
            row[t] = 0.0f;
    }
}

/* dx [rows, d] (leading dimension ld) += alpha * src [rows, dp]. */
static void add_rows(float *dx, int64_t ld, const float *src, int rows, int d, int64_t dp,
                     float alpha) {
    for (int j = 0; j < rows; j++)
        for (int t = 0; t < d; t++)
            dx[(int64_t)j * ld + t] += alpha * src[j * dp + t];
}

/* RB pointers from `first`, `step` apart, for `have` rows; the missing rows
 * repeat the last one (their results are dropped). */
static void block_rows(const float *p[RB], const float *first, int64_t step, int have) {
    for (int u = 0; u < RB; u++)
        p[u] = first + (u < have ? u : have - 1) * step;
}

typedef struct {
    const cpu_attention_dims *a;
    float *out, *p, *work;
    const float *q, *k, *v;
    int chunks;      /* query chunks per pair */
    int64_t *packed; /* [threads] the pair whose k and v a thread's slot holds, or -1 */
} forward_job;

typedef struct {
    const cpu_attention_dims *a;
    const float *dout, *p, *q, *k, *v;
    float *dq, *dk, *dv, *work;
} backward_job;

/* s [RB, lkp] = a [RB, dp] times bt [d, lkp]: s[u][j] = sum_t a[u][t] bt[t][j],
 * two vectors of j at a time. */
static void rows_times_packed_t(float *s, const float *a, int64_t dp,
                                             const float *bt, int d, int64_t lkp) {
    for (int64_t j = 0; j < lkp; j += 2 * VB) {
        vf s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, t0 = {0}, t1 = {0}, t2 = {0}, t3 = {0};
        for (int t = 0; t < d; t++) {
            vf b = load(bt + t * lkp + j), c = load(bt + t * lkp + j + VB);
            float a0 = a[t], a1 = a[dp + t], a2 = a[2 * dp + t], a3 = a[3 * dp + t];
            s0 += a0 * b, s1 += a1 * b, s2 += a2 * b, s3 += a3 * b;
            t0 += a0 * c, t1 += a1 * c, t2 += a2 * c, t3 += a3 * c;
        }
        store(s + j, s0), store(s + j + VB, t0);
        store(s + lkp + j, s1), store(s + lkp + j + VB, t1);
        store(s + 2 * lkp + j, s2), store(s + 2 * lkp + j + VB, t2);
        store(s + 3 * lkp + j, s3), store(s + 3 * lkp + j + VB, t3);
    }
}

/* o [RB, dp] = p [RB rows, n] times b [n, dp], the rows' elements es apart:
 * two vectors of channels at a time while they last (each p broadcast feeds
 * two FMAs), then the last vector with even and odd j added up apart. */
static void rows_times_packed(float *o, const float *const p[RB], int64_t es, int n,
                                           const float *b, int64_t dp) {
    const float *p0 = p[0], *p1 = p[1], *p2 = p[2], *p3 = p[3];
    int64_t t = 0;
    for (; t + 2 * VB <= dp; t += 2 * VB) {
        vf e0 = {0}, e1 = {0}, e2 = {0}, e3 = {0}, o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
        for (int j = 0; j < n; j++) {
            vf be = load(b + (int64_t)j * dp + t), bo = load(b + (int64_t)j * dp + t + VB);
            float q0 = p0[j * es], q1 = p1[j * es], q2 = p2[j * es], q3 = p3[j * es];
            e0 += q0 * be, e1 += q1 * be, e2 += q2 * be, e3 += q3 * be;
            o0 += q0 * bo, o1 += q1 * bo, o2 += q2 * bo, o3 += q3 * bo;
        }
        store(o + t, e0), store(o + t + VB, o0);
        store(o + dp + t, e1), store(o + dp + t + VB, o1);
        store(o + 2 * dp + t, e2), store(o + 2 * dp + t + VB, o2);
        store(o + 3 * dp + t, e3), store(o + 3 * dp + t + VB, o3);
    }
    if (t == dp)
        return;
    vf e0 = {0}, e1 = {0}, e2 = {0}, e3 = {0}, o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
    int j = 0;
    for (; j + 1 < n; j += 2) {
        vf be = load(b + (int64_t)j * dp + t), bo = load(b + (int64_t)(j + 1) * dp + t);
        int64_t je = j * es, jo = je + es;
        e0 += p0[je] * be, e1 += p1[je] * be, e2 += p2[je] * be, e3 += p3[je] * be;
        o0 += p0[jo] * bo, o1 += p1[jo] * bo, o2 += p2[jo] * bo, o3 += p3[jo] * bo;
    }
    if (j < n) {
        vf be = load(b + (int64_t)j * dp + t);
        int64_t je = j * es;
        e0 += p0[je] * be, e1 += p1[je] * be, e2 += p2[je] * be, e3 += p3[je] * be;
    }
    store(o + t, e0 + o0);
    store(o + dp + t, e1 + o1);
    store(o + 2 * dp + t, e2 + o2);
    store(o + 3 * dp + t, e3 + o3);
}

/* s [FRB, lkp] = a [FRB, dp] times the keys of tiles (pack_tiles, d
 * channels): each sum over t in order, as rows_times_packed_t forms it. */
static void block_scores(float *s, const float *a, int64_t dp, const float *tiles, int d,
                         int64_t lkp) {
    for (int64_t j = 0; j < lkp; j += 2 * VB) {
        const float *tile = tiles + j * d;
        vf e[FRB], o[FRB];
#pragma GCC unroll 8
        for (int u = 0; u < FRB; u++)
            e[u] = o[u] = (vf){0};
        for (int t = 0; t < d; t++) {
            vf b = load(tile + t * 2 * VB), c = load(tile + t * 2 * VB + VB);
#pragma GCC unroll 8
            for (int u = 0; u < FRB; u++) {
                float x = a[u * dp + t];
                e[u] += x * b, o[u] += x * c;
            }
        }
#pragma GCC unroll 8
        for (int u = 0; u < FRB; u++)
            store(s + u * lkp + j, e[u]), store(s + u * lkp + j + VB, o[u]);
    }
}

/* o [FRB, dp] (channels t0 to t0 + NV vectors) = p [FRB rows, n] times b [n, dp]. */
static inline __attribute__((always_inline)) void block_pv_cols(float *o, const float *const p[FRB],
                                                                int n, const float *b, int64_t dp,
                                                                int64_t t0, const int nv) {
    vf acc[FRB][FNV];
#pragma GCC unroll 8
    for (int u = 0; u < FRB; u++)
#pragma GCC unroll 4
        for (int v = 0; v < FNV; v++)
            acc[u][v] = (vf){0};
    for (int j = 0; j < n; j++) {
        vf bv[FNV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            bv[v] = load(b + (int64_t)j * dp + t0 + v * VB);
#pragma GCC unroll 8
        for (int u = 0; u < FRB; u++) {
            float x = p[u][j];
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++)
                acc[u][v] += x * bv[v];
        }
    }
#pragma GCC unroll 8
    for (int u = 0; u < FRB; u++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            store(o + u * dp + t0 + v * VB, acc[u][v]);
}

/* o [FRB, dp] = p [FRB rows, n] times b [n, dp], FNV vectors of channels at
 * a time (each p broadcast feeds that many FMAs), every sum over j in order. */
static void block_pv(float *o, const float *const p[FRB], int n, const float *b, int64_t dp) {
    int64_t t = 0;
    for (; t + FNV * VB <= dp; t += FNV * VB)
        block_pv_cols(o, p, n, b, dp, t, FNV);
    for (; t < dp; t += VB)
        block_pv_cols(o, p, n, b, dp, t, 1);
}

/* dS = P (dP - rowsum(dP P)) in place over one row; the scale waits for
 * the products that use dS. */
static void softmax_backward_row(float *g, const float *p, int lk) {
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < lk; j++)
        dot += g[j] * p[j];
#pragma omp simd
    for (int j = 0; j < lk; j++)
        g[j] = p[j] * (g[j] - dot);
}

/* Work item i: query chunk i % chunks of pair i / chunks. */
static void forward_item(const forward_job *f, int64_t i, int thread) {
    const cpu_attention_dims *a = f->a;
    slot w = slot_at(a, f->work, thread, false, NULL);
    int64_t c = (int64_t)a->heads * a->d, bh = i / f->chunks, qo, kvo;
    int first = (int)(i % f->chunks) * QUERY_CHUNK;
    int last = first + QUERY_CHUNK < a->lq ? first + QUERY_CHUNK : a->lq;
    pair_offsets(a, bh, &qo, &kvo);
    if (f->packed[thread] != bh) { /* a thread's next chunk is mostly of the same pair */
        pack_tiles(w.kt, f->k + kvo, c, a->lk, a->d, w.lkp);
        pack_rows(w.kv, f->v + kvo, c, a->lk, a->lk, a->d, w.dp, 1.0f);
        f->packed[thread] = bh;
    }
    for (int i0 = first; i0 < last; i0 += FRB) {
        int rows = last - i0 < FRB ? last - i0 : FRB;
        pack_rows(w.a, f->q + qo + i0 * c, c, rows, FRB, a->d, w.dp, a->scale);
        block_scores(w.s, w.a, w.dp, w.kt, a->d, w.lkp);
        /* P's rows: kept, or in place in the row block without a tape */
        float *p = f->p ? f->p + (bh * a->lq + i0) * a->lk : w.s, inv[FRB];
        int64_t ldp = f->p ? a->lk : w.lkp;
        for (int u = 0; u < rows; u++)
            inv[u] = exp_row(p + u * ldp, w.s + u * w.lkp,
                             a->causal ? i0 + u + 1 + a->lk - a->lq : a->lk, a->lk);
        const float *pr[FRB];
        for (int u = 0; u < FRB; u++)
            pr[u] = p + (u < rows ? u : rows - 1) * ldp;
        block_pv(w.o, pr, a->lk, w.kv, w.dp);
        for (int u = 0; u < rows; u++) {
            float *dst = f->out + qo + (i0 + u) * c;
            const float *src = w.o + u * w.dp;
            for (int t = 0; t < a->d; t++)
                dst[t] = src[t] * inv[u];
            if (f->p)
                for (int j = 0; j < a->lk; j++)
                    p[u * ldp + j] *= inv[u];
        }
    }
}

/* sum [cols, d] (leading dimension ld) += alpha * m^T b, RB columns of
 * m [n, cols] (rows es apart) at a time, times b [n, dp]: P^T dout, dS^T q.
 * o: [RB, dp] of scratch. */
static void add_t_times(float *sum, int64_t ld, const float *m, int64_t es, int n,
                                     int cols, const float *b, int d, int64_t dp, float *o,
                                     float alpha) {
    for (int j0 = 0; j0 < cols; j0 += RB) {
        int have = cols - j0 < RB ? cols - j0 : RB;
        const float *col[RB];
        block_rows(col, m + j0, 1, have);
        rows_times_packed(o, col, es, n, b, dp);
        add_rows(sum + (int64_t)j0 * ld, ld, o, have, d, dp, alpha);
    }
}

/* dV += P^T dO; dP = dO V^T; dS = softmax'(dP); dQ += dS K * scale;
 * dK += dS^T Q * scale. Every write is to this pair's slices, so aliased
 * gradient buffers (q, k, v one tensor) are only touched by this thread. */
static void backward_item(const backward_job *b, int64_t bh, int thread) {
    const cpu_attention_dims *a = b->a;
    slot w = slot_at(a, b->work, thread, true, NULL);
    int64_t c = (int64_t)a->heads * a->d, lkp = w.lkp, dp = w.dp, qo, kvo;
    pair_offsets(a, bh, &qo, &kvo);
    const float *pair_p = b->p + bh * a->lq * a->lk;
    pack_rows(w.g, b->dout + qo, c, a->lq, w.lqr, a->d, dp, 1.0f);
    if (b->dv)
        add_t_times(b->dv + kvo, c, pair_p, a->lk, a->lq, a->lk, w.g, a->d, dp, w.o, 1.0f);
    if (!b->dq && !b->dk)
        return;
    pack_transposed(w.kt, b->v + kvo, c, a->lk, a->d, lkp);
    pack_rows(w.kv, b->k + kvo, c, a->lk, a->lk, a->d, dp, 1.0f);
    for (int i0 = 0; i0 < a->lq; i0 += RB) {
        int rows = a->lq - i0 < RB ? a->lq - i0 : RB;
        float *ds = w.s + i0 * lkp;
        rows_times_packed_t(ds, w.g + i0 * dp, dp, w.kt, a->d, lkp);
        for (int u = 0; u < rows; u++)
            softmax_backward_row(ds + u * lkp, pair_p + (int64_t)(i0 + u) * a->lk, a->lk);
        if (b->dq) {
            const float *dr[RB];
            block_rows(dr, ds, lkp, rows);
            rows_times_packed(w.o, dr, 1, a->lk, w.kv, dp);
            add_rows(b->dq + qo + i0 * c, c, w.o, rows, a->d, dp, a->scale);
        }
    }
    if (b->dk) {
        pack_rows(w.q, b->q + qo, c, a->lq, w.lqr, a->d, dp, 1.0f);
        add_t_times(b->dk + kvo, c, w.s, lkp, a->lq, a->lk, w.q, a->d, dp, w.o, a->scale);
    }
}

int64_t CPU_ISA_FN(cpu_attention_forward_scratch)(const cpu_attention_dims *a, bool keep_p) {
    (void)keep_p; /* P's rows live in the row block when it is not kept */
    if (a->lq <= CPU_ATTENTION_FEW_QUERIES)
        return CPU_ISA_FN(cpu_attention_few_scratch)(a, threads_for(a));
    int64_t n;
    slot_at(a, NULL, 0, false, &n);
    return threads_for(a) * n;
}

int64_t CPU_ISA_FN(cpu_attention_scratch)(const cpu_attention_dims *a) {
    int64_t n;
    slot_at(a, NULL, 0, true, &n);
    return threads_for(a) * n;
}

void CPU_ISA_FN(cpu_attention_forward)(const cpu_attention_dims *a, float *out, float *p,
                                       const float *q, const float *k, const float *v,
                                       float *work) {
    int threads = threads_for(a);
    if (a->lq <= CPU_ATTENTION_FEW_QUERIES) {
        CPU_ISA_FN(cpu_attention_few_forward)(a, threads, out, p, q, k, v, work);
        return;
    }
    int64_t packed[threads];
    for (int t = 0; t < threads; t++)
        packed[t] = -1;
    forward_job f = {a, out, p, work, q, k, v, (a->lq + QUERY_CHUNK - 1) / QUERY_CHUNK, packed};
    int64_t items = a->n * a->heads * f.chunks;
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < items; i++)
        forward_item(&f, i, omp_get_thread_num());
}

void CPU_ISA_FN(cpu_attention_backward)(const cpu_attention_dims *a, const float *dout,
                                        const float *p, const float *q, const float *k,
                                        const float *v, float *dq, float *dk, float *dv,
                                        float *work) {
    backward_job b = {a, dout, p, q, k, v, dq, dk, dv, work};
    int64_t pairs = a->n * a->heads;
    int threads = threads_for(a);
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
    for (int64_t bh = 0; bh < pairs; bh++)
        backward_item(&b, bh, omp_get_thread_num());
}
