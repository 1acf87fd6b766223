/* Philox4x32-10 and the (seed, stream, element) mapping of autograd/rng.h:
 * Random123's known answers, the documented layout, bulk fills against single
 * draws, and the moments of a million draws. */
#include "testutil.h"

#include "autograd/rng.h"

#include <math.h>
#include <stdlib.h>

#define DRAWS 1000000

/* Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter, key, result. */
static const uint32_t kat[3][10] = {
    {0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x00000000, 0x6627e8d5, 0xe169c58d,
     0xbc57ac4c, 0x9b00dbd8},
    {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e,
     0xa20bc7c6, 0x6d5451fd},
    {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb,
     0x5001e420, 0x24126ea1},
};

START_TEST(test_known_answers) {
    for (int v = 0; v < 3; v++) {
        dc_u32x4 r = dc_philox4x32_10(&kat[v][0], &kat[v][4]);
        for (int j = 0; j < 4; j++)
            ck_assert_msg(r.w[j] == kat[v][6 + j], "vector %d word %d: got %08x, want %08x", v, j,
                          r.w[j], kat[v][6 + j]);
    }
}
END_TEST

/* The contract of the header comment, with every 32-bit half distinct. */
START_TEST(test_layout) {
    uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull, block = 0x500000003ull;
    const uint32_t ctr[4] = {0x00000003, 0x00000005, 0x76543210, 0xfedcba98};
    const uint32_t key[2] = {0x89abcdef, 0x01234567};
    dc_u32x4 want = dc_philox4x32_10(ctr, key), got = dc_rand_block(seed, stream, block);
    for (int j = 0; j < 4; j++) {
        ck_assert_uint_eq(got.w[j], want.w[j]);
        float u = dc_rand_uniform(seed, stream, 4 * block + (uint64_t)j);
        ck_assert_msg(u == (float)(want.w[j] >> 8) / 16777216.0f, "uniform word %d", j);
    }
    for (int pair = 0; pair < 2; pair++) {
        double u1 = ((want.w[2 * pair] >> 8) + 1) / 16777216.0,
               u2 = (want.w[2 * pair + 1] >> 8) / 16777216.0;
        double r = sqrt(-2 * log(u1)), a = 2 * M_PI * u2;
        double z[2] = {r * cos(a), r * sin(a)};
        for (int k = 0; k < 2; k++) {
            float g = dc_rand_normal(seed, stream, 4 * block + 2 * (uint64_t)pair + (uint64_t)k);
            ck_assert_msg(fabs(g - z[k]) <= 1e-5 * (1 + fabs(z[k])),
                          "normal %d: got %.8g want %.8g", 2 * pair + k, (double)g, z[k]);
        }
    }
}
END_TEST

START_TEST(test_extremes) {
    ck_assert(dc_u32_to_uniform(0) == 0.0f);
    ck_assert(dc_u32_to_uniform(0xffffffffu) == 1.0f - 0x1.0p-24f);
    float z0, z1;
    dc_box_muller(0xffffffffu, 0, &z0, &z1); /* u1 = 1: radius 0 */
    ck_assert(z0 == 0.0f && z1 == 0.0f);
    dc_box_muller(0, 0, &z0, &z1); /* smallest u1 = 2^-24: largest radius, finite */
    ck_assert_msg(fabsf(z0 - sqrtf(48 * logf(2))) < 1e-5f && z1 == 0.0f, "%g %g", (double)z0,
                  (double)z1);
}
END_TEST

/* A fill is element-wise the single draws, whatever its length and offset. */
START_TEST(test_fill_prefix) {
    uint64_t seed = tu_next(), stream = tu_next() % 1000;
    enum { N = 1003, K = 37 };
    float a[N + K], b[N], c[N];
    for (int normal = 0; normal < 2; normal++) {
        void (*fill)(float *, int64_t, uint64_t, uint64_t, uint64_t) =
            normal ? dc_fill_normal : dc_fill_uniform;
        fill(a, N + K, seed, stream, 0);
        fill(b, N, seed, stream, 0);
        fill(c, N - 6, seed, stream, 5); /* starts inside a block, ends inside another */
        for (int i = 0; i < N; i++) {
            float one = normal ? dc_rand_normal(seed, stream, (uint64_t)i)
                               : dc_rand_uniform(seed, stream, (uint64_t)i);
            ck_assert_msg(a[i] == one && b[i] == one, "%s element %d",
                          normal ? "normal" : "uniform", i);
            if (i >= 5 && i < N - 1)
                ck_assert_msg(c[i - 5] == one, "offset fill, element %d", i);
        }
    }
}
END_TEST

/* Mean, then the second to fourth central moments. */
static void moments(const float *x, int64_t n, double m[4]) {
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += x[i];
    m[0] = s / n;
    for (int p = 1; p < 4; p++)
        m[p] = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - m[0];
        m[1] += d * d;
        m[2] += d * d * d;
        m[3] += d * d * d * d;
    }
    for (int p = 1; p < 4; p++)
        m[p] /= n;
}

/* Bounds are about six standard errors of each statistic over DRAWS samples. */
START_TEST(test_uniform_stats) {
    float *x = malloc(DRAWS * sizeof *x);
    uint64_t seed = tu_next();
    dc_fill_uniform(x, DRAWS, seed, 3, 0);
    double m[4];
    moments(x, DRAWS, m);
    ck_assert_msg(fabs(m[0] - 0.5) < 1.8e-3, "mean %g (seed %llu)", m[0], (unsigned long long)seed);
    ck_assert_msg(fabs(m[1] - 1.0 / 12) < 4.5e-4, "variance %g", m[1]);
    int bins[16] = {0};
    for (int i = 0; i < DRAWS; i++) {
        ck_assert(x[i] >= 0.0f && x[i] < 1.0f);
        bins[(int)(x[i] * 16)]++;
    }
    double chi2 = 0, expect = DRAWS / 16.0;
    for (int b = 0; b < 16; b++)
        chi2 += (bins[b] - expect) * (bins[b] - expect) / expect;
    ck_assert_msg(chi2 < 55, "chi-square over 16 bins %g (15 degrees of freedom)", chi2);
    free(x);
}
END_TEST

START_TEST(test_normal_stats) {
    float *x = malloc(DRAWS * sizeof *x);
    uint64_t seed = tu_next();
    dc_fill_normal(x, DRAWS, seed, 0, 0);
    double m[4];
    moments(x, DRAWS, m);
    ck_assert_msg(fabs(m[0]) < 6e-3, "mean %g (seed %llu)", m[0], (unsigned long long)seed);
    ck_assert_msg(fabs(m[1] - 1) < 8.5e-3, "variance %g", m[1]);
    ck_assert_msg(fabs(m[2]) < 2.4e-2, "third moment %g", m[2]);
    ck_assert_msg(fabs(m[3] - 3) < 6e-2, "fourth moment %g", m[3]);
    int inside = 0;
    for (int i = 0; i < DRAWS; i++)
        inside += fabsf(x[i]) < 1.0f;
    ck_assert_msg(fabs(inside / (double)DRAWS - 0.682689) < 3e-3, "P(|z| < 1) = %g",
                  inside / (double)DRAWS);
    free(x);
}
END_TEST

/* Neighbouring streams, seeds differing only in their high word, and the two
 * elements of one Box-Muller pair are uncorrelated. */
static double correlation(const float *a, const float *b, int64_t n) {
    double sa = 0, sb = 0, sab = 0, saa = 0, sbb = 0;
    for (int64_t i = 0; i < n; i++) {
        sa += a[i], sb += b[i], sab += (double)a[i] * b[i];
        saa += (double)a[i] * a[i], sbb += (double)b[i] * b[i];
    }
    double cov = sab / n - sa / n * sb / n;
    return cov / sqrt((saa / n - sa / n * sa / n) * (sbb / n - sb / n * sb / n));
}

START_TEST(test_streams_independent) {
    enum { N = 200000 };
    float *a = malloc(N * sizeof *a), *b = malloc(N * sizeof *b), *c = malloc(2 * N * sizeof *c);
    uint64_t seed = tu_next() & 0xffffffffull;
    dc_fill_normal(a, N, seed, 7, 0);
    dc_fill_normal(b, N, seed, 8, 0);
    double limit = 6 / sqrt(N);
    ck_assert_msg(fabs(correlation(a, b, N)) < limit, "streams 7 and 8: %g", correlation(a, b, N));
    dc_fill_normal(b, N, seed | (1ull << 32), 7, 0);
    ck_assert_msg(fabs(correlation(a, b, N)) < limit, "seed high word: %g", correlation(a, b, N));
    dc_fill_normal(c, 2 * N, seed, 9, 0);
    for (int i = 0; i < N; i++)
        a[i] = c[2 * i], b[i] = c[2 * i + 1];
    ck_assert_msg(fabs(correlation(a, b, N)) < limit, "cos and sin of a pair: %g",
                  correlation(a, b, N));
    free(a);
    free(b);
    free(c);
}
END_TEST

int main(void) {
    Suite *s = suite_create("rng");
    TCase *tc = tu_tcase(s, "philox", 60);
    tcase_add_test(tc, test_known_answers);
    tcase_add_test(tc, test_layout);
    tcase_add_test(tc, test_extremes);
    tcase_add_test(tc, test_fill_prefix);
    tcase_add_test(tc, test_uniform_stats);
    tcase_add_test(tc, test_normal_stats);
    tcase_add_test(tc, test_streams_independent);
    return tu_run(s);
}
