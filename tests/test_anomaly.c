/* `diffc anomaly` and its evaluation: AUROC and PRO against brute-force
 * computations written here (pairwise comparisons; flood fills by union-find
 * and the curve point by point) on fresh random data full of ties; the
 * Gaussian smoothing against a direct 2D convolution; the top-k score; an
 * end-to-end run on an MVTec-style tree made here (good images and images
 * with a painted defect, with masks) scored by a model trained here for a
 * few steps on the good images (`diffc train --classes good`): CSV,
 * heatmaps, printed and saved measures that agree with the CSV, scores
 * independent of the batch size; the one-class protocol on a class folder;
 * bad input. */
#define _GNU_SOURCE /* strdup */
#include "testutil.h"

#include "autograd/diffusion.h"
#include "autograd/error.h"
#include "autograd/fileio.h"
#include "autograd/ops.h"
#include "data/image.h"
#include "infer/anomaly_eval.h"
#include "infer/anomaly_geo.h"
#include "infer/model.h"
#include "pipeline/samplers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CLASS_MODEL "tests/fixtures/unet_attn_class" /* 5 class embeddings, RGB 8x8 */
#define BARE_MODEL "tests/fixtures/unet_legacy"      /* unconditional, RGB 8x8 */

/* ---- AUROC ---- */

/* Pairs (anomalous, normal) ordered correctly, ties one half. */
static double brute_auroc(const float *s, const uint8_t *y, int64_t n) {
    double wins = 0, pairs = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++)
            if (y[i] && !y[j]) {
                pairs++;
                wins += s[i] > s[j] ? 1 : s[i] == s[j] ? 0.5 : 0;
            }
    return pairs ? wins / pairs : NAN;
}

START_TEST(test_auroc_brute_force) {
    for (int trial = 0; trial < 40; trial++) {
        int64_t n = 1 + (int64_t)(tu_next() % 300);
        int levels = 1 + (int)(tu_next() % 12); /* few levels: many ties */
        float *s = malloc((size_t)n * sizeof *s);
        uint8_t *y = malloc((size_t)n);
        for (int64_t i = 0; i < n; i++) {
            y[i] = tu_next() % 3 == 0;
            s[i] = (float)(tu_next() % (uint64_t)levels) / 4.0f + (y[i] ? 0.25f : 0.0f) * (float)(tu_next() % 2);
        }
        double got = dc_auroc(s, y, n), want = brute_auroc(s, y, n);
        if (isnan(want))
            ck_assert_msg(isnan(got), "trial %d: got %g, one class is empty", trial, got);
        else
            ck_assert_msg(fabs(got - want) < 1e-12, "trial %d (n %lld): got %.15g, want %.15g", trial,
                          (long long)n, got, want);
        free(s);
        free(y);
    }
}
END_TEST

START_TEST(test_auroc_extremes) {
    float s[6] = {0.1f, 0.2f, 0.3f, 0.7f, 0.8f, 0.9f};
    uint8_t y[6] = {0, 0, 0, 1, 1, 1}, flipped[6] = {1, 1, 1, 0, 0, 0};
    ck_assert(dc_auroc(s, y, 6) == 1.0);
    ck_assert(dc_auroc(s, flipped, 6) == 0.0);
    float same[4] = {2, 2, 2, 2};
    uint8_t y4[4] = {0, 1, 0, 1};
    ck_assert(dc_auroc(same, y4, 4) == 0.5);
}
END_TEST

/* ---- PRO ---- */

static int64_t find(int64_t *parent, int64_t a) {
    while (parent[a] != a)
        a = parent[a] = parent[parent[a]];
    return a;
}

/* Region of every mask pixel (a root index) by union-find over 8-neighbours; -1 elsewhere. */
static void regions_union_find(const uint8_t *mask, int64_t n_img, int h, int w, int64_t *root) {
    int64_t hw = (int64_t)h * w;
    for (int64_t p = 0; p < n_img * hw; p++)
        root[p] = p;
    for (int64_t k = 0; k < n_img; k++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int dy = 0; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int yy = y + dy, xx = x + dx;
                        int64_t p = k * hw + (int64_t)y * w + x, q = k * hw + (int64_t)yy * w + xx;
                        if ((dy || dx > 0) && yy < h && xx >= 0 && xx < w && mask[p] && mask[q])
                            root[find(root, p)] = find(root, q);
                    }
    for (int64_t p = 0; p < n_img * hw; p++)
        root[p] = mask[p] ? find(root, p) : -1;
}

/* The PRO curve at every distinct threshold, point by point, and its
 * normalised area up to max_fpr. */
static double brute_pro(const float *map, const uint8_t *mask, int64_t n_img, int h, int w, double max_fpr) {
    int64_t n = n_img * h * w;
    int64_t *root = malloc((size_t)n * sizeof *root);
    regions_union_find(mask, n_img, h, w, root);
    float *t = malloc((size_t)n * sizeof *t);
    memcpy(t, map, (size_t)n * sizeof *t);
    /* thresholds, descending, distinct (selection sort: n is small) */
    int64_t nt = 0;
    for (;;) {
        float best = -INFINITY;
        bool any = false;
        for (int64_t i = 0; i < n; i++)
            if ((nt == 0 || map[i] < t[nt - 1]) && (!any || map[i] > best))
                best = map[i], any = true;
        if (!any)
            break;
        t[nt++] = best;
    }
    double area = 0, pf = 0, pp = 0;
    for (int64_t k = 0; k < nt; k++) {
        double neg = 0, fp = 0, overlap = 0, regions = 0;
        for (int64_t p = 0; p < n; p++) {
            neg += !mask[p];
            fp += !mask[p] && map[p] >= t[k];
            if (mask[p] && root[p] == p) { /* one region: its root */
                double size = 0, hit = 0;
                for (int64_t q = 0; q < n; q++)
                    if (root[q] == p)
                        size++, hit += map[q] >= t[k];
                overlap += hit / size;
                regions++;
            }
        }
        double f = fp / neg, pr = overlap / regions;
        if (f >= max_fpr) {
            double at = f > pf ? pp + (pr - pp) * (max_fpr - pf) / (f - pf) : pr;
            area += 0.5 * (pp + at) * (max_fpr - pf);
            break;
        }
        area += 0.5 * (pp + pr) * (f - pf);
        pf = f, pp = pr;
    }
    free(root);
    free(t);
    return area / max_fpr;
}

START_TEST(test_pro_brute_force) {
    for (int trial = 0; trial < 25; trial++) {
        int64_t n_img = 1 + (int64_t)(tu_next() % 3);
        int h = 3 + (int)(tu_next() % 6), w = 3 + (int)(tu_next() % 6);
        int64_t n = n_img * h * w;
        float *map = malloc((size_t)n * sizeof *map);
        uint8_t *mask = malloc((size_t)n);
        int levels = 2 + (int)(tu_next() % 10);
        for (int64_t p = 0; p < n; p++) {
            mask[p] = tu_next() % 4 == 0;
            map[p] = (float)(tu_next() % (uint64_t)levels) + (mask[p] ? (float)(tu_next() % 3) : 0.0f);
        }
        mask[tu_next() % (uint64_t)n] = 1; /* at least one region */
        mask[tu_next() % (uint64_t)n] = 0; /* and, almost always, a normal pixel */
        double max_fpr = trial % 2 ? 0.3 : tu_uniform(0.05, 1.0);
        double got = dc_pro_auc(map, mask, n_img, h, w, max_fpr), want = brute_pro(map, mask, n_img, h, w, max_fpr);
        ck_assert_msg(fabs(got - want) < 1e-9, "trial %d (%lldx%dx%d, max_fpr %g): got %.15g, want %.15g", trial,
                      (long long)n_img, h, w, max_fpr, got, want);
        free(map);
        free(mask);
    }
}
END_TEST

START_TEST(test_pro_extremes) {
    /* a map equal to the mask finds every region before any false positive */
    uint8_t mask[2 * 25] = {0};
    float map[2 * 25];
    mask[6] = mask[7] = mask[12] = mask[25 + 18] = 1;
    for (int p = 0; p < 50; p++)
        map[p] = mask[p] ? 1.0f : 0.0f;
    ck_assert_msg(fabs(dc_pro_auc(map, mask, 2, 5, 5, 0.3) - 1.0) < 1e-12, "perfect map");
    uint8_t none[4] = {0};
    float flat[4] = {0};
    ck_assert(isnan(dc_pro_auc(flat, none, 1, 2, 2, 0.3)));
}
END_TEST

/* ---- smoothing and the image score ---- */

static int reflect_index(int i, int n) {
    while (i < 0 || i >= n)
        i = i < 0 ? -i - 1 : 2 * n - i - 1;
    return i;
}

START_TEST(test_gaussian_blur) {
    for (int trial = 0; trial < 10; trial++) {
        int h = 1 + (int)(tu_next() % 12), w = 1 + (int)(tu_next() % 12);
        double sigma = tu_uniform(0.3, 3.0);
        float *map = malloc((size_t)h * w * sizeof *map);
        double *want = calloc((size_t)h * w, sizeof *want);
        for (int p = 0; p < h * w; p++)
            map[p] = (float)tu_normal();
        int r = (int)ceil(4 * sigma);
        double norm = 0;
        for (int dy = -r; dy <= r; dy++)
            for (int dx = -r; dx <= r; dx++)
                norm += exp(-(dx * dx + dy * dy) / (2 * sigma * sigma));
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int dy = -r; dy <= r; dy++)
                    for (int dx = -r; dx <= r; dx++)
                        want[y * w + x] += exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) / norm *
                                           map[reflect_index(y + dy, h) * w + reflect_index(x + dx, w)];
        ck_assert_int_eq(dc_gaussian_blur(map, h, w, sigma), 0);
        tu_assert_close(map, want, (int64_t)h * w, 1e-5, 1e-5, "blur");
        free(map);
        free(want);
    }
    float flat[20];
    for (int p = 0; p < 20; p++)
        flat[p] = 0.75f;
    ck_assert_int_eq(dc_gaussian_blur(flat, 4, 5, 2.0), 0);
    for (int p = 0; p < 20; p++)
        ck_assert_msg(fabs(flat[p] - 0.75f) < 1e-6, "a constant map stays constant");
    ck_assert_int_eq(dc_gaussian_blur(flat, 4, 5, -1), -1);
}
END_TEST

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

START_TEST(test_topk_mean) {
    float v[50], sorted[50];
    for (int i = 0; i < 50; i++)
        v[i] = sorted[i] = (float)(tu_next() % 20);
    qsort(sorted, 50, sizeof *sorted, cmp_desc);
    for (int k = 1; k <= 60; k += 7) {
        double want = 0;
        int kk = k < 50 ? k : 50;
        for (int i = 0; i < kk; i++)
            want += sorted[i];
        ck_assert_msg(fabs(dc_topk_mean(v, 50, k) - want / kk) < 1e-9, "k %d", k);
    }
}
END_TEST

/* ---- complexity ---- */

START_TEST(test_complexity) {
    enum { N = 16 * 16 };
    float flat[N], stripes[N], noise[N];
    float level = (float)tu_uniform(-1, 1);
    for (int i = 0; i < N; i++) {
        flat[i] = level;
        stripes[i] = i / 16 % 4 < 2 ? -1.0f : 1.0f;
        noise[i] = (float)tu_uniform(-1, 1);
    }
    double cf = dc_complexity_bits(flat, N), cs = dc_complexity_bits(stripes, N), cn = dc_complexity_bits(noise, N);
    /* a constant image compresses to a few bytes, noise not at all (8 bits a value, plus zlib's framing) */
    ck_assert_msg(cf > 0 && cf < 0.6 && cf <= cs && cs < 2 && cn > 7.5, "flat %g stripes %g noise %g", cf, cs, cn);
    /* values out of [-1, 1] are clamped: the same bytes as at the bounds */
    for (int i = 0; i < N; i++)
        noise[i] = stripes[i] * 3;
    ck_assert_double_eq(dc_complexity_bits(noise, N), cs);
}
END_TEST

/* ---- the nearest-neighbour distance ---- */

/* Against a double-precision brute force: every k from 1 past the bank's
 * size (capped), a bank member at distance 0, and the refusals. */
START_TEST(test_knn_distance) {
    enum { N = 37, PER = 50 };
    float bank[N * PER], x[PER];
    for (int i = 0; i < N * PER; i++)
        bank[i] = (float)tu_uniform(-1, 1);
    for (int p = 0; p < PER; p++)
        x[p] = (float)tu_uniform(-1, 1);
    double d[N];
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int p = 0; p < PER; p++)
            s += pow((double)x[p] - bank[i * PER + p], 2);
        d[i] = sqrt(s);
    }
    for (int i = 1; i < N; i++) /* sorted ascending */
        for (int j = i; j > 0 && d[j - 1] > d[j]; j--) {
            double t = d[j];
            d[j] = d[j - 1], d[j - 1] = t;
        }
    const int ks[] = {1, 2, 5, N, N + 20};
    for (size_t t = 0; t < sizeof ks / sizeof *ks; t++) {
        int k = ks[t] < N ? ks[t] : N;
        double want = 0;
        for (int j = 0; j < k; j++)
            want += d[j] / k;
        double got = dc_knn_distance(bank, N, x, PER, ks[t]);
        ck_assert_msg(fabs(got - want) <= 1e-5 * want, "k %d: got %.9g, want %.9g", ks[t], got, want);
    }
    ck_assert_double_eq(dc_knn_distance(bank, N, bank + 11 * PER, PER, 1), 0);
    ck_assert(isnan(dc_knn_distance(bank, 0, x, PER, 1)));
    ck_assert(isnan(dc_knn_distance(bank, N, x, PER, 0)));
    ck_assert(isnan(dc_knn_distance(bank, N, x, PER, DC_KNN_MAX_K + 1)));
}
END_TEST

/* ---- the transform-prediction score ---- */

START_TEST(test_geo_transform) {
    enum { H = 8, C = 2, PER = H * H * C };
    float src[PER], dst[DC_GEO_TRANSFORMS][PER];
    for (int i = 0; i < PER; i++)
        src[i] = (float)i; /* every value distinct: a transform is a permutation */
    for (int t = 0; t < DC_GEO_TRANSFORMS; t++) {
        for (int i = 0; i < PER; i++)
            dst[t][i] = NAN;
        dc_geo_transform(H, C, dst[t], src, t);
        bool seen[PER] = {false};
        for (int i = 0; i < PER; i++) {
            int v = (int)dst[t][i];
            ck_assert_msg(dst[t][i] == v && v >= 0 && v < PER && !seen[v], "transform %d: not a permutation", t);
            ck_assert_msg(v % C == i % C, "transform %d moves values between channels", t);
            seen[v] = true;
        }
        for (int u = 0; u < t; u++)
            ck_assert_msg(memcmp(dst[t], dst[u], sizeof dst[t]), "transforms %d and %d are the same", u, t);
    }
    ck_assert_msg(!memcmp(dst[0], src, sizeof src), "transform 0 is the identity");
    /* transform 5 (the first rotation, no shift) four times is the identity again */
    float a[PER], b[PER];
    memcpy(a, src, sizeof a);
    for (int k = 0; k < 4; k++) {
        dc_geo_transform(H, C, b, a, 5);
        memcpy(a, b, sizeof a);
        ck_assert_msg(k == 3 ? !memcmp(a, src, sizeof a) : memcmp(a, src, sizeof a) != 0, "rotation power %d", k + 1);
    }
}
END_TEST

/* An 8x8 gray image: an L of value 1 on -1 (normal), or a centred cross,
 * the same under every flip and rotation (anomalous), each with a little noise. */
static void geo_image(float *px, bool normal) {
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++) {
            bool on = normal ? (x == 2 && y >= 1 && y <= 6) || (y == 6 && x >= 2 && x <= 5)
                             : (x == 3 || x == 4 || y == 3 || y == 4) && x >= 1 && x <= 6 && y >= 1 && y <= 6;
            px[y * 8 + x] = (on ? 1.0f : -1.0f) + (float)tu_uniform(-0.2, 0.2);
        }
}

START_TEST(test_geo_separates) {
    enum { N = 32, PER = 64 };
    float train[N * PER], test[2 * 8 * PER];
    uint8_t label[16];
    for (int i = 0; i < N; i++)
        geo_image(train + i * PER, true);
    for (int i = 0; i < 16; i++)
        geo_image(test + i * PER, (label[i] = i % 2) == 0);
    dc_geo g;
    ck_assert_msg(dc_geo_train(&g, train, N, 8, 8, 1, 150, tu_seed()) == 0, "%s", dc_error());
    double scores[16] = {0};
    ck_assert_msg(dc_geo_score(&g, test, 16, scores) == 0, "%s", dc_error());
    dc_geo_free(&g);
    float f[16];
    double normal = 0, odd = 0;
    for (int i = 0; i < 16; i++) {
        f[i] = (float)scores[i];
        ck_assert_msg(isfinite(scores[i]) && scores[i] >= 0, "image %d: %g", i, scores[i]);
        *(label[i] ? &odd : &normal) += scores[i] / 8;
    }
    /* the L's transforms are learned (chance is log 40 = 3.7); the cross's rotations and flips are not */
    ck_assert_msg(normal < 1.5 && odd > normal + 1, "normal %g anomalous %g", normal, odd);
    ck_assert_double_eq(dc_auroc(f, label, 16), 1.0);
    /* rectangular images: one clear error */
    ck_assert_int_eq(dc_geo_train(&g, train, 4, 4, 16, 1, 1, 0), -1);
    ck_assert_msg(strstr(dc_error(), "square"), "%s", dc_error());
    dc_geo_free(&g);
}
END_TEST

/* ---- feature distance ---- */

START_TEST(test_feature_distance) {
    int h = 8, w = 12, hl = 3, wl = 5, c = 6; /* sizes that do not divide: the covering location by floor */
    float fx[3 * 5 * 6], fy[3 * 5 * 6], scaled[3 * 5 * 6], negated[3 * 5 * 6], map[8 * 12];
    for (int i = 0; i < hl * wl * c; i++) {
        fx[i] = (float)tu_normal();
        fy[i] = (float)tu_normal();
        scaled[i] = 3 * fx[i];
        negated[i] = -fx[i];
    }
    /* an image against itself, or a positive multiple: 0; against its negation: 2 */
    const float *other[3] = {fx, scaled, negated};
    const double want[3] = {0, 0, 2};
    for (int k = 0; k < 3; k++) {
        memset(map, 0, sizeof map);
        dc_feature_distance_add(map, h, w, fx, other[k], hl, wl, c, 1.0);
        for (int p = 0; p < h * w; p++)
            ck_assert_msg(fabs(map[p] - want[k]) < 1e-6, "case %d pixel %d: %g", k, p, map[p]);
    }
    /* random features: each pixel's covering location, 1 - cos by the definition, added with the weight */
    for (int p = 0; p < h * w; p++)
        map[p] = 0.5f;
    dc_feature_distance_add(map, h, w, fx, fy, hl, wl, c, 0.25);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int ly = (int)floor((double)y * hl / h), lx = (int)floor((double)x * wl / w);
            const float *a = fx + (ly * wl + lx) * c, *b = fy + (ly * wl + lx) * c;
            double ab = 0, na = 0, nb = 0;
            for (int k = 0; k < c; k++)
                ab += a[k] * b[k], na += a[k] * a[k], nb += b[k] * b[k];
            double d = 0.5 + 0.25 * (1 - ab / (sqrt(na) * sqrt(nb)));
            ck_assert_msg(fabs(map[y * w + x] - d) < 1e-5, "(%d, %d): %g, want %g", y, x, map[y * w + x], d);
        }
    /* a zero vector adds nothing */
    float zero[3 * 5 * 6] = {0};
    memset(map, 0, sizeof map);
    dc_feature_distance_add(map, h, w, zero, fy, hl, wl, c, 1.0);
    for (int p = 0; p < h * w; p++)
        ck_assert(map[p] == 0);
}
END_TEST

/* ---- end to end ---- */

#define ANOMALY(...) tu_run_diffc((const char *const[]){"anomaly", __VA_ARGS__, NULL})
#define SIDE 8

static void save(const dc_image *img, const char *name) {
    ck_assert_msg(dc_image_save_png(img, tu_path(name)) == 0, "%s", dc_error());
}

/* A smooth gray gradient with noise; with a defect, a bright 3x3 square at (x, y), also drawn into mask. */
static void make_image(dc_image *img, dc_image *mask, int side, int c, int x, int y) {
    ck_assert_int_eq(dc_image_alloc(img, side, side, c), 0);
    for (int p = 0; p < side * side; p++)
        for (int k = 0; k < c; k++)
            img->px[p * c + k] = (uint8_t)(40 + 10 * (p % side) + (int)(tu_next() % 8));
    if (mask) {
        ck_assert_int_eq(dc_image_alloc(mask, side, side, 1), 0);
        memset(mask->px, 0, (size_t)side * side);
        for (int dy = 0; dy < 3; dy++)
            for (int dx = 0; dx < 3; dx++) {
                int p = (y + dy) * side + x + dx;
                mask->px[p] = 255;
                for (int k = 0; k < c; k++)
                    img->px[p * c + k] = 250;
            }
    }
}

/* mv/: train/good (for training), test/good (4, one of them gray and larger:
 * converted and resized with a note; plus a file that is no image: skipped),
 * test/spot (3, with masks in ground_truth/spot). */
static void make_tree(void) {
    const char *dirs[] = {"mv", "mv/train", "mv/train/good", "mv/test", "mv/test/good", "mv/test/spot",
                          "mv/ground_truth", "mv/ground_truth/spot"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        ck_assert_int_eq(mkdir(tu_path(dirs[i]), 0755), 0);
    char name[128];
    for (int i = 0; i < 16; i++) {
        dc_image img;
        make_image(&img, NULL, SIDE, 3, 0, 0);
        snprintf(name, sizeof name, "mv/train/good/%03d.png", i);
        save(&img, name);
        dc_image_free(&img);
    }
    for (int i = 0; i < 4; i++) {
        dc_image img;
        make_image(&img, NULL, i == 3 ? 12 : SIDE, i == 3 ? 1 : 3, 0, 0);
        snprintf(name, sizeof name, "mv/test/good/%03d.png", i);
        save(&img, name);
        dc_image_free(&img);
    }
    ck_assert_int_eq(dc_write_file(tu_path("mv/test/good/broken.png"), "not a png", 9, false), 0);
    for (int i = 0; i < 3; i++) {
        dc_image img, mask;
        make_image(&img, &mask, SIDE, 3, 1 + 2 * i, 4 - i);
        snprintf(name, sizeof name, "mv/test/spot/%03d.png", i);
        save(&img, name);
        snprintf(name, sizeof name, "mv/ground_truth/spot/%03d_mask.png", i);
        save(&mask, name);
        dc_image_free(&img);
        dc_image_free(&mask);
    }
}

static const char model_json[] =
    "{\"_class_name\": \"UNet2DModel\", \"sample_size\": 8, \"in_channels\": 3, \"out_channels\": 3,"
    " \"layers_per_block\": 1, \"block_out_channels\": [8, 16],"
    " \"down_block_types\": [\"DownBlock2D\", \"DownBlock2D\"],"
    " \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"], \"norm_num_groups\": 4}";

static const char synthetic_json[] =
    "{\"_class_name\": \"UNet2DModel\", \"sample_size\": 16, \"in_channels\": 3, \"out_channels\": 3,"
    " \"layers_per_block\": 1, \"block_out_channels\": [16, 32],"
    " \"down_block_types\": [\"DownBlock2D\", \"DownBlock2D\"],"
    " \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\"], \"norm_num_groups\": 4}";

/* A model trained for a few steps on mv/train's good images only. */
static const char *train_model(void) {
    tu_run_result *r = tu_run_diffc((const char *const[]){
        "train", "--model", model_json, "--train-data-dir", tu_path("mv/train"), "--classes", "good",
        "--cache-dir", tu_path("cache"), "--resolution", "8", "--output-dir", tu_path("model"),
        "--train-batch-size", "8", "--max-train-steps", "20", "--learning-rate", "3e-3", "--lr-warmup-steps",
        "2", "--checkpointing-steps", "0", "--sample-every", "0", "--device", "cpu", NULL});
    ck_assert_msg(r->status == 0, "train: exit %d: %s", r->status, tu_tail(r->err));
    cJSON *cfg = dc_json_load(tu_path("model/train_config.json"));
    ck_assert_msg(cfg, "%s", dc_error());
    ck_assert_str_eq(cJSON_GetObjectItem(cfg, "classes")->valuestring, "good");
    cJSON_Delete(cfg);
    return tu_path("model");
}

/* scores.csv of `dir`: names, anomalous flags, scores; the row count. */
typedef struct {
    char name[16][64];
    int anomalous[16];
    float score[16];
    int n;
} csv_rows;

static void read_csv(const char *dir, csv_rows *rows) {
    char path[512];
    snprintf(path, sizeof path, "%s/scores.csv", dir);
    char *text = dc_read_file(path, 1 << 20, NULL);
    ck_assert_msg(text, "%s", dc_error());
    ck_assert_msg(!strncmp(text, "index,name,label,anomalous,score,", 33), "header: %s", text);
    memset(rows, 0, sizeof *rows);
    for (char *line = strchr(text, '\n') + 1; *line && rows->n < 16; line = strchr(line, '\n') + 1) {
        int index;
        char label[64];
        int got = sscanf(line, "%d,%63[^,],%63[^,],%d,%f", &index, rows->name[rows->n], label,
                         &rows->anomalous[rows->n], &rows->score[rows->n]);
        ck_assert_msg(got == 5, "row: %.80s", line);
        ck_assert_msg(isfinite(rows->score[rows->n]) && rows->score[rows->n] >= 0, "score of %s",
                      rows->name[rows->n]);
        ck_assert_int_eq(rows->anomalous[rows->n], strcmp(label, "good") != 0);
        rows->n++;
    }
    free(text);
}

static void assert_png(const char *dir, const char *name, int c) {
    char path[512];
    snprintf(path, sizeof path, "%s/heatmaps/%s", dir, name);
    dc_image img;
    ck_assert_msg(dc_image_load(&img, path) == 0, "%s", dc_error());
    ck_assert_msg(img.w == SIDE && img.h == SIDE && img.c == c, "%s: %dx%dx%d", name, img.w, img.h, img.c);
    dc_image_free(&img);
}

/* Column `col` of scores.csv in `dir`, [rows] (the header's name checked), and each row's name. */
static int csv_column(const char *dir, const char *col, double *out, char (*names)[64]) {
    char path[512];
    snprintf(path, sizeof path, "%s/scores.csv", dir);
    char *text = dc_read_file(path, 1 << 20, NULL), *line = text;
    ck_assert_msg(text, "%s", dc_error());
    int at = 0, n = 0;
    for (char *p = text; *p != '\n'; p += strcspn(p, ",\n") + (p[strcspn(p, ",\n")] == ',')) {
        if (!strncmp(p, col, strlen(col)) && strchr(",\n", p[strlen(col)]))
            break;
        at++;
    }
    while ((line = strchr(line, '\n')) && *++line) {
        const char *f = line;
        for (int k = 0; k < at; k++)
            f = strchr(f, ',') + 1;
        out[n] = strtod(f, NULL);
        sscanf(strchr(line, ',') + 1, "%63[^,]", names[n]);
        n++;
    }
    free(text);
    return n;
}

START_TEST(test_mvtec_end_to_end) {
    tu_mkdtemp("anomaly");
    make_tree();
    char *model = strdup(train_model());
    const char *out = tu_path("out");
    char *out_copy = strdup(out);
    tu_run_result *r = ANOMALY("--model", model, "--labels", tu_path("mv"), "--output-dir", out_copy,
                               "--strength", "0.3,0.6", "--ensemble", "2", "--num-inference-steps", "10",
                               "--batch-size", "3");
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "diffc: warning: skipped: good/broken.png"), "%s", tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "diffc: note: good/003.png: gray converted to RGB; 12x12 resized to 8x8"), "%s",
                  tu_tail(r->err));
    double image_auroc, pixel_auroc, pro;
    const char *at = strstr(r->out, "image AUROC: ");
    ck_assert_msg(at && sscanf(at, "image AUROC: %lf over 7 images (4 good, 3 defective)", &image_auroc) == 1,
                  "%s", r->out);
    ck_assert_msg((at = strstr(r->out, "pixel AUROC: ")) && sscanf(at, "pixel AUROC: %lf", &pixel_auroc) == 1,
                  "%s", r->out);
    ck_assert_msg((at = strstr(r->out, "PRO (FPR <= 0.3): ")) && sscanf(at, "PRO (FPR <= 0.3): %lf", &pro) == 1,
                  "%s", r->out);
    ck_assert(pixel_auroc >= 0 && pixel_auroc <= 1 && pro >= 0 && pro <= 1);

    /* the CSV holds every readable image with its label; its scores give the printed AUROC */
    csv_rows rows;
    read_csv(out_copy, &rows);
    ck_assert_int_eq(rows.n, 7);
    uint8_t y[16];
    for (int i = 0; i < rows.n; i++)
        y[i] = (uint8_t)rows.anomalous[i];
    ck_assert_msg(fabs(dc_auroc(rows.score, y, rows.n) - image_auroc) < 1e-4, "AUROC from the CSV");
    char path[512];
    snprintf(path, sizeof path, "%s/evaluation.json", out_copy);
    cJSON *eval = dc_json_load(path);
    ck_assert_msg(eval, "%s", dc_error());
    ck_assert(fabs(cJSON_GetObjectItem(eval, "pro")->valuedouble - pro) < 1e-4);
    ck_assert(fabs(cJSON_GetObjectItem(eval, "pixel_auroc")->valuedouble - pixel_auroc) < 1e-4);
    cJSON_Delete(eval);
    assert_png(out_copy, "good_000_raw.png", 1);
    assert_png(out_copy, "spot_002_overlay.png", 3);

    /* the same scores whatever the batch size (each image's own noise streams) */
    r = ANOMALY("--model", model, "--labels", tu_path("mv"), "--output-dir", tu_path("out1"), "--strength",
                "0.3,0.6", "--ensemble", "2", "--num-inference-steps", "10", "--batch-size", "1");
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    csv_rows again;
    read_csv(tu_path("out1"), &again);
    for (int i = 0; i < rows.n; i++)
        ck_assert_msg(!strcmp(rows.name[i], again.name[i]) && rows.score[i] == again.score[i],
                      "%s: %g then %g", rows.name[i], rows.score[i], again.score[i]);

    /* every kind of term, normalised by the good training images: z-scores summed, the two levels of a kind
       halved (a kind weighs as one term), whatever the batch size */
    char *train_dir = strdup(tu_path("mv/train"));
    const char *terms[] = {"recon@0.3", "feat@0.3", "recon@0.6", "feat@0.6", "eps@0.1", "eps@0.5"};
    double cols[2][6][16], score[16];
    char names[16][64];
    for (int pass = 0; pass < 2; pass++) {
        r = ANOMALY("--model", model, "--labels", tu_path("mv"), "--output-dir", tu_path(pass ? "out6" : "out5"),
                    "--score", "recon,feat,eps", "--strength", "0.3,0.6", "--timesteps", "0.1,0.5", "--reference",
                    train_dir, "--ensemble", "2", "--num-inference-steps", "10", "--batch-size", pass ? "1" : "3");
        ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
        ck_assert_msg(strstr(r->err, "scored 16/16 reference images"), "%s", tu_tail(r->err));
        for (int t = 0; t < 6; t++)
            ck_assert_int_eq(csv_column(tu_path(pass ? "out6" : "out5"), terms[t], cols[pass][t], names), 7);
    }
    ck_assert_int_eq(csv_column(tu_path("out5"), "score", score, names), 7);
    for (int t = 0; t < 6; t++) {
        char kind[8], want[64];
        double level, mean, sd;
        sscanf(terms[t], "%7[^@]@%lf", kind, &level);
        snprintf(want, sizeof want, "reference: %s@%g: ", kind, level);
        const char *line = strstr(r->err, want);
        ck_assert_msg(line && sscanf(line + strlen(want), "mean %lf, std %lf", &mean, &sd) == 2, "%s: %s", want,
                      tu_tail(r->err));
        for (int j = 0; j < 7; j++) {
            ck_assert_msg(cols[0][t][j] == cols[1][t][j], "%s %s: %g then %g", names[j], terms[t], cols[0][t][j],
                          cols[1][t][j]);
            ck_assert_msg(cols[0][t][j] >= 0, "%s %s: %g", names[j], terms[t], cols[0][t][j]);
            score[j] -= (cols[0][t][j] - mean) / sd / 2;
        }
    }
    for (int j = 0; j < 7; j++)
        ck_assert_msg(fabs(score[j]) < 1e-3, "%s: the score is not the terms' z-scores, halved, summed (%g off)",
                      names[j], score[j]);
    free(train_dir);

    /* a different seed draws other noise: other scores */
    r = ANOMALY("--model", model, "--labels", tu_path("mv"), "--output-dir", tu_path("out2"), "--strength",
                "0.3,0.6", "--ensemble", "2", "--num-inference-steps", "10", "--seed", "7");
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    read_csv(tu_path("out2"), &again);
    bool differs = false;
    for (int i = 0; i < rows.n; i++)
        differs |= rows.score[i] != again.score[i];
    ck_assert_msg(differs, "--seed changes nothing");

    /* --images a defect's folder or a single image: labels from the folder they lie in */
    r = ANOMALY("--model", model, "--labels", tu_path("mv"), "--images", tu_path("mv/test/spot"), "--output-dir",
                tu_path("out3"));
    ck_assert_msg(r->status == 0 && strstr(r->out, "image AUROC: nan over 3 images (0 good, 3 defective)") &&
                      strstr(r->out, "AUROC needs both") && strstr(r->out, "pixel AUROC: "),
                  "%s%s", r->out, tu_tail(r->err));
    r = ANOMALY("--model", model, "--labels", tu_path("mv"), "--images", tu_path("mv/test/good/001.png"),
                "--output-dir", tu_path("out4"));
    ck_assert_msg(r->status == 0 && strstr(r->out, "over 1 images (1 good, 0 defective)"), "%s%s", r->out,
                  tu_tail(r->err));
    free(out_copy);
    free(model);
    tu_rmtemp();
}
END_TEST

/* Two class folders a/ and b/ of RGB 8x8 images (a: dark, b: bright), a first row of white of its own length each. */
static void make_classes(void) {
    ck_assert_int_eq(mkdir(tu_path("cls"), 0755), 0);
    ck_assert_int_eq(mkdir(tu_path("cls/a"), 0755), 0);
    ck_assert_int_eq(mkdir(tu_path("cls/b"), 0755), 0);
    char name[64];
    for (int i = 0; i < 6; i++) {
        dc_image img;
        make_image(&img, NULL, SIDE, 3, 0, 0);
        for (int p = 0; i % 2 && p < SIDE * SIDE * 3; p++)
            img.px[p] = (uint8_t)(255 - img.px[p]);
        memset(img.px, 255, (size_t)(6 * i)); /* images of a class compress to different sizes */
        snprintf(name, sizeof name, "cls/%c/%d.png", i % 2 ? 'b' : 'a', i);
        save(&img, name);
        dc_image_free(&img);
    }
}

START_TEST(test_one_class) {
    tu_mkdtemp("anomaly");
    make_classes();
    /* unconditional and class-conditional models; the class by index or name */
    const char *models[] = {BARE_MODEL, CLASS_MODEL};
    const char *classes[] = {"1", "a"};
    for (int m = 0; m < 2; m++) {
        tu_run_result *r = ANOMALY("--model", models[m], "--images", tu_path("cls"), "--normal-class",
                                   classes[m], "--output-dir", tu_path(m ? "o1" : "o0"), "--num-inference-steps",
                                   "4", "--reduce", m ? "max" : "mean", "--max-heatmaps", "0");
        ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
        const char *want = m ? "one-class AUROC (normal class 0, a): " : "one-class AUROC (normal class 1, b): ";
        ck_assert_msg(strstr(r->out, want) && strstr(r->out, "over 6 images (3 normal, 3 anomalous)"), "%s",
                      r->out);
        char path[256];
        snprintf(path, sizeof path, "%s/heatmaps", tu_path(m ? "o1" : "o0"));
        ck_assert_msg(access(path, F_OK) != 0, "--max-heatmaps 0 writes none");
    }
    /* the image-level terms: complexity, geo and knn (geo's classifier learns from the normal reference
       images the reference does not score, knn measures to them: here 1 of class b's 3) */
    tu_run_result *r = ANOMALY("--model", BARE_MODEL, "--images", tu_path("cls"), "--normal-class", "b",
                               "--reference", tu_path("cls"), "--reference-images", "2", "--score",
                               "eps,complexity,geo,knn", "--timesteps", "0.5", "--ensemble", "2", "--geo-steps", "5",
                               "--output-dir", tu_path("o4"), "--max-heatmaps", "0");
    ck_assert_msg(r->status == 0 && strstr(r->out, "terms eps@0.5 complexity geo knn, z-scores") &&
                      strstr(r->out, "over 6 images (3 normal, 3 anomalous)"),
                  "%s%s", r->out, tu_tail(r->err));
    ck_assert_msg(strstr(r->err, "geo: trained the transform classifier on 1 normal images, 5 steps"), "%s",
                  tu_tail(r->err));
    double col[16];
    char names[16][64];
    const char *whole[] = {"complexity", "geo", "knn"};
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(csv_column(tu_path("o4"), whole[k], col, names), 6);
        for (int j = 0; j < 6; j++)
            ck_assert_msg(isfinite(col[j]) && col[j] >= 0, "%s of %s: %g", whole[k], names[j], col[j]);
    }
    /* knn: the one bank image is at distance 0 from itself, every other image is not */
    int zeros = 0;
    for (int j = 0; j < 6; j++)
        zeros += col[j] == 0;
    ck_assert_int_eq(zeros, 1);
    /* --max-images: an evenly spaced subset */
    r = ANOMALY("--model", BARE_MODEL, "--images", tu_path("cls"), "--output-dir", tu_path("o2"),
                               "--num-inference-steps", "4", "--max-images", "3");
    ck_assert_msg(r->status == 0 && strstr(r->out, "3 images scored"), "%s%s", r->out, tu_tail(r->err));
    ck_assert_msg(!strstr(r->out, "AUROC"), "no labels, no evaluation: %s", r->out);
    /* one image file */
    r = ANOMALY("--model", BARE_MODEL, "--images", tu_path("cls/a/0.png"), "--output-dir", tu_path("o3"),
                "--num-inference-steps", "4");
    ck_assert_msg(r->status == 0 && strstr(r->out, "1 image scored"), "%s%s", r->out, tu_tail(r->err));
    tu_rmtemp();
}
END_TEST

/* ---- the noise-prediction score ---- */

/* The trainer's loss (dc_diffusion_loss's per-sample mse) of image x0 [per]
 * with stream `stream`'s initial draw as the noise, at timestep t. */
static double training_mse(dc_ctx *ctx, const dc_model *m, const float *x0, int side, uint64_t seed, uint64_t stream,
                           int t) {
    int c = m->cfg.in_channels;
    int64_t per = (int64_t)side * side * c;
    float *noise = malloc((size_t)per * sizeof *noise);
    dc_sampler_noise(noise, 1, per, seed, stream, DC_SAMPLER_DRAW_INIT);
    dc_ctx_reset(ctx);
    int32_t ti = t;
    float tf = (float)t;
    dc_tensor t_host = {.dtype = DC_I32, .device = DC_CPU, .ndim = 1, .shape = {1}, .numel = 1, .data = &ti};
    dc_tensor *x = dc_from_host(ctx, DC_F32, DC_SHAPE(1, side, side, c), x0);
    dc_tensor *n = dc_from_host(ctx, DC_F32, DC_SHAPE(1, side, side, c), noise);
    dc_tensor *xt = dc_q_sample(ctx, x, n, &t_host, &m->sched);
    dc_tensor *pred = dc_unet_forward(ctx, &m->unet, xt, dc_from_host(ctx, DC_F32, DC_SHAPE(1), &tf), NULL);
    double mse;
    ck_assert_msg(dc_diffusion_loss(ctx, pred, x, n, &t_host, &m->sched, m->sched.config.prediction_type, 0, &mse),
                  "%s", dc_error());
    free(noise);
    return mse;
}

/* --score eps is the training loss of the same draws: a v-prediction model
 * trained here, two timesteps, two draws per image averaged. */
START_TEST(test_eps_is_training_loss) {
    tu_mkdtemp("anomaly");
    make_classes();
    tu_run_result *r = tu_run_diffc((const char *const[]){
        "train", "--model", model_json, "--train-data-dir", tu_path("cls"), "--prediction-type", "v_prediction",
        "--cache-dir", tu_path("cache"), "--resolution", "8", "--output-dir", tu_path("vmodel"),
        "--train-batch-size", "4", "--max-train-steps", "5", "--checkpointing-steps", "0", "--sample-every", "0",
        "--device", "cpu", NULL});
    ck_assert_msg(r->status == 0, "train: exit %d: %s", r->status, tu_tail(r->err));
    char *model = strdup(tu_path("vmodel"));
    r = ANOMALY("--model", model, "--images", tu_path("cls"), "--output-dir", tu_path("o"), "--score", "eps",
                "--timesteps", "0.3,0.05", "--ensemble", "2", "--sigma", "0", "--reduce", "mean", "--seed", "5",
                "--batch-size", "4", "--max-heatmaps", "0", "--device", "cpu");
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    dc_model m;
    ck_assert_msg(dc_model_load(&m, model, true) == 0, "%s", dc_error());
    ck_assert_int_eq(m.sched.config.prediction_type, DC_PRED_V_PREDICTION);
    dc_ctx ctx;
    ck_assert_int_eq(dc_model_ctx_init(DC_CPU, &ctx, (size_t)1 << 26), 0);
    dc_set_grad_enabled(&ctx, false);
    const char *cols[] = {"eps@0.3", "eps@0.05"};
    const double fractions[] = {0.3, 0.05};
    double got[2][16], total[16];
    char names[16][64];
    ck_assert_int_eq(csv_column(tu_path("o"), "score", total, names), 6);
    for (int k = 0; k < 2; k++)
        ck_assert_int_eq(csv_column(tu_path("o"), cols[k], got[k], names), 6);
    for (int j = 0; j < 6; j++) {
        char path[256];
        snprintf(path, sizeof path, "cls/%s", names[j]);
        dc_image img;
        ck_assert_msg(dc_image_load(&img, tu_path(path)) == 0, "%s", dc_error());
        float x0[SIDE * SIDE * 3];
        dc_u8_to_float(x0, img.px, sizeof x0 / sizeof x0[0]);
        dc_image_free(&img);
        for (int k = 0; k < 2; k++) {
            int t = (int)(fractions[k] * (double)m.sched.T);
            double want = (training_mse(&ctx, &m, x0, SIDE, 5, 2 * (uint64_t)j, t) +
                           training_mse(&ctx, &m, x0, SIDE, 5, 2 * (uint64_t)j + 1, t)) / 2;
            ck_assert_msg(fabs(got[k][j] - want) <= 1e-5 * want, "%s %s: %.9g, the trainer's %.9g", names[j],
                          cols[k], got[k][j], want);
        }
        /* without --reference the score is the terms' mean */
        ck_assert_msg(fabs(total[j] - (got[0][j] + got[1][j]) / 2) <= 1e-6 * total[j], "%s: score %g", names[j],
                      total[j]);
    }
    dc_ctx_free(&ctx);
    dc_model_free(&m);
    free(model);
    tu_rmtemp();
}
END_TEST

/* ---- the synthetic benchmark ---- */

#define SYNTHETIC "tests/fixtures/synthetic_mvtec" /* scripts/make_synthetic_mvtec.py, 16x16 */

/* A tiny model trained on the synthetic textures finds the pasted defects:
 * pixel AUROC and PRO well above chance. Measured with 200 steps, seed 0, 8
 * draws: --score eps --timesteps 0.1,0.2,0.3 pixel AUROC 0.96, PRO 0.89,
 * image AUROC 1.0; --score recon --strength 0.3 0.94, 0.85, 0.96; the
 * one-class default timesteps 0.5,0.7,0.9 localise nothing (0.49, 0.04). */
START_TEST(test_synthetic_benchmark) {
    if (tu_sanitized())
        return;
    tu_mkdtemp("anomaly");
    char seed[32];
    snprintf(seed, sizeof seed, "%d", (int)(tu_next() % 1000));
    tu_run_result *r = tu_run_diffc((const char *const[]){
        "train", "--model", synthetic_json, "--train-data-dir", SYNTHETIC "/train", "--classes", "good",
        "--cache-dir", tu_path("cache"), "--resolution", "16", "--output-dir", tu_path("model"),
        "--train-batch-size", "8", "--max-train-steps", "200", "--learning-rate", "3e-3", "--lr-warmup-steps",
        "10", "--checkpointing-steps", "0", "--sample-every", "0", "--seed", seed, "--device", "cpu", NULL});
    ck_assert_msg(r->status == 0, "train: exit %d: %s", r->status, tu_tail(r->err));
    char *model = strdup(tu_path("model"));
    r = ANOMALY("--model", model, "--labels", SYNTHETIC, "--output-dir", tu_path("out"), "--score", "eps",
                "--timesteps", "0.1,0.2,0.3", "--max-heatmaps", "0", "--device", "cpu");
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    double image_auroc, pixel_auroc, pro;
    const char *at = strstr(r->out, "image AUROC: ");
    ck_assert_msg(at && sscanf(at, "image AUROC: %lf over 20 images (8 good, 12 defective)", &image_auroc) == 1,
                  "%s", r->out);
    ck_assert_msg((at = strstr(r->out, "pixel AUROC: ")) && sscanf(at, "pixel AUROC: %lf", &pixel_auroc) == 1 &&
                      (at = strstr(r->out, "PRO (FPR <= 0.3): ")) && sscanf(at, "PRO (FPR <= 0.3): %lf", &pro) == 1,
                  "%s", r->out);
    ck_assert_msg(pixel_auroc > 0.8 && pro > 0.6 && image_auroc > 0.75,
                  "training seed %s: image AUROC %.3f, pixel AUROC %.3f, PRO %.3f", seed, image_auroc, pixel_auroc,
                  pro);
    free(model);
    tu_rmtemp();
}
END_TEST

/* ---- bad input ---- */

START_TEST(test_bad_input) {
    tu_mkdtemp("anomaly");
    make_classes();
    char *img = strdup(tu_path("cls")), *out = strdup(tu_path("o"));
    ck_assert_int_eq(mkdir(tu_path("nomodel"), 0755), 0);
    tu_assert_user_error(ANOMALY("--model", tu_path("nomodel"), "--images", img, "--output-dir", out),
                         "config.json");
    /* a config the weights do not fit */
    ck_assert_int_eq(mkdir(tu_path("bad"), 0755), 0);
    size_t n;
    char *cfg = tu_read_file(BARE_MODEL "/config.json", 1 << 20, &n), *at = strstr(cfg, "\"in_channels\": 3");
    ck_assert_ptr_nonnull(at);
    at[strlen("\"in_channels\": ")] = '1';
    ck_assert_int_eq(dc_write_file(tu_path("bad/config.json"), cfg, n, false), 0);
    free(cfg);
    char *weights = tu_read_file(BARE_MODEL "/diffusion_pytorch_model.safetensors", 1 << 24, &n);
    ck_assert_int_eq(dc_write_file(tu_path("bad/diffusion_pytorch_model.safetensors"), weights, n, false), 0);
    free(weights);
    tu_assert_user_error(ANOMALY("--model", tu_path("bad"), "--images", img, "--output-dir", out),
                         "conv_in.weight: file has");

    const char *m = BARE_MODEL;
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--strength", "0"),
                         "--strength '0': expected numbers in (0, 1]");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--strength", "0.5,1.5"),
                         "--strength '0.5,1.5'");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--score", "recon", "--strength",
                                 "0.01"),
                         "--strength");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--score", "recon,bogus"),
                         "--score 'recon,bogus': 'bogus' is not recon, feat, eps, complexity, geo or knn");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--score", "eps,geo"),
                         "--score geo needs --reference DIR");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--score", "knn"),
                         "--score knn needs --reference DIR");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--knn-k", "0"), "--knn-k");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--knn-weight", "-2"),
                         "--knn-weight");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--complexity-weight", "-1"),
                         "--complexity-weight");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--geo-steps", "0"),
                         "--geo-steps");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--score", "eps,"),
                         "--score 'eps,': '' is not");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--score", "eps",
                                 "--timesteps", "0.2,1"),
                         "--timesteps '0.2,1': expected numbers in [0, 1)");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--timesteps", "x"),
                         "--timesteps 'x'");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--feature-timestep", "1"),
                         "--feature-timestep");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--reference-images", "1"),
                         "--reference-images");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--reference",
                                 tu_path("nothing")),
                         "--reference: ");
    ck_assert_int_eq(mkdir(tu_path("one"), 0755), 0);
    ck_assert_int_eq(link(tu_path("cls/a/0.png"), tu_path("one/0.png")), 0);
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--reference", tu_path("one")),
                         "1 readable images; at least 2 are needed");
    ck_assert_int_eq(link(tu_path("cls/a/2.png"), tu_path("one/2.png")), 0);
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--reference", tu_path("one"),
                                 "--score", "eps,knn"),
                         "no normal image beside the 2 it scores");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--reduce", "median"),
                         "--reduce: 'median' is not max, topk-mean or mean");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--normal-class", "c"),
                         "--normal-class: class 'c': the dataset's classes are 0..1 (a .. b)");
    tu_assert_user_error(ANOMALY("--model", m, "--images", tu_path("cls/a"), "--output-dir", out,
                                 "--normal-class", "0"),
                         "--normal-class: class '0': the dataset has no class labels");
    tu_assert_user_error(ANOMALY("--model", CLASS_MODEL, "--images", img, "--output-dir", out, "--normal-class",
                                 "1", "--labels", img),
                         "give one");
    tu_assert_user_error(ANOMALY("--model", m, "--labels", img, "--output-dir", out), "cls/test: cannot open");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--device",
                                 tu_cuda_device_count() ? "cuda:63" : "cuda"),
                         "device 'cuda");
    tu_assert_user_error(ANOMALY("--model", m, "--images", img, "--output-dir", out, "--mixed-precision", "fp8"),
                         "--mixed-precision");
    ck_assert_int_eq(mkdir(tu_path("empty"), 0755), 0);
    tu_assert_user_error(ANOMALY("--model", m, "--images", tu_path("empty"), "--output-dir", out), "no PNG or JPEG image");
    ck_assert_int_eq(dc_write_file(tu_path("junk.png"), "junk", 4, false), 0);
    tu_assert_user_error(ANOMALY("--model", m, "--images", tu_path("junk.png"), "--output-dir", out), "junk");

    /* usage: exit 2 */
    tu_run_result *r = ANOMALY("--images", img);
    ck_assert_msg(r->status == 2 && strstr(r->err, "needs --model"), "%d %s", r->status, tu_tail(r->err));
    r = ANOMALY("--model", m, "--output-dir", out);
    ck_assert_msg(r->status == 2 && strstr(r->err, "needs --images"), "%d %s", r->status, tu_tail(r->err));
    r = ANOMALY("--model", m, "--images", img, "--bogus");
    ck_assert_int_eq(r->status, 2);
    ck_assert_msg(access(out, F_OK) != 0, "nothing written on errors");

    /* train --classes: a class the data lacks */
    r = tu_run_diffc((const char *const[]){"train", "--model", model_json, "--train-data-dir", img, "--classes",
                                           "a,z", "--cache-dir", tu_path("cache"), "--resolution", "8",
                                           "--output-dir", tu_path("t"), "--max-train-steps", "1", NULL});
    tu_assert_user_error(r, "class 'z': the dataset's classes are 0..1 (a .. b)");
    free(img);
    free(out);
    tu_rmtemp();
}
END_TEST

START_TEST(test_help) {
    tu_run_result *r = ANOMALY("--help");
    ck_assert_int_eq(r->status, 0);
    const char *every[] = {"--model DIR", "--images DIR|FILE", "--strength X[,X...]", "--ensemble N", "--reduce NAME",
                           "--top-k K", "--sigma X", "--labels DIR", "--normal-class K", "--max-images N",
                           "--num-inference-steps N", "--batch-size N", "--seed N", "--device NAME",
                           "--mixed-precision no|bf16", "--score KIND[,KIND...]",
                           "--timesteps X[,X...]", "--feature-timestep X", "--reference DIR", "--reference-split NAME",
                           "--reference-images N", "--complexity-weight X", "--geo-steps N", "--knn-k K",
                           "--knn-weight X"};
    for (size_t i = 0; i < sizeof every / sizeof every[0]; i++)
        ck_assert_msg(strstr(r->out, every[i]), "--help lacks %s", every[i]);
}
END_TEST

int main(void) {
    Suite *s = suite_create("anomaly");
    TCase *eval = tu_tcase(s, "eval", 30);
    tcase_add_test(eval, test_auroc_brute_force);
    tcase_add_test(eval, test_auroc_extremes);
    tcase_add_test(eval, test_pro_brute_force);
    tcase_add_test(eval, test_pro_extremes);
    tcase_add_test(eval, test_gaussian_blur);
    tcase_add_test(eval, test_topk_mean);
    tcase_add_test(eval, test_feature_distance);
    tcase_add_test(eval, test_complexity);
    tcase_add_test(eval, test_knn_distance);
    tcase_add_test(eval, test_geo_transform);
    TCase *geo = tu_tcase(s, "geo", 300); /* 150 training steps: a second, minutes under ASan */
    tcase_add_test(geo, test_geo_separates);
    TCase *cli = tu_tcase(s, "cli", 120);
    tcase_add_test(cli, test_mvtec_end_to_end);
    tcase_add_test(cli, test_one_class);
    tcase_add_test(cli, test_eps_is_training_loss);
    tcase_add_test(cli, test_bad_input);
    tcase_add_test(cli, test_help);
    TCase *bench = tu_tcase(s, "synthetic", 300); /* 200 training steps; skipped under ASan */
    tcase_add_test(bench, test_synthetic_benchmark);
    return tu_run(s);
}
