/* CPU kernels for conv2d (see conv.h).
 *
 * Direct way (AVX-512 or AVX2, whichever isa.h chose; conv_direct.h): the
 * forward pass with the weights repacked in blocks of output channels,
 * output channels last; the input gradient as the transposed convolution,
 * one stride phase at a time (each a stride-1 convolution of dy with part of
 * the kernel, turned half a circle); the filter gradient (with the bias
 * gradient alongside) reading x and dy in place. Inputs with fewer channels
 * than a vector take the filter gradient from a padded copy with vectors
 * over output channels, and the input gradient the GEMM way. 3x3 stride-1
 * padding-1 forward passes and input gradients with enough channels go the
 * Winograd way instead (conv_winograd.h), and then the filter gradient too.
 *
 * GEMM way (the baseline ISA, and tests): the column buffer has one row per
 * output pixel and one column per (ky, kx, cin), the order of the weight's
 * [Cout, kh, kw, Cin] layout, so the forward pass is col @ w^T and w needs no
 * repacking. The forward pass runs chunks of a fixed number of output rows
 * of one image, each thread filling its own columns and calling a
 * one-threaded GEMM (cpu_blas_each), so that an image meets the same GEMM
 * calls in any batch (batch invariance). The backward pass fills columns for
 * a chunk of output rows (units of (image, oy)) at a time, across images;
 * the input gradient is dy @ w scattered back (col2im), the filter gradient
 * dy^T @ col. */
#include "conv.h"

#include "../tensor.h" /* dc_f32_to_f16, dc_f16_to_f32 where there is no F16C */
#include "conv_direct.h"
#include "conv_winograd.h"
#include "gemm.h"
#include "isa.h"

#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <string.h>

/* Floats moved below which a gather or scatter runs on one thread: waking
 * the team would cost more than it saves. */
#define PAR_MIN_FLOATS 65536
/* Output pixels per GEMM of the GEMM way's forward pass (whole output rows,
 * at least one): the weights packed per call then cost little. */
#define CHUNK_PIXELS 256

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The direct kernels for g, or NULL for the GEMM way. */
static const cpu_direct_kernels *direct_kernels(const cpu_conv_geom *g) {
    if (g->algo == CPU_CONV_GEMM)
        return NULL;
#if defined(__x86_64__)
    switch (cpu_isa_active()) {
    case CPU_ISA_AVX512: return &cpu_direct_avx512;
    case CPU_ISA_AVX2: return &cpu_direct_avx2;
    case CPU_ISA_BASELINE: break;
    }
#endif
    return NULL;
}

/* Floats of the weights packed by blocks of `blocked` channels (cout for the
 * forward pass, cin for the transposed one; see conv_direct.h). */
static int64_t packed_floats(const cpu_direct_kernels *k, const cpu_conv_geom *g,
                             int64_t blocked) {
    const int64_t B = k->block, other = g->cin * g->cout / blocked;
    return (blocked + B - 1) / B * B * g->kh * g->kw * other;
}

static bool is_pointwise(const cpu_conv_geom *g) {
    return g->kh == 1 && g->kw == 1 && g->stride == 1 && g->pad == 0;
}

/* Fewer input channels than a vector holds (images): the direct filter
 * gradient then runs its vectors over output channels, and the input
 * gradient (rarely wanted for images) goes the GEMM way. */
static bool is_narrow(const cpu_direct_kernels *k, const cpu_conv_geom *g) {
    return g->cin < k->lanes;
}

static int64_t col_width(const cpu_conv_geom *g) { return g->kh * g->kw * g->cin; }

/* Floats of the column buffer per output row (image, oy): the GEMM way's chunk unit. */
static int64_t unit_floats(const cpu_conv_geom *g) { return g->wo * col_width(g); }

/* Chunk units that fit in `floats` (at least 1, at most `all`). */
static int64_t fit_units(int64_t floats, int64_t unit, int64_t all) {
    if (unit == 0)
        return all;
    int64_t k = floats / unit;
    return k < 1 ? 1 : min64(k, all);
}

/* Floats per image of the padded input (narrow filter gradient); 0 when unpadded. */
static int64_t padded_image_floats(const cpu_conv_geom *g) {
    return g->pad ? (g->h + 2 * g->pad) * (g->w + 2 * g->pad) * g->cin : 0;
}

/* The input gradient is the transposed convolution, split by the stride into
 * phases: input rows iy with (iy + pad) % stride == a take kernel rows
 * ky = a + stride * t from dy rows b - t, where b = (iy + pad) / stride
 * (likewise for columns). Each phase is a stride-1 convolution of dy with
 * taps(a) kernel rows. */
static int64_t phase_taps(int64_t k, int64_t stride, int64_t a) {
    return a < k ? (k - a + stride - 1) / stride : 0;
}

/* The b of the first and last input row of phase a (first > last when none). */
static void phase_rows(int64_t in, int64_t pad, int64_t stride, int64_t a, int64_t *first,
                       int64_t *last) {
    *first = pad > a ? (pad - a + stride - 1) / stride : 0;
    *last = (in - 1 + pad - a) / stride;
}

/* Packed weights plus the threads' patches of a direct convolution over c channels. */
static int64_t direct_floats(const cpu_direct_kernels *k, const cpu_conv_geom *g, int64_t blocked,
                             int64_t c) {
    return packed_floats(k, g, blocked) + omp_get_max_threads() * k->patch_floats(g->kh, g->kw, c);
}

/* Output rows per chunk of the GEMM way's forward pass, with columns of at
 * most `floats` (but one row at least): from the image's geometry alone. */
static int64_t forward_chunk_rows(const cpu_conv_geom *g, int64_t floats) {
    int64_t rows = min64((CHUNK_PIXELS + g->wo - 1) / g->wo, g->ho);
    return min64(rows, fit_units(floats, unit_floats(g), rows));
}

/* Threads that fill columns at once in the GEMM way's forward pass, each its
 * own chunk of `rows` output rows within `floats`. */
static int forward_team(const cpu_conv_geom *g, int64_t rows, int64_t floats) {
    return (int)fit_units(floats, rows * unit_floats(g), omp_get_max_threads());
}

/* ---- the Winograd way ---- */

/* Where CPU_CONV_AUTO takes the Winograd way, from the image's shape and
 * channels alone (never the batch: a sample's result must not depend on
 * it). bench_conv_algo, one thread of a Sapphire Rapids Xeon, AVX2, batch
 * 64: 16 to 16 channels at 32x32 0.66 times the direct kernels' speed, 32
 * to 16 1.43 times, 32 at 16x16 1.2, 64 at 8x8 1.58, 64 at 4x4 1.47; Stable
 * Diffusion's batch 2: 320 channels at 64x64 1.96, 640 at 32x32 1.4, 1280
 * at 16x16 1.17, but 1280 at 8x8 0.62 (the weights, transformed at every
 * call, outweigh 32 tiles); and a whole 512x512 step (2 threads, f16
 * weights) took 11.6 s with 1280 channels at 16x16 the Winograd way against
 * 8.2 direct (one run each; most likely those layers, whose 2560-channel
 * inputs transform 16 x 2560 x 1280 weights per call): wide weights need
 * 32x32 pixels. */
#define WINOGRAD_MIN_CHANNELS 16
#define WINOGRAD_MIN_SUM 48
#define WINOGRAD_WIDE (256 * 256)
#define WINOGRAD_WIDE_PIXELS 1024

/* The Winograd way for a convolution of g's shape from cin to cout
 * channels (the forward pass's; the input gradient's swapped). */
static bool use_winograd(const cpu_direct_kernels *k, const cpu_conv_geom *g, int64_t cin,
                         int64_t cout) {
    if (!k || g->kh != 3 || g->kw != 3 || g->stride != 1 || g->pad != 1)
        return false;
    if (g->algo == CPU_CONV_WINOGRAD)
        return true;
    return g->algo == CPU_CONV_AUTO && cin >= WINOGRAD_MIN_CHANNELS &&
           cout >= WINOGRAD_MIN_CHANNELS && cin + cout >= WINOGRAD_MIN_SUM &&
           (cin * cout <= WINOGRAD_WIDE || g->h * g->w >= WINOGRAD_WIDE_PIXELS);
}

static cpu_winograd winograd_forward(const cpu_conv_geom *g, float *y, const float *x,
                                     const float *w, const float *b) {
    cpu_winograd_layout layout = !g->packed ? WINOGRAD_PLAIN
                                 : g->half  ? WINOGRAD_PACKED_HALF
                                            : WINOGRAD_PACKED;
    return (cpu_winograd){x, w, layout, b, y, g->n, g->h, g->w, g->cin, g->cout, false};
}

/* dx (= with `write`, else +=) the input gradient: the convolution of dy
 * with the flipped kernel. */
static cpu_winograd winograd_input_grad(const cpu_conv_geom *g, const float *dy, const float *w,
                                        float *dx, bool write) {
    return (cpu_winograd){dy, w, WINOGRAD_FLIPPED, NULL, dx, g->n, g->h, g->w, g->cout, g->cin, !write};
}

/* Most bytes of the Winograd filter gradient's sums, [16, cout, cin] floats
 * in the scratch: Stable Diffusion's widest layers (1920 to 640 channels
 * would take 79 MB) keep the direct one. */
#define WINOGRAD_FILTER_BYTES ((int64_t)32 << 20)

/* The filter gradient the Winograd way: when the forward pass goes that way
 * (the two sides' transforms cost about what the forward's do) and its sums fit. */
static bool winograd_filter(const cpu_direct_kernels *k, const cpu_conv_geom *g) {
    return use_winograd(k, g, g->cin, g->cout) && !is_narrow(k, g) &&
           16 * g->cin * g->cout * (int64_t)sizeof(float) <= WINOGRAD_FILTER_BYTES;
}

static cpu_winograd_grad winograd_filter_grad(const cpu_conv_geom *g, const float *dy, const float *x,
                                              float *dw) {
    return (cpu_winograd_grad){x, dy, dw, g->n, g->h, g->w, g->cin, g->cout};
}

int64_t cpu_conv2d_scratch_floats(const cpu_conv_geom *g, int64_t max_bytes) {
    const cpu_direct_kernels *k = direct_kernels(g);
    const int64_t cap = max_bytes / (int64_t)sizeof(float), rows = g->n * g->ho;
    const int64_t cols = fit_units(cap, unit_floats(g), rows) * unit_floats(g);
    if (!k) {
        const int64_t chunk = forward_chunk_rows(g, cap);
        const int64_t fwd = forward_team(g, chunk, cap) * chunk * unit_floats(g);
        return is_pointwise(g) ? 0 : fwd > cols ? fwd : cols;
    }
    int64_t fwd = direct_floats(k, g, g->cout, g->cin), bwd = direct_floats(k, g, g->cin, g->cout);
    if (use_winograd(k, g, g->cin, g->cout)) {
        cpu_winograd c = winograd_forward(g, NULL, NULL, NULL, NULL);
        fwd = cpu_winograd_scratch_floats(k, &c);
    }
    if (use_winograd(k, g, g->cout, g->cin) && !is_narrow(k, g)) {
        cpu_winograd c = winograd_input_grad(g, NULL, NULL, NULL, false);
        bwd = cpu_winograd_scratch_floats(k, &c);
    }
    if (winograd_filter(k, g)) {
        cpu_winograd_grad c = winograd_filter_grad(g, NULL, NULL, NULL);
        int64_t f = cpu_winograd_grad_scratch_floats(&c);
        bwd = f > bwd ? f : bwd;
    }
    if (is_narrow(k, g)) { /* padded input for the filter gradient, then columns for the input gradient */
        int64_t pf = padded_image_floats(g);
        bwd = fit_units(cap, pf, g->n) * pf > cols ? fit_units(cap, pf, g->n) * pf : cols;
    }
    return fwd > bwd ? fwd : bwd;
}

/* ---- the direct way ---- */

/* Most output channels per block of packed weights (AVX-512's). */
#define MAX_BLOCK 64
/* Output pixels of a forward pass from which f16 weights are widened into
 * the scratch once, not per vector load in the inner loop: every weight is
 * then reused by enough tiles that the one pass costs less than the
 * converts (which take an FMA port). Measured on a 2-core AVX-512 Xeon, one
 * thread, 3x3 convolutions of batch 2: per load 8% slower than f32 at 32x32
 * with 320 channels, level at 16x16 with 640, 13% faster at 8x8 with 1280
 * (their weights no longer fit in cache). */
#define WIDEN_PIXELS 1024

/* dst[i] = src[i] as f16 bits (nearest even; finite: cpu_conv_half_fits),
 * and back, for n a multiple of 8: by F16C, which every CPU with a direct
 * kernel has (isa.c), eight at a time. */
#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx,f16c"))) static void to_half(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("avx,f16c"))) void cpu_conv_widen_half(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(src + i))));
}
#else
static void to_half(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = dc_f32_to_f16(src[i]);
}
void cpu_conv_widen_half(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        dst[i] = dc_f16_to_f32(src[i]);
}
#endif

/* wp [ceil(cout / B), K, B] from w [cout, K]: blocks of output channels,
 * zero past cout; f16 bits into wh instead when wh is not NULL. */
static void pack_blocks(int64_t B, const float *w, float *wp, uint16_t *wh, int64_t cout,
                        int64_t K) {
    const int64_t blocks = (cout + B - 1) / B;
#pragma omp parallel for if (blocks * K * B >= PAR_MIN_FLOATS)
    for (int64_t r = 0; r < blocks * K; r++) { /* r = (block, k) */
        int64_t co0 = r / K * B, k = r % K;
        float col[MAX_BLOCK], *dst = wh ? col : wp + r * B;
        for (int64_t j = 0; j < B; j++)
            dst[j] = co0 + j < cout ? w[(co0 + j) * K + k] : 0.0f;
        if (wh)
            to_half(col, wh + r * B, B);
    }
}

/* wp [ceil(cout / B), kh, kw, cin, B] from w [cout, kh, kw, cin]. */
static void pack_forward(const cpu_direct_kernels *k, const cpu_conv_geom *g, const float *w,
                         float *wp) {
    pack_blocks(k->block, w, wp, NULL, g->cout, g->kh * g->kw * g->cin);
}

int64_t cpu_conv_pack_block(void) {
    const cpu_conv_geom auto_geom = {.algo = CPU_CONV_AUTO};
    const cpu_direct_kernels *k = direct_kernels(&auto_geom);
    return k ? k->block : 0;
}

void cpu_conv_pack(const float *w, float *wp, int64_t cout, int64_t K) {
    pack_blocks(cpu_conv_pack_block(), w, wp, NULL, cout, K);
}

bool cpu_conv_half_fits(const float *w, int64_t n) {
    bool fits = true;
#pragma omp parallel for reduction(&& : fits) if (n >= PAR_MIN_FLOATS)
    for (int64_t i = 0; i < n; i++)
        fits = fits && fabsf(w[i]) < 65520.0f; /* false for NaN too */
    return fits;
}

void cpu_conv_pack_half(const float *w, uint16_t *wp, int64_t cout, int64_t K) {
    pack_blocks(cpu_conv_pack_block(), w, NULL, wp, cout, K);
}

/* w [cout, K] from the packed wp (f32) or wh (f16 bits). */
static void unpack_blocks(const float *wp, const uint16_t *wh, float *w, int64_t cout, int64_t K) {
    const int64_t B = cpu_conv_pack_block(), blocks = (cout + B - 1) / B;
#pragma omp parallel for if (cout * K >= PAR_MIN_FLOATS)
    for (int64_t r = 0; r < blocks * K; r++) { /* r = (block, k), as pack_blocks */
        int64_t co0 = r / K * B, k = r % K;
        float col[MAX_BLOCK];
        const float *src = wp ? wp + r * B : col;
        if (wh)
            cpu_conv_widen_half(wh + r * B, col, B);
        for (int64_t j = 0; j < B && co0 + j < cout; j++)
            w[(co0 + j) * K + k] = src[j];
    }
}

void cpu_conv_unpack(const float *wp, float *w, int64_t cout, int64_t K) {
    unpack_blocks(wp, NULL, w, cout, K);
}

void cpu_conv_unpack_half(const uint16_t *wp, float *w, int64_t cout, int64_t K) {
    unpack_blocks(NULL, wp, w, cout, K);
}

/* wp [ceil(cin / B), ty, tx, cout, B]: the weights of phase (a, c) of the
 * transposed convolution (ty x tx taps), the kernel turned half a circle and
 * the channel roles swapped. */
static void pack_phase(const cpu_direct_kernels *k, const cpu_conv_geom *g, const float *w,
                       int64_t a, int64_t c, int64_t ty, int64_t tx, float *wp) {
    const int64_t B = k->block, s = g->stride, blocks = (g->cin + B - 1) / B;
    const int64_t per_block = ty * tx * g->cout;
#pragma omp parallel for if (blocks * per_block * B >= PAR_MIN_FLOATS)
    for (int64_t r = 0; r < blocks * per_block; r++) { /* r = (block, t, u, co) */
        int64_t ci0 = r / per_block * B, t = r / (tx * g->cout) % ty, u = r / g->cout % tx;
        int64_t co = r % g->cout, ky = a + s * (ty - 1 - t), kx = c + s * (tx - 1 - u);
        const float *src = w + ((co * g->kh + ky) * g->kw + kx) * g->cin;
        for (int64_t j = 0; j < B; j++)
            wp[r * B + j] = ci0 + j < g->cin ? src[ci0 + j] : 0.0f;
    }
}

/* dst [n, h + top + bottom, w + left + right, c]: src [n, h, w, c] inside a
 * zero border (pad = {top, bottom, left, right}). */
static void pad_images(const float *src, int64_t n, int64_t h, int64_t w, int64_t c,
                       const int64_t pad[4], float *dst) {
    const int64_t hp = h + pad[0] + pad[1], wp = w + pad[2] + pad[3];
#pragma omp parallel for if (n * hp * wp * c >= PAR_MIN_FLOATS)
    for (int64_t r = 0; r < n * hp; r++) {
        int64_t img = r / hp, y = r % hp - pad[0];
        float *d = dst + r * wp * c;
        if (y < 0 || y >= h) {
            memset(d, 0, (size_t)(wp * c) * sizeof *d);
            continue;
        }
        memset(d, 0, (size_t)(pad[2] * c) * sizeof *d);
        memcpy(d + pad[2] * c, src + (img * h + y) * w * c, (size_t)(w * c) * sizeof *d);
        memset(d + (pad[2] + w) * c, 0, (size_t)(pad[3] * c) * sizeof *d);
    }
}

/* Packed weights (`packed`, or at the start of the scratch), the threads'
 * patches after them in the scratch. */
static void direct_run(const cpu_direct_kernels *k, cpu_direct_conv *d, const cpu_conv_geom *g,
                       int64_t blocked, const float *packed, float *scratch) {
    d->weights = packed ? packed : scratch;
    d->patches = scratch + packed_floats(k, g, blocked);
    d->threads = omp_get_max_threads();
    k->forward(d);
}

static void direct_forward(const cpu_direct_kernels *k, const cpu_conv_geom *g, float *y,
                           const float *x, const float *w, const float *b, float *scratch) {
    const uint16_t *half = g->packed && g->half ? (const uint16_t *)(const void *)w : NULL;
    const bool widen = half && g->n * g->ho * g->wo >= WIDEN_PIXELS;
    if (!g->packed)
        pack_forward(k, g, w, scratch);
    else if (widen)
        cpu_conv_widen_half(half, scratch, packed_floats(k, g, g->cout));
    cpu_direct_conv d = {
        .src = x, .bias = b, .out = y, .n = g->n, .h = g->h, .w = g->w, .c = g->cin,
        .co = g->cout, .kh = g->kh, .kw = g->kw, .stride = g->stride, .top = g->pad, .left = g->pad,
        .ho = g->ho, .wo = g->wo, .out_h = g->ho, .out_w = g->wo, .out_step = 1,
    };
    d.half = widen ? NULL : half;
    direct_run(k, &d, g, g->cout, g->packed && !widen ? w : NULL, scratch);
}

/* dx += the transposed convolution of dy, one stride phase (a, c) at a time;
 * dx = it with `write`, where one phase covers every pixel (stride 1). */
static void direct_input_grad(const cpu_direct_kernels *k, const cpu_conv_geom *g, const float *dy,
                              const float *w, float *dx, bool write, float *scratch) {
    const int64_t s = g->stride;
    for (int64_t a = 0; a < s; a++)
        for (int64_t c = 0; c < s; c++) {
            int64_t ty = phase_taps(g->kh, s, a), tx = phase_taps(g->kw, s, c), y0, y1, x0, x1;
            phase_rows(g->h, g->pad, s, a, &y0, &y1);
            phase_rows(g->w, g->pad, s, c, &x0, &x1);
            if (!ty || !tx || y1 < y0 || x1 < x0)
                continue; /* these input pixels feed no output */
            pack_phase(k, g, w, a, c, ty, tx, scratch);
            /* output row b' = b - y0 reads dy rows b' + y0 - (ty - 1) + t for taps t */
            cpu_direct_conv d = {
                .src = dy, .out = dx + ((s * y0 + a - g->pad) * g->w + s * x0 + c - g->pad) * g->cin,
                .n = g->n, .h = g->ho, .w = g->wo, .c = g->cout,
                .co = g->cin, .kh = ty, .kw = tx, .stride = 1, .top = ty - 1 - y0, .left = tx - 1 - x0,
                .ho = y1 - y0 + 1, .wo = x1 - x0 + 1,
                .out_h = g->h, .out_w = g->w, .out_step = s, .accumulate = !write,
            };
            direct_run(k, &d, g, g->cin, NULL, scratch);
        }
}

/* dw and db (may be NULL) += the filter and bias gradients for narrow inputs,
 * a chunk of padded images at a time. */
static void direct_filter_narrow(const cpu_direct_kernels *k, const cpu_conv_geom *g,
                                 const float *dy, const float *x, float *dw, float *db,
                                 float *scratch, int64_t scratch_floats) {
    const int64_t p = g->pad, pad[4] = {p, p, p, p}, per = padded_image_floats(g);
    const int64_t step = fit_units(scratch_floats, per, g->n);
    for (int64_t i0 = 0; i0 < g->n; i0 += step) {
        int64_t n = min64(step, g->n - i0);
        const float *xp = x + i0 * g->h * g->w * g->cin;
        if (per) {
            pad_images(xp, n, g->h, g->w, g->cin, pad, scratch);
            xp = scratch;
        }
        k->filter_narrow(g, n, xp, dy + i0 * g->ho * g->wo * g->cout, dw, db);
    }
}

/* ---- the GEMM way ---- */

/* col [units * wo, kh * kw * cin] = the input patches of output rows u0 .. u0 + units. */
static void im2col(const cpu_conv_geom *g, const float *x, float *col, int64_t u0, int64_t units) {
    const int64_t K = col_width(g), C = g->cin, seg = g->kw * C;
#pragma omp parallel for if (units * g->wo * K >= PAR_MIN_FLOATS)
    for (int64_t u = 0; u < units; u++) {
        int64_t img = (u0 + u) / g->ho, oy = (u0 + u) % g->ho;
        for (int64_t ox = 0; ox < g->wo; ox++) {
            float *row = col + (u * g->wo + ox) * K;
            int64_t ix0 = ox * g->stride - g->pad;
            bool inside = ix0 >= 0 && ix0 + g->kw <= g->w;
            for (int64_t ky = 0; ky < g->kh; ky++) {
                float *dst = row + ky * seg;
                int64_t iy = oy * g->stride - g->pad + ky;
                if (iy < 0 || iy >= g->h) {
                    memset(dst, 0, (size_t)seg * sizeof *dst);
                    continue;
                }
                const float *src = x + ((img * g->h + iy) * g->w) * C;
                if (inside) { /* the kw pixels are contiguous in x */
                    memcpy(dst, src + ix0 * C, (size_t)seg * sizeof *dst);
                    continue;
                }
                for (int64_t kx = 0; kx < g->kw; kx++) {
                    int64_t ix = ix0 + kx;
                    if (ix < 0 || ix >= g->w)
                        memset(dst + kx * C, 0, (size_t)C * sizeof *dst);
                    else
                        memcpy(dst + kx * C, src + ix * C, (size_t)C * sizeof *dst);
                }
            }
        }
    }
}

/* dst[i] += src[i] */
static inline void add_to(float *restrict dst, const float *restrict src, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++)
        dst[i] += src[i];
}

/* dx += the column gradients dcol of output rows u0 .. u0 + units, scattered
 * back to their input pixels. Each thread owns whole input rows, so no two
 * threads add into the same element. */
static void col2im(const cpu_conv_geom *g, const float *dcol, float *dx, int64_t u0, int64_t units) {
    const int64_t K = col_width(g), C = g->cin, seg = g->kw * C;
    const int64_t img0 = u0 / g->ho, img1 = (u0 + units - 1) / g->ho;
#pragma omp parallel for if (units * g->wo * K >= PAR_MIN_FLOATS)
    for (int64_t r = 0; r < (img1 - img0 + 1) * g->h; r++) {
        int64_t img = img0 + r / g->h, iy = r % g->h;
        float *dxrow = dx + (img * g->h + iy) * g->w * C;
        for (int64_t ky = 0; ky < g->kh; ky++) {
            int64_t t = iy + g->pad - ky, u = img * g->ho + t / g->stride - u0;
            if (t < 0 || t % g->stride || t / g->stride >= g->ho || u < 0 || u >= units)
                continue;
            for (int64_t ox = 0; ox < g->wo; ox++) {
                const float *src = dcol + (u * g->wo + ox) * K + ky * seg;
                int64_t ix0 = ox * g->stride - g->pad;
                if (ix0 >= 0 && ix0 + g->kw <= g->w) {
                    add_to(dxrow + ix0 * C, src, seg);
                    continue;
                }
                for (int64_t kx = 0; kx < g->kw; kx++)
                    if (ix0 + kx >= 0 && ix0 + kx < g->w)
                        add_to(dxrow + (ix0 + kx) * C, src + kx * C, C);
            }
        }
    }
}

typedef struct {
    const cpu_conv_geom *g;
    float *y, *scratch;
    const float *x, *w, *b;
    int64_t rows, chunks; /* output rows per chunk, chunks per image */
} forward_job;

/* Chunk i (image i / chunks) into the columns of `thread`, then its GEMM. */
static void forward_chunk(void *arg, int64_t i, int thread) {
    const forward_job *f = arg;
    const cpu_conv_geom *g = f->g;
    int64_t u0 = i / f->chunks * g->ho + i % f->chunks * f->rows;
    int64_t units = min64(f->rows, g->ho - i % f->chunks * f->rows);
    float *col = f->scratch + thread * f->rows * unit_floats(g);
    im2col(g, f->x, col, u0, units);
    cpu_linear_call(f->y + u0 * g->wo * g->cout, col, f->w, f->b, units * g->wo, col_width(g),
                    g->cout);
}

static void gemm_forward(const cpu_conv_geom *g, float *y, const float *x, const float *w,
                         const float *b, float *scratch, int64_t scratch_floats) {
    if (is_pointwise(g)) {
        cpu_linear_forward(y, x, w, b, g->n * g->ho * g->wo, col_width(g), g->cout, g->n);
        return;
    }
    const int64_t rows = forward_chunk_rows(g, scratch_floats);
    forward_job f = {g, y, scratch, x, w, b, rows, (g->ho + rows - 1) / rows};
    cpu_blas_each(g->n * f.chunks, forward_team(g, rows, scratch_floats), forward_chunk, &f);
}

/* dx and/or dw through column buffers of scratch_floats. */
static void gemm_backward(const cpu_conv_geom *g, const float *dy, const float *x, const float *w,
                          float *dx, float *dw, float *scratch, int64_t scratch_floats) {
    const int64_t K = col_width(g), all = g->n * g->ho, step = scratch_floats / unit_floats(g);
    for (int64_t u0 = 0; u0 < all; u0 += step) {
        int64_t units = min64(step, all - u0), rows = units * g->wo;
        const float *dyc = dy + u0 * g->wo * g->cout; /* [rows, cout] */
        if (dw) { /* dw [cout, K] += dy^T @ col */
            im2col(g, x, scratch, u0, units);
            cpu_gemm(true, false, g->cout, K, rows, dyc, scratch, 1.0f, dw);
        }
        if (dx) { /* dcol [rows, K] = dy @ w, then scattered into dx */
            cpu_gemm(false, false, rows, K, g->cout, dyc, w, 0.0f, scratch);
            col2im(g, scratch, dx, u0, units);
        }
    }
}

/* ---- entry points ---- */

void cpu_conv2d_forward(const cpu_conv_geom *g, float *y, const float *x, const float *w,
                        const float *b, float *scratch, int64_t scratch_floats) {
    const cpu_direct_kernels *k = direct_kernels(g);
    if (use_winograd(k, g, g->cin, g->cout)) {
        cpu_winograd c = winograd_forward(g, y, x, w, b);
        cpu_winograd_run(k, &c, scratch);
    } else if (k)
        direct_forward(k, g, y, x, w, b, scratch);
    else
        gemm_forward(g, y, x, w, b, scratch, scratch_floats);
}

void cpu_conv2d_backward(const cpu_conv_geom *g, const float *dy, const float *x, const float *w,
                         float *dx, bool dx_fresh, float *dw, float *db, float *scratch,
                         int64_t scratch_floats) {
    const cpu_direct_kernels *k = direct_kernels(g);
    const int64_t pix = g->n * g->ho * g->wo;
    const bool dx_write = dx_fresh && k && !is_narrow(k, g) && g->stride == 1;
    if (dx_fresh && !dx_write)
        memset(dx, 0, (size_t)(g->n * g->h * g->w * g->cin) * sizeof(float));
    if (!k) {
        if (db)
            cpu_bias_backward(dy, db, pix, g->cout);
        if (is_pointwise(g))
            cpu_linear_backward(dy, x, w, dx, dw, NULL, pix, g->cin, g->cout);
        else
            gemm_backward(g, dy, x, w, dx, dw, scratch, scratch_floats);
        return;
    }
    /* the direct filter gradient also sums dy for db where it sees every pixel */
    const int64_t full = k->full_tap(g);
    const bool winograd_dw = dw && winograd_filter(k, g);
    const bool fused = dw && !winograd_dw && (is_narrow(k, g) || full >= 0);
    if (db && !fused)
        cpu_bias_backward(dy, db, pix, g->cout);
    if (winograd_dw) {
        cpu_winograd_grad c = winograd_filter_grad(g, dy, x, dw);
        cpu_winograd_grad_run(k, &c, scratch);
    } else if (dw && is_narrow(k, g))
        direct_filter_narrow(k, g, dy, x, dw, db, scratch, scratch_floats);
    else if (dw)
        k->filter(g, dy, x, dw, db, full);
    if (dx && is_narrow(k, g))
        gemm_backward(g, dy, x, w, dx, NULL, scratch, scratch_floats);
    else if (dx && use_winograd(k, g, g->cout, g->cin)) {
        cpu_winograd c = winograd_input_grad(g, dy, w, dx, dx_write);
        cpu_winograd_run(k, &c, scratch);
    } else if (dx)
        direct_input_grad(k, g, dy, w, dx, dx_write, scratch);
}
