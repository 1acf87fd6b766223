/*
 * The machine's own matrix-product speed: one large square single-precision
 * GEMM (C = A B, n x n) through the OpenBLAS diffc links, on as many threads
 * as OMP_NUM_THREADS gives it. It is the yardstick of scripts/bench.sh train,
 * which reports the FLOP/s a whole training step reaches as a share of it.
 * Prints the best of the repetitions as one line:
 *   bench sgemm n=N threads=T ms=M gflops=G
 *
 * usage: bench_sgemm [--n N] [--reps N]
 */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int parse(int argc, char **argv, int *n, int *reps) {
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n"))
            *n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            *reps = atoi(argv[i + 1]);
        else
            return -1;
    }
    return argc % 2 == 1 && *n >= 1 && *n <= 16384 && *reps >= 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    int n = 2048, reps = 5;
    if (parse(argc, argv, &n, &reps)) {
        fprintf(stderr, "usage: %s [--n N] [--reps N]\n", argv[0]);
        return 2;
    }
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(count * sizeof *a), *b = malloc(count * sizeof *b), *c = malloc(count * sizeof *c);
    if (!a || !b || !c) {
        fprintf(stderr, "bench_sgemm: out of memory for three %dx%d matrices\n", n, n);
        free(a), free(b), free(c);
        return 1;
    }
    for (size_t i = 0; i < count; i++) { /* non-trivial values; the speed does not depend on them */
        a[i] = (float)(i % 17) / 17.0f - 0.5f;
        b[i] = (float)(i % 13) / 13.0f - 0.5f;
    }
    double best = 1e30;
    for (int r = 0; r < reps + 1; r++) { /* the first run warms the caches and the thread pool */
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double t = now() - t0;
        if (r > 0 && t < best)
            best = t;
    }
    printf("bench sgemm n=%d threads=%d ms=%.1f gflops=%.1f\n", n, omp_get_max_threads(), best * 1e3,
           2.0 * n * n * (double)n / best * 1e-9);
    free(a), free(b), free(c);
    return 0;
}
