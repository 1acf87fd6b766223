/*
 * CPU benchmark of the two ways of a 3x3 stride-1 convolution with the
 * direct kernels: direct and Winograd F(2x2, 3x3) (autograd/cpu/conv.h), the
 * forward pass (weights as training has them, and packed as f16 as
 * inference has them), the input gradient and the filter gradient (with the bias's), on the shapes of
 * configs/fashion-mnist.json and Stable Diffusion's UNet. One line per case
 * and pass:
 *   conv NAME PASS direct_ms=D winograd_ms=W speedup=S
 * (best of the repetitions). The ISA and thread count are the environment's
 * (DC_CPU_ISA, OMP_NUM_THREADS); CPU_CONV_AUTO picks Winograd where these
 * figures say it is faster.
 *
 * usage: bench_conv_algo [--reps N] [--case SUBSTRING] [--pass fwd|fwd_f16|dx|dw]
 */
#include "autograd/cpu/conv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const char *name;
    int64_t n, h, w, cin, cout;
} conv_case;

static const conv_case cases[] = {
    {"fm_c16_32x32", 64, 32, 32, 16, 16},      {"fm_c32_16x16", 64, 16, 16, 32, 32},
    {"fm_c64_8x8", 64, 8, 8, 64, 64},          {"fm_c64_4x4", 64, 4, 4, 64, 64},
    {"fm_c48to32_16x16", 64, 16, 16, 48, 32},  {"fm_c32to16_32x32", 64, 32, 32, 32, 16},
    {"sd_c320_64x64", 2, 64, 64, 320, 320},    {"sd_c640_32x32", 2, 32, 32, 640, 640},
    {"sd_c1280_16x16", 2, 16, 16, 1280, 1280}, {"sd_c1280_8x8", 2, 8, 8, 1280, 1280},
    {"sd_c320_32x32", 2, 32, 32, 320, 320},    {"sd_c640_16x16", 2, 16, 16, 640, 640},
    {"sd_c1280_4x4", 2, 4, 4, 1280, 1280},
};

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float *random_floats(int64_t n) {
    static uint64_t s = 0x9e3779b97f4a7c15ull;
    float *p = malloc((size_t)n * sizeof *p);
    for (int64_t i = 0; p && i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (float)((double)(s >> 40) / (double)(1 << 23) - 1.0) * 0.1f;
    }
    return p;
}

enum { FORWARD, FORWARD_F16, INPUT_GRAD, FILTER_GRAD };
static const char *pass_names[] = {"fwd", "fwd_f16", "dx", "dw"};

/* Best time of one pass the given way, in seconds. */
static double time_pass(const conv_case *c, int pass, cpu_conv_algo algo, int reps, const float *x,
                        const float *w, const uint16_t *wh, float *dw, float *b, float *y) {
    cpu_conv_geom g = {c->n, c->h, c->w, c->cin, c->cout, 3, 3, 1, 1, c->h, c->w, algo,
                       pass == FORWARD_F16, pass == FORWARD_F16};
    int64_t floats = cpu_conv2d_scratch_floats(&g, CPU_CONV_SCRATCH_BYTES);
    float *scratch = malloc((size_t)(floats + 1) * sizeof *scratch);
    double best = 1e30;
    for (int r = 0; r <= reps && scratch; r++) {
        double t0 = now();
        if (pass == INPUT_GRAD)
            cpu_conv2d_backward(&g, y, NULL, w, (float *)x, true, NULL, NULL, scratch, floats);
        else if (pass == FILTER_GRAD)
            cpu_conv2d_backward(&g, y, x, w, NULL, false, dw, b, scratch, floats);
        else
            cpu_conv2d_forward(&g, y, x, pass == FORWARD_F16 ? (const float *)(const void *)wh : w,
                               b, scratch, floats);
        double t = now() - t0;
        if (r > 0 && t < best) /* the first is a warmup */
            best = t;
    }
    free(scratch);
    return best;
}

int main(int argc, char **argv) {
    int reps = 3;
    const char *only = NULL, *only_pass = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--case"))
            only = argv[i + 1];
        else if (!strcmp(argv[i], "--pass"))
            only_pass = argv[i + 1];
    }
    if (!cpu_conv_pack_block()) {
        fprintf(stderr, "bench_conv_algo: no direct kernels on this CPU (or DC_CPU_ISA=baseline)\n");
        return 1;
    }
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const conv_case *c = &cases[k];
        if (only && !strstr(c->name, only))
            continue;
        int64_t nx = c->n * c->h * c->w * c->cin, ny = c->n * c->h * c->w * c->cout;
        int64_t K = 9 * c->cin;
        float *x = random_floats(nx), *w = random_floats(c->cout * K), *b = random_floats(c->cout);
        float *y = random_floats(ny), *dw = random_floats(c->cout * 9 * c->cin);
        /* packed weights fill whole blocks of output channels (zero past cout) */
        int64_t B = cpu_conv_pack_block(), packed = (c->cout + B - 1) / B * B * K;
        uint16_t *wh = malloc((size_t)packed * sizeof *wh);
        if (!x || !w || !b || !y || !wh || !dw)
            return 1;
        cpu_conv_pack_half(w, wh, c->cout, K);
        for (int pass = FORWARD; pass <= FILTER_GRAD; pass++) {
            if ((pass == FORWARD_F16 && c->cout % cpu_conv_pack_block()) ||
                (only_pass && strcmp(only_pass, pass_names[pass])))
                continue;
            double d = time_pass(c, pass, CPU_CONV_DIRECT, reps, x, w, wh, dw, b, y);
            double v = time_pass(c, pass, CPU_CONV_WINOGRAD, reps, x, w, wh, dw, b, y);
            printf("conv %s %s direct_ms=%.3f winograd_ms=%.3f speedup=%.2f\n", c->name,
                   pass_names[pass], d * 1e3, v * 1e3, d / v);
            fflush(stdout);
        }
        free(x), free(w), free(b), free(y), free(wh), free(dw);
    }
    return 0;
}
