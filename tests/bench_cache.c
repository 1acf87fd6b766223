/*
 * Benchmark of building a dataset cache: dc_dataset_open on a folder of
 * JPEGs and PNGs (scripts/bench_torch_data.py make-folder writes one), each
 * decoded and resized to 64 x 64 RGB, into a fresh cache folder every run;
 * then opening the finished cache again. Prints the best of --reps runs:
 *   bench cache name=folder_256_to_64 images_per_s=Y
 *   bench cache name=reopen images_per_s=Y
 * scripts/bench_torch_data.py cache does the same work with PIL and a
 * DataLoader; scripts/bench.sh compares the two.
 *
 * usage: bench_cache FOLDER [--reps N]
 */
#define _GNU_SOURCE /* nftw */
#include "autograd/error.h"
#include "data/dataset.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Everything inside the folder nftw walks, not the folder itself. */
static int remove_inside(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    return ftw->level > 0 ? remove(path) : 0;
}

static void empty(const char *dir) { nftw(dir, remove_inside, 8, FTW_DEPTH | FTW_PHYS); }

/* Seconds to open `folder` into a cache under cache_dir (built when
 * `build`, else reused); the image count in *count. -1 on error. */
static double open_once(const char *folder, const char *cache_dir, bool build, int64_t *count) {
    if (build)
        empty(cache_dir);
    dc_dataset_options opts = {.resolution = 64, .channels = 3, .cache_dir = cache_dir, .quiet = true};
    dc_dataset ds;
    double t0 = now();
    if (dc_dataset_open(&ds, folder, &opts) < 0)
        return -1;
    double t = now() - t0;
    *count = ds.count;
    dc_dataset_close(&ds);
    return t;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_cache FOLDER [--reps N]\n");
        return 2;
    }
    int reps = argc >= 4 && !strcmp(argv[2], "--reps") ? atoi(argv[3]) : 3;
    char cache_dir[] = "/tmp/dc_bench_cache_XXXXXX";
    if (!mkdtemp(cache_dir)) {
        perror("bench_cache: mkdtemp");
        return 1;
    }
    static const char *names[2] = {"folder_256_to_64", "reopen"};
    double best[2] = {0, 0};
    int64_t count = 0;
    for (int r = 0; r < reps; r++)
        for (int reuse = 0; reuse < 2; reuse++) {
            double t = open_once(argv[1], cache_dir, !reuse, &count);
            if (t < 0) {
                fprintf(stderr, "bench_cache: %s\n", dc_error());
                empty(cache_dir);
                rmdir(cache_dir);
                return 1;
            }
            best[reuse] = count / t > best[reuse] ? count / t : best[reuse];
        }
    empty(cache_dir);
    rmdir(cache_dir);
    for (int k = 0; k < 2; k++)
        printf("bench cache name=%s images=%lld images_per_s=%.0f\n", names[k], (long long)count, best[k]);
    return 0;
}
