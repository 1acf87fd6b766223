/* The kernels of the Winograd F(2x2, 3x3) convolution (conv_winograd.c),
 * generic over the vector width: conv_direct_tmpl.h includes this before
 * it defines its cpu_direct_kernels, with the same definitions (vec,
 * v_load_mask, v_sub, ..., BLOCK, FP, VJ, SWITCH_NJ, FT24 ...), and the
 * functions below go into it. Vectors run over channels, the last one
 * masked. The transforms make every value the same short sum of a tile's
 * inputs, and the products every value one chain of multiply-adds over the
 * input channels in order, whichever chunk, thread or batch the tile is
 * in. */

/* The vector at p, lanes m only unless `full` (AVX2's masked loads and
 * stores cost more than plain ones). */
INLINE vec w_load(bool full, vmask m, const float *p) { return full ? v_load(p) : v_load_mask(m, p); }
INLINE void w_store(bool full, float *p, vmask m, vec v) {
    if (full)
        v_store(p, v);
    else
        v_store_mask(p, m, v);
}

/* v [16, es] (row e = 4 i + j of the 4x4 transform, es floats apart; tile
 * t at t c in each) = B^T d B of each of the nt tiles from tile t0 on (tiles in (image, ty,
 * tx) order, th x tw per image): d the 4x4 pixels of x [., h, w, c] from
 * (2 ty - 1, 2 tx - 1), zero outside the image. B^T = [1 0 -1 0; 0 1 1 0;
 * 0 -1 1 0; 0 1 0 -1]. */
static TARGET void winograd_input(const float *x, int64_t h, int64_t w, int64_t c, int64_t th,
                                  int64_t tw, int64_t t0, int64_t nt, float *v, int64_t es) {
    for (int64_t t = 0; t < nt; t++) {
        const int64_t img = (t0 + t) / (th * tw), ty = (t0 + t) / tw % th, tx = (t0 + t) % tw;
        const float *px[4][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                int64_t iy = 2 * ty - 1 + i, ix = 2 * tx - 1 + j;
                px[i][j] = iy >= 0 && iy < h && ix >= 0 && ix < w ? x + ((img * h + iy) * w + ix) * c
                                                                   : NULL;
            }
        float *out = v + t * c;
        for (int64_t c0 = 0; c0 < c; c0 += LANES) {
            const vmask m = v_lanes(c - c0);
            const bool full = c - c0 >= LANES;
            vec d[4][4], r[4][4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++)
                    d[i][j] = px[i][j] ? w_load(full, m, px[i][j] + c0) : v_zero();
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) { /* B^T d, column j */
                r[0][j] = v_sub(d[0][j], d[2][j]);
                r[1][j] = v_add(d[1][j], d[2][j]);
                r[2][j] = v_sub(d[2][j], d[1][j]);
                r[3][j] = v_sub(d[1][j], d[3][j]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) { /* (B^T d) B, row i */
                float *o = out + 4 * i * es + c0;
                w_store(full, o, m, v_sub(r[i][0], r[i][2]));
                w_store(full, o + es, m, v_add(r[i][1], r[i][2]));
                w_store(full, o + 2 * es, m, v_sub(r[i][2], r[i][1]));
                w_store(full, o + 3 * es, m, v_sub(r[i][1], r[i][3]));
            }
        }
    }
}

/* at[i][j]: the offset in an image batch [., h, w, c] of pixel (i, j) of
 * tile t's 2x2 output pixels (tiles as winograd_input), -1 outside the image. */
INLINE void tile_pixels(int64_t t, int64_t h, int64_t w, int64_t c, int64_t th, int64_t tw, int64_t at[2][2]) {
    const int64_t img = t / (th * tw), ty = t / tw % th, tx = t % tw;
    const bool row1 = 2 * ty + 1 < h, col1 = 2 * tx + 1 < w;
    const int64_t o = ((img * h + 2 * ty) * w + 2 * tx) * c;
    at[0][0] = o, at[0][1] = col1 ? o + c : -1;
    at[1][0] = row1 ? o + w * c : -1, at[1][1] = row1 && col1 ? o + (w + 1) * c : -1;
}

/* The 2x2 output pixels of each of the nt tiles from t0 (as winograd_input)
 * = A^T m A (+ bias), from m [16, es] (tile t at t c in each row); channels c0 ..
 * c0 + c of y [., h, w, yc], the pixels inside the image only; y += with
 * `accumulate`. A^T = [1 1 1 0; 0 1 -1 -1]. */
static TARGET void winograd_output(const float *mt, int64_t es, int64_t c, const float *bias,
                                   float *y, int64_t h, int64_t w, int64_t yc, int64_t c0,
                                   int64_t th, int64_t tw, int64_t t0, int64_t nt,
                                   bool accumulate) {
    for (int64_t t = 0; t < nt; t++) {
        int64_t at[2][2];
        tile_pixels(t0 + t, h, w, yc, th, tw, at);
        float *py[2][2] = {{y + at[0][0] + c0, at[0][1] < 0 ? NULL : y + at[0][1] + c0},
                           {at[1][0] < 0 ? NULL : y + at[1][0] + c0, at[1][1] < 0 ? NULL : y + at[1][1] + c0}};
        const float *in = mt + t * c;
        for (int64_t k = 0; k < c; k += LANES) {
            const vmask m = v_lanes(c - k);
            const bool full = c - k >= LANES;
            vec s[2][4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) { /* A^T m, column j */
                const float *col = in + j * es + k;
                vec m0 = w_load(full, m, col), m1 = w_load(full, m, col + 4 * es);
                vec m2 = w_load(full, m, col + 8 * es), m3 = w_load(full, m, col + 12 * es);
                s[0][j] = v_add(v_add(m0, m1), m2);
                s[1][j] = v_sub(v_sub(m1, m2), m3);
            }
            const vec b = bias ? w_load(full, m, bias + k) : v_zero();
#pragma GCC unroll 2
            for (int i = 0; i < 2; i++) {
                vec o[2] = {v_add(v_add(v_add(s[i][0], s[i][1]), s[i][2]), b),
                            v_add(v_sub(v_sub(s[i][1], s[i][2]), s[i][3]), b)};
#pragma GCC unroll 2
                for (int j = 0; j < 2; j++) {
                    if (!py[i][j])
                        continue;
                    vec r = accumulate ? v_add(o[j], w_load(full, m, py[i][j] + k)) : o[j];
                    w_store(full, py[i][j] + k, m, r);
                }
            }
        }
    }
}

/* Rows of a product tile with nj vectors of channels: FP at full width,
 * more for fewer vectors (as the direct forward tiles), at most 2 FP (a
 * general register holds each row's pointer). */
#define PRODUCT_ROWS(nj) (FP * VJ / (nj) < 2 * FP ? FP * VJ / (nj) : 2 * FP)

/* m[p, j0 ..] = v[p, :] @ u for the np <= fp rows p of a tile: u one block
 * [c, BLOCK] of packed weights, nj vectors of it (the last masked to co). */
INLINE void product_tile(const int nj, const int fp, const float *v, int64_t c, const float *u,
                         int np, float *m, int64_t co, int64_t j0) {
    vec acc[2 * FP][VJ];
    const float *in[2 * FP];
#pragma GCC unroll 12
    for (int p = 0; p < fp; p++) {
        in[p] = v + (p < np ? p : np - 1) * c; /* missing rows repeat the last: dropped */
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            acc[p][j] = v_zero();
    }
#pragma GCC unroll 2
    for (int64_t q = 0; q < c; q++) {
        vec wv[VJ];
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            wv[j] = v_load(u + q * BLOCK + j * LANES);
#pragma GCC unroll 12
        for (int p = 0; p < fp; p++) {
            vec a = v_set1(in[p][q]);
#pragma GCC unroll 4
            for (int j = 0; j < nj; j++)
                acc[p][j] = v_fma(a, wv[j], acc[p][j]);
        }
    }
    const bool full = co - j0 >= nj * LANES;
#pragma GCC unroll 12
    for (int p = 0; p < fp; p++) {
        if (p >= np)
            break;
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            w_store(full, m + p * co + j0 + j * LANES, v_lanes(co - j0 - j * LANES), acc[p][j]);
    }
}

INLINE void product_rows(const int nj, const float *v, int64_t nt, int64_t c, const float *u,
                         float *m, int64_t co, int64_t j0) {
    const int fp = PRODUCT_ROWS(nj);
    for (int64_t t = 0; t < nt; t += fp)
        product_tile(nj, fp, v + t * c, c, u, (int)(nt - t < fp ? nt - t : fp), m + t * co, co, j0);
}

/* m [nt, co] = v [nt, c] @ u, u packed by blocks of output channels
 * [ceil(co / BLOCK), c, BLOCK] (zero past co), a block at a time over all
 * rows (the block's weights stay in cache). */
static TARGET void winograd_products(const float *v, int64_t nt, int64_t c, const float *u,
                                     int64_t co, float *m) {
    for (int64_t b = 0; b * BLOCK < co; b++) {
        int64_t j0 = b * BLOCK, left = (co - j0 + LANES - 1) / LANES;
        int nj = left < VJ ? (int)left : VJ;
        SWITCH_NJ(nj, product_rows, v, nt, c, u + b * c * BLOCK, m, co, j0)
    }
}

/* ---- the filter gradient ---- */

/* v [16, es] (row e = 4 i + j, as winograd_input's) = A g A^T of each of the
 * nt tiles from t0 (as winograd_input): g the tile's 2x2 output gradients
 * of dy [., h, w, c] from (2 ty, 2 tx), zero outside the image. A = [1 0;
 * 1 1; 1 -1; 0 -1], the transpose of winograd_output's A^T: the filter
 * gradient of a tile is G^T (A g A^T . B^T d B) G, the forward's products
 * taken backwards. */
static TARGET void winograd_grad_input(const float *dy, int64_t h, int64_t w, int64_t c, int64_t th,
                                       int64_t tw, int64_t t0, int64_t nt, float *v, int64_t es) {
    for (int64_t t = 0; t < nt; t++) {
        int64_t at[2][2];
        tile_pixels(t0 + t, h, w, c, th, tw, at);
        float *out = v + t * c;
        for (int64_t c0 = 0; c0 < c; c0 += LANES) {
            const vmask m = v_lanes(c - c0);
            const bool full = c - c0 >= LANES;
            vec g[2][2], r[4][2];
#pragma GCC unroll 2
            for (int i = 0; i < 2; i++)
#pragma GCC unroll 2
                for (int j = 0; j < 2; j++)
                    g[i][j] = at[i][j] >= 0 ? w_load(full, m, dy + at[i][j] + c0) : v_zero();
#pragma GCC unroll 2
            for (int j = 0; j < 2; j++) { /* A g, column j */
                r[0][j] = g[0][j];
                r[1][j] = v_add(g[0][j], g[1][j]);
                r[2][j] = v_sub(g[0][j], g[1][j]);
                r[3][j] = v_sub(v_zero(), g[1][j]);
            }
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) { /* (A g) A^T, row i */
                float *o = out + 4 * i * es + c0;
                w_store(full, o, m, r[i][0]);
                w_store(full, o + es, m, v_add(r[i][0], r[i][1]));
                w_store(full, o + 2 * es, m, v_sub(r[i][0], r[i][1]));
                w_store(full, o + 3 * es, m, v_sub(v_zero(), r[i][1]));
            }
        }
    }
}

/* m [nr, ci] (rows co0 .. co0 + nr, columns j0 .. j0 + LANES nj, the last
 * vector masked to ci) += the sum over the nt tiles of g[t][co] x[t][ci],
 * g [nt, co] and x [nt, ci] one transform row e each: every sum one chain
 * of multiply-adds over the tiles in order. */
INLINE void grad_tile(const int nj, const int nr, const float *g, int64_t co, const float *x,
                      int64_t ci, int64_t nt, float *m, int64_t co0, int64_t j0) {
    const vmask last = v_lanes(ci - j0 - (nj - 1) * LANES);
    const bool full = ci - j0 >= nj * LANES;
    vec acc[FR * VJ][VJ];
#pragma GCC unroll 24
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            acc[r][j] = w_load(full || j < nj - 1, last, m + (co0 + r) * ci + j0 + j * LANES);
    const float *gt = g + co0, *xt = x + j0;
#pragma GCC unroll 2
    for (int64_t t = 0; t < nt; t++, gt += co, xt += ci) {
        vec xv[VJ];
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            xv[j] = w_load(full || j < nj - 1, last, xt + j * LANES);
        outer_fma(nr, nj, gt, xv, acc);
    }
#pragma GCC unroll 24
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nj; j++)
            w_store(full || j < nj - 1, m + (co0 + r) * ci + j0 + j * LANES, last, acc[r][j]);
}

/* grad_tile with nj and nr (1 .. filter_rows(nj)) made constants. */
#undef FT
#define FT(nj, nr)                                                                                 \
    case (nj) * 64 + (nr): grad_tile(nj, nr, g, co, x, ci, nt, m, co0, j0); break;

static TARGET void winograd_grad_products(const float *g, int64_t co, const float *x, int64_t ci,
                                          int64_t nt, int nr, int nj, float *m, int64_t co0,
                                          int64_t j0) {
    switch (nj * 64 + nr) {
#if VJ == 4 && FR == 6
        FT24(1) FT12(2) FT8(3) FT6(4)
#elif VJ == 2 && FR == 6
        FT12(1) FT6(2)
#endif
    }
}
#undef FT
