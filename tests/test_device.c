/* Device names (--device auto|cpu|cuda[:N]), the mixed-precision setting,
 * host copies, the arenas' use per device and the choice of CPU kernels:
 * what every build answers, with or without CUDA or a GPU. */
#include "testutil.h"

#include "autograd/device.h"
#include "autograd/error.h"
#include "autograd/tensor.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void expect_error(int rc, const char *msg) {
    ck_assert_int_eq(rc, -1);
    ck_assert_msg(strstr(dc_error(), msg), "expected \"%s\", got \"%s\"", msg, dc_error());
}

START_TEST(test_resolve) {
    int d = 5;
    ck_assert_int_eq(dc_device_resolve("cpu", &d), 0);
    ck_assert_int_eq(d, DC_CPU);
    ck_assert_int_eq(dc_device_resolve("auto", &d), 0);
    ck_assert_int_eq(d, dc_device_count() > 0 ? 0 : DC_CPU);
    expect_error(dc_device_resolve("gpu", &d), "device 'gpu': expected auto, cpu, cuda or cuda:N");
    expect_error(dc_device_resolve("cudax", &d), "expected auto, cpu, cuda or cuda:N");
    expect_error(dc_device_resolve("cuda:", &d), "expected cuda:N with N a GPU ordinal");
    expect_error(dc_device_resolve("cuda:1x", &d), "expected cuda:N");
    expect_error(dc_device_resolve("cuda:-1", &d), "expected cuda:N");
    if (dc_device_count() == 0) {
#ifdef DC_HAVE_CUDA
        expect_error(dc_device_resolve("cuda", &d), "device 'cuda': no CUDA GPU found");
#else
        expect_error(dc_device_resolve("cuda:0", &d), "device 'cuda:0': this build of diffc has no CUDA");
#endif
    }
    char buf[16];
    ck_assert_str_eq(dc_device_name(buf, sizeof buf, DC_CPU), "cpu");
    ck_assert_str_eq(dc_device_name(buf, sizeof buf, 3), "cuda:3");
}
END_TEST

START_TEST(test_math) {
    dc_math m;
    ck_assert_int_eq(dc_math_parse("no", &m), 0);
    ck_assert_int_eq(m, DC_MATH_TF32);
    ck_assert_int_eq(dc_math_parse("bf16", &m), 0);
    ck_assert_int_eq(m, DC_MATH_BF16);
    expect_error(dc_math_parse("fp16", &m), "mixed precision 'fp16': expected no or bf16");
    ck_assert_int_eq(dc_device_set_math(DC_CPU, DC_MATH_BF16), 0);
}
END_TEST

START_TEST(test_host_copies) {
    dc_ctx *ctx = tu_ctx();
    dc_tensor *a = tu_randn(ctx, DC_SHAPE(3, 4)), *b = dc_new(ctx, DC_F32, DC_SHAPE(4, 3));
    ck_assert_int_eq(dc_tensor_copy(b, a), 0);
    ck_assert(memcmp(a->data, b->data, dc_tensor_bytes(a)) == 0);
    dc_tensor *c = dc_clone(ctx, a);
    ck_assert(c && c != a && memcmp(a->data, c->data, dc_tensor_bytes(a)) == 0);
    expect_error(dc_tensor_copy(dc_new(ctx, DC_F32, DC_SHAPE(5)), a),
                 "copy: f32 [3, 4] into f32 [5]: dtypes or sizes differ");
    ck_assert_int_eq(dc_memset(b->data, DC_CPU, 0, dc_tensor_bytes(b)), 0);
    ck_assert(((float *)b->data)[11] == 0.0f);
    tu_ctx_free(ctx);
#ifndef DC_HAVE_CUDA
    dc_arena arena;
    expect_error(dc_arena_init(&arena, "activations", 0, 1024),
                 "activations arena: this build of diffc has no CUDA");
#endif
}
END_TEST

/* The bytes in use over all arenas of the CPU, and their high-water mark:
 * each allocation adds its size rounded up to the 64-byte alignment; a
 * rewind, a reset and a free give it back, and the mark keeps the most that
 * was in use at once. A GPU's counts are its own. */
START_TEST(test_arena_peak) {
    size_t base = dc_arena_used_bytes(DC_CPU), peak = dc_arena_peak_bytes(DC_CPU), gpu = dc_arena_used_bytes(0);
    dc_arena a, b;
    ck_assert_int_eq(dc_arena_init(&a, "a", DC_CPU, 1 << 24), 0);
    ck_assert_int_eq(dc_arena_init(&b, "b", DC_CPU, 1 << 24), 0);
    ck_assert_uint_eq(dc_arena_used_bytes(DC_CPU), base); /* reserving is not using */
    size_t in_a = 0, in_b = 0;
    for (int i = 0; i < 20; i++) {
        size_t n = 1 + tu_next() % 100000;
        ck_assert_ptr_nonnull(dc_arena_alloc(&a, n));
        in_a += (n + 63) / 64 * 64;
    }
    size_t mark = b.used;
    for (int i = 0; i < 5; i++) {
        size_t n = 1 + tu_next() % 100000;
        ck_assert_ptr_nonnull(dc_arena_alloc(&b, n));
        in_b += (n + 63) / 64 * 64;
    }
    ck_assert_uint_eq(dc_arena_used_bytes(DC_CPU), base + in_a + in_b);
    size_t most = base + in_a + in_b > peak ? base + in_a + in_b : peak;
    ck_assert_uint_eq(dc_arena_peak_bytes(DC_CPU), most);
    dc_arena_rewind(&b, mark); /* scratch given back */
    ck_assert_uint_eq(dc_arena_used_bytes(DC_CPU), base + in_a);
    dc_arena_reset(&a);
    ck_assert_uint_eq(dc_arena_used_bytes(DC_CPU), base);
    ck_assert_ptr_nonnull(dc_arena_alloc(&b, in_a)); /* less than the mark: it stays */
    ck_assert_uint_eq(dc_arena_used_bytes(DC_CPU), base + in_a);
    ck_assert_uint_eq(dc_arena_peak_bytes(DC_CPU), most);
    dc_arena_free(&a);
    dc_arena_free(&b);
    ck_assert_uint_eq(dc_arena_used_bytes(DC_CPU), base);
    ck_assert_uint_eq(dc_arena_peak_bytes(DC_CPU), most);
    ck_assert_uint_eq(dc_arena_used_bytes(0), gpu);
    ck_assert_uint_eq(dc_arena_peak_bytes(1000), 0);
}
END_TEST

/* The host's available memory: some, no more than the machine has; a CPU
 * activation arena is never reserved past it. */
START_TEST(test_memory_available) {
    size_t avail, bytes, small = 1 + tu_next() % (1 << 20);
    ck_assert_int_eq(dc_device_mem_available(DC_CPU, &avail), 0);
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    ck_assert(avail > 0 && avail <= (size_t)pages * (size_t)page);
    ck_assert_int_eq(dc_device_arena_bytes(DC_CPU, SIZE_MAX / 2, &bytes), 0);
    ck_assert(bytes <= avail + ((size_t)64 << 20)); /* MemAvailable moves a little between the reads */
    ck_assert_int_eq(dc_device_arena_bytes(DC_CPU, small, &bytes), 0);
    ck_assert_uint_eq(bytes, small);
}
END_TEST

/* The CPU kernels `diffc --help` names with DC_CPU_ISA set to `isa`. */
static const char *kernels_with(const char *isa) {
    setenv("DC_CPU_ISA", isa, 1);
    const char *args[] = {"--help", NULL};
    tu_run_result *r = tu_run_diffc(args);
    unsetenv("DC_CPU_ISA");
    ck_assert_msg(r->status == 0, "exit %d: %s", r->status, tu_tail(r->err));
    const char *line = strstr(r->out, "CPU kernels: ");
    ck_assert_msg(line, "%s", tu_tail(r->out));
    return line + strlen("CPU kernels: ");
}

/* DC_CPU_ISA lowers the kernels' ISA and never raises it past what the CPU
 * runs; a value it does not name is reported and ignored. */
START_TEST(test_cpu_isa) {
    const char *mine = dc_device_cpu_kernels(); /* this process, DC_CPU_ISA as CTest set it */
    ck_assert_msg(!strncmp(mine, "avx512 (", 8) || !strncmp(mine, "avx2 (", 6) ||
                      !strncmp(mine, "baseline (", 10), "%s", mine);
    const char *got = kernels_with("baseline");
    ck_assert_msg(!strncmp(got, "baseline (OpenBLAS ", 19), "%s", got);
    got = kernels_with("avx2");
    ck_assert_msg(!strncmp(got, "avx2 (", 6) || !strncmp(got, "baseline (", 10), "%s", got);
    bool has_avx2 = !strncmp(got, "avx2 (", 6);
    got = kernels_with("avx512");
    ck_assert_msg(!strncmp(got, "avx512 (", 8) || !strncmp(got, has_avx2 ? "avx2 (" : "baseline (", 6),
                  "%s", got);
    setenv("DC_CPU_ISA", "avx3", 1);
    const char *args[] = {"--help", NULL};
    tu_run_result *r = tu_run_diffc(args);
    unsetenv("DC_CPU_ISA");
    ck_assert_msg(r->status == 0 && strstr(r->err, "DC_CPU_ISA=avx3 is not avx512, avx2 or baseline"),
                  "exit %d: %s", r->status, tu_tail(r->err));
}
END_TEST

/* Sets or (value NULL) unsets an environment variable; returns its old value (malloc'd, or NULL). */
static char *swap_env(const char *name, const char *value) {
    const char *was = getenv(name);
    char *keep = was ? strdup(was) : NULL;
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
    return keep;
}

/* The OpenMP waits `diffc --help` reports, OMP_WAIT_POLICY and
 * GOMP_SPINCOUNT set to `policy` and `spins` (NULL: unset) in its environment. */
static void assert_waits(const char *policy, const char *spins, const char *want) {
    char *keep_policy = swap_env("OMP_WAIT_POLICY", policy), *keep_spins = swap_env("GOMP_SPINCOUNT", spins);
    const char *args[] = {"--help", NULL};
    tu_run_result *r = tu_run_diffc(args);
    free(swap_env("OMP_WAIT_POLICY", keep_policy));
    free(swap_env("GOMP_SPINCOUNT", keep_spins));
    free(keep_policy);
    free(keep_spins);
    char line[128];
    snprintf(line, sizeof line, "OpenMP waits: %s (OMP_WAIT_POLICY, GOMP_SPINCOUNT)", want);
    ck_assert_msg(r->status == 0 && strstr(r->out, line), "exit %d, want \"%s\": %s", r->status, line,
                  tu_tail(r->out));
}

/* diffc waits passively after a short spin unless the user chose how (it
 * starts itself again with the variables set: libgomp reads them only when
 * it loads). */
START_TEST(test_wait_policy) {
    assert_waits(NULL, NULL, "passive, spin count 10000");
    assert_waits("active", NULL, "active, spin count libgomp's default");
    assert_waits("PASSIVE", NULL, "PASSIVE, spin count libgomp's default");
    assert_waits(NULL, "300", "libgomp's default, spin count 300");
}
END_TEST

int main(void) {
    Suite *s = suite_create("device");
    TCase *tc = tu_tcase(s, "device", 30);
    tcase_add_test(tc, test_resolve);
    tcase_add_test(tc, test_math);
    tcase_add_test(tc, test_host_copies);
    tcase_add_test(tc, test_arena_peak);
    tcase_add_test(tc, test_memory_available);
    tcase_add_test(tc, test_cpu_isa);
    tcase_add_test(tc, test_wait_policy);
    return tu_run(s);
}
