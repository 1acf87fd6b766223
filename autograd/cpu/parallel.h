/* When a CPU kernel goes parallel. Starting an OpenMP region costs
 * microseconds, and far more on a loaded machine, where one descheduled thread
 * stalls the closing barrier; kernels over fewer elements than this run on
 * the calling thread: `#pragma omp parallel for if (n >= CPU_PAR_MIN)`. */
#ifndef DC_CPU_PARALLEL_H
#define DC_CPU_PARALLEL_H

#include <stdint.h>

#define CPU_PAR_MIN ((int64_t)1 << 15)

#endif
