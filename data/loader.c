/*
 * The batch loader (see loader.h): worker threads fill a ring of batch slots
 * ahead of the trainer, which takes the batches strictly in order.
 *
 * The order, exactly (a contract: checkpoints store only the cursor):
 *
 *  - Epoch e is a Fisher-Yates shuffle of the identity [0, n), n = count
 *    (or n = n_subset, the permutation then indexing the subset's list),
 *    driven by Philox keyed (seed, stream e): step t = 0 .. n - 2 swaps
 *    perm[i] and perm[j], where i = n - 1 - t, j = floor(r (i + 1) / 2^64)
 *    and r is the 64-bit number whose low and high words are words 2h and
 *    2h + 1 (h = t % 2) of block t / 2. Taking j from the high half of the
 *    product skips the rejection loop of an exact draw; the bias of j is
 *    below n / 2^64, far below anything a training run could notice.
 *
 *  - The image at stream position p draws its augmentation from block 0 of
 *    (seed, stream 2^63 + p). An epoch number never exceeds a position, and
 *    positions are below 2^63, so these streams never meet the epochs'. With
 *    u_k = word k >> 8 (rng.h's 24-bit uniforms): flipped iff u_0 < 2^23
 *    (uniform < 0.5); crop rows start at floor(u_1 (h - crop + 1) / 2^24) and
 *    columns at floor(u_2 (w - crop + 1) / 2^24). The words are the same
 *    whether flip and crop are on or not, so turning one on never changes
 *    what the other draws.
 *
 * Threads. Batch k is assembled by one worker into slot k % S, S = prefetch
 * + 1: the batch the trainer holds plus `prefetch` assembled ahead. A worker
 * may claim batch k once the trainer has released batch k - S, which it does
 * by asking for the next batch. Claims are made in order under the lock, and
 * the claiming worker looks up the batch's dataset indices there too; since
 * claims go in order, the epochs they touch never go back, so a single
 * cached permutation (the latest epoch reached) serves every batch, those
 * spanning two epochs or, on a dataset smaller than a batch, several (a
 * shuffle holds the lock, O(count) once per epoch).
 * Copying, flipping and converting run outside the lock, so what a batch
 * holds depends only on k, never on the number of threads or on timing.
 */
#include "loader.h"

#include "image.h"

#include "autograd/error.h"
#include "autograd/rng.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 1024
#define MAX_PREFETCH 1024
#define AUG_STREAM ((uint64_t)1 << 63) /* + position: augmentation draws */

typedef struct {
    dc_batch b;
    bool ready; /* b holds batch b.index, complete */
} slot;

typedef struct {
    dc_loader *l;
    uint8_t *row; /* [ow * c] a mirrored source row */
} worker;

struct dc_loader {
    dc_loader_config cfg;
    int64_t group;     /* G = world * batch_size: positions per global batch */
    int64_t last;      /* the last batch whose positions fit in int64 */
    int oh, ow;        /* output image size (crop x crop, or the cached size) */
    int nslots;
    slot *slots;       /* [nslots] */
    int64_t *perm;     /* [count] the permutation of epoch perm_epoch */
    int64_t perm_epoch;
    int nworkers;      /* started */
    worker *workers;   /* [threads] */
    pthread_t *tids;   /* [threads] */
    pthread_mutex_t mu;
    pthread_cond_t claimable; /* a slot was released, or stop */
    pthread_cond_t filled;    /* a batch was completed */
    int64_t next_claim;       /* the next batch a worker assembles */
    int64_t released;         /* batches below this are no longer read by the trainer */
    int64_t cursor;           /* the next batch dc_loader_next returns */
    bool stop;
};

/* ---- the order ---- */

/* The images drawn from: the subset's, else the whole dataset's. */
static int64_t pool_size(const dc_loader_config *cfg) { return cfg->subset ? cfg->n_subset : cfg->ds->count; }

/* perm = epoch e's permutation of [0, n) (see the top of the file). */
static void shuffle(int64_t *perm, int64_t n, uint64_t seed, int64_t e) {
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    dc_u32x4 r = {{0}};
    for (int64_t t = 0; t + 1 < n; t++) {
        if (t % 2 == 0)
            r = dc_rand_block(seed, (uint64_t)e, (uint64_t)t / 2);
        unsigned h = (unsigned)(t % 2);
        uint64_t x = (uint64_t)r.w[2 * h] | (uint64_t)r.w[2 * h + 1] << 32;
        int64_t i = n - 1 - t;
        int64_t j = (int64_t)(((unsigned __int128)x * (uint64_t)(i + 1)) >> 64);
        int64_t tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

/* The stream position of image i of this rank's share of batch k. */
static int64_t position(const dc_loader *l, int64_t k, int i) {
    return k * l->group + (int64_t)l->cfg.rank * l->cfg.batch_size + i;
}

/* ids = the dataset indices of this rank's share of batch k. Called under
 * the lock, with k larger than any batch looked up before. */
static void lookup_ids(dc_loader *l, int64_t k, int64_t *ids) {
    int64_t n = pool_size(&l->cfg);
    for (int i = 0; i < l->cfg.batch_size; i++) {
        int64_t p = position(l, k, i), e = p / n;
        if (e != l->perm_epoch) {
            shuffle(l->perm, n, l->cfg.seed, e);
            l->perm_epoch = e;
        }
        int64_t q = l->perm[p - e * n];
        ids[i] = l->cfg.subset ? l->cfg.subset[q] : q;
    }
}

/* ---- assembling a batch ---- */

/* dst = the w pixels of src (c channels each) in reverse order. */
static void mirror_row(uint8_t *dst, const uint8_t *src, int w, int c) {
    for (int x = 0; x < w; x++)
        for (int k = 0; k < c; k++)
            dst[(size_t)x * c + k] = src[(size_t)(w - 1 - x) * c + k];
}

/* Image i of batch b: dataset image b->ids[i], cropped, maybe flipped, as
 * floats. `row` is the worker's scratch row. */
static void assemble_image(const dc_loader *l, const dc_batch *b, int i, uint8_t *row) {
    const dc_dataset *ds = l->cfg.ds;
    int c = ds->c, oh = l->oh, ow = l->ow;
    dc_u32x4 r = dc_rand_block(l->cfg.seed, AUG_STREAM + (uint64_t)position(l, b->index, i), 0);
    bool flip = l->cfg.flip && (r.w[0] >> 8) < (1u << 23);
    int y0 = (int)(((uint64_t)(r.w[1] >> 8) * (uint64_t)(ds->h - oh + 1)) >> 24);
    int x0 = (int)(((uint64_t)(r.w[2] >> 8) * (uint64_t)(ds->w - ow + 1)) >> 24);

    const uint8_t *src = ds->pixels + (size_t)b->ids[i] * ds->h * ds->w * c;
    float *dst = b->images + (size_t)i * oh * ow * c;
    for (int y = 0; y < oh; y++) {
        const uint8_t *in = src + ((size_t)(y0 + y) * ds->w + x0) * c;
        if (flip) {
            mirror_row(row, in, ow, c);
            in = row;
        }
        dc_u8_to_float(dst + (size_t)y * ow * c, in, (size_t)ow * c);
    }
    b->labels[i] = ds->labels[b->ids[i]];
}

/* ---- the workers and the trainer's side ---- */

static bool can_claim(const dc_loader *l) {
    return l->next_claim <= l->last && l->next_claim < l->released + l->nslots;
}

static void *worker_main(void *arg) {
    worker *wk = arg;
    dc_loader *l = wk->l;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->stop && !can_claim(l))
            pthread_cond_wait(&l->claimable, &l->mu);
        if (l->stop)
            break;
        int64_t k = l->next_claim++;
        slot *s = &l->slots[k % l->nslots];
        s->ready = false;
        s->b.index = k;
        s->b.position = position(l, k, 0);
        lookup_ids(l, k, s->b.ids);
        pthread_mutex_unlock(&l->mu);

        for (int i = 0; i < s->b.n; i++)
            assemble_image(l, &s->b, i, wk->row);

        pthread_mutex_lock(&l->mu);
        s->ready = true;
        pthread_cond_signal(&l->filled); /* only the trainer waits on it */
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

const dc_batch *dc_loader_next(dc_loader *l) {
    pthread_mutex_lock(&l->mu);
    if (l->cursor > l->last) {
        pthread_mutex_unlock(&l->mu);
        dc_fail("loader: batch %lld: its stream positions overflow 64 bits", (long long)l->cursor);
        return NULL;
    }
    l->released = l->cursor; /* the batch returned last is done with */
    pthread_cond_signal(&l->claimable);
    slot *s = &l->slots[l->cursor % l->nslots];
    while (!(s->ready && s->b.index == l->cursor))
        pthread_cond_wait(&l->filled, &l->mu);
    l->cursor++;
    pthread_mutex_unlock(&l->mu);
    return &s->b;
}

int64_t dc_loader_cursor(const dc_loader *l) { return l->cursor; }

int64_t dc_loader_epoch(const dc_loader *l, int64_t batch_index) {
    if (batch_index < 0 || batch_index > l->last)
        return -1;
    return batch_index * l->group / pool_size(&l->cfg);
}

/* ---- open and close ---- */

/* The last batch whose stream positions fit in int64. */
static int64_t last_batch(const dc_loader_config *cfg) {
    return INT64_MAX / ((int64_t)cfg->world * cfg->batch_size) - 1;
}

static int check_config(const dc_loader_config *cfg, int64_t cursor) {
    const dc_dataset *ds = cfg->ds;
    if (!ds)
        return dc_fail("loader: no dataset");
    if (ds->count < 1)
        return dc_fail("loader: the dataset is empty");
    if (ds->h < 1 || ds->w < 1 || ds->c < 1 || !ds->pixels || !ds->labels)
        return dc_fail("loader: the dataset has no pixels or labels (%d x %d x %d images)", ds->h,
                       ds->w, ds->c);
    if (cfg->subset && cfg->n_subset < 1)
        return dc_fail("loader: the subset of the dataset is empty");
    for (int64_t i = 0; cfg->subset && i < cfg->n_subset; i++)
        if (cfg->subset[i] < 0 || cfg->subset[i] >= ds->count)
            return dc_fail("loader: subset index %lld is outside the dataset's %lld images",
                           (long long)cfg->subset[i], (long long)ds->count);
    if (cfg->batch_size < 1)
        return dc_fail("loader: batch size %d: must be at least 1", cfg->batch_size);
    if (cfg->world < 1)
        return dc_fail("loader: world size %d: must be at least 1", cfg->world);
    if (cfg->rank < 0 || cfg->rank >= cfg->world)
        return dc_fail("loader: rank %d: must lie in [0, %d) for world size %d", cfg->rank,
                       cfg->world, cfg->world);
    if (cfg->threads < 1 || cfg->threads > MAX_THREADS)
        return dc_fail("loader: %d threads: must lie in [1, %d]", cfg->threads, MAX_THREADS);
    if (cfg->prefetch < 1 || cfg->prefetch > MAX_PREFETCH)
        return dc_fail("loader: prefetch %d: must lie in [1, %d]", cfg->prefetch, MAX_PREFETCH);
    int side = ds->h < ds->w ? ds->h : ds->w;
    if (cfg->crop < 0 || cfg->crop > side)
        return dc_fail("loader: crop %d: must lie in [0, %d] for %d x %d images", cfg->crop, side,
                       ds->h, ds->w);
    int64_t last = last_batch(cfg);
    if (cursor < 0 || cursor > last)
        return dc_fail("loader: cursor %lld: must lie in [0, %lld]", (long long)cursor,
                       (long long)last);
    return 0;
}

/* Bytes of `n` items of `size` (several factors), or 0 when that overflows. */
static size_t bytes_of(size_t size, int64_t a, int64_t b, int64_t c) {
    size_t n;
    if (__builtin_mul_overflow(size, (size_t)a, &n) || __builtin_mul_overflow(n, (size_t)b, &n) ||
        __builtin_mul_overflow(n, (size_t)c, &n))
        return 0;
    return n;
}

size_t dc_loader_buffer_bytes(int64_t batch_size, int h, int w, int c, int prefetch) {
    /* alloc_buffers: per slot, the images, labels and dataset ids */
    size_t images = bytes_of(sizeof(float), batch_size, (int64_t)h * w, c);
    size_t extra = bytes_of(sizeof(int32_t) + sizeof(int64_t), batch_size, 1, 1);
    size_t slot = images && extra && images <= SIZE_MAX - extra ? images + extra : 0;
    size_t all = slot ? bytes_of(slot, prefetch + 1, 1, 1) : 0;
    return all ? all : SIZE_MAX;
}

static int alloc_buffers(dc_loader *l) {
    const dc_loader_config *cfg = &l->cfg;
    int c = cfg->ds->c, bs = cfg->batch_size;
    size_t image_bytes = bytes_of(sizeof(float), bs, (int64_t)l->oh * l->ow, c);
    size_t perm_bytes = bytes_of(sizeof(int64_t), pool_size(cfg), 1, 1);
    if (!image_bytes || !perm_bytes)
        return dc_fail("loader: a batch of %d x %d x %d x %d floats is too large", bs, l->oh, l->ow, c);
    l->perm = malloc(perm_bytes);
    l->slots = calloc((size_t)l->nslots, sizeof *l->slots);
    l->workers = calloc((size_t)cfg->threads, sizeof *l->workers);
    l->tids = calloc((size_t)cfg->threads, sizeof *l->tids);
    if (!l->perm || !l->slots || !l->workers || !l->tids)
        return dc_fail("loader: out of memory");
    for (int s = 0; s < l->nslots; s++) {
        dc_batch *b = &l->slots[s].b;
        *b = (dc_batch){.index = -1, .n = bs, .h = l->oh, .w = l->ow, .c = c};
        b->images = malloc(image_bytes);
        b->labels = malloc((size_t)bs * sizeof *b->labels);
        b->ids = malloc((size_t)bs * sizeof *b->ids);
        if (!b->images || !b->labels || !b->ids)
            return dc_fail("loader: out of memory for %d batches of %zu bytes", l->nslots, image_bytes);
    }
    for (int t = 0; t < cfg->threads; t++) {
        l->workers[t] = (worker){l, malloc((size_t)l->ow * c)};
        if (!l->workers[t].row)
            return dc_fail("loader: out of memory");
    }
    return 0;
}

static int start_workers(dc_loader *l) {
    for (; l->nworkers < l->cfg.threads; l->nworkers++)
        if (pthread_create(&l->tids[l->nworkers], NULL, worker_main, &l->workers[l->nworkers]))
            return dc_fail("loader: cannot start worker thread %d of %d", l->nworkers + 1,
                           l->cfg.threads);
    return 0;
}

int dc_loader_open(dc_loader **out, const dc_loader_config *cfg, int64_t cursor) {
    *out = NULL;
    if (!cfg)
        return dc_fail("loader: no configuration");
    if (check_config(cfg, cursor) < 0)
        return -1;
    dc_loader *l = calloc(1, sizeof *l);
    if (!l)
        return dc_fail("loader: out of memory");
    l->cfg = *cfg;
    l->group = (int64_t)cfg->world * cfg->batch_size;
    l->last = last_batch(cfg);
    l->oh = cfg->crop ? cfg->crop : cfg->ds->h;
    l->ow = cfg->crop ? cfg->crop : cfg->ds->w;
    l->nslots = cfg->prefetch + 1;
    l->perm_epoch = -1;
    l->next_claim = l->released = l->cursor = cursor;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->claimable, NULL);
    pthread_cond_init(&l->filled, NULL);
    if (alloc_buffers(l) < 0 || start_workers(l) < 0) {
        dc_loader_close(l);
        return -1;
    }
    *out = l;
    return 0;
}

void dc_loader_close(dc_loader *l) {
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->claimable);
    pthread_mutex_unlock(&l->mu);
    for (int t = 0; t < l->nworkers; t++)
        pthread_join(l->tids[t], NULL);
    pthread_cond_destroy(&l->filled);
    pthread_cond_destroy(&l->claimable);
    pthread_mutex_destroy(&l->mu);
    for (int s = 0; l->slots && s < l->nslots; s++) {
        free(l->slots[s].b.images);
        free(l->slots[s].b.labels);
        free(l->slots[s].b.ids);
    }
    for (int t = 0; l->workers && t < l->cfg.threads; t++)
        free(l->workers[t].row);
    free(l->slots);
    free(l->workers);
    free(l->tids);
    free(l->perm);
    free(l);
}
