/* Vectorised expf and erff for the CPU kernels. The declarations below let
 * the compiler turn expf and erff inside `#pragma omp simd` loops into calls
 * to glibc's libmvec (_ZGV*_expf, _ZGV*_erff (glibc 2.35): 4, 8 or 16 lanes
 * at a time, chosen by the target ISA) instead of one scalar libm call per
 * element, which made exp a quarter of a sampling step (and the exact GELU's
 * scalar erff 2% of a Stable Diffusion step). Include it in kernels that call
 * them in such loops. */
#ifndef DC_CPU_VMATH_H
#define DC_CPU_VMATH_H

#include <math.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma omp declare simd notinbranch
float expf(float);
#if __GLIBC_PREREQ(2, 35)
#pragma omp declare simd notinbranch
float erff(float);
#endif
#endif

#endif
