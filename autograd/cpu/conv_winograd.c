/* Winograd F(2x2, 3x3) convolutions (see conv_winograd.h): the plan (groups
 * of output channels, chunks of tiles), the weight transform, and the loop
 * that runs the per-ISA kernels (conv_winograd_tmpl.h) over them; and the
 * filter gradient's chunks of tiles, products and output transform. */
#include "conv_winograd.h"

#include <omp.h>
#include <stddef.h>
#include <string.h>

/* Bytes of transformed weights at once (16 cin x group floats): a group of
 * output channels at a time above this (Stable Diffusion's 1280 channels:
 * 320 at a time), the input transform redone per group. */
#define WEIGHT_BYTES ((int64_t)32 << 20)
/* Bytes of a thread's buffers per chunk (16 x tiles x (cin + group) floats,
 * the transformed inputs and products), so that a chunk stays in L2 from
 * one transform to the products to the other; but at least MIN_TILES tiles,
 * so that each pass over the transformed weights does enough work. */
#define CHUNK_BYTES ((int64_t)1 << 20)
#define MIN_TILES 48

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

/* Floats from one row of a transform buffer to the next (rows of `floats`
 * each): a multiple of 4 KB plus a cache line. A tile's 16 values of a
 * channel, one per row, then fall in 16 L1 sets; rows a multiple of 4 KB
 * apart (a chunk of 256 tiles of 32 channels) put them all in one set and
 * made the transforms half of the filter gradient's time. */
static int64_t row_stride(int64_t floats) { return round_up(floats, 1024) + 16; }

typedef struct {
    int64_t group;          /* output channels per group: a multiple of the block */
    int64_t th, tw, tiles;  /* tiles per column and row of an image, in all */
    int64_t chunk;          /* tiles per chunk */
    int64_t vs, ms;         /* row strides of a thread's transformed inputs and products */
    int threads;
} plan;

static plan make_plan(const cpu_direct_kernels *k, const cpu_winograd *c) {
    const int64_t B = k->block, all = round_up(c->cout, B);
    int64_t group = max64(WEIGHT_BYTES / (16 * (int64_t)sizeof(float) * c->cin) / B * B, B);
    int64_t groups = (all + min64(group, all) - 1) / min64(group, all);
    plan p = {.group = round_up((all + groups - 1) / groups, B), .th = (c->h + 1) / 2,
              .tw = (c->w + 1) / 2, .threads = omp_get_max_threads()};
    p.tiles = c->n * p.th * p.tw;
    int64_t fit = CHUNK_BYTES / (16 * (int64_t)sizeof(float) * (c->cin + p.group));
    p.chunk = min64(max64(fit, MIN_TILES), (p.tiles + p.threads - 1) / p.threads);
    p.vs = row_stride(p.chunk * c->cin), p.ms = row_stride(p.chunk * p.group);
    return p;
}

/* Floats of one thread's buffers: transformed inputs and products. */
static int64_t thread_floats(const plan *p) { return 16 * (p->vs + p->ms); }

int64_t cpu_winograd_scratch_floats(const cpu_direct_kernels *k, const cpu_winograd *c) {
    plan p = make_plan(k, c);
    return 16 * c->cin * p.group + p.threads * thread_floats(&p);
}

/* tap[t][j] (t = 3 ky + kx) = the weight from input channel i to output
 * channel o0 + j < cout (zero past it) of kernel tap t, j < B. */
static void read_taps(const cpu_winograd *c, int64_t B, int64_t o0, int64_t i, float tap[9][64]) {
    const int64_t n = min64(B, c->cout - o0), ob = o0 / B;
    for (int t = 0; t < 9; t++) {
        switch (c->layout) {
        case WINOGRAD_PLAIN: {
            const float *w = c->weights;
            for (int64_t j = 0; j < n; j++)
                tap[t][j] = w[((o0 + j) * 9 + t) * c->cin + i];
            break;
        }
        case WINOGRAD_FLIPPED: { /* w [cin, 3, 3, cout]: (o, t, i) is w[i, 8 - t, o] */
            const float *w = c->weights;
            for (int64_t j = 0; j < n; j++)
                tap[t][j] = w[(i * 9 + 8 - t) * c->cout + o0 + j];
            break;
        }
        case WINOGRAD_PACKED: {
            const float *w = (const float *)c->weights + ((ob * 9 + t) * c->cin + i) * B;
            for (int64_t j = 0; j < n; j++)
                tap[t][j] = w[j];
            break;
        }
        case WINOGRAD_PACKED_HALF:
            cpu_conv_widen_half((const uint16_t *)c->weights + ((ob * 9 + t) * c->cin + i) * B, tap[t], B);
            break;
        }
        for (int64_t j = n; j < B; j++)
            tap[t][j] = 0.0f;
    }
}

/* u [16, per_e] = G g G^T for output channels o0 .. o0 + group, each e's
 * first group cin floats packed by blocks of output channels, [group / B,
 * cin, B]. G = [1 0
 * 0; .5 .5 .5; .5 -.5 .5; 0 0 1]. */
static void transform_weights(const cpu_direct_kernels *k, const cpu_winograd *c, int64_t o0,
                              int64_t group, int64_t per_e, float *u) {
    const int64_t B = k->block, blocks = group / B;
#pragma omp parallel for if (group * c->cin >= 16384)
    for (int64_t r = 0; r < blocks * c->cin; r++) { /* r = (block, i) */
        float tap[9][64], gg[4][3][64];
        read_taps(c, B, o0 + r / c->cin * B, r % c->cin, tap);
        for (int x = 0; x < 3; x++) /* G g: along ky, column kx = x */
            for (int64_t j = 0; j < B; j++) {
                float g0 = tap[x][j], g1 = tap[3 + x][j], g2 = tap[6 + x][j];
                gg[0][x][j] = g0;
                gg[1][x][j] = 0.5f * (g0 + g1 + g2);
                gg[2][x][j] = 0.5f * (g0 - g1 + g2);
                gg[3][x][j] = g2;
            }
        float *dst = u + r * B;
        for (int a = 0; a < 4; a++) /* (G g) G^T: along kx, row a */
            for (int64_t j = 0; j < B; j++) {
                float g0 = gg[a][0][j], g1 = gg[a][1][j], g2 = gg[a][2][j];
                dst[(4 * a + 0) * per_e + j] = g0;
                dst[(4 * a + 1) * per_e + j] = 0.5f * (g0 + g1 + g2);
                dst[(4 * a + 2) * per_e + j] = 0.5f * (g0 - g1 + g2);
                dst[(4 * a + 3) * per_e + j] = g2;
            }
    }
}

/* Chunk `ch` of output channels o0 .. o0 + gc (weights u) through the
 * buffers `mine`. */
static void run_chunk(const cpu_direct_kernels *k, const cpu_winograd *c, const plan *p,
                      int64_t ch, int64_t o0, int64_t gc, const float *u, float *mine) {
    const int64_t t0 = ch * p->chunk, nt = min64(p->chunk, p->tiles - t0);
    const int64_t per_e = p->group * c->cin;
    float *v = mine, *m = v + 16 * p->vs;
    k->winograd_input(c->x, c->h, c->w, c->cin, p->th, p->tw, t0, nt, v, p->vs);
    for (int e = 0; e < 16; e++)
        k->winograd_products(v + e * p->vs, nt, c->cin, u + e * per_e, gc, m + e * p->ms);
    k->winograd_output(m, p->ms, gc, c->bias ? c->bias + o0 : NULL, c->y, c->h, c->w, c->cout,
                       o0, p->th, p->tw, t0, nt, c->accumulate);
}

void cpu_winograd_run(const cpu_direct_kernels *k, const cpu_winograd *c, float *scratch) {
    const plan p = make_plan(k, c);
    const int64_t chunks = (p.tiles + p.chunk - 1) / p.chunk, all = round_up(c->cout, k->block);
    float *u = scratch, *buffers = u + 16 * c->cin * p.group;
    const int64_t per_thread = thread_floats(&p);
    for (int64_t o0 = 0; o0 < all; o0 += p.group) {
        const int64_t group = min64(p.group, all - o0), gc = min64(group, c->cout - o0);
        transform_weights(k, c, o0, group, p.group * c->cin, u);
#pragma omp parallel for schedule(static) num_threads(p.threads) if (chunks > 1)
        for (int64_t ch = 0; ch < chunks; ch++)
            run_chunk(k, c, &p, ch, o0, gc, u, buffers + omp_get_thread_num() * per_thread);
    }
}

/* ---- the filter gradient ---- */

/* Bytes of one chunk's transforms (16 x tiles x (cin + cout) floats), at
 * least GRAD_MIN_TILES tiles: from the channels only, so that the sums'
 * order does not depend on the thread count. */
#define GRAD_CHUNK_BYTES ((int64_t)2 << 20)
#define GRAD_MIN_TILES 32
#define GRAD_PIECE 8 /* tiles a thread transforms at a time */

static int64_t grad_chunk(const cpu_winograd_grad *c, int64_t tiles) {
    int64_t fit = GRAD_CHUNK_BYTES / (16 * (int64_t)sizeof(float) * (c->cin + c->cout));
    return min64(max64(fit, GRAD_MIN_TILES), tiles);
}

int64_t cpu_winograd_grad_scratch_floats(const cpu_winograd_grad *c) {
    int64_t tiles = c->n * ((c->h + 1) / 2) * ((c->w + 1) / 2);
    const int64_t chunk = grad_chunk(c, tiles);
    return 16 * c->cout * c->cin + 16 * (row_stride(chunk * c->cin) + row_stride(chunk * c->cout));
}

/* dw += G^T m G for every pair of channels, m [16, cout, cin]. G^T = [1 .5
 * .5 0; 0 .5 -.5 0; 0 .5 .5 1]. */
static void grad_output(const cpu_winograd_grad *c, const float *m) {
    const int64_t cin = c->cin, plane = c->cout * cin;
#pragma omp parallel for if (plane >= 16384)
    for (int64_t o = 0; o < c->cout; o++) {
        float *dw = c->dw + o * 9 * cin;
        for (int64_t i = 0; i < cin; i++) {
            const float *mi = m + o * cin + i;
            float s[3][4];
            for (int b = 0; b < 4; b++) { /* G^T m, column b */
                float m0 = mi[b * plane], m1 = mi[(4 + b) * plane], m2 = mi[(8 + b) * plane],
                      m3 = mi[(12 + b) * plane];
                s[0][b] = m0 + 0.5f * (m1 + m2);
                s[1][b] = 0.5f * (m1 - m2);
                s[2][b] = 0.5f * (m1 + m2) + m3;
            }
            for (int a = 0; a < 3; a++) { /* (G^T m) G, row a */
                dw[(3 * a + 0) * cin + i] += s[a][0] + 0.5f * (s[a][1] + s[a][2]);
                dw[(3 * a + 1) * cin + i] += 0.5f * (s[a][1] - s[a][2]);
                dw[(3 * a + 2) * cin + i] += 0.5f * (s[a][1] + s[a][2]) + s[a][3];
            }
        }
    }
}

void cpu_winograd_grad_run(const cpu_direct_kernels *k, const cpu_winograd_grad *c, float *scratch) {
    const int64_t th = (c->h + 1) / 2, tw = (c->w + 1) / 2, tiles = c->n * th * tw;
    const int64_t chunk = grad_chunk(c, tiles), L = k->lanes, VJ = k->vectors_per_tile;
    const int64_t cblocks = (c->cin + VJ * L - 1) / (VJ * L);
    const int64_t widest = min64(VJ, (c->cin + L - 1) / L); /* vectors of the widest column block */
    const int64_t rows = k->rows_per_vectors / widest, rblocks = (c->cout + rows - 1) / rows;
    const int64_t fr = (c->cout + rblocks - 1) / rblocks, tasks = 16 * rblocks * cblocks;
    const int64_t xs = row_stride(chunk * c->cin), gs = row_stride(chunk * c->cout);
    float *m = scratch, *xv = m + 16 * c->cout * c->cin, *gv = xv + 16 * xs;
    memset(m, 0, (size_t)(16 * c->cout * c->cin) * sizeof *m);
#pragma omp parallel if (tiles * c->cin * c->cout >= (1 << 18))
    for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
        const int64_t nt = min64(chunk, tiles - t0);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nt; t += GRAD_PIECE) {
            const int64_t np = min64(GRAD_PIECE, nt - t);
            k->winograd_input(c->x, c->h, c->w, c->cin, th, tw, t0 + t, np, xv + t * c->cin, xs);
            k->winograd_grad_input(c->dy, c->h, c->w, c->cout, th, tw, t0 + t, np, gv + t * c->cout, gs);
        }
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks; task++) {
            const int64_t e = task / (rblocks * cblocks), rb = task / cblocks % rblocks, cb = task % cblocks;
            const int64_t co0 = rb * fr, j0 = cb * VJ * L;
            const int nr = (int)min64(fr, c->cout - co0), nj = (int)min64(VJ, (c->cin - j0 + L - 1) / L);
            k->winograd_grad_products(gv + e * gs, c->cout, xv + e * xs, c->cin, nt, nr,
                                      nj, m + e * c->cout * c->cin, co0, j0);
        }
    }
    grad_output(c, m);
}
