/* The batch loader on datasets of random pixels built in memory: every image
 * once per epoch across ranks, the documented order and augmentation draws,
 * the same batches whatever the threads, prefetch or resume point, flips that
 * mirror exactly and crops that stay inside, closing while workers are busy,
 * and the configurations it must refuse. */
#include "testutil.h"

#include "autograd/error.h"
#include "autograd/rng.h"
#include "data/loader.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- datasets and runs ---- */

/* count images of random pixels; labels random in [0, 10), or all -1. */
static dc_dataset make_dataset(int64_t count, int h, int w, int c, bool labelled) {
    size_t n = (size_t)count * h * w * c;
    uint8_t *px = malloc(n);
    int32_t *labels = malloc((size_t)count * sizeof *labels);
    ck_assert(px && labels);
    for (size_t i = 0; i < n; i++)
        px[i] = (uint8_t)tu_next();
    for (int64_t i = 0; i < count; i++)
        labels[i] = labelled ? (int32_t)(tu_next() % 10) : -1;
    return (dc_dataset){.count = count, .h = h, .w = w, .c = c, .pixels = px, .labels = labels};
}

static void free_dataset(dc_dataset *ds) {
    free((void *)ds->pixels);
    free((void *)ds->labels);
}

static dc_loader_config config(const dc_dataset *ds, int batch_size, int threads) {
    return (dc_loader_config){.ds = ds, .batch_size = batch_size, .world = 1, .seed = tu_next(),
                              .threads = threads, .prefetch = 2};
}

static dc_loader *open_ok(const dc_loader_config *cfg, int64_t cursor) {
    dc_loader *l;
    ck_assert_msg(dc_loader_open(&l, cfg, cursor) == 0, "%s", dc_error());
    ck_assert_int_eq(dc_loader_cursor(l), cursor);
    return l;
}

/* Batches copied out of a loader, one after another. */
typedef struct {
    int nb, n;      /* batches, images per batch */
    size_t floats;  /* per image */
    float *images;  /* [nb * n, floats] */
    int32_t *labels;
    int64_t *ids;
} record;

/* `hold`: keep each batch a while and check that no worker wrote into it. */
static record run_held(const dc_loader_config *cfg, int64_t cursor, int nb, bool hold) {
    dc_loader *l = open_ok(cfg, cursor);
    record r = {.nb = nb, .n = cfg->batch_size};
    for (int k = 0; k < nb; k++) {
        const dc_batch *b = dc_loader_next(l);
        ck_assert_msg(b != NULL, "%s", dc_error());
        ck_assert_int_eq(b->index, cursor + k);
        ck_assert_int_eq(dc_loader_cursor(l), cursor + k + 1);
        ck_assert_int_eq(b->n, cfg->batch_size);
        int side = cfg->crop;
        ck_assert_int_eq(b->h, side ? side : cfg->ds->h);
        ck_assert_int_eq(b->w, side ? side : cfg->ds->w);
        ck_assert_int_eq(b->c, cfg->ds->c);
        if (k == 0) {
            r.floats = (size_t)b->h * b->w * b->c;
            r.images = malloc((size_t)nb * r.n * r.floats * sizeof(float));
            r.labels = malloc((size_t)nb * r.n * sizeof(int32_t));
            r.ids = malloc((size_t)nb * r.n * sizeof(int64_t));
        }
        size_t at = (size_t)k * r.n;
        memcpy(r.images + at * r.floats, b->images, r.n * r.floats * sizeof(float));
        memcpy(r.labels + at, b->labels, r.n * sizeof(int32_t));
        memcpy(r.ids + at, b->ids, r.n * sizeof(int64_t));
        if (hold) {
            nanosleep(&(struct timespec){0, 2 * 1000 * 1000}, NULL);
            ck_assert_msg(!memcmp(r.images + at * r.floats, b->images, r.n * r.floats * sizeof(float)) &&
                              !memcmp(r.ids + at, b->ids, r.n * sizeof(int64_t)),
                          "batch %d changed while held", k);
        }
    }
    dc_loader_close(l);
    return r;
}

static record run(const dc_loader_config *cfg, int64_t cursor, int nb) {
    return run_held(cfg, cursor, nb, false);
}

static void free_record(record *r) {
    free(r->images);
    free(r->labels);
    free(r->ids);
}

/* Batches [from, from + r.nb) of `a` equal `b` bit for bit. */
static bool same_batches(const record *a, int from, const record *b) {
    size_t at = (size_t)from * a->n, m = (size_t)b->nb * b->n;
    return !memcmp(a->ids + at, b->ids, m * sizeof(int64_t)) &&
           !memcmp(a->labels + at, b->labels, m * sizeof(int32_t)) &&
           !memcmp(a->images + at * a->floats, b->images, m * a->floats * sizeof(float));
}

/* ---- what an image shows ---- */

typedef struct {
    bool flip;
    int y0, x0;
} window;

static float expected(uint8_t v) { return (float)v / 127.5f - 1.0f; }

static bool shows(const dc_dataset *ds, int64_t id, const float *img, int oh, int ow, window win) {
    const uint8_t *src = ds->pixels + (size_t)id * ds->h * ds->w * ds->c;
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int sx = win.x0 + (win.flip ? ow - 1 - x : x);
            for (int k = 0; k < ds->c; k++)
                if (img[((size_t)y * ow + x) * ds->c + k] !=
                    expected(src[((size_t)(win.y0 + y) * ds->w + sx) * ds->c + k]))
                    return false;
        }
    return true;
}

/* The one window (flip, offsets inside the image) of dataset image `id` that
 * image j of a record shows; also checks its label. */
static window find_window(const dc_dataset *ds, const record *r, size_t j, int oh, int ow) {
    int64_t id = r->ids[j];
    ck_assert_msg(id >= 0 && id < ds->count, "id %lld", (long long)id);
    ck_assert_int_eq(r->labels[j], ds->labels[id]);
    window found = {0};
    int matches = 0;
    for (int f = 0; f < 2; f++)
        for (int y0 = 0; y0 + oh <= ds->h; y0++)
            for (int x0 = 0; x0 + ow <= ds->w; x0++) {
                window w = {f, y0, x0};
                if (shows(ds, id, r->images + j * r->floats, oh, ow, w))
                    found = w, matches++;
            }
    ck_assert_msg(matches == 1, "image %zu (dataset image %lld) matches %d windows", j,
                  (long long)id, matches);
    return found;
}

/* ---- the order ---- */

/* World sizes 1, 2 and 3, one loader per rank, on datasets whose size G does
 * not divide (and one smaller than a global batch): put together, the ranks'
 * shares are one stream of positions, the same stream (ids and pixels)
 * whatever the world size, and each epoch of it is a permutation. */
START_TEST(test_every_image_once) {
    static const int64_t counts[] = {37, 5, 1};
    for (int d = 0; d < 3; d++) {
        int64_t n = counts[d];
        dc_dataset ds = make_dataset(n, 6, 5, 3, d != 1);
        enum { B = 4 };
        int64_t P = 3 * n + 7; /* positions compared: a few epochs and a part */
        int64_t *ids1 = NULL;
        float *px1 = NULL;
        uint64_t seed = tu_next();
        for (int world = 1; world <= 3; world++) {
            int64_t G = (int64_t)world * B, K = (P + G - 1) / G;
            int64_t *ids = malloc((size_t)(K * G) * sizeof *ids);
            float *px = NULL;
            size_t floats = 0;
            for (int rank = 0; rank < world; rank++) {
                dc_loader_config cfg = config(&ds, B, 2);
                cfg.world = world, cfg.rank = rank, cfg.seed = seed;
                cfg.flip = true, cfg.crop = 4;
                record r = run(&cfg, 0, (int)K);
                floats = r.floats;
                if (!px)
                    px = malloc((size_t)(K * G) * floats * sizeof *px);
                for (int64_t k = 0; k < K; k++)
                    for (int i = 0; i < B; i++) {
                        size_t p = (size_t)(k * G + rank * B + i), j = (size_t)(k * B + i);
                        ids[p] = r.ids[j];
                        memcpy(px + p * floats, r.images + j * floats, floats * sizeof *px);
                        find_window(&ds, &r, j, 4, 4);
                    }
                free_record(&r);
            }
            for (int64_t e = 0; (e + 1) * n <= K * G; e++) {
                char *seen = calloc((size_t)n, 1);
                for (int64_t p = e * n; p < (e + 1) * n; p++) {
                    ck_assert_msg(!seen[ids[p]], "count %lld, world %d: epoch %lld has image %lld twice",
                                  (long long)n, world, (long long)e, (long long)ids[p]);
                    seen[ids[p]] = 1;
                }
                free(seen);
            }
            if (world == 1) {
                ids1 = ids, px1 = px;
                continue;
            }
            ck_assert_msg(!memcmp(ids, ids1, (size_t)P * sizeof *ids), "count %lld: world %d reorders",
                          (long long)n, world);
            ck_assert_msg(!memcmp(px, px1, (size_t)P * floats * sizeof *px),
                          "count %lld: world %d augments differently", (long long)n, world);
            free(ids);
            free(px);
        }
        free(ids1);
        free(px1);
        free_dataset(&ds);
    }
}
END_TEST

/* Epoch e of the stream, as the top of loader.c defines it, written again from that text. */
static void reference_epoch(int64_t *perm, int64_t n, uint64_t seed, int64_t e) {
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    for (int64_t t = 0; t < n - 1; t++) {
        dc_u32x4 blk = dc_rand_block(seed, (uint64_t)e, (uint64_t)(t / 2));
        uint64_t r = blk.w[2 * (t % 2)] + ((uint64_t)blk.w[2 * (t % 2) + 1] << 32);
        int64_t i = n - 1 - t;
        int64_t j = (int64_t)((unsigned __int128)r * (unsigned __int128)(i + 1) >> 64);
        int64_t v = perm[i];
        perm[i] = perm[j], perm[j] = v;
    }
}

/* The documented order and augmentation draws, for a rank of a world of 2
 * over three epochs. A change here breaks the resumption of saved runs. */
START_TEST(test_documented_contract) {
    enum { N = 23, B = 3, K = 25, CROP = 5 };
    dc_dataset ds = make_dataset(N, 7, 9, 1, true);
    dc_loader_config cfg = config(&ds, B, 2);
    cfg.world = 2, cfg.rank = 1, cfg.flip = true, cfg.crop = CROP;
    record r = run(&cfg, 0, K);
    int64_t perm[N];
    for (int k = 0; k < K; k++)
        for (int i = 0; i < B; i++) {
            int64_t p = (int64_t)k * 2 * B + B + i;
            reference_epoch(perm, N, cfg.seed, p / N);
            size_t j = (size_t)k * B + i;
            ck_assert_int_eq(r.ids[j], perm[p % N]);
            ck_assert_int_eq(r.labels[j], ds.labels[perm[p % N]]);
            uint32_t u[3];
            for (int m = 0; m < 3; m++)
                u[m] = (uint32_t)(dc_rand_uniform(cfg.seed, (1ull << 63) + (uint64_t)p, (uint64_t)m) *
                                  16777216.0f);
            window want = {u[0] < (1u << 23), (int)((uint64_t)u[1] * (7 - CROP + 1) >> 24),
                           (int)((uint64_t)u[2] * (9 - CROP + 1) >> 24)};
            ck_assert_msg(shows(&ds, r.ids[j], r.images + j * r.floats, CROP, CROP, want),
                          "position %lld: not flip %d at (%d, %d)", (long long)p, want.flip, want.y0,
                          want.x0);
        }
    free_record(&r);
    free_dataset(&ds);
}
END_TEST

/* The same seed gives the same batches with 1 or 4 threads and any prefetch;
 * another seed another order and other augmentations. */
START_TEST(test_same_seed_same_batches) {
    enum { K = 30 };
    dc_dataset ds = make_dataset(100, 12, 10, 3, true);
    dc_loader_config cfg = config(&ds, 7, 1);
    cfg.prefetch = 1, cfg.flip = true, cfg.crop = 8;
    record one = run(&cfg, 0, K);
    cfg.threads = 4, cfg.prefetch = 3;
    record four = run_held(&cfg, 0, K, true);
    ck_assert_msg(same_batches(&one, 0, &four), "1 and 4 threads give different batches");
    cfg.threads = 3, cfg.prefetch = 8;
    record again = run(&cfg, 0, K);
    ck_assert_msg(same_batches(&one, 0, &again), "a second run gives different batches");

    cfg.seed ^= 1;
    record other = run(&cfg, 0, K);
    int same_id = 0, same_window = 0;
    for (int j = 0; j < K * 7; j++) {
        same_id += one.ids[j] == other.ids[j];
        window a = find_window(&ds, &one, (size_t)j, 8, 8), b = find_window(&ds, &other, (size_t)j, 8, 8);
        same_window += a.flip == b.flip && a.y0 == b.y0 && a.x0 == b.x0;
    }
    /* by chance: 1 in 100 for the image, 1 in 2 x 5 x 3 for the window */
    ck_assert_msg(same_id < 15, "seeds differing in one bit: %d of %d positions hold the same image",
                  same_id, K * 7);
    ck_assert_msg(same_window < 30, "seeds differing in one bit: %d of %d windows alike", same_window,
                  K * 7);
    free_record(&one);
    free_record(&four);
    free_record(&again);
    free_record(&other);
    free_dataset(&ds);
}
END_TEST

/* Opening at cursor k continues the uninterrupted run from batch k: mid-epoch,
 * at a batch that spans two epochs, and for another rank. */
START_TEST(test_resume) {
    enum { K = 20 };
    dc_dataset ds = make_dataset(50, 8, 8, 3, true);
    for (int world = 1; world <= 2; world++) {
        dc_loader_config cfg = config(&ds, 8, 2);
        cfg.world = world, cfg.rank = world - 1, cfg.flip = true, cfg.crop = 6;
        record all = run(&cfg, 0, K);
        static const int from[] = {1, 3, 6, 13, K - 1};
        for (int f = 0; f < 5; f++) {
            cfg.threads = 1 + f % 3;
            record rest = run(&cfg, from[f], K - from[f]);
            ck_assert_msg(same_batches(&all, from[f], &rest), "world %d: resumed at %d differs", world,
                          from[f]);
            free_record(&rest);
        }
        free_record(&all);
    }
    free_dataset(&ds);
}
END_TEST

/* dc_loader_epoch is (k G) / count; the last batch whose positions fit in
 * int64 can be opened and read, the one after it is an error. */
START_TEST(test_epoch_and_end) {
    dc_dataset ds = make_dataset(10, 3, 3, 1, false);
    dc_loader_config cfg = config(&ds, 3, 2);
    cfg.world = 2;
    dc_loader *l = open_ok(&cfg, 0);
    for (int64_t k = 0; k < 40; k++)
        ck_assert_int_eq(dc_loader_epoch(l, k), k * 6 / 10);
    ck_assert_int_eq(dc_loader_epoch(l, -1), -1);
    dc_loader_close(l);

    int64_t last = INT64_MAX / 6 - 1;
    l = open_ok(&cfg, last);
    ck_assert_int_eq(dc_loader_epoch(l, last), last * 6 / 10);
    const dc_batch *b = dc_loader_next(l);
    ck_assert_msg(b != NULL, "%s", dc_error());
    ck_assert_int_eq(b->index, last);
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(b->labels[i], -1);
    ck_assert_ptr_null(dc_loader_next(l));
    ck_assert_msg(strstr(dc_error(), "overflow"), "%s", dc_error());
    dc_loader_close(l);
    ck_assert_int_eq(dc_loader_open(&l, &cfg, last + 1), -1);
    free_dataset(&ds);
}
END_TEST

/* ---- augmentation ---- */

/* One epoch of 400 images: each shows exactly one window of its own image,
 * about half mirrored, at every offset the crop allows; with flip off none
 * is mirrored. */
START_TEST(test_flip_and_crop) {
    enum { N = 400, B = 16 };
    static const struct {
        int h, w, c, crop;
    } cases[] = {{9, 11, 3, 5}, {6, 7, 1, 0}, {9, 11, 3, 9}, {5, 5, 2, 3}};
    for (int t = 0; t < 4; t++) {
        dc_dataset ds = make_dataset(N, cases[t].h, cases[t].w, cases[t].c, t % 2 == 0);
        int crop = cases[t].crop, oh = crop ? crop : ds.h, ow = crop ? crop : ds.w;
        for (int flip = 0; flip < 2; flip++) {
            dc_loader_config cfg = config(&ds, B, 2);
            cfg.flip = flip, cfg.crop = crop;
            record r = run(&cfg, 0, N / B);
            int flipped = 0, ys[16] = {0}, xs[16] = {0};
            for (size_t j = 0; j < N; j++) {
                window w = find_window(&ds, &r, j, oh, ow);
                flipped += w.flip;
                ys[w.y0]++, xs[w.x0]++;
            }
            if (flip) /* six standard deviations of a fair coin over N images */
                ck_assert_msg(abs(flipped - N / 2) < 60, "case %d: %d of %d flipped", t, flipped, N);
            else
                ck_assert_int_eq(flipped, 0);
            for (int y = 0; y + oh <= ds.h; y++)
                ck_assert_msg(ys[y] > 0, "case %d: no crop starts at row %d", t, y);
            for (int x = 0; x + ow <= ds.w; x++)
                ck_assert_msg(xs[x] > 0, "case %d: no crop starts at column %d", t, x);
            free_record(&r);
        }
        free_dataset(&ds);
    }
}
END_TEST

/* ---- threads ---- */

/* Closing right after opening (workers mid-batch), after one batch, and once
 * every slot is full (workers waiting) returns promptly and frees everything
 * (LeakSanitizer checks the last part). */
START_TEST(test_close_while_busy) {
    dc_dataset ds = make_dataset(64, 96, 96, 3, true);
    dc_loader_config cfg = config(&ds, 32, 4);
    cfg.prefetch = 3, cfg.flip = true, cfg.crop = 80;
    for (int round = 0; round < 30; round++) {
        dc_loader *l = open_ok(&cfg, round);
        if (round % 3 >= 1)
            ck_assert_ptr_nonnull(dc_loader_next(l));
        if (round % 3 == 2)
            nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
        dc_loader_close(l);
    }
    dc_loader_close(NULL);
    free_dataset(&ds);
}
END_TEST

/* ---- class subsets (dc_dataset_select_classes) ---- */

/* Every epoch over a subset of classes holds each image of those classes
 * exactly once and nothing else; unknown or absent classes are refused. */
START_TEST(test_class_subset) {
    dc_dataset ds = make_dataset(97, 4, 4, 1, true);
    char *names[10] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"};
    ds.num_classes = 10;
    ds.class_names = names;
    int32_t *labels = (int32_t *)ds.labels;
    labels[5] = 9; /* at least one image of class 9 and of class 2 */
    labels[6] = 2;
    int64_t *idx, n, want = 0;
    ck_assert_msg(dc_dataset_select_classes(&ds, "2,nine", &idx, &n) == 0, "%s", dc_error());
    for (int64_t i = 0; i < ds.count; i++)
        want += labels[i] == 2 || labels[i] == 9;
    ck_assert_int_eq(n, want);
    dc_loader_config cfg = config(&ds, 3, 2);
    cfg.subset = idx;
    cfg.n_subset = n;
    int nb = (int)(2 * n / 3); /* two epochs, give or take a batch */
    record r = run(&cfg, 0, nb);
    int *seen = calloc((size_t)ds.count, sizeof *seen);
    for (int64_t j = 0; j < (int64_t)nb * 3; j++) {
        int64_t id = r.ids[j];
        ck_assert_msg(labels[id] == 2 || labels[id] == 9, "image %lld of class %d", (long long)id, labels[id]);
        ck_assert_int_eq(r.labels[j], labels[id]);
        if (j < n) /* the first epoch: each once */
            ck_assert_msg(seen[id]++ == 0, "image %lld twice in an epoch", (long long)id);
    }
    free(seen);
    free_record(&r);
    free(idx);
    int32_t saved = labels[6];
    for (int64_t i = 0; i < ds.count; i++)
        labels[i] = labels[i] == 2 ? 3 : labels[i];
    ck_assert_int_eq(dc_dataset_select_classes(&ds, "2", &idx, &n), -1);
    ck_assert_msg(strstr(dc_error(), "class 2 (two): the dataset has no image of it"), "%s", dc_error());
    labels[6] = saved;
    ck_assert_int_eq(dc_dataset_select_classes(&ds, "10", &idx, &n), -1);
    ck_assert_msg(strstr(dc_error(), "class '10'"), "%s", dc_error());
    ck_assert_int_eq(dc_dataset_select_classes(&ds, "1,", &idx, &n), -1);
    ds.num_classes = 0;
    ck_assert_int_eq(dc_dataset_select_classes(&ds, "1", &idx, &n), -1);
    ck_assert_ptr_null(idx);
    ds.class_names = NULL;
    free_dataset(&ds);
}
END_TEST

/* ---- refused configurations ---- */

START_TEST(test_bad_config) {
    dc_dataset ds = make_dataset(10, 8, 6, 3, true);
    static const struct {
        const char *field, *message;
    } bad[] = {
        {"no dataset", "no dataset"},  {"count 0", "empty"},       {"no pixels", "no pixels"},
        {"batch 0", "batch size 0"},   {"world 0", "world size 0"}, {"rank -1", "rank -1"},
        {"rank = world", "rank 2"},    {"threads 0", "0 threads"},  {"prefetch 0", "prefetch 0"},
        {"crop 7", "crop 7"},          {"crop -1", "crop -1"},      {"cursor -1", "cursor -1"},
        {"threads 5000", "5000 threads"}, {"no labels", "no pixels or labels"},
    };
    for (size_t t = 0; t < sizeof bad / sizeof bad[0]; t++) {
        dc_dataset d = ds;
        dc_loader_config cfg = config(&d, 4, 2);
        int64_t cursor = 0;
        switch (t) {
        case 0: cfg.ds = NULL; break;
        case 1: d.count = 0; break;
        case 2: d.pixels = NULL; break;
        case 3: cfg.batch_size = 0; break;
        case 4: cfg.world = 0; break;
        case 5: cfg.rank = -1; break;
        case 6: cfg.world = 2, cfg.rank = 2; break;
        case 7: cfg.threads = 0; break;
        case 8: cfg.prefetch = 0; break;
        case 9: cfg.crop = 7; break;
        case 10: cfg.crop = -1; break;
        case 11: cursor = -1; break;
        case 12: cfg.threads = 5000; break;
        case 13: d.labels = NULL; break;
        }
        dc_loader *l = (dc_loader *)&ds; /* must come back NULL */
        dc_clear_error();
        ck_assert_msg(dc_loader_open(&l, &cfg, cursor) == -1, "%s: accepted", bad[t].field);
        ck_assert_ptr_null(l);
        ck_assert_msg(strstr(dc_error(), bad[t].message), "%s: message \"%s\"", bad[t].field,
                      dc_error());
    }
    free_dataset(&ds);
}
END_TEST

int main(void) {
    Suite *s = suite_create("loader");
    TCase *tc = tu_tcase(s, "loader", 20);
    tcase_add_test(tc, test_every_image_once);
    tcase_add_test(tc, test_documented_contract);
    tcase_add_test(tc, test_same_seed_same_batches);
    tcase_add_test(tc, test_resume);
    tcase_add_test(tc, test_epoch_and_end);
    tcase_add_test(tc, test_flip_and_crop);
    tcase_add_test(tc, test_close_while_busy);
    tcase_add_test(tc, test_class_subset);
    tcase_add_test(tc, test_bad_config);
    return tu_run(s);
}
