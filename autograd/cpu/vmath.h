/* Vectorised expf for the CPU kernels. The declaration below lets the
 * compiler turn expf inside `#pragma omp simd` loops into calls to glibc's
 * libmvec (_ZGV*_expf: 4, 8 or 16 lanes at a time, chosen by the target ISA)
 * instead of one scalar libm call per element, which made exp a quarter of
 * a sampling step. Include it in kernels that call expf in such loops. */
#ifndef DC_CPU_VMATH_H
#define DC_CPU_VMATH_H

#include <math.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma omp declare simd notinbranch
float expf(float);
#endif

#endif
