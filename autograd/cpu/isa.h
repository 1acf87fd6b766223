/* Which vector instruction set the CPU kernels run with, decided at run time.
 *
 * The build targets the x86-64 baseline (SSE2), so one binary runs on every
 * x86-64 CPU; the hot kernels also exist compiled for AVX2+FMA and AVX-512
 * (target attributes, or objects of their own), and this picks among them:
 * the best the CPU offers (cpuid and the OS's saved register state), lowered
 * by the environment variable DC_CPU_ISA=avx512|avx2|baseline (tests and
 * benchmarks run the slower paths with it; it never raises the choice above
 * what the CPU runs). Elsewhere than x86-64 it is always the baseline. */
#ifndef DC_CPU_ISA_H
#define DC_CPU_ISA_H

typedef enum {
    CPU_ISA_BASELINE, /* plain C under `#pragma omp simd`, convolutions by im2col + OpenBLAS */
    CPU_ISA_AVX2,     /* AVX2 + FMA + F16C: 8-float vectors */
    CPU_ISA_AVX512,   /* AVX-512F (+ FMA): 16-float vectors */
} cpu_isa;

/* The ISA of this process (decided on the first call, the same ever after). */
cpu_isa cpu_isa_active(void);

/* "baseline", "avx2", "avx512": as DC_CPU_ISA spells them. */
const char *cpu_isa_name(cpu_isa isa);

/* Entry points of the files compiled once per ISA (CMakeLists.txt's
 * DC_ISA_KERNELS: kernels of plain C loops under `#pragma omp simd`, which
 * the compiler widens to the pass's vectors): each pass defines them with
 * its suffix, name_baseline, name_avx2, name_avx512, and isa_dispatch.c
 * defines the plain names, which call the variant of cpu_isa_active(). */
#ifdef CPU_ISA_SUFFIX
#define CPU_ISA_PASTE(name, suffix) name##suffix
#define CPU_ISA_EXPAND(name, suffix) CPU_ISA_PASTE(name, suffix)
#define CPU_ISA_FN(name) CPU_ISA_EXPAND(name, CPU_ISA_SUFFIX)
#endif

/* One line for logs: the kernels chosen and OpenBLAS's own choice, e.g.
 * "avx2 (OpenBLAS Haswell)". */
const char *cpu_isa_describe(void);

#endif
