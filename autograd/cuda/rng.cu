/* CUDA Philox fills (see rng.h here and autograd/rng.h): one thread per
 * Philox block, so every element is what the host draws for it. */
#include "common.cuh"
#include "rng.h"

#include "../rng.h"

/* Elements offset .. offset + n - 1, block b covering 4b .. 4b + 3. */
__global__ static void fill(float *out, int64_t n, uint64_t seed, uint64_t stream,
                            uint64_t offset, bool normal) {
    uint64_t first = offset / 4, blocks = (offset + (uint64_t)n - 1) / 4 - first + 1;
    FOR_N(q, (int64_t)blocks) {
        uint64_t b = first + (uint64_t)q;
        dc_u32x4 r = dc_rand_block(seed, stream, b);
        float z[4];
        if (normal) {
            dc_box_muller(r.w[0], r.w[1], &z[0], &z[1]);
            dc_box_muller(r.w[2], r.w[3], &z[2], &z[3]);
        } else {
            for (int j = 0; j < 4; j++)
                z[j] = dc_u32_to_uniform(r.w[j]);
        }
        for (uint64_t j = 0; j < 4; j++) {
            uint64_t i = 4 * b + j;
            if (i >= offset && i - offset < (uint64_t)n)
                out[i - offset] = z[j];
        }
    }
}

static void launch_fill(float *out, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                        bool normal) {
    if (n <= 0)
        return;
    int64_t blocks = (int64_t)((offset + (uint64_t)n - 1) / 4 - offset / 4 + 1);
    LAUNCH(fill, grid_for(blocks), BLOCK, 0, out, n, seed, stream, offset, normal);
}

extern "C" void cuda_fill_uniform(float *out, int64_t n, uint64_t seed, uint64_t stream,
                                  uint64_t offset) {
    launch_fill(out, n, seed, stream, offset, false);
}

extern "C" void cuda_fill_normal(float *out, int64_t n, uint64_t seed, uint64_t stream,
                                 uint64_t offset) {
    launch_fill(out, n, seed, stream, offset, true);
}
