/*
 * Seconds on the monotonic clock: for rates, ETAs and time limits (never
 * for dates). One definition for every command that times itself.
 */
#ifndef DC_CLOCK_H
#define DC_CLOCK_H

#include <time.h>

static inline double dc_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#endif
