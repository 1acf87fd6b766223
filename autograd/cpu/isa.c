/* The CPU kernels' ISA (see isa.h). */
#include "isa.h"

#include <cblas.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[] = {"baseline", "avx2", "avx512"};

#if defined(__x86_64__) && defined(__GNUC__)
/* F16C (CPUID leaf 1, ECX bit 29), which clang's __builtin_cpu_supports does not name. */
static int has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
}
#endif

/* The best ISA this CPU and OS run. */
static cpu_isa detected(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init(); /* libgcc also checks that the OS saves the wide registers */
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") ||
        !has_f16c()) /* the direct kernels' f16 weights */
        return CPU_ISA_BASELINE;
    return __builtin_cpu_supports("avx512f") ? CPU_ISA_AVX512 : CPU_ISA_AVX2;
#else
    return CPU_ISA_BASELINE;
#endif
}

/* DC_CPU_ISA lowers the choice; a value it does not name is reported once and ignored. */
static cpu_isa decide(void) {
    cpu_isa best = detected();
    const char *want = getenv("DC_CPU_ISA");
    if (!want || !*want)
        return best;
    for (int i = 0; i <= CPU_ISA_AVX512; i++)
        if (strcmp(want, names[i]) == 0)
            return (cpu_isa)i < best ? (cpu_isa)i : best;
    fprintf(stderr, "diffc: warning: DC_CPU_ISA=%s is not avx512, avx2 or baseline; using %s\n",
            want, names[best]);
    return best;
}

cpu_isa cpu_isa_active(void) {
    static int known = -1; /* set by the first call, before the kernels start threads */
    if (known < 0)
        known = (int)decide();
    return (cpu_isa)known;
}

const char *cpu_isa_name(cpu_isa isa) { return names[isa]; }

const char *cpu_isa_describe(void) {
    static char line[96];
    if (!line[0])
        snprintf(line, sizeof line, "%s (OpenBLAS %s)", cpu_isa_name(cpu_isa_active()),
                 openblas_get_corename());
    return line;
}
