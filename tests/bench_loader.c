/*
 * Benchmark of serving batches: the loader over an in-memory dataset of
 * random pixels (what a mapped cache looks like once in the page cache), with
 * random flip and crop, for 1 and 2 worker threads. The trainer's side only
 * takes each batch, so this is the most the loader can serve. Each case runs
 * for --seconds after a warmup, --reps times, and prints the best as one line:
 *   bench loader name=NAME threads=T batches_per_s=X images_per_s=Y
 * scripts/bench_torch_data.py prints the same lines for torchvision's
 * DataLoader and scripts/bench.sh compares the two.
 *
 * usage: bench_loader [--seconds S] [--reps N] [--threads LIST] [--case SUBSTRING]
 */
#include "autograd/error.h"
#include "data/loader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *name;
    int64_t count;
    int h, w, c, batch, crop;
} data_case;

/* Keep in step with scripts/bench_torch_data.py. */
static const data_case cases[] = {
    {"28x28x1_flip_crop24_b128", 60000, 28, 28, 1, 128, 24},
    {"64x64x3_flip_crop56_b64", 10000, 64, 64, 3, 64, 56},
    {"64x64x3_flip_b64", 10000, 64, 64, 3, 64, 0},
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* count images of pixels from a fixed LCG: the data only has to be non-trivial. */
static int make_dataset(dc_dataset *ds, const data_case *dc) {
    size_t n = (size_t)dc->count * dc->h * dc->w * dc->c;
    uint8_t *px = malloc(n);
    int32_t *labels = malloc((size_t)dc->count * sizeof *labels);
    if (!px || !labels) {
        free(px);
        free(labels);
        return dc_fail("out of memory for %zu pixels", n);
    }
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        px[i] = (uint8_t)(s >> 56);
    }
    for (int64_t i = 0; i < dc->count; i++)
        labels[i] = (int32_t)(i % 10);
    *ds = (dc_dataset){.count = dc->count, .h = dc->h, .w = dc->w, .c = dc->c, .pixels = px,
                       .labels = labels};
    return 0;
}

/* Batches per second over `seconds`, after a warmup that fills the queue. */
static double serve(const dc_dataset *ds, const data_case *dc, int threads, double seconds) {
    dc_loader_config cfg = {.ds = ds, .batch_size = dc->batch, .world = 1, .seed = 1234,
                            .threads = threads, .prefetch = 2 * threads, .flip = true,
                            .crop = dc->crop};
    dc_loader *l;
    if (dc_loader_open(&l, &cfg, 0) < 0)
        return -1;
    for (int i = 0; i < 4 * threads; i++)
        if (!dc_loader_next(l))
            goto fail;
    int64_t n = 0;
    double t0 = now(), t;
    do {
        if (!dc_loader_next(l))
            goto fail;
        n++;
    } while ((t = now()) - t0 < seconds);
    dc_loader_close(l);
    return (double)n / (t - t0);
fail:
    dc_loader_close(l);
    return -1;
}

int main(int argc, char **argv) {
    double seconds = 2;
    int reps = 3;
    const char *threads_list = "1,2", *only = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seconds"))
            seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads_list = argv[i + 1];
        else if (!strcmp(argv[i], "--case"))
            only = argv[i + 1];
    }
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const data_case *dc = &cases[k];
        if (only && !strstr(dc->name, only))
            continue;
        dc_dataset ds;
        if (make_dataset(&ds, dc) < 0) {
            fprintf(stderr, "bench_loader: %s\n", dc_error());
            return 1;
        }
        for (const char *t = threads_list; *t; t += strcspn(t, ","), t += *t == ',') {
            int threads = atoi(t);
            double best = 0;
            for (int r = 0; r < reps; r++) {
                double bps = serve(&ds, dc, threads, seconds);
                if (bps < 0) {
                    fprintf(stderr, "bench_loader: %s: %s\n", dc->name, dc_error());
                    return 1;
                }
                best = bps > best ? bps : best;
            }
            printf("bench loader name=%s threads=%d batches_per_s=%.1f images_per_s=%.0f\n", dc->name,
                   threads, best, best * dc->batch);
            fflush(stdout);
        }
        free((void *)ds.pixels);
        free((void *)ds.labels);
    }
    return 0;
}
