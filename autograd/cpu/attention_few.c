/* The attention forward of at most CPU_ATTENTION_FEW_QUERIES queries per
 * (sample, head) pair: a decoder's new token (one per beam) against its
 * cached keys or an image's tokens. attention.c packs a pair's keys and
 * values into tiles first, which pays for itself over many query rows; for
 * one it was most of the time (BLIP's cross-attention repacked 577 image
 * tokens per head at every step). Here the keys and values are read where
 * they lie: each score a dot product over a head's contiguous channels, P v
 * an accumulation of value rows.
 *
 * A work item is a sample's group of heads, walking the keys' and values'
 * rows in order across the group's channels (a single head's 4 d bytes
 * every heads * d floats defeated the hardware prefetcher); groups split the
 * heads only so that a small batch still feeds every thread. Every head's
 * sums are formed by the same code in the same order whatever the group,
 * the batch or the thread count: a sample's result does not depend on them.
 * Built once per ISA (isa.h). */
#include "attention_few.h"
#include "softmax_row.h"
#include "vec.h"

#include <omp.h>
#include <string.h>

/* Keys ahead whose rows are prefetched. */
#define AHEAD 8

/* A thread's scratch: per row r = (head in group) * lq + query, the scaled
 * query [dp], the scores [lkp], the output's sums [dp] and the scale of
 * softmax. */
typedef struct {
    int64_t lkp, dp;
    float *q, *s, *o, *inv;
} slot;

static slot slot_at(const cpu_attention_dims *a, float *work, int thread, int64_t *floats) {
    slot s = {.lkp = round_to(a->lk, VB), .dp = round_to(a->d, VB)};
    int64_t rows = (int64_t)a->heads * a->lq, n = rows * (s.lkp + 2 * s.dp + 1);
    if (floats)
        *floats = n;
    if (work) {
        s.q = work + thread * n;
        s.s = s.q + rows * s.dp;
        s.o = s.s + rows * s.lkp;
        s.inv = s.o + rows * s.dp;
    }
    return s;
}

/* Heads per sample split into this many groups (work items per sample). */
static int groups_of(const cpu_attention_dims *a, int threads) {
    int64_t g = (threads + a->n - 1) / a->n;
    return (int)(g < a->heads ? g : a->heads);
}

/* Prefetch the n floats from p, a line at a time. */
static inline void prefetch(const float *p, int n) {
    for (int t = 0; t < n; t += 64 / (int)sizeof(float))
        __builtin_prefetch(p + t);
}

/* s[u] = q . k[u] over d channels for 4 keys: a vector of lanes over the
 * whole vectors in order, the lanes added as a tree, then the channels left
 * one by one; a key's score is the same bits in any call. */
static void dots4(float s[4], const float *q, const float *const k[4], int d) {
    vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int t = 0;
    for (; t + VB <= d; t += VB) {
        vf x = load(q + t);
        a0 += x * load(k[0] + t), a1 += x * load(k[1] + t);
        a2 += x * load(k[2] + t), a3 += x * load(k[3] + t);
    }
    s[0] = lanes_sum(a0), s[1] = lanes_sum(a1), s[2] = lanes_sum(a2), s[3] = lanes_sum(a3);
    for (; t < d; t++)
        for (int u = 0; u < 4; u++)
            s[u] += q[t] * k[u][t];
}

/* The scores of `rows` query rows (w.q; row r of head r / lq) against the
 * keys k [lk, c] (the group's first head at k), 4 keys at a time (a short
 * last block repeats its last key). */
static void scores(const slot *w, int rows, int lq, const float *k, int64_t c, int lk, int d,
                   int width) {
    for (int j = 0; j < lk; j += 4) {
        const float *kr[4];
        for (int u = 0; u < 4; u++) {
            kr[u] = k + (j + u < lk ? j + u : lk - 1) * c;
            prefetch(k + (j + u + AHEAD < lk ? j + u + AHEAD : lk - 1) * c, width);
        }
        for (int r = 0; r < rows; r++) {
            int64_t h = r / lq * d;
            const float *kh[4] = {kr[0] + h, kr[1] + h, kr[2] + h, kr[3] + h};
            float s[4];
            dots4(s, w->q + r * w->dp, kh, d);
            for (int u = 0; u < 4 && j + u < lk; u++)
                w->s[r * w->lkp + j + u] = s[u];
        }
    }
}

/* w.o's rows = P's rows (p, ldp apart) times v [lk, c] (the group's first
 * head at v): value row after value row, each sum over j in order. */
static void p_times_v(const slot *w, int rows, int lq, const float *p, int64_t ldp,
                      const float *v, int64_t c, int lk, int d, int width) {
    memset(w->o, 0, (size_t)(rows * w->dp) * sizeof(float));
    int whole = d / VB * VB;
    for (int j = 0; j < lk; j++) {
        const float *vr = v + j * c;
        prefetch(v + (j + AHEAD < lk ? j + AHEAD : lk - 1) * c, width);
        for (int r = 0; r < rows; r++) {
            const float *vh = vr + r / lq * d;
            float x = p[r * ldp + j], *o = w->o + r * w->dp;
            for (int t = 0; t < whole; t += VB)
                store(o + t, load(o + t) + x * load(vh + t));
            for (int t = whole; t < d; t++)
                o[t] += x * vh[t];
        }
    }
}

/* Heads h0 .. h1 - 1 of sample n. */
static void few_item(const cpu_attention_dims *a, float *out, float *p, const float *q,
                     const float *k, const float *v, float *work, int64_t n, int h0, int h1,
                     int thread) {
    slot w = slot_at(a, work, thread, NULL);
    int lq = a->lq, lk = a->lk, d = a->d, rows = (h1 - h0) * lq, width = (h1 - h0) * d;
    int64_t c = (int64_t)a->heads * d, kv0 = n * lk * c + (int64_t)h0 * d;
    for (int r = 0; r < rows; r++) {
        const float *src = q + (n * lq + r % lq) * c + (int64_t)(h0 + r / lq) * d;
        for (int t = 0; t < d; t++)
            w.q[r * w.dp + t] = a->scale * src[t];
    }
    scores(&w, rows, lq, k + kv0, c, lk, d, width);
    /* P's rows: kept ([N, heads, Lq, Lk]: the group's rows follow each
     * other), or in place of the scores */
    float *pr = p ? p + (n * a->heads + h0) * lq * lk : w.s;
    int64_t ldp = p ? lk : w.lkp;
    for (int r = 0; r < rows; r++)
        w.inv[r] = exp_row(pr + r * ldp, w.s + r * w.lkp,
                           a->causal ? r % lq + 1 + lk - lq : lk, lk);
    p_times_v(&w, rows, lq, pr, ldp, v + kv0, c, lk, d, width);
    for (int r = 0; r < rows; r++) {
        float *dst = out + (n * lq + r % lq) * c + (int64_t)(h0 + r / lq) * d;
        for (int t = 0; t < d; t++)
            dst[t] = w.o[r * w.dp + t] * w.inv[r];
        if (p)
            for (int j = 0; j < lk; j++)
                pr[r * ldp + j] *= w.inv[r];
    }
}

int64_t CPU_ISA_FN(cpu_attention_few_scratch)(const cpu_attention_dims *a, int threads) {
    int64_t n;
    slot_at(a, NULL, 0, &n);
    return threads * n;
}

void CPU_ISA_FN(cpu_attention_few_forward)(const cpu_attention_dims *a, int threads, float *out,
                                           float *p, const float *q, const float *k,
                                           const float *v, float *work) {
    int groups = groups_of(a, threads);
    int64_t items = a->n * groups;
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
    for (int64_t i = 0; i < items; i++) {
        int g = (int)(i % groups);
        few_item(a, out, p, q, k, v, work, i / groups, a->heads * g / groups,
                 a->heads * (g + 1) / groups, omp_get_thread_num());
    }
}
