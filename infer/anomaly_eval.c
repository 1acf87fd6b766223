/* Anomaly maps and their evaluation (see anomaly_eval.h). */
#include "anomaly_eval.h"

#include "autograd/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* ---- maps ---- */

/* 1 - cosine similarity of two vectors; 0 when either is zero. */
static double cosine_distance(const float *a, const float *b, int c) {
    double ab = 0, aa = 0, bb = 0;
    for (int k = 0; k < c; k++) {
        ab += (double)a[k] * b[k];
        aa += (double)a[k] * a[k];
        bb += (double)b[k] * b[k];
    }
    return aa > 0 && bb > 0 ? 1 - ab / sqrt(aa * bb) : 0;
}

void dc_feature_distance_add(float *map, int h, int w, const float *fx, const float *fy, int hl, int wl, int c,
                             double weight) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int64_t at = ((int64_t)(y * hl / h) * wl + x * wl / w) * c;
            map[(int64_t)y * w + x] += (float)(weight * cosine_distance(fx + at, fy + at, c));
        }
}

/* scipy's "reflect": index -1 is 0, -2 is 1, n is n - 1 (repeated for kernels wider than the map). */
static int reflect(int i, int n) {
    for (;;) {
        if (i < 0)
            i = -i - 1;
        else if (i >= n)
            i = 2 * n - i - 1;
        else
            return i;
    }
}

/* One pass along rows (stride 1) or columns (stride w): out = k * in. */
static void blur_pass(float *out, const float *in, int h, int w, const double *k, int r, int vertical) {
    int len = vertical ? h : w;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double acc = 0;
            int at = vertical ? y : x;
            for (int d = -r; d <= r; d++) {
                int j = reflect(at + d, len);
                acc += k[d + r] * in[vertical ? (int64_t)j * w + x : (int64_t)y * w + j];
            }
            out[(int64_t)y * w + x] = (float)acc;
        }
}

int dc_gaussian_blur(float *map, int h, int w, double sigma) {
    if (sigma < 0 || !isfinite(sigma))
        return dc_fail("gaussian blur: sigma %g", sigma);
    if (sigma == 0)
        return 0;
    int r = (int)ceil(4 * sigma);
    double *k = malloc((size_t)(2 * r + 1) * sizeof *k), sum = 0;
    float *tmp = malloc((size_t)h * w * sizeof *tmp);
    if (!k || !tmp) {
        free(k);
        free(tmp);
        return dc_fail("gaussian blur: out of memory for a %dx%d map", w, h);
    }
    for (int d = -r; d <= r; d++)
        sum += k[d + r] = exp(-0.5 * d * d / (sigma * sigma));
    for (int d = 0; d <= 2 * r; d++)
        k[d] /= sum;
    blur_pass(tmp, map, h, w, k, r, 0);
    blur_pass(map, tmp, h, w, k, r, 1);
    free(k);
    free(tmp);
    return 0;
}

static int cmp_float_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

double dc_topk_mean(const float *map, int64_t n, int64_t k) {
    if (k <= 1) {
        float m = map[0];
        for (int64_t i = 1; i < n; i++)
            m = map[i] > m ? map[i] : m;
        return m;
    }
    k = k < n ? k : n;
    float *sorted = malloc((size_t)n * sizeof *sorted);
    if (!sorted)
        return NAN;
    memcpy(sorted, map, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_float_desc);
    double sum = 0;
    for (int64_t i = 0; i < k; i++)
        sum += sorted[i];
    free(sorted);
    return sum / (double)k;
}

/* ---- ranking ---- */

typedef struct {
    float score;
    int64_t i;
} ranked;

static int cmp_ranked_desc(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    return (x->score < y->score) - (x->score > y->score);
}

/* The items sorted by score, highest first. NULL after dc_fail. */
static ranked *rank_desc(const float *scores, int64_t n) {
    ranked *r = malloc((size_t)(n ? n : 1) * sizeof *r);
    if (!r) {
        dc_fail("out of memory ranking %lld scores", (long long)n);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++)
        r[i] = (ranked){scores[i], i};
    qsort(r, (size_t)n, sizeof *r, cmp_ranked_desc);
    return r;
}

/* The end of the group of equal scores that starts at a. */
static int64_t tie_end(const ranked *r, int64_t a, int64_t n) {
    int64_t b = a + 1;
    while (b < n && r[b].score == r[a].score)
        b++;
    return b;
}

double dc_auroc(const float *scores, const uint8_t *labels, int64_t n) {
    ranked *r = rank_desc(scores, n);
    if (!r)
        return -1;
    /* Each positive beats the negatives below its tie group, and half of those in it. */
    double wins = 0, pos = 0, neg_below;
    int64_t n_neg = 0;
    for (int64_t i = 0; i < n; i++)
        n_neg += !labels[i];
    neg_below = (double)n_neg;
    for (int64_t a = 0, b; a < n; a = b) {
        b = tie_end(r, a, n);
        double p = 0, q = 0;
        for (int64_t j = a; j < b; j++)
            labels[r[j].i] ? p++ : q++;
        neg_below -= q;
        wins += p * (neg_below + 0.5 * q);
        pos += p;
    }
    free(r);
    return pos == 0 || n_neg == 0 ? NAN : wins / (pos * (double)n_neg);
}

/* ---- PRO ---- */

/* Label the 8-connected regions of one image's mask: comp[p] = region index
 * (counted on from *n_regions) for mask pixels, -1 elsewhere; size[] grows.
 * `stack` has room for h * w pixels. */
static int label_regions(const uint8_t *mask, int h, int w, int64_t *comp, int64_t *stack, int64_t **size,
                         int64_t *n_regions, int64_t *cap) {
    int64_t hw = (int64_t)h * w;
    for (int64_t p = 0; p < hw; p++)
        comp[p] = -1;
    for (int64_t seed = 0; seed < hw; seed++) {
        if (!mask[seed] || comp[seed] >= 0)
            continue;
        if (*n_regions == *cap) {
            int64_t *grown = realloc(*size, (size_t)(*cap * 2 + 16) * sizeof **size);
            if (!grown)
                return dc_fail("out of memory labelling regions");
            *size = grown, *cap = *cap * 2 + 16;
        }
        int64_t id = (*n_regions)++, top = 0;
        (*size)[id] = 0;
        comp[seed] = id;
        stack[top++] = seed;
        while (top) {
            int64_t p = stack[--top];
            int y = (int)(p / w), x = (int)(p % w);
            (*size)[id]++;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    int yy = y + dy, xx = x + dx;
                    int64_t q = (int64_t)yy * w + xx;
                    if (yy >= 0 && yy < h && xx >= 0 && xx < w && mask[q] && comp[q] < 0)
                        comp[q] = id, stack[top++] = q;
                }
        }
    }
    return 0;
}

/* Area under the (fpr, pro) points, from (0, 0), up to max_fpr. */
typedef struct {
    double area, fpr, pro, max_fpr;
    int done;
} curve;

static void curve_add(curve *c, double fpr, double pro) {
    if (c->done || fpr <= c->fpr) {
        c->pro = c->done ? c->pro : pro; /* a vertical step: no area */
        return;
    }
    if (fpr >= c->max_fpr) {
        double at = c->pro + (pro - c->pro) * (c->max_fpr - c->fpr) / (fpr - c->fpr);
        c->area += 0.5 * (c->pro + at) * (c->max_fpr - c->fpr);
        c->done = 1;
        return;
    }
    c->area += 0.5 * (c->pro + pro) * (fpr - c->fpr);
    c->fpr = fpr, c->pro = pro;
}

double dc_pro_auc(const float *maps, const uint8_t *masks, int64_t n_images, int h, int w, double max_fpr) {
    int64_t hw = (int64_t)h * w, n = n_images * hw, n_regions = 0, cap = 0, n_neg = 0;
    int64_t *comp = malloc((size_t)(n ? n : 1) * sizeof *comp), *stack = malloc((size_t)hw * sizeof *stack);
    int64_t *size = NULL;
    int rc = comp && stack ? 0 : dc_fail("out of memory for PRO over %lld pixels", (long long)n);
    for (int64_t k = 0; !rc && k < n_images; k++)
        rc = label_regions(masks + k * hw, h, w, comp + k * hw, stack, &size, &n_regions, &cap);
    ranked *r = rc ? NULL : rank_desc(maps, n);
    for (int64_t i = 0; i < n; i++)
        n_neg += !masks[i];
    double result = r ? NAN : -1;
    if (r && n_regions && n_neg) {
        curve c = {.max_fpr = max_fpr};
        double pro = 0, fp = 0;
        for (int64_t a = 0, b; a < n && !c.done; a = b) {
            b = tie_end(r, a, n);
            for (int64_t j = a; j < b; j++) {
                int64_t p = r[j].i;
                if (masks[p])
                    pro += 1.0 / ((double)size[comp[p]] * (double)n_regions);
                else
                    fp++;
            }
            curve_add(&c, fp / (double)n_neg, pro);
        }
        result = c.area / max_fpr;
    }
    free(r);
    free(comp);
    free(stack);
    free(size);
    return result;
}

double dc_complexity_bits(const float *px, int64_t n) {
    uLong bound = compressBound((uLong)n);
    uint8_t *q = malloc((size_t)n + bound);
    if (!q)
        return NAN;
    for (int64_t i = 0; i < n; i++) {
        double v = (px[i] + 1) * 127.5;
        q[i] = (uint8_t)lrint(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    uLongf len = bound;
    int rc = compress2(q + n, &len, q, (uLong)n, 9);
    free(q);
    return rc == Z_OK ? 8.0 * (double)len / (double)n : NAN;
}

double dc_knn_distance(const float *bank, int64_t n, const float *x, int64_t per, int k) {
    if (n < 1 || k < 1 || k > DC_KNN_MAX_K)
        return NAN;
    k = n < k ? (int)n : k;
    double best[DC_KNN_MAX_K]; /* the k smallest squared distances so far, ascending */
    int have = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *b = bank + i * per;
        float sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t p = 0; p < per; p++)
            sum += (x[p] - b[p]) * (x[p] - b[p]);
        if (have == k && sum >= best[k - 1])
            continue;
        int at = have < k ? have++ : k - 1; /* insert, dropping the largest when full */
        for (; at > 0 && best[at - 1] > sum; at--)
            best[at] = best[at - 1];
        best[at] = sum;
    }
    double mean = 0;
    for (int j = 0; j < k; j++)
        mean += sqrt(best[j]);
    return mean / k;
}
