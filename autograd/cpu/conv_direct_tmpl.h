/* The direct convolution, generic over the vector width (see conv_direct.h).
 * Not a header to include anywhere else: conv_avx512.c and conv_avx2.c each
 * define the vector type and its operations, then include this once, and
 * get the same kernels compiled for their ISA.
 *
 * What the including file defines: TARGET (the target attribute of every
 * function that touches vectors), INLINE (static, always inlined, TARGET),
 * LANES (floats per vector), VJ (vectors of channels per tile: 2 or 4), FP
 * and FR (pixels and output channels per tile; FP * VJ + VJ + 1 vector
 * registers must fit), KERNELS (the name of the exported
 * cpu_direct_kernels), and these, always inlined: vec, vmask,
 * v_zero(), v_set1(x), v_load(p), v_load_mask(m, p) (zero outside m),
 * v_store(p, v), v_store_mask(p, m, v), v_load_half(p) (LANES f16 widened),
 * v_fma(a, b, c) = a * b + c,
 * v_add(a, b), v_sub(a, b), v_lanes(n) (lanes [0, n), n clamped to [0, LANES]).
 *
 * Forward: a tile is FP consecutive output pixels times VJ vectors of
 * output channels (one block of packed weights): FP * VJ accumulators in
 * registers; a block of fewer vectors takes more pixels (forward_block). For every kernel row the input under a pixel is kw * c
 * contiguous floats, and the packed weights are contiguous in the same
 * order, so the inner loop broadcasts one input float per pixel and
 * multiplies it into VJ weight vectors (f16 weights widened as they are
 * loaded: a second copy of the tile functions, `half` constant). A pixel whose window crosses the
 * image border reads a patch instead: a copy of its window with zeros
 * outside, in memory of the thread. Every output value is one chain of
 * multiply-adds in (ky, kx, c) order, whatever tile, thread or batch it is
 * computed in: a sample's result does not depend on its batch.
 *
 * Filter gradient: a tile is FR output channels times VJ vectors of input
 * channels of one kernel tap (more channels for fewer vectors, filter_rows),
 * summed over output pixels: per pixel, a broadcast of dy per output channel
 * and the vectors of x. Each thread owns a fixed set of tiles
 * (no two add to the same weights) and walks the output rows a group at a
 * time, so a group stays in cache while the thread's tiles go over it. For
 * inputs with few channels the tile is FR entries of a kernel row (kx, ci)
 * times up to VJ vectors of output channels instead, on a padded copy of the
 * input.
 *
 * The tile functions are always inlined with constant sizes, so the compiler
 * keeps the accumulator arrays in registers. */
#include <omp.h>
#include <string.h>

/* Output channels per block of packed weights: one forward tile's widest. */
#define BLOCK (VJ * LANES)
/* Pixels per forward tile: FP at full width, more when a block has fewer
 * vectors of channels (see forward_block), so that a narrow block still
 * keeps enough sums in flight (at 16 output channels, AVX-512 with 6 pixels
 * had 6 chains of FMAs where 8 hide their latency). */
#define TP (FP * VJ)

/* call(n, ...) with n = nj (1 .. VJ) made a constant, so a tile function
 * gets inlined with its vector count known. */
#if VJ == 4
#define SWITCH_NJ(nj, call, ...)                                                                   \
    switch (nj) {                                                                                  \
    case 1: call(1, __VA_ARGS__); break;                                                           \
    case 2: call(2, __VA_ARGS__); break;                                                           \
    case 3: call(3, __VA_ARGS__); break;                                                           \
    default: call(4, __VA_ARGS__); break;                                                          \
    }
#elif VJ == 2
#define SWITCH_NJ(nj, call, ...)                                                                   \
    switch (nj) {                                                                                  \
    case 1: call(1, __VA_ARGS__); break;                                                           \
    default: call(2, __VA_ARGS__); break;                                                          \
    }
#else
#error "VJ must be 2 or 4"
#endif

/* Forward: most tiles per work item; the weights below which a tile runs every
 * channel block; otherwise the bytes of weights one pass over a strip may use
 * (whole kernel rows; the output takes the partial sums). */
#define STRIP 32
#define PANEL_BYTES (256 * 1024)
#define ALL_BLOCKS_BYTES (1024 * 1024)
/* Bytes of dy and x per group of output rows in the filter gradient, and
 * the fewest rows a group takes (each group adds every tile into dw once).
 * 64 KiB rather than 512: the group stays in L2 on every CPU (Zen 3 has 512
 * KiB), and one AVX2 thread took 3-5% less time for the fashion-mnist
 * layers' backward (bench_cpu_ops, best of 5, twice, loaded machine). */
#define GROUP_BYTES (64 * 1024)
#define GROUP_ROWS 4

/* ---- forward ---- */

static int64_t patch_floats(int64_t kh, int64_t kw, int64_t c) { return TP * kh * kw * c; }

/* Kernel rows [ky0, ky1) of the window of output (img, oy, ox) into patch
 * [kh, kw * c] (other rows untouched), zeros outside the image. */
static void fill_patch(const cpu_direct_conv *d, int64_t img, int64_t iy0, int64_t ix0, int64_t ky0,
                       int64_t ky1, float *patch) {
    const int64_t row = d->kw * d->c;
    for (int64_t ky = ky0; ky < ky1; ky++) {
        float *dst = patch + ky * row;
        int64_t iy = iy0 + ky;
        if (iy < 0 || iy >= d->h) {
            memset(dst, 0, (size_t)row * sizeof *dst);
            continue;
        }
        const float *src = d->src + (img * d->h + iy) * d->w * d->c;
        for (int64_t kx = 0; kx < d->kw; kx++) {
            int64_t ix = ix0 + kx;
            if (ix < 0 || ix >= d->w)
                memset(dst + kx * d->c, 0, (size_t)d->c * sizeof *dst);
            else
                memcpy(dst + kx * d->c, src + ix * d->c, (size_t)d->c * sizeof *dst);
        }
    }
}

/* An output pixel (img, oy, ox). */
typedef struct {
    int64_t img, oy, ox;
} pixel;

static inline void next_pixel(const cpu_direct_conv *d, pixel *at) {
    if (++at->ox == d->wo) {
        at->ox = 0;
        if (++at->oy == d->ho)
            at->oy = 0, at->img++;
    }
}

/* Where the np <= TP pixels from `at` (advanced past them) read and write:
 * kernel row ky of pixel p at src[p] + ky * rs[p], its output at dst[p].
 * Pixels at the border get their rows [ky0, ky1) copied into `patch` (TP
 * windows); missing pixels repeat the last (their sums are dropped). */
static void tile_windows(const cpu_direct_conv *d, pixel *at, int np, int64_t ky0, int64_t ky1,
                         float *patch, const float *src[TP], int64_t rs[TP], float *dst[TP]) {
    const int64_t row = d->kw * d->c;
    for (int p = 0; p < TP; p++) {
        if (p >= np) {
            src[p] = src[p - 1], rs[p] = rs[p - 1], dst[p] = dst[p - 1];
            continue;
        }
        int64_t iy0 = at->oy * d->stride - d->top, ix0 = at->ox * d->stride - d->left;
        if (iy0 >= 0 && iy0 + d->kh <= d->h && ix0 >= 0 && ix0 + d->kw <= d->w) {
            src[p] = d->src + ((at->img * d->h + iy0) * d->w + ix0) * d->c;
            rs[p] = d->w * d->c;
        } else {
            float *pt = patch + p * d->kh * row;
            fill_patch(d, at->img, iy0, ix0, ky0, ky1, pt);
            src[p] = pt;
            rs[p] = row;
        }
        dst[p] = d->out + ((at->img * d->out_h + at->oy * d->out_step) * d->out_w +
                           at->ox * d->out_step) * d->co;
        next_pixel(d, at);
    }
}

/* Adds kernel rows [ky0, ky1) into the tile of np <= fp pixels whose
 * windows tile_windows gave, channels j0 .. j0 + LANES nj. The first rows
 * start the output (with the bias) unless d->accumulate; later rows add to it. */
INLINE void forward_tile(const int nj, const bool half, const int fp, const cpu_direct_conv *d,
                         const float *const *src, const int64_t *rs, float *const *dst, int np,
                         int64_t j0, int64_t ky0, int64_t ky1) {
    const int64_t row = d->kw * d->c;
    vec acc[TP][VJ];
#pragma GCC unroll 24
    for (int p = 0; p < fp; p++)
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            acc[p][j] = v_zero();
    for (int64_t ky = ky0; ky < ky1; ky++) {
        /* this block [kh, kw, c, BLOCK], kernel row ky */
        const int64_t at = (j0 * d->kh + ky * BLOCK) * row;
        const float *wk = half ? NULL : d->weights + at, *in[TP];
        const uint16_t *hk = half ? d->half + at : NULL;
#pragma GCC unroll 24
        for (int p = 0; p < fp; p++)
            in[p] = src[p] + ky * rs[p];
#pragma GCC unroll 2
        for (int64_t q = 0; q < row; q++) {
            vec wv[VJ];
#pragma GCC unroll 4
            for (int j = 0; j < nj; j++)
                wv[j] = half ? v_load_half(hk + q * BLOCK + j * LANES)
                             : v_load(wk + q * BLOCK + j * LANES);
#pragma GCC unroll 24
            for (int p = 0; p < fp; p++) {
                vec a = v_set1(in[p][q]);
#pragma GCC unroll 4
                for (int j = 0; j < nj; j++)
                    acc[p][j] = v_fma(a, wv[j], acc[p][j]);
            }
        }
    }
    const bool add_out = d->accumulate || ky0 > 0, add_bias = d->bias && ky0 == 0;
#pragma GCC unroll 24
    for (int p = 0; p < fp; p++) {
        if (p >= np)
            break;
        float *o = dst[p] + j0;
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++) {
            vmask m = v_lanes(d->co - j0 - j * LANES);
            vec v = acc[p][j];
            if (add_bias)
                v = v_add(v, v_load_mask(m, d->bias + j0 + j * LANES));
            if (add_out)
                v = v_add(v, v_load_mask(m, o + j * LANES));
            v_store_mask(o + j * LANES, m, v);
        }
    }
}

/* The np <= TP pixels of a tile, channels j0 .. j0 + LANES nj, as tiles of
 * TP / nj pixels, but at most 2 FP: each pixel of a tile holds a pointer in a
 * general register while its kernel row is read (24 pixels spilled them). */
INLINE void forward_block(const int nj, const bool half, const cpu_direct_conv *d,
                          const float *const src[TP], const int64_t rs[TP], float *const dst[TP],
                          int np, int64_t j0, int64_t ky0, int64_t ky1) {
    const int fp = TP / nj < 2 * FP ? TP / nj : 2 * FP;
    for (int p0 = 0; p0 < np; p0 += fp)
        forward_tile(nj, half, fp, d, src + p0, rs + p0, dst + p0, np - p0 < fp ? np - p0 : fp, j0, ky0,
                     ky1);
}

/* A strip of tiles [t0, t1), channel blocks [b0, b1), kernel rows [ky0, ky1):
 * each tile's windows are found (and border patches filled) once. */
static TARGET void forward_strip(const cpu_direct_conv *d, int64_t t0, int64_t t1, int64_t b0,
                                 int64_t b1, int64_t ky0, int64_t ky1, float *patch) {
    const int64_t pix = d->n * d->ho * d->wo;
    pixel at = {t0 * TP / (d->ho * d->wo), t0 * TP / d->wo % d->ho, t0 * TP % d->wo};
    for (int64_t t = t0; t < t1; t++) {
        int np = (int)(pix - t * TP < TP ? pix - t * TP : TP);
        const float *src[TP];
        int64_t rs[TP];
        float *dst[TP];
        tile_windows(d, &at, np, ky0, ky1, patch, src, rs, dst);
        for (int64_t b = b0; b < b1; b++) {
            int64_t j0 = b * BLOCK, left = (d->co - j0 + LANES - 1) / LANES;
            int nj = left < VJ ? (int)left : VJ;
            if (d->half)
                SWITCH_NJ(nj, forward_block, true, d, src, rs, dst, np, j0, ky0, ky1)
            else
                SWITCH_NJ(nj, forward_block, false, d, src, rs, dst, np, j0, ky0, ky1)
        }
    }
}

static void conv_forward(const cpu_direct_conv *d) {
    const int64_t pix = d->n * d->ho * d->wo, tiles = (pix + TP - 1) / TP;
    /* strips of up to STRIP tiles, at least 8 per thread, and a whole number
     * of strips per thread whose lengths differ by at most one tile: the
     * static schedule then gives every thread the same work (at 8x8 pixels
     * and batch 64, 17 strips of 21 tiles left one of 2 threads idle 10%) */
    int64_t strip = tiles / (8 * d->threads);
    strip = strip < 4 ? 4 : strip > STRIP ? STRIP : strip;
    int64_t strips = (tiles + strip - 1) / strip;
    strips = (strips + d->threads - 1) / d->threads * d->threads;
    if (strips > tiles)
        strips = tiles;
    const int64_t blocks = (d->co + BLOCK - 1) / BLOCK;
    const int64_t row_bytes = d->kw * d->c * BLOCK * (d->half ? 2 : (int64_t)sizeof(float));
    /* Weights that stay in cache: a tile runs every block and kernel row. Else
     * a work item takes one block, as many kernel rows at a time as stay in
     * cache, over its strip. */
    const bool all = blocks * d->kh * row_bytes <= ALL_BLOCKS_BYTES;
    const int64_t rows = all ? d->kh : PANEL_BYTES / row_bytes > 1 ? PANEL_BYTES / row_bytes : 1;
    const int64_t per = all ? blocks : 1, groups = (blocks + per - 1) / per;
    const int64_t patch = patch_floats(d->kh, d->kw, d->c);
#pragma omp parallel for schedule(static) num_threads(d->threads) \
    if (pix * d->co * d->kh * d->kw * d->c >= 1 << 20)
    for (int64_t t = 0; t < groups * strips; t++) {
        int64_t b0 = t / strips * per, b1 = b0 + per < blocks ? b0 + per : blocks;
        int64_t t0 = t % strips * tiles / strips, t1 = (t % strips + 1) * tiles / strips;
        float *mine = d->patches + omp_get_thread_num() * patch;
        for (int64_t ky0 = 0; ky0 < d->kh; ky0 += rows)
            forward_strip(d, t0, t1, b0, b1, ky0, ky0 + rows < d->kh ? ky0 + rows : d->kh, mine);
    }
}

/* ---- filter gradient ---- */

/* Output columns ox whose input column ox * stride - pad + kx lies in [0, w): [*lo, *hi). */
static void valid_columns(const cpu_conv_geom *g, int64_t kx, int64_t *lo, int64_t *hi) {
    int64_t a = g->pad - kx, b = g->w - 1 + g->pad - kx; /* need a <= ox * stride <= b */
    *lo = a <= 0 ? 0 : (a + g->stride - 1) / g->stride;
    *hi = b < 0 ? 0 : b / g->stride + 1;
    if (*hi > g->wo)
        *hi = g->wo;
}

/* One tile of a filter gradient: its channels, its tap or kernel row, the
 * output rows [u0, u1) it sums over, and db + its first output channel when
 * it also sums dy for the bias gradient (NULL otherwise). */
typedef struct {
    int64_t ky, kx, co0, ci0, u0, u1;
    float *db;
} filter_job;

/* db[r] += lane r of v, for r < n. */
static TARGET void add_lanes(float *db, vec v, int n) {
    float lane[LANES];
    v_store(lane, v);
    for (int r = 0; r < n; r++)
        db[r] += lane[r];
}

/* Output channels per filter tile: FR at full width, FR * VJ / nj for nj
 * vectors of input channels, so that few input channels still keep FR * VJ
 * sums in flight (the rows are one dy pointer: no register limit but the
 * vectors'). At most 2 LANES, the bias sums' two vectors. */
static int filter_rows(int64_t nj) { return (int)(FR * VJ / nj); }

/* acc[r][j] += s[r] v[j] for the nr scalars s and nj vectors v: one pixel's
 * (or tile's) step of the filter gradients' outer products. */
INLINE void outer_fma(const int nr, const int nj, const float *s, const vec *v, vec acc[][VJ]) {
#pragma GCC unroll 24
    for (int r = 0; r < nr; r++) {
        vec a = v_set1(s[r]);
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            acc[r][j] = v_fma(a, v[j], acc[r][j]);
    }
}

/* The sums of filter_tile over its output rows: with `tail`, the last
 * vector of x masked to cin and the bias sums taken when job->db asks;
 * without, neither (the common case, kept free of the masked load and the
 * test per pixel: on AVX2 the mask had no register left and was reloaded). */
INLINE void filter_sums(const int nj, const int nr, const bool tail, const cpu_conv_geom *g,
                        const float *dy, const float *x, const filter_job *job, vmask last,
                        vec acc[][VJ], vec bias[2]) {
    const int64_t C = g->cin, step = g->stride * C, ky = job->ky, kx = job->kx;
    int64_t lo, hi;
    valid_columns(g, kx, &lo, &hi);
    int64_t img = job->u0 / g->ho, oy = job->u0 % g->ho;
    for (int64_t u = job->u0; u < job->u1; u++, oy = oy + 1 < g->ho ? oy + 1 : (img++, 0)) {
        int64_t iy = oy * g->stride - g->pad + ky;
        if (iy < 0 || iy >= g->h)
            continue;
        const float *xs = x + ((img * g->h + iy) * g->w + lo * g->stride - g->pad + kx) * C + job->ci0;
        const float *d = dy + (u * g->wo + lo) * g->cout + job->co0;
#pragma GCC unroll 2
        for (int64_t ox = lo; ox < hi; ox++, xs += step, d += g->cout) {
            vec xv[VJ];
#pragma GCC unroll 4
            for (int j = 0; j < nj; j++)
                xv[j] = tail && j == nj - 1 ? v_load_mask(last, xs + j * LANES)
                                            : v_load(xs + j * LANES);
            outer_fma(nr, nj, d, xv, acc);
            if (tail && job->db) {
                bias[0] = v_add(bias[0], v_load_mask(v_lanes(nr), d));
                if (nr > LANES)
                    bias[1] = v_add(bias[1], v_load_mask(v_lanes(nr - LANES), d + LANES));
            }
        }
    }
}

/* The tile of output channels co0 .. co0 + nr and input channels ci0 .. ci0
 * + LANES nj (the last vector masked to cin) at tap (ky, kx). */
INLINE void filter_tile(const int nj, const cpu_conv_geom *g, const int nr, const float *dy,
                        const float *x, float *dw, const filter_job *job) {
    const int64_t C = g->cin, ky = job->ky, kx = job->kx;
    const vmask last = v_lanes(C - job->ci0 - (nj - 1) * LANES);
    vec acc[FR * VJ][VJ], bias[2] = {v_zero(), v_zero()};
#pragma GCC unroll 24
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            acc[r][j] = v_zero();
    if (C - job->ci0 >= nj * LANES && !job->db)
        filter_sums(nj, nr, false, g, dy, x, job, last, acc, bias);
    else
        filter_sums(nj, nr, true, g, dy, x, job, last, acc, bias);
#pragma GCC unroll 24
    for (int r = 0; r < nr; r++) {
        float *o = dw + (((job->co0 + r) * g->kh + ky) * g->kw + kx) * C + job->ci0;
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++) {
            vmask m = j < nj - 1 ? v_lanes(LANES) : last;
            v_store_mask(o + j * LANES, m,
                                  v_add(acc[r][j], v_load_mask(m, o + j * LANES)));
        }
    }
    if (job->db) {
        add_lanes(job->db, bias[0], nr < LANES ? nr : LANES);
        if (nr > LANES)
            add_lanes(job->db + LANES, bias[1], nr - LANES);
    }
}

/* filter_tile with nj and nr (1 .. filter_rows(nj)) made constants; the
 * cases cover every pair conv_filter makes. */
#define FT(nj, nr)                                                                                 \
    case (nj) * 64 + (nr): filter_tile(nj, g, nr, dy, x, dw, job); break;
#define FT6(nj) FT(nj, 1) FT(nj, 2) FT(nj, 3) FT(nj, 4) FT(nj, 5) FT(nj, 6)
#define FT8(nj) FT6(nj) FT(nj, 7) FT(nj, 8)
#define FT12(nj) FT8(nj) FT(nj, 9) FT(nj, 10) FT(nj, 11) FT(nj, 12)
#define FT24(nj)                                                                                   \
    FT12(nj) FT(nj, 13) FT(nj, 14) FT(nj, 15) FT(nj, 16) FT(nj, 17) FT(nj, 18) FT(nj, 19)        \
    FT(nj, 20) FT(nj, 21) FT(nj, 22) FT(nj, 23) FT(nj, 24)

static TARGET void filter_tile_any(const cpu_conv_geom *g, int nr, int nj, const float *dy,
                                   const float *x, float *dw, const filter_job *job) {
    switch (nj * 64 + nr) {
#if VJ == 4 && FR == 6
        FT24(1) FT12(2) FT8(3) FT6(4)
#elif VJ == 2 && FR == 6
        FT12(1) FT6(2)
#else
#error "filter_tile_any spells out VJ = 4 or 2 with FR = 6"
#endif
    }
}

static int64_t full_tap(const cpu_conv_geom *g) {
    /* tap (ky, kx) reads rows oy * stride - pad + ky for oy < ho: all inside when ky >= pad
     * and (ho - 1) * stride - pad + ky < h; likewise columns */
    int64_t ky = g->pad, kx = g->pad;
    if (ky >= g->kh || kx >= g->kw || (g->ho - 1) * g->stride - g->pad + ky >= g->h ||
        (g->wo - 1) * g->stride - g->pad + kx >= g->w)
        return -1;
    return ky * g->kw + kx;
}

/* The work of filter task t (any tap): its rows times its vectors of input channels. */
static int64_t filter_task_units(const cpu_conv_geom *g, int64_t fr, int64_t cblocks, int64_t t) {
    int64_t rb = t / cblocks, cb = t % cblocks;
    int64_t rows = g->cout - rb * fr, cin = g->cin - cb * BLOCK;
    return (rows < fr ? rows : fr) * (((cin < BLOCK ? cin : BLOCK) + LANES - 1) / LANES);
}

/* The first of the tasks t = (tap * rblocks + rb) * cblocks + cb (row block
 * rb, channel block cb) that thread `me` of nth takes: the split is by work,
 * not by count, as the last row and channel blocks are narrower (16 output
 * channels in row blocks of 6: 6 + 6 + 4, and 27 tasks by count gave one of
 * 2 threads 6% more than the other). A task goes to the thread its middle
 * falls in. */
static int64_t filter_task_start(const cpu_conv_geom *g, int64_t fr, int64_t rblocks,
                                 int64_t cblocks, int64_t me, int64_t nth) {
    const int64_t per_tap = rblocks * cblocks, tasks = g->kh * g->kw * per_tap;
    int64_t tap_units = 0;
    for (int64_t i = 0; i < per_tap; i++)
        tap_units += filter_task_units(g, fr, cblocks, i);
    const int64_t want = g->kh * g->kw * tap_units * me / nth;
    /* whole taps end before `want`: only the tap it falls in is walked */
    int64_t t = want / tap_units * per_tap, done = want / tap_units * tap_units;
    for (; t < tasks; t++) {
        int64_t u = filter_task_units(g, fr, cblocks, t % per_tap);
        if (2 * done + u >= 2 * want)
            break;
        done += u;
    }
    return t;
}

static void conv_filter(const cpu_conv_geom *g, const float *dy, const float *x, float *dw,
                            float *db, int64_t bias_tap) {
    const int64_t rows = g->n * g->ho, taps = g->kh * g->kw;
    const int64_t row_bytes = (g->wo * g->cout + g->stride * g->w * g->cin) * (int64_t)sizeof(float);
    const int64_t group = GROUP_BYTES / row_bytes > GROUP_ROWS ? GROUP_BYTES / row_bytes : GROUP_ROWS;
    const int64_t cblocks = (g->cin + BLOCK - 1) / BLOCK;
    const int64_t most = filter_rows(cblocks > 1 ? VJ : (g->cin + LANES - 1) / LANES);
    const int64_t rblocks = (g->cout + most - 1) / most, fr = (g->cout + rblocks - 1) / rblocks;
    const int64_t tasks = taps * rblocks * cblocks;
#pragma omp parallel if (rows * g->wo * g->cout * taps * g->cin >= 1 << 20)
    { /* each thread owns a fixed range of tiles of dw, so no two threads add to the same one */
        int64_t nth = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t t0 = filter_task_start(g, fr, rblocks, cblocks, me, nth);
        int64_t t1 = me + 1 < nth ? filter_task_start(g, fr, rblocks, cblocks, me + 1, nth) : tasks;
        for (int64_t u0 = 0; u0 < rows; u0 += group) {
            for (int64_t t = t0; t < t1; t++) {
                int64_t tap = t / (rblocks * cblocks), rb = t / cblocks % rblocks, cb = t % cblocks;
                filter_job job = {tap / g->kw, tap % g->kw, rb * fr, cb * BLOCK, u0,
                                  u0 + group < rows ? u0 + group : rows, NULL};
                if (db && tap == bias_tap && cb == 0)
                    job.db = db + job.co0;
                int64_t nr = g->cout - job.co0 < fr ? g->cout - job.co0 : fr;
                int64_t nj = (g->cin - job.ci0 + LANES - 1) / LANES;
                filter_tile_any(g, (int)nr, nj < VJ ? (int)nj : VJ, dy, x, dw, &job);
            }
        }
    }
}

/* ---- filter gradient, few input channels ---- */

/* The tile of kernel-row entries q0 .. q0 + nr (q = kx * cin + ci, carried in
 * job->ci0) of row ky times output channels co0 .. co0 + 16 nj (the last
 * vector masked to cout), from the padded images xp [., hp, wp, cin]. */
INLINE void narrow_tile(const int nj, const cpu_conv_geom *g, const int nr, const float *dy,
                        const float *xp, float *dw, const filter_job *job) {
    const int64_t C = g->cin, hp = g->h + 2 * g->pad, wp = g->w + 2 * g->pad;
    const int64_t ky = job->ky, q0 = job->ci0, co0 = job->co0;
    const vmask last = v_lanes(g->cout - co0 - (nj - 1) * LANES);
    vec acc[FR][VJ], bias[VJ];
#pragma GCC unroll 16
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            acc[r][j] = bias[j] = v_zero();
    int64_t img = job->u0 / g->ho, oy = job->u0 % g->ho;
    for (int64_t u = job->u0; u < job->u1; u++, oy = oy + 1 < g->ho ? oy + 1 : (img++, 0)) {
        const float *xs = xp + ((img * hp + oy * g->stride + ky) * wp) * C + q0;
        const float *d = dy + u * g->wo * g->cout + co0;
        for (int64_t ox = 0; ox < g->wo; ox++, xs += g->stride * C, d += g->cout) {
            vec dv[VJ];
#pragma GCC unroll 4
            for (int j = 0; j < nj; j++)
                dv[j] = j < nj - 1 ? v_load(d + j * LANES)
                                   : v_load_mask(last, d + j * LANES);
            outer_fma(nr, nj, xs, dv, acc);
            if (job->db)
#pragma GCC unroll 4
                for (int j = 0; j < nj; j++)
                    bias[j] = v_add(bias[j], dv[j]);
        }
    }
    for (int r = 0; r < nr; r++) { /* lanes are output channels: scatter to their rows of dw */
        int64_t kx = (q0 + r) / C, ci = (q0 + r) % C;
        for (int j = 0; j < nj; j++) {
            float v[LANES];
            v_store(v, acc[r][j]);
            for (int l = 0; l < LANES && co0 + j * LANES + l < g->cout; l++)
                dw[(((co0 + j * LANES + l) * g->kh + ky) * g->kw + kx) * C + ci] += v[l];
        }
    }
    if (job->db)
        for (int j = 0; j < nj; j++)
            add_lanes(job->db + j * LANES, bias[j], (int)(g->cout - co0 - j * LANES < LANES ? g->cout - co0 - j * LANES : LANES));
}

#define NARROW_NJ(nr) SWITCH_NJ(nj, narrow_tile, g, nr, dy, xp, dw, job)

static TARGET void narrow_tile_any(const cpu_conv_geom *g, int nr, int nj, const float *dy,
                                   const float *xp, float *dw, const filter_job *job) {
    switch (nr) {
    case 1: NARROW_NJ(1); break;
    case 2: NARROW_NJ(2); break;
    case 3: NARROW_NJ(3); break;
    case 4: NARROW_NJ(4); break;
    case 5: NARROW_NJ(5); break;
    default: NARROW_NJ(6); break;
    }
}

static void conv_filter_narrow(const cpu_conv_geom *g, int64_t n, const float *xp,
                                   const float *dy, float *dw, float *db) {
    const int64_t rows = n * g->ho, span = g->kw * g->cin, wp = g->w + 2 * g->pad;
    const int64_t row_bytes = (g->wo * g->cout + g->stride * wp * g->cin) * (int64_t)sizeof(float);
    const int64_t group = GROUP_BYTES / row_bytes > GROUP_ROWS ? GROUP_BYTES / row_bytes : GROUP_ROWS;
    const int64_t qblocks = (span + FR - 1) / FR, cblocks = (g->cout + BLOCK - 1) / BLOCK;
    const int64_t tasks = g->kh * qblocks * cblocks;
#pragma omp parallel if (rows * g->wo * g->cout * g->kh * span >= 1 << 20)
    { /* as in conv_filter: a fixed range of tiles per thread */
        int64_t nth = omp_get_num_threads(), me = omp_get_thread_num();
        int64_t t0 = tasks * me / nth, t1 = tasks * (me + 1) / nth;
        for (int64_t u0 = 0; u0 < rows; u0 += group) {
            for (int64_t t = t0; t < t1; t++) {
                int64_t q = t / cblocks % qblocks * FR;
                filter_job job = {t / (qblocks * cblocks), 0, t % cblocks * BLOCK, q, u0,
                                  u0 + group < rows ? u0 + group : rows, NULL};
                if (db && job.ky == 0 && q == 0) /* every row-0 tile sees every pixel */
                    job.db = db + job.co0;
                int64_t nr = span - q < FR ? span - q : FR;
                int64_t nj = (g->cout - job.co0 + LANES - 1) / LANES;
                narrow_tile_any(g, (int)nr, nj < VJ ? (int)nj : VJ, dy, xp, dw, &job);
            }
        }
    }
}

#include "conv_winograd_tmpl.h"

const cpu_direct_kernels KERNELS = {
    .block = BLOCK,
    .lanes = LANES,
    .patch_floats = patch_floats,
    .forward = conv_forward,
    .full_tap = full_tap,
    .filter = conv_filter,
    .filter_narrow = conv_filter_narrow,
    .winograd_input = winograd_input,
    .winograd_output = winograd_output,
    .winograd_products = winograd_products,
    .winograd_grad_input = winograd_grad_input,
    .winograd_grad_products = winograd_grad_products,
    .vectors_per_tile = VJ,
    .rows_per_vectors = FR * VJ,
};
